// Runs an AggregatePlan: partial states from every node, folded by group at the proxy, shipped into a temporary
// table on the finishing node, which runs the final SQL; its answer is relayed to the client as its own bytes.

import type { AggregatePlan } from '../planner/distributed-plan';
import { dataRowFields } from '../protocol/data-row';
import { PgError, SqlState } from '../protocol/errors';
import { decodeRowDescription } from '../protocol/row-description';
import type { ExecutionOutcome, ExecutionPort, StepStats, WorkerFragments } from './execution-port';
import type { FragmentResult, FragmentTask } from './fragment-worker';
import type { BackendConnection } from '../backend/backend-connection';
import { firstError, forEachRow, FragmentStream, settleStreams, whenDescribed } from './fragment-stream';
import { copyInto, FinalNodeTransaction, relayFinal } from './intermediate-result';
import { PartialCombiner } from './partial-combine';
import { MessageChannel } from 'node:worker_threads';
import type { FieldDescription } from '../protocol/row-description';
import type { CombineResult, CombineTask } from './combine-worker';
import { workerPool } from './worker-pool';

export async function executeAggregate(plan: AggregatePlan, port: ExecutionPort): Promise<ExecutionOutcome> {
  const started = process.hrtime.bigint();
  // Asked before the fragments start: the connection it asks on is about to run one.
  const textBytewise = plan.defaultCollation && (await port.textOrderIsBytewise());
  // Every node needed is asked for before any starts: one out of service fails the statement with nothing to undo.
  const connections = plan.fragment.nodes.map((node) => port.connectionFor(node));
  const connection = port.connectionFor(plan.finalNode);
  // A worker's connections see no temporary table of the session's (a broadcast's copies, the client's own).
  if (plan.groupColumns > 0 && !plan.rows && port.workerFragments && !plan.fragment.sql.includes('pg_temp')) {
    return executeInWorker(plan, port, port.workerFragments, connection, textBytewise, started);
  }
  const streams = connections.map((c) => new FragmentStream(c, plan.fragment.sql, port.activity));
  const settle = () => settleStreams(streams, firstError(streams) !== null);
  await whenDescribed(streams);
  let failed = firstError(streams);
  if (failed || !streams[0].rowDescription) {
    await settle();
    return { ok: false, error: failed?.error ?? new PgError({ code: SqlState.internalError, message: 'a fragment returned no rows description' }), errorFrame: failed?.frame ?? null };
  }
  const fields = decodeRowDescription(streams[0].rowDescription.subarray(5));
  // Groups may be many: fold them off the main thread. A scalar aggregate has one row per node.
  const combined =
    plan.groupColumns > 0 && !plan.rows ? await foldInWorker(streams, fields, plan, textBytewise, port.mergeMemoryLimit) : await foldHere(streams, fields, plan, textBytewise, port.mergeMemoryLimit);
  failed = firstError(streams);
  await settle();
  if (failed) return { ok: false, error: failed.error, errorFrame: failed.frame };
  if (!combined.ok) {
    // Plain rows past the limit: nothing reached the client yet, so the next tier (which streams them) answers.
    return { ok: false, error: new PgError({ code: combined.code, message: combined.message, hint: combined.hint }), errorFrame: null, fallback: plan.rows && combined.code === SqlState.programLimitExceeded };
  }
  const combinedAt = process.hrtime.bigint();
  const steps: StepStats[] = streams.map((s, i) => ({ step: `fragment on node ${plan.fragment.nodes[i]}`, rows: s.rowCount, ms: s.elapsedMs }));
  steps.push({ step: combined.folding ? 'combine at the proxy' : 'collect at the proxy (no exact fold for these types)', rows: combined.groups, ms: Number(combinedAt - started) / 1e6 });
  return finish(plan, port, connection, fields.length, combined.copyText, steps, combinedAt);
}

/** Ships the folded groups into a temporary table on the finishing node and relays the final SQL's answer. */
async function finish(plan: AggregatePlan, port: ExecutionPort, connection: BackendConnection, columnCount: number, copyText: Uint8Array, steps: StepStats[], combinedAt: bigint): Promise<ExecutionOutcome> {
  const transaction = new FinalNodeTransaction(connection);
  const table = `pg_temp.${port.temporaryName('partials')}`;
  transaction.track(table);
  const columns = Array.from({ length: columnCount }, (_, i) => `c${i}`).join(', ');
  const create = `${transaction.prelude}CREATE TEMPORARY TABLE ${table} (${columns})${transaction.onCommit} AS ${plan.fragment.sql} WITH NO DATA; COPY ${table} FROM STDIN`;
  let failure = await copyInto(connection, create, (_, sendText) => sendText(Buffer.from(copyText.buffer, copyText.byteOffset, copyText.byteLength)));
  let rows = 0;
  if (!failure) {
    const outcome = await relayFinal(connection, plan.finalSql.replace('{{partials}}', table), port.sink, port.activity);
    failure = outcome.failure;
    rows = outcome.rows;
  }
  await transaction.finish(failure !== null);
  if (failure) return { ok: false, error: failure.error, errorFrame: failure.frame };
  const now = process.hrtime.bigint();
  return { ok: true, rows, stats: [...steps, { step: `final on node ${plan.finalNode}`, rows, ms: Number(now - combinedAt) / 1e6 }] };
}

/**
 * Runs the fragments in a worker thread on connections of its own (fragment-worker.ts): the main thread sees
 * only the folded groups. A cancel of the statement reaches the worker's connections through `onCancel`.
 */
async function executeInWorker(plan: AggregatePlan, port: ExecutionPort, worker: WorkerFragments, connection: BackendConnection, textBytewise: boolean, started: bigint): Promise<ExecutionOutcome> {
  const { port1, port2 } = new MessageChannel();
  const task: FragmentTask = {
    startup: worker.startup,
    settings: await worker.settings(),
    nodes: plan.fragment.nodes,
    sql: plan.fragment.sql,
    groupColumns: plan.groupColumns,
    combine: plan.combine,
    textBytewise,
    limitBytes: port.mergeMemoryLimit,
    port: port2,
  };
  const unregister = worker.onCancel(() => port1.postMessage({ cancel: true }));
  // The worker's rows stay in its thread: SHOW parapool_queries sees its fragments run, and their rows once done.
  const activities = plan.fragment.nodes.map((node) => port.activity?.fragment(node, 'worker'));
  let result: FragmentResult;
  try {
    result = (await workerPool().run(task, { name: 'runFragmentsAndFold', transferList: [port2] as never })) as FragmentResult;
  } catch (error) {
    // The thread itself failed (its connections went with it): this statement fails, the session goes on.
    result = { ok: false, code: SqlState.internalError, message: `a worker thread failed: ${(error as Error).message}` };
  } finally {
    unregister();
    port1.close();
  }
  activities.forEach((activity, i) => {
    if (!activity) return;
    if (result.ok) activity.rows = result.steps.find((s) => s.node === plan.fragment.nodes[i])?.rows ?? 0;
    activity.finish(!result.ok);
  });
  if (!result.ok) {
    return { ok: false, error: new PgError({ code: result.code, message: result.message, hint: result.hint, detail: result.detail }), errorFrame: result.frame ? Buffer.from(result.frame) : null };
  }
  const combinedAt = process.hrtime.bigint();
  const steps: StepStats[] = result.steps.map((s) => ({ step: `fragment on node ${s.node} (in a worker thread)`, rows: s.rows, ms: s.ms }));
  steps.push({ step: result.folding ? 'combine in a worker thread' : 'collect in a worker thread (no exact fold for these types)', rows: result.groups, ms: Number(combinedAt - started) / 1e6 });
  return finish(plan, port, connection, result.columns, result.copyText, steps, combinedAt);
}

const batchBytes = 256 * 1024;
const batchesInFlight = 8;

/** Folds the partial rows in this thread: for scalar aggregates, one row per node, not worth a thread hop. */
async function foldHere(streams: readonly FragmentStream[], fields: readonly FieldDescription[], plan: AggregatePlan, textBytewise: boolean, limitBytes: number): Promise<CombineResult> {
  const combiner = plan.rows ? PartialCombiner.keepingRows(plan.groupColumns, limitBytes) : PartialCombiner.create(fields, plan.groupColumns, plan.combine, textBytewise, limitBytes);
  try {
    await forEachRow(streams, (frame) => combiner.add(dataRowFields(frame.payload)));
  } catch (error) {
    if (error instanceof PgError) return { ok: false, code: error.code, message: error.message, hint: error.hint };
    throw error;
  }
  return { ok: true, copyText: combiner.copyText(), groups: combiner.groupCount, folding: combiner.folding };
}

/**
 * Folds the partial rows in a worker thread: the frames go over in batches of whole frames, at most a few batches
 * ahead of the worker, so a slow fold holds the nodes back instead of filling memory.
 */
async function foldInWorker(streams: readonly FragmentStream[], fields: readonly FieldDescription[], plan: AggregatePlan, textBytewise: boolean, limitBytes: number): Promise<CombineResult> {
  const { port1, port2 } = new MessageChannel();
  const task: CombineTask = { fields, groupColumns: plan.groupColumns, combine: plan.combine, textBytewise, limitBytes, port: port2 };
  const result = workerPool().run(task, { name: 'combinePartials', transferList: [port2] as never }) as Promise<CombineResult>;
  let inFlight = 0;
  let wake: (() => void) | null = null;
  port1.on('message', () => {
    inFlight--;
    wake?.();
    wake = null;
  });
  let batch: Buffer[] = [];
  let bytes = 0;
  const post = async (end: boolean) => {
    const rows = new Uint8Array(bytes);
    let offset = 0;
    for (const frame of batch) {
      rows.set(frame, offset);
      offset += frame.length;
    }
    batch = [];
    bytes = 0;
    inFlight++;
    port1.postMessage(end ? { rows, end: true } : { rows }, [rows.buffer]);
    while (inFlight > batchesInFlight) await new Promise<void>((resolve) => (wake = resolve));
  };
  try {
    await forEachRow(streams, (frame) => {
      batch.push(frame.raw);
      bytes += frame.raw.length;
      return bytes >= batchBytes ? post(false) : undefined;
    });
  } finally {
    await post(true);
  }
  const outcome = await result;
  port1.close();
  return outcome;
}
