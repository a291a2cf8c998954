// Every query of the corpus, on a cluster where every table is replicated (no partition rule), must give
// exactly the reference PostgreSQL's answer: this is the oracle later tiers are held to.

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { loadParser } from '../../src/planner/sql-parser';
import { differenceOf, isOrdered, loadCorpus, loadTpch, runForText } from '../support/differential';
import { startTestCluster, type TestCluster } from '../support/test-cluster';

let cluster: TestCluster;

before(async () => {
  await loadParser();
  cluster = await startTestCluster({ nodes: 2, reference: true });
  const proxy = await cluster.connect();
  const reference = await cluster.connectDirect('reference');
  await Promise.all([loadTpch(proxy, 0.01), loadTpch(reference, 0.01)]);
  await Promise.all([proxy.end(), reference.end()]);
});

after(async () => {
  await cluster?.stop();
});

test('the data loaded through the proxy is identical on every node and on the reference', async () => {
  const tables = ['region', 'nation', 'supplier', 'customer', 'part', 'partsupp', 'orders', 'lineitem', 'typed_values', 'departments'];
  const checksum = tables.map((t) => `(select md5(string_agg(x::text, '|' order by x::text)) from ${t} x) as ${t}`).join(', ');
  const sums: string[] = [];
  for (const target of [0, 1, 'reference'] as const) {
    const client = await cluster.connectDirect(target);
    const result = await client.query({ text: `select ${checksum}`, rowMode: 'array' });
    sums.push(JSON.stringify(result.rows[0]));
    await client.end();
  }
  assert.equal(sums[0], sums[2]);
  assert.equal(sums[1], sums[2]);
});

test('every corpus query matches the reference exactly', async (t) => {
  const corpus = loadCorpus();
  assert.ok(corpus.length >= 150, `corpus has ${corpus.length} queries`);
  const proxy = await cluster.connect();
  const reference = await cluster.connectDirect('reference');
  const failures: string[] = [];
  const perFile = new Map<string, number>();
  for (const query of corpus) {
    const [expected, actual] = await Promise.all([runForText(reference, query.sql), runForText(proxy, query.sql)]);
    const difference = differenceOf(expected, actual, isOrdered(query.sql));
    if (difference) failures.push(`${query.file} ${query.name}: ${difference}`);
    else perFile.set(query.file, (perFile.get(query.file) ?? 0) + 1);
    assert.equal(expected.error, null, `${query.name} fails on the reference: ${expected.error}`);
  }
  await Promise.all([proxy.end(), reference.end()]);
  t.diagnostic(`matched ${corpus.length - failures.length} of ${corpus.length}: ${[...perFile].map(([f, n]) => `${f} ${n}`).join(', ')}`);
  assert.deepEqual(failures, []);
});
