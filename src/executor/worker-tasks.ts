// The tasks the proxy's worker threads run (worker-pool.ts), by name: folding partial aggregates streamed from
// the main thread, and running a grouped aggregate's fragments on the worker's own connections.

export { combinePartials } from './combine-worker';
export { runFragmentsAndFold } from './fragment-worker';
