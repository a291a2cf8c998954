// The extended protocol: Parse, Bind, Describe, Execute and Close are held up to Flush or Sync and run as one
// batch on one set of nodes; prepared statements are created lazily on a node that has not seen them, and
// batches that read several nodes are answered by the proxy (extended-distributed-reads.ts).

import { finishingFragment } from '../cluster/statement-activity';
import { type NodeSend } from '../executor/replicated-dispatch';
import { log } from '../log';
import { parseSql } from '../planner/sql-parser';
import { commandKind, createsTemporaryObject, mayChangeDefinitions, type StatementClass } from '../planner/statement-classifier';
import { beginEverywhere, keyPosition, nodesOfKeys, type SessionPort } from '../executor/distributed-statement';
import { collectBatch, collectSplitBatch, type SplitBatchReply, sumTags, type BatchReply } from '../executor/scatter-write';
import { keyValueOf } from '../planner/key-values';
import { commitEverywhere } from '../executor/two-phase-commit';
import { routeDistributed, type DistributedRoute } from '../planner/distributed-router';
import { type ExtendedReadHost } from './extended-distributed-reads';
import { type PendingMessage, type PreparedStatement } from './pending-message';
import { textParameters } from '../backend/node-value-format';
import { serialize } from 'pg-protocol';
import { BackendConnection } from '../backend/backend-connection';
import { PgError, SqlState } from '../protocol/errors';
import { type Frame } from '../protocol/frame-reader';
import { decodeBind, decodeClose, decodeDescribe, decodeExecute, decodeParse, renameBindStatement, type BindMessage } from '../protocol/frontend-messages';
import { BackendCode, FrontendCode } from '../protocol/message-codes';
import { serverMessages } from '../protocol/server-messages';
import { pinnedStatement, readClass, rejectionMarker, droppedDatabase, rollbackText, statementSql, writesDistributedRows } from './session-statements';
import { SessionDistributed } from './session-distributed';
import { sequencesAdvanced } from '../planner/sequence-use';
import { functionName, walkAst } from '../planner/ast-walk';
import type { Node } from '@pgsql/types';

/** A SELECT of parapool.distribute_table() and friends (their names are the rule commands' and node commands'). */
function callsParapoolFunction(node: Node): boolean {
  let found = false;
  walkAst(node, (tag, body) => {
    if (tag === 'FuncCall' && functionName(body).startsWith('parapool.')) found = true;
  });
  return found;
}

export abstract class SessionExtended extends SessionDistributed {
  // ---- extended query protocol -----------------------------------------------------------------------------

  protected decodeExtended(frame: Frame): PendingMessage {
    switch (frame.code) {
      case FrontendCode.parse: {
        const message = decodeParse(frame.payload);
        const parsed = parseSql(message.sql);
        let statementClass: StatementClass = { kind: 'write', reason: 'unparsable statement: every node reports the error' };
        let rejection: PgError | undefined;
        let timePinning: PreparedStatement['timePinning'];
        if (parsed.ok) {
          const classes = parsed.statements.map((s) => this.classify(s.node));
          statementClass = classes.find((c) => c.kind === 'write' && !c.everyServer) ?? classes.find((c) => c.kind === 'write') ?? classes[0] ?? readClass;
          if (statementClass.kind === 'admin') statementClass = { kind: 'read', reason: 'SHOW' };
          if (statementClass.kind === 'write') {
            for (const statement of parsed.statements) {
              const check = this.determinism(statement.node);
              if (check.kind === 'rejected') rejection = check.error;
              else if (check.kind === 'time' || this.needsColumnDefaults(statement.node)) timePinning = { node: statement.node, parameterTypes: message.parameterTypes };
            }
          }
        }
        const changesDefinitions = parsed.ok && parsed.statements.some((st) => mayChangeDefinitions(st.node));
        this.sessionCatalog?.beforeStatement(message.sql, false);
        let route = parsed.ok && parsed.statements.length === 1 && this.catalog ? routeDistributed(parsed.statements[0].node, this.catalog) : undefined;
        if (!route && parsed.ok && parsed.statements.some((st) => callsParapoolFunction(st.node))) {
          // Before the database has rules there is no catalog to route by: the call must still not reach a node.
          route = { kind: 'refused', error: new PgError({ code: SqlState.featureNotSupported, message: 'parapool functions must be called with the simple query protocol', hint: 'send it as a simple query (psql, or preferQueryMode=simple in JDBC)' }) };
        }
        // Refused whatever its parameters: at Parse already, before a node parses what it cannot know.
        if (route?.kind === 'refused') rejection ??= route.error;
        if (route?.kind === 'rule-command') {
          rejection ??= new PgError({ code: SqlState.featureNotSupported, message: `parapool.${route.command.name} must be called with the simple query protocol`, hint: 'send it as a simple query (psql, or preferQueryMode=simple in JDBC)' });
        }
        if (parsed.ok && parsed.statements.some((st) => createsTemporaryObject(st.node))) this.madeTemporaryObjects = true;
        if (parsed.ok) this.noteNodeBoundState(parsed.statements);
        const only = parsed.ok && parsed.statements.length === 1 ? parsed.statements[0].node : undefined;
        const cursorCommand = only && ('FetchStmt' in only || 'ClosePortalStmt' in only) ? only : undefined;
        const writesData = parsed.ok && parsed.statements.some((st) => this.writesData(st.node));
        if (parsed.ok) for (const st of parsed.statements) if (droppedDatabase(st.node) !== null) this.databasesToRelease.push(droppedDatabase(st.node)!);
        const prepareRefusal = parsed.ok ? parsed.statements.map((st) => this.prepareRefusals.inspect(st.node)).find((r) => r !== null) : undefined;
        const sequences = parsed.ok && statementClass.kind === 'write' ? sequencesAdvanced(parsed.statements.map((st) => st.node), this.catalog) : [];
        const kinds = parsed.ok ? parsed.statements.map((st) => commandKind(st.node)) : [];
        const beginsTransaction = only !== undefined && ['TRANS_STMT_BEGIN', 'TRANS_STMT_START'].includes((only as { TransactionStmt?: { kind?: string } }).TransactionStmt?.kind ?? '');
        const statement: PreparedStatement = { name: message.name, parseFrame: Buffer.from(frame.raw), statementClass, timePinning, route: route?.kind === 'none' ? undefined : route, changesDefinitions, cursorCommand, writesData, prepareRefusal, sequences, kinds, beginsTransaction, parses: parsed.ok };
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
  protected override statementBefore(messages: readonly PendingMessage[], end: number, name: string): PreparedStatement | undefined {
    for (let i = end - 1; i >= 0; i--) {
      const p = messages[i];
      if (p.frame.code === FrontendCode.parse && p.statement?.name === name) return p.statement;
    }
    return this.statements.get(name);
  }

  protected portalClass(name: string): StatementClass {
    for (let i = this.pending.length - 1; i >= 0; i--) {
      const p = this.pending[i];
      if (p.frame.code === FrontendCode.bind && p.portal === name) return p.statementClass;
    }
    return this.portals.get(name) ?? readClass;
  }

  /** Sends the batched extended-protocol messages, ending with `terminator` (Flush or Sync). */
  protected async sendExtended(terminator: Frame, isSync: boolean, terminatorClass: StatementClass = readClass): Promise<void> {
    let messages = this.pending;
    this.pending = [];
    if (isSync && this.parked && this.answersAlone(messages)) return this.answerAlone(messages);
    if (!this.dispatch) {
      // After a Flush the batch goes on: the nodes, their transaction failed, skip to its Sync on their own.
      const goOn = () => !isSync || messages.some((m, i) => m.frame.code === FrontendCode.bind && rollbackText.test(statementSql(this.statementBefore(messages, i, m.statementName!))));
      if (!(await this.restoreBeforeStatement(goOn))) return;
    }
    for (const database of this.databasesToRelease.splice(0)) await this.releaseDatabase(database);
    if (!this.dispatch) this.forgetEndedTransaction();
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
      const rest = messages.slice(begin);
      const multiNodeRead = begin > 0 && (await this.extendedReads.isBatch(rest));
      // So does a statement on a distributed table, which runs on its key's nodes only: BEGIN goes to every node first.
      const routed = begin > 0 && rest.some((m, i) => m.frame.code === FrontendCode.bind && this.statementBefore(rest, i, m.statementName!)?.route);
      if (multiNodeRead || routed) {
        const dispatch = this.openDispatch(this.targets(true, true), true, true);
        dispatch.send(this.buildSends(messages.slice(0, begin), dispatch.connections, terminator, true));
        const result = await this.finishDispatch(dispatch, 'BEGIN', false);
        if (result.leader.lost || result.leader.outcomes.some((o) => o.startsWith('ERROR'))) {
          this.write(serverMessages.readyForQuery(this.status));
          return;
        }
        if (multiNodeRead) return this.extendedReads.run(rest);
        messages = rest;
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
    const exchangeOpen = dispatch !== null;
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
    let routed: BackendConnection | BackendConnection[] | null | undefined;
    if (isSync && dispatch === null) {
      const split = await this.splitBatchPlan(messages);
      const nodes = split ? new Set(split.values()) : null;
      if (nodes && nodes.size > 1) return this.runSplitBatch(messages, split!, terminator);
      // Every execution on one node: routed already, its keys need not be read again.
      if (nodes) routed = this.port.connectionFor([...nodes][0]);
    }
    routed ??= await this.routeExtendedBatch(messages, dispatch !== null || !isSync);
    if (Array.isArray(routed)) return this.scatterExtended(messages, routed, terminator);
    if (!dispatch) {
      const everyServer = [terminatorClass, ...messages.map((m) => m.statementClass)].every((c) => c.kind !== 'write' || c.everyServer === true);
      const targets = routed ? [routed] : this.targets(isWrite, everyServer);
      dispatch = this.openDispatch(targets, isWrite, true);
    } else if (routed && (dispatch.connections.length !== 1 || dispatch.connections[0] !== routed)) {
      messages.splice(0, messages.length, { frame: terminator, statementClass: readClass, rejection: new PgError({ code: SqlState.featureNotSupported, message: 'a statement on a distributed table cannot follow other statements in the same extended-protocol batch after a Flush', hint: 'send Sync before it' }) });
    }
    if (messages.some((m, i) => m.frame.code === FrontendCode.bind && this.statementBefore(messages, i, m.statementName!)?.changesDefinitions)) this.sessionCatalog?.definitionsMayHaveChanged();
    const sequences = messages.flatMap((m, i) => (m.frame.code === FrontendCode.bind && !m.rejection ? this.statementBefore(messages, i, m.statementName!)?.sequences ?? [] : []));
    const notLocked = await this.lockSequences(sequences, dispatch.connections.length, exchangeOpen);
    if (notLocked) messages.splice(0, messages.length, { frame: terminator, statementClass: readClass, rejection: notLocked });
    const sends = this.buildSends(messages, dispatch.connections, terminator, isSync);
    dispatch.send(sends);
    if (isSync) await this.finishDispatch(dispatch);
  }

  /**
   * Transaction pooling: whether a parked session's batch only makes or drops statements (Parse and Close, as libpq's
   * PQprepare sends), which the proxy can answer without taking a connection. A client that prepares synchronously
   * while its other sessions hold every connection in their transactions (pgbench -M prepared with more clients
   * than max_pool) would otherwise wait for itself. A Parse of a name already in use, or of text the grammar refuses,
   * goes to a node for its error.
   */
  private answersAlone(messages: readonly PendingMessage[]): boolean {
    if (messages.length === 0 || this.status !== 'I' || this.databasesToRelease.length > 0) return false;
    const named = new Set<string>();
    for (const message of messages) {
      if (message.rejection) return false;
      if (message.frame.code === FrontendCode.close) {
        if (message.statementName !== undefined) named.delete(message.statementName);
        continue;
      }
      if (message.frame.code !== FrontendCode.parse) return false;
      const statement = message.statement!;
      if (!statement.parses) return false;
      if (statement.name !== '' && (named.has(statement.name) || this.statements.has(statement.name))) return false;
      if (statement.name !== '') named.add(statement.name);
    }
    return true;
  }

  /**
   * Answers a batch answersAlone accepted: the statements exist for the session from now on, and reach a node with
   * its first Bind or Describe there (ensurePrepared), where an error only the node can find (a missing table) is
   * reported in that exchange instead.
   */
  private answerAlone(messages: readonly PendingMessage[]): void {
    for (const message of messages) {
      if (message.frame.code === FrontendCode.close) {
        if (message.statementName !== undefined) this.statements.delete(message.statementName);
        else this.portals.delete(message.portal!);
        this.write(serverMessages.closeComplete);
        continue;
      }
      this.statements.set(message.statement!.name, message.statement!);
      this.write(serverMessages.parseComplete);
    }
    this.write(serverMessages.readyForQuery(this.status));
  }

  /**
   * What each node is sent for a batch: the client's messages, with the Parses (and Closes) that re-create on a
   * node the statements it lacks, and the proxy's refusals in place of refused messages. Updates the session's
   * view of statements and portals.
   */
  protected override buildSends(messages: readonly PendingMessage[], connections: readonly BackendConnection[], terminator: Frame, isSync: boolean): NodeSend[] {
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
      for (const send of sends) this.addMessageFrames(message, send);
      this.noteSent(message);
    }
    for (const send of sends) {
      (send.frames as Buffer[]).push(terminator.raw);
      if (isSync) (send as { syncs: number }).syncs = 1;
    }
    this.rejections.push(...rejections);
    return sends;
  }

  /** Adds to `send` the frames that carry the client's message to that node, re-creating statements it lacks. */
  protected addMessageFrames(message: PendingMessage, send: NodeSend): void {
    const code = message.frame.code;
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

  /** Updates the session's view of its statements and portals once a message is on its way to the nodes. */
  protected noteSent(message: PendingMessage): void {
    const code = message.frame.code;
    if (code === FrontendCode.parse) {
      const name = message.statement!.name;
      if (name === '' || !this.statements.has(name)) this.statements.set(name, message.statement!);
    } else if (code === FrontendCode.bind) {
      this.portals.set(message.portal!, message.statementClass);
      this.heldPortals.close(message.portal!);
    } else if (code === FrontendCode.close) {
      if (message.statementName !== undefined) this.statements.delete(message.statementName);
      else this.portals.delete(message.portal!);
    }
  }

  /** Adds to `send` what re-creates the client's statement on that node when the node lacks this version of it. */
  protected ensurePrepared(statement: PreparedStatement, send: NodeSend): void {
    const prepared = send.connection.preparedStatements;
    const existing = prepared.get(statement.name);
    if (existing === statement) return;
    if (existing && 'parseFrame' in existing && (existing as PreparedStatement).parseFrame.equals(statement.parseFrame)) {
      // Made from the same Parse message by another session on this pooled connection (transaction pooling).
      prepared.set(statement.name, statement);
      return;
    }
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

  protected async routeExtendedBatch(messages: PendingMessage[], flushed: boolean): Promise<BackendConnection | BackendConnection[] | null> {
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
  protected async scatterExtended(messages: PendingMessage[], connections: BackendConnection[], terminator: Frame): Promise<void> {
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

  /**
   * For a batch of several executions on distributed tables, each on one node (a JDBC executeBatch of inserts,
   * say): the node of each Bind and of each message on its portal; null when the batch is not of that shape.
   * When they are not all on the same node the batch is split (runSplitBatch): Parses, and Describes and Closes
   * of statements, then go to every node of the batch.
   */
  protected async splitBatchPlan(messages: readonly PendingMessage[]): Promise<Map<number, number> | null> {
    let routedBinds = 0;
    for (const [index, message] of messages.entries()) {
      if (message.rejection || message.pinnedParse) return null;
      if (message.frame.code !== FrontendCode.bind) continue;
      const statement = this.statementBefore(messages, index, message.statementName!);
      // A sequence a node advances on its own would number rows apart from the other nodes' (the insert lock's case).
      if (!statement?.route || (statement.sequences?.length ?? 0) > 0) return null;
      routedBinds++;
    }
    if (routedBinds < 2) return null;
    const assignments = new Map<number, number>();
    const portalNodes = new Map<string, number>();
    for (const [index, message] of messages.entries()) {
      if (message.frame.code === FrontendCode.bind) {
        const statement = this.statementBefore(messages, index, message.statementName!)!;
        let nodes: number[];
        try {
          nodes = await this.nodesForBind(statement.route!, message.bind!, statement);
        } catch (error) {
          if (error instanceof PgError && error.severity === 'ERROR') return null; // the routing path reports it
          throw error;
        }
        if (nodes.length !== 1 || !this.connections.has(nodes[0])) return null;
        assignments.set(index, nodes[0]);
        portalNodes.set(message.portal!, nodes[0]);
      } else if (message.portal !== undefined && message.statementName === undefined) {
        const node = portalNodes.get(message.portal);
        if (node === undefined) return null; // a portal of an earlier batch, on whatever node it was bound
        assignments.set(index, node);
      }
    }
    return assignments;
  }

  /**
   * Runs a batch whose executions go to different nodes: each node gets its own executions (and every Parse),
   * all in one transaction, as the batch is one implicit transaction on one server; the client gets the replies
   * in the order it sent its messages, up to the first error, after which the server would have skipped the rest.
   * Outside a transaction block the nodes commit together; on an error they all roll back. The replies wait until
   * every node answered, so a batch's RETURNING rows are held in memory.
   */
  protected async runSplitBatch(messages: readonly PendingMessage[], assignments: ReadonlyMap<number, number>, terminator: Frame): Promise<void> {
    const nodeIds = [...new Set(assignments.values())].sort((a, b) => a - b);
    const connections = nodeIds.map((id) => this.port.connectionFor(id));
    const own = this.status === 'I';
    if (own) await beginEverywhere(connections);
    const sends: NodeSend[] = connections.map((connection) => ({ connection, frames: [], injected: [], syncs: 1 }));
    const sent: number[][] = connections.map(() => []);
    for (const [index, message] of messages.entries()) {
      const node = assignments.get(index);
      for (const [k, send] of sends.entries()) {
        if (node !== undefined && nodeIds[k] !== node) continue;
        this.addMessageFrames(message, send);
        sent[k].push(index);
      }
      this.noteSent(message);
    }
    for (const send of sends) (send.frames as Buffer[]).push(terminator.raw);
    // Each node runs its own executions: the router's tier, on several nodes at once.
    const fragments = nodeIds.map((id) => this.running?.fragment(id, 'batch', 'router'));
    const outcomes = await Promise.allSettled(
      sends.map((send, k) => finishingFragment(fragments[k], collectSplitBatch(send.connection, send.frames, send.injected, sent[k].length), (reply) => reply.failedAt !== null)),
    );
    const rollback = () => (own ? Promise.all(connections.map((c) => c.query('ROLLBACK').catch(() => undefined))) : Promise.resolve());
    const lost = outcomes.find((o): o is PromiseRejectedResult => o.status === 'rejected');
    if (lost) {
      await rollback();
      throw new PgError({ code: SqlState.connectionFailure, message: `lost a node during the batch: ${(lost.reason as Error).message}` });
    }
    const replies = outcomes.map((o) => (o as PromiseFulfilledResult<SplitBatchReply>).value);
    // Each message's replies come from its node; a message every node ran answers with the first node's.
    const replyOf = new Map<number, Buffer[]>();
    let failure: { index: number; frames: Buffer[] } | null = null;
    for (const [k, reply] of replies.entries()) {
      for (const [position, index] of sent[k].entries()) {
        if (!replyOf.has(index)) replyOf.set(index, reply.replies[position]);
      }
      if (reply.failedAt !== null) {
        const index = sent[k][reply.failedAt];
        if (failure === null || index < failure.index) failure = { index, frames: reply.replies[reply.failedAt] };
      }
    }
    // Nothing reaches the client before the outcome is known: a commit that fails must not follow CommandCompletes.
    const answered = failure?.index ?? messages.length;
    if (failure) {
      await rollback();
      for (let index = 0; index < answered; index++) for (const frame of replyOf.get(index) ?? []) this.write(frame);
      for (const frame of failure.frames) this.write(frame);
      this.status = own ? 'I' : 'E';
      await this.reconcileTransactions();
    } else {
      if (own) await commitEverywhere(connections);
      else for (const [index, node] of assignments) if (messages[index].frame.code === FrontendCode.bind && messages[index].statementClass.kind === 'write') this.writtenNodes.add(node);
      for (let index = 0; index < answered; index++) for (const frame of replyOf.get(index) ?? []) this.write(frame);
      this.status = own ? 'I' : 'T';
    }
    if (this.status === 'I') this.portals.clear();
    this.write(serverMessages.readyForQuery(this.status));
  }

  /** The nodes a Bind's execution runs on; binary parameters are read as text first (the statement's types). */
  protected async nodesForBind(route: DistributedRoute, bind: BindMessage, statement: PreparedStatement): Promise<number[]> {
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

  protected override extendedReadHost(): ExtendedReadHost {
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
}
