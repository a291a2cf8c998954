// A statement with its extended-protocol parameters written in as literals, for the distributed planner, which
// plans on values, not placeholders. Only the `$n` tokens of the statement's own text are replaced (found by the
// parse tree's positions), each by a quoted literal cast to the parameter's declared type when the client gave one.

import { quoteLiteral } from '../catalog/partition-rule';
import { PgError, SqlState } from '../protocol/errors';
import { walkAst } from './ast-walk';
import { parseSql } from './sql-parser';

/**
 * `sql` with `$n` replaced by `values[n-1]` (text, null for NULL). `typeNames[n-1]` is the declared type's name,
 * or undefined when the client left the type to PostgreSQL (the literal is then untyped, as the parameter was).
 */
export function bindParameters(sql: string, values: readonly (string | null)[], typeNames: readonly (string | undefined)[]): string {
  const parsed = parseSql(sql);
  if (!parsed.ok) throw parsed.error;
  const edits: { start: number; end: number; text: string }[] = [];
  walkAst(parsed.statements[0]?.node, (tag, body) => {
    if (tag !== 'ParamRef') return;
    const number = body.number as number;
    if (number < 1 || number > values.length) throw new PgError({ code: '08P01', message: `bind message supplies ${values.length} parameters, but the statement needs $${number}` });
    const start = body.location as number;
    const end = start + 1 + String(number).length;
    const value = values[number - 1];
    const type = typeNames[number - 1];
    const literal = value === null ? 'NULL' : quoteLiteral(value);
    edits.push({ start, end, text: type ? `CAST(${literal} AS ${type})` : literal });
  });
  edits.sort((a, b) => b.start - a.start);
  let out = sql;
  for (const edit of edits) {
    if (out.slice(edit.start, edit.end) !== `$${out.slice(edit.start + 1, edit.end)}` || out[edit.start] !== '$') {
      throw new PgError({ code: SqlState.internalError, message: 'a parameter could not be found in the statement text' });
    }
    out = out.slice(0, edit.start) + edit.text + out.slice(edit.end);
  }
  return out;
}
