// The proxy's worker threads (piscina), started on first use: CPU-heavy merge work (grouped aggregates' fragments
// on the workers' own connections, folding partial aggregates) runs there, leaving the main thread to the client
// sockets. One thread fewer than the cores, at least one.

import { availableParallelism } from 'node:os';
import { join } from 'node:path';
import Piscina from 'piscina';

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
  });
  return pool;
}

/** Stops the worker threads (at proxy shutdown). */
export async function closeWorkerPool(): Promise<void> {
  const current = pool;
  pool = null;
  await current?.destroy();
}
