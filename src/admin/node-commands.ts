// SELECT parapool.attach_node(N), detach_node(N) and recover_node(N): pgpool-II's pcp_attach_node,
// pcp_detach_node and pcp_recovery_node as SQL on port 9999, answered by the proxy itself. Attaching does not
// check that the node's data caught up with the others': as with pcp_attach_node, that is the operator's call
// (recover_node is the way that makes it so). The last node in service is never detached by hand: the proxy
// would have nothing left to serve with.

import type { Node } from '@pgsql/types';
import type { ClusterState } from '../cluster/cluster-state';
import { functionName } from '../planner/ast-walk';
import { PgError, SqlState } from '../protocol/errors';
import { serverMessages } from '../protocol/server-messages';
import { log } from '../log';

export type NodeCommandName = 'attach_node' | 'detach_node' | 'recover_node' | 'promote_node';

/** What the commands do to the cluster; attach and recover hold new statements while they change it. */
export interface NodeOperations {
  readonly cluster: ClusterState;
  attach(nodeId: number): Promise<void>;
  recover(nodeId: number, progress: (message: string) => void): Promise<void>;
  /** Switchover in streaming-replication mode (absent in other modes): the standby becomes the primary. */
  promote?(nodeId: number): Promise<void>;
}

export interface NodeCommand {
  readonly name: NodeCommandName;
  readonly nodeId: number;
  /** What asked for it, for the detach reason (the SQL function when absent). */
  readonly via?: string;
}

const booleanOid = 16;

const commandNames = new Set<string>(['parapool.attach_node', 'parapool.detach_node', 'parapool.recover_node', 'parapool.promote_node']);

/** Reads `SELECT parapool.attach_node(N)` (or detach_node, recover_node); null for any other statement; throws 22023 for a bad call. */
export function parseNodeCommand(node: Node): NodeCommand | null {
  const select = (node as { SelectStmt?: Record<string, unknown> }).SelectStmt;
  if (!select || select.fromClause || select.whereClause) return null;
  const targets = (select.targetList as { ResTarget?: { val?: { FuncCall?: Record<string, unknown> } } }[] | undefined) ?? [];
  const call = targets.length === 1 ? targets[0].ResTarget?.val?.FuncCall : undefined;
  if (!call || !commandNames.has(functionName(call))) return null;
  const name = functionName(call).slice('parapool.'.length) as NodeCommandName;
  const args = (call.args as Record<string, unknown>[] | undefined) ?? [];
  const usage = `call it as SELECT parapool.${name}(node_id), node_id as SHOW pool_nodes lists it`;
  if (args.length !== 1) throw new PgError({ code: SqlState.invalidParameterValue, message: `parapool.${name} takes one argument, the node id`, hint: usage });
  const inner = 'TypeCast' in args[0] ? (args[0].TypeCast as { arg: Record<string, unknown> }).arg : args[0];
  const constant = inner.A_Const as { ival?: { ival?: number }; sval?: { sval: string } } | undefined;
  const text = constant?.ival ? String(constant.ival.ival ?? 0) : constant?.sval?.sval;
  if (text === undefined || !/^\d+$/.test(text)) {
    throw new PgError({ code: SqlState.invalidParameterValue, message: `parapool.${name} needs a node id as a non-negative integer constant`, hint: usage });
  }
  return { name, nodeId: Number(text) };
}

/**
 * Carries out the command: true when the node's status changed, false when it already was so (recover_node
 * refuses a node in service instead). Throws 22023 for a node that does not exist, 55000 for the last node in
 * service or a recovery that failed. Shared by the SQL functions and the PCP server.
 */
export async function changeNode(command: NodeCommand, operations: NodeOperations, progress: (message: string) => void): Promise<boolean> {
  const { cluster } = operations;
  const node = cluster.nodes[command.nodeId];
  if (!node) {
    throw new PgError({ code: SqlState.invalidParameterValue, message: `there is no node ${command.nodeId}`, hint: `the nodes are numbered 0 to ${cluster.nodes.length - 1}` });
  }
  if (command.name === 'detach_node') {
    if (node.status !== 'up') return false;
    if (cluster.upNodes().length === 1) {
      throw new PgError({
        code: SqlState.objectNotInPrerequisiteState,
        message: `${cluster.describe(node.id)} is the last node in service and cannot be detached`,
        hint: 'attach another node first',
      });
    }
    cluster.detach(node.id, `detached by hand (${command.via ?? 'parapool.detach_node'})`);
    return true;
  }
  if (command.name === 'attach_node') {
    if (node.status === 'up') return false;
    await operations.attach(node.id);
    return true;
  }
  if (command.name === 'promote_node') {
    if (!operations.promote) {
      throw new PgError({ code: SqlState.featureNotSupported, message: 'promote_node needs backend_clustering_mode = streaming_replication', hint: 'in native replication every node is written: there is no primary to change' });
    }
    if (node.role === 'primary') return false;
    await operations.promote(node.id);
    return true;
  }
  // The asker hears each step as a NOTICE; the log keeps them for whoever looks later.
  await operations.recover(node.id, (message) => {
    log('info', 'recovery_progress', { node: node.id, via: command.via ?? 'parapool.recover_node', message });
    progress(message);
  });
  return true;
}

/** Runs the command and returns the reply frames: one row, `changeNode`'s answer. */
export async function runNodeCommand(command: NodeCommand, operations: NodeOperations, progress: (message: string) => void): Promise<Buffer[]> {
  const changed = await changeNode(command, operations, progress);
  return [serverMessages.textRowDescription([command.name], [booleanOid]), serverMessages.dataRow([changed ? 't' : 'f']), serverMessages.commandComplete('SELECT 1')];
}
