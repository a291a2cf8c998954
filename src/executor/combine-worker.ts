// A worker thread (piscina) that folds partial-aggregate rows: the main thread only cuts the nodes' DataRow frames
// out of their sockets and posts them here in batches, so decoding, hashing and folding millions of partial rows,
// and writing the folded groups as COPY text for the finishing node, never hold up the client sockets.

import type { MessagePort } from 'node:worker_threads';
import type { StateCombine } from '../planner/distributed-plan';
import { dataRowFields } from '../protocol/data-row';
import { PgError } from '../protocol/errors';
import type { FieldDescription } from '../protocol/row-description';
import { PartialCombiner } from './partial-combine';

/** How partial rows fold: what PartialCombiner.create takes besides the rows' fields. */
export interface FoldSpec {
  readonly groupColumns: number;
  readonly combine: readonly StateCombine[];
  readonly textBytewise: boolean;
  readonly limitBytes: number;
}

export interface CombineTask extends FoldSpec {
  readonly fields: readonly FieldDescription[];
  /** Batches of whole DataRow frames arrive here as { rows: Uint8Array }, then { end: true }; each is acknowledged. */
  readonly port: MessagePort;
}

export type CombineResult =
  | { readonly ok: true; readonly copyText: Uint8Array; readonly groups: number; readonly folding: boolean }
  | { readonly ok: false; readonly code: string; readonly message: string; readonly hint?: string };

export function combinePartials(task: CombineTask): Promise<CombineResult> {
  const combiner = PartialCombiner.create(task.fields, task.groupColumns, task.combine, task.textBytewise, task.limitBytes);
  return new Promise((resolve) => {
    let failed: CombineResult | null = null;
    task.port.on('message', (message: { rows?: Uint8Array; end?: boolean }) => {
      if (message.rows && !failed) {
        const bytes = Buffer.from(message.rows.buffer, message.rows.byteOffset, message.rows.byteLength);
        try {
          for (let offset = 0; offset < bytes.length; ) {
            const length = bytes.readInt32BE(offset + 1);
            combiner.add(dataRowFields(bytes.subarray(offset + 5, offset + 1 + length)));
            offset += 1 + length;
          }
        } catch (error) {
          const e = error instanceof PgError ? error : new PgError({ code: 'XX000', message: (error as Error).message });
          failed = { ok: false, code: e.code, message: e.message, hint: e.hint };
        }
      }
      task.port.postMessage({ ack: true });
      if (!message.end) return;
      task.port.close();
      if (failed) return resolve(failed);
      resolve({ ok: true, copyText: combiner.copyText(), groups: combiner.groupCount, folding: combiner.folding });
    });
  });
}
