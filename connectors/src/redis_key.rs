//! Caller-controlled parts of Redis keys (user, document, project, session,
//! alert and delivery ids, channel ids), escaped so that no two different
//! ids, or id tuples, ever name the same key.
//!
//! Keys join their parts with `:` (and the fanout's hash tag uses `{`, `}`
//! and `|`). An id containing a separator could otherwise name another
//! key: the in-app inbox of user `a:items` was the item hash of user `a`.
//! [`part`] percent-escapes `%` and every separator, so an escaped part
//! never contains one and the key splits back into the parts it was made
//! of. An id without those characters — nearly every real id — keeps its
//! key unchanged: keys written before escaping existed are still found.
//! (The log's dedup keys use a length prefix instead: see
//! `event_log/redis`.)

use std::borrow::Cow;

/// The characters escaped in a key part (besides `%` itself).
const SEPARATORS: [char; 4] = [':', '{', '}', '|'];

/// `s` with `%`, `:`, `{`, `}` and `|` percent-escaped (`%25`, `%3A`,
/// `%7B`, `%7D`, `%7C`); borrowed when there is nothing to escape.
pub fn part(s: &str) -> Cow<'_, str> {
    if !s.contains(|c| c == '%' || SEPARATORS.contains(&c)) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '%' => out.push_str("%25"),
            ':' => out.push_str("%3A"),
            '{' => out.push_str("%7B"),
            '}' => out.push_str("%7D"),
            '|' => out.push_str("%7C"),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// The part [`part`] escaped; `None` for text `part` cannot have produced.
pub fn unescape(s: &str) -> Option<String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('%') {
        out.push_str(&rest[..i]);
        let c = match rest.get(i + 1..i + 3)? {
            "25" => '%',
            "3A" => ':',
            "7B" => '{',
            "7D" => '}',
            "7C" => '|',
            _ => return None,
        };
        out.push(c);
        rest = &rest[i + 3..];
    }
    out.push_str(rest);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_ids_are_unchanged() {
        for id in ["u1", "doc-42", "a.b_c", "ünï", ""] {
            assert!(matches!(part(id), Cow::Borrowed(_)), "{id}");
        }
    }

    #[test]
    fn escaped_parts_hold_no_separator_and_round_trip() {
        for id in ["a:b", "a%3Ab", "%", "{x}|y", "a:items", "::", "%25:"] {
            let e = part(id);
            assert!(!e.contains(SEPARATORS), "{id} -> {e}");
            assert_eq!(unescape(&e).as_deref(), Some(id));
        }
    }

    #[test]
    fn pairs_joined_with_a_colon_no_longer_collide() {
        let join = |a: &str, b: &str| format!("{}:{}", part(a), part(b));
        assert_ne!(join("a:b", "c"), join("a", "b:c"));
        assert_ne!(join("a", "items"), format!("{}:items", part("a:items")));
        // Escaping is injective: an id that looks escaped is escaped again.
        assert_ne!(part("a:b"), part("a%3Ab"));
    }
}
