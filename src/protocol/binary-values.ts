// PostgreSQL's binary wire format for the result types whose text output maps to it without a session setting
// or a rounding choice: the proxy merges rows in text, and a client that asked for binary results gets these
// encoded here. Every other type is encoded by a node (node-value-format.ts), which owns the type's send function.

const encoders = new Map<number, (text: string) => Buffer>([
  [16, (text) => Buffer.from([text === 't' ? 1 : 0])], // bool
  [21, (text) => int16(Number(text))], // int2
  [23, (text) => int32(Number(text))], // int4
  [26, (text) => uint32(Number(text))], // oid
  [20, (text) => int64(BigInt(text))], // int8
  // float8's text is shortest-exact (or rounded, and then the node would parse the same rounded text): a JS
  // double reads it back to the same bits. float4 is left to the node: reading it through a double rounds twice.
  [701, float8],
  [1700, numeric],
  [2950, uuid],
  ...[25, 1043, 1042, 19, 114, 705].map((oid) => [oid, (text: string) => Buffer.from(text, 'utf8')] as [number, (text: string) => Buffer]),
]);

/** The encoder from a value's text to its binary form for a type, or undefined when a node must do it. */
export function nativeBinaryEncoder(typeOid: number): ((text: string) => Buffer) | undefined {
  return encoders.get(typeOid);
}

function int16(value: number): Buffer {
  const out = Buffer.allocUnsafe(2);
  out.writeInt16BE(value);
  return out;
}

function int32(value: number): Buffer {
  const out = Buffer.allocUnsafe(4);
  out.writeInt32BE(value);
  return out;
}

function uint32(value: number): Buffer {
  const out = Buffer.allocUnsafe(4);
  out.writeUInt32BE(value);
  return out;
}

function int64(value: bigint): Buffer {
  const out = Buffer.allocUnsafe(8);
  out.writeBigInt64BE(value);
  return out;
}

function float8(text: string): Buffer {
  const out = Buffer.allocUnsafe(8);
  out.writeDoubleBE(text === 'Infinity' ? Infinity : text === '-Infinity' ? -Infinity : Number(text));
  return out;
}

function uuid(text: string): Buffer {
  return Buffer.from(text.replace(/-/g, ''), 'hex');
}

const numericSign = { positive: 0x0000, negative: 0x4000, nan: 0xc000, infinity: 0xd000, negativeInfinity: 0xf000 };

/**
 * numeric_send's layout: digit count, weight (of the first base-10000 digit), sign, display scale, then the
 * base-10000 digits with leading and trailing zero digits stripped, as PostgreSQL stores every numeric.
 */
export function numeric(text: string): Buffer {
  const special = text === 'NaN' ? numericSign.nan : text === 'Infinity' ? numericSign.infinity : text === '-Infinity' ? numericSign.negativeInfinity : null;
  if (special !== null) return header(0, 0, special, 0);
  const negative = text.startsWith('-');
  const unsigned = negative ? text.slice(1) : text;
  const point = unsigned.indexOf('.');
  const integer = point < 0 ? unsigned : unsigned.slice(0, point);
  const fraction = point < 0 ? '' : unsigned.slice(point + 1);
  const scale = fraction.length;
  // Align to base-10000 digits around the decimal point.
  const integerPadded = integer.padStart(Math.ceil(integer.length / 4) * 4, '0');
  const fractionPadded = fraction.padEnd(Math.ceil(fraction.length / 4) * 4, '0');
  const digits: number[] = [];
  for (let i = 0; i < integerPadded.length; i += 4) digits.push(Number(integerPadded.slice(i, i + 4)));
  for (let i = 0; i < fractionPadded.length; i += 4) digits.push(Number(fractionPadded.slice(i, i + 4)));
  let weight = integerPadded.length / 4 - 1;
  let start = 0;
  while (start < digits.length && digits[start] === 0) {
    start++;
    weight--;
  }
  let end = digits.length;
  while (end > start && digits[end - 1] === 0) end--;
  const kept = digits.slice(start, end);
  if (kept.length === 0) return header(0, 0, numericSign.positive, scale);
  const out = header(kept.length, weight, negative ? numericSign.negative : numericSign.positive, scale, kept.length * 2);
  kept.forEach((digit, i) => out.writeInt16BE(digit, 8 + i * 2));
  return out;
}

function header(count: number, weight: number, sign: number, scale: number, extra = 0): Buffer {
  const out = Buffer.allocUnsafe(8 + extra);
  out.writeInt16BE(count, 0);
  out.writeInt16BE(weight, 2);
  out.writeUInt16BE(sign, 4);
  out.writeInt16BE(scale, 6);
  return out;
}
