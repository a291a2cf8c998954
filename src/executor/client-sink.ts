// Where relayed bytes go: the client's socket, with the two things a relay needs from it, a write that
// reports back-pressure and a way to wait until the socket drains.

export interface ClientSink {
  /** Queues bytes for the client; false when the socket's buffer is full and the caller should pause. */
  write(bytes: Buffer): boolean;
  onceDrained(callback: () => void): void;
  readonly closed: boolean;
}
