// Cursors over reads of several nodes (DECLARE, FETCH, MOVE, CLOSE), as psycopg's server-side cursors and
// reporting tools use them: a node's own cursor would see only its rows, so the proxy runs the read through the
// distributed planner, spools its rows (SpooledPortal) and answers FETCH and MOVE from them. Cursors read forward
// only; SCROLL and backward or absolute fetches get 0A000.

import type { Node } from '@pgsql/types';
import type { ClientSink } from '../executor/client-sink';
import type { ReadOutcome } from '../executor/plan-executor';
import { RowSpool } from '../executor/row-spool';
import { deparseVerified } from '../planner/ast-tools';
import { cursorHoldOption } from '../planner/prepare-refusals';
import type { BackendConnection } from '../backend/backend-connection';
import { PgError, SqlState } from '../protocol/errors';
import { BackendCode, type TransactionStatus } from '../protocol/message-codes';
import { columnFormats, describeWithFormats, ResultEncoder, wantsBinary } from './result-formats';
import { decodeRowDescription } from '../protocol/row-description';
import { serverMessages } from '../protocol/server-messages';
import { SpooledPortal } from './spooled-portal';
import type { HeldPortals } from './held-portals';

/** What cursors need of the session. */
export interface CursorHost {
  readonly status: TransactionStatus;
  /** The session's portals the proxy holds, which cursors share a namespace with. */
  readonly portals: HeldPortals;
  readonly client: ClientSink;
  read(statement: { node: Node; sql: string }, sink: ClientSink): Promise<ReadOutcome>;
  conversionConnection(): Promise<BackendConnection>;
  readonly spoolMemoryLimit: number;
  readonly spoolFileLimit: number;
}

// DECLARE's option bits (parsenodes.h).
const cursorBinary = 0x1;
const cursorScroll = 0x2;

/** FETCH ALL, as the parser gives it. */
const fetchAll = 2147483647;

/** Runs DECLARE: the read's rows are spooled under the cursor's name; answers DECLARE CURSOR or an error. */
export async function declareCursor(host: CursorHost, name: string, options: number, query: Node): Promise<PgError | null> {
  if (options & cursorScroll) {
    return new PgError({ code: SqlState.featureNotSupported, message: 'a SCROLL cursor over distributed tables is not supported', hint: 'declare it NO SCROLL: its rows are fetched forward only' });
  }
  const hold = (options & cursorHoldOption) !== 0;
  if (!hold && host.status === 'I') return new PgError({ code: '25P01', message: 'DECLARE CURSOR can only be used in transaction blocks' });
  if (host.portals.has(name)) return new PgError({ code: '42P03', message: `cursor "${name}" already exists` });
  const sql = deparseVerified(query);
  if (sql === null) return new PgError({ code: SqlState.featureNotSupported, message: 'this cursor\'s query cannot be written as SQL for the nodes', hint: 'run the query without a cursor' });
  const spool = new RowSpool(host.spoolMemoryLimit, host.spoolFileLimit);
  let description: Buffer | null = null;
  const outcome = await host.read({ node: query, sql }, {
    write: (bytes) => {
      if (bytes[0] === BackendCode.rowDescription) description = Buffer.from(bytes);
      else if (bytes[0] === BackendCode.dataRow) spool.append(bytes);
      return true;
    },
    onceDrained: (callback) => callback(),
    closed: false,
  });
  const failure = !outcome.ok ? outcome.error : spool.failure ?? (description ? null : new PgError({ code: SqlState.internalError, message: 'the cursor\'s read returned no row description' }));
  if (failure) {
    spool.close();
    return failure;
  }
  let encoder: ResultEncoder | null = null;
  if (options & cursorBinary) {
    const fields = decodeRowDescription(description!.subarray(5));
    const formats = fields.map(() => 1);
    encoder = new ResultEncoder(fields, formats);
    description = describeWithFormats(fields, formats);
  }
  const described = description!;
  const portal = new SpooledPortal(spool, encoder, async () => described);
  portal.holdable = hold;
  portal.inTransaction = host.status !== 'I';
  host.portals.set(name, portal);
  host.client.write(serverMessages.commandComplete('DECLARE CURSOR'));
  return null;
}

/** The cursor a FETCH or MOVE names, when the proxy holds it. */
export function fetchTarget(node: Node, portals: HeldPortals): string | null {
  const fetch = (node as { FetchStmt?: { portalname?: string } }).FetchStmt;
  return fetch?.portalname !== undefined && portals.has(fetch.portalname) ? fetch.portalname : null;
}

/**
 * Answers FETCH (the RowDescription unless the client described the portal already, the rows, FETCH n) or MOVE
 * (MOVE n) from a held cursor.
 */
export async function fetchFromCursor(host: CursorHost, node: Node, withDescription: boolean, resultFormats: readonly number[] = []): Promise<PgError | null> {
  const fetch = (node as { FetchStmt: { direction?: string; howMany?: number; portalname: string; ismove?: boolean } }).FetchStmt;
  const portal = host.portals.get(fetch.portalname)!;
  const count = fetch.howMany ?? 0;
  if ((fetch.direction ?? 'FETCH_FORWARD') !== 'FETCH_FORWARD' || count <= 0) {
    return new PgError({ code: SqlState.featureNotSupported, message: 'a cursor over distributed tables fetches forward only', hint: 'use FETCH [FORWARD] n, NEXT or ALL' });
  }
  const limit = count >= fetchAll ? 0 : count;
  if (fetch.ismove) {
    host.client.write(serverMessages.commandComplete(`MOVE ${portal.skip(limit)}`));
    return null;
  }
  if (withDescription) host.client.write(await portal.describe());
  // Through the extended protocol the FETCH's own Bind says the formats (text rows of a text cursor by default).
  let encoder: ResultEncoder | undefined;
  if (wantsBinary(resultFormats)) {
    const fields = decodeRowDescription((await portal.describe()).subarray(5)).map((field) => ({ ...field, format: 0 }));
    encoder = new ResultEncoder(fields, columnFormats(resultFormats, fields.length));
  }
  const sent = await portal.take(limit, host.client, () => host.conversionConnection(), encoder);
  host.client.write(serverMessages.commandComplete(`FETCH ${sent}`));
  return null;
}

/** The cursor a CLOSE names when the proxy holds it; '*' for CLOSE ALL; null for a node's own cursor. */
export function closeTarget(node: Node, portals: HeldPortals): string | null {
  const close = (node as { ClosePortalStmt?: { portalname?: string } }).ClosePortalStmt;
  if (!close) return null;
  if (close.portalname === undefined) return '*';
  return portals.has(close.portalname) ? close.portalname : null;
}
