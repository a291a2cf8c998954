// Runs a BroadcastPlan or a RepartitionPlan: every target node opens a transaction of the proxy's and a temporary
// table per moved table; each source node's filtered rows (read on a connection of its own, so all nodes can send
// and receive at once) stream through the proxy into the targets' COPY: to all of them (broadcast), or to the one
// the row's join column hashes to (repartition). Then the inner plan runs on the targets, which see the copies,
// and the transactions end, dropping them. Inside a client's transaction the next tier answers instead: its reads
// must see the transaction's own writes, which only the session's own connections do.

import { broadcastTableName } from '../planner/broadcast-planner';
import type { BroadcastPlan, DistributedPlan, GatheredTable, RepartitionPlan } from '../planner/distributed-plan';
import { repartitionTableName } from '../planner/repartition-planner';
import { quoteIdent } from '../catalog/partition-rule';
import type { BackendConnection } from '../backend/backend-connection';
import { dataRowFields } from '../protocol/data-row';
import { PgError, SqlState } from '../protocol/errors';
import { decodeRowDescription } from '../protocol/row-description';
import type { ExecutionOutcome, ExecutionPort, StepStats } from './execution-port';
import { firstError, forEachRow, FragmentStream, settleStreams, whenDescribed } from './fragment-stream';
import { CopyStream, runQuiet, type NodeFailure } from './intermediate-result';
import { groupKeyNormalizerForType } from './value-order';

type Run = (plan: DistributedPlan, port: ExecutionPort) => Promise<ExecutionOutcome>;

/** Join columns of these type families hash alike for equal values (int4 42 and int8 42 alike). */
const typeFamilies: Record<number, string> = { 20: 'integer', 21: 'integer', 23: 'integer', 25: 'text', 1043: 'text' };

function fallback(message: string): ExecutionOutcome {
  return { ok: false, fallback: true, error: new PgError({ code: SqlState.featureNotSupported, message }), errorFrame: null };
}

/** FNV-1a over a string's UTF-16 code units: any fixed function of the canonical text places both sides alike. */
function hashOf(text: string): number {
  let hash = 0x811c9dc5;
  for (let i = 0; i < text.length; i++) {
    hash ^= text.charCodeAt(i);
    hash = Math.imul(hash, 0x01000193);
  }
  return hash >>> 0;
}

export function executeBroadcast(plan: BroadcastPlan, port: ExecutionPort, run: Run): Promise<ExecutionOutcome> {
  return redistribute(plan.tables, plan.targets, broadcastTableName, () => null, plan.inner, port, run);
}

export function executeRepartition(plan: RepartitionPlan, port: ExecutionPort, run: Run): Promise<ExecutionOutcome> {
  return redistribute(plan.tables, plan.targets, repartitionTableName, (i) => plan.tables[i].hashColumn, plan.inner, port, run);
}

async function redistribute(
  tables: readonly GatheredTable[],
  targetNodes: readonly number[],
  name: (index: number) => string,
  hashColumn: (index: number) => number | null,
  inner: DistributedPlan,
  port: ExecutionPort,
  run: Run,
): Promise<ExecutionOutcome> {
  const targets = targetNodes.map((n) => port.connectionFor(n));
  if (targets.some((t) => t.txStatus !== 'I')) return fallback('inside a transaction block the rows are gathered, so the read sees the transaction\'s writes');
  const stats: StepStats[] = [];
  let failure: { error: PgError; frame: Buffer | null } | null = null;
  let family: string | null = null;
  const opened: BackendConnection[] = [];
  try {
    for (let t = 0; t < tables.length && !failure; t++) {
      const table = tables[t];
      const temporary = `pg_temp.${name(t)}`;
      const key = table.primaryKey.length > 0 && hashColumn(t) === null ? `; ALTER TABLE ${temporary} ADD PRIMARY KEY (${table.primaryKey.map(quoteIdent).join(', ')})` : '';
      const create = `${t === 0 ? 'BEGIN; ' : ''}CREATE TEMPORARY TABLE ${temporary} ON COMMIT DROP AS ${table.fragment.sql} WITH NO DATA${key}; COPY ${temporary} FROM STDIN`;
      const copies = await Promise.all(targets.map((target) => CopyStream.open(target, create)));
      if (t === 0) opened.push(...targets);
      const refused = copies.find((c): c is NodeFailure => !(c instanceof CopyStream));
      const streams: FragmentStream[] = [];
      const sources: BackendConnection[] = [];
      let mismatch: string | null = null;
      if (!refused) {
        for (const node of table.fragment.nodes) {
          const source = await port.sourceConnection(node);
          sources.push(source);
          streams.push(new FragmentStream(source, table.fragment.sql, port.activity));
        }
        const writers = copies as CopyStream[];
        const column = hashColumn(t);
        let place: ((fields: (Buffer | null)[]) => number) | null = null;
        if (column !== null) {
          await whenDescribed(streams);
          const description = streams.find((s) => s.rowDescription)?.rowDescription;
          const type = description ? decodeRowDescription(description.subarray(5))[column].typeOid : 0;
          const normalize = groupKeyNormalizerForType(type);
          const typeFamily = typeFamilies[type] ?? (normalize ? `type ${type}` : null);
          if (!normalize || !typeFamily || (family !== null && family !== typeFamily)) mismatch = `join columns of types that do not hash alike (${family ?? 'none'} and ${typeFamily ?? `type ${type}`})`;
          family = typeFamily;
          // NULL never joins: any one node keeps such a row, once, for an outer join to show.
          if (normalize) place = (fields) => (fields[column] === null ? 0 : hashOf(normalize(fields[column]!)) % writers.length);
        }
        if (!mismatch) {
          await forEachRow(streams, (frame) => {
            const fields = dataRowFields(frame.payload);
            if (place) return writers[place(fields)].write(fields);
            const waits = writers.map((c) => c.write(fields)).filter((w): w is Promise<void> => w !== undefined);
            return waits.length > 0 ? Promise.all(waits).then(() => undefined) : undefined;
          });
        }
      }
      const streamFailure = firstError(streams);
      const ends = await Promise.all(copies.map((c) => (c instanceof CopyStream ? c.finish(streamFailure || mismatch ? 'the copy stopped' : undefined) : Promise.resolve(c))));
      await settleStreams(streams, streamFailure !== null || mismatch !== null);
      for (const source of sources) port.releaseSource(source);
      if (mismatch) return fallback(mismatch);
      streams.forEach((s, i) => stats.push({ step: `${table.table} from node ${table.fragment.nodes[i]} to ${hashColumn(t) === null ? `${targets.length} nodes` : 'its join column\'s node'}`, rows: s.rowCount, ms: s.elapsedMs }));
      failure = streamFailure ?? refused ?? ends.find((e) => e !== null) ?? null;
    }
    if (!failure) {
      const analyzed = await Promise.all(targets.map((target) => runQuiet(target, `ANALYZE ${tables.map((_, i) => `pg_temp.${name(i)}`).join(', ')}`)));
      failure = analyzed.find((a) => a !== null) ?? null;
    }
    if (failure) return { ok: false, error: failure.error, errorFrame: failure.frame };
    const outcome = await run(inner, port);
    if (!outcome.ok) return outcome;
    return { ok: true, rows: outcome.rows, stats: [...stats, ...outcome.stats] };
  } finally {
    await Promise.all(opened.filter((c) => !c.closed).map((c) => runQuiet(c, c.txStatus === 'T' ? 'COMMIT' : 'ROLLBACK')));
  }
}
