// Two parapool instances in front of the same two nodes, each with memory_cache_enabled: a write through one
// empties the other's cache before the writer sees its write end (through the nodes' NOTIFY), so no client of
// either ever reads a row older than a write already acknowledged. Checked with concurrent writers and readers on
// both, and with one instance stopped (SIGSTOP) and killed (SIGKILL) under the other's writes.

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import type { Client } from 'pg';
import { startTestCluster, type TestCluster } from '../support/test-cluster';
import { connectTo, freePort, queryInstance, restartInstance, signalInstance, startInstance, type ProxyInstance } from '../support/proxy-instances';

let cluster: TestCluster;
let a: ProxyInstance;
let b: ProxyInstance;

before(async () => {
  cluster = await startTestCluster({ nodes: 2, noProxy: true });
  const conf = (port: number) => [
    "listen_addresses = '127.0.0.1'",
    `port = ${port}`,
    ...cluster.config.backends.flatMap((node) => [`backend_hostname${node.id} = '127.0.0.1'`, `backend_port${node.id} = ${node.port}`]),
    'in_doubt_recovery_interval = 0',
    'memory_cache_enabled = on',
  ];
  const [portA, portB] = [await freePort(), await freePort()];
  a = await startInstance(cluster.dir, 'a', portA, conf(portA));
  b = await startInstance(cluster.dir, 'b', portB, conf(portB));
  await queryInstance(a, 'create table counter (id int primary key, n int not null)');
  await queryInstance(a, 'insert into counter values (1, 0), (2, 0), (3, 0)');
});

after(async () => {
  for (const instance of [a, b]) {
    if (!instance) continue;
    await signalInstance(instance, 'SIGCONT').catch(() => undefined);
    await signalInstance(instance, 'SIGTERM').catch(() => undefined);
  }
  await cluster?.stop();
});

async function value(client: Client): Promise<number> {
  return Number((await client.query('select n from counter where id = 1')).rows[0].n);
}

async function hits(instance: ProxyInstance): Promise<number> {
  return Number((await queryInstance(instance, 'SHOW pool_cache'))[0].num_cache_hits);
}

test("a write through one instance empties the other's cache before the writer sees it end", async () => {
  const writer = await connectTo(a);
  const reader = await connectTo(b);
  const hitsBefore = await hits(b);
  try {
    for (let i = 0; i < 30; i++) {
      const expected = await value(reader);
      assert.equal(await value(reader), expected); // the second read is a hit
      await writer.query('update counter set n = n + 1 where id = 1');
      assert.equal(await value(reader), expected + 1, `round ${i}`);
    }
  } finally {
    await writer.end();
    await reader.end();
  }
  assert.ok((await hits(b)) - hitsBefore >= 30, 'the reads were served from the cache');
});

test("a COMMIT whose table list is too long for one NOTIFY empties the other instance's cache", async () => {
  // 200 tables of 50-character names: the COMMIT's list of them is longer than a NOTIFY payload may be.
  const names = Array.from({ length: 200 }, (_, i) => `wide_commit_table_with_a_long_name_number_${String(i).padStart(5, '0')}`);
  const writer = await connectTo(a);
  const reader = await connectTo(b);
  try {
    for (const name of names) await writer.query(`create table ${name} (n int)`);
    const count = async () => Number((await reader.query(`select count(*) from ${names[0]}`)).rows[0].count);
    await writer.query('begin');
    for (const name of names) await writer.query(`insert into ${name} values (1)`);
    // Read before the COMMIT: the other instance caches the count that does not yet see the insert.
    assert.equal(await count(), 0);
    assert.equal(await count(), 0);
    await writer.query('commit');
    assert.equal(await count(), 1);
  } finally {
    await writer.end();
    await reader.end();
  }
});

test('concurrent writers and readers on both instances: no read is older than a write acknowledged before it began', async () => {
  // Each writer has a row of its own: two writers of one row through two proxies in replication mode may reach the
  // nodes in different orders (as with pgpool-II), with or without a cache.
  const writers = await Promise.all([connectTo(a), connectTo(b)]);
  const readers = await Promise.all([connectTo(a), connectTo(b), connectTo(a), connectTo(b)]);
  const acknowledged = [0, 0];
  let stop = false;
  let reads = 0;
  const violations: string[] = [];
  try {
    const writing = writers.map(async (writer, index) => {
      for (let i = 0; i < 50; i++) {
        const result = await writer.query(`update counter set n = n + 1 where id = ${index + 2} returning n`);
        acknowledged[index] = Number(result.rows[0].n);
      }
    });
    const reading = readers.map(async (reader, index) => {
      while (!stop) {
        const floor = [...acknowledged];
        const rows = (await reader.query('select n from counter where id in (2, 3) order by id')).rows.map((row) => Number(row.n));
        reads++;
        for (const i of [0, 1]) if (rows[i] < floor[i]) violations.push(`reader ${index} read ${rows[i]} of row ${i + 2} after ${floor[i]} was acknowledged`);
      }
    });
    await Promise.all(writing);
    stop = true;
    await Promise.all(reading);
  } finally {
    await Promise.all([...writers, ...readers].map((client) => client.end().catch(() => undefined)));
  }
  assert.deepEqual(violations, []);
  assert.ok(reads > 0);
  assert.deepEqual((await queryInstance(a, 'select n from counter where id in (2, 3) order by id')).map((row) => row.n), ['50', '50']);
  assert.ok((await hits(a)) + (await hits(b)) > 0);
});

test('an instance stopped with SIGSTOP holds up writes for at most its lease, and reads nothing stale when it resumes', async (t) => {
  const reader = await connectTo(b);
  const writer = await connectTo(a);
  try {
    const before = await value(reader);
    assert.equal(await value(reader), before);
    await signalInstance(b, 'SIGSTOP');
    const started = Date.now();
    await writer.query('update counter set n = n + 1 where id = 1');
    const waited = Date.now() - started;
    t.diagnostic(`the first write after SIGSTOP waited ${waited} ms`);
    assert.ok(waited < 10_000, `the write waited ${waited} ms`);
    await writer.query('update counter set n = n + 1 where id = 1');
    await signalInstance(b, 'SIGCONT');
    assert.equal(await value(reader), before + 2);
  } finally {
    await signalInstance(b, 'SIGCONT');
    await writer.end();
    await reader.end().catch(() => undefined);
  }
});

test('writes go on when the other instance is killed, and it starts again with an empty cache', async (t) => {
  const writer = await connectTo(a);
  try {
    await signalInstance(b, 'SIGKILL');
    const started = Date.now();
    await writer.query('update counter set n = n + 1 where id = 1');
    t.diagnostic(`the first write after SIGKILL waited ${Date.now() - started} ms`);
    await writer.query('update counter set n = n + 1 where id = 1');
    await restartInstance(b);
    const reader = await connectTo(b);
    try {
      const seen = await value(reader);
      await writer.query('update counter set n = n + 1 where id = 1');
      assert.equal(await value(reader), seen + 1);
    } finally {
      await reader.end();
    }
  } finally {
    await writer.end();
  }
});
