// Planner golden tests: for each SQL in fixtures/plans/*.sql, EXPLAIN through the proxy (4 nodes, the TPC-H
// tables distributed as in the differential corpus) must print exactly the expected plan that follows its `----`
// line. PARAPOOL_ACCEPT=1 rewrites the expected plans from what the planner prints now.

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { loadParser } from '../../src/planner/sql-parser';
import { fixturesDir, tpchScript } from '../support/differential';
import { startTestCluster, type TestCluster } from '../support/test-cluster';
import { distributionSql } from '../support/tpch-distribution';

let cluster: TestCluster;
const plansDir = join(fixturesDir, 'plans');

interface PlanCase {
  readonly name: string;
  readonly sql: string;
  readonly expected: string;
}

function readCases(file: string): PlanCase[] {
  return readFileSync(join(plansDir, file), 'utf8')
    .split(/^-- name: */m)
    .slice(1)
    .map((part) => {
      const newline = part.indexOf('\n');
      const [sql, expected = ''] = part.slice(newline + 1).split(/^----\n/m);
      return { name: part.slice(0, newline).trim(), sql: sql.trim().replace(/;$/, ''), expected: expected.trim() };
    });
}

function writeCases(file: string, cases: readonly PlanCase[]): void {
  writeFileSync(join(plansDir, file), cases.map((c) => `-- name: ${c.name}\n${c.sql};\n----\n${c.expected}\n`).join('\n'));
}

before(async () => {
  await loadParser();
  cluster = await startTestCluster({ nodes: 4 });
  const proxy = await cluster.connect();
  for (const script of tpchScript(0.001)) await proxy.query(script);
  for (const sql of distributionSql) await proxy.query(sql);
  await proxy.end();
});

after(async () => {
  await cluster?.stop();
});

for (const file of readdirSync(plansDir).filter((f) => f.endsWith('.sql')).sort()) {
  test(`distributed plans of ${file}`, async () => {
    const cases = readCases(file);
    const proxy = await cluster.connect();
    const actual: PlanCase[] = [];
    for (const planCase of cases) {
      let text: string;
      try {
        const result = await proxy.query({ text: `EXPLAIN ${planCase.sql}`, rowMode: 'array' });
        text = result.rows.map((r) => String(r[0])).join('\n');
      } catch (error) {
        text = `query error ${(error as Error).message}`;
      }
      actual.push({ ...planCase, expected: text });
    }
    await proxy.end();
    if (process.env.PARAPOOL_ACCEPT === '1') {
      writeCases(file, actual);
      return;
    }
    for (let i = 0; i < cases.length; i++) assert.equal(actual[i].expected, cases[i].expected, `plan of ${cases[i].name} in ${file}`);
  });
}
