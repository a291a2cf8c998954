// The proxy's view of its nodes: which are in service, which one answers for the cluster (the main node:
// the lowest-numbered node in service, as in pgpool-II), and the detach events sessions react to.

import { emptyBackendStats } from './statement-activity';
import { EventEmitter } from 'node:events';
import type { BackendConfig } from '../config/config';
import { log } from '../log';
import { describeNode, type BackendNode } from './backend-node';
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

/** Emits 'detach' and 'attach' with (node, change: NodeChange). */
export class ClusterState extends EventEmitter {
  readonly nodes: BackendNode[];

  private readonly probing = new Map<number, Promise<boolean>>();

  constructor(backends: readonly BackendConfig[], private readonly lossProbe: LossProbe = { user: 'postgres', timeoutMs: 10_000 }) {
    super();
    this.setMaxListeners(0); // every session listens for detaches
    this.nodes = backends.map((b) => ({
      id: b.id,
      host: b.host,
      port: b.port,
      weight: b.weight,
      dataDirectory: b.dataDirectory,
      status: 'up',
      statusChangedAt: new Date(),
      downReason: null,
      selectCount: 0,
      stats: emptyBackendStats(),
    }));
  }

  upNodes(): BackendNode[] {
    return this.nodes.filter((n) => n.status === 'up');
  }

  /** The node whose answers are relayed for writes; null when no node is in service. */
  mainNode(): BackendNode | null {
    return this.nodes.find((n) => n.status === 'up') ?? null;
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
    const change: NodeChange = { node, oldMain, newMain: this.mainNode() };
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
        this.detach(nodeId, `${reason} (${result.reason})`);
        return true;
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
    const change: NodeChange = { node, oldMain, newMain: this.mainNode() };
    this.emit('attach', node, change);
  }

  describe(nodeId: number): string {
    return describeNode(this.nodes[nodeId]);
  }
}
