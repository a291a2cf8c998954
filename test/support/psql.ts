// psql as a test client: a script run the way pg_regress runs one (echoing each statement, errors in line with
// the output), so two servers' transcripts can be compared as text.

import { spawn } from 'node:child_process';
import { closeSync, openSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { findPostgresProgram } from '../../src/cluster/postgres-install';

/** Runs `file` through psql against 127.0.0.1:`port`; resolves with stdout and stderr interleaved as psql wrote them. */
export function psqlTranscript(port: number, file: string, scratchDir: string): Promise<string> {
  const outPath = join(scratchDir, `psql-${port}-${process.hrtime.bigint()}.out`);
  const fd = openSync(outPath, 'w');
  return new Promise<string>((resolvePromise, reject) => {
    const args = ['-X', '-a', '-h', '127.0.0.1', '-p', String(port), '-U', 'postgres', '-d', 'postgres', '-v', 'VERBOSITY=default', '-f', file];
    const child = spawn(findPostgresProgram('psql'), args, { stdio: ['ignore', fd, fd], env: { ...process.env, PGOPTIONS: '', PGTZ: 'UTC', LC_MESSAGES: 'C' } });
    child.on('error', reject);
    child.on('close', (code) => {
      closeSync(fd);
      const text = readFileSync(outPath, 'utf8');
      rmSync(outPath, { force: true });
      if (code === 0 || code === 1) resolvePromise(text);
      else reject(new Error(`psql exited ${code}: ${text.slice(-2000)}`));
    });
  });
}
