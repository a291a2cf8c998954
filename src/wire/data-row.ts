// Text decoding of a DataRow, for the few results the proxy reads itself (its own internal queries).

import { MessageCursor } from './message-cursor';

export function decodeDataRowText(payload: Buffer): (string | null)[] {
  const cursor = new MessageCursor(payload, 'DataRow');
  const count = cursor.int16();
  const values: (string | null)[] = [];
  for (let i = 0; i < count; i++) {
    const length = cursor.int32();
    values.push(length < 0 ? null : cursor.bytes(length).toString('utf8'));
  }
  return values;
}
