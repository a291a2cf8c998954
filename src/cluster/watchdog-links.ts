// The watchdog's TCP links: this instance listens on wd_port for the others and keeps one outgoing connection to
// each of them, reconnected every second while it is down. Messages go out on the outgoing link and come in on
// the incoming ones, so that each direction has one owner and no handshake decides who dials whom. A link that
// closes is reported at once: a killed instance's port refuses connections, and waiting for wd_heartbeat_deadtime
// would only delay the election.

import { createServer, connect, type Server, type Socket } from 'node:net';
import { log } from '../log';
import { encodeMessage, MessageReader, type WatchdogMessage } from './watchdog-messages';

export interface PeerAddress {
  /** host:wd_port, the peer's name in the cluster. */
  readonly name: string;
  readonly host: string;
  readonly port: number;
}

export interface LinkEvents {
  message(message: WatchdogMessage): void;
  /** The peer's link closed, or a connection to it was refused: it is not running, whatever its last heartbeat said. */
  lost(peer: string): void;
}

const reconnectMs = 1000;

interface Outgoing {
  readonly peer: PeerAddress;
  socket: Socket | null;
  connected: boolean;
  timer: NodeJS.Timeout | null;
}

export class WatchdogLinks {
  private server: Server | null = null;
  private readonly outgoing = new Map<string, Outgoing>();
  private readonly incoming = new Set<Socket>();
  private closed = false;

  constructor(private readonly listen: { host: string; port: number }, peers: readonly PeerAddress[], private readonly events: LinkEvents) {
    for (const peer of peers) this.outgoing.set(peer.name, { peer, socket: null, connected: false, timer: null });
  }

  /** Listens on wd_port and starts connecting to every peer; resolves once listening. */
  async start(): Promise<void> {
    this.server = createServer((socket) => this.accept(socket));
    await new Promise<void>((resolvePromise, reject) => {
      this.server!.once('error', reject);
      this.server!.listen(this.listen.port, this.listen.host, () => {
        this.server!.off('error', reject);
        resolvePromise();
      });
    });
    for (const link of this.outgoing.values()) this.dial(link);
  }

  /** The port listened on (the system's choice for wd_port 0). */
  get port(): number {
    const address = this.server?.address();
    return typeof address === 'object' && address ? address.port : 0;
  }

  /** Sends to one peer; dropped when its link is down (the next heartbeat says it all again). */
  send(peer: string, message: WatchdogMessage): boolean {
    const link = this.outgoing.get(peer);
    if (!link?.connected || !link.socket) return false;
    link.socket.write(encodeMessage(message));
    return true;
  }

  broadcast(message: WatchdogMessage): void {
    for (const name of this.outgoing.keys()) this.send(name, message);
  }

  async stop(): Promise<void> {
    this.closed = true;
    for (const link of this.outgoing.values()) {
      if (link.timer) clearTimeout(link.timer);
      link.socket?.destroy();
    }
    for (const socket of this.incoming) socket.destroy();
    await new Promise<void>((resolvePromise) => (this.server ? this.server.close(() => resolvePromise()) : resolvePromise()));
  }

  private dial(link: Outgoing): void {
    if (this.closed) return;
    link.timer = null;
    const socket = connect({ host: link.peer.host, port: link.peer.port });
    link.socket = socket;
    socket.setNoDelay(true);
    socket.once('connect', () => {
      link.connected = true;
      log('info', 'watchdog_link_up', { peer: link.peer.name });
    });
    socket.on('data', () => undefined); // the peer never writes on this link
    socket.on('error', () => undefined);
    socket.once('close', () => {
      const wasConnected = link.connected;
      link.connected = false;
      link.socket = null;
      if (this.closed) return;
      if (wasConnected) log('warning', 'watchdog_link_down', { peer: link.peer.name });
      this.events.lost(link.peer.name);
      link.timer = setTimeout(() => this.dial(link), reconnectMs);
      link.timer.unref();
    });
  }

  private accept(socket: Socket): void {
    if (this.closed) return void socket.destroy();
    this.incoming.add(socket);
    const reader = new MessageReader();
    let from: string | null = null;
    socket.on('error', () => undefined);
    socket.on('data', (chunk: Buffer) => {
      let messages: WatchdogMessage[];
      try {
        messages = reader.push(chunk);
      } catch (error) {
        log('warning', 'watchdog_bad_message', { peer: from ?? socket.remoteAddress ?? '', error: (error as Error).message });
        return void socket.destroy();
      }
      for (const message of messages) {
        from = message.from;
        this.events.message(message);
      }
    });
    socket.once('close', () => {
      this.incoming.delete(socket);
      if (from !== null && !this.closed) this.events.lost(from);
    });
  }
}
