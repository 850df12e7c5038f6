//! [`Log`]: one log in one directory — open, append, roll, durability, close. Reading (whole
//! batches, or only headers) is in `log/read.rs`, deleting and rewriting segments in
//! `log/retention.rs`, removing a suffix of batches ([`Log::truncate`], for a Raft follower) in
//! `log/truncate.rs`.

pub(crate) mod read;
pub(crate) mod retention;
pub(crate) mod truncate;

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::watch;

use crate::error::{io_err, LogError};
use crate::recovery::{recover, RecoveryReport};
use crate::segment::{
    encode_header_parts, index_entry, open_rw, segment_path, sync_dir, write_index, Segment,
    HEADER, MAX_BATCH_BYTES,
};
use crate::syncer::{Cuts, Durable, FsyncPolicy, SyncTarget, Syncer};

/// Segment settings.
#[derive(Clone, Debug)]
pub struct LogConfig {
    /// Roll the active segment when it would exceed this size.
    pub segment_bytes: u64,
    /// Roll the active segment when it is older than this.
    pub segment_ms: Option<u64>,
    /// Bytes between sparse index entries.
    pub index_interval_bytes: u32,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            segment_bytes: 64 << 20,
            segment_ms: None,
            index_interval_bytes: 4096,
        }
    }
}

pub(crate) struct Inner {
    pub(crate) segments: Vec<Segment>,
    next_offset: u64,
    closed: bool,
}

/// A log in one directory. All methods take `&self`.
pub struct Log {
    dir: PathBuf,
    config: LogConfig,
    pub(crate) inner: Mutex<Inner>,
    sync: Arc<SyncTarget>,
    syncer: Arc<Syncer>,
    recovery: RecoveryReport,
}

impl std::fmt::Debug for Log {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Log").field("dir", &self.dir).finish()
    }
}

impl Log {
    /// Open or create the log in `dir`, recovering from a crash: a torn tail of the active
    /// segment is truncated, and so is a sealed segment at its first invalid batch (later
    /// segments are kept). What was repaired is in [`Log::recovery_report`]. Only I/O errors
    /// fail the open.
    pub fn open(dir: &Path, config: LogConfig, syncer: Arc<Syncer>) -> Result<Arc<Log>, LogError> {
        let (mut segments, report) = recover(dir, config.index_interval_bytes)?;
        if segments.is_empty() {
            let path = segment_path(dir, 0);
            let file = open_rw(&path)?;
            // make the new file (and a new directory) durable before anything is acknowledged
            sync_dir(dir);
            if let Some(parent) = dir.parent() {
                sync_dir(parent);
            }
            segments.push(Segment {
                base: 0,
                path,
                file: Arc::new(file),
                size: 0,
                next: 0,
                max_ts: i64::MIN,
                created: Instant::now(),
                index: Vec::new(),
                last_indexed_pos: 0,
            });
        }
        let active = segments.last().expect("one segment at least");
        let next_offset = active.next;
        let (durable, _) = watch::channel(Durable {
            offset: next_offset,
            failed: false,
            epoch: 0,
        });
        let sync = Arc::new(SyncTarget {
            active: Mutex::new(active.file.clone()),
            active_path: Mutex::new(active.path.clone()),
            written_end: AtomicU64::new(next_offset),
            durable,
            failed: AtomicBool::new(false),
            epoch: AtomicU64::new(0),
            cuts: Mutex::new(Cuts::default()),
        });
        Ok(Arc::new(Log {
            dir: dir.to_owned(),
            config,
            inner: Mutex::new(Inner {
                segments,
                next_offset,
                closed: false,
            }),
            sync,
            syncer,
            recovery: report,
        }))
    }

    /// What this log's [`Log::open`] repaired. A broker should log
    /// [`RecoveryReport::lost_sealed_data`] at ERROR: it means fsynced data was lost.
    pub fn recovery_report(&self) -> &RecoveryReport {
        &self.recovery
    }

    /// The log's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Append one batch of `record_count` records; returns its base offset. The bytes are
    /// written to the OS before this returns; [`Log::wait_durable`] tells when they are durable.
    pub fn append(
        &self,
        record_count: u32,
        timestamp_ms: i64,
        payload: &[u8],
    ) -> Result<u64, LogError> {
        self.append_parts(record_count, timestamp_ms, &[payload])
    }

    /// [`Log::append`] of a payload given in parts (stored one after the other, as one batch):
    /// a caller that patches a few bytes of a payload appends it without copying it first.
    pub fn append_parts(
        &self,
        record_count: u32,
        timestamp_ms: i64,
        parts: &[&[u8]],
    ) -> Result<u64, LogError> {
        let payload_len: usize = parts.iter().map(|p| p.len()).sum();
        if payload_len > MAX_BATCH_BYTES {
            return Err(LogError::TooLarge {
                size: payload_len,
                limit: MAX_BATCH_BYTES,
            });
        }
        if self.sync.failed.load(Ordering::Acquire) {
            return Err(LogError::Failed("an earlier fsync failed".into()));
        }
        let count = record_count.max(1);
        let mut inner = self.inner.lock();
        if inner.closed {
            return Err(LogError::Closed);
        }
        let need = (HEADER + payload_len) as u64;
        let roll = {
            let a = inner.segments.last().expect("active segment");
            a.size > 0
                && (a.size + need > self.config.segment_bytes
                    || self
                        .config
                        .segment_ms
                        .is_some_and(|ms| a.created.elapsed() >= Duration::from_millis(ms)))
        };
        if roll {
            self.roll(&mut inner)?;
        }
        let base = inner.next_offset;
        let header = encode_header_parts(base, count, timestamp_ms, parts);
        let interval = self.config.index_interval_bytes as u64;
        let a = inner.segments.last_mut().expect("active segment");
        let pos = a.size;
        let mut buf = Vec::with_capacity(need as usize);
        buf.extend_from_slice(&header);
        for p in parts {
            buf.extend_from_slice(p);
        }
        if let Err(e) = a.file.write_all_at(&buf, pos) {
            // leave no partial batch behind
            let _ = a.file.set_len(pos);
            return Err(io_err(&a.path, e));
        }
        a.size += need;
        a.next = base + count as u64;
        a.max_ts = a.max_ts.max(timestamp_ms);
        if a.index.is_empty() || pos - a.last_indexed_pos >= interval {
            if let Some(e) = index_entry(a.base, base, pos, a.max_ts) {
                a.index.push(e);
                a.last_indexed_pos = pos;
            }
        }
        inner.next_offset = base + count as u64;
        let end = inner.next_offset;
        // under the lock, so that a truncation (which holds it) is never followed by a late store
        // of an end it removed
        self.sync.written_end.fetch_max(end, Ordering::AcqRel);
        let epoch = self.sync.epoch();
        drop(inner);
        if self.syncer.policy() == FsyncPolicy::Never {
            // nothing, if a truncation came in between
            self.sync.publish(epoch, end);
        } else {
            self.syncer.mark(&self.sync);
        }
        Ok(base)
    }

    /// Seal the active segment (fsync it, write its index) and start a new one.
    fn roll(&self, inner: &mut Inner) -> Result<(), LogError> {
        let base = inner.next_offset;
        {
            let a = inner.segments.last().expect("active segment");
            a.file.sync_data().map_err(|e| io_err(&a.path, e))?;
            if let Err(e) = write_index(a) {
                tracing::warn!(path = %a.path.display(), "could not write segment index (it will be rebuilt): {e}");
            }
        }
        let path = segment_path(&self.dir, base);
        // a sidecar left from a segment of this base that was lost in a crash must not be
        // taken for the new segment's
        let _ = fs::remove_file(path.with_extension("index"));
        let file = Arc::new(open_rw(&path)?);
        sync_dir(&self.dir);
        *self.sync.active.lock() = file.clone();
        *self.sync.active_path.lock() = path.clone();
        inner.segments.push(Segment {
            base,
            path,
            file,
            size: 0,
            next: base,
            max_ts: i64::MIN,
            created: Instant::now(),
            index: Vec::new(),
            last_indexed_pos: 0,
        });
        // everything in the sealed segment is now durable
        self.sync
            .durable
            .send_modify(|d| d.offset = d.offset.max(base));
        Ok(())
    }

    /// The offset the next append gets.
    pub fn next_offset(&self) -> u64 {
        self.inner.lock().next_offset
    }

    /// The first offset still stored.
    pub fn start_offset(&self) -> u64 {
        let inner = self.inner.lock();
        inner
            .segments
            .iter()
            .find(|s| s.size > 0)
            .map(|s| s.base)
            .unwrap_or(inner.next_offset)
    }

    /// Every offset below this is durable under the fsync policy.
    pub fn durable_offset(&self) -> u64 {
        self.sync.durable.borrow().offset
    }

    /// Resolves once every offset below `end_offset` is durable.
    ///
    /// Fails with [`LogError::Truncated`] when a [`Log::truncate`] made after this call (and
    /// before the wait saw the offsets durable) removed any offset below `end_offset`: offsets
    /// appended again after a truncation are other data, and a wait for the removed ones never
    /// resolves on them. A truncation that kept every offset below `end_offset` resolves it (it
    /// makes everything it keeps durable).
    pub fn wait_durable(
        &self,
        end_offset: u64,
    ) -> impl std::future::Future<Output = Result<(), LogError>> + Send + 'static {
        let mut rx = self.sync.durable.subscribe();
        let epoch = rx.borrow().epoch;
        // weak: a wait must not keep the watch alive after the log is dropped
        let sync = Arc::downgrade(&self.sync);
        async move {
            let d = *rx
                .wait_for(|d| d.failed || d.epoch != epoch || d.offset >= end_offset)
                .await
                .map_err(|_| LogError::Closed)?;
            if d.epoch != epoch {
                let sync = sync.upgrade().ok_or(LogError::Closed)?;
                let lowest = sync.cuts.lock().lowest_since(epoch);
                if let Some(from) = lowest.filter(|&from| from < end_offset) {
                    return Err(LogError::Truncated {
                        from,
                        end: end_offset,
                    });
                }
                // every truncation since kept `..end_offset` and made it durable
            }
            if d.offset >= end_offset {
                Ok(())
            } else {
                Err(LogError::Failed("fsync failed".into()))
            }
        }
    }

    /// Bytes stored.
    pub fn size_bytes(&self) -> u64 {
        self.inner.lock().segments.iter().map(|s| s.size).sum()
    }

    /// The first offset of the active segment: everything below is in sealed segments.
    pub fn sealed_end(&self) -> u64 {
        let inner = self.inner.lock();
        inner.segments.last().map_or(inner.next_offset, |s| s.base)
    }

    /// An offset from which about the last `bytes` of the log follow: the base of the oldest
    /// segment among the newest ones that together hold at least `bytes` (or the start).
    pub fn tail_offset(&self, bytes: u64) -> u64 {
        let inner = self.inner.lock();
        let mut sum = 0;
        let mut from = inner.next_offset;
        for s in inner.segments.iter().rev() {
            from = s.base;
            sum += s.size;
            if sum >= bytes {
                break;
            }
        }
        from
    }

    /// Number of segment files.
    pub fn segment_count(&self) -> usize {
        self.inner.lock().segments.len()
    }

    /// fsync and stop accepting writes.
    pub fn close(&self) -> Result<(), LogError> {
        let mut inner = self.inner.lock();
        if inner.closed {
            return Ok(());
        }
        inner.closed = true;
        let a = inner.segments.last().expect("active segment");
        a.file.sync_data().map_err(|e| io_err(&a.path, e))?;
        let end = inner.next_offset;
        self.sync
            .durable
            .send_modify(|d| d.offset = d.offset.max(end));
        Ok(())
    }

    /// fsync the active segment now, on this thread; everything appended so far is durable
    /// when this returns.
    pub fn sync_now(&self) -> Result<(), LogError> {
        let inner = self.inner.lock();
        if inner.closed {
            return Err(LogError::Closed);
        }
        let a = inner.segments.last().expect("active segment");
        a.file.sync_data().map_err(|e| io_err(&a.path, e))?;
        let end = inner.next_offset;
        let epoch = self.sync.epoch();
        drop(inner);
        self.sync.publish(epoch, end);
        Ok(())
    }

    /// Close and remove the directory.
    pub fn destroy(&self) -> Result<(), LogError> {
        {
            let mut inner = self.inner.lock();
            inner.closed = true;
        }
        match fs::remove_dir_all(&self.dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(&self.dir, e)),
        }
    }
}
