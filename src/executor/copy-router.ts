// COPY FROM STDIN into a distributed table: the client's stream is cut into rows, each row goes, as the same
// bytes, to the COPY running on its key's node. Rows are batched per node, never held whole; the client is paused
// while the nodes (or the placement of keys a node must compute) fall behind.

import { serialize } from 'pg-protocol';
import { nodesForKeys, type EvaluateSql } from '../catalog/key-placement';
import type { DistributedRule } from '../catalog/partition-rule';
import type { BackendConnection } from '../backend/backend-connection';
import type { CopyFormat } from '../protocol/copy-row-splitter';
import { CopyRowSplitter } from '../protocol/copy-row-splitter';
import { describeNode } from '../cluster/backend-node';
import { PgError, SqlState } from '../protocol/errors';
import { serverMessages } from '../protocol/server-messages';
import type { Frame } from '../protocol/frame-reader';
import { FrontendCode } from '../protocol/message-codes';
import { collectReply, type NodeReply } from './scatter-write';

const flushBytes = 64 * 1024;

export class CopyRouter {
  /** True while the client streams rows. */
  copyIn = true;
  private readonly splitter: CopyRowSplitter;
  private readonly buffers: Buffer[][];
  private readonly bufferedBytes: number[];
  private chain: Promise<void> = Promise.resolve();
  private queued = 0;
  private failure: PgError | null = null;
  private replies!: Promise<NodeReply[]>;
  private drainWaiters: (() => void)[] = [];

  constructor(
    private readonly rule: DistributedRule,
    format: CopyFormat,
    keyField: number,
    columns: readonly string[],
    /** One connection per node, in node order. */
    private readonly connections: readonly BackendConnection[],
    private readonly evaluate: EvaluateSql,
  ) {
    this.splitter = new CopyRowSplitter(format, keyField, columns.length, { columnNames: columns, table: rule.table.name });
    this.buffers = connections.map(() => []);
    this.bufferedBytes = connections.map(() => 0);
  }

  /** Starts the COPY on every node; resolves with the CopyInResponse to relay once all nodes accept rows. */
  async start(sql: string): Promise<Buffer> {
    let response: Buffer | null = null;
    let ready = 0;
    let resolveReady!: () => void;
    const allReady = new Promise<void>((r) => (resolveReady = r));
    this.replies = Promise.all(
      this.connections.map((connection) =>
        collectReply(connection, sql, (raw) => {
          response ??= raw;
          if (++ready === this.connections.length) resolveReady();
        }).then(
          (reply) => {
            if (reply.error) {
              this.firstFailed ??= reply;
              this.stop('another node failed the COPY');
            }
            return reply;
          },
          () => {
            // A node lost mid-COPY: its rows are gone, so the others must not keep theirs.
            const lost = new PgError({ code: SqlState.connectionFailure, message: `lost connection to ${describeNode(connection.node)} during the COPY`, hint: 'no node kept a row of it: run it again' });
            const reply: NodeReply = { connection, rowDescription: null, rows: [], notices: [], tag: null, error: serverMessages.errorResponse(lost), errorCode: lost.code };
            this.firstFailed ??= reply;
            this.stop(lost.message);
            return reply;
          },
        ),
      ),
    );
    await Promise.race([allReady, this.replies]);
    if (ready < this.connections.length) {
      for (const connection of this.connections) connection.write(serialize.copyFail('another node refused the COPY'));
      const failed = (await this.replies).find((r) => r.error);
      throw failed ? new RelayedError(failed.error!) : new Error('a node ended the COPY before it began');
    }
    return response!;
  }

  /** Takes one client message of the COPY; false when the client should pause until onceDrained. */
  forwardCopy(frame: Frame): boolean {
    const raw = Buffer.from(frame.raw); // the client's buffer is reused once this returns
    this.queued++;
    this.chain = this.chain.then(() => this.take(raw)).finally(() => {
      this.queued--;
      this.wakeIfDrained();
    });
    if (frame.code === FrontendCode.copyDone || frame.code === FrontendCode.copyFail) this.copyIn = false;
    return this.queued < 8 && !this.connections.some((c) => c.needsDrain);
  }

  onceDrained(callback: () => void): void {
    this.drainWaiters.push(callback);
    this.wakeIfDrained();
  }

  /** Connections whose drain this router already waits for (one listener each, not one per call). */
  private readonly awaitingDrain = new Set<BackendConnection>();

  private wakeIfDrained(): void {
    if (this.queued >= 8 || this.connections.some((c) => c.needsDrain)) {
      for (const c of this.connections) {
        if (!c.needsDrain || this.awaitingDrain.has(c)) continue;
        this.awaitingDrain.add(c);
        c.onceDrained(() => {
          this.awaitingDrain.delete(c);
          this.wakeIfDrained();
        });
      }
      return;
    }
    const waiters = this.drainWaiters;
    this.drainWaiters = [];
    for (const waiter of waiters) waiter();
  }

  /** The node reply that ended the COPY first: its error is the one to report, not the others' echo of it. */
  private firstFailed: NodeReply | null = null;

  /** Set once a node ended its COPY early (an error, a lost connection): the others are told to fail theirs. */
  private stopped = false;

  /** Ends the COPY on every node still in it; the client's remaining data is read and dropped. */
  private stop(reason: string): void {
    if (this.stopped) return;
    this.stopped = true;
    for (const connection of this.connections) connection.write(serialize.copyFail(reason));
  }

  private async take(raw: Buffer): Promise<void> {
    if (this.failure || this.stopped) return;
    const code = raw[0];
    try {
      if (code === FrontendCode.copyData) {
        await this.route(this.splitter.push(raw.subarray(5)));
      } else if (code === FrontendCode.copyDone) {
        await this.route(this.splitter.finish());
        this.flush(true);
        for (const connection of this.connections) connection.write(serialize.copyDone());
      } else if (code === FrontendCode.copyFail) {
        const message = raw.subarray(5, raw.length - 1).toString('utf8');
        for (const connection of this.connections) connection.write(serialize.copyFail(message));
      }
    } catch (error) {
      this.failure = error instanceof PgError ? error : new PgError({ code: 'XX000', message: String(error) });
      for (const connection of this.connections) connection.write(serialize.copyFail(this.failure.message));
    }
  }

  private headerSent = false;

  private async route(rows: { raw: Buffer; key: string | null }[]): Promise<void> {
    if (!this.headerSent && this.splitter.headerLine) {
      // Every node's COPY has HEADER too and skips its first line: each gets the header.
      this.headerSent = true;
      for (const connection of this.connections) connection.write(serialize.copyData(this.splitter.headerLine));
    }
    if (rows.length === 0) return;
    const nodes = await nodesForKeys(this.rule, rows.map((r) => r.key), this.evaluate);
    rows.forEach((row, i) => {
      this.buffers[nodes[i]].push(row.raw);
      this.bufferedBytes[nodes[i]] += row.raw.length;
    });
    this.flush(false);
  }

  private flush(all: boolean): void {
    this.connections.forEach((connection, node) => {
      if (this.bufferedBytes[node] === 0 || (!all && this.bufferedBytes[node] < flushBytes)) return;
      connection.write(serialize.copyData(Buffer.concat(this.buffers[node], this.bufferedBytes[node])));
      this.buffers[node] = [];
      this.bufferedBytes[node] = 0;
    });
  }

  /**
   * Every node's reply once the COPY ended, the proxy's own failure (bad row, no node) if any, and the node reply
   * that failed first.
   */
  async finish(): Promise<{ replies: NodeReply[]; failure: PgError | null; failed: NodeReply | null }> {
    await this.chain;
    const replies = await this.replies;
    return { replies, failure: this.failure, failed: this.firstFailed };
  }
}

/** A node's ErrorResponse to relay as is. */
export class RelayedError extends Error {
  constructor(readonly frame: Buffer) {
    super('node error');
  }
}
