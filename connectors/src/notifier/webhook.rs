//! Webhooks: the delivery as JSON, POSTed to the user's `webhook_url` or
//! else to every configured URL, signed so receivers can verify it:
//! `X-Inkstream-Signature: sha256=<hex HMAC-SHA256(secret, body)>`, plus
//! `Idempotency-Key: <delivery id>`. A delivery to several URLs succeeds
//! when all do (a retry re-sends to all: receivers dedupe by the key).

use super::config::WebhookConfig;
use super::error::DeliveryError;
use super::policy::Delivery;
use super::template;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The signature header value of `body` under `secret`.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    // HMAC accepts keys of any length: `new_from_slice` cannot fail.
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(m) => m,
        Err(_) => return String::new(),
    };
    mac.update(body);
    format!("sha256={}", crate::auth::hex(&mac.finalize().into_bytes()))
}

/// Checks a signature header (constant time).
pub fn verify(secret: &[u8], body: &[u8], header: &str) -> bool {
    let Some(hex) = header.strip_prefix("sha256=") else {
        return false;
    };
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        return false;
    };
    mac.update(body);
    let bytes: Option<Vec<u8>> = (0..hex.len())
        .step_by(2)
        .map(|i| {
            hex.get(i..i + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        })
        .collect();
    bytes.is_some_and(|b| mac.verify_slice(&b).is_ok())
}

/// The webhook channel.
#[derive(Clone)]
pub struct Webhook {
    pub http: super::outbound::Outbound,
    pub config: WebhookConfig,
}

impl Webhook {
    pub async fn send(&self, d: &Delivery, user_url: Option<&str>) -> Result<(), DeliveryError> {
        let urls: Vec<&str> = match user_url {
            Some(u) => vec![u],
            None => self.config.urls.iter().map(String::as_str).collect(),
        };
        if urls.is_empty() {
            return Err(DeliveryError::permanent("no webhook url configured"));
        }
        let body = serde_json::to_vec(&template::webhook(d))
            .map_err(|e| DeliveryError::permanent(e.to_string()))?;
        for url in urls {
            let mut req = self
                .http
                .post("webhook", url)?
                .header("content-type", "application/json")
                .header("Idempotency-Key", &d.id)
                .body(body.clone());
            if let Some(secret) = &self.config.secret {
                req = req.header("X-Inkstream-Signature", sign(secret.as_bytes(), &body));
            }
            self.http.send("webhook", req).await?;
        }
        Ok(())
    }
}
