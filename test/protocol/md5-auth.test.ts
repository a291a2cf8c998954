// md5 authentication has to produce exactly PostgreSQL's strings, in both directions, for plain passwords and
// for stored hashes; the expected values here are computed independently of the code under test.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { PgError } from '../../src/protocol/errors';
import { md5PasswordHash, md5Response, verifyMd5Response } from '../../src/protocol/md5-auth';
import { makeScramVerifier } from '../../src/protocol/scram';

const md5 = (data: string | Buffer): string => createHash('md5').update(data).digest('hex');
const salt = Buffer.from([0x01, 0x02, 0xfe, 0xff]);

test('md5PasswordHash is md5 of password followed by user name', () => {
  assert.equal(md5PasswordHash('secret', 'bob'), 'md5' + md5('secretbob'));
  // Values published with pgpool-II's pg_md5 and well known from PostgreSQL.
  assert.equal(md5PasswordHash('password', 'user'), 'md54d45974e13472b5a0be3533de4666414');
  assert.equal(md5PasswordHash('foo', ''), 'md5acbd18db4cc2f85cedef654fccc4a4d8');
  assert.equal(md5PasswordHash('pässwörd', 'jürgen'), 'md5' + md5(Buffer.from('pässwördjürgen', 'utf8')));
});

test('md5Response from a plain password and from the stored hash agree', () => {
  const stored = md5PasswordHash('secret', 'bob');
  const expected = 'md5' + md5(Buffer.concat([Buffer.from(stored.slice(3)), salt]));
  assert.equal(md5Response({ kind: 'plain', password: 'secret' }, 'bob', salt), expected);
  assert.equal(md5Response({ kind: 'md5', hash: stored }, 'bob', salt), expected);
  assert.equal(md5Response({ kind: 'md5', hash: stored.toUpperCase().replace('MD5', 'md5') }, 'bob', salt), expected);
  // The salt is what makes each response single-use.
  assert.notEqual(md5Response({ kind: 'plain', password: 'secret' }, 'bob', Buffer.from([1, 2, 3, 4])), expected);
});

test('md5Response with a fixed salt matches a known value', () => {
  // md5(md5('password' + 'user') hex + salt 'abcd')
  const inner = '4d45974e13472b5a0be3533de4666414';
  assert.equal(md5Response({ kind: 'plain', password: 'password' }, 'user', Buffer.from('abcd')), 'md5' + md5(inner + 'abcd'));
});

test('md5Response rejects a salt of the wrong length and a malformed hash', () => {
  for (const bad of [Buffer.alloc(0), Buffer.alloc(3), Buffer.alloc(5)]) {
    assert.throws(
      () => md5Response({ kind: 'plain', password: 'x' }, 'u', bad),
      (e: unknown) => e instanceof PgError && e.code === '08P01',
    );
  }
  assert.throws(
    () => md5Response({ kind: 'md5', hash: 'md5nothex' }, 'u', salt),
    (e: unknown) => e instanceof PgError && e.code === '28P01',
  );
});

test('verifyMd5Response accepts the right answer for plain and md5 secrets', () => {
  const response = 'md5' + md5(Buffer.concat([Buffer.from(md5('secretbob')), salt]));
  assert.equal(verifyMd5Response({ kind: 'plain', password: 'secret' }, 'bob', salt, response), true);
  assert.equal(verifyMd5Response({ kind: 'md5', hash: md5PasswordHash('secret', 'bob') }, 'bob', salt, response), true);
});

test('verifyMd5Response refuses wrong passwords, users, salts and malformed responses', () => {
  const secret = { kind: 'plain', password: 'secret' } as const;
  const response = md5Response(secret, 'bob', salt);
  assert.equal(verifyMd5Response({ kind: 'plain', password: 'Secret' }, 'bob', salt, response), false);
  assert.equal(verifyMd5Response(secret, 'alice', salt, response), false);
  assert.equal(verifyMd5Response(secret, 'bob', Buffer.from([0, 0, 0, 0]), response), false);
  assert.equal(verifyMd5Response(secret, 'bob', salt, response.toUpperCase()), false);
  assert.equal(verifyMd5Response(secret, 'bob', salt, response.slice(3)), false);
  assert.equal(verifyMd5Response(secret, 'bob', salt, response + '0'), false);
  assert.equal(verifyMd5Response(secret, 'bob', salt, ''), false);
  assert.equal(verifyMd5Response(secret, 'bob', salt, 'secret'), false);
  // Sending the stored hash itself is not a valid answer to the challenge.
  assert.equal(verifyMd5Response(secret, 'bob', salt, md5PasswordHash('secret', 'bob')), false);
});

test('verifyMd5Response cannot check a SCRAM verifier', () => {
  const secret = { kind: 'scram', verifier: makeScramVerifier('secret', Buffer.alloc(16), 2) } as const;
  const response = md5Response({ kind: 'plain', password: 'secret' }, 'bob', salt);
  assert.equal(verifyMd5Response(secret, 'bob', salt, response), false);
});
