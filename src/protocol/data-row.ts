// DataRow decoding for the proxy's own reads and for merges: fields as views into the frame (no copy), decoded
// to text only where a merge compares or combines them, and re-encoded when a merge drops or replaces fields.

import { BackendCode } from './message-codes';
import { MessageCursor } from './message-cursor';

export function decodeDataRowText(payload: Buffer): (string | null)[] {
  return dataRowFields(payload).map((field) => (field === null ? null : field.toString('utf8')));
}

/** The fields of a DataRow payload as views into it; null for SQL NULL. */
export function dataRowFields(payload: Buffer): (Buffer | null)[] {
  const cursor = new MessageCursor(payload, 'DataRow');
  const count = cursor.int16();
  const values: (Buffer | null)[] = new Array(count);
  for (let i = 0; i < count; i++) {
    const length = cursor.int32();
    values[i] = length < 0 ? null : cursor.bytes(length);
  }
  return values;
}

/** A whole DataRow frame (type byte and length included) holding these fields. */
export function encodeDataRow(fields: readonly (Buffer | null)[]): Buffer {
  let length = 4 + 2;
  for (const field of fields) length += 4 + (field === null ? 0 : field.length);
  const out = Buffer.allocUnsafe(1 + length);
  out[0] = BackendCode.dataRow;
  out.writeInt32BE(length, 1);
  out.writeInt16BE(fields.length, 5);
  let offset = 7;
  for (const field of fields) {
    if (field === null) {
      out.writeInt32BE(-1, offset);
      offset += 4;
    } else {
      out.writeInt32BE(field.length, offset);
      field.copy(out, offset + 4);
      offset += 4 + field.length;
    }
  }
  return out;
}
