// pgpool-II's PCP protocol on pcp_port, so that pgpool's own clients (pcp_node_count, pcp_node_info,
// pcp_attach_node, pcp_detach_node, pcp_recovery_node, pcp_pool_status, pcp_proc_count, pcp_proc_info,
// pcp_health_check_stats) drive parapool unchanged. A PCP packet is framed as a
// PostgreSQL message (a type byte, then a 32-bit length counting itself); bodies are NUL-terminated strings.
// Authentication is pgpool's md5: the client asks for a 4-byte salt ('M'), then sends its user name and
// md5(md5(md5(password) + user) + salt) ('R'), checked against the pcp.conf file (user:md5(password) lines),
// read again at each log-in as pgpool does. Errors go back as 'E' with PostgreSQL's error fields; a malformed or
// unauthenticated packet ends that connection only.

import { watchdogStateCodes, type WatchdogView } from '../cluster/watchdog-view';
import { createHash, randomBytes } from 'node:crypto';
import { createServer, type Socket } from 'node:net';
import type { ClusterState } from '../cluster/cluster-state';
import { log } from '../log';
import { AddressListeners } from '../server/listeners';
import { PgError, SqlState } from '../protocol/errors';
import { FrameReader, type Frame } from '../protocol/frame-reader';
import { serverMessages } from '../protocol/server-messages';
import { changeNode, type NodeCommandName, type NodeOperations } from './node-commands';
import { configurationItems } from '../config/config';
import { readPcpUsers } from './pcp-users';
import { healthCheckStats, poolPools, poolProcesses, type AdminContext } from './show-commands';

export interface PcpServerOptions {
  readonly addresses: readonly string[];
  readonly port: number;
  /** pcp.conf: `user:md5-of-password` lines. */
  readonly usersFile: string;
  readonly cluster: ClusterState;
  readonly operations: NodeOperations;
  /** What the SHOW commands read: PCP's reports are the same tables. */
  readonly admin: AdminContext;
  /** pcp_stop_pgpool: asks the program running the proxy to stop it; false when nothing can. */
  requestStop?(): boolean;
}

/** pgpool refuses larger packets too: a PCP request is a few short strings. */
const maxPacketLength = 64 * 1024;

const md5Hex = (data: Buffer | string) => createHash('md5').update(data).digest('hex');

/** `type` + length + body, as both PCP and the PostgreSQL protocol frame a message. */
function packet(type: string, ...fields: (string | Buffer)[]): Buffer {
  const body = Buffer.concat(fields.map((f) => (typeof f === 'string' ? Buffer.from(`${f}\0`) : f)));
  const header = Buffer.alloc(5);
  header.write(type, 0, 'latin1');
  header.writeInt32BE(body.length + 4, 1);
  return Buffer.concat([header, body]);
}

function fields(frame: Frame): string[] {
  return frame.payload.toString('utf8').split('\0').slice(0, -1);
}

/** RAND_MAX of the C library pgpool's clients are built with. */
const randMax = 2147483647;

/** pgpool's pool_backend_status: 2 up, 3 down. */
const backendStatus = { up: '2', down: '3' } as const;
/** pgpool's SERVER_ROLE: 0 main, 1 replica (replication mode); 2 primary, 3 standby (streaming replication). */
const roleMain = '0';
const roleReplica = '1';
const rolePrimary = '2';
const roleStandby = '3';

export class PcpServer {
  private readonly listeners = new AddressListeners();

  constructor(private readonly options: PcpServerOptions) {}

  async start(): Promise<void> {
    await this.listeners.listen(this.options.addresses, this.options.port, () => createServer((socket) => this.accept(socket)));
    log('info', 'pcp_listening', { addresses: this.options.addresses.join(','), port: this.port });
  }

  /** The port PCP clients connect to (the system's choice for pcp_port 0). */
  get port(): number {
    return this.listeners.port;
  }

  stop(): Promise<void> {
    return this.listeners.close();
  }

  private accept(socket: Socket): void {
    socket.on('error', () => undefined);
    const reader = new FrameReader(maxPacketLength, 'PCP client');
    let salt: Buffer | null = null;
    let user: string | null = null;
    let queue: Promise<void> = Promise.resolve();
    const fail = (error: PgError) => {
      socket.end(serverMessages.errorResponse(error));
    };
    socket.on('data', (chunk: Buffer) => {
      let frames: Frame[];
      try {
        frames = reader.push(chunk);
      } catch (error) {
        log('warning', 'pcp_bad_packet', { error: (error as Error).message });
        return fail(new PgError({ severity: 'FATAL', code: SqlState.protocolViolation, message: 'invalid PCP packet', detail: (error as Error).message }));
      }
      for (const frame of frames) {
        // One request at a time, in order: a recovery may take a while.
        queue = queue.then(async () => {
          if (socket.destroyed) return;
          const type = String.fromCharCode(frame.code);
          if (type === 'M') {
            salt = randomBytes(4);
            socket.write(packet('m', salt));
            return;
          }
          if (type === 'R') {
            const [name, answer] = fields(frame);
            if (!salt || name === undefined || answer === undefined || !this.authenticates(name, answer, salt)) {
              log('warning', 'pcp_authentication_failed', { user: name ?? '' });
              return fail(new PgError({ severity: 'FATAL', code: SqlState.invalidPassword, message: `authentication failed for user "${name ?? ''}"`, detail: 'username and/or password does not match' }));
            }
            user = name;
            socket.write(packet('r', 'AuthenticationOK'));
            return;
          }
          if (user === null) return fail(new PgError({ severity: 'FATAL', code: SqlState.invalidPassword, message: 'authentication failed for new PCP connection', detail: 'connection not authorized' }));
          if (type === 'X') return void socket.end();
          try {
            await this.command(type, fields(frame), socket, user);
          } catch (error) {
            const pgError = error instanceof PgError ? error : new PgError({ code: SqlState.internalError, message: (error as Error).message });
            socket.write(serverMessages.errorResponse(pgError));
          }
        });
      }
    });
  }

  private authenticates(name: string, answer: string, salt: Buffer): boolean {
    let stored: string | undefined;
    try {
      stored = readPcpUsers(this.options.usersFile).get(name);
    } catch (error) {
      log('error', 'pcp_users_file_unreadable', { path: this.options.usersFile, error: (error as Error).message });
      return false;
    }
    if (!stored) return false;
    const expected = md5Hex(Buffer.concat([Buffer.from(md5Hex(stored + name)), salt]));
    return expected === answer;
  }

  private nodeId(argument: string | undefined): number {
    const { cluster } = this.options;
    const id = argument !== undefined && /^\d+$/.test(argument) ? Number(argument) : -1;
    if (!cluster.nodes[id]) throw new PgError({ code: SqlState.invalidParameterValue, message: 'informing node info failed', detail: `invalid node ID : ${argument ?? ''}` });
    return id;
  }

  private async command(type: string, args: string[], socket: Socket, user: string): Promise<void> {
    const { cluster } = this.options;
    switch (type) {
      case 'L':
        socket.write(packet('l', 'CommandComplete', String(cluster.nodes.length)));
        return;
      case 'I': {
        const node = cluster.nodes[this.nodeId(args[0])];
        const main = cluster.mainNode();
        const totalWeight = cluster.nodes.reduce((sum, n) => sum + n.weight, 0) || 1;
        socket.write(packet('i', 'ArraySize', '1'));
        socket.write(
          packet(
            'i',
            'NodeInfo',
            node.host,
            String(node.port),
            backendStatus[node.status],
            '0', // quarantine
            node.status,
            // pgpool keeps weights scaled by RAND_MAX, and its client divides by it again.
            ((node.weight / totalWeight) * randMax).toFixed(6),
            cluster.streaming ? (node === main ? rolePrimary : roleStandby) : node === main ? roleMain : roleReplica,
            cluster.roleName(node),
            String(node.replication.delayBytes ?? 0), // standby delay, bytes
            node.replication.state,
            node.replication.syncState,
            String(Math.floor(node.statusChangedAt.getTime() / 1000)),
          ),
        );
        socket.write(packet('i', 'CommandComplete'));
        return;
      }
      case 'C':
      case 'D':
      case 'd':
      case 'O':
      case 'J':
      case 'j': {
        // J and j: pcp_promote_node without and with -g; both switch over at once (-g's wait for every client to
        // disconnect first is not done). Its node id comes padded with a space.
        const name: NodeCommandName = type === 'C' ? 'attach_node' : type === 'O' ? 'recover_node' : type === 'J' || type === 'j' ? 'promote_node' : 'detach_node';
        const nodeId = this.nodeId(args[0]?.trim());
        log('info', 'pcp_command', { user, command: name, node: nodeId });
        const progress = (message: string) => socket.write(packet('N', Buffer.from(`SNOTICE\0M${message}\0\0`)));
        await changeNode({ name, nodeId, via: `pcp_${name === 'recover_node' ? 'recovery' : name.replace('_node', '')}_node` }, this.options.operations, progress);
        socket.write(packet(type === 'C' || type === 'O' ? 'c' : 'd', 'CommandComplete'));
        return;
      }
      case 'N': {
        // pcp_proc_count: the "processes" are client sessions, by the process id each was given.
        const pids = poolProcesses(this.options.admin).rows.map((row) => row[0]!);
        socket.write(packet('n', 'CommandComplete', String(pids.length), ...pids));
        return;
      }
      case 'P': {
        // pcp_proc_info: pool_pools' rows (pgpool's POOL_REPORT_POOLS, field for field), of one session or all.
        const pid = args[0] ?? '0';
        const rows = poolPools(this.options.admin).rows.filter((row) => pid === '0' || row[0] === pid);
        if (pid !== '0' && rows.length === 0) throw new PgError({ code: SqlState.invalidParameterValue, message: 'informing process info failed', detail: `invalid process ID : ${pid}` });
        socket.write(packet('p', 'ArraySize', String(rows.length)));
        for (const row of rows) socket.write(packet('p', 'ProcessInfo', ...row.map((v) => v ?? '')));
        socket.write(packet('p', 'CommandComplete'));
        return;
      }
      case 'B': {
        // pcp_pool_status: SHOW pool_status. Its array size, unlike every other, is a binary integer.
        const items = configurationItems(this.options.admin.config);
        const size = Buffer.alloc(4);
        size.writeInt32BE(items.length);
        socket.write(packet('b', 'ArraySize', size));
        for (const item of items) socket.write(packet('b', 'ProcessConfig', item.item, item.value, item.description));
        socket.write(packet('b', 'CommandComplete'));
        return;
      }
      case 'H': {
        const row = healthCheckStats(this.options.admin).rows[this.nodeId(args[0])];
        socket.write(packet('h', 'CommandComplete', ...row.map((v) => v ?? '')));
        return;
      }
      case 'T': {
        // pcp_stop_pgpool, smart or fast alike: sessions end as on SIGTERM (smart's wait for clients is not done).
        if (!this.options.requestStop?.()) {
          throw new PgError({ code: SqlState.featureNotSupported, message: 'PCP processing request', detail: 'this proxy runs inside another program, which alone can stop it' });
        }
        log('warning', 'pcp_command', { user, command: 'stop' });
        socket.write(packet('t', 'CommandComplete'));
        return;
      }
      case 'W': {
        // pcp_watchdog_info: pgpool-II answers with "CommandComplete" and a JSON document in one packet.
        const view = this.options.admin.watchdog?.() ?? null;
        if (!view) throw new PgError({ code: SqlState.objectNotInPrerequisiteState, message: 'PCP: informing watchdog info failed', detail: 'watchdog is not enabled' });
        const index = Number(args[0] ?? '-1');
        if (!Number.isInteger(index) || index >= view.members.length) throw new PgError({ code: SqlState.invalidParameterValue, message: 'PCP: informing watchdog info failed', detail: 'invalid watchdog index' });
        socket.write(packet('w', 'CommandComplete', watchdogInfoJson(view, index)));
        return;
      }
      default:
        throw new PgError({ code: SqlState.featureNotSupported, message: 'PCP processing request', detail: `PCP packet type "${type}" is not supported by parapool` });
    }
  }
}

/**
 * pcp_watchdog_info's document, with the keys pgpool-II's client reads: the cluster (leader, quorum, escalation)
 * and one object per instance (this one has index 0, the others follow in their configured order); index -1
 * lists them all. AliveNodeCount counts the standbys, as pgpool's leader counts them.
 */
export function watchdogInfoJson(view: WatchdogView, index: number): string {
  const leader = view.members.find((m) => m.name === view.leader) ?? null;
  const members = index < 0 ? view.members.map((m, id) => [m, id] as const) : [[view.members[index], index] as const];
  return JSON.stringify({
    RemoteNodeCount: view.total - 1,
    MemberRemoteNodeCount: view.total - 1,
    NodesRequireForQuorum: view.quorumNeeded,
    QuorumStatus: leader ? view.quorumState : -2,
    AliveNodeCount: leader ? view.alive - 1 : 0,
    Escalated: view.escalated ? 1 : 0,
    LeaderNodeName: leader ? leader.name : 'Not Set',
    LeaderHostName: leader ? leader.host : 'Not Set',
    NodeCount: members.length,
    WatchdogNodes: members.map(([m, id]) => ({
      ID: id,
      State: watchdogStateCodes[m.state],
      Membership: 0,
      MembershipString: 'MEMBER',
      NodeName: m.name,
      HostName: m.host,
      StateName: m.state,
      DelegateIP: '',
      WdPort: m.wdPort,
      PgpoolPort: m.pgpoolPort,
      Priority: m.priority,
      LifecheckStarted: true,
    })),
  });
}
