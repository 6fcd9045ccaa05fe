//! The express-session cookie parser (`connect.sid`: the Cookie header's
//! pairs, percent-decoding, the `s:<sid>.<signature>` check), through the
//! real `Authenticator` with a session secret and no Redis: a cookie whose
//! signature verifies gets `session_store_unavailable` (the lookup it would
//! do next), every other one a typed refusal.

use crate::mutate::{self, hostile_string};
use crate::{cases, run};
use connectors::auth::{AuthConfig, AuthError, Authenticator, sign_cookie};
use proptest::prelude::*;
use reqwest::header::{self, HeaderMap, HeaderValue};
use std::sync::Arc;

const SECRET: &str = "fuzz-session-secret";

const DICT: &[&[u8]] = &[
    b"connect.sid=",
    b"connect.sid",
    b"s:",
    b"s%3A",
    b"%",
    b"%2",
    b"%zz",
    b"%ff",
    b"%+1",
    b"%-1",
    b";",
    b"; ",
    b"=",
    b".",
    b"\t",
    b"\"",
    b"\xc3\xa9",
    b"\x80",
];

fn authenticator() -> Authenticator {
    Authenticator::new(
        AuthConfig {
            session_secret: Some(SECRET.into()),
            ..AuthConfig::default()
        },
        None,
        connectors::metrics::Metrics::standalone()
            .auth_jwks_fetches
            .clone(),
    )
    .expect("an authenticator without a JWKS URL always builds")
}

/// `encodeURIComponent`, as express (the `cookie` package) writes the value.
fn uri_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.!~*'()".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// What the parser must conclude, computed independently: the first
/// `connect.sid` pair of the header, percent-decoded, carries a valid
/// signature.
fn oracle_accepts(header: &str) -> bool {
    let Some(raw) = header
        .split(';')
        .find_map(|p| p.trim().strip_prefix("connect.sid="))
    else {
        return false;
    };
    let mut bytes = Vec::new();
    let r = raw.as_bytes();
    let mut i = 0;
    while i < r.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if r[i] == b'%'
            && i + 2 < r.len()
            && let (Some(h), Some(l)) = (hex(r[i + 1]), hex(r[i + 2]))
        {
            bytes.push((h * 16 + l) as u8);
            i += 3;
            continue;
        }
        bytes.push(r[i]);
        i += 1;
    }
    let value = String::from_utf8_lossy(&bytes);
    let Some((sid, _)) = value.strip_prefix("s:").and_then(|s| s.rsplit_once('.')) else {
        return false;
    };
    sign_cookie(sid, SECRET.as_bytes()) == value
}

/// Checks one Cookie header value; false when HTTP itself cannot carry it.
fn check(auth: &Authenticator, rt: &tokio::runtime::Runtime, value: &[u8]) -> bool {
    let Ok(v) = HeaderValue::from_bytes(value) else {
        return false;
    };
    let mut headers = HeaderMap::new();
    headers.insert(header::COOKIE, v);
    let result = rt.block_on(auth.authenticate(&headers, None));
    let err = match result {
        Ok(p) => panic!("no session store, yet a principal: {p:?}"),
        Err(e) => e,
    };
    assert!(!err.code().is_empty());
    assert!(err.to_string().trim().len() >= 8, "unspecific: {err:?}");
    if let AuthError::Invalid(m) | AuthError::SessionStore(m) = &err {
        assert!(m.trim().len() >= 8, "unspecific: {err:?}");
    }
    let accepted = matches!(err, AuthError::SessionStore(_));
    // Only visible ASCII reaches the parser (`to_str`); for those the
    // independent reading must agree.
    if let Ok(text) = std::str::from_utf8(value)
        && text
            .bytes()
            .all(|b| b == b'\t' || (b' '..=b'~').contains(&b))
    {
        assert_eq!(
            accepted,
            oracle_accepts(text),
            "the parser and the independent reading disagree on {text:?}: {err}"
        );
    } else {
        assert!(!accepted, "a header that is not visible ASCII was accepted");
    }
    true
}

/// A Cookie header built from pairs: `connect.sid` with a validly signed
/// value (raw or percent-encoded, as express writes it), with a tampered
/// signature, with hostile values; other cookies around it.
fn cookie_header() -> impl Strategy<Value = Vec<u8>> {
    let name = prop_oneof![
        4 => Just("connect.sid".to_owned()),
        1 => proptest::sample::select(&[" connect.sid", "connect.sid ", "CONNECT.SID", "connect.sid2", "sid", ""][..])
            .prop_map(str::to_owned),
        1 => hostile_string(),
    ];
    let sid = prop_oneof![
        3 => "[A-Za-z0-9_-]{32}",
        1 => any::<String>(),
        1 => hostile_string(),
    ];
    let value = (sid, 0u8..6, any::<proptest::sample::Index>()).prop_map(|(sid, how, at)| {
        let signed = sign_cookie(&sid, SECRET.as_bytes());
        match how {
            0 => uri_encode(&signed),
            1 => signed,
            2 => {
                // One character of the signature changed.
                let mut chars: Vec<char> = uri_encode(&signed).chars().collect();
                let i = at.index(chars.len());
                chars[i] = if chars[i] == 'A' { 'B' } else { 'A' };
                chars.into_iter().collect()
            }
            3 => format!("s:{sid}"),
            4 => sign_cookie(&sid, b"another secret"),
            _ => sid,
        }
    });
    let pair = (name, value).prop_map(|(n, v)| format!("{n}={v}"));
    let sep = proptest::sample::select(&["; ", ";", ";;", " ; ", ", "][..]);
    (proptest::collection::vec(pair, 0..4), sep)
        .prop_map(|(pairs, sep)| pairs.join(sep).into_bytes())
}

fn seeds_in_corpus() -> Arc<Vec<Vec<u8>>> {
    Arc::new(
        crate::corpus("cookie")
            .into_iter()
            .map(|(_, b)| b)
            .collect(),
    )
}

pub fn seeds() -> Vec<(String, Vec<u8>)> {
    let valid = sign_cookie("Xk2pQy7-vN1sR8tU0wZ3aB5cD6eF9gH4", SECRET.as_bytes());
    [
        (
            "valid-express.txt",
            format!("connect.sid={}", uri_encode(&valid)),
        ),
        ("valid-raw.txt", format!("connect.sid={valid}")),
        (
            "valid-among-others.txt",
            format!(
                "theme=dark; _ga=GA1.2.3.4; connect.sid={}; lang=fr",
                uri_encode(&valid)
            ),
        ),
        ("edge-unsigned.txt", "connect.sid=Xk2pQy7".into()),
        ("edge-no-dot.txt", "connect.sid=s%3AXk2pQy7".into()),
        ("edge-empty-value.txt", "connect.sid=".into()),
        ("edge-percent-at-end.txt", "connect.sid=s%3Aabc.%".into()),
        (
            "edge-percent-sign-digit.txt",
            "connect.sid=%+1%-1%zz%4".into(),
        ),
        (
            "edge-two-sids.txt",
            format!("connect.sid=s%3Abad.sig; connect.sid={valid}"),
        ),
        ("edge-no-sid.txt", "a=b; c=d".into()),
    ]
    .into_iter()
    .map(|(n, v)| (n.to_owned(), v.into_bytes()))
    .collect()
}

#[test]
fn session_cookie_parser_survives_hostile_cookie_headers() {
    let auth = authenticator();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let strategy = prop_oneof![
        3 => cookie_header(),
        2 => mutate::mutated(seeds_in_corpus(), DICT, 5),
    ];
    let carried = std::cell::Cell::new(0u32);
    run(
        "cookie",
        "cookie",
        cases(2_000),
        <[u8]>::to_vec,
        strategy,
        |b: &Vec<u8>| {
            if check(&auth, &rt, b) {
                carried.set(carried.get() + 1);
            }
        },
    );
    assert!(
        carried.get() > cases(2_000) / 2,
        "only {} inputs were valid header values",
        carried.get()
    );
}

/// Round trip: any session id, signed and written as express writes it,
/// is accepted (the signature verifies after percent-decoding).
#[test]
fn express_signed_cookies_round_trip() {
    let auth = authenticator();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut runner = crate::runner("cookie_round_trip", cases(500));
    runner
        .run(&any::<String>(), |sid| {
            let header = format!(
                "a=1; connect.sid={}; b=2",
                uri_encode(&sign_cookie(&sid, SECRET.as_bytes()))
            );
            let mut headers = HeaderMap::new();
            headers.insert(header::COOKIE, HeaderValue::from_str(&header).unwrap());
            let err = rt.block_on(auth.authenticate(&headers, None)).unwrap_err();
            prop_assert!(matches!(err, AuthError::SessionStore(_)), "{sid:?}: {err}");
            Ok(())
        })
        .unwrap();
}

#[test]
fn cookie_seeds_are_as_expected() {
    let auth = authenticator();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let committed = crate::corpus("cookie");
    assert!(!committed.is_empty(), "tests/fuzz/corpus/cookie/ is empty");
    for (name, bytes) in committed {
        let mut headers = HeaderMap::new();
        headers.insert(header::COOKIE, HeaderValue::from_bytes(&bytes).unwrap());
        let err = rt.block_on(auth.authenticate(&headers, None)).unwrap_err();
        assert_eq!(
            name.starts_with("valid-"),
            matches!(err, AuthError::SessionStore(_)),
            "{name}: {err}"
        );
    }
}
