// Scripts in the style of PostgreSQL's regression suite, run by psql through two replicated nodes and against one
// reference PostgreSQL: the transcripts (statements, rows, command tags, notices and errors) must be identical,
// no node may be detached, and both nodes must hold the same data afterwards.

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { psqlTranscript } from '../support/psql';
import { startTestCluster, type TestCluster } from '../support/test-cluster';

const scriptDir = join(__dirname, '..', '..', '..', 'fixtures', 'replicated');
const scripts = readdirSync(scriptDir).filter((f) => f.endsWith('.sql')).sort();

let cluster: TestCluster;

before(async () => {
  cluster = await startTestCluster({ nodes: 2, reference: true });
});

after(async () => {
  await cluster?.stop();
});

async function nodeStates(): Promise<string[]> {
  const client = await cluster.connect();
  const result = await client.query('show pool_nodes');
  await client.end();
  return result.rows.map((row: Record<string, string>) => `${row.node_id}:${row.status}`);
}

/** Every user table's rows, as one checksum per table, read on one node. */
const checksumsSql = `
  select n.nspname || '.' || c.relname,
         (xpath('/row/c/text()', query_to_xml(format('select md5(coalesce(string_agg(x::text, ''|'' order by x::text), '''')) as c from %I.%I x', n.nspname, c.relname), false, true, '')))[1]::text
    from pg_class c join pg_namespace n on n.oid = c.relnamespace
   where c.relkind = 'r' and n.nspname not in ('pg_catalog', 'information_schema', 'parapool') and n.nspname not like 'pg_temp%' and n.nspname not like 'pg_toast%'
   order by 1`;

/** `diff -u` of the two transcripts, so a failure shows the lines that differ rather than the whole text. */
function unifiedDiff(expected: string, actual: string, name: string): string {
  if (expected === actual) return '';
  const expectedFile = join(cluster.dir, `${name}.expected`);
  const actualFile = join(cluster.dir, `${name}.actual`);
  writeFileSync(expectedFile, expected);
  writeFileSync(actualFile, actual);
  return `${name} differs from the reference:\n${spawnSync('diff', ['-u', expectedFile, actualFile], { encoding: 'utf8' }).stdout}`;
}

for (const script of scripts) {
  test(`replicated script ${script}: the same transcript as one PostgreSQL, no node detached`, async () => {
    const file = join(scriptDir, script);
    const [expected, actual] = await Promise.all([psqlTranscript(cluster.reference!.port, file, cluster.dir), psqlTranscript(cluster.proxy.port, file, cluster.dir)]);
    assert.equal(actual, expected, unifiedDiff(expected, actual, script));
    assert.deepEqual(await nodeStates(), ['0:up', '1:up']);
  });
}

test('after every script both nodes hold the same data', async () => {
  const [first, second] = await cluster.onEachNode(checksumsSql);
  assert.ok(first.length >= 10, `tables compared: ${first.length}`);
  assert.deepEqual(second, first);
});

test('a write that would leave a per-node column default to each node is refused with 0A000, never diverges', async () => {
  const client = await cluster.connect();
  await client.query('create table refused_defaults (id int, token uuid default gen_random_uuid(), at timestamptz default now())');
  const refusals = [
    'insert into refused_defaults (id) select g from generate_series(1, 2) g',
    'insert into refused_defaults select g from generate_series(1, 2) g',
    'prepare ins (int) as insert into refused_defaults (id) values ($1)',
    'prepare stamp (int) as insert into refused_defaults (id, token, at) values ($1, null, now())',
  ];
  for (const sql of refusals) {
    await assert.rejects(client.query(sql), (e: { code?: string }) => e.code === '0A000', sql);
  }
  // Through the extended protocol every execution gets values from the main node.
  for (const id of [1, 2]) await client.query({ name: 'ins_default', text: 'insert into refused_defaults (id) values ($1)', values: [id] });
  const [first, second] = await cluster.onEachNode('select id, token, at from refused_defaults order by id');
  assert.equal(first.length, 2);
  assert.deepEqual(second, first);
  await client.query('drop table refused_defaults');
  await client.end();
  assert.deepEqual(await nodeStates(), ['0:up', '1:up']);
});
