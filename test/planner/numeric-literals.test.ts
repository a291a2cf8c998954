// The key of a statement's shape: numeric literals blanked, everything else kept, and no key where the lexing is
// not certain. Texts that share a key must parse to the same tree but for their numbers (what the relay's shape
// cache relies on), checked here with PostgreSQL's own parser on a set of texts and their variations.

import { before, test } from 'node:test';
import assert from 'node:assert/strict';
import { blankNumericLiterals, statementShape } from '../../src/planner/numeric-literals';
import { loadParser, parseSql } from '../../src/planner/sql-parser';

before(() => loadParser());

test('numbers are blanked; names, strings, quoted names and comments keep theirs', () => {
  const cases: [string, string | null][] = [
    ['SELECT abalance FROM pgbench_accounts WHERE aid = 48213;', 'SELECT abalance FROM pgbench_accounts WHERE aid = \0;'],
    ['select 1.5, .25, 3e10, 2.5E-3, -7', 'select \0, \0, \0, \0, -\0'],
    ['select t1.c2 from t1 where x2y = 3', 'select t1.c2 from t1 where x2y = \0'],
    ["select '42', 'it''s 7' from t where k = 9", "select '42', 'it''s 7' from t where k = \0"],
    ['select "col 1" from "t""2" limit 10', 'select "col 1" from "t""2" limit \0'],
    ['select 1 -- 2 and 3\n, 4 /* 5 /* 6 */ 7 */ , 8', 'select \0 -- 2 and 3\n, \0 /* 5 /* 6 */ 7 */ , \0'],
    ['select a::varchar(10)', 'select a::varchar(\0)'],
    ['select 1..2', 'select \0.\0'],
    ['show work_mem', 'show work_mem'],
    // Where a number may not be a number, or quoting rules depend on settings: no key.
    ['select $1', null],
    ['select $$ 1 $$', null],
    ["select E'\\n' , 1", null],
    ["select 'a\\' , 1", null],
    ["select U&'d\\0061t' , 1", null],
    ['select u&"x" , 1', null],
    ["select 'unterminated", null],
    ['select /* unterminated', null],
    ['select "unterminated', null],
  ];
  for (const [sql, expected] of cases) assert.equal(blankNumericLiterals(sql), expected, sql);
});

test('texts that share a key parse to one shape; texts that differ elsewhere do not share a key', () => {
  const variants: string[][] = [
    ['SELECT abalance FROM pgbench_accounts WHERE aid = 1;', 'SELECT abalance FROM pgbench_accounts WHERE aid = 99999999;', 'SELECT abalance FROM pgbench_accounts WHERE aid = 0;'],
    ['UPDATE pgbench_accounts SET abalance = abalance + -4123 WHERE aid = 17;', 'UPDATE pgbench_accounts SET abalance = abalance + -5 WHERE aid = 2;'],
    ['INSERT INTO h (tid, bid, aid, delta, mtime) VALUES (1, 2, 3, 4, CURRENT_TIMESTAMP);', 'INSERT INTO h (tid, bid, aid, delta, mtime) VALUES (10, 20, 30, 40, CURRENT_TIMESTAMP);'],
    ['select x from t order by 1 limit 5 offset 10', 'select x from t order by 2 limit 50 offset 0'],
    ['select 1.5::numeric(10,2), 2e3', 'select 100::numeric(12,4), 0.5e-1'],
    ['set statement_timeout = 100', 'set statement_timeout = 2000'],
    ['select pg_advisory_lock(1)', 'select pg_advisory_lock(77)'],
  ];
  for (const group of variants) {
    const keys = group.map((sql) => blankNumericLiterals(sql));
    assert.ok(keys[0] !== null, group[0]);
    for (const key of keys) assert.equal(key, keys[0], `one key for ${group.join(' | ')}`);
    const shapes = group.map((sql) => {
      const parsed = parseSql(sql);
      assert.ok(parsed.ok, sql);
      return statementShape(parsed.ok ? parsed.statements : []);
    });
    for (const shape of shapes) assert.equal(shape, shapes[0], `one shape for ${group.join(' | ')}`);
  }
  const different = ["select * from t where k = '1'", "select * from t where k = '2'", 'select * from t1 where k = 1', 'select * from t2 where k = 1', 'select "1" from t', 'select "2" from t'];
  assert.equal(new Set(different.map((sql) => blankNumericLiterals(sql))).size, different.length);
});
