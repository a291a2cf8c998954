// The parallel-query benchmark behind `npm run bench`: TPC-H-shaped reads on one PostgreSQL directly, through
// parapool in front of 2 and of 4 nodes, and through PostgreSQL's own sharding (hash partitions that are
// postgres_fdw foreign tables on the same 4 nodes), plus whole tables streamed through the proxy. Every answer is
// compared with direct's before it is timed; a query parapool does not support yet (0A000) is reported as n/a.

import { spawn } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { connect } from 'node:net';
import { join } from 'node:path';
import { loadModule, parseSync } from 'libpg-query';
import { Client, type CustomTypesConfig } from 'pg';
import type { LocalPostgres } from '../src/cluster/local-postgres';
import { findPostgresBinDir } from '../src/cluster/postgres-install';
import {
  busiestOthers, busyThreshold, cpuCount, cpuSnapshot, cpuUse, findClientProgram, integerOption, isFinishing, killGroup, logNote,
  machineFacts, machineLine, makeWorkDir, parseCommonOptions, postmasterPid, processMemory, publish, repoRoot, runBenchmark, say, scaleFactorOption, sleep, sourceRevision,
  startNodes, startParapool, StepError, stopNodes, throwIfFinishing, track, untrack, type CommonOptions, type CpuSnapshot, type CpuUse,
  type MachineFacts, type Server,
} from './bench-support';

const sectionHeading = '## Parallel query';

interface Options extends CommonOptions {
  sf: string;
  runs: number;
  streamRows: number;
}

const usage = `usage: bash bench/run.sh --only parallel [--sf SF] [--runs N] [--stream-rows N] [--docs FILE] [--keep]
  --sf SF            TPC-H scale factor of the generated data (default 1: 6 million lineitem rows; the whole run took 7 minutes on 2 cores)
  --runs N           timed runs of each query (after one warm-up) and of the lineitem stream on each target, taking turns; the median counts (default 3)
  --stream-rows N    rows of the table streamed to measure the proxy's memory (default 10000000)
  --docs FILE        where the results section goes (default docs/benchmarks.md; "-" writes nothing)
  --keep             leave the temporary directory (data directories, configs, logs) in place
`;

function parseOptions(argv: string[]): Options {
  const own = { sf: '1', runs: 3, streamRows: 10_000_000 };
  const common = parseCommonOptions(argv, usage, (arg, value) => {
    switch (arg) {
      case '--sf':
        own.sf = scaleFactorOption(value(), usage);
        return true;
      case '--runs':
        own.runs = integerOption(arg, value(), 1, usage);
        return true;
      case '--stream-rows':
        own.streamRows = integerOption(arg, value(), 1, usage);
        return true;
      default:
        return false;
    }
  });
  return { ...own, ...common };
}

// ---------------------------------------------------------------------------------------------------------------
// What is measured

/**
 * How the tables are laid out, in parapool's rules and in the coordinator's hash partitions alike: orders and
 * lineitem on the order key (co-located), customer on its key, part and partsupp on the part key (co-located),
 * the small tables on every node.
 */
const distributed = [
  { table: 'orders', key: 'o_orderkey', colocateWith: null },
  { table: 'lineitem', key: 'l_orderkey', colocateWith: 'orders' },
  { table: 'customer', key: 'c_custkey', colocateWith: null },
  { table: 'part', key: 'p_partkey', colocateWith: null },
  { table: 'partsupp', key: 'ps_partkey', colocateWith: 'part' },
] as const;
const replicated = ['supplier', 'nation', 'region'] as const;
const allTables = [...distributed.map((d) => d.table), ...replicated];

interface BenchQuery {
  readonly name: string;
  /** The tables read, and whether they are co-located: what decides if parapool's push-down tier can run it. */
  readonly reads: string;
  /** A query of fixtures/corpus/01-tpch.sql by its `-- name:`, or the SQL itself. */
  readonly corpus?: string;
  readonly sql?: string;
}

/**
 * The queries, in report order. The TPC-H ones come from the differential corpus unchanged; the rest are the
 * shapes a merge has to get right (a count, a grouped aggregate, a distinct count, a top-N). q3 and q14 join
 * tables distributed on different keys, which the push-down tier cannot run on the nodes alone.
 */
const queries: readonly BenchQuery[] = [
  { name: 'TPC-H q1', corpus: 'tpch_q01', reads: 'lineitem, 4 groups' },
  { name: 'TPC-H q3', corpus: 'tpch_q03', reads: 'customer ⋈ orders ⋈ lineitem: customer is not co-located' },
  { name: 'TPC-H q6', corpus: 'tpch_q06', reads: 'lineitem, one sum' },
  { name: 'TPC-H q12', corpus: 'tpch_q12', reads: 'orders ⋈ lineitem, co-located on the order key' },
  { name: 'TPC-H q14', corpus: 'tpch_q14', reads: 'lineitem ⋈ part: not co-located' },
  {
    name: 'q18 without customer',
    reads: 'orders ⋈ lineitem, co-located, with IN (lineitem grouped by the order key)',
    sql: `select o_orderkey, o_orderdate, o_totalprice, sum(l_quantity) as sum_qty
from orders, lineitem
where o_orderkey in (select l_orderkey from lineitem group by l_orderkey having sum(l_quantity) > 300)
  and o_orderkey = l_orderkey
group by o_orderkey, o_orderdate, o_totalprice
order by o_totalprice desc, o_orderdate, o_orderkey
limit 100`,
  },
  { name: 'count(*)', reads: 'lineitem', sql: 'select count(*) from lineitem' },
  {
    name: 'group by l_shipmode',
    reads: 'lineitem, 7 groups',
    sql: `select l_shipmode, count(*) as lines, sum(l_quantity) as sum_qty, avg(l_extendedprice) as avg_price
from lineitem group by l_shipmode order by l_shipmode`,
  },
  { name: 'count(distinct l_partkey)', reads: 'lineitem', sql: 'select count(distinct l_partkey) from lineitem' },
  {
    name: 'top 10 by price',
    reads: 'lineitem, ORDER BY ... LIMIT 10',
    sql: 'select l_orderkey, l_linenumber, l_extendedprice from lineitem order by l_extendedprice desc, l_orderkey, l_linenumber limit 10',
  },
];

const distributedNodes = 4;
const fdwFetchSize = 10_000;
/** A query running longer than this on the server is cancelled there and reported as timed out. */
const queryTimeoutMs = 300_000;
/** Measured runs of one query on one target stop at about this much time, after at least one run. */
const cellBudgetMs = 30_000;
/** A warm-up longer than this is the query's only run on that target. */
const longQueryMs = 10_000;

/** The settings every benchmark node gets; the coordinator adds its partitionwise planning. */
const nodeSettings = {
  // Autovacuum would wake up halfway through a measurement after the loads; the loads ANALYZE themselves.
  autovacuum: 'off',
  max_wal_size: "'4GB'",
};
const coordinatorSettings = { ...nodeSettings, enable_partitionwise_aggregate: 'on', enable_partitionwise_join: 'on' };

// ---------------------------------------------------------------------------------------------------------------
// The fixture

function fixture(name: string): string {
  return readFileSync(join(repoRoot, 'fixtures', 'tpch', name), 'utf8');
}

/** The CREATE TABLE statements of fixtures/tpch/schema.sql, by table name. */
function tableStatements(): Map<string, string> {
  const statements = new Map<string, string>();
  for (const match of fixture('schema.sql').matchAll(/CREATE TABLE (\w+) \([\s\S]*?\n\);/g)) statements.set(match[1], match[0]);
  for (const table of allTables) {
    if (!statements.has(table)) throw new StepError(`fixtures/tpch/schema.sql has no CREATE TABLE ${table} statement`);
  }
  return statements;
}

/** The INSERT statements of fixtures/tpch/data.sql at the scale factor, with the table each fills. */
function dataStatements(sf: string): { table: string; sql: string }[] {
  const data = fixture('data.sql');
  if (!data.includes('{{SF}}')) throw new StepError('fixtures/tpch/data.sql has no {{SF}} placeholder');
  return data
    .replace(/\{\{SF\}\}/g, sf)
    .split(/;\s*\n/)
    .map((sql) => ({ table: /^\s*INSERT INTO (\w+)/m.exec(sql)?.[1] ?? '', sql: sql.replace(/^(\s*--.*\n)*/, '').trim() }))
    .filter((s) => s.table !== '');
}

function corpusQuery(name: string): string {
  const text = readFileSync(join(repoRoot, 'fixtures', 'corpus', '01-tpch.sql'), 'utf8');
  for (const part of text.split(/^-- name: */m).slice(1)) {
    const newline = part.indexOf('\n');
    if (part.slice(0, newline).trim() === name) return part.slice(newline + 1).trim().replace(/;\s*$/, '');
  }
  throw new StepError(`fixtures/corpus/01-tpch.sql has no query named ${name}`);
}

/** True when the outermost query has ORDER BY, so that the order of the rows is part of the answer. */
function isOrdered(sql: string): boolean {
  const statement = parseSync(sql).stmts?.[0]?.stmt as Record<string, Record<string, unknown>> | undefined;
  const sort = statement?.SelectStmt?.sortClause;
  return Array.isArray(sort) && sort.length > 0;
}

// ---------------------------------------------------------------------------------------------------------------
// Clients

/** Every value as PostgreSQL's text, so that answers compare exactly and nothing is spent on conversions. */
const textTypes = { getTypeParser: () => (value: string) => value } as unknown as CustomTypesConfig;

async function withClient<T>(port: number, database: string, what: string, body: (client: Client) => Promise<T>): Promise<T> {
  throwIfFinishing();
  const client = new Client({ host: '127.0.0.1', port, user: 'postgres', database, connectionTimeoutMillis: 10_000 });
  try {
    await client.connect();
    return await body(client);
  } catch (error) {
    if (error instanceof StepError) throw error;
    throw new StepError(`${what} (port ${port}, database ${database}): ${(error as Error).message}`);
  } finally {
    await client.end().catch(() => undefined);
  }
}

async function queryOn(port: number, database: string, what: string, sql: string): Promise<string[][]> {
  return withClient(port, database, what, async (c) => (await c.query({ text: sql, rowMode: 'array', types: textTypes })).rows as string[][]);
}

/** Statements through the proxy, with its log lines in the message when one fails. */
async function throughProxy(proxy: Server, what: string, statements: string[]): Promise<void> {
  const from = proxy.logSize();
  try {
    await withClient(proxy.port, 'postgres', what, async (c) => {
      for (const sql of statements) await c.query(sql);
    });
  } catch (error) {
    const logged = proxy.logLinesSince(from);
    throw new StepError(`${(error as Error).message}${logged.length > 0 ? `\nparapool's log (${proxy.logPath}):\n${logged.slice(-20).join('\n')}` : ''}`);
  }
}

interface Endpoint {
  port: number;
  database: string;
}

function psqlArgs(to: Endpoint, command: string): string[] {
  return ['-X', '-q', '-v', 'ON_ERROR_STOP=1', '-h', '127.0.0.1', '-p', String(to.port), '-U', 'postgres', '-d', to.database, '-c', command];
}

/**
 * Copies the rows of `select` on one server into `table` on another: psql's COPY TO STDOUT piped into psql's
 * COPY FROM STDIN. Returns the number of rows copied; throws when either side fails.
 */
function copyRows(psql: string, from: Endpoint, select: string, to: Endpoint, table: string): Promise<number> {
  if (isFinishing()) return Promise.reject(new StepError('stopping'));
  const env = { ...process.env, PGPASSWORD: '', PGOPTIONS: '', PGCONNECT_TIMEOUT: '10' };
  return new Promise((resolveCopy, reject) => {
    const reader = spawn(psql, psqlArgs(from, `COPY (${select}) TO STDOUT`), { detached: true, stdio: ['ignore', 'pipe', 'pipe'], env });
    const writer = spawn(psql, ['-X', '-v', 'ON_ERROR_STOP=1', '-h', '127.0.0.1', '-p', String(to.port), '-U', 'postgres', '-d', to.database, '-c', `COPY ${table} FROM STDIN`], {
      detached: true,
      stdio: ['pipe', 'pipe', 'pipe'],
      env,
    });
    track(reader);
    track(writer);
    let readerErr = '';
    let writerOut = '';
    let writerErr = '';
    reader.stderr!.on('data', (d) => (readerErr += d));
    writer.stdout!.on('data', (d) => (writerOut += d));
    writer.stderr!.on('data', (d) => (writerErr += d));
    writer.stdin!.on('error', () => undefined); // the writer failed; its exit status says so
    reader.stdout!.pipe(writer.stdin!);
    const codes: { reader?: number | null; writer?: number | null } = {};
    const settle = () => {
      if (!('reader' in codes) || !('writer' in codes)) return;
      const what = `copying ${table} from port ${from.port} to port ${to.port} (${to.database})`;
      if (codes.reader !== 0) return reject(new StepError(`${what}: reading failed (exit ${codes.reader}): ${readerErr.trim()}`));
      const copied = /COPY (\d+)/.exec(writerOut);
      if (codes.writer !== 0 || !copied) return reject(new StepError(`${what}: writing failed (exit ${codes.writer}): ${writerErr.trim() || writerOut.trim()}`));
      resolveCopy(Number(copied[1]));
    };
    for (const [name, child] of [['reader', reader], ['writer', writer]] as const) {
      child.on('error', (error) => {
        untrack(child);
        codes[name] = -1;
        if (name === 'reader') readerErr += error.message;
        else writerErr += error.message;
        if (name === 'reader') killGroup(writer, 'SIGKILL'); // the writer must not commit half a table
        settle();
      });
      child.on('close', (code) => {
        untrack(child);
        codes[name] = code;
        if (name === 'reader' && code !== 0) killGroup(writer, 'SIGKILL');
        settle();
      });
    }
  });
}

/** Runs the tasks, at most `width` at a time; returns their results in task order. */
async function inParallel<T>(tasks: (() => Promise<T>)[], width: number): Promise<T[]> {
  const results: T[] = new Array(tasks.length);
  let next = 0;
  const worker = async () => {
    while (next < tasks.length) {
      const i = next++;
      results[i] = await tasks[i]();
    }
  };
  await Promise.all(Array.from({ length: Math.min(width, tasks.length) }, worker));
  return results;
}

const seconds = (fromMs: number) => (Date.now() - fromMs) / 1000;

/**
 * Stops nodes and waits until their postmasters are reaped: a stopped postmaster is reaped by init, whose CPU
 * accounting then takes on the postmaster's whole lifetime, which would count as other work during the next run.
 */
async function stopAndSettle(nodes: LocalPostgres[]): Promise<void> {
  const pids = nodes.map(postmasterPid).filter((pid) => pid > 0);
  await stopNodes(nodes);
  const deadline = Date.now() + 15_000;
  while (pids.some((pid) => existsSync(`/proc/${pid}`)) && Date.now() < deadline) await sleep(100);
}

// ---------------------------------------------------------------------------------------------------------------
// Set-up of the four targets

/** The reference: the whole data set generated on one node. Returns each table's row count. */
async function generateReference(node: LocalPostgres, options: Options, schema: Map<string, string>): Promise<Map<string, number>> {
  await withClient(node.port, 'postgres', 'creating the schema on the direct node', async (c) => {
    for (const table of allTables) await c.query(schema.get(table)!);
    for (const { table, sql } of dataStatements(options.sf)) {
      const started = Date.now();
      await c.query(sql);
      say(`generated ${table} in ${seconds(started).toFixed(1)} s`);
    }
    await c.query('ANALYZE');
  });
  const counts = new Map<string, number>();
  const rows = await queryOn(node.port, 'postgres', 'counting the rows', allTables.map((t) => `SELECT '${t}', count(*) FROM ${t}`).join(' UNION ALL '));
  for (const [table, count] of rows) counts.set(table, Number(count));
  if (!counts.get('lineitem')) throw new StepError(`scale factor ${options.sf} generated no lineitem rows`);
  return counts;
}

/**
 * A parapool cluster: the tables are created and their rules declared through the proxy while they are empty,
 * then each node receives from the direct node exactly the rows its rule places there (filtered by the rule's own
 * placement expression, read back from parapool.partition_rules), and the placement is checked on every node.
 */
async function setUpParapool(psql: string, proxy: Server, nodes: LocalPostgres[], source: Endpoint, schema: Map<string, string>, counts: Map<string, number>): Promise<void> {
  await throughProxy(proxy, 'creating the tables through parapool', allTables.map((t) => schema.get(t)!));
  await throughProxy(proxy, 'declaring the partition rules through parapool', [
    ...distributed.map((d) => `SELECT parapool.distribute_table('${d.table}', '${d.key}'${d.colocateWith ? `, colocate_with => '${d.colocateWith}'` : ''})`),
    ...replicated.map((t) => `SELECT parapool.replicate_table('${t}')`),
  ]);
  // Read from a node itself, so that the proxy's own view of the rules cannot hide a misplaced row.
  const placements = new Map<string, string>();
  for (const [table, placement] of await queryOn(nodes[0].port, 'postgres', 'reading parapool.partition_rules', "SELECT table_name, placement FROM parapool.partition_rules WHERE distribution = 'distributed'")) {
    placements.set(table, placement);
  }
  for (const d of distributed) {
    if (!placements.get(d.table)) throw new StepError(`parapool.partition_rules on node 0 has no placement for ${d.table} after distribute_table`);
  }
  const tasks: (() => Promise<number>)[] = [];
  // The largest first, so that the two copies running at a time end together.
  for (const table of [...allTables].sort((a, b) => counts.get(b)! - counts.get(a)!)) {
    nodes.forEach((node, i) => {
      const placement = placements.get(table);
      const select = placement ? `SELECT * FROM ${table} WHERE (${placement}) = ${i}` : `SELECT * FROM ${table}`;
      tasks.push(() => copyRows(psql, source, select, { port: node.port, database: 'postgres' }, table));
    });
  }
  await inParallel(tasks, 2);
  await inParallel(nodes.map((node, i) => () => queryOn(node.port, 'postgres', `ANALYZE on node ${i}`, 'ANALYZE')), 2);
  for (const table of allTables) {
    const placement = placements.get(table);
    let total = 0;
    for (let i = 0; i < nodes.length; i++) {
      const [[count, misplaced]] = await queryOn(nodes[i].port, 'postgres', `checking ${table} on node ${i}`,
        `SELECT count(*), ${placement ? `count(*) FILTER (WHERE (${placement}) IS DISTINCT FROM ${i})` : '0'} FROM ${table}`);
      if (Number(misplaced) !== 0) throw new StepError(`node ${i} holds ${misplaced} ${table} rows that belong on another node (placement ${placement})`);
      if (!placement && Number(count) !== counts.get(table)) throw new StepError(`node ${i} holds ${count} rows of the replicated ${table}, not ${counts.get(table)}`);
      total += Number(count);
    }
    if (placement && total !== counts.get(table)) throw new StepError(`the ${nodes.length} nodes hold ${total} ${table} rows, not ${counts.get(table)}`);
  }
}

/**
 * PostgreSQL's own sharding: on the coordinator, each distributed table is PARTITION BY HASH on the same key with
 * 4 partitions, each a postgres_fdw foreign table on one node (database pgshard there, filled with the rows of
 * PostgreSQL's own hash bounds, which differ from parapool's placement); the small tables are local copies.
 * Returns why the target is missing, or null.
 */
async function setUpFdw(psql: string, coordinator: LocalPostgres, nodes: LocalPostgres[], source: Endpoint, schema: Map<string, string>, counts: Map<string, number>): Promise<string | null> {
  try {
    await queryOn(coordinator.port, 'postgres', 'CREATE EXTENSION postgres_fdw', 'CREATE EXTENSION postgres_fdw');
  } catch (error) {
    const message = (error as Error).message;
    say(`PostgreSQL's own sharding is left out: ${message}`);
    return `postgres_fdw is not installed (${message.replace(/^.*?: /, '').slice(0, 120)})`;
  }
  const shard = 'pgshard';
  for (let i = 0; i < nodes.length; i++) {
    await queryOn(nodes[i].port, 'postgres', `creating database ${shard} on node ${i}`, `CREATE DATABASE ${shard}`);
    await withClient(nodes[i].port, shard, `creating the tables on node ${i}`, async (c) => {
      for (const d of distributed) await c.query(schema.get(d.table)!);
    });
  }
  // satisfies_hash_partition() needs a hash-partitioned table with the key's type: an empty one on the source.
  const shapes = [...new Set(distributed.map((d) => new RegExp(`^\\s*${d.key}\\s+(\\w+)`, 'm').exec(schema.get(d.table)!)?.[1] ?? '?'))];
  if (shapes.length !== 1) throw new StepError(`the distribution keys have several types (${shapes.join(', ')}); one shape table per type is not written yet`);
  await queryOn(source.port, source.database, 'creating the hash shape table', `CREATE TABLE parapool_bench_hash_shape (k ${shapes[0]}) PARTITION BY HASH (k)`);
  const tasks: (() => Promise<number>)[] = [];
  for (const d of [...distributed].sort((a, b) => counts.get(b.table)! - counts.get(a.table)!)) {
    nodes.forEach((node, i) => {
      const select = `SELECT * FROM ${d.table} WHERE satisfies_hash_partition('parapool_bench_hash_shape'::regclass, ${nodes.length}, ${i}, ${d.key})`;
      tasks.push(() => copyRows(psql, source, select, { port: node.port, database: shard }, d.table));
    });
  }
  for (const table of replicated) tasks.push(() => copyRows(psql, source, `SELECT * FROM ${table}`, { port: coordinator.port, database: 'postgres' }, table));
  await withClient(coordinator.port, 'postgres', 'creating the tables on the coordinator', async (c) => {
    for (let i = 0; i < nodes.length; i++) {
      await c.query(`CREATE SERVER shard${i} FOREIGN DATA WRAPPER postgres_fdw OPTIONS (host '127.0.0.1', port '${nodes[i].port}', dbname '${shard}', async_capable 'true', fetch_size '${fdwFetchSize}', use_remote_estimate 'true')`);
      await c.query(`CREATE USER MAPPING FOR postgres SERVER shard${i} OPTIONS (user 'postgres')`);
    }
    for (const d of distributed) {
      // No primary key: a partitioned table's unique index cannot cover foreign partitions. The nodes have theirs.
      const columns = schema.get(d.table)!.replace(/,\s*PRIMARY KEY \([^)]*\)/, '').replace(/\n\);$/, `\n) PARTITION BY HASH (${d.key})`);
      await c.query(columns);
      for (let i = 0; i < nodes.length; i++) {
        await c.query(`CREATE FOREIGN TABLE ${d.table}_p${i} PARTITION OF ${d.table} FOR VALUES WITH (MODULUS ${nodes.length}, REMAINDER ${i}) SERVER shard${i} OPTIONS (schema_name 'public', table_name '${d.table}')`);
      }
    }
    for (const table of replicated) await c.query(schema.get(table)!);
  });
  const copied = await inParallel(tasks, 2);
  await queryOn(source.port, source.database, 'dropping the hash shape table', 'DROP TABLE parapool_bench_hash_shape');
  // Each node's share is exactly what its remainder selects, so the shares must add up to the table.
  let t = 0;
  for (const d of [...distributed].sort((a, b) => counts.get(b.table)! - counts.get(a.table)!)) {
    const total = copied.slice(t, t + nodes.length).reduce((a, b) => a + b, 0);
    t += nodes.length;
    if (total !== counts.get(d.table)) throw new StepError(`the hash partitions of ${d.table} received ${total} rows, not ${counts.get(d.table)}`);
  }
  await inParallel(nodes.map((node, i) => () => queryOn(node.port, shard, `ANALYZE on node ${i}`, 'ANALYZE')), 2);
  // A database-wide ANALYZE skips foreign tables: the partitions and their parents are named. postgres_fdw reads
  // each foreign table whole to sample it.
  const analyzed = [...replicated, ...distributed.flatMap((d) => [d.table, ...nodes.map((_, i) => `${d.table}_p${i}`)])];
  await queryOn(coordinator.port, 'postgres', 'ANALYZE on the coordinator', `ANALYZE ${analyzed.join(', ')}`);
  for (const table of allTables) {
    const [[count]] = await queryOn(coordinator.port, 'postgres', `counting ${table} on the coordinator`, `SELECT count(*) FROM ${table}`);
    if (Number(count) !== counts.get(table)) throw new StepError(`the coordinator sees ${count} ${table} rows, not ${counts.get(table)}`);
  }
  return null;
}

// ---------------------------------------------------------------------------------------------------------------
// Queries

type TargetKey = 'direct' | 'parapool2' | 'parapool4' | 'fdw';

interface Target {
  key: TargetKey;
  label: string;
  port: number;
  proxy: Server | null;
  /** Why the target cannot run at all, or null. */
  missing: string | null;
  client: Client | null;
}

const targetLabels: Record<TargetKey, string> = {
  direct: 'direct',
  parapool2: 'parapool, 2 nodes',
  parapool4: 'parapool, 4 nodes',
  fdw: 'PostgreSQL FDW, 4 nodes',
};

/** For the notes, where several targets may share one. */
const shortLabels: Record<TargetKey, string> = { direct: 'direct', parapool2: 'parapool-2', parapool4: 'parapool-4', fdw: 'FDW' };

interface Answer {
  ms: number;
  rows: string[][];
  error: { code: string; message: string } | null;
  cpu: CpuUse;
  /** Share of the machine's CPU that other processes used during the run. */
  foreign: number;
  before: CpuSnapshot;
  after: CpuSnapshot;
}

async function connectTarget(target: Target): Promise<void> {
  const client = new Client({ host: '127.0.0.1', port: target.port, user: 'postgres', database: 'postgres', connectionTimeoutMillis: 10_000 });
  client.on('error', () => undefined); // a dropped connection is reported by the query that meets it
  await client.connect();
  // Through the proxy the setting reaches the nodes, each of which runs a part of the query.
  await client.query(`SET statement_timeout = ${queryTimeoutMs}`).catch(() => undefined);
  target.client = client;
}

function dropClient(target: Target): void {
  const client = target.client as unknown as { connection?: { stream?: { destroy(): void } } } | null;
  client?.connection?.stream?.destroy();
  target.client = null;
}

async function runQuery(target: Target, sql: string, postmasters: number[], cores: number): Promise<Answer> {
  throwIfFinishing();
  if (!target.client) {
    try {
      await connectTarget(target);
    } catch (e) {
      dropClient(target);
      const none: CpuUse = { client: 0, proxy: 0, postgres: 0, other: 0 };
      const snapshot = cpuSnapshot(null, []);
      return { ms: 0, rows: [], error: { code: 'no connection', message: (e as Error).message }, cpu: none, foreign: 0, before: snapshot, after: snapshot };
    }
  }
  const client = target.client!;
  const before = cpuSnapshot(target.proxy?.pid ?? null, postmasters);
  const started = process.hrtime.bigint();
  let timer: NodeJS.Timeout | undefined;
  let rows: string[][] = [];
  let error: Answer['error'] = null;
  try {
    const guard = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(Object.assign(new Error(`no answer within ${(queryTimeoutMs + 30_000) / 1000} s`), { code: 'timeout' })), queryTimeoutMs + 30_000);
    });
    const result = await Promise.race([client.query({ text: sql, rowMode: 'array', types: textTypes }), guard]);
    rows = result.rows as string[][];
  } catch (e) {
    const failure = e as { code?: string; message: string };
    error = { code: failure.code ?? 'no SQLSTATE', message: failure.message };
    // After an error the server may have closed the connection (the proxy does after an internal error), and
    // a client-side timeout leaves it busy: the next query connects afresh rather than meet a dead connection.
    dropClient(target);
  } finally {
    clearTimeout(timer);
  }
  const ms = Number(process.hrtime.bigint() - started) / 1e6;
  const after = cpuSnapshot(target.proxy?.pid ?? null, postmasters);
  const cpu = cpuUse(before, after);
  return { ms, rows, error, cpu, foreign: Math.min(1, cpu.other / ((ms / 1000) * cores)), before, after };
}

interface Cell {
  /** The measured runs (not the warm-up). */
  runs: Answer[];
  /** Shown instead of a time: n/a, an error, a wrong answer. */
  instead: string | null;
  notes: string[];
}

interface QueryRow {
  query: BenchQuery;
  resultRows: number;
  cells: Map<TargetKey, Cell>;
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor((sorted.length - 1) / 2)];
}

function medianAnswer(cell: Cell): Answer | null {
  if (cell.instead !== null || cell.runs.length === 0) return null;
  const ms = median(cell.runs.map((r) => r.ms));
  return cell.runs.find((r) => r.ms === ms)!;
}

/** Null when the answers agree; otherwise where they first differ. */
function difference(expected: string[][], actual: string[][], ordered: boolean): string | null {
  if (expected.length !== actual.length) return `${actual.length} rows where direct returns ${expected.length}`;
  const left = expected.map((r) => JSON.stringify(r));
  const right = actual.map((r) => JSON.stringify(r));
  if (!ordered) {
    left.sort();
    right.sort();
  }
  const i = left.findIndex((row, n) => row !== right[n]);
  return i === -1 ? null : `row ${i + 1} is ${right[i]} where direct returns ${left[i]}`;
}

/** An error for the notes: its SQLSTATE and the first line of its message. */
function errorNote(error: NonNullable<Answer['error']>): string {
  return `${error.code} ${error.message.split('\n')[0].slice(0, 160)}`;
}

function failureText(error: NonNullable<Answer['error']>): string {
  if (error.code === '0A000') return 'n/a (0A000)';
  if (error.code === '57014') return 'timed out';
  return `error (${error.code})`;
}

async function measureQueries(targets: Target[], options: Options, postmasters: number[], cores: number): Promise<{ rows: QueryRow[]; wrong: string[] }> {
  const rows: QueryRow[] = [];
  const wrong: string[] = [];
  const live = targets.filter((t) => t.missing === null);
  for (const query of queries) {
    const sql = query.sql ?? corpusQuery(query.corpus!);
    const ordered = isOrdered(sql);
    const cells = new Map<TargetKey, Cell>(targets.map((t) => [t.key, { runs: [], instead: t.missing ? 'n/a' : null, notes: [] }]));
    const runsOf = new Map<TargetKey, number>();
    let expected: string[][] = [];
    // The warm-up: every answer is checked against direct's before anything is timed.
    for (const target of live) {
      const cell = cells.get(target.key)!;
      const logFrom = target.proxy?.logSize() ?? 0;
      const answer = await runQuery(target, sql, postmasters, cores);
      if (answer.error) {
        cell.instead = failureText(answer.error);
        cell.notes.push(errorNote(answer.error));
        say(`${query.name} on ${target.label}: ${cell.instead}: ${answer.error.message.split('\n')[0]}`);
        if (target.key === 'direct') throw new StepError(`${query.name} fails on the direct node: ${answer.error.message}`);
        continue;
      }
      if (target.key === 'direct') expected = answer.rows;
      const differs = difference(expected, answer.rows, ordered);
      if (differs) {
        cell.instead = 'wrong answer';
        cell.notes.push(differs.slice(0, 300));
        wrong.push(`${query.name} on ${target.label}: ${differs}`);
        say(`${query.name} on ${target.label}: WRONG ANSWER: ${differs}`);
        continue;
      }
      const printed = target.proxy ? logNote(target.label, query.name, target.proxy.logLinesSince(logFrom)) : '';
      if (printed) cell.notes.push(printed);
      // A query many times slower than direct is measured less often: its ratio needs no precise median.
      const runs = answer.ms > longQueryMs ? 0 : Math.max(1, Math.min(options.runs, Math.floor(cellBudgetMs / Math.max(answer.ms, 1))));
      if (runs === 0) {
        cell.runs.push(answer);
        cell.notes.push('one run, the warm-up');
      } else if (runs < options.runs) {
        cell.notes.push(`${runs} run${runs === 1 ? '' : 's'} after a warm-up of ${(answer.ms / 1000).toFixed(0)} s`);
      }
      runsOf.set(target.key, runs);
      say(`${query.name} on ${target.label}: warm-up ${answer.ms.toFixed(0)} ms, ${answer.rows.length} rows`);
    }
    // The measured runs, targets taking turns, so that a slow spell on the machine falls on all of them alike.
    for (let run = 1; run <= options.runs; run++) {
      for (const target of live) {
        const cell = cells.get(target.key)!;
        if (cell.instead !== null || run > (runsOf.get(target.key) ?? 0)) continue;
        const answer = await runQuery(target, sql, postmasters, cores);
        if (answer.error) {
          cell.instead = failureText(answer.error);
          cell.notes.push(`run ${run}: ${errorNote(answer.error)}`);
          say(`${query.name} on ${target.label}, run ${run}: ${answer.error.message}`);
          continue;
        }
        const differs = difference(expected, answer.rows, ordered);
        if (differs) {
          cell.instead = 'wrong answer';
          cell.notes.push(`run ${run}: ${differs}`.slice(0, 300));
          wrong.push(`${query.name} on ${target.label}, run ${run}: ${differs}`);
          continue;
        }
        cell.runs.push(answer);
      }
    }
    for (const target of live) {
      const cell = cells.get(target.key)!;
      const m = medianAnswer(cell);
      if (m && m.foreign >= busyThreshold) {
        say(`${query.name} on ${target.label}: other processes used ${(m.foreign * 100).toFixed(0)} % of the CPU, most of all ${busiestOthers(m.before, m.after)}`);
      }
    }
    const summary = targets.map((t) => {
      const m = medianAnswer(cells.get(t.key)!);
      return `${t.label} ${m ? `${m.ms.toFixed(0)} ms` : cells.get(t.key)!.instead}`;
    });
    say(`${query.name}: ${summary.join(', ')}`);
    rows.push({ query, resultRows: expected.length, cells });
  }
  return { rows, wrong };
}

// ---------------------------------------------------------------------------------------------------------------
// Streaming: a raw protocol client that counts DataRow messages without decoding them, so that the client costs
// as little as a client can and the measurement is of the servers and the proxy.

interface Streamed {
  rows: number;
  /** Bytes of the DataRow messages. */
  bytes: number;
  seconds: number;
  error: { code: string; message: string } | null;
}

function frame(type: string, body: Buffer): Buffer {
  const header = Buffer.alloc(5);
  header.write(type, 0, 'latin1');
  header.writeInt32BE(body.length + 4, 1);
  return Buffer.concat([header, body]);
}

function errorFields(body: Buffer): { code: string; message: string } {
  const fields = new Map<string, string>();
  let i = 0;
  while (i < body.length && body[i] !== 0) {
    const end = body.indexOf(0, i + 1);
    fields.set(String.fromCharCode(body[i]), body.toString('utf8', i + 1, end));
    i = end + 1;
  }
  return { code: fields.get('C') ?? '', message: fields.get('M') ?? '' };
}

/** Runs one query over the simple protocol on a connection of its own and counts the rows it returns. */
function streamQuery(port: number, sql: string, timeoutMs: number): Promise<Streamed> {
  return new Promise((resolveStream, reject) => {
    const socket = connect({ host: '127.0.0.1', port });
    socket.setNoDelay(true);
    const params = Buffer.from(['user', 'postgres', 'database', 'postgres', 'application_name', 'parapool-bench'].map((p) => `${p}\0`).join('') + '\0', 'utf8');
    const startup = Buffer.alloc(8);
    startup.writeInt32BE(8 + params.length, 0);
    startup.writeInt32BE(196608, 4);
    socket.write(Buffer.concat([startup, params]));
    let querying = false;
    let settled = false;
    let started = 0n;
    let rows = 0;
    let bytes = 0;
    let error: Streamed['error'] = null;
    let tag = '';
    const header = Buffer.alloc(5);
    let headerFill = 0;
    let remaining = 0;
    let body: Buffer[] | null = null;
    const timer = setTimeout(() => fail(new StepError(`streaming "${sql}" from port ${port}: no end within ${timeoutMs / 1000} s`)), timeoutMs);
    const fail = (e: Error) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      socket.destroy();
      reject(e);
    };
    const message = (type: number, payload: Buffer) => {
      switch (type) {
        case 0x52: // R: authentication
          if (payload.readInt32BE(0) !== 0) fail(new StepError(`port ${port} asks for authentication method ${payload.readInt32BE(0)}; the benchmark's servers trust it`));
          break;
        case 0x45: // E
          if (!querying) return fail(new StepError(`port ${port} refused the connection: ${errorFields(payload).message}`));
          error = errorFields(payload);
          break;
        case 0x43: // C
          tag = payload.toString('utf8', 0, payload.length - 1);
          break;
        case 0x5a: // Z: ready for query
          if (!querying) {
            querying = true;
            started = process.hrtime.bigint();
            socket.write(frame('Q', Buffer.from(`${sql}\0`, 'utf8')));
            break;
          }
          settled = true;
          clearTimeout(timer);
          socket.end(frame('X', Buffer.alloc(0)));
          if (!error && tag !== `SELECT ${rows}`) error = { code: 'bench', message: `the command tag says "${tag}" after ${rows} rows` };
          resolveStream({ rows, bytes, seconds: Number(process.hrtime.bigint() - started) / 1e9, error });
          break;
        default: // S, K, N, T and the rest: nothing to do
      }
    };
    socket.on('data', (chunk: Buffer) => {
      let i = 0;
      while (i < chunk.length && !settled) {
        if (headerFill < 5) {
          const take = Math.min(5 - headerFill, chunk.length - i);
          chunk.copy(header, headerFill, i, i + take);
          headerFill += take;
          i += take;
          if (headerFill < 5) break;
          remaining = header.readInt32BE(1) - 4;
          // N.B. DataRows are counted and skipped, never copied: that is what keeps the client cheap.
          if (header[0] === 0x44) {
            rows++;
            bytes += remaining + 5;
            body = null;
          } else {
            body = [];
          }
        } else {
          const take = Math.min(remaining, chunk.length - i);
          if (body) body.push(chunk.subarray(i, i + take));
          remaining -= take;
          i += take;
        }
        if (headerFill === 5 && remaining === 0) {
          if (body) message(header[0], Buffer.concat(body));
          headerFill = 0;
        }
      }
    });
    // A connection lost once the query was sent is the query's failure, reported in its row; before, the run's.
    const lost = (why: string) => {
      if (!querying) return fail(new StepError(`streaming from port ${port}: ${why}`));
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      socket.destroy();
      const message = `${error ? `${error.message}; then ` : ''}the connection was lost after ${rows} rows (${why})`;
      resolveStream({ rows, bytes, seconds: Number(process.hrtime.bigint() - started) / 1e9, error: { code: error?.code ?? 'connection lost', message } });
    };
    socket.on('error', (e) => lost(e.message));
    socket.on('close', () => lost('closed by the server'));
  });
}

interface StreamRun {
  streamed: Streamed;
  cpu: CpuUse;
  foreign: number;
}

interface StreamRow {
  table: string;
  target: Target;
  runs: StreamRun[];
  instead: string | null;
  notes: string[];
  /** The resident memory of the proxy, started afresh for these streams, before the first and at its peak, in KiB. */
  memory: { beforeKiB: number; peakKiB: number } | null;
}

async function streamOnce(target: Target, table: string, expectedRows: number, postmasters: number[], cores: number): Promise<StreamRun> {
  throwIfFinishing();
  const before = cpuSnapshot(target.proxy?.pid ?? null, postmasters);
  const streamed = await streamQuery(target.port, `SELECT * FROM ${table}`, 600_000 + expectedRows / 10);
  const cpu = cpuUse(before, cpuSnapshot(target.proxy?.pid ?? null, postmasters));
  if (!streamed.error && streamed.rows !== expectedRows) streamed.error = { code: 'bench', message: `${streamed.rows} rows where ${table} has ${expectedRows}` };
  return { streamed, cpu, foreign: Math.min(1, cpu.other / (streamed.seconds * cores)) };
}

async function measureStreams(rows: StreamRow[], expectedRows: number, runs: number, postmasters: number[], cores: number): Promise<void> {
  for (let run = 1; run <= runs; run++) {
    for (const row of rows) {
      if (row.instead !== null) continue;
      const result = await streamOnce(row.target, row.table, expectedRows, postmasters, cores);
      const e = result.streamed.error;
      if (e) {
        row.instead = e.code === 'bench' ? 'wrong answer' : failureText(e);
        row.notes.push(e.code === 'bench' ? e.message : errorNote(e));
        say(`SELECT * FROM ${row.table} on ${row.target.label}: ${row.instead}: ${e.message}`);
        continue;
      }
      say(`SELECT * FROM ${row.table} on ${row.target.label} (run ${run} of ${runs}): ${result.streamed.seconds.toFixed(2)} s, ${(result.streamed.rows / result.streamed.seconds).toFixed(0)} rows/s`);
      row.runs.push(result);
    }
  }
}

function medianStream(row: StreamRow): StreamRun | null {
  if (row.instead !== null || row.runs.length === 0) return null;
  const s = median(row.runs.map((r) => r.streamed.seconds));
  return row.runs.find((r) => r.streamed.seconds === s)!;
}

// ---------------------------------------------------------------------------------------------------------------
// Report

interface Facts extends MachineFacts {
  fdw: string;
}

interface Timings {
  generate: number;
  parapool2: number;
  parapool4: number;
  fdw: number;
  total: number;
}

const thousands = (n: number) => Math.round(n).toLocaleString('en-US');
const percent = (x: number) => `${(x * 100).toFixed(0)} %`;
const mib = (kib: number) => `${(kib / 1024).toFixed(0)} MiB`;
const cell = (text: string) => text.replace(/\|/g, '\\|');

function duration(s: number): string {
  return s < 120 ? `${s.toFixed(0)} s` : `${Math.floor(s / 60)} min ${(s % 60).toFixed(0)} s`;
}

function msText(ms: number): string {
  return ms >= 100 ? thousands(ms) : ms.toFixed(1);
}

function queryTable(rows: QueryRow[], targets: Target[]): string {
  const others = targets.filter((t) => t.key !== 'direct');
  const lines = [
    `| query | reads | rows | direct ms | ${others.map((t) => `${t.label} ms | vs direct`).join(' | ')} | notes |`,
    `| --- | --- | ---: | ---: | ${others.map(() => '---: | ---:').join(' | ')} | --- |`,
  ];
  for (const row of rows) {
    const direct = medianAnswer(row.cells.get('direct')!);
    const time = (c: Cell) => {
      const m = medianAnswer(c);
      return m ? `${msText(m.ms)}${m.foreign >= busyThreshold ? ' *' : ''}` : c.instead ?? '';
    };
    const parts = [row.query.name, row.query.reads, thousands(row.resultRows), time(row.cells.get('direct')!)];
    for (const t of others) {
      const c = row.cells.get(t.key)!;
      const m = medianAnswer(c);
      parts.push(time(c), m && direct ? percent(direct.ms / m.ms) : '');
    }
    // The same note for several targets (parapool's 0A000 message, typically) is given once, naming them all.
    const notes = new Map<string, string[]>();
    const spreads: string[] = [];
    for (const t of targets) {
      const c = row.cells.get(t.key)!;
      for (const note of c.notes) notes.set(note, [...(notes.get(note) ?? []), shortLabels[t.key]]);
      const times = c.runs.map((r) => r.ms);
      if (c.instead === null && times.length > 1 && Math.max(...times) > Math.min(...times) * 1.2) {
        spreads.push(`${shortLabels[t.key]} ${msText(Math.min(...times))} to ${msText(Math.max(...times))}`);
      }
    }
    const texts = [...notes].map(([note, who]) => `${who.join(', ')}: ${note}`);
    if (spreads.length > 0) texts.push(`runs ranged over more than 20 %: ${spreads.join(', ')} ms`);
    parts.push(texts.join('; '));
    lines.push(`| ${parts.map(cell).join(' | ')} |`);
  }
  return lines.join('\n');
}

function streamTable(rows: StreamRow[]): string {
  const lines = [
    '| stream | target | rows | seconds | rows/s | vs direct | MB/s | CPU s: client / proxy / PostgreSQL | proxy memory | notes |',
    '| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |',
  ];
  for (const row of rows) {
    const m = medianStream(row);
    const direct = rows.find((r) => r.table === row.table && r.target.key === 'direct');
    const d = direct ? medianStream(direct) : null;
    const memory = row.memory ? `${mib(row.memory.beforeKiB)} idle, peak ${mib(row.memory.peakKiB)}` : '';
    const times = row.runs.map((r) => r.streamed.seconds);
    const notes = [
      ...row.notes,
      row.instead === null && times.length > 1 ? `${times.length} runs: ${Math.min(...times).toFixed(2)} to ${Math.max(...times).toFixed(2)} s` : '',
    ].filter((n) => n !== '');
    const parts = [
      `\`SELECT * FROM ${row.table}\``,
      row.target.label,
      m ? thousands(m.streamed.rows) : '',
      m ? `${m.streamed.seconds.toFixed(2)}${m.foreign >= busyThreshold ? ' *' : ''}` : row.instead ?? '',
      m ? thousands(m.streamed.rows / m.streamed.seconds) : '',
      m && d ? percent(d.streamed.seconds / m.streamed.seconds) : '',
      m ? (m.streamed.bytes / m.streamed.seconds / 1e6).toFixed(0) : '',
      m ? `${m.cpu.client.toFixed(1)} / ${m.cpu.proxy.toFixed(1)} / ${m.cpu.postgres.toFixed(1)}` : '',
      row.target.proxy && m ? memory : '',
      notes.join('; '),
    ];
    lines.push(`| ${parts.map(cell).join(' | ')} |`);
  }
  return lines.join('\n');
}

function disturbance(queryRows: QueryRow[], streamRows: StreamRow[]): string {
  const shares = [
    ...queryRows.flatMap((r) => [...r.cells.values()].map(medianAnswer).filter((a): a is Answer => a !== null).map((a) => a.foreign)),
    ...streamRows.map(medianStream).filter((s): s is StreamRun => s !== null).map((s) => s.foreign),
  ];
  if (shares.length === 0) return '';
  const worst = Math.max(...shares);
  const text = `Processes outside the benchmark used at most ${(worst * 100).toFixed(1)} % of the machine's CPU during a median run`;
  return worst >= busyThreshold
    ? `${text}: times marked * are of runs during which other processes used ${percent(busyThreshold)} of the CPU or more, and understate what this machine can do.`
    : `${text}, so the medians were not disturbed by other work.`;
}

function ratioOf(row: QueryRow, key: TargetKey): number | null {
  const d = medianAnswer(row.cells.get('direct')!);
  const t = medianAnswer(row.cells.get(key)!);
  return d && t ? d.ms / t.ms : null;
}

function geometricMean(values: number[]): number {
  return Math.exp(values.reduce((a, v) => a + Math.log(v), 0) / values.length);
}

function targetSummary(queryRows: QueryRow[], t: Target): string {
  if (t.missing) return `not measured, ${t.missing}`;
  const answered = queryRows.filter((r) => ratioOf(r, t.key) !== null);
  const notSupported = queryRows.filter((r) => r.cells.get(t.key)!.instead === 'n/a (0A000)');
  const failed = queryRows.filter((r) => {
    const instead = r.cells.get(t.key)!.instead;
    return instead !== null && instead !== 'n/a (0A000)';
  });
  const ratios = answered.map((r) => ratioOf(r, t.key)!);
  const parts = [`answered ${answered.length} of the ${queryRows.length} queries`];
  if (ratios.length > 0) parts[0] += ` at a geometric mean of ${percent(geometricMean(ratios))} of direct's speed (from ${percent(Math.min(...ratios))} to ${percent(Math.max(...ratios))})`;
  if (notSupported.length === queryRows.length) parts[0] = `refused all ${queryRows.length} queries as not supported yet (0A000)`;
  else if (notSupported.length > 0) parts.push(`refused ${notSupported.map((r) => r.query.name).join(', ')} as not supported yet (0A000)`);
  if (failed.length > 0) parts.push(failed.map((r) => `${r.query.name}: ${r.cells.get(t.key)!.instead}`).join(', '));
  return parts.join('; ');
}

function reading(queryRows: QueryRow[], streamRows: StreamRow[], targets: Target[], facts: Facts): string {
  const parts: string[] = [];
  const cores = cpuCount(facts);
  // Two clusters that fared alike are told in one sentence.
  const summaries = new Map<string, string[]>();
  for (const t of targets.filter((x) => x.key !== 'direct')) {
    const summary = targetSummary(queryRows, t);
    summaries.set(summary, [...(summaries.get(summary) ?? []), t.label]);
  }
  for (const [summary, labels] of summaries) parts.push(`${labels.join(' and ')}: ${summary}.`);
  const faster = queryRows.filter((r) => (['parapool2', 'parapool4'] as const).some((k) => (ratioOf(r, k) ?? 0) > 1.5));
  if (faster.length > 0) {
    parts.push(
      `Where parapool beats direct on the same ${cores} cores (${faster.map((r) => r.query.name).join(', ')}), the plans differ, not the parallelism:`,
      'each node plans and runs the query over its own share of the data, and a plan that suits the whole table poorly (EXPLAIN ANALYZE on',
      'direct shows how) need not suit a quarter of it poorly.',
    );
  }
  const fdw = targets.find((t) => t.key === 'fdw');
  if (fdw && !fdw.missing) {
    parts.push(
      'postgres_fdw in PostgreSQL 15 pushes a whole aggregate to a node only when the grouping includes the partition key (and joins only',
      'between partitions on the same server); any other aggregate, q1 and count(*) included, is computed on the coordinator from every row the',
      'nodes send, which is what its ratios for the lineitem-wide aggregates show.',
    );
  }
  const directStream = streamRows.find((r) => r.table === 'lineitem' && r.target.key === 'direct');
  const proxyStream = streamRows.find((r) => r.table === 'lineitem' && r.target.key === 'parapool4');
  const d = directStream ? medianStream(directStream) : null;
  const p = proxyStream ? medianStream(proxyStream) : null;
  if (d && p) {
    parts.push(
      `Streaming lineitem through parapool over 4 nodes ran at ${percent(d.streamed.seconds / p.streamed.seconds)} of direct's rows/s`,
      `(${thousands(p.streamed.rows / p.streamed.seconds)} against ${thousands(d.streamed.rows / d.streamed.seconds)}), the proxy using`,
      `${((p.cpu.proxy / p.streamed.rows) * 1e6).toFixed(2)} µs of CPU a row.`,
    );
  } else if (proxyStream?.instead) {
    parts.push(`Streaming lineitem through parapool over 4 nodes: ${proxyStream.instead}, so there is no rows/s and no peak memory to report yet.`);
  }
  const big = streamRows.find((r) => r.table !== 'lineitem' && r.target.key === 'parapool4');
  const bigRun = big ? medianStream(big) : null;
  if (big?.memory && bigRun) {
    const grew = big.memory.peakKiB - big.memory.beforeKiB;
    parts.push(
      `While streaming ${thousands(bigRun.streamed.rows)} rows the proxy's resident memory peaked at ${mib(big.memory.peakKiB)}, ${mib(grew)} above`,
      `its ${mib(big.memory.beforeKiB)} when idle${grew < 256 * 1024 ? ': the rows are relayed as they arrive, not gathered' : ''}.`,
    );
    const proxyCores = bigRun.cpu.proxy / bigRun.streamed.seconds;
    const directBig = streamRows.find((r) => r.table === big.table && r.target.key === 'direct');
    const directRun = directBig ? medianStream(directBig) : null;
    if (proxyCores >= 0.85 && directRun) {
      parts.push(
        `The proxy set the pace of that stream: it kept ${proxyCores.toFixed(2)} cores busy, ${((bigRun.cpu.proxy / bigRun.streamed.rows) * 1e6).toFixed(2)} µs of CPU a row, while`,
        `one PostgreSQL backend alone sends these short rows at ${thousands(directRun.streamed.rows / directRun.streamed.seconds)} rows/s.`,
      );
    }
  }
  return parts.join(' ');
}

function coresNote(facts: Facts): string {
  const cores = cpuCount(facts);
  return [
    `**What ${cores} cores mean for these ratios.** The client, the proxy, the ${distributedNodes} nodes and the coordinator all share this machine's ${cores} cores,`,
    'and PostgreSQL direct already uses all of them for one query with its own parallel workers (max_parallel_workers_per_gather = 2 by',
    'default), so spreading a query over nodes cannot make it faster here: the ratios measure what distributing costs (splitting the query,',
    'shipping partial results, merging them), not parallel speedup. On a real cluster each node has cores of its own, and the part of a query',
    'that the nodes share runs on all of them at once.',
  ].join(' ');
}

function section(queryRows: QueryRow[], streamRows: StreamRow[], targets: Target[], options: Options, facts: Facts, counts: Map<string, number>, timings: Timings): string {
  const n = (t: string) => thousands(counts.get(t) ?? 0);
  return [
    sectionHeading,
    '',
    `Run ${facts.date} with \`npm run bench\` (\`bash bench/run.sh --only parallel\` runs this part alone: ${duration(timings.total)} this time). TPC-H-shaped data at scale factor`,
    `${options.sf} (${n('lineitem')} lineitem, ${n('orders')} orders, ${n('partsupp')} partsupp, ${n('part')} part, ${n('customer')} customer rows) is generated by`,
    `fixtures/tpch/data.sql on one PostgreSQL, the reference (${timings.generate.toFixed(0)} s), and the same rows are loaded into three other targets.`,
    `**parapool, 2 nodes** and **parapool, 4 nodes**: the tables are created and their rules declared through the proxy`,
    "(`SELECT parapool.distribute_table('orders', 'o_orderkey')`, lineitem on l_orderkey with `colocate_with => 'orders'`, customer on",
    "c_custkey, part on p_partkey, partsupp on ps_partkey co-located with part, `parapool.replicate_table` for supplier, nation and region),",
    'then each node receives from the reference exactly the rows its rule places there, by the placement expression read from',
    `parapool.partition_rules, and every node is checked to hold no misplaced row (${timings.parapool2.toFixed(0)} s and ${timings.parapool4.toFixed(0)} s).`,
    `**PostgreSQL FDW, 4 nodes**, PostgreSQL's own sharding: on a fifth PostgreSQL, the coordinator, each of those five tables is \`PARTITION BY HASH\``,
    `on the same key into 4 partitions, each a postgres_fdw foreign table on one of the 4 nodes of the 4-node parapool cluster (a database of`,
    "its own there, filled with the rows PostgreSQL's hash bounds give that partition: they differ from parapool's placement);",
    `supplier, nation and region are local tables; \`enable_partitionwise_aggregate\` and \`enable_partitionwise_join\` are on, the servers`,
    `have \`async_capable 'true'\`, \`fetch_size '${fdwFetchSize}'\` and \`use_remote_estimate 'true'\` (without it the coordinator joins co-located`,
    `partitions itself instead of pushing the join to their node), and every table is analyzed on the coordinator too (${timings.fdw.toFixed(0)} s).`,
    '',
    `Each query runs once on every target as a warm-up, whose answer must equal direct's (same rows, same text, in order when the query orders`,
    `them; a different answer is reported as "wrong answer"), then ${options.runs} times on each, the targets taking turns (fewer when the`,
    `warm-up shows that ${options.runs} runs would take more than ${cellBudgetMs / 1000} s, and none when the warm-up alone took more than ${longQueryMs / 1000} s: then it is the`,
    'measurement). The table gives the median in milliseconds, from sending the query to the last row, through node-postgres with text',
    'results. "vs direct" is direct\'s median divided by the target\'s (above 100 % is faster than direct). "n/a (0A000)": parapool refused',
    'the query as not supported yet (SQLSTATE 0A000), and the notes give its message.',
    '',
    queryTable(queryRows, targets),
    '',
    `Streaming: \`SELECT * FROM <table>\` over the simple protocol, read by a client that counts the DataRow messages without decoding`,
    `them (${options.runs === 1 ? 'one run' : `median of ${options.runs} runs`} for lineitem, one run for the ${thousands(options.streamRows)}-row table \`SELECT g, md5(g::text) FROM`,
    `generate_series(1, ${options.streamRows}) g\`, hash-distributed on g over the 4 nodes). The proxy's memory is its VmRSS and VmHWM from`,
    '/proc of a proxy started afresh for the streams of each table: idle before the first, and at its peak after the last. MB/s counts the',
    'DataRow bytes.',
    '',
    streamTable(streamRows),
    '',
    coresNote(facts),
    '',
    machineLine(facts),
    `Software: ${facts.postgres}; ${facts.fdw}; parapool ${facts.parapool} on Node.js ${facts.node}.`,
    '',
    'Set-up: every PostgreSQL is a fresh server on 127.0.0.1 with fsync, synchronous_commit and full_page_writes off, autovacuum off and',
    'max_wal_size 4GB, and otherwise default settings (shared_buffers 128MB, work_mem 4MB, max_parallel_workers_per_gather 2); the tables',
    'have their primary keys on every node and on the reference. parapool runs as its own process (`node dist/src/cli/main.js start -f',
    'parapool.conf`, `log_min_messages = warning`, otherwise the default configuration).',
    '',
    disturbance(queryRows, streamRows),
    '',
    reading(queryRows, streamRows, targets, facts),
    '',
  ].join('\n');
}

// ---------------------------------------------------------------------------------------------------------------

async function main(): Promise<number> {
  const options = parseOptions(process.argv.slice(2));
  const startedAt = Date.now();
  await loadModule();
  const binDir = findPostgresBinDir();
  const psql = findClientProgram('psql');
  const base = machineFacts(binDir);
  const facts: Facts = { ...base, fdw: 'postgres_fdw 1.1', parapool: `${base.parapool}${sourceRevision()}` };
  const cores = cpuCount(facts);
  const schema = tableStatements();
  const dir = makeWorkDir('parapool-parallel-bench-', options.keep);

  say('starting 7 PostgreSQL nodes and the coordinator');
  const nodes = await startNodes(binDir, dir, ['direct', 'pair0', 'pair1', ...Array.from({ length: distributedNodes }, (_, i) => `node${i}`)], nodeSettings);
  const [directNode, ...rest] = nodes;
  const pairNodes = rest.slice(0, 2);
  const quadNodes = rest.slice(2);
  const [coordinator] = await startNodes(binDir, dir, ['coordinator'], coordinatorSettings);
  const source: Endpoint = { port: directNode.port, database: 'postgres' };

  // 1. The reference, then the three other targets filled from it.
  let phase = Date.now();
  say(`generating the TPC-H-shaped data at scale factor ${options.sf} on the direct node`);
  const counts = await generateReference(directNode, options, schema);
  const timings: Timings = { generate: seconds(phase), parapool2: 0, parapool4: 0, fdw: 0, total: 0 };
  say(`generated ${thousands(counts.get('lineitem')!)} lineitem rows in ${timings.generate.toFixed(0)} s`);

  phase = Date.now();
  const proxy2 = await startParapool(dir, 'parapool-2', pairNodes.map((n) => n.port));
  await setUpParapool(psql, proxy2, pairNodes, source, schema, counts);
  timings.parapool2 = seconds(phase);
  say(`parapool, 2 nodes: loaded in ${timings.parapool2.toFixed(0)} s`);

  phase = Date.now();
  const proxy4 = await startParapool(dir, 'parapool-4', quadNodes.map((n) => n.port));
  await setUpParapool(psql, proxy4, quadNodes, source, schema, counts);
  timings.parapool4 = seconds(phase);
  say(`parapool, 4 nodes: loaded in ${timings.parapool4.toFixed(0)} s`);

  phase = Date.now();
  const fdwMissing = await setUpFdw(psql, coordinator, quadNodes, source, schema, counts);
  timings.fdw = seconds(phase);
  if (!fdwMissing) say(`PostgreSQL FDW, 4 nodes: loaded in ${timings.fdw.toFixed(0)} s`);
  const fdwVersion = fdwMissing ? [] : await queryOn(coordinator.port, 'postgres', 'reading the postgres_fdw version', "SELECT extversion FROM pg_extension WHERE extname = 'postgres_fdw'");
  facts.fdw = fdwMissing ? 'postgres_fdw not installed' : `postgres_fdw ${fdwVersion[0]?.[0] ?? ''}`;

  // Every node of every target is checkpointed, so that no write-back from the loads runs during a measurement.
  await inParallel([...nodes, coordinator].map((n) => () => queryOn(n.port, 'postgres', 'CHECKPOINT', 'CHECKPOINT')), 2);

  // 2. The queries.
  const targets: Target[] = [
    { key: 'direct', label: targetLabels.direct, port: directNode.port, proxy: null, missing: null, client: null },
    { key: 'parapool2', label: targetLabels.parapool2, port: proxy2.port, proxy: proxy2, missing: null, client: null },
    { key: 'parapool4', label: targetLabels.parapool4, port: proxy4.port, proxy: proxy4, missing: null, client: null },
    { key: 'fdw', label: targetLabels.fdw, port: coordinator.port, proxy: null, missing: fdwMissing, client: null },
  ];
  const postmasters = [...nodes, coordinator].map(postmasterPid);
  const { rows: queryRows, wrong } = await measureQueries(targets, options, postmasters, cores);
  for (const t of targets) {
    await t.client?.end().catch(() => undefined);
    t.client = null;
  }
  await proxy2.stop();
  await proxy4.stop();
  await stopAndSettle(pairNodes);

  // 3. Streaming, each time through a proxy started afresh, so that its peak memory is that of the stream.
  const byKey = (key: TargetKey) => targets.find((t) => t.key === key)!;
  const freshProxy = async (fileName: string): Promise<{ target: Target; idleKiB: number }> => {
    const proxy = await startParapool(dir, fileName, quadNodes.map((n) => n.port));
    await sleep(1_000); // start-up's own allocations settle
    return { target: { ...byKey('parapool4'), port: proxy.port, proxy }, idleKiB: processMemory(proxy.pid)?.rssKiB ?? NaN };
  };
  const recordPeak = (row: StreamRow, idleKiB: number) => {
    const proxy = row.target.proxy!;
    const memory = processMemory(proxy.pid);
    if (memory && Number.isFinite(idleKiB)) row.memory = { beforeKiB: idleKiB, peakKiB: memory.peakKiB };
    if (proxy.exitReason) row.notes.push(`parapool ${proxy.exitReason}`);
  };
  const forLineitem = await freshProxy('parapool-4-lineitem');
  const streamRows: StreamRow[] = [byKey('direct'), forLineitem.target, byKey('fdw')].map((target) => ({
    table: 'lineitem', target, runs: [], instead: target.missing ? 'n/a' : null, notes: [], memory: null,
  }));
  say(`streaming lineitem, ${options.runs} run${options.runs === 1 ? '' : 's'} on each target`);
  await measureStreams(streamRows, counts.get('lineitem')!, options.runs, postmasters, cores);
  recordPeak(streamRows[1], forLineitem.idleKiB);
  await stopAndSettle([coordinator]);

  // 4. A large table, for the proxy's memory when a stream is long.
  const big = 'stream_rows';
  say(`creating ${big} with ${options.streamRows} rows on the direct node and over the 4 nodes`);
  const bigSql = `CREATE TABLE ${big} (g integer NOT NULL, md5 text NOT NULL)`;
  await queryOn(directNode.port, 'postgres', `creating ${big}`, bigSql);
  await throughProxy(forLineitem.target.proxy!, `creating and distributing ${big} through parapool`, [bigSql, `SELECT parapool.distribute_table('${big}', 'g')`]);
  await forLineitem.target.proxy!.stop();
  const [[placement]] = await queryOn(quadNodes[0].port, 'postgres', 'reading the placement', `SELECT placement FROM parapool.partition_rules WHERE table_name = '${big}'`);
  const fill = (where: string) => `INSERT INTO ${big} SELECT g, md5(g::text) FROM generate_series(1, ${options.streamRows}) AS s(g)${where}`;
  const filled = await inParallel([
    () => withClient(directNode.port, 'postgres', `filling ${big}`, async (c) => (await c.query(fill(''))).rowCount ?? 0),
    ...quadNodes.map((node, i) => () => withClient(node.port, 'postgres', `filling ${big} on node ${i}`, async (c) => (await c.query(fill(` WHERE (${placement}) = ${i}`))).rowCount ?? 0)),
  ], 2);
  if (filled[0] !== options.streamRows || filled.slice(1).reduce((a, b) => a + b, 0) !== options.streamRows) {
    throw new StepError(`${big} holds ${filled[0]} rows on the direct node and ${filled.slice(1).join(' + ')} on the nodes, not ${options.streamRows} each`);
  }
  await inParallel([directNode, ...quadNodes].map((n) => () => queryOn(n.port, 'postgres', 'VACUUM ANALYZE', `VACUUM ANALYZE ${big}`)), 2);
  await inParallel([directNode, ...quadNodes].map((n) => () => queryOn(n.port, 'postgres', 'CHECKPOINT', 'CHECKPOINT')), 2);
  const forBig = await freshProxy('parapool-4-large');
  const bigRows: StreamRow[] = [byKey('direct'), forBig.target].map((target) => ({ table: big, target, runs: [], instead: null, notes: [], memory: null }));
  say(`streaming ${big}, one run on each target`);
  await measureStreams(bigRows, options.streamRows, 1, [directNode, ...quadNodes].map(postmasterPid), cores);
  recordPeak(bigRows[1], forBig.idleKiB);
  await forBig.target.proxy!.stop();
  await stopNodes([directNode, ...quadNodes]);

  timings.total = seconds(startedAt);
  const text = section(queryRows, [...streamRows, ...bigRows], targets, options, facts, counts, timings);
  publish(options.docs, sectionHeading, text);
  if (wrong.length > 0) {
    say(`${wrong.length} wrong answer(s):\n${wrong.join('\n')}`);
    return 1;
  }
  return 0;
}

runBenchmark(main);
