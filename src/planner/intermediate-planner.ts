// Recursive planning (Citus's name for it): subqueries in FROM and CTEs that read distributed tables are planned
// on their own, through the whole cascade, so each runs as far down as it can (an aggregate subquery runs as
// partial aggregates on every node), and only its result is shipped, into a temporary table on the finishing
// node. The statement around them, with those tables in place, runs there (gathering any distributed table it
// still reads itself).

import type { Node } from '@pgsql/types';
import type { Catalog } from '../catalog/catalog';
import { deparseVerified, unwrap } from './ast-tools';
import { readsDistributed } from './colocation';
import { walkAst } from './ast-walk';
import type { DistributedPlan, IntermediatePlan } from './distributed-plan';
import { planGather } from './gather-planner';
import type { Planned, PlannerPort } from './planner-port';
import { parseSql } from './sql-parser';

type Body = Record<string, unknown>;

export function intermediateTableName(index: number): string {
  return `parapool_result_${index}`;
}

type PlanPiece = (node: Node, sql: string) => Promise<DistributedPlan>;

export async function planIntermediate(statement: Node, catalog: Catalog, port: PlannerPort, planPiece: PlanPiece): Promise<Planned<IntermediatePlan>> {
  const select = (statement as { SelectStmt?: Body }).SelectStmt;
  if (!select || (select.op && select.op !== 'SETOP_NONE')) return { ok: false, reason: 'no subquery to plan on its own' };
  const pieces: { name: string; node: Node }[] = [];
  // A piece runs on its own, so it must not read a CTE of the statement around it.
  const cteNames = new Set(((select.withClause as { ctes?: { CommonTableExpr: Body }[] } | undefined)?.ctes ?? []).map((c) => c.CommonTableExpr.ctename as string));
  const standsAlone = (node: unknown) => {
    let alone = true;
    walkAst(node, (tag, body) => {
      if (tag === 'RangeVar' && !body.schemaname && cteNames.has(body.relname as string)) alone = false;
    });
    return alone;
  };
  const tableFor = (index: number): Node => ({ RangeVar: { schemaname: 'pg_temp', relname: intermediateTableName(index), inh: true, relpersistence: 'p' } }) as Node;
  const replaceFrom = (item: unknown): unknown => {
    const [tag, body] = unwrap(item);
    if (tag === 'RangeSubselect' && !body.lateral && readsDistributed(body.subquery, catalog) && standsAlone(body.subquery)) {
      const index = pieces.length;
      pieces.push({ name: intermediateTableName(index), node: body.subquery as Node });
      const table = (tableFor(index) as { RangeVar: Body }).RangeVar;
      return { RangeVar: { ...table, alias: body.alias } };
    }
    if (tag === 'JoinExpr') return { JoinExpr: { ...body, larg: replaceFrom(body.larg), rarg: replaceFrom(body.rarg) } };
    return item;
  };
  const fromClause = ((select.fromClause as unknown[] | undefined) ?? []).map(replaceFrom);
  let withClause = select.withClause as { ctes: { CommonTableExpr: Body }[]; recursive?: boolean } | undefined;
  if (withClause && !withClause.recursive) {
    withClause = {
      ...withClause,
      ctes: withClause.ctes.map((cte) => {
        if (!readsDistributed(cte.CommonTableExpr.ctequery, catalog) || !standsAlone(cte.CommonTableExpr.ctequery)) return cte;
        const index = pieces.length;
        pieces.push({ name: intermediateTableName(index), node: cte.CommonTableExpr.ctequery as Node });
        const body: Body = { targetList: [{ ResTarget: { val: { ColumnRef: { fields: [{ A_Star: {} }] } } } }], fromClause: [tableFor(index)], limitOption: 'LIMIT_OPTION_DEFAULT', op: 'SETOP_NONE' };
        return { CommonTableExpr: { ...cte.CommonTableExpr, ctequery: { SelectStmt: body } } };
      }),
    };
  }
  if (pieces.length === 0) return { ok: false, reason: 'no subquery in FROM or CTE reads a distributed table' };
  const outerSql = deparseVerified({ SelectStmt: { ...select, fromClause, withClause } } as Node);
  if (outerSql === null) return { ok: false, reason: 'the statement around its subqueries cannot be written back exactly' };
  const planned: IntermediatePlan['pieces'][number][] = [];
  for (const piece of pieces) {
    const sql = deparseVerified(piece.node);
    if (sql === null) return { ok: false, reason: 'a subquery cannot be written back exactly' };
    planned.push({ name: piece.name, sql, plan: await planPiece(piece.node, sql) });
  }
  const outer = parseSql(outerSql);
  if (!outer.ok) return { ok: false, reason: outer.error.message };
  const outerPlan: IntermediatePlan['outer'] = readsDistributed(outer.statements[0].node, catalog)
    ? await planGather(outerSql, catalog, port, 'the statement around its subqueries reads distributed tables')
    : { kind: 'router', nodes: [port.finalNode], sql: outerSql, reason: 'the statement around its subqueries reads their results on this node' };
  return {
    ok: true,
    plan: { kind: 'intermediate', pieces: planned, outer: outerPlan, finalNode: port.finalNode, reason: `${pieces.length === 1 ? '1 subquery planned on its own, its result' : `${pieces.length} subqueries planned on their own, their results`} shipped to node ${port.finalNode}` },
  };
}
