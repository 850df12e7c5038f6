//! Reading a log: batches from an offset, only their headers (and payload prefixes) for
//! rebuilding an index, and the offset of a timestamp.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;

use super::Log;
use crate::error::{io_err, LogError};
use crate::segment::{parse_header, Batch, HEADER, MAX_BATCH_BYTES};

/// One segment to read, taken under the lock and read without it: its path and open file, its
/// size then, and the position to start at (from the sparse index).
struct ToRead {
    path: PathBuf,
    file: Arc<File>,
    size: u64,
    start: u64,
}

/// Buffer of [`Log::scan_headers`]: headers and prefixes of small batches are read this much
/// at a time.
const SCAN_HEADERS_CHUNK: usize = 1 << 20;

impl Log {
    /// The segments holding offsets `>= from_offset`, each with the position of the last index
    /// entry at or below `from_offset`.
    fn segments_from(&self, from_offset: u64) -> Result<Vec<ToRead>, LogError> {
        // snapshot the segments to read without holding the lock during I/O
        let inner = self.inner.lock();
        if inner.closed {
            return Err(LogError::Closed);
        }
        Ok(inner
            .segments
            .iter()
            .filter(|s| s.next > from_offset && s.size > 0)
            .map(|s| ToRead {
                path: s.path.clone(),
                file: s.file.clone(),
                size: s.size,
                start: s
                    .index
                    .iter()
                    .take_while(|e| s.base + e.rel as u64 <= from_offset)
                    .last()
                    .map(|e| e.pos as u64)
                    .unwrap_or(0),
            })
            .collect())
    }

    /// Batches from the one containing `from_offset` on, up to about `max_bytes` of payload:
    /// the read stops after the batch that brings the payload bytes to `max_bytes` or more (an
    /// empty payload counts as one byte), so it returns at least one batch when any exists, and
    /// `max_bytes` of 1 (or 0) returns exactly one — the batch containing `from_offset`, or the
    /// first stored after it. When `from_offset` is no longer stored (deleted, or in a gap left
    /// by recovery) the batches start at the next offset that is. Every payload's checksum is
    /// verified ([`LogError::Corrupt`] otherwise).
    pub fn read(&self, from_offset: u64, max_bytes: usize) -> Result<Vec<Batch>, LogError> {
        let mut out = Vec::new();
        let mut total = 0usize;
        for ToRead {
            path,
            file,
            size,
            start,
        } in self.segments_from(from_offset)?
        {
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
                total = total.saturating_add(p.len.max(1));
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

    /// Visit every batch from the one containing `from_offset` to the end, in offset order, with
    /// `f(base_offset, record_count, prefix)`, where `prefix` is the first `prefix` bytes of its
    /// payload (all of it when shorter) — for rebuilding an in-memory index of a large log
    /// without reading whole payloads. Headers and prefixes are read through a 1 MiB buffer
    /// (refilled from the first batch whose header and prefix it does not hold, so a run of small
    /// batches costs one read per MiB and a batch larger than that at most one 1 MiB read; a
    /// prefix longer than the buffer is read on its own). Payloads are not
    /// checksummed (lengths are checked: [`LogError::Corrupt`] for one beyond its segment).
    /// Batches appended while this runs may or may not be visited; like [`Log::read`], it skips
    /// offsets no longer stored.
    pub fn scan_headers(
        &self,
        from_offset: u64,
        prefix: usize,
        mut f: impl FnMut(u64, u32, &[u8]),
    ) -> Result<(), LogError> {
        let mut buf = vec![0u8; SCAN_HEADERS_CHUNK];
        // a prefix that does not fit the buffer is read into this one
        let mut big = Vec::new();
        for ToRead {
            path,
            file,
            size,
            start,
        } in self.segments_from(from_offset)?
        {
            // bytes of the segment from `buf_at` are in `buf[..buf_len]`
            let (mut buf_at, mut buf_len) = (start, 0usize);
            let mut pos = start;
            while pos + HEADER as u64 <= size {
                if pos < buf_at || pos + HEADER as u64 > buf_at + buf_len as u64 {
                    buf_len = (size - pos).min(buf.len() as u64) as usize;
                    buf_at = pos;
                    file.read_exact_at(&mut buf[..buf_len], pos)
                        .map_err(|e| io_err(&path, e))?;
                }
                let at = (pos - buf_at) as usize;
                let h: &[u8; HEADER] = buf[at..at + HEADER].try_into().expect("a header");
                let p = parse_header(h);
                let end = pos + (HEADER + p.len) as u64;
                if p.len > MAX_BATCH_BYTES || end > size {
                    return Err(LogError::Corrupt {
                        path,
                        position: pos,
                        reason: format!("batch length {} beyond the segment", p.len),
                    });
                }
                if p.base + p.count as u64 > from_offset {
                    let n = p.len.min(prefix);
                    let from = pos + HEADER as u64;
                    if from + n as u64 <= buf_at + buf_len as u64 {
                        let at = (from - buf_at) as usize;
                        f(p.base, p.count, &buf[at..at + n]);
                    } else if HEADER + n <= buf.len() {
                        // refill from this batch on: its header and prefix fit
                        buf_len = (size - pos).min(buf.len() as u64) as usize;
                        buf_at = pos;
                        file.read_exact_at(&mut buf[..buf_len], pos)
                            .map_err(|e| io_err(&path, e))?;
                        f(p.base, p.count, &buf[HEADER..HEADER + n]);
                    } else {
                        big.resize(n, 0);
                        file.read_exact_at(&mut big, from)
                            .map_err(|e| io_err(&path, e))?;
                        f(p.base, p.count, &big);
                    }
                }
                pos = end;
            }
        }
        Ok(())
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
