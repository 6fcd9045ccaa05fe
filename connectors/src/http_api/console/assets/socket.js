// One WebSocket per fanout path, subscribed to a set of channels, that
// reconnects by itself and recovers what it missed.
//
// Protocol (connectors/src/websocket_fanout): send
// {"op":"subscribe","channel":C} (plus "since" and "epoch" after a
// reconnect); receive {"op":"subscribed","channel","offset","epoch",
// "recovered"?}, {"op":"message","channel","offset","data"},
// {"op":"error","code","message","channel"?} and {"op":"pong"}.
// A channel's offsets count its publications within one epoch. A first
// subscribe starts live, then asks for the channel's recent history (so the
// page does not start empty); a reconnect asks for everything after the last
// offset seen, and the server answers "recovered": false when its history no
// longer reaches back (or it restarted: new epoch), which the console
// reports as a gap.

const PING_MS = 25_000;
const MIN_DELAY_MS = 500;
const MAX_DELAY_MS = 10_000;
// How many recent publications a first subscribe asks to see, tried in
// turn (the server keeps at most `fanout.history_size`, default 100).
const BACKFILL = [100, 25, 5];

export class ChannelSocket {
  // url: ws(s)://host/ws/...?token=…; channels: names; handlers: onEvent(data,
  // channel), onStatus(socket), onGap(channel).
  constructor(path, url, channels, handlers) {
    this.path = path;
    this.url = url;
    this.handlers = handlers;
    // channel -> {offset, epoch, subscribed, denied, phase, step, rereading}
    this.channels = new Map(channels.map((c) => [c, {
      offset: 0, epoch: null, subscribed: false, denied: null, phase: 'initial', step: 0, rereading: false,
    }]));
    this.state = 'connecting'; // connecting | live | closed | refused (every channel forbidden)
    this.detail = '';
    this.attempts = 0;
    this.gaps = 0;
    this.ws = null;
    this.timer = null;
  }

  start() {
    this.connect();
    return this;
  }

  connect() {
    this.setState('connecting', this.attempts ? `retry ${this.attempts}` : '');
    const ws = new WebSocket(this.url);
    this.ws = ws;
    let opened = false;
    ws.onopen = () => {
      opened = true;
      for (const [channel, ch] of this.channels) {
        if (ch.denied) continue;
        const frame = { op: 'subscribe', channel };
        // A first subscribe starts live (then backfills); later ones resume.
        ch.phase = ch.epoch === null ? 'initial' : 'resume';
        if (ch.phase === 'resume') Object.assign(frame, { since: ch.offset, epoch: ch.epoch });
        ws.send(JSON.stringify(frame));
      }
      this.ping = setInterval(() => ws.send('{"op":"ping"}'), PING_MS);
    };
    ws.onmessage = (ev) => this.receive(ev.data);
    ws.onclose = (ev) => {
      clearInterval(this.ping);
      for (const ch of this.channels.values()) ch.subscribed = false;
      if (this.ws !== ws) return;
      this.attempts += 1;
      // 4008: the server found us too slow; 1001: it is shutting down.
      // A refused upgrade (401: missing or bad token) never opens; the
      // browser does not tell why.
      const why = !opened ? 'refused or unreachable (check the token)'
        : ev.code === 4008 ? 'too slow, dropped' : ev.code === 1001 ? 'server going away' : `closed (${ev.code})`;
      this.setState('closed', why);
      const base = Math.min(MAX_DELAY_MS, MIN_DELAY_MS * 2 ** Math.min(this.attempts - 1, 5));
      this.timer = setTimeout(() => this.connect(), base * (0.5 + Math.random() / 2));
    };
  }

  // For tests and the unload handler: closes without reconnecting.
  stop() {
    clearTimeout(this.timer);
    clearInterval(this.ping);
    const ws = this.ws;
    this.ws = null;
    ws?.close(1000, 'bye');
  }

  receive(text) {
    let f;
    try {
      f = JSON.parse(text);
    } catch {
      return;
    }
    const ch = this.channels.get(f.channel);
    switch (f.op) {
      case 'message':
        if (!ch) return;
        // Already seen. While a backfill or re-read replays history, older
        // frames come after newer live ones and pass (the model drops events
        // it has seen, by id; an admin broadcast may show twice).
        if (f.offset <= ch.offset && !ch.rereading) return;
        ch.offset = Math.max(ch.offset, f.offset);
        this.handlers.onEvent(f.data, f.channel);
        return;
      case 'subscribed':
        if (!ch) return;
        ch.subscribed = true;
        this.subscribed(f.channel, ch, f);
        this.checkLive();
        return;
      case 'error':
        if (ch && f.code === 'forbidden') ch.denied = f.message;
        this.setState(this.state, `${f.code}${f.channel ? ` on ${f.channel}` : ''}`);
        this.checkLive();
        return;
      default:
    }
  }

  // A `subscribed` reply, read according to what the subscribe asked for
  // (`ch.phase`). Replayed frames (if any) came before it; its offset is
  // where the live stream continues.
  subscribed(channel, ch, f) {
    const before = ch.offset;
    const oldEpoch = ch.epoch;
    const again = (phase, since) => {
      ch.phase = phase;
      // Replays bring offsets below the live ones: let them through (the
      // model drops events it has seen, by id).
      ch.rereading = true;
      this.ws.send(JSON.stringify({ op: 'subscribe', channel, since, epoch: f.epoch }));
    };
    ch.epoch = f.epoch;
    ch.offset = Math.max(before, f.offset);
    if (ch.phase === 'initial' || ch.phase === 'backfill') {
      // Show what the server still keeps of the channel instead of an empty
      // page: the last BACKFILL[i] publications, fewer when older ones have
      // expired (the server only replays a complete range).
      const next = ch.phase === 'initial' ? 0 : ch.step + 1;
      if (f.recovered !== true && f.offset > 0 && next < BACKFILL.length) {
        ch.step = next;
        again('backfill', Math.max(0, f.offset - BACKFILL[next]));
        return;
      }
    } else if (f.recovered === false) {
      // Publications after `before` may be lost: the history no longer
      // reaches back, or the channel was forgotten with history in it
      // (expired, or the server restarted). A channel forgotten while it had
      // published nothing (no history, no subscriber) loses nothing.
      if (before > 0 || f.epoch === oldEpoch || ch.phase === 'reread') {
        this.gaps += 1;
        this.handlers.onGap(channel);
      }
      // What the channel's new epoch published is still there, from offset 1.
      if (ch.phase === 'resume' && f.epoch !== oldEpoch && f.offset > 0) {
        again('reread', 0);
        return;
      }
    }
    ch.phase = 'live';
    ch.rereading = false;
    ch.offset = f.offset;
  }

  // Live once every channel answered (subscribed, or refused for good).
  checkLive() {
    if (this.state === 'live' || this.state === 'refused') return;
    const all = [...this.channels];
    if (all.every(([, c]) => c.subscribed || c.denied)) {
      this.attempts = 0;
      const denied = all.filter(([, c]) => c.denied).map(([name]) => name);
      const detail = denied.length ? `refused: ${denied.join(', ')}` : '';
      this.setState(denied.length === all.length ? 'refused' : 'live', detail);
    }
  }

  setState(state, detail) {
    this.state = state;
    this.detail = detail;
    this.handlers.onStatus(this);
  }
}
