// Tier 2 of the cascade: a node-local SELECT (see colocation.ts) becomes one fragment per node plus a merge.
// Without aggregates, or grouped by a distribution key, every node computes finished rows and the proxy merges
// the sorted streams (MergePlan). Otherwise every node computes partial aggregate states per group and one node
// finishes them in SQL (AggregatePlan). A shape it cannot split returns a reason for the fallback tier.

import type { Node } from '@pgsql/types';
import type { Catalog } from '../catalog/catalog';
import { walkAst } from './ast-walk';
import { quoteIdent } from '../catalog/partition-rule';
import type { DistributedRule } from '../catalog/partition-rule';
import { pinnedKeyValues, type KeyValue } from './key-values';
import type { TableShape } from './gather-pushdown';
import { cloneTree, columnNameOf, columnRef, deparseVerified, integerConstant, isNullConstant, parseExpression, rewriteTree, sameExpression, unwrap } from './ast-tools';
import { splitAggregate, type AggregateCall } from './aggregate-split';
import { analyzeColocation, containsAggregateCall, isKnownAggregate, keyTableOf, type Scope } from './colocation';
import type { AggregatePlan, LimitSpec, MergePlan, RouterPlan, SortKey, StateCombine } from './distributed-plan';

type Body = Record<string, unknown>;

/** What planning may ask of the cluster: types of expressions (a Describe on a node) and which names are aggregates. */
export interface PlannerPort {
  readonly nodeCount: number;
  /** Most rows a broadcast join may copy to all nodes together (0: never broadcast). */
  readonly broadcastRowLimit: number;
  /** The node that finishes merges in SQL. */
  readonly finalNode: number;
  /** The result column types of a SELECT, described (not run) on a node. */
  describe(sql: string): Promise<number[]>;
  /** Those of `names` that name aggregate functions on the nodes. */
  aggregateNames(names: readonly string[]): Promise<ReadonlySet<string>>;
  /** Columns and primary key of tables named as in SQL (resolved by the node's search_path); unknown ones left out. */
  tableShapes(names: readonly string[]): Promise<Map<string, TableShape>>;
  /** Whether any column of these tables (named as in SQL) has a collation other than the default, C or POSIX. */
  hasCollatedColumns(tables: readonly string[]): Promise<boolean>;
  /** The rows the node's planner expects `sql` to return (EXPLAIN's estimate). */
  estimateRows(sql: string): Promise<number>;
  /** The nodes that hold these values of a rule's key, in node order. */
  nodesOfKeys(rule: DistributedRule, keys: readonly KeyValue[]): Promise<number[]>;
}

export type Planned<T> = { readonly ok: true; readonly plan: T } | { readonly ok: false; readonly reason: string };

const allNodes = (port: PlannerPort) => Array.from({ length: port.nodeCount }, (_, i) => i);

const unwritable = { ok: false as const, reason: 'the SQL of a fragment cannot be written back exactly' };

/** `sql` is the statement's own text, sent unchanged when a fragment needs no rewrite. */
export async function planPushdown(select: Body, catalog: Catalog, port: PlannerPort, sql?: string, nodes?: readonly number[]): Promise<Planned<MergePlan | AggregatePlan | RouterPlan>> {
  if (select.intoClause) return { ok: false, reason: 'SELECT INTO' };
  const colocation = analyzeColocation(select, catalog);
  if (!colocation.ok) return colocation;
  const { scope } = colocation;
  // Tables joined on their keys keep a key's rows on one node: a key pinned on any of them pins them all.
  for (const table of colocation.distributed) {
    if (table.nullable || !table.rule || table.rule.table.schema === 'pg_temp') continue;
    const keys = pinnedKeyValues(select.whereClause as Node | undefined, table.rule.keyColumn, new Set([table.alias]));
    if (!keys || keys.some((k) => k.kind === 'param')) continue;
    const pinned = await port.nodesOfKeys(table.rule, keys);
    const restrict = nodes;
    let owning = restrict ? pinned.filter((n) => restrict.includes(n)) : pinned;
    // No node holds both: the answer has no rows, and any one node gives it with the right columns.
    if (owning.length === 0) owning = pinned.slice(0, 1);
    if (owning.length === 1 && sql !== undefined) return { ok: true, plan: { kind: 'router', nodes: owning, sql, reason: `the key of "${table.alias}" is pinned to one node` } };
    nodes = owning;
    break;
  }
  const planned = await planPushdownOnNodes(select, scope, port, sql, await usesDefaultCollation(select, scope, port));
  if (!planned.ok || !nodes) return planned;
  const only = nodes;
  return { ok: true, plan: { ...planned.plan, fragment: { ...planned.plan.fragment, nodes: only } } };
}

/**
 * Whether every text the merge may compare orders as the database does: no COLLATE clause but C or POSIX, and no
 * column of the statement's tables declared with another collation (asked of the main node).
 */
async function usesDefaultCollation(select: Body, scope: Scope, port: PlannerPort): Promise<boolean> {
  let collated = false;
  walkAst(select, (tag, body) => {
    if (tag !== 'CollateClause') return;
    const names = (body.collname as { String: { sval: string } }[]).map((n) => n.String.sval);
    if (!['C', 'POSIX'].includes(names[names.length - 1])) collated = true;
  });
  if (collated) return false;
  const tables = scope.tables.filter((t) => t.schema !== 'pg_temp').map((t) => (t.schema ? `${quoteIdent(t.schema)}.${quoteIdent(t.name)}` : quoteIdent(t.name)));
  return tables.length === 0 || !(await port.hasCollatedColumns(tables));
}

async function planPushdownOnNodes(select: Body, scope: Scope, port: PlannerPort, sql: string | undefined, defaultCollation: boolean): Promise<Planned<MergePlan | AggregatePlan>> {
  const extraAggregates = await port.aggregateNames(unknownFunctionNames(select));
  const targets = (select.targetList as { ResTarget: Body }[]) ?? [];
  if (containsWindow([select.targetList, select.sortClause, select.havingClause]) || (select.windowClause as unknown[] | undefined)?.length) {
    return planRows(select, targets, port, defaultCollation, 'window functions need the rows of every node in one place');
  }
  const groupClause = (select.groupClause as Node[] | undefined) ?? [];
  if (groupClause.some((g) => 'GroupingSet' in (g as object))) return planRows(select, targets, port, defaultCollation, 'GROUPING SETS, ROLLUP or CUBE need every row of a group in one place');
  const distinct = select.distinctClause as Node[] | undefined;
  if (distinct && distinct.length > 0 && Object.keys(distinct[0] as object).length > 0) return planRows(select, targets, port, defaultCollation, 'DISTINCT ON needs every row of a group in one place');
  const isDistinct = Boolean(distinct && distinct.length > 0);
  if (select.limitOption === 'LIMIT_OPTION_WITH_TIES') return planRows(select, targets, port, defaultCollation, 'FETCH FIRST ... WITH TIES needs every row in one place');
  const hasAggregates = containsAggregateCall([select.targetList, select.havingClause, select.sortClause], extraAggregates) || Boolean(select.havingClause);
  const groupedByKey = groupClause.some((item) => {
    const table = keyTableOf(resolveGroupItem(item, targets), scope);
    return table !== null && !table.nullable && scope.tables.includes(table);
  });
  const distinctByKey = targets.some((t) => {
    const table = keyTableOf(t.ResTarget.val, scope);
    return table !== null && !table.nullable && scope.tables.includes(table);
  });
  const grouped = hasAggregates || groupClause.length > 0;
  if ((!grouped || groupedByKey) && (!isDistinct || distinctByKey)) {
    const why = grouped ? 'grouped by the distribution key: every group lives on one node' : 'no aggregate: every node returns finished rows';
    return planMerge(select, targets, port, why, sql, defaultCollation);
  }
  return planAggregate(select, targets, scope, extraAggregates, port, defaultCollation);
}

// ---- merge of finished rows ------------------------------------------------------------------------------

function planMerge(select: Body, targets: { ResTarget: Body }[], port: PlannerPort, reason: string, sql: string | undefined, defaultCollation: boolean): Planned<MergePlan> {
  const limit = limitOf(select);
  if (limit === 'unsupported') return { ok: false, reason: 'LIMIT or OFFSET that is not a constant' };
  const hidden: Node[] = [];
  const sortKeys: SortKey[] = [];
  const starAt = targets.findIndex((t) => isStar(t.ResTarget.val));
  for (const item of (select.sortClause as { SortBy: Body }[] | undefined) ?? []) {
    const sortBy = item.SortBy;
    if (sortBy.sortby_dir === 'SORTBY_USING') return { ok: false, reason: 'ORDER BY ... USING' };
    const descending = sortBy.sortby_dir === 'SORTBY_DESC';
    const nullsFirst = sortBy.sortby_nulls === 'SORTBY_NULLS_FIRST' || (sortBy.sortby_nulls !== 'SORTBY_NULLS_LAST' && descending);
    const index = outputIndexOf(sortBy.node, targets);
    if (index !== null && (starAt < 0 || starAt > index)) {
      sortKeys.push({ column: { from: 'start', index }, descending, nullsFirst });
      continue;
    }
    const expression = index !== null ? targets[index].ResTarget.val : sortBy.node;
    if (select.distinctClause) return { ok: false, reason: 'SELECT DISTINCT * ordered by a column the merge cannot find' };
    if (index === null && integerConstant(sortBy.node) !== null) return { ok: false, reason: 'ORDER BY a position after *' };
    hidden.push(expression as Node);
    sortKeys.push({ column: { from: 'end', index: 0 }, descending, nullsFirst });
  }
  // Hidden columns are appended in order, so the k-th of h is at position h - k from the end.
  let k = 0;
  const resolved = sortKeys.map((key) => (key.column.from === 'end' ? { ...key, column: { from: 'end' as const, index: hidden.length - k++ } } : key));
  const fragment: Body = { ...select, limitOffset: undefined };
  if (hidden.length > 0) {
    fragment.targetList = [...targets, ...hidden.map((val, i) => ({ ResTarget: { name: `parapool_sort_${i + 1}`, val } }))];
  }
  if (limit) {
    fragment.limitCount = limit.count === null ? undefined : constantNode(limit.count + limit.offset);
    if (limit.count === null) fragment.limitOption = 'LIMIT_OPTION_DEFAULT';
  }
  const unchanged = hidden.length === 0 && limit === null && sql !== undefined;
  const fragmentSql = unchanged ? sql : deparseVerified({ SelectStmt: fragment } as Node);
  if (fragmentSql === null) return unwritable;
  return {
    ok: true,
    plan: {
      kind: 'merge',
      fragment: { sql: fragmentSql, nodes: allNodes(port) },
      hiddenColumns: hidden.length,
      sortKeys: resolved,
      limit,
      defaultCollation,
      reason,
    },
  };
}

function limitOf(select: Body): LimitSpec | null | 'unsupported' {
  const countNode = select.limitCount;
  const offsetNode = select.limitOffset;
  if (!countNode && !offsetNode) return null;
  let count: bigint | null = null;
  if (countNode && !isNullConstant(countNode)) {
    count = integerConstant(countNode);
    if (count === null || count < 0n) return 'unsupported';
  }
  let offset = 0n;
  if (offsetNode && !isNullConstant(offsetNode)) {
    const value = integerConstant(offsetNode);
    if (value === null || value < 0n) return 'unsupported';
    offset = value;
  }
  return { count, offset };
}

function constantNode(value: bigint): Node {
  return value <= 2147483647n ? ({ A_Const: { ival: { ival: Number(value) } } } as Node) : ({ A_Const: { fval: { fval: String(value) } } } as Node);
}

function isStar(node: unknown): boolean {
  const [tag, body] = unwrap(node);
  if (tag !== 'ColumnRef') return false;
  const fields = body.fields as Body[];
  return 'A_Star' in fields[fields.length - 1];
}

/** The output column an ORDER BY item names: a position, an output name, or an expression of the select list. */
function outputIndexOf(node: unknown, targets: readonly { ResTarget: Body }[]): number | null {
  const position = integerConstant(node);
  if (position !== null) return position >= 1n && position <= BigInt(targets.length) ? Number(position) - 1 : null;
  const [tag, body] = unwrap(node);
  if (tag === 'ColumnRef') {
    const fields = body.fields as Body[];
    if (fields.length === 1 && 'String' in fields[0]) {
      const name = (fields[0].String as { sval: string }).sval;
      const byName = targets.findIndex((t) => (t.ResTarget.name as string | undefined) === name);
      if (byName >= 0) return byName;
    }
  }
  const byExpression = targets.findIndex((t) => sameExpression(t.ResTarget.val, node));
  return byExpression >= 0 ? byExpression : null;
}

// ---- partial aggregates ------------------------------------------------------------------------------------

/** GROUP BY 2 and GROUP BY alias mean a select-list expression. */
function resolveGroupItem(item: Node, targets: readonly { ResTarget: Body }[]): Node {
  const position = integerConstant(item);
  if (position !== null && position >= 1n && position <= BigInt(targets.length)) return targets[Number(position) - 1].ResTarget.val as Node;
  const [tag, body] = unwrap(item);
  if (tag === 'ColumnRef') {
    const fields = body.fields as Body[];
    if (fields.length === 1 && 'String' in fields[0]) {
      const name = (fields[0].String as { sval: string }).sval;
      const target = targets.find((t) => t.ResTarget.name === name);
      if (target && !sameExpression(target.ResTarget.val, item) && !('ColumnRef' in (target.ResTarget.val as object))) return target.ResTarget.val as Node;
    }
  }
  return item;
}

interface FoundAggregate {
  readonly node: Node;
  readonly name: string;
  readonly body: Body;
}

async function planAggregate(select: Body, targets: { ResTarget: Body }[], scope: Scope, extraAggregates: ReadonlySet<string>, port: PlannerPort, defaultCollation: boolean): Promise<Planned<AggregatePlan>> {
  if (targets.some((t) => isStar(t.ResTarget.val))) return { ok: false, reason: 'SELECT * with GROUP BY' };
  const outputs = [select.targetList, select.havingClause, select.sortClause];
  if (containsSublink(outputs)) return { ok: false, reason: 'a subquery in the select list, HAVING or ORDER BY of an aggregate' };
  const groupClause = (select.groupClause as Node[] | undefined) ?? [];
  const isDistinct = Boolean(select.distinctClause);
  const groupExpressions: Node[] = [];
  for (const item of groupClause.map((g) => resolveGroupItem(g, targets))) {
    if (!groupExpressions.some((g) => sameExpression(g, item))) groupExpressions.push(item);
  }
  if (isDistinct && groupClause.length === 0 && !containsAggregateCall(select.targetList, extraAggregates) && !select.havingClause) {
    // SELECT DISTINCT without aggregates: the select list is the group.
    for (const target of targets) if (!groupExpressions.some((g) => sameExpression(g, target.ResTarget.val))) groupExpressions.push(target.ResTarget.val as Node);
  }

  const aggregates: FoundAggregate[] = [];
  collectAggregates(outputs, extraAggregates, aggregates);
  if (aggregates.some((a) => containsAggregateCall([(a.body.args as unknown) ?? [], a.body.agg_filter], extraAggregates))) {
    return { ok: false, reason: 'nested aggregate calls' };
  }
  // The argument types decide the split (avg of int is numeric, of real is float8): ask a node once for all.
  const typed = aggregates.filter((a) => ['avg', 'sum', ...Object.keys(varianceNames)].includes(a.name) && (a.body.args as Node[] | undefined)?.length === 1);
  let types: number[] = [];
  if (typed.length > 0) {
    const probe: Body = {
      targetList: typed.map((a) => ({ ResTarget: { val: (a.body.args as Node[])[0] } })),
      fromClause: select.fromClause,
      whereClause: select.whereClause,
      withClause: select.withClause,
      limitOption: 'LIMIT_OPTION_DEFAULT',
      op: 'SETOP_NONE',
    };
    const probeSql = deparseVerified({ SelectStmt: probe } as Node);
    if (probeSql === null) return unwritable;
    types = await port.describe(probeSql);
  }

  const dedupe: Node[] = [];
  const states: Node[] = [];
  const combine: StateCombine[] = [];
  const finals = new Map<Node, (names: readonly string[]) => string>();
  const stateColumnsOf = new Map<Node, number[]>();
  const onKey = (aggregate: FoundAggregate) => {
    const args = (aggregate.body.args as Node[] | undefined) ?? [];
    const keyTable = args.length === 1 ? keyTableOf(args[0], scope) : null;
    return keyTable !== null && scope.tables.includes(keyTable) && !keyTable.nullable && ['count', 'sum', 'min', 'max'].includes(aggregate.name);
  };
  // A DISTINCT aggregate on the key adds up per-node counts only when no other one makes the fragment group by
  // its arguments (the same key would then be counted once per group of those).
  const anyDedupe = aggregates.some((a) => a.body.agg_distinct && !onKey(a));
  for (const aggregate of aggregates) {
    const args = (aggregate.body.args as Node[] | undefined) ?? [];
    const argumentType = typed.includes(aggregate) ? types[typed.indexOf(aggregate)] : null;
    if (aggregate.body.agg_distinct && args.some((a) => 'RowExpr' in (a as object))) return { ok: false, reason: `${aggregate.name}(DISTINCT of a row)` };
    const call: AggregateCall = { name: aggregate.name, body: aggregate.body, argumentType, distinctOnKey: !anyDedupe && onKey(aggregate) };
    if (extraAggregates.has(aggregate.name) && !isKnownAggregate(aggregate.name)) return { ok: false, reason: `the aggregate ${aggregate.name} has no partial form here` };
    const outcome = splitAggregate(call);
    if (outcome.kind === 'unsupported') return planRows(select, targets, port, defaultCollation, outcome.reason);
    if (outcome.kind === 'dedupe') {
      for (const part of [...args, aggregate.body.agg_filter].filter(Boolean) as Node[]) {
        if (!dedupe.some((d) => sameExpression(d, part)) && !groupExpressions.some((g) => sameExpression(g, part))) dedupe.push(part);
      }
      continue;
    }
    const columns: number[] = [];
    for (let i = 0; i < outcome.split.states.length; i++) {
      columns.push(states.length);
      states.push(outcome.split.states[i]);
      combine.push(outcome.split.combine[i]);
    }
    stateColumnsOf.set(aggregate.node, columns);
    finals.set(aggregate.node, outcome.split.final);
  }

  // Column references outside aggregates that no group expression covers are functionally dependent on the
  // group (GROUP BY a primary key): the fragment carries them, PostgreSQL checking that they are.
  const dependent: Node[] = [];
  const keyColumns = () => [...groupExpressions, ...dedupe, ...dependent];
  const stateOffset = () => keyColumns().length;
  const columnName = (i: number) => `c${i}`;
  const outputNames = new Set(targets.map((t) => (t.ResTarget.name as string | undefined) ?? columnNameOf(t.ResTarget.val)));
  const rewrite = (node: unknown, sortItem = false): unknown => {
    if (sortItem) {
      const [tag, body] = unwrap(node);
      if (integerConstant(node) !== null) return node;
      if (tag === 'ColumnRef') {
        const fields = body.fields as Body[];
        if (fields.length === 1 && 'String' in fields[0] && outputNames.has((fields[0].String as { sval: string }).sval)) return node;
      }
    }
    return rewriteTree(node, (tag, body, current) => {
      const keyIndex = keyColumns().findIndex((g) => sameExpression(g, current));
      if (keyIndex >= 0 && keyIndex < groupExpressions.length) return columnRef(columnName(keyIndex));
      if (tag === 'FuncCall' && finals.has(current)) {
        const columns = stateColumnsOf.get(current)!.map((c) => columnName(stateOffset() + c));
        return parseExpression(finals.get(current)!(columns));
      }
      if (tag === 'FuncCall' && aggregates.some((a) => a.node === current)) {
        // A DISTINCT aggregate runs as written over its deduplicated arguments.
        const args = ((body.args as Node[] | undefined) ?? []).map((a) => columnRef(columnName(keyColumns().findIndex((k) => sameExpression(k, a)))));
        const filter = body.agg_filter ? columnRef(columnName(keyColumns().findIndex((k) => sameExpression(k, body.agg_filter)))) : undefined;
        return { FuncCall: { ...body, args, agg_filter: filter } } as Node;
      }
      if (tag === 'ColumnRef') {
        let index = keyColumns().findIndex((g) => sameExpression(g, current));
        if (index < 0) {
          dependent.push(current);
          index = keyColumns().length - 1;
        }
        return columnRef(columnName(index));
      }
      return undefined;
    });
  };
  // Dependent columns must be known before state columns are numbered: rewrite once to collect them.
  for (const t of targets) rewrite(t.ResTarget.val);
  if (select.havingClause) rewrite(select.havingClause);
  for (const s of (select.sortClause as { SortBy: Body }[] | undefined) ?? []) rewrite(s.SortBy.node, true);
  const finalTargets = targets.map((t) => ({ ResTarget: { name: (t.ResTarget.name as string | undefined) ?? columnNameOf(t.ResTarget.val), val: rewrite(t.ResTarget.val) } }));
  const finalHaving = select.havingClause ? rewrite(select.havingClause) : undefined;
  const finalSort = ((select.sortClause as { SortBy: Body }[] | undefined) ?? []).map((s) => ({ SortBy: { ...s.SortBy, node: rewrite(s.SortBy.node, true) } }));
  const groupCount = keyColumns().length;
  const finalGroup = [...groupExpressions.map((_, i) => columnRef(columnName(i))), ...dependent.map((_, i) => columnRef(columnName(groupExpressions.length + dedupe.length + i)))];

  const fragmentTargets = [...keyColumns(), ...states].map((val) => ({ ResTarget: { val: cloneTree(val) } }));
  const fragmentGroup = [...groupClause.map((g) => resolveGroupItem(g, targets)), ...dedupe];
  if (isDistinct && groupClause.length === 0 && fragmentGroup.length === 0) fragmentGroup.push(...groupExpressions);
  const fragment: Body = {
    targetList: fragmentTargets,
    fromClause: select.fromClause,
    whereClause: select.whereClause,
    groupClause: fragmentGroup.length > 0 ? fragmentGroup : undefined,
    withClause: select.withClause,
    limitOption: 'LIMIT_OPTION_DEFAULT',
    op: 'SETOP_NONE',
  };
  const final: Body = {
    targetList: finalTargets,
    fromClause: [{ RangeVar: { relname: '{{partials}}', inh: true, relpersistence: 'p' } }],
    groupClause: finalGroup.length > 0 ? finalGroup : undefined,
    havingClause: finalHaving,
    sortClause: finalSort.length > 0 ? finalSort : undefined,
    distinctClause: select.distinctClause,
    limitCount: select.limitCount,
    limitOffset: select.limitOffset,
    limitOption: select.limitOption ?? 'LIMIT_OPTION_DEFAULT',
    op: 'SETOP_NONE',
  };
  const fragmentSql = deparseVerified({ SelectStmt: fragment } as Node);
  const finalSql = deparseVerified({ SelectStmt: final } as Node);
  if (fragmentSql === null || finalSql === null) return unwritable;
  return {
    ok: true,
    plan: {
      kind: 'aggregate',
      rows: false,
      fragment: { sql: fragmentSql, nodes: allNodes(port) },
      groupColumns: groupCount,
      combine,
      finalSql: finalSql.replace(/"\{\{partials\}\}"|\{\{partials\}\}/, '{{partials}}'),
      finalNode: port.finalNode,
      defaultCollation,
      reason: groupExpressions.length > 0 ? 'groups span nodes: partial aggregates per node, finished on one node' : 'aggregate over every node: partial aggregates per node, finished on one node',
    },
  };
}

/**
 * A node-local FROM and WHERE whose rows the final step needs one by one (an ordered aggregate, a window, DISTINCT
 * ON, GROUPING SETS): every node sends only the columns the rest of the statement names, and the finishing node
 * runs the rest over them. The statement's column references become the shipped columns c0, c1, ...
 */
function planRows(select: Body, targets: { ResTarget: Body }[], port: PlannerPort, defaultCollation: boolean, reason: string): Planned<AggregatePlan> {
  if (targets.some((t) => isStar(t.ResTarget.val))) return { ok: false, reason: `${reason}, and SELECT * names no columns` };
  const parts = [select.targetList, select.havingClause, select.sortClause, select.groupClause, select.windowClause, select.distinctClause];
  if (containsSublink(parts)) return { ok: false, reason: `${reason}, and a subquery names the rows` };
  const columns: Node[] = [];
  const outputNames = new Set(targets.map((t) => (t.ResTarget.name as string | undefined) ?? columnNameOf(t.ResTarget.val)));
  const rewrite = (node: unknown, sortItem = false): unknown => {
    if (sortItem) {
      const [tag, body] = unwrap(node);
      if (integerConstant(node) !== null) return node;
      if (tag === 'ColumnRef') {
        const fields = body.fields as Body[];
        if (fields.length === 1 && 'String' in fields[0] && outputNames.has((fields[0].String as { sval: string }).sval)) return node;
      }
    }
    return rewriteTree(node, (tag, _body, current) => {
      if (tag !== 'ColumnRef') return undefined;
      let index = columns.findIndex((c) => sameExpression(c, current));
      if (index < 0) {
        index = columns.length;
        columns.push(current);
      }
      return columnRef(`c${index}`);
    });
  };
  // ORDER BY may name output columns; a window's ORDER BY names only input columns.
  const sortItems = (items: unknown, outputs = true) => ((items as { SortBy: Body }[] | undefined) ?? []).map((s) => ({ SortBy: { ...s.SortBy, node: rewrite(s.SortBy.node, outputs) } }));
  const finalTargets = targets.map((t) => ({ ResTarget: { name: (t.ResTarget.name as string | undefined) ?? columnNameOf(t.ResTarget.val), val: rewrite(t.ResTarget.val) } }));
  const groupClause = ((select.groupClause as unknown[] | undefined) ?? []).map((g) => (integerConstant(g) !== null ? g : rewrite(g, true)));
  const distinctClause = ((select.distinctClause as unknown[] | undefined) ?? []).map((d) => (Object.keys(d as object).length === 0 ? d : rewrite(d, true)));
  const windowClause = ((select.windowClause as { WindowDef: Body }[] | undefined) ?? []).map((w) => ({
    WindowDef: { ...w.WindowDef, partitionClause: rewrite(w.WindowDef.partitionClause), orderClause: sortItems(w.WindowDef.orderClause, false) },
  }));
  const final: Body = {
    targetList: finalTargets,
    fromClause: [{ RangeVar: { relname: '{{partials}}', inh: true, relpersistence: 'p' } }],
    groupClause: groupClause.length > 0 ? groupClause : undefined,
    groupDistinct: select.groupDistinct,
    havingClause: select.havingClause ? rewrite(select.havingClause) : undefined,
    windowClause: windowClause.length > 0 ? windowClause : undefined,
    sortClause: select.sortClause ? sortItems(select.sortClause) : undefined,
    distinctClause: distinctClause.length > 0 ? distinctClause : undefined,
    limitCount: select.limitCount,
    limitOffset: select.limitOffset,
    limitOption: select.limitOption ?? 'LIMIT_OPTION_DEFAULT',
    op: 'SETOP_NONE',
  };
  if (columns.length === 0) columns.push({ A_Const: { ival: { ival: 1 } } } as Node);
  const fragment: Body = {
    targetList: columns.map((val) => ({ ResTarget: { val: cloneTree(val) } })),
    fromClause: select.fromClause,
    whereClause: select.whereClause,
    withClause: select.withClause,
    limitOption: 'LIMIT_OPTION_DEFAULT',
    op: 'SETOP_NONE',
  };
  const fragmentSql = deparseVerified({ SelectStmt: fragment } as Node);
  const finalSql = deparseVerified({ SelectStmt: final } as Node);
  if (fragmentSql === null || finalSql === null) return unwritable;
  return {
    ok: true,
    plan: {
      kind: 'aggregate',
      rows: true,
      fragment: { sql: fragmentSql, nodes: allNodes(port) },
      groupColumns: columns.length,
      combine: [],
      finalSql: finalSql.replace(/"\{\{partials\}\}"|\{\{partials\}\}/, '{{partials}}'),
      finalNode: port.finalNode,
      defaultCollation,
      reason: `${reason}: every node sends the columns it names, one node finishes`,
    },
  };
}

const varianceNames = { stddev: 1, stddev_samp: 1, stddev_pop: 1, variance: 1, var_samp: 1, var_pop: 1 };

function collectAggregates(value: unknown, extra: ReadonlySet<string>, out: FoundAggregate[]): void {
  if (value === null || typeof value !== 'object') return;
  if (Array.isArray(value)) return value.forEach((v) => collectAggregates(v, extra, out));
  for (const [key, child] of Object.entries(value)) {
    if (key === 'SubLink') continue;
    if (key === 'FuncCall') {
      const body = child as Body;
      const names = body.funcname as { String: { sval: string } }[];
      const name = names[names.length - 1].String.sval;
      if (!body.over && (isKnownAggregate(name) || extra.has(name)) && (names.length === 1 || names[0].String.sval === 'pg_catalog')) {
        out.push({ node: value as Node, name, body });
        continue;
      }
    }
    collectAggregates(child, extra, out);
  }
}

function containsSublink(value: unknown): boolean {
  return JSON.stringify(value ?? null).includes('"SubLink"');
}

function containsWindow(value: unknown): boolean {
  return JSON.stringify(value ?? null).includes('"over"');
}

/** Function names in the statement that are not built-in aggregates, for asking the node which are aggregates. */
function unknownFunctionNames(select: Body): string[] {
  const names = new Set<string>();
  const visit = (value: unknown): void => {
    if (value === null || typeof value !== 'object') return;
    if (Array.isArray(value)) return value.forEach(visit);
    for (const [key, child] of Object.entries(value)) {
      if (key === 'FuncCall') {
        const parts = (child as Body).funcname as { String: { sval: string } }[];
        const name = parts[parts.length - 1].String.sval;
        if (!isKnownAggregate(name) && !commonScalars.has(name)) names.add(name);
      }
      visit(child);
    }
  };
  visit([select.targetList, select.havingClause, select.sortClause]);
  return [...names];
}

const commonScalars = new Set([
  'round', 'trunc', 'abs', 'ceil', 'ceiling', 'floor', 'coalesce', 'nullif', 'greatest', 'least', 'extract', 'date_part',
  'date_trunc', 'substring', 'substr', 'lower', 'upper', 'length', 'char_length', 'concat', 'concat_ws', 'replace', 'trim',
  'btrim', 'ltrim', 'rtrim', 'lpad', 'rpad', 'left', 'right', 'position', 'strpos', 'to_char', 'to_date', 'to_number', 'now',
  'sqrt', 'power', 'pow', 'mod', 'ln', 'log', 'exp', 'sign', 'md5', 'format', 'age', 'make_date', 'overlay', 'split_part',
  'reverse', 'initcap', 'repeat', 'cast', 'int4', 'int8', 'numeric', 'float8', 'text', 'timezone', 'date', 'scale',
]);
