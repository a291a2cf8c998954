// Whether a node still serves, asked the way a client would: open a connection and send a start-up packet.
// A node that answers with an authentication request, or with any error but "cannot connect now" (starting up,
// shutting down, in recovery), is serving; a refused, closed or silent connection is not. One lost connection
// says little: the server may have ended just that backend (a protocol error, pg_terminate_backend).

import { connect } from 'node:net';
import { serialize } from 'pg-protocol';
import type { BackendNode } from './backend-node';

export interface ProbeResult {
  readonly serving: boolean;
  readonly reason: string;
}

const cannotConnectNow = '57P03';

export function probeNode(node: BackendNode, user: string, timeoutMs: number): Promise<ProbeResult> {
  return new Promise((resolvePromise) => {
    const socket = connect({ host: node.host, port: node.port });
    let buffer = Buffer.alloc(0);
    const done = (result: ProbeResult) => {
      clearTimeout(timer);
      socket.destroy();
      resolvePromise(result);
    };
    const timer = setTimeout(() => done({ serving: false, reason: `no answer within ${timeoutMs} ms` }), timeoutMs);
    socket.on('error', (error) => done({ serving: false, reason: error.message }));
    socket.on('close', () => done({ serving: false, reason: 'the node closed the connection before answering' }));
    socket.on('connect', () => socket.write(serialize.startup({ user, database: 'postgres', application_name: 'parapool probe' })));
    socket.on('data', (chunk: Buffer) => {
      buffer = Buffer.concat([buffer, chunk]);
      if (buffer.length < 5) return;
      if (buffer[0] !== 0x45) return done({ serving: true, reason: 'answered a start-up' }); // 'E' is the only refusal
      const length = buffer.readInt32BE(1);
      if (buffer.length < 1 + length) return;
      const fields = buffer.subarray(5, 1 + length);
      let code = '';
      let message = '';
      for (let offset = 0; offset < fields.length && fields[offset] !== 0; ) {
        const end = fields.indexOf(0, offset + 1);
        const value = fields.toString('utf8', offset + 1, end);
        if (fields[offset] === 0x43) code = value;
        if (fields[offset] === 0x4d) message = value;
        offset = end + 1;
      }
      done(code === cannotConnectNow ? { serving: false, reason: message } : { serving: true, reason: `answered ${code}` });
    });
  });
}
