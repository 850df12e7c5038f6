//! The log's error type.

use std::path::{Path, PathBuf};

/// Log errors.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// An I/O operation failed.
    #[error("i/o error on {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Data on disk does not verify.
    #[error("corrupt log data in {path} at position {position}: {reason}")]
    Corrupt {
        /// The segment.
        path: PathBuf,
        /// Byte position.
        position: u64,
        /// What was wrong.
        reason: String,
    },
    /// The log was closed.
    #[error("log is closed")]
    Closed,
    /// An fsync failed; the log accepts no more writes.
    #[error("log failed after an fsync error: {0}")]
    Failed(String),
    /// A batch beyond the limit.
    #[error("batch of {size} bytes exceeds the limit of {limit}")]
    TooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
}

pub(crate) fn io_err(path: &Path, source: std::io::Error) -> LogError {
    LogError::Io {
        path: path.to_owned(),
        source,
    }
}
