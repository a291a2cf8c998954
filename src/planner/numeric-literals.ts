// A statement's text with its numeric literals blanked out: the key under which the simple-query path remembers
// what it decided about a statement it relays as it came, so that `... WHERE aid = 48213` and `... WHERE aid = 7`
// share one parse. Only numbers are blanked, and only where the lexing is certain: a text with a backslash
// (E'' strings, standard_conforming_strings = off), a dollar sign (dollar quoting, parameters), U& escapes or an
// unterminated quote or comment gets no key, so two texts share a key only if they differ in numeric constants
// alone. NUL marks a blanked number: it cannot occur in a Query message's text.

const marker = '\0';

function isIdentifierChar(code: number): boolean {
  return (code >= 0x30 && code <= 0x39) || (code >= 0x41 && code <= 0x5a) || (code >= 0x61 && code <= 0x7a) || code === 0x5f || code >= 0x80;
}

function isDigit(code: number): boolean {
  return code >= 0x30 && code <= 0x39;
}

/** The text with each numeric literal replaced by one marker; null when the text is not lexed with certainty. */
export function blankNumericLiterals(sql: string): string | null {
  let out = '';
  let copiedUpTo = 0;
  let at = 0;
  const length = sql.length;
  while (at < length) {
    const code = sql.charCodeAt(at);
    if (code === 0x5c /* \ */ || code === 0x24 /* $ */ || code === 0) return null;
    if (code === 0x27 /* ' */ || code === 0x22 /* " */) {
      // A quoted string or identifier; a doubled quote inside is the quote itself.
      let end = at + 1;
      for (;;) {
        end = sql.indexOf(sql[at], end);
        if (end < 0) return null;
        if (sql.charCodeAt(end + 1) === code) end += 2;
        else break;
      }
      if (sql.slice(at + 1, end).includes('\\')) return null;
      at = end + 1;
      continue;
    }
    if (code === 0x2d /* - */ && sql.charCodeAt(at + 1) === 0x2d) {
      const end = sql.indexOf('\n', at);
      at = end < 0 ? length : end + 1;
      continue;
    }
    if (code === 0x2f /* / */ && sql.charCodeAt(at + 1) === 0x2a /* * */) {
      // Comments nest in PostgreSQL.
      let depth = 1;
      let scan = at + 2;
      while (depth > 0) {
        if (scan >= length) return null;
        if (sql.charCodeAt(scan) === 0x2f && sql.charCodeAt(scan + 1) === 0x2a) {
          depth++;
          scan += 2;
        } else if (sql.charCodeAt(scan) === 0x2a && sql.charCodeAt(scan + 1) === 0x2f) {
          depth--;
          scan += 2;
        } else scan++;
      }
      at = scan;
      continue;
    }
    if ((code === 0x55 || code === 0x75) /* U u */ && sql.charCodeAt(at + 1) === 0x26 /* & */) return null;
    const startsNumber = isDigit(code) || (code === 0x2e /* . */ && isDigit(sql.charCodeAt(at + 1)));
    if (startsNumber && (at === 0 || !isIdentifierChar(sql.charCodeAt(at - 1)))) {
      let end = at;
      while (isDigit(sql.charCodeAt(end))) end++;
      if (sql.charCodeAt(end) === 0x2e && sql.charCodeAt(end + 1) !== 0x2e /* not a range's .. */) {
        end++;
        while (isDigit(sql.charCodeAt(end))) end++;
      }
      const e = sql.charCodeAt(end);
      if (e === 0x65 || e === 0x45) {
        let exponent = end + 1;
        const sign = sql.charCodeAt(exponent);
        if (sign === 0x2b || sign === 0x2d) exponent++;
        if (isDigit(sql.charCodeAt(exponent))) {
          end = exponent;
          while (isDigit(sql.charCodeAt(end))) end++;
        }
      }
      out += sql.slice(copiedUpTo, at) + marker;
      copiedUpTo = at = end;
      continue;
    }
    if (isIdentifierChar(code)) {
      // A whole word: digits inside it (t1, x2y) are part of the name.
      let end = at + 1;
      while (end < length && isIdentifierChar(sql.charCodeAt(end))) end++;
      at = end;
      continue;
    }
    at++;
  }
  return copiedUpTo === 0 ? sql : out + sql.slice(copiedUpTo);
}

/**
 * The statements' trees with numeric constants and positions left out: two texts with one blanked key must have
 * the same shape. Checked on every profile hit when PARAPOOL_VERIFY_RELAY_PROFILES is set (the test suite sets it).
 */
export function statementShape(statements: readonly { readonly node: unknown }[]): string {
  return JSON.stringify(
    statements.map((statement) => statement.node),
    (key, value) => (key === 'location' || key === 'ival' || key === 'fval' ? undefined : value),
  );
}
