// Batches of the extended query protocol that the proxy answers itself: executions of multi-node reads (and of
// cursors over them), with the Parse, Bind, Describe and Close messages around them, answered as a node would
// answer them: descriptions from the main node with the bound formats, parameters written in as literals (binary
// ones read by a node first), rows in the bound formats, and Execute with a row limit served from a spool.

import type { Node } from '@pgsql/types';
import type { Catalog } from '../catalog/catalog';
import type { ClientSink } from '../executor/client-sink';
import type { ReadOutcome } from '../executor/plan-executor';
import { RowSpool } from '../executor/row-spool';
import { bindParameters } from '../planner/bound-parameters';
import { routeDistributed, type DistributedRoute } from '../planner/distributed-router';
import { parseSql } from '../planner/sql-parser';
import type { StatementClass } from '../planner/statement-classifier';
import type { BackendConnection } from '../backend/backend-connection';
import { describeStatement } from '../backend/describe-statement';
import { PgError } from '../protocol/errors';
import { decodeClose, decodeExecute, decodeParse, type BindMessage } from '../protocol/frontend-messages';
import type { HeldPortals } from './held-portals';
import { BackendCode, FrontendCode, type TransactionStatus } from '../protocol/message-codes';
import { textParameters } from '../backend/node-value-format';
import type { PendingMessage, PreparedStatement } from './pending-message';
import { columnFormats, describeWithFormats, ResultEncoder, wantsBinary, withFormats } from './result-formats';
import type { FieldDescription } from '../protocol/row-description';
import { serverMessages } from '../protocol/server-messages';
import { closeTarget, declareCursor, fetchFromCursor, fetchTarget, type CursorHost } from './sql-cursors';
import { SpooledPortal } from './spooled-portal';

/** What such a batch needs of the session. */
export interface ExtendedReadHost {
  readonly status: TransactionStatus;
  readonly catalog: Catalog;
  readonly client: ClientSink;
  readonly statements: Map<string, PreparedStatement>;
  readonly portals: Map<string, StatementClass>;
  readonly held: HeldPortals;
  /** Memory, then file, bounds of a spooled result. */
  readonly spoolLimits: { readonly memory: number; readonly file: number };
  statementBefore(messages: readonly PendingMessage[], end: number, name: string): PreparedStatement | undefined;
  /** The main node's connection, idle between statements. */
  mainConnection(): BackendConnection;
  /** A connection to the main node that is free now. */
  evaluationConnection(): Promise<BackendConnection>;
  typeNames(oids: readonly number[]): Promise<(string | undefined)[]>;
  nodesForBind(route: DistributedRoute, bind: BindMessage, statement: PreparedStatement): Promise<number[]>;
  /** A distributed read (on `nodes` only, when given), its frames written to `sink`. */
  read(statement: { node: Node; sql: string }, nodes: readonly number[] | undefined, sink: ClientSink): Promise<ReadOutcome>;
  cursorHost(): CursorHost;
  /** Fails the statement inside a transaction block, aborting the transaction on every node. */
  refuse(error: PgError): Promise<void>;
}

export class ExtendedDistributedReads {
  constructor(private readonly host: ExtendedReadHost) {}

  /** Whether a pinned read's bound keys live on more than one node. */
  private async spansNodes(statement: PreparedStatement, bind: BindMessage): Promise<boolean> {
    try {
      return (await this.host.nodesForBind(statement.route!, bind, statement)).length > 1;
    } catch (error) {
      if (error instanceof PgError && error.severity === 'ERROR') return false; // the routing path reports it
      throw error;
    }
  }

  /** How many leading messages of a batch only execute BEGIN (or START TRANSACTION): 0 when none. */
  transactionStartPrefix(messages: readonly PendingMessage[]): number {
    const portals = new Set<string>();
    const isBegin = (statement: PreparedStatement | undefined): boolean => statement?.beginsTransaction === true && !statement.route;
    let end = 0;
    for (const [index, message] of messages.entries()) {
      if (message.rejection) break;
      const code = message.frame.code;
      if (code === FrontendCode.parse && isBegin(message.statement)) end = index + 1;
      else if (code === FrontendCode.bind && isBegin(this.host.statementBefore(messages, index, message.statementName!))) portals.add(message.portal!);
      else if (code === FrontendCode.execute && portals.has(message.portal!)) end = index + 1;
      else break;
    }
    return end;
  }

  /** The route of a statement when it is a read of rows on several nodes, which the proxy answers itself. */
  multiNodeRead(statement: PreparedStatement | undefined): boolean {
    return statement?.route?.kind === 'select' || statement?.route?.kind === 'declare' || (statement?.route?.kind === 'pinned' && !statement.route.write) || this.heldCursorCommand(statement) !== null;
  }

  /** FETCH, MOVE or CLOSE of a cursor the proxy holds (not CLOSE ALL, which the nodes see too). */
  private heldCursorCommand(statement: PreparedStatement | undefined): 'fetch' | 'close' | null {
    if (!statement?.cursorCommand) return null;
    if (fetchTarget(statement.cursorCommand, this.host.held)) return 'fetch';
    const close = closeTarget(statement.cursorCommand, this.host.held);
    return close !== null && close !== '*' ? 'close' : null;
  }

  /**
   * A batch the proxy answers itself, without any node seeing its messages: executions of multi-node reads (new,
   * or portals the proxy holds), with the Parse, Describe and Close messages around them that name those reads.
   */
  async isBatch(messages: readonly PendingMessage[]): Promise<boolean> {
    let reads = 0;
    const portals = new Set<string>();
    for (const [index, message] of messages.entries()) {
      if (message.rejection) return false;
      switch (message.frame.code) {
        case FrontendCode.parse:
          if (!this.multiNodeRead(message.statement)) return false;
          break;
        case FrontendCode.bind: {
          const statement = this.host.statementBefore(messages, index, message.statementName!);
          if (!this.multiNodeRead(statement)) return false;
          // Keys on one node leave the batch to that node (its bytes relayed); keys on several make it a merged read.
          if (statement!.route?.kind !== 'pinned' || (await this.spansNodes(statement!, message.bind!))) reads++;
          portals.add(message.portal!);
          break;
        }
        case FrontendCode.describe:
        case FrontendCode.close:
          if (message.statementName !== undefined ? !this.multiNodeRead(this.host.statementBefore(messages, index, message.statementName)) : !portals.has(message.portal!) && !this.host.held.has(message.portal!)) return false;
          break;
        case FrontendCode.execute:
          if (this.host.held.has(message.portal!)) reads++;
          else if (!portals.has(message.portal!)) return false;
          break;
        default:
          return false;
      }
    }
    return reads > 0;
  }

  /**
   * Answers a batch of multi-node reads (see isBatch) as a node would: ParseComplete,
   * BindComplete, the descriptions (asked of the main node, with the bound result formats), then the read with its
   * parameters written in as literals (binary ones turned to text by a node), planned and run like a simple query,
   * and ReadyForQuery at the Sync. Rows stream straight through unless the Execute has a row limit or a column
   * needs a node to encode it: then they are spooled and handed out per Execute (see SpooledPortal).
   */
  async run(messages: readonly PendingMessage[]): Promise<void> {
    // Portals bound in this batch and not yet executed; `fields` once a Describe asked the main node for them.
    const bound = new Map<string, { statement: PreparedStatement; bind: BindMessage; fields?: FieldDescription[] }>();
    const fail = async (error: PgError): Promise<void> => {
      if (this.host.status !== 'I') {
        this.host.held.endTransaction(false);
        return this.host.refuse(error);
      }
      this.host.client.write(serverMessages.errorResponse(error));
      this.endExtendedRead();
    };
    try {
      for (const [index, message] of messages.entries()) {
        switch (message.frame.code) {
          case FrontendCode.parse: {
            const name = message.statement!.name;
            if (name !== '' && this.host.statements.has(name)) return await fail(new PgError({ code: '42P05', message: `prepared statement "${name}" already exists` }));
            this.host.statements.set(name, message.statement!);
            this.host.client.write(serverMessages.parseComplete);
            break;
          }
          case FrontendCode.bind: {
            const statement = this.host.statementBefore(messages, index, message.statementName!)!;
            const portal = message.portal!;
            if (portal !== '' && this.host.held.has(portal)) return await fail(new PgError({ code: '42P03', message: `portal "${portal}" already exists` }));
            this.host.held.close(portal);
            bound.set(portal, { statement, bind: message.bind! });
            this.host.portals.set(portal, message.statementClass);
            this.host.client.write(serverMessages.bindComplete);
            break;
          }
          case FrontendCode.describe: {
            if (message.statementName === undefined && !bound.has(message.portal!)) {
              this.host.client.write(await this.host.held.get(message.portal!)!.describe());
              break;
            }
            const statement = message.statementName !== undefined ? this.host.statementBefore(messages, index, message.statementName)! : bound.get(message.portal!)!.statement;
            const command = this.heldCursorCommand(statement);
            if (command) {
              if (message.statementName !== undefined) this.host.client.write(serverMessages.parameterDescription([]));
              const cursor = command === 'fetch' ? this.host.held.get(fetchTarget(statement.cursorCommand!, this.host.held)!)! : null;
              const formats = message.statementName !== undefined ? [] : bound.get(message.portal!)!.bind.resultFormats;
              this.host.client.write(cursor ? withFormats(await cursor.describe(), formats) : serverMessages.noData);
              break;
            }
            const parse = decodeParse(statement.parseFrame.subarray(5));
            const { frames, fields } = await describeStatement(this.host.mainConnection(), parse.sql, parse.parameterTypes);
            const portal = message.statementName === undefined ? bound.get(message.portal!)! : null;
            if (portal) portal.fields = fields;
            for (const frame of frames) {
              if (!portal) this.host.client.write(frame);
              else if (frame[0] === BackendCode.rowDescription) this.host.client.write(describeWithFormats(fields, columnFormats(portal.bind.resultFormats, fields.length)));
              else if (frame[0] !== BackendCode.parameterDescription) this.host.client.write(frame);
            }
            break;
          }
          case FrontendCode.execute: {
            const { maxRows } = decodeExecute(message.frame.payload);
            const held = this.host.held.get(message.portal!);
            if (held && !bound.has(message.portal!)) {
              await held.fetch(maxRows, this.host.client, () => this.host.evaluationConnection());
              break;
            }
            const portal = bound.get(message.portal!)!;
            const parse = decodeParse(portal.statement.parseFrame.subarray(5));
            const parameters = await textParameters(() => this.host.evaluationConnection(), parse.sql, parse.parameterTypes, portal.bind);
            const typeNames = await this.host.typeNames(parse.parameterTypes);
            const sql = bindParameters(parse.sql, parameters.map((p) => (p === null ? null : p.toString('utf8'))), typeNames);
            const parsed = parseSql(sql);
            if (!parsed.ok) return await fail(parsed.error);
            const statement = parsed.statements[0];
            // From here on the portal is the proxy's: a later Execute fetches from it, a Describe reads it.
            bound.delete(message.portal!);
            const command = this.heldCursorCommand(portal.statement);
            if (command === 'fetch') {
              const error = await fetchFromCursor(this.host.cursorHost(), statement.node, false, portal.bind.resultFormats);
              if (error) return await fail(error);
              break;
            }
            if (command === 'close') {
              this.host.held.close(closeTarget(statement.node, this.host.held)!);
              this.host.client.write(serverMessages.commandComplete('CLOSE CURSOR'));
              break;
            }
            const route = routeDistributed(statement.node, this.host.catalog);
            if (route.kind === 'declare') {
              const error = await declareCursor(this.host.cursorHost(), route.name, route.options, route.statement);
              if (error) return await fail(error);
              break;
            }
            let nodes: number[] | undefined;
            if (route.kind === 'pinned') nodes = await this.host.nodesForBind(route, { ...portal.bind, parameterFormats: [], parameters }, portal.statement);
            const described = async () => {
              const fields = portal.fields ?? (await describeStatement(this.host.mainConnection(), parse.sql, parse.parameterTypes)).fields;
              const formats = columnFormats(portal.bind.resultFormats, fields.length);
              return { encoder: new ResultEncoder(fields, formats), description: describeWithFormats(fields, formats) };
            };
            const formatted = wantsBinary(portal.bind.resultFormats) || maxRows > 0 ? await described() : null;
            if (maxRows === 0 && !formatted?.encoder.needsNode) {
              const outcome = await this.host.read(statement, nodes, this.extendedSink(formatted?.encoder ?? null));
              if (!outcome.ok) return await fail(outcome.error);
              this.host.held.set(message.portal!, new SpooledPortal(new RowSpool(0, 0), null, async () => (formatted ?? (await described())).description));
              break;
            }
            const spool = new RowSpool(this.host.spoolLimits.memory, this.host.spoolLimits.file);
            const spooled = new SpooledPortal(spool, formatted!.encoder, async () => formatted!.description);
            this.host.held.set(message.portal!, spooled);
            const outcome = await this.host.read(statement, nodes, spool.sink());
            if (!outcome.ok) return await fail(outcome.error);
            if (spool.failure) return await fail(spool.failure);
            await spooled.fetch(maxRows, this.host.client, () => this.host.evaluationConnection());
            break;
          }
          default: {
            const close = decodeClose(message.frame.payload);
            if (close.kind === 'S') this.host.statements.delete(close.name);
            else {
              this.host.portals.delete(close.name);
              this.host.held.close(close.name);
            }
            this.host.client.write(serverMessages.closeComplete);
          }
        }
      }
    } catch (error) {
      if (error instanceof PgError && error.severity === 'ERROR') return fail(error);
      throw error;
    }
    this.endExtendedRead();
  }

  /** ReadyForQuery at the Sync; outside a transaction block the Sync ends every portal, as on a node. */
  private endExtendedRead(): void {
    if (this.host.status === 'I') this.host.held.endTransaction(true);
    this.host.client.write(serverMessages.readyForQuery(this.host.status));
  }

  /** Where an Execute's streamed rows go: the client, without the RowDescription, in the bound formats. */
  private extendedSink(encoder: ResultEncoder | null): ClientSink {
    return {
      write: (bytes) => {
        if (bytes[0] === BackendCode.rowDescription) return true;
        if (bytes[0] === BackendCode.dataRow && encoder && !encoder.isIdentity) return this.host.client.write(encoder.encodeNative(bytes));
        return this.host.client.write(bytes);
      },
      onceDrained: (callback) => this.host.client.onceDrained(callback),
      closed: false,
    };
  }
}
