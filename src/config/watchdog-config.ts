// The watchdog's settings, with pgpool-II's names and defaults: which parapool instances form the cluster
// (this one: wd_hostname, wd_port; the others: other_pgpool_hostnameN, other_pgpool_portN, other_wd_portN, or
// pgpool 4.2's hostnameN / wd_portN / pgpool_portN list of every instance with pgpool_node_id naming this one),
// how often they tell each other they live, and how failovers are agreed on. Kept apart from config.ts because
// it is one concept with its own validation; config.ts calls in for the keys it does not know.

/** One other instance of the watchdog cluster. */
export interface WatchdogPeerConfig {
  readonly host: string;
  /** Its client port (other_pgpool_portN): shown by SHOW watchdog and pcp_watchdog_info. */
  readonly pgpoolPort: number;
  /** Its watchdog port (other_wd_portN): where this instance connects to it. */
  readonly wdPort: number;
}

export interface WatchdogConfig {
  /** use_watchdog */
  enabled: boolean;
  /** wd_hostname: how the others reach this instance; with wd_port, its name in the cluster. */
  hostname: string;
  /** wd_port: where this instance listens for the others. */
  port: number;
  /** wd_priority: the instance with the highest priority is elected leader (then the lowest name). */
  priority: number;
  peers: WatchdogPeerConfig[];
  /** wd_heartbeat_keepalive: seconds between heartbeats. */
  heartbeatKeepalive: number;
  /** wd_heartbeat_deadtime: seconds without a heartbeat after which an instance is taken for lost. */
  heartbeatDeadtime: number;
  /** wd_escalation_command: run when this instance becomes the leader with quorum (where a virtual IP would come up). */
  escalationCommand: string;
  /** wd_de_escalation_command: run when it stops being the leader, or loses quorum, or shuts down. */
  deEscalationCommand: string;
  /** Seconds escalation and de-escalation commands may run before they are killed. */
  commandTimeout: number;
  failoverWhenQuorumExists: boolean;
  failoverRequireConsensus: boolean;
  allowMultipleFailoverRequestsFromNode: boolean;
  enableConsensusWithHalfVotes: boolean;
}

/** pgpool-II's defaults. */
export function defaultWatchdogConfig(): WatchdogConfig {
  return {
    enabled: false,
    hostname: '127.0.0.1',
    port: 9000,
    priority: 1,
    peers: [],
    heartbeatKeepalive: 2,
    heartbeatDeadtime: 30,
    escalationCommand: '',
    deEscalationCommand: '',
    commandTimeout: 60,
    failoverWhenQuorumExists: true,
    failoverRequireConsensus: true,
    allowMultipleFailoverRequestsFromNode: false,
    enableConsensusWithHalfVotes: false,
  };
}

/** A copy that shares nothing with the original (a `{...config}` copy of ProxyConfig would share it). */
export function copyWatchdogConfig(config: WatchdogConfig): WatchdogConfig {
  return { ...config, peers: config.peers.map((peer) => ({ ...peer })) };
}

type Fail = (message: string) => never;

function bool(value: string, fail: Fail): boolean {
  const v = value.toLowerCase();
  if (['on', 'true', 'yes', '1'].includes(v)) return true;
  if (['off', 'false', 'no', '0'].includes(v)) return false;
  return fail(`invalid boolean "${value}"`);
}

function integer(value: string, fail: Fail, min: number, max: number): number {
  if (!/^-?\d+$/.test(value)) fail(`invalid integer "${value}"`);
  const n = Number(value);
  if (n < min || n > max) fail(`value ${n} is outside the valid range ${min}..${max}`);
  return n;
}

const scalar: Record<string, (w: WatchdogConfig, value: string, fail: Fail) => void> = {
  use_watchdog: (w, v, fail) => void (w.enabled = bool(v, fail)),
  wd_hostname: (w, v) => void (w.hostname = v),
  wd_port: (w, v, fail) => void (w.port = integer(v, fail, 0, 65535)),
  wd_priority: (w, v, fail) => void (w.priority = integer(v, fail, 0, 1_000_000)),
  wd_heartbeat_keepalive: (w, v, fail) => void (w.heartbeatKeepalive = integer(v, fail, 1, 3600)),
  wd_heartbeat_deadtime: (w, v, fail) => void (w.heartbeatDeadtime = integer(v, fail, 1, 86400)),
  wd_escalation_command: (w, v) => void (w.escalationCommand = v),
  wd_de_escalation_command: (w, v) => void (w.deEscalationCommand = v),
  failover_when_quorum_exists: (w, v, fail) => void (w.failoverWhenQuorumExists = bool(v, fail)),
  failover_require_consensus: (w, v, fail) => void (w.failoverRequireConsensus = bool(v, fail)),
  allow_multiple_failover_requests_from_node: (w, v, fail) => void (w.allowMultipleFailoverRequestsFromNode = bool(v, fail)),
  enable_consensus_with_half_votes: (w, v, fail) => void (w.enableConsensusWithHalfVotes = bool(v, fail)),
};

export const watchdogParameterNames: readonly string[] = Object.keys(scalar);

/** other_pgpool_hostname0 ... (pgpool up to 4.1) and hostname0, wd_port0, pgpool_port0 (4.2 on, every instance listed). */
const peerKey = /^(?:other_pgpool_(hostname|port)|other_(wd_port)|(hostname|wd_port|pgpool_port))(\d+)$/;

interface PeerEntry {
  host?: string;
  pgpoolPort?: number;
  wdPort?: number;
  line: number;
}

/** What the parser collects before the list is checked (finishWatchdogConfig). */
export interface WatchdogEntries {
  readonly old: Map<number, PeerEntry>;
  readonly listed: Map<number, PeerEntry>;
  /** pgpool_node_id: which of the 4.2-style list is this instance. */
  nodeId: number | null;
}

export function newWatchdogEntries(): WatchdogEntries {
  return { old: new Map(), listed: new Map(), nodeId: null };
}

/** Applies one key if it is a watchdog key; returns whether it was. */
export function applyWatchdogEntry(w: WatchdogConfig, entries: WatchdogEntries, name: string, value: string, line: number, fail: Fail): boolean {
  const setter = scalar[name];
  if (setter) {
    setter(w, value, fail);
    return true;
  }
  if (name === 'pgpool_node_id') {
    entries.nodeId = integer(value, fail, 0, 127);
    return true;
  }
  const match = peerKey.exec(name);
  if (!match) return false;
  const index = Number(match[4]);
  const field = match[1] ?? match[2] ?? match[3];
  const map = match[3] !== undefined ? entries.listed : entries.old;
  const entry = map.get(index) ?? { line };
  map.set(index, entry);
  if (field === 'hostname') {
    if (value === '') fail('empty host name');
    entry.host = value;
  } else if (field === 'port' || field === 'pgpool_port') entry.pgpoolPort = integer(value, fail, 1, 65535);
  else entry.wdPort = integer(value, fail, 1, 65535);
  return true;
}

/**
 * Turns the collected peer keys into the peer list; returns an error message (with the line it concerns) when
 * the list has gaps, misses a host name, or names this instance wrongly. Mutates `w.peers` (and, for the 4.2
 * form, wd_hostname and wd_port: this instance's entry of the list).
 */
export function finishWatchdogConfig(w: WatchdogConfig, entries: WatchdogEntries): { line: number; message: string } | null {
  const check = (map: Map<number, PeerEntry>, prefix: string) => {
    const ids = [...map.keys()].sort((a, b) => a - b);
    for (const [index, id] of ids.entries()) {
      const entry = map.get(id)!;
      if (id !== index) return { error: { line: entry.line, message: `${prefix}${id} is set but ${prefix}${index} is not (instances are numbered from 0 without gaps)` } };
      if (!entry.host) return { error: { line: entry.line, message: `${prefix}${id} is missing` } };
    }
    return { list: ids.map((id) => map.get(id)!) };
  };
  if (entries.old.size > 0 && entries.listed.size > 0) {
    return { line: [...entries.listed.values()][0].line, message: 'other_pgpool_hostnameN and hostnameN both list the watchdog instances: use one form' };
  }
  if (entries.old.size > 0) {
    const result = check(entries.old, 'other_pgpool_hostname');
    if (result.error) return result.error;
    w.peers = result.list!.map((e) => ({ host: e.host!, pgpoolPort: e.pgpoolPort ?? 9999, wdPort: e.wdPort ?? 9000 }));
  } else if (entries.listed.size > 0) {
    const result = check(entries.listed, 'hostname');
    if (result.error) return result.error;
    const list = result.list!;
    const self = entries.nodeId;
    if (self === null || self >= list.length) {
      return { line: list[0].line, message: `hostnameN lists the watchdog instances but pgpool_node_id ${self === null ? 'is not set' : `${self} is not one of them`}: it names this instance` };
    }
    w.hostname = list[self].host!;
    w.port = list[self].wdPort ?? 9000;
    w.peers = list.filter((_, index) => index !== self).map((e) => ({ host: e.host!, pgpoolPort: e.pgpoolPort ?? 9999, wdPort: e.wdPort ?? 9000 }));
  }
  if (w.enabled && w.heartbeatDeadtime <= w.heartbeatKeepalive) {
    return { line: 1, message: `wd_heartbeat_deadtime (${w.heartbeatDeadtime}) must be longer than wd_heartbeat_keepalive (${w.heartbeatKeepalive})` };
  }
  return null;
}

/** The watchdog's rows of SHOW pool_status. */
export function watchdogItems(w: WatchdogConfig): { item: string; value: string; description: string }[] {
  const on = (b: boolean) => (b ? 'on' : 'off');
  const items = [
    { item: 'use_watchdog', value: on(w.enabled), description: 'elect a leader among parapool instances and agree on failovers' },
    { item: 'wd_hostname', value: w.hostname, description: 'host name or address of this watchdog' },
    { item: 'wd_port', value: String(w.port), description: 'port of this watchdog' },
    { item: 'wd_priority', value: String(w.priority), description: 'priority in the leader election' },
    { item: 'wd_heartbeat_keepalive', value: String(w.heartbeatKeepalive), description: 'seconds between heartbeats' },
    { item: 'wd_heartbeat_deadtime', value: String(w.heartbeatDeadtime), description: 'seconds without a heartbeat before an instance is lost' },
    { item: 'wd_escalation_command', value: w.escalationCommand, description: 'command run when this instance becomes the leader' },
    { item: 'wd_de_escalation_command', value: w.deEscalationCommand, description: 'command run when this instance stops being the leader' },
    { item: 'failover_when_quorum_exists', value: on(w.failoverWhenQuorumExists), description: 'fail a node over only while the watchdog cluster has quorum' },
    { item: 'failover_require_consensus', value: on(w.failoverRequireConsensus), description: 'fail a node over only when a majority of instances see it down' },
    { item: 'allow_multiple_failover_requests_from_node', value: on(w.allowMultipleFailoverRequestsFromNode), description: 'count every request of one instance as a vote' },
    { item: 'enable_consensus_with_half_votes', value: on(w.enableConsensusWithHalfVotes), description: 'with an even number of instances, half the votes are enough' },
  ];
  w.peers.forEach((peer, index) => {
    items.push(
      { item: `other_pgpool_hostname${index}`, value: peer.host, description: `host of watchdog instance ${index}` },
      { item: `other_pgpool_port${index}`, value: String(peer.pgpoolPort), description: `client port of watchdog instance ${index}` },
      { item: `other_wd_port${index}`, value: String(peer.wdPort), description: `watchdog port of watchdog instance ${index}` },
    );
  });
  return items;
}
