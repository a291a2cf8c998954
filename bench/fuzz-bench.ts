// The protocol fuzz benchmark behind `bash bench/run.sh --only fuzz`: the suite's seeded fuzzer at a scale CI has
// no time for (1,000,000 messages by default), against a proxy in front of two nodes. After every batch of 160
// sessions a fresh session must answer SELECT 1 and no node may have been detached: the run stops at the first
// batch that detached one, naming its seeds (fuzzCase rebuilds any case from its seed). At the end no error may
// have reached the last-resort handlers, and once the pools are emptied no backend connection may be left on the
// nodes. It prints the counts, the throughput and the memory, and writes them into docs/benchmarks.md.
import { Client } from 'pg';
import { serialize } from 'pg-protocol';
import { closeWorkerPool } from '../src/executor/worker-pool';
import { escapedErrorCount } from '../src/server/process-guard';
import { fuzzSchema, runFuzzCampaign } from '../test/support/protocol-fuzz';
import { RawClient } from '../test/support/raw-client';
import { startTestCluster, type TestCluster } from '../test/support/test-cluster';
import { integerOption, machineFacts, machineLine, onCleanup, parseCommonOptions, publish, runBenchmark, say, sleep, sourceRevision, StepError } from './bench-support';
import { findPostgresBinDir } from '../src/cluster/postgres-install';

const sectionHeading = '## Protocol fuzz: malformed client bytes';

const usage = `usage: bash bench/run.sh --only fuzz [--messages N] [--seed S] [--docs FILE]
  --messages N   fuzzed frontend messages to send (default 1000000)
  --seed S       first seed; case i is rebuilt from seed S+i (default 20261202, the suite's)
  --docs FILE    where the results section goes (default docs/benchmarks.md; "-" writes nothing)
`;

function parseOptions(argv: string[]) {
  const own = { messages: 1_000_000, seed: 20261202 };
  const common = parseCommonOptions(argv, usage, (arg, value) => {
    if (arg === '--messages') own.messages = integerOption(arg, value(), 1, usage);
    else if (arg === '--seed') own.seed = integerOption(arg, value(), 0, usage);
    else return false;
    return true;
  });
  return { ...common, ...own };
}

async function selectOne(port: number, context: string): Promise<void> {
  const client = await RawClient.ready(port);
  client.send(serialize.query('SELECT 1'));
  const replies = await client.readUntil('Z');
  client.end();
  if (!replies.some((m) => m.type === 'D')) throw new StepError(`${context}: a fresh session got no answer to SELECT 1`);
  if (escapedErrorCount() > 0) throw new StepError(`${context}: ${escapedErrorCount()} errors reached the last-resort handlers`);
}

async function clientBackends(cluster: TestCluster): Promise<number[]> {
  const counts = await cluster.onEachNode("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()");
  return counts.map((rows) => Number(rows[0][0]));
}

async function main(): Promise<number> {
  const options = parseOptions(process.argv.slice(2));
  const facts = machineFacts(findPostgresBinDir());
  say(`starting 2 nodes and the proxy; ${options.messages} messages from seed ${options.seed}`);
  const cluster = await startTestCluster({ nodes: 2 });
  onCleanup('the fuzz cluster', () => cluster.stop());
  const setup = new Client({ host: '127.0.0.1', port: cluster.proxy.port, user: 'postgres', database: 'postgres' });
  await setup.connect();
  for (const sql of fuzzSchema) await setup.query(sql);
  await setup.end();

  const started = process.hrtime.bigint();
  let lastReport = Date.now();
  const totals = await runFuzzCampaign({
    port: cluster.proxy.port,
    targetMessages: options.messages,
    seedBase: options.seed,
    afterBatch: async (batch, lastSeed) => {
      await selectOne(cluster.proxy.port, `after batch ${batch} (seeds up to ${lastSeed})`);
      const detached = cluster.proxy.cluster.nodes.filter((node) => node.status !== 'up');
      if (detached.length > 0) {
        throw new StepError(`batch ${batch} (seeds ${lastSeed - 159}..${lastSeed}) left node ${detached.map((n) => n.id).join(', ')} ${detached[0].status}`);
      }
      if (Date.now() - lastReport > 10_000) {
        lastReport = Date.now();
        say(`batch ${batch}: seeds up to ${lastSeed}, RSS ${(process.memoryUsage().rss / 2 ** 20).toFixed(0)} MiB`);
      }
    },
  });
  const seconds = Number(process.hrtime.bigint() - started) / 1e9;

  const check = await cluster.connect();
  const states = ((await check.query('SHOW pool_nodes')).rows as { status: string }[]).map((r) => r.status);
  await check.end();
  for (let i = 0; i < 200 && cluster.proxy.sessionCount > 0; i++) await sleep(50);
  cluster.proxy.pool.close();
  await closeWorkerPool();
  let backends = await clientBackends(cluster);
  for (let i = 0; i < 100 && backends.some((n) => n > 0); i++) {
    await sleep(100);
    backends = await clientBackends(cluster);
  }
  const mib = (bytes: number) => (bytes / 2 ** 20).toFixed(0);
  const ok = escapedErrorCount() === 0 && states.every((s) => s === 'up') && backends.every((n) => n === 0);
  const text = [
    sectionHeading,
    '',
    `\`bash bench/run.sh --only fuzz --messages ${options.messages}\` (seeds ${options.seed}..${totals.lastSeed}), parapool${sourceRevision()}.`,
    machineLine(facts),
    'The proxy and the fuzzing clients share one process; 16 sessions at a time, 50 mutated messages each (or random',
    'bytes before start-up), and a fresh `SELECT 1` after every batch of 160 sessions.',
    '',
    '| | |',
    '|---|---:|',
    `| fuzzed messages | ${totals.messages.toLocaleString('en-US')} |`,
    `| sessions (with bytes before start-up) | ${totals.sessions.toLocaleString('en-US')} (${totals.beforeStartup.toLocaleString('en-US')}) |`,
    `| batches, each followed by a SELECT 1 that was answered | ${totals.batches} |`,
    `| time, messages per second | ${seconds.toFixed(0)} s, ${(totals.messages / seconds).toFixed(0)} |`,
    `| RSS after warm-up, peak | ${mib(totals.warmRss)} MiB, ${mib(totals.peakRss)} MiB |`,
    `| errors that reached the last-resort handlers | ${escapedErrorCount()} |`,
    `| nodes after the run | ${states.join(', ')} |`,
    `| client backends left on the nodes once the pools were emptied | ${backends.join(', ')} |`,
    '',
  ].join('\n');
  publish(options.docs, sectionHeading, text);
  return ok ? 0 : 1;
}

runBenchmark(main);
