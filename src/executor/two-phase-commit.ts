// Atomic commit across nodes without a table of its own: every other node prepares, then the first node (the
// decider) commits its transaction in one phase; that commit is the decision, durable in its own WAL. The
// decider's transaction id is written into the prepared transactions' name, so after a crash any node's prepared
// transaction is resolved by asking the decider what became of that id (txid_status): committed → commit,
// anything else → roll back. The decider never prepares, so it may hold what PREPARE refuses: the temporary
// tables a distributed read leaves in the transaction of the node that finishes it.

import { randomBytes } from 'node:crypto';
import { describeNode } from '../cluster/backend-node';
import { log } from '../log';
import type { BackendConnection } from '../wire/backend-connection';
import { PgError, SqlState } from '../wire/errors';
import { quoteLiteral } from '../catalog/partition-rule';

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

/**
 * Commits the open transaction of each connection atomically; the first connection decides. Resolves when every
 * node committed; rejects, after rolling back everywhere, when a node could not prepare.
 */
export async function commitEverywhere(connections: readonly BackendConnection[]): Promise<void> {
  const [decider, ...others] = connections;
  let gid: string;
  const prepared: BackendConnection[] = [];
  try {
    const xid = (await decider.query('SELECT txid_current()::text')).rows[0][0]!;
    gid = gidFor(decider.node.id, xid);
    for (const connection of others) {
      await connection.query(`PREPARE TRANSACTION ${quoteLiteral(gid)}`);
      if (connection.txStatus !== 'I') throw new PgError({ code: SqlState.internalError, message: `${describeNode(connection.node)} did not prepare` });
      prepared.push(connection);
    }
  } catch (error) {
    await Promise.all(
      connections.map((c) => (prepared.includes(c) ? c.query(`ROLLBACK PREPARED ${quoteLiteral(gid!)}`) : c.query('ROLLBACK')).catch(() => undefined)),
    );
    throw error;
  }
  if (commitFailpoints.afterPrepare) throw new FailpointError('failpoint after prepare');
  try {
    // COMMIT of a transaction that failed answers ROLLBACK, without an error.
    const { tags } = await decider.query('COMMIT');
    if (tags[0] !== 'COMMIT') throw new PgError({ code: SqlState.transactionRollback, message: `${describeNode(decider.node)} rolled the transaction back at commit` });
  } catch (error) {
    // No decision was taken: every other node rolls back.
    if (decider.txStatus !== 'I') await decider.query('ROLLBACK').catch(() => undefined);
    await Promise.all(others.map((c) => c.query(`ROLLBACK PREPARED ${quoteLiteral(gid)}`).catch(() => undefined)));
    throw error;
  }
  if (commitFailpoints.afterDecision) throw new FailpointError('failpoint after decision');
  for (const connection of others) {
    try {
      await connection.query(`COMMIT PREPARED ${quoteLiteral(gid)}`);
    } catch (error) {
      // The decision is durable on the decider: recovery finishes this node's commit when it is reachable again.
      log('error', 'commit_prepared_failed', { node: connection.node.id, gid, error: (error as Error).message });
    }
  }
}

/**
 * Resolves parapool's prepared transactions left on the nodes of one database, asking each one's decider (among
 * `connections`, by node id) what became of it. Returns how many it committed and rolled back; a transaction
 * whose decider is not reachable stays prepared and is logged.
 */
export async function recoverInDoubt(connections: readonly BackendConnection[]): Promise<{ committed: number; rolledBack: number }> {
  const byNode = new Map(connections.map((c) => [c.node.id, c]));
  let committed = 0;
  let rolledBack = 0;
  for (const connection of connections) {
    const pending = await connection.query(
      `SELECT gid FROM pg_prepared_xacts WHERE database = current_database() AND gid LIKE ${quoteLiteral(gidPrefix + '%')}`,
    );
    for (const [gid] of pending.rows) {
      const parsed = parseGid(gid!);
      const decider = parsed ? byNode.get(parsed.decider) : undefined;
      if (!parsed || !decider) {
        log('error', 'in_doubt_unresolved', { node: connection.node.id, gid: gid!, reason: parsed ? `decider node ${parsed.decider} is not in service` : 'unknown name' });
        continue;
      }
      const status = (await decider.query(`SELECT txid_status(${parsed.xid})`)).rows[0][0];
      const commit = status === 'committed';
      await connection.query(`${commit ? 'COMMIT' : 'ROLLBACK'} PREPARED ${quoteLiteral(gid!)}`);
      if (commit) committed++;
      else rolledBack++;
      log('info', 'in_doubt_resolved', { node: connection.node.id, gid: gid!, outcome: commit ? 'committed' : 'rolled back' });
    }
  }
  return { committed, rolledBack };
}
