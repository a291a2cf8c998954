// The order and equality PostgreSQL gives values, reproduced from their text output, so the proxy can k-way merge
// sorted streams from several nodes and merge GROUP BY / DISTINCT groups. Every comparator agrees exactly with the
// type's default btree opclass under collation C, DateStyle ISO, IntervalStyle postgres, default extra_float_digits.

import { PgError, SqlState } from '../protocol/errors';

/** Compares two non-null values of one type, given as their text-format bytes: <0, 0, >0 as PostgreSQL's default btree order. */
export type ValueComparator = (a: Buffer, b: Buffer) => number;

const enum TypeOid {
  bool = 16,
  bytea = 17,
  char = 18,
  name = 19,
  int8 = 20,
  int2 = 21,
  int4 = 23,
  text = 25,
  oid = 26,
  float4 = 700,
  float8 = 701,
  bpchar = 1042,
  varchar = 1043,
  date = 1082,
  time = 1083,
  timestamp = 1114,
  timestamptz = 1184,
  interval = 1186,
  numeric = 1700,
  uuid = 2950,
}

const enum Byte {
  space = 0x20,
  plus = 0x2b,
  minus = 0x2d,
  dot = 0x2e,
  zero = 0x30,
  nine = 0x39,
  colon = 0x3a,
  upperB = 0x42,
  upperC = 0x43,
  upperE = 0x45,
  upperI = 0x49,
  upperN = 0x4e,
  backslash = 0x5c,
  lowerD = 0x64,
  lowerE = 0x65,
  lowerI = 0x69,
  lowerM = 0x6d,
  lowerX = 0x78,
  lowerY = 0x79,
}

/** Throws when a value's text is not in the output format this file reads (a DateStyle or IntervalStyle other than the expected one, say). */
function malformed(typeName: string, value: Buffer): never {
  throw new PgError({
    code: SqlState.internalError,
    message: `cannot order ${typeName} value "${value.toString('utf8')}" at the proxy`,
    hint: 'The proxy reads dates and times in DateStyle ISO and intervals in IntervalStyle postgres.',
  });
}

function isDigit(byte: number): boolean {
  return byte >= Byte.zero && byte <= Byte.nine;
}

/** The two-digit number at `at`; NaN when either byte is not a digit. */
function twoDigits(value: Buffer, at: number): number {
  const tens = value[at] - Byte.zero;
  const ones = value[at + 1] - Byte.zero;
  return tens >= 0 && tens <= 9 && ones >= 0 && ones <= 9 ? tens * 10 + ones : NaN;
}

// ---------------------------------------------------------------------------------------------------------------
// Bytes: text, varchar, name, bpchar, bytea, "char", uuid, time. In collation C, text order is memcmp then length,
// which is Buffer.compare on the UTF-8 (N.B. not JS string order: UTF-16 puts U+E000..U+FFFF after astral chars).

/**
 * memcmp order of a[0, aEnd) and b[0, bEnd), a shorter prefix first. Short values are compared in JS: calling into
 * Buffer.compare costs more than comparing a few dozen bytes, so native code only takes the rest of long values.
 */
function compareByteRanges(a: Buffer, aEnd: number, b: Buffer, bEnd: number): number {
  const common = aEnd < bEnd ? aEnd : bEnd;
  const inline = common <= 32 ? common : 16;
  for (let i = 0; i < inline; i++) {
    const order = a[i] - b[i];
    if (order !== 0) return order;
  }
  return inline < common ? a.compare(b, inline, bEnd, inline, aEnd) : aEnd - bEnd;
}

const compareBytes: ValueComparator = (a, b) => compareByteRanges(a, a.length, b, b.length);

/** bpchar ignores trailing spaces (only U+0020) in comparison and equality; returns the length without them. */
function bpcharLength(value: Buffer): number {
  let end = value.length;
  while (end > 0 && value[end - 1] === Byte.space) end--;
  return end;
}

const compareBpchar: ValueComparator = (a, b) => compareByteRanges(a, bpcharLength(a), b, bpcharLength(b));

/** The byte a "char" value holds: '' is the zero byte; PostgreSQL 15+ writes bytes above 127 as `\ooo`. */
function charByte(value: Buffer): number {
  if (value.length === 4 && value[0] === Byte.backslash) {
    return ((value[1] - Byte.zero) << 6) | ((value[2] - Byte.zero) << 3) | (value[3] - Byte.zero);
  }
  return value.length === 0 ? 0 : value[0];
}

/** "char" compares as an unsigned byte. */
const compareChar: ValueComparator = (a, b) => charByte(a) - charByte(b);

/** bool's output is 'f' or 't', and false sorts first. */
const compareBool: ValueComparator = (a, b) => a[0] - b[0];

function isHexBytea(value: Buffer): boolean {
  return value.length >= 2 && value[0] === Byte.backslash && value[1] === Byte.lowerX;
}

/** The bytes a bytea text holds, in hex (`\x0aff`) or escape (`a\\b\001`) output; allocates a new Buffer. */
function byteaBytes(value: Buffer): Buffer {
  if (isHexBytea(value)) return Buffer.from(value.toString('latin1', 2), 'hex');
  const out = Buffer.allocUnsafe(value.length);
  let length = 0;
  for (let i = 0; i < value.length; i++) {
    const byte = value[i];
    if (byte !== Byte.backslash) {
      out[length++] = byte;
    } else if (value[i + 1] === Byte.backslash) {
      out[length++] = Byte.backslash;
      i++;
    } else {
      out[length++] = ((value[i + 1] - Byte.zero) << 6) | ((value[i + 2] - Byte.zero) << 3) | (value[i + 3] - Byte.zero);
      i += 3;
    }
  }
  return out.subarray(0, length);
}

/** Lowercase hex keeps byte order (two digits a byte, '0'-'9' below 'a'-'f'), so hex texts compare as they are. */
const compareBytea: ValueComparator = (a, b) =>
  isHexBytea(a) && isHexBytea(b) ? compareBytes(a, b) : Buffer.compare(byteaBytes(a), byteaBytes(b));

// ---------------------------------------------------------------------------------------------------------------
// Integers: int2, int4, int8, oid. The output is canonical (no '+', no leading zeros, zero is '0'), so the sign,
// then the digit count, then the digits order any width exactly, with no parsing.

const compareInteger: ValueComparator = (a, b) => {
  const negative = a[0] === Byte.minus;
  if (negative !== (b[0] === Byte.minus)) return negative ? -1 : 1;
  let order = a.length - b.length;
  for (let i = 0; order === 0 && i < a.length; i++) order = a[i] - b[i];
  return negative ? -order : order;
};

// ---------------------------------------------------------------------------------------------------------------
// Decimals: numeric and float4/float8. Float output (shortest round-trip digits) is strictly monotone in the
// value, so a float compares as the decimal it prints; both are compared digit by digit, never through a double.
// Order of classes: -Infinity < negative < zero < positive < Infinity < NaN (NaN equals NaN; -0 equals 0).

const enum DecimalClass {
  minusInfinity = 0,
  negative = 1,
  zero = 2,
  positive = 3,
  infinity = 4,
  nan = 5,
}

/** Where a decimal's significant digits are; one pair of these is reused so a comparison allocates nothing. */
class DecimalScan {
  kind = DecimalClass.zero;
  /** The value is 0.d1d2… × 10^exponent, d1 being the digit at `first`. */
  exponent = 0;
  /** Index of the first and of the last non-zero digit (inclusive); a '.' may lie between them. */
  first = 0;
  last = 0;
}

const leftDecimal = new DecimalScan();
const rightDecimal = new DecimalScan();

/** Reads `[-]digits[.digits][e[+-]digits]`, 'NaN', 'Infinity' or '-Infinity' into `out`, which it overwrites. */
function scanDecimal(value: Buffer, out: DecimalScan, typeName: string): void {
  const length = value.length;
  let i = 0;
  let negative = false;
  if (value[0] === Byte.minus) {
    negative = true;
    i = 1;
  }
  if (value[i] === Byte.upperN) {
    out.kind = DecimalClass.nan;
    return;
  }
  if (value[i] === Byte.upperI) {
    out.kind = negative ? DecimalClass.minusInfinity : DecimalClass.infinity;
    return;
  }
  let point = -1;
  let first = -1;
  let last = -1;
  for (; i < length; i++) {
    const byte = value[i];
    if (byte === Byte.dot) {
      point = i;
    } else if (byte > Byte.zero && byte <= Byte.nine) {
      if (first < 0) first = i;
      last = i;
    } else if (byte !== Byte.zero) {
      break;
    }
  }
  if (point < 0) point = i;
  let exponent = 0;
  if (i < length) {
    if (value[i] !== Byte.lowerE && value[i] !== Byte.upperE) malformed(typeName, value);
    let sign = 1;
    i++;
    if (value[i] === Byte.minus || value[i] === Byte.plus) sign = value[i++] === Byte.minus ? -1 : 1;
    if (i === length) malformed(typeName, value);
    for (; i < length; i++) {
      if (!isDigit(value[i])) malformed(typeName, value);
      exponent = exponent * 10 + value[i] - Byte.zero;
    }
    exponent *= sign;
  }
  if (first < 0) {
    out.kind = DecimalClass.zero;
    return;
  }
  out.kind = negative ? DecimalClass.negative : DecimalClass.positive;
  out.exponent = exponent + (first < point ? point - first : point - first + 1);
  out.first = first;
  out.last = last;
}

/** Compares the magnitudes of two scanned non-zero finite decimals. */
function compareMagnitudes(a: Buffer, sa: DecimalScan, b: Buffer, sb: DecimalScan): number {
  if (sa.exponent !== sb.exponent) return sa.exponent - sb.exponent;
  let ia = sa.first;
  let ib = sb.first;
  for (;;) {
    if (a[ia] === Byte.dot) ia++;
    if (b[ib] === Byte.dot) ib++;
    const order = a[ia] - b[ib];
    if (order !== 0) return order;
    const endA = ia === sa.last;
    const endB = ib === sb.last;
    // The last significant digit is non-zero, so the side with digits left is the larger.
    if (endA || endB) return endA === endB ? 0 : endA ? -1 : 1;
    ia++;
    ib++;
  }
}

function decimalComparator(typeName: string): ValueComparator {
  return (a, b) => {
    scanDecimal(a, leftDecimal, typeName);
    scanDecimal(b, rightDecimal, typeName);
    const kind = leftDecimal.kind;
    if (kind !== rightDecimal.kind) return kind - rightDecimal.kind;
    if (kind === DecimalClass.positive) return compareMagnitudes(a, leftDecimal, b, rightDecimal);
    if (kind === DecimalClass.negative) return compareMagnitudes(b, rightDecimal, a, leftDecimal);
    return 0;
  };
}

const compareNumeric = decimalComparator('numeric');
const compareFloat = decimalComparator('float');

/** The canonical form of a decimal: `[-]digits e exponent`, so '1.0', '1.00' and '1e+0' meet; allocates. */
function decimalKey(value: Buffer, typeName: string): string {
  scanDecimal(value, leftDecimal, typeName);
  switch (leftDecimal.kind) {
    case DecimalClass.minusInfinity:
      return '-Infinity';
    case DecimalClass.zero:
      return '0';
    case DecimalClass.infinity:
      return 'Infinity';
    case DecimalClass.nan:
      return 'NaN';
    default: {
      const digits = value.toString('latin1', leftDecimal.first, leftDecimal.last + 1).replace('.', '');
      return `${leftDecimal.kind === DecimalClass.negative ? '-' : ''}${digits}e${leftDecimal.exponent}`;
    }
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Dates, timestamps and intervals, read as a pair (whole seconds, microseconds 0..999999). Whole seconds stay
// below 2^53 for every value of these types, so both halves are exact JS numbers; ±Infinity stand for 'infinity'.

/** A point or span as exact seconds and microseconds; one pair of these is reused so a comparison allocates nothing. */
class Span {
  seconds = 0;
  micros = 0;
}

const leftSpan = new Span();
const rightSpan = new Span();

/** Days from 1970-01-01 to a proleptic Gregorian date, year 0 being 1 BC (H. Hinnant's days_from_civil). */
function daysFromCivil(year: number, month: number, day: number): number {
  const y = month <= 2 ? year - 1 : year;
  const era = Math.floor(y / 400);
  const yearOfEra = y - era * 400;
  const dayOfYear = Math.floor((153 * (month > 2 ? month - 3 : month + 9) + 2) / 5) + day - 1;
  return era * 146097 + yearOfEra * 365 + Math.floor(yearOfEra / 4) - Math.floor(yearOfEra / 100) + dayOfYear - 719468;
}

const enum Temporal {
  date = 0,
  timestamp = 1,
  timestamptz = 2,
}

const temporalNames = ['date', 'timestamp', 'timestamptz'];

/**
 * Reads an ISO `Y…Y-MM-DD[ HH:MM:SS[.f…][±HH[:MM[:SS]]]][ BC]`, 'infinity' or '-infinity' into `out` (overwritten)
 * as seconds since 1970-01-01 (UTC for timestamptz, whose offset is subtracted) plus microseconds.
 */
function scanTemporal(value: Buffer, out: Span, kind: Temporal): void {
  out.micros = 0;
  if (value[0] === Byte.lowerI || value[0] === Byte.minus) {
    out.seconds = value[0] === Byte.minus ? -Infinity : Infinity;
    return;
  }
  const length = value.length;
  const bc = length > 3 && value[length - 1] === Byte.upperC && value[length - 2] === Byte.upperB && value[length - 3] === Byte.space;
  const end = bc ? length - 3 : length;
  let year = 0;
  let i = 0;
  for (; i < end && isDigit(value[i]); i++) year = year * 10 + value[i] - Byte.zero;
  if (i === 0 || value[i] !== Byte.minus || value[i + 3] !== Byte.minus) malformed(temporalNames[kind], value);
  const month = twoDigits(value, i + 1);
  const day = twoDigits(value, i + 4);
  i += 6;
  let seconds = daysFromCivil(bc ? 1 - year : year, month, day) * 86400;
  if (kind !== Temporal.date) {
    if (value[i] !== Byte.space || value[i + 3] !== Byte.colon || value[i + 6] !== Byte.colon) malformed(temporalNames[kind], value);
    seconds += twoDigits(value, i + 1) * 3600 + twoDigits(value, i + 4) * 60 + twoDigits(value, i + 7);
    i += 9;
    if (value[i] === Byte.dot) {
      let micros = 0;
      let scale = 100000;
      for (i++; i < end && isDigit(value[i]); i++) {
        micros += (value[i] - Byte.zero) * scale;
        scale = (scale / 10) | 0;
      }
      out.micros = micros;
    }
    if (kind === Temporal.timestamptz) {
      const sign = value[i];
      if (sign !== Byte.plus && sign !== Byte.minus) malformed('timestamptz', value);
      let offset = twoDigits(value, i + 1) * 3600;
      i += 3;
      if (value[i] === Byte.colon) {
        offset += twoDigits(value, i + 1) * 60;
        i += 3;
        if (value[i] === Byte.colon) {
          offset += twoDigits(value, i + 1);
          i += 3;
        }
      }
      seconds -= sign === Byte.plus ? offset : -offset;
    }
  }
  if (i !== end || Number.isNaN(seconds)) malformed(temporalNames[kind], value);
  out.seconds = seconds;
}

/**
 * Reads a postgres-style interval (`1 year -2 mons +3 days -04:05:06.5`, `00:00:00`, and 'infinity' from
 * PostgreSQL 17) into `out` (overwritten) as its span the way PostgreSQL compares it: a month is 30 days, a day
 * 24 hours. At most 2^31 months and days and 2^63 µs give fewer than 5.8e15 whole seconds, exact in a double.
 */
function scanInterval(value: Buffer, out: Span): void {
  const length = value.length;
  if (value[0] === Byte.lowerI || (value[0] === Byte.minus && value[1] === Byte.lowerI)) {
    out.seconds = value[0] === Byte.minus ? -Infinity : Infinity;
    out.micros = 0;
    return;
  }
  let days = 0;
  let seconds = 0;
  let micros = 0;
  let i = 0;
  while (i < length) {
    let sign = 1;
    if (value[i] === Byte.minus) {
      sign = -1;
      i++;
    } else if (value[i] === Byte.plus) {
      i++;
    }
    const start = i;
    let number = 0;
    for (; i < length && isDigit(value[i]); i++) number = number * 10 + value[i] - Byte.zero;
    if (i === start) malformed('interval', value);
    if (value[i] === Byte.colon) {
      // The time part: [-+]H…H:MM:SS[.f…], its sign applying to every field.
      if (value[i + 3] !== Byte.colon) malformed('interval', value);
      seconds += sign * (number * 3600 + twoDigits(value, i + 1) * 60 + twoDigits(value, i + 4));
      i += 6;
      if (value[i] === Byte.dot) {
        let fraction = 0;
        let scale = 100000;
        for (i++; i < length && isDigit(value[i]); i++) {
          fraction += (value[i] - Byte.zero) * scale;
          scale = (scale / 10) | 0;
        }
        micros += sign * fraction;
      }
    } else {
      if (value[i] !== Byte.space) malformed('interval', value);
      const unit = value[i + 1];
      if (unit === Byte.lowerY) days += sign * number * 360;
      else if (unit === Byte.lowerM && value[i + 2] === 0x6f /* o */) days += sign * number * 30;
      else if (unit === Byte.lowerD) days += sign * number;
      else malformed('interval', value);
      for (i += 2; i < length && value[i] !== Byte.space; i++);
    }
    if (i < length) {
      if (value[i] !== Byte.space) malformed('interval', value);
      i++;
    }
  }
  seconds += days * 86400;
  if (micros < 0) {
    seconds -= 1;
    micros += 1000000;
  }
  if (Number.isNaN(seconds)) malformed('interval', value);
  out.seconds = seconds;
  out.micros = micros;
}

function compareSpans(): number {
  if (leftSpan.seconds !== rightSpan.seconds) return leftSpan.seconds < rightSpan.seconds ? -1 : 1;
  return leftSpan.micros - rightSpan.micros;
}

function temporalComparator(kind: Temporal): ValueComparator {
  return (a, b) => {
    scanTemporal(a, leftSpan, kind);
    scanTemporal(b, rightSpan, kind);
    return compareSpans();
  };
}

const compareDate = temporalComparator(Temporal.date);
const compareTimestamp = temporalComparator(Temporal.timestamp);
const compareTimestamptz = temporalComparator(Temporal.timestamptz);

const compareInterval: ValueComparator = (a, b) => {
  scanInterval(a, leftSpan);
  scanInterval(b, rightSpan);
  return compareSpans();
};

function spanKey(span: Span): string {
  return span.micros === 0 ? String(span.seconds) : `${span.seconds}.${span.micros}`;
}

// ---------------------------------------------------------------------------------------------------------------

/** The comparator for a type OID, or null when the proxy cannot order that type exactly (the caller then refuses or finishes the sort on a node). */
export function comparatorForType(typeOid: number): ValueComparator | null {
  switch (typeOid) {
    case TypeOid.bool:
      return compareBool;
    case TypeOid.bytea:
      return compareBytea;
    case TypeOid.char:
      return compareChar;
    case TypeOid.name:
    case TypeOid.text:
    case TypeOid.varchar:
    case TypeOid.uuid:
    case TypeOid.time: // HH:MM:SS[.f…] with trailing zeros dropped: byte order is time order.
      return compareBytes;
    case TypeOid.bpchar:
      return compareBpchar;
    case TypeOid.int2:
    case TypeOid.int4:
    case TypeOid.int8:
    case TypeOid.oid:
      return compareInteger;
    case TypeOid.float4:
    case TypeOid.float8:
      return compareFloat;
    case TypeOid.numeric:
      return compareNumeric;
    case TypeOid.date:
      return compareDate;
    case TypeOid.timestamp:
      return compareTimestamp;
    case TypeOid.timestamptz:
      return compareTimestamptz;
    case TypeOid.interval:
      return compareInterval;
    default:
      return null;
  }
}

/**
 * A full sort-key comparison with direction and NULL placement, as ORDER BY x [ASC|DESC] [NULLS FIRST|LAST]
 * (default: NULLS LAST for ASC, NULLS FIRST for DESC); null when the type is not supported.
 */
export function sortKeyComparator(typeOid: number, descending: boolean, nullsFirst: boolean | undefined): ((a: Buffer | null, b: Buffer | null) => number) | null {
  const compare = comparatorForType(typeOid);
  if (compare === null) return null;
  const nullOrder = (nullsFirst ?? descending) ? -1 : 1;
  if (descending) {
    return (a, b) => (a === null ? (b === null ? 0 : nullOrder) : b === null ? -nullOrder : compare(b, a));
  }
  return (a, b) => (a === null ? (b === null ? 0 : nullOrder) : b === null ? -nullOrder : compare(a, b));
}

const latin1Key = (value: Buffer): string => value.toString('latin1');

/**
 * A string that is equal for two values exactly when PostgreSQL's default equality says they are equal (for
 * GROUP BY / DISTINCT merging at the proxy), or null when the type is not supported. Keys are opaque: only their
 * equality means anything, and each call allocates its string.
 */
export function groupKeyNormalizerForType(typeOid: number): ((value: Buffer) => string) | null {
  switch (typeOid) {
    case TypeOid.bool:
    case TypeOid.name:
    case TypeOid.text:
    case TypeOid.varchar:
    case TypeOid.uuid:
    case TypeOid.time:
    case TypeOid.int2:
    case TypeOid.int4:
    case TypeOid.int8:
    case TypeOid.oid:
    case TypeOid.date:
    case TypeOid.timestamp:
      // Canonical output: one value, one text.
      return latin1Key;
    case TypeOid.bytea:
      return (value) => (isHexBytea(value) ? value.toString('latin1') : `\\x${byteaBytes(value).toString('hex')}`);
    case TypeOid.char:
      return (value) => String(charByte(value));
    case TypeOid.bpchar:
      return (value) => value.toString('latin1', 0, bpcharLength(value));
    case TypeOid.float4:
    case TypeOid.float8:
      return (value) => decimalKey(value, 'float');
    case TypeOid.numeric:
      return (value) => decimalKey(value, 'numeric');
    case TypeOid.timestamptz:
      // The same instant prints differently in different TimeZones.
      return (value) => {
        scanTemporal(value, leftSpan, Temporal.timestamptz);
        return spanKey(leftSpan);
      };
    case TypeOid.interval:
      return (value) => {
        scanInterval(value, leftSpan);
        return spanKey(leftSpan);
      };
    default:
      return null;
  }
}
