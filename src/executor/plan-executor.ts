// Runs a distributed read for a session: plans it (asking a node for types when the split needs them), runs the
// plan's executor, or answers EXPLAIN with the plan's text. Rows and the command tag go to the client; the caller
// writes ReadyForQuery, and on failure decides how the session's transaction ends.

import type { Node } from '@pgsql/types';
import type { Catalog } from '../catalog/catalog';
import { assertNever, type DistributedPlan, type RouterPlan } from '../planner/distributed-plan';
import { relayFinal } from './intermediate-result';
import { explainPlan } from '../planner/explain-plan';
import type { PlannerPort } from '../planner/planner-port';
import { planSelect } from '../planner/select-planner';
import { planGather } from '../planner/gather-planner';
import type { TableShape } from '../planner/gather-pushdown';
import type { BackendConnection } from '../backend/backend-connection';
import { PgError, SqlState } from '../protocol/errors';
import { expandViews } from '../planner/view-expansion';
import { deparseVerified } from '../planner/ast-tools';
import { describeStatement } from '../backend/describe-statement';
import { serverMessages } from '../protocol/server-messages';
import { executeAggregate } from './aggregate-executor';
import type { ExecutionOutcome, ExecutionPort } from './execution-port';
import { executeGather } from './gather-executor';
import { executeMerge } from './merge-executor';
import { executeBroadcast, executeRepartition } from './redistribute-executor';
import { executeIntermediate } from './intermediate-executor';

export interface DistributedReadPort extends ExecutionPort {
  /**
   * Inside a transaction block that can read outside it without seeing anything else (READ COMMITTED, nothing
   * written yet, no temporary tables): connections of their own to every node, for the plans that need a
   * transaction of their own (broadcast, repartition, intermediate results). Released after the plan.
   */
  readonly outsideTransaction?: () => Promise<{ connectionFor(node: number): BackendConnection; release(): void }>;
  readonly nodeCount: number;
  /** The node that finishes merges in SQL: the session's main node. */
  readonly finalNode: number;
  /** The session's connection to the main node, idle, for Describe and catalog questions. */
  plannerConnection(): BackendConnection;
  nodesOfKeys: PlannerPort['nodesOfKeys'];
  readonly broadcastRowLimit: number;
}

export async function executePlan(plan: DistributedPlan, port: ExecutionPort): Promise<ExecutionOutcome> {
  const activity = port.activity;
  if (!activity) return executePlanKind(plan, port);
  // The fragments a nested plan (tier 3's subqueries) starts belong to its own kind; the outer plan's resume after.
  const outer = activity.plan;
  activity.plan = plan.kind;
  try {
    return await executePlanKind(plan, port);
  } finally {
    activity.plan = outer;
  }
}

function executePlanKind(plan: DistributedPlan, port: ExecutionPort): Promise<ExecutionOutcome> {
  switch (plan.kind) {
    case 'merge':
      return executeMerge(plan, port);
    case 'aggregate':
      return executeAggregate(plan, port);
    case 'gather':
      return executeGather(plan, port);
    case 'router':
      return executeRouter(plan, port);
    case 'broadcast':
      return executeBroadcast(plan, port, executePlan);
    case 'repartition':
      return executeRepartition(plan, port, executePlan);
    case 'intermediate':
      return executeIntermediate(plan, port, executePlan);
    default:
      return assertNever(plan);
  }
}

/** The statement, unchanged, on its one node; the node's bytes are relayed as they come. */
async function executeRouter(plan: RouterPlan, port: ExecutionPort): Promise<ExecutionOutcome> {
  const started = process.hrtime.bigint();
  const { failure, rows } = await relayFinal(port.connectionFor(plan.nodes[0]), plan.sql, port.sink, port.activity);
  if (failure) return { ok: false, error: failure.error, errorFrame: failure.frame };
  return { ok: true, rows, stats: [{ step: `statement on node ${plan.nodes[0]}`, rows, ms: Number(process.hrtime.bigint() - started) / 1e6 }] };
}

export function plannerPortOf(port: DistributedReadPort): PlannerPort {
  return {
    nodesOfKeys: port.nodesOfKeys,
    tableShapes: (names) => tableShapes(port.plannerConnection(), names),
    hasCollatedColumns: async (tables) => {
      const list = tables.map((n) => `'${n.replace(/'/g, "''")}'`).join(', ');
      const result = await port.plannerConnection().query(
        `SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_collation c ON c.oid = a.attcollation
           WHERE a.attrelid IN (SELECT pg_catalog.to_regclass(n) FROM unnest(ARRAY[${list}]::text[]) AS n) AND a.attnum > 0
             AND c.collname NOT IN ('default', 'C', 'POSIX'))`,
      );
      return result.rows[0]?.[0] === 't';
    },
    estimateRows: async (sql) => {
      const result = await port.plannerConnection().query(`EXPLAIN (FORMAT JSON) ${sql}`);
      return Number((JSON.parse(result.rows[0][0]!) as { Plan: { 'Plan Rows': number } }[])[0].Plan['Plan Rows']);
    },
    nodeCount: port.nodeCount,
    finalNode: port.finalNode,
    broadcastRowLimit: port.broadcastRowLimit,
    describe: async (sql) => (await describeStatement(port.plannerConnection(), sql)).fields.map((f) => f.typeOid),
    aggregateNames: async (names) => {
      if (names.length === 0) return new Set<string>();
      const list = names.map((n) => `'${n.replace(/'/g, "''")}'`).join(', ');
      const result = await port.plannerConnection().query(`SELECT DISTINCT proname FROM pg_catalog.pg_proc WHERE prokind = 'a' AND proname IN (${list})`);
      return new Set(result.rows.map((r) => r[0]!));
    },
  };
}

export type ReadOutcome = { readonly ok: true } | { readonly ok: false; readonly error: PgError; readonly errorFrame: Buffer | null };

/** Plans and runs a distributed read, or answers its EXPLAIN [ANALYZE]. */
export async function runDistributedRead(statement: Node, sql: string, catalog: Catalog, port: DistributedReadPort, options: { nodes?: readonly number[]; explain?: { analyze: boolean } } = {}): Promise<ReadOutcome> {
  let plan: DistributedPlan;
  try {
    const expanded = expandViews(statement, catalog);
    if (expanded !== statement) {
      const text = deparseVerified(expanded);
      if (text === null) throw new PgError({ code: SqlState.featureNotSupported, message: 'this read through a view over distributed tables cannot be written as SQL for the nodes', hint: 'name the view\'s tables in the query' });
      [statement, sql] = [expanded, text];
    }
    plan = await planSelect(statement, sql, catalog, plannerPortOf(port), options.nodes);
  } catch (error) {
    if (error instanceof PgError) return { ok: false, error, errorFrame: null };
    throw error;
  }
  const run = async (sink: ExecutionPort['sink']) => {
    const outcome = await executePlan(plan, { ...port, sink });
    if (outcome.ok || !outcome.fallback) return outcome;
    // Refused only for the transaction block: where the transaction allows, the plan runs outside it.
    if (port.outsideTransaction && (plan.kind === 'intermediate' || plan.kind === 'broadcast' || plan.kind === 'repartition')) {
      const outside = await port.outsideTransaction();
      try {
        const retried = await executePlan(plan, { ...port, sink, connectionFor: outside.connectionFor });
        if (retried.ok || !retried.fallback) return retried;
      } finally {
        outside.release();
      }
    }
    plan = await planGather(sql, catalog, plannerPortOf(port), outcome.error.message);
    return executePlan(plan, { ...port, sink });
  };
  if (!options.explain) {
    const outcome = await run(port.sink);
    return outcome.ok ? { ok: true } : outcome;
  }
  let lines: string[];
  if (options.explain.analyze) {
    const outcome = await run({ write: () => true, onceDrained: (callback: () => void) => callback(), closed: false });
    if (!outcome.ok) return outcome;
    lines = explainPlan(plan, outcome.stats);
  } else {
    lines = explainPlan(plan);
  }
  port.sink.write(serverMessages.textRowDescription(['QUERY PLAN']));
  for (const line of lines) port.sink.write(serverMessages.dataRow([line]));
  port.sink.write(serverMessages.commandComplete('EXPLAIN'));
  return { ok: true };
}

/** The plan of a read pinned to one node, for EXPLAIN. */
export function routerPlan(nodes: readonly number[], reason: string): DistributedPlan {
  return { kind: 'router', nodes, sql: '', reason };
}

export function explainRouter(nodes: readonly number[], reason: string, port: ExecutionPort): void {
  port.sink.write(serverMessages.textRowDescription(['QUERY PLAN']));
  for (const line of explainPlan(routerPlan(nodes, reason))) port.sink.write(serverMessages.dataRow([line]));
  port.sink.write(serverMessages.commandComplete('EXPLAIN'));
}

const bytewiseText = new WeakMap<Catalog, Promise<boolean>>();

/** Whether the database's collation orders text byte by byte (C or POSIX); asked once per catalog. */
export function textOrderIsBytewise(catalog: Catalog, connection: BackendConnection): Promise<boolean> {
  let known = bytewiseText.get(catalog);
  if (!known) {
    known = connection
      .query("SELECT datcollate IN ('C', 'POSIX') FROM pg_catalog.pg_database WHERE datname = pg_catalog.current_database()")
      .then((r) => r.rows[0]?.[0] === 't');
    known.catch(() => bytewiseText.delete(catalog));
    bytewiseText.set(catalog, known);
  }
  return known;
}

/** Columns and primary keys of tables, as the main node resolves their names. */
async function tableShapes(connection: BackendConnection, names: readonly string[]): Promise<Map<string, TableShape>> {
  const shapes = new Map<string, TableShape>();
  if (names.length === 0) return shapes;
  const list = names.map((n) => `'${n.replace(/'/g, "''")}'`).join(', ');
  const result = await connection.query(
    `SELECT n.name, pg_catalog.array_to_json(ARRAY(SELECT attname FROM pg_catalog.pg_attribute WHERE attrelid = c.oid AND attnum > 0 AND NOT attisdropped ORDER BY attnum)),
            pg_catalog.array_to_json(ARRAY(SELECT a.attname FROM pg_catalog.pg_index i JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey) WHERE i.indrelid = c.oid AND i.indisprimary ORDER BY a.attnum))
       FROM unnest(ARRAY[${list}]::text[]) AS n(name) JOIN pg_catalog.pg_class c ON c.oid = pg_catalog.to_regclass(n.name)`,
  );
  for (const [name, columns, primaryKey] of result.rows) shapes.set(name!, { columns: JSON.parse(columns!), primaryKey: JSON.parse(primaryKey!) });
  return shapes;
}
