// The listening side of parapool: accepts clients on the configured addresses, owns what sessions share (the
// cluster state, the connection pool, the password file), routes CancelRequests to the session they name, and
// runs what watches the nodes (health checks, failover and failback commands, the pgpool_status file).

import { closeWorkerPool } from '../executor/worker-pool';
import { closeDeciderFences } from '../executor/decider-fence';
import { createServer, connect as netConnect, type Server, type Socket } from 'node:net';
import { healthCheckFor, type ProxyConfig } from '../config/config';
import { describeNode, type BackendNode } from '../cluster/backend-node';
import { ClusterState } from '../cluster/cluster-state';
import { CatalogRegistry } from '../catalog/catalog';
import { recoverAtStartup, resolveInDoubt, type RecoveryOptions } from '../cluster/startup-recovery';
import { ConnectionPool } from '../cluster/connection-pool';
import { FailoverCommands } from '../cluster/failover-command';
import { HealthChecker } from '../cluster/health-check';
import { Watchdog } from '../cluster/watchdog';
import { readNodeStatus, statusFilePath, writeNodeStatus } from '../cluster/node-status-file';
import { chooseWeighted, withinDelay } from '../cluster/load-balancer';
import { ReplicationCheck, surveyRoles, type NodeLogin } from '../cluster/replication-check';
import { StreamingFailover } from '../cluster/streaming-failover';
import { parseStoredSecret } from '../protocol/password-file';
import { configureLog, log } from '../log';
import { loadParser } from '../planner/sql-parser';
import { compileWriteFunctions } from '../planner/statement-classifier';
import { QueryCache, queryCacheConfig } from '../session/query-cache';
import { CacheInvalidation } from '../cluster/cache-invalidation';
import { InsertLock } from '../executor/insert-lock';
import { StatementGate } from '../cluster/statement-gate';
import { StatementRegistry } from '../cluster/statement-activity';
import { recoverNode } from '../cluster/online-recovery';
import { PcpServer } from '../admin/pcp-server';
import { ProxyMetrics } from '../admin/metrics';
import { RelayProfiles } from '../session/relay-profiles';
import { checkWebAdminUsers, WebAdminServer } from '../admin/web-admin-server';
import { partitionRules, type AdminTable } from '../admin/show-commands';
import { BackendConnection } from '../backend/backend-connection';
import type { NodeOperations } from '../admin/node-commands';
import { ClientSession, type ServedSession, type SessionContext } from '../session/client-session';
import { loadPasswordFile, type StoredSecret } from '../protocol/password-file';
import { installProcessGuard } from './process-guard';
import { boundPort, closeServers, listenOnAddresses } from './listeners';
import { PgError, SqlState } from '../protocol/errors';

export class ProxyServer {
  readonly cluster: ClusterState;
  readonly pool: ConnectionPool;
  readonly catalogs = new CatalogRegistry();
  readonly healthChecker: HealthChecker;
  /** memory_cache_enabled: the query cache every session of this proxy shares; null: off. */
  readonly queryCache: QueryCache | null = null;
  /** memqcache_shared: how the other proxies' caches learn of this one's writes, and this one's of theirs. */
  private cacheInvalidation: CacheInvalidation | null = null;
  readonly failoverCommands: FailoverCommands;
  /** With use_watchdog: the leader election and failover consensus among the parapool instances. */
  watchdog: Watchdog | null = null;
  private servers: Server[] = [];
  private readonly sessions = new Map<number, ServedSession>();
  private readonly context: SessionContext;
  private boundPort = 0;
  private recoveryTimer: NodeJS.Timeout | null = null;
  private stopped = false;
  readonly gate = new StatementGate();
  /** Set by the program that runs the proxy (the CLI) to stop it and itself: pcp_stop_pgpool calls it. */
  stopRequested: (() => void) | null = null;
  /** pgpool-II's admin protocol, when pcp_conf_file names its users. */
  pcp: PcpServer | null = null;
  /** The web admin page, when web_admin_port is set. */
  web: WebAdminServer | null = null;
  readonly statements = new StatementRegistry();
  /** Prometheus metrics, when metrics_listen_addresses names where to serve them. */
  readonly metrics: ProxyMetrics | null;
  private readonly recordStatus = () => writeNodeStatus(this.config.logdir, this.cluster.nodes);
  /** In streaming-replication mode: the replication check, and what promotes a standby when the primary goes. */
  readonly replicationCheck: ReplicationCheck | null = null;
  readonly failover: StreamingFailover | null = null;
  private readonly replicationLogin: NodeLogin;

  constructor(readonly config: ProxyConfig) {
    configureLog({ minLevel: config.logMinMessages });
    this.cluster = new ClusterState(config.backends, { user: config.recoveryUser, timeoutMs: config.connectTimeout * 1000 }, config.clusteringMode);
    this.pool = new ConnectionPool({
      enabled: config.connectionCache,
      maxIdlePerKey: config.maxPool,
      resetQueries: config.resetQueryList,
      maxPerKey: config.poolMode === 'transaction' ? Math.max(1, config.maxPool) : 0,
      lifeTimeMs: config.connectionLifeTime * 1000,
    });
    this.cluster.on('detach', (node: BackendNode) => this.pool.dropNode(node.id));
    const passwords: Map<string, StoredSecret> | null = config.poolPasswd ? loadPasswordFile(config.poolPasswd) : null;
    const sessions = this.sessions;
    const delayLimits = { bytes: config.delayThreshold, ms: config.delayThresholdByTime };
    this.healthChecker = new HealthChecker({ cluster: this.cluster, settingsFor: (id) => healthCheckFor(config, id), defaultUser: config.recoveryUser, passwords });
    // With the watchdog, failover_command and failback_command run on its leader only, once per change.
    this.failoverCommands = new FailoverCommands(this.cluster, config.failoverCommand, config.failbackCommand, () => this.watchdog === null || this.watchdog.isLeader());
    if (config.memoryCacheEnabled) {
      const cache = new QueryCache(queryCacheConfig(config));
      // A node that leaves or comes back may change what a read returns (a shard's rows, a rebuilt copy).
      this.cluster.on('detach', () => cache.invalidate());
      this.cluster.on('attach', () => cache.invalidate());
      this.queryCache = cache;
      if (config.memqcacheShared) {
        const secret = passwords?.get(config.recoveryUser) ?? null;
        const parameters = new Map([['user', config.recoveryUser], ['database', 'postgres'], ['application_name', 'parapool query cache']]);
        this.cacheInvalidation = new CacheInvalidation({
          cluster: this.cluster,
          startup: (node) => ({ node, parameters, secret, connectTimeoutMs: config.connectTimeout * 1000 }),
          onInvalidate: (tables) => (tables ? cache.invalidateTables(tables) : cache.invalidate()),
          connectTimeoutMs: config.connectTimeout * 1000,
        });
        cache.peers = this.cacheInvalidation;
      }
    }
    this.context = {
      config,
      cluster: this.cluster,
      pool: this.pool,
      passwords,
      writeFunctions: compileWriteFunctions(config.writeFunctionList),
      catalogs: this.catalogs,
      insertLock: new InsertLock(),
      gate: this.gate,
      nodeOperations: (caller) => this.nodeOperations(caller),
      healthCheckStats: this.healthChecker.stats,
      watchdog: () => this.watchdog?.view() ?? null,
      chooseReadNode: () => chooseWeighted(this.cluster.streaming ? this.cluster.nodes.filter((node) => withinDelay(node, delayLimits)) : this.cluster.nodes),
      statements: this.statements,
      relayProfiles: new RelayProfiles(),
      queryCache: this.queryCache,
      clientErrors: config.metricsListenAddresses.length > 0 ? (error) => this.metrics?.clientError(error) : null,
      sessions: () => [...sessions.values()].map((session) => session.summary()),
      cancel: (processId, secretKey) => {
        const session = sessions.get(processId);
        if (session && session.secretKey === secretKey) session.cancel();
      },
      register: (session) => {
        if (sessions.size >= config.numInitChildren) return false;
        sessions.set(session.processId, session);
        return true;
      },
      unregister: (session) => {
        if (sessions.get(session.processId) === session) sessions.delete(session.processId);
      },
    };
    this.metrics = config.metricsListenAddresses.length > 0 ? new ProxyMetrics(this.context) : null;
    const srUser = config.srCheckUser || config.recoveryUser;
    this.replicationLogin = {
      user: srUser,
      secret: config.srCheckPassword !== '' ? parseStoredSecret(config.srCheckPassword) : passwords?.get(srUser) ?? null,
      database: config.srCheckDatabase,
      connectTimeoutMs: config.connectTimeout * 1000,
    };
    if (this.cluster.streaming) {
      this.replicationCheck = new ReplicationCheck(this.cluster, this.replicationLogin, config.srCheckPeriod);
      this.failover = new StreamingFailover({
        cluster: this.cluster,
        gate: this.gate,
        login: this.replicationLogin,
        commandPromotes: config.failoverCommand !== '',
        commandsIdle: () => this.failoverCommands.idle(),
        timeoutMs: config.recoveryTimeout * 1000,
      });
    }
  }

  /**
   * Streaming replication: which node is the primary, asked of every node in service at start-up. Exactly one
   * must be, or the proxy does not start: writes would have nowhere to go, or two places.
   */
  private async findPrimaryAtStartup(): Promise<void> {
    const survey = await surveyRoles(this.cluster, this.replicationLogin);
    for (const { node, error } of survey.unanswered) log('error', 'node_role_unknown', { node: node.id, error });
    if (survey.primaries.length === 1) {
      log('info', 'primary_found', { node: survey.primaries[0].id });
      return;
    }
    const asked = this.cluster.upNodes().map((node) => `${describeNode(node)}: ${survey.unanswered.find((u) => u.node === node)?.error ?? (survey.primaries.includes(node) ? 'primary' : 'standby')}`).join('; ');
    throw new PgError({
      severity: 'FATAL',
      code: SqlState.objectNotInPrerequisiteState,
      message: survey.primaries.length === 0 ? 'no node in service is a primary (every node is in recovery or did not answer)' : `${survey.primaries.length} nodes are primaries: ${survey.primaries.map((n) => n.id).join(' and ')}`,
      detail: `backend_clustering_mode is streaming_replication, which needs exactly one primary; pg_is_in_recovery() said: ${asked}`,
      hint: 'promote one node, or make the others standbys of it',
    });
  }

  /** A node attached in streaming-replication mode: its role is asked again; a second primary is refused. */
  private readonly onAttachStreaming = (node: BackendNode) => {
    void surveyRoles(this.cluster, this.replicationLogin).then((survey) => {
      if (survey.primaries.length > 1 && survey.primaries.includes(node)) {
        const other = survey.primaries.find((n) => n !== node)!;
        this.cluster.detach(node.id, `${describeNode(node)} is a primary while ${describeNode(other)} is the primary`);
      }
    });
  };

  /** Loads the parser, checks that every node answers, and listens. Resolves once clients can connect. */
  async start(): Promise<void> {
    installProcessGuard();
    if (this.config.webAdminPort !== 0) checkWebAdminUsers(this.config.pcpConfFile);
    await loadParser();
    this.applyRecordedStatus();
    this.failoverCommands.start();
    await Promise.all(this.cluster.upNodes().map((node) => this.checkNode(node)));
    if (this.cluster.streaming) await this.findPrimaryAtStartup();
    await this.cacheInvalidation?.start();
    this.recordStatus();
    this.cluster.on('detach', this.recordStatus);
    this.cluster.on('attach', this.recordStatus);
    // Streaming replication commits on the primary alone: there are no transactions of parapool's left prepared.
    if (!this.cluster.streaming) await recoverAtStartup(this.recoveryOptions(this.cluster.upNodes()));
    this.servers = await listenOnAddresses(this.config.listenAddresses, this.config.port, () => createServer((socket) => this.accept(socket)));
    this.boundPort = boundPort(this.servers);
    log('info', 'proxy_listening', {
      addresses: this.config.listenAddresses.join(','),
      port: this.boundPort,
      nodes: this.cluster.nodes.map((n) => `${n.id}:${n.host}:${n.port}:${n.status}`).join(','),
    });
    if (!this.cluster.streaming) this.scheduleRecovery();
    if (this.config.watchdog.enabled) {
      this.watchdog = new Watchdog({ config: this.config.watchdog, cluster: this.cluster, pgpoolPort: this.boundPort });
      await this.watchdog.start();
    }
    this.healthChecker.start();
    this.failover?.start();
    this.replicationCheck?.start();
    if (this.cluster.streaming) this.cluster.on('attach', this.onAttachStreaming);
    if (this.config.pcpConfFile) {
      this.pcp = new PcpServer({ addresses: this.config.pcpListenAddresses, port: this.config.pcpPort, usersFile: this.config.pcpConfFile, cluster: this.cluster, operations: this.nodeOperations(), admin: this.context,
        requestStop: () => {
          const stop = this.stopRequested;
          if (!stop) return false;
          setImmediate(stop); // after the reply has left
          return true;
        },
      });
      await this.pcp.start();
    }
    await this.metrics?.listen(this.config.metricsListenAddresses, this.config.metricsPort);
    if (this.config.webAdminPort !== 0) {
      this.web = new WebAdminServer({
        addresses: this.config.webAdminListenAddresses,
        port: this.config.webAdminPort,
        usersFile: this.config.pcpConfFile!,
        operations: this.nodeOperations(),
        admin: this.context,
        recoveryConfigured: this.config.recovery1stStageCommand !== '',
        partitionRules: (database) => this.partitionRulesOf(database),
      });
      await this.web.start();
    }
  }

  /**
   * SHOW parapool_rules' table for a database, for the web admin page: it has no session, so the rows are counted
   * on connections of the proxy's own (as recovery_user) to the nodes in service, closed afterwards.
   */
  private async partitionRulesOf(database: string): Promise<AdminTable> {
    const parameters = new Map([['user', this.config.recoveryUser], ['database', database], ['application_name', 'parapool admin']]);
    const secret = this.context.passwords?.get(this.config.recoveryUser) ?? null;
    const opened = await Promise.allSettled(
      this.cluster.upNodes().map((node) => BackendConnection.connect({ node, parameters, secret, connectTimeoutMs: this.config.connectTimeout * 1000 }, 'admin')),
    );
    const connections = opened.flatMap((result) => (result.status === 'fulfilled' ? [result.value] : []));
    try {
      const refused = opened.find((result): result is PromiseRejectedResult => result.status === 'rejected');
      if (refused) throw refused.reason;
      const catalog = this.catalogs.current(database) ?? (await this.catalogs.forDatabase(database, connections));
      const byNode = new Map(connections.map((connection) => [connection.node.id, connection]));
      return await partitionRules({ catalog, queryNode: (nodeId, sql) => byNode.get(nodeId)?.query(sql).then((result) => result.rows) ?? null });
    } finally {
      for (const connection of connections) connection.destroy();
    }
  }

  /**
   * Starts with the nodes pgpool_status records as down out of service, as pgpool-II does, unless discard_status
   * (-D) says to forget the file. A file that would leave no node in service is ignored, as pgpool ignores it.
   */
  private applyRecordedStatus(): void {
    const path = statusFilePath(this.config.logdir);
    if (this.config.discardStatus) {
      log('info', 'node_status_discarded', { path });
      return;
    }
    const recorded = readNodeStatus(this.config.logdir);
    if (!recorded) return;
    const down = this.cluster.nodes.filter((node) => recorded[node.id] === 'down');
    if (down.length === this.cluster.nodes.length) {
      log('warning', 'node_status_ignored', { path, reason: 'it records every node as down' });
      return;
    }
    for (const node of down) this.cluster.detach(node.id, `down in pgpool_status (${path})`);
  }

  private recoveryOptions(nodes: readonly BackendNode[]): RecoveryOptions {
    return {
      nodes,
      user: this.config.recoveryUser,
      secret: this.context.passwords?.get(this.config.recoveryUser) ?? null,
      connectTimeoutMs: this.config.connectTimeout * 1000,
    };
  }

  /** Looks for in-doubt transactions every in_doubt_recovery_interval seconds, on every node, in service or not. */
  private scheduleRecovery(): void {
    const interval = this.config.inDoubtRecoveryInterval;
    if (interval === 0 || this.stopped) return;
    this.recoveryTimer = setTimeout(() => {
      void resolveInDoubt(this.recoveryOptions(this.cluster.nodes)).finally(() => this.scheduleRecovery());
    }, interval * 1000);
  }

  /**
   * Holds new statements until no session holds anything on the nodes (see StatementGate); resolves with the
   * hold's release. Sessions still in a transaction after `endAfterMs` are ended (pgpool-II's
   * client_idle_limit_in_recovery). Rejects, releasing the hold, when sessions are still busy after `timeoutMs`.
   */
  async quiesce(options: { timeoutMs: number; endAfterMs: number | null }, except?: ServedSession): Promise<() => void> {
    const release = this.gate.hold();
    const started = Date.now();
    for (;;) {
      const busy = [...this.sessions.values()].filter((session) => session !== except && !session.quiescent);
      if (busy.length === 0) return release;
      const waited = Date.now() - started;
      if (options.endAfterMs !== null && waited >= options.endAfterMs) {
        for (const session of busy) session.close('ended so that the online recovery of a node can go on');
        continue;
      }
      if (waited >= options.timeoutMs) {
        release();
        throw new PgError({
          code: SqlState.objectNotInPrerequisiteState,
          message: `${busy.length} session(s) were still in a transaction after ${options.timeoutMs} ms`,
          hint: 'client_idle_limit_in_recovery ends such sessions; the recovery can be run again',
        });
      }
      await new Promise((resolvePromise) => setTimeout(resolvePromise, 20));
    }
  }

  /**
   * Attaches a node by hand. In service, it must see every write from now on: new statements are held until no
   * session is inside a transaction (one open across the attach would commit without the node), then sessions
   * connect to it before their next statement.
   */
  async attachNode(nodeId: number, caller?: ServedSession): Promise<void> {
    const release = await this.quiesceForNodeChange(caller);
    try {
      this.cluster.attach(nodeId);
    } finally {
      release();
    }
  }

  /** Attach and recovery as parapool.attach_node() and PCP ask for them; `caller` is not waited for. */
  private nodeOperations(caller?: ServedSession): NodeOperations {
    return {
      cluster: this.cluster,
      attach: (nodeId) => this.attachNode(nodeId, caller),
      recover: (nodeId, progress) => this.recoverNode(nodeId, progress, caller),
      promote: this.failover ? (nodeId) => this.failover!.switchover(this.cluster.nodes[nodeId]) : undefined,
    };
  }

  /** quiesce() with recovery_timeout and client_idle_limit_in_recovery, as pgpool-II's second stage waits. */
  private quiesceForNodeChange(caller?: ServedSession): Promise<() => void> {
    const limit = this.config.clientIdleLimitInRecovery;
    return this.quiesce({ timeoutMs: this.config.recoveryTimeout * 1000, endAfterMs: limit < 0 ? 0 : limit === 0 ? null : limit * 1000 }, caller);
  }

  /** Online recovery of a detached node (see cluster/online-recovery.ts); `caller` is the session that asked. */
  recoverNode(nodeId: number, progress: (message: string) => void, caller?: ServedSession): Promise<void> {
    return recoverNode(
      nodeId,
      { cluster: this.cluster, quiesce: () => this.quiesceForNodeChange(caller) },
      {
        firstStageCommand: this.config.recovery1stStageCommand,
        secondStageCommand: this.config.recovery2ndStageCommand,
        timeoutSeconds: this.config.recoveryTimeout,
        user: this.config.recoveryUser,
        secret: this.context.passwords?.get(this.config.recoveryUser) ?? null,
        connectTimeoutMs: this.config.connectTimeout * 1000,
      },
      progress,
    );
  }

  /** The port clients connect to (the configured one, or the one the system chose for port 0). */
  get port(): number {
    return this.boundPort;
  }

  private checkNode(node: BackendNode): Promise<void> {
    return new Promise((resolvePromise) => {
      const socket = netConnect({ host: node.host, port: node.port });
      const timer = setTimeout(() => done(new Error(`no answer within ${this.config.connectTimeout} s`)), this.config.connectTimeout * 1000);
      const done = (error: Error | null) => {
        clearTimeout(timer);
        socket.destroy();
        if (error) {
          log('error', 'node_unreachable_at_startup', { node: node.id, address: `${node.host}:${node.port}`, error: error.message });
          this.cluster.detach(node.id, `${describeNode(node)} was unreachable at start-up: ${error.message}`);
        }
        resolvePromise();
      };
      socket.once('connect', () => done(null));
      socket.once('error', (error) => done(error));
    });
  }

  private readonly sockets = new Set<Socket>();

  private accept(socket: Socket): void {
    socket.on('error', () => undefined);
    this.sockets.add(socket);
    socket.on('close', () => this.sockets.delete(socket));
    new ClientSession(socket, this.context);
  }

  get sessionCount(): number {
    return this.sessions.size;
  }

  /** Stops listening, ends every session (their node connections close, rolling back) and empties the pool. */
  async stop(): Promise<void> {
    this.stopped = true;
    if (this.recoveryTimer) clearTimeout(this.recoveryTimer);
    this.failoverCommands.stop();
    this.cluster.off('detach', this.recordStatus);
    this.cluster.off('attach', this.recordStatus);
    const checks = this.healthChecker.stop();
    // Told first, so that the others elect a new leader at once rather than after wd_heartbeat_deadtime.
    await this.watchdog?.stop();
    this.cluster.off('attach', this.onAttachStreaming);
    await this.replicationCheck?.stop();
    // A failover under way ends on its own (it may be waiting for a node): the proxy does not wait for it.
    void this.failover?.stop();
    await this.pcp?.stop();
    await this.metrics?.stop();
    await this.web?.stop();
    const closed = closeServers(this.servers);
    for (const session of [...this.sessions.values()]) session.close('proxy shutting down');
    this.cacheInvalidation?.stop();
    this.pool.close();
    await closeWorkerPool();
    closeDeciderFences();
    // A client that does not close its side after our goodbye must not keep the proxy from stopping.
    for (const socket of this.sockets) socket.destroy();
    await Promise.all([closed, checks]);
    this.servers = [];
  }
}
