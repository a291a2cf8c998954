// failover_command and failback_command: the operator's scripts, run through /bin/sh -c when a node is detached
// (for any reason) or attached, with pgpool-II's placeholders. They run one at a time in the order of the
// changes, as pgpool serialises its failovers, so a script never sees a failback before the failover it follows;
// a script that fails or hangs is logged and never holds up or takes down the proxy.

import { spawn } from 'node:child_process';
import { log } from '../log';
import type { BackendNode } from './backend-node';
import type { ClusterState, NodeChange } from './cluster-state';

/**
 * The command with pgpool's placeholders replaced: %d %h %p %D (the node detached or attached), %m %H %r %R (the
 * new main node), %M (the old main node), %P %N %S (the old primary: the old main node in replication mode) and
 * %% (a %). Values are inserted as they are, unquoted, as pgpool does; a missing node gives -1 for its id and ''
 * for the rest. Any other %x is kept as written.
 */
export function expandPlaceholders(command: string, change: NodeChange): string {
  const { node, oldMain, newMain } = change;
  const id = (n: BackendNode | null) => (n ? String(n.id) : '-1');
  const values: Record<string, string> = {
    d: String(node.id),
    h: node.host,
    p: String(node.port),
    D: node.dataDirectory ?? '',
    m: id(newMain),
    H: newMain?.host ?? '',
    r: newMain ? String(newMain.port) : '',
    R: newMain?.dataDirectory ?? '',
    M: id(oldMain),
    P: id(oldMain),
    N: oldMain?.host ?? '',
    S: oldMain ? String(oldMain.port) : '',
    '%': '%',
  };
  return command.replace(/%(.)/g, (whole, letter: string) => values[letter] ?? whole);
}

export class FailoverCommands {
  /** The commands queued and running, in order. */
  private tail: Promise<void> = Promise.resolve();
  private readonly onDetach = (_node: BackendNode, change: NodeChange) => this.enqueue('failover_command', this.failoverCommand, change);
  private readonly onAttach = (_node: BackendNode, change: NodeChange) => this.enqueue('failback_command', this.failbackCommand, change);

  /**
   * `runsHere` says whether this instance runs the commands: with the watchdog only its leader does, and the
   * others apply the leader's changes without running them again.
   */
  constructor(private readonly cluster: ClusterState, private readonly failoverCommand: string, private readonly failbackCommand: string, private readonly runsHere: () => boolean = () => true) {}

  /** Starts running the commands on the cluster's detaches and attaches from now on. */
  start(): void {
    this.cluster.on('detach', this.onDetach);
    this.cluster.on('attach', this.onAttach);
  }

  /** Runs no command for later changes; the ones already started finish on their own. */
  stop(): void {
    this.cluster.off('detach', this.onDetach);
    this.cluster.off('attach', this.onAttach);
  }

  /** Resolves once every command queued so far has ended. */
  idle(): Promise<void> {
    return this.tail;
  }

  private enqueue(parameter: string, template: string, change: NodeChange): void {
    if (template === '') return;
    if (!this.runsHere()) {
      log('info', `${parameter}_left_to_leader`, { node: change.node.id });
      return;
    }
    const command = expandPlaceholders(template, change);
    this.tail = this.tail.then(() => run(parameter, command, change.node.id));
  }
}

/** Runs one command and logs how it ended; resolves in every case. */
function run(parameter: string, command: string, nodeId: number): Promise<void> {
  return new Promise((resolvePromise) => {
    const started = Date.now();
    log('info', `${parameter}_started`, { node: nodeId, command });
    let output = '';
    const child = spawn('/bin/sh', ['-c', command], { stdio: ['ignore', 'pipe', 'pipe'] });
    const keep = (chunk: Buffer) => {
      output = (output + chunk.toString('utf8')).slice(-2000);
    };
    child.stdout.on('data', keep);
    child.stderr.on('data', keep);
    child.once('error', (error) => {
      log('error', `${parameter}_failed`, { node: nodeId, command, error: error.message });
      resolvePromise();
    });
    child.once('close', (code, signal) => {
      const fields = { node: nodeId, command, exit_status: code ?? `signal ${signal}`, ms: Date.now() - started, output: output.trim() };
      log(code === 0 ? 'info' : 'error', code === 0 ? `${parameter}_finished` : `${parameter}_failed`, fields);
      resolvePromise();
    });
  });
}
