// The watchdog's arithmetic, pure so that it is tested alone: how many instances make a quorum, whether a
// failover has enough votes, and which instance an election picks. pgpool-II's rules: a quorum is more than half
// of the instances, or exactly half with enable_consensus_with_half_votes and an even count; the same number of
// instances seeing a node down is a consensus.

/** The fewest instances (this one included) that make a quorum, or a consensus, out of `total`. */
export function majority(total: number, halfVotes: boolean): number {
  if (total <= 1) return 1;
  return halfVotes && total % 2 === 0 ? total / 2 : Math.floor(total / 2) + 1;
}

/** Whether `alive` instances out of `total` hold a quorum. */
export function hasQuorum(alive: number, total: number, halfVotes: boolean): boolean {
  return alive >= majority(total, halfVotes);
}

/** pgpool's quorum state as SHOW watchdog and pcp_watchdog_info print it: 1 quorum, 0 exactly on the edge (half), -1 none. */
export function quorumState(alive: number, total: number, halfVotes: boolean): -1 | 0 | 1 {
  if (alive > total / 2) return 1;
  if (total % 2 === 0 && alive === total / 2) return halfVotes ? 0 : -1;
  return -1;
}

/** What an election compares: higher priority first, then the smaller name, so that every instance picks the same one. */
export interface Candidate {
  readonly name: string;
  readonly priority: number;
}

/** Negative when `a` is the better leader. */
export function compareCandidates(a: Candidate, b: Candidate): number {
  if (a.priority !== b.priority) return b.priority - a.priority;
  return a.name < b.name ? -1 : a.name > b.name ? 1 : 0;
}

/** The candidate an election picks; null for none. */
export function electLeader<C extends Candidate>(candidates: readonly C[]): C | null {
  return [...candidates].sort(compareCandidates)[0] ?? null;
}

/**
 * A vote for a failover, as the leader keeps it. With allow_multiple_failover_requests_from_node each request
 * counts; without, one per instance.
 */
export interface FailoverVote {
  readonly from: string;
  readonly at: number;
}

/** How many votes count at `now`: fresh ones (younger than `lifetimeMs`), one per instance unless multiple are allowed. */
export function countVotes(votes: readonly FailoverVote[], now: number, lifetimeMs: number, allowMultiple: boolean): number {
  const fresh = votes.filter((vote) => now - vote.at < lifetimeMs);
  return allowMultiple ? fresh.length : new Set(fresh.map((vote) => vote.from)).size;
}

/**
 * Whether the leader may fail a node over now; `reason` says why not. `alive` and `total` count instances,
 * `votes` those that count (countVotes).
 */
export function failoverAllowed(input: {
  alive: number;
  total: number;
  votes: number;
  halfVotes: boolean;
  whenQuorumExists: boolean;
  requireConsensus: boolean;
}): { ok: true } | { ok: false; reason: string } {
  const needed = majority(input.total, input.halfVotes);
  if (input.whenQuorumExists && !hasQuorum(input.alive, input.total, input.halfVotes)) {
    return { ok: false, reason: `the watchdog cluster has no quorum (${input.alive} of ${input.total} instances alive, ${needed} needed)` };
  }
  if (input.requireConsensus && input.votes < needed) {
    return { ok: false, reason: `${input.votes} of ${input.total} instances see the node down, ${needed} needed` };
  }
  return { ok: true };
}
