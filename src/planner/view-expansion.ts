// Views over distributed tables, expanded in place as PostgreSQL's rewriter does: every node holds the view, but
// a node's view sees only that node's rows, so a read through it must be planned against the tables it names.
// `FROM v AS x` becomes `FROM (<v's SELECT>) AS x`; views over views expand all the way down.

import type { Node } from '@pgsql/types';
import type { Catalog } from '../catalog/catalog';
import { PgError, SqlState } from '../protocol/errors';
import { cloneTree, rewriteTree } from './ast-tools';
import { walkAst } from './ast-walk';
import { parseSql } from './sql-parser';
import { tablesReferenced } from './table-references';
import { routineReadingDistributed } from './routine-reads';

/** Per catalog: a view's expanded SELECT when it reads a distributed table, else null. */
const expansions = new WeakMap<Catalog, Map<string, Node | null>>();

/** The statement with every view that reads a distributed table replaced by its SELECT; the same object when none. */
export function expandViews(statement: Node, catalog: Catalog, expanding: ReadonlySet<string> = new Set()): Node {
  if (!catalog.hasViews || !catalog.hasDistributedTables) return statement;
  const cteNames = new Set<string>();
  walkAst(statement, (tag, body) => {
    if (tag === 'CommonTableExpr' && typeof body.ctename === 'string') cteNames.add(body.ctename);
  });
  return rewriteTree(statement, (tag, body) => {
    if (tag !== 'RangeVar') return undefined;
    const schema = body.schemaname as string | undefined;
    const name = body.relname as string;
    if (!schema && cteNames.has(name)) {
      if (catalog.viewDefinition(schema, name) && distributedView(catalog, schema, name, expanding)) {
        throw new PgError({ code: SqlState.featureNotSupported, message: `the query names both a WITH query and a view over distributed tables "${name}"`, hint: 'rename the WITH query' });
      }
      return undefined;
    }
    const view = distributedView(catalog, schema, name, expanding);
    if (!view) return undefined;
    const alias = (body.alias as object | undefined) ?? { aliasname: name };
    return { RangeSubselect: { subquery: cloneTree(view), alias } } as unknown as Node;
  }) as Node;
}

function distributedView(catalog: Catalog, schema: string | undefined, name: string, expanding: ReadonlySet<string>): Node | null {
  if (catalog.lookup(schema, name)) return null;
  const definition = catalog.viewDefinition(schema, name);
  if (definition === null) return null;
  const key = `${schema ?? 'public'}.${name}`;
  let cache = expansions.get(catalog);
  if (!cache) expansions.set(catalog, (cache = new Map()));
  if (cache.has(key)) return cache.get(key)!;
  if (expanding.has(key)) return null; // PostgreSQL refuses recursive views; a stale catalog must not loop
  const parsed = parseSql(definition);
  let expanded: Node | null = null;
  if (parsed.ok && parsed.statements.length === 1) {
    const inner = expandViews(parsed.statements[0].node, catalog, new Set([...expanding, key]));
    // A view over replicated tables that calls a routine reading distributed ones expands too, so the call shows.
    const readsDistributed = tablesReferenced(inner).some((t) => catalog.distributed(t.schema, t.name)) || routineReadingDistributed(inner, catalog, expandViews) !== null;
    expanded = readsDistributed ? inner : null;
  }
  cache.set(key, expanded);
  return expanded;
}
