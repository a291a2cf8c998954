// Seeded protocol fuzzing, shared by the test suite (100,000+ messages) and bench/fuzz-bench.ts (millions):
// valid client sessions, mutated (bit flips, truncation, wrong and huge lengths, unknown types, out-of-place
// messages, unknown names, CopyData outside COPY), and random bytes before start-up. Every case is rebuilt from
// its seed, so a failure names a seed that replays it.

import { connect, type Socket } from 'node:net';
import { serialize } from 'pg-protocol';
import { intBetween, prng } from './random';

/** Statements the valid messages carry: reads and writes of a replicated and a distributed table. */
const statements = [
  'SELECT 1',
  'SELECT a, b FROM fuzz_items ORDER BY a LIMIT 3',
  'SELECT count(*), sum(k) FROM fuzz_spread',
  'SELECT k, count(*) FROM fuzz_spread GROUP BY k ORDER BY k LIMIT 5',
  'SELECT $1::int + 1',
  'BEGIN',
  'COMMIT',
  'ROLLBACK',
  'SAVEPOINT s',
  "INSERT INTO fuzz_log VALUES (1, 'x')",
  'SELECT * FROM no_such_table',
  'SELEC garbage',
  'COPY fuzz_log FROM STDIN',
  'COPY fuzz_items TO STDOUT',
  'SHOW pool_nodes',
  '',
];

export const fuzzSchema = [
  'CREATE TABLE fuzz_items (a int PRIMARY KEY, b text)',
  "INSERT INTO fuzz_items SELECT g, 'item ' || g FROM generate_series(1, 20) g",
  'CREATE TABLE fuzz_log (a int, b text)',
  'CREATE TABLE fuzz_spread (k int, v text)',
  "SELECT parapool.distribute_table('fuzz_spread', 'k')",
  "INSERT INTO fuzz_spread SELECT g % 7, 'v' || g FROM generate_series(1, 50) g",
];

function pick<T>(random: () => number, items: readonly T[]): T {
  return items[Math.floor(random() * items.length)];
}

function randomBytes(random: () => number, length: number): Buffer {
  const out = Buffer.alloc(length);
  for (let i = 0; i < length; i++) out[i] = Math.floor(random() * 256);
  return out;
}

/** One well-formed frontend message, in or out of place. */
function validMessage(random: () => number): Buffer {
  const name = pick(random, ['', 's1', 'p1', 'nope']);
  switch (intBetween(random, 0, 15)) {
    case 0:
    case 1:
      return serialize.query(pick(random, statements));
    case 2:
      return serialize.parse({ name, text: pick(random, statements), types: random() < 0.5 ? [] : [23] });
    case 3:
      return serialize.bind({ portal: pick(random, ['', 'p1']), statement: name, values: random() < 0.5 ? [] : ['41'] });
    case 4:
      return serialize.describe({ type: random() < 0.5 ? 'S' : 'P', name });
    case 5:
      return serialize.execute({ portal: pick(random, ['', 'p1']), rows: intBetween(random, 0, 3) });
    case 6:
    case 7:
      return serialize.sync();
    case 8:
      return serialize.flush();
    case 9:
      return serialize.close({ type: random() < 0.5 ? 'S' : 'P', name });
    case 10:
      return serialize.copyData(Buffer.from(`${intBetween(random, 1, 9)}\tfuzz\n`));
    case 11:
      return serialize.copyDone();
    case 12:
      return serialize.copyFail('fuzz');
    case 13:
      return serialize.password('not asked for');
    case 14:
      // A FunctionCall ('F') of a function that does not exist.
      return frameOf(0x46, Buffer.from([0, 0, 0, 1, 0, 0, 0, 0, 0, 0]));
    default:
      return frameOf(intBetween(random, 0, 255), randomBytes(random, intBetween(random, 0, 16)));
  }
}

function frameOf(code: number, body: Buffer): Buffer {
  const out = Buffer.alloc(5 + body.length);
  out[0] = code;
  out.writeInt32BE(4 + body.length, 1);
  body.copy(out, 5);
  return out;
}

/** A message as the fuzzer sends it: most left valid, the rest mutated one way or another. */
function fuzzedMessage(random: () => number): Buffer {
  const message = Buffer.from(validMessage(random));
  const roll = random();
  if (roll < 0.55) return message;
  if (roll < 0.7) {
    for (let flips = intBetween(random, 1, 3); flips > 0; flips--) {
      const at = intBetween(random, 0, message.length - 1);
      message[at] ^= 1 << intBetween(random, 0, 7);
    }
    return message;
  }
  if (roll < 0.8) return message.subarray(0, intBetween(random, 1, message.length - 1));
  if (roll < 0.87) {
    message.writeInt32BE(intBetween(random, -8, message.length + 8), 1);
    return message;
  }
  if (roll < 0.9) {
    // A length far larger than any message: the proxy refuses it instead of waiting for (or allocating) it.
    message.writeInt32BE(intBetween(random, 0x10000000, 0x7fffffff), 1);
    return message;
  }
  if (roll < 0.95) {
    message[0] = intBetween(random, 0, 255);
    return message;
  }
  return randomBytes(random, intBetween(random, 1, 40));
}

export interface FuzzCase {
  readonly seed: number;
  /** Bytes sent before the start-up packet is complete, or null for a normal start-up. */
  readonly beforeStartup: Buffer | null;
  /** Messages after start-up, each counted. */
  readonly messages: Buffer[];
}

/** The case of one connection, rebuilt from its seed alone. */
export function fuzzCase(seed: number, messagesPerSession: number): FuzzCase {
  const random = prng(seed);
  if (random() < 0.1) {
    const kind = intBetween(random, 0, 4);
    let bytes: Buffer;
    if (kind === 0) bytes = randomBytes(random, intBetween(random, 1, 64));
    else if (kind === 1) {
      bytes = Buffer.alloc(8 + intBetween(random, 0, 24));
      bytes.writeInt32BE(bytes.length, 0);
      randomBytes(random, bytes.length - 4).copy(bytes, 4);
    } else if (kind === 2) {
      bytes = Buffer.from(serialize.startup({ user: 'postgres', database: 'postgres' }));
      for (let i = 0; i < 3; i++) bytes[intBetween(random, 0, bytes.length - 1)] ^= 1 << intBetween(random, 0, 7);
    } else if (kind === 3) {
      bytes = Buffer.concat([Buffer.from([0, 0, 0, 8, 4, 0xd2, 0x16, 0x2f]), randomBytes(random, intBetween(random, 1, 32))]);
    } else {
      bytes = Buffer.from(serialize.startup({ user: 'postgres', database: 'postgres' }));
      bytes = bytes.subarray(0, intBetween(random, 1, bytes.length - 1));
    }
    return { seed, beforeStartup: bytes, messages: [] };
  }
  const messages: Buffer[] = [];
  for (let i = 0; i < messagesPerSession; i++) messages.push(fuzzedMessage(random));
  return { seed, beforeStartup: null, messages };
}

/**
 * Plays one case against the proxy: start-up, then the messages in a few writes, then a Sync, and waits until
 * the proxy closes the connection or stops sending (a session left waiting for the rest of a long message).
 */
export async function playFuzzCase(port: number, fuzz: FuzzCase, quietMs = 150): Promise<void> {
  const socket = await new Promise<Socket>((resolvePromise, reject) => {
    const s = connect({ host: '127.0.0.1', port }, () => resolvePromise(s));
    s.once('error', reject);
  });
  socket.on('error', () => undefined);
  let closed = false;
  let lastData = Date.now();
  let sawReady = false;
  socket.on('data', (chunk: Buffer) => {
    lastData = Date.now();
    // ReadyForQuery is 'Z', length 5, status: enough to know the start-up ended (a row could hold the same
    // bytes, but only after start-up anyway).
    if (!sawReady && chunk.includes(Buffer.from([0x5a, 0, 0, 0, 5]))) sawReady = true;
  });
  socket.on('close', () => (closed = true));
  const waitQuiet = async (until: () => boolean) => {
    const deadline = Date.now() + 5000;
    while (!closed && !until() && Date.now() - lastData < quietMs && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
  };
  if (fuzz.beforeStartup) {
    socket.write(fuzz.beforeStartup);
    await waitQuiet(() => false);
  } else {
    socket.write(serialize.startup({ user: 'postgres', database: 'postgres' }));
    await waitQuiet(() => sawReady);
    for (let i = 0; i < fuzz.messages.length && !closed; i += 8) {
      socket.write(Buffer.concat(fuzz.messages.slice(i, i + 8)));
      await new Promise((r) => setImmediate(r));
    }
    if (!closed) socket.write(serialize.sync());
    lastData = Date.now();
    await waitQuiet(() => false);
  }
  socket.destroy();
}

export interface FuzzCampaign {
  readonly port: number;
  readonly targetMessages: number;
  readonly seedBase: number;
  /** Runs after every batch of sessions (the caller checks that the proxy still answers). */
  readonly afterBatch: (batch: number, lastSeed: number) => Promise<void>;
  readonly messagesPerSession?: number;
  readonly concurrency?: number;
  readonly batchSessions?: number;
}

export interface FuzzTotals {
  messages: number;
  sessions: number;
  beforeStartup: number;
  batches: number;
  lastSeed: number;
  /** RSS after the second batch (once the pools and caches have warmed up) and at its highest. */
  warmRss: number;
  peakRss: number;
}

/** Plays batches of seeded cases, `concurrency` sessions at a time, until `targetMessages` have been sent. */
export async function runFuzzCampaign(campaign: FuzzCampaign): Promise<FuzzTotals> {
  const { port, targetMessages, seedBase, afterBatch, messagesPerSession = 50, concurrency = 16, batchSessions = 160 } = campaign;
  const totals: FuzzTotals = { messages: 0, sessions: 0, beforeStartup: 0, batches: 0, lastSeed: seedBase - 1, warmRss: 0, peakRss: 0 };
  let seed = seedBase;
  while (totals.messages < targetMessages) {
    const cases = Array.from({ length: batchSessions }, () => fuzzCase(seed++, messagesPerSession));
    let next = 0;
    await Promise.all(
      Array.from({ length: concurrency }, async () => {
        while (next < cases.length) await playFuzzCase(port, cases[next++]);
      }),
    );
    for (const fuzz of cases) {
      totals.messages += fuzz.messages.length;
      if (fuzz.beforeStartup) totals.beforeStartup++;
    }
    totals.sessions += cases.length;
    totals.batches++;
    totals.lastSeed = seed - 1;
    await afterBatch(totals.batches, totals.lastSeed);
    const rss = process.memoryUsage().rss;
    if (totals.batches === 2) totals.warmRss = rss;
    totals.peakRss = Math.max(totals.peakRss, rss);
  }
  return totals;
}
