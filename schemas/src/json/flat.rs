//! A payload (`data`) of the plain shape, read by a small serde deserializer
//! of its own: no whitespace, no escapes, non-negative integers (to `i64::MAX`)
//! written plainly, strings, `true`, `false`, `null`, arrays and objects.
//! The payload types' own derived `Deserialize` reads it, so every rule of
//! theirs (unknown and repeated fields, defaults, symbols, ranges) applies
//! as with serde_json. Anything else — a float, a negative number, an
//! escape, whitespace, a type the field refuses — is `None`, and serde_json
//! decides, with its precise error if it is one (tested: whatever this
//! accepts, serde_json reads the same).

use serde::de::value::BorrowedStrDeserializer;
use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use std::fmt;

/// `text` read as a `T`, or `None` when it is not of the plain shape or
/// `T` refuses it.
pub(crate) fn parse<'de, T: serde::Deserialize<'de>>(text: &'de str) -> Option<T> {
    let mut de = Flat {
        text,
        b: text.as_bytes(),
        i: 0,
        depth: 0,
    };
    let value = T::deserialize(&mut de).ok()?;
    (de.i == de.b.len()).then_some(value)
}

/// Arrays and objects nest at most this deep here (serde_json allows 128).
const MAX_DEPTH: usize = 32;

/// Not of the plain shape, or refused by the type: serde_json decides.
#[derive(Debug)]
struct Unsupported;

impl fmt::Display for Unsupported {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("not of the plain shape")
    }
}

impl std::error::Error for Unsupported {}

impl de::Error for Unsupported {
    fn custom<T: fmt::Display>(_: T) -> Self {
        Unsupported
    }
}

struct Flat<'de> {
    text: &'de str,
    b: &'de [u8],
    i: usize,
    depth: usize,
}

impl<'de> Flat<'de> {
    fn peek(&self) -> Result<u8, Unsupported> {
        self.b.get(self.i).copied().ok_or(Unsupported)
    }

    fn eat(&mut self, byte: u8) -> Result<(), Unsupported> {
        if self.peek()? != byte {
            return Err(Unsupported);
        }
        self.i += 1;
        Ok(())
    }

    fn literal(&mut self, word: &[u8]) -> Result<(), Unsupported> {
        if !self.b[self.i..].starts_with(word) {
            return Err(Unsupported);
        }
        self.i += word.len();
        Ok(())
    }

    /// A string without escapes or control characters (the envelope
    /// scan's reader).
    fn string(&mut self) -> Result<&'de str, Unsupported> {
        super::envelope::str_at(self.text, self.b, &mut self.i).ok_or(Unsupported)
    }

    /// A non-negative integer as JSON writes it, that fits an `i64` (the
    /// envelope scan's reader; a larger one is serde_json's).
    fn unsigned(&mut self) -> Result<u64, Unsupported> {
        super::envelope::integer(self.b, &mut self.i)
            .map(i64::unsigned_abs)
            .ok_or(Unsupported)
    }

    /// Enters an array or object (its opening byte); `leave` checks its end.
    fn enter(&mut self) -> Result<(), Unsupported> {
        if self.depth == MAX_DEPTH {
            return Err(Unsupported);
        }
        self.depth += 1;
        self.i += 1;
        Ok(())
    }

    fn leave(&mut self, close: u8) -> Result<(), Unsupported> {
        self.eat(close)?;
        self.depth -= 1;
        Ok(())
    }
}

impl<'de> de::Deserializer<'de> for &mut Flat<'de> {
    type Error = Unsupported;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Unsupported> {
        match self.peek()? {
            b'"' => visitor.visit_borrowed_str(self.string()?),
            b'0'..=b'9' => visitor.visit_u64(self.unsigned()?),
            b't' => {
                self.literal(b"true")?;
                visitor.visit_bool(true)
            }
            b'f' => {
                self.literal(b"false")?;
                visitor.visit_bool(false)
            }
            b'n' => {
                self.literal(b"null")?;
                visitor.visit_unit()
            }
            b'[' => {
                self.enter()?;
                let value = visitor.visit_seq(Items {
                    de: &mut *self,
                    first: true,
                })?;
                self.leave(b']')?;
                Ok(value)
            }
            b'{' => {
                self.enter()?;
                let value = visitor.visit_map(Entries {
                    de: &mut *self,
                    first: true,
                })?;
                self.leave(b'}')?;
                Ok(value)
            }
            _ => Err(Unsupported),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Unsupported> {
        if self.peek()? == b'n' {
            self.literal(b"null")?;
            visitor.visit_none()
        } else {
            visitor.visit_some(self)
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Unsupported> {
        visitor.visit_newtype_struct(self)
    }

    /// A unit variant by its name; any other enum shape is serde_json's.
    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Unsupported> {
        if self.peek()? != b'"' {
            return Err(Unsupported);
        }
        visitor.visit_enum(BorrowedStrDeserializer::new(self.string()?))
    }

    fn deserialize_bytes<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, Unsupported> {
        Err(Unsupported)
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, Unsupported> {
        Err(Unsupported)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        unit unit_struct seq tuple tuple_struct map struct identifier ignored_any
    }
}

/// Moves past the `,` before every element but the first; `None` at the
/// closing byte.
fn next(de: &mut Flat<'_>, first: &mut bool, close: u8) -> Result<bool, Unsupported> {
    let c = de.peek()?;
    if c == close {
        return Ok(false);
    }
    if !*first {
        if c != b',' {
            return Err(Unsupported);
        }
        de.i += 1;
    }
    *first = false;
    Ok(true)
}

struct Items<'a, 'de> {
    de: &'a mut Flat<'de>,
    first: bool,
}

impl<'de> SeqAccess<'de> for Items<'_, 'de> {
    type Error = Unsupported;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Unsupported> {
        if !next(self.de, &mut self.first, b']')? {
            return Ok(None);
        }
        seed.deserialize(&mut *self.de).map(Some)
    }
}

struct Entries<'a, 'de> {
    de: &'a mut Flat<'de>,
    first: bool,
}

impl<'de> MapAccess<'de> for Entries<'_, 'de> {
    type Error = Unsupported;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Unsupported> {
        if !next(self.de, &mut self.first, b'}')? {
            return Ok(None);
        }
        let key = self.de.string()?;
        seed.deserialize(BorrowedStrDeserializer::new(key))
            .map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, Unsupported> {
        self.de.eat(b':')?;
        seed.deserialize(&mut *self.de)
    }
}

#[cfg(test)]
mod tests {
    use crate::payload::{Payload, TYPES};

    /// What serde_json reads of `data` as a payload of `type_name`.
    fn serde(type_name: &str, data: &str) -> Option<Payload> {
        Payload::from_json_serde(type_name, data)
            .expect("a known type")
            .ok()
    }

    /// Whether the plain reader accepts `data`; if it does, serde_json
    /// reads the same payload.
    fn agrees(type_name: &str, data: &str) -> bool {
        let Some(flat) = Payload::from_flat(type_name, data).expect("a known type") else {
            return false;
        };
        assert_eq!(
            Some(&flat),
            serde(type_name, data).as_ref(),
            "{type_name}: {data}"
        );
        true
    }

    /// Whether serde_json writes `v` in the plain shape.
    fn plain(v: &serde_json::Value) -> bool {
        use serde_json::Value;
        match v {
            Value::Null | Value::Bool(_) => true,
            Value::Number(n) => n.is_u64(),
            Value::String(s) => !s.chars().any(|c| c == '"' || c == '\\' || c < ' '),
            Value::Array(items) => items.iter().all(plain),
            Value::Object(entries) => entries
                .iter()
                .all(|(k, v)| plain(&Value::String(k.clone())) && plain(v)),
        }
    }

    /// Every example payload of every type, minimal and maximal, is read
    /// by the plain reader as serde_json reads it.
    #[test]
    fn every_example_is_read_as_serde_json_reads_it() {
        for (type_name, minimal, maximal) in crate::examples::examples() {
            for example in [minimal, maximal] {
                let text = example.to_string();
                assert_eq!(
                    agrees(type_name, &text),
                    plain(&example),
                    "{type_name}: {text}"
                );
            }
        }
        assert_eq!(crate::examples::examples().len(), TYPES.len());
    }

    /// Every prefix and every one-byte change of every example: the plain
    /// reader never accepts what serde_json reads differently or refuses.
    #[test]
    fn no_prefix_or_one_byte_change_is_read_differently() {
        let replacements = b"{}[]\":,\\ 0 1a-.entfu\x01";
        let mut accepted = 0usize;
        let mut tried = 0usize;
        for (type_name, minimal, maximal) in crate::examples::examples() {
            for example in [minimal, maximal] {
                let text = example.to_string();
                for cut in 0..text.len() {
                    if let Some(prefix) = text.get(..cut) {
                        tried += 1;
                        accepted += usize::from(agrees(type_name, prefix));
                    }
                }
                for at in 0..text.len() {
                    for &r in replacements {
                        let mut bytes = text.as_bytes().to_vec();
                        bytes[at] = r;
                        if let Ok(changed) = std::str::from_utf8(&bytes) {
                            tried += 1;
                            accepted += usize::from(agrees(type_name, changed));
                        }
                    }
                }
            }
        }
        // Many changes keep the payload valid (a digit for a digit, a
        // letter in a string): those the plain reader reads itself.
        assert!(accepted > 1000 && accepted < tried, "{accepted} of {tried}");
    }

    /// Shapes the plain reader leaves to serde_json, each with what
    /// serde_json then decides.
    #[test]
    fn unusual_shapes_are_left_to_serde_json() {
        let cases: &[(&str, bool)] = &[
            (r#"{"keystrokes":1,"words":1,"chars":1}"#, true),
            (r#"{"keystrokes": 1,"words":1,"chars":1}"#, true),
            (r#"{"keystrokes":-1,"words":1,"chars":1}"#, true),
            (r#"{"keystrokes":1.0,"words":1,"chars":1}"#, false),
            (r#"{"keystrokes":01,"words":1,"chars":1}"#, false),
            (
                r#"{"keystrokes":1,"words":1,"chars":1,"source":"typ\u0065d"}"#,
                true,
            ),
            (
                r#"{"keystrokes":1,"words":1,"chars":1,"deleted_chars":null}"#,
                true,
            ),
            (r#"{"keystrokes":1,"words":1,"chars":1,}"#, false),
            (r#"{"keystrokes":1,"words":1,"chars":1,"chars":2}"#, false),
            (r#"{"keystrokes":1,"words":1,"chars":1,"x":1}"#, false),
            (
                r#"{"keystrokes":99999999999999999999,"words":1,"chars":1}"#,
                false,
            ),
            (
                r#"{"keystrokes":9223372036854775808,"words":1,"chars":1}"#,
                false,
            ),
            (
                r#"{"keystrokes":1,"words":1,"chars":1,"source":"nope"}"#,
                false,
            ),
            (r#"{"keystrokes":1,"words":1,"chars":1} "#, true),
        ];
        for &(data, valid) in cases {
            agrees("writing.keystroke", data);
            assert_eq!(
                Payload::from_json("writing.keystroke", data)
                    .unwrap()
                    .is_ok(),
                valid,
                "{data}"
            );
        }
        let plain = r#"{"keystrokes":1,"words":1,"chars":1,"deleted_chars":null}"#;
        assert!(agrees("writing.keystroke", plain), "null is plain");
        let deep = format!("{}1{}", "[".repeat(40), "]".repeat(40));
        assert!(super::parse::<serde::de::IgnoredAny>(&deep).is_none());
        assert!(super::parse::<serde::de::IgnoredAny>("[[1,[\"a\"]],{\"b\":true}]").is_some());
    }
}
