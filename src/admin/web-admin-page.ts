// The web admin page's HTML: plain server-rendered pages over the same tables the SHOW commands answer, so the
// page and SHOW never disagree on a column. N.B. every value that reaches the HTML goes through `escapeHtml`: node
// names, queries and error messages come from clients and operators, and the page runs with a log-in behind it.

import type { NodeCommandName } from './node-commands';
import type { AdminTable } from './show-commands';

export function escapeHtml(text: string): string {
  return text.replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]!);
}

/** A message shown once at the top of the overview, after an action redirected there. */
export interface FlashMessage {
  readonly kind: 'ok' | 'error';
  readonly text: string;
  readonly lines?: readonly string[];
}

/** What the overview shows; the tables are the SHOW commands' own. */
export interface OverviewView {
  readonly version: string;
  readonly user: string;
  readonly csrfToken: string;
  readonly flash: FlashMessage | null;
  /** Seconds between reloads (a meta refresh), or null for none. */
  readonly refreshSeconds: number | null;
  readonly nodes: AdminTable;
  /** Without recovery_1st_stage_command a recovery can only fail: its button is shown disabled. */
  readonly recoveryConfigured: boolean;
  readonly database: string;
  readonly rules: AdminTable | { readonly error: string };
  readonly queries: AdminTable;
  readonly processes: AdminTable;
  readonly pools: AdminTable;
  readonly cache: { readonly enabled: boolean; readonly table: AdminTable };
  readonly healthChecks: AdminTable;
}

const style = `
body { font: 14px/1.4 system-ui, sans-serif; margin: 0; color: #1d232a; background: #f4f6f8; }
header { background: #22384f; color: #fff; padding: 10px 24px; display: flex; align-items: center; gap: 24px; }
header h1 { font-size: 18px; margin: 0; font-weight: 600; }
header .who { margin-left: auto; }
header form { display: inline; }
header a { color: #cfe3f7; }
main { padding: 8px 24px 24px; }
section { background: #fff; border: 1px solid #d6dde4; border-radius: 6px; padding: 4px 16px 12px; margin: 14px 0; overflow-x: auto; }
h2 { font-size: 16px; margin: 10px 0 8px; }
summary h2 { display: inline-block; }
h2 small { font-weight: normal; color: #5b6773; }
table { border-collapse: collapse; font-size: 12.5px; }
th, td { border-bottom: 1px solid #e3e8ed; padding: 3px 8px; text-align: left; white-space: nowrap; vertical-align: top; }
th { background: #eef2f5; font-weight: 600; white-space: normal; vertical-align: bottom; }
td.query { white-space: pre-wrap; max-width: 420px; font-family: ui-monospace, monospace; }
td.status-up { color: #11692d; font-weight: 600; }
td.status-down { color: #a3161d; font-weight: 600; }
.empty { color: #5b6773; font-style: italic; margin: 4px 0; }
.flash { padding: 8px 12px; border-radius: 6px; margin: 14px 0 0; }
.flash.ok { background: #e3f4e8; border: 1px solid #9bd3ab; }
.flash.error { background: #fbe6e7; border: 1px solid #e5a3a7; }
.flash ul, .progress { margin: 4px 0 0; padding-left: 20px; font-family: ui-monospace, monospace; font-size: 12.5px; }
button { font: inherit; font-size: 12.5px; padding: 2px 10px; cursor: pointer; border: 1px solid #8796a5; border-radius: 4px; background: #fff; }
button:disabled { cursor: not-allowed; color: #98a2ac; border-color: #ccd3da; }
button.detach { border-color: #c0474d; color: #a3161d; }
button.attach, button.recover { border-color: #3a8a52; color: #11692d; }
td.actions form { display: inline; margin-right: 4px; }
.login { max-width: 320px; margin: 80px auto; background: #fff; border: 1px solid #d6dde4; border-radius: 6px; padding: 20px 24px; }
.login label { display: block; margin: 10px 0 2px; }
.login input { width: 100%; box-sizing: border-box; font: inherit; padding: 4px 6px; }
.login button { margin-top: 14px; font-size: 14px; padding: 4px 16px; }
.login .error { color: #a3161d; }
`;

function document(title: string, body: string, refreshSeconds: number | null = null): string {
  return (
    '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">' +
    (refreshSeconds !== null ? `<meta http-equiv="refresh" content="${refreshSeconds}">` : '') +
    `<title>${escapeHtml(title)}</title><style>${style}</style></head><body>${body}</body></html>\n`
  );
}

export function loginPage(options: { error?: string; user?: string } = {}): string {
  return document(
    'parapool: log in',
    '<form class="login" method="post" action="/login"><h2>parapool administration</h2>' +
      (options.error ? `<p class="error" role="alert">${escapeHtml(options.error)}</p>` : '') +
      `<label for="user">User</label><input id="user" name="user" autocomplete="username" required value="${escapeHtml(options.user ?? '')}">` +
      '<label for="password">Password</label><input id="password" name="password" type="password" autocomplete="current-password" required>' +
      '<button type="submit">Log in</button></form>',
  );
}

/** A page for a status other than 200 (404, 403, 400 ...), with a way back. */
export function messagePage(title: string, message: string): string {
  return document(`parapool: ${title}`, `<main><section><h2>${escapeHtml(title)}</h2><p>${escapeHtml(message)}</p><p><a href="/">Back to the overview</a></p></section></main>`);
}

/** Renders an AdminTable; `cellClass` styles a cell by its column, `extra` puts a column first (the node buttons, in sight on a narrow screen). */
function tableHtml(table: AdminTable, options: { cellClass?: (column: string, value: string) => string | null; extra?: { title: string; cell: (row: (string | null)[]) => string } } = {}): string {
  if (table.rows.length === 0) return '<p class="empty">none</p>';
  // SHOW's column names, breakable after their underscores so that wide tables fit.
  const head = (options.extra ? `<th>${escapeHtml(options.extra.title)}</th>` : '') + table.columns.map((c) => `<th>${escapeHtml(c).replace(/_/g, '_<wbr>')}</th>`).join('');
  const rows = table.rows.map((row) => {
    const cells = row.map((value, index) => {
      const text = value ?? '';
      const cls = options.cellClass?.(table.columns[index], text);
      return `<td${cls ? ` class="${escapeHtml(cls)}"` : ''}>${escapeHtml(text)}</td>`;
    });
    if (options.extra) cells.unshift(`<td class="actions">${options.extra.cell(row)}</td>`);
    return `<tr>${cells.join('')}</tr>`;
  });
  return `<table><thead><tr>${head}</tr></thead><tbody>${rows.join('')}</tbody></table>`;
}

const actionLabels: Record<NodeCommandName, string> = { detach_node: 'Detach', attach_node: 'Attach', recover_node: 'Recover', promote_node: 'Promote' };

/** The path a node button posts to: /nodes/1/detach. */
export function actionPath(name: NodeCommandName, nodeId: string | number): string {
  return `/nodes/${nodeId}/${name.replace('_node', '')}`;
}

function actionForm(name: NodeCommandName, nodeId: string, csrfToken: string, disabledReason: string | null = null): string {
  const label = actionLabels[name];
  const disabled = disabledReason === null ? '' : ` disabled title="${escapeHtml(disabledReason)}"`;
  return (
    `<form method="post" action="${escapeHtml(actionPath(name, nodeId))}"><input type="hidden" name="csrf" value="${escapeHtml(csrfToken)}">` +
    `<button type="submit" class="${label.toLowerCase()}" aria-label="${label} node ${escapeHtml(nodeId)}"${disabled}>${label}</button></form>`
  );
}

function flashHtml(flash: FlashMessage | null, id = 'flash'): string {
  if (!flash) return '';
  const lines = flash.lines && flash.lines.length > 0 ? `<ul>${flash.lines.map((l) => `<li>${escapeHtml(l)}</li>`).join('')}</ul>` : '';
  return `<div id="${id}" class="flash ${flash.kind}" role="status">${escapeHtml(flash.text)}${lines}</div>`;
}

function overviewHref(database: string, refreshSeconds: number | null): string {
  const params = new URLSearchParams();
  if (database !== 'postgres') params.set('database', database);
  if (refreshSeconds !== null) params.set('refresh', String(refreshSeconds));
  const query = params.toString();
  return query === '' ? '/' : `/?${query}`;
}

function refreshLinks(view: OverviewView): string {
  const choices = [null, 5, 30].map((seconds) => {
    const label = seconds === null ? 'off' : `${seconds} s`;
    return seconds === view.refreshSeconds ? `<b>${label}</b>` : `<a href="${escapeHtml(overviewHref(view.database, seconds))}">${label}</a>`;
  });
  return `Auto-refresh: ${choices.join(' · ')}`;
}

export function overviewPage(view: OverviewView): string {
  const nodeId = view.nodes.columns.indexOf('node_id');
  const status = view.nodes.columns.indexOf('status');
  const role = view.nodes.columns.indexOf('role');
  const nodes = tableHtml(view.nodes, {
    cellClass: (column, value) => (column === 'status' || column === 'pg_status' ? `status-${value}` : null),
    extra: {
      title: 'actions',
      cell: (row) => {
        const id = row[nodeId] ?? '';
        // A standby of streaming replication can be switched over to.
        if (row[status] === 'up' && row[role] === 'standby') return actionForm('detach_node', id, view.csrfToken) + actionForm('promote_node', id, view.csrfToken);
        if (row[status] === 'up') return actionForm('detach_node', id, view.csrfToken);
        return actionForm('attach_node', id, view.csrfToken) + actionForm('recover_node', id, view.csrfToken, view.recoveryConfigured ? null : 'recovery_1st_stage_command is not set');
      },
    },
  });
  const rules =
    'error' in view.rules
      ? `<p class="empty">the rules could not be read: ${escapeHtml(view.rules.error)}</p>`
      : tableHtml(view.rules, { cellClass: (column) => (column === 'rows_per_node' ? 'rows' : null) });
  const databaseForm =
    `<form method="get" action="/" class="database">Database <input name="database" value="${escapeHtml(view.database)}" size="14">` +
    (view.refreshSeconds !== null ? `<input type="hidden" name="refresh" value="${view.refreshSeconds}">` : '') +
    ' <button type="submit">Show</button></form>';
  const body =
    `<header><h1>parapool ${escapeHtml(view.version)}</h1><span>${refreshLinks(view)}</span>` +
    `<span class="who">${escapeHtml(view.user)} <form method="post" action="/logout"><input type="hidden" name="csrf" value="${escapeHtml(view.csrfToken)}"><button type="submit">Log out</button></form></span></header>` +
    `<main>${flashHtml(view.flash)}` +
    `<section id="nodes"><h2>Nodes <small>SHOW pool_nodes</small></h2>${nodes}</section>` +
    `<section id="rules"><h2>Partition rules of ${escapeHtml(view.database)} <small>SHOW parapool_rules</small></h2>${databaseForm}${rules}</section>` +
    `<section id="queries"><h2>Running queries <small>SHOW parapool_queries</small></h2>${tableHtml(view.queries, { cellClass: (column) => (column === 'query' ? 'query' : null) })}</section>` +
    `<section id="sessions"><h2>Sessions <small>SHOW pool_processes</small></h2>${tableHtml(view.processes)}</section>` +
    `<section id="pools"><h2>Pools <small>SHOW pool_pools</small></h2>${tableHtml(view.pools)}</section>` +
    `<section id="cache"><h2>Query cache <small>SHOW pool_cache</small></h2>` +
    (view.cache.enabled ? '' : '<p class="empty">disabled (memory_cache_enabled = off)</p>') +
    `${tableHtml(view.cache.table)}</section>` +
    `<section id="health"><details><summary><h2>Health checks <small>SHOW pool_health_check_stats</small></h2></summary>${tableHtml(view.healthChecks)}</details></section>` +
    '</main>';
  return document('parapool administration', body, view.refreshSeconds);
}

/**
 * The recovery page comes in three parts, sent as the recovery goes: its head, one line per progress message, then
 * the result. A browser shows each part as it arrives, so the operator watches the stages pass.
 */
export const recoveryPage = {
  head(nodeId: number): string {
    return (
      `<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>parapool: recovery of node ${nodeId}</title><style>${style}</style></head><body>` +
      `<header><h1>parapool</h1></header><main><section><h2>Online recovery of node ${nodeId}</h2><ol class="progress" id="progress">`
    );
  },
  line(message: string): string {
    return `<li>${escapeHtml(message)}</li>\n`;
  },
  end(result: FlashMessage): string {
    return `</ol>${flashHtml({ kind: result.kind, text: result.text }, 'result')}<p><a href="/">Back to the overview</a></p></section></main></body></html>\n`;
  },
};
