use floe_catalog::ErrorKind;

/// Errors of the ingest crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Catalog(#[from] floe_catalog::Error),

    #[error("{message}")]
    Wal { message: String },

    /// The log is damaged and the loss was not accepted: the start is refused.
    #[error("{0}")]
    WalDamaged(Box<crate::wal::recovery::Refusal>),

    #[error("i/o error on {path}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },

    #[error("iceberg error while {context}")]
    Iceberg {
        context: &'static str,
        #[source]
        source: Box<iceberg::Error>,
    },

    #[error("{message}")]
    Invalid { message: String },

    /// librdkafka refused a setting, or could not reach the brokers.
    #[error("kafka: {context}: {source}")]
    Kafka {
        context: &'static str,
        #[source]
        source: rdkafka::error::KafkaError,
    },

    #[error("{message}")]
    Overloaded { message: String },

    #[error("{message}")]
    Timeout { message: String },

    #[error("internal error: {message}")]
    Internal { message: String },
}

impl Error {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Catalog(e) => e.kind(),
            Error::Wal { .. } | Error::Io { .. } | Error::Iceberg { .. } => ErrorKind::Unavailable,
            Error::Overloaded { .. } | Error::Timeout { .. } => ErrorKind::Unavailable,
            Error::Invalid { .. } => ErrorKind::InvalidInput,
            // A setting librdkafka refuses is the operator's to fix; anything else (brokers
            // unreachable, timeouts, a topic not there yet) may pass with a retry.
            Error::Kafka { source, .. } => match source {
                rdkafka::error::KafkaError::ClientConfig(..)
                | rdkafka::error::KafkaError::ClientCreation(_)
                | rdkafka::error::KafkaError::Subscription(_) => ErrorKind::InvalidInput,
                _ => ErrorKind::Unavailable,
            },
            // Retrying will read the same bytes: an operator has to decide.
            Error::WalDamaged(_) => ErrorKind::Internal,
            Error::Internal { .. } => ErrorKind::Internal,
        }
    }

    pub fn retryable(&self) -> bool {
        self.kind().retryable()
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
