//! Recovery: what [`Log::open`](crate::Log::open) checks and repairs.
//!
//! On open the segments are taken in offset order.
//!
//! * The active (last) segment is scanned from the start; the first batch that is short, has an
//!   impossible length, offset or record count, or a bad CRC ends the log: the file is truncated
//!   there. That is a torn write from a crash: bytes past the last fsync, never acknowledged as
//!   durable. Logged at WARN.
//! * A sealed segment is loaded from its sidecar when the sidecar matches the file (size, offsets
//!   within the segment's range); otherwise it is scanned like the active one, also requiring
//!   every batch to end at or below the next segment's base offset. Sealed segments were fsynced
//!   when sealed, so an invalid batch there is disk corruption: the segment is truncated at it
//!   (the rest of that segment is lost), later segments are kept, and the lost offsets become a
//!   gap. Logged at ERROR.
//!
//! Every repair is also returned by [`Log::recovery_report`](crate::Log::recovery_report). Open never allocates from a length
//! read from disk (payload checksums go through a fixed buffer; sidecars are size-checked before
//! they are read), and an I/O error while scanning fails the open instead of truncating.
//! Corruption inside a sealed segment whose sidecar is valid is not looked for at open (that
//! would read every segment); [`Log::read`](crate::Log::read) reports it as
//! [`LogError::Corrupt`].

use std::fs;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use crate::error::{io_err, LogError};
use crate::segment::{open_rw, read_index, scan_segment, segment_path, write_index, Scan, Segment};

/// What [`Log::open`](crate::Log::open) found and repaired (see this module's doc).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Segments cut short by this open, in offset order.
    pub repairs: Vec<SegmentRepair>,
    /// Offset ranges missing between consecutive segments after recovery (left by this or an
    /// earlier repair of a sealed segment); reads skip them.
    pub gaps: Vec<Range<u64>>,
}

impl RecoveryReport {
    /// Nothing was repaired.
    pub fn is_clean(&self) -> bool {
        self.repairs.is_empty()
    }

    /// Data in a sealed (fsynced) segment was lost: disk corruption, worth an ERROR.
    pub fn lost_sealed_data(&self) -> bool {
        self.repairs.iter().any(|r| r.sealed)
    }
}

/// One segment cut short on open.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentRepair {
    /// The segment file.
    pub path: PathBuf,
    /// Its base offset.
    pub base_offset: u64,
    /// A sealed segment (fsynced: this is corruption) rather than the active one (a torn write
    /// after a crash: data never acknowledged as durable).
    pub sealed: bool,
    /// Bytes kept.
    pub valid_bytes: u64,
    /// Bytes cut off (0 when a sealed segment ended early, on a batch boundary).
    pub truncated_bytes: u64,
    /// The segment's next offset after the repair.
    pub end_offset: u64,
    /// For a sealed segment, the offsets lost (up to the next segment's base); unknown (`None`)
    /// for the active segment's tail.
    pub lost_offsets: Option<Range<u64>>,
    /// Why the scan stopped.
    pub reason: &'static str,
}

impl std::fmt::Display for SegmentRepair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} segment {} cut to {} bytes ({} bytes dropped), ends at offset {}: {}",
            if self.sealed { "sealed" } else { "active" },
            self.path.display(),
            self.valid_bytes,
            self.truncated_bytes,
            self.end_offset,
            self.reason
        )?;
        if let Some(lost) = &self.lost_offsets {
            write!(f, "; offsets {}..{} lost", lost.start, lost.end)?;
        }
        Ok(())
    }
}

/// Take the segment files of `dir` in offset order, checking and repairing each as the module
/// doc says; `interval` is the bytes between index entries of a rebuilt index.
pub(crate) fn recover(
    dir: &Path,
    interval: u32,
) -> Result<(Vec<Segment>, RecoveryReport), LogError> {
    // a rewrite (compaction) cut short by a crash leaves its new file behind: the old
    // segment is still whole, so the leftover goes
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().ends_with(".log.rewritten") {
                let _ = fs::remove_file(e.path());
            }
        }
    }
    fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
    let mut bases: Vec<u64> = fs::read_dir(dir)
        .map_err(|e| io_err(dir, e))?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let base = name.strip_suffix(".log")?.parse::<u64>().ok()?;
            // only canonical names, so that two files never claim one base
            (name.len() == 24).then_some(base)
        })
        .collect();
    bases.sort_unstable();
    let mut report = RecoveryReport::default();
    let mut segments = Vec::new();
    for (i, &base) in bases.iter().enumerate() {
        let path = segment_path(dir, base);
        let file = open_rw(&path)?;
        let len = file.metadata().map_err(|e| io_err(&path, e))?.len();
        // a sealed segment's offsets end at or below the next segment's base
        let following = bases.get(i + 1).copied();
        let sealed = following.is_some();
        let max_next = following.unwrap_or(u64::MAX);
        let sidecar = if sealed {
            read_index(&path.with_extension("index"), base, len, max_next)
        } else {
            None
        };
        let had_sidecar = sidecar.is_some();
        let scan = match sidecar {
            Some((next, max_ts, index)) => Scan {
                size: len,
                next,
                max_ts,
                index,
                stop: None,
            },
            None => {
                scan_segment(&file, base, len, max_next, interval).map_err(|e| io_err(&path, e))?
            }
        };
        let mut repair = None;
        if let Some(reason) = scan.stop {
            file.set_len(scan.size).map_err(|e| io_err(&path, e))?;
            file.sync_all().map_err(|e| io_err(&path, e))?;
            repair = Some((len - scan.size, reason));
        } else if sealed && !had_sidecar && scan.next < max_next {
            // intact batches, but fewer than when the segment was sealed
            repair = Some((
                0,
                "sealed segment ends before the next segment's base offset",
            ));
        }
        if let Some((truncated_bytes, reason)) = repair {
            let r = SegmentRepair {
                path: path.clone(),
                base_offset: base,
                sealed,
                valid_bytes: scan.size,
                truncated_bytes,
                end_offset: scan.next,
                lost_offsets: following.map(|f| scan.next..f),
                reason,
            };
            if sealed {
                tracing::error!(path = %path.display(), valid = scan.size, length = len, "corrupt sealed log segment, data lost: {r}");
            } else {
                tracing::warn!(path = %path.display(), valid = scan.size, length = len, "truncating torn or corrupt tail of log segment: {r}");
            }
            report.repairs.push(r);
        }
        if let Some(f) = following.filter(|&f| scan.next < f) {
            if repair.is_none() {
                tracing::warn!(path = %path.display(), "log has no data for offsets {}..{f} (lost in an earlier recovery)", scan.next);
            }
            report.gaps.push(scan.next..f);
        }
        let last_indexed_pos = scan.index.last().map(|e| e.pos as u64).unwrap_or(0);
        let seg = Segment {
            base,
            path,
            file: Arc::new(file),
            size: scan.size,
            next: scan.next,
            max_ts: scan.max_ts,
            created: Instant::now(),
            index: scan.index,
            last_indexed_pos,
        };
        if sealed && !had_sidecar {
            if let Err(e) = write_index(&seg) {
                tracing::warn!(path = %seg.path.display(), "could not write segment index (it will be rebuilt): {e}");
            }
        }
        segments.push(seg);
    }
    Ok((segments, report))
}
