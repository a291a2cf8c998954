// A portal of a multi-node read whose rows are fetched in parts (Execute with a row limit, as JDBC does with a
// fetch size) or need a node to encode them: the read runs to completion into a spool, and each Execute hands out
// the next rows, ending with PortalSuspended while the limit was reached, CommandComplete once fewer rows came,
// as PostgreSQL's portals do. The portal lives until Close or the end of its transaction.

import type { RowSpool } from '../executor/row-spool';
import type { ClientSink } from '../executor/client-sink';
import type { BackendConnection } from './backend-connection';
import type { ResultEncoder } from './result-formats';
import { serverMessages } from './server-messages';

const chunkRows = 500;

export class SpooledPortal {
  constructor(
    private readonly spool: RowSpool,
    /** null for a portal already run to its end (no rows left to encode). */
    private readonly encoder: ResultEncoder | null,
    /** The RowDescription a Describe of the portal answers, with the bound formats. */
    readonly describe: () => Promise<Buffer>,
  ) {}

  /** Writes up to `limit` rows (0: all that remain), then PortalSuspended or CommandComplete. */
  async fetch(limit: number, sink: ClientSink, connection: () => Promise<BackendConnection>): Promise<void> {
    let sent = 0;
    for (;;) {
      const want = limit > 0 ? Math.min(chunkRows, limit - sent) : chunkRows;
      if (want === 0) break;
      const frames = this.spool.take(want);
      if (frames.length === 0) break;
      let drained = true;
      for (const frame of this.encoder ? await this.encoder.encode(frames, connection) : frames) drained = sink.write(frame) && drained;
      sent += frames.length;
      if (!drained && !sink.closed) await new Promise<void>((resolvePromise) => sink.onceDrained(resolvePromise));
      if (frames.length < want) break;
    }
    sink.write(limit > 0 && sent === limit ? serverMessages.portalSuspended : serverMessages.commandComplete(`SELECT ${sent}`));
  }

  close(): void {
    this.spool.close();
  }
}
