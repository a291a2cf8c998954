// The node of each row's key. Hash keys of the common types are placed by the proxy itself (the hash is
// PostgreSQL's, reproduced bit for bit); everything else, and every text the proxy cannot read exactly as the
// node would, is placed by the main node with the rule's SQL, so PostgreSQL's own input and comparison rules apply.

import { PgError, SqlState } from '../protocol/errors';
import type { DistributedRule } from './partition-rule';
import { quoteLiteral } from './partition-rule';
import { hashNodeOfText, placementSql } from './placement';

/** Runs SQL on the main node and returns its rows as text. */
export type EvaluateSql = (sql: string) => Promise<(string | null)[][]>;

const integerText = /^\s*[+-]?\d+\s*$/;
const numericText = /^\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*$/;
const uuidText = /^\{?[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}\}?$/;

function placedByProxy(rule: DistributedRule, text: string): boolean {
  if (rule.method !== 'hash') return false;
  switch (rule.keyTypeOid) {
    case 21:
      return integerText.test(text) && Math.abs(Number(text)) <= 32767;
    case 23:
      return integerText.test(text) && Number(text) >= -2147483648 && Number(text) <= 2147483647;
    case 20:
      return integerText.test(text) && BigInt(text.trim()) >= -(2n ** 63n) && BigInt(text.trim()) < 2n ** 63n;
    case 1700:
      // A typmod rounds the value before it is stored (numeric(15,2)): the node knows how.
      return rule.keyType === 'numeric' && numericText.test(text);
    case 25:
      return true;
    case 1043:
    case 1042:
      return !/\(\d+\)$/.test(rule.keyType) || !/\s$/.test(text);
    case 2950:
      return uuidText.test(text);
    default:
      return false;
  }
}

function nullKey(rule: DistributedRule): PgError {
  return new PgError({ code: '23502', message: `null value in column "${rule.keyColumn}" of relation "${rule.table.name}": a distributed row needs a key to choose its node` });
}

/** The node index of each key (given as the text of a value of the key's type), in order. */
export async function nodesForKeys(rule: DistributedRule, keys: readonly (string | null)[], evaluate: EvaluateSql): Promise<number[]> {
  const nodes = new Array<number>(keys.length);
  const remote: number[] = [];
  keys.forEach((key, i) => {
    if (key === null) throw nullKey(rule);
    if (placedByProxy(rule, key)) nodes[i] = hashNodeOfText(rule, rule.keyTypeOid === 20 ? key.trim() : key);
    else remote.push(i);
  });
  for (let start = 0; start < remote.length; start += 1000) {
    const batch = remote.slice(start, start + 1000);
    const array = `ARRAY[${batch.map((i) => quoteLiteral(keys[i]!)).join(', ')}]::text[]`;
    const rows = await evaluate(`SELECT (${placementSql(rule, `v::${rule.keyType}`)})::text FROM unnest(${array}) WITH ORDINALITY AS u(v, i) ORDER BY i`);
    batch.forEach((keyIndex, j) => {
      const node = rows[j]?.[0];
      if (node === null || node === undefined) {
        throw new PgError({ code: '23514', message: `no node of relation "${rule.table.name}" holds key ${keys[keyIndex]}`, detail: `the ${rule.method} rule of "${rule.table.name}" has no entry for this value` });
      }
      const index = Number(node);
      if (!(index >= 0 && index < rule.nodeCount)) {
        throw new PgError({ code: SqlState.invalidParameterValue, message: `function ${rule.functionName} maps key ${keys[keyIndex]} to node ${node}, outside 0..${rule.nodeCount - 1}` });
      }
      nodes[keyIndex] = index;
    });
  }
  return nodes;
}
