// The partition rules of one database, in memory, loaded from the nodes and shared by every session of that
// database. Lookups take a table as written in SQL; an unqualified name means schema public, or, for a session
// with another search_path, the schema that search_path finds it in (resolvingWith).

import { describeNode, type NodeAddress } from '../cluster/backend-node';
import { log } from '../log';
import { PgError, SqlState } from '../protocol/errors';
import { catalogExistsSql, loadCatalogSql, ruleFromRow } from './catalog-store';
import type { DistributedRule, PartitionRule, TableName } from './partition-rule';

export class Catalog {
  private readonly rules = new Map<string, PartitionRule>();
  private readonly views = new Map<string, string>();
  private readonly functions = new Map<string, RoutineDefinition[]>();
  private readonly defaults = new Map<string, TableDefaults>();
  private readonly sequences = new Map<string, readonly string[]>();

  /**
   * `views`: the definitions of the database's views (pg_get_viewdef), which reads through them expand;
   * `routines`: its SQL and PL/pgSQL functions and procedures (pg_get_functiondef), checked for what they read.
   */
  constructor(
    readonly database: string,
    rules: readonly PartitionRule[],
    views: readonly { schema: string; name: string; definition: string }[] = [],
    routines: readonly RoutineDefinition[] = [],
    /** Names of the database's own functions with a VOLATILE overload (see FunctionEffects). */
    readonly volatileFunctions: ReadonlySet<string> = new Set(),
    /** Tables with a column default that may name a time or per-node function (see planner/volatile-defaults.ts). */
    columnDefaults: readonly TableDefaults[] = [],
    /** Tables whose inserts advance a sequence: a column default calling nextval, or an identity column. */
    tableSequences: readonly TableSequences[] = [],
  ) {
    for (const entry of tableSequences) this.sequences.set(key(entry.table), entry.sequences);
    for (const table of columnDefaults) this.defaults.set(key(table.table), table);
    for (const rule of rules) this.rules.set(key(rule.table), rule);
    for (const view of views) this.views.set(key(view), view.definition);
    for (const routine of routines) this.functions.set(routine.name, [...(this.functions.get(routine.name) ?? []), routine]);
  }

  /**
   * Where unqualified names resolve, for a session whose search_path is not the default: name → schema ('' for
   * a name that resolves to no relation). Names not in it resolve to public.
   */
  private unqualified: ReadonlyMap<string, string> | null = null;

  /** This catalog as a session with another search_path sees it (see `unqualified`); shares everything else. */
  resolvingWith(unqualified: ReadonlyMap<string, string> | null): Catalog {
    if (unqualified === null) return this;
    const view = Object.create(this) as Catalog;
    view.unqualified = unqualified;
    return view;
  }

  /** The schema an unqualified name means. */
  private schemaOf(schema: string | undefined, name: string): string {
    return schema ?? this.unqualified?.get(name) ?? 'public';
  }

  /** Every table name with a rule and every view name, for resolving them under a search_path. */
  get relationNames(): string[] {
    return [...new Set([...[...this.rules.values()].map((rule) => rule.table.name), ...[...this.views.keys(), ...this.defaults.keys(), ...this.sequences.keys()].map((k) => k.split('\0')[1])])];
  }

  /** The SQL and PL/pgSQL routines of a name, in any schema (every overload). */
  routines(name: string): readonly RoutineDefinition[] {
    return this.functions.get(name) ?? [];
  }

  /** The SELECT a view named in SQL stands for, or null when it is not a view. */
  viewDefinition(schema: string | undefined, name: string): string | null {
    return this.views.get(key({ schema: this.schemaOf(schema, name), name })) ?? null;
  }

  get hasViews(): boolean {
    return this.views.size > 0;
  }

  /** The columns and risky defaults of a table named in SQL, when it has any (see TableDefaults). */
  columnDefaultsOf(schema: string | undefined, name: string): TableDefaults | null {
    return this.defaults.get(key({ schema: this.schemaOf(schema, name), name })) ?? null;
  }

  /** The sequences an INSERT into a table named in SQL may advance (by their names, without schema). */
  sequencesOf(schema: string | undefined, name: string): readonly string[] {
    return this.sequences.get(key({ schema: this.schemaOf(schema, name), name })) ?? [];
  }

  /** The rule of a table named in SQL, or null (no rule: the table is replicated). */
  lookup(schema: string | undefined, name: string): PartitionRule | null {
    return this.rules.get(key({ schema: this.schemaOf(schema, name), name })) ?? null;
  }

  distributed(schema: string | undefined, name: string): DistributedRule | null {
    const rule = this.lookup(schema, name);
    return rule?.kind === 'distributed' ? rule : null;
  }

  get hasDistributedTables(): boolean {
    for (const rule of this.rules.values()) if (rule.kind === 'distributed') return true;
    return false;
  }

  all(): PartitionRule[] {
    return [...this.rules.values()];
  }

  nextColocationGroup(): number {
    let max = 0;
    for (const rule of this.rules.values()) if (rule.kind === 'distributed') max = Math.max(max, rule.colocationGroup);
    return max + 1;
  }
}

function key(table: TableName): string {
  return `${table.schema}\0${table.name}`;
}

/** What reading the catalog needs of a connection to a node (a BackendConnection is one). */
export interface CatalogConnection {
  readonly node: NodeAddress;
  query(sql: string): Promise<{ rows: (string | null)[][] }>;
}

/**
 * The catalogs of every database, loaded on first use from all nodes in service. A database whose nodes disagree
 * gets an error instead of a catalog, and keeps it until the nodes agree again.
 */
export class CatalogRegistry {
  private readonly loaded = new Map<string, Catalog>();
  private readonly changeLocks = new Map<string, Promise<void>>();

  /** The database's catalog, loading it through `connections` (one per node in service) when not loaded yet. */
  async forDatabase(database: string, connections: readonly CatalogConnection[]): Promise<Catalog> {
    const cached = this.loaded.get(database);
    if (cached) return cached;
    const catalog = await readCatalog(database, connections);
    this.loaded.set(database, catalog);
    return catalog;
  }

  /** The database's catalog as last loaded, for sessions to pick up changes made by others. */
  current(database: string): Catalog | undefined {
    return this.loaded.get(database);
  }

  /** Forgets a database's catalog so that the next session reads it again (after a rule change). */
  replace(catalog: Catalog): void {
    this.loaded.set(catalog.database, catalog);
  }

  /** Runs rule changes of one database one at a time (the nodes' table locks order them across proxies too). */
  async exclusive<T>(database: string, change: () => Promise<T>): Promise<T> {
    const previous = this.changeLocks.get(database) ?? Promise.resolve();
    let release!: () => void;
    const current = new Promise<void>((r) => (release = r));
    this.changeLocks.set(database, previous.then(() => current));
    await previous;
    try {
      return await change();
    } finally {
      release();
    }
  }
}

/** Reads and compares the catalog on every node; throws 55000 naming the nodes that disagree. */
export async function readCatalog(database: string, connections: readonly CatalogConnection[]): Promise<Catalog> {
  const texts: string[] = [];
  let rows: (string | null)[][] = [];
  for (const connection of connections) {
    const exists = (await connection.query(catalogExistsSql)).rows[0]?.[0] === 't';
    const nodeRows = exists ? (await connection.query(loadCatalogSql)).rows : [];
    texts.push(JSON.stringify(nodeRows));
    if (connection === connections[0]) rows = nodeRows;
  }
  const differing = connections.filter((_, i) => texts[i] !== texts[0]);
  if (differing.length > 0) {
    const message = `the partition rules of database "${database}" differ between ${describeNode(connections[0].node)} and ${differing.map((c) => describeNode(c.node)).join(', ')}`;
    log('error', 'catalog_mismatch', { database, nodes: connections.map((c) => c.node.id).join(','), differing: differing.map((c) => c.node.id).join(',') });
    throw new PgError({
      severity: 'FATAL',
      code: SqlState.objectNotInPrerequisiteState,
      message,
      hint: 'compare parapool.partition_rules on the nodes, repair the wrong copy, and reconnect; parapool will not guess which is right',
    });
  }
  const views = rows.length > 0 ? (await connections[0].query(loadViewsSql)).rows.map(([schema, name, definition]) => ({ schema: schema!, name: name!, definition: definition! })) : [];
  const routines = rows.length > 0
    ? (await connections[0].query(loadRoutinesSql)).rows.map(([schema, name, language, definition]) => ({ schema: schema!, name: name!, language: language as RoutineDefinition['language'], definition: definition! }))
    : [];
  const volatileFunctions = new Set((await connections[0].query(loadVolatileFunctionsSql)).rows.map(([name]) => name!));
  const defaults = new Map<string, { table: TableName; columns: string[]; defaults: Map<string, string> }>();
  for (const [schema, name, column, expression] of (await connections[0].query(loadColumnDefaultsSql)).rows) {
    const table = { schema: schema!, name: name! };
    const entry = defaults.get(key(table)) ?? { table, columns: [], defaults: new Map<string, string>() };
    defaults.set(key(table), entry);
    entry.columns.push(column!);
    if (expression !== null && riskyDefault.test(expression)) entry.defaults.set(column!, expression);
  }
  const sequences = new Map<string, TableSequences>();
  for (const [schema, name, sequence] of (await connections[0].query(loadTableSequencesSql)).rows) {
    const table = { schema: schema!, name: name! };
    const entry = sequences.get(key(table)) ?? { table, sequences: [] };
    sequences.set(key(table), entry);
    entry.sequences.push(sequence!);
  }
  return new Catalog(database, rows.map(ruleFromRow), views, routines, volatileFunctions, [...defaults.values()], [...sequences.values()]);
}

/**
 * A table's columns in order, with the defaults that may name a time or per-node function: each node would
 * evaluate such a default on its own, so the replicas of a replicated table would hold different values.
 */
export interface TableDefaults {
  readonly table: TableName;
  readonly columns: readonly string[];
  /** Column → default expression as pg_get_expr writes it; the planner decides whether it really varies. */
  readonly defaults: ReadonlyMap<string, string>;
}

/** A cheap first sieve over default expressions; planner/volatile-defaults.ts parses the ones it lets through. */
const riskyDefault = /now|current_|local|clock|timeofday|statement_|transaction_|random|uuid|txid|xact|backend_pid|inet_server/i;

/** The columns of every table that has a default the sieve lets through (the same sieve, in SQL). */
const loadColumnDefaultsSql = `SELECT n.nspname, c.relname, a.attname, pg_get_expr(d.adbin, d.adrelid)
  FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
  LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum AND a.attgenerated = ''
  WHERE a.attnum > 0 AND NOT a.attisdropped AND c.relkind IN ('r', 'p')
    AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'parapool') AND n.nspname !~ '^pg_(toast|temp)'
    AND a.attrelid IN (SELECT adrelid FROM pg_attrdef
      WHERE pg_get_expr(adbin, adrelid) ~* '${riskyDefault.source}')
  ORDER BY 1, 2, a.attnum`;

export interface TableSequences {
  readonly table: TableName;
  readonly sequences: string[];
}

/**
 * Each table's sequences that its inserts advance: those its column defaults depend on (serial, DEFAULT
 * nextval(...)) and its identity columns' own. Temporary tables are left out: only their session inserts.
 */
const loadTableSequencesSql = `SELECT n.nspname, c.relname, s.relname FROM pg_attrdef ad
    JOIN pg_depend d ON d.classid = 'pg_attrdef'::regclass AND d.objid = ad.oid AND d.refclassid = 'pg_class'::regclass
    JOIN pg_class s ON s.oid = d.refobjid AND s.relkind = 'S'
    JOIN pg_class c ON c.oid = ad.adrelid JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'parapool') AND n.nspname !~ '^pg_(toast|temp)'
  UNION
  SELECT n.nspname, c.relname, s.relname FROM pg_depend d
    JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S'
    JOIN pg_class c ON c.oid = d.refobjid JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass AND d.deptype = 'i'
      AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'parapool') AND n.nspname !~ '^pg_(toast|temp)'
  ORDER BY 1, 2, 3`;

export interface RoutineDefinition {
  readonly schema: string;
  readonly name: string;
  readonly language: 'sql' | 'plpgsql';
  /** CREATE OR REPLACE FUNCTION/PROCEDURE ..., as pg_get_functiondef writes it. */
  readonly definition: string;
}

const loadRoutinesSql = `SELECT n.nspname, p.proname, l.lanname, pg_get_functiondef(p.oid) FROM pg_proc p
  JOIN pg_namespace n ON n.oid = p.pronamespace JOIN pg_language l ON l.oid = p.prolang
  WHERE l.lanname IN ('sql', 'plpgsql') AND p.prokind IN ('f', 'p')
    AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'parapool') AND n.nspname NOT LIKE 'pg\\_%'`;

/** Read whatever the rules: replicated mode routes a SELECT that calls one of these to every node. */
const loadVolatileFunctionsSql = `SELECT DISTINCT p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
  WHERE p.provolatile = 'v' AND p.prokind = 'f' AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'parapool')`;

/** Views outside the system schemas; DDL runs on every node, so the first node's are every node's. */
const loadViewsSql = `SELECT n.nspname, c.relname, pg_get_viewdef(c.oid) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
  WHERE c.relkind = 'v' AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'parapool') AND n.nspname NOT LIKE 'pg\\_%'`;
