// Writes under real faults: accounts spread over three nodes, transfers between accounts on different nodes from
// eight clients, while one node's postmaster and every backend are killed with SIGKILL and restarted, and then
// while the proxy process itself is. Afterwards, read on the nodes directly: the money adds up, every transfer
// the proxy acknowledged is in the ledger exactly once, none it failed is, and nothing is left prepared.

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, existsSync, openSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { Client } from 'pg';
import { configToText, type ProxyConfig } from '../../src/config/config';
import { ProxyServer } from '../../src/server/proxy-server';
import { freePort } from '../../src/cluster/local-postgres';
import { prng, intBetween } from '../support/random';
import { killNode } from '../support/node-faults';
import { rowsOf, startTestCluster, textTypes, type TestCluster } from '../support/test-cluster';

const clientCount = 8;
const accountCount = 24;
const initialBalance = 1000;
/** How long the workload runs before each fault and after the last one. */
const phaseMs = 1500;
/** A phase also runs until this many transfers were acknowledged since its fault (bounded by phaseCapMs). */
const progressPerPhase = 10;
const phaseCapMs = 15_000;
const proxyKills = 3;

let cluster: TestCluster;
let proxy: ProxyProcess;
/** Which node holds each account. */
const placement = new Map<number, number>();

/** The proxy as a process of its own (`parapool start -f`), so that it can be killed with SIGKILL. */
class ProxyProcess {
  private child: ChildProcess | null = null;
  private exited: Promise<void> = Promise.resolve();

  constructor(private readonly configPath: string, private readonly logPath: string, readonly port: number) {}

  /** Starts the proxy and resolves once it answers a query. */
  async start(): Promise<void> {
    const log = openSync(this.logPath, 'a');
    const child = spawn(process.execPath, [join(__dirname, '..', '..', 'src', 'cli', 'main.js'), 'start', '-f', this.configPath], { stdio: ['ignore', log, log] });
    closeSync(log);
    this.child = child;
    let exitCode: number | null | undefined;
    this.exited = new Promise((resolvePromise) => child.once('exit', (code) => {
      exitCode = code;
      resolvePromise();
    }));
    const deadline = Date.now() + 30_000;
    for (;;) {
      if (exitCode !== undefined) throw new Error(`the proxy exited with code ${exitCode}:\n${this.logTail()}`);
      if (Date.now() > deadline) throw new Error(`the proxy did not answer within 30 s:\n${this.logTail()}`);
      const client = newClient(this.port);
      try {
        await client.connect();
        await client.query('select 1');
        return;
      } catch {
        await sleep(50);
      } finally {
        await client.end().catch(() => undefined);
      }
    }
  }

  async kill(signal: NodeJS.Signals = 'SIGKILL'): Promise<void> {
    if (!this.child || this.child.exitCode !== null || this.child.signalCode !== null) return;
    this.child.kill(signal);
    await this.exited;
  }

  logTail(lines = 40): string {
    return existsSync(this.logPath) ? readFileSync(this.logPath, 'utf8').split('\n').slice(-lines).join('\n') : '';
  }

  /** How many log lines of each event there are. */
  countEvents(events: readonly string[]): Record<string, number> {
    const text = existsSync(this.logPath) ? readFileSync(this.logPath, 'utf8') : '';
    return Object.fromEntries(events.map((event) => [event, text.split('\n').filter((l) => l.includes(` ${event} `)).length]));
  }

  /** The log lines about transactions between the phases of a commit. */
  commitLog(): string {
    return existsSync(this.logPath) ? readFileSync(this.logPath, 'utf8').split('\n').filter((l) => /in_doubt|commit_|recovery|node_detached/.test(l)).join('\n') : '';
  }
}

function newClient(port: number): Client {
  const client = new Client({ host: '127.0.0.1', port, user: 'postgres', database: 'postgres', types: textTypes, query_timeout: 20_000, connectionTimeoutMillis: 5_000 });
  client.on('error', () => undefined); // a lost connection fails the query that runs; nothing else to do
  return client;
}

type Outcome = 'acknowledged' | 'unknown' | 'failed';

interface Transfer {
  readonly id: number;
  readonly from: number;
  readonly to: number;
  readonly amount: number;
}

/** The workload: clients that each run one transfer after another, reconnecting after any error. */
class Bank {
  readonly outcomes = new Map<number, Outcome>();
  readonly errors = new Map<string, number>();
  private stopping = false;
  private nextId = 1;
  private loops: Promise<void>[] = [];

  constructor(private readonly port: number, private readonly placement: ReadonlyMap<number, number>) {}

  count(outcome: Outcome): number {
    let n = 0;
    for (const o of this.outcomes.values()) if (o === outcome) n++;
    return n;
  }

  start(): void {
    this.loops = Array.from({ length: clientCount }, (_, i) => this.run(prng(1000 + i)));
  }

  async stop(): Promise<void> {
    this.stopping = true;
    await Promise.all(this.loops);
  }

  /** Waits at least `ms`, then until `progress` more transfers were acknowledged (or phaseCapMs passed). */
  async runFor(ms: number, progress = progressPerPhase): Promise<number> {
    const start = Date.now();
    const before = this.count('acknowledged');
    await sleep(ms);
    while (this.count('acknowledged') - before < progress && Date.now() - start < phaseCapMs) await sleep(50);
    return this.count('acknowledged') - before;
  }

  private pick(random: () => number): Transfer {
    const from = intBetween(random, 1, accountCount);
    let to = intBetween(random, 1, accountCount);
    while (this.placement.get(to) === this.placement.get(from)) to = intBetween(random, 1, accountCount);
    return { id: this.nextId++, from, to, amount: intBetween(random, 1, 50) };
  }

  private async run(random: () => number): Promise<void> {
    let client: Client | null = null;
    while (!this.stopping) {
      if (!client) {
        client = newClient(this.port);
        try {
          await client.connect();
        } catch {
          await client.end().catch(() => undefined);
          client = null;
          await sleep(50);
          continue;
        }
      }
      const transfer = this.pick(random);
      let committing = false;
      try {
        await client.query('begin');
        // Rows are locked in id order on every node, so two transfers never wait for each other across nodes,
        // where no node could see the deadlock.
        for (const [id, delta] of [[transfer.from, -transfer.amount], [transfer.to, transfer.amount]].sort((a, b) => a[0] - b[0])) {
          await client.query(`update accounts set balance = balance + ${delta} where id = ${id}`);
        }
        await client.query(`insert into ledger values (${transfer.id}, ${transfer.from}, ${transfer.to}, ${transfer.amount})`);
        committing = true;
        const result = await client.query('commit');
        this.outcomes.set(transfer.id, result.command === 'COMMIT' ? 'acknowledged' : 'failed');
      } catch (error) {
        // An error before COMMIT was sent leaves nothing; around COMMIT the outcome is not known.
        this.outcomes.set(transfer.id, committing ? 'unknown' : 'failed');
        const key = `${committing ? 'commit' : 'before commit'}: ${(error as { code?: string }).code ?? ''} ${(error as Error).message.replace(/\d+/g, 'N')}`;
        this.errors.set(key, (this.errors.get(key) ?? 0) + 1);
        await client.end().catch(() => undefined);
        client = null;
      }
    }
    await client?.end().catch(() => undefined);
  }
}

before(async () => {
  // The helpers' nodes run with fsync and synchronous_commit off: a SIGKILL keeps what reached the OS, so an
  // acknowledged commit survives only if its WAL was written before the answer, as the proxy must see to.
  cluster = await startTestCluster({ nodes: 3, noProxy: true });
  // In-doubt transactions are looked for every second, so that locks a fault left held are released quickly.
  const config: ProxyConfig = { ...cluster.config, port: await freePort(), logMinMessages: 'info', inDoubtRecoveryInterval: 1 };
  const configPath = join(cluster.dir, 'parapool.conf');
  writeFileSync(configPath, configToText(config));
  proxy = new ProxyProcess(configPath, join(cluster.dir, 'proxy.log'), config.port);
  await proxy.start();
});

after(async () => {
  await proxy?.kill('SIGTERM');
  await cluster?.stop();
});

async function sumOnNodes(sql: string): Promise<(string | null)[][]> {
  return (await cluster.onEachNode(sql)).flat();
}

test('transfers under SIGKILL of a node and of the proxy: no acknowledged transfer lost, no money made, nothing left prepared', async () => {
  const setup = newClient(proxy.port);
  await setup.connect();
  await setup.query('create table accounts (id int primary key, balance bigint not null)');
  await setup.query("select parapool.distribute_table('accounts', 'id')");
  await setup.query(`insert into accounts select g, ${initialBalance} from generate_series(1, ${accountCount}) g`);
  await setup.query('create table ledger (id bigint primary key, from_account int not null, to_account int not null, amount int not null)');
  await setup.query("select parapool.distribute_table('ledger', 'id')");
  await setup.end();

  for (const [node, rows] of (await cluster.onEachNode('select id from accounts')).entries()) for (const [id] of rows) placement.set(Number(id), node);
  assert.equal(placement.size, accountCount);
  assert.equal(new Set(placement.values()).size, 3, 'accounts on every node');

  const bank = new Bank(proxy.port, placement);
  bank.start();
  const progress: Record<string, number> = {};
  try {
    progress.before = await bank.runFor(phaseMs);
    // Node 0 is the main node: it decides every two-phase commit.
    const killed = await killNode(cluster.nodes[0]);
    await cluster.nodes[0].start();
    progress.afterNodeRestart = await bank.runFor(phaseMs);
    // The proxy is killed a few times: each kill may land between the phases of some commits.
    for (let kill = 1; kill <= proxyKills; kill++) {
      await proxy.kill('SIGKILL');
      await proxy.start();
      progress[`afterProxyRestart${kill}`] = await bank.runFor(kill < proxyKills ? phaseMs / 3 : phaseMs);
    }
    console.log(`node 0: killed ${killed} processes (postmaster and its children)`);
  } finally {
    await bank.stop();
  }

  // Transactions left prepared by the faults are resolved by the proxy, without a client's help.
  let prepared = 0;
  for (const deadline = Date.now() + 15_000; ; await sleep(100)) {
    prepared = (await sumOnNodes('select count(*) from pg_prepared_xacts')).reduce((n, [c]) => n + Number(c), 0);
    if (prepared === 0 || Date.now() > deadline) break;
  }
  await proxy.kill('SIGTERM');

  const ledger = await sumOnNodes('select id, from_account, to_account, amount from ledger');
  const balances = await sumOnNodes('select id, balance from accounts');
  const seen = new Map<number, number>();
  for (const [id] of ledger) seen.set(Number(id), (seen.get(Number(id)) ?? 0) + 1);
  const acknowledged = [...bank.outcomes].filter(([, o]) => o === 'acknowledged').map(([id]) => id);
  const lost = acknowledged.filter((id) => !seen.has(id));
  const duplicated = [...seen].filter(([, n]) => n > 1).map(([id]) => id);
  const failedPresent = [...seen.keys()].filter((id) => bank.outcomes.get(id) === 'failed');
  const unexplained = [...seen.keys()].filter((id) => !bank.outcomes.has(id));
  const unknownPresent = [...seen.keys()].filter((id) => bank.outcomes.get(id) === 'unknown').length;
  const total = balances.reduce((sum, [, balance]) => sum + Number(balance), 0);
  const expected = new Map<number, number>(Array.from({ length: accountCount }, (_, i) => [i + 1, initialBalance]));
  for (const [, from, to, amount] of ledger) {
    expected.set(Number(from), expected.get(Number(from))! - Number(amount));
    expected.set(Number(to), expected.get(Number(to))! + Number(amount));
  }
  const wrongBalances = balances.filter(([id, balance]) => expected.get(Number(id)) !== Number(balance)).map(([id]) => id);

  console.log(
    `acknowledged ${acknowledged.length}, unknown ${bank.count('unknown')} (${unknownPresent} in the ledger), failed ${bank.count('failed')}; ` +
      `ledger rows ${ledger.length}; lost ${lost.length}, duplicated ${duplicated.length}, failed but present ${failedPresent.length}; ` +
      `prepared left ${prepared}; total balance ${total} of ${accountCount * initialBalance}`,
  );
  console.log(`acknowledged per phase: ${JSON.stringify(progress)}`);
  console.log(`proxy log: ${JSON.stringify(proxy.countEvents(['commit_outcome_unknown', 'commit_prepared_failed', 'in_doubt_resolved', 'in_doubt_unresolved']))}`);
  console.log(`errors: ${[...bank.errors].sort((a, b) => b[1] - a[1]).map(([error, n]) => `${n}× ${error}`).join('; ')}`);
  const diagnosis = () => `\nproxy log:\n${proxy.commitLog()}`;

  assert.equal(balances.length, accountCount, 'every account on exactly one node');
  assert.equal(prepared, 0, `no transaction left prepared${diagnosis()}`);
  assert.deepEqual(lost, [], `every acknowledged transfer is in the ledger${diagnosis()}`);
  assert.deepEqual(duplicated, [], 'no transfer is in the ledger twice');
  assert.deepEqual(failedPresent, [], 'no failed transfer is in the ledger');
  assert.deepEqual(unexplained, [], 'every ledger row is a transfer a client sent');
  assert.equal(total, accountCount * initialBalance, `the total balance is unchanged${diagnosis()}`);
  assert.deepEqual(wrongBalances, [], 'every balance is its opening balance plus the ledger rows that name it');
  // How many transfers land between two faults depends on the machine's speed (the restarted node stays detached
  // until the next proxy start): only the start and the end of the run are sure to see some.
  const phases = Object.values(progress);
  assert.ok(phases[0] > 0 && phases[phases.length - 1] > 0, `transfers went on before the faults and after the last one: ${JSON.stringify(progress)}`);
});

test('recovery waits for a decider still in progress instead of rolling back what it may yet commit', async () => {
  // Two transactions left as a proxy that died between the phases leaves them: prepared on node 1, their
  // deciders on node 0 still open. One decider commits after the new proxy's recovery has begun, one rolls back.
  const deciders = [await cluster.connectDirect(0), await cluster.connectDirect(0)];
  const participant = await cluster.connectDirect(1);
  await deciders[0].query('create table if not exists decided (outcome text)');
  await participant.query('create table if not exists decided (outcome text)');
  const gids: string[] = [];
  for (const [index, outcome] of ['commit', 'rollback'].entries()) {
    await deciders[index].query('begin');
    await deciders[index].query(`insert into decided values ('${outcome}')`);
    const [{ xid }] = (await deciders[index].query('select txid_current()::text as xid')).rows;
    gids.push(`parapool:0:${xid}:00000000000${index}`);
    await participant.query('begin');
    await participant.query(`insert into decided values ('${outcome}')`);
    await participant.query(`prepare transaction '${gids[index]}'`);
  }
  const server = new ProxyServer({ ...cluster.config, port: 0, inDoubtRecoveryInterval: 0 });
  // The deciders end once recovery has asked node 0 about them (or after 10 s, and then the check below still holds).
  const watcher = await cluster.connectDirect(0);
  const decisions = (async () => {
    for (let i = 0; i < 500; i++) {
      const [[asking]] = await rowsOf(watcher, "select count(*) from pg_stat_activity where application_name = 'parapool recovery' and query like '%txid_status%'");
      if (asking !== '0') break;
      await sleep(20);
    }
    await watcher.end();
    await Promise.all([deciders[0].query('commit'), deciders[1].query('rollback')]);
  })();
  try {
    await Promise.all([server.start(), decisions]);
  } finally {
    await server.stop();
    await Promise.all([...deciders, participant].map((c) => c.end()));
  }
  const check = await cluster.connectDirect(1);
  const [[prepared, rows]] = await rowsOf(
    check,
    `select (select count(*) from pg_prepared_xacts where gid in ('${gids.join("', '")}')), (select string_agg(outcome, ',') from decided)`,
  );
  await check.end();
  assert.equal(prepared, '0', 'both were resolved at start-up');
  assert.equal(rows, 'commit', 'node 1 committed what its decider committed and rolled back what it rolled back');
});

test('a transaction that wrote rows on a node lost before its COMMIT is rolled back on the others', async () => {
  const [onNode0, onNode1] = [0, 1].map((node) => [...placement].find(([, n]) => n === node)?.[0]);
  assert.ok(onNode0 !== undefined && onNode1 !== undefined, 'the accounts of the first test');
  await proxy.start();
  const balanceOf = async (node: number, id: number) => {
    const direct = await cluster.connectDirect(node);
    const [[balance]] = await rowsOf(direct, `select balance from accounts where id = ${id}`);
    await direct.end();
    return balance;
  };
  const before = await balanceOf(1, onNode1);
  const client = newClient(proxy.port);
  await client.connect();
  await client.query('begin');
  await client.query(`update accounts set balance = balance - 1 where id = ${onNode0}`);
  await client.query(`update accounts set balance = balance + 1 where id = ${onNode1}`);
  await killNode(cluster.nodes[0]);
  try {
    const observer = newClient(proxy.port);
    await observer.connect();
    for (let i = 0; i < 200; i++) {
      const status = (await observer.query('show pool_nodes')).rows[0].status;
      if (status === 'down') break;
      await sleep(20);
    }
    await observer.end();
    await assert.rejects(client.query('commit'), (e: { code?: string; message: string }) => {
      assert.equal(e.code, '40000', e.message);
      assert.match(e.message, /node 0 .*whose connection was lost/);
      return true;
    });
    assert.equal((await rowsOf(client, 'select 1'))[0][0], '1', 'the session goes on');
    await client.end();
    assert.equal(await balanceOf(1, onNode1), before, "node 1 did not commit its part");
  } finally {
    await client.end().catch(() => undefined);
    await cluster.nodes[0].start();
    await proxy.kill('SIGTERM');
  }
});
