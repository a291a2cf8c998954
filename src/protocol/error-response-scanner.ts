// Finds the ErrorResponses in the byte stream a session sends its client, for the errors-by-SQLSTATE metric.
// Every reply reaches the client through one write path, whether the proxy built it or relayed a node's frames,
// and in whatever chunks: a frame may be split across writes, and one write may hold many frames. Counting there,
// rather than at each of the places that make an error, cannot miss one or count a node's error the proxy
// replaced.
//
// N.B. the cost per written chunk is a walk over its message headers (a length read per message, no allocation);
// only an ErrorResponse's body is read, and copied only when it is split across writes.

/** An error as the client saw it: severity (not localized) and SQLSTATE. */
export interface ObservedError {
  readonly severity: string;
  readonly code: string;
}

const errorResponseCode = 0x45; // 'E'
/** An ErrorResponse longer than this is not collected across writes (none of PostgreSQL's comes near it). */
const maxCollectedBody = 1 << 20;

export class ErrorResponseScanner {
  private readonly header = Buffer.alloc(5);
  private headerFill = 0;
  /** Bytes of the current message's body still to pass over. */
  private skip = 0;
  /** The body of an ErrorResponse split across writes, while it is collected. */
  private body: Buffer | null = null;
  private bodyFill = 0;
  /** Set when the stream stops looking like protocol messages; nothing more is read from it. */
  private lost = false;

  constructor(private readonly onError: (error: ObservedError) => void) {}

  observe(bytes: Buffer): void {
    if (this.lost) return;
    let at = 0;
    while (at < bytes.length) {
      if (this.body) {
        const n = Math.min(this.body.length - this.bodyFill, bytes.length - at);
        bytes.copy(this.body, this.bodyFill, at, at + n);
        this.bodyFill += n;
        at += n;
        if (this.bodyFill === this.body.length) {
          this.report(this.body);
          this.body = null;
        }
        continue;
      }
      if (this.skip > 0) {
        const n = Math.min(this.skip, bytes.length - at);
        this.skip -= n;
        at += n;
        continue;
      }
      let code: number;
      let length: number;
      if (this.headerFill === 0 && bytes.length - at >= 5) {
        code = bytes[at];
        length = bytes.readInt32BE(at + 1);
        at += 5;
      } else {
        this.header[this.headerFill++] = bytes[at++];
        if (this.headerFill < 5) continue;
        this.headerFill = 0;
        code = this.header[0];
        length = this.header.readInt32BE(1);
      }
      if (length < 4) {
        this.lost = true;
        return;
      }
      const bodyLength = length - 4;
      if (code !== errorResponseCode) {
        this.skip = bodyLength;
      } else if (bytes.length - at >= bodyLength) {
        this.report(bytes.subarray(at, at + bodyLength));
        at += bodyLength;
      } else if (bodyLength <= maxCollectedBody) {
        this.body = Buffer.allocUnsafe(bodyLength);
        this.bodyFill = 0;
      } else {
        this.skip = bodyLength;
      }
    }
  }

  /** Reads the S/V (severity) and C (SQLSTATE) fields of an ErrorResponse body. */
  private report(body: Buffer): void {
    let severity = '';
    let localized = '';
    let code = '';
    let at = 0;
    while (at < body.length && body[at] !== 0) {
      const field = body[at];
      const end = body.indexOf(0, at + 1);
      if (end < 0) break;
      if (field === 0x56 /* V */) severity = body.toString('latin1', at + 1, end);
      else if (field === 0x53 /* S */) localized = body.toString('latin1', at + 1, end);
      else if (field === 0x43 /* C */) code = body.toString('latin1', at + 1, end);
      at = end + 1;
    }
    this.onError({ severity: severity || localized || 'ERROR', code: code || 'XX000' });
  }
}
