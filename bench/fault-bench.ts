// The fault benchmark behind `bash bench/run.sh --only fault`: pgbench's TPC-B-like read/write load through a proxy
// in front of two replicated PostgreSQL nodes while node 1 is killed with SIGKILL and then recovered online, first
// through parapool, then through pgpool-II in native replication mode, each with fresh nodes and the same health
// check settings. It reports throughput before, during and after the fault, how long the service was out, how long
// the recovery took, what the clients saw, and, checked on both nodes directly afterwards, whether every
// transaction pgbench saw committed is there, on both nodes alike. The table goes into docs/benchmarks.md.
//
// Why several pgbench processes of one client each: a pgbench client whose connection is cut aborts for good
// (pgpool-II cuts every client at a failover and at the second stage of a recovery), so each client slot is a
// pgbench process that is started again when it ends early. Each process writes a per-transaction log (-l), so the
// commits it saw are known one by one, and tags the pgbench_history row of each transaction with its slot, its run
// and its transaction number, so that each acknowledged commit can be looked up by name on each node.

import { execFileSync } from 'node:child_process';
import { chmodSync, existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Client } from 'pg';
import { freePort, type LocalPostgres } from '../src/cluster/local-postgres';
import { findPostgresBinDir, postgresOsUser } from '../src/cluster/postgres-install';
import { recoveryScripts } from '../src/cluster/sandbox';
import { processTree } from '../test/support/node-faults';
import {
  busiestOthers, cpuCount, ticksPerSecond, cpuSnapshot, cpuUse, findClientProgram, findProgram, firstLine, integerOption, isFinishing, machineFacts,
  machineLine, makeWorkDir, parseCommonOptions, postmasterPid, publish, runBenchmark, say, sleep, sourceRevision, startNodes, startParapool,
  pgpoolBaseSettings, runProgram, startServer, StepError, stopNodes, tail, throwIfFinishing, waitReady, type CommonOptions, type Server,
} from './bench-support';

const sectionHeading = '## Faults: a node killed and recovered under pgbench';

interface Options extends CommonOptions {
  duration: number;
  killAt: number;
  recoverAt: number;
  clients: number;
  scale: number;
  targets: TargetName[];
}

type TargetName = 'parapool' | 'pgpool';

const usage = `usage: bash bench/run.sh --only fault [--duration S] [--kill-at S] [--recover-at S] [--clients N] [--scale N] [--targets parapool,pgpool] [--docs FILE] [--keep]
  --duration S     seconds of pgbench load per target (default 60)
  --kill-at S      second of the load at which node 1 is killed (default 15)
  --recover-at S   second of the load at which its online recovery starts (default 30)
  --clients N      pgbench clients, one pgbench process each (default 4)
  --scale N        pgbench -i -s (default 5)
  --targets LIST   which proxies to run, in order (default parapool,pgpool)
  --docs FILE      where the results section goes (default docs/benchmarks.md; "-" writes nothing)
  --keep           leave the temporary directory (data, configs, logs, pgbench logs) in place
bench/run.sh takes --duration, --clients and --scale as --fault-duration, --fault-clients and --fault-scale.
`;

function parseOptions(argv: string[]): Options {
  const own = { duration: 60, killAt: 15, recoverAt: 30, clients: 4, scale: 5, targets: ['parapool', 'pgpool'] as TargetName[] };
  const common = parseCommonOptions(argv, usage, (arg, value) => {
    switch (arg) {
      case '--duration': own.duration = integerOption(arg, value(), 10, usage); return true;
      case '--kill-at': own.killAt = integerOption(arg, value(), 6, usage); return true;
      case '--recover-at': own.recoverAt = integerOption(arg, value(), 1, usage); return true;
      case '--clients': own.clients = integerOption(arg, value(), 1, usage); return true;
      case '--scale': own.scale = integerOption(arg, value(), 1, usage); return true;
      case '--targets': {
        const list = (value() ?? '').split(',').filter((t) => t !== '');
        if (list.length === 0 || list.some((t) => t !== 'parapool' && t !== 'pgpool')) throw new StepError(`--targets takes parapool and/or pgpool\n${usage}`);
        own.targets = list as TargetName[];
        return true;
      }
      default: return false;
    }
  });
  if (own.recoverAt <= own.killAt) throw new StepError('--recover-at must come after --kill-at');
  // The "after" window starts 5 s after the attach and the recovery takes seconds: leave room for both.
  if (own.duration < own.recoverAt + 15) throw new StepError('--duration must be at least --recover-at + 15');
  return { ...own, ...common };
}

// Identical on both targets, so that the time to notice the fault compares like with like.
const healthCheck = { period: 1, timeout: 1, maxRetries: 1, retryDelay: 1 };

/**
 * pgbench's built-in tpcb-like script, except that the history row carries `slot-run-transaction` in its filler
 * column: pgbench's per-transaction log numbers transactions the same way (`\set n :n + 1` runs once per
 * transaction and variables last across a client's transactions), so the log names every acknowledged commit.
 */
const script = `\\set aid random(1, 100000 * :scale)
\\set bid random(1, 1 * :scale)
\\set tid random(1, 10 * :scale)
\\set delta random(-5000, 5000)
\\set n :n + 1
BEGIN;
UPDATE pgbench_accounts SET abalance = abalance + :delta WHERE aid = :aid;
SELECT abalance FROM pgbench_accounts WHERE aid = :aid;
UPDATE pgbench_tellers SET tbalance = tbalance + :delta WHERE tid = :tid;
UPDATE pgbench_branches SET bbalance = bbalance + :delta WHERE bid = :bid;
INSERT INTO pgbench_history (tid, bid, aid, delta, mtime, filler) VALUES (:tid, :bid, :aid, :delta, CURRENT_TIMESTAMP, ':slot-:run-:n');
END;
`;

// ---------------------------------------------------------------------------------------------------------------
// Child programs


function chownToPostgres(path: string): void {
  const user = postgresOsUser();
  if (user) execFileSync('chown', ['-R', `${user}:`, path]);
}

// ---------------------------------------------------------------------------------------------------------------
// The targets: each starts on fresh nodes and knows how to ask for its node 1's state and its recovery.

interface Running {
  label: string;
  port: number;
  server: Server;
  /** Whether node 1 is out of service, as the proxy sees it; null when it could not be asked. */
  nodeDown(): Promise<boolean | null>;
  /** Runs the online recovery of node 1 to its end; `step` hears the progress the proxy reports. */
  recover(step: (text: string) => void): Promise<void>;
  nodeStates(): Promise<string>;
  close(): Promise<void>;
}

async function startParapoolTarget(dir: string, nodes: LocalPostgres[]): Promise<Running> {
  const server = await startParapool(dir, 'parapool', nodes.map((n) => n.port), (config) => {
    config.backends = config.backends.map((backend, i) => ({ ...backend, dataDirectory: nodes[i].dataDir }));
    config.healthCheck = { ...config.healthCheck, ...healthCheck, user: 'postgres' };
    config.recovery1stStageCommand = join(recoveryScripts, 'recovery_1st_stage');
    config.recovery2ndStageCommand = join(recoveryScripts, 'recovery_2nd_stage');
    // A pgpool_status left in /tmp by another run must not mark a fresh node down.
    config.logdir = dir;
  });
  let admin: Client | null = null;
  const query = async (sql: string): Promise<Record<string, string>[]> => {
    if (!admin) {
      const client = new Client({ host: '127.0.0.1', port: server.port, user: 'postgres', database: 'postgres', connectionTimeoutMillis: 2_000, query_timeout: 2_000 });
      client.on('error', () => undefined);
      await client.connect();
      admin = client;
    }
    try {
      return (await admin.query(sql)).rows as Record<string, string>[];
    } catch (error) {
      await admin.end().catch(() => undefined);
      admin = null;
      throw error;
    }
  };
  return {
    label: 'parapool',
    port: server.port,
    server,
    async nodeDown() {
      try {
        return (await query('SHOW pool_nodes'))[1]?.status !== 'up';
      } catch {
        return null;
      }
    },
    async recover(step) {
      const operator = new Client({ host: '127.0.0.1', port: server.port, user: 'postgres', database: 'postgres' });
      operator.on('notice', (notice) => step((notice.message ?? '').split(`${process.cwd()}/`).join(''))); // paths relative to the checkout, for the docs
      await operator.connect();
      try {
        const result = await operator.query('SELECT parapool.recover_node(1)');
        if (String(Object.values(result.rows[0] ?? {})[0]) !== 'true') throw new StepError(`parapool.recover_node(1) answered ${JSON.stringify(result.rows[0])}`);
      } finally {
        await operator.end().catch(() => undefined);
      }
    },
    async nodeStates() {
      return (await query('SHOW pool_nodes')).map((r) => r.status).join(', ');
    },
    async close() {
      await (admin as Client | null)?.end().catch(() => undefined);
      await server.stop();
    },
  };
}

/** pgpool-II's recovery scripts, written into the main node's data directory, where pgpool_recovery looks for them. */
function writePgpoolRecoveryScripts(binDir: string, mainDataDir: string): void {
  const header = (why: string) => `#!/bin/bash
# ${why}
# Arguments from pgpool_recovery: main data directory, node host, node data directory, main port, node id, node
# port, main host. Runs as the PostgreSQL server's OS user, inside a backend of the main node.
set -euo pipefail
MAIN_PGDATA=$1 DEST_HOST=$2 DEST_PGDATA=$3 MAIN_PORT=$4 DEST_NODE_ID=$5 DEST_PORT=$6 MAIN_HOST=$7
BIN='${binDir}'
main() { "$BIN/psql" -X -v ON_ERROR_STOP=1 -h "$MAIN_HOST" -p "$MAIN_PORT" -U postgres -At "$@"; }
dest() { "$BIN/psql" -X -v ON_ERROR_STOP=1 -h "$DEST_HOST" -p "$DEST_PORT" -U postgres -At "$@"; }
`;
  const first = header('First stage: a copy of the main node taken while clients go on writing, started as its streaming standby.') + `
# The killed node left a postmaster.pid and nothing running; whatever does run of it stops first.
if [ -f "$DEST_PGDATA/postmaster.pid" ]; then "$BIN/pg_ctl" -D "$DEST_PGDATA" -m immediate -w stop || true; fi
rm -rf "$DEST_PGDATA"
"$BIN/pg_basebackup" -h "$MAIN_HOST" -p "$MAIN_PORT" -U postgres -D "$DEST_PGDATA" --wal-method=stream --write-recovery-conf --checkpoint=fast --no-sync
# The copy has the main node's port; the node keeps its own.
echo "port = $DEST_PORT" >> "$DEST_PGDATA/postgresql.auto.conf"
rm -f "$DEST_PGDATA/server.log"
"$BIN/pg_ctl" -D "$DEST_PGDATA" -l "$DEST_PGDATA/server.log" -w -t 60 start
echo "node $DEST_NODE_ID streams from $MAIN_HOST:$MAIN_PORT"
`;
  const second = header('Second stage, with every client disconnected: the standby replays up to the last write, then is promoted.') + `
# The insert position: with synchronous_commit off a commit can be acknowledged before its WAL is written out.
LSN=$(main -d postgres -c 'SELECT pg_current_wal_insert_lsn()')
caught_up=f
for i in $(seq 1 600); do
  caught_up=$(dest -d postgres -c "SELECT pg_last_wal_replay_lsn() >= '$LSN'::pg_lsn")
  if [ "$caught_up" = t ]; then break; fi
  sleep 0.1
done
if [ "$caught_up" != t ]; then echo "node $DEST_NODE_ID did not replay up to $LSN within 60 s" >&2; exit 1; fi
"$BIN/pg_ctl" -D "$DEST_PGDATA" -w -t 60 promote
dest -d postgres -q -c 'ALTER SYSTEM RESET primary_conninfo' -c 'SELECT pg_reload_conf()' >/dev/null
# A standby's sequences run ahead by the values the primary WAL-logged in advance.
for db in $(main -d postgres -c 'SELECT datname FROM pg_database WHERE datallowconn AND NOT datistemplate'); do
  main -d "$db" -c "SELECT format('SELECT setval(%L, %s, %s);', quote_ident(schemaname) || '.' || quote_ident(sequencename), coalesce(last_value, start_value), CASE WHEN last_value IS NULL THEN 'false' ELSE 'true' END) FROM pg_sequences" | dest -d "$db" -q >/dev/null
done
echo "node $DEST_NODE_ID promoted at $LSN"
`;
  // pgpool calls it with the node's host and data directory after the second stage; the first stage already
  // started the node, so this only starts it when it is not running.
  const remoteStart = `#!/bin/bash
set -euo pipefail
BIN='${binDir}'
if ! "$BIN/pg_ctl" -D "$2" status >/dev/null 2>&1; then "$BIN/pg_ctl" -D "$2" -l "$2/server.log" -w -t 60 start; fi
`;
  for (const [name, text] of [['recovery_1st_stage', first], ['recovery_2nd_stage', second], ['pgpool_remote_start', remoteStart]]) {
    const path = join(mainDataDir, name);
    writeFileSync(path, text);
    chmodSync(path, 0o755);
    chownToPostgres(path);
  }
}

async function startPgpoolTarget(dir: string, nodes: LocalPostgres[], program: string, binDir: string): Promise<Running> {
  const home = join(dir, 'pgpool');
  mkdirSync(home, { recursive: true });
  const port = await freePort();
  const pcpPort = await freePort();
  const pcpPassword = 'fault-bench';
  const conf = [
    "backend_clustering_mode = 'native_replication'",
    "listen_addresses = '127.0.0.1'",
    `port = ${port}`,
    "pcp_listen_addresses = '127.0.0.1'",
    `pcp_port = ${pcpPort}`,
    ...pgpoolBaseSettings(home),
    ...nodes.flatMap((node, i) => [
      `backend_hostname${i} = '127.0.0.1'`,
      `backend_port${i} = ${node.port}`,
      `backend_weight${i} = 1`,
      `backend_data_directory${i} = '${node.dataDir}'`,
      `backend_flag${i} = 'ALLOW_TO_FAILOVER'`,
    ]),
    'num_init_children = 32',
    'max_pool = 4',
    'connection_cache = on',
    'load_balance_mode = on',
    'replicate_select = off',
    'insert_lock = on',
    `health_check_period = ${healthCheck.period}`,
    `health_check_timeout = ${healthCheck.timeout}`,
    `health_check_max_retries = ${healthCheck.maxRetries}`,
    `health_check_retry_delay = ${healthCheck.retryDelay}`,
    "health_check_user = 'postgres'",
    "health_check_password = ''",
    "health_check_database = 'postgres'",
    // pgpool's default: a session that loses its node connection triggers the failover at once.
    'failover_on_backend_error = on',
    "recovery_user = 'postgres'",
    "recovery_password = ''",
    "recovery_1st_stage_command = 'recovery_1st_stage'",
    "recovery_2nd_stage_command = 'recovery_2nd_stage'",
    'recovery_timeout = 90',
    // pgpool's second stage waits until every client has disconnected, which pgbench clients never do on their
    // own: -1 disconnects them when it begins (with 0, the default, the recovery would time out).
    'client_idle_limit_in_recovery = -1',
    'sr_check_period = 0',
    "log_min_messages = 'warning'",
    '',
  ].join('\n');
  const confPath = join(home, 'pgpool.conf');
  writeFileSync(confPath, conf);
  const md5 = execFileSync('md5sum', { input: pcpPassword }).toString().split(' ')[0];
  writeFileSync(join(home, 'pcp.conf'), `postgres:${md5}\n`);
  writeFileSync(join(home, 'pool_hba.conf'), '');
  const pcpPass = join(home, 'pcppass');
  writeFileSync(pcpPass, `127.0.0.1:${pcpPort}:postgres:${pcpPassword}\n`, { mode: 0o600 });
  const pcpEnv = { PCPPASSFILE: pcpPass };
  const pcpArgs = ['-h', '127.0.0.1', '-p', String(pcpPort), '-U', 'postgres', '-w'];
  const pcp = (name: string) => {
    const path = findProgram(name);
    if (!path) throw new StepError(`${name} is missing (Debian package pgpool2)`);
    return path;
  };

  // pgpool_recovery runs the recovery scripts from the main node, and pgpool calls it in template1.
  const main = new Client({ host: '127.0.0.1', port: nodes[0].port, user: 'postgres', database: 'template1' });
  await main.connect();
  try {
    await main.query('CREATE EXTENSION IF NOT EXISTS pgpool_recovery');
  } catch (error) {
    throw new StepError(`CREATE EXTENSION pgpool_recovery on node 0 failed (Debian package postgresql-15-pgpool2): ${(error as Error).message}`);
  } finally {
    await main.end();
  }
  writePgpoolRecoveryScripts(binDir, nodes[0].dataDir);

  // As in the relay benchmark: SIGINT is pgpool's fast shutdown, -n keeps it in the foreground, -D ignores any
  // old pgpool_status.
  const server = startServer('pgpool', program, ['-n', '-D', '-f', confPath, '-F', join(home, 'pcp.conf'), '-a', join(home, 'pool_hba.conf')], port, join(dir, 'pgpool.log'), 'SIGINT', { cwd: home });
  await waitReady('pgpool', port, server);
  const nodeInfo = async (id: number): Promise<string> => {
    const result = await runProgram(pcp('pcp_node_info'), [...pcpArgs, '-n', String(id)], 5_000, pcpEnv);
    if (result.code !== 0) throw new Error(result.stderr.trim());
    // hostname port status weight status_name ...: status 3 is down.
    return result.stdout.trim().split(/\s+/)[4] ?? '';
  };
  return {
    label: 'pgpool-II',
    port,
    server,
    async nodeDown() {
      try {
        return (await nodeInfo(1)) !== 'up';
      } catch {
        return null;
      }
    },
    async recover(step) {
      step('pcp_recovery_node -n 1');
      const result = await runProgram(pcp('pcp_recovery_node'), [...pcpArgs, '-n', '1'], 300_000, pcpEnv);
      if (result.code !== 0 || result.timedOut) {
        throw new StepError(`pcp_recovery_node -n 1 failed (code ${result.code}${result.timedOut ? ', timed out' : ''}): ${result.stdout.trim()} ${result.stderr.trim()}\n` +
          `last lines of ${server.logPath}:\n${tail(server.logPath)}\nlast lines of node 0's log:\n${tail(join(nodes[0].dataDir, 'server.log'))}`);
      }
      step(result.stdout.trim());
    },
    async nodeStates() {
      return [await nodeInfo(0), await nodeInfo(1)].join(', ');
    },
    async close() {
      await server.stop();
    },
  };
}

/**
 * test/support/node-faults.ts's killNode, with the moment the last SIGKILL was sent handed to `killed`: waiting
 * for the processes to be gone can take a second or more when whoever reaps orphans is slow, and the node is
 * dead from the kill on.
 */
async function killNode(node: LocalPostgres, killed: () => void): Promise<void> {
  const postmaster = postmasterPid(node);
  if (postmaster <= 0) throw new StepError(`no postmaster runs in ${node.dataDir}`);
  process.kill(postmaster, 'SIGSTOP'); // so that it forks nothing between the look-up and the kill
  const pids = processTree(postmaster).reverse();
  for (const pid of pids) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // already gone
    }
  }
  killed();
  while (pids.some((pid) => existsSync(`/proc/${pid}`))) await sleep(10);
}

// ---------------------------------------------------------------------------------------------------------------
// The load: one pgbench process per client slot, started again whenever it ends before the end of the run.

interface Commit {
  /** Milliseconds since the start of the load, when pgbench saw the transaction end. */
  endMs: number;
  startMs: number;
  tag: string;
}

interface PgbenchRun {
  slot: number;
  run: number;
  startMs: number;
  endMs: number;
  code: number | null;
  timedOut: boolean;
  aborted: boolean;
  /** The run ended before it had a connection: it ran no transaction. */
  noConnection: boolean;
  /** The first error line pgbench printed, if any. */
  error: string;
}

interface Load {
  runs: PgbenchRun[];
  commits: Commit[];
  /** Transactions pgbench reported as failed (rolled back, e.g. a deadlock), by tag. */
  failed: string[];
}

async function runLoad(pgbench: string, dir: string, port: number, options: Options, t0: number): Promise<Load> {
  const scriptPath = join(dir, 'tpcb-tagged.sql');
  writeFileSync(scriptPath, script);
  const logDir = join(dir, 'pgbench-logs');
  mkdirSync(logDir, { recursive: true });
  const endAt = t0 + options.duration * 1000;
  const runs: PgbenchRun[] = [];
  const slotLoop = async (slot: number) => {
    for (let run = 1; !isFinishing(); run++) {
      // pgbench's -T is whole seconds: a restarted client stops up to a second before the end.
      const seconds = Math.floor((endAt - Date.now()) / 1000);
      if (seconds < 1) break;
      const startMs = Date.now() - t0;
      const result = await runProgram(pgbench, [
        '-n', '-c', '1', '-j', '1', '-T', String(seconds), '-s', String(options.scale), '-f', scriptPath,
        '-D', 'n=0', '-D', `slot=${slot}`, '-D', `run=${run}`, '-l', `--log-prefix=${join(logDir, `slot${slot}-run${run}`)}`, '--failures-detailed',
        '-h', '127.0.0.1', '-p', String(port), '-U', 'postgres', 'postgres',
      ], (seconds + 60) * 1000);
      const endMs = Date.now() - t0;
      const errorLines = result.stderr.split('\n').filter((l) => /error|abort|fatal|could not|closed|terminat/i.test(l));
      const aborted = /aborted/.test(result.stderr) || /number of clients aborted: [1-9]/.test(result.stdout);
      const noConnection = !/number of transactions actually processed/.test(result.stdout) && !aborted;
      runs.push({ slot, run, startMs, endMs, code: result.code, timedOut: result.timedOut, aborted, noConnection, error: errorLines[0]?.trim() ?? '' });
      if (result.timedOut) say(`pgbench slot ${slot} run ${run} hung: killed ${seconds + 60} s after its start`);
      if (result.code !== 0 && Date.now() < endAt - 1000) await sleep(100);
    }
  };
  await Promise.all(Array.from({ length: options.clients }, (_, i) => slotLoop(i)));

  // pgbench 15's per-transaction log: client_id transaction_no time script_no time_epoch time_us, where time is the
  // latency in microseconds, or 'failed' (or the failure's kind with --failures-detailed) for a rolled-back one.
  const commits: Commit[] = [];
  const failed: string[] = [];
  for (const file of readdirSync(logDir)) {
    const match = /^slot(\d+)-run(\d+)\.\d+$/.exec(file);
    if (!match) continue;
    for (const line of readFileSync(join(logDir, file), 'utf8').split('\n')) {
      const fields = line.trim().split(/\s+/);
      if (fields.length < 6) continue;
      const tag = `${match[1]}-${match[2]}-${fields[1]}`;
      const endMs = Number(fields[4]) * 1000 + Number(fields[5]) / 1000 - t0;
      if (/^\d+$/.test(fields[2])) commits.push({ endMs, startMs: endMs - Number(fields[2]) / 1000, tag });
      else failed.push(tag);
    }
  }
  commits.sort((a, b) => a.endMs - b.endMs);
  runs.sort((a, b) => a.startMs - b.startMs);
  return { runs, commits, failed };
}

// ---------------------------------------------------------------------------------------------------------------
// After the run: both nodes, directly.

interface NodeCheck {
  history: number;
  tags: Set<string>;
  sums: { accounts: string; branches: string; tellers: string; delta: string };
  digest: string;
}

async function checkNode(port: number): Promise<NodeCheck> {
  const client = new Client({ host: '127.0.0.1', port, user: 'postgres', database: 'postgres' });
  await client.connect();
  try {
    const one = async (sql: string) => String(Object.values((await client.query(sql)).rows[0])[0]);
    const sums = {
      accounts: await one('SELECT sum(abalance) FROM pgbench_accounts'),
      branches: await one('SELECT sum(bbalance) FROM pgbench_branches'),
      tellers: await one('SELECT sum(tbalance) FROM pgbench_tellers'),
      delta: await one('SELECT coalesce(sum(delta), 0) FROM pgbench_history'),
    };
    // Row by row, so that two nodes agree only if every balance and every history row is the same.
    const digest = [
      await one("SELECT md5(string_agg(aid || ':' || abalance, ',' ORDER BY aid)) FROM pgbench_accounts"),
      await one("SELECT md5(string_agg(bid || ':' || bbalance, ',' ORDER BY bid)) FROM pgbench_branches"),
      await one("SELECT md5(string_agg(tid || ':' || tbalance, ',' ORDER BY tid)) FROM pgbench_tellers"),
      await one("SELECT md5(string_agg(tid || ':' || bid || ':' || aid || ':' || delta || ':' || trim(filler), ',' ORDER BY trim(filler))) FROM pgbench_history"),
    ].join('/');
    const tags = new Set((await client.query('SELECT trim(filler) AS tag FROM pgbench_history')).rows.map((r: { tag: string }) => r.tag));
    return { history: tags.size, tags, sums, digest };
  } finally {
    await client.end();
  }
}

// ---------------------------------------------------------------------------------------------------------------
// One target's scenario

interface Outcome {
  label: string;
  error: string | null;
  perSecond: number[];
  tpsBefore: number;
  tpsDuring: number;
  tpsAfter: number;
  /** Seconds from the start of the load to the moment node 1's last process was gone. */
  killedAt: number;
  /** Seconds from the kill, or null if it never happened. */
  detachedAfter: number | null;
  restoredAfter: number | null;
  /** Longest time without any commit between the kill and the start of the recovery. */
  gapAfterKill: number;
  recoveryStart: number;
  recoverySeconds: number | null;
  gapDuringRecovery: number;
  attachedAt: number | null;
  steps: string[];
  committed: number;
  failed: number;
  runs: number;
  aborted: number;
  noConnection: number;
  hung: number;
  errors: string[];
  nodes: NodeCheck[];
  missing: number[];
  /** Commits on the nodes that pgbench never saw acknowledged (in flight when a client's connection was cut). */
  unacknowledged: number[];
  failedButStored: number;
  states: string;
  otherCpuShare: number;
  proxyLogLines: string[];
}

function countIn(commits: Commit[], from: number, to: number): number {
  return commits.filter((c) => c.endMs >= from && c.endMs < to).length;
}

function longestGap(commits: Commit[], from: number, to: number): number {
  let last = from;
  let gap = 0;
  for (const c of commits) {
    if (c.endMs < from) continue;
    if (c.endMs >= to) break;
    gap = Math.max(gap, c.endMs - last);
    last = c.endMs;
  }
  return Math.max(gap, to - last) / 1000;
}

/** Error lines of pgbench with the variable parts (ports, pids, numbers) taken out, most frequent first. */
function errorSummary(runs: PgbenchRun[]): string[] {
  const counts = new Map<string, number>();
  for (const run of runs) {
    if (!run.error) continue;
    const text = run.error.replace(/^pgbench: (error: )?/, '').replace(/\d+/g, 'N').replace(/"[^"]*"/g, '"..."');
    counts.set(text, (counts.get(text) ?? 0) + 1);
  }
  return [...counts].sort((a, b) => b[1] - a[1]).map(([text, n]) => `${n} × ${text}`);
}

async function runScenario(name: TargetName, baseDir: string, options: Options, binDir: string, pgbench: string, pgpoolProgram: string | null): Promise<Outcome> {
  throwIfFinishing();
  const dir = join(baseDir, name);
  mkdirSync(dir, { recursive: true });
  // pgpool's recovery scripts run as the PostgreSQL server's user and replace the node's data directory, so the
  // directory that holds it is that user's.
  const nodesDir = join(dir, 'nodes');
  mkdirSync(nodesDir, { recursive: true });
  chownToPostgres(nodesDir);
  say(`${name}: starting two fresh nodes`);
  // fsync stays off (an OS crash is not what is measured), but a commit waits for its WAL write, so a node
  // killed with SIGKILL keeps what it acknowledged, as a durable server would.
  const nodes = await startNodes(binDir, nodesDir, ['node0', 'node1'], { synchronous_commit: 'on', max_wal_senders: '10', wal_level: 'replica' });
  const running = name === 'parapool' ? await startParapoolTarget(dir, nodes) : await startPgpoolTarget(dir, nodes, pgpoolProgram!, binDir);
  const label = running.label;
  const outcome: Outcome = {
    label, error: null, perSecond: [], tpsBefore: 0, killedAt: options.killAt, tpsDuring: 0, tpsAfter: 0, detachedAfter: null, restoredAfter: null, gapAfterKill: 0,
    recoveryStart: options.recoverAt, recoverySeconds: null, gapDuringRecovery: 0, attachedAt: null, steps: [], committed: 0, failed: 0, runs: 0,
    aborted: 0, noConnection: 0, hung: 0, errors: [], nodes: [], missing: [], unacknowledged: [], failedButStored: 0, states: '', otherCpuShare: 0, proxyLogLines: [],
  };
  try {
    say(`${label}: pgbench -i -s ${options.scale} through the proxy`);
    const init = await runProgram(pgbench, ['-i', '-s', String(options.scale), '-q', '-h', '127.0.0.1', '-p', String(running.port), '-U', 'postgres', 'postgres'], 600_000);
    if (init.code !== 0) throw new StepError(`pgbench -i through ${label} failed (code ${init.code}):\n${init.stderr.trim()}`);
    const logFrom = running.server.logSize();

    say(`${label}: ${options.clients} clients for ${options.duration} s; node 1 killed at ${options.killAt} s, recovered from ${options.recoverAt} s`);
    const cpuBefore = cpuSnapshot(running.server.pid, nodes.map(postmasterPid));
    const t0 = Date.now();
    const load = runLoad(pgbench, dir, running.port, options, t0);
    const since = () => (Date.now() - t0) / 1000;

    const fault = (async () => {
      await sleep(t0 + options.killAt * 1000 - Date.now());
      throwIfFinishing();
      await killNode(nodes[1], () => (outcome.killedAt = since()));
      say(`${label}: node 1 killed at ${outcome.killedAt.toFixed(2)} s`);
      while (outcome.detachedAfter === null && since() < options.recoverAt) {
        const down = await running.nodeDown();
        if (down) outcome.detachedAfter = since() - outcome.killedAt;
        else await sleep(50);
      }
      say(`${label}: node 1 detached ${outcome.detachedAfter === null ? 'not before the recovery' : `${outcome.detachedAfter.toFixed(2)} s after the kill`}`);
      await sleep(t0 + options.recoverAt * 1000 - Date.now());
      throwIfFinishing();
      const started = since();
      outcome.recoveryStart = started;
      await running.recover((text) => {
        outcome.steps.push(`${(since() - started).toFixed(2)} s: ${text}`);
      });
      outcome.attachedAt = since();
      outcome.recoverySeconds = outcome.attachedAt - started;
      say(`${label}: node 1 recovered and attached in ${outcome.recoverySeconds.toFixed(2)} s`);
    })();
    const [faultResult, loadResult] = await Promise.allSettled([fault, load]);
    if (loadResult.status === 'rejected') throw loadResult.reason;
    const { runs, commits, failed } = loadResult.value;
    const cpuAfter = cpuSnapshot(running.server.pid, nodes.map(postmasterPid));
    const elapsed = since();
    // pid 1 is left out: it inherits the CPU time of the orphans it reaps, the killed node's processes among them.
    const initSeconds = Math.max(0, (cpuAfter.others.get(1)?.ticks ?? 0) - (cpuBefore.others.get(1)?.ticks ?? 0)) / ticksPerSecond;
    const otherSeconds = Math.max(0, cpuUse(cpuBefore, cpuAfter).other - initSeconds);
    outcome.otherCpuShare = Math.min(1, otherSeconds / (elapsed * cpuCount(machineFacts(binDir))));
    if (outcome.otherCpuShare >= 0.05) say(`${label}: other processes used ${(outcome.otherCpuShare * 100).toFixed(0)} % of the CPU, most of all ${busiestOthers(cpuBefore, cpuAfter)}`);
    if (faultResult.status === 'rejected') {
      outcome.error = (faultResult.reason as Error).message;
      say(`${label}: FAILED: ${outcome.error}`);
    }

    const end = options.duration * 1000;
    const kill = outcome.killedAt * 1000;
    for (let s = 0; s < options.duration; s++) outcome.perSecond.push(countIn(commits, s * 1000, (s + 1) * 1000));
    outcome.tpsBefore = countIn(commits, 5000, options.killAt * 1000) / (options.killAt - 5);
    const attached = outcome.attachedAt !== null ? outcome.attachedAt * 1000 : end;
    outcome.tpsDuring = countIn(commits, kill, attached) / ((attached - kill) / 1000);
    // The last second is left out: restarted clients stop up to a second early (pgbench -T takes whole seconds).
    const afterFrom = attached + 5000;
    outcome.tpsAfter = afterFrom < end - 1000 ? countIn(commits, afterFrom, end - 1000) / ((end - 1000 - afterFrom) / 1000) : NaN;
    const firstAfter = commits.find((c) => c.startMs >= kill);
    outcome.restoredAfter = firstAfter ? (firstAfter.endMs - kill) / 1000 : null;
    outcome.gapAfterKill = longestGap(commits, kill, outcome.recoveryStart * 1000);
    outcome.gapDuringRecovery = longestGap(commits, outcome.recoveryStart * 1000, attached);
    outcome.committed = commits.length;
    outcome.failed = failed.length;
    outcome.runs = runs.length;
    outcome.aborted = runs.filter((r) => r.aborted).length;
    outcome.noConnection = runs.filter((r) => r.noConnection).length;
    outcome.hung = runs.filter((r) => r.timedOut).length;
    outcome.errors = errorSummary(runs);
    outcome.proxyLogLines = running.server.logLinesSince(logFrom);
    if (outcome.hung > 0 && !outcome.error) outcome.error = `${outcome.hung} pgbench run(s) hung`;

    try {
      outcome.states = await running.nodeStates();
    } catch (error) {
      outcome.states = `not known (${(error as Error).message})`;
    }
    await running.close();
    // Directly on each node, with the proxy gone, so that nothing is still writing.
    outcome.nodes = await Promise.all(nodes.map((n) => checkNode(n.port)));
    const acknowledged = new Set(commits.map((c) => c.tag));
    outcome.missing = outcome.nodes.map((n) => [...acknowledged].filter((t) => !n.tags.has(t)).length);
    outcome.unacknowledged = outcome.nodes.map((n) => [...n.tags].filter((t) => !acknowledged.has(t)).length);
    outcome.failedButStored = failed.filter((t) => outcome.nodes.some((n) => n.tags.has(t))).length;
    say(`${label}: ${outcome.committed} commits acknowledged; history rows ${outcome.nodes.map((n) => n.history).join(' / ')}; missing ${outcome.missing.join(' / ')}`);
  } finally {
    await running.close().catch(() => undefined);
    await stopNodes(nodes);
  }
  return outcome;
}

// ---------------------------------------------------------------------------------------------------------------
// Report

const seconds = (value: number | null, digits = 2) => (value === null || !Number.isFinite(value) ? 'n/a' : `${value.toFixed(digits)} s`);
const tps = (value: number) => (Number.isFinite(value) ? value.toFixed(0) : 'n/a');

function consistent(o: Outcome): boolean {
  if (o.nodes.length !== 2) return false;
  const [a, b] = o.nodes;
  const balanced = (n: NodeCheck) => n.sums.accounts === n.sums.delta && n.sums.branches === n.sums.delta && n.sums.tellers === n.sums.delta;
  return a.digest === b.digest && balanced(a) && balanced(b);
}

function lost(o: Outcome): number {
  return o.missing.length === 0 ? NaN : Math.max(...o.missing);
}

function table(outcomes: Outcome[], options: Options): string {
  const rows: [string, (o: Outcome) => string][] = [
    [`TPS before the kill (${5}-${options.killAt} s)`, (o) => tps(o.tpsBefore)],
    [`TPS from the kill to the attach (${options.killAt} s to attach)`, (o) => tps(o.tpsDuring)],
    ['TPS after (attach + 5 s to the end)', (o) => tps(o.tpsAfter)],
    ['kill to node 1 detached', (o) => seconds(o.detachedAfter)],
    ['kill to the first commit of a transaction begun after the kill (service restored)', (o) => seconds(o.restoredAfter)],
    ['longest time without any commit, kill to recovery start', (o) => seconds(o.gapAfterKill)],
    ['recovery: command start to node 1 attached', (o) => seconds(o.recoverySeconds)],
    ['longest time without any commit during the recovery', (o) => seconds(o.gapDuringRecovery)],
    ['transactions committed (acknowledged to pgbench)', (o) => o.committed.toLocaleString('en-US')],
    ['transactions failed (reported by pgbench, rolled back)', (o) => String(o.failed)],
    ['pgbench clients aborted (connection cut or error) / starts refused', (o) => `${o.aborted} / ${o.noConnection}`],
    ['pgbench_history rows on node 0 / node 1', (o) => o.nodes.map((n) => n.history.toLocaleString('en-US')).join(' / ')],
    ['**acknowledged commits missing on node 0 / node 1 (committed lost)**', (o) => `**${o.missing.join(' / ')}**`],
    ['commits on the nodes never acknowledged (in flight when a connection was cut)', (o) => o.unacknowledged.join(' / ')],
    ['nodes identical row by row; balances sum to the history\'s deltas', (o) => (consistent(o) ? 'yes' : 'NO')],
    ['node states at the end', (o) => o.states],
    ['CPU used by other processes during the run (upper bound)', (o) => `${(o.otherCpuShare * 100).toFixed(0)} %`],
  ];
  const lines = [`| | ${outcomes.map((o) => o.label).join(' | ')} |`, `| --- | ${outcomes.map(() => '---:').join(' | ')} |`];
  for (const [name, cell] of rows) lines.push(`| ${name} | ${outcomes.map((o) => cell(o).replace(/\|/g, '\\|')).join(' | ')} |`);
  return lines.join('\n');
}

function comparison(outcomes: Outcome[]): string {
  const p = outcomes.find((o) => o.label === 'parapool');
  const g = outcomes.find((o) => o.label === 'pgpool-II');
  const parts: string[] = [];
  for (const o of outcomes) {
    if (o.error) parts.push(`The ${o.label} run failed: ${o.error}.`);
  }
  if (p && g) {
    const faster = (a: number | null, b: number | null, what: string) => {
      if (a === null || b === null) return `${what}: not measured for both.`;
      if (Math.abs(a - b) < 0.05) return `${what}: about the same (${a.toFixed(2)} s and ${b.toFixed(2)} s).`;
      return a < b ? `${what}: parapool was faster, ${a.toFixed(2)} s against pgpool-II's ${b.toFixed(2)} s.` : `${what}: pgpool-II was faster, ${b.toFixed(2)} s against parapool's ${a.toFixed(2)} s.`;
    };
    const ratio = (a: number, b: number) => (Number.isFinite(a) && Number.isFinite(b) && b > 0 ? `${((a / b) * 100).toFixed(0)} %` : 'n/a');
    parts.push(`Throughput is pgpool-II's strength here: parapool ran at ${ratio(p.tpsBefore, g.tpsBefore)} of pgpool-II's TPS before the kill and ${ratio(p.tpsAfter, g.tpsAfter)} after the recovery, so it committed ${p.committed.toLocaleString('en-US')} transactions in the ${p.perSecond.length} s against pgpool-II's ${g.committed.toLocaleString('en-US')} (on two shared cores, the proxy's CPU per statement decides it; see the relay section).`);
    parts.push(faster(p.detachedAfter, g.detachedAfter, 'Detaching the killed node'));
    parts.push(faster(p.restoredAfter, g.restoredAfter, 'Service restored after the kill'));
    parts.push(faster(p.recoverySeconds, g.recoverySeconds, 'Online recovery to attached'));
    parts.push(`During the recovery the longest time without a commit was ${seconds(p.gapDuringRecovery)} through parapool, which holds new statements while its second stage runs, and ${seconds(g.gapDuringRecovery)} through pgpool-II, which disconnects every client for its second stage.`);
    parts.push(`pgbench clients were cut off ${p.aborted} time(s) through parapool and ${g.aborted} time(s) through pgpool-II.`);
    for (const o of [p, g]) {
      const l = lost(o);
      parts.push(l === 0 ? `No acknowledged commit was lost through ${o.label}${consistent(o) ? ', and its two nodes ended identical' : ', but its two nodes ended different'}.` : `${l} acknowledged commit(s) were missing through ${o.label}.`);
    }
  }
  return parts.join(' ');
}

function section(outcomes: Outcome[], options: Options, facts: ReturnType<typeof machineFacts>, pgpoolVersion: string, minutes: string): string {
  const per = outcomes.map((o) => `- ${o.label}: ${o.perSecond.join(' ')}`);
  const steps = outcomes.map((o) => `- ${o.label}: ${o.steps.map((s) => s.replace(/\s+/g, ' ')).join('; ') || 'none'}`);
  const errors = outcomes.map((o) => `- ${o.label}: ${o.errors.length > 0 ? o.errors.slice(0, 4).map((e) => `\`${e.replace(/`/g, "'")}\``).join('; ') : 'none'}`);
  const logged = outcomes.filter((o) => o.label === 'parapool' && o.proxyLogLines.length > 0)
    .map((o) => `parapool logged ${o.proxyLogLines.length} line(s) at warning or above during the run${o.proxyLogLines.length > 5 ? '; the first 5' : ''}: ` +
      o.proxyLogLines.slice(0, 5).map((l) => `\`${l.slice(0, 240).replace(/`/g, "'")}\``).join('; ') + '.');
  const other = Math.max(...outcomes.map((o) => o.otherCpuShare));
  return [
    sectionHeading,
    '',
    `Run ${facts.date} with \`bash bench/run.sh --only fault\` (${minutes} this time), parapool${sourceRevision()}; measured on a shared 2-core machine.`,
    `For each proxy, in turn and each with two fresh PostgreSQL nodes replicated by the proxy (parapool in replicated mode, no partition rules;`,
    `pgpool-II with \`backend_clustering_mode = 'native_replication'\`): \`pgbench -i -s ${options.scale}\` through the proxy, then ${options.clients} pgbench clients`,
    `running pgbench's TPC-B-like read/write transaction through it for ${options.duration} s. At ${options.killAt} s node 1 is killed with SIGKILL`,
    `(its postmaster stopped, then it and every process of it killed); at ${options.recoverAt} s its online recovery starts: \`SELECT parapool.recover_node(1)\``,
    'through parapool, with the default scripts (scripts/recovery), and `pcp_recovery_node -n 1` for pgpool-II, with first and second stage scripts',
    'the benchmark writes into the main node\'s data directory doing the same (pg_basebackup, a streaming standby, then, with clients stopped,',
    'replay to the main node\'s last write and promotion) and a `pgpool_remote_start` that finds the node already started.',
    '',
    table(outcomes, options),
    '',
    `Commits per second (0 to ${options.duration - 1} s):`,
    '',
    ...per,
    '',
    'Recovery steps, from the start of the command:',
    '',
    ...steps,
    '',
    'What pgbench printed when a client ended early (numbers replaced by N):',
    '',
    ...errors,
    '',
    comparison(outcomes),
    '',
    'How it is counted. Each client is a pgbench process of its own (`pgbench -n -c 1 -j 1 -T <seconds left>`), started again 0.1 s after it',
    'ends early, because a pgbench client whose connection is cut aborts for good; restarted clients stop up to a second before the end, so',
    'the "after" window ends a second early. The script is pgbench\'s built-in tpcb-like one, except that the pgbench_history row carries',
    'the client, its run and the transaction\'s number in its filler column; pgbench\'s per-transaction log (`-l`) names every transaction',
    'it saw commit the same way, so each acknowledged commit is looked up by name on each node, directly, once the proxy is stopped. A',
    'transaction whose connection was cut while it committed may be on the nodes without having been acknowledged: those are counted',
    'apart, and can be at most one per aborted client. TPS are commits per second of the window, from the log\'s completion times.',
    '"Service restored" is the first commit of a transaction that began after the kill (the moment the last SIGKILL was sent). Detach',
    'times come from polling node 1\'s state every 50 ms (`SHOW pool_nodes` through parapool, `pcp_node_info -n 1` for pgpool-II): the time the',
    'first answer showing it down came back, which is later than the proxy\'s own decision when the answer itself was delayed.',
    '',
    `Settings. Both: health checks every ${healthCheck.period} s, \`health_check_timeout = ${healthCheck.timeout}\`, \`health_check_max_retries = ${healthCheck.maxRetries}\`,`,
    `\`health_check_retry_delay = ${healthCheck.retryDelay}\`, as user postgres; \`recovery_timeout = 90\`; load balancing on. parapool: its default`,
    'configuration otherwise (`client_idle_limit_in_recovery = 0`: the second stage waits for open transactions to end, which pgbench\'s',
    'do within milliseconds). pgpool-II: `failover_on_backend_error = on` (its default: a session that loses a node triggers the failover),',
    '`client_idle_limit_in_recovery = -1` (its second stage waits until every client has disconnected, which pgbench clients never do by',
    'themselves; with the default 0 the recovery would time out), `num_init_children = 32`, `connection_cache = on`, `insert_lock = on`,',
    '`replicate_select = off`, no watchdog. Nodes: PostgreSQL on 127.0.0.1 with fsync and full_page_writes off (no OS crash is simulated)',
    'but `synchronous_commit = on`, so a node keeps what it acknowledged when its processes are killed.',
    '',
    machineLine(facts),
    `Software: ${facts.postgres}; parapool ${facts.parapool} on Node.js ${facts.node}; ${pgpoolVersion} (Debian's pgpool2 and postgresql-15-pgpool2).`,
    `Processes outside the benchmark used at most ${(other * 100).toFixed(1)} % of the machine's CPU during a target's run (an upper bound: processes`,
    'of pgpool-II\'s recovery scripts whose parent ended before them count as outside). Another engineer\'s tests may share the machine.',
    ...(logged.length > 0 ? ['', ...logged] : []),
    '',
  ].join('\n');
}

async function main(): Promise<number> {
  const options = parseOptions(process.argv.slice(2));
  const started = Date.now();
  const binDir = findPostgresBinDir();
  const pgbench = findClientProgram('pgbench');
  const pgpool = options.targets.includes('pgpool') ? findProgram('pgpool') : null;
  if (options.targets.includes('pgpool') && !pgpool) throw new StepError('pgpool is not installed: run the benchmark with `bash bench/run.sh --only fault` (it installs pgpool2)');
  if (options.targets.includes('pgpool') && !existsSync(join(binDir, '..', 'lib', 'pgpool-recovery.so'))) {
    throw new StepError(`pgpool-recovery.so is not in ${join(binDir, '..', 'lib')}: install postgresql-15-pgpool2 (bash bench/run.sh --only fault does)`);
  }
  const facts = machineFacts(binDir);
  const pgpoolVersion = pgpool ? firstLine(pgpool, ['--version']) : 'pgpool-II not run';
  const dir = makeWorkDir('parapool-fault-', options.keep);
  const outcomes: Outcome[] = [];
  for (const target of options.targets) outcomes.push(await runScenario(target, dir, options, binDir, pgbench, pgpool));
  const elapsed = Math.round((Date.now() - started) / 1000);
  publish(options.docs, sectionHeading, section(outcomes, options, facts, pgpoolVersion, `${Math.floor(elapsed / 60)} min ${elapsed % 60} s`));
  const bad = outcomes.filter((o) => o.error || lost(o) !== 0 || !consistent(o));
  if (bad.length > 0) {
    say(`failed or inconsistent: ${bad.map((o) => o.label).join(', ')}`);
    return 1;
  }
  return 0;
}

runBenchmark(main);
