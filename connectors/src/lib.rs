//! Every inkstream edge that does I/O. One folder per external system or
//! component; the HTTP edge is one folder of its own that only the binary
//! assembles. No module imports from a file that imports it back
//! (checked by `tests/tests/layout/`): shared types live in their own files (`entry.rs`,
//! `error.rs`, `config.rs`, …), not in the `mod.rs` that declares them.
//!
//! - [`auth`]: API keys, HS256 JWTs and express-session cookies; rate limits
//!   (`principal.rs` who is calling, `jwt.rs`, `crypto.rs`, `rate.rs`).
//! - [`event_log`]: the log every event is appended to before it is
//!   acknowledged: the [`EventLog`] enum over the embedded (in-process) log
//!   and Redis Streams ([`event_log::redis`]: XADD, XREADGROUP, XACK,
//!   XAUTOCLAIM, range queries), the entry types, and
//!   [`event_log::reader`], the dataflow's source over the log.
//! - [`lease`]: a lease in Redis (at most one holder, fence tokens), for the dataflow.
//! - [`checkpoint_store`]: the dataflow's checkpoints in Redis, shared by
//!   the instances of a group (chunked parts, a pointer flipped atomically).
//! - [`kafka`]: the Kafka-compatible side: topic admin, idempotent producer,
//!   the mirror from the log to the event topics, the derived-event producer
//!   and the Kafka source of the dataflow.
//! - [`websocket_fanout`]: the hub that fans derived events out to WebSocket
//!   subscribers by path and channel, with byte-bounded per-client queues;
//!   optionally through Redis (`broker/`).
//! - [`notifier`]: notifications (policy, in-app/email/SMS/webhook delivery),
//!   reached through a [`notifier::NotifierHandle`].
//! - [`view_store`]: the dataflow's current state, materialised (Redis or
//!   in-process) for the query endpoints.
//! - [`redis_conn`]: the Redis connection every client uses, which
//!   reconnects when a failover left it on a replica.
//! - `redis_calls`: commands carried as a Lua script's arguments, so a
//!   guard in the script (a writer's marker, a lease's fence) decides
//!   whether they run (the views and the notifier write this way).
//! - [`tls`]: the one TLS stack (rustls, ring) and its settings; the one
//!   constructor of every Redis client ([`tls::redis_client`]).
//! - [`metrics`]: every Prometheus metric of the process, in one place; it
//!   imports no component.
//! - [`http_api`]: every handler and the axum router: ingest
//!   (`POST /v1/events`, commands, `/ws/ingest`), the WS subscribe paths and
//!   fanout admin, event queries, views, notifications, the Schema Registry
//!   read API, the console, `/metrics`, `/healthz`, `/readyz`,
//!   `/openapi.json`. Handlers reach components through `State<AppState>`;
//!   one typed [`http_api::ApiError`] maps to status, code and message.
//!
//! Library errors are `thiserror` types implementing [`schemas::Classify`]
//! (whose fault, whether a retry helps).

pub mod auth;
pub mod checkpoint_store;
pub mod event_log;
pub mod http_api;
pub mod kafka;
pub mod lease;
pub mod metrics;
pub mod notifier;
pub(crate) mod redis_calls;
pub mod redis_conn;
pub mod redis_key;
pub mod secret;
pub mod tls;
pub mod view_store;
pub mod websocket_fanout;

pub use event_log::{EntryRef, EventLog, LogEntry, LogError};
pub use metrics::Metrics;
