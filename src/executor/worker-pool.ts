// The proxy's worker threads (piscina), started on first use: CPU-heavy merge work (grouped aggregates' fragments
// on the workers' own connections, folding partial aggregates) runs there, leaving the main thread to the client
// sockets. One thread fewer than the cores, at least one.
// N.B. atomics are disabled: with them an idle thread blocks in Atomics.wait, so it would not see its idle
// connections close (they would be handed to the next task as if alive) nor hear the broadcasts below.

import { availableParallelism } from 'node:os';
import { join } from 'node:path';
import { BroadcastChannel } from 'node:worker_threads';
import Piscina from 'piscina';
import { workerChannelName, type WorkerBroadcast } from './worker-messages';

let pool: Piscina | null = null;

export function workerPool(): Piscina {
  pool ??= new Piscina({
    filename: join(__dirname, 'worker-tasks.js'),
    minThreads: 0,
    maxThreads: Math.max(1, availableParallelism() - 1),
    // Tasks mostly wait on nodes or on the main thread's batches: a thread runs several at once, so one
    // session's long aggregate does not queue every other session's behind it.
    concurrentTasksPerWorker: 16,
    idleTimeout: 30_000,
    atomics: 'disabled',
  });
  return pool;
}

let channel: BroadcastChannel | null = null;
let nextBroadcastId = 1;
const waiting = new Map<number, (threadId: number) => void>();

/** How long to wait for a thread's answer; one that is still starting holds no connection yet. */
const answerTimeoutMs = 2000;

/**
 * Has every worker thread close its idle connections to `database` (and those a running task uses, when that task
 * ends); resolves once each thread answered, or after a short wait for one that does not.
 */
export function closeWorkerConnections(database: string): Promise<void> {
  const threads = pool?.threads ?? [];
  if (threads.length === 0) return Promise.resolve();
  if (!channel) {
    channel = new BroadcastChannel(workerChannelName);
    channel.unref();
    channel.onmessage = (event) => {
      const message = (event as MessageEvent).data as WorkerBroadcast;
      if (message.kind === 'closed-database') waiting.get(message.id)?.(message.threadId);
    };
  }
  const id = nextBroadcastId++;
  const pending = new Set(threads.map((thread) => thread.threadId));
  return new Promise((resolvePromise) => {
    const done = () => {
      clearTimeout(timer);
      waiting.delete(id);
      resolvePromise();
    };
    const timer = setTimeout(done, answerTimeoutMs);
    waiting.set(id, (threadId) => {
      pending.delete(threadId);
      if (pending.size === 0) done();
    });
    const message: WorkerBroadcast = { kind: 'close-database', id, database };
    channel!.postMessage(message);
  });
}

/** Stops the worker threads (at proxy shutdown). */
export async function closeWorkerPool(): Promise<void> {
  const current = pool;
  pool = null;
  channel?.close();
  channel = null;
  await current?.destroy();
}
