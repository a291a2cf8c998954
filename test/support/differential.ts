// The differential oracle: the same data in one reference PostgreSQL and in the cluster (loaded through the
// proxy), the same query on both, and the text of the results compared exactly: column names, type OIDs and
// every value, in order when the query orders its rows, as multisets otherwise.

import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseSync } from 'libpg-query';
import type { Client } from 'pg';

export const fixturesDir = join(__dirname, '..', '..', '..', 'fixtures');

export interface CorpusQuery {
  readonly file: string;
  readonly name: string;
  readonly sql: string;
}

/** Reads every `-- name: x` query of the corpus files (fixtures/corpus/*.sql), in file order. */
export function loadCorpus(dir = join(fixturesDir, 'corpus')): CorpusQuery[] {
  const queries: CorpusQuery[] = [];
  for (const file of readdirSync(dir).filter((f) => f.endsWith('.sql')).sort()) {
    const parts = readFileSync(join(dir, file), 'utf8').split(/^-- name: */m).slice(1);
    for (const part of parts) {
      const newline = part.indexOf('\n');
      const name = part.slice(0, newline).trim();
      const sql = part.slice(newline + 1).trim().replace(/;\s*$/, '');
      queries.push({ file, name, sql });
    }
  }
  return queries;
}

/** True when the statement's outermost query has ORDER BY, so row order is part of the answer. */
export function isOrdered(sql: string): boolean {
  const statement = parseSync(sql).stmts?.[0]?.stmt as Record<string, Record<string, unknown>> | undefined;
  const select = statement?.SelectStmt;
  return Array.isArray(select?.sortClause) && select.sortClause.length > 0;
}

export interface QueryResult {
  readonly columns: string[];
  readonly rows: (string | null)[][];
  readonly error: string | null;
}

export async function runForText(client: Client, sql: string): Promise<QueryResult> {
  try {
    const result = await client.query({ text: sql, rowMode: 'array' });
    return {
      columns: result.fields.map((f) => `${f.name}:${f.dataTypeID}`),
      rows: result.rows as (string | null)[][],
      error: null,
    };
  } catch (error) {
    const e = error as { code?: string; message: string };
    return { columns: [], rows: [], error: `${e.code ?? ''} ${e.message}` };
  }
}

const floatTypes = new Set(['700', '701']);

/** A float's text at 12 significant digits: sums of floats added in another order may differ past that. */
function roundFloat(text: string | null): string | null {
  if (text === null || !/^-?[0-9.]+(e[-+]?[0-9]+)?$/i.test(text)) return text;
  const value = Number(text);
  return value === 0 ? '0' : value.toPrecision(12);
}

/**
 * Null when the results match; otherwise a short description of the first difference. With `floatDigits`,
 * float4/float8 columns compare at 12 significant digits, as PostgreSQL's own parallel aggregation may differ.
 */
export function differenceOf(expected: QueryResult, actual: QueryResult, ordered: boolean, floatDigits = false): string | null {
  if (expected.error !== actual.error) return `error: expected ${expected.error ?? 'none'}, got ${actual.error ?? 'none'}`;
  if (expected.columns.join(',') !== actual.columns.join(',')) return `columns: expected ${expected.columns.join(',')}, got ${actual.columns.join(',')}`;
  if (expected.rows.length !== actual.rows.length) return `row count: expected ${expected.rows.length}, got ${actual.rows.length}`;
  const floats = floatDigits ? expected.columns.map((c) => floatTypes.has(c.split(':').pop()!)) : [];
  const key = (row: (string | null)[]) => JSON.stringify(floats.some(Boolean) ? row.map((v, i) => (floats[i] ? roundFloat(v) : v)) : row);
  const left = expected.rows.map(key);
  const right = actual.rows.map(key);
  if (!ordered) {
    left.sort();
    right.sort();
  }
  for (let i = 0; i < left.length; i++) {
    if (left[i] !== right[i]) return `row ${i + 1}: expected ${left[i]}, got ${right[i]}`;
  }
  return null;
}

/** The TPC-H-shaped data set (fixtures/tpch), at a scale factor, plus the edge-case tables and the views. */
export function tpchScript(scaleFactor: number): string[] {
  const read = (name: string) => readFileSync(join(fixturesDir, 'tpch', name), 'utf8');
  return [read('schema.sql'), read('data.sql').replace(/\{\{SF\}\}/g, String(scaleFactor)), read('extras.sql'), read('views.sql'), 'ANALYZE'];
}

export async function loadTpch(client: Client, scaleFactor: number): Promise<void> {
  for (const script of tpchScript(scaleFactor)) await client.query(script);
}
