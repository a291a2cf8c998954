// Backend connections kept open between client sessions, per node and per (user, database, start-up options),
// as pgpool-II's connection cache does. A connection goes back only when it is idle outside a transaction,
// and only after the reset statements ran (ABORT; DISCARD ALL by default), so no session sees another's state.
// N.B. a connection the node closed is never handed out: it leaves the pool on its socket's close, and one idle for
// longer than `liveCheckAfterMs` answers a round trip before it is reused.
// Transaction pooling takes connections with a cap (`acquire(..., { capped: true })`): at most `maxPerKey` are
// taken per node and key at once, and a session over the cap waits its turn in a first-come queue. Such a
// connection comes back between transactions (`giveBack`) without the reset statements: the session that gives it
// back holds no state on it (session-state.ts says when one is pinned instead), and the prepared statements it made
// stay, to be reused by whichever session parses the same statement under the same name.

import { log } from '../log';
import { BackendConnection, type BackendStartup } from '../backend/backend-connection';

export interface PoolSettings {
  readonly enabled: boolean;
  /** Idle connections kept per node and key. */
  readonly maxIdlePerKey: number;
  readonly resetQueries: readonly string[];
  /** Transaction pooling: the most connections taken at once per node and key by capped acquires (0: no cap). */
  readonly maxPerKey: number;
  /** Milliseconds a connection lives before the pool closes it instead of reusing it (0: no limit). */
  readonly lifeTimeMs: number;
}

export interface AcquireOptions {
  /** Counts against maxPerKey, waiting for a free slot when the node's key has none. */
  readonly capped?: boolean;
  /** Ends a wait for a slot (the client left). */
  readonly signal?: AbortSignal;
}

interface SlotWaiter {
  readonly grant: () => void;
  readonly refuse: (error: Error) => void;
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
  /** Capped acquires under way or holding a connection, per node and key. */
  private readonly slotsTaken = new Map<string, number>();
  /** The connections that hold a slot, so that one is freed exactly once (given back, released or closed). */
  private readonly slotHolders = new Set<BackendConnection>();
  private readonly slotWaiters = new Map<string, SlotWaiter[]>();

  constructor(private readonly settings: PoolSettings) {}

  /** A started connection to the node for these parameters: a cached one that still works if any, else a new one. */
  async acquire(startup: BackendStartup, options: AcquireOptions = {}): Promise<BackendConnection> {
    const key = `${startup.node.id}\0${poolKeyOf(startup.parameters)}`;
    const capped = options.capped === true && this.settings.maxPerKey > 0;
    if (capped) await this.takeSlot(key, options.signal);
    let connection: BackendConnection;
    try {
      connection = await this.openOrReuse(startup, key);
    } catch (error) {
      if (capped) this.freeSlot(key);
      throw error;
    }
    if (capped) {
      this.slotHolders.add(connection);
      this.watch(connection);
      if (connection.closed) this.onHolderClosed(connection);
    }
    return taken(connection);
  }

  private async openOrReuse(startup: BackendStartup, key: string): Promise<BackendConnection> {
    const list = this.idle.get(key);
    while (list && list.length > 0) {
      const connection = list.pop()!;
      if (!this.expired(connection) && (await connection.checkAlive(liveCheckAfterMs))) return connection;
      connection.destroy();
    }
    return BackendConnection.connect(startup, key);
  }

  private expired(connection: BackendConnection): boolean {
    return this.settings.lifeTimeMs > 0 && Date.now() - connection.connectedAt.getTime() >= this.settings.lifeTimeMs;
  }

  private takeSlot(key: string, signal: AbortSignal | undefined): Promise<void> {
    if (this.closing) return Promise.reject(new Error('the connection pool is closed'));
    const taken = this.slotsTaken.get(key) ?? 0;
    const waiters = this.slotWaiters.get(key);
    if (taken < this.settings.maxPerKey && !waiters?.length) {
      this.slotsTaken.set(key, taken + 1);
      return Promise.resolve();
    }
    return new Promise<void>((resolvePromise, reject) => {
      const list = waiters ?? [];
      const abort = () => {
        const index = list.indexOf(waiter);
        if (index >= 0) list.splice(index, 1);
        reject(new Error('the client left while waiting for a node connection'));
      };
      const waiter: SlotWaiter = {
        // The slot passes straight to the waiter: slotsTaken stays as it is.
        grant: () => {
          signal?.removeEventListener('abort', abort);
          resolvePromise();
        },
        refuse: (error) => {
          signal?.removeEventListener('abort', abort);
          reject(error);
        },
      };
      if (signal?.aborted) return abort();
      signal?.addEventListener('abort', abort, { once: true });
      list.push(waiter);
      this.slotWaiters.set(key, list);
    });
  }

  private freeSlot(key: string): void {
    const waiter = this.slotWaiters.get(key)?.shift();
    if (waiter) {
      waiter.grant();
      return;
    }
    const taken = (this.slotsTaken.get(key) ?? 1) - 1;
    if (taken > 0) this.slotsTaken.set(key, taken);
    else this.slotsTaken.delete(key);
  }

  private releaseSlot(connection: BackendConnection): void {
    if (this.slotHolders.delete(connection)) this.freeSlot(connection.poolKey);
  }

  private readonly onHolderClosed = (connection: BackendConnection): void => {
    this.releaseSlot(connection);
  };

  /**
   * Takes back a connection between a session's transactions (transaction pooling): idle, it goes to the idle list
   * as it is, for the next session of its key; any other connection is closed. Its slot passes to the next waiter.
   */
  giveBack(connection: BackendConnection): void {
    connection.releasedAt = new Date();
    if (this.closing || connection.closed || connection.busy || connection.txStatus !== 'I' || this.expired(connection)) {
      connection.destroy();
    } else {
      const list = this.idle.get(connection.poolKey) ?? [];
      if (list.length >= Math.max(this.settings.maxIdlePerKey, this.settings.maxPerKey)) connection.destroy();
      else {
        list.push(connection);
        this.idle.set(connection.poolKey, list);
      }
    }
    this.releaseSlot(connection);
  }

  /** Sessions waiting for a slot, over every node and key (SHOW pool_pools, metrics). */
  waitingCount(): number {
    let count = 0;
    for (const list of this.slotWaiters.values()) count += list.length;
    return count;
  }

  /** Returns a connection after its session ended; closes it when it cannot be reused safely. */
  async release(connection: BackendConnection): Promise<void> {
    try {
      await this.resetAndKeep(connection);
    } finally {
      this.releaseSlot(connection);
    }
  }

  private async resetAndKeep(connection: BackendConnection): Promise<void> {
    connection.releasedAt = new Date();
    if (this.closing || !this.settings.enabled || connection.closed || connection.busy || this.expired(connection)) {
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
    if (list.length >= Math.max(this.settings.maxIdlePerKey, this.settings.maxPerKey)) {
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
      this.onHolderClosed(connection);
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

  /** Closes every idle connection to a node (after it was detached), and turns away the sessions waiting for one. */
  dropNode(nodeId: number): void {
    for (const list of this.idle.values()) {
      for (const connection of list) if (connection.node.id === nodeId) connection.destroy();
    }
    for (const [key, waiters] of this.slotWaiters) {
      if (!key.startsWith(`${nodeId}\0`)) continue;
      this.slotWaiters.delete(key);
      for (const waiter of waiters) waiter.refuse(new Error(`node ${nodeId} was detached`));
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
    for (const waiters of this.slotWaiters.values()) for (const waiter of waiters) waiter.refuse(new Error('the connection pool is closed'));
    this.slotWaiters.clear();
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
