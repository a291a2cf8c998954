// Tier 2, rows for one node: what needs every row of a group in one place (windows, ordered aggregates,
// DISTINCT ON, GROUPING SETS, WITH TIES) over a node-local FROM: every node sends the columns the rest of the
// statement names, and one node runs the rest of the statement over them.

import type { Node } from '@pgsql/types';
import { cloneTree, columnNameOf, columnRef, deparseVerified, integerConstant, namesOutputColumn, outputNamesOf, rewriteTree, sameExpression } from './ast-tools';
import type { AggregatePlan } from './distributed-plan';
import { allNodes, containsSublink, isStar, unwritable, type Planned, type PlannerPort } from './planner-port';

type Body = Record<string, unknown>;

/**
 * A node-local FROM and WHERE whose rows the final step needs one by one (an ordered aggregate, a window, DISTINCT
 * ON, GROUPING SETS): every node sends only the columns the rest of the statement names, and the finishing node
 * runs the rest over them. The statement's column references become the shipped columns c0, c1, ...
 */
export function planRows(select: Body, targets: { ResTarget: Body }[], port: PlannerPort, defaultCollation: boolean, reason: string): Planned<AggregatePlan> {
  if (targets.some((t) => isStar(t.ResTarget.val))) return { ok: false, reason: `${reason}, and SELECT * names no columns` };
  const parts = [select.targetList, select.havingClause, select.sortClause, select.groupClause, select.windowClause, select.distinctClause];
  if (containsSublink(parts)) return { ok: false, reason: `${reason}, and a subquery names the rows` };
  const columns: Node[] = [];
  const outputNames = outputNamesOf(targets);
  const rewrite = (node: unknown, sortItem = false): unknown => {
    if (sortItem && namesOutputColumn(node, outputNames)) return node;
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
