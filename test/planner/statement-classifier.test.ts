// Reads and writes as the replicated mode must see them: a write misread as a read would diverge the nodes,
// so each rule, and the pinning of time functions, is pinned here.

import { before, test } from 'node:test';
import assert from 'node:assert/strict';
import { checkDeterminism, pinTimeFunctions } from '../../src/planner/nondeterminism';
import { loadParser, parseSql } from '../../src/planner/sql-parser';
import { classifyStatement, compileWriteFunctions } from '../../src/planner/statement-classifier';

before(() => loadParser());

function classOf(sql: string, functions = ['nextval', 'setval']): string {
  const parsed = parseSql(sql);
  assert.ok(parsed.ok, sql);
  const c = classifyStatement(parsed.statements[0].node, { writeFunctions: compileWriteFunctions(functions), volatileFunctions: new Set(['add_row']) });
  return c.kind === 'admin' ? `admin:${c.command}` : c.kind;
}

test('statements are classified as reads, writes or admin commands', () => {
  const cases: [string, string][] = [
    ['select 1', 'read'],
    ['select add_row(1)', 'write'],
    ['select * from s.add_row(1)', 'write'],
    ['select random(), clock_timestamp()', 'read'],
    ['select * from t join u using (id) where x in (select y from v)', 'read'],
    ['values (1), (2)', 'read'],
    ['table t', 'read'],
    ['with x as (select 1) select * from x', 'read'],
    ['show work_mem', 'read'],
    ['show pool_nodes', 'admin:pool_nodes'],
    ['SHOW POOL_BACKEND_STATS', 'admin:pool_backend_stats'],
    ['show parapool_queries', 'admin:parapool_queries'],
    ['show pool_no_such_command', 'read'],
    ['explain select 1', 'read'],
    ['explain analyze select 1', 'read'],
    ['explain analyze delete from t', 'write'],
    ['copy t to stdout', 'read'],
    ['copy (select 1) to stdout', 'read'],
    ['copy t from stdin', 'write'],
    ['select nextval(\'s\')', 'write'],
    ['select pg_catalog.setval(\'s\', 1)', 'write'],
    ['select * from t for update', 'write'],
    ['select * from t for share', 'write'],
    ['select 1 into new_table', 'write'],
    ['with d as (delete from t returning *) select * from d', 'write'],
    ['insert into t values (1)', 'write'],
    ['update t set a = 1', 'write'],
    ['delete from t', 'write'],
    ['create table t (a int)', 'write'],
    ['set search_path = x', 'write'],
    ['begin', 'write'],
    ['commit', 'write'],
    ['savepoint a', 'write'],
    ['prepare p as select 1', 'write'],
    ['declare c cursor for select 1', 'write'],
    ['fetch 1 from c', 'write'],
    ['lock table t', 'write'],
    ['do $$ begin end $$', 'write'],
    ['vacuum t', 'write'],
  ];
  for (const [sql, expected] of cases) assert.equal(classOf(sql), expected, sql);
  assert.equal(classOf('select my_writer(1)', ['my_.*']), 'write');
  assert.equal(classOf('select my_writer(1)', []), 'read');
});

test('writes that call per-node functions are refused, time functions are pinned', async () => {
  const check = (sql: string) => {
    const parsed = parseSql(sql);
    assert.ok(parsed.ok);
    return checkDeterminism(parsed.statements[0].node);
  };
  assert.equal(check('insert into t values (1)').kind, 'deterministic');
  assert.equal(check('select now()').kind, 'time');
  assert.equal(check('create table t (a timestamptz default now())').kind, 'deterministic');
  const rejected = check('insert into t values (random())');
  assert.equal(rejected.kind, 'rejected');
  assert.ok(rejected.kind === 'rejected' && rejected.error.code === '0A000' && /random\(\)/.test(rejected.error.message));
  assert.equal(check('update t set u = gen_random_uuid()').kind, 'rejected');
  const timed = check('insert into t values (now(), current_date, current_timestamp(3), localtimestamp)');
  assert.deepEqual(timed, { kind: 'time', count: 4 });

  const parsed = parseSql('insert into t values ($1, now(), current_date) returning *');
  assert.ok(parsed.ok);
  let asked = '';
  const sql = await pinTimeFunctions(parsed.statements[0].node, async (select) => {
    asked = select;
    return ['2026-01-02 03:04:05.123456+00', '2026-01-02'];
  });
  assert.match(asked, /^SELECT \(now\(\)\)::text, \(CURRENT_DATE\)::text$/);
  assert.match(sql, /CAST\('2026-01-02 03:04:05\.123456\+00' AS timestamp with time zone\)/);
  assert.match(sql, /'2026-01-02'::date/);
  assert.match(sql, /\$1/);
  assert.doesNotMatch(sql, /now\(\)|CURRENT_DATE/);
});

test('syntax errors are returned with their position, not thrown', () => {
  const parsed = parseSql('select from where');
  assert.equal(parsed.ok, false);
  assert.ok(!parsed.ok && parsed.error.code === '42601' && parsed.error.position !== undefined);
});
