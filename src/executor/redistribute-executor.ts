// Runs a BroadcastPlan: every target node opens a transaction of the proxy's and a temporary table per copied
// table; each source node's filtered rows (read on a connection of its own, so all nodes can send and receive at
// once) stream through the proxy into every target's COPY; then the inner plan runs on the targets, which see the
// copies, and the transactions end, dropping them. Inside a client's transaction the next tier answers instead:
// its reads must see the transaction's own writes, which only its own sessions do.

import { broadcastTableName } from '../planner/broadcast-planner';
import type { BroadcastPlan, DistributedPlan } from '../planner/distributed-plan';
import { quoteIdent } from '../catalog/partition-rule';
import type { BackendConnection } from '../wire/backend-connection';
import { dataRowFields } from '../wire/data-row';
import { PgError, SqlState } from '../wire/errors';
import type { ExecutionOutcome, ExecutionPort, StepStats } from './execution-port';
import { firstError, forEachRow, FragmentStream } from './fragment-stream';
import { CopyStream, runQuiet, type NodeFailure } from './intermediate-result';

export async function executeBroadcast(plan: BroadcastPlan, port: ExecutionPort, run: (plan: DistributedPlan, port: ExecutionPort) => Promise<ExecutionOutcome>): Promise<ExecutionOutcome> {
  const targets = plan.targets.map((n) => port.connectionFor(n));
  if (targets.some((t) => t.txStatus !== 'I')) {
    return { ok: false, fallback: true, error: new PgError({ code: SqlState.featureNotSupported, message: 'a broadcast join inside a transaction block is answered by gathering, so it sees the transaction\'s writes' }), errorFrame: null };
  }
  const stats: StepStats[] = [];
  let failure: { error: PgError; frame: Buffer | null } | null = null;
  const opened: BackendConnection[] = [];
  try {
    for (let t = 0; t < plan.tables.length && !failure; t++) {
      const table = plan.tables[t];
      const name = `pg_temp.${broadcastTableName(t)}`;
      const key = table.primaryKey.length > 0 ? `; ALTER TABLE ${name} ADD PRIMARY KEY (${table.primaryKey.map(quoteIdent).join(', ')})` : '';
      const create = `${t === 0 ? 'BEGIN; ' : ''}CREATE TEMPORARY TABLE ${name} ON COMMIT DROP AS ${table.fragment.sql} WITH NO DATA${key}; COPY ${name} FROM STDIN`;
      const copies = await Promise.all(targets.map((target) => CopyStream.open(target, create)));
      if (t === 0) opened.push(...targets);
      const refused = copies.find((c): c is NodeFailure => !(c instanceof CopyStream));
      const streams: FragmentStream[] = [];
      const sources: BackendConnection[] = [];
      if (!refused) {
        for (const node of table.fragment.nodes) {
          const source = await port.sourceConnection(node);
          sources.push(source);
          streams.push(new FragmentStream(source, table.fragment.sql));
        }
        await forEachRow(streams, (frame) => {
          const fields = dataRowFields(frame.payload);
          const waits = (copies as CopyStream[]).map((c) => c.write(fields)).filter((w): w is Promise<void> => w !== undefined);
          return waits.length > 0 ? Promise.all(waits).then(() => undefined) : undefined;
        });
      }
      const streamFailure = firstError(streams);
      const ends = await Promise.all(copies.map((c) => (c instanceof CopyStream ? c.finish(streamFailure ? 'a source failed' : undefined) : Promise.resolve(c))));
      for (const stream of streams) stream.discard();
      await Promise.all(streams.map((s) => s.finished));
      for (const source of sources) port.releaseSource(source);
      streams.forEach((s, i) => stats.push({ step: `${table.table} from node ${table.fragment.nodes[i]} to ${targets.length} nodes`, rows: s.rowCount, ms: s.elapsedMs }));
      failure = streamFailure ?? ends.find((e) => e !== null) ?? null;
    }
    if (!failure) {
      const analyzed = await Promise.all(targets.map((target) => runQuiet(target, `ANALYZE ${plan.tables.map((_, i) => `pg_temp.${broadcastTableName(i)}`).join(', ')}`)));
      failure = analyzed.find((a) => a !== null) ?? null;
    }
    if (failure) return { ok: false, error: failure.error, errorFrame: failure.frame };
    const outcome = await run(plan.inner, port);
    if (!outcome.ok) return outcome;
    return { ok: true, rows: outcome.rows, stats: [...stats, ...outcome.stats] };
  } finally {
    await Promise.all(opened.filter((c) => !c.closed).map((c) => runQuiet(c, c.txStatus === 'T' ? 'COMMIT' : 'ROLLBACK')));
  }
}
