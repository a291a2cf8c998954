// What the proxy is doing right now and has done since it started, for SHOW parapool_queries and SHOW
// pool_backend_stats: a registry of the statements running in every session, each with the fragments it runs on
// the nodes, and per-node counters of statements and errors. It sits under the session and the executor (both
// write to it) and the admin commands (which read it), so it holds plain data and imports nothing.
//
// N.B. the cost on the hot path is an object per statement and per fragment, and an integer increment per row
// where rows already pass one at a time; nothing is allocated per row.

/** pgpool-II's classes of SQL commands in SHOW pool_backend_stats. */
export type CommandKind = 'select' | 'insert' | 'update' | 'delete' | 'ddl' | 'other';

/** A node's counters since the proxy started (SHOW pool_backend_stats). */
export interface BackendStats {
  select: number;
  insert: number;
  update: number;
  delete: number;
  ddl: number;
  other: number;
  panic: number;
  fatal: number;
  error: number;
}

export function emptyBackendStats(): BackendStats {
  return { select: 0, insert: 0, update: 0, delete: 0, ddl: 0, other: 0, panic: 0, fatal: 0, error: 0 };
}

/** Counts an ErrorResponse a node sent, by its severity (anything but PANIC and FATAL is an ERROR). */
export function countNodeError(stats: BackendStats, severity: string | undefined): void {
  if (severity === 'PANIC') stats.panic++;
  else if (severity === 'FATAL') stats.fatal++;
  else stats.error++;
}

/**
 * The tier of docs/partitioning.md a plan kind belongs to: 1 the router, 2 push down and merge, 3 the fallback
 * through intermediate results.
 */
export function tierOf(plan: string): string {
  switch (plan) {
    case 'router':
      return '1';
    case 'merge':
    case 'aggregate':
      return '2';
    case 'gather':
    case 'broadcast':
    case 'repartition':
    case 'intermediate':
      return '3';
    default:
      return '';
  }
}

/** One piece of a statement on one node: its rows so far and whether it is still running. */
export class FragmentActivity {
  rows = 0;
  readonly startedAt = process.hrtime.bigint();
  finishedAt: bigint | null = null;
  failed = false;

  /** `plan`: the plan kind it belongs to, or 'replicated' for a statement relayed as it came; `step`: its part. */
  constructor(readonly nodeId: number, readonly plan: string, readonly step: string) {}

  finish(failed = false): void {
    if (this.finishedAt !== null) return;
    this.finishedAt = process.hrtime.bigint();
    this.failed = failed;
  }

  get state(): 'running' | 'done' | 'failed' {
    return this.finishedAt === null ? 'running' : this.failed ? 'failed' : 'done';
  }

  get elapsedMs(): number {
    return Number((this.finishedAt ?? process.hrtime.bigint()) - this.startedAt) / 1e6;
  }
}

/** One client statement (a simple Query, or an extended-protocol batch up to its Sync) while it runs. */
export class RunningStatement {
  readonly startedAt = new Date();
  readonly startedAtNs = process.hrtime.bigint();
  readonly fragments: FragmentActivity[] = [];
  /** The plan kind running now (nested plans of tier 3 set their own and restore this one). */
  plan = 'replicated';
  /** Nodes the statement was sent to, whose counters it goes into when it ends. */
  readonly nodes = new Set<number>();

  constructor(
    readonly processId: number,
    /** The statement's text, read only when someone asks (an extended batch's text is found lazily). */
    private readonly text: () => string,
    /** What pool_backend_stats counts it as, one entry per SQL statement. */
    public kinds: readonly CommandKind[],
  ) {}

  get sql(): string {
    return this.text();
  }

  /** A fragment starting on a node, of the plan running now. */
  fragment(nodeId: number, step = 'fragment', plan = this.plan): FragmentActivity {
    const fragment = new FragmentActivity(nodeId, plan, step);
    this.fragments.push(fragment);
    this.nodes.add(nodeId);
    return fragment;
  }
}

/** `work`'s result, once it has finished `fragment` (failed when it rejects or `failed` says so). */
export function finishingFragment<T>(fragment: FragmentActivity | undefined, work: Promise<T>, failed: (result: T) => boolean): Promise<T> {
  return work.then(
    (result) => {
      fragment?.finish(failed(result));
      return result;
    },
    (error: unknown) => {
      fragment?.finish(true);
      throw error;
    },
  );
}

/** Every session's running statement, by the session's process id. */
export class StatementRegistry {
  private readonly running = new Map<number, RunningStatement>();
  /** Told of every statement as it ends (the metrics' histograms); called synchronously, so it must be cheap. */
  private readonly endListeners: ((statement: RunningStatement) => void)[] = [];

  onEnd(listener: (statement: RunningStatement) => void): void {
    this.endListeners.push(listener);
  }

  start(statement: RunningStatement): void {
    this.running.set(statement.processId, statement);
  }

  /** Ends the statement and adds it to the counters of the nodes it ran on. */
  end(statement: RunningStatement, statsOf: (nodeId: number) => BackendStats | undefined): void {
    if (this.running.get(statement.processId) === statement) this.running.delete(statement.processId);
    for (const nodeId of statement.nodes) {
      const stats = statsOf(nodeId);
      if (!stats) continue;
      for (const kind of statement.kinds) stats[kind]++;
    }
    for (const listener of this.endListeners) listener(statement);
  }

  list(): RunningStatement[] {
    return [...this.running.values()];
  }
}
