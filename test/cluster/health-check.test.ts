// Health checks, failover and failback commands, attach and detach by hand, and pgpool_status, against real
// faults: a postmaster stopped with SIGSTOP (it accepts TCP and answers nothing) and one killed with kill -9 are
// detached within period + timeout x (retries + 1) + retry delays; failover_command and failback_command run
// with their placeholders expanded; a read that needs the lost node's rows fails with 08006 naming it while one
// pinned to another node's key succeeds; the node states survive a proxy restart unless -D discards them.

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Client } from 'pg';
import { loadParser } from '../../src/planner/sql-parser';
import { expandPlaceholders } from '../../src/cluster/failover-command';
import type { BackendNode } from '../../src/cluster/backend-node';
import { emptyBackendStats } from '../../src/cluster/statement-activity';
import { rowsOf, startTestCluster, type TestCluster } from '../support/test-cluster';

let cluster: TestCluster;
let commandLog: string;

const period = 1;
const timeout = 1;
const retries = 1;
const retryDelay = 1;
/** The longest a fault may go unnoticed: a period, then every attempt timing out, with the delays between. */
const detectionBoundMs = (period + timeout * (retries + 1) + retryDelay * retries) * 1000;
const slackMs = 2000;
const placeholders = '%d %h %p %D %m %H %M %P %r %R %N %S %%';

const sleep = (ms: number) => new Promise((resolvePromise) => setTimeout(resolvePromise, ms));

before(async () => {
  await loadParser();
  cluster = await startTestCluster({
    nodes: 2,
    configure: (config) => {
      commandLog = join(config.logdir, 'commands.log');
      config.healthCheck = { ...config.healthCheck, period, timeout, maxRetries: retries, retryDelay };
      config.failoverCommand = `echo "failover ${placeholders}" >> '${commandLog}'`;
      config.failbackCommand = `echo "failback ${placeholders}" >> '${commandLog}'`;
    },
  });
  const client = await cluster.connect();
  await client.query('create table facts (id int primary key, amount int)');
  await client.query("select parapool.distribute_table('facts', 'id')");
  await client.query('insert into facts select g, g from generate_series(1, 500) g');
  await client.end();
});

after(async () => {
  for (const node of cluster?.nodes ?? []) {
    try {
      node.signalPostmaster('SIGCONT');
    } catch {
      // not running
    }
  }
  await cluster?.stop();
});

async function waitFor(what: string, predicate: () => boolean | Promise<boolean>, timeoutMs = 20_000): Promise<void> {
  for (const deadline = Date.now() + timeoutMs; !(await predicate()); await sleep(20)) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
  }
}

function node(id: number): BackendNode {
  return cluster.proxy.cluster.nodes[id];
}

/** The line a command template writes for a change of `id`, with node 0 the main node before and after. */
function expectedLine(kind: 'failover' | 'failback', id: number): string {
  const zero = cluster.config.backends[0];
  const changed = cluster.config.backends[id];
  return `${kind} ${id} ${changed.host} ${changed.port} ${changed.dataDirectory} 0 ${zero.host} 0 0 ${zero.port} ${zero.dataDirectory} ${zero.host} ${zero.port} %`;
}

function commandLines(): string[] {
  return existsSync(commandLog) ? readFileSync(commandLog, 'utf8').split('\n').filter((l) => l !== '') : [];
}

async function waitForLines(count: number): Promise<string[]> {
  await waitFor(`${count} command lines`, () => commandLines().length >= count);
  return commandLines();
}

async function poolNodes(client?: Client): Promise<{ status: string; status_reason: string }[]> {
  const own = client ?? (await cluster.connect());
  const rows = (await own.query('show pool_nodes')).rows;
  if (!client) await own.end();
  return rows;
}

async function attach(id: number): Promise<string> {
  const client = await cluster.connect();
  const result = await rowsOf(client, `select parapool.attach_node(${id})`);
  await client.end();
  return String(result[0][0]);
}

test('placeholders expand as pgpool-II expands them, %% to one %, unknown ones kept', () => {
  const a: BackendNode = { id: 1, host: 'h1', port: 5433, weight: 1, dataDirectory: '/d1', flags: { allowToFailover: true, alwaysPrimary: false }, applicationName: '', role: 'unknown', replication: { delayBytes: null, delayMs: null, state: '', syncState: '' }, status: 'down', statusChangedAt: new Date(), downReason: null, selectCount: 0, stats: emptyBackendStats() };
  const b: BackendNode = { ...a, id: 0, host: 'h0', port: 5432, dataDirectory: '/d0', status: 'up' };
  assert.equal(expandPlaceholders(`x ${placeholders} %z %`, { node: a, oldMain: b, newMain: b }), 'x 1 h1 5433 /d1 0 h0 0 0 5432 /d0 h0 5432 % %z %');
  assert.equal(expandPlaceholders('%d %m %H %M %P %N %S', { node: b, oldMain: b, newMain: null }), '0 -1  0 0 h0 5432');
});

test('SHOW pool_health_check_stats counts the checks of every node with pgpool-II columns', async () => {
  await waitFor('two successful checks of each node', () => cluster.proxy.healthChecker.stats.every((s) => s.successCount >= 2));
  const client = await cluster.connect();
  const result = await client.query('show pool_health_check_stats');
  await client.end();
  assert.deepEqual(result.fields.map((f) => f.name), [
    'node_id', 'hostname', 'port', 'status', 'role', 'last_status_change', 'total_count', 'success_count', 'fail_count', 'skip_count',
    'retry_count', 'average_retry_count', 'max_retry_count', 'max_duration', 'min_duration', 'average_duration', 'last_health_check',
    'last_successful_health_check', 'last_skip_health_check', 'last_failed_health_check',
  ]);
  assert.deepEqual(result.rows.map((r) => [r.node_id, r.status, r.role, r.fail_count]), [['0', 'up', 'main', '0'], ['1', 'up', 'replica', '0']]);
  for (const row of result.rows) {
    assert.ok(Number(row.success_count) >= 2 && Number(row.total_count) >= Number(row.success_count));
    assert.ok(Number(row.max_duration) >= Number(row.min_duration) && Number(row.max_duration) < timeout * 1000);
    assert.notEqual(row.last_successful_health_check, '');
  }
});

test('a postmaster stopped with SIGSTOP is detached by the health check within its bound; failover_command runs', async () => {
  const onZero = (await pinnedOn(0))[0];
  const client = await cluster.connect();
  const faultAt = Date.now();
  cluster.nodes[1].signalPostmaster('SIGSTOP');
  try {
    await waitFor('node 1 detached', () => node(1).status === 'down', detectionBoundMs + slackMs + 5000);
    const detectedMs = node(1).statusChangedAt.getTime() - faultAt;
    console.log(`# SIGSTOP: detached ${detectedMs} ms after the fault (bound ${detectionBoundMs} ms + ${slackMs} ms slack)`);
    assert.ok(detectedMs <= detectionBoundMs + slackMs, `detached after ${detectedMs} ms`);
    assert.match(node(1).downReason ?? '', /^health check failed 2 times on node 1 .*no answer to a start-up within 1 s/);
    assert.deepEqual(await waitForLines(1), [expectedLine('failover', 1)]);
    const stats = cluster.proxy.healthChecker.stats[1];
    assert.ok(stats.failCount === 1 && stats.retryCount >= 1 && stats.lastFailedHealthCheck !== null);
    // The session goes on without the node.
    assert.deepEqual(await rowsOf(client, `select amount from facts where id = ${onZero}`), [[String(onZero)]]);
  } finally {
    cluster.nodes[1].signalPostmaster('SIGCONT');
  }
  await client.end();
  await waitFor('a skipped check of the node out of service', () => cluster.proxy.healthChecker.stats[1].skipCount > 0);
  assert.equal(await attach(1), 't');
  assert.equal(node(1).status, 'up');
  assert.deepEqual((await waitForLines(2))[1], expectedLine('failback', 1));
});

/** Ids of facts rows that node `id` holds, read on the node itself. */
async function pinnedOn(id: number): Promise<number[]> {
  const direct = await cluster.connectDirect(id);
  const rows = await rowsOf(direct, 'select id from facts order by id limit 5');
  await direct.end();
  return rows.map((r) => Number(r[0]));
}

test('a postmaster killed with kill -9 is detached; a read needing its rows fails with 08006, one pinned to the other node succeeds', async () => {
  const onZero = (await pinnedOn(0))[0];
  const onOne = (await pinnedOn(1))[0];
  const direct = await cluster.connectDirect(1);
  await direct.query('checkpoint'); // the test nodes run with synchronous_commit off
  await direct.end();
  const client = await cluster.connect();
  const lines = commandLines().length;
  const faultAt = Date.now();
  await cluster.nodes[1].crash();
  await waitFor('node 1 detached', () => node(1).status === 'down', detectionBoundMs + slackMs + 5000);
  const detectedMs = node(1).statusChangedAt.getTime() - faultAt;
  console.log(`# kill -9: detached ${detectedMs} ms after the fault (${node(1).downReason})`);
  assert.ok(detectedMs <= detectionBoundMs + slackMs, `detached after ${detectedMs} ms`);
  assert.deepEqual((await waitForLines(lines + 1)).slice(lines), [expectedLine('failover', 1)]);

  await assert.rejects(client.query('select count(*) from facts'), (e: { code?: string; message: string }) => e.code === '08006' && /node 1 \(127\.0\.0\.1:\d+\)/.test(e.message));
  assert.deepEqual(await rowsOf(client, `select amount from facts where id = ${onZero}`), [[String(onZero)]]);
  await assert.rejects(client.query(`select amount from facts where id = ${onOne}`), (e: { code?: string; message: string }) => e.code === '08006' && /node 1/.test(e.message));
  const fresh = await cluster.connect();
  assert.deepEqual(await rowsOf(fresh, `select amount from facts where id = ${onZero}`), [[String(onZero)]]);

  // Restarted and attached by hand: up again, failback_command ran, and sessions read every node's rows, the
  // ones open since before the attach included (they connect to the node before their next statement).
  await cluster.nodes[1].start();
  assert.equal(await attach(1), 't');
  assert.equal((await poolNodes())[1].status, 'up');
  assert.deepEqual((await waitForLines(lines + 2)).slice(lines + 1), [expectedLine('failback', 1)]);
  for (const session of [client, fresh, await cluster.connect()]) {
    assert.deepEqual(await rowsOf(session, 'select count(*), sum(amount) from facts'), [['500', '125250']]);
    await session.end();
  }
});

test('attach and detach by hand: the last node in service is refused, as are unknown nodes and calls inside a transaction', async () => {
  const client = await cluster.connect();
  assert.deepEqual(await rowsOf(client, 'select parapool.detach_node(1)'), [['t']]);
  assert.deepEqual(await rowsOf(client, 'select parapool.detach_node(1)'), [['f']], 'already out of service');
  assert.match((await poolNodes(client))[1].status_reason, /detached by hand/);
  await assert.rejects(client.query('select parapool.detach_node(0)'), (e: { code?: string; message: string }) => e.code === '55000' && /node 0 .* is the last node in service/.test(e.message));
  assert.equal(node(0).status, 'up');
  await assert.rejects(client.query('select parapool.attach_node(7)'), (e: { code?: string; message: string }) => e.code === '22023' && /there is no node 7/.test(e.message));
  await assert.rejects(client.query("select parapool.attach_node('x')"), (e: { code?: string }) => e.code === '22023');
  await client.query('begin');
  await assert.rejects(client.query('select parapool.attach_node(1)'), (e: { code?: string }) => e.code === '25001');
  await client.query('rollback');
  assert.deepEqual(await rowsOf(client, 'select parapool.attach_node(1)'), [['t']]);
  assert.deepEqual(await rowsOf(client, 'select parapool.attach_node(1)'), [['f']], 'already in service');
  // node-postgres reads the boolean column as a boolean.
  const typed = await cluster.connect({ types: undefined });
  assert.deepEqual((await typed.query('select parapool.attach_node(1)')).rows, [{ attach_node: false }]);
  await typed.end();
  await client.query("create role plain_user login");
  const plain = await cluster.connect({ user: 'plain_user' });
  await assert.rejects(plain.query('select parapool.detach_node(1)'), (e: { code?: string }) => e.code === '42501');
  await plain.end();
  await client.query('drop role plain_user');
  await client.end();
});

test('pgpool_status keeps a detached node down across a proxy restart; -D (discard status) starts it up', async () => {
  const before = commandLines().length;
  const client = await cluster.connect();
  await client.query('select parapool.detach_node(1)');
  await client.end();
  const statusFile = join(cluster.config.logdir, 'pgpool_status');
  assert.equal(readFileSync(statusFile, 'utf8'), 'up\ndown\n');
  const lines = (await waitForLines(before + 1)).length;
  await cluster.restartProxy((config) => (config.discardStatus = false));
  assert.deepEqual((await poolNodes()).map((n) => n.status), ['up', 'down']);
  assert.match((await poolNodes())[1].status_reason, /down in pgpool_status/);
  await sleep(300);
  assert.equal(commandLines().length, lines, 'a node down since the last run runs no failover_command');
  await cluster.restartProxy((config) => (config.discardStatus = true));
  assert.deepEqual((await poolNodes()).map((n) => n.status), ['up', 'up']);
  assert.equal(readFileSync(statusFile, 'utf8'), 'up\nup\n');
});

test('parapool detach-node and attach-node talk to the running proxy on its port', async () => {
  const mainJs = join(__dirname, '..', '..', 'src', 'cli', 'main.js');
  const run = (args: string[]) =>
    new Promise<{ code: number | null; out: string }>((resolvePromise) => {
      const child = spawn(process.execPath, [mainJs, ...args], { stdio: ['ignore', 'pipe', 'pipe'], cwd: cluster.dir });
      let out = '';
      child.stdout.on('data', (d) => (out += d));
      child.stderr.on('data', (d) => (out += d));
      child.once('close', (code) => resolvePromise({ code, out }));
    });
  const port = String(cluster.proxy.port);
  assert.deepEqual(await run(['detach-node', '1', '--port', port]), { code: 0, out: 'node 1 detached\n' });
  assert.equal(node(1).status, 'down');
  assert.deepEqual(await run(['detach-node', '0', '--port', port]), { code: 1, out: 'parapool: node 0 (127.0.0.1:' + cluster.config.backends[0].port + ') is the last node in service and cannot be detached\n' });
  assert.deepEqual(await run(['attach-node', '1', '--port', port]), { code: 0, out: 'node 1 attached\n' });
  assert.equal(node(1).status, 'up');
});
