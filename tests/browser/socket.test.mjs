// Unit tests of the console's socket client (socket.js) against a fake
// WebSocket: what it sends on (re)connect and how it treats the replies.
// Run by node's test runner from tests/tests/console.rs.

import { test } from 'node:test';
import assert from 'node:assert/strict';

// The fake: records sent frames; the test plays the server.
class FakeSocket {
  static all = [];
  constructor(url) {
    this.url = url;
    this.sent = [];
    FakeSocket.all.push(this);
  }
  send(text) { this.sent.push(JSON.parse(text)); }
  close() {}
  open() { this.onopen(); }
  reply(frame) { this.onmessage({ data: JSON.stringify(frame) }); }
  drop(code = 1006) { this.onclose({ code }); }
}
globalThis.WebSocket = FakeSocket;
const { ChannelSocket } = await import('../../connectors/src/http_api/console/assets/socket.js');

function client(channels) {
  const seen = { events: [], gaps: [] };
  const s = new ChannelSocket('/ws/analytics', 'ws://x/ws/analytics', channels, {
    onEvent: (data, channel) => seen.events.push([channel, data.n]),
    onStatus: () => {},
    onGap: (channel) => seen.gaps.push(channel),
  });
  FakeSocket.all = [];
  s.start();
  return { s, seen, ws: () => FakeSocket.all.at(-1) };
}

// Reconnects immediately instead of after the backoff.
function reconnect(s) {
  clearTimeout(s.timer);
  s.connect();
}

test('first subscribe starts live; after a drop it asks for what came after the last offset, in its epoch', () => {
  const { s, seen, ws } = client(['user:u1']);
  ws().open();
  assert.deepEqual(ws().sent, [{ op: 'subscribe', channel: 'user:u1' }]);
  ws().reply({ op: 'subscribed', channel: 'user:u1', offset: 4, epoch: 'e1' });
  assert.equal(s.state, 'live');
  // Backfill: the four publications before it, then live.
  assert.deepEqual(ws().sent.at(-1), { op: 'subscribe', channel: 'user:u1', since: 0, epoch: 'e1' });
  ws().reply({ op: 'message', channel: 'user:u1', offset: 4, data: { n: 4 } });
  ws().reply({ op: 'subscribed', channel: 'user:u1', offset: 4, epoch: 'e1', recovered: true });
  ws().reply({ op: 'message', channel: 'user:u1', offset: 5, data: { n: 5 } });
  ws().drop();
  assert.equal(s.state, 'closed');
  reconnect(s);
  ws().open();
  assert.deepEqual(ws().sent, [{ op: 'subscribe', channel: 'user:u1', since: 5, epoch: 'e1' }]);
  ws().reply({ op: 'message', channel: 'user:u1', offset: 5, data: { n: 5 } }); // already seen
  ws().reply({ op: 'message', channel: 'user:u1', offset: 6, data: { n: 6 } });
  ws().reply({ op: 'subscribed', channel: 'user:u1', offset: 6, epoch: 'e1', recovered: true });
  assert.deepEqual(seen.events, [['user:u1', 4], ['user:u1', 5], ['user:u1', 6]]);
  assert.deepEqual(seen.gaps, []);
  s.stop();
});

test('a channel that had published nothing is re-read from offset 1 of its new epoch', () => {
  const { s, seen, ws } = client(['category:writing']);
  ws().open();
  ws().reply({ op: 'subscribed', channel: 'category:writing', offset: 0, epoch: 'e1' });
  ws().drop();
  reconnect(s);
  ws().open();
  ws().reply({ op: 'subscribed', channel: 'category:writing', offset: 2, epoch: 'e2', recovered: false });
  assert.deepEqual(ws().sent.at(-1), { op: 'subscribe', channel: 'category:writing', since: 0, epoch: 'e2' });
  ws().reply({ op: 'message', channel: 'category:writing', offset: 3, data: { n: 3 } }); // live, before the replay
  ws().reply({ op: 'message', channel: 'category:writing', offset: 1, data: { n: 1 } });
  ws().reply({ op: 'message', channel: 'category:writing', offset: 2, data: { n: 2 } });
  ws().reply({ op: 'subscribed', channel: 'category:writing', offset: 3, epoch: 'e2', recovered: true });
  assert.deepEqual(seen.events.map(([, n]) => n), [3, 1, 2]);
  assert.deepEqual(seen.gaps, []);
  assert.equal(s.state, 'live');
  s.stop();
});

test('history that no longer reaches back is reported as a gap, once', () => {
  const { s, seen, ws } = client(['user:u1']);
  ws().open();
  ws().reply({ op: 'subscribed', channel: 'user:u1', offset: 7, epoch: 'e1' });
  ws().drop();
  reconnect(s);
  ws().open();
  ws().reply({ op: 'subscribed', channel: 'user:u1', offset: 0, epoch: 'e9', recovered: false });
  assert.deepEqual(seen.gaps, ['user:u1']);
  assert.equal(ws().sent.length, 1, 'no re-read: what was missed is gone');
  s.stop();
});

test('a forbidden channel is not asked for again; all refused reads as refused', () => {
  const { s, ws } = client(['category:writing', 'user:u1']);
  ws().open();
  ws().reply({ op: 'error', code: 'forbidden', message: 'no', channel: 'category:writing' });
  ws().reply({ op: 'subscribed', channel: 'user:u1', offset: 0, epoch: 'e1' });
  assert.deepEqual([s.state, s.detail], ['live', 'refused: category:writing']);
  ws().drop();
  reconnect(s);
  ws().open();
  assert.deepEqual(ws().sent.map((f) => f.channel), ['user:u1']);
  s.stop();

  const only = client(['category:writing']);
  only.ws().open();
  only.ws().reply({ op: 'error', code: 'forbidden', message: 'no', channel: 'category:writing' });
  assert.equal(only.s.state, 'refused');
  only.s.stop();
});

test('a socket that never opened says the upgrade was refused, and retries with backoff', () => {
  const { s, ws } = client(['user:u1']);
  ws().drop();
  assert.deepEqual([s.state, s.detail], ['closed', 'refused or unreachable (check the token)']);
  assert.ok(s.timer, 'a retry is scheduled');
  s.stop();
});

test('backfill asks for fewer recent publications when the older ones have expired, and never reports a gap', () => {
  const { s, seen, ws } = client(['category:analytics']);
  ws().open();
  ws().reply({ op: 'subscribed', channel: 'category:analytics', offset: 300, epoch: 'e1' });
  ws().reply({ op: 'message', channel: 'category:analytics', offset: 301, data: { n: 301 } }); // live
  const sinces = [];
  for (const offset of [301, 301, 301]) {
    sinces.push(ws().sent.at(-1).since);
    ws().reply({ op: 'subscribed', channel: 'category:analytics', offset, epoch: 'e1', recovered: false });
  }
  assert.deepEqual(sinces, [200, 276, 296]);
  assert.equal(ws().sent.length, 4, 'gives up after the smallest try');
  assert.deepEqual(seen.gaps, []);
  ws().reply({ op: 'message', channel: 'category:analytics', offset: 301, data: { n: 301 } }); // duplicate
  ws().reply({ op: 'message', channel: 'category:analytics', offset: 302, data: { n: 302 } });
  assert.deepEqual(seen.events.map(([, n]) => n), [301, 302]);
  s.stop();
});
