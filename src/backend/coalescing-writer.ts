// Writes to a socket that leave together: everything written during one turn of the event loop (and the promise
// continuations it triggers) goes out in one system call, since for small protocol messages the call costs more
// than the bytes.

import type { Socket } from 'node:net';

export class CoalescingWriter {
  private corked = false;

  constructor(private readonly socket: Socket) {}

  /** Queues bytes; false when the socket's buffer is full and the caller should wait for 'drain'. */
  write(bytes: Buffer): boolean {
    if (!this.corked) {
      this.corked = true;
      this.socket.cork();
      setImmediate(() => {
        this.corked = false;
        this.socket.uncork();
      });
    }
    return this.socket.write(bytes);
  }
}
