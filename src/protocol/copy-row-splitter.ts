// COPY FROM STDIN into a distributed table must send each row to the node that owns its key, so the proxy has to
// find row boundaries and read the key field exactly as PostgreSQL 15's COPY FROM would (copyfromparse.c): any
// disagreement would put a row on the wrong node or split one row into two.

import { isUtf8 } from 'node:buffer';
import { PgError, SqlState, type PgErrorFields } from './errors';

const badCopyFileFormat = '22P04';
const characterNotInRepertoire = '22021';

export interface CopyFormat {
  /** Binary is parsed from the options so the caller can refuse it; the splitter throws 0A000 for it. */
  format: 'text' | 'csv' | 'binary';
  delimiter: string;
  quote: string;
  escape: string;
  nullString: string;
  header: boolean;
  /** HEADER MATCH: checked against the column names when the splitter is given them. */
  headerMatch?: boolean;
  forceNotNull?: readonly string[];
  forceNull?: readonly string[];
  /** COPY TO only: the columns always quoted in CSV ('*': all). */
  forceQuote?: readonly string[] | '*';
  encoding?: 'UTF8';
}

export interface CopyRow {
  /** The row's bytes exactly as received, including its line terminator: forwarded unchanged to the owning node. */
  raw: Buffer;
  /** The decoded text of the requested field, or null for SQL NULL. */
  key: string | null;
  /** 1-based line number of the row's first line in the COPY input (for error messages) */
  line: number;
}

export interface CopyRowSplitterOptions {
  /** The COPY's target columns in input order: needed for FORCE_NULL/FORCE_NOT_NULL and HEADER MATCH, and named in messages. */
  readonly columnNames?: readonly string[];
  /** Named in the error context, as PostgreSQL's "COPY t, line 3". */
  readonly table?: string;
}

/** A bad row, with the input line PostgreSQL would name (its cur_lineno, which counts CSV's quoted newlines). */
export class CopyDataError extends PgError {
  constructor(fields: PgErrorFields, readonly line: number) {
    super(fields);
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Options

interface DefElem {
  defname: string;
  arg?: Record<string, unknown>;
  location?: number;
}

function syntaxError(message: string, def?: DefElem): PgError {
  return new PgError({ code: SqlState.syntaxError, message, position: positionOf(def) });
}

// parse-tree locations are offsets into the statement text PostgreSQL also reports positions against
function positionOf(def: DefElem | undefined): number | undefined {
  return def?.location !== undefined && def.location >= 0 ? def.location + 1 : undefined;
}

/** PostgreSQL's defGetString. */
function defString(def: DefElem): string {
  if (!def.arg) throw syntaxError(`${def.defname} requires a parameter`);
  const [tag, body] = Object.entries(def.arg)[0] as [string, Record<string, unknown>];
  switch (tag) {
    case 'String':
      return (body.sval as string | undefined) ?? '';
    case 'Integer':
      return String((body.ival as number | undefined) ?? 0);
    case 'Float':
      return String(body.fval ?? '0');
    case 'Boolean':
      return body.boolval ? 'true' : 'false';
    case 'A_Star':
      return '*';
    case 'TypeName':
    case 'List': {
      const items = ((tag === 'List' ? body.items : body.names) as { String?: { sval?: string } }[] | undefined) ?? [];
      return items.map((i) => i.String?.sval ?? '').join('.');
    }
    default:
      throw new PgError({ code: SqlState.internalError, message: `unrecognized node type: ${tag}` });
  }
}

/** PostgreSQL's defGetBoolean. */
function defBoolean(def: DefElem): boolean {
  if (!def.arg) return true;
  if ('Integer' in def.arg) {
    const value = ((def.arg.Integer as { ival?: number }).ival ?? 0);
    if (value === 0 || value === 1) return value === 1;
  } else {
    const text = defString(def).toLowerCase();
    if (text === 'true' || text === 'on') return true;
    if (text === 'false' || text === 'off') return false;
  }
  throw syntaxError(`${def.defname} requires a Boolean value`);
}

function defHeader(def: DefElem): { header: boolean; match: boolean } {
  if (!def.arg) return { header: true, match: false };
  if ('Integer' in def.arg) {
    const value = ((def.arg.Integer as { ival?: number }).ival ?? 0);
    if (value === 0 || value === 1) return { header: value === 1, match: false };
  } else {
    const text = defString(def).toLowerCase();
    if (text === 'true' || text === 'on') return { header: true, match: false };
    if (text === 'false' || text === 'off') return { header: false, match: false };
    if (text === 'match') return { header: true, match: true };
  }
  throw syntaxError(`${def.defname} requires a Boolean value or "match"`);
}

function defColumnList(def: DefElem): string[] {
  const list = def.arg?.List as { items?: { String?: { sval?: string } }[] } | undefined;
  if (!list) {
    throw new PgError({ code: SqlState.invalidParameterValue, message: `argument to option "${def.defname}" must be a list of column names`, position: positionOf(def) });
  }
  return (list.items ?? []).map((i) => i.String?.sval ?? '');
}

// PostgreSQL's encoding names after clean_encoding_name (lower case, letters and digits only); only UTF8 is read.
const utf8Names = new Set(['utf8', 'unicode']);
const otherEncodingNames = new Set(
  ('sqlascii eucjp euccn euckr euctw eucjis2004 muleinternal latin1 latin2 latin3 latin4 latin5 latin6 latin7 latin8 ' +
    'latin9 latin10 win1256 win1258 win866 win874 koi8r win1251 win1252 iso88595 iso88596 iso88597 iso88598 win1250 ' +
    'win1253 win1254 win1255 win1257 koi8u sjis big5 gbk uhc gb18030 johab shiftjis2004 abc alt koi8 mskanji tcvn ' +
    'tcvn5712 vscii win windows1250 windows1251 windows1252 windows1253 windows1254 windows1255 windows1256 ' +
    'windows1257 windows1258 windows866 windows874 windows932 windows936 windows949 windows950 iso885910 iso885913 ' +
    'iso885914 iso885915 iso885916 iso88591 iso88592 iso88593 iso88594 iso88599 cp866 cp874 cp932 cp936 cp949 cp950 ' +
    'cp1250 cp1251 cp1252 cp1253 cp1254 cp1255 cp1256 cp1257 cp1258 shiftjis').split(' '),
);

const textDelimiterForbidden = '\\.abcdefghijklmnopqrstuvwxyz0123456789';

/**
 * Reads the options of a CopyStmt parse tree from libpg-query (the `options` DefElem list of { CopyStmt: {...} }),
 * applying PostgreSQL's defaults and validation in PostgreSQL 15's order, with its SQLSTATEs and messages.
 */
export function copyFormatFromOptions(options: unknown[] | undefined, direction: 'from' | 'to' = 'from'): CopyFormat {
  let format: CopyFormat['format'] = 'text';
  let formatSeen = false;
  let freezeSeen = false;
  let headerSeen = false;
  let header = false;
  let headerMatch = false;
  let delimiter: string | undefined;
  let nullString: string | undefined;
  let quote: string | undefined;
  let escape: string | undefined;
  let forceQuote: string[] | '*' | undefined;
  let forceNotNull: string[] | undefined;
  let forceNull: string[] | undefined;
  let encoding: string | undefined;
  const conflicting = (def: DefElem) => syntaxError('conflicting or redundant options', def);

  for (const option of options ?? []) {
    const def = (option as { DefElem?: DefElem }).DefElem;
    if (!def) continue;
    switch (def.defname) {
      case 'format': {
        const name = defString(def);
        if (formatSeen) throw conflicting(def);
        formatSeen = true;
        if (name !== 'text' && name !== 'csv' && name !== 'binary') {
          throw new PgError({ code: SqlState.invalidParameterValue, message: `COPY format "${name}" not recognized`, position: positionOf(def) });
        }
        format = name;
        break;
      }
      case 'freeze':
        if (freezeSeen) throw conflicting(def);
        freezeSeen = true;
        defBoolean(def);
        break;
      case 'delimiter':
        if (delimiter !== undefined) throw conflicting(def);
        delimiter = defString(def);
        break;
      case 'null':
        if (nullString !== undefined) throw conflicting(def);
        nullString = defString(def);
        break;
      case 'header': {
        if (headerSeen) throw conflicting(def);
        headerSeen = true;
        ({ header, match: headerMatch } = defHeader(def));
        break;
      }
      case 'quote':
        if (quote !== undefined) throw conflicting(def);
        quote = defString(def);
        break;
      case 'escape':
        if (escape !== undefined) throw conflicting(def);
        escape = defString(def);
        break;
      case 'force_quote':
        if (forceQuote) throw conflicting(def);
        forceQuote = def.arg && 'A_Star' in def.arg ? '*' : defColumnList(def);
        break;
      case 'force_not_null':
        if (forceNotNull) throw conflicting(def);
        forceNotNull = defColumnList(def);
        break;
      case 'force_null':
        if (forceNull) throw conflicting(def);
        forceNull = defColumnList(def);
        break;
      case 'encoding': {
        if (encoding !== undefined) throw conflicting(def);
        const name = defString(def);
        encoding = name.toLowerCase().replace(/[^a-z0-9]/g, '');
        if (!utf8Names.has(encoding) && !otherEncodingNames.has(encoding)) {
          throw new PgError({ code: SqlState.invalidParameterValue, message: `argument to option "encoding" must be a valid encoding name`, position: positionOf(def) });
        }
        if (!utf8Names.has(encoding)) {
          throw new PgError({
            code: SqlState.featureNotSupported,
            message: `COPY with ENCODING "${name}" is not supported`,
            hint: 'send the data in UTF8',
          });
        }
        break;
      }
      default:
        throw syntaxError(`option "${def.defname}" not recognized`, def);
    }
  }

  const csv = format === 'csv';
  const binary = format === 'binary';
  const notSupported = (message: string) => new PgError({ code: SqlState.featureNotSupported, message });
  const invalid = (message: string) => new PgError({ code: SqlState.invalidParameterValue, message });
  if (binary && delimiter !== undefined) throw syntaxError('cannot specify DELIMITER in BINARY mode');
  if (binary && nullString !== undefined) throw syntaxError('cannot specify NULL in BINARY mode');
  delimiter ??= csv ? ',' : '\t';
  nullString ??= csv ? '' : '\\N';
  if (Buffer.byteLength(delimiter) !== 1) throw notSupported('COPY delimiter must be a single one-byte character');
  if (delimiter === '\r' || delimiter === '\n') throw invalid('COPY delimiter cannot be newline or carriage return');
  if (nullString.includes('\r') || nullString.includes('\n')) throw invalid('COPY null representation cannot use newline or carriage return');
  if (!csv && textDelimiterForbidden.includes(delimiter)) throw invalid(`COPY delimiter cannot be "${delimiter}"`);
  if (binary && header) throw notSupported('cannot specify HEADER in BINARY mode');
  if (!csv && quote !== undefined) throw notSupported('COPY quote available only in CSV mode');
  const quoteChar = quote ?? '"';
  if (csv && Buffer.byteLength(quoteChar) !== 1) throw notSupported('COPY quote must be a single one-byte character');
  if (csv && delimiter === quoteChar) throw invalid('COPY delimiter and quote must be different');
  if (!csv && escape !== undefined) throw notSupported('COPY escape available only in CSV mode');
  const escapeChar = escape ?? quoteChar;
  if (csv && Buffer.byteLength(escapeChar) !== 1) throw notSupported('COPY escape must be a single one-byte character');
  if (!csv && forceQuote) throw notSupported('COPY force quote available only in CSV mode');
  if (headerMatch && direction === 'to') throw syntaxError('cannot use "match" with HEADER in COPY TO');
  if (forceQuote && direction === 'from') throw notSupported('COPY force quote only available using COPY TO');
  if (!csv && forceNotNull) throw notSupported('COPY force not null available only in CSV mode');
  if (forceNotNull && direction === 'to') throw notSupported('COPY force not null only available using COPY FROM');
  if (!csv && forceNull) throw notSupported('COPY force null available only in CSV mode');
  if (forceNull && direction === 'to') throw notSupported('COPY force null only available using COPY FROM');
  if (nullString.includes(delimiter)) throw notSupported('COPY delimiter must not appear in the NULL specification');
  if (csv && nullString.includes(quoteChar)) throw notSupported('CSV quote character must not appear in the NULL specification');

  const result: CopyFormat = { format, delimiter, quote: quoteChar, escape: escapeChar, nullString, header };
  if (headerMatch) result.headerMatch = true;
  if (forceNotNull && forceNotNull.length > 0) result.forceNotNull = forceNotNull;
  if (forceNull && forceNull.length > 0) result.forceNull = forceNull;
  if (encoding !== undefined) result.encoding = 'UTF8';
  if (forceQuote) result.forceQuote = forceQuote;
  return result;
}

// ---------------------------------------------------------------------------------------------------------------
// Splitter

const LF = 0x0a;
const CR = 0x0d;
const BACKSLASH = 0x5c;
const DOT = 0x2e;

// Line endings, settled by the first line as PostgreSQL does
const EOL_UNKNOWN = 0;
const EOL_NL = 1;
const EOL_CR = 2;
const EOL_CRNL = 3;

// Where the line scanner stands when a chunk ends: every state but NORMAL waits for one byte of lookahead
const NORMAL = 0;
const AFTER_BACKSLASH = 1;
const AFTER_CR = 2;
const MARKER_DOT = 3; // saw \.
const MARKER_CR = 4; // saw \.\r with \r\n line endings

const displayLimit = 100; // PostgreSQL's MAX_COPY_DATA_DISPLAY

/**
 * Cuts the data of one COPY FROM STDIN (text or CSV) into rows and decodes one field of each. Rows that lie within
 * one pushed chunk are subarrays of it: the caller must not reuse a chunk's memory while it holds the rows.
 */
export class CopyRowSplitter {
  /** The header line as received (with its terminator) once it has been read: a caller may forward it to every node. */
  headerLine: Buffer | null = null;

  private readonly csv: boolean;
  private readonly delim: number;
  private readonly quote: number;
  /** The escape byte inside quotes, or -1 when it is the quote itself (then doubling is the only escape). */
  private readonly scanEscape: number;
  private readonly fieldEscape: number;
  private readonly nullBytes: Buffer;
  private readonly forceNotNullKey: boolean;
  private readonly forceNullKey: boolean;
  private readonly columnNames: readonly string[] | undefined;
  private readonly table: string | undefined;

  private eol = EOL_UNKNOWN;
  private state = NORMAL;
  private inQuote = false;
  private lastWasEscape = false;
  private atLineStart = true;
  /** The line holds a backslash (text) or a quote (CSV): its fields need the byte-wise parse. */
  private lineSpecial = false;
  /** Offset in the line of the backslash that began an end-of-data marker. */
  private markerAt = -1;
  private lineIsMarker = false;
  private terminatorLength = 0;
  /** PostgreSQL's cur_lineno: one per line read, plus CSV's quoted newlines. */
  private lineNo = 1;
  private rowLine = 1;
  private headerPending: boolean;
  private ended = false;
  private failure: unknown = null;

  /** The current row's bytes from earlier chunks. */
  private parts: Buffer[] = [];
  private partsLength = 0;

  // Next position of each special byte in the current chunk (its length when there is none): each indexOf
  // runs once per occurrence, not once per line.
  private nextLF = -1;
  private nextCR = -1;
  private nextBackslash = -1;
  private nextQuote = -1;
  private nextEscape = -1;

  constructor(
    private readonly format: CopyFormat,
    private readonly keyField: number,
    private readonly columnCount: number,
    options: CopyRowSplitterOptions = {},
  ) {
    if (format.format !== 'text' && format.format !== 'csv') {
      throw new PgError({
        code: SqlState.featureNotSupported,
        message: `COPY FROM in ${String(format.format)} format is not supported for a distributed table`,
        hint: 'use FORMAT text or FORMAT csv',
      });
    }
    if (!Number.isInteger(columnCount) || columnCount < 1 || !Number.isInteger(keyField) || keyField < 0 || keyField >= columnCount) {
      throw new RangeError(`key field ${keyField} is not one of ${columnCount} columns`);
    }
    this.csv = format.format === 'csv';
    const byte = (value: string, what: string) => {
      const bytes = Buffer.from(value, 'utf8');
      if (bytes.length !== 1) throw new RangeError(`COPY ${what} must be a single one-byte character`);
      return bytes[0];
    };
    this.delim = byte(format.delimiter, 'delimiter');
    this.quote = this.csv ? byte(format.quote, 'quote') : -1;
    this.fieldEscape = this.csv ? byte(format.escape, 'escape') : -1;
    this.scanEscape = this.fieldEscape === this.quote ? -1 : this.fieldEscape;
    this.nullBytes = Buffer.from(format.nullString, 'utf8');
    this.columnNames = options.columnNames;
    this.table = options.table;
    this.headerPending = format.header;
    const forced = (format.forceNotNull?.length ?? 0) > 0 || (format.forceNull?.length ?? 0) > 0;
    if ((forced || format.headerMatch) && !options.columnNames) {
      throw new TypeError('FORCE_NULL, FORCE_NOT_NULL and HEADER MATCH need the column names');
    }
    if (options.columnNames && options.columnNames.length !== columnCount) {
      throw new RangeError(`${options.columnNames.length} column names for ${columnCount} columns`);
    }
    const keyName = options.columnNames?.[keyField];
    this.forceNotNullKey = this.csv && keyName !== undefined && (format.forceNotNull?.includes(keyName) ?? false);
    this.forceNullKey = this.csv && keyName !== undefined && (format.forceNull?.includes(keyName) ?? false);
  }

  /** Feeds one CopyData payload; returns the rows it completes. After an error every call throws it again. */
  push(chunk: Buffer): CopyRow[] {
    if (this.failure) throw this.failure;
    if (this.ended || chunk.length === 0) return [];
    try {
      return this.take(chunk);
    } catch (error) {
      this.failure = error;
      throw error;
    }
  }

  /** At CopyDone: the row left without a line terminator, if any. */
  finish(): CopyRow[] {
    if (this.failure) throw this.failure;
    if (this.ended) return [];
    try {
      return this.end();
    } catch (error) {
      this.failure = error;
      throw error;
    }
  }

  private take(chunk: Buffer): CopyRow[] {
    const rows: CopyRow[] = [];
    this.nextLF = this.nextCR = this.nextBackslash = this.nextQuote = this.nextEscape = -1;
    let rowStart = 0;
    while (rowStart < chunk.length) {
      const end = this.csv ? this.scanCsv(chunk, rowStart, rowStart) : this.scanText(chunk, rowStart, rowStart);
      if (end < 0) break;
      this.completeLine(chunk, rowStart, end, rows);
      if (this.ended) return rows;
      rowStart = end;
    }
    if (rowStart < chunk.length) {
      this.parts.push(chunk.subarray(rowStart));
      this.partsLength += chunk.length - rowStart;
    }
    return rows;
  }

  private end(): CopyRow[] {
    const rows: CopyRow[] = [];
    // What PostgreSQL does when the byte it looks ahead for is the end of the data
    for (;;) {
      const state = this.state;
      if (state === NORMAL || state === AFTER_BACKSLASH) break; // a lone backslash at the end is data
      if (state === AFTER_CR) {
        this.state = NORMAL;
        if (this.eol === EOL_CRNL) throw this.carriageReturnError();
        this.eol = EOL_CR;
        this.terminatorLength = 1;
        break;
      }
      if (!this.csv) throw this.lineError('end-of-copy marker corrupt');
      // in CSV an unfinished marker is data after all
      this.state = NORMAL;
      this.replayAfterFalseMarker(state);
    }
    this.state = NORMAL;
    if (this.partsLength > 0) {
      const line = this.parts.length === 1 ? this.parts[0] : Buffer.concat(this.parts, this.partsLength);
      this.parts = [];
      this.partsLength = 0;
      this.handleLine(line, rows);
    } else if (this.headerPending) {
      // PostgreSQL reads the missing header line as an empty one, and HEADER MATCH checks even that
      this.headerPending = false;
      if (this.format.headerMatch) this.matchHeader(Buffer.alloc(0), 0);
    }
    this.ended = true;
    return rows;
  }

  private completeLine(chunk: Buffer, rowStart: number, end: number, rows: CopyRow[]): void {
    let line: Buffer;
    if (this.partsLength === 0) line = chunk.subarray(rowStart, end);
    else {
      this.parts.push(chunk.subarray(0, end));
      line = Buffer.concat(this.parts, this.partsLength + end);
      this.parts = [];
      this.partsLength = 0;
    }
    this.handleLine(line, rows);
  }

  private handleLine(line: Buffer, rows: CopyRow[]): void {
    const marker = this.lineIsMarker;
    const contentEnd = marker ? this.markerAt : line.length - this.terminatorLength;
    const raw = marker ? line.subarray(0, contentEnd) : line;
    if (this.headerPending) {
      this.headerPending = false;
      this.headerLine = raw;
      if (this.format.headerMatch) this.matchHeader(line, contentEnd);
    } else if (!(marker && contentEnd === 0)) {
      rows.push({ raw, key: this.keyOf(line, contentEnd), line: this.rowLine });
    }
    if (marker) this.ended = true;
    this.lineNo++;
    this.rowLine = this.lineNo;
    this.atLineStart = true;
    this.inQuote = false;
    this.lastWasEscape = false;
    this.lineSpecial = false;
    this.lineIsMarker = false;
    this.terminatorLength = 0;
    this.markerAt = -1;
  }

  // -------------------------------------------------------------------------------------------------------------
  // Finding the end of a line. Returns the offset just past it in `buf`, or -1 when `buf` ends first.

  private scanText(buf: Buffer, pos: number, rowStart: number): number {
    const length = buf.length;
    while (pos < length) {
      switch (this.state) {
        case NORMAL: {
          let lf = this.nextLF;
          if (lf < pos) lf = this.nextLF = indexOrLength(buf, LF, pos);
          let cr = this.nextCR;
          if (cr < pos) cr = this.nextCR = indexOrLength(buf, CR, pos);
          let bs = this.nextBackslash;
          if (bs < pos) bs = this.nextBackslash = indexOrLength(buf, BACKSLASH, pos);
          const at = lf < cr ? (lf < bs ? lf : bs) : cr < bs ? cr : bs;
          if (at >= length) return -1;
          pos = at + 1;
          const c = buf[at];
          if (c === LF) {
            if (this.eol === EOL_CR || this.eol === EOL_CRNL) throw this.newlineError();
            this.eol = EOL_NL;
            this.terminatorLength = 1;
            return pos;
          }
          if (c === CR) {
            if (this.eol === EOL_NL) throw this.carriageReturnError();
            if (this.eol === EOL_CR) {
              this.terminatorLength = 1;
              return pos;
            }
            this.state = AFTER_CR;
            break;
          }
          this.lineSpecial = true;
          this.markerAt = this.partsLength + at - rowStart;
          this.state = AFTER_BACKSLASH;
          break;
        }
        case AFTER_BACKSLASH:
          // whatever follows a backslash is data, a newline too; only \. is special
          this.state = buf[pos++] === DOT ? MARKER_DOT : NORMAL;
          break;
        case AFTER_CR:
          return this.afterCarriageReturn(buf, pos);
        case MARKER_DOT: {
          const c = buf[pos++];
          if (this.eol === EOL_CRNL) {
            if (c === LF) throw this.lineError('end-of-copy marker does not match previous newline style');
            if (c !== CR) throw this.lineError('end-of-copy marker corrupt');
            this.state = MARKER_CR;
            break;
          }
          return this.markerEnd(c, pos);
        }
        case MARKER_CR:
          return this.markerEnd(buf[pos++], pos);
      }
    }
    return -1;
  }

  private scanCsv(buf: Buffer, pos: number, rowStart: number): number {
    const length = buf.length;
    while (pos < length) {
      switch (this.state) {
        case NORMAL: {
          let at = pos;
          // a byte right after an escape, or a line's first byte, must be looked at on its own
          if (!this.atLineStart && !this.lastWasEscape) {
            let lf = this.nextLF;
            if (lf < pos) lf = this.nextLF = indexOrLength(buf, LF, pos);
            let cr = this.nextCR;
            if (cr < pos) cr = this.nextCR = indexOrLength(buf, CR, pos);
            let q = this.nextQuote;
            if (q < pos) q = this.nextQuote = indexOrLength(buf, this.quote, pos);
            at = lf < cr ? (lf < q ? lf : q) : cr < q ? cr : q;
            if (this.inQuote && this.scanEscape >= 0) {
              let e = this.nextEscape;
              if (e < pos) e = this.nextEscape = indexOrLength(buf, this.scanEscape, pos);
              if (e < at) at = e;
            }
            if (at >= length) return -1;
          }
          pos = at + 1;
          if (this.csvByte(buf[at], this.partsLength + at - rowStart)) return pos;
          break;
        }
        case AFTER_BACKSLASH:
          // a backslash first on a line: \. may end the data, anything else is read as usual
          if (buf[pos] === DOT) {
            pos++;
            this.state = MARKER_DOT;
          } else this.state = NORMAL;
          break;
        case AFTER_CR:
          return this.afterCarriageReturn(buf, pos);
        case MARKER_DOT: {
          const c = buf[pos];
          if (this.eol === EOL_CRNL) {
            if (c !== CR) {
              this.state = NORMAL;
              this.replayAfterFalseMarker(MARKER_DOT);
              break;
            }
            pos++;
            this.state = MARKER_CR;
            break;
          }
          if (c !== CR && c !== LF) {
            this.state = NORMAL;
            this.replayAfterFalseMarker(MARKER_DOT);
            break;
          }
          return this.markerEnd(c, pos + 1);
        }
        case MARKER_CR: {
          const c = buf[pos];
          if (c !== CR && c !== LF) {
            this.state = NORMAL;
            this.replayAfterFalseMarker(MARKER_CR);
            break;
          }
          return this.markerEnd(c, pos + 1);
        }
      }
    }
    return -1;
  }

  /** One CSV byte that may change the state; true when it ends the line. */
  private csvByte(c: number, at: number): boolean {
    if (this.inQuote && c === this.scanEscape) this.lastWasEscape = !this.lastWasEscape;
    if (c === this.quote) {
      this.lineSpecial = true;
      if (!this.lastWasEscape) this.inQuote = !this.inQuote;
    }
    if (c !== this.scanEscape) this.lastWasEscape = false;
    // PostgreSQL counts quoted newlines of the settled style (\r while none is settled)
    if (this.inQuote && c === (this.eol === EOL_NL ? LF : CR)) this.lineNo++;
    if (c === CR && !this.inQuote) {
      if (this.eol === EOL_NL) throw this.carriageReturnError();
      if (this.eol === EOL_CR) {
        this.terminatorLength = 1;
        return true;
      }
      this.state = AFTER_CR;
      return false;
    }
    if (c === LF && !this.inQuote) {
      if (this.eol === EOL_CR || this.eol === EOL_CRNL) throw this.newlineError();
      this.eol = EOL_NL;
      this.terminatorLength = 1;
      return true;
    }
    if (c === BACKSLASH && this.atLineStart) {
      this.markerAt = at;
      this.state = AFTER_BACKSLASH;
    }
    this.atLineStart = false;
    return false;
  }

  /**
   * CSV reads a \. that turns out not to end the data as data, from the byte after the backslash (PostgreSQL
   * rewinds its input there); the bytes it read ahead are known, so they are replayed instead.
   */
  private replayAfterFalseMarker(state: number): void {
    // neither byte can complete a line: \r is read ahead only with \r\n endings, where it just begins one
    this.atLineStart = false;
    this.csvByte(DOT, -1);
    if (state === MARKER_CR) this.csvByte(CR, -1);
  }

  private afterCarriageReturn(buf: Buffer, pos: number): number {
    this.state = NORMAL;
    if (buf[pos] === LF) {
      this.eol = EOL_CRNL;
      this.terminatorLength = 2;
      return pos + 1;
    }
    if (this.eol === EOL_CRNL) throw this.carriageReturnError();
    // the first line ended in a lone \r: so must every line
    this.eol = EOL_CR;
    this.terminatorLength = 1;
    return pos;
  }

  private markerEnd(c: number, pos: number): number {
    if (c !== CR && c !== LF) throw this.lineError('end-of-copy marker corrupt');
    if ((this.eol === EOL_NL && c !== LF) || (this.eol === EOL_CRNL && c !== LF) || (this.eol === EOL_CR && c !== CR)) {
      throw this.lineError('end-of-copy marker does not match previous newline style');
    }
    this.state = NORMAL;
    this.lineIsMarker = true;
    return pos;
  }

  // -------------------------------------------------------------------------------------------------------------
  // Fields

  /** Checks the line's field count and decodes the key field, as NextCopyFrom does. */
  private keyOf(line: Buffer, end: number): string | null {
    const keyField = this.keyField;
    const columns = this.columnCount;
    let key: string | null = null;
    let field = 0;
    let p = 0;
    if (!this.lineSpecial) {
      // no escapes or quotes: fields are the bytes between delimiters (a terminator is never a delimiter)
      const delim = this.delim;
      for (;;) {
        let d = line.indexOf(delim, p);
        if (d < 0 || d >= end) d = end;
        if (field === keyField) key = this.plainField(line, p, d);
        field++;
        if (d === end) break;
        if (field === columns) throw this.fieldError(line, end, 'extra data after last expected column');
        p = d + 1;
        if (field > keyField && end - p < (columns - field) * 32) {
          // past the key only the count matters; over short fields a plain loop beats a call per field
          for (let i = p; i < end; i++) {
            if (line[i] !== delim) continue;
            if (++field === columns) throw this.fieldError(line, end, 'extra data after last expected column');
          }
          field++;
          break;
        }
      }
    } else {
      for (;;) {
        const found = this.csv ? this.csvField(line, p, end, field === keyField) : this.textField(line, p, end, field === keyField);
        if (field === keyField) key = this.value;
        field++;
        if (!found) break;
        p = this.fieldNext;
        if (field === columns) {
          // PostgreSQL splits the whole line before it counts: an unterminated quote further on is the error
          if (this.csv) while (this.csvField(line, p, end, false)) p = this.fieldNext;
          throw this.fieldError(line, end, 'extra data after last expected column');
        }
      }
    }
    if (field < columns) {
      const name = this.columnNames ? `"${this.columnNames[field]}"` : `number ${field + 1}`;
      throw this.fieldError(line, end, `missing data for column ${name}`);
    }
    if (this.csv) {
      if (key === null && this.forceNotNullKey) return this.format.nullString;
      if (key !== null && this.forceNullKey && key === this.format.nullString) return null;
    }
    return key;
  }

  private plainField(line: Buffer, start: number, stop: number): string | null {
    const nullBytes = this.nullBytes;
    if (stop - start === nullBytes.length && line.compare(nullBytes, 0, nullBytes.length, start, stop) === 0) return null;
    this.checkEncoding(line, start, stop);
    return line.toString('utf8', start, stop);
  }

  // Results of textField/csvField, kept here rather than in an object per field
  private value: string | null = null;
  private fieldNext = 0;

  /** One text-format field from `start`; true when a delimiter ends it (the next field starts at fieldNext). */
  private textField(line: Buffer, start: number, end: number, decode: boolean): boolean {
    const delim = this.delim;
    let p = start;
    let rawEnd = end;
    let found = false;
    while (p < end) {
      const c = line[p];
      if (c === delim) {
        rawEnd = p;
        found = true;
        break;
      }
      p++;
      if (c !== BACKSLASH) continue;
      if (p >= end) {
        rawEnd = p - 1; // a backslash ending the line is dropped
        break;
      }
      const e = line[p++];
      if (e >= 0x30 && e <= 0x37) {
        if (p < end && isOctal(line[p])) {
          p++;
          if (p < end && isOctal(line[p])) p++;
        }
      } else if (e === 0x78 && p < end && isHex(line[p])) {
        p++;
        if (p < end && isHex(line[p])) p++;
      }
    }
    this.fieldNext = p + 1;
    if (decode) {
      const nullBytes = this.nullBytes;
      // the null string is matched against the field as written, before its escapes are read
      if (rawEnd - start === nullBytes.length && line.compare(nullBytes, 0, nullBytes.length, start, rawEnd) === 0) this.value = null;
      else this.value = this.decodeText(line, start, rawEnd, end);
    }
    return found;
  }

  private decodeText(line: Buffer, start: number, stop: number, end: number): string {
    this.checkEncoding(line, start, stop);
    const out = Buffer.allocUnsafe(stop - start);
    let n = 0;
    let highBit = false;
    let p = start;
    while (p < stop) {
      let c = line[p++];
      if (c === BACKSLASH && p < stop) {
        c = line[p++];
        if (c >= 0x30 && c <= 0x37) {
          let value = c - 0x30;
          if (p < stop && isOctal(line[p])) {
            value = (value << 3) + line[p++] - 0x30;
            if (p < stop && isOctal(line[p])) value = (value << 3) + line[p++] - 0x30;
          }
          c = value & 0xff;
          if (c === 0 || c >= 0x80) highBit = true;
        } else if (c === 0x78) {
          if (p < stop && isHex(line[p])) {
            let value = hexValue(line[p++]);
            if (p < stop && isHex(line[p])) value = (value << 4) + hexValue(line[p++]);
            c = value & 0xff;
            if (c === 0 || c >= 0x80) highBit = true;
          }
        } else if (c === 0x62) c = 0x08;
        else if (c === 0x66) c = 0x0c;
        else if (c === 0x6e) c = LF;
        else if (c === 0x72) c = CR;
        else if (c === 0x74) c = 0x09;
        else if (c === 0x76) c = 0x0b;
      }
      out[n++] = c;
    }
    // escapes can spell bytes that are not UTF-8; PostgreSQL checks the field again then
    if (highBit) this.checkEncoding(out, 0, n, line, end);
    return out.toString('utf8', 0, n);
  }

  /** One CSV field from `start`, as CopyReadAttributesCSV reads it; true when a delimiter ends it. */
  private csvField(line: Buffer, start: number, end: number, decode: boolean): boolean {
    const delim = this.delim;
    const quote = this.quote;
    const escape = this.fieldEscape;
    const out = decode ? Buffer.allocUnsafe(end - start) : null;
    let n = 0;
    let p = start;
    let rawEnd = start;
    let found = false;
    let sawQuote = false;
    outer: for (;;) {
      for (;;) {
        rawEnd = p;
        if (p >= end) break outer;
        const c = line[p++];
        if (c === delim) {
          found = true;
          break outer;
        }
        if (c === quote) {
          sawQuote = true;
          break;
        }
        if (out) out[n++] = c;
      }
      for (;;) {
        if (p >= end) throw this.fieldError(line, end, 'unterminated CSV quoted field');
        const c = line[p++];
        if (c === escape && p < end) {
          const next = line[p];
          if (next === escape || next === quote) {
            if (out) out[n++] = next;
            p++;
            continue;
          }
        }
        if (c === quote) break;
        if (out) out[n++] = c;
      }
    }
    this.fieldNext = p;
    if (out) {
      const nullBytes = this.nullBytes;
      if (!sawQuote && rawEnd - start === nullBytes.length && line.compare(nullBytes, 0, nullBytes.length, start, rawEnd) === 0) this.value = null;
      else {
        this.checkEncoding(line, start, rawEnd);
        this.value = out.toString('utf8', 0, n);
      }
    }
    return found;
  }

  private matchHeader(line: Buffer, end: number): void {
    const names = this.columnNames!;
    const values: (string | null)[] = [];
    this.lineSpecial = true; // the byte-wise parse serves every line
    for (let p = 0; ; ) {
      const found = this.csv ? this.csvField(line, p, end, true) : this.textField(line, p, end, true);
      values.push(this.value);
      if (!found) break;
      p = this.fieldNext;
    }
    if (values.length !== names.length) {
      throw this.fieldError(line, end, `wrong number of fields in header line: got ${values.length}, expected ${names.length}`);
    }
    values.forEach((value, i) => {
      if (value === null) {
        throw this.fieldError(line, end, `column name mismatch in header line field ${i + 1}: got null value ("${this.format.nullString}"), expected "${names[i]}"`);
      }
      if (value !== names[i]) throw this.fieldError(line, end, `column name mismatch in header line field ${i + 1}: got "${value}", expected "${names[i]}"`);
    });
  }

  /**
   * PostgreSQL refuses bytes that are not UTF-8 (and NUL) anywhere in the data; the key is checked here so that
   * it is never routed by a mangled value, the other fields by the node that receives them.
   */
  private checkEncoding(buf: Buffer, start: number, stop: number, decodedFrom: Buffer | null = null, lineEnd = 0): void {
    let i = start;
    while (i < stop) {
      const c = buf[i];
      if (c === 0 || c >= 0x80) break;
      i++;
    }
    if (i === stop) return;
    if (buf[i] !== 0 && isUtf8(buf.subarray(i, stop)) && buf.subarray(i, stop).indexOf(0) < 0) return;
    const bad = firstInvalidUtf8(buf, i, stop);
    // like report_invalid_encoding: the bad character's bytes, which for input bytes may run on past the field
    const count = Math.min(utf8Length(buf[bad]), (decodedFrom ? stop : buf.length) - bad, 8);
    const bytes = Array.from(buf.subarray(bad, bad + count), (b) => `0x${b.toString(16).padStart(2, '0')}`).join(' ');
    throw new CopyDataError(
      // PostgreSQL meets bad input bytes while reading the line, bad escaped ones after: only then can it show the line
      { code: characterNotInRepertoire, message: `invalid byte sequence for encoding "UTF8": ${bytes}`, detail: this.context(decodedFrom, lineEnd) },
      this.lineNo,
    );
  }

  // -------------------------------------------------------------------------------------------------------------
  // Errors, worded as PostgreSQL's; the detail carries what PostgreSQL puts in its CONTEXT line

  private context(line: Buffer | null, end: number): string {
    const where = `COPY ${this.table ?? 'FROM STDIN'}, line ${this.lineNo}`;
    if (!line) return where;
    let stop = end;
    let suffix = '';
    if (end > displayLimit) {
      stop = displayLimit;
      while (stop > 0 && (line[stop] & 0xc0) === 0x80) stop--;
      suffix = '...';
    }
    return `${where}: "${line.toString('utf8', 0, stop)}${suffix}"`;
  }

  private lineError(message: string, hint?: string): CopyDataError {
    return new CopyDataError({ code: badCopyFileFormat, message, hint, detail: this.context(null, 0) }, this.lineNo);
  }

  private fieldError(line: Buffer, end: number, message: string): CopyDataError {
    return new CopyDataError({ code: badCopyFileFormat, message, detail: this.context(line, end) }, this.lineNo);
  }

  private carriageReturnError(): CopyDataError {
    return this.csv
      ? this.lineError('unquoted carriage return found in data', 'Use quoted CSV field to represent carriage return.')
      : this.lineError('literal carriage return found in data', 'Use "\\r" to represent carriage return.');
  }

  private newlineError(): CopyDataError {
    return this.csv
      ? this.lineError('unquoted newline found in data', 'Use quoted CSV field to represent newline.')
      : this.lineError('literal newline found in data', 'Use "\\n" to represent newline.');
  }
}

function indexOrLength(buf: Buffer, byte: number, from: number): number {
  const at = buf.indexOf(byte, from);
  return at < 0 ? buf.length : at;
}

function isOctal(c: number): boolean {
  return c >= 0x30 && c <= 0x37;
}

function isHex(c: number): boolean {
  return (c >= 0x30 && c <= 0x39) || (c >= 0x61 && c <= 0x66) || (c >= 0x41 && c <= 0x46);
}

function hexValue(c: number): number {
  return c <= 0x39 ? c - 0x30 : (c | 0x20) - 0x61 + 10;
}

/** PostgreSQL's pg_utf_mblen: the length a lead byte announces. */
function utf8Length(c: number): number {
  if ((c & 0x80) === 0) return 1;
  if ((c & 0xe0) === 0xc0) return 2;
  if ((c & 0xf0) === 0xe0) return 3;
  if ((c & 0xf8) === 0xf0) return 4;
  return 1;
}

/** Offset of the first byte that does not begin a valid UTF-8 character (NUL included), as pg_utf8_verifystr finds it. */
function firstInvalidUtf8(buf: Buffer, start: number, stop: number): number {
  let i = start;
  while (i < stop) {
    const c = buf[i];
    if (c === 0) return i;
    if (c < 0x80) {
      i++;
      continue;
    }
    const length = utf8Length(c);
    if (length === 1 || i + length > stop) return i;
    const c1 = buf[i + 1];
    let ok: boolean;
    switch (length) {
      case 2:
        ok = c >= 0xc2 && (c1 & 0xc0) === 0x80;
        break;
      case 3:
        ok =
          (c1 & 0xc0) === 0x80 &&
          (buf[i + 2] & 0xc0) === 0x80 &&
          (c !== 0xe0 || c1 >= 0xa0) &&
          (c !== 0xed || c1 <= 0x9f);
        break;
      default:
        ok =
          c <= 0xf4 &&
          (c1 & 0xc0) === 0x80 &&
          (buf[i + 2] & 0xc0) === 0x80 &&
          (buf[i + 3] & 0xc0) === 0x80 &&
          (c !== 0xf0 || c1 >= 0x90) &&
          (c !== 0xf4 || c1 <= 0x8f);
    }
    if (!ok) return i;
    i += length;
  }
  return stop;
}
