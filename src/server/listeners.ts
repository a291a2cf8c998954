// Listening on a list of addresses with one port, as listen_addresses and port (and their PCP, web page and
// metrics twins) ask: each address binds the configured port, or, for port 0, the port the system gave the first.

import type { Server, Socket } from 'node:net';

/** Listens with each server `make` returns, one per address; rejects with the first bind error. */
export async function listenOnAddresses<S extends Server>(addresses: readonly string[], port: number, make: () => S): Promise<S[]> {
  const servers: S[] = [];
  for (const address of addresses) {
    const server = make();
    await new Promise<void>((resolvePromise, reject) => {
      server.once('error', reject);
      server.listen(boundPort(servers) || port, address, () => {
        server.off('error', reject);
        resolvePromise();
      });
    });
    servers.push(server);
  }
  return servers;
}

/** The port the servers listen on (0 before they do). */
export function boundPort(servers: readonly Server[]): number {
  const address = servers[0]?.address();
  return address && typeof address === 'object' ? address.port : 0;
}

/** Resolves once every server has stopped listening and its connections have ended. */
export function closeServers(servers: readonly Server[]): Promise<void> {
  return Promise.all(servers.map((server) => new Promise<void>((resolvePromise) => server.close(() => resolvePromise())))).then(() => undefined);
}

/**
 * The servers of an operator endpoint (PCP, the web page, the metrics) on their addresses, with the connections
 * they accepted: closing ends those too, so that a client that never hangs up cannot hold the proxy's stop.
 */
export class AddressListeners {
  private servers: Server[] = [];
  private readonly sockets = new Set<Socket>();

  async listen(addresses: readonly string[], port: number, make: () => Server): Promise<void> {
    this.servers = await listenOnAddresses(addresses, port, () => {
      const server = make();
      server.on('connection', (socket: Socket) => {
        this.sockets.add(socket);
        socket.on('close', () => this.sockets.delete(socket));
      });
      return server;
    });
  }

  /** The port they listen on (the system's choice for port 0); 0 before they do. */
  get port(): number {
    return boundPort(this.servers);
  }

  async close(): Promise<void> {
    const closed = closeServers(this.servers);
    for (const socket of this.sockets) socket.destroy();
    await closed;
    this.servers = [];
  }
}
