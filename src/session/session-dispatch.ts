// Running one exchange on a set of node connections: the leader's reply relayed to the client, the others'
// outcomes compared (a node that differs is detached), transactions aborted on one node aborted on the others,
// and COMMIT of a transaction that wrote on several nodes made a two-phase commit.

import { type Node } from '@pgsql/types';
import { describeNode } from '../cluster/backend-node';
import { abortMarker, ReplicatedDispatch, type DispatchResult } from '../executor/replicated-dispatch';
import { log } from '../log';
import { checkDeterminism, pinTimeFunctions, type DeterminismCheck } from '../planner/nondeterminism';
import { mayNeedColumnDefaults, pinColumnDefaults } from '../planner/volatile-defaults';
import { type StatementClass } from '../planner/statement-classifier';
import { commitEverywhere } from '../executor/two-phase-commit';
import { type PendingMessage } from './pending-message';
import { serialize } from 'pg-protocol';
import { BackendConnection } from '../backend/backend-connection';
import { PgError, SqlState } from '../protocol/errors';
import { type Frame } from '../protocol/frame-reader';
import { FrontendCode } from '../protocol/message-codes';
import { serverMessages } from '../protocol/server-messages';
import { rejectionMarker, commitText, statementSql } from './session-statements';
import { SessionConnections } from './session-connections';

export abstract class SessionDispatch extends SessionConnections {
  /**
   * The statement's SQL with its time functions (and varying column defaults) evaluated on the main node; the
   * node's error instead when that fails (e.g. the transaction is already aborted), which the caller reports as
   * the statement's error.
   */
  protected async pinTime(node: Node): Promise<string | PgError> {
    const evaluate = async (select: string) => (await this.port.evaluate(select))[0] ?? [];
    try {
      const withDefaults = this.needsColumnDefaults(node) ? await pinColumnDefaults(node, this.catalog!, evaluate) : null;
      if (withDefaults instanceof PgError) return withDefaults;
      return await pinTimeFunctions(withDefaults ?? node, evaluate);
    } catch (error) {
      if (error instanceof PgError && error.severity === 'ERROR') return error;
      throw error;
    }
  }

  /** An INSERT into a table whose column defaults would give each node its own value (see volatile-defaults.ts). */
  protected needsColumnDefaults(node: Node): boolean {
    return !this.streaming && this.catalog !== null && mayNeedColumnDefaults(node, this.catalog);
  }

  /**
   * Whether a write computes the same values on every node it runs on (see nondeterminism.ts). In streaming
   * replication a write runs on the primary alone and its standbys replay the values it computed.
   */
  protected determinism(node: Node): DeterminismCheck {
    return this.streaming ? { kind: 'deterministic' } : checkDeterminism(node);
  }

  /** The insert locks the open exchange holds, released once every node has run it (see executor/insert-lock.ts). */
  private insertLockRelease: (() => void) | null = null;

  /**
   * Takes the insert lock of the sequences a write may advance when it runs on several nodes; the exchange about
   * to be sent holds it until every node is done. Returns the error to refuse the statement with when not granted.
   */
  protected async lockSequences(sequences: readonly string[], nodes: number, exchangeOpen = false): Promise<PgError | null> {
    if (sequences.length === 0 || nodes < 2 || !this.context.config.insertLock || this.streaming) return null;
    let release: () => void = () => undefined;
    let refusal: PgError | null = null;
    try {
      release = await this.context.insertLock.acquire(sequences, {
        // Inside a transaction (or an exchange already sent) the session may hold row locks the holder waits for.
        timeoutMs: this.status === 'I' && !exchangeOpen ? null : this.context.config.insertLockTimeout * 1000,
        onCancel: (cancel) => {
          this.cancelHooks.add(cancel);
          return () => this.cancelHooks.delete(cancel);
        },
      });
    } catch (error) {
      if (!(error instanceof PgError)) throw error;
      refusal = error;
    }
    if (this.closed) {
      release();
      throw new PgError({ severity: 'FATAL', code: SqlState.connectionFailure, message: 'the client left while its statement waited for the insert lock' });
    }
    if (refusal) return refusal;
    const previous = this.insertLockRelease;
    this.insertLockRelease = previous ? () => (release(), previous()) : release;
    return null;
  }

  protected releaseInsertLock(): void {
    const release = this.insertLockRelease;
    this.insertLockRelease = null;
    release?.();
  }

  /** Fails the current statement with the proxy's own error, aborting an open transaction on every node. */
  protected async refuse(error: PgError): Promise<void> {
    await this.runOnNodes([serialize.query(rejectionMarker)], { kind: 'write', reason: 'refused by the proxy' }, rejectionMarker, error);
  }

  /** Ends a statement the proxy answered with an error: inside a transaction block, the transaction fails. */
  protected async failStatement(error: PgError): Promise<void> {
    if (this.status !== 'I') return this.refuse(error);
    this.write(serverMessages.errorResponse(error));
    this.write(serverMessages.readyForQuery(this.status));
  }

  /**
   * COMMIT of a transaction that wrote on several nodes: prepare everywhere, record the decision, commit. An
   * extended-protocol COMMIT (`batch`, up to its Sync) is the decision itself: its messages run on the deciding
   * node, whose replies are the client's, so its statements and portals are kept as for any batch.
   */
  protected async commitAcrossNodes(batch?: { messages: PendingMessage[]; terminator: Frame }): Promise<void> {
    // The main node decides (commits in one phase): a distributed read may have left its temporary tables in
    // that node's transaction, which PREPARE TRANSACTION would refuse.
    const main = this.mainConnection();
    const connections = this.connectionsInNodeOrder().filter((c) => c.txStatus === 'T').sort((a, b) => Number(b === main) - Number(a === main));
    for (const connection of connections) this.running?.nodes.add(connection.node.id);
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
      // A replica lost before it prepared is left out when it is out of service: the others hold every write.
      const mayLeaveOut = async (connection: BackendConnection) =>
        !this.wroteDistributedRows && (await this.context.cluster.confirmLoss(connection.node.id, `lost connection to ${describeNode(connection.node)} during a commit`));
      await commitEverywhere(connections, decide, mayLeaveOut);
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
  protected isCommitBatch(messages: PendingMessage[]): boolean {
    const binds = messages.filter((m) => m.frame.code === FrontendCode.bind);
    if (binds.length !== 1 || messages.some((m) => m.rejection)) return false;
    const index = messages.indexOf(binds[0]);
    return commitText.test(statementSql(this.statementBefore(messages, index, binds[0].statementName!)));
  }

  protected openDispatch(targets: BackendConnection[], isWrite: boolean, extended: boolean, leaderFirst = true, retryable = false): ReplicatedDispatch {
    const [leader, ...others] = targets;
    // A statement that may run again asks whether the node serves only if it fails again (finishDispatch).
    const onLost = retryable ? () => undefined : (connection: BackendConnection, error: Error | null) => this.onNodeLost(connection, error);
    const dispatch = new ReplicatedDispatch(leader, others, this.relaySink, onLost, extended, leaderFirst);
    if (this.running) dispatch.track(this.running, isWrite ? 'write' : 'read');
    dispatch.holdLeadingFatal = retryable;
    this.dispatch = dispatch;
    this.dispatchIsWrite = isWrite;
    return dispatch;
  }

  protected async runOnNodes(frames: Buffer[], statementClass: StatementClass, sql: string, rejection?: PgError, copyIn = false, targets?: BackendConnection[], retry = true): Promise<void> {
    if (rejection) this.rejections.push(rejection);
    const isWrite = statementClass.kind === 'write';
    // A read outside a transaction has no effects: when its node had ended the connection before the read reached
    // it (nothing was relayed yet), it runs once more on a new connection.
    const retryable = retry && !isWrite && !copyIn && !rejection && !targets && this.status === 'I';
    // COPY FROM streams to every node at once: its data cannot wait for the leader to finish.
    const everyServer = statementClass.kind === 'write' && statementClass.everyServer === true;
    const dispatch = this.openDispatch(targets ?? this.targets(isWrite, everyServer), isWrite, false, !copyIn, retryable);
    if (this.context.config.logPerNodeStatement) {
      for (const connection of dispatch.connections) log('info', 'node_statement', { session: this.id, node: connection.node.id, sql });
    }
    try {
      dispatch.send(dispatch.connections.map((connection) => ({ connection, frames, injected: [], syncs: 1 })));
    } catch (error) {
      this.releaseInsertLock();
      throw error;
    }
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
  protected async finishDispatch(dispatch: ReplicatedDispatch, sql = '', ready = true): Promise<DispatchResult> {
    const result = await dispatch.done;
    this.releaseInsertLock();
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
      // Streaming replication writes on the primary alone (the leader): its commit is never a two-phase one.
      for (const connection of this.streaming ? [result.leader.connection] : dispatch.connections) this.writtenNodes.add(connection.node.id);
    }
    if (wasWrite && this.transactionWrote) {
      this.sessionWrote = true;
      if (this.status !== 'I' || result.status !== 'I') this.wroteInTransactionBlock = true;
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

  protected compareOutcomes(result: DispatchResult, sql: string): void {
    const expected = result.leader.outcomes.join(', ');
    if (this.streaming) {
      // Standbys get only what changes the session (BEGIN, SET, ...), and refuse some of it (BEGIN READ WRITE,
      // SERIALIZABLE): such a standby leaves the transaction (reconcileTransactions), reads go to the primary.
      for (const other of result.others) {
        if (other.lost || other.skipped || other.outcomes.join(', ') === expected) continue;
        log('info', 'standby_answered_otherwise', { session: this.id, node: other.connection.node.id, answer: other.outcomes.join(', ').slice(0, 200), primary: expected.slice(0, 200) });
      }
      return;
    }
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
  protected override async reconcileTransactions(): Promise<void> {
    const primary = this.streaming ? this.context.cluster.mainNode() : null;
    for (const connection of [...this.connections.values()]) {
      if (connection.txStatus === this.status) continue;
      if (this.streaming && connection.node.id !== primary?.id) {
        // A standby need not be in the session's transaction (a batch that began it with a write went to the
        // primary alone): outside it, it takes no reads of the transaction. One in another state leaves it.
        if (connection.txStatus === 'I') continue;
        if (this.status === 'E' && connection.txStatus === 'T') await connection.query(abortMarker).catch(() => undefined);
        else await connection.query('ROLLBACK').catch(() => undefined);
        continue;
      }
      if (this.status === 'E' && connection.txStatus === 'T') {
        await connection.query(abortMarker).catch(() => undefined);
      } else if (this.status === 'I') {
        await connection.query('ROLLBACK').catch(() => undefined);
      } else {
        this.context.cluster.detach(connection.node.id, `${describeNode(connection.node)} is in transaction state ${connection.txStatus} where the session is in ${this.status}`);
      }
    }
  }
}
