// Tier 2, finished rows: every node computes its part of the answer (no aggregate, or groups that live on one node),
// and the proxy merges the sorted streams. The fragment is the query itself, with hidden sort columns appended for
// ORDER BY expressions not in the select list and LIMIT n+m in place of LIMIT n OFFSET m.

import type { Node } from '@pgsql/types';
import { deparseVerified, integerConstant, isNullConstant, sameExpression, unwrap } from './ast-tools';
import type { LimitSpec, MergePlan, SortKey } from './distributed-plan';
import { allNodes, isStar, unwritable, type Planned, type PlannerPort } from './planner-port';

type Body = Record<string, unknown>;

export function planMerge(select: Body, targets: { ResTarget: Body }[], port: PlannerPort, reason: string, sql: string | undefined, defaultCollation: boolean): Planned<MergePlan> {
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
