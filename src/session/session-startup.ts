// Start-up and authentication: the start-up packet (SSL and GSS refusals, cancel requests, protocol version),
// the password exchange with the client, and the session's connections to the nodes.

import { log } from '../log';
import { SessionCatalog } from './session-catalog';
import { authenticateClient } from './client-auth';
import { PgError, SqlState, protocolViolation } from '../protocol/errors';
import { readStartupPacket, StartupCode, type Frame } from '../protocol/frame-reader';
import { decodeCancelRequest, decodeStartupParameters } from '../protocol/frontend-messages';
import { FrontendCode } from '../protocol/message-codes';
import { serverMessages } from '../protocol/server-messages';
import { negotiateProtocolVersion } from './session-statements';
import { SessionExtended } from './session-extended';

export abstract class SessionStartup extends SessionExtended {
  protected readStartup(): void {
    const read = readStartupPacket(this.startupBuffer);
    if (!read) return;
    const { packet, rest } = read;
    this.startupBuffer = rest;
    switch (packet.code) {
      case StartupCode.sslRequest:
      case StartupCode.gssEncRequest:
        if (packet.body.length !== 0) throw protocolViolation('invalid length of startup packet');
        this.writeDirect(serverMessages.sslRefused);
        if (rest.length > 0) this.readStartup();
        return;
      case StartupCode.cancelRequest: {
        const { processId, secretKey } = decodeCancelRequest(packet.body);
        this.context.cancel(processId, secretKey);
        this.close('cancel request', false);
        return;
      }
      default: {
        const major = packet.code >>> 16;
        const minor = packet.code & 0xffff;
        if (major !== 3) {
          throw new PgError({ severity: 'FATAL', code: SqlState.featureNotSupported, message: `unsupported frontend protocol ${major}.${minor}: server supports 3.0 to 3.0` });
        }
        const startup = decodeStartupParameters(packet.body);
        this.parameters = startup.parameters;
        if (!this.parameters.has('database')) this.parameters.set('database', this.parameters.get('user')!);
        const unsupported = [...this.parameters.keys()].filter((k) => k.startsWith('_pq_.'));
        for (const key of unsupported) this.parameters.delete(key);
        if (minor > 0 || unsupported.length > 0) this.writeDirect(negotiateProtocolVersion(unsupported));
        if (this.parameters.get('replication') && this.parameters.get('replication') !== 'false') {
          throw new PgError({ severity: 'FATAL', code: SqlState.featureNotSupported, message: 'replication connections through parapool are not supported' });
        }
        this.phase = 'authenticating';
        this.startupBuffer = Buffer.alloc(0);
        void this.authenticate();
        if (rest.length > 0) this.onData(rest);
      }
    }
  }

  protected onAuthFrame(frame: Frame): void {
    if (frame.code !== FrontendCode.password || !this.passwordWaiter) {
      throw protocolViolation(`expected password response, got message type ${frame.code}`);
    }
    const waiter = this.passwordWaiter;
    this.passwordWaiter = null;
    waiter(frame.payload);
  }

  protected async authenticate(): Promise<void> {
    const user = this.parameters.get('user')!;
    // The client may have gone while its start-up packet was read: a closed session must not take a slot.
    if (this.closed) return;
    try {
      if (!this.context.register(this)) {
        throw new PgError({ severity: 'FATAL', code: SqlState.tooManyConnections, message: 'sorry, too many clients already', detail: `num_init_children is ${this.context.config.numInitChildren}` });
      }
      await authenticateClient(this.context.config.clientAuthentication, user, this.context.passwords, {
        send: (bytes) => this.writeDirect(bytes),
        nextPasswordMessage: () => new Promise((resolvePromise) => (this.passwordWaiter = resolvePromise)),
      });
      await this.connectNodes();
      if (this.closed) return;
      const shared = await this.context.catalogs.forDatabase(this.parameters.get('database')!, this.connectionsInNodeOrder());
      this.sessionCatalog = new SessionCatalog(this.context.catalogs, shared, {
        id: this.id,
        status: () => this.status,
        connections: () => this.connectionsInNodeOrder(),
        mainConnection: () => this.mainConnection(),
      });
      if (/search_path/i.test(this.parameters.get('options') ?? '')) await this.sessionCatalog.resolveSearchPath();
      const main = this.mainConnection();
      for (const [name, value] of main.parameters) this.write(serverMessages.parameterStatus(name, value));
      this.write(serverMessages.backendKeyData(this.processId, this.secretKey));
      this.write(serverMessages.readyForQuery('I'));
      this.phase = 'ready';
      if (this.startupTimer) clearTimeout(this.startupTimer);
      if (this.context.config.logConnections) {
        log('info', 'session_start', { session: this.id, client: this.remote, user, database: this.parameters.get('database'), nodes: [...this.connections.keys()].join(',') });
      }
      this.pump();
    } catch (error) {
      this.fail(error);
    }
  }
}
