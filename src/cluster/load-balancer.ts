// Picks the node a read goes to, in proportion to backend_weight among the nodes in service (pgpool-II's rule),
// and says which standbys are too far behind their primary to take reads (delay_threshold).

import type { BackendNode } from './backend-node';

export function chooseWeighted(nodes: readonly BackendNode[], random: () => number = Math.random): BackendNode | null {
  const candidates = nodes.filter((n) => n.status === 'up' && n.weight > 0);
  if (candidates.length === 0) return nodes.find((n) => n.status === 'up') ?? null;
  const total = candidates.reduce((sum, n) => sum + n.weight, 0);
  let point = random() * total;
  for (const node of candidates) {
    point -= node.weight;
    if (point < 0) return node;
  }
  return candidates[candidates.length - 1];
}

/** delay_threshold (bytes of WAL) and delay_threshold_by_time (milliseconds); 0 turns a limit off. */
export interface DelayLimits {
  readonly bytes: number;
  readonly ms: number;
}

/**
 * Whether a node may take reads for the primary: a primary always; a standby unless the last replication check
 * found it behind a limit. A standby not measured yet counts as within: with sr_check_period 0 there are no
 * measurements, as in pgpool-II.
 */
export function withinDelay(node: BackendNode, limits: DelayLimits): boolean {
  if (node.role !== 'standby') return true;
  const { delayBytes, delayMs } = node.replication;
  if (limits.bytes > 0 && delayBytes !== null && delayBytes > limits.bytes) return false;
  if (limits.ms > 0 && delayMs !== null && delayMs > limits.ms) return false;
  return true;
}
