// Eddy web console. Plain JS, no dependencies.
'use strict';

(function () {
  const POLL_MS = 2000;
  const WINDOW_MS = 5 * 60 * 1000;
  const TABS = ['overview', 'queues', 'exchanges', 'topics', 'groups', 'connections', 'jobs'];
  const CRED_KEY = 'eddy.credentials';

  const state = {
    creds: null,        // {user, pass}
    active: false,      // logged in and polling
    session: 0,         // bumped on login/logout so stale responses are ignored
    tab: 'overview',
    timer: null,
    running: false,
    again: false,
    overview: null,
    history: [],        // [{t, publish, deliver, ack, messages, ready, unacked}]
    prevCounts: null,   // for computing rates from counters if the server gives none
    topics: [],
    openTopics: new Set(),
    errorSource: null,
    noticeTimer: null,
  };

  // ---------------------------------------------------------------- helpers

  const $ = (sel) => document.querySelector(sel);
  const enc = encodeURIComponent;

  const ESC = { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' };
  function esc(v) {
    return String(v == null ? '' : v).replace(/[&<>"']/g, (c) => ESC[c]);
  }

  function isNum(v) {
    return v !== null && v !== undefined && v !== '' && Number.isFinite(Number(v));
  }
  function num(v) {
    return isNum(v) ? Number(v) : 0;
  }
  function cmp(a, b) {
    a = String(a == null ? '' : a);
    b = String(b == null ? '' : b);
    return a < b ? -1 : a > b ? 1 : 0;
  }
  function byVhostName(a, b) {
    return cmp(a.vhost, b.vhost) || cmp(a.name, b.name);
  }

  function fmtInt(v) {
    return isNum(v) ? String(Math.round(Number(v))) : '—';
  }
  function fmtCount(v) {
    return isNum(v) ? Math.round(Number(v)).toLocaleString('en-US') : '—';
  }
  function fmtRate(v) {
    if (!isNum(v)) return '—';
    const n = Number(v);
    return Math.abs(n) >= 100 ? n.toFixed(1) : n.toFixed(2);
  }
  function fmtDuration(s) {
    if (!isNum(s)) return '—';
    s = Number(s);
    if (s <= 0) return '0 s';
    if (s < 0.001) return '< 1 ms';
    if (s < 1) return `${Math.round(s * 1000)} ms`;
    if (s < 60) return `${s.toFixed(s < 10 ? 2 : 1)} s`;
    if (s < 3600) return `${Math.floor(s / 60)}m ${Math.floor(s % 60)}s`;
    if (s < 86400) return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
    return `${Math.floor(s / 86400)}d ${Math.floor((s % 86400) / 3600)}h`;
  }
  function fmtBytes(v) {
    if (!isNum(v)) return '—';
    let n = Number(v);
    const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return i === 0 ? `${n} B` : `${n.toFixed(1)} ${units[i]}`;
  }
  function fmtAgo(ms) {
    if (!isNum(ms) || Number(ms) <= 0) return '—';
    const d = (Date.now() - Number(ms)) / 1000;
    if (d < 1) return 'just now';
    return (d < 60 ? `${Math.floor(d)} s` : fmtDuration(d)) + ' ago';
  }
  function fmtTime(ms) {
    return isNum(ms) && Number(ms) > 0 ? new Date(Number(ms)).toLocaleString() : '';
  }
  function fmtAxis(v) {
    if (v >= 1e6) return `${+(v / 1e6).toFixed(2)}M`;
    if (v >= 1e3) return `${+(v / 1e3).toFixed(2)}k`;
    return String(+v.toFixed(2));
  }
  // Rate from a RabbitMQ-style message_stats object, e.g. rate(ms, 'publish').
  function rate(stats, key) {
    const d = stats && stats[`${key}_details`];
    return d && isNum(d.rate) ? Number(d.rate) : null;
  }
  function yesNo(b) {
    return b ? 'yes' : 'no';
  }
  function hasKeys(o) {
    return o && typeof o === 'object' && Object.keys(o).length > 0;
  }

  // Only touch the DOM when the markup actually changed (keeps hover/selection stable).
  function setHTML(el, html) {
    if (el && el._html !== html) {
      el.innerHTML = html;
      el._html = html;
    }
  }
  function emptyRow(cols, text) {
    return `<tr class="empty"><td colspan="${cols}">${esc(text)}</td></tr>`;
  }
  function asList(v) {
    return Array.isArray(v) ? v : [];
  }

  // ---------------------------------------------------------------- banners

  function showError(msg, source) {
    $('#error-text').textContent = msg;
    $('#error').hidden = false;
    state.errorSource = source || 'action';
  }
  function clearError(source) {
    if (source && state.errorSource !== source) return;
    $('#error').hidden = true;
    $('#error-text').textContent = '';
    state.errorSource = null;
  }
  function notice(msg) {
    const el = $('#notice');
    el.textContent = msg;
    el.hidden = false;
    clearTimeout(state.noticeTimer);
    state.noticeTimer = setTimeout(() => { el.hidden = true; }, 4000);
  }

  // ---------------------------------------------------------------- API

  class ApiError extends Error {
    constructor(message, status, reason, auth) {
      super(message);
      this.status = status;
      this.reason = reason;
      this.auth = !!auth;
    }
  }

  function basicAuth(creds) {
    const bytes = new TextEncoder().encode(`${creds.user}:${creds.pass}`);
    let bin = '';
    bytes.forEach((b) => { bin += String.fromCharCode(b); });
    return `Basic ${btoa(bin)}`;
  }

  async function api(method, path, body) {
    if (!state.creds) throw new ApiError('not logged in', 401, 'not logged in', true);
    const headers = {
      Authorization: basicAuth(state.creds),
      Accept: 'application/json',
      'X-Requested-With': 'XMLHttpRequest',
    };
    const opts = { method, headers, cache: 'no-store' };
    if (body !== undefined) {
      headers['Content-Type'] = 'application/json';
      opts.body = JSON.stringify(body);
    }
    let res;
    try {
      res = await fetch(path, opts);
    } catch (e) {
      throw new ApiError(`Cannot reach the server (${method} ${path}): ${e.message}`, 0, e.message);
    }
    const text = await res.text();
    let data = null;
    if (text) {
      try { data = JSON.parse(text); } catch (e) { data = text; }
    }
    if (res.ok) return data;

    let reason = '';
    if (data && typeof data === 'object') reason = data.reason || data.error || '';
    else if (typeof data === 'string') reason = data.trim().slice(0, 300);
    reason = reason || res.statusText || 'request failed';
    if (res.status === 401) {
      onUnauthorized(reason);
      throw new ApiError(reason, 401, reason, true);
    }
    throw new ApiError(`${reason} (HTTP ${res.status}, ${method} ${path})`, res.status, reason);
  }

  function queuePath(vhost, name) {
    return `/api/queues/${enc(vhost)}/${enc(name)}`;
  }

  // ---------------------------------------------------------------- session

  function loadCreds() {
    try {
      const c = JSON.parse(sessionStorage.getItem(CRED_KEY));
      return c && typeof c.user === 'string' && typeof c.pass === 'string' ? c : null;
    } catch (e) {
      return null;
    }
  }

  function stopPolling() {
    state.active = false;
    state.session++;
    clearTimeout(state.timer);
  }

  function showLogin(reason) {
    stopPolling();
    clearError();
    $('#app').hidden = true;
    $('#session').hidden = true;
    $('#login').hidden = false;
    $('#login-error').textContent = reason || '';
    document.title = 'Eddy';
  }

  function onUnauthorized(reason) {
    sessionStorage.removeItem(CRED_KEY);
    state.creds = null;
    showLogin(reason);
  }

  function startSession(me) {
    state.session++;
    state.active = true;
    state.history = [];
    state.prevCounts = null;
    $('#login').hidden = true;
    $('#app').hidden = false;
    $('#session').hidden = false;
    $('#user').textContent = (me && me.name) || state.creds.user;
    const tags = asList(me && me.tags);
    $('#user-tags').textContent = tags.length ? `(${tags.join(', ')})` : '';
    route();
  }

  async function onLogin(ev) {
    ev.preventDefault();
    const user = $('#login-user').value;
    const pass = $('#login-pass').value;
    $('#login-error').textContent = '';
    state.creds = { user, pass };
    let me;
    try {
      me = await api('GET', '/api/whoami');
    } catch (e) {
      if (!e.auth) {
        state.creds = null;
        $('#login-error').textContent = e.message;
      }
      return;
    }
    sessionStorage.setItem(CRED_KEY, JSON.stringify({ user, pass }));
    startSession(me);
  }

  function logout() {
    sessionStorage.removeItem(CRED_KEY);
    state.creds = null;
    $('#login-user').value = 'guest';
    $('#login-pass').value = 'guest';
    showLogin('');
  }

  async function resume(creds) {
    state.creds = creds;
    $('#login-user').value = creds.user;
    try {
      startSession(await api('GET', '/api/whoami'));
    } catch (e) {
      if (!e.auth) showLogin(e.message);
    }
  }

  // ---------------------------------------------------------------- routing & polling

  function route() {
    let tab = location.hash.replace(/^#/, '');
    if (!TABS.includes(tab)) tab = 'overview';
    state.tab = tab;
    for (const t of TABS) $(`#tab-${t}`).hidden = t !== tab;
    document.querySelectorAll('#tabs a[data-tab]').forEach((a) => {
      const on = a.dataset.tab === tab;
      a.classList.toggle('active', on);
      if (on) a.setAttribute('aria-current', 'page'); else a.removeAttribute('aria-current');
    });
    if (tab === 'overview') renderOverview();
    refreshNow();
  }

  function schedule(ms) {
    clearTimeout(state.timer);
    if (state.active) state.timer = setTimeout(tick, ms);
  }

  function refreshNow() {
    clearTimeout(state.timer);
    tick();
  }

  // One polling round: the overview (always, it feeds the chart history)
  // plus the data of the tab being shown. Hidden tabs are not refreshed.
  async function tick() {
    if (!state.active) return;
    if (state.running) { state.again = true; return; }
    state.running = true;
    state.again = false;
    const session = state.session;
    const jobs = [pollOverview()];
    if (state.tab !== 'overview') jobs.push(REFRESH[state.tab]());
    const results = await Promise.allSettled(jobs);
    state.running = false;
    if (!state.active) return;
    if (session === state.session) {
      const errors = results.filter((r) => r.status === 'rejected').map((r) => r.reason);
      const shown = errors.find((e) => !(e && e.auth));
      if (shown) {
        showError(shown.message || String(shown), 'poll');
      } else if (!errors.length) {
        clearError('poll');
        $('#updated').textContent = `updated ${new Date().toLocaleTimeString()}`;
      }
    }
    schedule(state.again || session !== state.session ? 0 : POLL_MS);
  }

  // Runs a user action; errors go to the banner, then everything refreshes.
  async function action(fn) {
    try {
      const msg = await fn();
      if (msg) notice(msg);
      clearError('action');
    } catch (e) {
      if (!(e && e.auth)) showError(e.message || String(e), 'action');
    }
    refreshNow();
  }

  // ---------------------------------------------------------------- overview

  async function pollOverview() {
    const ov = await api('GET', '/api/overview');
    if (!ov || typeof ov !== 'object') throw new Error('malformed /api/overview response');
    state.overview = ov;
    recordSample(ov);
    $('#node').textContent = ov.node || '';
    $('#product').textContent = [ov.product_name, ov.product_version].filter(Boolean).join(' ');
    document.title = ov.node ? `Eddy · ${ov.node}` : 'Eddy';
    if (state.tab === 'overview') renderOverview();
  }

  function recordSample(ov) {
    const now = Date.now();
    const ms = ov.message_stats || {};
    const qt = ov.queue_totals || {};
    const prev = state.prevCounts;
    // Prefer the server's rate; fall back to the counter delta between polls.
    const r = (key) => {
      const v = rate(ms, key);
      if (v !== null) return v;
      if (prev && isNum(ms[key]) && isNum(prev[key])) {
        const dt = (now - prev.t) / 1000;
        return dt > 0 ? Math.max(0, (ms[key] - prev[key]) / dt) : 0;
      }
      return 0;
    };
    state.history.push({
      t: now,
      publish: r('publish'),
      deliver: r('deliver_get'),
      ack: r('ack'),
      messages: num(qt.messages),
      ready: num(qt.messages_ready),
      unacked: num(qt.messages_unacknowledged),
    });
    state.prevCounts = { t: now, publish: ms.publish, deliver_get: ms.deliver_get, ack: ms.ack };
    const cutoff = now - WINDOW_MS;
    while (state.history.length && state.history[0].t < cutoff) state.history.shift();
  }

  function statCards(items) {
    return items.map(([key, label, value]) =>
      `<div class="stat" data-key="${esc(key)}"><span class="value">${esc(value)}</span>` +
      `<span class="label">${esc(label)}</span></div>`).join('');
  }

  const RATE_SERIES = [
    { key: 'publish', label: 'publish', color: '#2563eb', fmt: fmtRate },
    { key: 'deliver', label: 'deliver/get', color: '#16a34a', fmt: fmtRate },
    { key: 'ack', label: 'ack', color: '#d97706', fmt: fmtRate },
  ];
  const MESSAGE_SERIES = [
    { key: 'messages', label: 'total', color: '#7c3aed', fmt: fmtCount },
    { key: 'ready', label: 'ready', color: '#0891b2', fmt: fmtCount },
    { key: 'unacked', label: 'unacked', color: '#dc2626', fmt: fmtCount },
  ];

  function renderOverview() {
    const ov = state.overview;
    if (!ov) return;
    const ot = ov.object_totals || {};
    const qt = ov.queue_totals || {};
    const last = state.history[state.history.length - 1] || {};
    setHTML($('#object-totals'), statCards([
      ['connections', 'Connections', fmtCount(ot.connections)],
      ['channels', 'Channels', fmtCount(ot.channels)],
      ['exchanges', 'Exchanges', fmtCount(ot.exchanges)],
      ['queues', 'Queues', fmtCount(ot.queues)],
      ['consumers', 'Consumers', fmtCount(ot.consumers)],
      ['topics', 'Topics', fmtCount(ot.topics)],
    ]));
    setHTML($('#queue-totals'), statCards([
      ['messages', 'Total', fmtCount(qt.messages)],
      ['messages_ready', 'Ready', fmtCount(qt.messages_ready)],
      ['messages_unacknowledged', 'Unacked', fmtCount(qt.messages_unacknowledged)],
    ]));
    setHTML($('#message-rates'), statCards([
      ['publish', 'Publish', fmtRate(last.publish)],
      ['deliver_get', 'Deliver / get', fmtRate(last.deliver)],
      ['ack', 'Ack', fmtRate(last.ack)],
    ]));
    const listeners = asList(ov.listeners);
    setHTML($('#listeners-table tbody'), listeners.length
      ? listeners.map((l) => `<tr data-protocol="${esc(l.protocol)}"><td class="protocol">${esc(l.protocol)}</td>` +
          `<td class="ip">${esc(l.ip_address)}</td><td class="port num">${esc(l.port)}</td></tr>`).join('')
      : emptyRow(3, 'no listeners'));
    drawCharts();
  }

  function drawCharts() {
    drawChart($('#chart-rates'), RATE_SERIES, false);
    drawChart($('#chart-messages'), MESSAGE_SERIES, true);
  }

  // 1, 2 or 5 times a power of ten, >= x.
  function niceStep(x) {
    const p = Math.pow(10, Math.floor(Math.log10(x)));
    const f = x / p;
    return (f <= 1 ? 1 : f <= 2 ? 2 : f <= 5 ? 5 : 10) * p;
  }

  // Hand-drawn time-series line chart of state.history over the last WINDOW_MS.
  function drawChart(canvas, series, integer) {
    const w = canvas.clientWidth;
    const h = canvas.clientHeight;
    if (!w || !h) return; // not visible
    const dpr = window.devicePixelRatio || 1;
    if (canvas.width !== Math.round(w * dpr) || canvas.height !== Math.round(h * dpr)) {
      canvas.width = Math.round(w * dpr);
      canvas.height = Math.round(h * dpr);
    }
    const ctx = canvas.getContext('2d');
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, w, h);
    ctx.font = '11px system-ui, -apple-system, "Segoe UI", sans-serif';

    const pad = { l: 52, r: 18, t: 30, b: 22 };
    const pw = w - pad.l - pad.r;
    const ph = h - pad.t - pad.b;
    if (pw < 40 || ph < 40) return;

    const hist = state.history;
    const now = Date.now();
    const t0 = now - WINDOW_MS;
    let max = 0;
    for (const p of hist) for (const s of series) max = Math.max(max, p[s.key] || 0);
    let step = niceStep(max > 0 ? max / 4 : 0.25);
    if (integer) step = Math.max(1, step);
    const yMax = step * Math.max(1, Math.ceil(max / step));
    const x = (t) => pad.l + ((t - t0) / WINDOW_MS) * pw;
    const y = (v) => pad.t + ph - (v / yMax) * ph;

    // grid and y labels
    ctx.lineWidth = 1;
    ctx.strokeStyle = '#e5e7eb';
    ctx.fillStyle = '#6b7280';
    ctx.textAlign = 'right';
    ctx.textBaseline = 'middle';
    for (let i = 0; i * step <= yMax + step / 1e6; i++) {
      const yy = Math.round(y(i * step)) + 0.5;
      ctx.beginPath(); ctx.moveTo(pad.l, yy); ctx.lineTo(pad.l + pw, yy); ctx.stroke();
      ctx.fillText(fmtAxis(i * step), pad.l - 6, yy);
    }
    // x labels, one per minute
    ctx.textAlign = 'center';
    ctx.textBaseline = 'top';
    for (let m = 0; m <= WINDOW_MS / 60000; m++) {
      const xx = Math.round(x(now - m * 60000)) + 0.5;
      ctx.beginPath(); ctx.moveTo(xx, pad.t); ctx.lineTo(xx, pad.t + ph); ctx.stroke();
      ctx.fillText(m === 0 ? 'now' : `-${m} min`, xx, pad.t + ph + 6);
    }
    // axes
    ctx.strokeStyle = '#9ca3af';
    ctx.beginPath();
    ctx.moveTo(pad.l + 0.5, pad.t);
    ctx.lineTo(pad.l + 0.5, pad.t + ph + 0.5);
    ctx.lineTo(pad.l + pw, pad.t + ph + 0.5);
    ctx.stroke();

    // series
    ctx.save();
    ctx.beginPath();
    ctx.rect(pad.l, pad.t - 4, pw + 4, ph + 8);
    ctx.clip();
    ctx.lineWidth = 2;
    ctx.lineJoin = 'round';
    for (const s of series) {
      ctx.strokeStyle = s.color;
      ctx.fillStyle = s.color;
      ctx.beginPath();
      let prevT = null;
      for (const p of hist) {
        const gap = prevT === null || p.t - prevT > POLL_MS * 5; // break the line over outages
        if (gap) ctx.moveTo(x(p.t), y(p[s.key])); else ctx.lineTo(x(p.t), y(p[s.key]));
        prevT = p.t;
      }
      ctx.stroke();
      const last = hist[hist.length - 1];
      if (last) {
        ctx.beginPath();
        ctx.arc(x(last.t), y(last[s.key]), 2.5, 0, Math.PI * 2);
        ctx.fill();
      }
    }
    ctx.restore();

    // legend with current values
    const last = hist[hist.length - 1];
    ctx.textAlign = 'left';
    ctx.textBaseline = 'middle';
    let lx = pad.l;
    for (const s of series) {
      const text = `${s.label}: ${last ? s.fmt(last[s.key]) : '—'}`;
      ctx.fillStyle = s.color;
      ctx.fillRect(lx, 7, 10, 10);
      ctx.fillStyle = '#374151';
      ctx.fillText(text, lx + 14, 12);
      lx += 14 + ctx.measureText(text).width + 18;
    }
  }

  // ---------------------------------------------------------------- queues

  async function refreshQueues() {
    const list = asList(await api('GET', '/api/queues')).slice().sort(byVhostName);
    setHTML($('#queues-table tbody'), list.length ? list.map(queueRow).join('') : emptyRow(18, 'no queues'));
    const win = list.map((q) => q.queueing && q.queueing.window_seconds).find(isNum);
    $('#queueing-note').textContent = isNum(win)
      ? `Queueing model over a sliding window of ${fmtDuration(win)}. λ arrival rate, μ service rate, ρ = λ/μ utilisation, ` +
        'W mean time in queue, L mean messages in queue, λ·W Little\'s-law prediction of L, Drain = predicted time to empty the backlog.'
      : '';
  }

  function queueRow(q) {
    const ms = q.message_stats || {};
    const qs = q.queueing || {};
    const backlog = num(q.messages);
    const drain = isNum(qs.drain_seconds) ? fmtDuration(qs.drain_seconds) : backlog > 0 ? '∞' : '—';
    const rho = qs.utilisation;
    const rhoClass = isNum(rho) && rho >= 1 ? ' hot' : isNum(rho) && rho >= 0.8 ? ' warm' : '';
    const feats = [];
    if (q.durable) feats.push('<span class="badge" title="durable">D</span>');
    if (q.auto_delete) feats.push('<span class="badge" title="auto-delete">AD</span>');
    if (q.exclusive) feats.push('<span class="badge" title="exclusive">Excl</span>');
    if (hasKeys(q.arguments)) {
      feats.push(`<span class="badge" title="${esc(JSON.stringify(q.arguments))}">Args</span>`);
    }
    return `<tr data-queue="${esc(q.name)}" data-vhost="${esc(q.vhost)}">` +
      `<td class="name">${esc(q.name)}</td>` +
      `<td class="vhost">${esc(q.vhost)}</td>` +
      `<td class="type"><span class="badge type-${esc(q.type)}">${esc(q.type || 'classic')}</span></td>` +
      `<td class="features">${feats.join(' ')}</td>` +
      `<td class="ready num">${fmtInt(q.messages_ready)}</td>` +
      `<td class="unacked num">${fmtInt(q.messages_unacknowledged)}</td>` +
      `<td class="messages num">${fmtInt(q.messages)}</td>` +
      `<td class="consumers num">${fmtInt(q.consumers)}</td>` +
      `<td class="publish-rate num">${fmtRate(rate(ms, 'publish'))}</td>` +
      `<td class="deliver-rate num">${fmtRate(rate(ms, 'deliver_get'))}</td>` +
      `<td class="lambda num">${fmtRate(qs.arrival_rate)}</td>` +
      `<td class="mu num">${fmtRate(qs.service_rate)}</td>` +
      `<td class="rho num${rhoClass}">${isNum(rho) ? Number(rho).toFixed(2) : '—'}</td>` +
      `<td class="w num">${fmtDuration(qs.mean_time_in_queue_seconds)}</td>` +
      `<td class="l num">${isNum(qs.mean_messages_in_queue) ? Number(qs.mean_messages_in_queue).toFixed(2) : '—'}</td>` +
      `<td class="lw num">${isNum(qs.littles_law_messages) ? Number(qs.littles_law_messages).toFixed(2) : '—'}</td>` +
      `<td class="drain num">${drain}</td>` +
      '<td class="actions">' +
      '<button type="button" class="get-messages" data-action="get">Get messages</button>' +
      '<button type="button" class="purge" data-action="purge">Purge</button>' +
      '<button type="button" class="delete danger" data-action="delete">Delete</button>' +
      '</td></tr>';
  }

  function onQueueAction(ev) {
    const btn = ev.target.closest('button[data-action]');
    const tr = btn && btn.closest('tr[data-queue]');
    if (!tr) return;
    const name = tr.dataset.queue;
    const vhost = tr.dataset.vhost;
    const where = `"${name}" (vhost "${vhost}")`;
    if (btn.dataset.action === 'purge') {
      if (!confirm(`Purge all ready messages from queue ${where}?`)) return;
      action(async () => {
        await api('DELETE', `${queuePath(vhost, name)}/contents`);
        return `Queue "${name}" purged`;
      });
    } else if (btn.dataset.action === 'delete') {
      if (!confirm(`Delete queue ${where}? Its messages will be lost.`)) return;
      action(async () => {
        await api('DELETE', queuePath(vhost, name));
        const panel = $('#messages-panel');
        if (panel.dataset.queue === name && panel.dataset.vhost === vhost) panel.hidden = true;
        return `Queue "${name}" deleted`;
      });
    } else if (btn.dataset.action === 'get') {
      action(async () => {
        const msgs = await api('POST', `${queuePath(vhost, name)}/get`,
          { count: 5, ackmode: 'ack_requeue_true', encoding: 'auto' });
        renderMessages(vhost, name, asList(msgs));
      });
    }
  }

  function renderMessages(vhost, name, msgs) {
    const panel = $('#messages-panel');
    panel.dataset.queue = name;
    panel.dataset.vhost = vhost;
    $('#messages-title').textContent =
      `Messages in "${name}" (vhost "${vhost}") — ${msgs.length} shown, requeued`;
    $('#messages-list').innerHTML = msgs.length ? msgs.map((m, i) => {
      const meta = [
        `<span>#${i + 1}</span>`,
        `<span>exchange <code>${m.exchange ? esc(m.exchange) : '(AMQP default)'}</code></span>`,
        `<span>routing key <code>${esc(m.routing_key)}</code></span>`,
        `<span>${fmtInt(m.payload_bytes)} bytes</span>`,
        `<span>encoding ${esc(m.payload_encoding || 'string')}</span>`,
        m.redelivered ? '<span class="badge warm">redelivered</span>' : '',
        isNum(m.message_count) ? `<span>${fmtInt(m.message_count)} more in queue</span>` : '',
      ].filter(Boolean).join(' · ');
      const props = hasKeys(m.properties)
        ? `<pre class="properties">${esc(JSON.stringify(m.properties, null, 2))}</pre>` : '';
      return `<div class="message" data-index="${i}"><div class="message-meta">${meta}</div>` +
        `<pre class="payload">${esc(m.payload)}</pre>${props}</div>`;
    }).join('') : '<p class="muted empty-messages">The queue is empty.</p>';
    panel.hidden = false;
    panel.scrollIntoView({ block: 'nearest', behavior: 'smooth' });
  }

  function onAddQueue(ev) {
    ev.preventDefault();
    const name = $('#new-queue-name').value.trim();
    const vhost = $('#new-queue-vhost').value || '/';
    const stream = $('#new-queue-type').value === 'stream';
    const body = {
      durable: $('#new-queue-durable').checked,
      auto_delete: false,
      arguments: stream ? { 'x-queue-type': 'stream' } : {},
    };
    if (!name) return showError('Queue name is required', 'action');
    action(async () => {
      await api('PUT', queuePath(vhost, name), body);
      $('#new-queue-name').value = '';
      return `Queue "${name}" declared`;
    });
  }

  function onPublish(ev) {
    ev.preventDefault();
    const vhost = $('#pub-vhost').value || '/';
    const exchange = $('#pub-exchange').value;
    const body = {
      routing_key: $('#pub-routing-key').value,
      payload: $('#pub-payload').value,
      payload_encoding: 'string',
      properties: {},
    };
    const out = $('#publish-result');
    out.textContent = '';
    out.className = 'result';
    action(async () => {
      const res = await api('POST', `/api/exchanges/${enc(vhost)}/${exchange === '' ? 'amq.default' : enc(exchange)}/publish`, body);
      const routed = !!(res && res.routed);
      out.textContent = routed ? 'Message routed.' : 'Published, but not routed to any queue.';
      out.className = routed ? 'result ok' : 'result warn';
    });
  }

  // ---------------------------------------------------------------- exchanges

  async function refreshExchanges() {
    const [exchanges, bindings] = await Promise.all([api('GET', '/api/exchanges'), api('GET', '/api/bindings')]);
    const bySource = new Map();
    for (const b of asList(bindings)) {
      const key = `${b.vhost}\u0000${b.source}`;
      if (!bySource.has(key)) bySource.set(key, []);
      bySource.get(key).push(b);
    }
    const list = asList(exchanges).slice().sort(byVhostName);
    setHTML($('#exchanges-table tbody'), list.length
      ? list.map((x) => exchangeRow(x, bySource.get(`${x.vhost}\u0000${x.name}`) || [])).join('')
      : emptyRow(6, 'no exchanges'));
  }

  function exchangeRow(x, bindings) {
    const feats = [];
    if (x.auto_delete) feats.push('<span class="badge" title="auto-delete">AD</span>');
    if (x.internal) feats.push('<span class="badge" title="internal">I</span>');
    if (hasKeys(x.arguments)) feats.push(`<span class="badge" title="${esc(JSON.stringify(x.arguments))}">Args</span>`);
    bindings.sort((a, b) => cmp(a.destination, b.destination) || cmp(a.routing_key, b.routing_key));
    const items = bindings.map((b) => {
      const args = hasKeys(b.arguments) ? ` title="${esc(JSON.stringify(b.arguments))}"` : '';
      return `<li class="binding" data-destination="${esc(b.destination)}" data-destination-type="${esc(b.destination_type)}"${args}>` +
        `→ <span class="badge">${esc(b.destination_type)}</span> <span class="destination">${esc(b.destination)}</span>` +
        ` <span class="routing-key muted">key</span> <code>${b.routing_key === '' ? '(empty)' : esc(b.routing_key)}</code></li>`;
    });
    const name = x.name === '' ? '<span class="muted">(AMQP default)</span>' : esc(x.name);
    return `<tr data-exchange="${esc(x.name)}" data-vhost="${esc(x.vhost)}">` +
      `<td class="name">${name}</td>` +
      `<td class="vhost">${esc(x.vhost)}</td>` +
      `<td class="type">${esc(x.type)}</td>` +
      `<td class="durable">${yesNo(x.durable)}</td>` +
      `<td class="features">${feats.join(' ')}</td>` +
      `<td class="bindings">${items.length ? `<ul class="bindings-list">${items.join('')}</ul>` : '<span class="muted">none</span>'}</td>` +
      '</tr>';
  }

  // ---------------------------------------------------------------- topics

  async function refreshTopics() {
    state.topics = asList(await api('GET', '/api/topics')).slice().sort((a, b) => cmp(a.name, b.name));
    renderTopics();
  }

  function renderTopics() {
    const rows = state.topics.map((t) => {
      const parts = asList(t.partitions).slice().sort((a, b) => num(a.partition) - num(b.partition));
      const total = isNum(t.messages) ? t.messages
        : parts.reduce((s, p) => s + Math.max(0, num(p.end_offset) - num(p.start_offset)), 0);
      const open = state.openTopics.has(t.name);
      let html = `<tr data-topic="${esc(t.name)}">` +
        `<td class="name">${esc(t.name)}</td>` +
        `<td class="partitions num">${parts.length}</td>` +
        `<td class="messages num">${fmtInt(total)}</td>` +
        '<td class="actions">' +
        `<button type="button" class="toggle-partitions" data-action="toggle" aria-expanded="${open}">${open ? 'Hide' : 'Show'} partitions</button>` +
        '<button type="button" class="delete danger" data-action="delete">Delete</button>' +
        '</td></tr>';
      if (open) {
        const prow = parts.map((p) => `<tr data-partition="${esc(p.partition)}"><td class="num">${fmtInt(p.partition)}</td>` +
          `<td class="start-offset num">${fmtInt(p.start_offset)}</td><td class="end-offset num">${fmtInt(p.end_offset)}</td>` +
          `<td class="num">${fmtInt(Math.max(0, num(p.end_offset) - num(p.start_offset)))}</td></tr>`).join('');
        const config = hasKeys(t.config)
          ? `<div class="config"><span class="muted">config</span> <code>${esc(JSON.stringify(t.config))}</code></div>` : '';
        html += `<tr class="detail" data-topic-detail="${esc(t.name)}"><td colspan="4">` +
          '<table class="mini"><thead><tr><th class="num">Partition</th><th class="num">Start offset</th>' +
          '<th class="num">End offset</th><th class="num">Messages</th></tr></thead>' +
          `<tbody>${prow || emptyRow(4, 'no partitions')}</tbody></table>${config}</td></tr>`;
      }
      return html;
    });
    setHTML($('#topics-table tbody'), rows.length ? rows.join('') : emptyRow(4, 'no topics'));
  }

  function onTopicAction(ev) {
    const btn = ev.target.closest('button[data-action]');
    const tr = btn && btn.closest('tr[data-topic]');
    if (!tr) return;
    const name = tr.dataset.topic;
    if (btn.dataset.action === 'toggle') {
      if (state.openTopics.has(name)) state.openTopics.delete(name); else state.openTopics.add(name);
      renderTopics();
    } else if (btn.dataset.action === 'delete') {
      if (!confirm(`Delete topic "${name}" and all of its messages?`)) return;
      action(async () => {
        await api('DELETE', `/api/topics/${enc(name)}`);
        state.openTopics.delete(name);
        return `Topic "${name}" deleted`;
      });
    }
  }

  function onAddTopic(ev) {
    ev.preventDefault();
    const name = $('#new-topic-name').value.trim();
    const partitions = Number($('#new-topic-partitions').value);
    if (!name) return showError('Topic name is required', 'action');
    if (!Number.isInteger(partitions) || partitions < 1) {
      return showError('Partitions must be a whole number of at least 1', 'action');
    }
    action(async () => {
      await api('PUT', `/api/topics/${enc(name)}`, { partitions });
      $('#new-topic-name').value = '';
      return `Topic "${name}" created with ${partitions} partition${partitions === 1 ? '' : 's'}`;
    });
  }

  // ---------------------------------------------------------------- groups

  async function refreshGroups() {
    const groups = asList(await api('GET', '/api/groups')).slice().sort((a, b) => cmp(a.group, b.group));
    const rows = groups.map((g) => {
      const offsets = asList(g.offsets).slice()
        .sort((a, b) => cmp(a.topic, b.topic) || num(a.partition) - num(b.partition));
      const topics = new Set(offsets.map((o) => o.topic)).size;
      let html = `<tr class="group-row" data-group="${esc(g.group)}">` +
        `<td class="group">${esc(g.group)}</td>` +
        `<td colspan="4" class="summary muted">${offsets.length} partition${offsets.length === 1 ? '' : 's'} ` +
        `in ${topics} topic${topics === 1 ? '' : 's'}</td>` +
        `<td class="lag num${num(g.lag) > 0 ? ' warm' : ''}">${fmtInt(g.lag)}</td></tr>`;
      html += offsets.map((o) => `<tr class="offset-row" data-offset-group="${esc(g.group)}" data-offset-topic="${esc(o.topic)}" data-partition="${esc(o.partition)}">` +
        '<td></td>' +
        `<td class="topic">${esc(o.topic)}</td>` +
        `<td class="partition num">${fmtInt(o.partition)}</td>` +
        `<td class="committed num">${isNum(o.committed) && o.committed >= 0 ? fmtInt(o.committed) : '—'}</td>` +
        `<td class="end-offset num">${fmtInt(o.end_offset)}</td>` +
        `<td class="lag num">${fmtInt(o.lag)}</td></tr>`).join('');
      return html;
    });
    setHTML($('#groups-table tbody'), rows.length ? rows.join('') : emptyRow(6, 'no consumer groups'));
  }

  // ---------------------------------------------------------------- connections

  async function refreshConnections() {
    const conns = asList(await api('GET', '/api/connections')).slice().sort((a, b) => cmp(a.name, b.name));
    setHTML($('#connections-table tbody'), conns.length ? conns.map((c) =>
      `<tr data-connection="${esc(c.name)}">` +
      `<td class="name">${esc(c.name)}</td>` +
      `<td class="protocol">${esc(c.protocol)}</td>` +
      `<td class="user">${esc(c.user)}</td>` +
      `<td class="vhost">${esc(c.vhost)}</td>` +
      `<td class="peer">${esc(c.peer_host)}${c.peer_port != null ? `:${esc(c.peer_port)}` : ''}</td>` +
      `<td class="channels num">${fmtInt(c.channels)}</td>` +
      `<td class="recv num">${fmtBytes(c.recv_oct)}</td>` +
      `<td class="send num">${fmtBytes(c.send_oct)}</td>` +
      `<td class="connected-at" title="${esc(fmtTime(c.connected_at))}">${esc(fmtAgo(c.connected_at))}</td>` +
      '<td class="actions"><button type="button" class="close-connection danger" data-action="close">Close</button></td></tr>').join('')
      : emptyRow(10, 'no connections'));
  }

  function onConnectionAction(ev) {
    const btn = ev.target.closest('button[data-action="close"]');
    const tr = btn && btn.closest('tr[data-connection]');
    if (!tr) return;
    const name = tr.dataset.connection;
    if (!confirm(`Close connection ${name}? The client is told why (AMQP) or disconnected (Kafka).`)) return;
    action(async () => {
      await api('DELETE', `/api/connections/${enc(name)}`);
      return `Connection ${name} closed`;
    });
  }

  // ---------------------------------------------------------------- jobs

  async function refreshJobs() {
    const jobs = asList(await api('GET', '/api/jobs')).slice().sort((a, b) => cmp(a.name, b.name));
    setHTML($('#jobs-table tbody'), jobs.length ? jobs.map((j) => {
      const st = String(j.state || '').toLowerCase();
      const stClass = /fail|error|dead/.test(st) ? 'bad' : /run|ok|healthy/.test(st) ? 'ok' : '';
      // last_checkpoint: a millisecond timestamp if it looks like one, else a checkpoint id
      const cp = j.last_checkpoint;
      const cpText = !isNum(cp) ? '—' : cp > 1e12 ? fmtAgo(cp) : fmtInt(cp);
      return `<tr data-job="${esc(j.name)}">` +
        `<td class="name">${esc(j.name)}</td>` +
        `<td class="state"><span class="badge ${stClass}">${esc(j.state)}</span></td>` +
        `<td class="workers num">${fmtInt(j.workers)}</td>` +
        `<td class="records-in num">${fmtInt(j.records_in)}</td>` +
        `<td class="records-out num">${fmtInt(j.records_out)}</td>` +
        `<td class="records-in-rate num">${fmtRate(j.records_in_rate)}</td>` +
        `<td class="last-checkpoint num" title="${esc(cp > 1e12 ? fmtTime(cp) : '')}">${esc(cpText)}</td>` +
        `<td class="updated-at" title="${esc(fmtTime(j.updated_at))}">${esc(fmtAgo(j.updated_at))}</td></tr>`;
    }).join('') : emptyRow(8, 'no stream jobs reporting'));
  }

  const REFRESH = {
    queues: refreshQueues,
    exchanges: refreshExchanges,
    topics: refreshTopics,
    groups: refreshGroups,
    connections: refreshConnections,
    jobs: refreshJobs,
  };

  // ---------------------------------------------------------------- start

  function init() {
    $('#login-form').addEventListener('submit', onLogin);
    $('#logout').addEventListener('click', logout);
    $('#error-close').addEventListener('click', () => clearError());
    $('#queues-table').addEventListener('click', onQueueAction);
    $('#connections-table').addEventListener('click', onConnectionAction);
    $('#topics-table').addEventListener('click', onTopicAction);
    $('#add-queue-form').addEventListener('submit', onAddQueue);
    $('#publish-form').addEventListener('submit', onPublish);
    $('#add-topic-form').addEventListener('submit', onAddTopic);
    $('#messages-close').addEventListener('click', () => { $('#messages-panel').hidden = true; });
    window.addEventListener('hashchange', () => { if (state.active) route(); });
    window.addEventListener('resize', () => { if (state.active && state.tab === 'overview') drawCharts(); });

    const creds = loadCreds();
    if (creds) resume(creds); else showLogin('');
  }

  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', init);
  else init();
})();
