// Streaming-replication mode against a real primary and two streaming standbys (built as `parapool sandbox
// --replicas 2` builds them, with synchronous replication to ANY 1 standby): roles, writes on the primary only,
// reads on the standbys by weight (the primary's is 0 here) and never inside a transaction that wrote nor on a
// standby past delay_threshold, partition rules refused; then real faults: the primary killed with SIGKILL
// under a write load (a standby is promoted, the other follows it, every acknowledged row is on the new primary,
// the proxy serves on), the old primary rebuilt as a standby by online recovery, and a standby killed with
// SIGKILL (reads go on).

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Client } from 'pg';
import { killNode } from '../support/node-faults';
import { rowsOf, startTestCluster, type TestCluster } from '../support/test-cluster';
import { recoveryScripts } from '../../src/cluster/sandbox';

let cluster: TestCluster;
/** The standby promoted when the primary was killed (the one that had received the most WAL). */
let promotedId = -1;

before(async () => {
  cluster = await startTestCluster({
    nodes: 3,
    streaming: true,
    configure: (config) => {
      config.backends = config.backends.map((backend) => ({ ...backend, weight: backend.id === 0 ? 0 : 1 }));
      config.statementLevelLoadBalance = true;
      config.delayThreshold = 256 * 1024;
      config.recovery1stStageCommand = `${recoveryScripts}/streaming_recovery_1st_stage`;
      config.recoveryTimeout = 30;
    },
  });
});

after(async () => {
  await cluster?.stop();
});

interface PoolNode {
  node_id: string;
  status: string;
  role: string;
  pg_role: string;
  replication_delay: string;
  replication_state: string;
  replication_sync_state: string;
}

async function poolNodes(): Promise<PoolNode[]> {
  const client = await cluster.connect();
  try {
    return (await client.query('show pool_nodes')).rows as PoolNode[];
  } finally {
    await client.end();
  }
}

async function until<T>(what: string, probe: () => Promise<T | null | undefined | false>, timeoutMs = 15_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(100);
  }
}

/** Which node (by id) answers a statement: the port it serves on. */
function nodeOfPort(port: string | null): number {
  return cluster.nodes.findIndex((node) => String(node.port) === port);
}

async function servingNodes(client: Client, reads: number): Promise<Set<number>> {
  const nodes = new Set<number>();
  for (let i = 0; i < reads; i++) nodes.add(nodeOfPort((await rowsOf(client, 'SELECT inet_server_port()'))[0][0]));
  return nodes;
}

test('SHOW pool_nodes reports the primary and its streaming standbys, with their replication state', async () => {
  // A walsender reports 'async' for a moment after it starts streaming, until it has read synchronous_standby_names.
  const nodes = await until('both standbys streaming as quorum standbys', async () => {
    const rows = await poolNodes();
    return rows.slice(1).every((row) => row.replication_state === 'streaming' && row.replication_sync_state === 'quorum') && rows;
  });
  assert.deepEqual(nodes.map((row) => [row.role, row.pg_role, row.status]), [['primary', 'primary', 'up'], ['standby', 'standby', 'up'], ['standby', 'standby', 'up']]);
  assert.deepEqual(nodes.slice(1).map((row) => row.replication_sync_state), ['quorum', 'quorum']);
  assert.equal(nodes[0].replication_state, '');
});

test('a write lands on the primary alone and is read back from a standby once replayed', async () => {
  const client = await cluster.connect();
  try {
    await client.query('CREATE TABLE items (id serial PRIMARY KEY, label text, at timestamptz DEFAULT now(), r float8 DEFAULT random())');
    await client.query("INSERT INTO items (label) VALUES ('first')");
    // Functions whose value differs per node are fine here: the standbys replay the primary's values.
    await client.query("INSERT INTO items (label, r) VALUES ('second', random())");
    // write_function_list: nextval() is a write, so it reaches the primary (a standby would refuse it).
    assert.equal((await rowsOf(client, "SELECT nextval('items_id_seq')"))[0][0], '3');
    assert.deepEqual((await rowsOf(client, 'SELECT pg_is_in_recovery()'))[0], ['t']);
    await until('the rows on the standbys', async () => (await rowsOf(client, 'SELECT count(*) FROM items'))[0][0] === '2');
    assert.deepEqual(await servingNodes(client, 10), new Set([1, 2]));
    const onPrimary = await cluster.connectDirect(0);
    assert.equal((await rowsOf(onPrimary, 'SELECT count(*) FROM items'))[0][0], '2');
    await onPrimary.end();
  } finally {
    await client.end();
  }
});

test('inside a transaction, reads go to a standby until the transaction writes, then to the primary; it commits on the primary in one phase', async () => {
  const client = await cluster.connect();
  try {
    await client.query('BEGIN');
    assert.deepEqual((await rowsOf(client, 'SELECT pg_is_in_recovery()'))[0], ['t']);
    await client.query("INSERT INTO items (label) VALUES ('in a transaction')");
    for (let i = 0; i < 5; i++) assert.deepEqual((await rowsOf(client, 'SELECT pg_is_in_recovery(), count(*) FROM items'))[0], ['f', '3']);
    await client.query('COMMIT');
    const onPrimary = await cluster.connectDirect(0);
    assert.equal((await rowsOf(onPrimary, 'SELECT count(*) FROM pg_prepared_xacts'))[0][0], '0');
    assert.equal((await rowsOf(onPrimary, "SELECT count(*) FROM items WHERE label = 'in a transaction'"))[0][0], '1');
    await onPrimary.end();
    // A query that begins with a write and reads in the same transaction.
    const [, , read] = (await client.query("BEGIN; INSERT INTO items (label) VALUES ('batch'); SELECT pg_is_in_recovery(); COMMIT")) as unknown as { rows: string[][] }[];
    assert.deepEqual(read.rows[0], { pg_is_in_recovery: 'f' });
  } finally {
    await client.end();
  }
});

test('partition rules are refused in streaming-replication mode', async () => {
  const client = await cluster.connect();
  try {
    await assert.rejects(client.query("SELECT parapool.distribute_table('items', 'id')"), (error: { code?: string; hint?: string }) => error.code === '0A000' && /native_replication/.test(error.hint ?? ''));
  } finally {
    await client.end();
  }
});

test('a standby whose replay is paused past delay_threshold gets no reads until it catches up', async () => {
  const paused = await cluster.connectDirect(2);
  const client = await cluster.connect();
  try {
    await paused.query('SELECT pg_wal_replay_pause()');
    await client.query("CREATE TABLE filler AS SELECT g, repeat('x', 500) AS pad FROM generate_series(1, 4000) AS g");
    await until('node 2 measured behind', async () => Number((await poolNodes())[2].replication_delay) > 256 * 1024);
    assert.deepEqual(await servingNodes(client, 20), new Set([1]));
    await paused.query('SELECT pg_wal_replay_resume()');
    await until('node 2 caught up', async () => (await poolNodes())[2].replication_delay === '0');
    assert.deepEqual(await servingNodes(client, 20), new Set([1, 2]));
  } finally {
    await paused.query('SELECT pg_wal_replay_resume()').catch(() => undefined);
    await paused.end();
    await client.end();
  }
});

test('the primary killed with SIGKILL under a write load: the standby is promoted, no acknowledged row is lost', async () => {
  const setup = await cluster.connect();
  await setup.query('CREATE TABLE acked (id int PRIMARY KEY, writer int)');
  await setup.end();
  const acknowledged: number[] = [];
  const errors: string[] = [];
  let killedAt = 0;
  let restoredAt = 0;
  let running = true;
  const writer = async (id: number) => {
    let client: Client | null = null;
    for (let n = 0; running; n++) {
      const key = id * 1_000_000 + n;
      const startedAt = Date.now();
      try {
        if (!client) {
          client = await cluster.connect();
          client.on('error', () => undefined); // a session ended by the proxy between statements
        }
        await client.query('INSERT INTO acked VALUES ($1, $2)', [key, id]);
        acknowledged.push(key);
        // Served again: an insert sent after the kill was acknowledged (one in flight may be answered later).
        if (killedAt > 0 && startedAt > killedAt && restoredAt === 0) restoredAt = Date.now();
      } catch (error) {
        errors.push(`${(error as { code?: string }).code ?? ''} ${(error as Error).message}`);
        await client?.end().catch(() => undefined);
        client = null;
        await sleep(50);
      }
    }
    await client?.end().catch(() => undefined);
  };
  const writers = [0, 1, 2, 3].map(writer);
  await until('writes under way', async () => acknowledged.length > 200);
  const before = acknowledged.length;
  // killNode sends its signals before its first await: an insert begun after this line meets a dead primary.
  killedAt = Date.now();
  await killNode(cluster.nodes[0]);
  await until('writes served again', async () => restoredAt > 0, 30_000);
  await sleep(1000);
  running = false;
  await Promise.all(writers);
  const nodes = await poolNodes();
  promotedId = nodes.findIndex((row) => row.role === 'primary');
  const otherId = 3 - promotedId;
  assert.deepEqual(nodes.map((row) => row.status), ['up', 'up', 'up'].map((status, id) => (id === 0 ? 'down' : status)));
  assert.deepEqual([nodes[promotedId].role, nodes[otherId].role], ['primary', 'standby']);
  // The other standby follows the new primary (its commits waited for it: synchronous replication).
  await until('the other standby streaming from the new primary', async () => (await poolNodes())[otherId].replication_state === 'streaming');
  const promoted = await cluster.connectDirect(promotedId);
  try {
    assert.equal((await rowsOf(promoted, 'SELECT pg_is_in_recovery()'))[0][0], 'f');
    const found = await rowsOf(promoted, 'SELECT count(*) FROM acked WHERE id = ANY($1::int[])', [acknowledged]);
    const lost = acknowledged.length - Number(found[0][0]);
    console.log(`failover: kill -> an insert sent after it acknowledged ${restoredAt - killedAt} ms later; ${acknowledged.length} rows acknowledged (${before} before the kill), ${lost} lost; ${errors.length} errors seen by writers`);
    assert.equal(lost, 0);
  } finally {
    await promoted.end();
  }
  // The proxy serves on: a new session writes (through the new primary) and reads.
  const client = await cluster.connect();
  await client.query('INSERT INTO acked VALUES (-1, -1)');
  assert.deepEqual((await rowsOf(client, 'SELECT 1'))[0], ['1']);
  await client.end();
});

test('online recovery rebuilds the old primary as a standby of the new one', async () => {
  const client = await cluster.connect();
  try {
    await client.query('SELECT parapool.recover_node(0)');
    await client.query("INSERT INTO items (label) VALUES ('after recovery')");
    const nodes = await until('node 0 streaming', async () => {
      const rows = await poolNodes();
      return rows[0].replication_state === 'streaming' && rows;
    });
    assert.deepEqual(nodes.map((row) => [row.status, row.role]), nodes.map((_, id) => ['up', id === promotedId ? 'primary' : 'standby']));
    const rebuilt = await cluster.connectDirect(0);
    await until('the new row on node 0', async () => (await rowsOf(rebuilt, "SELECT count(*) FROM items WHERE label = 'after recovery'"))[0][0] === '1');
    assert.equal((await rowsOf(rebuilt, 'SELECT pg_is_in_recovery()'))[0][0], 't');
    await rebuilt.end();
  } finally {
    await client.end();
  }
});

test('a standby killed with SIGKILL is detached and reads go on elsewhere', async () => {
  const client = await cluster.connect();
  try {
    // Node 0 is a standby now, with weight 0: reads go to the primary and the other standby, then to the primary.
    const standby = 3 - promotedId;
    assert.deepEqual(await servingNodes(client, 20), new Set([1, 2]));
    await killNode(cluster.nodes[standby]);
    for (let i = 0; i < 20; i++) assert.equal((await rowsOf(client, 'SELECT count(*) > 0 FROM items'))[0][0], 't');
    assert.deepEqual(await servingNodes(client, 10), new Set([promotedId]));
    await until('the standby detached', async () => (await poolNodes())[standby].status === 'down');
  } finally {
    await client.end();
  }
});

test('a switchover (parapool.promote_node) makes the chosen standby the primary; writes go on there, nothing lost', async () => {
  const client = await cluster.connect();
  try {
    await assert.rejects(client.query(`SELECT parapool.promote_node(${3 - promotedId})`), { code: '55000' }, 'a detached standby is refused');
    assert.deepEqual(await rowsOf(client, `SELECT parapool.promote_node(${promotedId})`), [['f']], 'the primary already is');
    assert.deepEqual(await rowsOf(client, 'SELECT parapool.promote_node(0)'), [['t']]);
  } finally {
    await client.end();
  }
  const nodes = await poolNodes();
  assert.deepEqual([nodes[0].status, nodes[0].role], ['up', 'primary']);
  assert.equal(nodes[promotedId].status, 'down');
  const after = await cluster.connect();
  try {
    await after.query('INSERT INTO acked VALUES (-2, -2)');
    const direct = await cluster.connectDirect(0);
    assert.deepEqual(await rowsOf(direct, 'SELECT pg_is_in_recovery(), count(*) FILTER (WHERE id IN (-1, -2)) FROM acked'), [['f', '2']]);
    await direct.end();
  } finally {
    await after.end();
  }
});
