// A write whose rows live on several nodes: each node runs its own part, and the client gets one answer, as one
// server would give it: one RowDescription, every RETURNING row (in statement order where the statement has one),
// and one command tag whose row count is the sum. Rows are held until every node answered (RETURNING only).

import type { BackendConnection } from '../backend/backend-connection';
import { decodeBackendNotice } from '../protocol/backend-error';
import { BackendCode } from '../protocol/message-codes';
import { serverMessages } from '../protocol/server-messages';
import { serialize } from 'pg-protocol';

export interface NodeReply {
  readonly connection: BackendConnection;
  rowDescription: Buffer | null;
  readonly rows: Buffer[];
  readonly notices: Buffer[];
  tag: string | null;
  /** The node's ErrorResponse frame, to relay as is. */
  error: Buffer | null;
  errorCode: string | null;
}

/**
 * Runs one simple query on a node and keeps every reply frame; rejects only when the connection is lost. A COPY
 * FROM STDIN is refused unless `onCopyIn` takes its CopyInResponse (the caller then streams the data).
 */
export async function collectReply(connection: BackendConnection, sql: string, onCopyIn?: (raw: Buffer) => void): Promise<NodeReply> {
  const reply: NodeReply = { connection, rowDescription: null, rows: [], notices: [], tag: null, error: null, errorCode: null };
  await connection.exchange([serialize.query(sql)], (frame) => {
    switch (frame.code) {
      case BackendCode.rowDescription:
        reply.rowDescription = frame.raw;
        break;
      case BackendCode.dataRow:
        reply.rows.push(frame.raw);
        break;
      case BackendCode.noticeResponse:
        reply.notices.push(frame.raw);
        break;
      case BackendCode.commandComplete:
        reply.tag = frame.payload.toString('utf8', 0, frame.payload.length - 1);
        break;
      case BackendCode.errorResponse:
        reply.error = Buffer.from(frame.raw);
        reply.errorCode = decodeBackendNotice(frame).code ?? null;
        break;
      case BackendCode.copyInResponse:
        if (onCopyIn) onCopyIn(Buffer.from(frame.raw));
        else connection.write(serialize.copyFail('no COPY data in this exchange'));
        break;
    }
  });
  return reply;
}

/** A command tag with the row counts of several nodes added up ("INSERT 0 n", "UPDATE n", "COPY n", ...). */
export function sumTags(tags: readonly string[]): string {
  const parts = tags[0].split(' ');
  const total = tags.reduce((sum, tag) => sum + BigInt(tag.split(' ').pop() ?? '0'), 0n);
  parts[parts.length - 1] = String(total);
  return parts.join(' ');
}

/**
 * The frames one server would have sent for the replies (all successful). `order`, when given, names for each
 * RETURNING row of the statement the reply it comes from, so rows come back in statement order.
 */
export function mergeReplies(replies: readonly NodeReply[], order?: readonly number[]): Buffer[] {
  const frames: Buffer[] = [];
  for (const reply of replies) frames.push(...reply.notices);
  const description = replies.find((r) => r.rowDescription)?.rowDescription;
  if (description) frames.push(description);
  const total = replies.reduce((n, r) => n + r.rows.length, 0);
  if (order && order.length === total) {
    const next = replies.map(() => 0);
    for (const index of order) frames.push(replies[index].rows[next[index]++]);
  } else {
    for (const reply of replies) frames.push(...reply.rows);
  }
  frames.push(serverMessages.commandComplete(sumTags(replies.map((r) => r.tag ?? 'SELECT 0'))));
  return frames;
}

export interface BatchReply {
  /** Every reply frame but ReadyForQuery and the replies to the proxy's own Parse/Close, in order. */
  readonly frames: Buffer[];
  /** The DataRows among them. */
  readonly rows: Buffer[];
  tag: string | null;
  error: Buffer | null;
}

/**
 * Sends an extended-protocol batch (ending with Sync) and keeps its replies until ReadyForQuery. `injected` marks,
 * for each Parse or Close sent, whether it is the proxy's own, whose reply the client must not see.
 */
export async function collectBatch(connection: BackendConnection, frames: readonly Buffer[], injected: readonly boolean[]): Promise<BatchReply> {
  const reply: BatchReply = { frames: [], rows: [], tag: null, error: null };
  const queue = [...injected];
  await connection.exchange(frames, (frame) => {
    switch (frame.code) {
      case BackendCode.parseComplete:
      case BackendCode.closeComplete:
        if (queue.shift() === true) return;
        break;
      case BackendCode.dataRow:
        reply.rows.push(frame.raw);
        return;
      case BackendCode.commandComplete:
        reply.tag = frame.payload.toString('utf8', 0, frame.payload.length - 1);
        break;
      case BackendCode.errorResponse:
        reply.error = Buffer.from(frame.raw);
        queue.length = 0;
        break;
      case BackendCode.copyInResponse:
        connection.writeMany([serialize.copyFail('COPY through the extended protocol is not supported'), serialize.sync()]);
        return;
    }
    reply.frames.push(frame.raw);
  });
  return reply;
}

/** A node's replies to its part of a split batch, grouped by the client message each answers. */
export interface SplitBatchReply {
  /** For each client message sent to the node, in order: its reply frames (notices included). */
  readonly replies: Buffer[][];
  /** The position (among the node's messages) of the one that failed; the node skipped the rest. */
  failedAt: number | null;
}

/**
 * Sends a node its part of an extended-protocol batch whose executions go to different nodes, and groups the
 * replies by message, so that the client's replies can be put back in the order it sent its messages. A message
 * is answered once its last reply arrives: ParseComplete, BindComplete, CloseComplete, RowDescription or NoData
 * (Describe), CommandComplete, EmptyQueryResponse or PortalSuspended (Execute).
 */
export async function collectSplitBatch(connection: BackendConnection, frames: readonly Buffer[], injected: readonly boolean[], messages: number): Promise<SplitBatchReply> {
  const reply: SplitBatchReply = { replies: Array.from({ length: messages }, () => []), failedAt: null };
  const queue = [...injected];
  let at = 0;
  const add = (raw: Buffer, ends: boolean): void => {
    if (at < messages) reply.replies[at].push(raw);
    if (ends) at++;
  };
  await connection.exchange(frames, (frame) => {
    switch (frame.code) {
      case BackendCode.parseComplete:
      case BackendCode.closeComplete:
        if (queue.shift() === true) return;
        return add(frame.raw, true);
      case BackendCode.bindComplete:
      case BackendCode.rowDescription:
      case BackendCode.noData:
      case BackendCode.commandComplete:
      case BackendCode.emptyQueryResponse:
      case BackendCode.portalSuspended:
        return add(frame.raw, true);
      case BackendCode.errorResponse:
        if (reply.failedAt === null) reply.failedAt = Math.min(at, messages - 1);
        queue.length = 0;
        return add(Buffer.from(frame.raw), true);
      case BackendCode.copyInResponse:
        connection.writeMany([serialize.copyFail('COPY through the extended protocol is not supported'), serialize.sync()]);
        return;
      default:
        // DataRow, ParameterDescription, notices: part of the message being answered.
        return add(frame.raw, false);
    }
  });
  return reply;
}
