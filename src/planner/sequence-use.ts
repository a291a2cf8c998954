// Which sequences a write may advance. A sequence hands out its values in the order its callers reach it, so two
// sessions inserting into a serial table at once may reach the nodes of a replicated table in a different order
// and number the same rows differently on each: such writes take the insert lock (executor/insert-lock.ts).
// Sequences are named without their schema, as a nextval('...') argument may or may not give one: two sequences
// of one name in different schemas then share a lock, which only costs concurrency.

import type { Node } from '@pgsql/types';
import type { Catalog } from '../catalog/catalog';
import { functionName, walkAst } from './ast-walk';

/** Stands for a sequence the statement names only at run time (nextval(some_column)): it locks on its own. */
export const anySequence = '*';

const sequenceFunctions = new Set(['nextval', 'setval']);

/** The last part of a regclass literal ('public.Orders_id_seq' → orders_id_seq, '"Orders_id_seq"' kept). */
export function sequenceNameOf(literal: string): string {
  const parts = literal.match(/"(?:[^"]|"")*"|[^.]+/g) ?? [literal];
  const last = parts[parts.length - 1].trim();
  return last.startsWith('"') ? last.slice(1, -1).replace(/""/g, '"') : last.toLowerCase();
}

/** The sequences the statements may advance: the defaults of the tables they insert into, and nextval/setval calls. */
export function sequencesAdvanced(statements: readonly Node[], catalog: Catalog | null): string[] {
  const found = new Set<string>();
  for (const statement of statements) {
    walkAst(statement, (tag, body) => {
      if (tag === 'InsertStmt' || tag === 'CopyStmt') {
        const relation = body.relation as { schemaname?: string; relname: string } | undefined;
        if (relation && catalog && (tag === 'InsertStmt' || body.is_from)) {
          for (const sequence of catalog.sequencesOf(relation.schemaname, relation.relname)) found.add(sequence);
        }
      }
      if (tag === 'FuncCall') {
        const name = functionName(body);
        if (!sequenceFunctions.has(name.slice(name.lastIndexOf('.') + 1))) return;
        const first = (body.args as Record<string, unknown>[] | undefined)?.[0];
        const literal = (first as { A_Const?: { sval?: { sval: string } } } | undefined)?.A_Const?.sval?.sval
          ?? (first as { TypeCast?: { arg?: { A_Const?: { sval?: { sval: string } } } } } | undefined)?.TypeCast?.arg?.A_Const?.sval?.sval;
        found.add(literal === undefined ? anySequence : sequenceNameOf(literal));
      }
    });
  }
  return [...found].sort();
}
