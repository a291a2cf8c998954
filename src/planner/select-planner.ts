// The cascade for a SELECT that reads distributed tables and is not pinned to one node's keys: tier 2
// (push down and merge) when the shape splits, else tier 3 (gather the tables' rows on one node). The reason
// tier 2 gave up travels into the plan, so EXPLAIN says why.

import type { Node } from '@pgsql/types';
import type { Catalog } from '../catalog/catalog';
import type { DistributedPlan } from './distributed-plan';
import { planBroadcast } from './broadcast-planner';
import { planGather } from './gather-planner';
import { planIntermediate } from './intermediate-planner';
import { planRepartition } from './repartition-planner';
import type { PlannerPort } from './planner-port';
import { planPushdown } from './pushdown-planner';

/** `sql` is the statement's own text (its tree's positions count from its start). */
export async function planSelect(statement: Node, sql: string, catalog: Catalog, port: PlannerPort, nodes?: readonly number[]): Promise<DistributedPlan> {
  const select = (statement as { SelectStmt?: Record<string, unknown> }).SelectStmt;
  if (select) {
    const pushed = await planPushdown(select, catalog, port, sql, nodes);
    if (pushed.ok) return pushed.plan;
    const intermediate = await planIntermediate(statement, catalog, port, (node, text) => planSelect(node, text, catalog, port));
    if (intermediate.ok) return intermediate.plan;
    const broadcast = await planBroadcast(sql, catalog, port);
    if (broadcast.ok) return broadcast.plan;
    const repartition = await planRepartition(sql, catalog, port);
    if (repartition.ok) return repartition.plan;
    return await planGather(sql, catalog, port, pushed.reason);
  }
  return await planGather(sql, catalog, port, 'not a plain SELECT');
}
