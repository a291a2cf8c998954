// Real faults for tests: a node's processes killed as a crash would kill them.

import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type { LocalPostgres } from '../../src/cluster/local-postgres';

/** The process and every descendant of it (from /proc), the process first. */
export function processTree(root: number): number[] {
  const children = new Map<number, number[]>();
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    let stat: string;
    try {
      stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
    } catch {
      continue; // ended meanwhile
    }
    const parent = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
    children.set(parent, [...(children.get(parent) ?? []), Number(entry)]);
  }
  const tree = [root];
  for (let i = 0; i < tree.length; i++) tree.push(...(children.get(tree[i]) ?? []));
  return tree;
}

/** Whether the process still exists (a zombie not yet reaped counts: PostgreSQL's lock file check sees it). */
function exists(pid: number): boolean {
  return existsSync(`/proc/${pid}`);
}

/**
 * Kills a node's postmaster and every process of it with SIGKILL, as a crash would, and waits until they are
 * gone. The postmaster is stopped first, so that it forks nothing between the look-up and the kill.
 */
export async function killNode(node: LocalPostgres): Promise<number> {
  const postmaster = Number(readFileSync(join(node.dataDir, 'postmaster.pid'), 'utf8').split('\n')[0]);
  process.kill(postmaster, 'SIGSTOP');
  const pids = processTree(postmaster).reverse();
  for (const pid of pids) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // already gone
    }
  }
  while (pids.some(exists)) await sleep(10);
  return pids.length;
}

/**
 * Stops (SIGSTOP) or resumes (SIGCONT) a node's postmaster and every process of it: a hung server, whose
 * connections stay open and answer nothing, not a closed one.
 */
export function signalNode(node: LocalPostgres, signal: 'SIGSTOP' | 'SIGCONT'): void {
  const postmaster = Number(readFileSync(join(node.dataDir, 'postmaster.pid'), 'utf8').split('\n')[0]);
  for (const pid of processTree(postmaster)) {
    try {
      process.kill(pid, signal);
    } catch {
      // ended meanwhile
    }
  }
}
