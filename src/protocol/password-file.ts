// The password file parapool checks client passwords against and takes node passwords from. Both formats that
// existing deployments already have are read, pgpool-II's pool_passwd and PgBouncer's userlist.txt, so either
// file can be pointed at unchanged; the format is recognised line by line.

import { readFileSync } from 'node:fs';
import { PgError, SqlState } from './errors';
import { parseScramVerifier } from './scram';
import type { ScramVerifier } from './scram-verifier';

export type StoredSecret =
  | { kind: 'plain'; password: string }
  /** 'md5' + hex(md5(password + user)), lowercase, as PostgreSQL stores it. */
  | { kind: 'md5'; hash: string }
  | { kind: 'scram'; verifier: ScramVerifier };

const MD5_SECRET = /^md5[0-9a-fA-F]{32}$/;
const SCRAM_PREFIX = 'SCRAM-SHA-256$';

/**
 * Classifies a secret the way PostgreSQL and PgBouncer do: 'md5' followed by exactly 32 hex digits is an MD5
 * hash, a 'SCRAM-SHA-256$' prefix is a SCRAM verifier (which must then be well formed), and anything else is a
 * plain password. pool_passwd's TEXT and AES prefixes are not interpreted here; parsePasswordFile handles them.
 * Throws PgError F0000 for a malformed SCRAM verifier or an empty password.
 */
export function parseStoredSecret(text: string): StoredSecret {
  // Trailing blanks cannot belong to a hash, and are an easy editing slip that would silently turn one into a
  // plain password nobody types.
  const trimmed = text.trimEnd();
  if (MD5_SECRET.test(trimmed)) return { kind: 'md5', hash: trimmed.toLowerCase() };
  if (trimmed.startsWith(SCRAM_PREFIX)) return { kind: 'scram', verifier: parseScramVerifier(trimmed) };
  if (text === '') throw new PgError({ code: SqlState.configFileError, message: 'empty password' });
  return { kind: 'plain', password: text };
}

class LineError extends Error {}

/** userlist.txt: `"user" "secret" [ignored...]`, a doubled quote standing for one quote inside a field. */
function parseUserlistLine(line: string): [string, string] {
  let pos = 0;
  const skipBlanks = (): void => {
    while (pos < line.length && (line[pos] === ' ' || line[pos] === '\t')) pos++;
  };
  const quoted = (what: string): string => {
    if (line[pos] !== '"') throw new LineError(`expected a double-quoted ${what}`);
    pos++;
    let value = '';
    for (;;) {
      if (pos >= line.length) throw new LineError(`unterminated quoted ${what}`);
      const ch = line[pos++];
      if (ch !== '"') value += ch;
      else if (line[pos] === '"') {
        value += '"';
        pos++;
      } else return value;
    }
  };

  skipBlanks();
  const user = quoted('user name');
  const beforeGap = pos;
  skipBlanks();
  if (pos === beforeGap && pos < line.length) throw new LineError('expected blank space after the user name');
  const secret = quoted('password');
  // PgBouncer ignores anything after the second field (old pg_auth files had more columns), but only when it is
  // set apart; text glued to the closing quote is more likely a quoting mistake.
  if (pos < line.length && line[pos] !== ' ' && line[pos] !== '\t') {
    throw new LineError('unexpected text after the quoted password');
  }
  return [user, secret];
}

/** pool_passwd: `user:secret`; the secret runs to the end of the line, since SCRAM verifiers contain colons. */
function parsePoolPasswdLine(line: string): [string, StoredSecret] {
  const colon = line.indexOf(':');
  if (colon < 0) throw new LineError('expected "user:password" or "\\"user\\" \\"password\\""');
  const user = line.slice(0, colon);
  const secret = line.slice(colon + 1);
  if (user.trim() !== user) throw new LineError('user name has leading or trailing blank space');
  if (user === '') throw new LineError('empty user name');
  if (secret.startsWith('TEXT')) {
    // pgpool-II's explicit plain-text marker: what follows is taken literally, even if it looks like a hash.
    if (secret.length === 4) throw new LineError('empty password');
    return [user, { kind: 'plain', password: secret.slice(4) }];
  }
  if (secret.startsWith('AES')) {
    throw new LineError(
      'AES-encrypted passwords are not supported because no decryption key is configured; ' +
        'store the password as TEXT<password>, md5<hash> or a SCRAM-SHA-256 secret instead',
    );
  }
  return [user, parseStoredSecret(secret)];
}

/**
 * Parses a password file. Lines starting with '"' are userlist.txt entries, other non-blank lines are
 * pool_passwd entries, and lines starting with ';' or '#' are comments. A user listed twice is an error: the two
 * tools resolve that differently (first wins in pgpool-II, last in PgBouncer), so neither reading is safe.
 */
export function parsePasswordFile(text: string, fileName: string): Map<string, StoredSecret> {
  const entries = new Map<string, StoredSecret>();
  const firstLine = new Map<string, number>();
  const lines = text.replace(/^\uFEFF/, '').split(/\r?\n/);

  lines.forEach((line, index) => {
    const lineNo = index + 1;
    const fail = (detail: string): never => {
      throw new PgError({
        code: SqlState.configFileError,
        message: `invalid entry in password file "${fileName}" line ${lineNo}: ${detail}`,
      });
    };
    const start = line.trimStart();
    if (start === '' || start[0] === ';' || start[0] === '#') return;

    let user: string;
    let secret: StoredSecret;
    try {
      if (start[0] === '"') {
        let raw: string;
        [user, raw] = parseUserlistLine(line);
        if (user === '') throw new LineError('empty user name');
        secret = parseStoredSecret(raw);
      } else {
        [user, secret] = parsePoolPasswdLine(line);
      }
    } catch (err) {
      if (err instanceof LineError || err instanceof PgError) return fail(err.message);
      throw err;
    }

    const previous = firstLine.get(user);
    if (previous !== undefined) fail(`user "${user}" is already listed on line ${previous}`);
    firstLine.set(user, lineNo);
    entries.set(user, secret);
  });
  return entries;
}

export function loadPasswordFile(path: string): Map<string, StoredSecret> {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    throw new PgError({
      code: SqlState.configFileError,
      message: `could not read password file "${path}": ${(err as Error).message}`,
    });
  }
  return parsePasswordFile(text, path);
}
