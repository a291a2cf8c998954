// Splits one aggregate call into partial states computed on every node and a final expression over the
// combined states, computed in SQL on the node that finishes the merge (so its result type and text are
// PostgreSQL's own). The split follows PostgreSQL's own transition states, so the final value is the one a single
// server computes: avg(numeric) is numeric sum / count, variance is (n·Σx² − (Σx)²) / (n·(n−1)) in numeric.

import type { Node } from '@pgsql/types';
import type { StateCombine } from './distributed-plan';

type Body = Record<string, unknown>;

export const TypeOid = {
  bool: 16,
  int8: 20,
  int2: 21,
  int4: 23,
  float4: 700,
  float8: 701,
  money: 790,
  interval: 1186,
  numeric: 1700,
} as const;

export interface AggregateSplit {
  /** Partial-state expressions for the fragment. */
  readonly states: Node[];
  readonly combine: StateCombine[];
  /** The final expression's SQL, given the state columns' names. */
  readonly final: (columns: readonly string[]) => string;
}

export type SplitOutcome =
  | { readonly kind: 'split'; readonly split: AggregateSplit }
  /** A DISTINCT aggregate: the fragment groups by its arguments, and the final runs the aggregate itself. */
  | { readonly kind: 'dedupe' }
  | { readonly kind: 'unsupported'; readonly reason: string };

const integerTypes = new Set<number>([TypeOid.int2, TypeOid.int4, TypeOid.int8]);
const exactTypes = new Set<number>([TypeOid.int2, TypeOid.int4, TypeOid.int8, TypeOid.numeric]);
const floatTypes = new Set<number>([TypeOid.float4, TypeOid.float8]);

/** A call with its name, arguments, FILTER and DISTINCT, as the planner sees it. */
export interface AggregateCall {
  readonly name: string;
  readonly body: Body;
  /** The type of the first argument, from a Describe on a node (null for count(*) or when not asked). */
  readonly argumentType: number | null;
  /** The DISTINCT argument is the distribution key, so per-node distinct sets are disjoint. */
  readonly distinctOnKey: boolean;
}

function call(name: string, args: Node[], filter: unknown, star = false): Node {
  const body: Body = { funcname: [{ String: { sval: name } }], funcformat: 'COERCE_EXPLICIT_CALL' };
  if (args.length > 0) body.args = args;
  if (star) body.agg_star = true;
  if (filter) body.agg_filter = filter;
  return { FuncCall: body } as Node;
}

function cast(node: Node, type: string): Node {
  return { TypeCast: { arg: node, typeName: { names: [{ String: { sval: 'pg_catalog' } }, { String: { sval: type } }], typemod: -1 } } } as unknown as Node;
}

function product(a: Node, b: Node): Node {
  return { A_Expr: { kind: 'AEXPR_OP', name: [{ String: { sval: '*' } }], lexpr: a, rexpr: b } } as unknown as Node;
}

const sampleVariants: Record<string, { sample: boolean; root: boolean }> = {
  stddev: { sample: true, root: true },
  stddev_samp: { sample: true, root: true },
  stddev_pop: { sample: false, root: true },
  variance: { sample: true, root: false },
  var_samp: { sample: true, root: false },
  var_pop: { sample: false, root: false },
};

/** How to compute `aggregate` from partial states, or why it cannot be split. */
export function splitAggregate(aggregate: AggregateCall): SplitOutcome {
  const { name, body, argumentType } = aggregate;
  const args = (body.args as Node[] | undefined) ?? [];
  const filter = body.agg_filter;
  if (body.agg_order || body.agg_within_group) return { kind: 'unsupported', reason: `${name}(... ORDER BY ...) needs every row in one place` };
  if (body.func_variadic) return { kind: 'unsupported', reason: `a VARIADIC call of ${name}` };
  if (body.agg_distinct) {
    if (aggregate.distinctOnKey && (name === 'count' || name === 'sum' || name === 'min' || name === 'max')) {
      // Rows of one key live on one node, so per-node DISTINCT sets never overlap: the partials just add up.
      const state = call(name, args, filter);
      (state as { FuncCall: Body }).FuncCall.agg_distinct = true;
      return splitOf([state], [name === 'min' || name === 'max' ? name : 'sum'], ([c]) => finalOfSum(name === 'count' ? 'count' : name, c, argumentType));
    }
    return { kind: 'dedupe' };
  }
  switch (name) {
    case 'count':
      return splitOf([call('count', args, filter, Boolean(body.agg_star))], ['sum'], ([c]) => `coalesce(pg_catalog.sum(${c}), 0)::pg_catalog.int8`);
    case 'sum':
      if (args.length !== 1) break;
      return splitOf([call('sum', args, filter)], ['sum'], ([c]) => finalOfSum('sum', c, argumentType));
    case 'min':
    case 'max':
      if (args.length !== 1) break;
      return splitOf([call(name, args, filter)], [name], ([c]) => `pg_catalog.${name}(${c})`);
    case 'bool_and':
    case 'every':
    case 'bool_or':
      if (args.length !== 1) break;
      return splitOf([call(name, args, filter)], [name === 'bool_or' ? 'or' : 'and'], ([c]) => `pg_catalog.${name === 'bool_or' ? 'bool_or' : 'bool_and'}(${c})`);
    case 'bit_and':
    case 'bit_or':
    case 'bit_xor':
      if (args.length !== 1) break;
      return splitOf([call(name, args, filter)], [name === 'bit_and' ? 'bit-and' : name === 'bit_or' ? 'bit-or' : 'bit-xor'], ([c]) => `pg_catalog.${name}(${c})`);
    case 'avg': {
      if (args.length !== 1 || argumentType === null) break;
      const count = call('count', args, filter);
      if (exactTypes.has(argumentType)) {
        return splitOf([call('sum', args, filter), count], ['sum', 'sum'], ([s, n]) => `(pg_catalog.sum(${s})::pg_catalog.numeric / nullif(pg_catalog.sum(${n}), 0)::pg_catalog.numeric)`);
      }
      if (floatTypes.has(argumentType)) {
        return splitOf([call('sum', [cast(args[0], 'float8')], filter), count], ['sum', 'sum'], ([s, n]) => `(pg_catalog.sum(${s}) / nullif(pg_catalog.sum(${n}), 0)::pg_catalog.float8)`);
      }
      if (argumentType === TypeOid.interval) {
        return splitOf([call('sum', args, filter), count], ['sum', 'sum'], ([s, n]) => `(pg_catalog.sum(${s}) / nullif(pg_catalog.sum(${n}), 0)::pg_catalog.float8)`);
      }
      break;
    }
    default: {
      const variant = sampleVariants[name];
      if (!variant || args.length !== 1 || argumentType === null) break;
      const count = call('count', args, filter);
      if (exactTypes.has(argumentType)) {
        const x = cast(args[0], 'numeric');
        return splitOf([count, call('sum', [x], filter), call('sum', [product(x, x)], filter)], ['sum', 'sum', 'sum'], ([cn, cs, cq]) => numericVariance(cn, cs, cq, variant));
      }
      if (floatTypes.has(argumentType)) {
        const x = cast(args[0], 'float8');
        return splitOf([count, call('sum', [x], filter), call('sum', [product(x, x)], filter)], ['sum', 'sum', 'sum'], ([cn, cs, cq]) => floatVariance(cn, cs, cq, variant));
      }
    }
  }
  return { kind: 'unsupported', reason: `the aggregate ${name} has no partial form here` };
}

function splitOf(states: Node[], combine: StateCombine[], final: (columns: readonly string[]) => string): SplitOutcome {
  return { kind: 'split', split: { states, combine, final } };
}

/** sum() of partial sums keeps the partial's type: an int8 partial (from int2/int4) would otherwise become numeric. */
function finalOfSum(name: string, column: string, argumentType: number | null): string {
  if (name === 'count') return `coalesce(pg_catalog.sum(${column}), 0)::pg_catalog.int8`;
  if (name === 'min' || name === 'max') return `pg_catalog.${name}(${column})`;
  if (argumentType !== null && integerTypes.has(argumentType) && argumentType !== TypeOid.int8) return `pg_catalog.sum(${column})::pg_catalog.int8`;
  return `pg_catalog.sum(${column})`;
}

function numericVariance(cn: string, cs: string, cq: string, variant: { sample: boolean; root: boolean }): string {
  const n = `pg_catalog.sum(${cn})`;
  const s = `pg_catalog.sum(${cs})`;
  const q = `pg_catalog.sum(${cq})`;
  const numerator = `(${n} * ${q} - ${s} * ${s})`;
  const denominator = variant.sample ? `(${n} * (${n} - 1))` : `(${n} * ${n})`;
  const variance = `(${numerator} / ${denominator})`;
  // PostgreSQL takes the square root at the scale of the variance; the extra zeros make sqrt() work past it first.
  const value = variant.root ? `pg_catalog.round(pg_catalog.sqrt(${variance} + 0.0000000000000000000000000000000000000000), pg_catalog.scale(${variance}))` : variance;
  return `(CASE WHEN coalesce(${n}, 0) <= ${variant.sample ? 1 : 0} THEN NULL::pg_catalog.numeric WHEN ${numerator} <= 0 THEN 0::pg_catalog.numeric ELSE ${value} END)`;
}

function floatVariance(cn: string, cs: string, cq: string, variant: { sample: boolean; root: boolean }): string {
  const n = `pg_catalog.sum(${cn})::pg_catalog.float8`;
  const s = `pg_catalog.sum(${cs})`;
  const q = `pg_catalog.sum(${cq})`;
  const spread = `greatest(${q} - ${s} * ${s} / ${n}, 0::pg_catalog.float8)`;
  const variance = `(${spread} / ${variant.sample ? `(${n} - 1)` : n})`;
  const value = variant.root ? `pg_catalog.sqrt(${variance})` : variance;
  return `(CASE WHEN coalesce(${n}, 0) <= ${variant.sample ? 1 : 0} THEN NULL::pg_catalog.float8 ELSE ${value} END)`;
}
