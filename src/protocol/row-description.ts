// RowDescription decoded into fields and encoded back, for the merges that must know a result's column types
// (sort keys, partial-state types) or drop columns the client did not ask for (hidden sort keys).

import { BackendCode } from './message-codes';
import { MessageCursor } from './message-cursor';

export interface FieldDescription {
  readonly name: string;
  readonly tableOid: number;
  readonly columnNumber: number;
  readonly typeOid: number;
  readonly typeSize: number;
  readonly typeModifier: number;
  readonly format: number;
}

export function decodeRowDescription(payload: Buffer): FieldDescription[] {
  const cursor = new MessageCursor(payload, 'RowDescription');
  const count = cursor.int16();
  const fields: FieldDescription[] = [];
  for (let i = 0; i < count; i++) {
    fields.push({
      name: cursor.cstring(),
      tableOid: cursor.int32(),
      columnNumber: cursor.int16(),
      typeOid: cursor.int32(),
      typeSize: cursor.int16(),
      typeModifier: cursor.int32(),
      format: cursor.int16(),
    });
  }
  return fields;
}

export function encodeRowDescription(fields: readonly FieldDescription[]): Buffer {
  const names = fields.map((f) => Buffer.from(f.name, 'utf8'));
  const length = 4 + 2 + names.reduce((sum, n) => sum + n.length + 1 + 18, 0);
  const out = Buffer.alloc(1 + length);
  out[0] = BackendCode.rowDescription;
  out.writeInt32BE(length, 1);
  out.writeInt16BE(fields.length, 5);
  let offset = 7;
  fields.forEach((field, i) => {
    names[i].copy(out, offset);
    offset += names[i].length;
    out[offset++] = 0;
    out.writeInt32BE(field.tableOid, offset);
    out.writeInt16BE(field.columnNumber, offset + 4);
    out.writeInt32BE(field.typeOid, offset + 6);
    out.writeInt16BE(field.typeSize, offset + 10);
    out.writeInt32BE(field.typeModifier, offset + 12);
    out.writeInt16BE(field.format, offset + 16);
    offset += 18;
  });
  return out;
}

/** The parameter type OIDs of a ParameterDescription payload. */
export function decodeParameterDescription(payload: Buffer): number[] {
  const cursor = new MessageCursor(payload, 'ParameterDescription');
  const count = cursor.int16();
  const types: number[] = [];
  for (let i = 0; i < count; i++) types.push(cursor.int32() >>> 0);
  return types;
}
