// Online recovery against real nodes: node 1 is killed with SIGKILL under a write load, detached, then rebuilt
// from the main node with the default scripts (pg_basebackup while writes go on, then the standby caught up and
// promoted while statements are held) and attached, the writers never stopping. Afterwards both nodes hold
// exactly the acknowledged rows, numbered alike, and sequences go on in step.

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Client } from 'pg';
import { killNode } from '../support/node-faults';
import { rowsOf, startTestCluster, type TestCluster } from '../support/test-cluster';

import { recoveryScripts as scripts } from '../../src/cluster/sandbox';

let cluster: TestCluster;

before(async () => {
  cluster = await startTestCluster({
    nodes: 2,
    configure: (config) => {
      config.recovery1stStageCommand = `${scripts}/recovery_1st_stage`;
      config.recovery2ndStageCommand = `${scripts}/recovery_2nd_stage`;
      config.recoveryTimeout = 60;
    },
  });
});

after(async () => {
  await cluster?.stop();
});

async function poolNodes(): Promise<string[]> {
  const client = await cluster.connect();
  try {
    return (await client.query('show pool_nodes')).rows.map((n: { status: string }) => n.status);
  } finally {
    await client.end();
  }
}

/** Writers that insert one row after another (some in two-statement transactions), reconnecting after errors. */
class Writers {
  readonly acknowledged = new Set<string>();
  readonly acknowledgedAt = new Map<string, number>();
  readonly errors: { at: number; code: string; message: string }[] = [];
  private running = true;
  private readonly loops: Promise<void>[] = [];

  constructor(count: number, firstWriter = 0) {
    for (let writer = firstWriter; writer < firstWriter + count; writer++) this.loops.push(this.run(writer));
  }

  private async run(writer: number): Promise<void> {
    let client: Client | null = null;
    for (let n = 0; this.running; n++) {
      try {
        if (!client) {
          client = await cluster.connect();
          client.on('error', () => undefined); // its query fails too, and is counted there
        }
        if (n % 3 === 0) {
          await client.query('begin');
          await client.query('insert into ledger (writer, n) values ($1, $2)', [writer, n]);
          await client.query('update counters set total = total + 1 where writer = $1', [writer]);
          const commit = await client.query('commit');
          if (commit.command !== 'COMMIT') throw Object.assign(new Error(`COMMIT answered ${commit.command}`), { code: 'rollback' });
        } else {
          await client.query(`insert into ledger (writer, n) values (${writer}, ${n})`);
        }
        this.acknowledged.add(`${writer}:${n}`);
        this.acknowledgedAt.set(`${writer}:${n}`, Date.now());
      } catch (error) {
        const e = error as { code?: string; message: string };
        this.errors.push({ at: Date.now(), code: e.code ?? 'none', message: e.message });
        await client?.end().catch(() => undefined);
        client = null;
        await sleep(20);
      }
    }
    await client?.end().catch(() => undefined);
  }

  async stop(): Promise<void> {
    this.running = false;
    await Promise.all(this.loops);
  }
}

test('a node killed under writes is recovered online and attached: both nodes hold every acknowledged row, alike', async () => {
  const setup = await cluster.connect();
  await setup.query('create table ledger (id serial primary key, writer int, n int, unique (writer, n))');
  await setup.query('create table counters (writer int primary key, total int)');
  await setup.query('insert into counters select g, 0 from generate_series(0, 3) g');
  await setup.end();

  const writers = new Writers(4);
  await sleep(500);
  const killedAt = Date.now();
  await killNode(cluster.nodes[1]);
  for (let i = 0; i < 100 && (await poolNodes())[1] !== 'down'; i++) await sleep(100);
  assert.deepEqual(await poolNodes(), ['up', 'down'], 'the killed node was detached');
  await sleep(500);

  // Through port 9999, as an operator would: the progress comes as NOTICEs.
  const progress: string[] = [];
  const operator = await cluster.connect();
  operator.on('notice', (notice) => progress.push(notice.message ?? ''));
  const started = Date.now();
  assert.deepEqual(await rowsOf(operator, 'select parapool.recover_node(1)'), [['t']]);
  const took = Date.now() - started;
  await operator.end();
  await sleep(500);
  await writers.stop();

  assert.deepEqual(await poolNodes(), ['up', 'up'], 'the recovered node is attached');
  assert.match(progress.join('\n'), /first stage[\s\S]*holding new statements[\s\S]*second stage[\s\S]*recovered and attached/);
  const duringRecovery = writers.errors.filter((e) => e.at >= started);
  assert.deepEqual(duringRecovery, [], 'no writer saw an error during the recovery');

  // Every acknowledged row exactly once on both nodes, with the same ids, and the counters agree.
  const rows = await cluster.onEachNode("select writer || ':' || n from ledger order by id");
  assert.deepEqual(rows[1], rows[0], 'both nodes hold the same rows with the same ids');
  const stored = new Set(rows[0].map((r) => r[0]!));
  const missing = [...writers.acknowledged].filter((key) => !stored.has(key));
  assert.deepEqual(missing, [], `acknowledged rows are stored (killed at ${killedAt}, acknowledged at ${missing.map((k) => writers.acknowledgedAt.get(k)).join(',')}; errors: ${JSON.stringify(writers.errors)})`);
  const counters = await cluster.onEachNode('select * from counters order by writer');
  assert.deepEqual(counters[1], counters[0], 'both nodes hold the same counters');

  // Sequences go on in step after the promotion: new rows get the same ids on both nodes.
  const after = await cluster.connect();
  await after.query("insert into ledger (writer, n) select 9, g from generate_series(1, 40) g");
  assert.deepEqual(await rowsOf(after, 'select count(*) from ledger where writer = 9'), [['40']]);
  await after.end();
  const tail = await cluster.onEachNode('select id, writer, n from ledger where writer = 9 order by id');
  assert.deepEqual(tail[1], tail[0]);
  console.log(`recovery took ${took} ms; ${writers.acknowledged.size} rows acknowledged; writer errors before it: ${JSON.stringify(writers.errors.map((e) => `${e.code} ${e.message}`))}`);
});

test('a node killed during its recovery stays detached with the stage named; the recovery run again succeeds', async () => {
  const writers = new Writers(2, 10);
  await sleep(300);
  await killNode(cluster.nodes[1]);
  for (let i = 0; i < 100 && (await poolNodes())[1] !== 'down'; i++) await sleep(100);
  assert.equal((await poolNodes())[1], 'down');

  // The first stage is the default one, then a pause in which the freshly started standby is killed.
  const marker = join(cluster.dir, 'first-stage-done');
  const wrapper = join(cluster.dir, 'first-stage-then-wait');
  writeFileSync(wrapper, `#!/bin/sh\n"${scripts}/recovery_1st_stage" "$@" || exit $?\ntouch "${marker}"\nsleep 3\n`, { mode: 0o755 });
  const previous = cluster.config.recovery1stStageCommand;
  cluster.config.recovery1stStageCommand = wrapper;
  const started = Date.now();
  const recovery = cluster.proxy.recoverNode(1, () => undefined);
  while (!existsSync(marker)) await sleep(50);
  await killNode(cluster.nodes[1]);
  await assert.rejects(recovery, (e: { code?: string; message: string }) => e.code === '55000' && /second stage of the recovery of node 1/.test(e.message));
  cluster.config.recovery1stStageCommand = previous;
  assert.equal((await poolNodes())[1], 'down', 'the node stays detached');
  assert.deepEqual(writers.errors.filter((e) => e.at >= started), [], 'the failed recovery cost the writers nothing');

  await cluster.proxy.recoverNode(1, () => undefined);
  await sleep(300);
  await writers.stop();
  assert.deepEqual(await poolNodes(), ['up', 'up']);
  const sums = await cluster.onEachNode("select count(*), md5(string_agg(id || ':' || writer || ':' || n, ',' order by id)) from ledger");
  assert.deepEqual(sums[1], sums[0], 'both nodes hold the same rows after the second recovery');
});

test('a connection lost while a statement waits for the insert lock leaves that statement and its transaction whole', async () => {
  const setup = await cluster.connect();
  await setup.query('create table keyed (id serial primary key, k int unique)');
  await setup.end();
  const [rowHolder, lockHolder, waiter] = await Promise.all([cluster.connect(), cluster.connect(), cluster.connect()]);
  for (const client of [rowHolder, lockHolder, waiter]) client.on('error', () => undefined);
  await rowHolder.query('begin');
  await rowHolder.query('insert into keyed (k) values (1)');
  // Holds the insert lock of keyed_id_seq while it waits on node 0 for the row holder's k = 1.
  const blocked = lockHolder.query('insert into keyed (k) values (1) on conflict (k) do nothing');
  await sleep(200);
  await waiter.query('begin');
  // Extended protocol, waiting for the insert lock with its exchange already opened to both nodes.
  const waiting = waiter.query('insert into keyed (k) values ($1)', [2]);
  await sleep(200);
  await killNode(cluster.nodes[1]);
  for (let i = 0; i < 100 && (await poolNodes())[1] !== 'down'; i++) await sleep(100);
  await rowHolder.query('commit');
  await blocked;
  assert.equal((await waiting).rowCount, 1);
  assert.equal((await waiter.query('commit')).command, 'COMMIT');
  await Promise.all([rowHolder.end(), lockHolder.end(), waiter.end()]);
  const main = await cluster.connectDirect(0);
  assert.deepEqual((await main.query('select k from keyed order by k')).rows.map((r: { k: string }) => String(r.k)), ['1', '2'], 'the waiting transaction committed its row');
  await main.end();
});
