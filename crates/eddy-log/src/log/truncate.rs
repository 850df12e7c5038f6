//! Truncating a log: removing every batch from an offset on — what a Raft follower does to a
//! diverged, uncommitted suffix. Unlike retention this cuts into the active segment (and into a
//! sealed one, which then becomes the active segment), and it moves the durable offset down.

use std::fs;
use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;

use super::{Inner, Log};
use crate::error::{io_err, LogError};
use crate::segment::{parse_header, sync_dir, Segment, HEADER, MAX_BATCH_BYTES};

impl Log {
    /// Remove every batch whose base offset is `>= from_offset`; the next append gets
    /// `from_offset`.
    ///
    /// `from_offset` must be where a stored batch starts, or [`Log::next_offset`] (then nothing
    /// happens). Any other offset — inside a batch, below [`Log::start_offset`], in a gap left
    /// by recovery, beyond the next offset — fails with [`LogError::BadTruncateOffset`] and
    /// changes nothing.
    ///
    /// Segments wholly at or after `from_offset` are deleted (with their index sidecars), newest
    /// first; the segment holding `from_offset` is cut at that batch and becomes the active
    /// segment (a sealed one loses its sidecar first, so a stale sidecar is never believed).
    /// The deletions and the cut are durable when this returns (directory and file fsynced), as
    /// is everything below `from_offset`: [`Log::durable_offset`] becomes `from_offset`. A crash
    /// part-way leaves a log that reopens to a prefix of the old one at least `from_offset`
    /// long (never with a gap).
    ///
    /// Durability waits ([`Log::wait_durable`]) pending for offsets at or above `from_offset`
    /// fail with [`LogError::Truncated`]; those below resolve. Reads running during a truncation
    /// may fail ([`LogError::Io`] or [`LogError::Corrupt`] for bytes cut under them) or return
    /// batches from before it: a caller that reads the suffix it truncates should not do both
    /// at once. An I/O error once files are being changed leaves the log failed
    /// ([`LogError::Failed`] for later writes); reopening it recovers.
    pub fn truncate(&self, from_offset: u64) -> Result<(), LogError> {
        let mut inner = self.inner.lock();
        if inner.closed {
            return Err(LogError::Closed);
        }
        if self.sync.failed.load(Ordering::Acquire) {
            return Err(LogError::Failed("an earlier fsync failed".into()));
        }
        let next_offset = inner.next_offset;
        if from_offset == next_offset {
            return Ok(());
        }
        let bad = |reason: String| LogError::BadTruncateOffset {
            offset: from_offset,
            next_offset,
            reason,
        };
        if from_offset > next_offset {
            return Err(bad("beyond the log's next offset".into()));
        }
        let Some(i) = inner
            .segments
            .iter()
            .position(|s| s.size > 0 && s.base <= from_offset && from_offset < s.next)
        else {
            let start = inner
                .segments
                .iter()
                .find(|s| s.size > 0)
                .map_or(next_offset, |s| s.base);
            return Err(bad(if from_offset < start {
                format!("below the log's start offset {start}")
            } else {
                "in a gap of the log (offsets lost in a recovery)".into()
            }));
        };
        let (pos, max_ts) = match batch_start(&inner.segments[i], from_offset)? {
            Ok(found) => found,
            Err(reason) => return Err(bad(reason)),
        };
        // from here on files change: an error leaves the log failed (reopening recovers)
        self.cut(&mut inner, i, pos, max_ts, from_offset)
            .inspect_err(|e| {
                tracing::error!(dir = %self.dir.display(), "truncation failed, log stops accepting writes: {e}");
                self.sync.failed.store(true, Ordering::Release);
                self.sync.durable.send_modify(|d| d.failed = true);
            })
    }

    /// Delete the segments after `i`, cut segment `i` at `pos` (where batch `from` starts; the
    /// batches before it have the largest timestamp `max_ts`), make that durable, and point
    /// the log and its syncer at segment `i` as the active one.
    fn cut(
        &self,
        inner: &mut Inner,
        i: usize,
        pos: u64,
        max_ts: i64,
        from: u64,
    ) -> Result<(), LogError> {
        // newest first: a crash part-way leaves a shorter log, never a gap
        while inner.segments.len() > i + 1 {
            let seg = inner.segments.pop().expect("a segment after i");
            remove_file(&seg.path)?;
            remove_file(&seg.index_path())?;
        }
        let seg = &mut inner.segments[i];
        // a sealed segment's sidecar describes what is about to be cut
        remove_file(&seg.index_path())?;
        // the removals are durable before the cut: a cut segment is never followed by files
        // that were meant to be gone
        sync_dir(&self.dir);
        seg.file.set_len(pos).map_err(|e| io_err(&seg.path, e))?;
        seg.file.sync_all().map_err(|e| io_err(&seg.path, e))?;
        seg.size = pos;
        seg.next = from;
        seg.max_ts = max_ts;
        seg.index.retain(|e| (e.pos as u64) < pos);
        seg.last_indexed_pos = seg.index.last().map_or(0, |e| e.pos as u64);
        let (file, path) = (seg.file.clone(), seg.path.clone());
        inner.next_offset = from;
        // the syncer: the active file, the end written, then a new epoch with the durable
        // offset set down (a pass or publication begun before it publishes nothing)
        *self.sync.active.lock() = file;
        *self.sync.active_path.lock() = path;
        self.sync.written_end.store(from, Ordering::Release);
        let epoch = self.sync.epoch() + 1;
        self.sync.cuts.lock().push(epoch, from);
        self.sync.epoch.store(epoch, Ordering::Release);
        self.sync.durable.send_modify(|d| {
            d.offset = from;
            d.epoch = epoch;
        });
        Ok(())
    }
}

/// Where the batch starting at `from` is in `seg` (which holds `from`), with the largest
/// timestamp of the batches before it; `Ok(Err(reason))` when no batch starts there.
fn batch_start(seg: &Segment, from: u64) -> Result<Result<(u64, i64), String>, LogError> {
    // start at the last index entry of a batch before `from` (its max timestamp covers that
    // batch, which is kept)
    let (mut pos, mut max_ts) = seg
        .index
        .iter()
        .take_while(|e| seg.base + (e.rel as u64) < from)
        .last()
        .map_or((0, i64::MIN), |e| (e.pos as u64, e.max_ts));
    while pos + HEADER as u64 <= seg.size {
        let mut h = [0u8; HEADER];
        seg.file
            .read_exact_at(&mut h, pos)
            .map_err(|e| io_err(&seg.path, e))?;
        let p = parse_header(&h);
        if p.len > MAX_BATCH_BYTES || pos + (HEADER + p.len) as u64 > seg.size {
            return Err(LogError::Corrupt {
                path: seg.path.clone(),
                position: pos,
                reason: format!("batch length {} beyond the segment", p.len),
            });
        }
        if p.base == from {
            return Ok(Ok((pos, max_ts)));
        }
        if p.base > from {
            return Ok(Err(format!(
                "no batch starts there (next batch at {})",
                p.base
            )));
        }
        if from < p.base + p.count as u64 {
            return Ok(Err(format!(
                "inside the batch {}..{}",
                p.base,
                p.base + p.count as u64
            )));
        }
        max_ts = max_ts.max(p.ts);
        pos += (HEADER + p.len) as u64;
    }
    Ok(Err("no batch starts there".into()))
}

/// Remove a file, which may already be gone.
fn remove_file(path: &std::path::Path) -> Result<(), LogError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err(path, e)),
    }
}
