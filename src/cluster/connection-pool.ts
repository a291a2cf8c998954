// Backend connections kept open between client sessions, per node and per (user, database, start-up options),
// as pgpool-II's connection cache does. A connection goes back only when it is idle outside a transaction,
// and only after the reset statements ran (ABORT; DISCARD ALL by default), so no session sees another's state.
// N.B. a connection the node closed is never handed out: it leaves the pool on its socket's close, and one idle for
// longer than `liveCheckAfterMs` answers a round trip before it is reused.

import { log } from '../log';
import { BackendConnection, type BackendStartup } from '../backend/backend-connection';

export interface PoolSettings {
  readonly enabled: boolean;
  /** Idle connections kept per node and key. */
  readonly maxIdlePerKey: number;
  readonly resetQueries: readonly string[];
}

/** Start-up parameters that name the session's identity; they must match for a connection to be reused. */
export function poolKeyOf(parameters: ReadonlyMap<string, string>): string {
  return [...parameters.entries()]
    .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
    .map(([k, v]) => `${k}=${v}`)
    .join('\0');
}

/** A connection idle for this long is checked with a round trip before it is used again. */
export const liveCheckAfterMs = 1000;

export class ConnectionPool {
  private readonly idle = new Map<string, BackendConnection[]>();
  /** Connections running their reset statements on the way into the pool. */
  private readonly resetting = new Set<BackendConnection>();
  private closing = false;
  private readonly watched = new WeakSet<BackendConnection>();

  constructor(private readonly settings: PoolSettings) {}

  /** A started connection to the node for these parameters: a cached one that still works if any, else a new one. */
  async acquire(startup: BackendStartup): Promise<BackendConnection> {
    const key = `${startup.node.id}\0${poolKeyOf(startup.parameters)}`;
    const list = this.idle.get(key);
    while (list && list.length > 0) {
      const connection = list.pop()!;
      if (await connection.checkAlive(liveCheckAfterMs)) return taken(connection);
      connection.destroy();
    }
    return taken(await BackendConnection.connect(startup, key));
  }

  /** Returns a connection after its session ended; closes it when it cannot be reused safely. */
  async release(connection: BackendConnection): Promise<void> {
    connection.releasedAt = new Date();
    if (this.closing || !this.settings.enabled || connection.closed || connection.busy) {
      connection.destroy();
      return;
    }
    this.watch(connection);
    this.resetting.add(connection);
    try {
      for (const sql of this.settings.resetQueries) await connection.query(sql);
    } catch (error) {
      if (!connection.closedByProxy) log('warning', 'pool_reset_failed', { node: connection.node.id, error: (error as Error).message });
      connection.destroy();
      return;
    } finally {
      this.resetting.delete(connection);
    }
    connection.preparedStatements.clear(); // DISCARD ALL deallocated them
    // The pool may have closed while the reset ran: nothing would ever close a connection put back now.
    if (connection.txStatus !== 'I' || connection.closed || this.closing) {
      connection.destroy();
      return;
    }
    const list = this.idle.get(connection.poolKey) ?? [];
    if (list.length >= this.settings.maxIdlePerKey) {
      connection.destroy();
      return;
    }
    list.push(connection);
    this.idle.set(connection.poolKey, list);
  }

  /** Makes a connection leave the idle list as soon as it closes. */
  private watch(connection: BackendConnection): void {
    if (this.watched.has(connection)) return;
    this.watched.add(connection);
    connection.onClose(() => {
      const current = this.idle.get(connection.poolKey);
      if (current) this.idle.set(connection.poolKey, current.filter((c) => c !== connection));
    });
  }

  /**
   * Closes every idle connection to a database, those still running their reset statements too, so that a DROP
   * DATABASE does not find the proxy's own connections in its way; returns how many it closed.
   */
  dropDatabase(database: string): number {
    let count = 0;
    for (const connection of [...this.resetting, ...[...this.idle.values()].flat()]) {
      if (connection.database !== database) continue;
      connection.destroy();
      count++;
    }
    return count;
  }

  /** Closes every idle connection to a node (after it was detached). */
  dropNode(nodeId: number): void {
    for (const list of this.idle.values()) {
      for (const connection of list) if (connection.node.id === nodeId) connection.destroy();
    }
  }

  /** The idle connections, by pool key, in the order they would be handed out last to first. */
  idleConnections(): BackendConnection[][] {
    return [...this.idle.values()].filter((list) => list.length > 0);
  }

  idleCount(): number {
    let count = 0;
    for (const list of this.idle.values()) count += list.length;
    return count;
  }

  close(): void {
    this.closing = true;
    for (const connection of this.resetting) connection.destroy();
    for (const list of this.idle.values()) for (const connection of list) connection.destroy();
    this.idle.clear();
  }
}

function taken(connection: BackendConnection): BackendConnection {
  connection.uses++;
  connection.acquiredAt = new Date();
  return connection;
}
