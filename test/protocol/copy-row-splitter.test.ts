// The splitter decides which node receives each row of a COPY into a distributed table, so it must cut rows and
// read the key exactly as PostgreSQL does: each rule is checked by hand under every chunking, then against a real
// node, both on the node's own COPY TO output and on awkward input the node itself parses with COPY FROM.

import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { serialize } from 'pg-protocol';
import type { Client } from 'pg';
import { loadParser, parseSql } from '../../src/planner/sql-parser';
import { PgError } from '../../src/protocol/errors';
import { CopyDataError, CopyRowSplitter, copyFormatFromOptions, type CopyFormat, type CopyRowSplitterOptions } from '../../src/protocol/copy-row-splitter';
import { dataRowValues, errorFields, RawClient } from '../support/raw-client';
import { rowsOf, startTestCluster, type TestCluster } from '../support/test-cluster';

before(() => loadParser());

function optionsOf(sql: string): unknown[] | undefined {
  const parsed = parseSql(sql);
  if (!parsed.ok) throw parsed.error;
  return (parsed.statements[0].node as unknown as { CopyStmt: { options?: unknown[] } }).CopyStmt.options;
}

/** The format of `copy t from stdin <options>`. */
function formatOf(options = ''): CopyFormat {
  return copyFormatFromOptions(optionsOf(`copy t from stdin ${options}`));
}

function seeded(seed: number): () => number {
  return () => ((seed = (seed * 1103515245 + 12345) & 0x7fffffff) / 0x80000000);
}

interface Outcome {
  rows: { raw: string; key: string | null; line: number }[];
  header: string | null;
  error?: { code: string; message: string; line: number; detail?: string; hint?: string };
}

function runChunks(format: CopyFormat, key: number, columns: number, chunks: Buffer[], options?: CopyRowSplitterOptions): Outcome {
  const splitter = new CopyRowSplitter(format, key, columns, options);
  const rows: Outcome['rows'] = [];
  const take = (list: { raw: Buffer; key: string | null; line: number }[]) => {
    for (const r of list) rows.push({ raw: r.raw.toString('latin1'), key: r.key, line: r.line });
  };
  try {
    for (const chunk of chunks) take(splitter.push(chunk));
    take(splitter.finish());
  } catch (error) {
    if (!(error instanceof CopyDataError)) throw error;
    return { rows, header: null, error: { code: error.code, message: error.message, line: error.line, detail: error.detail, hint: error.hint } };
  }
  return { rows, header: splitter.headerLine ? splitter.headerLine.toString('latin1') : null };
}

/** A random cutting of `input` into pieces of 1..maxPiece bytes. */
function randomChunks(input: Buffer, random: () => number, maxPiece: number): Buffer[] {
  const chunks: Buffer[] = [];
  for (let offset = 0; offset < input.length; ) {
    const size = 1 + Math.floor(random() * maxPiece);
    chunks.push(input.subarray(offset, offset + size));
    offset += size;
  }
  return chunks;
}

/**
 * Splits `input` whole, cut in two at every offset, byte by byte and in random chunkings, requiring the same
 * outcome every time, and returns it. After an error only the error is compared: a push that fails loses the
 * rows it had completed.
 */
function split(format: CopyFormat, key: number, columns: number, input: string | Buffer, options?: CopyRowSplitterOptions): Outcome {
  const bytes = typeof input === 'string' ? Buffer.from(input, 'utf8') : input;
  const whole = runChunks(format, key, columns, [bytes], options);
  const comparable = (o: Outcome) => (o.error ? { error: o.error } : o);
  const expected = comparable(whole);
  if (!whole.error) {
    // rows are the input's own bytes, in order; only a header line, an end marker and what follows it are left out
    const kept = (whole.header ?? '') + whole.rows.map((r) => r.raw).join('');
    assert.ok(bytes.toString('latin1').startsWith(kept), 'rows are not the input bytes');
  }
  for (let cut = 0; cut <= bytes.length; cut++) {
    assert.deepEqual(comparable(runChunks(format, key, columns, [bytes.subarray(0, cut), bytes.subarray(cut)], options)), expected, `cut at ${cut}`);
  }
  assert.deepEqual(comparable(runChunks(format, key, columns, Array.from(bytes, (b) => Buffer.from([b])), options)), expected, 'byte by byte');
  const random = seeded(bytes.length + 17);
  for (let round = 0; round < 20; round++) {
    assert.deepEqual(comparable(runChunks(format, key, columns, randomChunks(bytes, random, 5), options)), expected, `random chunking ${round}`);
  }
  return whole;
}

const keys = (o: Outcome) => {
  assert.equal(o.error, undefined, o.error?.message);
  return o.rows.map((r) => r.key);
};

function errorOf(o: Outcome): NonNullable<Outcome['error']> {
  assert.ok(o.error, `expected an error, got rows ${JSON.stringify(o.rows)}`);
  return o.error;
}

// built before the parser has loaded, from the DefElem nodes libpg-query produces
const text = copyFormatFromOptions(undefined);
const csv = copyFormatFromOptions([{ DefElem: { defname: 'format', arg: { String: { sval: 'csv' } }, location: 19 } }]);

describe('text format', () => {
  test('rows end at \\n; each row keeps its bytes and its line number', () => {
    const o = split(text, 1, 3, '1\ta\tx\n2\tb\ty\n3\tc\tz\n');
    assert.deepEqual(o.rows, [
      { raw: '1\ta\tx\n', key: 'a', line: 1 },
      { raw: '2\tb\ty\n', key: 'b', line: 2 },
      { raw: '3\tc\tz\n', key: 'c', line: 3 },
    ]);
  });

  test('a row within one chunk is a view of it, not a copy', () => {
    const chunk = Buffer.from('1\ta\n2\tb\n');
    const rows = new CopyRowSplitter(text, 0, 2).push(chunk);
    assert.equal(rows.length, 2);
    for (const row of rows) assert.equal(row.raw.buffer, chunk.buffer);
    assert.equal(rows[1].raw.byteOffset, chunk.byteOffset + 4);
  });

  test('backslash escapes are decoded as PostgreSQL decodes them', () => {
    const cases: [string, string][] = [
      ['a\\bb', 'a\bb'],
      ['\\f\\n\\r\\t\\v', '\f\n\r\t\v'],
      ['\\101\\1011\\12\\1x', 'AA1\n\x01x'],
      ['\\x41\\x411\\x4g\\xg', 'AA1\x04gxg'],
      ['\\\\\\q', '\\q'],
      ['a\\\tb', 'a\tb'],
      ['\\303\\251', 'é'],
    ];
    for (const [field, value] of cases) {
      assert.deepEqual(keys(split(text, 0, 2, `${field}\tz\n`)), [value], field);
    }
  });

  test('an escaped newline is data, not a row end', () => {
    const o = split(text, 0, 2, 'a\\\nb\t1\nc\t2\n');
    assert.deepEqual(o.rows, [
      { raw: 'a\\\nb\t1\n', key: 'a\nb', line: 1 },
      { raw: 'c\t2\n', key: 'c', line: 2 },
    ]);
  });

  test('\\N is NULL only when it is the whole field as written', () => {
    assert.deepEqual(keys(split(text, 0, 1, '\\N\n\\\\N\n\\N\\N\nx\\N\n\n')), [null, '\\N', 'NN', 'xN', '']);
    assert.deepEqual(keys(split(formatOf("(null '')"), 0, 2, '\tx\n\\N\tx\n')), [null, 'N']);
    assert.deepEqual(keys(split(formatOf("(null 'nil')"), 0, 1, 'nil\nnil2\n\\N\n')), [null, 'nil2', 'N']);
    // PostgreSQL compares the null string before dropping a backslash that ends the line
    assert.deepEqual(keys(split(text, 0, 1, '\\N\\')), [null]);
  });

  test('a custom delimiter can be escaped, and a hex escape may swallow an upper-case one', () => {
    assert.deepEqual(keys(split(formatOf("(delimiter '|')"), 0, 2, 'a\\|b|c\n')), ['a|b']);
    assert.deepEqual(keys(split(formatOf("(delimiter 'A')"), 0, 2, '\\x4A5A6\n')), ['J5']);
    assert.deepEqual(keys(split(formatOf("(delimiter 'A')"), 1, 2, '\\x4A5A6\n')), ['6']);
  });

  test('a trailing backslash at the end of the data is dropped', () => {
    const o = split(text, 2, 3, '1\t2\tz\\');
    assert.deepEqual(o.rows, [{ raw: '1\t2\tz\\', key: 'z', line: 1 }]);
  });

  test('the last row may lack its newline', () => {
    const o = split(text, 0, 2, 'a\t1\nb\t2');
    assert.deepEqual(o.rows.map((r) => r.raw), ['a\t1\n', 'b\t2']);
  });
});

describe('line endings', () => {
  test('\\r\\n and \\r endings are kept in raw and settled by the first line', () => {
    assert.deepEqual(split(text, 0, 2, 'a\t1\r\nb\t2\r\n').rows.map((r) => [r.raw, r.key]), [['a\t1\r\n', 'a'], ['b\t2\r\n', 'b']]);
    assert.deepEqual(split(text, 0, 2, 'a\t1\rb\t2\r').rows.map((r) => [r.raw, r.key]), [['a\t1\r', 'a'], ['b\t2\r', 'b']]);
    assert.deepEqual(split(csv, 1, 2, 'a,"x\r\ny"\r\nb,2\r\n').rows.map((r) => r.key), ['x\r\ny', '2']);
  });

  test('mixing them is refused at the line where it happens', () => {
    const cases: [CopyFormat, string, string, number, string][] = [
      [text, 'a\t1\r\nb\t2\n', 'literal newline found in data', 2, 'Use "\\n" to represent newline.'],
      [text, 'a\t1\nb\t2\r\n', 'literal carriage return found in data', 2, 'Use "\\r" to represent carriage return.'],
      [text, 'a\t1\rb\t2\r\n', 'literal newline found in data', 3, 'Use "\\n" to represent newline.'],
      [text, 'a\t1\r\nb\r2\r\n', 'literal carriage return found in data', 2, 'Use "\\r" to represent carriage return.'],
      [text, 'a\t1\r\nb\t2\r', 'literal carriage return found in data', 2, 'Use "\\r" to represent carriage return.'],
      [csv, 'a,1\nb,2\r\n', 'unquoted carriage return found in data', 2, 'Use quoted CSV field to represent carriage return.'],
      [csv, 'a,1\r\nb,2\n', 'unquoted newline found in data', 2, 'Use quoted CSV field to represent newline.'],
    ];
    for (const [format, input, message, line, hint] of cases) {
      const error = errorOf(split(format, 0, 2, input));
      assert.deepEqual([error.code, error.message, error.line, error.hint], ['22P04', message, line, hint], JSON.stringify(input));
    }
  });
});

describe('CSV format', () => {
  test('quotes: doubled quotes, quoted delimiters and newlines, quotes inside a field', () => {
    const o = split(csv, 0, 2, '"a""b",1\n"x,y",2\n"multi\nline",3\na"b"c"",4\n"q"r,5\n');
    assert.deepEqual(o.rows.map((r) => [r.key, r.line]), [['a"b', 1], ['x,y', 2], ['multi\nline', 3], ['abc', 5], ['qr', 6]]);
    assert.equal(o.rows[2].raw, '"multi\nline",3\n');
  });

  test('a quoted empty string is a value, an unquoted one is NULL', () => {
    assert.deepEqual(keys(split(csv, 0, 2, '"",1\n,2\n" ",3\n')), ['', null, ' ']);
    assert.deepEqual(keys(split(formatOf("(format csv, null 'N')"), 0, 2, 'N,1\n"N",2\n,3\n')), [null, 'N', '']);
  });

  test('a custom escape escapes quotes and itself inside quotes only', () => {
    const format = formatOf("(format csv, escape '\\')");
    assert.deepEqual(keys(split(format, 0, 2, '"a\\"b",1\n"c\\\\d",2\n"e\\f",3\ng\\h,4\n"i""",5\n')), ['a"b', 'c\\d', 'e\\f', 'g\\h', 'i']);
  });

  test("custom delimiter ';' and quote \"'\"", () => {
    const format = formatOf("(format csv, delimiter ';', quote '''')");
    assert.deepEqual(keys(split(format, 0, 2, "'a;b';1\n'it''s';2\n\"x\";3\n'';4\n;5\n")), ['a;b', "it's", '"x"', '', null]);
  });

  test('FORCE_NOT_NULL and FORCE_NULL apply to the key', () => {
    const options = { columnNames: ['k', 'v'] };
    assert.deepEqual(keys(split(formatOf('(format csv, force_not_null (k))'), 0, 2, ',1\n"",2\n', options)), ['', '']);
    assert.deepEqual(keys(split(formatOf('(format csv, force_null (k))'), 0, 2, ',1\n"",2\n"x",3\n', options)), [null, null, 'x']);
    assert.deepEqual(keys(split(formatOf('(format csv, force_null (v))'), 0, 2, ',1\n"",2\n', options)), [null, '']);
    assert.throws(() => new CopyRowSplitter(formatOf('(format csv, force_null (k))'), 0, 2), TypeError);
  });

  test('an unterminated quote fails at the end of the data, naming the line PostgreSQL names', () => {
    const error = errorOf(split(csv, 0, 3, '1,2,3\n4,5,"6\n7\n8'));
    assert.deepEqual([error.code, error.message, error.line], ['22P04', 'unterminated CSV quoted field', 4]);
    assert.equal(error.detail, 'COPY FROM STDIN, line 4: "4,5,"6\n7\n8"');
  });
});

describe('the end-of-data marker', () => {
  test('text: \\. alone on a line ends the data; what follows is never read', () => {
    const o = split(text, 0, 2, Buffer.concat([Buffer.from('a\t1\n\\.\nb\t2\n'), Buffer.from([0xff, 0x0a])]));
    assert.deepEqual(o.rows.map((r) => r.raw), ['a\t1\n']);
    assert.deepEqual(split(text, 0, 2, 'a\t1\r\n\\.\r\nzzz').rows.map((r) => r.raw), ['a\t1\r\n']);
  });

  test('text: \\. after data ends the row and the data (as PostgreSQL 15 reads it)', () => {
    const o = split(text, 1, 2, 'a\t1\nb\t2\\.\nc\t3\n');
    assert.deepEqual(o.rows.map((r) => [r.raw, r.key]), [['a\t1\n', '1'], ['b\t2', '2']]);
  });

  test('text: a marker cut short or followed by data is corrupt; a mismatched one is refused', () => {
    for (const [input, message, line] of [
      ['a\t1\n\\.', 'end-of-copy marker corrupt', 2],
      ['a\t1\n\\.x\n', 'end-of-copy marker corrupt', 2],
      ['a\t1\r\n\\.\n', 'end-of-copy marker does not match previous newline style', 2],
      ['a\t1\n\\.\r', 'end-of-copy marker does not match previous newline style', 2],
      ['a\t1\r\n\\.\rx', 'end-of-copy marker corrupt', 2],
    ] as const) {
      const error = errorOf(split(text, 0, 2, input));
      assert.deepEqual([error.code, error.message, error.line], ['22P04', message, line], JSON.stringify(input));
    }
  });

  test('CSV: only an unquoted \\. alone on a line ends the data; otherwise it is data', () => {
    assert.deepEqual(split(csv, 0, 2, 'a,1\n\\.\nb,2\n').rows.map((r) => r.raw), ['a,1\n']);
    assert.deepEqual(keys(split(csv, 0, 2, '\\.x,1\n"\\.",2\n\\.,3\n')), ['\\.x', '\\.', '\\.']);
    // with nothing after it, \. is a value, as in PostgreSQL 15
    assert.deepEqual(keys(split(csv, 0, 1, 'a\n\\.')), ['a', '\\.']);
    assert.deepEqual(split(csv, 0, 1, 'a\r\n\\.\r\n').rows.map((r) => r.raw), ['a\r\n']);
  });
});

describe('header line', () => {
  test('the first line is skipped in text and CSV, quoted newlines and all, and kept for the caller', () => {
    const o = split(formatOf('(format csv, header)'), 0, 2, '"a\nb",c\n1,2\n');
    // line 2: until a line ending is settled PostgreSQL counts only quoted \r as a new line
    assert.deepEqual(o.rows, [{ raw: '1,2\n', key: '1', line: 2 }]);
    assert.equal(o.header, '"a\nb",c\n');
    const t = split(formatOf('(header)'), 0, 2, 'a\tb\n1\t2\n');
    assert.deepEqual(t.rows, [{ raw: '1\t2\n', key: '1', line: 2 }]);
    assert.equal(t.header, 'a\tb\n');
    assert.deepEqual(split(formatOf('(header)'), 0, 2, 'a\tb').rows, []);
  });

  test('HEADER MATCH checks the names, with PostgreSQL errors', () => {
    const options = { columnNames: ['a', 'b'] };
    assert.deepEqual(keys(split(formatOf('(format csv, header match)'), 0, 2, 'a,"b"\n1,2\n', options)), ['1']);
    for (const [opts, input, message] of [
      ['(header match)', 'a\n', 'wrong number of fields in header line: got 1, expected 2'],
      ['(header match)', 'a\tc\n', 'column name mismatch in header line field 2: got "c", expected "b"'],
      ['(header match)', '\\N\tb\n', 'column name mismatch in header line field 1: got null value ("\\N"), expected "a"'],
      ['(format csv, header match)', ',b\n', 'column name mismatch in header line field 1: got null value (""), expected "a"'],
      ['(format csv, header match)', '', 'wrong number of fields in header line: got 1, expected 2'],
    ]) {
      const error = errorOf(split(formatOf(opts), 0, 2, input, options));
      assert.deepEqual([error.code, error.message, error.line], ['22P04', message, 1], `${opts} ${JSON.stringify(input)}`);
    }
  });
});

describe('UTF-8', () => {
  test('multi-byte keys come out whole however the chunks cut them', () => {
    const input = 'é\t1\n😀x\t2\n中文\t3\n"€"\t4\n';
    assert.deepEqual(keys(split(text, 0, 2, input)), ['é', '😀x', '中文', '"€"']);
    assert.deepEqual(keys(split(csv, 0, 2, '"é,😀",1\n中,2\n')), ['é,😀', '中']);
  });

  test('a key that is not UTF-8 is refused like PostgreSQL refuses it', () => {
    const cases: [CopyFormat, Buffer, string][] = [
      [text, Buffer.from([0x31, 0xc3, 0x09, 0x32, 0x0a]), '0xc3 0x09'],
      [text, Buffer.from('\\xff\t2\n'), '0xff'],
      [text, Buffer.from('a\\000\t2\n'), '0x00'],
      [csv, Buffer.from([0x22, 0xe2, 0x82, 0x22, 0x2c, 0x32, 0x0a]), '0xe2 0x82 0x22'],
    ];
    for (const [format, input, bytes] of cases) {
      const error = errorOf(split(format, 0, 2, input));
      assert.deepEqual([error.code, error.message], ['22021', `invalid byte sequence for encoding "UTF8": ${bytes}`]);
    }
  });
});

describe('field counts', () => {
  test('a row without its key field, or short of columns, is missing data; a long one has extra data', () => {
    const options = { columnNames: ['a', 'b', 'c'], table: 'items' };
    let error = errorOf(split(text, 2, 3, '1\t2\t3\n4\t5\n', options));
    assert.deepEqual([error.code, error.message, error.line, error.detail], ['22P04', 'missing data for column "c"', 2, 'COPY items, line 2: "4\t5"']);
    error = errorOf(split(text, 0, 3, '1\t2\n', options));
    assert.deepEqual([error.message, error.line], ['missing data for column "c"', 1]);
    error = errorOf(split(csv, 1, 3, '1,2,3\n\n', options));
    assert.deepEqual([error.message, error.line], ['missing data for column "b"', 2]);
    error = errorOf(split(text, 0, 3, '1\t2\t3\t4\n'));
    assert.deepEqual([error.message, error.line], ['extra data after last expected column', 1]);
    error = errorOf(split(csv, 0, 2, '1,"a\nb",c\n'));
    assert.deepEqual([error.message, error.line], ['extra data after last expected column', 1]);
    error = errorOf(split(text, 0, 3, '1\\\t2\t3\n'));
    assert.equal(error.message, 'missing data for column number 3');
    // PostgreSQL reads the whole line before counting: an unterminated quote beyond the last column wins
    error = errorOf(split(csv, 0, 2, '1,2,"3'));
    assert.equal(error.message, 'unterminated CSV quoted field');
  });

  test('after an error every call fails the same way', () => {
    const splitter = new CopyRowSplitter(text, 0, 2);
    assert.throws(() => splitter.push(Buffer.from('1\n')), /missing data/);
    assert.throws(() => splitter.push(Buffer.from('1\t2\n')), /missing data/);
    assert.throws(() => splitter.finish(), /missing data/);
  });

  test('a long row over many small chunks costs time in proportion to its length', () => {
    const field = 'x'.repeat(400_000);
    const input = Buffer.from(`"${field}\n${field}",1\n`);
    const splitter = new CopyRowSplitter(csv, 0, 2);
    const started = Date.now();
    const rows = randomChunks(input, seeded(3), 64).flatMap((c) => splitter.push(c));
    assert.equal(rows.length, 1);
    assert.equal(rows[0].key?.length, 800_001);
    assert.ok(Date.now() - started < 2000, `took ${Date.now() - started} ms`);
  });
});

describe('options', () => {
  test('defaults and both option syntaxes', () => {
    assert.deepEqual(formatOf(), { format: 'text', delimiter: '\t', quote: '"', escape: '"', nullString: '\\N', header: false });
    assert.deepEqual(formatOf('(format csv)'), { format: 'csv', delimiter: ',', quote: '"', escape: '"', nullString: '', header: false });
    assert.deepEqual(formatOf("with csv header delimiter ';' quote '''' escape '\\' null as 'N' force not null a, b"), {
      format: 'csv', delimiter: ';', quote: "'", escape: '\\', nullString: 'N', header: true, forceNotNull: ['a', 'b'],
    });
    assert.deepEqual(formatOf("(format csv, header match, force_null (c), encoding 'UTF-8', freeze true)"), {
      format: 'csv', delimiter: ',', quote: '"', escape: '"', nullString: '', header: true, headerMatch: true, forceNull: ['c'], encoding: 'UTF8',
    });
    assert.equal(formatOf('(header 0)').header, false);
    assert.equal(formatOf('(header on)').header, true);
    assert.equal(copyFormatFromOptions(undefined).format, 'text');
  });

  test('bad options get PostgreSQL 15 errors', () => {
    const cases: [string, string, string][] = [
      ['(format xml)', '22023', 'COPY format "xml" not recognized'],
      ["(format 'CSV')", '22023', 'COPY format "CSV" not recognized'],
      ["(delimiter ';;')", '0A000', 'COPY delimiter must be a single one-byte character'],
      ["(delimiter '€')", '0A000', 'COPY delimiter must be a single one-byte character'],
      ["(delimiter 'a')", '22023', 'COPY delimiter cannot be "a"'],
      ["(delimiter '\\')", '22023', 'COPY delimiter cannot be "\\"'],
      ["(delimiter E'\\n')", '22023', 'COPY delimiter cannot be newline or carriage return'],
      ["(null E'\\r')", '22023', 'COPY null representation cannot use newline or carriage return'],
      ["(format csv, quote ',')", '22023', 'COPY delimiter and quote must be different'],
      ["(quote '\"')", '0A000', 'COPY quote available only in CSV mode'],
      ["(escape '\"')", '0A000', 'COPY escape available only in CSV mode'],
      ["(format csv, quote '')", '0A000', 'COPY quote must be a single one-byte character'],
      ["(format csv, escape 'ab')", '0A000', 'COPY escape must be a single one-byte character'],
      ["(format csv, null 'a,b')", '0A000', 'COPY delimiter must not appear in the NULL specification'],
      ["(format csv, null '\"')", '0A000', 'CSV quote character must not appear in the NULL specification'],
      ['(force_null (a))', '0A000', 'COPY force null available only in CSV mode'],
      ['(force_not_null (a))', '0A000', 'COPY force not null available only in CSV mode'],
      ['(format csv, force_quote (a))', '0A000', 'COPY force quote only available using COPY TO'],
      ['(format csv, force_not_null *)', '22023', 'argument to option "force_not_null" must be a list of column names'],
      ['(format binary, header)', '0A000', 'cannot specify HEADER in BINARY mode'],
      ["(format binary, delimiter ',')", '42601', 'cannot specify DELIMITER in BINARY mode'],
      ["(format binary, null 'x')", '42601', 'cannot specify NULL in BINARY mode'],
      ['(header 2)', '42601', 'header requires a Boolean value or "match"'],
      ["(freeze 'x')", '42601', 'freeze requires a Boolean value'],
      ['(delimiter)', '42601', 'delimiter requires a parameter'],
      ["(delimiter ',', delimiter ';')", '42601', 'conflicting or redundant options'],
      ['(foo 1)', '42601', 'option "foo" not recognized'],
      ["(default 'x')", '42601', 'option "default" not recognized'],
      ["(encoding 'nonsense')", '22023', 'argument to option "encoding" must be a valid encoding name'],
      ["(encoding 'latin1')", '0A000', 'COPY with ENCODING "latin1" is not supported'],
    ];
    for (const [options, code, message] of cases) {
      assert.throws(() => formatOf(options), (e: unknown) => e instanceof PgError && e.code === code && e.message === message, options);
    }
  });

  test('binary format is parsed but the splitter refuses it with 0A000', () => {
    const binary = formatOf('(format binary)');
    assert.equal(binary.format, 'binary');
    assert.throws(() => new CopyRowSplitter(binary, 0, 1), (e: unknown) => e instanceof PgError && e.code === '0A000');
  });
});

// ---------------------------------------------------------------------------------------------------------------
// Against a real node

/** Runs `sql` (a COPY ... TO STDOUT) and returns the CopyData bytes exactly as the node sent them. */
async function copyOut(client: RawClient, sql: string): Promise<Buffer> {
  client.send(serialize.query(sql));
  const messages = await client.readUntil('Z');
  const error = messages.find((m) => m.type === 'E');
  if (error) throw new Error(errorFields(error).M);
  return Buffer.concat(messages.filter((m) => m.type === 'd').map((m) => m.payload));
}

type NodeOutcome = { rows: (string | null)[][] } | { error: { code: string; message: string; context: string } };

/** What the node makes of `input` sent to `COPY t FROM STDIN <options>` into a fresh table of `columns` text columns. */
async function copyIn(client: RawClient, options: string, input: Buffer, columns: number): Promise<NodeOutcome> {
  const names = ['a', 'b', 'c'].slice(0, columns);
  client.send(serialize.query(`drop table if exists t; create table t(${names.map((n) => `${n} text`).join(', ')})`));
  await client.readUntil('Z');
  client.send([serialize.query(`copy t from stdin ${options}`), serialize.copyData(input), serialize.copyDone()]);
  const reply = await client.readUntil('Z');
  assert.ok(reply.some((m) => m.type === 'G'), `copy t from stdin ${options} did not start`);
  const error = reply.find((m) => m.type === 'E');
  if (error) {
    const fields = errorFields(error);
    return { error: { code: fields.C, message: fields.M, context: fields.W } };
  }
  client.send(serialize.query('select * from t order by ctid'));
  return { rows: (await client.readUntil('Z')).filter((m) => m.type === 'D').map(dataRowValues) };
}

/** Differs from PostgreSQL only where intended: a bad encoding outside the key is the receiving node's to report. */
function assertLikeNode(node: NodeOutcome, mine: Outcome, key: number, what: string): void {
  if ('error' in node) {
    if (node.error.code === '22021' && !mine.error) return;
    assert.ok(mine.error, `${what}: the node refused it (${node.error.message}) but the splitter did not`);
    assert.deepEqual(
      { code: mine.error.code, message: mine.error.message, context: mine.error.detail },
      { code: node.error.code, message: node.error.message, context: node.error.context },
      what,
    );
  } else {
    assert.equal(mine.error, undefined, `${what}: the splitter refused it (${mine.error?.message}) but the node did not`);
    assert.deepEqual(mine.rows.map((r) => r.key), node.rows.map((r) => r[key]), what);
  }
}

describe('against PostgreSQL', () => {
  let cluster: TestCluster;
  let client: Client;
  let raw: RawClient;

  before(async () => {
    cluster = await startTestCluster({ nodes: 1, noProxy: true });
    client = await cluster.connectDirect(0);
    raw = await RawClient.ready(cluster.nodes[0].port);
  });

  after(async () => {
    raw?.end();
    await client?.end();
    await cluster?.stop();
  });

  test("the node's own COPY TO output splits into its rows and their values", async () => {
    const random = seeded(2024);
    const pieces = ['\t', '\n', '\r', '\r\n', '\\', '\\\\', '\\.', '\\N', 'N', '"', '""', "'", ',', ';', ' ', 'é', '中', '😀', 'a', 'Z', '0', '.', 'NULL', '\\x41', '\u0001', '\u007f'];
    const value = (): string | null => {
      const dice = random();
      if (dice < 0.08) return null;
      if (dice < 0.14) return '';
      if (dice < 0.17) return '\\.';
      let s = '';
      const length = 1 + Math.floor(random() * 6);
      for (let i = 0; i < length; i++) s += pieces[Math.floor(random() * pieces.length)];
      return s;
    };
    await client.query('create table nasty (a text, b text, c text)');
    const rows: (string | null)[][] = Array.from({ length: 3000 }, () => [value(), value(), value()]);
    for (let i = 0; i < rows.length; i += 500) {
      const batch = rows.slice(i, i + 500);
      const values = batch.map((_, r) => `($${r * 3 + 1}, $${r * 3 + 2}, $${r * 3 + 3})`).join(', ');
      await client.query(`insert into nasty values ${values}`, batch.flat());
    }
    const expected = await rowsOf(client, 'select a, b, c from nasty order by ctid');
    assert.equal(expected.length, 3000);
    const columnNames = ['a', 'b', 'c'];

    const variants = [
      { options: '', header: false },
      { options: '(header)', header: true },
      { options: "(delimiter ';')", header: false },
      { options: '(format csv)', header: false },
      { options: '(format csv, header)', header: true },
      { options: "(format csv, delimiter ';', quote '''')", header: false },
      { options: "(format csv, header, delimiter ';', quote '''')", header: true },
      { options: "(format csv, escape '\\', null '\\N')", header: false },
    ];
    for (const variant of variants) {
      const output = await copyOut(raw, `copy (select a, b, c from nasty order by ctid) to stdout ${variant.options}`);
      const headerEnd = variant.header ? output.indexOf(0x0a) + 1 : 0;
      const body = output.subarray(headerEnd);
      const format = formatOf(variant.options);
      // the same bytes end with a marker and junk after it, which must be neither forwarded nor read
      for (const input of [output, Buffer.concat([output, Buffer.from('\\.\nnot data\xff\n', 'latin1')])]) {
        for (let key = 0; key < 3; key++) {
          const random2 = seeded(key * 1000 + input.length);
          for (const maxPiece of [7, 300, 70000]) {
            const what = `${variant.options || 'text'}, key ${key}, pieces up to ${maxPiece}`;
            const splitter = new CopyRowSplitter(format, key, 3, { columnNames });
            const got = randomChunks(input, random2, maxPiece).flatMap((c) => splitter.push(c));
            got.push(...splitter.finish());
            assert.ok(Buffer.concat(got.map((r) => r.raw)).equals(body), `${what}: rows are not the input's bytes`);
            assert.deepEqual(got.map((r) => r.key), expected.map((r) => r[key]), what);
            if (variant.header) assert.ok(splitter.headerLine?.equals(output.subarray(0, headerEnd)), what);
          }
        }
      }
    }
  });

  test('awkward input is read as the node reads it, errors included', async () => {
    const cases: [string, string | Buffer, number][] = [
      ['', '1\t2\t3\n\\.', 3],
      ['', '1\t2\t3\n\\.\n', 3],
      ['', '1\t2\t3\nx\\.\nfoo', 3],
      ['', '1\t2\t3\\.\n', 3],
      ['', '1\t2\t3\\.x\n', 3],
      ['', 'a\\\nb\t2\t3\n', 3],
      ['', '1\t2\t3\r\n\\.\n', 3],
      ['', '1\t2\t3\r\n4\t5\t6\n', 3],
      ['', '1\t2\t3\n4\t5\r6\n', 3],
      ['', '1\t2\t3\\', 3],
      ['', '1\t2\t\\x\n\\xg\t\\q\\\\\\101\\1011\\x41\\x411\t\\b\\f\\v\\t\\n\\r\n', 3],
      ['', '\\N\t\\\\N\t\\N\\N\n', 3],
      ["(null '')", '\t\\N\tx\n', 3],
      ['', '1\t2\t3\t4\n', 3],
      ['', '1\t2\n', 3],
      ['', '\n', 1],
      ['', '\n', 3],
      ['(header)', 'h\n1\t2\t3\n', 3],
      ["(delimiter '|')", '1\\|x|2|3\n', 3],
      ["(delimiter 'A')", '\\x4A5A6\n', 3],
      ['', 'é\tü\t€\n😀\t\\303\\251\t\\xe2\\x82\\xac\n', 3],
      ['', Buffer.from([0xc3, 0x09, 0x32, 0x09, 0x33, 0x0a]), 3],
      ['', '\\xff\t2\t3\n', 3],
      ['', 'a\r\n\\.\r\r', 1],
      ['', 'a\r\\.\n', 1],
      ['', 'a\r\\.\rjunk\n\\\n', 1],
      ['(format csv)', '1,"a\nb",3\n4,5,6', 3],
      ['(format csv)', '1,"a\nb\n', 3],
      ['(format csv)', '1,"",\n', 3],
      ['(format csv)', '"x""y",a"b"c""d,"q"r\n', 3],
      ["(format csv, escape '\\')", '"x\\"y","a\\\\b","c\\d"\n', 3],
      ["(format csv, escape '\\')", '"a\\\\"b",c,d\n', 3],
      ["(format csv, quote '''', delimiter ';')", "'a;b';'''';\n", 3],
      ['(format csv, force_null (b), force_not_null (c))', '1,"",\n', 3],
      ["(format csv, null 'N')", 'N,"N",\n', 3],
      ['(format csv)', '1,2,3\n\\.\n', 3],
      ['(format csv)', '1,2,3\n\\.', 3],
      ['(format csv)', '1,2,3\n\\.', 1],
      ['(format csv)', '1,2,3\r\n\\.\r\n', 3],
      ['(format csv)', '1,2,3\r\n\\.\n', 3],
      ['(format csv)', '1,2,3\n\\.\r', 3],
      ['(format csv)', '1,2,3\r4,"x\ry",6\r', 3],
      ['(format csv)', '"a\rb",2,3\n4,"5\n6",7\n8,9,"x', 3],
      ['(format csv)', '1,2,3,"abc\n', 3],
      ['(format csv)', 'a\r\n\\.\rx\r\n', 1],
      ["(format csv, quote '.')", 'a\r\n\\.\rx.\r\n', 1],
      ["(format csv, quote '\\')", '\\a\\,b,c\n', 3],
      ["(format csv, delimiter '\\')", '\\.\\x\n', 2],
      ['(format csv, header)', '"a\nb",c\n1,2,3\n', 3],
      ['(format csv, header match)', 'a,"b",c\n1,2,3\n', 3],
      ['(format csv, header match)', 'a,,c\n', 3],
      ['(header match)', 'a\tx\tc\n', 3],
      ['(header match)', '', 3],
    ];
    const compare = async (options: string, input: Buffer, columns: number) => {
      const node = await copyIn(raw, options, input, columns);
      const format = formatOf(options);
      for (let key = 0; key < columns; key++) {
        const what = `${options || 'text'} ${JSON.stringify(input.toString('latin1'))} key ${key}`;
        assertLikeNode(node, split(format, key, columns, input, { columnNames: ['a', 'b', 'c'].slice(0, columns), table: 't' }), key, what);
      }
    };
    for (const [options, input, columns] of cases) await compare(options, typeof input === 'string' ? Buffer.from(input) : input, columns);

    // and random input in the same spirit, half of it shaped like rows
    const random = seeded(77);
    const pick = <T>(list: readonly T[]): T => list[Math.floor(random() * list.length)];
    const optionsList = ['', "(null '')", '(header)', "(delimiter 'A')", '(format csv)', "(format csv, escape '\\')", "(format csv, quote '''')", '(format csv, header)', "(format csv, null 'N')", "(format csv, quote '.')", "(format csv, escape 'N')"];
    const bytes = ['\t', ',', '"', "'", '\\', '.', '\n', '\r', '\r\n', 'N', 'x', 'A', '1', 'é', '\\.', '\\.\n', '\\N', '""', ' '];
    for (let i = 0; i < 400; i++) {
      const options = pick(optionsList);
      const columns = 1 + Math.floor(random() * 3);
      let input = '';
      if (i % 2 === 0) {
        for (let j = Math.floor(random() * 14); j > 0; j--) input += pick(bytes);
      } else {
        const csvMode = options.includes('csv');
        const delimiter = options.includes("'A'") ? 'A' : csvMode ? ',' : '\t';
        const quote = options.includes("quote ''''") ? "'" : options.includes("quote '.'") ? '.' : '"';
        const eol = pick(['\n', '\n', '\r\n', '\r']);
        const fieldBytes = csvMode ? ['x', 'A', ' ', '\\', 'N', 'é', ',', quote + quote, '\t', '.', '\\.'] : ['x', ' ', '\\\\', '\\N', 'N', 'é', `\\${delimiter}`, '\\n', '\\r', '\\101', '\\x41', '\\t', '.', ',', '"', '\\q'];
        for (let r = Math.floor(random() * 4); r > 0; r--) {
          const fields: string[] = [];
          for (let f = random() < 0.9 ? columns : columns + pick([-1, 1]); f > 0; f--) {
            let v = '';
            for (let k = Math.floor(random() * 4); k > 0; k--) v += pick(fieldBytes);
            if (csvMode && (random() < 0.4 || v.includes(delimiter) || v.includes(quote))) v = quote + v.split(quote).join(quote + quote) + pick(['', '\n', eol]) + quote;
            fields.push(v);
          }
          input += fields.join(delimiter) + (r > 1 || random() < 0.8 ? eol : '');
        }
        if (random() < 0.2) input += pick([`\\.${eol}`, '\\.', '\\.\n']) + pick(['', 'junk']);
      }
      await compare(options, Buffer.from(input), columns);
    }
  });
});
