// The tables a statement touches, as written (schema, name), leaving out names that refer to its own CTEs.

import { walkAst } from './ast-walk';

export interface TableReference {
  readonly schema: string | undefined;
  readonly name: string;
  /** The name the statement uses for it: its alias, else its name. */
  readonly alias: string;
}

export function tablesReferenced(statement: unknown): TableReference[] {
  const cteNames = new Set<string>();
  walkAst(statement, (tag, body) => {
    if (tag === 'CommonTableExpr' && typeof body.ctename === 'string') cteNames.add(body.ctename);
  });
  const tables: TableReference[] = [];
  walkAst(statement, (tag, body) => {
    if (tag !== 'RangeVar') return;
    const schema = body.schemaname as string | undefined;
    const name = body.relname as string;
    if (!schema && cteNames.has(name)) return;
    const alias = (body.alias as { aliasname?: string } | undefined)?.aliasname ?? name;
    tables.push({ schema, name, alias });
  });
  // INSERT/UPDATE/DELETE/COPY targets are plain `relation` fields, not wrapped RangeVar nodes.
  const root = statement as Record<string, { relation?: Record<string, unknown> }>;
  for (const tag of ['InsertStmt', 'UpdateStmt', 'DeleteStmt', 'CopyStmt', 'MergeStmt']) {
    const relation = root[tag]?.relation;
    if (relation) {
      const name = relation.relname as string;
      tables.push({ schema: relation.schemaname as string | undefined, name, alias: (relation.alias as { aliasname?: string } | undefined)?.aliasname ?? name });
    }
  }
  return tables;
}
