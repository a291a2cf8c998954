// Small helpers over libpg-query trees that the distributed planner needs everywhere: structural equality that
// ignores source positions, PostgreSQL's rule for naming an unnamed output column, constants, and snippets of SQL
// parsed into expression nodes. N.B. trees from the parse cache are shared: these helpers never mutate their input.

import type { Node } from '@pgsql/types';
import { parseSync } from 'libpg-query';
import { deparseSync } from 'pgsql-deparser';

type Body = Record<string, unknown>;

/** The tag and body of a node: ['ColumnRef', {...}] for { ColumnRef: {...} }. */
export function unwrap(node: unknown): [string, Body] {
  const tag = Object.keys(node as object)[0];
  return [tag, (node as Record<string, Body>)[tag]];
}

/** A canonical text of a tree without positions, so two spellings of one expression compare equal. */
export function shapeOf(node: unknown): string {
  return JSON.stringify(node, (key, value) => (key === 'location' || key === 'stmt_location' ? undefined : value));
}

export function sameExpression(a: unknown, b: unknown): boolean {
  return shapeOf(a) === shapeOf(b);
}

/** A deep copy (trees are plain JSON). */
export function cloneTree<T>(node: T): T {
  return structuredClone(node);
}

/** The name PostgreSQL gives an output column written without AS (its FigureColname rules). */
export function columnNameOf(node: unknown): string {
  return figureName(node) ?? '?column?';
}

function figureName(node: unknown): string | null {
  if (node === null || typeof node !== 'object') return null;
  const [tag, body] = unwrap(node);
  switch (tag) {
    case 'ColumnRef': {
      const fields = body.fields as Body[];
      const last = fields[fields.length - 1];
      return 'String' in last ? ((last.String as { sval: string }).sval) : null;
    }
    case 'A_Indirection': {
      const indirection = body.indirection as Body[];
      const last = indirection[indirection.length - 1];
      if ('String' in last) return (last.String as { sval: string }).sval;
      return figureName(body.arg);
    }
    case 'FuncCall': {
      const names = body.funcname as { String: { sval: string } }[];
      return names[names.length - 1].String.sval;
    }
    case 'A_Expr':
      return body.kind === 'AEXPR_NULLIF' ? 'nullif' : null;
    case 'TypeCast': {
      const inner = figureName(body.arg);
      if (inner) return inner;
      const names = (body.typeName as { names: { String: { sval: string } }[] }).names;
      return names[names.length - 1].String.sval;
    }
    case 'CollateClause':
      return figureName(body.arg);
    case 'GroupingFunc':
      return 'grouping';
    case 'SubLink': {
      switch (body.subLinkType) {
        case 'EXISTS_SUBLINK':
          return 'exists';
        case 'ARRAY_SUBLINK':
          return 'array';
        case 'EXPR_SUBLINK': {
          const select = (body.subselect as { SelectStmt?: Body }).SelectStmt;
          const target = (select?.targetList as { ResTarget: Body }[] | undefined)?.[0]?.ResTarget;
          if (!target) return null;
          return (target.name as string | undefined) ?? figureName(target.val);
        }
        default:
          return null;
      }
    }
    case 'CaseExpr':
      return figureName(body.defresult) ?? 'case';
    case 'A_ArrayExpr':
      return 'array';
    case 'RowExpr':
      return 'row';
    case 'CoalesceExpr':
      return 'coalesce';
    case 'MinMaxExpr':
      return body.op === 'IS_GREATEST' ? 'greatest' : 'least';
    case 'SQLValueFunction':
      return sqlValueFunctionNames[body.op as string] ?? null;
    case 'XmlExpr':
      return xmlNames[body.op as string] ?? null;
    case 'XmlSerialize':
      return 'xmlserialize';
    default:
      return null;
  }
}

const sqlValueFunctionNames: Record<string, string> = {
  SVFOP_CURRENT_DATE: 'current_date',
  SVFOP_CURRENT_TIME: 'current_time',
  SVFOP_CURRENT_TIME_N: 'current_time',
  SVFOP_CURRENT_TIMESTAMP: 'current_timestamp',
  SVFOP_CURRENT_TIMESTAMP_N: 'current_timestamp',
  SVFOP_LOCALTIME: 'localtime',
  SVFOP_LOCALTIME_N: 'localtime',
  SVFOP_LOCALTIMESTAMP: 'localtimestamp',
  SVFOP_LOCALTIMESTAMP_N: 'localtimestamp',
  SVFOP_CURRENT_ROLE: 'current_role',
  SVFOP_CURRENT_USER: 'current_user',
  SVFOP_USER: 'user',
  SVFOP_SESSION_USER: 'session_user',
  SVFOP_CURRENT_CATALOG: 'current_catalog',
  SVFOP_CURRENT_SCHEMA: 'current_schema',
};

const xmlNames: Record<string, string> = {
  IS_XMLCONCAT: 'xmlconcat',
  IS_XMLELEMENT: 'xmlelement',
  IS_XMLFOREST: 'xmlforest',
  IS_XMLPARSE: 'xmlparse',
  IS_XMLPI: 'xmlpi',
  IS_XMLROOT: 'xmlroot',
  IS_XMLSERIALIZE: 'xmlserialize',
  IS_DOCUMENT: '?column?',
};

/** The value of an integer constant (LIMIT 10, ORDER BY 2), or null for anything else. */
/** The names a SELECT's output columns go by: their alias, else the name PostgreSQL gives them. */
export function outputNamesOf(targets: readonly { ResTarget: Body }[]): Set<string> {
  return new Set(targets.map((t) => (t.ResTarget.name as string | undefined) ?? columnNameOf(t.ResTarget.val)));
}

/**
 * Whether an ORDER BY item names an output column, by position or by its name (which wins over an input column of
 * that name there): such an item is left as written when the statement is rewritten.
 */
export function namesOutputColumn(node: unknown, outputNames: ReadonlySet<string>): boolean {
  if (integerConstant(node) !== null) return true;
  const [tag, body] = unwrap(node);
  if (tag !== 'ColumnRef') return false;
  const fields = body.fields as Body[];
  return fields.length === 1 && 'String' in fields[0] && outputNames.has((fields[0].String as { sval: string }).sval);
}

export function integerConstant(node: unknown): bigint | null {
  if (!node || typeof node !== 'object') return null;
  const [tag, body] = unwrap(node);
  if (tag !== 'A_Const') return null;
  if ('ival' in body) return BigInt((body.ival as { ival?: number }).ival ?? 0);
  if ('fval' in body) {
    const text = (body.fval as { fval: string }).fval;
    return /^-?\d+$/.test(text) ? BigInt(text) : null;
  }
  return null;
}

export function isNullConstant(node: unknown): boolean {
  if (!node || typeof node !== 'object') return false;
  const [tag, body] = unwrap(node);
  return tag === 'A_Const' && body.isnull === true;
}

/** An expression tree for a snippet of SQL ('sum(c3)::int8'), for splicing into a rewritten statement. */
export function parseExpression(sql: string): Node {
  const statement = parseSync(`SELECT ${sql}`).stmts![0].stmt as { SelectStmt: { targetList: { ResTarget: { val: Node } }[] } };
  return statement.SelectStmt.targetList[0].ResTarget.val;
}

export function columnRef(name: string): Node {
  return { ColumnRef: { fields: [{ String: { sval: name } }] } } as Node;
}

/** The conjuncts of a boolean expression's top-level AND. */
export function conjuncts(node: unknown): Node[] {
  if (!node) return [];
  const [tag, body] = unwrap(node);
  if (tag === 'BoolExpr' && body.boolop === 'AND_EXPR') return (body.args as Node[]).flatMap(conjuncts);
  return [node as Node];
}

/**
 * Rewrites a tree bottom-up: `visit` sees each tagged node (before its children) and returns a replacement, or
 * undefined to descend. SubLinks are passed to `visit` like any node; return the node itself to leave one alone.
 */
export function rewriteTree(node: unknown, visit: (tag: string, body: Body, node: Node) => Node | undefined): unknown {
  if (Array.isArray(node)) {
    let changed = false;
    const out = node.map((item) => {
      const next = rewriteTree(item, visit);
      if (next !== item) changed = true;
      return next;
    });
    return changed ? out : node;
  }
  if (node === null || typeof node !== 'object') return node;
  const keys = Object.keys(node);
  if (keys.length === 1 && /^[A-Z]/.test(keys[0])) {
    const replacement = visit(keys[0], (node as Record<string, Body>)[keys[0]], node as Node);
    if (replacement !== undefined) return replacement;
  }
  let changed = false;
  const out: Record<string, unknown> = {};
  for (const key of keys) {
    const child = (node as Record<string, unknown>)[key];
    const next = rewriteTree(child, visit);
    if (next !== child) changed = true;
    out[key] = next;
  }
  return changed ? out : node;
}

/** Fields that hold source positions: `location`, `stmt_len`, `rexpr_list_start`, ... */
const positionKey = /(location|_len|_start|_end|_loc)$/;

/** A canonical text of a tree: keys sorted, positions and empty values dropped. */
function canonicalShape(node: unknown): string {
  return JSON.stringify(node, (key, value) => {
    if (positionKey.test(key)) return undefined;
    if (value && typeof value === 'object' && !Array.isArray(value)) {
      const sorted: Record<string, unknown> = {};
      for (const k of Object.keys(value).sort()) if (value[k] !== undefined) sorted[k] = value[k];
      return sorted;
    }
    return value;
  });
}

/**
 * SQL for a statement tree, checked by parsing it back: null when the text would parse into another tree
 * (pgsql-deparser drops parentheses in a few places, e.g. around AND under IS NULL), so a caller never runs SQL
 * that means something else than the plan.
 */
export function deparseVerified(statement: Node): string | null {
  let sql: string;
  try {
    sql = deparseSync(statement);
    const reparsed = parseSync(sql).stmts?.[0]?.stmt;
    if (canonicalShape(reparsed) !== canonicalShape(statement)) return null;
  } catch {
    return null;
  }
  return sql;
}
