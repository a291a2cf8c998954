// Splits a byte stream into protocol 3.0 frames (type byte + int32 length + payload) without copying: a frame
// is a view into the received chunk, so the proxy can forward it as bytes and decode it only when it must.
// N.B. a length below 4 or above the limit cannot be resynchronised: the reader throws and the caller closes.

import { protocolViolation } from './errors';

export interface Frame {
  /** The message type byte ('Q', 'P', 'D', ...), as a char code. */
  readonly code: number;
  /** The message body, without type byte and length. */
  readonly payload: Buffer;
  /** The whole message, header included, ready to forward. */
  readonly raw: Buffer;
}

export class FrameReader {
  /** Bytes of an unfinished frame, kept as received so that a large frame is copied once, not once per chunk. */
  private pending: Buffer[] = [];
  private pendingBytes = 0;
  /** Total bytes the unfinished frame needs, once its header is known. */
  private needed = 0;

  constructor(private readonly maxLength: number, private readonly peer: string) {}

  /** Appends bytes; returns the complete frames they finish, in order. */
  push(chunk: Buffer): Frame[] {
    if (this.pendingBytes > 0) {
      this.pending.push(chunk);
      this.pendingBytes += chunk.length;
      if (this.needed > 0 && this.pendingBytes < this.needed) return [];
    }
    const buffer = this.pendingBytes > 0 ? Buffer.concat(this.pending, this.pendingBytes) : chunk;
    this.pending = [];
    this.pendingBytes = 0;
    this.needed = 0;
    const frames: Frame[] = [];
    let offset = 0;
    while (buffer.length - offset >= 5) {
      const length = buffer.readInt32BE(offset + 1);
      if (length < 4 || length > this.maxLength) {
        throw protocolViolation(
          `invalid message length ${length} for message type "${String.fromCharCode(buffer[offset])}" from ${this.peer}`,
          length > this.maxLength ? `the limit is ${this.maxLength} bytes` : undefined,
        );
      }
      const end = offset + 1 + length;
      if (end > buffer.length) {
        this.needed = end - offset;
        break;
      }
      frames.push({ code: buffer[offset], payload: buffer.subarray(offset + 5, end), raw: buffer.subarray(offset, end) });
      offset = end;
    }
    if (offset < buffer.length) {
      this.pending = [buffer.subarray(offset)];
      this.pendingBytes = buffer.length - offset;
    }
    return frames;
  }

  /** Bytes received that do not yet form a whole frame. */
  get bufferedBytes(): number {
    return this.pendingBytes;
  }
}

/** The first message of a connection has no type byte: int32 length, int32 code, body. */
export const enum StartupCode {
  protocol3 = 196608, // 3.0
  cancelRequest = 80877102,
  sslRequest = 80877103,
  gssEncRequest = 80877104,
}

/** PostgreSQL's own limit on a startup packet (MAX_STARTUP_PACKET_LENGTH). */
export const maxStartupPacketLength = 10000;

export interface StartupPacket {
  readonly code: number;
  readonly body: Buffer;
}

/** Reads one untyped startup-phase packet from the front of `buffer`; null when it is not complete yet. */
export function readStartupPacket(buffer: Buffer): { packet: StartupPacket; rest: Buffer } | null {
  if (buffer.length < 4) return null;
  const length = buffer.readInt32BE(0);
  if (length < 8 || length > maxStartupPacketLength) {
    throw protocolViolation(`invalid length of startup packet: ${length}`);
  }
  if (buffer.length < length) return null;
  return {
    packet: { code: buffer.readInt32BE(4), body: buffer.subarray(8, length) },
    rest: buffer.subarray(length),
  };
}
