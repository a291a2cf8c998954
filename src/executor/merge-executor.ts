// Runs a MergePlan: the fragment on every node at once, then a k-way merge of the sorted streams (or their
// concatenation when the query does not order), OFFSET and LIMIT applied as rows pass, hidden sort columns dropped.
// Rows are relayed as the nodes' bytes when nothing is dropped; nothing is held beyond the streams' bounded queues.

import type { MergePlan, SortKey } from '../planner/distributed-plan';
import { dataRowFields, encodeDataRow } from '../protocol/data-row';
import { PgError, SqlState } from '../protocol/errors';
import { decodeRowDescription, encodeRowDescription } from '../protocol/row-description';
import { serverMessages } from '../protocol/server-messages';
import type { ExecutionPort, ExecutionOutcome, StepStats } from './execution-port';
import { firstError, FragmentStream, settleStreams, whenDescribed } from './fragment-stream';
import { sortKeyComparator } from './value-order';

const textLikeTypes = new Set([18, 19, 25, 1042, 1043]);

export async function executeMerge(plan: MergePlan, port: ExecutionPort): Promise<ExecutionOutcome> {
  // Asked before the fragments start: the connection it asks on is about to run one.
  const textBytewise = plan.sortKeys.length > 0 ? plan.defaultCollation && (await port.textOrderIsBytewise()) : true;
  // Every node needed is asked for before any starts: one out of service fails the statement with nothing to undo.
  const connections = plan.fragment.nodes.map((node) => port.connectionFor(node));
  const streams = connections.map((c) => new FragmentStream(c, plan.fragment.sql, port.activity));
  const started = process.hrtime.bigint();
  const settle = () => settleStreams(streams, firstError(streams) !== null);
  await whenDescribed(streams);
  const failed = firstError(streams);
  if (failed || !streams[0].rowDescription) {
    await settle();
    return { ok: false, error: failed?.error ?? new PgError({ code: SqlState.internalError, message: 'a fragment returned no rows description' }), errorFrame: failed?.frame ?? null };
  }
  const fields = decodeRowDescription(streams[0].rowDescription.subarray(5));
  const visible = fields.length - plan.hiddenColumns;
  const columnOf = (key: SortKey) => (key.column.from === 'start' ? key.column.index : fields.length - key.column.index);
  const keyColumns = plan.sortKeys.map(columnOf);
  const comparators: ((a: Buffer | null, b: Buffer | null) => number)[] = [];
  for (let i = 0; i < plan.sortKeys.length; i++) {
    const key = plan.sortKeys[i];
    const field = fields[keyColumns[i]];
    const comparator = sortKeyComparator(field.typeOid, key.descending, key.nullsFirst);
    if (!comparator || (textLikeTypes.has(field.typeOid) && !textBytewise)) {
      await settle();
      return {
        ok: false,
        error: new PgError({
          code: SqlState.featureNotSupported,
          message: `cannot merge rows of several nodes ordered by column "${field.name}" of type ${field.typeOid}: the proxy does not reproduce that type's sort order`,
          hint: 'order by a column of a numeric, date/time, boolean or uuid type, or use the C collation',
        }),
        errorFrame: null,
        fallback: true,
      };
    }
    comparators.push(comparator);
  }
  port.sink.write(plan.hiddenColumns > 0 ? encodeRowDescription(fields.slice(0, visible)) : streams[0].rowDescription);

  let offset = plan.limit?.offset ?? 0n;
  let remaining = plan.limit?.count ?? -1n;
  let sent = 0;
  const emit = (frame: { raw: Buffer; payload: Buffer }): boolean => {
    if (offset > 0n) {
      offset--;
      return true;
    }
    if (remaining === 0n) return true;
    if (remaining > 0n) remaining--;
    sent++;
    return port.sink.write(plan.hiddenColumns > 0 ? encodeDataRow(dataRowFields(frame.payload).slice(0, visible)) : frame.raw);
  };
  const drained = () => new Promise<void>((resolve) => port.sink.onceDrained(resolve));

  if (keyColumns.length === 0) {
    // Unordered: rows in arrival order, from whichever node has them.
    for (;;) {
      if (firstError(streams) || remaining === 0n) break;
      let moved = false;
      let full = false;
      for (const stream of streams) {
        let frame;
        while ((frame = stream.shift())) {
          moved = true;
          if (!emit(frame)) full = true;
          if (remaining === 0n) break;
        }
      }
      if (full) await drained();
      if (!moved) {
        const live = streams.filter((s) => !s.done);
        if (live.length === 0) break;
        await Promise.race(live.map((s) => s.whenReady()));
      }
    }
  } else {
    const heads: ((Buffer | null)[] | null)[] = streams.map(() => null);
    const keysOf = (frame: { payload: Buffer }) => {
      const all = dataRowFields(frame.payload);
      return keyColumns.map((c) => all[c]);
    };
    const compare = (a: (Buffer | null)[], b: (Buffer | null)[]) => {
      for (let i = 0; i < comparators.length; i++) {
        const result = comparators[i](a[i], b[i]);
        if (result !== 0) return result;
      }
      return 0;
    };
    for (;;) {
      if (firstError(streams) || remaining === 0n) break;
      // Every live stream needs a head row before the smallest can be chosen.
      let waiting = false;
      for (let i = 0; i < streams.length; i++) {
        if (heads[i] === null) {
          const frame = streams[i].peek();
          if (frame) heads[i] = keysOf(frame);
          else if (!streams[i].done) {
            await streams[i].whenReady();
            waiting = true;
            break;
          }
        }
      }
      if (waiting) continue;
      let best = -1;
      for (let i = 0; i < streams.length; i++) {
        if (heads[i] !== null && (best < 0 || compare(heads[i]!, heads[best]!) < 0)) best = i;
      }
      if (best < 0) break;
      const frame = streams[best].shift()!;
      heads[best] = null;
      if (!emit(frame)) await drained();
    }
  }
  const failure = firstError(streams);
  await settle();
  if (failure) return { ok: false, error: failure.error, errorFrame: failure.frame };
  port.sink.write(serverMessages.commandComplete(`SELECT ${sent}`));
  const stats: StepStats[] = streams.map((s, i) => ({ step: `fragment on node ${plan.fragment.nodes[i]}`, rows: s.rowCount, ms: s.elapsedMs }));
  stats.push({ step: 'merge', rows: sent, ms: Number(process.hrtime.bigint() - started) / 1e6 });
  return { ok: true, rows: sent, stats };
}
