// What the proxy settles before it accepts clients: transactions a previous proxy left prepared between the two
// phases of a commit (resolved by their recorded decision), and catalogs the nodes disagree on (reported by name).
// While it serves, it looks again for transactions a commit left prepared when it lost a node.

import { readCatalog } from '../catalog/catalog';
import { recoverInDoubt, gidPrefix } from '../executor/two-phase-commit';
import { log } from '../log';
import { BackendConnection } from '../backend/backend-connection';
import type { StoredSecret } from '../protocol/password-file';
import type { BackendNode } from './backend-node';
import { quoteLiteral } from '../catalog/partition-rule';

export interface RecoveryOptions {
  readonly nodes: readonly BackendNode[];
  readonly user: string;
  readonly secret: StoredSecret | null;
  readonly connectTimeoutMs: number;
}

function connectTo(options: RecoveryOptions, node: BackendNode, database: string): Promise<BackendConnection> {
  const parameters = new Map([['user', options.user], ['database', database], ['application_name', 'parapool recovery']]);
  return BackendConnection.connect({ node, parameters, secret: options.secret, connectTimeoutMs: options.connectTimeoutMs }, 'recovery');
}

/**
 * Runs `use` on one connection per node to `database`, closing them all afterwards. With `every`, a node that
 * refuses fails the whole (closing those already open); without, it is left out.
 */
async function withConnections<T>(options: RecoveryOptions, database: string, every: boolean, use: (connections: BackendConnection[]) => Promise<T>): Promise<T> {
  const results = await Promise.allSettled(options.nodes.map((node) => connectTo(options, node, database)));
  const connections = results.flatMap((r) => (r.status === 'fulfilled' ? [r.value] : []));
  try {
    const refused = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (every && refused) throw refused.reason;
    return await use(connections);
  } finally {
    for (const connection of connections) connection.destroy();
  }
}

/** Databases holding parapool's prepared transactions, as one node sees them. */
async function inDoubtDatabases(connection: BackendConnection): Promise<string[]> {
  const pending = await connection.query(`SELECT DISTINCT database FROM pg_prepared_xacts WHERE gid LIKE ${quoteLiteral(gidPrefix + '%')}`);
  return pending.rows.map(([db]) => db!);
}

/**
 * Resolves the in-doubt transactions of every database on those of `options.nodes` that answer. Detached nodes
 * belong there too: a detached decider still knows what it decided, and a detached node's prepared transactions
 * still hold their locks. Logs what it did; never throws.
 */
export async function resolveInDoubt(options: RecoveryOptions): Promise<void> {
  const databases = new Set<string>();
  try {
    await withConnections(options, 'postgres', false, async (connections) => {
      for (const connection of connections) for (const db of await inDoubtDatabases(connection)) databases.add(db);
    });
  } catch (error) {
    log('warning', 'in_doubt_recovery_skipped', { error: (error as Error).message });
    return;
  }
  for (const database of databases) {
    try {
      const { committed, rolledBack } = await withConnections(options, database, false, recoverInDoubt);
      if (committed + rolledBack > 0) log('info', 'in_doubt_transactions_resolved', { database, committed, rolled_back: rolledBack });
    } catch (error) {
      log('error', 'in_doubt_recovery_failed', { database, error: (error as Error).message });
    }
  }
}

/** Resolves in-doubt transactions and checks catalogs in every database; logs what it found, never throws. */
export async function recoverAtStartup(options: RecoveryOptions): Promise<void> {
  if (options.nodes.length === 0) return;
  // Every node's databases: a database one node lacks is still checked (and reported) on the others.
  const databases = new Set<string>();
  const inDoubt = new Set<string>();
  try {
    await withConnections(options, 'postgres', true, async (connections) => {
      for (const connection of connections) {
        const dbs = await connection.query('SELECT datname FROM pg_database WHERE datallowconn AND NOT datistemplate ORDER BY 1');
        for (const [db] of dbs.rows) databases.add(db!);
        for (const db of await inDoubtDatabases(connection)) inDoubt.add(db);
      }
    });
  } catch (error) {
    log('warning', 'startup_recovery_skipped', { user: options.user, error: (error as Error).message });
    return;
  }
  for (const database of databases) {
    try {
      await withConnections(options, database, true, async (connections) => {
        if (inDoubt.has(database)) {
          const { committed, rolledBack } = await recoverInDoubt(connections);
          log('info', 'in_doubt_transactions_resolved', { database, committed, rolled_back: rolledBack });
        }
        await readCatalog(database, connections); // logs catalog_mismatch naming the nodes
      });
    } catch (error) {
      log('error', 'startup_recovery_failed', { database, error: (error as Error).message });
    }
  }
}
