// The query caches of several proxies in front of the same nodes, kept from serving a row another proxy's write has
// changed. Each proxy LISTENs on the nodes' own NOTIFY channel (in database postgres, on every node in service; in
// streaming replication on the primary, since a standby takes neither LISTEN nor NOTIFY). A proxy whose statement
// may have changed data empties its own cache, sends `inv` on the channel, and holds its client's ReadyForQuery
// until every other proxy has answered `ack`, or until any that did not can no longer be using its cache.
//
// That last part is a lease. Every proxy sends itself a `ping` every quarter lease; when its own ping comes back,
// it has received every notification committed before that ping (a database delivers them in commit order), and it
// may use its cache for a lease from when it sent the ping. A proxy that is stopped, or cut off from the node, or
// whose connection broke, lets its lease run out: it then empties its cache and uses none until a ping returns on
// a connection that is open again. So a writer that heard no ack waits at most a lease after its `inv` committed:
// by then every proxy has either emptied its cache for that write or stopped using it. Which proxies to wait for it
// learns from their pings: those it heard within a lease, counted once its own `inv` has come back to it.

import { randomBytes } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { hostname } from 'node:os';
import { BackendConnection, type BackendStartup } from '../backend/backend-connection';
import { type BackendNode } from './backend-node';
import { type ClusterState } from './cluster-state';
import { quoteLiteral } from '../catalog/partition-rule';
import { log } from '../log';

const channelName = 'parapool_query_cache';

export interface CacheInvalidationOptions {
  readonly cluster: ClusterState;
  /** How to log in to a node (user, password; the database is postgres). */
  startup(node: BackendNode): BackendStartup;
  /** Invalidates this proxy's cache, what read `tables` or (null) all of it: another proxy wrote, or this one may have missed that it did. */
  onInvalidate(tables: readonly string[] | null): void;
  /** How long a write waits for a channel that is not open (connect_timeout), in ms, on top of a lease. */
  readonly connectTimeoutMs: number;
  /** How long a returned ping lets the cache be used, in ms. */
  readonly leaseMs?: number;
}

interface Broadcast {
  readonly seq: number;
  echoed: boolean;
  readonly acks: Set<string>;
  /** The other proxies heard from within a lease, when this proxy's own `inv` came back. */
  members: string[] | null;
  deadline: number;
  readonly done: () => void;
}

/** One node's channel: a connection that LISTENs, its lease, and the broadcasts waiting on it. */
class NodeChannel {
  private connection: BackendConnection | null = null;
  private validUntil = 0;
  private wasValid = false;
  private readonly pingsSent = new Map<number, number>();
  private pingSeq = 0;
  private readonly lastHeard = new Map<string, number>();
  private readonly broadcasts = new Map<number, Broadcast>();
  private waitingForConnection: (() => void)[] = [];
  private stopped = false;
  private timer: NodeJS.Timeout | null = null;
  private connecting = false;

  constructor(
    readonly node: BackendNode,
    private readonly self: string,
    private readonly options: CacheInvalidationOptions,
    private readonly leaseMs: number,
  ) {}

  start(): void {
    this.timer = setInterval(() => this.tick(), Math.max(10, Math.floor(this.leaseMs / 4)));
    this.timer.unref();
    void this.connect();
  }

  stop(): void {
    this.stopped = true;
    if (this.timer) clearInterval(this.timer);
    this.connection?.terminate();
    this.connection = null;
    for (const broadcast of this.broadcasts.values()) broadcast.done();
    this.broadcasts.clear();
    for (const wake of this.waitingForConnection) wake();
    this.waitingForConnection = [];
  }

  /** Whether this proxy may use its cache as far as this node's channel goes. */
  get valid(): boolean {
    const valid = this.connection !== null && performance.now() < this.validUntil;
    if (this.wasValid && !valid) {
      this.wasValid = false;
      this.options.onInvalidate(null);
    }
    return valid;
  }

  /** Sends `inv` and resolves once no other proxy can be serving from a cache that predates it. */
  async broadcast(seq: number, tables: readonly string[] | null): Promise<void> {
    const list = tables ? JSON.stringify(tables) : '';
    // A NOTIFY payload must stay under 8000 bytes: a longer list invalidates everything instead.
    const what = tables && Buffer.byteLength(list) <= maxTableListBytes ? list : '*';
    const giveUpAt = performance.now() + this.options.connectTimeoutMs + this.leaseMs;
    while (!this.stopped) {
      const remaining = giveUpAt - performance.now();
      if (remaining <= 0) {
        // Writes do not hang on a channel that cannot be opened; the others are then not told (docs/query-cache.md).
        log('error', 'query_cache_invalidation_not_sent', { node: this.node.id });
        return;
      }
      const connection = this.connection ?? (await Promise.race([this.connected(), sleep(remaining).then(() => null)]));
      if (!connection) continue;
      let done!: () => void;
      const answered = new Promise<void>((resolve) => (done = resolve));
      // Registered before the NOTIFY: this proxy's own copy arrives before the NOTIFY's ReadyForQuery.
      const broadcast: Broadcast = { seq, echoed: false, acks: new Set(), members: null, deadline: Infinity, done };
      this.broadcasts.set(seq, broadcast);
      try {
        await connection.query(`SELECT pg_catalog.pg_notify('${channelName}', ${quoteLiteral(`inv ${this.self} ${seq} ${what}`)})`);
      } catch {
        this.broadcasts.delete(seq);
        continue; // the connection broke before the NOTIFY was known to commit: it is sent again on the next one
      }
      broadcast.deadline = performance.now() + this.leaseMs;
      this.settle(broadcast, performance.now());
      await answered;
      return;
    }
  }

  private connected(): Promise<BackendConnection | null> {
    return new Promise((resolve) => this.waitingForConnection.push(() => resolve(this.connection)));
  }

  private async connect(): Promise<void> {
    if (this.connecting || this.stopped) return;
    this.connecting = true;
    try {
      const connection = await BackendConnection.connect(this.options.startup(this.node), `cache-invalidation:${this.node.id}`);
      if (this.stopped) {
        connection.terminate();
        return;
      }
      connection.notificationListener = (channel, payload) => {
        if (channel === channelName) this.onMessage(payload);
      };
      await connection.query(`LISTEN ${channelName}`);
      connection.onClose(() => {
        if (this.connection !== connection) return;
        this.connection = null;
        // What was sent while it was broken is lost: the cache is emptied now, and the lease starts again.
        this.validUntil = 0;
        void this.valid;
        this.options.onInvalidate(null);
        log('warning', 'query_cache_channel_lost', { node: this.node.id });
      });
      this.connection = connection;
      this.options.onInvalidate(null);
      const waiting = this.waitingForConnection;
      this.waitingForConnection = [];
      for (const wake of waiting) wake();
      this.ping();
    } catch (error) {
      log('info', 'query_cache_channel_unavailable', { node: this.node.id, error: (error as Error).message });
    } finally {
      this.connecting = false;
    }
  }

  private tick(): void {
    if (this.stopped) return;
    void this.valid;
    if (!this.connection) {
      void this.connect();
      return;
    }
    this.ping();
    const now = performance.now();
    for (const broadcast of this.broadcasts.values()) this.settle(broadcast, now);
    for (const [id, at] of this.lastHeard) if (now - at > 10 * this.leaseMs) this.lastHeard.delete(id);
  }

  private ping(): void {
    const connection = this.connection;
    if (!connection) return;
    const seq = ++this.pingSeq;
    this.pingsSent.set(seq, performance.now());
    connection.query(`SELECT pg_catalog.pg_notify('${channelName}', 'ping ${this.self} ${seq}')`).catch(() => this.pingsSent.delete(seq));
  }

  private onMessage(payload: string): void {
    const [kind, from, seqText, by] = payload.split(' ', 4);
    const seq = Number(seqText);
    const now = performance.now();
    switch (kind) {
      case 'ping':
        if (from === this.self) {
          const sentAt = this.pingsSent.get(seq);
          if (sentAt === undefined) return;
          for (const old of this.pingsSent.keys()) if (old <= seq) this.pingsSent.delete(old);
          this.validUntil = Math.max(this.validUntil, sentAt + this.leaseMs);
          this.wasValid = this.connection !== null && now < this.validUntil;
        } else {
          this.lastHeard.set(from, now);
        }
        return;
      case 'inv':
        if (from === this.self) {
          const broadcast = this.broadcasts.get(seq);
          if (broadcast) {
            broadcast.echoed = true;
            broadcast.members = [...this.lastHeard].filter(([, at]) => now - at < this.leaseMs).map(([id]) => id);
            this.settle(broadcast, now);
          }
          return;
        }
        this.lastHeard.set(from, now);
        this.options.onInvalidate(invalidatedTables(payload));
        this.connection?.query(`SELECT pg_catalog.pg_notify('${channelName}', 'ack ${from} ${seq} ${this.self}')`).catch(() => undefined);
        return;
      case 'ack': {
        const broadcast = from === this.self ? this.broadcasts.get(seq) : undefined;
        if (!broadcast) return;
        broadcast.acks.add(by);
        this.settle(broadcast, now);
        return;
      }
      default:
        return;
    }
  }

  private settle(broadcast: Broadcast, now: number): void {
    const everyoneAnswered = broadcast.echoed && broadcast.members!.every((member) => broadcast.acks.has(member));
    if (everyoneAnswered || now >= broadcast.deadline) {
      this.broadcasts.delete(broadcast.seq);
      broadcast.done();
    }
  }
}

const maxTableListBytes = 7000;

/** An `inv` message's tables (a JSON array after its third space), or null for all of the cache. */
function invalidatedTables(payload: string): string[] | null {
  const parts = payload.split(' ');
  const rest = parts.slice(3).join(' ');
  if (rest === '' || rest === '*') return null;
  try {
    const tables = JSON.parse(rest) as unknown;
    return Array.isArray(tables) && tables.every((t) => typeof t === 'string') ? (tables as string[]) : null;
  } catch {
    return null;
  }
}

export class CacheInvalidation {
  /** This proxy on the channel: unique among every proxy that ever listens on it. */
  readonly self = `${hostname()}/${process.pid}/${randomBytes(4).toString('hex')}`;
  private readonly channels = new Map<number, NodeChannel>();
  private seq = 0;
  private readonly leaseMs: number;
  private readonly onNodesChanged = () => this.followNodes();
  private timer: NodeJS.Timeout | null = null;

  constructor(private readonly options: CacheInvalidationOptions) {
    this.leaseMs = options.leaseMs ?? 2000;
  }

  /** Resolves once the cache may be used (its first pings came back), or after a lease when they did not. */
  async start(): Promise<void> {
    this.options.cluster.on('detach', this.onNodesChanged);
    this.options.cluster.on('attach', this.onNodesChanged);
    // A promotion changes the primary without a detach or attach of its own.
    this.timer = setInterval(this.onNodesChanged, this.leaseMs);
    this.timer.unref();
    this.followNodes();
    for (const deadline = performance.now() + this.leaseMs; !this.valid && performance.now() < deadline; ) await sleep(10);
  }

  stop(): void {
    this.options.cluster.off('detach', this.onNodesChanged);
    this.options.cluster.off('attach', this.onNodesChanged);
    if (this.timer) clearInterval(this.timer);
    for (const channel of this.channels.values()) channel.stop();
    this.channels.clear();
  }

  /** Whether the cache may be used: every channel this proxy listens on has a lease. */
  get valid(): boolean {
    if (this.channels.size === 0) return false;
    let valid = true;
    for (const channel of this.channels.values()) valid = channel.valid && valid;
    return valid;
  }

  /** Tells every other proxy that this one may have changed data; resolves when none can serve from before it. */
  async broadcast(tables: readonly string[] | null): Promise<void> {
    const seq = ++this.seq;
    await Promise.all([...this.channels.values()].map((channel) => channel.broadcast(seq, tables)));
  }

  private channelNodes(): BackendNode[] {
    const cluster = this.options.cluster;
    if (cluster.streaming) {
      const primary = cluster.mainNode();
      return primary ? [primary] : [];
    }
    return cluster.upNodes();
  }

  private followNodes(): void {
    const wanted = new Map(this.channelNodes().map((node) => [node.id, node]));
    for (const [id, channel] of this.channels) {
      if (wanted.has(id)) continue;
      channel.stop();
      this.channels.delete(id);
    }
    for (const [id, node] of wanted) {
      if (this.channels.has(id)) continue;
      const channel = new NodeChannel(node, this.self, this.options, this.leaseMs);
      this.channels.set(id, channel);
      channel.start();
    }
  }
}
