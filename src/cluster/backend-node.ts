// A node of the cluster as the proxy sees it: where it is, how much read load it takes, and whether it is in
// service. A node is one PostgreSQL server today; "node" and "server" stay apart so that a node can later be
// a primary with standbys.

import type { BackendStats } from './statement-activity';

export type NodeStatus = 'up' | 'down';

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
  status: NodeStatus;
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
