// Intermediate results: rows the proxy ships into a temporary table on one node (COPY text, streamed), and the
// statement that node then runs over them, relayed to the client as the node's own bytes. The temporary table
// lives in a transaction of that node's session: ON COMMIT DROP when the proxy opened the transaction, dropped
// explicitly inside the client's own, so it never outlives the statement nor leaks to another session.

import { serialize } from 'pg-protocol';
import type { BackendConnection } from '../wire/backend-connection';
import { decodeBackendNotice, pgErrorFromBackend } from '../wire/backend-error';
import type { PgError } from '../wire/errors';
import { BackendCode } from '../wire/message-codes';
import type { ClientSink } from './client-sink';

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
 * Runs `sql` (which ends in COPY ... FROM STDIN) on a node and feeds it the rows `produce` writes through `send`,
 * waiting for the node to drain when its socket is full. Resolves with the node's error, if any.
 */
export async function copyInto(
  connection: BackendConnection,
  sql: string,
  produce: (send: (fields: readonly (Buffer | null)[]) => Promise<void> | void, sendText: (copyText: Buffer) => Promise<void>) => Promise<void>,
): Promise<NodeFailure | null> {
  let failure: NodeFailure | null = null;
  let ready: () => void = () => {};
  const copyStarted = new Promise<void>((resolve) => (ready = resolve));
  let copying = false;
  const exchange = connection.exchange([serialize.query(sql)], (frame) => {
    if (frame.code === BackendCode.copyInResponse) {
      copying = true;
      ready();
    } else if (frame.code === BackendCode.errorResponse && !failure) {
      failure = { error: pgErrorFromBackend(decodeBackendNotice(frame)), frame: Buffer.from(frame.raw) };
    }
  });
  const ended = exchange.then(() => ready());
  await Promise.race([copyStarted, ended]);
  if (!copying) {
    await exchange;
    return failure;
  }
  let pending: Buffer[] = [];
  let pendingBytes = 0;
  const flush = async () => {
    if (pendingBytes === 0) return;
    const full = !connection.write(serialize.copyData(Buffer.concat(pending, pendingBytes)));
    pending = [];
    pendingBytes = 0;
    if (full) await new Promise<void>((resolve) => connection.onceDrained(resolve));
  };
  try {
    await produce(
      async (fields) => {
        if (failure) return;
        pendingBytes += appendCopyRow(fields, pending);
        if (pendingBytes >= copyChunkBytes) await flush();
      },
      async (copyText) => {
        await flush();
        for (let offset = 0; offset < copyText.length && !failure; offset += copyChunkBytes) {
          pending.push(copyText.subarray(offset, offset + copyChunkBytes));
          pendingBytes = Math.min(copyChunkBytes, copyText.length - offset);
          await flush();
        }
      },
    );
    await flush();
    connection.write(failure ? serialize.copyFail('the proxy stopped the copy') : serialize.copyDone());
  } catch (error) {
    connection.write(serialize.copyFail('the rows to copy failed'));
    await exchange;
    throw error;
  }
  await exchange;
  return failure;
}

/**
 * Runs the finishing statement on a node and relays its RowDescription, rows, notices and command tag to the
 * client as bytes; the node's error is returned instead of relayed, so the caller decides how to end.
 */
export async function relayFinal(connection: BackendConnection, sql: string, sink: ClientSink): Promise<{ failure: NodeFailure | null; rows: number }> {
  let failure: NodeFailure | null = null;
  let rows = 0;
  let full = false;
  await connection.exchange([serialize.query(sql)], (frame) => {
    switch (frame.code) {
      case BackendCode.errorResponse:
        if (!failure) failure = { error: pgErrorFromBackend(decodeBackendNotice(frame)), frame: Buffer.from(frame.raw) };
        return;
      case BackendCode.dataRow:
        rows++;
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
