// Health checks as pgpool-II runs them: every health_check_period seconds each node in service gets a new
// connection that must finish start-up, authentication included, within health_check_timeout; after
// health_check_max_retries more failed attempts, health_check_retry_delay apart, the node is detached. A check is
// a real log-in, not a TCP connect: a stopped postmaster still completes the handshake (the kernel's listen
// backlog does), and only an answer to the start-up shows that the node serves new sessions.

import { BackendConnection, BackendStartupError } from '../backend/backend-connection';
import type { HealthCheckConfig } from '../config/config';
import { log } from '../log';
import { PgError, SqlState } from '../protocol/errors';
import { parseStoredSecret, type StoredSecret } from '../protocol/password-file';
import { describeNode, type BackendNode } from './backend-node';
import type { ClusterState } from './cluster-state';

/** One node's counters, as SHOW pool_health_check_stats reports them. Durations in milliseconds. */
export interface HealthCheckStats {
  readonly nodeId: number;
  /** Rounds begun: each is one check, its retries included. */
  totalCount: number;
  successCount: number;
  failCount: number;
  /** Rounds not run because the node was out of service. */
  skipCount: number;
  /** Attempts after the first, over all rounds. */
  retryCount: number;
  maxRetryCount: number;
  maxDuration: number;
  minDuration: number;
  totalDuration: number;
  lastHealthCheck: Date | null;
  lastSuccessfulHealthCheck: Date | null;
  lastSkipHealthCheck: Date | null;
  lastFailedHealthCheck: Date | null;
}

export interface HealthCheckOptions {
  readonly cluster: ClusterState;
  /** The settings of one node (its `_N` overrides over the global ones). */
  settingsFor(nodeId: number): HealthCheckConfig;
  /** The user a check logs in as when health_check_user is empty. */
  readonly defaultUser: string;
  /** pool_passwd, where a check finds its password when health_check_password is empty. */
  readonly passwords: ReadonlyMap<string, StoredSecret> | null;
}

const missingDatabase = '3D000';

export class HealthChecker {
  readonly stats: HealthCheckStats[];
  private readonly timers = new Map<number, NodeJS.Timeout>();
  /** Aborts whatever runs (attempts, delays between them) once stop() is called. */
  private readonly stopping = new AbortController();
  private readonly rounds = new Set<Promise<void>>();

  constructor(private readonly options: HealthCheckOptions) {
    this.stats = options.cluster.nodes.map((node) => ({
      nodeId: node.id,
      totalCount: 0,
      successCount: 0,
      failCount: 0,
      skipCount: 0,
      retryCount: 0,
      maxRetryCount: 0,
      maxDuration: 0,
      minDuration: 0,
      totalDuration: 0,
      lastHealthCheck: null,
      lastSuccessfulHealthCheck: null,
      lastSkipHealthCheck: null,
      lastFailedHealthCheck: null,
    }));
  }

  /** Schedules the first round of every node whose health_check_period is not 0. */
  start(): void {
    for (const node of this.options.cluster.nodes) this.schedule(node.id);
  }

  /** Cancels the timers and every attempt in flight (their sockets close); resolves once no round runs. */
  async stop(): Promise<void> {
    this.stopping.abort();
    for (const timer of this.timers.values()) clearTimeout(timer);
    this.timers.clear();
    await Promise.all([...this.rounds]);
  }

  private schedule(nodeId: number): void {
    const period = this.options.settingsFor(nodeId).period;
    if (period === 0 || this.stopping.signal.aborted) return;
    const timer = setTimeout(() => {
      this.timers.delete(nodeId);
      const round = this.round(nodeId).catch((error) => log('error', 'health_check_internal_error', { node: nodeId, error: String(error) }));
      this.rounds.add(round);
      void round.finally(() => {
        this.rounds.delete(round);
        this.schedule(nodeId);
      });
    }, period * 1000);
    // The listener keeps a serving proxy alive; an embedded one that forgets stop() should still let node exit.
    timer.unref();
    this.timers.set(nodeId, timer);
  }

  /** One check of a node, its retries included; detaches the node when every attempt failed. */
  private async round(nodeId: number): Promise<void> {
    const node = this.options.cluster.nodes[nodeId];
    const stats = this.stats[nodeId];
    const now = new Date();
    stats.totalCount++;
    if (node.status !== 'up') {
      stats.skipCount++;
      stats.lastSkipHealthCheck = now;
      return;
    }
    stats.lastHealthCheck = now;
    const settings = this.options.settingsFor(nodeId);
    const started = Date.now();
    let retries = 0;
    let failure = await this.attempt(node, settings);
    while (failure !== null && retries < settings.maxRetries && node.status === 'up' && !this.stopping.signal.aborted) {
      log('warning', 'health_check_retry', { node: nodeId, retry: retries + 1, of: settings.maxRetries, error: failure });
      await this.sleep(settings.retryDelay * 1000);
      if (this.stopping.signal.aborted || node.status !== 'up') break;
      retries++;
      failure = await this.attempt(node, settings);
    }
    if (this.stopping.signal.aborted) return;
    const duration = Date.now() - started;
    stats.retryCount += retries;
    stats.maxRetryCount = Math.max(stats.maxRetryCount, retries);
    stats.maxDuration = Math.max(stats.maxDuration, duration);
    stats.minDuration = stats.successCount + stats.failCount === 0 ? duration : Math.min(stats.minDuration, duration);
    stats.totalDuration += duration;
    if (failure === null) {
      stats.successCount++;
      stats.lastSuccessfulHealthCheck = new Date();
      return;
    }
    stats.failCount++;
    stats.lastFailedHealthCheck = new Date();
    const attempts = retries + 1;
    this.options.cluster.fail(nodeId, `health check failed ${attempts} time${attempts === 1 ? '' : 's'} on ${describeNode(node)}: ${failure}`);
  }

  /** Logs in once; returns null when the node answered start-up with ReadyForQuery, else why not. */
  private async attempt(node: BackendNode, settings: HealthCheckConfig): Promise<string | null> {
    const user = settings.user || this.options.defaultUser;
    let secret: StoredSecret | null;
    try {
      secret = settings.password !== '' ? parseStoredSecret(settings.password) : this.options.passwords?.get(user) ?? null;
    } catch (error) {
      return (error as Error).message;
    }
    const controller = new AbortController();
    const abort = () => controller.abort();
    this.stopping.signal.addEventListener('abort', abort);
    const timeoutMs = settings.timeout * 1000;
    let timedOut = false;
    const timer = timeoutMs > 0 ? setTimeout(() => { timedOut = true; controller.abort(); }, timeoutMs) : null;
    try {
      // pgpool-II's default: postgres, and template1 where postgres does not exist.
      const databases = settings.database !== '' ? [settings.database] : ['postgres', 'template1'];
      for (const [index, database] of databases.entries()) {
        try {
          const connection = await BackendConnection.connect({
            node,
            parameters: new Map([['user', user], ['database', database], ['application_name', 'parapool health check']]),
            secret,
            // Only the check's own timeout applies; 0 waits as long as the system's TCP connect does.
            connectTimeoutMs: timeoutMs > 0 ? timeoutMs : 2 ** 31 - 1,
            signal: controller.signal,
          }, 'health-check');
          connection.terminate();
          return null;
        } catch (error) {
          if (timedOut) return `no answer to a start-up within ${settings.timeout} s`;
          if (error instanceof PgError && error.code === missingDatabase && index < databases.length - 1) continue;
          if (error instanceof BackendStartupError || error instanceof PgError) return error.message;
          return new PgError({ code: SqlState.connectionFailure, message: String(error) }).message;
        }
      }
      return 'no database to log in to';
    } finally {
      if (timer) clearTimeout(timer);
      this.stopping.signal.removeEventListener('abort', abort);
    }
  }

  private sleep(ms: number): Promise<void> {
    return new Promise((resolvePromise) => {
      const done = () => {
        clearTimeout(timer);
        this.stopping.signal.removeEventListener('abort', done);
        resolvePromise();
      };
      const timer = setTimeout(done, ms);
      this.stopping.signal.addEventListener('abort', done);
    });
  }
}
