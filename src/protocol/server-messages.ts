// Encoders for the messages the proxy itself sends to clients (the ones it does not relay from a node).
// Constant frames are built once.

import type { PgError } from './errors';
import { BackendCode, type TransactionStatus } from './message-codes';

function frame(code: number, body: Buffer): Buffer {
  const out = Buffer.allocUnsafe(5 + body.length);
  out[0] = code;
  out.writeInt32BE(4 + body.length, 1);
  body.copy(out, 5);
  return out;
}

function cstring(text: string): Buffer {
  return Buffer.from(text + '\0', 'utf8');
}

function int32(value: number): Buffer {
  const out = Buffer.allocUnsafe(4);
  out.writeInt32BE(value, 0);
  return out;
}

const readyForQueryFrames: Record<TransactionStatus, Buffer> = {
  I: frame(BackendCode.readyForQuery, Buffer.from('I')),
  T: frame(BackendCode.readyForQuery, Buffer.from('T')),
  E: frame(BackendCode.readyForQuery, Buffer.from('E')),
};

export const serverMessages = {
  authenticationOk: frame(BackendCode.authentication, int32(0)),
  authenticationCleartextPassword: frame(BackendCode.authentication, int32(3)),
  parseComplete: frame(BackendCode.parseComplete, Buffer.alloc(0)),
  bindComplete: frame(BackendCode.bindComplete, Buffer.alloc(0)),
  closeComplete: frame(BackendCode.closeComplete, Buffer.alloc(0)),
  noData: frame(BackendCode.noData, Buffer.alloc(0)),
  portalSuspended: frame(BackendCode.portalSuspended, Buffer.alloc(0)),
  emptyQueryResponse: frame(BackendCode.emptyQueryResponse, Buffer.alloc(0)),
  sslRefused: Buffer.from('N'),

  readyForQuery(status: TransactionStatus): Buffer {
    return readyForQueryFrames[status];
  },

  authenticationMd5(salt: Buffer): Buffer {
    return frame(BackendCode.authentication, Buffer.concat([int32(5), salt]));
  },

  authenticationSasl(mechanisms: string[]): Buffer {
    return frame(BackendCode.authentication, Buffer.concat([int32(10), ...mechanisms.map(cstring), Buffer.from([0])]));
  },

  authenticationSaslContinue(data: Buffer): Buffer {
    return frame(BackendCode.authentication, Buffer.concat([int32(11), data]));
  },

  authenticationSaslFinal(data: Buffer): Buffer {
    return frame(BackendCode.authentication, Buffer.concat([int32(12), data]));
  },

  parameterStatus(name: string, value: string): Buffer {
    return frame(BackendCode.parameterStatus, Buffer.concat([cstring(name), cstring(value)]));
  },

  backendKeyData(processId: number, secretKey: number): Buffer {
    return frame(BackendCode.backendKeyData, Buffer.concat([int32(processId), int32(secretKey)]));
  },

  parameterDescription(types: readonly number[]): Buffer {
    return frame(BackendCode.parameterDescription, Buffer.concat([Buffer.from([types.length >> 8, types.length & 0xff]), ...types.map(int32)]));
  },

  commandComplete(tag: string): Buffer {
    return frame(BackendCode.commandComplete, cstring(tag));
  },

  /** Columns all of type text (OID 25), text format: what the proxy's own SHOW commands return. */
  /** Columns sent as text; `typeOids` gives a column another type than text (16 for boolean, whose size is 1). */
  textRowDescription(columns: string[], typeOids: readonly number[] = []): Buffer {
    const parts: Buffer[] = [Buffer.from([columns.length >> 8, columns.length & 0xff])];
    for (const [index, name] of columns.entries()) {
      const oid = typeOids[index] ?? 25;
      const field = Buffer.alloc(18);
      field.writeInt32BE(0, 0); // table oid
      field.writeInt16BE(0, 4); // column number
      field.writeInt32BE(oid, 6); // type oid
      field.writeInt16BE(oid === 16 ? 1 : -1, 10); // type size
      field.writeInt32BE(-1, 12); // type modifier
      field.writeInt16BE(0, 16); // format: text
      parts.push(cstring(name), field);
    }
    return frame(BackendCode.rowDescription, Buffer.concat(parts));
  },

  dataRow(values: (string | null)[]): Buffer {
    const parts: Buffer[] = [Buffer.from([values.length >> 8, values.length & 0xff])];
    for (const value of values) {
      if (value === null) {
        parts.push(int32(-1));
      } else {
        const bytes = Buffer.from(value, 'utf8');
        parts.push(int32(bytes.length), bytes);
      }
    }
    return frame(BackendCode.dataRow, Buffer.concat(parts));
  },

  errorResponse(error: PgError): Buffer {
    return frame(BackendCode.errorResponse, noticeFields(error));
  },

  noticeResponse(fields: { severity: string; code: string; message: string; detail?: string; hint?: string }): Buffer {
    return frame(BackendCode.noticeResponse, noticeFields(fields));
  },
};

function noticeFields(fields: { severity: string; code: string; message: string; detail?: string; hint?: string; position?: number }): Buffer {
  const parts: Buffer[] = [];
  const add = (key: string, value: string | undefined) => {
    if (value !== undefined) parts.push(Buffer.from(key), cstring(value));
  };
  add('S', fields.severity);
  add('V', fields.severity);
  add('C', fields.code);
  add('M', fields.message);
  add('D', fields.detail);
  add('H', fields.hint);
  add('P', fields.position === undefined ? undefined : String(fields.position));
  parts.push(Buffer.from([0]));
  return Buffer.concat(parts);
}
