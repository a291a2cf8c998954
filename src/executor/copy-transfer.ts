// Streams a COPY TO STDOUT from one node into COPY FROM STDIN on others, frame by frame: CopyData from a node
// is byte for byte the CopyData a client sends, so rows pass through undecoded, with back-pressure.

import { serialize } from 'pg-protocol';
import type { BackendConnection } from '../backend/backend-connection';
import { decodeBackendNotice, pgErrorFromBackend } from '../protocol/backend-error';
import type { PgError } from '../protocol/errors';
import { BackendCode } from '../protocol/message-codes';

/** Runs a COPY statement, passing its frames on; resolves with its command tag, rejects with the node's error. */
async function exchange(connection: BackendConnection, sql: string, onFrame: (code: number, raw: Buffer) => void, readyForData?: () => void): Promise<string> {
  let error: PgError | null = null;
  let tag = '';
  await connection.exchange([serialize.query(sql)], (frame) => {
    if (frame.code === BackendCode.errorResponse) error = pgErrorFromBackend(decodeBackendNotice(frame));
    else if (frame.code === BackendCode.commandComplete) tag = frame.payload.toString('utf8', 0, frame.payload.length - 1);
    else if (frame.code === BackendCode.copyInResponse) readyForData?.();
    onFrame(frame.code, frame.raw);
  });
  if (error) throw error;
  return tag;
}

/** How often a long copy reports how far it got: a row count, so the same copy reports the same lines. */
export const copyProgressRows = 100_000;

/**
 * Copies rows from `source` (a COPY ... TO STDOUT) into every target (a COPY ... FROM STDIN); returns the row count.
 * `progress` hears the rows sent so far each `copyProgressRows` rows (PostgreSQL sends one CopyData per row).
 */
export async function copyBetweenNodes(source: BackendConnection, copyOut: string, targets: readonly BackendConnection[], copyIn: string, progress?: (rowsSent: number) => void): Promise<number> {
  let ready = 0;
  let startSource!: () => void;
  const allReady = new Promise<void>((r) => (startSource = r));
  const sinks = targets.map((target) =>
    exchange(target, copyIn, () => undefined, () => {
      if (++ready === targets.length) startSource();
    }),
  );
  // A target that fails before it is ready must not leave the source waiting.
  const failed = Promise.race(sinks.map((s) => s.then(() => new Promise<never>(() => undefined))));
  if (targets.length === 0) startSource();
  await Promise.race([allReady, failed]);
  let waiting = false;
  let tag: string;
  try {
    let sent = 0;
    tag = await exchange(source, copyOut, (code, raw) => {
      if (code !== BackendCode.copyData) return;
      if (++sent % copyProgressRows === 0) progress?.(sent);
      let full = false;
      for (const target of targets) if (!target.write(raw)) full = true;
      if (full && !waiting) {
        waiting = true;
        source.pause();
        let pending = targets.length;
        for (const target of targets) target.onceDrained(() => {
          if (--pending === 0) {
            waiting = false;
            source.resume();
          }
        });
      }
    });
  } catch (error) {
    for (const target of targets) target.write(serialize.copyFail('the source node failed'));
    await Promise.allSettled(sinks);
    throw error;
  }
  for (const target of targets) target.write(serialize.copyDone());
  await Promise.all(sinks);
  return Number(tag.split(' ')[1] ?? 0);
}
