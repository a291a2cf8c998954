// One client connection: start-up, authentication, then every message the client sends, in order. Reads go to
// one node (chosen by backend_weight), writes to every node in service; extended-protocol messages are batched
// up to Flush or Sync so that a batch runs on one set of nodes, and prepared statements are re-created lazily on
// a node that has not seen them. The session never lets two nodes drift apart silently: differing results
// detach a node, and a transaction aborted on one node is aborted on the others before the client continues.
// A connection the node ends between statements (a restart, pg_terminate_backend, idle_session_timeout) is opened
// again before the next statement outside a transaction; inside one, the transaction fails with 08006.

import type { Socket } from 'node:net';
import type { Node } from '@pgsql/types';
import type { ProxyConfig } from '../config/config';
import type { BackendNode } from '../cluster/backend-node';
import { describeNode } from '../cluster/backend-node';
import type { ClusterState } from '../cluster/cluster-state';
import { liveCheckAfterMs, type ConnectionPool } from '../cluster/connection-pool';
import type { ClientSink } from '../executor/client-sink';
import type { WorkerFragments } from '../executor/execution-port';
import { closeWorkerConnections } from '../executor/worker-pool';
import { abortMarker, ReplicatedDispatch, type DispatchResult, type NodeSend } from '../executor/replicated-dispatch';
import { log } from '../log';
import { checkDeterminism, pinTimeFunctions } from '../planner/nondeterminism';
import { nodeTag, parseSql, type ParsedStatement } from '../planner/sql-parser';
import { createsTemporaryObject, mayChangeDefinitions, nodeBoundSessionState } from '../planner/statement-classifier';
import { classifyStatement, type StatementClass } from '../planner/statement-classifier';
import { PrepareRefusals } from '../planner/prepare-refusals';
import { answerAdminCommand } from '../admin/show-commands';
import type { Catalog, CatalogRegistry } from '../catalog/catalog';
import { readCatalog } from '../catalog/catalog';
import { quoteLiteral } from '../catalog/partition-rule';
import { runRuleCommand } from '../catalog/rule-commands';
import { beginEverywhere, keyPosition, nodesOfKeys, runDistributedStatement, tableColumnNames, type SessionPort } from '../executor/distributed-statement';
import { CopyRouter, RelayedError } from '../executor/copy-router';
import { collectBatch, sumTags, type BatchReply } from '../executor/scatter-write';
import { copyFormatFromOptions } from '../protocol/copy-row-splitter';
import { keyValueOf } from '../planner/key-values';
import { commitEverywhere } from '../executor/two-phase-commit';
import { routeDistributed, type DistributedRoute } from '../planner/distributed-router';
import { explainRouter, runDistributedRead, textOrderIsBytewise, type DistributedReadPort, type ReadOutcome } from '../executor/plan-executor';
import { HeldPortals } from './held-portals';
import { SessionCatalog } from './session-catalog';
import { ExtendedDistributedReads, type ExtendedReadHost } from './extended-distributed-reads';
import type { PendingMessage, PreparedStatement } from './pending-message';
import { textParameters } from '../backend/node-value-format';
import { CopyOutSink } from './copy-out-sink';
import { deparseVerified } from '../planner/ast-tools';
import { closeTarget, declareCursor, fetchFromCursor, fetchTarget, type CursorHost } from './sql-cursors';
import { executeSqlStatement, prepareSqlStatement, type SqlPreparedStatement } from './sql-prepared-statements';
import { serialize } from 'pg-protocol';
import { BackendConnection, BackendStartupError, sendCancel } from '../backend/backend-connection';
import { authenticateClient } from './client-auth';
import { CoalescingWriter } from '../backend/coalescing-writer';
import { PgError, SqlState, protocolViolation } from '../protocol/errors';
import { FrameReader, readStartupPacket, StartupCode, type Frame } from '../protocol/frame-reader';
import {
  decodeBind,
  decodeCancelRequest,
  decodeClose,
  decodeDescribe,
  decodeEmpty,
  decodeExecute,
  decodeParse,
  decodeQuery,
  decodeStartupParameters,
  renameBindStatement,
  type BindMessage,
} from '../protocol/frontend-messages';
import { BackendCode, FrontendCode, type TransactionStatus } from '../protocol/message-codes';
import type { StoredSecret } from '../protocol/password-file';
import { serverMessages } from '../protocol/server-messages';

/** What sessions share: set up once by the server. */
export interface SessionContext {
  readonly config: ProxyConfig;
  readonly cluster: ClusterState;
  readonly pool: ConnectionPool;
  readonly passwords: ReadonlyMap<string, StoredSecret> | null;
  readonly writeFunctions: RegExp | null;
  readonly catalogs: CatalogRegistry;
  chooseReadNode(): BackendNode | null;
  cancel(processId: number, secretKey: number): void;
  register(session: ClientSession): boolean;
  unregister(session: ClientSession): void;
}

/** What a session SET, for connections borrowed for one of its reads to take, and its isolation level. */
interface SessionSettings {
  readonly settings: [string, string][];
  readonly isolation: string;
}

/** Stands for "the unnamed statement holds a pinned copy" in a node's preparedStatements. */
const pinnedStatement = { name: '', pinned: true };

const readClass: StatementClass = { kind: 'read', reason: 'no statement' };

/**
 * A statement every node rejects at parse time: sent in place of one the proxy refuses, so the nodes fail at
 * the same point of the exchange (rolling back what PostgreSQL would roll back) and the client sees the proxy's
 * error instead of the node's.
 */
export const rejectionMarker = 'PARAPOOL_REJECTED_STATEMENT';

let nextSessionId = 1;

export class ClientSession implements ClientSink {
  readonly id = nextSessionId++;
  readonly processId: number;
  readonly secretKey: number;
  closed = false;
  private phase: 'startup' | 'authenticating' | 'ready' = 'startup';
  private startupBuffer: Buffer = Buffer.alloc(0);
  private reader: FrameReader;
  private readonly inbox: Frame[] = [];
  private inboxBytes = 0;
  private stepping = false;
  private passwordWaiter: ((body: Buffer) => void) | null = null;
  private parameters = new Map<string, string>();
  private readonly connections = new Map<number, BackendConnection>();
  /**
   * Connections that closed under the session, by node: the next statement opens them again
   * (see restoreBeforeStatement).
   */
  private readonly lostConnections = new Map<number, { connection: BackendConnection }>();
  /** Databases a DROP DATABASE in the pending extended-protocol messages names. */
  private databasesToRelease: string[] = [];
  private readNodeId: number | null = null;
  private status: TransactionStatus = 'I';
  private dispatch: ReplicatedDispatch | null = null;
  private dispatchIsWrite = false;
  private pending: PendingMessage[] = [];
  private readonly statements = new Map<string, PreparedStatement>();
  private readonly portals = new Map<string, StatementClass>();
  /** Portals of multi-node reads the proxy answers itself, with rows left to fetch (see SpooledPortal). */
  private readonly heldPortals = new HeldPortals();
  /** SQL PREPAREd reads of several nodes, which the proxy plans at each EXECUTE. */
  private readonly sqlPrepared = new Map<string, SqlPreparedStatement>();
  private readonly output: CoalescingWriter;
  /** The partition rules of the session's database. */
  /** The partition rules, views and routines as this session sees them (null until start-up reads them). */
  private sessionCatalog: SessionCatalog | null = null;

  private get catalog(): Catalog | null {
    return this.sessionCatalog?.catalog ?? null;
  }
  /** Nodes the open transaction wrote on: more than one means its COMMIT is a two-phase commit. */
  private readonly writtenNodes = new Set<number>();
  private readonly onDetach = (node: BackendNode) => this.dropNode(node.id);

  constructor(private readonly socket: Socket, private readonly context: SessionContext) {
    this.processId = (process.pid * 1000 + this.id) & 0x7fffffff;
    this.secretKey = (Math.random() * 0x7fffffff) | 0;
    this.reader = new FrameReader(context.config.clientMaxMessageSize, `client session ${this.id}`);
    this.output = new CoalescingWriter(socket);
    socket.setNoDelay(true);
    socket.on('data', (chunk: Buffer) => this.onData(chunk));
    socket.on('error', () => this.close('socket error'));
    socket.on('close', () => this.close('client closed the connection'));
    context.cluster.on('detach', this.onDetach);
    const timeout = context.config.authenticationTimeout;
    // A client that opens a connection and then goes quiet must not hold a slot (or, once registered, one of
    // num_init_children) for ever: start-up and authentication have authentication_timeout to finish.
    if (timeout > 0) {
      this.startupTimer = setTimeout(() => {
        if (this.phase === 'ready') return;
        log('warning', 'authentication_timeout', { session: this.id, client: this.remote, phase: this.phase });
        this.fail(new PgError({ severity: 'FATAL', code: SqlState.connectionFailure, message: 'canceling authentication due to timeout' }));
      }, timeout * 1000);
      this.startupTimer.unref();
    }
  }

  private startupTimer: NodeJS.Timeout | null = null;

  get remote(): string {
    return `${this.socket.remoteAddress}:${this.socket.remotePort}`;
  }

  // ---- ClientSink ------------------------------------------------------------------------------------------

  write(bytes: Buffer): boolean {
    if (this.closed) return true;
    // A reply and the ReadyForQuery written once every node is done leave in one system call.
    return this.output.write(bytes);
  }

  onceDrained(callback: () => void): void {
    if (this.closed || !this.socket.writableNeedDrain) callback();
    else this.socket.once('drain', callback);
  }

  // ---- input ----------------------------------------------------------------------------------------------

  private onData(chunk: Buffer): void {
    if (this.closed) return;
    try {
      if (this.phase === 'startup') {
        this.startupBuffer = Buffer.concat([this.startupBuffer, chunk]);
        this.readStartup();
        return;
      }
      for (const frame of this.reader.push(chunk)) {
        if (this.phase === 'authenticating' && (this.passwordWaiter || frame.code === FrontendCode.password)) {
          this.onAuthFrame(frame);
          continue;
        }
        this.inbox.push(frame);
        this.inboxBytes += frame.raw.length;
      }
      if (this.inboxBytes > 8 * 1024 * 1024) this.socket.pause();
      this.pump();
    } catch (error) {
      this.fail(error);
    }
  }

  private readStartup(): void {
    const read = readStartupPacket(this.startupBuffer);
    if (!read) return;
    const { packet, rest } = read;
    this.startupBuffer = rest;
    switch (packet.code) {
      case StartupCode.sslRequest:
      case StartupCode.gssEncRequest:
        if (packet.body.length !== 0) throw protocolViolation('invalid length of startup packet');
        this.socket.write(serverMessages.sslRefused);
        if (rest.length > 0) this.readStartup();
        return;
      case StartupCode.cancelRequest: {
        const { processId, secretKey } = decodeCancelRequest(packet.body);
        this.context.cancel(processId, secretKey);
        this.close('cancel request', false);
        return;
      }
      default: {
        const major = packet.code >>> 16;
        const minor = packet.code & 0xffff;
        if (major !== 3) {
          throw new PgError({ severity: 'FATAL', code: SqlState.featureNotSupported, message: `unsupported frontend protocol ${major}.${minor}: server supports 3.0 to 3.0` });
        }
        const startup = decodeStartupParameters(packet.body);
        this.parameters = startup.parameters;
        if (!this.parameters.has('database')) this.parameters.set('database', this.parameters.get('user')!);
        const unsupported = [...this.parameters.keys()].filter((k) => k.startsWith('_pq_.'));
        for (const key of unsupported) this.parameters.delete(key);
        if (minor > 0 || unsupported.length > 0) this.socket.write(negotiateProtocolVersion(unsupported));
        if (this.parameters.get('replication') && this.parameters.get('replication') !== 'false') {
          throw new PgError({ severity: 'FATAL', code: SqlState.featureNotSupported, message: 'replication connections through parapool are not supported' });
        }
        this.phase = 'authenticating';
        this.startupBuffer = Buffer.alloc(0);
        void this.authenticate();
        if (rest.length > 0) this.onData(rest);
      }
    }
  }

  private onAuthFrame(frame: Frame): void {
    if (frame.code !== FrontendCode.password || !this.passwordWaiter) {
      throw protocolViolation(`expected password response, got message type ${frame.code}`);
    }
    const waiter = this.passwordWaiter;
    this.passwordWaiter = null;
    waiter(frame.payload);
  }

  private async authenticate(): Promise<void> {
    const user = this.parameters.get('user')!;
    // The client may have gone while its start-up packet was read: a closed session must not take a slot.
    if (this.closed) return;
    try {
      if (!this.context.register(this)) {
        throw new PgError({ severity: 'FATAL', code: SqlState.tooManyConnections, message: 'sorry, too many clients already', detail: `num_init_children is ${this.context.config.numInitChildren}` });
      }
      await authenticateClient(this.context.config.clientAuthentication, user, this.context.passwords, {
        send: (bytes) => this.socket.write(bytes),
        nextPasswordMessage: () => new Promise((resolvePromise) => (this.passwordWaiter = resolvePromise)),
      });
      await this.connectNodes();
      if (this.closed) return;
      const shared = await this.context.catalogs.forDatabase(this.parameters.get('database')!, this.connectionsInNodeOrder());
      this.sessionCatalog = new SessionCatalog(this.context.catalogs, shared, {
        id: this.id,
        status: () => this.status,
        connections: () => this.connectionsInNodeOrder(),
        mainConnection: () => this.mainConnection(),
      });
      if (/search_path/i.test(this.parameters.get('options') ?? '')) await this.sessionCatalog.resolveSearchPath();
      const main = this.mainConnection();
      for (const [name, value] of main.parameters) this.socket.write(serverMessages.parameterStatus(name, value));
      this.socket.write(serverMessages.backendKeyData(this.processId, this.secretKey));
      this.socket.write(serverMessages.readyForQuery('I'));
      this.phase = 'ready';
      if (this.startupTimer) clearTimeout(this.startupTimer);
      if (this.context.config.logConnections) {
        log('info', 'session_start', { session: this.id, client: this.remote, user, database: this.parameters.get('database'), nodes: [...this.connections.keys()].join(',') });
      }
      this.pump();
    } catch (error) {
      this.fail(error);
    }
  }

  /** Opens a connection to every node in service; a node that cannot be reached is detached, a refusal relayed. */
  private async connectNodes(): Promise<void> {
    const nodes = this.context.cluster.upNodes();
    if (nodes.length === 0) {
      throw new PgError({ severity: 'FATAL', code: SqlState.cannotConnectNow, message: 'no node is in service', hint: 'SHOW pool_nodes lists the nodes and why they were detached' });
    }
    const user = this.parameters.get('user')!;
    const secret = this.context.passwords?.get(user) ?? null;
    const results = await Promise.allSettled(
      nodes.map((node) =>
        this.context.pool.acquire({ node, parameters: this.parameters, secret, connectTimeoutMs: this.context.config.connectTimeout * 1000 }),
      ),
    );
    if (this.closed) {
      // The client left while the nodes were answering: close() found no connection to give back.
      for (const result of results) if (result.status === 'fulfilled') void this.context.pool.release(result.value);
      return;
    }
    let refusal: PgError | null = null;
    results.forEach((result, index) => {
      const node = nodes[index];
      if (result.status === 'fulfilled') {
        this.connections.set(node.id, result.value);
        result.value.onClose(this.onConnectionClosed);
      } else {
        const error = result.reason as PgError;
        if (error instanceof BackendStartupError && error.unreachable) {
          this.context.cluster.detach(node.id, error.message);
        } else {
          refusal ??= error instanceof PgError ? error : new PgError({ severity: 'FATAL', code: SqlState.connectionFailure, message: String(error) });
        }
      }
    });
    if (refusal || this.connections.size === 0) {
      for (const connection of this.connections.values()) void this.context.pool.release(connection);
      this.connections.clear();
      throw refusal ?? new PgError({ severity: 'FATAL', code: SqlState.connectionFailure, message: 'could not connect to any node', hint: 'SHOW pool_nodes lists the nodes and why they were detached' });
    }
  }

  // ---- message loop ---------------------------------------------------------------------------------------

  /** Handles queued client messages in order, one step at a time, until one must wait for the nodes. */
  /** Where the client's COPY data goes while a COPY FROM STDIN runs. */
  private activeCopy(): { copyIn: boolean; forwardCopy(frame: Frame): boolean; onceDrained(callback: () => void): void } | null {
    return this.copyRouter ?? this.dispatch;
  }

  private copyRouter: CopyRouter | null = null;

  private pump(): void {
    // COPY data flows while the COPY statement's own step is still waiting for its end.
    if (this.activeCopy()?.copyIn) this.forwardCopyData();
    while (!this.closed && !this.stepping && this.phase === 'ready' && this.inbox.length > 0) {
      if (this.activeCopy()?.copyIn) {
        this.forwardCopyData();
        continue;
      }
      const frame = this.inbox.shift()!;
      this.inboxBytes -= frame.raw.length;
      if (this.inboxBytes <= 8 * 1024 * 1024 && this.socket.isPaused() && !this.waitingForNodes) this.socket.resume();
      let step: Promise<void> | null;
      try {
        step = this.handle(frame);
      } catch (error) {
        // A message the session cannot take (a protocol violation, an undecodable body) ends this session only.
        this.fail(error);
        return;
      }
      if (step) {
        this.stepping = true;
        step
          .catch((error) => this.fail(error))
          .finally(() => {
            this.stepping = false;
            this.pump();
          });
      }
    }
  }

  private forwardCopyData(): void {
    const dispatch = this.activeCopy()!;
    while (dispatch.copyIn && this.inbox.length > 0) {
      const frame = this.inbox.shift()!;
      this.inboxBytes -= frame.raw.length;
      if (!dispatch.forwardCopy(frame) && !this.waitingForNodes) {
        this.waitingForNodes = true;
        this.socket.pause();
        dispatch.onceDrained(() => {
          this.waitingForNodes = false;
          if (this.inboxBytes <= 8 * 1024 * 1024) this.socket.resume();
        });
      }
    }
    if (this.inboxBytes <= 8 * 1024 * 1024 && this.socket.isPaused() && !this.waitingForNodes) this.socket.resume();
  }

  /** COPY data waits for the nodes' sockets to drain. */
  private waitingForNodes = false;

  /** Returns a promise when the message started work that the next message must wait for. */
  private handle(frame: Frame): Promise<void> | null {
    switch (frame.code) {
      case FrontendCode.query:
        return this.simpleQuery(frame);
      case FrontendCode.parse:
      case FrontendCode.bind:
      case FrontendCode.describe:
      case FrontendCode.execute:
      case FrontendCode.close:
        this.pending.push(this.decodeExtended(frame));
        return null;
      case FrontendCode.flush:
        decodeEmpty(frame.payload, 'Flush');
        return this.sendExtended(frame, false);
      case FrontendCode.sync:
        decodeEmpty(frame.payload, 'Sync');
        return this.sendExtended(frame, true);
      case FrontendCode.functionCall:
        return this.restoreBeforeStatement(() => false).then((goOn) => (goOn ? this.runOnNodes([frame.raw], { kind: 'write', reason: 'function call' }, 'function call') : undefined));
      case FrontendCode.terminate:
        this.close('client terminated the session');
        return null;
      case FrontendCode.copyData:
      case FrontendCode.copyDone:
      case FrontendCode.copyFail:
        return null; // after a failed COPY the client may still send data: PostgreSQL ignores it too
      default:
        throw protocolViolation(`invalid frontend message type ${frame.code}`);
    }
  }

  // ---- simple query protocol -------------------------------------------------------------------------------

  private async simpleQuery(frame: Frame): Promise<void> {
    const sql = decodeQuery(frame.payload);
    if (this.pending.length > 0 || this.dispatch) {
      // Extended-protocol messages not yet synced (a Close, say) run first, in the same exchange, as on a node.
      const parsed = parseSql(sql);
      const reason = parsed.ok ? this.whyNotInPendingExchange(parsed.statements) : 'it does not parse';
      if (reason !== null || !parsed.ok) {
        this.pending = [];
        throw protocolViolation(`this Query message must follow a Sync: ${reason}, and the extended-protocol messages before it are still pending`);
      }
      if (parsed.statements.some((st) => this.writesData(st.node))) this.transactionWrote = true;
      for (const statement of parsed.statements) this.prepareRefusals.note(statement.node);
      const classes = parsed.statements.map((s) => this.classify(s.node));
      return this.sendExtended(frame, true, classes.find((c) => c.kind === 'write') ?? readClass);
    }
    if (this.context.config.logStatement) log('info', 'statement', { session: this.id, sql });
    this.statements.delete('');
    this.heldPortals.close('');
    const parsed = parseSql(sql);
    if (!(await this.restoreBeforeStatement(() => parsed.ok && parsed.statements.length === 1 && isRollback(parsed.statements[0].node)))) return;
    for (const connection of this.connections.values()) connection.preparedStatements.delete('');
    if (parsed.ok) for (const statement of parsed.statements) await this.releaseDatabase(droppedDatabase(statement.node));
    if (!parsed.ok) return this.runOnNodes([frame.raw], { kind: 'write', reason: 'unparsable statement: every node reports the error' }, sql);
    this.sessionCatalog?.beforeStatement(sql, parsed.statements.some((st) => mayChangeDefinitions(st.node)));
    if (this.status === 'I') {
      this.transactionWrote = this.wroteDistributedRows = false;
      this.prepareRefusals.endTransaction();
    }
    if (parsed.statements.some((st) => this.writesData(st.node))) this.transactionWrote = true;
    if (sql.toLowerCase().includes('temp') && parsed.statements.some((st) => createsTemporaryObject(st.node))) this.madeTemporaryObjects = true;
    this.noteNodeBoundState(parsed.statements);
    for (const statement of parsed.statements) this.prepareRefusals.note(statement.node);
    await this.simpleQueryOnNodes(frame, sql, parsed.statements);
  }

  /**
   * Why a Query sent before the Sync of pending extended-protocol messages cannot be relayed as part of their
   * exchange: it is relayed as it is, so anything the proxy plans, answers or tracks itself must not be in it.
   */
  private whyNotInPendingExchange(statements: ParsedStatement[]): string | null {
    for (const statement of statements) {
      const node = statement.node;
      if (this.classify(node).kind === 'admin') return 'the proxy answers it';
      if (checkDeterminism(node).kind !== 'deterministic') return 'it calls a function whose result differs per node';
      if (this.catalog && routeDistributed(node, this.catalog).kind !== 'none') return 'it names a distributed table or a parapool function';
      if (this.heldStatementKind(node)) return 'it names a cursor or prepared statement the proxy holds';
      if (isCommit(node)) return 'a COMMIT may need every node\'s vote';
      if (droppedDatabase(node) !== null) return 'a DROP DATABASE first closes pooled connections';
      if (createsTemporaryObject(node)) return 'it creates a temporary object';
    }
    return null;
  }

  private async simpleQueryOnNodes(frame: Frame, sql: string, statements: ParsedStatement[]): Promise<void> {
    const parsed = { statements };
    if (statements.length === 1 && this.heldStatementKind(statements[0].node)) return this.runHeldStatement(statements[0].node, frame, sql);
    if (this.catalog && parsed.statements.length > 0) {
      const routes = parsed.statements.map((s) => routeDistributed(s.node, this.catalog!));
      if (routes.some((r) => r.kind !== 'none')) {
        if (routes.length > 1) {
          return this.refuse(new PgError({ code: SqlState.featureNotSupported, message: 'a statement on a distributed table, or a call of a parapool function, must be sent alone, not with other statements in one query' }));
        }
        if (writesDistributedRows(routes[0])) this.wroteDistributedRows = true;
        return this.runDistributed(routes[0], parsed.statements[0], frame, sql);
      }
      if (this.status === 'T' && parsed.statements.length === 1 && isCommit(parsed.statements[0].node)) {
        const lost = this.wroteDistributedRows ? [...this.writtenNodes].find((node) => !this.connections.has(node)) : undefined;
        if (lost !== undefined) return this.rollBackForLostNode(lost);
        if (this.writtenNodes.size > 1 && this.prepareRefusals.reason === null) return this.commitAcrossNodes();
      }
    }
    const classes = parsed.statements.map((s) => this.classify(s.node));
    const admin = classes.find((c) => c.kind === 'admin');
    if (admin && admin.kind === 'admin') {
      if (classes.length > 1) {
        return this.refuse(new PgError({ code: SqlState.featureNotSupported, message: `SHOW ${admin.command} cannot be combined with other statements in one query` }));
      }
      for (const bytes of answerAdminCommand(admin.command, this.context)) this.write(bytes);
      this.write(serverMessages.readyForQuery(this.status));
      return;
    }
    const isWrite = classes.some((c) => c.kind === 'write');
    const statementClass = isWrite ? classes.find((c) => c.kind === 'write')! : classes[0] ?? readClass;
    if (!isWrite) return this.runOnNodes([frame.raw], statementClass, sql);
    let rewritten = false;
    const texts: string[] = [];
    for (const statement of parsed.statements) {
      const check = checkDeterminism(statement.node);
      if (check.kind === 'rejected') return this.refuse(check.error);
      if (check.kind === 'time') {
        rewritten = true;
        const pinned = await this.pinTime(statement.node);
        if (pinned instanceof PgError) return this.refuse(pinned);
        texts.push(pinned);
      } else {
        texts.push(statement.sql);
      }
    }
    const bytes = rewritten ? serialize.query(texts.join(';\n')) : frame.raw;
    const copyIn = parsed.statements.some((s) => nodeTag(s.node) === 'CopyStmt');
    return this.runOnNodes([bytes], statementClass, sql, undefined, copyIn);
  }

  /**
   * The statement's SQL with its time functions evaluated on the main node; the node's error instead when that
   * fails (e.g. the transaction is already aborted), which the caller reports as the statement's error.
   */
  private async pinTime(node: Node): Promise<string | PgError> {
    try {
      return await pinTimeFunctions(node, async (select) => (await this.port.evaluate(select))[0] ?? []);
    } catch (error) {
      if (error instanceof PgError && error.severity === 'ERROR') return error;
      throw error;
    }
  }

  /** Fails the current statement with the proxy's own error, aborting an open transaction on every node. */
  private async refuse(error: PgError): Promise<void> {
    await this.runOnNodes([serialize.query(rejectionMarker)], { kind: 'write', reason: 'refused by the proxy' }, rejectionMarker, error);
  }

  // ---- extended query protocol -----------------------------------------------------------------------------

  private decodeExtended(frame: Frame): PendingMessage {
    switch (frame.code) {
      case FrontendCode.parse: {
        const message = decodeParse(frame.payload);
        const parsed = parseSql(message.sql);
        let statementClass: StatementClass = { kind: 'write', reason: 'unparsable statement: every node reports the error' };
        let rejection: PgError | undefined;
        let timePinning: PreparedStatement['timePinning'];
        if (parsed.ok) {
          const classes = parsed.statements.map((s) => this.classify(s.node));
          statementClass = classes.find((c) => c.kind === 'write') ?? classes[0] ?? readClass;
          if (statementClass.kind === 'admin') statementClass = { kind: 'read', reason: 'SHOW' };
          if (statementClass.kind === 'write') {
            for (const statement of parsed.statements) {
              const check = checkDeterminism(statement.node);
              if (check.kind === 'rejected') rejection = check.error;
              else if (check.kind === 'time') timePinning = { node: statement.node, parameterTypes: message.parameterTypes };
            }
          }
        }
        const changesDefinitions = parsed.ok && parsed.statements.some((st) => mayChangeDefinitions(st.node));
        this.sessionCatalog?.beforeStatement(message.sql, false);
        const route = parsed.ok && parsed.statements.length === 1 && this.catalog ? routeDistributed(parsed.statements[0].node, this.catalog) : undefined;
        if (parsed.ok && parsed.statements.some((st) => createsTemporaryObject(st.node))) this.madeTemporaryObjects = true;
        if (parsed.ok) this.noteNodeBoundState(parsed.statements);
        const only = parsed.ok && parsed.statements.length === 1 ? parsed.statements[0].node : undefined;
        const cursorCommand = only && ('FetchStmt' in only || 'ClosePortalStmt' in only) ? only : undefined;
        const writesData = parsed.ok && parsed.statements.some((st) => this.writesData(st.node));
        if (parsed.ok) for (const st of parsed.statements) if (droppedDatabase(st.node) !== null) this.databasesToRelease.push(droppedDatabase(st.node)!);
        const prepareRefusal = parsed.ok ? parsed.statements.map((st) => this.prepareRefusals.inspect(st.node)).find((r) => r !== null) : undefined;
        const statement: PreparedStatement = { name: message.name, parseFrame: Buffer.from(frame.raw), statementClass, timePinning, route: route?.kind === 'none' ? undefined : route, changesDefinitions, cursorCommand, writesData, prepareRefusal };
        if (this.context.config.logStatement) log('info', 'parse', { session: this.id, statement: message.name, sql: message.sql });
        return { frame, statement, statementName: message.name, statementClass, rejection };
      }
      case FrontendCode.bind: {
        const message = decodeBind(frame.payload);
        const statement = this.statementBefore(this.pending, this.pending.length, message.statement);
        return { frame, statementName: message.statement, portal: message.portal, statementClass: statement?.statementClass ?? readClass, bind: message };
      }
      case FrontendCode.describe: {
        const message = decodeDescribe(frame.payload);
        if (message.kind === 'S') {
          const statement = this.statementBefore(this.pending, this.pending.length, message.name);
          return { frame, statementName: message.name, statementClass: statement?.statementClass ?? readClass };
        }
        return { frame, portal: message.name, statementClass: this.portalClass(message.name) };
      }
      case FrontendCode.execute: {
        const message = decodeExecute(frame.payload);
        return { frame, portal: message.portal, statementClass: this.portalClass(message.portal) };
      }
      default: {
        const message = decodeClose(frame.payload);
        return message.kind === 'S'
          ? { frame, statementName: message.name, statementClass: readClass }
          : { frame, portal: message.name, statementClass: readClass };
      }
    }
  }

  /** The statement a name means at a point of a batch: the batch's latest Parse of it before `end`, else the session's. */
  private statementBefore(messages: readonly PendingMessage[], end: number, name: string): PreparedStatement | undefined {
    for (let i = end - 1; i >= 0; i--) {
      const p = messages[i];
      if (p.frame.code === FrontendCode.parse && p.statement?.name === name) return p.statement;
    }
    return this.statements.get(name);
  }

  private portalClass(name: string): StatementClass {
    for (let i = this.pending.length - 1; i >= 0; i--) {
      const p = this.pending[i];
      if (p.frame.code === FrontendCode.bind && p.portal === name) return p.statementClass;
    }
    return this.portals.get(name) ?? readClass;
  }

  /** Sends the batched extended-protocol messages, ending with `terminator` (Flush or Sync). */
  private async sendExtended(terminator: Frame, isSync: boolean, terminatorClass: StatementClass = readClass): Promise<void> {
    const messages = this.pending;
    this.pending = [];
    if (!this.dispatch) {
      // After a Flush the batch goes on: the nodes, their transaction failed, skip to its Sync on their own.
      const goOn = () => !isSync || messages.some((m, i) => m.frame.code === FrontendCode.bind && rollbackText.test(statementSql(this.statementBefore(messages, i, m.statementName!))));
      if (!(await this.restoreBeforeStatement(goOn))) return;
    }
    for (const database of this.databasesToRelease.splice(0)) await this.releaseDatabase(database);
    if (this.status === 'I' && !this.dispatch) {
      this.transactionWrote = this.wroteDistributedRows = false;
      this.prepareRefusals.endTransaction();
    }
    for (let i = 0; i < messages.length; i++) {
      if (messages[i].frame.code !== FrontendCode.bind) continue;
      const statement = this.statementBefore(messages, i, messages[i].statementName!);
      if (statement?.writesData) this.transactionWrote = true;
      if (writesDistributedRows(statement?.route)) this.wroteDistributedRows = true;
      if (statement?.prepareRefusal) this.prepareRefusals.reason ??= statement.prepareRefusal;
    }
    if (isSync && !this.dispatch) {
      if (await this.extendedReads.isBatch(messages)) return this.extendedReads.run(messages);
      // JDBC with autocommit off sends BEGIN in the same batch as the transaction's first statement.
      const begin = this.extendedReads.transactionStartPrefix(messages);
      if (begin > 0 && (await this.extendedReads.isBatch(messages.slice(begin)))) {
        const dispatch = this.openDispatch(this.targets(true), true, true);
        dispatch.send(this.buildSends(messages.slice(0, begin), dispatch.connections, terminator, true));
        const result = await this.finishDispatch(dispatch, 'BEGIN', false);
        if (result.leader.lost || result.leader.outcomes.some((o) => o.startsWith('ERROR'))) {
          this.write(serverMessages.readyForQuery(this.status));
          return;
        }
        return this.extendedReads.run(messages.slice(begin));
      }
    }
    if (isSync && !this.dispatch && this.status === 'T' && this.isCommitBatch(messages)) {
      // As the simple protocol's COMMIT (simpleQueryOnNodes): a lost written node rolls back, several commit as one.
      const lost = this.wroteDistributedRows ? [...this.writtenNodes].find((node) => !this.connections.has(node)) : undefined;
      if (lost !== undefined) return this.rollBackForLostNode(lost);
      if (this.writtenNodes.size > 1 && this.prepareRefusals.reason === null) return this.commitAcrossNodes({ messages, terminator });
    }
    const isWrite = terminatorClass.kind === 'write' || messages.some((m) => m.statementClass.kind === 'write');
    let dispatch = this.dispatch;
    if (dispatch && isWrite && !this.dispatchIsWrite) {
      // Nodes outside the open exchange have not seen its earlier messages: refuse at this point instead.
      const error = new PgError({ code: SqlState.featureNotSupported, message: 'a write cannot follow a read in the same extended-protocol batch after a Flush', hint: 'send Sync before the write' });
      messages.splice(0, messages.length, { frame: terminator, statementClass: readClass, rejection: error });
    }
    for (const [index, message] of messages.entries()) {
      if (message.frame.code !== FrontendCode.bind || message.rejection) continue;
      const statement = this.statementBefore(messages, index, message.statementName!);
      if (!statement?.timePinning) continue;
      if (dispatch) {
        message.pinnedParse = serialize.parse({ text: rejectionMarker });
        this.rejections.push(new PgError({ code: SqlState.featureNotSupported, message: 'a write that calls a time function cannot run after a Flush in the same batch', hint: 'send Sync before it' }));
        continue;
      }
      const { node, parameterTypes } = statement.timePinning;
      const text = await this.pinTime(node);
      if (text instanceof PgError) {
        message.pinnedParse = serialize.parse({ text: rejectionMarker });
        this.rejections.push(text);
        continue;
      }
      message.pinnedParse = serialize.parse({ name: '', text, types: parameterTypes });
    }
    this.settingsEpoch++;
    const routed = await this.routeExtendedBatch(messages, dispatch !== null || !isSync);
    if (Array.isArray(routed)) return this.scatterExtended(messages, routed, terminator);
    if (!dispatch) {
      const targets = routed ? [routed] : this.targets(isWrite);
      dispatch = this.openDispatch(targets, isWrite, true);
    } else if (routed && (dispatch.connections.length !== 1 || dispatch.connections[0] !== routed)) {
      messages.splice(0, messages.length, { frame: terminator, statementClass: readClass, rejection: new PgError({ code: SqlState.featureNotSupported, message: 'a statement on a distributed table cannot follow other statements in the same extended-protocol batch after a Flush', hint: 'send Sync before it' }) });
    }
    if (messages.some((m, i) => m.frame.code === FrontendCode.bind && this.statementBefore(messages, i, m.statementName!)?.changesDefinitions)) this.sessionCatalog?.definitionsMayHaveChanged();
    const sends = this.buildSends(messages, dispatch.connections, terminator, isSync);
    dispatch.send(sends);
    if (isSync) await this.finishDispatch(dispatch);
  }

  /**
   * What each node is sent for a batch: the client's messages, with the Parses (and Closes) that re-create on a
   * node the statements it lacks, and the proxy's refusals in place of refused messages. Updates the session's
   * view of statements and portals.
   */
  private buildSends(messages: readonly PendingMessage[], connections: readonly BackendConnection[], terminator: Frame, isSync: boolean): NodeSend[] {
    const rejections: PgError[] = [];
    const sends: NodeSend[] = connections.map((connection) => ({ connection, frames: [], injected: [], syncs: 0 }));
    for (const message of messages) {
      if (message.rejection) {
        rejections.push(message.rejection);
        for (const send of sends) {
          (send.frames as Buffer[]).push(serialize.parse({ text: rejectionMarker }));
          (send.injected as boolean[]).push(true);
        }
        continue;
      }
      const code = message.frame.code;
      for (const send of sends) {
        const frames = send.frames as Buffer[];
        const injected = send.injected as boolean[];
        const prepared = send.connection.preparedStatements;
        if (message.pinnedParse) {
          frames.push(message.pinnedParse, renameBindStatement(message.frame.payload, ''));
          injected.push(true);
          prepared.set('', pinnedStatement);
        } else if (code === FrontendCode.parse) {
          const statement = message.statement!;
          const existing = statement.name === '' ? undefined : this.statements.get(statement.name);
          if (existing) {
            // PostgreSQL refuses a second Parse of a live name (42P05): make every node hold it, so all refuse.
            this.ensurePrepared(existing, send);
          } else if (statement.name !== '' && prepared.has(statement.name)) {
            frames.push(serialize.close({ type: 'S', name: statement.name })); // left over on this node
            injected.push(true);
          }
          frames.push(message.frame.raw);
          injected.push(false);
          if (!existing) prepared.set(statement.name, statement);
        } else if (message.statementName !== undefined && code !== FrontendCode.close) {
          const statement = this.statements.get(message.statementName);
          if (statement) this.ensurePrepared(statement, send);
          frames.push(message.frame.raw);
        } else {
          frames.push(message.frame.raw);
          if (code === FrontendCode.close) {
            injected.push(false);
            if (message.statementName !== undefined) prepared.delete(message.statementName);
          }
        }
      }
      if (code === FrontendCode.parse) {
        const name = message.statement!.name;
        if (name === '' || !this.statements.has(name)) this.statements.set(name, message.statement!);
      }
      else if (code === FrontendCode.bind) {
        this.portals.set(message.portal!, message.statementClass);
        this.heldPortals.close(message.portal!);
      }
      else if (code === FrontendCode.close) {
        if (message.statementName !== undefined) this.statements.delete(message.statementName);
        else this.portals.delete(message.portal!);
      }
    }
    for (const send of sends) {
      (send.frames as Buffer[]).push(terminator.raw);
      if (isSync) (send as { syncs: number }).syncs = 1;
    }
    this.rejections.push(...rejections);
    return sends;
  }

  private rejections: PgError[] = [];

  /** Adds to `send` what re-creates the client's statement on that node when the node lacks this version of it. */
  private ensurePrepared(statement: PreparedStatement, send: NodeSend): void {
    const prepared = send.connection.preparedStatements;
    if (prepared.get(statement.name) === statement) return;
    const frames = send.frames as Buffer[];
    const injected = send.injected as boolean[];
    if (statement.name !== '' && prepared.has(statement.name)) {
      frames.push(serialize.close({ type: 'S', name: statement.name }));
      injected.push(true);
    }
    frames.push(statement.parseFrame);
    injected.push(true);
    prepared.set(statement.name, statement);
  }

  // ---- distributed tables ---------------------------------------------------------------------------------

  /** The names of types given by OID (0: none), for casting bound parameters. */
  private async typeNames(oids: readonly number[]): Promise<(string | undefined)[]> {
    if (!oids.some((o) => o !== 0)) return oids.map(() => undefined);
    const rows = await this.port.evaluate(`SELECT ${oids.map((o) => (o === 0 ? 'NULL' : `pg_catalog.format_type(${o >>> 0}, NULL)`)).join(', ')}`);
    return (rows[0] ?? []).map((name) => name ?? undefined);
  }

  private async routeExtendedBatch(messages: PendingMessage[], flushed: boolean): Promise<BackendConnection | BackendConnection[] | null> {
    let node: number | null = null;
    let scatter: number[] | null = null;
    const executes = messages.filter((m) => m.frame.code === FrontendCode.execute).length;
    for (const [index, message] of messages.entries()) {
      if (message.frame.code !== FrontendCode.bind || message.rejection) continue;
      const statement = this.statementBefore(messages, index, message.statementName!);
      const route = statement?.route;
      if (!route) continue;
      let nodes: number[] | PgError;
      try {
        nodes = await this.nodesForBind(route, message.bind!, statement);
      } catch (error) {
        if (!(error instanceof PgError) || error.severity !== 'ERROR') throw error;
        nodes = error;
      }
      if (!(nodes instanceof PgError) && nodes.length === 1 && (node === null || node === nodes[0]) && scatter === null && !flushed) {
        node = nodes[0];
        continue;
      }
      // A write on several nodes runs as one batch per node, merged, when it is the batch's only execution.
      const write = route.kind === 'all-nodes' || (route.kind === 'pinned' && route.write);
      if (!(nodes instanceof PgError) && nodes.length > 1 && write && node === null && scatter === null && executes === 1 && !flushed) {
        scatter = nodes;
        continue;
      }
      const error = nodes instanceof PgError ? nodes : new PgError({
        code: SqlState.featureNotSupported,
        message: write
          ? 'an extended-protocol batch that writes on several nodes must hold that one execution only'
          : 'an extended-protocol batch whose rows live on more than one node is not supported yet',
        hint: write ? 'send Sync after each such execution' : 'send one row or key per execution, or use the simple query protocol',
      });
      messages[index] = { ...message, rejection: error };
    }
    if (node !== null || scatter !== null) {
      // A write for every node (BEGIN, SET, a replicated table) cannot share a batch that runs on some nodes only.
      const forEveryNode = messages.some((m, i) => m.frame.code === FrontendCode.bind && !m.rejection && m.statementClass.kind === 'write' && !this.statementBefore(messages, i, m.statementName!)?.route);
      if (forEveryNode) {
        const error = new PgError({
          code: SqlState.featureNotSupported,
          message: 'a statement on a distributed table cannot share an extended-protocol batch with statements that run on every node',
          hint: 'send Sync between them',
        });
        for (const [index, message] of messages.entries()) {
          if (message.frame.code === FrontendCode.bind && this.statementBefore(messages, index, message.statementName!)?.route) messages[index] = { ...message, rejection: error };
        }
        return null;
      }
    }
    try {
      if (scatter) return scatter.map((n) => this.port.connectionFor(n));
      return node === null ? null : this.port.connectionFor(node);
    } catch (error) {
      if (!(error instanceof PgError)) throw error;
      for (const [index, message] of messages.entries()) if (message.frame.code === FrontendCode.bind) messages[index] = { ...message, rejection: error };
      return null;
    }
  }

  /**
   * Runs one extended-protocol execution that writes on several nodes: each node runs the batch in a transaction,
   * and the client gets one answer (the first node's replies, every node's rows, the summed command tag), then
   * the nodes commit together.
   */
  private async scatterExtended(messages: PendingMessage[], connections: BackendConnection[], terminator: Frame): Promise<void> {
    const own = this.status === 'I';
    if (own) await beginEverywhere(connections);
    const sends = this.buildSends(messages, connections, terminator, true);
    const outcomes = await Promise.allSettled(sends.map((send) => collectBatch(send.connection, send.frames, send.injected)));
    const rejections = this.rejections;
    this.rejections = [];
    const lost = outcomes.find((o): o is PromiseRejectedResult => o.status === 'rejected');
    const rollback = () => (own ? Promise.all(connections.map((c) => c.query('ROLLBACK').catch(() => undefined))) : Promise.resolve());
    if (lost) {
      await rollback();
      throw new PgError({ code: SqlState.connectionFailure, message: `lost a node during the statement: ${(lost.reason as Error).message}` });
    }
    const replies = outcomes.map((o) => (o as PromiseFulfilledResult<BatchReply>).value);
    const failed = replies.find((r) => r.error);
    const leader = replies[0];
    const resultAt = leader.frames.findIndex((f) => [BackendCode.dataRow, BackendCode.commandComplete, BackendCode.errorResponse, BackendCode.emptyQueryResponse, BackendCode.portalSuspended].includes(f[0]));
    const prefix = resultAt < 0 ? leader.frames : leader.frames.slice(0, resultAt);
    for (const frame of prefix) this.write(frame);
    if (failed) {
      await rollback();
      const error = failed.error!;
      this.write(error.includes(rejectionMarker) && rejections.length > 0 ? serverMessages.errorResponse(rejections[0]) : error);
      this.status = own ? 'I' : 'E';
      await this.reconcileTransactions();
      this.write(serverMessages.readyForQuery(this.status));
      return;
    }
    if (own) await commitEverywhere(connections);
    else for (const connection of connections) this.writtenNodes.add(connection.node.id);
    for (const reply of replies) for (const row of reply.rows) this.write(row);
    this.write(serverMessages.commandComplete(sumTags(replies.map((r) => r.tag ?? 'UPDATE 0'))));
    const after = leader.frames.slice(leader.frames.findIndex((f) => f[0] === BackendCode.commandComplete) + 1);
    for (const frame of after) this.write(frame);
    this.status = own ? 'I' : 'T';
    if (this.status === 'I') this.portals.clear();
    this.write(serverMessages.readyForQuery(this.status));
  }

  /** The nodes a Bind's execution runs on; binary parameters are read as text first (the statement's types). */
  private async nodesForBind(route: DistributedRoute, bind: BindMessage, statement: PreparedStatement): Promise<number[]> {
    const parse = decodeParse(statement.parseFrame.subarray(5));
    const parameters = route.kind === 'pinned' || route.kind === 'insert-values' ? await textParameters(() => this.evaluationConnection(), parse.sql, parse.parameterTypes, bind) : bind.parameters;
    const port: SessionPort = { ...this.port, status: this.status };
    switch (route.kind) {
      case 'pinned':
        return nodesOfKeys(route.rule, route.keys, port, parameters);
      case 'insert-values': {
        if (route.rows.length !== 1) break;
        const position = await keyPosition(route.rule, route.columns, port);
        return nodesOfKeys(route.rule, [keyValueOf(route.rows[0][position])], port, parameters);
      }
      case 'all-nodes':
        return Array.from({ length: route.rule.nodeCount }, (_, i) => i);
      case 'refused':
        throw route.error;
      case 'select':
        throw new PgError({
          code: SqlState.featureNotSupported,
          message: `table "${route.table}" is distributed: a read of rows on several nodes is supported only with the simple query protocol for now`,
          hint: 'send it as a simple query, or pin the distribution key with = or IN',
        });
    }
    throw new PgError({
      code: SqlState.featureNotSupported,
      message: route.kind === 'rule-command' ? `parapool.${route.command.name} must be called with the simple query protocol` : 'this statement on a distributed table is supported only with the simple query protocol for now',
      hint: 'send it as a simple query',
    });
  }

  private connectionsInNodeOrder(): BackendConnection[] {
    return [...this.connections.values()].sort((a, b) => a.node.id - b.node.id);
  }

  private readonly extendedReads = new ExtendedDistributedReads(this.extendedReadHost());

  private extendedReadHost(): ExtendedReadHost {
    const session = this;
    return {
      get status() {
        return session.status;
      },
      get catalog() {
        return session.catalog!;
      },
      client: this,
      statements: this.statements,
      portals: this.portals,
      held: this.heldPortals,
      get spoolLimits() {
        return { memory: session.context.config.mergeMemoryLimit, file: session.context.config.intermediateResultLimit };
      },
      statementBefore: (messages, end, name) => this.statementBefore(messages, end, name),
      mainConnection: () => this.mainConnection(),
      evaluationConnection: () => this.evaluationConnection(),
      typeNames: (oids) => this.typeNames(oids),
      nodesForBind: (route, bind, statement) => this.nodesForBind(route, bind, statement),
      read: (statement, nodes, sink) => this.distributedRead(statement, nodes, undefined, sink),
      cursorHost: () => this.cursorHost(),
      refuse: (error) => this.refuse(error),
    };
  }

  private readonly port: SessionPort = {
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
  private sideConnection: BackendConnection | null = null;

  private async evaluationConnection(): Promise<BackendConnection> {
    const main = this.mainConnection();
    if (!main.busy) return main;
    if (!this.sideConnection || this.sideConnection.closed || this.sideConnection.node.id !== main.node.id) {
      this.sideConnection = await this.context.pool.acquire({
        node: main.node,
        parameters: this.parameters,
        secret: this.context.passwords?.get(this.parameters.get('user')!) ?? null,
        connectTimeoutMs: this.context.config.connectTimeout * 1000,
      });
    }
    return this.sideConnection;
  }

  private async runDistributed(route: DistributedRoute, statement: { node: Node; sql: string }, frame: Frame, sql: string): Promise<void> {
    switch (route.kind) {
      case 'refused':
        return this.refuse(route.error);
      case 'rule-command':
        return this.runRuleCommandStatement(route.command);
      case 'drop': {
        const forget = route.tables
          .map((t) => `DELETE FROM parapool.partition_rules WHERE table_schema = ${quoteLiteral(t.schema ?? 'public')} AND table_name = ${quoteLiteral(t.name)}`)
          .join(';\n');
        await this.runOnNodes([serialize.query(`${statement.sql};\n${forget}`)], { kind: 'write', reason: 'DROP of a table with a rule' }, sql);
        if (this.status === 'I') {
          const catalog = await readCatalog(this.catalog!.database, this.connectionsInNodeOrder());
          this.context.catalogs.replace(catalog);
          this.sessionCatalog!.use(catalog);
        }
        return;
      }
      case 'copy-in':
        try {
          return await this.copyIntoDistributed(route, statement);
        } catch (error) {
          this.copyRouter = null;
          if (error instanceof PgError && error.severity === 'ERROR') return this.refuse(error);
          throw error;
        }
      case 'copy-out': {
        try {
          const format = copyFormatFromOptions([...route.options], 'to');
          if (format.format === 'binary') throw new PgError({ code: SqlState.featureNotSupported, message: 'COPY TO in binary format of rows on several nodes is not supported', hint: 'use the text or CSV format' });
          const sql = deparseVerified(route.statement);
          if (sql === null) throw new PgError({ code: SqlState.featureNotSupported, message: 'this COPY cannot be written as SQL for the nodes', hint: 'copy the rows of a SELECT' });
          const outcome = await this.distributedRead({ node: route.statement, sql }, undefined, undefined, new CopyOutSink(this, format));
          if (!outcome.ok) return await this.failStatement(outcome.error);
        } catch (error) {
          if (error instanceof PgError && error.severity === 'ERROR') return this.failStatement(error);
          throw error;
        }
        this.write(serverMessages.readyForQuery(this.status));
        return;
      }
      case 'declare': {
        const error = await declareCursor(this.cursorHost(), route.name, route.options, route.statement);
        if (error) return this.failStatement(error);
        this.write(serverMessages.readyForQuery(this.status));
        return;
      }
      case 'prepare': {
        const prepared = this.sqlPrepared.has(route.name) ? new PgError({ code: '42P05', message: `prepared statement "${route.name}" already exists` }) : prepareSqlStatement(route.statement, route.argumentTypes);
        if (prepared instanceof PgError) return this.failStatement(prepared);
        this.sqlPrepared.set(route.name, prepared);
        this.write(serverMessages.commandComplete('PREPARE'));
        this.write(serverMessages.readyForQuery(this.status));
        return;
      }
      case 'select': {
        const statementClass = this.classify(statement.node);
        if (statementClass.kind === 'write') {
          return this.refuse(new PgError({
            code: SqlState.featureNotSupported,
            message: `table "${route.table}" is distributed: a SELECT that writes (${statementClass.reason}) cannot read rows of several nodes`,
            hint: 'call the function in a statement of its own',
          }));
        }
        return this.runDistributedRead(statement);
      }
      case 'explain': {
        if (route.route.kind === 'pinned') {
          let nodes: number[];
          try {
            nodes = await nodesOfKeys(route.route.rule, route.route.keys, { ...this.port, status: this.status });
          } catch (error) {
            if (error instanceof PgError && error.severity === 'ERROR') return this.refuse(error);
            throw error;
          }
          if (nodes.length === 1 && !route.analyze) {
            explainRouter(nodes, 'the distribution key is pinned to one node', this.readPort());
            this.write(serverMessages.readyForQuery(this.status));
            return;
          }
          if (nodes.length === 1) return this.runOnNodes([frame.raw], { kind: 'read', reason: 'pinned key' }, sql, undefined, false, [this.port.connectionFor(nodes[0])]);
          return this.runDistributedRead(explainedStatement(statement.sql, route.statement), nodes, { analyze: route.analyze });
        }
        return this.runDistributedRead(explainedStatement(statement.sql, route.statement), undefined, { analyze: route.analyze });
      }
      default: {
        const port: SessionPort = { ...this.port, status: this.status };
        let outcome;
        try {
          outcome = await runDistributedStatement(route, statement, port);
        } catch (error) {
          if (error instanceof PgError && error.severity === 'ERROR') return this.refuse(error);
          throw error;
        }
        if (outcome.kind === 'run') {
          return this.runOnNodes([frame.raw], outcome.write ? { kind: 'write', reason: 'rows on these nodes' } : { kind: 'read', reason: 'pinned key' }, sql, undefined, false, outcome.connections);
        }
        if (outcome.kind === 'read-nodes') return this.runDistributedRead(statement, outcome.nodes);
        this.status = outcome.status;
        for (const node of outcome.wroteOn) this.writtenNodes.add(node);
        await this.reconcileTransactions();
        this.write(serverMessages.readyForQuery(this.status));
      }
    }
  }

  /** Ends a statement the proxy answered with an error: inside a transaction block, the transaction fails. */
  private async failStatement(error: PgError): Promise<void> {
    if (this.status !== 'I') return this.refuse(error);
    this.write(serverMessages.errorResponse(error));
    this.write(serverMessages.readyForQuery(this.status));
  }

  private cursorHost(): CursorHost {
    return {
      status: this.status,
      portals: this.heldPortals,
      client: this,
      read: (statement, sink) => this.distributedRead(statement, undefined, undefined, sink),
      conversionConnection: () => this.evaluationConnection(),
      spoolMemoryLimit: this.context.config.mergeMemoryLimit,
      spoolFileLimit: this.context.config.intermediateResultLimit,
    };
  }

  /** What the proxy answers from what it holds: FETCH/MOVE/CLOSE of its cursors, PREPARE/EXECUTE/DEALLOCATE of its statements' names. */
  private heldStatementKind(node: Node): 'fetch' | 'close' | 'execute' | 'deallocate' | 'prepare' | null {
    if (fetchTarget(node, this.heldPortals)) return 'fetch';
    const prepare = (node as { PrepareStmt?: { name: string } }).PrepareStmt;
    if (prepare && this.sqlPrepared.has(prepare.name)) return 'prepare';
    if (closeTarget(node, this.heldPortals)) return 'close';
    const execute = (node as { ExecuteStmt?: { name: string } }).ExecuteStmt;
    if (execute && this.sqlPrepared.has(execute.name)) return 'execute';
    const deallocate = (node as { DeallocateStmt?: { name?: string; isall?: boolean } }).DeallocateStmt;
    if (deallocate && (deallocate.isall || this.sqlPrepared.has(deallocate.name ?? ''))) return 'deallocate';
    return null;
  }

  /** Runs a statement of heldStatementKind as a simple query; CLOSE ALL and DEALLOCATE ALL also reach the nodes. */
  private async runHeldStatement(node: Node, frame: Frame, sql: string): Promise<void> {
    try {
      switch (this.heldStatementKind(node)) {
        case 'fetch': {
          const error = await fetchFromCursor(this.cursorHost(), node, true);
          if (error) return await this.failStatement(error);
          break;
        }
        case 'close': {
          const target = closeTarget(node, this.heldPortals)!;
          if (target === '*') {
            this.heldPortals.closeAll();
            return await this.runOnNodes([frame.raw], { kind: 'read', reason: 'CLOSE ALL' }, sql, undefined, false, this.targets(true));
          }
          this.heldPortals.close(target);
          this.write(serverMessages.commandComplete('CLOSE CURSOR'));
          break;
        }
        case 'prepare': {
          const name = (node as unknown as { PrepareStmt: { name: string } }).PrepareStmt.name;
          return await this.failStatement(new PgError({ code: '42P05', message: `prepared statement "${name}" already exists` }));
        }
        case 'execute': {
          const name = (node as unknown as { ExecuteStmt: { name: string } }).ExecuteStmt.name;
          const statement = await executeSqlStatement(name, this.sqlPrepared.get(name)!, node, this.port.evaluate);
          return await this.runDistributedRead(statement);
        }
        default: {
          const deallocate = (node as unknown as { DeallocateStmt: { name?: string; isall?: boolean } }).DeallocateStmt;
          if (deallocate.isall) {
            this.sqlPrepared.clear();
            return await this.runOnNodes([frame.raw], { kind: 'write', reason: 'DEALLOCATE ALL' }, sql);
          }
          this.sqlPrepared.delete(deallocate.name!);
          this.write(serverMessages.commandComplete('DEALLOCATE'));
        }
      }
    } catch (error) {
      if (error instanceof PgError && error.severity === 'ERROR') return this.failStatement(error);
      throw error;
    }
    this.write(serverMessages.readyForQuery(this.status));
  }

  private temporaryCounter = 0;
  /** Connections of the session's own borrowed for one statement (broadcast sources): a cancel reaches them too. */
  private readonly sourceConnections = new Set<BackendConnection>();

  /** What a distributed read borrows from this session. */
  /** `outsideTransaction`: the read may run its own transactions outside the session's (see distributedRead). */
  private readPort(outsideTransaction = false): DistributedReadPort {
    const main = this.mainConnection();
    return {
      nodeCount: this.context.cluster.nodes.length,
      finalNode: main.node.id,
      broadcastRowLimit: this.context.config.broadcastJoinLimit,
      connectionFor: (node) => this.port.connectionFor(node),
      plannerConnection: () => this.mainConnection(),
      nodesOfKeys: (rule, keys) => nodesOfKeys(rule, keys, { ...this.port, status: this.status }),
      sink: this,
      textOrderIsBytewise: () => textOrderIsBytewise(this.catalog!, main),
      sourceConnection: async (node) => {
        const connection = await this.context.pool.acquire({
          node: this.context.cluster.nodes[node],
          parameters: this.parameters,
          secret: this.context.passwords?.get(this.parameters.get('user')!) ?? null,
          connectTimeoutMs: this.context.config.connectTimeout * 1000,
        });
        this.sourceConnections.add(connection);
        // The session may have changed how values read and print, where names resolve, who it is (SET TimeZone,
        // search_path, ROLE, ...): the borrowed connection follows (the settings were read before the read began).
        await connection.applySettings((await this.sessionSettings()).settings);
        return connection;
      },
      releaseSource: (connection) => {
        this.sourceConnections.delete(connection);
        void this.context.pool.release(connection);
      },
      temporaryName: (prefix) => `parapool_${prefix}_${this.id}_${++this.temporaryCounter}`,
      mergeMemoryLimit: this.context.config.mergeMemoryLimit,
      intermediateResultLimit: this.context.config.intermediateResultLimit,
      workerFragments: this.status === 'I' && !this.madeTemporaryObjects ? this.workerFragments() : undefined,
      outsideTransaction: outsideTransaction ? () => this.connectionsOutsideTransaction() : undefined,
    };
  }

  /** Read or write, with write_function_list and the volatile functions of the session's database. */
  private classify(node: Node): StatementClass {
    return classifyStatement(node, { writeFunctions: this.context.writeFunctions, volatileFunctions: this.catalog?.volatileFunctions });
  }

  /** What the open transaction did that keeps it from a two-phase commit. */
  private readonly prepareRefusals = new PrepareRefusals();

  /** Set once the open transaction ran a statement that changes data (see writesData). */
  private transactionWrote = false;

  /**
   * Set once the open transaction wrote rows of a distributed table: rows that only their node holds, so losing a
   * node it wrote on loses part of the transaction (a replicated write survives on the other nodes).
   */
  private wroteDistributedRows = false;

  /** Whether a statement changes data; BEGIN, SET and the like go to every node but change none. */
  private writesData(node: Node): boolean {
    if ('TransactionStmt' in node || 'VariableSetStmt' in node || 'VariableShowStmt' in node) return false;
    return this.classify(node).kind === 'write';
  }

  private async connectionsOutsideTransaction(): Promise<{ connectionFor(node: number): BackendConnection; release(): void }> {
    const port = this.readPort();
    const borrowed = new Map<number, BackendConnection>();
    const release = () => {
      for (const connection of borrowed.values()) port.releaseSource(connection);
    };
    try {
      for (const node of this.connections.keys()) borrowed.set(node, await port.sourceConnection(node));
    } catch (error) {
      release();
      throw error;
    }
    return {
      connectionFor: (node) => borrowed.get(node) ?? this.port.connectionFor(node),
      release,
    };
  }

  /** Set once the client created a temporary table, view or sequence, which only the session's connections see. */
  private madeTemporaryObjects = false;
  /** What else of this session lives in its node sessions only (nodeBoundSessionState), or null. */
  private nodeBoundState: string | null = null;

  private noteNodeBoundState(statements: readonly ParsedStatement[]): void {
    if (this.nodeBoundState !== null) return;
    for (const statement of statements) {
      const state = nodeBoundSessionState(statement.node);
      // A PREPARE or DECLARE of a read over several nodes is held by the proxy (sql-prepared-statements.ts, sql-cursors.ts).
      if (state === null || (this.catalog && routeDistributed(statement.node, this.catalog).kind !== 'none')) continue;
      this.nodeBoundState = state;
      return;
    }
  }

  /** Cancels of the running statement that reach past the session's own connections (worker threads'). */
  private readonly cancelHooks = new Set<() => void>();

  private workerFragments(): WorkerFragments {
    const user = this.parameters.get('user')!;
    return {
      startup: {
        nodes: this.context.cluster.nodes.map((node) => ({ id: node.id, host: node.host, port: node.port })),
        parameters: [...this.parameters],
        secret: this.context.passwords?.get(user) ?? null,
        connectTimeoutMs: this.context.config.connectTimeout * 1000,
      },
      settings: async () => (await this.sessionSettings()).settings,
      onCancel: (cancel) => {
        this.cancelHooks.add(cancel);
        return () => this.cancelHooks.delete(cancel);
      },
    };
  }

  /**
   * What this session SET (search_path, TimeZone, statement_timeout, role, ...), as the main node reports it; read
   * again after any statement that may have changed it. Read before a distributed read starts, while the main
   * node's connection is idle (later it may be copying rows).
   */
  private settingsRead: { epoch: number; settings: Promise<SessionSettings> } | null = null;
  private settingsEpoch = 0;

  private sessionSettings(): Promise<SessionSettings> {
    if (this.settingsRead?.epoch !== this.settingsEpoch) {
      // role and session_authorization are not listed in pg_settings; they go last, the role after the authorization.
      // The isolation level comes along (k = 3), for deciding where a read in a transaction block may run.
      const user = quoteLiteral(this.parameters.get('user') ?? '');
      const settings = this.mainConnection()
        .query(
          `SELECT k, name, setting FROM (SELECT 0 AS k, name, setting FROM pg_catalog.pg_settings WHERE source = 'session'
           UNION ALL SELECT 1, 'session_authorization', current_setting('session_authorization') WHERE current_setting('session_authorization') <> ${user}
           UNION ALL SELECT 2, 'role', current_setting('role') WHERE current_setting('role') <> 'none'
           UNION ALL SELECT 3, 'transaction_isolation', current_setting('transaction_isolation')) s ORDER BY k, name`,
        )
        .then(({ rows }) => ({
          settings: rows.filter(([k]) => k !== '3').map(([, name, value]): [string, string] => [name!, value ?? '']),
          isolation: rows.find(([k]) => k === '3')?.[2] ?? 'read committed',
        }));
      this.settingsRead = { epoch: this.settingsEpoch, settings };
      settings.catch(() => (this.settingsRead = null));
    }
    return this.settingsRead!.settings;
  }

  /**
   * A read over several nodes, through the distributed planner. A failure inside a transaction aborts it on
   * every node, as one server's failed statement aborts its transaction.
   */
  private async runDistributedRead(statement: { node: Node; sql: string }, nodes?: readonly number[], explain?: { analyze: boolean }): Promise<void> {
    const outcome = await this.distributedRead(statement, nodes, explain);
    if (!outcome.ok) {
      if (this.status !== 'I') return this.refuse(outcome.error);
      this.write(outcome.errorFrame ?? serverMessages.errorResponse(outcome.error));
    }
    this.write(serverMessages.readyForQuery(this.status));
  }

  /**
   * A read over several nodes, through the distributed planner, its frames written to `sink`. The caller ends a
   * failed read: inside a transaction, by aborting it on every node, as one server's failed statement aborts its
   * transaction.
   */
  private async distributedRead(statement: { node: Node; sql: string }, nodes?: readonly number[], explain?: { analyze: boolean }, sink: ClientSink = this): Promise<ReadOutcome> {
    if (statement.sql.toLowerCase().includes('set_config')) this.settingsEpoch++;
    try {
      const { isolation } = await this.sessionSettings(); // now, while the main node's connection is idle
      // READ COMMITTED takes a new snapshot per statement anyway: with nothing written yet and no temporary tables
      // (only the session's connections see those), a read outside the transaction sees what it would.
      const outsideTransaction = this.status === 'T' && !this.transactionWrote && !this.madeTemporaryObjects && isolation === 'read committed';
      const port = this.readPort(outsideTransaction);
      return await runDistributedRead(statement.node, statement.sql, this.catalog!, { ...port, sink }, { nodes, explain });
    } catch (error) {
      if (error instanceof PgError && error.severity === 'ERROR') return { ok: false, error, errorFrame: null };
      throw error;
    }
  }

  private async runRuleCommandStatement(command: Parameters<typeof runRuleCommand>[0]): Promise<void> {
    if (this.status !== 'I') {
      return this.refuse(new PgError({ code: '25001', message: `parapool.${command.name} cannot run inside a transaction block` }));
    }
    const connections = this.connectionsInNodeOrder();
    if (connections.length !== this.context.cluster.nodes.length) {
      return this.refuse(new PgError({ code: SqlState.objectNotInPrerequisiteState, message: 'a partition rule can change only while every node is in service', hint: 'SHOW pool_nodes lists the nodes that are down' }));
    }
    let result: string;
    try {
      result = await runRuleCommand(command, {
        database: this.parameters.get('database')!,
        connections,
        registry: this.context.catalogs,
        catalog: this.catalog!,
        progress: (message) => {
          log('info', 'rule_progress', { session: this.id, message });
          this.write(serverMessages.noticeResponse({ severity: 'NOTICE', code: '00000', message }));
        },
      });
    } catch (error) {
      if (!(error instanceof PgError) || error.severity !== 'ERROR') throw error;
      this.write(serverMessages.errorResponse(error));
      this.write(serverMessages.readyForQuery(this.status));
      return;
    }
    this.sessionCatalog!.use(await this.context.catalogs.forDatabase(this.parameters.get('database')!, connections));
    for (const bytes of [serverMessages.textRowDescription([command.name]), serverMessages.dataRow([result]), serverMessages.commandComplete('SELECT 1')]) this.write(bytes);
    this.write(serverMessages.readyForQuery('I'));
  }

  /** COPY FROM STDIN into a distributed table: every node runs the COPY, each row goes to its key's node. */
  private async copyIntoDistributed(route: Extract<DistributedRoute, { kind: 'copy-in' }>, statement: { node: Node; sql: string }): Promise<void> {
    const { rule } = route;
    const connections = Array.from({ length: rule.nodeCount }, (_, node) => this.port.connectionFor(node));
    const copy = (statement.node as { CopyStmt: { options?: unknown[] } }).CopyStmt;
    const format = copyFormatFromOptions(copy.options);
    const port: SessionPort = { ...this.port, status: this.status };
    const columns = route.columns ?? (await tableColumnNames(rule, port));
    const keyField = await keyPosition(rule, columns, port);
    const own = this.status === 'I';
    if (own) await beginEverywhere(connections);
    const rollback = async () => {
      if (own) await Promise.all(connections.map((c) => c.query('ROLLBACK').catch(() => undefined)));
    };
    const router = new CopyRouter(rule, format, keyField, columns, connections, port.evaluate);
    try {
      this.write(await router.start(statement.sql));
    } catch (error) {
      await rollback();
      if (error instanceof RelayedError) {
        this.write(error.frame);
        if (!own) this.status = 'E';
        await this.reconcileTransactions();
        this.write(serverMessages.readyForQuery(this.status));
        return;
      }
      throw error;
    }
    this.copyRouter = router;
    this.pump();
    const { replies, failure } = await router.finish();
    this.copyRouter = null;
    const failed = replies.find((r) => r.error);
    if (failure || failed) {
      await rollback();
      this.write(failure ? serverMessages.errorResponse(failure) : failed!.error!);
      if (!own) this.status = 'E';
      await this.reconcileTransactions();
      this.write(serverMessages.readyForQuery(this.status));
      return;
    }
    if (own) await commitEverywhere(connections);
    else for (const connection of connections) this.writtenNodes.add(connection.node.id);
    this.write(serverMessages.commandComplete(sumTags(replies.map((r) => r.tag ?? 'COPY 0'))));
    this.write(serverMessages.readyForQuery(this.status));
  }

  /**
   * COMMIT of a transaction that wrote rows of a distributed table on a node the session has lost since: that
   * node's part is gone (its backend rolled it back), so the rest must not commit. Rolls back on every node.
   */
  private async rollBackForLostNode(nodeId: number): Promise<void> {
    await Promise.all([...this.connections.values()].map((c) => c.query('ROLLBACK').catch(() => undefined)));
    this.writtenNodes.clear();
    this.status = 'I';
    this.heldPortals.endTransaction(false);
    this.write(serverMessages.errorResponse(new PgError({
      code: SqlState.transactionRollback,
      message: `the transaction was rolled back: it wrote rows on ${describeNode(this.context.cluster.nodes[nodeId])}, whose connection was lost before the commit`,
    })));
    await this.reconcileTransactions();
    this.write(serverMessages.readyForQuery('I'));
  }

  /**
   * COMMIT of a transaction that wrote on several nodes: prepare everywhere, record the decision, commit. An
   * extended-protocol COMMIT (`batch`, up to its Sync) is the decision itself: its messages run on the deciding
   * node, whose replies are the client's, so its statements and portals are kept as for any batch.
   */
  private async commitAcrossNodes(batch?: { messages: PendingMessage[]; terminator: Frame }): Promise<void> {
    // The main node decides (commits in one phase): a distributed read may have left its temporary tables in
    // that node's transaction, which PREPARE TRANSACTION would refuse.
    const main = this.mainConnection();
    const connections = this.connectionsInNodeOrder().filter((c) => c.txStatus === 'T').sort((a, b) => Number(b === main) - Number(a === main));
    let told = false; // whether the decider's own answer (COMMIT, ROLLBACK or its error) reached the client
    const decide = batch
      ? async (decider: BackendConnection) => {
          const dispatch = this.openDispatch([decider], true, true);
          dispatch.send(this.buildSends(batch.messages, dispatch.connections, batch.terminator, true));
          const result = await this.finishDispatch(dispatch, 'COMMIT', false);
          told = true;
          return result.leader.lost ? undefined : result.leader.outcomes.find((o) => o === 'COMMIT' || o === 'ROLLBACK' || o.startsWith('ERROR'));
        }
      : undefined;
    try {
      await commitEverywhere(connections, decide);
    } catch (error) {
      this.writtenNodes.clear();
      this.status = 'I';
      this.heldPortals.endTransaction(false);
      if (!(error instanceof PgError)) throw error;
      // N.B. a commit whose outcome is unknown is said so even when the decider's error was relayed already.
      if (!told || error.code === SqlState.transactionResolutionUnknown) this.write(serverMessages.errorResponse(error));
      await this.reconcileTransactions();
      this.write(serverMessages.readyForQuery('I'));
      return;
    }
    this.writtenNodes.clear();
    this.status = 'I';
    this.prepareRefusals.endTransaction();
    this.portals.clear();
    this.heldPortals.endTransaction(true);
    await this.sessionCatalog?.settle();
    if (!batch) this.write(serverMessages.commandComplete('COMMIT'));
    this.write(serverMessages.readyForQuery('I'));
  }

  /** A batch that only commits: one Bind, of COMMIT (or END), and nothing the proxy must refuse or answer. */
  private isCommitBatch(messages: PendingMessage[]): boolean {
    const binds = messages.filter((m) => m.frame.code === FrontendCode.bind);
    if (binds.length !== 1 || messages.some((m) => m.rejection)) return false;
    const index = messages.indexOf(binds[0]);
    return commitText.test(statementSql(this.statementBefore(messages, index, binds[0].statementName!)));
  }

  // ---- running on nodes ------------------------------------------------------------------------------------

  private mainConnection(): BackendConnection {
    const main = this.context.cluster.mainNode();
    const connection = (main && this.connections.get(main.id)) ?? this.connections.values().next().value;
    if (!connection) {
      throw new PgError({ severity: 'FATAL', code: SqlState.connectionFailure, message: 'no node of this session is in service', hint: 'SHOW pool_nodes lists the nodes and why they were detached' });
    }
    return connection;
  }

  private readConnection(): BackendConnection {
    const config = this.context.config;
    if (this.readNodeId === null || !this.connections.has(this.readNodeId) || (config.statementLevelLoadBalance && this.status === 'I')) {
      const candidate = config.loadBalanceMode ? this.context.chooseReadNode() : this.context.cluster.mainNode();
      this.readNodeId = candidate && this.connections.has(candidate.id) ? candidate.id : this.mainConnection().node.id;
    }
    return this.connections.get(this.readNodeId)!;
  }

  /** The leader first: the main node for writes, the session's read node for reads. */
  private targets(isWrite: boolean): BackendConnection[] {
    if (!isWrite) {
      const connection = this.readConnection();
      (this.context.cluster.nodes[connection.node.id] as BackendNode).selectCount++;
      return [connection];
    }
    const leader = this.mainConnection();
    return [leader, ...[...this.connections.values()].filter((c) => c !== leader)];
  }

  private openDispatch(targets: BackendConnection[], isWrite: boolean, extended: boolean, leaderFirst = true, retryable = false): ReplicatedDispatch {
    const [leader, ...others] = targets;
    // A statement that may run again asks whether the node serves only if it fails again (finishDispatch).
    const onLost = retryable ? () => undefined : (connection: BackendConnection, error: Error | null) => this.onNodeLost(connection, error);
    const dispatch = new ReplicatedDispatch(leader, others, this.relaySink, onLost, extended, leaderFirst);
    dispatch.holdLeadingFatal = retryable;
    this.dispatch = dispatch;
    this.dispatchIsWrite = isWrite;
    return dispatch;
  }

  /** Relays to the client, replacing the node's error for a refused statement with the proxy's own. */
  private readonly relaySink: ClientSink = {
    write: (bytes: Buffer) => {
      if (bytes[0] === 0x45 /* E */ && this.rejections.length > 0 && bytes.includes(rejectionMarker)) {
        return this.write(serverMessages.errorResponse(this.rejections.shift()!));
      }
      return this.write(bytes);
    },
    onceDrained: (callback) => this.onceDrained(callback),
    closed: false,
  };

  private async runOnNodes(frames: Buffer[], statementClass: StatementClass, sql: string, rejection?: PgError, copyIn = false, targets?: BackendConnection[], retry = true): Promise<void> {
    if (rejection) this.rejections.push(rejection);
    const isWrite = statementClass.kind === 'write';
    // A read outside a transaction has no effects: when its node had ended the connection before the read reached
    // it (nothing was relayed yet), it runs once more on a new connection.
    const retryable = retry && !isWrite && !copyIn && !rejection && !targets && this.status === 'I';
    // COPY FROM streams to every node at once: its data cannot wait for the leader to finish.
    const dispatch = this.openDispatch(targets ?? this.targets(isWrite), isWrite, false, !copyIn, retryable);
    if (this.context.config.logPerNodeStatement) {
      for (const connection of dispatch.connections) log('info', 'node_statement', { session: this.id, node: connection.node.id, sql });
    }
    dispatch.send(dispatch.connections.map((connection) => ({ connection, frames, injected: [], syncs: 1 })));
    if (retryable) {
      const result = await dispatch.done;
      if (result.leader.lost && dispatch.leaderRelayed === 0 && !this.closed) {
        this.dispatch = null;
        log('info', 'statement_retried', { session: this.id, node: result.leader.connection.node.id, reason: result.leader.connection.closeReason ?? result.leader.lost.message });
        if (!(await this.restoreBeforeStatement(() => false))) return;
        return this.runOnNodes(frames, statementClass, sql, undefined, false, undefined, false);
      }
    }
    await this.finishDispatch(dispatch, sql);
  }

  /**
   * Waits for every node, compares their outcomes, reconciles transaction states, then tells the client (unless
   * `ready` is false: more of the client's batch follows).
   */
  private async finishDispatch(dispatch: ReplicatedDispatch, sql = '', ready = true): Promise<DispatchResult> {
    const result = await dispatch.done;
    this.settingsEpoch++; // SET, RESET, DISCARD, set_config(), BEGIN ISOLATION LEVEL ...: read the settings again
    const wasWrite = this.dispatchIsWrite;
    this.dispatch = null;
    this.rejections = [];
    const lost = [result.leader, ...result.others].filter((state) => state.lost).map((state) => state.connection.node);
    const outOfService = await Promise.all(lost.map((node) => this.context.cluster.confirmLoss(node.id, `lost connection to ${describeNode(node)}`)));
    const stillServing = lost.filter((_, i) => !outOfService[i]);
    if (stillServing.length > 0) {
      // The node ended this session's backend but serves others (pg_terminate_backend, a protocol error it
      // saw): going on without it would let this session's writes miss a node that is in service.
      throw new PgError({
        severity: 'FATAL',
        code: SqlState.connectionFailure,
        message: `lost connection to ${describeNode(stillServing[0])} during the statement`,
        detail: 'The node is still in service, so the session ends rather than go on without it.',
      });
    }
    if (result.leader.lost) {
      const node = result.leader.connection.node;
      this.write(serverMessages.errorResponse(new PgError({ code: SqlState.connectionFailure, message: `lost connection to ${describeNode(node)} during the statement`, hint: 'the node was detached; the session continues on the other nodes' })));
      this.status = this.status === 'I' ? 'I' : 'E';
    } else {
      this.compareOutcomes(result, sql);
      this.status = result.status;
    }
    if (this.status === 'I') {
      this.prepareRefusals.endTransaction();
      this.portals.clear();
      this.heldPortals.endTransaction(!result.leader.outcomes.some((o) => o === 'ROLLBACK' || o.startsWith('ERROR')));
      this.writtenNodes.clear();
    } else if (wasWrite) {
      for (const connection of dispatch.connections) this.writtenNodes.add(connection.node.id);
    }
    await this.reconcileTransactions();
    // A connection that closed once the exchange was over is opened again before the next statement.
    if (this.connections.size === 0 && (this.lostConnections.size === 0 || this.status !== 'I')) {
      throw new PgError({ severity: 'FATAL', code: SqlState.connectionFailure, message: 'every node of this session was lost' });
    }
    // Before ReadyForQuery: the client's next statement, in any session, must see the views as they are now.
    await this.sessionCatalog?.settle();
    if (ready) this.write(serverMessages.readyForQuery(this.status));
    return result;
  }

  private compareOutcomes(result: DispatchResult, sql: string): void {
    const expected = result.leader.outcomes.join(', ');
    for (const other of result.others) {
      if (other.lost || other.skipped) continue;
      const actual = other.outcomes.join(', ');
      if (actual === expected) continue;
      const node = other.connection.node;
      this.context.cluster.detach(
        node.id,
        `${describeNode(node)} answered "${actual}" where ${describeNode(result.leader.connection.node)} answered "${expected}" to: ${sql.slice(0, 200)}`,
      );
    }
  }

  /** Makes every node's transaction state match what the client was told (aborted where the leader aborted). */
  private async reconcileTransactions(): Promise<void> {
    for (const connection of [...this.connections.values()]) {
      if (connection.txStatus === this.status) continue;
      if (this.status === 'E' && connection.txStatus === 'T') {
        await connection.query(abortMarker).catch(() => undefined);
      } else if (this.status === 'I') {
        await connection.query('ROLLBACK').catch(() => undefined);
      } else {
        this.context.cluster.detach(connection.node.id, `${describeNode(connection.node)} is in transaction state ${connection.txStatus} where the session is in ${this.status}`);
      }
    }
  }

  private onNodeLost(connection: BackendConnection, error: Error | null): void {
    void this.context.cluster.confirmLoss(connection.node.id, `lost connection to ${describeNode(connection.node)}${error ? `: ${error.message}` : ''}`);
  }

  /**
   * A node connection ended (the node restarted, an administrator terminated it, idle_session_timeout): it is
   * remembered, to be opened again before the next statement. No probe of the node runs now: a node that
   * restarts is often still down at this moment, and detaching it would outlast its restart; whether it
   * serves is asked when the session needs it again (restoreBeforeStatement) or by an exchange it broke.
   */
  private readonly onConnectionClosed = (): void => {
    for (const [nodeId, connection] of this.connections) {
      if (!connection.closed) continue;
      this.connections.delete(nodeId);
      if (this.readNodeId === nodeId) this.readNodeId = null;
      if (this.closed) continue;
      this.lostConnections.set(nodeId, { connection });
      log('info', 'node_connection_closed', { session: this.id, node: nodeId, reason: connection.closeReason ?? 'connection closed' });
    }
  };

  /**
   * Before a statement: finds the connections that no longer work (closed, or idle for a while and not answering a
   * round trip) and opens them again, with the session's settings. Inside a transaction a lost connection fails the
   * transaction on every node (the new connection joins it failed) and the statement is answered with 08006,
   * unless `goOn` says it rolls the transaction back (or the nodes will fail it themselves). Returns false when the
   * session answered the statement itself; throws a FATAL error when the session cannot go on.
   */
  private async restoreBeforeStatement(goOn: () => boolean): Promise<boolean> {
    // Lets the close of a connection that the node ended in the same turn as the client's message be seen first.
    await new Promise<void>((resolvePromise) => setImmediate(resolvePromise));
    if (this.status === 'I' && this.lostConnections.size === 0) {
      await Promise.all([...this.connections.values()].map((connection) => connection.checkAlive(liveCheckAfterMs)));
    }
    for (const nodeId of [...this.lostConnections.keys()]) {
      if (this.context.cluster.nodes[nodeId]?.status !== 'up') this.lostConnections.delete(nodeId);
    }
    if (this.lostConnections.size === 0 || this.closed) return true;
    const lost = [...this.lostConnections.entries()];
    const node = this.context.cluster.nodes[lost[0][0]];
    if (this.status === 'I') {
      const failure = await this.reconnect(lost.map(([id]) => id));
      if (!failure) return true;
      // With no connection left the session cannot go on (its database was dropped, say): it ends, as on a node.
      if (this.connections.size === 0) throw new PgError({ severity: 'FATAL', code: failure.code, message: failure.message, detail: failure.detail, hint: failure.hint });
      this.write(serverMessages.errorResponse(failure));
      this.write(serverMessages.readyForQuery(this.status));
      return false;
    }
    // Inside a transaction: its work on that node is gone, so it fails everywhere, as one server's would.
    const reason = lost[0][1].connection.closeReason;
    await this.reconnect(lost.map(([id]) => id), true);
    this.status = 'E';
    await this.reconcileTransactions();
    if (this.connections.size === 0) {
      throw new PgError({ severity: 'FATAL', code: SqlState.connectionFailure, message: 'every node of this session was lost' });
    }
    if (goOn()) return true;
    this.write(serverMessages.errorResponse(new PgError({
      code: SqlState.connectionFailure,
      message: `lost connection to ${describeNode(node)} inside the transaction${reason ? `: ${reason}` : ''}`,
      detail: 'The transaction was rolled back on that node, so it is aborted on every node.',
      hint: 'Roll back, then run the transaction again.',
    })));
    this.write(serverMessages.readyForQuery(this.status));
    return false;
  }

  /**
   * Opens new connections to the nodes whose connections were lost and gives them the session's settings (read from
   * a connection still open when there is one, else those the lost connection reported); `inTransaction` opens a
   * transaction on each, to be failed with the others. A node that cannot be reached is detached when a probe finds
   * it no longer serving. Returns the error that keeps a node out of this session for now, if any.
   */
  private async reconnect(nodeIds: readonly number[], inTransaction = false): Promise<PgError | null> {
    const boundState = this.madeTemporaryObjects ? 'temporary objects' : this.nodeBoundState;
    if (boundState !== null) {
      // A new connection would lack them without a word: the session ends instead, as it would on one server.
      throw new PgError({
        severity: 'FATAL',
        code: SqlState.connectionFailure,
        message: `lost connection to ${describeNode(this.context.cluster.nodes[nodeIds[0]])}: the session's ${boundState} went with it`,
      });
    }
    const user = this.parameters.get('user')!;
    const secret = this.context.passwords?.get(user) ?? null;
    let settings: readonly (readonly [string, string])[] | null = null;
    if (this.connections.size > 0 && this.status !== 'E') settings = await this.sessionSettings().then((s) => s.settings, () => null);
    const results = await Promise.allSettled(
      nodeIds.map((id) => this.context.pool.acquire({ node: this.context.cluster.nodes[id], parameters: this.parameters, secret, connectTimeoutMs: this.context.config.connectTimeout * 1000 })),
    );
    let failure: PgError | null = null;
    for (const [index, result] of results.entries()) {
      const nodeId = nodeIds[index];
      const node = this.context.cluster.nodes[nodeId];
      const lost = this.lostConnections.get(nodeId)!.connection;
      if (result.status === 'rejected') {
        const error = result.reason;
        if (error instanceof BackendStartupError && error.unreachable && (await this.context.cluster.confirmLoss(nodeId, error.message))) {
          this.lostConnections.delete(nodeId); // detached: the session goes on without it
          continue;
        }
        failure ??= new PgError({
          code: error instanceof PgError ? error.code : SqlState.connectionFailure,
          message: `could not connect to ${describeNode(node)} again: ${(error as Error).message}`,
          hint: 'the connection of this session to that node was closed by the node',
        });
        continue;
      }
      const connection = result.value;
      try {
        if (this.closed || this.context.cluster.nodes[nodeId].status !== 'up') throw new Error('no longer needed');
        await connection.applySettings(settings ?? reportedSettings(lost, connection));
        if (inTransaction) await connection.query('BEGIN');
      } catch (error) {
        void this.context.pool.release(connection);
        if (this.closed || this.context.cluster.nodes[nodeId].status !== 'up') continue;
        failure ??= error instanceof PgError ? new PgError({ code: error.code, message: error.message, detail: error.detail, hint: error.hint }) : new PgError({ code: SqlState.connectionFailure, message: (error as Error).message });
        continue;
      }
      this.lostConnections.delete(nodeId);
      this.connections.set(nodeId, connection);
      connection.onClose(this.onConnectionClosed);
      log('info', 'node_reconnected', { session: this.id, node: nodeId });
    }
    this.settingsEpoch++;
    return failure;
  }

  /** Closes the proxy's idle connections to a database about to be dropped, the worker threads' too (pgpool-II's way). */
  private async releaseDatabase(database: string | null): Promise<void> {
    if (database === null) return;
    const closed = this.context.pool.dropDatabase(database);
    await closeWorkerConnections(database);
    log('info', 'pool_database_released', { session: this.id, database, closed });
  }

  private dropNode(nodeId: number): void {
    const connection = this.connections.get(nodeId);
    if (!connection) return;
    this.connections.delete(nodeId);
    if (this.readNodeId === nodeId) this.readNodeId = null;
    connection.destroy();
  }

  /** A CancelRequest for this session: cancel whatever its nodes are running. */
  cancel(): void {
    for (const connection of [...this.connections.values(), ...this.sourceConnections]) {
      if (connection.busy) void sendCancel(connection.node, connection.processId, connection.secretKey);
    }
    for (const cancel of this.cancelHooks) cancel();
  }

  // ---- ending ---------------------------------------------------------------------------------------------

  private fail(error: unknown): void {
    if (this.closed) return;
    const pgError =
      error instanceof PgError ? error : new PgError({ severity: 'FATAL', code: SqlState.internalError, message: `internal error: ${(error as Error)?.message ?? String(error)}` });
    if (!(error instanceof PgError)) log('error', 'session_internal_error', { session: this.id, error: (error as Error)?.stack ?? String(error) });
    else log(pgError.code === SqlState.protocolViolation ? 'warning' : 'info', 'session_error', { session: this.id, code: pgError.code, message: pgError.message });
    const fatal = pgError.severity === 'FATAL' ? pgError : new PgError({ severity: 'FATAL', code: pgError.code, message: pgError.message, detail: pgError.detail, hint: pgError.hint });
    const frame = error instanceof BackendStartupError && error.frame ? error.frame : serverMessages.errorResponse(fatal);
    this.socket.end(frame);
    this.close(pgError.message);
  }

  close(reason: string, logIt = true): void {
    if (this.closed) return;
    this.closed = true;
    if (this.startupTimer) clearTimeout(this.startupTimer);
    this.context.cluster.off('detach', this.onDetach);
    this.context.unregister(this);
    this.passwordWaiter = null;
    this.heldPortals.closeAll();
    for (const cancel of this.cancelHooks) cancel();
    if (!this.socket.destroyed) this.socket.end();
    const busy = this.dispatch !== null;
    for (const connection of this.connections.values()) {
      connection.removeCloseListener(this.onConnectionClosed);
      // A connection in the middle of an exchange cannot be reused: the node's statement is cancelled (a node
      // notices a closed socket only when it next writes) and closing the connection rolls its transaction back.
      if (busy || connection.busy) {
        if (connection.busy) void sendCancel(connection.node, connection.processId, connection.secretKey);
        connection.destroy();
      }
      else void this.context.pool.release(connection);
    }
    this.connections.clear();
    this.lostConnections.clear();
    if (this.sideConnection) void this.context.pool.release(this.sideConnection);
    if (logIt && this.context.config.logDisconnections && this.phase === 'ready') {
      log('info', 'session_end', { session: this.id, client: this.remote, reason });
    }
  }
}

/** The database a DROP DATABASE names; null for any other statement. */
function droppedDatabase(node: Node): string | null {
  return (node as { DropdbStmt?: { dbname?: string } }).DropdbStmt?.dbname ?? null;
}

/**
 * ROLLBACK (or ABORT) of the whole transaction. N.B. not COMMIT: a failed transaction's COMMIT answers ROLLBACK
 * without an error, and a client that saw no error would take it for a commit.
 */
function isRollback(node: Node): boolean {
  return (node as { TransactionStmt?: { kind: string } }).TransactionStmt?.kind === 'TRANS_STMT_ROLLBACK';
}

/** The same, for a prepared statement's text. */
const rollbackText = /^\s*(rollback|abort)\b(?!\s+(to|prepared)\b)/i;

/** COMMIT (or END) of the transaction as a prepared statement's text; not COMMIT PREPARED. */
const commitText = /^\s*(commit|end)(\s+(work|transaction))?(\s+and\s+no\s+chain)?\s*;?\s*$/i;

function statementSql(statement: PreparedStatement | undefined): string {
  return statement ? decodeParse(statement.parseFrame.subarray(5)).sql : '';
}

/**
 * Settings a lost connection reported (ParameterStatus) that a new one lacks: what a session whose every
 * connection was lost can still take along. Others set with SET are not reported by the node, and are lost.
 */
function reportedSettings(lost: BackendConnection, replacement: BackendConnection): [string, string][] {
  const settable = ['application_name', 'client_encoding', 'DateStyle', 'IntervalStyle', 'TimeZone', 'standard_conforming_strings', 'search_path', 'default_transaction_read_only'];
  const out: [string, string][] = [];
  for (const name of settable) {
    const value = lost.parameters.get(name);
    if (value !== undefined && value !== replacement.parameters.get(name)) out.push([name, value]);
  }
  return out;
}

/** Whether a statement so routed changes rows of a distributed table. */
function writesDistributedRows(route: DistributedRoute | null | undefined): boolean {
  if (!route) return false;
  switch (route.kind) {
    case 'pinned':
      return route.write;
    case 'all-nodes':
    case 'insert-values':
    case 'insert-select':
    case 'copy-in':
      return true;
    default:
      return false;
  }
}

function isCommit(node: Node): boolean {
  const kind = (node as { TransactionStmt?: { kind: string } }).TransactionStmt?.kind;
  return kind === 'TRANS_STMT_COMMIT';
}

function negotiateProtocolVersion(unsupported: string[]): Buffer {
  const names = Buffer.concat(unsupported.map((n) => Buffer.from(n + '\0')));
  const out = Buffer.alloc(13 + names.length);
  out[0] = 0x76; // v
  out.writeInt32BE(12 + names.length, 1);
  out.writeInt32BE(196608, 5); // newest minor version supported: 3.0
  out.writeInt32BE(unsupported.length, 9);
  names.copy(out, 13);
  return out;
}

/** Settings a node reports (ParameterStatus) that change how values are read or printed. */

/** The statement an EXPLAIN explains, with its own text (the EXPLAIN keywords and options cut off). */
function explainedStatement(sql: string, node: Node): { node: Node; sql: string } {
  const prefix = /^\s*explain\s*(\([^)]*\)\s*|analy[sz]e\s+|verbose\s+)*/i.exec(sql);
  return { node, sql: sql.slice(prefix ? prefix[0].length : 0) };
}
