//! How inkstream reaches the brokers: [`Brokers`] (the bootstrap list and
//! its [`Security`]) and [`Brokers::client_config`], the one place where
//! every rdkafka client's settings are made (mirror, dataflow source,
//! derived producer, topic administration, the access check).
//!
//! Security is passed through to librdkafka: `security.protocol`
//! (`plaintext`, `ssl`, `sasl_plaintext`, `sasl_ssl`), the SASL mechanism
//! (`PLAIN`, `SCRAM-SHA-256`, `SCRAM-SHA-512`) with its credentials, and
//! the TLS files (CA bundle, optional client certificate; system roots when
//! no CA is set). librdkafka does its TLS with OpenSSL (see the workspace
//! `Cargo.toml`): the only part of the binary that does not use rustls.
//!
//! [`check_access`] connects once at startup and turns refused credentials
//! or a failed TLS handshake into an error naming the setting to fix, and
//! every client counts such failures later on
//! (`inkstream_kafka_auth_failures_total`).

use crate::metrics::Metrics;
use crate::tls::{TlsError, TlsFiles};
use rdkafka::ClientConfig;
use rdkafka::client::ClientContext;
use rdkafka::consumer::ConsumerContext;
use rdkafka::error::KafkaError as RdKafkaError;
use rdkafka::types::RDKafkaErrorCode;
use serde::Deserialize;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// `kafka.security_protocol`: librdkafka's `security.protocol`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SecurityProtocol {
    /// No TLS, no authentication (default: a broker on a private network).
    #[default]
    #[serde(alias = "PLAINTEXT")]
    Plaintext,
    /// TLS, no SASL (optionally a client certificate).
    #[serde(alias = "SSL")]
    Ssl,
    /// SASL without TLS: credentials and data in the clear on the wire.
    #[serde(alias = "SASL_PLAINTEXT")]
    SaslPlaintext,
    /// SASL over TLS: what managed Kafka services ask for.
    #[serde(alias = "SASL_SSL")]
    SaslSsl,
}

impl SecurityProtocol {
    /// The value librdkafka takes, also how the setting is written.
    pub fn as_str(self) -> &'static str {
        match self {
            SecurityProtocol::Plaintext => "plaintext",
            SecurityProtocol::Ssl => "ssl",
            SecurityProtocol::SaslPlaintext => "sasl_plaintext",
            SecurityProtocol::SaslSsl => "sasl_ssl",
        }
    }

    fn uses_sasl(self) -> bool {
        matches!(
            self,
            SecurityProtocol::SaslPlaintext | SecurityProtocol::SaslSsl
        )
    }

    fn uses_tls(self) -> bool {
        matches!(self, SecurityProtocol::Ssl | SecurityProtocol::SaslSsl)
    }
}

/// `kafka.sasl_mechanism`: the ones librdkafka has built in (no Kerberos).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum SaslMechanism {
    #[serde(rename = "PLAIN", alias = "plain")]
    Plain,
    #[serde(rename = "SCRAM-SHA-256", alias = "scram-sha-256")]
    ScramSha256,
    #[serde(rename = "SCRAM-SHA-512", alias = "scram-sha-512")]
    ScramSha512,
}

impl SaslMechanism {
    pub fn as_str(self) -> &'static str {
        match self {
            SaslMechanism::Plain => "PLAIN",
            SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
            SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
        }
    }
}

pub use crate::secret::Secret;

/// SASL credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sasl {
    pub mechanism: SaslMechanism,
    pub username: String,
    pub password: Secret,
}

/// How the clients protect and authenticate their connections.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Security {
    pub protocol: SecurityProtocol,
    /// Present exactly when `protocol` uses SASL.
    pub sasl: Option<Sasl>,
    /// Only with a protocol using TLS.
    pub tls: TlsFiles,
}

/// The settings as written in `[kafka]`, before [`SecuritySettings::check`].
#[derive(Debug, Clone, Default)]
pub struct SecuritySettings {
    pub protocol: SecurityProtocol,
    pub mechanism: Option<SaslMechanism>,
    pub username: Option<String>,
    pub password: Option<Secret>,
    pub tls: TlsFiles,
}

/// Why the Kafka security settings cannot be used; the message names the key.
#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    #[error("{key} is required with kafka.security_protocol = {protocol}{hint}")]
    Missing {
        key: &'static str,
        protocol: &'static str,
        hint: &'static str,
    },
    #[error(
        "{key} is set but kafka.security_protocol = {protocol} does not authenticate with SASL \
         (use sasl_ssl)"
    )]
    SaslUnused {
        key: &'static str,
        protocol: &'static str,
    },
    #[error(
        "kafka.tls is set but kafka.security_protocol = {protocol} does not use TLS (use ssl or \
         sasl_ssl)"
    )]
    TlsUnused { protocol: &'static str },
    #[error(transparent)]
    Tls(#[from] TlsError),
}

impl schemas::Classify for SecurityError {
    fn fault(&self) -> schemas::Fault {
        schemas::Fault::Config
    }
}

impl SecuritySettings {
    /// Checks that the settings fit together and that the TLS files are
    /// readable PEM; the message of every refusal names the key.
    pub fn check(self) -> Result<Security, SecurityError> {
        let protocol = self.protocol.as_str();
        let sasl = if self.protocol.uses_sasl() {
            let missing = |key, hint| SecurityError::Missing {
                key,
                protocol,
                hint,
            };
            let mechanism = self.mechanism.ok_or(missing(
                "kafka.sasl_mechanism",
                " (PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512)",
            ))?;
            let username = self
                .username
                .filter(|u| !u.is_empty())
                .ok_or(missing("kafka.sasl_username", ""))?;
            let password = self.password.filter(|p| !p.is_empty()).ok_or(missing(
                "kafka.sasl_password",
                " (or the environment variable INKSTREAM_KAFKA_SASL_PASSWORD)",
            ))?;
            Some(Sasl {
                mechanism,
                username,
                password,
            })
        } else {
            for (key, set) in [
                ("kafka.sasl_mechanism", self.mechanism.is_some()),
                ("kafka.sasl_username", self.username.is_some()),
                ("kafka.sasl_password", self.password.is_some()),
            ] {
                if set {
                    return Err(SecurityError::SaslUnused { key, protocol });
                }
            }
            None
        };
        if self.protocol.uses_tls() {
            self.tls.load("kafka.tls")?;
        } else if self.tls.is_set() {
            return Err(SecurityError::TlsUnused { protocol });
        }
        Ok(Security {
            protocol: self.protocol,
            sasl,
            tls: self.tls,
        })
    }
}

/// Where the brokers are and how to reach them. `Display` shows the
/// bootstrap list and the protocol only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Brokers {
    /// `host:port[,host:port]`.
    pub bootstrap: String,
    pub security: Security,
    /// The value schema ids of the topics (an external registry's, or the
    /// built-in one): every producer frames with them, the source accepts them.
    pub schema_ids: super::registry::SchemaIds,
    /// Where a client made from these brokers reports a fatal error (the
    /// instance that made them stops on it: [`super::fatal`]).
    pub fatal: super::FatalSignal,
}

impl Brokers {
    /// Brokers reached without TLS or authentication.
    pub fn plaintext(bootstrap: impl Into<String>) -> Brokers {
        Brokers {
            bootstrap: bootstrap.into(),
            security: Security::default(),
            schema_ids: Default::default(),
            fatal: Default::default(),
        }
    }

    /// The base settings of every client: the bootstrap list, inkstream's
    /// defaults and the security settings.
    pub fn client_config(&self) -> ClientConfig {
        let mut cfg = ClientConfig::new();
        cfg.set("bootstrap.servers", &self.bootstrap)
            // Names inkstream in the brokers' logs, metrics and quotas
            // (librdkafka's default is `rdkafka`); each long-running client
            // names its role (`inkstream-source`, `-derived`, `-mirror`, `-check`).
            .set("client.id", "inkstream")
            .set("socket.timeout.ms", "10000")
            // Topics are created explicitly through the admin API.
            .set("allow.auto.create.topics", "false");
        self.security.apply(&mut cfg);
        cfg
    }
}

impl std::fmt::Display for Brokers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({})",
            self.bootstrap,
            self.security.protocol.as_str()
        )
    }
}

// Tests and tools name brokers by address: plaintext.
impl From<&str> for Brokers {
    fn from(bootstrap: &str) -> Brokers {
        Brokers::plaintext(bootstrap)
    }
}

impl From<&String> for Brokers {
    fn from(bootstrap: &String) -> Brokers {
        Brokers::plaintext(bootstrap.as_str())
    }
}

impl From<String> for Brokers {
    fn from(bootstrap: String) -> Brokers {
        Brokers::plaintext(bootstrap)
    }
}

impl From<&Brokers> for Brokers {
    fn from(brokers: &Brokers) -> Brokers {
        brokers.clone()
    }
}

impl Security {
    /// Sets librdkafka's security properties. Certificate checking stays
    /// librdkafka's default: the chain against the CA (or the system roots)
    /// and the broker's host name against the certificate.
    fn apply(&self, cfg: &mut ClientConfig) {
        cfg.set("security.protocol", self.protocol.as_str());
        if let Some(sasl) = &self.sasl {
            cfg.set("sasl.mechanism", sasl.mechanism.as_str())
                .set("sasl.username", &sasl.username)
                .set("sasl.password", sasl.password.expose());
        }
        if self.protocol.uses_tls() {
            let path = |p: &std::path::Path| p.to_string_lossy().into_owned();
            if let Some(ca) = &self.tls.ca_file {
                cfg.set("ssl.ca.location", path(ca));
            }
            if let (Some(cert), Some(key)) = (&self.tls.cert_file, &self.tls.key_file) {
                cfg.set("ssl.certificate.location", path(cert))
                    .set("ssl.key.location", path(key));
            }
        }
    }
}

/// What kind of access failure a librdkafka error is, if it is one.
fn access_failure(code: Option<RDKafkaErrorCode>) -> Option<&'static str> {
    match code? {
        RDKafkaErrorCode::Authentication
        | RDKafkaErrorCode::SaslAuthenticationFailed
        | RDKafkaErrorCode::UnsupportedSASLMechanism
        | RDKafkaErrorCode::IllegalSASLState => Some("sasl"),
        RDKafkaErrorCode::SSL => Some("tls"),
        _ => None,
    }
}

/// The context of the long-running clients (dataflow source, derived
/// producer): counts refused credentials and failed TLS handshakes, and
/// logs librdkafka's global errors through `tracing`.
#[derive(Clone)]
pub struct Observed {
    pub metrics: Metrics,
    /// The client's name in the metric (`source`, `derived`, `check`).
    pub client: &'static str,
    /// Where a fatal error is reported (the instance stops on it).
    pub fatal: super::FatalSignal,
}

impl Observed {
    /// Counts and logs one of librdkafka's global errors.
    pub fn observe(&self, error: &RdKafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::Fatal) {
            // The client can no longer produce or consume (e.g. an
            // idempotent producer's broken sequence): said loudly.
            self.fatal.raise(
                &self.metrics,
                super::FatalError {
                    client: self.client,
                    code: None,
                    reason: reason.to_owned(),
                },
            );
            return;
        }
        match access_failure(error.rdkafka_error_code()) {
            Some(kind) => {
                self.metrics
                    .kafka_auth_failures
                    .with_label_values(&[self.client, kind])
                    .inc();
                tracing::error!(client = self.client, kind, %error, reason, "kafka refused the connection");
            }
            None => tracing::debug!(client = self.client, %error, reason, "kafka client error"),
        }
    }
}

impl ClientContext for Observed {
    fn error(&self, error: RdKafkaError, reason: &str) {
        self.observe(&error, reason);
    }
}

impl ConsumerContext for Observed {}

/// The access check's context: also keeps the first access failure.
struct Probe {
    observed: Observed,
    first: Mutex<Option<(&'static str, String)>>,
}

impl ClientContext for Probe {
    fn error(&self, error: RdKafkaError, reason: &str) {
        self.observed.observe(&error, reason);
        if let Some(kind) = access_failure(error.rdkafka_error_code()) {
            let mut first = self.first.lock().unwrap_or_else(|p| p.into_inner());
            first.get_or_insert_with(|| (kind, reason.to_owned()));
        }
    }
}

impl rdkafka::producer::ProducerContext for Probe {
    type DeliveryOpaque = ();
    fn delivery(&self, _: &rdkafka::producer::DeliveryResult<'_>, _: ()) {}
}

/// Why [`check_access`] refused to go on.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error(
        "Kafka refused the SASL credentials: check kafka.sasl_username ({username:?}) and \
         kafka.sasl_password (or INKSTREAM_KAFKA_SASL_PASSWORD) for kafka.sasl_mechanism = \
         {mechanism} on {bootstrap}: {reason}"
    )]
    Credentials {
        username: String,
        mechanism: &'static str,
        bootstrap: String,
        reason: String,
    },
    #[error(
        "the TLS handshake with Kafka failed: check kafka.tls.ca_file (the CA that signed the \
         brokers' certificates; system roots when unset), kafka.tls.cert_file/key_file and \
         kafka.security_protocol = {protocol} for {bootstrap}: {reason}"
    )]
    Tls {
        protocol: &'static str,
        bootstrap: String,
        reason: String,
    },
    #[error("kafka client error: {0}")]
    Client(#[from] RdKafkaError),
}

impl schemas::Classify for AccessError {
    fn fault(&self) -> schemas::Fault {
        match self {
            AccessError::Credentials { .. } | AccessError::Tls { .. } => schemas::Fault::Config,
            AccessError::Client(_) => schemas::Fault::External,
        }
    }
}

/// Connects to `brokers` and asks for metadata, for up to `wait`: refused
/// credentials or a failed TLS handshake are an error naming the settings
/// (counted as `inkstream_kafka_auth_failures_total{client="check"}`).
/// Brokers that do not answer at all are not: the clients retry, as they do
/// when the brokers go away later (a warning says so). Blocking.
pub fn check_access(
    brokers: &Brokers,
    metrics: &Metrics,
    wait: Duration,
) -> Result<(), AccessError> {
    use rdkafka::producer::{BaseProducer, Producer};
    let probe = Probe {
        observed: Observed {
            metrics: metrics.clone(),
            client: "check",
            fatal: brokers.fatal.clone(),
        },
        first: Mutex::new(None),
    };
    let producer: BaseProducer<Probe> = brokers
        .client_config()
        .set("client.id", "inkstream-check")
        .create_with_context(probe)?;
    let deadline = Instant::now() + wait;
    let failure = loop {
        // Serves the error callbacks.
        producer.poll(Duration::from_millis(50));
        if let Some(f) = producer
            .context()
            .first
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            break Some(f);
        }
        if Instant::now() >= deadline {
            break None;
        }
        match producer
            .client()
            .fetch_metadata(None, Duration::from_millis(500))
        {
            Ok(_) => return Ok(()),
            Err(e) => match access_failure(e.rdkafka_error_code()) {
                Some(kind) => break Some((kind, e.to_string())),
                None => continue,
            },
        }
    };
    let bootstrap = brokers.bootstrap.clone();
    match failure {
        Some(("sasl", reason)) => {
            let sasl = brokers.security.sasl.as_ref();
            Err(AccessError::Credentials {
                username: sasl.map(|s| s.username.clone()).unwrap_or_default(),
                mechanism: sasl.map_or("none", |s| s.mechanism.as_str()),
                bootstrap,
                reason,
            })
        }
        Some((_, reason)) => Err(AccessError::Tls {
            protocol: brokers.security.protocol.as_str(),
            bootstrap,
            reason,
        }),
        None => {
            tracing::warn!(brokers = %brokers, wait_ms = wait.as_millis() as u64,
                "kafka did not answer the access check; starting anyway (the clients retry)");
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(protocol: SecurityProtocol) -> SecuritySettings {
        SecuritySettings {
            protocol,
            mechanism: Some(SaslMechanism::ScramSha512),
            username: Some("inkstream".into()),
            password: Some(Secret::new("s3cret-pw")),
            tls: TlsFiles::default(),
        }
    }

    #[test]
    fn sasl_ssl_settings_reach_librdkafka_and_the_password_is_never_printed() {
        let dir = std::env::temp_dir().join(format!("inkstream-kafka-sec-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // Any certificate will do for the PEM check.
        let ca = rcgen_free_ca();
        let ca_path = dir.join("ca.pem");
        std::fs::write(&ca_path, ca).unwrap();
        let mut s = settings(SecurityProtocol::SaslSsl);
        s.tls.ca_file = Some(ca_path.clone());
        let brokers = Brokers {
            bootstrap: "b1:9093,b2:9093".into(),
            security: s.check().unwrap(),
            schema_ids: Default::default(),
            fatal: Default::default(),
        };
        let cfg = brokers.client_config();
        assert_eq!(cfg.get("bootstrap.servers"), Some("b1:9093,b2:9093"));
        assert_eq!(cfg.get("security.protocol"), Some("sasl_ssl"));
        assert_eq!(cfg.get("sasl.mechanism"), Some("SCRAM-SHA-512"));
        assert_eq!(cfg.get("sasl.username"), Some("inkstream"));
        assert_eq!(cfg.get("sasl.password"), Some("s3cret-pw"));
        assert_eq!(cfg.get("ssl.ca.location"), ca_path.to_str());
        assert_eq!(cfg.get("ssl.certificate.location"), None);
        // librdkafka accepts them all (it was built with OpenSSL, so SCRAM
        // and TLS are there).
        let created: Result<rdkafka::producer::BaseProducer, _> = cfg.create();
        assert!(created.is_ok(), "{:?}", created.err());
        for shown in [format!("{brokers}"), format!("{brokers:?}")] {
            assert!(!shown.contains("s3cret-pw"), "{shown}");
        }
        assert_eq!(brokers.to_string(), "b1:9093,b2:9093 (sasl_ssl)");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn plaintext_sets_no_credentials_and_addresses_convert_to_plaintext() {
        let cfg = Brokers::from("127.0.0.1:9092").client_config();
        assert_eq!(cfg.get("security.protocol"), Some("plaintext"));
        assert_eq!(cfg.get("sasl.username"), None);
        assert_eq!(cfg.get("ssl.ca.location"), None);
    }

    #[test]
    fn settings_that_do_not_fit_together_name_their_key() {
        let e = |s: SecuritySettings| s.check().unwrap_err().to_string();
        let mut s = settings(SecurityProtocol::SaslSsl);
        s.password = None;
        assert!(e(s).contains("kafka.sasl_password"));
        let mut s = settings(SecurityProtocol::SaslPlaintext);
        s.mechanism = None;
        assert!(e(s).contains("kafka.sasl_mechanism"));
        let mut s = settings(SecurityProtocol::SaslSsl);
        s.username = Some(String::new());
        assert!(e(s).contains("kafka.sasl_username"));
        // Credentials the protocol would ignore.
        let msg = e(settings(SecurityProtocol::Ssl));
        assert!(
            msg.contains("kafka.sasl_mechanism") && msg.contains("sasl_ssl"),
            "{msg}"
        );
        let mut s = SecuritySettings::default();
        s.tls.ca_file = Some("/x.pem".into());
        assert!(e(s).contains("kafka.tls"));
        let mut s = settings(SecurityProtocol::SaslSsl);
        s.tls.ca_file = Some("/nonexistent/ca.pem".into());
        assert!(e(s).contains("kafka.tls.ca_file"));
    }

    #[test]
    fn the_settings_read_like_kafkas_own_spelling() {
        #[derive(Deserialize)]
        struct T {
            p: SecurityProtocol,
            q: SecurityProtocol,
            m: SaslMechanism,
        }
        let t: T =
            serde_json::from_str(r#"{"p":"sasl_ssl","q":"SASL_SSL","m":"SCRAM-SHA-512"}"#).unwrap();
        assert_eq!(t.p, SecurityProtocol::SaslSsl);
        assert_eq!(t.q, SecurityProtocol::SaslSsl);
        assert_eq!(t.m, SaslMechanism::ScramSha512);
    }

    /// A self-signed certificate made with no test dependency: a fixed one.
    fn rcgen_free_ca() -> &'static str {
        include_str!("../../tests/fixtures/kafka-test-ca.pem")
    }
}
