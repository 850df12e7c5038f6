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
    /// [`Log::truncate`](crate::Log::truncate) was given an offset where no stored batch
    /// starts (inside a batch, below the start offset, in a gap, or beyond the next offset).
    #[error("cannot truncate the log at offset {offset} (next offset {next_offset}): {reason}")]
    BadTruncateOffset {
        /// The offset asked for.
        offset: u64,
        /// The log's next offset.
        next_offset: u64,
        /// Why it is not a batch boundary.
        reason: String,
    },
    /// Offsets a [`Log::wait_durable`](crate::Log::wait_durable) waited for were removed by
    /// [`Log::truncate`](crate::Log::truncate) before the wait saw them durable.
    #[error(
        "the log was truncated at offset {from} while waiting for offsets below {end} to become \
         durable"
    )]
    Truncated {
        /// Where the log was cut (the lowest cut, when several happened during the wait).
        from: u64,
        /// The end offset waited for.
        end: u64,
    },
}

pub(crate) fn io_err(path: &Path, source: std::io::Error) -> LogError {
    LogError::Io {
        path: path.to_owned(),
        source,
    }
}
