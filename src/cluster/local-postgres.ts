// A PostgreSQL server on this machine, made and run by parapool: for the sandbox and for tests. Data directories
// are copied from one initdb template per machine (initdb is the slow part), and servers listen on 127.0.0.1
// only, on the port given.

import { execFileSync } from 'node:child_process';
import { createServer } from 'node:net';
import { cpSync, existsSync, mkdirSync, renameSync, rmSync, appendFileSync, readFileSync, chmodSync } from 'node:fs';
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
