//! The notification policy: a pure, deterministic core (no tokio, no I/O, an
//! explicit `now` in ms since the Unix epoch on every call).
//!
//! It lives here, next to the channels, and not in `pipeline/src/operators/`,
//! because it runs on the **wall clock** of the recipient (quiet hours,
//! digests at a local hour, a one-hour mute), not on the dataflow's event
//! time: replaying yesterday's events must not wake anybody at 3 a.m. It is
//! a stateful stage *after* the dataflow, owned by the notifier task.
//!
//! | priority | channels | quiet hours | auto-mute | flow hold |
//! |---|---|---|---|---|
//! | CRITICAL | `channels.critical` (default in-app, email, SMS, webhook), at once; email failed or no address → SMS | bypassed | bypassed | bypassed |
//! | HIGH | `channels.high` (default in-app + email), at once | held, one digest when the window opens | yes | in-app/email held |
//! | MEDIUM | `channels.medium` (default in-app): in-app at once; email, SMS and webhook batched for `batch_window` | held | yes | in-app/email held |
//! | LOW | the digest (`digest_channels`, default in-app + email) | digest waits for the window | yes | in-app/email held |
//!
//! Auto-mute: the first alert of a `(user, dedup_key)` opens a window of
//! `mute_window`; similar alerts inside it are suppressed and counted, and
//! the next delivery to that user (any channel) carries the count
//! (`suppressed_similar`) and says so in its text.
//!
//! State is serde-serializable per user so the runner can persist it (Redis)
//! and survive a restart; [`Policy::take_dirty`] names the users to save.

use schemas::payload::Priority;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

/// A delivery channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Channel {
    InApp,
    Email,
    Sms,
    Webhook,
}

impl Channel {
    pub const ALL: [Channel; 4] = [
        Channel::InApp,
        Channel::Email,
        Channel::Sms,
        Channel::Webhook,
    ];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::InApp => "in_app",
            Channel::Email => "email",
            Channel::Sms => "sms",
            Channel::Webhook => "webhook",
        }
    }

    /// In-app and email wait while the user is in flow; SMS and webhooks do not.
    fn held_in_flow(self) -> bool {
        matches!(self, Channel::InApp | Channel::Email)
    }
}

/// The metric label of a priority.
pub fn priority_label(p: Priority) -> &'static str {
    match p {
        Priority::Critical => "critical",
        Priority::High => "high",
        Priority::Medium => "medium",
        Priority::Low => "low",
    }
}

/// A local time of day, `"HH:MM"` on the wire, minutes since midnight inside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalTime(pub u16);

impl LocalTime {
    pub fn hm(h: u16, m: u16) -> LocalTime {
        LocalTime(h * 60 + m)
    }

    /// Exactly `HH:MM` (the API document states it as a pattern).
    pub fn parse(s: &str) -> Option<LocalTime> {
        let b = s.as_bytes();
        if b.len() != 5
            || b[2] != b':'
            || !b
                .iter()
                .enumerate()
                .all(|(i, c)| i == 2 || c.is_ascii_digit())
        {
            return None;
        }
        let (h, m) = (
            u16::from(b[0] - b'0') * 10 + u16::from(b[1] - b'0'),
            u16::from(b[3] - b'0') * 10 + u16::from(b[4] - b'0'),
        );
        (h < 24 && m < 60).then_some(LocalTime(h * 60 + m))
    }
}

impl Serialize for LocalTime {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{:02}:{:02}", self.0 / 60, self.0 % 60))
    }
}

impl<'de> Deserialize<'de> for LocalTime {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<LocalTime, D::Error> {
        let s = String::deserialize(d)?;
        LocalTime::parse(&s)
            .ok_or_else(|| serde::de::Error::custom(format!("expected \"HH:MM\", got {s:?}")))
    }
}

/// Quiet hours in the user's time zone: `[start, end)`, wrapping midnight
/// when `start > end`; `start == end` means none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuietHours {
    pub start: LocalTime,
    pub end: LocalTime,
}

impl QuietHours {
    fn contains(&self, minute: u16) -> bool {
        let (s, e) = (self.start.0, self.end.0);
        match s.cmp(&e) {
            std::cmp::Ordering::Equal => false,
            std::cmp::Ordering::Less => s <= minute && minute < e,
            std::cmp::Ordering::Greater => minute >= s || minute < e,
        }
    }
}

/// How often LOW notifications are sent as a digest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DigestFrequency {
    /// At minute 0 of every local hour.
    Hourly,
    /// Every day at `digest_hour`.
    Daily,
    /// Every `digest_weekday` at `digest_hour`.
    Weekly,
}

/// Channels per priority (LOW always goes to the digest).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PriorityChannels {
    /// Default: in-app, email, SMS, webhook.
    pub critical: Vec<Channel>,
    /// Default: in-app, email.
    pub high: Vec<Channel>,
    /// Default: in-app.
    pub medium: Vec<Channel>,
}

impl Default for PriorityChannels {
    fn default() -> Self {
        PriorityChannels {
            critical: Channel::ALL.to_vec(),
            high: vec![Channel::InApp, Channel::Email],
            medium: vec![Channel::InApp],
        }
    }
}

/// A user's notification preferences (the config's `[notifications.defaults]`
/// for users who never set theirs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Preferences {
    /// IANA time zone name (default `UTC`).
    pub timezone: String,
    /// Default 22:00–08:00; `null` = none.
    pub quiet_hours: Option<QuietHours>,
    pub channels: PriorityChannels,
    /// Default `daily`.
    pub digest: DigestFrequency,
    /// Local hour of daily and weekly digests, 0–23 (default 8).
    pub digest_hour: u8,
    /// Weekday of weekly digests, 1 = Monday … 7 = Sunday (default 1).
    pub digest_weekday: u8,
    /// Where digests go (default in-app + email).
    pub digest_channels: Vec<Channel>,
    /// Email address; none = no email.
    pub email: Option<String>,
    /// Phone number (E.164); none = no SMS.
    pub phone: Option<String>,
    /// The user's own webhook; none = the configured global webhooks.
    pub webhook_url: Option<String>,
    /// Hold non-critical in-app and email while in FLOW_STATE (default true).
    pub flow_hold: bool,
}

impl Default for Preferences {
    fn default() -> Self {
        Preferences {
            timezone: "UTC".into(),
            quiet_hours: Some(QuietHours {
                start: LocalTime::hm(22, 0),
                end: LocalTime::hm(8, 0),
            }),
            channels: PriorityChannels::default(),
            digest: DigestFrequency::Daily,
            digest_hour: 8,
            digest_weekday: 1,
            digest_channels: vec![Channel::InApp, Channel::Email],
            email: None,
            phone: None,
            webhook_url: None,
            flow_hold: true,
        }
    }
}

impl Preferences {
    /// Checks what serde cannot: the time zone exists, hours are in range.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if jiff::tz::TimeZone::get(&self.timezone).is_err() {
            return Err(("timezone", format!("unknown time zone {:?}", self.timezone)));
        }
        if self.digest_hour > 23 {
            return Err(("digest_hour", "expected 0..=23".into()));
        }
        if !(1..=7).contains(&self.digest_weekday) {
            return Err(("digest_weekday", "expected 1 (Monday) ..= 7".into()));
        }
        Ok(())
    }

    fn tz(&self) -> jiff::tz::TimeZone {
        // An invalid zone cannot be stored (validate); UTC is the safe floor.
        jiff::tz::TimeZone::get(&self.timezone).unwrap_or(jiff::tz::TimeZone::UTC)
    }

    fn local(&self, now_ms: i64) -> Option<jiff::ZonedDateTime> {
        jiff::Timestamp::from_millisecond(now_ms)
            .ok()
            .map(|t| t.to_zoned_datetime(self.tz()))
    }

    /// Whether `now` is inside the user's quiet hours.
    pub fn is_quiet(&self, now_ms: i64) -> bool {
        match (&self.quiet_hours, self.local(now_ms)) {
            (Some(q), Some(z)) => q.contains(z.hour() as u16 * 60 + z.minute() as u16),
            _ => false,
        }
    }

    /// The first digest time strictly after `now`.
    pub fn next_digest_after(&self, now_ms: i64) -> i64 {
        let fallback = now_ms + 3_600_000;
        let Some(z) = self.local(now_ms) else {
            return fallback;
        };
        let tz = self.tz();
        let at = |date: jiff::civil::Date, hour: i8| -> Option<i64> {
            date.at(hour, 0, 0, 0)
                .to_zoned_datetime(tz.clone())
                .ok()
                .map(|z| z.timestamp().as_millisecond())
        };
        let result = match self.digest {
            DigestFrequency::Hourly => at(z.date(), z.hour())
                .map(|t| t + 3_600_000)
                .filter(|t| *t > now_ms),
            DigestFrequency::Daily | DigestFrequency::Weekly => {
                let mut date = z.date();
                let mut found = None;
                for _ in 0..9 {
                    let weekday_ok = self.digest == DigestFrequency::Daily
                        || date.weekday().to_monday_one_offset() as u8 == self.digest_weekday;
                    if weekday_ok
                        && let Some(t) = at(date, self.digest_hour as i8)
                        && t > now_ms
                    {
                        found = Some(t);
                        break;
                    }
                    match date.tomorrow() {
                        Ok(d) => date = d,
                        Err(_) => break,
                    }
                }
                found
            }
        };
        result.unwrap_or(fallback)
    }
}

/// An alert to route (from `analytics.alert_triggered`, or a custom send).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    /// Id of the alert event: the idempotency root of its deliveries.
    pub id: String,
    pub rule: Option<String>,
    pub priority: Priority,
    /// A user id (addresses such as `role:admin` are resolved before).
    pub recipient: String,
    pub dedup_key: String,
    pub title: String,
    pub body: String,
}

/// One notification inside a delivery.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Item {
    pub id: String,
    pub rule: Option<String>,
    pub priority: Priority,
    pub title: String,
    pub body: String,
    /// When the policy received it (ms).
    pub at_ms: i64,
}

/// Why a delivery carries what it carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryKind {
    /// One alert, sent at once.
    Immediate,
    /// MEDIUM alerts of one batching window.
    Batch,
    /// Held by quiet hours or flow, released together.
    Held,
    /// The hourly/daily/weekly digest.
    Digest,
    /// An SMS sent because the email of a CRITICAL alert failed.
    Fallback,
}

/// What the runner must send: one message on one channel to one user.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Delivery {
    /// Deterministic idempotency key (same alert → same id after a restart).
    pub id: String,
    pub recipient: String,
    pub channel: Channel,
    /// The highest priority of its items.
    pub priority: Priority,
    pub kind: DeliveryKind,
    pub items: Vec<Item>,
    /// Similar alerts suppressed by auto-mute since the previous delivery.
    pub suppressed_similar: u64,
    /// Channel to try when this one fails for good (CRITICAL email → SMS).
    pub fallback: Option<Channel>,
}

impl Delivery {
    /// The subject / title line.
    pub fn title(&self) -> String {
        match (self.kind, self.items.as_slice()) {
            (DeliveryKind::Immediate | DeliveryKind::Fallback, [one]) => one.title.clone(),
            (DeliveryKind::Digest, items) => format!("Your digest: {} notifications", items.len()),
            (_, [one]) => one.title.clone(),
            (_, items) => format!("{} notifications", items.len()),
        }
    }

    /// The plain-text body (items, then the suppressed count).
    pub fn text(&self) -> String {
        let mut out = String::new();
        if let [one] = self.items.as_slice()
            && self.kind != DeliveryKind::Digest
        {
            out.push_str(&one.body);
        } else {
            for i in &self.items {
                out.push_str(&format!("- {}: {}\n", i.title, i.body));
            }
        }
        if self.suppressed_similar > 0 {
            out.push_str(&format!(
                "\n({} similar notifications were suppressed.)",
                self.suppressed_similar
            ));
        }
        out.trim_end().to_owned()
    }
}

/// Bounded outcomes of the policy, counted by the runner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    SuppressedMuted,
    HeldQuietHours,
    HeldFlow,
    Digested,
    Failed,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::SuppressedMuted => "suppressed_muted",
            Outcome::HeldQuietHours => "held_quiet_hours",
            Outcome::HeldFlow => "held_flow",
            Outcome::Digested => "digested",
            Outcome::Failed => "failed",
        }
    }
}

/// One count for `inkstream_notifications_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    pub priority: Priority,
    /// A channel label, or `digest`.
    pub channel: &'static str,
    pub outcome: Outcome,
}

/// Settings of the policy that are not per user.
#[derive(Debug, Clone)]
pub struct PolicyConfig {
    /// How long similar alerts are suppressed, in ms (default 1 h).
    pub mute_window_ms: i64,
    /// MEDIUM batching window, in ms (default 60 s).
    pub batch_window_ms: i64,
    /// Whether flow hold is on at all (each user can still turn it off).
    pub flow_hold: bool,
    /// Most items one user's digest, quiet-hours hold, batch or flow hold
    /// may queue (default 1000); beyond it the oldest is dropped and
    /// counted `failed`.
    pub max_queued_per_user: usize,
    /// Longest hold for one flow stretch, in ms (default 2 h): a lost
    /// pause event must not hold notifications forever.
    pub flow_hold_max_ms: i64,
    /// Channels with a configured backend (in-app always; webhook also
    /// when the user has a `webhook_url`).
    pub available: Vec<Channel>,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            mute_window_ms: 3_600_000,
            batch_window_ms: 60_000,
            flow_hold: true,
            flow_hold_max_ms: 2 * 3_600_000,
            max_queued_per_user: 1000,
            available: Channel::ALL.to_vec(),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Mute {
    until_ms: i64,
}

/// An item held by quiet hours, with the channels it was meant for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Held {
    channels: Vec<Channel>,
    item: Item,
}

/// Everything the policy remembers about one user (persisted as JSON).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UserState {
    mutes: BTreeMap<String, Mute>,
    /// Suppressed since the last delivery: reported in the next one.
    suppressed: u64,
    in_flow: bool,
    /// When the current flow stretch began (bounds the hold).
    #[serde(default)]
    flow_since_ms: i64,
    quiet_held: Vec<Held>,
    flow_held: BTreeMap<Channel, Vec<Item>>,
    batch: Vec<Item>,
    batch_deadline_ms: Option<i64>,
    digest: Vec<Item>,
    next_digest_ms: Option<i64>,
}

impl UserState {
    /// Items waiting (quiet, flow, batch, digest): the pending gauge's share.
    pub fn waiting(&self) -> usize {
        self.quiet_held.len()
            + self.flow_held.values().map(Vec::len).sum::<usize>()
            + self.batch.len()
            + self.digest.len()
    }

    fn is_empty(&self) -> bool {
        self.waiting() == 0 && self.mutes.is_empty() && self.suppressed == 0 && !self.in_flow
    }
}

/// The policy core: per-user state, fed alerts, flow changes and ticks.
#[derive(Debug, Default)]
pub struct Policy {
    config: PolicyConfig,
    users: HashMap<String, UserState>,
    dirty: HashSet<String>,
    tallies: Vec<Tally>,
}

fn hash_id(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0u8]);
    }
    let d = h.finalize();
    let mut s = String::from("n-");
    for b in &d[..12] {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

impl Policy {
    pub fn new(config: PolicyConfig) -> Policy {
        Policy {
            config,
            ..Policy::default()
        }
    }

    /// Restores a user's persisted state.
    pub fn restore(&mut self, user: String, state: UserState) {
        self.users.insert(user, state);
    }

    pub fn user(&self, user: &str) -> Option<&UserState> {
        self.users.get(user)
    }

    /// Users whose state changed since the last call (save them), with
    /// their state (`None` = forget it).
    pub fn take_dirty(&mut self) -> Vec<(String, Option<UserState>)> {
        let dirty: Vec<String> = self.dirty.drain().collect();
        dirty
            .into_iter()
            .map(|u| {
                let s = self.users.get(&u).filter(|s| !s.is_empty()).cloned();
                (u, s)
            })
            .collect()
    }

    /// Counts since the last call.
    pub fn take_tallies(&mut self) -> Vec<Tally> {
        std::mem::take(&mut self.tallies)
    }

    /// Items waiting across users.
    pub fn waiting(&self) -> usize {
        self.users.values().map(UserState::waiting).sum()
    }

    fn tally(&mut self, priority: Priority, channel: &'static str, outcome: Outcome) {
        self.tallies.push(Tally {
            priority,
            channel,
            outcome,
        });
    }

    /// The user's flow state changed: `true` = entered FLOW_STATE, `false` =
    /// paused (or the session ended). Leaving releases what flow held.
    pub fn on_flow(
        &mut self,
        user: &str,
        in_flow: bool,
        prefs: &Preferences,
        now_ms: i64,
    ) -> Vec<Delivery> {
        let st = self.users.entry(user.to_owned()).or_default();
        if st.in_flow == in_flow {
            return Vec::new();
        }
        st.in_flow = in_flow;
        st.flow_since_ms = now_ms;
        self.dirty.insert(user.to_owned());
        let mut out = Vec::new();
        if !in_flow {
            self.release(user, prefs, now_ms, &mut out);
        }
        out
    }

    /// Routes one alert. Returns what to send now.
    pub fn on_alert(&mut self, alert: &Alert, prefs: &Preferences, now_ms: i64) -> Vec<Delivery> {
        let user = alert.recipient.clone();
        self.dirty.insert(user.clone());
        let item = Item {
            id: alert.id.clone(),
            rule: alert.rule.clone(),
            priority: alert.priority,
            title: alert.title.clone(),
            body: alert.body.clone(),
            at_ms: now_ms,
        };
        let mut out = Vec::new();
        if alert.priority == Priority::Critical {
            // Every channel at once: no mute, no quiet hours, no flow hold.
            let channels = self.critical_channels(prefs);
            let suppressed = self.take_suppressed(&user);
            for ch in channels.iter().copied() {
                let fallback = (ch == Channel::Email
                    && self.reachable(Channel::Sms, prefs)
                    && !channels.contains(&Channel::Sms))
                .then_some(Channel::Sms);
                out.push(Delivery {
                    id: hash_id(&[&alert.id, ch.as_str()]),
                    recipient: user.clone(),
                    channel: ch,
                    priority: alert.priority,
                    kind: DeliveryKind::Immediate,
                    items: vec![item.clone()],
                    suppressed_similar: suppressed,
                    fallback,
                });
            }
            return out;
        }
        let mute_window = self.config.mute_window_ms;
        let st = self.users.entry(user.clone()).or_default();
        match st.mutes.get(&alert.dedup_key) {
            Some(m) if m.until_ms > now_ms => {
                st.suppressed += 1;
                let ch = match alert.priority {
                    Priority::Low => "digest",
                    _ => self
                        .channels_for(alert.priority, prefs)
                        .first()
                        .map(|c| c.as_str())
                        .unwrap_or("in_app"),
                };
                self.tally(alert.priority, ch, Outcome::SuppressedMuted);
                return out;
            }
            _ => {
                st.mutes.insert(
                    alert.dedup_key.clone(),
                    Mute {
                        until_ms: now_ms + mute_window,
                    },
                );
            }
        }
        if alert.priority == Priority::Low {
            st.digest.push(item);
            // Scheduled now, so a digest falls due even if no tick runs
            // in between (a restart across the digest hour).
            st.next_digest_ms
                .get_or_insert_with(|| prefs.next_digest_after(now_ms));
            let dropped = trim_front(&mut st.digest, self.config.max_queued_per_user);
            self.tally(Priority::Low, "digest", Outcome::Digested);
            self.count_dropped(dropped, Priority::Low, "digest");
            return out;
        }
        let channels = self.channels_for(alert.priority, prefs);
        if prefs.is_quiet(now_ms) {
            let st = self.users.entry(user.clone()).or_default();
            st.quiet_held.push(Held {
                channels: channels.clone(),
                item,
            });
            let dropped = trim_front(&mut st.quiet_held, self.config.max_queued_per_user);
            self.count_dropped(dropped, alert.priority, "in_app");
            for c in channels {
                self.tally(alert.priority, c.as_str(), Outcome::HeldQuietHours);
            }
            return out;
        }
        let channels = if alert.priority == Priority::Medium {
            // The batching window protects inboxes (email, SMS, webhook);
            // in-app goes at once: a co-editor expects an @mention now.
            let (now_channels, inboxes): (Vec<Channel>, Vec<Channel>) =
                channels.into_iter().partition(|c| !batched(*c));
            if let Some(first) = inboxes.first() {
                let batch_window = self.config.batch_window_ms;
                let st = self.users.entry(user.clone()).or_default();
                st.batch.push(item.clone());
                let dropped = trim_front(&mut st.batch, self.config.max_queued_per_user);
                st.batch_deadline_ms.get_or_insert(now_ms + batch_window);
                self.count_dropped(dropped, Priority::Medium, first.as_str());
            }
            now_channels
        } else {
            channels
        };
        let per_channel: Vec<(Channel, Vec<Item>)> = channels
            .into_iter()
            .map(|c| (c, vec![item.clone()]))
            .collect();
        self.emit(
            &user,
            prefs,
            DeliveryKind::Immediate,
            per_channel,
            now_ms,
            &mut out,
        );
        out
    }

    /// A delivery failed for good: the fallback, if it has one.
    pub fn on_failed(&mut self, d: &Delivery) -> Option<Delivery> {
        let ch = d.fallback?;
        Some(Delivery {
            id: hash_id(&[&d.id, "fallback", ch.as_str()]),
            channel: ch,
            kind: DeliveryKind::Fallback,
            fallback: None,
            ..d.clone()
        })
    }

    /// Releases what is due at `now`: batches, quiet-hour holds, digests.
    /// `prefs` looks a user's preferences up.
    pub fn tick(&mut self, now_ms: i64, prefs: &dyn Fn(&str) -> Preferences) -> Vec<Delivery> {
        let mut out = Vec::new();
        let mut users: Vec<String> = self.users.keys().cloned().collect();
        users.sort();
        for user in users {
            if self.users.get(&user).is_some_and(|s| {
                s.waiting() == 0 && !s.is_empty() && s.mutes.values().all(|m| m.until_ms > now_ms)
            }) {
                continue; // nothing to release, nothing to forget
            }
            let p = prefs(&user);
            let before = out.len();
            let mut changed = false;
            if let Some(st) = self.users.get_mut(&user) {
                let n = st.mutes.len();
                st.mutes.retain(|_, m| m.until_ms > now_ms);
                changed |= n != st.mutes.len();
                if st.next_digest_ms.is_none() && !st.digest.is_empty() {
                    st.next_digest_ms = Some(p.next_digest_after(now_ms));
                    changed = true;
                }
            }
            self.release(&user, &p, now_ms, &mut out);
            if changed || out.len() != before {
                self.dirty.insert(user.clone());
            }
            if self.users.get(&user).is_some_and(UserState::is_empty) {
                self.users.remove(&user);
                self.dirty.insert(user);
            }
        }
        out
    }

    /// The earliest moment something may become due (for the runner's
    /// sleep); quiet-hour and flow holds are re-checked every tick anyway.
    pub fn next_deadline(&self) -> Option<i64> {
        self.users
            .values()
            .flat_map(|s| [s.batch_deadline_ms, s.next_digest_ms])
            .flatten()
            .min()
    }

    fn release(&mut self, user: &str, prefs: &Preferences, now_ms: i64, out: &mut Vec<Delivery>) {
        let quiet = prefs.is_quiet(now_ms);
        let Some(st) = self.users.get_mut(user) else {
            return;
        };
        // MEDIUM batch.
        if st.batch_deadline_ms.is_some_and(|d| d <= now_ms) {
            st.batch_deadline_ms = None;
            let items = std::mem::take(&mut st.batch);
            let channels: Vec<Channel> = prefs
                .channels
                .medium
                .iter()
                .copied()
                .filter(|c| batched(*c))
                .collect();
            if quiet {
                for item in items {
                    st.quiet_held.push(Held {
                        channels: channels.clone(),
                        item,
                    });
                    // (Batches are already bounded, so the hold grows by at most one batch.)
                }
            } else if !items.is_empty() {
                let per: Vec<(Channel, Vec<Item>)> =
                    channels.iter().map(|c| (*c, items.clone())).collect();
                self.emit(user, prefs, DeliveryKind::Batch, per, now_ms, out);
            }
        }
        let Some(st) = self.users.get_mut(user) else {
            return;
        };
        // Quiet hours over: everything held, one delivery per channel.
        if !quiet && !st.quiet_held.is_empty() {
            let held = std::mem::take(&mut st.quiet_held);
            let mut per: BTreeMap<Channel, Vec<Item>> = BTreeMap::new();
            for h in held {
                for c in h.channels {
                    per.entry(c).or_default().push(h.item.clone());
                }
            }
            self.emit(
                user,
                prefs,
                DeliveryKind::Held,
                per.into_iter().collect(),
                now_ms,
                out,
            );
        }
        let Some(st) = self.users.get_mut(user) else {
            return;
        };
        // Out of flow (or hold turned off): what flow held.
        let holding = holds_flow(&self.config, st, prefs, now_ms);
        if !holding && !quiet && !st.flow_held.is_empty() {
            let per: Vec<(Channel, Vec<Item>)> =
                std::mem::take(&mut st.flow_held).into_iter().collect();
            self.emit(user, prefs, DeliveryKind::Held, per, now_ms, out);
        }
        let Some(st) = self.users.get_mut(user) else {
            return;
        };
        // The digest, at the user's local hour. One due in quiet hours stays
        // due and goes out when they end: waiting for the next digest hour
        // instead would hold it forever when that hour is always inside the
        // quiet hours (digest_hour 23 with quiet hours 22:00-08:00), and the
        // items would only ever be dropped, oldest first, at the cap.
        if let Some(due) = st.next_digest_ms
            && due <= now_ms
        {
            if st.digest.is_empty() {
                st.next_digest_ms = None;
            } else if !quiet {
                let items = std::mem::take(&mut st.digest);
                st.next_digest_ms = None;
                let per: Vec<(Channel, Vec<Item>)> = prefs
                    .digest_channels
                    .iter()
                    .map(|c| (*c, items.clone()))
                    .collect();
                self.emit(user, prefs, DeliveryKind::Digest, per, now_ms, out);
            }
        }
    }

    /// Turns per-channel item lists into deliveries, holding in-app/email
    /// while the user is in flow, and attaching the suppressed count.
    fn emit(
        &mut self,
        user: &str,
        prefs: &Preferences,
        kind: DeliveryKind,
        per_channel: Vec<(Channel, Vec<Item>)>,
        now_ms: i64,
        out: &mut Vec<Delivery>,
    ) {
        let mut sendable = Vec::new();
        for (ch, items) in per_channel {
            if items.is_empty() || !self.reachable(ch, prefs) {
                if !items.is_empty() {
                    for i in &items {
                        self.tally(i.priority, ch.as_str(), Outcome::Failed);
                    }
                }
                continue;
            }
            let holding = self
                .users
                .get(user)
                .is_some_and(|s| holds_flow(&self.config, s, prefs, now_ms));
            if holding && ch.held_in_flow() {
                for i in &items {
                    self.tally(i.priority, ch.as_str(), Outcome::HeldFlow);
                }
                let st = self.users.entry(user.to_owned()).or_default();
                let held = st.flow_held.entry(ch).or_default();
                held.extend(items);
                let dropped = trim_front(held, self.config.max_queued_per_user);
                self.count_dropped(dropped, Priority::Medium, ch.as_str());
                continue;
            }
            sendable.push((ch, items));
        }
        if sendable.is_empty() {
            return;
        }
        let suppressed = self.take_suppressed(user);
        for (ch, items) in sendable {
            let priority = items
                .iter()
                .map(|i| i.priority)
                .max_by_key(|p| rank(*p))
                .unwrap_or(Priority::Low);
            let mut parts: Vec<&str> = vec![user, ch.as_str()];
            let kind_s = format!("{kind:?}");
            parts.push(&kind_s);
            parts.extend(items.iter().map(|i| i.id.as_str()));
            let id = match (kind, items.as_slice()) {
                (DeliveryKind::Immediate, [one]) => hash_id(&[&one.id, ch.as_str()]),
                _ => hash_id(&parts),
            };
            out.push(Delivery {
                id,
                recipient: user.to_owned(),
                channel: ch,
                priority,
                kind,
                items,
                suppressed_similar: suppressed,
                fallback: None,
            });
        }
    }

    fn count_dropped(&mut self, dropped: usize, priority: Priority, channel: &'static str) {
        for _ in 0..dropped {
            self.tally(priority, channel, Outcome::Failed);
        }
    }

    fn take_suppressed(&mut self, user: &str) -> u64 {
        match self.users.get_mut(user) {
            Some(st) if st.suppressed > 0 => {
                self.dirty.insert(user.to_owned());
                std::mem::take(&mut st.suppressed)
            }
            _ => 0,
        }
    }

    fn reachable(&self, ch: Channel, prefs: &Preferences) -> bool {
        let configured = self.config.available.contains(&ch);
        match ch {
            Channel::InApp => true,
            Channel::Webhook => configured || prefs.webhook_url.is_some(),
            Channel::Email => configured && prefs.email.is_some(),
            Channel::Sms => configured && prefs.phone.is_some(),
        }
    }

    fn channels_for(&self, p: Priority, prefs: &Preferences) -> Vec<Channel> {
        let list = match p {
            Priority::Critical => &prefs.channels.critical,
            Priority::High => &prefs.channels.high,
            Priority::Medium => &prefs.channels.medium,
            Priority::Low => &prefs.digest_channels,
        };
        let mut seen = BTreeSet::new();
        list.iter().copied().filter(|c| seen.insert(*c)).collect()
    }

    /// CRITICAL: the preferred channels that can reach the user; an email
    /// without an address becomes an SMS.
    fn critical_channels(&self, prefs: &Preferences) -> Vec<Channel> {
        let mut out: Vec<Channel> = Vec::new();
        for c in self.channels_for(Priority::Critical, prefs) {
            let c = if c == Channel::Email && !self.reachable(Channel::Email, prefs) {
                Channel::Sms
            } else {
                c
            };
            if self.reachable(c, prefs) && !out.contains(&c) {
                out.push(c);
            }
        }
        out
    }
}

/// Whether MEDIUM alerts wait for the batching window on this channel
/// (in-app never does: it is delivered at once).
fn batched(c: Channel) -> bool {
    c != Channel::InApp
}

/// Drops the oldest entries beyond `cap`; returns how many.
fn trim_front<T>(v: &mut Vec<T>, cap: usize) -> usize {
    let extra = v.len().saturating_sub(cap.max(1));
    v.drain(..extra);
    extra
}

/// Whether flow holds the user's in-app and email now.
fn holds_flow(config: &PolicyConfig, st: &UserState, prefs: &Preferences, now_ms: i64) -> bool {
    st.in_flow
        && prefs.flow_hold
        && config.flow_hold
        && now_ms - st.flow_since_ms < config.flow_hold_max_ms
}

fn rank(p: Priority) -> u8 {
    match p {
        Priority::Low => 0,
        Priority::Medium => 1,
        Priority::High => 2,
        Priority::Critical => 3,
    }
}
