//! Every WebSocket close code the fanout sends, named in one place.

/// Close code sent to a client whose queue overflowed.
pub const CLOSE_SLOW: u16 = 4008;
/// Close code sent to every client when the server shuts down (RFC 6455 "going away").
pub const CLOSE_GOING_AWAY: u16 = 1001;
