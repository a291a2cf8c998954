// The result formats a client bound for a read the proxy answers itself: the merge produces text, and each column
// the client asked in binary is encoded here (the common types) or by a node (every other type), so a driver
// that binds binary results (pgx, Npgsql, JDBC after its prepare threshold) gets PostgreSQL's own bytes.

import type { BackendConnection } from '../backend/backend-connection';
import { nativeBinaryEncoder } from '../protocol/binary-values';
import { dataRowFields, encodeDataRow } from '../protocol/data-row';
import { binaryOfText } from '../backend/node-value-format';
import { decodeRowDescription, encodeRowDescription, type FieldDescription } from '../protocol/row-description';

/** One format code per column, as Bind's result-format list means it (none: all text; one: all alike). */
export function columnFormats(resultFormats: readonly number[], columns: number): number[] {
  if (resultFormats.length === 0) return new Array(columns).fill(0);
  if (resultFormats.length === 1) return new Array(columns).fill(resultFormats[0]);
  return [...resultFormats];
}

/** Whether any column is asked for in binary. */
export function wantsBinary(resultFormats: readonly number[]): boolean {
  return resultFormats.some((format) => format !== 0);
}

/** A RowDescription telling the formats the client bound. */
export function describeWithFormats(fields: readonly FieldDescription[], formats: readonly number[]): Buffer {
  return encodeRowDescription(fields.map((field, i) => ({ ...field, format: formats[i] ?? 0 })));
}

/** A RowDescription frame with the formats a Bind asked for (unchanged when it asked for none). */
export function withFormats(description: Buffer, resultFormats: readonly number[]): Buffer {
  if (resultFormats.length === 0) return description;
  const fields = decodeRowDescription(description.subarray(5));
  return describeWithFormats(fields, columnFormats(resultFormats, fields.length));
}

/**
 * Turns DataRows of text into the bound formats. `encodeNative` handles rows whose binary columns all have
 * native encoders, synchronously; `encode` handles any rows, asking a node for the other types.
 */
export class ResultEncoder {
  private readonly native: (((text: string) => Buffer) | undefined)[];
  /** Columns only a node can encode. */
  private readonly nodeColumns: number[];

  constructor(private readonly fields: readonly FieldDescription[], private readonly formats: readonly number[]) {
    this.native = fields.map((field, i) => (formats[i] === 1 ? nativeBinaryEncoder(field.typeOid) : undefined));
    this.nodeColumns = fields.map((_, i) => i).filter((i) => formats[i] === 1 && !this.native[i]);
  }

  get needsNode(): boolean {
    return this.nodeColumns.length > 0;
  }

  get isIdentity(): boolean {
    return !this.formats.some((format) => format === 1);
  }

  /** One DataRow frame re-encoded with native encoders only (valid when !needsNode). */
  encodeNative(frame: Buffer): Buffer {
    const values = dataRowFields(frame.subarray(5));
    return encodeDataRow(values.map((value, i) => (value === null || !this.native[i] ? value : this.native[i]!(value.toString('utf8')))));
  }

  /** DataRow frames re-encoded, the columns without native encoders converted by `connection`. */
  async encode(frames: readonly Buffer[], connection: () => Promise<BackendConnection>): Promise<Buffer[]> {
    if (this.isIdentity) return [...frames];
    const rows = frames.map((frame) => dataRowFields(frame.subarray(5)));
    let converted: (Buffer | null)[][] = [];
    if (this.needsNode && rows.length > 0) {
      const types = this.nodeColumns.map((i) => this.fields[i].typeOid);
      converted = await binaryOfText(await connection(), types, rows.map((row) => this.nodeColumns.map((i) => (row[i] === null ? null : row[i]!.toString('utf8')))));
    }
    return rows.map((row, r) => {
      const out = row.map((value, i) => (value === null || !this.native[i] ? value : this.native[i]!(value.toString('utf8'))));
      this.nodeColumns.forEach((column, k) => (out[column] = converted[r][k]));
      return encodeDataRow(out);
    });
  }
}
