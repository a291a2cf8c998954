// The last line of defence: an error that escaped its owner (an unhandled rejection, an uncaught exception) is
// logged and counted instead of ending the process, so one session's bug never takes every other session down.
// Every such event is a bug to fix: the tests read the count and fail when it is not zero.

import { log } from '../log';

let installed = false;
let escaped = 0;

/** How many errors reached the last-resort handlers since the process started. */
export function escapedErrorCount(): number {
  return escaped;
}

export function installProcessGuard(): void {
  if (installed) return;
  installed = true;
  process.on('unhandledRejection', (reason) => {
    escaped++;
    log('error', 'unhandled_rejection', { error: (reason as Error)?.stack ?? String(reason) });
  });
  process.on('uncaughtException', (error) => {
    escaped++;
    log('error', 'uncaught_exception', { error: error?.stack ?? String(error) });
  });
}
