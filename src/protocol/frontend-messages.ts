// Decoders for the messages a client sends. The proxy forwards most of them as bytes; it decodes the fields
// that routing needs (statement names, SQL text, parameter values) and validates the layout of each.

import { PgError, SqlState, protocolViolation } from './errors';
import { MessageCursor } from './message-cursor';

export interface StartupMessage {
  readonly parameters: Map<string, string>;
}

/** StartupMessage body after the protocol code: name\0value\0 ... \0 */
export function decodeStartupParameters(body: Buffer): StartupMessage {
  const cursor = new MessageCursor(body, 'startup');
  const parameters = new Map<string, string>();
  for (;;) {
    const name = cursor.cstring();
    if (name === '') break;
    parameters.set(name, cursor.cstring());
  }
  cursor.end();
  if (!parameters.get('user')) {
    throw new PgError({ severity: 'FATAL', code: SqlState.invalidAuthorizationSpecification, message: 'no PostgreSQL user name specified in startup packet' });
  }
  return { parameters };
}

export function decodeCancelRequest(body: Buffer): { processId: number; secretKey: number } {
  const cursor = new MessageCursor(body, 'cancel request');
  const processId = cursor.int32();
  const secretKey = cursor.int32();
  cursor.end();
  return { processId, secretKey };
}

export function decodeQuery(payload: Buffer): string {
  const cursor = new MessageCursor(payload, 'Query');
  const sql = cursor.cstring();
  cursor.end();
  return sql;
}

export interface ParseMessage {
  readonly name: string;
  readonly sql: string;
  readonly parameterTypes: number[];
}

export function decodeParse(payload: Buffer): ParseMessage {
  const cursor = new MessageCursor(payload, 'Parse');
  const name = cursor.cstring();
  const sql = cursor.cstring();
  const count = cursor.int16();
  if (count < 0) throw protocolViolation('invalid message format in Parse message', 'negative parameter type count');
  const parameterTypes: number[] = [];
  for (let i = 0; i < count; i++) parameterTypes.push(cursor.int32() >>> 0);
  cursor.end();
  return { name, sql, parameterTypes };
}

export interface BindMessage {
  readonly portal: string;
  readonly statement: string;
  readonly parameterFormats: number[];
  /** null for SQL NULL */
  readonly parameters: (Buffer | null)[];
  readonly resultFormats: number[];
}

export function decodeBind(payload: Buffer): BindMessage {
  const cursor = new MessageCursor(payload, 'Bind');
  const portal = cursor.cstring();
  const statement = cursor.cstring();
  const formatCount = cursor.int16();
  const parameterFormats: number[] = [];
  for (let i = 0; i < formatCount; i++) parameterFormats.push(cursor.int16());
  const parameterCount = cursor.int16();
  if (formatCount < 0 || parameterCount < 0) throw protocolViolation('invalid message format in Bind message', 'negative count');
  const parameters: (Buffer | null)[] = [];
  for (let i = 0; i < parameterCount; i++) {
    const length = cursor.int32();
    if (length < -1) throw protocolViolation('invalid message format in Bind message', `invalid parameter length ${length}`);
    parameters.push(length === -1 ? null : cursor.bytes(length));
  }
  const resultCount = cursor.int16();
  if (resultCount < 0) throw protocolViolation('invalid message format in Bind message', 'negative result format count');
  const resultFormats: number[] = [];
  for (let i = 0; i < resultCount; i++) resultFormats.push(cursor.int16());
  cursor.end();
  return { portal, statement, parameterFormats, parameters, resultFormats };
}

/** Bind with another statement name and the rest of the message unchanged. */
export function renameBindStatement(payload: Buffer, statement: string): Buffer {
  const portalEnd = payload.indexOf(0);
  const statementEnd = payload.indexOf(0, portalEnd + 1);
  const head = payload.subarray(0, portalEnd + 1);
  const tail = payload.subarray(statementEnd + 1);
  const name = Buffer.from(statement + '\0', 'utf8');
  const out = Buffer.allocUnsafe(5 + head.length + name.length + tail.length);
  out[0] = 0x42; // B
  out.writeInt32BE(4 + head.length + name.length + tail.length, 1);
  head.copy(out, 5);
  name.copy(out, 5 + head.length);
  tail.copy(out, 5 + head.length + name.length);
  return out;
}

export interface TargetMessage {
  /** 'S' for a prepared statement, 'P' for a portal */
  readonly kind: 'S' | 'P';
  readonly name: string;
}

function decodeTarget(payload: Buffer, what: string): TargetMessage {
  const cursor = new MessageCursor(payload, what);
  const kind = String.fromCharCode(cursor.byte());
  if (kind !== 'S' && kind !== 'P') {
    throw protocolViolation(`invalid ${what} message subtype ${JSON.stringify(kind)}`);
  }
  const name = cursor.cstring();
  cursor.end();
  return { kind, name };
}

export function decodeDescribe(payload: Buffer): TargetMessage {
  return decodeTarget(payload, 'Describe');
}

export function decodeClose(payload: Buffer): TargetMessage {
  return decodeTarget(payload, 'Close');
}

export interface ExecuteMessage {
  readonly portal: string;
  readonly maxRows: number;
}

export function decodeExecute(payload: Buffer): ExecuteMessage {
  const cursor = new MessageCursor(payload, 'Execute');
  const portal = cursor.cstring();
  const maxRows = cursor.int32();
  cursor.end();
  return { portal, maxRows };
}

export function decodeCopyFail(payload: Buffer): string {
  const cursor = new MessageCursor(payload, 'CopyFail');
  const message = cursor.cstring();
  cursor.end();
  return message;
}

export function decodeEmpty(payload: Buffer, what: string): void {
  if (payload.length !== 0) throw protocolViolation(`invalid message format in ${what} message`, 'the message should have no body');
}
