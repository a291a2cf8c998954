// Writes to a socket that leave together: everything written during one turn of the event loop (and the promise
// continuations it triggers) is joined and goes out in one socket write, since for small protocol messages each
// write through the stream machinery and the system call cost more than the bytes. A reply is many small
// messages (RowDescription, DataRow, CommandComplete, ReadyForQuery); queued past `flushAt` bytes they leave at
// once, so a long result streams with the socket's back-pressure as before.
//
// N.B. whoever writes to the socket directly (its last message before end()) must flush() first, or its bytes
// would overtake the queued ones.

import type { Socket } from 'node:net';

export class CoalescingWriter {
  private pending: Buffer[] = [];
  private pendingBytes = 0;
  private scheduled = false;

  constructor(private readonly socket: Socket, private readonly flushAt = 16 * 1024) {}

  /** Queues bytes; false when the socket's buffer is full and the caller should wait for 'drain'. */
  write(bytes: Buffer): boolean {
    this.pending.push(bytes);
    this.pendingBytes += bytes.length;
    if (this.pendingBytes >= this.flushAt) return this.flush();
    if (!this.scheduled) {
      this.scheduled = true;
      setImmediate(this.flushScheduled);
    }
    return true;
  }

  private readonly flushScheduled = (): void => {
    this.scheduled = false;
    this.flush();
  };

  /** Writes what is queued, joined; returns the socket's answer (false: wait for 'drain'). */
  flush(): boolean {
    if (this.pending.length === 0) return !this.socket.writableNeedDrain;
    const chunk = this.pending.length === 1 ? this.pending[0] : Buffer.concat(this.pending, this.pendingBytes);
    this.pending = [];
    this.pendingBytes = 0;
    if (this.socket.destroyed || this.socket.writableEnded) return false;
    return this.socket.write(chunk);
  }
}
