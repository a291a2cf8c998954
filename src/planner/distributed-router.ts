// Where a statement that touches distributed tables runs. Reads pinned to one node's keys go to that node;
// writes go to the nodes owning their rows (INSERT rows split by key, UPDATE/DELETE to the pinned nodes or to
// all). Shapes that would need rows from several nodes merged are refused with 0A000 naming the table, never
// answered partially.

import type { Node } from '@pgsql/types';
import type { Catalog } from '../catalog/catalog';
import type { DistributedRule } from '../catalog/partition-rule';
import { parseRuleCommand, type RuleCommand } from '../catalog/rule-commands';
import { PgError, SqlState } from '../protocol/errors';
import { pinnedKeyValues, type KeyValue } from './key-values';
import { nodeTag } from './sql-parser';
import { expandViews } from './view-expansion';
import { routineReadingDistributed } from './routine-reads';
import { tablesReferenced, type TableReference } from './table-references';

export type DistributedRoute =
  /** No distributed table: replicated-mode routing applies. */
  | { readonly kind: 'none' }
  | { readonly kind: 'rule-command'; readonly command: RuleCommand }
  /** Runs unchanged on the nodes owning these keys. */
  | { readonly kind: 'pinned'; readonly rule: DistributedRule; readonly keys: readonly KeyValue[]; readonly write: boolean }
  /** UPDATE or DELETE without a pinned key: every node, row counts summed. */
  | { readonly kind: 'all-nodes'; readonly rule: DistributedRule }
  /** INSERT ... VALUES: each row to its key's node. */
  | { readonly kind: 'insert-values'; readonly rule: DistributedRule; readonly columns: readonly string[] | null; readonly rows: readonly (readonly Node[])[] }
  /** INSERT ... SELECT reading only replicated tables: the rows are read on one node and routed like VALUES. */
  | { readonly kind: 'insert-select'; readonly rule: DistributedRule; readonly columns: readonly string[] | null }
  | { readonly kind: 'copy-in'; readonly rule: DistributedRule; readonly columns: readonly string[] | null }
  /** DECLARE of a cursor over a read of several nodes: the proxy runs the read and holds its rows. */
  | { readonly kind: 'declare'; readonly name: string; readonly options: number; readonly statement: Node }
  /** SQL PREPARE of such a read: the proxy keeps it and plans each EXECUTE with its arguments. */
  | { readonly kind: 'prepare'; readonly name: string; readonly statement: Node; readonly argumentTypes: readonly Node[] }
  /** COPY ... TO STDOUT of a distributed table or of a read over several nodes: the read's rows in COPY format. */
  | { readonly kind: 'copy-out'; readonly statement: Node; readonly options: readonly unknown[] }
  /** A read over several nodes: the distributed planner decides how (select-planner.ts). */
  | { readonly kind: 'select'; readonly statement: Node; readonly table: string }
  /** EXPLAIN [ANALYZE] of such a read: the distributed plan is shown. */
  | { readonly kind: 'explain'; readonly statement: Node; readonly analyze: boolean; readonly route: DistributedRoute }
  /** DROP of tables with rules: every node drops them and forgets their rules. */
  | { readonly kind: 'drop'; readonly tables: readonly TableReference[] }
  | { readonly kind: 'refused'; readonly error: PgError };

function refused(table: string, what: string, hint = 'pin the distribution key with = or IN so that one node holds every row the query reads'): DistributedRoute {
  return {
    kind: 'refused',
    error: new PgError({ code: SqlState.featureNotSupported, message: `table "${table}" is distributed: ${what} is not supported yet`, hint }),
  };
}

export function routeDistributed(node: Node, catalog: Catalog): DistributedRoute {
  let command: RuleCommand | null;
  try {
    command = parseRuleCommand(node);
  } catch (error) {
    // A bad call (an unknown parameter, a non-constant argument) is the statement's error, not the session's.
    if (error instanceof PgError) return { kind: 'refused', error };
    throw error;
  }
  if (command) return { kind: 'rule-command', command };
  if (!catalog.hasDistributedTables) return { kind: 'none' };
  if (nodeTag(node) !== 'DropStmt') {
    try {
      node = expandViews(node, catalog);
    } catch (error) {
      if (error instanceof PgError) return { kind: 'refused', error };
      throw error;
    }
  }
  const reader = routineReadingDistributed(node, catalog, expandViews);
  if (reader) {
    const what = reader.routine === 'DO' ? 'this DO block' : `the routine ${reader.routine}()`;
    return {
      kind: 'refused',
      error: new PgError({
        code: SqlState.featureNotSupported,
        message: `${what} reads distributed table "${reader.table}": run there, its queries would see one node's rows only`,
        hint: 'write its query into the statement itself, or make the table replicated',
      }),
    };
  }
  const references = tablesReferenced(node);
  const tag = nodeTag(node);
  if (tag === 'DropStmt') {
    // As the session's search_path resolves them: the rule to forget is that table's.
    const withRules = dropTargets(node).flatMap((t) => {
      const rule = catalog.lookup(t.schema, t.name);
      return rule ? [{ ...t, schema: rule.table.schema }] : [];
    });
    return withRules.length > 0 ? { kind: 'drop', tables: withRules } : { kind: 'none' };
  }
  const distributed = references.map((r) => ({ ref: r, rule: catalog.distributed(r.schema, r.name) })).filter((d) => d.rule) as { ref: TableReference; rule: DistributedRule }[];
  if (distributed.length === 0) return { kind: 'none' };
  const body = (node as unknown as Record<string, Record<string, unknown>>)[tag];
  const first = distributed[0];
  const names = new Set([first.ref.name, first.ref.alias]);
  const sameTableOnly = distributed.every((d) => d.rule === first.rule && d.ref.alias === first.ref.alias);
  switch (tag) {
    case 'SelectStmt': {
      if (body.intoClause) return refused(first.rule.table.name, 'SELECT INTO from it');
      const from = (body.fromClause as Node[] | undefined) ?? [];
      const direct = from.length === 1 && 'RangeVar' in from[0];
      const keys = direct && sameTableOnly ? pinnedKeyValues(body.whereClause as Node | undefined, first.rule.keyColumn, names) : null;
      const locks = Array.isArray(body.lockingClause) && body.lockingClause.length > 0;
      if (!keys) return locks ? refused(first.rule.table.name, 'SELECT ... FOR UPDATE of rows on several nodes') : { kind: 'select', statement: node, table: first.rule.table.name };
      return { kind: 'pinned', rule: first.rule, keys, write: locks };
    }
    case 'InsertStmt': {
      if (distributed.length > 1 || first.ref !== references[references.length - 1]) {
        return refused(first.rule.table.name, 'INSERT ... SELECT reading a distributed table', 'insert the rows with VALUES or COPY');
      }
      const rule = first.rule;
      const columns = ((body.cols as { ResTarget: { name: string } }[] | undefined) ?? []).map((c) => c.ResTarget.name);
      const conflict = body.onConflictClause as { targetList?: { ResTarget: { name: string } }[] } | undefined;
      if (conflict?.targetList?.some((t) => t.ResTarget.name === rule.keyColumn)) return keyChange(rule);
      const select = (body.selectStmt as { SelectStmt?: Record<string, unknown> } | undefined)?.SelectStmt;
      const values = select?.valuesLists as { List: { items: Node[] } }[] | undefined;
      if (!select) return refused(rule.table.name, 'INSERT with DEFAULT VALUES into it', 'give the key value in the statement');
      if (!values) return { kind: 'insert-select', rule, columns: columns.length > 0 ? columns : null };
      return { kind: 'insert-values', rule, columns: columns.length > 0 ? columns : null, rows: values.map((v) => v.List.items) };
    }
    case 'UpdateStmt':
    case 'DeleteStmt': {
      const target = references[references.length - 1];
      const rule = catalog.distributed(target.schema, target.name);
      if (!rule || distributed.some((d) => d.rule !== rule || d.ref.alias !== target.alias)) {
        return refused(first.rule.table.name, `${tag === 'UpdateStmt' ? 'UPDATE' : 'DELETE'} that reads another distributed table`, 'rewrite the statement so that it reads only replicated tables besides its target');
      }
      if (tag === 'UpdateStmt' && ((body.targetList as { ResTarget: { name: string } }[]) ?? []).some((t) => t.ResTarget.name === rule.keyColumn)) return keyChange(rule);
      const keys = pinnedKeyValues(body.whereClause as Node | undefined, rule.keyColumn, new Set([target.name, target.alias]));
      return keys ? { kind: 'pinned', rule, keys, write: true } : { kind: 'all-nodes', rule };
    }
    case 'CopyStmt': {
      if (!body.is_from) {
        if (body.filename || body.is_program) return refused(first.rule.table.name, 'COPY TO a server file or program from it', 'COPY ... TO STDOUT (psql\'s \\copy) reads every node');
        const query = (body.query as Node | undefined) ?? selectAll(body.relation as Record<string, unknown>, body.attlist as Node[] | undefined);
        const route = routeDistributed(query, catalog);
        if (nodeTag(query) !== 'SelectStmt' || (route.kind !== 'select' && route.kind !== 'pinned') || (route.kind === 'pinned' && route.write)) {
          return route.kind === 'refused' ? route : refused(first.rule.table.name, 'COPY of a statement other than SELECT on it');
        }
        return { kind: 'copy-out', statement: query, options: (body.options as unknown[] | undefined) ?? [] };
      }
      if (!body.relation) return refused(first.rule.table.name, 'COPY FROM into a query');
      if (body.filename) return refused(first.rule.table.name, 'COPY FROM a server file into it', 'send the data with COPY FROM STDIN');
      const columns = ((body.attlist as { String: { sval: string } }[] | undefined) ?? []).map((a) => a.String.sval);
      return { kind: 'copy-in', rule: first.rule, columns: columns.length > 0 ? columns : null };
    }
    case 'ExplainStmt': {
      const inner = body.query as Node;
      const options = ((body.options as { DefElem: { defname: string; arg?: unknown } }[] | undefined) ?? []).map((o) => o.DefElem);
      const analyze = options.some((o) => o.defname === 'analyze' && !isFalse(o.arg));
      if (options.some((o) => !['analyze', 'verbose', 'costs', 'timing', 'summary', 'buffers', 'format'].includes(o.defname))) {
        return refused(first.rule.table.name, 'that EXPLAIN option on a distributed statement');
      }
      const route = routeDistributed(inner, catalog);
      if (nodeTag(inner) !== 'SelectStmt' || (route.kind !== 'select' && route.kind !== 'pinned')) return refused(first.rule.table.name, 'EXPLAIN of a statement other than SELECT on it');
      return { kind: 'explain', statement: inner, analyze, route };
    }
    case 'MergeStmt':
      return refused(first.rule.table.name, 'MERGE into it');
    case 'DeclareCursorStmt': {
      const query = body.query as Node;
      const route = routeDistributed(query, catalog);
      if (nodeTag(query) !== 'SelectStmt' || (route.kind !== 'select' && route.kind !== 'pinned') || (route.kind === 'pinned' && route.write)) {
        return route.kind === 'refused' ? route : refused(first.rule.table.name, 'a cursor over this statement');
      }
      return { kind: 'declare', name: body.portalname as string, options: (body.options as number | undefined) ?? 0, statement: query };
    }
    case 'PrepareStmt': {
      const query = body.query as Node;
      const route = routeDistributed(query, catalog);
      if (nodeTag(query) !== 'SelectStmt' || (route.kind !== 'select' && route.kind !== 'pinned') || (route.kind === 'pinned' && route.write)) {
        return route.kind === 'refused' ? route : refused(first.rule.table.name, 'PREPARE of a statement other than SELECT on it', 'prepare it with the extended query protocol (a driver\'s prepared statement)');
      }
      const types = ((body.argtypes as { TypeName: unknown }[] | undefined) ?? []).map((t) => t);
      return { kind: 'prepare', name: body.name as string, statement: query, argumentTypes: types as Node[] };
    }
    case 'CreateTableAsStmt':
      return refused(
        first.rule.table.name,
        body.objtype === 'OBJECT_MATVIEW' ? 'CREATE MATERIALIZED VIEW over it' : 'CREATE TABLE AS reading it',
        body.objtype === 'OBJECT_MATVIEW' ? 'create a view: a read through it runs in parallel' : 'create the table, then load it with COPY from the query\'s rows',
      );
    case 'RuleStmt':
      return refused(first.rule.table.name, 'a rule on it');
    default:
      // DDL and maintenance (ALTER, CREATE INDEX, TRUNCATE, VACUUM, LOCK, GRANT, ...) apply to every node's part.
      return { kind: 'none' };
  }
}

/** `SELECT cols FROM table`, what COPY table (cols) TO copies. */
function selectAll(relation: Record<string, unknown>, columns: Node[] | undefined): Node {
  const targets = columns?.length
    ? columns.map((column) => ({ ResTarget: { val: { ColumnRef: { fields: [column] } } } }))
    : [{ ResTarget: { val: { ColumnRef: { fields: [{ A_Star: {} }] } } } }];
  return { SelectStmt: { targetList: targets, fromClause: [{ RangeVar: relation }], limitOption: 'LIMIT_OPTION_DEFAULT', op: 'SETOP_NONE' } } as unknown as Node;
}

function isFalse(arg: unknown): boolean {
  const value = arg as { String?: { sval: string }; A_Const?: { sval?: { sval: string }; boolval?: { boolval?: boolean } } } | undefined;
  const text = value?.String?.sval ?? value?.A_Const?.sval?.sval;
  return text === 'false' || text === 'off' || (value?.A_Const?.boolval !== undefined && !value.A_Const.boolval.boolval);
}

function keyChange(rule: DistributedRule): DistributedRoute {
  return {
    kind: 'refused',
    error: new PgError({
      code: SqlState.featureNotSupported,
      message: `cannot change the distribution key "${rule.keyColumn}" of table "${rule.table.name}"`,
      hint: 'a row that changes its key may belong on another node: delete it and insert it again',
    }),
  };
}

function dropTargets(node: Node): TableReference[] {
  const drop = (node as unknown as { DropStmt: { removeType: string; objects: { List: { items: { String: { sval: string } }[] } }[] } }).DropStmt;
  if (drop.removeType !== 'OBJECT_TABLE') return [];
  return drop.objects.map((o) => {
    const parts = o.List.items.map((i) => i.String.sval);
    const name = parts[parts.length - 1];
    return { schema: parts.length > 1 ? parts[parts.length - 2] : undefined, name, alias: name };
  });
}

