// SCRAM-SHA-256 must agree byte for byte with PostgreSQL and libpq, so the exchange is checked against the
// published RFC 7677 vector, both sides are run against each other, and every malformed message is refused.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { PgError } from '../../src/protocol/errors';
import {
  ScramClientSession,
  ScramServerSession,
  decodeBase64Strict,
  formatScramVerifier,
  makeScramVerifier,
  parseScramVerifier,
  saslprep,
} from '../../src/protocol/scram';

const RFC = {
  password: 'pencil',
  clientNonce: 'rOprNGfwEbeRWgbNEkqO',
  serverNonce: '%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0',
  salt: Buffer.from('W22ZaJ0SNY7soEsUEjb6gQ==', 'base64'),
  clientFirst: 'n,,n=user,r=rOprNGfwEbeRWgbNEkqO',
  serverFirst: 'r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096',
  clientFinal:
    'c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=',
  serverFinal: 'v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=',
};

const b = (s: string): Buffer => Buffer.from(s, 'latin1');

function isPgError(code: string, message?: RegExp) {
  return (err: unknown): boolean => {
    assert.ok(err instanceof PgError, `expected PgError, got ${String(err)}`);
    assert.equal(err.code, code);
    if (message) assert.match(`${err.message} ${err.detail ?? ''}`, message);
    return true;
  };
}

// Computed once: PBKDF2 with 4096 iterations is the slow part of every test.
const rfcVerifier = makeScramVerifier(RFC.password, RFC.salt, 4096);
const fastVerifier = makeScramVerifier('s3cret', Buffer.from('0123456789abcdef'), 16);

function serverAfterFirst(verifier = rfcVerifier, clientFirst = RFC.clientFirst): ScramServerSession {
  const server = new ScramServerSession(verifier, { serverNonce: RFC.serverNonce });
  server.handleClientFirst(b(clientFirst));
  return server;
}

test('RFC 7677 vector: client produces the published client-final and accepts the server signature', () => {
  const client = new ScramClientSession(RFC.password, { nonce: RFC.clientNonce, user: 'user' });
  assert.equal(client.clientFirst().toString(), RFC.clientFirst);
  assert.equal(client.handleServerFirst(b(RFC.serverFirst)).toString(), RFC.clientFinal);
  assert.doesNotThrow(() => client.verifyServerFinal(b(RFC.serverFinal)));
});

test('RFC 7677 vector: server produces the published server-first and server-final', () => {
  const server = new ScramServerSession(rfcVerifier, { serverNonce: RFC.serverNonce });
  assert.equal(server.handleClientFirst(b(RFC.clientFirst)).toString(), RFC.serverFirst);
  const result = server.handleClientFinal(b(RFC.clientFinal));
  assert.equal(result.ok, true);
  assert.ok(result.ok);
  assert.equal(result.serverFinal.toString(), RFC.serverFinal);
  assert.equal(result.clientKey.length, 32);
});

test('verifier text round-trips through format and parse', () => {
  const text = formatScramVerifier(rfcVerifier);
  assert.match(text, /^SCRAM-SHA-256\$4096:W22ZaJ0SNY7soEsUEjb6gQ==\$[A-Za-z0-9+/]{43}=:[A-Za-z0-9+/]{43}=$/);
  assert.deepEqual(parseScramVerifier(text), rfcVerifier);
});

test('verifier defaults: 4096 iterations and a fresh 16-byte salt', () => {
  const a = makeScramVerifier('pw');
  const c = makeScramVerifier('pw');
  assert.equal(a.iterations, 4096);
  assert.equal(a.salt.length, 16);
  assert.notDeepEqual(a.salt, c.salt);
  assert.notDeepEqual(a.storedKey, c.storedKey);
  assert.throws(() => makeScramVerifier('pw', Buffer.alloc(16), 0), RangeError);
  assert.throws(() => makeScramVerifier('pw', Buffer.alloc(0), 10), RangeError);
});

test('verifiers match ones PostgreSQL 15 stored for the same password, salt and iterations', () => {
  // rolpassword after CREATE ROLE ... PASSWORD 'pencil' and PASSWORD 'ｐａｓｓ' (fullwidth) on PostgreSQL 15.
  const fromPostgres: Array<[string, string]> = [
    [
      'pencil',
      'SCRAM-SHA-256$4096:HMLrjHUs+NB37lcf8peKzw==$LFhmlTFinpeiFoJFAh5A9UMhgkcatud7ZvG/5kGRJHw=:8f/DgqHJa5VlwNofIWAcNO6gVZZ84EVfTuMv8euzMoo=',
    ],
    [
      'pass', // PostgreSQL SASLprep'd the fullwidth spelling to plain ASCII before hashing
      'SCRAM-SHA-256$4096:uPiF7QPR35tjsg+sSCruyw==$CxuIsu19k8pN6/RJr9l54Dg9geMEv/Jo8qpHJj+/BLQ=:IGClgizC2pjxxhOwOT9pay4ZJUN1cudVTxdibHM940s=',
    ],
  ];
  for (const [password, text] of fromPostgres) {
    const stored = parseScramVerifier(text);
    assert.equal(formatScramVerifier(makeScramVerifier(password, stored.salt, stored.iterations)), text);
  }
  const fullwidth = parseScramVerifier(fromPostgres[1][1]);
  assert.deepEqual(makeScramVerifier('\uff50\uff41\uff53\uff53', fullwidth.salt, 4096), fullwidth);
});

test('round trip between client and server with the right password', () => {
  for (const password of ['s3cret']) {
    const client = new ScramClientSession(password);
    const server = new ScramServerSession(fastVerifier);
    const first = client.clientFirst();
    assert.match(first.toString(), /^n,,n=,r=[A-Za-z0-9+/]{24}$/);
    const serverFirst = server.handleClientFirst(first);
    assert.match(serverFirst.toString(), /^r=[A-Za-z0-9+/]{48},s=MDEyMzQ1Njc4OWFiY2RlZg==,i=16$/);
    const result = server.handleClientFinal(client.handleServerFirst(serverFirst));
    assert.ok(result.ok);
    assert.doesNotThrow(() => client.verifyServerFinal(result.serverFinal));
  }
});

test('round trip with a wrong password fails without throwing', () => {
  const client = new ScramClientSession('wrong');
  const server = new ScramServerSession(fastVerifier);
  const result = server.handleClientFinal(client.handleServerFirst(server.handleClientFirst(client.clientFirst())));
  assert.deepEqual(result, { ok: false });
});

test('doomed sessions run the whole exchange and then fail even with the right password', () => {
  const client = new ScramClientSession('s3cret');
  const server = new ScramServerSession(fastVerifier, { doomed: true });
  const result = server.handleClientFinal(client.handleServerFirst(server.handleClientFirst(client.clientFirst())));
  assert.deepEqual(result, { ok: false });
});

test("the client's proven ClientKey authenticates onwards to a node holding the same verifier", () => {
  const toProxy = new ScramClientSession('s3cret');
  const proxy = new ScramServerSession(fastVerifier);
  const proven = proxy.handleClientFinal(toProxy.handleServerFirst(proxy.handleClientFirst(toProxy.clientFirst())));
  assert.ok(proven.ok);

  const toNode = new ScramClientSession({ clientKey: proven.clientKey, verifier: fastVerifier });
  const node = new ScramServerSession(fastVerifier);
  const result = node.handleClientFinal(toNode.handleServerFirst(node.handleClientFirst(toNode.clientFirst())));
  assert.ok(result.ok);
  toNode.verifyServerFinal(result.serverFinal);

  // A node with a different salt cannot be answered from the key; say so instead of failing obscurely.
  const other = makeScramVerifier('s3cret', Buffer.from('fedcba9876543210'), 16);
  const toOther = new ScramClientSession({ clientKey: proven.clientKey, verifier: fastVerifier });
  const otherNode = new ScramServerSession(other);
  assert.throws(
    () => toOther.handleServerFirst(otherNode.handleClientFirst(toOther.clientFirst())),
    isPgError('28P01', /does not match/),
  );
});

test('the user name in client-first is ignored but escaped when sent', () => {
  const client = new ScramClientSession('s3cret', { nonce: 'abc', user: 'a,b=c' });
  assert.equal(client.clientFirst().toString(), 'n,,n=a=2Cb=3Dc,r=abc');
  const server = new ScramServerSession(fastVerifier, { serverNonce: 'xyz' });
  const clientFinal = client.handleServerFirst(server.handleClientFirst(b('n,,n=a=2Cb=3Dc,r=abc')));
  assert.ok(server.handleClientFinal(clientFinal).ok);
});

test("server accepts the 'y' flag and then expects c=eSws", () => {
  const server = serverAfterFirst(rfcVerifier, 'y,,n=user,r=rOprNGfwEbeRWgbNEkqO');
  // The proof no longer matches (the AuthMessage differs), but the binding attribute must be accepted.
  const final = RFC.clientFinal.replace('c=biws', 'c=eSws');
  assert.deepEqual(server.handleClientFinal(b(final)), { ok: false });

  const mismatch = serverAfterFirst(rfcVerifier, 'y,,n=user,r=rOprNGfwEbeRWgbNEkqO');
  assert.throws(() => mismatch.handleClientFinal(b(RFC.clientFinal)), isPgError('08P01', /channel-binding/));
});

test('server accepts extensions after the nonce in client-first and before the proof in client-final', () => {
  const server = new ScramServerSession(fastVerifier, { serverNonce: 'SRV' });
  const client = new ScramClientSession('s3cret', { nonce: 'CLI' });
  client.clientFirst();
  server.handleClientFirst(b('n,,n=,r=CLI,x=ext'));
  // The client's AuthMessage used the bare message without the extension, so only parsing is checked here.
  const final = client.handleServerFirst(b(`r=CLISRV,s=${fastVerifier.salt.toString('base64')},i=16`)).toString();
  const withExt = final.replace(',p=', ',x=1,p=');
  assert.deepEqual(server.handleClientFinal(b(withExt)), { ok: false });
});

const badClientFirsts: Array<[string, string, RegExp]> = [
  ['', '08P01', /empty/],
  ['p=tls-server-end-point,,n=,r=abc', '08P01', /channel binding data/],
  ['x,,n=,r=abc', '08P01', /channel-binding flag/],
  ['n', '08P01', /Comma expected/],
  ['n;,n=,r=abc', '08P01', /Comma expected/],
  ['n,a=admin,n=,r=abc', '0A000', /authorization identity/],
  ['n,x,n=,r=abc', '08P01', /Unexpected attribute/],
  ['n,,m=ext,n=,r=abc', '0A000', /unsupported SCRAM extension/],
  ['n,,r=abc', '08P01', /Expected attribute "n"/],
  ['n,,n=', '08P01', /"r" missing/],
  ['n,,n=,x=abc', '08P01', /Expected attribute "r"/],
  ['n,,n=,r=', '08P01', /nonce/],
  ['n,,n=,r=ab c', '08P01', /nonce/],
  ['n,,n=,r=abc,', '08P01', /Malformed attribute/],
  ['n,,n=,r=abc,garbage', '08P01', /Malformed attribute/],
  ['n,,n=,r', '08P01', /Malformed attribute/],
  ['n,,n=,r=a\u00e9', '08P01', /nonce/],
];

for (const [message, code, pattern] of badClientFirsts) {
  test(`server rejects client-first ${JSON.stringify(message)}`, () => {
    const server = new ScramServerSession(fastVerifier);
    assert.throws(() => server.handleClientFirst(b(message)), isPgError(code, pattern));
  });
}

test('server rejects a client-first containing a null byte', () => {
  const server = new ScramServerSession(fastVerifier);
  assert.throws(() => server.handleClientFirst(Buffer.from('n,,n=\0,r=abc')), isPgError('08P01', /null/));
});

const proof = 'dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=';
const fullNonce = RFC.clientNonce + RFC.serverNonce;
const badClientFinals: Array<[string, RegExp]> = [
  ['', /empty/],
  [`r=${fullNonce},p=${proof}`, /Expected attribute "c"/],
  [`c=bmVvbg==,r=${fullNonce},p=${proof}`, /channel-binding/],
  [`c=biws!,r=${fullNonce},p=${proof}`, /channel-binding/],
  [`c=eSws,r=${fullNonce},p=${proof}`, /channel-binding/],
  [`c=biws,r=${RFC.clientNonce},p=${proof}`, /Nonce does not match/],
  [`c=biws,r=${fullNonce}x,p=${proof}`, /Nonce does not match/],
  [`c=biws,p=${proof}`, /Expected attribute "r"/],
  [`c=biws,r=${fullNonce}`, /"p" missing/],
  [`c=biws,r=${fullNonce},p=`, /Malformed proof/],
  [`c=biws,r=${fullNonce},p=dHzbZapWIk4jUhN+Ute9`, /Malformed proof/],
  [`c=biws,r=${fullNonce},p=${proof.slice(0, -1)}`, /Malformed proof/],
  [`c=biws,r=${fullNonce},p=${proof}$`, /Malformed proof/],
  [`c=biws,r=${fullNonce},p=${proof},x=1`, /Garbage/],
  [`c=biws,r=${fullNonce},p=${proof},p=${proof}`, /Garbage/],
  [`c=biws,r=${fullNonce},junk,p=${proof}`, /Malformed attribute/],
];

for (const [message, pattern] of badClientFinals) {
  test(`server rejects client-final ${JSON.stringify(message.slice(0, 60))}`, () => {
    const server = serverAfterFirst();
    assert.throws(() => server.handleClientFinal(b(message)), isPgError('08P01', pattern));
  });
}

test('server enforces message order', () => {
  const fresh = new ScramServerSession(fastVerifier);
  assert.throws(() => fresh.handleClientFinal(b(RFC.clientFinal)), isPgError('08P01', /out of order/));
  const server = serverAfterFirst();
  assert.throws(() => server.handleClientFirst(b(RFC.clientFirst)), isPgError('08P01', /out of order/));
  server.handleClientFinal(b(RFC.clientFinal));
  assert.throws(() => server.handleClientFinal(b(RFC.clientFinal)), isPgError('08P01', /out of order/));
});

const badServerFirsts: Array<[string, string, RegExp]> = [
  ['', '08P01', /empty/],
  ['m=ext,r=rOprNGfwEbeRWgbNEkqOxyz,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096', '0A000', /extension/],
  ['r=someoneelse,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096', '08P01', /nonce/],
  ['r=rOprNGfwEbeRWgbNEkqO,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096', '08P01', /nonce/],
  ['r=rOprNGfwEbeRWgbNEkqO x,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096', '08P01', /Non-printable/],
  ['s=W22ZaJ0SNY7soEsUEjb6gQ==,r=rOprNGfwEbeRWgbNEkqOxyz,i=4096', '08P01', /Expected attribute "r"/],
  ['r=rOprNGfwEbeRWgbNEkqOxyz,s=,i=4096', '08P01', /salt/],
  ['r=rOprNGfwEbeRWgbNEkqOxyz,s=not base64!,i=4096', '08P01', /salt/],
  ['r=rOprNGfwEbeRWgbNEkqOxyz,i=4096', '08P01', /Expected attribute "s"/],
  ['r=rOprNGfwEbeRWgbNEkqOxyz,s=W22ZaJ0SNY7soEsUEjb6gQ==', '08P01', /"i" missing/],
  ['r=rOprNGfwEbeRWgbNEkqOxyz,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=0', '08P01', /iteration/],
  ['r=rOprNGfwEbeRWgbNEkqOxyz,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=-5', '08P01', /iteration/],
  ['r=rOprNGfwEbeRWgbNEkqOxyz,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096.5', '08P01', /iteration/],
  ['r=rOprNGfwEbeRWgbNEkqOxyz,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=04096', '08P01', /iteration/],
  ['r=rOprNGfwEbeRWgbNEkqOxyz,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=9999999999', '08P01', /iteration/],
  ['r=rOprNGfwEbeRWgbNEkqOxyz,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=', '08P01', /iteration/],
  ['r=rOprNGfwEbeRWgbNEkqOxyz,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=1,x=y', '08P01', /Garbage/],
];

for (const [message, code, pattern] of badServerFirsts) {
  test(`client rejects server-first ${JSON.stringify(message.slice(0, 60))}`, () => {
    const client = new ScramClientSession(RFC.password, { nonce: RFC.clientNonce });
    client.clientFirst();
    assert.throws(() => client.handleServerFirst(b(message)), isPgError(code, pattern));
  });
}

function clientAfterServerFirst(): ScramClientSession {
  const client = new ScramClientSession(RFC.password, { nonce: RFC.clientNonce, user: 'user' });
  client.clientFirst();
  client.handleServerFirst(b(RFC.serverFirst));
  return client;
}

const badServerFinals: Array<[string, string, RegExp]> = [
  ['v=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=', '28P01', /incorrect server signature/],
  ['e=invalid-proof', '28P01', /invalid-proof/],
  ['v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4', '08P01', /server signature/],
  ['v=6rriTRBi23WpRR', '08P01', /server signature/],
  [`${RFC.serverFinal},x=1`, '08P01', /Garbage/],
  ['x=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=', '08P01', /Expected attribute "v"/],
  ['', '08P01', /empty/],
];

for (const [message, code, pattern] of badServerFinals) {
  test(`client rejects server-final ${JSON.stringify(message.slice(0, 50))}`, () => {
    assert.throws(() => clientAfterServerFirst().verifyServerFinal(b(message)), isPgError(code, pattern));
  });
}

test('a server that does not know the password is caught by its signature', () => {
  const impostor = new ScramServerSession(makeScramVerifier('other', Buffer.from('0123456789abcdef'), 16));
  const client = new ScramClientSession('s3cret');
  const result = impostor.handleClientFinal(client.handleServerFirst(impostor.handleClientFirst(client.clientFirst())));
  assert.deepEqual(result, { ok: false });
  // Even a signature computed with the impostor's own key must not satisfy the client.
  const impostor2 = new ScramServerSession(makeScramVerifier('other', Buffer.from('0123456789abcdef'), 16));
  const client2 = new ScramClientSession('other');
  const okResult = impostor2.handleClientFinal(client2.handleServerFirst(impostor2.handleClientFirst(client2.clientFirst())));
  assert.ok(okResult.ok);
  assert.throws(() => clientAfterServerFirst().verifyServerFinal(okResult.serverFinal), isPgError('28P01'));
});

test('client enforces message order', () => {
  const client = new ScramClientSession('pw', { nonce: 'abc' });
  assert.throws(() => client.handleServerFirst(b('r=abcd,s=AAAA,i=1')), isPgError('08P01', /out of order/));
  assert.throws(() => client.verifyServerFinal(b(RFC.serverFinal)), isPgError('08P01', /out of order/));
  client.clientFirst();
  assert.throws(() => client.clientFirst(), isPgError('08P01', /out of order/));
  assert.throws(() => client.verifyServerFinal(b(RFC.serverFinal)), isPgError('08P01', /out of order/));
});

test('chooseMechanism picks SCRAM-SHA-256 and refuses lists without it', () => {
  assert.equal(ScramClientSession.chooseMechanism(['SCRAM-SHA-256-PLUS', 'SCRAM-SHA-256']), 'SCRAM-SHA-256');
  assert.equal(ScramClientSession.chooseMechanism(['SCRAM-SHA-256']), 'SCRAM-SHA-256');
  assert.throws(() => ScramClientSession.chooseMechanism(['SCRAM-SHA-256-PLUS']), isPgError('0A000', /SCRAM-SHA-256-PLUS/));
  assert.throws(() => ScramClientSession.chooseMechanism([]), isPgError('0A000', /nothing/));
});

test('nonce options must be printable', () => {
  assert.throws(() => new ScramClientSession('pw', { nonce: 'a,b' }), RangeError);
  assert.throws(() => new ScramServerSession(fastVerifier, { serverNonce: '' }), RangeError);
});

test('parseScramVerifier rejects malformed secrets with F0000', () => {
  const good = formatScramVerifier(fastVerifier);
  const [, iterSalt, keys] = good.split('$');
  const [, salt] = iterSalt.split(':');
  const [stored, server] = keys.split(':');
  const bad = [
    'SCRAM-SHA-256$',
    `SCRAM-SHA-256$0:${salt}$${stored}:${server}`,
    `SCRAM-SHA-256$-1:${salt}$${stored}:${server}`,
    `SCRAM-SHA-256$abc:${salt}$${stored}:${server}`,
    `SCRAM-SHA-256$16:$${stored}:${server}`,
    `SCRAM-SHA-256$16:${salt}x$${stored}:${server}`,
    `SCRAM-SHA-256$16:${salt}$${stored.slice(4)}:${server}`,
    `SCRAM-SHA-256$16:${salt}$${stored}:`,
    `SCRAM-SHA-256$16:${salt}$${stored}:${server}x`,
    `SCRAM-SHA-256$16:${salt}$${stored}`,
    `SCRAM-SHA-1$16:${salt}$${stored}:${server}`,
  ];
  for (const text of bad) {
    assert.throws(() => parseScramVerifier(text), isPgError('F0000', /invalid SCRAM secret/), text);
  }
});

test('decodeBase64Strict accepts only canonical padded base64', () => {
  assert.deepEqual(decodeBase64Strict('biws'), Buffer.from('n,,'));
  assert.deepEqual(decodeBase64Strict(''), Buffer.alloc(0));
  for (const text of ['biw', 'bi ws', 'biws=', 'b=ws', 'bi-_', 'YQ=', 'YR==']) {
    assert.equal(decodeBase64Strict(text), undefined, text);
  }
});

test('saslprep leaves ASCII alone and normalises like PostgreSQL otherwise', () => {
  assert.equal(saslprep('pencil'), 'pencil');
  assert.equal(saslprep('tab\there'), 'tab\there'); // ASCII, even control characters, is used as is
  assert.equal(saslprep('\uff50\uff41\uff53\uff53'), 'pass'); // fullwidth letters fold under NFKC
  assert.equal(saslprep('a\u00a0b'), 'a b'); // non-ASCII space maps to space
  assert.equal(saslprep('a\u00adb'), 'ab'); // soft hyphen maps to nothing
  assert.equal(saslprep('\u2168'), 'IX'); // roman numeral nine
  assert.equal(saslprep('cafe\u0301'), 'caf\u00e9'); // composed by NFKC
  assert.equal(saslprep('\u00ad'), '\u00ad'); // empty after mapping: PostgreSQL uses the raw password
  assert.equal(saslprep('\uff41\ue000'), '\uff41\ue000'); // private use is prohibited: raw password again
  assert.equal(saslprep('\uff41\u0007\u00e9'), '\uff41\u0007\u00e9'); // control character in non-ASCII input
  // The verifier follows saslprep, so equivalent spellings of a password verify against each other.
  assert.deepEqual(
    makeScramVerifier('\uff50\uff41\uff53\uff53', Buffer.alloc(4), 2),
    makeScramVerifier('pass', Buffer.alloc(4), 2),
  );
});
