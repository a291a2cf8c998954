// What the session reads in a statement's parse tree or text (COMMIT, ROLLBACK, DROP DATABASE, EXPLAIN), and the
// constants its layers share.

import { type Node } from '@pgsql/types';
import { type StatementClass } from '../planner/statement-classifier';
import { type DistributedRoute } from '../planner/distributed-router';
import { type PreparedStatement } from './pending-message';
import { BackendConnection } from '../backend/backend-connection';
import { decodeParse } from '../protocol/frontend-messages';

/** Stands for "the unnamed statement holds a pinned copy" in a node's preparedStatements. */
export const pinnedStatement = { name: '', pinned: true };

export const readClass: StatementClass = { kind: 'read', reason: 'no statement' };

/**
 * A statement every node rejects at parse time: sent in place of one the proxy refuses, so the nodes fail at
 * the same point of the exchange (rolling back what PostgreSQL would roll back) and the client sees the proxy's
 * error instead of the node's.
 */
export const rejectionMarker = 'PARAPOOL_REJECTED_STATEMENT';

/** The database a DROP DATABASE names; null for any other statement. */
export function droppedDatabase(node: Node): string | null {
  return (node as { DropdbStmt?: { dbname?: string } }).DropdbStmt?.dbname ?? null;
}

/**
 * ROLLBACK (or ABORT) of the whole transaction. N.B. not COMMIT: a failed transaction's COMMIT answers ROLLBACK
 * without an error, and a client that saw no error would take it for a commit.
 */
export function isRollback(node: Node): boolean {
  return (node as { TransactionStmt?: { kind: string } }).TransactionStmt?.kind === 'TRANS_STMT_ROLLBACK';
}

/** The same, for a prepared statement's text. */
export const rollbackText = /^\s*(rollback|abort)\b(?!\s+(to|prepared)\b)/i;

/** COMMIT (or END) of the transaction as a prepared statement's text; not COMMIT PREPARED. */
export const commitText = /^\s*(commit|end)(\s+(work|transaction))?(\s+and\s+no\s+chain)?\s*;?\s*$/i;

export function statementSql(statement: PreparedStatement | undefined): string {
  return statement ? decodeParse(statement.parseFrame.subarray(5)).sql : '';
}

/**
 * Settings a lost connection reported (ParameterStatus) that a new one lacks: what a session whose every
 * connection was lost can still take along. Others set with SET are not reported by the node, and are lost.
 */
export function reportedSettings(lost: BackendConnection, replacement: BackendConnection): [string, string][] {
  const settable = ['application_name', 'client_encoding', 'DateStyle', 'IntervalStyle', 'TimeZone', 'standard_conforming_strings', 'search_path', 'default_transaction_read_only'];
  const out: [string, string][] = [];
  for (const name of settable) {
    const value = lost.parameters.get(name);
    if (value !== undefined && value !== replacement.parameters.get(name)) out.push([name, value]);
  }
  return out;
}

/** Whether a statement so routed changes rows of a distributed table. */
export function writesDistributedRows(route: DistributedRoute | null | undefined): boolean {
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

export function isCommit(node: Node): boolean {
  const kind = (node as { TransactionStmt?: { kind: string } }).TransactionStmt?.kind;
  return kind === 'TRANS_STMT_COMMIT';
}

export function negotiateProtocolVersion(unsupported: string[]): Buffer {
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
export function explainedStatement(sql: string, node: Node): { node: Node; sql: string } {
  const prefix = /^\s*explain\s*(\([^)]*\)\s*|analy[sz]e\s+|verbose\s+)*/i.exec(sql);
  return { node, sql: sql.slice(prefix ? prefix[0].length : 0) };
}
