// The state a client session keeps (its phase, node connections, pending extended-protocol messages, prepared
// statements and portals, transaction status) and the connections it chooses for a statement. The session is
// built up in layers over it, one concern per file: session-connections (opening, losing and restoring node
// connections), session-dispatch (running an exchange on nodes, comparing outcomes, commit across nodes),
// session-distributed (distributed tables, cursors, SQL PREPARE, COPY into distributed tables),
// session-extended (extended-protocol batching), session-startup (start-up and authentication) and
// client-session (the message loop and the simple-query path).

import type { WatchdogView } from '../cluster/watchdog-view';
import type { RelayProfiles } from './relay-profiles';
import type { QueryCache } from './query-cache';
import { SessionCacheUse } from './session-cache-use';
import { ErrorResponseScanner, type ObservedError } from '../protocol/error-response-scanner';
import { type ProxyConfig } from '../config/config';
import type { Socket } from 'node:net';
import { type BackendNode, describeNode } from '../cluster/backend-node';
import { type ClusterState } from '../cluster/cluster-state';
import { type StatementGate } from '../cluster/statement-gate';
import { type NodeOperations } from '../admin/node-commands';
import { type SessionSummary } from '../admin/show-commands';
import { type RunningStatement, type StatementRegistry } from '../cluster/statement-activity';
import { type ConnectionPool } from '../cluster/connection-pool';
import { type HealthCheckStats } from '../cluster/health-check';
import { type ClientSink } from '../executor/client-sink';
import { ReplicatedDispatch, type NodeSend } from '../executor/replicated-dispatch';
import { log } from '../log';
import { type StatementClass } from '../planner/statement-classifier';
import { withinDelay } from '../cluster/load-balancer';
import { PrepareRefusals } from '../planner/prepare-refusals';
import { type Catalog, type CatalogRegistry } from '../catalog/catalog';
import { type SessionPort } from '../executor/distributed-statement';
import { CopyRouter } from '../executor/copy-router';
import { type InsertLock } from '../executor/insert-lock';
import { type DistributedReadPort } from '../executor/plan-executor';
import { HeldPortals } from './held-portals';
import { SessionCatalog } from './session-catalog';
import { ExtendedDistributedReads, type ExtendedReadHost } from './extended-distributed-reads';
import { type PendingMessage, type PreparedStatement } from './pending-message';
import { type SqlPreparedStatement } from './sql-prepared-statements';
import { BackendConnection } from '../backend/backend-connection';
import { CoalescingWriter } from '../backend/coalescing-writer';
import { PgError, SqlState } from '../protocol/errors';
import { FrameReader, type Frame } from '../protocol/frame-reader';
import { type TransactionStatus } from '../protocol/message-codes';
import { type StoredSecret } from '../protocol/password-file';
import { serverMessages } from '../protocol/server-messages';
import { rejectionMarker } from './session-statements';

/** What the server sees of a session: its cancel key, and how to cancel and end it. */
export interface ServedSession {
  readonly processId: number;
  readonly secretKey: number;
  cancel(): void;
  close(reason: string, logIt?: boolean): void;
  /** Holds nothing on the nodes now: outside a transaction, no statement under way (see StatementGate). */
  readonly quiescent: boolean;
  /** What SHOW pool_processes and pool_pools show of it. */
  summary(): SessionSummary;
}

/** What sessions share: set up once by the server. */
export interface SessionContext {
  readonly config: ProxyConfig;
  readonly cluster: ClusterState;
  readonly pool: ConnectionPool;
  readonly passwords: ReadonlyMap<string, StoredSecret> | null;
  readonly writeFunctions: RegExp | null;
  readonly catalogs: CatalogRegistry;
  /** Shared by every session: replicated writes that advance a sequence take it (see executor/insert-lock.ts). */
  readonly insertLock: InsertLock;
  /** Closed while the nodes must see no new work (online recovery, attaching a node). */
  readonly gate: StatementGate;
  /** Attach, detach and recovery for parapool.attach_node() and friends, asked by `caller` (not waited for). */
  nodeOperations(caller: ServedSession): NodeOperations;
  /** Each node's health-check counters, for SHOW pool_health_check_stats. */
  readonly healthCheckStats: readonly HealthCheckStats[];
  /** The watchdog's state for SHOW watchdog; null without use_watchdog. */
  readonly watchdog?: () => WatchdogView | null;
  chooseReadNode(): BackendNode | null;
  cancel(processId: number, secretKey: number): void;
  /** The statements running in every session, and each node's counters (SHOW parapool_queries, pool_backend_stats). */
  readonly statements: StatementRegistry;
  /** What the simple-query path decided about shapes of statements it relayed (relay-profiles.ts); null: parse every time. */
  readonly relayProfiles: RelayProfiles | null;
  /** memory_cache_enabled: SELECT replies answered again without the nodes (query-cache.ts); null: off. */
  readonly queryCache: QueryCache | null;
  /** Told of every ErrorResponse a session sends its client (the metrics); null when nothing listens. */
  readonly clientErrors: ((error: ObservedError) => void) | null;
  /** Every registered session, for SHOW pool_processes and pool_pools. */
  sessions(): SessionSummary[];
  register(session: ServedSession): boolean;
  unregister(session: ServedSession): void;
}

/** What a session SET, for connections borrowed for one of its reads to take, and its isolation level. */
export interface SessionSettings {
  readonly settings: [string, string][];
  readonly isolation: string;
}

let nextSessionId = 1;

export abstract class SessionState implements ClientSink {
  readonly id = nextSessionId++;
  readonly processId: number;
  readonly secretKey: number;
  closed = false;
  protected phase: 'startup' | 'authenticating' | 'ready' = 'startup';
  protected startupBuffer: Buffer = Buffer.alloc(0);
  protected reader: FrameReader;
  protected readonly inbox: Frame[] = [];
  protected inboxBytes = 0;
  protected stepping = false;
  /** Set while the session's next statement waits at the statement gate (it holds nothing on the nodes then). */
  protected atGate = false;

  /** Whether the session holds nothing on the nodes: outside a transaction, with no statement under way. */
  get quiescent(): boolean {
    return this.phase !== 'ready' || this.atGate || (!this.stepping && this.status === 'I' && this.dispatch === null);
  }
  readonly startedAt = new Date();
  /** The client statement under way, as SHOW parapool_queries lists it. */
  protected running: RunningStatement | null = null;
  protected idleSince = new Date();

  summary(): SessionSummary {
    return {
      processId: this.processId,
      startedAt: this.startedAt,
      database: this.parameters.get('database') ?? '',
      username: this.parameters.get('user') ?? '',
      status: this.phase !== 'ready' ? 'Connecting' : this.running || this.stepping ? 'Execute command' : this.status === 'I' ? 'Idle' : 'Idle in transaction',
      idleSince: this.idleSince,
      connections: this.connectionsInNodeOrder().map((c) => ({ nodeId: c.node.id, backendPid: c.processId, connectedAt: c.connectedAt, acquiredAt: c.acquiredAt, releasedAt: c.releasedAt, uses: c.uses })),
    };
  }

  protected passwordWaiter: ((body: Buffer) => void) | null = null;
  protected parameters = new Map<string, string>();
  protected readonly connections = new Map<number, BackendConnection>();
  /**
   * Connections that closed under the session, by node: the next statement opens them again
   * (see restoreBeforeStatement).
   */
  protected readonly lostConnections = new Map<number, { connection: BackendConnection }>();
  /** Databases a DROP DATABASE in the pending extended-protocol messages names. */
  protected databasesToRelease: string[] = [];
  protected readNodeId: number | null = null;
  protected status: TransactionStatus = 'I';
  protected dispatch: ReplicatedDispatch | null = null;
  protected dispatchIsWrite = false;
  protected pending: PendingMessage[] = [];
  protected readonly statements = new Map<string, PreparedStatement>();
  protected readonly portals = new Map<string, StatementClass>();
  /** Portals of multi-node reads the proxy answers itself, with rows left to fetch (see SpooledPortal). */
  protected readonly heldPortals = new HeldPortals();
  /** SQL PREPAREd reads of several nodes, which the proxy plans at each EXECUTE. */
  protected readonly sqlPrepared = new Map<string, SqlPreparedStatement>();
  protected readonly output: CoalescingWriter;
  /** The partition rules of the session's database. */
  /** The partition rules, views and routines as this session sees them (null until start-up reads them). */
  protected sessionCatalog: SessionCatalog | null = null;

  protected get catalog(): Catalog | null {
    return this.sessionCatalog?.catalog ?? null;
  }
  /** Nodes the open transaction wrote on: more than one means its COMMIT is a two-phase commit. */
  protected readonly writtenNodes = new Set<number>();
  protected readonly onDetach = (node: BackendNode) => this.dropNode(node.id);

  protected startupTimer: NodeJS.Timeout | null = null;

  constructor(protected readonly socket: Socket, protected readonly context: SessionContext) {
    this.processId = (process.pid * 1000 + this.id) & 0x7fffffff;
    this.secretKey = (Math.random() * 0x7fffffff) | 0;
    this.reader = new FrameReader(context.config.clientMaxMessageSize, `client session ${this.id}`);
    this.output = new CoalescingWriter(socket);
    this.errorScanner = context.clientErrors ? new ErrorResponseScanner(context.clientErrors) : null;
    this.cacheUse = context.queryCache ? new SessionCacheUse(context.queryCache, (sql) => this.port.evaluate(sql)) : null;
  }

  /** memory_cache_enabled: what this session reads from and stores in the query cache; null: off. */
  protected readonly cacheUse: SessionCacheUse | null;

  /** Finds the ErrorResponses among the bytes written to the client, when the metrics count them. */
  protected readonly errorScanner: ErrorResponseScanner | null;

  get remote(): string {
    return `${this.socket.remoteAddress}:${this.socket.remotePort}`;
  }

  // ---- ClientSink ------------------------------------------------------------------------------------------

  write(bytes: Buffer): boolean {
    if (this.closed) return true;
    this.errorScanner?.observe(bytes);
    // The cache forgets what a statement may have changed before its client learns that it ended.
    if (this.cacheUse?.observe(bytes)) return this.holdReadyForQuery(bytes, this.cacheUse.release!);
    // A reply and the ReadyForQuery written once every node is done leave in one system call.
    return this.output.write(bytes);
  }

  /** Writes now, after what is queued: for the start-up exchange, which must not wait for the next turn. */
  protected writeDirect(bytes: Buffer): boolean {
    this.output.flush();
    return this.socket.write(bytes);
  }

  /** A ReadyForQuery waiting for the other proxies' caches (session-cache-use.ts); the next message waits for it. */
  protected heldReadyForQuery: Promise<void> | null = null;

  private holdReadyForQuery(bytes: Buffer, release: Promise<void>): boolean {
    const head = bytes.subarray(0, bytes.length - 6);
    const readyForQuery = Buffer.from(bytes.subarray(bytes.length - 6));
    const written = head.length === 0 || this.output.write(head);
    const held: Promise<void> = release.then(() => {
      if (this.heldReadyForQuery === held) this.heldReadyForQuery = null;
      if (!this.closed) this.output.write(readyForQuery);
    });
    this.heldReadyForQuery = held;
    return written;
  }

  onceDrained(callback: () => void): void {
    if (this.closed || !this.socket.writableNeedDrain) callback();
    else this.socket.once('drain', callback);
  }

  protected copyRouter: CopyRouter | null = null;

  /** COPY data waits for the nodes' sockets to drain. */
  protected waitingForNodes = false;

  protected rejections: PgError[] = [];

  protected connectionsInNodeOrder(): BackendConnection[] {
    return [...this.connections.values()].sort((a, b) => a.node.id - b.node.id);
  }

  protected readonly extendedReads = new ExtendedDistributedReads(this.extendedReadHost());

  protected readonly port: SessionPort = {
    status: 'I',
    connectionFor: (nodeId) => {
      const connection = this.connections.get(nodeId);
      if (!connection) {
        const node = this.context.cluster.nodes[nodeId];
        throw new PgError({ code: SqlState.connectionFailure, message: `${node ? describeNode(node) : `node ${nodeId}`} holds rows of this statement and is out of service`, hint: 'SHOW pool_nodes says why it was detached' });
      }
      return connection;
    },
    evaluate: async (sql) => (await this.evaluationConnection()).query(sql).then((r) => r.rows),
    write: (bytes) => this.write(bytes),
  };

  /** A second connection to the main node, for placement questions asked while the first is busy (in a COPY). */
  protected sideConnection: BackendConnection | null = null;

  protected temporaryCounter = 0;
  /** Connections of the session's own borrowed for one statement (broadcast sources): a cancel reaches them too. */
  protected readonly sourceConnections = new Set<BackendConnection>();

  /** What the open transaction did that keeps it from a two-phase commit. */
  protected readonly prepareRefusals = new PrepareRefusals();

  /** Set once the open transaction ran a statement that changes data (see writesData). */
  protected transactionWrote = false;

  /** Before a statement outside a transaction block: what the last transaction did no longer counts. */
  protected forgetEndedTransaction(): void {
    if (this.status !== 'I') return;
    this.transactionWrote = this.wroteDistributedRows = false;
    this.prepareRefusals.endTransaction();
  }

  /** Set once the session wrote (disable_load_balance_on_write = always). */
  protected sessionWrote = false;
  /** Set once the session wrote inside a transaction block (disable_load_balance_on_write = trans_transaction). */
  protected wroteInTransactionBlock = false;
  /**
   * Streaming replication: the primary detached while this session's transaction was open on it. Its work there
   * is gone, so the transaction fails at its next statement (see restoreBeforeStatement).
   */
  protected primaryLostInTransaction: number | null = null;

  /** Streaming replication: writes go to the primary alone, the standbys get them by replication. */
  protected get streaming(): boolean {
    return this.context.cluster.streaming;
  }

  /**
   * Streaming replication: whether reads must stay on the primary, which alone holds what the session wrote
   * and not yet replayed everywhere (pgpool-II's disable_load_balance_on_write), or its temporary tables.
   */
  protected readsStayOnPrimary(): boolean {
    if (this.madeTemporaryObjects || this.cacheUse?.storing) return true;
    const inBlock = this.status !== 'I';
    switch (this.context.config.disableLoadBalanceOnWrite) {
      case 'off':
        return false;
      case 'transaction':
        return inBlock && this.transactionWrote;
      case 'trans_transaction':
        return inBlock && (this.transactionWrote || this.wroteInTransactionBlock);
      case 'always':
        return this.sessionWrote || (inBlock && this.transactionWrote);
    }
  }

  /**
   * Set once the open transaction wrote rows of a distributed table: rows that only their node holds, so losing a
   * node it wrote on loses part of the transaction (a replicated write survives on the other nodes).
   */
  protected wroteDistributedRows = false;

  /** Set once the client created a temporary table, view or sequence, which only the session's connections see. */
  protected madeTemporaryObjects = false;
  /** What else of this session lives in its node sessions only (nodeBoundSessionState), or null. */
  protected nodeBoundState: string | null = null;
  /** What else keeps the session on its connections under transaction pooling (connectionPinningState), or null. */
  protected pinningState: string | null = null;

  /** Transaction pooling: the session gives its node connections back between transactions. */
  protected get transactionPooling(): boolean {
    return this.context.config.poolMode === 'transaction';
  }

  /**
   * Why the session keeps its node connections under transaction pooling, or null when it may give them back: state
   * that lives in its node sessions and that another connection would lack, or that another session would inherit.
   */
  get pinnedBy(): string | null {
    return this.madeTemporaryObjects ? 'temporary objects' : this.nodeBoundState ?? this.pinningState;
  }

  /** Transaction pooling: the session gave its connections back and takes them again at its next statement. */
  protected parked = false;

  /** Ends a wait for a pooled connection slot when the session closes. */
  protected readonly sessionEnd = new AbortController();

  /** Cancels of the running statement that reach past the session's own connections (worker threads'). */
  protected readonly cancelHooks = new Set<() => void>();

  /**
   * What this session SET (search_path, TimeZone, statement_timeout, role, ...), as the main node reports it; read
   * again after any statement that may have changed it. Read before a distributed read starts, while the main
   * node's connection is idle (later it may be copying rows).
   */
  protected settingsRead: { epoch: number; settings: Promise<SessionSettings> } | null = null;
  protected settingsEpoch = 0;

  // ---- running on nodes ------------------------------------------------------------------------------------

  /** The primary's connection, for a statement that changes data in streaming replication; throws when there is none. */
  protected primaryConnection(): BackendConnection {
    const primary = this.context.cluster.mainNode();
    const connection = primary && this.connections.get(primary.id);
    if (!connection) {
      throw new PgError({
        severity: 'FATAL',
        code: SqlState.connectionFailure,
        message: primary ? `this session has no connection to the primary, ${describeNode(primary)}` : 'no primary node is in service',
        hint: 'a failover may be under way: connect again; SHOW pool_nodes shows the nodes and their roles',
      });
    }
    return connection;
  }

  protected mainConnection(): BackendConnection {
    const main = this.context.cluster.mainNode();
    const connection = (main && this.connections.get(main.id)) ?? this.connections.values().next().value;
    if (!connection) {
      throw new PgError({ severity: 'FATAL', code: SqlState.connectionFailure, message: 'no node of this session is in service', hint: 'SHOW pool_nodes lists the nodes and why they were detached' });
    }
    return connection;
  }

  protected readConnection(): BackendConnection {
    const config = this.context.config;
    if (this.readNodeId === null || !this.connections.has(this.readNodeId) || (config.statementLevelLoadBalance && this.status === 'I')) {
      const candidate = config.loadBalanceMode ? this.context.chooseReadNode() : this.context.cluster.mainNode();
      this.readNodeId = candidate && this.connections.has(candidate.id) ? candidate.id : this.mainConnection().node.id;
    }
    const connection = this.connections.get(this.readNodeId)!;
    if (this.streaming) {
      // Per statement, as pgpool-II decides: the read node may have fallen behind, or be outside this transaction.
      const node = this.context.cluster.nodes[this.readNodeId];
      const limits = { bytes: config.delayThreshold, ms: config.delayThresholdByTime };
      if (node.role !== 'primary' && (this.readsStayOnPrimary() || connection.txStatus !== this.status || !withinDelay(node, limits))) {
        return this.mainConnection();
      }
    }
    return connection;
  }

  /**
   * The leader first: the main node for writes, the session's read node for reads. In streaming replication a
   * write goes to the primary alone, unless it changes only the session's state (`everyServer`: BEGIN, SET, ...),
   * which every node the session reads from must share.
   */
  protected targets(isWrite: boolean, everyServer = false): BackendConnection[] {
    if (!isWrite) {
      const connection = this.readConnection();
      (this.context.cluster.nodes[connection.node.id] as BackendNode).selectCount++;
      return [connection];
    }
    if (this.streaming && !everyServer) return [this.primaryConnection()];
    const leader = this.mainConnection();
    return [leader, ...[...this.connections.values()].filter((c) => c !== leader)];
  }

  /** Relays to the client, replacing the node's error for a refused statement with the proxy's own. */
  protected readonly relaySink: ClientSink = {
    write: (bytes: Buffer) => {
      if (bytes[0] === 0x45 /* E */ && this.rejections.length > 0 && bytes.includes(rejectionMarker)) {
        return this.write(serverMessages.errorResponse(this.rejections.shift()!));
      }
      return this.write(bytes);
    },
    onceDrained: (callback) => this.onceDrained(callback),
    closed: false,
  };

  /**
   * A node connection ended (the node restarted, an administrator terminated it, idle_session_timeout): it is
   * remembered, to be opened again before the next statement. No probe of the node runs now: a node that
   * restarts is often still down at this moment, and detaching it would outlast its restart; whether it
   * serves is asked when the session needs it again (restoreBeforeStatement) or by an exchange it broke.
   */
  protected readonly onConnectionClosed = (): void => {
    for (const [nodeId, connection] of this.connections) {
      if (!connection.closed) continue;
      this.connections.delete(nodeId);
      if (this.readNodeId === nodeId) this.readNodeId = null;
      if (this.closed) continue;
      this.lostConnections.set(nodeId, { connection });
      log('info', 'node_connection_closed', { session: this.id, node: nodeId, reason: connection.closeReason ?? 'connection closed' });
    }
  };

  // ---- implemented by the layers above -------------------------------------------------------------------

  public abstract cancel(): void;
  public abstract close(reason: string, logIt?: boolean): void;
  protected abstract dropNode(nodeId: number): void;
  protected abstract evaluationConnection(): Promise<BackendConnection>;
  protected abstract extendedReadHost(): ExtendedReadHost;
  protected abstract reconcileTransactions(): Promise<void>;
  protected abstract readPort(outsideTransaction?: boolean): DistributedReadPort;
  protected abstract sessionSettings(): Promise<SessionSettings>;
  protected abstract statementBefore(messages: readonly PendingMessage[], end: number, name: string): PreparedStatement | undefined;
  protected abstract buildSends(messages: readonly PendingMessage[], connections: readonly BackendConnection[], terminator: Frame, isSync: boolean): NodeSend[];
  protected abstract pump(): void;
  protected abstract onData(chunk: Buffer): void;
  protected abstract fail(error: unknown): void;
}
