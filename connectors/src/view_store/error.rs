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
}

impl Classify for ViewError {
    fn fault(&self) -> Fault {
        Fault::External
    }
}
