// The query cache's own rules, without nodes: which statements it may answer, which replies it keeps, and how
// its limits, generations and suspensions decide what is stored.

import { before, test } from 'node:test';
import assert from 'node:assert/strict';
import { loadParser, parseSql } from '../../src/planner/sql-parser';
import { cacheableRead, containedWrite, QueryCache, storableReply, type QueryCacheConfig } from '../../src/session/query-cache';
import { serverMessages } from '../../src/protocol/server-messages';
import { PgError } from '../../src/protocol/errors';

const config: QueryCacheConfig = { expireSeconds: 0, maxEntryBytes: 100, totalBytes: 250, unsafeTables: /^(?:secret.*)$/i, safeTables: null };

before(async () => {
  await loadParser();
});

function read(sql: string, with_: QueryCacheConfig = config): string[] | null {
  const parsed = parseSql(sql);
  assert.ok(parsed.ok, sql);
  return cacheableRead(parsed.statements[0].node, with_)?.relations ?? null;
}

test('plain SELECTs of named tables are cacheable, with their relations sorted and CTE names left out', () => {
  assert.deepEqual(read('select a, count(*) from t join s on t.id = s.id group by a'), ['s', 't']);
  assert.deepEqual(read('with w as (select * from t) select upper(x) from w, public.u'), ['public.u', 't']);
  assert.deepEqual(read('select 1'), []);
  assert.deepEqual(read('select x from t where x in (select y from s) order by 1 limit 3'), ['s', 't']);
});

test('volatile or time-dependent SELECTs, locking reads and catalog reads are not', () => {
  for (const sql of [
    'select now() from t', 'select random() from t', "select nextval('s')", 'select current_date from t', "select x from t where d > 'today'",
    'select * from t for update', 'select * into t2 from t', 'select * from generate_series(1, 3)', 'select * from t tablesample system (10)',
    'select * from pg_class', 'select * from pg_catalog.pg_class', 'select * from information_schema.tables', 'select my_function(x) from t',
    'select public.upper(x) from t', 'with d as (delete from t returning *) select * from d', 'select x collate "C" from t',
    'select * from secret_table', 'select * from public.SECRET_things',
  ]) {
    assert.equal(read(sql), null, sql);
  }
  const parsed = parseSql('insert into t values (1)');
  assert.ok(parsed.ok);
  assert.equal(cacheableRead(parsed.statements[0].node, config), null);
});

test('cache_safe_memqcache_table_list keeps every other table out', () => {
  const safeOnly = { ...config, safeTables: /^(?:t|s)$/i };
  assert.deepEqual(read('select * from t, s', safeOnly), ['s', 't']);
  assert.equal(read('select * from t, u', safeOnly), null);
});

test('only rows and a CommandComplete before the ReadyForQuery are kept', () => {
  const rows = [serverMessages.dataRow(['1']), serverMessages.commandComplete('SELECT 1'), serverMessages.readyForQuery('I')];
  const reply = storableReply(rows);
  assert.ok(reply);
  assert.equal(reply.length, Buffer.concat(rows).length - 6);
  assert.equal(storableReply(rows.slice(0, 2)), null, 'no ReadyForQuery yet');
  const withNotice = [serverMessages.noticeResponse({ severity: 'NOTICE', code: '00000', message: 'hi' }), ...rows];
  assert.equal(storableReply(withNotice), null);
  const withError = [serverMessages.errorResponse(new PgError({ code: '42703', message: 'no' })), serverMessages.readyForQuery('I')];
  assert.equal(storableReply(withError), null);
});

test('the store keeps within its limits, least recently used out first, and refuses replies read across an invalidation', () => {
  const cache = new QueryCache(config);
  const bytes = (n: number) => Buffer.alloc(n, 1);
  assert.equal(cache.store('big', cache.generation, bytes(101), ['public.t']), false, 'over memqcache_maxcache');
  assert.ok(cache.store('a', cache.generation, bytes(100), ['public.t']));
  assert.ok(cache.store('b', cache.generation, bytes(100), ['public.t']));
  assert.ok(cache.lookup('a'));
  assert.ok(cache.store('c', cache.generation, bytes(100), ['public.t']), 'evicts b, the least recently used');
  assert.equal(cache.lookup('b'), null);
  assert.ok(cache.lookup('a') && cache.lookup('c'));
  const since = cache.generation;
  cache.invalidate();
  assert.equal(cache.lookup('a'), null);
  assert.equal(cache.store('a', since, bytes(10), ['public.t']), false, 'read before the invalidation');
  const release = cache.suspend();
  assert.equal(cache.store('a', cache.generation, bytes(10), ['public.t']), false, 'suspended');
  release();
  assert.ok(cache.store('a', cache.generation, bytes(10), ['public.t']));
  const stats = cache.stats();
  assert.equal(stats.entries, 1);
  assert.equal(stats.usedBytes, 10);
});

test('invalidating a table forgets only the replies that read it, and refuses replies of it read across the invalidation', () => {
  const cache = new QueryCache(config);
  assert.ok(cache.store('t-and-s', cache.generation, Buffer.alloc(5), ['public.t', 'public.s']));
  assert.ok(cache.store('u', cache.generation, Buffer.alloc(5), ['public.u']));
  const since = cache.generation;
  cache.invalidateTables(['public.s']);
  assert.equal(cache.lookup('t-and-s'), null);
  assert.ok(cache.lookup('u'));
  assert.equal(cache.store('s', since, Buffer.alloc(5), ['public.s']), false, 'read of s before its invalidation');
  assert.ok(cache.store('t', since, Buffer.alloc(5), ['public.t']), 'read of another table');
  assert.equal(cache.stats().usedBytes, 10);
});

test('memqcache_expire ends entries, and a cache whose peers are not heard serves and stores nothing', () => {
  const cache = new QueryCache({ ...config, expireSeconds: 1 });
  assert.ok(cache.store('a', cache.generation, Buffer.alloc(5), ['public.t'], 1000));
  assert.ok(cache.lookup('a', 1500));
  assert.equal(cache.lookup('a', 2000), null);
  let heard = false;
  cache.peers = { get valid() { return heard; }, broadcast: async () => undefined };
  assert.equal(cache.store('b', cache.generation, Buffer.alloc(5), ['public.t']), false);
  heard = true;
  assert.ok(cache.store('b', cache.generation, Buffer.alloc(5), ['public.t']));
  heard = false;
  assert.equal(cache.lookup('b'), null);
});

test('a contained write is one INSERT, UPDATE or DELETE calling only what a cached read may call', () => {
  const target = (sql: string) => {
    const parsed = parseSql(sql);
    assert.ok(parsed.ok, sql);
    return containedWrite(parsed.statements[0].node);
  };
  assert.equal(target('update t set x = x + 1 where id = 3'), 't');
  assert.equal(target('insert into s.t select * from u'), 's.t');
  assert.equal(target('delete from t using u where t.id = u.id returning t.id'), 't');
  assert.equal(target("insert into t values (1) on conflict (id) do update set x = upper('a')"), 't');
  for (const sql of ['update t set x = f(x)', 'with d as (delete from u returning *) insert into t select * from d', "insert into t values (nextval('s'))", 'select 1', 'create table t (x int)']) {
    assert.equal(target(sql), null, sql);
  }
});
