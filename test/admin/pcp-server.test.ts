// The PCP server with pgpool-II's own clients (Debian's pgpool2: pcp_node_count, pcp_node_info,
// pcp_detach_node, pcp_attach_node, pcp_recovery_node), unchanged, against a real 2-node cluster: md5
// authentication from pcp.conf, wrong credentials refused, malformed packets answered with an error and the
// connection closed, the proxy serving throughout.

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { connect } from 'node:net';
import { join } from 'node:path';
import { recoveryScripts } from '../../src/cluster/sandbox';
import { rowsOf, startTestCluster, type TestCluster } from '../support/test-cluster';

let cluster: TestCluster;
let passFile: string;
let pcpDir: string;

const pcpPassword = 'pcp secret';

before(async () => {
  // pcp.conf must exist when the proxy starts; the cluster's own directory does not exist before it.
  pcpDir = mkdtempSync(join(tmpdir(), 'parapool-pcp-'));
  const usersFile = join(pcpDir, 'pcp.conf');
  writeFileSync(usersFile, `# user:md5(password)\npostgres:${createHash('md5').update(pcpPassword).digest('hex')}\n`);
  passFile = join(pcpDir, 'pcppass');
  writeFileSync(passFile, `*:*:postgres:${pcpPassword}\n`, { mode: 0o600 });
  cluster = await startTestCluster({
    nodes: 2,
    configure: (config) => {
      config.pcpPort = 0;
      config.pcpConfFile = usersFile;
      config.recovery1stStageCommand = join(recoveryScripts, 'recovery_1st_stage');
      config.recovery2ndStageCommand = join(recoveryScripts, 'recovery_2nd_stage');
    },
  });
});

after(async () => {
  await cluster?.stop();
  rmSync(pcpDir, { recursive: true, force: true });
});

/**
 * Runs a pcp_* client against the proxy's PCP port; resolves with its exit code and output. pgpool's clients exit
 * 0 after an error too: the output says which.
 */
function pcp(program: string, args: string[], user = 'postgres', passwordFile = passFile): Promise<{ code: number; out: string }> {
  return new Promise((resolvePromise) => {
    const all = ['-h', '127.0.0.1', '-p', String(cluster.proxy.pcp!.port), '-U', user, '-w', ...args];
    execFile(`/usr/sbin/${program}`, all, { env: { ...process.env, PCPPASSFILE: passwordFile } }, (error, stdout, stderr) => {
      resolvePromise({ code: error ? ((error as { code?: number }).code ?? 1) : 0, out: (stdout + stderr).trim() });
    });
  });
}

async function statuses(): Promise<string[]> {
  const client = await cluster.connect();
  try {
    return (await rowsOf(client, 'show pool_nodes')).map((r) => r[3]!);
  } finally {
    await client.end();
  }
}

test('pcp_node_count and pcp_node_info answer as pgpool-II', async () => {
  assert.deepEqual(await pcp('pcp_node_count', []), { code: 0, out: '2' });
  const info = await pcp('pcp_node_info', ['-n', '1']);
  assert.equal(info.code, 0, info.out);
  const [host, port, status, weight, statusName, pgStatus, role, pgRole] = info.out.split(' ');
  assert.deepEqual([host, port, status, weight, statusName, pgStatus, role, pgRole], ['127.0.0.1', String(cluster.nodes[1].port), '2', '0.500000', 'up', 'up', 'replica', 'replica']);
  assert.match((await pcp('pcp_node_info', ['-n', '0'])).out, / main main /);
  assert.match((await pcp('pcp_node_info', ['-n', '7'])).out, /^ERROR: .*\nDETAIL:  invalid node ID : 7/);
});

test('pcp_detach_node and pcp_attach_node take a node out of service and back', async () => {
  assert.deepEqual(await pcp('pcp_detach_node', ['-n', '1']), { code: 0, out: 'pcp_detach_node -- Command Successful' });
  assert.deepEqual(await statuses(), ['up', 'down']);
  assert.match((await pcp('pcp_node_info', ['-n', '1'])).out, /^\S+ \d+ 3 \S+ down down/);
  assert.match((await pcp('pcp_detach_node', ['-n', '0'])).out, /^ERROR: .*last node in service/);
  assert.deepEqual(await pcp('pcp_attach_node', ['-n', '1']), { code: 0, out: 'pcp_attach_node -- Command Successful' });
  assert.deepEqual(await statuses(), ['up', 'up']);
  // pcp_promote_node switches over in streaming replication (test/cluster/streaming-replication.test.ts does it
  // through SQL); in native replication there is no primary to change, and the client says why.
  assert.match((await pcp('pcp_promote_node', ['-n', '1'])).out, /^ERROR: .*promote_node needs backend_clustering_mode = streaming_replication/);
  assert.deepEqual(await statuses(), ['up', 'up']);
});

test('pcp_recovery_node recovers a detached node online; a node in service is refused with the reason', async () => {
  assert.match((await pcp('pcp_recovery_node', ['-n', '1'])).out, /^ERROR: .*node 1 .* is in service\nDETAIL:  Only a detached node is recovered/);
  const client = await cluster.connect();
  await client.query('create table recovered (id serial primary key, n int)');
  await pcp('pcp_detach_node', ['-n', '1']);
  await client.query('insert into recovered (n) select g from generate_series(1, 100) g'); // node 1 misses these
  assert.deepEqual(await pcp('pcp_recovery_node', ['-n', '1']), { code: 0, out: 'pcp_recovery_node -- Command Successful' });
  assert.deepEqual(await statuses(), ['up', 'up']);
  await client.query('insert into recovered (n) values (101)');
  await client.end();
  const sums = await cluster.onEachNode('select count(*), sum(id), sum(n) from recovered');
  assert.deepEqual(sums[1], sums[0]);
  assert.deepEqual(sums[0], [['101', '5151', '5151']]);
});

test('wrong credentials are refused; malformed packets get an error and a closed connection; the proxy serves on', async () => {
  const wrongPass = join(cluster.dir, 'wrongpass');
  writeFileSync(wrongPass, `*:*:postgres:not the password\n`, { mode: 0o600 });
  assert.match((await pcp('pcp_node_count', [], 'postgres', wrongPass)).out, /authentication failed/);
  assert.match((await pcp('pcp_node_count', [], 'nobody', wrongPass)).out, /authentication failed/);

  for (const bytes of [
    Buffer.from('L\0\0\0\x04'), // a command before authentication
    Buffer.from('M\x7f\xff\xff\xff'), // a huge length
    Buffer.from('R\0\0\0\x02'), // a length shorter than itself
    Buffer.from('R\0\0\0\x06ab'), // a log-in without a salt asked for, and no password
  ]) {
    const reply = await new Promise<Buffer>((resolvePromise) => {
      const socket = connect({ host: '127.0.0.1', port: cluster.proxy.pcp!.port });
      const chunks: Buffer[] = [];
      socket.on('data', (chunk) => chunks.push(chunk));
      socket.on('close', () => resolvePromise(Buffer.concat(chunks)));
      socket.on('error', () => undefined);
      socket.on('connect', () => socket.write(bytes));
    });
    assert.equal(String.fromCharCode(reply[0]), 'E', `an error for ${JSON.stringify(bytes.toString('latin1'))}`);
  }
  assert.deepEqual(await pcp('pcp_node_count', []), { code: 0, out: '2' });
  const client = await cluster.connect();
  assert.deepEqual(await rowsOf(client, 'select 1'), [['1']]);
  await client.end();
});

test('pcp_proc_count, pcp_proc_info, pcp_pool_status and pcp_health_check_stats report sessions, settings and checks', async () => {
  const session = await cluster.connect();
  await session.query('select 1');
  const pids = (await pcp('pcp_proc_count', [])).out.split(/\s+/);
  assert.ok(pids.length >= 1 && pids.every((pid) => /^\d+$/.test(pid)), pids.join(' '));
  const info = await pcp('pcp_proc_info', ['-P', pids[0]]);
  const lines = info.out.split('\n');
  assert.equal(lines.length, 2, `one line per node connection of the session: ${info.out}`);
  for (const line of lines) assert.match(line, new RegExp(`^postgres postgres .* ${pids[0]} [01] Idle$`));
  assert.match((await pcp('pcp_proc_info', ['-P', '999999999'])).out, /invalid process ID : 999999999/);
  const status = (await pcp('pcp_pool_status', [])).out;
  assert.match(status, /name : pcp_port\nvalue: 0\ndesc : port of the PCP server/);
  assert.match(status, /name : backend_port1\nvalue: \d+/);
  const stats = (await pcp('pcp_health_check_stats', ['-n', '1', '-v'])).out;
  assert.match(stats, /Node Id\s+: 1\nHost Name\s+: 127\.0\.0\.1\nPort\s+: \d+\nStatus\s+: up\nRole\s+: replica/);
  await session.end();
});
