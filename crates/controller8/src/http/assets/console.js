// The orchestratorm8 console's script (docs/HTTP.md, "Console"). Plain JavaScript, no
// dependency, loaded from this server only (the Content-Security-Policy allows no
// other script and no inline script). It uses only the public API with the token the
// operator enters: kept in this tab's sessionStorage, sent in the Authorization
// header, never put in a URL and never logged. Every text from the server is set with
// textContent, never parsed as HTML.
'use strict';
(function () {
  const KEY = 'orchestratorm8.token';
  const API = '/api/orchestratorm8';
  const PAGE = 50;
  const $ = (id) => document.getElementById(id);
  const st = { cursor: null, back: [], next: null, views: new Map(), detail: null, waiters: [] };

  const token = () => sessionStorage.getItem(KEY);
  function headers(extra) {
    const h = Object.assign({}, extra || {});
    const t = token();
    if (t) h.Authorization = 'Bearer ' + t;
    return h;
  }
  function say(text, kind) {
    const m = $('message');
    m.textContent = text;
    m.className = kind || '';
  }
  function el(tag, text, cls) {
    const e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = String(text);
    if (cls) e.className = cls;
    return e;
  }
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

  async function api(method, path, body) {
    const init = { method, cache: 'no-store', headers: headers(body === undefined ? {} : { 'Content-Type': 'application/json' }) };
    if (body !== undefined) init.body = JSON.stringify(body);
    const res = await fetch(path, init);
    let data = null;
    try { data = await res.json(); } catch (e) { data = null; }
    if (res.status === 401) askToken();
    return { res, data };
  }
  const refusal = (r) => (r.data && r.data.error ? r.data.error : 'HTTP ' + r.res.status) + ' (' + r.res.status + ')';

  // ---- token
  function askToken() {
    $('token-form').hidden = false;
    $('forget-token').hidden = true;
    $('token').focus();
  }
  function tokenReady() {
    return new Promise((resolve) => st.waiters.push(resolve));
  }
  $('token-form').addEventListener('submit', (e) => {
    e.preventDefault();
    sessionStorage.setItem(KEY, $('token').value);
    $('token').value = '';
    $('token-form').hidden = true;
    $('forget-token').hidden = false;
    const n = $('token-notice');
    if (n) n.hidden = true;
    st.waiters.splice(0).forEach((w) => w());
    load(null);
  });
  $('forget-token').addEventListener('click', () => {
    sessionStorage.removeItem(KEY);
    askToken();
  });

  // ---- filters and list
  const FILTERS = ['status', 'kind', 'domain', 'company'];
  function filters() {
    const q = new URLSearchParams();
    for (const f of FILTERS) {
      const v = $('f-' + f).value.trim();
      if (v) q.set(f, v);
    }
    return q;
  }
  function matches(v) {
    const q = filters();
    if (q.get('status') && v.status !== q.get('status')) return false;
    if (q.get('kind') && v.kind !== q.get('kind')) return false;
    if (q.get('domain') && !v.domains.includes(q.get('domain').toLowerCase())) return false;
    return !q.get('company'); // the company is not in the view: reload to see new ones
  }
  async function load(cursor) {
    const q = filters();
    q.set('limit', String(PAGE));
    if (cursor) q.set('cursor', cursor);
    const r = await api('GET', API + '/workflows?' + q.toString());
    if (!r.res.ok) { say('Listing refused: ' + refusal(r), 'error'); return; }
    st.cursor = cursor;
    st.next = r.res.headers.get('X-Next-Cursor');
    st.views.clear();
    const body = $('rows');
    body.textContent = '';
    for (const v of r.data) { st.views.set(v.id, v); body.appendChild(row(v)); }
    $('next-page').hidden = !st.next;
    $('first-page').hidden = !cursor;
    const stat = $('next-static');
    if (stat) stat.remove();
    inflight();
  }
  function actionsFor(v) {
    const a = [];
    if (v.kind !== 'managed') return a;
    if (v.status === 'pending' || v.status === 'running') a.push('pause');
    if (v.status === 'paused') a.push('resume');
    if (['pending', 'running', 'paused'].includes(v.status)) a.push('cancel');
    if (v.status === 'failed' || v.status === 'cancelled') a.push('retry');
    return a;
  }
  function row(v) {
    const tr = el('tr');
    tr.dataset.id = v.id;
    const id = el('td', v.id, 'id');
    id.title = 'show the stage timeline';
    id.addEventListener('click', () => showDetail(v.id));
    tr.appendChild(id);
    tr.appendChild(el('td', v.kind));
    tr.appendChild(el('td', v.status, 'st-' + v.status));
    tr.appendChild(el('td', v.domains.join(', ')));
    tr.appendChild(el('td', v.created_at));
    tr.appendChild(el('td', v.updated_at));
    const stages = el('td');
    for (const s of v.stages) {
      stages.appendChild(el('span', s.name + ' ' + s.status + (s.attempt > 1 ? ' ×' + s.attempt : '') + (s.waiting_for_window_until ? ' (window opens ' + s.waiting_for_window_until + ')' : ''), 'stage s-' + s.status));
      stages.appendChild(document.createTextNode(' '));
    }
    tr.appendChild(stages);
    const acts = el('td', null, 'actions');
    for (const a of actionsFor(v)) {
      const b = el('button', a);
      b.type = 'button';
      b.dataset.action = a;
      b.addEventListener('click', () => act(v.id, a));
      acts.appendChild(b);
    }
    tr.appendChild(acts);
    return tr;
  }
  function upsert(v) {
    const body = $('rows');
    const old = body.querySelector('tr[data-id="' + v.id + '"]');
    const known = st.views.get(v.id);
    if (known && known.updated_at > v.updated_at) return;
    if (old) {
      st.views.set(v.id, v);
      body.replaceChild(row(v), old);
    } else if (!st.cursor && matches(v)) {
      st.views.set(v.id, v);
      body.insertBefore(row(v), body.firstChild);
    }
    if (st.detail === v.id) renderDetail(v);
    inflight();
  }

  // ---- actions
  async function act(id, action) {
    if (!window.confirm(action + ' workflow ' + id + '?')) return;
    const r = await api('POST', API + '/workflows/' + id + '/' + action);
    if (r.res.ok) {
      say(action + ': workflow ' + id + ' is now ' + r.data.status, 'ok');
      upsert(r.data);
    } else {
      say(action + ' refused: ' + refusal(r), 'error');
    }
  }
  async function scan(ids) {
    const what = ids ? ids.length + ' chosen domain(s)' : 'every enabled domain';
    if (!window.confirm('Scan now: ' + what + '?')) return;
    const r = await api('POST', API + '/workflows', ids ? { domain_ids: ids } : {});
    if (r.res.ok) {
      say('Scan now: ' + r.data.length + ' workflow(s) started', 'ok');
      r.data.forEach(upsert);
    } else {
      say('Scan now refused: ' + refusal(r), 'error');
    }
  }
  $('scan-all').addEventListener('click', () => scan(null));
  $('scan-chosen').addEventListener('click', () => {
    const ids = $('scan-ids').value.split(/[\s,]+/).filter(Boolean);
    if (!ids.length) { say('Enter domain ids first', 'error'); return; }
    scan(ids);
  });

  // ---- one workflow's stage timeline
  function fmtDuration(ms) {
    if (!(ms >= 0)) return '';
    const s = Math.round(ms / 1000);
    return s < 60 ? s + ' s' : Math.floor(s / 60) + ' min ' + (s % 60) + ' s';
  }
  function renderDetail(v) {
    $('detail').hidden = false;
    $('detail-id').textContent = v.id;
    $('detail-head').textContent = v.kind + ', ' + v.status + ', domains: ' + v.domains.join(', ') + ', created ' + v.created_at + ', updated ' + v.updated_at;
    const body = $('detail-stages');
    body.textContent = '';
    for (const s of v.stages) {
      const tr = el('tr');
      tr.appendChild(el('td', s.name));
      tr.appendChild(el('td', s.status + (s.waiting_for_window_until ? ', waiting for window until ' + s.waiting_for_window_until : ''), 'st-' + s.status));
      tr.appendChild(el('td', s.attempt));
      tr.appendChild(el('td', s.started_at || ''));
      tr.appendChild(el('td', s.finished_at || ''));
      const end = s.finished_at ? Date.parse(s.finished_at) : (s.started_at ? Date.now() : NaN);
      tr.appendChild(el('td', s.started_at ? fmtDuration(end - Date.parse(s.started_at)) : ''));
      const d = s.detail === null || s.detail === undefined ? '' : (typeof s.detail === 'string' ? s.detail : JSON.stringify(s.detail));
      tr.appendChild(el('td', d, 'detail'));
      body.appendChild(tr);
    }
  }
  async function showDetail(id) {
    st.detail = id;
    const r = await api('GET', API + '/workflows/' + id);
    if (r.res.ok) renderDetail(r.data); else say('Workflow refused: ' + refusal(r), 'error');
  }
  $('detail-close').addEventListener('click', () => { st.detail = null; $('detail').hidden = true; });

  // ---- stages and replicas (GET /ready, open)
  function inflight() {
    // The stages view is refreshed from GET /api/orchestratorm8/stages (every 5 s).
  }
  async function stages() {
    let r;
    try { r = await api('GET', API + '/stages'); } catch (e) { return; }
    if (!r.res.ok || !Array.isArray(r.data)) return;
    const body = $('stage-rows');
    body.textContent = '';
    const unknown = (n) => (n === null || n === undefined ? 'unknown' : n);
    for (const s of r.data) {
      const tr = el('tr');
      tr.appendChild(el('td', s.name));
      tr.appendChild(el('td', s.queue || ''));
      tr.appendChild(el('td', unknown(s.queue_depth) + (s.queue_max_length ? ' / ' + s.queue_max_length : '')));
      tr.appendChild(el('td', unknown(s.consumers)));
      tr.appendChild(el('td', s.in_flight));
      tr.appendChild(el('td', s.max_in_flight ? s.max_in_flight : 'no limit'));
      tr.appendChild(el('td', s.backpressure || 'none', s.backpressure ? 'st-paused' : ''));
      body.appendChild(tr);
    }
  }
  async function ready() {
    let r;
    try { r = await api('GET', '/ready'); } catch (e) { return; }
    if (!r.data) return;
    const badge = $('replica');
    const leadership = r.data.leadership || r.data.role;
    badge.textContent = 'this replica: ' + leadership + ', ' + r.data.status;
    badge.className = 'badge ' + leadership;
    const q = $('queue-rows');
    q.textContent = '';
    for (const [name, n] of Object.entries(r.data.consumers || {})) {
      const tr = el('tr');
      tr.appendChild(el('td', name));
      tr.appendChild(el('td', n === null ? 'unknown' : n));
      q.appendChild(tr);
    }
    $('this-replica').textContent = 'This replica (' + location.host + '): ' + leadership + ', ' +
      r.data.status + '; ' + Object.entries(r.data.checks || {}).map(([k, v]) => k + ': ' + v).join(', ');
  }
  // Every live replica (GET /api/orchestratorm8/replicas, with the token).
  async function replicas() {
    let r;
    try { r = await api('GET', API + '/replicas'); } catch (e) { return; }
    if (!r.res.ok || !Array.isArray(r.data)) return;
    const rep = $('replica-rows');
    rep.textContent = '';
    for (const x of r.data) {
      const tr = el('tr');
      tr.appendChild(el('td', x.name));
      tr.appendChild(el('td', x.role, 'badge ' + x.role));
      tr.appendChild(el('td', x.version));
      tr.appendChild(el('td', x.started_at));
      tr.appendChild(el('td', x.seen_at));
      rep.appendChild(tr);
    }
  }

  // ---- live updates: the event stream, read with fetch (EventSource cannot send
  // the Authorization header), resumed with Last-Event-ID.
  function setLive(on) {
    const b = $('live');
    b.textContent = on ? 'live' : 'reconnecting';
    b.className = 'badge ' + (on ? 'on' : 'off');
  }
  function parseEvent(block) {
    const ev = { data: '' };
    for (const line of block.split('\n')) {
      if (!line || line[0] === ':') continue;
      const i = line.indexOf(':');
      const field = i < 0 ? line : line.slice(0, i);
      let value = i < 0 ? '' : line.slice(i + 1);
      if (value[0] === ' ') value = value.slice(1);
      if (field === 'data') ev.data += (ev.data ? '\n' : '') + value;
      else ev[field] = value;
    }
    return ev;
  }
  async function live() {
    let last = null;
    for (;;) {
      try {
        const h = headers({ Accept: 'text/event-stream' });
        if (last) h['Last-Event-ID'] = last;
        const res = await fetch(API + '/events', { headers: h, cache: 'no-store' });
        if (res.status === 401) { setLive(false); askToken(); await tokenReady(); continue; }
        if (!res.ok || !res.body) throw new Error('HTTP ' + res.status);
        setLive(true);
        const reader = res.body.getReader();
        const dec = new TextDecoder();
        let buf = '';
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buf += dec.decode(value, { stream: true }).replace(/\r\n?/g, '\n');
          let i;
          while ((i = buf.indexOf('\n\n')) >= 0) {
            const ev = parseEvent(buf.slice(0, i));
            buf = buf.slice(i + 2);
            if (ev.id) last = ev.id;
            if (ev.event === 'workflow' && ev.data) upsert(JSON.parse(ev.data));
          }
        }
      } catch (e) {
        // reconnect below
      }
      setLive(false);
      await sleep(2000);
    }
  }

  // ---- start
  function show(hash) {
    $('stages').hidden = hash !== '#stages';
    $('replicas').hidden = hash !== '#replicas';
  }
  window.addEventListener('hashchange', () => show(location.hash));
  document.querySelectorAll('.js-only').forEach((e) => {
    if (e.id !== 'token-form' && e.id !== 'forget-token' && e.id !== 'stages' && e.id !== 'replicas' && e.id !== 'next-page' && e.id !== 'first-page') e.hidden = false;
  });
  show(location.hash);
  const params = new URLSearchParams(location.search);
  for (const f of FILTERS) if (params.get(f)) $('f-' + f).value = params.get(f);
  $('filters').addEventListener('submit', (e) => {
    e.preventDefault();
    st.back = [];
    history.replaceState(null, '', '/?' + filters().toString());
    load(null);
  });
  $('next-page').addEventListener('click', () => { st.back.push(st.cursor); load(st.next); });
  $('first-page').addEventListener('click', () => { st.back = []; load(null); });
  const open = document.body.dataset.open === 'true';
  if (token()) $('forget-token').hidden = false;
  if (open || token()) load(params.get('cursor')); else askToken();
  ready();
  stages();
  replicas();
  setInterval(() => { ready(); if (open || token()) { stages(); replicas(); } }, 5000);
  live();
})();
