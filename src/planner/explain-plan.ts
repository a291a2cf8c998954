// The one printer of distributed plans: EXPLAIN through the proxy shows the strategy, why it was chosen, each
// fragment's SQL and nodes, and the merge steps; EXPLAIN ANALYZE adds rows and times per step.

import { assertNever, type DistributedPlan, type SortKey } from './distributed-plan';

/** What EXPLAIN ANALYZE shows of one executed step: its name, the rows it produced and its time. */
export interface StepStats {
  readonly step: string;
  readonly rows: number;
  readonly ms: number;
}

function nodeList(nodes: readonly number[]): string {
  return nodes.length === 1 ? `node ${nodes[0]}` : `nodes ${nodes.join(', ')}`;
}

function sortKeyText(key: SortKey): string {
  const column = key.column.from === 'start' ? `column ${key.column.index + 1}` : `hidden column ${key.column.index}`;
  return `${column} ${key.descending ? 'DESC' : 'ASC'} NULLS ${key.nullsFirst ? 'FIRST' : 'LAST'}`;
}

function sqlLines(sql: string, indent: string): string[] {
  return sql.split('\n').map((line) => `${indent}${line}`);
}

/** The plan as the lines of EXPLAIN's "QUERY PLAN" column; with stats, each step's rows and time. */
export function explainPlan(plan: DistributedPlan, stats?: readonly StepStats[]): string[] {
  const lines: string[] = [];
  switch (plan.kind) {
    case 'router':
      lines.push(`Distributed Router  (${plan.reason})`);
      lines.push(`  ->  Statement on ${nodeList(plan.nodes)}`);
      break;
    case 'merge':
      lines.push(`Distributed Merge  (${plan.reason})`);
      if (plan.sortKeys.length > 0) lines.push(`  Merge Sort Key: ${plan.sortKeys.map(sortKeyText).join(', ')}`);
      if (plan.limit) lines.push(`  Limit: ${plan.limit.count ?? 'ALL'}  Offset: ${plan.limit.offset}`);
      if (plan.hiddenColumns > 0) lines.push(`  Hidden Sort Columns: ${plan.hiddenColumns}`);
      lines.push(`  ->  Fragment on ${nodeList(plan.fragment.nodes)}`, ...sqlLines(plan.fragment.sql, '        '));
      break;
    case 'aggregate':
      lines.push(`Distributed Aggregate  (${plan.reason})`);
      lines.push(
        plan.rows
          ? `  Rows Collected at the Proxy: ${plan.groupColumns} column${plan.groupColumns === 1 ? '' : 's'}, unfolded`
          : `  Proxy Hash Aggregate: ${plan.groupColumns} group column${plan.groupColumns === 1 ? '' : 's'}, states ${plan.combine.join(', ') || 'none'}`,
      );
      lines.push(`  ->  Final on node ${plan.finalNode}`, ...sqlLines(plan.finalSql, '        '));
      lines.push(`  ->  Fragment on ${nodeList(plan.fragment.nodes)}`, ...sqlLines(plan.fragment.sql, '        '));
      break;
    case 'gather':
      lines.push(`Distributed Gather  (${plan.reason})`);
      lines.push(`  ->  Final on node ${plan.finalNode}`, ...sqlLines(plan.finalSql, '        '));
      for (const table of plan.tables) {
        lines.push(`  ->  Gather ${table.table} into node ${plan.finalNode} from ${nodeList(table.fragment.nodes)}`, ...sqlLines(table.fragment.sql, '        '));
      }
      break;
    case 'broadcast':
      lines.push(`Distributed Broadcast Join  (${plan.reason})`);
      lines.push(`  Estimated rows moved: ${plan.estimate.broadcastRows} by broadcast, ${plan.estimate.gatherRows} by gathering`);
      plan.tables.forEach((table, i) => {
        lines.push(`  ->  Broadcast ${table.table} as parapool_broadcast_${i} from ${nodeList(table.fragment.nodes)} to ${nodeList(plan.targets)}`, ...sqlLines(table.fragment.sql, '        '));
      });
      for (const line of explainPlan(plan.inner)) lines.push(`  ${line}`);
      break;
    case 'intermediate':
      lines.push(`Distributed Intermediate Results  (${plan.reason})`);
      plan.pieces.forEach((piece) => {
        lines.push(`  ->  Result ${piece.name} on node ${plan.finalNode}, of:`, ...sqlLines(piece.sql, '        '));
        for (const line of explainPlan(piece.plan)) lines.push(`      ${line}`);
      });
      lines.push('  ->  Then:');
      for (const line of explainPlan(plan.outer)) lines.push(`      ${line}`);
      break;
    case 'repartition':
      lines.push(`Distributed Repartition Join  (${plan.reason})`);
      lines.push(`  Estimated rows moved: ${plan.estimate.rows}`);
      plan.tables.forEach((table, i) => {
        lines.push(`  ->  Repartition ${table.table} as parapool_repartition_${i} by column ${table.hashColumn + 1} from ${nodeList(table.fragment.nodes)} to ${nodeList(plan.targets)}`, ...sqlLines(table.fragment.sql, '        '));
      });
      for (const line of explainPlan(plan.inner)) lines.push(`  ${line}`);
      break;
    default:
      assertNever(plan);
  }
  if (stats) {
    lines.push('Execution:');
    for (const step of stats) lines.push(`  ${step.step}: rows=${step.rows} time=${step.ms.toFixed(3)} ms`);
  }
  return lines;
}
