// A node of the cluster as the proxy sees it: where it is, how much read load it takes, whether it is in
// service, and in streaming-replication mode its role and how far behind the primary it replays.

import type { BackendFlags } from '../config/config';
import type { BackendStats } from './statement-activity';

export type NodeStatus = 'up' | 'down';

/**
 * In streaming-replication mode, what the node answered pg_is_in_recovery() last (primary: false); 'unknown'
 * before it was asked. In native replication every node is a server of its own: 'unknown' throughout.
 */
export type NodeRole = 'primary' | 'standby' | 'unknown';

/** What the streaming-replication check last found of a standby (see cluster/replication-check.ts). */
export interface ReplicationStatus {
  /** Bytes of WAL between the primary's current position and the standby's replay position; null: not measured. */
  delayBytes: number | null;
  /** Milliseconds since the last transaction the standby replayed committed on the primary, while it lags; null: not measured. */
  delayMs: number | null;
  /** pg_stat_replication.state on the primary for the standby's application_name ('' when not streaming). */
  state: string;
  /** pg_stat_replication.sync_state ('' when not streaming). */
  syncState: string;
}

export interface NodeAddress {
  readonly id: number;
  readonly host: string;
  readonly port: number;
  /** The node's counters, on the main thread's nodes (a worker thread's addresses have none). */
  readonly stats?: BackendStats;
}

export interface BackendNode extends NodeAddress {
  readonly weight: number;
  readonly dataDirectory: string | null;
  readonly flags: BackendFlags;
  /** backend_application_nameN ('' when not set). */
  readonly applicationName: string;
  status: NodeStatus;
  role: NodeRole;
  readonly replication: ReplicationStatus;
  statusChangedAt: Date;
  /** Why the node was taken out of service, for SHOW pool_nodes and the log. */
  downReason: string | null;
  /** Reads sent to this node. */
  selectCount: number;
  /** Statements and errors, for SHOW pool_backend_stats. */
  readonly stats: BackendStats;
}

export function describeNode(node: NodeAddress): string {
  return `node ${node.id} (${node.host}:${node.port})`;
}

export function emptyReplicationStatus(): ReplicationStatus {
  return { delayBytes: null, delayMs: null, state: '', syncState: '' };
}
