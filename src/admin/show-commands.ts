// SHOW commands the proxy answers itself on port 9999, with pgpool-II's names and columns where they exist,
// so that an operator's habits and scripts carry over.

import type { ClusterState } from '../cluster/cluster-state';
import type { ConnectionPool } from '../cluster/connection-pool';
import type { HealthCheckStats } from '../cluster/health-check';
import { serverMessages } from '../protocol/server-messages';

export const parapoolVersion = '0.1.0';

export interface AdminContext {
  readonly cluster: ClusterState;
  readonly pool: ConnectionPool;
  readonly healthCheckStats: readonly HealthCheckStats[];
  chooseReadNode(): { id: number } | null;
}

function table(columns: string[], rows: (string | null)[][], tag = `SELECT ${rows.length}`): Buffer[] {
  return [serverMessages.textRowDescription(columns), ...rows.map((row) => serverMessages.dataRow(row)), serverMessages.commandComplete(tag)];
}

/** The reply frames (RowDescription, DataRows, CommandComplete) to one admin SHOW command. */
export function answerAdminCommand(command: string, context: AdminContext): Buffer[] {
  switch (command) {
    case 'pool_nodes': {
      const main = context.cluster.mainNode();
      return table(
        ['node_id', 'hostname', 'port', 'status', 'lb_weight', 'role', 'select_cnt', 'load_balance_node', 'last_status_change', 'status_reason'],
        context.cluster.nodes.map((node) => [
          String(node.id),
          node.host,
          String(node.port),
          node.status,
          String(node.weight),
          node === main ? 'main' : 'replica',
          String(node.selectCount),
          node.weight > 0 && node.status === 'up' ? 'true' : 'false',
          node.statusChangedAt.toISOString(),
          node.downReason ?? '',
        ]),
      );
    }
    case 'pool_health_check_stats':
      return healthCheckStats(context);
    case 'pool_version':
      return table(['pool_version'], [[`parapool ${parapoolVersion}`]]);
    case 'pool_pools':
      return table(['idle_backend_connections'], [[String(context.pool.idleCount())]]);
    default:
      return table(['pid', 'node'], []);
  }
}

/** pgpool-II's columns; durations in milliseconds, averages over the rounds that ran (skipped ones apart). */
function healthCheckStats(context: AdminContext): Buffer[] {
  const main = context.cluster.mainNode();
  const time = (date: Date | null) => (date ? date.toISOString() : '');
  return table(
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
        node === main ? 'main' : 'replica',
        node.statusChangedAt.toISOString(),
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
