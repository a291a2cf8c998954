// The clients people actually point at a PostgreSQL server (psql with \copy, pgbench in every query mode,
// node-postgres) must work through the proxy unchanged, and whatever they write must land identically on
// every node.

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Client } from 'pg';
import { findPostgresProgram } from '../../src/cluster/postgres-install';
import { rowsOf, startTestCluster, type TestCluster } from '../support/test-cluster';

let cluster: TestCluster;
let workDir: string;

before(async () => {
  workDir = mkdtempSync(join(tmpdir(), 'parapool-clients-'));
  cluster = await startTestCluster({ nodes: 2 });
});

after(async () => {
  await cluster?.stop();
  if (workDir) rmSync(workDir, { recursive: true, force: true });
});


interface ProgramResult {
  code: number | null;
  output: string;
}

function run(program: string, args: string[], cwd = workDir, timeoutMs = 120_000): Promise<ProgramResult> {
  return new Promise((resolvePromise, reject) => {
    const env: NodeJS.ProcessEnv = { ...process.env, PGCONNECT_TIMEOUT: '30' };
    delete env.PGPASSWORD;
    delete env.PGSERVICE;
    const child = spawn(findPostgresProgram(program), args, { cwd, env, stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    child.stdout.on('data', (d) => (output += d));
    child.stderr.on('data', (d) => (output += d));
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.on('error', (error) => {
      clearTimeout(timer);
      reject(error);
    });
    child.on('close', (code) => {
      clearTimeout(timer);
      resolvePromise({ code, output });
    });
  });
}

function connectionArgs(): string[] {
  return ['-h', '127.0.0.1', '-p', String(cluster.proxy.port), '-U', 'postgres'];
}

/** The same query's rows on every node, straight from the nodes. */
async function onEachNode(sql: string): Promise<(string | null)[][][]> {
  const results: (string | null)[][][] = [];
  for (let node = 0; node < cluster.nodes.length; node++) {
    const direct = await cluster.connectDirect(node);
    try {
      results.push(await rowsOf(direct, sql));
    } finally {
      await direct.end();
    }
  }
  return results;
}

/** Asserts every node gives the same rows for sql and returns node 0's. */
async function sameOnEveryNode(sql: string): Promise<(string | null)[][]> {
  const [first, ...others] = await onEachNode(sql);
  others.forEach((rows, i) => assert.deepEqual(rows, first, `node ${i + 1} differs from node 0 for: ${sql}`));
  return first;
}

function csvField(value: string | null): string {
  if (value === null) return '';
  return /[",\r\n]/.test(value) || value === '' ? `"${value.replace(/"/g, '""')}"` : value;
}

test('psql runs a script through the proxy with \\copy in and out', async () => {
  const rows: [number, string, string, string | null][] = [];
  for (let i = 1; i <= 1000; i++) {
    const name = i % 7 === 0 ? `name, with comma ${i}` : i % 11 === 0 ? `say "hi" ${i}` : i % 13 === 0 ? `line\nbreak ${i}` : i % 17 === 0 ? `naïve ☃ ${i}` : `name ${i}`;
    rows.push([i, name, (i * 1.25).toFixed(2), i % 5 === 0 ? null : `note ${i}`]);
  }
  writeFileSync(join(workDir, 'data.csv'), rows.map((r) => [String(r[0]), r[1], r[2], r[3]].map(csvField).join(',')).join('\n') + '\n');
  writeFileSync(
    join(workDir, 'script.sql'),
    [
      'create table psql_copy (id int primary key, name text not null, amount numeric(10,2) not null, note text);',
      "\\copy psql_copy from 'data.csv' with (format csv)",
      "update psql_copy set note = 'updated' where id % 100 = 0;",
      "\\copy (select id, name, amount, note from psql_copy where id % 2 = 0 order by id) to 'out.csv' with (format csv)",
      'select count(*) as loaded from psql_copy;',
      '',
    ].join('\n'),
  );
  const result = await run('psql', ['-X', '-v', 'ON_ERROR_STOP=1', ...connectionArgs(), '-d', 'postgres', '-f', 'script.sql']);
  assert.equal(result.code, 0, result.output);
  assert.match(result.output, /COPY 1000/);
  assert.match(result.output, /COPY 500/);
  assert.match(result.output, /loaded\s*\n-+\n\s*1000\s*\n\(1 row\)/);

  const expected = rows
    .filter((r) => r[0] % 2 === 0)
    .map((r) => [String(r[0]), r[1], r[2], r[0] % 100 === 0 ? 'updated' : r[3]].map(csvField).join(','))
    .join('\n') + '\n';
  assert.equal(readFileSync(join(workDir, 'out.csv'), 'utf8'), expected);

  const summary = await sameOnEveryNode(
    "select count(*), sum(amount), count(note), md5(string_agg(t::text, '|' order by id)) from psql_copy t",
  );
  const total = rows.reduce((s, r) => s + Math.round(Number(r[2]) * 100), 0);
  assert.deepEqual(summary[0].slice(0, 3), ['1000', (total / 100).toFixed(2), String(rows.filter((r) => r[3] !== null || r[0] % 100 === 0).length)]);
});

test('pgbench initialises and runs select-only in simple, extended and prepared modes', async () => {
  const init = await run('pgbench', ['-i', '-s', '1', ...connectionArgs(), 'postgres'], workDir, 300_000);
  assert.equal(init.code, 0, init.output);
  assert.doesNotMatch(init.output, /error/i, init.output);
  const counts = await sameOnEveryNode(
    'select (select count(*) from pgbench_accounts), (select count(*) from pgbench_branches), (select count(*) from pgbench_tellers), (select count(*) from pgbench_history)',
  );
  assert.deepEqual(counts, [['100000', '1', '10', '0']]);

  for (const mode of ['simple', 'extended', 'prepared']) {
    const result = await run('pgbench', ['-S', '-M', mode, '-c', '4', '-j', '2', '-t', '200', '-n', ...connectionArgs(), 'postgres'], workDir, 300_000);
    assert.equal(result.code, 0, `-M ${mode}: ${result.output}`);
    assert.doesNotMatch(result.output, /error/i, `-M ${mode}: ${result.output}`);
    assert.match(result.output, /number of transactions actually processed: 800\/800/, `-M ${mode}: ${result.output}`);
  }
});

test('pgbench TPC-B in prepared and simple modes leaves every node with the same balances and history', async () => {
  for (const mode of ['prepared', 'simple']) {
    const result = await run('pgbench', ['-c', '4', '-j', '2', '-t', '100', '-M', mode, '-n', ...connectionArgs(), 'postgres'], workDir, 300_000);
    assert.equal(result.code, 0, `-M ${mode}: ${result.output}`);
    assert.doesNotMatch(result.output, /error/i, `-M ${mode}: ${result.output}`);
    assert.match(result.output, /number of transactions actually processed: 400\/400/, `-M ${mode}: ${result.output}`);
    const failed = /number of failed transactions: (\d+)/.exec(result.output);
    if (failed) assert.equal(failed[1], '0', `-M ${mode}: ${result.output}`);
  }
  const summary = await sameOnEveryNode(
    `select (select sum(abalance) from pgbench_accounts), (select sum(bbalance) from pgbench_branches),
            (select sum(tbalance) from pgbench_tellers), (select count(*) from pgbench_history),
            (select md5(string_agg(h::text, '|' order by h::text)) from pgbench_history h)`,
  );
  assert.equal(summary[0][3], '800');
  // Every transaction adds the same delta to one account, teller and branch.
  assert.equal(summary[0][0], summary[0][1]);
  assert.equal(summary[0][1], summary[0][2]);
});

async function withClient<T>(body: (client: Client) => Promise<T>): Promise<T> {
  const client = await cluster.connect();
  try {
    return await body(client);
  } finally {
    await client.end();
  }
}

test('node-postgres: parameters, named prepared statements and INSERT ... RETURNING', async () => {
  await withClient(async (client) => {
    assert.deepEqual(await rowsOf(client, 'select $1::int + $2::int', [2, 3]), [['5']]);
    assert.deepEqual(await rowsOf(client, 'select $1::text || $2::text, $3::int is null', ["it's ", 'quoted', null]), [["it's quoted", 't']]);

    const text = 'select $1::int * 10 as v, $2::text || \'!\' as s';
    for (const [n, s] of [[1, 'a'], [2, 'bc'], [3, 'def'], [-4, ''], [5, 'é']] as const) {
      const result = await client.query({ name: 'q1', text, values: [n, s], rowMode: 'array' });
      assert.deepEqual(result.rows, [[String(n * 10), `${s}!`]]);
    }

    await client.query('create table pg_items (id serial primary key, name text not null, qty int not null)');
    const inserted: string[][] = [];
    for (let i = 1; i <= 5; i++) {
      const result = await client.query({ name: 'ins', text: 'insert into pg_items (name, qty) values ($1, $2) returning id, name, qty', values: [`item ${i}`, i * 3], rowMode: 'array' });
      inserted.push(result.rows[0]);
    }
    assert.deepEqual(inserted, [1, 2, 3, 4, 5].map((i) => [String(i), `item ${i}`, String(i * 3)]));
  });
  assert.deepEqual(await sameOnEveryNode('select id, name, qty from pg_items order by id'), [1, 2, 3, 4, 5].map((i) => [String(i), `item ${i}`, String(i * 3)]));
});

test('node-postgres: COMMIT keeps and ROLLBACK discards on every node', async () => {
  await withClient(async (client) => {
    await client.query('create table pg_tx (id int primary key, v text)');
    await client.query('begin');
    await client.query('insert into pg_tx values ($1, $2)', [1, 'committed']);
    await client.query('update pg_tx set v = v || $1 where id = $2', ['!', 1]);
    await client.query('commit');

    await client.query('begin');
    await client.query('insert into pg_tx values ($1, $2)', [2, 'rolled back']);
    await client.query('delete from pg_tx where id = 1');
    assert.deepEqual(await rowsOf(client, 'select count(*) from pg_tx'), [['1']]);
    await client.query('rollback');
    assert.deepEqual(await rowsOf(client, 'select id, v from pg_tx order by id'), [['1', 'committed!']]);
  });
  assert.deepEqual(await sameOnEveryNode('select id, v from pg_tx order by id'), [['1', 'committed!']]);
});

test('node-postgres: an error inside a transaction, ROLLBACK, and the session carries on', async () => {
  await withClient(async (client) => {
    await client.query('create table pg_err (id int primary key)');
    await client.query('begin');
    await client.query('insert into pg_err values ($1)', [1]);
    await assert.rejects(client.query('select 1 / $1::int', [0]), (error: { code?: string }) => error.code === '22012');
    await assert.rejects(client.query('select 1'), (error: { code?: string }) => error.code === '25P02');
    await client.query('rollback');
    assert.deepEqual(await rowsOf(client, 'select $1::int + 1', [41]), [['42']]);
    await client.query('insert into pg_err values ($1)', [2]);
    assert.deepEqual(await rowsOf(client, 'select id from pg_err order by id'), [['2']]);
  });
  assert.deepEqual(await sameOnEveryNode('select id from pg_err order by id'), [['2']]);
});

test('node-postgres: a 50,000-row result arrives complete and in order', async () => {
  const sql = 'select g, md5(g::text) as h, repeat(chr(65 + g % 26), g % 40) as pad from generate_series(1, 50000) g order by g';
  const rows = await withClient((client) => rowsOf(client, sql));
  assert.equal(rows.length, 50000);
  const text = rows.map((r) => r.join(':')).join('|');
  const ours = createHash('md5').update(text, 'utf8').digest('hex');
  const direct = await cluster.connectDirect(0);
  try {
    const [[expected]] = await rowsOf(direct, `select md5(string_agg(g || ':' || h || ':' || pad, '|' order by g)) from (${sql}) s`);
    assert.equal(ours, expected);
  } finally {
    await direct.end();
  }
  assert.deepEqual(rows[49999].slice(0, 2), ['50000', createHash('md5').update('50000').digest('hex')]);
});
