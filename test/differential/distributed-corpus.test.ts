// The corpus on 4 nodes with the TPC-H tables distributed: orders and lineitem hashed on the order key and
// co-located, part and partsupp on the part key, customer on its key, the edge-case tables on their ids; supplier,
// nation and region replicated. Every query must give the reference PostgreSQL's answer exactly (floats to 12
// significant digits), whichever tier the planner picks; the count per tier is reported.

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { loadParser } from '../../src/planner/sql-parser';
import { differenceOf, isOrdered, loadCorpus, loadTpch, runForText, type CorpusQuery } from '../support/differential';
import { startTestCluster, type TestCluster } from '../support/test-cluster';
import { distributionSql } from '../support/tpch-distribution';

let cluster: TestCluster;


before(async () => {
  await loadParser();
  cluster = await startTestCluster({ nodes: 4, reference: true });
  const proxy = await cluster.connect();
  const reference = await cluster.connectDirect('reference');
  await Promise.all([loadTpch(proxy, 0.01), loadTpch(reference, 0.01)]);
  for (const sql of distributionSql) await proxy.query(sql);
  await Promise.all([proxy.end(), reference.end()]);
});

after(async () => {
  await cluster?.stop();
});

test('every corpus query gives the reference answer on 4 nodes with distributed tables', async (t) => {
  const corpus = loadCorpus();
  const proxy = await cluster.connect();
  const reference = await cluster.connectDirect('reference');
  const failures: string[] = [];
  const tiers = new Map<string, number>();
  const shapes = new Map<string, number>();
  for (const query of corpus) {
    const [expected, actual] = await Promise.all([runForText(reference, query.sql), runForText(proxy, query.sql)]);
    const difference = differenceOf(expected, actual, isOrdered(query.sql), true);
    if (difference) {
      failures.push(`${query.file} ${query.name}: ${difference}`);
      continue;
    }
    const explained = await proxy.query({ text: `EXPLAIN ${query.sql}`, rowMode: 'array' }).catch(() => null);
    const first = String(explained?.rows[0]?.[0] ?? '');
    const tier = /^Distributed (\w+)/.exec(first)?.[1] ?? 'replicated';
    tiers.set(tier, (tiers.get(tier) ?? 0) + 1);
    if (tier === 'Broadcast') joinQueries.push(query);
    const shape = /^fb_([a-z]+(?:_set|_on)?)_/.exec(query.name)?.[1] ?? (query.file === '01-tpch.sql' ? 'tpch' : null);
    if (shape) shapes.set(shape, (shapes.get(shape) ?? 0) + 1);
  }
  await Promise.all([proxy.end(), reference.end()]);
  t.diagnostic(`matched ${corpus.length - failures.length} of ${corpus.length}; by tier: ${[...tiers].map(([k, n]) => `${k} ${n}`).join(', ')}`);
  t.diagnostic(`matched per shape: ${[...shapes].map(([k, n]) => `${k} ${n}`).join(', ')}`);
  assert.deepEqual(failures, []);
});

const joinQueries: CorpusQuery[] = [];

test('with broadcast joins off, the joins that broadcast repartition (or gather) and still match', async (t) => {
  await cluster.restartProxy((config) => (config.broadcastJoinLimit = 0));
  const proxy = await cluster.connect();
  const reference = await cluster.connectDirect('reference');
  const failures: string[] = [];
  const tiers = new Map<string, number>();
  for (const query of joinQueries) {
    const [expected, actual] = await Promise.all([runForText(reference, query.sql), runForText(proxy, query.sql)]);
    const difference = differenceOf(expected, actual, isOrdered(query.sql), true);
    if (difference) failures.push(`${query.file} ${query.name}: ${difference}`);
    const explained = await proxy.query({ text: `EXPLAIN ${query.sql}`, rowMode: 'array' });
    const tier = /^Distributed (\w+)/.exec(String(explained.rows[0][0]))?.[1] ?? 'replicated';
    tiers.set(tier, (tiers.get(tier) ?? 0) + 1);
  }
  await Promise.all([proxy.end(), reference.end()]);
  t.diagnostic(`${joinQueries.length} join queries: ${[...tiers].map(([k, n]) => `${k} ${n}`).join(', ')}`);
  assert.ok((tiers.get('Repartition') ?? 0) > 0, 'some joins repartition');
  assert.deepEqual(failures, []);
});
