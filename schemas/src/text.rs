//! [`Text`]: the string type of the envelope's ids and of a metric's name
//! and dimensions.

/// A string kept inline up to 24 bytes: an event with short ids (most
/// users', projects' and documents') is one allocation, not five. It reads
/// as a `&str` (`Deref`), compares with `str` and `String`, and serializes
/// as a string, so the wire forms and checkpoints are unchanged.
pub type Text = compact_str::CompactString;
