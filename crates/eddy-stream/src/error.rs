//! The engine's error type.

/// Errors of the engine.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// Bad worker/process arguments.
    #[error("invalid execution arguments: {0}")]
    Config(String),
    /// A worker failed.
    #[error("the dataflow failed: {0}")]
    Execution(String),
    /// Checkpoints could not be written or read.
    #[error("checkpoint: {0}")]
    Checkpoint(String),
}
