// A PostgreSQL server on this machine, made and run by parapool: for the sandbox and for tests. Data directories
// are copied from one initdb template per machine (initdb is the slow part), and servers listen on 127.0.0.1
// only, on the port given.

import { execFileSync } from 'node:child_process';
import { createServer } from 'node:net';
import { cpSync, existsSync, mkdirSync, readdirSync, renameSync, rmSync, appendFileSync, readFileSync, chmodSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { postgresOsUser, runPostgresProgram } from './postgres-install';

export interface LocalPostgresOptions {
  readonly binDir: string;
  readonly dataDir: string;
  readonly port: number;
  /** Trade durability for speed (fsync off): for tests and throw-away sandboxes. */
  readonly fast?: boolean;
  /** Extra postgresql.conf lines. */
  readonly settings?: Record<string, string>;
}

function chownToPostgres(path: string): void {
  const user = postgresOsUser();
  if (user) execFileSync('chown', ['-R', `${user}:`, path]);
}

/** A free TCP port on 127.0.0.1 (the system's choice; closed again before returning). */
export function freePort(): Promise<number> {
  return new Promise((resolvePromise, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      const port = typeof address === 'object' && address ? address.port : 0;
      server.close(() => resolvePromise(port));
    });
  });
}

async function templateDir(binDir: string): Promise<string> {
  const version = execFileSync(join(binDir, 'postgres'), ['--version']).toString().trim().replace(/[^0-9.]/g, '');
  const dir = join(tmpdir(), `parapool-initdb-template-${version}`);
  if (existsSync(join(dir, 'PG_VERSION'))) return dir;
  const building = `${dir}.${process.pid}.${Date.now()}`;
  mkdirSync(building, { recursive: true });
  chownToPostgres(building);
  const result = await runPostgresProgram(binDir, 'initdb', ['-D', building, '-U', 'postgres', '--auth=trust', '--encoding=UTF8', '--locale=C', '--no-sync']);
  if (result.code !== 0) throw new Error(`initdb failed: ${result.stderr || result.stdout}`);
  try {
    renameSync(building, dir);
  } catch {
    rmSync(building, { recursive: true, force: true }); // another process made it first
  }
  return dir;
}

function processExists(pid: number): boolean {
  try {
    // A zombie still answers signal 0; its state in /proc says it has ended.
    process.kill(pid, 0);
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z';
  } catch {
    return false;
  }
}

function childrenOf(parent: number): number[] {
  const children: number[] = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
      // The fields after the command name (which may hold spaces and parentheses): state, then the parent's id.
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      if (ppid === parent) children.push(Number(entry));
    } catch {
      // the process ended while the list was read
    }
  }
  return children;
}

export class LocalPostgres {
  readonly dataDir: string;
  private running = false;

  constructor(private readonly options: LocalPostgresOptions) {
    this.dataDir = resolve(options.dataDir);
    this.currentPort = options.port;
  }

  private currentPort: number;

  get port(): number {
    return this.currentPort;
  }

  /** Creates the data directory if it does not exist yet. */
  async init(): Promise<void> {
    if (existsSync(join(this.dataDir, 'PG_VERSION'))) return;
    const template = await templateDir(this.options.binDir);
    mkdirSync(resolve(this.dataDir, '..'), { recursive: true });
    cpSync(template, this.dataDir, { recursive: true });
    chmodSync(this.dataDir, 0o700);
    chownToPostgres(this.dataDir);
  }

  /**
   * Creates the data directory, if it does not exist yet, as a copy of a running primary on this host
   * (pg_basebackup -R): a streaming standby of it, once started.
   */
  async initStandby(primaryPort: number): Promise<void> {
    if (existsSync(join(this.dataDir, 'PG_VERSION'))) return;
    mkdirSync(this.dataDir, { recursive: true });
    chmodSync(this.dataDir, 0o700);
    chownToPostgres(this.dataDir);
    const result = await runPostgresProgram(this.options.binDir, 'pg_basebackup', [
      '-h', '127.0.0.1', '-p', String(primaryPort), '-U', 'postgres', '-D', this.dataDir,
      '--write-recovery-conf', '--wal-method=stream', '--checkpoint=fast', '--no-sync',
    ]);
    if (result.code !== 0) {
      rmSync(this.dataDir, { recursive: true, force: true });
      throw new Error(`pg_basebackup of the primary on port ${primaryPort} into ${this.dataDir} failed: ${result.stderr || result.stdout}`);
    }
    rmSync(join(this.dataDir, 'server.log'), { force: true }); // the primary's
  }

  /** Whether the data directory is a standby's (standby.signal): it starts in recovery. */
  get isStandby(): boolean {
    return existsSync(join(this.dataDir, 'standby.signal'));
  }

  /**
   * Starts the server and waits until it accepts connections. A free port can be taken by another process between
   * the moment it was chosen and the server's bind: then the server moves to another free port (the port getter
   * says which), a few times before giving up.
   */
  async start(): Promise<void> {
    for (let attempt = 1; ; attempt++) {
      try {
        return await this.startOnce();
      } catch (error) {
        if (attempt >= 5 || !/could not bind|Address already in use|could not create any TCP\/IP sockets/.test((error as Error).message)) throw error;
        this.currentPort = await freePort();
      }
    }
  }

  private async startOnce(): Promise<void> {
    const settings: Record<string, string> = {
      listen_addresses: "'127.0.0.1'",
      port: String(this.currentPort),
      unix_socket_directories: "''",
      max_connections: '200',
      max_prepared_transactions: '64',
      logging_collector: 'off',
      ...(this.options.fast ? { fsync: 'off', synchronous_commit: 'off', full_page_writes: 'off' } : {}),
      ...this.options.settings,
    };
    const conf = join(this.dataDir, 'postgresql.auto.conf');
    const header = '# parapool sandbox settings\n';
    const current = existsSync(conf) ? readFileSync(conf, 'utf8') : '';
    const kept = current.split('\n').filter((line) => line.trim() !== '' && !line.startsWith('#') && !Object.keys(settings).some((k) => line.startsWith(`${k} =`)));
    rmSync(conf, { force: true });
    appendFileSync(conf, header + [...kept, ...Object.entries(settings).map(([k, v]) => `${k} = ${v}`)].join('\n') + '\n');
    chownToPostgres(conf);
    const result = await runPostgresProgram(this.options.binDir, 'pg_ctl', ['-D', this.dataDir, '-l', join(this.dataDir, 'server.log'), '-w', '-t', '60', 'start']);
    if (result.code !== 0) {
      const logText = existsSync(join(this.dataDir, 'server.log')) ? readFileSync(join(this.dataDir, 'server.log'), 'utf8').slice(-2000) : '';
      throw new Error(`could not start PostgreSQL in ${this.dataDir} on port ${this.currentPort}: ${result.stderr}${logText}`);
    }
    this.running = true;
  }

  /** Stops the server (fast mode: sessions are rolled back); immediate mode simulates a crash. */
  async stop(mode: 'fast' | 'immediate' = 'fast'): Promise<void> {
    if (!existsSync(join(this.dataDir, 'postmaster.pid'))) {
      this.running = false;
      return;
    }
    await runPostgresProgram(this.options.binDir, 'pg_ctl', ['-D', this.dataDir, '-m', mode, '-w', '-t', '60', 'stop']);
    this.running = false;
  }

  get isRunning(): boolean {
    return this.running;
  }

  /** The postmaster's process id, from postmaster.pid; null when the server is not running. */
  postmasterPid(): number | null {
    const path = join(this.dataDir, 'postmaster.pid');
    if (!existsSync(path)) return null;
    const pid = Number(readFileSync(path, 'utf8').split('\n')[0]);
    return Number.isInteger(pid) && pid > 0 && processExists(pid) ? pid : null;
  }

  /** The postmaster's children (backends, checkpointer, ...), read from /proc. */
  childPids(): number[] {
    const parent = this.postmasterPid();
    return parent === null ? [] : childrenOf(parent);
  }

  /** Sends a signal to the postmaster only (SIGSTOP makes it a server that accepts TCP and answers nothing). */
  signalPostmaster(signal: NodeJS.Signals): void {
    const pid = this.postmasterPid();
    if (pid === null) throw new Error(`no PostgreSQL runs in ${this.dataDir}`);
    process.kill(pid, signal);
  }

  /**
   * kill -9 of the postmaster, as a crash or the OOM killer would; resolves once its children have ended too
   * (they notice the postmaster's death and exit), so that start() finds the shared memory free.
   */
  async crash(): Promise<void> {
    const pid = this.postmasterPid();
    if (pid === null) return;
    const children = childrenOf(pid);
    process.kill(pid, 'SIGKILL');
    for (const deadline = Date.now() + 30_000; [pid, ...children].some(processExists); ) {
      if (Date.now() > deadline) throw new Error(`the processes of ${this.dataDir} did not end after kill -9 of the postmaster`);
      await new Promise((resolvePromise) => setTimeout(resolvePromise, 20));
    }
    this.running = false;
  }

  /** Replaces pg_hba.conf (for authentication tests) and reloads. */
  async setHba(lines: string[]): Promise<void> {
    const path = join(this.dataDir, 'pg_hba.conf');
    rmSync(path, { force: true });
    appendFileSync(path, lines.join('\n') + '\n');
    chownToPostgres(path);
    if (this.running) await runPostgresProgram(this.options.binDir, 'pg_ctl', ['-D', this.dataDir, 'reload']);
  }

  destroy(): void {
    rmSync(this.dataDir, { recursive: true, force: true });
  }
}
