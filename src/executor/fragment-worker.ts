// Fragments of a grouped aggregate run inside a worker thread (piscina) on connections the worker owns: it
// connects to each node as the session's user, applies the session's settings, runs the fragment everywhere at
// once, decodes the partial rows and folds them by group, and hands the main thread only the folded groups as
// COPY text. Reading and folding millions of partial rows then never holds up the client sockets. The worker
// keeps its connections between tasks, one idle list per node and start-up.
//
// Only statements outside a transaction block come here: inside one, fragments must see the transaction's own
// writes, which only the session's connections can.

import type { MessagePort } from 'node:worker_threads';
import type { NodeAddress } from '../cluster/backend-node';
import { BackendConnection, sendCancel } from '../wire/backend-connection';
import { dataRowFields } from '../wire/data-row';
import { PgError } from '../wire/errors';
import type { StoredSecret } from '../wire/password-file';
import { decodeRowDescription } from '../wire/row-description';
import type { FoldSpec } from './combine-worker';
import { firstError, forEachRow, FragmentStream, settleStreams, whenDescribed } from './fragment-stream';
import { PartialCombiner } from './partial-combine';

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

function poolKey(node: NodeAddress, startup: WorkerStartup): string {
  return `${node.host}:${node.port}\0${JSON.stringify(startup.parameters)}`;
}

async function acquire(node: NodeAddress, startup: WorkerStartup, settings: FragmentTask['settings']): Promise<BackendConnection> {
  const key = poolKey(node, startup);
  let connection: BackendConnection | undefined;
  while ((connection = idle.get(key)?.pop()) && (connection.closed || connection.txStatus !== 'I')) connection.destroy();
  if (!connection) {
    const secret = startup.secret?.kind === 'scram'
      ? { kind: 'scram' as const, verifier: { ...startup.secret.verifier, salt: Buffer.from(startup.secret.verifier.salt), storedKey: Buffer.from(startup.secret.verifier.storedKey), serverKey: Buffer.from(startup.secret.verifier.serverKey) } }
      : startup.secret;
    connection = await BackendConnection.connect({ node, parameters: new Map(startup.parameters), secret, connectTimeoutMs: startup.connectTimeoutMs }, key);
  }
  const wanted = JSON.stringify(settings);
  if (applied.get(connection) !== wanted) {
    await connection.applySettings(settings, true);
    applied.set(connection, wanted);
  }
  return connection;
}

function release(connection: BackendConnection): void {
  if (connection.closed || connection.txStatus !== 'I' || connection.busy) {
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
}

/** Idle connections a worker keeps per node and start-up; more are closed when their task ends. */
const idlePerKey = 4;

export async function runFragmentsAndFold(task: FragmentTask): Promise<FragmentResult> {
  let cancelled = false;
  let streams: FragmentStream[] = [];
  // A connection that was sent a cancel is not reused: the cancel may land on its next statement.
  const cancelledConnections = new Set<BackendConnection>();
  task.port.on('message', () => {
    cancelled = true;
    for (const stream of streams) {
      if (stream.done) continue;
      cancelledConnections.add(stream.connection);
      void sendCancel(stream.connection.node, stream.connection.processId, stream.connection.secretKey);
    }
  });
  const connections: BackendConnection[] = [];
  try {
    for (const id of task.nodes) {
      const node = task.startup.nodes.find((n) => n.id === id)!;
      connections.push(await acquire(node, task.startup, task.settings));
    }
    if (cancelled) return { ok: false, code: '57014', message: 'canceling statement due to user request' };
    streams = connections.map((connection) => new FragmentStream(connection, task.sql));
    await whenDescribed(streams);
    let failed = firstError(streams);
    if (failed || !streams[0].rowDescription) {
      await settle(streams, true, cancelledConnections);
      return failure(failed?.error ?? new PgError({ code: 'XX000', message: 'a fragment returned no rows description' }), failed?.frame ?? null);
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
    if (overflow) return failure(overflow, null);
    if (failed) return failure(failed.error, failed.frame);
    const steps = streams.map((s, i) => ({ node: task.nodes[i], rows: s.rowCount, ms: s.elapsedMs }));
    return { ok: true, copyText: combiner.copyText(), columns: fields.length, groups: combiner.groupCount, folding: combiner.folding, steps };
  } catch (error) {
    if (streams.length > 0) await settle(streams, true, cancelledConnections);
    if (error instanceof PgError) return failure(error, null); // a node's error, or one it refused the connection with
    return failure(new PgError({ code: '08006', message: (error as Error).message }), null);
  } finally {
    task.port.close();
    // A fragment that calls set_config() may leave a setting behind that the next task would not know to undo.
    const changedSettings = /set_config/i.test(task.sql);
    for (const connection of connections) {
      if (cancelledConnections.has(connection) || changedSettings) connection.destroy();
      else release(connection);
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
