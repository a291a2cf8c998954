// A bare protocol client for the tests that must send exactly the bytes they mean (bad lengths, unknown
// messages, half a COPY) and read every reply message, which no driver allows.

import { connect, type Socket } from 'node:net';
import { serialize } from 'pg-protocol';

export interface ReplyMessage {
  readonly type: string;
  readonly payload: Buffer;
}

export class RawClient {
  private buffer = Buffer.alloc(0);
  private readonly messages: ReplyMessage[] = [];
  private waiters: (() => void)[] = [];
  closed = false;
  processId = 0;
  secretKey = 0;

  private constructor(readonly socket: Socket) {
    socket.on('data', (chunk) => {
      this.buffer = Buffer.concat([this.buffer, chunk]);
      this.split();
      this.wake();
    });
    socket.on('close', () => {
      this.closed = true;
      this.wake();
    });
    socket.on('error', () => undefined);
  }

  static connect(port: number): Promise<RawClient> {
    return new Promise((resolvePromise, reject) => {
      const socket = connect({ host: '127.0.0.1', port }, () => resolvePromise(new RawClient(socket)));
      socket.once('error', reject);
    });
  }

  /** Connects and completes a trust start-up; resolves after ReadyForQuery. */
  static async ready(port: number, user = 'postgres', database = 'postgres'): Promise<RawClient> {
    const client = await RawClient.connect(port);
    client.send(serialize.startup({ user, database }));
    const messages = await client.readUntil('Z');
    const key = messages.find((m) => m.type === 'K');
    if (key) {
      client.processId = key.payload.readInt32BE(0);
      client.secretKey = key.payload.readInt32BE(4);
    }
    const error = messages.find((m) => m.type === 'E');
    if (error) throw new Error(`start-up failed: ${errorFields(error).M}`);
    return client;
  }

  private split(): void {
    // A single 'N' or 'S' byte answers an SSLRequest: it has no length.
    while (this.buffer.length > 0) {
      if (this.buffer.length >= 5) {
        const length = this.buffer.readInt32BE(1);
        if (this.buffer.length < 1 + length) return;
        this.messages.push({ type: String.fromCharCode(this.buffer[0]), payload: this.buffer.subarray(5, 1 + length) });
        this.buffer = this.buffer.subarray(1 + length);
      } else return;
    }
  }

  private wake(): void {
    const waiters = this.waiters;
    this.waiters = [];
    for (const w of waiters) w();
  }

  send(bytes: Buffer | Buffer[]): void {
    for (const b of Array.isArray(bytes) ? bytes : [bytes]) this.socket.write(b);
  }

  /** Reads the raw single-byte answer to an SSLRequest. */
  async readByte(timeoutMs = 5000): Promise<string> {
    const deadline = Date.now() + timeoutMs;
    while (this.buffer.length === 0) {
      if (this.closed || Date.now() > deadline) throw new Error('no byte received');
      await new Promise<void>((r) => {
        this.waiters.push(r);
        setTimeout(r, 50);
      });
    }
    const byte = String.fromCharCode(this.buffer[0]);
    this.buffer = this.buffer.subarray(1);
    return byte;
  }

  /** Messages up to and including the first of type `type`; rejects on timeout or close before it. */
  async readUntil(type: string, timeoutMs = 10000): Promise<ReplyMessage[]> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const index = this.messages.findIndex((m) => m.type === type);
      if (index >= 0) return this.messages.splice(0, index + 1);
      if (this.closed) throw new Error(`connection closed before a '${type}' message; got ${this.describeReceived()}`);
      if (Date.now() > deadline) throw new Error(`timed out waiting for '${type}'; got ${this.describeReceived()}`);
      await new Promise<void>((r) => {
        this.waiters.push(r);
        setTimeout(r, 50);
      });
    }
  }

  /** The types of the messages received so far, with the code and text of any ErrorResponse. */
  private describeReceived(): string {
    const types = this.messages.map((m) => m.type).join('');
    const errors = this.messages.filter((m) => m.type === 'E').map((m) => {
      const fields = errorFields(m);
      return `${fields.C}: ${fields.M}`;
    });
    return errors.length > 0 ? `${types} (${errors.join('; ')})` : types;
  }

  /** Waits until the server closes the connection; returns the messages it sent before. */
  async readUntilClosed(timeoutMs = 10000): Promise<ReplyMessage[]> {
    const deadline = Date.now() + timeoutMs;
    while (!this.closed) {
      if (Date.now() > deadline) throw new Error('the server did not close the connection');
      await new Promise<void>((r) => {
        this.waiters.push(r);
        setTimeout(r, 50);
      });
    }
    return this.messages.splice(0);
  }

  end(): void {
    this.socket.destroy();
  }
}

/** The fields of an ErrorResponse/NoticeResponse by their one-letter codes (C, M, S, D, H, P, ...). */
export function errorFields(message: ReplyMessage): Record<string, string> {
  const fields: Record<string, string> = {};
  let offset = 0;
  while (offset < message.payload.length && message.payload[offset] !== 0) {
    const code = String.fromCharCode(message.payload[offset]);
    const end = message.payload.indexOf(0, offset + 1);
    fields[code] = message.payload.toString('utf8', offset + 1, end);
    offset = end + 1;
  }
  return fields;
}

/** A message with an arbitrary type byte and body, its length computed. */
export function frame(type: string, body: Buffer = Buffer.alloc(0)): Buffer {
  const out = Buffer.alloc(5 + body.length);
  out.write(type, 0, 'latin1');
  out.writeInt32BE(4 + body.length, 1);
  body.copy(out, 5);
  return out;
}

/** The text of a DataRow's columns. */
export function dataRowValues(message: ReplyMessage): (string | null)[] {
  const count = message.payload.readInt16BE(0);
  const values: (string | null)[] = [];
  let offset = 2;
  for (let i = 0; i < count; i++) {
    const length = message.payload.readInt32BE(offset);
    offset += 4;
    if (length < 0) values.push(null);
    else {
      values.push(message.payload.toString('utf8', offset, offset + length));
      offset += length;
    }
  }
  return values;
}
