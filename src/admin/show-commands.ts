// SHOW commands the proxy answers itself on port 9999, with pgpool-II 4.3's names and columns in its order, so
// that an operator's habits and scripts carry over; SHOW parapool_rules and parapool_queries are parapool's own.
// parapool is one process, not pgpool's child processes: where a column speaks of a child, it speaks here of a
// client session (docs/operations.md says what each column means).

import type { QueryCache } from '../session/query-cache';
import type { Catalog } from '../catalog/catalog';
import type { ClusterState } from '../cluster/cluster-state';
import type { ConnectionPool } from '../cluster/connection-pool';
import type { HealthCheckStats } from '../cluster/health-check';
import { tierOf, type StatementRegistry } from '../cluster/statement-activity';
import { configurationItems, type ProxyConfig } from '../config/config';
import { qualifiedName } from '../catalog/partition-rule';
import { serverMessages } from '../protocol/server-messages';
import type { WatchdogView } from '../cluster/watchdog-view';

export const parapoolVersion = '0.1.0';

/** One of a session's node connections, as SHOW pool_pools shows it. */
export interface SessionConnectionSummary {
  readonly nodeId: number;
  readonly backendPid: number;
  readonly connectedAt: Date;
  readonly acquiredAt: Date | null;
  readonly releasedAt: Date | null;
  readonly uses: number;
}

/** A client session, as SHOW pool_processes and pool_pools show it. */
export interface SessionSummary {
  /** The process id the client was given in BackendKeyData (what it cancels with). */
  readonly processId: number;
  readonly startedAt: Date;
  readonly database: string;
  readonly username: string;
  readonly status: 'Connecting' | 'Idle' | 'Idle in transaction' | 'Execute command';
  /** When the session last finished a statement (its start when it ran none). */
  readonly idleSince: Date;
  readonly connections: readonly SessionConnectionSummary[];
}

export interface AdminContext {
  readonly config: ProxyConfig;
  readonly cluster: ClusterState;
  readonly pool: ConnectionPool;
  readonly healthCheckStats: readonly HealthCheckStats[];
  readonly statements: StatementRegistry;
  sessions(): SessionSummary[];
  /** The watchdog's state; absent or null without use_watchdog. */
  readonly watchdog?: () => WatchdogView | null;
  /** memory_cache_enabled: the query cache; absent or null when it is off. */
  readonly queryCache?: QueryCache | null;
}

/** What the asking session lends: its database's rules and its own node connections (SHOW parapool_rules). */
export interface AdminAsker {
  readonly catalog: Catalog | null;
  /** Runs SQL on the session's connection to a node; null when the session has none to that node. */
  queryNode(nodeId: number, sql: string): Promise<(string | null)[][]> | null;
}

/** A SHOW command's answer as data: what the SQL reply and PCP both send. */
export interface AdminTable {
  readonly columns: string[];
  readonly rows: (string | null)[][];
}

function tableOf(columns: string[], rows: (string | null)[][]): AdminTable {
  return { columns, rows };
}

function frames(answer: AdminTable): Buffer[] {
  return table(answer.columns, answer.rows);
}

function table(columns: string[], rows: (string | null)[][], tag = `SELECT ${rows.length}`): Buffer[] {
  return [serverMessages.textRowDescription(columns), ...rows.map((row) => serverMessages.dataRow(row)), serverMessages.commandComplete(tag)];
}

/** pgpool-II prints times without zone and fractions, in local time. */
function time(date: Date | null): string {
  if (!date) return '';
  const pad = (n: number) => String(n).padStart(2, '0');
  return `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())} ${pad(date.getHours())}:${pad(date.getMinutes())}:${pad(date.getSeconds())}`;
}

/** The reply frames (RowDescription, DataRows, CommandComplete) to one admin SHOW command. */
export async function answerAdminCommand(command: string, context: AdminContext, asker: AdminAsker): Promise<Buffer[]> {
  switch (command) {
    case 'pool_nodes':
      return frames(poolNodes(context));
    case 'pool_health_check_stats':
      return frames(healthCheckStats(context));
    case 'pool_version':
      return table(['pool_version'], [[`${parapoolVersion} (parapool)`]]);
    case 'pool_processes':
      return frames(poolProcesses(context));
    case 'pool_pools':
      return frames(poolPools(context));
    case 'pool_status':
      return table(['item', 'value', 'description'], configurationItems(context.config).map((i) => [i.item, i.value, i.description]));
    case 'pool_backend_stats':
      return backendStats(context);
    case 'pool_cache':
      return frames(queryCache(context));
    case 'parapool_rules':
      return frames(await partitionRules(asker));
    case 'parapool_queries':
      return frames(runningQueries(context));
    case 'watchdog':
      return frames(watchdogStatus(context));
    default:
      throw new Error(`no answer for SHOW ${command}`);
  }
}

/**
 * SHOW watchdog: one row per watchdog instance, this one first, with the fields pcp_watchdog_info -v prints
 * (state names and numbers are pgpool-II's); the cluster's leader, quorum and escalation repeat on every row.
 */
export function watchdogStatus(context: AdminContext): AdminTable {
  const view = context.watchdog?.() ?? null;
  const columns = ['node_name', 'hostname', 'pgpool_port', 'wd_port', 'priority', 'state', 'local', 'last_heartbeat', 'leader', 'quorum', 'alive', 'escalated'];
  if (!view) return tableOf(columns, []);
  const quorum = view.quorumState === 1 ? 'QUORUM EXIST' : view.quorumState === 0 ? 'QUORUM IS ON THE EDGE' : 'QUORUM ABSENT';
  return tableOf(
    columns,
    view.members.map((m) => [m.name, m.host, String(m.pgpoolPort), String(m.wdPort), String(m.priority), m.state, m.local ? 'true' : 'false', time(m.lastHeartbeat), view.leader, quorum, `${view.alive}/${view.total}`, view.escalated ? 'true' : 'false']),
  );
}

/**
 * pgpool-II's columns: num_selects counts the SELECTs looked up that missed, cache_hit_ratio is hits over hits and
 * misses. The cache is a map rather than pgpool's fixed hash table: its hash entries are its entries, and it
 * leaves no fragments. With memory_cache_enabled off, every count is 0, as pgpool answers.
 */
export function queryCache(context: AdminContext): AdminTable {
  const columns = ['num_cache_hits', 'num_selects', 'cache_hit_ratio', 'num_hash_entries', 'used_hash_entries', 'num_cache_entries', 'used_cache_entries_size', 'free_cache_entries_size', 'fragment_cache_entries_size'];
  const stats = context.queryCache?.stats();
  if (!stats) return tableOf(columns, [['0', '0', '0.00', '0', '0', '0', '0', '0', '0']]);
  const misses = stats.selects - stats.hits;
  const ratio = stats.selects === 0 ? '0.00' : (stats.hits / stats.selects).toFixed(2);
  const entries = String(stats.entries);
  return tableOf(columns, [[String(stats.hits), String(misses), ratio, entries, entries, entries, String(stats.usedBytes), String(stats.totalBytes - stats.usedBytes), '0']]);
}

function roleOf(context: AdminContext, nodeId: number): string {
  return context.cluster.roleName(context.cluster.nodes[nodeId]);
}

/**
 * pgpool-II 4.3's columns, then status_reason (parapool's: why a node is down). In native replication every
 * node is a PostgreSQL server of its own, with no replication to report. In streaming replication role and
 * pg_role are what pg_is_in_recovery() last said, and replication_delay (bytes of WAL behind the primary),
 * replication_state and replication_sync_state (pg_stat_replication on the primary) come from the last
 * replication check (sr_check_period); the primary's are empty, as in pgpool.
 */
export function poolNodes(context: AdminContext): AdminTable {
  return tableOf(
    ['node_id', 'hostname', 'port', 'status', 'pg_status', 'lb_weight', 'role', 'pg_role', 'select_cnt', 'load_balance_node', 'replication_delay', 'replication_state', 'replication_sync_state', 'last_status_change', 'status_reason'],
    context.cluster.nodes.map((node) => [
      String(node.id),
      node.host,
      String(node.port),
      node.status,
      node.status,
      String(node.weight),
      roleOf(context, node.id),
      roleOf(context, node.id),
      String(node.selectCount),
      node.weight > 0 && node.status === 'up' ? 'true' : 'false',
      String(node.replication.delayBytes ?? 0),
      node.replication.state,
      node.replication.syncState,
      time(node.statusChangedAt),
      node.downReason ?? '',
    ]),
  );
}

/** One row per client session (parapool's counterpart of a pgpool child serving a client). */
export function poolProcesses(context: AdminContext): AdminTable {
  return tableOf(
    ['pool_pid', 'start_time', 'client_connection_count', 'database', 'username', 'backend_connection_time', 'pool_counter', 'status'],
    context.sessions().map((session) => {
      const first = session.connections[0];
      return [String(session.processId), time(session.startedAt), '1', session.database, session.username, time(first?.connectedAt ?? null), String(first?.uses ?? 0), session.status];
    }),
  );
}

/**
 * One row per node connection of each session (pool_id 0: a session holds one connection per node), then one per
 * idle connection kept in the pool (pool_pid 0, 'Wait for connection'), numbered within its user and database.
 */
export function poolPools(context: AdminContext): AdminTable {
  const now = Date.now();
  const rows: (string | null)[][] = [];
  for (const session of context.sessions()) {
    const idle = session.status === 'Idle' || session.status === 'Idle in transaction' ? Math.floor((now - session.idleSince.getTime()) / 1000) : 0;
    for (const connection of session.connections) {
      rows.push([
        String(session.processId), time(session.startedAt), '1', '0', String(connection.nodeId), session.database, session.username,
        time(connection.connectedAt), time(connection.acquiredAt), time(connection.releasedAt), String(idle), '3', '0', String(connection.uses),
        String(connection.backendPid), '1', session.status,
      ]);
    }
  }
  for (const list of context.pool.idleConnections()) {
    list.forEach((connection, poolId) => {
      rows.push([
        '0', '', '0', String(poolId), String(connection.node.id), connection.database, connection.user, time(connection.connectedAt),
        time(connection.acquiredAt), time(connection.releasedAt), '0', '3', '0', String(connection.uses), String(connection.processId), '0', 'Wait for connection',
      ]);
    });
  }
  return tableOf(
    [
      'pool_pid', 'start_time', 'client_connection_count', 'pool_id', 'backend_id', 'database', 'username', 'backend_connection_time',
      'client_connection_time', 'client_disconnection_time', 'client_idle_duration', 'majorversion', 'minorversion', 'pool_counter',
      'pool_backendpid', 'pool_connected', 'status',
    ],
    rows,
  );
}

function backendStats(context: AdminContext): Buffer[] {
  return table(
    ['node_id', 'hostname', 'port', 'status', 'role', 'select_cnt', 'insert_cnt', 'update_cnt', 'delete_cnt', 'ddl_cnt', 'other_cnt', 'panic_cnt', 'fatal_cnt', 'error_cnt'],
    context.cluster.nodes.map((node) => {
      const s = node.stats;
      return [String(node.id), node.host, String(node.port), node.status, roleOf(context, node.id), ...[s.select, s.insert, s.update, s.delete, s.ddl, s.other, s.panic, s.fatal, s.error].map(String)];
    }),
  );
}

/** pgpool-II's columns; durations in milliseconds, averages over the rounds that ran (skipped ones apart). */
export function healthCheckStats(context: AdminContext): AdminTable {
  return tableOf(
    [
      'node_id', 'hostname', 'port', 'status', 'role', 'last_status_change', 'total_count', 'success_count', 'fail_count',
      'skip_count', 'retry_count', 'average_retry_count', 'max_retry_count', 'max_duration', 'min_duration', 'average_duration',
      'last_health_check', 'last_successful_health_check', 'last_skip_health_check', 'last_failed_health_check',
    ],
    context.cluster.nodes.map((node) => {
      const stats = context.healthCheckStats[node.id];
      const ran = stats.successCount + stats.failCount;
      return [
        String(node.id),
        node.host,
        String(node.port),
        node.status,
        roleOf(context, node.id),
        time(node.statusChangedAt),
        String(stats.totalCount),
        String(stats.successCount),
        String(stats.failCount),
        String(stats.skipCount),
        String(stats.retryCount),
        (ran === 0 ? 0 : stats.retryCount / ran).toFixed(6),
        String(stats.maxRetryCount),
        String(stats.maxDuration),
        String(stats.minDuration),
        (ran === 0 ? 0 : stats.totalDuration / ran).toFixed(6),
        time(stats.lastHealthCheck),
        time(stats.lastSuccessfulHealthCheck),
        time(stats.lastSkipHealthCheck),
        time(stats.lastFailedHealthCheck),
      ];
    }),
  );
}

/**
 * The partition rules of the asker's database, with the rows each node holds of each distributed table:
 * count(*) of every such table in one statement per node, on the asker's connections (a session's own, inside its
 * transaction if one is open, so its own writes count; or the web admin page's). A node the asker has no
 * connection to shows no count.
 */
export async function partitionRules(asker: AdminAsker): Promise<AdminTable> {
  const rules = (asker.catalog?.all() ?? []).sort((a, b) => qualifiedName(a.table).localeCompare(qualifiedName(b.table)));
  const distributed = rules.filter((rule) => rule.kind === 'distributed');
  const nodeCount = Math.max(0, ...distributed.map((rule) => rule.nodeCount));
  const counts: ((string | null)[] | null)[] = [];
  if (distributed.length > 0) {
    const nodes = Array.from({ length: nodeCount }, (_, nodeId) => {
      const owned = distributed.filter((rule) => nodeId < rule.nodeCount);
      const sql = `SELECT ${distributed.map((rule) => (owned.includes(rule) ? `(SELECT pg_catalog.count(*) FROM ONLY ${qualifiedName(rule.table)})::text` : 'NULL')).join(', ')}`;
      return asker.queryNode(nodeId, sql)?.then((rows) => rows[0] ?? null) ?? Promise.resolve(null);
    });
    counts.push(...(await Promise.all(nodes)));
  }
  return tableOf(
    ['table_name', 'distribution', 'method', 'key_column', 'colocation_group', 'node_count', 'rows_per_node', 'total_rows'],
    rules.map((rule) => {
      if (rule.kind === 'replicated') return [qualifiedName(rule.table), 'replicated', '', '', '', String(rule.nodeCount), '', ''];
      const column = distributed.indexOf(rule);
      const perNode: string[] = [];
      let total = 0n;
      let complete = true;
      for (let nodeId = 0; nodeId < rule.nodeCount; nodeId++) {
        const count = counts[nodeId]?.[column] ?? null;
        if (count === null) complete = false;
        else total += BigInt(count);
        perNode.push(`${nodeId}:${count ?? ''}`);
      }
      return [qualifiedName(rule.table), 'distributed', rule.method, rule.keyColumn, String(rule.colocationGroup), String(rule.nodeCount), perNode.join(','), complete ? String(total) : ''];
    }),
  );
}

/**
 * Every session's running statement, one row per fragment (a statement with none yet has one row of its own).
 * tier is the tier of docs/partitioning.md (empty for a statement relayed as it came); plan the plan kind, or
 * replicated; step fragment, final (the finishing node's statement), worker (run in a worker thread, whose rows
 * show once it is done), read or write (a relayed statement's part on one node).
 */
export function runningQueries(context: AdminContext): AdminTable {
  const now = Date.now();
  const rows: (string | null)[][] = [];
  for (const statement of context.statements.list()) {
    const head = [String(statement.processId), time(statement.startedAt), String(now - statement.startedAt.getTime()), statement.sql];
    if (statement.fragments.length === 0) rows.push([...head, '', '', '', '', 'running', '', '']);
    for (const fragment of statement.fragments) {
      rows.push([...head, String(fragment.nodeId), tierOf(fragment.plan), fragment.plan, fragment.step, fragment.state, fragment.elapsedMs.toFixed(3), String(fragment.rows)]);
    }
  }
  return tableOf(['pool_pid', 'query_start', 'query_elapsed_ms', 'query', 'node_id', 'tier', 'plan', 'step', 'state', 'elapsed_ms', 'rows'], rows);
}
