//! Configuration: one TOML file, CLI flags and env vars for the usual
//! suspects, and `--set dotted.key=value` overrides for any key.
//!
//! Precedence, lowest first: defaults < TOML file < flags/env < `--set`.
//! Every section denies unknown fields, and every error names the key path.

use serde::Deserialize;
use std::path::Path;
use std::time::Duration;

/// The whole configuration. Every field has a default, so nothing is required.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub redis: RedisConfig,
    pub kafka: KafkaConfig,
    pub ingest: IngestSettings,
    pub fanout: FanoutSettings,
    pub views: ViewsSettings,
    pub dataflow: DataflowConfig,
    pub wpm: crate::operators::live_wpm::LiveWpmConfig,
    pub sessions: crate::operators::sessions::SessionsConfig,
    pub presence: crate::operators::presence::PresenceConfig,
    pub conflicts: crate::operators::conflict_windows::ConflictWindowsConfig,
    pub team: crate::operators::team_metrics::TeamMetricsConfig,
    pub alerts: crate::operators::alert_windows::AlertsConfig,
    pub checkpoint: crate::runtime::checkpoint::CheckpointConfig,
    pub derived: DerivedSettings,
    pub flow: crate::operators::sessions::flow::FlowConfig,
    pub auth: AuthSettings,
    /// `[notifications]`: see `connectors::notifier::NotifierConfig` and docs/OPERATIONS.md.
    pub notifications: connectors::notifier::NotifierConfig,
}

/// `[views]`: the queryable views (docs/API.md "Views").
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ViewsSettings {
    /// Most keys per view (sessions, presence documents, conflict documents,
    /// team pairs, writing projects, live WPM users), in memory and in Redis
    /// (default 500000); past it new keys are dropped and counted in
    /// `inkstream_limit_hits_total{limit="view_keys"}`.
    pub max_keys: usize,
}

impl Default for ViewsSettings {
    fn default() -> Self {
        ViewsSettings {
            max_keys: connectors::view_store::ViewStoreConfig::default().max_keys,
        }
    }
}

/// `[derived]`: where `serve` writes derived events besides the WebSocket
/// fanout and the Kafka derived topics.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DerivedSettings {
    /// Append every derived event to `DIR/<type>.ndjson` (or `.avro`, see
    /// `format`; default: none). The
    /// files survive restarts and are made durable before each checkpoint
    /// completes.
    pub dir: Option<std::path::PathBuf>,
    /// How they are written: `"ndjson"` (default; `<type>.ndjson`) or
    /// `"avro"` (Avro object container files, `<type>.avro`). Also
    /// `replay --format`.
    pub format: OutputFormat,
}

/// How derived events are written (`derived.format`, `replay --format`;
/// `crate::file_sink`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum OutputFormat {
    /// One JSON object per line (`<type>.ndjson`), as the ingest API takes them.
    #[default]
    Ndjson,
    /// Avro object container files (`<type>.avro`) with the envelope schema
    /// in their header, one block per batch: about 40 % of the bytes of
    /// NDJSON, and ~15 % less CPU in `replay` (docs/BENCHMARKS.md).
    Avro,
}

impl OutputFormat {
    /// The file name extension.
    pub fn extension(self) -> &'static str {
        match self {
            OutputFormat::Ndjson => "ndjson",
            OutputFormat::Avro => "avro",
        }
    }
}

/// `[auth]`: with nothing set, authentication is off (and `serve` says so);
/// `serve` then refuses a non-loopback `server.bind` unless
/// `allow_anonymous = true`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSettings {
    /// Serve without credentials on a non-loopback address (default false):
    /// every caller who can reach the port is then an admin. Also lifts the
    /// rule that anonymous requests name a loopback `Host` (the guard
    /// against web pages rebinding their name to this machine).
    pub allow_anonymous: bool,
    /// HS256 secret of user JWTs (`INKSTREAM_JWT_SECRET`).
    pub jwt_secret: Option<String>,
    /// The identity provider's JSON Web Key Set (RS256/ES256 user tokens),
    /// e.g. `https://idp.example/.well-known/jwks.json`: https, or http to a
    /// loopback address only (default: none).
    pub jwks_url: Option<String>,
    /// `[auth.jwks_tls]`: `ca_file` trusted besides the system roots (a
    /// private provider), optional `cert_file`/`key_file`.
    pub jwks_tls: connectors::tls::TlsFiles,
    /// Least time between two fetches of the key set; a token naming an
    /// unknown `kid` refetches it at most this often (default 30 s).
    #[serde(deserialize_with = "crate::runtime::duration::deserialize")]
    pub jwks_min_refresh_interval: Duration,
    /// Keys older than this are refetched on the next token (default 15 min).
    #[serde(deserialize_with = "crate::runtime::duration::deserialize")]
    pub jwks_max_age: Duration,
    /// Accepted `aud` values of user tokens; when set, a token must carry
    /// one of them (default: `aud` not checked).
    pub jwt_audience: Vec<String>,
    /// Accepted `iss` values; when set, a token must carry one (default:
    /// not checked).
    pub jwt_issuer: Vec<String>,
    /// Clock skew tolerated on `exp` and `nbf` (default 0 s).
    #[serde(deserialize_with = "crate::runtime::duration::deserialize")]
    pub jwt_leeway: Duration,
    /// express-session cookie secret (`INKSTREAM_SESSION_SECRET`).
    pub session_secret: Option<String>,
    /// How often a WebSocket opened with a session cookie checks that its
    /// session still holds the same user, role and memberships; once it
    /// does not (logged out, expired, changed) the socket is closed with
    /// 4001 (default 30 s).
    #[serde(deserialize_with = "crate::runtime::duration::deserialize")]
    pub session_recheck: Duration,
    /// Apps allowed to ingest.
    pub api_keys: Vec<ApiKeySettings>,
}

/// `[[auth.api_keys]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeySettings {
    /// The app's name (logs, metrics, the namespace of its event ids).
    pub name: String,
    /// Hex SHA-256 of the key (`printf %s KEY | sha256sum`); the key itself is never stored.
    pub sha256: String,
    /// What it may do: `ingest`, `read`, `admin` (default `["ingest"]`;
    /// `admin` implies the others).
    #[serde(default)]
    pub scopes: Option<Vec<String>>,
    /// Categories it may ingest (default: all).
    #[serde(default)]
    pub categories: Option<Vec<String>>,
    /// Projects it may ingest into (default: all; when set, events without
    /// `project_id` are refused).
    #[serde(default)]
    pub projects: Option<Vec<String>>,
    /// Sustained events per second (default `ingest.app_rate_per_sec`).
    #[serde(default)]
    pub rate_per_sec: Option<f64>,
    /// Burst, in events (default twice the rate).
    #[serde(default)]
    pub burst: Option<f64>,
}

impl Default for AuthSettings {
    fn default() -> Self {
        AuthSettings {
            allow_anonymous: false,
            jwt_secret: None,
            jwks_url: None,
            jwks_tls: Default::default(),
            jwks_min_refresh_interval: Duration::from_secs(30),
            jwks_max_age: Duration::from_secs(15 * 60),
            jwt_audience: Vec::new(),
            jwt_issuer: Vec::new(),
            jwt_leeway: Duration::ZERO,
            session_secret: None,
            session_recheck: connectors::auth::DEFAULT_SESSION_RECHECK,
            api_keys: Vec::new(),
        }
    }
}

impl AuthSettings {
    pub fn to_auth_config(
        &self,
        ingest: &IngestSettings,
    ) -> Result<connectors::auth::AuthConfig, ConfigError> {
        let mut keys = Vec::new();
        for (i, k) in self.api_keys.iter().enumerate() {
            let path = format!("auth.api_keys[{i}]");
            if k.sha256.len() != 64 || !k.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(ConfigError::Invalid {
                    path: format!("{path}.sha256"),
                    message: "expected 64 hex digits (the SHA-256 of the key)".into(),
                });
            }
            let categories = match &k.categories {
                None => None,
                Some(list) => Some(
                    list.iter()
                        .map(|c| {
                            schemas::Category::parse(c).ok_or_else(|| ConfigError::Invalid {
                                path: format!("{path}.categories"),
                                message: format!("unknown category {c:?}"),
                            })
                        })
                        .collect::<Result<Vec<_>, _>>()?,
                ),
            };
            let scopes = match &k.scopes {
                None => vec![connectors::auth::Scope::Ingest],
                Some(list) => list
                    .iter()
                    .map(|s| {
                        connectors::auth::Scope::parse(s).ok_or_else(|| ConfigError::Invalid {
                            path: format!("{path}.scopes"),
                            message: format!("unknown scope {s:?} (ingest, read or admin)"),
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()?,
            };
            let per_second = k.rate_per_sec.unwrap_or(ingest.app_rate_per_sec);
            keys.push(connectors::auth::ApiKey {
                name: k.name.clone(),
                sha256: k.sha256.to_ascii_lowercase(),
                scopes,
                categories,
                projects: k.projects.clone(),
                rate: Some(connectors::auth::Rate {
                    per_second,
                    burst: k.burst.unwrap_or(per_second * 2.0),
                }),
            });
        }
        let jwks = self.jwks_url.as_ref().filter(|u| !u.is_empty()).map(|url| {
            connectors::auth::JwksConfig {
                tls: self.jwks_tls.clone(),
                min_refresh_interval: self.jwks_min_refresh_interval,
                max_age: self.jwks_max_age,
                ..connectors::auth::JwksConfig::new(url.clone())
            }
        });
        Ok(connectors::auth::AuthConfig {
            jwt_secret: self.jwt_secret.clone().filter(|s| !s.is_empty()),
            jwks,
            jwt: connectors::auth::JwtRules {
                audience: self.jwt_audience.clone(),
                issuer: self.jwt_issuer.clone(),
                leeway: self.jwt_leeway,
            },
            session_secret: self.session_secret.clone().filter(|s| !s.is_empty()),
            api_keys: keys,
            session_recheck: self.session_recheck,
        })
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address to bind (default `127.0.0.1`). Any other address needs a
    /// credential in `[auth]` or `auth.allow_anonymous = true`.
    pub bind: String,
    /// HTTP port (default 8080; `--port`, `PORT`).
    pub port: u16,
    /// How long shutdown waits for in-flight requests and the dataflow to drain.
    #[serde(deserialize_with = "crate::runtime::duration::deserialize")]
    pub shutdown_grace: Duration,
    /// Most open connections (HTTP and WebSocket); past it, accepting waits (default 50,000).
    pub max_connections: usize,
    /// How long a handler may run before answering 503 `request_timed_out` (default 30 s).
    #[serde(deserialize_with = "crate::runtime::duration::deserialize")]
    pub request_timeout: Duration,
    /// A client must send a request's whole head (request line and headers)
    /// within this long of starting it, or the connection is closed
    /// (default 10 s): the slowloris defence, which trickled bytes do not
    /// reset.
    #[serde(deserialize_with = "crate::runtime::duration::deserialize")]
    pub header_read_timeout: Duration,
    /// A connection that neither sends nor receives a byte for this long is
    /// closed (default 60 s; WebSocket clients are pinged more often).
    #[serde(deserialize_with = "crate::runtime::duration::deserialize")]
    pub idle_timeout: Duration,
    /// Origins (`https://app.example.com`) whose pages may open WebSockets
    /// without a token (authenticated by the session cookie, or with auth
    /// off), besides this server's own (default none). Token-authenticated
    /// upgrades are not checked.
    pub allowed_origins: Vec<String>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            bind: "127.0.0.1".into(),
            port: 8080,
            shutdown_grace: Duration::from_secs(10),
            max_connections: 50_000,
            request_timeout: Duration::from_secs(30),
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            allowed_origins: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    /// `redis://…` or `rediss://…` (TLS); unset means the embedded
    /// (in-process, not durable) log.
    pub url: Option<String>,
    /// `[redis.tls]`: `ca_file` (default: the system roots), optional
    /// `cert_file`/`key_file` (mutual TLS); only with `rediss://`.
    pub tls: connectors::tls::TlsFiles,
    /// Prefix of every key inkstream writes (default `inkstream`).
    pub prefix: String,
    /// Streams per category, keyed by partition key (default 8).
    pub shards: u32,
    /// Acknowledged entries younger than this are kept (for replays and
    /// event queries); older ones are trimmed (default 1 h).
    #[serde(deserialize_with = "crate::runtime::duration::deserialize")]
    pub retention: Duration,
    /// How often trimming runs (default 10 s).
    #[serde(deserialize_with = "crate::runtime::duration::deserialize")]
    pub trim_interval: Duration,
    /// Entries pending this long with a consumer that stopped are claimed by
    /// another (XAUTOCLAIM; default 30 s).
    #[serde(deserialize_with = "crate::runtime::duration::deserialize")]
    pub claim_idle_after: Duration,
    /// Replicas that must hold an append before it is acknowledged (`WAIT`;
    /// default 0: the primary's copy suffices). With 1 or more, a failover
    /// to a replica loses no acknowledged event; an append the replicas do
    /// not confirm within `replica_ack_timeout` answers 503 (a retry is
    /// deduplicated). The dataflow's and the mirror's lease takes and the
    /// checkpoints in Redis wait for them too.
    pub min_replica_acks: u32,
    /// How long an append waits for `min_replica_acks` (default 1 s).
    #[serde(deserialize_with = "crate::runtime::duration::deserialize")]
    pub replica_ack_timeout: Duration,
}

impl RedisConfig {
    /// `min_replica_acks` and `replica_ack_timeout`, for the writes that
    /// wait for replicas.
    pub fn replica_acks(&self) -> connectors::redis_conn::ReplicaAcks {
        connectors::redis_conn::ReplicaAcks {
            needed: self.min_replica_acks,
            timeout: self.replica_ack_timeout,
        }
    }
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            url: None,
            tls: Default::default(),
            prefix: "inkstream".into(),
            shards: 8,
            retention: Duration::from_secs(3600),
            trim_interval: Duration::from_secs(10),
            claim_idle_after: Duration::from_secs(30),
            min_replica_acks: 0,
            replica_ack_timeout: Duration::from_secs(1),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// `host:port[,host:port]`; unset means no Kafka.
    pub brokers: Option<String>,
    /// Partitions of the topics inkstream creates (default 8).
    pub partitions: i32,
    /// Copies of each partition of the topics inkstream creates (default
    /// -1: the broker's `default.replication.factor`).
    pub replication_factor: i32,
    /// Events the mirror reads and produces per page (default 2,000; from
    /// Redis an eighth as many entries per stream, each up to 16 events).
    pub mirror_batch: usize,
    /// Mirror pages produced whose delivery reports are awaited at once
    /// (default 4; 1 = read → produce → wait → acknowledge, serially).
    pub mirror_in_flight: usize,
    /// Pages per transactional round of a backlog (default 32; a round
    /// open 5 s commits with fewer): one commit per round. One page per
    /// round while the mirror keeps up.
    pub mirror_round_pages: usize,
    /// The mirror's producer while it keeps up with live traffic: `linger.ms`
    /// (default 1 ms) and `batch.size` (default 1,000,000 bytes).
    #[serde(deserialize_with = "crate::runtime::duration::deserialize")]
    pub mirror_live_linger: Duration,
    pub mirror_live_batch_bytes: usize,
    /// The mirror's producer while it drains a backlog (a read returned a
    /// full page): `linger.ms` (default 20 ms) and `batch.size` (default
    /// 4,000,000 bytes).
    #[serde(deserialize_with = "crate::runtime::duration::deserialize")]
    pub mirror_bulk_linger: Duration,
    pub mirror_bulk_batch_bytes: usize,
    /// Failures with a permanent error (too large for the topic, invalid)
    /// before the mirror dead-letters a record to `inkstream.mirror.dead_letter`
    /// (default 5).
    pub mirror_max_attempts: u32,
    /// The mirror produces in Kafka transactions, one per round of pages,
    /// and acknowledges a round's entries once it commits (default true):
    /// a failed round is aborted and produced again from its oldest entry,
    /// so `read_committed` readers see every partition in log order even
    /// after a broker outage. `false` for brokers without transactions
    /// (idempotent only: a page that times out during a long outage lands
    /// behind later ones).
    pub mirror_transactional: bool,
    /// How long a mirrored record may wait for the broker before its
    /// delivery fails and its round is produced again (default 30 s;
    /// librdkafka's `message.timeout.ms`).
    #[serde(deserialize_with = "crate::runtime::duration::deserialize")]
    pub mirror_delivery_timeout: Duration,
    /// Consumer group of the dataflow on the event topics (default `inkstream-dataflow`).
    pub dataflow_group: String,
    /// Delivery guarantee of the derived topics: `at_least_once` (default;
    /// produced as derived) or `exactly_once` (transactional, committed with
    /// each checkpoint; needs `checkpoint.dir`).
    pub derived_delivery: DerivedDelivery,
    /// librdkafka's `security.protocol`: `plaintext` (default), `ssl`,
    /// `sasl_plaintext` or `sasl_ssl` (Kafka's upper-case spelling works too).
    pub security_protocol: connectors::kafka::security::SecurityProtocol,
    /// `PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512`; required with the
    /// `sasl_*` protocols (default: none).
    pub sasl_mechanism: Option<connectors::kafka::security::SaslMechanism>,
    /// SASL user name (default: none).
    pub sasl_username: Option<String>,
    /// SASL password (`--kafka-sasl-password`, `INKSTREAM_KAFKA_SASL_PASSWORD`;
    /// default: none). Never logged.
    pub sasl_password: Option<connectors::kafka::security::Secret>,
    /// `[kafka.tls]`: `ca_file` (default: the system roots), optional
    /// `cert_file`/`key_file` (mutual TLS); only with `ssl`/`sasl_ssl`.
    pub tls: connectors::tls::TlsFiles,
    /// An external Schema Registry's Confluent-compatible API
    /// (`--schema-registry-url`, `INKSTREAM_SCHEMA_REGISTRY_URL`; default:
    /// none, the built-in schema id). Set: the value schema of every topic
    /// is registered there at startup (subject `<topic>-value`, BACKWARD)
    /// and the registry's ids frame the records.
    pub schema_registry_url: Option<String>,
    /// HTTP basic auth user of the registry (default: none).
    pub schema_registry_username: Option<String>,
    /// Its password (`INKSTREAM_SCHEMA_REGISTRY_PASSWORD`). Never logged.
    pub schema_registry_password: Option<connectors::kafka::security::Secret>,
    /// `[kafka.schema_registry_tls]`: `ca_file`, `cert_file`/`key_file`
    /// for an `https://` registry.
    pub schema_registry_tls: connectors::tls::TlsFiles,
    /// The ids the registry gave (set by `serve` at startup, not a setting).
    #[serde(skip)]
    pub schema_ids: connectors::kafka::registry::SchemaIds,
    /// Where this instance's Kafka clients report a fatal error (`serve`
    /// stops on it; not a setting).
    #[serde(skip)]
    pub fatal: connectors::kafka::FatalSignal,
}

/// The largest event `ingest.max_event_bytes` may allow with Kafka: a
/// record's value and headers stay under Kafka's 1,000,000-byte default.
const MAX_KAFKA_EVENT_BYTES: usize = 900_000;

impl KafkaConfig {
    /// How inkstream creates the topics it needs.
    pub fn new_topics(&self) -> connectors::kafka::NewTopics {
        connectors::kafka::NewTopics {
            partitions: self.partitions,
            replication_factor: self.replication_factor,
        }
    }

    /// The brokers with their security settings, checked (`None` without
    /// `kafka.brokers`); errors name the key.
    pub fn cluster(&self) -> Result<Option<connectors::kafka::Brokers>, ConfigError> {
        let Some(bootstrap) = &self.brokers else {
            return Ok(None);
        };
        let security = connectors::kafka::security::SecuritySettings {
            protocol: self.security_protocol,
            mechanism: self.sasl_mechanism,
            username: self.sasl_username.clone(),
            password: self.sasl_password.clone(),
            tls: self.tls.clone(),
        }
        .check()
        .map_err(|e| ConfigError::Invalid {
            path: "kafka".into(),
            message: e.to_string(),
        })?;
        Ok(Some(connectors::kafka::Brokers {
            bootstrap: bootstrap.clone(),
            security,
            schema_ids: self.schema_ids.clone(),
            fatal: self.fatal.clone(),
        }))
    }

    /// The external Schema Registry's settings (`None` without
    /// `kafka.schema_registry_url`).
    pub fn schema_registry(&self) -> Option<connectors::kafka::registry::RegistryConfig> {
        let url = self.schema_registry_url.as_ref()?;
        let mut rc = connectors::kafka::registry::RegistryConfig::new(url.clone());
        rc.username = self.schema_registry_username.clone();
        rc.password = self.schema_registry_password.clone();
        rc.tls = self.schema_registry_tls.clone();
        Some(rc)
    }
}

/// `kafka.derived_delivery`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DerivedDelivery {
    #[default]
    AtLeastOnce,
    ExactlyOnce,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            brokers: None,
            partitions: 8,
            replication_factor: connectors::kafka::BROKER_DEFAULT_REPLICATION,
            mirror_batch: 2_000,
            mirror_in_flight: 4,
            mirror_round_pages: 32,
            mirror_live_linger: connectors::kafka::mirror::ProducerTuning::LIVE.linger,
            mirror_live_batch_bytes: connectors::kafka::mirror::ProducerTuning::LIVE.batch_bytes,
            mirror_bulk_linger: connectors::kafka::mirror::ProducerTuning::BULK.linger,
            mirror_bulk_batch_bytes: connectors::kafka::mirror::ProducerTuning::BULK.batch_bytes,
            mirror_max_attempts: 5,
            mirror_transactional: true,
            mirror_delivery_timeout: connectors::kafka::mirror::DELIVERY_TIMEOUT,
            dataflow_group: "inkstream-dataflow".into(),
            derived_delivery: DerivedDelivery::AtLeastOnce,
            security_protocol: Default::default(),
            sasl_mechanism: None,
            sasl_username: None,
            sasl_password: None,
            tls: Default::default(),
            schema_registry_url: None,
            schema_registry_username: None,
            schema_registry_password: None,
            schema_registry_tls: Default::default(),
            schema_ids: Default::default(),
            fatal: Default::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestSettings {
    /// Largest request body in bytes (default 8 MiB).
    pub max_body_bytes: usize,
    /// Most events per request (default 10,000).
    pub max_batch_events: usize,
    /// Largest single event in bytes (default 64 KiB).
    pub max_event_bytes: usize,
    /// How far in the past `ts` may be (default 24 h).
    #[serde(deserialize_with = "crate::runtime::duration::deserialize")]
    pub max_past: Duration,
    /// How far in the future `ts` may be (default 5 min).
    #[serde(deserialize_with = "crate::runtime::duration::deserialize")]
    pub max_future: Duration,
    /// Whether to check `ts` against the server clock at all (default true).
    pub check_skew: bool,
    /// How long an append may take before answering 503 (default 5 s).
    #[serde(deserialize_with = "crate::runtime::duration::deserialize")]
    pub append_timeout: Duration,
    /// How long an event id is remembered per app for deduplication (default 24 h).
    #[serde(deserialize_with = "crate::runtime::duration::deserialize")]
    pub dedup_window: Duration,
    /// Embedded log only: most ids remembered; past it the oldest are
    /// forgotten before the window ends (default 1,000,000).
    pub dedup_max_ids_embedded: usize,
    /// Embedded log only: most events it holds (those not yet acknowledged
    /// by every reader); past it appends answer 503 instead of the process
    /// growing until it is killed for its memory (default 2,000,000).
    pub embedded_max_events: usize,
    /// Events per second an end user may ingest (default 200, burst 1,000).
    pub user_rate_per_sec: f64,
    pub user_burst: f64,
    /// Events per second an app may ingest unless its key says otherwise
    /// (default 50,000, burst 100,000).
    pub app_rate_per_sec: f64,
    pub app_burst: f64,
    /// Events per second each anonymous peer address may ingest when auth
    /// is off (default 200, burst 1,000: like a user).
    pub anonymous_rate_per_sec: f64,
    pub anonymous_burst: f64,
}

impl Default for IngestSettings {
    fn default() -> Self {
        IngestSettings {
            max_body_bytes: 8 << 20,
            max_batch_events: 10_000,
            max_event_bytes: 64 << 10,
            max_past: Duration::from_secs(24 * 3600),
            max_future: Duration::from_secs(300),
            check_skew: true,
            append_timeout: Duration::from_secs(5),
            dedup_window: Duration::from_secs(24 * 3600),
            dedup_max_ids_embedded: 1_000_000,
            embedded_max_events: connectors::event_log::DEFAULT_EMBEDDED_MAX_ENTRIES,
            user_rate_per_sec: 200.0,
            user_burst: 1_000.0,
            app_rate_per_sec: 50_000.0,
            app_burst: 100_000.0,
            anonymous_rate_per_sec: 200.0,
            anonymous_burst: 1_000.0,
        }
    }
}

impl IngestSettings {
    pub fn to_ingest_config(&self) -> connectors::http_api::IngestConfig {
        connectors::http_api::IngestConfig {
            max_body_bytes: self.max_body_bytes,
            max_batch_events: self.max_batch_events,
            limits: schemas::Limits {
                max_event_bytes: self.max_event_bytes,
                max_past_ms: self.max_past.as_millis() as i64,
                max_future_ms: self.max_future.as_millis() as i64,
                ..schemas::Limits::default()
            },
            check_skew: self.check_skew,
            append_timeout: self.append_timeout,
            user_rate: connectors::auth::Rate {
                per_second: self.user_rate_per_sec,
                burst: self.user_burst,
            },
            app_rate: connectors::auth::Rate {
                per_second: self.app_rate_per_sec,
                burst: self.app_burst,
            },
            anonymous_rate: connectors::auth::Rate {
                per_second: self.anonymous_rate_per_sec,
                burst: self.anonymous_burst,
            },
            // `[server]` settings, set by `serve`.
            ..connectors::http_api::IngestConfig::default()
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FanoutSettings {
    /// Bytes queued per WebSocket connection before it is closed as slow (default 1 MiB).
    pub max_queue_bytes: usize,
    /// Channels per connection (default 256).
    pub max_subscriptions: usize,
    /// Publications kept per channel for recovery on reconnect (default 100; 0: none).
    pub history_size: usize,
    /// Age after which a kept publication is dropped (default 5m).
    #[serde(deserialize_with = "crate::runtime::duration::deserialize")]
    pub history_max_age: Duration,
    /// Most channels keeping history; the least recently published loses it
    /// first (default 10000). In-process history only.
    pub history_max_channels: usize,
    /// Where publications, numbering and history live: `memory` (this
    /// process only), `redis` (shared by every gateway on the same Redis and
    /// prefix), or `auto` (default: `redis` when `redis.url` is set).
    pub broker: FanoutBroker,
    /// Publications waiting to be written to Redis, over 4 lanes, per
    /// priority (default 65536; live updates go before session/flow
    /// transitions and window figures). When a lane is full the dataflow
    /// waits up to 5 s, then publications are dropped and counted.
    pub publish_queue: usize,
    /// Control frames (subscribe, unsubscribe, ping) per second per
    /// connection (default 20); past the burst the connection is closed with 4029.
    pub control_rate_per_sec: f64,
    /// Control frames a connection may send at once (default 300).
    pub control_burst: f64,
    /// How often the server pings each WebSocket (default 25s).
    #[serde(deserialize_with = "crate::runtime::duration::deserialize")]
    pub ping_interval: Duration,
    /// Nothing heard from a client, pongs included, for this long closes it
    /// with 4009 (default 60s).
    #[serde(deserialize_with = "crate::runtime::duration::deserialize")]
    pub idle_timeout: Duration,
    /// Window results (team metrics: every key's figures at once when a
    /// window closes) go to the fanout at most this many per second, in
    /// 2 ms slices, so live updates never queue behind a whole window
    /// (default 20000; 0: published at once, like everything else). Derived
    /// streams, topics and views get them at once either way.
    pub paced_rate: u32,
    /// Window results waiting for the fanout at `paced_rate` (default
    /// 100000); past it they are dropped from the fanout and counted
    /// (`inkstream_ws_paced_events_total{outcome="dropped"}`).
    pub paced_queue: usize,
    /// Subscribes/unsubscribes of one connection waiting for the Redis
    /// broker at once (default 8); past it that connection's frames wait.
    pub max_pending_commands: usize,
    /// Subscribes/unsubscribes of all connections waiting for the Redis
    /// broker (default 4096); a sender finding it full waits.
    pub command_queue: usize,
    /// Least time between two writes to one WebSocket connection: what is
    /// published meanwhile waits and leaves in the same write; a connection
    /// that has not written for that long writes at once (default 0s: every
    /// frame at once). Trades latency for throughput with many subscribers
    /// on busy channels: fewer syscalls, and fewer reads for every client.
    #[serde(deserialize_with = "crate::runtime::duration::deserialize")]
    pub write_delay: Duration,
}

/// `fanout.broker`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum FanoutBroker {
    #[default]
    Auto,
    Memory,
    Redis,
}

impl Default for FanoutSettings {
    fn default() -> Self {
        let d = connectors::websocket_fanout::HubConfig::default();
        FanoutSettings {
            max_queue_bytes: d.max_queue_bytes,
            max_subscriptions: d.max_subscriptions,
            history_size: d.history_size,
            history_max_age: d.history_max_age,
            control_rate_per_sec: d.control_rate_per_sec,
            control_burst: d.control_burst,
            ping_interval: d.ping_interval,
            idle_timeout: d.idle_timeout,
            history_max_channels: d.history_max_channels,
            broker: FanoutBroker::Auto,
            publish_queue: 65_536,
            paced_rate: 20_000,
            paced_queue: 100_000,
            max_pending_commands: d.max_pending_commands,
            command_queue: d.command_queue,
            write_delay: d.write_delay,
        }
    }
}

impl FanoutSettings {
    pub fn to_hub_config(&self) -> connectors::websocket_fanout::HubConfig {
        connectors::websocket_fanout::HubConfig {
            max_queue_bytes: self.max_queue_bytes,
            max_subscriptions: self.max_subscriptions,
            history_size: self.history_size,
            history_max_age: self.history_max_age,
            history_max_channels: self.history_max_channels,
            control_rate_per_sec: self.control_rate_per_sec,
            control_burst: self.control_burst,
            ping_interval: self.ping_interval,
            idle_timeout: self.idle_timeout,
            max_pending_commands: self.max_pending_commands,
            command_queue: self.command_queue,
            write_delay: self.write_delay,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataflowConfig {
    /// Timely worker threads in this process (default 1).
    pub workers: usize,
    /// `host:port` of every process of a timely cluster, in process order
    /// (default empty: one process). Every process runs the same command with
    /// its own `process_index`; workers are numbered across the cluster.
    pub hosts: Vec<String>,
    /// This process's index in `hosts` (default 0).
    pub process_index: usize,
    /// How far behind the newest event time the watermark trails (default 2 s).
    #[serde(deserialize_with = "crate::runtime::duration::deserialize")]
    pub allowed_disorder: Duration,
    /// Granularity of dataflow timestamps: event times are batched into epochs
    /// of this length (default 100 ms).
    #[serde(deserialize_with = "crate::runtime::duration::deserialize")]
    pub epoch: Duration,
    /// `serve` only: with no input for this long, the watermark advances with
    /// the wall clock (default 1 s).
    #[serde(deserialize_with = "crate::runtime::duration::deserialize")]
    pub idle_advance_after: Duration,
    /// `serve` only: how far ahead of this server's clock event time may
    /// move the watermark (default 1 s). An event stamped later (ingest
    /// accepts up to `ingest.max_future`) is processed with its own time but
    /// holds nobody back and makes nobody late.
    #[serde(deserialize_with = "crate::runtime::duration::deserialize")]
    pub future_tolerance: Duration,
    /// How long, in event time behind the watermark, an event's id is still
    /// remembered (default 1 min). A copy arriving within it is a duplicate
    /// (counted, dropped), not a late event: the log and the mirror deliver
    /// at least once, and a copy produced again after a takeover or a retry
    /// often arrives after the watermark passed the original.
    #[serde(deserialize_with = "crate::runtime::duration::deserialize")]
    pub dedup_retention: Duration,
    /// Run the dataflow in this process (default true). A gateway-only
    /// instance (`false`) ingests and fans out what another instance's
    /// dataflow publishes through Redis (`fanout.broker = redis`).
    pub enabled: bool,
    /// With Redis: run the dataflow only while holding the lease
    /// `<redis.prefix>:lease:dataflow:<group>` (default true), so that
    /// several instances on one Redis run one dataflow; the others serve as
    /// gateways and one takes over within `lease_ttl` of the holder's end.
    pub lease: bool,
    /// How long the lease outlives its holder's last renewal (default 10s;
    /// renewed every third of it).
    #[serde(deserialize_with = "crate::runtime::duration::deserialize")]
    pub lease_ttl: Duration,
    /// Consumer group the dataflow reads the log with (default `dataflow`).
    pub group: String,
    /// Consumer name within the group; stable across restarts so that this
    /// instance resumes its own pending entries (default `inkstream-0`; in a
    /// timely cluster, suffixed `-p<process_index>`).
    pub consumer: String,
    /// Events read from the log per batch (default 4096; from Redis an
    /// eighth as many entries per stream, each up to 16 events).
    pub read_batch: usize,
    /// `serve` only: most items one event-time operator observes, plus
    /// events it fires, in one step of the worker before it lets the other
    /// operators run and resumes in the next step (default 256; 0: no
    /// bound). A burst (ten thousand new writers, a window closing for all
    /// of them) then delays the live operators (WPM) by a slice, not by the
    /// whole burst; outputs are the same either way. Replay has no bound.
    pub step_budget: usize,
    /// The operators that run (default: all): any of `wpm`, `sessions`,
    /// `presence`, `conflicts`, `team`, `alerts`; `team` pulls in
    /// `conflicts` and `alerts` pull in `sessions` (they read their outputs).
    pub operators: crate::operators::selection::OperatorSet,
    /// End every open session and window when the input ends (`replay` sets
    /// it; in `serve` the input only ends at shutdown, and sessions continue
    /// after a restart).
    #[serde(skip)]
    pub flush_at_end: bool,
}

impl DataflowConfig {
    /// Timely's configuration: one thread, threads in this process, or a
    /// cluster of processes.
    pub fn timely_config(&self) -> timely::Config {
        if self.hosts.len() > 1 {
            return timely::Config {
                communication: timely::CommunicationConfig::Cluster {
                    threads: self.workers.max(1),
                    process: self.process_index,
                    addresses: self.hosts.clone(),
                    report: false,
                    zerocopy: false,
                },
                worker: timely::WorkerConfig::default(),
            };
        }
        if self.workers <= 1 {
            timely::Config::thread()
        } else {
            timely::Config::process(self.workers)
        }
    }

    /// Processes in the cluster (1 without `hosts`).
    pub fn processes(&self) -> usize {
        self.hosts.len().max(1)
    }

    /// The consumer name this process reads the log with: `consumer`, and
    /// in a timely cluster `<consumer>-p<process_index>`, so that each
    /// process has its own pending entries (one name for all made every
    /// process re-read the others' pending entries as its own at start).
    pub fn consumer_name(&self) -> String {
        if self.processes() > 1 {
            format!("{}-p{}", self.consumer, self.process_index)
        } else {
            self.consumer.clone()
        }
    }

    /// Workers per process and processes: what a checkpoint must match.
    pub fn layout(&self) -> crate::runtime::checkpoint::Layout {
        crate::runtime::checkpoint::Layout {
            workers: self.workers.max(1),
            processes: self.processes(),
        }
    }
}

impl Default for DataflowConfig {
    fn default() -> Self {
        DataflowConfig {
            workers: 1,
            hosts: Vec::new(),
            process_index: 0,
            allowed_disorder: Duration::from_secs(2),
            epoch: Duration::from_millis(100),
            idle_advance_after: Duration::from_secs(1),
            future_tolerance: Duration::from_secs(1),
            dedup_retention: Duration::from_secs(60),
            enabled: true,
            lease: true,
            lease_ttl: Duration::from_secs(10),
            group: "dataflow".into(),
            consumer: "inkstream-0".into(),
            read_batch: 4096,
            step_budget: 256,
            operators: Default::default(),
            flush_at_end: false,
        }
    }
}

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid TOML: {message}")]
    Parse { path: String, message: String },
    #[error("--set {0}: expected dotted.key=value")]
    BadOverride(String),
    #[error("config key {path}: {message}")]
    Invalid { path: String, message: String },
}

impl schemas::Classify for ConfigError {
    /// Every way of loading fails on the deployment's settings.
    fn fault(&self) -> schemas::Fault {
        schemas::Fault::Config
    }
}

impl Config {
    /// Loads the file (if any), then applies `overrides` (`dotted.key=value`).
    pub fn load(file: Option<&Path>, overrides: &[String]) -> Result<Config, ConfigError> {
        let mut table = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.display().to_string(),
                    source,
                })?;
                text.parse::<toml::Table>()
                    .map_err(|e| ConfigError::Parse {
                        path: path.display().to_string(),
                        message: e.to_string(),
                    })?
            }
            None => toml::Table::new(),
        };
        for o in overrides {
            apply_override(&mut table, o)?;
        }
        let config: Config =
            serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
                ConfigError::Invalid {
                    path: e.path().to_string(),
                    message: e.inner().to_string(),
                }
            })?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let bad = |path: &str, message: &str| {
            Err(ConfigError::Invalid {
                path: path.into(),
                message: message.into(),
            })
        };
        if self.dataflow.workers == 0 {
            return bad("dataflow.workers", "must be at least 1");
        }
        if !self.dataflow.hosts.is_empty()
            && self.dataflow.process_index >= self.dataflow.hosts.len()
        {
            return bad(
                "dataflow.process_index",
                "must be less than the number of dataflow.hosts",
            );
        }
        if let Err(e) = self.team.validate() {
            // The message names the key again (as it always has).
            return bad(&e.path, &e.to_string());
        }
        if let Err((path, message)) = self.notifications.validate() {
            return bad(&path, &message);
        }
        if let Err(e) = crate::operators::alert_windows::LiveRules::new(&self.alerts) {
            return Err(ConfigError::Invalid {
                path: e.path.clone(),
                message: e.message.clone(),
            });
        }
        if self.dataflow.epoch.is_zero() {
            return bad("dataflow.epoch", "must be positive");
        }
        if self.ingest.embedded_max_events < self.ingest.max_batch_events {
            // A full batch could never be stored, even into an empty log.
            return bad(
                "ingest.embedded_max_events",
                "must be at least ingest.max_batch_events",
            );
        }
        if self.wpm.window.is_zero() {
            return bad("wpm.window", "must be positive");
        }
        // One event is one Kafka record: librdkafka refuses records over its
        // `message.max.bytes` (1,000,000) and brokers over theirs (1 MB by
        // default), so a larger event would be acknowledged, then
        // dead-lettered by the mirror without its payload.
        if self.kafka.brokers.is_some() && self.ingest.max_event_bytes > MAX_KAFKA_EVENT_BYTES {
            return bad(
                "ingest.max_event_bytes",
                "must be at most 900000 with kafka.brokers (each event is one Kafka record, and \
                 Kafka refuses records over 1 MB by default)",
            );
        }
        // Below the 2 s one Redis command may take (the WAIT runs on the
        // writer's connection).
        if !(Duration::from_millis(10)..=Duration::from_millis(1500))
            .contains(&self.redis.replica_ack_timeout)
        {
            return bad(
                "redis.replica_ack_timeout",
                "must be between 10ms and 1500ms",
            );
        }
        if self.kafka.partitions < 1 {
            return bad("kafka.partitions", "must be at least 1");
        }
        if self.kafka.replication_factor < 1
            && self.kafka.replication_factor != connectors::kafka::BROKER_DEFAULT_REPLICATION
        {
            return bad(
                "kafka.replication_factor",
                "must be at least 1, or -1 for the broker's default.replication.factor",
            );
        }
        if self.kafka.mirror_batch == 0 {
            return bad("kafka.mirror_batch", "must be at least 1");
        }
        if self.kafka.mirror_in_flight == 0 {
            return bad("kafka.mirror_in_flight", "must be at least 1");
        }
        if self.kafka.mirror_round_pages == 0 {
            return bad("kafka.mirror_round_pages", "must be at least 1");
        }
        if !(Duration::from_secs(1)..=Duration::from_secs(900))
            .contains(&self.kafka.mirror_delivery_timeout)
        {
            return bad(
                "kafka.mirror_delivery_timeout",
                "must be between 1 s and 15 min",
            );
        }
        if self.kafka.mirror_transactional
            && self.kafka.mirror_delivery_timeout
                > connectors::kafka::mirror::MAX_TRANSACTIONAL_DELIVERY_TIMEOUT
        {
            return bad(
                "kafka.mirror_delivery_timeout",
                "must be at most 7 min 30 s with kafka.mirror_transactional: the mirror's \
                 transaction timeout is twice it, and brokers refuse more than their \
                 transaction.max.timeout.ms (15 min by default)",
            );
        }
        for (key, bytes) in [
            (
                "kafka.mirror_live_batch_bytes",
                self.kafka.mirror_live_batch_bytes,
            ),
            (
                "kafka.mirror_bulk_batch_bytes",
                self.kafka.mirror_bulk_batch_bytes,
            ),
        ] {
            if !(1..=i32::MAX as usize).contains(&bytes) {
                return bad(key, "must be between 1 and 2147483647 bytes");
            }
        }
        for (key, linger) in [
            ("kafka.mirror_live_linger", self.kafka.mirror_live_linger),
            ("kafka.mirror_bulk_linger", self.kafka.mirror_bulk_linger),
        ] {
            if linger > Duration::from_secs(900) {
                return bad(key, "must be at most 900s (librdkafka's linger.ms limit)");
            }
        }
        if self.kafka.mirror_max_attempts == 0 {
            return bad("kafka.mirror_max_attempts", "must be at least 1");
        }
        if self.dataflow.read_batch == 0 {
            return bad("dataflow.read_batch", "must be at least 1");
        }
        self.kafka.cluster()?;
        let redis_log = self.redis.url.is_some();
        let store = self.checkpoint.resolved(redis_log);
        if self.kafka.derived_delivery == DerivedDelivery::ExactlyOnce && store.is_none() {
            return bad(
                "kafka.derived_delivery",
                "exactly_once commits the derived topics with each checkpoint: set \
                 checkpoint.store (or checkpoint.dir)",
            );
        }
        use crate::runtime::checkpoint::CheckpointStoreKind;
        if store == Some(CheckpointStoreKind::Dir) && self.checkpoint.dir.is_none() {
            return bad(
                "checkpoint.dir",
                "checkpoint.store = \"dir\" needs a directory",
            );
        }
        if store == Some(CheckpointStoreKind::Redis) && !redis_log {
            return bad(
                "checkpoint.store",
                "\"redis\" keeps checkpoints in the log's Redis: set redis.url, or use \"dir\"",
            );
        }
        Ok(())
    }
}

/// Sets `a.b.c = value` in `table`; the value is parsed as TOML (so numbers
/// and booleans keep their type) and taken as a string when that fails.
pub fn apply_override(table: &mut toml::Table, assignment: &str) -> Result<(), ConfigError> {
    let (key, raw) = assignment
        .split_once('=')
        .ok_or_else(|| ConfigError::BadOverride(assignment.into()))?;
    let key = key.trim();
    if key.is_empty() || key.split('.').any(str::is_empty) {
        return Err(ConfigError::BadOverride(assignment.into()));
    }
    let raw = raw.trim();
    let value = format!("v = {raw}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_owned()));
    let mut parts: Vec<&str> = key.split('.').collect();
    let last = parts.pop().unwrap_or_default();
    let mut cur = table;
    for (i, part) in parts.iter().enumerate() {
        let entry = cur
            .entry((*part).to_owned())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        cur = match entry {
            toml::Value::Table(t) => t,
            _ => {
                return Err(ConfigError::Invalid {
                    path: parts[..=i].join("."),
                    message: "is not a table".into(),
                });
            }
        };
    }
    cur.insert(last.to_owned(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_process_of_a_cluster_reads_the_log_under_its_own_consumer_name() {
        let mut d = DataflowConfig::default();
        assert_eq!(d.consumer_name(), "inkstream-0");
        d.hosts = vec!["a:2101".into(), "b:2101".into()];
        let names: Vec<String> = (0..2)
            .map(|i| {
                d.process_index = i;
                d.consumer_name()
            })
            .collect();
        assert_eq!(names, ["inkstream-0-p0", "inkstream-0-p1"]);
    }

    #[test]
    fn the_alert_rules_example_in_the_operations_doc_is_a_valid_config() {
        let doc = include_str!("../../docs/OPERATIONS.md");
        let start = doc.find("```toml\n").expect("a toml example") + 8;
        let end = start + doc[start..].find("```").expect("closed");
        let path = std::env::temp_dir().join(format!("inkstream-doc-{}.toml", std::process::id()));
        std::fs::write(&path, &doc[start..end]).unwrap();
        let c = Config::load(Some(&path), &[]).unwrap();
        let _ = std::fs::remove_file(&path);
        assert_eq!(c.alerts.rules.len(), 2);
    }

    #[test]
    fn the_notifications_example_in_the_operations_doc_is_valid_and_bad_zones_name_their_key() {
        let doc = include_str!("../../docs/OPERATIONS.md");
        let section = &doc[doc
            .find("## Notifications")
            .expect("a notifications section")..];
        let start = section.find("```toml\n").expect("a toml example") + 8;
        let end = start + section[start..].find("```").expect("closed");
        let path =
            std::env::temp_dir().join(format!("inkstream-notify-doc-{}.toml", std::process::id()));
        std::fs::write(&path, &section[start..end]).unwrap();
        let c = Config::load(Some(&path), &[]).unwrap();
        let _ = std::fs::remove_file(&path);
        assert_eq!(c.notifications.admins, vec!["u-ops-1".to_owned()]);
        assert_eq!(
            c.notifications.resolve("project:p1"),
            vec!["u1".to_owned(), "u2".to_owned()]
        );
        assert_eq!(c.notifications.smtp.as_ref().map(|s| s.port), Some(25));
        let e = Config::load(
            None,
            &["notifications.defaults.timezone=\"Mars/Olympus\"".into()],
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("notifications.defaults.timezone"),
            "{e}"
        );
    }

    #[test]
    fn the_embedded_log_bound_holds_a_full_batch() {
        let c = Config::load(None, &[]).unwrap();
        assert_eq!(c.ingest.embedded_max_events, 2_000_000);
        let e = Config::load(
            None,
            &[
                "ingest.max_batch_events=100".into(),
                "ingest.embedded_max_events=99".into(),
            ],
        )
        .unwrap_err();
        assert!(e.to_string().contains("ingest.embedded_max_events"), "{e}");
    }

    #[test]
    fn set_overrides_any_key_with_typed_values() {
        let c = Config::load(
            None,
            &[
                "server.port=9000".into(),
                "dataflow.allowed_disorder=5s".into(),
                "wpm.window=\"2m\"".into(),
                "redis.url=redis://127.0.0.1:1/0".into(),
            ],
        )
        .unwrap();
        assert_eq!(c.server.port, 9000);
        assert_eq!(c.dataflow.allowed_disorder, Duration::from_secs(5));
        assert_eq!(c.wpm.window, Duration::from_secs(120));
        assert_eq!(c.redis.url.as_deref(), Some("redis://127.0.0.1:1/0"));
    }

    #[test]
    fn kafka_security_settings_are_checked_at_load_and_name_their_key() {
        let c = Config::load(
            None,
            &[
                "kafka.brokers=b1:9096".into(),
                "kafka.security_protocol=SASL_SSL".into(),
                "kafka.sasl_mechanism=SCRAM-SHA-512".into(),
                "kafka.sasl_username=inkstream".into(),
                "kafka.sasl_password=pw-from-env".into(),
            ],
        )
        .unwrap();
        let brokers = c.kafka.cluster().unwrap().unwrap();
        let cfg = brokers.client_config();
        assert_eq!(cfg.get("security.protocol"), Some("sasl_ssl"));
        assert_eq!(cfg.get("sasl.password"), Some("pw-from-env"));
        assert!(
            !format!("{c:?}").contains("pw-from-env"),
            "Debug redacts it"
        );
        let e = Config::load(
            None,
            &[
                "kafka.brokers=b1:9096".into(),
                "kafka.security_protocol=sasl_ssl".into(),
                "kafka.sasl_mechanism=SCRAM-SHA-512".into(),
                "kafka.sasl_username=inkstream".into(),
            ],
        )
        .unwrap_err();
        assert!(e.to_string().contains("kafka.sasl_password"), "{e}");
        let e = Config::load(None, &["kafka.sasl_mechanism=GSSAPI".into()]).unwrap_err();
        assert!(e.to_string().contains("kafka.sasl_mechanism"), "{e}");
    }

    #[test]
    fn unknown_and_mistyped_keys_name_their_path() {
        let e = Config::load(None, &["dataflow.wokers=2".into()]).unwrap_err();
        assert!(e.to_string().contains("dataflow"), "{e}");
        assert!(e.to_string().contains("wokers"), "{e}");
        let e = Config::load(None, &["server.port=\"x\"".into()]).unwrap_err();
        assert!(e.to_string().starts_with("config key server.port"), "{e}");
        let e = Config::load(None, &["dataflow.epoch=abc".into()]).unwrap_err();
        assert!(e.to_string().contains("dataflow.epoch"), "{e}");
    }

    #[test]
    fn kafka_settings_brokers_would_refuse_are_refused_at_load() {
        let c = Config::load(None, &[]).unwrap();
        assert_eq!(
            c.kafka.new_topics(),
            connectors::kafka::NewTopics {
                partitions: 8,
                replication_factor: -1
            }
        );
        // Without transactions the delivery timeout may reach 15 min.
        let c = Config::load(
            None,
            &[
                "kafka.mirror_transactional=false".into(),
                "kafka.mirror_delivery_timeout=900s".into(),
            ],
        )
        .unwrap();
        assert_eq!(c.kafka.mirror_delivery_timeout, Duration::from_secs(900));
        let c = Config::load(None, &["kafka.replication_factor=3".into()]).unwrap();
        assert_eq!(c.kafka.new_topics().replication_factor, 3);
        // An event up to 900,000 bytes with Kafka, any size without it.
        let big = ["ingest.max_event_bytes=1000000".to_owned()];
        assert!(Config::load(None, &big).is_ok());
        let with_kafka = |more: &str| vec!["kafka.brokers=\"b:9092\"".to_owned(), more.to_owned()];
        assert!(Config::load(None, &with_kafka("ingest.max_event_bytes=900000")).is_ok());
        for (set, key) in [
            (
                vec!["kafka.replication_factor=0".to_owned()],
                "kafka.replication_factor",
            ),
            (
                vec!["kafka.replication_factor=-2".to_owned()],
                "kafka.replication_factor",
            ),
            (vec!["kafka.partitions=0".to_owned()], "kafka.partitions"),
            (
                vec!["kafka.mirror_delivery_timeout=451s".to_owned()],
                "kafka.mirror_delivery_timeout",
            ),
            (
                with_kafka("ingest.max_event_bytes=900001"),
                "ingest.max_event_bytes",
            ),
        ] {
            let e = Config::load(None, &set).unwrap_err();
            assert!(e.to_string().contains(key), "{set:?}: {e}");
        }
    }
}
