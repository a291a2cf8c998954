// Runs an IntermediatePlan: on the finishing node's session, a transaction of the proxy's holds a temporary table
// per piece; each piece's plan runs with its rows going into that table's COPY instead of to the client (its own
// use of the finishing node goes through a connection of its own, since the session's is receiving), then the
// outer statement runs on the session and its answer goes to the client. Inside a client's transaction the next
// tier answers instead, so that every read sees the transaction's writes.

import type { DistributedPlan, IntermediatePlan } from '../planner/distributed-plan';
import type { BackendConnection } from '../backend/backend-connection';
import { dataRowFields } from '../protocol/data-row';
import { PgError, SqlState } from '../protocol/errors';
import { BackendCode } from '../protocol/message-codes';
import type { FieldDescription } from '../protocol/row-description';
import { describeStatement } from '../backend/describe-statement';
import { quoteIdent } from '../catalog/partition-rule';
import type { ClientSink } from './client-sink';
import type { ExecutionOutcome, ExecutionPort, StepStats } from './execution-port';
import { CopyStream, runQuiet } from './intermediate-result';

type Run = (plan: DistributedPlan, port: ExecutionPort) => Promise<ExecutionOutcome>;

export async function executeIntermediate(plan: IntermediatePlan, port: ExecutionPort, run: Run): Promise<ExecutionOutcome> {
  const final = port.connectionFor(plan.finalNode);
  if (final.txStatus !== 'I') {
    return { ok: false, fallback: true, error: new PgError({ code: SqlState.featureNotSupported, message: 'inside a transaction block the rows are gathered, so the read sees the transaction\'s writes' }), errorFrame: null };
  }
  const stats: StepStats[] = [];
  const begun = await runQuiet(final, 'BEGIN');
  if (begun) return { ok: false, error: begun.error, errorFrame: begun.frame };
  let failed = true;
  try {
    for (const piece of plan.pieces) {
      const started = process.hrtime.bigint();
      const { fields } = await describeStatement(final, piece.sql);
      const typeNames = await formatTypes(final, fields);
      const columns = uniqueNames(fields.map((f) => f.name)).map((name, i) => `${quoteIdent(name)} ${typeNames[i]}`);
      const table = `pg_temp.${piece.name}`;
      const copy = await CopyStream.open(final, `CREATE TEMPORARY TABLE ${table} (${columns.join(', ')}) ON COMMIT DROP; COPY ${table} FROM STDIN`);
      if (!(copy instanceof CopyStream)) return { ok: false, error: copy.error, errorFrame: copy.frame };
      let source: BackendConnection | null = null;
      let shipped = 0;
      let overLimit = false;
      let waiting: Promise<void> | null = null;
      const sink: ClientSink = {
        write: (bytes) => {
          if (bytes[0] !== BackendCode.dataRow || overLimit) return true;
          shipped += bytes.length;
          if (shipped > port.intermediateResultLimit) {
            overLimit = true;
            return true;
          }
          const pending = copy.write(dataRowFields(bytes.subarray(5)));
          if (!pending) return true;
          waiting = pending.then(() => void (waiting = null));
          return false;
        },
        onceDrained: (callback) => (waiting ? void waiting.then(callback) : callback()),
        closed: false,
      };
      const piecePort: ExecutionPort = {
        ...port,
        sink,
        // The piece's own use of the finishing node goes through a connection of its own: the session's is copying.
        connectionFor: (node) => {
          if (node !== plan.finalNode) return port.connectionFor(node);
          if (!source) throw new Error('source connection not ready');
          return source;
        },
      };
      source = await port.sourceConnection(plan.finalNode);
      let outcome: ExecutionOutcome;
      try {
        outcome = await run(piece.plan, piecePort);
      } finally {
        port.releaseSource(source);
      }
      const copied = await copy.finish(outcome.ok && !overLimit ? undefined : 'the piece failed');
      if (overLimit) {
        return {
          ok: false,
          error: new PgError({ code: SqlState.programLimitExceeded, message: `the subquery ${piece.name} returns more than intermediate_result_limit (${port.intermediateResultLimit} bytes)`, hint: 'filter or aggregate it more, or raise intermediate_result_limit' }),
          errorFrame: null,
        };
      }
      if (!outcome.ok) return outcome;
      if (copied) return { ok: false, error: copied.error, errorFrame: copied.frame };
      const analyzed = await runQuiet(final, `ANALYZE ${table}`);
      if (analyzed) return { ok: false, error: analyzed.error, errorFrame: analyzed.frame };
      stats.push({ step: `${piece.name} on node ${plan.finalNode}`, rows: outcome.rows, ms: Number(process.hrtime.bigint() - started) / 1e6 });
      stats.push(...outcome.stats.map((s) => ({ ...s, step: `  ${s.step}` })));
    }
    const outcome = await run(plan.outer, port);
    if (!outcome.ok) return outcome;
    failed = false;
    return { ok: true, rows: outcome.rows, stats: [...stats, ...outcome.stats] };
  } finally {
    if (!final.closed) await runQuiet(final, failed || (final.txStatus as string) === 'E' ? 'ROLLBACK' : 'COMMIT');
  }
}

/** Each column's type as SQL names it, with its modifier (numeric(15,2), character(1), ...). */
async function formatTypes(connection: BackendConnection, fields: readonly FieldDescription[]): Promise<string[]> {
  if (fields.length === 0) return [];
  const result = await connection.query(`SELECT ${fields.map((f) => `pg_catalog.format_type(${f.typeOid}, ${f.typeModifier < 0 ? 'NULL' : f.typeModifier})`).join(', ')}`);
  return result.rows[0].map((name) => name!);
}

/** Column names made unique (a table cannot have two columns of one name, a subquery's result can). */
function uniqueNames(names: readonly string[]): string[] {
  const seen = new Set<string>();
  return names.map((name) => {
    let unique = name;
    for (let n = 2; seen.has(unique); n++) unique = `${name}_${n}`;
    seen.add(unique);
    return unique;
  });
}

