// A bounds-checked reader over one message body. Every read past the end, or a string without its
// terminator, throws a protocol violation: bytes from a client must never crash the proxy.

import { protocolViolation } from './errors';

export class MessageCursor {
  private offset = 0;

  constructor(private readonly body: Buffer, private readonly what: string) {}

  private need(bytes: number): void {
    if (this.offset + bytes > this.body.length) {
      throw protocolViolation(`invalid message format in ${this.what} message`, 'the message is shorter than its contents');
    }
  }

  int16(): number {
    this.need(2);
    const value = this.body.readInt16BE(this.offset);
    this.offset += 2;
    return value;
  }

  int32(): number {
    this.need(4);
    const value = this.body.readInt32BE(this.offset);
    this.offset += 4;
    return value;
  }

  byte(): number {
    this.need(1);
    return this.body[this.offset++];
  }

  cstring(): string {
    const end = this.body.indexOf(0, this.offset);
    if (end < 0) {
      throw protocolViolation(`invalid message format in ${this.what} message`, 'a string is missing its terminator');
    }
    const value = this.body.toString('utf8', this.offset, end);
    this.offset = end + 1;
    return value;
  }

  bytes(length: number): Buffer {
    this.need(length);
    const value = this.body.subarray(this.offset, this.offset + length);
    this.offset += length;
    return value;
  }

  rest(): Buffer {
    const value = this.body.subarray(this.offset);
    this.offset = this.body.length;
    return value;
  }

  get position(): number {
    return this.offset;
  }

  /** PostgreSQL rejects trailing garbage after a message's last field (pq_getmsgend). */
  end(): void {
    if (this.offset !== this.body.length) {
      throw protocolViolation(`invalid message format in ${this.what} message`, 'the message is longer than its contents');
    }
  }
}
