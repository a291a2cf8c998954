// PostgreSQL's md5 password authentication, for both ends of the proxy: checking a client that answers
// AuthenticationMD5Password, and answering that request from a node. Many existing pool_passwd and userlist.txt
// files hold nothing but md5 hashes, so this path must keep working even though SCRAM is preferred.

import { createHash, timingSafeEqual } from 'node:crypto';
import { PgError, SqlState } from './errors';
import type { StoredSecret } from './password-file';

const MD5_HASH = /^md5[0-9a-f]{32}$/;
const MD5_SALT_LENGTH = 4;

function md5Hex(data: Buffer | string): string {
  return createHash('md5').update(data).digest('hex');
}

/** What PostgreSQL stores in pg_authid.rolpassword for an md5 password: the user name acts as the salt. */
export function md5PasswordHash(password: string, user: string): string {
  return 'md5' + md5Hex(Buffer.from(password + user, 'utf8'));
}

/**
 * The response a client sends to AuthenticationMD5Password. Knowing the stored hash is enough to produce it, which
 * is why md5 hashes in a password file let the proxy log in to nodes without the plain password.
 */
export function md5Response(
  storedHashOrPassword: { kind: 'plain'; password: string } | { kind: 'md5'; hash: string },
  user: string,
  salt: Buffer,
): string {
  if (salt.length !== MD5_SALT_LENGTH) {
    throw new PgError({
      severity: 'FATAL',
      code: SqlState.protocolViolation,
      message: `md5 authentication salt must be ${MD5_SALT_LENGTH} bytes, got ${salt.length}`,
    });
  }
  const stored =
    storedHashOrPassword.kind === 'plain'
      ? md5PasswordHash(storedHashOrPassword.password, user)
      : storedHashOrPassword.hash.toLowerCase(); // the digest is hashed as text, so its case matters
  if (!MD5_HASH.test(stored)) {
    throw new PgError({ code: SqlState.invalidPassword, message: 'stored md5 password hash is malformed' });
  }
  return 'md5' + md5Hex(Buffer.concat([Buffer.from(stored.slice(3), 'latin1'), salt]));
}

/**
 * Checks a client's md5 response. A SCRAM verifier cannot answer an md5 challenge (it does not reveal the md5
 * hash), so such users always fail here; PostgreSQL switches them to SCRAM instead, and callers should too.
 */
export function verifyMd5Response(secret: StoredSecret, user: string, salt: Buffer, response: string): boolean {
  if (secret.kind === 'scram') return false;
  if (!MD5_HASH.test(response)) return false;
  const expected = Buffer.from(md5Response(secret, user, salt), 'latin1');
  const actual = Buffer.from(response, 'latin1');
  return expected.length === actual.length && timingSafeEqual(expected, actual);
}
