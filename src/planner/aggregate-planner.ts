// Tier 2, partial aggregates: every node computes partial states per group (aggregate-split.ts says which), the
// proxy folds equal groups, and one node finishes in SQL: final aggregates, expressions over them, HAVING,
// DISTINCT, ORDER BY and LIMIT, written from the query by replacing group expressions and aggregates with the
// shipped columns.

import type { Node } from '@pgsql/types';
import { cloneTree, columnNameOf, columnRef, deparseVerified, integerConstant, namesOutputColumn, outputNamesOf, parseExpression, rewriteTree, sameExpression, unwrap } from './ast-tools';
import { splitAggregate, type AggregateCall } from './aggregate-split';
import { containsAggregateCall, isKnownAggregate, keyTableOf, type Scope } from './colocation';
import type { AggregatePlan, StateCombine } from './distributed-plan';
import { allNodes, containsSublink, isStar, unwritable, type Planned, type PlannerPort } from './planner-port';
import { planRows } from './rows-planner';

type Body = Record<string, unknown>;

/** GROUP BY 2 and GROUP BY alias mean a select-list expression. */
export function resolveGroupItem(item: Node, targets: readonly { ResTarget: Body }[]): Node {
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

export async function planAggregate(select: Body, targets: { ResTarget: Body }[], scope: Scope, extraAggregates: ReadonlySet<string>, port: PlannerPort, defaultCollation: boolean): Promise<Planned<AggregatePlan>> {
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
  const outputNames = outputNamesOf(targets);
  const rewrite = (node: unknown, sortItem = false): unknown => {
    if (sortItem && namesOutputColumn(node, outputNames)) return node;
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
