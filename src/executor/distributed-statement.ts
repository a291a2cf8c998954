// Runs a simple-protocol statement routed by the partition rules: finds the nodes that own its keys, then either
// hands it back to the session to run unchanged on one node (relayed as bytes), or runs it as parts on several
// nodes and answers as one server would. A write on several nodes outside a transaction commits atomically (2PC).

import type { Node } from '@pgsql/types';
import { deparseSync } from 'pgsql-deparser';
import { nodesForKeys } from '../catalog/key-placement';
import type { DistributedRule } from '../catalog/partition-rule';
import { qualifiedName, quoteLiteral } from '../catalog/partition-rule';
import type { KeyValue } from '../planner/key-values';
import { keyValueOf } from '../planner/key-values';
import type { DistributedRoute } from '../planner/distributed-router';
import type { BackendConnection } from '../backend/backend-connection';
import { describeNode } from '../cluster/backend-node';
import { PgError, SqlState } from '../protocol/errors';
import type { TransactionStatus } from '../protocol/message-codes';
import { collectReply, mergeReplies, type NodeReply } from './scatter-write';
import { commitEverywhere } from './two-phase-commit';
import { finishingFragment, type FragmentActivity, type RunningStatement } from '../cluster/statement-activity';

/** What the session lends a distributed statement. */
export interface SessionPort {
  readonly status: TransactionStatus;
  /** The session's connection to a node, or an error naming the node when it is out of service. */
  connectionFor(nodeId: number): BackendConnection;
  /** Runs SQL on the main node, returning text rows (for key expressions and placement). */
  evaluate(sql: string): Promise<(string | null)[][]>;
  write(bytes: Buffer): boolean;
  /** The client statement this runs for, whose fragments SHOW parapool_queries and the metrics see. */
  readonly activity?: RunningStatement;
}

/** Fragments of a statement the executor runs itself, under the plan kind they belong to. */
function fragmentsOf(port: SessionPort, plan: string, nodes: readonly number[], step: string): (FragmentActivity | undefined)[] {
  return nodes.map((node) => port.activity?.fragment(node, step, plan));
}

export type DistributedOutcome =
  /** The session runs the statement unchanged on these connections (one node: relayed as is). */
  | { readonly kind: 'run'; readonly connections: BackendConnection[]; readonly write: boolean }
  /** A read of keys held by several nodes: the distributed planner runs it on those nodes. */
  | { readonly kind: 'read-nodes'; readonly nodes: number[] }
  /** The reply frames are written; the session sends ReadyForQuery with this status. */
  | { readonly kind: 'answered'; readonly status: TransactionStatus; readonly wroteOn: readonly number[] };

/** The text of each key value; parameters come from `parameters` (extended protocol, text format). */
export async function keyTexts(keys: readonly KeyValue[], port: SessionPort, parameters?: readonly (Buffer | null)[]): Promise<(string | null)[]> {
  const texts: (string | null)[] = [];
  const expressions: { index: number; node: Node }[] = [];
  keys.forEach((key, index) => {
    if (key.kind === 'const') texts.push(key.text);
    else if (key.kind === 'param') {
      const value = parameters?.[key.number - 1];
      if (value === undefined) throw new PgError({ code: '42P02', message: `there is no parameter $${key.number}` });
      texts.push(value === null ? null : value.toString('utf8'));
    } else {
      texts.push(null);
      expressions.push({ index, node: key.node });
    }
  });
  if (expressions.length > 0) {
    const rows = await port.evaluate(`SELECT ${expressions.map((e) => `(${deparseSync(e.node)})::text`).join(', ')}`);
    expressions.forEach((e, i) => (texts[e.index] = rows[0]?.[i] ?? null));
  }
  return texts;
}

/** The distinct nodes owning the given keys, in node order. */
export async function nodesOfKeys(rule: DistributedRule, keys: readonly KeyValue[], port: SessionPort, parameters?: readonly (Buffer | null)[]): Promise<number[]> {
  const nodes = await nodesForKeys(rule, await keyTexts(keys, port, parameters), (sql) => port.evaluate(sql));
  return [...new Set(nodes)].sort((a, b) => a - b);
}

export async function runDistributedStatement(route: DistributedRoute, statement: { node: Node; sql: string }, port: SessionPort): Promise<DistributedOutcome> {
  switch (route.kind) {
    case 'pinned': {
      const nodes = await nodesOfKeys(route.rule, route.keys, port);
      if (!route.write && nodes.length > 1) return { kind: 'read-nodes', nodes };
      if (nodes.length === 1) return { kind: 'run', connections: [port.connectionFor(nodes[0])], write: route.write };
      return scatter(nodes.map((n) => ({ connection: port.connectionFor(n), sql: statement.sql })), port);
    }
    case 'all-nodes': {
      const nodes = Array.from({ length: route.rule.nodeCount }, (_, i) => i);
      return scatter(nodes.map((n) => ({ connection: port.connectionFor(n), sql: statement.sql })), port);
    }
    case 'insert-values':
      return insertValues(route, statement, port);
    case 'insert-select':
      return insertSelect(route, statement, port);
    default:
      throw new Error(`route ${route.kind} is not run here`);
  }
}

/** The table's column names in order, as the main node has them. */
export async function tableColumnNames(rule: DistributedRule, port: SessionPort): Promise<string[]> {
  const rows = await port.evaluate(
    `SELECT attname FROM pg_attribute WHERE attrelid = to_regclass(${quoteLiteral(qualifiedName(rule.table))}) AND attnum > 0 AND NOT attisdropped ORDER BY attnum`,
  );
  return rows.map((r) => r[0]!);
}

/** The position of the key among an INSERT's columns; throws when the statement does not supply the key. */
export async function keyPosition(rule: DistributedRule, columns: readonly string[] | null, port: SessionPort): Promise<number> {
  const names = columns ?? (await tableColumnNames(rule, port));
  const index = names.indexOf(rule.keyColumn);
  if (index < 0) {
    throw new PgError({
      code: SqlState.featureNotSupported,
      message: `an INSERT into distributed table "${rule.table.name}" must give its key column "${rule.keyColumn}"`,
      hint: 'a default computed on a node (a sequence, say) would be computed after the row had to choose its node',
    });
  }
  return index;
}

async function insertValues(route: Extract<DistributedRoute, { kind: 'insert-values' }>, statement: { node: Node; sql: string }, port: SessionPort): Promise<DistributedOutcome> {
  const { rule } = route;
  const index = await keyPosition(rule, route.columns, port);
  const keys = route.rows.map((row) => {
    const value = row[index];
    if (!value || 'SetToDefault' in (value as object)) {
      throw new PgError({ code: SqlState.featureNotSupported, message: `the key column "${rule.keyColumn}" of distributed table "${rule.table.name}" cannot take its DEFAULT`, hint: 'give the key value in the statement' });
    }
    return keyValueOf(value);
  });
  const rowNodes = await nodesForKeys(rule, await keyTexts(keys, port), (sql) => port.evaluate(sql));
  const nodes = [...new Set(rowNodes)].sort((a, b) => a - b);
  if (nodes.length === 1) return { kind: 'run', connections: [port.connectionFor(nodes[0])], write: true };
  const insert = (statement.node as { InsertStmt: Record<string, unknown> }).InsertStmt;
  const select = (insert.selectStmt as { SelectStmt: Record<string, unknown> }).SelectStmt;
  const lists = select.valuesLists as unknown[];
  const parts = nodes.map((node) => {
    const subset = lists.filter((_, i) => rowNodes[i] === node);
    const sql = deparseSync({ InsertStmt: { ...insert, selectStmt: { SelectStmt: { ...select, valuesLists: subset } } } } as Node);
    return { connection: port.connectionFor(node), sql };
  });
  return scatter(parts, port, rowNodes.map((n) => nodes.indexOf(n)));
}

/** Opens a transaction on each connection; on a failure, closes the ones opened and rethrows. */
export async function beginEverywhere(connections: readonly BackendConnection[]): Promise<void> {
  const outcomes = await Promise.allSettled(connections.map((c) => c.query('BEGIN')));
  const failed = outcomes.find((o): o is PromiseRejectedResult => o.status === 'rejected');
  if (failed) {
    await Promise.all(connections.map((c) => c.query('ROLLBACK').catch(() => undefined)));
    throw failed.reason;
  }
}

const fetchSize = 1000;

/**
 * INSERT ... SELECT from replicated tables: the source rows are read in batches through a cursor on the main node
 * and inserted on their nodes as VALUES, keeping the statement's ON CONFLICT and RETURNING. All of it runs in one
 * transaction per node, committed atomically.
 */
async function insertSelect(route: Extract<DistributedRoute, { kind: 'insert-select' }>, statement: { node: Node; sql: string }, port: SessionPort): Promise<DistributedOutcome> {
  const { rule } = route;
  const insert = (statement.node as { InsertStmt: Record<string, unknown> }).InsertStmt;
  const columns = route.columns ?? (await tableColumnNames(rule, port));
  const keyIndex = await keyPosition(rule, columns, port);
  const connections = Array.from({ length: rule.nodeCount }, (_, node) => port.connectionFor(node));
  const reader = connections[0];
  const own = port.status === 'I';
  // The rows pass through the proxy on their way to their nodes: the intermediate tier's shape.
  const [source] = fragmentsOf(port, 'gather', [reader.node.id], 'source');
  const inserts = fragmentsOf(port, 'gather', connections.map((c) => c.node.id), 'insert');
  const fail = async (frame: Buffer | null, error?: unknown): Promise<DistributedOutcome> => {
    for (const fragment of [source, ...inserts]) fragment?.finish(true);
    if (own) await Promise.all(connections.map((c) => c.query('ROLLBACK').catch(() => undefined)));
    if (error) throw error;
    port.write(frame!);
    return { kind: 'answered', status: own ? 'I' : 'E', wroteOn: [] };
  };
  if (own) await beginEverywhere(connections);
  const replies: NodeReply[][] = connections.map(() => []);
  try {
    await reader.query(`DECLARE parapool_insert_source NO SCROLL CURSOR FOR ${deparseSync(insert.selectStmt as Node)}`);
    for (;;) {
      const { rows } = await reader.query(`FETCH ${fetchSize} FROM parapool_insert_source`);
      if (rows.length === 0) break;
      if (source) source.rows += rows.length;
      if (rows[0].length <= keyIndex) throw new PgError({ code: '42601', message: `INSERT has more target columns than expressions: the SELECT gives no value for key "${rule.keyColumn}"` });
      const nodes = await nodesForKeys(rule, rows.map((r) => r[keyIndex]), (sql) => port.evaluate(sql));
      const batch = await Promise.all(
        connections.map((connection, node) => {
          const mine = rows.filter((_, i) => nodes[i] === node);
          if (mine.length === 0) return null;
          const valuesLists = mine.map((row) => ({ List: { items: row.map((v) => (v === null ? { A_Const: { isnull: true } } : { A_Const: { sval: { sval: v } } })) } }));
          const cols = columns.slice(0, mine[0].length).map((name) => ({ ResTarget: { name } }));
          return collectReply(connection, deparseSync({ InsertStmt: { ...insert, cols, selectStmt: { SelectStmt: { valuesLists, limitOption: 'LIMIT_OPTION_DEFAULT', op: 'SETOP_NONE' } } } } as Node));
        }),
      );
      for (const [node, reply] of batch.entries()) {
        if (!reply) continue;
        if (reply.error) return fail(reply.error);
        replies[node].push(reply);
      }
    }
    await reader.query('CLOSE parapool_insert_source');
    source?.finish();
  } catch (error) {
    return fail(null, error);
  }
  const merged = connections.map((connection, node): NodeReply => ({
    connection,
    rowDescription: replies[node].find((r) => r.rowDescription)?.rowDescription ?? null,
    rows: replies[node].flatMap((r) => r.rows),
    notices: replies[node].flatMap((r) => r.notices),
    tag: `INSERT 0 ${replies[node].reduce((n, r) => n + BigInt(r.tag?.split(' ').pop() ?? '0'), 0n)}`,
    error: null,
    errorCode: null,
  }));
  if (own) await commitEverywhere(connections);
  for (const fragment of inserts) fragment?.finish();
  for (const frame of mergeReplies(merged)) port.write(frame);
  return { kind: 'answered', status: own ? 'I' : 'T', wroteOn: own ? [] : connections.map((c) => c.node.id) };
}

/**
 * Runs parts on several nodes and writes one answer. Outside a transaction the parts run in one and commit with
 * 2PC; inside the client's transaction they join it. On an error the first node's error is relayed.
 */
async function scatter(parts: { connection: BackendConnection; sql: string }[], port: SessionPort, order?: number[]): Promise<DistributedOutcome> {
  const own = port.status === 'I';
  if (own) await beginEverywhere(parts.map((p) => p.connection));
  // Each part runs on the node its rows belong to: the router's tier, on several nodes at once.
  const fragments = fragmentsOf(port, 'router', parts.map((p) => p.connection.node.id), 'write');
  const outcomes = await Promise.allSettled(parts.map((p, i) => finishingFragment(fragments[i], collectReply(p.connection, p.sql), (reply) => reply.error !== null)));
  const lost = outcomes.find((o): o is PromiseRejectedResult => o.status === 'rejected');
  if (lost) {
    if (own) await Promise.all(parts.map((p) => p.connection.query('ROLLBACK').catch(() => undefined)));
    throw new PgError({ code: SqlState.connectionFailure, message: `lost a node during the statement: ${(lost.reason as Error).message}` });
  }
  const replies = outcomes.map((o) => (o as PromiseFulfilledResult<NodeReply>).value);
  const failed = replies.find((r) => r.error);
  if (failed) {
    if (own) await Promise.all(parts.map((p) => p.connection.query('ROLLBACK').catch(() => undefined)));
    port.write(failed.error!);
    return { kind: 'answered', status: own ? 'I' : 'E', wroteOn: [] };
  }
  if (own) {
    try {
      await commitEverywhere(parts.map((p) => p.connection));
    } catch (error) {
      if (error instanceof PgError) throw error;
      throw new PgError({ code: SqlState.connectionFailure, message: `the commit across ${parts.map((p) => describeNode(p.connection.node)).join(', ')} failed: ${(error as Error).message}` });
    }
  }
  for (const frame of mergeReplies(replies, order)) port.write(frame);
  return { kind: 'answered', status: own ? 'I' : 'T', wroteOn: own ? [] : parts.map((p) => p.connection.node.id) };
}
