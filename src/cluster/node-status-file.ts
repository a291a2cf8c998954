// pgpool_status in logdir: each node's up or down, one line per node in id order, as pgpool-II writes it, so a
// restarted proxy keeps out of service the nodes an operator or a failover took out (their data may be behind
// the others'). The file is replaced by a rename, never rewritten in place: a crash mid-write leaves the old one.

import { existsSync, mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { log } from '../log';
import type { BackendNode, NodeStatus } from './backend-node';

export const statusFileName = 'pgpool_status';

export function statusFilePath(logdir: string): string {
  return join(logdir, statusFileName);
}

/**
 * The statuses the file records, by node id, or null when there is no file. pgpool's 'unused' and unknown words
 * count as up: only a recorded 'down' keeps a node out.
 */
export function readNodeStatus(logdir: string): NodeStatus[] | null {
  const path = statusFilePath(logdir);
  if (!existsSync(path)) return null;
  return readFileSync(path, 'utf8')
    .split('\n')
    .map((line) => line.trim())
    .filter((line) => line !== '')
    .map((line) => (line.toLowerCase() === 'down' ? 'down' : 'up'));
}

/** Writes every node's status (temp file, then rename); a failure is logged, the proxy goes on. */
export function writeNodeStatus(logdir: string, nodes: readonly BackendNode[]): void {
  const path = statusFilePath(logdir);
  const temporary = `${path}.${process.pid}.tmp`;
  try {
    mkdirSync(logdir, { recursive: true });
    writeFileSync(temporary, nodes.map((node) => `${node.status}\n`).join(''));
    renameSync(temporary, path);
  } catch (error) {
    log('error', 'node_status_write_failed', { path, error: (error as Error).message });
  }
}
