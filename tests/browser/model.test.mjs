// Unit tests of the console's pure state (model.js) and of its socket
// client (socket.js, with a fake WebSocket), run by node's own test runner
// from tests/tests/console.rs. No browser and no npm package needed.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { LIMITS, apply, createState, statsSeries } from '../../connectors/src/http_api/console/assets/model.js';

const ev = (type, fields, data = {}) => ({ id: `${type}-${Math.random()}`, type, ts: 1000, ...fields, data });
const presence = (user, ts, data) => ({ ...ev('collaboration.presence_updated', { user_id: user, document_id: 'd1', project_id: 'p1', ts }, data) });

test('an event seen on several channels is applied once', () => {
  const s = createState();
  const alert = ev('analytics.alert_triggered', { user_id: 'u1' }, { title: 'T', body: 'B', priority: 'HIGH', recipient_id: 'u1', rule: 'r' });
  assert.equal(apply(s, alert, 'user:u1'), true);
  assert.equal(apply(s, alert, 'project:p1'), false);
  assert.equal(apply(s, alert, 'category:analytics'), false);
  assert.equal(s.feed.length, 1);
});

test('presence keeps the cursor through a status-only update, ignores older updates and drops offline users', () => {
  const s = createState();
  apply(s, presence('u1', 10, { status: 'online', paragraph: 3, offset: 5, mode: 'edit' }), 'document:d1');
  apply(s, presence('u1', 20, { status: 'away' }), 'document:d1');
  assert.deepEqual([s.presence.get('d1').get('u1').status, s.presence.get('d1').get('u1').paragraph], ['away', 3]);
  assert.equal(apply(s, presence('u1', 15, { status: 'online', paragraph: 9, offset: 0 }), 'document:d1'), false);
  apply(s, presence('u1', 30, { status: 'offline' }), 'document:d1');
  assert.equal(s.presence.has('d1'), false);
});

test('a session shows live WPM and state, pauses at zero, and disappears when it ends', () => {
  const s = createState();
  apply(s, ev('analytics.metric_updated', { user_id: 'u1', project_id: 'p1', ts: 100 }, { metric: 'wpm', value: 42 }), 'user:u1');
  apply(s, ev('writing.session_state_changed', { user_id: 'u1', ts: 90 }, { from: 'IDLE', to: 'WARMING_UP', reason: 'activity', wpm: 1 }), 'user:u1');
  assert.deepEqual([s.sessions.get('u1').state, s.sessions.get('u1').wpm], ['WARMING_UP', 42]);
  apply(s, ev('writing.session_state_changed', { user_id: 'u1', ts: 200 }, { from: 'ACTIVE_WRITING', to: 'PAUSED', reason: 'idle_timeout' }), 'user:u1');
  assert.deepEqual([s.sessions.get('u1').state, s.sessions.get('u1').wpm], ['PAUSED', 0]);
  // Other metrics are not WPM.
  apply(s, ev('analytics.metric_updated', { user_id: 'u1', ts: 300 }, { metric: 'words_per_day', value: 999 }), 'user:u1');
  assert.equal(s.sessions.get('u1').wpm, 0);
  apply(s, ev('writing.session_ended', { user_id: 'u1', ts: 400 }, { words: 10 }), 'user:u1');
  assert.equal(s.sessions.has('u1'), false);
});

test('an end older than the latest live WPM belongs to the previous session and keeps the row', () => {
  const s = createState();
  apply(s, ev('analytics.metric_updated', { user_id: 'u1', ts: 500 }, { metric: 'wpm', value: 10 }), 'user:u1');
  apply(s, ev('writing.session_ended', { user_id: 'u1', ts: 400 }, {}), 'user:u1');
  assert.equal(s.sessions.has('u1'), true);
});

test('both sides of a conflict make one entry; resolution moves it to recently resolved', () => {
  const s = createState();
  const side = (user, other) => ev('collaboration.conflict_detected', { user_id: user, document_id: 'd1', ts: 100 },
    { conflict_id: 'k1', other_user_id: other, paragraph: 3, severity: 'HIGH', kind: 'same_paragraph', suggestion: `${other} is editing paragraph 3` });
  apply(s, side('u1', 'u2'), 'document:d1');
  apply(s, side('u2', 'u1'), 'document:d1');
  assert.equal(s.conflicts.size, 1);
  assert.deepEqual(s.conflicts.get('k1').users, ['u1', 'u2']);
  apply(s, ev('collaboration.conflict_resolved', { user_id: 'u1', document_id: 'd1', ts: 200 },
    { conflict_id: 'k1', other_user_id: 'u2', paragraph: 3, duration_ms: 100, resolution: 'moved_apart' }), 'document:d1');
  assert.equal(s.conflicts.size, 0);
  assert.equal(s.resolved.length, 1);
  // A late copy of the detection does not reopen it; a later detection does.
  apply(s, { ...side('u2', 'u1'), id: 'late' }, 'document:d1');
  assert.equal(s.conflicts.size, 0);
  apply(s, { ...side('u2', 'u1'), id: 'again', ts: 300 }, 'document:d1');
  assert.equal(s.conflicts.size, 1);
});

test('every collection is bounded', () => {
  const s = createState();
  for (let i = 0; i < LIMITS.sessions + 50; i++) {
    apply(s, ev('analytics.metric_updated', { user_id: `u${i}`, ts: i }, { metric: 'wpm', value: 1 }), 'category:analytics');
  }
  assert.equal(s.sessions.size, LIMITS.sessions);
  assert.equal(s.sessions.has('u0'), false, 'the oldest goes first');
  for (let i = 0; i < LIMITS.feed + 5; i++) {
    apply(s, ev('system.notification', { user_id: 'u1' }, { title: `n${i}`, body: '', priority: 'LOW', recipient_id: 'u1', notification_id: `n${i}` }), 'user:u1');
  }
  assert.equal(s.feed.length, LIMITS.feed);
  assert.equal(s.feed[0].title, `n${LIMITS.feed + 4}`, 'newest first');
  assert.ok(s.seenOrder.length <= LIMITS.seen);
});

test('an admin broadcast without an event type shows as a message', () => {
  const s = createState();
  assert.equal(apply(s, { title: 'Maintenance', body: 'at 22:00' }, 'user:u1'), true);
  assert.deepEqual([s.feed[0].kind, s.feed[0].title, s.feed[0].recipient], ['message', 'Maintenance', 'u1']);
});

test('pipeline stats are charted per second: throughput summed over gateways, lag the largest, oldest dropped', () => {
  const s = createState();
  const stats = (ts, instance, ingest, derived, lag) => ({
    id: `stats-${instance}-${ts}`, type: 'system.pipeline_stats', ts, instance,
    data: { interval_ms: 1000, ingest_events_per_sec: ingest, derived_events_per_sec: derived, watermark_lag_ms: lag },
  });
  assert.equal(apply(s, stats(10_000, 'a', 20, 60, 2100), 'category:stats'), true);
  assert.equal(apply(s, stats(10_010, 'b', 5, 0, 0), 'category:stats'), true);
  // The same publication again (history replay): applied once.
  assert.equal(apply(s, stats(10_000, 'a', 20, 60, 2100), 'category:stats'), false);
  apply(s, stats(9_000, 'a', 10, 30, 2000), 'category:stats');
  assert.deepEqual(statsSeries(s), [
    { ts: 9_000, ingest: 10, derived: 30, lag: 2000 },
    { ts: 10_000, ingest: 25, derived: 60, lag: 2100 },
  ]);
  for (let i = 0; i < LIMITS.stats + 5; i += 1) apply(s, stats(20_000 + i * 1000, 'a', 1, 1, 1), 'category:stats');
  const series = statsSeries(s);
  assert.equal(series.length, LIMITS.stats);
  assert.equal(series[0].ts, 20_000 + 5 * 1000);
  // Older than everything kept: ignored.
  assert.equal(apply(s, stats(1_000, 'a', 1, 1, 1), 'category:stats'), false);
});
