//! Whose fault an error is, and whether trying again can help.
//!
//! Every library error of inkstream implements [`Classify`], so that the one
//! boundary that turns errors into something a person sees (the HTTP error
//! mapping, the binary's exit message, a log line with a metric) can say who
//! has to act — the caller, the operator's configuration, an external service,
//! or inkstream itself — and whether a retry is worth it, without matching on
//! strings. The shape follows Arroyo's `UserError` / `ExternalError` split.

use std::fmt;

/// Who has to act for the operation to succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fault {
    /// The request or input was wrong (bad event, bad credentials, a limit
    /// exceeded): the caller must change what it sends.
    Caller,
    /// The deployment's configuration is wrong or incomplete: the operator
    /// must change a setting.
    Config,
    /// A service inkstream depends on (Redis, Kafka, an SMTP relay, a
    /// provider's API) failed or is unreachable.
    External,
    /// inkstream itself broke an invariant: a bug.
    Internal,
}

impl Fault {
    /// The lower-case name used in logs and metric labels.
    pub const fn as_str(self) -> &'static str {
        match self {
            Fault::Caller => "caller",
            Fault::Config => "config",
            Fault::External => "external",
            Fault::Internal => "internal",
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Implemented by every library error: whose fault, and whether to retry.
pub trait Classify {
    /// Who has to act.
    fn fault(&self) -> Fault;
    /// Whether the same operation, tried again unchanged, may succeed (an
    /// outage or a timeout: yes; a bad input or a bad setting: no).
    fn retryable(&self) -> bool {
        self.fault() == Fault::External
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Outage;
    impl Classify for Outage {
        fn fault(&self) -> Fault {
            Fault::External
        }
    }
    struct BadInput;
    impl Classify for BadInput {
        fn fault(&self) -> Fault {
            Fault::Caller
        }
    }

    #[test]
    fn only_external_faults_are_retryable_by_default() {
        assert!(Outage.retryable());
        assert!(!BadInput.retryable());
        assert_eq!(Fault::Config.to_string(), "config");
    }
}
