// parapool's configuration: pgpool.conf syntax and pgpool-II's parameter names where the meaning is the same.
// Every key is known here; an unknown key or a bad value stops start-up with the file and line named, because
// a silently ignored setting is a production incident waiting to happen.

import { readFileSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { isLogLevel, type LogLevel } from '../log';
import { confError, parseConfFile, type ConfEntry } from './conf-file-parser';
import { applyWatchdogEntry, defaultWatchdogConfig, finishWatchdogConfig, newWatchdogEntries, watchdogItems, type WatchdogConfig } from './watchdog-config';

export interface BackendConfig {
  readonly id: number;
  readonly host: string;
  readonly port: number;
  readonly weight: number;
  readonly dataDirectory: string | null;
  /** backend_flagN: whether the proxy may take the node out of service on a failure, and whether it is always the primary. */
  readonly flags?: BackendFlags;
  /** backend_application_nameN: the name the node streams under as a standby (pg_stat_replication.application_name). */
  readonly applicationName?: string;
}

/** pgpool-II's backend_flag values. */
export interface BackendFlags {
  /** ALLOW_TO_FAILOVER (the default) or DISALLOW_TO_FAILOVER: a failure (health check, lost connection) detaches the node. */
  readonly allowToFailover: boolean;
  /** ALWAYS_PRIMARY: the node is the primary whatever pg_is_in_recovery() says (a primary behind a fixed address). */
  readonly alwaysPrimary: boolean;
}

export const defaultBackendFlags: BackendFlags = { allowToFailover: true, alwaysPrimary: false };

/**
 * native_replication: the proxy writes to every node itself (partition rules on top); streaming_replication:
 * PostgreSQL's streaming replication copies the primary's writes to its standbys, and the proxy sends writes to
 * the primary only.
 */
export type ClusteringMode = 'native_replication' | 'streaming_replication';

/** pgpool-II's disable_load_balance_on_write: after a write, which reads stay on the primary. */
export type LoadBalanceOnWrite = 'transaction' | 'trans_transaction' | 'always' | 'off';

export type ClientAuthentication = 'trust' | 'md5' | 'scram-sha-256';

/** pgpool-II's health_check_* parameters, for all nodes or one (the `_N` suffix). */
export interface HealthCheckConfig {
  /** Seconds between checks; 0 turns them off. */
  period: number;
  /** Seconds one attempt (connect, start-up, authentication) may take; 0 waits forever. */
  timeout: number;
  /** Attempts after the first failed one before the node is detached. */
  maxRetries: number;
  /** Seconds between attempts. */
  retryDelay: number;
  /** '' takes recovery_user. */
  user: string;
  /** '' takes the user's entry of pool_passwd (or no password). */
  password: string;
  /** '' tries postgres, then template1. */
  database: string;
}

export interface ProxyConfig {
  clusteringMode: ClusteringMode;
  listenAddresses: string[];
  port: number;
  backends: BackendConfig[];
  /** Most client sessions served at once (pgpool: one child process per session). */
  numInitChildren: number;
  /** Idle backend connections kept per node for each (user, database, options) key. */
  maxPool: number;
  connectionCache: boolean;
  /**
   * session: a client session keeps its node connections until it ends (pgpool-II's way); transaction: it holds
   * them only while a transaction or statement runs (PgBouncer's transaction pooling), at most max_pool per node
   * for each (user, database, options) key.
   */
  poolMode: 'session' | 'transaction';
  /** Seconds a pooled node connection lives before it is closed instead of reused (0: no limit). */
  connectionLifeTime: number;
  /** SQL sent to a backend connection before it returns to the pool. */
  resetQueryList: string[];
  loadBalanceMode: boolean;
  /** Replicated writes that may advance a sequence run one at a time per sequence (pgpool-II's insert_lock). */
  insertLock: boolean;
  /** Seconds a statement inside a transaction waits for the insert lock before it fails with 55P03. */
  insertLockTimeout: number;
  /** Choose the read node per statement rather than once per session. */
  statementLevelLoadBalance: boolean;
  /** Functions whose call makes a SELECT a write (matched as anchored, case-insensitive regexes). */
  writeFunctionList: string[];
  clientAuthentication: ClientAuthentication;
  /** Password file in pool_passwd or userlist.txt format; credentials for clients and for the nodes. */
  poolPasswd: string | null;
  /** Seconds to wait for a node to accept a connection. */
  connectTimeout: number;
  /** Seconds a client has from connecting to finishing start-up and authentication; 0 waits forever. */
  authenticationTimeout: number;
  /** Largest message accepted from a client, in bytes. */
  clientMaxMessageSize: number;
  /** Most bytes of rows the proxy holds for one merge that must keep state (its hash aggregate of partial groups). */
  mergeMemoryLimit: number;
  /** Most bytes of rows one statement may ship between nodes through the proxy (the gather tier's copies). */
  intermediateResultLimit: number;
  /** Most rows a broadcast join may copy to all nodes together; 0 turns broadcast joins off. */
  broadcastJoinLimit: number;
  /** The query cache (pgpool-II's memory_cache_enabled): SELECT replies answered again without the nodes. */
  memoryCacheEnabled: boolean;
  /** Seconds a cached reply lives; 0: until a write or DDL empties the cache. */
  memqcacheExpire: number;
  /** Largest reply the cache keeps, in bytes. */
  memqcacheMaxcache: number;
  /** Bytes all cached replies may take together. */
  memqcacheTotalSize: number;
  /** Other proxies may serve the same nodes: writes reach their caches through the nodes' NOTIFY before they end. */
  memqcacheShared: boolean;
  /** Tables whose reads are cached (regexes, anchored, case-insensitive); empty: every table not listed unsafe. */
  cacheSafeMemqcacheTableList: string[];
  /** Tables whose reads are never cached (regexes, anchored, case-insensitive). */
  cacheUnsafeMemqcacheTableList: string[];
  /** The user the proxy connects as to resolve in-doubt transactions and check catalogs at start-up. */
  recoveryUser: string;
  /** PCP (pgpool-II's admin protocol): where it listens, and the pcp.conf file of its users; no file: no PCP. */
  pcpListenAddresses: string[];
  pcpPort: number;
  pcpConfFile: string | null;
  /** The web admin page: its port (0: no page) and addresses; its users are pcp_conf_file's. */
  webAdminPort: number;
  webAdminListenAddresses: string[];
  /** Online recovery's commands (see cluster/online-recovery.ts); empty: no online recovery / no second stage. */
  recovery1stStageCommand: string;
  recovery2ndStageCommand: string;
  /** Seconds each recovery stage, and the wait for sessions to finish their transactions, may take. */
  recoveryTimeout: number;
  /** Seconds the second stage waits for sessions in a transaction before ending them; 0: wait recovery_timeout; -1: at once. */
  clientIdleLimitInRecovery: number;
  /** Seconds between the proxy's looks for transactions left prepared while it serves; 0: at start-up only. */
  inDoubtRecoveryInterval: number;
  healthCheck: HealthCheckConfig;
  /** Per-node overrides (health_check_period0, health_check_timeout1, ...), by backend id. */
  healthCheckPerNode: Record<number, Partial<HealthCheckConfig>>;
  /** Run through /bin/sh -c when a node is detached, with pgpool's placeholders; '' runs nothing. */
  failoverCommand: string;
  /** Run through /bin/sh -c when a node is attached. */
  failbackCommand: string;
  /** Where pgpool_status (each node's up/down, read back at start-up) is kept. */
  logdir: string;
  /** Start with every node up, ignoring pgpool_status (pgpool's -D; a command-line flag, not a file key). */
  discardStatus: boolean;
  logMinMessages: LogLevel;
  /** Prometheus metrics over HTTP (GET /metrics): where they are served; no address: not served. */
  metricsListenAddresses: string[];
  metricsPort: number;
  logConnections: boolean;
  logDisconnections: boolean;
  logStatement: boolean;
  logPerNodeStatement: boolean;
  /** Bytes of WAL a standby may be behind the primary and still take reads; 0: no limit. */
  delayThreshold: number;
  /** Milliseconds of replay a standby may be behind and still take reads; 0: no limit. */
  delayThresholdByTime: number;
  /** Seconds between the streaming-replication checks (replication delay and state); 0: off. */
  srCheckPeriod: number;
  /** '' takes recovery_user. */
  srCheckUser: string;
  /** '' takes the user's entry of pool_passwd (or no password). */
  srCheckPassword: string;
  srCheckDatabase: string;
  disableLoadBalanceOnWrite: LoadBalanceOnWrite;
  /** The watchdog (use_watchdog and friends, see watchdog-config.ts). N.B. a nested object: copy it with copyWatchdogConfig, not with `{...config}`. */
  watchdog: WatchdogConfig;
}

export function defaultConfig(): ProxyConfig {
  return {
    clusteringMode: 'native_replication',
    listenAddresses: ['127.0.0.1'],
    port: 9999,
    backends: [],
    numInitChildren: 256,
    maxPool: 4,
    connectionCache: true,
    poolMode: 'session',
    connectionLifeTime: 0,
    resetQueryList: ['ABORT', 'DISCARD ALL'],
    loadBalanceMode: true,
    insertLock: true,
    insertLockTimeout: 10,
    statementLevelLoadBalance: false,
    writeFunctionList: ['nextval', 'setval'],
    clientAuthentication: 'trust',
    poolPasswd: null,
    connectTimeout: 10,
    authenticationTimeout: 60,
    clientMaxMessageSize: 256 * 1024 * 1024,
    mergeMemoryLimit: 256 * 1024 * 1024,
    intermediateResultLimit: 4 * 1024 * 1024 * 1024,
    broadcastJoinLimit: 2_000_000,
    memoryCacheEnabled: false,
    memqcacheExpire: 0,
    memqcacheMaxcache: 400 * 1024,
    memqcacheTotalSize: 64 * 1024 * 1024,
    memqcacheShared: true,
    cacheSafeMemqcacheTableList: [],
    cacheUnsafeMemqcacheTableList: [],
    recoveryUser: 'postgres',
    inDoubtRecoveryInterval: 5,
    pcpListenAddresses: ['127.0.0.1'],
    pcpPort: 9898,
    pcpConfFile: null,
    webAdminPort: 0,
    webAdminListenAddresses: ['127.0.0.1'],
    recovery1stStageCommand: '',
    recovery2ndStageCommand: '',
    recoveryTimeout: 90,
    clientIdleLimitInRecovery: 0,
    healthCheck: { period: 0, timeout: 20, maxRetries: 0, retryDelay: 1, user: '', password: '', database: '' },
    healthCheckPerNode: {},
    failoverCommand: '',
    failbackCommand: '',
    logdir: '/tmp',
    discardStatus: false,
    logMinMessages: 'info',
    metricsListenAddresses: [],
    metricsPort: 9930,
    logConnections: false,
    logDisconnections: false,
    logStatement: false,
    logPerNodeStatement: false,
    delayThreshold: 0,
    delayThresholdByTime: 0,
    srCheckPeriod: 10,
    srCheckUser: '',
    srCheckPassword: '',
    srCheckDatabase: 'postgres',
    disableLoadBalanceOnWrite: 'transaction',
    watchdog: defaultWatchdogConfig(),
  };
}

type Setter = (config: ProxyConfig, value: string, fail: (message: string) => never, baseDir: string) => void;

function parseBool(value: string, fail: (message: string) => never): boolean {
  const v = value.toLowerCase();
  if (['on', 'true', 'yes', '1'].includes(v)) return true;
  if (['off', 'false', 'no', '0'].includes(v)) return false;
  return fail(`invalid boolean "${value}"`);
}

function parseInteger(value: string, fail: (message: string) => never, min: number, max: number): number {
  if (!/^-?\d+$/.test(value)) fail(`invalid integer "${value}"`);
  const n = Number(value);
  if (n < min || n > max) fail(`value ${n} is outside the valid range ${min}..${max}`);
  return n;
}

/** A size in bytes, as pgpool-II takes it: a number, or one with kB, MB or GB after it. */
function parseBytes(value: string, fail: (message: string) => never, min: number, max: number): number {
  const match = /^(\d+)\s*(kB|MB|GB)?$/i.exec(value.trim());
  if (!match) return fail(`invalid size "${value}" (expected a number of bytes, or one with kB, MB or GB)`);
  const unit = { kb: 1024, mb: 1024 * 1024, gb: 1024 * 1024 * 1024 }[(match[2] ?? '').toLowerCase() as 'kb'] ?? 1;
  const n = Number(match[1]) * unit;
  if (n < min || n > max) fail(`value ${n} is outside the valid range ${min}..${max}`);
  return n;
}

function regexList(value: string, fail: (message: string) => never): string[] {
  const list = parseList(value);
  for (const pattern of list) {
    try {
      new RegExp(pattern);
    } catch {
      fail(`invalid regular expression "${pattern}"`);
    }
  }
  return list;
}

function parseList(value: string): string[] {
  return value.split(',').map((s) => s.trim()).filter((s) => s !== '');
}

/** A listen_addresses-style list: '*' is every IPv4 address, 'localhost' the loopback one. */
function listenAddresses(value: string): string[] {
  return parseList(value).map((a) => (a === '*' ? '0.0.0.0' : a === 'localhost' ? '127.0.0.1' : a));
}

const settings: Record<string, Setter> = {
  listen_addresses: (c, v) => {
    c.listenAddresses = parseList(v).map((a) => (a === '*' ? '0.0.0.0' : a));
  },
  port: (c, v, fail) => {
    c.port = parseInteger(v, fail, 1, 65535);
  },
  num_init_children: (c, v, fail) => {
    c.numInitChildren = parseInteger(v, fail, 1, 100000);
  },
  max_pool: (c, v, fail) => {
    c.maxPool = parseInteger(v, fail, 0, 10000);
  },
  connection_cache: (c, v, fail) => {
    c.connectionCache = parseBool(v, fail);
  },
  pool_mode: (c, v, fail) => {
    const mode = v.trim().toLowerCase();
    if (mode !== 'session' && mode !== 'transaction') return fail(`must be session or transaction, not "${v}"`);
    c.poolMode = mode;
  },
  connection_life_time: (c, v, fail) => {
    c.connectionLifeTime = parseInteger(v, fail, 0, 365 * 86400);
  },
  reset_query_list: (c, v) => {
    c.resetQueryList = v.split(';').map((s) => s.trim()).filter((s) => s !== '');
  },
  load_balance_mode: (c, v, fail) => {
    c.loadBalanceMode = parseBool(v, fail);
  },
  backend_clustering_mode: (c, v, fail) => {
    // A pgpool-II configuration for a mode parapool does not run must not start as if it were another.
    if (v !== 'native_replication' && v !== 'streaming_replication') {
      fail(`backend_clustering_mode '${v}' is not supported: parapool runs native_replication (writes to every node, partition rules on top) and streaming_replication (writes to the primary, reads to its standbys); logical_replication, slony, snapshot_isolation and raw are not implemented`);
    }
    c.clusteringMode = v as ClusteringMode;
  },
  delay_threshold: (c, v, fail) => {
    c.delayThreshold = parseInteger(v, fail, 0, Number.MAX_SAFE_INTEGER);
  },
  delay_threshold_by_time: (c, v, fail) => {
    c.delayThresholdByTime = parseInteger(v, fail, 0, 86_400_000);
  },
  sr_check_period: (c, v, fail) => {
    c.srCheckPeriod = parseInteger(v, fail, 0, 86400);
  },
  sr_check_user: (c, v) => {
    c.srCheckUser = v;
  },
  sr_check_password: (c, v) => {
    c.srCheckPassword = v;
  },
  sr_check_database: (c, v, fail) => {
    if (v === '') fail('empty database name');
    c.srCheckDatabase = v;
  },
  disable_load_balance_on_write: (c, v, fail) => {
    const value = v.toLowerCase();
    if (value !== 'transaction' && value !== 'trans_transaction' && value !== 'always' && value !== 'off') {
      return fail(`invalid value "${v}" (expected transaction, trans_transaction, always or off; dml_adaptive is not implemented)`);
    }
    c.disableLoadBalanceOnWrite = value;
  },
  insert_lock: (c, v, fail) => {
    c.insertLock = parseBool(v, fail);
  },
  insert_lock_timeout: (c, v, fail) => {
    c.insertLockTimeout = parseInteger(v, fail, 1, 86400);
  },
  statement_level_load_balance: (c, v, fail) => {
    c.statementLevelLoadBalance = parseBool(v, fail);
  },
  write_function_list: (c, v, fail) => {
    c.writeFunctionList = regexList(v, fail);
  },
  memory_cache_enabled: (c, v, fail) => {
    c.memoryCacheEnabled = parseBool(v, fail);
  },
  memqcache_method: (_c, v, fail) => {
    // The cache lives in the proxy's memory; other proxies learn of writes through the nodes (query-cache.ts).
    if (v.toLowerCase() !== 'shmem') fail(`invalid value "${v}" (only shmem is implemented; memcached is not)`);
  },
  memqcache_expire: (c, v, fail) => {
    c.memqcacheExpire = parseInteger(v, fail, 0, 365 * 86400);
  },
  memqcache_maxcache: (c, v, fail) => {
    c.memqcacheMaxcache = parseBytes(v, fail, 1, 1024 * 1024 * 1024);
  },
  memqcache_total_size: (c, v, fail) => {
    c.memqcacheTotalSize = parseBytes(v, fail, 1024, 64 * 1024 * 1024 * 1024);
  },
  memqcache_shared: (c, v, fail) => {
    c.memqcacheShared = parseBool(v, fail);
  },
  cache_safe_memqcache_table_list: (c, v, fail) => {
    c.cacheSafeMemqcacheTableList = regexList(v, fail);
  },
  cache_unsafe_memqcache_table_list: (c, v, fail) => {
    c.cacheUnsafeMemqcacheTableList = regexList(v, fail);
  },
  client_authentication: (c, v, fail) => {
    const method = v.toLowerCase();
    if (method !== 'trust' && method !== 'md5' && method !== 'scram-sha-256') {
      return fail(`invalid authentication method "${v}" (expected trust, md5 or scram-sha-256)`);
    }
    c.clientAuthentication = method;
  },
  pool_passwd: (c, v, _fail, baseDir) => {
    c.poolPasswd = v === '' ? null : resolve(baseDir, v);
  },
  connect_timeout: (c, v, fail) => {
    c.connectTimeout = parseInteger(v, fail, 1, 3600);
  },
  authentication_timeout: (c, v, fail) => {
    c.authenticationTimeout = parseInteger(v, fail, 0, 86400);
  },
  broadcast_join_limit: (c, v, fail) => {
    c.broadcastJoinLimit = parseInteger(v, fail, 0, Number.MAX_SAFE_INTEGER);
  },
  intermediate_result_limit: (c, v, fail) => {
    c.intermediateResultLimit = parseInteger(v, fail, 1024 * 1024, Number.MAX_SAFE_INTEGER);
  },
  merge_memory_limit: (c, v, fail) => {
    c.mergeMemoryLimit = parseInteger(v, fail, 1024 * 1024, 64 * 1024 * 1024 * 1024);
  },
  client_max_message_size: (c, v, fail) => {
    c.clientMaxMessageSize = parseInteger(v, fail, 1024, 1024 * 1024 * 1024);
  },
  recovery_user: (c, v, fail) => {
    if (v === '') fail('empty user name');
    c.recoveryUser = v;
  },
  pcp_listen_addresses: (c, v) => {
    c.pcpListenAddresses = listenAddresses(v);
  },
  pcp_port: (c, v, fail) => {
    c.pcpPort = parseInteger(v, fail, 0, 65535);
  },
  pcp_conf_file: (c, v, _fail, baseDir) => {
    c.pcpConfFile = v === '' ? null : resolve(baseDir, v);
  },
  web_admin_listen_addresses: (c, v) => {
    c.webAdminListenAddresses = listenAddresses(v);
  },
  web_admin_port: (c, v, fail) => {
    c.webAdminPort = parseInteger(v, fail, 0, 65535);
  },
  recovery_1st_stage_command: (c, v) => {
    c.recovery1stStageCommand = v;
  },
  recovery_2nd_stage_command: (c, v) => {
    c.recovery2ndStageCommand = v;
  },
  recovery_timeout: (c, v, fail) => {
    c.recoveryTimeout = parseInteger(v, fail, 1, 86400);
  },
  client_idle_limit_in_recovery: (c, v, fail) => {
    c.clientIdleLimitInRecovery = parseInteger(v, fail, -1, 86400);
  },
  in_doubt_recovery_interval: (c, v, fail) => {
    c.inDoubtRecoveryInterval = parseInteger(v, fail, 0, 86400);
  },
  log_min_messages: (c, v, fail) => {
    const level = v.toLowerCase();
    if (!isLogLevel(level)) return fail(`invalid log level "${v}" (expected debug, info, warning, error or fatal)`);
    c.logMinMessages = level;
  },
  metrics_listen_addresses: (c, v) => {
    c.metricsListenAddresses = listenAddresses(v);
  },
  metrics_port: (c, v, fail) => {
    c.metricsPort = parseInteger(v, fail, 0, 65535);
  },
  log_connections: (c, v, fail) => {
    c.logConnections = parseBool(v, fail);
  },
  log_disconnections: (c, v, fail) => {
    c.logDisconnections = parseBool(v, fail);
  },
  log_statement: (c, v, fail) => {
    c.logStatement = parseBool(v, fail);
  },
  log_per_node_statement: (c, v, fail) => {
    c.logPerNodeStatement = parseBool(v, fail);
  },
  failover_command: (c, v) => {
    c.failoverCommand = v;
  },
  failback_command: (c, v) => {
    c.failbackCommand = v;
  },
  logdir: (c, v, fail, baseDir) => {
    if (v === '') fail('empty directory');
    c.logdir = resolve(baseDir, v);
  },
};

/** The parameter names a configuration file may set, besides backend_*N and health_check_*[N]. */
export const parameterNames: readonly string[] = Object.keys(settings);

/** One row of SHOW pool_status: a parameter's pgpool.conf name, its current value, what it does. */
export interface ConfigurationItem {
  readonly item: string;
  readonly value: string;
  readonly description: string;
}

const descriptions: Record<string, [(c: ProxyConfig) => unknown, string]> = {
  listen_addresses: [(c) => c.listenAddresses.join(','), 'host names or IP addresses to listen on'],
  port: [(c) => c.port, 'port number to listen on'],
  num_init_children: [(c) => c.numInitChildren, 'most client sessions served at once'],
  max_pool: [(c) => c.maxPool, 'connections kept per node for each user, database and options (transaction pooling: the most open)'],
  connection_cache: [(c) => c.connectionCache, 'keep node connections for the next session'],
  pool_mode: [(c) => c.poolMode, 'session: a session keeps its node connections; transaction: only while a transaction runs'],
  connection_life_time: [(c) => c.connectionLifeTime, 'seconds a pooled node connection lives (0: no limit)'],
  reset_query_list: [(c) => c.resetQueryList.join(';'), 'statements run before a connection returns to the pool'],
  load_balance_mode: [(c) => c.loadBalanceMode, 'spread reads over the nodes by backend_weight'],
  insert_lock: [(c) => c.insertLock, 'replicated writes that advance a sequence run one at a time per sequence'],
  insert_lock_timeout: [(c) => c.insertLockTimeout, 'seconds a statement in a transaction waits for the insert lock'],
  statement_level_load_balance: [(c) => c.statementLevelLoadBalance, 'choose the read node per statement, not per session'],
  write_function_list: [(c) => c.writeFunctionList.join(','), 'functions whose call makes a SELECT a write'],
  memory_cache_enabled: [(c) => c.memoryCacheEnabled, 'answer repeated SELECTs from the query cache'],
  memqcache_method: [() => 'shmem', 'where the query cache lives: the proxy\'s memory'],
  memqcache_expire: [(c) => c.memqcacheExpire, 'seconds a cached reply lives (0: until a write empties the cache)'],
  memqcache_maxcache: [(c) => c.memqcacheMaxcache, 'largest reply the query cache keeps, in bytes'],
  memqcache_total_size: [(c) => c.memqcacheTotalSize, 'bytes all cached replies may take together'],
  memqcache_shared: [(c) => c.memqcacheShared, 'other proxies share the nodes: writes empty their caches too, through NOTIFY'],
  cache_safe_memqcache_table_list: [(c) => c.cacheSafeMemqcacheTableList.join(','), 'tables whose reads are cached (empty: all not unsafe)'],
  cache_unsafe_memqcache_table_list: [(c) => c.cacheUnsafeMemqcacheTableList.join(','), 'tables whose reads are never cached'],
  client_authentication: [(c) => c.clientAuthentication, 'how clients authenticate: trust, md5 or scram-sha-256'],
  pool_passwd: [(c) => c.poolPasswd ?? '', 'password file for clients and for the nodes'],
  connect_timeout: [(c) => c.connectTimeout, 'seconds to wait for a node to accept a connection'],
  authentication_timeout: [(c) => c.authenticationTimeout, 'seconds a client has to finish start-up and authentication'],
  client_max_message_size: [(c) => c.clientMaxMessageSize, 'largest message accepted from a client, in bytes'],
  merge_memory_limit: [(c) => c.mergeMemoryLimit, 'most bytes of rows one merge that keeps state may hold'],
  intermediate_result_limit: [(c) => c.intermediateResultLimit, 'most bytes of rows one statement may ship between nodes'],
  broadcast_join_limit: [(c) => c.broadcastJoinLimit, 'most rows a broadcast join may copy to every node'],
  recovery_user: [(c) => c.recoveryUser, 'user for in-doubt transaction recovery and online recovery'],
  recovery_1st_stage_command: [(c) => c.recovery1stStageCommand, 'first stage of online recovery'],
  recovery_2nd_stage_command: [(c) => c.recovery2ndStageCommand, 'second stage of online recovery'],
  recovery_timeout: [(c) => c.recoveryTimeout, 'seconds each online recovery stage may take'],
  backend_clustering_mode: [(c) => c.clusteringMode, 'native_replication: writes to every node, partition rules on top; streaming_replication: writes to the primary, reads to its standbys'],
  delay_threshold: [(c) => c.delayThreshold, 'bytes of WAL a standby may lag and still take reads (0: no limit)'],
  delay_threshold_by_time: [(c) => c.delayThresholdByTime, 'milliseconds of replay a standby may lag and still take reads (0: no limit)'],
  sr_check_period: [(c) => c.srCheckPeriod, 'seconds between streaming-replication checks (0: off)'],
  sr_check_user: [(c) => c.srCheckUser, 'user of streaming-replication checks and promotion'],
  sr_check_password: [(c) => (c.srCheckPassword === '' ? '' : '********'), 'password of streaming-replication checks'],
  sr_check_database: [(c) => c.srCheckDatabase, 'database of streaming-replication checks'],
  disable_load_balance_on_write: [(c) => c.disableLoadBalanceOnWrite, 'after a write, which reads stay on the primary'],
  pcp_listen_addresses: [(c) => c.pcpListenAddresses.join(','), 'addresses the PCP server listens on'],
  pcp_port: [(c) => c.pcpPort, 'port of the PCP server'],
  pcp_conf_file: [(c) => c.pcpConfFile ?? '', 'users of the PCP server (user:md5 lines); empty: no PCP server'],
  web_admin_listen_addresses: [(c) => c.webAdminListenAddresses.join(','), 'addresses the web admin page listens on'],
  web_admin_port: [(c) => c.webAdminPort, 'port of the web admin page (0: no page); its users are those of pcp_conf_file'],
  client_idle_limit_in_recovery: [(c) => c.clientIdleLimitInRecovery, 'seconds online recovery waits for open transactions before ending them'],
  in_doubt_recovery_interval: [(c) => c.inDoubtRecoveryInterval, 'seconds between looks for in-doubt prepared transactions'],
  log_min_messages: [(c) => c.logMinMessages, 'least severe log level written'],
  metrics_listen_addresses: [(c) => c.metricsListenAddresses.join(','), 'addresses Prometheus metrics are served on (GET /metrics); empty: not served'],
  metrics_port: [(c) => c.metricsPort, 'port of the Prometheus metrics'],
  log_connections: [(c) => c.logConnections, 'log client connections'],
  log_disconnections: [(c) => c.logDisconnections, 'log client disconnections'],
  log_statement: [(c) => c.logStatement, 'log every client statement'],
  log_per_node_statement: [(c) => c.logPerNodeStatement, 'log every statement sent to each node'],
  failover_command: [(c) => c.failoverCommand, 'command run when a node is detached'],
  failback_command: [(c) => c.failbackCommand, 'command run when a node is attached'],
  logdir: [(c) => c.logdir, 'directory of the pgpool_status file'],
};

const healthCheckDescriptions: [keyof HealthCheckConfig, string, string][] = [
  ['period', 'period', 'seconds between health checks (0: off)'],
  ['timeout', 'timeout', 'seconds one health check attempt may take'],
  ['maxRetries', 'max_retries', 'attempts after a failed health check before the node is detached'],
  ['retryDelay', 'retry_delay', 'seconds between health check attempts'],
  ['user', 'user', 'user of health checks'],
  ['password', 'password', 'password of health checks'],
  ['database', 'database', 'database of health checks'],
];

/** Every parameter with its current value, in pgpool.conf's names (SHOW pool_status); passwords are not shown. */
export function configurationItems(config: ProxyConfig): ConfigurationItem[] {
  const text = (value: unknown) => (typeof value === 'boolean' ? (value ? 'on' : 'off') : String(value));
  const items: ConfigurationItem[] = parameterNames.map((name) => {
    const [value, description] = descriptions[name] ?? [() => '', ''];
    return { item: name, value: text(value(config)), description };
  });
  const healthCheck = (values: Partial<HealthCheckConfig>, suffix: string, scope: string) => {
    for (const [field, name, description] of healthCheckDescriptions) {
      const value = values[field];
      if (value === undefined) continue;
      items.push({ item: `health_check_${name}${suffix}`, value: field === 'password' && value !== '' ? '********' : text(value), description: `${description}${scope}` });
    }
  };
  healthCheck(config.healthCheck, '', '');
  for (const backend of config.backends) {
    items.push(
      { item: `backend_hostname${backend.id}`, value: backend.host, description: `host name or address of node ${backend.id}` },
      { item: `backend_port${backend.id}`, value: String(backend.port), description: `port of node ${backend.id}` },
      { item: `backend_weight${backend.id}`, value: String(backend.weight), description: `load balance weight of node ${backend.id}` },
      { item: `backend_data_directory${backend.id}`, value: backend.dataDirectory ?? '', description: `data directory of node ${backend.id}` },
      { item: `backend_flag${backend.id}`, value: flagsText(backend.flags ?? defaultBackendFlags), description: `failover flags of node ${backend.id}` },
      { item: `backend_application_name${backend.id}`, value: backend.applicationName ?? '', description: `application name node ${backend.id} streams under as a standby` },
    );
    healthCheck(config.healthCheckPerNode[backend.id] ?? {}, String(backend.id), ` (node ${backend.id})`);
  }
  items.push(...watchdogItems(config.watchdog));
  return items;
}

const backendKey = /^backend_(hostname|port|weight|data_directory|flag|application_name)(\d+)$/;

/** backend_flagN's text: pgpool's names joined by '|'. */
export function flagsText(flags: BackendFlags): string {
  return [flags.allowToFailover ? 'ALLOW_TO_FAILOVER' : 'DISALLOW_TO_FAILOVER', ...(flags.alwaysPrimary ? ['ALWAYS_PRIMARY'] : [])].join('|');
}

function parseFlags(value: string, fail: (message: string) => never): BackendFlags {
  let allowToFailover: boolean | null = null;
  let alwaysPrimary = false;
  for (const word of value.split('|').map((w) => w.trim().toUpperCase()).filter((w) => w !== '')) {
    if (word === 'ALWAYS_PRIMARY') alwaysPrimary = true;
    else if (word === 'ALLOW_TO_FAILOVER' || word === 'DISALLOW_TO_FAILOVER') {
      const allow = word === 'ALLOW_TO_FAILOVER';
      if (allowToFailover !== null && allowToFailover !== allow) fail('ALLOW_TO_FAILOVER and DISALLOW_TO_FAILOVER exclude each other');
      allowToFailover = allow;
    } else fail(`invalid flag "${word}" (expected ALLOW_TO_FAILOVER, DISALLOW_TO_FAILOVER or ALWAYS_PRIMARY, joined by |)`);
  }
  return { allowToFailover: allowToFailover ?? true, alwaysPrimary };
}
const healthCheckKey = /^health_check_(period|timeout|max_retries|retry_delay|user|password|database)(\d*)$/;

const healthCheckFields: Record<string, (value: string, fail: (message: string) => never) => Partial<HealthCheckConfig>> = {
  period: (v, fail) => ({ period: parseInteger(v, fail, 0, 86400) }),
  timeout: (v, fail) => ({ timeout: parseInteger(v, fail, 0, 86400) }),
  max_retries: (v, fail) => ({ maxRetries: parseInteger(v, fail, 0, 1000) }),
  retry_delay: (v, fail) => ({ retryDelay: parseInteger(v, fail, 0, 86400) }),
  user: (v) => ({ user: v }),
  password: (v) => ({ password: v }),
  database: (v) => ({ database: v }),
};

/** The health-check settings of one node: its `_N` overrides over the global ones. */
export function healthCheckFor(config: ProxyConfig, nodeId: number): HealthCheckConfig {
  return { ...config.healthCheck, ...config.healthCheckPerNode[nodeId] };
}

/** Builds a config from pgpool.conf text; throws PgError F0000 naming the file and line on any problem. */
export function configFromText(text: string, fileName: string, baseDir = '.'): ProxyConfig {
  const config = defaultConfig();
  const backends = new Map<number, BackendEntry>();
  const seen = new Map<string, number>();
  const perNodeLines = new Map<number, number>();
  const watchdogEntries = newWatchdogEntries();
  for (const entry of parseConfFile(text, fileName)) {
    const fail = (message: string): never => {
      throw confError(fileName, entry.line, `${message} for parameter "${entry.name}"`);
    };
    const previous = seen.get(entry.name);
    if (previous !== undefined) {
      throw confError(fileName, entry.line, `parameter "${entry.name}" is set twice (first on line ${previous})`);
    }
    seen.set(entry.name, entry.line);
    const match = backendKey.exec(entry.name);
    if (match) {
      applyBackendEntry(backends, match[1], Number(match[2]), entry, fail);
      continue;
    }
    const healthCheck = healthCheckKey.exec(entry.name);
    if (healthCheck) {
      const values = healthCheckFields[healthCheck[1]](entry.value, fail);
      if (healthCheck[2] === '') Object.assign(config.healthCheck, values);
      else {
        const id = Number(healthCheck[2]);
        config.healthCheckPerNode[id] = { ...config.healthCheckPerNode[id], ...values };
        perNodeLines.set(id, entry.line);
      }
      continue;
    }
    if (applyWatchdogEntry(config.watchdog, watchdogEntries, entry.name, entry.value, entry.line, fail)) continue;
    const setter = settings[entry.name];
    if (!setter) throw confError(fileName, entry.line, `unrecognized configuration parameter "${entry.name}"`);
    setter(config, entry.value, fail, baseDir);
  }
  const ids = [...backends.keys()].sort((a, b) => a - b);
  ids.forEach((id, index) => {
    const b = backends.get(id)!;
    if (id !== index) throw confError(fileName, b.line, `backend ${id} is defined but backend ${index} is not (backends are numbered from 0 without gaps)`);
    if (!b.host) throw confError(fileName, b.line, `backend_hostname${id} is missing`);
  });
  config.backends = ids.map((id) => {
    const b = backends.get(id)!;
    return { id, host: b.host!, port: b.port ?? 5432, weight: b.weight ?? 1, dataDirectory: b.dataDirectory ?? null, flags: b.flags ?? defaultBackendFlags, applicationName: b.applicationName ?? '' };
  });
  if (config.backends.length === 0) throw confError(fileName, 1, 'no backend is configured (set backend_hostname0)');
  const alwaysPrimary = config.backends.filter((b) => b.flags?.alwaysPrimary);
  if (alwaysPrimary.length > 1) throw confError(fileName, backends.get(alwaysPrimary[1].id)!.line, `backends ${alwaysPrimary.map((b) => b.id).join(' and ')} are both flagged ALWAYS_PRIMARY: there is one primary`);
  if (config.webAdminPort !== 0 && config.pcpConfFile === null) {
    throw confError(fileName, seen.get('web_admin_port')!, 'web_admin_port is set but pcp_conf_file is not: the web admin page logs in with the users of pcp.conf');
  }
  const watchdogError = finishWatchdogConfig(config.watchdog, watchdogEntries);
  if (watchdogError) throw confError(fileName, watchdogError.line, watchdogError.message);
  for (const [id, line] of perNodeLines) {
    if (id >= config.backends.length) throw confError(fileName, line, `a health_check parameter names backend ${id}, which is not configured`);
  }
  return config;
}

interface BackendEntry {
  host?: string;
  port?: number;
  weight?: number;
  dataDirectory?: string;
  flags?: BackendFlags;
  applicationName?: string;
  line: number;
}

function applyBackendEntry(
  backends: Map<number, BackendEntry>,
  field: string,
  id: number,
  entry: ConfEntry,
  fail: (message: string) => never,
): void {
  const b = backends.get(id) ?? { line: entry.line };
  backends.set(id, b);
  switch (field) {
    case 'hostname':
      if (entry.value === '') fail('empty host name');
      b.host = entry.value;
      break;
    case 'port':
      b.port = parseInteger(entry.value, fail, 1, 65535);
      break;
    case 'weight': {
      const weight = Number(entry.value);
      if (!/^\d+(\.\d+)?$/.test(entry.value) || !Number.isFinite(weight)) fail(`invalid weight "${entry.value}"`);
      b.weight = weight;
      break;
    }
    case 'data_directory':
      b.dataDirectory = entry.value;
      break;
    case 'flag':
      b.flags = parseFlags(entry.value, fail);
      break;
    case 'application_name':
      b.applicationName = entry.value;
      break;
  }
}

export function loadConfigFile(path: string): ProxyConfig {
  return configFromText(readFileSync(path, 'utf8'), path, dirname(resolve(path)));
}

/** pgpool.conf text for a config: what the sandbox writes, and what configFromText reads back. */
export function configToText(config: ProxyConfig): string {
  const quote = (v: string | number | boolean) =>
    typeof v === 'string' ? `'${v.replace(/'/g, "''")}'` : typeof v === 'boolean' ? (v ? 'on' : 'off') : String(v);
  const lines = [
    `backend_clustering_mode = ${quote(config.clusteringMode)}`,
    `listen_addresses = ${quote(config.listenAddresses.join(','))}`,
    `port = ${config.port}`,
    `num_init_children = ${config.numInitChildren}`,
    `max_pool = ${config.maxPool}`,
    `connection_cache = ${quote(config.connectionCache)}`,
    `pool_mode = ${quote(config.poolMode)}`,
    `connection_life_time = ${config.connectionLifeTime}`,
    `reset_query_list = ${quote(config.resetQueryList.join('; '))}`,
    `load_balance_mode = ${quote(config.loadBalanceMode)}`,
    `statement_level_load_balance = ${quote(config.statementLevelLoadBalance)}`,
    `insert_lock = ${quote(config.insertLock)}`,
    `insert_lock_timeout = ${config.insertLockTimeout}`,
    `write_function_list = ${quote(config.writeFunctionList.join(','))}`,
    `memory_cache_enabled = ${quote(config.memoryCacheEnabled)}`,
    `memqcache_expire = ${config.memqcacheExpire}`,
    `memqcache_maxcache = ${config.memqcacheMaxcache}`,
    `memqcache_total_size = ${config.memqcacheTotalSize}`,
    `memqcache_shared = ${quote(config.memqcacheShared)}`,
    `cache_safe_memqcache_table_list = ${quote(config.cacheSafeMemqcacheTableList.join(','))}`,
    `cache_unsafe_memqcache_table_list = ${quote(config.cacheUnsafeMemqcacheTableList.join(','))}`,
    `client_authentication = ${quote(config.clientAuthentication)}`,
    `pool_passwd = ${quote(config.poolPasswd ?? '')}`,
    `connect_timeout = ${config.connectTimeout}`,
    `authentication_timeout = ${config.authenticationTimeout}`,
    `client_max_message_size = ${config.clientMaxMessageSize}`,
    `merge_memory_limit = ${config.mergeMemoryLimit}`,
    `intermediate_result_limit = ${config.intermediateResultLimit}`,
    `broadcast_join_limit = ${config.broadcastJoinLimit}`,
    `recovery_user = ${quote(config.recoveryUser)}`,
    `in_doubt_recovery_interval = ${config.inDoubtRecoveryInterval}`,
    `pcp_listen_addresses = ${quote(config.pcpListenAddresses.join(','))}`,
    `pcp_port = ${config.pcpPort}`,
    `pcp_conf_file = ${quote(config.pcpConfFile ?? '')}`,
    `web_admin_listen_addresses = ${quote(config.webAdminListenAddresses.join(','))}`,
    `web_admin_port = ${config.webAdminPort}`,
    `recovery_1st_stage_command = ${quote(config.recovery1stStageCommand)}`,
    `recovery_2nd_stage_command = ${quote(config.recovery2ndStageCommand)}`,
    `recovery_timeout = ${config.recoveryTimeout}`,
    `client_idle_limit_in_recovery = ${config.clientIdleLimitInRecovery}`,
    ...healthCheckLines(config.healthCheck, '', quote),
    `failover_command = ${quote(config.failoverCommand)}`,
    `failback_command = ${quote(config.failbackCommand)}`,
    `logdir = ${quote(config.logdir)}`,
    `log_min_messages = ${quote(config.logMinMessages)}`,
    `metrics_listen_addresses = ${quote(config.metricsListenAddresses.join(','))}`,
    `metrics_port = ${config.metricsPort}`,
    `log_connections = ${quote(config.logConnections)}`,
    `log_disconnections = ${quote(config.logDisconnections)}`,
    `log_statement = ${quote(config.logStatement)}`,
    `log_per_node_statement = ${quote(config.logPerNodeStatement)}`,
    `delay_threshold = ${config.delayThreshold}`,
    `delay_threshold_by_time = ${config.delayThresholdByTime}`,
    `sr_check_period = ${config.srCheckPeriod}`,
    `sr_check_user = ${quote(config.srCheckUser)}`,
    `sr_check_password = ${quote(config.srCheckPassword)}`,
    `sr_check_database = ${quote(config.srCheckDatabase)}`,
    `disable_load_balance_on_write = ${quote(config.disableLoadBalanceOnWrite)}`,
  ];
  for (const b of config.backends) {
    lines.push(`backend_hostname${b.id} = ${quote(b.host)}`, `backend_port${b.id} = ${b.port}`, `backend_weight${b.id} = ${b.weight}`);
    if (b.dataDirectory) lines.push(`backend_data_directory${b.id} = ${quote(b.dataDirectory)}`);
    lines.push(`backend_flag${b.id} = ${quote(flagsText(b.flags ?? defaultBackendFlags))}`);
    if (b.applicationName) lines.push(`backend_application_name${b.id} = ${quote(b.applicationName)}`);
    lines.push(...healthCheckLines(config.healthCheckPerNode[b.id] ?? {}, String(b.id), quote));
  }
  lines.push(...watchdogItems(config.watchdog).map((item) => `${item.item} = ${quote(item.value)}`));
  return lines.join('\n') + '\n';
}

function healthCheckLines(values: Partial<HealthCheckConfig>, suffix: string, quote: (v: string) => string): string[] {
  const names: [keyof HealthCheckConfig, string][] = [
    ['period', 'period'], ['timeout', 'timeout'], ['maxRetries', 'max_retries'], ['retryDelay', 'retry_delay'],
    ['user', 'user'], ['password', 'password'], ['database', 'database'],
  ];
  return names
    .filter(([field]) => values[field] !== undefined)
    .map(([field, name]) => {
      const value = values[field]!;
      return `health_check_${name}${suffix} = ${typeof value === 'string' ? quote(value) : value}`;
    });
}
