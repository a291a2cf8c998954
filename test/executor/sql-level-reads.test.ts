// Reads over distributed tables that arrive wrapped in other SQL: views (expanded as PostgreSQL's rewriter would,
// and followed when another session changes them), cursors (DECLARE, FETCH, MOVE, CLOSE, WITH HOLD), SQL PREPARE
// and EXECUTE, COPY ... TO STDOUT, and the statements that would store or read one node's part as if it were the whole (CREATE
// TABLE AS, materialized views), which are refused. The reference is one PostgreSQL holding all the rows.

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import type { Client } from 'pg';
import { findPostgresProgram } from '../../src/cluster/postgres-install';
import { rowsOf, startTestCluster, type TestCluster } from '../support/test-cluster';

let cluster: TestCluster;

const setup = [
  'create table items (id int primary key, grp int, price numeric(10,2), label text)',
  "insert into items select g, g % 7, g * 1.5, 'item ' || g from generate_series(1, 500) g",
];

before(async () => {
  cluster = await startTestCluster({ nodes: 3, reference: true });
  const proxy = await cluster.connect();
  const reference = await cluster.connectDirect('reference');
  for (const sql of setup) {
    await proxy.query(sql);
    await reference.query(sql);
  }
  await proxy.query("select parapool.distribute_table('items', 'id')");
  await Promise.all([proxy.end(), reference.end()]);
});

after(async () => {
  await cluster?.stop();
});

/** Runs each statement on both and asserts the same rows (or the same SQLSTATE), in order. */
async function sameResults(proxy: Client, reference: Client, statements: string[]): Promise<void> {
  for (const sql of statements) {
    const [expected, actual] = await Promise.all([outcome(reference, sql), outcome(proxy, sql)]);
    assert.deepEqual(actual, expected, sql);
  }
}

async function outcome(client: Client, sql: string): Promise<unknown> {
  try {
    const result = await client.query({ text: sql, rowMode: 'array' });
    return { command: result.command, rows: result.rows };
  } catch (error) {
    return { code: (error as { code?: string }).code };
  }
}

test('views over distributed tables read all nodes, and follow view changes made by other sessions', async () => {
  const proxy = await cluster.connect();
  const reference = await cluster.connectDirect('reference');
  const other = await cluster.connect();
  // `proxy` is connected before the views exist: it must pick them up.
  const ddl = [
    'create view cheap as select id, grp, price from items where price < 100',
    'create view per_group (grp, n, total) as select grp, count(*), sum(price) from items group by grp',
    'create view cheap_labels as select c.id, i.label from cheap c join items i on i.id = c.id',
  ];
  for (const sql of ddl) {
    await other.query(sql);
    await reference.query(sql);
  }
  await sameResults(proxy, reference, [
    'select count(*), sum(price) from cheap',
    'select * from cheap order by price desc limit 3',
    'select * from cheap where id = 10',
    'select * from per_group order by grp',
    'select count(*), max(label) from cheap_labels',
    'select g.grp, g.n, count(c.id) from per_group g left join cheap c on c.grp = g.grp group by g.grp, g.n order by 1',
  ]);
  const plan = (await rowsOf(proxy, 'explain select count(*) from cheap')).map((r) => r[0]).join('\n');
  assert.match(plan, /^Distributed Aggregate/, 'a view of one table filtered pushes down whole');
  // Replaced, dropped: every session sees it at its next statement.
  await other.query('create or replace view cheap as select id, grp, price from items where price < 10');
  await reference.query('create or replace view cheap as select id, grp, price from items where price < 10');
  await sameResults(proxy, reference, ['select count(*) from cheap']);
  await other.query('drop view cheap_labels');
  await reference.query('drop view cheap_labels');
  await sameResults(proxy, reference, ['select count(*) from cheap_labels']);
  // A view made inside a transaction is this session's until it commits; a rolled-back one is gone.
  await proxy.query('begin');
  await proxy.query('create view tx_view as select id from items where id <= 5');
  assert.deepEqual(await rowsOf(proxy, 'select count(*) from tx_view'), [['5']]);
  await proxy.query('rollback');
  await assert.rejects(other.query('select count(*) from tx_view'), (e: { code?: string }) => e.code === '42P01');
  await assert.rejects(proxy.query('select count(*) from tx_view'), (e: { code?: string }) => e.code === '42P01');
  await Promise.all([proxy.end(), reference.end(), other.end()]);
});

test('a session that was open when a table got distributed reads all of it', async () => {
  const early = await cluster.connect();
  const admin = await cluster.connect();
  await admin.query('create table late (id int primary key, v int)');
  await admin.query('insert into late select g, g from generate_series(1, 90) g');
  assert.deepEqual(await rowsOf(early, 'select count(*) from late'), [['90']]);
  await admin.query("select parapool.distribute_table('late', 'id')");
  assert.deepEqual(await rowsOf(early, 'select count(*), sum(v) from late'), [['90', '4095']]);
  await admin.query('drop table late');
  await Promise.all([early.end(), admin.end()]);
});

test('cursors: DECLARE, FETCH, MOVE and CLOSE give the rows one server gives, in and across transactions', async () => {
  const proxy = await cluster.connect();
  const reference = await cluster.connectDirect('reference');
  await sameResults(proxy, reference, [
    'begin',
    'declare c cursor for select id, label, price from items where grp = 3 order by id',
    'fetch 3 from c',
    'fetch next from c',
    'move 10 in c',
    'fetch forward 2 from c',
    'fetch all from c',
    'fetch 1 from c',
    'move all in c',
    'close c',
    'declare g no scroll cursor for select grp, count(*) from items group by grp order by grp',
    'fetch 4 from g',
    'commit',
    'fetch 1 from g',
    'declare h cursor with hold for select grp, sum(price) from items group by grp order by grp',
    'fetch 2 from h',
    'begin',
    'fetch 2 from h',
    'commit',
    'fetch all from h',
    'close h',
    'declare outside cursor for select * from items',
    'begin',
    'declare d cursor for select id from items order by id',
    'declare d cursor for select id from items order by id',
    'rollback',
  ]);
  await proxy.query('begin');
  await assert.rejects(proxy.query('declare s scroll cursor for select id from items'), (e: { code?: string }) => e.code === '0A000');
  await proxy.query('rollback');
  await proxy.query('begin');
  await proxy.query('declare b cursor for select id from items order by id');
  await proxy.query('fetch 5 from b');
  await assert.rejects(proxy.query('fetch backward 1 from b'), (e: { code?: string }) => e.code === '0A000');
  await proxy.query('rollback');
  await Promise.all([proxy.end(), reference.end()]);
});

test('SQL PREPARE and EXECUTE of reads over distributed tables', async () => {
  const proxy = await cluster.connect();
  const reference = await cluster.connectDirect('reference');
  await sameResults(proxy, reference, [
    'prepare by_group(int) as select grp, count(*), sum(price) from items where grp = $1 group by grp',
    'execute by_group(2)',
    'execute by_group(1 + 4)',
    "prepare by_label as select id from items where label like $1 and price > $2 order by id",
    "execute by_label('item 1%', 100)",
    'execute by_group(1, 2)',
    'prepare by_group(int) as select 1',
    'deallocate by_group',
    'execute by_group(2)',
    'deallocate all',
    "execute by_label('item 1%', 100)",
  ]);
  await Promise.all([proxy.end(), reference.end()]);
});

test('statements that would keep one node\'s rows as if they were all are refused with 0A000', async () => {
  const proxy = await cluster.connect();
  for (const sql of [
    'create table copy_of_items as select * from items',
    'create temp table tmp_items as select * from items where grp = 1',
    'create materialized view items_mv as select grp, count(*) from items group by grp',
    'select * into other_items from items',
    'insert into items select id + 1000, grp, price, label from items',
  ]) {
    await assert.rejects(proxy.query(sql), (e: { code?: string }) => e.code === '0A000', sql);
  }
  const nodes = await cluster.onEachNode("select count(*) from pg_class where relname in ('copy_of_items', 'tmp_items', 'items_mv', 'other_items')");
  assert.deepEqual(nodes, [[['0']], [['0']], [['0']]], 'nothing was created');
  assert.deepEqual(await rowsOf(proxy, 'select count(*) from items'), [['500']]);
  await proxy.end();
});

test('routines that read distributed tables are refused where called, not answered from one node', async () => {
  const admin = await cluster.connect();
  const definitions = [
    "create function items_total() returns numeric language sql as 'select sum(price) from items'",
    'create function items_over(p numeric) returns bigint language sql begin atomic select count(*) from items where price > p; end',
    "create function items_count_pl() returns bigint language plpgsql as $$ declare n bigint; begin select count(*) into n from items; return n; end $$",
    "create function calls_other() returns numeric language sql as 'select items_total() * 2'",
    "create function harmless(x int) returns int language sql immutable as 'select x + 1'",
    "create procedure touch_items() language plpgsql as $$ begin perform count(*) from items; end $$",
    'create view calls_view as select items_total() as total',
  ];
  for (const sql of definitions) await admin.query(sql);
  const other = await cluster.connect();
  for (const sql of [
    'select items_total()',
    'select items_over(10)',
    'select items_count_pl()',
    'select calls_other()',
    'select * from calls_view',
    'select id, items_total() from items where id = 1',
    'call touch_items()',
    'do $$ begin perform count(*) from items; end $$',
  ]) {
    await assert.rejects(other.query(sql), (e: { code?: string; message: string }) => e.code === '0A000' && /reads distributed table "items"/.test(e.message), sql);
  }
  assert.deepEqual(await rowsOf(other, 'select harmless(1), count(*) from items where harmless(id) > 2'), [['2', '499']]);
  // Redefined to read nothing distributed: callable again, in every session.
  await admin.query("create or replace function items_total() returns numeric language sql as 'select 42::numeric'");
  assert.deepEqual(await rowsOf(other, 'select items_total()'), [['42']]);
  await admin.query('drop view calls_view');
  for (const name of ['items_total()', 'items_over(numeric)', 'items_count_pl()', 'calls_other()', 'harmless(int)']) await admin.query(`drop function ${name}`);
  await admin.query('drop procedure touch_items()');
  await Promise.all([admin.end(), other.end()]);
});

test('unqualified names resolve through the session\'s search_path, as the nodes resolve them', async () => {
  const admin = await cluster.connect();
  await admin.query('create schema app');
  await admin.query('create table app.items (id int primary key, v int)');
  await admin.query('insert into app.items select g, g from generate_series(1, 300) g');
  await admin.query("select parapool.distribute_table('app.items', 'id')");
  const client = await cluster.connect();
  const both = async (unqualified: string, qualified: string) => assert.deepEqual(await rowsOf(client, unqualified), await rowsOf(client, qualified), unqualified);
  assert.deepEqual(await rowsOf(client, 'select count(*) from items'), [['500']]);
  await client.query('set search_path = app, public');
  assert.deepEqual(await rowsOf(client, 'select count(*), sum(v) from items'), [['300', '45150']]);
  await both('select v % 5 as r, count(*) from items group by r order by r', 'select v % 5 as r, count(*) from app.items group by r order by r');
  await both('select count(*) from items a join public.items b on b.grp = a.v', 'select count(*) from app.items a join public.items b on b.grp = a.v');
  await both('select count(*) from items a join public.items b on b.id = a.v * 2', 'select count(*) from app.items a join public.items b on b.id = a.v * 2');
  await client.query('begin');
  await client.query('set local search_path = public');
  assert.deepEqual(await rowsOf(client, 'select count(*) from items'), [['500']]);
  await client.query('rollback');
  assert.deepEqual(await rowsOf(client, 'select count(*) from items'), [['300']], 'the rollback undid SET LOCAL');
  // A plain table earlier in the search_path hides the distributed one of the same name, as on one server.
  await admin.query('create schema shadow');
  await admin.query('create table shadow.items (id int)');
  await admin.query('insert into shadow.items values (1)');
  await client.query('set search_path = shadow, public');
  assert.deepEqual(await rowsOf(client, 'select count(*) from items'), [['1']]);
  await client.query('reset search_path');
  assert.deepEqual(await rowsOf(client, 'select count(*) from items'), [['500']]);
  await client.end();
  const started = await cluster.connect({ options: '-c search_path=app,public' });
  assert.deepEqual(await rowsOf(started, 'select count(*) from items'), [['300']], 'a search_path given at start-up');
  await started.end();
  await admin.query('drop schema shadow cascade');
  await admin.query('drop table app.items');
  await admin.query('drop schema app');
  await admin.end();
});

test('COPY ... TO STDOUT of a distributed table or a query over one, in text and CSV, byte for byte', async () => {
  const create = [
    'create table texts (id int primary key, t text, n numeric, b bool)',
    "insert into texts values (1, 'plain', 1.5, true), (2, E'tab\\there', null, false), (3, E'new\\nline', 0, null), " +
      "(4, E'back\\\\slash', -2, true), (5, 'comma, \"quoted\"', 3.25, false), (6, '', 7, true), (7, null, null, null), " +
      "(8, E'\\\\.', 1, true), (9, 'semi;colon', 2, false), (10, E'cr\\rhere', 3, true), (11, 'NULL', 4, false)",
  ];
  const proxy = await cluster.connect();
  const reference = await cluster.connectDirect('reference');
  for (const sql of create) {
    await proxy.query(sql);
    await reference.query(sql);
  }
  await proxy.query("select parapool.distribute_table('texts', 'id')");
  await Promise.all([proxy.end(), reference.end()]);
  const copies = [
    'copy (select * from texts order by id) to stdout',
    'copy (select id, t from texts order by id) to stdout with (format csv, header)',
    "copy (select * from texts order by id) to stdout with (format csv, delimiter ';', null 'NULL', force_quote (t, n))",
    "copy (select t from texts order by id) to stdout with (format csv, quote '''', escape '\\', force_quote *)",
    "copy (select t from texts order by id) to stdout csv",
    "copy (select id, t from texts order by id) to stdout with (delimiter '|', null '-', header)",
    'copy (select grp, count(*) from items group by grp order by grp) to stdout',
  ];
  for (const sql of copies) {
    const [expected, actual] = await Promise.all([psqlOutput(cluster.reference!.port, sql), psqlOutput(cluster.proxy.port, sql)]);
    assert.equal(actual, expected, sql);
  }
  // A table copied whole: the same rows, in whatever order the nodes give them.
  const [expected, actual] = await Promise.all([psqlOutput(cluster.reference!.port, 'copy texts (id, t) to stdout'), psqlOutput(cluster.proxy.port, 'copy texts (id, t) to stdout')]);
  assert.deepEqual(actual.split('\n').sort(), expected.split('\n').sort());
  const binary = await cluster.connect();
  await assert.rejects(binary.query('copy texts to stdout (format binary)'), (e: { code?: string }) => e.code === '0A000');
  await assert.rejects(binary.query("copy texts to '/tmp/parapool-copy-out'"), (e: { code?: string }) => e.code === '0A000');
  await binary.end();
});

function psqlOutput(port: number, sql: string): Promise<string> {
  return new Promise((resolvePromise, reject) => {
    const child = spawn(findPostgresProgram('psql'), ['-X', '-q', '-h', '127.0.0.1', '-p', String(port), '-U', 'postgres', '-d', 'postgres', '-v', 'ON_ERROR_STOP=1', '-c', sql], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (err += d));
    child.on('error', reject);
    child.on('close', (code) => (code === 0 ? resolvePromise(out) : reject(new Error(`psql exited ${code}: ${err}`))));
  });
}
