// Runs a GatherPlan: for each distributed table the query reads, the finishing node copies its own rows into a
// temporary table and the other nodes' rows stream in through the proxy (COPY, all nodes at once); then that node
// runs the query against the temporary tables and its answer is relayed to the client.

import type { GatherPlan } from '../planner/distributed-plan';
import { quoteIdent } from '../catalog/partition-rule';
import { PgError, SqlState } from '../protocol/errors';
import { gatheredTableName } from '../planner/gather-planner';
import { dataRowFields } from '../protocol/data-row';
import type { ExecutionOutcome, ExecutionPort, StepStats } from './execution-port';
import { firstError, forEachRow, FragmentStream, settleStreams } from './fragment-stream';
import { copyInto, FinalNodeTransaction, relayFinal, runQuiet, type NodeFailure } from './intermediate-result';

export async function executeGather(plan: GatherPlan, port: ExecutionPort): Promise<ExecutionOutcome> {
  const connection = port.connectionFor(plan.finalNode);
  // Every node needed is asked for before anything starts: one out of service fails the statement with nothing to undo.
  const sources = plan.tables.map((table) => table.fragment.nodes.map((node) => port.connectionFor(node)));
  const transaction = new FinalNodeTransaction(connection);
  const stats: StepStats[] = [];
  const names = plan.tables.map(() => `pg_temp.${port.temporaryName('gather')}`);
  const statements = plan.tables.map((t, i) => {
    transaction.track(names[i]);
    const key = t.primaryKey.length > 0 ? `; ALTER TABLE ${names[i]} ADD PRIMARY KEY (${t.primaryKey.map(quoteIdent).join(', ')})` : '';
    return `CREATE TEMPORARY TABLE ${names[i]}${transaction.onCommit} AS ${t.fragment.sql} WITH NO DATA${key}; INSERT INTO ${names[i]} ${t.fragment.sql}`;
  });
  let failure: NodeFailure | null = null;
  let result: ExecutionOutcome | null = null;
  const localStarted = process.hrtime.bigint();
  if (plan.tables.length > 0) failure = await runQuiet(connection, `${transaction.prelude}${statements.join('; ')}`);
  if (!failure) stats.push({ step: `local rows on node ${plan.finalNode}`, rows: 0, ms: Number(process.hrtime.bigint() - localStarted) / 1e6 });
  let shipped = 0;
  let overLimit = false;
  for (let t = 0; t < plan.tables.length && !failure && !result; t++) {
    const table = plan.tables[t];
    const streams = sources[t].map((source) => new FragmentStream(source, table.fragment.sql, port.activity));
    const copied = await copyInto(connection, `COPY ${names[t]} FROM STDIN`, (send) =>
      forEachRow(streams, (frame) => {
        if (overLimit) return;
        shipped += frame.raw.length;
        if (shipped > port.intermediateResultLimit) {
          overLimit = true;
          void settleStreams(streams, true);
          return;
        }
        return send(dataRowFields(frame.payload));
      }),
    ).catch(async (error: unknown) => {
      await settleStreams(streams, true);
      throw error;
    });
    const streamFailure = firstError(streams);
    await settleStreams(streams, streamFailure !== null || overLimit);
    streams.forEach((s, i) => stats.push({ step: `${table.table} from node ${table.fragment.nodes[i]}`, rows: s.rowCount, ms: s.elapsedMs }));
    if (overLimit) {
      result = {
        ok: false,
        error: new PgError({
          code: SqlState.programLimitExceeded,
          message: `this statement would ship more than intermediate_result_limit (${port.intermediateResultLimit} bytes) of rows between nodes`,
          detail: `copying ${table.table} to node ${plan.finalNode}`,
          hint: 'filter the distributed tables more, join them on their distribution keys, or raise intermediate_result_limit',
        }),
        errorFrame: null,
      };
    } else if (streamFailure) result = { ok: false, error: streamFailure.error, errorFrame: streamFailure.frame };
    else failure = copied;
  }
  if (!failure && !result && plan.tables.length > 0) failure = await runQuiet(connection, `ANALYZE ${names.join(', ')}`);
  let rows = 0;
  if (!failure && !result) {
    let sql = plan.finalSql;
    // Highest first: parapool_gathered_1 is a prefix of parapool_gathered_10.
    for (let i = plan.tables.length - 1; i >= 0; i--) sql = sql.split(`pg_temp.${gatheredTableName(i)}`).join(names[i]);
    const finalStarted = process.hrtime.bigint();
    const outcome = await relayFinal(connection, sql, port.sink, port.activity);
    failure = outcome.failure;
    rows = outcome.rows;
    stats.push({ step: `final on node ${plan.finalNode}`, rows, ms: Number(process.hrtime.bigint() - finalStarted) / 1e6 });
  }
  await transaction.finish(failure !== null || result !== null);
  if (result) return result;
  if (failure) return { ok: false, error: failure.error, errorFrame: failure.frame };
  return { ok: true, rows, stats };
}
