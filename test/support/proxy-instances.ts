// parapool instances run as child processes of a test (through the CLI, `parapool start -f`), so that a test can
// kill one with SIGKILL or stop it with SIGSTOP as a crash or a partition would, while the nodes they share stay
// up. Each instance gets its own configuration file, log file and logdir under the test's directory.

import { spawn, type ChildProcess } from 'node:child_process';
import { createWriteStream, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Client } from 'pg';
import { textTypes } from './test-cluster';
export { freePort } from '../../src/cluster/local-postgres';

const mainJs = join(__dirname, '..', '..', 'src', 'cli', 'main.js');

export interface ProxyInstance {
  readonly name: string;
  readonly port: number;
  readonly configFile: string;
  readonly logFile: string;
  child: ChildProcess;
  /** Resolves once the child exited. */
  exited: Promise<void>;
}

/** Writes `lines` (pgpool.conf lines) as the instance's file and starts it with -D; resolves once it accepts clients. */
export async function startInstance(dir: string, name: string, port: number, lines: readonly string[]): Promise<ProxyInstance> {
  const home = join(dir, name);
  mkdirSync(home, { recursive: true });
  const configFile = join(home, 'parapool.conf');
  writeFileSync(configFile, [...lines, `logdir = '${home}'`].join('\n') + '\n');
  const logFile = join(home, 'parapool.log');
  const instance: ProxyInstance = { name, port, configFile, logFile, child: null as unknown as ChildProcess, exited: Promise.resolve() };
  launch(instance);
  await waitForPort(instance);
  return instance;
}

/** Starts the instance's process again (after a kill), with the same file. */
export async function restartInstance(instance: ProxyInstance): Promise<void> {
  launch(instance);
  await waitForPort(instance);
}

function launch(instance: ProxyInstance): void {
  const log = createWriteStream(instance.logFile, { flags: 'a' });
  const child = spawn(process.execPath, [mainJs, 'start', '-f', instance.configFile, '-D'], { stdio: ['ignore', 'pipe', 'pipe'] });
  child.stdout!.pipe(log);
  child.stderr!.pipe(log);
  instance.child = child;
  instance.exited = new Promise((resolvePromise) => child.once('exit', () => resolvePromise()));
}

async function waitForPort(instance: ProxyInstance): Promise<void> {
  for (const deadline = Date.now() + 30_000; ; ) {
    if (instance.child.exitCode !== null) throw new Error(`instance ${instance.name} exited: ${readFileSync(instance.logFile, 'utf8').slice(-2000)}`);
    try {
      const client = await connectTo(instance);
      await client.end();
      return;
    } catch (error) {
      if (Date.now() > deadline) throw error;
      await new Promise((resolvePromise) => setTimeout(resolvePromise, 100));
    }
  }
}

export async function connectTo(instance: { port: number }): Promise<Client> {
  const client = new Client({ host: '127.0.0.1', port: instance.port, user: 'postgres', database: 'postgres', types: textTypes, connectionTimeoutMillis: 3000 });
  client.on('error', () => undefined);
  await client.connect();
  return client;
}

/** Runs one statement on the instance on a connection of its own; the rows as objects of text. */
export async function queryInstance(instance: { port: number }, sql: string): Promise<Record<string, string | null>[]> {
  const client = await connectTo(instance);
  try {
    return (await client.query(sql)).rows as Record<string, string | null>[];
  } finally {
    await client.end().catch(() => undefined);
  }
}

/** Sends a signal to the instance's process; SIGKILL waits until it is gone. */
export async function signalInstance(instance: ProxyInstance, signal: 'SIGKILL' | 'SIGSTOP' | 'SIGCONT' | 'SIGTERM'): Promise<void> {
  if (instance.child.exitCode !== null || instance.child.signalCode !== null) return;
  instance.child.kill(signal);
  if (signal === 'SIGKILL' || signal === 'SIGTERM') await instance.exited;
}
