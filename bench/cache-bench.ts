// The query-cache benchmark behind `bash bench/run.sh --only cache`: read-heavy pgbench scripts against one node
// directly and through parapool in front of two replicated nodes, with memory_cache_enabled off and on, in one run
// on one machine. It prints the table and writes it into docs/benchmarks.md.

import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { findPostgresBinDir } from '../src/cluster/postgres-install';
import {
  findClientProgram, integerOption, machineFacts, machineLine, makeWorkDir, parseCommonOptions, publish, runBenchmark, runProgram,
  say, startNodes, startParapool, StepError, throwIfFinishing, waitReady, type CommonOptions, type MachineFacts,
} from './bench-support';

const sectionHeading = '## Query cache: read-heavy pgbench scripts with memory_cache_enabled off and on';

interface Options extends CommonOptions {
  duration: number;
  warmup: number;
  clients: number;
  scale: number;
}

const usage = `usage: bash bench/run.sh --only cache [--cache-duration S] [--cache-clients N] [--cache-scale N] [--docs FILE] [--keep]
  --cache-duration S  seconds of each measured pgbench run (default 10), after a 2 s warm-up
  --cache-clients N   pgbench -c (default 8, with -j 2)
  --cache-scale N     pgbench -i -s (default 2)
`;

function parseOptions(argv: string[]): Options {
  const own = { duration: 10, warmup: 2, clients: 8, scale: 2 };
  const common = parseCommonOptions(argv, usage, (arg, value) => {
    switch (arg) {
      case '--cache-duration':
        own.duration = integerOption(arg, value(), 1, usage);
        return true;
      case '--cache-clients':
        own.clients = integerOption(arg, value(), 2, usage);
        return true;
      case '--cache-scale':
        own.scale = integerOption(arg, value(), 1, usage);
        return true;
      default:
        return false;
    }
  });
  return { ...own, ...common };
}

interface Workload {
  readonly name: string;
  readonly what: string;
  /** pgbench -f arguments, with weights. */
  readonly scripts: readonly { readonly text: string; readonly weight: number }[];
}

const workloads: Workload[] = [
  {
    name: 'point reads',
    what: 'a one-row primary-key SELECT of one of 2,000 accounts',
    scripts: [{ text: '\\set aid random(1, 2000)\nSELECT abalance FROM pgbench_accounts WHERE aid = :aid;\n', weight: 1 }],
  },
  {
    name: 'aggregates',
    what: 'one of 20 GROUP BY aggregates over the first 5,000 to 100,000 accounts',
    scripts: [{ text: '\\set n random(1, 20)\nSELECT bid, count(*), sum(abalance) FROM pgbench_accounts WHERE aid <= :n * 5000 GROUP BY bid ORDER BY bid;\n', weight: 1 }],
  },
  {
    name: 'point reads, 1 % writes',
    what: 'the point reads, with one transaction in a hundred an UPDATE of a branch (it drops only the entries that read pgbench_branches: none)',
    scripts: [
      { text: '\\set aid random(1, 2000)\nSELECT abalance FROM pgbench_accounts WHERE aid = :aid;\n', weight: 99 },
      { text: '\\set bid random(1, 2)\nUPDATE pgbench_branches SET bbalance = bbalance + 1 WHERE bid = :bid;\n', weight: 1 },
    ],
  },
  {
    name: 'point reads, 1 % writes of the read table',
    what: 'the point reads, with one transaction in a hundred an UPDATE of an account (it drops every entry, all of them read pgbench_accounts)',
    scripts: [
      { text: '\\set aid random(1, 2000)\nSELECT abalance FROM pgbench_accounts WHERE aid = :aid;\n', weight: 99 },
      { text: '\\set aid random(1, 2000)\nUPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = :aid;\n', weight: 1 },
    ],
  },
];

interface Row {
  workload: string;
  target: string;
  tps: number | null;
  latencyMs: number | null;
  hitRatio: string;
  note: string;
}

function parsePgbench(stdout: string, stderr: string, code: number | null): { tps: number | null; latencyMs: number | null; error: string | null } {
  const tps = /tps = ([0-9.]+) \(without initial connection time\)/.exec(stdout);
  const latency = /latency average = ([0-9.]+) ms/.exec(stdout);
  const failed = /number of failed transactions: (\d+)/.exec(stdout);
  let error: string | null = null;
  if (code !== 0) error = `pgbench exited with code ${code}: ${stderr.split('\n').filter((l) => /error|abort|fatal/i.test(l)).slice(0, 2).join(' | ')}`;
  else if (!tps) error = 'pgbench printed no tps line';
  else if (failed && Number(failed[1]) > 0) error = `${failed[1]} failed transactions`;
  return { tps: tps ? Number(tps[1]) : null, latencyMs: latency ? Number(latency[1]) : null, error };
}

/** SHOW pool_cache's hits and misses so far. */
async function cacheCounts(psql: string, port: number): Promise<[number, number]> {
  const result = await runProgram(psql, ['-h', '127.0.0.1', '-p', String(port), '-U', 'postgres', '-At', '-F', ' ', '-c', 'SHOW pool_cache', 'postgres'], 30_000);
  const fields = result.stdout.trim().split(' ');
  return [Number(fields[0]) || 0, Number(fields[1]) || 0];
}

function table(rows: Row[]): string {
  const lines = ['| workload | target | TPS | vs direct | latency avg | cache hit ratio | note |', '| --- | --- | ---: | ---: | ---: | --- | --- |'];
  for (const row of rows) {
    const direct = rows.find((r) => r.workload === row.workload && r.target === 'direct');
    const ratio = row.tps !== null && direct?.tps ? `${((row.tps / direct.tps) * 100).toFixed(0)} %` : '';
    lines.push(`| ${row.workload} | ${row.target} | ${row.tps?.toFixed(0) ?? ''} | ${ratio} | ${row.latencyMs === null ? '' : `${row.latencyMs.toFixed(3)} ms`} | ${row.hitRatio} | ${row.note.replace(/\|/g, '\\|')} |`);
  }
  return lines.join('\n');
}

function section(rows: Row[], options: Options, facts: MachineFacts): string {
  const tpsOf = (workload: string, target: string) => rows.find((r) => r.workload === workload && r.target === target)?.tps ?? null;
  const gains = workloads.map((w) => {
    const off = tpsOf(w.name, 'parapool, cache off');
    const on = tpsOf(w.name, 'parapool, cache on');
    return off && on ? `${w.name} ${(on / off).toFixed(2)}×` : `${w.name} not measured`;
  });
  return [
    sectionHeading,
    '',
    `Run ${facts.date} with \`bash bench/run.sh --only cache\`: \`pgbench -M simple -c ${options.clients} -j 2 -T ${options.duration}\` (after a ${options.warmup} s warm-up)`,
    `on \`pgbench -i -s ${options.scale}\` data, directly against one PostgreSQL node and through parapool in front of two nodes holding the`,
    'same data (replication mode, reads balanced over both), with `memory_cache_enabled` off and on (`memqcache_shared = on`: every',
    'write also tells other proxies through the nodes\' NOTIFY, and waits for them). The cache answers simple-protocol queries only.',
    '',
    ...workloads.map((w) => `- ${w.name}: ${w.what}.`),
    '',
    table(rows),
    '',
    machineLine(facts),
    `Software: ${facts.postgres}; parapool ${facts.parapool} on Node.js ${facts.node}.`,
    '',
    `Cache on against cache off: ${gains.join('; ')}. A hit costs the proxy a hash lookup and one write of the stored reply; no node`,
    'is asked. A plain INSERT, UPDATE or DELETE drops only the entries that read its table (docs/query-cache.md); any other',
    'statement that may change data empties the whole cache. Frequent writes to the table being read cost more than the cache saves, as with pgpool-II\'s',
    'cache, which also invalidates per table.',
    '',
  ].join('\n');
}

async function main(): Promise<number> {
  const options = parseOptions(process.argv.slice(2));
  const binDir = findPostgresBinDir();
  const pgbench = findClientProgram('pgbench');
  const psql = findClientProgram('psql');
  const facts = machineFacts(binDir);
  const dir = makeWorkDir('parapool-cache-bench-', options.keep);
  say('starting two PostgreSQL nodes');
  const nodes = await startNodes(binDir, dir, ['node0', 'node1'], { max_connections: '100', shared_buffers: "'256MB'" });
  for (const node of nodes) {
    await waitReady('PostgreSQL', node.port, null);
    // pgbench -i's data is the same on every run: both nodes hold the same rows, as replication mode needs.
    const init = await runProgram(pgbench, ['-i', '-s', String(options.scale), '-q', '-h', '127.0.0.1', '-U', 'postgres', '-p', String(node.port), 'postgres'], 600_000);
    if (init.code !== 0) throw new StepError(`pgbench -i failed (code ${init.code}):\n${init.stderr.trim()}`);
  }
  const scriptArgs: string[][] = workloads.map((workload, i) =>
    workload.scripts.flatMap((script, j) => {
      const path = join(dir, `workload-${i}-${j}.sql`);
      writeFileSync(path, script.text);
      return ['-f', `${path}@${script.weight}`];
    }),
  );
  const targets: { label: string; start(): Promise<{ port: number; stop(): Promise<void> }> }[] = [
    { label: 'direct', start: async () => ({ port: nodes[0].port, stop: async () => undefined }) },
    ...[false, true].map((cacheOn) => ({
      label: `parapool, cache ${cacheOn ? 'on' : 'off'}`,
      async start() {
        const server = await startParapool(dir, `parapool-cache-${cacheOn ? 'on' : 'off'}`, nodes.map((n) => n.port), (config) => {
          config.maxPool = 16;
          config.memoryCacheEnabled = cacheOn;
        });
        return { port: server.port, stop: () => server.stop() };
      },
    })),
  ];
  const rows: Row[] = [];
  for (const target of targets) {
    say(`${target.label}: starting`);
    const running = await target.start();
    for (const [i, workload] of workloads.entries()) {
      const args = (seconds: number) => ['-M', 'simple', '-n', '-c', String(options.clients), '-j', '2', '-T', String(seconds), ...scriptArgs[i], '-h', '127.0.0.1', '-U', 'postgres', '-p', String(running.port), 'postgres'];
      await runProgram(pgbench, args(options.warmup), (options.warmup + 60) * 1000);
      say(`${target.label}, ${workload.name}: ${options.duration} s`);
      const cacheOn = target.label.endsWith('on');
      const before = cacheOn ? await cacheCounts(psql, running.port) : [0, 0];
      const result = await runProgram(pgbench, args(options.duration), (options.duration + 60) * 1000);
      throwIfFinishing();
      const measured = parsePgbench(result.stdout, result.stderr, result.code);
      let hitRatio = '';
      if (cacheOn) {
        const after = await cacheCounts(psql, running.port);
        const [hits, misses] = [after[0] - before[0], after[1] - before[1]];
        hitRatio = `${hits + misses === 0 ? '0.00' : (hits / (hits + misses)).toFixed(2)} (${hits} hits, ${misses} misses)`;
      }
      rows.push({ workload: workload.name, target: target.label, tps: measured.error ? null : measured.tps, latencyMs: measured.error ? null : measured.latencyMs, hitRatio, note: measured.error ?? '' });
      say(`${target.label}, ${workload.name}: ${measured.error ?? `${measured.tps?.toFixed(0)} tps`}`);
    }
    await running.stop();
  }
  publish(options.docs, sectionHeading, section(rows, options, facts));
  return rows.some((r) => r.tps === null) ? 1 : 0;
}

runBenchmark(main);
