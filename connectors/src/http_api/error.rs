//! The one error type of the HTTP edge: JSON `{"error":{"code","message","field"?}}`.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// An error answer. 4xx echo the reason; 5xx say little (the cause is logged).
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub field: Option<String>,
    pub details: Option<serde_json::Value>,
    /// Seconds the client should wait before retrying (429, 503).
    pub retry_after: Option<u32>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            field: None,
            details: None,
            retry_after: None,
        }
    }

    /// 503 with `Retry-After`: the log cannot take writes now.
    pub fn unavailable(message: &str) -> ApiError {
        ApiError {
            retry_after: Some(1),
            ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "log_unavailable", message)
        }
    }

    pub fn from_decode(status: StatusCode, e: &schemas::DecodeError) -> ApiError {
        ApiError::new(status, e.code, e.message.clone()).with_field(e.field.as_deref())
    }

    pub fn with_field(mut self, field: Option<&str>) -> ApiError {
        self.field = field.map(str::to_owned);
        self
    }

    pub fn with_details(mut self, details: serde_json::Value) -> ApiError {
        self.details = Some(details);
        self
    }
}

impl ApiError {
    /// 429/503: when to retry, in seconds.
    pub fn with_retry_after(mut self, secs: u32) -> ApiError {
        self.retry_after = Some(secs);
        self
    }

    /// The `error` object of the JSON body.
    pub fn body(&self) -> serde_json::Value {
        let mut error = json!({"code": self.code, "message": self.message});
        if let Some(f) = &self.field {
            error["field"] = f.clone().into();
        }
        if let Some(serde_json::Value::Object(d)) = &self.details {
            for (k, v) in d {
                error[k] = v.clone();
            }
        }
        if let Some(secs) = self.retry_after {
            error["retry_after_s"] = secs.into();
        }
        error
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let error = self.body();
        let mut resp = (self.status, Json(json!({ "error": error }))).into_response();
        if let Some(secs) = self.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}
