// One connection from the proxy to one PostgreSQL node: start-up and authentication (trust, cleartext, md5,
// SCRAM-SHA-256), then a frame pump. Frames go to whichever handler the current exchange installed; the
// connection tracks only what must always be tracked (transaction status, parameters, key data, when it was last
// used). N.B. a connection counts as closed from the moment the node says it ends it (a FATAL while idle, its end of
// the socket), not only once the socket has closed, so no pool hands out a connection the node already ended.

import { connect as netConnect, type Socket } from 'node:net';
import { serialize } from 'pg-protocol';
import type { NodeAddress } from '../cluster/backend-node';
import { describeNode } from '../cluster/backend-node';
import { countNodeError } from '../cluster/statement-activity';
import { log } from '../log';
import { quoteLiteral } from '../catalog/partition-rule';
import { decodeBackendNotice, pgErrorFromBackend } from '../protocol/backend-error';
import { decodeDataRowText } from '../protocol/data-row';
import { PgError, SqlState } from '../protocol/errors';
import { CoalescingWriter } from './coalescing-writer';
import { FrameReader, type Frame } from '../protocol/frame-reader';
import { md5Response } from '../protocol/md5-auth';
import { BackendCode, type TransactionStatus } from '../protocol/message-codes';
import { MessageCursor } from '../protocol/message-cursor';
import type { StoredSecret } from '../protocol/password-file';
import { ScramClientSession } from '../protocol/scram';

export type FrameHandler = (frame: Frame, connection: BackendConnection) => void;

export interface BackendStartup {
  readonly node: NodeAddress;
  /** Startup parameters: user, database and whatever else the client sent (application_name, options, ...). */
  readonly parameters: ReadonlyMap<string, string>;
  /** The user's secret from the password file, when there is one. */
  readonly secret: StoredSecret | null;
  readonly connectTimeoutMs: number;
  /** Ends the attempt at any stage (a health check's timeout: a stopped node accepts TCP and never answers). */
  readonly signal?: AbortSignal;
}

/**
 * A connection to a node could not be started. `frame` is the node's own ErrorResponse, to relay as is;
 * `unreachable` says the node itself is out of reach (so it should be detached), not that it refused this user.
 */
export class BackendStartupError extends PgError {
  constructor(error: PgError, readonly frame: Buffer | null, readonly unreachable = false) {
    super({ severity: error.severity, code: error.code, message: error.message, detail: error.detail, hint: error.hint });
  }
}

let nextConnectionId = 1;

const syncFrame = serialize.sync();
const terminateFrame = serialize.end();

export class BackendConnection {
  readonly id = nextConnectionId++;
  processId = 0;
  secretKey = 0;
  txStatus: TransactionStatus = 'I';
  readonly parameters = new Map<string, string>();
  closed = false;
  /** Set when the proxy itself closed the connection (not a node failure). */
  closedByProxy = false;
  /** Set while a statement runs on this connection, so a cancel knows where to go. */
  busy = false;
  /**
   * Prepared statements that exist on this node's session, by name, with the client's statement they were made
   * from (compared by identity, so a re-Parse under the same name is noticed).
   */
  readonly preparedStatements = new Map<string, object>();
  /** When the last exchange on this connection ended (its ReadyForQuery), in Date.now() milliseconds. */
  lastUsedAt = Date.now();
  /** Why the node ended the connection, when it said so (its FATAL message). */
  closeReason: string | null = null;
  /** For SHOW pool_pools: when the node accepted it, how many client sessions took it, when one last took and gave it back. */
  readonly connectedAt = new Date();
  uses = 0;
  acquiredAt: Date | null = null;
  releasedAt: Date | null = null;
  private handler: FrameHandler | null = null;
  /** The proxy's own LISTEN (the query cache's invalidations): takes NotificationResponses, within an exchange or not. */
  notificationListener: ((channel: string, payload: string) => void) | null = null;
  private closeListeners: ((error: Error | null) => void)[] = [];
  private readonly reader: FrameReader;

  private constructor(
    readonly node: NodeAddress,
    private readonly socket: Socket,
    readonly poolKey: string,
    readonly database: string,
    readonly user: string,
    /** How it was started (without the attempt's abort signal), so that a sibling connection can be opened alike. */
    readonly startup: BackendStartup,
  ) {
    this.reader = new FrameReader(1024 * 1024 * 1024 + 5, describeNode(node));
    this.coalescing = new CoalescingWriter(socket);
    socket.setNoDelay(true);
    socket.on('data', (chunk: Buffer) => this.onData(chunk));
    socket.on('error', (error) => this.onClosed(error));
    // The node's end of the socket: 'close' follows only after a turn of the event loop.
    socket.on('end', () => this.onClosed(null));
    socket.on('close', () => this.onClosed(null));
  }

  /** Opens a connection and completes start-up; throws BackendStartupError naming the node on failure. */
  static async connect(startup: BackendStartup, poolKey: string): Promise<BackendConnection> {
    const { node } = startup;
    const socket = await openSocket(node, startup.connectTimeoutMs, startup.signal);
    const database = startup.parameters.get('database') ?? startup.parameters.get('user') ?? '';
    const connection = new BackendConnection(node, socket, poolKey, database, startup.parameters.get('user') ?? '', { ...startup, signal: undefined });
    const abort = () => connection.destroy();
    startup.signal?.addEventListener('abort', abort);
    try {
      if (startup.signal?.aborted) throw abortedError(node);
      await connection.startUp(startup);
    } catch (error) {
      connection.destroy();
      throw error;
    } finally {
      startup.signal?.removeEventListener('abort', abort);
    }
    return connection;
  }

  private startUp(startup: BackendStartup): Promise<void> {
    const user = startup.parameters.get('user') ?? '';
    return new Promise<void>((resolvePromise, reject) => {
      let scram: ScramClientSession | null = null;
      const fail = (error: PgError, frame: Buffer | null = null) => {
        this.handler = null;
        reject(new BackendStartupError(error, frame));
      };
      const needSecret = (): StoredSecret | null => {
        if (startup.secret) return startup.secret;
        fail(new PgError({
          severity: 'FATAL',
          code: SqlState.invalidPassword,
          message: `${describeNode(startup.node)} asks for a password for user "${user}" and the password file has none`,
          hint: 'add the user to the file named by pool_passwd',
        }));
        return null;
      };
      this.onClose((error) => {
        this.handler = null;
        reject(new BackendStartupError(new PgError({
          severity: 'FATAL',
          code: SqlState.connectionFailure,
          message: `${describeNode(startup.node)} closed the connection during start-up${error ? `: ${error.message}` : ''}`,
        }), null, true));
      });
      this.handler = (frame) => {
        try {
          switch (frame.code) {
            case BackendCode.authentication: {
              const cursor = new MessageCursor(frame.payload, 'Authentication');
              const kind = cursor.int32();
              if (kind === 0) return;
              if (kind === 3) {
                const secret = needSecret();
                if (!secret) return;
                if (secret.kind !== 'plain') {
                  return fail(new PgError({ severity: 'FATAL', code: SqlState.invalidPassword, message: `${describeNode(startup.node)} asks for a cleartext password and the password file holds only a hash for user "${user}"` }));
                }
                this.socket.write(serialize.password(secret.password));
              } else if (kind === 5) {
                const secret = needSecret();
                if (!secret) return;
                if (secret.kind === 'scram') {
                  return fail(new PgError({ severity: 'FATAL', code: SqlState.invalidPassword, message: `${describeNode(startup.node)} asks for md5 and the password file holds a SCRAM verifier for user "${user}"`, hint: 'store the password in plain text or as an md5 hash' }));
                }
                this.socket.write(serialize.password(md5Response(secret, user, cursor.bytes(4))));
              } else if (kind === 10) {
                const secret = needSecret();
                if (!secret) return;
                if (secret.kind !== 'plain') {
                  return fail(new PgError({ severity: 'FATAL', code: SqlState.invalidPassword, message: `${describeNode(startup.node)} asks for SCRAM-SHA-256 and the password file has no plain password for user "${user}"`, hint: 'SCRAM towards a node needs the password itself (TEXT prefix in pool_passwd)' }));
                }
                const mechanisms: string[] = [];
                for (let m = cursor.cstring(); m !== ''; m = cursor.cstring()) mechanisms.push(m);
                const mechanism = ScramClientSession.chooseMechanism(mechanisms);
                scram = new ScramClientSession(secret.password);
                this.socket.write(serialize.sendSASLInitialResponseMessage(mechanism, scram.clientFirst().toString('utf8')));
              } else if (kind === 11 && scram) {
                this.socket.write(serialize.sendSCRAMClientFinalMessage(scram.handleServerFirst(cursor.rest()).toString('utf8')));
              } else if (kind === 12 && scram) {
                scram.verifyServerFinal(cursor.rest());
              } else {
                fail(new PgError({ severity: 'FATAL', code: SqlState.featureNotSupported, message: `${describeNode(startup.node)} asks for authentication method ${kind}, which parapool does not support` }));
              }
              return;
            }
            case BackendCode.backendKeyData: {
              const cursor = new MessageCursor(frame.payload, 'BackendKeyData');
              this.processId = cursor.int32();
              this.secretKey = cursor.int32();
              return;
            }
            case BackendCode.errorResponse: {
              const error = decodeBackendNotice(frame);
              return fail(pgErrorFromBackend(error), Buffer.from(frame.raw));
            }
            case BackendCode.readyForQuery:
              this.handler = null;
              this.closeListeners = [];
              resolvePromise();
              return;
            default:
              return; // ParameterStatus is tracked in onData; notices during start-up are dropped
          }
        } catch (error) {
          fail(error instanceof PgError ? error : new PgError({ severity: 'FATAL', code: SqlState.protocolViolation, message: `bad start-up reply from ${describeNode(startup.node)}: ${(error as Error).message}` }));
        }
      };
      const parameters: Record<string, string> = {};
      for (const [name, value] of startup.parameters) parameters[name] = value;
      this.socket.write(serialize.startup(parameters));
    });
  }

  private onData(chunk: Buffer): void {
    let frames: Frame[];
    try {
      frames = this.reader.push(chunk);
    } catch (error) {
      log('error', 'backend_protocol_error', { node: this.node.id, error: (error as Error).message });
      this.destroy();
      return;
    }
    for (const frame of frames) {
      if (frame.code === BackendCode.readyForQuery) {
        this.txStatus = String.fromCharCode(frame.payload[0]) as TransactionStatus;
        this.lastUsedAt = Date.now();
      } else if (frame.code === BackendCode.parameterStatus) {
        const cursor = new MessageCursor(frame.payload, 'ParameterStatus');
        this.parameters.set(cursor.cstring(), cursor.cstring());
      } else if (frame.code === BackendCode.errorResponse && this.node.stats) {
        // Counted here, where every node connection's frames pass, rather than in each place that reads replies.
        countNodeError(this.node.stats, decodeBackendNotice(frame).severity);
      }
      if (frame.code === BackendCode.notificationResponse && this.notificationListener) {
        const cursor = new MessageCursor(frame.payload, 'NotificationResponse');
        cursor.int32();
        this.notificationListener(cursor.cstring(), cursor.cstring());
        continue;
      }
      const handler = this.handler;
      if (handler) handler(frame, this);
      else if (frame.code === BackendCode.errorResponse) {
        // e.g. FATAL on idle-session timeout, an administrator's pg_terminate_backend, a shutdown or DROP DATABASE
        // WITH (FORCE): the node ends the connection right after, so it is closed now.
        const notice = decodeBackendNotice(frame);
        log(notice.severity === 'FATAL' ? 'info' : 'warning', 'backend_unsolicited_error', { node: this.node.id, message: notice.message });
        if (notice.severity === 'FATAL' || notice.severity === 'PANIC') {
          this.closeReason = notice.message ?? 'the node ended the connection';
          this.onClosed(new Error(this.closeReason));
          return;
        }
      }
    }
  }

  /**
   * Whether the connection can still run a statement: false once it is closed; when it has been idle for
   * `roundTripAfterMs` or longer, also false unless the node answers a Sync within `timeoutMs` (a connection that
   * does not answer in time is closed). Only for an idle connection (not busy).
   */
  async checkAlive(roundTripAfterMs: number, timeoutMs = 5000): Promise<boolean> {
    if (this.closed) return false;
    if (this.socket.destroyed || !this.socket.writable || this.socket.readableEnded) {
      this.onClosed(null);
      return false;
    }
    if (this.busy || Date.now() - this.lastUsedAt < roundTripAfterMs) return true;
    const timer = setTimeout(() => this.destroy(), timeoutMs);
    try {
      // Outside an extended-protocol exchange a Sync only makes the node send ReadyForQuery: no transaction
      // starts or ends.
      await this.exchange([syncFrame], () => undefined);
    } catch {
      return false;
    } finally {
      clearTimeout(timer);
    }
    return !this.closed;
  }

  private onClosed(error: Error | null): void {
    if (this.closed) return;
    this.closed = true;
    this.socket.destroy();
    const listeners = this.closeListeners;
    this.closeListeners = [];
    for (const listener of listeners) listener(error);
  }

  /** Registers a callback for the end of this connection (at most once per listener). */
  onClose(listener: (error: Error | null) => void): void {
    if (this.closed) listener(null);
    else this.closeListeners.push(listener);
  }

  removeCloseListener(listener: (error: Error | null) => void): void {
    this.closeListeners = this.closeListeners.filter((l) => l !== listener);
  }

  setHandler(handler: FrameHandler | null): void {
    this.handler = handler;
  }

  write(bytes: Buffer): boolean {
    if (this.closed) return false;
    this.coalescing.flush();
    return this.socket.write(bytes);
  }

  private readonly coalescing: CoalescingWriter;

  /** Writes bytes together with the others of this turn (streams of small messages, such as COPY data). */
  writeCoalesced(bytes: Buffer): boolean {
    if (this.closed) return false;
    return this.coalescing.write(bytes);
  }

  writeMany(chunks: Buffer[]): void {
    if (this.closed || chunks.length === 0) return;
    this.coalescing.flush();
    if (chunks.length === 1) {
      this.socket.write(chunks[0]);
      return;
    }
    this.socket.cork();
    for (const chunk of chunks) this.socket.write(chunk);
    process.nextTick(() => this.socket.uncork());
  }

  /** Calls back once the socket takes writes again, or once the connection is closed (it never drains then). */
  onceDrained(callback: () => void): void {
    if (this.closed || !this.socket.writableNeedDrain) return callback();
    let called = false;
    const once = () => {
      if (called) return;
      called = true;
      this.socket.off('drain', once);
      this.removeCloseListener(once);
      callback();
    };
    this.socket.once('drain', once);
    this.onClose(once);
  }

  get needsDrain(): boolean {
    return !this.closed && this.socket.writableNeedDrain;
  }

  pause(): void {
    this.socket.pause();
  }

  resume(): void {
    this.socket.resume();
  }

  destroy(): void {
    if (!this.closed) this.closedByProxy = true;
    this.onClosed(null);
  }

  /** Closes with a Terminate first, so that the node does not log an unexpected end of the client's connection. */
  terminate(): void {
    if (this.closed) return;
    this.closedByProxy = true;
    this.coalescing.flush();
    this.socket.end(terminateFrame, () => this.onClosed(null));
  }

  /**
   * Runs SQL with the simple protocol and collects the result as text: for the proxy's own statements
   * (reset, time evaluation, checks), never for client traffic. Rejects with the node's error.
   */
  /**
   * Takes a session's settings (name, value: what its SET statements left, role and session authorization last),
   * for the rest of this connection's session; `reset` first undoes what an earlier user of the connection set.
   */
  async applySettings(settings: readonly (readonly [string, string])[], reset = false): Promise<void> {
    // RESET ALL leaves the role and the session authorization as they are.
    const statements = reset ? ['SET SESSION AUTHORIZATION DEFAULT', 'RESET ROLE', 'RESET ALL'] : [];
    for (const [name, value] of settings) statements.push(`SELECT pg_catalog.set_config(${quoteLiteral(name)}, ${quoteLiteral(value)}, false)`);
    if (statements.length > 0) await this.query(statements.join('; '));
  }

  query(sql: string): Promise<{ rows: (string | null)[][]; tags: string[] }> {
    // N.B. one exchange at a time: a second query sent before the first's ReadyForQuery would take its replies.
    const run = this.queryTail.then(() => this.runQuery(sql));
    this.queryTail = run.then(
      () => undefined,
      () => undefined,
    );
    return run;
  }

  private queryTail: Promise<void> = Promise.resolve();

  private async runQuery(sql: string): Promise<{ rows: (string | null)[][]; tags: string[] }> {
    const rows: (string | null)[][] = [];
    const tags: string[] = [];
    let error: PgError | null = null;
    await this.exchange([serialize.query(sql)], (frame) => {
      switch (frame.code) {
        case BackendCode.dataRow:
          rows.push(decodeDataRowText(frame.payload));
          break;
        case BackendCode.commandComplete:
          tags.push(frame.payload.toString('utf8', 0, frame.payload.length - 1));
          break;
        case BackendCode.errorResponse:
          error = pgErrorFromBackend(decodeBackendNotice(frame));
          break;
        case BackendCode.copyInResponse:
          this.write(serialize.copyFail('parapool internal query does not take COPY data'));
          break;
      }
    });
    if (error) throw error;
    return { rows, tags };
  }

  /**
   * Sends `frames` (one exchange, ending in one ReadyForQuery) and passes every reply frame but ReadyForQuery to
   * `onFrame`. Resolves at ReadyForQuery; rejects when the connection is lost first. The connection is busy
   * meanwhile, so a cancel reaches it.
   */
  exchange(frames: readonly Buffer[], onFrame: (frame: Frame) => void): Promise<void> {
    return new Promise((resolvePromise, reject) => {
      const lost = () => reject(new PgError({ code: SqlState.connectionFailure, message: `lost connection to ${describeNode(this.node)}` }));
      this.onClose(lost);
      this.busy = true;
      this.handler = (frame) => {
        if (frame.code !== BackendCode.readyForQuery) return onFrame(frame);
        this.handler = null;
        this.busy = false;
        this.removeCloseListener(lost);
        resolvePromise();
      };
      this.writeMany(frames as Buffer[]);
    });
  }
}

function abortedError(node: NodeAddress): BackendStartupError {
  return new BackendStartupError(new PgError({ severity: 'FATAL', code: SqlState.connectionFailure, message: `the connection to ${describeNode(node)} was abandoned` }), null, true);
}

function openSocket(node: NodeAddress, timeoutMs: number, signal?: AbortSignal): Promise<Socket> {
  return new Promise((resolvePromise, reject) => {
    if (signal?.aborted) return reject(abortedError(node));
    const socket = netConnect({ host: node.host, port: node.port });
    const settle = () => {
      clearTimeout(timer);
      signal?.removeEventListener('abort', abort);
    };
    const abort = () => {
      settle();
      socket.destroy();
      reject(abortedError(node));
    };
    signal?.addEventListener('abort', abort);
    const timer = setTimeout(() => {
      settle();
      socket.destroy();
      reject(new BackendStartupError(new PgError({ severity: 'FATAL', code: SqlState.connectionFailure, message: `could not connect to ${describeNode(node)}: timed out after ${timeoutMs} ms` }), null, true));
    }, timeoutMs);
    socket.once('connect', () => {
      settle();
      socket.removeAllListeners('error');
      resolvePromise(socket);
    });
    socket.once('error', (error) => {
      settle();
      reject(new BackendStartupError(new PgError({ severity: 'FATAL', code: SqlState.connectionFailure, message: `could not connect to ${describeNode(node)}: ${error.message}` }), null, true));
    });
  });
}

/** Sends a CancelRequest for a running statement on a node (a new connection, as the protocol requires). */
export function sendCancel(node: NodeAddress, processId: number, secretKey: number): Promise<void> {
  return new Promise((resolvePromise) => {
    const socket = netConnect({ host: node.host, port: node.port });
    const done = () => {
      socket.destroy();
      resolvePromise();
    };
    socket.setTimeout(5000, done);
    socket.once('error', done);
    socket.once('close', done);
    socket.once('connect', () => socket.end(serialize.cancel(processId, secretKey)));
  });
}
