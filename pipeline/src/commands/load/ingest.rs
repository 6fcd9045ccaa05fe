//! `inkstream load --mode batch|single|ws`: load on the ingest API, for benchmarks.
//!
//! Modes: `batch` (NDJSON bodies of `--batch` events over keep-alive HTTP/1.1),
//! `single` (one event per request, keep-alive), `ws` (`/ws/ingest` frames of
//! `--batch` events, each awaited). HTTP is written by hand on raw sockets so
//! the generator costs as little CPU as possible next to the server on the
//! same 2 cores. Prints events/s and request latency percentiles.

use super::LoadError;
use futures_util::{SinkExt, StreamExt};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What to send.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// `host:port` of `inkstream serve`.
    pub addr: String,
    pub mode: Mode,
    pub events: u64,
    pub batch: usize,
    pub connections: usize,
    /// Distinct users the events are spread over.
    pub users: u32,
    /// Bearer token or API key, if auth is on.
    pub token: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Batch,
    Single,
    Ws,
}

/// What a run measured.
#[derive(Debug)]
pub struct LoadReport {
    pub events: u64,
    pub requests: u64,
    pub elapsed: Duration,
    /// Request (or frame) latencies, microseconds, sorted.
    pub latencies_us: Vec<u32>,
}

impl LoadReport {
    pub fn events_per_second(&self) -> f64 {
        self.events as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
    pub fn percentile_ms(&self, p: f64) -> f64 {
        percentile_ms(&self.latencies_us, p)
    }
}

/// The `p` quantile (0..=1) of sorted latencies in µs, in ms.
pub fn percentile_ms(sorted_us: &[u32], p: f64) -> f64 {
    if sorted_us.is_empty() {
        return 0.0;
    }
    let i = ((sorted_us.len() as f64 - 1.0) * p).round() as usize;
    f64::from(sorted_us[i]) / 1000.0
}

fn event_line(run: u64, conn: usize, i: u64, users: u32, ts: i64) -> String {
    let user = (i.wrapping_mul(2_654_435_761) ^ conn as u64) % u64::from(users.max(1));
    format!(
        r#"{{"id":"load-{run:x}-{conn}-{i}","type":"writing.keystroke","ts":{ts},"user_id":"u{user:05}","project_id":"p{:04}","data":{{"keystrokes":12,"words":2,"chars":11}}}}"#,
        user / 4
    )
}

/// Runs the load and returns what it measured.
pub async fn run(config: &LoadConfig) -> Result<LoadReport, LoadError> {
    let run = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let per_conn = config.events / config.connections.max(1) as u64;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for conn in 0..config.connections.max(1) {
        let config = config.clone();
        tasks.push(tokio::spawn(async move {
            match config.mode {
                Mode::Ws => ws_connection(&config, run, conn, per_conn).await,
                _ => http_connection(&config, run, conn, per_conn).await,
            }
        }));
    }
    let mut latencies = Vec::new();
    let mut requests = 0;
    for t in tasks {
        let (lat, reqs) = t.await??;
        latencies.extend(lat);
        requests += reqs;
    }
    let elapsed = start.elapsed();
    latencies.sort_unstable();
    Ok(LoadReport {
        events: per_conn * config.connections.max(1) as u64,
        requests,
        elapsed,
        latencies_us: latencies,
    })
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A TCP connection to the server with Nagle off: every load client's
/// first step (small requests and frames must leave at once).
pub(crate) async fn tcp_connect(addr: &str) -> Result<TcpStream, LoadError> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|error| LoadError::Connect {
            addr: addr.to_owned(),
            error,
        })?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

async fn http_connection(
    config: &LoadConfig,
    run: u64,
    conn: usize,
    events: u64,
) -> Result<(Vec<u32>, u64), LoadError> {
    let mut stream = tcp_connect(&config.addr).await?;
    let batch = if config.mode == Mode::Single {
        1
    } else {
        config.batch.max(1) as u64
    };
    let auth = config
        .token
        .as_ref()
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let mut latencies = Vec::with_capacity((events / batch) as usize + 1);
    let mut buf = vec![0u8; 64 * 1024];
    let mut sent = 0u64;
    let mut requests = 0u64;
    let mut body = String::with_capacity(batch as usize * 200);
    while sent < events {
        let n = batch.min(events - sent);
        body.clear();
        let ts = now_ms();
        for i in sent..sent + n {
            body.push_str(&event_line(run, conn, i, config.users, ts));
            body.push('\n');
        }
        let content_type = if config.mode == Mode::Single {
            "application/json"
        } else {
            "application/x-ndjson"
        };
        let t = Instant::now();
        let (status, reply) = http_post(
            &mut stream,
            &mut buf,
            &config.addr,
            "/v1/events",
            content_type,
            &auth,
            &body,
        )
        .await?;
        latencies.push(t.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
        if status != 202 {
            return Err(LoadError::Rejected {
                step: format!("status {status}"),
                reply,
            });
        }
        sent += n;
        requests += 1;
    }
    Ok((latencies, requests))
}

/// One `POST` on a keep-alive HTTP/1.1 connection, written by hand (the
/// load client must cost little next to the server on the same cores).
/// `auth` is a header line or empty. Returns the status and the body.
pub(crate) async fn http_post(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    addr: &str,
    path: &str,
    content_type: &str,
    auth: &str,
    body: &str,
) -> Result<(u16, String), LoadError> {
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: {content_type}\r\n{auth}Content-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(request.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    // Read the response: headers, then Content-Length bytes of body.
    let mut have = 0usize;
    let (status, header_end, length) = loop {
        have += read_some(stream, &mut buf[have..]).await?;
        if let Some(end) = find(&buf[..have], b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]);
            let status: u16 = head
                .split_whitespace()
                .nth(1)
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            let length = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            break (status, end + 4, length);
        }
        if have == buf.len() {
            return Err(LoadError::HeadersTooLarge);
        }
    };
    while have < header_end + length {
        if have == buf.len() {
            buf.resize(buf.len() * 2, 0);
        }
        have += read_some(stream, &mut buf[have..]).await?;
    }
    let reply = String::from_utf8_lossy(&buf[header_end..header_end + length]).into_owned();
    Ok((status, reply))
}

/// Reads what is there (at least one byte); a closed connection is an error.
async fn read_some(stream: &mut TcpStream, buf: &mut [u8]) -> Result<usize, LoadError> {
    match stream.read(buf).await {
        Ok(0) => Err(LoadError::Closed("connection")),
        Ok(k) => Ok(k),
        Err(e) => Err(e.into()),
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

async fn ws_connection(
    config: &LoadConfig,
    run: u64,
    conn: usize,
    events: u64,
) -> Result<(Vec<u32>, u64), LoadError> {
    let mut url = format!("ws://{}/ws/ingest", config.addr);
    if let Some(t) = &config.token {
        url.push_str(&format!("?token={t}"));
    }
    // Without Nagle, as the HTTP client above: a frame's last segment is not
    // held back until the previous one is acknowledged.
    let (mut ws, _) = tokio_tungstenite::connect_async_with_config(url, None, true)
        .await
        .map_err(LoadError::WsConnect)?;
    let batch = config.batch.max(1) as u64;
    let mut latencies = Vec::new();
    let mut sent = 0;
    let mut frames = 0;
    let mut frame = String::new();
    while sent < events {
        let n = batch.min(events - sent);
        frame.clear();
        frame.push('[');
        let ts = now_ms();
        for i in sent..sent + n {
            if i > sent {
                frame.push(',');
            }
            frame.push_str(&event_line(run, conn, i, config.users, ts));
        }
        frame.push(']');
        let t = Instant::now();
        ws.send(tokio_tungstenite::tungstenite::Message::text(frame.clone()))
            .await?;
        loop {
            match ws.next().await {
                Some(Ok(tokio_tungstenite::tungstenite::Message::Text(reply))) => {
                    if !reply.contains(r#""op":"ack""#) {
                        return Err(LoadError::Rejected {
                            step: "frame rejected".into(),
                            reply: reply.to_string(),
                        });
                    }
                    break;
                }
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(e.into()),
                None => return Err(LoadError::Closed("socket")),
            }
        }
        latencies.push(t.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
        sent += n;
        frames += 1;
    }
    Ok((latencies, frames))
}
