// The catalog as one session sees it: the database's shared catalog, followed when other sessions change rules,
// views or routines; read again after the session's own DDL (kept to the session until its transaction ends);
// and resolving unqualified names through the session's search_path when it is not the default. Re-reads happen
// before the client's ReadyForQuery, so the next statement, in any session, sees the change.

import { log } from '../log';
import { quoteLiteral } from '../catalog/partition-rule';
import { readCatalog, type Catalog, type CatalogRegistry } from '../catalog/catalog';
import type { BackendConnection } from '../backend/backend-connection';
import { PgError } from '../protocol/errors';
import type { TransactionStatus } from '../protocol/message-codes';

/** What the session catalog needs of its session. */
export interface SessionCatalogHost {
  readonly id: number;
  status(): TransactionStatus;
  /** One connection per node in service, in node order. */
  connections(): BackendConnection[];
  mainConnection(): BackendConnection;
}

/** Statements after which the search_path may differ. */
const mayChangeSearchPath = /search_path|discard|reset\s+all|session\s+authorization|(set|reset)\s+((local|session)\s+)?role/i;

export class SessionCatalog {
  private shared: Catalog;
  /** The shared catalog as this session's search_path sees it. */
  catalog: Catalog;
  /** Where unqualified names resolve under a search_path other than the default (null: public). */
  private resolution: Map<string, string> | null = null;
  /** Set when view or routine DDL ran since the catalog was last read. */
  private definitionsChanged = false;
  /** Set while this session's catalog holds what its open transaction changed, which other sessions must not see. */
  private inTransaction = false;
  /** Set when a statement may have changed the search_path. */
  private searchPathDirty = false;
  /** Set when the search_path, when last read, was not the default one. */
  private customSearchPath = false;
  /** Set when the search_path was read inside a transaction block: a rollback may undo a SET. */
  private searchPathInTransaction = false;

  constructor(private readonly registry: CatalogRegistry, shared: Catalog, private readonly host: SessionCatalogHost) {
    this.shared = shared;
    this.catalog = shared;
  }

  /** Takes a catalog the session read itself (after a rule change), shared already. */
  use(shared: Catalog): void {
    this.shared = shared;
    this.catalog = shared.resolvingWith(this.resolution);
  }

  /** Before a statement: picks up other sessions' changes; notes whether it may change definitions or the search_path. */
  beforeStatement(sql: string, changesDefinitions: boolean): void {
    if (changesDefinitions) this.definitionsChanged = true;
    if (mayChangeSearchPath.test(sql)) this.searchPathDirty = true;
    if (this.inTransaction) return;
    const current = this.registry.current(this.shared.database);
    if (!current || current === this.shared) return;
    this.use(current);
    if (this.resolution) this.searchPathDirty = true; // its names may differ: read again after this statement
  }

  /** A batch of the session's ran DDL on views or routines. */
  definitionsMayHaveChanged(): void {
    this.definitionsChanged = true;
  }

  /** Before ReadyForQuery: reads again what the statements may have changed (and, at a transaction's end, what it kept). */
  async settle(): Promise<void> {
    const status = this.host.status();
    if (status === 'I' && this.inTransaction) this.definitionsChanged = true;
    if (this.definitionsChanged) await this.reload();
    if (this.searchPathDirty || (this.searchPathInTransaction && status === 'I')) await this.resolveSearchPath();
  }

  /**
   * Reads the catalog again after view or routine DDL: shared with every session once committed; inside a
   * transaction block kept to this session until the transaction ends (then read again, committed or not).
   */
  private async reload(): Promise<void> {
    const status = this.host.status();
    if (status === 'E') return;
    this.definitionsChanged = false;
    const catalog = await readCatalog(this.shared.database, this.host.connections()).catch((error: unknown) => {
      log('warning', 'catalog_reload_failed', { session: this.host.id, error: (error as Error).message });
      return null;
    });
    if (!catalog) return;
    this.use(catalog);
    // N.B. also when no name needed resolving before: the names just created may.
    if (this.resolution || this.customSearchPath) await this.resolveSearchPath();
    this.inTransaction = status !== 'I';
    if (status === 'I') this.registry.replace(catalog);
  }

  /**
   * Reads where the session's search_path finds each name that has a rule or is a view in some schema (the main
   * node resolves them, as it would the statement's own names); with the default search_path, public.
   */
  async resolveSearchPath(): Promise<void> {
    this.searchPathDirty = false;
    const status = this.host.status();
    if (status === 'E') return;
    const main = this.host.mainConnection();
    let resolution: Map<string, string> | null = null;
    try {
      const [[path]] = (await main.query("SELECT current_setting('search_path')")).rows;
      this.customSearchPath = path !== '"$user", public';
      const names = this.shared.relationNames;
      if (path !== '"$user", public' && names.length > 0) {
        const { rows } = await main.query(
          `SELECT n, (SELECT s.nspname FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace s ON s.oid = c.relnamespace WHERE c.oid = pg_catalog.to_regclass(pg_catalog.quote_ident(n)))
           FROM unnest(ARRAY[${names.map(quoteLiteral).join(', ')}]::text[]) n`,
        );
        resolution = new Map(rows.map(([name, schema]) => [name!, schema ?? '']));
      }
    } catch (error) {
      if (!(error instanceof PgError)) throw error;
      // Asked again after the next statement; until then names resolve as they did.
      log('warning', 'search_path_read_failed', { session: this.host.id, error: error.message });
      this.searchPathDirty = true;
      return;
    }
    this.resolution = resolution;
    this.searchPathInTransaction = status !== 'I';
    this.use(this.shared);
  }
}
