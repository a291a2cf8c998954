// The relay benchmark behind `npm run bench`: pgbench -S against one PostgreSQL node directly, through parapool,
// through PgBouncer and through pgpool-II, all in one run on one machine, so that the ratios to direct compare
// like with like. It prints the table and writes it into docs/benchmarks.md (bench/run.sh installs the peers).

import { execFileSync, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { chmodSync, closeSync, existsSync, mkdirSync, mkdtempSync, openSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { cpus, loadavg, tmpdir, totalmem } from 'node:os';
import { delimiter, join, resolve } from 'node:path';
import { Client } from 'pg';
import { parapoolVersion } from '../src/admin/show-commands';
import { freePort, LocalPostgres } from '../src/cluster/local-postgres';
import { findPostgresBinDir, postgresOsUser } from '../src/cluster/postgres-install';
import { configToText, defaultConfig } from '../src/config/config';

const sectionHeading = '## Relay: pgbench -S through the proxy';
/** Above this share of the CPU taken by other processes during a run, the row is flagged as disturbed. */
const busyThreshold = 0.05;
const repoRoot = resolve(__dirname, '..', '..');

type Mode = 'simple' | 'prepared';
const modes: Mode[] = ['simple', 'prepared'];

interface Options {
  duration: number;
  warmup: number;
  clients: number;
  threads: number;
  scale: number;
  docs: string;
  keep: boolean;
}

const usage = `usage: npm run bench -- [--duration S] [--warmup S] [--clients N] [--threads N] [--scale N] [--docs FILE] [--keep]
  --duration S   seconds of each measured pgbench run (default 15)
  --warmup S     seconds of pgbench before each measurement, not counted (default 3)
  --clients N    pgbench -c (default 16); --threads N: pgbench -j (default 2); --scale N: pgbench -i -s (default 10)
  --docs FILE    where the results section goes (default docs/benchmarks.md; "-" writes nothing)
  --keep         leave the temporary directory (data, configs, logs) in place
`;

class StepError extends Error {}

function parseOptions(argv: string[]): Options {
  const options: Options = { duration: 15, warmup: 3, clients: 16, threads: 2, scale: 10, docs: join(repoRoot, 'docs', 'benchmarks.md'), keep: false };
  const integer = (name: string, text: string | undefined, min: number): number => {
    if (text === undefined || !/^\d+$/.test(text) || Number(text) < min) throw new StepError(`${name} needs an integer of at least ${min}\n${usage}`);
    return Number(text);
  };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    switch (arg) {
      case '--duration':
        options.duration = integer(arg, argv[++i], 1);
        break;
      case '--warmup':
        options.warmup = integer(arg, argv[++i], 0);
        break;
      case '--clients':
        options.clients = integer(arg, argv[++i], 1);
        break;
      case '--threads':
        options.threads = integer(arg, argv[++i], 1);
        break;
      case '--scale':
        options.scale = integer(arg, argv[++i], 1);
        break;
      case '--docs': {
        const value = argv[++i];
        if (!value) throw new StepError(`--docs needs a file name\n${usage}`);
        options.docs = value === '-' ? '' : resolve(value);
        break;
      }
      case '--keep':
        options.keep = true;
        break;
      case '-h':
      case '--help':
        process.stdout.write(usage);
        process.exit(0);
        break;
      default:
        throw new StepError(`unknown argument "${arg}"\n${usage}`);
    }
  }
  if (options.clients % options.threads !== 0) throw new StepError('pgbench needs --clients to be a multiple of --threads');
  return options;
}

function say(message: string): void {
  process.stderr.write(`bench: ${message}\n`);
}

/** Finds a program on PATH, plus the sbin directories where Debian puts daemons such as pgbouncer and pgpool. */
function findProgram(name: string): string | null {
  const dirs = [...(process.env.PATH ?? '').split(delimiter), '/usr/sbin', '/sbin', '/usr/local/sbin'];
  for (const dir of dirs) {
    if (dir && existsSync(join(dir, name))) return join(dir, name);
  }
  return null;
}

function firstLine(command: string, args: string[]): string {
  try {
    // pgpool prints its version on stderr, the others on stdout.
    const result = spawnSync(command, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    if (result.error) throw result.error;
    return `${result.stdout}${result.stderr}`.split('\n')[0].trim();
  } catch (error) {
    return `unknown (${(error as Error).message.split('\n')[0]})`;
  }
}

function tail(path: string, lines = 20): string {
  if (!existsSync(path)) return '';
  return readFileSync(path, 'utf8').split('\n').filter((l) => l !== '').slice(-lines).join('\n');
}

// ---------------------------------------------------------------------------------------------------------------
// Everything started is registered here, so that a failure or a signal at any point stops it all.

/** Set once clean-up begins, so that nothing new is started behind its back. */
let finishing = false;
const cleanups: { name: string; run: () => Promise<void> }[] = [];
const liveChildren = new Set<ChildProcess>();

async function cleanUp(): Promise<void> {
  for (const child of liveChildren) killGroup(child, 'SIGKILL');
  while (cleanups.length > 0) {
    const { name, run } = cleanups.pop()!;
    try {
      await run();
    } catch (error) {
      say(`cleaning up ${name} failed: ${(error as Error).message}`);
    }
  }
}

function killGroup(child: ChildProcess, signal: NodeJS.Signals): void {
  if (child.pid === undefined || child.exitCode !== null || child.signalCode !== null) return;
  try {
    // Children run in their own process group (detached), so the group takes pgpool's workers along too.
    process.kill(-child.pid, signal);
  } catch {
    // already gone
  }
}

/** A long-running server we started (proxy or pooler), with its output in a log file. */
class Server {
  private exit: string | null = null;
  private readonly exited: Promise<void>;

  constructor(
    readonly name: string,
    readonly child: ChildProcess,
    readonly logPath: string,
    /** The signal that makes this program shut down promptly without waiting for clients. */
    private readonly stopSignal: NodeJS.Signals,
  ) {
    liveChildren.add(child);
    this.exited = new Promise((resolveExit) => {
      child.on('exit', (code, signal) => {
        this.exit = signal ? `killed by ${signal}` : `exited with code ${code}`;
        liveChildren.delete(child);
        resolveExit();
      });
    });
  }

  /** Why the server is gone, or null while it runs. */
  get exitReason(): string | null {
    return this.exit;
  }

  async stop(): Promise<void> {
    if (this.exit !== null) return;
    if (this.child.pid !== undefined) {
      try {
        process.kill(this.child.pid, this.stopSignal);
      } catch {
        // already gone
      }
    }
    const timedOut = await Promise.race([this.exited.then(() => false), sleep(10_000).then(() => true)]);
    if (timedOut) {
      say(`${this.name} did not stop within 10 s of ${this.stopSignal}; killing it`);
      killGroup(this.child, 'SIGKILL');
      await Promise.race([this.exited, sleep(5_000)]);
    }
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

function startServer(name: string, command: string, args: string[], logPath: string, stopSignal: NodeJS.Signals, options: { asPostgres?: boolean; cwd?: string } = {}): Server {
  if (finishing) throw new StepError('stopping');
  const user = options.asPostgres ? postgresOsUser() : null;
  const fd = openSync(logPath, 'a');
  const child = user
    ? spawn('runuser', ['-u', user, '--', command, ...args], { detached: true, stdio: ['ignore', fd, fd], cwd: options.cwd })
    : spawn(command, args, { detached: true, stdio: ['ignore', fd, fd], cwd: options.cwd });
  closeSync(fd);
  const server = new Server(name, child, logPath, stopSignal);
  cleanups.push({ name, run: () => server.stop() });
  return server;
}

/** Waits until a real query succeeds through the port: a listening socket alone says little about a proxy. */
async function waitReady(name: string, port: number, server: Server | null, timeoutMs = 30_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let lastError = '';
  while (Date.now() < deadline) {
    if (server?.exitReason) {
      throw new StepError(`${name} ${server.exitReason} while starting; last lines of ${server.logPath}:\n${tail(server.logPath)}`);
    }
    const client = new Client({ host: '127.0.0.1', port, user: 'postgres', database: 'postgres', connectionTimeoutMillis: 2_000 });
    try {
      await client.connect();
      await client.query('SELECT 1');
      await client.end();
      return;
    } catch (error) {
      lastError = (error as Error).message;
      await client.end().catch(() => undefined);
    }
    await sleep(200);
  }
  throw new StepError(`${name} did not answer a query on port ${port} within ${timeoutMs / 1000} s (${lastError})` + (server ? `; last lines of ${server.logPath}:\n${tail(server.logPath)}` : ''));
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
  if (finishing) return Promise.reject(new StepError('stopping'));
  return new Promise((resolveRun, reject) => {
    const child = spawn(pgbench, args, { detached: true, stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, PGPASSWORD: '', PGOPTIONS: '' } });
    liveChildren.add(child);
    let stdout = '';
    let stderr = '';
    let timedOut = false;
    child.stdout!.on('data', (d) => (stdout += d));
    child.stderr!.on('data', (d) => (stderr += d));
    const timer = setTimeout(() => {
      timedOut = true;
      killGroup(child, 'SIGKILL');
    }, timeoutMs);
    child.on('error', (error) => {
      clearTimeout(timer);
      liveChildren.delete(child);
      reject(error);
    });
    child.on('close', (code) => {
      clearTimeout(timer);
      liveChildren.delete(child);
      resolveRun({ code, stdout, stderr, timedOut });
    });
  });
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
      const port = await freePort();
      const config = defaultConfig();
      config.listenAddresses = ['127.0.0.1'];
      config.port = port;
      config.backends = [{ id: 0, host: '127.0.0.1', port: nodePort, weight: 1, dataDirectory: null }];
      // Every pgbench client's backend connection goes back to the pool on disconnect, so a measured run reuses the
      // warm-up's connections, as the poolers below do.
      config.maxPool = 32;
      config.logMinMessages = 'warning';
      const confPath = join(dir, 'parapool.conf');
      writeFileSync(confPath, configToText(config));
      const main = join(repoRoot, 'dist', 'src', 'cli', 'main.js');
      if (!existsSync(main)) throw new StepError(`${main} is missing: build first (npm run bench builds)`);
      const server = startServer('parapool', process.execPath, [main, 'start', '-f', confPath], join(dir, 'parapool.log'), 'SIGTERM');
      await waitReady('parapool', port, server);
      return { port, server, stop: () => server.stop() };
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
      const server = startServer('pgbouncer', program, [iniPath], join(dir, 'pgbouncer.log'), 'SIGTERM', { asPostgres: true, cwd: home });
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
        `socket_dir = '${home}'`,
        "pcp_listen_addresses = ''",
        `pcp_socket_dir = '${home}'`,
        `wd_ipc_socket_dir = '${home}'`,
        `pid_file_name = '${join(home, 'pgpool.pid')}'`,
        `logdir = '${home}'`,
        `memqcache_oiddir = '${join(home, 'oiddir')}'`,
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
        'use_watchdog = off',
        'memory_cache_enabled = off',
        'enable_pool_hba = off',
        "pool_passwd = ''",
        'failover_on_backend_error = off',
        "log_destination = 'stderr'",
        'log_connections = off',
        'log_statement = off',
        '',
      ].join('\n');
      const confPath = join(home, 'pgpool.conf');
      writeFileSync(confPath, conf);
      writeFileSync(join(home, 'pcp.conf'), '');
      writeFileSync(join(home, 'pool_hba.conf'), '');
      // pgpool-II 4.3 runs as root without complaint, so it runs as whoever runs the benchmark. SIGINT is its fast
      // shutdown (SIGTERM would wait for clients); -n keeps it in the foreground as our child, -D ignores any old
      // node status file.
      const server = startServer('pgpool', program, ['-n', '-D', '-f', confPath, '-F', join(home, 'pcp.conf'), '-a', join(home, 'pool_hba.conf')], join(dir, 'pgpool.log'), 'SIGINT', { cwd: home });
      await waitReady('pgpool', port, server);
      return { port, server, stop: () => server.stop() };
    },
  };
}

// ---------------------------------------------------------------------------------------------------------------
// Other work on the machine. Two cores leave no slack: a test suite running beside the benchmark takes CPU from
// every row it overlaps, so each run measures the CPU that processes outside the benchmark used meanwhile.

interface ProcStat {
  ppid: number;
  name: string;
  /** utime + stime + cutime + cstime, in clock ticks: the waited-for children count, so short-lived ones are seen. */
  ticks: number;
}

function readProcesses(): Map<number, ProcStat> {
  const processes = new Map<number, ProcStat>();
  let entries: string[] = [];
  try {
    entries = readdirSync('/proc').filter((e) => /^\d+$/.test(e));
  } catch {
    return processes;
  }
  for (const entry of entries) {
    try {
      const text = readFileSync(`/proc/${entry}/stat`, 'utf8');
      // The command name in parentheses may itself hold spaces and parentheses; the fields after the last ')' do not.
      const fields = text.slice(text.lastIndexOf(')') + 2).split(' ');
      const ticks = Number(fields[11]) + Number(fields[12]) + Number(fields[13]) + Number(fields[14]);
      processes.set(Number(entry), { ppid: Number(fields[1]), name: text.slice(text.indexOf('(') + 1, text.lastIndexOf(')')), ticks });
    } catch {
      // exited while we looked
    }
  }
  return processes;
}

/**
 * CPU ticks of every process outside the trees rooted at `roots` (this benchmark, its postmaster). Kernel threads
 * (children of kthreadd, pid 2) are left out: under a loopback benchmark they mostly carry our own network traffic.
 */
function foreignTicks(roots: number[]): Map<number, { name: string; ticks: number }> {
  const processes = readProcesses();
  const ours = (pid: number): boolean => {
    for (let p = pid, hops = 0; p > 1 && hops < 64; hops++) {
      if (roots.includes(p)) return true;
      const parent = processes.get(p)?.ppid;
      if (parent === undefined) return false;
      p = parent;
    }
    return false;
  };
  const foreign = new Map<number, { name: string; ticks: number }>();
  for (const [pid, stat] of processes) {
    if (pid === 2 || stat.ppid === 2 || ours(pid)) continue;
    foreign.set(pid, { name: stat.name, ticks: stat.ticks });
  }
  return foreign;
}

/** CPU seconds other processes used between two snapshots, and the busiest of them by name. */
function foreignCpu(before: Map<number, { ticks: number }>, after: Map<number, { name: string; ticks: number }>, ticksPerSecond: number): { seconds: number; top: string } {
  let ticks = 0;
  const byPid: { pid: number; name: string; ticks: number }[] = [];
  for (const [pid, now] of after) {
    const delta = Math.max(0, now.ticks - (before.get(pid)?.ticks ?? 0));
    ticks += delta;
    if (delta > 0) byPid.push({ pid, name: now.name, ticks: delta });
  }
  byPid.sort((a, b) => b.ticks - a.ticks);
  const top = byPid.slice(0, 3).map((p) => `${p.name} (pid ${p.pid}, ${(p.ticks / ticksPerSecond).toFixed(1)} s)`).join(', ');
  return { seconds: ticks / ticksPerSecond, top };
}

function clockTicksPerSecond(): number {
  const text = firstLine('getconf', ['CLK_TCK']);
  return /^\d+$/.test(text) ? Number(text) : 100;
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

interface Facts {
  date: string;
  nproc: string;
  cpuModel: string;
  memory: string;
  /** One-minute load average before the run: other work on the machine skews every row. */
  loadBefore: string;
  postgres: string;
  pgbouncer: string;
  pgpool: string;
  node: string;
  parapool: string;
}

function machineFacts(binDir: string, pgbouncer: string, pgpool: string): Facts {
  const cpuinfo = existsSync('/proc/cpuinfo') ? readFileSync('/proc/cpuinfo', 'utf8') : '';
  const model = /^model name\s*:\s*(.+)$/m.exec(cpuinfo)?.[1]?.trim() ?? cpus()[0]?.model ?? 'unknown';
  return {
    date: new Date().toISOString().replace('T', ' ').replace(/\.\d+Z$/, ' UTC'),
    nproc: firstLine('nproc', []),
    cpuModel: model,
    memory: `${Math.round(totalmem() / 2 ** 30)} GiB`,
    loadBefore: loadavg()[0].toFixed(2),
    postgres: firstLine(join(binDir, 'postgres'), ['--version']),
    pgbouncer: firstLine(pgbouncer, ['--version']),
    pgpool: firstLine(pgpool, ['--version']),
    node: process.version,
    parapool: parapoolVersion,
  };
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
    'Node.js process and parses each statement to route it, PgBouncer is one single-threaded C process that only forwards messages, and',
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
    `Machine: ${facts.nproc} CPUs (\`nproc\`), ${facts.cpuModel}, ${facts.memory} of memory; one-minute load average ${facts.loadBefore} before the run.`,
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

const docsIntro = [
  '# Benchmarks',
  '',
  'Measurements of parapool against PostgreSQL directly and against other PostgreSQL middleware, on the machine named in each',
  'section. Each section is rewritten by the command it names; the numbers are from that command\'s last run.',
  '',
].join('\n');

/** Writes the section into the docs file, replacing only that section when it is already there. */
function writeDocs(path: string, text: string): void {
  mkdirSync(resolve(path, '..'), { recursive: true });
  const current = existsSync(path) ? readFileSync(path, 'utf8') : docsIntro;
  const lines = current.split('\n');
  const start = lines.findIndex((l) => l.trim() === sectionHeading);
  let next: string;
  if (start === -1) {
    next = current.replace(/\n*$/, '\n\n') + text;
  } else {
    let end = lines.findIndex((l, i) => i > start && /^##?\s/.test(l));
    if (end === -1) end = lines.length;
    const before = lines.slice(0, start).join('\n');
    const after = lines.slice(end).join('\n');
    next = (before === '' ? '' : before.replace(/\n*$/, '\n\n')) + text + (after === '' ? '' : '\n' + after);
  }
  writeFileSync(path, next.replace(/\n*$/, '\n'));
}

// ---------------------------------------------------------------------------------------------------------------

async function main(): Promise<number> {
  const options = parseOptions(process.argv.slice(2));
  const binDir = findPostgresBinDir();
  const pgbench = join(binDir, 'pgbench');
  if (!existsSync(pgbench)) throw new StepError(`pgbench not found in ${binDir}`);
  const pgbouncer = findProgram('pgbouncer');
  const pgpool = findProgram('pgpool');
  if (!pgbouncer || !pgpool) {
    throw new StepError(`${!pgbouncer ? 'pgbouncer' : 'pgpool'} is not installed: run the benchmark with \`npm run bench\` (bench/run.sh installs pgbouncer and pgpool2)`);
  }
  const facts = machineFacts(binDir, pgbouncer, pgpool);

  const dir = mkdtempSync(join(tmpdir(), 'parapool-bench-'));
  chmodSync(dir, 0o755); // the postgres OS user must reach the node's data directory and PgBouncer's files inside
  cleanups.push({
    name: 'temporary directory',
    run: async () => {
      if (options.keep) say(`kept ${dir}`);
      else if (existsSync(dir)) rmSync(dir, { recursive: true, force: true });
    },
  });
  say(`working in ${dir}`);

  const node = new LocalPostgres({
    binDir,
    dataDir: join(dir, 'node0'),
    port: await freePort(),
    fast: true,
    // The whole scale-10 data set stays in shared buffers, so every target reads the same warm pages.
    settings: { max_connections: '200', shared_buffers: "'512MB'" },
  });
  say(`starting PostgreSQL on port ${node.port}`);
  await node.init();
  cleanups.push({ name: 'PostgreSQL node', run: () => node.stop() });
  await node.start();
  await waitReady('PostgreSQL', node.port, null);
  // pg_ctl detaches the postmaster from us, so its process tree is told apart from other work by its own pid.
  const postmasterPid = (): number => {
    try {
      return Number(readFileSync(join(node.dataDir, 'postmaster.pid'), 'utf8').split('\n')[0]);
    } catch {
      return -1;
    }
  };
  const ticksPerSecond = clockTicksPerSecond();
  const cpuCount = Number(facts.nproc) > 0 ? Number(facts.nproc) : cpus().length;

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
    // Lines the relay logs during its runs (warnings and errors only) are reported with the row.
    const logOffset = () => (running.server && existsSync(running.server.logPath) ? statSync(running.server.logPath).size : 0);
    const newLogLines = (from: number): string[] => {
      if (!running.server || !existsSync(running.server.logPath)) return [];
      return readFileSync(running.server.logPath).subarray(from).toString('utf8').split('\n').filter((l) => l.trim() !== '');
    };
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
      const from = logOffset();
      say(`${target.label} -M ${mode}: ${options.duration} s`);
      const roots = [process.pid, postmasterPid()];
      const cpuBefore = foreignTicks(roots);
      const startedAt = Date.now();
      const result = parsePgbench(await runPgbench(pgbench, benchArgs(mode, options.duration), runTimeout(options.duration)), runTimeout(options.duration));
      if (finishing) throw new StepError('stopping');
      const elapsed = (Date.now() - startedAt) / 1000;
      const foreign = foreignCpu(cpuBefore, foreignTicks(roots), ticksPerSecond);
      // A child reaped during the run brings all its CPU time into its parent's count, even time spent before the
      // run; the share is therefore an upper estimate, and capped at the whole machine.
      const foreignShare = Math.min(1, foreign.seconds / (elapsed * cpuCount));
      const logged = newLogLines(from);
      let note = result.error ?? '';
      if (running.server?.exitReason) note = `${note ? note + '; ' : ''}${target.label} ${running.server.exitReason}`;
      // parapool logs at warning and above only, so anything it printed during a run is worth a look; the peers'
      // routine log lines are not.
      if (logged.length > 0 && target.label === 'parapool') {
        say(`${target.label} printed ${logged.length} lines during the run; first ones:\n${logged.slice(0, 10).join('\n')}`);
        const first = logged[0].length > 140 ? `${logged[0].slice(0, 140)}...` : logged[0];
        note = `${note ? note + '; ' : ''}proxy printed ${logged.length} line(s), first: \`${first.replace(/`/g, "'")}\``;
      }
      if (foreignShare >= busyThreshold) {
        note = `${note ? note + '; ' : ''}other processes used ${(foreignShare * 100).toFixed(0)} % of the CPU meanwhile`;
        say(`${target.label} -M ${mode}: other processes on this machine used ${(foreignShare * 100).toFixed(0)} % of its CPU during the run, most of all ${foreign.top}`);
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
  process.stdout.write('\n' + text + '\n');
  if (options.docs) {
    writeDocs(options.docs, text);
    say(`wrote the results to ${options.docs}`);
  }
  const bad = rows.filter((r) => r.tps === null && !r.note.startsWith('n/a'));
  if (bad.length > 0) {
    say(`${bad.length} measurement(s) failed: ${bad.map((r) => `${r.target} -M ${r.mode}`).join(', ')}`);
    return 1;
  }
  return 0;
}

async function finish(code: number): Promise<void> {
  if (finishing) return;
  finishing = true;
  await cleanUp();
  process.exit(code);
}

for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
  process.on(signal, () => {
    if (finishing) {
      say(`${signal} again: exiting without waiting for the clean-up`);
      process.exit(1);
    }
    say(`${signal}: stopping everything that was started`);
    void finish(130);
  });
}

main()
  .then((code) => finish(code))
  .catch((error) => {
    // After a signal, whatever was under way fails as a matter of course; the signal was already reported.
    if (finishing) return;
    const message = error instanceof StepError ? error.message : (error as Error).stack ?? String(error);
    say(`failed: ${message}`);
    return finish(1);
  });
