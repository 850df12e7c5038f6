//! The on-disk format of a log: batch headers, segment names and index sidecars, with the code
//! that encodes, decodes and scans them (`log.rs` appends and `log/read.rs` reads whole batches
//! through `encode_header` / `parse_header`).
//!
//! A log is a directory of segments. Segment `{base:020}.log` (exactly 20 decimal digits; other
//! names are ignored) holds batches back to back; each batch is a 28-byte little-endian header
//! followed by the payload:
//!
//! | bytes | field |
//! |---|---|
//! | 0..8 | `base_offset` u64 — offset of the batch's first record |
//! | 8..12 | `payload_len` u32 |
//! | 12..16 | `crc32c` u32 over bytes 16..28 and the payload |
//! | 16..20 | `record_count` u32 (≥ 1; the batch occupies `base_offset..base_offset+record_count`) |
//! | 20..28 | `timestamp_ms` i64 |
//!
//! When a segment is sealed (rolled), a sidecar `{base:020}.index` is written: magic `EIDX`,
//! version u32 = 1, segment size u64, next offset u64, max timestamp i64, entry count u32, then
//! entries of (relative offset u32, file position u32, max timestamp so far i64) — a sparse
//! offset index and time index in one, an entry every `index_interval_bytes` (batches that do
//! not fit the u32 fields are not indexed). A missing or invalid sidecar is rebuilt by scanning
//! the segment (and rewritten).
//!
//! Offsets normally run contiguously from one segment to the next (a segment's next offset is
//! the following segment's base). After recovery from corruption in a sealed segment they may
//! have a gap, which reads skip.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use crate::error::{io_err, LogError};

pub(crate) const HEADER: usize = 28;
/// Largest batch payload accepted or believed when reading.
pub const MAX_BATCH_BYTES: usize = 256 << 20;
const INDEX_MAGIC: &[u8; 4] = b"EIDX";

/// A batch read back.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    /// First offset.
    pub base_offset: u64,
    /// Records in the batch.
    pub record_count: u32,
    /// Timestamp given at append.
    pub timestamp_ms: i64,
    /// The payload.
    pub payload: Vec<u8>,
}

pub(crate) struct IndexEntry {
    pub(crate) rel: u32,
    pub(crate) pos: u32,
    pub(crate) max_ts: i64,
}

pub(crate) struct Segment {
    pub(crate) base: u64,
    pub(crate) path: PathBuf,
    pub(crate) file: Arc<File>,
    pub(crate) size: u64,
    pub(crate) next: u64,
    pub(crate) max_ts: i64,
    pub(crate) created: Instant,
    pub(crate) index: Vec<IndexEntry>,
    pub(crate) last_indexed_pos: u64,
}

impl Segment {
    pub(crate) fn index_path(&self) -> PathBuf {
        self.path.with_extension("index")
    }
}

pub(crate) fn segment_path(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("{base:020}.log"))
}

pub(crate) fn open_rw(path: &Path) -> Result<File, LogError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|e| io_err(path, e))
}

pub(crate) fn encode_header(base: u64, count: u32, ts: i64, payload: &[u8]) -> [u8; HEADER] {
    encode_header_parts(base, count, ts, &[payload])
}

/// The header of a batch whose payload is `parts` one after the other.
pub(crate) fn encode_header_parts(base: u64, count: u32, ts: i64, parts: &[&[u8]]) -> [u8; HEADER] {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let mut h = [0u8; HEADER];
    h[0..8].copy_from_slice(&base.to_le_bytes());
    h[8..12].copy_from_slice(&(len as u32).to_le_bytes());
    h[16..20].copy_from_slice(&count.to_le_bytes());
    h[20..28].copy_from_slice(&ts.to_le_bytes());
    let crc = parts.iter().fold(crc32c::crc32c(&h[16..28]), |c, p| {
        crc32c::crc32c_append(c, p)
    });
    h[12..16].copy_from_slice(&crc.to_le_bytes());
    h
}

pub(crate) struct Parsed {
    pub(crate) base: u64,
    pub(crate) len: usize,
    pub(crate) crc: u32,
    pub(crate) count: u32,
    pub(crate) ts: i64,
}

pub(crate) fn parse_header(h: &[u8; HEADER]) -> Parsed {
    Parsed {
        base: u64::from_le_bytes(h[0..8].try_into().unwrap_or_default()),
        len: u32::from_le_bytes(h[8..12].try_into().unwrap_or_default()) as usize,
        crc: u32::from_le_bytes(h[12..16].try_into().unwrap_or_default()),
        count: u32::from_le_bytes(h[16..20].try_into().unwrap_or_default()),
        ts: i64::from_le_bytes(h[20..28].try_into().unwrap_or_default()),
    }
}

/// An index entry, unless the batch's relative offset or position does not fit the u32 fields
/// (such batches are simply not indexed: reads scan forward from an earlier entry).
pub(crate) fn index_entry(
    seg_base: u64,
    batch_base: u64,
    pos: u64,
    max_ts: i64,
) -> Option<IndexEntry> {
    Some(IndexEntry {
        rel: u32::try_from(batch_base.checked_sub(seg_base)?).ok()?,
        pos: u32::try_from(pos).ok()?,
        max_ts,
    })
}

/// The result of scanning a segment.
pub(crate) struct Scan {
    /// Bytes of valid batches from position 0.
    pub(crate) size: u64,
    /// Offset after the last valid batch.
    pub(crate) next: u64,
    pub(crate) max_ts: i64,
    pub(crate) index: Vec<IndexEntry>,
    /// Why the scan stopped before the end of the file (None: it reached the end exactly).
    pub(crate) stop: Option<&'static str>,
}

/// Buffer for checksumming payloads while scanning: memory use does not depend on lengths read
/// from disk.
const SCAN_CHUNK: usize = 64 << 10;

/// Scan a segment from position 0 and stop at the first invalid batch: short, impossible length
/// or record count, wrong base offset, ending beyond `max_next` (the next segment's base), or a
/// bad CRC. Only I/O errors are errors.
pub(crate) fn scan_segment(
    file: &File,
    base: u64,
    file_len: u64,
    max_next: u64,
    interval: u32,
) -> std::io::Result<Scan> {
    let mut pos = 0u64;
    let mut next = base;
    let mut max_ts = i64::MIN;
    let mut index = Vec::new();
    let mut last_indexed: Option<u64> = None;
    let mut buf = vec![0u8; SCAN_CHUNK];
    let stop = loop {
        if pos == file_len {
            break None;
        }
        if pos + HEADER as u64 > file_len {
            break Some("short batch header");
        }
        let mut h = [0u8; HEADER];
        file.read_exact_at(&mut h, pos)?;
        let p = parse_header(&h);
        if p.len > MAX_BATCH_BYTES {
            break Some("batch length beyond the limit");
        }
        let end = pos + (HEADER + p.len) as u64;
        if end > file_len {
            break Some("batch extends past the end of the file");
        }
        if p.count == 0 {
            break Some("record count of zero");
        }
        if p.base != next {
            break Some("unexpected base offset");
        }
        let Some(batch_next) = next.checked_add(p.count as u64) else {
            break Some("offset overflow");
        };
        if batch_next > max_next {
            break Some("batch overlaps the next segment's offsets");
        }
        let mut crc = crc32c::crc32c(&h[16..28]);
        let mut done = 0usize;
        while done < p.len {
            let n = (p.len - done).min(SCAN_CHUNK);
            file.read_exact_at(&mut buf[..n], pos + (HEADER + done) as u64)?;
            crc = crc32c::crc32c_append(crc, &buf[..n]);
            done += n;
        }
        if crc != p.crc {
            break Some("crc mismatch");
        }
        max_ts = max_ts.max(p.ts);
        if last_indexed.is_none_or(|l| pos - l >= interval as u64) {
            if let Some(e) = index_entry(base, p.base, pos, max_ts) {
                index.push(e);
                last_indexed = Some(pos);
            }
        }
        pos = end;
        next = batch_next;
    };
    Ok(Scan {
        size: pos,
        next,
        max_ts,
        index,
        stop,
    })
}

pub(crate) fn write_index(seg: &Segment) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(36 + seg.index.len() * 16);
    buf.extend_from_slice(INDEX_MAGIC);
    buf.extend_from_slice(&1u32.to_le_bytes());
    buf.extend_from_slice(&seg.size.to_le_bytes());
    buf.extend_from_slice(&seg.next.to_le_bytes());
    buf.extend_from_slice(&seg.max_ts.to_le_bytes());
    buf.extend_from_slice(&(seg.index.len() as u32).to_le_bytes());
    for e in &seg.index {
        buf.extend_from_slice(&e.rel.to_le_bytes());
        buf.extend_from_slice(&e.pos.to_le_bytes());
        buf.extend_from_slice(&e.max_ts.to_le_bytes());
    }
    let mut f = File::create(seg.index_path())?;
    f.write_all(&buf)?;
    f.sync_data()
}

/// Load a sidecar index; None when missing or not matching the segment (`base..max_next` is
/// the segment's possible offset range). The sidecar's size is checked before it is read.
pub(crate) fn read_index(
    path: &Path,
    base: u64,
    file_len: u64,
    max_next: u64,
) -> Option<(u64, i64, Vec<IndexEntry>)> {
    let f = File::open(path).ok()?;
    // at most one entry per batch, and a batch takes at least a header
    let limit = 36 + 16 * (file_len / HEADER as u64 + 1);
    let meta_len = f.metadata().ok()?.len();
    if meta_len > limit {
        return None;
    }
    let mut b = Vec::with_capacity(meta_len as usize);
    f.take(limit + 1).read_to_end(&mut b).ok()?;
    if b.len() < 36 || &b[0..4] != INDEX_MAGIC || u32::from_le_bytes(b[4..8].try_into().ok()?) != 1
    {
        return None;
    }
    let size = u64::from_le_bytes(b[8..16].try_into().ok()?);
    let next = u64::from_le_bytes(b[16..24].try_into().ok()?);
    let max_ts = i64::from_le_bytes(b[24..32].try_into().ok()?);
    let n = u32::from_le_bytes(b.get(32..36)?.try_into().ok()?) as usize;
    if size != file_len
        || b.len() != 36 + n * 16
        || next < base
        || next > max_next
        || (size == 0) != (next == base)
    {
        return None;
    }
    let index: Vec<IndexEntry> = b[36..]
        .chunks_exact(16)
        .map(|c| IndexEntry {
            rel: u32::from_le_bytes(c[0..4].try_into().unwrap_or_default()),
            pos: u32::from_le_bytes(c[4..8].try_into().unwrap_or_default()),
            max_ts: i64::from_le_bytes(c[8..16].try_into().unwrap_or_default()),
        })
        .collect();
    // entries must point inside the segment, in increasing order
    let in_range = index
        .iter()
        .all(|e| e.pos as u64 + HEADER as u64 <= size && base.saturating_add(e.rel as u64) < next);
    let ordered = index
        .windows(2)
        .all(|w| w[0].rel < w[1].rel && w[0].pos < w[1].pos);
    if !(in_range && ordered) {
        return None;
    }
    Some((next, max_ts, index))
}

/// fsync a directory so that file creations and removals in it are durable (best effort, as
/// not every platform supports it).
pub(crate) fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}
