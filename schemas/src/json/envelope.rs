//! The envelope of an event line. The plain shape
//! (`{"id":"…","ts":…,"user_id":"…",…,"type":"…","data":{…}}`, keys in any
//! order, no whitespace, no escapes, no nulls) is scanned byte by byte, at a
//! fraction of a serde parse of the same envelope. Anything else — whitespace, an escape, a
//! control character, `null`, an unknown or repeated key, a number that is
//! not a plain non-negative integer, trailing bytes — is `None`, and the
//! serde parse decides (tested: whatever this accepts, serde reads the
//! same). `data` is only delimited here; it is parsed strictly afterwards.

use std::borrow::Cow;

/// The envelope of an event, borrowed from its text: what the fast path
/// reads before it validates (by [`scan`] or by serde).
#[derive(Debug, PartialEq)]
pub(super) struct Envelope<'a> {
    pub(super) id: Option<Cow<'a, str>>,
    pub(super) event_type: Cow<'a, str>,
    pub(super) ts: i64,
    pub(super) user_id: Option<Cow<'a, str>>,
    pub(super) project_id: Option<Cow<'a, str>>,
    pub(super) document_id: Option<Cow<'a, str>>,
    /// The raw text of `data`. From [`scan`], when the text ends with two
    /// closing braces, everything from `data`'s opening brace to the last
    /// one but the envelope's: only a parse that reads it whole as one
    /// object proves that it is `data`.
    pub(super) data: Option<&'a str>,
}

/// A typed serde parse of the envelope (escapes, whitespace, any valid
/// JSON): `None` on anything serde refuses.
fn parse(text: &str) -> Option<Envelope<'_>> {
    use serde::Deserialize;
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Wire<'a> {
        #[serde(default, borrow)]
        pub(super) id: Option<Cow<'a, str>>,
        #[serde(rename = "type", borrow)]
        pub(super) event_type: Cow<'a, str>,
        ts: i64,
        #[serde(default, borrow)]
        user_id: Option<Cow<'a, str>>,
        #[serde(default, borrow)]
        pub(super) project_id: Option<Cow<'a, str>>,
        #[serde(default, borrow)]
        pub(super) document_id: Option<Cow<'a, str>>,
        #[serde(default, borrow)]
        data: Option<&'a serde_json::value::RawValue>,
    }
    let w: Wire<'_> = serde_json::from_str(text).ok()?;
    Some(Envelope {
        id: w.id,
        event_type: w.event_type,
        ts: w.ts,
        user_id: w.user_id,
        project_id: w.project_id,
        document_id: w.document_id,
        data: w.data.map(|d| d.get()),
    })
}

/// The envelope of `text`: scanned when it has the plain shape, else
/// parsed by serde; `None` when serde refuses it too.
pub(super) fn read(text: &str) -> Option<Envelope<'_>> {
    scan(text).or_else(|| parse(text))
}

/// The envelope of `text`, or `None` when it is not of the plain shape.
fn scan(text: &str) -> Option<Envelope<'_>> {
    let b = text.as_bytes();
    let mut i = 0;
    expect(b, &mut i, b'{')?;
    let mut e = Envelope {
        id: None,
        event_type: Cow::Borrowed(""),
        ts: 0,
        user_id: None,
        project_id: None,
        document_id: None,
        data: None,
    };
    let mut seen = 0u8;
    loop {
        let key = string(b, &mut i)?;
        expect(b, &mut i, b':')?;
        let bit = match &b[key] {
            b"id" => {
                e.id = Some(Cow::Borrowed(str_at(text, b, &mut i)?));
                1
            }
            b"type" => {
                e.event_type = Cow::Borrowed(str_at(text, b, &mut i)?);
                2
            }
            b"ts" => {
                e.ts = integer(b, &mut i)?;
                4
            }
            b"user_id" => {
                e.user_id = Some(Cow::Borrowed(str_at(text, b, &mut i)?));
                8
            }
            b"project_id" => {
                e.project_id = Some(Cow::Borrowed(str_at(text, b, &mut i)?));
                16
            }
            b"document_id" => {
                e.document_id = Some(Cow::Borrowed(str_at(text, b, &mut i)?));
                32
            }
            b"data" => {
                let start = i;
                if b.get(start) == Some(&b'{') && b.ends_with(b"}}") {
                    // The envelope's last value is an object: `data`, if the
                    // text is an event at all, ending before the envelope's
                    // closing brace. The payload's parse must read all of
                    // it as one object, which proves it is `data`; any other
                    // text fails it, and the slow path decides.
                    i = b.len() - 1;
                } else {
                    object(b, &mut i)?;
                }
                e.data = Some(text.get(start..i)?);
                64
            }
            _ => return None,
        };
        if seen & bit != 0 {
            return None; // serde refuses a repeated field
        }
        seen |= bit;
        match b.get(i)? {
            b',' => i += 1,
            b'}' => {
                i += 1;
                break;
            }
            _ => return None,
        }
    }
    // `type` and `ts` are required; nothing may follow the object.
    (seen & 6 == 6 && i == b.len()).then_some(e)
}

fn expect(b: &[u8], i: &mut usize, byte: u8) -> Option<()> {
    (b.get(*i) == Some(&byte)).then(|| *i += 1)
}

/// A string without escapes or control characters, as a `&str` of `text`.
#[inline]
pub(super) fn str_at<'a>(text: &'a str, b: &[u8], i: &mut usize) -> Option<&'a str> {
    let range = string(b, i)?;
    text.get(range)
}

/// Moves past a string without escapes or control characters; the range
/// of its content (the text is valid UTF-8 already).
fn string(b: &[u8], i: &mut usize) -> Option<std::ops::Range<usize>> {
    expect(b, i, b'"')?;
    let start = *i;
    let end = special(b, start)?;
    if b[end] != b'"' {
        return None;
    }
    *i = end + 1;
    Some(start..end)
}

/// The first `"`, `\\` or control character at or after `i`, eight bytes
/// at a time (the strings of an event are short: a vectorised search's
/// setup costs more than it saves).
fn special(b: &[u8], mut i: usize) -> Option<usize> {
    const ONES: u64 = u64::from_le_bytes([1; 8]);
    const HIGH: u64 = u64::from_le_bytes([0x80; 8]);
    // A byte of `x` below `n` (n ≤ 128) sets its high bit in `below(x, n)`;
    // bytes above the first such byte may be set too (by its borrow), bytes
    // below it never: the lowest bit set is exact.
    let below = |x: u64, n: u8| x.wrapping_sub(ONES * u64::from(n)) & !x & HIGH;
    while let Some(chunk) = b.get(i..i + 8) {
        let w = u64::from_le_bytes(chunk.try_into().ok()?);
        let hits = below(w ^ (ONES * u64::from(b'"')), 1)
            | below(w ^ (ONES * u64::from(b'\\')), 1)
            | below(w, 0x20);
        if hits != 0 {
            return Some(i + (hits.trailing_zeros() / 8) as usize);
        }
        i += 8;
    }
    (i..b.len()).find(|&j| matches!(b[j], b'"' | b'\\' | 0..0x20))
}

/// A non-negative integer as JSON writes it (no sign, no leading zero, no
/// fraction or exponent), that fits an `i64`.
#[inline]
pub(super) fn integer(b: &[u8], i: &mut usize) -> Option<i64> {
    let start = *i;
    let mut v: i64 = 0;
    while let Some(d) = b.get(*i).filter(|c| c.is_ascii_digit()) {
        v = v.checked_mul(10)?.checked_add(i64::from(d - b'0'))?;
        *i += 1;
    }
    let digits = *i - start;
    if digits == 0 || (digits > 1 && b[start] == b'0') {
        return None;
    }
    // A fraction or an exponent makes it a float, which serde refuses here.
    match b.get(*i) {
        Some(b'.' | b'e' | b'E') => None,
        _ => Some(v),
    }
}

/// Moves past an object: braces and brackets balanced, strings skipped
/// (escapes included). Its content is checked when it is parsed.
fn object(b: &[u8], i: &mut usize) -> Option<()> {
    if b.get(*i) != Some(&b'{') {
        return None;
    }
    let mut depth = 0usize;
    while let Some(&c) = b.get(*i) {
        *i += 1;
        match c {
            b'{' | b'[' => depth += 1,
            b'}' | b']' => {
                depth = depth.checked_sub(1)?;
                if depth == 0 {
                    return (c == b'}').then_some(());
                }
            }
            b'"' => loop {
                let at = special(b, *i)?;
                *i = at + 1;
                match b[at] {
                    b'"' => break,
                    b'\\' => *i += 1, // the escaped character
                    _ => {}           // a control character: the parse refuses it
                }
            },
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether the scan accepts `text`; if it does, serde's typed parse
    /// reads the same envelope, or refuses only a `data` that is not valid
    /// JSON (which the strict parse of `data` after the scan refuses too).
    fn agrees(text: &str) -> bool {
        let Some(scanned) = scan(text) else {
            return false;
        };
        match parse(text) {
            Some(parsed) => assert_eq!(scanned, parsed, "{text}"),
            None => {
                let data = scanned
                    .data
                    .unwrap_or_else(|| panic!("serde refuses {text}"));
                assert!(
                    serde_json::from_str::<serde::de::IgnoredAny>(data).is_err(),
                    "serde refuses {text} but its data is valid JSON"
                );
            }
        }
        true
    }

    /// What the scan accepts, serde's typed parse reads alike; what it
    /// refuses is left to serde (which may accept or refuse it).
    #[test]
    fn whatever_the_scan_accepts_serde_reads_the_same() {
        let plain = r#"{"id":"e1","ts":1767600000383,"user_id":"u1","project_id":"p1","document_id":"d1","type":"writing.keystroke","data":{"keystrokes":3,"words":1,"chars":4,"note":"a \"}\" in {[it]}"}}"#;
        let cases = [
            plain,
            r#"{"type":"writing.keystroke","ts":0,"data":{}}"#,
            r#"{"data":{"a":[1,{"b":"}"}]},"ts":5,"type":"t"}"#,
            r#"{"type":"t","ts":5}"#,
            // Left to serde: each of these is refused by the scan.
            r#"{"type":"t", "ts":5}"#,
            r#"{"type":"t","ts":5} "#,
            r#"{"type":"t","ts":05}"#,
            r#"{"type":"t","ts":-5}"#,
            r#"{"type":"t","ts":5.0}"#,
            r#"{"type":"t","ts":5e3}"#,
            r#"{"type":"t","ts":99999999999999999999}"#,
            r#"{"type":"t","ts":5,"ts":6}"#,
            r#"{"type":"t\u0041","ts":5}"#,
            r#"{"type":"t","ts":5,"user_id":null}"#,
            r#"{"type":"t","ts":5,"data":null}"#,
            r#"{"type":"t","ts":5,"data":[]}"#,
            r#"{"type":"t","ts":5,"data":{"a":1}"#,
            r#"{"type":"t","ts":5,"data":{"a":1]}"#,
            r#"{"type":"t","ts":5,"other":1}"#,
            r#"{"type":"t"}"#,
            r#"{"ts":5}"#,
            "{\"type\":\"t\u{1}\",\"ts\":5}",
            r#"{"type":"t","ts":5,}"#,
            r#"{"type":"t","ts":5}{}"#,
            r#"{"type":"é","ts":5,"id":"ü"}"#,
            "",
            "{",
        ];
        let mut accepted = 0;
        for text in cases {
            if agrees(text) {
                accepted += 1;
            }
        }
        assert_eq!(
            accepted, 5,
            "the plain cases (and non-ASCII text) are scanned"
        );
        assert_eq!(
            scan(plain).and_then(|e| e.data),
            Some(r#"{"keystrokes":3,"words":1,"chars":4,"note":"a \"}\" in {[it]}"}"#)
        );
    }

    /// The word-at-a-time search finds what a byte-by-byte one finds, at
    /// every offset and alignment.
    #[test]
    fn special_finds_the_first_quote_backslash_or_control_character() {
        let naive =
            |b: &[u8], i: usize| (i..b.len()).find(|&j| matches!(b[j], b'"' | b'\\' | 0..0x20));
        let alphabet: &[u8] = b"a\"\\\x00\x1f\x20\x7f\x80\xff!~";
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for len in 0..40 {
            for _ in 0..200 {
                let bytes: Vec<u8> = (0..len)
                    .map(|_| {
                        seed ^= seed << 13;
                        seed ^= seed >> 7;
                        seed ^= seed << 17;
                        // Mostly plain letters, as in real strings.
                        if seed.is_multiple_of(5) {
                            alphabet[(seed >> 8) as usize % alphabet.len()]
                        } else {
                            b'a' + (seed >> 8) as u8 % 26
                        }
                    })
                    .collect();
                for i in 0..=len {
                    assert_eq!(special(&bytes, i), naive(&bytes, i), "{bytes:?} from {i}");
                }
            }
        }
    }

    /// Every prefix and every one-byte change of a plain line: the scan
    /// never accepts what serde reads differently or refuses.
    #[test]
    fn no_prefix_or_one_byte_change_is_read_differently() {
        let line = r#"{"id":"e0000000001","ts":1767600000383,"user_id":"u00659","project_id":"p0164","document_id":"d0164-1","type":"collaboration.user_joined","data":{"client":"web","n":[1,{"x":"\\"}]}}"#;
        let check = |text: &str| {
            agrees(text);
        };
        for cut in 0..=line.len() {
            if let Some(prefix) = line.get(..cut) {
                check(prefix);
            }
        }
        let replacements = b"{}[]\":,\\ 0a-.e\x01n";
        for at in 0..line.len() {
            for &r in replacements {
                let mut bytes = line.as_bytes().to_vec();
                bytes[at] = r;
                if let Ok(text) = std::str::from_utf8(&bytes) {
                    check(text);
                }
            }
        }
    }
}
