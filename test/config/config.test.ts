// pgpool.conf syntax and parapool's parameters: good files load, and every mistake stops start-up with the
// file and line named.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { configFromText, configToText, defaultConfig } from '../../src/config/config';
import { PgError } from '../../src/protocol/errors';

const base = `backend_hostname0 = '127.0.0.1'\nbackend_port0 = 5432\n`;

function failsWith(text: string, pattern: RegExp): void {
  assert.throws(() => configFromText(text, 'parapool.conf'), (e: unknown) => e instanceof PgError && e.code === 'F0000' && pattern.test(e.message), pattern.source);
}

test('a pgpool.conf-style file loads with pgpool names and quoting', () => {
  const config = configFromText(
    `# comment\nlisten_addresses = '*'\nport = 9998   # trailing comment\n` +
      `backend_hostname0 = 'db0'\nbackend_port0 = 5433\nbackend_weight0 = 2\n` +
      `backend_hostname1 = 'db1'\nbackend_weight1 = 0.5\nbackend_data_directory1 = '/data/it''s'\n` +
      `load_balance_mode = off\nstatement_level_load_balance = on\nwrite_function_list = 'nextval,setval,my_.*'\n` +
      `reset_query_list = 'ABORT; DISCARD ALL'\nlog_min_messages = warning\n`,
    'parapool.conf',
  );
  assert.deepEqual(config.listenAddresses, ['0.0.0.0']);
  assert.equal(config.port, 9998);
  assert.deepEqual(config.backends, [
    { id: 0, host: 'db0', port: 5433, weight: 2, dataDirectory: null },
    { id: 1, host: 'db1', port: 5432, weight: 0.5, dataDirectory: "/data/it's" },
  ]);
  assert.equal(config.loadBalanceMode, false);
  assert.equal(config.statementLevelLoadBalance, true);
  assert.deepEqual(config.writeFunctionList, ['nextval', 'setval', 'my_.*']);
  assert.deepEqual(config.resetQueryList, ['ABORT', 'DISCARD ALL']);
  assert.equal(config.logMinMessages, 'warning');
});

test('configToText writes what configFromText reads back', () => {
  const config = defaultConfig();
  config.backends = [{ id: 0, host: 'h', port: 1, weight: 1, dataDirectory: '/d' }];
  config.writeFunctionList = ['nextval', 'f'];
  const again = configFromText(configToText(config), 'x');
  assert.deepEqual(again, config);
});

test('mistakes name the file and line', () => {
  failsWith(`${base}no_such_setting = 1\n`, /unrecognized configuration parameter "no_such_setting" in file "parapool.conf" line 3/);
  failsWith(`${base}port = 99999\n`, /outside the valid range.*line 3/);
  failsWith(`${base}port = abc\n`, /invalid integer "abc".*line 3/);
  failsWith(`${base}load_balance_mode = maybe\n`, /invalid boolean "maybe".*line 3/);
  failsWith(`${base}port = 1\nport = 2\n`, /set twice \(first on line 3\).*line 4/);
  failsWith(`${base}listen_addresses = 'x\n`, /unterminated quoted string.*line 3/);
  failsWith(`${base}client_authentication = password\n`, /invalid authentication method.*line 3/);
  failsWith(`${base}write_function_list = '(('\n`, /invalid regular expression.*line 3/);
  failsWith(`${base}backend_hostname2 = 'x'\n`, /backend 2 is defined but backend 1 is not/);
  failsWith(`port = 1\n`, /no backend is configured/);
  failsWith(`${base}port = 1 2\n`, /syntax error.*line 3/);
});
