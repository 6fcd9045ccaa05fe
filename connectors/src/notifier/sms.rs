//! SMS through a Brevo-style HTTP API: `POST {base_url}/v3/transactionalSMS/sms`,
//! header `api-key`, the delivery id as `Idempotency-Key`.

use super::config::HttpApiConfig;
use super::error::DeliveryError;
use super::policy::Delivery;
use super::template;

/// The SMS channel.
#[derive(Clone)]
pub struct Sms {
    pub http: super::outbound::Outbound,
    pub config: HttpApiConfig,
}

impl Sms {
    pub async fn send(&self, d: &Delivery, phone: &str) -> Result<(), DeliveryError> {
        let url = format!(
            "{}/v3/transactionalSMS/sms",
            self.config.base_url.trim_end_matches('/')
        );
        let body = serde_json::json!({
            "sender": self.config.sender,
            "recipient": phone,
            "content": template::sms(d),
            "type": "transactional",
        });
        self.http
            .post_api("sms", &url, &self.config.api_key, &d.id, &body)
            .await
    }
}
