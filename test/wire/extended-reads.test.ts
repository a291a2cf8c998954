// Multi-node reads through the extended protocol as drivers send them: binary parameters (pgx, Npgsql), binary
// results per column, Execute with a row limit (JDBC's fetch size, cursors in parts), and BEGIN in the same batch
// as the transaction's first read (JDBC with autocommit off). The oracle is a reference PostgreSQL holding all
// rows: the same messages go to both, and every reply must match byte for byte (table OIDs aside).

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { serialize } from 'pg-protocol';
import { decodeRowDescription, encodeRowDescription } from '../../src/protocol/row-description';
import { dataRowValues, errorFields, RawClient, type ReplyMessage } from '../support/raw-client';
import { startTestCluster, type TestCluster } from '../support/test-cluster';

let cluster: TestCluster;

const tableSql = `create table typed (
  id int primary key, k text, n numeric(10,3), f4 real, f8 float8, d date, ts timestamp, tz timestamptz,
  iv interval, b bytea, u uuid, j jsonb, arr int[], flag bool, big bigint, small smallint)`;
const rowsSql = `insert into typed select g, 'k' || (g % 5), g * 1.125 - 40, g / 7.0, g / 3.0, date '2024-01-01' + g,
  timestamp '2024-01-01 10:00' + g * interval '37 minutes', timestamptz '2024-03-01 00:00+00' + g * interval '5 hours',
  g * interval '90 seconds', decode(md5(g::text), 'hex'), md5(g::text)::uuid, jsonb_build_object('g', g, 'odd', g % 2 = 1),
  array[g, g * 2], g % 3 = 0, g::bigint * 100000000000, (g % 300)::smallint
  from generate_series(1, 400) g`;

before(async () => {
  cluster = await startTestCluster({ nodes: 3, reference: true });
  const proxy = await cluster.connect();
  await proxy.query(tableSql);
  await proxy.query("select parapool.distribute_table('typed', 'id')");
  await proxy.query(rowsSql);
  await proxy.query("insert into typed (id, k) values (1000, null)");
  await proxy.end();
  const reference = await cluster.connectDirect('reference');
  await reference.query(tableSql);
  await reference.query(rowsSql);
  await reference.query("insert into typed (id, k) values (1000, null)");
  await reference.end();
});

after(async () => {
  await cluster?.stop();
});

/** Replies up to ReadyForQuery, with RowDescription table OIDs zeroed (they differ between servers). */
async function exchange(client: RawClient, frames: Buffer[]): Promise<ReplyMessage[]> {
  client.send(frames);
  const replies = await client.readUntil('Z', 30_000);
  return replies.map((m) => (m.type === 'T' ? { type: 'T', payload: encodeRowDescription(decodeRowDescription(m.payload).map((f) => ({ ...f, tableOid: 0 }))).subarray(5) } : m));
}

/** Sends the same batches to parapool and to the reference, in order, asserting each reply matches. */
async function sameReplies(batches: Buffer[][], what: string): Promise<ReplyMessage[][]> {
  const proxy = await RawClient.ready(cluster.proxy.port);
  const reference = await RawClient.ready(cluster.reference!.port);
  const all: ReplyMessage[][] = [];
  try {
    for (const [i, batch] of batches.entries()) {
      const expected = await exchange(reference, batch);
      const actual = await exchange(proxy, batch);
      const errors = [...actual, ...expected].filter((m) => m.type === 'E').map((m) => errorFields(m).M).join('; ');
      assert.deepEqual(actual.map((m) => m.type).join(''), expected.map((m) => m.type).join(''), `${what}, batch ${i}: message types ${errors}`);
      actual.forEach((message, m) => {
        if (message.type === 'E') assert.equal(errorFields(message).C, errorFields(expected[m]).C, `${what}, batch ${i}: SQLSTATE`);
        else assert.deepEqual(message.payload, expected[m].payload, `${what}, batch ${i}, message ${m} (${message.type})`);
      });
      all.push(actual);
    }
  } finally {
    proxy.end();
    reference.end();
  }
  return all;
}

/** A Bind with per-parameter and per-column format codes, which pg-protocol's serializer does not offer. */
function bind(options: { portal?: string; statement?: string; parameters?: { value: Buffer | null; format: number }[]; resultFormats?: number[] }): Buffer {
  const parameters = options.parameters ?? [];
  const parts: Buffer[] = [Buffer.from(`${options.portal ?? ''}\0${options.statement ?? ''}\0`, 'utf8')];
  const int16 = (n: number) => Buffer.from([(n >> 8) & 0xff, n & 0xff]);
  const int32 = (n: number) => {
    const b = Buffer.alloc(4);
    b.writeInt32BE(n);
    return b;
  };
  parts.push(int16(parameters.length), ...parameters.map((p) => int16(p.format)), int16(parameters.length));
  for (const p of parameters) parts.push(p.value === null ? int32(-1) : Buffer.concat([int32(p.value.length), p.value]));
  const formats = options.resultFormats ?? [];
  parts.push(int16(formats.length), ...formats.map(int16));
  const body = Buffer.concat(parts);
  return Buffer.concat([Buffer.from('B'), int32(body.length + 4), body]);
}

const int4 = (n: number) => {
  const b = Buffer.alloc(4);
  b.writeInt32BE(n);
  return b;
};
const int8 = (n: bigint) => {
  const b = Buffer.alloc(8);
  b.writeBigInt64BE(n);
  return b;
};

const everyColumn = 'id, k, n, f4, f8, d, ts, tz, iv, b, u, j, arr, flag, big, small';

test('binary results: every column type in binary, as the reference encodes it, merged and aggregated', async () => {
  const queries = [
    `select ${everyColumn} from typed where id % 7 = 1 order by id`,
    'select k, count(*), sum(n), avg(n), min(f8), max(f4), sum(big), sum(small), bool_and(flag), min(d), max(ts), max(tz), sum(iv), array_agg(id order by id) filter (where id < 40) from typed group by k order by k nulls first',
    'select count(*), sum(n), avg(f8) from typed where id > 1000',
    "select n, -n, 0::numeric(5,2), 'NaN'::numeric, 1e-20::numeric, 123456789012.5::numeric from typed where id in (1, 35, 36) order by id",
  ];
  for (const sql of queries) {
    await sameReplies([[serialize.parse({ text: sql }), bind({ resultFormats: [1] }), serialize.describe({ type: 'P' }), serialize.execute({}), serialize.sync()]], sql);
  }
  // Text and binary mixed, column by column.
  const sql = 'select id, k, n, tz, arr from typed where id < 30 order by id desc';
  await sameReplies([[serialize.parse({ text: sql }), bind({ resultFormats: [1, 0, 1, 0, 1] }), serialize.describe({ type: 'P' }), serialize.execute({}), serialize.sync()]], 'mixed formats');
});

test('binary parameters: read as the node reads them, for merged reads, routed reads and routed writes', async () => {
  await sameReplies([[
    serialize.parse({ name: 'by_id', text: 'select k, count(*), sum(n) from typed where id > $1 and big < $2 group by k order by k', types: [23, 20] }),
    bind({ statement: 'by_id', parameters: [{ value: int4(100), format: 1 }, { value: int8(30_000_000_000_000n), format: 1 }], resultFormats: [0] }),
    serialize.execute({}),
    serialize.sync(),
  ]], 'typed binary parameters');
  await sameReplies([[
    serialize.parse({ text: 'select id, u, ts from typed where id = $1 or id = $2 order by id' }),
    bind({ parameters: [{ value: int4(17), format: 1 }, { value: Buffer.from('23'), format: 0 }], resultFormats: [1] }),
    serialize.describe({ type: 'P' }),
    serialize.execute({}),
    serialize.sync(),
  ]], 'parameter types inferred by the node');
  // A pinned key in binary routes to its node; a binary key of an INSERT places the row.
  await sameReplies([[
    serialize.parse({ text: 'insert into typed (id, k) values ($1, $2)', types: [23, 25] }),
    bind({ parameters: [{ value: int4(5000), format: 1 }, { value: Buffer.from('binary'), format: 1 }] }),
    serialize.execute({}),
    serialize.parse({ text: 'select id, k from typed where id = $1' }),
    bind({ parameters: [{ value: int4(5000), format: 1 }] }),
    serialize.execute({}),
    serialize.sync(),
  ]], 'routed binary key');
  const placed = await cluster.onEachNode('select count(*) from typed where id = 5000');
  assert.equal(placed.filter((rows) => rows[0][0] === '1').length, 1, 'the row is on exactly one node');
  const proxy = await cluster.connect();
  await proxy.query('delete from typed where id = 5000');
  await proxy.end();
  const reference = await cluster.connectDirect('reference');
  await reference.query('delete from typed where id = 5000');
  await reference.end();
});

test('Execute with a row limit: rows in parts with PortalSuspended, in and out of transaction blocks', async () => {
  const sql = `select ${everyColumn} from typed where id < 60 order by id`;
  await sameReplies([
    [serialize.query('begin')],
    [serialize.parse({ name: 'q', text: sql }), bind({ portal: 'c', statement: 'q', resultFormats: [1] }), serialize.describe({ type: 'P', name: 'c' }), serialize.execute({ portal: 'c', rows: 25 }), serialize.sync()],
    [serialize.execute({ portal: 'c', rows: 25 }), serialize.sync()],
    [serialize.describe({ type: 'P', name: 'c' }), serialize.execute({ portal: 'c', rows: 9 }), serialize.sync()],
    [serialize.execute({ portal: 'c', rows: 25 }), serialize.sync()],
    [serialize.execute({ portal: 'c', rows: 25 }), serialize.sync()],
    [serialize.close({ type: 'P', name: 'c' }), serialize.sync()],
    [serialize.query('select 1')],
    [serialize.query('commit')],
  ], 'fetch in parts in a transaction');
  await sameReplies([
    [serialize.parse({ text: 'select k, count(*) from typed group by k order by k' }), serialize.bind({}), serialize.execute({ rows: 2 }), serialize.execute({ rows: 2 }), serialize.execute({ rows: 2 }), serialize.sync()],
    [serialize.execute({ rows: 2 }), serialize.sync()],
  ], 'fetch in parts in one batch; the Sync outside a transaction ends the portal');
  await sameReplies([
    [serialize.query('begin')],
    [serialize.parse({ text: 'select id from typed order by id' }), bind({ portal: 'c' }), serialize.execute({ portal: 'c', rows: 3 }), serialize.sync()],
    [serialize.parse({ text: 'select id from typed order by id' }), bind({ portal: 'c' }), serialize.sync()],
    [serialize.query('rollback')],
    [serialize.execute({ portal: 'c', rows: 3 }), serialize.sync()],
  ], 'a live portal name cannot be bound again; a rollback ends the portal');
});

test('BEGIN in the same batch as the first read of the transaction, as JDBC sends it', async () => {
  const replies = await sameReplies([
    [
      serialize.parse({ text: 'BEGIN' }), serialize.bind({}), serialize.execute({}),
      serialize.parse({ text: 'select k, count(*), avg(n) from typed where id > $1 group by k order by k' }), serialize.bind({ values: ['10'] }), serialize.describe({ type: 'P' }), serialize.execute({}),
      serialize.sync(),
    ],
    [serialize.parse({ text: 'select count(*) from typed' }), serialize.bind({}), serialize.execute({}), serialize.sync()],
    [serialize.query('commit')],
  ], 'BEGIN then a read in one batch');
  assert.equal(replies[0].at(-1)!.payload.toString(), 'T', 'the batch leaves the transaction open');
});

test('a held result past intermediate_result_limit fails with 54000; the session goes on', async () => {
  await cluster.restartProxy((config) => {
    config.mergeMemoryLimit = 1024;
    config.intermediateResultLimit = 20_000;
  });
  try {
    const client = await RawClient.ready(cluster.proxy.port);
    const small = await exchange(client, [serialize.parse({ text: 'select id, k from typed where id < 200 order by id' }), serialize.bind({}), serialize.execute({ rows: 150 }), serialize.sync()]);
    const ids = small.filter((m) => m.type === 'D').map((m) => dataRowValues(m)[0]);
    assert.deepEqual(ids, Array.from({ length: 150 }, (_, i) => String(i + 1)), 'spilled past memory to a file and read back in order');
    assert.equal(small.at(-2)!.type, 's');
    const big = await exchange(client, [serialize.parse({ text: `select ${everyColumn} from typed order by id` }), serialize.bind({}), serialize.execute({ rows: 10 }), serialize.sync()]);
    const error = big.find((m) => m.type === 'E');
    assert.ok(error, 'an error');
    assert.equal(errorFields(error).C, '54000');
    const after = await exchange(client, [serialize.query('select count(*) from typed')]);
    assert.equal(after.find((m) => m.type === 'D') !== undefined, true);
    client.end();
  } finally {
    await cluster.restartProxy();
  }
});

test('a transaction that wrote on several nodes and ran a merged read commits (the node with its temporary tables decides)', async () => {
  const client = await cluster.connect();
  await client.query('begin');
  await client.query("insert into typed (id, k) values (6001, 'tx'), (6002, 'tx'), (6003, 'tx'), (6004, 'tx')");
  assert.deepEqual((await client.query({ text: "select k, count(*) from typed where k = 'tx' group by k", rowMode: 'array' })).rows, [['tx', '4']]);
  await client.query('commit');
  assert.deepEqual((await client.query({ text: "select count(*) from typed where k = 'tx'", rowMode: 'array' })).rows, [['4']]);
  assert.deepEqual(await cluster.onEachNode('select count(*) from pg_prepared_xacts'), cluster.nodes.map(() => [['0']]));
  await client.query("delete from typed where k = 'tx'");
  await client.end();
});

test('cursors through the extended protocol, as psycopg\'s server-side cursors use them', async () => {
  await sameReplies([
    [serialize.query('begin')],
    [serialize.parse({ text: 'declare c cursor for select id, k, n, tz from typed where id > $1 order by id' }), serialize.bind({ values: ['10'] }), serialize.describe({ type: 'P' }), serialize.execute({}), serialize.sync()],
    [serialize.parse({ name: 'f', text: 'fetch forward 5 from c' }), serialize.describe({ type: 'S', name: 'f' }), bind({ statement: 'f', resultFormats: [1] }), serialize.describe({ type: 'P' }), serialize.execute({}), serialize.sync()],
    [bind({ statement: 'f' }), serialize.describe({ type: 'P' }), serialize.execute({}), serialize.sync()],
    [serialize.parse({ text: 'move 300 in c' }), serialize.bind({}), serialize.execute({}), serialize.sync()],
    [bind({ statement: 'f' }), serialize.execute({}), serialize.sync()],
    [serialize.parse({ text: 'close c' }), serialize.bind({}), serialize.execute({}), serialize.sync()],
    [serialize.query('commit')],
  ], 'DECLARE, FETCH, MOVE, CLOSE');
});

test('a batch whose executions go to different nodes (JDBC executeBatch) answers as one server, commits together and rolls back together', async () => {
  const insert = 'insert into typed (id, k, n) values ($1, $2, $3)';
  const executions = (statement: string, ids: number[], values: (id: number) => string[], describe = false) =>
    ids.flatMap((id) => [serialize.bind({ statement, values: values(id) }), ...(describe ? [serialize.describe({ type: 'P' })] : []), serialize.execute({})]);
  const ids = (from: number, count: number) => Array.from({ length: count }, (_, i) => from + i);
  await sameReplies([
    // Autocommit: one implicit transaction over the nodes, committed at Sync.
    [serialize.parse({ name: 'ins', text: insert }), serialize.describe({ type: 'S', name: 'ins' }), ...executions('ins', ids(7001, 20), (id) => [String(id), 'batch', '1.5'], true), serialize.sync()],
    [serialize.query("select count(*), sum(id), sum(n) from typed where k = 'batch'")],
    // A duplicate key in the middle: the server answers up to the error, and no row of the batch stays.
    [...executions('ins', [7101, 7102, 7001, 7103, 7104], (id) => [String(id), 'batch', '2.5']), serialize.sync()],
    [serialize.query('select count(*) from typed where id between 7100 and 7200')],
    // In a transaction block, with RETURNING rows from every node, in the client's order.
    [serialize.query('begin')],
    [serialize.parse({ name: 'bump', text: 'update typed set n = n + $2 where id = $1 returning id, n' }), ...executions('bump', [7010, 7001, 7015, 7002, 7020], (id) => [String(id), '0.25'], true), serialize.sync()],
    [serialize.query('commit')],
    [serialize.query("select sum(n) from typed where k = 'batch'")],
    // An error inside a transaction block fails the transaction on every node.
    [serialize.query('begin')],
    [...executions('ins', [7201, 7202, 7005], (id) => [String(id), 'batch', '3.5']), serialize.sync()],
    [serialize.query('select 1')],
    [serialize.query('rollback')],
    [serialize.query("select count(*) from typed where k = 'batch'")],
    [serialize.close({ type: 'S', name: 'ins' }), serialize.close({ type: 'S', name: 'bump' }), serialize.sync()],
    [serialize.query("delete from typed where k = 'batch'")],
  ], 'batches over several nodes');
  assert.deepEqual(await cluster.onEachNode('select count(*) from pg_prepared_xacts'), cluster.nodes.map(() => [['0']]));
});
