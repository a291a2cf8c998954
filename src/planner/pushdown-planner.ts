// Tier 2 of the cascade, its entry: a node-local SELECT (see colocation.ts) with a pinned key runs on the owning
// node (tier 1); otherwise it becomes one fragment per node plus a merge: finished rows merged at the proxy
// (merge-planner.ts), partial aggregates finished on one node (aggregate-planner.ts), or the rows a final step
// needs (rows-planner.ts). A shape it cannot split returns a reason for the fallback tier.

import type { Node } from '@pgsql/types';
import type { Catalog } from '../catalog/catalog';
import { walkAst } from './ast-walk';
import { quoteIdent } from '../catalog/partition-rule';
import { pinnedKeyValues } from './key-values';
import { analyzeColocation, containsAggregateCall, isKnownAggregate, keyTableOf, type Scope } from './colocation';
import type { AggregatePlan, MergePlan, RouterPlan } from './distributed-plan';
import { planAggregate, resolveGroupItem } from './aggregate-planner';
import { planMerge } from './merge-planner';
import type { Planned, PlannerPort } from './planner-port';
import { planRows } from './rows-planner';
import { tablesReferenced } from './table-references';

type Body = Record<string, unknown>;

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
  // Every table named at any level, subqueries in FROM included.
  const tables = [...new Set(tablesReferenced({ SelectStmt: select }).filter((t) => t.schema !== 'pg_temp').map((t) => (t.schema ? `${quoteIdent(t.schema)}.${quoteIdent(t.name)}` : quoteIdent(t.name))))];
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
