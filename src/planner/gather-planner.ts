// Tier 3 of the cascade, for any shape tier 2 cannot split: the rows of every distributed table the statement
// reads are shipped into temporary tables on one node, and that node runs the statement against them, so
// PostgreSQL itself computes the answer, whatever its shape. Every reference to one table shares one copy.
// N.B. the statement's own text is kept and only the table names are replaced in it: no deparse can change what
// it means.

import type { Node } from '@pgsql/types';
import type { Catalog } from '../catalog/catalog';
import { qualifiedName, quoteIdent } from '../catalog/partition-rule';
import { deparseVerified } from './ast-tools';
import { walkAst } from './ast-walk';
import type { GatherPlan, GatheredTable } from './distributed-plan';
import { narrowCopy, type TableShape } from './gather-pushdown';
import type { PlannerPort } from './planner-port';
import { parseSql } from './sql-parser';

/** The placeholder the executor replaces with the temporary table of gathered table `index`. */
export function gatheredTableName(index: number): string {
  return `parapool_gathered_${index}`;
}

export async function planGather(sql: string, catalog: Catalog, port: PlannerPort, reason: string): Promise<GatherPlan> {
  const others = Array.from({ length: port.nodeCount }, (_, i) => i).filter((n) => n !== port.finalNode);
  const copies = await planCopies(sql, catalog, port, () => true, gatheredTableName, others);
  return { kind: 'gather', tables: copies.tables, finalSql: copies.sql, finalNode: port.finalNode, reason };
}

export interface PlannedCopies {
  readonly tables: GatheredTable[];
  /** The statement's text with each copied table's name replaced by its copy's. */
  readonly sql: string;
}

/**
 * Plans copies of the distributed tables `chosen` accepts (by qualified name): each one's filtered, projected rows
 * read on `sources`, and the statement's text with its references replaced by `pg_temp.<name(i)> AS alias`.
 */
export async function planCopies(sql: string, catalog: Catalog, port: PlannerPort, chosen: (table: string) => boolean, name: (index: number) => string, sources: readonly number[]): Promise<PlannedCopies> {
  const parsed = parseSql(sql);
  if (!parsed.ok) throw parsed.error;
  const statement = parsed.statements[0].node;
  const ctes = new Set<string>();
  walkAst(statement, (tag, body) => {
    if (tag === 'CommonTableExpr') ctes.add(body.ctename as string);
  });
  const tables: string[] = [];
  const rangeVars: Record<string, unknown>[] = [];
  walkAst(statement, (tag, body) => {
    if (tag === 'RangeVar') rangeVars.push(body);
  });
  const nameOf = (body: Record<string, unknown>) => (body.schemaname ? `${quoteIdent(body.schemaname as string)}.` : '') + quoteIdent(body.relname as string);
  const shapes = await port.tableShapes([...new Set(rangeVars.filter((r) => r.schemaname || !ctes.has(r.relname as string)).map(nameOf))]);
  const shapeOf = (body: Record<string, unknown>): TableShape | null => (!body.schemaname && ctes.has(body.relname as string) ? null : shapes.get(nameOf(body)) ?? null);
  const tableOf = (body: Record<string, unknown>): string | null => {
    if (!body.schemaname && ctes.has(body.relname as string)) return null;
    const rule = catalog.distributed(body.schemaname as string | undefined, body.relname as string);
    return rule && chosen(qualifiedName(rule.table)) ? qualifiedName(rule.table) : null;
  };
  const edits: { start: number; end: number; text: string }[] = [];
  for (const body of rangeVars) {
    const key = tableOf(body);
    if (!key) continue;
    let index = tables.indexOf(key);
    if (index < 0) {
      index = tables.length;
      tables.push(key);
    }
    const start = body.location as number;
    const alias = body.alias ? '' : ` AS ${quoteIdent(body.relname as string)}`;
    edits.push({ start, end: endOfName(sql, start), text: `pg_temp.${name(index)}${alias}` });
  }
  edits.sort((a, b) => b.start - a.start);
  let rewritten = sql;
  for (const edit of edits) rewritten = rewritten.slice(0, edit.start) + edit.text + rewritten.slice(edit.end);
  const copies: GatheredTable[] = tables.map((table) => {
    const isTable = (body: Record<string, unknown>) => tableOf(body) === table;
    const narrowing = narrowCopy(statement, isTable, shapeOf);
    const reference = rangeVars.find(isTable)!;
    const shape = shapeOf(reference);
    const alias = (reference.alias as { aliasname?: string } | undefined)?.aliasname ?? (reference.relname as string);
    const copy: Record<string, unknown> = {
      targetList: narrowing.columns
        ? narrowing.columns.map((c) => ({ ResTarget: { val: { ColumnRef: { fields: [{ String: { sval: alias } }, { String: { sval: c } }] } } } }))
        : [{ ResTarget: { val: { ColumnRef: { fields: [{ A_Star: {} }] } } } }],
      fromClause: [{ RangeVar: { schemaname: reference.schemaname, relname: reference.relname, inh: true, relpersistence: 'p', alias: { aliasname: alias } } }],
      whereClause: narrowing.filters.length === 0 ? undefined : narrowing.filters.length === 1 ? narrowing.filters[0] : { BoolExpr: { boolop: 'AND_EXPR', args: narrowing.filters } },
      limitOption: 'LIMIT_OPTION_DEFAULT',
      op: 'SETOP_NONE',
    };
    const narrowed = narrowing.columns || narrowing.filters.length > 0 ? deparseVerified({ SelectStmt: copy } as Node) : null;
    const primaryKey = shape?.primaryKey.length && (!narrowing.columns || shape.primaryKey.every((c) => narrowing.columns!.includes(c))) ? [...shape.primaryKey] : [];
    const columns = narrowed ? narrowing.columns ?? shape?.columns ?? null : shape?.columns ?? null;
    return { table, fragment: { sql: narrowed ?? `SELECT * FROM ${table}`, nodes: sources }, primaryKey, columns: columns ? [...columns] : null };
  });
  return { tables: copies, sql: rewritten };
}

/** Where a possibly qualified, possibly quoted name that starts at `start` ends. */
function endOfName(sql: string, start: number): number {
  let position = start;
  const identifier = () => {
    if (sql[position] === '"') {
      position++;
      while (position < sql.length) {
        if (sql[position] === '"' && sql[position + 1] === '"') position += 2;
        else if (sql[position] === '"') {
          position++;
          return;
        } else position++;
      }
      return;
    }
    while (position < sql.length && /[\p{L}\p{N}_$]/u.test(sql[position])) position++;
  };
  identifier();
  for (;;) {
    let look = position;
    while (/\s/.test(sql[look] ?? '')) look++;
    if (sql[look] !== '.') return position;
    look++;
    while (/\s/.test(sql[look] ?? '')) look++;
    position = look;
    identifier();
  }
}
