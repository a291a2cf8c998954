// Writes must compute the same values on every node. Time functions (now(), CURRENT_TIMESTAMP, ...) are
// evaluated once on the main node and replaced by literals; functions whose value differs per node and cannot
// be pinned (random(), gen_random_uuid(), pg_backend_pid(), ...) are rejected with 0A000.
// N.B. this applies to data-modifying statements only: a DEFAULT now() in DDL is stored, not evaluated.

import type { Node } from '@pgsql/types';
import { deparseSync } from 'pgsql-deparser';
import { PgError, SqlState } from '../protocol/errors';
import { functionName, walkAst } from './ast-walk';
import { nodeTag } from './sql-parser';

const timeFunctionTypes: Record<string, string> = {
  now: 'timestamptz',
  transaction_timestamp: 'timestamptz',
  statement_timestamp: 'timestamptz',
  clock_timestamp: 'timestamptz',
  timeofday: 'text',
};

const sqlValueFunctionTypes: Record<string, string> = {
  SVFOP_CURRENT_DATE: 'date',
  SVFOP_CURRENT_TIME: 'timetz',
  SVFOP_CURRENT_TIME_N: 'timetz',
  SVFOP_CURRENT_TIMESTAMP: 'timestamptz',
  SVFOP_CURRENT_TIMESTAMP_N: 'timestamptz',
  SVFOP_LOCALTIME: 'time',
  SVFOP_LOCALTIME_N: 'time',
  SVFOP_LOCALTIMESTAMP: 'timestamp',
  SVFOP_LOCALTIMESTAMP_N: 'timestamp',
};

const perNodeFunctions = new Set([
  'random', 'random_normal', 'setseed', 'gen_random_uuid', 'uuid_generate_v1', 'uuid_generate_v1mc', 'uuid_generate_v4',
  'pg_backend_pid', 'txid_current', 'pg_current_xact_id', 'inet_server_addr', 'inet_server_port',
]);

const dataModifying = new Set(['InsertStmt', 'UpdateStmt', 'DeleteStmt', 'MergeStmt', 'SelectStmt', 'CreateTableAsStmt']);

export type DeterminismCheck =
  | { kind: 'deterministic' }
  | { kind: 'time'; count: number }
  | { kind: 'rejected'; error: PgError };

function baseName(name: string): string {
  return name.startsWith('pg_catalog.') ? name.slice('pg_catalog.'.length) : name;
}

/** Whether an expression calls a function whose value differs per node ('per-node') or only a time function. */
export function expressionVaries(expression: Node): 'time' | 'per-node' | null {
  let found: 'time' | 'per-node' | null = null;
  walkAst({ expression }, (tag, body) => {
    if (tag === 'SQLValueFunction' && sqlValueFunctionTypes[String(body.op)]) found ??= 'time';
    if (tag === 'FuncCall') {
      const name = baseName(functionName(body));
      if (perNodeFunctions.has(name)) found = 'per-node';
      else if (timeFunctionTypes[name]) found ??= 'time';
    }
  });
  return found;
}

/** Whether a write statement can run as is on every node, needs its time functions pinned, or must be refused. */
export function checkDeterminism(node: Node): DeterminismCheck {
  if (!dataModifying.has(nodeTag(node))) return { kind: 'deterministic' };
  let count = 0;
  let rejected: string | null = null;
  walkAst(node, (tag, body) => {
    if (tag === 'SQLValueFunction' && sqlValueFunctionTypes[String(body.op)]) count++;
    if (tag === 'FuncCall') {
      const name = baseName(functionName(body));
      if (timeFunctionTypes[name]) count++;
      else if (perNodeFunctions.has(name)) rejected ??= name;
    }
  });
  if (rejected) {
    return {
      kind: 'rejected',
      error: new PgError({
        code: SqlState.featureNotSupported,
        message: `function ${rejected}() gives a different value on each node, so a write that calls it would diverge the replicas`,
        hint: 'compute the value in the client and pass it as a literal or parameter',
      }),
    };
  }
  return count > 0 ? { kind: 'time', count } : { kind: 'deterministic' };
}

type TimeNode = { node: Node; type: string };

/** Replaces every time-function node in a copy of the tree; `replace` gets each node and returns its literal. */
function mapTimeNodes(value: unknown, replace: (found: TimeNode) => Node): unknown {
  if (Array.isArray(value)) return value.map((item) => mapTimeNodes(item, replace));
  if (value === null || typeof value !== 'object') return value;
  const entries = Object.entries(value);
  if (entries.length === 1) {
    const [tag, body] = entries[0] as [string, Record<string, unknown>];
    if (tag === 'SQLValueFunction' && sqlValueFunctionTypes[String(body.op)]) {
      return replace({ node: value as Node, type: sqlValueFunctionTypes[String(body.op)] });
    }
    if (tag === 'FuncCall' && timeFunctionTypes[baseName(functionName(body))] && !(body.args as unknown[] | undefined)?.length) {
      return replace({ node: value as Node, type: timeFunctionTypes[baseName(functionName(body))] });
    }
  }
  const out: Record<string, unknown> = {};
  for (const [key, child] of entries) out[key] = mapTimeNodes(child, replace);
  return out;
}

function literal(text: string, type: string): Node {
  return {
    TypeCast: {
      arg: { A_Const: { sval: { sval: text } } },
      typeName: { names: [{ String: { sval: 'pg_catalog' } }, { String: { sval: type } }], typemod: -1 },
    },
  } as Node;
}

/**
 * Returns the statement's SQL with each time function replaced by the value `evaluate` computed for it (on the
 * main node, in the session's transaction, so now() keeps its transaction-start meaning).
 */
export async function pinTimeFunctions(node: Node, evaluate: (sql: string) => Promise<(string | null)[]>): Promise<string> {
  const found: TimeNode[] = [];
  mapTimeNodes(node, (t) => {
    found.push(t);
    return t.node;
  });
  if (found.length === 0) return deparseSync(node);
  const select = 'SELECT ' + found.map((t) => `(${deparseSync(t.node)})::text`).join(', ');
  const values = await evaluate(select);
  let index = 0;
  const rewritten = mapTimeNodes(node, (t) => literal(values[index++] ?? '', t.type));
  return deparseSync(rewritten as Node);
}
