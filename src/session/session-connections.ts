// A session's node connections: taken at start-up, dropped when their node is detached, and opened again with
// the session's settings when the node ended them between statements; inside a transaction a lost node fails the
// transaction on every node with 08006.

import { describeNode } from '../cluster/backend-node';
import { liveCheckAfterMs } from '../cluster/connection-pool';
import { closeWorkerConnections } from '../executor/worker-pool';
import { closeDeciderFences } from '../executor/decider-fence';
import { log } from '../log';
import { BackendConnection, BackendStartupError } from '../backend/backend-connection';
import { PgError, SqlState } from '../protocol/errors';
import { serverMessages } from '../protocol/server-messages';
import { reportedSettings } from './session-statements';
import { SessionState } from './session-state';

export abstract class SessionConnections extends SessionState {
  /** Opens a connection to every node in service; a node that cannot be reached is detached, a refusal relayed. */
  /** The cluster's attach count when the session last connected to every node in service (see restoreBeforeStatement). */
  private joinedAttachCount = 0;

  protected async connectNodes(): Promise<void> {
    this.joinedAttachCount = this.context.cluster.attachCount;
    const nodes = this.context.cluster.upNodes();
    if (nodes.length === 0) {
      throw new PgError({ severity: 'FATAL', code: SqlState.cannotConnectNow, message: 'no node is in service', hint: 'SHOW pool_nodes lists the nodes and why they were detached' });
    }
    const results = await this.acquireInNodeOrder(nodes.map((node) => node.id));
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
        // An unreachable node is a failure like a failed health check (with the watchdog, a request for consensus):
        // the session goes on without it only once it is out of service.
        if (error instanceof BackendStartupError && error.unreachable && this.context.cluster.fail(node.id, error.message)) {
          // detached: the session goes on with the other nodes
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

  /**
   * Takes a connection to each node from the pool. Under transaction pooling the connections count against
   * max_pool and may wait their turn: one node after the other, in node order, so that two sessions never each hold
   * the connection the other waits for. Otherwise all at once.
   */
  protected async acquireInNodeOrder(nodeIds: readonly number[]): Promise<PromiseSettledResult<BackendConnection>[]> {
    const user = this.parameters.get('user')!;
    const take = (id: number) =>
      this.context.pool.acquire(
        { node: this.context.cluster.nodes[id], parameters: this.parameters, secret: this.context.passwords?.get(user) ?? null, connectTimeoutMs: this.context.config.connectTimeout * 1000 },
        { capped: this.transactionPooling, signal: this.sessionEnd.signal },
      );
    if (!this.transactionPooling) return Promise.allSettled(nodeIds.map(take));
    const results: PromiseSettledResult<BackendConnection>[] = [];
    for (const id of [...nodeIds].sort((a, b) => a - b)) {
      results[nodeIds.indexOf(id)] = await take(id).then(
        (value) => ({ status: 'fulfilled', value }) as const,
        (reason: unknown) => ({ status: 'rejected', reason }) as const,
      );
    }
    return results;
  }

  /**
   * Transaction pooling, once the session is idle between transactions with nothing queued: gives its node
   * connections back to the pool, unless something of the session lives on them (pinnedBy). The next statement
   * takes connections again (unpark, from restoreBeforeStatement).
   */
  protected parkIfIdle(): void {
    if (!this.transactionPooling || this.closed || this.phase !== 'ready' || this.stepping || this.status !== 'I') return;
    if (this.dispatch !== null || this.pending.length > 0 || this.inbox.length > 0 || this.copyRouter !== null || this.atGate) return;
    if (this.connections.size === 0 || this.lostConnections.size > 0 || this.pinnedBy !== null) return;
    for (const connection of this.connections.values()) {
      if (connection.busy || connection.txStatus !== 'I') return;
    }
    for (const connection of this.connections.values()) {
      connection.removeCloseListener(this.onConnectionClosed);
      this.context.pool.giveBack(connection);
    }
    this.connections.clear();
    this.readNodeId = null;
    if (this.sideConnection) {
      this.context.pool.giveBack(this.sideConnection);
      this.sideConnection = null;
    }
    this.parked = true;
  }

  /** Takes connections to every node in service again after parkIfIdle gave them back. */
  private async unpark(): Promise<void> {
    this.parked = false;
    this.joinedAttachCount = this.context.cluster.attachCount;
    const nodeIds = this.context.cluster.upNodes().map((node) => node.id);
    if (nodeIds.length === 0) {
      throw new PgError({ severity: 'FATAL', code: SqlState.cannotConnectNow, message: 'no node is in service', hint: 'SHOW pool_nodes lists the nodes and why they were detached' });
    }
    const results = await this.acquireInNodeOrder(nodeIds);
    let failure: unknown = null;
    for (const [index, result] of results.entries()) {
      const nodeId = nodeIds[index];
      if (result.status === 'fulfilled') {
        if (this.closed || this.context.cluster.nodes[nodeId].status !== 'up') {
          this.context.pool.giveBack(result.value);
          continue;
        }
        this.connections.set(nodeId, result.value);
        result.value.onClose(this.onConnectionClosed);
        continue;
      }
      const error = result.reason;
      if (this.closed || this.context.cluster.nodes[nodeId].status !== 'up') continue;
      if (error instanceof BackendStartupError && error.unreachable && (await this.context.cluster.confirmLoss(nodeId, error.message))) continue;
      failure ??= error;
    }
    this.settingsEpoch++;
    if (failure === null && this.connections.size > 0) return;
    for (const connection of this.connections.values()) {
      connection.removeCloseListener(this.onConnectionClosed);
      this.context.pool.giveBack(connection);
    }
    this.connections.clear();
    this.parked = true;
    if (this.closed) return;
    const error = failure as PgError | Error | null;
    throw new PgError({
      severity: 'FATAL',
      code: error instanceof PgError ? error.code : SqlState.connectionFailure,
      message: error ? `could not take a connection to every node in service: ${error.message}` : 'no node of this session is in service',
      hint: 'SHOW pool_nodes lists the nodes and why they were detached',
    });
  }

  protected async connectionsOutsideTransaction(): Promise<{ connectionFor(node: number): BackendConnection; release(): void }> {
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

  /**
   * COMMIT of a transaction that wrote rows of a distributed table on a node the session has lost since: that
   * node's part is gone (its backend rolled it back), so the rest must not commit. Rolls back on every node.
   */
  protected async rollBackForLostNode(nodeId: number): Promise<void> {
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

  protected onNodeLost(connection: BackendConnection, error: Error | null): void {
    void this.context.cluster.confirmLoss(connection.node.id, `lost connection to ${describeNode(connection.node)}${error ? `: ${error.message}` : ''}`);
  }

  /**
   * Before a statement: finds the connections that no longer work (closed, or idle for a while and not answering a
   * round trip) and opens them again, with the session's settings. Inside a transaction a lost connection fails the
   * transaction on every node (the new connection joins it failed) and the statement is answered with 08006,
   * unless `goOn` says it rolls the transaction back (or the nodes will fail it themselves). Returns false when the
   * session answered the statement itself; throws a FATAL error when the session cannot go on.
   */
  protected async restoreBeforeStatement(goOn: () => boolean): Promise<boolean> {
    if (this.parked) await this.unpark();
    // Lets the close of a connection that the node ended in the same turn as the client's message be seen first.
    await new Promise<void>((resolvePromise) => setImmediate(resolvePromise));
    if (this.status === 'I' && this.lostConnections.size === 0) {
      await Promise.all([...this.connections.values()].map((connection) => connection.checkAlive(liveCheckAfterMs)));
    }
    for (const nodeId of [...this.lostConnections.keys()]) {
      if (this.context.cluster.nodes[nodeId]?.status !== 'up') this.lostConnections.delete(nodeId);
    }
    if (this.status === 'I' && !this.closed && this.connections.size > 0 && this.joinedAttachCount !== this.context.cluster.attachCount) {
      // A node attached since the session connected: its writes must reach it from the next statement on.
      this.joinedAttachCount = this.context.cluster.attachCount;
      const attached = this.context.cluster.upNodes().filter((node) => !this.connections.has(node.id) && !this.lostConnections.has(node.id));
      if (attached.length > 0) {
        const failure = await this.reconnect(attached.map((node) => node.id), false, true);
        if (failure) {
          throw new PgError({ severity: 'FATAL', code: failure.code, message: failure.message, detail: 'A node was attached that this session cannot reach; its writes would miss it.' });
        }
      }
    }
    if (this.streaming && !(await this.afterFailover(goOn))) return false;
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
   * Streaming replication, before a statement: a transaction that was open on a primary since detached fails
   * (its writes are gone with that node's session), and a statement outside a transaction waits while a
   * failover is under way (the statement gate), so that it reaches the new primary. Returns false when the
   * session answered the statement itself.
   */
  private async afterFailover(goOn: () => boolean): Promise<boolean> {
    const lostPrimary = this.primaryLostInTransaction;
    if (lostPrimary !== null) {
      this.primaryLostInTransaction = null;
      if (this.status === 'T') {
        this.status = 'E';
        await this.reconcileTransactions();
        if (!goOn()) {
          this.write(serverMessages.errorResponse(new PgError({
            code: SqlState.connectionFailure,
            message: `lost the primary, ${describeNode(this.context.cluster.nodes[lostPrimary])}, inside the transaction: it was detached`,
            detail: 'The transaction\'s work on the primary is gone; a standby takes its place.',
            hint: 'Roll back, then run the transaction again.',
          })));
          this.write(serverMessages.readyForQuery(this.status));
          return false;
        }
      }
    }
    if (this.status === 'I' && this.context.gate.closed && !this.closed) {
      this.atGate = true;
      await this.context.gate.pass();
      this.atGate = false;
    }
    return true;
  }

  /**
   * Opens new connections to the nodes whose connections were lost and gives them the session's settings (read from
   * a connection still open when there is one, else those the lost connection reported); `inTransaction` opens a
   * transaction on each, to be failed with the others. A node that cannot be reached is detached when a probe finds
   * it no longer serving. Returns the error that keeps a node out of this session for now, if any.
   */
  protected async reconnect(nodeIds: readonly number[], inTransaction = false, joining = false): Promise<PgError | null> {
    const boundState = this.madeTemporaryObjects ? 'temporary objects' : this.nodeBoundState;
    if (boundState !== null) {
      // A new connection would lack them without a word: the session ends instead, as it would on one server.
      const node = describeNode(this.context.cluster.nodes[nodeIds[0]]);
      throw new PgError({
        severity: 'FATAL',
        code: joining ? SqlState.adminShutdown : SqlState.connectionFailure,
        message: joining ? `${node} was attached, and the session's ${boundState} cannot follow it there` : `lost connection to ${node}: the session's ${boundState} went with it`,
        hint: joining ? 'connect again: a new session uses every node in service' : undefined,
      });
    }
    let settings: readonly (readonly [string, string])[] | null = null;
    if (this.connections.size > 0 && this.status !== 'E') settings = await this.sessionSettings().then((s) => s.settings, () => null);
    const results = await this.acquireInNodeOrder(nodeIds);
    let failure: PgError | null = null;
    for (const [index, result] of results.entries()) {
      const nodeId = nodeIds[index];
      const node = this.context.cluster.nodes[nodeId];
      const lost = this.lostConnections.get(nodeId)?.connection ?? [...this.connections.values()][0];
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
        // The new connection was lost too (the node is going down as we speak): it is detached, not an error.
        if (connection.closed && (await this.context.cluster.confirmLoss(nodeId, `lost connection to ${describeNode(node)}`))) {
          this.lostConnections.delete(nodeId);
          continue;
        }
        failure ??= error instanceof PgError ? new PgError({ code: error.code, message: error.message, detail: error.detail, hint: error.hint }) : new PgError({ code: SqlState.connectionFailure, message: (error as Error).message });
        continue;
      }
      this.lostConnections.delete(nodeId);
      this.connections.set(nodeId, connection);
      connection.onClose(this.onConnectionClosed);
      log('info', joining ? 'node_joined' : 'node_reconnected', { session: this.id, node: nodeId });
    }
    this.settingsEpoch++;
    return failure;
  }

  /** Closes the proxy's idle connections to a database about to be dropped, the worker threads' too (pgpool-II's way). */
  protected async releaseDatabase(database: string | null): Promise<void> {
    if (database === null) return;
    const closed = this.context.pool.dropDatabase(database);
    await closeWorkerConnections(database);
    closeDeciderFences(database);
    log('info', 'pool_database_released', { session: this.id, database, closed });
  }

  protected override dropNode(nodeId: number): void {
    const connection = this.connections.get(nodeId);
    if (!connection) return;
    if (this.streaming && this.status !== 'I' && this.context.cluster.nodes[nodeId].role === 'primary') this.primaryLostInTransaction = nodeId;
    this.connections.delete(nodeId);
    if (this.readNodeId === nodeId) this.readNodeId = null;
    connection.destroy();
  }
}
