// Asks a node to describe a statement without running it (Parse, Describe, Sync on the unnamed statement): the
// proxy's way to learn result types for planning, and to answer a client's Describe of a statement it runs itself.

import { serialize } from 'pg-protocol';
import type { BackendConnection } from './backend-connection';
import { decodeBackendNotice, pgErrorFromBackend } from '../protocol/backend-error';
import type { PgError } from '../protocol/errors';
import { BackendCode } from '../protocol/message-codes';
import { decodeRowDescription, type FieldDescription } from '../protocol/row-description';

export interface StatementDescription {
  /** The node's ParameterDescription and RowDescription (or NoData) frames, to relay as they are. */
  readonly frames: Buffer[];
  /** The result columns (none for a statement without rows). */
  readonly fields: FieldDescription[];
}

/** Describes `sql` on an idle connection; throws the node's error. Replaces the node's unnamed statement. */
export async function describeStatement(connection: BackendConnection, sql: string, parameterTypes: readonly number[] = []): Promise<StatementDescription> {
  const frames: Buffer[] = [];
  let fields: FieldDescription[] = [];
  let error: PgError | null = null;
  connection.preparedStatements.delete('');
  await connection.exchange([serialize.parse({ name: '', text: sql, types: [...parameterTypes] }), serialize.describe({ type: 'S', name: '' }), serialize.sync()], (frame) => {
    if (frame.code === BackendCode.rowDescription) fields = decodeRowDescription(frame.payload);
    if (frame.code === BackendCode.parameterDescription || frame.code === BackendCode.rowDescription || frame.code === BackendCode.noData) frames.push(Buffer.from(frame.raw));
    else if (frame.code === BackendCode.errorResponse) error ??= pgErrorFromBackend(decodeBackendNotice(frame));
  });
  if (error) throw error;
  return { frames, fields };
}
