// Values of a distribution key as a statement gives them: constants the proxy can route on by itself,
// parameters bound later, and expressions a node must evaluate. Also the keys a WHERE clause pins.

import type { Node } from '@pgsql/types';

export type KeyValue =
  | { readonly kind: 'const'; readonly text: string | null }
  | { readonly kind: 'param'; readonly number: number }
  | { readonly kind: 'expr'; readonly node: Node };

/** How a value expression gives the key; DEFAULT is an expression the node evaluates. */
export function keyValueOf(node: Node): KeyValue {
  const body = node as unknown as Record<string, Record<string, unknown>>;
  const constant = body.A_Const as { isnull?: boolean; ival?: { ival?: number }; fval?: { fval: string }; sval?: { sval: string }; boolval?: { boolval?: boolean } } | undefined;
  if (constant) {
    if (constant.isnull) return { kind: 'const', text: null };
    if (constant.ival) return { kind: 'const', text: String(constant.ival.ival ?? 0) };
    if (constant.fval) return { kind: 'const', text: constant.fval.fval };
    if (constant.sval) return { kind: 'const', text: constant.sval.sval };
    if (constant.boolval) return { kind: 'const', text: constant.boolval.boolval ? 'true' : 'false' };
  }
  const param = body.ParamRef as { number: number } | undefined;
  if (param) return { kind: 'param', number: param.number };
  return { kind: 'expr', node };
}

function isKeyColumn(node: unknown, keyColumn: string, names: ReadonlySet<string>): boolean {
  const ref = (node as { ColumnRef?: { fields: { String?: { sval: string } }[] } }).ColumnRef;
  if (!ref) return false;
  const parts = ref.fields.map((f) => f.String?.sval);
  if (parts.length === 1) return parts[0] === keyColumn;
  return parts.length === 2 && names.has(parts[0] ?? '') && parts[1] === keyColumn;
}

/**
 * The key values a WHERE clause pins with `key = v`, `v = key` or `key IN (...)` among its top-level AND terms;
 * null when it does not pin the key (the statement may touch rows on any node). `names` are the ways the
 * statement may qualify the table (its name, its alias).
 */
export function pinnedKeyValues(where: Node | undefined, keyColumn: string, names: ReadonlySet<string>): KeyValue[] | null {
  if (!where) return null;
  const terms: Node[] = [];
  const collect = (node: Node) => {
    const bool = (node as { BoolExpr?: { boolop: string; args: Node[] } }).BoolExpr;
    if (bool?.boolop === 'AND_EXPR') bool.args.forEach(collect);
    else terms.push(node);
  };
  collect(where);
  let best: KeyValue[] | null = null;
  for (const term of terms) {
    const expr = (term as { A_Expr?: { kind: string; name: { String?: { sval: string } }[]; lexpr: Node; rexpr: Node } }).A_Expr;
    if (!expr || expr.name.length !== 1 || expr.name[0].String?.sval !== '=') continue;
    let values: KeyValue[] | null = null;
    if (expr.kind === 'AEXPR_OP') {
      if (isKeyColumn(expr.lexpr, keyColumn, names) && isValue(expr.rexpr)) values = [keyValueOf(expr.rexpr)];
      else if (isKeyColumn(expr.rexpr, keyColumn, names) && isValue(expr.lexpr)) values = [keyValueOf(expr.lexpr)];
    } else if (expr.kind === 'AEXPR_IN' && isKeyColumn(expr.lexpr, keyColumn, names)) {
      const items = (expr.rexpr as { List?: { items: Node[] } }).List?.items ?? [];
      if (items.every(isValue)) values = items.map(keyValueOf);
    }
    if (values && (best === null || values.length < best.length)) best = values;
  }
  return best;
}

/** A constant or a parameter, possibly cast: something that does not depend on the row. */
function isValue(node: Node): boolean {
  const body = node as unknown as Record<string, { arg?: Node }>;
  if ('A_Const' in body || 'ParamRef' in body) return true;
  if ('TypeCast' in body) return isValue(body.TypeCast.arg as Node);
  return false;
}
