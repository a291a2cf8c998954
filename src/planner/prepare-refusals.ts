// PREPARE TRANSACTION refuses a transaction that operated on temporary objects, created a cursor WITH HOLD, or ran
// LISTEN, UNLISTEN or NOTIFY. Such a transaction cannot take the two-phase commit across nodes: it commits on each
// node in turn, the main node first, as pgpool-II's replication mode does, and a node whose COMMIT answers
// otherwise than the main node's is detached by the comparison every replicated statement gets.
// The session's temporary objects are known by the names it created them with; a routine that touches one
// unseen only costs a clear error at COMMIT (PREPARE fails, every node rolls back), never a divergence.

import type { Node } from '@pgsql/types';
import { functionName, walkAst } from './ast-walk';
import { nodeTag } from './sql-parser';
import { createsTemporaryObject, cursorHoldOption } from './statement-classifier';

export { cursorHoldOption };

export class PrepareRefusals {
  /** Names of the session's temporary tables, views and sequences. */
  private readonly temporaryNames = new Set<string>();
  /** What the open transaction did that PREPARE TRANSACTION refuses, or null. */
  reason: string | null = null;

  /** Whether inspect's answers depend on this session: it knows temporary objects a statement might name. */
  get knowsTemporaryNames(): boolean {
    return this.temporaryNames.size > 0;
  }

  /** What in `node` PREPARE TRANSACTION would refuse, or null; learns the temporary objects it creates. */
  inspect(node: Node): string | null {
    const tag = nodeTag(node);
    const body = (node as unknown as Record<string, Record<string, unknown>>)[tag];
    if (tag === 'ListenStmt' || tag === 'UnlistenStmt' || tag === 'NotifyStmt') return 'LISTEN, UNLISTEN or NOTIFY';
    if (tag === 'DeclareCursorStmt' && ((body.options as number | undefined) ?? 0) & cursorHoldOption) return 'a cursor WITH HOLD';
    if (tag === 'DiscardStmt') return 'temporary objects';
    if (createsTemporaryObject(node)) {
      this.learnTemporaryNames(node);
      return 'temporary objects';
    }
    let found: string | null = null;
    walkAst(node, (inner, fields) => {
      if (found) return;
      if (inner === 'RangeVar' && typeof fields.schemaname === 'string' && fields.schemaname.startsWith('pg_temp')) found = 'temporary objects';
      else if (inner === 'FuncCall' && functionName(fields).endsWith('pg_notify')) found = 'LISTEN, UNLISTEN or NOTIFY';
    });
    if (found || this.temporaryNames.size === 0) return found;
    // Any mention counts (a DROP's object list, a RangeVar, a string naming it): at worst a one-phase commit.
    const text = JSON.stringify(node);
    for (const name of this.temporaryNames) if (text.includes(`"${name}"`)) return 'temporary objects';
    return null;
  }

  /** The relations a statement creates as temporary (a CREATE's `relation` is a bare RangeVar body, not a node). */
  private learnTemporaryNames(value: unknown): void {
    if (Array.isArray(value)) return value.forEach((item) => this.learnTemporaryNames(item));
    if (value === null || typeof value !== 'object') return;
    const fields = value as Record<string, unknown>;
    if (fields.relpersistence === 't' && typeof fields.relname === 'string') this.temporaryNames.add(fields.relname);
    for (const child of Object.values(fields)) this.learnTemporaryNames(child);
  }

  /** Notes a statement the open transaction runs on its nodes. */
  note(node: Node): void {
    this.reason ??= this.inspect(node);
  }

  endTransaction(): void {
    this.reason = null;
  }
}
