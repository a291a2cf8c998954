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
import { cacheableRead, relationCheckSql, storableReply, type QueryCache } from './query-cache';

/** What a session's replies depend on besides the SQL text: its output settings, its role and its database. */
const settingsSql =
  "SELECT pg_catalog.concat_ws(E'\\x01', pg_catalog.current_setting('search_path'), pg_catalog.current_setting('DateStyle'), " +
  "pg_catalog.current_setting('IntervalStyle'), pg_catalog.current_setting('TimeZone'), pg_catalog.current_setting('extra_float_digits'), " +
  "pg_catalog.current_setting('bytea_output'), pg_catalog.current_setting('lc_monetary'), pg_catalog.current_setting('lc_numeric'), " +
  "pg_catalog.current_setting('standard_conforming_strings'), pg_catalog.current_setting('client_encoding'), current_user, pg_catalog.current_database())";

/** Transaction control that changes no committed row (COMMIT only when nothing in the transaction did). */
const harmlessTransactionKinds = new Set(['TRANS_STMT_BEGIN', 'TRANS_STMT_START', 'TRANS_STMT_ROLLBACK', 'TRANS_STMT_SAVEPOINT', 'TRANS_STMT_RELEASE', 'TRANS_STMT_ROLLBACK_TO']);

interface Capture {
  readonly key: string;
  readonly since: number;
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
  /** Set while a statement that may change data runs: its end empties the cache. */
  private dirty = false;
  /** Set once the open transaction ran such a statement: its COMMIT empties the cache too. */
  private transactionDirty = false;
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
  }

  /**
   * Sees every byte the session writes to its client; true when the chunk ends with the ReadyForQuery of a
   * statement that may have changed data and other proxies must first hear of it: the session holds that
   * ReadyForQuery until `release` settles.
   */
  observe(bytes: Buffer): boolean {
    if (this.capture) this.collect(this.capture, bytes);
    const n = bytes.length;
    // A ReadyForQuery ends the chunk (a false positive, a row ending in these bytes, only empties the cache once more).
    if (n < 6 || bytes[n - 6] !== 0x5a || bytes[n - 5] !== 0 || bytes[n - 4] !== 0 || bytes[n - 3] !== 0 || bytes[n - 2] !== 5) return false;
    const held = this.endStatement();
    if (bytes[n - 1] === 0x49 /* I */) this.transactionDirty = false;
    return held;
  }

  /** Settles when every proxy has forgotten what the last statement may have changed; null when nothing waits. */
  get release(): Promise<void> | null {
    return this.pendingRelease;
  }

  private pendingRelease: Promise<void> | null = null;

  /** Whether the statement running may change data. */
  get changingData(): boolean {
    return this.dirty;
  }

  /** The end of a statement however it ended: what it may have changed is forgotten; true when other proxies must hear of it first. */
  endStatement(): boolean {
    if (!this.dirty) return false;
    this.dirty = false;
    this.transactionDirty = true;
    this.settingsKey = null;
    const everywhere = this.cache.invalidateEverywhere();
    if (!everywhere) return false;
    const release: Promise<void> = everywhere.finally(() => {
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
        if (key !== null && (await this.plainTables(read.relations))) {
          this.dirty = false;
          this.capture = { key, since: this.cache.generation, chunks: [], bytes: 0, ok: true };
          return { kind: 'store' };
        }
      }
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
    if (reply) this.cache.store(capture.key, capture.since, reply);
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
        return harmlessTransactionKinds.has(kind) || (kind === 'TRANS_STMT_COMMIT' && !this.transactionDirty);
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

  /** Whether every relation named is, under this session's search_path, a permanent plain table (remembered per generation). */
  private async plainTables(relations: readonly string[]): Promise<boolean> {
    const key = `${this.settingsKey}\0${relations.join('\0')}`;
    const known = this.cache.relationVerdict(key);
    if (known !== undefined) return known;
    const since = this.cache.generation;
    let verdict = false;
    try {
      verdict = (await this.evaluate(relationCheckSql(relations)))[0]?.[0] === 't';
    } catch {
      verdict = false; // a name to_regclass cannot take: the statement itself will say what is wrong
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
