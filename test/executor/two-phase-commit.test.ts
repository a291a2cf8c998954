// A commit across nodes whose decider crashes: the decider's transaction id must not be taken, after its
// restart, for the decision of an unrelated transaction that is handed the same id, and a name whose id the
// decider never wrote to disk is rolled back at once instead of staying prepared (with its locks) forever.

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import type { Client } from 'pg';
import { commitFailpoints } from '../../src/executor/two-phase-commit';
import { killNode } from '../support/node-faults';
import { rowsOf, startTestCluster, type TestCluster } from '../support/test-cluster';

let cluster: TestCluster;
let client: Client;

before(async () => {
  cluster = await startTestCluster({ nodes: 2 });
  client = await cluster.connect();
  await client.query('create table ledger (k int primary key, v int)');
  await client.query("select parapool.distribute_table('ledger', 'k')");
});

after(async () => {
  await client?.end().catch(() => undefined);
  await cluster?.stop();
});

/** Rows of ledger and parapool's prepared transactions on each node, read there directly. */
async function onNodes(): Promise<{ rows: string[]; prepared: string[] }> {
  const rows = await cluster.onEachNode('select count(*) from ledger');
  const prepared = await cluster.onEachNode("select count(*) from pg_prepared_xacts where gid like 'parapool:%'");
  return { rows: rows.map((r) => r[0][0]!), prepared: prepared.map((r) => r[0][0]!) };
}

test("a decider killed after the others prepared: its id handed out again after the restart does not commit them", async () => {
  commitFailpoints.afterPrepare = true;
  client.on('error', () => undefined); // the session ends as if the proxy had died
  try {
    await assert.rejects(client.query('insert into ledger select g, g from generate_series(1, 40) g'));
  } finally {
    commitFailpoints.afterPrepare = false;
  }
  await client.end().catch(() => undefined);
  const gids = (await cluster.onEachNode("select gid from pg_prepared_xacts where gid like 'parapool:%'")).flat().map((r) => r[0]!);
  assert.equal(gids.length, 1, 'the other node holds the transaction prepared');
  const [, deciderNode, xid] = /^parapool:(\d+):(\d+):/.exec(gids[0])!;
  const decider = cluster.nodes[Number(deciderNode)];

  // The decider crashes before its COMMIT: its transaction never committed.
  await killNode(decider);
  await decider.start();
  // Transactions on the restarted decider take ids; without the fence, one of them would be given the
  // decider's id, commit, and be read as the decision.
  const direct = await cluster.connectDirect(Number(deciderNode));
  let last = 0n;
  for (let i = 0; i < 50; i++) last = BigInt((await rowsOf(direct, 'select txid_current()'))[0][0]!);
  await direct.end();
  assert.ok(last > BigInt(xid), "the decider's id is behind every id handed out after the restart");

  await cluster.restartProxy();
  client = await cluster.connect();
  assert.deepEqual(await onNodes(), { rows: ['0', '0'], prepared: ['0', '0'] });
  // And a commit after all this goes through on both nodes.
  await client.query('insert into ledger select g, g from generate_series(1, 40) g');
  const placed = await onNodes();
  assert.deepEqual(placed.prepared, ['0', '0']);
  assert.equal(placed.rows.reduce((sum, n) => sum + Number(n), 0), 40);
  assert.ok(placed.rows.every((n) => n !== '0'), 'the rows are on both nodes');
  await client.query('delete from ledger');
});

test("a prepared transaction named after an id its decider never reached is rolled back at the next recovery", async () => {
  const decider = await cluster.connectDirect(0);
  const next = BigInt((await rowsOf(decider, 'select txid_current()'))[0][0]!);
  await decider.end();
  const other = await cluster.connectDirect(1);
  await other.query('begin');
  await other.query('insert into ledger values (1000001, 1)');
  await other.query(`prepare transaction 'parapool:0:${next + 1000n}:0123456789ab'`);
  await other.end();
  await client.end();
  await cluster.restartProxy();
  client = await cluster.connect();
  assert.deepEqual(await onNodes(), { rows: ['0', '0'], prepared: ['0', '0'] });
});
