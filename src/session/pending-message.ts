// The session's view of extended-protocol messages: a client's prepared statement, and a message waiting in a
// batch for its Sync or Flush, with what the proxy learned of it on arrival.

import type { Node } from '@pgsql/types';
import type { DistributedRoute } from '../planner/distributed-router';
import type { StatementClass } from '../planner/statement-classifier';
import type { CommandKind } from '../cluster/statement-activity';
import type { PgError } from '../protocol/errors';
import type { Frame } from '../protocol/frame-reader';
import type { BindMessage } from '../protocol/frontend-messages';

/** A client's prepared statement as the client sees it; identity marks a version of a name. */
export interface PreparedStatement {
  readonly name: string;
  readonly parseFrame: Buffer;
  readonly statementClass: StatementClass;
  /** A write calling time functions: each execution runs a copy with the values pinned (see pinTimeFunctions). */
  readonly timePinning?: { readonly node: Node; readonly parameterTypes: number[] };
  /** How the partition rules route it, when it touches a distributed table or calls a parapool function. */
  readonly route?: DistributedRoute;
  /** DDL that may change views or routines, which the planner reads (view-expansion.ts, routine-reads.ts). */
  readonly changesDefinitions?: boolean;
  /** Changes data (not only BEGIN, SET and the like): a transaction that ran it can no longer read outside itself. */
  readonly writesData?: boolean;
  /** What in it PREPARE TRANSACTION refuses (see prepare-refusals.ts): its transaction then commits node by node. */
  readonly prepareRefusal?: string | null;
  /** Sequences its execution may advance (see planner/sequence-use.ts): a write to several nodes takes their insert lock. */
  readonly sequences?: readonly string[];
  /** FETCH, MOVE or CLOSE, answered by the proxy when it holds the cursor named (see sql-cursors.ts). */
  readonly cursorCommand?: Node;
  /** What pool_backend_stats counts an execution as, one entry per SQL statement. */
  readonly kinds?: readonly CommandKind[];
  /** BEGIN or START TRANSACTION alone (JDBC sends it in the batch of the transaction's first statement). */
  readonly beginsTransaction?: boolean;
  /** PostgreSQL's grammar accepts its text. */
  readonly parses?: boolean;
}

export interface PendingMessage {
  readonly frame: Frame;
  /** The statement a Parse creates, or a Bind/Describe uses. */
  readonly statement?: PreparedStatement;
  /** For Bind/Describe/Close of a statement: its name. */
  readonly statementName?: string;
  readonly portal?: string;
  readonly statementClass: StatementClass;
  /** Set when the proxy refuses the message: the batch fails at this point with this error. */
  readonly rejection?: PgError;
  /** For a Bind of a time-pinned statement: the Parse of this execution's pinned copy. */
  pinnedParse?: Buffer;
  /** For a Bind: its parameters, which may hold a distribution key. */
  readonly bind?: BindMessage;
}

