// The durable form of the catalog: the parapool schema on every node, written through the same all-nodes path as
// any replicated write, read back by every proxy. Nodes must agree row for row; when they do not, the proxy
// refuses to guess which is right.

import type { DistributedRule, PartitionRule } from './partition-rule';

export const catalogSchemaSql = `
CREATE SCHEMA IF NOT EXISTS parapool;
CREATE TABLE IF NOT EXISTS parapool.partition_rules (
  table_schema text NOT NULL,
  table_name text NOT NULL,
  distribution text NOT NULL CHECK (distribution IN ('distributed', 'replicated')),
  method text CHECK (method IN ('hash', 'range', 'list', 'function')),
  key_column text,
  key_type text,
  key_type_oid oid,
  bounds text[],
  list_values jsonb,
  function_name text,
  colocation_group integer,
  node_count integer NOT NULL,
  version bigint NOT NULL,
  placement text,
  PRIMARY KEY (table_schema, table_name)
);
-- Every session reads the rules of its database, whatever its user may do with the tables themselves.
GRANT USAGE ON SCHEMA parapool TO PUBLIC;
GRANT SELECT ON parapool.partition_rules TO PUBLIC;`;

/** Rows in a fixed order and text form, so that two nodes' catalogs compare as strings. */
export const loadCatalogSql = `
SELECT table_schema, table_name, distribution, method, key_column, key_type, key_type_oid::text, bounds::text,
       list_values::text, function_name, colocation_group::text, node_count::text, version::text
  FROM parapool.partition_rules ORDER BY table_schema, table_name`;

export const catalogExistsSql = `SELECT to_regclass('parapool.partition_rules') IS NOT NULL`;

export function ruleFromRow(row: (string | null)[]): PartitionRule {
  const [schema, name, distribution, method, keyColumn, keyType, keyTypeOid, bounds, lists, functionName, group, nodeCount, version] = row;
  const table = { schema: schema!, name: name! };
  if (distribution === 'replicated') return { kind: 'replicated', table, nodeCount: Number(nodeCount), version: Number(version) };
  return {
    kind: 'distributed',
    table,
    method: method as DistributedRule['method'],
    keyColumn: keyColumn!,
    keyType: keyType!,
    keyTypeOid: Number(keyTypeOid),
    bounds: bounds === null ? null : parseTextArray(bounds),
    lists: lists === null ? null : (JSON.parse(lists) as string[][]),
    functionName,
    colocationGroup: Number(group),
    nodeCount: Number(nodeCount),
    version: Number(version),
  };
}

/** Parses a one-dimensional text[] output ('{a,"b c",NULL}'); NULL elements are not allowed in bounds. */
export function parseTextArray(text: string): string[] {
  const out: string[] = [];
  let i = 1;
  while (i < text.length - 1) {
    if (text[i] === '"') {
      let value = '';
      i++;
      while (text[i] !== '"') {
        if (text[i] === '\\') i++;
        value += text[i++];
      }
      out.push(value);
      i += 2;
    } else {
      const end = text.indexOf(',', i);
      const stop = end < 0 ? text.length - 1 : end;
      out.push(text.slice(i, stop));
      i = stop + 1;
    }
  }
  return out;
}
