//! An external Schema Registry speaking Confluent's REST API (Confluent's
//! own, Karapace, Apicurio Registry's `/apis/ccompat/v7`).
//!
//! At startup, when `kafka.schema_registry_url` is set, [`register`] puts
//! the published schema (`schemas::confluent::published_schema`, the one
//! value schema of every inkstream topic) under subject `<topic>-value`
//! (TopicNameStrategy) of each topic inkstream produces, with the subject's
//! compatibility set to `BACKWARD`. The ids the registry answers replace the
//! built-in id in the framing and the `schema_id` header ([`SchemaIds`]), so
//! a consumer with a registry client (confluent-kafka's `AvroDeserializer`)
//! fetches the schema from the registry by id. An incompatible change is
//! refused by the registry; inkstream then does not start and says which
//! subject and what the registry answered.
//!
//! Order per subject: set `BACKWARD` first, so that the registration is
//! checked against what is there; a registry that keeps no configuration
//! for a subject with no versions (Apicurio answers 404) gets it right after
//! the first registration.

use crate::secret::Secret;
use crate::tls::{TlsError, TlsFiles};
use schemas::{Classify, Fault};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// Settings of the external registry.
#[derive(Debug, Clone)]
pub struct RegistryConfig {
    /// Base URL of the Confluent-compatible API, e.g.
    /// `http://127.0.0.1:8081` or `https://host/apis/ccompat/v7`.
    pub url: String,
    /// HTTP basic auth (both or neither).
    pub username: Option<String>,
    pub password: Option<Secret>,
    /// `[kafka.schema_registry_tls]`: CA and client pair for `https://`.
    pub tls: TlsFiles,
    /// Per request (default 10 s).
    pub timeout: Duration,
}

impl RegistryConfig {
    pub fn new(url: impl Into<String>) -> RegistryConfig {
        RegistryConfig {
            url: url.into(),
            username: None,
            password: None,
            tls: TlsFiles::default(),
            timeout: Duration::from_secs(10),
        }
    }
}

/// The schema id to frame each topic's records with: the registry's, or
/// the built-in one (`schemas::confluent::schema_id`) where none was
/// registered.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SchemaIds {
    by_topic: Arc<BTreeMap<String, u32>>,
}

impl SchemaIds {
    /// Ids by topic, as a registry answered them.
    pub fn from_map(by_topic: BTreeMap<String, u32>) -> SchemaIds {
        SchemaIds {
            by_topic: Arc::new(by_topic),
        }
    }

    /// The id of `topic`'s value schema.
    pub fn for_topic(&self, topic: &str) -> u32 {
        self.by_topic
            .get(topic)
            .copied()
            .unwrap_or_else(schemas::confluent::schema_id)
    }

    /// Whether records framed with `id` carry the published schema.
    pub fn knows(&self, id: u32) -> bool {
        id == schemas::confluent::schema_id() || self.by_topic.values().any(|v| *v == id)
    }

    /// Whether an external registry gave the ids.
    pub fn is_external(&self) -> bool {
        !self.by_topic.is_empty()
    }
}

/// Why the schemas could not be registered; `serve` does not start.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("kafka.schema_registry_url: `{0}` is not an http(s) URL")]
    BadUrl(String),
    #[error(
        "kafka.schema_registry_username and kafka.schema_registry_password go together: set both or neither"
    )]
    HalfCredentials,
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("schema registry: cannot build the HTTP client: {0}")]
    Client(reqwest::Error),
    #[error("schema registry at {url}: {source}")]
    Unreachable { url: String, source: reqwest::Error },
    #[error(
        "schema registry refused the schema of subject {subject}: it is not compatible (BACKWARD) \
         with the registered versions; the registry says: {message}"
    )]
    Incompatible { subject: String, message: String },
    #[error("schema registry: {action} for subject {subject} answered {status}: {message}")]
    Refused {
        subject: String,
        action: &'static str,
        status: u16,
        message: String,
    },
}

impl Classify for RegistryError {
    fn fault(&self) -> Fault {
        match self {
            RegistryError::BadUrl(_) | RegistryError::HalfCredentials | RegistryError::Tls(_) => {
                Fault::Config
            }
            // An incompatible change is the deployment's to resolve (a new
            // subject, or a compatible schema); a refusal (auth, 5xx) too,
            // or the registry's.
            RegistryError::Incompatible { .. } => Fault::Config,
            RegistryError::Client(_) => Fault::Internal,
            RegistryError::Unreachable { .. } | RegistryError::Refused { .. } => Fault::External,
        }
    }
}

/// The subject of a topic's value schema (TopicNameStrategy).
pub fn value_subject(topic: &str) -> String {
    format!("{topic}-value")
}

/// Registers the published schema for every topic in `topics` (see the
/// module doc) and returns the registry's ids.
pub async fn register(
    config: &RegistryConfig,
    topics: &[String],
) -> Result<SchemaIds, RegistryError> {
    let registry = Registry::new(config)?;
    let mut ids = BTreeMap::new();
    for topic in topics {
        let id = registry.register(&value_subject(topic)).await?;
        ids.insert(topic.clone(), id);
    }
    Ok(SchemaIds::from_map(ids))
}

struct Registry {
    base: String,
    http: reqwest::Client,
    auth: Option<(String, Secret)>,
}

impl Registry {
    fn new(config: &RegistryConfig) -> Result<Registry, RegistryError> {
        let base = config.url.trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(RegistryError::BadUrl(config.url.clone()));
        }
        let auth = match (&config.username, &config.password) {
            (Some(u), Some(p)) => Some((u.clone(), p.clone())),
            (None, None) => None,
            _ => return Err(RegistryError::HalfCredentials),
        };
        crate::tls::install_provider();
        let loaded = config.tls.load("kafka.schema_registry_tls")?;
        let mut b = reqwest::Client::builder()
            .use_rustls_tls()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(config.timeout)
            .timeout(config.timeout);
        b = loaded.apply(b).map_err(RegistryError::Client)?;
        Ok(Registry {
            base,
            http: b.build().map_err(RegistryError::Client)?,
            auth,
        })
    }

    /// Sends `body` to `path`; the status and the JSON reply (`Null` when
    /// it is not JSON).
    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: &Value,
    ) -> Result<(u16, Value), RegistryError> {
        let url = format!("{}{path}", self.base);
        let mut req = self
            .http
            .request(method, &url)
            .header("Content-Type", "application/vnd.schemaregistry.v1+json")
            .header(
                "Accept",
                "application/vnd.schemaregistry.v1+json, application/json",
            )
            .json(body);
        if let Some((user, password)) = &self.auth {
            req = req.basic_auth(user, Some(password.expose()));
        }
        let unreachable = |source| RegistryError::Unreachable {
            url: self.base.clone(),
            source,
        };
        let resp = req.send().await.map_err(unreachable)?;
        let status = resp.status().as_u16();
        let text = resp.text().await.map_err(unreachable)?;
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Ok((status, value))
    }

    async fn set_backward(&self, subject: &str) -> Result<bool, RegistryError> {
        let (status, reply) = self
            .send(
                reqwest::Method::PUT,
                &format!("/config/{subject}"),
                &json!({"compatibility": "BACKWARD"}),
            )
            .await?;
        match status {
            200..=299 => Ok(true),
            404 => Ok(false),
            _ => Err(refused(
                subject,
                "setting BACKWARD compatibility",
                status,
                &reply,
            )),
        }
    }

    /// Registers the published schema under `subject`; its id.
    async fn register(&self, subject: &str) -> Result<u32, RegistryError> {
        let configured = self.set_backward(subject).await?;
        let (status, reply) = self
            .send(
                reqwest::Method::POST,
                &format!("/subjects/{subject}/versions"),
                &json!({"schema": schemas::confluent::published_schema(), "schemaType": "AVRO"}),
            )
            .await?;
        let id = match status {
            200..=299 => reply
                .get("id")
                .and_then(Value::as_u64)
                .and_then(|id| u32::try_from(id).ok())
                .ok_or_else(|| refused(subject, "registering the schema", status, &reply))?,
            409 => {
                return Err(RegistryError::Incompatible {
                    subject: subject.to_owned(),
                    message: message(&reply),
                });
            }
            _ => return Err(refused(subject, "registering the schema", status, &reply)),
        };
        if !configured && !self.set_backward(subject).await? {
            return Err(refused(
                subject,
                "setting BACKWARD compatibility",
                404,
                &json!("subject not found right after its registration"),
            ));
        }
        tracing::info!(subject, id, "schema registered in the external registry");
        Ok(id)
    }
}

/// The registry's own words: `message` of its error body, or the body.
fn message(reply: &Value) -> String {
    match reply.get("message").and_then(Value::as_str) {
        Some(m) => m.to_owned(),
        None => match reply {
            Value::String(s) => s.chars().take(500).collect(),
            other => other.to_string().chars().take(500).collect(),
        },
    }
}

fn refused(subject: &str, action: &'static str, status: u16, reply: &Value) -> RegistryError {
    RegistryError::Refused {
        subject: subject.to_owned(),
        action,
        status,
        message: message(reply),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_fall_back_to_the_built_in_one() {
        let builtin = schemas::confluent::schema_id();
        let none = SchemaIds::default();
        assert_eq!(none.for_topic("inkstream.events.writing"), builtin);
        assert!(none.knows(builtin) && !none.knows(builtin ^ 1) && !none.is_external());
        let ids = SchemaIds::from_map(BTreeMap::from([("t".to_owned(), 7)]));
        assert_eq!(ids.for_topic("t"), 7);
        assert_eq!(ids.for_topic("u"), builtin);
        assert!(ids.knows(7) && ids.knows(builtin) && !ids.knows(8));
    }

    #[test]
    fn settings_are_checked_before_anything_is_sent() {
        let mut c = RegistryConfig::new("ftp://x");
        assert!(matches!(Registry::new(&c), Err(RegistryError::BadUrl(_))));
        c.url = "http://127.0.0.1:1".into();
        c.username = Some("u".into());
        assert!(matches!(
            Registry::new(&c),
            Err(RegistryError::HalfCredentials)
        ));
    }

    #[test]
    fn the_registry_message_is_kept() {
        let body = json!({"error_code": 409, "message": "Incompatible schema: reader field x"});
        assert_eq!(message(&body), "Incompatible schema: reader field x");
        assert_eq!(message(&json!("plain text")), "plain text");
    }
}
