// What the simple-query path decided about statements it relayed as they came, by their text with numeric
// literals blanked (planner/numeric-literals.ts): the next text of the same shape skips the parse and the analysis
// of its tree, which cost more than the relay itself for a one-row query. Only decisions that cannot depend on a
// number are kept: a profile is stored only for statements relayed unchanged, on no distributed table, naming no
// cursor or prepared statement the proxy holds, not ending a transaction, and changing no definition; and it is
// used only under the catalog it was made with, by a session that has no temporary objects of its own.

import type { Catalog } from '../catalog/catalog';
import type { CommandKind } from '../cluster/statement-activity';
import type { StatementClass } from '../planner/statement-classifier';

export interface RelayProfile {
  /** The catalog (of the session, its search_path resolved) the decisions were made under. */
  readonly catalog: Catalog | null;
  /** How the statements are relayed: the first write's class, else the first statement's. */
  readonly statementClass: StatementClass;
  readonly kinds: readonly CommandKind[];
  readonly writesData: boolean;
  /** What of the session the statements leave in its node sessions (nodeBoundSessionState), or null. */
  readonly nodeBoundState: string | null;
  /** What else in them keeps a session on its connections under transaction pooling (connectionPinningState), or null. */
  readonly pinningState: string | null;
  /** What in them PREPARE TRANSACTION refuses, or null. */
  readonly prepareRefusal: string | null;
  /** The statements' shape (statementShape), kept when profile hits are verified. */
  readonly shape?: string;
}

/** Whether each hit parses the text anyway and checks that its shape is the profile's (tests; it costs the parse). */
export const verifyRelayProfiles = process.env.PARAPOOL_VERIFY_RELAY_PROFILES === '1';

/** Most shapes remembered; the oldest is forgotten first. */
const profileLimit = 4096;

export class RelayProfiles {
  private readonly profiles = new Map<string, RelayProfile>();

  get(key: string, catalog: Catalog | null): RelayProfile | null {
    const profile = this.profiles.get(key);
    return profile && profile.catalog === catalog ? profile : null;
  }

  set(key: string, profile: RelayProfile): void {
    if (!this.profiles.has(key) && this.profiles.size >= profileLimit) this.profiles.delete(this.profiles.keys().next().value as string);
    this.profiles.set(key, profile);
  }

  get size(): number {
    return this.profiles.size;
  }
}
