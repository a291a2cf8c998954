// Rows are placed by hashing their distribution key in the proxy, so the TypeScript hashes must equal what
// PostgreSQL itself computes. Each function is checked against a real node over thousands of values and several
// seeds, calling the very support function each type's default hash opclass uses.

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import type { Client } from 'pg';
import {
  hashBoolExtended,
  hashBpcharExtended,
  hashBytesExtended,
  hashDateExtended,
  hashInt2Extended,
  hashInt4Extended,
  hashInt8Extended,
  hashNumericExtended,
  hashTextExtended,
  hashTimestampExtended,
  hashTimestamptzExtended,
  hashUint32Extended,
  hashUuidExtended,
} from '../../src/catalog/pg-hash';
import { rowsOf, startTestCluster, type TestCluster } from '../support/test-cluster';
import { digits, intBetween, prng } from '../support/random';

// 0 means "no seed" to PostgreSQL; the second is the hash-partitioning seed; the third has the top bit set, so
// the seed's halves are taken from a negative int8.
const SEEDS = [0n, 8816678312871386365n, -6148914691236517206n];

let cluster: TestCluster;
let client: Client;

before(async () => {
  cluster = await startTestCluster({ nodes: 1, noProxy: true });
  client = await cluster.connectDirect(0);
});

after(async () => {
  await client?.end();
  await cluster?.stop();
});

function random64(random: () => number): bigint {
  const hi = BigInt(Math.floor(random() * 2 ** 32));
  const lo = BigInt(Math.floor(random() * 2 ** 32));
  return BigInt.asIntN(64, (hi << 32n) | lo);
}

/**
 * A wrapper around the C function PostgreSQL registers as support function 2 (the extended hash) of the type's
 * default hash opclass, so the test calls exactly what hash partitioning calls even where that function is
 * declared for another type (date uses hashint4extended, timestamptz timestamp_hash_extended).
 */
async function opclassHash(type: string): Promise<{ fn: string; proc: string }> {
  const rows = await rowsOf(
    client,
    `select p.prosrc from pg_opclass c join pg_am am on am.oid = c.opcmethod
       join pg_amproc ap on ap.amprocfamily = c.opcfamily and ap.amproclefttype = c.opcintype
        and ap.amprocrighttype = c.opcintype and ap.amprocnum = 2
       join pg_proc p on p.oid = ap.amproc
      where am.amname = 'hash' and c.opcdefault and c.opcintype = $1::regtype`,
    [type],
  );
  assert.equal(rows.length, 1, `one default hash opclass for ${type}`);
  const proc = rows[0][0]!;
  const fn = `pg_temp.hash_${type.replace(/\W/g, '_')}`;
  await client.query(`create or replace function ${fn}(${type}, int8) returns int8 language internal immutable strict as '${proc}'`);
  return { fn, proc };
}

/**
 * Hashes every value on the node with every seed in one query and compares with ours. Values travel as text and
 * are cast on the node, so the node's own input function decides what each value is.
 */
async function compare<T>(type: string, values: readonly T[], ours: (value: T, seed: bigint) => bigint, expectedProc?: string): Promise<void> {
  const { fn, proc } = await opclassHash(type);
  if (expectedProc) assert.equal(proc, expectedProc, `${type}'s opclass hashes with ${expectedProc}`);
  const columns = SEEDS.map((seed) => `${fn}(x::${type}, ${seed})`).join(', ');
  const rows = await rowsOf(client, `select ${columns} from unnest($1::text[]) with ordinality as t(x, n) order by n`, [values.map((v) => String(v))]);
  assert.equal(rows.length, values.length);
  let mismatches = 0;
  const examples: string[] = [];
  rows.forEach((row, i) => {
    SEEDS.forEach((seed, j) => {
      let mine: bigint | string;
      try {
        mine = ours(values[i], seed);
      } catch (error) {
        mine = `threw ${(error as Error).message}`;
      }
      if (mine !== BigInt(row[j]!)) {
        mismatches++;
        if (examples.length < 10) examples.push(`${JSON.stringify(String(values[i]))} seed ${seed}: ours ${mine}, postgres ${row[j]}`);
      }
    });
  });
  assert.equal(mismatches, 0, `${mismatches} mismatches for ${type}:\n${examples.join('\n')}`);
}

test('int2: every edge and thousands of random values', async () => {
  const random = prng(2);
  const values = [-32768, -32767, -256, -255, -129, -128, -1, 0, 1, 127, 128, 255, 256, 32766, 32767];
  for (let i = 0; i < 6000; i++) values.push(intBetween(random, -32768, 32767));
  await compare('int2', values, hashInt2Extended, 'hashint2extended');
});

test('int4: edges around 0, 2^15, 2^31 and random values', async () => {
  const random = prng(4);
  const values = [-2147483648, -2147483647, -65536, -32769, -32768, -1, 0, 1, 32767, 32768, 65535, 65536, 2147483646, 2147483647];
  for (let bit = 0; bit < 31; bit++) values.push(2 ** bit, -(2 ** bit), 2 ** bit - 1);
  for (let i = 0; i < 6000; i++) values.push(intBetween(random, -2147483648, 2147483647));
  await compare('int4', values, hashInt4Extended, 'hashint4extended');
});

test('int8: edges around 2^31, 2^32, 2^63 and random values', async () => {
  const random = prng(8);
  const values: bigint[] = [-(2n ** 63n), -(2n ** 63n) + 1n, 2n ** 63n - 1n, 2n ** 63n - 2n, -1n, 0n, 1n];
  for (let bit = 0n; bit < 63n; bit++) values.push(2n ** bit, -(2n ** bit), 2n ** bit - 1n, -(2n ** bit) - 1n);
  for (const near of [2n ** 31n, 2n ** 32n]) for (let d = -3n; d <= 3n; d++) values.push(near + d, -near + d);
  for (let i = 0; i < 3000; i++) values.push(random64(random));
  for (let i = 0; i < 3000; i++) values.push(BigInt(intBetween(random, -(2 ** 40), 2 ** 40)));
  await compare('int8', values, hashInt8Extended, 'hashint8extended');
});

test('int8 that fits in int4 hashes like that int4, and int2 like int4', () => {
  for (const v of [0, 1, -1, 12345, -12345, 2147483647, -2147483648]) {
    for (const seed of SEEDS) assert.equal(hashInt8Extended(BigInt(v), seed), hashInt4Extended(v, seed));
  }
  for (const v of [0, -1, 32767, -32768]) for (const seed of SEEDS) assert.equal(hashInt2Extended(v, seed), hashInt4Extended(v, seed));
  assert.equal(hashUint32Extended(0xffffffff, 7n), hashInt4Extended(-1, 7n));
  assert.throws(() => hashInt4Extended(2147483648, 0n), RangeError);
  assert.throws(() => hashInt2Extended(1.5, 0n), RangeError);
});

const ALPHABET = ['a', 'b', 'Z', '0', ' ', '-', "'", '"', '\\', '{', '}', ',', 'é', 'ß', 'Ж', '中', '文', '日本', '€', '😀', '👍🏽', '\t', '\n'];

function randomText(random: () => number, length: number): string {
  let s = '';
  for (let i = 0; i < length; i++) s += ALPHABET[intBetween(random, 0, ALPHABET.length - 1)];
  return s;
}

function asciiText(random: () => number, length: number): string {
  let s = '';
  for (let i = 0; i < length; i++) s += String.fromCharCode(intBetween(random, 0x21, 0x7e));
  return s;
}

test('text: every lookup3 tail length, multi-byte UTF-8 and long strings', async () => {
  const random = prng(16);
  const values = ['', 'a', 'é', '中文', '😀', 'hello world', 'NULL', ' ', '  leading', 'trailing  '];
  // Byte lengths 0..40 in plain ASCII cover each tail length of the 12-byte blocks several times over.
  for (let length = 0; length <= 40; length++) for (let k = 0; k < 5; k++) values.push(asciiText(random, length));
  for (let i = 0; i < 5000; i++) values.push(randomText(random, intBetween(random, 0, 30)));
  for (let i = 0; i < 300; i++) values.push(asciiText(random, intBetween(random, 100, 3000)));
  for (let i = 0; i < 50; i++) values.push(randomText(random, intBetween(random, 1000, 5000)));
  await compare('text', values, hashTextExtended, 'hashtextextended');
});

test('hashBytesExtended agrees with hashing text by its UTF-8 bytes', () => {
  for (const s of ['', 'abc', 'é中😀', 'x'.repeat(37)]) assert.equal(hashBytesExtended(Buffer.from(s, 'utf8'), 3n), hashTextExtended(s, 3n));
});

test('bpchar: trailing blanks are not hashed', async () => {
  const random = prng(32);
  const values = ['', ' ', '   ', 'a', 'a ', 'a   ', ' a', ' a ', 'é ', '中文  ', 'tab\t', 'tab\t ', 'nl\n '];
  for (let i = 0; i < 5000; i++) values.push(randomText(random, intBetween(random, 0, 20)) + ' '.repeat(intBetween(random, 0, 5)));
  await compare('bpchar', values, hashBpcharExtended, 'hashbpcharextended');
  for (const seed of SEEDS) assert.equal(hashBpcharExtended('ab   ', seed), hashBpcharExtended('ab', seed));
});

function randomNumeric(random: () => number): string {
  const sign = ['', '', '-', '+'][intBetween(random, 0, 3)];
  const leadingZeros = random() < 0.2 ? '0'.repeat(intBetween(random, 1, 6)) : '';
  const intPart = leadingZeros + digits(random, intBetween(random, 0, 25));
  const trailingZeros = random() < 0.3 ? '0'.repeat(intBetween(random, 1, 9)) : '';
  const fracPart = digits(random, intBetween(random, 0, 25)) + trailingZeros;
  let s = sign + (intPart === '' && fracPart === '' ? '0' : intPart);
  if (fracPart !== '' && random() < 0.8) s += `.${fracPart}`;
  else if (intPart === '') s += '0';
  if (random() < 0.15) s += `${random() < 0.5 ? 'e' : 'E'}${intBetween(random, -120, 120)}`;
  return s;
}

test('numeric: scales, zeros, signs, huge and tiny weights, NaN and infinities', async () => {
  const random = prng(64);
  const values = [
    '0', '0.00', '-0', '+0', '-0.000', '0e10', '.0', '0.',
    '1', '1.5', '1.50', '1.500000', '01.5', '-1.5', '-1.50', '0.001', '-0.001', '1e10', '1E10', '10000000000', '1e-3',
    '10000', '9999', '10001', '100000000', '0.0001', '0.00010', '0.00001', '12345678.87654321', '.5', '5.', '+7',
    '1e100', '-1e100', '1e-100', '-1e-100', '1e1000', '1e-1000', '123.456e-50', '9.99999999e999',
    '12345678901234567890123456789012345678901234567890', '0.000000000000000000000000000000000000000000001',
    'NaN', 'nan', 'Infinity', '-Infinity', 'inf', '-inf', '+Infinity', ' 42 ', ' -3.25 ',
  ];
  for (let i = 0; i < 6000; i++) values.push(randomNumeric(random));
  for (let power = -40; power <= 40; power++) values.push(`1e${power}`, `-7e${power}`, `123456789e${power}`);
  await compare('numeric', values, hashNumericExtended, 'hash_numeric_extended');
});

test('numeric values that compare equal hash alike', () => {
  const groups = [
    ['1.5', '1.50', '1.5000000', '15e-1', '0.15e1', '+1.5'],
    ['0', '0.000', '-0', '0e99'],
    ['-0.001', '-1e-3', '-0.0010'],
    ['10000', '1e4', '10000.0000', '000010000'],
    ['NaN', 'nan'],
  ];
  for (const seed of SEEDS) {
    for (const group of groups) {
      const hashes = new Set(group.map((v) => hashNumericExtended(v, seed)));
      assert.equal(hashes.size, 1, `${group.join(' = ')} with seed ${seed}`);
    }
  }
  assert.throws(() => hashNumericExtended('1.2.3', 0n), SyntaxError);
});

function pad(n: number, width: number): string {
  return String(n).padStart(width, '0');
}

function randomDate(random: () => number): string {
  const roll = random();
  let year: number;
  if (roll < 0.5) year = intBetween(random, 1900, 2100);
  else if (roll < 0.8) year = intBetween(random, 1, 9999);
  else if (roll < 0.9) year = intBetween(random, 10000, 200000);
  else year = intBetween(random, 1, 4713);
  const bc = roll >= 0.9;
  const month = intBetween(random, 1, 12);
  const day = intBetween(random, 1, [31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31][month - 1]);
  return `${pad(year, 4)}-${pad(month, 2)}-${pad(day, 2)}${bc ? ' BC' : ''}`;
}

test('date: eras before and after 2000, leap days, BC, far future and infinities', async () => {
  const random = prng(128);
  const values = [
    '2000-01-01', '1999-12-31', '2000-02-29', '1900-02-28', '1900-03-01', '2400-02-29', '1970-01-01', '0001-01-01',
    '0001-12-31 BC', '0001-01-01 BC', '0005-02-29 BC', '4713-01-01 BC', '4714-11-24 BC', '5874897-12-31',
    '294276-12-31', 'infinity', '-infinity', 'epoch', 'Infinity',
  ];
  for (let i = 0; i < 4000; i++) values.push(randomDate(random));
  await compare('date', values, hashDateExtended, 'hashint4extended');
});

function randomTime(random: () => number): string {
  const base = `${pad(intBetween(random, 0, 23), 2)}:${pad(intBetween(random, 0, 59), 2)}`;
  const roll = random();
  if (roll < 0.1) return base;
  const seconds = `${base}:${pad(intBetween(random, 0, 59), 2)}`;
  if (roll < 0.4) return seconds;
  return `${seconds}.${digits(random, intBetween(random, 1, roll < 0.9 ? 6 : 9))}`;
}

function randomOffset(random: () => number): string {
  const sign = random() < 0.5 ? '+' : '-';
  const hours = pad(intBetween(random, 0, 14), 2);
  const roll = random();
  if (roll < 0.4) return `${sign}${hours}`;
  if (roll < 0.8) return `${sign}${hours}:${['00', '30', '45', '15'][intBetween(random, 0, 3)]}`;
  if (roll < 0.9) return `${sign}${hours}${pad(intBetween(random, 0, 59), 2)}`;
  return 'Z';
}

function randomTimestamp(random: () => number): string {
  const date = randomDate(random);
  if (date.endsWith(' BC')) return `${date.slice(0, -3)} ${randomTime(random)} BC`;
  return `${date}${random() < 0.1 ? 'T' : ' '}${randomTime(random)}`;
}

test('timestamp: microseconds, rounding of longer fractions, eras and infinities', async () => {
  const random = prng(256);
  const values = [
    '2000-01-01 00:00:00', '1999-12-31 23:59:59.999999', '2000-01-01 00:00:00.000001', '1970-01-01 00:00:00',
    '2000-01-01', '2000-01-01 24:00:00', '2016-12-31 23:59:60', '2000-01-01T12:34:56.789', '2000-01-01 00:00:00.0000005',
    '2000-01-01 00:00:00.0000015', '2000-01-01 00:00:00.9999999', '0001-01-01 00:00:00 BC', '4714-11-24 00:00:00 BC',
    '294276-12-31 23:59:59.999999', '2000-01-01 10:00:00+05', 'infinity', '-infinity', 'epoch',
  ];
  for (let i = 0; i < 4000; i++) values.push(randomTimestamp(random));
  await compare('timestamp', values, hashTimestampExtended, 'timestamp_hash_extended');
});

test('timestamptz: offsets are folded into UTC microseconds', async () => {
  const random = prng(512);
  const values = [
    '2000-01-01 00:00:00+00', '2000-01-01 05:30:00+05:30', '1999-12-31 16:00:00-08', '2000-01-01T00:00:00Z',
    '2000-01-01 00:00:00.5 +0100', '1969-07-20 20:17:40-05', '0001-01-01 00:00:00+00 BC', '2000-01-01 00:00:00+14',
    '2000-01-01 00:00:00-12:45', 'infinity', '-infinity', 'epoch',
  ];
  for (let i = 0; i < 4000; i++) {
    const ts = randomTimestamp(random);
    values.push(ts.endsWith(' BC') ? `${ts.slice(0, -3)}${randomOffset(random)} BC` : `${ts}${randomOffset(random)}`);
  }
  await compare('timestamptz', values, hashTimestamptzExtended, 'timestamp_hash_extended');
  for (const seed of SEEDS) {
    assert.equal(hashTimestamptzExtended('2000-01-01 05:30:00+05:30', seed), hashTimestamptzExtended('2000-01-01 00:00:00+00', seed));
  }
  assert.throws(() => hashTimestamptzExtended('2000-01-01 00:00:00', 0n), SyntaxError);
});

test('text the node rejects is rejected here too, rather than hashed as something else', async () => {
  const cases: [string, string, (text: string, seed: bigint) => bigint][] = [
    ['date', '2001-02-29', hashDateExtended],
    ['date', '0004-02-29 BC', hashDateExtended],
    ['date', '0000-01-01', hashDateExtended],
    ['date', '2000-13-01', hashDateExtended],
    ['date', '4714-11-23 BC', hashDateExtended],
    ['date', '5874898-01-01', hashDateExtended],
    ['timestamp', '2000-01-01 25:00:00', hashTimestampExtended],
    ['timestamp', '2000-01-01 24:00:01', hashTimestampExtended],
    ['timestamp', '2000-01-01 12:60:00', hashTimestampExtended],
    ['timestamp', '294277-01-01 00:00:00', hashTimestampExtended],
    ['timestamp', '4714-11-23 23:59:59 BC', hashTimestampExtended],
    ['timestamptz', '2000-01-01 00:00:00+16', hashTimestamptzExtended],
    ['numeric', '1.2.3', hashNumericExtended],
    ['numeric', '1e', hashNumericExtended],
    ['numeric', '.', hashNumericExtended],
    ['uuid', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a1', hashUuidExtended],
    ['uuid', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11-', hashUuidExtended],
    ['uuid', '{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', hashUuidExtended],
  ];
  for (const [type, text, ours] of cases) {
    await assert.rejects(client.query(`select $1::${type}`, [text]), `postgres rejects ${type} '${text}'`);
    assert.throws(() => ours(text, 0n), `we reject ${type} '${text}'`);
  }
});

test('uuid: random values in every accepted spelling', async () => {
  const random = prng(1024);
  const values = ['00000000-0000-0000-0000-000000000000', 'ffffffff-ffff-ffff-ffff-ffffffffffff', '{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}', 'A0EEBC999C0B4EF8BB6D6BB9BD380A11', 'a0ee-bc99-9c0b-4ef8-bb6d-6bb9-bd38-0a11'];
  for (let i = 0; i < 3000; i++) {
    let hex = '';
    for (let k = 0; k < 32; k++) hex += intBetween(random, 0, 15).toString(16);
    values.push(`${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`);
  }
  await compare('uuid', values, hashUuidExtended, 'uuid_hash_extended');
  assert.throws(() => hashUuidExtended('a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a1', 0n), SyntaxError);
});

test('bool', async () => {
  await compare('bool', [true, false], hashBoolExtended, 'hashcharextended');
});
