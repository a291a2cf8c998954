// Statements on distributed tables: reads planned and run by the executor, writes routed to the nodes of their
// keys, cursors and SQL PREPARE of multi-node reads answered by the proxy, partition-rule commands and COPY into
// a distributed table.

import { type Node } from '@pgsql/types';
import { type ClientSink } from '../executor/client-sink';
import { type WorkerFragments } from '../executor/execution-port';
import { log } from '../log';
import { type ParsedStatement } from '../planner/sql-parser';
import { connectionPinningState, nodeBoundSessionState, classifyStatement, type StatementClass } from '../planner/statement-classifier';
import { readCatalog } from '../catalog/catalog';
import { quoteLiteral } from '../catalog/partition-rule';
import { runRuleCommand } from '../catalog/rule-commands';
import { beginEverywhere, keyPosition, nodesOfKeys, runDistributedStatement, tableColumnNames, type SessionPort } from '../executor/distributed-statement';
import { CopyRouter, RelayedError } from '../executor/copy-router';
import { sumTags } from '../executor/scatter-write';
import { copyFormatFromOptions } from '../protocol/copy-row-splitter';
import { commitEverywhere } from '../executor/two-phase-commit';
import { routeDistributed, type DistributedRoute } from '../planner/distributed-router';
import { explainRouter, runDistributedRead, textOrderIsBytewise, type DistributedReadPort, type ReadOutcome } from '../executor/plan-executor';
import { CopyOutSink } from './copy-out-sink';
import { deparseVerified } from '../planner/ast-tools';
import { closeTarget, declareCursor, fetchFromCursor, fetchTarget, type CursorHost } from './sql-cursors';
import { executeSqlStatement, prepareSqlStatement } from './sql-prepared-statements';
import { serialize } from 'pg-protocol';
import { BackendConnection } from '../backend/backend-connection';
import { PgError, SqlState } from '../protocol/errors';
import { type Frame } from '../protocol/frame-reader';
import { serverMessages } from '../protocol/server-messages';
import { type SessionSettings } from './session-state';
import { explainedStatement } from './session-statements';
import { SessionDispatch } from './session-dispatch';

export abstract class SessionDistributed extends SessionDispatch {
  // ---- distributed tables ---------------------------------------------------------------------------------

  /** The names of types given by OID (0: none), for casting bound parameters. */
  protected async typeNames(oids: readonly number[]): Promise<(string | undefined)[]> {
    if (!oids.some((o) => o !== 0)) return oids.map(() => undefined);
    const rows = await this.port.evaluate(`SELECT ${oids.map((o) => (o === 0 ? 'NULL' : `pg_catalog.format_type(${o >>> 0}, NULL)`)).join(', ')}`);
    return (rows[0] ?? []).map((name) => name ?? undefined);
  }

  protected override async evaluationConnection(): Promise<BackendConnection> {
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

  protected async runDistributed(route: DistributedRoute, statement: { node: Node; sql: string }, frame: Frame, sql: string): Promise<void> {
    switch (route.kind) {
      case 'refused':
        return this.refuse(route.error);
      case 'rule-command':
        if (this.streaming) {
          return this.refuse(new PgError({
            code: SqlState.featureNotSupported,
            message: `parapool.${route.command.name} is not available in streaming_replication mode: every node holds the primary's copy of every table`,
            hint: 'distributed tables need backend_clustering_mode = native_replication',
          }));
        }
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
        const port: SessionPort = { ...this.port, status: this.status, activity: this.running ?? undefined };
        let outcome;
        try {
          outcome = await runDistributedStatement(route, statement, port);
        } catch (error) {
          if (error instanceof PgError && error.severity === 'ERROR') return this.refuse(error);
          throw error;
        }
        if (outcome.kind === 'run') {
          if (this.running) this.running.plan = 'router';
          return this.runOnNodes([frame.raw], outcome.write ? { kind: 'write', reason: 'rows on these nodes' } : { kind: 'read', reason: 'pinned key' }, sql, undefined, false, outcome.connections);
        }
        if (outcome.kind === 'read-nodes') return this.runDistributedRead(statement, outcome.nodes);
        this.status = outcome.status;
        for (const node of outcome.wroteOn) this.writtenNodes.add(node);
        for (const node of outcome.wroteOn) this.running?.nodes.add(node);
        await this.reconcileTransactions();
        this.write(serverMessages.readyForQuery(this.status));
      }
    }
  }

  protected cursorHost(): CursorHost {
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
  protected heldStatementKind(node: Node): 'fetch' | 'close' | 'execute' | 'deallocate' | 'prepare' | null {
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
  protected async runHeldStatement(node: Node, frame: Frame, sql: string): Promise<void> {
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

  /** What a distributed read borrows from this session. */
  /** `outsideTransaction`: the read may run its own transactions outside the session's (see distributedRead). */
  protected override readPort(outsideTransaction = false): DistributedReadPort {
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
      activity: this.running ?? undefined,
    };
  }

  /** Read or write, with write_function_list and the volatile functions of the session's database. */
  protected classify(node: Node): StatementClass {
    return classifyStatement(node, { writeFunctions: this.context.writeFunctions, volatileFunctions: this.catalog?.volatileFunctions });
  }

  /** Whether a statement changes data; BEGIN, SET and the like go to every node but change none. */
  protected writesData(node: Node): boolean {
    if ('TransactionStmt' in node || 'VariableSetStmt' in node || 'VariableShowStmt' in node) return false;
    return this.classify(node).kind === 'write';
  }

  protected noteNodeBoundState(statements: readonly ParsedStatement[]): void {
    for (const statement of statements) this.pinningState ??= connectionPinningState(statement.node);
    if (this.nodeBoundState !== null) return;
    for (const statement of statements) {
      const state = nodeBoundSessionState(statement.node);
      // A PREPARE or DECLARE of a read over several nodes is held by the proxy (sql-prepared-statements.ts, sql-cursors.ts).
      if (state === null || (this.catalog && routeDistributed(statement.node, this.catalog).kind !== 'none')) continue;
      this.nodeBoundState = state;
      return;
    }
  }

  protected workerFragments(): WorkerFragments {
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

  protected override sessionSettings(): Promise<SessionSettings> {
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
  protected async runDistributedRead(statement: { node: Node; sql: string }, nodes?: readonly number[], explain?: { analyze: boolean }): Promise<void> {
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
  protected async distributedRead(statement: { node: Node; sql: string }, nodes?: readonly number[], explain?: { analyze: boolean }, sink: ClientSink = this): Promise<ReadOutcome> {
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

  protected async runRuleCommandStatement(command: Parameters<typeof runRuleCommand>[0]): Promise<void> {
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
  protected async copyIntoDistributed(route: Extract<DistributedRoute, { kind: 'copy-in' }>, statement: { node: Node; sql: string }): Promise<void> {
    const { rule } = route;
    const connections = Array.from({ length: rule.nodeCount }, (_, node) => this.port.connectionFor(node));
    // Each row goes to its key's node: the router's tier, one fragment per node for the whole COPY.
    const fragments = connections.map((connection) => this.running?.fragment(connection.node.id, 'copy', 'router'));
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
    const { replies, failure, failed } = await router.finish();
    this.copyRouter = null;
    for (const [node, fragment] of fragments.entries()) {
      if (!fragment) continue;
      fragment.rows = Number(replies[node]?.tag?.split(' ').pop() ?? '0') || 0;
      fragment.finish(Boolean(failure || failed));
    }
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
}
