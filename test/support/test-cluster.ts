// A throw-away cluster for a test file: N local PostgreSQL nodes, optionally one reference PostgreSQL holding
// all the data, and the proxy in-process on a free port. Everything lives in a temp dir removed at stop().

import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Client, type ClientConfig } from 'pg';
import { defaultConfig, type ProxyConfig } from '../../src/config/config';
import { LocalPostgres } from '../../src/cluster/local-postgres';
import { startNodes } from '../../src/cluster/sandbox';
import { configureStreaming, startStreamingNodes } from '../../src/cluster/streaming-nodes';
import { configureLog } from '../../src/log';
import { ProxyServer } from '../../src/server/proxy-server';

export interface TestClusterOptions {
  readonly nodes: number;
  /** Streaming replication: node 0 the primary and `nodes - 1` streaming standbys, as `parapool sandbox --replicas` makes them. */
  readonly streaming?: boolean;
  readonly reference?: boolean;
  readonly configure?: (config: ProxyConfig) => void;
  /** Leave the proxy unstarted (tests that start it themselves). */
  readonly noProxy?: boolean;
}

export interface TestCluster {
  readonly dir: string;
  readonly nodes: LocalPostgres[];
  readonly reference: LocalPostgres | null;
  proxy: ProxyServer;
  readonly config: ProxyConfig;
  /** A connected node-postgres client through the proxy. */
  connect(overrides?: Partial<ClientConfig>): Promise<Client>;
  /** A connected client straight to node i (or to the reference with 'reference'). */
  connectDirect(target: number | 'reference', overrides?: Partial<ClientConfig>): Promise<Client>;
  /** Runs SQL on every node directly, returning each node's rows as text, in node order. */
  onEachNode(sql: string): Promise<(string | null)[][][]>;
  restartProxy(configure?: (config: ProxyConfig) => void): Promise<void>;
  stop(): Promise<void>;
}

/** Values come back as PostgreSQL's text, untouched: the differential tests compare text. */
export const textTypes = { getTypeParser: () => (value: string) => value } as unknown as ClientConfig['types'];

configureLog({ minLevel: (process.env.PARAPOOL_TEST_LOG as 'debug' | undefined) ?? 'fatal' });

export async function startTestCluster(options: TestClusterOptions): Promise<TestCluster> {
  const dir = mkdtempSync(join(tmpdir(), 'parapool-test-'));
  const count = options.nodes + (options.reference ? 1 : 0);
  if (options.streaming && options.reference) throw new Error('a streaming test cluster has no reference node');
  const all = options.streaming ? await startStreamingNodes(options.nodes - 1, dir, true) : await startNodes(count, dir, true);
  const nodes = all.slice(0, options.nodes);
  const reference = options.reference ? all[options.nodes] : null;
  const config = defaultConfig();
  config.port = 0;
  config.backends = nodes.map((node, id) => ({ id, host: '127.0.0.1', port: node.port, weight: 1, dataDirectory: node.dataDir }));
  if (options.streaming) configureStreaming(config);
  config.logMinMessages = (process.env.PARAPOOL_TEST_LOG as 'debug' | undefined) ?? 'fatal';
  config.logdir = dir;
  // Each test expects a proxy it starts (or restarts) to begin with every node in service, whatever an earlier
  // test detached; the tests of pgpool_status itself turn this off.
  config.discardStatus = true;
  options.configure?.(config);
  const cluster: TestCluster = {
    dir,
    nodes,
    reference,
    proxy: new ProxyServer(config),
    config,
    async connect(overrides = {}) {
      const client = new Client({ host: '127.0.0.1', port: cluster.proxy.port, user: 'postgres', database: 'postgres', types: textTypes, ...overrides });
      await client.connect();
      return client;
    },
    async connectDirect(target, overrides = {}) {
      const node = target === 'reference' ? reference! : nodes[target];
      const client = new Client({ host: '127.0.0.1', port: node.port, user: 'postgres', database: 'postgres', types: textTypes, ...overrides });
      await client.connect();
      return client;
    },
    async onEachNode(sql) {
      const results: (string | null)[][][] = [];
      for (let node = 0; node < nodes.length; node++) {
        const direct = await cluster.connectDirect(node);
        results.push(await rowsOf(direct, sql));
        await direct.end();
      }
      return results;
    },
    async restartProxy(configure) {
      await cluster.proxy.stop();
      const next: ProxyConfig = { ...config, port: cluster.proxy.port, backends: config.backends };
      configure?.(next);
      cluster.proxy = new ProxyServer(next);
      await cluster.proxy.start();
    },
    async stop() {
      await cluster.proxy.stop().catch(() => undefined);
      await Promise.all(all.map((node) => node.stop('immediate').catch(() => undefined)));
      rmSync(dir, { recursive: true, force: true });
    },
  };
  if (!options.noProxy) {
    try {
      await cluster.proxy.start();
    } catch (error) {
      await cluster.stop();
      throw error;
    }
  }
  return cluster;
}

/** Runs a query and returns its rows as arrays of text (null for NULL). */
export async function rowsOf(client: Client, sql: string, values?: unknown[]): Promise<(string | null)[][]> {
  const result = await client.query({ text: sql, values, rowMode: 'array' });
  return result.rows as (string | null)[][];
}
