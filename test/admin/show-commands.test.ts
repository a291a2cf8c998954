// The SQL admin commands on the proxy's port against a real 2-node cluster: pgpool-II 4.3's columns in its order,
// values that follow what the proxy did (statement counters, sessions, pooled connections), parapool's rules with
// the rows each node holds, and the statements running in other sessions with their fragments.

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import type { Client } from 'pg';
import { loadParser } from '../../src/planner/sql-parser';
import { parameterNames } from '../../src/config/config';
import { startTestCluster, type TestCluster } from '../support/test-cluster';

let cluster: TestCluster;
let client: Client;

before(async () => {
  await loadParser();
  cluster = await startTestCluster({ nodes: 2 });
  client = await cluster.connect();
  await client.query('create table facts (id int primary key, amount int)');
  await client.query("select parapool.distribute_table('facts', 'id')");
  await client.query('insert into facts select g, g from generate_series(1, 40) g');
  await client.query('create table plain (k int primary key)');
});

after(async () => {
  await client?.end();
  await cluster?.stop();
});

async function show(name: string, on: Client = client): Promise<{ columns: string[]; rows: Record<string, string>[] }> {
  const result = await on.query(`SHOW ${name}`);
  return { columns: result.fields.map((f) => f.name), rows: result.rows };
}

const columns: Record<string, string[]> = {
  pool_nodes: ['node_id', 'hostname', 'port', 'status', 'pg_status', 'lb_weight', 'role', 'pg_role', 'select_cnt', 'load_balance_node', 'replication_delay', 'replication_state', 'replication_sync_state', 'last_status_change', 'status_reason'],
  pool_processes: ['pool_pid', 'start_time', 'client_connection_count', 'database', 'username', 'backend_connection_time', 'pool_counter', 'status'],
  pool_pools: [
    'pool_pid', 'start_time', 'client_connection_count', 'pool_id', 'backend_id', 'database', 'username', 'backend_connection_time', 'client_connection_time',
    'client_disconnection_time', 'client_idle_duration', 'majorversion', 'minorversion', 'pool_counter', 'pool_backendpid', 'pool_connected', 'status',
  ],
  pool_version: ['pool_version'],
  pool_status: ['item', 'value', 'description'],
  pool_health_check_stats: [
    'node_id', 'hostname', 'port', 'status', 'role', 'last_status_change', 'total_count', 'success_count', 'fail_count', 'skip_count', 'retry_count',
    'average_retry_count', 'max_retry_count', 'max_duration', 'min_duration', 'average_duration', 'last_health_check', 'last_successful_health_check',
    'last_skip_health_check', 'last_failed_health_check',
  ],
  pool_backend_stats: ['node_id', 'hostname', 'port', 'status', 'role', 'select_cnt', 'insert_cnt', 'update_cnt', 'delete_cnt', 'ddl_cnt', 'other_cnt', 'panic_cnt', 'fatal_cnt', 'error_cnt'],
  pool_cache: ['num_cache_hits', 'num_selects', 'cache_hit_ratio', 'num_hash_entries', 'used_hash_entries', 'num_cache_entries', 'used_cache_entries_size', 'free_cache_entries_size', 'fragment_cache_entries_size'],
  parapool_rules: ['table_name', 'distribution', 'method', 'key_column', 'colocation_group', 'node_count', 'rows_per_node', 'total_rows'],
  parapool_queries: ['pool_pid', 'query_start', 'query_elapsed_ms', 'query', 'node_id', 'tier', 'plan', 'step', 'state', 'elapsed_ms', 'rows'],
};

test('every admin command answers with its columns, in order, in upper or lower case', async () => {
  for (const [name, expected] of Object.entries(columns)) {
    assert.deepEqual((await show(name)).columns, expected, name);
    assert.deepEqual((await show(name.toUpperCase())).columns, expected, `${name} in upper case`);
  }
});

test('a SHOW of a setting still reaches the nodes', async () => {
  await client.query("set work_mem = '7MB'");
  assert.equal((await client.query('show work_mem')).rows[0].work_mem, '7MB');
  await client.query('reset work_mem');
});

test('pool_nodes, pool_version and pool_cache', async () => {
  const nodes = (await show('pool_nodes')).rows;
  assert.deepEqual(nodes.map((n) => [n.node_id, n.status, n.pg_status, n.role]), [['0', 'up', 'up', 'main'], ['1', 'up', 'up', 'replica']]);
  assert.match(nodes[0].last_status_change, /^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d$/);
  assert.match((await show('pool_version')).rows[0].pool_version, /^\d+\.\d+\.\d+ \(parapool\)$/);
  assert.deepEqual(Object.values((await show('pool_cache')).rows[0]), ['0', '0', '0.00', '0', '0', '0', '0', '0', '0']);
});

test('pool_backend_stats counts statements on the nodes they ran on, and the nodes\' errors', async () => {
  const counts = async () => (await show('pool_backend_stats')).rows.map((r) => ({ select: Number(r.select_cnt), insert: Number(r.insert_cnt), update: Number(r.update_cnt), ddl: Number(r.ddl_cnt), other: Number(r.other_cnt), error: Number(r.error_cnt) }));
  const before = await counts();
  await client.query('insert into plain values (1), (2)');
  await client.query('update plain set k = k + 10');
  await client.query('create index plain_k on plain (k)');
  await client.query('begin');
  await client.query('commit');
  await assert.rejects(client.query('select * from no_such_table'));
  await client.query({ text: 'select $1::int', values: [1] });
  const after = await counts();
  for (const node of [0, 1]) {
    assert.equal(after[node].insert - before[node].insert, 1, `node ${node} ran the INSERT`);
    assert.equal(after[node].update - before[node].update, 1, `node ${node} ran the UPDATE`);
    assert.equal(after[node].ddl - before[node].ddl, 1, `node ${node} ran the CREATE INDEX`);
    assert.equal(after[node].other - before[node].other, 2, `node ${node} ran BEGIN and COMMIT`);
  }
  // Reads go to one node each: two SELECTs (one failed, one through the extended protocol) on the nodes together.
  assert.equal(after[0].select + after[1].select - before[0].select - before[1].select, 2);
  assert.equal(after[0].error + after[1].error - before[0].error - before[1].error, 1, 'the failed SELECT');

  const distributedBefore = await counts();
  await client.query('select count(*) from facts');
  const distributedAfter = await counts();
  for (const node of [0, 1]) assert.equal(distributedAfter[node].select - distributedBefore[node].select, 1, `node ${node} ran a fragment of the distributed read`);
});

test('pool_processes and pool_pools show each session and its node connections', async () => {
  const other = await cluster.connect();
  try {
    const pid = (other as unknown as { processID: number }).processID;
    await other.query('begin');
    const processes = (await show('pool_processes')).rows;
    const mine = processes.find((p) => Number(p.pool_pid) === pid);
    assert.ok(mine, `pool_processes lists the session whose BackendKeyData said ${pid}`);
    assert.equal(mine.database, 'postgres');
    assert.equal(mine.username, 'postgres');
    assert.equal(mine.status, 'Idle in transaction');
    assert.equal(mine.client_connection_count, '1');
    assert.match(mine.start_time, /^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d$/);
    assert.equal(processes.find((p) => Number(p.pool_pid) === (client as unknown as { processID: number }).processID)?.status, 'Execute command');

    const pools = (await show('pool_pools')).rows.filter((p) => Number(p.pool_pid) === pid);
    assert.deepEqual(pools.map((p) => p.backend_id), ['0', '1']);
    const direct = await cluster.onEachNode("select string_agg(pid::text, ',') from pg_stat_activity where backend_type = 'client backend'");
    pools.forEach((p, node) => {
      assert.ok(String(direct[node][0][0]).split(',').includes(p.pool_backendpid), `node ${node} runs backend ${p.pool_backendpid}`);
      assert.equal(p.pool_connected, '1');
      assert.equal(p.majorversion, '3');
    });
    await other.query('commit');
  } finally {
    await other.end();
  }
  // The ended session's connections went back to the pool, where they wait for the next session.
  await new Promise((resolve) => setTimeout(resolve, 200));
  const idle = (await show('pool_pools')).rows.filter((p) => p.status === 'Wait for connection');
  assert.ok(idle.length >= 2, 'the pool keeps the connections of the session that ended');
  assert.ok(idle.every((p) => p.pool_connected === '0' && p.database === 'postgres'));
});

test('pool_status lists every configuration parameter with its value', async () => {
  const rows = (await show('pool_status')).rows;
  const items = new Map(rows.map((r) => [r.item, r]));
  for (const name of parameterNames) {
    assert.ok(items.has(name), `pool_status lists ${name}`);
    assert.notEqual(items.get(name)!.description, '', `${name} has a description`);
  }
  assert.equal(items.get('num_init_children')!.value, String(cluster.config.numInitChildren));
  assert.equal(items.get('load_balance_mode')!.value, 'on');
  assert.equal(items.get('backend_port1')!.value, String(cluster.nodes[1].port));
  assert.ok(items.has('health_check_period'));
});

test('parapool_rules shows each rule and the rows each node holds', async () => {
  const rows = (await show('parapool_rules')).rows;
  const facts = rows.find((r) => r.table_name === 'public.facts');
  assert.ok(facts);
  assert.equal(facts.distribution, 'distributed');
  assert.equal(facts.method, 'hash');
  assert.equal(facts.key_column, 'id');
  assert.equal(facts.node_count, '2');
  const perNode = facts.rows_per_node.split(',').map((entry) => entry.split(':'));
  assert.deepEqual(perNode.map(([node]) => node), ['0', '1']);
  const direct = await cluster.onEachNode('select count(*) from facts');
  assert.deepEqual(perNode.map(([, count]) => count), direct.map((rows) => rows[0][0]));
  assert.equal(perNode.reduce((sum, [, count]) => sum + Number(count), 0), 40);
  assert.equal(facts.total_rows, '40');

  // Inside a transaction the session's own writes count.
  await client.query('begin');
  await client.query('insert into facts values (1000, 1)');
  assert.equal((await show('parapool_rules')).rows.find((r) => r.table_name === 'public.facts')!.total_rows, '41');
  await client.query('rollback');
});

test('parapool_queries shows a distributed statement running in another session, with its fragments', async () => {
  const other = await cluster.connect();
  try {
    const pid = (other as unknown as { processID: number }).processID;
    // Rows wider than a node's 8 kB output buffer leave it one by one, so rows so far go up while it runs.
    const sql = "select id, repeat('x', 10000) from facts where pg_sleep(0.05) is not null";
    const running = other.query(sql);
    let seen: Record<string, string>[] = [];
    for (let i = 0; i < 50 && seen.length < 2; i++) {
      await new Promise((resolve) => setTimeout(resolve, 50));
      seen = (await show('parapool_queries')).rows.filter((r) => Number(r.pool_pid) === pid && r.node_id !== '');
    }
    assert.deepEqual(seen.map((r) => r.node_id).sort(), ['0', '1']);
    for (const fragment of seen) {
      assert.equal(fragment.query, sql);
      assert.equal(fragment.tier, '2');
      assert.equal(fragment.plan, 'merge');
      assert.equal(fragment.step, 'fragment');
      assert.equal(fragment.state, 'running');
      assert.ok(Number(fragment.elapsed_ms) > 0);
      assert.ok(Number(fragment.rows) >= 0 && Number(fragment.rows) <= 40);
    }
    await new Promise((resolve) => setTimeout(resolve, 300));
    const later = (await show('parapool_queries')).rows.filter((r) => Number(r.pool_pid) === pid);
    assert.ok(later.some((r) => Number(r.rows) > 0), 'rows so far go up while the fragments run');
    assert.equal((await running).rows.length, 40);
    assert.deepEqual((await show('parapool_queries')).rows.filter((r) => Number(r.pool_pid) === pid), [], 'a finished statement leaves the list');
  } finally {
    await other.end();
  }
  // The asking session sees its own SHOW, as pg_stat_activity lists itself.
  const own = (await show('parapool_queries')).rows.filter((r) => Number(r.pool_pid) === (client as unknown as { processID: number }).processID);
  assert.deepEqual(own.map((r) => r.query), ['SHOW parapool_queries']);
});
