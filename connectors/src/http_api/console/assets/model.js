// The console's state: derived events in, bounded maps out. Pure (no DOM, no
// sockets), so the rules are in one place.
//
// The same event can arrive on several channels (user:, project:,
// category:): derived events carry deterministic ids, and an id already seen
// is ignored. Events of one key can arrive out of order across paths, so a
// record only moves forward in event time (`ts`).

export const LIMITS = {
  documents: 100, // documents with someone online
  usersPerDocument: 100,
  sessions: 500,
  history: 60, // WPM samples and state changes kept per session (sparkline, timeline)
  conflicts: 200,
  resolved: 10, // recently resolved conflicts kept for context
  feed: 100,
  seen: 5000, // event ids remembered for de-duplication
  stats: 120, // seconds of throughput and lag kept for the chart
};

const SEVERITY = { LOW: 1, MEDIUM: 2, HIGH: 3 };

export function createState() {
  return {
    presence: new Map(), // document -> Map(user -> {status, paragraph, offset, selection, viewport, mode, wpm, ts})
    sessions: new Map(), // user -> {user, project, document, session, state, wpm, since, ts}
    conflicts: new Map(), // conflict id -> {id, document, project, users, paragraph, severity, kind, suggestion, ts}
    resolved: [], // newest first: {id, document, users, paragraph, durationMs, resolution, ts}
    feed: [], // newest first: {key, kind, priority, title, body, recipient, rule, ts}
    stats: new Map(), // second -> Map(instance -> {ingest, derived, lag}) (system.pipeline_stats)
    seen: new Set(),
    seenOrder: [],
  };
}

// Applies one published payload (a derived event, or the raw JSON of an admin
// broadcast); returns whether anything visible changed.
export function apply(state, data, channel) {
  if (data === null || typeof data !== 'object') return false;
  if (typeof data.type !== 'string') return addBroadcast(state, data, channel);
  if (typeof data.id === 'string') {
    if (state.seen.has(data.id)) return false;
    remember(state, data.id);
  }
  const d = data.data ?? {};
  switch (data.type) {
    case 'collaboration.presence_updated':
      return presence(state, data, d);
    case 'analytics.metric_updated':
      return d.metric === 'wpm' ? liveWpm(state, data, d) : false;
    case 'writing.session_started':
      return session(state, data, { session: d.session_id, since: data.ts, state: 'WARMING_UP' });
    case 'writing.session_state_changed':
      if (d.to === 'ENDED') return endSession(state, data);
      return session(state, data, {
        session: d.session_id,
        state: d.to,
        // A pause or break means nobody is typing; otherwise the live
        // metric (newer, per event) is the better figure.
        ...(d.to === 'PAUSED' || d.to === 'BREAK' ? { wpm: 0 } : {}),
      });
    case 'writing.session_paused':
      return session(state, data, { session: d.session_id, state: 'PAUSED', wpm: 0 });
    case 'writing.session_resumed':
      return session(state, data, { session: d.session_id, state: 'ACTIVE_WRITING' });
    case 'writing.flow_state_entered':
      return session(state, data, { session: d.session_id, state: 'FLOW_STATE', wpm: d.wpm });
    case 'writing.flow_state_exited':
      return session(state, data, { session: d.session_id, state: 'ACTIVE_WRITING', wpm: d.wpm });
    case 'writing.session_ended':
      return endSession(state, data);
    case 'system.pipeline_stats':
      return pipelineStats(state, data, d);
    case 'collaboration.conflict_detected':
      return conflict(state, data, d);
    case 'collaboration.conflict_resolved':
      return resolve(state, data, d);
    case 'analytics.alert_triggered':
      return addFeed(state, {
        key: data.id, kind: 'alert', priority: d.priority, title: d.title, body: d.body,
        recipient: d.recipient_id, rule: d.rule, ts: data.ts,
      });
    case 'system.notification':
      return addFeed(state, {
        key: data.id, kind: 'notification', priority: d.priority, title: d.title, body: d.body,
        recipient: d.recipient_id ?? data.user_id, rule: d.rule, ts: data.ts,
      });
    default:
      return false;
  }
}

// The server's own figures, once a second per gateway (channel
// category:stats). Several gateways each publish theirs: kept per second
// and instance, summed (throughput) or maxed (lag) by statsSeries.
function pipelineStats(state, e, d) {
  if (typeof e.ts !== 'number' || typeof d.ingest_events_per_sec !== 'number') return false;
  const second = Math.round(e.ts / 1000);
  let at = state.stats.get(second);
  if (!at) {
    // Oldest seconds go first; a backfill's older frames may come after
    // newer live ones, and are then dropped if out of the window.
    if (state.stats.size >= LIMITS.stats && second < Math.min(...state.stats.keys())) return false;
    at = new Map();
    state.stats.set(second, at);
    while (state.stats.size > LIMITS.stats) state.stats.delete(Math.min(...state.stats.keys()));
  }
  at.set(String(e.instance ?? ''), {
    ingest: d.ingest_events_per_sec, derived: d.derived_events_per_sec ?? 0, lag: d.watermark_lag_ms ?? 0,
  });
  return true;
}

// [{ts, ingest, derived, lag}] oldest first: events/s summed over the
// gateways, the watermark lag (ms) of the one running the dataflow (the
// largest).
export function statsSeries(state) {
  return [...state.stats.entries()].sort((a, b) => a[0] - b[0]).map(([second, at]) => {
    const all = [...at.values()];
    return {
      ts: second * 1000,
      ingest: all.reduce((n, x) => n + x.ingest, 0),
      derived: all.reduce((n, x) => n + x.derived, 0),
      lag: Math.max(0, ...all.map((x) => x.lag)),
    };
  });
}

function remember(state, id) {
  state.seen.add(id);
  state.seenOrder.push(id);
  if (state.seenOrder.length > LIMITS.seen) state.seen.delete(state.seenOrder.shift());
}

// Deletes the oldest entries (by `ts`) until `map` holds at most `max`.
function bound(map, max) {
  while (map.size > max) {
    let oldest = null;
    for (const [k, v] of map) if (oldest === null || v.ts < oldest[1].ts) oldest = [k, v];
    map.delete(oldest[0]);
  }
}

function presence(state, e, d) {
  const doc = e.document_id;
  const user = e.user_id;
  if (!doc || !user) return false;
  let users = state.presence.get(doc);
  const prev = users?.get(user);
  if (prev && prev.ts > e.ts) return false;
  if (d.status === 'offline') {
    if (!users?.delete(user)) return false;
    if (users.size === 0) state.presence.delete(doc);
    return true;
  }
  if (!users) {
    users = new Map();
    state.presence.set(doc, users);
  }
  users.set(user, {
    status: d.status,
    // A status-only update (away) leaves the last known cursor in place.
    paragraph: d.paragraph ?? prev?.paragraph ?? null,
    offset: d.offset ?? prev?.offset ?? null,
    selection: d.selection ?? null,
    viewport: d.viewport ?? prev?.viewport ?? null,
    mode: d.mode ?? prev?.mode ?? null,
    wpm: d.typing_wpm ?? null,
    project: e.project_id ?? prev?.project ?? null,
    ts: e.ts,
  });
  bound(users, LIMITS.usersPerDocument);
  // A document's age is its newest member's.
  users.ts = Math.max(users.ts ?? 0, e.ts);
  bound(state.presence, LIMITS.documents);
  return true;
}

function sessionOf(state, e) {
  let s = state.sessions.get(e.user_id);
  if (!s) {
    s = { user: e.user_id, project: null, document: null, session: null, state: null, wpm: null, since: null, ts: 0 };
    state.sessions.set(e.user_id, s);
    bound(state.sessions, LIMITS.sessions);
  }
  if (e.project_id) s.project = e.project_id;
  if (e.document_id) s.document = e.document_id;
  return s;
}

function liveWpm(state, e, d) {
  if (!e.user_id || typeof d.value !== 'number') return false;
  const s = sessionOf(state, e);
  if (e.ts < s.wpmTs) return false;
  s.wpm = d.value;
  s.wpmTs = e.ts;
  s.ts = Math.max(s.ts, e.ts);
  s.history = [...(s.history ?? []), { ts: e.ts, wpm: d.value }].slice(-LIMITS.history);
  return true;
}

// The session's states over time, for the timeline: [{ts, state}], bounded.
function noteState(s, ts, state) {
  const states = s.states ?? [];
  if (states.at(-1)?.state === state) return;
  s.states = [...states, { ts, state }].slice(-LIMITS.history);
}

function session(state, e, fields) {
  if (!e.user_id) return false;
  const s = sessionOf(state, e);
  if (s.stateTs !== undefined && e.ts < s.stateTs) return false;
  if (fields.session) s.session = fields.session;
  if (fields.since && !s.since) s.since = fields.since;
  if (fields.state) {
    s.state = fields.state;
    noteState(s, e.ts, fields.state);
  }
  if (typeof fields.wpm === 'number') {
    s.wpm = fields.wpm;
    s.wpmTs = e.ts;
  }
  s.stateTs = e.ts;
  s.ts = Math.max(s.ts, e.ts);
  return true;
}

function endSession(state, e) {
  const s = state.sessions.get(e.user_id);
  // A live figure newer than the end belongs to the next session.
  if (!s || (s.wpmTs ?? 0) > e.ts) return false;
  return state.sessions.delete(e.user_id);
}

function conflict(state, e, d) {
  const id = d.conflict_id;
  if (!id) return false;
  // The other side's copy of a conflict already resolved is old news; a
  // detection after the resolution is the same pair colliding again.
  const done = state.resolved.findIndex((r) => r.id === id);
  if (done >= 0) {
    if (state.resolved[done].ts >= e.ts) return false;
    state.resolved.splice(done, 1);
  }
  const c = state.conflicts.get(id) ?? {
    id, document: e.document_id, project: e.project_id ?? null, users: [], paragraph: d.paragraph,
    severity: d.severity, kind: d.kind, suggestion: d.suggestion, ts: e.ts,
  };
  for (const u of [e.user_id, d.other_user_id]) if (u && !c.users.includes(u)) c.users.push(u);
  if ((SEVERITY[d.severity] ?? 0) > (SEVERITY[c.severity] ?? 0)) c.severity = d.severity;
  c.ts = Math.max(c.ts, e.ts);
  state.conflicts.set(id, c);
  bound(state.conflicts, LIMITS.conflicts);
  return true;
}

function resolve(state, e, d) {
  const id = d.conflict_id;
  if (!id || state.resolved.some((r) => r.id === id)) return false;
  const open = state.conflicts.get(id);
  state.conflicts.delete(id);
  state.resolved.unshift({
    id, document: e.document_id, users: open?.users ?? [e.user_id, d.other_user_id],
    paragraph: d.paragraph, durationMs: d.duration_ms, resolution: d.resolution ?? null, ts: e.ts,
  });
  state.resolved.length = Math.min(state.resolved.length, LIMITS.resolved);
  return true;
}

function addFeed(state, item) {
  state.feedSeq = (state.feedSeq ?? 0) + 1;
  item.uid = String(state.feedSeq); // the view's key: broadcasts have no event id
  state.feed.unshift(item);
  state.feed.length = Math.min(state.feed.length, LIMITS.feed);
  return true;
}

// An admin broadcast or send-to-user: arbitrary JSON, shown as it is.
function addBroadcast(state, data, channel) {
  const text = typeof data.body === 'string' ? data.body : JSON.stringify(data);
  return addFeed(state, {
    key: null, kind: 'message', priority: data.priority ?? null,
    title: typeof data.title === 'string' ? data.title : `Message on ${channel}`,
    body: text.length > 300 ? `${text.slice(0, 300)}…` : text,
    recipient: channel.startsWith('user:') ? channel.slice(5) : null, rule: null, ts: Date.now(),
  });
}
