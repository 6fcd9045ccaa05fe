//! Per-caller rate limits: token buckets keyed by principal, bounded in
//! number (idle full buckets are forgotten).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A sustained rate with a burst allowance, in events.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    pub per_second: f64,
    pub burst: f64,
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Token buckets per key.
pub struct RateLimiter {
    buckets: Mutex<HashMap<String, Bucket>>,
    max_keys: usize,
}

impl RateLimiter {
    pub fn new(max_keys: usize) -> RateLimiter {
        RateLimiter {
            buckets: Mutex::new(HashMap::new()),
            max_keys: max_keys.max(1),
        }
    }

    /// Takes `n` events from `key`'s bucket, or says how long to wait.
    pub fn check(&self, key: &str, n: usize, rate: Rate) -> Result<(), Duration> {
        self.check_at(key, n, rate, Instant::now())
    }

    /// Whether `key`'s bucket holds `n` events now, or how long to wait;
    /// takes nothing (and makes no bucket).
    pub fn peek(&self, key: &str, n: usize, rate: Rate) -> Result<(), Duration> {
        self.peek_at(key, n, rate, Instant::now())
    }

    fn peek_at(&self, key: &str, n: usize, rate: Rate, now: Instant) -> Result<(), Duration> {
        let buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let tokens = buckets.get(key).map_or(rate.burst, |b| {
            (b.tokens + now.duration_since(b.at).as_secs_f64() * rate.per_second).min(rate.burst)
        });
        let need = n as f64;
        if need <= tokens {
            return Ok(());
        }
        Err(Duration::from_secs_f64(
            ((need - tokens) / rate.per_second.max(1e-9)).max(0.001),
        ))
    }

    fn check_at(&self, key: &str, n: usize, rate: Rate, now: Instant) -> Result<(), Duration> {
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() >= self.max_keys && !buckets.contains_key(key) {
            // Forget buckets that have refilled: they hold no information.
            buckets.retain(|_, b| {
                b.tokens + now.duration_since(b.at).as_secs_f64() * rate.per_second < rate.burst
            });
        }
        let b = buckets.entry(key.to_owned()).or_insert(Bucket {
            tokens: rate.burst,
            at: now,
        });
        let elapsed = now.duration_since(b.at).as_secs_f64();
        b.tokens = (b.tokens + elapsed * rate.per_second).min(rate.burst);
        b.at = now;
        let need = n as f64;
        if need <= b.tokens {
            b.tokens -= need;
            return Ok(());
        }
        // A batch larger than the burst can never pass (ingest answers 413
        // before asking): wait for a full bucket.
        let missing = need.min(rate.burst.max(need)) - b.tokens;
        Err(Duration::from_secs_f64(
            (missing / rate.per_second.max(1e-9)).max(0.001),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refills_at_the_rate_up_to_the_burst() {
        let l = RateLimiter::new(10);
        let r = Rate {
            per_second: 10.0,
            burst: 20.0,
        };
        let t0 = Instant::now();
        assert!(l.check_at("a", 20, r, t0).is_ok());
        let wait = l.check_at("a", 5, r, t0).unwrap_err();
        assert!((wait.as_secs_f64() - 0.5).abs() < 0.01, "{wait:?}");
        assert!(
            l.check_at("a", 5, r, t0 + Duration::from_millis(500))
                .is_ok()
        );
        // A peek takes nothing and says the same as a check would.
        let t1 = t0 + Duration::from_millis(500);
        let peeked = l.peek_at("a", 5, r, t1).unwrap_err();
        assert!((peeked.as_secs_f64() - 0.5).abs() < 0.01, "{peeked:?}");
        assert!(
            l.peek_at("a", 5, r, t1 + Duration::from_millis(500))
                .is_ok()
        );
        assert!(l.peek_at("c", 20, r, t0).is_ok());
        assert!(l.peek_at("c", 21, r, t0).is_err());
        // Another key has its own bucket.
        assert!(l.check_at("b", 20, r, t0).is_ok());
    }
}
