// What the relay and the load benchmark have in common: both start PostgreSQL nodes and parapool as a process of
// its own, must stop all of it whatever goes wrong, weigh each run against the CPU other work took meanwhile, and
// rewrite their own section of docs/benchmarks.md. Kept in one place so that the two report alike.

import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { findPostgresProgram } from '../src/cluster/postgres-install';
import { chmodSync, closeSync, existsSync, mkdirSync, mkdtempSync, openSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { cpus, loadavg, tmpdir, totalmem } from 'node:os';
import { connect } from 'node:net';
import { delimiter, join, resolve } from 'node:path';
import { Client } from 'pg';
import { parapoolVersion } from '../src/admin/show-commands';
import { freePort, LocalPostgres } from '../src/cluster/local-postgres';
import { postgresOsUser } from '../src/cluster/postgres-install';
import { configToText, defaultConfig, type ProxyConfig } from '../src/config/config';

export const repoRoot = resolve(__dirname, '..', '..');
/** Above this share of the CPU taken by other processes during a run, the row is flagged as disturbed. */
export const busyThreshold = 0.05;

/** A failure whose message says it all, reported without a stack trace. */
export class StepError extends Error {}

export function say(message: string): void {
  process.stderr.write(`bench: ${message}\n`);
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

export function tail(path: string, lines = 20): string {
  if (!existsSync(path)) return '';
  return readFileSync(path, 'utf8').split('\n').filter((l) => l !== '').slice(-lines).join('\n');
}

export function firstLine(command: string, args: string[]): string {
  try {
    // pgpool prints its version on stderr, the others on stdout.
    const result = spawnSync(command, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    if (result.error) throw result.error;
    return `${result.stdout}${result.stderr}`.split('\n')[0].trim();
  } catch (error) {
    return `unknown (${(error as Error).message.split('\n')[0]})`;
  }
}

/** Finds a program on PATH, plus the sbin directories where Debian puts daemons such as pgbouncer and pgpool. */
export function findProgram(name: string): string | null {
  const dirs = [...(process.env.PATH ?? '').split(delimiter), '/usr/sbin', '/sbin', '/usr/local/sbin'];
  for (const dir of dirs) {
    if (dir && existsSync(join(dir, name))) return join(dir, name);
  }
  return null;
}

/** A PostgreSQL client program: from the server's bin directory first, so client and server versions match. */
export function findClientProgram(name: string): string {
  try {
    return findPostgresProgram(name);
  } catch (error) {
    throw new StepError((error as Error).message);
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Options. Both benchmarks take --docs, --keep and --help alike; the rest is each one's own.

export interface CommonOptions {
  docs: string;
  keep: boolean;
}

export function integerOption(name: string, text: string | undefined, min: number, usage: string): number {
  if (text === undefined || !/^\d+$/.test(text) || Number(text) < min) throw new StepError(`${name} needs an integer of at least ${min}\n${usage}`);
  return Number(text);
}

/** A TPC-H scale factor option; pasted into the generator's SQL, so only a plain decimal gets through. */
export function scaleFactorOption(text: string | undefined, usage: string): string {
  if (text === undefined || !/^\d+(\.\d+)?$/.test(text) || Number(text) <= 0 || Number(text) > 100) {
    throw new StepError(`--sf needs a decimal number above 0 and at most 100\n${usage}`);
  }
  return text;
}

/**
 * Walks the arguments, handing each to `own` first: it returns false for an argument it does not know, and takes
 * the argument's value through `value()`.
 */
export function parseCommonOptions(argv: string[], usage: string, own: (arg: string, value: () => string | undefined) => boolean): CommonOptions {
  const options: CommonOptions = { docs: join(repoRoot, 'docs', 'benchmarks.md'), keep: false };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (own(arg, () => argv[++i])) continue;
    switch (arg) {
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
  return options;
}

// ---------------------------------------------------------------------------------------------------------------
// Everything started is registered here, so that a failure or a signal at any point stops it all.

/** Set once clean-up begins, so that nothing new is started behind its back. */
let finishing = false;
/** --keep: data directories, configs and logs stay for a look afterwards. */
let keepFiles = false;
const cleanups: { name: string; run: () => Promise<void> }[] = [];
const liveChildren = new Set<ChildProcess>();

export function isFinishing(): boolean {
  return finishing;
}

/** Called before anything new starts: once the clean-up runs, whatever was under way is to stop, not go on. */
export function throwIfFinishing(): void {
  if (finishing) throw new StepError('stopping');
}

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

export function killGroup(child: ChildProcess, signal: NodeJS.Signals): void {
  if (child.pid === undefined || child.exitCode !== null || child.signalCode !== null) return;
  try {
    // Children run in their own process group (detached), so that Ctrl-C at the terminal reaches only us and the
    // clean-up decides the order in which things stop; the group also takes pgpool's workers along.
    process.kill(-child.pid, signal);
  } catch {
    // already gone
  }
}

/** Children that the clean-up kills if they are still running; `untrack` once they are gone. */
export function track(child: ChildProcess): void {
  liveChildren.add(child);
}

export function untrack(child: ChildProcess): void {
  liveChildren.delete(child);
}

/** Registers a clean-up and returns a function that runs it early (once) when its phase is over. */
export function onCleanup(name: string, run: () => Promise<void>): () => Promise<void> {
  let done = false;
  const once = async () => {
    if (done) return;
    done = true;
    await run();
  };
  cleanups.push({ name, run: once });
  return once;
}

/** The temporary directory of the run, removed at the end unless `keep`. */
export function makeWorkDir(prefix: string, keep: boolean): string {
  keepFiles = keep;
  const dir = mkdtempSync(join(tmpdir(), prefix));
  chmodSync(dir, 0o755); // the postgres OS user must reach the data directories and the files of its daemons inside
  onCleanup('temporary directory', async () => {
    if (keep) say(`kept ${dir}`);
    else if (existsSync(dir)) rmSync(dir, { recursive: true, force: true });
  });
  say(`working in ${dir}`);
  return dir;
}

async function finish(code: number): Promise<void> {
  if (finishing) return;
  finishing = true;
  await cleanUp();
  process.exit(code);
}

/** Runs the benchmark to its exit status, stopping everything it started on the way out or on a signal. */
export function runBenchmark(main: () => Promise<number>): void {
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
}

// ---------------------------------------------------------------------------------------------------------------
// Servers: PostgreSQL nodes, and proxies or poolers run as processes of their own.

export async function startNodes(binDir: string, dir: string, names: string[], settings: Record<string, string>): Promise<LocalPostgres[]> {
  throwIfFinishing();
  const nodes: LocalPostgres[] = [];
  for (const name of names) {
    nodes.push(new LocalPostgres({ binDir, dataDir: join(dir, name), port: await freePort(), fast: true, settings }));
  }
  for (const node of nodes) {
    onCleanup(`PostgreSQL in ${node.dataDir}`, () => stopNodes([node]));
  }
  await Promise.all(nodes.map(async (node) => {
    await node.init();
    await node.start();
  }));
  return nodes;
}

export async function stopNodes(nodes: LocalPostgres[]): Promise<void> {
  // Stopped as soon as their phase ends: an idle server's checkpointer or autovacuum must not run during the next
  // measurement, and the disk space goes back.
  await Promise.all(nodes.map(async (node) => {
    await node.stop();
    if (!keepFiles) node.destroy();
  }));
}

/** pg_ctl detaches the postmaster from us, so its process tree is told apart from other work by its own pid. */
export function postmasterPid(node: LocalPostgres): number {
  try {
    return Number(readFileSync(join(node.dataDir, 'postmaster.pid'), 'utf8').split('\n')[0]);
  } catch {
    return -1;
  }
}

/** A process's resident memory and its peak (/proc/<pid>/status VmRSS and VmHWM, in KiB), or null once it is gone. */
export function processMemory(pid: number): { rssKiB: number; peakKiB: number } | null {
  try {
    const status = readFileSync(`/proc/${pid}/status`, 'utf8');
    const field = (name: string) => Number(new RegExp(`^${name}:\\s*(\\d+) kB`, 'm').exec(status)?.[1] ?? NaN);
    const rssKiB = field('VmRSS');
    const peakKiB = field('VmHWM');
    return Number.isFinite(rssKiB) && Number.isFinite(peakKiB) ? { rssKiB, peakKiB } : null;
  } catch {
    return null;
  }
}

/** A long-running server we started (proxy or pooler), with its output in a log file. */
export class Server {
  private exit: string | null = null;
  private readonly exited: Promise<void>;
  /** Stops the server now; the clean-up does it otherwise. */
  readonly stop: () => Promise<void>;

  constructor(
    readonly name: string,
    readonly child: ChildProcess,
    readonly port: number,
    readonly logPath: string,
    /** The signal that makes this program shut down promptly without waiting for clients. */
    private readonly stopSignal: NodeJS.Signals,
  ) {
    track(child);
    this.exited = new Promise((resolveExit) => {
      child.on('exit', (code, signal) => {
        this.exit = signal ? `killed by ${signal}` : `exited with code ${code}`;
        untrack(child);
        resolveExit();
      });
    });
    this.stop = onCleanup(name, () => this.shutDown());
  }

  get pid(): number {
    return this.child.pid ?? -1;
  }

  /** Why the server is gone, or null while it runs. */
  get exitReason(): string | null {
    return this.exit;
  }

  logSize(): number {
    return existsSync(this.logPath) ? statSync(this.logPath).size : 0;
  }

  logLinesSince(offset: number): string[] {
    if (!existsSync(this.logPath)) return [];
    return readFileSync(this.logPath).subarray(offset).toString('utf8').split('\n').filter((l) => l.trim() !== '');
  }

  private async shutDown(): Promise<void> {
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

export function startServer(
  name: string,
  command: string,
  args: string[],
  port: number,
  logPath: string,
  stopSignal: NodeJS.Signals,
  options: { asPostgres?: boolean; cwd?: string } = {},
): Server {
  throwIfFinishing();
  const user = options.asPostgres ? postgresOsUser() : null;
  const fd = openSync(logPath, 'a');
  const child = user
    ? spawn('runuser', ['-u', user, '--', command, ...args], { detached: true, stdio: ['ignore', fd, fd], cwd: options.cwd })
    : spawn(command, args, { detached: true, stdio: ['ignore', fd, fd], cwd: options.cwd });
  closeSync(fd);
  return new Server(name, child, port, logPath, stopSignal);
}

/**
 * Asks the server on the port to cancel the statement of the session with this process id and secret key: a
 * CancelRequest (length 16, code 80877102) on a connection of its own, as the protocol has it. Fire and forget:
 * the session's own query reports whether it stopped.
 */
export function sendCancelRequest(port: number, processId: number, secretKey: number): void {
  const packet = Buffer.alloc(16);
  packet.writeInt32BE(16, 0);
  packet.writeInt32BE(80877102, 4);
  packet.writeInt32BE(processId, 8);
  packet.writeInt32BE(secretKey, 12);
  const socket = connect({ host: '127.0.0.1', port });
  socket.on('error', () => undefined);
  socket.setTimeout(10_000, () => socket.destroy());
  socket.once('connect', () => socket.end(packet));
}

/** Waits until a real query succeeds through the port: a listening socket alone says little about a proxy. */
export async function waitReady(name: string, port: number, server: Server | null, timeoutMs = 30_000): Promise<void> {
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

/**
 * parapool as its own process, as it runs in production (`log_min_messages = warning`, so that anything in its
 * log is worth a look), in front of the given nodes; `configure` adjusts the rest of the default configuration.
 */
export async function startParapool(dir: string, fileName: string, nodePorts: number[], configure: (config: ProxyConfig) => void = () => undefined): Promise<Server> {
  throwIfFinishing();
  const main = join(repoRoot, 'dist', 'src', 'cli', 'main.js');
  if (!existsSync(main)) throw new StepError(`${main} is missing: build first (npm run bench builds)`);
  const port = await freePort();
  const config = defaultConfig();
  config.listenAddresses = ['127.0.0.1'];
  config.port = port;
  config.backends = nodePorts.map((nodePort, id) => ({ id, host: '127.0.0.1', port: nodePort, weight: 1, dataDirectory: null }));
  config.logMinMessages = 'warning';
  configure(config);
  const confPath = join(dir, `${fileName}.conf`);
  writeFileSync(confPath, configToText(config));
  const server = startServer('parapool', process.execPath, [main, 'start', '-f', confPath], port, join(dir, `${fileName}.log`), 'SIGTERM');
  await waitReady('parapool', port, server);
  return server;
}

/**
 * pgpool.conf lines every benchmarked pgpool-II shares: its sockets, pid file, logs and cache files in its own
 * directory; no watchdog, query cache, pool_hba or pool_passwd; logs on stderr without per-connection lines.
 */
export function pgpoolBaseSettings(home: string): string[] {
  return [
    `socket_dir = '${home}'`,
    `pcp_socket_dir = '${home}'`,
    `wd_ipc_socket_dir = '${home}'`,
    `pid_file_name = '${join(home, 'pgpool.pid')}'`,
    `logdir = '${home}'`,
    `memqcache_oiddir = '${join(home, 'oiddir')}'`,
    'use_watchdog = off',
    'memory_cache_enabled = off',
    'enable_pool_hba = off',
    "pool_passwd = ''",
    "log_destination = 'stderr'",
    'log_connections = off',
    'log_statement = off',
  ];
}

/** A note for the row when the proxy logged anything during a run; '' when it did not. */
export function logNote(who: string, during: string, logged: string[]): string {
  if (logged.length === 0) return '';
  say(`${who} printed ${logged.length} lines during the ${during}; first ones:\n${logged.slice(0, 10).join('\n')}`);
  const first = logged[0].length > 140 ? `${logged[0].slice(0, 140)}...` : logged[0];
  return `proxy printed ${logged.length} line(s), first: \`${first.replace(/`/g, "'")}\``;
}

// ---------------------------------------------------------------------------------------------------------------
// CPU accounting. Two cores leave no slack: the CPU each party used during a run, and that of other work on the
// machine, show what limited the run and whether something else disturbed it.

interface ProcStat {
  ppid: number;
  name: string;
  /** utime + stime + cutime + cstime, in clock ticks: reaped children count, so short-lived ones are seen. */
  ticks: number;
}

export function readProcesses(): Map<number, ProcStat> {
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

export type Group = 'client' | 'proxy' | 'postgres' | 'other';

export interface CpuSnapshot {
  /**
   * Ticks per group, summed over live processes. A process that exits moves its ticks into its parent's cutime,
   * so a group's sum only grows by the CPU used meanwhile, even across processes that come and go; counting
   * process by process instead would count a child that ran before the run and exits during it in full.
   */
  groups: Record<Group, number>;
  /** The ticks of each process in 'other', to name the busiest when a run was disturbed. */
  others: Map<number, { name: string; ticks: number }>;
}

/**
 * Classifies every process: this benchmark's own tree is the client programs, which it reaps (and in the relay
 * benchmark the poolers too), `proxyPid`'s tree the proxy, the postmasters' trees PostgreSQL.
 */
export function cpuSnapshot(proxyPid: number | null, postmasterPids: number[]): CpuSnapshot {
  const processes = readProcesses();
  const groupOf = (pid: number): Group => {
    for (let p = pid, hops = 0; p > 1 && hops < 64; hops++) {
      if (p === proxyPid) return 'proxy';
      if (postmasterPids.includes(p)) return 'postgres';
      if (p === process.pid) return 'client';
      const parent = processes.get(p)?.ppid;
      if (parent === undefined) return 'other';
      p = parent;
    }
    return 'other';
  };
  const groups: Record<Group, number> = { client: 0, proxy: 0, postgres: 0, other: 0 };
  const others = new Map<number, { name: string; ticks: number }>();
  for (const [pid, stat] of processes) {
    // Kernel threads (kthreadd, pid 2, and its children) are left out: over loopback they mostly carry the
    // benchmark's own traffic, not other work.
    if (pid === 2 || stat.ppid === 2) continue;
    const group = groupOf(pid);
    groups[group] += stat.ticks;
    if (group === 'other') others.set(pid, { name: stat.name, ticks: stat.ticks });
  }
  return { groups, others };
}

export interface CpuUse {
  /** CPU seconds per group during the run. */
  client: number;
  proxy: number;
  postgres: number;
  other: number;
}

export const ticksPerSecond = (() => {
  const text = firstLine('getconf', ['CLK_TCK']);
  return /^\d+$/.test(text) ? Number(text) : 100;
})();

export function cpuUse(before: CpuSnapshot, after: CpuSnapshot): CpuUse {
  // A process whose reaper we cannot see takes its ticks with it, hence the floor at zero.
  const seconds = (group: Group) => Math.max(0, after.groups[group] - before.groups[group]) / ticksPerSecond;
  return { client: seconds('client'), proxy: seconds('proxy'), postgres: seconds('postgres'), other: seconds('other') };
}

/** The other processes that used the most CPU between two snapshots, for the message about a disturbed run. */
export function busiestOthers(before: CpuSnapshot, after: CpuSnapshot): string {
  const byPid: { pid: number; name: string; ticks: number }[] = [];
  for (const [pid, now] of after.others) {
    const delta = now.ticks - (before.others.get(pid)?.ticks ?? 0);
    if (delta > 0) byPid.push({ pid, name: now.name, ticks: delta });
  }
  byPid.sort((a, b) => b.ticks - a.ticks);
  return byPid.slice(0, 3).map((p) => `${p.name} (pid ${p.pid}, ${(p.ticks / ticksPerSecond).toFixed(1)} s)`).join(', ');
}

// ---------------------------------------------------------------------------------------------------------------
// Report

export interface MachineFacts {
  date: string;
  nproc: string;
  cpuModel: string;
  memory: string;
  /** One-minute load average before the run: other work on the machine skews every row. */
  loadBefore: string;
  postgres: string;
  node: string;
  parapool: string;
}

export function machineFacts(binDir: string): MachineFacts {
  const cpuinfo = existsSync('/proc/cpuinfo') ? readFileSync('/proc/cpuinfo', 'utf8') : '';
  const model = /^model name\s*:\s*(.+)$/m.exec(cpuinfo)?.[1]?.trim() ?? cpus()[0]?.model ?? 'unknown';
  return {
    date: new Date().toISOString().replace('T', ' ').replace(/\.\d+Z$/, ' UTC'),
    nproc: firstLine('nproc', []),
    cpuModel: model,
    memory: `${Math.round(totalmem() / 2 ** 30)} GiB`,
    loadBefore: loadavg()[0].toFixed(2),
    postgres: firstLine(join(binDir, 'postgres'), ['--version']),
    node: process.version,
    parapool: parapoolVersion,
  };
}

/** Which source the numbers belong to: " (commit abc1234)", with a remark when src/ differs from it; '' outside git. */
export function sourceRevision(): string {
  const git = (args: string[]) => spawnSync('git', ['-C', repoRoot, ...args], { stdio: ['ignore', 'pipe', 'ignore'] });
  const head = git(['rev-parse', '--short', 'HEAD']);
  if (head.status !== 0) return '';
  const dirty = git(['status', '--porcelain', '--', 'src']);
  return ` (commit ${head.stdout.toString().trim()}${dirty.status === 0 && dirty.stdout.length > 0 ? ', with uncommitted changes in src/' : ''})`;
}

export function machineLine(facts: MachineFacts): string {
  return `Machine: ${facts.nproc} CPUs (\`nproc\`), ${facts.cpuModel}, ${facts.memory} of memory; one-minute load average ${facts.loadBefore} before the run.`;
}

export function cpuCount(facts: MachineFacts): number {
  return Number(facts.nproc) > 0 ? Number(facts.nproc) : cpus().length;
}

const docsIntro = [
  '# Benchmarks',
  '',
  'Measurements of parapool against PostgreSQL directly and against other PostgreSQL middleware, on the machine named in each',
  'section. Each section is rewritten by the command it names; the numbers are from that command\'s last run.',
  '',
].join('\n');

/** Writes the section into the docs file, replacing only that section when it is already there. */
export function writeDocs(path: string, sectionHeading: string, text: string): void {
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

/** Prints the section, and puts it into the docs file unless --docs - said not to. */
export function publish(docs: string, sectionHeading: string, text: string): void {
  process.stdout.write('\n' + text + '\n');
  if (docs) {
    writeDocs(docs, sectionHeading, text);
    say(`wrote the results to ${docs}`);
  }
}

/** What a program run by runProgram printed and how it ended. */
export interface ProgramResult {
  code: number | null;
  stdout: string;
  stderr: string;
  timedOut: boolean;
}

/** Runs a program in its own process group (killed with it on a timeout or when the bench stops), collecting its output. */
export function runProgram(program: string, args: string[], timeoutMs: number, env: NodeJS.ProcessEnv = {}): Promise<ProgramResult> {
  if (isFinishing()) return Promise.reject(new StepError('stopping'));
  return new Promise((resolveRun, reject) => {
    const child = spawn(program, args, { detached: true, stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, PGPASSWORD: '', PGOPTIONS: '', ...env } });
    track(child);
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
      untrack(child);
      reject(error);
    });
    child.on('close', (code) => {
      clearTimeout(timer);
      untrack(child);
      resolveRun({ code, stdout, stderr, timedOut });
    });
  });
}
