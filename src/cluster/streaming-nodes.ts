// A primary and its streaming standbys on this machine, for `parapool sandbox --replicas N` and the tests:
// node 0 is made with initdb's template, each standby with pg_basebackup -R of it, streaming under its own
// application_name (node1, node2, ...). Commits wait for ANY 1 of the standbys (synchronous replication), so
// that a commit the proxy acknowledged survives the loss of the primary.

import { join } from 'node:path';
import { chmodSync, existsSync, mkdirSync } from 'node:fs';
import type { ProxyConfig } from '../config/config';
import { freePort, LocalPostgres } from './local-postgres';
import { findPostgresBinDir } from './postgres-install';

/** The application_name node `id` streams under as a standby (backend_application_nameN). */
export function standbyName(id: number): string {
  return `node${id}`;
}

/** Settings every node of such a cluster gets (a standby promoted later must behave as the primary did). */
function replicationSettings(count: number): Record<string, string> {
  const names = Array.from({ length: count }, (_, id) => standbyName(id));
  return {
    // The fast settings of tests turn synchronous_commit off, which acknowledges commits before any standby has them.
    synchronous_commit: 'on',
    synchronous_standby_names: `'ANY 1 (${names.join(', ')})'`,
    // A standby whose primary went away looks for the new one this often (PostgreSQL's default: 5 s).
    wal_retrieve_retry_interval: "'500ms'",
    wal_keep_size: "'256MB'",
  };
}

/**
 * Starts a primary and `replicas` standbys under `dir` (made the first time). On a later run the first node
 * without standby.signal is the primary and the others stream from it (ports change from run to run).
 */
export async function startStreamingNodes(replicas: number, dir: string, fast = false): Promise<LocalPostgres[]> {
  const binDir = findPostgresBinDir();
  mkdirSync(dir, { recursive: true });
  chmodSync(dir, 0o755); // the postgres OS user must reach its data directory inside
  const count = replicas + 1;
  const settings = replicationSettings(count);
  const ports: number[] = [];
  for (let id = 0; id < count; id++) ports.push(await freePort());
  const probe = Array.from({ length: count }, (_, id) => new LocalPostgres({ binDir, dataDir: join(dir, `node${id}`), port: ports[id] }));
  const made = probe.findIndex((node) => existsSync(join(node.dataDir, 'PG_VERSION')) && !node.isStandby);
  const primaryId = made < 0 ? 0 : made;
  const primary = new LocalPostgres({ binDir, dataDir: join(dir, `node${primaryId}`), port: ports[primaryId], fast, settings });
  const nodes: LocalPostgres[] = [];
  try {
    await primary.init();
    await primary.start();
    for (let id = 0; id < count; id++) {
      if (id === primaryId) {
        nodes.push(primary);
        continue;
      }
      const standby = new LocalPostgres({
        binDir,
        dataDir: join(dir, `node${id}`),
        port: ports[id],
        fast,
        settings: { ...settings, primary_conninfo: `'host=127.0.0.1 port=${primary.port} user=postgres application_name=${standbyName(id)}'` },
      });
      nodes.push(standby);
      await standby.initStandby(primary.port);
      await standby.start();
    }
  } catch (error) {
    await Promise.all([primary, ...nodes].map((node) => node.stop('immediate').catch(() => undefined)));
    throw error;
  }
  return nodes;
}

/**
 * The configuration of such a cluster: streaming_replication, each node's application name, a replication check
 * every second with reads kept off a standby 1 MB behind, and health checks that notice a lost primary within a
 * few seconds.
 */
export function configureStreaming(config: ProxyConfig): void {
  config.clusteringMode = 'streaming_replication';
  config.backends = config.backends.map((backend) => ({ ...backend, applicationName: standbyName(backend.id) }));
  config.srCheckPeriod = 1;
  config.delayThreshold = 1024 * 1024;
  config.healthCheck = { ...config.healthCheck, period: 1, timeout: 2, maxRetries: 1, retryDelay: 1 };
}
