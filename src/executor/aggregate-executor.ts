// Runs an AggregatePlan: partial states from every node, folded by group at the proxy, shipped into a temporary
// table on the finishing node, which runs the final SQL; its answer is relayed to the client as its own bytes.

import type { AggregatePlan } from '../planner/distributed-plan';
import { dataRowFields } from '../wire/data-row';
import { PgError, SqlState } from '../wire/errors';
import { decodeRowDescription } from '../wire/row-description';
import type { ExecutionOutcome, ExecutionPort, StepStats } from './execution-port';
import { firstError, forEachRow, FragmentStream, whenDescribed } from './fragment-stream';
import { copyInto, FinalNodeTransaction, relayFinal } from './intermediate-result';
import { PartialCombiner } from './partial-combine';

export async function executeAggregate(plan: AggregatePlan, port: ExecutionPort): Promise<ExecutionOutcome> {
  const started = process.hrtime.bigint();
  // Asked before the fragments start: the connection it asks on is about to run one.
  const textBytewise = await port.textOrderIsBytewise();
  const streams = plan.fragment.nodes.map((node) => new FragmentStream(port.connectionFor(node), plan.fragment.sql));
  const settle = async () => {
    for (const stream of streams) stream.discard();
    await Promise.all(streams.map((s) => s.finished));
  };
  await whenDescribed(streams);
  let failed = firstError(streams);
  if (failed || !streams[0].rowDescription) {
    await settle();
    return { ok: false, error: failed?.error ?? new PgError({ code: SqlState.internalError, message: 'a fragment returned no rows description' }), errorFrame: failed?.frame ?? null };
  }
  const fields = decodeRowDescription(streams[0].rowDescription.subarray(5));
  const combiner = PartialCombiner.create(fields, plan.groupColumns, plan.combine, textBytewise, port.mergeMemoryLimit);
  try {
    await forEachRow(streams, (frame) => combiner.add(dataRowFields(frame.payload)));
  } catch (error) {
    await settle();
    if (error instanceof PgError) return { ok: false, error, errorFrame: null };
    throw error;
  }
  failed = firstError(streams);
  await settle();
  if (failed) return { ok: false, error: failed.error, errorFrame: failed.frame };
  const combinedAt = process.hrtime.bigint();

  const connection = port.connectionFor(plan.finalNode);
  const transaction = new FinalNodeTransaction(connection);
  const table = `pg_temp.${port.temporaryName('partials')}`;
  transaction.track(table);
  const columns = fields.map((_, i) => `c${i}`).join(', ');
  const create = `${transaction.prelude}CREATE TEMPORARY TABLE ${table} (${columns})${transaction.onCommit} AS ${plan.fragment.sql} WITH NO DATA; COPY ${table} FROM STDIN`;
  let failure = await copyInto(connection, create, async (send) => {
    for (const row of combiner.rows()) await send(row);
  });
  let rows = 0;
  if (!failure) {
    const outcome = await relayFinal(connection, plan.finalSql.replace('{{partials}}', table), port.sink);
    failure = outcome.failure;
    rows = outcome.rows;
  }
  await transaction.finish(failure !== null);
  if (failure) return { ok: false, error: failure.error, errorFrame: failure.frame };
  const now = process.hrtime.bigint();
  const stats: StepStats[] = streams.map((s, i) => ({ step: `fragment on node ${plan.fragment.nodes[i]}`, rows: s.rowCount, ms: s.elapsedMs }));
  stats.push({ step: combiner.folding ? 'combine at the proxy' : 'collect at the proxy (no exact fold for these types)', rows: combiner.groupCount, ms: Number(combinedAt - started) / 1e6 });
  stats.push({ step: `final on node ${plan.finalNode}`, rows, ms: Number(now - combinedAt) / 1e6 });
  return { ok: true, rows, stats };
}
