// The agent's dashboard. It reads the HTTP API like any other client:
// /v1/members, /v1/history and /v1/agent/self for a snapshot, then
// /v1/events for every change after it. The member list and the load
// history are the only state; every card is drawn from them. No framework,
// no build step, no external URL.
'use strict';

(() => {
  const EVENT_TYPES = ['member-join', 'member-leave', 'member-failed', 'member-update', 'member-reap'];
  const RESERVED_TAGS = new Set(['role', 'cpu', 'mem', 'ni', 'cap', 'kind', 'host', 'rid', 'ep', 'pid',
    'rp', 'rc', 'gen', 'args', 'end', 'drain', 'hc']);
  const STATUS_ORDER = { alive: 0, leaving: 1, failed: 2, left: 3 };
  const SVG_W = 300, SVG_H = 60;
  const HIGH_LOAD = 80;
  const SPANS = [1, 2, 5, 10, 30, 60].map((m) => m * 60000);
  const STALE_NOTE = {
    failed: 'Failed: it stopped answering. The load shown is the last it published.',
    leaving: 'Leaving the mesh. The load shown is the last it published.',
    left: 'Left the mesh. The load shown is the last it published.',
  };

  const state = {
    self: null,
    members: new Map(), // name → member as /v1/members shows it
    history: new Map(), // server name → [{t, cpu, mem}], t in the agent's clock
    windowMs: 600000,
    clockOffset: 0, // agent clock minus browser clock, ms
    tokens: [],
  };

  const $ = (sel, root = document) => root.querySelector(sel);
  const byName = new Intl.Collator(undefined, { numeric: true }).compare;

  // ---- Snapshot and events ----

  async function getJSON(path) {
    const res = await fetch(path, { cache: 'no-store', headers: { Accept: 'application/json' } });
    if (!res.ok) throw new Error(`${path} answered HTTP ${res.status}`);
    return { body: await res.json(), date: res.headers.get('Date') };
  }

  // Events that arrive while a snapshot is being fetched are kept and
  // applied on top of it: each carries the whole member, so replaying one
  // the snapshot already holds changes nothing.
  let buffered = null;
  let syncing = false, syncAgain = false, syncRetry = null;

  async function resync() {
    if (syncing) { syncAgain = true; return; }
    syncing = true;
    clearTimeout(syncRetry);
    buffered = [];
    try {
      const [members, history, self] = await Promise.all(
        [getJSON('/v1/members'), getJSON('/v1/history'), getJSON('/v1/agent/self')]);
      const agentNow = Date.parse(history.date);
      // The Date header has one-second resolution: only a clearly wrong
      // browser clock is corrected.
      const skew = Number.isFinite(agentNow) ? agentNow - Date.now() : 0;
      state.clockOffset = Math.abs(skew) > 2000 ? skew : 0;
      state.members = new Map((members.body.members || []).map((m) => [m.name, m]));
      state.windowMs = (history.body.window_s || 600) * 1000;
      state.history = new Map(Object.entries(history.body.servers || {})
        .map(([name, pts]) => [name, pts.slice().sort((a, b) => a.t - b.t)]));
      state.self = self.body;
      showError(null);
    } catch (err) {
      showError(`Cannot read the agent's API: ${err.message}. Retrying…`);
      syncRetry = setTimeout(resync, 5000);
    } finally {
      const events = buffered || [];
      buffered = null;
      events.forEach(applyEvent);
      syncing = false;
      schedule();
      if (syncAgain) { syncAgain = false; resync(); }
    }
  }

  function onEvent(ev) {
    let data;
    try { data = JSON.parse(ev.data); } catch { return; }
    data.type = data.type || ev.type;
    data.at = Date.now() + state.clockOffset;
    if (buffered) buffered.push(data); else applyEvent(data);
    schedule();
  }

  function applyEvent(e) {
    for (const m of e.members || []) {
      if (e.type === 'member-reap') { state.members.delete(m.name); continue; }
      state.members.set(m.name, m);
      // The agent records history from the same two event types.
      if ((e.type === 'member-join' || e.type === 'member-update') && m.role === 'server' &&
          typeof m.cpu === 'number' && typeof m.mem === 'number') {
        addPoint(m.name, { t: e.at, cpu: m.cpu, mem: m.mem });
      }
    }
  }

  function addPoint(name, p) {
    const pts = state.history.get(name) || [];
    const last = pts[pts.length - 1];
    if (last && last.cpu === p.cpu && last.mem === p.mem) return;
    if (last && p.t <= last.t) p.t = last.t + 1;
    pts.push(p);
    const cut = p.t - state.windowMs;
    while (pts.length > 1 && pts[1].t <= cut) pts.shift(); // keep the one that holds at the window's start
    state.history.set(name, pts);
  }

  // ---- The live stream ----

  let source = null, reconnectTimer = null, reconnectDelay = 1000;

  function connect() {
    clearTimeout(reconnectTimer);
    setLive(source ? 'reconnecting' : 'connecting');
    source = new EventSource('/v1/events');
    source.onopen = () => { reconnectDelay = 1000; setLive('live'); resync(); };
    source.onerror = () => {
      if (source.readyState === EventSource.CLOSED) {
        // The browser gave up (an HTTP error, not a dropped connection):
        // try again ourselves, backing off.
        source.close();
        reconnectTimer = setTimeout(connect, reconnectDelay);
        reconnectDelay = Math.min(reconnectDelay * 2, 30000);
      }
      setLive('reconnecting');
    };
    EVENT_TYPES.forEach((t) => source.addEventListener(t, onEvent));
    source.addEventListener('resync', () => resync());
  }

  function setLive(s) {
    const el = $('#live');
    el.dataset.state = s;
    $('.text', el).textContent = s;
    el.title = s === 'live' ? 'following /v1/events' : 'the event stream is down; the view may be stale';
  }

  function showError(msg) {
    const el = $('#error');
    el.hidden = !msg;
    el.textContent = msg || '';
  }

  // ---- Drawing ----

  let drawPending = false;
  function schedule() {
    if (drawPending) return;
    drawPending = true;
    // requestAnimationFrame batches bursts; the timer covers hidden tabs.
    const run = () => { if (drawPending) { drawPending = false; draw(); } };
    requestAnimationFrame(run);
    setTimeout(run, 250);
  }

  function statusOf(m) { return m.status in STATUS_ORDER ? m.status : 'unknown'; }

  function haystack(m) {
    const parts = [m.name, m.status, m.role, m.kind, m.host, m.endpoint, m.addr && `${m.addr}:${m.port}`];
    for (const [k, v] of Object.entries(m.tags || {})) parts.push(v, `${k}=${v}`);
    return parts.filter(Boolean).join(' ').toLowerCase();
  }
  function matches(m) { return state.tokens.every((tok) => haystack(m).includes(tok)); }

  function model() {
    const servers = [], interps = [], others = [];
    for (const m of state.members.values()) {
      if (m.role === 'server') servers.push(m);
      else if (m.role === 'interpreter') interps.push(m);
      else others.push(m);
    }
    servers.sort((a, b) => byName(a.name, b.name));
    others.sort((a, b) => byName(a.name, b.name));
    interps.sort((a, b) => (STATUS_ORDER[a.status] ?? 9) - (STATUS_ORDER[b.status] ?? 9) || byName(a.name, b.name));
    const serverNames = new Set(servers.map((s) => s.name));
    const hosted = new Map(servers.map((s) => [s.name, []]));
    const orphans = [];
    for (const i of interps) (serverNames.has(i.host) ? hosted.get(i.host) : orphans).push(i);
    return { servers, interps, others, hosted, orphans };
  }

  function draw() {
    const { servers, interps, others, hosted, orphans } = model();
    drawHeader(servers, interps);

    const grid = $('#servers');
    const span = chartSpan();
    const cards = [];
    let shown = 0;
    for (const s of servers) {
      const card = keyed(grid, 'server', s.name, newServerCard);
      const mine = hosted.get(s.name);
      const selfMatch = matches(s);
      const rows = selfMatch ? mine : mine.filter(matches);
      card.hidden = !(selfMatch || rows.length);
      if (!card.hidden) shown++;
      fillServerCard(card, s, mine, rows, span);
      cards.push(card);
    }
    const visibleOrphans = orphans.filter(matches);
    if (orphans.length) {
      const card = keyed(grid, 'orphans', '', () => $('#tpl-orphans').content.firstElementChild.cloneNode(true));
      fillRows($('.interps', card), visibleOrphans, interpreterRow);
      card.hidden = !visibleOrphans.length;
      cards.push(card);
    }
    place(grid, cards);
    $('#no-servers').hidden = servers.length > 0;

    const visibleOthers = others.filter(matches);
    fillRows($('#other-list'), visibleOthers, memberRow);
    $('#others').hidden = !visibleOthers.length;

    const out = $('#filter-result');
    out.textContent = state.tokens.length
      ? `${shown} of ${servers.length} servers, ${visibleOthers.length} other members match` : '';
  }

  function drawHeader(servers, interps) {
    const self = state.self || {};
    $('#self-name').textContent = self.name || 'agent';
    $('#self-role').textContent = self.role ? `${self.role}${self.profile ? ` · ${self.profile}` : ''}` : '';
    $('#self-version').textContent = self.version ? `· v${self.version}` : '';
    const all = [...state.members.values()];
    const counts = {
      servers: servers.length,
      'servers-alive': servers.filter((m) => m.status === 'alive').length,
      interpreters: interps.filter((i) => i.status === 'alive').length,
      failed: all.filter((m) => m.status === 'failed').length,
      left: all.filter((m) => m.status === 'left').length,
      members: all.length,
    };
    for (const [k, v] of Object.entries(counts)) {
      const n = $(`[data-count="${k}"]`);
      setText(n, String(v));
      const unit = n.parentElement.querySelector('[data-plural]');
      if (unit) setText(unit, unit.dataset.plural.split('|')[v === 1 ? 0 : 1]);
      const li = $(`[data-when-nonzero="${k}"]`);
      if (li) li.classList.toggle('nonzero', v > 0);
    }
    document.title = `${counts.failed ? `(${counts.failed} failed) ` : ''}${self.name || 'agent'} · agent`;
  }

  // keyed finds the child of parent that stands for one key, or makes it.
  function keyed(parent, attr, key, make) {
    for (const el of parent.children) if (el.dataset[attr] === key) return el;
    const el = make();
    el.dataset[attr] = key;
    return el;
  }

  // place puts els into parent in this order, moving only what moved, and
  // removes the rest.
  function place(parent, els) {
    els.forEach((el, i) => { if (parent.children[i] !== el) parent.insertBefore(el, parent.children[i] || null); });
    while (parent.children.length > els.length) parent.lastElementChild.remove();
  }

  let cardSeq = 0;
  function newServerCard() {
    const card = $('#tpl-server').content.firstElementChild.cloneNode(true);
    const id = `server-${++cardSeq}`;
    $('.name', card).id = id;
    card.setAttribute('aria-labelledby', id);
    return card;
  }

  function setText(el, text) { if (el.textContent !== text) el.textContent = text; }

  function badge(el, status) {
    el.dataset.status = status;
    setText(el, status);
  }

  function fillServerCard(card, s, mine, rows, span) {
    const status = statusOf(s);
    card.dataset.status = status;
    setText($('.name', card), s.name);
    badge($('.badge', card), status);
    // A draining server takes no new interpreters: say so beside its address.
    // A server with a critical health check takes none either: name the checks.
    setText($('.addr', card), `${s.addr}:${s.port}${s.draining ? ' · draining' : ''}${s.unhealthy ? ' · unhealthy: ' + s.unhealthy : ''}`);
    card.dataset.draining = s.draining ? 'yes' : 'no';

    const chips = Object.entries(s.tags || {}).filter(([k]) => !RESERVED_TAGS.has(k))
      .sort(([a], [b]) => byName(a, b)).map(([k, v]) => `${k}=${v}`);
    const chipList = $('.chips', card);
    if (chipList.dataset.sig !== chips.join('\n')) {
      chipList.dataset.sig = chips.join('\n');
      chipList.replaceChildren(...chips.map((c) => Object.assign(document.createElement('li'), { textContent: c })));
    }
    chipList.hidden = !chips.length;

    const stale = $('.stale', card);
    stale.hidden = status === 'alive';
    setText(stale, STALE_NOTE[status] || 'Status unknown: the load shown is the last it published.');
    metric(card, 'cpu', s.cpu);
    metric(card, 'mem', s.mem);
    drawChart(card, s.name, span);

    const alive = mine.filter((i) => i.status === 'alive').length;
    const cap = Number(s.tags && s.tags.cap) || 0;
    const published = typeof s.interpreters === 'number' ? s.interpreters : alive;
    let count = `${published} interpreter${published === 1 ? '' : 's'} running`;
    if (status !== 'alive') count = `last published: ${count}`;
    if (cap) count += ` of ${cap}`;
    if (published !== alive) count += ` (${alive} alive in this view)`;
    setText($('.interp-count', card), count);

    const current = rows.filter((i) => i.status !== 'left');
    const gone = rows.filter((i) => i.status === 'left');
    fillRows($('.interps', card), current, interpreterRow);
    const details = $('.gone', card);
    details.hidden = !gone.length;
    setText($('summary', details), `${gone.length} stopped interpreter${gone.length === 1 ? '' : 's'}`);
    fillRows($('.interps-gone', details), gone, interpreterRow);
  }

  function metric(card, name, value) {
    const el = $(`[data-metric="${name}"]`, card);
    const bar = $('.bar', el);
    const known = typeof value === 'number';
    const v = known ? Math.max(0, Math.min(100, value)) : 0;
    $('.fill', bar).style.width = `${v}%`;
    if (known) bar.setAttribute('aria-valuenow', v.toFixed(1)); else bar.removeAttribute('aria-valuenow');
    bar.setAttribute('aria-valuetext', known ? `${value.toFixed(1)} percent` : 'not published yet');
    setText($('.m-val', el), known ? `${value.toFixed(1)}%` : '—');
    el.classList.toggle('high', known && value >= HIGH_LOAD);
  }

  // chartSpan is the time every chart shows: the history window, or less
  // while the history is young, so a new mesh's first minutes are readable.
  // All charts share it, so cards compare at a glance.
  function chartSpan() {
    const now = Date.now() + state.clockOffset;
    let first = now;
    for (const pts of state.history.values()) if (pts.length) first = Math.min(first, pts[0].t);
    const fits = SPANS.find((ms) => ms >= now - first) || state.windowMs;
    return Math.min(fits, state.windowMs);
  }

  function drawChart(card, name, windowMs) {
    const svg = $('.spark', card);
    const now = Date.now() + state.clockOffset;
    const t0 = now - windowMs;
    const all = state.history.get(name) || [];
    let first = 0;
    while (first + 1 < all.length && all[first + 1].t <= t0) first++;
    const pts = all.slice(first);
    const x = (t) => Math.max(0, Math.min(SVG_W, ((t - t0) / windowMs) * SVG_W)).toFixed(1);
    const y = (v) => (SVG_H - 1 - (Math.max(0, Math.min(100, v)) / 100) * (SVG_H - 2)).toFixed(1);
    // A published value holds until the next one: a step line.
    const path = (key) => {
      if (!pts.length) return '';
      let d = `M${x(pts[0].t)},${y(pts[0][key])}`;
      for (const p of pts.slice(1)) d += `H${x(p.t)}V${y(p[key])}`;
      return `${d}H${SVG_W}`;
    };
    $('.line.cpu', svg).setAttribute('d', path('cpu'));
    $('.line.mem', svg).setAttribute('d', path('mem'));
    const span = windowMs >= 60000 ? `${Math.round(windowMs / 60000)} min` : `${Math.round(windowMs / 1000)} s`;
    setText($('.span-label', card), `−${span}`);
    $('.chart-empty', card).hidden = pts.length > 0;
    svg.setAttribute('aria-label', pts.length ? summary(pts, span) : 'no load published yet');
  }

  function summary(pts, span) {
    const range = (key) => {
      const vs = pts.map((p) => p[key]);
      const lo = Math.min(...vs), hi = Math.max(...vs);
      return lo === hi ? `${lo.toFixed(0)}%` : `${lo.toFixed(0)} to ${hi.toFixed(0)}%`;
    };
    return `Load over the last ${span}: CPU ${range('cpu')}, memory ${range('mem')}`;
  }

  // fillRows keeps one <li> per item, keyed by member name.
  function fillRows(list, items, fill) {
    const els = items.map((m) => {
      const li = keyed(list, 'name', m.name, () => $('#tpl-row').content.firstElementChild.cloneNode(true));
      fill(li, m);
      return li;
    });
    place(list, els);
  }

  function interpreterRow(li, i) {
    li.dataset.interpreter = i.name;
    li.dataset.status = statusOf(i);
    setText($('.r-name', li), i.name);
    badge($('.badge', li), statusOf(i));
    const detail = $('.r-detail', li);
    const parts = [i.kind || 'unknown kind'];
    if (i.tags && i.tags.pid) parts.push(`pid ${i.tags.pid}`);
    const host = state.members.get(i.host);
    if (!i.host) parts.push('names no host');
    else if (!host || host.role !== 'server') parts.push(`host ${i.host} not in view`);
    else if (host.status !== 'alive') parts.push(`host ${host.name} ${host.status}`);
    const sig = [i.endpoint, ...parts].join('|');
    if (detail.dataset.sig === sig) return;
    detail.dataset.sig = sig;
    const ep = document.createElement('code');
    ep.textContent = i.endpoint || 'no endpoint';
    detail.replaceChildren(`${parts[0]} · `, ep, parts.length > 1 ? ` · ${parts.slice(1).join(' · ')}` : '');
  }

  function memberRow(li, m) {
    li.dataset.member = m.name;
    li.dataset.status = statusOf(m);
    setText($('.r-name', li), m.name);
    badge($('.badge', li), statusOf(m));
    const tags = Object.entries(m.tags || {}).map(([k, v]) => `${k}=${v}`).join(' ');
    setText($('.r-detail', li), `${m.addr}:${m.port}${m.role ? ` · role ${m.role}` : ''}${tags ? ` · ${tags}` : ''}`);
  }

  // ---- Filter ----

  function setFilter(text) {
    state.tokens = text.toLowerCase().split(/\s+/).filter(Boolean);
    const q = text.trim();
    history.replaceState(null, '', q ? `#q=${encodeURIComponent(q)}` : location.pathname + location.search);
    schedule();
  }

  function initFilter() {
    const input = $('#filter');
    const m = location.hash.match(/^#q=(.*)$/);
    if (m) {
      try { input.value = decodeURIComponent(m[1]); } catch { input.value = m[1]; }
      setFilter(input.value);
    }
    input.addEventListener('input', () => setFilter(input.value));
    $('#filter-form').addEventListener('submit', (e) => e.preventDefault());
    document.addEventListener('keydown', (e) => {
      if (e.key === '/' && document.activeElement !== input && !e.ctrlKey && !e.metaKey && !e.altKey) {
        e.preventDefault();
        input.focus();
      } else if (e.key === 'Escape' && document.activeElement === input && input.value) {
        input.value = '';
        setFilter('');
      }
    });
  }

  initFilter();
  resync();
  connect();
  // Step lines run to "now"; redraw so they keep running while nothing changes.
  setInterval(schedule, 5000);
})();
