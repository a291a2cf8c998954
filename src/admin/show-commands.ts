// SHOW commands the proxy answers itself on port 9999, with pgpool-II's names and columns where they exist,
// so that an operator's habits and scripts carry over.

import type { ClusterState } from '../cluster/cluster-state';
import type { ConnectionPool } from '../cluster/connection-pool';
import { serverMessages } from '../protocol/server-messages';

export const parapoolVersion = '0.1.0';

export interface AdminContext {
  readonly cluster: ClusterState;
  readonly pool: ConnectionPool;
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
    case 'pool_version':
      return table(['pool_version'], [[`parapool ${parapoolVersion}`]]);
    case 'pool_pools':
      return table(['idle_backend_connections'], [[String(context.pool.idleCount())]]);
    default:
      return table(['pid', 'node'], []);
  }
}
