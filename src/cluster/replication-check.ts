// Streaming replication as the proxy sees it: which node is the primary (pg_is_in_recovery() on each node), and
// every sr_check_period seconds how far each standby is behind the primary (pg_current_wal_lsn() there against
// pg_last_wal_replay_lsn() on the standby) and how it streams (pg_stat_replication on the primary, matched by
// backend_application_nameN). Reads skip a standby past delay_threshold, so a measurement that fails leaves the
// last one in place rather than guess; taking a node out of service is the health check's business, not this.

import { BackendConnection } from '../backend/backend-connection';
import { log } from '../log';
import type { StoredSecret } from '../protocol/password-file';
import { describeNode, type BackendNode } from './backend-node';
import type { ClusterState } from './cluster-state';

/** How the proxy logs in to a node for its own questions (sr_check_user, its password, sr_check_database). */
export interface NodeLogin {
  readonly user: string;
  readonly secret: StoredSecret | null;
  readonly database: string;
  readonly connectTimeoutMs: number;
}

/** Runs SQL on a connection of its own to the node, closed afterwards; each statement is sent alone (ALTER SYSTEM must be). */
export async function queryNode(node: BackendNode, login: NodeLogin, ...statements: string[]): Promise<(string | null)[][][]> {
  const parameters = new Map([['user', login.user], ['database', login.database], ['application_name', 'parapool replication check']]);
  const connection = await BackendConnection.connect({ node, parameters, secret: login.secret, connectTimeoutMs: login.connectTimeoutMs }, 'replication');
  try {
    const results: (string | null)[][][] = [];
    for (const sql of statements) results.push((await connection.query(sql)).rows);
    return results;
  } finally {
    connection.destroy();
  }
}

/** A pg_lsn's text ('16/B374D848') as a byte position. */
export function lsnBytes(lsn: string): bigint {
  const [high, low] = lsn.split('/');
  return (BigInt(`0x${high}`) << 32n) + BigInt(`0x${low}`);
}

export interface RoleSurvey {
  readonly primaries: readonly BackendNode[];
  /** Nodes in service that did not answer, with why. */
  readonly unanswered: readonly { node: BackendNode; error: string }[];
}

/**
 * Asks every node in service pg_is_in_recovery() (a node flagged ALWAYS_PRIMARY is the primary without asking)
 * and records the answers as roles when exactly one node is the primary. Returns what was found.
 */
export async function surveyRoles(cluster: ClusterState, login: NodeLogin): Promise<RoleSurvey> {
  const nodes = cluster.upNodes();
  const answers = await Promise.all(
    nodes.map(async (node) => {
      if (node.flags.alwaysPrimary) return { node, primary: true, error: null };
      try {
        const [rows] = await queryNode(node, login, 'SELECT pg_catalog.pg_is_in_recovery()');
        return { node, primary: rows[0]?.[0] === 'f', error: null };
      } catch (error) {
        return { node, primary: false, error: (error as Error).message };
      }
    }),
  );
  const primaries = answers.filter((a) => a.primary && a.error === null).map((a) => a.node);
  if (primaries.length === 1) {
    cluster.setRole(primaries[0].id, 'primary');
    for (const answer of answers) if (answer.error === null && !answer.primary) cluster.setRole(answer.node.id, 'standby');
  }
  return { primaries, unanswered: answers.filter((a) => a.error !== null).map((a) => ({ node: a.node, error: a.error! })) };
}

/**
 * The primary's WAL position and pg_stat_replication, then each standby's replay position, every period; the
 * results go to each node's `replication` (SHOW pool_nodes, and the load balancer's delay_threshold).
 */
export class ReplicationCheck {
  private timer: NodeJS.Timeout | null = null;
  private round: Promise<void> | null = null;
  private stopped = false;

  constructor(private readonly cluster: ClusterState, private readonly login: NodeLogin, private readonly periodSeconds: number) {}

  start(): void {
    if (this.periodSeconds === 0) return;
    this.schedule(0);
  }

  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    await this.round;
  }

  private schedule(delayMs: number): void {
    if (this.stopped) return;
    this.timer = setTimeout(() => {
      this.round = this.check().catch((error) => log('error', 'replication_check_internal_error', { error: String(error) }));
      void this.round.finally(() => this.schedule(this.periodSeconds * 1000));
    }, delayMs);
    this.timer.unref();
  }

  /** One measurement of every standby in service against the primary. */
  async check(): Promise<void> {
    const primary = this.cluster.mainNode();
    if (!primary) return;
    let primaryLsn: bigint;
    const streams = new Map<string, { state: string; syncState: string; replayLagMs: number }>();
    try {
      const [rows] = await queryNode(
        primary,
        this.login,
        `SELECT pg_catalog.pg_current_wal_lsn()::text, application_name, state, sync_state, coalesce(extract(epoch FROM replay_lag) * 1000, 0)::bigint::text
           FROM (SELECT 1) AS one LEFT JOIN pg_catalog.pg_stat_replication ON true`,
      );
      primaryLsn = lsnBytes(rows[0][0]!);
      for (const [, name, state, syncState, lag] of rows) {
        if (name !== null) streams.set(name, { state: state ?? '', syncState: syncState ?? '', replayLagMs: Number(lag ?? 0) });
      }
    } catch (error) {
      log('warning', 'replication_check_failed', { node: primary.id, error: (error as Error).message });
      return;
    }
    const standbys = this.cluster.upNodes().filter((node) => node !== primary);
    await Promise.all(
      standbys.map(async (node) => {
        const stream = node.applicationName ? streams.get(node.applicationName) : undefined;
        node.replication.state = stream?.state ?? '';
        node.replication.syncState = stream?.syncState ?? '';
        try {
          const [rows] = await queryNode(node, this.login, 'SELECT pg_catalog.pg_is_in_recovery(), pg_catalog.pg_last_wal_replay_lsn()::text');
          if (rows[0][0] !== 't' || rows[0][1] === null) {
            log('warning', 'standby_not_in_recovery', { node: node.id, detail: `${describeNode(node)} is out of recovery while ${describeNode(primary)} is the primary` });
            return;
          }
          const behind = primaryLsn - lsnBytes(rows[0][1]);
          node.replication.delayBytes = behind > 0n ? Number(behind) : 0;
          node.replication.delayMs = node.replication.delayBytes === 0 ? 0 : stream?.replayLagMs ?? null;
        } catch (error) {
          log('warning', 'replication_check_failed', { node: node.id, error: (error as Error).message });
        }
      }),
    );
    primary.replication.delayBytes = 0;
    primary.replication.delayMs = 0;
  }
}
