// The command line as a user meets it: `parapool sandbox` brings up nodes and a proxy psql can use and takes
// them all down again on SIGTERM, and `parapool start` with a bad configuration file refuses to run and says
// where the mistake is.

import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { freePort, LocalPostgres } from '../../src/cluster/local-postgres';
import { findPostgresBinDir, findPostgresProgram } from '../../src/cluster/postgres-install';

const mainJs = join(__dirname, '..', '..', 'src', 'cli', 'main.js');
const dirs: string[] = [];
const children: ChildProcess[] = [];

after(async () => {
  for (const child of children) {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGKILL');
      await new Promise((resolvePromise) => child.once('exit', resolvePromise));
    }
  }
  for (const dir of dirs) {
    // Whatever the sandbox left running is stopped before its directory goes.
    for (const entry of existsSync(dir) ? readdirSync(dir) : []) {
      if (existsSync(join(dir, entry, 'postmaster.pid'))) {
        await new LocalPostgres({ binDir: findPostgresBinDir(), dataDir: join(dir, entry), port: 0 }).stop('immediate').catch(() => undefined);
      }
    }
    rmSync(dir, { recursive: true, force: true });
  }
});

function tempDir(): string {
  const dir = mkdtempSync(join(tmpdir(), 'parapool-cli-'));
  dirs.push(dir);
  return dir;
}


interface Finished {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/** Starts a program, collecting its output; `done` settles when it exits (killed after timeoutMs). */
function launch(command: string, args: string[], timeoutMs: number): { child: ChildProcess; output: () => string; done: Promise<Finished> } {
  const env: NodeJS.ProcessEnv = { ...process.env, PGCONNECT_TIMEOUT: '30' };
  delete env.PGPASSWORD;
  const child = spawn(command, args, { env, stdio: ['ignore', 'pipe', 'pipe'] });
  children.push(child);
  let stdout = '';
  let stderr = '';
  child.stdout!.on('data', (d) => (stdout += d));
  child.stderr!.on('data', (d) => (stderr += d));
  const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
  const done = new Promise<Finished>((resolvePromise, reject) => {
    child.on('error', reject);
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolvePromise({ code, signal, stdout, stderr });
    });
  });
  return { child, output: () => `stdout:\n${stdout}\nstderr:\n${stderr}`, done };
}

function psql(port: number, sql: string): Promise<Finished> {
  return launch(findPostgresProgram('psql'), ['-X', '-v', 'ON_ERROR_STOP=1', '-A', '-F', '|', '-h', '127.0.0.1', '-p', String(port), '-U', 'postgres', '-d', 'postgres', '-c', sql], 60_000).done;
}

test('parapool sandbox serves psql, PCP, metrics and the web page, and pcp_stop_pgpool stops it and its nodes', async () => {
  const dir = tempDir();
  const port = await freePort();
  const webPort = await freePort();
  const sandbox = launch(process.execPath, [mainJs, 'sandbox', '--nodes', '2', '--port', String(port), '--pcp-port', '0', '--metrics-port', '0', '--web-port', String(webPort), '--dir', dir], 180_000);

  await new Promise<void>((resolvePromise, reject) => {
    const timer = setTimeout(() => reject(new Error(`no "proxy on port" line within 120 s\n${sandbox.output()}`)), 120_000);
    const check = (): void => {
      if (/proxy on port/.test(sandbox.output())) {
        clearTimeout(timer);
        resolvePromise();
      }
    };
    sandbox.child.stdout!.on('data', check);
    void sandbox.done.then((finished) => {
      clearTimeout(timer);
      reject(new Error(`sandbox exited early (code ${finished.code})\n${sandbox.output()}`));
    });
  });
  assert.match(sandbox.output(), new RegExp(`proxy on port ${port}\\b`));
  const metricsUrl = /metrics: (http:\S+)/.exec(sandbox.output())?.[1];
  assert.ok(metricsUrl, `the banner names the metrics endpoint\n${sandbox.output()}`);
  assert.match(await (await fetch(metricsUrl)).text(), /^parapool_node_up\{node="1",[^}]*\} 1$/m);
  assert.match(sandbox.output(), new RegExp(`admin: +http://127\\.0\\.0\\.1:${webPort}/ \\(user postgres, password postgres\\)`));
  const login = await fetch(`http://127.0.0.1:${webPort}/login`, { method: 'POST', body: new URLSearchParams({ user: 'postgres', password: 'postgres' }), redirect: 'manual' });
  assert.equal(login.status, 303, 'the sandbox\'s user logs in to the web admin page');

  const one = await psql(port, 'select 1 as one');
  assert.equal(one.code, 0, one.stderr);
  assert.equal(one.stdout, 'one\n1\n(1 row)\n');

  const nodes = await psql(port, 'show pool_nodes');
  assert.equal(nodes.code, 0, nodes.stderr);
  const [header, ...rest] = nodes.stdout.trimEnd().split('\n');
  assert.equal(rest.pop(), '(2 rows)');
  const columns = header.split('|');
  const rows = rest.map((line) => line.split('|'));
  assert.equal(rows.length, 2);
  assert.deepEqual(rows.map((row) => row[columns.indexOf('node_id')]), ['0', '1']);
  assert.deepEqual(rows.map((row) => row[columns.indexOf('status')]), ['up', 'up']);

  // pcp_stop_pgpool (Debian's client) stops the sandbox as SIGTERM does: the proxy, then its nodes.
  const pcpPort = /PCP: +pcp_node_info -h 127\.0\.0\.1 -p (\d+)/.exec(sandbox.output())?.[1];
  assert.ok(pcpPort, `the banner names the PCP port\n${sandbox.output()}`);
  const passFile = join(dir, 'pcppass');
  writeFileSync(passFile, '*:*:postgres:postgres\n', { mode: 0o600 });
  const stop = await new Promise<string>((resolvePromise) =>
    execFile('/usr/sbin/pcp_stop_pgpool', ['-h', '127.0.0.1', '-p', pcpPort, '-U', 'postgres', '-w', '-m', 'fast'], { env: { ...process.env, PCPPASSFILE: passFile } }, (_error, stdout, stderr) => resolvePromise(stdout + stderr)),
  );
  assert.match(stop, /pcp_stop_pgpool -- Command Successful/);
  const finished = await sandbox.done;
  assert.equal(finished.signal, null, sandbox.output());
  assert.equal(finished.code, 0, sandbox.output());
  for (const node of ['node0', 'node1']) {
    assert.ok(existsSync(join(dir, node, 'PG_VERSION')), `${node} was created`);
    assert.ok(!existsSync(join(dir, node, 'postmaster.pid')), `${node} is still running`);
  }
  rmSync(dir, { recursive: true, force: true });
});

test('parapool start refuses a configuration with an unknown key and names its line', async () => {
  const dir = tempDir();
  const conf = join(dir, 'bad.conf');
  writeFileSync(conf, ["# a configuration with a typo", "port = 9999", "backend_hostname0 = '127.0.0.1'", 'num_init_childs = 32', "backend_port0 = 5432", ''].join('\n'));
  const finished = await launch(process.execPath, [mainJs, 'start', '-f', conf], 60_000).done;
  assert.notEqual(finished.code, 0, finished.stdout + finished.stderr);
  assert.equal(finished.signal, null);
  assert.match(finished.stderr, /num_init_childs/);
  assert.match(finished.stderr, /line 4\b/);
  assert.ok(finished.stderr.includes(conf), finished.stderr);
});
