// Distributed reads under failure and at their limits: statement_timeout and CancelRequest stop every node's
// fragment, a node dying mid-query gives an error naming it while the session goes on, the proxy's hash aggregate
// stops at merge_memory_limit, temporary tables never outlive the statement, EXPLAIN ANALYZE counts rows per step,
// and a read inside a transaction sees the transaction's own writes.

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { serialize } from 'pg-protocol';
import { loadParser } from '../../src/planner/sql-parser';
import { errorFields, RawClient } from '../support/raw-client';
import { rowsOf, startTestCluster, type TestCluster } from '../support/test-cluster';

let cluster: TestCluster;

before(async () => {
  await loadParser();
  cluster = await startTestCluster({ nodes: 3, configure: (config) => {
      config.mergeMemoryLimit = 1024 * 1024;
      config.intermediateResultLimit = 40_000;
    },
  });
  const client = await cluster.connect();
  await client.query('create table events (id int primary key, kind text, amount numeric(12,2))');
  await client.query("select parapool.distribute_table('events', 'id')");
  await client.query("insert into events select g, 'kind ' || (g % 7), g * 1.25 from generate_series(1, 3000) g");
  await client.query('create table kinds (kind text primary key, label text)');
  await client.query("select parapool.distribute_table('kinds', 'kind')");
  await client.query("insert into kinds select 'kind ' || k, 'label ' || k from generate_series(0, 6) k");
  await client.query('analyze');
  await client.end();
});

after(async () => {
  await cluster?.stop();
});

async function temporaryTablesOnNodes(): Promise<number> {
  const counts = await cluster.onEachNode("select count(*) from pg_class where relpersistence = 't' and relname like 'parapool_%'");
  return counts.reduce((sum, rows) => sum + Number(rows[0][0]), 0);
}

test('a merged read gives one answer; its temporary tables are gone afterwards, in and out of transactions', async () => {
  const client = await cluster.connect();
  assert.deepEqual(await rowsOf(client, 'select kind, count(*), sum(amount) from events group by kind order by kind limit 2'), [
    ['kind 0', '428', '803302.50'],
    ['kind 1', '429', '803838.75'],
  ]);
  assert.equal(await temporaryTablesOnNodes(), 0);
  await client.query('begin');
  await client.query("insert into events values (5001, 'new kind', 1)");
  assert.deepEqual(await rowsOf(client, "select count(*) from events where kind like 'new%'"), [['1']], 'the read sees the transaction\'s own write');
  assert.deepEqual(await rowsOf(client, "select kind, count(*) from events where kind like 'new%' group by kind"), [['new kind', '1']]);
  assert.equal(await temporaryTablesOnNodes(), 0, 'dropped inside the transaction too');
  await client.query('rollback');
  assert.deepEqual(await rowsOf(client, "select count(*) from events where kind like 'new%'"), [['0']]);
  await client.end();
});

test('the extended protocol runs multi-node reads with bound parameters, described as a node describes them', async () => {
  const client = await cluster.connect();
  const simple = await client.query({ text: 'select kind, count(*), avg(amount) from events where id > 100 group by kind order by kind', rowMode: 'array' });
  const prepared = { name: 'by_kind', text: 'select kind, count(*), avg(amount) from events where id > $1 group by kind order by kind', rowMode: 'array' as const };
  const extended = await client.query({ ...prepared, values: [100] });
  assert.deepEqual(extended.rows, simple.rows);
  assert.deepEqual(extended.fields.map((f) => [f.name, f.dataTypeID]), simple.fields.map((f) => [f.name, f.dataTypeID]));
  const again = await client.query({ ...prepared, values: [2990] });
  assert.equal(again.rows.reduce((sum, r) => sum + Number(r[1]), 0), 10, 'the prepared read runs again with new values');
  const typed = await client.query({ text: 'select id from events where kind = $1::text and id < $2 order by id desc limit 2', values: ['kind 3', 30], rowMode: 'array' });
  assert.deepEqual(typed.rows, [['24'], ['17']]);
  await assert.rejects(client.query({ text: 'select count(*) from events where id > $1', values: ['not a number'] }), (e: { code?: string }) => e.code === '22P02');
  assert.deepEqual(await rowsOf(client, 'select count(*) from events where id > $1', [2999]), [['1']], 'the session goes on after an error');
  await client.end();
});

test('statement_timeout and CancelRequest stop the fragments on every node; the session goes on', async () => {
  const client = await cluster.connect();
  await client.query("set statement_timeout = '300ms'");
  await assert.rejects(client.query('select count(*) from events where pg_sleep(0.01) is not null'), (e: { code?: string }) => e.code === '57014');
  await assert.rejects(client.query('select kind, count(*) from events where pg_sleep(0.01) is not null group by kind'), (e: { code?: string }) => e.code === '57014', 'fragments in a worker thread stop too');
  await assert.rejects(client.query('select id, rank() over (order by amount) from events where id > 2000 and pg_sleep(0.002) is not null'), (e: { code?: string }) => e.code === '57014', 'a gather stops too');
  await client.query('reset statement_timeout');
  assert.deepEqual(await rowsOf(client, 'select count(*) from events'), [['3000']]);
  assert.equal(await temporaryTablesOnNodes(), 0, 'and leaves no temporary table');
  await client.end();

  const raw = await RawClient.ready(cluster.proxy.port);
  raw.send(serialize.query('select id from events where pg_sleep(0.01) is not null order by id'));
  await new Promise((r) => setTimeout(r, 300));
  const canceller = await RawClient.connect(cluster.proxy.port);
  canceller.send(serialize.cancel(raw.processId, raw.secretKey));
  const replies = await raw.readUntil('Z', 20000);
  assert.equal(errorFields(replies.find((m) => m.type === 'E')!).C, '57014');
  raw.send(serialize.query('select count(*) from events'));
  const after = await raw.readUntil('Z');
  assert.ok(after.some((m) => m.type === 'D'), 'the session answers the next query');
  raw.send(serialize.query('select kind, count(*) from events where pg_sleep(0.01) is not null group by kind'));
  await new Promise((r) => setTimeout(r, 300));
  canceller.end();
  const second = await RawClient.connect(cluster.proxy.port);
  second.send(serialize.cancel(raw.processId, raw.secretKey));
  const grouped = await raw.readUntil('Z', 20000);
  assert.equal(errorFields(grouped.find((m) => m.type === 'E')!).C, '57014', 'a cancel reaches fragments in a worker thread');
  second.end();
  raw.end();
  const busy = await cluster.onEachNode("select count(*) from pg_stat_activity where query like '%pg_sleep(0.01)%' and state = 'active' and pid <> pg_backend_pid()");
  assert.deepEqual(busy, [[['0']], [['0']], [['0']]], 'no node still runs a fragment');
});

test('the proxy hash aggregate stops at merge_memory_limit with 54000', async () => {
  const client = await cluster.connect();
  await assert.rejects(client.query('select repeat(kind, 100) || id, count(*) from events group by 1'), (e: { code?: string; message: string }) => e.code === '54000' && /merge_memory_limit/.test(e.message));
  assert.deepEqual(await rowsOf(client, 'select count(*) from events'), [['3000']]);
  assert.equal(await temporaryTablesOnNodes(), 0);
  await client.end();
});

test('a gather past intermediate_result_limit fails with 54000 and leaves nothing behind', async () => {
  const client = await cluster.connect();
  await assert.rejects(client.query('select id, kind from events union select id + 1, kind from events order by 1 limit 1'), (e: { code?: string; message: string }) => e.code === '54000' && /intermediate_result_limit/.test(e.message));
  assert.deepEqual(await rowsOf(client, 'select id from events where id > 2998 union all select 0 order by 1'), [['0'], ['2999'], ['3000']], 'a filtered copy fits');
  assert.equal(await temporaryTablesOnNodes(), 0);
  await client.end();
});

test('a join outside one colocation group broadcasts the small side; inside a transaction that wrote it gathers and sees its writes', async () => {
  const client = await cluster.connect();
  const query = "select label, count(*) from events e join kinds k on k.kind = e.kind where k.label in ('label 1', 'label 2', 'label 9') group by label order by label";
  const plan = (await rowsOf(client, `explain ${query}`)).map((r) => r[0]).join('\n');
  assert.match(plan, /^Distributed Broadcast Join/);
  assert.deepEqual(await rowsOf(client, query), [['label 1', '429'], ['label 2', '429']]);
  // A READ COMMITTED transaction that wrote nothing yet reads outside it, with the same plan.
  await client.query('begin');
  const analyzed = (await rowsOf(client, `explain analyze ${query}`)).map((r) => r[0]).join('\n');
  assert.match(analyzed, /^Distributed Broadcast Join/, analyzed);
  assert.deepEqual(await rowsOf(client, query), [['label 1', '429'], ['label 2', '429']]);
  await client.query('commit');
  assert.equal(await temporaryTablesOnNodes(), 0);
  await client.query('begin isolation level repeatable read');
  const repeatable = (await rowsOf(client, `explain analyze ${query}`)).map((r) => r[0]).join('\n');
  assert.match(repeatable, /^Distributed Gather/, 'a snapshot of its own keeps the read in the transaction');
  await client.query('commit');
  await client.query('begin');
  await client.query("insert into kinds values ('kind 9', 'label 9')");
  await client.query("insert into events values (9001, 'kind 9', 1)");
  assert.deepEqual(await rowsOf(client, query), [['label 1', '429'], ['label 2', '429'], ['label 9', '1']]);
  await client.query('rollback');
  assert.equal(await temporaryTablesOnNodes(), 0);
  await client.end();
});

test('text in a collation other than C is ordered and compared by a node, never by the proxy', async (t) => {
  const client = await cluster.connect();
  const icu = await rowsOf(client, "select count(*) from pg_collation where collname = 'und-x-icu'");
  if (icu[0][0] === '0') return t.skip('this PostgreSQL has no ICU collations');
  await client.query('create table words (id int primary key, w text collate "und-x-icu")');
  await client.query("select parapool.distribute_table('words', 'id')");
  await client.query("insert into words values (1, 'b'), (2, 'B'), (3, 'a'), (4, 'C'), (5, 'c'), (6, 'A')");
  const ordered = (await rowsOf(client, 'select w from words order by w, id')).map((r) => r[0]);
  assert.deepEqual(ordered, ['a', 'A', 'b', 'B', 'c', 'C'], 'the ICU order, not the bytes\' order');
  assert.deepEqual(await rowsOf(client, 'select min(w), max(w) from words'), [['a', 'C']]);
  assert.deepEqual(await rowsOf(client, 'select id % 2, min(w) from words group by 1 order by 1'), [['0', 'A'], ['1', 'a']]);
  assert.deepEqual((await rowsOf(client, 'select w from words order by w collate "C" limit 2')).map((r) => r[0]), ['A', 'B']);
  await client.query('drop table words');
  await client.end();
});

test('a multi-node SELECT that would write on every node (nextval) is refused with 0A000', async () => {
  const client = await cluster.connect();
  await client.query('create sequence numbers');
  await assert.rejects(client.query("select nextval('numbers'), id from events order by id limit 1"), (e: { code?: string; message: string }) => e.code === '0A000' && /nextval/.test(e.message));
  assert.deepEqual(await cluster.onEachNode("select last_value, is_called from numbers"), [[['1', 'f']], [['1', 'f']], [['1', 'f']]], 'no node moved its sequence');
  await client.query('drop sequence numbers');
  await client.end();
});

test('a window over rows of every node: the nodes send the columns it names, or, past merge_memory_limit, the tables are gathered', async () => {
  const client = await cluster.connect();
  const query = 'select id, rank() over (partition by kind order by amount desc) from events where id % 100 = 0 order by 2, 1 limit 3';
  const plan = (await rowsOf(client, `explain ${query}`)).map((r) => r[0]).join('\n');
  assert.match(plan, /^Distributed Aggregate  \(window functions/);
  assert.deepEqual(await rowsOf(client, query), [['2400', '1'], ['2500', '1'], ['2600', '1']]);
  const wide = 'select e.id, g, rank() over (partition by g order by e.id desc) as r from events e, generate_series(1, 60) g where e.id <= 1000 order by r desc, g, e.id limit 1';
  assert.deepEqual(await rowsOf(client, wide), [['1', '1', '1000']], '60,000 rows pass merge_memory_limit: gathered instead');
  await client.end();
});

test('connections borrowed for a statement follow the session\'s TimeZone, DateStyle and IntervalStyle', async () => {
  const client = await cluster.connect();
  await client.query("set timezone = 'Asia/Tokyo'");
  assert.deepEqual(await rowsOf(client, "select tz, count(*) from (select current_setting('TimeZone') as tz, id from events where id <= 100) x group by tz"), [['Asia/Tokyo', '100']]);
  await client.end();
});

test('EXPLAIN ANALYZE counts the rows of every fragment and merge step', async () => {
  const client = await cluster.connect();
  const lines = (await rowsOf(client, 'explain analyze select kind, count(*) from events group by kind')).map((r) => r[0]);
  assert.match(lines[0]!, /^Distributed Aggregate/);
  const fragmentRows = lines.filter((l) => /fragment on node/.test(l!)).map((l) => Number(/rows=(\d+)/.exec(l!)![1]));
  assert.equal(fragmentRows.length, 3);
  assert.ok(lines.some((l) => /final on node \d+: rows=7 /.test(l!)), lines.join('\n'));
  assert.ok(lines.some((l) => /fragment on node \d+ \(in a worker thread\)/.test(l!)), 'outside a transaction the fragments run in a worker thread');
  await client.query('begin');
  const inTransaction = (await rowsOf(client, 'explain analyze select kind, count(*) from events group by kind')).map((r) => r[0]);
  assert.ok(!inTransaction.some((l) => /worker thread/.test(l!)), 'inside one, on the session\'s connections');
  await client.query('commit');
  await client.query('create temp table mine (id int)');
  const withTemp = (await rowsOf(client, 'explain analyze select kind, count(*) from events group by kind')).map((r) => r[0]);
  assert.ok(!withTemp.some((l) => /worker thread/.test(l!)), 'a session with temporary tables keeps its fragments on its connections');
  await client.end();
});

test('fragments in a worker thread run as the session: its role and settings apply', async () => {
  const admin = await cluster.connect();
  await admin.query('create role limited_reader nologin');
  await admin.query('grant select on kinds to limited_reader');
  const client = await cluster.connect();
  await client.query('set role limited_reader');
  await assert.rejects(client.query('select kind, count(*) from events group by kind'), (e: { code?: string }) => e.code === '42501');
  assert.deepEqual(await rowsOf(client, 'select label, count(*) from kinds group by label order by label limit 1'), [['label 0', '1']]);
  await client.query('reset role');
  await client.query("set extra_float_digits = -3");
  assert.deepEqual(await rowsOf(client, "select current_setting('extra_float_digits') as digits, count(*) from events group by digits"), [['-3', '3000']]);
  await client.end();
  await admin.query('revoke select on kinds from limited_reader');
  await admin.query('drop role limited_reader');
  await admin.end();
});

test('a long aggregate in a worker thread does not hold up other sessions\' aggregates', async () => {
  const slow = await cluster.connect();
  const fast = await cluster.connect();
  const order: string[] = [];
  const first = slow.query('select kind, count(*) from events where pg_sleep(0.002) is not null group by kind').then(() => order.push('slow'));
  await new Promise((r) => setTimeout(r, 200));
  const second = fast.query('select kind, count(*) from events group by kind').then(() => order.push('fast'));
  await Promise.all([first, second]);
  assert.deepEqual(order, ['fast', 'slow']);
  await Promise.all([slow.end(), fast.end()]);
});

test('a node that dies mid-query gives an error naming it; the session goes on', async () => {
  const client = await cluster.connect();
  const running = client.query('select id from events where pg_sleep(0.002) is not null order by id').then(
    () => null,
    (error: { code?: string; message: string }) => error,
  );
  await new Promise((r) => setTimeout(r, 400));
  await cluster.nodes[2].stop('immediate');
  const error = await running;
  assert.ok(error, 'the query fails');
  assert.match(error.message, /node 2|127\.0\.0\.1:\d+/);
  const survivor = await rowsOf(client, 'select 1').catch((e: Error) => e);
  assert.ok(!(survivor instanceof Error) || /node 2|out of service|detached/.test(survivor.message), String(survivor));
  await client.end().catch(() => undefined);
  // With the node gone, every tier fails up front, naming it, and leaves nothing open on the other nodes.
  const after = await cluster.connect();
  for (const sql of ['select count(*) from events', 'select id from events union all select 0', "select label, count(*) from events e join kinds k on k.kind = e.kind group by label"]) {
    await assert.rejects(after.query(sql), (e: { message: string }) => /node 2|127\.0\.0\.1:\d+/.test(e.message), sql);
  }
  for (const node of [0, 1]) {
    const direct = await cluster.connectDirect(node);
    const open = await direct.query("select count(*) from pg_stat_activity where state like 'idle in transaction%'");
    const temporary = await direct.query("select count(*) from pg_class where relpersistence = 't' and relname like 'parapool_%'");
    assert.deepEqual([open.rows[0].count, temporary.rows[0].count], ['0', '0'], `node ${node}`);
    await direct.end();
  }
  await after.end();
});
