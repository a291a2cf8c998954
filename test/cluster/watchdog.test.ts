// The watchdog with real faults: three parapool instances, each its own process, over two shared PostgreSQL
// nodes. They elect one leader, which alone runs wd_escalation_command; the leader stopped with SIGSTOP (a
// partition) while a node is killed with kill -9 is replaced after wd_heartbeat_deadtime and the node is failed
// over once, by the new leader (failover_command runs once), and the old leader, resumed, de-escalates, follows
// the new one and adopts the node's status without failing it over again; the leader killed with kill -9 is
// replaced at once (its links close); an instance left alone (the two others stopped) has no quorum and fails
// nothing over. pgpool-II's pcp_watchdog_info reads the state from a standby and from the leader. The times
// measured are printed as test diagnostics.

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { startTestCluster, type TestCluster } from '../support/test-cluster';
import { killNode } from '../support/node-faults';
import { readNodeStatus } from '../../src/cluster/node-status-file';
import { freePort, queryInstance, restartInstance, signalInstance, startInstance, type ProxyInstance } from '../support/proxy-instances';

const keepalive = 1;
const deadtime = 3;
let cluster: TestCluster;
const instances: ProxyInstance[] = [];
let failoverLog: string;
let escalationLog: string;
let pcpPassFile: string;
const pcpPorts = new Map<ProxyInstance, number>();
const pcpPassword = 'pcp secret';

const sleep = (ms: number) => new Promise((resolvePromise) => setTimeout(resolvePromise, ms));

async function waitFor<T>(what: string, probe: () => Promise<T | null | false>, timeoutMs = 30_000): Promise<T> {
  for (const deadline = Date.now() + timeoutMs; ; await sleep(50)) {
    let value: T | null | false = null;
    try {
      value = await probe();
    } catch {
      value = null; // an instance restarting or stopped: ask again
    }
    if (value !== null && value !== false) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
  }
}

function lines(file: string): string[] {
  return existsSync(file) ? readFileSync(file, 'utf8').split('\n').filter((line) => line !== '') : [];
}

/** The leader an instance follows, by its own SHOW watchdog; '' for none. */
async function leaderSeenBy(instance: ProxyInstance): Promise<string> {
  const rows = await queryInstance(instance, 'SHOW watchdog');
  return rows[0]?.leader ?? '';
}

/** The instance every one of `among` names as leader, once they agree. */
async function agreedLeader(among: readonly ProxyInstance[], timeoutMs = 30_000): Promise<ProxyInstance> {
  return waitFor('the instances to agree on a leader', async () => {
    const seen = await Promise.all(among.map(leaderSeenBy));
    if (seen[0] === '' || seen.some((name) => name !== seen[0])) return null;
    return instances.find((instance) => instance.name === seen[0]) ?? null;
  }, timeoutMs);
}

async function nodeStatus(instance: ProxyInstance, nodeId: number): Promise<string> {
  const rows = await queryInstance(instance, 'SHOW pool_nodes');
  return rows[nodeId].status!;
}

before(async () => {
  cluster = await startTestCluster({ nodes: 2, noProxy: true });
  failoverLog = join(cluster.dir, 'failover.log');
  escalationLog = join(cluster.dir, 'escalation.log');
  const pcpUsers = join(cluster.dir, 'pcp.conf');
  writeFileSync(pcpUsers, `postgres:${createHash('md5').update(pcpPassword).digest('hex')}\n`);
  pcpPassFile = join(cluster.dir, 'pcppass');
  writeFileSync(pcpPassFile, `*:*:postgres:${pcpPassword}\n`, { mode: 0o600 });
  const ports = await Promise.all([0, 1, 2].map(async () => ({ pgpool: await freePort(), wd: await freePort(), pcp: await freePort() })));
  for (const [index, own] of ports.entries()) {
    const name = `127.0.0.1:${own.wd}`;
    const others = ports.filter((_, i) => i !== index);
    const conf = [
      "listen_addresses = '127.0.0.1'",
      `port = ${own.pgpool}`,
      `pcp_port = ${own.pcp}`,
      `pcp_conf_file = '${pcpUsers}'`,
      ...cluster.config.backends.flatMap((b) => [`backend_hostname${b.id} = '127.0.0.1'`, `backend_port${b.id} = ${b.port}`, `backend_data_directory${b.id} = '${b.dataDirectory}'`]),
      'health_check_period = 1',
      'health_check_timeout = 1',
      'health_check_max_retries = 0',
      'in_doubt_recovery_interval = 0',
      `failover_command = 'echo failover %d by ${name} >> ${failoverLog}'`,
      "log_min_messages = 'info'",
      'use_watchdog = on',
      "wd_hostname = '127.0.0.1'",
      `wd_port = ${own.wd}`,
      `wd_priority = ${3 - index}`,
      `wd_heartbeat_keepalive = ${keepalive}`,
      `wd_heartbeat_deadtime = ${deadtime}`,
      `wd_escalation_command = 'echo escalate ${name} >> ${escalationLog}'`,
      `wd_de_escalation_command = 'echo de-escalate ${name} >> ${escalationLog}'`,
      ...others.flatMap((other, i) => [`other_pgpool_hostname${i} = '127.0.0.1'`, `other_pgpool_port${i} = ${other.pgpool}`, `other_wd_port${i} = ${other.wd}`]),
    ];
    const instance = await startInstance(cluster.dir, name, own.pgpool, conf);
    instances.push(instance);
    pcpPorts.set(instance, own.pcp);
  }
});

after(async () => {
  for (const instance of instances) {
    await signalInstance(instance, 'SIGCONT').catch(() => undefined);
    await signalInstance(instance, 'SIGTERM').catch(() => undefined);
  }
  if (process.env.PARAPOOL_KEEP_TEST_DIR) return;
  await cluster?.stop();
});

test('three instances elect one leader, which alone escalates', async () => {
  const leader = await agreedLeader(instances);
  await waitFor('the escalation command', async () => lines(escalationLog).length >= 1);
  await sleep(1000);
  assert.deepEqual(lines(escalationLog), [`escalate ${leader.name}`]);
  const rows = await queryInstance(leader, 'SHOW watchdog');
  assert.equal(rows.length, 3);
  assert.equal(rows[0].state, 'LEADER');
  assert.equal(rows[0].local, 'true');
  assert.equal(rows[0].quorum, 'QUORUM EXIST');
  assert.equal(rows[0].alive, '3/3');
  assert.deepEqual(rows.slice(1).map((row) => row.state), ['STANDBY', 'STANDBY']);
  const status = await queryInstance(leader, 'SHOW pool_status');
  assert.equal(status.find((row) => row.item === 'use_watchdog')?.value, 'on');

  // pgpool-II's own pcp_watchdog_info, unchanged, asking a standby: a summary line (instances, alive ones, whether
  // the one asked escalated, the leader), then one line per instance (the one asked first) of name, host, pgpool
  // port, watchdog port, state code and state name.
  const standby = instances.find((instance) => instance !== leader)!;
  const info = await pcpWatchdogInfo(standby, []);
  const [summary, ...members] = info.split('\n').filter((line) => line !== '');
  assert.equal(summary, `3 3 NO ${leader.name} 127.0.0.1`);
  assert.equal((await pcpWatchdogInfo(leader, [])).split('\n')[0], `3 3 YES ${leader.name} 127.0.0.1`);
  assert.equal(members.length, 3);
  assert.match(members[0], new RegExp(`^${standby.name} 127\\.0\\.0\\.1 ${standby.port} \\d+ 7 STANDBY`));
  assert.ok(members.some((line) => line.startsWith(`${leader.name} 127.0.0.1 ${leader.port} `) && / 4 LEADER/.test(line)), info);
  const verbose = await pcpWatchdogInfo(standby, ['-v']);
  assert.match(verbose, /Quorum state\s*: QUORUM EXIST/);
  assert.match(verbose, new RegExp(`Leader Node Name\\s*: ${leader.name}`));
  assert.match(await pcpWatchdogInfo(standby, ['-n', '7']), /^ERROR: .*\nDETAIL:  invalid watchdog index/);
});

/** pgpool-II's pcp_watchdog_info against an instance's PCP port; its output. */
function pcpWatchdogInfo(instance: ProxyInstance, args: string[]): Promise<string> {
  const all = ['-h', '127.0.0.1', '-p', String(pcpPorts.get(instance)), '-U', 'postgres', '-w', ...args];
  return new Promise((resolvePromise) => {
    execFile('/usr/sbin/pcp_watchdog_info', all, { env: { ...process.env, PCPPASSFILE: pcpPassFile } }, (_error, stdout, stderr) => resolvePromise((stdout + stderr).trim()));
  });
}

test('a node killed while the leader is stopped (a partition) is failed over once, by the new leader', async (t) => {
  const old = await agreedLeader(instances);
  const others = instances.filter((instance) => instance !== old);
  const escalationsBefore = lines(escalationLog).length;
  await signalInstance(old, 'SIGSTOP');
  const stoppedAt = Date.now();
  const killedAt = Date.now();
  await killNode(cluster.nodes[1]);
  const leader = await agreedLeader(others);
  const electedMs = Date.now() - stoppedAt;
  assert.notEqual(leader, old);
  await waitFor('node 1 down on both running instances', async () => (await Promise.all(others.map((i) => nodeStatus(i, 1)))).every((s) => s === 'down'));
  await waitFor('failover_command', async () => lines(failoverLog).length >= 1);
  const failoverMs = Date.now() - killedAt;
  assert.deepEqual(lines(failoverLog), [`failover 1 by ${leader.name}`]);
  await waitFor('the new leader\'s escalation', async () => lines(escalationLog).slice(escalationsBefore).includes(`escalate ${leader.name}`));

  await signalInstance(old, 'SIGCONT');
  await waitFor('the resumed instance to follow the new leader', async () => (await leaderSeenBy(old)) === leader.name);
  assert.equal(await nodeStatus(old, 1), 'down');
  await waitFor('the old leader\'s de-escalation', async () => lines(escalationLog).slice(escalationsBefore).includes(`de-escalate ${old.name}`));
  await sleep(3000); // health checks of the resumed instance run and fail meanwhile
  assert.deepEqual(lines(failoverLog), [`failover 1 by ${leader.name}`], 'one failover, not two');
  assert.equal(await leaderSeenBy(old), leader.name);
  const rows = await queryInstance(old, 'SHOW watchdog');
  assert.equal(rows[0].state, 'STANDBY');
  t.diagnostic(`leader stopped -> new leader: ${electedMs} ms (wd_heartbeat_deadtime ${deadtime} s); node killed -> failover_command: ${failoverMs} ms`);
});

test('an attach on a standby is made the cluster\'s by the leader', async () => {
  const leader = await agreedLeader(instances);
  await cluster.nodes[1].start();
  const standby = instances.find((instance) => instance !== leader)!;
  await queryInstance(standby, 'SELECT parapool.attach_node(1)');
  await waitFor('node 1 up everywhere', async () => (await Promise.all(instances.map((i) => nodeStatus(i, 1)))).every((s) => s === 'up'));
  await sleep(2500); // heartbeats sent before the attach must not undo it
  assert.deepEqual(await Promise.all(instances.map((i) => nodeStatus(i, 1))), ['up', 'up', 'up']);
});

test('the leader killed with kill -9 is replaced, and the new leader escalates', async (t) => {
  const old = await agreedLeader(instances);
  const others = instances.filter((instance) => instance !== old);
  const escalationsBefore = lines(escalationLog).length;
  await signalInstance(old, 'SIGKILL');
  const killedAt = Date.now();
  const leader = await agreedLeader(others);
  const electedMs = Date.now() - killedAt;
  await waitFor('the new leader\'s escalation', async () => lines(escalationLog).slice(escalationsBefore).includes(`escalate ${leader.name}`));
  const escalatedMs = Date.now() - killedAt;
  const rows = await queryInstance(leader, 'SHOW watchdog');
  assert.equal(rows.find((row) => row.node_name === old.name)?.state, 'LOST');
  assert.equal(rows[0].quorum, 'QUORUM EXIST');
  // Back again, the killed instance joins as a standby: a leader is not replaced by a higher priority.
  await restartInstance(old);
  await waitFor('the restarted instance to follow', async () => (await leaderSeenBy(old)) === leader.name);
  assert.equal((await agreedLeader(instances)).name, leader.name);
  t.diagnostic(`leader killed -> new leader: ${electedMs} ms; -> escalation command run: ${escalatedMs} ms`);
});

test('a node killed with every instance running is failed over once, by the leader', async (t) => {
  const leader = await agreedLeader(instances);
  const failovers = lines(failoverLog).length;
  const killedAt = Date.now();
  await killNode(cluster.nodes[1]);
  await waitFor('failover_command', async () => lines(failoverLog).length > failovers);
  const failoverMs = Date.now() - killedAt;
  await waitFor('node 1 down everywhere', async () => (await Promise.all(instances.map((i) => nodeStatus(i, 1)))).every((s) => s === 'down'));
  await sleep(3000);
  assert.deepEqual(lines(failoverLog).slice(failovers), [`failover 1 by ${leader.name}`]);
  t.diagnostic(`node killed -> failover_command run (health_check_period 1 s, timeout 1 s, no retries): ${failoverMs} ms`);
  await cluster.nodes[1].start();
  await queryInstance(leader, 'SELECT parapool.attach_node(1)');
  await waitFor('node 1 up everywhere', async () => (await Promise.all(instances.map((i) => nodeStatus(i, 1)))).every((s) => s === 'up'));
});

test('an instance without quorum fails nothing over', async (t) => {
  const leader = await agreedLeader(instances);
  const others = instances.filter((instance) => instance !== leader);
  const failovers = lines(failoverLog).length;
  for (const other of others) await signalInstance(other, 'SIGSTOP');
  try {
    await waitFor('the quorum to be lost', async () => (await queryInstance(leader, 'SHOW watchdog'))[0].quorum === 'QUORUM ABSENT', 15_000);
    await waitFor('the leader\'s de-escalation', async () => lines(escalationLog).at(-1) === `de-escalate ${leader.name}`);
    await killNode(cluster.nodes[1]);
    await sleep(5000);
    assert.equal(lines(failoverLog).length, failovers);
    // Clients cannot log in while a node in service does not answer, so the status is read from pgpool_status.
    assert.equal(readNodeStatus(join(cluster.dir, leader.name))?.[1], 'up');
  } finally {
    for (const other of others) await signalInstance(other, 'SIGCONT');
  }
  // With the others back the quorum returns, and the node, still down, is failed over once.
  await waitFor('the failover once quorum is back', async () => lines(failoverLog).length > failovers, 30_000);
  await sleep(2000);
  assert.equal(lines(failoverLog).length, failovers + 1);
  t.diagnostic(`escalation log: ${lines(escalationLog).join('; ')}`);
});
