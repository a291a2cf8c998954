// Tier 3's second optimisation, the repartition join: two tables of different colocation groups, too large to
// broadcast, joined by `a.x = b.y`, are both re-hashed on x and y over every node, so the join (and whatever is
// node-local around it) runs on all nodes at once instead of on the one node that gathering would load.

import type { Node } from '@pgsql/types';
import { Catalog } from '../catalog/catalog';
import type { DistributedRule } from '../catalog/partition-rule';
import { qualifiedName } from '../catalog/partition-rule';
import { conjuncts, unwrap } from './ast-tools';
import { walkAst } from './ast-walk';
import type { RepartitionPlan } from './distributed-plan';
import { planCopies } from './gather-planner';
import type { Planned, PlannerPort } from './planner-port';
import { planPushdown } from './pushdown-planner';
import { parseSql } from './sql-parser';

type Body = Record<string, unknown>;

export function repartitionTableName(index: number): string {
  return `parapool_repartition_${index}`;
}

/** Below this many rows in all, gathering on one node costs less than setting up copies on every node. */
const minimumRows = 10_000;

interface Side {
  readonly table: string;
  readonly aliases: Set<string>;
}

export async function planRepartition(sql: string, catalog: Catalog, port: PlannerPort): Promise<Planned<RepartitionPlan>> {
  const parsed = parseSql(sql);
  if (!parsed.ok) return { ok: false, reason: parsed.error.message };
  const statement = parsed.statements[0].node;
  const select = (statement as { SelectStmt?: Body }).SelectStmt;
  if (!select) return { ok: false, reason: 'not a plain SELECT' };
  const ctes = new Set<string>();
  walkAst(statement, (tag, body) => {
    if (tag === 'CommonTableExpr') ctes.add(body.ctename as string);
  });
  const sides = new Map<string, Side>();
  walkAst(statement, (tag, body) => {
    if (tag !== 'RangeVar' || (!body.schemaname && ctes.has(body.relname as string))) return;
    const rule = catalog.distributed(body.schemaname as string | undefined, body.relname as string);
    if (!rule) return;
    const table = qualifiedName(rule.table);
    const side = sides.get(table) ?? { table, aliases: new Set<string>() };
    side.aliases.add((body.alias as { aliasname?: string } | undefined)?.aliasname ?? (body.relname as string));
    sides.set(table, side);
  });
  if (sides.size !== 2) return { ok: false, reason: 'a repartition joins exactly two distributed tables' };
  const [left, right] = [...sides.values()];
  const copies = await planCopies(sql, catalog, port, () => true, repartitionTableName, Array.from({ length: port.nodeCount }, (_, i) => i));
  const columnsOf = (table: string) => copies.tables.find((c) => c.table === table)?.columns ?? null;
  const join = joinColumns(select, left, right, columnsOf);
  if (!join) return { ok: false, reason: `no equality joins ${left.table} to ${right.table}` };
  let rows = 0;
  for (const copy of copies.tables) rows += (await port.estimateRows(copy.fragment.sql)) * port.nodeCount;
  if (rows < minimumRows) return { ok: false, reason: `${Math.round(rows)} rows are fewer than a repartition is worth` };
  const rules: DistributedRule[] = copies.tables.map((copy, i) => ({
    kind: 'distributed',
    table: { schema: 'pg_temp', name: repartitionTableName(i) },
    method: 'hash',
    keyColumn: copy.table === left.table ? join.left : join.right,
    keyType: '',
    keyTypeOid: 0,
    bounds: null,
    lists: null,
    functionName: null,
    colocationGroup: -1,
    nodeCount: port.nodeCount,
    version: 0,
  }));
  const repartitioned = new Catalog(catalog.database, [...catalog.all(), ...rules]);
  const rewritten = parseSql(copies.sql);
  if (!rewritten.ok) return { ok: false, reason: rewritten.error.message };
  const original = (text: string) => copies.tables.reduceRight((out, copy, i) => out.split(`pg_temp.${repartitionTableName(i)}`).join(copy.table), text);
  const innerPort: PlannerPort = { ...port, describe: (probe) => port.describe(original(probe)) };
  const inner = await planPushdown((rewritten.statements[0].node as { SelectStmt: Body }).SelectStmt, repartitioned, innerPort, copies.sql);
  if (!inner.ok) return { ok: false, reason: `repartitioned on ${join.left} = ${join.right}: ${inner.reason}` };
  if (inner.plan.kind === 'router') return { ok: false, reason: 'a pinned key needs no repartition' };
  const tables = copies.tables.map((copy, i) => ({ ...copy, hashColumn: copy.columns!.indexOf(rules[i].keyColumn) }));
  if (tables.some((t) => t.hashColumn < 0)) return { ok: false, reason: 'a join column is not copied' };
  return {
    ok: true,
    plan: {
      kind: 'repartition',
      tables,
      targets: Array.from({ length: port.nodeCount }, (_, i) => i),
      inner: inner.plan,
      estimate: { rows: Math.round(rows) },
      reason: `${left.table} and ${right.table} re-hashed on ${join.left} = ${join.right}: the join runs on every node`,
    },
  };
}

/** The columns of `left = right` among the top level's join and WHERE conditions, each naming one side's column. */
function joinColumns(select: Body, left: Side, right: Side, columnsOf: (table: string) => readonly string[] | null): { left: string; right: string } | null {
  const conditions: Node[] = [...conjuncts(select.whereClause)];
  walkAst(select.fromClause, (tag, body) => {
    if (tag === 'JoinExpr' && body.jointype === 'JOIN_INNER') conditions.push(...conjuncts(body.quals));
  });
  const sideOf = (node: unknown): { side: Side; column: string } | null => {
    const [tag, body] = unwrap(node);
    if (tag !== 'ColumnRef') return null;
    const fields = (body.fields as Body[]).map((f) => (f.String as { sval: string } | undefined)?.sval);
    if (fields.some((f) => f === undefined) || fields.length > 2) return null;
    const column = fields[fields.length - 1]!;
    const candidates = [left, right].filter((side) => (fields.length === 2 ? side.aliases.has(fields[0]!) : true) && (columnsOf(side.table)?.includes(column) ?? false));
    return candidates.length === 1 ? { side: candidates[0], column } : null;
  };
  for (const condition of conditions) {
    const [tag, body] = unwrap(condition);
    if (tag !== 'A_Expr' || body.kind !== 'AEXPR_OP' || (body.name as { String: { sval: string } }[])[0]?.String.sval !== '=') continue;
    const a = sideOf(body.lexpr);
    const b = sideOf(body.rexpr);
    if (!a || !b || a.side === b.side) continue;
    return a.side === left ? { left: a.column, right: b.column } : { left: b.column, right: a.column };
  }
  return null;
}
