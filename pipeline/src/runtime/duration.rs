//! Durations in the configuration: integer milliseconds or `500ms`, `2s`,
//! `5m`, `1h`, `1d` (combinable: `1m30s`). Every duration field of every
//! section reads through [`deserialize`].

use serde::{Deserialize, Deserializer};
use std::time::Duration;

/// A duration string that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected a duration such as \"500ms\", \"2s\", \"5m\" or \"1h\", got {0:?}")]
pub struct DurationError(pub String);

impl schemas::Classify for DurationError {
    fn fault(&self) -> schemas::Fault {
        schemas::Fault::Config
    }
}

/// A duration: integer milliseconds, or a string such as `500ms`, `2s`, `5m`,
/// `1h`, `1d` (units may be combined: `1m30s`).
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Ms(u64),
        Text(String),
    }
    match Raw::deserialize(d)? {
        Raw::Ms(ms) => Ok(Duration::from_millis(ms)),
        Raw::Text(s) => parse(&s).map_err(serde::de::Error::custom),
    }
}

/// Parses a duration string (see [`deserialize`]).
pub fn parse(s: &str) -> Result<Duration, DurationError> {
    let err = || DurationError(s.to_owned());
    let s = s.trim();
    if s.is_empty() {
        return Err(err());
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(err());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| err())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let ms = match unit {
            "ms" => 1,
            "s" => 1000,
            "m" | "min" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "" if rest.is_empty() && total.is_zero() => 1,
            _ => return Err(err()),
        };
        // Checked: a thousand terms of u64::MAX ms overflow `Duration`.
        total = total
            .checked_add(Duration::from_millis(n.saturating_mul(ms)))
            .ok_or_else(err)?;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::parse as parse_duration;
    use std::time::Duration;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("250").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("30m").unwrap(), Duration::from_secs(1800));
        assert!(parse_duration("5x").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn a_sum_past_the_largest_duration_is_an_error_not_a_panic() {
        let huge = "18446744073709551615d".repeat(1001);
        assert!(parse_duration(&huge).is_err());
    }
}
