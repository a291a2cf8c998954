// The parallel-query benchmark behind `npm run bench`: TPC-H-shaped reads on one PostgreSQL directly, through
// parapool in front of 2 and of 4 nodes, and through PostgreSQL's own sharding (hash partitions that are
// postgres_fdw foreign tables on the same 4 nodes), plus whole tables streamed through the proxy; and, on the same
// set-up, all 22 TPC-H queries on direct, parapool over 4 nodes and the FDW (`--part tpch`, a section of its own),
// with parapool's tier per query and where its time goes for the slowest. Every answer is compared with direct's
// before it is timed; a query parapool does not support yet (0A000) is reported as n/a.

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
  machineFacts, machineLine, makeWorkDir, parseCommonOptions, postmasterPid, processMemory, publish, repoRoot, runBenchmark, say, scaleFactorOption, sendCancelRequest, sleep, sourceRevision,
  startNodes, startParapool, StepError, stopNodes, throwIfFinishing, track, untrack, type CommonOptions, type CpuSnapshot, type CpuUse,
  type MachineFacts, type Server,
} from './bench-support';

const sectionHeading = '## Parallel query';
const tpchHeading = '## TPC-H, all 22 queries';

/**
 * Which section a run measures and writes: the parallel-query one, or all 22 TPC-H queries. They share the set-up
 * code, not a run: each has its own default scale factor, since the TPC-H queries include two whose subqueries
 * PostgreSQL runs once per outer row (Q17, Q20), whose time grows with the square of the data.
 */
type Part = 'parallel' | 'tpch';

/** The default scale factor of each part, chosen so that the part runs in about 20 minutes or less on 2 cores. */
const defaultScaleFactor: Record<Part, string> = { parallel: '1', tpch: '0.2' };

interface Options extends CommonOptions {
  part: Part;
  sf: string;
  runs: number;
  streamRows: number;
}

const usage = `usage: node dist/bench/parallel-bench.js [--part parallel|tpch] [--sf SF] [--runs N] [--stream-rows N] [--docs FILE] [--keep]
  --part PART        parallel (default): the parallel-query section (bash bench/run.sh --only parallel);
                     tpch: all 22 TPC-H queries on direct, parapool over 4 nodes and the FDW (bash bench/run.sh --only tpch)
  --sf SF            TPC-H scale factor of the generated data (default 1 for parallel: 6 million lineitem rows, 7 minutes on
                     2 cores; 0.2 for tpch, 8 minutes: at SF 1 direct alone would spend some 40 and 60 minutes on Q17 and Q20)
  --runs N           timed runs of each query (after one warm-up) and of the lineitem stream on each target, taking turns; the median counts (default 3)
  --stream-rows N    rows of the table streamed to measure the proxy's memory (default 10000000; parallel only)
  --docs FILE        where the results section goes (default docs/benchmarks.md; "-" writes nothing)
  --keep             leave the temporary directory (data directories, configs, logs) in place
`;

function parseOptions(argv: string[]): Options {
  const own: { part: Part; sf: string | null; runs: number; streamRows: number | null } = { part: 'parallel', sf: null, runs: 3, streamRows: null };
  const common = parseCommonOptions(argv, usage, (arg, value) => {
    switch (arg) {
      case '--part': {
        const part = value();
        if (part !== 'parallel' && part !== 'tpch') throw new StepError(`--part needs parallel or tpch\n${usage}`);
        own.part = part;
        return true;
      }
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
  if (own.streamRows !== null && own.part !== 'parallel') throw new StepError(`--stream-rows is an option of the parallel part only\n${usage}`);
  return { ...common, part: own.part, sf: own.sf ?? defaultScaleFactor[own.part], runs: own.runs, streamRows: own.streamRows ?? 10_000_000 };
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

/** All 22 TPC-H queries of the differential corpus, unchanged, in their order: the TPC-H section. */
const tpchQueries: readonly BenchQuery[] = Array.from({ length: 22 }, (_, i) => ({
  name: `Q${i + 1}`,
  corpus: `tpch_q${String(i + 1).padStart(2, '0')}`,
  reads: '',
}));

const distributedNodes = 4;
const fdwFetchSize = 10_000;
/** A query running longer than this is cancelled and reported as "> 300 s"; direct's limit in the TPC-H section too. */
const queryTimeoutMs = 300_000;
/** Measured runs of one query on one target stop at about this much time, after at least one run. */
const cellBudgetMs = 30_000;
/** A warm-up longer than this is the query's only run on that target. */
const longQueryMs = 10_000;
/**
 * In the TPC-H section a run on parapool or the FDW is cancelled after this long (statement_timeout, and a
 * CancelRequest should a distributed plan's steps add up to more) and shown as "> 60 s", so that the run goes on.
 */
const tpchCapMs = 60_000;
/** The five queries where parapool fares worst get an EXPLAIN ANALYZE: their steps' times. */
const explainedQueries = 5;

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
  /** The statement_timeout the client's session has now, in ms. */
  timeoutMs: number;
}

const targetLabels: Record<TargetKey, string> = {
  direct: 'direct',
  parapool2: 'parapool, 2 nodes',
  parapool4: 'parapool, 4 nodes',
  fdw: 'PostgreSQL FDW, 4 nodes',
};

/** For the notes, where several targets may share one. */
const shortLabels: Record<TargetKey, string> = { direct: 'direct', parapool2: 'parapool-2', parapool4: 'parapool-4', fdw: 'FDW' };

/** float4 and float8: their sums may differ past 12 significant digits when the rows are added in another order. */
const floatTypes = new Set([700, 701]);

interface Answer {
  ms: number;
  /** Each column's name and type oid. */
  columns: { name: string; type: number }[];
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
  target.timeoutMs = queryTimeoutMs;
}

function dropClient(target: Target): void {
  const client = target.client as unknown as { connection?: { stream?: { destroy(): void } } } | null;
  client?.connection?.stream?.destroy();
  target.client = null;
}

/**
 * Runs one query on the target's connection, within `capMs`: the session's statement_timeout is set to it, and
 * a CancelRequest goes out when the cap is reached (a distributed plan runs several statements, each with its own
 * timeout, which may add up to more); an answer later than the cap counts as stopped there too. Returns the answer
 * or the error, with the time and the CPU each party used.
 */
async function runQuery(target: Target, sql: string, postmasters: number[], cores: number, capMs = queryTimeoutMs): Promise<Answer> {
  throwIfFinishing();
  const none = (code: string, message: string): Answer => {
    const snapshot = cpuSnapshot(null, []);
    return { ms: 0, columns: [], rows: [], error: { code, message }, cpu: { client: 0, proxy: 0, postgres: 0, other: 0 }, foreign: 0, before: snapshot, after: snapshot };
  };
  if (!target.client) {
    try {
      await connectTarget(target);
    } catch (e) {
      dropClient(target);
      return none('no connection', (e as Error).message);
    }
  }
  const client = target.client!;
  if (target.timeoutMs !== capMs) {
    try {
      await client.query(`SET statement_timeout = ${capMs}`);
      target.timeoutMs = capMs;
    } catch (e) {
      dropClient(target);
      return none('no SET', (e as Error).message);
    }
  }
  const before = cpuSnapshot(target.proxy?.pid ?? null, postmasters);
  const started = process.hrtime.bigint();
  let cancelTimer: NodeJS.Timeout | undefined;
  let timer: NodeJS.Timeout | undefined;
  let columns: Answer['columns'] = [];
  let rows: string[][] = [];
  let error: Answer['error'] = null;
  try {
    const keys = client as unknown as { processID?: number; secretKey?: number };
    cancelTimer = setTimeout(() => {
      if (keys.processID !== undefined && keys.secretKey !== undefined) sendCancelRequest(target.port, keys.processID, keys.secretKey);
    }, capMs);
    const guard = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(Object.assign(new Error(`no answer within ${(capMs + 30_000) / 1000} s`), { code: 'timeout' })), capMs + 30_000);
    });
    const result = await Promise.race([client.query({ text: sql, rowMode: 'array', types: textTypes }), guard]);
    columns = result.fields.map((f) => ({ name: f.name, type: f.dataTypeID }));
    rows = result.rows as string[][];
  } catch (e) {
    const failure = e as { code?: string; message: string };
    error = { code: failure.code ?? 'no SQLSTATE', message: failure.message };
    // After an error the server may have closed the connection (the proxy does after an internal error), and
    // a client-side timeout leaves it busy: the next query connects afresh rather than meet a dead connection.
    dropClient(target);
  } finally {
    clearTimeout(cancelTimer);
    clearTimeout(timer);
  }
  const ms = Number(process.hrtime.bigint() - started) / 1e6;
  // An answer that arrived as the cancel went out still took longer than the cap allows.
  if (!error && ms > capMs) error = { code: '57014', message: `answered after ${(ms / 1000).toFixed(1)} s, past the cap of ${capMs / 1000} s` };
  const after = cpuSnapshot(target.proxy?.pid ?? null, postmasters);
  const cpu = cpuUse(before, after);
  return { ms, columns, rows, error, cpu, foreign: Math.min(1, cpu.other / ((ms / 1000) * cores)), before, after };
}

interface Cell {
  /** The measured runs (not the warm-up). */
  runs: Answer[];
  /** Shown instead of a time: n/a, an error, a wrong answer, "> 60 s". */
  instead: string | null;
  /** Set when the query was cancelled at the cap: the time it ran before. */
  overCapMs: number | null;
  notes: string[];
}

interface QueryRow {
  query: BenchQuery;
  /** The query's text, as sent. */
  sql: string;
  /** The columns of direct's answer. */
  columns: Answer['columns'];
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

/** A float's text at 12 significant digits. */
function roundFloat(text: string | null): string | null {
  if (text === null || !/^-?[0-9.]+(e[-+]?[0-9]+)?$/i.test(text)) return text;
  const value = Number(text);
  return value === 0 ? '0' : value.toPrecision(12);
}

/**
 * Null when the answers agree: the same columns (names and types) and the same rows with the same text, in the
 * same order when `ordered`; float4 and float8 columns compare at 12 significant digits. Otherwise where they
 * first differ.
 */
function difference(expected: Answer, actual: Answer, ordered: boolean): string | null {
  const shape = (a: Answer) => a.columns.map((c) => `${c.name}:${c.type}`).join(', ');
  if (shape(expected) !== shape(actual)) return `columns ${shape(actual)} where direct returns ${shape(expected)}`;
  if (expected.rows.length !== actual.rows.length) return `${actual.rows.length} rows where direct returns ${expected.rows.length}`;
  const floats = expected.columns.map((c) => floatTypes.has(c.type));
  const key = (row: string[]) => JSON.stringify(floats.includes(true) ? row.map((v, i) => (floats[i] ? roundFloat(v) : v)) : row);
  const left = expected.rows.map(key);
  const right = actual.rows.map(key);
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

/** True when the run was stopped at its cap, by the statement_timeout or the CancelRequest that follows it. */
function stoppedAtCap(answer: Answer, capMs: number): boolean {
  return (answer.error?.code === '57014' || answer.error?.code === 'timeout') && answer.ms >= capMs * 0.95;
}

const capText = (capMs: number) => `> ${capMs / 1000} s`;

/**
 * Runs each query once on every live target as a warm-up, whose answer must equal direct's, then up to
 * `options.runs` times on each, the targets taking turns. `capFor` gives each target's longest run; a run stopped
 * there shows as "> N s" and is not repeated. Returns a row per query and the wrong answers met.
 */
async function measureQueries(
  targets: Target[],
  queries: readonly BenchQuery[],
  options: Options,
  postmasters: number[],
  cores: number,
  capFor: (target: Target) => number = () => queryTimeoutMs,
): Promise<{ rows: QueryRow[]; wrong: string[] }> {
  const rows: QueryRow[] = [];
  const wrong: string[] = [];
  const live = targets.filter((t) => t.missing === null);
  for (const query of queries) {
    const sql = query.sql ?? corpusQuery(query.corpus!);
    const ordered = isOrdered(sql);
    const cells = new Map<TargetKey, Cell>(targets.map((t) => [t.key, { runs: [], instead: t.missing ? 'n/a' : null, overCapMs: null, notes: [] }]));
    const runsOf = new Map<TargetKey, number>();
    let expected: Answer | null = null;
    // The warm-up: every answer is checked against direct's before anything is timed.
    for (const target of live) {
      const cell = cells.get(target.key)!;
      const logFrom = target.proxy?.logSize() ?? 0;
      const capMs = capFor(target);
      const answer = await runQuery(target, sql, postmasters, cores, capMs);
      if (answer.error) {
        const atCap = stoppedAtCap(answer, capMs);
        cell.instead = atCap ? capText(capMs) : failureText(answer.error);
        if (atCap) cell.overCapMs = answer.ms;
        else cell.notes.push(errorNote(answer.error));
        say(`${query.name} on ${target.label}: ${cell.instead}: ${answer.error.message.split('\n')[0]}`);
        if (target.key === 'direct') throw new StepError(`${query.name} fails on the direct node (${cell.instead}): ${answer.error.message}`);
        continue;
      }
      if (target.key === 'direct') expected = answer;
      const differs = difference(expected!, answer, ordered);
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
        const capMs = capFor(target);
        const answer = await runQuery(target, sql, postmasters, cores, capMs);
        if (answer.error) {
          const atCap = stoppedAtCap(answer, capMs);
          cell.instead = atCap ? capText(capMs) : failureText(answer.error);
          if (atCap) cell.overCapMs = answer.ms;
          cell.notes.push(`run ${run}: ${atCap ? `stopped at ${capMs / 1000} s` : errorNote(answer.error)}`);
          say(`${query.name} on ${target.label}, run ${run}: ${answer.error.message}`);
          continue;
        }
        const differs = difference(expected!, answer, ordered);
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
    rows.push({ query, sql, columns: expected?.columns ?? [], resultRows: expected?.rows.length ?? 0, cells });
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

/** A column of the query table between the query's name and the times. */
interface QueryColumn<R extends QueryRow> {
  head: string;
  right: boolean;
  value: (row: R) => string;
}

const parallelColumns: QueryColumn<QueryRow>[] = [
  { head: 'reads', right: false, value: (row) => row.query.reads },
  { head: 'rows', right: true, value: (row) => thousands(row.resultRows) },
];

/**
 * The table of queries: per target the median time and, but for direct, the ratio of direct's median to it; for a
 * query stopped at the cap, the most the ratio can be.
 */
function queryTable<R extends QueryRow>(rows: R[], targets: Target[], columns: QueryColumn<R>[]): string {
  const others = targets.filter((t) => t.key !== 'direct');
  const lines = [
    `| query | ${columns.map((c) => `${c.head} | `).join('')}direct ms | ${others.map((t) => `${t.label} ms | vs direct`).join(' | ')} | notes |`,
    `| --- | ${columns.map((c) => (c.right ? '---: | ' : '--- | ')).join('')}---: | ${others.map(() => '---: | ---:').join(' | ')} | --- |`,
  ];
  for (const row of rows) {
    const direct = medianAnswer(row.cells.get('direct')!);
    const time = (c: Cell) => {
      const m = medianAnswer(c);
      return m ? `${msText(m.ms)}${m.foreign >= busyThreshold ? ' *' : ''}` : c.instead ?? '';
    };
    const parts = [row.query.name, ...columns.map((c) => c.value(row)), time(row.cells.get('direct')!)];
    for (const t of others) {
      const c = row.cells.get(t.key)!;
      const m = medianAnswer(c);
      parts.push(time(c), m && direct ? percent(direct.ms / m.ms) : c.overCapMs !== null && direct ? `< ${percent(direct.ms / c.overCapMs)}` : '');
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

/** The machine, the software and the servers' settings: the same for both sections. */
function machineAndSetUp(facts: Facts): string[] {
  return [
    machineLine(facts),
    `Software: ${facts.postgres}; ${facts.fdw}; parapool ${facts.parapool} on Node.js ${facts.node}.`,
    '',
    'Set-up: every PostgreSQL is a fresh server on 127.0.0.1 with fsync, synchronous_commit and full_page_writes off, autovacuum off and',
    'max_wal_size 4GB, and otherwise default settings (shared_buffers 128MB, work_mem 4MB, max_parallel_workers_per_gather 2); the tables',
    'have their primary keys on every node and on the reference. parapool runs as its own process (`node dist/src/cli/main.js start -f',
    'parapool.conf`, `log_min_messages = warning`, otherwise the default configuration).',
  ];
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
    queryTable(queryRows, targets, parallelColumns),
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
    ...machineAndSetUp(facts),
    '',
    disturbance(queryRows, streamRows),
    '',
    reading(queryRows, streamRows, targets, facts),
    '',
  ].join('\n');
}

// ---------------------------------------------------------------------------------------------------------------
// All 22 TPC-H queries: measured like the parallel-query section's, on direct, parapool over 4 nodes and the FDW,
// each run on parapool and the FDW capped at tpchCapMs; parapool's tier per query from its EXPLAIN, and for the
// queries where it fares worst, where the time goes from its EXPLAIN ANALYZE.

interface TpchRow extends QueryRow {
  /** The word after "Distributed" on the first line of parapool's EXPLAIN, or why there is none. */
  tier: string;
  /** The EXPLAIN's lines. */
  plan: string[];
}

/** One line of the "Execution:" part of parapool's EXPLAIN ANALYZE; depth 0 for the plan's own steps. */
interface StepTime {
  step: string;
  depth: number;
  rows: number;
  ms: number;
}

interface Breakdown {
  row: TpchRow;
  /** The EXPLAIN ANALYZE run's time at the client, in ms. */
  ms: number;
  steps: StepTime[];
  /** Why there are no steps: the run failed or was stopped at the cap. */
  failure: string | null;
}

interface TpchResult {
  rows: TpchRow[];
  breakdowns: Breakdown[];
  wrong: string[];
}

/** parapool's ratio for the row, direct's median over parapool's; for a run stopped at the cap, the most it can be. */
function parapoolRatio(row: QueryRow): number | null {
  const d = medianAnswer(row.cells.get('direct')!);
  const c = row.cells.get('parapool4')!;
  const p = medianAnswer(c);
  if (!d) return null;
  if (p) return d.ms / p.ms;
  return c.overCapMs !== null ? d.ms / c.overCapMs : null;
}

/** The "Execution:" lines of an EXPLAIN ANALYZE through parapool. */
function executionSteps(lines: string[]): StepTime[] {
  const from = lines.findIndex((l) => l.trim() === 'Execution:');
  if (from === -1) return [];
  const steps: StepTime[] = [];
  for (const line of lines.slice(from + 1)) {
    const match = /^( +)(.+): rows=(\d+) time=([\d.]+) ms$/.exec(line);
    if (match) steps.push({ step: match[2], depth: (match[1].length - 2) / 2, rows: Number(match[3]), ms: Number(match[4]) });
  }
  return steps;
}

async function measureTpch(targets: Target[], options: Options, postmasters: number[], cores: number): Promise<TpchResult> {
  const proxy = targets.find((t) => t.key === 'parapool4')!;
  say(`TPC-H: the 22 queries on ${targets.map((t) => t.label).join(', ')}`);
  const measured = await measureQueries(targets, tpchQueries, options, postmasters, cores, (t) => (t.key === 'direct' ? queryTimeoutMs : tpchCapMs));
  const rows: TpchRow[] = [];
  for (const row of measured.rows) {
    const explained = await runQuery(proxy, `EXPLAIN ${row.sql}`, postmasters, cores, tpchCapMs);
    const plan = explained.rows.map((r) => r[0]);
    const tier = explained.error ? `n/a (${explained.error.code})` : /^Distributed (\w+)/.exec(plan[0] ?? '')?.[1] ?? 'none';
    rows.push({ ...row, tier, plan });
  }
  say(`TPC-H tiers: ${rows.map((r) => `${r.query.name} ${r.tier}`).join(', ')}`);
  // The queries where parapool fares worst against direct; one stopped at the cap ranks by the most its ratio can be.
  const worst = rows
    .map((row) => ({ row, ratio: parapoolRatio(row) }))
    .filter((r): r is { row: TpchRow; ratio: number } => r.ratio !== null)
    .sort((a, b) => a.ratio - b.ratio)
    .slice(0, explainedQueries);
  const breakdowns: Breakdown[] = [];
  for (const { row } of worst) {
    const cell = row.cells.get('parapool4')!;
    if (cell.overCapMs !== null) {
      breakdowns.push({ row, ms: cell.overCapMs, steps: [], failure: `stopped at ${tpchCapMs / 1000} s` });
      continue;
    }
    say(`TPC-H ${row.query.name}: EXPLAIN ANALYZE through parapool`);
    const answer = await runQuery(proxy, `EXPLAIN ANALYZE ${row.sql}`, postmasters, cores, tpchCapMs);
    const lines = answer.rows.map((r) => r[0]);
    say(`TPC-H ${row.query.name}: EXPLAIN ANALYZE took ${answer.ms.toFixed(0)} ms${answer.error ? ` and failed: ${answer.error.message}` : ''}:\n${lines.join('\n')}`);
    const failure = answer.error ? (stoppedAtCap(answer, tpchCapMs) ? `stopped at ${tpchCapMs / 1000} s` : errorNote(answer.error)) : null;
    breakdowns.push({ row, ms: answer.ms, steps: executionSteps(lines), failure });
  }
  return { rows, breakdowns, wrong: measured.wrong };
}

// Where the time goes: the "Execution:" steps of parapool's EXPLAIN ANALYZE, grouped as they ran. The steps of one
// table from several nodes ran at once, so a group's time is its longest step's; the proxy's fold or merge of the
// fragments ran while the fragments did, so the fragments are told inside it.

type StepKind = 'fragments' | 'combine' | 'collect' | 'merge' | 'final' | 'local' | 'gather' | 'broadcast' | 'repartition' | 'statement' | 'result' | 'other';

interface StepGroup {
  kind: StepKind;
  /** The table moved (gather, broadcast, repartition) or the result built (result), without "public.". */
  table: string;
  /** The node a final, local, statement or result step ran on. */
  node: number | null;
  /** Nodes whose steps the group joins. */
  nodes: number;
  /** For a broadcast: to how many nodes. */
  targets: number;
  rows: number;
  ms: number;
  /** The fragments folded or merged by a combine, collect or merge group. */
  fragments: StepGroup | null;
  /** The steps of a result, run to build it. */
  children: StepGroup[];
  text: string;
}

function classifyStep(step: string): Pick<StepGroup, 'kind' | 'table' | 'node' | 'targets'> {
  const bare = (table: string) => table.replace(/^public\./, '');
  let m: RegExpExecArray | null;
  if ((m = /^fragment on node (\d+)$/.exec(step))) return { kind: 'fragments', table: '', node: Number(m[1]), targets: 0 };
  if (step === 'combine at the proxy') return { kind: 'combine', table: '', node: null, targets: 0 };
  if (step.startsWith('collect at the proxy')) return { kind: 'collect', table: '', node: null, targets: 0 };
  if (step === 'merge') return { kind: 'merge', table: '', node: null, targets: 0 };
  if ((m = /^final on node (\d+)$/.exec(step))) return { kind: 'final', table: '', node: Number(m[1]), targets: 0 };
  if ((m = /^local rows on node (\d+)$/.exec(step))) return { kind: 'local', table: '', node: Number(m[1]), targets: 0 };
  if ((m = /^statement on node (\d+)$/.exec(step))) return { kind: 'statement', table: '', node: Number(m[1]), targets: 0 };
  if ((m = /^(\S+) from node \d+ to (\d+) nodes$/.exec(step))) return { kind: 'broadcast', table: bare(m[1]), node: null, targets: Number(m[2]) };
  if ((m = /^(\S+) from node \d+ to its join column's node$/.exec(step))) return { kind: 'repartition', table: bare(m[1]), node: null, targets: 0 };
  if ((m = /^(\S+) from node \d+$/.exec(step))) return { kind: 'gather', table: bare(m[1]), node: null, targets: 0 };
  if ((m = /^(\S+) on node (\d+)$/.exec(step))) return { kind: 'result', table: m[1], node: Number(m[2]), targets: 0 };
  return { kind: 'other', table: step, node: null, targets: 0 };
}

/** The steps as groups: one per table moved, per result built, per fragment set; nested steps under their result. */
function groupSteps(steps: StepTime[]): StepGroup[] {
  const roots: StepGroup[] = [];
  const open: StepGroup[][] = [roots];
  for (const step of steps) {
    const siblings = open[Math.min(step.depth, open.length - 1)];
    open.length = Math.min(step.depth, open.length - 1) + 1;
    const kind = classifyStep(step.step);
    const last = siblings[siblings.length - 1];
    const concurrent = ['fragments', 'gather', 'broadcast', 'repartition'].includes(kind.kind);
    if (last && concurrent && last.kind === kind.kind && last.table === kind.table) {
      last.rows += step.rows;
      last.ms = Math.max(last.ms, step.ms);
      last.nodes++;
      continue;
    }
    const group: StepGroup = { ...kind, nodes: 1, rows: step.rows, ms: step.ms, fragments: null, children: [], text: '' };
    siblings.push(group);
    open.push(group.children);
  }
  const settle = (groups: StepGroup[]): StepGroup[] => {
    const folder = groups.find((g) => g.kind === 'combine' || g.kind === 'collect' || g.kind === 'merge');
    const fragments = groups.find((g) => g.kind === 'fragments');
    if (folder && fragments) folder.fragments = fragments;
    const kept = groups.filter((g) => !(folder && g === fragments));
    const finalNode = kept.find((g) => g.kind === 'final' || g.kind === 'local')?.node ?? null;
    for (const g of kept) {
      g.children = settle(g.children);
      g.text = stepText(g, finalNode);
    }
    return kept;
  };
  return settle(roots);
}

function stepText(g: StepGroup, finalNode: number | null): string {
  const rows = (n: number) => `${thousands(n)} row${n === 1 ? '' : 's'}`;
  const on = (n: number) => `${n} node${n === 1 ? '' : 's'}`;
  const fragmentsText = g.fragments ? `the fragments on ${on(g.fragments.nodes)} (the slowest ${seconds3(g.fragments.ms)}, ${rows(g.fragments.rows)} back)` : 'the fragments';
  switch (g.kind) {
    case 'fragments':
      return `the fragments on ${on(g.nodes)} (${rows(g.rows)} back)`;
    case 'combine':
      return `${fragmentsText} and folding them into ${thousands(g.rows)} group${g.rows === 1 ? '' : 's'} at the proxy`;
    case 'collect':
      return `${fragmentsText} and collecting their rows at the proxy`;
    case 'merge':
      return `${fragmentsText} and merging ${rows(g.rows)} at the proxy`;
    case 'final':
      return `the final query on node ${g.node} (${rows(g.rows)})`;
    case 'local':
      return `node ${g.node} copying its own share into temporary tables`;
    case 'statement':
      return `the statement on node ${g.node} (${rows(g.rows)})`;
    case 'gather':
      return `gathering ${rows(g.rows)} of ${g.table} into node ${finalNode ?? '?'} from ${on(g.nodes)}`;
    case 'broadcast':
      return `broadcasting ${rows(g.rows)} of ${g.table} to ${on(g.targets)}`;
    case 'repartition':
      return `repartitioning ${rows(g.rows)} of ${g.table} over the nodes by its join column`;
    case 'result':
      return `building the subquery's result ${g.table} on node ${g.node} (${rows(g.rows)})`;
    case 'other':
      return g.table;
    default:
      return assertNever(g.kind);
  }
}

function assertNever(value: never): never {
  throw new Error(`unexpected ${String(value)}`);
}

/** Milliseconds as the text reads best: "850 ms", "8.1 s". */
function seconds3(ms: number): string {
  return ms >= 1000 ? `${(ms / 1000).toFixed(1)} s` : `${ms.toFixed(0)} ms`;
}

/** The groups worth naming: the longest first, until they account for 80 % of `totalMs`, at most three. */
function leadingGroups(groups: StepGroup[], totalMs: number): StepGroup[] {
  const sorted = [...groups].sort((a, b) => b.ms - a.ms);
  const named: StepGroup[] = [];
  let covered = 0;
  for (const g of sorted) {
    if (named.length === 3 || (named.length > 0 && covered >= totalMs * 0.8) || g.ms < totalMs * 0.05) break;
    named.push(g);
    covered += g.ms;
  }
  return named;
}

/** Where the time went, as the leaves of the steps: a fold or merge split from its fragments, a result into its parts. */
interface TimeShare {
  what: 'step' | 'fold' | 'fragments' | 'outside';
  group: StepGroup | null;
  ms: number;
}

function timeShares(groups: StepGroup[]): TimeShare[] {
  const shares: TimeShare[] = [];
  for (const g of groups) {
    if (g.kind === 'result' && g.children.length > 0) {
      shares.push(...timeShares(g.children));
    } else if (g.fragments) {
      shares.push({ what: 'fragments', group: g, ms: g.fragments.ms }, { what: 'fold', group: g, ms: Math.max(0, g.ms - g.fragments.ms) });
    } else {
      shares.push({ what: 'step', group: g, ms: g.ms });
    }
  }
  return shares;
}

/** The plan's reason for gathering, from the first "Distributed Gather  (reason)" line. */
function gatherReason(plan: string[]): string | null {
  for (const line of plan) {
    const m = /Distributed Gather {2}\((.*)\)\s*$/.exec(line);
    if (m) return m[1];
  }
  return null;
}

/** A table the plan copies between nodes: how, and the lines of the SQL that reads it on the nodes. */
interface PlanCopy {
  verb: 'Gather' | 'Broadcast' | 'Repartition';
  table: string;
  sql: string[];
}

/** The copies in a plan's EXPLAIN lines ("->  Broadcast public.part as ...", followed by its SQL, indented deeper). */
function planCopies(plan: string[]): PlanCopy[] {
  const copies: PlanCopy[] = [];
  plan.forEach((line, i) => {
    const m = /^(\s*)->\s+(Gather|Broadcast|Repartition) (?:public\.)?(\w+) (?:into|as) /.exec(line);
    if (!m) return;
    const sql: string[] = [];
    for (let j = i + 1; j < plan.length && /^\s*/.exec(plan[j])![0].length > m[1].length + 4; j++) sql.push(plan[j].trim());
    copies.push({ verb: m[2] as PlanCopy['verb'], table: m[3], sql });
  });
  return copies;
}

const isFiltered = (copy: PlanCopy) => copy.sql.some((l) => /^WHERE\b/i.test(l));

/** The columns of `table` (by fixtures/tpch/schema.sql) that the query names: TPC-H's column names say their table. */
function columnsRead(sql: string, table: string): string[] {
  const statement = tableStatements().get(table);
  if (!statement) return [];
  const columns = [...statement.matchAll(/^\s+(\w+)\s+\w/gm)].map((m) => m[1]).filter((c) => c.toUpperCase() !== 'PRIMARY');
  const named = new Set<string>();
  const walk = (node: unknown): void => {
    if (Array.isArray(node)) return node.forEach(walk);
    if (node === null || typeof node !== 'object') return;
    for (const [key, value] of Object.entries(node)) {
      if (key === 'ColumnRef') {
        const fields = (value as { fields?: { String?: { sval?: string } }[] }).fields ?? [];
        const last = fields[fields.length - 1]?.String?.sval;
        if (last) named.add(last);
      }
      walk(value);
    }
  };
  walk(parseSync(sql).stmts);
  return columns.filter((c) => named.has(c));
}

/** A sentence on a copy of every column, when the query reads fewer; '' otherwise. */
function everyColumnText(b: Breakdown, table: string): string {
  const copy = planCopies(b.row.plan).find((c) => c.table === table);
  if (!copy || !(copy.sql.length === 1 && /^SELECT \* FROM\b/i.test(copy.sql[0]))) return '';
  const all = [...(tableStatements().get(table) ?? '').matchAll(/^\s+(\w+)\s+\w/gm)].map((m) => m[1]).filter((c) => c.toUpperCase() !== 'PRIMARY');
  const read = columnsRead(b.row.sql, table);
  if (read.length === 0 || read.length >= all.length) return '';
  const left = all.filter((c) => !read.includes(c));
  return ` The copy is \`SELECT *\`, all ${all.length} columns of ${table}, where the query reads ${read.length} (${read.join(', ')}): leaving out ${left.join(', ')} would move fewer bytes.`;
}

/** The tables of one colocation group as the benchmark distributes them (a table named in colocateWith leads it). */
function colocationGroup(table: string): string {
  return distributed.find((d) => d.table === table)?.colocateWith ?? table;
}

/**
 * A sentence or two on what would make the query faster: on the largest share of the time and, when that share is
 * the plan's fixed costs or the nodes' own work, also on the largest share a different plan could shrink (a copy,
 * the work on one node, the proxy's fold), if it is at least half as large.
 */
function fasterText(b: Breakdown, groups: StepGroup[]): string {
  const leaves = timeShares(groups);
  const outside = b.ms - leaves.reduce((a, s) => a + s.ms, 0);
  const shares = [...leaves, { what: 'outside', group: null, ms: outside } as TimeShare].sort((x, y) => y.ms - x.ms);
  const structural = (s: TimeShare) => s.what === 'outside' || s.what === 'fragments' || (s.what === 'step' && s.group?.kind === 'fragments');
  const top = shares[0];
  const texts = [shareText(b, groups, top, true)];
  const movable = shares.find((s) => s.what === 'fold' || (s.what === 'step' && ['gather', 'broadcast', 'repartition', 'final', 'local', 'statement'].includes(s.group!.kind)));
  if (structural(top) && movable && movable.ms >= top.ms / 2) texts.push(shareText(b, groups, movable, false));
  return texts.filter((t) => t !== '').join(' ');
}

/** The sentence for one share of the time; `largest` says whether it is the largest. */
function shareText(b: Breakdown, groups: StepGroup[], share: TimeShare, largest: boolean): string {
  const g = share.group;
  const direct = medianAnswer(b.row.cells.get('direct')!);
  const which = largest ? 'The largest share' : 'The next largest';
  if (share.what === 'outside') {
    const part = share.ms >= b.ms / 2 ? `Most of the time, ${seconds3(share.ms)} of ${seconds3(b.ms)},` : `${which}, ${seconds3(share.ms)} of ${seconds3(b.ms)},`;
    return `${part} is outside the steps: the plan's fixed costs (planning, temporary tables created, analyzed and dropped, a transaction on each node, round trips), which do not grow with the data but weigh on a query that takes ${direct ? seconds3(direct.ms) : 'little'} direct.`;
  }
  if (!g) return '';
  if (share.what === 'fragments' || (share.what === 'step' && g.kind === 'fragments')) {
    const slowest = share.ms;
    const head = `${which} is the nodes' own work: the slowest fragment took ${seconds3(slowest)}, against ${direct ? seconds3(direct.ms) : '?'} for the whole query direct.`;
    const sharing = `The ${distributedNodes} nodes run at once on 2 cores, half a core each, so a quarter of the work takes about as long as the whole does direct with its parallel workers (with a core per node it would take a quarter of that)`;
    if (!direct || slowest < direct.ms * 1.5) return `${head} ${sharing}.`;
    return (
      `${head} ${sharing}; taking ${(slowest / direct.ms).toFixed(1)} times as long suggests that the nodes' plans also do more work than direct's: each node plans from its own` +
      ' statistics, and the plan for a quarter of the data need not be the one for the whole (an index lookup can become a hash join over all of a node\'s rows).'
    );
  }
  if (share.what === 'fold') {
    return `${which} is the proxy folding ${thousands(g.fragments!.rows)} partial rows into ${thousands(g.rows)} groups after the slowest fragment ended (${seconds3(share.ms)}): one thread decoding and combining each row, which grows with the number of groups and not with the data.`;
  }
  const copies = planCopies(b.row.plan);
  switch (g.kind) {
    case 'gather': {
      const reason = gatherReason(b.row.plan);
      const remedy = reason && /subquery/.test(reason)
        ? 'Planning an uncorrelated subquery on its own first, and running a correlated one on the nodes after repartitioning the table it reads on the correlation column, would leave the rest of the query on the nodes.'
        : `Running the join on the nodes instead, with ${g.table} repartitioned on its join column, would share the work after the copy among all ${distributedNodes} nodes.`;
      return `${which} is copying ${g.table} through the proxy to node ${finalNodeOf(groups) ?? 0}, which then runs the query alone${reason ? ` (the plan's reason: ${reason})` : ''}.${everyColumnText(b, g.table)} ${remedy}`;
    }
    case 'final':
    case 'local':
    case 'statement':
      return `${which} is one node running the query alone over the copied rows, in one backend: PostgreSQL does not scan temporary tables with parallel workers, where direct's plan uses both cores. Keeping the joins or the aggregation on the nodes (repartitioning rather than gathering) would share this work.`;
    case 'broadcast': {
      const copy = copies.find((c) => c.table === g.table);
      const partner = copy && !isFiltered(copy) ? copies.find((c) => c !== copy && colocationGroup(c.table) === colocationGroup(g.table) && isFiltered(c)) : undefined;
      const head = `${which} is broadcasting ${g.table} (${seconds3(share.ms)}): each of its ${thousands(g.rows)} rows goes through the proxy to all ${g.targets} nodes, ${thousands(g.rows * g.targets)} row copies.${everyColumnText(b, g.table)}`;
      if (partner) {
        return `${head} It is copied unfiltered, while only its rows that join the ${partner.table} rows the query keeps are needed: ${g.table} and ${partner.table} are co-located, so joining them on their own nodes before the copy would broadcast that much less.`;
      }
      if (copy && !isFiltered(copy)) return `${head} It is copied unfiltered: only its rows that join the query's other tables are needed, and filtering it by their join keys first would copy fewer.`;
      return `${head} Each row goes to every node because the other side of the join is spread over all of them; the fewer rows the broadcast carries (filters pushed into it, columns left out), the shorter this step.`;
    }
    case 'repartition':
      return `${which} is repartitioning ${g.table} (${seconds3(share.ms)}): its ${thousands(g.rows)} rows go through the proxy, which reads each row's join column to pick its node.${everyColumnText(b, g.table)} Moving fewer rows (filtered on the nodes first) or co-locating the tables on the join key would shorten it.`;
    case 'fragments':
    case 'combine':
    case 'collect':
    case 'merge':
    case 'result':
    case 'other':
      return '';
    default:
      return assertNever(g.kind);
  }
}

/** The node that finishes the plan: the first final, local or statement step's. */
function finalNodeOf(groups: StepGroup[]): number | null {
  for (const g of groups) {
    if ((g.kind === 'final' || g.kind === 'local' || g.kind === 'statement') && g.node !== null) return g.node;
    const inner = finalNodeOf(g.children);
    if (inner !== null) return inner;
  }
  return null;
}

/** One query's paragraph for the docs: its longest steps, the time outside them and what would make it faster. */
function breakdownText(b: Breakdown): string {
  const direct = medianAnswer(b.row.cells.get('direct')!);
  const p = medianAnswer(b.row.cells.get('parapool4')!);
  const head = `**${b.row.query.name}** (${b.row.tier}; ${p ? seconds3(p.ms) : capText(tpchCapMs)} through parapool against ${direct ? seconds3(direct.ms) : '?'} direct)`;
  if (b.failure || b.steps.length === 0) {
    const reason = b.failure ?? 'EXPLAIN ANALYZE printed no steps';
    const copies = planCopies(b.row.plan).map((c) => `${{ Gather: 'gathers', Broadcast: 'broadcasts', Repartition: 'repartitions' }[c.verb]} ${c.table}${isFiltered(c) ? ' (filtered)' : ''}`);
    return `${head}: EXPLAIN ANALYZE ${reason.startsWith('stopped') ? `was ${reason}` : `failed (${reason})`}, so there are no step times; its plan is \`${b.row.plan[0] ?? 'none'}\`${copies.length > 0 ? ` and ${copies.join(', ')}` : ''}.`;
  }
  const groups = groupSteps(b.steps);
  const named = leadingGroups(groups, b.ms);
  const parts = named.map((g) => {
    const inner = g.kind === 'result' ? leadingGroups(g.children, g.ms).map((c) => `${c.text}: ${seconds3(c.ms)}`) : [];
    const own = g.ms - g.children.reduce((a, c) => a + c.ms, 0);
    if (g.kind === 'result' && own > g.ms * 0.25) inner.push(`outside its steps: ${seconds3(own)}`);
    return `${g.text}: ${seconds3(g.ms)} of ${seconds3(b.ms)}${inner.length > 0 ? ` (of which ${inner.join('; ')})` : ''}`;
  });
  const inSteps = groups.reduce((a, g) => a + g.ms, 0);
  const outside = b.ms - inSteps;
  if (outside > b.ms * 0.25) parts.push(`outside the steps (planning, creating and analyzing the temporary tables, the round trips in between): ${seconds3(outside)}`);
  return `${head}: ${parts.join('; ')}. ${fasterText(b, groups)}`.trim();
}

/** The distributed tables and the replicated ones a query reads, in the order it first names them. */
function tablesRead(sql: string): string[] {
  const found: string[] = [];
  const walk = (node: unknown): void => {
    if (Array.isArray(node)) return node.forEach(walk);
    if (node === null || typeof node !== 'object') return;
    for (const [key, value] of Object.entries(node)) {
      if (key === 'RangeVar') {
        const name = (value as { relname?: string }).relname ?? '';
        if ((allTables as readonly string[]).includes(name) && !found.includes(name)) found.push(name);
      }
      walk(value);
    }
  };
  walk(parseSync(sql).stmts);
  return found;
}

const tpchColumns: QueryColumn<TpchRow>[] = [
  { head: 'reads', right: false, value: (row) => tablesRead(row.sql).join(', ') },
  { head: 'rows', right: true, value: (row) => thousands(row.resultRows) },
  { head: 'parapool tier', right: false, value: (row) => row.tier },
];

/** "Q1", "Q1 and Q2", "Q1, Q2 and Q3". */
function andList(names: string[]): string {
  return names.length <= 1 ? names.join('') : `${names.slice(0, -1).join(', ')} and ${names[names.length - 1]}`;
}

/** A target's line of the summary: its geometric mean over the queries it answered, and over all when some hit the cap. */
function tpchSummary(rows: QueryRow[], t: Target): string {
  if (t.missing) return `${t.label}: not measured, ${t.missing}.`;
  const ratios = rows.map((r) => ratioOf(r, t.key)).filter((x): x is number => x !== null);
  const capped = rows.filter((r) => r.cells.get(t.key)!.overCapMs !== null && medianAnswer(r.cells.get('direct')!) !== null);
  const failed = rows.filter((r) => {
    const c = r.cells.get(t.key)!;
    return c.instead !== null && c.overCapMs === null;
  });
  const parts: string[] = [];
  if (ratios.length > 0) {
    parts.push(`answered ${ratios.length} of the ${rows.length} queries within ${tpchCapMs / 1000} s, at a geometric mean of ${percent(geometricMean(ratios))} of direct's speed (from ${percent(Math.min(...ratios))} to ${percent(Math.max(...ratios))})`);
  } else {
    parts.push(`answered none of the ${rows.length} queries within ${tpchCapMs / 1000} s`);
  }
  if (capped.length > 0) {
    const bounds = capped.map((r) => medianAnswer(r.cells.get('direct')!)!.ms / r.cells.get(t.key)!.overCapMs!);
    parts.push(
      `${andList(capped.map((r) => r.query.name))} ran longer and ${capped.length === 1 ? 'was' : 'were'} stopped; counting ${capped.length === 1 ? 'it' : 'them'} at ${tpchCapMs / 1000} s,` +
        ` the geometric mean over all ${ratios.length + capped.length} is at most ${percent(geometricMean([...ratios, ...bounds]))}`,
    );
  }
  if (failed.length > 0) parts.push(`not counted: ${failed.map((r) => `${r.query.name} (${r.cells.get(t.key)!.instead})`).join(', ')}`);
  return `${t.label}: ${parts.join('; ')}.`;
}

function tpchSection(result: TpchResult, targets: Target[], options: Options, facts: Facts, counts: Map<string, number>, timings: Timings): string {
  const n = (t: string) => thousands(counts.get(t) ?? 0);
  const byTier = new Map<string, string[]>();
  for (const row of result.rows) byTier.set(row.tier, [...(byTier.get(row.tier) ?? []), row.query.name]);
  const tiers = [...byTier].sort((a, b) => b[1].length - a[1].length).map(([tier, names]) => `${tier} ${names.length} (${names.join(', ')})`);
  const command = options.part === 'tpch' ? '`npm run bench -- --only tpch`' : '`node dist/bench/parallel-bench.js --part tpch`';
  const scaled = Number(options.sf) < 1
    ? [
        `Scale factor ${options.sf}, not 1 as in the parallel-query section: in Q17 and Q20 a subquery over lineitem is correlated with the outer`,
        'row, and PostgreSQL runs it once per outer row, each time a scan of lineitem (the schema has no index on l_partkey or l_suppkey), so their time',
        `grows with the square of the data. At this scale factor direct took ${tpchDirectText(result.rows, ['Q17', 'Q20'], 1)}; at scale factor 1, some`,
        `${(1 / Number(options.sf) ** 2).toFixed(0)} times as long, it would take about ${tpchDirectText(result.rows, ['Q17', 'Q20'], 1 / Number(options.sf) ** 2)}, more than a 20-minute run can hold.`,
      ]
    : [];
  const explained = result.breakdowns;
  return [
    tpchHeading,
    '',
    `Run ${facts.date} with ${command} (\`npm run bench\` runs it too; ${duration(timings.total)} this time). The 22 TPC-H queries as`,
    'fixtures/corpus/01-tpch.sql writes them for PostgreSQL (tpch_q01 to tpch_q22, each with its parameters fixed), unchanged,',
    `on TPC-H-shaped data at scale factor ${options.sf} (${n('lineitem')} lineitem, ${n('orders')} orders, ${n('partsupp')} partsupp, ${n('part')} part, ${n('customer')} customer, ${n('supplier')} supplier`,
    `rows) generated by fixtures/tpch/data.sql on one PostgreSQL, **direct** (${timings.generate.toFixed(0)} s), and loaded as in the parallel-query section into`,
    `**parapool, 4 nodes** (${timings.parapool4.toFixed(0)} s) and **PostgreSQL FDW, 4 nodes** (${timings.fdw.toFixed(0)} s): the same rules and hash partitions on the same`,
    'keys; supplier, nation and region are replicated to every node under parapool and local tables on the FDW\'s coordinator.',
    ...scaled,
    '',
    'Each query is measured as in the parallel-query section: a warm-up whose answer must equal direct\'s (the same columns, the same rows',
    `with the same text, in order when the query orders them; float columns${result.rows.some((r) => r.columns.some((c) => floatTypes.has(c.type))) ? '' : ', which none of these answers has,'} compare at 12 significant digits), then`,
    `${options.runs} runs on each target, the targets taking turns (fewer when they would take more than ${cellBudgetMs / 1000} s, none when the warm-up took more than`,
    `${longQueryMs / 1000} s). Here each run on parapool or the FDW is stopped at ${tpchCapMs / 1000} s (statement_timeout, and a CancelRequest for a distributed plan`,
    `whose statements add up to more), so that the run goes on: the query shows as "${capText(tpchCapMs)}", and its ratio as the most it can be. Direct, the`,
    `reference, runs every query to the end (within ${queryTimeoutMs / 1000} s). Times are medians in milliseconds, from sending the query to the last row;`,
    '"vs direct" is direct\'s median divided by the target\'s (above 100 % is faster than direct). "parapool tier" is how parapool ran the',
    'query: the word after "Distributed" on the first line of its `EXPLAIN` (Aggregate: partial aggregates on every node, folded at the proxy',
    'and finished on one node; Merge: fragments on every node, merged at the proxy; Broadcast and Repartition: tables copied between nodes',
    'through the proxy, then the join on every node; Intermediate: subqueries planned and run on their own first, their results copied to one',
    'node; Gather: the tables copied to one node, which runs the query).',
    '',
    queryTable(result.rows, targets, tpchColumns),
    '',
    ...targets.filter((t) => t.key !== 'direct').map((t) => tpchSummary(result.rows, t)),
    `parapool's tiers: ${tiers.join('; ')}.`,
    fasterThanDirectText(result.rows),
    '',
    '### Where the time goes',
    '',
    `For the ${['no', 'one', 'two', 'three', 'four', 'five'][explained.length] ?? explained.length} queries where parapool's ratio to direct is lowest, \`EXPLAIN ANALYZE\` through parapool (one more run, whose time may`,
    'differ a little from the median above) gives the rows and time of each step of the distributed plan. The steps of one table from',
    'several nodes ran at once, so they are told as one, with the longest one\'s time; the fragments of an aggregate or a merge ran while the',
    'proxy folded or merged their rows, so they are told inside that step. The rest of the time is outside the steps: planning, creating',
    'and analyzing the temporary tables, the round trips between the steps.',
    '',
    ...explained.map((b) => `- ${breakdownText(b)}`),
    '',
    coresNote(facts),
    '',
    ...machineAndSetUp(facts),
    '',
    disturbance(result.rows, []),
    '',
  ].join('\n');
}

/**
 * A paragraph on the queries parapool ran more than 1.5 times as fast as direct, or '' when there are none. Q17 and
 * Q20 scan lineitem once per outer row in a correlated subquery; how parapool shrinks each scan depends on its tier.
 */
function fasterThanDirectText(rows: TpchRow[]): string {
  const faster = rows.filter((r) => (ratioOf(r, 'parapool4') ?? 0) > 1.5);
  if (faster.length === 0) return '';
  const times = (r: TpchRow) => `${r.query.name} ${(ratioOf(r, 'parapool4')!).toFixed(1)} times as fast`;
  const correlated = faster.filter((r) => r.query.name === 'Q17' || r.query.name === 'Q20');
  const others = faster.filter((r) => !correlated.includes(r));
  const parts = [`Where parapool beats direct on the same 2 cores (${faster.map(times).join(', ')}), the work differs, not the parallelism.`];
  if (correlated.length > 0) {
    const how = correlated.map((r) => {
      const copy = planCopies(r.plan).find((c) => c.table === 'lineitem');
      if (r.tier === 'Repartition') return `${r.query.name} (Repartition) runs it on every node over that node's share of the repartitioned lineitem, for that node's share of the outer rows`;
      if (r.tier === 'Gather' && copy && isFiltered(copy)) {
        const where = copy.sql.slice(copy.sql.findIndex((l) => /^WHERE\b/i.test(l)));
        const on = [...new Set(where.join(' ').match(/\bl_\w+/g) ?? [])];
        const from = copy.sql.findIndex((l) => /^FROM\b/i.test(l));
        const columns = copy.sql[0] === 'SELECT' && from > 1 ? from - 1 : 0;
        return `${r.query.name} (Gather) runs it on one node over a copy of lineitem that the nodes first filtered${on.length > 0 ? ` on ${on.join(', ')}` : ''} as the query does${columns > 0 ? `, cut to the ${columns} columns it reads` : ''}`;
      }
      return `${r.query.name} (${r.tier}) runs it over copies that parapool made for the purpose`;
    });
    parts.push(
      `In ${correlated.map((r) => r.query.name).join(' and ')} a subquery correlated with the outer row scans lineitem once per outer row, on direct the whole table each time;`,
      `through parapool ${how.join(', and ')}.`,
    );
  }
  if (others.length > 0) {
    parts.push(`For ${others.map((r) => r.query.name).join(', ')}, each node plans the query over its own share of the data, and that plan need not be direct's plan over all of it (EXPLAIN ANALYZE on a node and on direct shows how).`);
  }
  return parts.join(' ');
}

/** Direct's median for the named queries times `factor`, as "4.7 s on Q17 and 9.1 s on Q20" ("38 min" from a minute up). */
function tpchDirectText(rows: QueryRow[], names: string[], factor: number): string {
  return names
    .map((name) => {
      const row = rows.find((r) => r.query.name === name);
      const m = row ? medianAnswer(row.cells.get('direct')!) : null;
      if (!m) return null;
      const ms = m.ms * factor;
      return `${ms >= 600_000 ? `${(ms / 60_000).toFixed(0)} min` : ms >= 10_000 ? `${(ms / 1000).toFixed(0)} s` : seconds3(ms)} on ${name}`;
    })
    .filter((t): t is string => t !== null)
    .join(' and ');
}

// ---------------------------------------------------------------------------------------------------------------

async function main(): Promise<number> {
  const options = parseOptions(process.argv.slice(2));
  const parallel = options.part === 'parallel';
  const startedAt = Date.now();
  await loadModule();
  const binDir = findPostgresBinDir();
  const psql = findClientProgram('psql');
  const base = machineFacts(binDir);
  const facts: Facts = { ...base, fdw: 'postgres_fdw 1.1', parapool: `${base.parapool}${sourceRevision()}` };
  const cores = cpuCount(facts);
  const schema = tableStatements();
  const dir = makeWorkDir('parapool-parallel-bench-', options.keep);

  // The 2-node cluster is the parallel-query section's alone.
  const names = ['direct', ...(parallel ? ['pair0', 'pair1'] : []), ...Array.from({ length: distributedNodes }, (_, i) => `node${i}`)];
  say(`starting ${names.length} PostgreSQL nodes and the coordinator`);
  const nodes = await startNodes(binDir, dir, names, nodeSettings);
  const [directNode, ...rest] = nodes;
  const pairNodes = parallel ? rest.slice(0, 2) : [];
  const quadNodes = rest.slice(pairNodes.length);
  const [coordinator] = await startNodes(binDir, dir, ['coordinator'], coordinatorSettings);
  const source: Endpoint = { port: directNode.port, database: 'postgres' };

  // 1. The reference, then the other targets filled from it.
  let phase = Date.now();
  say(`generating the TPC-H-shaped data at scale factor ${options.sf} on the direct node`);
  const counts = await generateReference(directNode, options, schema);
  const timings: Timings = { generate: seconds(phase), parapool2: 0, parapool4: 0, fdw: 0, total: 0 };
  say(`generated ${thousands(counts.get('lineitem')!)} lineitem rows in ${timings.generate.toFixed(0)} s`);

  let proxy2: Server | null = null;
  if (parallel) {
    phase = Date.now();
    proxy2 = await startParapool(dir, 'parapool-2', pairNodes.map((n) => n.port));
    await setUpParapool(psql, proxy2, pairNodes, source, schema, counts);
    timings.parapool2 = seconds(phase);
    say(`parapool, 2 nodes: loaded in ${timings.parapool2.toFixed(0)} s`);
  }

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

  const target = (key: TargetKey, port: number, proxy: Server | null, missing: string | null): Target => ({ key, label: targetLabels[key], port, proxy, missing, client: null, timeoutMs: 0 });
  const targets: Target[] = [
    target('direct', directNode.port, null, null),
    ...(proxy2 ? [target('parapool2', proxy2.port, proxy2, null)] : []),
    target('parapool4', proxy4.port, proxy4, null),
    target('fdw', coordinator.port, null, fdwMissing),
  ];
  const postmasters = [...nodes, coordinator].map(postmasterPid);

  // 2. The queries: the parallel-query section's, or all 22 TPC-H queries (on direct, parapool over 4 nodes, the FDW).
  const measured = parallel ? await measureQueries(targets, queries, options, postmasters, cores) : null;
  const tpchResult = parallel ? null : await measureTpch(targets, options, postmasters, cores);
  const wrong = measured?.wrong ?? tpchResult!.wrong;
  for (const t of targets) {
    await t.client?.end().catch(() => undefined);
    t.client = null;
  }
  await proxy2?.stop();
  await proxy4.stop();
  await stopAndSettle(pairNodes);

  if (tpchResult) {
    await stopAndSettle([coordinator, directNode, ...quadNodes]);
    timings.total = seconds(startedAt);
    publish(options.docs, tpchHeading, tpchSection(tpchResult, targets, options, facts, counts, timings));
    return reportWrong(wrong);
  }

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
  publish(options.docs, sectionHeading, section(measured!.rows, [...streamRows, ...bigRows], targets, options, facts, counts, timings));
  return reportWrong(wrong);
}

/** The exit status: 1 when any answer differed from direct's, which the sections report too. */
function reportWrong(wrong: string[]): number {
  if (wrong.length === 0) return 0;
  say(`${wrong.length} wrong answer(s):\n${wrong.join('\n')}`);
  return 1;
}

runBenchmark(main);
