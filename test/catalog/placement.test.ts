// The proxy places hash-distributed rows with its own copy of PostgreSQL's hash functions; the nodes check
// placement with the rule's SQL. For thousands of values of every supported key type, inserted through the proxy
// (by INSERT and by COPY), each row must sit on exactly the node the SQL names.

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { serialize } from 'pg-protocol';
import type { Client } from 'pg';
import { quoteLiteral } from '../../src/catalog/partition-rule';
import { RawClient } from '../support/raw-client';
import { rowsOf, startTestCluster, type TestCluster } from '../support/test-cluster';

let cluster: TestCluster;
let client: Client;

before(async () => {
  cluster = await startTestCluster({ nodes: 3 });
  client = await cluster.connect();
});

after(async () => {
  await client?.end().catch(() => undefined);
  await cluster?.stop();
});

let seed = 12345;
function random(): number {
  seed = (seed * 1103515245 + 12345) & 0x7fffffff;
  return seed / 0x7fffffff;
}
const int = (min: number, max: number) => Math.floor(min + random() * (max - min + 1));
const pad = (n: number, width = 2) => String(n).padStart(width, '0');
const words = ['alpha', 'Beta', 'γάμμα', '中文', 'emoji 😀', '', ' spaced ', 'tab\there', "quote'd", 'back\\slash'];

const generators: Record<string, () => string> = {
  smallint: () => String(int(-32768, 32767)),
  integer: () => String(int(-2147483648, 2147483647)),
  bigint: () => (BigInt(int(-2147483648, 2147483647)) * BigInt(int(1, 4294967295))).toString(),
  numeric: () => `${int(-999999, 999999)}.${pad(int(0, 9999), 4)}`.replace(/0+$/, '').replace(/\.$/, '.5'),
  text: () => `${words[int(0, words.length - 1)]}${int(0, 100000)}`,
  'character varying(40)': () => `v${int(0, 1000000)}${words[int(0, 4)]}`,
  'character(12)': () => `c${int(0, 99999)}`,
  date: () => `${int(1900, 2100)}-${pad(int(1, 12))}-${pad(int(1, 28))}`,
  'timestamp without time zone': () => `${int(1990, 2030)}-${pad(int(1, 12))}-${pad(int(1, 28))} ${pad(int(0, 23))}:${pad(int(0, 59))}:${pad(int(0, 59))}.${pad(int(0, 999999), 6)}`,
  'timestamp with time zone': () => `${int(1990, 2030)}-${pad(int(1, 12))}-${pad(int(1, 28))} ${pad(int(0, 23))}:${pad(int(0, 59))}:${pad(int(0, 59))}+${pad(int(0, 12))}`,
  uuid: () => Array.from({ length: 32 }, () => int(0, 15).toString(16)).join('').replace(/^(.{8})(.{4})(.{4})(.{4})(.{12})$/, '$1-$2-$3-$4-$5'),
};

for (const [type, generate] of Object.entries(generators)) {
  test(`hash placement of ${type} keys agrees with the nodes`, async () => {
    const table = `k_${type.replace(/[^a-z]/g, '_')}`;
    await client.query(`create table ${table} (k ${type}, n int)`);
    await client.query(`select parapool.distribute_table('${table}', 'k')`);
    const values = Array.from({ length: 3000 }, generate);
    for (let start = 0; start < values.length; start += 500) {
      const rows = values.slice(start, start + 500).map((v, i) => `(${quoteLiteral(v)}, ${start + i})`).join(', ');
      await client.query(`insert into ${table} values ${rows}`);
    }
    const raw = await RawClient.ready(cluster.proxy.port);
    raw.send(serialize.query(`copy ${table} from stdin`));
    await raw.readUntil('G');
    const copied = Array.from({ length: 2000 }, generate);
    const escape = (v: string) => v.replace(/\\/g, '\\\\').replace(/\t/g, '\\t');
    raw.send([serialize.copyData(Buffer.from(copied.map((v, i) => `${escape(v)}\t${5000 + i}\n`).join(''))), serialize.copyDone()]);
    const done = await raw.readUntil('Z');
    raw.end();
    assert.equal(done.find((m) => m.type === 'C')?.payload.toString(), 'COPY 2000\0', JSON.stringify(done.map((m) => m.type)));
    let total = 0;
    for (let node = 0; node < 3; node++) {
      const direct = await cluster.connectDirect(node);
      const placement = (await rowsOf(direct, `select placement from parapool.partition_rules where table_name = '${table}'`))[0][0]!;
      const [[count, misplaced]] = await rowsOf(direct, `select count(*), count(*) filter (where (${placement}) <> ${node}) from ${table}`);
      assert.equal(misplaced, '0', `node ${node} holds ${misplaced} misplaced ${type} rows`);
      total += Number(count);
      await direct.end();
    }
    assert.equal(total, 5000);
  });
}
