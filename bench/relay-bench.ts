// The relay benchmark behind `npm run bench`: pgbench -S against one PostgreSQL node directly, through parapool,
// through PgBouncer and through pgpool-II, all in one run on one machine, so that the ratios to direct compare
// like with like. It prints the table and writes it into docs/benchmarks.md (bench/run.sh installs the peers).

import { execFileSync } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { freePort } from '../src/cluster/local-postgres';
import { findPostgresBinDir, postgresOsUser } from '../src/cluster/postgres-install';
import {
  busiestOthers, busyThreshold, cpuCount, cpuSnapshot, cpuUse, findClientProgram, findProgram, firstLine, integerOption,
  logNote, machineFacts, machineLine, makeWorkDir, parseCommonOptions, postmasterPid, publish, runBenchmark, startNodes, startParapool,
  pgpoolBaseSettings, runProgram, startServer, StepError, say, throwIfFinishing, waitReady, type CommonOptions, type MachineFacts, type Server,
} from './bench-support';

const sectionHeading = '## Relay: pgbench -S through the proxy';

type Mode = 'simple' | 'prepared';
const modes: Mode[] = ['simple', 'prepared'];

interface Options extends CommonOptions {
  duration: number;
  warmup: number;
  clients: number;
  threads: number;
  scale: number;
}

const usage = `usage: npm run bench -- [--duration S] [--warmup S] [--clients N] [--threads N] [--scale N] [--docs FILE] [--keep]
  --duration S   seconds of each measured pgbench run (default 15)
  --warmup S     seconds of pgbench before each measurement, not counted (default 3)
  --clients N    pgbench -c (default 16); --threads N: pgbench -j (default 2); --scale N: pgbench -i -s (default 10)
  --docs FILE    where the results section goes (default docs/benchmarks.md; "-" writes nothing)
  --keep         leave the temporary directory (data, configs, logs) in place
`;

function parseOptions(argv: string[]): Options {
  const own = { duration: 15, warmup: 3, clients: 16, threads: 2, scale: 10 };
  const common = parseCommonOptions(argv, usage, (arg, value) => {
    switch (arg) {
      case '--duration':
        own.duration = integerOption(arg, value(), 1, usage);
        return true;
      case '--warmup':
        own.warmup = integerOption(arg, value(), 0, usage);
        return true;
      case '--clients':
        own.clients = integerOption(arg, value(), 1, usage);
        return true;
      case '--threads':
        own.threads = integerOption(arg, value(), 1, usage);
        return true;
      case '--scale':
        own.scale = integerOption(arg, value(), 1, usage);
        return true;
      default:
        return false;
    }
  });
  const options = { ...own, ...common };
  if (options.clients % options.threads !== 0) throw new StepError('pgbench needs --clients to be a multiple of --threads');
  return options;
}

// ---------------------------------------------------------------------------------------------------------------
// pgbench

interface PgbenchResult {
  code: number | null;
  stdout: string;
  stderr: string;
  timedOut: boolean;
}

function runPgbench(pgbench: string, args: string[], timeoutMs: number): Promise<PgbenchResult> {
  return runProgram(pgbench, args, timeoutMs);
}

interface Measurement {
  tps: number | null;
  latencyMs: number | null;
  transactions: number | null;
  /** Why the run does not count, or null. */
  error: string | null;
}

function parsePgbench(result: PgbenchResult, timeoutMs: number): Measurement {
  const tps = /tps = ([0-9.]+) \(without initial connection time\)/.exec(result.stdout);
  const latency = /latency average = ([0-9.]+) ms/.exec(result.stdout);
  const processed = /number of transactions actually processed: (\d+)/.exec(result.stdout);
  const failed = /number of failed transactions: (\d+)/.exec(result.stdout);
  const errorLines = result.stderr.split('\n').filter((l) => /error|abort|fatal|could not|server closed/i.test(l));
  let error: string | null = null;
  if (result.timedOut) error = `pgbench hung: killed after ${timeoutMs / 1000} s`;
  else if (result.code !== 0) error = `pgbench exited with code ${result.code}`;
  else if (!tps) error = 'pgbench printed no tps line';
  else if (failed && Number(failed[1]) > 0) error = `${failed[1]} failed transactions`;
  if (error && errorLines.length > 0) error += `: ${errorLines.slice(0, 3).join(' | ')}`;
  return {
    tps: tps ? Number(tps[1]) : null,
    latencyMs: latency ? Number(latency[1]) : null,
    transactions: processed ? Number(processed[1]) : null,
    error,
  };
}

// ---------------------------------------------------------------------------------------------------------------
// The targets

interface Running {
  port: number;
  server: Server | null;
  stop(): Promise<void>;
}

interface Target {
  label: string;
  /** Modes this target cannot run, with the reason shown in the table. */
  notApplicable: Partial<Record<Mode, string>>;
  start(): Promise<Running>;
}

function parseVersion(text: string): number[] {
  const match = /(\d+)\.(\d+)(?:\.(\d+))?/.exec(text);
  return match ? [Number(match[1]), Number(match[2]), Number(match[3] ?? 0)] : [0, 0, 0];
}

function versionAtLeast(version: number[], wanted: number[]): boolean {
  for (let i = 0; i < wanted.length; i++) {
    if ((version[i] ?? 0) !== wanted[i]) return (version[i] ?? 0) > wanted[i];
  }
  return true;
}

/** A directory the postgres OS user owns, for daemons that refuse to run as root. */
function postgresOwnedDir(path: string): string {
  mkdirSync(path, { recursive: true });
  const user = postgresOsUser();
  if (user) execFileSync('chown', ['-R', `${user}:`, path]);
  return path;
}

function parapoolTarget(dir: string, nodePort: number): Target {
  return {
    label: 'parapool',
    notApplicable: {},
    async start() {
      const server = await startParapool(dir, 'parapool', [nodePort], (config) => {
        // Every pgbench client's backend connection goes back to the pool on disconnect, so a measured run reuses
        // the warm-up's connections, as the poolers below do.
        config.maxPool = 32;
      });
      return { port: server.port, server, stop: () => server.stop() };
    },
  };
}

function pgbouncerTarget(dir: string, nodePort: number, program: string, version: string): Target {
  // Named prepared statements survive transaction pooling only where PgBouncer tracks them itself, which
  // max_prepared_statements turned on in 1.21; older versions would hand a Bind to a server connection that
  // never saw the Parse.
  const tracksPrepared = versionAtLeast(parseVersion(version), [1, 21]);
  return {
    label: 'PgBouncer (transaction pooling)',
    notApplicable: tracksPrepared
      ? {}
      : { prepared: `n/a: ${version} has no max_prepared_statements (added in 1.21), so named prepared statements break under transaction pooling` },
    async start() {
      const home = postgresOwnedDir(join(dir, 'pgbouncer'));
      const port = await freePort();
      // With auth_type = trust PgBouncer still wants the user listed in auth_file.
      writeFileSync(join(home, 'userlist.txt'), '"postgres" ""\n');
      const ini = [
        '[databases]',
        `postgres = host=127.0.0.1 port=${nodePort} dbname=postgres`,
        '',
        '[pgbouncer]',
        'listen_addr = 127.0.0.1',
        `listen_port = ${port}`,
        'unix_socket_dir =',
        'auth_type = trust',
        `auth_file = ${join(home, 'userlist.txt')}`,
        'pool_mode = transaction',
        'default_pool_size = 20',
        'max_client_conn = 200',
        'ignore_startup_parameters = extra_float_digits',
        ...(tracksPrepared ? ['max_prepared_statements = 200'] : []),
        `pidfile = ${join(home, 'pgbouncer.pid')}`,
        'logfile =',
        'log_connections = 0',
        'log_disconnections = 0',
        '',
      ].join('\n');
      const iniPath = join(home, 'pgbouncer.ini');
      writeFileSync(iniPath, ini);
      postgresOwnedDir(home);
      // PgBouncer refuses to run as root ("PgBouncer should not run as root"), hence the postgres OS user. Through
      // runuser, SIGTERM reaches pgbouncer as its immediate shutdown.
      const server = startServer('pgbouncer', program, [iniPath], port, join(dir, 'pgbouncer.log'), 'SIGTERM', { asPostgres: true, cwd: home });
      await waitReady('pgbouncer', port, server);
      return { port, server, stop: () => server.stop() };
    },
  };
}

function pgpoolTarget(dir: string, nodePort: number, program: string): Target {
  return {
    label: 'pgpool-II (raw mode)',
    notApplicable: {},
    async start() {
      const home = join(dir, 'pgpool');
      mkdirSync(home, { recursive: true });
      const port = await freePort();
      const conf = [
        // One node and no replication to watch: raw mode relays to it as a plain pooler.
        "backend_clustering_mode = 'raw'",
        "listen_addresses = '127.0.0.1'",
        `port = ${port}`,
        "pcp_listen_addresses = ''",
        ...pgpoolBaseSettings(home),
        "backend_hostname0 = '127.0.0.1'",
        `backend_port0 = ${nodePort}`,
        'backend_weight0 = 1',
        "backend_flag0 = 'DISALLOW_TO_FAILOVER'",
        // pgpool serves one session per child process: 32 leaves room for 16 pgbench clients plus the readiness probe.
        'num_init_children = 32',
        'max_pool = 4',
        'connection_cache = on',
        'load_balance_mode = off',
        'health_check_period = 0',
        'sr_check_period = 0',
        'failover_on_backend_error = off',
        '',
      ].join('\n');
      const confPath = join(home, 'pgpool.conf');
      writeFileSync(confPath, conf);
      writeFileSync(join(home, 'pcp.conf'), '');
      writeFileSync(join(home, 'pool_hba.conf'), '');
      // pgpool-II 4.3 runs as root without complaint, so it runs as whoever runs the benchmark. SIGINT is its fast
      // shutdown (SIGTERM would wait for clients); -n keeps it in the foreground as our child, -D ignores any old
      // node status file.
      const server = startServer('pgpool', program, ['-n', '-D', '-f', confPath, '-F', join(home, 'pcp.conf'), '-a', join(home, 'pool_hba.conf')], port, join(dir, 'pgpool.log'), 'SIGINT', { cwd: home });
      await waitReady('pgpool', port, server);
      return { port, server, stop: () => server.stop() };
    },
  };
}

// ---------------------------------------------------------------------------------------------------------------
// Report

interface Row {
  target: string;
  mode: Mode;
  tps: number | null;
  latencyMs: number | null;
  /** Share of the machine's CPU that processes outside the benchmark used during the run, or null if not measured. */
  foreignShare: number | null;
  note: string;
}

interface Facts extends MachineFacts {
  pgbouncer: string;
  pgpool: string;
}

function ratio(row: Row, rows: Row[]): string {
  const direct = rows.find((r) => r.target === 'direct' && r.mode === row.mode);
  if (row.tps === null || !direct || direct.tps === null) return '';
  return `${((row.tps / direct.tps) * 100).toFixed(0)} %`;
}

function markdownTable(rows: Row[]): string {
  const lines = ['| target | -M | TPS | vs direct | latency avg | note |', '| --- | --- | ---: | ---: | ---: | --- |'];
  for (const row of rows) {
    const tps = row.tps === null ? '' : row.tps.toFixed(0);
    const latency = row.latencyMs === null ? '' : `${row.latencyMs.toFixed(3)} ms`;
    lines.push(`| ${row.target} | ${row.mode} | ${tps} | ${ratio(row, rows)} | ${latency} | ${row.note.replace(/\|/g, '\\|')} |`);
  }
  return lines.join('\n');
}

function percentOf(rows: Row[], target: string, mode: Mode): string {
  const row = rows.find((r) => r.target === target && r.mode === mode);
  if (!row) return 'not run';
  if (row.tps === null) return row.note.startsWith('n/a') ? 'n/a' : 'failed';
  return ratio(row, rows);
}

/** The reading paragraph, built from the numbers so that it cannot drift from the table. */
function reading(rows: Row[], targets: string[], options: Options, facts: Facts): string {
  const relays = targets.filter((t) => t !== 'direct');
  const parts = relays.map((t) => `${t} ${percentOf(rows, t, 'simple')} (simple) and ${percentOf(rows, t, 'prepared')} (prepared)`);
  const failures = rows.filter((r) => r.tps === null && !r.note.startsWith('n/a'));
  const fastest = modes.map((mode) => {
    const measured = rows.filter((r) => r.mode === mode && r.target !== 'direct' && r.tps !== null).sort((a, b) => b.tps! - a.tps!);
    if (measured.length === 0) return null;
    const absent = rows.filter((r) => r.mode === mode && r.target !== 'direct' && r.tps === null).map((r) => r.target);
    return `${measured[0].target} with -M ${mode}` + (absent.length > 0 ? ` (of the relays that ran it: not ${absent.join(', ')})` : '');
  }).filter((f) => f !== null);
  return [
    `Relative to direct connections, throughput was: ${parts.join('; ')}.`,
    ...(fastest.length > 0 ? [`The fastest relay was ${fastest.join(' and ')}.`] : []),
    `This machine has ${facts.nproc} cores, shared by pgbench (${options.threads} threads), PostgreSQL's ${options.clients} backends and the relay,`,
    'so every CPU cycle a relay spends is taken from the server and the client: the ratios measure how much CPU each relay burns per',
    'query far more than network latency, which over loopback is a few microseconds. pgbench -S is a one-row primary-key SELECT, the',
    'cheapest query there is, so per-query relay cost weighs as heavily here as it ever will; on a machine where the proxy has cores of',
    'its own, or across a real network, the gap to direct would be smaller. The processes also differ in kind: parapool relays in one',
    'Node.js process and parses each new shape of statement to route it (texts that differ only in their numbers share one parse), PgBouncer is one single-threaded C process that only forwards messages, and',
    'pgpool-II runs one process per client session and also parses the SQL. Each row is one run of',
    `${options.duration} s after a ${options.warmup} s warm-up; on this 2-core machine the same row differed by up to about 15 % between`,
    'quiet runs, so only larger differences between rows mean much.',
    ...(failures.length > 0 ? [`Failed rows: ${failures.map((f) => `${f.target} ${f.mode} (${f.note})`).join('; ')}.`] : []),
  ].join(' ');
}

function disturbance(rows: Row[]): string {
  const shares = rows.map((r) => r.foreignShare).filter((v): v is number => v !== null);
  if (shares.length === 0) return 'Other work on the machine during the runs was not measured.';
  const worst = Math.max(...shares);
  const text = `Processes outside the benchmark used at most ${(worst * 100).toFixed(1)} % of the machine's CPU during any measured run`;
  return worst >= busyThreshold ? `${text}: the rows flagged in the note column were slowed by other work and understate what this machine can do.` : `${text}, so the rows were not disturbed by other work.`;
}

function section(rows: Row[], targets: string[], options: Options, facts: Facts): string {
  return [
    sectionHeading,
    '',
    `Run ${facts.date} with \`npm run bench\`: \`pgbench -S -c ${options.clients} -j ${options.threads} -T ${options.duration}\` with \`-M simple\``,
    `and \`-M prepared\` against one PostgreSQL node (\`pgbench -i -s ${options.scale}\`, fsync off, everything on 127.0.0.1),`,
    'directly and through each relay with one backend. TPS is pgbench\'s figure without initial connection time.',
    '',
    markdownTable(rows),
    '',
    machineLine(facts),
    `Software: ${facts.postgres}; parapool ${facts.parapool} on Node.js ${facts.node}; ${facts.pgbouncer}; ${facts.pgpool}.`,
    '',
    'Set-up: parapool runs as its own process (`node dist/src/cli/main.js start -f parapool.conf`, `log_min_messages = warning`);',
    'PgBouncer in transaction pooling with `default_pool_size = 20`; pgpool-II with `backend_clustering_mode = raw`,',
    '`num_init_children = 32`, `connection_cache = on`, no load balancing and no health checks.',
    '',
    disturbance(rows),
    '',
    reading(rows, targets, options, facts),
    '',
  ].join('\n');
}

// ---------------------------------------------------------------------------------------------------------------

async function main(): Promise<number> {
  const options = parseOptions(process.argv.slice(2));
  const binDir = findPostgresBinDir();
  const pgbench = findClientProgram('pgbench');
  const pgbouncer = findProgram('pgbouncer');
  const pgpool = findProgram('pgpool');
  if (!pgbouncer || !pgpool) {
    throw new StepError(`${!pgbouncer ? 'pgbouncer' : 'pgpool'} is not installed: run the benchmark with \`npm run bench\` (bench/run.sh installs pgbouncer and pgpool2)`);
  }
  const facts: Facts = { ...machineFacts(binDir), pgbouncer: firstLine(pgbouncer, ['--version']), pgpool: firstLine(pgpool, ['--version']) };

  const dir = makeWorkDir('parapool-bench-', options.keep);
  say('starting PostgreSQL');
  // The whole scale-10 data set stays in shared buffers, so every target reads the same warm pages.
  const [node] = await startNodes(binDir, dir, ['node0'], { max_connections: '200', shared_buffers: "'512MB'" });
  say(`PostgreSQL is on port ${node.port}`);
  await waitReady('PostgreSQL', node.port, null);

  say(`pgbench -i -s ${options.scale}`);
  const common = ['-h', '127.0.0.1', '-U', 'postgres'];
  const init = await runPgbench(pgbench, ['-i', '-s', String(options.scale), '-q', ...common, '-p', String(node.port), 'postgres'], 600_000);
  if (init.code !== 0) throw new StepError(`pgbench -i failed (code ${init.code}):\n${init.stderr.trim()}`);

  const targets: Target[] = [
    { label: 'direct', notApplicable: {}, start: async () => ({ port: node.port, server: null, stop: async () => undefined }) },
    parapoolTarget(dir, node.port),
    pgbouncerTarget(dir, node.port, pgbouncer, facts.pgbouncer),
    pgpoolTarget(dir, node.port, pgpool),
  ];

  const rows: Row[] = [];
  const runTimeout = (seconds: number) => (seconds + 60) * 1000;
  for (const target of targets) {
    say(`${target.label}: starting`);
    const running = await target.start();
    const benchArgs = (mode: Mode, seconds: number) => ['-S', '-c', String(options.clients), '-j', String(options.threads), '-T', String(seconds), '-M', mode, '-n', ...common, '-p', String(running.port), 'postgres'];
    for (const mode of modes) {
      const na = target.notApplicable[mode];
      if (na) {
        say(`${target.label} -M ${mode}: ${na}`);
        rows.push({ target: target.label, mode, tps: null, latencyMs: null, foreignShare: null, note: na });
        continue;
      }
      if (options.warmup > 0) {
        const warm = await runPgbench(pgbench, benchArgs(mode, options.warmup), runTimeout(options.warmup));
        const warmResult = parsePgbench(warm, runTimeout(options.warmup));
        if (warmResult.error) say(`${target.label} -M ${mode}: warm-up failed: ${warmResult.error}`);
      }
      // Lines the relay logs during its runs are reported with the row.
      const from = running.server?.logSize() ?? 0;
      say(`${target.label} -M ${mode}: ${options.duration} s`);
      // The relays are children of this process, so the 'other' group is all that is not the benchmark.
      const postmasters = [postmasterPid(node)];
      const cpuBefore = cpuSnapshot(null, postmasters);
      const startedAt = Date.now();
      const result = parsePgbench(await runPgbench(pgbench, benchArgs(mode, options.duration), runTimeout(options.duration)), runTimeout(options.duration));
      throwIfFinishing();
      const elapsed = (Date.now() - startedAt) / 1000;
      const cpuAfter = cpuSnapshot(null, postmasters);
      // Capped at the whole machine: the run's wall clock and the sampled ticks are not taken at the same instant.
      const foreignShare = Math.min(1, cpuUse(cpuBefore, cpuAfter).other / (elapsed * cpuCount(facts)));
      let note = result.error ?? '';
      if (running.server?.exitReason) note = `${note ? note + '; ' : ''}${target.label} ${running.server.exitReason}`;
      // parapool logs at warning and above only, so anything it printed during a run is worth a look; the peers'
      // routine log lines are not.
      const printed = target.label === 'parapool' ? logNote(target.label, 'run', running.server?.logLinesSince(from) ?? []) : '';
      if (printed) note = `${note ? note + '; ' : ''}${printed}`;
      if (foreignShare >= busyThreshold) {
        note = `${note ? note + '; ' : ''}other processes used ${(foreignShare * 100).toFixed(0)} % of the CPU meanwhile`;
        say(`${target.label} -M ${mode}: other processes on this machine used ${(foreignShare * 100).toFixed(0)} % of its CPU during the run, most of all ${busiestOthers(cpuBefore, cpuAfter)}`);
      }
      const row: Row = { target: target.label, mode, tps: result.error ? null : result.tps, latencyMs: result.error ? null : result.latencyMs, foreignShare, note };
      if (result.error) say(`${target.label} -M ${mode}: FAILED: ${note}`);
      else say(`${target.label} -M ${mode}: ${result.tps?.toFixed(0)} tps`);
      rows.push(row);
      if (running.server?.exitReason) break;
    }
    await running.stop();
  }

  const text = section(rows, targets.map((t) => t.label), options, facts);
  publish(options.docs, sectionHeading, text);
  const bad = rows.filter((r) => r.tps === null && !r.note.startsWith('n/a'));
  if (bad.length > 0) {
    say(`${bad.length} measurement(s) failed: ${bad.map((r) => `${r.target} -M ${r.mode}`).join(', ')}`);
    return 1;
  }
  return 0;
}

runBenchmark(main);
