// Real drivers through port 9999, compared with one PostgreSQL server: psycopg2 (Debian's python3-psycopg2:
// executemany, COPY in and out, named cursors, many types, rollback) and JDBC (Debian's libpostgresql-jdbc-java:
// PreparedStatement batches, setFetchSize inside a transaction, rollback) against a distributed table. Each
// program prints what it saw; the proxy's transcript must equal the reference server's.

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { startTestCluster, type TestCluster } from '../support/test-cluster';

const sources = resolve(__dirname, '../../../test/clients/drivers');
/** Debian's interpreter, which has python3-psycopg2 (a pyenv or venv python on PATH may not). */
const python = '/usr/bin/python3';
const jdbcJar = '/usr/share/java/postgresql.jar';

let cluster: TestCluster;
let workDir: string;

before(async () => {
  workDir = mkdtempSync(join(tmpdir(), 'parapool-drivers-'));
  cluster = await startTestCluster({ nodes: 2, reference: true });
});

after(async () => {
  await cluster?.stop();
  if (workDir) rmSync(workDir, { recursive: true, force: true });
});

function run(program: string, args: string[]): Promise<string> {
  return new Promise((resolvePromise, reject) => {
    execFile(program, args, { cwd: workDir, timeout: 120_000 }, (error, stdout, stderr) => {
      if (error) reject(new Error(`${program} ${args.join(' ')} failed: ${error.message}\n${stderr}\n${stdout}`));
      else resolvePromise(stdout);
    });
  });
}

test('psycopg2 sees through the proxy what it sees on one PostgreSQL server', async () => {
  const script = join(sources, 'psycopg2_client.py');
  const expected = await run(python, [script, String(cluster.reference!.port), '0']);
  const actual = await run(python, [script, String(cluster.proxy.port), '1']);
  assert.match(expected, /named cursor 8 /);
  assert.equal(actual, expected);
});

test('JDBC sees through the proxy what it sees on one PostgreSQL server', async () => {
  await run('javac', ['-d', workDir, join(sources, 'JdbcClient.java')]);
  const expected = await run('java', ['-cp', `${workDir}:${jdbcJar}`, 'JdbcClient', String(cluster.reference!.port), '0']);
  const actual = await run('java', ['-cp', `${workDir}:${jdbcJar}`, 'JdbcClient', String(cluster.proxy.port), '1']);
  assert.match(expected, /fetched 990 /);
  assert.match(expected, /^distributed batch 300 300$/m);
  assert.match(expected, /^duplicate batch refused 23505$/m);
  assert.equal(actual, expected);
});
