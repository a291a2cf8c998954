// The rows of a result kept for a client that fetches them in parts (Execute with a row limit) or in a format
// the merge does not produce: held in memory up to a bound, then appended to a temporary file, and read back in
// order. A result larger than the file cap fails with 54000 instead of filling the disk.

import { closeSync, mkdtempSync, openSync, readSync, rmSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PgError } from '../protocol/errors';
import { BackendCode } from '../protocol/message-codes';
import type { ClientSink } from './client-sink';

export class RowSpool {
  private readonly memory: Buffer[] = [];
  private memoryBytes = 0;
  private file: { dir: string; fd: number } | null = null;
  private fileBytes = 0;
  private pendingFile: Buffer[] = [];
  private pendingFileBytes = 0;
  /** Rows appended so far. */
  count = 0;
  /** Set when the rows outgrew the file cap; later rows are dropped. */
  failure: PgError | null = null;
  /** Read position: in memory first, then the file. */
  private memoryIndex = 0;
  private fileOffset = 0;
  private readBuffer = Buffer.alloc(0);

  constructor(private readonly memoryLimit: number, private readonly fileLimit: number) {}

  /** A sink for a read's frames that keeps its DataRows. */
  sink(): ClientSink {
    return {
      write: (bytes) => {
        if (bytes[0] === BackendCode.dataRow) this.append(bytes);
        return true;
      },
      onceDrained: (callback) => callback(),
      closed: false,
    };
  }

  /** Appends one whole DataRow frame. */
  append(frame: Buffer): void {
    this.count++;
    if (!this.file && this.memoryBytes + frame.length <= this.memoryLimit) {
      this.memory.push(Buffer.from(frame));
      this.memoryBytes += frame.length;
      return;
    }
    if (!this.file) {
      const dir = mkdtempSync(join(tmpdir(), 'parapool-spool-'));
      this.file = { dir, fd: openSync(join(dir, 'rows'), 'w+') };
    }
    if (this.failure) return;
    if (this.fileBytes + frame.length > this.fileLimit) {
      // Rows keep arriving while the read winds down: they are dropped, and the read ends with this error.
      this.failure = new PgError({
        code: '54000',
        message: `the result held for fetching in parts exceeds intermediate_result_limit (${this.fileLimit} bytes)`,
        hint: 'fetch it with no row limit, or raise intermediate_result_limit',
      });
      return;
    }
    this.fileBytes += frame.length;
    this.pendingFile.push(Buffer.from(frame));
    this.pendingFileBytes += frame.length;
    if (this.pendingFileBytes >= 1 << 20) this.flushFile();
  }

  private flushFile(): void {
    if (!this.file || this.pendingFile.length === 0) return;
    const chunk = Buffer.concat(this.pendingFile);
    writeSync(this.file.fd, chunk, 0, chunk.length, null);
    this.pendingFile = [];
    this.pendingFileBytes = 0;
  }

  /** Up to `limit` next rows (all that remain for 0), in append order. */
  take(limit: number): Buffer[] {
    this.flushFile();
    const rows: Buffer[] = [];
    const wanted = limit > 0 ? limit : Infinity;
    while (rows.length < wanted && this.memoryIndex < this.memory.length) {
      rows.push(this.memory[this.memoryIndex]);
      this.memory[this.memoryIndex++] = Buffer.alloc(0);
    }
    while (rows.length < wanted && this.file) {
      const row = this.nextFileRow();
      if (!row) break;
      rows.push(row);
    }
    return rows;
  }

  private nextFileRow(): Buffer | null {
    for (;;) {
      if (this.readBuffer.length >= 5) {
        const length = 1 + this.readBuffer.readInt32BE(1);
        if (this.readBuffer.length >= length) {
          const row = this.readBuffer.subarray(0, length);
          this.readBuffer = this.readBuffer.subarray(length);
          return row;
        }
      }
      if (this.fileOffset >= this.fileBytes) return null;
      const chunk = Buffer.allocUnsafe(Math.min(1 << 20, this.fileBytes - this.fileOffset));
      const read = readSync(this.file!.fd, chunk, 0, chunk.length, this.fileOffset);
      this.fileOffset += read;
      this.readBuffer = Buffer.concat([this.readBuffer, chunk.subarray(0, read)]);
    }
  }

  /** Whether every row has been taken. */
  get exhausted(): boolean {
    return this.memoryIndex >= this.memory.length && (!this.file || (this.fileOffset >= this.fileBytes && this.readBuffer.length === 0));
  }

  close(): void {
    this.memory.length = 0;
    if (this.file) {
      closeSync(this.file.fd);
      rmSync(this.file.dir, { recursive: true, force: true });
      this.file = null;
    }
  }
}
