//! The one error type of the HTTP edge: JSON `{"error":{"code","message","field"?}}`.
//!
//! Handlers return an [`ApiError`] variant saying *what* went wrong; the
//! status, the `code`, the message, the `field`, extra members and
//! `Retry-After` are decided here, in [`ApiError::parts`], and nowhere else.
//! 4xx echo the reason; 5xx say little (the cause is logged where it happens).

use crate::auth::AuthError;
use crate::event_log::LogError;
use crate::view_store::ViewError;
use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// A path parameter (or tuple of them) as a handler takes it: its
/// rejection (e.g. `%FF`, not UTF-8) is mapped by [`path_param`] after the
/// handler has authenticated the caller, as a query's is.
pub type PathParam<T> = Result<axum::extract::Path<T>, axum::extract::rejection::PathRejection>;

/// The value of a [`PathParam`], or 400 `invalid_parameter` naming the
/// parameter (`field`), in the JSON error shape (axum's own rejection is
/// plain text).
pub fn path_param<T>(p: PathParam<T>) -> Result<T, ApiError> {
    use axum::extract::path::ErrorKind;
    use axum::extract::rejection::PathRejection;
    match p {
        Ok(axum::extract::Path(v)) => Ok(v),
        Err(PathRejection::FailedToDeserializePathParams(e)) => {
            let field = match e.kind() {
                ErrorKind::InvalidUtf8InPathParam { key } => Some(key.clone()),
                ErrorKind::ParseErrorAtKey { key, .. } => Some(key.clone()),
                ErrorKind::DeserializeError { key, .. } => Some(key.clone()),
                _ => None,
            };
            Err(ApiError::InvalidParameter {
                field: field.unwrap_or_else(|| "path".into()),
                message: e.body_text(),
            })
        }
        Err(other) => Err(ApiError::InvalidParameter {
            field: "path".into(),
            message: other.body_text(),
        }),
    }
}

/// Why a request was refused or failed.
#[derive(Debug)]
pub enum ApiError {
    /// 400 with the decoder's own code (`invalid_json`, `missing_field`, …):
    /// the body, or an event of it, does not decode.
    Malformed(schemas::DecodeError),
    /// 400 `invalid_json`: the body is not the JSON object expected.
    InvalidJson(String),
    /// 400 `bad_body`: the body could not be read.
    BadBody(String),
    /// 400 `invalid_parameter`: a query or path parameter is wrong.
    InvalidParameter { field: String, message: String },
    /// 401: no, bad or expired credentials (the code is the [`AuthError`]'s).
    Unauthenticated(AuthError),
    /// 403 `forbidden`.
    Forbidden {
        message: String,
        field: Option<String>,
    },
    /// 404 `not_found`.
    NotFound {
        message: String,
        field: Option<String>,
    },
    /// 404 `unknown_category`, listing the known ones.
    UnknownCategory { name: String },
    /// 413 `body_too_large`: the body exceeds `limit` bytes.
    BodyTooLarge { limit: usize },
    /// 413 `batch_too_large`: `events` in one request (at least, when
    /// `at_least`: the count stopped there), more than `limit`.
    BatchTooLarge {
        events: usize,
        limit: usize,
        at_least: bool,
    },
    /// 413 `batch_over_burst`: more events in one request than the caller's
    /// burst, which no wait can ever admit.
    BatchOverBurst {
        events: usize,
        burst: f64,
        per_second: f64,
    },
    /// 503 `request_timed_out`: the handler did not finish within
    /// `server.request_timeout`.
    RequestTimedOut { seconds: f64 },
    /// 415 `unsupported_media_type`: the `Content-Type` essence sent.
    UnsupportedMediaType(String),
    /// 422 `invalid_field`.
    InvalidField {
        message: String,
        field: Option<String>,
    },
    /// 422 `missing_field`.
    MissingField { message: String, field: String },
    /// 422 `invalid_events`: events of the batch were refused (`rejected`
    /// lists them, `field` is the first one's).
    InvalidEvents {
        message: String,
        field: Option<String>,
        rejected: Vec<Value>,
    },
    /// 429 `rate_limited`, with the rate that applies and when to retry (s).
    RateLimited {
        per_second: f64,
        burst: f64,
        retry_after: u32,
    },
    /// 503 `log_unavailable`: a read of the log failed.
    LogUnavailable(LogError),
    /// 503 `log_unavailable`: the append failed.
    LogRefusedWrite,
    /// 503 `log_unavailable`: the append did not finish in time.
    LogTimedOut,
    /// 503 `fanout_unavailable`: the fanout could not publish.
    FanoutUnavailable,
    /// 503 `views_unavailable`.
    ViewsUnavailable(ViewError),
    /// 503 `notifications_disabled`: the notifier is not running.
    NotificationsDisabled,
    /// 503 `store_unavailable`: the notification store failed.
    NotificationStoreUnavailable,
    /// 503 `queue_full`: the notifier's queue is full.
    NotifierQueueFull,
    /// 404 `not_found`: no route matches.
    NoRoute,
    /// 405 `method_not_allowed`: the path exists, not with this method (the
    /// router adds the `Allow` header).
    MethodNotAllowed,
    /// 400 `invalid_upgrade`: a GET on a WebSocket path that is not a
    /// WebSocket handshake (the reason names the header).
    InvalidUpgrade(String),
}

/// What an [`ApiError`] answers.
struct Parts {
    status: StatusCode,
    code: &'static str,
    message: String,
    field: Option<String>,
    /// Extra members of the `error` object.
    details: Option<Value>,
    /// Seconds the client should wait before retrying (429, 503).
    retry_after: Option<u32>,
}

impl Parts {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Parts {
        Parts {
            status,
            code,
            message: message.into(),
            field: None,
            details: None,
            retry_after: None,
        }
    }

    fn field(mut self, field: Option<String>) -> Parts {
        self.field = field;
        self
    }

    fn details(mut self, details: Value) -> Parts {
        self.details = Some(details);
        self
    }

    fn retry_after(mut self, secs: u32) -> Parts {
        self.retry_after = Some(secs);
        self
    }
}

impl ApiError {
    /// 403 `forbidden` without a field.
    pub fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError::Forbidden {
            message: message.into(),
            field: None,
        }
    }

    /// 422 `invalid_field` naming `field`.
    pub fn invalid_field(field: &str, message: impl Into<String>) -> ApiError {
        ApiError::InvalidField {
            message: message.into(),
            field: Some(field.to_owned()),
        }
    }

    /// 400 `invalid_parameter` naming `field`.
    pub fn invalid_parameter(field: &str, message: impl Into<String>) -> ApiError {
        ApiError::InvalidParameter {
            field: field.to_owned(),
            message: message.into(),
        }
    }

    /// A query string that does not deserialize: 400 `invalid_parameter`
    /// naming the parameter when serde says which.
    pub fn from_query(r: &axum::extract::rejection::QueryRejection) -> ApiError {
        let text = r.body_text();
        let detail = text
            .split_once("query string: ")
            .map(|(_, d)| d)
            .unwrap_or(&text);
        let (field, message) = match detail.split_once(": ") {
            Some((f, m)) if !f.contains(' ') => (f.to_owned(), m.to_owned()),
            _ => ("query".to_owned(), detail.to_owned()),
        };
        ApiError::InvalidParameter { field, message }
    }

    /// A body that could not be read: 413 over the limit, 400 otherwise.
    pub fn from_body(r: &axum::extract::rejection::BytesRejection, limit: usize) -> ApiError {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::BodyTooLarge { limit }
        } else {
            ApiError::BadBody(r.body_text())
        }
    }

    /// A JSON object body decoded into `T` (after authentication): 400
    /// `invalid_json` when it is not JSON, 422 naming the field otherwise.
    pub fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
        let mut value: Value = serde_json::from_slice(body)
            .map_err(|e| ApiError::InvalidJson(format!("malformed JSON: {e}")))?;
        schemas::json::integral_floats(&mut value);
        if !value.is_object() {
            return Err(ApiError::InvalidJson("expected a JSON object".into()));
        }
        serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            let message = e.inner().to_string();
            let missing = message
                .strip_prefix("missing field `")
                .and_then(|m| m.split('`').next());
            match missing {
                Some(f) => ApiError::MissingField {
                    message: "required field is missing".into(),
                    field: f.to_owned(),
                },
                None => ApiError::InvalidField {
                    message,
                    field: (path != ".").then_some(path),
                },
            }
        })
    }

    /// The one mapping from an error to its answer.
    fn parts(&self) -> Parts {
        use StatusCode as S;
        match self {
            ApiError::Malformed(e) => {
                Parts::new(S::BAD_REQUEST, e.code, e.message.clone()).field(e.field.clone())
            }
            ApiError::InvalidJson(m) => Parts::new(S::BAD_REQUEST, "invalid_json", m.clone()),
            ApiError::BadBody(m) => Parts::new(S::BAD_REQUEST, "bad_body", m.clone()),
            ApiError::InvalidParameter { field, message } => {
                Parts::new(S::BAD_REQUEST, "invalid_parameter", message.clone())
                    .field(Some(field.clone()))
            }
            // A store or key set we depend on being down is not the
            // caller's fault: 503 (a 401 would make clients drop good tokens).
            ApiError::Unauthenticated(e)
                if schemas::Classify::fault(e) == schemas::Fault::External =>
            {
                Parts::new(S::SERVICE_UNAVAILABLE, e.code(), e.to_string()).retry_after(5)
            }
            ApiError::Unauthenticated(e) => Parts::new(S::UNAUTHORIZED, e.code(), e.to_string()),
            ApiError::Forbidden { message, field } => {
                Parts::new(S::FORBIDDEN, "forbidden", message.clone()).field(field.clone())
            }
            ApiError::NotFound { message, field } => {
                Parts::new(S::NOT_FOUND, "not_found", message.clone()).field(field.clone())
            }
            ApiError::NoRoute => Parts::new(S::NOT_FOUND, "not_found", "no such route"),
            ApiError::MethodNotAllowed => Parts::new(
                S::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this path does not take this method (the Allow header lists those it takes)",
            ),
            ApiError::InvalidUpgrade(reason) => Parts::new(
                S::BAD_REQUEST,
                "invalid_upgrade",
                format!("not a WebSocket handshake: {reason}"),
            ),
            ApiError::UnknownCategory { name } => {
                let known: Vec<&str> = schemas::Category::ALL.iter().map(|c| c.as_str()).collect();
                Parts::new(
                    S::NOT_FOUND,
                    "unknown_category",
                    format!("no category {name:?}; known: {}", known.join(", ")),
                )
                .field(Some("category".into()))
                .details(json!({ "known": known }))
            }
            ApiError::BodyTooLarge { limit } => Parts::new(
                S::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!("the body exceeds {limit} bytes"),
            ),
            ApiError::BatchTooLarge {
                events,
                limit,
                at_least,
            } => Parts::new(
                S::PAYLOAD_TOO_LARGE,
                "batch_too_large",
                if *at_least {
                    format!("more than {limit} events in one request; the limit is {limit}")
                } else {
                    format!("{events} events in one request; the limit is {limit}")
                },
            ),
            ApiError::BatchOverBurst {
                events,
                burst,
                per_second,
            } => Parts::new(
                S::PAYLOAD_TOO_LARGE,
                "batch_over_burst",
                format!(
                    "{events} events in one request is more than this caller's burst of {burst} \
                     events ({per_second} events/s): split the batch"
                ),
            ),
            ApiError::RequestTimedOut { seconds } => Parts::new(
                S::SERVICE_UNAVAILABLE,
                "request_timed_out",
                format!("the request did not finish within {seconds} s (server.request_timeout)"),
            )
            .retry_after(1),
            ApiError::UnsupportedMediaType(got) => Parts::new(
                S::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                format!("expected application/json or application/x-ndjson, got {got:?}"),
            ),
            ApiError::InvalidField { message, field } => {
                Parts::new(S::UNPROCESSABLE_ENTITY, "invalid_field", message.clone())
                    .field(field.clone())
            }
            ApiError::MissingField { message, field } => {
                Parts::new(S::UNPROCESSABLE_ENTITY, "missing_field", message.clone())
                    .field(Some(field.clone()))
            }
            ApiError::InvalidEvents {
                message,
                field,
                rejected,
            } => Parts::new(S::UNPROCESSABLE_ENTITY, "invalid_events", message.clone())
                .field(field.clone())
                .details(json!({ "rejected": rejected })),
            ApiError::RateLimited {
                per_second,
                burst,
                retry_after,
            } => Parts::new(
                S::TOO_MANY_REQUESTS,
                "rate_limited",
                format!("more than {per_second} events/s (burst {burst}); retry later"),
            )
            .retry_after(*retry_after),
            // The cause (a Redis address, its error) is for the log, not
            // for the caller: logged once, in `into_response`.
            ApiError::LogUnavailable(_) => {
                log_unavailable("the event log cannot be read right now".into())
            }
            ApiError::LogRefusedWrite => {
                log_unavailable("the event log cannot take writes right now".into())
            }
            ApiError::LogTimedOut => log_unavailable("the event log did not answer in time".into()),
            ApiError::FanoutUnavailable => Parts::new(
                S::SERVICE_UNAVAILABLE,
                "fanout_unavailable",
                "the fanout cannot publish right now; retry later",
            ),
            ApiError::ViewsUnavailable(_) => Parts::new(
                S::SERVICE_UNAVAILABLE,
                "views_unavailable",
                "the views cannot be read right now; retry later",
            )
            .retry_after(1),
            ApiError::NotificationsDisabled => Parts::new(
                S::SERVICE_UNAVAILABLE,
                "notifications_disabled",
                "the notifier is not running (notifications.enabled = false)",
            ),
            ApiError::NotificationStoreUnavailable => Parts::new(
                S::SERVICE_UNAVAILABLE,
                "store_unavailable",
                "the notification store is unavailable",
            )
            .retry_after(1),
            ApiError::NotifierQueueFull => Parts::new(
                S::SERVICE_UNAVAILABLE,
                "queue_full",
                "the notifier queue is full",
            )
            .retry_after(1),
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.parts().status
    }

    /// The field the error names, if any.
    pub fn field(&self) -> Option<String> {
        self.parts().field
    }

    /// The `error` object of the JSON body.
    pub fn body(&self) -> Value {
        body_of(&self.parts())
    }
}

/// 503 with `Retry-After`: the log cannot take writes or reads now.
fn log_unavailable(message: String) -> Parts {
    Parts::new(StatusCode::SERVICE_UNAVAILABLE, "log_unavailable", message).retry_after(1)
}

fn body_of(p: &Parts) -> Value {
    let mut error = json!({"code": p.code, "message": p.message});
    if let Some(f) = &p.field {
        error["field"] = f.clone().into();
    }
    if let Some(Value::Object(d)) = &p.details {
        for (k, v) in d {
            error[k] = v.clone();
        }
    }
    if let Some(secs) = p.retry_after {
        error["retry_after_s"] = secs.into();
    }
    error
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match &self {
            ApiError::LogUnavailable(e) => {
                tracing::warn!(error = %e, "a read of the event log failed")
            }
            ApiError::ViewsUnavailable(e) => {
                tracing::warn!(error = %e, "a read of the views failed")
            }
            _ => {}
        }
        let p = self.parts();
        let error = body_of(&p);
        let mut resp = (p.status, Json(json!({ "error": error }))).into_response();
        if let Some(secs) = p.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A failed read of the log or the views answers 503 with a fixed
    /// message: the cause (here a Redis address and its error) goes to the
    /// log, never to the caller (it was the message itself).
    #[test]
    fn a_503_for_a_failed_read_names_no_internal_cause() {
        let cause = "redis://10.0.0.7:6379: Connection refused (os error 111)";
        for e in [
            ApiError::LogUnavailable(LogError::Unavailable(cause.into())),
            ApiError::ViewsUnavailable(ViewError::Unavailable(cause.into())),
        ] {
            let body = e.body();
            let text = body.to_string();
            assert_eq!(e.status(), StatusCode::SERVICE_UNAVAILABLE, "{text}");
            assert!(!text.contains("10.0.0.7"), "{text}");
            assert!(!text.contains("refused"), "{text}");
        }
    }
}
