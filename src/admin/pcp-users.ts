// The pcp.conf file: the users of pgpool-II's admin protocol, one `user:md5(password)` line each. PCP and the web
// admin page both log in against it, so an operator keeps one list of administrators, as with pgpoolAdmin.

import { readFileSync } from 'node:fs';

/** The md5 of each user's password in pcp.conf; a line that is not `user:md5` is skipped, as pgpool skips it. */
export function readPcpUsers(path: string): Map<string, string> {
  const users = new Map<string, string>();
  for (const line of readFileSync(path, 'utf8').split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const colon = line.indexOf(':');
    if (colon > 0) users.set(line.slice(0, colon), line.slice(colon + 1).trim());
  }
  return users;
}
