//! Reading a log: batches from an offset, and the offset of a timestamp.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;

use super::Log;
use crate::error::{io_err, LogError};
use crate::segment::{parse_header, Batch, HEADER, MAX_BATCH_BYTES};

impl Log {
    /// (at least one batch when any exists). When `from_offset` is no longer stored (deleted, or
    /// in a gap left by recovery) the batches start at the next offset that is.
    pub fn read(&self, from_offset: u64, max_bytes: usize) -> Result<Vec<Batch>, LogError> {
        // snapshot the segments to read without holding the lock during I/O
        let snapshot: Vec<(u64, PathBuf, Arc<File>, u64, u64, u64)> = {
            let inner = self.inner.lock();
            if inner.closed {
                return Err(LogError::Closed);
            }
            let mut v = Vec::new();
            for s in inner
                .segments
                .iter()
                .filter(|s| s.next > from_offset && s.size > 0)
            {
                let start = s
                    .index
                    .iter()
                    .take_while(|e| s.base + e.rel as u64 <= from_offset)
                    .last()
                    .map(|e| e.pos as u64)
                    .unwrap_or(0);
                v.push((
                    s.base,
                    s.path.clone(),
                    s.file.clone(),
                    s.size,
                    start,
                    s.next,
                ));
            }
            v
        };
        let mut out = Vec::new();
        let mut total = 0usize;
        for (_base, path, file, size, start, _next) in snapshot {
            let mut pos = start;
            while pos + HEADER as u64 <= size {
                let mut h = [0u8; HEADER];
                file.read_exact_at(&mut h, pos)
                    .map_err(|e| io_err(&path, e))?;
                let p = parse_header(&h);
                if p.len > MAX_BATCH_BYTES || pos + (HEADER + p.len) as u64 > size {
                    return Err(LogError::Corrupt {
                        path,
                        position: pos,
                        reason: format!("batch length {} beyond the segment", p.len),
                    });
                }
                if p.base + p.count as u64 <= from_offset {
                    pos += (HEADER + p.len) as u64;
                    continue;
                }
                let mut payload = vec![0u8; p.len];
                file.read_exact_at(&mut payload, pos + HEADER as u64)
                    .map_err(|e| io_err(&path, e))?;
                if crc32c::crc32c_append(crc32c::crc32c(&h[16..28]), &payload) != p.crc {
                    return Err(LogError::Corrupt {
                        path,
                        position: pos,
                        reason: "crc mismatch".into(),
                    });
                }
                total += p.len;
                out.push(Batch {
                    base_offset: p.base,
                    record_count: p.count,
                    timestamp_ms: p.ts,
                    payload,
                });
                pos += (HEADER + p.len) as u64;
                if total >= max_bytes {
                    return Ok(out);
                }
            }
        }
        Ok(out)
    }

    /// Base offset of the first batch whose timestamp is ≥ `timestamp_ms` (uses the time index).
    pub fn offset_for_timestamp(&self, timestamp_ms: i64) -> Result<Option<u64>, LogError> {
        let from = {
            let inner = self.inner.lock();
            let Some(seg) = inner
                .segments
                .iter()
                .find(|s| s.size > 0 && s.max_ts >= timestamp_ms)
            else {
                return Ok(None);
            };
            // the last index entry whose max-so-far is still below the target is a safe start
            seg.index
                .iter()
                .take_while(|e| e.max_ts < timestamp_ms)
                .last()
                .map(|e| seg.base + e.rel as u64)
                .unwrap_or(seg.base)
        };
        let mut from = from;
        loop {
            let batches = self.read(from, 1 << 20)?;
            if batches.is_empty() {
                return Ok(None);
            }
            for b in &batches {
                if b.timestamp_ms >= timestamp_ms {
                    return Ok(Some(b.base_offset));
                }
                from = b.base_offset + b.record_count as u64;
            }
        }
    }
}
