// Messages between the main thread and every worker thread at once, over one BroadcastChannel: piscina's own port
// reaches one thread per task, and a DROP DATABASE must reach the idle connections of all of them.

/** The channel's name. */
export const workerChannelName = 'parapool-worker-connections';

export type WorkerBroadcast =
  /** From the main thread: close every idle connection to `database` (and those in use once their task ends). */
  | { readonly kind: 'close-database'; readonly id: number; readonly database: string }
  /** From a worker thread: it did. */
  | { readonly kind: 'closed-database'; readonly id: number; readonly threadId: number };
