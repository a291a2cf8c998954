// pool_mode = transaction: a session holds node connections only while a transaction or statement runs, at most
// max_pool of them per node and key; prepared statements follow the session to whichever connection runs them, and
// state that lives in a node session (SET, temporary tables, advisory locks, LISTEN, PREPARE) keeps the session on
// its connections instead. Checked with node-postgres, psql and pgbench, and on the nodes' own pg_stat_activity.

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Client } from 'pg';
import { findPostgresProgram } from '../../src/cluster/postgres-install';
import { serialize } from 'pg-protocol';
import { dataRowValues, errorFields, RawClient } from '../support/raw-client';
import { rowsOf, startTestCluster, type TestCluster } from '../support/test-cluster';

let cluster: TestCluster;
let workDir: string;
const maxPool = 2;

before(async () => {
  workDir = mkdtempSync(join(tmpdir(), 'parapool-txpool-'));
  cluster = await startTestCluster({
    nodes: 2,
    configure: (config) => {
      config.poolMode = 'transaction';
      config.maxPool = maxPool;
    },
  });
  const client = await cluster.connect();
  await client.query('create table counters (id int primary key, n int not null)');
  await client.end();
});

after(async () => {
  await cluster?.stop();
  if (workDir) rmSync(workDir, { recursive: true, force: true });
});

/** How many connections the proxy holds open on each node for an application name. */
async function nodeConnections(application: string): Promise<number[]> {
  const rows = await cluster.onEachNode(`select count(*) from pg_stat_activity where application_name = '${application}'`);
  return rows.map((r) => Number(r[0][0]));
}

async function clients(count: number, application: string): Promise<Client[]> {
  const list: Client[] = [];
  for (let i = 0; i < count; i++) list.push(await cluster.connect({ application_name: application }));
  return list;
}

async function endAll(list: Client[]): Promise<void> {
  await Promise.all(list.map((c) => c.end().catch(() => undefined)));
}

test('twelve sessions share max_pool connections per node, and each sees its own results', async () => {
  const sessions = await clients(12, 'txpool-share');
  try {
    for (let round = 0; round < 5; round++) {
      const results = await Promise.all(sessions.map((c, i) => rowsOf(c, `select ${i} + ${round}, pg_sleep(0.01)`)));
      results.forEach((rows, i) => assert.equal(rows[0][0], String(i + round)));
    }
    for (const count of await nodeConnections('txpool-share')) assert.ok(count <= maxPool, `${count} connections on a node`);
    // Writes through pooled connections reach every node.
    await Promise.all(sessions.map((c, i) => c.query('insert into counters values ($1, $2) on conflict (id) do update set n = excluded.n', [i, i * 10])));
    const sums = await cluster.onEachNode('select count(*), sum(n) from counters where id < 12');
    for (const rows of sums) assert.deepEqual(rows, [['12', '660']]);
  } finally {
    await endAll(sessions);
  }
});

test('a session over the cap waits for a transaction to end, then runs', async () => {
  const [a, b, c] = await clients(3, 'txpool-wait');
  try {
    await a.query('begin');
    await a.query('select 1');
    await b.query('begin');
    await b.query('select 1');
    let done = false;
    const waiting = c.query('select 42 as v').then((r) => {
      done = true;
      return r;
    });
    await new Promise((r) => setTimeout(r, 300));
    assert.equal(done, false, 'the third session ran while both connections were held by transactions');
    await a.query('commit');
    const result = await waiting;
    assert.equal(String(result.rows[0].v), '42');
    await b.query('commit');
  } finally {
    await endAll([a, b, c]);
  }
});

test('a client that leaves while waiting for a connection frees its place, and the pool goes on', async () => {
  const [a, b, leaver] = await clients(3, 'txpool-leave');
  leaver.on('error', () => undefined);
  try {
    await a.query('begin');
    await a.query('select 1');
    await b.query('begin');
    await b.query('select 1');
    const abandoned = leaver.query('select 1').catch(() => undefined);
    await new Promise((r) => setTimeout(r, 200));
    await leaver.end().catch(() => undefined);
    await abandoned;
    await a.query('commit');
    await b.query('commit');
    const after = await clients(3, 'txpool-leave');
    const rows = await Promise.all(after.map((c, i) => rowsOf(c, `select ${i}`)));
    assert.deepEqual(rows, [[['0']], [['1']], [['2']]]);
    await endAll(after);
    for (const count of await nodeConnections('txpool-leave')) assert.ok(count <= maxPool);
  } finally {
    await endAll([a, b]);
  }
});

test('a Parse sent alone is answered at once; what only a node can find fails at the first execution', async () => {
  // Two sessions hold every connection in their transactions: a third can still prepare, as pgbench -M prepared does.
  // Raw clients all: the same start-up parameters, so the same pool key and the same max_pool connections.
  const [a, b, raw] = await Promise.all([0, 1, 2].map(() => RawClient.ready(cluster.proxy.port)));
  const simple = async (client: RawClient, sql: string) => {
    client.send([serialize.query(sql)]);
    return client.readUntil('Z', 10_000);
  };
  try {
    await simple(raw, 'select 1');
    await simple(a, 'begin; select 1');
    await simple(b, 'begin; select 1');
    raw.send([serialize.parse({ name: 'twice', text: 'select $1::int * 2' }), serialize.parse({ name: 'missing', text: 'select * from no_such_table' }), serialize.sync()]);
    const parsed = await raw.readUntil('Z', 5_000);
    assert.equal(parsed.map((m) => m.type).join(''), '11Z');
    // A name in use, or text the grammar refuses, waits for a node and gets its error.
    await simple(a, 'commit');
    raw.send([serialize.parse({ name: 'twice', text: 'select 1' }), serialize.sync()]);
    const again = await raw.readUntil('Z', 10_000);
    assert.equal(errorFields(again.find((m) => m.type === 'E')!).C, '42P05');
    raw.send([serialize.parse({ name: 'broken', text: 'selec 1' }), serialize.sync()]);
    assert.equal(errorFields((await raw.readUntil('Z', 10_000)).find((m) => m.type === 'E')!).C, '42601');
    raw.send([serialize.bind({ statement: 'twice', values: ['21'] }), serialize.execute({}), serialize.sync()]);
    const run = await raw.readUntil('Z', 10_000);
    assert.deepEqual(dataRowValues(run.find((m) => m.type === 'D')!), ['42']);
    raw.send([serialize.bind({ statement: 'missing' }), serialize.execute({}), serialize.sync()]);
    const missing = await raw.readUntil('Z', 10_000);
    assert.equal(errorFields(missing.find((m) => m.type === 'E')!).C, '42P01');
    await simple(b, 'commit');
  } finally {
    for (const client of [a, b, raw]) client.socket.destroy();
  }
});

test('named prepared statements keep working as sessions move between connections', async () => {
  const sessions = await clients(6, 'txpool-prepared');
  try {
    for (let round = 0; round < 6; round++) {
      await Promise.all(
        sessions.map(async (client, i) => {
          // Same name in every session, two different texts: a connection must never run another session's version.
          const text = i % 2 === 0 ? 'select $1::int * 2 as v' : 'select $1::int * 3 as v';
          const result = await client.query({ name: 'multiply', text, values: [round + i] });
          assert.equal(String(result.rows[0].v), String((round + i) * (i % 2 === 0 ? 2 : 3)));
        }),
      );
    }
    for (const count of await nodeConnections('txpool-prepared')) assert.ok(count <= maxPool);
  } finally {
    await endAll(sessions);
  }
});

test('session state pins a session to its connections; SET LOCAL and transaction-scoped locks do not', async () => {
  const pinning = [
    "set application_name = 'txpool-pinned-set'",
    "select set_config('application_name', 'txpool-pinned-config', false)",
    'create temporary table pinned_temp (x int)',
    'select pg_advisory_lock(4242)',
    'listen pinned_channel',
    'prepare pinned_plan as select 1',
  ];
  for (const sql of pinning) {
    const client = await cluster.connect({ application_name: 'txpool-pin' });
    try {
      await client.query(sql);
      const pids = new Set<string>();
      for (let i = 0; i < 4; i++) {
        pids.add((await rowsOf(client, 'select pg_backend_pid()'))[0][0]!);
        // Another session's statements in between must not take the pinned connection.
        const other = await cluster.connect({ application_name: 'txpool-pin' });
        await other.query('select 1');
        await other.end();
      }
      assert.equal(pids.size, 1, `${sql}: the session moved between connections`);
      if (sql.startsWith('create temporary')) assert.deepEqual(await rowsOf(client, 'select count(*) from pinned_temp'), [['0']]);
      if (sql.startsWith('prepare')) assert.deepEqual(await rowsOf(client, 'execute pinned_plan'), [['1']]);
    } finally {
      await client.end();
    }
  }
  // A setting a session changed never reaches another session through a pooled connection.
  const setter = await cluster.connect({ application_name: 'txpool-leak' });
  await setter.query("set datestyle = 'SQL, DMY'");
  await setter.end();
  const others = await clients(4, 'txpool-leak');
  try {
    for (const other of others) assert.deepEqual(await rowsOf(other, 'show datestyle'), [['ISO, MDY']]);
  } finally {
    await endAll(others);
  }
  // SET LOCAL ends with its transaction: the session still gives its connection back.
  const local = await cluster.connect({ application_name: 'txpool-local' });
  const holder = await cluster.connect({ application_name: 'txpool-local' });
  try {
    await local.query('begin');
    await local.query("set local datestyle = 'SQL, DMY'");
    await local.query("select set_config('work_mem', '8MB', true)");
    await local.query('select pg_advisory_xact_lock(77)');
    await local.query('commit');
    assert.deepEqual(await rowsOf(local, 'show datestyle'), [['ISO, MDY']]);
    await holder.query('begin');
    await holder.query('select 1');
    const other = await cluster.connect({ application_name: 'txpool-local' });
    // Both slots would be taken if `local` still held its connection; one more session runs.
    await other.query('select 1');
    await other.end();
    await holder.query('commit');
  } finally {
    await endAll([local, holder]);
  }
});

interface ProgramResult {
  code: number | null;
  output: string;
}

function run(program: string, args: string[], env: NodeJS.ProcessEnv = {}, timeoutMs = 240_000): Promise<ProgramResult> {
  return new Promise((resolvePromise, reject) => {
    const child = spawn(findPostgresProgram(program), args, { cwd: workDir, env: { ...process.env, PGCONNECT_TIMEOUT: '30', ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    child.stdout.on('data', (d) => (output += d));
    child.stderr.on('data', (d) => (output += d));
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.on('error', (error) => {
      clearTimeout(timer);
      reject(error);
    });
    child.on('close', (code) => {
      clearTimeout(timer);
      resolvePromise({ code, output });
    });
  });
}

function connectionArgs(): string[] {
  return ['-h', '127.0.0.1', '-p', String(cluster.proxy.port), '-U', 'postgres'];
}

test('psql runs a script of transactions, settings and temporary tables', async () => {
  const script = join(workDir, 'script.sql');
  writeFileSync(
    script,
    [
      'begin;',
      'insert into counters values (100, 1);',
      'update counters set n = n + 1 where id = 100;',
      'commit;',
      'select n from counters where id = 100;',
      "set search_path = public;",
      'create temporary table t (x int);',
      'insert into t values (1), (2);',
      'select sum(x) from t;',
      '',
    ].join('\n'),
  );
  const result = await run('psql', [...connectionArgs(), '-X', '-A', '-t', '-v', 'ON_ERROR_STOP=1', '-f', script, 'postgres'], { PGAPPNAME: 'txpool-psql' });
  assert.equal(result.code, 0, result.output);
  assert.deepEqual(result.output.trim().split('\n').filter((l) => /^\d+$/.test(l)), ['2', '3']);
});

test('pgbench initialises, then runs TPC-B with eight clients over two connections per node in every query mode', async () => {
  const env = { PGAPPNAME: 'txpool-pgbench' };
  const init = await run('pgbench', ['-i', '-s', '1', ...connectionArgs(), 'postgres'], env);
  assert.equal(init.code, 0, init.output);
  for (const mode of ['simple', 'extended', 'prepared']) {
    const result = await run('pgbench', ['-c', '8', '-j', '2', '-t', '50', '-M', mode, '-n', ...connectionArgs(), 'postgres'], env);
    assert.equal(result.code, 0, `-M ${mode}: ${result.output}`);
    assert.match(result.output, /number of transactions actually processed: 400\/400/, `-M ${mode}: ${result.output}`);
  }
  const summary = await cluster.onEachNode(
    `select (select sum(abalance) from pgbench_accounts), (select sum(bbalance) from pgbench_branches),
            (select sum(tbalance) from pgbench_tellers), (select count(*) from pgbench_history)`,
  );
  assert.deepEqual(summary[0], summary[1]);
  assert.equal(summary[0][0][3], '1200');
  assert.equal(summary[0][0][0], summary[0][0][1]);
});
