//! Per-connection limits of a fanout WebSocket ([`ConnGuard`]):
//! - control frames (subscribe, unsubscribe, ping) at most
//!   `control_rate_per_sec` with a burst of `control_burst`; a flood closes
//!   the connection with [`CLOSE_CONTROL_FLOOD`], before its subscribes reach
//!   the broker's queue that every other client shares;
//! - the server pings every `ping_interval`; a client from which nothing
//!   (not even a pong) was heard for `idle_timeout` is closed with
//!   [`CLOSE_IDLE`];
//! - a connection authenticated by a token that expires is closed with
//!   [`CLOSE_TOKEN_EXPIRED`] at the token's `exp`: the client reconnects with
//!   a fresh token (no in-band re-authentication, so a subscription never
//!   outlives its credential); one opened with a session cookie is closed
//!   the same way once its session is gone or holds another user, role or
//!   memberships (checked every `auth.session_recheck`).

use super::close::{CLOSE_CONTROL_FLOOD, CLOSE_IDLE, CLOSE_TOKEN_EXPIRED, CLOSE_TOO_BIG};
use super::config::HubConfig;
use crate::auth::Principal;
use tokio::time::Instant;

/// Why a guard closes a connection: the close code, the reason sent, and
/// the label of `inkstream_ws_closes_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Closing {
    pub code: u16,
    pub reason: &'static str,
    pub label: &'static str,
}

pub(crate) const FLOOD: Closing = Closing {
    code: CLOSE_CONTROL_FLOOD,
    reason: "too many control frames",
    label: "control_flood",
};
pub(crate) const IDLE: Closing = Closing {
    code: CLOSE_IDLE,
    reason: "no frame or pong within the idle timeout",
    label: "idle",
};
pub(crate) const EXPIRED: Closing = Closing {
    code: CLOSE_TOKEN_EXPIRED,
    reason: "the token expired: reconnect with a new one",
    label: "token_expired",
};

pub(crate) const SESSION_ENDED: Closing = Closing {
    code: CLOSE_TOKEN_EXPIRED,
    reason: "the session ended or changed: reconnect",
    label: "session_ended",
};

pub(crate) const TOO_BIG: Closing = Closing {
    code: CLOSE_TOO_BIG,
    reason: "frame larger than the 64 KiB limit",
    label: "too_big",
};

/// Why a client's frame could not be read, as a close to send, or `None`
/// to just end the connection. A frame over the size limit gets a named
/// close (1009: the client is talking WebSocket and can act on it; found by
/// tests/tests/fuzz). Anything else — a reset, a hang-up without a closing
/// handshake, bytes that are not WebSocket at all — ends the connection
/// without a frame: a peer that does not speak WebSocket (an HTTP client
/// reusing the upgraded connection for its next request, as schemathesis'
/// does) would read a close frame as a garbled HTTP response.
pub(crate) fn read_error(e: &tokio_tungstenite::tungstenite::Error) -> Option<Closing> {
    use tokio_tungstenite::tungstenite::error::{CapacityError, Error};
    matches!(e, Error::Capacity(CapacityError::MessageTooLong { .. })).then_some(TOO_BIG)
}

/// The limits of one connection.
pub(crate) struct ConnGuard {
    rate: f64,
    burst: f64,
    tokens: f64,
    refilled: Instant,
    idle: std::time::Duration,
    heard: Instant,
    /// When the credential expires (a JWT's `exp`).
    pub expires: Option<Instant>,
}

impl ConnGuard {
    pub fn new(config: &HubConfig, principal: &Principal, now: Instant) -> ConnGuard {
        let expires = match principal {
            Principal::User(u) => u.expires_at.map(|exp| {
                let now_s = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs() as i64)
                    .unwrap_or(0);
                now + std::time::Duration::from_secs(exp.saturating_sub(now_s).max(0) as u64)
            }),
            _ => None,
        };
        ConnGuard {
            rate: config.control_rate_per_sec,
            burst: config.control_burst,
            tokens: config.control_burst,
            refilled: now,
            idle: config.idle_timeout,
            heard: now,
            expires,
        }
    }

    /// Something arrived from the client (any frame, pongs included).
    pub fn heard(&mut self, now: Instant) {
        self.heard = now;
    }

    /// Takes one control frame from the bucket; `Err` when over the rate.
    pub fn control(&mut self, now: Instant) -> Result<(), Closing> {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.refilled = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(FLOOD)
        }
    }

    /// At a ping tick: `Err` when the client has been silent too long.
    pub fn tick(&self, now: Instant) -> Result<(), Closing> {
        if now.saturating_duration_since(self.heard) >= self.idle {
            Err(IDLE)
        } else {
            Ok(())
        }
    }
}

/// Resolves when the credential expires (never without an expiry).
pub(crate) async fn expiry(at: Option<Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{Role, User};
    use std::time::Duration;

    fn config() -> HubConfig {
        HubConfig {
            control_rate_per_sec: 10.0,
            control_burst: 20.0,
            idle_timeout: Duration::from_secs(60),
            ..HubConfig::default()
        }
    }

    #[test]
    fn a_control_flood_past_the_burst_is_refused_and_the_rate_refills() {
        let t0 = Instant::now();
        let mut g = ConnGuard::new(&config(), &Principal::Anonymous, t0);
        for _ in 0..20 {
            assert_eq!(g.control(t0), Ok(()));
        }
        assert_eq!(g.control(t0), Err(FLOOD));
        assert_eq!(g.control(t0 + Duration::from_millis(100)), Ok(()));
    }

    #[test]
    fn silence_for_the_idle_timeout_closes() {
        let t0 = Instant::now();
        let mut g = ConnGuard::new(&config(), &Principal::Anonymous, t0);
        assert_eq!(g.tick(t0 + Duration::from_secs(59)), Ok(()));
        g.heard(t0 + Duration::from_secs(59));
        assert_eq!(g.tick(t0 + Duration::from_secs(100)), Ok(()));
        assert_eq!(g.tick(t0 + Duration::from_secs(119)), Err(IDLE));
    }

    #[test]
    fn a_token_connection_expires_with_its_token() {
        let t0 = Instant::now();
        let now_s = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let user = Principal::User(User {
            id: "u1".into(),
            role: Role::Member,
            projects: vec![],
            documents: vec![],
            expires_at: Some(now_s + 30),
        });
        let at = ConnGuard::new(&config(), &user, t0).expires.unwrap();
        assert!(at >= t0 + Duration::from_secs(29) && at <= t0 + Duration::from_secs(30));
        assert!(
            ConnGuard::new(&config(), &Principal::Anonymous, t0)
                .expires
                .is_none()
        );
    }
}
