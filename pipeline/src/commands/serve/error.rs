//! Why `serve` could not start or stopped, and whose fault that is.

use std::sync::Arc;

/// Why `serve` could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Runtime(#[from] crate::commands::RuntimeError),
    #[error("cannot bind {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("cannot reach the log: {0}")]
    Log(#[from] connectors::LogError),
    #[error("cannot reach Kafka: {0}")]
    Kafka(#[from] connectors::kafka::KafkaError),
    #[error("configuration: {0}")]
    KafkaAccess(connectors::kafka::security::AccessError),
    #[error("{0}")]
    SchemaRegistry(connectors::kafka::registry::RegistryError),
    #[error(
        "configuration: kafka.schema_registry_url is set but kafka.brokers is not (the registry \
         holds the schemas of Kafka topics)"
    )]
    RegistryWithoutKafka,
    #[error("cannot start the dataflow: {0}")]
    Checkpoint(crate::runtime::checkpoint::CheckpointError),
    #[error("cannot start the dataflow: {0}")]
    Workers(crate::dataflow::WorkerError),
    #[error("cannot start the dataflow: {0}")]
    StartPanicked(tokio::task::JoinError),
    /// The dataflow stopped this instance: it failed to start under the
    /// lease, or the lease was lost.
    #[error("cannot start the dataflow: {0}")]
    Stopped(Arc<ServeError>),
    #[error("the dataflow lease was lost (another instance runs the dataflow now)")]
    LeaseLost,
    /// A Kafka client cannot go on (`connectors::kafka::fatal`).
    #[error("{0}")]
    KafkaFatal(Arc<connectors::kafka::FatalError>),
    #[error("server error: {0}")]
    Server(std::io::Error),
    #[error("configuration: fanout.broker = redis needs redis.url (--redis-url / REDIS_URL)")]
    FanoutNeedsRedis,
    #[error("configuration: fanout through redis: {0}")]
    FanoutRedis(connectors::websocket_fanout::BrokerError),
    #[error("cannot start the fanout's pacing thread: {0}")]
    Pacer(std::io::Error),
    /// `derived.dir` cannot be created.
    #[error("configuration: {0}")]
    DerivedDir(crate::dataflow::SinkError),
    #[error("configuration: view store: {0}")]
    ViewStore(connectors::view_store::ViewError),
    #[error("configuration: redis.url: {0}")]
    RedisUrl(redis::RedisError),
    #[error("configuration: {0}")]
    RedisTls(connectors::tls::TlsError),
    #[error("configuration: redis.url: {0}")]
    NotifierStore(connectors::notifier::store::StoreError),
    #[error("configuration: notifier metrics: {0}")]
    NotifierMetrics(prometheus::Error),
    #[error("configuration: {0}")]
    Notifier(connectors::notifier::runner::NotifierError),
    #[error("configuration: {0}")]
    Metrics(prometheus::Error),
    #[error("configuration: {0}")]
    Auth(crate::config::ConfigError),
    #[error("configuration: {0}")]
    Jwks(connectors::auth::JwksError),
    /// No credential is configured and the bind address is not loopback.
    #[error(
        "configuration: server.bind = {bind:?} is not a loopback address and no credential is \
         configured (auth.api_keys, auth.jwt_secret, auth.jwks_url, auth.session_secret): anyone who can reach \
         the port would be an admin. Configure a credential, bind 127.0.0.1, or set \
         auth.allow_anonymous = true to serve anonymously on purpose"
    )]
    AnonymousOnNetwork { bind: String },
}

impl schemas::Classify for ServeError {
    fn fault(&self) -> schemas::Fault {
        use schemas::Fault;
        match self {
            ServeError::Bind { .. }
            | ServeError::FanoutNeedsRedis
            | ServeError::DerivedDir(_)
            | ServeError::RedisUrl(_)
            | ServeError::RedisTls(_)
            | ServeError::NotifierStore(_)
            | ServeError::Notifier(_)
            | ServeError::Auth(_)
            | ServeError::Jwks(_)
            | ServeError::AnonymousOnNetwork { .. }
            | ServeError::RegistryWithoutKafka => Fault::Config,
            ServeError::Runtime(_)
            | ServeError::Log(_)
            | ServeError::Kafka(_)
            | ServeError::Server(_)
            | ServeError::FanoutRedis(_)
            | ServeError::Pacer(_)
            | ServeError::ViewStore(_)
            | ServeError::LeaseLost
            | ServeError::KafkaFatal(_) => Fault::External,
            ServeError::Checkpoint(e) => schemas::Classify::fault(e),
            ServeError::KafkaAccess(e) => schemas::Classify::fault(e),
            ServeError::SchemaRegistry(e) => schemas::Classify::fault(e),
            ServeError::Workers(e) => schemas::Classify::fault(e),
            ServeError::Stopped(e) => e.fault(),
            ServeError::StartPanicked(_)
            | ServeError::NotifierMetrics(_)
            | ServeError::Metrics(_) => Fault::Internal,
        }
    }
}
