// memory_cache_enabled against a real 2-node cluster. A reply served from the cache is told apart from one the nodes
// gave by changing the rows on the nodes directly, behind the proxy's back: a hit still shows the old rows. Every
// write, DDL or rule change through the proxy, in any session, empties the cache before its client sees it end; and
// what may not be cached (transactions, volatile functions, views, temporary tables, other settings) never is.

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import type { Client } from 'pg';
import { rowsOf, startTestCluster, type TestCluster } from '../support/test-cluster';

let cluster: TestCluster;
let client: Client;

before(async () => {
  cluster = await startTestCluster({
    nodes: 2,
    configure: (config) => {
      config.memoryCacheEnabled = true;
      config.memqcacheMaxcache = 4096;
      config.cacheUnsafeMemqcacheTableList = ['never_cached'];
    },
  });
  client = await cluster.connect();
  client.on('error', () => undefined); // the last test restarts the proxy
  await client.query('create table items (id int primary key, label text not null)');
  await client.query("insert into items values (1, 'one'), (2, 'two')");
  await client.query('create table other (id int primary key)');
  await client.query('create table facts (id int primary key, amount int not null)');
  await client.query("select parapool.distribute_table('facts', 'id')");
  await client.query('insert into facts select g, g from generate_series(1, 40) g');
  await client.query('create table never_cached (id int)');
  await client.query('insert into never_cached values (1)');
  await client.query('create table wide (id int, filler text)');
  await client.query("insert into wide select g, repeat('x', 100) from generate_series(1, 100) g");
  await client.query('create view item_view as select id, label from items');
});

after(async () => {
  await client?.end().catch(() => undefined);
  await cluster?.stop();
});

/** Changes the rows on every node directly: only a reply from the cache still shows the old ones. */
async function behindTheProxy(sql: string): Promise<void> {
  await cluster.onEachNode(sql);
}

async function cacheStats(): Promise<Record<string, string>> {
  return (await client.query('SHOW pool_cache')).rows[0];
}

/** Reads a label through the proxy, then changes it behind the proxy: true when a second read still sees the old one. */
async function servedFromCache(sql: string, on: Client = client): Promise<boolean> {
  const first = await rowsOf(on, sql);
  await behindTheProxy("update items set label = label || '+'");
  const second = await rowsOf(on, sql);
  await behindTheProxy("update items set label = rtrim(label, '+')");
  return JSON.stringify(first) === JSON.stringify(second);
}

test('a repeated SELECT is answered from the cache, and SHOW pool_cache counts it', async () => {
  await client.query('update items set label = label where false'); // the cache starts without items
  const before = await cacheStats();
  assert.equal(await servedFromCache('select id, label from items order by id'), true);
  const after = await cacheStats();
  assert.equal(Number(after.num_cache_hits) - Number(before.num_cache_hits), 1);
  assert.ok(Number(after.num_cache_entries) >= 1);
  assert.ok(Number(after.used_cache_entries_size) > 0);
  assert.equal(after.fragment_cache_entries_size, '0');
});

test("a write in another session invalidates the tables it wrote before that session sees its write end, and only those", async () => {
  const sql = 'select label from items where id = 1';
  const other = await cluster.connect();
  try {
    await rowsOf(client, sql);
    await behindTheProxy("update items set label = 'changed' where id = 1");
    assert.deepEqual(await rowsOf(client, sql), [['one']], 'still the cached reply');
    await other.query('insert into other values (1)');
    assert.deepEqual(await rowsOf(client, sql), [['one']], 'a write to another table leaves it');
    await other.query('update items set label = label where id = 2');
    assert.deepEqual(await rowsOf(client, sql), [['changed']]);
  } finally {
    await behindTheProxy("update items set label = 'one' where id = 1");
    await other.query('delete from other where id = 1');
    await other.query('update items set label = label where false');
    await other.end();
  }
});

test('a write whose table has a trigger, a cascading foreign key or a default of its own function invalidates everything', async () => {
  await client.query('create table audit (n int)');
  await client.query("create function log_audit() returns trigger language plpgsql as $$ begin update items set label = label || '!' where id = 1; return new; end $$");
  await client.query('create table triggered (n int)');
  await client.query('create trigger audit_it after insert on triggered for each row execute function log_audit()');
  await client.query('create table parent (id int primary key)');
  await client.query('create table child (parent int references parent on delete cascade)');
  await client.query('insert into parent values (1)');
  await client.query('insert into child values (1)');
  await client.query("create function next_audit() returns int language sql as $$ insert into audit values (1) returning n $$");
  await client.query('create table defaulted (n int default next_audit())');
  try {
    const sql = 'select label from items where id = 1';
    assert.deepEqual(await rowsOf(client, sql), [['one']]);
    await client.query('insert into triggered values (1)');
    assert.deepEqual(await rowsOf(client, sql), [['one!']], 'the trigger wrote items');
    assert.deepEqual(await rowsOf(client, 'select count(*) from child'), [['1']]);
    await client.query('delete from parent where id = 1');
    assert.deepEqual(await rowsOf(client, 'select count(*) from child'), [['0']], 'the cascade deleted from child');
    assert.deepEqual(await rowsOf(client, 'select count(*) from audit'), [['0']]);
    await client.query('insert into defaulted default values');
    assert.deepEqual(await rowsOf(client, 'select count(*) from audit'), [['1']], 'the default wrote audit');
  } finally {
    await client.query("update items set label = 'one' where id = 1");
    await client.query('drop table triggered, child, parent, defaulted, audit');
    await client.query('drop function log_audit(), next_audit()');
  }
});

test('a transaction of writes to one table invalidates it again at COMMIT', async () => {
  const sql = 'select label from items where id = 2';
  const writer = await cluster.connect();
  try {
    assert.deepEqual(await rowsOf(client, sql), [['two']]);
    await writer.query('begin');
    await writer.query("update items set label = 'two, in a transaction' where id = 2");
    assert.deepEqual(await rowsOf(client, sql), [['two']]);
    assert.deepEqual(await rowsOf(client, sql), [['two']], 'cached again while the transaction is open');
    await writer.query('commit');
    assert.deepEqual(await rowsOf(client, sql), [['two, in a transaction']]);
  } finally {
    await writer.query("update items set label = 'two' where id = 2");
    await writer.end();
  }
});

test('DDL and a rule change empty the cache too', async () => {
  for (const change of ['create table ddl_probe (id int)', 'drop table ddl_probe', "select parapool.replicate_table('other')"]) {
    const sql = 'select count(*) from items';
    await rowsOf(client, sql);
    await behindTheProxy("insert into items values (99, 'ninety-nine')");
    assert.deepEqual(await rowsOf(client, sql), [['2']], `cached before: ${change}`);
    const other = await cluster.connect();
    try {
      await other.query(change).catch((error: Error) => assert.fail(`${change}: ${error.message}`));
    } finally {
      await other.end();
    }
    assert.deepEqual(await rowsOf(client, sql), [['3']], `after: ${change}`);
    await behindTheProxy('delete from items where id = 99');
    await client.query('update items set label = label where false');
  }
});

test('a distributed aggregate is cached, and a write to the distributed table empties it', async () => {
  const sql = 'select sum(amount), count(*) from facts';
  assert.deepEqual(await rowsOf(client, sql), [['820', '40']]);
  await behindTheProxy('update facts set amount = amount + 1');
  assert.deepEqual(await rowsOf(client, sql), [['820', '40']]);
  await client.query('update facts set amount = amount - 1');
  assert.deepEqual(await rowsOf(client, sql), [['820', '40']]);
});

test('nothing is cached inside a transaction block, and a transaction that wrote empties the cache at COMMIT', async () => {
  const sql = 'select label from items where id = 2';
  await client.query('begin');
  try {
    assert.equal(await servedFromCache(sql), false);
  } finally {
    await client.query('commit');
  }
  // A read cached while another session's transaction is open, then that transaction commits.
  const writer = await cluster.connect();
  try {
    await writer.query('begin');
    await writer.query("update items set label = 'two, committed' where id = 2");
    assert.deepEqual(await rowsOf(client, sql), [['two']]);
    assert.deepEqual(await rowsOf(client, sql), [['two']]);
    await writer.query('commit');
    assert.deepEqual(await rowsOf(client, sql), [['two, committed']]);
  } finally {
    await writer.query("update items set label = 'two' where id = 2");
    await writer.end();
  }
});

test('read-only transaction control and SET leave the cache as it is', async () => {
  const sql = 'select id from items order by id';
  await rowsOf(client, sql);
  const other = await cluster.connect();
  try {
    await other.query('begin');
    await other.query('rollback');
    await other.query('set work_mem = 8192');
    await other.query('select 1');
    const before = await cacheStats();
    await rowsOf(client, sql);
    assert.equal(Number((await cacheStats()).num_cache_hits) - Number(before.num_cache_hits), 1);
  } finally {
    await other.end();
  }
});

test('volatile and time functions, views, temporary tables, locking reads and unsafe tables are not cached', async () => {
  for (const sql of [
    'select label, random() >= 0 from items order by id',
    'select label, now() is not null from items order by id',
    "select label, current_setting('work_mem') from items order by id",
    "select label from items where 'now'::timestamptz is not null order by id",
    'select label from items order by id for share',
    'select label from item_view order by id',
    'select label from items, never_cached order by items.id',
    "select label from pg_catalog.pg_class c, items where c.relname = 'items' order by id",
  ]) {
    assert.equal(await servedFromCache(sql), false, sql);
  }
  const session = await cluster.connect();
  try {
    await session.query('create temporary table scratch (label text)');
    await session.query("insert into scratch values ('a')");
    assert.equal(await servedFromCache('select label from items order by id', session), false, 'a session with temporary tables');
  } finally {
    await session.end();
  }
});

test("each session's output settings are part of the key, and a SET takes effect at once", async () => {
  await client.query('create table dates (d date)');
  await client.query("insert into dates values ('2024-03-01')");
  const sql = 'select d from dates';
  const iso = await rowsOf(client, sql);
  const german = await cluster.connect({ options: '-c DateStyle=German' });
  try {
    assert.deepEqual(await rowsOf(german, sql), [['01.03.2024']]);
    assert.deepEqual(iso, [['2024-03-01']]);
    await german.query('set DateStyle = ISO');
    assert.deepEqual(await rowsOf(german, sql), [['2024-03-01']]);
    await german.query("set DateStyle = 'SQL, DMY'");
    assert.deepEqual(await rowsOf(german, sql), [['01/03/2024']]);
  } finally {
    await german.end();
    await client.query('drop table dates');
  }
});

test('a reply larger than memqcache_maxcache is not kept', async () => {
  assert.equal(await servedFromCache('select w.id, w.filler, i.label from wide w, items i order by w.id, i.id'), false);
  assert.equal(await servedFromCache('select w.id, i.label from wide w, items i where w.id < 3 order by w.id, i.id'), true);
});

test('an error is not cached, and the session goes on', async () => {
  await assert.rejects(client.query('select no_such_column from items'), { code: '42703' });
  await assert.rejects(client.query('select no_such_column from items'), { code: '42703' });
  assert.deepEqual(await rowsOf(client, 'select count(*) from items'), [['2']]);
});

test('concurrent writers and readers: a read never returns less than the last write acknowledged before it began', async () => {
  // A row per writer: two writers of one row may reach the two nodes in different orders (as with pgpool-II).
  await client.query('create table counter (id int primary key, n int not null)');
  await client.query('insert into counter values (1, 0), (2, 0)');
  const writers = await Promise.all([cluster.connect(), cluster.connect()]);
  const readers = await Promise.all([cluster.connect(), cluster.connect(), cluster.connect()]);
  const acknowledged = [0, 0];
  let stop = false;
  let reads = 0;
  const violations: string[] = [];
  try {
    const writing = writers.map(async (writer, index) => {
      for (let i = 0; i < 60; i++) {
        acknowledged[index] = Number((await rowsOf(writer, `update counter set n = n + 1 where id = ${index + 1} returning n`))[0][0]);
      }
    });
    const reading = readers.map(async (reader) => {
      while (!stop) {
        const floor = [...acknowledged];
        const rows = (await rowsOf(reader, 'select n from counter order by id')).map((row) => Number(row[0]));
        reads++;
        for (const i of [0, 1]) if (rows[i] < floor[i]) violations.push(`read ${rows[i]} of row ${i + 1} after ${floor[i]} was acknowledged`);
      }
    });
    await Promise.all(writing);
    stop = true;
    await Promise.all(reading);
  } finally {
    await Promise.all([...writers, ...readers].map((c) => c.end()));
  }
  assert.deepEqual(violations, []);
  assert.ok(reads > 0);
  assert.deepEqual(await rowsOf(client, 'select n from counter order by id'), [['60'], ['60']]);
  const stats = await cacheStats();
  assert.ok(Number(stats.num_cache_hits) > 0);
});

test('memqcache_expire ends an entry after its seconds', async () => {
  await cluster.restartProxy((config) => {
    config.memqcacheExpire = 1;
  });
  const session = await cluster.connect();
  try {
    const sql = 'select label from items where id = 1';
    await rowsOf(session, sql);
    await behindTheProxy("update items set label = 'expired' where id = 1");
    assert.deepEqual(await rowsOf(session, sql), [['one']]);
    await new Promise((resolve) => setTimeout(resolve, 1100));
    assert.deepEqual(await rowsOf(session, sql), [['expired']]);
  } finally {
    await behindTheProxy("update items set label = 'one' where id = 1");
    await session.end();
  }
});
