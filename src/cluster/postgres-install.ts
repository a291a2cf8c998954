// Finds the PostgreSQL server binaries on this machine (newest version first) and runs them as a non-root
// user when the proxy itself runs as root, because PostgreSQL refuses to start as root.

import { existsSync, readdirSync } from 'node:fs';
import { delimiter, join } from 'node:path';
import { spawn, type SpawnOptions } from 'node:child_process';

/** The directory holding initdb, postgres and pg_ctl: $PARAPOOL_PG_BIN, else the newest /usr/lib/postgresql/N/bin. */
export function findPostgresBinDir(): string {
  const fromEnv = process.env.PARAPOOL_PG_BIN;
  if (fromEnv) {
    if (!existsSync(join(fromEnv, 'initdb'))) throw new Error(`PARAPOOL_PG_BIN=${fromEnv} has no initdb`);
    return fromEnv;
  }
  const roots = ['/usr/lib/postgresql', '/usr/local/lib/postgresql'];
  const candidates: { version: number; dir: string }[] = [];
  for (const root of roots) {
    if (!existsSync(root)) continue;
    for (const entry of readdirSync(root)) {
      const dir = join(root, entry, 'bin');
      if (existsSync(join(dir, 'initdb')) && existsSync(join(dir, 'postgres'))) candidates.push({ version: parseFloat(entry), dir });
    }
  }
  for (const dir of ['/usr/local/pgsql/bin']) {
    if (existsSync(join(dir, 'initdb'))) candidates.push({ version: 0, dir });
  }
  candidates.sort((a, b) => b.version - a.version);
  if (candidates.length === 0) {
    throw new Error('no PostgreSQL server binaries found under /usr/lib/postgresql/*/bin (install postgresql, or set PARAPOOL_PG_BIN)');
  }
  return candidates[0].dir;
}

/** A PostgreSQL program (psql, pgbench, ...): from the server's bin directory first, so versions match, else PATH. */
export function findPostgresProgram(name: string): string {
  let binDir = '';
  try {
    binDir = findPostgresBinDir();
  } catch {
    // no server binaries: the client may still be on PATH
  }
  for (const dir of [binDir, ...(process.env.PATH ?? '').split(delimiter)]) {
    if (dir && existsSync(join(dir, name))) return join(dir, name);
  }
  throw new Error(`${name} not found in ${binDir || '/usr/lib/postgresql/*/bin'} or on PATH (install the PostgreSQL client programs)`);
}

/** The OS user PostgreSQL runs as: `postgres` when we are root, else ourselves. */
export function postgresOsUser(): string | null {
  return process.getuid?.() === 0 ? 'postgres' : null;
}

export interface RunResult {
  readonly code: number;
  readonly stdout: string;
  readonly stderr: string;
}

/** Runs a PostgreSQL program (as the postgres user when root) and collects its output. */
export function runPostgresProgram(binDir: string, program: string, args: string[], options: SpawnOptions = {}): Promise<RunResult> {
  const user = postgresOsUser();
  const command = user ? 'runuser' : join(binDir, program);
  const fullArgs = user ? ['-u', user, '--', join(binDir, program), ...args] : args;
  return new Promise((resolvePromise, reject) => {
    const child = spawn(command, fullArgs, { ...options, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout?.on('data', (d) => (stdout += d));
    child.stderr?.on('data', (d) => (stderr += d));
    child.on('error', reject);
    child.on('close', (code) => resolvePromise({ code: code ?? -1, stdout, stderr }));
  });
}
