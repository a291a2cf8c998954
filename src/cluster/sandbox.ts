// A whole cluster on this machine: N local PostgreSQL nodes on free loopback ports, a parapool.conf naming
// them, and the proxy in front. `parapool sandbox` and the test suites both stand on this.

import { createHash } from 'node:crypto';
import { chmodSync, existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { configToText, defaultConfig, loadConfigFile, type ProxyConfig } from '../config/config';
import { log } from '../log';
import { ProxyServer } from '../server/proxy-server';
import { freePort, LocalPostgres } from './local-postgres';
import { findPostgresBinDir } from './postgres-install';
import { configureStreaming, startStreamingNodes } from './streaming-nodes';

/** The default online-recovery scripts, for nodes on this host (scripts/recovery in the package). */
export const recoveryScripts = resolve(__dirname, '../../../scripts/recovery');

export interface SandboxOptions {
  readonly nodes: number;
  /** Streaming replication: a primary and this many streaming standbys (instead of `nodes` replicated nodes). */
  readonly replicas?: number;
  /** Proxy port; 0 lets the system choose. */
  readonly port: number;
  readonly dir: string;
  readonly fast?: boolean;
  /** Serve PCP on this port (0: one the system chooses), with user postgres / password postgres. */
  readonly pcpPort?: number;
  /** Serve Prometheus metrics on this port of 127.0.0.1 (0: one the system chooses). */
  readonly metricsPort?: number;
  /** Serve the web admin page on this port (0 or absent: no page), with PCP's user postgres / password postgres. */
  readonly webPort?: number;
  /** Start with every node in service, forgetting the pgpool_status of the last run (-D). */
  readonly discardStatus?: boolean;
  /** Adjusts the generated configuration before it is written. */
  readonly configure?: (config: ProxyConfig) => void;
}

export interface Sandbox {
  readonly nodes: LocalPostgres[];
  readonly proxy: ProxyServer;
  readonly configPath: string;
  stop(): Promise<void>;
}

/** Starts the nodes (creating them when new), writes the config and starts the proxy. */
export async function startNodes(count: number, dir: string, fast = false): Promise<LocalPostgres[]> {
  const binDir = findPostgresBinDir();
  mkdirSync(dir, { recursive: true });
  chmodSync(dir, 0o755); // the postgres OS user must reach its data directory inside
  const nodes: LocalPostgres[] = [];
  for (let i = 0; i < count; i++) {
    nodes.push(new LocalPostgres({ binDir, dataDir: join(dir, `node${i}`), port: await freePort(), fast }));
  }
  const started = await Promise.allSettled(nodes.map(async (node) => {
    await node.init();
    await node.start();
  }));
  const failed = started.find((s): s is PromiseRejectedResult => s.status === 'rejected');
  if (failed) {
    // Leave nothing running behind a failed start.
    await Promise.all(nodes.map((node) => node.stop('immediate').catch(() => undefined)));
    throw failed.reason;
  }
  return nodes;
}

export async function startSandbox(options: SandboxOptions): Promise<Sandbox> {
  const dir = resolve(options.dir);
  const streaming = options.replicas !== undefined && options.replicas > 0;
  const nodes = streaming ? await startStreamingNodes(options.replicas!, dir, options.fast) : await startNodes(options.nodes, dir, options.fast);
  const config = defaultConfig();
  config.port = options.port;
  config.backends = nodes.map((node, id) => ({ id, host: '127.0.0.1', port: node.port, weight: 1, dataDirectory: node.dataDir }));
  if (streaming) configureStreaming(config);
  const webPort = options.webPort ?? 0;
  if (options.pcpPort !== undefined || webPort !== 0) {
    // PCP for pgpool's clients and the web admin page share one user: postgres, password postgres (loopback only).
    const usersFile = join(dir, 'pcp.conf');
    if (!existsSync(usersFile)) writeFileSync(usersFile, `postgres:${createHash('md5').update('postgres').digest('hex')}\n`, { mode: 0o600 });
    config.pcpConfFile = usersFile;
    // A users file serves PCP too: on a port of the system's choosing when none was asked for.
    config.pcpPort = options.pcpPort ?? 0;
    config.webAdminPort = webPort;
  }
  if (options.metricsPort !== undefined) {
    config.metricsListenAddresses = ['127.0.0.1'];
    config.metricsPort = options.metricsPort;
  }
  // Streaming replication recovers a node as a standby of the primary: one stage, no promotion.
  config.recovery1stStageCommand = join(recoveryScripts, streaming ? 'streaming_recovery_1st_stage' : 'recovery_1st_stage');
  config.recovery2ndStageCommand = streaming ? '' : join(recoveryScripts, 'recovery_2nd_stage');
  // The sandbox's node states belong to its nodes: kept with them, not in a directory other proxies share.
  config.logdir = dir;
  options.configure?.(config);
  const configPath = join(dir, 'parapool.conf');
  writeFileSync(configPath, configToText(config));
  let proxy: ProxyServer;
  try {
    const loaded = loadConfigFile(configPath);
    loaded.discardStatus = options.discardStatus ?? false;
    proxy = new ProxyServer(loaded);
    await proxy.start();
  } catch (error) {
    await Promise.all(nodes.map((node) => node.stop()));
    throw error;
  }
  log('info', 'sandbox_ready', { dir, config: configPath, proxy_port: proxy.port, node_ports: nodes.map((n) => n.port).join(',') });
  return {
    nodes,
    proxy,
    configPath,
    async stop() {
      await proxy.stop();
      await Promise.all(nodes.map((node) => node.stop()));
    },
  };
}
