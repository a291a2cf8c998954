// Connections the server closed are never handed out: after DROP DATABASE ... WITH (FORCE) and CREATE DATABASE,
// pg_terminate_backend of every proxy backend, a node restart (fast and crash), and idle_session_timeout, the next
// statement through the proxy succeeds, grouped aggregates in worker threads included, and no node is detached;
// a plain DROP DATABASE succeeds although the proxy held idle connections to it; a connection lost inside a
// transaction fails that transaction with 08006 and the session goes on. Every fault is a real one.

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import type { Client } from 'pg';
import { loadParser } from '../../src/planner/sql-parser';
import { rowsOf, startTestCluster, type TestCluster } from '../support/test-cluster';

let cluster: TestCluster;

const sleep = (ms: number) => new Promise((resolvePromise) => setTimeout(resolvePromise, ms));

before(async () => {
  await loadParser();
  cluster = await startTestCluster({ nodes: 2 });
  const client = await cluster.connect();
  await setUpTables(client);
  await client.end();
});

after(async () => {
  await cluster?.stop();
});

/** A distributed table (its grouped aggregates run in a worker thread) and a replicated one. */
async function setUpTables(client: Client): Promise<void> {
  await client.query('create table facts (id int primary key, grp int, amount int)');
  await client.query("select parapool.distribute_table('facts', 'id')");
  await client.query('insert into facts select g, g % 5, g from generate_series(1, 500) g');
  await client.query('create table notes (id int primary key, body text)');
}

const groupedAggregate = 'select grp, count(*), sum(amount) from facts group by grp order by grp';
const expectedGroups = [0, 1, 2, 3, 4].map((grp) => {
  const ids = Array.from({ length: 100 }, (_, i) => i * 5 + grp).map((v) => (v === 0 ? 500 : v));
  return [String(grp), '100', String(ids.reduce((a, b) => a + b, 0))];
});

/** Runs the grouped aggregate, checking its answer and that it ran in a worker thread. */
async function aggregateInWorker(client: Client): Promise<void> {
  assert.deepEqual(await rowsOf(client, groupedAggregate), expectedGroups);
  const plan = (await rowsOf(client, `explain analyze ${groupedAggregate}`)).map((r) => r[0]).join('\n');
  assert.match(plan, /worker thread/, plan);
}

/** Statements of every kind on a session: a replicated write and read, a pinned read, a grouped aggregate. */
async function everyKind(client: Client, id: number): Promise<void> {
  await client.query('insert into notes values ($1, $2)', [id, `note ${id}`]);
  assert.deepEqual(await rowsOf(client, 'select body from notes where id = $1', [id]), [[`note ${id}`]]);
  assert.deepEqual(await rowsOf(client, 'select amount from facts where id = 7'), [['7']]);
  await aggregateInWorker(client);
}

async function poolNodes(): Promise<string[]> {
  const client = await cluster.connect();
  const nodes = (await client.query('show pool_nodes')).rows.map((n: { status: string }) => n.status);
  await client.end();
  return nodes;
}

/** Client backends on node i other than the asking one (the proxy's, as the test opens none meanwhile). */
async function backendsOn(node: number, database?: string): Promise<number> {
  const direct = await cluster.connectDirect(node);
  const filter = database ? ` and datname = '${database}'` : '';
  const rows = await rowsOf(direct, `select count(*) from pg_stat_activity where backend_type = 'client backend' and pid <> pg_backend_pid()${filter}`);
  await direct.end();
  return Number(rows[0][0]);
}

/** Terminates, on every node, every client backend but the asking one; waits for each to end when `wait`. */
async function terminateAll(wait: boolean, where = 'true'): Promise<number> {
  let terminated = 0;
  for (let node = 0; node < cluster.nodes.length; node++) {
    const direct = await cluster.connectDirect(node);
    const call = wait ? 'pg_terminate_backend(pid, 10000)' : 'pg_terminate_backend(pid)';
    const rows = await rowsOf(direct, `select count(*) filter (where ${call}) from pg_stat_activity where backend_type = 'client backend' and pid <> pg_backend_pid() and ${where}`);
    terminated += Number(rows[0][0]);
    await direct.end();
  }
  return terminated;
}

test('DROP DATABASE ... WITH (FORCE) and CREATE DATABASE, then statements on the new database: no error', async () => {
  const admin = await cluster.connect();
  await admin.query('create database lively');
  for (let round = 0; round < 3; round++) {
    const client = await cluster.connect({ database: 'lively' });
    await setUpTables(client);
    await everyKind(client, round);
    await client.end();
    // The pool and a worker thread keep idle connections to the database now.
    await admin.query('drop database lively with (force)');
    await admin.query('create database lively');
  }
  const client = await cluster.connect({ database: 'lively' });
  await setUpTables(client);
  await everyKind(client, 100);
  await aggregateInWorker(client);
  await client.end();
  await admin.query('drop database lively with (force)');
  await admin.end();
  assert.deepEqual(await poolNodes(), ['up', 'up']);
});

test('a plain DROP DATABASE succeeds although the proxy held idle connections to it', async () => {
  const admin = await cluster.connect();
  await admin.query('create database doomed');
  const client = await cluster.connect({ database: 'doomed' });
  await setUpTables(client);
  await everyKind(client, 1);
  await client.end();
  for (let i = 0; i < 100 && (await backendsOn(0, 'doomed')) < 2; i++) await sleep(20);
  assert.ok((await backendsOn(0, 'doomed')) >= 2, 'the pool and a worker thread hold connections to the database');
  await admin.query('drop database doomed');
  assert.deepEqual(await rowsOf(admin, "select count(*) from pg_database where datname = 'doomed'"), [['0']]);
  // The extended protocol goes the same way.
  await admin.query('create database doomed');
  const again = await cluster.connect({ database: 'doomed' });
  await again.query('select 1');
  await again.end();
  await admin.query({ text: 'drop database doomed', values: [] });
  await admin.query({ name: 'noop', text: 'select 1' });
  assert.deepEqual(await rowsOf(admin, "select count(*) from pg_database where datname = 'doomed'"), [['0']]);
  await admin.end();
});

test('after pg_terminate_backend of every proxy backend, the next statement succeeds', async () => {
  const client = await cluster.connect();
  await everyKind(client, 10);
  const other = await cluster.connect();
  await other.end(); // its connections go to the pool
  assert.ok((await terminateAll(true)) >= 4);
  await everyKind(client, 11);
  const fresh = await cluster.connect();
  await everyKind(fresh, 12);
  await fresh.end();
  // Not waiting for the backends to end: a read may reach a connection whose node is just closing it.
  for (let i = 0; i < 5; i++) {
    await terminateAll(false);
    assert.deepEqual(await rowsOf(client, 'select body from notes where id = 10'), [['note 10']]);
    assert.deepEqual(await rowsOf(client, groupedAggregate), expectedGroups);
  }
  // The termination and the read at the same moment, again and again: whichever the proxy sees first, the read
  // gets its rows (run once more on a new connection when its node had just ended the first).
  const directs = await Promise.all(cluster.nodes.map((_, node) => cluster.connectDirect(node)));
  for (let i = 0; i < 40; i++) {
    const pids = await Promise.all(directs.map(async (direct) => (await rowsOf(direct, "select array_agg(pid) from pg_stat_activity where backend_type = 'client backend' and pid <> pg_backend_pid()"))[0][0]));
    const [rows] = await Promise.all([
      rowsOf(client, 'select body from notes where id = 10'),
      ...directs.map((direct, node) => direct.query('select pg_terminate_backend(pid) from unnest($1::int[]) pid', [pids[node]])),
    ]);
    assert.deepEqual(rows, [['note 10']]);
  }
  await Promise.all(directs.map((direct) => direct.end()));
  await everyKind(client, 13);
  await client.end();
  assert.deepEqual(await poolNodes(), ['up', 'up']);
});

for (const mode of ['fast', 'immediate'] as const) {
  test(`after a node restart (${mode} stop), the next statement outside a transaction succeeds and no node is detached`, async () => {
    const client = await cluster.connect();
    await client.query("set application_name = 'restart test'");
    await everyKind(client, mode === 'fast' ? 20 : 30);
    const pooled = await cluster.connect();
    await pooled.end();
    const index = mode === 'fast' ? 0 : 1;
    if (mode === 'immediate') {
      // The test nodes run with synchronous_commit off: a crash would lose the last commits, the proxy or not.
      const direct = await cluster.connectDirect(index);
      await direct.query('checkpoint');
      await direct.end();
    }
    const node = cluster.nodes[index];
    await node.stop(mode);
    await node.start();
    await everyKind(client, mode === 'fast' ? 21 : 31);
    assert.deepEqual(await rowsOf(client, 'show application_name'), [['restart test']], 'the session keeps what it SET');
    const fresh = await cluster.connect();
    await everyKind(fresh, mode === 'fast' ? 22 : 32);
    await fresh.end();
    await client.end();
    assert.deepEqual(await poolNodes(), ['up', 'up']);
    assert.deepEqual(await cluster.onEachNode(`select count(*) from notes where id in (${mode === 'fast' ? '20, 21, 22' : '30, 31, 32'})`), [[['3']], [['3']]]);
  });
}

test("after the server's idle_session_timeout closed the proxy's connections, the next statement succeeds", async () => {
  const admin = await cluster.connect();
  await admin.query('create database sleepy');
  await admin.query("alter database sleepy set idle_session_timeout = '300ms'");
  const client = await cluster.connect({ database: 'sleepy' });
  await setUpTables(client);
  for (let round = 0; round < 3; round++) {
    await sleep(800);
    await everyKind(client, 40 + round);
    const fresh = await cluster.connect({ database: 'sleepy' });
    await sleep(800);
    await everyKind(fresh, 50 + round);
    await fresh.end();
  }
  await client.end();
  await admin.query('drop database sleepy');
  await admin.end();
  assert.deepEqual(await poolNodes(), ['up', 'up']);
});

test('a connection lost inside a transaction fails it with 08006; the session rolls back and goes on', async () => {
  const client = await cluster.connect({ application_name: 'victim' });
  await client.query('begin');
  await client.query("insert into notes values (60, 'lost')");
  assert.equal(await terminateAll(true, "application_name = 'victim'"), 2);
  await assert.rejects(client.query("insert into notes values (61, 'after')"), (e: { code?: string; message: string }) => e.code === '08006' && /inside the transaction/.test(e.message));
  await assert.rejects(client.query('select 1'), (e: { code?: string }) => e.code === '25P02');
  await client.query('rollback');
  await client.query('begin');
  await client.query("insert into notes values (62, 'next transaction')");
  await client.query('commit');
  await everyKind(client, 63);
  assert.deepEqual(await cluster.onEachNode('select array_agg(id order by id) from notes where id between 60 and 63'), [[['{62,63}']], [['{62,63}']]]);

  // One node only, and COMMIT as the next statement: it fails rather than answer as if it committed.
  await client.query('begin');
  await client.query("insert into notes values (64, 'lost too')");
  const direct = await cluster.connectDirect(1);
  await direct.query("select pg_terminate_backend(pid, 10000) from pg_stat_activity where application_name = 'victim'");
  await direct.end();
  await assert.rejects(client.query('commit'), (e: { code?: string }) => e.code === '08006');
  await client.query('rollback');
  assert.deepEqual(await cluster.onEachNode('select count(*) from notes where id = 64'), [[['0']], [['0']]]);
  await client.end();

  // Killed while a statement runs in the transaction: the client gets an error, never a hang; the proxy serves on.
  const running = await cluster.connect({ application_name: 'victim' });
  running.on('error', () => undefined);
  await running.query('begin');
  const sleeping = running.query('select pg_sleep(30)').then(
    () => null,
    (error: { code?: string }) => error,
  );
  for (let i = 0; i < 200 && (await terminateAll(true, "application_name = 'victim' and state = 'active'")) === 0; i++) await sleep(20);
  const error = await sleeping;
  assert.ok(error && ['08006', '57P01'].includes(String(error.code)), String(error?.code));
  await running.query('rollback').catch(() => undefined); // the session may have been closed
  await running.end().catch(() => undefined);
  const after = await cluster.connect();
  await everyKind(after, 65);
  await after.end();
  assert.deepEqual(await poolNodes(), ['up', 'up']);
});

test('a session whose node sessions hold LISTEN, an advisory lock or a PREPARE ends with 08006 when they are lost, never goes on without them', async () => {
  const cases = [
    ['listen', 'listen parapool_channel'],
    ['lock', 'select pg_advisory_lock(4242)'],
    ['prepare', 'prepare one_note as select count(*) from notes'],
  ];
  for (const [name, statement] of cases) {
    const application = `bound_${name}`;
    const client = await cluster.connect({ application_name: application });
    client.on('error', () => undefined);
    await client.query(statement);
    assert.ok((await terminateAll(true, `application_name = '${application}'`)) >= 1);
    await assert.rejects(client.query('select 1'), (e: { code?: string; message: string }) => e.code === '08006' && /went with it/.test(e.message), name);
    await client.end().catch(() => undefined);
  }
  // A session that holds nothing of the kind moves to new connections unnoticed.
  const plain = await cluster.connect({ application_name: 'bound_none' });
  await plain.query('select pg_advisory_xact_lock(4242)');
  assert.ok((await terminateAll(true, "application_name = 'bound_none'")) >= 1);
  assert.deepEqual(await rowsOf(plain, 'select 1'), [['1']]);
  await plain.end();
  assert.deepEqual(await poolNodes(), ['up', 'up']);
});
