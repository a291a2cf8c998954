// The query cache (pgpool-II's memory_cache_enabled): the reply bytes of a SELECT, kept by who asked and what, and
// answered again without the nodes until anything else runs. Invalidation is deliberately coarse: every statement
// that is not a cacheable read (a write, DDL, a rule change, a function call, an extended-protocol batch) empties
// the whole cache when it ends, before its ReadyForQuery reaches its client. A read stores its reply only if no
// such statement ended while it ran, so a reply whose snapshot predates a commit is never kept past that commit.

import type { Node } from '@pgsql/types';
import type { ProxyConfig } from '../config/config';
import { quoteLiteral } from '../catalog/partition-rule';
import { nodeTag } from '../planner/sql-parser';

export interface QueryCacheConfig {
  /** Seconds an entry lives; 0: until invalidated. */
  readonly expireSeconds: number;
  /** Largest reply kept, in bytes. */
  readonly maxEntryBytes: number;
  /** Bytes all entries may take together. */
  readonly totalBytes: number;
  /** cache_unsafe_memqcache_table_list: reads of these tables are never cached. */
  readonly unsafeTables: RegExp | null;
  /** cache_safe_memqcache_table_list: when set, only reads of these tables are cached. */
  readonly safeTables: RegExp | null;
}

/** A table list (cache_safe/unsafe_memqcache_table_list) as one anchored, case-insensitive pattern. */
function tableListPattern(patterns: readonly string[]): RegExp | null {
  return patterns.length === 0 ? null : new RegExp(`^(?:${patterns.map((p) => `(?:${p})`).join('|')})$`, 'i');
}

export function queryCacheConfig(config: ProxyConfig): QueryCacheConfig {
  return {
    expireSeconds: config.memqcacheExpire,
    maxEntryBytes: config.memqcacheMaxcache,
    totalBytes: config.memqcacheTotalSize,
    unsafeTables: tableListPattern(config.cacheUnsafeMemqcacheTableList),
    safeTables: tableListPattern(config.cacheSafeMemqcacheTableList),
  };
}

interface CacheEntry {
  readonly reply: Buffer;
  readonly storedAt: number;
  readonly tables: readonly string[];
}

export interface QueryCacheStats {
  readonly hits: number;
  readonly selects: number;
  readonly entries: number;
  readonly usedBytes: number;
  readonly totalBytes: number;
}

/** The other proxies sharing the nodes (cluster/cache-invalidation.ts). */
export interface QueryCachePeers {
  /** Whether this proxy hears every other proxy's invalidations now; the cache is used only while it does. */
  readonly valid: boolean;
  /** Tells the others this proxy may have changed data (in `tables` only, or anywhere); resolves once none can serve a reply from before. */
  broadcast(tables: readonly string[] | null): Promise<void>;
}

/** What the relation check found for a set of names under a search_path (relationCheckSql). */
export interface RelationVerdict {
  /** Every name is a permanent plain table. */
  readonly plain: boolean;
  /** The tables, schema-qualified and quoted as format('%I.%I') writes them, which invalidations name. */
  readonly tables: readonly string[];
}

export class QueryCache {
  /** memqcache_shared: the other proxies in front of the same nodes; null: this proxy alone. */
  peers: QueryCachePeers | null = null;

  /** Advanced by every invalidation, whole or of some tables; a read remembers it when it begins. */
  private generationNumber = 0;
  /** The generation of the last invalidation of everything, and of each table invalidated since. */
  private emptiedAt = 0;
  private readonly tableInvalidatedAt = new Map<string, number>();
  /** Insertion order is recency order: a hit moves its entry to the end, eviction takes from the front. */
  private readonly entries = new Map<string, CacheEntry>();
  /** The keys of the entries that read each table. */
  private readonly keysByTable = new Map<string, Set<string>>();
  /** Relation checks, by search_path and names (cleared with the whole cache: DDL empties it all). */
  private readonly relationVerdicts = new Map<string, RelationVerdict>();
  private usedBytes = 0;
  /** Writes whose end is not known (their client left while they ran): nothing is stored until they are over. */
  private suspensions = 0;
  private hits = 0;
  private selects = 0;

  constructor(readonly config: QueryCacheConfig) {}

  get generation(): number {
    return this.generationNumber;
  }

  lookup(key: string, now = Date.now()): Buffer | null {
    if (this.peers && !this.peers.valid) return null;
    this.selects++;
    const entry = this.entries.get(key);
    if (!entry) return null;
    if (this.config.expireSeconds > 0 && now - entry.storedAt >= this.config.expireSeconds * 1000) {
      this.remove(key, entry);
      return null;
    }
    this.entries.delete(key);
    this.entries.set(key, entry);
    this.hits++;
    return entry.reply;
  }

  /**
   * Keeps a reply of `tables` read from generation `since` on; false when it is too big, or when the whole cache
   * or one of those tables was invalidated since (the read's snapshot may predate that write's commit).
   */
  store(key: string, since: number, reply: Buffer, tables: readonly string[], now = Date.now()): boolean {
    if (this.emptiedAt > since || tables.some((table) => (this.tableInvalidatedAt.get(table) ?? -1) > since)) return false;
    if (this.suspensions > 0 || (this.peers && !this.peers.valid) || reply.length > this.config.maxEntryBytes || reply.length > this.config.totalBytes) return false;
    const old = this.entries.get(key);
    if (old) this.remove(key, old);
    while (this.usedBytes + reply.length > this.config.totalBytes) {
      const [oldestKey, oldest] = this.entries.entries().next().value as [string, CacheEntry];
      this.remove(oldestKey, oldest);
    }
    this.entries.set(key, { reply, storedAt: now, tables });
    for (const table of tables) {
      let keys = this.keysByTable.get(table);
      if (!keys) this.keysByTable.set(table, (keys = new Set()));
      keys.add(key);
    }
    this.usedBytes += reply.length;
    return true;
  }

  /**
   * Invalidates this cache and every other proxy's, wholly or (`tables`) what read those tables; resolves when no
   * proxy can serve a reply from before.
   */
  invalidateEverywhere(tables: readonly string[] | null = null): Promise<void> | null {
    if (tables) this.invalidateTables(tables);
    else this.invalidate();
    return this.peers?.broadcast(tables) ?? null;
  }

  /** Empties this proxy's cache only (another proxy's write, a node's detach, which every proxy sees for itself). */
  invalidate(): void {
    this.emptiedAt = ++this.generationNumber;
    this.entries.clear();
    this.keysByTable.clear();
    this.tableInvalidatedAt.clear();
    this.relationVerdicts.clear();
    this.usedBytes = 0;
  }

  /** Forgets, in this proxy only, the replies that read any of `tables`. */
  invalidateTables(tables: readonly string[]): void {
    const generation = ++this.generationNumber;
    for (const table of tables) {
      this.tableInvalidatedAt.set(table, generation);
      for (const key of this.keysByTable.get(table) ?? []) {
        const entry = this.entries.get(key);
        if (entry) this.remove(key, entry);
      }
    }
  }

  /** Empties the cache and stores nothing until the returned function is called (which empties it again). */
  suspend(): () => void {
    this.suspensions++;
    this.invalidate();
    let released = false;
    return () => {
      if (released) return;
      released = true;
      this.suspensions--;
      void this.invalidateEverywhere();
    };
  }

  relationVerdict(key: string): RelationVerdict | undefined {
    return this.relationVerdicts.get(key);
  }

  /** Remembers a check made from generation `since` on, unless the whole cache was emptied meanwhile (DDL). */
  rememberRelationVerdict(key: string, since: number, verdict: RelationVerdict): void {
    if (this.emptiedAt <= since) this.relationVerdicts.set(key, verdict);
  }

  stats(): QueryCacheStats {
    return { hits: this.hits, selects: this.selects, entries: this.entries.size, usedBytes: this.usedBytes, totalBytes: this.config.totalBytes };
  }

  private remove(key: string, entry: CacheEntry): void {
    this.entries.delete(key);
    this.usedBytes -= entry.reply.length;
    for (const table of entry.tables) {
      const keys = this.keysByTable.get(table);
      keys?.delete(key);
      if (keys?.size === 0) this.keysByTable.delete(table);
    }
  }
}

/**
 * Functions whose result depends on nothing but their arguments (PostgreSQL marks them immutable) and the
 * aggregates over them: a SELECT calling only these returns the same rows until the tables it reads change.
 * Anything else (now(), random(), nextval(), current_setting(), a user function) keeps a SELECT out of the cache.
 */
const immutableFunctions = new Set([
  'count', 'sum', 'avg', 'min', 'max', 'bool_and', 'bool_or', 'every', 'string_agg', 'array_agg', 'stddev', 'stddev_samp', 'stddev_pop',
  'variance', 'var_samp', 'var_pop', 'abs', 'round', 'trunc', 'ceil', 'ceiling', 'floor', 'sign', 'sqrt', 'power', 'mod', 'div', 'exp', 'ln', 'log',
  'upper', 'lower', 'length', 'char_length', 'character_length', 'octet_length', 'substr', 'substring', 'btrim', 'ltrim', 'rtrim', 'lpad', 'rpad',
  'replace', 'strpos', 'position', 'left', 'right', 'reverse', 'repeat', 'split_part', 'initcap', 'md5', 'concat_ws', 'extract', 'date_part',
  'greatest', 'least', 'numeric', 'int4', 'int8', 'float8', 'text',
]);

/** Whether a FuncCall node calls one of immutableFunctions (unqualified or in pg_catalog). */
function isImmutableCall(call: unknown): boolean {
  const names = (call as { funcname: { String: { sval: string } }[] }).funcname.map((part) => part.String.sval.toLowerCase());
  return (names.length === 1 || names[0] === 'pg_catalog') && immutableFunctions.has(names[names.length - 1]);
}

/** Words PostgreSQL turns into the current time when a string is cast to a date or time type. */
const timeWords = /\b(now|today|tomorrow|yesterday|current|epoch|infinity|allballs)\b/i;
const catalogSchemas = new Set(['pg_catalog', 'information_schema', 'parapool', 'pg_toast']);

export interface CacheableRead {
  /** The relation names as written (schema-qualified when they were), sorted, without CTE names; none for SELECT 1. */
  readonly relations: string[];
}

/**
 * Whether a statement may be answered from the cache: one plain SELECT (no INTO, no locking clause) of named
 * relations, calling only immutable functions, with no time literal; null when not.
 */
export function cacheableRead(node: Node, config: QueryCacheConfig): CacheableRead | null {
  if (nodeTag(node) !== 'SelectStmt') return null;
  const relations = new Set<string>();
  const cteNames = new Set<string>();
  let ok = true;
  const visit = (value: unknown): void => {
    if (!ok || value === null || typeof value !== 'object') return;
    if (Array.isArray(value)) {
      for (const item of value) visit(item);
      return;
    }
    const record = value as Record<string, unknown>;
    for (const [key, inner] of Object.entries(record)) {
      if (!ok) return;
      switch (key) {
        case 'SelectStmt': {
          const select = inner as Record<string, unknown>;
          if (select.intoClause || (Array.isArray(select.lockingClause) && select.lockingClause.length > 0)) ok = false;
          break;
        }
        case 'CommonTableExpr': {
          const cte = inner as Record<string, unknown>;
          cteNames.add(String(cte.ctename));
          // A data-modifying CTE is not a SelectStmt; anything but a SELECT body is refused.
          if (nodeTag(cte.ctequery as Node) !== 'SelectStmt') ok = false;
          break;
        }
        case 'RangeVar': {
          const range = inner as { schemaname?: string; relname: string; relpersistence?: string };
          if (range.relpersistence === 't') ok = false;
          if (range.schemaname && catalogSchemas.has(range.schemaname.toLowerCase())) ok = false;
          if (!range.schemaname && range.relname.startsWith('pg_')) ok = false;
          relations.add(range.schemaname ? `${range.schemaname}.${range.relname}` : range.relname);
          break;
        }
        case 'FuncCall':
          if (!isImmutableCall(inner)) ok = false;
          break;
        case 'SQLValueFunction':
        case 'RangeFunction':
        case 'RangeTableFunc':
        case 'RangeTableSample':
        case 'XmlExpr':
        case 'CollateClause':
          ok = false;
          break;
        case 'String': {
          const text = (inner as { sval?: string }).sval ?? '';
          if (timeWords.test(text)) ok = false;
          break;
        }
        case 'sval':
          if (typeof inner === 'string' && timeWords.test(inner)) ok = false;
          break;
        default:
          break;
      }
      visit(inner);
    }
  };
  visit(node);
  if (!ok) return null;
  for (const name of cteNames) relations.delete(name);
  for (const name of relations) {
    const bare = name.includes('.') ? name.slice(name.lastIndexOf('.') + 1) : name;
    if (config.unsafeTables?.test(name) || config.unsafeTables?.test(bare)) return null;
    if (config.safeTables && !config.safeTables.test(name) && !config.safeTables.test(bare)) return null;
  }
  return { relations: [...relations].sort() };
}

/** pg_class row `c` is an ordinary table, neither partitioned nor inheriting nor inherited from. */
const plainTableSql =
  "c.relkind = 'r' AND NOT c.relispartition AND NOT c.relhassubclass AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_inherits i WHERE i.inhrelid = c.oid)";

/**
 * The query that tells whether every relation named resolves, under the session's search_path, to a permanent
 * plain table (no view, whose body may call anything; no foreign, partitioned, inherited or system table), and
 * what the tables are called schema-qualified: a row of 't' or 'f' and a JSON array.
 */
export function relationCheckSql(relations: readonly string[]): string {
  return (
    `SELECT pg_catalog.bool_and(COALESCE(${plainTableSql} AND c.relpersistence = 'p' ` +
    "AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'parapool') " +
    'AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_policy p WHERE p.polrelid = c.oid), false)) IS TRUE, ' +
    "pg_catalog.json_agg(pg_catalog.format('%I.%I', n.nspname, c.relname))::text " +
    `FROM (SELECT pg_catalog.to_regclass(t.name) AS oid FROM pg_catalog.unnest(ARRAY[${relations.map(quoteLiteral).join(',')}]::text[]) AS t(name)) AS r ` +
    'LEFT JOIN pg_catalog.pg_class c ON c.oid = r.oid LEFT JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace'
  );
}

/**
 * A write that can change no table but its target: one INSERT, UPDATE or DELETE (no WITH) calling only the
 * functions a cached read may call. Its end invalidates only what read that table, once writeTargetSql has found
 * that nothing on the table (a trigger, a rule, a foreign key's action, a default or check calling a function of
 * the database's own) writes elsewhere. Returns the target as written; null for any other statement.
 */
export function containedWrite(node: Node): string | null {
  const tag = nodeTag(node);
  if (tag !== 'InsertStmt' && tag !== 'UpdateStmt' && tag !== 'DeleteStmt') return null;
  const statement = (node as unknown as Record<string, { relation: { schemaname?: string; relname: string }; withClause?: unknown }>)[tag];
  if (statement.withClause) return null;
  let ok = true;
  let writes = 0;
  const visit = (value: unknown): void => {
    if (!ok || value === null || typeof value !== 'object') return;
    if (Array.isArray(value)) {
      for (const item of value) visit(item);
      return;
    }
    for (const [key, inner] of Object.entries(value as Record<string, unknown>)) {
      if (key === 'InsertStmt' || key === 'UpdateStmt' || key === 'DeleteStmt') writes++;
      if (key === 'FuncCall' && !isImmutableCall(inner)) ok = false;
      if (key === 'CommonTableExpr' || key === 'RangeFunction' || key === 'RangeTableFunc') ok = false;
      visit(inner);
    }
  };
  visit(node);
  if (!ok || writes !== 1) return null;
  const { schemaname, relname } = statement.relation;
  return schemaname ? `${schemaname}.${relname}` : relname;
}

/**
 * The target of a contained write, schema-qualified as relationCheckSql names it, when it is a plain table on
 * which nothing writes elsewhere; no row otherwise. A foreign key's actions are triggers (relhastriggers), on the
 * referencing and the referenced table alike; defaults and checks are refused when they call a function outside
 * the built-in ones (an oid of 16384 or more).
 */
export function writeTargetSql(target: string): string {
  return (
    "SELECT pg_catalog.format('%I.%I', n.nspname, c.relname) FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace " +
    `WHERE c.oid = pg_catalog.to_regclass(${quoteLiteral(target)}) AND ${plainTableSql} AND NOT c.relhastriggers AND NOT c.relhasrules ` +
    "AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d WHERE d.refclassid = 'pg_catalog.pg_proc'::pg_catalog.regclass AND d.refobjid >= 16384 " +
    "AND ((d.classid = 'pg_catalog.pg_attrdef'::pg_catalog.regclass AND d.objid IN (SELECT a.oid FROM pg_catalog.pg_attrdef a WHERE a.adrelid = c.oid)) " +
    "OR (d.classid = 'pg_catalog.pg_constraint'::pg_catalog.regclass AND d.objid IN (SELECT k.oid FROM pg_catalog.pg_constraint k WHERE k.conrelid = c.oid))))"
  );
}

/** The reply stored for a hit: RowDescription, DataRows and CommandComplete only, without the ReadyForQuery. */
export function storableReply(chunks: readonly Buffer[]): Buffer | null {
  const bytes = Buffer.concat(chunks);
  let offset = 0;
  let sawComplete = false;
  while (offset + 5 <= bytes.length) {
    const code = bytes[offset];
    const length = bytes.readInt32BE(offset + 1);
    if (code === 0x5a /* Z */) return sawComplete && offset + 1 + length === bytes.length ? bytes.subarray(0, offset) : null;
    if (sawComplete || (code !== 0x54 /* T */ && code !== 0x44 /* D */ && code !== 0x43 /* C */)) return null;
    if (code === 0x43) sawComplete = true;
    offset += 1 + length;
  }
  return null;
}
