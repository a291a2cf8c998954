// Intermediate results: rows the proxy ships into a temporary table on one node (COPY text, streamed), and the
// statement that node then runs over them, relayed to the client as the node's own bytes. The temporary table
// lives in a transaction of that node's session: ON COMMIT DROP when the proxy opened the transaction, dropped
// explicitly inside the client's own, so it never outlives the statement nor leaks to another session.

import { serialize } from 'pg-protocol';
import type { BackendConnection } from '../backend/backend-connection';
import { decodeBackendNotice, pgErrorFromBackend } from '../protocol/backend-error';
import { PgError, SqlState } from '../protocol/errors';
import { BackendCode } from '../protocol/message-codes';
import type { ClientSink } from './client-sink';
import type { RunningStatement } from '../cluster/statement-activity';

const copyChunkBytes = 64 * 1024;

export interface NodeFailure {
  readonly error: PgError;
  readonly frame: Buffer;
}

/** Appends one row in COPY text format: tab-separated, \N for NULL, backslash escapes. */
export function appendCopyRow(fields: readonly (Buffer | null)[], out: Buffer[]): number {
  let bytes = 0;
  for (let i = 0; i < fields.length; i++) {
    const field = fields[i];
    let text: Buffer;
    if (field === null) text = nullMarker;
    else if (needsEscape(field)) text = Buffer.from(escapeCopyText(field.toString('utf8')), 'utf8');
    else text = field;
    out.push(text, i === fields.length - 1 ? newline : tab);
    bytes += text.length + 1;
  }
  return bytes;
}

const nullMarker = Buffer.from('\\N');
const tab = Buffer.from('\t');
const newline = Buffer.from('\n');

function needsEscape(field: Buffer): boolean {
  for (let i = 0; i < field.length; i++) {
    const byte = field[i];
    if (byte === 0x5c || byte === 0x09 || byte === 0x0a || byte === 0x0d) return true;
  }
  return false;
}

function escapeCopyText(text: string): string {
  return text.replace(/[\\\t\n\r]/g, (c) => (c === '\\' ? '\\\\' : c === '\t' ? '\\t' : c === '\n' ? '\\n' : '\\r'));
}

/** Runs SQL on a node for the proxy's own purposes; resolves with the node's error, if any (never relayed). */
export async function runQuiet(connection: BackendConnection, sql: string): Promise<NodeFailure | null> {
  let failure: NodeFailure | null = null;
  await connection.exchange([serialize.query(sql)], (frame) => {
    if (frame.code === BackendCode.errorResponse && !failure) failure = { error: pgErrorFromBackend(decodeBackendNotice(frame)), frame: Buffer.from(frame.raw) };
    if (frame.code === BackendCode.copyInResponse) connection.write(serialize.copyFail('no COPY data here'));
  });
  return failure;
}

/**
 * A COPY FROM STDIN running on a node: rows are buffered into CopyData messages of about 64 KiB; a write waits
 * when the node's socket is full. `finish` ends the copy and resolves with the node's error, if any.
 */
export class CopyStream {
  private pending: Buffer[] = [];
  private pendingBytes = 0;
  failure: NodeFailure | null = null;

  private constructor(readonly connection: BackendConnection, private readonly exchange: Promise<void>) {}

  /** Runs `sql`, which ends in COPY ... FROM STDIN; resolves with the stream, or with the node's error before it. */
  static async open(connection: BackendConnection, sql: string): Promise<CopyStream | NodeFailure> {
    let stream: CopyStream | null = null;
    let early: NodeFailure | null = null;
    let ready: () => void = () => {};
    const started = new Promise<void>((resolve) => (ready = resolve));
    let copying = false;
    const exchange = connection.exchange([serialize.query(sql)], (frame) => {
      if (frame.code === BackendCode.copyInResponse) {
        copying = true;
        ready();
      } else if (frame.code === BackendCode.errorResponse) {
        const failure = { error: pgErrorFromBackend(decodeBackendNotice(frame)), frame: Buffer.from(frame.raw) };
        if (stream) stream.failure ??= failure;
        else early ??= failure;
      }
    });
    const ended = exchange.then(() => ready());
    await Promise.race([started, ended]);
    if (!copying) {
      await exchange;
      return early ?? { error: new PgError({ code: SqlState.internalError, message: 'the node did not start the copy' }), frame: Buffer.alloc(0) };
    }
    stream = new CopyStream(connection, exchange);
    if (early) stream.failure = early;
    return stream;
  }

  /** Queues one row; the promise (when there is one) resolves once the node can take more. */
  write(fields: readonly (Buffer | null)[]): Promise<void> | undefined {
    if (this.failure) return undefined;
    this.pendingBytes += appendCopyRow(fields, this.pending);
    return this.pendingBytes >= copyChunkBytes ? this.flush() : undefined;
  }

  /** Queues COPY text made elsewhere (whole rows). */
  async writeText(copyText: Buffer): Promise<void> {
    await this.flush();
    for (let offset = 0; offset < copyText.length && !this.failure; offset += copyChunkBytes) {
      this.pending.push(copyText.subarray(offset, offset + copyChunkBytes));
      this.pendingBytes = Math.min(copyChunkBytes, copyText.length - offset);
      await this.flush();
    }
  }

  private async flush(): Promise<void> {
    if (this.pendingBytes === 0) return;
    const full = !this.connection.write(serialize.copyData(Buffer.concat(this.pending, this.pendingBytes)));
    this.pending = [];
    this.pendingBytes = 0;
    if (full) await new Promise<void>((resolve) => this.connection.onceDrained(resolve));
  }

  /** Ends the copy (CopyFail with `abort`), waits for the node's answer and returns its error, if any. */
  async finish(abort?: string): Promise<NodeFailure | null> {
    if (!abort) await this.flush();
    this.connection.write(abort || this.failure ? serialize.copyFail(abort ?? 'the proxy stopped the copy') : serialize.copyDone());
    await this.exchange;
    return this.failure;
  }
}

/**
 * Runs `sql` (which ends in COPY ... FROM STDIN) on a node and feeds it the rows `produce` writes through `send`
 * (or as ready COPY text through `sendText`). Resolves with the node's error, if any.
 */
export async function copyInto(
  connection: BackendConnection,
  sql: string,
  produce: (send: (fields: readonly (Buffer | null)[]) => Promise<void> | void, sendText: (copyText: Buffer) => Promise<void>) => Promise<void>,
): Promise<NodeFailure | null> {
  const stream = await CopyStream.open(connection, sql);
  if (!(stream instanceof CopyStream)) return stream;
  try {
    await produce(
      (fields) => stream.write(fields),
      (copyText) => stream.writeText(copyText),
    );
  } catch (error) {
    await stream.finish('the rows to copy failed');
    throw error;
  }
  return stream.finish();
}

/**
 * Runs the finishing statement on a node and relays its RowDescription, rows, notices and command tag to the
 * client as bytes; the node's error is returned instead of relayed, so the caller decides how to end.
 */
export async function relayFinal(connection: BackendConnection, sql: string, sink: ClientSink, statement?: RunningStatement): Promise<{ failure: NodeFailure | null; rows: number }> {
  let failure: NodeFailure | null = null;
  let rows = 0;
  let full = false;
  const activity = statement?.fragment(connection.node.id, 'final') ?? null;
  const exchange = connection.exchange([serialize.query(sql)], (frame) => {
    switch (frame.code) {
      case BackendCode.errorResponse:
        if (!failure) failure = { error: pgErrorFromBackend(decodeBackendNotice(frame)), frame: Buffer.from(frame.raw) };
        return;
      case BackendCode.dataRow:
        rows++;
        if (activity) activity.rows++;
        if (!sink.write(frame.raw) && !full) {
          full = true;
          connection.pause();
          sink.onceDrained(() => {
            full = false;
            connection.resume();
          });
        }
        return;
      case BackendCode.rowDescription:
      case BackendCode.commandComplete:
      case BackendCode.noticeResponse:
      case BackendCode.emptyQueryResponse:
        sink.write(frame.raw);
        return;
      case BackendCode.copyInResponse:
        connection.write(serialize.copyFail('no COPY data here'));
        return;
      default:
        return;
    }
  });
  let ended = false;
  try {
    await exchange;
    ended = true;
  } finally {
    activity?.finish(!ended || failure !== null);
  }
  return { failure, rows };
}

/**
 * A transaction on the finishing node for the temporary tables: the proxy's own when the node's session is idle
 * (ended by `finish`), else the client's (the tables are dropped by `finish` and die with it on a rollback).
 */
export class FinalNodeTransaction {
  private readonly ownTransaction: boolean;
  private readonly tables: string[] = [];

  constructor(readonly connection: BackendConnection) {
    this.ownTransaction = connection.txStatus === 'I';
  }

  /** SQL that opens the proxy's transaction when needed, to prefix the first statement. */
  get prelude(): string {
    return this.ownTransaction ? 'BEGIN; ' : '';
  }

  /** The clause that makes a temporary table die with the proxy's own transaction. */
  get onCommit(): string {
    return this.ownTransaction ? ' ON COMMIT DROP' : '';
  }

  track(table: string): void {
    this.tables.push(table);
  }

  /** Ends the proxy's transaction (COMMIT, or ROLLBACK after a failure), or drops the tables in the client's. */
  async finish(failed: boolean): Promise<void> {
    if (this.connection.closed) return;
    if (this.ownTransaction) {
      await runQuiet(this.connection, failed || this.connection.txStatus === 'E' ? 'ROLLBACK' : 'COMMIT');
    } else if (this.connection.txStatus === 'T' && this.tables.length > 0) {
      await runQuiet(this.connection, `DROP TABLE IF EXISTS ${this.tables.join(', ')}`);
    }
  }
}
