// The portals of a session that the proxy holds itself (SpooledPortal): Execute-with-a-row-limit portals of
// multi-node reads and cursors over them, one namespace as on a node. They end with Close, with their
// transaction (a cursor WITH HOLD outlives a commit), or with the session.

import type { SpooledPortal } from './spooled-portal';

export class HeldPortals {
  private readonly portals = new Map<string, SpooledPortal>();

  has(name: string): boolean {
    return this.portals.has(name);
  }

  get(name: string): SpooledPortal | undefined {
    return this.portals.get(name);
  }

  /** Holds `portal` under `name`, ending the portal held there before. */
  set(name: string, portal: SpooledPortal): void {
    this.close(name);
    this.portals.set(name, portal);
  }

  close(name: string): void {
    this.portals.get(name)?.close();
    this.portals.delete(name);
  }

  closeAll(): void {
    for (const portal of this.portals.values()) portal.close();
    this.portals.clear();
  }

  /** At a transaction's end: portals end with it, but cursors WITH HOLD outlive a commit. */
  endTransaction(committed: boolean): void {
    for (const [name, portal] of this.portals) {
      if (portal.holdable && (committed || !portal.inTransaction)) portal.inTransaction = false;
      else this.close(name);
    }
  }
}
