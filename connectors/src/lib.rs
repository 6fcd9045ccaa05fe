//! Every inkstream edge that does I/O.
//!
//! - [`auth`]: API keys, HS256 JWTs and express-session cookies; rate limits.
//! - [`event_log`]: the log every event is appended to before it is acknowledged:
//!   the [`EventLog`] enum over the embedded (in-process) log and Redis Streams.
//! - [`redis_stream`]: the Redis Streams backend (XADD, XREADGROUP, XACK, XAUTOCLAIM).
//! - [`kafka`]: the Kafka-compatible side: topic admin, idempotent producer,
//!   and the mirror from the log to the event topics.
//! - [`schema_registry`]: the read side of the Schema Registry REST API.
//! - [`websocket_fanout`]: the hub that fans derived events out to WebSocket
//!   subscribers by path and channel, with byte-bounded per-client queues.
//! - [`http_ingest`]: the axum router: `POST /v1/events`, the WS paths,
//!   `/metrics`, `/healthz`.
//! - [`metrics`]: every Prometheus metric of the process, in one place.
//! - [`notifier`]: notifications (policy, in-app/email/SMS/webhook delivery).
//! - [`view_store`]: the dataflow's current state, materialised (Redis or
//!   in-process) for the query endpoints.

pub mod auth;
pub mod event_log;
pub mod http_api;
pub mod kafka;
pub mod lease;
pub mod metrics;
pub mod notifier;
pub mod view_store;
pub mod websocket_fanout;

pub use event_log::{EntryRef, EventLog, LogEntry, LogError};
pub use metrics::Metrics;
