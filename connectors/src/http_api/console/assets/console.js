// The console's entry point: query parameters → channels, one socket per
// fanout path, events → model → view.
//
//   /?project=p1&document=d1&user=u1&token=JWT   (comma-separated lists allowed)
//
// With no project, document or user the console subscribes to the
// `category:` channels of /ws/analytics, which carry every derived event: the
// admin and analyst view (open to everyone when auth is off), plus
// `category:stats`, the server's throughput and watermark lag.

import { ChannelSocket } from './socket.js';
import { apply, createState, statsSeries } from './model.js';
import {
  renderConflicts, renderConnections, renderFeed, renderPresence, renderSessions, renderStats,
} from './view.js';

const RENDER_EVERY_MS = 100;

const params = new URLSearchParams(location.search);
const list = (name) => (params.get(name) ?? '').split(',').map((s) => s.trim()).filter(Boolean);
const projects = list('project');
const documents = list('document');
const users = list('user');
const token = params.get('token');

// path -> channels, from the routing table (connectors/src/websocket_fanout/routing.rs).
function plan() {
  const paths = new Map();
  const add = (path, channel) => {
    if (!paths.has(path)) paths.set(path, []);
    if (!paths.get(path).includes(channel)) paths.get(path).push(channel);
  };
  for (const p of projects) {
    add('/ws/presence', `project:${p}`);
    add('/ws/collaboration', `project:${p}`);
    add('/ws/analytics', `project:${p}`);
  }
  for (const d of documents) {
    add('/ws/presence', `document:${d}`);
    add('/ws/collaboration', `document:${d}`);
  }
  for (const u of users) {
    add('/ws/analytics', `user:${u}`);
    add('/ws/notifications', `user:${u}`);
  }
  if (paths.size === 0) {
    for (const c of ['writing', 'analytics', 'collaboration', 'system']) add('/ws/analytics', `category:${c}`);
    // The server's own throughput and watermark lag, once a second
    // (connectors/src/websocket_fanout/pipeline_stats.rs).
    add('/ws/analytics', 'category:stats');
  }
  return paths;
}

const state = createState();
const $ = (sel) => document.querySelector(sel);
const sections = {
  presence: $('#presence'), sessions: $('#sessions'), stats: $('#stats'), conflicts: $('#conflicts'), feed: $('#feed'),
};
const dirty = new Set();
let renderTimer = null;

function render() {
  renderTimer = null;
  if (dirty.has('model')) {
    renderPresence(sections.presence, state);
    renderSessions(sections.sessions, state);
    renderStats(sections.stats, statsSeries(state));
    renderConflicts(sections.conflicts, state);
    renderFeed(sections.feed, state);
  }
  if (dirty.has('sockets')) {
    renderConnections($('#connections'), sockets);
    // For tests and monitors: every connection subscribed.
    document.body.dataset.live = String(sockets.every((s) => s.state === 'live'));
  }
  dirty.clear();
}

function schedule(what) {
  dirty.add(what);
  if (renderTimer === null) renderTimer = setTimeout(render, RENDER_EVERY_MS);
}

const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
const query = token ? `?token=${encodeURIComponent(token)}` : '';
const handlers = {
  onEvent(data, channel) {
    if (apply(state, data, channel)) schedule('model');
  },
  onStatus() {
    schedule('sockets');
  },
  onGap(channel) {
    let note = $('#gap');
    if (!note) {
      note = document.createElement('p');
      note.id = 'gap';
      note.className = 'notice';
      $('header').append(note);
    }
    note.textContent = `Missed updates on ${channel} (server restarted or history expired): some entries may be stale.`;
  },
};
const sockets = [...plan()].map(([path, channels]) =>
  new ChannelSocket(path, `${scheme}//${location.host}${path}${query}`, channels, handlers).start());

$('#scope').textContent = projects.length + documents.length + users.length
  ? [['project', projects], ['document', documents], ['user', users]]
    .filter(([, v]) => v.length).map(([k, v]) => `${k} ${v.join(', ')}`).join(' · ')
  : 'all activity (category channels)';
addEventListener('pagehide', () => sockets.forEach((s) => s.stop()));
