//! What the log stores and hands out: where an entry lives ([`EntryRef`]),
//! the outcome of an append ([`Appended`]), an entry read back ([`LogEntry`]),
//! and the name of a category's stream ([`stream_name`]). Shared by both
//! backends, the queries and the readers.

use schemas::{Category, Classify, Event, Fault};
use std::borrow::Cow;
use std::sync::Arc;

/// Where one entry lives: its stream and its id (`<ms>-<seq>`, as Redis writes them).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EntryRef {
    pub stream: Arc<str>,
    pub id: Arc<str>,
}

/// The outcome of appending one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    /// Where the event is stored. For a duplicate the embedded log names the
    /// first copy; Redis does not record it (the id is empty).
    pub entry: EntryRef,
    /// The same id from the same app was already stored within the dedup
    /// window; nothing new was written.
    pub duplicate: bool,
}

/// One entry read from the log. An entry that does not decode is still
/// returned (as `Err` with the reason) so that it can be dead-lettered and
/// acknowledged instead of blocking its stream forever.
#[derive(Debug, Clone)]
pub struct LogEntry {
    pub entry: EntryRef,
    /// Shared: the embedded log hands out the copy it stores (see
    /// [`IdForm::Dataflow`]); the other backends decode a copy of their own.
    pub event: Result<Arc<Event>, Undecodable>,
    /// Whose form `event`'s id is in. Read the event through
    /// [`LogEntry::caller_event`] or [`LogEntry::dataflow_event`],
    /// which know it.
    pub id_form: IdForm,
    /// The caller namespace the event was ingested under (`app:<name>`,
    /// `user:<id>`, [`ANONYMOUS`]): the log stores an id once per namespace,
    /// so (namespace, id) is the event's identity. `None` when unknown (an
    /// entry written before namespaces were stored, a Kafka record without
    /// the `namespace` header).
    pub namespace: Option<Arc<str>>,
    /// Where the event sits in a packed entry (a Redis entry holds up to
    /// [`PACK_EVENTS`] events of one append); `None` for an entry of one
    /// event (the embedded log, Kafka records, Redis entries written before
    /// packing). The entry is acknowledged as a whole.
    pub part: Option<Part>,
}

/// The most events one Redis entry holds: an append stores a batch's events
/// of one stream in entries of up to this many (one XADD each), so Redis
/// does one stream insert, and a reader reads one entry, per this many
/// events (docs/ARCHITECTURE.md "The log").
pub const PACK_EVENTS: usize = 16;

/// An event's place in a packed entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Part {
    /// From 0, in append order.
    pub index: u32,
    /// Events in the entry.
    pub of: u32,
}

/// The form of a stored event's id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdForm {
    /// As the caller sent it (Redis, Kafka).
    Caller,
    /// As the dataflow knows it, [`dataflow_id`]: the embedded log stores
    /// events in this form, so that the log and the dataflow reading it
    /// share one copy of each event (no copy per read, half the memory
    /// held until the watermark passes an event).
    Dataflow,
}

impl LogEntry {
    /// The event with the id its caller gave it: what the mirror writes and
    /// a query returns. A copy only for an event stored in the dataflow's
    /// form under a namespace that prefixes it.
    pub fn caller_event(&self) -> Result<Cow<'_, Event>, &Undecodable> {
        let event = self.event.as_ref()?;
        if self.id_form == IdForm::Dataflow
            && let Some(id) = caller_id(self.namespace.as_deref(), &event.id)
        {
            let mut e = Event::clone(event);
            e.id = id.into();
            return Ok(Cow::Owned(e));
        }
        Ok(Cow::Borrowed(&**event))
    }

    /// The event with the id the dataflow knows it by ([`dataflow_id`]).
    /// No copy for an event already in that form, or one this entry alone
    /// holds (a decoded one: only its id is replaced).
    pub fn dataflow_event(
        event: Arc<Event>,
        id_form: IdForm,
        namespace: Option<&str>,
    ) -> Arc<Event> {
        let mut event = event;
        if id_form == IdForm::Caller
            && let Some(id) = dataflow_id(namespace, &event.id)
        {
            Arc::make_mut(&mut event).id = id.into();
        }
        event
    }

    /// Whether no event of the entry comes after this one.
    pub fn ends_entry(&self) -> bool {
        self.part.is_none_or(|p| p.index + 1 >= p.of)
    }

    /// The event's place in its entry (0 for an entry of one event).
    pub fn index(&self) -> u32 {
        self.part.map_or(0, |p| p.index)
    }

    /// How many entries `batch` (a read, each entry's events together)
    /// holds.
    pub fn entries_in(batch: &[LogEntry]) -> usize {
        batch.iter().filter(|e| e.ends_entry()).count()
    }
}

/// An entry's event as a forwarding reader (the Kafka mirror) takes it:
/// from Redis, as stored (the Avro binary of the envelope, whose payload
/// nobody decodes: it is passed on as it is); from the embedded log, the
/// event itself.
#[derive(Debug, Clone)]
pub enum ForwardEntry {
    Decoded(LogEntry),
    Stored(StoredEvent),
}

/// An event as Redis stores it.
#[derive(Debug, Clone)]
pub struct StoredEvent {
    pub entry: EntryRef,
    pub namespace: Option<Arc<str>>,
    pub part: Option<Part>,
    /// The entry's stored bytes and where this event's encoding lies in
    /// them (`schemas::binary`, the caller's id), or why the entry holds
    /// none.
    pub avro: Result<(Arc<[u8]>, std::ops::Range<usize>), Undecodable>,
}

impl StoredEvent {
    /// The event's encoding.
    pub fn bytes(&self) -> Result<&[u8], &Undecodable> {
        let (buf, range) = self.avro.as_ref()?;
        Ok(&buf[range.clone()])
    }
}

impl ForwardEntry {
    pub fn entry(&self) -> &EntryRef {
        match self {
            ForwardEntry::Decoded(e) => &e.entry,
            ForwardEntry::Stored(e) => &e.entry,
        }
    }

    pub fn namespace(&self) -> Option<&str> {
        match self {
            ForwardEntry::Decoded(e) => e.namespace.as_deref(),
            ForwardEntry::Stored(e) => e.namespace.as_deref(),
        }
    }

    fn part(&self) -> Option<Part> {
        match self {
            ForwardEntry::Decoded(e) => e.part,
            ForwardEntry::Stored(e) => e.part,
        }
    }

    /// The event's place in its entry (0 for an entry of one event).
    pub fn index(&self) -> u32 {
        self.part().map_or(0, |p| p.index)
    }

    /// Whether this is the last event of its entry.
    pub fn ends_entry(&self) -> bool {
        self.part().is_none_or(|p| p.index + 1 >= p.of)
    }

    /// How many entries `batch` holds (as [`LogEntry::entries_in`]).
    pub fn entries_in(batch: &[ForwardEntry]) -> usize {
        batch.iter().filter(|e| e.ends_entry()).count()
    }

    /// The whole event with its caller's id (decoded on demand: for the
    /// rare record that needs more than the stored bytes, a dead letter).
    pub fn caller_event(&self) -> Result<Cow<'_, Event>, Undecodable> {
        match self {
            ForwardEntry::Decoded(e) => e.caller_event().map_err(Clone::clone),
            ForwardEntry::Stored(e) => {
                let bytes = e.bytes().map_err(Clone::clone)?;
                schemas::binary::decode(bytes)
                    .map(Cow::Owned)
                    .map_err(|err| Undecodable(format!("entry does not decode: {err}")))
            }
        }
    }
}

/// How many Redis entries to read to take about `events` events: an
/// eighth, so at most twice `events` from packed entries, and still
/// `events / 8` entries of one event each from older ones.
pub(crate) fn packed_entries_for(events: usize) -> usize {
    events.div_ceil(PACK_EVENTS / 2).max(1)
}

/// The namespace of every caller when authentication is off.
pub const ANONYMOUS: &str = "anonymous";

/// The id the dataflow knows an event by, so that it agrees with the log on
/// what a duplicate is: two callers may use the same id for different
/// events. `<namespace>/<id>` for an authenticated caller, with any `%` and
/// `/` of the namespace written `%25` and `%2F`, so the first `/` ends it:
/// `alice` sending `phone/e-42` and `alice/phone` sending `e-42` are two
/// events (they were one id, and the dataflow dropped the second as a copy
/// of the first). A namespace without either character is written as it
/// is, so ids (and the derived ids made from them) stay what they were. The
/// id itself when the namespace is [`ANONYMOUS`] (auth off: one namespace)
/// or unknown. `None`: keep the id as it is.
pub fn dataflow_id(namespace: Option<&str>, id: &str) -> Option<String> {
    match namespace {
        Some(ns) if ns != ANONYMOUS => {
            // By hand: `format!` costs more than the copy, once per event.
            let mut s = String::with_capacity(ns.len() + 1 + id.len());
            push_namespace(&mut s, ns);
            s.push('/');
            s.push_str(id);
            Some(s)
        }
        _ => None,
    }
}

/// `ns` with `%` and `/` escaped (see [`dataflow_id`]).
fn push_namespace(s: &mut String, ns: &str) {
    if !ns.contains(['%', '/']) {
        s.push_str(ns);
        return;
    }
    for c in ns.chars() {
        match c {
            '%' => s.push_str("%25"),
            '/' => s.push_str("%2F"),
            c => s.push(c),
        }
    }
}

/// The caller's id within a dataflow id made by [`dataflow_id`] with the
/// same namespace; `None` when `dataflow_id` kept the id as it was.
fn caller_id<'a>(namespace: Option<&str>, id: &'a str) -> Option<&'a str> {
    match namespace {
        Some(ns) if ns != ANONYMOUS => {
            if !ns.contains(['%', '/']) {
                return id.strip_prefix(ns).and_then(|rest| rest.strip_prefix('/'));
            }
            let mut prefix = String::with_capacity(ns.len() + 8);
            push_namespace(&mut prefix, ns);
            id.strip_prefix(prefix.as_str())
                .and_then(|rest| rest.strip_prefix('/'))
        }
        _ => None,
    }
}

/// Why a stored entry is not an event (missing field, bad Avro). Kept as data
/// with its entry, so the reader dead-letters and acknowledges it; serialises
/// as the bare reason string.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize)]
#[error("{0}")]
#[serde(transparent)]
pub struct Undecodable(pub String);

impl Classify for Undecodable {
    /// Whoever wrote the entry wrote something that is not an event: reading
    /// it again will not help.
    fn fault(&self) -> Fault {
        Fault::Caller
    }
}

/// The stream name of a category's shard under `prefix`
/// (`inkstream:events:writing:3`).
pub fn stream_name(prefix: &str, category: Category, shard: u32) -> String {
    format!("{prefix}:events:{}:{shard}", category.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str, id_form: IdForm, namespace: Option<&str>) -> LogEntry {
        LogEntry {
            entry: EntryRef {
                stream: "s".into(),
                id: "1-0".into(),
            },
            event: Ok(Arc::new(Event {
                id: id.into(),
                ts: 1,
                user_id: Some("u".into()),
                project_id: None,
                document_id: None,
                data: schemas::Payload::example("writing.keystroke").unwrap(),
            })),
            id_form,
            namespace: namespace.map(Arc::from),
            part: None,
        }
    }

    #[test]
    fn either_form_gives_the_callers_id_and_the_dataflows() {
        for (ns, caller, dataflow) in [
            (Some("app:a"), "e1", "app:a/e1"),
            // A caller's id that looks like a dataflow id is still its own.
            (Some("app:a"), "app:a/e1", "app:a/app:a/e1"),
            (Some(ANONYMOUS), "e1", "e1"),
            (None, "e1", "e1"),
        ] {
            for (form, stored) in [(IdForm::Caller, caller), (IdForm::Dataflow, dataflow)] {
                let e = entry(stored, form, ns);
                assert_eq!(e.caller_event().unwrap().id, caller, "{ns:?} {form:?}");
                let shared = e.event.clone().unwrap();
                let d = LogEntry::dataflow_event(shared.clone(), form, ns);
                assert_eq!(d.id, dataflow, "{ns:?} {form:?}");
                // In the dataflow's form already: the same copy, not another.
                if form == IdForm::Dataflow || caller == dataflow {
                    assert!(Arc::ptr_eq(&d, &shared));
                }
            }
        }
    }

    /// Namespaces that end where another's id goes on do not make one id:
    /// `alice` + `phone/e-42` and `alice/phone` + `e-42` were both
    /// `alice/phone/e-42`, and the dataflow dropped the second caller's
    /// event as a duplicate of the first's.
    #[test]
    fn two_callers_never_share_a_dataflow_id() {
        let pairs = [
            ("alice", "phone/e-42"),
            ("alice/phone", "e-42"),
            ("alice%2Fphone", "e-42"),
            ("a%", "b"),
            ("a", "%/b"),
        ];
        let ids: Vec<String> = pairs
            .iter()
            .map(|(ns, id)| dataflow_id(Some(ns), id).unwrap())
            .collect();
        let distinct: std::collections::HashSet<&String> = ids.iter().collect();
        assert_eq!(distinct.len(), pairs.len(), "{ids:?}");
        for ((ns, id), made) in pairs.iter().zip(&ids) {
            assert_eq!(caller_id(Some(ns), made), Some(*id), "{made}");
        }
        // A namespace without `%` or `/` keeps the form ids always had.
        assert_eq!(
            dataflow_id(Some("app:bench"), "e-1").unwrap(),
            "app:bench/e-1"
        );
        assert_eq!(dataflow_id(Some(ANONYMOUS), "e-1"), None);
    }

    #[test]
    fn a_decoded_event_gets_its_dataflow_id_in_place() {
        let e = entry("e1", IdForm::Caller, Some("user:7"));
        let event = e.event.unwrap();
        let at = Arc::as_ptr(&event);
        let d = LogEntry::dataflow_event(event, IdForm::Caller, Some("user:7"));
        assert_eq!(d.id, "user:7/e1");
        assert_eq!(Arc::as_ptr(&d), at, "held by the entry alone: not copied");
    }
}
