// Conversions between the text and binary forms of values, done by a node: the node runs the type's own input
// and send (or receive and output) functions, so every type, array, range and extension type converts exactly as
// PostgreSQL would. Rows go in pipelined batches, one Sync per batch.

import { serialize } from 'pg-protocol';
import type { BackendConnection } from './backend-connection';
import { decodeBackendNotice, pgErrorFromBackend } from '../protocol/backend-error';
import { dataRowFields } from '../protocol/data-row';
import type { PgError } from '../protocol/errors';
import { BackendCode } from '../protocol/message-codes';
import { describeStatement } from './describe-statement';
import type { BindMessage } from '../protocol/frontend-messages';
import { decodeParameterDescription } from '../protocol/row-description';

const batchRows = 500;

/** Runs `SELECT $1, ..., $n` with these parameter types once per row, with parameters and results in the given formats. */
async function selectParameters(
  connection: BackendConnection,
  types: readonly number[],
  rows: readonly (readonly (Buffer | string | null)[])[],
  binaryResults: boolean,
): Promise<(Buffer | null)[][]> {
  const sql = `SELECT ${types.map((_, i) => `$${i + 1}`).join(', ')}`;
  const out: (Buffer | null)[][] = [];
  for (let first = 0; first < rows.length; first += batchRows) {
    const batch = rows.slice(first, first + batchRows);
    const frames: Buffer[] = [serialize.parse({ name: '', text: sql, types: [...types] })];
    for (const row of batch) frames.push(serialize.bind({ values: [...row], binary: binaryResults }), serialize.execute({}));
    frames.push(serialize.sync());
    connection.preparedStatements.delete('');
    let error: PgError | null = null;
    await connection.exchange(frames, (frame) => {
      if (frame.code === BackendCode.dataRow) out.push(dataRowFields(frame.payload).map((field) => (field === null ? null : Buffer.from(field))));
      else if (frame.code === BackendCode.errorResponse) error ??= pgErrorFromBackend(decodeBackendNotice(frame));
    });
    if (error) throw error;
  }
  return out;
}

/** The binary forms of text values, one row of values per entry, the columns of the given types. */
export function binaryOfText(connection: BackendConnection, types: readonly number[], rows: readonly (readonly (string | null)[])[]): Promise<(Buffer | null)[][]> {
  return selectParameters(connection, types, rows, true);
}

/** The text forms of binary values (Bind parameters sent in binary), of the given types. */
export async function textOfBinary(connection: BackendConnection, types: readonly number[], values: readonly (Buffer | null)[]): Promise<(string | null)[]> {
  const [row] = await selectParameters(connection, types, [values], false);
  return row.map((value) => (value === null ? null : value.toString('utf8')));
}

/**
 * A Bind's parameters all in text: those sent in binary are read by a node with their types' receive and output
 * functions (the types from the Parse, or as the node infers them).
 */
export async function textParameters(connectionOf: () => Promise<BackendConnection>, sql: string, parameterTypes: readonly number[], bind: BindMessage): Promise<(Buffer | null)[]> {
  const binary = bind.parameters.map((value, i) => value !== null && (bind.parameterFormats.length === 1 ? bind.parameterFormats[0] : bind.parameterFormats[i] ?? 0) === 1);
  if (!binary.includes(true)) return bind.parameters;
  const connection = await connectionOf();
  let types = [...parameterTypes];
  if (bind.parameters.some((_, i) => binary[i] && !types[i])) {
    const { frames } = await describeStatement(connection, sql, parameterTypes);
    const description = frames.find((frame) => frame[0] === BackendCode.parameterDescription);
    types = description ? decodeParameterDescription(description.subarray(5)) : types;
  }
  const positions = binary.flatMap((isBinary, i) => (isBinary ? [i] : []));
  const texts = await textOfBinary(connection, positions.map((i) => types[i] ?? 0), positions.map((i) => bind.parameters[i]));
  const parameters = [...bind.parameters];
  positions.forEach((position, k) => (parameters[position] = texts[k] === null ? null : Buffer.from(texts[k]!, 'utf8')));
  return parameters;
}
