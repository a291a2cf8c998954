// Holds the statements sessions are about to start, for the moments when the nodes must see no new work: the
// second stage of an online recovery and the attach of a node in replication mode. A session checks the gate only
// where it holds nothing on the nodes (outside a transaction, no exchange open), so holding it never blocks work
// already under way: whoever closes the gate waits for that work to end (ProxyServer.quiesce).

export class StatementGate {
  private holders = 0;
  private waiting: (() => void)[] = [];

  get closed(): boolean {
    return this.holders > 0;
  }

  /** Closes the gate until the returned function is called (holds nest). */
  hold(): () => void {
    this.holders++;
    let released = false;
    return () => {
      if (released) return;
      released = true;
      if (--this.holders > 0) return;
      for (const resume of this.waiting.splice(0)) resume();
    };
  }

  /** Resolves once the gate is open. */
  pass(): Promise<void> {
    if (!this.closed) return Promise.resolve();
    return new Promise((resolvePromise) => this.waiting.push(resolvePromise));
  }
}
