// The proxy's hash aggregate over partial states: rows of several nodes with equal group keys fold into one, so
// the node that finishes the aggregate receives one row per group. Folding is exact (BigInt, decimal.js with the
// widest input scale, the type's own order for min/max); where a type has no exact fold here, rows pass through
// unfolded and the finishing node folds them, which gives the same answer. Held state is bounded by a limit.

import Decimal from 'decimal.js';
import type { StateCombine } from '../planner/distributed-plan';
import { PgError, SqlState } from '../protocol/errors';
import type { FieldDescription } from '../protocol/row-description';
import { appendCopyRow } from './intermediate-result';
import { comparatorForType, groupKeyNormalizerForType } from './value-order';

const ExactDecimal = Decimal.clone({ precision: 10000, rounding: Decimal.ROUND_HALF_UP, toExpNeg: -10000, toExpPos: 10000 });

type Fold = (a: Buffer | null, b: Buffer | null) => Buffer | null;

const integerTypes = new Set([20, 21, 23]);
const textLikeTypes = new Set([18, 19, 25, 1042, 1043]);

function foldFor(kind: StateCombine, typeOid: number, textBytewise: boolean): Fold | null {
  const nullSafe = (fold: (a: Buffer, b: Buffer) => Buffer): Fold => (a, b) => (a === null ? b : b === null ? a : fold(a, b));
  switch (kind) {
    case 'sum':
      if (integerTypes.has(typeOid)) return nullSafe((a, b) => Buffer.from(String(BigInt(a.toString()) + BigInt(b.toString()))));
      if (typeOid === 1700) return nullSafe((a, b) => Buffer.from(addNumeric(a.toString(), b.toString())));
      if (typeOid === 701) return nullSafe((a, b) => Buffer.from(floatText(parseFloatText(a.toString()) + parseFloatText(b.toString()))));
      if (typeOid === 700) return nullSafe((a, b) => Buffer.from(floatText(Math.fround(parseFloatText(a.toString()) + parseFloatText(b.toString())))));
      return null;
    case 'min':
    case 'max': {
      if (textLikeTypes.has(typeOid) && !textBytewise) return null;
      const compare = comparatorForType(typeOid);
      if (!compare) return null;
      return nullSafe((a, b) => ((kind === 'min' ? compare(b, a) < 0 : compare(b, a) > 0) ? b : a));
    }
    case 'and':
    case 'or':
      if (typeOid !== 16) return null;
      return nullSafe((a, b) => (kind === 'and' ? (a[0] === 0x66 ? a : b) : a[0] === 0x74 ? a : b));
    case 'bit-and':
    case 'bit-or':
    case 'bit-xor': {
      if (!integerTypes.has(typeOid)) return null;
      const op = kind === 'bit-and' ? (x: bigint, y: bigint) => x & y : kind === 'bit-or' ? (x: bigint, y: bigint) => x | y : (x: bigint, y: bigint) => x ^ y;
      return nullSafe((a, b) => Buffer.from(String(op(BigInt(a.toString()), BigInt(b.toString())))));
    }
    case 'key':
      return (a) => a;
  }
}

function scaleOf(text: string): number {
  const dot = text.indexOf('.');
  return dot < 0 ? 0 : text.length - dot - 1;
}

/** numeric + numeric as PostgreSQL prints it: exact, at the larger of the two scales. */
export function addNumeric(a: string, b: string): string {
  if (a === 'NaN' || b === 'NaN') return 'NaN';
  const sum = new ExactDecimal(a).plus(new ExactDecimal(b));
  if (sum.isNaN()) return 'NaN';
  if (!sum.isFinite()) return sum.isNegative() ? '-Infinity' : 'Infinity';
  return sum.toFixed(Math.max(scaleOf(a), scaleOf(b)));
}

function parseFloatText(text: string): number {
  return text === 'NaN' ? NaN : text === 'Infinity' ? Infinity : text === '-Infinity' ? -Infinity : Number(text);
}

/** A float's text that PostgreSQL reads back as the same value (the final node prints it its own way). */
function floatText(value: number): string {
  return Number.isNaN(value) ? 'NaN' : value === Infinity ? 'Infinity' : value === -Infinity ? '-Infinity' : String(value);
}

export class PartialCombiner {
  private readonly groups = new Map<string, (Buffer | null)[]>();
  private readonly passThrough: (Buffer | null)[][] = [];
  private bytes = 0;

  private constructor(
    private readonly groupColumns: number,
    private readonly normalizers: ((value: Buffer) => string)[] | null,
    private readonly folds: Fold[] | null,
    private readonly limitBytes: number,
  ) {}

  /** A combiner that keeps every row as it comes (rows a final step needs one by one), up to the limit. */
  static keepingRows(groupColumns: number, limitBytes: number): PartialCombiner {
    return new PartialCombiner(groupColumns, null, null, limitBytes);
  }

  /** A combiner for rows described by `fields`; it folds only when every group type and state has an exact fold. */
  static create(fields: readonly FieldDescription[], groupColumns: number, combine: readonly StateCombine[], textBytewise: boolean, limitBytes: number): PartialCombiner {
    const normalizers: ((value: Buffer) => string)[] = [];
    for (let i = 0; i < groupColumns; i++) {
      const type = fields[i].typeOid;
      const normalizer = textLikeTypes.has(type) && !textBytewise ? null : groupKeyNormalizerForType(type);
      if (!normalizer) return new PartialCombiner(groupColumns, null, null, limitBytes);
      normalizers.push(normalizer);
    }
    const folds: Fold[] = [];
    for (let i = 0; i < combine.length; i++) {
      const fold = foldFor(combine[i], fields[groupColumns + i].typeOid, textBytewise);
      if (!fold) return new PartialCombiner(groupColumns, null, null, limitBytes);
      folds.push(fold);
    }
    return new PartialCombiner(groupColumns, normalizers, folds, limitBytes);
  }

  get folding(): boolean {
    return this.folds !== null;
  }

  add(fields: (Buffer | null)[]): void {
    if (!this.folds || !this.normalizers) {
      this.hold(fields);
      this.passThrough.push(fields.map((f) => (f === null ? null : Buffer.from(f))));
      return;
    }
    let key = '';
    for (let i = 0; i < this.groupColumns; i++) {
      const value = fields[i];
      key += value === null ? '\u0001N' : '\u0002' + this.normalizers[i](value);
      key += '\u0000';
    }
    const existing = this.groups.get(key);
    if (!existing) {
      this.hold(fields);
      this.groups.set(key, fields.map((f) => (f === null ? null : Buffer.from(f))));
      return;
    }
    for (let i = 0; i < this.folds.length; i++) {
      const column = this.groupColumns + i;
      existing[column] = this.folds[i](existing[column], fields[column]);
    }
  }

  private hold(fields: readonly (Buffer | null)[]): void {
    for (const field of fields) this.bytes += 16 + (field ? field.length : 0);
    if (this.bytes > this.limitBytes) {
      throw new PgError({
        code: SqlState.programLimitExceeded,
        message: `the partial aggregates of this query need more than merge_memory_limit (${Math.round(this.limitBytes / 1048576)} MB) in the proxy`,
        hint: 'raise merge_memory_limit, or group by the distribution key so that every node finishes its own groups',
      });
    }
  }

  get groupCount(): number {
    return this.folds ? this.groups.size : this.passThrough.length;
  }

  /** The folded rows as COPY text, what the finishing node loads into its temporary table. */
  copyText(): Buffer {
    const chunks: Buffer[] = [];
    for (const row of this.rows()) appendCopyRow(row, chunks);
    return Buffer.concat(chunks);
  }

  private *rows(): Iterable<(Buffer | null)[]> {
    if (this.folds) yield* this.groups.values();
    else yield* this.passThrough;
  }
}
