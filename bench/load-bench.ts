// The load benchmark behind `npm run bench`: bulk loading directly into one PostgreSQL node and through parapool,
// in one run on one machine: COPY of a TPC-H-shaped lineitem into a table hash-distributed over 4 nodes, and
// pgbench -i through the proxy in front of one node. It prints the table and writes it into docs/benchmarks.md.

import { spawn } from 'node:child_process';
import { closeSync, openSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { Client } from 'pg';
import type { LocalPostgres } from '../src/cluster/local-postgres';
import { findPostgresBinDir } from '../src/cluster/postgres-install';
import {
  busyThreshold, cpuCount, cpuSnapshot, cpuUse, findClientProgram, firstLine, integerOption, isFinishing, killGroup, logNote, machineFacts,
  machineLine, makeWorkDir, parseCommonOptions, postmasterPid, publish, readProcesses, repoRoot, runBenchmark, say, scaleFactorOption, sourceRevision, startNodes, startParapool,
  StepError, stopNodes, throwIfFinishing, ticksPerSecond, track, untrack, type CommonOptions, type CpuUse, type MachineFacts, type Server,
} from './bench-support';

const sectionHeading = '## Load: COPY and pgbench -i through the proxy';
const distributedNodes = 4;
/** A load during which the client, the proxy and PostgreSQL together use almost no CPU for this long is hung. */
const stallMs = 60_000;
/** Half a CPU-second: less than that in a minute is idling, not loading. */
const stallTicks = Math.ceil(ticksPerSecond / 2);

interface Options extends CommonOptions {
  sf: string;
  pgbenchScale: number;
  runs: number;
}

const usage = `usage: bash bench/run.sh --only load [--sf SF] [--pgbench-scale N] [--runs N] [--docs FILE] [--keep]
  --sf SF               TPC-H scale factor of the lineitem that is loaded (default 0.2, about 1.2 million rows)
  --pgbench-scale N     pgbench -i -s N, directly and through parapool (default 10)
  --runs N              loads of each kind on each target, taking turns; the median counts (default 3)
  --docs FILE           where the results section goes (default docs/benchmarks.md; "-" writes nothing)
  --keep                leave the temporary directory (data directories, exported file, configs, logs) in place
`;

function parseOptions(argv: string[]): Options {
  const own = { sf: '0.2', pgbenchScale: 10, runs: 3 };
  const common = parseCommonOptions(argv, usage, (arg, value) => {
    switch (arg) {
      case '--sf':
        own.sf = scaleFactorOption(value(), usage);
        return true;
      case '--pgbench-scale':
        own.pgbenchScale = integerOption(arg, value(), 1, usage);
        return true;
      case '--runs':
        own.runs = integerOption(arg, value(), 1, usage);
        return true;
      default:
        return false;
    }
  });
  return { ...own, ...common };
}

async function withClient<T>(port: number, what: string, body: (client: Client) => Promise<T>): Promise<T> {
  throwIfFinishing();
  const client = new Client({ host: '127.0.0.1', port, user: 'postgres', database: 'postgres', connectionTimeoutMillis: 10_000 });
  try {
    await client.connect();
    return await body(client);
  } catch (error) {
    if (error instanceof StepError) throw error;
    throw new StepError(`${what} (port ${port}): ${(error as Error).message}`);
  } finally {
    await client.end().catch(() => undefined);
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Client programs

interface RunResult {
  code: number | null;
  stdout: string;
  stderr: string;
  seconds: number;
  /** Why the program was killed, or null. */
  killed: string | null;
  cpu: CpuUse;
}

/**
 * Runs psql or pgbench while watching the CPU of everything involved: a load that makes no progress anywhere for
 * a minute is killed as hung rather than waited for until some generous deadline.
 */
function runClient(command: string, args: string[], watch: { proxyPid: number | null; nodes: LocalPostgres[]; stdoutFile?: string; timeoutMs: number }): Promise<RunResult> {
  if (isFinishing()) return Promise.reject(new StepError('stopping'));
  return new Promise((resolveRun, reject) => {
    const postmasters = watch.nodes.map(postmasterPid);
    const before = cpuSnapshot(watch.proxyPid, postmasters);
    const startedAt = process.hrtime.bigint();
    const stdoutFd = watch.stdoutFile ? openSync(watch.stdoutFile, 'w') : null;
    const child = spawn(command, args, {
      detached: true,
      stdio: ['ignore', stdoutFd ?? 'pipe', 'pipe'],
      env: { ...process.env, PGPASSWORD: '', PGOPTIONS: '', PGCONNECT_TIMEOUT: '10' },
    });
    if (stdoutFd !== null) closeSync(stdoutFd);
    track(child);
    let stdout = '';
    let stderr = '';
    let killed: string | null = null;
    child.stdout?.on('data', (d) => (stdout += d));
    child.stderr!.on('data', (d) => (stderr += d));
    let busyAtMark = -Infinity;
    let markAt = Date.now();
    const watchdog = setInterval(() => {
      const now = cpuSnapshot(watch.proxyPid, postmasters).groups;
      // The client itself is not seen until it exits (its ticks reach us as cutime), so its own /proc entry counts.
      const clientTicks = child.pid !== undefined ? readProcesses().get(child.pid)?.ticks ?? 0 : 0;
      const busy = now.proxy + now.postgres + clientTicks;
      // PostgreSQL's background processes tick now and then even when nothing moves, so progress means real work.
      if (busy - busyAtMark >= stallTicks) {
        busyAtMark = busy;
        markAt = Date.now();
      } else if (Date.now() - markAt > stallMs) {
        killed = `hung: ${command.split('/').pop()}, the proxy and PostgreSQL together used less than ${stallTicks / ticksPerSecond} CPU-seconds in ${stallMs / 1000} s`;
        killGroup(child, 'SIGKILL');
      }
    }, 5_000);
    const timer = setTimeout(() => {
      killed = `did not finish within ${watch.timeoutMs / 1000} s`;
      killGroup(child, 'SIGKILL');
    }, watch.timeoutMs);
    const done = () => {
      clearInterval(watchdog);
      clearTimeout(timer);
      untrack(child);
    };
    child.on('error', (error) => {
      done();
      reject(new StepError(`could not run ${command}: ${error.message}`));
    });
    child.on('close', (code) => {
      done();
      const seconds = Number(process.hrtime.bigint() - startedAt) / 1e9;
      const cpu = cpuUse(before, cpuSnapshot(watch.proxyPid, postmasters));
      resolveRun({ code, stdout, stderr, seconds, killed, cpu });
    });
  });
}

function psqlArgs(port: number, commands: string[]): string[] {
  return ['-X', '-v', 'ON_ERROR_STOP=1', '-h', '127.0.0.1', '-p', String(port), '-U', 'postgres', '-d', 'postgres', ...commands.flatMap((c) => ['-c', c])];
}

/** psql's \copy quotes its file name as an SQL literal. */
function copyFileLiteral(path: string): string {
  return `'${path.replace(/'/g, "''")}'`;
}

// ---------------------------------------------------------------------------------------------------------------
// The fixture

function lineitemTableSql(): string {
  const schema = readFileSync(join(repoRoot, 'fixtures', 'tpch', 'schema.sql'), 'utf8');
  const match = /CREATE TABLE lineitem \([\s\S]*?\n\);/.exec(schema);
  if (!match) throw new StepError('fixtures/tpch/schema.sql has no CREATE TABLE lineitem statement');
  return match[0];
}

function lineitemInsertSql(sf: string): string {
  const data = readFileSync(join(repoRoot, 'fixtures', 'tpch', 'data.sql'), 'utf8');
  const start = data.search(/^INSERT INTO lineitem\b/m);
  if (start === -1) throw new StepError('fixtures/tpch/data.sql has no INSERT INTO lineitem statement');
  const end = data.indexOf(';', start);
  const statement = data.slice(start, end === -1 ? undefined : end + 1);
  if (!statement.includes('{{SF}}')) throw new StepError('the lineitem statement of fixtures/tpch/data.sql has no {{SF}} placeholder');
  return statement.replace(/\{\{SF\}\}/g, sf);
}

// ---------------------------------------------------------------------------------------------------------------
// Measurements

/** One timed load. */
interface Run {
  seconds: number;
  cpu: CpuUse;
  /** pgbench -i's own per-step times, in its order. */
  steps: [string, number][];
}

interface Row {
  load: 'copy' | 'pgbench';
  target: string;
  rows: number;
  runs: Run[];
  notes: string[];
}

/** The run whose time is the median (the lower middle one for an even count): its CPU and steps go with it. */
function medianRun(row: Row): Run {
  const sorted = [...row.runs].sort((a, b) => a.seconds - b.seconds);
  return sorted[Math.floor((sorted.length - 1) / 2)];
}

function describeFailure(what: string, result: RunResult, proxy: Server | null, logFrom: number): string {
  const lines = [`${what} failed: ${result.killed ?? `exit code ${result.code}`}`];
  const errors = `${result.stderr}\n${result.stdout}`.split('\n').filter((l) => l.trim() !== '').slice(-10);
  if (errors.length > 0) lines.push(`its output:\n${errors.join('\n')}`);
  if (proxy) {
    if (proxy.exitReason) lines.push(`parapool ${proxy.exitReason}`);
    const logged = proxy.logLinesSince(logFrom);
    lines.push(logged.length > 0 ? `parapool's log (${proxy.logPath}) meanwhile:\n${logged.slice(-20).join('\n')}` : `parapool logged nothing at warning or above meanwhile`);
  }
  return lines.join('\n');
}

function proxyNote(proxy: Server | null, logFrom: number): string {
  return proxy ? logNote('parapool', 'load', proxy.logLinesSince(logFrom)) : '';
}

function copyTimeout(rows: number): number {
  return 300_000 + rows; // 1 ms a row on top of five minutes: far beyond any healthy load, short of forever
}

async function timedCopy(psql: string, port: number, file: string, rows: number, proxy: Server | null, nodes: LocalPostgres[], label: string): Promise<Run> {
  const logFrom = proxy?.logSize() ?? 0;
  say(`${label}: COPY lineitem FROM STDIN (${rows} rows)`);
  const result = await runClient(psql, psqlArgs(port, [`\\copy lineitem from ${copyFileLiteral(file)}`]), { proxyPid: proxy?.pid ?? null, nodes, timeoutMs: copyTimeout(rows) });
  throwIfFinishing();
  if (result.killed || result.code !== 0) throw new StepError(describeFailure(`${label}: psql \\copy`, result, proxy, logFrom));
  const reported = /COPY (\d+)/.exec(result.stdout);
  if (!reported || Number(reported[1]) !== rows) {
    throw new StepError(`${label}: psql reported "${result.stdout.trim()}" where COPY ${rows} was expected` + (proxy ? `\n${describeFailure('the load', result, proxy, logFrom)}` : ''));
  }
  say(`${label}: ${result.seconds.toFixed(2)} s, ${(rows / result.seconds).toFixed(0)} rows/s`);
  return { seconds: result.seconds, cpu: result.cpu, steps: [] };
}

interface PgbenchInit {
  total: number;
  steps: [string, number][];
}

function parsePgbenchInit(output: string): PgbenchInit | null {
  const match = /done in ([0-9.]+) s \(([^)]*)\)/.exec(output);
  if (!match) return null;
  const steps: [string, number][] = [];
  for (const part of match[2].split(',')) {
    const step = /^\s*(.+?) ([0-9.]+) s\s*$/.exec(part);
    if (step) steps.push([step[1], Number(step[2])]);
  }
  return { total: Number(match[1]), steps };
}

async function timedPgbenchInit(pgbench: string, port: number, scale: number, proxy: Server | null, nodes: LocalPostgres[], label: string): Promise<Run> {
  const logFrom = proxy?.logSize() ?? 0;
  say(`${label}: pgbench -i -s ${scale}`);
  const args = ['-i', '-s', String(scale), '-q', '-h', '127.0.0.1', '-p', String(port), '-U', 'postgres', 'postgres'];
  const result = await runClient(pgbench, args, { proxyPid: proxy?.pid ?? null, nodes, timeoutMs: 300_000 + scale * 100_000 });
  throwIfFinishing();
  if (result.killed || result.code !== 0) throw new StepError(describeFailure(`${label}: pgbench -i`, result, proxy, logFrom));
  const init = parsePgbenchInit(`${result.stderr}\n${result.stdout}`);
  if (!init) throw new StepError(`${label}: pgbench -i printed no "done in" line:\n${result.stderr.trim()}`);
  say(`${label}: done in ${init.total.toFixed(2)} s`);
  return { seconds: init.total, cpu: result.cpu, steps: init.steps };
}

async function countRows(port: number, sql: string, what: string): Promise<number> {
  return withClient(port, what, async (client) => Number((await client.query(sql)).rows[0].count));
}

// ---------------------------------------------------------------------------------------------------------------
// Report

interface Facts extends MachineFacts {
  psql: string;
}

function direct(rows: Row[], load: Row['load']): Row | undefined {
  return rows.find((r) => r.load === load && r.target.startsWith('direct'));
}

/** Speed relative to direct: direct's median time over this row's, which for COPY is the ratio of rows/s. */
function versusDirect(row: Row, rows: Row[]): number | null {
  const base = direct(rows, row.load);
  return base ? medianRun(base).seconds / medianRun(row).seconds : null;
}

const thousands = (n: number) => Math.round(n).toLocaleString('en-US');
const percent = (x: number) => `${(x * 100).toFixed(0)} %`;
/** Two significant digits: a figure derived from one run's CPU ticks is worth no more. */
const roughly = (n: number) => (n >= 1e6 ? `${(n / 1e6).toFixed(1)} million` : thousands(Number(n.toPrecision(2))));

function cpuText(cpu: CpuUse): string {
  return `${cpu.client.toFixed(1)} / ${cpu.proxy.toFixed(1)} / ${cpu.postgres.toFixed(1)}`;
}

/** Share of the machine's CPU that processes outside the benchmark used during a run. */
function foreignShare(run: Run, facts: Facts): number {
  return run.cpu.other / (run.seconds * cpuCount(facts));
}

function markdownTable(rows: Row[], options: Options, facts: Facts): string {
  const lines = [
    '| load | target | rows | seconds | rows/s | vs direct | CPU s: client / proxy / PostgreSQL | pgbench -i steps (s) and notes |',
    '| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |',
  ];
  for (const row of rows) {
    const run = medianRun(row);
    const load = row.load === 'copy' ? '`COPY lineitem FROM STDIN` (psql `\\copy`)' : `\`pgbench -i -s ${options.pgbenchScale}\``;
    const ratio = versusDirect(row, rows);
    const rate = row.load === 'copy' ? thousands(row.rows / run.seconds) : '';
    const times = row.runs.map((r) => r.seconds);
    const notes = [
      run.steps.map(([name, s]) => `${name} ${s.toFixed(2)}`).join(', '),
      row.runs.length > 1 ? `${row.runs.length} runs: ${Math.min(...times).toFixed(2)} to ${Math.max(...times).toFixed(2)} s` : '',
      ...row.notes,
      foreignShare(run, facts) >= busyThreshold ? `other processes used ${percent(foreignShare(run, facts))} of the CPU during the median run` : '',
    ];
    const note = notes.filter((t) => t !== '').join('; ').replace(/\|/g, '\\|');
    lines.push(`| ${load} | ${row.target} | ${thousands(row.rows)} | ${run.seconds.toFixed(2)} | ${rate} | ${ratio === null ? '' : percent(ratio)} | ${cpuText(run.cpu)} | ${note} |`);
  }
  return lines.join('\n');
}

function disturbance(rows: Row[], facts: Facts): string {
  const medians = rows.map((r) => foreignShare(medianRun(r), facts));
  const all = rows.flatMap((r) => r.runs.map((run) => foreignShare(run, facts)));
  const worstMedian = Math.max(...medians);
  const text =
    `Processes outside the benchmark used at most ${(worstMedian * 100).toFixed(1)} % of the machine's CPU during a median run` +
    (Math.max(...all) > worstMedian + 0.0005 ? ` (${(Math.max(...all) * 100).toFixed(1)} % during the most disturbed run of all)` : '');
  return worstMedian >= busyThreshold
    ? `${text}: the rows flagged in the notes were slowed by other work and understate what this machine can do.`
    : `${text}, so the medians were not disturbed by other work.`;
}

/** What held the distributed COPY back, read from where the CPU went. */
function copyReading(directRow: Row, proxyRow: Row, rows: Row[], facts: Facts): string {
  const d = medianRun(directRow);
  const p = medianRun(proxyRow);
  const cores = cpuCount(facts);
  const directCores = d.cpu.postgres / d.seconds;
  const nodeCores = p.cpu.postgres / p.seconds;
  const proxyCores = p.cpu.proxy / p.seconds;
  const allCores = (p.cpu.client + p.cpu.proxy + p.cpu.postgres + p.cpu.other) / p.seconds;
  const microsPerRow = (p.cpu.proxy / proxyRow.rows) * 1e6;
  const parts = [
    `Through parapool, COPY into lineitem hash-distributed over ${distributedNodes} nodes ran at ${percent(versusDirect(proxyRow, rows)!)} of the rows/s of COPY into one node directly`,
    `(${thousands(proxyRow.rows / p.seconds)} against ${thousands(directRow.rows / d.seconds)} rows/s).`,
    `A direct COPY is served by one PostgreSQL backend, which kept ${directCores.toFixed(2)} cores busy (${d.cpu.postgres.toFixed(1)} CPU-seconds in ${d.seconds.toFixed(2)} s);`,
    `behind the proxy each node runs a backend of its own, and the ${distributedNodes} together kept ${nodeCores.toFixed(2)} cores busy (${p.cpu.postgres.toFixed(1)} CPU-seconds),`,
    `while the proxy used ${proxyCores.toFixed(2)} of a core (${p.cpu.proxy.toFixed(1)} CPU-seconds, ${microsPerRow.toFixed(2)} µs a row) to cut the stream into rows, hash each`,
    'l_orderkey and batch the rows per node. So the distributed load can use the second core, which a direct COPY leaves to psql or idle,',
    `but on this machine psql, the proxy and the ${distributedNodes} servers all share its ${cores} cores: together with other work they kept ${allCores.toFixed(2)} of them busy.`,
  ];
  if (proxyCores >= 0.85) {
    parts.push(
      'The proxy was the bottleneck: its event loop is one thread, so it cannot use more than about one core however many nodes sit behind it.',
    );
  } else if (allCores >= cores * 0.85) {
    parts.push(
      'The machine was saturated, so every CPU-second the proxy spent was taken from the PostgreSQL backends: the ratio here weighs the',
      'proxy\'s CPU per row against the one extra core the nodes gain, not the scaling of a distributed COPY whose nodes have cores of their own.',
      `There the proxy's single thread would be the limit, and at ${microsPerRow.toFixed(2)} µs a row one core carries about ${roughly(1e6 / microsPerRow)} rows/s.`,
    );
  } else {
    parts.push(
      'Neither the proxy nor the machine was saturated, so the load was held back by waiting: the proxy pauses the client while any node\'s',
      'connection has data queued, and the slowest node sets the pace.',
    );
  }
  if (proxyRow.notes.some((n) => n.includes('proxy printed'))) {
    parts.push('The proxy printed warnings during some loads (see the notes); every row still arrived, each on its own node.');
  }
  return parts.join(' ');
}

function reading(rows: Row[], options: Options, facts: Facts): string {
  const parts: string[] = [];
  const copyDirect = direct(rows, 'copy');
  const copyProxy = rows.find((r) => r.load === 'copy' && r !== copyDirect);
  if (copyDirect && copyProxy) parts.push(copyReading(copyDirect, copyProxy, rows, facts));
  const pgDirect = direct(rows, 'pgbench');
  const pgProxy = rows.find((r) => r.load === 'pgbench' && r !== pgDirect);
  if (pgDirect && pgProxy) {
    const d = medianRun(pgDirect);
    const p = medianRun(pgProxy);
    const diffs = p.steps
      .map(([name, s]) => [name, s, d.steps.find(([n]) => n === name)?.[1] ?? 0] as [string, number, number])
      .sort((a, b) => b[1] - b[2] - (a[1] - a[2]));
    const biggest = diffs[0];
    const ratio = p.seconds / d.seconds;
    const perMessage = (p.cpu.proxy / pgProxy.rows) * 1e6;
    parts.push(
      `\`pgbench -i -s ${options.pgbenchScale}\` through parapool in front of one node took ${p.seconds.toFixed(2)} s against ${d.seconds.toFixed(2)} s directly`,
      `(${ratio.toFixed(2)} times as long${biggest && biggest[1] > biggest[2] ? `; the largest difference is in its ${biggest[0]} step, ${biggest[2].toFixed(2)} s directly and ${biggest[1].toFixed(2)} s through the proxy` : ''}),`,
      `and the proxy used ${p.cpu.proxy.toFixed(1)} CPU-seconds, ${percent(p.cpu.proxy / p.seconds)} of one core over the whole run.`,
      'With one node and no partition rules the COPY of pgbench_accounts is relayed as a replicated write, message by message, without',
      'being cut into rows. pgbench sends every row as a CopyData message of its own (a pgbench_accounts row is about 15 bytes), where',
      `psql's \`\\copy\` packs rows into 8 kB messages, so the proxy handles ${thousands(pgProxy.rows)} small messages here, at about`,
      `${perMessage.toFixed(2)} µs of proxy CPU each, against ${((p.cpu.postgres / pgProxy.rows) * 1e6).toFixed(2)} µs of PostgreSQL CPU a row over the whole run` +
        `${ratio >= 1.5 ? ': that per-message cost, not the bytes, is what slows the load' : ''}.`,
      'The DDL, VACUUM and index builds are run by the node alone.',
    );
  }
  parts.push(
    `Each figure is the median of ${options.runs} run${options.runs === 1 ? '' : 's'}, direct and proxied runs taking turns; on a shared 2-core machine`,
    'runs vary by several percent, so differences of less than about 5 % mean little. The CPU column is for the median run and counts the',
    'client program (psql or pgbench), the proxy and every process of the benchmark\'s PostgreSQL servers.',
  );
  return parts.join(' ');
}

function section(rows: Row[], options: Options, facts: Facts, fileBytes: number): string {
  const copyRows = rows.find((r) => r.load === 'copy')?.rows ?? 0;
  return [
    sectionHeading,
    '',
    `Run ${facts.date} with \`npm run bench\` (\`bash bench/run.sh --only load\` runs this part alone). The TPC-H-shaped lineitem at scale factor`,
    `${options.sf} (${thousands(copyRows)} rows, ${(fileBytes / 2 ** 20).toFixed(0)} MiB in COPY text format) is generated once from fixtures/tpch/data.sql,`,
    'exported with `COPY lineitem TO STDOUT`, and loaded with psql `\\copy lineitem from \'file\'` into an empty lineitem (schema.sql, with its',
    `primary key) on one PostgreSQL node directly, and through parapool in front of ${distributedNodes} other nodes after`,
    `\`SELECT parapool.distribute_table('lineitem', 'l_orderkey')\` (hash). \`pgbench -i -s ${options.pgbenchScale}\` runs directly against one node and through`,
    'parapool in front of that node (one node, no partition rules); its rows are those of pgbench_accounts. Seconds are the wall-clock time of',
    'psql for COPY and pgbench\'s own "done in" total for pgbench -i; "vs direct" is direct\'s time divided by the row\'s time (for COPY the',
    'ratio of rows/s; above 100 % would be faster than direct). After every load the rows were counted on the nodes themselves: each',
    'distributed load put all rows on the nodes, and each row on the node its placement names.',
    '',
    markdownTable(rows, options, facts),
    '',
    machineLine(facts),
    `Software: ${facts.postgres}; ${facts.psql}; parapool ${facts.parapool} on Node.js ${facts.node}.`,
    '',
    'Set-up: every node is a fresh PostgreSQL server on 127.0.0.1 with fsync, synchronous_commit and full_page_writes off, autovacuum off',
    'and max_wal_size 4GB, and otherwise default settings; a CHECKPOINT on every node precedes each load, and the table is emptied with',
    'TRUNCATE on its nodes between loads. parapool runs as its own process (`node dist/src/cli/main.js start -f parapool.conf`,',
    '`log_min_messages = warning`, otherwise the default configuration).',
    '',
    disturbance(rows, facts),
    '',
    reading(rows, options, facts),
    '',
  ].join('\n');
}

// ---------------------------------------------------------------------------------------------------------------

async function checkpoint(nodes: LocalPostgres[]): Promise<void> {
  // Each load starts with no dirty buffers or WAL owed from the one before, whichever target that was.
  await Promise.all(nodes.map((node) => withClient(node.port, 'CHECKPOINT', (c) => c.query('CHECKPOINT'))));
}

async function truncate(nodes: LocalPostgres[], table: string): Promise<void> {
  await Promise.all(nodes.map((node) => withClient(node.port, `emptying ${table}`, (c) => c.query(`TRUNCATE ${table}`))));
}

/** The settings every benchmark node gets, so that direct and proxied loads differ only in the path the rows take. */
const nodeSettings = {
  // A load's leftovers must not be vacuumed during the next one, nor a checkpoint forced halfway through a load.
  autovacuum: 'off',
  max_wal_size: "'4GB'",
};

async function main(): Promise<number> {
  const options = parseOptions(process.argv.slice(2));
  const binDir = findPostgresBinDir();
  const psql = findClientProgram('psql');
  const pgbench = findClientProgram('pgbench');
  const base = machineFacts(binDir);
  const facts: Facts = { ...base, psql: firstLine(psql, ['--version']), parapool: `${base.parapool}${sourceRevision()}` };

  const dir = makeWorkDir('parapool-load-bench-', options.keep);
  const rows: Row[] = [];
  const file = join(dir, 'lineitem.copy');
  const createLineitem = lineitemTableSql();

  // 1. The source: generated once, so that every load reads byte for byte the same rows.
  say(`generating lineitem at scale factor ${options.sf}`);
  const [source] = await startNodes(binDir, dir, ['source'], nodeSettings);
  await withClient(source.port, 'loading the schema into the source node', (c) => c.query(readFileSync(join(repoRoot, 'fixtures', 'tpch', 'schema.sql'), 'utf8')));
  await withClient(source.port, 'generating lineitem', (c) => c.query(lineitemInsertSql(options.sf)));
  const sourceRows = await countRows(source.port, 'SELECT count(*) FROM lineitem', 'counting the source rows');
  if (sourceRows === 0) throw new StepError(`scale factor ${options.sf} generated no lineitem rows`);
  const exported = await runClient(psql, psqlArgs(source.port, ['COPY lineitem TO STDOUT']), { proxyPid: null, nodes: [], stdoutFile: file, timeoutMs: copyTimeout(sourceRows) });
  if (exported.killed || exported.code !== 0) throw new StepError(describeFailure('exporting lineitem', exported, null, 0));
  const fileBytes = statSync(file).size;
  say(`exported ${sourceRows} rows (${(fileBytes / 2 ** 20).toFixed(0)} MiB) to ${file}`);
  await stopNodes([source]);

  // 2. COPY into one node directly and through parapool into lineitem distributed over four others, taking turns
  // so that a slow spell on the machine falls on both alike.
  {
    const all = await startNodes(binDir, dir, ['direct', ...Array.from({ length: distributedNodes }, (_, i) => `node${i}`)], nodeSettings);
    const [directNode, ...nodes] = all;
    const proxy = await startParapool(dir, 'parapool-copy', nodes.map((n) => n.port));
    await withClient(directNode.port, 'creating lineitem on the direct node', (c) => c.query(createLineitem));
    const setupFrom = proxy.logSize();
    try {
      await withClient(proxy.port, 'creating lineitem through parapool', (c) => c.query(createLineitem));
      await withClient(proxy.port, 'distributing lineitem through parapool', (c) => c.query("SELECT parapool.distribute_table('lineitem', 'l_orderkey')"));
    } catch (error) {
      const logged = proxy.logLinesSince(setupFrom);
      throw new StepError(`${(error as Error).message}${logged.length > 0 ? `\nparapool's log (${proxy.logPath}):\n${logged.slice(-20).join('\n')}` : ''}`);
    }
    // Read from the node itself, so that the proxy's own view of the table cannot hide a misplaced row.
    const placement = await withClient(nodes[0].port, 'reading the placement of lineitem', async (c) => {
      const found = await c.query("SELECT placement FROM parapool.partition_rules WHERE table_name = 'lineitem'");
      return found.rows[0]?.placement as string | null | undefined;
    });
    if (!placement) throw new StepError('parapool.partition_rules on node 0 has no placement for lineitem after distribute_table');

    const directRow: Row = { load: 'copy', target: 'direct, 1 node', rows: sourceRows, runs: [], notes: [] };
    const proxyRow: Row = { load: 'copy', target: `parapool, ${distributedNodes} nodes, hash on l_orderkey`, rows: sourceRows, runs: [], notes: [] };
    let perNode: number[] = [];
    for (let run = 1; run <= options.runs; run++) {
      const label = (target: string) => `${target} (run ${run} of ${options.runs})`;
      await checkpoint(all);
      directRow.runs.push(await timedCopy(psql, directNode.port, file, sourceRows, null, all, label('direct')));
      const loaded = await countRows(directNode.port, 'SELECT count(*) FROM lineitem', 'counting rows on the direct node');
      if (loaded !== sourceRows) throw new StepError(`direct: the node holds ${loaded} lineitem rows after COPY, not ${sourceRows}`);
      await truncate([directNode], 'lineitem');

      await checkpoint(all);
      const logFrom = proxy.logSize();
      proxyRow.runs.push(await timedCopy(psql, proxy.port, file, sourceRows, proxy, all, label(`parapool, ${distributedNodes} nodes`)));
      const note = proxyNote(proxy, logFrom);
      if (note) proxyRow.notes.push(`run ${run}: ${note}`);
      perNode = [];
      for (let i = 0; i < nodes.length; i++) {
        const count = await countRows(nodes[i].port, 'SELECT count(*) FROM lineitem', `counting rows on node ${i}`);
        const misplaced = await countRows(nodes[i].port, `SELECT count(*) FROM lineitem WHERE (${placement}) IS DISTINCT FROM ${i}`, `checking placement on node ${i}`);
        if (misplaced !== 0) throw new StepError(`run ${run}: node ${i} holds ${misplaced} lineitem rows that belong on another node (placement ${placement})`);
        perNode.push(count);
      }
      const total = perNode.reduce((a, b) => a + b, 0);
      say(`rows per node: ${perNode.join(', ')}`);
      if (total !== sourceRows) throw new StepError(`run ${run}: the ${nodes.length} nodes hold ${total} lineitem rows (${perNode.join(' + ')}) after COPY through parapool, not ${sourceRows}`);
      // Emptied on the nodes, not through the proxy: the proxy is what is measured, not what prepares the next load.
      await truncate(nodes, 'lineitem');
    }
    proxyRow.notes.unshift(`rows per node ${perNode.map(thousands).join(' / ')}`);
    rows.push(directRow, proxyRow);
    await proxy.stop();
    await stopNodes(all);
  }

  // 3. pgbench -i directly and through parapool, taking turns on one node: pgbench -i drops its tables first.
  {
    const [node] = await startNodes(binDir, dir, ['pgbench'], nodeSettings);
    const proxy = await startParapool(dir, 'parapool-pgbench', [node.port]);
    const accounts = options.pgbenchScale * 100_000;
    const checkAccounts = async (label: string) => {
      const count = await countRows(node.port, 'SELECT count(*) FROM pgbench_accounts', `${label}: counting pgbench_accounts`);
      if (count !== accounts) throw new StepError(`${label}: the node holds ${count} pgbench_accounts rows after pgbench -i, not ${accounts}`);
    };
    const directRow: Row = { load: 'pgbench', target: 'direct, 1 node', rows: accounts, runs: [], notes: [] };
    const proxyRow: Row = { load: 'pgbench', target: 'parapool, 1 node', rows: accounts, runs: [], notes: [] };
    for (let run = 1; run <= options.runs; run++) {
      const label = (target: string) => `${target} (run ${run} of ${options.runs})`;
      await checkpoint([node]);
      directRow.runs.push(await timedPgbenchInit(pgbench, node.port, options.pgbenchScale, null, [node], label('direct')));
      await checkAccounts(label('direct'));
      await checkpoint([node]);
      const logFrom = proxy.logSize();
      proxyRow.runs.push(await timedPgbenchInit(pgbench, proxy.port, options.pgbenchScale, proxy, [node], label('parapool, 1 node')));
      const note = proxyNote(proxy, logFrom);
      if (note) proxyRow.notes.push(`run ${run}: ${note}`);
      await checkAccounts(label('parapool, 1 node'));
    }
    rows.push(directRow, proxyRow);
    await proxy.stop();
    await stopNodes([node]);
  }

  const text = section(rows, options, facts, fileBytes);
  publish(options.docs, sectionHeading, text);
  return 0;
}

runBenchmark(main);
