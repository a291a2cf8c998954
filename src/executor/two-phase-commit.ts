// Atomic commit across nodes without a table of its own: every other node prepares, then the first node (the
// decider) commits its transaction in one phase; that commit is the decision, durable in its own WAL. The
// decider's transaction id is written into the prepared transactions' name, so after a crash any node's prepared
// transaction is resolved by asking the decider what became of that id (txid_status): committed → commit,
// aborted → roll back, in progress → wait, since the decider may still commit. The decider never prepares, so it may hold what PREPARE refuses: the temporary
// tables a distributed read leaves in the transaction of the node that finishes it. The decider's id is made
// durable before any node prepares under it (decider-fence.ts), so a crash of the decider cannot hand it out again.

import { randomBytes } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { describeNode } from '../cluster/backend-node';
import { log } from '../log';
import type { BackendConnection } from '../backend/backend-connection';
import { PgError, SqlState } from '../protocol/errors';
import { quoteLiteral } from '../catalog/partition-rule';
import { fenceDeciderId } from './decider-fence';

export const gidPrefix = 'parapool:';

/** Hooks that tests arm to stop the proxy between the steps of a commit, as a crash would. */
export const commitFailpoints = { afterPrepare: false, afterDecision: false };

export class FailpointError extends Error {}

/** parapool:<decider node>:<decider xid>:<random> */
function gidFor(deciderNode: number, xid: string): string {
  return `${gidPrefix}${deciderNode}:${xid}:${randomBytes(6).toString('hex')}`;
}

function parseGid(gid: string): { decider: number; xid: string } | null {
  const match = /^parapool:(\d+):(\d+):[0-9a-f]+$/.exec(gid);
  return match ? { decider: Number(match[1]), xid: match[2] } : null;
}

/** The gids of the commits this process is running: recovery leaves them to the commit that owns them. */
const committing = new Set<string>();

/** How long recovery waits for a decider's transaction that is still in progress to end. */
const settleTimeoutMs = 5_000;

/**
 * The decider's one-phase COMMIT, resolving to its command tag (ROLLBACK for a transaction that failed). A
 * session whose client sent COMMIT through the extended protocol has its own messages run there instead.
 */
export type CommitDecision = (decider: BackendConnection) => Promise<string | undefined>;

async function commitOnDecider(decider: BackendConnection): Promise<string | undefined> {
  return (await decider.query('COMMIT')).tags[0];
}

/**
 * Commits the open transaction of each connection atomically; the first connection decides. Resolves when the
 * decider committed (a node that then fails its COMMIT PREPARED is finished by recovery); rejects, after rolling
 * back everywhere, when a node could not prepare or the decider did not commit; rejects with 08007, leaving the
 * others prepared for recovery, when the decider's connection was lost during its COMMIT.
 */
export async function commitEverywhere(
  connections: readonly BackendConnection[],
  decide: CommitDecision = commitOnDecider,
  /**
   * Whether a node whose connection was lost before it prepared may be left out instead of failing the commit:
   * true when the transaction's writes are all on the other nodes too (replicated tables) and the node is out
   * of service. The decider is never left out.
   */
  mayLeaveOut: (connection: BackendConnection) => Promise<boolean> = async () => false,
): Promise<void> {
  const [decider, ...others] = connections;
  let gid = '';
  const prepared: BackendConnection[] = [];
  try {
    try {
      // N.B. the decider's commit is the decision: it must reach the decider's disk before any other node commits,
      // so an asynchronous commit (synchronous_commit = off) is made a local flush for this one transaction.
      const xid = (await decider.query(
        "SELECT txid_current()::text, CASE WHEN current_setting('synchronous_commit') = 'off' THEN set_config('synchronous_commit', 'local', true) END",
      )).rows[0][0]!;
      gid = gidFor(decider.node.id, xid);
      committing.add(gid);
      if (others.length > 0) await fenceDeciderId(decider);
      for (const connection of others) {
        try {
          await connection.query(`PREPARE TRANSACTION ${quoteLiteral(gid)}`);
        } catch (error) {
          if (connection.closed && (await mayLeaveOut(connection))) {
            log('warning', 'commit_left_node_out', { node: connection.node.id, gid, reason: (error as Error).message });
            continue;
          }
          throw error;
        }
        if (connection.txStatus !== 'I') throw new PgError({ code: SqlState.internalError, message: `${describeNode(connection.node)} did not prepare` });
        prepared.push(connection);
      }
    } catch (error) {
      await Promise.all(
        connections.map((c) => (prepared.includes(c) ? c.query(`ROLLBACK PREPARED ${quoteLiteral(gid)}`) : c.query('ROLLBACK')).catch(() => undefined)),
      );
      throw error;
    }
    if (commitFailpoints.afterPrepare) throw new FailpointError('failpoint after prepare');
    const sent = !decider.closed;
    try {
      // COMMIT of a transaction that failed answers ROLLBACK, without an error.
      const tag = await decide(decider);
      if (tag !== 'COMMIT') throw new PgError({ code: SqlState.transactionRollback, message: `${describeNode(decider.node)} rolled the transaction back at commit` });
    } catch (error) {
      if (sent && decider.closed) {
        // The COMMIT may have been carried out before the connection broke: only the decider knows. The others
        // stay prepared; recovery settles them by the decider's answer once it is reachable again.
        log('error', 'commit_outcome_unknown', { node: decider.node.id, gid, error: (error as Error).message });
        throw new PgError({
          code: SqlState.transactionResolutionUnknown,
          message: `lost connection to ${describeNode(decider.node)} during the commit: the transaction may or may not have committed`,
          detail: `The other nodes hold it prepared as ${gid}; recovery commits or rolls it back as that node decided.`,
        });
      }
      // No decision was taken: every other node rolls back.
      if (decider.txStatus !== 'I') await decider.query('ROLLBACK').catch(() => undefined);
      await Promise.all(prepared.map((c) => c.query(`ROLLBACK PREPARED ${quoteLiteral(gid)}`).catch(() => undefined)));
      throw error;
    }
    if (commitFailpoints.afterDecision) throw new FailpointError('failpoint after decision');
    for (const connection of prepared) {
      try {
        await connection.query(`COMMIT PREPARED ${quoteLiteral(gid)}`);
      } catch (error) {
        // The decision is durable on the decider: recovery finishes this node's commit when it is reachable again.
        log('error', 'commit_prepared_failed', { node: connection.node.id, gid, error: (error as Error).message });
      }
    }
  } finally {
    committing.delete(gid);
  }
}

/** What became of a decider's transaction: txid_status, waited on while it is still in progress. */
async function deciderOutcome(decider: BackendConnection, xid: string): Promise<string | null> {
  const deadline = Date.now() + settleTimeoutMs;
  for (;;) {
    let status: string | null;
    try {
      status = (await decider.query(`SELECT txid_status(${xid})`)).rows[0][0];
    } catch (error) {
      // An id past the decider's next one was never written to its disk, so its transaction never committed.
      // Only a decider that crashed before the fence (or a proxy without one) leaves such a name behind.
      if (error instanceof PgError && /is in the future/.test(error.message)) return 'aborted';
      throw error;
    }
    // In progress: a proxy is between the phases, or a dead proxy's backend has not ended yet. Rolling back now
    // would undo half of a transaction the decider may still commit.
    if (status !== 'in progress' || Date.now() >= deadline) return status;
    await sleep(100);
  }
}

/**
 * Resolves parapool's prepared transactions left on the nodes of one database, asking each one's decider (among
 * `connections`, by node id) what became of it: committed → commit, aborted → roll back. Returns how many it
 * committed, rolled back and left prepared: a transaction whose decider is not reachable, is still in progress
 * after settleTimeoutMs, or does not know the transaction stays prepared and is logged. Commits this process is
 * running are not touched.
 */
export async function recoverInDoubt(connections: readonly BackendConnection[]): Promise<{ committed: number; rolledBack: number; unresolved: number }> {
  const byNode = new Map(connections.map((c) => [c.node.id, c]));
  let committed = 0;
  let rolledBack = 0;
  let unresolved = 0;
  const unresolvedBecause = (node: number, gid: string, reason: string) => {
    unresolved++;
    log('error', 'in_doubt_unresolved', { node, gid, reason });
  };
  for (const connection of connections) {
    const pending = await connection.query(
      `SELECT gid FROM pg_prepared_xacts WHERE database = current_database() AND gid LIKE ${quoteLiteral(gidPrefix + '%')}`,
    );
    for (const [gid] of pending.rows) {
      if (committing.has(gid!)) continue;
      const parsed = parseGid(gid!);
      const decider = parsed ? byNode.get(parsed.decider) : undefined;
      if (!parsed || !decider) {
        unresolvedBecause(connection.node.id, gid!, parsed ? `decider node ${parsed.decider} is not reachable` : 'unknown name');
        continue;
      }
      try {
        const status = await deciderOutcome(decider, parsed.xid);
        if (status !== 'committed' && status !== 'aborted') {
          unresolvedBecause(connection.node.id, gid!, `the decider's transaction ${parsed.xid} is ${status ?? 'unknown to node ' + parsed.decider}`);
          continue;
        }
        const commit = status === 'committed';
        await connection.query(`${commit ? 'COMMIT' : 'ROLLBACK'} PREPARED ${quoteLiteral(gid!)}`);
        if (commit) committed++;
        else rolledBack++;
        log('info', 'in_doubt_resolved', { node: connection.node.id, gid: gid!, outcome: commit ? 'committed' : 'rolled back' });
      } catch (error) {
        // e.g. the commit that owns it (another proxy's) finished it meanwhile
        unresolvedBecause(connection.node.id, gid!, (error as Error).message);
      }
    }
  }
  return { committed, rolledBack, unresolved };
}
