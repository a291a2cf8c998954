// Column defaults that would give each node its own value: a replicated table's INSERT that leaves a column with
// DEFAULT now(), clock_timestamp() or gen_random_uuid() to the nodes lets each evaluate it, and the replicas
// differ. The INSERT is rewritten so the statement carries the values: for VALUES rows and DEFAULT VALUES, each
// such default is evaluated once on the main node (in the session's transaction, so now() keeps its meaning) and
// written in as a literal; for INSERT ... SELECT a time default joins the select list, where time pinning fixes it,
// and a per-node one (random, uuid) is refused. Sequence defaults (serial) are left to the nodes: the insert lock
// (executor/insert-lock.ts) makes concurrent sessions reach every node's sequence in the same order.

import type { Node } from '@pgsql/types';
import type { Catalog } from '../catalog/catalog';
import { PgError, SqlState } from '../protocol/errors';
import { expressionVaries } from './nondeterminism';
import { parseSql } from './sql-parser';

type Fields = Record<string, unknown>;

/** Default expression text → its parsed node and how it varies (null: the same on every node). */
const parsedDefaults = new Map<string, { node: Node; varies: 'time' | 'per-node' } | null>();

function parsedDefault(expression: string): { node: Node; varies: 'time' | 'per-node' } | null {
  if (parsedDefaults.has(expression)) return parsedDefaults.get(expression)!;
  const parsed = parseSql(`SELECT ${expression}`);
  let out: { node: Node; varies: 'time' | 'per-node' } | null = null;
  if (parsed.ok && parsed.statements.length === 1) {
    const target = ((parsed.statements[0].node as { SelectStmt?: { targetList?: { ResTarget: { val: Node } }[] } }).SelectStmt?.targetList ?? [])[0];
    const varies = target ? expressionVaries(target.ResTarget.val) : null;
    if (target && varies) out = { node: target.ResTarget.val, varies };
  }
  if (parsedDefaults.size > 1000) parsedDefaults.clear();
  parsedDefaults.set(expression, out);
  return out;
}

/**
 * The INSERT with the values of its varying column defaults written in, a 0A000 error when that cannot be done,
 * or null when the statement needs nothing of the kind. `evaluate` runs a SELECT on the main node, one row.
 */
export async function pinColumnDefaults(
  statement: Node,
  catalog: Catalog,
  evaluate: (sql: string) => Promise<(string | null)[]>,
): Promise<Node | PgError | null> {
  const insert = (statement as { InsertStmt?: Fields }).InsertStmt;
  if (!insert) return null;
  const relation = insert.relation as { schemaname?: string; relname: string };
  if (catalog.lookup(relation.schemaname, relation.relname)?.kind === 'distributed') return null;
  const table = catalog.columnDefaultsOf(relation.schemaname, relation.relname);
  if (!table) return null;
  const varying = new Map<string, { node: Node; varies: 'time' | 'per-node'; text: string }>();
  for (const [column, text] of table.defaults) {
    const parsed = parsedDefault(text);
    if (parsed) varying.set(column, { ...parsed, text });
  }
  if (varying.size === 0) return null;

  const copy = structuredClone(statement) as { InsertStmt: Fields };
  const body = copy.InsertStmt;
  const explicit = (body.cols as { ResTarget: { name: string } }[] | undefined)?.map((c) => c.ResTarget.name);
  const select = (body.selectStmt as { SelectStmt?: Fields } | undefined)?.SelectStmt;
  const rows = select?.valuesLists as { List: { items: Node[] } }[] | undefined;

  if (!select || rows) {
    // DEFAULT VALUES, or VALUES rows: each varying default the rows leave out or ask for (DEFAULT) gets a value.
    const rowItems = rows ? rows.map((row) => row.List.items) : [[]];
    const width = rowItems[0].length;
    const columns = explicit ?? table.columns.slice(0, width);
    const omitted = [...varying.keys()].filter((column) => !columns.includes(column));
    const wanted: { row: number; column: string; at: number }[] = [];
    rowItems.forEach((items, row) => {
      items.forEach((item, at) => {
        if ('SetToDefault' in (item as object) && varying.has(columns[at])) wanted.push({ row, column: columns[at], at });
      });
      omitted.forEach((column, i) => wanted.push({ row, column, at: width + i }));
    });
    if (wanted.length === 0) return null;
    const values = await evaluate(`SELECT ${wanted.map((w) => `(${varying.get(w.column)!.text})::text`).join(', ')}`);
    rowItems.forEach((items) => items.push(...omitted.map(() => null as unknown as Node)));
    wanted.forEach((w, i) => {
      const value = values[i] ?? null;
      rowItems[w.row][w.at] = (value === null ? { A_Const: { isnull: true } } : { A_Const: { sval: { sval: value } } }) as Node;
    });
    body.cols = [...columns, ...omitted].map((name) => ({ ResTarget: { name } }));
    const valuesLists = rowItems.map((items) => ({ List: { items } }));
    body.selectStmt = rows ? { SelectStmt: { ...select, valuesLists } } : { SelectStmt: { valuesLists, limitOption: 'LIMIT_OPTION_DEFAULT', op: 'SETOP_NONE' } };
    return copy as Node;
  }

  // INSERT ... SELECT: the select list grows by the omitted varying defaults.
  const targets = select.targetList as { ResTarget: { val: Node } }[] | undefined;
  const hasStar = JSON.stringify(targets ?? []).includes('"A_Star"');
  const columns = explicit ?? (hasStar ? null : table.columns.slice(0, targets?.length ?? 0));
  const omitted = columns ? [...varying.keys()].filter((column) => !columns.includes(column)) : [...varying.keys()];
  if (omitted.length === 0) return null;
  const refuse = (column: string, why: string) =>
    new PgError({
      code: SqlState.featureNotSupported,
      message: `the default of column "${column}" (${varying.get(column)!.text}) would give each node its own value, and ${why}`,
      hint: `list "${column}" in the INSERT with a value, or insert with VALUES`,
    });
  if (!columns) return refuse(omitted[0], 'an INSERT ... SELECT * cannot take it: name the columns');
  const perNode = omitted.find((column) => varying.get(column)!.varies === 'per-node');
  if (perNode) return refuse(perNode, 'an INSERT ... SELECT cannot take one value per row from the main node');
  if (select.op !== 'SETOP_NONE' || !targets) return refuse(omitted[0], 'an INSERT of a UNION, INTERSECT or EXCEPT cannot take it');
  targets.push(...omitted.map((column) => ({ ResTarget: { val: structuredClone(varying.get(column)!.node) } })));
  body.cols = [...columns, ...omitted].map((name) => ({ ResTarget: { name } }));
  return copy as Node;
}

/** Whether pinColumnDefaults may change this statement (cheap: no evaluation). */
export function mayNeedColumnDefaults(statement: Node, catalog: Catalog): boolean {
  const insert = (statement as { InsertStmt?: Fields }).InsertStmt;
  if (!insert) return false;
  const relation = insert.relation as { schemaname?: string; relname: string };
  const table = catalog.columnDefaultsOf(relation.schemaname, relation.relname);
  return table !== null && [...table.defaults.values()].some((text) => parsedDefault(text) !== null);
}
