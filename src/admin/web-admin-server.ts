// The web admin page on web_admin_port: HTTP, log-in and routing (the HTML is web-admin-page.ts). Users log in
// with pcp.conf's users and passwords, as pgpoolAdmin logs in with PCP's. A log-in gets a random session token in
// an HttpOnly, SameSite=Strict cookie, and each session a CSRF token that every POST must carry in its form, so a
// page elsewhere can neither read the overview nor press a button. N.B. a request, however malformed, ends that
// request only: parse errors get a 400 from `clientError`, and a failing handler a 500.

import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import { log } from '../log';
import { AddressListeners } from '../server/listeners';
import { PgError, SqlState } from '../protocol/errors';
import { changeNode, type NodeCommandName, type NodeOperations } from './node-commands';
import { readPcpUsers } from './pcp-users';
import { healthCheckStats, parapoolVersion, poolNodes, poolPools, poolProcesses, queryCache, runningQueries, type AdminContext, type AdminTable } from './show-commands';
import { loginPage, messagePage, overviewPage, recoveryPage, type FlashMessage } from './web-admin-page';

export interface WebAdminServerOptions {
  readonly addresses: readonly string[];
  readonly port: number;
  /** pcp.conf: `user:md5-of-password` lines, read again at each log-in. */
  readonly usersFile: string;
  readonly operations: NodeOperations;
  readonly admin: AdminContext;
  /** Whether recovery_1st_stage_command is set: without it the Recover button is disabled. */
  readonly recoveryConfigured: boolean;
  /** SHOW parapool_rules' table for a database; the page has no session of its own to count rows with. */
  partitionRules(database: string): Promise<AdminTable>;
}

interface WebSession {
  readonly user: string;
  readonly csrfToken: string;
  lastSeen: number;
  flash: FlashMessage | null;
}

const cookieName = 'parapool_admin';
/** A session unused for this long must log in again. */
const sessionIdleMs = 60 * 60 * 1000;
/** Log-ins kept at most; the least recently used goes first. */
const maxSessions = 1000;
/** A form is a few short fields: a larger body is not one of the page's. */
const maxBodyBytes = 16 * 1024;

const securityHeaders = {
  'Cache-Control': 'no-store',
  'X-Content-Type-Options': 'nosniff',
  'X-Frame-Options': 'DENY',
  'Referrer-Policy': 'no-referrer',
  // The page has no script and no resource of its own: only its inline style and forms posting to itself.
  'Content-Security-Policy': "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
};

const actions: Record<string, NodeCommandName> = { detach: 'detach_node', attach: 'attach_node', recover: 'recover_node', promote: 'promote_node' };
const actionPattern = /^\/nodes\/(\d{1,9})\/(detach|attach|recover)$/;

const md5Hex = (text: string) => createHash('md5').update(text).digest('hex');

function sameSecret(a: string, b: string): boolean {
  const left = Buffer.from(a);
  const right = Buffer.from(b);
  return left.length === right.length && timingSafeEqual(left, right);
}

class HttpError extends Error {
  constructor(readonly status: number, readonly title: string, message: string) {
    super(message);
  }
}

/**
 * Throws FATAL F0000 when the page cannot log anyone in: no pcp_conf_file, or one that cannot be read. Called before
 * the proxy listens, so a misconfigured page stops start-up instead of serving a log-in nobody passes.
 */
export function checkWebAdminUsers(usersFile: string | null): void {
  if (usersFile === null) {
    throw new PgError({ severity: 'FATAL', code: SqlState.configFileError, message: 'web_admin_port is set but pcp_conf_file is not: the web admin page logs in with the users of pcp.conf' });
  }
  try {
    readPcpUsers(usersFile);
  } catch (error) {
    throw new PgError({ severity: 'FATAL', code: SqlState.configFileError, message: `the web admin page cannot read its users from pcp_conf_file "${usersFile}": ${(error as Error).message}` });
  }
}

export class WebAdminServer {
  private readonly listeners = new AddressListeners();
  private readonly sessions = new Map<string, WebSession>();

  constructor(private readonly options: WebAdminServerOptions) {}

  async start(): Promise<void> {
    await this.listeners.listen(this.options.addresses, this.options.port, () => {
      const server = createServer((request, response) => void this.serve(request, response));
      server.on('clientError', (error: Error & { code?: string }, socket) => {
        log('warning', 'web_admin_bad_request', { error: error.message });
        if (!socket.writable || error.code === 'ECONNRESET') return void socket.destroy();
        const status = error.code === 'HPE_HEADER_OVERFLOW' ? '431 Request Header Fields Too Large' : '400 Bad Request';
        socket.end(`HTTP/1.1 ${status}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n`);
      });
      return server;
    });
    log('info', 'web_admin_listening', { addresses: this.options.addresses.join(','), port: this.port });
  }

  get port(): number {
    return this.listeners.port;
  }

  async stop(): Promise<void> {
    await this.listeners.close();
    this.sessions.clear();
  }

  private async serve(request: IncomingMessage, response: ServerResponse): Promise<void> {
    response.on('error', () => undefined);
    try {
      await this.route(request, response);
    } catch (error) {
      const known = error instanceof HttpError ? error : null;
      if (!known) log('error', 'web_admin_failed', { url: request.url ?? '', error: (error as Error).message });
      try {
        if (response.headersSent) return void response.end();
        if (known?.status === 413) response.setHeader('Connection', 'close');
        this.send(response, known?.status ?? 500, messagePage(known?.title ?? 'Internal error', known?.message ?? 'the request failed; the log says why'));
      } catch {
        response.destroy();
      }
    }
  }

  private async route(request: IncomingMessage, response: ServerResponse): Promise<void> {
    let url: URL;
    try {
      url = new URL(request.url ?? '/', 'http://web-admin');
    } catch {
      throw new HttpError(400, 'Bad request', 'the request names no valid path');
    }
    const method = request.method ?? 'GET';
    const path = url.pathname;
    const action = actionPattern.exec(path);
    const allowed = path === '/' ? ['GET', 'HEAD'] : path === '/login' ? ['GET', 'HEAD', 'POST'] : path === '/logout' || action ? ['POST'] : null;
    if (!allowed) throw new HttpError(404, 'Not found', `there is no page ${path}`);
    if (!allowed.includes(method)) {
      response.setHeader('Allow', allowed.join(', '));
      throw new HttpError(405, 'Method not allowed', `${path} answers ${allowed.join(', ')}`);
    }
    if (path === '/login') {
      if (method === 'POST') return this.logIn(request, response);
      if (this.session(request)) return this.redirect(response, '/');
      return this.send(response, 200, loginPage());
    }
    const session = this.session(request);
    if (method === 'GET' || method === 'HEAD') {
      if (!session) return this.redirect(response, '/login');
      return this.overview(url, session, response);
    }
    const form = await readForm(request);
    if (!session) throw new HttpError(403, 'Forbidden', 'log in first');
    if (!sameSecret(form.get('csrf') ?? '', session.csrfToken)) throw new HttpError(403, 'Forbidden', 'the form is out of date or not from this page: reload the page and try again');
    if (path === '/logout') {
      this.sessions.delete(this.token(request)!);
      response.setHeader('Set-Cookie', `${cookieName}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0`);
      return this.redirect(response, '/login');
    }
    return this.nodeAction(actions[action![2]], Number(action![1]), session, response);
  }

  private async logIn(request: IncomingMessage, response: ServerResponse): Promise<void> {
    const form = await readForm(request);
    const user = form.get('user') ?? '';
    const password = form.get('password') ?? '';
    let stored: string | undefined;
    try {
      stored = readPcpUsers(this.options.usersFile).get(user);
    } catch (error) {
      log('error', 'web_admin_users_file_unreadable', { path: this.options.usersFile, error: (error as Error).message });
    }
    if (stored === undefined || !sameSecret(md5Hex(password), stored.toLowerCase())) {
      log('warning', 'web_admin_login_failed', { user, address: request.socket.remoteAddress ?? '' });
      return this.send(response, 401, loginPage({ error: 'user name or password is wrong', user }));
    }
    const token = randomBytes(32).toString('base64url');
    this.pruneSessions();
    this.sessions.set(token, { user, csrfToken: randomBytes(32).toString('base64url'), lastSeen: Date.now(), flash: null });
    log('info', 'web_admin_login', { user, address: request.socket.remoteAddress ?? '' });
    response.setHeader('Set-Cookie', `${cookieName}=${token}; HttpOnly; SameSite=Strict; Path=/`);
    this.redirect(response, '/');
  }

  private pruneSessions(): void {
    const now = Date.now();
    for (const [token, session] of this.sessions) if (now - session.lastSeen > sessionIdleMs) this.sessions.delete(token);
    // Map order is insertion order, and a session is re-inserted when used: the first is the least recent.
    while (this.sessions.size >= maxSessions) this.sessions.delete(this.sessions.keys().next().value!);
  }

  private token(request: IncomingMessage): string | null {
    for (const part of (request.headers.cookie ?? '').split(';')) {
      const [name, ...value] = part.trim().split('=');
      if (name === cookieName) return value.join('=');
    }
    return null;
  }

  /** The request's log-in, if it has a live one; refreshes its idle time. */
  private session(request: IncomingMessage): WebSession | null {
    const token = this.token(request);
    const session = token === null ? undefined : this.sessions.get(token);
    if (!session) return null;
    if (Date.now() - session.lastSeen > sessionIdleMs) {
      this.sessions.delete(token!);
      return null;
    }
    session.lastSeen = Date.now();
    this.sessions.delete(token!);
    this.sessions.set(token!, session);
    return session;
  }

  private async overview(url: URL, session: WebSession, response: ServerResponse): Promise<void> {
    const { admin } = this.options;
    const database = url.searchParams.get('database') || 'postgres';
    const refresh = url.searchParams.get('refresh') ?? '';
    const refreshSeconds = /^\d{1,4}$/.test(refresh) && Number(refresh) >= 1 ? Number(refresh) : null;
    let rules: AdminTable | { error: string };
    try {
      rules = await this.options.partitionRules(database);
    } catch (error) {
      rules = { error: (error as Error).message };
    }
    const flash = session.flash;
    session.flash = null;
    const html = overviewPage({
      version: parapoolVersion,
      user: session.user,
      csrfToken: session.csrfToken,
      flash,
      refreshSeconds,
      nodes: poolNodes(admin),
      recoveryConfigured: this.options.recoveryConfigured,
      database,
      rules,
      queries: runningQueries(admin),
      processes: poolProcesses(admin),
      pools: poolPools(admin),
      cache: { enabled: Boolean(admin.queryCache), table: queryCache(admin) },
      healthChecks: healthCheckStats(admin),
    });
    this.send(response, 200, html);
  }

  /**
   * Detach and attach answer with a redirect to the overview, which shows the result once. A recovery takes
   * seconds to minutes: its page is sent as it goes, one line per progress message, then the result.
   */
  private async nodeAction(name: NodeCommandName, nodeId: number, session: WebSession, response: ServerResponse): Promise<void> {
    log('info', 'web_admin_command', { user: session.user, command: name, node: nodeId });
    const lines: string[] = [];
    const streamed = name === 'recover_node';
    if (streamed) {
      response.writeHead(200, { ...securityHeaders, 'Content-Type': 'text/html; charset=utf-8' });
      response.write(recoveryPage.head(nodeId));
    }
    const progress = (message: string) => {
      lines.push(message);
      if (streamed && !response.destroyed) response.write(recoveryPage.line(message));
    };
    let flash: FlashMessage;
    try {
      const changed = await changeNode({ name, nodeId, via: `web admin page, user ${session.user}` }, this.options.operations, progress);
      flash = { kind: 'ok', text: resultText(name, nodeId, changed), lines };
    } catch (error) {
      const message = error instanceof PgError ? [error.message, error.detail, error.hint].filter(Boolean).join('; ') : (error as Error).message;
      log('warning', 'web_admin_command_failed', { user: session.user, command: name, node: nodeId, error: message });
      flash = { kind: 'error', text: `${name.replace('_node', '')} of node ${nodeId} failed: ${message}`, lines };
    }
    session.flash = flash;
    if (streamed) {
      if (!response.destroyed) response.end(recoveryPage.end(flash));
      return;
    }
    this.redirect(response, '/');
  }

  private send(response: ServerResponse, status: number, html: string): void {
    const body = Buffer.from(html);
    response.writeHead(status, { ...securityHeaders, 'Content-Type': 'text/html; charset=utf-8', 'Content-Length': body.length });
    response.end(response.req.method === 'HEAD' ? undefined : body);
  }

  /** 303: the browser follows with a GET, so reloading the result page does not press the button again. */
  private redirect(response: ServerResponse, location: string): void {
    response.writeHead(303, { ...securityHeaders, Location: location, 'Content-Length': 0 });
    response.end();
  }
}

function resultText(name: NodeCommandName, nodeId: number, changed: boolean): string {
  if (name === 'detach_node') return changed ? `node ${nodeId} detached` : `node ${nodeId} was already out of service`;
  if (name === 'attach_node') return changed ? `node ${nodeId} attached` : `node ${nodeId} was already in service`;
  if (name === 'promote_node') return changed ? `node ${nodeId} is the primary` : `node ${nodeId} was already the primary`;
  return `node ${nodeId} recovered and attached`;
}

/** The urlencoded body of a form post; 413 past maxBodyBytes. */
async function readForm(request: IncomingMessage): Promise<URLSearchParams> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of request as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size > maxBodyBytes) throw new HttpError(413, 'Request too large', `a form of this page is under ${maxBodyBytes} bytes`);
    chunks.push(chunk);
  }
  return new URLSearchParams(Buffer.concat(chunks).toString('utf8'));
}
