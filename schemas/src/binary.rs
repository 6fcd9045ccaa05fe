//! A fast Avro binary codec for [`Event`], byte-for-byte the encoding of the
//! envelope schema `inkstream.Event` (the tests compare it with apache-avro's
//! output for every type).
//!
//! apache-avro builds a generic value tree and resolves names for every
//! record, which costs ~13 µs per event; the log and the Kafka mirror write
//! every event, so this path is hand-written: a serde `Serializer` and
//! `Deserializer` for Avro's binary encoding that rely on the payload structs
//! declaring their fields in schema order (tested), on optional fields being
//! `["null", T]` unions, and on enum symbols being declared in schema order.
//! Reading data written with an *older* schema version goes through
//! [`crate::AvroSchemas::decode_written_with`] (schema resolution), not here.

use crate::event::Event;
use crate::payload::{Payload, TYPES};
use serde::de::{self, DeserializeSeed, IntoDeserializer, Visitor};
use serde::ser::{self, Serialize};
use std::fmt;

/// Why a value could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("avro binary: {0}")]
pub struct BinaryError(String);

/// Bytes that do not decode came from whoever wrote them.
impl crate::fault::Classify for BinaryError {
    fn fault(&self) -> crate::fault::Fault {
        crate::fault::Fault::Caller
    }
}

impl ser::Error for BinaryError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        BinaryError(msg.to_string())
    }
}

impl de::Error for BinaryError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        BinaryError(msg.to_string())
    }
}

/// Appends `v` as Avro writes a long (zig-zag, then 7 bits per byte).
pub(crate) fn write_long(out: &mut Vec<u8>, v: i64) {
    // Byte by byte into room reserved once: a copy of a variable length
    // (`extend_from_slice(&bytes[..n])`) was a call to `memmove` per long.
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    out.reserve(10);
    while z >= 0x80 {
        out.push((z as u8) | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

/// `v` as Avro writes a long, and how many of the bytes it takes.
fn long_bytes(v: i64) -> ([u8; 10], usize) {
    let mut bytes = [0; 10];
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    let mut n = 0;
    while z >= 0x80 {
        bytes[n] = (z as u8) | 0x80;
        z >>= 7;
        n += 1;
    }
    bytes[n] = z as u8;
    (bytes, n + 1)
}

fn write_str(out: &mut Vec<u8>, s: &str) {
    write_long(out, s.len() as i64);
    out.extend_from_slice(s.as_bytes());
}

fn write_opt_str(out: &mut Vec<u8>, s: &Option<crate::Text>) {
    match s {
        None => write_long(out, 0),
        Some(s) => {
            write_long(out, 1);
            write_str(out, s);
        }
    }
}

/// Appends the Avro binary encoding of `event` (envelope schema) to `out`.
pub fn encode_into(event: &Event, out: &mut Vec<u8>) -> Result<(), BinaryError> {
    // The union branch is the payload's catalogue index (a name search
    // compared up to every type name, per event).
    let branch = event.data.type_index();
    write_str(out, &event.id);
    write_str(out, event.event_type());
    write_long(out, event.ts);
    write_opt_str(out, &event.user_id);
    write_opt_str(out, &event.project_id);
    write_opt_str(out, &event.document_id);
    write_long(out, branch as i64);
    event.data.serialize(&mut Writer { out })
}

/// The Avro binary encoding of `event`.
pub fn encode(event: &Event) -> Result<Vec<u8>, BinaryError> {
    let mut out = Vec::with_capacity(96);
    encode_into(event, &mut out)?;
    Ok(out)
}

/// Appends `event` as an Avro `bytes` value: its length (a long), then its
/// encoding. Several in a row make a packed log entry ([`decode_framed`]);
/// the length lets a reader skip an event that does not decode and go on
/// with the next.
pub fn encode_framed_into(event: &Event, out: &mut Vec<u8>) -> Result<(), BinaryError> {
    // The length is not known before the event is written: reserve the
    // longest prefix an event can need (5 bytes: up to 2^34 / 2), then move
    // the event down over what the actual prefix leaves unused.
    const RESERVED: usize = 5;
    let start = out.len();
    out.resize(start + RESERVED, 0);
    encode_into(event, out)?;
    let len = out.len() - start - RESERVED;
    let (prefix, n) = long_bytes(len as i64);
    if n > RESERVED {
        out.truncate(start);
        return Err(BinaryError(format!("an event of {len} bytes")));
    }
    let at = start + n;
    out[start..at].copy_from_slice(&prefix[..n]);
    out.copy_within(start + RESERVED.., at);
    out.truncate(at + len);
    Ok(())
}

/// The events of a packed entry ([`encode_framed_into`] one after another),
/// in order. An event that does not decode is an `Err` in its place; a
/// length that runs past the end (or is not a length) ends the entry with
/// an `Err`, since nothing after it can be found.
pub fn decode_framed(bytes: &[u8]) -> Vec<Result<Event, BinaryError>> {
    frames(bytes)
        .into_iter()
        .map(|frame| decode(&bytes[frame?]))
        .collect()
}

/// The events of a packed entry as stored: where each one's encoding lies
/// in `bytes`, without decoding it ([`decode_framed`] decodes them). A
/// length that runs past the end (or is not a length) ends the list with an
/// `Err`.
pub fn frames(bytes: &[u8]) -> Vec<Result<std::ops::Range<usize>, BinaryError>> {
    let mut out = Vec::with_capacity(16);
    let mut r = Reader { input: bytes };
    while !r.input.is_empty() {
        let len = match r.read_long() {
            Ok(n) => usize::try_from(n).ok().filter(|n| *n <= r.input.len()),
            Err(_) => None,
        };
        let Some(len) = len else {
            out.push(Err(BinaryError(format!(
                "a packed entry's frame {} has no valid length",
                out.len()
            ))));
            break;
        };
        let start = bytes.len() - r.input.len();
        r.input = &r.input[len..];
        out.push(Ok(start..start + len));
    }
    out
}

/// The envelope's fields before `data`, read from an event's encoding
/// without its payload: what a forwarder of the stored bytes needs (the
/// Kafka mirror: topic, key, headers, timestamp).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head<'a> {
    pub id: &'a str,
    /// The type, which the `data` union's branch agrees with.
    pub event_type: &'static str,
    pub ts: i64,
    pub user_id: Option<&'a str>,
    pub project_id: Option<&'a str>,
    pub document_id: Option<&'a str>,
}

impl<'a> Head<'a> {
    pub fn category(&self) -> crate::Category {
        crate::Category::of_type(self.event_type).unwrap_or(crate::Category::System)
    }

    /// As [`Event::partition_key`].
    pub fn partition_key(&self) -> &'a str {
        crate::event::partition_key(
            self.event_type,
            self.category(),
            self.user_id,
            self.project_id,
            self.document_id,
        )
    }
}

/// Reads the [`Head`] of an event's encoding (the payload is not decoded:
/// a forwarder passes it on as it is).
pub fn decode_head(bytes: &[u8]) -> Result<Head<'_>, BinaryError> {
    let mut r = Reader { input: bytes };
    let id = r.read_str()?;
    let ty = r.read_str()?;
    let ts = r.read_long()?;
    let (user_id, project_id, document_id) =
        (r.read_opt_str()?, r.read_opt_str()?, r.read_opt_str()?);
    let branch = r.read_long()?;
    let event_type = usize::try_from(branch)
        .ok()
        .and_then(|b| TYPES.get(b))
        .ok_or_else(|| BinaryError(format!("union branch {branch} out of range")))?;
    if *event_type != ty {
        return Err(BinaryError(format!(
            "type {ty:?} does not match the data branch {event_type:?}"
        )));
    }
    Ok(Head {
        id,
        event_type,
        ts,
        user_id,
        project_id,
        document_id,
    })
}

/// Decodes one event written by [`encode`] (or any writer of the same schema
/// version). Trailing bytes are an error.
pub fn decode(bytes: &[u8]) -> Result<Event, BinaryError> {
    let (event, used) = decode_prefix(bytes)?;
    if used < bytes.len() {
        return Err(BinaryError(format!(
            "{} trailing bytes after the event",
            bytes.len() - used
        )));
    }
    Ok(event)
}

/// Decodes the event at the start of `bytes` (several are concatenated in
/// an Avro container's block): the event and how many bytes it took.
pub fn decode_prefix(bytes: &[u8]) -> Result<(Event, usize), BinaryError> {
    let mut r = Reader { input: bytes };
    let id = r.read_text()?;
    let ty = r.read_str()?;
    let ts = r.read_long()?;
    let user_id = r.read_opt_text()?;
    let project_id = r.read_opt_text()?;
    let document_id = r.read_opt_text()?;
    let branch = r.read_long()?;
    let branch_type = usize::try_from(branch)
        .ok()
        .and_then(|b| TYPES.get(b))
        .ok_or_else(|| BinaryError(format!("union branch {branch} out of range")))?;
    if *branch_type != ty {
        return Err(BinaryError(format!(
            "type {ty:?} does not match the data branch {branch_type:?}"
        )));
    }
    let data = Payload::deserialize_as(branch_type, &mut r)
        .ok_or_else(|| BinaryError(format!("unknown type {ty}")))??;
    let used = bytes.len() - r.input.len();
    Ok((
        Event {
            id,
            ts,
            user_id,
            project_id,
            document_id,
            data,
        },
        used,
    ))
}

struct Writer<'a> {
    out: &'a mut Vec<u8>,
}

impl<'a, 'b> ser::Serializer for &'b mut Writer<'a> {
    type Ok = ();
    type Error = BinaryError;
    type SerializeSeq = Seq<'a, 'b>;
    type SerializeTuple = Self;
    type SerializeTupleStruct = Self;
    type SerializeTupleVariant = ser::Impossible<(), BinaryError>;
    type SerializeMap = ser::Impossible<(), BinaryError>;
    type SerializeStruct = Self;
    type SerializeStructVariant = ser::Impossible<(), BinaryError>;

    fn serialize_bool(self, v: bool) -> Result<(), BinaryError> {
        self.out.push(u8::from(v));
        Ok(())
    }
    fn serialize_i8(self, v: i8) -> Result<(), BinaryError> {
        self.serialize_i64(v.into())
    }
    fn serialize_i16(self, v: i16) -> Result<(), BinaryError> {
        self.serialize_i64(v.into())
    }
    fn serialize_i32(self, v: i32) -> Result<(), BinaryError> {
        self.serialize_i64(v.into())
    }
    fn serialize_i64(self, v: i64) -> Result<(), BinaryError> {
        write_long(self.out, v);
        Ok(())
    }
    fn serialize_u8(self, v: u8) -> Result<(), BinaryError> {
        self.serialize_i64(v.into())
    }
    fn serialize_u16(self, v: u16) -> Result<(), BinaryError> {
        self.serialize_i64(v.into())
    }
    fn serialize_u32(self, v: u32) -> Result<(), BinaryError> {
        self.serialize_i64(v.into())
    }
    fn serialize_u64(self, v: u64) -> Result<(), BinaryError> {
        let v = i64::try_from(v).map_err(|_| BinaryError(format!("{v} exceeds a long")))?;
        self.serialize_i64(v)
    }
    fn serialize_f32(self, v: f32) -> Result<(), BinaryError> {
        self.out.extend_from_slice(&v.to_le_bytes());
        Ok(())
    }
    fn serialize_f64(self, v: f64) -> Result<(), BinaryError> {
        self.out.extend_from_slice(&v.to_le_bytes());
        Ok(())
    }
    fn serialize_char(self, v: char) -> Result<(), BinaryError> {
        self.serialize_str(v.encode_utf8(&mut [0; 4]))
    }
    fn serialize_str(self, v: &str) -> Result<(), BinaryError> {
        write_str(self.out, v);
        Ok(())
    }
    fn serialize_bytes(self, v: &[u8]) -> Result<(), BinaryError> {
        write_long(self.out, v.len() as i64);
        self.out.extend_from_slice(v);
        Ok(())
    }
    fn serialize_none(self) -> Result<(), BinaryError> {
        write_long(self.out, 0);
        Ok(())
    }
    fn serialize_some<T: ?Sized + Serialize>(self, value: &T) -> Result<(), BinaryError> {
        write_long(self.out, 1);
        value.serialize(self)
    }
    fn serialize_unit(self) -> Result<(), BinaryError> {
        Ok(())
    }
    fn serialize_unit_struct(self, _: &'static str) -> Result<(), BinaryError> {
        Ok(())
    }
    fn serialize_unit_variant(
        self,
        _: &'static str,
        index: u32,
        _: &'static str,
    ) -> Result<(), BinaryError> {
        write_long(self.out, index.into());
        Ok(())
    }
    fn serialize_newtype_struct<T: ?Sized + Serialize>(
        self,
        _: &'static str,
        value: &T,
    ) -> Result<(), BinaryError> {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: ?Sized + Serialize>(
        self,
        name: &'static str,
        _: u32,
        _: &'static str,
        _: &T,
    ) -> Result<(), BinaryError> {
        Err(BinaryError(format!(
            "{name}: data-carrying enums are not Avro"
        )))
    }
    fn serialize_seq(self, len: Option<usize>) -> Result<Seq<'a, 'b>, BinaryError> {
        let len = len.ok_or_else(|| BinaryError("sequence of unknown length".into()))?;
        if len > 0 {
            write_long(self.out, len as i64);
        }
        Ok(Seq { w: self, len })
    }
    fn serialize_tuple(self, _: usize) -> Result<Self, BinaryError> {
        Ok(self)
    }
    fn serialize_tuple_struct(self, _: &'static str, _: usize) -> Result<Self, BinaryError> {
        Ok(self)
    }
    fn serialize_tuple_variant(
        self,
        name: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleVariant, BinaryError> {
        Err(BinaryError(format!("{name}: tuple variants are not Avro")))
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Self::SerializeMap, BinaryError> {
        Err(BinaryError(
            "maps are not used by the payload schemas".into(),
        ))
    }
    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Self, BinaryError> {
        Ok(self)
    }
    fn serialize_struct_variant(
        self,
        name: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStructVariant, BinaryError> {
        Err(BinaryError(format!("{name}: struct variants are not Avro")))
    }
}

struct Seq<'a, 'b> {
    w: &'b mut Writer<'a>,
    len: usize,
}

impl ser::SerializeSeq for Seq<'_, '_> {
    type Ok = ();
    type Error = BinaryError;
    fn serialize_element<T: ?Sized + Serialize>(&mut self, value: &T) -> Result<(), BinaryError> {
        value.serialize(&mut *self.w)
    }
    fn end(self) -> Result<(), BinaryError> {
        // One block of `len` items, then the terminating empty block.
        let _ = self.len;
        write_long(self.w.out, 0);
        Ok(())
    }
}

impl ser::SerializeTuple for &mut Writer<'_> {
    type Ok = ();
    type Error = BinaryError;
    fn serialize_element<T: ?Sized + Serialize>(&mut self, value: &T) -> Result<(), BinaryError> {
        value.serialize(&mut **self)
    }
    fn end(self) -> Result<(), BinaryError> {
        Ok(())
    }
}

impl ser::SerializeTupleStruct for &mut Writer<'_> {
    type Ok = ();
    type Error = BinaryError;
    fn serialize_field<T: ?Sized + Serialize>(&mut self, value: &T) -> Result<(), BinaryError> {
        value.serialize(&mut **self)
    }
    fn end(self) -> Result<(), BinaryError> {
        Ok(())
    }
}

impl ser::SerializeStruct for &mut Writer<'_> {
    type Ok = ();
    type Error = BinaryError;
    fn serialize_field<T: ?Sized + Serialize>(
        &mut self,
        _: &'static str,
        value: &T,
    ) -> Result<(), BinaryError> {
        value.serialize(&mut **self)
    }
    /// Only `Option` fields are skipped (`skip_serializing_if = "Option::is_none"`):
    /// a skipped field is the union's null branch.
    fn skip_field(&mut self, _: &'static str) -> Result<(), BinaryError> {
        write_long(self.out, 0);
        Ok(())
    }
    fn end(self) -> Result<(), BinaryError> {
        Ok(())
    }
}

struct Reader<'de> {
    input: &'de [u8],
}

impl<'de> Reader<'de> {
    fn read_long(&mut self) -> Result<i64, BinaryError> {
        let mut z: u64 = 0;
        let mut shift = 0;
        loop {
            let (&b, rest) = self
                .input
                .split_first()
                .ok_or_else(|| BinaryError("truncated long".into()))?;
            self.input = rest;
            if shift >= 64 {
                return Err(BinaryError("long overflows 64 bits".into()));
            }
            z |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                break;
            }
            shift += 7;
        }
        Ok(((z >> 1) as i64) ^ -((z & 1) as i64))
    }

    fn read_bytes(&mut self) -> Result<&'de [u8], BinaryError> {
        let len = usize::try_from(self.read_long()?)
            .map_err(|_| BinaryError("negative length".into()))?;
        if len > self.input.len() {
            return Err(BinaryError("truncated string".into()));
        }
        let (b, rest) = self.input.split_at(len);
        self.input = rest;
        Ok(b)
    }

    fn read_str(&mut self) -> Result<&'de str, BinaryError> {
        std::str::from_utf8(self.read_bytes()?).map_err(|_| BinaryError("invalid UTF-8".into()))
    }

    fn read_text(&mut self) -> Result<crate::Text, BinaryError> {
        self.read_str().map(crate::Text::from)
    }

    fn read_opt_text(&mut self) -> Result<Option<crate::Text>, BinaryError> {
        Ok(self.read_opt_str()?.map(crate::Text::from))
    }

    fn read_opt_str(&mut self) -> Result<Option<&'de str>, BinaryError> {
        match self.read_long()? {
            0 => Ok(None),
            1 => self.read_str().map(Some),
            n => Err(BinaryError(format!("optional string: union branch {n}"))),
        }
    }

    fn read_fixed<const N: usize>(&mut self) -> Result<[u8; N], BinaryError> {
        if self.input.len() < N {
            return Err(BinaryError("truncated number".into()));
        }
        let (b, rest) = self.input.split_at(N);
        self.input = rest;
        let mut out = [0; N];
        out.copy_from_slice(b);
        Ok(out)
    }
}

impl<'de> de::Deserializer<'de> for &mut Reader<'de> {
    type Error = BinaryError;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, BinaryError> {
        Err(BinaryError("Avro binary is not self-describing".into()))
    }
    fn deserialize_bool<V: Visitor<'de>>(self, v: V) -> Result<V::Value, BinaryError> {
        let [b] = self.read_fixed::<1>()?;
        v.visit_bool(b != 0)
    }
    fn deserialize_i8<V: Visitor<'de>>(self, v: V) -> Result<V::Value, BinaryError> {
        self.deserialize_i64(v)
    }
    fn deserialize_i16<V: Visitor<'de>>(self, v: V) -> Result<V::Value, BinaryError> {
        self.deserialize_i64(v)
    }
    fn deserialize_i32<V: Visitor<'de>>(self, v: V) -> Result<V::Value, BinaryError> {
        self.deserialize_i64(v)
    }
    fn deserialize_i64<V: Visitor<'de>>(self, v: V) -> Result<V::Value, BinaryError> {
        v.visit_i64(self.read_long()?)
    }
    fn deserialize_u8<V: Visitor<'de>>(self, v: V) -> Result<V::Value, BinaryError> {
        self.deserialize_i64(v)
    }
    fn deserialize_u16<V: Visitor<'de>>(self, v: V) -> Result<V::Value, BinaryError> {
        self.deserialize_i64(v)
    }
    fn deserialize_u32<V: Visitor<'de>>(self, v: V) -> Result<V::Value, BinaryError> {
        self.deserialize_i64(v)
    }
    fn deserialize_u64<V: Visitor<'de>>(self, v: V) -> Result<V::Value, BinaryError> {
        self.deserialize_i64(v)
    }
    fn deserialize_f32<V: Visitor<'de>>(self, v: V) -> Result<V::Value, BinaryError> {
        v.visit_f32(f32::from_le_bytes(self.read_fixed::<4>()?))
    }
    fn deserialize_f64<V: Visitor<'de>>(self, v: V) -> Result<V::Value, BinaryError> {
        v.visit_f64(f64::from_le_bytes(self.read_fixed::<8>()?))
    }
    fn deserialize_char<V: Visitor<'de>>(self, v: V) -> Result<V::Value, BinaryError> {
        self.deserialize_str(v)
    }
    fn deserialize_str<V: Visitor<'de>>(self, v: V) -> Result<V::Value, BinaryError> {
        v.visit_borrowed_str(self.read_str()?)
    }
    fn deserialize_string<V: Visitor<'de>>(self, v: V) -> Result<V::Value, BinaryError> {
        self.deserialize_str(v)
    }
    fn deserialize_bytes<V: Visitor<'de>>(self, v: V) -> Result<V::Value, BinaryError> {
        v.visit_borrowed_bytes(self.read_bytes()?)
    }
    fn deserialize_byte_buf<V: Visitor<'de>>(self, v: V) -> Result<V::Value, BinaryError> {
        self.deserialize_bytes(v)
    }
    fn deserialize_option<V: Visitor<'de>>(self, v: V) -> Result<V::Value, BinaryError> {
        match self.read_long()? {
            0 => v.visit_none(),
            1 => v.visit_some(self),
            n => Err(BinaryError(format!("optional value: union branch {n}"))),
        }
    }
    fn deserialize_unit<V: Visitor<'de>>(self, v: V) -> Result<V::Value, BinaryError> {
        v.visit_unit()
    }
    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        v: V,
    ) -> Result<V::Value, BinaryError> {
        v.visit_unit()
    }
    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        v: V,
    ) -> Result<V::Value, BinaryError> {
        v.visit_newtype_struct(self)
    }
    fn deserialize_seq<V: Visitor<'de>>(self, v: V) -> Result<V::Value, BinaryError> {
        v.visit_seq(Blocks {
            r: self,
            left_in_block: 0,
            done: false,
        })
    }
    fn deserialize_tuple<V: Visitor<'de>>(self, len: usize, v: V) -> Result<V::Value, BinaryError> {
        v.visit_seq(Fields { r: self, left: len })
    }
    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        len: usize,
        v: V,
    ) -> Result<V::Value, BinaryError> {
        v.visit_seq(Fields { r: self, left: len })
    }
    fn deserialize_map<V: Visitor<'de>>(self, _: V) -> Result<V::Value, BinaryError> {
        Err(BinaryError(
            "maps are not used by the payload schemas".into(),
        ))
    }
    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        fields: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, BinaryError> {
        v.visit_seq(Fields {
            r: self,
            left: fields.len(),
        })
    }
    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _: &'static str,
        _: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, BinaryError> {
        let index = self.read_long()?;
        let index = u32::try_from(index).map_err(|_| BinaryError(format!("enum index {index}")))?;
        v.visit_enum(Symbol(index))
    }
    fn deserialize_identifier<V: Visitor<'de>>(self, _: V) -> Result<V::Value, BinaryError> {
        Err(BinaryError("identifiers are positional in Avro".into()))
    }
    fn deserialize_ignored_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, BinaryError> {
        Err(BinaryError("cannot skip a value of unknown type".into()))
    }
}

/// A record's fields, in schema order.
struct Fields<'a, 'de> {
    r: &'a mut Reader<'de>,
    left: usize,
}

impl<'de> de::SeqAccess<'de> for Fields<'_, 'de> {
    type Error = BinaryError;
    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, BinaryError> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        seed.deserialize(&mut *self.r).map(Some)
    }
    fn size_hint(&self) -> Option<usize> {
        Some(self.left)
    }
}

/// An array: blocks of items, ended by an empty block.
struct Blocks<'a, 'de> {
    r: &'a mut Reader<'de>,
    left_in_block: u64,
    done: bool,
}

impl<'de> de::SeqAccess<'de> for Blocks<'_, 'de> {
    type Error = BinaryError;
    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, BinaryError> {
        if self.done {
            return Ok(None);
        }
        if self.left_in_block == 0 {
            let count = self.r.read_long()?;
            if count == 0 {
                self.done = true;
                return Ok(None);
            }
            if count < 0 {
                // A negative count is followed by the block's size in bytes.
                self.r.read_long()?;
            }
            self.left_in_block = count.unsigned_abs();
        }
        self.left_in_block -= 1;
        seed.deserialize(&mut *self.r).map(Some)
    }
}

/// An enum symbol, by index.
struct Symbol(u32);

impl<'de> de::EnumAccess<'de> for Symbol {
    type Error = BinaryError;
    type Variant = Self;
    fn variant_seed<V: DeserializeSeed<'de>>(
        self,
        seed: V,
    ) -> Result<(V::Value, Self), BinaryError> {
        let index: de::value::U32Deserializer<BinaryError> = self.0.into_deserializer();
        Ok((seed.deserialize(index)?, self))
    }
}

impl<'de> de::VariantAccess<'de> for Symbol {
    type Error = BinaryError;
    fn unit_variant(self) -> Result<(), BinaryError> {
        Ok(())
    }
    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, _: T) -> Result<T::Value, BinaryError> {
        Err(BinaryError("data-carrying enums are not Avro".into()))
    }
    fn tuple_variant<V: Visitor<'de>>(self, _: usize, _: V) -> Result<V::Value, BinaryError> {
        Err(BinaryError("tuple variants are not Avro".into()))
    }
    fn struct_variant<V: Visitor<'de>>(
        self,
        _: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, BinaryError> {
        Err(BinaryError("struct variants are not Avro".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::avro::AvroSchemas;
    use crate::examples::examples;

    fn events() -> Vec<Event> {
        let mut out = Vec::new();
        for (ty, minimal, maximal) in examples() {
            for (i, data) in [minimal, maximal].into_iter().enumerate() {
                out.push(Event {
                    id: format!("e-{ty}-{i}").into(),
                    ts: 1_767_603_600_123 + i as i64,
                    user_id: (i == 1).then(|| "u1".to_owned()).map(Into::into),
                    project_id: Some("p1".into()),
                    document_id: (i == 1).then(|| "d1".to_owned()).map(Into::into),
                    data: Payload::from_json_value(ty, data).unwrap().unwrap(),
                });
            }
        }
        out
    }

    #[test]
    fn encodes_byte_for_byte_like_apache_avro_for_every_type() {
        let schemas = AvroSchemas::shared().unwrap();
        for e in events() {
            let reference = schemas.encode(&e).unwrap();
            assert_eq!(encode(&e).unwrap(), reference, "{}", e.event_type());
            assert_eq!(decode(&reference).unwrap(), e, "{}", e.event_type());
        }
    }

    #[test]
    fn rejects_truncated_and_trailing_bytes_and_branch_mismatch() {
        let e = &events()[0];
        let bytes = encode(e).unwrap();
        for cut in 0..bytes.len() {
            assert!(decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode(&longer).is_err());
    }

    #[test]
    fn a_packed_entry_holds_every_event_in_order_and_skips_one_that_does_not_decode() {
        let all = events();
        let mut blob = Vec::new();
        for e in &all {
            encode_framed_into(e, &mut blob).unwrap();
        }
        let back: Vec<Event> = decode_framed(&blob)
            .into_iter()
            .map(Result::unwrap)
            .collect();
        assert_eq!(back, all, "every event of every type, in order");

        // A frame whose bytes are not an event: only that one fails.
        let mut blob = Vec::new();
        encode_framed_into(&all[0], &mut blob).unwrap();
        write_long(&mut blob, 3);
        blob.extend_from_slice(b"bad");
        encode_framed_into(&all[1], &mut blob).unwrap();
        let back = decode_framed(&blob);
        assert_eq!(back.len(), 3);
        assert_eq!(back[0].as_ref().unwrap(), &all[0]);
        assert!(back[1].is_err());
        assert_eq!(back[2].as_ref().unwrap(), &all[1]);

        // A length past the end: the rest cannot be found, one error ends it.
        let mut blob = Vec::new();
        encode_framed_into(&all[0], &mut blob).unwrap();
        write_long(&mut blob, 1_000);
        blob.extend_from_slice(b"short");
        let back = decode_framed(&blob);
        assert_eq!(back.len(), 2);
        assert!(back[0].is_ok());
        let err = back[1].as_ref().unwrap_err().to_string();
        assert!(err.contains("frame 1 has no valid length"), "{err}");
        assert!(decode_framed(&[]).is_empty());
    }

    /// What a forwarder reads without the payload agrees with the full
    /// decode, for every type and for every frame of a packed entry.
    #[test]
    fn the_head_and_the_frames_agree_with_the_full_decode() {
        let all = events();
        let mut blob = Vec::new();
        for e in &all {
            encode_framed_into(e, &mut blob).unwrap();
        }
        let frames = frames(&blob);
        assert_eq!(frames.len(), all.len());
        for (e, frame) in all.iter().zip(frames) {
            let bytes = &blob[frame.unwrap()];
            assert_eq!(&decode(bytes).unwrap(), e);
            let head = decode_head(bytes).unwrap();
            assert_eq!(head.id, e.id);
            assert_eq!(head.event_type, e.event_type());
            assert_eq!(head.ts, e.ts);
            assert_eq!(head.user_id, e.user_id.as_deref());
            assert_eq!(head.project_id, e.project_id.as_deref());
            assert_eq!(head.document_id, e.document_id.as_deref());
            assert_eq!(head.partition_key(), e.partition_key());
        }
        // A type the branch does not agree with, and a truncated head.
        let bytes = encode(&all[0]).unwrap();
        assert!(decode_head(&bytes[..3]).is_err());
        let mut other = all[0].clone();
        other.data = all
            .iter()
            .find(|e| e.event_type() != all[0].event_type())
            .unwrap()
            .data
            .clone();
        let mut wrong = Vec::new();
        write_str(&mut wrong, &other.id);
        write_str(&mut wrong, all[0].event_type());
        let tail = encode(&other).unwrap();
        let skip = {
            let mut r = Reader { input: &tail };
            r.read_str().unwrap();
            r.read_str().unwrap();
            tail.len() - r.input.len()
        };
        wrong.extend_from_slice(&tail[skip..]);
        assert!(decode_head(&wrong).is_err(), "branch and type disagree");
    }

    #[test]
    fn zigzag_longs_round_trip_at_the_edges() {
        for v in [0, -1, 1, 63, -64, 64, i64::MAX, i64::MIN, 1_767_603_600_123] {
            let mut out = Vec::new();
            write_long(&mut out, v);
            assert_eq!(Reader { input: &out }.read_long().unwrap(), v);
            // The length prefix of a framed event is written by `long_bytes`.
            let (bytes, n) = long_bytes(v);
            assert_eq!(out, &bytes[..n], "{v}");
        }
    }
}
