// Decides whether a SELECT is node-local: whether every row of its answer (or of each group, for the caller to
// check) can be computed from the rows of one node. That holds when its distributed tables share a colocation
// group and are all joined on their distribution keys, directly or through correlated subqueries, and no
// replicated table is the preserved side of an outer join with a distributed one (its unmatched rows would appear
// once per node). The answer is a reason, never an exception, so the next strategy can try.

import type { Node } from '@pgsql/types';
import type { Catalog } from '../catalog/catalog';
import type { DistributedRule } from '../catalog/partition-rule';
import { conjuncts, unwrap } from './ast-tools';
import { walkAst } from './ast-walk';

type Body = Record<string, unknown>;

/** One table of the FROM clause of one query level. */
export interface ScopeTable {
  readonly name: string;
  readonly schema: string | undefined;
  /** What the query calls it: its alias, else its name. */
  readonly alias: string;
  readonly rule: DistributedRule | null;
  /** True under the nullable side of an outer join: its key may be NULL in the joined rows. */
  readonly nullable: boolean;
  readonly id: number;
}

export interface Scope {
  readonly tables: ScopeTable[];
  readonly parent: Scope | null;
  /** Names of CTEs visible here, which shadow table names. */
  readonly ctes: ReadonlySet<string>;
}

export type Colocation =
  | { readonly ok: true; readonly scope: Scope; readonly distributed: readonly ScopeTable[] }
  | { readonly ok: false; readonly reason: string };

interface Analysis {
  nextId: number;
  readonly parent: Map<number, number>;
  readonly all: ScopeTable[];
  group: number | null;
  reason: string | null;
}

/** Whether the statement's query (a SelectStmt body) is node-local, with the scope of its top level. */
export function analyzeColocation(select: Body, catalog: Catalog): Colocation {
  const analysis: Analysis = { nextId: 0, parent: new Map(), all: [], group: null, reason: null };
  const scope = analyzeLevel(select, null, catalog, analysis, new Set());
  if (analysis.reason) return { ok: false, reason: analysis.reason };
  const distributed = analysis.all.filter((t) => t.rule);
  if (distributed.length === 0) return { ok: false, reason: 'no distributed table is read at the top level' };
  const root = find(analysis, distributed[0].id);
  const apart = distributed.find((t) => find(analysis, t.id) !== root);
  if (apart) {
    return { ok: false, reason: `"${apart.alias}" is not joined to "${distributed[0].alias}" on their distribution keys` };
  }
  return { ok: true, scope, distributed: scope.tables.filter((t) => t.rule) };
}

function find(analysis: Analysis, id: number): number {
  let current = id;
  while (analysis.parent.has(current) && analysis.parent.get(current) !== current) current = analysis.parent.get(current)!;
  return current;
}

function union(analysis: Analysis, a: number, b: number): void {
  const ra = find(analysis, a);
  const rb = find(analysis, b);
  if (ra !== rb) analysis.parent.set(ra, rb);
}

function fail(analysis: Analysis, reason: string): void {
  analysis.reason ??= reason;
}

function analyzeLevel(select: Body, parent: Scope | null, catalog: Catalog, analysis: Analysis, outerCtes: ReadonlySet<string>): Scope {
  const ctes = new Set(outerCtes);
  const withClause = select.withClause as { ctes: { CommonTableExpr: Body }[] } | undefined;
  for (const cte of withClause?.ctes ?? []) {
    const body = cte.CommonTableExpr;
    if (readsDistributed(body.ctequery, catalog, ctes)) fail(analysis, `the CTE "${body.ctename as string}" reads a distributed table`);
    ctes.add(body.ctename as string);
  }
  if (select.op && select.op !== 'SETOP_NONE') {
    fail(analysis, 'a set operation (UNION, INTERSECT, EXCEPT) over distributed tables');
    return { tables: [], parent, ctes };
  }
  const scope: Scope = { tables: [], parent, ctes };
  for (const item of (select.fromClause as Node[] | undefined) ?? []) addFromItem(item, scope, false, catalog, analysis);
  for (const condition of conjuncts(select.whereClause)) linkEquality(condition, scope, analysis);
  checkSublinks([select.targetList, select.whereClause, select.havingClause, select.sortClause, select.groupClause], scope, catalog, analysis);
  return scope;
}

function addFromItem(item: Node, scope: Scope, nullable: boolean, catalog: Catalog, analysis: Analysis): ScopeTable[] {
  const [tag, body] = unwrap(item);
  switch (tag) {
    case 'RangeVar': {
      const name = body.relname as string;
      const schema = body.schemaname as string | undefined;
      const alias = (body.alias as { aliasname?: string } | undefined)?.aliasname ?? name;
      const rule = !schema && scope.ctes.has(name) ? null : catalog.distributed(schema, name);
      const table: ScopeTable = { name, schema, alias, rule, nullable, id: analysis.nextId++ };
      if (rule) {
        if (body.inh === false) fail(analysis, `ONLY on distributed table "${name}"`);
        if (analysis.group === null) analysis.group = rule.colocationGroup;
        else if (analysis.group !== rule.colocationGroup) fail(analysis, `"${alias}" is in another colocation group than the other distributed tables`);
        analysis.parent.set(table.id, table.id);
        analysis.all.push(table);
      }
      scope.tables.push(table);
      return [table];
    }
    case 'JoinExpr': {
      const joinType = body.jointype as string;
      const left = addFromItem(body.larg as Node, scope, nullable || joinType === 'JOIN_RIGHT' || joinType === 'JOIN_FULL', catalog, analysis);
      const right = addFromItem(body.rarg as Node, scope, nullable || joinType === 'JOIN_LEFT' || joinType === 'JOIN_FULL', catalog, analysis);
      const leftDistributed = left.some((t) => t.rule);
      const rightDistributed = right.some((t) => t.rule);
      if (joinType !== 'JOIN_INNER' && leftDistributed !== rightDistributed) {
        const preservedReplicated = joinType === 'JOIN_FULL' || (joinType === 'JOIN_LEFT' ? !leftDistributed : !rightDistributed);
        if (preservedReplicated) fail(analysis, 'an outer join that preserves the rows of a replicated table against a distributed one');
      }
      for (const condition of conjuncts(body.quals)) linkEquality(condition, scope, analysis);
      for (const column of (body.usingClause as { String: { sval: string } }[] | undefined) ?? []) {
        const l = left.find((t) => t.rule?.keyColumn === column.String.sval);
        const r = right.find((t) => t.rule?.keyColumn === column.String.sval);
        if (l && r) union(analysis, l.id, r.id);
      }
      if (body.isNatural) fail(analysis, 'a NATURAL join of distributed tables');
      checkSublinks([body.quals], scope, catalog, analysis);
      return [...left, ...right];
    }
    case 'RangeSubselect':
      return addSubquery(body, scope, nullable, catalog, analysis);
    case 'RangeFunction':
    case 'RangeTableFunc': {
      if (readsDistributed(body, catalog, scope.ctes)) fail(analysis, 'a function in FROM that reads a distributed table');
      return [];
    }
    default:
      fail(analysis, `${tag} in FROM`);
      return [];
  }
}

/**
 * A subquery in FROM over distributed tables (a view, expanded) is node-local when its own tables are, and it
 * neither limits, de-duplicates, windows nor aggregates across keys: each node's part of its rows is then the part
 * of the whole that node holds. It joins the outer query as one more distributed table, keyed by the column that
 * carries its tables' distribution key (when it selects one).
 */
function addSubquery(body: Body, scope: Scope, nullable: boolean, catalog: Catalog, analysis: Analysis): ScopeTable[] {
  if (!readsDistributed(body.subquery, catalog, scope.ctes)) return [];
  const subselect = (body.subquery as { SelectStmt?: Body }).SelectStmt;
  const why = (what: string): ScopeTable[] => {
    fail(analysis, `a subquery in FROM ${what}`);
    return [];
  };
  if (!subselect) return why('that is not a plain SELECT');
  if (body.lateral) return why('that is LATERAL and reads a distributed table');
  if (subselect.limitCount || subselect.limitOffset) return why('with LIMIT or OFFSET over a distributed table');
  if ((subselect.distinctClause as unknown[] | undefined)?.length) return why('with DISTINCT over a distributed table');
  if (JSON.stringify([subselect.targetList, subselect.sortClause, subselect.windowClause]).includes('"over"') || (subselect.windowClause as unknown[] | undefined)?.length) {
    return why('with window functions over a distributed table');
  }
  const before = analysis.all.length;
  const inner = analyzeLevel(subselect, scope.parent, catalog, analysis, scope.ctes);
  if (hasAggregateOrGroup(subselect) && !groupsByKey(subselect, inner)) return why('that aggregates a distributed table across its keys');
  const representative = analysis.all.slice(before).find((t) => t.rule && inner.tables.includes(t));
  if (!representative) return why('that reads a distributed table only through its own subqueries');
  const alias = (body.alias as { aliasname?: string } | undefined)?.aliasname ?? '';
  const key = exposedKey(subselect, inner, body.alias as Body | undefined);
  // A key no column reference can name, when the subquery does not select its tables' key.
  const table: ScopeTable = { name: alias, schema: undefined, alias, rule: { ...representative.rule!, keyColumn: key ?? '\u0000' }, nullable, id: analysis.nextId++ };
  analysis.parent.set(table.id, table.id);
  union(analysis, table.id, representative.id);
  analysis.all.push(table);
  scope.tables.push(table);
  return [table];
}

/** The output column of a subquery that is the distribution key of one of its tables, by its outer name. */
function exposedKey(subselect: Body, inner: Scope, alias: Body | undefined): string | null {
  const renamed = ((alias?.colnames as { String: { sval: string } }[] | undefined) ?? []).map((c) => c.String.sval);
  let position = 0;
  for (const target of (subselect.targetList as { ResTarget: Body }[] | undefined) ?? []) {
    const value = target.ResTarget.val as Body;
    const fields = ((value?.ColumnRef as Body | undefined)?.fields as Body[] | undefined) ?? [];
    if (fields.length > 0 && 'A_Star' in fields[fields.length - 1]) {
      // `*` or `t.*`: the key keeps its name, at a position only the catalog knows.
      const qualifier = fields.length >= 2 ? (fields[fields.length - 2].String as { sval: string }).sval : null;
      const table = inner.tables.find((t) => t.rule && !t.nullable && (qualifier === null || t.alias === qualifier));
      return table && renamed.length === 0 ? table.rule!.keyColumn : null;
    }
    const table = keyTableOf(value, inner);
    if (table && !table.nullable && inner.tables.includes(table)) {
      const last = fields[fields.length - 1]?.String as { sval: string } | undefined;
      return renamed[position] ?? (target.ResTarget.name as string | undefined) ?? last?.sval ?? null;
    }
    position++;
  }
  return null;
}

/** The table a column reference names, when it is the distribution key of a distributed table in reach. */
export function keyTableOf(node: unknown, scope: Scope | null): ScopeTable | null {
  if (!node || typeof node !== 'object') return null;
  const [tag, body] = unwrap(node);
  if (tag === 'TypeCast') return null;
  if (tag !== 'ColumnRef') return null;
  const fields = (body.fields as Body[]).map((f) => (f.String as { sval: string } | undefined)?.sval);
  if (fields.some((f) => f === undefined)) return null;
  const column = fields[fields.length - 1]!;
  const qualifier = fields.length >= 2 ? fields[fields.length - 2] : null;
  for (let level: Scope | null = scope; level; level = level.parent) {
    if (qualifier) {
      const table = level.tables.find((t) => t.alias === qualifier && (fields.length < 3 || t.schema === fields[0]));
      if (table) return table.rule?.keyColumn === column ? table : null;
    } else {
      const tables = level.tables.filter((t) => t.rule?.keyColumn === column);
      if (tables.length === 1) return tables[0];
      if (tables.length > 1) return null;
    }
  }
  return null;
}

/** Records `a.key = b.key` between two distributed tables as a join on their keys. */
function linkEquality(condition: Node, scope: Scope, analysis: Analysis): void {
  const [tag, body] = unwrap(condition);
  if (tag !== 'A_Expr' || body.kind !== 'AEXPR_OP') return;
  const name = body.name as { String: { sval: string } }[];
  if (name.length !== 1 || name[0].String.sval !== '=') return;
  const left = keyTableOf(body.lexpr, scope);
  const right = keyTableOf(body.rexpr, scope);
  if (left && right) union(analysis, left.id, right.id);
}

/** Subqueries in expressions: each one that reads a distributed table must be tied to the outer keys. */
function checkSublinks(parts: unknown[], scope: Scope, catalog: Catalog, analysis: Analysis): void {
  const sublinks: Body[] = [];
  collectSublinks(parts, sublinks);
  for (const sublink of sublinks) {
    const subselect = (sublink.subselect as { SelectStmt: Body }).SelectStmt;
    if (!readsDistributed(sublink.subselect, catalog, scope.ctes)) continue;
    const before = analysis.all.length;
    const inner = analyzeLevel(subselect, scope, catalog, analysis, scope.ctes);
    const innerTables = analysis.all.slice(before);
    if (innerTables.length === 0) continue;
    // IN / = ANY (SELECT key ...) against an outer key ties the subquery to the outer row's node.
    if (sublink.subLinkType === 'ANY_SUBLINK' && sublink.testexpr) {
      const outer = keyTableOf(sublink.testexpr, scope);
      const target = (subselect.targetList as { ResTarget: Body }[] | undefined)?.[0]?.ResTarget.val;
      const innerKey = keyTableOf(target, inner);
      if (outer && innerKey && innerTables.includes(innerKey)) {
        if (subselect.limitCount || subselect.limitOffset) fail(analysis, 'a subquery with LIMIT over a distributed table');
        if (hasAggregateOrGroup(subselect) && !groupsByKey(subselect, inner)) fail(analysis, 'an IN subquery that aggregates a distributed table across its keys');
        union(analysis, outer.id, innerKey.id);
        continue;
      }
    }
    // Otherwise the subquery must be correlated on the key: `inner.key = outer.key` among its WHERE terms.
    let tied = false;
    for (const condition of conjuncts(subselect.whereClause)) {
      const [tag, body] = unwrap(condition);
      if (tag !== 'A_Expr' || body.kind !== 'AEXPR_OP' || (body.name as { String: { sval: string } }[])[0]?.String.sval !== '=') continue;
      const left = keyTableOf(body.lexpr, inner);
      const right = keyTableOf(body.rexpr, inner);
      if (left && right && innerTables.includes(left) !== innerTables.includes(right)) {
        union(analysis, left.id, right.id);
        tied = true;
      }
    }
    if (!tied) fail(analysis, 'a subquery that reads a distributed table without being correlated on its distribution key');
  }
}

function collectSublinks(value: unknown, out: Body[]): void {
  if (Array.isArray(value)) {
    for (const item of value) collectSublinks(item, out);
    return;
  }
  if (value === null || typeof value !== 'object') return;
  for (const [key, child] of Object.entries(value)) {
    if (key === 'SubLink') {
      out.push(child as Body);
      collectSublinks((child as Body).testexpr, out);
      continue; // the subquery's own sublinks are checked when its level is analysed
    }
    collectSublinks(child, out);
  }
}

function hasAggregateOrGroup(select: Body): boolean {
  return ((select.groupClause as unknown[] | undefined)?.length ?? 0) > 0 || Boolean(select.havingClause) || containsAggregateCall(select.targetList);
}

function groupsByKey(select: Body, scope: Scope): boolean {
  return ((select.groupClause as Node[] | undefined) ?? []).some((item) => {
    const table = keyTableOf(item, scope);
    return table !== null && !table.nullable && scope.tables.includes(table);
  });
}

const knownAggregateNames = new Set([
  'count', 'sum', 'avg', 'min', 'max', 'bool_and', 'bool_or', 'every', 'bit_and', 'bit_or', 'bit_xor', 'stddev', 'stddev_samp',
  'stddev_pop', 'variance', 'var_samp', 'var_pop', 'string_agg', 'array_agg', 'json_agg', 'jsonb_agg', 'json_object_agg',
  'jsonb_object_agg', 'xmlagg', 'percentile_cont', 'percentile_disc', 'mode', 'corr', 'covar_pop', 'covar_samp', 'regr_avgx',
  'regr_avgy', 'regr_count', 'regr_intercept', 'regr_r2', 'regr_slope', 'regr_sxx', 'regr_sxy', 'regr_syy', 'range_agg',
  'range_intersect_agg', 'any_value', 'rank', 'dense_rank', 'percent_rank', 'cume_dist',
]);

export function isKnownAggregate(name: string): boolean {
  return knownAggregateNames.has(name);
}

/** True when the expression calls an aggregate (of its own level: subqueries are not entered). */
export function containsAggregateCall(value: unknown, extraAggregates: ReadonlySet<string> = new Set()): boolean {
  let found = false;
  const visit = (node: unknown): void => {
    if (found || node === null || typeof node !== 'object') return;
    if (Array.isArray(node)) return node.forEach(visit);
    for (const [key, child] of Object.entries(node)) {
      if (key === 'SubLink') continue;
      if (key === 'FuncCall') {
        const call = child as Body;
        const names = call.funcname as { String: { sval: string } }[];
        const name = names[names.length - 1].String.sval;
        if (!call.over && (knownAggregateNames.has(name) || extraAggregates.has(name) || call.agg_star || call.agg_distinct || call.agg_order || call.agg_within_group || call.agg_filter)) {
          found = true;
          return;
        }
      }
      visit(child);
    }
  };
  visit(value);
  return found;
}

/** Whether a tree reads any distributed table (CTE names shadow tables). */
export function readsDistributed(value: unknown, catalog: Catalog, ctes: ReadonlySet<string> = new Set()): boolean {
  let found = false;
  const local = new Set(ctes);
  walkAst(value, (tag, body) => {
    if (tag === 'CommonTableExpr') local.add(body.ctename as string);
  });
  walkAst(value, (tag, body) => {
    if (tag !== 'RangeVar') return;
    const schema = body.schemaname as string | undefined;
    const name = body.relname as string;
    if (!schema && local.has(name)) return;
    if (catalog.distributed(schema, name)) found = true;
  });
  return found;
}
