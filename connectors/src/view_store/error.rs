//! What the view store answers with: a value and the watermark it reflects
//! ([`Fresh`]), or why it could not ([`ViewError`]).

use schemas::{Classify, Fault};

/// Answers of the store, before the HTTP layer adds `lag_ms`.
pub type Fresh<T> = (T, i64);

/// Why the view store failed.
#[derive(Debug, thiserror::Error)]
pub enum ViewError {
    #[error("the view store is unavailable: {0}")]
    Unavailable(String),
    #[error(
        "this instance no longer holds the dataflow lease (fence token {token} of {key} is \
         stale): its view write was refused; the new holder writes the views"
    )]
    Fenced { key: String, token: i64 },
}

impl Classify for ViewError {
    fn fault(&self) -> Fault {
        match self {
            ViewError::Unavailable(_) => Fault::External,
            // Expected at a takeover; nothing to retry here.
            ViewError::Fenced { .. } => Fault::Internal,
        }
    }
}
