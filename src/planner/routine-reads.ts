// A function or procedure runs on the node that runs the statement calling it, and its queries see that node's
// rows only: called where it reads a distributed table (directly, through a view, or through another such
// routine), it would answer from part of the data. The proxy finds such routines in their definitions (SQL
// bodies parsed, PL/pgSQL bodies through the PL/pgSQL parser) and refuses statements that call them, with 0A000.
// Dynamic SQL (EXECUTE of a string) is not seen. View expansion is passed in by the caller (view-expansion.ts asks
// this file whether a view calls such a routine, so neither file imports the other).

import type { Node } from '@pgsql/types';
import { parsePlPgSQLSync } from 'libpg-query';
import type { Catalog, RoutineDefinition } from '../catalog/catalog';
import { walkAst } from './ast-walk';
import { nodeTag, parseSql } from './sql-parser';
import { tablesReferenced } from './table-references';

/** Statements that run code now (not DDL that only names a routine). */
const running = new Set(['SelectStmt', 'InsertStmt', 'UpdateStmt', 'DeleteStmt', 'CallStmt', 'DoStmt', 'CopyStmt', 'ExplainStmt', 'DeclareCursorStmt', 'PrepareStmt', 'CreateTableAsStmt', 'MergeStmt']);

/** Per catalog and routine name: a distributed table one of its overloads reads, or null. */
const reads = new WeakMap<Catalog, Map<string, string | null>>();

/** Expands the views a statement reads (view-expansion.ts's expandViews); may throw for a WITH query named like a view. */
export type ViewExpander = (statement: Node, catalog: Catalog) => Node;

/** The first routine the statement calls that reads a distributed table, with that table; views read in routine bodies are expanded with `expand`. */
export function routineReadingDistributed(statement: Node, catalog: Catalog, expand: ViewExpander): { routine: string; table: string } | null {
  if (!catalog.hasDistributedTables || !running.has(nodeTag(statement))) return null;
  if (nodeTag(statement) === 'DoStmt') {
    const code = ((statement as { DoStmt: { args?: { DefElem: { defname: string; arg?: { String?: { sval: string } } } }[] } }).DoStmt.args ?? []).find((a) => a.DefElem.defname === 'as');
    const language = ((statement as { DoStmt: { args?: { DefElem: { defname: string; arg?: { String?: { sval: string } } } }[] } }).DoStmt.args ?? []).find((a) => a.DefElem.defname === 'language')?.DefElem.arg?.String?.sval;
    if (!code?.DefElem.arg?.String || (language && language !== 'plpgsql')) return null;
    const table = plpgsqlReads(`DO $parapool_do$${code.DefElem.arg.String.sval}$parapool_do$`, catalog, new Set(), expand);
    return table ? { routine: 'DO', table } : null;
  }
  for (const name of calledNames(statement)) {
    const table = routineReads(name, catalog, new Set(), expand);
    if (table) return { routine: name, table };
  }
  return null;
}

function calledNames(tree: unknown): Set<string> {
  const names = new Set<string>();
  const add = (funcname: unknown) => {
    const parts = (funcname as { String?: { sval: string } }[] | undefined) ?? [];
    const name = parts[parts.length - 1]?.String?.sval;
    if (name) names.add(name);
  };
  walkAst(tree, (tag, body) => {
    if (tag === 'FuncCall') add(body.funcname);
    if (tag === 'CallStmt') add((body.funccall as { funcname?: unknown } | undefined)?.funcname);
  });
  return names;
}

function routineReads(name: string, catalog: Catalog, seen: Set<string>, expand: ViewExpander): string | null {
  let cache = reads.get(catalog);
  if (!cache) reads.set(catalog, (cache = new Map()));
  if (cache.has(name)) return cache.get(name)!;
  if (seen.has(name)) return null; // recursion: what the other calls read is found where they are
  seen.add(name);
  let table: string | null = null;
  for (const routine of catalog.routines(name)) {
    table = routine.language === 'sql' ? sqlReads(routine, catalog, seen, expand) : plpgsqlReads(routine.definition, catalog, seen, expand);
    if (table) break;
  }
  cache.set(name, table);
  return table;
}

/** A distributed table the statements read, through views and the routines they call. */
function treeReads(tree: unknown, catalog: Catalog, seen: Set<string>, expand: ViewExpander): string | null {
  let expanded = tree;
  try {
    expanded = expand(tree as Node, catalog);
  } catch {
    // a WITH query named like a view: the view is not read here
  }
  const table = tablesReferenced(expanded).find((t) => catalog.distributed(t.schema, t.name));
  if (table) return table.name;
  for (const name of calledNames(expanded)) {
    const inner = routineReads(name, catalog, seen, expand);
    if (inner) return inner;
  }
  return null;
}

function sqlReads(routine: RoutineDefinition, catalog: Catalog, seen: Set<string>, expand: ViewExpander): string | null {
  const parsed = parseSql(routine.definition);
  if (!parsed.ok || parsed.statements.length !== 1) return null;
  const create = (parsed.statements[0].node as { CreateFunctionStmt?: { sql_body?: unknown; options?: { DefElem: { defname: string; arg?: { List?: { items: { String?: { sval: string } }[] } } } }[] } }).CreateFunctionStmt;
  if (!create) return null;
  if (create.sql_body) return treeReads(create.sql_body, catalog, seen, expand);
  const body = create.options?.find((o) => o.DefElem.defname === 'as')?.DefElem.arg?.List?.items[0]?.String?.sval;
  if (body === undefined) return null;
  const statements = parseSql(body);
  return statements.ok ? treeReads(statements.statements.map((s) => s.node), catalog, seen, expand) : null;
}

function plpgsqlReads(definition: string, catalog: Catalog, seen: Set<string>, expand: ViewExpander): string | null {
  let tree: unknown;
  try {
    tree = parsePlPgSQLSync(definition);
  } catch {
    return null;
  }
  const queries: string[] = [];
  const collect = (value: unknown): void => {
    if (Array.isArray(value)) return value.forEach(collect);
    if (value === null || typeof value !== 'object') return;
    for (const [key, child] of Object.entries(value)) {
      if (key === 'PLpgSQL_expr' && typeof (child as { query?: unknown }).query === 'string') queries.push((child as { query: string }).query);
      else collect(child);
    }
  };
  collect(tree);
  for (const query of queries) {
    // Statements parse as they are; expressions and assignments as the SELECT PL/pgSQL makes of them.
    let parsed = parseSql(query);
    if (!parsed.ok) parsed = parseSql(`SELECT ${query.replace(/^\s*[\w.]+\s*:?=/, '')}`);
    if (!parsed.ok) continue;
    const table = treeReads(parsed.statements.map((s) => s.node), catalog, seen, expand);
    if (table) return table;
  }
  return null;
}
