// Where a key's row lives. The same rule is written twice, once as SQL (so a node can move rows and an admin can
// check placement with a query) and once in TypeScript for hash (so the proxy routes rows without asking a node).
// N.B. the two must agree bit for bit: test/catalog/placement.test.ts compares them on real nodes.

import type { DistributedRule } from './partition-rule';
import { quoteLiteral } from './partition-rule';
import * as pgHash from './pg-hash';

/** Type OIDs of the key types hash distribution supports, with the PostgreSQL hash function for each. */
const hashSql: Record<number, (key: string) => string> = {
  21: (k) => `hashint2extended(${k}, 0)`,
  23: (k) => `hashint4extended(${k}, 0)`,
  20: (k) => `hashint8extended(${k}, 0)`,
  1700: (k) => `hash_numeric_extended(${k}, 0)`,
  25: (k) => `hashtextextended(${k}, 0)`,
  1043: (k) => `hashtextextended(${k}, 0)`,
  1042: (k) => `hashbpcharextended(${k}, 0)`,
  // date and timestamptz hash their internal integers: days since 2000-01-01, microseconds since then in UTC
  1082: (k) => `hashint4extended(${k} - date '2000-01-01', 0)`,
  1114: (k) => `timestamp_hash_extended(${k}, 0)`,
  1184: (k) => `timestamp_hash_extended(${k} AT TIME ZONE 'UTC', 0)`,
  2950: (k) => `uuid_hash_extended(${k}, 0)`,
};

const hashText: Record<number, (text: string) => bigint> = {
  21: (t) => pgHash.hashInt2Extended(Number(t), 0n),
  23: (t) => pgHash.hashInt4Extended(Number(t), 0n),
  20: (t) => pgHash.hashInt8Extended(BigInt(t), 0n),
  1700: (t) => pgHash.hashNumericExtended(t, 0n),
  25: (t) => pgHash.hashTextExtended(t, 0n),
  1043: (t) => pgHash.hashTextExtended(t, 0n),
  1042: (t) => pgHash.hashBpcharExtended(t, 0n),
  1082: (t) => pgHash.hashDateExtended(t, 0n),
  1114: (t) => pgHash.hashTimestampExtended(t, 0n),
  1184: (t) => pgHash.hashTimestamptzExtended(t, 0n),
  2950: (t) => pgHash.hashUuidExtended(t, 0n),
};

export function isHashableKeyType(typeOid: number): boolean {
  return typeOid in hashSql;
}

/** The node index of a 64-bit hash among n nodes: the non-negative remainder, as SQL's ((h % n) + n) % n. */
export function nodeOfHash(hash: bigint, nodeCount: number): number {
  const n = BigInt(nodeCount);
  return Number(((hash % n) + n) % n);
}

/**
 * The node of a hash-distributed key given as its type's canonical text output (what PostgreSQL prints for it,
 * e.g. with DateStyle ISO and TimeZone UTC for timestamptz).
 */
export function hashNodeOfText(rule: DistributedRule, text: string): number {
  const hash = hashText[rule.keyTypeOid];
  if (!hash) throw new Error(`no hash function for type oid ${rule.keyTypeOid}`);
  return nodeOfHash(hash(text), rule.nodeCount);
}

/** A SQL expression giving the node index (0-based integer, NULL when no node) of the key expression `key`. */
export function placementSql(rule: DistributedRule, key: string): string {
  switch (rule.method) {
    case 'hash':
      return `((${hashSql[rule.keyTypeOid](key)} % ${rule.nodeCount}) + ${rule.nodeCount}) % ${rule.nodeCount}`;
    case 'range':
      return `width_bucket(${key}, ${arrayLiteral(rule.bounds!, rule.keyType)})`;
    case 'list':
      return `CASE ${rule.lists!.map((values, node) => `WHEN ${key} = ANY (${arrayLiteral(values, rule.keyType)}) THEN ${node}`).join(' ')} END`;
    case 'function':
      return `${rule.functionName}(${key})::integer`;
  }
}

export function arrayLiteral(values: readonly string[], type: string): string {
  return `ARRAY[${values.map((v) => `${quoteLiteral(v)}::${type}`).join(', ')}]::${type}[]`;
}
