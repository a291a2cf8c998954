// The SQL surface of the catalog: SELECT parapool.distribute_table(...), replicate_table(...) and
// undistribute_table(...). Each validates on the main node, then changes the rule and moves the rows in one
// transaction per node, committed on all nodes atomically: interrupted at any point, the table is left as it was.

import type { Node } from '@pgsql/types';
import { describeNode } from '../cluster/backend-node';
import { log } from '../log';
import { functionName } from '../planner/ast-walk';
import { commitEverywhere } from '../executor/two-phase-commit';
import { copyBetweenNodes } from '../executor/copy-transfer';
import type { BackendConnection } from '../backend/backend-connection';
import { PgError, SqlState } from '../protocol/errors';
import { readCatalog, type Catalog, type CatalogRegistry } from './catalog';
import { catalogSchemaSql } from './catalog-store';
import { type DistributedRule, type DistributionMethod, type PartitionRule, qualifiedName, quoteIdent, quoteLiteral } from './partition-rule';
import { arrayLiteral, isHashableKeyType, placementSql } from './placement';

export type RuleCommandName = 'distribute_table' | 'replicate_table' | 'undistribute_table';

export const ruleCommandNames = new Set<string>(['parapool.distribute_table', 'parapool.replicate_table', 'parapool.undistribute_table']);

export interface RuleCommand {
  readonly name: RuleCommandName;
  readonly args: ReadonlyMap<string, string | null>;
}

const parameterNames: Record<RuleCommandName, string[]> = {
  distribute_table: ['table_name', 'key_column', 'method', 'params', 'colocate_with'],
  replicate_table: ['table_name'],
  undistribute_table: ['table_name'],
};

function invalid(message: string, hint?: string): PgError {
  return new PgError({ code: SqlState.invalidParameterValue, message, hint });
}

/** Reads `SELECT parapool.f(...)` into a command; throws 42883/22023 for bad calls. Returns null for other statements. */
export function parseRuleCommand(node: Node): RuleCommand | null {
  const select = (node as { SelectStmt?: Record<string, unknown> }).SelectStmt;
  if (!select) return null;
  const targets = (select.targetList as { ResTarget?: { val?: { FuncCall?: Record<string, unknown> } } }[] | undefined) ?? [];
  const call = targets.length === 1 ? targets[0].ResTarget?.val?.FuncCall : undefined;
  if (!call || !ruleCommandNames.has(functionName(call)) || select.fromClause || select.whereClause) return null;
  const name = functionName(call).slice('parapool.'.length) as RuleCommandName;
  const names = parameterNames[name];
  const args = new Map<string, string | null>();
  const list = (call.args as Record<string, unknown>[] | undefined) ?? [];
  list.forEach((arg, index) => {
    let parameter = names[index];
    let value = arg;
    if ('NamedArgExpr' in arg) {
      const named = arg.NamedArgExpr as { name: string; arg: Record<string, unknown> };
      parameter = named.name === 'distribution_column' ? 'key_column' : ['bounds', 'values', 'function'].includes(named.name) ? 'params' : named.name;
      value = named.arg;
    }
    if (!names.includes(parameter)) {
      throw new PgError({ code: '42883', message: `function parapool.${name} has no parameter ${parameter ?? `number ${index + 1}`}`, hint: `parameters: ${names.join(', ')}` });
    }
    args.set(parameter, constantText(value, parameter));
  });
  if (!args.get('table_name')) throw invalid(`parapool.${name} needs a table name`);
  if (name === 'distribute_table' && !args.get('key_column')) throw invalid('parapool.distribute_table needs a key column');
  return { name, args };
}

function constantText(node: Record<string, unknown>, parameter: string): string | null {
  const inner = 'TypeCast' in node ? ((node.TypeCast as { arg: Record<string, unknown> }).arg) : node;
  const constant = inner.A_Const as { isnull?: boolean; sval?: { sval: string }; ival?: { ival?: number }; fval?: { fval: string } } | undefined;
  if (!constant) throw invalid(`argument ${parameter} must be a constant`);
  if (constant.isnull) return null;
  if (constant.sval) return constant.sval.sval;
  if (constant.ival) return String(constant.ival.ival ?? 0);
  if (constant.fval) return constant.fval.fval;
  throw invalid(`argument ${parameter} must be a constant`);
}

export interface RuleCommandContext {
  readonly database: string;
  /** One connection per configured node, in node order, all idle outside a transaction. */
  readonly connections: readonly BackendConnection[];
  readonly registry: CatalogRegistry;
  readonly catalog: Catalog;
  /** Progress for the client (NoticeResponse) and the log. */
  progress(message: string): void;
}

/** Runs a rule command; returns the text of its one-row result. */
export async function runRuleCommand(command: RuleCommand, context: RuleCommandContext): Promise<string> {
  return context.registry.exclusive(context.database, async () => {
    // A rule change made by another session meanwhile must be seen before deciding.
    const catalog = await readCatalog(context.database, context.connections);
    const ctx = { ...context, catalog };
    for (const connection of context.connections) await connection.query(catalogSchemaSql);
    switch (command.name) {
      case 'distribute_table':
        return distributeTable(command.args, ctx);
      case 'replicate_table':
        return replicateTable(command.args, ctx);
      case 'undistribute_table':
        return undistributeTable(command.args, ctx);
    }
  });
}

interface ResolvedTable {
  readonly schema: string;
  readonly name: string;
  readonly oid: string;
}

async function resolveTable(main: BackendConnection, text: string): Promise<ResolvedTable> {
  const { rows } = await main.query(
    `SELECT n.nspname, c.relname, c.oid::text, c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = to_regclass(${quoteLiteral(text)})`,
  );
  if (rows.length === 0) throw new PgError({ code: '42P01', message: `relation "${text}" does not exist` });
  const [schema, name, oid, kind] = rows[0] as string[];
  if (kind !== 'r') throw new PgError({ code: '42809', message: `"${text}" is not an ordinary table` });
  if (schema === 'parapool' || schema === 'pg_catalog' || schema === 'information_schema') {
    throw new PgError({ code: '42809', message: `"${text}" is a system table and cannot be distributed` });
  }
  return { schema, name, oid };
}

/** Ensures every node is connected: rule changes touch all of them or none. */
function requireAllNodes(context: RuleCommandContext, nodeCount: number): void {
  if (context.connections.length !== nodeCount) {
    throw new PgError({ code: SqlState.objectNotInPrerequisiteState, message: 'a partition rule can change only while every node is in service', hint: 'SHOW pool_nodes lists the nodes that are down' });
  }
}

async function distributeTable(args: ReadonlyMap<string, string | null>, context: RuleCommandContext): Promise<string> {
  const nodeCount = context.connections.length;
  const main = context.connections[0];
  const table = await resolveTable(main, args.get('table_name')!);
  const existing = context.catalog.lookup(table.schema, table.name);
  if (existing?.kind === 'distributed') {
    throw new PgError({ code: SqlState.objectNotInPrerequisiteState, message: `table "${table.name}" is already distributed`, hint: 'undistribute it first' });
  }
  const keyColumn = args.get('key_column')!;
  const column = await main.query(
    `SELECT format_type(atttypid, atttypmod), atttypid::text, attnotnull FROM pg_attribute WHERE attrelid = ${table.oid} AND attname = ${quoteLiteral(keyColumn)} AND attnum > 0 AND NOT attisdropped`,
  );
  if (column.rows.length === 0) throw new PgError({ code: '42703', message: `column "${keyColumn}" of relation "${table.name}" does not exist` });
  const [keyType, keyTypeOid] = column.rows[0] as string[];
  const method = (args.get('method') ?? 'hash').toLowerCase() as DistributionMethod;
  if (!['hash', 'range', 'list', 'function'].includes(method)) throw invalid(`unknown distribution method "${method}"`, 'use hash, range, list or function');
  const params = args.get('params') ?? null;
  let rule: DistributedRule = {
    kind: 'distributed',
    table: { schema: table.schema, name: table.name },
    method,
    keyColumn,
    keyType,
    keyTypeOid: Number(keyTypeOid),
    bounds: null,
    lists: null,
    functionName: null,
    colocationGroup: context.catalog.nextColocationGroup(),
    nodeCount,
    version: (existing?.version ?? 0) + 1,
  };
  switch (method) {
    case 'hash':
      if (params !== null) throw invalid('hash distribution takes no parameters');
      if (!isHashableKeyType(rule.keyTypeOid)) {
        throw new PgError({ code: '42883', message: `could not identify a hash function for type ${keyType}`, hint: 'hash keys may be smallint, integer, bigint, numeric, text, varchar, char, date, timestamp, timestamptz or uuid; use range, list or function distribution for others' });
      }
      break;
    case 'range':
      rule = { ...rule, bounds: await validateBounds(main, params, keyType, nodeCount) };
      break;
    case 'list':
      rule = { ...rule, lists: await validateLists(main, params, keyType, nodeCount) };
      break;
    case 'function':
      rule = { ...rule, functionName: await validateFunction(main, params, keyType) };
      break;
  }
  const colocateWith = args.get('colocate_with');
  if (colocateWith) rule = { ...rule, colocationGroup: await colocationGroupOf(main, context.catalog, colocateWith, rule) };
  const unique = await main.query(
    `SELECT conname FROM pg_constraint c JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attname = ${quoteLiteral(keyColumn)} WHERE c.conrelid = ${table.oid} AND c.contype IN ('p', 'u', 'x') AND NOT (a.attnum = ANY (c.conkey))`,
  );
  if (unique.rows.length > 0) {
    throw new PgError({ code: SqlState.featureNotSupported, message: `cannot distribute table "${table.name}": constraint "${unique.rows[0][0]}" does not include the key column "${keyColumn}"`, detail: 'each node can enforce uniqueness only over the rows it holds' });
  }
  const sequenced = await main.query(
    `SELECT a.attname FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum WHERE a.attrelid = ${table.oid} AND a.attnum > 0 AND NOT a.attisdropped AND (a.attidentity <> '' OR pg_get_expr(d.adbin, d.adrelid) LIKE 'nextval(%') ORDER BY a.attnum LIMIT 1`,
  );
  if (sequenced.rows.length > 0) {
    throw new PgError({
      code: SqlState.featureNotSupported,
      message: `cannot distribute table "${table.name}": column "${sequenced.rows[0][0]}" takes its values from a sequence, and each node would number its rows on its own`,
      hint: 'drop the default or identity (give the values, or default to gen_random_uuid()) before distributing the table',
    });
  }
  requireAllNodes(context, nodeCount);
  await changeOnEveryNode(context, table, async (connection, nodeIndex) => {
    const placement = placementSql(rule, quoteIdent(keyColumn));
    if (nodeIndex === 0) await checkExistingKeys(connection, table, rule, placement);
    const before = Number((await connection.query(`SELECT count(*) FROM ${qualifiedName(table)}`)).rows[0][0]);
    // One DELETE per node, which reports nothing until it ends: its start is the progress there is to give.
    context.progress(`${describeNode(connection.node)} holds ${before} rows of ${table.name}; removing those of other nodes`);
    const deleted = await connection.query(`DELETE FROM ${qualifiedName(table)} WHERE (${placement}) IS DISTINCT FROM ${nodeIndex}`);
    const removed = Number(deleted.tags[0]?.split(' ')[1] ?? 0);
    context.progress(`${describeNode(connection.node)} keeps ${before - removed} of ${before} rows of ${table.name}`);
    await writeRule(connection, rule);
  });
  return `distributed ${table.name} by ${method} of ${keyColumn} over ${nodeCount} nodes`;
}

/** Fails before any row moves when a row has no node: a NULL key, no list entry, a function outside 0..n-1. */
async function checkExistingKeys(connection: BackendConnection, table: ResolvedTable, rule: DistributedRule, placement: string): Promise<void> {
  const key = quoteIdent(rule.keyColumn);
  const nulls = await connection.query(`SELECT count(*) FROM ${qualifiedName(table)} WHERE ${key} IS NULL`);
  if (nulls.rows[0][0] !== '0') {
    throw new PgError({ code: '23502', message: `${nulls.rows[0][0]} rows of table "${table.name}" have a NULL key "${rule.keyColumn}"`, hint: 'a distributed row needs a key to choose its node' });
  }
  const outside = await connection.query(
    `SELECT ${key}::text, (${placement})::text FROM ${qualifiedName(table)} WHERE (${placement}) IS NULL OR (${placement}) NOT BETWEEN 0 AND ${rule.nodeCount - 1} LIMIT 1`,
  );
  if (outside.rows.length > 0) {
    const [value, node] = outside.rows[0];
    throw new PgError({
      code: rule.method === 'function' ? SqlState.invalidParameterValue : '23514',
      message: node === null ? `no node of table "${table.name}" holds key ${value}` : `function ${rule.functionName} maps key ${value} to node ${node}, outside 0..${rule.nodeCount - 1}`,
    });
  }
}

async function validateBounds(main: BackendConnection, params: string | null, keyType: string, nodeCount: number): Promise<string[]> {
  if (params === null) throw invalid('range distribution needs its bounds, e.g. \'{100,200}\'');
  const { rows } = await main.query(`SELECT b::text FROM unnest(${quoteLiteral(params)}::${keyType}[]) WITH ORDINALITY AS u(b, i) ORDER BY i`);
  const bounds = rows.map((r) => r[0]);
  if (bounds.length === 0) throw invalid('range distribution needs at least one bound');
  if (bounds.includes(null)) throw invalid('range bounds cannot be NULL');
  if (bounds.length > nodeCount - 1) throw invalid(`${bounds.length} bounds make ${bounds.length + 1} ranges, but there are ${nodeCount} nodes`);
  const sorted = await main.query(
    `SELECT bool_and(a < b) FROM (SELECT b AS a, lead(b) OVER (ORDER BY i) AS b FROM unnest(${quoteLiteral(params)}::${keyType}[]) WITH ORDINALITY AS u(b, i)) x WHERE b IS NOT NULL`,
  );
  if (sorted.rows[0][0] === 'f') throw invalid(`range bounds ${params} are not in strictly increasing order`, 'ranges may neither overlap nor be empty');
  return bounds as string[];
}

async function validateLists(main: BackendConnection, params: string | null, keyType: string, nodeCount: number): Promise<string[][]> {
  if (params === null) throw invalid('list distribution needs the values of each node, e.g. \'[["a","b"],["c"]]\'');
  let lists: unknown;
  try {
    lists = JSON.parse(params);
  } catch {
    throw invalid(`list values must be a JSON array of arrays, one per node: ${params}`);
  }
  if (!Array.isArray(lists) || lists.length === 0 || !lists.every((l) => Array.isArray(l) && l.length > 0 && l.every((v) => typeof v === 'string' || typeof v === 'number'))) {
    throw invalid(`list values must be a JSON array of non-empty arrays of strings or numbers, one per node: ${params}`);
  }
  if (lists.length > nodeCount) throw invalid(`${lists.length} lists given for ${nodeCount} nodes`);
  const canonical: string[][] = [];
  const seen = new Map<string, number>();
  for (const [node, values] of (lists as (string | number)[][]).entries()) {
    const { rows } = await main.query(`SELECT v::${keyType}::text FROM unnest(ARRAY[${values.map((v) => quoteLiteral(String(v))).join(', ')}]) AS v`);
    canonical.push(rows.map((r) => r[0]!));
    for (const value of canonical[node]) {
      if (seen.has(value)) throw invalid(`list value ${value} is given for node ${seen.get(value)} and node ${node}`);
      seen.set(value, node);
    }
  }
  return canonical;
}

async function validateFunction(main: BackendConnection, params: string | null, keyType: string): Promise<string> {
  if (params === null) throw invalid('function distribution needs the name of a function from the key to a node index');
  const { rows } = await main.query(
    `SELECT p.oid::regproc::text, format_type(p.prorettype, NULL) FROM pg_proc p WHERE p.oid = to_regprocedure(${quoteLiteral(`${params}(${keyType})`)})`,
  );
  if (rows.length === 0) throw new PgError({ code: '42883', message: `function ${params}(${keyType}) does not exist` });
  if (!['integer', 'smallint', 'bigint'].includes(rows[0][1]!)) {
    throw invalid(`function ${params}(${keyType}) returns ${rows[0][1]}, not an integer node index`);
  }
  return rows[0][0]!;
}

async function colocationGroupOf(main: BackendConnection, catalog: Catalog, other: string, rule: DistributedRule): Promise<number> {
  const table = await resolveTable(main, other);
  const otherRule = catalog.lookup(table.schema, table.name);
  if (otherRule?.kind !== 'distributed') throw invalid(`cannot co-locate with "${other}": it is not distributed`);
  const same =
    otherRule.method === rule.method &&
    otherRule.keyTypeOid === rule.keyTypeOid &&
    otherRule.nodeCount === rule.nodeCount &&
    JSON.stringify(otherRule.bounds) === JSON.stringify(rule.bounds) &&
    JSON.stringify(otherRule.lists) === JSON.stringify(rule.lists) &&
    otherRule.functionName === rule.functionName;
  if (!same) {
    throw invalid(`cannot co-locate with "${other}": its rule differs`, `"${other}" is distributed by ${otherRule.method} of ${otherRule.keyType} over ${otherRule.nodeCount} nodes; co-located tables need the same method, key type, parameters and node count`);
  }
  return otherRule.colocationGroup;
}

async function writeRule(connection: BackendConnection, rule: PartitionRule): Promise<void> {
  const d = rule.kind === 'distributed' ? rule : null;
  const value = (v: string | number | null | undefined) => (v === null || v === undefined ? 'NULL' : typeof v === 'number' ? String(v) : quoteLiteral(v));
  const placement = d ? placementSql(d, quoteIdent(d.keyColumn)) : null;
  await connection.query(
    `INSERT INTO parapool.partition_rules VALUES (${value(rule.table.schema)}, ${value(rule.table.name)}, ${value(rule.kind)}, ${value(d?.method)}, ${value(d?.keyColumn)}, ` +
      `${value(d?.keyType)}, ${value(d?.keyTypeOid)}, ${d?.bounds ? arrayLiteral(d.bounds, 'text') : 'NULL'}, ` +
      `${d?.lists ? `${quoteLiteral(JSON.stringify(d.lists))}::jsonb` : 'NULL'}, ${value(d?.functionName)}, ${value(d?.colocationGroup)}, ${rule.nodeCount}, ${rule.version}, ${value(placement)}) ` +
      `ON CONFLICT (table_schema, table_name) DO UPDATE SET distribution = EXCLUDED.distribution, method = EXCLUDED.method, key_column = EXCLUDED.key_column, ` +
      `key_type = EXCLUDED.key_type, key_type_oid = EXCLUDED.key_type_oid, bounds = EXCLUDED.bounds, list_values = EXCLUDED.list_values, ` +
      `function_name = EXCLUDED.function_name, colocation_group = EXCLUDED.colocation_group, node_count = EXCLUDED.node_count, version = EXCLUDED.version, placement = EXCLUDED.placement`,
  );
}

/**
 * Opens a transaction on every node, locks the catalog and the table, runs `change` per node, and commits
 * everywhere atomically; on any failure every node rolls back. Reloads the catalog afterwards.
 */
async function changeOnEveryNode(
  context: RuleCommandContext,
  table: ResolvedTable,
  change: (connection: BackendConnection, nodeIndex: number) => Promise<void>,
  afterLock?: () => Promise<void>,
): Promise<void> {
  const { connections } = context;
  try {
    for (const connection of connections) {
      await connection.query('BEGIN');
      await connection.query('LOCK TABLE parapool.partition_rules IN EXCLUSIVE MODE');
      await connection.query(`LOCK TABLE ${qualifiedName(table)} IN ACCESS EXCLUSIVE MODE`);
    }
    if (afterLock) await afterLock();
    // Every node's part must have finished before a failure rolls the others back.
    const outcomes = await Promise.allSettled(connections.map((connection, index) => change(connection, index)));
    const failed = outcomes.find((o): o is PromiseRejectedResult => o.status === 'rejected');
    if (failed) throw failed.reason;
  } catch (error) {
    await Promise.all(connections.map((c) => (c.txStatus !== 'I' ? c.query('ROLLBACK') : Promise.resolve()).catch(() => undefined)));
    throw error;
  }
  await commitEverywhere(connections);
  context.registry.replace(await readCatalog(context.database, connections));
  log('info', 'partition_rule_changed', { database: context.database, table: `${table.schema}.${table.name}` });
}

async function replicateTable(args: ReadonlyMap<string, string | null>, context: RuleCommandContext): Promise<string> {
  const main = context.connections[0];
  const table = await resolveTable(main, args.get('table_name')!);
  const existing = context.catalog.lookup(table.schema, table.name);
  if (existing?.kind === 'distributed') {
    throw new PgError({ code: SqlState.objectNotInPrerequisiteState, message: `table "${table.name}" is distributed`, hint: 'use parapool.undistribute_table to copy its rows back to every node' });
  }
  if (existing?.kind === 'replicated') return `${table.name} is already replicated`;
  requireAllNodes(context, context.connections.length);
  await changeOnEveryNode(context, table, (connection) =>
    writeRule(connection, { kind: 'replicated', table: { schema: table.schema, name: table.name }, nodeCount: context.connections.length, version: 1 }),
  );
  return `replicated ${table.name} on ${context.connections.length} nodes`;
}

async function undistributeTable(args: ReadonlyMap<string, string | null>, context: RuleCommandContext): Promise<string> {
  const main = context.connections[0];
  const table = await resolveTable(main, args.get('table_name')!);
  const existing = context.catalog.lookup(table.schema, table.name);
  if (existing?.kind !== 'distributed') throw invalid(`table "${table.name}" is not distributed`);
  requireAllNodes(context, existing.nodeCount);
  const placement = placementSql(existing, quoteIdent(existing.keyColumn));
  await changeOnEveryNode(context, table, async () => undefined, async () => {
    // Each node sends only the rows it owns, so rows it receives from the others are never sent on again.
    for (const [index, source] of context.connections.entries()) {
      const targets = context.connections.filter((c) => c !== source);
      const rows = await copyBetweenNodes(source, `COPY (SELECT * FROM ${qualifiedName(table)} WHERE (${placement}) = ${index}) TO STDOUT`, targets, `COPY ${qualifiedName(table)} FROM STDIN`, (sent) =>
        context.progress(`${describeNode(source.node)} has sent ${sent} of its rows of ${table.name} to the other nodes so far`),
      );
      context.progress(`${describeNode(source.node)} sent its ${rows} rows of ${table.name} to the other nodes`);
    }
    for (const connection of context.connections) await connection.query(`DELETE FROM parapool.partition_rules WHERE table_schema = ${quoteLiteral(table.schema)} AND table_name = ${quoteLiteral(table.name)}`);
  });
  return `undistributed ${table.name}: every node holds all its rows`;
}
