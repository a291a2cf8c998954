// The watchdog (pgpool-HA): two or three parapool instances watch each other over TCP, elect a leader (highest
// wd_priority, then the smallest host:wd_port), and take every failover decision there, once: an instance whose
// health check, or a lost connection, finds a node down asks the leader; the leader counts the instances that see
// it down and, with quorum and consensus, detaches the node, runs failover_command, and sends the new node
// statuses to every instance, which apply them without running failover_command themselves. A leader that is
// lost (its links close, or no heartbeat for wd_heartbeat_deadtime) is replaced by a new election; escalation and
// de-escalation commands mark where leadership (a virtual IP, in pgpool) comes and goes.
//
// N.B. node statuses carry a version [term, count]: an instance applies the leader's statuses when their version
// differs from the last one it applied, so an instance that was stopped (SIGSTOP) adopts what was decided while
// it slept, and a heartbeat sent before a change it asked for does not undo it.

import { log } from '../log';
import type { WatchdogConfig } from '../config/watchdog-config';
import type { BackendNode } from './backend-node';
import type { ClusterState, FailoverArbiter } from './cluster-state';
import { runShellCommand } from './shell-command';
import { WatchdogLinks } from './watchdog-links';
import type { HeartbeatMessage, NodeStatusEntry, WatchdogMessage, WatchdogState } from './watchdog-messages';
import { compareCandidates, countVotes, electLeader, failoverAllowed, hasQuorum, majority, quorumState, type FailoverVote } from './watchdog-quorum';
import type { WatchdogMemberView, WatchdogView } from './watchdog-view';

interface Peer {
  readonly name: string;
  readonly host: string;
  readonly wdPort: number;
  pgpoolPort: number;
  priority: number;
  /** Date.now() of its last heartbeat; 0 for never. */
  lastHeard: number;
  /** Date.now() when its link last closed: it is lost until a later heartbeat. */
  lostAt: number;
  last: HeartbeatMessage | null;
}

type Version = readonly [number, number];

function compareVersions(a: Version, b: Version): number {
  return a[0] !== b[0] ? a[0] - b[0] : a[1] - b[1];
}

/** How long a vote for a failover counts: a few health-check rounds of every instance fit in it. */
const voteLifetimeMs = 60_000;

/** How often the watchdog notes that its process runs (checkAwake). */
const awakeIntervalMs = 250;

export interface WatchdogOptions {
  readonly config: WatchdogConfig;
  readonly cluster: ClusterState;
  /** This instance's client port, which the others show. */
  readonly pgpoolPort: number;
}

export class Watchdog implements FailoverArbiter {
  readonly name: string;
  private readonly config: WatchdogConfig;
  private readonly cluster: ClusterState;
  private readonly links: WatchdogLinks;
  private readonly peers = new Map<string, Peer>();
  private state: WatchdogState = 'LOADING';
  private leader = '';
  private term = 0;
  private version: Version = [0, 0];
  /** The version of the leader's statuses last applied here; null before the first. */
  private applied: string | null = null;
  /** Set while the leader's statuses are applied, so that those changes are not sent back as this instance's own. */
  private applying = false;
  private escalated = false;
  /** Escalation and de-escalation commands, one at a time in order. */
  private commands: Promise<void> = Promise.resolve();
  private readonly votes = new Map<number, FailoverVote[]>();
  private timer: NodeJS.Timeout | null = null;
  /** No election of this instance before then unless every instance is heard: at start-up. */
  private electionNotBefore = 0;
  /** No election of this instance before then, whoever is alive: after a stall. */
  private quietUntil = 0;
  /** Date.now() at the last turn of the event loop the watchdog saw (a short interval timer keeps it). */
  private lastAwake = Date.now();
  private awakeTimer: NodeJS.Timeout | null = null;
  private failoversPerformed = 0;
  private statusChangesApplied = 0;
  private stopped = false;
  private readonly onChange = (node: BackendNode) => this.localChange(node);

  constructor(private readonly options: WatchdogOptions) {
    this.config = options.config;
    this.cluster = options.cluster;
    this.name = `${this.config.hostname}:${this.config.port}`;
    for (const peer of this.config.peers) {
      const name = `${peer.host}:${peer.wdPort}`;
      this.peers.set(name, { name, host: peer.host, wdPort: peer.wdPort, pgpoolPort: peer.pgpoolPort, priority: 0, lastHeard: 0, lostAt: 0, last: null });
    }
    this.links = new WatchdogLinks(
      { host: this.config.hostname, port: this.config.port },
      [...this.peers.values()].map((peer) => ({ name: peer.name, host: peer.host, port: peer.wdPort })),
      { message: (message) => this.receive(message), lost: (peer) => this.peerLost(peer) },
    );
  }

  async start(): Promise<void> {
    await this.links.start();
    this.cluster.arbiter = this;
    this.cluster.on('detach', this.onChange);
    this.cluster.on('attach', this.onChange);
    this.state = 'JOINING';
    // At start-up the others get a moment to be heard, so that the first election sees them.
    this.electionNotBefore = Date.now() + Math.min(this.config.heartbeatDeadtime, 2 * this.config.heartbeatKeepalive) * 1000;
    this.awakeTimer = setInterval(() => {
      this.checkAwake();
      this.lastAwake = Date.now();
    }, awakeIntervalMs);
    this.awakeTimer.unref();
    log('info', 'watchdog_started', { name: this.name, priority: this.config.priority, peers: [...this.peers.keys()].join(',') });
    this.tick();
  }

  /** Stops heartbeats and links; a leader runs wd_de_escalation_command first. Resolves once the commands ended. */
  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    if (this.awakeTimer) clearInterval(this.awakeTimer);
    this.cluster.off('detach', this.onChange);
    this.cluster.off('attach', this.onChange);
    if (this.cluster.arbiter === this) this.cluster.arbiter = null;
    this.state = 'SHUTDOWN';
    this.sendHeartbeats();
    this.deEscalate('shutdown');
    await this.links.stop();
    await this.commands;
  }

  /** Whether this instance leads: it alone runs failover_command and failback_command. */
  isLeader(): boolean {
    return this.state === 'LEADER';
  }

  /** The port the watchdog listens on. */
  get port(): number {
    return this.links.port;
  }

  // ---- failover consensus ------------------------------------------------------------------------------------

  /** ClusterState's fail path: this instance sees the node down. The leader decides; the node stays up until it does. */
  requestFailover(nodeId: number, reason: string): void {
    this.checkAwake();
    if (this.state === 'LEADER') return this.vote(nodeId, this.name, reason);
    if (this.leader === '' || !this.links.send(this.leader, { kind: 'failover-request', from: this.name, node: nodeId, reason })) {
      log('warning', 'watchdog_failover_request_dropped', { node: nodeId, reason, why: 'no leader to ask' });
      return;
    }
    log('info', 'watchdog_failover_requested', { node: nodeId, leader: this.leader, reason });
  }

  private vote(nodeId: number, from: string, reason: string): void {
    const node = this.cluster.nodes[nodeId];
    if (!node || node.status === 'down') return;
    const now = Date.now();
    const votes = [...(this.votes.get(nodeId) ?? []).filter((v) => now - v.at < voteLifetimeMs), { from, at: now }];
    this.votes.set(nodeId, votes);
    const counted = countVotes(votes, now, voteLifetimeMs, this.config.allowMultipleFailoverRequestsFromNode);
    const total = this.peers.size + 1;
    const alive = this.aliveCount(now);
    const verdict = failoverAllowed({
      alive,
      total,
      votes: counted,
      halfVotes: this.config.enableConsensusWithHalfVotes,
      whenQuorumExists: this.config.failoverWhenQuorumExists,
      requireConsensus: this.config.failoverRequireConsensus,
    });
    if (!verdict.ok) {
      log('warning', 'watchdog_failover_pending', { node: nodeId, from, reason, why: verdict.reason });
      return;
    }
    this.votes.delete(nodeId);
    this.failoversPerformed++;
    log('warning', 'watchdog_failover', { node: nodeId, votes: counted, alive, total, reason });
    this.cluster.detach(nodeId, `${reason} (watchdog consensus: ${counted} of ${total} instances)`);
  }

  /** A node attached or detached here: the leader makes it the cluster's; a standby tells the leader. */
  private localChange(node: BackendNode): void {
    if (this.applying) return;
    if (node.status === 'up') this.votes.delete(node.id);
    if (this.state === 'LEADER') {
      this.version = [this.term, this.version[1] + 1];
      this.applied = this.versionKey(this.version);
      this.sendHeartbeats();
      return;
    }
    if (this.leader !== '') {
      this.links.send(this.leader, { kind: 'node-command', from: this.name, node: node.id, status: node.status, reason: node.downReason ?? 'attached' });
    }
  }

  private versionKey(version: Version): string {
    return `${version[0]}.${version[1]}`;
  }

  /** Applies the leader's statuses when their version is new here; returns whether any node changed. */
  private adopt(message: HeartbeatMessage): void {
    const key = this.versionKey(message.version);
    if (key === this.applied || message.nodes.length !== this.cluster.nodes.length) return;
    this.applied = key;
    this.version = message.version;
    this.applying = true;
    try {
      message.nodes.forEach((status, id) => {
        const node = this.cluster.nodes[id];
        if (node.status === status) return;
        this.statusChangesApplied++;
        if (status === 'down') this.cluster.detach(id, `detached by the watchdog leader ${message.from}`);
        else this.cluster.attach(id);
      });
    } finally {
      this.applying = false;
    }
  }

  // ---- heartbeats and the election ----------------------------------------------------------------------------

  private receive(message: WatchdogMessage): void {
    if (this.stopped) return;
    this.checkAwake();
    const peer = this.peers.get(message.from);
    if (!peer) {
      log('warning', 'watchdog_unknown_peer', { from: message.from });
      return;
    }
    switch (message.kind) {
      case 'heartbeat': {
        const wasAlive = this.isAlive(peer, Date.now());
        peer.lastHeard = Date.now();
        peer.priority = message.priority;
        peer.pgpoolPort = message.pgpoolPort;
        peer.last = message;
        if (message.state === 'SHUTDOWN') peer.lostAt = peer.lastHeard + 1;
        this.term = Math.max(this.term, message.term);
        if (!wasAlive && this.isAlive(peer, Date.now())) log('info', 'watchdog_peer_alive', { peer: peer.name, state: message.state });
        this.evaluate();
        if (this.state !== 'LEADER' && message.from === this.leader && message.state === 'LEADER') this.adopt(message);
        return;
      }
      case 'failover-request':
        if (this.state !== 'LEADER') {
          log('warning', 'watchdog_failover_request_dropped', { node: message.node, from: message.from, why: 'this instance is not the leader' });
          return;
        }
        return this.vote(message.node, message.from, message.reason);
      case 'node-command': {
        if (this.state !== 'LEADER') return;
        const node = this.cluster.nodes[message.node];
        if (!node || node.status === message.status) return;
        log('info', 'watchdog_node_command', { node: message.node, from: message.from, status: message.status });
        if (message.status === 'down') this.cluster.detach(message.node, `${message.reason} (on ${message.from})`);
        else this.cluster.attach(message.node);
        return;
      }
    }
  }

  private peerLost(name: string): void {
    const peer = this.peers.get(name);
    if (!peer || this.stopped) return;
    this.checkAwake();
    const now = Date.now();
    const wasAlive = this.isAlive(peer, now);
    peer.lostAt = now;
    if (wasAlive) {
      log('warning', 'watchdog_peer_lost', { peer: name, reason: 'its link closed', leader: name === this.leader });
      this.evaluate();
    }
  }

  private isAlive(peer: Peer, now: number): boolean {
    return peer.lastHeard > 0 && now - peer.lastHeard < this.config.heartbeatDeadtime * 1000 && peer.lostAt <= peer.lastHeard;
  }

  private aliveCount(now: number): number {
    return 1 + [...this.peers.values()].filter((peer) => this.isAlive(peer, now)).length;
  }

  /** The claim of a leader that wins over another: newer statuses, then more instances seen, then the election order. */
  private better(a: { name: string; priority: number; version: Version; alive: number }, b: typeof a): boolean {
    const versions = compareVersions(a.version, b.version);
    if (versions !== 0) return versions > 0;
    if (a.alive !== b.alive) return a.alive > b.alive;
    return compareCandidates(a, b) < 0;
  }

  /**
   * N.B. a process stopped (SIGSTOP) or starved for longer than the others wait before they elect a new leader
   * wakes up to messages that queued meanwhile: failover requests addressed to it as leader, heartbeats of how
   * things were. Acting on them would fail a node over a second time, or win an election with stale statuses. So
   * a stalled instance gives up leadership, forgets the votes it holds, and for wd_heartbeat_deadtime only
   * follows a leader that claims it, without standing itself; requests reaching it meanwhile are dropped.
   */
  private checkAwake(): void {
    const now = Date.now();
    const stalledMs = now - this.lastAwake;
    this.lastAwake = now;
    const limitMs = Math.max(1000, (this.config.heartbeatDeadtime - this.config.heartbeatKeepalive) * 1000);
    if (stalledMs < limitMs || this.stopped) return;
    log('warning', 'watchdog_stalled', { name: this.name, ms: stalledMs, was: this.state });
    this.votes.clear();
    this.quietUntil = now + this.config.heartbeatDeadtime * 1000;
    if (this.state === 'LEADER') {
      this.deEscalate('this process was stalled');
      this.state = 'JOINING';
      this.leader = '';
    }
    // What the peers said before the stall is no claim any more: only heartbeats from now on count.
    for (const peer of this.peers.values()) peer.last = null;
  }

  private tick(): void {
    if (this.stopped) return;
    this.evaluate();
    this.sendHeartbeats();
    this.timer = setTimeout(() => this.tick(), this.config.heartbeatKeepalive * 1000);
    this.timer.unref();
  }

  /** Decides, from the peers alive now, whom this instance follows or whether it leads; runs the commands that go with it. */
  private evaluate(): void {
    if (this.stopped) return;
    const now = Date.now();
    const alivePeers = [...this.peers.values()].filter((peer) => this.isAlive(peer, now));
    const alive = alivePeers.length + 1;
    const total = this.peers.size + 1;
    const self = { name: this.name, priority: this.config.priority, version: this.version, alive };
    const claims = alivePeers
      .filter((peer) => peer.last?.state === 'LEADER')
      .map((peer) => ({ name: peer.name, priority: peer.priority, version: peer.last!.version, alive: peer.last!.alive }));
    const bestClaim = claims.reduce<(typeof claims)[number] | null>((best, claim) => (best === null || this.better(claim, best) ? claim : best), null);
    if (this.state === 'LEADER') {
      if (bestClaim && this.better(bestClaim, self)) {
        log('warning', 'watchdog_leader_resigned', { name: this.name, new_leader: bestClaim.name });
        this.deEscalate('another leader won');
        this.follow(bestClaim.name);
        const message = this.peers.get(bestClaim.name)!.last!;
        this.applied = null; // the winner's statuses are the cluster's
        this.adopt(message);
        return;
      }
      if (hasQuorum(alive, total, this.config.enableConsensusWithHalfVotes)) this.escalate();
      else this.deEscalate('quorum lost');
      return;
    }
    if (bestClaim) {
      if (this.leader !== bestClaim.name) {
        this.follow(bestClaim.name);
        this.adopt(this.peers.get(bestClaim.name)!.last!);
      }
      return;
    }
    if (this.leader !== '') {
      log('warning', 'watchdog_leader_lost', { leader: this.leader });
      this.leader = '';
      this.state = 'JOINING';
    }
    if ((now < this.electionNotBefore && alive < total) || now < this.quietUntil) return;
    const choice = electLeader([{ name: this.name, priority: this.config.priority }, ...alivePeers.map((peer) => ({ name: peer.name, priority: peer.priority }))]);
    if (choice?.name === this.name) this.lead();
  }

  private follow(leader: string): void {
    const changed = this.leader !== leader || this.state !== 'STANDBY';
    this.leader = leader;
    this.state = 'STANDBY';
    if (changed) log('info', 'watchdog_following', { name: this.name, leader });
  }

  private lead(): void {
    this.term++;
    this.state = 'LEADER';
    this.leader = this.name;
    // A new term: the statuses this instance holds are the cluster's from now on, under a version every instance applies.
    this.version = [this.term, 0];
    this.applied = this.versionKey(this.version);
    log('warning', 'watchdog_leader_elected', { name: this.name, term: this.term, alive: this.aliveCount(Date.now()), at: new Date().toISOString() });
    this.evaluate();
    this.sendHeartbeats();
  }

  private escalate(): void {
    if (this.escalated) return;
    this.escalated = true;
    log('info', 'watchdog_escalation', { name: this.name });
    this.runCommand('wd_escalation_command', this.config.escalationCommand);
  }

  private deEscalate(why: string): void {
    if (!this.escalated) return;
    this.escalated = false;
    log('info', 'watchdog_de_escalation', { name: this.name, why });
    this.runCommand('wd_de_escalation_command', this.config.deEscalationCommand);
  }

  private runCommand(parameter: string, command: string): void {
    if (command === '') return;
    this.commands = this.commands.then(async () => {
      const result = await runShellCommand(command, [], { timeoutMs: this.config.commandTimeout * 1000 });
      const ok = result.code === 0 && !result.timedOut;
      log(ok ? 'info' : 'error', ok ? `${parameter}_finished` : `${parameter}_failed`, { command, exit_status: result.code ?? `signal ${result.signal}`, output: result.output.trim() });
    });
  }

  private sendHeartbeats(): void {
    const message: HeartbeatMessage = {
      kind: 'heartbeat',
      from: this.name,
      priority: this.config.priority,
      pgpoolPort: this.options.pgpoolPort,
      state: this.state,
      leader: this.leader,
      term: this.term,
      alive: this.aliveCount(Date.now()),
      nodes: this.cluster.nodes.map((node): NodeStatusEntry => node.status),
      version: this.version,
    };
    this.links.broadcast(message);
  }

  // ---- what SHOW watchdog and PCP see -----------------------------------------------------------------------------

  view(): WatchdogView {
    const now = Date.now();
    const total = this.peers.size + 1;
    const alive = this.aliveCount(now);
    const members: WatchdogMemberView[] = [
      { name: this.name, host: this.config.hostname, pgpoolPort: this.options.pgpoolPort, wdPort: this.port, priority: this.config.priority, state: this.state, local: true, lastHeartbeat: null },
      ...[...this.peers.values()].map((peer): WatchdogMemberView => ({
        name: peer.name,
        host: peer.host,
        pgpoolPort: peer.pgpoolPort,
        wdPort: peer.wdPort,
        priority: peer.priority,
        state: this.isAlive(peer, now) ? peer.last?.state ?? 'JOINING' : peer.lastHeard === 0 ? 'LOADING' : peer.last?.state === 'SHUTDOWN' ? 'SHUTDOWN' : 'LOST',
        local: false,
        lastHeartbeat: peer.lastHeard === 0 ? null : new Date(peer.lastHeard),
      })),
    ];
    return {
      members,
      leader: this.leader,
      term: this.term,
      alive,
      total,
      quorumNeeded: majority(total, this.config.enableConsensusWithHalfVotes),
      quorumState: quorumState(alive, total, this.config.enableConsensusWithHalfVotes),
      escalated: this.escalated,
      failoversPerformed: this.failoversPerformed,
      statusChangesApplied: this.statusChangesApplied,
    };
  }
}
