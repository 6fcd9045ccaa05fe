//! Alert rules: the built-in rules and the rules of the `[alerts]` config,
//! over every event of the dataflow (input events and derived ones).
//!
//! # What fires
//! Built-in rules (`alerts.defaults = true`, the default):
//! - `system.error` with severity ≥ `system_error_min_severity` (default
//!   `error`) → `CRITICAL` to `role:admin` (rule `system_error`, dedup
//!   `system_error:<service>:<code or ->`).
//! - `publishing.book_published` → `HIGH` to the event's `user_id`, else
//!   `project:<project_id>`, else `role:admin` (rule `book_published`,
//!   dedup `book_published:<book_id>`).
//! - `writing.flow_state_entered` → `LOW` to the writer (`user_id`; none
//!   without one) (rule `flow_state_entered`, dedup `flow_state_entered:<user>`).
//! - `collaboration.comment_added` → `MEDIUM` to each distinct mentioned
//!   user, except the author mentioning themselves (rule `mention`, dedup
//!   `mention:<document_id>:<thread_id or comment_id>`).
//! - Sales milestones: per book, the total units sold crossing a milestone
//!   of `sales_milestones` (default 100, 1 000, 10 000): a milestone `m`
//!   fires when the previous total `< m <=` the new `total_units` (a jump
//!   over several fires each, once). The previous total is the highest
//!   total seen for the book, or `total_units - units` for a book not (or
//!   no longer) in state. Emits `analytics.threshold_crossed` (rule
//!   `sales_milestone`, metric `total_units`, key = book id, threshold = the
//!   milestone, `above`, no window) and a `HIGH` alert to the user, else
//!   `project:<id>`, else `role:admin` (dedup `sales_milestone:<book>:<m>`).
//!
//! Config rules (`[[alerts.rules]]`, tagged by `kind`), each on one event
//! `type`, optionally filtered by `where` conditions:
//! - `match`: an alert per matching event and recipient, with `{path}`
//!   templates for title and body.
//! - `threshold`: per key (a field path; one global series without it),
//!   `count`, `sum` or `avg` of the events of the last `window`: the window
//!   at time `t` holds the events with `t - window < ts <= t` (start
//!   exclusive, as WPM). `above` fires when the aggregate goes from
//!   `< threshold` to `>= threshold` (exactly at the threshold is above),
//!   `below` when it goes back under — including when the window slides
//!   past events: that transition has `ts` = the moment an event leaves
//!   (`its ts + window`) and fires once the frontier reaches it. Never
//!   repeated while the state holds. A new key starts below; a window that
//!   empties ends its series: `below` (value 0) fires if it was above and
//!   the key's state is dropped. Emits `analytics.threshold_crossed`, and an
//!   alert for the crossings named by `notify` (default `above`) when the
//!   rule has a `recipient`.
//! - `anomaly`: per key, the last `window` values (samples) of a numeric
//!   field; with at least `min_samples` of them, a value with
//!   `|value - mean| > k * stddev` (population standard deviation of the
//!   previous values; strictly greater) emits `analytics.anomaly_detected`
//!   and, with a `recipient`, an alert. The value then joins the history.
//!
//! # Field paths, conditions, recipients, templates
//! A field path is an envelope field (`id`, `type`, `ts`, `user_id`,
//! `project_id`, `document_id`) or `data` followed by `.name`, `[N]` or
//! `[*]` steps (`data.mentions[*]` yields every element). Events are
//! serialized to JSON only when a config rule on their type reads a
//! `data` path, once per event; the built-in rules use the typed payloads.
//! A condition `{field, op, value}` (ops `eq ne gt gte lt lte contains`)
//! holds when any value at the path satisfies it; a missing field satisfies
//! none (not even `ne`). Numbers compare as numbers, strings
//! lexicographically; `contains` is a substring test on strings and an
//! element test on arrays. A recipient is a field path whose values are
//! user ids, or a literal address `prefix:value` (`role:admin`,
//! `project:p1`); a path yielding nothing sends no alert.
//!
//! # Outputs
//! - `analytics.alert_triggered`: `user_id` = the recipient when it is a
//!   user id (so the fanout routes it to that user only; none for `role:` /
//!   `project:` addresses), `project_id`/`document_id` of the source event
//!   (a `project:` recipient sets `project_id`). `source_event_id` is the
//!   input event for match and built-in rules, the `threshold_crossed` /
//!   `anomaly_detected` event for windowed and anomaly rules.
//! - `analytics.threshold_crossed` / `analytics.anomaly_detected`: the
//!   envelope (user, project, document) of the event that caused them (for
//!   a window sliding, of the key's latest event).
//! - Ids: `derived_id("alerts", …)` of the rule, the source event id, the
//!   key, the recipient and the dedup key (or direction and time), so replays
//!   reproduce them.
//!
//! # Time and determinism
//! Stateless rules (match rules and the built-in rules but sales) are
//! **live**: emitted as each container is processed, at its stamp, with
//! `ts` = the source event's time. Stateful rules (sales milestones,
//! thresholds, anomalies) are **frontier-driven**: the live stage extracts a
//! small [`Observation`] per (rule, key) that the event feeds; an
//! [`AlertWindows`] in the operator runtime ([`crate::runtime::keyed`],
//! [`Order::EventTime`]) exchanges them by (rule, key), parks them by
//! event-time epoch and, once the frontier passes an epoch, processes its
//! observations in (ts, event id) order; the runtime also checkpoints the
//! state and the parked observations (see [`AlertWindows`] for how the rules
//! come back after a restore). Arrival
//! order was not an option: this operator reads input events *and* derived
//! events of other operators, and a rule's key is not the log's partition
//! key, so no arrival order per key is reproducible across workers and
//! batchings; event time and the (unique) id are. The price is a delay of
//! about the disorder bound for these alerts. Duplicated observations (same
//! event id) count once.
//!
//! State: threshold keys live while their window holds events; anomaly
//! series and per-book sales totals idle for more than `state_ttl` of event
//! time are forgotten (an observation more than `state_ttl` after its key's
//! last one starts afresh: a book falls back to `total_units - units`),
//! whatever the batching; a periodic sweep frees their memory.

mod config;
mod fields;
mod live_rules;
#[cfg(test)]
mod tests;
mod windows;

pub use config::{
    AlertsConfig, AnomalyRuleConfig, ConditionConfig, MatchRuleConfig, RuleConfig,
    ThresholdRuleConfig,
};
pub use live_rules::{LiveRules, Observation, sort_observations};
pub use windows::AlertWindows;

use crate::runtime::{Keyed, OperatorCtx, Record};
use schemas::Event;
use std::sync::Arc;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::Stream;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::Concat;
use timely::dataflow::operators::core::OkErr;
use timely::dataflow::operators::generic::Operator;

/// An item of the live stage's output: split right after it.
#[derive(Clone)]
enum Staged {
    Alert(Event),
    Observe(Observation),
}

/// The timely wrapper: `events.alert_windows(&config, &ctx)`.
pub trait AlertWindowsExt<'scope> {
    /// Every alert rule over `self` (all events, input and derived). A
    /// config that fails [`LiveRules::new`] should have been rejected at
    /// startup; if one gets here, it is logged and only the built-in rules run.
    fn alert_windows(
        self,
        config: &AlertsConfig,
        ctx: &OperatorCtx,
    ) -> Stream<'scope, u64, Vec<Event>>;

    /// The same with rules already compiled.
    fn alert_windows_compiled(
        self,
        rules: Arc<LiveRules>,
        ctx: &OperatorCtx,
    ) -> Stream<'scope, u64, Vec<Event>>;
}

impl<'scope> AlertWindowsExt<'scope> for Stream<'scope, u64, Vec<Record>> {
    fn alert_windows(
        self,
        config: &AlertsConfig,
        ctx: &OperatorCtx,
    ) -> Stream<'scope, u64, Vec<Event>> {
        let rules = LiveRules::new(config).unwrap_or_else(|error| {
            tracing::error!(%error, "invalid alert rules; only the built-in rules run");
            LiveRules::builtin(config.defaults)
        });
        self.alert_windows_compiled(Arc::new(rules), ctx)
    }

    /// Two stages: the live one is stateless (nothing to checkpoint) and runs
    /// where the event is; the stateful one is an [`AlertWindows`] in the
    /// operator runtime ([`Keyed`]), which exchanges, orders, stamps and
    /// checkpoints it like every stateful operator.
    fn alert_windows_compiled(
        self,
        rules: Arc<LiveRules>,
        ctx: &OperatorCtx,
    ) -> Stream<'scope, u64, Vec<Event>> {
        let state = AlertWindows::new(&rules);
        // Live stage, on the worker that has the event: no exchange of whole events.
        let staged = self.unary::<CapacityContainerBuilder<Vec<Staged>>, _, _, _>(
            Pipeline,
            "AlertMatch",
            move |_cap, _info| {
                let (mut alerts, mut obs) = (Vec::new(), Vec::new());
                move |input, output| {
                    input.for_each(|cap, data| {
                        for r in data.drain(..) {
                            rules.stage(&r.event, &mut alerts, &mut obs);
                        }
                        if !alerts.is_empty() || !obs.is_empty() {
                            let mut session = output.session(&cap);
                            session.give_iterator(alerts.drain(..).map(Staged::Alert));
                            session.give_iterator(obs.drain(..).map(Staged::Observe));
                        }
                    });
                }
            },
        );
        // `Result` is only ok_err's routing tag here, not an error path.
        #[allow(clippy::result_large_err)]
        let (live, observed): (
            Stream<'scope, u64, Vec<Event>>,
            Stream<'scope, u64, Vec<Observation>>,
        ) = staged.ok_err(|s| match s {
            Staged::Alert(e) => Ok(e),
            Staged::Observe(o) => Err(o),
        });
        live.concat(observed.keyed(state, ctx))
    }
}
