#!/usr/bin/env node
// parapool's command line: `start -f parapool.conf` runs the proxy; `sandbox` makes and runs a local cluster;
// `attach-node N`, `detach-node N` and `recover-node N` ask a running proxy, through its own port, to take a
// node in or out, or to rebuild it (online recovery).

import { existsSync } from 'node:fs';
import { Client } from 'pg';
import { loadConfigFile } from '../config/config';
import { log } from '../log';
import { startSandbox } from '../cluster/sandbox';
import { parapoolVersion } from '../admin/show-commands';
import { PgError } from '../protocol/errors';
import type { NodeCommandName } from '../admin/node-commands';
import { ProxyServer } from '../server/proxy-server';

const usage = `parapool ${parapoolVersion}: PostgreSQL middleware

usage:
  parapool start -f parapool.conf [-D]
      run the proxy with a pgpool.conf-style configuration file; -D (--discard-status) starts with every node
      in service, ignoring the node states logdir/pgpool_status kept from the last run
  parapool sandbox [--nodes N | --replicas R] [--port P] [--pcp-port Q] [--metrics-port M] [--web-port W] [--dir D] [-D]
      create (first time) and start N local PostgreSQL nodes under D (with --replicas: a primary and R
      streaming standbys, backend_clustering_mode = streaming_replication), write D/parapool.conf and run the proxy
      on port P, PCP on port Q, Prometheus metrics on http://127.0.0.1:M/metrics and the web admin page on port
      W (defaults: 4 nodes, port 9999, PCP 9898 and the web page 9980, both with user postgres, password
      postgres; metrics 9930; --web-port 0: no page; directory .sandbox); Ctrl-C stops everything it started
  parapool attach-node N [-f parapool.conf] [--host H] [--port P] [-U user]
  parapool detach-node N [-f parapool.conf] [--host H] [--port P] [-U user]
  parapool recover-node N [-f parapool.conf] [--host H] [--port P] [-U user]
  parapool promote-node N [-f parapool.conf] [--host H] [--port P] [-U user]
      take node N into or out of service, or rebuild detached node N from the main node and attach it (online
      recovery: recovery_1st_stage_command, then recovery_2nd_stage_command while new statements are held), or,
      in streaming replication, switch over to standby N (the primary is detached, N promoted), on
      the running proxy (SELECT parapool.attach_node(N) and friends through its port: --port, else the
      configuration file's, else 9999); the user must be a superuser (default: $PGUSER, else postgres; a
      password comes from $PGPASSWORD)
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

function flag(args: string[], names: string[]): boolean {
  return args.some((arg) => names.includes(arg));
}

/** Runs parapool.attach_node or detach_node on the running proxy and prints what it answered. */
async function nodeCommand(name: NodeCommandName, rest: string[]): Promise<void> {
  const id = rest.find((arg, index) => /^\d+$/.test(arg) && (index === 0 || !rest[index - 1].startsWith('-')));
  if (id === undefined) throw new Error(`${name.replace('_', '-')} needs a node id (as SHOW pool_nodes lists it)`);
  const file = option(rest, ['-f', '--config-file'], '');
  const config = file !== '' || existsSync('parapool.conf') ? loadConfigFile(file || 'parapool.conf') : null;
  const listen = config?.listenAddresses[0];
  const host = option(rest, ['--host', '-h'], !listen || listen === '0.0.0.0' ? '127.0.0.1' : listen);
  const port = positiveInteger(option(rest, ['--port', '-p'], String(config?.port ?? 9999)), '--port');
  const user = option(rest, ['-U', '--username'], process.env.PGUSER ?? 'postgres');
  const client = new Client({ host, port, user, database: 'postgres' });
  client.on('notice', (notice) => process.stdout.write(`${notice.message}\n`)); // a recovery's progress
  await client.connect();
  try {
    const result = await client.query({ text: `SELECT parapool.${name}(${Number(id)})`, rowMode: 'array' });
    const changed = result.rows[0]?.[0] === true;
    const verb = name === 'attach_node' ? 'attached' : name === 'detach_node' ? 'detached' : 'recovered and attached';
    process.stdout.write(changed ? `node ${id} ${verb}\n` : `node ${id} was already ${name === 'attach_node' ? 'in service' : 'out of service'}\n`);
  } finally {
    await client.end();
  }
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
    const config = loadConfigFile(file);
    config.discardStatus = flag(rest, ['-D', '--discard-status']);
    const proxy = new ProxyServer(config);
    await proxy.start();
    stopOnSignals(() => proxy.stop());
    proxy.stopRequested = () => process.kill(process.pid, 'SIGTERM');
    return;
  }
  if (command === 'sandbox') {
    const replicas = positiveInteger(option(rest, ['--replicas', '-r'], '0'), '--replicas');
    if (replicas > 0 && flag(rest, ['--nodes', '-n'])) throw new Error('--nodes and --replicas exclude each other: --replicas R makes a primary and R standbys');
    const sandbox = await startSandbox({
      nodes: positiveInteger(option(rest, ['--nodes', '-n'], '4'), '--nodes'),
      replicas,
      port: positiveInteger(option(rest, ['--port', '-p'], '9999'), '--port'),
      dir: option(rest, ['--dir', '-d'], '.sandbox'),
      discardStatus: flag(rest, ['-D', '--discard-status']),
      pcpPort: positiveInteger(option(rest, ['--pcp-port'], '9898'), '--pcp-port'),
      metricsPort: positiveInteger(option(rest, ['--metrics-port'], '9930'), '--metrics-port'),
      webPort: positiveInteger(option(rest, ['--web-port'], '9980'), '--web-port'),
    });
    process.stdout.write(
      `parapool sandbox: ${sandbox.nodes.length} nodes (ports ${sandbox.nodes.map((n) => n.port).join(', ')})${replicas > 0 ? `, node 0 the primary and ${replicas} streaming standby(s)` : ''}, proxy on port ${sandbox.proxy.port}\n` +
        `  connect: psql -h 127.0.0.1 -p ${sandbox.proxy.port} -U postgres postgres\n` +
        (sandbox.proxy.pcp ? `  PCP:     pcp_node_info -h 127.0.0.1 -p ${sandbox.proxy.pcp.port} -U postgres -n 0 (password postgres)\n` : '') +
        (sandbox.proxy.metrics ? `  metrics: http://127.0.0.1:${sandbox.proxy.metrics.port}/metrics\n` : '') +
        (sandbox.proxy.web ? `  admin:   http://127.0.0.1:${sandbox.proxy.web.port}/ (user postgres, password postgres)\n` : '') +
        `  config:  ${sandbox.configPath}\n  Ctrl-C stops the proxy and the nodes\n`,
    );
    stopOnSignals(() => sandbox.stop());
    // pcp_stop_pgpool stops the sandbox as Ctrl-C does: the proxy and its nodes.
    sandbox.proxy.stopRequested = () => process.kill(process.pid, 'SIGTERM');
    return;
  }
  if (command === 'attach-node' || command === 'detach-node' || command === 'recover-node' || command === 'promote-node') return nodeCommand(command.replace('-', '_') as NodeCommandName, rest);
  throw new Error(`unknown command "${command}"\n\n${usage}`);
}

main(process.argv.slice(2)).catch((error) => {
  const message = error instanceof PgError ? `${error.code}: ${error.message}` : (error as Error).message ?? String(error);
  process.stderr.write(`parapool: ${message}\n`);
  process.exit(1);
});
