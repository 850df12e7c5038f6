//! Removing data from a log: whole segments (below an offset, by age, by size) and, for
//! compaction, sealed segments rewritten batch by batch.

use std::fs::{self, File};
use std::io::Write;
use std::sync::Arc;

use super::Log;
use crate::clock::now_ms;
use crate::error::{io_err, LogError};
use crate::segment::{
    encode_header, index_entry, open_rw, segment_path, write_index, Batch, Segment,
};

/// What [`Log::rewrite_sealed`] does with one batch.
pub enum Rewrite {
    /// Leave it as it is.
    Keep,
    /// Replace its payload (same base offset, record count and timestamp).
    Replace(Vec<u8>),
}

impl Log {
    fn remove_segment(seg: &Segment) {
        for p in [seg.path.clone(), seg.index_path()] {
            if let Err(e) = fs::remove_file(&p) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(path = %p.display(), "could not delete segment file: {e}");
                }
            }
        }
    }

    /// Delete whole segments all of whose offsets are below `offset` (rolling the active one
    /// first when it qualifies, so the segment deleted is then sealed and an empty active
    /// segment remains). Segments are deleted from the front only while their next offset is
    /// `<= offset`, so no offset `>= offset` is ever deleted, and the active segment never is.
    ///
    /// Safe while others read: [`Log::read`] takes its segments (open file handles) under the
    /// lock and reads without it, and a deleted file stays readable through an open handle, so
    /// a read in progress completes with intact batches. A later read from an offset that was
    /// deleted returns batches from the first remaining offset on ([`Log::start_offset`]): a
    /// reader sees a jump forward (`base_offset` above what it asked for), never an error or
    /// a partial batch.
    pub fn delete_before(&self, offset: u64) -> Result<(), LogError> {
        let mut inner = self.inner.lock();
        if inner.closed {
            return Err(LogError::Closed);
        }
        let active_done = inner
            .segments
            .last()
            .is_some_and(|a| a.size > 0 && a.next <= offset);
        if active_done {
            self.roll(&mut inner)?;
        }
        while inner.segments.len() > 1 && inner.segments[0].next <= offset {
            let seg = inner.segments.remove(0);
            Self::remove_segment(&seg);
        }
        Ok(())
    }

    /// Delete the oldest sealed segments older than `max_age_ms` or beyond `max_bytes` in total
    /// (never the active one; readers see what [`Log::delete_before`] describes).
    pub fn apply_retention(
        &self,
        max_age_ms: Option<i64>,
        max_bytes: Option<u64>,
    ) -> Result<usize, LogError> {
        let mut inner = self.inner.lock();
        let now = now_ms();
        let mut deleted = 0;
        loop {
            if inner.segments.len() <= 1 {
                break;
            }
            let total: u64 = inner.segments.iter().map(|s| s.size).sum();
            let s = &inner.segments[0];
            let too_old =
                max_age_ms.is_some_and(|age| s.max_ts != i64::MIN && now - s.max_ts > age);
            let too_big = max_bytes.is_some_and(|m| total > m);
            // a sealed segment left empty by recovery holds nothing and has no age
            let empty = s.size == 0;
            if !(too_old || too_big || empty) {
                break;
            }
            let seg = inner.segments.remove(0);
            Self::remove_segment(&seg);
            deleted += 1;
        }
        Ok(deleted)
    }

    /// Rewrite the sealed segments (never the active one) batch by batch: each batch is kept
    /// or given a new payload with the same base offset, record count and timestamp, so offsets
    /// never move and the segment stays contiguous. A segment whose batches are all kept is
    /// not touched. A new segment is written beside the old one, fsynced and renamed over it
    /// (then its index sidecar); a reader already holding the old file finishes on it.
    /// Returns the bytes reclaimed.
    pub fn rewrite_sealed(
        &self,
        mut rewrite: impl FnMut(&Batch) -> Rewrite,
    ) -> Result<u64, LogError> {
        let sealed: Vec<(u64, u64, u64)> = {
            let inner = self.inner.lock();
            if inner.closed {
                return Err(LogError::Closed);
            }
            let n = inner.segments.len().saturating_sub(1);
            inner.segments[..n]
                .iter()
                .filter(|s| s.size > 0)
                .map(|s| (s.base, s.next, s.size))
                .collect()
        };
        let interval = self.config.index_interval_bytes as u64;
        let mut reclaimed = 0;
        for (base, next, size) in sealed {
            // this segment's batches (the read stops once it has about `size` bytes)
            let batches = self.read(base, size as usize)?;
            let mut out: Vec<u8> = Vec::new();
            let mut index = Vec::new();
            let mut last_indexed: Option<u64> = None;
            let mut max_ts = i64::MIN;
            let mut changed = false;
            for b in batches.iter().take_while(|b| b.base_offset < next) {
                let replaced = match rewrite(b) {
                    Rewrite::Keep => None,
                    Rewrite::Replace(p) => {
                        changed = true;
                        Some(p)
                    }
                };
                let payload = replaced.as_deref().unwrap_or(&b.payload);
                let pos = out.len() as u64;
                out.extend_from_slice(&encode_header(
                    b.base_offset,
                    b.record_count,
                    b.timestamp_ms,
                    payload,
                ));
                out.extend_from_slice(payload);
                max_ts = max_ts.max(b.timestamp_ms);
                if last_indexed.is_none_or(|l| pos - l >= interval) {
                    if let Some(e) = index_entry(base, b.base_offset, pos, max_ts) {
                        index.push(e);
                        last_indexed = Some(pos);
                    }
                }
            }
            if !changed {
                continue;
            }
            let path = segment_path(&self.dir, base);
            let tmp = path.with_extension("log.rewritten");
            {
                let mut f = File::create(&tmp).map_err(|e| io_err(&tmp, e))?;
                f.write_all(&out).map_err(|e| io_err(&tmp, e))?;
                f.sync_data().map_err(|e| io_err(&tmp, e))?;
            }
            let mut inner = self.inner.lock();
            let last = inner.segments.len().saturating_sub(1);
            let Some(i) = inner.segments[..last].iter().position(|s| s.base == base) else {
                // deleted by retention meanwhile
                drop(inner);
                let _ = fs::remove_file(&tmp);
                continue;
            };
            fs::rename(&tmp, &path).map_err(|e| io_err(&path, e))?;
            if let Ok(d) = File::open(&self.dir) {
                let _ = d.sync_all();
            }
            let file = Arc::new(open_rw(&path)?);
            let seg = &mut inner.segments[i];
            reclaimed += seg.size.saturating_sub(out.len() as u64);
            seg.file = file;
            seg.size = out.len() as u64;
            seg.index = index;
            seg.last_indexed_pos = last_indexed.unwrap_or(0);
            seg.max_ts = max_ts;
            if let Err(e) = write_index(seg) {
                tracing::warn!(path = %seg.path.display(), "could not write segment index (it will be rebuilt): {e}");
            }
        }
        Ok(reclaimed)
    }
}
