//! Broker errors: protocol-neutral kinds that each front end maps to its own codes in one place.

use eddy_log::LogError;

/// An error from a broker operation. The kind decides how a front end reports it (for AMQP:
/// channel or connection close with a reply code); the text names what was wrong.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// A queue, exchange or vhost that does not exist.
    #[error("{0}")]
    NotFound(String),
    /// A redeclare with other properties, an unknown delivery tag, an invalid argument value.
    #[error("{0}")]
    PreconditionFailed(String),
    /// An exclusive queue used by another connection.
    #[error("{0}")]
    ResourceLocked(String),
    /// Authentication or permission failure.
    #[error("{0}")]
    AccessRefused(String),
    /// An operation that is never allowed (e.g. redeclaring `amq.*`).
    #[error("{0}")]
    NotAllowed(String),
    /// A request that makes no sense (e.g. an unknown exchange type).
    #[error("{0}")]
    CommandInvalid(String),
    /// A feature that is not implemented.
    #[error("{0}")]
    NotImplemented(String),
    /// Something that is created once already exists (a topic).
    #[error("{0}")]
    AlreadyExists(String),
    /// A server-side resource is exhausted.
    #[error("{0}")]
    ResourceError(String),
    /// The storage layer failed; data may be at risk.
    #[error("storage failure: {0}")]
    Storage(#[from] LogError),
    /// Metadata or message decoding failed, or another invariant broke.
    #[error("internal error: {0}")]
    Internal(String),
}

impl BrokerError {
    pub(crate) fn precondition(msg: impl Into<String>) -> Self {
        BrokerError::PreconditionFailed(msg.into())
    }
}

/// Result alias for broker operations.
pub type Result<T, E = BrokerError> = std::result::Result<T, E>;
