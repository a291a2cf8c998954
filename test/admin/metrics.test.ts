// Prometheus metrics against a real 2-node cluster: the exposition passes `promtool check metrics` (Debian's
// prometheus package), and its values follow what the proxy did: statements by tier, fragment latencies, rows
// merged, errors sent to clients by SQLSTATE, a failover and a failback, node state and pools. The error scanner
// is also fed the same replies cut at every byte, as a socket may deliver them.

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { connect } from 'node:net';
import type { Client } from 'pg';
import { ErrorResponseScanner, type ObservedError } from '../../src/protocol/error-response-scanner';
import { serverMessages } from '../../src/protocol/server-messages';
import { PgError } from '../../src/protocol/errors';
import { startTestCluster, type TestCluster } from '../support/test-cluster';

let cluster: TestCluster;
let client: Client;
let metricsUrl: string;

before(async () => {
  cluster = await startTestCluster({
    nodes: 2,
    configure: (config) => {
      config.metricsListenAddresses = ['127.0.0.1'];
      config.metricsPort = 0;
    },
  });
  metricsUrl = `http://127.0.0.1:${cluster.proxy.metrics!.port}/metrics`;
  client = await cluster.connect();
  await client.query('create table facts (id int primary key, region int, amount int)');
  await client.query("select parapool.distribute_table('facts', 'id')");
  await client.query('create table regions (region int primary key, name text)');
  await client.query("select parapool.distribute_table('regions', 'region')");
  await client.query('insert into facts select g, g % 5, g from generate_series(1, 200) g');
  await client.query("insert into regions select g, 'r' || g from generate_series(0, 4) g");
});

after(async () => {
  await client?.end();
  await cluster?.stop();
});

async function scrape(): Promise<string> {
  const response = await fetch(metricsUrl);
  assert.equal(response.status, 200);
  assert.match(response.headers.get('content-type') ?? '', /^text\/plain; version=0\.0\.4/);
  return response.text();
}

/** The value of one sample, by its name and labels as they appear in the text; undefined when absent. */
function sample(text: string, name: string, labels: Record<string, string> = {}): number | undefined {
  for (const line of text.split('\n')) {
    if (!line.startsWith(name + '{') && !line.startsWith(name + ' ')) continue;
    const brace = line.indexOf('{');
    const labelText = brace >= 0 && line.startsWith(name + '{') ? line.slice(brace, line.lastIndexOf('}') + 1) : '';
    if (!Object.entries(labels).every(([key, value]) => labelText.includes(`${key}="${value}"`))) continue;
    return Number(line.slice(line.lastIndexOf(' ') + 1));
  }
  return undefined;
}

function promtoolCheck(text: string): Promise<{ code: number; output: string }> {
  return new Promise((resolvePromise) => {
    const child = execFile('promtool', ['check', 'metrics'], (error, stdout, stderr) => {
      resolvePromise({ code: error ? ((error as { code?: number }).code ?? 1) : 0, output: stdout + stderr });
    });
    child.stdin!.end(text);
  });
}

test('the exposition passes promtool check metrics', async () => {
  await client.query('select count(*) from facts');
  const text = await scrape();
  const checked = await promtoolCheck(text);
  assert.equal(checked.code, 0, checked.output);
  assert.equal(checked.output.trim(), '', 'promtool has no lint remarks');
});

test('statements are counted by tier, fragments timed per node, merged rows counted', async () => {
  const before = await scrape();
  const count = (text: string, tier: string) => sample(text, 'parapool_statements_total', { tier }) ?? 0;
  await client.query('select * from facts where id = 7'); // tier 1: the router
  await client.query('select region, sum(amount) from facts group by region order by region'); // tier 2
  await client.query('select r.name, count(*) from facts f join regions r on r.region = f.amount group by r.name order by 1'); // not co-located: tier 3
  await client.query('select 1'); // relayed as it came
  await client.query('show pool_nodes'); // answered by the proxy
  const after = await scrape();
  for (const tier of ['1', '2', '3', 'relay', 'proxy']) assert.ok(count(after, tier) >= count(before, tier) + 1, `tier ${tier}: ${count(before, tier)} -> ${count(after, tier)}`);
  for (const node of ['0', '1']) {
    const fragments = sample(after, 'parapool_fragment_duration_seconds_count', { tier: '2', node }) ?? 0;
    assert.ok(fragments >= 1, `node ${node} ran a tier-2 fragment`);
  }
  const merged = (text: string) => sample(text, 'parapool_rows_merged_total', { tier: '2' }) ?? 0;
  assert.ok(merged(after) >= merged(before) + 5, 'the group-by merged at least one partial group per region');
  assert.ok((sample(after, 'parapool_statement_duration_seconds_bucket', { tier: '1', le: '+Inf' }) ?? 0) >= 1);
});

test('errors sent to clients are counted by SQLSTATE, whether a node or the proxy made them', async () => {
  const before = await scrape();
  const errors = (text: string, sqlstate: string) => sample(text, 'parapool_client_errors_total', { sqlstate, severity: 'ERROR' }) ?? 0;
  await assert.rejects(client.query('select 1 / 0'), { code: '22012' });
  await assert.rejects(client.query('select 1 / 0'), { code: '22012' });
  await assert.rejects(client.query('select * from no_such_table'), { code: '42P01' });
  await assert.rejects(client.query("select parapool.distribute_table('no_such_table', 'id')"), { code: '42P01' });
  // An error row in a distributed read, raised on a node mid-merge.
  await assert.rejects(client.query('select sum(1 / (amount - 100)) from facts'), { code: '22012' });
  const after = await scrape();
  assert.equal(errors(after, '22012') - errors(before, '22012'), 3);
  // The select and distribute_table's check of its table.
  assert.equal(errors(after, '42P01') - errors(before, '42P01'), 2);
  // The session is fine after its errors.
  assert.equal((await client.query('select count(*) from facts')).rows[0].count, '200');
});

test('a detach and an attach show as a failover and a failback, and in the node state', async () => {
  const before = await scrape();
  assert.equal(sample(before, 'parapool_node_up', { node: '1' }), 1);
  await client.query('select parapool.detach_node(1)');
  const detached = await scrape();
  assert.equal(sample(detached, 'parapool_node_up', { node: '1' }), 0);
  assert.equal(sample(detached, 'parapool_node_up', { node: '0', role: 'main' }), 1);
  assert.equal((sample(detached, 'parapool_failovers_total', { node: '1' }) ?? 0) - (sample(before, 'parapool_failovers_total', { node: '1' }) ?? 0), 1);
  await client.query('select parapool.attach_node(1)');
  const attached = await scrape();
  assert.equal(sample(attached, 'parapool_node_up', { node: '1' }), 1);
  assert.equal((sample(attached, 'parapool_failbacks_total', { node: '1' }) ?? 0) - (sample(before, 'parapool_failbacks_total', { node: '1' }) ?? 0), 1);
  assert.equal(sample(attached, 'parapool_failovers_total', { node: '0' }), 0);
});

test('sessions, backend connections and node counters are reported', async () => {
  const second = await cluster.connect();
  await second.query('begin');
  await second.query('select count(*) from facts');
  const text = await scrape();
  assert.ok((sample(text, 'parapool_client_sessions', { state: 'idle_in_transaction' }) ?? 0) >= 1);
  assert.ok((sample(text, 'parapool_client_sessions', { state: 'idle' }) ?? 0) >= 1);
  assert.equal(sample(text, 'parapool_client_sessions_max'), cluster.config.numInitChildren);
  assert.ok((sample(text, 'parapool_backend_connections', { node: '0', state: 'active' }) ?? 0) >= 2);
  for (const node of ['0', '1']) assert.ok((sample(text, 'parapool_node_statements_total', { node, kind: 'select' }) ?? 0) >= 1, `node ${node} ran selects`);
  const nodeErrors = ['0', '1'].map((node) => sample(text, 'parapool_node_errors_total', { node, severity: 'error' }) ?? 0);
  assert.ok(nodeErrors[0] + nodeErrors[1] >= 3, 'the nodes reported the division by zero and the missing table');
  assert.ok((sample(text, 'parapool_health_checks_total', { node: '0', result: 'success' }) ?? -1) >= 0);
  assert.ok((sample(text, 'process_resident_memory_bytes') ?? 0) > 0);
  await second.query('rollback');
  await second.end();
});

test('other paths, other methods and garbage get an HTTP error, and the endpoint goes on serving', async () => {
  const base = metricsUrl.replace(/\/metrics$/, '');
  assert.equal((await fetch(`${base}/`)).status, 404);
  assert.equal((await fetch(`${base}/metrics/../etc`)).status, 404);
  assert.equal((await fetch(metricsUrl, { method: 'POST', body: 'x' })).status, 405);
  await new Promise<void>((resolvePromise) => {
    const socket = connect(cluster.proxy.metrics!.port, '127.0.0.1', () => socket.end(Buffer.from([0x00, 0xff, 0x16, 0x03, 0x01, 0x0d, 0x0a, 0x0d, 0x0a])));
    socket.on('error', () => resolvePromise());
    socket.on('close', () => resolvePromise());
    socket.resume();
  });
  assert.match(await scrape(), /parapool_node_up/);
});

test('the error scanner finds every ErrorResponse however the bytes are cut', () => {
  const rows = Buffer.concat([
    serverMessages.commandComplete('SELECT 1'),
    serverMessages.errorResponse(new PgError({ code: '22012', message: 'division by zero' })),
    Buffer.concat(Array.from({ length: 20 }, (_, i) => serverMessages.commandComplete(`INSERT 0 ${i}`))),
    serverMessages.errorResponse(new PgError({ severity: 'FATAL', code: '57P01', message: 'terminating connection' })),
    serverMessages.readyForQuery('I'),
  ]);
  const expected = ['ERROR 22012', 'FATAL 57P01'];
  for (const cut of [1, 2, 3, 5, 7, 13, rows.length]) {
    const seen: string[] = [];
    const scanner = new ErrorResponseScanner((error: ObservedError) => seen.push(`${error.severity} ${error.code}`));
    for (let at = 0; at < rows.length; at += cut) scanner.observe(rows.subarray(at, at + cut));
    assert.deepEqual(seen, expected, `cut every ${cut} bytes`);
  }
  // A stream that stops making sense is left alone rather than misread.
  const seen: ObservedError[] = [];
  const scanner = new ErrorResponseScanner((error) => seen.push(error));
  scanner.observe(Buffer.from([0x45, 0, 0, 0, 1, 0x45]));
  scanner.observe(serverMessages.errorResponse(new PgError({ code: '22012', message: 'x' })));
  assert.equal(seen.length, 0);
});
