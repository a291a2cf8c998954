// The web admin page end to end, in headless Chromium (Debian's, driven by playwright-core) against a real 2-node
// cluster: log-in with pcp.conf's users, the overview's nodes, pools, running queries and partition rules with
// their rows per node, and the Detach, Attach and Recover buttons checked through SHOW pool_nodes. At the HTTP
// level: no POST without a log-in and the session's CSRF token, unknown paths 404, and malformed requests end
// without harming the proxy. With PARAPOOL_SCREENSHOTS=<dir> the browser tests write their screenshots there
// (docs/ holds the ones the documentation shows).

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { chromium, type Browser, type Page } from 'playwright-core';
import { defaultConfig } from '../../src/config/config';
import { freePort } from '../../src/cluster/local-postgres';
import { recoveryScripts } from '../../src/cluster/sandbox';
import { ProxyServer } from '../../src/server/proxy-server';
import { rowsOf, startTestCluster, type TestCluster } from '../support/test-cluster';

const adminUser = 'operator';
const adminPassword = 'web secret';
const screenshots = process.env.PARAPOOL_SCREENSHOTS ? resolve(process.env.PARAPOOL_SCREENSHOTS) : null;

let cluster: TestCluster;
let usersDir: string;
let usersFile: string;
let browser: Browser;
let page: Page;
let base: string;

before(async () => {
  usersDir = mkdtempSync(join(tmpdir(), 'parapool-web-'));
  usersFile = join(usersDir, 'pcp.conf');
  writeFileSync(usersFile, `# user:md5(password)\n${adminUser}:${createHash('md5').update(adminPassword).digest('hex')}\n`);
  const webPort = await freePort();
  cluster = await startTestCluster({
    nodes: 2,
    configure: (config) => {
      config.pcpPort = 0;
      config.pcpConfFile = usersFile;
      config.webAdminPort = webPort;
      config.recovery1stStageCommand = join(recoveryScripts, 'recovery_1st_stage');
      config.recovery2ndStageCommand = join(recoveryScripts, 'recovery_2nd_stage');
      config.recoveryTimeout = 60;
    },
  });
  base = `http://127.0.0.1:${cluster.proxy.web!.port}`;
  browser = await chromium.launch({ executablePath: '/usr/bin/chromium', args: ['--no-sandbox'] });
  page = await (await browser.newContext({ viewport: { width: 1200, height: 800 } })).newPage();
  if (screenshots) mkdirSync(screenshots, { recursive: true });
});

after(async () => {
  await browser?.close();
  await cluster?.stop();
  rmSync(usersDir, { recursive: true, force: true });
});

async function statuses(): Promise<string[]> {
  const client = await cluster.connect();
  try {
    return (await rowsOf(client, 'show pool_nodes')).map((row) => row[3]!);
  } finally {
    await client.end();
  }
}

/** The cells of a section's table, row by row, keyed by column. */
async function tableOf(section: string): Promise<Record<string, string>[]> {
  return page.$$eval(`#${section} table`, (tables) => {
    const table = tables[0];
    if (!table) return [];
    const columns = [...table.querySelectorAll('thead th')].map((th) => th.textContent ?? '');
    return [...table.querySelectorAll('tbody tr')].map((tr) => Object.fromEntries([...tr.querySelectorAll('td')].map((td, i) => [columns[i], (td.textContent ?? '').trim()])));
  });
}

async function screenshot(name: string): Promise<void> {
  if (screenshots) await page.screenshot({ path: join(screenshots, name) });
}

/** Logs in over plain HTTP; returns the session cookie and the overview's CSRF token. */
async function logIn(): Promise<{ cookie: string; csrf: string }> {
  const response = await fetch(`${base}/login`, { method: 'POST', body: new URLSearchParams({ user: adminUser, password: adminPassword }), redirect: 'manual' });
  assert.equal(response.status, 303);
  const cookie = response.headers.get('set-cookie')!.split(';')[0];
  const overview = await (await fetch(`${base}/`, { headers: { cookie } })).text();
  return { cookie, csrf: /name="csrf" value="([^"]+)"/.exec(overview)![1] };
}

/** Sends bytes on a fresh connection; resolves with whatever came back before the server closed it. */
function raw(bytes: string): Promise<string> {
  return new Promise((resolvePromise) => {
    const socket = connect({ host: '127.0.0.1', port: cluster.proxy.web!.port });
    const chunks: Buffer[] = [];
    socket.on('data', (chunk) => chunks.push(chunk));
    socket.on('close', () => resolvePromise(Buffer.concat(chunks).toString('latin1')));
    socket.on('error', () => undefined);
    socket.on('connect', () => socket.end(bytes));
    socket.setTimeout(10_000, () => socket.destroy());
  });
}

test('over HTTP: a wrong password is a 401, POSTs need a log-in and the CSRF token, unknown paths are 404, garbage harms nothing', async () => {
  const redirected = await fetch(`${base}/`, { redirect: 'manual' });
  assert.equal(redirected.status, 303);
  assert.equal(redirected.headers.get('location'), '/login');
  const wrong = await fetch(`${base}/login`, { method: 'POST', body: new URLSearchParams({ user: adminUser, password: 'guess' }), redirect: 'manual' });
  assert.equal(wrong.status, 401);
  assert.equal(wrong.headers.get('set-cookie'), null);
  assert.match(await wrong.text(), /user name or password is wrong/);
  assert.equal((await fetch(`${base}/login`, { method: 'POST', body: new URLSearchParams({ user: 'nobody', password: adminPassword }) })).status, 401);

  const { cookie, csrf } = await logIn();
  assert.match(cookie, /^parapool_admin=[\w-]{43}$/);
  const login = await fetch(`${base}/login`, { method: 'POST', body: new URLSearchParams({ user: adminUser, password: adminPassword }), redirect: 'manual' });
  assert.match(login.headers.get('set-cookie')!, /; HttpOnly; SameSite=Strict; Path=\//);

  const detach = (headers: Record<string, string>, form: Record<string, string>) => fetch(`${base}/nodes/1/detach`, { method: 'POST', headers, body: new URLSearchParams(form), redirect: 'manual' });
  assert.equal((await detach({}, { csrf })).status, 403, 'no session');
  assert.equal((await detach({ cookie: 'parapool_admin=forged' }, { csrf })).status, 403, 'an unknown session');
  assert.equal((await detach({ cookie }, {})).status, 403, 'no CSRF token');
  assert.equal((await detach({ cookie }, { csrf: csrf.slice(1) + 'x' })).status, 403, 'a wrong CSRF token');
  assert.deepEqual(await statuses(), ['up', 'up'], 'no refused POST detached the node');

  assert.equal((await fetch(`${base}/no/such/page`, { headers: { cookie } })).status, 404);
  assert.equal((await fetch(`${base}/nodes/1/detach`, { headers: { cookie } })).status, 405);
  assert.equal((await fetch(`${base}/nodes/1/explode`, { method: 'POST', headers: { cookie }, body: new URLSearchParams({ csrf }) })).status, 404);
  const huge = await fetch(`${base}/login`, { method: 'POST', body: 'user=' + 'x'.repeat(100_000) }).catch(() => null);
  assert.ok(huge === null || huge.status === 413, `a huge form is refused (${huge?.status})`);
  const unknownNode = await fetch(`${base}/nodes/7/detach`, { method: 'POST', headers: { cookie }, body: new URLSearchParams({ csrf }), redirect: 'manual' });
  assert.equal(unknownNode.status, 303);
  assert.match(await (await fetch(`${base}/`, { headers: { cookie } })).text(), /detach of node 7 failed: there is no node 7/);

  for (const bytes of [
    'GARBAGE\r\n\r\n',
    '\0\x01\x02\xff\xfe\r\n\r\n',
    'GET / HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n',
    'POST /login HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nus', // a body cut short
    `GET /${'a'.repeat(100_000)} HTTP/1.1\r\nHost: x\r\n\r\n`,
    'GET http://[::1 HTTP/1.1\r\nHost: x\r\n\r\n',
    `GET / HTTP/1.1\r\nHost: x\r\nCookie: ${'parapool_admin=;'.repeat(200)}\r\n\r\n`,
  ]) {
    const reply = await raw(bytes);
    assert.ok(reply === '' || /^HTTP\/1\.1 (303|400|404|413|431) /.test(reply), `${JSON.stringify(bytes.slice(0, 40))}: ${reply.slice(0, 80)}`);
  }
  assert.equal((await fetch(`${base}/login`)).status, 200, 'the page still serves');
  const client = await cluster.connect();
  assert.deepEqual(await rowsOf(client, 'select 1'), [['1']], 'the proxy still serves');
  await client.end();

  // What clients send reaches the page as text, never as markup.
  const writer = await cluster.connect();
  const running = writer.query("select pg_sleep(1), '<script>alert(1)</script>' as \"<b>\"");
  await sleep(300);
  const overview = await (await fetch(`${base}/`, { headers: { cookie } })).text();
  await running;
  await writer.end();
  assert.ok(overview.includes('&lt;script&gt;alert(1)&lt;/script&gt;'), 'the running query is listed, escaped');
  assert.ok(!overview.includes('<script') && !overview.includes('as "<b>"') && overview.includes('as &quot;&lt;b&gt;&quot;'));

  const logout = await fetch(`${base}/logout`, { method: 'POST', headers: { cookie }, body: new URLSearchParams({ csrf }), redirect: 'manual' });
  assert.equal(logout.status, 303);
  assert.equal((await fetch(`${base}/`, { headers: { cookie }, redirect: 'manual' })).status, 303, 'the session ended with the log-out');
});

test('a proxy with web_admin_port but no pcp_conf_file refuses to start, saying why', async () => {
  const config = defaultConfig();
  config.port = 0;
  config.backends = [{ id: 0, host: '127.0.0.1', port: cluster.nodes[0].port, weight: 1, dataDirectory: null }];
  config.webAdminPort = 1;
  config.logMinMessages = cluster.config.logMinMessages; // the logger is the process's: keep the tests' level
  await assert.rejects(new ProxyServer(config).start(), /web_admin_port is set but pcp_conf_file is not/);
  config.pcpConfFile = join(usersDir, 'missing.conf');
  await assert.rejects(new ProxyServer(config).start(), /cannot read its users from pcp_conf_file ".*missing\.conf"/);
});

test('in Chromium: a wrong password shows the log-in again with an error; the right one shows nodes, pools and the cache', async () => {
  await page.goto(`${base}/`);
  assert.equal(new URL(page.url()).pathname, '/login');
  await page.fill('#user', adminUser);
  await page.fill('#password', 'not it');
  const [refused] = await Promise.all([page.waitForNavigation(), page.click('button[type=submit]')]);
  assert.equal(refused?.status(), 401);
  assert.equal(await page.textContent('.login .error'), 'user name or password is wrong');

  const session = await cluster.connect(); // a session holding a connection to each node, for the pools
  await session.query('select 1');
  await page.fill('#password', adminPassword);
  await Promise.all([page.waitForNavigation(), page.click('button[type=submit]')]);
  assert.equal(new URL(page.url()).pathname, '/');
  const nodes = await tableOf('nodes');
  assert.deepEqual(nodes.map((n) => [n.node_id, n.port, n.status, n.role]), [
    ['0', String(cluster.nodes[0].port), 'up', 'main'],
    ['1', String(cluster.nodes[1].port), 'up', 'replica'],
  ]);
  assert.deepEqual(nodes.map((n) => n.actions), ['Detach', 'Detach']);
  const pools = await tableOf('pools');
  assert.ok(pools.some((p) => p.backend_id === '0' && p.status === 'Idle') && pools.some((p) => p.backend_id === '1'), JSON.stringify(pools));
  assert.ok((await tableOf('sessions')).length >= 1);
  assert.match((await page.textContent('#cache'))!, /disabled/);
  assert.equal((await tableOf('cache'))[0].num_cache_hits, '0');
  assert.match((await page.textContent('#rules'))!, /none/);
  await session.end();
});

test('in Chromium: Detach takes node 1 out of service, Attach brings it back', async () => {
  await page.goto(`${base}/`);
  await Promise.all([page.waitForNavigation(), page.click('button[aria-label="Detach node 1"]')]);
  assert.equal(await page.textContent('#flash'), 'node 1 detached');
  assert.deepEqual(await statuses(), ['up', 'down']);
  const nodes = await tableOf('nodes');
  assert.equal(nodes[1].status, 'down');
  assert.match(nodes[1].status_reason, /detached by hand \(web admin page, user operator\)/);
  assert.deepEqual(nodes.map((n) => n.actions), ['Detach', 'AttachRecover']);

  await Promise.all([page.waitForNavigation(), page.click('button[aria-label="Detach node 0"]')]);
  assert.match((await page.textContent('#flash'))!, /detach of node 0 failed: .*last node in service/);
  assert.deepEqual(await statuses(), ['up', 'down']);

  await Promise.all([page.waitForNavigation(), page.click('button[aria-label="Attach node 1"]')]);
  assert.equal(await page.textContent('#flash'), 'node 1 attached');
  assert.deepEqual(await statuses(), ['up', 'up']);
  await page.reload();
  assert.equal(await page.$('#flash'), null, 'the result shows once');
});

test('in Chromium: Recover rebuilds a detached node online, showing the recovery as it goes', async () => {
  const client = await cluster.connect();
  await client.query('create table ledger (id serial primary key, n int)');
  await page.goto(`${base}/`);
  await Promise.all([page.waitForNavigation(), page.click('button[aria-label="Detach node 1"]')]);
  await client.query('insert into ledger (n) select g from generate_series(1, 100) g'); // node 1 misses these
  await Promise.all([page.waitForNavigation({ timeout: 180_000 }), page.click('button[aria-label="Recover node 1"]')]);
  assert.match((await page.textContent('#result'))!, /node 1 recovered and attached/);
  const progress = await page.$$eval('#progress li', (items) => items.map((li) => li.textContent ?? ''));
  assert.match(progress.join('\n'), /first stage[\s\S]*second stage/);
  await screenshot('web-admin-recovery.png');
  assert.deepEqual(await statuses(), ['up', 'up']);
  await client.query('insert into ledger (n) values (101)');
  await client.end();
  const sums = await cluster.onEachNode('select count(*), sum(id), sum(n) from ledger');
  assert.deepEqual(sums[1], sums[0]);
  assert.deepEqual(sums[0], [['101', '5151', '5151']]);

  await Promise.all([page.waitForNavigation(), page.click('text=Back to the overview')]);
  assert.match((await page.textContent('#flash'))!, /^node 1 recovered and attached/);
});

test('in Chromium: a distributed table shows with its rows per node, and a running query with its fragments', async () => {
  const client = await cluster.connect();
  await client.query('create table orders (id int primary key, amount int)');
  await client.query("select parapool.distribute_table('orders', 'id')");
  await client.query('insert into orders select g, g * 10 from generate_series(1, 1000) g');
  const counts = (await cluster.onEachNode('select count(*) from orders')).map((rows) => rows[0][0]);

  const sleeper = await cluster.connect();
  const running = sleeper.query('select pg_sleep(2), count(*) from orders');
  await sleep(500);
  await page.goto(`${base}/`);
  const queries = await tableOf('queries');
  await running;
  await sleeper.end();
  assert.ok(queries.some((q) => /pg_sleep\(2\)/.test(q.query) && q.state === 'running'), JSON.stringify(queries));
  const rules = await tableOf('rules');
  const orders = rules.find((r) => r.table_name === 'public.orders');
  assert.deepEqual(orders && [orders.distribution, orders.method, orders.key_column, orders.rows_per_node, orders.total_rows], ['distributed', 'hash', 'id', `0:${counts[0]},1:${counts[1]}`, '1000']);
  await screenshot('web-admin-overview.png');

  const other = await page.goto(`${base}/?database=no_such_database`);
  assert.equal(other?.status(), 200);
  assert.match((await page.textContent('#rules'))!, /the rules could not be read: .*no_such_database/);
  await client.end();
});
