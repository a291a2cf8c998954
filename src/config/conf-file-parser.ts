// The syntax of pgpool.conf (and postgresql.conf): `name = value` per line, `#` comments, values bare or in
// single quotes with '' or \' for a quote. Only syntax lives here; meaning and validation are in config.ts.

import { PgError, SqlState } from '../protocol/errors';

export interface ConfEntry {
  readonly name: string;
  readonly value: string;
  readonly line: number;
}

export function confError(fileName: string, line: number, message: string): PgError {
  return new PgError({ severity: 'FATAL', code: SqlState.configFileError, message: `${message} in file "${fileName}" line ${line}` });
}

/** Returns the entries in file order; throws PgError F0000 naming the line for a syntax error. */
export function parseConfFile(text: string, fileName: string): ConfEntry[] {
  const entries: ConfEntry[] = [];
  const lines = text.split(/\r?\n/);
  for (let index = 0; index < lines.length; index++) {
    const lineNumber = index + 1;
    const source = lines[index];
    let pos = 0;
    const skipSpace = () => {
      while (pos < source.length && (source[pos] === ' ' || source[pos] === '\t')) pos++;
    };
    skipSpace();
    if (pos === source.length || source[pos] === '#') continue;
    const nameMatch = /^[A-Za-z_][A-Za-z0-9_.]*/.exec(source.slice(pos));
    if (!nameMatch) throw confError(fileName, lineNumber, `syntax error near "${source.slice(pos, pos + 20)}"`);
    const name = nameMatch[0].toLowerCase();
    pos += nameMatch[0].length;
    skipSpace();
    if (source[pos] === '=') pos++;
    skipSpace();
    let value: string;
    if (source[pos] === "'") {
      pos++;
      value = '';
      for (;;) {
        if (pos >= source.length) throw confError(fileName, lineNumber, 'unterminated quoted string');
        const ch = source[pos];
        if (ch === "'" && source[pos + 1] === "'") {
          value += "'";
          pos += 2;
        } else if (ch === '\\' && pos + 1 < source.length) {
          value += source[pos + 1];
          pos += 2;
        } else if (ch === "'") {
          pos++;
          break;
        } else {
          value += ch;
          pos++;
        }
      }
    } else {
      const bare = /^[^\s#']+/.exec(source.slice(pos));
      if (!bare) throw confError(fileName, lineNumber, `missing value for parameter "${name}"`);
      value = bare[0];
      pos += bare[0].length;
    }
    skipSpace();
    if (pos < source.length && source[pos] !== '#') {
      throw confError(fileName, lineNumber, `syntax error near "${source.slice(pos, pos + 20)}"`);
    }
    entries.push({ name, value, line: lineNumber });
  }
  return entries;
}
