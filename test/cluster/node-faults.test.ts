// Nodes failing under statements, with real faults: kill -9 of a node in the middle of a COPY into a distributed
// table (the COPY fails naming the node and no node keeps any of its rows) and into a replicated table (the COPY
// completes on the nodes left, the dead one is detached), in the middle of the two-phase commit of a replicated
// write (the others commit), and a node hung with SIGSTOP in the middle of a replicated write (the health check
// detaches it and the write completes on the others). The proxy serves on.

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { killNode, signalNode } from '../support/node-faults';
import { psqlTranscript } from '../support/psql';
import { rowsOf, startTestCluster, type TestCluster } from '../support/test-cluster';

let cluster: TestCluster;
const copyRows = 1_500_000;

before(async () => {
  cluster = await startTestCluster({
    nodes: 5,
    configure: (config) => {
      config.healthCheck = { ...config.healthCheck, period: 1, timeout: 1, maxRetries: 0, retryDelay: 1 };
    },
  });
  const lines: string[] = [];
  for (let i = 1; i <= copyRows; i++) lines.push(`${i}\tsome text of row ${i}`);
  writeFileSync(join(cluster.dir, 'rows.tsv'), lines.join('\n') + '\n');
});

after(async () => {
  await cluster?.stop();
});

async function statuses(): Promise<string[]> {
  const client = await cluster.connect();
  try {
    return (await client.query('show pool_nodes')).rows.map((n: { status: string }) => n.status);
  } finally {
    await client.end();
  }
}

async function countOn(node: number, table: string): Promise<string> {
  const client = await cluster.connectDirect(node);
  try {
    return (await rowsOf(client, `select count(*) from ${table}`))[0][0]!;
  } finally {
    await client.end();
  }
}

/** Runs \copy of the rows file into `table` through the proxy, killing `victim` once the data is flowing. */
async function copyWhileKilling(table: string, victim: number): Promise<string> {
  const script = join(cluster.dir, `copy-${table}.sql`);
  writeFileSync(script, `\\copy ${table} from '${join(cluster.dir, 'rows.tsv')}'\nselect 'session goes on' as after_copy;\n`);
  const transcript = psqlTranscript(cluster.proxy.port, script, cluster.dir);
  transcript.catch(() => undefined); // awaited below, after the kill
  // The COPY is under way once the victim's copy of the table grows.
  for (let i = 0; i < 200 && Number(await countOn(victim, `pg_stat_progress_copy where relid = '${table}'::regclass`)) === 0; i++) await sleep(10);
  await killNode(cluster.nodes[victim]);
  return transcript;
}

test('kill -9 of a node mid-COPY into a distributed table: the COPY fails naming the node, no node keeps a row', async () => {
  const client = await cluster.connect();
  await client.query('create table dist_rows (id int primary key, body text)');
  await client.query("select parapool.distribute_table('dist_rows', 'id')");
  await client.end();
  const transcript = await copyWhileKilling('dist_rows', 4);
  assert.match(transcript, /ERROR:  lost connection to node 4 .* during the COPY/, transcript);
  assert.match(transcript, /-+\n session goes on\n/, 'the session goes on after the failed COPY');
  for (const node of [0, 1, 2, 3]) assert.equal(await countOn(node, 'dist_rows'), '0', `node ${node} kept none of the failed COPY's rows`);
  assert.equal((await statuses())[4], 'down');
});

test('kill -9 of a node mid-COPY into a replicated table: the COPY completes on the others, the node is detached', async () => {
  const client = await cluster.connect();
  await client.query('create table repl_rows (id int primary key, body text)');
  await client.end();
  const transcript = await copyWhileKilling('repl_rows', 3);
  assert.match(transcript, new RegExp(`COPY ${copyRows}`), transcript);
  assert.match(transcript, /-+\n session goes on\n/);
  for (const node of [0, 1, 2]) assert.equal(await countOn(node, 'repl_rows'), String(copyRows));
  assert.deepEqual((await statuses()).slice(0, 4), ['up', 'up', 'up', 'down']);
});

test('a replica killed while the commit of a replicated write waits for it to prepare: the others commit', async () => {
  const client = await cluster.connect();
  await client.query('create table committed_rows (id int primary key)');
  await client.query('begin');
  await client.query('insert into committed_rows values (1)');
  // Hung first, so the PREPARE TRANSACTION is sent and waits; then killed, so that it fails mid-commit.
  signalNode(cluster.nodes[2], 'SIGSTOP');
  const commit = client.query('commit');
  await sleep(300);
  await killNode(cluster.nodes[2]); // SIGKILL ends stopped processes too, before they answer anything
  assert.equal((await commit).command, 'COMMIT');
  for (const node of [0, 1]) assert.equal(await countOn(node, 'committed_rows'), '1', `node ${node} committed the row`);
  assert.equal((await statuses())[2], 'down');
  for (const node of [0, 1]) assert.equal(await countOn(node, 'pg_prepared_xacts'), '0', `node ${node} holds no prepared transaction`);
  await client.end();
});

test('a node hung with SIGSTOP mid-write is detached by the health check and the write completes on the others', async () => {
  const client = await cluster.connect();
  await client.query('create table hung_rows (id int primary key)');
  await client.query('insert into hung_rows values (0)');
  signalNode(cluster.nodes[1], 'SIGSTOP');
  try {
    const started = Date.now();
    await client.query('insert into hung_rows values (1)');
    const took = Date.now() - started;
    console.log(`# the write waited ${took} ms for the hung node to be detached`);
    assert.ok(took < 10_000, `the write completed after ${took} ms`);
    assert.deepEqual(await rowsOf(client, 'select array_agg(id order by id) from hung_rows'), [['{0,1}']]);
    assert.equal((await statuses())[1], 'down');
  } finally {
    signalNode(cluster.nodes[1], 'SIGCONT');
  }
  await client.end();
  assert.equal(await countOn(0, 'hung_rows'), '2');
});
