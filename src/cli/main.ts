#!/usr/bin/env node
// parapool's command line: `start -f parapool.conf` runs the proxy; `sandbox` makes and runs a local cluster.

import { loadConfigFile } from '../config/config';
import { log } from '../log';
import { startSandbox } from '../cluster/sandbox';
import { parapoolVersion } from '../admin/show-commands';
import { PgError } from '../protocol/errors';
import { ProxyServer } from '../server/proxy-server';

const usage = `parapool ${parapoolVersion}: PostgreSQL middleware

usage:
  parapool start -f parapool.conf
      run the proxy with a pgpool.conf-style configuration file
  parapool sandbox [--nodes N] [--port P] [--dir D]
      create (first time) and start N local PostgreSQL nodes under D, write D/parapool.conf and run the proxy
      on port P (defaults: 4 nodes, port 9999, directory .sandbox); Ctrl-C stops everything it started
`;

function option(args: string[], names: string[], fallback: string): string {
  for (let i = 0; i < args.length; i++) {
    if (names.includes(args[i])) {
      if (i + 1 >= args.length) throw new Error(`option ${args[i]} needs a value`);
      return args[i + 1];
    }
  }
  return fallback;
}

function positiveInteger(text: string, name: string): number {
  if (!/^\d+$/.test(text)) throw new Error(`${name} must be a non-negative integer, not "${text}"`);
  return Number(text);
}

/** Stops `stop` on SIGINT/SIGTERM, once; a second signal exits at once. */
function stopOnSignals(stop: () => Promise<void>): void {
  let stopping = false;
  const handler = (signal: string) => {
    if (stopping) process.exit(1);
    stopping = true;
    log('info', 'shutdown', { signal });
    stop()
      .then(() => process.exit(0))
      .catch((error) => {
        log('error', 'shutdown_failed', { error: String(error) });
        process.exit(1);
      });
  };
  process.on('SIGINT', () => handler('SIGINT'));
  process.on('SIGTERM', () => handler('SIGTERM'));
}

async function main(args: string[]): Promise<void> {
  const command = args[0];
  if (!command || command === '--help' || command === '-h' || command === 'help') {
    process.stdout.write(usage);
    return;
  }
  if (command === '--version' || command === '-V') {
    process.stdout.write(`parapool ${parapoolVersion}\n`);
    return;
  }
  const rest = args.slice(1);
  if (command === 'start') {
    const file = option(rest, ['-f', '--config-file'], 'parapool.conf');
    const proxy = new ProxyServer(loadConfigFile(file));
    await proxy.start();
    stopOnSignals(() => proxy.stop());
    return;
  }
  if (command === 'sandbox') {
    const sandbox = await startSandbox({
      nodes: positiveInteger(option(rest, ['--nodes', '-n'], '4'), '--nodes'),
      port: positiveInteger(option(rest, ['--port', '-p'], '9999'), '--port'),
      dir: option(rest, ['--dir', '-d'], '.sandbox'),
    });
    process.stdout.write(
      `parapool sandbox: ${sandbox.nodes.length} nodes (ports ${sandbox.nodes.map((n) => n.port).join(', ')}), proxy on port ${sandbox.proxy.port}\n` +
        `  connect: psql -h 127.0.0.1 -p ${sandbox.proxy.port} -U postgres postgres\n` +
        `  config:  ${sandbox.configPath}\n  Ctrl-C stops the proxy and the nodes\n`,
    );
    stopOnSignals(() => sandbox.stop());
    return;
  }
  throw new Error(`unknown command "${command}"\n\n${usage}`);
}

main(process.argv.slice(2)).catch((error) => {
  const message = error instanceof PgError ? `${error.code}: ${error.message}` : (error as Error).message ?? String(error);
  process.stderr.write(`parapool: ${message}\n`);
  process.exit(1);
});
