// The SCRAM-SHA-256 verifier PostgreSQL keeps in pg_authid.rolpassword, as data: the password file stores one per
// user and scram.ts checks a client's proof against it. Its own file so that neither of the two imports the other.

export interface ScramVerifier {
  iterations: number;
  salt: Buffer;
  storedKey: Buffer;
  serverKey: Buffer;
}
