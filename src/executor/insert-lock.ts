// pgpool-II's insert_lock, kept in the proxy: a write that may advance a sequence holds that sequence's lock from
// the moment it is sent until every node has run it, so concurrent writers reach the sequence in the same order
// on every node and a replicated serial column gets the same values everywhere. nextval() is not transactional,
// so the order of statements is what matters: the lock is held for a statement, not for its transaction.
//
// A statement that holds the lock may wait on the nodes for a row lock of another session's transaction, and that
// transaction may wait here for the same sequence: a deadlock no node sees. A waiter inside a transaction (it may
// hold row locks) therefore gives up after a time limit; a waiter outside one holds nothing and waits its turn.

import { PgError, SqlState } from '../protocol/errors';

interface Waiter {
  readonly grant: () => void;
}

export interface InsertLockWait {
  /** Give up after this many milliseconds; null waits until granted or cancelled. */
  readonly timeoutMs: number | null;
  /** Registers a callback that abandons the wait (a CancelRequest); returns its unregistration. */
  readonly onCancel?: (cancel: () => void) => () => void;
}

export class InsertLock {
  /** Sequence → the queue of its holder (first) and waiters. */
  private readonly queues = new Map<string, Waiter[]>();

  /** Takes the locks of every sequence named, in name order (so two statements never wait for each other). */
  async acquire(sequences: readonly string[], wait: InsertLockWait): Promise<() => void> {
    const held: (() => void)[] = [];
    const releaseAll = () => {
      for (const release of held.splice(0).reverse()) release();
    };
    try {
      for (const sequence of [...new Set(sequences)].sort()) held.push(await this.acquireOne(sequence, wait));
    } catch (error) {
      releaseAll();
      throw error;
    }
    return releaseAll;
  }

  /** Sequences locked now, with the number of statements waiting for each (for SHOW and tests). */
  snapshot(): Map<string, number> {
    return new Map([...this.queues].map(([sequence, queue]) => [sequence, queue.length - 1]));
  }

  private acquireOne(sequence: string, wait: InsertLockWait): Promise<() => void> {
    return new Promise((resolvePromise, rejectPromise) => {
      let released = false;
      let timer: NodeJS.Timeout | null = null;
      let unregisterCancel: () => void = () => undefined;
      const release = () => {
        if (released) return;
        released = true;
        const queue = this.queues.get(sequence)!;
        queue.shift();
        if (queue.length === 0) this.queues.delete(sequence);
        else queue[0].grant();
      };
      const waiter: Waiter = {
        grant: () => {
          if (timer) clearTimeout(timer);
          unregisterCancel();
          resolvePromise(release);
        },
      };
      const queue = this.queues.get(sequence);
      if (!queue) {
        this.queues.set(sequence, [waiter]);
        return waiter.grant();
      }
      queue.push(waiter);
      const abandon = (error: PgError) => {
        const at = queue.indexOf(waiter);
        if (at <= 0) return; // granted meanwhile
        queue.splice(at, 1);
        if (timer) clearTimeout(timer);
        unregisterCancel();
        rejectPromise(error);
      };
      if (wait.timeoutMs !== null) {
        timer = setTimeout(
          () =>
            abandon(
              new PgError({
                code: SqlState.lockNotAvailable,
                message: `could not take the insert lock of sequence "${sequence}" within ${wait.timeoutMs} ms`,
                detail: 'Another session holds it for a statement that is waiting on the nodes, possibly for a lock this transaction holds.',
                hint: 'retry the transaction; insert_lock_timeout sets the limit',
              }),
            ),
          wait.timeoutMs,
        );
      }
      unregisterCancel = wait.onCancel?.(() => abandon(new PgError({ code: SqlState.queryCanceled, message: 'canceling statement due to user request' }))) ?? unregisterCancel;
    });
  }
}
