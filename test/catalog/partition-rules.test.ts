// Partition rules declared in SQL through the proxy: the catalog on every node, rows moved to their nodes, bad
// rules refused with the catalog unchanged, and writes and reads routed by the rules. Placement is checked by
// asking each node directly which rows it holds.

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import type { Client } from 'pg';
import { commitFailpoints } from '../../src/executor/two-phase-commit';
import { rowsOf, startTestCluster, type TestCluster } from '../support/test-cluster';

let cluster: TestCluster;
let client: Client;

before(async () => {
  // Transactions the failpoints leave prepared wait for the next proxy's start-up, not for a periodic look.
  cluster = await startTestCluster({ nodes: 3, configure: (c) => (c.inDoubtRecoveryInterval = 0) });
  client = await cluster.connect();
});

after(async () => {
  await client?.end().catch(() => undefined);
  await cluster?.stop();
});

/** Every row is on exactly the node the placement column of parapool.partition_rules names. */
async function assertPlaced(table: string, expectedTotal: number): Promise<number[]> {
  const counts: number[] = [];
  for (let node = 0; node < cluster.nodes.length; node++) {
    const direct = await cluster.connectDirect(node);
    const placement = (await rowsOf(direct, `select placement from parapool.partition_rules where table_name = '${table}'`))[0][0]!;
    const [[total, misplaced]] = await rowsOf(direct, `select count(*), count(*) filter (where (${placement}) is distinct from ${node}) from ${table}`);
    assert.equal(misplaced, '0', `node ${node} holds rows of ${table} that belong elsewhere`);
    counts.push(Number(total));
    await direct.end();
  }
  assert.equal(counts.reduce((a, b) => a + b, 0), expectedTotal, `${table}: no row lost or duplicated`);
  return counts;
}

async function catalogOnEachNode(): Promise<string[]> {
  return (await cluster.onEachNode('select table_name, distribution, method, key_column, bounds::text, list_values::text, function_name, node_count, version from parapool.partition_rules order by 1')).map((r) => JSON.stringify(r));
}

async function expectError(sql: string, code: string, pattern?: RegExp, values?: unknown[]): Promise<void> {
  await assert.rejects(client.query({ text: sql, values }), (e: { code?: string; message: string }) => {
    assert.equal(e.code, code, `${sql}: ${e.message}`);
    if (pattern) assert.match(e.message, pattern);
    return true;
  });
}

test('distribute_table by hash moves existing rows to their nodes and records the rule on every node', async () => {
  await client.query('create table orders (o_orderkey bigint primary key, o_custkey int, o_total numeric(12,2))');
  await client.query('insert into orders select g, g % 100, g * 1.25 from generate_series(1, 3000) g');
  const notices: string[] = [];
  client.on('notice', (n) => notices.push(n.message ?? ''));
  const result = await client.query("select parapool.distribute_table('orders', 'o_orderkey')");
  assert.match(String(Object.values(result.rows[0])[0]), /distributed orders by hash of o_orderkey over 3 nodes/);
  const counts = await assertPlaced('orders', 3000);
  assert.ok(counts.every((c) => c > 800), `rows spread over the nodes: ${counts}`);
  assert.ok(notices.some((n) => /keeps \d+ of 3000 rows of orders/.test(n)), 'progress reaches the client');
  const catalogs = await catalogOnEachNode();
  assert.equal(catalogs[1], catalogs[0]);
  assert.equal(catalogs[2], catalogs[0]);
  const rules = (await client.query("select * from parapool.partition_rules where table_name = 'orders'")).rows;
  assert.equal(rules.length, 1);
  assert.equal(rules[0].method, 'hash');
  assert.equal(rules[0].key_type, 'bigint');
  assert.equal(rules[0].node_count, '3');
});

test('range, list and function rules place rows where they say', async () => {
  await client.query('create table events (day date, v int)');
  await client.query("insert into events select date '2023-06-01' + g, g from generate_series(0, 999) g");
  await client.query("select parapool.distribute_table('events', 'day', 'range', '{2024-01-01,2025-01-01}')");
  const counts = await assertPlaced('events', 1000);
  assert.deepEqual(counts, [214, 366, 420]);

  await client.query('create table regions (name text primary key, v int)');
  await client.query("insert into regions values ('AFRICA', 1), ('AMERICA', 2), ('ASIA', 3), ('EUROPE', 4), ('MIDDLE EAST', 5)");
  await client.query(`select parapool.distribute_table('regions', 'name', 'list', '[["AFRICA","ASIA"],["EUROPE"],["AMERICA","MIDDLE EAST"]]')`);
  assert.deepEqual(await assertPlaced('regions', 5), [2, 1, 2]);

  await client.query('create function node_of_v(k int) returns int language sql immutable as $$ select k % 3 $$');
  await client.query('create table by_function (k int, payload text)');
  await client.query("insert into by_function select g, 'p' || g from generate_series(1, 30) g");
  await client.query("select parapool.distribute_table('by_function', 'k', 'function', 'node_of_v')");
  assert.deepEqual(await assertPlaced('by_function', 30), [10, 10, 10]);
});

test('replicate_table and co-location are recorded; a co-located table must match its rule', async () => {
  await client.query('create table nation (n_nationkey int primary key, n_name text)');
  await client.query("select parapool.replicate_table('nation')");
  const rule = (await client.query("select distribution from parapool.partition_rules where table_name = 'nation'")).rows[0];
  assert.equal(rule.distribution, 'replicated');
  await client.query('create table lineitem (l_orderkey bigint, l_linenumber int, primary key (l_orderkey, l_linenumber))');
  await client.query("select parapool.distribute_table('lineitem', 'l_orderkey', colocate_with => 'orders')");
  const groups = (await client.query("select table_name, colocation_group from parapool.partition_rules where table_name in ('orders', 'lineitem') order by 1")).rows;
  assert.equal(groups[0].colocation_group, groups[1].colocation_group);
  await client.query('create table other_keys (k int primary key)');
  await expectError("select parapool.distribute_table('other_keys', 'k', colocate_with => 'orders')", '22023', /cannot co-locate with "orders": its rule differs/);
});

test('bad rules get clear errors and leave the catalog unchanged', async () => {
  await client.query('create table plain (a int, b text, c point, u int unique)');
  await client.query('create table free (a int, b text, c point)');
  const before = await catalogOnEachNode();
  await expectError("select parapool.distribute_table('no_such_table', 'a')", '42P01', /relation "no_such_table" does not exist/);
  await expectError("select parapool.distribute_table('free', 'nope')", '42703', /column "nope" of relation "free" does not exist/);
  await expectError("select parapool.distribute_table('free', 'c')", '42883', /could not identify a hash function for type point/);
  await expectError("select parapool.distribute_table('free', 'a', 'range', '{20,10}')", '22023', /not in strictly increasing order/);
  await expectError("select parapool.distribute_table('free', 'a', 'range', '{10,10}')", '22023', /not in strictly increasing order/);
  await expectError("select parapool.distribute_table('free', 'a', 'range', '{1,2,3}')", '22023', /4 ranges, but there are 3 nodes/);
  await expectError(`select parapool.distribute_table('free', 'a', 'list', '[[1,2],[2]]')`, '22023', /list value 2 is given for node 0 and node 1/);
  await expectError(`select parapool.distribute_table('free', 'a', 'list', '{{1},{2}}')`, '22023', /JSON array of arrays/);
  await expectError("select parapool.distribute_table('free', 'a', 'function', 'no_such_function')", '42883', /no_such_function\(integer\) does not exist/);
  await client.query('create function too_far(k int) returns int language sql as $$ select k $$');
  await client.query('insert into free select g from generate_series(1, 5) g');
  await expectError("select parapool.distribute_table('free', 'a', 'function', 'too_far')", '22023', /maps key 3 to node 3, outside 0..2/);
  await expectError("select parapool.distribute_table('plain', 'a')", '0A000', /constraint "plain_u_key" does not include the key column "a"/);
  await client.query('create table numbered (k int, n serial, i int generated always as identity)');
  await expectError("select parapool.distribute_table('numbered', 'k')", '0A000', /column "n" takes its values from a sequence/);
  await expectError("select parapool.distribute_table('orders', 'o_orderkey')", '55000', /already distributed/);
  await expectError("select parapool.distribute_table('free', 'a', 'sideways')", '22023', /unknown distribution method/);
  await client.query('insert into free values (null)');
  await expectError("select parapool.distribute_table('free', 'a')", '23502', /NULL key/);
  await client.query('begin');
  await expectError("select parapool.distribute_table('free', 'b')", '25001', /cannot run inside a transaction block/);
  await client.query('rollback');
  assert.deepEqual(await catalogOnEachNode(), before);
  assert.deepEqual(await cluster.onEachNode('select count(*) from free'), [[['6']], [['6']], [['6']]], 'the table is untouched');
});

test('INSERT routes each row to its node; RETURNING comes back in statement order', async () => {
  const inserted = await client.query('insert into orders values (5001, 1, 10), (5002, 2, 20), (5003, 3, 30), (5004, 4, 40) returning o_orderkey');
  assert.deepEqual(inserted.rows.map((r) => r.o_orderkey), ['5001', '5002', '5003', '5004']);
  assert.equal(inserted.rowCount, 4);
  await client.query('insert into orders (o_custkey, o_orderkey) values (7, 5005)');
  await client.query({ text: 'insert into orders values ($1, $2, $3)', values: [5006, 8, 1.5] });
  await client.query('insert into orders values (5001, 1, 10) on conflict (o_orderkey) do update set o_total = 11');
  await assertPlaced('orders', 3006);
  assert.deepEqual(await rowsOf(client, 'select o_total from orders where o_orderkey = 5001'), [['11.00']]);
  await expectError('insert into orders (o_custkey) values (1)', '0A000', /must give its key column "o_orderkey"/);
  await expectError('insert into orders values (null, 1, 1)', '23502', /null value in column "o_orderkey"/);
  await expectError(`insert into regions values ('ANTARCTICA', 9)`, '23514', /no node of relation "regions" holds key ANTARCTICA/);
  await expectError('insert into orders values (5001, 1, 1)', '23505');
  await assertPlaced('orders', 3006);
});

test('UPDATE and DELETE go to the owning nodes, or to all with the counts summed', async () => {
  const one = await client.query('update orders set o_total = o_total + 1 where o_orderkey = 17');
  assert.equal(one.rowCount, 1);
  const some = await client.query('update orders set o_total = 0 where o_orderkey in (1, 2, 3, 4, 5, 6)');
  assert.equal(some.rowCount, 6);
  const all = await client.query('update orders set o_custkey = o_custkey + 1 where o_custkey < 10');
  assert.equal(all.rowCount, 306);
  const deleted = await client.query('delete from orders where o_orderkey > 5000 returning o_orderkey');
  assert.equal(deleted.rowCount, 6);
  assert.deepEqual(deleted.rows.map((r) => r.o_orderkey).sort(), ['5001', '5002', '5003', '5004', '5005', '5006']);
  await expectError('update orders set o_orderkey = o_orderkey + 1 where o_orderkey = 1', '0A000', /cannot change the distribution key "o_orderkey"/);
  await assertPlaced('orders', 3000);
});

test('reads of a distributed table run on the key\'s node, or on every node holding its rows, merged', async () => {
  assert.deepEqual(await rowsOf(client, 'select o_orderkey, o_custkey from orders where o_orderkey = 42'), [['42', '42']]);
  assert.deepEqual(await rowsOf(client, 'select o_orderkey from orders where o_orderkey = $1', [43]), [['43']]);
  const total = await cluster.onEachNode('select count(*) from orders');
  assert.deepEqual(await rowsOf(client, 'select count(*) from orders'), [[String(total.reduce((sum, rows) => sum + Number(rows[0][0]), 0))]]);
  assert.deepEqual(await rowsOf(client, 'select o_orderkey from orders where o_orderkey in (3, 1, 2) order by 1'), [['1'], ['2'], ['3']]);
  assert.deepEqual(await rowsOf(client, 'select count(*) from orders where o_orderkey > $1', [0]), await rowsOf(client, 'select count(*) from orders where o_orderkey > 0'));
  assert.deepEqual(await rowsOf(client, 'select count(*) from nation'), [['0']], 'replicated tables read as before');
});

test('a write on several nodes in a transaction commits with two-phase commit; an error rolls back everywhere', async () => {
  await client.query('begin');
  await client.query('insert into orders values (6001, 1, 1), (6002, 2, 2), (6003, 3, 3)');
  await client.query("insert into nation values (1, 'one')");
  await client.query('commit');
  await assertPlaced('orders', 3003);
  await client.query('begin');
  await client.query('insert into orders values (6004, 1, 1), (6005, 2, 2)');
  await assert.rejects(client.query('insert into orders values (6001, 1, 1)'), (e: { code?: string }) => e.code === '23505');
  await client.query('rollback');
  await assertPlaced('orders', 3003);
  assert.deepEqual(await cluster.onEachNode("select count(*) from pg_prepared_xacts"), [[['0']], [['0']], [['0']]]);
});

test('an extended-protocol COMMIT of writes on several nodes commits as one: a node that cannot prepare rolls back every node', async () => {
  // A deferred check that only nodes 1 and 2 run, at their commit: it fails PREPARE TRANSACTION there.
  for (const node of [1, 2]) {
    const direct = await cluster.connectDirect(node);
    await direct.query("create function refuse_at_commit() returns trigger language plpgsql as $$ begin if new.o_custkey = 999 then raise exception 'refused at commit'; end if; return new; end $$");
    await direct.query('create constraint trigger refuse_at_commit after insert on orders deferrable initially deferred for each row execute function refuse_at_commit()');
    await direct.end();
  }
  const commit = { name: 'commit_statement', text: 'commit' };
  try {
    await client.query('begin');
    await client.query('insert into orders select g, 999, 1 from generate_series(6101, 6112) g');
    await assert.rejects(client.query(commit), (e: { message: string }) => /refused at commit/.test(e.message));
    await assertPlaced('orders', 3003);
    // The statement the client prepared with the COMMIT is still there for its next one.
    await client.query('begin');
    await client.query('insert into orders select g, 1, 1 from generate_series(6201, 6212) g');
    await client.query(commit);
    await assertPlaced('orders', 3015);
    assert.deepEqual(await cluster.onEachNode('select count(*) from pg_prepared_xacts'), [[['0']], [['0']], [['0']]]);
  } finally {
    await client.query('rollback').catch(() => undefined);
    await client.query('delete from orders where o_orderkey between 6101 and 6299');
    for (const node of [1, 2]) {
      const direct = await cluster.connectDirect(node);
      await direct.query('drop trigger refuse_at_commit on orders; drop function refuse_at_commit()');
      await direct.end();
    }
  }
  await assertPlaced('orders', 3003);
});

test('a proxy that dies between PREPARE and COMMIT PREPARED is resolved by the next one', async () => {
  for (const [failpoint, expected] of [['afterPrepare', 3003], ['afterDecision', 3005]] as const) {
    commitFailpoints[failpoint] = true;
    await assert.rejects(client.query(`insert into orders values (${7000 + expected}, 1, 1), (${7100 + expected}, 2, 2)`));
    commitFailpoints[failpoint] = false;
    await client.end().catch(() => undefined);
    const prepared = await cluster.onEachNode("select count(*) from pg_prepared_xacts where gid like 'parapool:%'");
    assert.ok(prepared.some((r) => r[0][0] !== '0'), 'transactions were left prepared');
    await cluster.restartProxy();
    client = await cluster.connect();
    assert.deepEqual(await cluster.onEachNode("select count(*) from pg_prepared_xacts"), [[['0']], [['0']], [['0']]]);
    await assertPlaced('orders', expected);
  }
});

test('undistribute_table gathers the rows back onto every node', async () => {
  await client.query("select parapool.undistribute_table('by_function')");
  assert.deepEqual(await cluster.onEachNode('select count(*), sum(k) from by_function'), [[['30', '465']], [['30', '465']], [['30', '465']]]);
  assert.deepEqual(await rowsOf(client, "select count(*) from parapool.partition_rules where table_name = 'by_function'"), [['0']]);
  assert.deepEqual(await rowsOf(client, 'select count(*) from by_function'), [['30']]);
});

test('distribute_table and undistribute_table report their progress as NOTICEs, node by node', async () => {
  await client.query('create table big_moves (id int, pad text)');
  await client.query("insert into big_moves select g, 'x' from generate_series(1, 360000) g");
  const notices: string[] = [];
  const listener = (notice: { message?: string }) => notices.push(notice.message ?? '');
  client.on('notice', listener);
  try {
    await client.query("select parapool.distribute_table('big_moves', 'id')");
    for (let node = 0; node < 3; node++) {
      assert.ok(notices.some((m) => new RegExp(`^node ${node}\\b.* holds 360000 rows of big_moves; removing those of other nodes$`).test(m)), `node ${node} said it starts:\n${notices.join('\n')}`);
      assert.ok(notices.some((m) => new RegExp(`^node ${node}\\b.* keeps \\d+ of 360000 rows of big_moves$`).test(m)), `node ${node} said how many rows it kept`);
    }
    notices.length = 0;
    // About 120,000 rows per node: each reports once along the way (every 100,000 rows) and once at the end.
    await client.query("select parapool.undistribute_table('big_moves')");
    for (let node = 0; node < 3; node++) {
      assert.ok(notices.some((m) => new RegExp(`^node ${node}\\b.* has sent 100000 of its rows of big_moves to the other nodes so far$`).test(m)), `node ${node} reported along the way:\n${notices.join('\n')}`);
      assert.ok(notices.some((m) => new RegExp(`^node ${node}\\b.* sent its \\d+ rows of big_moves to the other nodes$`).test(m)), `node ${node} reported its end`);
    }
  } finally {
    client.off('notice', listener);
  }
  assert.deepEqual(await cluster.onEachNode('select count(*) from big_moves'), [[['360000']], [['360000']], [['360000']]]);
  await client.query('drop table big_moves');
});

test('DROP TABLE of a distributed table forgets its rule', async () => {
  await client.query('drop table events');
  assert.deepEqual(await cluster.onEachNode("select count(*) from parapool.partition_rules where table_name = 'events'"), [[['0']], [['0']], [['0']]]);
  await client.query('create table events (day date, v int)');
  await client.query("insert into events values ('2024-05-05', 1)");
  assert.deepEqual(await cluster.onEachNode('select count(*) from events'), [[['1']], [['1']], [['1']]], 'a new table of the same name is replicated');
});

test('a restarted proxy reads the rules back; nodes that disagree are refused by name', async () => {
  await client.end();
  await cluster.restartProxy();
  client = await cluster.connect();
  assert.equal((await rowsOf(client, 'select count(*) > 0 from orders'))[0][0], 't', 'the rules are known again: the read is merged');
  const direct = await cluster.connectDirect(2);
  await direct.query("update parapool.partition_rules set version = version + 1 where table_name = 'orders'");
  await client.end();
  await cluster.restartProxy();
  await assert.rejects(cluster.connect(), (e: { code?: string; message: string }) => e.code === '55000' && /differ between node 0 .* and node 2/.test(e.message));
  await direct.query("update parapool.partition_rules set version = version - 1 where table_name = 'orders'");
  await direct.end();
  client = await cluster.connect();
  assert.deepEqual(await rowsOf(client, 'select o_orderkey from orders where o_orderkey = 7'), [['7']]);
});

test('COPY FROM STDIN streams each row to its node, in text and CSV; a bad row writes nothing', async () => {
  const { RawClient, errorFields } = await import('../support/raw-client');
  const { serialize } = await import('pg-protocol');
  await client.query('create table copied (id int, name text)');
  await client.query("select parapool.distribute_table('copied', 'id')");
  const raw = await RawClient.ready(cluster.proxy.port);
  raw.send(serialize.query('copy copied from stdin'));
  await raw.readUntil('G');
  const text = Buffer.from(Array.from({ length: 2000 }, (_, i) => `${i + 1}\tname ${i + 1}\n`).join(''));
  for (let offset = 0; offset < text.length; offset += 777) raw.send(serialize.copyData(text.subarray(offset, offset + 777)));
  raw.send(serialize.copyDone());
  const done = await raw.readUntil('Z');
  assert.equal(done.find((m) => m.type === 'C')?.payload.toString(), 'COPY 2000\0');
  await assertPlaced('copied', 2000);

  raw.send(serialize.query('copy copied (name, id) from stdin with (format csv, header true)'));
  await raw.readUntil('G');
  raw.send([serialize.copyData(Buffer.from('name,id\n"multi\nline, quoted",3001\nplain,3002\n')), serialize.copyDone()]);
  const csv = await raw.readUntil('Z');
  assert.equal(csv.find((m) => m.type === 'C')?.payload.toString(), 'COPY 2\0');
  assert.deepEqual(await rowsOf(client, 'select name from copied where id = 3001'), [['multi\nline, quoted']]);

  raw.send(serialize.query('copy copied from stdin'));
  await raw.readUntil('G');
  raw.send([serialize.copyData(Buffer.from('4001\tfine\n4002\n')), serialize.copyDone()]);
  const bad = await raw.readUntil('Z');
  assert.equal(errorFields(bad.find((m) => m.type === 'E')!).C, '22P04');
  raw.send(serialize.query('copy regions from stdin'));
  await raw.readUntil('G');
  raw.send([serialize.copyData(Buffer.from('ASIA\t7\nATLANTIS\t8\n')), serialize.copyDone()]);
  const unplaced = await raw.readUntil('Z');
  assert.equal(errorFields(unplaced.find((m) => m.type === 'E')!).C, '23514');
  raw.end();
  await assertPlaced('copied', 2002);
  await assertPlaced('regions', 5);
});

test('INSERT ... SELECT from replicated tables routes every row, with ON CONFLICT and RETURNING', async () => {
  await client.query('create table source_rows (id int, note text)');
  await client.query("insert into source_rows select g, 'n' || g from generate_series(1, 2500) g");
  await client.query('create table target_rows (id int primary key, note text)');
  await client.query("select parapool.distribute_table('target_rows', 'id')");
  const result = await client.query('insert into target_rows select id, note from source_rows where id <= 2400');
  assert.equal(result.rowCount, 2400);
  const again = await client.query("insert into target_rows (note, id) select 'new', id from source_rows where id > 2390 on conflict (id) do nothing returning id");
  assert.equal(again.rowCount, 100);
  assert.equal(again.rows.length, 100);
  await assertPlaced('target_rows', 2500);
  assert.deepEqual(await rowsOf(client, 'select note from target_rows where id = 2395'), [['n2395']]);
  await expectError('insert into target_rows select id, note from source_rows', '23505');
  await assertPlaced('target_rows', 2500);
});

test('rule changes are serialised: concurrent changes from two sessions leave one consistent catalog', async () => {
  await client.query('create table race_a (k int)');
  await client.query('create table race_b (k int)');
  const other = await cluster.connect();
  const results = await Promise.allSettled([
    client.query("select parapool.distribute_table('race_a', 'k')"),
    other.query("select parapool.distribute_table('race_b', 'k')"),
    other.query("select parapool.distribute_table('race_a', 'k')").catch((e) => Promise.reject(e)),
  ]);
  await other.end();
  assert.equal(results[0].status, 'fulfilled');
  assert.equal(results[1].status, 'fulfilled');
  assert.equal(results[2].status, 'rejected');
  assert.match(String((results[2] as PromiseRejectedResult).reason.message), /already distributed/);
  const catalogs = await catalogOnEachNode();
  assert.equal(catalogs[1], catalogs[0]);
  assert.equal(catalogs[2], catalogs[0]);
});

test('an interrupted distribution leaves the table intact and readable; a node down refuses the change', async () => {
  await client.query('create table fragile (k int, v text)');
  await client.query("insert into fragile select g, 'v' || g from generate_series(1, 500) g");
  commitFailpoints.afterPrepare = true;
  client.on('error', () => undefined); // the session ends as if the proxy had died
  await assert.rejects(client.query("select parapool.distribute_table('fragile', 'k')"));
  commitFailpoints.afterPrepare = false;
  await client.end().catch(() => undefined);
  await cluster.restartProxy();
  client = await cluster.connect();
  assert.deepEqual(await cluster.onEachNode('select count(*) from fragile'), [[['500']], [['500']], [['500']]]);
  assert.deepEqual(await rowsOf(client, "select count(*) from parapool.partition_rules where table_name = 'fragile'"), [['0']]);
  await client.end();
  await cluster.nodes[2].stop('fast');
  await cluster.restartProxy();
  client = await cluster.connect();
  await expectError("select parapool.distribute_table('fragile', 'k')", '55000', /every node is in service/);
  assert.deepEqual(await rowsOf(client, 'select count(*) from fragile'), [['500']]);
  await cluster.nodes[2].start();
  await client.end();
  await cluster.restartProxy();
  client = await cluster.connect();
  await client.query("select parapool.distribute_table('fragile', 'k')");
  await assertPlaced('fragile', 500);
});

test('a node that dies while rows move leaves the table intact on every node', async () => {
  await client.query('create function slow_node(k int) returns int language sql volatile as $$ select k % 3 + (pg_sleep(0.005)::text = \'x\')::int $$');
  await client.query('create table doomed (k int, v text)');
  await client.query("insert into doomed select g, 'v' || g from generate_series(1, 600) g");
  client.on('error', () => undefined);
  const change = client.query("select parapool.distribute_table('doomed', 'k', 'function', 'slow_node')").then(
    () => null,
    (error: Error) => error,
  );
  await new Promise((r) => setTimeout(r, 1000));
  await cluster.nodes[2].stop('immediate');
  const error = await change;
  assert.ok(error, 'the change failed');
  assert.match(error!.message, /node 2|lost|connection/);
  await cluster.nodes[2].start();
  await client.end().catch(() => undefined);
  await cluster.restartProxy();
  client = await cluster.connect();
  assert.deepEqual(await cluster.onEachNode('select count(*) from doomed'), [[['600']], [['600']], [['600']]]);
  assert.deepEqual(await rowsOf(client, "select count(*) from parapool.partition_rules where table_name = 'doomed'"), [['0']]);
  assert.deepEqual(await cluster.onEachNode("select count(*) from pg_prepared_xacts"), [[['0']], [['0']], [['0']]]);
});

test('extended protocol: one-key statements go to their node; a write on all nodes is merged and atomic', async () => {
  await client.query('create table ext_rows (id int primary key, v int)');
  await client.query("select parapool.distribute_table('ext_rows', 'id')");
  for (let id = 1; id <= 30; id++) await client.query({ text: 'insert into ext_rows values ($1, $2)', values: [id, id * 10] });
  await assertPlaced('ext_rows', 30);
  const updated = await client.query({ text: 'update ext_rows set v = v + $1 where v > $2 returning id', values: [1, 100] });
  assert.equal(updated.rowCount, 20);
  assert.deepEqual(updated.rows.map((r) => Number(r.id)).sort((a, b) => a - b), Array.from({ length: 20 }, (_, i) => i + 11));
  const prepared = { name: 'ext_delete', text: 'delete from ext_rows where v < $1' };
  assert.equal((await client.query({ ...prepared, values: [50] })).rowCount, 4);
  assert.equal((await client.query({ ...prepared, values: [70] })).rowCount, 2);
  await assert.rejects(client.query({ text: 'update ext_rows set v = 1 / (v - $1)', values: [111] }), (e: { code?: string }) => e.code === '22012');
  assert.deepEqual(await rowsOf(client, 'select v from ext_rows where id = 11'), [['111']], 'the failed update changed nothing anywhere');
  await client.query('begin');
  await client.query({ text: 'update ext_rows set v = v * 2 where v > $1', values: [0] });
  await client.query('rollback');
  assert.deepEqual(await rowsOf(client, 'select v from ext_rows where id = 30'), [['301']]);
  assert.deepEqual(await rowsOf(client, 'select count(*) from ext_rows where v > $1', [0]), [['24']]);
  await assertPlaced('ext_rows', 24);
});

test('a user without rights on the tables still reads the rules and is routed', async () => {
  for (let node = 0; node < 3; node++) {
    const direct = await cluster.connectDirect(node);
    await direct.query('create role reader login');
    await direct.query('grant select on orders to reader');
    await direct.end();
  }
  await client.end();
  await cluster.restartProxy();
  const reader = await cluster.connect({ user: 'reader' });
  assert.deepEqual(await rowsOf(reader, 'select o_orderkey from orders where o_orderkey = 7'), [['7']]);
  assert.equal((await rowsOf(reader, 'select count(*) > 0 from orders'))[0][0], 't', 'a merged read needs only SELECT and TEMP rights');
  await reader.end();
  client = await cluster.connect();
});

test('extended protocol: BEGIN may share a distributed statement\'s batch; another statement for every node may not', async () => {
  const { RawClient, errorFields } = await import('../support/raw-client');
  const { serialize } = await import('pg-protocol');
  await client.query('create table if not exists batch_notes (n int)');
  const raw = await RawClient.ready(cluster.proxy.port);
  // As JDBC sends a transaction's first statement with autocommit off: BEGIN runs on every node, then the insert.
  raw.send([
    serialize.parse({ text: 'begin' }), serialize.bind({}), serialize.execute({}),
    serialize.parse({ name: 'ins', text: 'insert into orders values ($1, 1, 1)' }), serialize.bind({ statement: 'ins', values: ['9001'] }), serialize.execute({}),
    serialize.sync(),
  ]);
  let replies = await raw.readUntil('Z');
  assert.equal(replies.find((m) => m.type === 'E'), undefined);
  assert.equal(replies.filter((m) => m.type === 'C').length, 2);
  raw.send([
    serialize.parse({ text: 'insert into batch_notes values (1)' }), serialize.bind({}), serialize.execute({}),
    serialize.bind({ statement: 'ins', values: ['9002'] }), serialize.execute({}),
    serialize.sync(),
  ]);
  replies = await raw.readUntil('Z');
  assert.equal(errorFields(replies.find((m) => m.type === 'E')!).C, '0A000');
  raw.send(serialize.query('rollback'));
  await raw.readUntil('Z');
  raw.end();
  assert.deepEqual(await rowsOf(client, 'select count(*) from orders where o_orderkey in (9001, 9002)'), [['0']]);
  assert.deepEqual(await rowsOf(client, 'select count(*) from batch_notes'), [['0']]);
  const nodes = (await client.query('show pool_nodes')).rows;
  assert.ok(nodes.every((n: { status: string }) => n.status === 'up'));
});
