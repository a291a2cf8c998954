// Prometheus metrics: what the proxy has done since it started, for a scraper on metrics_port (GET /metrics).
// Counters that exist anyway for SHOW (each node's statements and errors, health checks, sessions, pools) are read
// when a scrape asks, so the hot path pays nothing for them; what SHOW does not keep (statement and fragment
// latencies, rows merged, errors sent to clients by SQLSTATE, failovers) is counted as it happens, once per
// statement, fragment or event, never per row.

import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { BackendNode } from '../cluster/backend-node';
import { tierOf, type RunningStatement } from '../cluster/statement-activity';
import { log } from '../log';
import { AddressListeners } from '../server/listeners';
import type { ObservedError } from '../protocol/error-response-scanner';
import type { AdminContext } from './show-commands';

/** Latency buckets in seconds: a one-row lookup through the proxy is a fraction of a millisecond. */
const latencyBuckets = [0.0002, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60];

const commandKinds = ['select', 'insert', 'update', 'delete', 'ddl', 'other'] as const;
const errorSeverities = ['panic', 'fatal', 'error'] as const;

/**
 * A statement's tier, the highest of its fragments' (docs/partitioning.md): "relay" for a statement relayed as it
 * came (replicated tables, no rules), "proxy" for one the proxy answered itself (SHOW pool_nodes, rule commands).
 */
export function statementTier(statement: RunningStatement): string {
  let tier = '';
  let relayed = false;
  for (const fragment of statement.fragments) {
    const fragmentTier = tierOf(fragment.plan);
    if (fragmentTier === '') relayed = true;
    else if (fragmentTier > tier) tier = fragmentTier;
  }
  return tier || (relayed ? 'relay' : 'proxy');
}

function nodeLabels(node: BackendNode): { node: string; address: string } {
  return { node: String(node.id), address: `${node.host}:${node.port}` };
}

export class ProxyMetrics {
  readonly registry = new Registry();
  private readonly statements: Counter<'tier'>;
  private readonly statementSeconds: Histogram<'tier'>;
  private readonly fragmentSeconds: Histogram<'tier' | 'node'>;
  private readonly fragmentsFailed: Counter<'tier' | 'node'>;
  private readonly rowsMerged: Counter<'tier'>;
  private readonly clientErrors: Counter<'sqlstate' | 'severity'>;
  private readonly failovers: Counter<'node' | 'address'>;
  private readonly failbacks: Counter<'node' | 'address'>;
  private readonly listeners = new AddressListeners();

  constructor(context: AdminContext) {
    const registers = [this.registry];
    // process_* and nodejs_* under their usual names: memory, CPU, event-loop lag and open sockets of the proxy.
    collectDefaultMetrics({ register: this.registry });
    // prom-client names these gauges with a _total suffix that Prometheus reserves for counters (promtool
    // rejects them); process_* and the heap and event-loop metrics say what they did.
    for (const name of ['nodejs_active_handles_total', 'nodejs_active_requests_total', 'nodejs_active_resources_total']) this.registry.removeSingleMetric(name);

    this.statements = new Counter({ name: 'parapool_statements_total', help: 'Client statements ended, by the tier that ran them (1 router, 2 push down and merge, 3 intermediate results; relay, proxy)', labelNames: ['tier'], registers });
    this.statementSeconds = new Histogram({ name: 'parapool_statement_duration_seconds', help: 'Time from a statement reaching the proxy to its last reply, by tier', labelNames: ['tier'], buckets: latencyBuckets, registers });
    this.fragmentSeconds = new Histogram({ name: 'parapool_fragment_duration_seconds', help: 'Time a fragment ran on its node, by tier and node', labelNames: ['tier', 'node'], buckets: latencyBuckets, registers });
    this.fragmentsFailed = new Counter({ name: 'parapool_fragments_failed_total', help: 'Fragments that ended in an error or a lost node', labelNames: ['tier', 'node'], registers });
    this.rowsMerged = new Counter({ name: 'parapool_rows_merged_total', help: 'Rows the nodes returned into the proxy\'s merge operators (tiers 2 and 3)', labelNames: ['tier'], registers });
    this.clientErrors = new Counter({ name: 'parapool_client_errors_total', help: 'ErrorResponses sent to clients, by SQLSTATE and severity', labelNames: ['sqlstate', 'severity'], registers });
    this.failovers = new Counter({ name: 'parapool_failovers_total', help: 'Times a node was detached (health check, lost connection, or by hand)', labelNames: ['node', 'address'], registers });
    this.failbacks = new Counter({ name: 'parapool_failbacks_total', help: 'Times a node was attached again (by hand or by online recovery)', labelNames: ['node', 'address'], registers });

    const cluster = context.cluster;
    for (const node of cluster.nodes) {
      this.failovers.inc(nodeLabels(node), 0);
      this.failbacks.inc(nodeLabels(node), 0);
    }
    cluster.on('detach', (node: BackendNode) => this.failovers.inc(nodeLabels(node)));
    cluster.on('attach', (node: BackendNode) => this.failbacks.inc(nodeLabels(node)));
    context.statements.onEnd((statement) => this.statementEnded(statement));

    new Gauge({
      name: 'parapool_node_up',
      help: 'Whether the node is in service (1) or detached (0)',
      labelNames: ['node', 'address', 'role'],
      registers,
      collect() {
        this.reset();
        for (const node of cluster.nodes) this.set({ ...nodeLabels(node), role: cluster.roleName(node) }, node.status === 'up' ? 1 : 0);
      },
    });
    // Counters SHOW keeps anyway, read at scrape time (a counter set to the running total each time).
    const readCounter = <L extends string>(name: string, help: string, labelNames: L[], read: (set: (labels: Record<L, string>, value: number) => void) => void) =>
      new Counter<L>({
        name,
        help,
        labelNames,
        registers,
        collect() {
          this.reset();
          read((labels, value) => this.inc(labels as never, value));
        },
      });
    readCounter('parapool_node_statements_total', "Statements sent to the node, by pgpool-II's command class (SHOW pool_backend_stats)", ['node', 'kind'], (set) => {
      for (const node of cluster.nodes) for (const kind of commandKinds) set({ node: String(node.id), kind }, node.stats[kind]);
    });
    readCounter('parapool_node_errors_total', 'ErrorResponses the node sent, by severity (SHOW pool_backend_stats)', ['node', 'severity'], (set) => {
      for (const node of cluster.nodes) for (const severity of errorSeverities) set({ node: String(node.id), severity }, node.stats[severity]);
    });
    readCounter('parapool_node_balanced_reads_total', 'Reads load balancing sent to the node (select_cnt of SHOW pool_nodes)', ['node'], (set) => {
      for (const node of cluster.nodes) set({ node: String(node.id) }, node.selectCount);
    });
    readCounter('parapool_health_checks_total', 'Health-check rounds, by result (SHOW pool_health_check_stats)', ['node', 'result'], (set) => {
      for (const stats of context.healthCheckStats) {
        const node = String(stats.nodeId);
        set({ node, result: 'success' }, stats.successCount);
        set({ node, result: 'fail' }, stats.failCount);
        set({ node, result: 'skip' }, stats.skipCount);
      }
    });
    new Gauge({
      name: 'parapool_client_sessions',
      help: 'Client sessions, by state (SHOW pool_processes)',
      labelNames: ['state'],
      registers,
      collect() {
        this.reset();
        const counts = new Map<string, number>([['Idle', 0], ['Idle in transaction', 0], ['Execute command', 0], ['Connecting', 0]]);
        for (const session of context.sessions()) counts.set(session.status, (counts.get(session.status) ?? 0) + 1);
        for (const [state, count] of counts) this.set({ state: state.toLowerCase().replace(/ /g, '_') }, count);
      },
    });
    // The watchdog, from this instance's point of view; no series without use_watchdog.
    new Gauge({
      name: 'parapool_watchdog_leader',
      help: 'Whether this instance is the watchdog leader (1) or not (0)',
      registers,
      collect() {
        this.reset();
        const view = context.watchdog?.() ?? null;
        if (view) this.set(view.members[0].state === 'LEADER' ? 1 : 0);
      },
    });
    new Gauge({
      name: 'parapool_watchdog_quorum',
      help: 'The watchdog cluster\'s quorum as this instance sees it: 1 quorum, 0 on the edge (half), -1 none',
      registers,
      collect() {
        this.reset();
        const view = context.watchdog?.() ?? null;
        if (view) this.set(view.quorumState);
      },
    });
    new Gauge({
      name: 'parapool_watchdog_instances_alive',
      help: 'Watchdog instances alive as this instance sees them, itself included',
      registers,
      collect() {
        this.reset();
        const view = context.watchdog?.() ?? null;
        if (view) this.set(view.alive);
      },
    });
    new Gauge({
      name: 'parapool_watchdog_escalated',
      help: 'Whether wd_escalation_command ran here and wd_de_escalation_command has not since (1) or not (0)',
      registers,
      collect() {
        this.reset();
        const view = context.watchdog?.() ?? null;
        if (view) this.set(view.escalated ? 1 : 0);
      },
    });
    new Gauge({
      name: 'parapool_client_sessions_max',
      help: 'Client sessions the proxy accepts at once (num_init_children)',
      registers,
      collect() {
        this.set(context.config.numInitChildren);
      },
    });
    new Gauge({
      name: 'parapool_backend_connections',
      help: 'Connections to the nodes: held by client sessions (active) or cached in the pool (idle)',
      labelNames: ['node', 'state'],
      registers,
      collect() {
        const active = new Map<number, number>();
        for (const session of context.sessions()) for (const connection of session.connections) active.set(connection.nodeId, (active.get(connection.nodeId) ?? 0) + 1);
        const idle = new Map<number, number>();
        for (const list of context.pool.idleConnections()) for (const connection of list) idle.set(connection.node.id, (idle.get(connection.node.id) ?? 0) + 1);
        for (const node of cluster.nodes) {
          this.set({ node: String(node.id), state: 'active' }, active.get(node.id) ?? 0);
          this.set({ node: String(node.id), state: 'idle' }, idle.get(node.id) ?? 0);
        }
      },
    });
    new Gauge({
      name: 'parapool_statements_running',
      help: 'Client statements running now (SHOW parapool_queries)',
      registers,
      collect() {
        this.set(context.statements.list().length);
      },
    });
  }

  /** An ErrorResponse a session sent its client (see protocol/error-response-scanner.ts). */
  clientError(error: ObservedError): void {
    this.clientErrors.inc({ sqlstate: error.code, severity: error.severity });
  }

  private statementEnded(statement: RunningStatement): void {
    const tier = statementTier(statement);
    this.statements.inc({ tier });
    this.statementSeconds.observe({ tier }, Number(process.hrtime.bigint() - statement.startedAtNs) / 1e9);
    let merged = 0;
    for (const fragment of statement.fragments) {
      const fragmentTier = tierOf(fragment.plan) || 'relay';
      const labels = { tier: fragmentTier, node: String(fragment.nodeId) };
      this.fragmentSeconds.observe(labels, fragment.elapsedMs / 1000);
      if (fragment.failed) this.fragmentsFailed.inc(labels);
      if (fragmentTier === '2' || fragmentTier === '3') merged += fragment.rows;
    }
    if (merged > 0) this.rowsMerged.inc({ tier }, merged);
  }

  /** The exposition text a scrape gets. */
  exposition(): Promise<string> {
    return this.registry.metrics();
  }

  /** Serves GET /metrics on each address, on `port` (or, for 0, one the system chooses). */
  async listen(addresses: readonly string[], port: number): Promise<void> {
    await this.listeners.listen(addresses, port, () => {
      const server = createServer((request, response) => void this.answer(request, response));
      // A scraper that stalls or sends garbage costs a socket, never the proxy.
      server.headersTimeout = 10_000;
      server.requestTimeout = 30_000;
      server.on('clientError', (_error, socket) => socket.destroy());
      return server;
    });
    log('info', 'metrics_listening', { addresses: addresses.join(','), port: this.port });
  }

  get port(): number {
    return this.listeners.port;
  }

  stop(): Promise<void> {
    return this.listeners.close();
  }

  private async answer(request: IncomingMessage, response: ServerResponse): Promise<void> {
    const path = (request.url ?? '').split('?')[0];
    if (path !== '/metrics') {
      response.writeHead(404, { 'content-type': 'text/plain' }).end('not found: metrics are at /metrics\n');
      return;
    }
    if (request.method !== 'GET' && request.method !== 'HEAD') {
      response.writeHead(405, { 'content-type': 'text/plain', allow: 'GET, HEAD' }).end('method not allowed\n');
      return;
    }
    try {
      const text = await this.exposition();
      response.writeHead(200, { 'content-type': this.registry.contentType });
      response.end(request.method === 'HEAD' ? undefined : text);
    } catch (error) {
      log('error', 'metrics_failed', { error: (error as Error).message });
      response.writeHead(500, { 'content-type': 'text/plain' }).end('metrics failed\n');
    }
  }
}
