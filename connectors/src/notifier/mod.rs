//! Notifications: from `analytics.alert_triggered` to a person, on the right
//! channel, at the right time, once.
//!
//! - [`policy`], the pure core (priority routing, quiet hours in the user's
//!   time zone, auto-mute, MEDIUM batches, digests, flow hold); explicit `now`.
//! - [`runner`], the tokio task owning the policy, a [`runner::Clock`], the
//!   store and the channels: dedup of re-emitted alerts, persistence, delivery
//!   with idempotency keys, retries with backoff + jitter, dead letters.
//! - [`store`], Redis (when `redis.url` is set: survives restarts) or
//!   in-process: user state, pending deliveries, dead letters, in-app
//!   notifications, preferences.
//! - Channels, one file each: [`in_app`], [`smtp`], [`email_api`], [`sms`],
//!   [`webhook`]; [`template`] renders the text and HTML bodies;
//!   [`outbound`], the HTTP client of the webhook/email/SMS channels
//!   (private destinations refused, no redirects, timeouts, rustls).
//! - `config.rs`: `[notifications]` ([`NotifierConfig`] and its channel
//!   sections); `error.rs`: [`DeliveryError`].
//! - The endpoints (`GET /api/realtime/notifications`, `POST …/{id}/read`,
//!   `GET/PUT …/preferences`, `POST …/send`) live in
//!   `http_api/notifications.rs` and use the [`NotifierHandle`].
//! - [`metrics`], the metrics: `inkstream_notifications_total{priority,channel,outcome}`,
//!   `inkstream_notification_delivery_seconds{channel}`,
//!   `inkstream_notification_pending`,
//!   `inkstream_notification_destinations_refused_total{channel}`.

mod config;
pub mod email_api;
mod error;
pub mod in_app;
pub mod metrics;
pub mod outbound;
pub mod policy;
pub mod runner;
pub mod sms;
pub mod smtp;
pub mod store;
pub mod template;
pub mod webhook;

pub use policy::{Alert, Channel, Delivery, Policy, PolicyConfig, Preferences};
pub use runner::{Clock, ManualClock, Notifier, NotifierHandle, SystemClock};
pub use store::Store;

pub use config::{HttpApiConfig, NotifierConfig, RetryConfig, SmtpConfig, SmtpTls, WebhookConfig};
pub use error::DeliveryError;
pub use runner::wants;
