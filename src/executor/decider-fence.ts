// A decider's transaction id names the prepared transactions of the other nodes, and recovery asks the decider
// what became of that id. An id the decider assigned but never wrote to disk is handed out again after the
// decider crashes, to an unrelated transaction, whose outcome recovery would then take for the decision. So
// before any node prepares under the id, the decider's node durably commits a later transaction of its own
// (the fence): after a crash its next id is then past the decider's, whose status stays "aborted" unless its
// own COMMIT reached the disk.
//
// One connection per node runs the fences, and the commits that ask while one runs share the next one: a
// fence covers every id assigned before it took its own.

import { BackendConnection } from '../backend/backend-connection';

interface NodeFence {
  connection: BackendConnection | null;
  running: Promise<void> | null;
  queued: Promise<void> | null;
}

const fences = new Map<string, NodeFence>();

function fenceOf(decider: BackendConnection): NodeFence {
  const key = `${decider.node.host}:${decider.node.port}`;
  let fence = fences.get(key);
  if (!fence) fences.set(key, (fence = { connection: null, running: null, queued: null }));
  return fence;
}

async function openFence(fence: NodeFence, decider: BackendConnection): Promise<BackendConnection> {
  const connection = await BackendConnection.connect(decider.startup, `fence:${decider.poolKey}`);
  try {
    // Local flush is what a crash of this node needs; waiting for standbys would only slow the commit down.
    await connection.query("SET synchronous_commit = 'local'; SET application_name = 'parapool commit fence'");
  } catch (error) {
    connection.destroy();
    throw error;
  }
  fence.connection = connection;
  return connection;
}

async function runFence(fence: NodeFence, decider: BackendConnection): Promise<void> {
  // A transactional message gives the transaction an id and a WAL record of its own: a transaction that wrote no
  // WAL before its commit record (txid_current() alone) commits without waiting for the flush.
  const sql = "SELECT pg_logical_emit_message(true, 'parapool', 'commit fence')";
  const open = fence.connection && !fence.connection.closed ? fence.connection : await openFence(fence, decider);
  try {
    await open.query(sql);
  } catch (error) {
    // The node ended the idle connection (a restart, pg_terminate_backend): once more on a new one.
    if (!open.closed) throw error;
    await (await openFence(fence, decider)).query(sql);
  }
}

/**
 * Resolves once the decider's node has durably committed a transaction whose id it assigned after the call: the
 * decider's own id (taken before the call) can then never be handed out again. Rejects when the node cannot.
 */
export function fenceDeciderId(decider: BackendConnection): Promise<void> {
  const fence = fenceOf(decider);
  if (!fence.running) {
    const running = runFence(fence, decider).finally(() => {
      if (fence.running === running) fence.running = null;
    });
    fence.running = running;
    return running;
  }
  // The fence under way may have taken its id before the caller's: wait for the next one.
  if (!fence.queued) {
    fence.queued = fence.running.catch(() => undefined).then(() => {
      fence.queued = null;
      return fenceDeciderId(decider);
    });
  }
  return fence.queued;
}

/** Closes the fence connections, or those to one database (about to be dropped). */
export function closeDeciderFences(database?: string): void {
  for (const [key, fence] of fences) {
    if (database !== undefined && fence.connection?.database !== database) continue;
    fence.connection?.terminate();
    fence.connection = null;
    if (database === undefined) fences.delete(key);
  }
}
