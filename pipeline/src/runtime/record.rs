//! [`Record`]: an input event as the dataflow carries it between operators
//! and workers (arrival number plus the event, Avro-encoded across processes).

use schemas::Event;
use serde::{Deserialize, Serialize};

/// An input event as the dataflow carries it: with its arrival sequence
/// number, assigned by the input in the order events arrived. Operators that
/// emit live figures use it to answer "as of this event's arrival" no matter
/// in which order a batch is processed, so results never depend on batching.
///
/// The event is shared (`Arc`): several operators read the input stream, and
/// timely hands each extra reader a clone of every container — a refcount
/// bump, not a copy of every string.
///
/// Between processes of a cluster, timely serializes records with bincode,
/// which cannot carry `Event`'s JSON-shaped serde (optional fields are left
/// out, `data` is raw JSON); so a record travels as its arrival number and
/// the event's Avro binary encoding (the log's own format, ~50 ns).
/// Streams that cross workers carry `Record`s, never bare `Event`s.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub seq: u64,
    pub event: std::sync::Arc<Event>,
}

impl Record {
    /// A derived event on its way to another operator: it has no arrival
    /// number (`seq` = `u64::MAX` marks it).
    pub fn derived(event: Event) -> Record {
        Record {
            seq: u64::MAX,
            event: std::sync::Arc::new(event),
        }
    }

    /// Made by an operator, not read from the input.
    pub fn is_derived(&self) -> bool {
        self.seq == u64::MAX
    }
}

impl Serialize for Record {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let bytes = schemas::binary::encode(&self.event).map_err(serde::ser::Error::custom)?;
        (self.seq, serde_bytes_compat::Bytes(&bytes)).serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Record {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Record, D::Error> {
        let (seq, bytes): (u64, serde_bytes_compat::ByteBuf) =
            Deserialize::deserialize(deserializer)?;
        let event = schemas::binary::decode(&bytes.0).map_err(serde::de::Error::custom)?;
        Ok(Record {
            seq,
            event: std::sync::Arc::new(event),
        })
    }
}

/// Byte strings as one `bytes` value (bincode: length + raw bytes), not a
/// sequence of u8 values.
mod serde_bytes_compat {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub struct Bytes<'a>(pub &'a [u8]);

    impl Serialize for Bytes<'_> {
        fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            serializer.serialize_bytes(self.0)
        }
    }

    pub struct ByteBuf(pub Vec<u8>);

    impl<'de> Deserialize<'de> for ByteBuf {
        fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<ByteBuf, D::Error> {
            struct V;
            impl<'de> serde::de::Visitor<'de> for V {
                type Value = ByteBuf;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("bytes")
                }
                fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<ByteBuf, E> {
                    Ok(ByteBuf(v.to_vec()))
                }
                fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<ByteBuf, E> {
                    Ok(ByteBuf(v))
                }
                fn visit_seq<A: serde::de::SeqAccess<'de>>(
                    self,
                    mut seq: A,
                ) -> Result<ByteBuf, A::Error> {
                    let mut out = Vec::new();
                    while let Some(b) = seq.next_element::<u8>()? {
                        out.push(b);
                    }
                    Ok(ByteBuf(out))
                }
            }
            deserializer.deserialize_byte_buf(V)
        }
    }
}
