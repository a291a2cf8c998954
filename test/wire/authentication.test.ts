// Passwords on both sides of the proxy, with real PostgreSQL nodes and a real client library: clients prove who
// they are to the proxy (md5, SCRAM, against pool_passwd or userlist.txt), and the proxy answers each node's own
// password challenge from the same file, or says plainly which node wanted what.

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { rowsOf, startTestCluster, type TestCluster } from '../support/test-cluster';
import type { ClientAuthentication } from '../../src/config/config';

let cluster: TestCluster;

before(async () => {
  cluster = await startTestCluster({ nodes: 2 });
  await onEachNode(['create role alice login']);
});

after(async () => {
  await cluster?.stop();
});

async function onEachNode(statements: string[]): Promise<void> {
  for (let node = 0; node < cluster.nodes.length; node++) {
    const direct = await cluster.connectDirect(node);
    try {
      for (const sql of statements) await direct.query(sql);
    } finally {
      await direct.end();
    }
  }
}

function passwordFile(name: string, text: string): string {
  const path = join(cluster.dir, name);
  writeFileSync(path, text);
  return path;
}

interface ConnectError {
  code?: string;
  severity?: string;
  message: string;
}

/** Connects through the proxy and returns current_user, or the connection's error. */
async function tryConnect(user: string, password?: string): Promise<{ user: string } | { error: ConnectError }> {
  let client;
  try {
    client = await cluster.connect({ user, password, connectionTimeoutMillis: 30_000 });
  } catch (error) {
    return { error: error as ConnectError };
  }
  try {
    const [[current]] = await rowsOf(client, 'select current_user');
    return { user: current! };
  } finally {
    await client.end();
  }
}

async function assertConnects(user: string, password?: string): Promise<void> {
  const result = await tryConnect(user, password);
  assert.ok('user' in result, `${user} should connect: ${'error' in result ? result.error.message : ''}`);
  assert.equal(result.user, user);
}

async function assertRejected(user: string, password: string | undefined, code: string, message?: RegExp): Promise<ConnectError> {
  const result = await tryConnect(user, password);
  assert.ok('error' in result, `${user} should be refused`);
  assert.equal(result.error.code, code, result.error.message);
  if (message) assert.match(result.error.message, message);
  return result.error;
}

async function useClientAuth(method: ClientAuthentication, poolPasswd: string | null): Promise<void> {
  await cluster.restartProxy((config) => {
    config.clientAuthentication = method;
    config.poolPasswd = poolPasswd;
  });
}

test('trust: a client needs no password', async () => {
  await useClientAuth('trust', passwordFile('trust_passwd', 'alice:TEXTwonderland\n'));
  await assertConnects('alice');
  await assertConnects('alice', 'anything at all');
  await assertConnects('postgres');
});

for (const method of ['md5', 'scram-sha-256'] as const) {
  for (const [format, text] of [
    ['pool_passwd', '# users\nalice:TEXTwonderland\n'],
    ['userlist.txt', '"alice" "wonderland"\n'],
  ] as const) {
    test(`${method} with a ${format} file: right password in, wrong password and unknown user out with 28P01`, async () => {
      await useClientAuth(method, passwordFile(`${method}_${format}`, text));
      await assertConnects('alice', 'wonderland');
      await assertRejected('alice', 'looking-glass', '28P01', /password authentication failed for user "alice"/);
      await assertRejected('alice', 'Wonderland', '28P01');
      await assertRejected('mallory', 'wonderland', '28P01', /password authentication failed for user "mallory"/);
      // The session that did get in works normally, writes included.
      const client = await cluster.connect({ user: 'alice', password: 'wonderland' });
      try {
        assert.deepEqual(await rowsOf(client, 'select $1::int * 2', [21]), [['42']]);
      } finally {
        await client.end();
      }
    });
  }
}

test('md5 client authentication against an md5 hash in pool_passwd', async () => {
  const hash = createHash('md5').update('wonderland' + 'alice').digest('hex');
  await useClientAuth('md5', passwordFile('md5_hash_passwd', `alice:md5${hash}\n`));
  await assertConnects('alice', 'wonderland');
  await assertRejected('alice', 'wrong', '28P01');
});

let nodePasswords: Promise<void> | null = null;

/** Nodes wanting SCRAM from bob and dave and md5 from carol; a proxy (client auth trust) knowing bob's and carol's. */
function requireNodePasswords(): Promise<void> {
  nodePasswords ??= (async () => {
    await onEachNode([
      "set password_encryption = 'scram-sha-256'",
      "create role bob login password 'bob-secret'",
      "set password_encryption = 'md5'",
      "create role carol login password 'carol-secret'",
      "set password_encryption = 'scram-sha-256'",
      "create role dave login password 'dave-secret'",
      'create table auth_log (who text, n int)',
      'grant select, insert on auth_log to bob, carol',
    ]);
    for (const node of cluster.nodes) {
      await node.setHba([
        'local all all trust',
        'host all postgres 127.0.0.1/32 trust',
        'host all bob 127.0.0.1/32 scram-sha-256',
        'host all carol 127.0.0.1/32 md5',
        'host all dave 127.0.0.1/32 scram-sha-256',
      ]);
    }
    // The nodes really do want passwords now.
    await assert.rejects(cluster.connectDirect(0, { user: 'bob' }), (error: Error) => /password/i.test(error.message));
    const carolHash = createHash('md5').update('carol-secret' + 'carol').digest('hex');
    await useClientAuth('trust', passwordFile('node_passwd', `bob:TEXTbob-secret\ncarol:md5${carolHash}\n`));
  })();
  return nodePasswords;
}

test('the proxy answers the nodes\' SCRAM and md5 challenges from pool_passwd', async () => {
  await requireNodePasswords();
  for (const user of ['bob', 'carol']) {
    const client = await cluster.connect({ user });
    try {
      assert.deepEqual(await rowsOf(client, 'select current_user, $1::int + 1', [1]), [[user, '2']]);
      await client.query('insert into auth_log values ($1, $2)', [user, user.length]);
      assert.deepEqual(await rowsOf(client, 'select n from auth_log where who = $1', [user]), [[String(user.length)]]);
    } finally {
      await client.end();
    }
  }
  for (let node = 0; node < cluster.nodes.length; node++) {
    const direct = await cluster.connectDirect(node);
    try {
      assert.deepEqual(await rowsOf(direct, 'select who, n from auth_log order by who'), [['bob', '3'], ['carol', '5']], `node ${node}`);
    } finally {
      await direct.end();
    }
  }
});

test('a user the password file lacks gets a FATAL 28P01 naming the node that asked', async () => {
  await requireNodePasswords();
  const error = await assertRejected('dave', undefined, '28P01', /node \d+ \(127\.0\.0\.1:(\d+)\) asks for a password for user "dave"/);
  assert.equal(error.severity, 'FATAL');
  const port = Number(/127\.0\.0\.1:(\d+)/.exec(error.message)![1]);
  assert.ok(cluster.nodes.some((node) => node.port === port), `${port} is not a node's port`);
});

test('a node refusing one user for want of a password stays in service for everyone else', async () => {
  await requireNodePasswords();
  await tryConnect('dave');
  const client = await cluster.connect();
  try {
    const nodes = await client.query('show pool_nodes');
    assert.deepEqual(nodes.rows.map((row) => row.status), cluster.nodes.map(() => 'up'), JSON.stringify(nodes.rows));
  } finally {
    await client.end();
  }
  await assertConnects('bob');
  await assertConnects('carol');
});
