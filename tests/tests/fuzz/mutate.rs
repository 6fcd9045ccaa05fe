//! The generators: byte-level mutations of corpus inputs (as a fuzzer
//! does), Avro varint replacement, and structure-aware edits of JSON values
//! (a field removed, replaced by a hostile value, or added).

use proptest::prelude::*;
use proptest::sample::Index;
use serde_json::{Map, Value, json};
use std::sync::Arc;

/// One byte-level edit; positions are `Index`es into the current input.
#[derive(Debug, Clone)]
pub enum Bytes {
    Flip(Index, u8),
    Set(Index, u8),
    Insert(Index, Vec<u8>),
    Delete(Index, usize),
    Truncate(Index),
    /// Repeats the chunk at the position (a long string, a deep nesting).
    Repeat(Index, usize, usize),
    /// Inserts a token of the target's dictionary.
    Token(Index, Index),
    /// Replaces the varint at the position with this value (Avro lengths,
    /// counts, union branches, longs): 2^62, negatives, overlong.
    Varint(Index, i64),
    /// Copies a chunk of another corpus input here.
    Splice(Index, Index, Index, usize),
}

/// Avro longs a decoder must survive as lengths, counts and branches.
pub const INTERESTING_LONGS: &[i64] = &[
    0,
    1,
    -1,
    2,
    63,
    64,
    127,
    128,
    255,
    256,
    65_535,
    1 << 20,
    1 << 31,
    (1 << 31) - 1,
    1 << 32,
    1 << 62,
    -(1 << 62),
    i64::MAX,
    i64::MIN,
    i64::MIN + 1,
];

fn bytes_edit(dict_len: usize) -> impl Strategy<Value = Bytes> {
    let _ = dict_len;
    prop_oneof![
        3 => (any::<Index>(), 0u8..8).prop_map(|(i, b)| Bytes::Flip(i, b)),
        2 => (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Bytes::Set(i, b)),
        2 => (any::<Index>(), proptest::collection::vec(any::<u8>(), 1..8))
            .prop_map(|(i, v)| Bytes::Insert(i, v)),
        2 => (any::<Index>(), 1usize..16).prop_map(|(i, n)| Bytes::Delete(i, n)),
        1 => any::<Index>().prop_map(Bytes::Truncate),
        1 => (any::<Index>(), 1usize..12, prop_oneof![Just(2usize), Just(64), Just(1100)])
            .prop_map(|(i, len, n)| Bytes::Repeat(i, len, n)),
        3 => (any::<Index>(), any::<Index>()).prop_map(|(i, t)| Bytes::Token(i, t)),
        3 => (any::<Index>(), prop_oneof![
                4 => proptest::sample::select(INTERESTING_LONGS),
                1 => any::<i64>(),
            ]).prop_map(|(i, v)| Bytes::Varint(i, v)),
        1 => (any::<Index>(), any::<Index>(), any::<Index>(), 1usize..32)
            .prop_map(|(s, f, a, n)| Bytes::Splice(s, f, a, n)),
    ]
}

fn pos(i: &Index, len: usize) -> usize {
    if len == 0 { 0 } else { i.index(len + 1) }
}

pub fn write_varint(out: &mut Vec<u8>, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    while z >= 0x80 {
        out.push((z as u8) | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

/// Applies `edits` to `input`; `dict` and `seeds` feed tokens and splices.
pub fn apply(input: &mut Vec<u8>, edits: &[Bytes], dict: &[&[u8]], seeds: &[Vec<u8>]) {
    for e in edits {
        let len = input.len();
        match e {
            Bytes::Flip(i, bit) if len > 0 => input[i.index(len)] ^= 1 << bit,
            Bytes::Set(i, b) if len > 0 => input[i.index(len)] = *b,
            Bytes::Insert(i, v) => {
                let at = pos(i, len);
                input.splice(at..at, v.iter().copied());
            }
            Bytes::Delete(i, n) if len > 0 => {
                let at = i.index(len);
                input.drain(at..(at + n).min(len));
            }
            Bytes::Truncate(i) => input.truncate(pos(i, len)),
            Bytes::Repeat(i, chunk, n) if len > 0 => {
                let at = i.index(len);
                let piece: Vec<u8> = input[at..(at + chunk).min(len)].to_vec();
                let more: Vec<u8> = piece
                    .iter()
                    .copied()
                    .cycle()
                    .take(piece.len() * n)
                    .collect();
                input.splice(at..at, more);
            }
            Bytes::Token(i, t) if !dict.is_empty() => {
                let at = pos(i, len);
                input.splice(at..at, t.get(dict).iter().copied());
            }
            Bytes::Varint(i, v) => {
                let at = pos(i, len);
                // The varint that starts here ends at the first byte < 0x80.
                let end = input[at..]
                    .iter()
                    .position(|b| b & 0x80 == 0)
                    .map_or(len, |p| at + p + 1);
                let mut enc = Vec::new();
                write_varint(&mut enc, *v);
                input.splice(at..end, enc);
            }
            Bytes::Splice(s, f, a, n) if !seeds.is_empty() => {
                let other = s.get(seeds);
                if !other.is_empty() {
                    let from = f.index(other.len());
                    let piece = &other[from..(from + n).min(other.len())];
                    let at = pos(a, len);
                    input.splice(at..at, piece.iter().copied());
                }
            }
            _ => {}
        }
    }
}

/// A corpus input with 0..=`max_edits` byte edits; one case in twenty is
/// random bytes instead.
pub fn mutated(
    seeds: Arc<Vec<Vec<u8>>>,
    dict: &'static [&'static [u8]],
    max_edits: usize,
) -> BoxedStrategy<Vec<u8>> {
    let pick = (
        any::<Index>(),
        proptest::collection::vec(bytes_edit(dict.len()), 0..=max_edits),
    )
        .prop_map(move |(seed, edits)| {
            let mut input = if seeds.is_empty() {
                Vec::new()
            } else {
                seed.get(&seeds).clone()
            };
            apply(&mut input, &edits, dict, &seeds);
            input
        });
    prop_oneof![
        19 => pick,
        1 => proptest::collection::vec(any::<u8>(), 0..96),
    ]
    .boxed()
}

/// Strings an input validator must survive.
pub const HOSTILE_STRINGS: &[&str] = &[
    "",
    " ",
    "\u{0}",
    "\u{7f}",
    "é",
    "✍",
    "\u{feff}",
    "\u{10ffff}",
    "a\"b\\c",
    "user:",
    ":",
    "::",
    "user:u1",
    "project:p1",
    "document:d1",
    "category:writing",
    "category:",
    "writing.keystroke",
    "writing.",
    ".keystroke",
    "writing.keystroke.extra",
    "system.error",
    "2026-01-01T00:00:00Z",
    "2026-13-40T25:61:61Z",
    "+275760-09-13T00:00:00Z",
    "9999-12-31T23:59:59.999999999+23:59",
    "1e309",
    "-0",
    "NaN",
    "18446744073709551616",
    "18446744073709551615d",
    "1m30s",
    "0ms",
    "-1s",
    "CRITICAL",
    "paste",
    "%00",
    "%zz",
    "s:",
    "s:.",
];

/// A hostile JSON string: one of [`HOSTILE_STRINGS`], repeated (an id over
/// 128 bytes, a channel over 200, a value over the event limit), or random.
pub fn hostile_string() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => proptest::sample::select(HOSTILE_STRINGS).prop_map(str::to_owned),
        2 => (proptest::sample::select(HOSTILE_STRINGS), prop_oneof![Just(2usize), Just(65), Just(129), Just(1001), Just(70_000)])
            .prop_map(|(s, n)| s.repeat(n)),
        3 => any::<String>(),
    ]
}

/// A hostile JSON value: edge numbers, hostile strings, wrong types, small
/// containers.
pub fn hostile_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        proptest::sample::select(INTERESTING_LONGS).prop_map(|n| json!(n)),
        any::<i64>().prop_map(|n| json!(n)),
        Just(json!(u64::MAX)),
        Just(json!(9_007_199_254_740_993_u64)),
        any::<f64>().prop_map(|f| json!(f)),
        Just(json!(-0.0)),
        Just(json!(1.5)),
        Just(json!(1e300)),
        hostile_string().prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::vec((hostile_string(), inner), 0..4)
                .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// One structure-aware edit of a JSON document.
#[derive(Debug, Clone)]
pub enum Edit {
    Remove(Index),
    Replace(Index, Value),
    /// Adds `key: value` to the object at the position (or its parent).
    Add(Index, String, Value),
}

pub fn json_edit(keys: &'static [&'static str]) -> impl Strategy<Value = Edit> {
    let key = prop_oneof![
        3 => proptest::sample::select(keys).prop_map(str::to_owned),
        1 => hostile_string(),
    ];
    prop_oneof![
        2 => any::<Index>().prop_map(Edit::Remove),
        5 => (any::<Index>(), hostile_value()).prop_map(|(i, v)| Edit::Replace(i, v)),
        2 => (any::<Index>(), key, hostile_value()).prop_map(|(i, k, v)| Edit::Add(i, k, v)),
    ]
}

/// Every JSON pointer in `v` (the root excluded), in document order.
fn pointers(v: &Value, at: String, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, child) in m {
                let p = format!("{at}/{}", k.replace('~', "~0").replace('/', "~1"));
                out.push(p.clone());
                pointers(child, p, out);
            }
        }
        Value::Array(a) => {
            for (i, child) in a.iter().enumerate() {
                let p = format!("{at}/{i}");
                out.push(p.clone());
                pointers(child, p, out);
            }
        }
        _ => {}
    }
}

fn parent(pointer: &str) -> (&str, String) {
    let (parent, last) = pointer.rsplit_once('/').unwrap_or(("", pointer));
    (parent, last.replace("~1", "/").replace("~0", "~"))
}

/// Applies structure-aware edits to `doc`.
pub fn edit(doc: &mut Value, edits: &[Edit]) {
    for e in edits {
        let mut all = Vec::new();
        pointers(doc, String::new(), &mut all);
        match e {
            Edit::Remove(i) if !all.is_empty() => {
                let (p, last) = parent(i.get::<String>(&all));
                match doc.pointer_mut(p) {
                    Some(Value::Object(m)) => {
                        m.remove(&last);
                    }
                    Some(Value::Array(a)) => {
                        if let Ok(n) = last.parse::<usize>()
                            && n < a.len()
                        {
                            a.remove(n);
                        }
                    }
                    _ => {}
                }
            }
            Edit::Replace(i, v) if !all.is_empty() => {
                if let Some(slot) = doc.pointer_mut(i.get::<String>(&all)) {
                    *slot = v.clone();
                }
            }
            Edit::Add(i, k, v) => {
                all.insert(0, String::new());
                let p = i.get(&all).clone();
                let target = match doc.pointer(&p) {
                    Some(Value::Object(_)) => p,
                    _ => parent(&p).0.to_owned(),
                };
                if let Some(Value::Object(m)) = doc.pointer_mut(&target) {
                    m.insert(k.clone(), v.clone());
                }
            }
            _ => {}
        }
    }
}
