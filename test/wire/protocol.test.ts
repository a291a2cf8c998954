// The client side of protocol 3.0 through the proxy, byte by byte: the extended protocol's statements and
// portals, COPY, cancel, and bad input. Bad input must get 08P01 where the protocol allows an answer, end only
// that session, and leave no node in a transaction.

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { serialize } from 'pg-protocol';
import { dataRowValues, errorFields, frame, RawClient } from '../support/raw-client';
import { rowsOf, startTestCluster, type TestCluster } from '../support/test-cluster';

let cluster: TestCluster;

before(async () => {
  cluster = await startTestCluster({ nodes: 2, configure: (c) => (c.clientMaxMessageSize = 64 * 1024) });
  const client = await cluster.connect();
  await client.query('create table items (id int primary key, name text)');
  await client.query("insert into items select g, 'item ' || g from generate_series(1, 10) g");
  await client.end();
});

after(async () => {
  await cluster?.stop();
});

/** No session on any node is inside a transaction or still running a statement of ours. */
async function assertNodesIdle(): Promise<void> {
  for (let node = 0; node < cluster.nodes.length; node++) {
    const direct = await cluster.connectDirect(node);
    let busy: (string | null)[][] = [];
    for (let attempt = 0; attempt < 50; attempt++) {
      busy = await rowsOf(direct, "select state, query from pg_stat_activity where backend_type = 'client backend' and pid <> pg_backend_pid() and (state <> 'idle' or xact_start is not null)");
      if (busy.length === 0) break;
      await new Promise((r) => setTimeout(r, 100));
    }
    await direct.end();
    assert.deepEqual(busy, [], `node ${node} has busy sessions`);
  }
}

async function assertProxyServes(): Promise<void> {
  const client = await cluster.connect();
  assert.deepEqual(await rowsOf(client, 'select count(*) from items'), [['10']]);
  await client.end();
}

test('SSLRequest is declined with N and the start-up continues in the clear', async () => {
  const client = await RawClient.connect(cluster.proxy.port);
  const ssl = Buffer.alloc(8);
  ssl.writeInt32BE(8, 0);
  ssl.writeInt32BE(80877103, 4);
  client.send(ssl);
  assert.equal(await client.readByte(), 'N');
  client.send(serialize.startup({ user: 'postgres', database: 'postgres' }));
  const messages = await client.readUntil('Z');
  assert.deepEqual(messages.filter((m) => m.type === 'R' || m.type === 'K' || m.type === 'Z').map((m) => m.type), ['R', 'K', 'Z']);
  assert.ok(messages.some((m) => m.type === 'S' && m.payload.toString().startsWith('server_version\0')));
  client.end();
});

test('several statements in one Query message each answer, in one transaction', async () => {
  const client = await RawClient.ready(cluster.proxy.port);
  client.send(serialize.query('select 1; select 2 as two; show transaction_isolation'));
  const messages = await client.readUntil('Z');
  assert.deepEqual(messages.map((m) => m.type).join(''), 'TDCTDCTDCZ');
  assert.deepEqual(dataRowValues(messages[4]), ['2']);
  client.send(serialize.query('insert into items values (100, \'x\'); select 1/0'));
  const failed = await client.readUntil('Z');
  assert.equal(errorFields(failed.find((m) => m.type === 'E')!).C, '22012');
  client.end();
  await assertProxyServes(); // the insert was rolled back with the failed message: still 10 rows
});

test('extended protocol: named statement, row limits, portal suspension, describe and close', async () => {
  const client = await RawClient.ready(cluster.proxy.port);
  client.send([
    serialize.parse({ name: 'by_min', text: 'select id, name from items where id >= $1 order by id', types: [23] }),
    serialize.describe({ type: 'S', name: 'by_min' }),
    serialize.sync(),
  ]);
  const described = await client.readUntil('Z');
  assert.equal(described.map((m) => m.type).join(''), '1tTZ');
  client.send([serialize.query('begin')]);
  await client.readUntil('Z');
  client.send([
    serialize.bind({ portal: 'cur', statement: 'by_min', values: ['4'] }),
    serialize.execute({ portal: 'cur', rows: 3 }),
    serialize.sync(),
  ]);
  const first = await client.readUntil('Z');
  assert.equal(first.map((m) => m.type).join(''), '2DDDsZ');
  assert.deepEqual(dataRowValues(first[1]), ['4', 'item 4']);
  client.send([serialize.execute({ portal: 'cur', rows: 0 }), serialize.sync()]);
  const rest = await client.readUntil('Z');
  assert.equal(rest.map((m) => m.type).join(''), 'DDDDCZ');
  assert.deepEqual(dataRowValues(rest[3]), ['10', 'item 10']);
  client.send([serialize.close({ type: 'S', name: 'by_min' }), serialize.query('commit')]);
  await client.readUntil('Z');
  client.send([serialize.bind({ statement: 'by_min', values: ['1'] }), serialize.execute({}), serialize.sync()]);
  const gone = await client.readUntil('Z');
  assert.equal(errorFields(gone.find((m) => m.type === 'E')!).C, '26000');
  client.end();
});

test('extended protocol: Flush returns replies before Sync; a prepared write runs on every node', async () => {
  const client = await RawClient.ready(cluster.proxy.port);
  client.send([serialize.parse({ name: 'ins', text: 'insert into items values ($1, $2)' }), serialize.flush()]);
  assert.equal((await client.readUntil('1')).map((m) => m.type).join(''), '1');
  client.send([serialize.sync()]);
  await client.readUntil('Z');
  for (const id of [11, 12]) {
    client.send([serialize.bind({ statement: 'ins', values: [String(id), `item ${id}`] }), serialize.execute({}), serialize.sync()]);
    const replies = await client.readUntil('Z');
    assert.equal(replies.map((m) => m.type).join(''), '2CZ');
  }
  for (let node = 0; node < 2; node++) {
    const direct = await cluster.connectDirect(node);
    assert.deepEqual(await rowsOf(direct, 'select count(*) from items where id in (11, 12)'), [['2']]);
    await direct.query('delete from items where id in (11, 12)');
    await direct.end();
  }
  client.end();
});

test('a Bind for a statement that does not exist gets 26000 and the session goes on', async () => {
  const client = await RawClient.ready(cluster.proxy.port);
  client.send([serialize.bind({ statement: 'nope', values: [] }), serialize.execute({}), serialize.sync()]);
  const replies = await client.readUntil('Z');
  const error = errorFields(replies.find((m) => m.type === 'E')!);
  assert.equal(error.C, '26000');
  assert.match(error.M, /prepared statement "nope" does not exist/);
  client.send(serialize.query('select 1'));
  assert.equal((await client.readUntil('Z')).map((m) => m.type).join(''), 'TDCZ');
  client.end();
});

test('COPY FROM STDIN and COPY TO STDOUT through the proxy', async () => {
  const client = await RawClient.ready(cluster.proxy.port);
  client.send(serialize.query('create table copied (a int, b text)'));
  await client.readUntil('Z');
  client.send(serialize.query('copy copied from stdin'));
  await client.readUntil('G');
  client.send([serialize.copyData(Buffer.from('1\tone\n2\ttwo\n')), serialize.copyData(Buffer.from('3\tthree\n')), serialize.copyDone()]);
  const done = await client.readUntil('Z');
  assert.match(done.find((m) => m.type === 'C')!.payload.toString(), /^COPY 3/);
  client.send(serialize.query('copy (select * from copied order by a) to stdout'));
  const out = await client.readUntil('Z');
  assert.equal(out.map((m) => m.type).join(''), 'HdddcCZ');
  assert.equal(out[1].payload.toString(), '1\tone\n');
  client.send(serialize.query('copy copied from stdin'));
  await client.readUntil('G');
  client.send([serialize.copyData(Buffer.from('x\tbad\n')), serialize.copyDone()]);
  const failed = await client.readUntil('Z');
  assert.equal(errorFields(failed.find((m) => m.type === 'E')!).C, '22P02');
  client.end();
  for (let node = 0; node < 2; node++) {
    const direct = await cluster.connectDirect(node);
    assert.deepEqual(await rowsOf(direct, 'select count(*) from copied'), [['3']]);
    await direct.end();
  }
});

test('a client that disconnects in the middle of COPY leaves nothing behind', async () => {
  const client = await RawClient.ready(cluster.proxy.port);
  client.send(serialize.query('create table half_copied (a int)'));
  await client.readUntil('Z');
  client.send(serialize.query('copy half_copied from stdin'));
  await client.readUntil('G');
  client.send(serialize.copyData(Buffer.from('1\n2\n')));
  await new Promise((r) => setTimeout(r, 100));
  client.end();
  await assertNodesIdle();
  for (let node = 0; node < 2; node++) {
    const direct = await cluster.connectDirect(node);
    assert.deepEqual(await rowsOf(direct, 'select count(*) from half_copied'), [['0']]);
    await direct.end();
  }
  await assertProxyServes();
});

test('a client that disconnects in the middle of a query or a transaction leaves no node busy', async () => {
  const sleeper = await RawClient.ready(cluster.proxy.port);
  sleeper.send(serialize.query('select pg_sleep(30)'));
  await new Promise((r) => setTimeout(r, 300));
  sleeper.end();
  const open = await RawClient.ready(cluster.proxy.port);
  open.send(serialize.query("begin; insert into items values (50, 'in flight')"));
  await open.readUntil('Z');
  open.end();
  await assertNodesIdle();
  await assertProxyServes();
});

test('CancelRequest reaches the node running the query', async () => {
  const client = await RawClient.ready(cluster.proxy.port);
  client.send(serialize.query('select pg_sleep(30)'));
  await new Promise((r) => setTimeout(r, 300));
  const canceller = await RawClient.connect(cluster.proxy.port);
  canceller.send(serialize.cancel(client.processId, client.secretKey));
  const replies = await client.readUntil('Z', 10000);
  assert.equal(errorFields(replies.find((m) => m.type === 'E')!).C, '57014');
  client.end();
});

test('bad input: each gets a clear error or a clean close, and other sessions go on', async (t) => {
  const survivor = await cluster.connect();
  const cases: { name: string; bytes: Buffer; startup: boolean; code: string | null }[] = [
    { name: 'oversized startup packet', bytes: Buffer.from([0, 0, 0x4e, 0x20, 0, 3, 0, 0]), startup: false, code: '08P01' },
    { name: 'startup packet shorter than its header', bytes: Buffer.from([0, 0, 0, 4, 0, 3, 0, 0]), startup: false, code: '08P01' },
    { name: 'startup packet without a user', bytes: serialize.startup({ database: 'postgres' } as Record<string, string>), startup: false, code: '28000' },
    { name: 'unsupported protocol version', bytes: Buffer.from([0, 0, 0, 8, 0, 2, 0, 0]), startup: false, code: '0A000' },
    { name: 'message length below 4', bytes: Buffer.from([0x51, 0, 0, 0, 2]), startup: true, code: '08P01' },
    { name: 'message longer than client_max_message_size', bytes: Buffer.from([0x51, 0, 2, 0, 0]), startup: true, code: '08P01' },
    { name: 'unknown message type', bytes: frame('z', Buffer.from('x')), startup: true, code: '08P01' },
    { name: 'Query without a terminator', bytes: frame('Q', Buffer.from('select 1')), startup: true, code: '08P01' },
    { name: 'Bind with a parameter longer than the message', bytes: frame('B', Buffer.from([0, 0, 0, 0, 0, 1, 0, 0, 0, 100])), startup: true, code: '08P01' },
  ];
  for (const c of cases) {
    const client = c.startup ? await RawClient.ready(cluster.proxy.port) : await RawClient.connect(cluster.proxy.port);
    client.send(c.bytes);
    const messages = await client.readUntilClosed();
    const error = messages.find((m) => m.type === 'E');
    assert.ok(error, `${c.name}: an ErrorResponse`);
    assert.equal(errorFields(error).C, c.code, c.name);
    t.diagnostic(`${c.name}: ${errorFields(error).C} ${errorFields(error).M}`);
  }
  const truncated = await RawClient.connect(cluster.proxy.port);
  truncated.send(Buffer.from([0, 0, 0, 100, 0, 3]));
  truncated.end();
  assert.deepEqual(await rowsOf(survivor, 'select count(*) from items'), [['10']]);
  await survivor.end();
  await assertNodesIdle();
});

test('a second Parse of a live statement name fails with 42P05 on every node, and no node is blamed', async () => {
  const client = await RawClient.ready(cluster.proxy.port);
  client.send([serialize.parse({ name: 'dup', text: 'select 1' }), serialize.sync()]);
  await client.readUntil('Z');
  client.send([serialize.parse({ name: 'dup', text: "insert into items values (77, 'dup')" }), serialize.bind({ statement: 'dup' }), serialize.execute({}), serialize.sync()]);
  const replies = await client.readUntil('Z');
  assert.equal(errorFields(replies.find((m) => m.type === 'E')!).C, '42P05');
  client.send([serialize.bind({ statement: 'dup' }), serialize.execute({}), serialize.sync()]);
  const again = await client.readUntil('Z');
  assert.deepEqual(dataRowValues(again.find((m) => m.type === 'D')!), ['1'], 'the first statement is still the one of that name');
  client.end();
  const check = await cluster.connect();
  const nodes = (await check.query('show pool_nodes')).rows;
  assert.deepEqual(nodes.map((n: { status: string }) => n.status), ['up', 'up']);
  assert.deepEqual(await rowsOf(check, 'select count(*) from items where id = 77'), [['0']]);
  await check.end();
});

test('notices and errors reach the client with every field, exactly as the node sent them', async () => {
  const direct = await RawClient.connect(cluster.nodes[0].port);
  direct.send(serialize.startup({ user: 'postgres', database: 'postgres' }));
  await direct.readUntil('Z');
  const proxied = await RawClient.ready(cluster.proxy.port);
  const statements = [
    "do $$ begin raise notice 'hello' using detail = 'some detail', hint = 'a hint', errcode = '01000'; end $$",
    'select * from no_such_table',
    "insert into items values (1, 'duplicate')",
    'select 1 +',
  ];
  for (const sql of statements) {
    direct.send(serialize.query(sql));
    proxied.send(serialize.query(sql));
    const expected = (await direct.readUntil('Z')).filter((m) => m.type === 'N' || m.type === 'E');
    const actual = (await proxied.readUntil('Z')).filter((m) => m.type === 'N' || m.type === 'E');
    assert.equal(actual.length, 1, sql);
    const withoutSource = (m: typeof actual[number]) => {
      const fields = errorFields(m);
      delete fields.L; // source line in the server's C code
      return { type: m.type, ...fields };
    };
    assert.deepEqual(actual.map(withoutSource), expected.map(withoutSource), sql);
  }
  const dup = errorFields((await (async () => {
    proxied.send(serialize.query("insert into items values (1, 'duplicate')"));
    return (await proxied.readUntil('Z')).find((m) => m.type === 'E')!;
  })()));
  assert.equal(dup.C, '23505');
  assert.ok(dup.D && dup.n, 'detail and constraint name are relayed');
  direct.end();
  proxied.end();
});
