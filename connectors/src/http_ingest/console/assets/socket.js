// One WebSocket per fanout path, subscribed to a set of channels, that
// reconnects by itself and recovers what it missed.
//
// Protocol (connectors/src/websocket_fanout): send
// {"op":"subscribe","channel":C} (plus "since" and "epoch" after a
// reconnect); receive {"op":"subscribed","channel","offset","epoch",
// "recovered"?}, {"op":"message","channel","offset","data"},
// {"op":"error","code","message","channel"?} and {"op":"pong"}.
// A channel's offsets count its publications within one epoch; a reconnect
// asks for everything after the last offset seen, and the server answers
// "recovered": false when its history no longer reaches back (or it
// restarted: new epoch), which the console reports as a gap.

const PING_MS = 25_000;
const MIN_DELAY_MS = 500;
const MAX_DELAY_MS = 10_000;

export class ChannelSocket {
  // url: ws(s)://host/ws/...?token=…; channels: names; handlers: onEvent(data,
  // channel), onStatus(socket), onGap(channel).
  constructor(path, url, channels, handlers) {
    this.path = path;
    this.url = url;
    this.handlers = handlers;
    // channel -> {offset, epoch, subscribed, denied, reread, rereading}
    this.channels = new Map(channels.map((c) => [c, { offset: 0, epoch: null, subscribed: false, denied: null, reread: false, rereading: false }]));
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
        // Only after something was seen: a first subscribe starts live.
        if (ch.epoch !== null) Object.assign(frame, { since: ch.offset, epoch: ch.epoch });
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
        // Already seen; while re-reading a new epoch from its start, older
        // frames come after newer live ones (the model drops events it has
        // seen, by id).
        if (f.offset <= ch.offset && !ch.rereading) return;
        ch.offset = Math.max(ch.offset, f.offset);
        this.handlers.onEvent(f.data, f.channel);
        return;
      case 'subscribed':
        if (!ch) return;
        ch.subscribed = true;
        ch.rereading = false;
        if (f.recovered === false && ch.offset === 0 && f.offset > 0 && !ch.reread) {
          // A channel that had published nothing when we left was forgotten
          // by the server (no history, no subscriber) and came back with a
          // new epoch: everything we missed is in that epoch, from offset 1.
          ch.reread = true;
          ch.rereading = true;
          ch.epoch = f.epoch;
          this.ws.send(JSON.stringify({ op: 'subscribe', channel: f.channel, since: 0, epoch: f.epoch }));
          this.checkLive();
          return;
        }
        // Nothing seen and nothing published: nothing missed either.
        if (f.recovered === false && !(ch.offset === 0 && f.offset === 0)) {
          this.gaps += 1;
          this.handlers.onGap(f.channel);
        }
        ch.reread = false;
        // Replayed frames (if any) came first; this is where live continues.
        ch.offset = f.offset;
        ch.epoch = f.epoch;
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
