// What the executors borrow from the session that runs them: its connection to each node, the client's socket,
// and one fact about the database. Executors write rows and the command tag; the session writes the rest.

import type { BackendConnection } from '../backend/backend-connection';
import type { PgError } from '../protocol/errors';
import type { StepStats } from '../planner/explain-plan';
import type { ClientSink } from './client-sink';
import type { WorkerStartup } from './fragment-worker';
import type { RunningStatement } from '../cluster/statement-activity';

export interface ExecutionPort {
  /** The session's connection to a node; throws a PgError naming the node when it is out of service. */
  connectionFor(node: number): BackendConnection;
  readonly sink: ClientSink;
  /** True when the database's collation orders text byte by byte (C or POSIX), so the proxy may merge text. */
  textOrderIsBytewise(): Promise<boolean>;
  /**
   * A connection of its own to a node, outside the session's (for reading while the session's connections
   * receive); given back with releaseSource.
   */
  sourceConnection(node: number): Promise<BackendConnection>;
  releaseSource(connection: BackendConnection): void;
  /** A name unique within the session, for temporary tables. */
  temporaryName(prefix: string): string;
  /** The most bytes of rows an operator that must hold state (the proxy's hash aggregate) may keep. */
  readonly mergeMemoryLimit: number;
  /** The most bytes of rows one statement may ship between nodes through the proxy. */
  readonly intermediateResultLimit: number;
  /** Outside a transaction block: how a worker thread connects as the session (see fragment-worker.ts). */
  readonly workerFragments?: WorkerFragments;
  /** The client statement this plan runs for, whose fragments SHOW parapool_queries lists. */
  readonly activity?: RunningStatement;
}

export interface WorkerFragments {
  readonly startup: WorkerStartup;
  /** The session's own settings (SET), for the worker's connections to take. */
  settings(): Promise<[string, string][]>;
  /** Calls `cancel` when the client cancels the statement; the returned function unregisters it. */
  onCancel(cancel: () => void): () => void;
}

export type { StepStats };

export type ExecutionOutcome =
  | { readonly ok: true; readonly rows: number; readonly stats: readonly StepStats[] }
  /**
   * `errorFrame` is a node's own ErrorResponse, relayed as is when present. `fallback` says nothing reached the
   * client yet and the next tier can answer instead (a type the merge cannot order, found at run time).
   */
  | { readonly ok: false; readonly error: PgError; readonly errorFrame: Buffer | null; readonly fallback?: boolean };
