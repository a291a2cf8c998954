// Picks the node a read goes to, in proportion to backend_weight among the nodes in service (pgpool-II's rule).

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
