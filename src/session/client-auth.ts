// The proxy's side of client authentication: trust, md5 or SCRAM-SHA-256 against the password file, the way
// PostgreSQL runs them (an md5 method with a SCRAM-stored secret upgrades to SCRAM; an unknown user goes through
// the whole exchange and fails like a wrong password, so user names cannot be probed).

import { randomBytes } from 'node:crypto';
import type { ClientAuthentication } from '../config/config';
import { PgError, SqlState, protocolViolation } from '../protocol/errors';
import { verifyMd5Response } from '../protocol/md5-auth';
import { MessageCursor } from '../protocol/message-cursor';
import { makeScramVerifier } from '../protocol/scram';
import { ScramServerSession } from '../protocol/scram';
import type { StoredSecret } from '../protocol/password-file';
import { serverMessages } from '../protocol/server-messages';

export interface AuthExchange {
  /** Sends bytes to the client. */
  send(bytes: Buffer): void;
  /** The body of the client's next password-type ('p') message. */
  nextPasswordMessage(): Promise<Buffer>;
}

function authFailed(user: string, method: string): PgError {
  return new PgError({ severity: 'FATAL', code: SqlState.invalidPassword, message: `password authentication failed for user "${user}"`, detail: `method ${method}` });
}

/** Resolves when the client proved who it is; rejects with a FATAL PgError otherwise. Sends AuthenticationOk. */
export async function authenticateClient(
  method: ClientAuthentication,
  user: string,
  passwords: ReadonlyMap<string, StoredSecret> | null,
  exchange: AuthExchange,
): Promise<void> {
  if (method === 'trust') {
    exchange.send(serverMessages.authenticationOk);
    return;
  }
  const secret = passwords?.get(user) ?? null;
  if (method === 'md5' && (secret === null || secret.kind !== 'scram')) {
    const salt = randomBytes(4);
    exchange.send(serverMessages.authenticationMd5(salt));
    const body = await exchange.nextPasswordMessage();
    const cursor = new MessageCursor(body, 'PasswordMessage');
    const response = cursor.cstring();
    cursor.end();
    if (!secret || !verifyMd5Response(secret, user, salt, response)) throw authFailed(user, 'md5');
    exchange.send(serverMessages.authenticationOk);
    return;
  }
  await scramExchange(user, secret, exchange);
  exchange.send(serverMessages.authenticationOk);
}

async function scramExchange(user: string, secret: StoredSecret | null, exchange: AuthExchange): Promise<void> {
  const verifier =
    secret?.kind === 'scram' ? secret.verifier : secret?.kind === 'plain' ? makeScramVerifier(secret.password) : makeScramVerifier(randomBytes(16).toString('hex'));
  // An md5-hashed or missing secret cannot pass SCRAM; the exchange still runs to the end so the failure looks like any other.
  const session = new ScramServerSession(verifier, { doomed: secret === null || secret.kind === 'md5' });
  exchange.send(serverMessages.authenticationSasl(['SCRAM-SHA-256']));
  const initial = new MessageCursor(await exchange.nextPasswordMessage(), 'SASLInitialResponse');
  const mechanism = initial.cstring();
  if (mechanism !== 'SCRAM-SHA-256') {
    throw new PgError({ severity: 'FATAL', code: SqlState.protocolViolation, message: 'client selected an invalid SASL authentication mechanism' });
  }
  const length = initial.int32();
  if (length < 0) throw protocolViolation('malformed SCRAM message', 'the client-first-message is missing');
  const clientFirst = initial.bytes(length);
  initial.end();
  exchange.send(serverMessages.authenticationSaslContinue(session.handleClientFirst(clientFirst)));
  const final = await exchange.nextPasswordMessage();
  const result = session.handleClientFinal(final);
  if (!result.ok) throw authFailed(user, 'scram-sha-256');
  exchange.send(serverMessages.authenticationSaslFinal(result.serverFinal));
}
