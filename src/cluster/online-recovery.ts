// Online recovery, in pgpool-II's two stages: a detached node is rebuilt from the main node and attached without
// stopping the service. The first stage (recovery_1st_stage_command) copies the main node while clients go on
// writing; then new statements are held and the proxy waits until no session holds anything on the nodes; the
// second stage (recovery_2nd_stage_command) brings the copy up to the main node's last write; the node must then
// serve, out of recovery, and is attached; sessions connect to it before their next statement; statements resume.
//
// Both commands get pgpool-II's arguments: the main node's data directory, the recovered node's host, its data
// directory, the main node's port, the recovered node's id, its port, the main node's host. The proxy runs them
// on its own host (pgpool runs them on the main node through its extension): a command for a remote node uses ssh.
//
// In streaming-replication mode the node comes back as a standby of the primary, as in pgpool-II: the first
// stage makes it one (PARAPOOL_APPLICATION_NAME in its environment names the stream), nothing is held, no second
// stage runs, and the node is attached once it accepts connections in recovery.

import { log } from '../log';
import { PgError, SqlState } from '../protocol/errors';
import { BackendConnection } from '../backend/backend-connection';
import type { StoredSecret } from '../protocol/password-file';
import { describeNode, type BackendNode } from './backend-node';
import type { ClusterState } from './cluster-state';
import { runShellCommand } from './shell-command';

export interface RecoverySettings {
  readonly firstStageCommand: string;
  readonly secondStageCommand: string;
  /** Seconds each stage, the wait for sessions and the wait for the node to serve may take. */
  readonly timeoutSeconds: number;
  readonly user: string;
  readonly secret: StoredSecret | null;
  readonly connectTimeoutMs: number;
}

export interface RecoveryHost {
  readonly cluster: ClusterState;
  /** Holds new statements and resolves, with the hold's release, once no other session holds anything on the nodes. */
  quiesce(): Promise<() => void>;
}

let recovering: number | null = null;

const sleep = (ms: number) => new Promise((resolvePromise) => setTimeout(resolvePromise, ms));

function recoveryError(message: string, detail?: string): PgError {
  return new PgError({ code: SqlState.objectNotInPrerequisiteState, message, detail, hint: 'the node stays detached; SHOW pool_nodes and the log say more' });
}

/**
 * Whether the node accepts connections and is out of recovery (a standby not yet promoted is not ready), or with
 * `asStandby` in recovery; null when it is, else why not.
 */
async function serves(node: BackendNode, settings: RecoverySettings, asStandby: boolean): Promise<string | null> {
  let connection: BackendConnection | null = null;
  try {
    const parameters = new Map([['user', settings.user], ['database', 'postgres'], ['application_name', 'parapool recovery']]);
    connection = await BackendConnection.connect({ node, parameters, secret: settings.secret, connectTimeoutMs: settings.connectTimeoutMs }, 'recovery');
    const result = await connection.query('SELECT pg_is_in_recovery()');
    if (asStandby) return result.rows[0]?.[0] === 't' ? null : 'it is out of recovery, not a standby';
    return result.rows[0]?.[0] === 'f' ? null : 'it is still in recovery';
  } catch (error) {
    return (error as Error).message;
  } finally {
    connection?.destroy();
  }
}

async function runStage(stage: string, command: string, main: BackendNode, target: BackendNode, settings: RecoverySettings, progress: (message: string) => void, env: Record<string, string> = {}): Promise<void> {
  const args = [main.dataDirectory ?? '', target.host, target.dataDirectory ?? '', String(main.port), String(target.id), String(target.port), main.host];
  progress(`${stage} of the recovery of ${describeNode(target)}: ${command}`);
  const started = Date.now();
  const result = await runShellCommand(command, args, {
    timeoutMs: settings.timeoutSeconds * 1000,
    env: { PGUSER: settings.user, PGCONNECT_TIMEOUT: String(Math.ceil(settings.connectTimeoutMs / 1000)), ...env },
  });
  log(result.code === 0 ? 'info' : 'error', 'recovery_stage_done', { node: target.id, stage, command, exit: result.code, signal: result.signal, ms: Date.now() - started, output: result.output.slice(-2000) });
  if (result.code !== 0) {
    throw recoveryError(
      `${stage} of the recovery of ${describeNode(target)} failed${result.timedOut ? ` (no end within recovery_timeout, ${settings.timeoutSeconds} s)` : result.code === null ? '' : ` with exit status ${result.code}`}`,
      result.output.trim().split('\n').slice(-5).join('\n'),
    );
  }
}

/**
 * Recovers a detached node from the main node and attaches it. `progress` hears each step (the caller's NOTICEs).
 * Throws a PgError (55000) naming what failed; statements are held only during the second stage, at most
 * recovery_timeout seconds for the wait and again for the stage.
 */
export async function recoverNode(nodeId: number, host: RecoveryHost, settings: RecoverySettings, progress: (message: string) => void): Promise<void> {
  const target = host.cluster.nodes[nodeId];
  if (!target) throw new PgError({ code: SqlState.invalidParameterValue, message: `there is no node ${nodeId}` });
  if (target.status === 'up') throw recoveryError(`${describeNode(target)} is in service`, 'Only a detached node is recovered: detach it first.');
  if (!settings.firstStageCommand) throw recoveryError('recovery_1st_stage_command is not set', 'Online recovery runs the commands the configuration names.');
  const main = host.cluster.mainNode();
  if (!main) throw recoveryError('no node is in service to recover from');
  if (recovering !== null) throw recoveryError(`the recovery of node ${recovering} is under way`);
  recovering = nodeId;
  const started = Date.now();
  let release: (() => void) | null = null;
  try {
    log('info', 'recovery_started', { node: nodeId, from: main.id });
    const streaming = host.cluster.streaming;
    await runStage('first stage', settings.firstStageCommand, main, target, settings, progress, streaming ? { PARAPOOL_APPLICATION_NAME: target.applicationName || `node${target.id}` } : {});
    if (streaming) {
      progress(`waiting for ${describeNode(target)} to serve as a standby of ${describeNode(main)}`);
      let why: string | null = 'not asked yet';
      for (const deadline = Date.now() + settings.timeoutSeconds * 1000; Date.now() < deadline; await sleep(200)) {
        why = await serves(target, settings, true);
        if (why === null) break;
      }
      if (why !== null) throw recoveryError(`${describeNode(target)} does not serve as a standby after its recovery: ${why}`);
      if (host.cluster.mainNode() !== main) throw recoveryError(`the primary changed during the recovery of ${describeNode(target)}`);
      host.cluster.setRole(nodeId, 'standby');
      host.cluster.attach(nodeId);
      log('info', 'recovery_done', { node: nodeId, ms: Date.now() - started, role: 'standby' });
      progress(`${describeNode(target)} is recovered and attached as a standby (${Date.now() - started} ms)`);
      return;
    }
    progress('holding new statements until no session holds anything on the nodes');
    release = await host.quiesce();
    const heldAt = Date.now();
    if (host.cluster.mainNode() !== main) throw recoveryError(`the main node changed during the recovery of ${describeNode(target)}`);
    if (settings.secondStageCommand) await runStage('second stage', settings.secondStageCommand, main, target, settings, progress);
    progress(`waiting for ${describeNode(target)} to serve`);
    let why: string | null = 'not asked yet';
    for (const deadline = Date.now() + settings.timeoutSeconds * 1000; Date.now() < deadline; await sleep(200)) {
      why = await serves(target, settings, false);
      if (why === null) break;
    }
    if (why !== null) throw recoveryError(`${describeNode(target)} does not serve after its recovery: ${why}`);
    host.cluster.attach(nodeId);
    log('info', 'recovery_done', { node: nodeId, ms: Date.now() - started, statements_held_ms: Date.now() - heldAt });
    progress(`${describeNode(target)} is recovered and attached (${Date.now() - started} ms; statements held ${Date.now() - heldAt} ms)`);
  } catch (error) {
    log('error', 'recovery_failed', { node: nodeId, error: (error as Error).message });
    throw error;
  } finally {
    release?.();
    recovering = null;
  }
}
