// A node of the cluster as the proxy sees it: where it is, how much read load it takes, and whether it is in
// service. A node is one PostgreSQL server today; "node" and "server" stay apart so that a node can later be
// a primary with standbys.

export type NodeStatus = 'up' | 'down';

export interface NodeAddress {
  readonly id: number;
  readonly host: string;
  readonly port: number;
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
}

export function describeNode(node: NodeAddress): string {
  return `node ${node.id} (${node.host}:${node.port})`;
}
