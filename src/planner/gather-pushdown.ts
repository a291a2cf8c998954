// What a gathered table's copy can leave out: the filters of its query level that name only that table, and the
// columns the statement never names. Both are conservative: a table referenced twice, under an outer join's
// nullable side, or named by a star or a whole-row reference is copied whole; a filter with a subquery, an
// aggregate or a function not known to be immutable stays where it is.

import type { Node } from '@pgsql/types';
import { conjuncts, unwrap } from './ast-tools';
import { walkAst } from './ast-walk';

type Body = Record<string, unknown>;

export interface TableShape {
  readonly columns: readonly string[];
  readonly primaryKey: readonly string[];
}

export interface CopyNarrowing {
  /** Conjuncts (as trees) that may filter the copy. */
  readonly filters: Node[];
  /** The columns to copy, in table order; null for all. */
  readonly columns: string[] | null;
}

const immutableFunctions = new Set([
  'abs', 'round', 'trunc', 'floor', 'ceil', 'ceiling', 'lower', 'upper', 'substring', 'substr', 'length', 'char_length',
  'date_part', 'extract', 'coalesce', 'nullif', 'greatest', 'least', 'btrim', 'ltrim', 'rtrim', 'trim', 'mod', 'position',
  'strpos', 'left', 'right', 'split_part', 'replace', 'concat', 'md5', 'sign', 'sqrt', 'power',
]);

/** Whether a condition is safe to evaluate early and again: no subquery, aggregate, window or unknown function. */
function pushable(condition: Node): boolean {
  let safe = true;
  walkAst(condition, (tag, body) => {
    if (tag === 'SubLink' || tag === 'ParamRef' || tag === 'GroupingFunc') safe = false;
    if (tag === 'FuncCall') {
      const names = body.funcname as { String: { sval: string } }[];
      const name = names[names.length - 1].String.sval;
      if (body.over || body.agg_star || body.agg_distinct || !immutableFunctions.has(name) || (names.length === 2 && names[0].String.sval !== 'pg_catalog')) safe = false;
    }
    if (tag === 'SQLValueFunction') safe = false;
  });
  return safe;
}

interface Located {
  readonly level: Body;
  readonly alias: string;
  readonly nullable: boolean;
  /** The other tables of the same FROM tree, by alias, with their columns when known. */
  readonly siblings: { alias: string; columns: readonly string[] | null }[];
}

/**
 * How to narrow the copy of `table` (schema, name), given the shapes of the tables the statement names (by
 * schema-qualified key "schema.name"; unknown tables make unqualified names ambiguous, so nothing is pushed).
 */
export function narrowCopy(statement: Node, isTable: (rangeVar: Body) => boolean, shapes: (rangeVar: Body) => TableShape | null): CopyNarrowing {
  const whole: CopyNarrowing = { filters: [], columns: null };
  const references: Body[] = [];
  walkAst(statement, (tag, body) => {
    if (tag === 'RangeVar' && isTable(body)) references.push(body);
  });
  if (references.length === 0) return whole;
  const shape = shapes(references[0]);
  if (!shape) return whole;
  const aliases = references.map((r) => (r.alias as { aliasname?: string } | undefined)?.aliasname ?? (r.relname as string));
  const columns = neededColumns(statement, references, shape, aliases);
  // Filters only for a table read once: every reference shares the copy, and each may filter it differently.
  if (references.length !== 1) return { filters: [], columns };
  const reference = references[0];
  const located = locate(statement, reference, shapes);
  if (!located || located.nullable) return { filters: [], columns };
  const filters = conjuncts(located.level.whereClause).filter((condition) => pushable(condition) && onlyNames(condition, located, shape));
  return { filters, columns };
}

/** Finds the query level whose FROM holds the reference, and whether it sits under an outer join's nullable side. */
function locate(statement: Node, reference: Body, shapes: (rangeVar: Body) => TableShape | null): Located | null {
  let found: Located | null = null;
  walkAst(statement, (tag, body) => {
    if (tag !== 'SelectStmt' || found) return;
    const tables: { body: Body; nullable: boolean }[] = [];
    const visit = (item: unknown, nullable: boolean): void => {
      const [itemTag, itemBody] = unwrap(item);
      if (itemTag === 'RangeVar') tables.push({ body: itemBody, nullable });
      else if (itemTag === 'JoinExpr') {
        const type = itemBody.jointype as string;
        visit(itemBody.larg, nullable || type === 'JOIN_RIGHT' || type === 'JOIN_FULL');
        visit(itemBody.rarg, nullable || type === 'JOIN_LEFT' || type === 'JOIN_FULL');
      } else if (itemTag === 'RangeSubselect' || itemTag === 'RangeFunction') tables.push({ body: { opaque: true }, nullable });
    };
    for (const item of (body.fromClause as unknown[] | undefined) ?? []) visit(item, false);
    const mine = tables.find((t) => t.body === reference);
    if (!mine) return;
    const aliasOf = (t: Body) => ((t.alias as { aliasname?: string } | undefined)?.aliasname ?? (t.relname as string));
    found = {
      level: body,
      alias: aliasOf(reference),
      nullable: mine.nullable,
      siblings: tables.filter((t) => t !== mine).map((t) => ({ alias: t.body.opaque ? '' : aliasOf(t.body), columns: t.body.opaque ? null : shapes(t.body)?.columns ?? null })),
    };
  });
  return found;
}

/** Every column reference of the condition names this table, unambiguously. */
function onlyNames(condition: Node, located: Located, shape: TableShape): boolean {
  let ok = true;
  walkAst(condition, (tag, body) => {
    if (tag !== 'ColumnRef') return;
    const fields = (body.fields as Body[]).map((f) => (f.String as { sval: string } | undefined)?.sval);
    if (fields.some((f) => f === undefined)) {
      ok = false;
      return;
    }
    if (fields.length === 2) {
      if (fields[0] !== located.alias || !shape.columns.includes(fields[1]!)) ok = false;
    } else if (fields.length === 1) {
      const name = fields[0]!;
      if (!shape.columns.includes(name) || located.siblings.some((s) => s.columns === null || s.columns.includes(name))) ok = false;
    } else ok = false;
  });
  return ok;
}

/**
 * The table's columns the statement may name; null (all) when a star, a whole-row reference or NATURAL could.
 * `EXISTS (SELECT * ...)` names no column: its star is left out.
 */
function neededColumns(statement: Node, references: readonly Body[], shape: TableShape, aliases: readonly string[]): string[] | null {
  const names = new Set<string>();
  let all = false;
  const existsStars = new Set<unknown>();
  walkAst(statement, (tag, body) => {
    if (tag !== 'SubLink' || body.subLinkType !== 'EXISTS_SUBLINK') return;
    const targets = ((body.subselect as { SelectStmt?: Body }).SelectStmt?.targetList as { ResTarget: { val: { ColumnRef?: Body } } }[] | undefined) ?? [];
    for (const target of targets) if (target.ResTarget.val.ColumnRef) existsStars.add(target.ResTarget.val.ColumnRef);
  });
  walkAst(statement, (tag, body) => {
    if (tag === 'ColumnRef') {
      const fields = body.fields as Body[];
      const last = fields[fields.length - 1];
      if ('A_Star' in last) {
        if (!existsStars.has(body)) all = true;
      } else {
        const name = (last.String as { sval: string }).sval;
        names.add(name);
        if (fields.length === 1 && aliases.includes(name)) all = true; // whole-row reference
      }
    }
    if (tag === 'JoinExpr') {
      if (body.isNatural) all = true;
      for (const column of (body.usingClause as { String: { sval: string } }[] | undefined) ?? []) names.add(column.String.sval);
    }
    if (tag === 'RangeVar' && references.includes(body) && body.alias && ((body.alias as Body).colnames as unknown[] | undefined)?.length) all = true;
  });
  if (all) return null;
  const columns = shape.columns.filter((c) => names.has(c));
  return columns.length === shape.columns.length ? null : columns.length > 0 ? columns : shape.columns.slice(0, 1);
}
