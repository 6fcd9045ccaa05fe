//! `inkstream healthcheck`: asks the local server's `/healthz` and exits 0
//! when it answers 200. For container healthchecks: the runtime image then
//! needs no curl or wget (see the `Dockerfile`).

use crate::config::Config;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::Duration;

/// Why the server is not healthy.
#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    #[error("cannot reach 127.0.0.1:{port}: {source}")]
    Io {
        port: u16,
        #[source]
        source: std::io::Error,
    },
    #[error("/healthz answered {0:?}")]
    Status(String),
}

impl schemas::Classify for HealthError {
    /// The server is down, not listening yet, or unhealthy.
    fn fault(&self) -> schemas::Fault {
        schemas::Fault::External
    }
}

// The flags of `inkstream healthcheck`.
#[derive(clap::Args)]
pub struct HealthcheckArgs {
    /// The server's port (config `server.port`, default 8080).
    #[arg(long, env = "PORT")]
    port: Option<u16>,
}

impl HealthcheckArgs {
    /// The flags as `--set` overrides of their config keys.
    pub fn overrides(&self) -> Vec<String> {
        self.port
            .map(|p| format!("server.port={p}"))
            .into_iter()
            .collect()
    }
}

/// `inkstream healthcheck`: asks the configured port, 3 s per step.
pub fn main(config: &Config) -> Result<(), HealthError> {
    check(config.server.port, Duration::from_secs(3))
}

/// One `GET /healthz` on `127.0.0.1:port`, with `timeout` for each step.
pub fn check(port: u16, timeout: Duration) -> Result<(), HealthError> {
    let io = |source| HealthError::Io { port, source };
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut s = TcpStream::connect_timeout(&addr, timeout).map_err(io)?;
    s.set_read_timeout(Some(timeout)).map_err(io)?;
    s.set_write_timeout(Some(timeout)).map_err(io)?;
    s.write_all(b"GET /healthz HTTP/1.0\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .map_err(io)?;
    // The status line is all that matters; a small bounded read.
    let mut buf = [0u8; 64];
    let mut n = 0;
    while n < buf.len() {
        match s.read(&mut buf[n..]).map_err(io)? {
            0 => break,
            k => n += k,
        }
        if buf[..n].contains(&b'\n') {
            break;
        }
    }
    let head = String::from_utf8_lossy(&buf[..n]);
    let status = head.lines().next().unwrap_or_default();
    match status.split_whitespace().nth(1) {
        Some("200") => Ok(()),
        _ => Err(HealthError::Status(status.to_owned())),
    }
}
