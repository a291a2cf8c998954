// Replicated mode against real nodes: writes reach every node, reads one, sessions' settings follow them, and
// nothing ever lets two nodes drift apart silently: non-deterministic writes are pinned or refused, and a node
// whose answer differs is detached and reported.

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { configureLog } from '../../src/log';
import { ProxyServer } from '../../src/server/proxy-server';
import { rowsOf, startTestCluster, type TestCluster } from '../support/test-cluster';

let cluster: TestCluster;

before(async () => {
  cluster = await startTestCluster({ nodes: 3 });
});

after(async () => {
  await cluster?.stop();
});

async function poolNodes(): Promise<Record<string, string | null>[]> {
  const client = await cluster.connect();
  const result = await client.query('show pool_nodes');
  await client.end();
  return result.rows;
}

test('writes reach every node; reads are spread by backend_weight', async () => {
  const client = await cluster.connect();
  await client.query('create table kv (k int primary key, v text)');
  await client.query("insert into kv select g, 'v' || g from generate_series(1, 100) g");
  await client.query("update kv set v = v || '!' where k <= 10");
  await client.query('delete from kv where k > 90');
  await client.end();
  const sums = await cluster.onEachNode("select count(*), md5(string_agg(k || v, ',' order by k)) from kv");
  assert.equal(sums[0][0][0], '90');
  assert.deepEqual(sums[1], sums[0]);
  assert.deepEqual(sums[2], sums[0]);

  const before = (await poolNodes()).map((n) => Number(n.select_cnt));
  for (let i = 0; i < 30; i++) {
    const c = await cluster.connect();
    await c.query('select count(*) from kv');
    await c.end();
  }
  const after = (await poolNodes()).map((n) => Number(n.select_cnt));
  const spread = after.map((count, i) => count - before[i]);
  assert.ok(spread.filter((n) => n > 0).length >= 2, `reads went to more than one node: ${spread}`);
});

test('a weight of 0 keeps reads off a node; statement-level balancing moves reads per statement', async () => {
  await cluster.restartProxy((c) => {
    c.backends = c.backends.map((b) => ({ ...b, weight: b.id === 0 ? 0 : 1 }));
    c.statementLevelLoadBalance = true;
  });
  const before = (await poolNodes()).map((n) => Number(n.select_cnt));
  const client = await cluster.connect();
  for (let i = 0; i < 40; i++) await client.query('select 1');
  await client.end();
  const after = (await poolNodes()).map((n) => Number(n.select_cnt));
  assert.equal(after[0] - before[0], 0);
  assert.ok(after[1] - before[1] > 0 && after[2] - before[2] > 0, `one session's reads used both weighted nodes: ${after}`);
  await cluster.restartProxy((c) => {
    c.backends = c.backends.map((b) => ({ ...b, weight: 1 }));
    c.statementLevelLoadBalance = false;
  });
});

test('session settings follow every statement to whichever node runs it', async () => {
  await cluster.restartProxy((c) => (c.statementLevelLoadBalance = true));
  const client = await cluster.connect();
  await client.query("set datestyle = 'SQL, DMY'");
  for (let i = 0; i < 10; i++) assert.deepEqual(await rowsOf(client, "select date '2026-03-04'"), [['04/03/2026']]);
  await client.end();
  await cluster.restartProxy((c) => (c.statementLevelLoadBalance = false));
});

test('time functions in writes are pinned to one value on every node', async () => {
  const client = await cluster.connect();
  await client.query('create table events (id int, at timestamptz, day date, t text)');
  await client.query('insert into events values (1, now(), current_date, timeofday())');
  await client.query('begin');
  await client.query('insert into events values (2, now(), current_date)');
  await client.query('insert into events values (3, now(), current_date)');
  await client.query('commit');
  await client.query({ text: 'insert into events values ($1, now(), current_date)', values: [4] });
  await client.query({ name: 'ev', text: 'insert into events values ($1, clock_timestamp(), localtimestamp)', values: [5] });
  await client.query({ name: 'ev', text: 'insert into events values ($1, clock_timestamp(), localtimestamp)', values: [6] });
  await client.end();
  const results = await cluster.onEachNode('select id, at, day, t from events order by id');
  assert.equal(results[0].length, 6);
  assert.deepEqual(results[1], results[0]);
  assert.deepEqual(results[2], results[0]);
  assert.equal(results[0][1][1], results[0][2][1], 'now() is the transaction start inside a transaction');
  assert.notEqual(results[0][4][1], results[0][5][1], 'each execution of a prepared write gets its own time');
});

test('writes with per-node values are refused with 0A000 and change nothing', async () => {
  const client = await cluster.connect();
  await assert.rejects(client.query('insert into events (id, t) values (10, random()::text)'), (e: { code?: string; message: string }) => e.code === '0A000' && /random\(\)/.test(e.message));
  await assert.rejects(client.query({ text: 'insert into events (id, t) values ($1, gen_random_uuid()::text)', values: [11] }), (e: { code?: string }) => e.code === '0A000');
  await client.query('begin');
  await client.query('insert into events (id) values (12)');
  await assert.rejects(client.query('update events set t = random()::text'), (e: { code?: string }) => e.code === '0A000');
  await assert.rejects(client.query('select 1'), (e: { code?: string }) => e.code === '25P02');
  await client.query('rollback');
  assert.deepEqual(await rowsOf(client, 'select random() < 2'), [['t']], 'a read may call random()');
  await client.end();
  const results = await cluster.onEachNode('select count(*) from events where id >= 10');
  assert.deepEqual(results, [[['0']], [['0']], [['0']]]);
});

test('CREATE TABLE AS pins its time functions and refuses per-node values', async () => {
  const client = await cluster.connect();
  await client.query('create table ctas_at as select clock_timestamp() as at, g from generate_series(1, 3) g');
  await assert.rejects(client.query('create table ctas_random as select random() as r'), (e: { code?: string }) => e.code === '0A000');
  await client.end();
  const results = await cluster.onEachNode('select md5(string_agg(at::text || g, \',\' order by g)) from ctas_at');
  assert.deepEqual(results[1], results[0]);
  assert.deepEqual(results[2], results[0]);
  assert.deepEqual(await cluster.onEachNode("select to_regclass('ctas_random') is null"), [[['t']], [['t']], [['t']]]);
});

test('a SELECT that calls a volatile function of the database is a write: its changes reach every node', async () => {
  const client = await cluster.connect();
  await client.query('create table calls (n int)');
  await client.query("create function record_call(x int) returns int language plpgsql as $$ begin insert into calls values (x); return x; end $$");
  await client.query("create function twice(x int) returns int language sql immutable as 'select x * 2'");
  assert.deepEqual(await rowsOf(client, 'select record_call(7), twice(4)'), [['7', '8']]);
  await client.end();
  assert.deepEqual(await cluster.onEachNode('select array_agg(n) from calls'), [[['{7}']], [['{7}']], [['{7}']]]);
});

test('a SELECT that calls nextval() is a write: every node advances its sequence', async () => {
  const client = await cluster.connect();
  await client.query('create sequence seq');
  assert.deepEqual(await rowsOf(client, "select nextval('seq')"), [['1']]);
  assert.deepEqual(await rowsOf(client, "select nextval('seq')"), [['2']]);
  await client.end();
  assert.deepEqual(await cluster.onEachNode('select last_value from seq'), [[['2']], [['2']], [['2']]]);
});

test('concurrent inserts into serial and identity columns number the rows alike on every node (insert_lock)', async () => {
  const setup = await cluster.connect();
  await setup.query('create table serial_rows (id serial primary key, who int, n int)');
  await setup.query('create table identity_rows (id bigint generated always as identity primary key, who int, n int)');
  await setup.query('create sequence shared_seq');
  await setup.query('create table explicit_rows (id bigint primary key, who int)');
  await setup.end();
  const clients = await Promise.all(Array.from({ length: 8 }, () => cluster.connect()));
  await Promise.all(
    clients.map(async (client, who) => {
      for (let n = 0; n < 25; n++) {
        // Simple and extended protocol, one row and several, an explicit nextval() call.
        await client.query(`insert into serial_rows (who, n) values (${who}, ${n})`);
        await client.query('insert into identity_rows (who, n) values ($1, $2), ($1, $2 + 1000)', [who, n]);
        await client.query("insert into explicit_rows values (nextval('shared_seq'), $1)", [who]);
        if (n % 10 === 0) await client.query(`begin; insert into serial_rows (who, n) select ${who}, g from generate_series(100, 104) g; commit`);
      }
    }),
  );
  await Promise.all(clients.map((client) => client.end()));
  for (const table of ['serial_rows', 'identity_rows', 'explicit_rows']) {
    const sums = await cluster.onEachNode(`select count(*), md5(string_agg(t::text, ',' order by id)) from ${table} t`);
    assert.deepEqual(sums[1], sums[0], `${table}: node 1 numbered its rows as node 0 did`);
    assert.deepEqual(sums[2], sums[0], `${table}: node 2 numbered its rows as node 0 did`);
  }
  assert.ok((await poolNodes()).every((n) => n.status === 'up'), 'no node was detached');
});

test('a transaction waiting for the insert lock held by a statement that waits for it gives up with 55P03', async () => {
  const previous = cluster.config.insertLockTimeout;
  cluster.config.insertLockTimeout = 1;
  try {
    const setup = await cluster.connect();
    await setup.query('create table keyed_rows (id serial primary key, k int unique)');
    await setup.end();
    const holder = await cluster.connect();
    const blocked = await cluster.connect();
    await holder.query('begin');
    await holder.query('insert into keyed_rows (k) values (1)');
    // Waits on the nodes for the holder's uncommitted k = 1, holding the insert lock of keyed_rows_id_seq.
    const waiting = blocked.query('insert into keyed_rows (k) values (1) on conflict (k) do nothing');
    await new Promise((resolvePromise) => setTimeout(resolvePromise, 300));
    await assert.rejects(holder.query('insert into keyed_rows (k) values (2)'), (e: { code?: string }) => e.code === '55P03');
    await holder.query('rollback');
    await waiting;
    await holder.end();
    await blocked.end();
    const rows = await cluster.onEachNode('select id, k from keyed_rows order by id');
    assert.deepEqual(rows[1], rows[0]);
    assert.deepEqual(rows[2], rows[0]);
    assert.deepEqual(rows[0].map((r) => r[1]), ['1']);
  } finally {
    cluster.config.insertLockTimeout = previous;
  }
});

test('an error in a read inside a transaction aborts the transaction on every node', async () => {
  const client = await cluster.connect();
  await client.query('create table tx (a int)');
  await client.query('begin');
  await client.query('insert into tx values (1)');
  await assert.rejects(client.query('select 1/0'), (e: { code?: string }) => e.code === '22012');
  await assert.rejects(client.query('insert into tx values (2)'), (e: { code?: string }) => e.code === '25P02');
  await client.query('rollback');
  await client.query('insert into tx values (3)');
  await client.end();
  assert.deepEqual(await cluster.onEachNode('select array_agg(a) from tx'), [[['{3}']], [['{3}']], [['{3}']]]);
  assert.ok((await poolNodes()).every((n) => n.status === 'up'), 'no node was detached');
});

test('a node whose result differs is detached, named in SHOW pool_nodes and the log; service goes on', async () => {
  const lines: string[] = [];
  configureLog({ sink: { write: (line) => lines.push(line) }, minLevel: 'info' });
  const client = await cluster.connect();
  await client.query('create table drift (a int)');
  await client.query('insert into drift select generate_series(1, 10)');
  const direct = await cluster.connectDirect(2);
  await direct.query('delete from drift where a = 1');
  await direct.end();
  const result = await client.query('update drift set a = a + 100');
  assert.equal(result.rowCount, 10);
  await client.end();
  const nodes = await poolNodes();
  assert.deepEqual(nodes.map((n) => n.status), ['up', 'up', 'down']);
  assert.match(String(nodes[2].status_reason), /answered "UPDATE 9" where node 0 .* answered "UPDATE 10"/);
  assert.ok(lines.some((l) => /ERROR node_detached node=2 /.test(l)), 'one log line names the node');
  const after = await cluster.connect();
  await after.query('insert into drift values (0)');
  assert.deepEqual(await rowsOf(after, 'select count(*) from drift'), [['11']]);
  await after.end();
  configureLog({ minLevel: 'fatal' });
  await cluster.restartProxy(); // a new proxy starts with every node attached again
});

test('a node that dies is detached and the session continues on the others', async () => {
  const client = await cluster.connect();
  await client.query('create table survive (a int)');
  await cluster.nodes[2].stop('immediate');
  await client.query('insert into survive values (1)');
  assert.deepEqual(await rowsOf(client, 'select count(*) from survive'), [['1']]);
  await client.end();
  const nodes = await poolNodes();
  assert.equal(nodes[2].status, 'down');
  assert.match(String(nodes[2].status_reason), /node 2/);
  await cluster.nodes[2].start();
});

test('a node that is down at start-up is reported by name and the proxy serves with the rest', async () => {
  const lines: string[] = [];
  const config = { ...cluster.config, port: 0, backends: [...cluster.config.backends.slice(0, 2), { id: 2, host: '127.0.0.1', port: 1, weight: 1, dataDirectory: null }] };
  const proxy = new ProxyServer(config);
  configureLog({ sink: { write: (line) => lines.push(line) }, minLevel: 'info' });
  await proxy.start();
  configureLog({ minLevel: 'fatal' });
  assert.ok(lines.some((l) => /node_unreachable_at_startup node=2 address=127\.0\.0\.1:1/.test(l)), lines.join(''));
  const { Client } = await import('pg');
  const client = new Client({ host: '127.0.0.1', port: proxy.port, user: 'postgres', database: 'postgres' });
  await client.connect();
  const nodes = (await client.query('show pool_nodes')).rows;
  assert.deepEqual(nodes.map((n: { status: string }) => n.status), ['up', 'up', 'down']);
  assert.match(nodes[2].status_reason, /node 2 \(127\.0\.0\.1:1\) was unreachable at start-up/);
  assert.equal((await client.query('select 1 as one')).rows[0].one, 1);
  await client.end();
  await proxy.stop();
});

test('backend connections are pooled between sessions and reset', async () => {
  const first = await cluster.connect();
  await first.query("set application_name = 'first'");
  await first.query('create temp table scratch (a int)');
  const baseline = cluster.proxy.pool.idleCount();
  await first.end();
  const expected = baseline + cluster.proxy.cluster.upNodes().length;
  for (let i = 0; i < 100 && cluster.proxy.pool.idleCount() < expected; i++) await new Promise((r) => setTimeout(r, 20));
  assert.equal(cluster.proxy.pool.idleCount(), expected, 'the first session left one connection per node in the pool');
  const client = await cluster.connect();
  assert.equal(cluster.proxy.pool.idleCount(), baseline, 'the next session took one per node');
  assert.deepEqual(await rowsOf(client, "select count(*) from pg_class where relname = 'scratch'"), [['0']], 'temp tables are gone');
  assert.notDeepEqual(await rowsOf(client, 'show application_name'), [['first']]);
  await client.end();
});

test('a pinned write inside an aborted transaction fails like any statement there, and the session lives', async () => {
  const client = await cluster.connect();
  await client.query('create table aborted_pin (at timestamptz)');
  await client.query('begin');
  await assert.rejects(client.query('select 1/0'), (e: { code?: string }) => e.code === '22012');
  await assert.rejects(client.query('insert into aborted_pin values (now())'), (e: { code?: string }) => e.code === '25P02');
  await assert.rejects(client.query({ name: 'ap', text: 'insert into aborted_pin values (now())' }), (e: { code?: string }) => e.code === '25P02');
  await client.query('rollback');
  await client.query('insert into aborted_pin values (now())');
  assert.deepEqual(await rowsOf(client, 'select count(*) from aborted_pin'), [['1']]);
  await client.end();
});

test('a message that opens a transaction and fails on the main node leaves every node in the failed transaction', async () => {
  await cluster.restartProxy();
  const client = await cluster.connect();
  await assert.rejects(client.query('begin; insert into tx values (40); select 1/0'), (e: { code?: string }) => e.code === '22012');
  await assert.rejects(client.query('insert into tx values (41)'), (e: { code?: string }) => e.code === '25P02');
  await client.query('rollback');
  await client.query('insert into tx values (42)');
  await client.end();
  const nodes = (await poolNodes()).filter((n) => n.node_id !== '2');
  assert.ok(nodes.every((n) => n.status === 'up'), JSON.stringify(nodes));
  const contents = await cluster.onEachNode('select array_agg(a order by a) from tx');
  assert.deepEqual(contents[0], [['{3,42}']]);
  assert.deepEqual(contents[1], contents[0]);
});
