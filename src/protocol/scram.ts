// SCRAM-SHA-256 (RFC 5802 / RFC 7677) as PostgreSQL speaks it, for both ends of the proxy: clients prove their
// password to parapool against a stored verifier, and parapool proves a password to each PostgreSQL node. Only
// node:crypto is used, so the exchange can be checked byte for byte against PostgreSQL's own implementation.

import { createHash, createHmac, pbkdf2Sync, randomBytes, timingSafeEqual } from 'node:crypto';
import { PgError, SqlState } from './errors';
import type { ScramVerifier } from './scram-verifier';

export const SCRAM_SHA_256 = 'SCRAM-SHA-256';
/** PostgreSQL's default scram_iterations. */
export const DEFAULT_SCRAM_ITERATIONS = 4096;
const DEFAULT_SALT_LENGTH = 16;
/** PostgreSQL's SCRAM_RAW_NONCE_LEN: nonces are 18 random bytes, base64-encoded to 24 characters. */
const RAW_NONCE_LENGTH = 18;
const KEY_LENGTH = 32;
/** Iteration counts travel as a C int in PostgreSQL; anything larger cannot have come from a real node. */
const MAX_ITERATIONS = 2147483647;

// ---------------------------------------------------------------------------------------------------------------
// Primitives

function hmac(key: Buffer, data: string | Buffer): Buffer {
  return createHmac('sha256', key).update(data).digest();
}

function sha256(data: Buffer): Buffer {
  return createHash('sha256').update(data).digest();
}

function xor(a: Buffer, b: Buffer): Buffer {
  const out = Buffer.alloc(a.length);
  for (let i = 0; i < a.length; i++) out[i] = a[i] ^ b[i];
  return out;
}

/**
 * Base64 as SCRAM uses it (RFC 4648, padded). Node's own decoder silently skips garbage, which would let a
 * malformed proof or a corrupted password-file entry decode to something plausible, so the text is checked
 * first and must round-trip exactly.
 */
export function decodeBase64Strict(text: string): Buffer | undefined {
  if (text.length % 4 !== 0 || !/^[A-Za-z0-9+/]*={0,2}$/.test(text)) return undefined;
  const decoded = Buffer.from(text, 'base64');
  return decoded.toString('base64') === text ? decoded : undefined;
}

// ---------------------------------------------------------------------------------------------------------------
// SASLprep (RFC 4013), the way PostgreSQL's pg_saslprep applies it to passwords

type Range = readonly [number, number];

// RFC 3454 C.1.2: mapped to SPACE by SASLprep. Checked before B.1, as PostgreSQL does, so U+200B becomes a space.
const NON_ASCII_SPACE: readonly Range[] = [
  [0x00a0, 0x00a0], [0x1680, 0x1680], [0x2000, 0x200b], [0x202f, 0x202f], [0x205f, 0x205f], [0x3000, 0x3000],
];
// RFC 3454 B.1: commonly mapped to nothing.
const MAPPED_TO_NOTHING: readonly Range[] = [
  [0x00ad, 0x00ad], [0x034f, 0x034f], [0x1806, 0x1806], [0x180b, 0x180d], [0x200b, 0x200d], [0x2060, 0x2060],
  [0xfe00, 0xfe0f], [0xfeff, 0xfeff],
];
// RFC 3454 C.1.2, C.2.1, C.2.2, C.3, C.4, C.5, C.6, C.7, C.8 and C.9: prohibited in the output.
const PROHIBITED_OUTPUT: readonly Range[] = [
  ...NON_ASCII_SPACE,
  [0x0000, 0x001f], [0x007f, 0x009f], [0x0340, 0x0341], [0x06dd, 0x06dd], [0x070f, 0x070f], [0x180e, 0x180e],
  [0x200c, 0x200f], [0x2028, 0x202e], [0x2060, 0x2063], [0x206a, 0x206f], [0x2ff0, 0x2ffb], [0xd800, 0xdfff],
  [0xe000, 0xf8ff], [0xfdd0, 0xfdef], [0xfeff, 0xfeff], [0xfff9, 0xfffd], [0x1d173, 0x1d17a],
  [0xe0001, 0xe0001], [0xe0020, 0xe007f], [0xf0000, 0xffffd], [0x100000, 0x10fffd],
];

function inRanges(code: number, ranges: readonly Range[]): boolean {
  for (const [lo, hi] of ranges) if (code >= lo && code <= hi) return true;
  return false;
}

function isNonCharacter(code: number): boolean {
  return (code & 0xfffe) === 0xfffe; // U+nFFFE and U+nFFFF in every plane (C.4)
}

/**
 * Prepares a password the way PostgreSQL (server and libpq alike) does before hashing it, so verifiers made here
 * match ones made by CREATE ROLE ... PASSWORD. Pure ASCII passes unchanged. Otherwise non-ASCII spaces become
 * spaces, "mapped to nothing" characters are dropped and the result is NFKC-normalised; when that result is empty
 * or contains a prohibited character PostgreSQL falls back to the raw password, and so do we. Two checks of
 * PostgreSQL's are left out: code points unassigned in Unicode 3.2 and the bidirectional-text rule. A password
 * that fails only those is used raw by PostgreSQL but normalised here, which changes it only if it also holds a
 * character that mapping or NFKC rewrites.
 */
export function saslprep(password: string): string {
  if (/^[\x00-\x7f]*$/.test(password)) return password;
  let mapped = '';
  for (const ch of password) {
    const code = ch.codePointAt(0)!;
    if (inRanges(code, NON_ASCII_SPACE)) mapped += ' ';
    else if (!inRanges(code, MAPPED_TO_NOTHING)) mapped += ch;
  }
  if (mapped === '') return password;
  const normalized = mapped.normalize('NFKC');
  for (const ch of normalized) {
    const code = ch.codePointAt(0)!;
    if (inRanges(code, PROHIBITED_OUTPUT) || isNonCharacter(code)) return password;
  }
  return normalized;
}

// ---------------------------------------------------------------------------------------------------------------
// Verifiers

export interface ScramKeys {
  clientKey: Buffer;
  storedKey: Buffer;
  serverKey: Buffer;
}

/** SaltedPassword := Hi(Normalize(password), salt, i), Hi being PBKDF2 with HMAC-SHA-256. */
export function scramSaltedPassword(password: string, salt: Buffer, iterations: number): Buffer {
  return pbkdf2Sync(Buffer.from(saslprep(password), 'utf8'), salt, iterations, KEY_LENGTH, 'sha256');
}

export function scramKeysFromSaltedPassword(saltedPassword: Buffer): ScramKeys {
  const clientKey = hmac(saltedPassword, 'Client Key');
  return { clientKey, storedKey: sha256(clientKey), serverKey: hmac(saltedPassword, 'Server Key') };
}

function checkIterations(iterations: number): void {
  if (!Number.isInteger(iterations) || iterations < 1 || iterations > MAX_ITERATIONS) {
    throw new RangeError(`SCRAM iteration count must be an integer between 1 and ${MAX_ITERATIONS}, got ${iterations}`);
  }
}

export function makeScramVerifier(
  password: string,
  salt: Buffer = randomBytes(DEFAULT_SALT_LENGTH),
  iterations: number = DEFAULT_SCRAM_ITERATIONS,
): ScramVerifier {
  checkIterations(iterations);
  if (salt.length === 0) throw new RangeError('SCRAM salt must not be empty');
  const { storedKey, serverKey } = scramKeysFromSaltedPassword(scramSaltedPassword(password, salt, iterations));
  return { iterations, salt: Buffer.from(salt), storedKey, serverKey };
}

/** The text PostgreSQL keeps in pg_authid.rolpassword. */
export function formatScramVerifier(v: ScramVerifier): string {
  return (
    `${SCRAM_SHA_256}$${v.iterations}:${v.salt.toString('base64')}` +
    `$${v.storedKey.toString('base64')}:${v.serverKey.toString('base64')}`
  );
}

function badSecret(detail: string): PgError {
  return new PgError({ code: SqlState.configFileError, message: `invalid SCRAM secret: ${detail}` });
}

/** Parses 'SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>'; throws PgError F0000 naming what is wrong. */
export function parseScramVerifier(text: string): ScramVerifier {
  const m = /^SCRAM-SHA-256\$([^:$]*):([^$]*)\$([^:]*):(.*)$/s.exec(text);
  if (!m) throw badSecret('expected SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>');
  const [, iterText, saltText, storedText, serverText] = m;
  if (!/^[1-9][0-9]{0,9}$/.test(iterText) || Number(iterText) > MAX_ITERATIONS) {
    throw badSecret(`iteration count "${iterText}" is not a positive integer`);
  }
  const salt = decodeBase64Strict(saltText);
  if (!salt || salt.length === 0) throw badSecret('salt is not valid base64');
  const storedKey = decodeBase64Strict(storedText);
  if (!storedKey || storedKey.length !== KEY_LENGTH) throw badSecret('StoredKey is not 32 bytes of base64');
  const serverKey = decodeBase64Strict(serverText);
  if (!serverKey || serverKey.length !== KEY_LENGTH) throw badSecret('ServerKey is not 32 bytes of base64');
  return { iterations: Number(iterText), salt, storedKey, serverKey };
}

// ---------------------------------------------------------------------------------------------------------------
// Message parsing shared by both sides

// Messages are handled as latin1 so every byte maps to one character: the AuthMessage is rebuilt from exactly the
// bytes received, whatever encoding the (ignored) user name arrived in.
function messageText(message: Buffer, what: string): string {
  if (message.length === 0) throw malformed(`The ${what} is empty.`);
  if (message.includes(0)) throw malformed(`The ${what} contains a null byte.`);
  return message.toString('latin1');
}

function malformed(detail: string): PgError {
  return new PgError({
    severity: 'FATAL',
    code: SqlState.protocolViolation,
    message: 'malformed SCRAM message',
    detail,
  });
}

function unsupported(message: string): PgError {
  return new PgError({ severity: 'FATAL', code: SqlState.featureNotSupported, message });
}

/** Reads `<letter>=<value>` and checks the letter, so an attribute out of order is reported rather than skipped. */
function attribute(part: string | undefined, expected: string, what: string): string {
  if (part === undefined) throw malformed(`Attribute "${expected}" missing from ${what}.`);
  if (part.length < 2 || part[1] !== '=' || !/^[A-Za-z]$/.test(part[0])) {
    throw malformed(`Malformed attribute "${part}" in ${what}.`);
  }
  if (part[0] !== expected) throw malformed(`Expected attribute "${expected}" but found "${part[0]}" in ${what}.`);
  return part.slice(2);
}

function isExtensionAttribute(part: string): boolean {
  return /^[A-Za-z]=/.test(part);
}

/** RFC 5802 "printable": %x21-2B / %x2D-7E, i.e. visible ASCII without the comma. */
function isPrintableNonce(nonce: string): boolean {
  return /^[\x21-\x2b\x2d-\x7e]+$/.test(nonce);
}

function outOfOrder(detail: string): PgError {
  return new PgError({
    severity: 'FATAL',
    code: SqlState.protocolViolation,
    message: 'SCRAM exchange out of order',
    detail,
  });
}

// ---------------------------------------------------------------------------------------------------------------
// Server side: a client authenticating to parapool

export interface ScramServerOptions {
  /** Fixed nonce continuation, for reproducing published test vectors; random (18 bytes, base64) otherwise. */
  serverNonce?: string;
  /**
   * Complete the exchange but always fail it. Used for unknown users or users without a SCRAM-capable secret, so
   * a client cannot tell those apart from a wrong password (PostgreSQL's "mock authentication").
   */
  doomed?: boolean;
}

export type ScramServerFinalResult =
  /** clientKey is the client's proven ClientKey; it lets the proxy authenticate onwards as that client. */
  | { ok: true; serverFinal: Buffer; clientKey: Buffer }
  | { ok: false };

export class ScramServerSession {
  private state: 'initial' | 'sent-first' | 'done' = 'initial';
  private readonly serverNonce: string;
  private gs2Header: Buffer = Buffer.alloc(0);
  private clientFirstBare = '';
  private serverFirst = '';
  private nonce = '';

  constructor(
    private readonly verifier: ScramVerifier,
    private readonly options: ScramServerOptions = {},
  ) {
    this.serverNonce = options.serverNonce ?? randomBytes(RAW_NONCE_LENGTH).toString('base64');
    if (!isPrintableNonce(this.serverNonce)) throw new RangeError('SCRAM server nonce must be printable ASCII');
  }

  handleClientFirst(message: Buffer): Buffer {
    if (this.state !== 'initial') throw outOfOrder('Unexpected client-first-message.');
    const what = 'client-first-message';
    const text = messageText(message, what);

    switch (text[0]) {
      case 'n':
      case 'y': // the client could bind but believes we cannot; true, since SCRAM-SHA-256-PLUS is never offered
        break;
      case 'p':
        throw malformed(
          'The client selected SCRAM-SHA-256 without channel binding, but the SCRAM message includes channel binding data.',
        );
      default:
        throw malformed(`Unexpected channel-binding flag "${text[0]}".`);
    }
    if (text[1] !== ',') throw malformed(`Comma expected, but found character "${text[1] ?? ''}".`);
    if (text[2] === 'a') throw unsupported('client uses authorization identity, but it is not supported');
    if (text[2] !== ',') throw malformed(`Unexpected attribute "${text[2] ?? ''}" in ${what}.`);
    if (text[3] === 'm') throw unsupported('client requires an unsupported SCRAM extension');

    const bare = text.slice(3);
    const parts = bare.split(',');
    attribute(parts[0], 'n', what); // the user name is ignored: the startup packet's user is the one authenticated
    const clientNonce = attribute(parts[1], 'r', what);
    if (!isPrintableNonce(clientNonce)) throw malformed('Non-printable characters or empty nonce in client-first-message.');
    for (const ext of parts.slice(2)) {
      if (!isExtensionAttribute(ext)) throw malformed(`Malformed attribute "${ext}" in ${what}.`);
    }

    this.gs2Header = Buffer.from(text.slice(0, 3), 'latin1');
    this.clientFirstBare = bare;
    this.nonce = clientNonce + this.serverNonce;
    this.serverFirst =
      `r=${this.nonce},s=${this.verifier.salt.toString('base64')},i=${this.verifier.iterations}`;
    this.state = 'sent-first';
    return Buffer.from(this.serverFirst, 'latin1');
  }

  handleClientFinal(message: Buffer): ScramServerFinalResult {
    if (this.state !== 'sent-first') throw outOfOrder('Unexpected client-final-message.');
    this.state = 'done';
    const what = 'client-final-message';
    const text = messageText(message, what);
    const parts = text.split(',');

    const binding = decodeBase64Strict(attribute(parts[0], 'c', what));
    if (!binding || !binding.equals(this.gs2Header)) {
      throw malformed('Unexpected SCRAM channel-binding attribute in client-final-message.');
    }
    const nonce = attribute(parts[1], 'r', what);
    if (nonce !== this.nonce) {
      throw new PgError({
        severity: 'FATAL',
        code: SqlState.protocolViolation,
        message: 'invalid SCRAM response',
        detail: 'Nonce does not match.',
      });
    }
    if (parts.length < 3) throw malformed(`Attribute "p" missing from ${what}.`);
    for (const ext of parts.slice(2, -1)) {
      if (!isExtensionAttribute(ext)) throw malformed(`Malformed attribute "${ext}" in ${what}.`);
      if (ext[0] === 'p') throw malformed(`Garbage found at the end of ${what}.`);
    }
    const proof = decodeBase64Strict(attribute(parts[parts.length - 1], 'p', what));
    if (!proof || proof.length !== KEY_LENGTH) throw malformed(`Malformed proof in ${what}.`);

    const withoutProof = text.slice(0, text.length - parts[parts.length - 1].length - 1);
    const authMessage = Buffer.from(`${this.clientFirstBare},${this.serverFirst},${withoutProof}`, 'latin1');
    const clientKey = xor(proof, hmac(this.verifier.storedKey, authMessage));
    const verified = timingSafeEqual(sha256(clientKey), this.verifier.storedKey);
    if (!verified || this.options.doomed) return { ok: false };
    const serverSignature = hmac(this.verifier.serverKey, authMessage);
    return { ok: true, serverFinal: Buffer.from(`v=${serverSignature.toString('base64')}`, 'latin1'), clientKey };
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Client side: parapool authenticating to a PostgreSQL node

/**
 * What a client proved to the proxy, usable in place of its password towards a node whose stored secret is the
 * very same verifier (same salt and iteration count), as when the password file was copied from pg_authid.
 */
export interface ScramClientKeys {
  clientKey: Buffer;
  verifier: ScramVerifier;
}

export interface ScramClientOptions {
  /** Fixed client nonce, for reproducing published test vectors; random (18 bytes, base64) otherwise. */
  nonce?: string;
  /** Sent as n=; PostgreSQL ignores it, so libpq leaves it empty and so do we unless a test vector needs it. */
  user?: string;
}

export class ScramClientSession {
  private state: 'initial' | 'sent-first' | 'sent-final' | 'done' = 'initial';
  private readonly clientNonce: string;
  private readonly clientFirstBare: Buffer;
  private expectedServerSignature: Buffer = Buffer.alloc(0);

  constructor(
    private readonly secret: string | ScramClientKeys,
    options: ScramClientOptions = {},
  ) {
    this.clientNonce = options.nonce ?? randomBytes(RAW_NONCE_LENGTH).toString('base64');
    if (!isPrintableNonce(this.clientNonce)) throw new RangeError('SCRAM client nonce must be printable ASCII');
    const user = (options.user ?? '').replace(/=/g, '=3D').replace(/,/g, '=2C');
    this.clientFirstBare = Buffer.from(`n=${user},r=${this.clientNonce}`, 'utf8');
  }

  static chooseMechanism(mechanisms: string[]): 'SCRAM-SHA-256' {
    if (mechanisms.includes(SCRAM_SHA_256)) return SCRAM_SHA_256;
    throw new PgError({
      severity: 'FATAL',
      code: SqlState.featureNotSupported,
      message: "none of the server's SASL authentication mechanisms are supported",
      detail: `The server offered: ${mechanisms.length ? mechanisms.join(', ') : '(nothing)'}.`,
    });
  }

  clientFirst(): Buffer {
    if (this.state !== 'initial') throw outOfOrder('client-first-message already sent.');
    this.state = 'sent-first';
    return Buffer.concat([Buffer.from('n,,', 'latin1'), this.clientFirstBare]);
  }

  handleServerFirst(message: Buffer): Buffer {
    if (this.state !== 'sent-first') throw outOfOrder('Unexpected server-first-message.');
    this.state = 'sent-final';
    const what = 'server-first-message';
    const text = messageText(message, what);
    if (text.startsWith('m=')) throw unsupported('server requires an unsupported SCRAM extension');
    const parts = text.split(',');

    const nonce = attribute(parts[0], 'r', what);
    if (!isPrintableNonce(nonce)) throw malformed(`Non-printable characters in the nonce of the ${what}.`);
    if (!nonce.startsWith(this.clientNonce) || nonce.length === this.clientNonce.length) {
      throw new PgError({
        severity: 'FATAL',
        code: SqlState.protocolViolation,
        message: 'invalid SCRAM response',
        detail: 'The server nonce does not extend the client nonce.',
      });
    }
    const salt = decodeBase64Strict(attribute(parts[1], 's', what));
    if (!salt || salt.length === 0) throw malformed(`Malformed salt in ${what}.`);
    const iterText = attribute(parts[2], 'i', what);
    if (!/^[1-9][0-9]{0,9}$/.test(iterText) || Number(iterText) > MAX_ITERATIONS) {
      throw malformed(`Malformed iteration count in ${what}.`);
    }
    const iterations = Number(iterText);
    if (parts.length > 3) throw malformed(`Garbage found at the end of ${what}.`);

    let clientKey: Buffer;
    let serverKey: Buffer;
    if (typeof this.secret === 'string') {
      ({ clientKey, serverKey } = scramKeysFromSaltedPassword(scramSaltedPassword(this.secret, salt, iterations)));
    } else {
      const { verifier } = this.secret;
      if (!salt.equals(verifier.salt) || iterations !== verifier.iterations) {
        throw new PgError({
          severity: 'FATAL',
          code: SqlState.invalidPassword,
          message: 'stored SCRAM secret does not match the one on the server',
          detail: "The server's salt or iteration count differs, so the client's proof cannot be reused.",
          hint: "Copy the role's secret from pg_authid on the server, or store the password in plain text.",
        });
      }
      clientKey = this.secret.clientKey;
      serverKey = verifier.serverKey;
    }

    const withoutProof = Buffer.from(`c=biws,r=${nonce}`, 'latin1'); // biws = base64("n,,")
    const authMessage = Buffer.concat([
      this.clientFirstBare, Buffer.from(','), message, Buffer.from(','), withoutProof,
    ]);
    const proof = xor(clientKey, hmac(sha256(clientKey), authMessage));
    this.expectedServerSignature = hmac(serverKey, authMessage);
    return Buffer.concat([withoutProof, Buffer.from(`,p=${proof.toString('base64')}`, 'latin1')]);
  }

  verifyServerFinal(message: Buffer): void {
    if (this.state !== 'sent-final') throw outOfOrder('Unexpected server-final-message.');
    this.state = 'done';
    const what = 'server-final-message';
    const text = messageText(message, what);
    if (text.startsWith('e=')) {
      throw new PgError({
        severity: 'FATAL',
        code: SqlState.invalidPassword,
        message: 'SCRAM authentication rejected by the server',
        detail: `Server error: ${text.slice(2)}.`,
      });
    }
    const parts = text.split(',');
    const signature = decodeBase64Strict(attribute(parts[0], 'v', what));
    if (!signature || signature.length !== KEY_LENGTH) throw malformed(`Malformed server signature in ${what}.`);
    if (parts.length > 1) throw malformed(`Garbage found at the end of ${what}.`);
    if (!timingSafeEqual(signature, this.expectedServerSignature)) {
      throw new PgError({
        severity: 'FATAL',
        code: SqlState.invalidPassword,
        message: 'incorrect server signature',
        detail: 'The server could not prove that it knows the password; it may be an impostor.',
      });
    }
  }
}
