// COPY ... TO STDOUT of rows the proxy computes (a distributed table, or a query over one): the rows of a
// distributed read, written in COPY's text or CSV format as PostgreSQL 15's COPY TO writes them (copyto.c), so
// pg_dump and psql's \copy get the same bytes as from one server.

import type { ClientSink } from '../executor/client-sink';
import type { CopyFormat } from '../protocol/copy-row-splitter';
import { dataRowFields } from '../protocol/data-row';
import { BackendCode } from '../protocol/message-codes';
import { decodeRowDescription } from '../protocol/row-description';
import { serverMessages } from '../protocol/server-messages';

const textEscapes = new Map<number, string>([
  [0x08, 'b'],
  [0x0c, 'f'],
  [0x0a, 'n'],
  [0x0d, 'r'],
  [0x09, 't'],
  [0x0b, 'v'],
]);

/** A sink for a read's frames that sends the client COPY OUT messages instead. */
export class CopyOutSink implements ClientSink {
  private rows = 0;
  private quoted: boolean[] = [];
  private single = false;

  constructor(private readonly client: ClientSink, private readonly format: CopyFormat) {}

  get closed(): boolean {
    return this.client.closed;
  }

  onceDrained(callback: () => void): void {
    this.client.onceDrained(callback);
  }

  write(bytes: Buffer): boolean {
    switch (bytes[0]) {
      case BackendCode.rowDescription: {
        const names = decodeRowDescription(bytes.subarray(5)).map((field) => field.name);
        const force = this.format.forceQuote;
        this.quoted = names.map((name) => force === '*' || (force?.includes(name) ?? false));
        this.single = names.length === 1;
        const response = Buffer.alloc(1 + 4 + 1 + 2 + 2 * names.length);
        response[0] = BackendCode.copyOutResponse;
        response.writeInt32BE(response.length - 1, 1);
        response.writeInt16BE(names.length, 6);
        this.client.write(response);
        if (this.format.header) this.client.write(copyData(names.map((name) => this.field(name, false)).join(this.format.delimiter) + '\n'));
        return true;
      }
      case BackendCode.dataRow: {
        this.rows++;
        const fields = dataRowFields(bytes.subarray(5));
        const line = fields.map((value, i) => (value === null ? this.format.nullString : this.field(value.toString('utf8'), this.quoted[i]))).join(this.format.delimiter);
        return this.client.write(copyData(line + '\n'));
      }
      case BackendCode.commandComplete:
        this.client.write(Buffer.from([BackendCode.copyDone, 0, 0, 0, 4]));
        return this.client.write(serverMessages.commandComplete(`COPY ${this.rows}`));
      default:
        return this.client.write(bytes);
    }
  }

  private field(value: string, forceQuote: boolean): string {
    return this.format.format === 'csv' ? this.csvField(value, forceQuote) : this.textField(value);
  }

  private textField(value: string): string {
    const delimiter = this.format.delimiter;
    let out = '';
    for (const ch of value) {
      const code = ch.charCodeAt(0);
      if (code < 0x20) {
        const escape = textEscapes.get(code);
        if (escape) out += '\\' + escape;
        else out += ch === delimiter ? '\\' + ch : ch;
      } else if (ch === '\\' || ch === delimiter) out += '\\' + ch;
      else out += ch;
    }
    return out;
  }

  private csvField(value: string, forceQuote: boolean): string {
    const { delimiter, quote, escape, nullString } = this.format;
    let quoted = forceQuote || value === nullString;
    if (!quoted) {
      // "\." alone on a line would end the data: quoted when it is the only column.
      if (this.single && value === '\\.') quoted = true;
      else quoted = [...value].some((ch) => ch === delimiter || ch === quote || ch === '\n' || ch === '\r');
    }
    if (!quoted) return value;
    let out = quote;
    for (const ch of value) out += ch === quote || ch === escape ? escape + ch : ch;
    return out + quote;
  }
}

function copyData(text: string): Buffer {
  const body = Buffer.from(text, 'utf8');
  const out = Buffer.allocUnsafe(5 + body.length);
  out[0] = BackendCode.copyData;
  out.writeInt32BE(4 + body.length, 1);
  body.copy(out, 5);
  return out;
}
