//! Email through a Brevo-style transactional HTTP API:
//! `POST {base_url}/v3/smtp/email`, header `api-key`, and the delivery id as
//! `Idempotency-Key` (the same on every retry).

use super::config::HttpApiConfig;
use super::error::DeliveryError;
use super::policy::Delivery;
use super::template;

/// The HTTP email channel.
#[derive(Clone)]
pub struct EmailApi {
    pub http: super::outbound::Outbound,
    pub config: HttpApiConfig,
}

impl EmailApi {
    pub async fn send(&self, d: &Delivery, to: &str) -> Result<(), DeliveryError> {
        let url = format!(
            "{}/v3/smtp/email",
            self.config.base_url.trim_end_matches('/')
        );
        let body = serde_json::json!({
            "sender": {"email": self.config.sender},
            "to": [{"email": to}],
            "subject": template::subject(d),
            "htmlContent": template::html(d),
            "textContent": template::text(d),
            "headers": {"X-Inkstream-Notification": d.id},
        });
        self.http
            .post_api("email", &url, &self.config.api_key, &d.id, &body)
            .await
    }
}
