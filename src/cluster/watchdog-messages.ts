// What parapool's watchdog instances say to each other: plain data with a `kind`, one JSON object per line over
// TCP. JSON lines keep the protocol readable in a packet capture and need no codec; a line that does not parse,
// or a kind this version does not know, is dropped, never trusted.

/** The state of an instance, with pgpool-II's names as SHOW watchdog and pcp_watchdog_info print them. */
export type WatchdogState = 'LOADING' | 'JOINING' | 'STANDBY' | 'LEADER' | 'LOST' | 'SHUTDOWN';

/** One node's status as the leader records it. */
export type NodeStatusEntry = 'up' | 'down';

/** Sent to every peer each wd_heartbeat_keepalive seconds and on every change of state. */
export interface HeartbeatMessage {
  readonly kind: 'heartbeat';
  /** The sender's name: wd_hostname:wd_port. */
  readonly from: string;
  readonly priority: number;
  readonly pgpoolPort: number;
  readonly state: WatchdogState;
  /** The leader the sender follows (itself when it leads); '' for none. */
  readonly leader: string;
  /** The election term: a new leader takes a term above every one it has seen, so a stale leader can tell. */
  readonly term: number;
  /** How many instances the sender sees alive, itself included. */
  readonly alive: number;
  /** The node statuses the sender holds and their version ([term, count]): the leader's are the cluster's. */
  readonly nodes: readonly NodeStatusEntry[];
  readonly version: readonly [number, number];
}

/** A standby whose health check (or a lost connection) found a node down asks the leader to fail it over. */
export interface FailoverRequestMessage {
  readonly kind: 'failover-request';
  readonly from: string;
  readonly node: number;
  readonly reason: string;
}

/** A standby's node attached or detached by hand: the leader makes it the cluster's. */
export interface NodeCommandMessage {
  readonly kind: 'node-command';
  readonly from: string;
  readonly node: number;
  readonly status: NodeStatusEntry;
  readonly reason: string;
}

export type WatchdogMessage = HeartbeatMessage | FailoverRequestMessage | NodeCommandMessage;
export type WatchdogMessageKind = WatchdogMessage['kind'];

const kinds: readonly WatchdogMessageKind[] = ['heartbeat', 'failover-request', 'node-command'];

export function encodeMessage(message: WatchdogMessage): string {
  return `${JSON.stringify(message)}\n`;
}

/** Splits a stream into messages; keeps a partial line for the next chunk. Lines longer than the limit end the link. */
export class MessageReader {
  private buffered = '';

  constructor(private readonly maxLine = 1024 * 1024) {}

  /** The complete messages in `chunk` (with what was buffered); throws when a line exceeds the limit. */
  push(chunk: Buffer): WatchdogMessage[] {
    this.buffered += chunk.toString('utf8');
    const messages: WatchdogMessage[] = [];
    let newline: number;
    while ((newline = this.buffered.indexOf('\n')) >= 0) {
      const line = this.buffered.slice(0, newline);
      this.buffered = this.buffered.slice(newline + 1);
      const message = decodeMessage(line);
      if (message) messages.push(message);
    }
    if (this.buffered.length > this.maxLine) throw new Error(`a watchdog message is longer than ${this.maxLine} bytes`);
    return messages;
  }
}

/** A message, or null for a line that is not one. */
export function decodeMessage(line: string): WatchdogMessage | null {
  try {
    const value = JSON.parse(line) as { kind?: unknown; from?: unknown };
    if (typeof value !== 'object' || value === null || typeof value.from !== 'string') return null;
    return kinds.includes(value.kind as WatchdogMessageKind) ? (value as WatchdogMessage) : null;
  } catch {
    return null;
  }
}
