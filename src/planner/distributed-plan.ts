// The distributed plan of a SELECT over distributed tables: plain data (structured-clone safe), one `kind` per
// strategy, carrying everything the executor needs so that it never re-reads the SQL. Printed by explain-plan.ts.

/** One SQL text run on each of several nodes (the same text everywhere: every node holds its share). */
export interface Fragment {
  readonly sql: string;
  readonly nodes: readonly number[];
}

/** A merge sort key: a column of the fragment's result, counted from the start, or from the end for hidden ones. */
export interface SortKey {
  readonly column: { readonly from: 'start' | 'end'; readonly index: number };
  readonly descending: boolean;
  readonly nullsFirst: boolean;
}

/** LIMIT count OFFSET offset as the client wrote them (constants), applied after the merge. */
export interface LimitSpec {
  readonly count: bigint | null;
  readonly offset: bigint;
}

/** How the proxy folds one partial-state column of several nodes' rows into one. */
export type StateCombine = 'sum' | 'min' | 'max' | 'and' | 'or' | 'bit-and' | 'bit-or' | 'bit-xor' | 'key';

/** Tier 1: the statement, unchanged, on the nodes owning its keys (or any one node when all it reads is replicated). */
export interface RouterPlan {
  readonly kind: 'router';
  readonly nodes: readonly number[];
  /** The statement's own text, sent unchanged. */
  readonly sql: string;
  readonly reason: string;
}

/**
 * Tier 2, rows: every node computes its part of the whole answer (no row of the result needs rows of two
 * nodes); the proxy merges the sorted streams, applies OFFSET/LIMIT and drops the hidden sort columns.
 */
export interface MergePlan {
  readonly kind: 'merge';
  readonly fragment: Fragment;
  readonly hiddenColumns: number;
  readonly sortKeys: readonly SortKey[];
  readonly limit: LimitSpec | null;
  /** False when a column or COLLATE clause of the statement has a collation other than the database's or C. */
  readonly defaultCollation: boolean;
  readonly reason: string;
}

/**
 * Tier 2, aggregates: every node computes partial aggregate states per group; the proxy combines the states of
 * equal groups (a hash aggregate), ships the combined rows to one node as a temporary table, and that node runs
 * `finalSql` (final aggregates, expressions over them, HAVING, DISTINCT, ORDER BY, LIMIT), so the text and
 * types of the answer are PostgreSQL's own.
 */
export interface AggregatePlan {
  readonly kind: 'aggregate';
  /**
   * True when the nodes send plain rows (the columns the final statement names) instead of partial states:
   * the proxy keeps them all, unfolded, bounded by merge_memory_limit (past it the next tier answers).
   */
  readonly rows: boolean;
  readonly fragment: Fragment;
  /** The first `groupColumns` fragment columns are group keys; the rest are partial states. */
  readonly groupColumns: number;
  readonly combine: readonly StateCombine[];
  /** SQL over the temporary table, written `{{partials}}` here; its columns are c0, c1, ... */
  readonly finalSql: string;
  readonly finalNode: number;
  /** False when a column or COLLATE clause of the statement has a collation other than the database's or C. */
  readonly defaultCollation: boolean;
  readonly reason: string;
}

/**
 * Tier 3: the rows of each distributed table the query reads (filtered where a filter names only that table)
 * are shipped into temporary tables on one node, and that node runs the query with those tables in place.
 */
export interface GatherPlan {
  readonly kind: 'gather';
  readonly tables: readonly GatheredTable[];
  /** The query with each gathered table replaced by `{{table N}}`. */
  readonly finalSql: string;
  readonly finalNode: number;
  readonly reason: string;
}

/**
 * Tier 3, broadcast join: the tables outside the largest table's colocation group (small, or small once filtered)
 * are copied to every node that runs the inner plan, as temporary tables `parapool_broadcast_<i>`; the statement,
 * with those in place, is then node-local and runs as the inner tier-1 or tier-2 plan.
 */
export interface BroadcastPlan {
  readonly kind: 'broadcast';
  readonly tables: readonly GatheredTable[];
  /** The nodes that receive every copy: those of the inner plan. */
  readonly targets: readonly number[];
  readonly inner: RouterPlan | MergePlan | AggregatePlan;
  /** Rows estimated to move: the copies times their targets, against what gathering would move. */
  readonly estimate: { readonly broadcastRows: number; readonly gatherRows: number };
  readonly reason: string;
}

export interface GatheredTable {
  /** The table as the query names it, for EXPLAIN. */
  readonly table: string;
  /** The rows to copy: the table's filtered, projected rows on each node. */
  readonly fragment: Fragment;
  /** Re-declared on the copy when it keeps those columns, so GROUP BY the key may name the other columns. */
  readonly primaryKey: readonly string[];
  /** The copy's columns in order, when known. */
  readonly columns: readonly string[] | null;
}

/**
 * Tier 3, repartition join: two large tables of different colocation groups joined by an equality are both
 * re-hashed on their join columns into temporary tables `parapool_repartition_<i>` spread over every node, which
 * makes them co-located on those columns; the statement with those in place runs as the inner tier-2 plan.
 */
export interface RepartitionPlan {
  readonly kind: 'repartition';
  /** Each table with the position, among its copy's columns, of the column its rows are hashed on. */
  readonly tables: readonly (GatheredTable & { readonly hashColumn: number })[];
  readonly targets: readonly number[];
  readonly inner: MergePlan | AggregatePlan;
  readonly estimate: { readonly rows: number };
  readonly reason: string;
}

/**
 * Tier 3, recursive planning: each subquery in FROM or CTE that reads distributed tables runs as its own plan,
 * its result shipped into a temporary table `parapool_result_<i>` on the finishing node; then `outer` runs there.
 */
export interface IntermediatePlan {
  readonly kind: 'intermediate';
  readonly pieces: readonly { readonly name: string; readonly sql: string; readonly plan: DistributedPlan }[];
  /** The statement with the pieces' tables in place: on the finishing node, or gathering what it still reads. */
  readonly outer: RouterPlan | GatherPlan;
  readonly finalNode: number;
  readonly reason: string;
}

export type DistributedPlan = RouterPlan | MergePlan | AggregatePlan | GatherPlan | BroadcastPlan | RepartitionPlan | IntermediatePlan;
export type PlanKind = DistributedPlan['kind'];

export function assertNever(value: never): never {
  throw new Error(`unhandled plan node ${JSON.stringify(value)}`);
}
