// Decoding of a node's ErrorResponse and NoticeResponse through pg-protocol, so the proxy can read the SQLSTATE
// and message of what it otherwise relays as bytes.

import { Parser } from 'pg-protocol/dist/parser';
import type { DatabaseError } from 'pg-protocol';
import type { Frame } from './frame-reader';
import { PgError, type Severity } from './errors';

/** The fields of an ErrorResponse or NoticeResponse frame. */
export function decodeBackendNotice(frame: Frame): DatabaseError {
  let decoded: DatabaseError | undefined;
  new Parser().parse(frame.raw, (message) => {
    decoded = message as DatabaseError;
  });
  if (!decoded) throw new Error('incomplete ErrorResponse frame');
  return decoded;
}

/** A node's error as a PgError the proxy can send on, e.g. when it arrived outside a relayed exchange. */
export function pgErrorFromBackend(error: DatabaseError, prefix = ''): PgError {
  return new PgError({
    severity: (error.severity as Severity | undefined) ?? 'ERROR',
    code: error.code ?? 'XX000',
    message: prefix + error.message,
    detail: error.detail,
    hint: error.hint,
  });
}
