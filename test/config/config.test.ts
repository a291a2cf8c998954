// pgpool.conf syntax and parapool's parameters: good files load, and every mistake stops start-up with the
// file and line named.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { configFromText, configToText, defaultBackendFlags, defaultConfig, healthCheckFor } from '../../src/config/config';
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
    { id: 0, host: 'db0', port: 5433, weight: 2, dataDirectory: null, flags: defaultBackendFlags, applicationName: '' },
    { id: 1, host: 'db1', port: 5432, weight: 0.5, dataDirectory: "/data/it's", flags: defaultBackendFlags, applicationName: '' },
  ]);
  assert.equal(config.loadBalanceMode, false);
  assert.equal(config.statementLevelLoadBalance, true);
  assert.deepEqual(config.writeFunctionList, ['nextval', 'setval', 'my_.*']);
  assert.deepEqual(config.resetQueryList, ['ABORT', 'DISCARD ALL']);
  assert.equal(config.logMinMessages, 'warning');
});

test('configToText writes what configFromText reads back', () => {
  const config = defaultConfig();
  config.backends = [{ id: 0, host: 'h', port: 1, weight: 1, dataDirectory: '/d', flags: defaultBackendFlags, applicationName: '' }];
  config.writeFunctionList = ['nextval', 'f'];
  const again = configFromText(configToText(config), 'x');
  assert.deepEqual(again, config);
  config.clusteringMode = 'streaming_replication';
  config.backends = [
    { id: 0, host: 'h', port: 1, weight: 0, dataDirectory: '/d0', flags: { allowToFailover: true, alwaysPrimary: true }, applicationName: 'server0' },
    { id: 1, host: 'h', port: 2, weight: 1, dataDirectory: '/d1', flags: { allowToFailover: false, alwaysPrimary: false }, applicationName: 'server1' },
  ];
  Object.assign(config, { delayThreshold: 1048576, delayThresholdByTime: 500, srCheckPeriod: 1, srCheckUser: 'checker', srCheckPassword: 'secret', srCheckDatabase: 'template1', disableLoadBalanceOnWrite: 'always' });
  assert.deepEqual(configFromText(configToText(config), 'x'), config);
});

test('streaming replication takes pgpool-II names and values', () => {
  const config = configFromText(
    `${base}backend_hostname1 = 'db1'
backend_clustering_mode = 'streaming_replication'
` +
      `backend_flag0 = 'ALWAYS_PRIMARY|DISALLOW_TO_FAILOVER'
backend_application_name1 = 'server1'
` +
      `delay_threshold = 10000000
delay_threshold_by_time = 1000
sr_check_period = 5
sr_check_user = 'repl'
` +
      `sr_check_password = 'md5abc'
sr_check_database = 'template1'
disable_load_balance_on_write = 'trans_transaction'
`,
    'parapool.conf',
  );
  assert.equal(config.clusteringMode, 'streaming_replication');
  assert.deepEqual(config.backends.map((b) => [b.flags, b.applicationName]), [[{ allowToFailover: false, alwaysPrimary: true }, ''], [defaultBackendFlags, 'server1']]);
  assert.deepEqual(
    [config.delayThreshold, config.delayThresholdByTime, config.srCheckPeriod, config.srCheckUser, config.srCheckPassword, config.srCheckDatabase, config.disableLoadBalanceOnWrite],
    [10000000, 1000, 5, 'repl', 'md5abc', 'template1', 'trans_transaction'],
  );
  const defaults = defaultConfig();
  assert.deepEqual([defaults.clusteringMode, defaults.delayThreshold, defaults.srCheckPeriod, defaults.disableLoadBalanceOnWrite], ['native_replication', 0, 10, 'transaction']);
  failsWith(`${base}backend_flag0 = 'ALLOW_TO_FAILOVER|DISALLOW_TO_FAILOVER'
`, /exclude each other.*line 3/);
  failsWith(`${base}backend_flag0 = 'SOMETIMES'
`, /invalid flag "SOMETIMES".*line 3/);
  failsWith(`${base}disable_load_balance_on_write = 'dml_adaptive'
`, /dml_adaptive is not implemented.*line 3/);
  failsWith(`${base}backend_hostname1 = 'db1'
backend_flag0 = ALWAYS_PRIMARY
backend_flag1 = ALWAYS_PRIMARY
`, /both flagged ALWAYS_PRIMARY/);
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
  failsWith(`${base}backend_clustering_mode = 'raw'\n`, /backend_clustering_mode 'raw' is not supported.*line 3/);
  assert.doesNotThrow(() => configFromText(`${base}backend_clustering_mode = 'native_replication'\n`, 'parapool.conf'));
});

test('health checks, failover and failback commands and logdir take pgpool-II names, defaults and per-node suffixes', () => {
  const defaults = configFromText(base, 'parapool.conf', '/etc/parapool');
  assert.deepEqual(defaults.healthCheck, { period: 0, timeout: 20, maxRetries: 0, retryDelay: 1, user: '', password: '', database: '' });
  assert.deepEqual(defaults.healthCheckPerNode, {});
  assert.equal(defaults.failoverCommand, '');
  assert.equal(defaults.logdir, '/tmp');
  const config = configFromText(
    `${base}backend_hostname1 = 'db1'\n` +
      `health_check_period = 10\nhealth_check_timeout = 5\nhealth_check_max_retries = 3\nhealth_check_retry_delay = 2\n` +
      `health_check_user = 'checker'\nhealth_check_password = ''\nhealth_check_database = 'app'\n` +
      `health_check_period1 = 0\nhealth_check_timeout1 = 1\nhealth_check_user1 = 'other'\n` +
      `failover_command = '/bin/failover.sh %d %h %p %D %m %H %M %P %r %R %N %S %%'\nfailback_command = 'echo %d'\nlogdir = 'log'\n`,
    'parapool.conf',
    '/etc/parapool',
  );
  assert.deepEqual(config.healthCheck, { period: 10, timeout: 5, maxRetries: 3, retryDelay: 2, user: 'checker', password: '', database: 'app' });
  assert.deepEqual(config.healthCheckPerNode, { 1: { period: 0, timeout: 1, user: 'other' } });
  assert.deepEqual(healthCheckFor(config, 0), config.healthCheck);
  assert.deepEqual(healthCheckFor(config, 1), { ...config.healthCheck, period: 0, timeout: 1, user: 'other' });
  assert.equal(config.failoverCommand, '/bin/failover.sh %d %h %p %D %m %H %M %P %r %R %N %S %%');
  assert.equal(config.failbackCommand, 'echo %d');
  assert.equal(config.logdir, '/etc/parapool/log');
  assert.deepEqual(configFromText(configToText(config), 'x'), config);
  failsWith(`${base}health_check_period3 = 1\n`, /health_check parameter names backend 3, which is not configured.*line 3/);
  failsWith(`${base}health_check_timeout = -1\n`, /invalid integer "-1"|outside the valid range/);
  failsWith(`${base}health_check_interval = 1\n`, /unrecognized configuration parameter "health_check_interval"/);
  failsWith(`${base}logdir = ''\n`, /empty directory/);
});

test('the web admin page is off by default, listens where web_admin_* say, and needs pcp_conf_file for its users', () => {
  const defaults = configFromText(base, 'parapool.conf', '/etc/parapool');
  assert.equal(defaults.webAdminPort, 0);
  assert.deepEqual(defaults.webAdminListenAddresses, ['127.0.0.1']);
  const config = configFromText(`${base}pcp_conf_file = 'pcp.conf'\nweb_admin_port = 9980\nweb_admin_listen_addresses = 'localhost,*'\n`, 'parapool.conf', '/etc/parapool');
  assert.equal(config.webAdminPort, 9980);
  assert.deepEqual(config.webAdminListenAddresses, ['127.0.0.1', '0.0.0.0']);
  assert.equal(config.pcpConfFile, '/etc/parapool/pcp.conf');
  assert.deepEqual(configFromText(configToText(config), 'x'), config);
  failsWith(`${base}web_admin_port = 9980\n`, /web_admin_port is set but pcp_conf_file is not.*line 3/);
  failsWith(`${base}web_admin_port = 70000\n`, /outside the valid range.*line 3/);
  assert.doesNotThrow(() => configFromText(`${base}web_admin_port = 0\n`, 'parapool.conf'));
});

test('the watchdog takes pgpool-II names, both forms of the instance list, and round-trips', () => {
  const config = configFromText(
    [
      "backend_hostname0 = 'h'",
      'use_watchdog = on',
      "wd_hostname = 'pool-a'",
      'wd_port = 9100',
      'wd_priority = 3',
      'wd_heartbeat_keepalive = 1',
      'wd_heartbeat_deadtime = 5',
      "wd_escalation_command = '/bin/up'",
      "wd_de_escalation_command = '/bin/down'",
      'failover_require_consensus = off',
      'enable_consensus_with_half_votes = on',
      "other_pgpool_hostname0 = 'pool-b'",
      'other_pgpool_port0 = 9999',
      'other_wd_port0 = 9000',
      "other_pgpool_hostname1 = 'pool-c'",
    ].join('\n'),
    'x',
  );
  const w = config.watchdog;
  assert.equal(w.enabled, true);
  assert.deepEqual([w.hostname, w.port, w.priority, w.heartbeatKeepalive, w.heartbeatDeadtime], ['pool-a', 9100, 3, 1, 5]);
  assert.deepEqual([w.escalationCommand, w.deEscalationCommand], ['/bin/up', '/bin/down']);
  assert.deepEqual([w.failoverWhenQuorumExists, w.failoverRequireConsensus, w.allowMultipleFailoverRequestsFromNode, w.enableConsensusWithHalfVotes], [true, false, false, true]);
  assert.deepEqual(w.peers, [{ host: 'pool-b', pgpoolPort: 9999, wdPort: 9000 }, { host: 'pool-c', pgpoolPort: 9999, wdPort: 9000 }]);
  assert.deepEqual(configFromText(configToText(config), 'x'), config);
  assert.equal(defaultConfig().watchdog.heartbeatDeadtime, 30);
  assert.notEqual(defaultConfig().watchdog, defaultConfig().watchdog, 'each config has its own watchdog settings');

  // pgpool 4.2's form: every instance listed, pgpool_node_id naming this one.
  const listed = configFromText(
    ["backend_hostname0 = 'h'", 'use_watchdog = on', 'pgpool_node_id = 1', "hostname0 = 'a'", 'wd_port0 = 9000', 'pgpool_port0 = 9999', "hostname1 = 'b'", 'wd_port1 = 9001', "hostname2 = 'c'"].join('\n'),
    'x',
  );
  assert.deepEqual([listed.watchdog.hostname, listed.watchdog.port], ['b', 9001]);
  assert.deepEqual(listed.watchdog.peers, [{ host: 'a', pgpoolPort: 9999, wdPort: 9000 }, { host: 'c', pgpoolPort: 9999, wdPort: 9000 }]);

  failsWith(["backend_hostname0 = 'h'", "other_pgpool_hostname1 = 'b'"].join('\n'), /other_pgpool_hostname1 is set but other_pgpool_hostname0 is not/);
  failsWith(["backend_hostname0 = 'h'", "hostname0 = 'a'"].join('\n'), /pgpool_node_id is not set/);
  failsWith(["backend_hostname0 = 'h'", 'use_watchdog = on', 'wd_heartbeat_keepalive = 5', 'wd_heartbeat_deadtime = 5'].join('\n'), /wd_heartbeat_deadtime \(5\) must be longer/);
  failsWith(["backend_hostname0 = 'h'", 'wd_priority = x'].join('\n'), /invalid integer "x" for parameter "wd_priority"/);
});
