//! The JSON wire codec: one event, a JSON array of events, or NDJSON.
//!
//! Decoding is strict and precise: every error names the field (as a JSON path
//! relative to the event) and says what was expected and what was found, so an
//! app developer can fix the call from the message alone.

mod envelope;
pub(crate) mod flat;

pub use crate::decode_error::DecodeError;
use crate::decode_error::describe;
use crate::event::{Event, EventType};
use serde_json::{Map, Value};
use std::fmt;

/// Bounds applied while decoding. `Default` matches DESIGN.md.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Longest accepted `id` (and `user_id`, `project_id`, `document_id`),
    /// in characters (Unicode scalar values: at most 4× as many bytes). The
    /// name is historical; a JSON Schema `maxLength` counts characters, so
    /// the limit does too, and the API document can state it exactly.
    pub max_id_bytes: usize,
    /// Largest accepted single event, in bytes of JSON.
    pub max_event_bytes: usize,
    /// Server clock in ms since the epoch; `None` disables the skew check
    /// (replay of historical files).
    pub now_ms: Option<i64>,
    /// How far in the past `ts` may be, in ms (default 24 h).
    pub max_past_ms: i64,
    /// How far in the future `ts` may be, in ms (default 5 min).
    pub max_future_ms: i64,
    /// `user_id` of events that carry none (the authenticated end user).
    pub default_user_id: Option<String>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_id_bytes: 128,
            max_event_bytes: 64 * 1024,
            now_ms: None,
            max_past_ms: 24 * 3600 * 1000,
            max_future_ms: 5 * 60 * 1000,
            default_user_id: None,
        }
    }
}

/// A new event id: a UUIDv7 (time-ordered).
pub fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// Decodes one event from its JSON bytes.
pub fn decode_event(bytes: &[u8], limits: &Limits) -> Result<Event, DecodeError> {
    match std::str::from_utf8(bytes) {
        Ok(text) => decode_event_str(text, limits),
        // Not UTF-8: the slow path's parse says where.
        Err(_) => decode_event_checked(bytes, None, limits),
    }
}

/// [`decode_event`] of text already known to be UTF-8 (a line or an item of
/// a body validated whole): not validated again.
fn decode_event_str(text: &str, limits: &Limits) -> Result<Event, DecodeError> {
    decode_event_checked(text.as_bytes(), Some(text), limits)
}

fn decode_event_checked(
    bytes: &[u8],
    text: Option<&str>,
    limits: &Limits,
) -> Result<Event, DecodeError> {
    if bytes.len() > limits.max_event_bytes {
        return Err(DecodeError::new(
            "event_too_large",
            None,
            format!(
                "event is {} bytes, the limit is {} bytes",
                bytes.len(),
                limits.max_event_bytes
            ),
        ));
    }
    if let Some(event) = text.and_then(|t| decode_fast(t, limits)) {
        return Ok(event);
    }
    // The slow path parses a generic JSON value so that the error can name
    // the field and show what was found.
    let value: Value = serde_json::from_slice(bytes).map_err(json_error)?;
    decode_value(value, limits)
}

/// The fast path: a borrowed, typed parse of a well-formed event in one pass.
/// `None` on anything unusual (an error, an RFC 3339 `ts`, an escaped id…):
/// the slow path then decides, with a precise error if it is one. Both paths
/// accept exactly the same events (tested).
fn decode_fast(text: &str, limits: &Limits) -> Option<Event> {
    use std::borrow::Cow;
    // Parsed from `&str` (UTF-8 validated once, by the caller: serde_json
    // then skips per-string validation). The plain shape is scanned; serde
    // reads the rest.
    let w = envelope::read(text)?;
    let known = EventType::lookup(&w.event_type).ok()?;
    let ok_id = |s: &Option<Cow<'_, str>>| {
        s.as_ref().is_none_or(|s| {
            !s.is_empty()
                && (s.len() <= limits.max_id_bytes || s.chars().count() <= limits.max_id_bytes)
        })
    };
    if !(ok_id(&w.id) && ok_id(&w.user_id) && ok_id(&w.project_id) && ok_id(&w.document_id)) {
        return None;
    }
    if w.ts < 0
        || limits
            .now_ms
            .is_some_and(|now| w.ts < now - limits.max_past_ms || w.ts > now + limits.max_future_ms)
    {
        return None;
    }
    let user_id = w
        .user_id
        .map(crate::Text::from)
        .or_else(|| limits.default_user_id.as_deref().map(crate::Text::from));
    for field in known.category.required_fields() {
        let present = match *field {
            "user_id" => user_id.is_some(),
            "project_id" => w.project_id.is_some(),
            "document_id" => w.document_id.is_some(),
            _ => true,
        };
        if !present {
            return None;
        }
    }
    let raw = w.data.unwrap_or("{}");
    if !raw.trim_start().starts_with('{') {
        return None;
    }
    let mut data = crate::payload::Payload::from_json(known.name, raw)?.ok()?;
    crate::validate::order_pairs(&mut data);
    if !crate::validate::passes_rules(&data) {
        return None;
    }
    Some(Event {
        id: match w.id {
            Some(id) => id.into(),
            None => uuid::Uuid::now_v7().to_string().into(),
        },
        ts: w.ts,
        user_id,
        project_id: w.project_id.map(crate::Text::from),
        document_id: w.document_id.map(crate::Text::from),
        data,
    })
}

fn json_error(e: serde_json::Error) -> DecodeError {
    let message = if e.is_eof() {
        format!("truncated JSON: {e}")
    } else {
        format!("malformed JSON: {e}")
    };
    DecodeError::new("invalid_json", None, message)
}

/// The most NDJSON events [`decode_batch`] reserves room for before
/// decoding (more lines grow the vector as usual).
const NDJSON_PRESIZE_MAX: usize = 4096;

/// How many events a request body holds, counted without decoding any: the
/// non-empty lines of NDJSON, the items of a JSON array, 1 for a single
/// object. So a caller can refuse a batch over its limit (or its rate)
/// before any event is parsed.
///
/// NDJSON is counted to its end (one pass of byte comparisons, no
/// allocation, and no look at the text: its lines are counted whether or
/// not they are UTF-8, so the decode is the body's one UTF-8 pass); an
/// array's scan stops at item `max + 1`, so a count over `max` is exact for
/// NDJSON and a lower bound (`max + 1`) for an array. `None` when the body
/// cannot be counted: not an object, an array or NDJSON, an array that is
/// not UTF-8, or one not well formed before its `max + 1`th item
/// ([`decode_batch`] says why).
pub fn count_events(body: &[u8], ndjson: bool, max: usize) -> Option<usize> {
    if ndjson {
        // The lines `decode_batch` decodes: those with a byte that is not
        // ASCII whitespace (`\r` is whitespace, so CRLF needs no care).
        let mut n = 0usize;
        let mut start = 0;
        for end in memchr::memchr_iter(b'\n', body).chain(std::iter::once(body.len())) {
            if body[start..end].iter().any(|b| !b.is_ascii_whitespace()) {
                n += 1;
            }
            start = end + 1;
        }
        return Some(n);
    }
    match body.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'[') => {
            // Not UTF-8: `decode_batch` refuses it before looking at any event.
            let text = std::str::from_utf8(body).ok()?;
            let mut n = 0usize;
            scan_array(text, |_| {
                n += 1;
                n <= max
            })
            .map(|_| n)
        }
        Some(b'{') => Some(1),
        _ => None,
    }
}

/// Decodes a request body: a single JSON object, a JSON array of objects, or
/// NDJSON (one object per line; `ndjson = true`). Returns one result per event,
/// in order, so callers can report each rejected index.
pub fn decode_batch(
    body: &[u8],
    ndjson: bool,
    limits: &Limits,
) -> Result<Vec<Result<Event, DecodeError>>, DecodeError> {
    let Ok(text) = std::str::from_utf8(body) else {
        return Err(DecodeError::new(
            "invalid_utf8",
            None,
            "body is not valid UTF-8",
        ));
    };
    if ndjson {
        // Sized for the lines up front (a filtered iterator would start
        // empty and copy every decoded event at each doubling), up to a
        // bound: a body of blank lines reserves no more than that.
        let lines = memchr::memchr_iter(b'\n', body).count() + 1;
        let mut out = Vec::with_capacity(lines.min(NDJSON_PRESIZE_MAX));
        out.extend(
            text.split('\n')
                .map(|line| line.strip_suffix('\r').unwrap_or(line))
                .filter(|line| !line.bytes().all(|b| b.is_ascii_whitespace()))
                .map(|line| decode_event_str(line, limits)),
        );
        return Ok(out);
    }
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    match first {
        Some(b'[') => {
            // Split at the array's own commas and decode each item once; only
            // a body that is not well-formed JSON goes through serde_json's
            // whole-array parse, for its precise request-level error.
            if let Some(items) = split_array(text) {
                let decoded: Vec<Result<Event, DecodeError>> = items
                    .iter()
                    .map(|item| decode_event_str(item, limits))
                    .collect();
                let malformed = decoded.iter().zip(&items).any(|(r, item)| match r {
                    Err(e) if e.code == "invalid_json" => true,
                    Err(e) if e.code == "event_too_large" => {
                        serde_json::from_str::<serde::de::IgnoredAny>(item).is_err()
                    }
                    _ => false,
                });
                if !malformed {
                    return Ok(decoded);
                }
            }
            decode_array_parsed(body, limits)
        }
        Some(b'{') => {
            // A single event that is not even JSON is a malformed request
            // (400), not an invalid event of a batch.
            let value: Value = serde_json::from_slice(body).map_err(json_error)?;
            if body.len() > limits.max_event_bytes {
                return Ok(vec![decode_event(body, limits)]);
            }
            Ok(vec![decode_value(value, limits)])
        }
        Some(_) => Err(DecodeError::new(
            "invalid_json",
            None,
            "expected a JSON object, a JSON array of objects, or NDJSON",
        )),
        None => Err(DecodeError::new("empty_body", None, "the body is empty")),
    }
}

/// An array body through serde_json's parse of the whole array (its raw
/// items, then each decoded): what a body that is not well-formed gets, for
/// serde_json's precise error.
fn decode_array_parsed(
    body: &[u8],
    limits: &Limits,
) -> Result<Vec<Result<Event, DecodeError>>, DecodeError> {
    let items: Vec<&serde_json::value::RawValue> =
        serde_json::from_slice(body).map_err(json_error)?;
    Ok(items
        .into_iter()
        .map(|raw| decode_event_str(raw.get(), limits))
        .collect())
}

/// The items of a top-level JSON array, trimmed, found by scanning for the
/// array's own commas (strings and nesting skipped), without parsing them.
/// `None` when the array's own structure is not well formed (no `[`, an
/// empty item, a bracket closing what is not open at this level, text after
/// the `]`). Each item still has to be valid JSON on its own: with every
/// item valid, the whole body is.
fn split_array(text: &str) -> Option<Vec<&str>> {
    let mut items = Vec::with_capacity(text.len() / 128 + 1);
    scan_array(text, |item| {
        items.push(item);
        true
    })?;
    Some(items)
}

/// [`split_array`]'s scan, handing each item to `item` as it is found until
/// `item` answers `false`. `Some(true)`: the whole array was scanned and is
/// well formed; `Some(false)`: `item` stopped the scan (what follows is not
/// looked at); `None`: the array's structure is not well formed before that.
fn scan_array<'a>(text: &'a str, mut item: impl FnMut(&'a str) -> bool) -> Option<bool> {
    // Every index it cuts at is an ASCII byte's, so a char boundary.
    let body = text.as_bytes();
    let skip_ws = |mut i: usize| {
        while body.get(i).is_some_and(u8::is_ascii_whitespace) {
            i += 1;
        }
        i
    };
    let mut i = skip_ws(0);
    if body.get(i) != Some(&b'[') {
        return None;
    }
    i = skip_ws(i + 1);
    if body.get(i) == Some(&b']') {
        return (skip_ws(i + 1) == body.len()).then_some(true);
    }
    loop {
        let start = i;
        let mut depth = 0usize;
        loop {
            match *body.get(i)? {
                b'"' => {
                    // Past the closing quote; `\` escapes the next byte.
                    i += 1;
                    loop {
                        i += memchr::memchr2(b'"', b'\\', body.get(i..)?)?;
                        if body[i] == b'"' {
                            break;
                        }
                        i += 2;
                    }
                }
                b'{' | b'[' => depth += 1,
                b'}' | b']' if depth > 0 => depth -= 1,
                b']' | b',' if depth == 0 => break,
                b'}' => return None,
                _ => {}
            }
            i += 1;
        }
        let found = text[start..i].trim_ascii();
        if found.is_empty() {
            return None;
        }
        if !item(found) {
            return Some(false);
        }
        if body[i] == b']' {
            return (skip_ws(i + 1) == body.len()).then_some(true);
        }
        i = skip_ws(i + 1);
    }
}

/// Numbers with no fraction written as floats (`17.0`, `1.7e3`) are
/// integers (JSON Schema says so, and generated clients send them): they
/// become integers before the typed decode, when they fit an `i64`.
pub fn integral_floats(v: &mut Value) {
    match v {
        Value::Number(n) if n.is_f64() => {
            // Within one unit in the last place of an integer: serde_json's
            // parse of a long decimal may be off by one ulp (17 digits).
            if let Some(f) = n.as_f64()
                && (f - f.round()).abs() <= f.abs() * f64::EPSILON
                && (-9.223_372_036_854_775e18..9.223_372_036_854_775e18).contains(&f)
            {
                *v = Value::from(f.round() as i64);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(integral_floats),
        Value::Object(m) => m.values_mut().for_each(integral_floats),
        _ => {}
    }
}

/// Validates and converts an already-parsed JSON value into an [`Event`].
pub fn decode_value(mut value: Value, limits: &Limits) -> Result<Event, DecodeError> {
    integral_floats(&mut value);
    let mut obj = match value {
        Value::Object(m) => m,
        other => {
            return Err(DecodeError::new(
                "invalid_json",
                None,
                format!("expected an event object, got {}", describe(&other)),
            ));
        }
    };

    let event_type = take_string(&mut obj, "type")?
        .ok_or_else(|| DecodeError::missing("type", "a string such as \"writing.keystroke\""))?;
    let known = EventType::lookup(&event_type)
        .map_err(|e| DecodeError::new("unknown_type", Some("type"), e.to_string()))?;

    let id = match take_string(&mut obj, "id")? {
        Some(id) if id.is_empty() => {
            return Err(DecodeError::new(
                "invalid_field",
                Some("id"),
                "expected a non-empty string",
            ));
        }
        Some(id) if id.chars().count() > limits.max_id_bytes => {
            return Err(DecodeError::new(
                "invalid_field",
                Some("id"),
                format!(
                    "expected at most {} characters, got {}",
                    limits.max_id_bytes,
                    id.chars().count()
                ),
            ));
        }
        Some(id) => id,
        None => uuid::Uuid::now_v7().to_string(),
    };

    let ts = match obj.remove("ts") {
        None => {
            return Err(DecodeError::missing(
                "ts",
                "integer milliseconds since the Unix epoch or an RFC 3339 string",
            ));
        }
        Some(v) => parse_ts(&v)?,
    };
    if let Some(now) = limits.now_ms
        && (ts < now - limits.max_past_ms || ts > now + limits.max_future_ms)
    {
        {
            return Err(DecodeError::new(
                "ts_out_of_range",
                Some("ts"),
                format!(
                    "event time {ts} is outside the accepted range [{}, {}] (server clock {now}, \
                     {} ms in the past to {} ms in the future)",
                    now - limits.max_past_ms,
                    now + limits.max_future_ms,
                    limits.max_past_ms,
                    limits.max_future_ms
                ),
            ));
        }
    }

    let user_id = take_id(&mut obj, "user_id", limits)?.or_else(|| limits.default_user_id.clone());
    let project_id = take_id(&mut obj, "project_id", limits)?;
    let document_id = take_id(&mut obj, "document_id", limits)?;
    for field in known.category.required_fields() {
        let present = match *field {
            "user_id" => user_id.is_some(),
            "project_id" => project_id.is_some(),
            "document_id" => document_id.is_some(),
            _ => true,
        };
        if !present {
            return Err(DecodeError::new(
                "missing_field",
                Some(field),
                format!(
                    "required for {} events (expected a non-empty string)",
                    known.category
                ),
            ));
        }
    }

    if let Some(extra) = obj.keys().find(|k| *k != "data") {
        return Err(DecodeError::new(
            "unknown_field",
            Some(extra),
            "not a field of the event envelope (payload fields go inside \"data\")",
        ));
    }

    let data = match obj.remove("data") {
        None | Some(Value::Null) => Value::Object(Map::new()),
        Some(v @ Value::Object(_)) => v,
        Some(other) => return Err(DecodeError::invalid("data", "an object", &other)),
    };
    let data = crate::validate::payload(known, &data)?;

    Ok(Event {
        id: id.into(),
        ts,
        user_id: user_id.map(Into::into),
        project_id: project_id.map(Into::into),
        document_id: document_id.map(Into::into),
        data,
    })
}

fn take_string(obj: &mut Map<String, Value>, field: &str) -> Result<Option<String>, DecodeError> {
    match obj.remove(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(DecodeError::invalid(field, "a string", &other)),
    }
}

fn take_id(
    obj: &mut Map<String, Value>,
    field: &str,
    limits: &Limits,
) -> Result<Option<String>, DecodeError> {
    match take_string(obj, field)? {
        Some(s) if s.is_empty() => Err(DecodeError::new(
            "invalid_field",
            Some(field),
            "expected a non-empty string",
        )),
        Some(s) if s.chars().count() > limits.max_id_bytes => Err(DecodeError::new(
            "invalid_field",
            Some(field),
            format!(
                "expected at most {} characters, got {}",
                limits.max_id_bytes,
                s.chars().count()
            ),
        )),
        other => Ok(other),
    }
}

/// `ts` as integer milliseconds, or an RFC 3339 string.
fn parse_ts(v: &Value) -> Result<i64, DecodeError> {
    const EXPECTED: &str = "integer milliseconds since the Unix epoch or an RFC 3339 string";
    match v {
        Value::Number(n) => n
            .as_i64()
            .filter(|ms| *ms >= 0)
            .ok_or_else(|| DecodeError::invalid("ts", EXPECTED, v)),
        Value::String(s) => {
            let parsed =
                time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
                    .map_err(|_| DecodeError::invalid("ts", EXPECTED, v))?;
            i64::try_from(parsed.unix_timestamp_nanos() / 1_000_000)
                .map_err(|_| DecodeError::invalid("ts", EXPECTED, v))
        }
        _ => Err(DecodeError::invalid("ts", EXPECTED, v)),
    }
}

impl fmt::Display for Limits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "id ≤ {} chars, event ≤ {} B",
            self.max_id_bytes, self.max_event_bytes
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The split path against the whole-array parse it replaced (kept as
    /// the fallback for bodies that are not well-formed).
    #[test]
    fn arrays_split_without_serde_decode_as_the_whole_array_parse_did() {
        let ok = r#"{"id":"a","type":"writing.keystroke","ts":1,"user_id":"u","data":{"keystrokes":1,"words":1,"chars":1}}"#;
        let tricky = r#"{"id":"b","type":"collaboration.comment_added","ts":2,"user_id":"u \" ] } , [","project_id":"p","document_id":"d","data":{"comment_id":"c,]}","paragraph":3,"thread_id":"[\\\"{"}}"#;
        let invalid = r#"{"id":"c","type":"writing.keystroke","ts":1}"#;
        let mut limits = Limits::default();
        let bodies: Vec<String> = vec![
            "[]".into(),
            " [ ] ".into(),
            format!("[{ok}]"),
            format!(" [ {ok} ,\n {tricky} , {invalid} ] \n"),
            format!("[{ok},{ok},]"),
            format!("[{ok},,{ok}]"),
            format!("[{ok}"),
            format!("[{ok}] x"),
            format!("[{ok}]]"),
            format!("[{ok} {ok}]"),
            format!("[{ok}}}]"),
            format!("[{{\"type\":1]}}]"),
            format!("[{ok}, 5, \"s\", null, [1,2]]"),
            format!("[{ok}, {{\"a\": \"unterminated]"),
            format!("[{ok}, {{\"a\": \"\\u00e9 \\\\\"}}]"),
            format!(
                "[{},{ok}]",
                ok.replace("\"u\"", "\"uuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuu\"")
            ),
            format!("[{} , {ok}]", "{\"x\": [1, 2"),
        ];
        // The split itself, on the body whose strings hold brackets, commas,
        // quotes and backslashes: three items, exactly the three texts.
        let three = split_array(&bodies[3]).unwrap();
        assert_eq!(three, [ok, tricky, invalid]);
        let decoded = decode_batch(bodies[3].as_bytes(), false, &limits).unwrap();
        assert!(
            decoded[0].is_ok() && decoded[1].is_ok() && decoded[2].is_err(),
            "{decoded:?}"
        );
        for body in &bodies {
            for max in [usize::MAX, 150] {
                limits.max_event_bytes = max;
                assert_eq!(
                    decode_batch(body.as_bytes(), false, &limits),
                    decode_array_parsed(body.as_bytes(), &limits),
                    "{body} (max_event_bytes {max})"
                );
            }
        }
    }

    fn decode(s: &str) -> Result<Event, DecodeError> {
        decode_event(s.as_bytes(), &Limits::default())
    }

    const KEYSTROKE: &str = r#"{"id":"e1","type":"writing.keystroke","ts":1767603600123,"user_id":"u1","project_id":"p1","document_id":"d1","data":{"keystrokes":10,"words":2,"chars":11}}"#;

    #[test]
    fn decodes_the_contract_example() {
        let e = decode(KEYSTROKE).unwrap();
        assert_eq!(e.id, "e1");
        assert_eq!(e.ts, 1_767_603_600_123);
        match &e.data {
            crate::Payload::WritingKeystroke(k) => assert_eq!(k.words, 2),
            other => panic!("decoded as {other:?}"),
        }
        assert_eq!(e.partition_key(), "u1");
    }

    #[test]
    fn accepts_rfc3339_timestamps() {
        let e = decode(
            r#"{"type":"system.error","ts":"2026-01-05T09:00:00.123Z","data":{"service":"api","message":"x"}}"#,
        )
        .unwrap();
        assert_eq!(e.ts, 1_767_603_600_123);
    }

    #[test]
    fn generates_a_uuid_v7_when_id_is_absent() {
        let e = decode(r#"{"type":"system.error","ts":1,"data":{"service":"api","message":"x"}}"#)
            .unwrap();
        let id = uuid::Uuid::parse_str(&e.id).unwrap();
        assert_eq!(id.get_version_num(), 7);
    }

    #[test]
    fn mistyped_payload_field_names_its_path() {
        let err = decode(
            r#"{"type":"writing.keystroke","ts":1,"user_id":"u1","data":{"keystrokes":1,"words":"3","chars":1}}"#,
        )
        .unwrap_err();
        assert_eq!(err.code, "invalid_field");
        assert_eq!(err.field.as_deref(), Some("data.words"));
        assert_eq!(
            err.to_string(),
            r#"data.words: expected non-negative integer, got "3""#
        );
    }

    #[test]
    fn missing_required_envelope_field_is_named() {
        let err =
            decode(r#"{"type":"collaboration.cursor_moved","ts":1,"user_id":"u1"}"#).unwrap_err();
        assert_eq!(err.code, "missing_field");
        assert_eq!(err.field.as_deref(), Some("document_id"));
    }

    #[test]
    fn id_over_128_bytes_is_rejected() {
        let long = "x".repeat(129);
        let err = decode(&format!(
            r#"{{"id":"{long}","type":"system.error","ts":1}}"#
        ))
        .unwrap_err();
        assert_eq!(err.field.as_deref(), Some("id"));
    }

    #[test]
    fn ts_outside_the_skew_is_rejected_when_a_clock_is_given() {
        let limits = Limits {
            now_ms: Some(10 * 24 * 3600 * 1000),
            ..Limits::default()
        };
        let err = decode_event(br#"{"type":"system.error","ts":1}"#, &limits).unwrap_err();
        assert_eq!(err.code, "ts_out_of_range");
    }

    #[test]
    fn batch_reports_each_event_in_order() {
        let body = format!("{KEYSTROKE}\n{{\"type\":\"nope.x\",\"ts\":1}}\n\n");
        let out = decode_batch(body.as_bytes(), true, &Limits::default()).unwrap();
        assert_eq!(out.len(), 2);
        assert!(out[0].is_ok());
        assert_eq!(out[1].as_ref().unwrap_err().code, "unknown_type");

        let arr = format!("[{KEYSTROKE},{KEYSTROKE}]");
        let out = decode_batch(arr.as_bytes(), false, &Limits::default()).unwrap();
        assert_eq!(out.len(), 2);
    }

    #[test]
    fn count_events_counts_what_decode_batch_decodes() {
        let nd = format!("{KEYSTROKE}\r\n \n\n{{\"type\":\"nope.x\"}}\n\t\n1");
        let arr = format!("[{KEYSTROKE}, \"a,]\\\"\", [1,{{\"b\":[2]}}], 3]");
        for (body, ndjson) in [(nd.as_str(), true), (arr.as_str(), false)] {
            let events = if ndjson { 3 } else { 4 };
            let decoded = decode_batch(body.as_bytes(), ndjson, &Limits::default()).unwrap();
            assert_eq!(decoded.len(), events, "{body}");
            let count = |max| count_events(body.as_bytes(), ndjson, max);
            assert_eq!(count(events), Some(events), "{body}");
            assert_eq!(count(events + 5), Some(events), "{body}");
            assert_eq!(count(events - 1), Some(events), "{body}");
            assert_eq!(count(1), Some(if ndjson { events } else { 2 }), "{body}");
        }
        // An array's scan stops at the first item over the limit: what
        // follows (here not even JSON) is not looked at.
        assert_eq!(count_events(b"[1,2,3,4,5,}", false, 2), Some(3));
        assert_eq!(count_events(b"[1,}", false, 2), None);
        assert_eq!(count_events(b"[]", false, 0), Some(0));
        assert_eq!(count_events(KEYSTROKE.as_bytes(), false, 0), Some(1));
        // NDJSON lines are counted as bytes: a body over the limit is
        // refused as such whatever its text (under it, the decode says
        // it is not UTF-8).
        assert_eq!(count_events(b"1\n1\n\xff", true, 1), Some(3));
        assert_eq!(count_events(b"[1,\xff]", false, 5), None);
        assert_eq!(count_events(b"\n \r\n", true, 0), Some(0));
    }

    #[test]
    fn unknown_envelope_field_is_rejected() {
        let err = decode(r#"{"type":"system.error","ts":1,"words":3}"#).unwrap_err();
        assert_eq!(err.code, "unknown_field");
        assert_eq!(err.field.as_deref(), Some("words"));
    }

    /// The scan takes an envelope that ends with two closing braces to end
    /// with `data`; whatever follows `data` instead is still refused (or
    /// read) exactly as serde reads the whole envelope.
    #[test]
    fn keys_after_data_are_read_as_serde_reads_them() {
        let base = r#"{"id":"e1","type":"writing.keystroke","ts":1,"user_id":"u1","data":{"keystrokes":1,"words":1,"chars":1}"#;
        // What the slow path alone (a serde parse of the whole text) says.
        let slow = |text: &str| {
            let value: Value = serde_json::from_str(text).map_err(json_error)?;
            decode_value(value, &Limits::default())
        };
        for tail in [
            r#","extra":{}}"#,
            r#","data":{}}"#,
            r#","data":{"words":1}}"#,
            "}",
        ] {
            let text = format!("{base}{tail}");
            assert_eq!(
                format!("{:?}", decode(&text)),
                format!("{:?}", slow(&text)),
                "{text}"
            );
        }
        let err = decode(&format!(r#"{base},"extra":{{}}}}"#)).unwrap_err();
        assert_eq!(err.code, "unknown_field");
        assert_eq!(err.field.as_deref(), Some("extra"));
        let later = r#"{"data":{"keystrokes":1,"words":1,"chars":1},"id":"e1","type":"writing.keystroke","ts":1,"user_id":"u1"}"#;
        assert_eq!(
            decode(later).unwrap(),
            decode(&format!("{base}}}")).unwrap()
        );
        let nested = r#"{"type":"collaboration.comment_added","ts":1,"user_id":"u1","document_id":"d1","data":{"comment_id":"c1","paragraph":3,"mentions":["u2"]}}"#;
        match decode(nested).unwrap().data {
            crate::Payload::CollaborationCommentAdded(c) => assert_eq!(c.mentions, ["u2"]),
            other => panic!("decoded as {other:?}"),
        }
    }
}
