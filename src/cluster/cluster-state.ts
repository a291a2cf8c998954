// The proxy's view of its nodes: which are in service, which one answers for the cluster (the main node: in
// native replication the lowest-numbered node in service, as in pgpool-II; in streaming replication the primary),
// and the detach events sessions react to.

import { emptyBackendStats } from './statement-activity';
import { EventEmitter } from 'node:events';
import { defaultBackendFlags, type BackendConfig, type ClusteringMode } from '../config/config';
import { log } from '../log';
import { describeNode, emptyReplicationStatus, type BackendNode, type NodeRole } from './backend-node';
import { probeNode } from './node-probe';

/** How a lost connection is checked against the node before the node is taken out of service. */
export interface LossProbe {
  readonly user: string;
  readonly timeoutMs: number;
}

/** What a detach or an attach changed: the main node before and after, for failover_command and failback_command. */
export interface NodeChange {
  readonly node: BackendNode;
  readonly oldMain: BackendNode | null;
  readonly newMain: BackendNode | null;
}

/**
 * Who decides a failure found here when the proxy is one of several (the watchdog): the node stays in service
 * until the decision is taken, by consensus, and comes back as a detach.
 */
export interface FailoverArbiter {
  requestFailover(nodeId: number, reason: string): void;
}

/** Emits 'detach' and 'attach' with (node, change: NodeChange). */
export class ClusterState extends EventEmitter {
  readonly nodes: BackendNode[];

  private readonly probing = new Map<number, Promise<boolean>>();

  /** Set by the watchdog while it runs: failures go to it instead of detaching the node here. */
  arbiter: FailoverArbiter | null = null;

  /** Whether the nodes are a primary and its streaming standbys (backend_clustering_mode = streaming_replication). */
  readonly streaming: boolean;

  constructor(backends: readonly BackendConfig[], private readonly lossProbe: LossProbe = { user: 'postgres', timeoutMs: 10_000 }, mode: ClusteringMode = 'native_replication') {
    super();
    this.streaming = mode === 'streaming_replication';
    this.setMaxListeners(0); // every session listens for detaches
    this.nodes = backends.map((b) => ({
      id: b.id,
      host: b.host,
      port: b.port,
      weight: b.weight,
      dataDirectory: b.dataDirectory,
      flags: b.flags ?? defaultBackendFlags,
      applicationName: b.applicationName ?? '',
      status: 'up',
      role: 'unknown',
      replication: emptyReplicationStatus(),
      statusChangedAt: new Date(),
      downReason: null,
      selectCount: 0,
      stats: emptyBackendStats(),
    }));
  }

  upNodes(): BackendNode[] {
    return this.nodes.filter((n) => n.status === 'up');
  }

  /**
   * The node whose answers are relayed for writes; null when no node is in service. In streaming replication
   * the primary, and null while no primary is in service (between a primary's detach and a promotion).
   */
  mainNode(): BackendNode | null {
    if (this.streaming) return this.nodes.find((n) => n.status === 'up' && n.role === 'primary') ?? null;
    return this.nodes.find((n) => n.status === 'up') ?? null;
  }

  /** The node that is to answer for the cluster after a change: the main node, or while there is no primary the standby in service with the lowest id (pgpool's "new main node", %m). */
  private nextMain(): BackendNode | null {
    return this.mainNode() ?? (this.streaming ? this.upNodes()[0] ?? null : null);
  }

  /**
   * Records what a node answered pg_is_in_recovery(); a node found primary makes every other node a standby
   * (one primary at a time: the one promoted last).
   */
  setRole(nodeId: number, role: NodeRole): void {
    const node = this.nodes[nodeId];
    if (!node) return;
    if (role === 'primary') {
      for (const other of this.nodes) if (other !== node) other.role = 'standby';
    }
    if (node.role !== role) log('info', 'node_role', { node: nodeId, address: `${node.host}:${node.port}`, role });
    node.role = role;
  }

  /**
   * A failure found by the proxy (a health check, a lost connection): the node is detached unless its
   * backend_flag says DISALLOW_TO_FAILOVER, as in pgpool-II, where only the operator takes it out. With an
   * arbiter (the watchdog) the failure is a request to it; returns whether the node is out of service now.
   */
  fail(nodeId: number, reason: string): boolean {
    const node = this.nodes[nodeId];
    if (!node || node.status === 'down') return true;
    if (!node.flags.allowToFailover) {
      log('warning', 'node_failure_kept', { node: nodeId, reason, flag: 'DISALLOW_TO_FAILOVER' });
      return false;
    }
    if (this.arbiter) {
      this.arbiter.requestFailover(nodeId, reason);
      return (node.status as BackendNode['status']) === 'down'; // the leader may have decided at once
    }
    this.detach(nodeId, reason);
    return true;
  }

  /** Takes a node out of service; sessions drop their connections to it before their next statement. */
  detach(nodeId: number, reason: string): void {
    const node = this.nodes[nodeId];
    if (!node || node.status === 'down') return;
    const oldMain = this.mainNode();
    node.status = 'down';
    node.statusChangedAt = new Date();
    node.downReason = reason;
    log('error', 'node_detached', { node: nodeId, address: `${node.host}:${node.port}`, reason });
    const change: NodeChange = { node, oldMain, newMain: this.nextMain() };
    this.emit('detach', node, change);
  }

  /**
   * A connection to the node ended without the proxy closing it. The node is detached only when a probe finds
   * it no longer serving; resolves to whether it is out of service. Concurrent losses share one probe.
   */
  confirmLoss(nodeId: number, reason: string): Promise<boolean> {
    const node = this.nodes[nodeId];
    if (!node || node.status === 'down') return Promise.resolve(true);
    let probe = this.probing.get(nodeId);
    if (!probe) {
      probe = probeNode(node, this.lossProbe.user, this.lossProbe.timeoutMs).then((result) => {
        this.probing.delete(nodeId);
        if (result.serving) {
          log('warning', 'node_connection_lost', { node: nodeId, reason, probe: result.reason });
          return false;
        }
        return this.fail(nodeId, `${reason} (${result.reason})`);
      });
      this.probing.set(nodeId, probe);
    }
    return probe;
  }

  /** How many attaches there were: sessions compare it with the count they last joined at (cheaply, per statement). */
  attachCount = 0;

  attach(nodeId: number): void {
    const node = this.nodes[nodeId];
    if (!node || node.status === 'up') return;
    this.attachCount++;
    const oldMain = this.mainNode();
    node.status = 'up';
    node.statusChangedAt = new Date();
    node.downReason = null;
    log('info', 'node_attached', { node: nodeId, address: `${node.host}:${node.port}` });
    const change: NodeChange = { node, oldMain, newMain: this.nextMain() };
    this.emit('attach', node, change);
  }

  /** The role SHOW pool_nodes, PCP and the metrics report: primary or standby in streaming replication, else main or replica. */
  roleName(node: BackendNode): 'primary' | 'standby' | 'main' | 'replica' {
    if (this.streaming) return node.role === 'primary' ? 'primary' : 'standby';
    return node === this.mainNode() ? 'main' : 'replica';
  }

  describe(nodeId: number): string {
    return describeNode(this.nodes[nodeId]);
  }
}
