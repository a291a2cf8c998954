// PostgreSQL's own grammar (libpg-query, compiled to WebAssembly) behind one call. Parsing is synchronous once
// the module is loaded; results are cached by text because drivers send the same statements over and over.
// N.B. callers must not mutate a cached tree: rewrites copy first (see rewriteStatement).

import { loadModule, parseSync, type SqlError } from 'libpg-query';
import type { Node, RawStmt } from '@pgsql/types';
import { PgError, SqlState } from '../protocol/errors';

let loaded: Promise<void> | null = null;

/** Loads the parser; every entry point awaits this once at start-up. */
export function loadParser(): Promise<void> {
  loaded ??= loadModule();
  return loaded;
}

export interface ParsedStatement {
  /** The statement's node, e.g. { SelectStmt: {...} } */
  readonly node: Node;
  /** The statement's own text within the message (without the separating semicolon). */
  readonly sql: string;
}

export type ParseOutcome = { ok: true; statements: ParsedStatement[] } | { ok: false; error: PgError };

const cache = new Map<string, ParseOutcome>();
const cacheLimit = 4096;

/** Splits and parses a message's SQL; a syntax error is returned (with its position), not thrown. */
export function parseSql(sql: string): ParseOutcome {
  const cached = cache.get(sql);
  if (cached) return cached;
  let outcome: ParseOutcome;
  try {
    const result = parseSync(sql);
    const statements = (result.stmts ?? []).map((raw: RawStmt) => {
      const start = raw.stmt_location ?? 0;
      const text = raw.stmt_len ? sql.slice(start, start + raw.stmt_len) : sql.slice(start);
      return { node: raw.stmt as Node, sql: text };
    });
    outcome = { ok: true, statements };
  } catch (error) {
    const details = (error as SqlError).sqlDetails;
    outcome = {
      ok: false,
      error: new PgError({
        code: SqlState.syntaxError,
        message: (error as Error).message,
        position: details && details.cursorPosition >= 0 ? details.cursorPosition + 1 : undefined,
      }),
    };
  }
  if (cache.size >= cacheLimit) cache.delete(cache.keys().next().value as string);
  cache.set(sql, outcome);
  return outcome;
}

/** The single key of a node object: 'SelectStmt' for { SelectStmt: {...} }. */
export function nodeTag(node: Node): string {
  return Object.keys(node)[0];
}
