// No byte sequence a client sends ends the proxy or another session: seeded, mutated sessions and random bytes
// before start-up, with the proxy answering a fresh SELECT 1 after every batch, its memory flat, no error
// reaching the last-resort handlers and no backend connection left behind. Slow and half-open clients are
// closed after authentication_timeout without starving the others.

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { connect } from 'node:net';
import { serialize } from 'pg-protocol';
import { startTestCluster, rowsOf, type TestCluster } from '../support/test-cluster';
import { errorFields, RawClient } from '../support/raw-client';
import { fuzzSchema, runFuzzCampaign } from '../support/protocol-fuzz';
import { escapedErrorCount } from '../../src/server/process-guard';
import { closeWorkerPool } from '../../src/executor/worker-pool';
import { closeDeciderFences } from '../../src/executor/decider-fence';

let cluster: TestCluster;

before(async () => {
  cluster = await startTestCluster({
    nodes: 2,
    configure: (config) => {
      // Short, so that the half-open test ends soon, yet longer than two nodes on two cores take to accept a
      // connection again after a burst of 1,000 start-ups (up to about 3 s).
      config.authenticationTimeout = 5;
    },
  });
  const client = await cluster.connect();
  for (const sql of fuzzSchema) await client.query(sql);
  await client.end();
});

after(async () => {
  await cluster?.stop();
});

async function assertAlive(context: string): Promise<void> {
  const client = await RawClient.ready(cluster.proxy.port);
  client.send(serialize.query('SELECT 1'));
  const replies = await client.readUntil('Z');
  assert.ok(replies.some((m) => m.type === 'D'), `${context}: SELECT 1 answered`);
  client.end();
  assert.equal(escapedErrorCount(), 0, `${context}: no error reached the last-resort handlers`);
}

async function waitFor(condition: () => Promise<boolean> | boolean, what: string, timeoutMs = 20000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** Client backends on each node other than the one asking. */
async function backendsPerNode(): Promise<number[]> {
  const counts = await cluster.onEachNode("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()");
  return counts.map((rows) => Number(rows[0][0]));
}

const targetMessages = Number(process.env.PARAPOOL_FUZZ_MESSAGES ?? 100_000);
const seedBase = Number(process.env.PARAPOOL_FUZZ_SEED ?? 20261202);

test(`fuzzed sessions: ${targetMessages} messages, the proxy alive after every batch, memory flat`, async (t) => {
  const totals = await runFuzzCampaign({
    port: cluster.proxy.port,
    targetMessages,
    seedBase,
    afterBatch: (batch, lastSeed) => assertAlive(`after batch ${batch} (seeds up to ${lastSeed})`),
  });
  t.diagnostic(`${totals.messages} fuzzed messages in ${totals.sessions} sessions (${totals.beforeStartup} with bytes before start-up), seeds ${seedBase}..${totals.lastSeed}`);
  t.diagnostic(`RSS after warm-up ${(totals.warmRss / 2 ** 20).toFixed(0)} MiB, peak ${(totals.peakRss / 2 ** 20).toFixed(0)} MiB`);
  assert.ok(totals.peakRss - totals.warmRss < 128 * 2 ** 20, `RSS flat: grew from ${totals.warmRss} to ${totals.peakRss}`);
  const check = await cluster.connect();
  const nodes = await rowsOf(check, 'SHOW pool_nodes');
  await check.end();
  assert.ok(nodes.every((row) => row.includes('up')), `no node detached: ${JSON.stringify(nodes)}`);
});

test('a half-open start-up is closed after authentication_timeout and does not starve others', async () => {
  const silent = Array.from({ length: 50 }, () => connect({ host: '127.0.0.1', port: cluster.proxy.port }));
  const closed = silent.map((socket) => new Promise<void>((resolvePromise) => socket.on('close', () => resolvePromise())));
  for (const socket of silent) {
    socket.on('error', () => undefined);
    socket.resume(); // reads the proxy's FATAL, so that its end of the connection arrives
    // Half a start-up packet, then silence.
    socket.write(Buffer.from([0, 0, 0, 40, 0, 3]));
  }
  const waiting = await RawClient.connect(cluster.proxy.port);
  // A start-up complete except for the password exchange never begins: trust, so an unfinished packet instead.
  waiting.send(serialize.startup({ user: 'postgres', database: 'postgres' }).subarray(0, 12));
  await assertAlive('with 51 silent clients');
  await Promise.all(closed);
  await waiting.readUntilClosed(10000);
});

test('1,000 concurrent connects and disconnects at every stage leave no backend connection behind', async () => {
  const port = cluster.proxy.port;
  const startup = serialize.startup({ user: 'postgres', database: 'postgres' });
  await Promise.all(
    Array.from({ length: 1000 }, (_, i) =>
      new Promise<void>((resolvePromise) => {
        const socket = connect({ host: '127.0.0.1', port });
        socket.on('error', () => undefined);
        socket.on('close', () => resolvePromise());
        socket.on('connect', () => {
          const stage = i % 4;
          if (stage === 0) return socket.destroy();
          if (stage === 1) return void socket.end(startup.subarray(0, 10));
          socket.write(startup);
          if (stage === 2) return void setImmediate(() => socket.destroy());
          socket.once('data', () => {
            socket.write(serialize.query('SELECT count(*) FROM fuzz_spread'));
            setTimeout(() => socket.destroy(), i % 7);
          });
        });
      }),
    ),
  );
  await waitFor(() => cluster.proxy.sessionCount === 0, 'every session to end');
  // The nodes are still forking and reaping the backends of the burst, and on two busy cores a new connection to
  // them can take seconds: once one made directly has been answered, the proxy's start-up is what is tested.
  await backendsPerNode();
  await assertAlive('after 1,000 connects');
  await waitFor(() => cluster.proxy.sessionCount === 0, 'the check session to end');
  // Every backend connection is now idle in a pool (the session's or a worker thread's): emptied, none is left.
  cluster.proxy.pool.close();
  await closeWorkerPool();
  closeDeciderFences();
  await waitFor(async () => (await backendsPerNode()).every((n) => n === 0), 'no backend connection left once the pool is emptied');
});

test('a Query before the Sync of pending extended-protocol messages joins them only when it needs no planning', async () => {
  // A read of a distributed table relayed as it is would answer from the nodes' rows side by side, and their
  // different row counts would detach a healthy node: the proxy ends the session instead.
  const spread = await RawClient.ready(cluster.proxy.port);
  spread.send([serialize.parse({ name: 'early', text: 'SELECT 1', types: [] }), serialize.query('SELECT k, count(*) FROM fuzz_spread GROUP BY k ORDER BY k')]);
  const refused = await spread.readUntilClosed();
  const error = refused.find((m) => m.type === 'E');
  assert.ok(error, 'an ErrorResponse');
  assert.equal(errorFields(error).C, '08P01');
  assert.match(errorFields(error).M, /must follow a Sync/);
  assert.ok(!refused.some((m) => m.type === 'D'), 'no rows from one node passed for the whole table');

  // A statement on a replicated table runs after the pending messages, in the same exchange, as on one server.
  const plain = await RawClient.ready(cluster.proxy.port);
  plain.send([serialize.parse({ name: 'early', text: 'SELECT 1', types: [] }), serialize.query('SELECT count(*) FROM fuzz_items')]);
  const replies = await plain.readUntil('Z');
  assert.deepEqual(replies.map((m) => m.type).join(''), '1TDCZ');
  plain.end();

  const check = await cluster.connect();
  const nodes = await rowsOf(check, 'SHOW pool_nodes');
  await check.end();
  assert.ok(nodes.every((row) => row.includes('up')), `no node detached: ${JSON.stringify(nodes)}`);
  await assertAlive('after the Query messages before a Sync');
});
