// The frame reader must give the same frames however the bytes are chunked, and refuse lengths it cannot
// trust with 08P01 instead of buffering without bound.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { serialize } from 'pg-protocol';
import { FrameReader, readStartupPacket, StartupCode } from '../../src/protocol/frame-reader';
import { PgError } from '../../src/protocol/errors';
import { decodeBind, decodeParse, decodeQuery, renameBindStatement } from '../../src/protocol/frontend-messages';

const stream = Buffer.concat([
  serialize.query('select 1'),
  serialize.parse({ name: 's1', text: 'select $1::int', types: [23] }),
  serialize.bind({ portal: 'p', statement: 's1', values: ['42', null] }),
  serialize.execute({ portal: 'p', rows: 10 }),
  serialize.sync(),
]);

function framesOf(chunks: Buffer[]): string[] {
  const reader = new FrameReader(1 << 20, 'test');
  return chunks.flatMap((c) => reader.push(c)).map((f) => `${String.fromCharCode(f.code)}:${f.payload.toString('hex')}`);
}

test('frames are the same when the stream is split at any offset', () => {
  const whole = framesOf([stream]);
  assert.equal(whole.length, 5);
  for (let cut = 0; cut <= stream.length; cut++) {
    assert.deepEqual(framesOf([stream.subarray(0, cut), stream.subarray(cut)]), whole, `cut at ${cut}`);
  }
});

test('frames are the same for random chunkings', () => {
  const whole = framesOf([stream]);
  let seed = 7;
  const random = () => ((seed = (seed * 1103515245 + 12345) & 0x7fffffff) / 0x7fffffff);
  for (let round = 0; round < 200; round++) {
    const chunks: Buffer[] = [];
    for (let offset = 0; offset < stream.length; ) {
      const size = 1 + Math.floor(random() * 9);
      chunks.push(stream.subarray(offset, offset + size));
      offset += size;
    }
    assert.deepEqual(framesOf(chunks), whole);
  }
});

test('a length below 4 or above the limit is a protocol violation', () => {
  const reader = new FrameReader(100, 'test');
  const bad = Buffer.from([0x51, 0, 0, 0, 2]);
  assert.throws(() => reader.push(bad), (e: unknown) => e instanceof PgError && e.code === '08P01');
  const big = Buffer.from([0x51, 0, 0, 1, 0]);
  assert.throws(() => new FrameReader(100, 'test').push(big), (e: unknown) => e instanceof PgError && e.code === '08P01' && /invalid message length/.test(e.message));
});

test('startup packets are bounded like PostgreSQL bounds them', () => {
  const ssl = Buffer.alloc(8);
  ssl.writeInt32BE(8, 0);
  ssl.writeInt32BE(StartupCode.sslRequest, 4);
  assert.equal(readStartupPacket(ssl)?.packet.code, StartupCode.sslRequest);
  assert.equal(readStartupPacket(ssl.subarray(0, 6)), null);
  const huge = Buffer.alloc(8);
  huge.writeInt32BE(20000, 0);
  assert.throws(() => readStartupPacket(huge), (e: unknown) => e instanceof PgError && e.code === '08P01');
  const tiny = Buffer.alloc(8);
  tiny.writeInt32BE(4, 0);
  assert.throws(() => readStartupPacket(tiny), (e: unknown) => e instanceof PgError && e.code === '08P01');
});

test('message decoders read every field and reject truncated bodies', () => {
  const [query, parse, bind] = new FrameReader(1 << 20, 'test').push(stream);
  assert.equal(decodeQuery(query.payload), 'select 1');
  assert.deepEqual(decodeParse(parse.payload), { name: 's1', sql: 'select $1::int', parameterTypes: [23] });
  const decoded = decodeBind(bind.payload);
  assert.equal(decoded.portal, 'p');
  assert.equal(decoded.statement, 's1');
  assert.deepEqual(decoded.parameters.map((p) => p?.toString() ?? null), ['42', null]);
  for (let cut = 0; cut < bind.payload.length; cut++) {
    assert.throws(() => decodeBind(bind.payload.subarray(0, cut)), (e: unknown) => e instanceof PgError && e.code === '08P01');
  }
  assert.throws(() => decodeQuery(Buffer.from('no terminator')), (e: unknown) => e instanceof PgError && e.code === '08P01');
  const renamed = new FrameReader(1 << 20, 'test').push(renameBindStatement(bind.payload, 'other'))[0];
  assert.equal(decodeBind(renamed.payload).statement, 'other');
  assert.deepEqual(decodeBind(renamed.payload).parameters.map((p) => p?.toString() ?? null), ['42', null]);
});
