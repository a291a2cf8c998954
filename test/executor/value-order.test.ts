// A k-way merge at the proxy is only right if its comparators order and equate values exactly as PostgreSQL does.
// Each type is checked against a real node: hundreds of values with their edge cases are sorted by PostgreSQL in
// each direction and NULLS placement, and every pair must compare, sort and group as PostgreSQL's ORDER BY and `=`.

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import type { Client } from 'pg';
import { PgError } from '../../src/protocol/errors';
import { comparatorForType, groupKeyNormalizerForType, sortKeyComparator } from '../../src/executor/value-order';
import { rowsOf, startTestCluster, type TestCluster } from '../support/test-cluster';
import { digits, intBetween, prng } from '../support/random';

let cluster: TestCluster;
let client: Client;

before(async () => {
  cluster = await startTestCluster({ nodes: 1, noProxy: true });
  client = await cluster.connectDirect(0);
  await client.query(`SET DateStyle = 'ISO, MDY'; SET IntervalStyle = 'postgres'; SET extra_float_digits = 1; SET bytea_output = 'hex'`);
});

after(async () => {
  await client?.end();
  await cluster?.stop();
});

function pick<T>(random: () => number, items: readonly T[]): T {
  return items[intBetween(random, 0, items.length - 1)];
}

function pad(n: number, width: number): string {
  return String(n).padStart(width, '0');
}

/** Adds five NULLs and re-uses about a tenth of the values, so every type has ties. */
function withTies(random: () => number, values: (string | null)[]): (string | null)[] {
  const out = [...values, null, null, null, null, null];
  const repeats = Math.ceil(values.length / 10);
  for (let i = 0; i < repeats; i++) out.push(pick(random, values));
  return out;
}

const ORDERS = [
  { sql: 'ASC', descending: false, nullsFirst: undefined },
  { sql: 'DESC', descending: true, nullsFirst: undefined },
  { sql: 'ASC NULLS FIRST', descending: false, nullsFirst: true },
  { sql: 'DESC NULLS LAST', descending: true, nullsFirst: false },
] as const;

/** A value in PostgreSQL's order with its run: consecutive rows share a run exactly when PostgreSQL says `=`. */
interface Ranked {
  readonly text: string | null;
  readonly bytes: Buffer | null;
  readonly run: number;
}

/** The values cast by `expr` (SQL over the text `s`), in PostgreSQL's ORDER BY v <order>, with their runs. */
async function rankedByPostgres(expr: string, values: readonly (string | null)[], order: string): Promise<Ranked[]> {
  const rows = await rowsOf(
    client,
    `SELECT v, eq FROM (
       SELECT v, lag(v) OVER w = v AS eq, row_number() OVER w AS n
         FROM (SELECT ${expr} AS v FROM unnest($1::text[]) AS u(s)) AS t
       WINDOW w AS (ORDER BY v ${order})) AS q
     ORDER BY n`,
    [values],
  );
  let run = 0;
  return rows.map(([text, eq], i) => {
    if (i > 0 && eq !== 't' && !(text === null && rows[i - 1][0] === null)) run++;
    return { text, bytes: text === null ? null : Buffer.from(text, 'utf8'), run };
  });
}

function describe(value: Ranked): string {
  return value.text === null ? 'NULL' : JSON.stringify(value.text);
}

/** Every pair must compare as their runs do; returns how many did not, with a few examples. */
function pairMismatches(ranked: readonly Ranked[], compare: (a: Buffer | null, b: Buffer | null) => number): string[] {
  const examples: string[] = [];
  let count = 0;
  for (let i = 0; i < ranked.length; i++) {
    for (let j = 0; j < ranked.length; j++) {
      const expected = Math.sign(ranked[i].run - ranked[j].run);
      const actual = Math.sign(compare(ranked[i].bytes, ranked[j].bytes));
      if (actual !== expected) {
        count++;
        if (examples.length < 8) examples.push(`${describe(ranked[i])} vs ${describe(ranked[j])}: ours ${actual}, postgres ${expected}`);
      }
    }
  }
  return count === 0 ? [] : [`${count} pairs disagree`, ...examples];
}

function shuffled<T>(items: readonly T[], random: () => number): T[] {
  const out = [...items];
  for (let i = out.length - 1; i > 0; i--) {
    const j = intBetween(random, 0, i);
    [out[i], out[j]] = [out[j], out[i]];
  }
  return out;
}

/** Group keys must be equal exactly within a run of non-NULL values. */
function groupKeyMismatches(ranked: readonly Ranked[], keyOf: (value: Buffer) => string): string[] {
  const runOfKey = new Map<string, Ranked>();
  const keyOfRun = new Map<number, { key: string; value: Ranked }>();
  const problems: string[] = [];
  for (const value of ranked) {
    if (value.bytes === null) continue;
    const key = keyOf(value.bytes);
    const seen = runOfKey.get(key);
    if (seen && seen.run !== value.run) problems.push(`${describe(seen)} and ${describe(value)} differ but share key ${JSON.stringify(key)}`);
    runOfKey.set(key, value);
    const sameRun = keyOfRun.get(value.run);
    if (sameRun && sameRun.key !== key) problems.push(`${describe(sameRun.value)} = ${describe(value)} but keys ${JSON.stringify(sameRun.key)} and ${JSON.stringify(key)}`);
    keyOfRun.set(value.run, { key, value });
  }
  return problems.slice(0, 8);
}

interface OrderCase {
  readonly oid: number;
  /** SQL making the type's value from the text `s`. */
  readonly expr: string;
  readonly values: (string | null)[];
  /** Session settings for the case, reset afterwards. */
  readonly settings?: Readonly<Record<string, string>>;
}

/** Checks a type's comparator, sort-key comparator and group key against PostgreSQL in every ORDER BY form. */
async function checkOrder(name: string, c: OrderCase, seed: number): Promise<void> {
  const random = prng(seed);
  const settings = Object.entries(c.settings ?? {});
  for (const [setting, value] of settings) await client.query(`SET ${setting} = '${value}'`);
  try {
    const values = withTies(random, c.values);
    assert.ok(values.length >= 40, `${name}: enough values`);
    for (const order of ORDERS) {
      const ranked = await rankedByPostgres(c.expr, values, order.sql);
      assert.equal(ranked.length, values.length);
      const compare = sortKeyComparator(c.oid, order.descending, order.nullsFirst);
      assert.ok(compare, `${name} has a comparator`);
      assert.deepEqual(pairMismatches(ranked, compare), [], `${name} ORDER BY v ${order.sql}`);
      const sorted = shuffled(ranked, random).sort((a, b) => compare(a.bytes, b.bytes));
      const outOfOrder = sorted.findIndex((value, i) => i > 0 && value.run < sorted[i - 1].run);
      assert.equal(outOfOrder, -1, `${name} ORDER BY v ${order.sql}: sorted ${describe(sorted[outOfOrder] ?? sorted[0])} after ${describe(sorted[outOfOrder - 1] ?? sorted[0])}`);
      if (order.sql === 'ASC') {
        const keyOf = groupKeyNormalizerForType(c.oid);
        assert.ok(keyOf, `${name} has a group key`);
        assert.deepEqual(groupKeyMismatches(ranked, keyOf), [], `${name} group keys`);
      }
    }
  } finally {
    for (const [setting] of settings) await client.query(`RESET ${setting}`);
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Value generators. Each gives values as literals PostgreSQL parses; PostgreSQL's output is what gets compared.

function integers(random: () => number, min: bigint, max: bigint, edges: readonly bigint[]): string[] {
  const values = edges.map(String);
  const span = max - min + 1n;
  for (let i = 0; i < 250; i++) {
    // Mostly short numbers, so equal lengths and different signs are common; some across the whole range.
    const wide = random() < 0.4;
    const raw = BigInt(Math.floor(random() * 2 ** 32)) * 2n ** 32n + BigInt(Math.floor(random() * 2 ** 32));
    const value = wide ? min + (raw % span) : BigInt(intBetween(random, -1000, 1000)) * BigInt(pick(random, [1, 7, 100003]));
    if (value >= min && value <= max) values.push(String(value));
  }
  return values;
}

const TEXT_ALPHABET = ['a', 'b', 'B', ' ', '~', '\x01', '\t', '\x7f', 'é', 'ÿ', 'Ā', '中', '\ue000', '\ufffd', '😀', '\u{10ffff}', '𐍈'];

function texts(random: () => number): string[] {
  const values = ['', ' ', 'a', 'a ', 'a\x01', 'ab', 'b', '\ufffd', '😀', '\ue000', 'z'.repeat(100)];
  for (let i = 0; i < 280; i++) {
    let s = '';
    for (let n = intBetween(random, 0, 6); n > 0; n--) s += pick(random, TEXT_ALPHABET);
    values.push(s);
  }
  // Long values sharing a prefix across the 16- and 32-byte marks where the comparison leaves JS for native code.
  for (let i = 0; i < 60; i++) values.push('é'.repeat(pick(random, [7, 8, 15, 16, 17, 20])) + pick(random, TEXT_ALPHABET) + pick(random, ['', 'a', '😀']));
  return values;
}

function floats(random: () => number, single: boolean): string[] {
  const values = ['NaN', 'Infinity', '-Infinity', '0', '-0', '1', '-1', '0.1', '0.2', '0.3', '1e15', '1e16', '1e17', '1e21', '-1e-5', '0.0001'];
  if (single) values.push('3.4028235e38', '-3.4028235e38', '1.4e-45', '-1.4e-45', '1.1754944e-38', '16777216', '16777217');
  else values.push('1.7976931348623157e308', '-1.7976931348623157e308', '5e-324', '-5e-324', '2.2250738585072014e-308', '0.30000000000000004', '9007199254740993');
  const view = new DataView(new ArrayBuffer(8));
  const next = (value: number, step: number): number => {
    if (single) {
      view.setFloat32(0, value);
      view.setInt32(0, view.getInt32(0) + step);
      return view.getFloat32(0);
    }
    view.setFloat64(0, value);
    view.setBigInt64(0, view.getBigInt64(0) + BigInt(step));
    return view.getFloat64(0);
  };
  for (let i = 0; i < 250; i++) {
    let value: number;
    const kind = random();
    if (kind < 0.4) {
      // Any bit pattern: subnormals, huge and tiny exponents, NaNs.
      if (single) view.setUint32(0, Math.floor(random() * 2 ** 32));
      else view.setBigUint64(0, BigInt(Math.floor(random() * 2 ** 32)) * 2n ** 32n + BigInt(Math.floor(random() * 2 ** 32)));
      value = single ? view.getFloat32(0) : view.getFloat64(0);
    } else if (kind < 0.7) {
      value = intBetween(random, -2000, 2000) / pick(random, [1, 10, 1000, 3]);
    } else {
      // Neighbours one unit in the last place apart.
      value = next(intBetween(random, -50, 50) / 7, intBetween(random, -2, 2));
    }
    if (single) value = Math.fround(value);
    values.push(String(value));
  }
  return values;
}

function numerics(random: () => number): string[] {
  const values = ['NaN', 'Infinity', '-Infinity', '0', '0.0', '-0.000', '1', '1.0', '1.00', '-1', '-1.0', '0.1', '0.10', '0.01', '-0.1', '10', '100', '99.99', '100.00'];
  values.push('9'.repeat(600), `-${'9'.repeat(600)}`, `1${'0'.repeat(600)}`, `0.${'0'.repeat(300)}1`, `-0.${'0'.repeat(300)}1`);
  values.push(`1${'0'.repeat(30)}1`, `1${'0'.repeat(31)}`, `1${'0'.repeat(30)}.${'0'.repeat(20)}1`, '1e10', '123456789012345678901234567890.123456789');
  for (let i = 0; i < 250; i++) {
    const sign = random() < 0.4 ? '-' : '';
    const whole = digits(random, pick(random, [0, 1, 1, 2, 3, 5, 17, 40]));
    const fraction = digits(random, pick(random, [0, 0, 1, 2, 4, 20])) + '0'.repeat(pick(random, [0, 0, 2]));
    values.push(`${sign}${whole || '0'}${fraction ? `.${fraction}` : ''}`);
  }
  return values;
}

function times(random: () => number): string[] {
  const values = ['00:00:00', '24:00:00', '23:59:59.999999', '12:00:00', '12:00:00.5', '12:00:00.000001', '12:00:00.25'];
  for (let i = 0; i < 250; i++) {
    const fraction = digits(random, pick(random, [0, 0, 1, 3, 6]));
    values.push(`${pad(intBetween(random, 0, 23), 2)}:${pad(intBetween(random, 0, 59), 2)}:${pad(pick(random, [0, 30, intBetween(random, 0, 59)]), 2)}${fraction ? `.${fraction}` : ''}`);
  }
  return values;
}

/** Day offsets from 2000-01-01, from 4714-11-24 BC (day -2451545) up to `maxDays`, crowded around 1 BC/AD 1. */
function dayOffset(random: () => number, maxDays: number): number {
  const kind = random();
  if (kind < 0.3) return intBetween(random, -2451545, maxDays);
  if (kind < 0.6) return intBetween(random, -2451545, 100000);
  return intBetween(random, -730500, -729700);
}

function timeOfDay(random: () => number): string {
  const fraction = digits(random, pick(random, [0, 0, 1, 6]));
  return `${pad(intBetween(random, 0, 23), 2)}:${pad(intBetween(random, 0, 59), 2)}:${pad(intBetween(random, 0, 59), 2)}${fraction ? `.${fraction}` : ''}`;
}

/** `days|time` pairs (see TIMESTAMP_SQL) and literals with BC dates, the range's ends and infinities. */
function timestamps(random: () => number): string[] {
  const values = ['infinity', '-infinity', '294276-12-31 23:59:59.999999', '4714-11-24 00:00:00 BC', '0001-01-01 00:00:00 BC', '0001-12-31 23:59:59.999999 BC'];
  values.push('0001-01-01 00:00:00', '1999-12-31 23:59:59.999999', '2000-01-01 00:00:00', '2000-01-01 00:00:00.000001', '10000-01-01 00:00:00', '9999-12-31 23:59:59.999999');
  // One second, several fractions: only the fractions order these.
  for (const fraction of ['', '.5', '.25', '.05', '.123456', '.9', '.000999']) values.push(`2000-01-01 00:00:01${fraction}`, `0001-01-01 00:00:01${fraction} BC`);
  for (let i = 0; i < 250; i++) values.push(`${dayOffset(random, 106000000)}|${timeOfDay(random)}`);
  return values;
}

const TIMESTAMP_SQL = `(CASE WHEN s LIKE '%|%' THEN (date '2000-01-01' + split_part(s, '|', 1)::int) + split_part(s, '|', 2)::time ELSE s::timestamp END)`;

function timestamptzs(random: () => number): string[] {
  const values = timestamps(random).filter((s) => !s.startsWith('294276') && !s.startsWith('4714'));
  values.push('4713-01-02 00:00:00 BC', '1883-11-18 16:59:59', '1883-11-18 17:00:00', '1850-06-01 12:00:00.5');
  // Both ends of DST in New York (UTC instants), minute by minute, with the repeated local hour.
  for (let minute = 0; minute < 180; minute += 7) {
    values.push(`2021-11-07 ${pad(4 + Math.floor(minute / 60), 2)}:${pad(minute % 60, 2)}:00`);
    values.push(`2021-03-14 ${pad(5 + Math.floor(minute / 60), 2)}:${pad(minute % 60, 2)}:00.123`);
  }
  return values;
}

function intervals(random: () => number): string[] {
  const values = ['0', '00:00:00', '1 mon', '30 days', '720:00:00', '1 day', '24:00:00', '-1 days +24:00:00', '1 year', '12 mons', '360 days'];
  values.push('1 mon -00:00:00.000001', '30 days 00:00:00.000001', '-00:00:01', '-00:00:00.5', '1.5 years', '1 week', '-1 day', '-24:00:00.000001');
  // Time parts of both signs under a day part, a fraction apart: 1 day -0.5 s is 23:59:59.5.
  values.push('1 day -00:00:00.5', '23:59:59.5', '23:59:59.7', '1 day -00:00:00.3', '23:59:59.25', '1 day -00:00:00.75', '00:00:01.5', '00:00:01.25', '00:00:01.05', '-00:00:01.5', '-00:00:01.25');
  // The fields' ends; the smallest time, -2^63 µs, is not accepted as input, so INTERVAL_SQL subtracts 1 µs ('less ').
  values.push('178956970 years 7 mons', '-178956970 years -8 mons', '2147483647 days', '-2147483648 days', '2562047788:00:54.775807', 'less -2562047788:00:54.775807');
  values.push('178956970 years 7 mons 2147483647 days 2562047788:00:54.775807', 'less -178956970 years -8 mons -2147483648 days -2562047788:00:54.775807');
  values.push('178956970 years 7 mons 2147483647 days 2562047788:00:54.775806', '-178956970 years -8 mons -2147483648 days -2562047788:00:54.775807');
  for (let i = 0; i < 250; i++) {
    const parts: string[] = [];
    const sign = (): string => (random() < 0.4 ? '-' : '');
    if (random() < 0.3) parts.push(`${sign()}${intBetween(random, 0, pick(random, [2, 3000]))} years`);
    if (random() < 0.5) parts.push(`${sign()}${intBetween(random, 0, pick(random, [11, 40]))} mons`);
    if (random() < 0.5) parts.push(`${sign()}${intBetween(random, 0, pick(random, [31, 400]))} days`);
    if (random() < 0.6 || parts.length === 0) {
      const fraction = digits(random, pick(random, [0, 0, 1, 6]));
      parts.push(`${sign()}${intBetween(random, 0, pick(random, [23, 800]))}:${pad(intBetween(random, 0, 59), 2)}:${pad(intBetween(random, 0, 59), 2)}${fraction ? `.${fraction}` : ''}`);
    }
    values.push(parts.join(' '));
  }
  return values;
}

const INTERVAL_SQL = `(CASE WHEN s LIKE 'less %' THEN substr(s, 6)::interval - interval '00:00:00.000001' ELSE s::interval END)`;

function hexBytes(random: () => number): string[] {
  const values = ['\\x', '\\x00', '\\x0000', '\\x01', '\\xff', '\\xff00', '\\x5c', '\\x5c78', '\\x7f', '\\x80'];
  for (let i = 0; i < 250; i++) {
    let hex = '';
    for (let n = intBetween(random, 0, 5); n > 0; n--) hex += pick(random, ['00', '01', '20', '41', '5c', '78', '7f', '80', 'fe', 'ff']);
    values.push(`\\x${random() < 0.2 ? hex.toUpperCase() : hex}`);
  }
  return values;
}

function uuids(random: () => number): string[] {
  const values = ['00000000-0000-0000-0000-000000000000', 'ffffffff-ffff-ffff-ffff-ffffffffffff', 'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11'];
  for (let i = 0; i < 250; i++) {
    let hex = '';
    for (let n = 0; n < 32; n++) hex += n < 28 ? pick(random, ['0', 'a', 'f']) : pick(random, ['0', '9', 'a', 'f']);
    values.push(`${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`);
  }
  return values;
}

// ---------------------------------------------------------------------------------------------------------------

test('integers order by sign, length and digits, exactly beyond 2^53', async () => {
  const int8Edges = [-(2n ** 63n), 2n ** 63n - 1n, 2n ** 53n, 2n ** 53n + 1n, 2n ** 53n - 1n, -(2n ** 53n) - 1n, -(2n ** 53n), 0n, -1n, 1n, 9n, 10n, -9n, -10n];
  await checkOrder('int2', { oid: 21, expr: 's::int2', values: integers(prng(1), -32768n, 32767n, [-32768n, 32767n, 0n, -1n, 1n]) }, 1);
  await checkOrder('int4', { oid: 23, expr: 's::int4', values: integers(prng(2), -(2n ** 31n), 2n ** 31n - 1n, [-(2n ** 31n), 2n ** 31n - 1n, 0n, 99n, 100n, -99n, -100n]) }, 2);
  await checkOrder('int8', { oid: 20, expr: 's::int8', values: integers(prng(3), -(2n ** 63n), 2n ** 63n - 1n, int8Edges) }, 3);
  await checkOrder('oid', { oid: 26, expr: 's::oid', values: integers(prng(4), 0n, 2n ** 32n - 1n, [0n, 2n ** 31n - 1n, 2n ** 31n, 2n ** 32n - 1n]) }, 4);
});

test('floats: NaN above Infinity, -0 equal to 0, neighbours one ulp apart', async () => {
  await checkOrder('float8', { oid: 701, expr: 's::float8', values: floats(prng(5), false) }, 5);
  await checkOrder('float4', { oid: 700, expr: 's::float4', values: floats(prng(6), true) }, 6);
});

test('numeric: exact digit comparison at any length, scale ignored, NaN and infinities', async () => {
  await checkOrder('numeric', { oid: 1700, expr: 's::numeric', values: numerics(prng(7)) }, 7);
});

test('text, varchar and name compare as UTF-8 bytes (collation C), not as JS strings', async () => {
  await checkOrder('text', { oid: 25, expr: 's::text', values: texts(prng(8)) }, 8);
  await checkOrder('varchar', { oid: 1043, expr: 's::varchar', values: texts(prng(9)) }, 9);
  await checkOrder('name', { oid: 19, expr: 's::name', values: [...texts(prng(10)), 'é'.repeat(40), `${'x'.repeat(62)}é`] }, 10);
  // U+E000 is above every astral character in UTF-8 but below them in UTF-16.
  assert.ok('\ue000' > '😀');
  assert.ok(comparatorForType(25)!(Buffer.from('\ue000'), Buffer.from('😀')) < 0);
});

test('bpchar ignores trailing spaces only', async () => {
  const random = prng(11);
  const values = texts(random).map((s) => s + ' '.repeat(pick(random, [0, 0, 1, 3])));
  values.push('a', 'a ', 'a   ', 'a\t', 'a\x01', '', ' ', '  ');
  await checkOrder('bpchar', { oid: 1042, expr: 's::bpchar', values }, 11);
  await checkOrder('char(4)', { oid: 1042, expr: 's::char(4)', values: values.filter((s) => s.length <= 4) }, 12);
});

test('bool, "char" (unsigned bytes, octal escapes), uuid and bytea', async () => {
  await checkOrder('bool', { oid: 16, expr: 's::bool', values: ['t', 'f', 'true', 'false', 'yes', 'no', 'on', 'off', ...Array.from({ length: 40 }, (_, i) => (i % 3 ? 't' : 'f'))] }, 13);
  const chars = Array.from({ length: 256 }, (_, i) => String(i - 128));
  await checkOrder('"char"', { oid: 18, expr: '(s::int)::"char"', values: chars }, 14);
  await checkOrder('uuid', { oid: 2950, expr: 's::uuid', values: uuids(prng(15)) }, 15);
  await checkOrder('bytea', { oid: 17, expr: 's::bytea', values: hexBytes(prng(16)) }, 16);
  await checkOrder('bytea (escape output)', { oid: 17, expr: 's::bytea', values: hexBytes(prng(17)), settings: { bytea_output: 'escape' } }, 17);
});

test('date, time and timestamp, with BC years, five-digit years and infinities', async () => {
  const random = prng(18);
  const days = Array.from({ length: 250 }, () => String(dayOffset(random, 2145031949)));
  days.push('infinity', '-infinity', '5874897-12-31', '4714-11-24 BC', '0001-01-01 BC', '0001-12-31 BC', '0001-01-01', '2000-01-01', '10000-01-01', '9999-12-31');
  await checkOrder('date', { oid: 1082, expr: `(CASE WHEN s ~ '^-?[0-9]+$' THEN date '2000-01-01' + s::int ELSE s::date END)`, values: days }, 18);
  await checkOrder('time', { oid: 1083, expr: 's::time', values: times(prng(19)) }, 19);
  await checkOrder('timestamp', { oid: 1114, expr: TIMESTAMP_SQL, values: timestamps(prng(20)) }, 20);
});

const ZONES = ['America/New_York', 'Asia/Kolkata', 'Asia/Kathmandu', 'America/St_Johns', 'Australia/Lord_Howe', 'UTC'];

test('timestamptz compares instants, whatever the offset it prints', async () => {
  const values = timestamptzs(prng(21));
  const expr = `(${TIMESTAMP_SQL} AT TIME ZONE 'UTC')`;
  const perZone: Ranked[][] = [];
  for (const [i, zone] of ZONES.entries()) {
    await checkOrder(`timestamptz in ${zone}`, { oid: 1184, expr, values, settings: { TimeZone: zone } }, 22 + i);
    await client.query(`SET TimeZone = '${zone}'`);
    perZone.push(await rankedByPostgres(expr, values, 'ASC'));
    await client.query('RESET TimeZone');
  }
  // The same instants printed in two zones: row i is the same instant everywhere, so runs carry across.
  const compare = sortKeyComparator(1184, false, undefined)!;
  const keyOf = groupKeyNormalizerForType(1184)!;
  const newYork = perZone[0];
  assert.ok(newYork.some((v) => v.text?.endsWith('-04:56:02')), 'local mean time offsets with seconds are covered');
  for (const other of perZone.slice(1)) {
    for (let i = 0; i < newYork.length; i++) {
      assert.equal(other[i].run, newYork[i].run);
      if (newYork[i].bytes) assert.equal(keyOf(other[i].bytes!), keyOf(newYork[i].bytes!), `${describe(other[i])} is ${describe(newYork[i])}`);
    }
    assert.deepEqual(pairMismatches([...newYork, ...other], compare), []);
  }
});

test('interval compares total spans: a month is 30 days, a day 24 hours, exact at the extremes', async () => {
  await checkOrder('interval', { oid: 1186, expr: INTERVAL_SQL, values: intervals(prng(30)) }, 30);
});

test('comparator and group key agree with = on chosen pairs', async () => {
  const pairs: [string, number, string, string][] = [
    ['numeric', 1700, '1.0', '1.00'],
    ['numeric', 1700, '0', '-0.000'],
    ['numeric', 1700, 'NaN', 'NaN'],
    ['numeric', 1700, '1', '1.0000000000000000000001'],
    ['numeric', 1700, 'Infinity', 'NaN'],
    ['float8', 701, '-0', '0'],
    ['float8', 701, 'NaN', 'NaN'],
    ['float8', 701, '1e300', '1e+300'],
    ['float8', 701, '0.1', '0.1000000000000000055511151231257827'],
    ['float4', 700, '-0', '0'],
    ['float4', 700, '0.1', '0.10000000149011612'],
    ['bpchar', 1042, 'a  ', 'a'],
    ['bpchar', 1042, 'a\t', 'a'],
    ['text', 25, 'a ', 'a'],
    ['varchar', 1043, 'a ', 'a'],
    ['interval', 1186, '1 mon', '30 days'],
    ['interval', 1186, '1 day', '24:00:00'],
    ['interval', 1186, '1 year', '360 days'],
    ['interval', 1186, '-1 days +24:00:00', '0'],
    ['interval', 1186, '1 mon', '30 days 00:00:00.000001'],
    ['timestamptz', 1184, '2021-11-07 01:30:00-04', '2021-11-07 00:30:00-05'],
    ['timestamptz', 1184, '2021-11-07 01:30:00-04', '2021-11-07 01:30:00-05'],
    ['"char"', 18, 'a', 'a'],
  ];
  await client.query(`SET TimeZone = 'America/New_York'`);
  try {
    for (const [type, oid, a, b] of pairs) {
      const [[left, right, equal]] = await rowsOf(client, `SELECT $1::${type}, $2::${type}, $1::${type} = $2::${type}`, [a, b]);
      const compare = comparatorForType(oid)!;
      const keyOf = groupKeyNormalizerForType(oid)!;
      const x = Buffer.from(left!);
      const y = Buffer.from(right!);
      const message = `${type} ${JSON.stringify(left)} vs ${JSON.stringify(right)}`;
      assert.equal(compare(x, y) === 0, equal === 't', message);
      assert.ok(Math.sign(compare(x, y)) === -Math.sign(compare(y, x)), message);
      assert.equal(keyOf(x) === keyOf(y), equal === 't', message);
    }
  } finally {
    await client.query('RESET TimeZone');
  }
});

test('a bytea reads the same in hex and escape output', async () => {
  const values = hexBytes(prng(40));
  const hex = await rowsOf(client, 'SELECT s::bytea FROM unnest($1::text[]) WITH ORDINALITY AS u(s, n) ORDER BY n', [values]);
  await client.query(`SET bytea_output = 'escape'`);
  const escape = await rowsOf(client, 'SELECT s::bytea FROM unnest($1::text[]) WITH ORDINALITY AS u(s, n) ORDER BY n', [values]);
  await client.query(`SET bytea_output = 'hex'`);
  const compare = comparatorForType(17)!;
  const keyOf = groupKeyNormalizerForType(17)!;
  hex.forEach(([h], i) => {
    const x = Buffer.from(h!);
    const y = Buffer.from(escape[i][0]!);
    assert.equal(compare(x, y), 0, `${h} is ${escape[i][0]}`);
    assert.equal(keyOf(x), keyOf(y));
  });
});

test('types the proxy cannot order give null', () => {
  // timetz, json, jsonb, point, int4[], tsvector, money, inet, a user type.
  for (const oid of [0, 705, 1266, 114, 3802, 600, 1007, 3614, 790, 869, 16384]) {
    assert.equal(comparatorForType(oid), null, `oid ${oid}`);
    assert.equal(sortKeyComparator(oid, false, undefined), null, `oid ${oid}`);
    assert.equal(groupKeyNormalizerForType(oid), null, `oid ${oid}`);
  }
});

test('N.B. text in another DateStyle or IntervalStyle is refused, never misordered', async () => {
  await client.query(`SET DateStyle = 'SQL, DMY'; SET IntervalStyle = 'iso_8601'`);
  try {
    const [[date, timestamp, timestamptz, interval]] = await rowsOf(client, `SELECT date '2020-01-02', timestamp '2020-01-02 03:04:05', timestamptz '2020-01-02 03:04:05+00', interval '1 day 2 hours'`);
    const cases: [number, string][] = [[1082, date!], [1114, timestamp!], [1184, timestamptz!], [1186, interval!]];
    for (const [oid, text] of cases) {
      assert.throws(() => comparatorForType(oid)!(Buffer.from(text), Buffer.from(text)), PgError, `${oid} ${text}`);
    }
  } finally {
    await client.query(`SET DateStyle = 'ISO, MDY'; SET IntervalStyle = 'postgres'`);
  }
  for (const text of ['@ 1 day 2 hours', 'P1DT2H', '1 day 2 hours']) {
    assert.throws(() => comparatorForType(1186)!(Buffer.from(text), Buffer.from('1 day')), PgError, text);
  }
});
