//! Why a load run stopped, and whose fault that is.

/// Why a load run stopped.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// Nothing listens at the address (the server is not running there).
    #[error("connect {addr}: {error}")]
    Connect { addr: String, error: std::io::Error },
    /// The WebSocket handshake failed.
    #[error("connect: {0}")]
    WsConnect(tokio_tungstenite::tungstenite::Error),
    /// A connection broke mid-run.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Ws(#[from] tokio_tungstenite::tungstenite::Error),
    /// The server hung up (`connection`, `socket`).
    #[error("server closed the {0}")]
    Closed(&'static str),
    #[error("response headers too large")]
    HeadersTooLarge,
    /// The server answered, but not with success: the step and its reply.
    #[error("{step}: {reply}")]
    Rejected { step: String, reply: String },
    /// A connection's task panicked.
    #[error(transparent)]
    Task(#[from] tokio::task::JoinError),
    #[error("--mode {0:?}: expected batch, single, ws, fanout or e2e")]
    Mode(String),
    #[error(transparent)]
    Runtime(#[from] crate::commands::RuntimeError),
}

impl schemas::Classify for LoadError {
    fn fault(&self) -> schemas::Fault {
        match self {
            // Credentials or a payload the server refuses: change the run.
            LoadError::Rejected { .. } | LoadError::Mode(_) => schemas::Fault::Caller,
            LoadError::Task(_) => schemas::Fault::Internal,
            _ => schemas::Fault::External,
        }
    }
}
