//! `eddy-log`: a segmented, append-only log of opaque batches, safe against crashes.
//!
//! It knows nothing of queues, messages or protocols. The shaping decision is **group commit**:
//! appends only write to the OS; one [`Syncer`] thread, shared by every log, fsyncs dirty logs
//! and publishes each log's durable offset, so many writers share one fsync and a caller that
//! needs durability awaits [`Log::wait_durable`].
//!
//! # Modules
//! Files import downward only (`lib.rs` declares and re-exports; nothing imports it):
//!
//! - `log.rs`: [`Log`] — open, append, roll, durability waits, close; `log/read.rs` reads
//!   batches back (or only their headers and payload prefixes, [`Log::scan_headers`]) and finds
//!   timestamps, `log/retention.rs` deletes whole segments and rewrites sealed ones
//!   (compaction), `log/truncate.rs` removes a suffix from a batch on ([`Log::truncate`], a Raft
//!   follower dropping a diverged, uncommitted suffix: the only operation that moves the next
//!   and durable offsets back). One type, several files.
//! - `recovery.rs`: what [`Log::open`] checks and repairs ([`RecoveryReport`]).
//! - `segment.rs`: the on-disk format (batch header, segment names, index sidecar; the byte
//!   tables are its module doc) and the code that encodes, decodes and scans it.
//! - `syncer.rs`: the group committer ([`Syncer`], [`FsyncPolicy`]).
//! - `error.rs`: [`LogError`]. `clock.rs`: [`now_ms`], the wall clock of batch timestamps.

mod clock;
mod error;
mod log;
mod recovery;
mod segment;
mod syncer;

pub use clock::now_ms;
pub use error::LogError;
pub use log::retention::Rewrite;
pub use log::{Log, LogConfig};
pub use recovery::{RecoveryReport, SegmentRepair};
pub use segment::{Batch, MAX_BATCH_BYTES};
pub use syncer::{FsyncHistogram, FsyncPolicy, Syncer, FSYNC_BUCKETS};

#[cfg(test)]
mod tests;
