// One session's use of the query cache (query-cache.ts): which of its statements are answered from the cache or
// stored in it, and which empty it. Every statement that starts work on the nodes is taken to change data until the
// session shows otherwise (a cacheable read, or a statement that cannot change a committed row: SET, BEGIN, a
// ROLLBACK); one that may have changed data empties the cache when its ReadyForQuery is written, before its client
// sees it.

import type { Node } from '@pgsql/types';
import { setTimeout as sleep } from 'node:timers/promises';
import { BackendConnection } from '../backend/backend-connection';
import { log } from '../log';
import { nodeTag, type ParsedStatement } from '../planner/sql-parser';
import { isCommit } from './session-statements';
import { cacheableRead, containedWrite, relationCheckSql, storableReply, writeTargetSql, type QueryCache, type RelationVerdict } from './query-cache';

/** What a session's replies depend on besides the SQL text: its output settings, its role and its database. */
const settingsSql =
  "SELECT pg_catalog.concat_ws(E'\\x01', pg_catalog.current_setting('search_path'), pg_catalog.current_setting('DateStyle'), " +
  "pg_catalog.current_setting('IntervalStyle'), pg_catalog.current_setting('TimeZone'), pg_catalog.current_setting('extra_float_digits'), " +
  "pg_catalog.current_setting('bytea_output'), pg_catalog.current_setting('lc_monetary'), pg_catalog.current_setting('lc_numeric'), " +
  "pg_catalog.current_setting('standard_conforming_strings'), pg_catalog.current_setting('client_encoding'), current_user, pg_catalog.current_database())";

/** What a statement that may change data invalidates when it ends. */
type Scope =
  | { readonly kind: 'all' }
  /** A contained write (query-cache.ts): its target only, if the check after it finds nothing on it writes elsewhere. */
  | { readonly kind: 'target'; readonly name: string }
  /** A COMMIT of a transaction whose writes were all contained. */
  | { readonly kind: 'tables'; readonly tables: readonly string[] };

const everything: Scope = { kind: 'all' };

/** Transaction control that changes no committed row (COMMIT only when nothing in the transaction did). */
const harmlessTransactionKinds = new Set(['TRANS_STMT_BEGIN', 'TRANS_STMT_START', 'TRANS_STMT_ROLLBACK', 'TRANS_STMT_SAVEPOINT', 'TRANS_STMT_RELEASE', 'TRANS_STMT_ROLLBACK_TO']);

interface Capture {
  readonly key: string;
  readonly since: number;
  readonly tables: readonly string[];
  chunks: Buffer[];
  bytes: number;
  ok: boolean;
}

export type CacheDecision =
  /** Answer with this reply and ReadyForQuery 'I'. */
  | { readonly kind: 'hit'; readonly reply: Buffer }
  /** Run it; its reply is kept (see finishRead). */
  | { readonly kind: 'store' }
  /** Run it as usual. */
  | { readonly kind: 'run' };

export class SessionCacheUse {
  /** Set while a statement that may change data runs: its end invalidates the cache (`scope`). */
  private dirty = false;
  private scope: Scope = everything;
  /** What the open transaction's statements invalidated: its COMMIT invalidates them again; null: nothing. */
  private transactionTables: Set<string> | 'all' | null = null;
  /** The transaction status of the last ReadyForQuery written. */
  private lastStatus = 'I';
  /** A contained write whose check and invalidation wait for the end of its step (afterStep). */
  private deferredTarget: { readonly name: string; readonly resolve: () => void } | null = null;
  /** The settings part of the session's cache keys, read once after any statement that may have changed it. */
  private settingsKey: string | null = null;
  private capture: Capture | null = null;

  constructor(
    readonly cache: QueryCache,
    private readonly evaluate: (sql: string) => Promise<(string | null)[][]>,
  ) {}

  /** A message that sends work to the nodes: it may change data until the session learns more of it. */
  startWork(): void {
    this.dirty = true;
    this.scope = everything;
  }

  /**
   * Sees every byte the session writes to its client; true when the chunk ends with the ReadyForQuery of a
   * statement that may have changed data and the invalidation must finish first (other proxies told, a contained
   * write's target checked): the session holds that ReadyForQuery until `release` settles.
   */
  observe(bytes: Buffer): boolean {
    if (this.capture) this.collect(this.capture, bytes);
    const n = bytes.length;
    // A ReadyForQuery ends the chunk (a false positive, a row ending in these bytes, only invalidates once more).
    if (n < 6 || bytes[n - 6] !== 0x5a || bytes[n - 5] !== 0 || bytes[n - 4] !== 0 || bytes[n - 3] !== 0 || bytes[n - 2] !== 5) return false;
    this.lastStatus = String.fromCharCode(bytes[n - 1]);
    const held = this.endStatement();
    if (this.lastStatus === 'I') this.transactionTables = null;
    return held;
  }

  /** Settles when every proxy has forgotten what the last statement may have changed; null when nothing waits. */
  get release(): Promise<void> | null {
    return this.pendingRelease;
  }

  private pendingRelease: Promise<void> | null = null;

  /** Whether the statement running may change data. */
  get changingData(): boolean {
    return this.dirty || this.deferredTarget !== null;
  }

  /** The end of a statement however it ended: what it may have changed is invalidated; true when that is still under way. */
  endStatement(): boolean {
    if (!this.dirty) return false;
    this.dirty = false;
    this.settingsKey = null;
    const scope = this.scope;
    this.scope = everything;
    switch (scope.kind) {
      case 'all':
        this.noteTransaction(null);
        return this.hold(this.cache.invalidateEverywhere());
      case 'tables':
        this.noteTransaction(scope.tables);
        return this.hold(this.cache.invalidateEverywhere(scope.tables));
      case 'target': {
        // Checked once the write's step is over (afterStep), on a connection no longer busy with it, and after the
        // write: a trigger another session added meanwhile is then seen.
        let resolve!: () => void;
        const checked = new Promise<void>((done) => (resolve = done));
        this.deferredTarget = { name: scope.name, resolve };
        return this.hold(checked);
      }
    }
  }

  /** After each step: a contained write's target is checked, and it or everything is invalidated. */
  async afterStep(): Promise<void> {
    const deferred = this.deferredTarget;
    if (!deferred) return;
    this.deferredTarget = null;
    let tables: string[] | null = null;
    try {
      const name = (await this.evaluate(writeTargetSql(deferred.name)))[0]?.[0];
      tables = name ? [name] : null;
    } catch {
      tables = null;
    }
    if (this.lastStatus !== 'I') this.noteTransaction(tables);
    try {
      await (this.cache.invalidateEverywhere(tables) ?? undefined);
    } finally {
      deferred.resolve();
    }
  }

  /** The session ends: what its statement may have changed is invalidated, everything for an unchecked contained write. */
  abandon(): void {
    if (this.dirty) this.endStatement();
    const deferred = this.deferredTarget;
    this.deferredTarget = null;
    if (deferred) {
      void this.cache.invalidateEverywhere();
      deferred.resolve();
    }
  }

  private noteTransaction(tables: readonly string[] | null): void {
    if (tables === null) this.transactionTables = 'all';
    else if (this.transactionTables !== 'all') {
      this.transactionTables ??= new Set();
      for (const table of tables) this.transactionTables.add(table);
    }
  }

  private hold(invalidation: Promise<void> | null): boolean {
    if (!invalidation) return false;
    const release: Promise<void> = invalidation.finally(() => {
      if (this.pendingRelease === release) this.pendingRelease = null;
    });
    this.pendingRelease = release;
    return true;
  }

  /**
   * Before a simple Query runs, outside a transaction block, in a session without temporary objects: a hit is
   * answered with no parse at all (the same text under the same settings was a cacheable read when it was kept).
   */
  async lookup(sql: string): Promise<Buffer | null> {
    const key = await this.keyFor(sql);
    const reply = key === null ? null : this.cache.lookup(key);
    if (reply) this.dirty = false;
    return reply;
  }

  /**
   * What to do with a simple Query once parsed: store its reply, when it is one cacheable read of plain tables
   * (`outsideTransaction`: no transaction block is open and the session has no temporary objects); otherwise run
   * it, and empty the cache at its end unless nothing in it can change a committed row.
   */
  async decide(sql: string, statements: readonly ParsedStatement[], outsideTransaction: boolean): Promise<CacheDecision> {
    if (statements.length === 1) {
      const read = cacheableRead(statements[0].node, this.cache.config);
      if (read && read.relations.length === 0) {
        this.dirty = false; // SELECT 1, SELECT 'a' || 'b': nothing to keep, nothing changed
        return { kind: 'run' };
      }
      if (read && outsideTransaction) {
        const key = await this.keyFor(sql);
        const verdict = key === null ? null : await this.plainTables(read.relations);
        if (key !== null && verdict?.plain) {
          this.dirty = false;
          this.capture = { key, since: this.cache.generation, tables: verdict.tables, chunks: [], bytes: 0, ok: true };
          return { kind: 'store' };
        }
      }
      const target = containedWrite(statements[0].node);
      if (target !== null) this.scope = { kind: 'target', name: target };
      if (isCommit(statements[0].node) && this.transactionTables instanceof Set) this.scope = { kind: 'tables', tables: [...this.transactionTables] };
    }
    if (statements.length > 0 && statements.every((st) => this.harmless(st.node))) this.dirty = false;
    // SET, RESET, DISCARD or a ROLLBACK may change what the session's replies look like.
    this.settingsKey = null;
    return { kind: 'run' };
  }

  /** After a stored read ran: its reply is kept when it is rows and a CommandComplete, and the session is idle. */
  finishRead(status: string): void {
    const capture = this.capture;
    this.capture = null;
    if (!capture?.ok || status !== 'I') return;
    const reply = storableReply(capture.chunks);
    if (reply) this.cache.store(capture.key, capture.since, reply, capture.tables);
  }

  /** A read being stored must see the committed state, so it reads from the primary, never a lagging standby. */
  get storing(): boolean {
    return this.capture !== null;
  }

  private harmless(node: Node): boolean {
    switch (nodeTag(node)) {
      case 'VariableSetStmt':
      case 'VariableShowStmt':
      case 'DiscardStmt':
        return true;
      case 'TransactionStmt': {
        const kind = (node as { TransactionStmt: { kind: string } }).TransactionStmt.kind;
        return harmlessTransactionKinds.has(kind) || (kind === 'TRANS_STMT_COMMIT' && this.transactionTables === null);
      }
      default:
        return false;
    }
  }

  private async keyFor(sql: string): Promise<string | null> {
    if (this.settingsKey === null) {
      try {
        this.settingsKey = (await this.evaluate(settingsSql))[0]?.[0] ?? null;
      } catch {
        return null;
      }
    }
    return this.settingsKey === null ? null : `${this.settingsKey}\0${sql}`;
  }

  /** Whether every relation named is, under this session's search_path, a permanent plain table, and their names. */
  private async plainTables(relations: readonly string[]): Promise<RelationVerdict> {
    const key = `${this.settingsKey}\0${relations.join('\0')}`;
    const known = this.cache.relationVerdict(key);
    if (known !== undefined) return known;
    const since = this.cache.generation;
    let verdict: RelationVerdict = { plain: false, tables: [] };
    try {
      const row = (await this.evaluate(relationCheckSql(relations)))[0];
      if (row?.[0] === 't' && row[1]) verdict = { plain: true, tables: JSON.parse(row[1]) as string[] };
    } catch {
      // a name to_regclass cannot take: the statement itself will say what is wrong
    }
    this.cache.rememberRelationVerdict(key, since, verdict);
    return verdict;
  }

  private collect(capture: Capture, bytes: Buffer): void {
    if (!capture.ok) return;
    capture.bytes += bytes.length;
    // The ReadyForQuery (6 bytes) is not kept.
    if (capture.bytes > this.cache.config.maxEntryBytes + 6) {
      capture.ok = false;
      capture.chunks = [];
      return;
    }
    capture.chunks.push(Buffer.from(bytes));
  }
}

/**
 * A session closed while a statement that may change data still ran on `connections`: the nodes may yet commit
 * it, so the cache stores nothing until each node's backend process for it has ended.
 */
export async function holdCacheUntilEnded(cache: QueryCache, connections: readonly BackendConnection[], nodeInService: (nodeId: number) => boolean): Promise<void> {
  const release = cache.suspend();
  const deadline = Date.now() + 10 * 60_000;
  try {
    for (const connection of connections) {
      let watcher: BackendConnection | null = null;
      for (let pause = 20; Date.now() < deadline; pause = Math.min(pause * 2, 1000)) {
        try {
          watcher ??= await BackendConnection.connect(connection.startup, `${connection.poolKey}#cache`);
          const rows = (await watcher.query(`SELECT 1 FROM pg_catalog.pg_stat_activity WHERE pid = ${connection.processId}`)).rows;
          if (rows.length === 0) break;
        } catch (error) {
          // A node that cannot be reached is detached, which empties the cache again when it comes back.
          log('info', 'query_cache_wait', { node: connection.node.id, error: (error as Error).message });
          watcher?.destroy();
          watcher = null;
          if (!nodeInService(connection.node.id)) break;
        }
        await sleep(pause);
      }
      watcher?.terminate();
    }
  } finally {
    release();
  }
}
