//! Every WebSocket close code the fanout sends, named in one place.

/// Close code sent to a client whose queue overflowed.
pub const CLOSE_SLOW: u16 = 4008;
/// Close code sent to every client when the server shuts down (RFC 6455 "going away").
pub const CLOSE_GOING_AWAY: u16 = 1001;
/// Close code sent to a client that sent control frames (subscribe,
/// unsubscribe, ping) faster than `fanout.control_rate_per_sec` allows.
pub const CLOSE_CONTROL_FLOOD: u16 = 4029;
/// Close code sent to a client from which nothing, not even a pong, was
/// heard for `fanout.idle_timeout`.
pub const CLOSE_IDLE: u16 = 4009;
/// Close code sent when the connection's credential ends: its token
/// expired, or its session was logged out, expired or changed (reconnect
/// with a new credential). `/ws/ingest` sends it too.
pub const CLOSE_TOKEN_EXPIRED: u16 = 4001;
/// Close code sent for a client frame over the 64 KiB limit (RFC 6455
/// "message too big").
pub const CLOSE_TOO_BIG: u16 = 1009;
