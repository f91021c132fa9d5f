// keyrelay dashboard: the pool from GET /v1/keys, charts from
// GET /v1/ui/series (drawn by charts.js), the last requests from
// GET /v1/ui/recent, and the admin actions. Plain DOM, no framework, no inline code (the CSP forbids
// it); every piece of data goes in through textContent or an attribute,
// never as markup.
'use strict';
(() => {
  const STORE = 'keyrelay.key';
  const POLL_MS = 2000;
  const STATES = { ok: 'OK', cooling: 'Cooling', exhausted: 'Exhausted', invalid: 'Invalid', disabled: 'Disabled' };
  const FAILURES = [
    ['failures_rate_limit', 'rate limit'], ['failures_quota', 'quota'], ['failures_credential', 'credential'],
    ['failures_transient', 'transient'], ['failures_client', 'client'],
  ];
  const WINDOWS = { '1h': 'last hour', '24h': 'last day' };
  const $ = (id) => document.getElementById(id);
  const { num, usd, clock, el } = window.KeyrelayCharts;

  let key = null; // the key the user typed; also in sessionStorage, nowhere else
  let timer = null;
  let chartWindow = '1h';
  let series = null; // the last answer of /v1/ui/series, or null: no data
  let knownKeys = [];
  const rows = new Map(); // key id -> { tr, cells, cooldowns }

  function span(secs) {
    secs = Math.max(0, Math.round(secs));
    if (secs >= 3600) return Math.floor(secs / 3600) + 'h ' + Math.floor((secs % 3600) / 60) + 'm';
    if (secs >= 60) return Math.floor(secs / 60) + 'm ' + (secs % 60) + 's';
    return secs + 's';
  }
  function setText(node, text) {
    if (node.textContent !== text) node.textContent = text;
  }
  function show(node, visible) {
    node.hidden = !visible;
  }
  function message(text) {
    setText($('message'), text || '');
    show($('message'), !!text);
  }

  async function api(path, method = 'GET') {
    const res = await fetch(path, {
      method, cache: 'no-store', credentials: 'omit', headers: { Authorization: 'Bearer ' + key },
    });
    let body = null;
    try { body = await res.json(); } catch (_) { body = null; }
    return { status: res.status, body };
  }
  const reason = (r) => (r.body && r.body.error && r.body.error.message) || 'status ' + r.status;

  // ---- signing in and out ----

  async function signIn(candidate) {
    key = candidate;
    let r;
    try { r = await api('/v1/keys'); } catch (e) { return refuse('keyrelay did not answer.'); }
    if (r.status === 401 || r.status === 403) return refuse('That key was refused (' + r.status + '). Try again.');
    if (r.status !== 200) return refuse('keyrelay answered: ' + reason(r));
    sessionStorage.setItem(STORE, candidate);
    $('key').value = '';
    show($('login'), false);
    show($('dashboard'), true);
    show($('logout'), true);
    show($('reload'), true);
    show($('login-error'), false);
    renderKeys(r.body);
    tick();
  }
  function refuse(text) {
    signOut();
    setText($('login-error'), text);
    show($('login-error'), true);
    $('key').focus();
  }
  function signOut() {
    key = null;
    sessionStorage.removeItem(STORE);
    clearTimeout(timer);
    rows.clear();
    $('providers').replaceChildren();
    $('recent').tBodies[0].replaceChildren();
    show($('dashboard'), false);
    show($('logout'), false);
    show($('reload'), false);
    show($('login'), true);
    setText($('status'), '');
  }

  // ---- polling ----

  // One round of polling at a time; a tab nobody looks at asks for
  // nothing, and catches up when shown.
  let polling = false;
  async function tick() {
    if (polling) return;
    clearTimeout(timer);
    if (!key || document.hidden) return;
    polling = true;
    try {
      await refreshKeys();
      await Promise.all([refreshSeries(), refreshRecent()]);
    } finally {
      polling = false;
      if (key && !document.hidden) timer = setTimeout(tick, POLL_MS);
    }
  }
  async function refreshKeys() {
    try {
      const r = await api('/v1/keys');
      if (r.status === 401) return refuse('The key is no longer accepted.');
      if (r.status !== 200) return setText($('status'), 'GET /v1/keys: ' + reason(r));
      renderKeys(r.body);
      const scope = r.body.counters === 'pool' ? 'all replicas' : 'this replica';
      setText($('status'), 'Live · updated ' + clock(Date.now()) + ' · counters of ' + scope);
    } catch (_) {
      setText($('status'), 'keyrelay is not answering; retrying');
    }
  }

  // ---- the pool ----

  function renderKeys(list) {
    const keys = (list && Array.isArray(list.data)) ? list.data : [];
    const received = Date.now();
    knownKeys = keys.map((k) => k.id);
    const seen = new Set();
    for (const k of keys) {
      seen.add(k.id);
      let row = rows.get(k.id);
      if (!row) {
        row = makeRow(k);
        rows.set(k.id, row);
      }
      providerBody(k.provider).append(row.tr); // keeps pool order; moves nothing already in place
      fillRow(row, k, received);
    }
    for (const [id, row] of rows) {
      if (!seen.has(id)) { row.tr.remove(); rows.delete(id); }
    }
    for (const section of $('providers').querySelectorAll('section[data-provider]')) {
      if (!section.querySelector('tr[data-key]')) section.remove();
    }
    show($('pool-empty'), keys.length === 0);
    countdown();
  }

  function providerBody(provider) {
    const sections = $('providers').querySelectorAll('section[data-provider]');
    for (const s of sections) if (s.dataset.provider === provider) return s.querySelector('tbody');
    const section = el('section', { 'data-provider': provider, 'aria-label': 'Provider ' + provider });
    section.append(el('h3', {}, provider));
    const wrap = el('div', { class: 'scroll', tabindex: '0', role: 'region', 'aria-label': provider + ' keys' });
    const table = el('table');
    const head = el('tr');
    for (const h of ['Key', 'State', 'Cooldowns', 'Invalid until', 'In flight', 'Requests', 'Successes',
      'Failures', 'Tokens in / out', 'Spend', 'Limits', 'Actions']) {
      head.append(el('th', { scope: 'col' }, h));
    }
    table.append(el('thead'), el('tbody'));
    table.tHead.append(head);
    wrap.append(table);
    section.append(wrap);
    $('providers').append(section);
    return table.tBodies[0];
  }

  function makeRow(k) {
    const tr = el('tr', { 'data-key': k.id });
    const cells = {
      id: el('th', { scope: 'row' }, k.id),
      state: el('td', { class: 'state' }),
      cooldown: el('td', { class: 'cooldown' }),
      invalid: el('td', { class: 'invalid-until' }),
      inFlight: el('td', { class: 'num in-flight' }),
      requests: el('td', { class: 'num requests' }),
      successes: el('td', { class: 'num successes' }),
      failures: el('td', { class: 'failures' }),
      tokens: el('td', { class: 'num tokens' }),
      spend: el('td', { class: 'num spend' }),
      limits: el('td', { class: 'limits' }),
      actions: el('td', { class: 'actions' }),
    };
    for (const [action, label] of [['disable', 'Disable'], ['enable', 'Enable'], ['reset', 'Reset']]) {
      const b = el('button', { type: 'button', 'data-action': action, 'aria-label': label + ' ' + k.id }, label);
      if (action !== 'enable') b.classList.add('danger');
      b.addEventListener('click', () => confirmThen(label + ' the key ' + k.id + '?', () => keyAction(k.id, action)));
      cells.actions.append(b);
    }
    tr.append(...Object.values(cells));
    return { tr, cells, cooldowns: [] };
  }

  function fillRow(row, k, received) {
    const c = row.cells;
    const label = STATES[k.state] || k.state;
    row.tr.dataset.state = k.state;
    c.state.dataset.state = k.state;
    setText(c.state, k.reason ? label + ' (' + k.reason + ')' : label);
    // A deadline on this browser's clock; kept when a poll moves it by less
    // than a second, so the countdown does not jitter.
    row.cooldowns = (k.cooldowns || []).map((cd) => {
      const fresh = received + cd.remaining_secs * 1000 + 500;
      const old = row.cooldowns.find((o) => o.model === cd.model);
      const deadline = old && Math.abs(old.deadline - fresh) < 1500 ? old.deadline : fresh;
      return { model: cd.model, reason: cd.reason, deadline };
    });
    row.invalidUntil = k.invalid_until_unix_ms || null;
    const t = k.today || {};
    setText(c.inFlight, num(k.in_flight));
    setText(c.requests, num(t.requests));
    setText(c.successes, num(t.successes));
    const failed = FAILURES.filter(([f]) => t[f] > 0).map(([f, name]) => name + ' ' + num(t[f]));
    setText(c.failures, failed.length ? failed.join(' · ') : '0');
    setText(c.tokens, num(t.tokens_in) + ' / ' + num(t.tokens_out));
    const spend = [];
    if (typeof t.cost_usd === 'number') spend.push(usd(t.cost_usd) + ' today');
    if (k.budget) spend.push(usd(k.budget.spent_usd) + ' of ' + usd(k.budget.limit_usd) + ' / ' + k.budget.period);
    setText(c.spend, spend.length ? spend.join(' · ') : '—');
    setText(c.limits, limits(k));
    for (const b of c.actions.querySelectorAll('button')) {
      if (b.dataset.action === 'disable') b.hidden = k.state === 'disabled';
      if (b.dataset.action === 'enable') b.hidden = k.state !== 'disabled';
    }
  }

  function limits(k) {
    const s = k.settings || {};
    const w = k.window || {};
    const parts = [];
    if (s.rpm != null) parts.push('rpm ' + num(w.requests_last_minute) + ' / ' + num(s.rpm));
    if (s.tpm != null) parts.push('tpm ' + num(w.tokens_last_minute) + ' / ' + num(s.tpm));
    if (s.rpd != null) parts.push('rpd ' + num(w.requests_today) + ' / ' + num(s.rpd));
    if (s.max_concurrent > 0) parts.push('concurrent ' + num(k.in_flight) + ' / ' + num(s.max_concurrent));
    for (const l of k.learned || []) {
      if (l.requests_remaining != null) parts.push(l.model + ': ' + num(l.requests_remaining) + ' requests left');
      if (l.tokens_remaining != null) parts.push(l.model + ': ' + num(l.tokens_remaining) + ' tokens left');
    }
    return parts.length ? parts.join(' · ') : 'none';
  }

  // Every second: the countdowns, on this browser's clock.
  function countdown() {
    const now = Date.now();
    for (const row of rows.values()) {
      const cell = row.cells.cooldown;
      const live = row.cooldowns.map((cd) => ({ ...cd, left: Math.floor((cd.deadline - now) / 1000) }))
        .filter((cd) => cd.left >= 0);
      setText(cell, live.length ? live.map((cd) => cd.model + ' (' + cd.reason + ') ' + span(cd.left)).join(' · ') : '—');
      if (live.length) cell.dataset.remaining = String(Math.min(...live.map((cd) => cd.left)));
      else delete cell.dataset.remaining;
      const until = row.invalidUntil;
      setText(row.cells.invalid, until ? clock(until) + (until > now ? ' (in ' + span((until - now) / 1000) + ')' : '') : '—');
    }
  }

  // ---- admin ----

  // The action waiting for a yes. Taken by the button itself, not by the
  // dialog's `close` event, which arrives later (a task of its own) and
  // could be the close of the previous question.
  let confirmed = null;
  function confirmThen(text, action) {
    setText($('confirm-text'), text);
    confirmed = action;
    $('confirm').showModal();
  }
  function answer(yes) {
    const action = confirmed;
    confirmed = null;
    $('confirm').close(yes ? 'yes' : 'no');
    if (yes && action) action();
  }
  async function keyAction(id, action) {
    try {
      const r = await api('/v1/keys/' + encodeURIComponent(id) + '/' + action, 'POST');
      if (r.status === 403) return message('Only the admin key may ' + action + ' keys (403).');
      if (r.status !== 200) return message(action + ' ' + id + ': ' + reason(r));
      message('');
      await refreshKeys();
    } catch (_) {
      message('keyrelay did not answer.');
    }
  }
  async function reloadConfig() {
    try {
      const r = await api('/v1/admin/reload', 'POST');
      if (r.status === 403) return message('Only the admin key may reload the configuration (403).');
      if (r.status !== 200) return message('Reload refused: ' + reason(r));
      message('');
      setText($('status'), 'Configuration reloaded at ' + clock(Date.now()));
      await refreshKeys();
    } catch (_) {
      message('keyrelay did not answer.');
    }
  }

  // ---- charts ----

  async function refreshSeries() {
    let r = null;
    try { r = await api('/v1/ui/series?window=' + chartWindow); } catch (_) { r = null; }
    const ok = r && r.status === 200 && r.body && Array.isArray(r.body.buckets) && r.body.step_secs > 0;
    series = ok ? r.body : null;
    $('charts').dataset.source = ok ? 'series' : (r ? 'status-' + r.status : 'unreachable');
    fillSelects();
    drawCharts();
  }

  function fillSelects() {
    const buckets = series ? series.buckets : [];
    const keys = new Set(knownKeys);
    const clients = new Set();
    for (const b of buckets) {
      if (b.key) keys.add(b.key);
      if (b.client) clients.add(b.client);
    }
    fillSelect($('chart-key'), 'All keys', [...keys].sort());
    fillSelect($('chart-client'), 'All clients', [...clients].sort());
  }
  function fillSelect(select, all, values) {
    const current = [...select.options].slice(1).map((o) => o.value);
    if (current.join('\n') === values.join('\n')) return; // leave an open select alone
    const chosen = select.value;
    select.replaceChildren(el('option', { value: '' }, all), ...values.map((v) => el('option', { value: v }, v)));
    select.value = values.includes(chosen) ? chosen : '';
  }

  function drawCharts() {
    const keyChoice = $('chart-key').value;
    const clientChoice = $('chart-client').value;
    const buckets = (series ? series.buckets : [])
      .filter((b) => (!keyChoice || b.key === keyChoice) && (!clientChoice || b.client === clientChoice));
    const drawn = window.KeyrelayCharts.draw(series, buckets, WINDOWS[chartWindow]);
    show($('charts-empty'), drawn === 0);
    setText($('charts-empty'), series ? 'No data in the ' + WINDOWS[chartWindow] + '.' : 'No data yet.');
  }

  // ---- last requests ----

  async function refreshRecent() {
    let r = null;
    try { r = await api('/v1/ui/recent?limit=50'); } catch (_) { r = null; }
    const list = r && r.status === 200 && r.body && Array.isArray(r.body.requests) ? r.body.requests : [];
    $('recent-section').dataset.source = r && r.status === 200 ? 'recent' : (r ? 'status-' + r.status : 'unreachable');
    const body = $('recent').tBodies[0];
    body.replaceChildren(...list.map((q) => {
      const tr = el('tr', { 'data-request-id': q.request_id || '' });
      const status = String(q.status) + (q.error_code ? ' ' + q.error_code : '');
      const latency = num(q.duration_ms) + ' ms' + (q.ttfb_ms != null ? ' (first byte ' + num(q.ttfb_ms) + ')' : '');
      tr.append(
        el('td', { title: new Date(q.unix_ms).toISOString() }, clock(q.unix_ms)),
        el('td', {}, q.client || '—'), el('td', {}, q.route || '—'), el('td', {}, q.model || '—'),
        el('td', {}, q.key || '—'), el('td', { class: 'num' }, status), el('td', { class: 'num' }, num(q.attempts)),
        el('td', { class: 'num' }, latency), el('td', { class: 'num' }, num(q.tokens_in) + ' / ' + num(q.tokens_out)),
      );
      return tr;
    }));
    show($('recent-empty'), list.length === 0);
    setText($('recent-empty'), r && r.status === 200 ? 'No requests yet.' : 'No data yet.');
  }

  // ---- wiring ----

  function start() {
    $('login').addEventListener('submit', (e) => {
      e.preventDefault();
      const typed = $('key').value;
      if (typed) signIn(typed);
    });
    $('logout').addEventListener('click', () => { signOut(); $('key').focus(); });
    $('reload').addEventListener('click', () => confirmThen('Reload the configuration from its files?', reloadConfig));
    for (const b of document.querySelectorAll('[data-window]')) {
      b.addEventListener('click', () => {
        chartWindow = b.dataset.window;
        for (const o of document.querySelectorAll('[data-window]')) o.setAttribute('aria-pressed', String(o === b));
        refreshSeries();
      });
    }
    $('confirm-yes').addEventListener('click', (e) => { e.preventDefault(); answer(true); });
    $('confirm-no').addEventListener('click', (e) => { e.preventDefault(); answer(false); });
    $('confirm').addEventListener('cancel', () => { confirmed = null; }); // Escape
    $('chart-key').addEventListener('change', drawCharts);
    $('chart-client').addEventListener('change', drawCharts);
    document.addEventListener('visibilitychange', () => { if (!document.hidden) tick(); });
    setInterval(countdown, 1000);
    drawCharts();
    const stored = sessionStorage.getItem(STORE);
    if (stored) signIn(stored); else $('key').focus();
  }
  start();
})();
