// Streaming-replication failover through failover_command, pgpool-II's way: the operator's command promotes the
// standby (here with psql and pg_promote(), given the new main node's host and port by %H and %r) and the proxy
// only finds the new primary by asking pg_is_in_recovery(). A real fault: the primary killed with SIGKILL.

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { findPostgresProgram } from '../../src/cluster/postgres-install';
import { killNode } from '../support/node-faults';
import { rowsOf, startTestCluster, type TestCluster } from '../support/test-cluster';

let cluster: TestCluster;
let logPath = '';

before(async () => {
  cluster = await startTestCluster({
    nodes: 2,
    streaming: true,
    configure: (config) => {
      logPath = join(config.logdir, 'failover.log');
      const psql = findPostgresProgram('psql');
      // The promoted standby had the primary's synchronous_standby_names (pg_basebackup copied them); with no
      // standby left it must stop waiting for one, as an operator's failover script would see to.
      config.failoverCommand =
        `echo "failed=%d new=%m host=%H port=%r old_primary=%P" >> ${logPath}; ` +
        `${psql} -X -At -h %H -p %r -U postgres -d postgres -c "SELECT pg_promote(true, 60)" -c "ALTER SYSTEM SET synchronous_standby_names = ''" -c "SELECT pg_reload_conf()" >> ${logPath} 2>&1`;
      config.healthCheck = { ...config.healthCheck, period: 1, timeout: 1, maxRetries: 0, retryDelay: 1 };
      config.recoveryTimeout = 30;
    },
  });
});

after(async () => {
  await cluster?.stop();
});

async function roles(): Promise<string[][]> {
  const client = await cluster.connect();
  try {
    return (await client.query('SHOW pool_nodes')).rows.map((row: Record<string, string>) => [row.status, row.role]);
  } finally {
    await client.end();
  }
}

test('the primary killed with SIGKILL: failover_command promotes the standby and the proxy serves writes on it', async () => {
  const setup = await cluster.connect();
  await setup.query('CREATE TABLE before_failover (id int PRIMARY KEY)');
  await setup.query('INSERT INTO before_failover SELECT generate_series(1, 100)');
  await setup.end();
  assert.deepEqual(await roles(), [['up', 'primary'], ['up', 'standby']]);
  // With failover_command set, the command chooses the node it promotes: a switchover to a chosen node is refused.
  const asker = await cluster.connect();
  await assert.rejects(asker.query('SELECT parapool.promote_node(1)'), { code: '0A000' });
  await asker.end();
  assert.deepEqual(await roles(), [['up', 'primary'], ['up', 'standby']], 'nothing changed');

  const killedAt = Date.now();
  await killNode(cluster.nodes[0]);
  let served = 0;
  for (let attempt = 0; attempt < 300 && served === 0; attempt++) {
    const client = await cluster.connect().catch(() => null);
    try {
      if (client) {
        await client.query('INSERT INTO before_failover VALUES (101)');
        served = Date.now();
      }
    } catch {
      // the primary is gone and not yet replaced: 08006 / 57P01 until the command has promoted the standby
    } finally {
      await client?.end().catch(() => undefined);
    }
    if (served === 0) await sleep(100);
  }
  assert.ok(served > 0, `writes were served again after the kill\n${readFileSync(logPath, 'utf8')}`);
  console.log(`failover_command: kill -> a write served ${served - killedAt} ms later`);

  const log = readFileSync(logPath, 'utf8');
  assert.match(log, new RegExp(`^failed=0 new=1 host=127\\.0\\.0\\.1 port=${cluster.nodes[1].port} old_primary=0$`, 'm'));
  assert.match(log, /^t$/m, 'pg_promote() returned true');
  const after = await roles();
  assert.equal(after[0][0], 'down');
  assert.deepEqual(after[1], ['up', 'primary']);
  const promoted = await cluster.connectDirect(1);
  try {
    assert.deepEqual(await rowsOf(promoted, 'SELECT pg_is_in_recovery(), count(*) FROM before_failover'), [['f', '101']]);
  } finally {
    await promoted.end();
  }
});
