// What the watchdog shows of itself: one row per instance (this one first, as pgpool-II lists them), with the
// cluster's quorum and leader, for SHOW watchdog, pcp_watchdog_info and the metrics. Plain data, taken as a
// snapshot, so that a reader never holds the watchdog's live state.

import type { WatchdogState } from './watchdog-messages';

/** pgpool-II's WD_STATES numbers, which pcp_watchdog_info prints beside the names. */
export const watchdogStateCodes: Record<WatchdogState, number> = {
  LOADING: 1,
  JOINING: 2,
  LEADER: 4,
  STANDBY: 7,
  LOST: 8,
  SHUTDOWN: 10,
};

export interface WatchdogMemberView {
  /** host:wd_port */
  readonly name: string;
  readonly host: string;
  readonly pgpoolPort: number;
  readonly wdPort: number;
  readonly priority: number;
  readonly state: WatchdogState;
  readonly local: boolean;
  /** When a heartbeat last came from it (null for this instance, or never). */
  readonly lastHeartbeat: Date | null;
}

export interface WatchdogView {
  readonly members: readonly WatchdogMemberView[];
  /** The leader this instance follows (or is); '' while there is none. */
  readonly leader: string;
  readonly term: number;
  readonly alive: number;
  readonly total: number;
  /** Instances a quorum needs. */
  readonly quorumNeeded: number;
  /** 1 quorum, 0 on the edge (half, with enable_consensus_with_half_votes), -1 none. */
  readonly quorumState: -1 | 0 | 1;
  /** Whether wd_escalation_command ran here and de-escalation has not. */
  readonly escalated: boolean;
  /** Failovers this instance performed as leader, and node changes it applied from a leader. */
  readonly failoversPerformed: number;
  readonly statusChangesApplied: number;
}
