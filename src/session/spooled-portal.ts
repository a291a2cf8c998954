// A portal of a multi-node read whose rows are fetched in parts: Execute with a row limit (as JDBC does with a
// fetch size), a cursor (DECLARE ... FETCH), or rows that need a node to encode them. The read runs to completion
// into a spool, and each Execute or FETCH hands out the next rows, as PostgreSQL's portals do. Such a portal
// lives until Close, or the end of its transaction unless it is a cursor WITH HOLD.

import type { RowSpool } from '../executor/row-spool';
import type { ClientSink } from '../executor/client-sink';
import type { BackendConnection } from '../backend/backend-connection';
import type { ResultEncoder } from './result-formats';
import { serverMessages } from '../protocol/server-messages';

const chunkRows = 500;

export class SpooledPortal {
  /** A cursor WITH HOLD survives the commit of its transaction. */
  holdable = false;
  /** Declared in the open transaction: a rollback ends it even when holdable. */
  inTransaction = false;

  constructor(
    private readonly spool: RowSpool,
    /** null for a portal already run to its end (no rows left to encode). */
    private readonly encoder: ResultEncoder | null,
    /** The RowDescription a Describe of the portal answers, with the bound formats. */
    readonly describe: () => Promise<Buffer>,
  ) {}

  /** Writes up to `limit` rows (0: all that remain), then PortalSuspended or CommandComplete, as Execute does. */
  async fetch(limit: number, sink: ClientSink, connection: () => Promise<BackendConnection>): Promise<void> {
    const sent = await this.take(limit, sink, connection);
    sink.write(limit > 0 && sent === limit ? serverMessages.portalSuspended : serverMessages.commandComplete(`SELECT ${sent}`));
  }

  /** Writes up to `limit` rows (0: all that remain) as DataRows and returns how many. */
  async take(limit: number, sink: ClientSink, connection: () => Promise<BackendConnection>, encoder = this.encoder): Promise<number> {
    let sent = 0;
    for (;;) {
      const want = limit > 0 ? Math.min(chunkRows, limit - sent) : chunkRows;
      if (want === 0) break;
      const frames = this.spool.take(want);
      if (frames.length === 0) break;
      let drained = true;
      for (const frame of encoder ? await encoder.encode(frames, connection) : frames) drained = sink.write(frame) && drained;
      sent += frames.length;
      if (!drained && !sink.closed) await new Promise<void>((resolvePromise) => sink.onceDrained(resolvePromise));
      if (frames.length < want) break;
    }
    return sent;
  }

  /** Passes over up to `limit` rows (0: all), as MOVE does, and returns how many. */
  skip(limit: number): number {
    let moved = 0;
    for (;;) {
      const want = limit > 0 ? Math.min(chunkRows, limit - moved) : chunkRows;
      if (want === 0) return moved;
      const count = this.spool.take(want).length;
      moved += count;
      if (count < want) return moved;
    }
  }

  close(): void {
    this.spool.close();
  }
}
