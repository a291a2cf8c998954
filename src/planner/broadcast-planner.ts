// Tier 3's first optimisation, the broadcast join (Citus's and every MPP engine's): when the statement's
// distributed tables span colocation groups, the largest table's group stays in place and the other tables' rows
// (filtered and projected) are copied to every node. Chosen only when the estimates say it moves fewer rows than
// gathering every table on one node; the statement with the copies in place must then be node-local.

import type { Catalog } from '../catalog/catalog';
import { qualifiedName } from '../catalog/partition-rule';
import { walkAst } from './ast-walk';
import type { BroadcastPlan } from './distributed-plan';
import { planCopies } from './gather-planner';
import type { Planned, PlannerPort } from './planner-port';
import { planPushdown } from './pushdown-planner';
import { parseSql } from './sql-parser';

/** The name of broadcast copy `index` on every node (one statement at a time per session, in its own transaction). */
export function broadcastTableName(index: number): string {
  return `parapool_broadcast_${index}`;
}

export async function planBroadcast(sql: string, catalog: Catalog, port: PlannerPort): Promise<Planned<BroadcastPlan>> {
  const parsed = parseSql(sql);
  if (!parsed.ok) return { ok: false, reason: parsed.error.message };
  const statement = parsed.statements[0].node;
  const ctes = new Set<string>();
  walkAst(statement, (tag, body) => {
    if (tag === 'CommonTableExpr') ctes.add(body.ctename as string);
  });
  const groups = new Map<number, Set<string>>();
  walkAst(statement, (tag, body) => {
    if (tag !== 'RangeVar' || (!body.schemaname && ctes.has(body.relname as string))) return;
    const rule = catalog.distributed(body.schemaname as string | undefined, body.relname as string);
    if (!rule) return;
    const tables = groups.get(rule.colocationGroup) ?? new Set<string>();
    tables.add(qualifiedName(rule.table));
    groups.set(rule.colocationGroup, tables);
  });
  if (groups.size < 2) return { ok: false, reason: 'one colocation group: nothing to broadcast' };
  if (port.broadcastRowLimit <= 0) return { ok: false, reason: 'broadcast_join_limit is 0' };
  // Estimates of each table's rows as the statement filters them (one node's share times the node count).
  const all = await planCopies(sql, catalog, port, () => true, (i) => `estimate_${i}`, []);
  const rows = new Map<string, number>();
  for (const copy of all.tables) rows.set(copy.table, (await port.estimateRows(copy.fragment.sql)) * port.nodeCount);
  const groupRows = [...groups].map(([group, tables]) => ({ group, tables, rows: [...tables].reduce((sum, t) => sum + (rows.get(t) ?? 0), 0) }));
  groupRows.sort((a, b) => b.rows - a.rows);
  const anchor = groupRows[0];
  const moved = groupRows.slice(1).reduce((sum, g) => sum + g.rows, 0);
  const gatherRows = groupRows.reduce((sum, g) => sum + g.rows, 0) * ((port.nodeCount - 1) / port.nodeCount);
  const broadcastRows = moved * port.nodeCount;
  if (broadcastRows >= gatherRows) return { ok: false, reason: `a broadcast would move ${Math.round(broadcastRows)} rows against ${Math.round(gatherRows)} to gather` };
  if (broadcastRows > port.broadcastRowLimit) return { ok: false, reason: `a broadcast would copy ${Math.round(broadcastRows)} rows` };
  const copies = await planCopies(sql, catalog, port, (table) => !anchor.tables.has(table), broadcastTableName, Array.from({ length: port.nodeCount }, (_, i) => i));
  const rewritten = parseSql(copies.sql);
  if (!rewritten.ok) return { ok: false, reason: rewritten.error.message };
  const select = (rewritten.statements[0].node as { SelectStmt?: Record<string, unknown> }).SelectStmt;
  if (!select) return { ok: false, reason: 'not a plain SELECT' };
  // Types are asked before the copies exist: a Describe reads the tables they copy instead.
  const original = (text: string) => copies.tables.reduceRight((out, copy, i) => out.split(`pg_temp.${broadcastTableName(i)}`).join(copy.table), text);
  const innerPort: PlannerPort = { ...port, describe: (probe) => port.describe(original(probe)) };
  const inner = await planPushdown(select, catalog, innerPort, copies.sql);
  if (!inner.ok) return { ok: false, reason: `with ${[...copies.tables].map((t) => t.table).join(', ')} broadcast: ${inner.reason}` };
  const targets = inner.plan.kind === 'router' ? inner.plan.nodes : inner.plan.kind === 'aggregate' ? [...new Set([...inner.plan.fragment.nodes, inner.plan.finalNode])] : inner.plan.fragment.nodes;
  return {
    ok: true,
    plan: {
      kind: 'broadcast',
      tables: copies.tables,
      targets: [...targets].sort((a, b) => a - b),
      inner: inner.plan,
      estimate: { broadcastRows: Math.round(broadcastRows), gatherRows: Math.round(gatherRows) },
      reason: `${[...copies.tables].map((t) => t.table).join(', ')} copied to every node: fewer rows move than by gathering`,
    },
  };
}
