// In streaming-replication mode, what follows the detach of the primary: a standby becomes the primary, and
// new statements wait (the statement gate is held from the detach on) until the proxy knows which node it is.
// With failover_command set, the operator's command promotes and the proxy then asks each node
// pg_is_in_recovery() until one answers false; without it the proxy promotes the standby that received the most
// WAL itself (pg_promote), points the other standbys at it and keeps synchronous replication to them. The
// detach of a standby changes nothing here: reads go to the other nodes.

import { quoteLiteral } from '../catalog/partition-rule';
import { log } from '../log';
import { PgError, SqlState } from '../protocol/errors';
import { describeNode, type BackendNode } from './backend-node';
import type { ClusterState } from './cluster-state';
import { lsnBytes, queryNode, surveyRoles, type NodeLogin } from './replication-check';
import type { StatementGate } from './statement-gate';

export interface FailoverOptions {
  readonly cluster: ClusterState;
  readonly gate: StatementGate;
  readonly login: NodeLogin;
  /** Whether failover_command is set (it promotes; the proxy only finds the new primary). */
  readonly commandPromotes: boolean;
  /** Resolves once the failover commands queued so far have ended. */
  commandsIdle(): Promise<void>;
  /** How long the proxy looks for the new primary (recovery_timeout). */
  readonly timeoutMs: number;
}

const sleep = (ms: number) => new Promise((resolvePromise) => setTimeout(resolvePromise, ms));

/** conninfo text as key/value pairs (libpq's syntax: values bare or in single quotes with \' and \\). */
export function parseConninfo(text: string): Map<string, string> {
  const pairs = new Map<string, string>();
  for (const match of text.matchAll(/(\w+)\s*=\s*('((?:[^'\\]|\\.)*)'|\S+)/g)) {
    pairs.set(match[1], match[3] !== undefined ? match[3].replace(/\\(.)/g, '$1') : match[2]);
  }
  return pairs;
}

export function conninfoText(pairs: ReadonlyMap<string, string>): string {
  return [...pairs].map(([key, value]) => `${key}='${value.replace(/\\/g, '\\\\').replace(/'/g, "\\'")}'`).join(' ');
}

export class StreamingFailover {
  /** Failovers run one after the other, in the order of the detaches. */
  private tail: Promise<void> = Promise.resolve();
  private readonly onDetach = (node: BackendNode) => {
    if (node.role !== 'primary') return;
    // Held now, in the detach's own turn: no statement may reach a standby as if it were the primary.
    const release = this.options.gate.hold();
    this.tail = this.tail.then(() => this.failover(node)).catch((error) => log('error', 'failover_internal_error', { error: String(error) })).finally(release);
  };

  /** The standby a switchover asked for, promoted first while it runs. */
  private preferred: number | null = null;

  constructor(private readonly options: FailoverOptions) {}

  /**
   * Switchover (pcp_promote_node, parapool.promote_node): the primary is detached and this standby promoted in
   * its place, the other standbys following it. The old primary goes on running, detached; online recovery
   * rebuilds it as a standby. With failover_command set the command decides which node it promotes, so a
   * switchover to a chosen node is refused.
   */
  async switchover(target: BackendNode): Promise<void> {
    const { cluster } = this.options;
    if (this.options.commandPromotes) {
      throw new PgError({ code: SqlState.featureNotSupported, message: 'a switchover to a chosen node needs the built-in promotion', hint: 'with failover_command set, promote the standby with your own tools: the proxy finds the new primary when the old one is detached' });
    }
    const primary = cluster.nodes.find((node) => node.role === 'primary' && node.status === 'up');
    if (target.status !== 'up' || target.role !== 'standby' || !primary) {
      throw new PgError({ code: SqlState.objectNotInPrerequisiteState, message: `${describeNode(target)} is not a standby in service${primary ? '' : ', or no primary is in service'}`, hint: 'SHOW pool_nodes lists the roles' });
    }
    this.preferred = target.id;
    try {
      cluster.detach(primary.id, `switchover to ${describeNode(target)}`);
      await this.tail;
    } finally {
      this.preferred = null;
    }
    if ((target.role as string) !== 'primary') {
      const now = cluster.nodes.find((node) => node.role === 'primary' && node.status === 'up');
      throw new PgError({ code: SqlState.internalError, message: `the switchover did not promote ${describeNode(target)}${now ? `: ${describeNode(now)} is the primary` : ''}`, hint: 'the log says why (promotion_failed)' });
    }
  }

  start(): void {
    this.options.cluster.on('detach', this.onDetach);
  }

  stop(): Promise<void> {
    this.options.cluster.off('detach', this.onDetach);
    return this.tail;
  }

  /** Resolves once the failovers begun so far are over. */
  idle(): Promise<void> {
    return this.tail;
  }

  private async failover(old: BackendNode): Promise<void> {
    const started = Date.now();
    log('warning', 'failover_started', { node: old.id, address: `${old.host}:${old.port}`, promotion: this.options.commandPromotes ? 'failover_command' : 'built in' });
    let promoted: BackendNode | null = null;
    if (this.options.commandPromotes) {
      // The command was queued by the same detach, after this listener ran: let it be queued, then wait for it.
      await new Promise((resolvePromise) => setImmediate(resolvePromise));
      await this.options.commandsIdle();
    } else {
      promoted = await this.promoteBest();
      if (!promoted) {
        log('error', 'failover_failed', { node: old.id, reason: 'no standby in service could be promoted' });
        return;
      }
    }
    const primary = await this.findPrimary();
    if (!primary) {
      log('error', 'failover_failed', { node: old.id, reason: `no node in service left recovery within ${this.options.timeoutMs} ms`, hint: 'writes fail until a primary is attached' });
      return;
    }
    if (promoted) await this.followNewPrimary(primary);
    log('warning', 'failover_done', { old_primary: old.id, new_primary: primary.id, ms: Date.now() - started });
  }

  /**
   * Promotes the standby in service that has received the most WAL (the lowest id among equals): with
   * synchronous replication it holds every acknowledged commit. Returns it once pg_promote() says it is done.
   */
  private async promoteBest(): Promise<BackendNode | null> {
    const { cluster, login } = this.options;
    const received = await Promise.all(
      cluster.upNodes().map(async (node) => {
        try {
          const [rows] = await queryNode(node, login, 'SELECT pg_catalog.pg_is_in_recovery(), coalesce(pg_catalog.pg_last_wal_receive_lsn(), pg_catalog.pg_last_wal_replay_lsn())::text');
          return rows[0][0] === 't' && rows[0][1] !== null ? { node, lsn: lsnBytes(rows[0][1]) } : null;
        } catch (error) {
          log('warning', 'failover_candidate_unreachable', { node: node.id, error: (error as Error).message });
          return null;
        }
      }),
    );
    const candidates = received
      .filter((c): c is { node: BackendNode; lsn: bigint } => c !== null)
      // A switchover's standby first; should it fail to promote, the others keep the service going.
      .sort((a, b) => (a.node.id === this.preferred ? -1 : b.node.id === this.preferred ? 1 : a.lsn === b.lsn ? a.node.id - b.node.id : a.lsn > b.lsn ? -1 : 1));
    for (const { node } of candidates) {
      try {
        log('warning', 'promoting', { node: node.id, address: `${node.host}:${node.port}` });
        const [rows] = await queryNode(node, login, 'SELECT pg_catalog.pg_promote(true, 60)');
        if (rows[0]?.[0] === 't') return node;
        log('error', 'promotion_failed', { node: node.id, reason: 'pg_promote() did not finish within 60 s' });
      } catch (error) {
        log('error', 'promotion_failed', { node: node.id, reason: (error as Error).message });
      }
    }
    return null;
  }

  /** Asks the nodes in service until exactly one is out of recovery, for up to the timeout; records the roles. */
  private async findPrimary(): Promise<BackendNode | null> {
    const { cluster, login } = this.options;
    for (const deadline = Date.now() + this.options.timeoutMs; ; await sleep(200)) {
      const survey = await surveyRoles(cluster, login);
      if (survey.primaries.length === 1) return survey.primaries[0];
      if (survey.primaries.length > 1) log('error', 'several_primaries', { nodes: survey.primaries.map((n) => n.id).join(',') });
      if (Date.now() >= deadline) return null;
    }
  }

  /**
   * The standbys in service stream from the new primary from now on (primary_conninfo, reloaded: PostgreSQL 13
   * and later need no restart), and the new primary waits for them as the old one did (it inherited
   * synchronous_standby_names naming itself and the others): ANY 1 of them, or none when none is left, so that
   * commits go on.
   */
  private async followNewPrimary(primary: BackendNode): Promise<void> {
    const { cluster, login } = this.options;
    const followers: BackendNode[] = [];
    for (const standby of cluster.upNodes().filter((node) => node !== primary)) {
      try {
        const [[row]] = await queryNode(standby, login, 'SHOW primary_conninfo');
        const conninfo = parseConninfo(row?.[0] ?? '');
        conninfo.set('host', primary.host);
        conninfo.set('port', String(primary.port));
        if (standby.applicationName) conninfo.set('application_name', standby.applicationName);
        await queryNode(standby, login, `ALTER SYSTEM SET primary_conninfo = ${quoteLiteral(conninfoText(conninfo))}`, 'SELECT pg_catalog.pg_reload_conf()');
        followers.push(standby);
        log('info', 'standby_repointed', { node: standby.id, primary: primary.id });
      } catch (error) {
        log('error', 'standby_repoint_failed', { node: standby.id, primary: primary.id, error: (error as Error).message });
      }
    }
    try {
      const [[row]] = await queryNode(primary, login, 'SHOW synchronous_standby_names');
      if ((row?.[0] ?? '') === '') return;
      const names = followers.map((node) => node.applicationName).filter((name) => name !== '');
      const value = names.length === 0 ? '' : `ANY 1 (${names.map((name) => `"${name.replace(/"/g, '""')}"`).join(', ')})`;
      await queryNode(primary, login, `ALTER SYSTEM SET synchronous_standby_names = ${quoteLiteral(value)}`, 'SELECT pg_catalog.pg_reload_conf()');
      log('info', 'synchronous_standbys', { node: primary.id, synchronous_standby_names: value });
    } catch (error) {
      log('error', 'synchronous_standbys_failed', { node: primary.id, error: (error as Error).message, detail: `${describeNode(primary)} keeps its synchronous_standby_names` });
    }
  }
}
