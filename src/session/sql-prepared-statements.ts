// SQL-level PREPARE and EXECUTE of reads over several nodes: a node's prepared statement would read only its own
// rows, so the proxy keeps the statement and, at each EXECUTE, evaluates the arguments on a node (once, as
// PostgreSQL does), writes them into the statement as typed literals and plans it like any read.

import type { Node } from '@pgsql/types';
import { deparseVerified } from '../planner/ast-tools';
import { walkAst } from '../planner/ast-walk';
import { bindParameters } from '../planner/bound-parameters';
import { parseSql } from '../planner/sql-parser';
import { PgError, SqlState } from '../protocol/errors';

/** The fields the parser gives every plain SELECT, so that a built one deparses and parses back the same. */
const plainSelect = { limitOption: 'LIMIT_OPTION_DEFAULT', op: 'SETOP_NONE' };

export interface SqlPreparedStatement {
  /** The prepared query, with its $n placeholders. */
  readonly sql: string;
  /** The declared parameter types as SQL (undefined where PREPARE left the type to PostgreSQL). */
  readonly typeNames: readonly (string | undefined)[];
  readonly parameterCount: number;
}

export function prepareSqlStatement(query: Node, argumentTypes: readonly Node[]): SqlPreparedStatement | PgError {
  const sql = deparseVerified(query);
  const typeNames = argumentTypes.map((typeName) => {
    const text = deparseVerified({ SelectStmt: { targetList: [{ ResTarget: { val: { TypeCast: { arg: { A_Const: { isnull: true } }, typeName: (typeName as { TypeName: unknown }).TypeName } } } }], ...plainSelect } } as unknown as Node);
    return text?.startsWith('SELECT NULL::') ? text.slice('SELECT NULL::'.length) : null;
  });
  if (sql === null || typeNames.includes(null)) {
    return new PgError({ code: SqlState.featureNotSupported, message: 'this prepared statement cannot be written as SQL for the nodes', hint: 'prepare it with the extended query protocol' });
  }
  let highest = 0;
  walkAst(query, (tag, body) => {
    if (tag === 'ParamRef') highest = Math.max(highest, body.number as number);
  });
  return { sql, typeNames: typeNames as string[], parameterCount: Math.max(highest, argumentTypes.length) };
}

/** The statement of one EXECUTE: its arguments evaluated by `evaluate` and written in. */
export async function executeSqlStatement(
  name: string,
  prepared: SqlPreparedStatement,
  execute: Node,
  evaluate: (sql: string) => Promise<(string | null)[][]>,
): Promise<{ node: Node; sql: string }> {
  const args = ((execute as { ExecuteStmt: { params?: Node[] } }).ExecuteStmt.params ?? []);
  if (args.length !== prepared.parameterCount) {
    throw new PgError({ code: '42601', message: `wrong number of parameters for prepared statement "${name}"`, detail: `Expected ${prepared.parameterCount} parameters but got ${args.length}.` });
  }
  let values: (string | null)[] = [];
  if (args.length > 0) {
    const targets = args.map((arg, i) => {
      const typeName = prepared.typeNames[i];
      const parsedType = typeName ? (parseSql(`SELECT NULL::${typeName}`) as { ok: true; statements: { node: Node }[] }) : null;
      const cast = parsedType ? ((parsedType.statements[0].node as unknown as { SelectStmt: { targetList: { ResTarget: { val: { TypeCast: { typeName: unknown } } } }[] } }).SelectStmt.targetList[0].ResTarget.val.TypeCast.typeName) : null;
      return { ResTarget: { val: cast ? { TypeCast: { arg, typeName: cast } } : arg } };
    });
    const select = deparseVerified({ SelectStmt: { targetList: targets, ...plainSelect } } as unknown as Node);
    if (select === null) throw new PgError({ code: SqlState.featureNotSupported, message: `the arguments of EXECUTE ${name} cannot be written as SQL for the nodes` });
    values = (await evaluate(select))[0] ?? [];
  }
  const sql = bindParameters(prepared.sql, values, prepared.typeNames);
  const parsed = parseSql(sql);
  if (!parsed.ok) throw parsed.error;
  return { node: parsed.statements[0].node, sql };
}
