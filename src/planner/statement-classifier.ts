// Reads versus writes, decided on the parse tree. In replicated mode a read runs on one node and a write on
// every node, so a misclassified write would silently diverge the replicas: when in doubt, it is a write.

import type { Node } from '@pgsql/types';
import { functionName, walkAst } from './ast-walk';
import { nodeTag } from './sql-parser';

export type StatementClass =
  | { kind: 'read'; reason: string }
  /**
   * everyServer: the statement changes only the session's state (BEGIN, COMMIT, SET, DISCARD, ...): in
   * streaming replication it goes to every node the session reads from, where other writes go to the primary.
   */
  | { kind: 'write'; reason: string; everyServer?: true }
  /** Answered by the proxy itself (SHOW pool_nodes and friends). */
  | { kind: 'admin'; command: string };

/** What the classifier knows of the functions a statement calls. */
export interface FunctionEffects {
  /** write_function_list, compiled (compileWriteFunctions): calls that make a SELECT a write. */
  readonly writeFunctions: RegExp | null;
  /**
   * Names of the database's own functions (outside pg_catalog) with a VOLATILE overload: a SELECT that calls
   * one may change data, so it runs on every node, as pgpool-II decides by volatility.
   */
  readonly volatileFunctions?: ReadonlySet<string>;
}

/** SHOW commands the proxy answers instead of a node. */
export const adminShowCommands = new Set([
  'pool_nodes', 'pool_version', 'pool_pools', 'pool_processes', 'pool_status', 'pool_health_check_stats', 'pool_backend_stats', 'pool_cache',
  'parapool_rules', 'parapool_queries', 'watchdog',
]);

/** Statements pgpool-II's pool_backend_stats counts as other_cnt; every statement not named here but DML is DDL. */
const otherCommands = new Set([
  'CheckPointStmt', 'DeallocateStmt', 'DiscardStmt', 'ExecuteStmt', 'ExplainStmt', 'ListenStmt', 'LoadStmt', 'LockStmt', 'NotifyStmt',
  'PrepareStmt', 'VariableSetStmt', 'VariableShowStmt', 'TransactionStmt', 'UnlistenStmt',
]);

/** pgpool-II's class of a statement in SHOW pool_backend_stats, from its parse tree's tag alone. */
export function commandKind(node: Node): 'select' | 'insert' | 'update' | 'delete' | 'ddl' | 'other' {
  const tag = nodeTag(node);
  switch (tag) {
    case 'SelectStmt':
      return 'select';
    case 'InsertStmt':
      return 'insert';
    case 'UpdateStmt':
      return 'update';
    case 'DeleteStmt':
      return 'delete';
    default:
      return otherCommands.has(tag) ? 'other' : 'ddl';
  }
}

export function compileWriteFunctions(patterns: readonly string[]): RegExp | null {
  if (patterns.length === 0) return null;
  return new RegExp(`^(?:pg_catalog\\.)?(?:${patterns.map((p) => `(?:${p})`).join('|')})$`, 'i');
}

export function classifyStatement(node: Node, functions: FunctionEffects): StatementClass {
  const tag = nodeTag(node);
  const body = (node as unknown as Record<string, Record<string, unknown>>)[tag];
  switch (tag) {
    case 'SelectStmt':
      return classifySelect(body, functions);
    case 'VariableShowStmt': {
      const name = String(body.name ?? '').toLowerCase();
      if (adminShowCommands.has(name)) return { kind: 'admin', command: name };
      return { kind: 'read', reason: 'SHOW reads a setting' };
    }
    case 'ExplainStmt': {
      const options = (body.options as { DefElem?: { defname?: string; arg?: unknown } }[] | undefined) ?? [];
      const analyze = options.some((o) => o.DefElem?.defname === 'analyze' && !isFalse(o.DefElem.arg));
      if (!analyze) return { kind: 'read', reason: 'EXPLAIN without ANALYZE runs nothing' };
      const inner = classifyStatement(body.query as Node, functions);
      return inner.kind === 'read' ? { kind: 'read', reason: 'EXPLAIN ANALYZE of a read' } : { kind: 'write', reason: 'EXPLAIN ANALYZE runs a write' };
    }
    case 'CopyStmt': {
      if (body.is_from) return { kind: 'write', reason: 'COPY FROM writes' };
      if (body.query) {
        const inner = classifyStatement(body.query as Node, functions);
        return inner.kind === 'read' ? { kind: 'read', reason: 'COPY TO of a read' } : { kind: 'write', reason: 'COPY TO of a statement that writes' };
      }
      return { kind: 'read', reason: 'COPY TO reads a table' };
    }
    case 'TransactionStmt': {
      // Two-phase commit's statements act on the primary's prepared transactions, not on the session.
      const kind = String(body.kind);
      if (kind === 'TRANS_STMT_PREPARE' || kind === 'TRANS_STMT_COMMIT_PREPARED' || kind === 'TRANS_STMT_ROLLBACK_PREPARED') return { kind: 'write', reason: `${kind} runs on every node` };
      return { kind: 'write', reason: 'transaction control runs on every node', everyServer: true };
    }
    case 'VariableSetStmt':
    case 'DiscardStmt':
      return { kind: 'write', reason: `${tag} changes the session on every node`, everyServer: true };
    default:
      return { kind: 'write', reason: `${tag} runs on every node` };
  }
}

function isFalse(arg: unknown): boolean {
  const text = JSON.stringify(arg ?? '').toLowerCase();
  return text.includes('"false"') || text.includes('"off"') || text.includes('"ival":0');
}

function classifySelect(body: Record<string, unknown>, functions: FunctionEffects): StatementClass {
  if (body.intoClause) return { kind: 'write', reason: 'SELECT INTO creates a table' };
  let verdict: StatementClass = { kind: 'read', reason: 'SELECT reads' };
  walkAst({ SelectStmt: body }, (tag, inner) => {
    if (verdict.kind === 'write') return;
    if (tag === 'SelectStmt' && Array.isArray(inner.lockingClause) && inner.lockingClause.length > 0) {
      verdict = { kind: 'write', reason: 'SELECT ... FOR UPDATE/SHARE locks rows on every node' };
    } else if (tag === 'InsertStmt' || tag === 'UpdateStmt' || tag === 'DeleteStmt' || tag === 'MergeStmt') {
      verdict = { kind: 'write', reason: 'a WITH clause modifies data' };
    } else if (tag === 'FuncCall') {
      const name = functionName(inner);
      if (functions.writeFunctions?.test(name)) verdict = { kind: 'write', reason: `function ${name}() is in write_function_list` };
      else if (functions.volatileFunctions?.has(name.slice(name.lastIndexOf('.') + 1))) verdict = { kind: 'write', reason: `function ${name}() is volatile` };
    }
  });
  return verdict;
}

/**
 * DDL after which the definitions the proxy reads may differ: views (which reads expand) and SQL or PL/pgSQL
 * routines (checked for what they read) created, replaced, dropped, renamed or moved, drops that take them
 * with them (CASCADE, a schema), and tables' column defaults (see volatile-defaults.ts) made, changed or dropped.
 */
export function mayChangeDefinitions(node: Node): boolean {
  const tag = Object.keys(node)[0];
  const body = (node as unknown as Record<string, Record<string, unknown>>)[tag];
  switch (tag) {
    case 'ViewStmt':
    case 'AlterObjectSchemaStmt':
    case 'CreateFunctionStmt':
    case 'AlterFunctionStmt':
      return true;
    case 'DropStmt':
      return ['OBJECT_VIEW', 'OBJECT_SCHEMA', 'OBJECT_FUNCTION', 'OBJECT_PROCEDURE', 'OBJECT_ROUTINE', 'OBJECT_TABLE'].includes(body.removeType as string) || body.behavior === 'DROP_CASCADE';
    case 'CreateStmt':
      // Defaults the catalog keeps (volatile-defaults.ts), and the sequences of serial and identity columns.
      return /"CONSTR_(DEFAULT|IDENTITY)"|"sval":"(small|big)?serial[248]?"/.test(JSON.stringify(body));
    case 'RenameStmt':
      return ['OBJECT_VIEW', 'OBJECT_SCHEMA', 'OBJECT_TABLE', 'OBJECT_COLUMN', 'OBJECT_FUNCTION', 'OBJECT_PROCEDURE', 'OBJECT_ROUTINE'].includes(body.renameType as string);
    case 'AlterTableStmt':
      return body.objtype === 'OBJECT_VIEW' || /"(CONSTR_DEFAULT|CONSTR_IDENTITY|AT_ColumnDefault|AT_AddColumn|AT_DropColumn|AT_AddIdentity|AT_DropIdentity)"/.test(JSON.stringify(body));
    default:
      return false;
  }
}

/** CREATE TEMPORARY TABLE / VIEW / SEQUENCE (or AS SELECT): objects only the session's own node sessions see. */
export function createsTemporaryObject(node: Node): boolean {
  return JSON.stringify(node).includes('"relpersistence":"t"');
}

/** DECLARE's CURSOR_OPT_HOLD bit. */
export const cursorHoldOption = 0x20;

/** Session-level advisory lock functions: the lock lives as long as the node's session (the _xact_ ones do not). */
const sessionLockFunctions = new Set(['pg_advisory_lock', 'pg_advisory_lock_shared', 'pg_try_advisory_lock', 'pg_try_advisory_lock_shared']);

/**
 * What a statement leaves in the node's session beyond settings, which a new connection to the node would lack
 * (so the session cannot move to one unnoticed): LISTEN, a cursor WITH HOLD, SQL PREPARE, session advisory locks.
 * Temporary objects are createsTemporaryObject's.
 */
export function nodeBoundSessionState(node: Node): string | null {
  const tag = nodeTag(node);
  if (tag === 'ListenStmt') return 'LISTEN registrations';
  if (tag === 'PrepareStmt') return 'prepared statements (PREPARE)';
  if (tag === 'DeclareCursorStmt') {
    const options = (node as { DeclareCursorStmt: { options?: number } }).DeclareCursorStmt.options ?? 0;
    if (options & cursorHoldOption) return 'cursors WITH HOLD';
  }
  let found: string | null = null;
  walkAst(node, (inner, fields) => {
    if (!found && inner === 'FuncCall' && sessionLockFunctions.has(functionName(fields).replace(/^pg_catalog\./, ''))) found = 'advisory locks';
  });
  return found;
}

/**
 * What, besides nodeBoundSessionState, keeps a session on its node connections under transaction pooling: a setting
 * changed for the session (SET without LOCAL, RESET, set_config(..., false)), which another session would inherit
 * with the connection, and DISCARD or DEALLOCATE, which drop prepared statements that other sessions may have made
 * on the connection. Reopening a connection restores settings (session-connections.ts), so only pooling asks this.
 */
export function connectionPinningState(node: Node): string | null {
  const tag = nodeTag(node);
  if (tag === 'VariableSetStmt') {
    const body = (node as { VariableSetStmt: { is_local?: boolean; name?: string } }).VariableSetStmt;
    // SET TRANSACTION changes the running transaction only.
    return body.is_local || body.name === 'TRANSACTION' ? null : 'session settings (SET)';
  }
  if (tag === 'DiscardStmt') return 'DISCARD';
  if (tag === 'DeallocateStmt') return 'DEALLOCATE';
  if (tag === 'LoadStmt') return 'LOAD';
  let found: string | null = null;
  walkAst(node, (inner, fields) => {
    if (found || inner !== 'FuncCall' || functionName(fields).replace(/^pg_catalog\./, '') !== 'set_config') return;
    const args = (fields as { args?: Node[] }).args ?? [];
    const local = args[2] as { A_Const?: { boolval?: { boolval?: boolean } } } | undefined;
    // Only a literal true keeps the change inside the transaction; anything else may outlive it.
    if (local?.A_Const?.boolval?.boolval !== true) found = 'session settings (set_config)';
  });
  return found;
}
