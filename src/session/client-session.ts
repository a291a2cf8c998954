// One client connection: start-up, authentication, then every message the client sends, in order. Reads go to
// one node (chosen by backend_weight), writes to every node in service; extended-protocol messages are batched
// up to Flush or Sync so that a batch runs on one set of nodes, and prepared statements are re-created lazily on
// a node that has not seen them. The session never lets two nodes drift apart silently: differing results
// detach a node, and a transaction aborted on one node is aborted on the others before the client continues.
// A connection the node ends between statements (a restart, pg_terminate_backend, idle_session_timeout) is opened
// again before the next statement outside a transaction; inside one, the transaction fails with 08006.
//
// This file holds the session's state machine: start-up and authentication (session-startup.ts), then idle ('I'),
// in a transaction ('T') or in a failed one ('E'), as the nodes' ReadyForQuery reports it; the message loop
// (onData, pump, handle) and the simple-query path. The parts it builds on are layers below it, each over the
// one before: session-state.ts (the state), session-connections.ts, session-dispatch.ts, session-distributed.ts,
// session-extended.ts and session-startup.ts.

import type { Node } from '@pgsql/types';
import { type Socket } from 'node:net';
import { log } from '../log';
import { nodeTag, parseSql, type ParsedStatement, type ParseOutcome } from '../planner/sql-parser';
import { commandKind, connectionPinningState, createsTemporaryObject, mayChangeDefinitions, nodeBoundSessionState, type StatementClass } from '../planner/statement-classifier';
import { blankNumericLiterals, statementShape } from '../planner/numeric-literals';
import { verifyRelayProfiles, type RelayProfile } from './relay-profiles';
import { sequencesAdvanced } from '../planner/sequence-use';
import { RunningStatement, type CommandKind } from '../cluster/statement-activity';
import { answerAdminCommand } from '../admin/show-commands';
import { parseNodeCommand, runNodeCommand, type NodeCommand } from '../admin/node-commands';
import { routeDistributed } from '../planner/distributed-router';
import { serialize } from 'pg-protocol';
import { BackendStartupError, sendCancel } from '../backend/backend-connection';
import { PgError, SqlState, protocolViolation } from '../protocol/errors';
import { type Frame } from '../protocol/frame-reader';
import { decodeEmpty, decodeQuery } from '../protocol/frontend-messages';
import { FrontendCode } from '../protocol/message-codes';
import { serverMessages } from '../protocol/server-messages';
import { type SessionContext } from './session-state';
import { readClass, droppedDatabase, isRollback, writesDistributedRows, isCommit, statementSql } from './session-statements';
import { type PendingMessage } from './pending-message';
import { SessionStartup } from './session-startup';
import { holdCacheUntilEnded, type SessionCacheUse } from './session-cache-use';


/**
 * Statements whose relay decision a profile may keep (relay-profiles.ts): reads and writes of rows, SET and SHOW,
 * calls. Transaction control, cursors and prepared statements (which the proxy may hold), COPY, and DDL are parsed
 * every time.
 */
const relayShapes = new Set(['SelectStmt', 'InsertStmt', 'UpdateStmt', 'DeleteStmt', 'VariableSetStmt', 'VariableShowStmt', 'CallStmt']);

export type { ServedSession, SessionContext } from './session-state';
export { rejectionMarker } from './session-statements';

export class ClientSession extends SessionStartup {
  constructor(socket: Socket, context: SessionContext) {
    super(socket, context);
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

  // ---- input ----------------------------------------------------------------------------------------------

  protected override onData(chunk: Buffer): void {
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

  // ---- message loop ---------------------------------------------------------------------------------------

  /** Handles queued client messages in order, one step at a time, until one must wait for the nodes. */
  /** Where the client's COPY data goes while a COPY FROM STDIN runs. */
  protected activeCopy(): { copyIn: boolean; forwardCopy(frame: Frame): boolean; onceDrained(callback: () => void): void } | null {
    return this.copyRouter ?? this.dispatch;
  }

  protected override pump(): void {
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
    this.parkIfIdle();
  }

  protected forwardCopyData(): void {
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

  /** Returns a promise when the message started work that the next message must wait for. */
  protected handle(frame: Frame): Promise<void> | null {
    const startsWork = frame.code === FrontendCode.query || frame.code === FrontendCode.sync || frame.code === FrontendCode.flush || frame.code === FrontendCode.functionCall;
    if (startsWork && this.context.gate.closed && this.status === 'I' && this.dispatch === null) {
      this.atGate = true;
      return this.context.gate.pass().then(() => {
        this.atGate = false;
        if (!this.closed) return this.handle(frame) ?? undefined;
      });
    }
    if (startsWork) this.cacheUse?.startWork();
    switch (frame.code) {
      case FrontendCode.query:
        return this.tracked(() => decodeQuery(frame.payload), () => this.simpleQuery(frame));
      case FrontendCode.parse:
      case FrontendCode.bind:
      case FrontendCode.describe:
      case FrontendCode.execute:
      case FrontendCode.close:
        this.pending.push(this.decodeExtended(frame));
        return null;
      case FrontendCode.flush: {
        decodeEmpty(frame.payload, 'Flush');
        const batch = this.pending;
        return this.tracked(() => this.batchSql(batch), () => this.sendExtended(frame, false), () => this.batchKinds(batch));
      }
      case FrontendCode.sync: {
        decodeEmpty(frame.payload, 'Sync');
        const batch = this.pending;
        return this.tracked(() => this.batchSql(batch), () => this.sendExtended(frame, true), () => this.batchKinds(batch));
      }
      case FrontendCode.functionCall:
        return this.tracked(
          () => 'function call',
          () => this.restoreBeforeStatement(() => false).then((goOn) => (goOn ? this.runOnNodes([frame.raw], { kind: 'write', reason: 'function call' }, 'function call') : undefined)),
          () => ['other'],
        );
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

  // ---- what SHOW parapool_queries and pool_backend_stats see ------------------------------------------------

  /**
   * Runs a step that sends work to the nodes as the session's running statement; it ends with the exchange (an
   * extended batch's Flush keeps it running until its Sync), and its kinds are counted on the nodes it ran on.
   */
  protected tracked(text: () => string, step: () => Promise<void>, kinds?: () => readonly CommandKind[]): Promise<void> {
    if (!this.running) {
      this.running = new RunningStatement(this.processId, text, []);
      this.context.statements.start(this.running);
    }
    return step()
      .finally(() => this.endTrackedStep(kinds))
      .then(() => this.cacheUse?.afterStep())
      .then(() => this.heldReadyForQuery ?? this.cacheUse?.release ?? undefined);
  }

  private endTrackedStep(kinds?: () => readonly CommandKind[]): void {
    if (this.dispatch === null) this.cacheUse?.endStatement();
    const statement = this.running;
    if (!statement || this.dispatch !== null) return;
    this.running = null;
    this.idleSince = new Date();
    if (kinds) statement.kinds = kinds();
    this.context.statements.end(statement, (nodeId) => this.context.cluster.nodes[nodeId]?.stats);
  }

  /** The text of an extended batch's first statement, for SHOW parapool_queries. */
  protected batchSql(batch: readonly PendingMessage[]): string {
    const index = batch.findIndex((m) => m.frame.code === FrontendCode.bind || m.frame.code === FrontendCode.parse);
    if (index < 0) return '';
    const message = batch[index];
    return statementSql(message.statement ?? this.statementBefore(batch, index, message.statementName ?? ''));
  }

  /** What the Executes of a batch ran, as pgpool-II counts statements. */
  protected batchKinds(batch: readonly PendingMessage[]): CommandKind[] {
    const kinds: CommandKind[] = [];
    for (let i = 0; i < batch.length; i++) {
      if (batch[i].frame.code !== FrontendCode.execute) continue;
      let bind = i - 1;
      while (bind >= 0 && !(batch[bind].frame.code === FrontendCode.bind && batch[bind].portal === batch[i].portal)) bind--;
      const statement = bind >= 0 ? this.statementBefore(batch, bind, batch[bind].statementName ?? '') : undefined;
      kinds.push(...(statement?.kinds ?? [batch[i].statementClass.kind === 'read' ? 'select' : 'other']));
    }
    return kinds;
  }

  // ---- simple query protocol -------------------------------------------------------------------------------

  protected async simpleQuery(frame: Frame): Promise<void> {
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
    if (this.cacheUse) return this.simpleQueryWithCache(frame, sql, this.cacheUse);
    const profiles = this.context.relayProfiles;
    const key = profiles && !this.madeTemporaryObjects && !this.prepareRefusals.knowsTemporaryNames ? blankNumericLiterals(sql) : null;
    const profile = key === null ? null : profiles!.get(key, this.catalog);
    if (profile) return this.relayByProfile(frame, sql, profile);
    const parsed = parseSql(sql);
    if (!(await this.restoreBeforeStatement(() => parsed.ok && parsed.statements.length === 1 && isRollback(parsed.statements[0].node)))) return;
    await this.simpleQueryParsed(frame, sql, parsed, key);
  }

  /**
   * memory_cache_enabled: a hit is answered before any parse; a cacheable read's reply is kept as it is written.
   * Every statement is parsed (no relay profiles), since what it may change decides whether the cache empties.
   */
  protected async simpleQueryWithCache(frame: Frame, sql: string, cacheUse: SessionCacheUse): Promise<void> {
    const outsideTransaction = this.status === 'I' && !this.madeTemporaryObjects && !this.prepareRefusals.knowsTemporaryNames;
    if (outsideTransaction) {
      const reply = await cacheUse.lookup(sql);
      if (reply) {
        if (this.running) this.running.kinds = ['select'];
        this.write(reply);
        this.write(serverMessages.readyForQuery('I'));
        return;
      }
    }
    const parsed = parseSql(sql);
    const decision = parsed.ok ? await cacheUse.decide(sql, parsed.statements, outsideTransaction) : null;
    try {
      if (!(await this.restoreBeforeStatement(() => parsed.ok && parsed.statements.length === 1 && isRollback(parsed.statements[0].node)))) return;
      await this.simpleQueryParsed(frame, sql, parsed, null);
    } finally {
      if (decision?.kind === 'store') cacheUse.finishRead(this.status);
    }
  }

  /**
   * A statement of a shape relayed before (see relay-profiles.ts): what the parse decided then holds now, unless the
   * catalog changed meanwhile (another session's rule change), which sends it down the parsing path.
   */
  protected async relayByProfile(frame: Frame, sql: string, profile: RelayProfile): Promise<void> {
    if (!(await this.restoreBeforeStatement(() => false))) return;
    this.sessionCatalog?.beforeStatement(sql, false);
    if (this.catalog !== profile.catalog) return this.simpleQueryParsed(frame, sql, parseSql(sql), null);
    if (verifyRelayProfiles) {
      const parsed = parseSql(sql);
      if (!parsed.ok || statementShape(parsed.statements) !== profile.shape) throw new Error(`relay profile of another shape used for: ${sql}`);
    }
    for (const connection of this.connections.values()) connection.preparedStatements.delete('');
    if (this.running) this.running.kinds = profile.kinds;
    this.forgetEndedTransaction();
    if (profile.writesData) this.transactionWrote = true;
    if (this.nodeBoundState === null) this.nodeBoundState = profile.nodeBoundState;
    this.pinningState ??= profile.pinningState;
    this.prepareRefusals.reason ??= profile.prepareRefusal;
    return this.runOnNodes([frame.raw], profile.statementClass, sql);
  }

  protected async simpleQueryParsed(frame: Frame, sql: string, parsed: ParseOutcome, key: string | null): Promise<void> {
    for (const connection of this.connections.values()) connection.preparedStatements.delete('');
    if (parsed.ok) for (const statement of parsed.statements) await this.releaseDatabase(droppedDatabase(statement.node));
    if (!parsed.ok) return this.runOnNodes([frame.raw], { kind: 'write', reason: 'unparsable statement: every node reports the error' }, sql);
    if (this.running) this.running.kinds = parsed.statements.map((st) => commandKind(st.node));
    this.sessionCatalog?.beforeStatement(sql, parsed.statements.some((st) => mayChangeDefinitions(st.node)));
    this.forgetEndedTransaction();
    if (parsed.statements.some((st) => this.writesData(st.node))) this.transactionWrote = true;
    if (sql.toLowerCase().includes('temp') && parsed.statements.some((st) => createsTemporaryObject(st.node))) this.madeTemporaryObjects = true;
    this.noteNodeBoundState(parsed.statements);
    for (const statement of parsed.statements) this.prepareRefusals.note(statement.node);
    await this.simpleQueryOnNodes(frame, sql, parsed.statements, key);
  }

  /** Remembers what was decided about statements relayed as they came, when nothing of it can depend on a number. */
  protected rememberRelay(key: string | null, statements: readonly ParsedStatement[], statementClass: StatementClass): void {
    if (key === null || !this.context.relayProfiles || this.madeTemporaryObjects || this.prepareRefusals.knowsTemporaryNames) return;
    for (const statement of statements) {
      const node = statement.node;
      if (!relayShapes.has(nodeTag(node)) || mayChangeDefinitions(node) || createsTemporaryObject(node) || droppedDatabase(node) !== null) return;
    }
    const firstNodeBound = statements.map((st) => nodeBoundSessionState(st.node)).find((state) => state !== null) ?? null;
    this.context.relayProfiles.set(key, {
      catalog: this.catalog,
      statementClass,
      kinds: statements.map((st) => commandKind(st.node)),
      writesData: statements.some((st) => this.writesData(st.node)),
      nodeBoundState: firstNodeBound,
      pinningState: statements.map((st) => connectionPinningState(st.node)).find((state) => state !== null) ?? null,
      prepareRefusal: statements.map((st) => this.prepareRefusals.inspect(st.node)).find((reason) => reason !== null) ?? null,
      shape: verifyRelayProfiles ? statementShape(statements) : undefined,
    });
  }

  /**
   * Why a Query sent before the Sync of pending extended-protocol messages cannot be relayed as part of their
   * exchange: it is relayed as it is, so anything the proxy plans, answers or tracks itself must not be in it.
   */
  protected whyNotInPendingExchange(statements: ParsedStatement[]): string | null {
    for (const statement of statements) {
      const node = statement.node;
      if (this.classify(node).kind === 'admin' || isNodeCommand(node)) return 'the proxy answers it';
      if (this.determinism(node).kind !== 'deterministic') return 'it calls a function whose result differs per node';
      if (this.catalog && routeDistributed(node, this.catalog).kind !== 'none') return 'it names a distributed table or a parapool function';
      if (this.heldStatementKind(node)) return 'it names a cursor or prepared statement the proxy holds';
      if (isCommit(node) && this.status === 'T' && ((this.transactionWrote && this.writtenNodes.size > 1) || this.wroteDistributedRows)) return 'a COMMIT of writes on several nodes commits in two phases';
      if (droppedDatabase(node) !== null) return 'a DROP DATABASE first closes pooled connections';
      if (createsTemporaryObject(node)) return 'it creates a temporary object';
      if (this.connections.size > 1 && sequencesAdvanced([node], this.catalog).length > 0) return 'it may advance a sequence, which takes the insert lock';
    }
    return null;
  }

  protected async simpleQueryOnNodes(frame: Frame, sql: string, statements: ParsedStatement[], key: string | null = null): Promise<void> {
    const parsed = { statements };
    let nodeCommand: NodeCommand | null = null;
    try {
      for (const statement of statements) nodeCommand ??= parseNodeCommand(statement.node);
    } catch (error) {
      if (error instanceof PgError) return this.failStatement(error);
      throw error;
    }
    if (nodeCommand) return this.runNodeCommandStatement(nodeCommand, statements.length);
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
      let reply: Buffer[];
      try {
        reply = await answerAdminCommand(admin.command, this.context, {
          catalog: this.catalog,
          queryNode: (nodeId, sql) => this.connections.get(nodeId)?.query(sql).then((r) => r.rows) ?? null,
        });
      } catch (error) {
        if (error instanceof PgError && error.severity === 'ERROR') return this.failStatement(error);
        throw error;
      }
      for (const bytes of reply) this.write(bytes);
      this.write(serverMessages.readyForQuery(this.status));
      return;
    }
    const isWrite = classes.some((c) => c.kind === 'write');
    // A write that changes data decides where a query with BEGIN or SET beside it goes (streaming: the primary).
    const statementClass = isWrite ? classes.find((c) => c.kind === 'write' && !c.everyServer) ?? classes.find((c) => c.kind === 'write')! : classes[0] ?? readClass;
    if (!isWrite) {
      this.rememberRelay(key, statements, statementClass);
      return this.runOnNodes([frame.raw], statementClass, sql);
    }
    let rewritten = false;
    const texts: string[] = [];
    for (const statement of parsed.statements) {
      const prepared = (statement.node as { PrepareStmt?: { query: Node } }).PrepareStmt?.query;
      if (prepared && (this.determinism(prepared).kind !== 'deterministic' || this.needsColumnDefaults(prepared))) {
        // Each node would evaluate the function or default itself at every EXECUTE.
        return this.refuse(new PgError({
          code: SqlState.featureNotSupported,
          message: 'a PREPAREd write that calls a time or per-node function, or leaves such a column default to the nodes, would give each node its own value',
          hint: 'prepare it through the extended protocol (the proxy evaluates such values at each execution), or pass the values as parameters',
        }));
      }
      const check = this.determinism(statement.node);
      if (check.kind === 'rejected') return this.refuse(check.error);
      if (check.kind === 'time' || this.needsColumnDefaults(statement.node)) {
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
    const sequences = sequencesAdvanced(statements.map((s) => s.node), this.catalog);
    const notLocked = await this.lockSequences(sequences, this.connections.size);
    if (notLocked) return this.refuse(notLocked);
    if (!rewritten && !copyIn && sequences.length === 0) this.rememberRelay(key, statements, statementClass);
    return this.runOnNodes([bytes], statementClass, sql, undefined, copyIn);
  }

  /**
   * SELECT parapool.attach_node(N), detach_node(N) or recover_node(N): alone in its query, outside a transaction block (it is not
   * undone by a rollback), and for superusers only, as the session's role is on the main node.
   */
  protected async runNodeCommandStatement(command: NodeCommand, statementCount: number): Promise<void> {
    const call = `parapool.${command.name}`;
    if (statementCount > 1) return this.failStatement(new PgError({ code: SqlState.featureNotSupported, message: `${call} must be sent alone, not with other statements in one query` }));
    if (this.status !== 'I') return this.refuse(new PgError({ code: '25001', message: `${call} cannot run inside a transaction block` }));
    const rows = await this.port.evaluate("SELECT pg_catalog.current_setting('is_superuser')");
    if (rows[0]?.[0] !== 'on') {
      return this.failStatement(new PgError({ code: '42501', message: `permission denied for function ${call}`, hint: 'only a superuser may attach or detach a node' }));
    }
    log('info', 'node_command', { session: this.id, command: command.name, node: command.nodeId, user: this.parameters.get('user') });
    let reply: Buffer[];
    try {
      const progress = (message: string) => this.write(serverMessages.noticeResponse({ severity: 'NOTICE', code: '00000', message }));
      reply = await runNodeCommand(command, this.context.nodeOperations(this), progress);
    } catch (error) {
      if (error instanceof PgError) return this.failStatement(error);
      throw error;
    }
    for (const bytes of reply) this.write(bytes);
    this.write(serverMessages.readyForQuery(this.status));
  }

  /** A CancelRequest for this session: cancel whatever its nodes are running. */
  override cancel(): void {
    for (const connection of [...this.connections.values(), ...this.sourceConnections]) {
      if (connection.busy) void sendCancel(connection.node, connection.processId, connection.secretKey);
    }
    for (const cancel of this.cancelHooks) cancel();
  }

  // ---- ending ---------------------------------------------------------------------------------------------

  protected override fail(error: unknown): void {
    if (this.closed) return;
    const pgError =
      error instanceof PgError ? error : new PgError({ severity: 'FATAL', code: SqlState.internalError, message: `internal error: ${(error as Error)?.message ?? String(error)}` });
    if (!(error instanceof PgError)) log('error', 'session_internal_error', { session: this.id, error: (error as Error)?.stack ?? String(error) });
    else log(pgError.code === SqlState.protocolViolation ? 'warning' : 'info', 'session_error', { session: this.id, code: pgError.code, message: pgError.message });
    const fatal = pgError.severity === 'FATAL' ? pgError : new PgError({ severity: 'FATAL', code: pgError.code, message: pgError.message, detail: pgError.detail, hint: pgError.hint });
    const frame = error instanceof BackendStartupError && error.frame ? error.frame : serverMessages.errorResponse(fatal);
    // The session's last message leaves outside write(): the scanner is told of it here.
    this.errorScanner?.observe(frame);
    this.output.flush();
    this.socket.end(frame);
    this.close(pgError.message);
  }

  override close(reason: string, logIt = true): void {
    if (this.closed) return;
    this.closed = true;
    this.sessionEnd.abort();
    if (this.startupTimer) clearTimeout(this.startupTimer);
    this.context.cluster.off('detach', this.onDetach);
    this.context.unregister(this);
    if (this.running) this.context.statements.end(this.running, (nodeId) => this.context.cluster.nodes[nodeId]?.stats);
    this.running = null;
    this.passwordWaiter = null;
    this.heldPortals.closeAll();
    for (const cancel of this.cancelHooks) cancel();
    this.releaseInsertLock();
    this.output.flush();
    if (!this.socket.destroyed) this.socket.end();
    const busy = this.dispatch !== null;
    if (this.cacheUse?.changingData) {
      const running = [...this.connections.values()].filter((connection) => busy || connection.busy);
      if (running.length > 0) void holdCacheUntilEnded(this.cacheUse.cache, running, (nodeId) => this.context.cluster.nodes[nodeId]?.status === 'up');
    }
    if (this.cacheUse) {
      this.cacheUse.abandon();
    }
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

function isNodeCommand(node: Node): boolean {
  try {
    return parseNodeCommand(node) !== null;
  } catch {
    return true;
  }
}
