// What the planner may ask of the cluster while it plans (types of expressions, which names are aggregates,
// row estimates, table shapes), and the small pieces every strategy shares. Strategies answer with Planned: a plan,
// or the reason they cannot, for the next strategy to try.

import type { DistributedRule } from '../catalog/partition-rule';
import type { KeyValue } from './key-values';
import type { TableShape } from './gather-pushdown';
import { unwrap } from './ast-tools';

type Body = Record<string, unknown>;

/** What planning may ask of the cluster: types of expressions (a Describe on a node) and which names are aggregates. */
export interface PlannerPort {
  readonly nodeCount: number;
  /** Most rows a broadcast join may copy to all nodes together (0: never broadcast). */
  readonly broadcastRowLimit: number;
  /** The node that finishes merges in SQL. */
  readonly finalNode: number;
  /** The result column types of a SELECT, described (not run) on a node. */
  describe(sql: string): Promise<number[]>;
  /** Those of `names` that name aggregate functions on the nodes. */
  aggregateNames(names: readonly string[]): Promise<ReadonlySet<string>>;
  /** Columns and primary key of tables named as in SQL (resolved by the node's search_path); unknown ones left out. */
  tableShapes(names: readonly string[]): Promise<Map<string, TableShape>>;
  /** Whether any column of these tables (named as in SQL) has a collation other than the default, C or POSIX. */
  hasCollatedColumns(tables: readonly string[]): Promise<boolean>;
  /** The rows the node's planner expects `sql` to return (EXPLAIN's estimate). */
  estimateRows(sql: string): Promise<number>;
  /** The nodes that hold these values of a rule's key, in node order. */
  nodesOfKeys(rule: DistributedRule, keys: readonly KeyValue[]): Promise<number[]>;
}

export type Planned<T> = { readonly ok: true; readonly plan: T } | { readonly ok: false; readonly reason: string };

export const allNodes = (port: PlannerPort) => Array.from({ length: port.nodeCount }, (_, i) => i);

export const unwritable = { ok: false as const, reason: 'the SQL of a fragment cannot be written back exactly' };

export function isStar(node: unknown): boolean {
  const [tag, body] = unwrap(node);
  if (tag !== 'ColumnRef') return false;
  const fields = body.fields as Body[];
  return 'A_Star' in fields[fields.length - 1];
}

export function containsSublink(value: unknown): boolean {
  return JSON.stringify(value ?? null).includes('"SubLink"');
}
