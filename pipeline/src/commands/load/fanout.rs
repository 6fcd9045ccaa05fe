//! `inkstream load --mode fanout` and `--mode e2e`: load on the WebSocket
//! fanout of a running `inkstream serve`, for benchmarks.
//!
//! - `fanout`: opens `--connections` WebSockets on `/ws/analytics`, all
//!   subscribed to one channel, then broadcasts `--events` messages to it
//!   through `POST /api/realtime/websocket/broadcast` (as an admin when
//!   auth is on) and counts deliveries: messages/s delivered, and the
//!   latency from the broadcast request to each delivery.
//! - `e2e`: one subscriber on `category:analytics`; ingests keystroke
//!   batches for `--users` writers at `--rate` events/s with `ts` = now, and
//!   measures ingest → live WPM message on the socket from each message's
//!   event time (ms resolution; client and server share the clock).

use super::LoadError;
use super::ingest::{http_post, percentile_ms};
use super::raw_ws::RawWs;
use futures_util::{SinkExt, StreamExt};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::net::TcpStream;
use tokio::sync::Mutex;
use tokio_tungstenite::tungstenite::Message;

/// What a fanout or e2e run measured.
#[derive(Debug)]
pub struct FanoutReport {
    pub connections: usize,
    pub delivered: u64,
    pub elapsed: Duration,
    /// Latencies, microseconds, sorted.
    pub latencies_us: Vec<u32>,
}

impl FanoutReport {
    /// Prints the report line of `--mode fanout` or `e2e`.
    pub fn print(&self, mode: &str) {
        println!(
            "{mode}: {} messages over {} connections in {:.2} s: {:.0}/s; latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} samples)",
            self.delivered,
            self.connections,
            self.elapsed.as_secs_f64(),
            self.per_second(),
            self.percentile_ms(0.5),
            self.percentile_ms(0.99),
            self.percentile_ms(1.0),
            self.latencies_us.len()
        );
    }

    pub fn per_second(&self) -> f64 {
        self.delivered as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
    pub fn percentile_ms(&self, p: f64) -> f64 {
        percentile_ms(&self.latencies_us, p)
    }
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// The number after `"key":` in a frame, without parsing the whole frame
/// (the client must cost little next to the server on the same cores).
fn number_after(frame: &[u8], key: &str) -> Option<u64> {
    let at = memchr::memmem::find(frame, key.as_bytes())? + key.len();
    let rest = &frame[at..];
    let first = rest.iter().position(u8::is_ascii_digit)?;
    let mut n = 0u64;
    for &d in rest[first..].iter().take_while(|d| d.is_ascii_digit()) {
        n = n.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
    }
    Some(n)
}

/// Posts NDJSON batches to `POST /v1/events` on one keep-alive connection
/// (the e2e load and `inkstream demo`).
pub(crate) struct EventPoster {
    http: TcpStream,
    buf: Vec<u8>,
    auth: String,
    addr: String,
}

impl EventPoster {
    pub(crate) async fn connect(addr: &str, token: Option<&str>) -> Result<EventPoster, LoadError> {
        let (http, buf, auth) = connect(addr, token).await?;
        Ok(EventPoster {
            http,
            buf,
            auth,
            addr: addr.to_owned(),
        })
    }

    /// One NDJSON body; anything but 202 is `Rejected`.
    pub(crate) async fn post(&mut self, body: &str) -> Result<(), LoadError> {
        self.post_to("/v1/events", "application/x-ndjson", body, 202, "ingest")
            .await
    }

    /// One body to `path`; any status but `want` is `Rejected` at `step`.
    async fn post_to(
        &mut self,
        path: &str,
        content_type: &str,
        body: &str,
        want: u16,
        step: &str,
    ) -> Result<(), LoadError> {
        let (status, reply) = http_post(
            &mut self.http,
            &mut self.buf,
            &self.addr,
            path,
            content_type,
            &self.auth,
            body,
        )
        .await?;
        if status != want {
            return Err(LoadError::Rejected {
                step: step.into(),
                reply: format!("{status} {reply}"),
            });
        }
        Ok(())
    }
}

/// A keep-alive connection for `http_post`, its buffer and auth header.
async fn connect(
    addr: &str,
    token: Option<&str>,
) -> Result<(TcpStream, Vec<u8>, String), LoadError> {
    let stream = super::ingest::tcp_connect(addr).await?;
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    Ok((stream, vec![0u8; 64 * 1024], auth))
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn subscribe(addr: &str, token: Option<&str>, channel: &str) -> Result<Ws, LoadError> {
    let mut url = format!("ws://{addr}/ws/analytics");
    if let Some(t) = token {
        url.push_str(&format!("?token={t}"));
    }
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .map_err(LoadError::WsConnect)?;
    let sub = format!(r#"{{"op":"subscribe","channel":"{channel}"}}"#);
    ws.send(Message::text(sub)).await?;
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) if t.contains(r#""op":"subscribed""#) => return Ok(ws),
            Some(Ok(Message::Text(t))) if t.contains(r#""op":"error""#) => {
                return Err(LoadError::Rejected {
                    step: "subscribe refused".into(),
                    reply: t.to_string(),
                });
            }
            Some(Ok(_)) => continue,
            other => {
                return Err(LoadError::Rejected {
                    step: "subscribe".into(),
                    reply: format!("{other:?}"),
                });
            }
        }
    }
}

/// How long a fanout reader (or a subscribe) waits for a frame.
const FANOUT_IDLE: Duration = Duration::from_secs(600);

/// Broadcast fanout: `connections` subscribers, `broadcasts` messages. The
/// subscribers are [`RawWs`] connections: a reader costs little per
/// delivered message, so the run measures the server, not the client.
pub async fn fanout(
    addr: &str,
    token: Option<&str>,
    connections: usize,
    broadcasts: u64,
    publishers: usize,
) -> Result<FanoutReport, LoadError> {
    let channel = "category:load";
    let delivered = Arc::new(AtomicU64::new(0));
    let latencies = Arc::new(Mutex::new(Vec::<u32>::new()));
    let mut readers = Vec::new();
    // Open in waves: a burst of thousands of handshakes at once only
    // measures the accept queue.
    for wave in (0..connections).collect::<Vec<_>>().chunks(500) {
        let mut opened = Vec::new();
        for _ in wave {
            opened.push(RawWs::subscribe(addr, token, channel, FANOUT_IDLE));
        }
        for ws in futures_util::future::join_all(opened).await {
            let mut ws = ws?;
            let (delivered, latencies) = (delivered.clone(), latencies.clone());
            readers.push(tokio::spawn(async move {
                let mut mine = Vec::new();
                let mut seen = 0u64;
                let mut outcome = Ok(());
                while seen < broadcasts {
                    let before = seen;
                    // Idle until the broadcasts start, which is after every
                    // connection has subscribed (tens of seconds for 20 K):
                    // a short timeout here closes the first connections.
                    let end = ws
                        .read_batch(FANOUT_IDLE, |t| {
                            if t.starts_with(br#"{"op":"message""#) {
                                seen += 1;
                                // Sample latencies (1 in 16) to keep the client cheap.
                                if seen.is_multiple_of(16)
                                    && let Some(sent) = number_after(t, r#""sent_us""#)
                                {
                                    mine.push(
                                        now_us().saturating_sub(sent).min(u64::from(u32::MAX))
                                            as u32,
                                    );
                                }
                            }
                            seen < broadcasts
                        })
                        .await;
                    // Once per read, not per message.
                    delivered.fetch_add(seen - before, Ordering::Relaxed);
                    match end {
                        Ok(None) => {}
                        // Stopped, Close, EOF or idle: this reader is done.
                        Ok(Some(_)) => break,
                        Err(e) => {
                            outcome = Err(e);
                            break;
                        }
                    }
                }
                latencies.lock().await.extend(mine);
                outcome
            }));
        }
    }
    // Publisher `p` sends broadcasts p, p + publishers, …, one in flight.
    let publishers = publishers.clamp(1, broadcasts.max(1) as usize) as u64;
    let mut connected = Vec::new();
    for _ in 0..publishers {
        connected.push(EventPoster::connect(addr, token).await?);
    }
    let start = Instant::now();
    let mut sending = Vec::new();
    for (p, mut poster) in (0..publishers).zip(connected) {
        sending.push(tokio::spawn(async move {
            for i in (p..broadcasts).step_by(publishers as usize) {
                let body = format!(
                    r#"{{"channel":"{channel}","data":{{"i":{i},"sent_us":{}}}}}"#,
                    now_us()
                );
                poster
                    .post_to(
                        "/api/realtime/websocket/broadcast",
                        "application/json",
                        &body,
                        200,
                        "broadcast",
                    )
                    .await?;
            }
            Ok::<(), LoadError>(())
        }));
    }
    for s in sending {
        s.await??;
    }
    let mut failed = None;
    for r in readers {
        // A protocol error (or a broken connection) fails the run, after
        // every reader has finished.
        if let Err(e) = r.await? {
            failed.get_or_insert(e);
        }
    }
    let elapsed = start.elapsed();
    if let Some(e) = failed {
        return Err(e);
    }
    let mut latencies_us = std::mem::take(&mut *latencies.lock().await);
    latencies_us.sort_unstable();
    Ok(FanoutReport {
        connections,
        delivered: delivered.load(Ordering::Relaxed),
        elapsed,
        latencies_us,
    })
}

/// Prints (to stderr, beside the report line) each second's latencies:
/// whether a tail is a burst (new writers at the start, a checkpoint) or
/// spread over the run.
fn print_timeline(timed: &[(u64, u32)]) {
    let mut by_second: std::collections::BTreeMap<u64, Vec<u32>> = Default::default();
    for &(second, l) in timed {
        by_second.entry(second).or_default().push(l);
    }
    for (second, mut l) in by_second {
        l.sort_unstable();
        eprintln!(
            "  second {second:>3}: {:>6} messages, latency p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
            l.len(),
            percentile_ms(&l, 0.5),
            percentile_ms(&l, 0.99),
            percentile_ms(&l, 1.0)
        );
    }
}

/// Ingest → live WPM message, at `rate` events/s for `seconds`.
pub async fn end_to_end(
    addr: &str,
    token: Option<&str>,
    users: u32,
    rate: u64,
    seconds: u64,
) -> Result<FanoutReport, LoadError> {
    let mut ws = subscribe(addr, token, "category:analytics").await?;
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let began = Instant::now();
    let reader = tokio::spawn(async move {
        // (second of the run it arrived in, latency µs)
        let mut lat: Vec<(u64, u32)> = Vec::new();
        loop {
            tokio::select! {
                m = ws.next() => match m {
                    // Only this run's writers (`e…`), not other traffic.
                    Some(Ok(Message::Text(t)))
                        if t.contains(r#""metric":"wpm""#) && t.contains(r#""user_id":"e"#) =>
                    {
                        if let Some(ts) = number_after(t.as_bytes(), r#""ts""#) {
                            let ms = now_us() / 1000;
                            lat.push((
                                began.elapsed().as_secs(),
                                (ms.saturating_sub(ts) * 1000).min(u64::from(u32::MAX)) as u32,
                            ));
                        }
                    }
                    Some(Ok(_)) => {}
                    _ => break,
                },
                _ = stop_rx.changed() => break,
            }
        }
        lat
    });
    let mut poster = EventPoster::connect(addr, token).await?;
    // Batches every 10 ms; each user writes at most once a second (the
    // live WPM rate limit), so every event is an update.
    let per_tick = (rate / 100).max(1);
    let mut next_user = 0u64;
    let start = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let mut sent = 0u64;
    while start.elapsed() < Duration::from_secs(seconds) {
        tick.tick().await;
        let ts = now_us() / 1000;
        let mut body = String::new();
        for _ in 0..per_tick {
            let u = next_user % u64::from(users.max(1));
            next_user += 1;
            body.push_str(&format!(
                r#"{{"type":"writing.keystroke","ts":{ts},"user_id":"e{u:06}","project_id":"p{:04}","data":{{"keystrokes":6,"words":1,"chars":6}}}}"#,
                u / 4
            ));
            body.push('\n');
        }
        poster.post(&body).await?;
        sent += per_tick;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let _ = stop_tx.send(true);
    let elapsed = start.elapsed();
    let timed = reader.await?;
    print_timeline(&timed);
    let mut latencies_us: Vec<u32> = timed.into_iter().map(|(_, l)| l).collect();
    latencies_us.sort_unstable();
    Ok(FanoutReport {
        connections: 1,
        delivered: sent,
        elapsed,
        latencies_us,
    })
}

#[cfg(test)]
mod tests {
    use super::number_after;

    #[test]
    fn number_after_reads_the_digits_behind_the_key() {
        let frame = br#"{"op":"message","channel":"c","data":{"i":3,"sent_us":1733346000123456}}"#;
        assert_eq!(
            number_after(frame, r#""sent_us""#),
            Some(1_733_346_000_123_456)
        );
        assert_eq!(number_after(frame, r#""i""#), Some(3));
        assert_eq!(number_after(frame, r#""ts""#), None);
        assert_eq!(number_after(br#"{"ts":}"#, r#""ts""#), None);
    }
}
