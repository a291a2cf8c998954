// A generic pre-order walk over libpg-query's JSON trees, where every node is `{ Tag: { ...fields } }`.

export type AstVisitor = (tag: string, body: Record<string, unknown>) => void;

/** Calls `visit` for every tagged node under `value`, the root included. */
export function walkAst(value: unknown, visit: AstVisitor): void {
  if (Array.isArray(value)) {
    for (const item of value) walkAst(item, visit);
    return;
  }
  if (value === null || typeof value !== 'object') return;
  for (const [key, child] of Object.entries(value)) {
    if (/^[A-Z]/.test(key) && child !== null && typeof child === 'object' && !Array.isArray(child)) {
      visit(key, child as Record<string, unknown>);
    }
    walkAst(child, visit);
  }
}

/** The dotted name of a FuncCall's funcname list, lowercased: ['pg_catalog','now'] → 'pg_catalog.now'. */
export function functionName(body: Record<string, unknown>): string {
  const parts = (body.funcname as { String?: { sval?: string } }[] | undefined) ?? [];
  return parts.map((p) => p.String?.sval ?? '').join('.').toLowerCase();
}
