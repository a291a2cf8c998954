// PostgreSQL's own 64-bit ("extended") hash functions, reproduced bit for bit, so the proxy can tell which node
// owns a row from the distribution key alone and agree with what each node's hash opclass (and so its hash
// partitioning) computes. Results are what an x86-64 (little-endian) build of PostgreSQL returns.

// ---------------------------------------------------------------------------------------------------------------
// lookup3 (Bob Jenkins), as in src/common/hashfn.c. State words are kept as int32 in JS numbers; every step is
// wrapped with `| 0` so arithmetic stays modulo 2^32, and words are read as unsigned only at the end.

const INITIAL = (0x9e3779b9 + 3923095) | 0;

function rot(x: number, k: number): number {
  return (x << k) | (x >>> (32 - k));
}

/** Mutable lookup3 state; an object rather than a closure so the hot loop stays monomorphic. */
interface State {
  a: number;
  b: number;
  c: number;
}

function mix(s: State): void {
  let { a, b, c } = s;
  a = (a - c) | 0; a ^= rot(c, 4); c = (c + b) | 0;
  b = (b - a) | 0; b ^= rot(a, 6); a = (a + c) | 0;
  c = (c - b) | 0; c ^= rot(b, 8); b = (b + a) | 0;
  a = (a - c) | 0; a ^= rot(c, 16); c = (c + b) | 0;
  b = (b - a) | 0; b ^= rot(a, 19); a = (a + c) | 0;
  c = (c - b) | 0; c ^= rot(b, 4); b = (b + a) | 0;
  s.a = a; s.b = b; s.c = c;
}

function final(s: State): void {
  let { a, b, c } = s;
  c ^= b; c = (c - rot(b, 14)) | 0;
  a ^= c; a = (a - rot(c, 11)) | 0;
  b ^= a; b = (b - rot(a, 25)) | 0;
  c ^= b; c = (c - rot(b, 16)) | 0;
  a ^= c; a = (a - rot(c, 4)) | 0;
  b ^= a; b = (b - rot(a, 14)) | 0;
  c ^= b; c = (c - rot(b, 24)) | 0;
  s.a = a; s.b = b; s.c = c;
}

const MASK64 = (1n << 64n) - 1n;

/** Starts the state the way the extended variants do: a non-zero seed is mixed in as if it were a 12-byte chunk. */
function seeded(length: number, seed: bigint): State {
  const init = (INITIAL + length) | 0;
  const s: State = { a: init, b: init, c: init };
  const u = seed & MASK64; // PostgreSQL takes the int8 argument as uint64
  if (u !== 0n) {
    s.a = (s.a + Number(u >> 32n)) | 0;
    s.b = (s.b + Number(u & 0xffffffffn)) | 0;
    mix(s);
  }
  return s;
}

/** The uint64 result is (b << 32) | c; SQL sees it as a signed int8. */
function result64(s: State): bigint {
  return BigInt.asIntN(64, (BigInt(s.b >>> 0) << 32n) | BigInt(s.c >>> 0));
}

function le32(k: Uint8Array, i: number): number {
  return k[i] | (k[i + 1] << 8) | (k[i + 2] << 16) | (k[i + 3] << 24);
}

/**
 * hash_bytes_extended over bytes with a 64-bit seed, as a signed int8. On a little-endian machine the aligned
 * (word-at-a-time) and unaligned (byte-at-a-time) paths of the C code compute the same thing, so where the
 * bytes sit in memory does not matter here.
 */
export function hashBytesExtended(bytes: Uint8Array, seed: bigint): bigint {
  const s = seeded(bytes.length, seed);
  let i = 0;
  let len = bytes.length;
  while (len >= 12) {
    s.a = (s.a + le32(bytes, i)) | 0;
    s.b = (s.b + le32(bytes, i + 4)) | 0;
    s.c = (s.c + le32(bytes, i + 8)) | 0;
    mix(s);
    i += 12;
    len -= 12;
  }
  // The tail: bytes 0..3 into a, 4..7 into b, 8..10 into c shifted up one byte (c's low byte is the length's).
  if (len >= 9) {
    for (let j = 8; j < len; j++) s.c = (s.c + (bytes[i + j] << (8 * (j - 7)))) | 0;
  }
  if (len >= 5) {
    for (let j = 4; j < Math.min(len, 8); j++) s.b = (s.b + (bytes[i + j] << (8 * (j - 4)))) | 0;
  }
  for (let j = 0; j < Math.min(len, 4); j++) s.a = (s.a + (bytes[i + j] << (8 * j))) | 0;
  final(s);
  return result64(s);
}

/** hash_bytes_uint32_extended: the same as hashing the value's four bytes, without building them. */
export function hashUint32Extended(value: number, seed: bigint): bigint {
  if (!Number.isInteger(value) || value < -0x80000000 || value > 0xffffffff) throw new RangeError(`not a 32-bit integer: ${value}`);
  const s = seeded(4, seed);
  s.a = (s.a + (value | 0)) | 0;
  final(s);
  return result64(s);
}

function checkInt(value: number, min: number, max: number, type: string): void {
  if (!Number.isInteger(value) || value < min || value > max) throw new RangeError(`${type} out of range: ${value}`);
}

/** hashint2extended: the int2 is widened (sign-extended) to int4 first, so equal int2/int4 values hash alike. */
export function hashInt2Extended(value: number, seed: bigint): bigint {
  checkInt(value, -32768, 32767, 'smallint');
  return hashUint32Extended(value, seed);
}

export function hashInt4Extended(value: number, seed: bigint): bigint {
  checkInt(value, -0x80000000, 0x7fffffff, 'integer');
  return hashUint32Extended(value, seed);
}

const INT8_MIN = -(1n << 63n);
const INT8_MAX = (1n << 63n) - 1n;

/**
 * hashint8extended folds the high half into the low half (complemented for negatives) so that an int8 that fits
 * in int4 hashes like that int4: cross-type hash joins depend on it.
 */
export function hashInt8Extended(value: bigint, seed: bigint): bigint {
  if (value < INT8_MIN || value > INT8_MAX) throw new RangeError(`bigint out of range: ${value}`);
  const lo = Number(BigInt.asUintN(32, value)) | 0;
  const hi = Number(BigInt.asUintN(32, value >> 32n)) | 0;
  return hashUint32Extended(lo ^ (value >= 0n ? hi : ~hi), seed);
}

// ---------------------------------------------------------------------------------------------------------------
// Strings. Under a deterministic collation PostgreSQL hashes the stored bytes; the database encoding is UTF-8.

function utf8(text: string): Uint8Array {
  return Buffer.from(text, 'utf8');
}

/** hashtextextended under a deterministic collation (C or a deterministic default): the UTF-8 bytes. */
export function hashTextExtended(text: string, seed: bigint): bigint {
  return hashBytesExtended(utf8(text), seed);
}

/** hashbpcharextended: trailing blanks are not significant to character(n) comparison, so they are not hashed. */
export function hashBpcharExtended(text: string, seed: bigint): bigint {
  let end = text.length;
  while (end > 0 && text.charCodeAt(end - 1) === 0x20) end--;
  return hashBytesExtended(utf8(text.slice(0, end)), seed);
}

// ---------------------------------------------------------------------------------------------------------------
// numeric. PostgreSQL stores base-10000 digits (int16) aligned on the decimal point, with the weight of the first
// one; hash_numeric_extended hashes the digits between the first and last non-zero ones (so the scale does not
// matter) and XORs in the weight. NaN and ±Infinity hash to the seed itself and zero to seed - 1.

const NUMERIC_TEXT = /^([+-]?)(?:(\d+)(?:\.(\d*))?|\.(\d+))(?:[eE]([+-]?\d+))?$/;
const NUMERIC_SPECIAL = /^[+-]?(?:nan|inf|infinity)$/i;
/** Far beyond what numeric can hold, but it keeps a typo like 1e999999999 from allocating gigabytes. */
const MAX_EXPONENT = 1_000_000;

export interface NumericDigits {
  /** Base-10000 digits, without leading or trailing zero digits; empty for zero. */
  readonly digits: number[];
  /** Weight (power of 10000) of digits[0]. */
  readonly weight: number;
}

/**
 * The canonical base-10000 form of a finite numeric written as text (null for NaN and ±Infinity). Sign is left
 * out: PostgreSQL's hash ignores it.
 */
export function numericDigits(text: string): NumericDigits | null {
  const trimmed = text.trim();
  if (NUMERIC_SPECIAL.test(trimmed)) return null;
  const m = NUMERIC_TEXT.exec(trimmed);
  if (!m) throw new SyntaxError(`invalid input syntax for type numeric: "${text}"`);
  const intPart = m[2] ?? '';
  const fracPart = m[3] ?? m[4] ?? '';
  const exponent = m[5] === undefined ? 0 : Number(m[5]);
  if (!Number.isSafeInteger(exponent) || Math.abs(exponent) > MAX_EXPONENT) throw new RangeError(`numeric exponent out of range: "${text}"`);
  let significant = intPart + fracPart;
  // The value is 0.<significant> x 10^point.
  let point = intPart.length + exponent;
  let start = 0;
  while (start < significant.length && significant.charCodeAt(start) === 48) start++;
  let end = significant.length;
  while (end > start && significant.charCodeAt(end - 1) === 48) end--;
  if (start === end) return { digits: [], weight: 0 };
  point -= start;
  significant = significant.slice(start, end);
  // Decimal digit i stands for 10^(point - 1 - i), which lies in base-10000 digit floor((point - 1 - i) / 4).
  const weight = Math.floor((point - 1) / 4);
  const last = Math.floor((point - significant.length) / 4);
  const digits = new Array<number>(weight - last + 1).fill(0);
  for (let i = 0; i < significant.length; i++) {
    const power = point - 1 - i;
    const group = Math.floor(power / 4);
    const within = power - group * 4;
    digits[weight - group] += (significant.charCodeAt(i) - 48) * 10 ** within;
  }
  return { digits, weight };
}

/** hash_numeric_extended of a numeric written as text ('1.50', '-1e-3', 'NaN', '-Infinity'). */
export function hashNumericExtended(text: string, seed: bigint): bigint {
  const parsed = numericDigits(text);
  if (parsed === null) return BigInt.asIntN(64, seed);
  if (parsed.digits.length === 0) return BigInt.asIntN(64, seed - 1n);
  const bytes = new Uint8Array(parsed.digits.length * 2);
  parsed.digits.forEach((digit, i) => {
    bytes[2 * i] = digit & 0xff;
    bytes[2 * i + 1] = digit >> 8;
  });
  // The C code XORs a uint64 with an int, so a negative weight is sign-extended to 64 bits first.
  return BigInt.asIntN(64, hashBytesExtended(bytes, seed) ^ BigInt(parsed.weight));
}

// ---------------------------------------------------------------------------------------------------------------
// Dates and times. The hash opclasses hash the stored integer: date as int4 days since 2000-01-01 (with
// hashint4extended), timestamp and timestamptz as int8 microseconds since 2000-01-01 00:00:00 (UTC for
// timestamptz) with hashint8extended. Infinities are stored as the extreme integers.

const DATE_NOBEGIN = -0x80000000;
const DATE_NOEND = 0x7fffffff;
const POSTGRES_EPOCH_JDATE = 2451545;
/** Dates run from Julian day 0 (4714-11-24 BC) up to, not including, this Julian day (5874898-01-01). */
const DATE_END_JULIAN = 2147483494;
const MIN_TIMESTAMP = -211813488000000000n; // 4714-11-24 00:00:00 BC
const END_TIMESTAMP = 9223371331200000000n; // 294277-01-01 00:00:00
const USECS_PER_DAY = 86_400_000_000n;

/** Days from 2000-01-01 in the proleptic Gregorian calendar; year is astronomical (1 BC = 0). */
function daysFromEpoch(year: number, month: number, day: number): number {
  const y = month <= 2 ? year - 1 : year;
  const era = Math.floor(y / 400);
  const yearOfEra = y - era * 400;
  const dayOfYear = Math.floor((153 * (month + (month > 2 ? -3 : 9)) + 2) / 5) + day - 1;
  const dayOfEra = yearOfEra * 365 + Math.floor(yearOfEra / 4) - Math.floor(yearOfEra / 100) + dayOfYear;
  return era * 146097 + dayOfEra - 719468 - 10957; // 719468 days from 0000-03-01 to 1970-01-01, 10957 to 2000
}

function daysInMonth(year: number, month: number): number {
  if (month === 2) return year % 4 === 0 && (year % 100 !== 0 || year % 400 === 0) ? 29 : 28;
  return [31, 0, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31][month - 1];
}

type Special = 'infinity' | '-infinity' | 'epoch' | null;

function special(text: string): Special {
  const t = text.trim().toLowerCase();
  if (t === 'infinity' || t === '+infinity') return 'infinity';
  if (t === '-infinity') return '-infinity';
  if (t === 'epoch') return 'epoch';
  return null;
}

const DATE_PART = /^(\d{4,})-(\d{1,2})-(\d{1,2})/;
const BC_SUFFIX = /\s+BC$/i;

/** Parses the date part at the start of s; returns days since 2000-01-01 and the rest of the text. */
function parseDatePart(s: string, original: string, type: string): { days: number; rest: string } {
  const m = DATE_PART.exec(s);
  if (!m) throw new SyntaxError(`invalid input syntax for type ${type}: "${original}"`);
  const [, y, mo, d] = m;
  let year = Number(y);
  const month = Number(mo);
  const day = Number(d);
  if (year === 0 || month < 1 || month > 12) throw new RangeError(`date/time field value out of range: "${original}"`);
  if (BC_SUFFIX.test(original.trim())) year = 1 - year;
  if (day < 1 || day > daysInMonth(year, month)) throw new RangeError(`date/time field value out of range: "${original}"`);
  return { days: daysFromEpoch(year, month, day), rest: s.slice(m[0].length) };
}

function stripBc(text: string): string {
  return text.trim().replace(BC_SUFFIX, '');
}

/** date as stored: int4 days since 2000-01-01, the extremes for ±infinity. */
export function dateToDays(text: string): number {
  const sp = special(text);
  if (sp === 'infinity') return DATE_NOEND;
  if (sp === '-infinity') return DATE_NOBEGIN;
  if (sp === 'epoch') return daysFromEpoch(1970, 1, 1);
  const { days, rest } = parseDatePart(stripBc(text), text, 'date');
  if (rest !== '') throw new SyntaxError(`invalid input syntax for type date: "${text}"`);
  const julian = days + POSTGRES_EPOCH_JDATE;
  if (julian < 0 || julian >= DATE_END_JULIAN) throw new RangeError(`date out of range: "${text}"`);
  return days;
}

/** hashint4extended of the stored date (the date hash opclass uses the int4 functions). */
export function hashDateExtended(text: string, seed: bigint): bigint {
  return hashInt4Extended(dateToDays(text), seed);
}

const TIME_PART = /^(?:[T ]|\s+)(\d{1,2}):(\d{2})(?::(\d{2})(\.\d*)?)?/i;
const ZONE_PART = /^\s*(?:([+-])(\d{1,2})(?::?(\d{2})(?::?(\d{2}))?)?|(z|utc|gmt))$/i;

/** Rounds half to even, as C's rint() does under the default rounding mode. */
function rint(x: number): number {
  const r = Math.round(x);
  return r - x === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/**
 * Parses ISO 'YYYY-MM-DD[ HH:MM[:SS[.ffffff]]][offset][ BC]' into local microseconds since 2000-01-01 and the
 * offset in seconds east of UTC (null when there is none).
 */
function parseTimestamp(text: string, type: string): { local: bigint; offsetSeconds: number | null } {
  const { days, rest: afterDate } = parseDatePart(stripBc(text), text, type);
  let rest = afterDate;
  let micros = 0n;
  const t = TIME_PART.exec(rest);
  if (t) {
    const hour = Number(t[1]);
    const minute = Number(t[2]);
    const second = t[3] === undefined ? 0 : Number(t[3]);
    // PostgreSQL reads the fraction with strtod and rounds it to microseconds with rint().
    const fraction = t[4] === undefined || t[4] === '.' ? 0 : rint(Number(`0${t[4]}`) * 1_000_000);
    const midnightNext = hour === 24 && minute === 0 && second === 0 && fraction === 0;
    if ((hour > 23 && !midnightNext) || minute > 59 || second > 60) throw new RangeError(`date/time field value out of range: "${text}"`);
    micros = BigInt(((hour * 60 + minute) * 60 + second) * 1_000_000) + BigInt(fraction);
    rest = rest.slice(t[0].length);
  }
  let offsetSeconds: number | null = null;
  if (rest !== '') {
    const z = ZONE_PART.exec(rest);
    if (!z) throw new SyntaxError(`invalid input syntax for type ${type}: "${text}"`);
    if (z[5] !== undefined) offsetSeconds = 0;
    else {
      const hours = Number(z[2]);
      const minutes = z[3] === undefined ? 0 : Number(z[3]);
      const seconds = z[4] === undefined ? 0 : Number(z[4]);
      if (hours > 15 || minutes > 59 || seconds > 59) throw new RangeError(`time zone displacement out of range: "${text}"`);
      offsetSeconds = (z[1] === '-' ? -1 : 1) * (hours * 3600 + minutes * 60 + seconds);
    }
  }
  const julian = days + POSTGRES_EPOCH_JDATE;
  if (julian < 0 || julian >= DATE_END_JULIAN) throw new RangeError(`timestamp out of range: "${text}"`);
  return { local: BigInt(days) * USECS_PER_DAY + micros, offsetSeconds };
}

function checkTimestamp(value: bigint, text: string): bigint {
  if (value < MIN_TIMESTAMP || value >= END_TIMESTAMP) throw new RangeError(`timestamp out of range: "${text}"`);
  return value;
}

/**
 * timestamp as stored: int8 microseconds since 2000-01-01 00:00:00. As in PostgreSQL, an offset written in the
 * text is ignored for a timestamp without time zone.
 */
export function timestampToMicros(text: string): bigint {
  const sp = special(text);
  if (sp === 'infinity') return INT8_MAX;
  if (sp === '-infinity') return INT8_MIN;
  if (sp === 'epoch') return BigInt(daysFromEpoch(1970, 1, 1)) * USECS_PER_DAY;
  return checkTimestamp(parseTimestamp(text, 'timestamp').local, text);
}

/**
 * timestamptz as stored: int8 microseconds since 2000-01-01 00:00:00 UTC. The text must carry its offset: without
 * one the value would depend on the session's TimeZone, which the proxy cannot see here.
 */
export function timestamptzToMicros(text: string): bigint {
  const sp = special(text);
  if (sp === 'infinity') return INT8_MAX;
  if (sp === '-infinity') return INT8_MIN;
  if (sp === 'epoch') return BigInt(daysFromEpoch(1970, 1, 1)) * USECS_PER_DAY;
  const { local, offsetSeconds } = parseTimestamp(text, 'timestamp with time zone');
  if (offsetSeconds === null) throw new SyntaxError(`timestamptz text needs an explicit UTC offset: "${text}"`);
  return checkTimestamp(local - BigInt(offsetSeconds) * 1_000_000n, text);
}

/** timestamp_hash_extended: hashint8extended of the stored microseconds. */
export function hashTimestampExtended(text: string, seed: bigint): bigint {
  return hashInt8Extended(timestampToMicros(text), seed);
}

/** timestamptz uses the same function as timestamp, over the UTC microseconds. */
export function hashTimestamptzExtended(text: string, seed: bigint): bigint {
  return hashInt8Extended(timestamptzToMicros(text), seed);
}

// ---------------------------------------------------------------------------------------------------------------
// uuid and bool.

function hexValue(code: number): number {
  if (code >= 48 && code <= 57) return code - 48;
  if (code >= 97 && code <= 102) return code - 87;
  if (code >= 65 && code <= 70) return code - 55;
  return -1;
}

/**
 * The 16 bytes of a uuid written as PostgreSQL accepts it: 32 hex digits, optionally in braces, with a hyphen
 * allowed after any group of four digits.
 */
export function uuidBytes(text: string): Uint8Array {
  const fail = (): never => {
    throw new SyntaxError(`invalid input syntax for type uuid: "${text}"`);
  };
  const s = text.trim();
  let p = 0;
  const braces = s[0] === '{';
  if (braces) p++;
  const out = new Uint8Array(16);
  for (let i = 0; i < 16; i++) {
    if (p + 1 >= s.length) fail();
    const hi = hexValue(s.charCodeAt(p));
    const lo = hexValue(s.charCodeAt(p + 1));
    if (hi < 0 || lo < 0) fail();
    out[i] = (hi << 4) | lo;
    p += 2;
    if (s[p] === '-' && i % 2 === 1 && i < 15) p++;
  }
  if (braces) {
    if (s[p] !== '}') fail();
    p++;
  }
  if (p !== s.length) fail();
  return out;
}

/** uuid_hash_extended: the 16 bytes as they are stored. */
export function hashUuidExtended(text: string, seed: bigint): bigint {
  return hashBytesExtended(uuidBytes(text), seed);
}

/** The bool hash opclass uses hashcharextended: the byte 0 or 1, widened to int4. */
export function hashBoolExtended(value: boolean, seed: bigint): bigint {
  return hashUint32Extended(value ? 1 : 0, seed);
}
