// Online recovery against real nodes: node 1 is killed with SIGKILL under a write load, detached, then rebuilt
// from the main node with the default scripts (pg_basebackup while writes go on, then the standby caught up and
// promoted while statements are held) and attached, the writers never stopping. Afterwards both nodes hold
// exactly the acknowledged rows, numbered alike, and sequences go on in step.

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
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
  readonly errors: { at: number; code: string; message: string }[] = [];
  private running = true;
  private readonly loops: Promise<void>[] = [];

  constructor(count: number) {
    for (let writer = 0; writer < count; writer++) this.loops.push(this.run(writer));
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
          await client.query('commit');
        } else {
          await client.query(`insert into ledger (writer, n) values (${writer}, ${n})`);
        }
        this.acknowledged.add(`${writer}:${n}`);
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
  await killNode(cluster.nodes[1]);
  for (let i = 0; i < 100 && (await poolNodes())[1] !== 'down'; i++) await sleep(100);
  assert.deepEqual(await poolNodes(), ['up', 'down'], 'the killed node was detached');
  await sleep(500);

  const progress: string[] = [];
  const started = Date.now();
  await cluster.proxy.recoverNode(1, (message) => progress.push(message));
  const took = Date.now() - started;
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
  for (const key of writers.acknowledged) assert.ok(stored.has(key), `acknowledged row ${key} is stored`);
  const counters = await cluster.onEachNode('select * from counters order by writer');
  assert.deepEqual(counters[1], counters[0], 'both nodes hold the same counters');

  // Sequences go on in step after the promotion: new rows get the same ids on both nodes.
  const after = await cluster.connect();
  await after.query("insert into ledger (writer, n) select 9, g from generate_series(1, 40) g");
  assert.deepEqual(await rowsOf(after, 'select count(*) from ledger where writer = 9'), [['40']]);
  await after.end();
  const tail = await cluster.onEachNode('select id, writer, n from ledger where writer = 9 order by id');
  assert.deepEqual(tail[1], tail[0]);
  console.log(`recovery took ${took} ms; ${writers.acknowledged.size} rows acknowledged; writer errors before it: ${writers.errors.length}`);
});
