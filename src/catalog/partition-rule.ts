// A partition rule says where a table's rows live: distributed (each row on the one node its key maps to) or
// replicated (a full copy on every node). Rules are plain data, stored in parapool.partition_rules on every node.

export type DistributionMethod = 'hash' | 'range' | 'list' | 'function';

export interface TableName {
  readonly schema: string;
  readonly name: string;
}

export interface DistributedRule {
  readonly kind: 'distributed';
  readonly table: TableName;
  readonly method: DistributionMethod;
  readonly keyColumn: string;
  /** The key's type as format_type() writes it ('integer', 'character varying(20)', ...). */
  readonly keyType: string;
  /** The key type's OID, which selects the hash function. */
  readonly keyTypeOid: number;
  /** range: the bounds between consecutive nodes (node i holds bounds[i-1] <= key < bounds[i]), as the key type's text. */
  readonly bounds: readonly string[] | null;
  /** list: the values each node holds, as the key type's text. */
  readonly lists: readonly (readonly string[])[] | null;
  /** function: a SQL function from the key to a node index (pgpool-II's dist_def_func). */
  readonly functionName: string | null;
  readonly colocationGroup: number;
  readonly nodeCount: number;
  readonly version: number;
}

export interface ReplicatedRule {
  readonly kind: 'replicated';
  readonly table: TableName;
  readonly nodeCount: number;
  readonly version: number;
}

export type PartitionRule = DistributedRule | ReplicatedRule;

export function qualifiedName(table: TableName): string {
  return `${quoteIdent(table.schema)}.${quoteIdent(table.name)}`;
}

/** An identifier quoted the way PostgreSQL's quote_ident does. */
export function quoteIdent(name: string): string {
  return /^[a-z_][a-z0-9_$]*$/.test(name) && !reservedWords.has(name) ? name : `"${name.replace(/"/g, '""')}"`;
}

/** A string literal safe in any standard_conforming_strings setting. */
export function quoteLiteral(value: string): string {
  return value.includes('\\') ? `E'${value.replace(/\\/g, '\\\\').replace(/'/g, "''")}'` : `'${value.replace(/'/g, "''")}'`;
}

const reservedWords = new Set([
  'all', 'analyse', 'analyze', 'and', 'any', 'array', 'as', 'asc', 'asymmetric', 'both', 'case', 'cast', 'check', 'collate', 'column',
  'constraint', 'create', 'current_catalog', 'current_date', 'current_role', 'current_time', 'current_timestamp', 'current_user',
  'default', 'deferrable', 'desc', 'distinct', 'do', 'else', 'end', 'except', 'false', 'fetch', 'for', 'foreign', 'from', 'grant',
  'group', 'having', 'in', 'initially', 'intersect', 'into', 'lateral', 'leading', 'limit', 'localtime', 'localtimestamp', 'not',
  'null', 'offset', 'on', 'only', 'or', 'order', 'placing', 'primary', 'references', 'returning', 'select', 'session_user', 'some',
  'symmetric', 'table', 'then', 'to', 'trailing', 'true', 'union', 'unique', 'user', 'using', 'variadic', 'when', 'where', 'window', 'with',
]);
