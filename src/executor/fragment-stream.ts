// One fragment running on one node: its rows queue up as undecoded DataRow frames for a merge to pull. The queue is
// bounded: past the high-water mark the node's socket is paused (TCP then holds the node back), so memory stays
// flat whatever the result size. The node's error, or the loss of its connection, ends the stream with a PgError.

import { serialize } from 'pg-protocol';
import { describeNode } from '../cluster/backend-node';
import { sendCancel, type BackendConnection } from '../backend/backend-connection';
import { decodeBackendNotice, pgErrorFromBackend } from '../protocol/backend-error';
import { PgError, SqlState } from '../protocol/errors';
import type { Frame } from '../protocol/frame-reader';
import { BackendCode } from '../protocol/message-codes';
import type { FragmentActivity, RunningStatement } from '../cluster/statement-activity';

const highWater = 1024;
const lowWater = 256;

export class FragmentStream {
  rowDescription: Buffer | null = null;
  /** The node's ErrorResponse frame (relayed as is) with its decoded error; or a PgError made by the proxy. */
  error: { frame: Buffer | null; error: PgError } | null = null;
  done = false;
  /** Set once the merge no longer wants this stream's rows. */
  discarded = false;
  rowCount = 0;
  readonly startedAt = process.hrtime.bigint();
  finishedAt: bigint | null = null;
  private queue: Frame[] = [];
  private head = 0;
  private paused = false;
  private waiter: (() => void) | null = null;
  readonly finished: Promise<void>;

  /** What SHOW parapool_queries sees of this fragment, when the statement is tracked. */
  private readonly activity: FragmentActivity | null;

  constructor(readonly connection: BackendConnection, readonly sql: string, statement?: RunningStatement) {
    this.activity = statement ? statement.fragment(connection.node.id) : null;
    this.finished = connection
      .exchange([serialize.query(sql)], (frame) => this.onFrame(frame))
      .catch((error: unknown) => {
        this.error ??= {
          frame: null,
          error: error instanceof PgError ? error : new PgError({ code: SqlState.connectionFailure, message: `lost connection to ${describeNode(connection.node)}: ${(error as Error).message}` }),
        };
      })
      .finally(() => {
        this.done = true;
        this.finishedAt = process.hrtime.bigint();
        this.activity?.finish(this.error !== null);
        if (this.paused) connection.resume();
        this.wake();
      });
  }

  private onFrame(frame: Frame): void {
    switch (frame.code) {
      case BackendCode.dataRow:
        if (this.discarded) return;
        this.queue.push(frame);
        this.rowCount++;
        if (this.activity) this.activity.rows++;
        if (!this.paused && this.queue.length - this.head >= highWater) {
          this.paused = true;
          this.connection.pause();
        }
        this.wake();
        return;
      case BackendCode.rowDescription:
        this.rowDescription = Buffer.from(frame.raw);
        this.wake();
        return;
      case BackendCode.errorResponse:
        if (!this.error) {
          const error = pgErrorFromBackend(decodeBackendNotice(frame));
          this.error = { frame: Buffer.from(frame.raw), error };
        }
        this.wake();
        return;
      case BackendCode.copyInResponse:
        this.connection.write(serialize.copyFail('a fragment takes no COPY data'));
        return;
      default:
        return; // CommandComplete, notices: the merge writes its own
    }
  }

  private wake(): void {
    const waiter = this.waiter;
    this.waiter = null;
    waiter?.();
  }

  /** Rows queued now. */
  get available(): number {
    return this.queue.length - this.head;
  }

  /** Resolves when a row or the RowDescription arrives, or the stream ends. */
  whenReady(): Promise<void> {
    if (this.available > 0 || this.done) return Promise.resolve();
    return new Promise((resolve) => (this.waiter = resolve));
  }

  peek(): Frame | undefined {
    return this.head < this.queue.length ? this.queue[this.head] : undefined;
  }

  shift(): Frame | undefined {
    if (this.head >= this.queue.length) return undefined;
    const frame = this.queue[this.head++];
    if (this.head >= 4096 && this.head * 2 >= this.queue.length) {
      this.queue = this.queue.slice(this.head);
      this.head = 0;
    }
    if (this.paused && this.queue.length - this.head <= lowWater) {
      this.paused = false;
      this.connection.resume();
    }
    return frame;
  }

  /** Drops every queued and future row (after an early stop or another node's error), keeping the socket flowing. */
  discard(): void {
    this.queue = [];
    this.head = 0;
    this.discarded = true;
    if (this.paused) {
      this.paused = false;
      this.connection.resume();
    }
  }

  get elapsedMs(): number {
    return Number((this.finishedAt ?? process.hrtime.bigint()) - this.startedAt) / 1e6;
  }
}

/** Waits until every stream has its RowDescription, an error, or has ended. */
export async function whenDescribed(streams: readonly FragmentStream[]): Promise<void> {
  for (const stream of streams) {
    while (!stream.rowDescription && !stream.done && !stream.error) await stream.whenReady();
  }
}

/** The first error among the streams, in node order. */
export function firstError(streams: readonly FragmentStream[]): { frame: Buffer | null; error: PgError } | null {
  for (const stream of streams) if (stream.error && !stream.discarded) return stream.error;
  return null;
}

/**
 * Passes every row of the streams to `onRow` in arrival order, whichever node sends it, waiting on `onRow` when
 * it returns a promise (back-pressure from where the rows go). Ends when every stream has, or at the first error.
 */
export async function forEachRow(streams: readonly FragmentStream[], onRow: (frame: Frame) => void | Promise<void>): Promise<void> {
  for (;;) {
    let moved = false;
    for (const stream of streams) {
      let frame;
      while ((frame = stream.shift())) {
        moved = true;
        const waiting = onRow(frame);
        if (waiting) await waiting;
      }
    }
    if (firstError(streams)) return;
    if (!moved) {
      const live = streams.filter((s) => !s.done);
      if (live.length === 0) return;
      await Promise.race(live.map((s) => s.whenReady()));
    }
  }
}

/**
 * Ends the streams: their rows are no longer wanted; with `cancel`, the ones still running are cancelled on their
 * nodes (after another node's error there is no point in finishing them). Resolves once every node is idle.
 */
export async function settleStreams(streams: readonly FragmentStream[], cancel: boolean): Promise<void> {
  const cancels: Promise<void>[] = [];
  for (const stream of streams) {
    stream.discard();
    if (cancel && !stream.done && !stream.connection.closed) cancels.push(sendCancel(stream.connection.node, stream.connection.processId, stream.connection.secretKey));
  }
  // N.B. waiting for the cancel to be delivered, not only for the node's answer, keeps a late cancel from
  // reaching the session's next statement on that node.
  await Promise.all([...cancels, ...streams.map((s) => s.finished)]);
}
