// State → DOM. Every value goes in as text (never innerHTML): user ids and
// titles come from events. Sections are rebuilt whole on each render; the
// render loop in console.js batches events so this runs a few times a second
// at most.

const STATE_LABEL = {
  IDLE: 'idle', WARMING_UP: 'warming up', ACTIVE_WRITING: 'writing', FLOW_STATE: 'in flow',
  PAUSED: 'paused', BREAK: 'on a break', ENDED: 'ended',
};

// h('td', {class: 'num'}, 'text', child…)
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (/^data[A-Z]/.test(k)) el.dataset[k.slice(4, 5).toLowerCase() + k.slice(5)] = v;
    else el.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : String(c));
  }
  return el;
}

const time = (ts) => (typeof ts === 'number' ? new Date(ts).toLocaleTimeString([], { hour12: false }) : '');
const fmt = (n, digits = 1) => (typeof n === 'number' ? n.toFixed(digits) : '–');
const timeEl = (ts) => h('time', { datetime: typeof ts === 'number' ? new Date(ts).toISOString() : null }, time(ts));

function table(caption, headers, rows) {
  // Scrolls sideways inside its card on narrow screens (focusable, so the
  // keyboard can scroll it too).
  return h('div', { class: 'table-wrap', role: 'region', 'aria-label': `${caption} (table)`, tabindex: '0' }, h('table', {},
    h('caption', { class: 'visually-hidden' }, caption),
    h('thead', {}, h('tr', {}, headers.map(([label, cls]) => h('th', { scope: 'col', class: cls }, label)))),
    h('tbody', {}, rows)));
}

function fill(section, nodes, emptyText) {
  const content = section.querySelector('.content');
  content.replaceChildren(...(nodes.length ? nodes : [h('p', { class: 'empty' }, emptyText)]));
}

// Where the cursor is: "¶14:9" plus the selection, and a bar placing the
// paragraph within the visible range when the viewport is known.
function cursor(p) {
  if (p.paragraph === null) return h('span', { class: 'meta' }, 'unknown');
  const sel = p.selection ? ` sel ${p.selection[0]}–${p.selection[1]}` : '';
  const text = h('span', { class: 'cursor' }, `¶${p.paragraph}:${p.offset ?? 0}${sel}`);
  if (!p.viewport || p.viewport[1] <= p.viewport[0]) return text;
  const [first, last] = p.viewport;
  const at = Math.min(1, Math.max(0, (p.paragraph - first) / (last - first)));
  return h('span', {}, text, ' ',
    h('span', { class: 'bar', title: `viewport ¶${first}–¶${last}`, 'aria-hidden': 'true' },
      h('span', { dataAt: at.toFixed(2) })));
}

export function renderPresence(section, state) {
  const docs = [...state.presence.entries()].sort((a, b) => a[0].localeCompare(b[0]));
  const nodes = docs.map(([doc, users]) => {
    const rows = [...users.entries()]
      .sort((a, b) => a[0].localeCompare(b[0]))
      .map(([user, p]) => h('tr', { dataUser: user, dataStatus: p.status },
        h('th', { scope: 'row' }, user),
        h('td', {}, h('span', { class: `badge s-${p.status}` }, p.status)),
        h('td', {}, cursor(p)),
        h('td', {}, p.mode ?? '–'),
        h('td', { class: 'num' }, p.wpm === null ? '–' : fmt(p.wpm))));
    return h('div', { dataDocument: doc },
      h('h3', {}, `Document ${doc}`, h('span', { class: 'meta' }, ` · ${users.size} online`)),
      table(`Collaborators on ${doc}`, [['User'], ['Status'], ['Cursor'], ['Mode'], ['WPM', 'num']], rows));
  });
  fill(section, nodes, 'Nobody online yet.');
  // Bar positions via CSSOM: the CSP forbids style attributes.
  for (const marker of section.querySelectorAll('.bar > span')) marker.style.left = `calc(${marker.dataset.at} * (100% - 3px))`;
}

const SVG = 'http://www.w3.org/2000/svg';
function svg(tag, attrs = {}, ...children) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  el.append(...children);
  return el;
}

// WPM over the last updates as a line, scaled to the session's own peak.
function sparkline(history = []) {
  const w = 80;
  const hgt = 18;
  const peak = Math.max(1, ...history.map((p) => p.wpm));
  const step = history.length > 1 ? w / (history.length - 1) : 0;
  const points = history.map((p, i) => `${(i * step).toFixed(1)},${(hgt - 1 - (p.wpm / peak) * (hgt - 2)).toFixed(1)}`);
  const label = history.length
    ? `WPM over the last ${history.length} updates: ${fmt(Math.min(...history.map((p) => p.wpm)))} to ${fmt(peak)}`
    : 'no WPM yet';
  return svg('svg', { class: 'spark', viewBox: `0 0 ${w} ${hgt}`, width: w, height: hgt, role: 'img', 'aria-label': label },
    svg('title', {}, label),
    svg('polyline', { points: points.join(' '), 'data-points': String(history.length) }));
}

// The session's states over the last `span` ms as coloured segments.
function timeline(states = [], now, span = 10 * 60_000) {
  const w = 120;
  const from = now - span;
  const x = (ts) => (Math.max(0, ts - from) / span) * w;
  const segments = states.map((st, i) => {
    const end = states[i + 1]?.ts ?? now;
    return svg('rect', { class: `seg s-${st.state}`, x: x(st.ts).toFixed(1), y: 2, height: 12,
      width: Math.max(1, x(end) - x(st.ts)).toFixed(1) });
  });
  const label = states.length
    ? `States: ${states.map((st) => `${STATE_LABEL[st.state] ?? st.state} from ${time(st.ts)}`).join(', ')}`
    : 'no state yet';
  return svg('svg', { class: 'timeline', viewBox: `0 0 ${w} 16`, width: w, height: 16, role: 'img', 'aria-label': label },
    svg('title', {}, label), ...segments);
}

export function renderSessions(section, state) {
  const now = Math.max(0, ...[...state.sessions.values()].map((s) => s.ts));
  const rows = [...state.sessions.values()]
    .sort((a, b) => (b.wpm ?? -1) - (a.wpm ?? -1) || a.user.localeCompare(b.user))
    .map((s) => h('tr', { dataUser: s.user, dataState: s.state ?? 'unknown' },
      h('th', { scope: 'row' }, s.user),
      h('td', {}, s.state ? h('span', { class: `badge s-${s.state}` }, STATE_LABEL[s.state] ?? s.state) : h('span', { class: 'meta' }, 'typing')),
      h('td', { class: 'num wpm' }, fmt(s.wpm)),
      h('td', { class: 'chart' }, sparkline(s.history)),
      h('td', { class: 'chart' }, timeline(s.states, now)),
      h('td', {}, s.project ?? '–'),
      h('td', {}, s.document ?? '–'),
      h('td', {}, s.since ? timeEl(s.since) : '–')));
  const nodes = rows.length
    ? [table('Writing sessions', [['Writer'], ['State'], ['WPM', 'num'], ['WPM trend'], ['Last 10 min'], ['Project'], ['Document'], ['Started']], rows)]
    : [];
  fill(section, nodes, 'No active session yet.');
}

// The server's own figures (channel category:stats): events/s in and out,
// and the watermark lag, over the last minutes; one point per second.
export function renderStats(section, series) {
  if (series.length === 0) {
    fill(section, [], 'No figures yet (admins and analysts see them).');
    return;
  }
  const last = series.at(-1);
  const now = h('p', { class: 'figures' },
    h('span', { class: 'key k-ingest' }, 'ingest'), ` ${fmt(last.ingest)} events/s · `,
    h('span', { class: 'key k-derived' }, 'derived'), ` ${fmt(last.derived)} events/s · `,
    h('span', { class: 'key k-lag' }, 'watermark lag'), ` ${fmt(last.lag / 1000, 2)} s`);
  fill(section, [now,
    chart('throughput', 'Throughput, events per second', series, [['ingest', 'ingest'], ['derived', 'derived']], 'events/s'),
    chart('lag', 'Watermark lag, ms', series, [['lag', 'lag']], 'ms')], '');
}

// A line chart of `keys` of `series`, scaled to its peak, full width.
function chart(cls, title, series, keys, unit) {
  const w = 300;
  const hgt = 60;
  const peak = Math.max(1, ...series.flatMap((p) => keys.map(([k]) => p[k])));
  const step = series.length > 1 ? w / (series.length - 1) : 0;
  const lines = keys.map(([k, c]) => {
    const points = series.map((p, i) => `${(i * step).toFixed(1)},${(hgt - 1 - (p[k] / peak) * (hgt - 2)).toFixed(1)}`);
    return svg('polyline', { class: c, points: points.join(' '), 'data-points': String(series.length),
      'data-max': String(Math.max(...series.map((p) => p[k]))) });
  });
  const label = `${title} over the last ${series.length} s: ${keys
    .map(([k]) => `${k} ${fmt(Math.min(...series.map((p) => p[k])))} to ${fmt(Math.max(...series.map((p) => p[k])))} ${unit}`)
    .join('; ')}`;
  return h('figure', { class: 'chart-fig' },
    h('figcaption', {}, title, h('span', { class: 'meta' }, ` · peak ${fmt(peak)}`)),
    svg('svg', { class: `line-chart ${cls}`, viewBox: `0 0 ${w} ${hgt}`, preserveAspectRatio: 'none', role: 'img', 'aria-label': label },
      svg('title', {}, label), ...lines));
}

export function renderConflicts(section, state) {
  const open = [...state.conflicts.values()]
    .sort((a, b) => b.ts - a.ts)
    .map((c) => h('li', { dataConflict: c.id, dataSeverity: c.severity },
      h('span', { class: `badge sev-${c.severity}` }, c.severity), ' ',
      h('span', { class: 'title' }, c.users.join(' ⇄ ')),
      ` on ${c.document} ¶${c.paragraph} `,
      h('span', { class: 'meta' }, `(${String(c.kind).replace(/_/g, ' ')}, since `, timeEl(c.ts), ')'),
      h('div', {}, c.suggestion)));
  const resolved = state.resolved.map((r) => h('li', { class: 'resolved', dataResolved: r.id },
    h('span', { class: 'badge' }, 'resolved'), ' ',
    `${r.users.join(' ⇄ ')} on ${r.document} ¶${r.paragraph} after ${Math.round((r.durationMs ?? 0) / 1000)} s`,
    r.resolution ? ` (${r.resolution.replace(/_/g, ' ')})` : ''));
  const nodes = [];
  if (open.length) nodes.push(h('ul', { class: 'conflicts', 'aria-label': 'Open conflicts' }, open));
  else nodes.push(h('p', { class: 'empty' }, 'No open conflict.'));
  if (resolved.length) nodes.push(h('h3', {}, 'Recently resolved'), h('ul', { class: 'conflicts' }, resolved));
  fill(section, nodes, 'No open conflict.');
}

// The feed only grows at the top: existing items stay (and keep their place
// for screen readers, the list is aria-live); new ones are prepended.
export function renderFeed(section, state) {
  const list = section.querySelector('ol.feed');
  const shown = new Set([...list.children].map((li) => li.dataset.key));
  const fresh = [];
  for (const item of state.feed) {
    if (shown.has(item.uid)) break;
    fresh.push(item);
  }
  for (const item of fresh.reverse()) {
    list.prepend(h('li', { dataKey: item.uid, dataKind: item.kind, dataPriority: item.priority },
      item.priority ? h('span', { class: `badge p-${item.priority}` }, item.priority) : null, ' ',
      h('span', { class: 'title' }, item.title ?? '(no title)'),
      h('div', {}, item.body ?? ''),
      h('div', { class: 'meta' },
        item.kind, item.rule ? ` · rule ${item.rule}` : '', item.recipient ? ` · for ${item.recipient}` : '', ' · ', timeEl(item.ts))));
  }
  while (list.children.length > state.feed.length) list.lastElementChild.remove();
}

export function renderConnections(list, sockets) {
  list.replaceChildren(...sockets.map((s) => h('li', { dataPath: s.path, dataState: s.state },
    `${s.path} ${s.state}`, s.detail ? ` · ${s.detail}` : '', s.gaps ? ` · ${s.gaps} gap(s)` : '')));
}
