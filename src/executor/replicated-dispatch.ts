// Runs one client exchange (a simple Query, or extended-protocol messages up to Sync) on a set of nodes: the
// leader's replies are relayed to the client as bytes, the others' are drained and reduced to their outcomes
// (command tags, SQLSTATEs), which the caller compares so that a node that disagrees is detached rather than
// left to diverge. The client's ReadyForQuery is held until every node is ready.

import { serialize } from 'pg-protocol';
import type { BackendConnection } from '../backend/backend-connection';
import { decodeBackendNotice } from '../protocol/backend-error';
import type { Frame } from '../protocol/frame-reader';
import { BackendCode, FrontendCode, type TransactionStatus } from '../protocol/message-codes';
import type { ClientSink } from './client-sink';
import type { FragmentActivity, RunningStatement } from '../cluster/statement-activity';

/** What one node is sent in one step of the exchange. */
export interface NodeSend {
  readonly connection: BackendConnection;
  readonly frames: readonly Buffer[];
  /** For each Parse or Close in `frames`, in order: true when the proxy added it and its reply is not relayed. */
  readonly injected: readonly boolean[];
  /** Sync messages in `frames`. */
  readonly syncs: number;
}

export interface NodeOutcome {
  readonly connection: BackendConnection;
  /** Command tags and `ERROR <sqlstate>` entries, in order. */
  readonly outcomes: string[];
  /** Set when the connection was lost during the exchange. */
  lost: Error | null;
  /** Set when the node was not sent the statement because the leader failed it (its outcomes are not compared). */
  skipped: boolean;
}

export interface DispatchResult {
  readonly leader: NodeOutcome;
  readonly others: NodeOutcome[];
  readonly status: TransactionStatus;
}

/** Sent to a node whose leader failed a statement inside a transaction, so that its transaction fails too. */
export const abortMarker = 'PARAPOOL_ABORT_TRANSACTION_TO_MATCH_OTHER_NODES';

const copyFailMessage =
  'COPY FROM STDIN through the extended query protocol is not supported by parapool; send the COPY as a simple query';

interface NodeState extends NodeOutcome {
  isLeader: boolean;
  pendingSyncs: number;
  /** Parse/Close replies expected from this node, true when the reply is the proxy's own. */
  replyQueue: boolean[];
  skippingUntilSync: boolean;
  /** Extended-protocol messages were sent (after a Flush) with no Sync yet. */
  sentPartial: boolean;
  closeListener: (error: Error | null) => void;
  /** What SHOW parapool_queries sees of this node's part, when the statement is tracked. */
  activity: FragmentActivity | null;
}

export class ReplicatedDispatch {
  private readonly states: NodeState[];
  private finish!: (result: DispatchResult) => void;
  readonly done: Promise<DispatchResult>;
  /** True while the client streams COPY data that must go to every node of the exchange. */
  copyIn = false;
  private heldStatus: TransactionStatus = 'I';
  private finished = false;
  /**
   * Keeps back a FATAL that is the leader's first reply (the node had ended the connection before the statement
   * reached it), so that a statement without effects can run again elsewhere with the client none the wiser.
   */
  holdLeadingFatal = false;
  /** Frames of the leader relayed to the client so far. */
  leaderRelayed = 0;

  constructor(
    leader: BackendConnection,
    others: readonly BackendConnection[],
    private readonly client: ClientSink,
    private readonly onLost: (connection: BackendConnection, error: Error | null) => void,
    /** Extended-protocol exchanges end with Sync; simple ones with the Query's own ReadyForQuery. */
    private readonly extended: boolean,
    /**
     * Run on the leader first and on the others once it is done (pgpool-II's order): two sessions updating the
     * same rows then take their row locks in the same order on every node, instead of each waiting for the other
     * on a different node, a deadlock that no single node can see.
     */
    private readonly leaderFirst: boolean,
  ) {
    this.done = new Promise((resolvePromise) => (this.finish = resolvePromise));
    this.states = [leader, ...others].map((connection, index) => ({
      connection,
      outcomes: [],
      lost: null,
      skipped: false,
      isLeader: index === 0,
      pendingSyncs: 0,
      replyQueue: [],
      skippingUntilSync: false,
      sentPartial: false,
      closeListener: () => undefined,
      activity: null,
    }));
    for (const state of this.states) {
      state.connection.busy = true;
      state.connection.setHandler((frame) => this.onFrame(state, frame));
      state.closeListener = this.closeListener(state);
      state.connection.onClose(state.closeListener);
    }
  }

  /** Shows each node's part of the exchange as a fragment of `statement` (`step`: read or write). */
  track(statement: RunningStatement, step: string): void {
    for (const state of this.states) state.activity ??= statement.fragment(state.connection.node.id, step);
  }

  get connections(): BackendConnection[] {
    return this.states.map((s) => s.connection);
  }

  private closeListener(state: NodeState): (error: Error | null) => void {
    return (error) => {
      if (this.finished || state.lost) return;
      state.lost = error ?? new Error('connection closed');
      state.pendingSyncs = 0;
      if (!state.connection.closedByProxy) this.onLost(state.connection, error);
      this.checkDone();
    };
  }

  private deferred: NodeSend[] | null = null;
  /**
   * Whether the step that ends the exchange (a Sync, or a simple Query) was sent. Until then the exchange is not
   * over, however many connections close: a connection lost while the session still prepares its messages (it
   * may wait for the insert lock) must not end an exchange whose leader has not been sent anything yet.
   */
  private ended = false;

  /** Sends one step; `sends` must name the same connections the dispatch was made for. */
  send(sends: readonly NodeSend[]): void {
    const ends = sends.some((s) => s.syncs > 0);
    if (this.leaderFirst && this.states.length > 1 && ends) {
      this.deferred = sends.filter((s) => s.connection !== this.states[0].connection);
      sends = sends.filter((s) => s.connection === this.states[0].connection);
    }
    this.write(sends);
    if (ends) {
      this.ended = true;
      this.checkDone(); // every connection may be lost already: no reply will come to end it
    }
  }

  private write(sends: readonly NodeSend[]): void {
    for (const send of sends) {
      const state = this.states.find((s) => s.connection === send.connection);
      if (!state || state.lost) continue;
      state.pendingSyncs += send.syncs;
      state.sentPartial = send.syncs === 0;
      if (!state.skippingUntilSync) state.replyQueue.push(...send.injected);
      state.connection.writeMany(send.frames as Buffer[]);
    }
  }

  /** Forwards a client's COPY message (or any message during copy-in) to every node of the exchange. */
  forwardCopy(frame: Frame): boolean {
    let drained = true;
    for (const state of this.states) {
      if (state.lost) continue;
      if (!state.connection.writeCoalesced(frame.raw)) drained = false;
    }
    if (frame.code === FrontendCode.copyDone || frame.code === FrontendCode.copyFail) this.copyIn = false;
    return drained;
  }

  /** Calls back once every node's socket has room again (back-pressure for COPY data). */
  onceDrained(callback: () => void): void {
    const waiting = this.states.filter((s) => !s.lost && s.connection.needsDrain);
    let remaining = waiting.length;
    if (remaining === 0) return callback();
    for (const state of waiting) state.connection.onceDrained(() => --remaining === 0 && callback());
  }

  private onFrame(state: NodeState, frame: Frame): void {
    switch (frame.code) {
      case BackendCode.dataRow:
        if (state.activity) state.activity.rows++;
        break;
      case BackendCode.readyForQuery:
        state.pendingSyncs--;
        state.skippingUntilSync = false;
        state.replyQueue = [];
        if (state.isLeader) this.heldStatus = String.fromCharCode(frame.payload[0]) as TransactionStatus;
        this.checkDone();
        return;
      case BackendCode.commandComplete:
        state.outcomes.push(frame.payload.toString('utf8', 0, frame.payload.length - 1));
        break;
      case BackendCode.emptyQueryResponse:
        state.outcomes.push('EMPTY');
        break;
      case BackendCode.errorResponse: {
        const notice = decodeBackendNotice(frame);
        state.outcomes.push(`ERROR ${notice.code ?? ''}`);
        state.skippingUntilSync = true;
        state.replyQueue = [];
        if (state.isLeader && this.holdLeadingFatal && this.leaderRelayed === 0 && notice.severity === 'FATAL') return;
        break;
      }
      case BackendCode.parseComplete:
      case BackendCode.closeComplete:
        if (state.replyQueue.shift() === true) return; // the proxy's own Parse or Close
        break;
      case BackendCode.copyInResponse:
        if (this.extended) {
          // Extended protocol: the node ignores the Syncs it reads during copy-in, so end the COPY and sync again.
          state.connection.writeMany([serialize.copyFail(copyFailMessage), serialize.sync()]);
          return;
        }
        if (state.isLeader) this.copyIn = true;
        break;
    }
    if (state.isLeader) this.relay(state, frame);
  }

  private waitingForClient = false;

  private relay(state: NodeState, frame: Frame): void {
    if (this.client.closed) return;
    this.leaderRelayed++;
    if (!this.client.write(frame.raw) && !this.waitingForClient) {
      // The rest of the chunk already read still goes out; the node's socket waits until the client drains.
      this.waitingForClient = true;
      state.connection.pause();
      this.client.onceDrained(() => {
        this.waitingForClient = false;
        state.connection.resume();
      });
    }
  }

  /** The leader is done: the others run the same step, or, when the leader failed it, only what keeps them in step. */
  private releaseDeferred(): void {
    const deferred = this.deferred!;
    this.deferred = null;
    const leader = this.states[0];
    if (leader.lost || !leader.outcomes.some((o) => o.startsWith('ERROR'))) {
      this.write(deferred);
      return;
    }
    for (const state of this.states.slice(1)) {
      state.skipped = true;
      if (state.lost) continue;
      if (state.sentPartial) {
        // Fail the half-sent batch so that its implicit transaction rolls back, as it did on the leader.
        state.pendingSyncs++;
        state.connection.writeMany([serialize.parse({ text: abortMarker }), serialize.sync()]);
      } else if (this.heldStatus === 'E') {
        // The leader's failed exchange may itself have opened the transaction: open it here too (a BEGIN inside
        // one only warns), then fail it, so every node ends where the leader is.
        state.pendingSyncs += 2;
        state.connection.writeMany([serialize.query('BEGIN'), serialize.query(abortMarker)]);
      }
    }
  }

  private checkDone(): void {
    if (this.finished || !this.ended) return;
    if (this.deferred && (this.states[0].lost || this.states[0].pendingSyncs === 0)) this.releaseDeferred();
    if (this.states.some((s) => !s.lost && s.pendingSyncs > 0)) return;
    this.finished = true;
    for (const state of this.states) {
      state.activity?.finish(state.lost !== null || state.outcomes.some((o) => o.startsWith('ERROR')));
      state.connection.busy = false;
      state.connection.setHandler(null);
      state.connection.removeCloseListener(state.closeListener);
      state.connection.resume();
    }
    const [leader, ...others] = this.states;
    this.finish({ leader, others, status: this.heldStatus });
  }
}
