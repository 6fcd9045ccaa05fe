//! Why a delivery failed ([`DeliveryError`]), and whether trying again may help.

use schemas::{Classify, Fault};

/// Why a delivery failed, and whether trying again may help.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{reason}")]
pub struct DeliveryError {
    /// 5xx, 429, timeouts, connection errors: retry with backoff.
    pub transient: bool,
    pub reason: String,
}

impl DeliveryError {
    pub fn transient(reason: impl Into<String>) -> DeliveryError {
        DeliveryError {
            transient: true,
            reason: reason.into(),
        }
    }

    pub fn permanent(reason: impl Into<String>) -> DeliveryError {
        DeliveryError {
            transient: false,
            reason: reason.into(),
        }
    }

    /// Classifies an HTTP answer or a client error.
    pub(crate) fn from_http(
        result: Result<reqwest::Response, reqwest::Error>,
    ) -> Result<(), DeliveryError> {
        match result {
            Ok(r) if r.status().is_success() => Ok(()),
            Ok(r) => {
                let s = r.status();
                let msg = format!("provider answered {s}");
                if s.is_server_error() || s.as_u16() == 429 || s.as_u16() == 408 {
                    Err(DeliveryError::transient(msg))
                } else {
                    Err(DeliveryError::permanent(msg))
                }
            }
            // Without the URL: a webhook URL may carry a token in its path.
            Err(e) if e.is_builder() => Err(DeliveryError::permanent(format!(
                "bad request: {}",
                chain(e.without_url())
            ))),
            Err(e) => Err(DeliveryError::transient(format!(
                "request failed: {}",
                chain(e.without_url())
            ))),
        }
    }
}

/// An error and its causes, `a: b: c` (reqwest's own message is only
/// "error sending request"; the cause says a certificate or a refusal).
fn chain(e: reqwest::Error) -> String {
    let mut out = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

impl Classify for DeliveryError {
    /// A provider refused or failed the delivery.
    fn fault(&self) -> Fault {
        Fault::External
    }
    fn retryable(&self) -> bool {
        self.transient
    }
}
