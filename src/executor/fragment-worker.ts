// Fragments of a grouped aggregate run inside a worker thread (piscina) on connections the worker owns: it
// connects to each node as the session's user, applies the session's settings, runs the fragment everywhere at
// once, decodes the partial rows and folds them by group, and hands the main thread only the folded groups as
// COPY text. Reading and folding millions of partial rows then never holds up the client sockets. The worker
// keeps its connections between tasks, one idle list per node and start-up; a kept connection answers a round
// trip before each use, and the main thread has every worker close those to a database it is about to drop.
//
// Only statements outside a transaction block come here: inside one, fragments must see the transaction's own
// writes, which only the session's connections can.

import { BroadcastChannel, isMainThread, threadId, type MessagePort } from 'node:worker_threads';
import type { NodeAddress } from '../cluster/backend-node';
import { BackendConnection, sendCancel } from '../backend/backend-connection';
import { dataRowFields } from '../protocol/data-row';
import { PgError } from '../protocol/errors';
import type { StoredSecret } from '../protocol/password-file';
import { decodeRowDescription } from '../protocol/row-description';
import type { FoldSpec } from './combine-worker';
import { firstError, forEachRow, FragmentStream, settleStreams, whenDescribed } from './fragment-stream';
import { PartialCombiner } from './partial-combine';
import { workerChannelName, type WorkerBroadcast } from './worker-messages';

/** What a worker needs to connect to the nodes as the session does. */
export interface WorkerStartup {
  readonly nodes: readonly NodeAddress[];
  readonly parameters: readonly (readonly [string, string])[];
  readonly secret: StoredSecret | null;
  readonly connectTimeoutMs: number;
}

export interface FragmentTask extends FoldSpec {
  readonly startup: WorkerStartup;
  /** The session's own settings (name, value), applied to each connection before the fragment. */
  readonly settings: readonly (readonly [string, string])[];
  readonly nodes: readonly number[];
  readonly sql: string;
  /** Receives { cancel: true } from the main thread (CancelRequest, the client gone). */
  readonly port: MessagePort;
}

export type FragmentResult =
  | { readonly ok: true; readonly copyText: Uint8Array; readonly columns: number; readonly groups: number; readonly folding: boolean; readonly steps: readonly { node: number; rows: number; ms: number }[] }
  | {
      readonly ok: false;
      readonly code: string;
      readonly message: string;
      readonly hint?: string;
      readonly detail?: string;
      /** A node's own ErrorResponse, relayed to the client as is. */
      readonly frame?: Uint8Array;
    };

const idle = new Map<string, BackendConnection[]>();
/** The settings each pooled connection carries, as applied. */
const applied = new WeakMap<BackendConnection, string>();
/** Connections a task is using now. */
const inUse = new Set<BackendConnection>();
/** Connections in use whose database is being dropped: closed when their task ends. */
const doomed = new WeakSet<BackendConnection>();

// Every thread hears the main thread's request to let go of a database (before its DROP DATABASE).
if (!isMainThread) {
  const channel = new BroadcastChannel(workerChannelName);
  channel.unref();
  channel.onmessage = (event) => {
    const message = (event as MessageEvent).data as WorkerBroadcast;
    if (message.kind !== 'close-database') return;
    for (const list of idle.values()) for (const connection of [...list]) if (connection.database === message.database) connection.destroy();
    for (const connection of inUse) if (connection.database === message.database) doomed.add(connection);
    const answer: WorkerBroadcast = { kind: 'closed-database', id: message.id, threadId };
    channel.postMessage(answer);
  };
}

function poolKey(node: NodeAddress, startup: WorkerStartup): string {
  return `${node.host}:${node.port}\0${JSON.stringify(startup.parameters)}`;
}

/**
 * A connection to the node with the task's settings applied: an idle one that answers a round trip (a thread may
 * have been busy while the node closed it), else a new one when `reuse` is false or none is left.
 */
async function acquire(node: NodeAddress, startup: WorkerStartup, settings: FragmentTask['settings'], reuse: boolean): Promise<{ connection: BackendConnection; reused: boolean }> {
  const key = poolKey(node, startup);
  let connection: BackendConnection | undefined;
  const list = idle.get(key);
  while (reuse && list && (connection = list.pop())) {
    if (connection.txStatus === 'I' && (await connection.checkAlive(0))) break;
    connection.destroy();
    connection = undefined;
  }
  const reused = connection !== undefined;
  if (!connection) {
    const secret = startup.secret?.kind === 'scram'
      ? { kind: 'scram' as const, verifier: { ...startup.secret.verifier, salt: Buffer.from(startup.secret.verifier.salt), storedKey: Buffer.from(startup.secret.verifier.storedKey), serverKey: Buffer.from(startup.secret.verifier.serverKey) } }
      : startup.secret;
    connection = await BackendConnection.connect({ node, parameters: new Map(startup.parameters), secret, connectTimeoutMs: startup.connectTimeoutMs }, key);
  }
  inUse.add(connection);
  try {
    const wanted = JSON.stringify(settings);
    if (applied.get(connection) !== wanted) {
      await connection.applySettings(settings, true);
      applied.set(connection, wanted);
    }
  } catch (error) {
    inUse.delete(connection);
    connection.destroy();
    throw error;
  }
  return { connection, reused };
}

function release(connection: BackendConnection): void {
  inUse.delete(connection);
  if (connection.closed || connection.txStatus !== 'I' || connection.busy || doomed.has(connection)) {
    connection.destroy();
    return;
  }
  const list = idle.get(connection.poolKey) ?? [];
  if (list.length >= idlePerKey) {
    connection.destroy();
    return;
  }
  list.push(connection);
  idle.set(connection.poolKey, list);
  if (watched.has(connection)) return;
  watched.add(connection);
  connection.onClose(() => {
    const current = idle.get(connection.poolKey);
    if (current) idle.set(connection.poolKey, current.filter((c) => c !== connection));
  });
}

/** Kept connections that leave their idle list when they close. */
const watched = new WeakSet<BackendConnection>();

/** Idle connections a worker keeps per node and start-up; more are closed when their task ends. */
const idlePerKey = 4;

/**
 * Runs the task's fragments and folds their rows. A fragment only reads, so when a kept connection turns out to
 * have been closed by its node (a restart, pg_terminate_backend, idle_session_timeout), the task runs once more on
 * new connections.
 */
export async function runFragmentsAndFold(task: FragmentTask): Promise<FragmentResult> {
  const state = { cancelled: false, streams: [] as FragmentStream[], cancelledConnections: new Set<BackendConnection>() };
  task.port.on('message', () => {
    state.cancelled = true;
    for (const stream of state.streams) {
      if (stream.done) continue;
      // A connection that was sent a cancel is not reused: the cancel may land on its next statement.
      state.cancelledConnections.add(stream.connection);
      void sendCancel(stream.connection.node, stream.connection.processId, stream.connection.secretKey);
    }
  });
  try {
    const first = await attempt(task, state, true);
    if (!first.retry || state.cancelled) return first.result;
    state.streams = [];
    return (await attempt(task, state, false)).result;
  } finally {
    task.port.close();
  }
}

interface TaskState {
  cancelled: boolean;
  streams: FragmentStream[];
  readonly cancelledConnections: Set<BackendConnection>;
}

async function attempt(task: FragmentTask, state: TaskState, reuse: boolean): Promise<{ result: FragmentResult; retry: boolean }> {
  const { cancelledConnections } = state;
  const connections: BackendConnection[] = [];
  const reusedConnections: BackendConnection[] = [];
  /** A reused connection that its node closed: the whole attempt may be run again. */
  const staleReuse = () => reusedConnections.some((c) => c.closed && !c.closedByProxy);
  try {
    const acquired = await Promise.allSettled(
      task.nodes.map((id) => acquire(task.startup.nodes.find((n) => n.id === id)!, task.startup, task.settings, reuse)),
    );
    for (const outcome of acquired) {
      if (outcome.status !== 'fulfilled') continue;
      connections.push(outcome.value.connection);
      if (outcome.value.reused) reusedConnections.push(outcome.value.connection);
    }
    const refused = acquired.find((o): o is PromiseRejectedResult => o.status === 'rejected');
    if (refused) throw refused.reason;
    if (state.cancelled) return { result: { ok: false, code: '57014', message: 'canceling statement due to user request' }, retry: false };
    const streams = (state.streams = connections.map((connection) => new FragmentStream(connection, task.sql)));
    await whenDescribed(streams);
    let failed = firstError(streams);
    if (failed || !streams[0].rowDescription) {
      await settle(streams, true, cancelledConnections);
      return { result: failure(failed?.error ?? new PgError({ code: 'XX000', message: 'a fragment returned no rows description' }), failed?.frame ?? null), retry: staleReuse() };
    }
    const fields = decodeRowDescription(streams[0].rowDescription.subarray(5));
    const combiner = PartialCombiner.create(fields, task.groupColumns, task.combine, task.textBytewise, task.limitBytes);
    let overflow: PgError | null = null;
    await forEachRow(streams, (frame) => {
      if (overflow) return;
      try {
        combiner.add(dataRowFields(frame.payload));
      } catch (error) {
        overflow = error instanceof PgError ? error : new PgError({ code: 'XX000', message: (error as Error).message });
        void settle(streams, true, cancelledConnections);
      }
    });
    failed = firstError(streams);
    await settle(streams, failed !== null || overflow !== null, cancelledConnections);
    if (overflow) return { result: failure(overflow, null), retry: false };
    if (failed) return { result: failure(failed.error, failed.frame), retry: staleReuse() };
    const steps = streams.map((s, i) => ({ node: task.nodes[i], rows: s.rowCount, ms: s.elapsedMs }));
    return { result: { ok: true, copyText: combiner.copyText(), columns: fields.length, groups: combiner.groupCount, folding: combiner.folding, steps }, retry: false };
  } catch (error) {
    if (state.streams.length > 0) await settle(state.streams, true, cancelledConnections);
    // a node's error, or one it refused the connection with
    const result = failure(error instanceof PgError ? error : new PgError({ code: '08006', message: (error as Error).message }), null);
    return { result, retry: staleReuse() };
  } finally {
    // A fragment that calls set_config() may leave a setting behind that the next task would not know to undo.
    const changedSettings = /set_config/i.test(task.sql);
    for (const connection of connections) {
      if (cancelledConnections.has(connection) || changedSettings) {
        inUse.delete(connection);
        connection.destroy();
      } else {
        release(connection);
      }
    }
  }
}

/** settleStreams, remembering which connections a cancel was sent to. */
function settle(streams: readonly FragmentStream[], cancel: boolean, cancelled: Set<BackendConnection>): Promise<void> {
  if (cancel) for (const stream of streams) if (!stream.done) cancelled.add(stream.connection);
  return settleStreams(streams, cancel);
}

function failure(error: PgError, frame: Buffer | null): FragmentResult {
  return { ok: false, code: error.code, message: error.message, hint: error.hint, detail: error.detail, ...(frame ? { frame: new Uint8Array(frame) } : {}) };
}
