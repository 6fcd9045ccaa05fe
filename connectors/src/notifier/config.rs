//! `[notifications]`: the notifier's settings ([`NotifierConfig`]) and its
//! channel sections (SMTP, HTTP APIs, webhook, retries).

use super::policy::{Channel, PolicyConfig, Preferences};
use serde::Deserialize;
use std::collections::BTreeMap;

/// `[notifications]`: where notifications go and how they are retried.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NotifierConfig {
    /// Run the notifier in `serve` (default true).
    pub enabled: bool,
    /// Who `role:admin` alerts (e.g. `system.error`) go to: user ids (default none).
    pub admins: Vec<String>,
    /// Who `project:<id>` alerts go to: project id → member user ids (default none).
    pub projects: BTreeMap<String, Vec<String>>,
    /// Preferences of users who have not set their own.
    pub defaults: Preferences,
    /// Auto-mute window for a `(user, dedup_key)`, in seconds (default 3600).
    pub mute_window_s: u64,
    /// MEDIUM batching window for email, SMS and webhook, in seconds
    /// (default 60); in-app is never batched.
    pub batch_window_s: u64,
    /// Hold non-critical in-app/email while the user is in FLOW_STATE
    /// (default true; each user may also turn it off).
    pub flow_hold: bool,
    /// Longest flow hold for one stretch, in seconds (default 7200): a lost
    /// pause must not hold notifications forever.
    pub flow_hold_max_s: u64,
    /// Most items queued per user in each of its digest, quiet-hours hold,
    /// MEDIUM batch and flow hold (default 1000); the oldest are dropped
    /// (counted as `failed`).
    pub max_queued_per_user: usize,
    /// Bound of the queue from the dataflow to the notifier, in events (default 10 000).
    pub queue: usize,
    /// How long alert ids and delivered ids are remembered, in seconds (default 7 days).
    pub dedup_ttl_s: u64,
    /// Stored in-app notifications per user; older ones are dropped (default 500).
    pub in_app_keep: usize,
    pub retry: RetryConfig,
    pub smtp: Option<SmtpConfig>,
    pub email_api: Option<HttpApiConfig>,
    pub sms: Option<HttpApiConfig>,
    pub webhook: WebhookConfig,
    /// Let webhooks and the email/SMS APIs reach loopback, private,
    /// link-local and metadata addresses (default false: such destinations
    /// are refused, so that a `webhook_url` cannot reach internal services).
    pub allow_private_destinations: bool,
    /// `[notifications.tls]`: a CA trusted for https besides the system
    /// roots (`ca_file`), and a client certificate (`cert_file`/`key_file`)
    /// for providers that require one. Also used by SMTP.
    pub tls: crate::tls::TlsFiles,
}

impl Default for NotifierConfig {
    fn default() -> Self {
        NotifierConfig {
            enabled: true,
            admins: Vec::new(),
            projects: BTreeMap::new(),
            defaults: Preferences::default(),
            mute_window_s: 3600,
            batch_window_s: 60,
            flow_hold: true,
            flow_hold_max_s: 7200,
            max_queued_per_user: 1000,
            queue: 10_000,
            dedup_ttl_s: 7 * 24 * 3600,
            in_app_keep: 500,
            retry: RetryConfig::default(),
            smtp: None,
            email_api: None,
            sms: None,
            webhook: WebhookConfig::default(),
            allow_private_destinations: false,
            tls: Default::default(),
        }
    }
}

/// `[notifications.retry]`: transient failures (5xx, 429, timeouts,
/// connection errors) are retried; 4xx are not.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// Tries in all, the first included (default 5).
    pub max_attempts: u32,
    /// Delay before the first retry, in ms (default 1000); doubles each try.
    pub base_ms: u64,
    /// Largest delay, in ms (default 300 000).
    pub max_ms: u64,
    /// Random spread of each delay, as a fraction (default 0.2 = ±20 %).
    pub jitter: f64,
    /// Timeout of one request to a provider, in ms (default 10 000).
    pub timeout_ms: u64,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            max_attempts: 5,
            base_ms: 1000,
            max_ms: 300_000,
            jitter: 0.2,
            timeout_ms: 10_000,
        }
    }
}

/// `[notifications.smtp]`: email by SMTP (used instead of `email_api` when both are set).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpConfig {
    pub host: String,
    /// Default 25.
    #[serde(default = "default_smtp_port")]
    pub port: u16,
    /// Sender address, e.g. `inkstream <noreply@example.com>`.
    pub from: String,
    /// AUTH PLAIN/LOGIN credentials (default none). Sent only over TLS
    /// unless `tls = "none"` says otherwise.
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    /// `starttls` (upgrade required, submission on 587), `implicit` (TLS
    /// from the first byte, 465) or `none` (plain, a local relay). Default:
    /// `implicit` on port 465, `starttls` on 587, `none` otherwise. The
    /// server is verified against the system roots plus
    /// `notifications.tls.ca_file`.
    #[serde(default)]
    pub tls: Option<SmtpTls>,
}

/// `notifications.smtp.tls`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SmtpTls {
    None,
    Starttls,
    Implicit,
}

impl SmtpConfig {
    /// `tls`, or the port's usual mode.
    pub fn tls_mode(&self) -> SmtpTls {
        self.tls.unwrap_or(match self.port {
            465 => SmtpTls::Implicit,
            587 => SmtpTls::Starttls,
            _ => SmtpTls::None,
        })
    }
}

fn default_smtp_port() -> u16 {
    25
}

/// A Brevo-style transactional HTTP API (`[notifications.email_api]`,
/// `[notifications.sms]`): `POST {base_url}/v3/smtp/email` and
/// `POST {base_url}/v3/transactionalSMS/sms` with the `api-key` header.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpApiConfig {
    pub base_url: String,
    pub api_key: String,
    /// Sender email address or SMS sender name.
    pub sender: String,
}

/// `[notifications.webhook]`: JSON POSTs signed with HMAC-SHA256.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhookConfig {
    /// Receivers of every webhook delivery (a user's own `webhook_url` replaces them).
    pub urls: Vec<String>,
    /// Signing secret: header `X-Inkstream-Signature: sha256=<hex HMAC of the body>`.
    pub secret: Option<String>,
    /// Whether users may set their own `webhook_url` (default false: only
    /// admins (users or keys with the `admin` scope) may, since the server POSTs to it).
    pub allow_user_urls: bool,
}

impl NotifierConfig {
    /// The policy's share of the settings.
    pub fn policy(&self) -> PolicyConfig {
        let mut available = vec![Channel::InApp];
        if self.smtp.is_some() || self.email_api.is_some() {
            available.push(Channel::Email);
        }
        if self.sms.is_some() {
            available.push(Channel::Sms);
        }
        if !self.webhook.urls.is_empty() {
            available.push(Channel::Webhook);
        }
        PolicyConfig {
            mute_window_ms: self.mute_window_s as i64 * 1000,
            batch_window_ms: self.batch_window_s as i64 * 1000,
            flow_hold: self.flow_hold,
            flow_hold_max_ms: self.flow_hold_max_s as i64 * 1000,
            max_queued_per_user: self.max_queued_per_user,
            available,
        }
    }

    /// Checks what serde cannot: `Err((key path, message))`.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let bad = |k: &str, m: &str| Err((format!("notifications.{k}"), m.to_owned()));
        if let Err((f, m)) = self.defaults.validate() {
            return bad(&format!("defaults.{f}"), &m);
        }
        if self.retry.max_attempts == 0 {
            return bad("retry.max_attempts", "must be at least 1");
        }
        if !(0.0..=1.0).contains(&self.retry.jitter) {
            return bad("retry.jitter", "expected 0..=1");
        }
        if self.queue == 0 {
            return bad("queue", "must be at least 1");
        }
        if let Some(s) = &self.smtp
            && s.from.parse::<lettre::message::Mailbox>().is_err()
        {
            return bad(
                "smtp.from",
                "expected an address such as `inkstream <noreply@example.com>`",
            );
        }
        Ok(())
    }

    /// User ids behind a recipient address: a user id, `role:admin`
    /// (`admins`) or `project:<id>` (`projects`). Unknown addresses resolve
    /// to nobody.
    pub fn resolve(&self, recipient: &str) -> Vec<String> {
        match recipient.split_once(':') {
            None => vec![recipient.to_owned()],
            Some(("role", "admin")) => self.admins.clone(),
            Some(("project", p)) => self.projects.get(p).cloned().unwrap_or_default(),
            Some(_) => Vec::new(),
        }
    }
}
