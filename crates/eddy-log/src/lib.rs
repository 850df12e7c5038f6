//! `eddy-log`: a segmented, append-only log of opaque batches, safe against crashes.
//!
//! It knows nothing of queues, messages or protocols. The shaping decision is **group commit**:
//! appends only write to the OS; one [`Syncer`] thread, shared by every log, fsyncs dirty logs
//! and publishes each log's durable offset, so many writers share one fsync and a caller that
//! needs durability awaits [`Log::wait_durable`].
//!
//! # On-disk format
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
//!
//! # Recovery
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
//! Every repair is also returned by [`Log::recovery_report`]. Open never allocates from a length
//! read from disk (payload checksums go through a fixed buffer; sidecars are size-checked before
//! they are read), and an I/O error while scanning fails the open instead of truncating.
//! Corruption inside a sealed segment whose sidecar is valid is not looked for at open (that
//! would read every segment); [`Log::read`] reports it as [`LogError::Corrupt`].

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::{Condvar, Mutex};
use tokio::sync::watch;

const HEADER: usize = 28;
/// Largest batch payload accepted or believed when reading.
pub const MAX_BATCH_BYTES: usize = 256 << 20;
const INDEX_MAGIC: &[u8; 4] = b"EIDX";

/// What [`Log::rewrite_sealed`] does with one batch.
pub enum Rewrite {
    /// Leave it as it is.
    Keep,
    /// Replace its payload (same base offset, record count and timestamp).
    Replace(Vec<u8>),
}

/// When appends become durable.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum FsyncPolicy {
    /// fsync as soon as the syncer sees a write (concurrent writers share one fsync).
    Always,
    /// Wait up to this long after the first write to gather more writers, then fsync.
    Batch(Duration),
    /// Never fsync on the write path: durable once written to the OS.
    Never,
}

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

fn io_err(path: &Path, source: std::io::Error) -> LogError {
    LogError::Io {
        path: path.to_owned(),
        source,
    }
}

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

/// What [`Log::open`] found and repaired (see the module doc's *Recovery*).
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

#[derive(Clone, Copy, Debug)]
struct Durable {
    offset: u64,
    failed: bool,
}

struct IndexEntry {
    rel: u32,
    pos: u32,
    max_ts: i64,
}

struct Segment {
    base: u64,
    path: PathBuf,
    file: Arc<File>,
    size: u64,
    next: u64,
    max_ts: i64,
    created: Instant,
    index: Vec<IndexEntry>,
    last_indexed_pos: u64,
}

impl Segment {
    fn index_path(&self) -> PathBuf {
        self.path.with_extension("index")
    }
}

struct Inner {
    segments: Vec<Segment>,
    next_offset: u64,
    closed: bool,
}

/// What the syncer needs of a log.
struct SyncTarget {
    active: Mutex<Arc<File>>,
    active_path: Mutex<PathBuf>,
    written_end: AtomicU64,
    durable: watch::Sender<Durable>,
    failed: AtomicBool,
}

/// Group-commit service shared by many logs: one background thread fsyncs dirty logs.
pub struct Syncer {
    policy: FsyncPolicy,
    state: Mutex<SyncerState>,
    cv: Condvar,
    fsyncs: AtomicU64,
    latency: FsyncLatency,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// Upper bounds (seconds) of the fsync latency histogram's buckets (the last is +Inf).
pub const FSYNC_BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// How long the group committer's fsyncs took: a count per bucket of [`FSYNC_BUCKETS`] (plus
/// one for longer), and the sum.
#[derive(Default)]
struct FsyncLatency {
    buckets: [AtomicU64; FSYNC_BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
}

/// A reading of the fsync latency histogram.
#[derive(Debug, Clone)]
pub struct FsyncHistogram {
    /// Per bucket of [`FSYNC_BUCKETS`] then +Inf: fsyncs that took at most its bound (not
    /// cumulative).
    pub counts: Vec<u64>,
    /// Total seconds spent in fsync.
    pub sum_secs: f64,
}

struct SyncerState {
    dirty: HashMap<usize, Weak<SyncTarget>>,
    shutdown: bool,
}

impl std::fmt::Debug for Syncer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Syncer")
            .field("policy", &self.policy)
            .finish()
    }
}

impl Syncer {
    /// Start the syncer thread.
    pub fn new(policy: FsyncPolicy) -> Arc<Syncer> {
        let s = Arc::new(Syncer {
            policy,
            state: Mutex::new(SyncerState {
                dirty: HashMap::new(),
                shutdown: false,
            }),
            cv: Condvar::new(),
            fsyncs: AtomicU64::new(0),
            latency: FsyncLatency::default(),
            thread: Mutex::new(None),
        });
        if policy != FsyncPolicy::Never {
            let me = s.clone();
            let h = std::thread::Builder::new()
                .name("eddy-fsync".into())
                .spawn(move || me.run())
                .expect("spawn fsync thread");
            *s.thread.lock() = Some(h);
        }
        s
    }

    /// The policy.
    pub fn policy(&self) -> FsyncPolicy {
        self.policy
    }

    /// How many fsyncs the syncer has made.
    pub fn fsync_count(&self) -> u64 {
        self.fsyncs.load(Ordering::Relaxed)
    }

    /// How long its fsyncs took.
    pub fn fsync_histogram(&self) -> FsyncHistogram {
        FsyncHistogram {
            counts: self
                .latency
                .buckets
                .iter()
                .map(|b| b.load(Ordering::Relaxed))
                .collect(),
            sum_secs: self.latency.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9,
        }
    }

    fn mark(&self, t: &Arc<SyncTarget>) {
        let mut st = self.state.lock();
        st.dirty.insert(Arc::as_ptr(t) as usize, Arc::downgrade(t));
        drop(st);
        self.cv.notify_one();
    }

    fn run(&self) {
        loop {
            let batch: Vec<Weak<SyncTarget>> = {
                let mut st = self.state.lock();
                while st.dirty.is_empty() && !st.shutdown {
                    self.cv.wait(&mut st);
                }
                if st.dirty.is_empty() && st.shutdown {
                    return;
                }
                if let FsyncPolicy::Batch(d) = self.policy {
                    if !st.shutdown {
                        drop(st);
                        std::thread::sleep(d);
                        st = self.state.lock();
                    }
                }
                st.dirty.drain().map(|(_, w)| w).collect()
            };
            for w in batch {
                if let Some(t) = w.upgrade() {
                    self.sync_target(&t);
                }
            }
        }
    }

    fn sync_target(&self, t: &SyncTarget) {
        if t.failed.load(Ordering::Acquire) {
            return;
        }
        // read the end first, then the file: a roll in between fsyncs the old file itself
        let end = t.written_end.load(Ordering::Acquire);
        let file = t.active.lock().clone();
        self.fsyncs.fetch_add(1, Ordering::Relaxed);
        let began = std::time::Instant::now();
        let synced = file.sync_data();
        let took = began.elapsed();
        let secs = took.as_secs_f64();
        let bucket = FSYNC_BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(FSYNC_BUCKETS.len());
        self.latency.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.latency
            .sum_nanos
            .fetch_add(took.as_nanos() as u64, Ordering::Relaxed);
        match synced {
            Ok(()) => {
                t.durable.send_modify(|d| {
                    if end > d.offset {
                        d.offset = end
                    }
                });
            }
            Err(e) => {
                tracing::error!(path = %t.active_path.lock().display(), "fsync failed, log stops accepting writes: {e}");
                t.failed.store(true, Ordering::Release);
                t.durable.send_modify(|d| d.failed = true);
            }
        }
    }

    /// fsync everything still dirty and stop the thread. Idempotent.
    pub fn shutdown(&self) {
        self.state.lock().shutdown = true;
        self.cv.notify_all();
        if let Some(h) = self.thread.lock().take() {
            let _ = h.join();
        }
    }
}

impl Drop for Syncer {
    fn drop(&mut self) {
        self.state.get_mut().shutdown = true;
        self.cv.notify_all();
    }
}

/// A log in one directory. All methods take `&self`.
pub struct Log {
    dir: PathBuf,
    config: LogConfig,
    inner: Mutex<Inner>,
    sync: Arc<SyncTarget>,
    syncer: Arc<Syncer>,
    recovery: RecoveryReport,
}

impl std::fmt::Debug for Log {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Log").field("dir", &self.dir).finish()
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn segment_path(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("{base:020}.log"))
}

fn open_rw(path: &Path) -> Result<File, LogError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|e| io_err(path, e))
}

fn encode_header(base: u64, count: u32, ts: i64, payload: &[u8]) -> [u8; HEADER] {
    let mut h = [0u8; HEADER];
    h[0..8].copy_from_slice(&base.to_le_bytes());
    h[8..12].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    h[16..20].copy_from_slice(&count.to_le_bytes());
    h[20..28].copy_from_slice(&ts.to_le_bytes());
    let crc = crc32c::crc32c_append(crc32c::crc32c(&h[16..28]), payload);
    h[12..16].copy_from_slice(&crc.to_le_bytes());
    h
}

struct Parsed {
    base: u64,
    len: usize,
    crc: u32,
    count: u32,
    ts: i64,
}

fn parse_header(h: &[u8; HEADER]) -> Parsed {
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
fn index_entry(seg_base: u64, batch_base: u64, pos: u64, max_ts: i64) -> Option<IndexEntry> {
    Some(IndexEntry {
        rel: u32::try_from(batch_base.checked_sub(seg_base)?).ok()?,
        pos: u32::try_from(pos).ok()?,
        max_ts,
    })
}

/// The result of scanning a segment.
struct Scan {
    /// Bytes of valid batches from position 0.
    size: u64,
    /// Offset after the last valid batch.
    next: u64,
    max_ts: i64,
    index: Vec<IndexEntry>,
    /// Why the scan stopped before the end of the file (None: it reached the end exactly).
    stop: Option<&'static str>,
}

/// Buffer for checksumming payloads while scanning: memory use does not depend on lengths read
/// from disk.
const SCAN_CHUNK: usize = 64 << 10;

/// Scan a segment from position 0 and stop at the first invalid batch: short, impossible length
/// or record count, wrong base offset, ending beyond `max_next` (the next segment's base), or a
/// bad CRC. Only I/O errors are errors.
fn scan_segment(
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

fn write_index(seg: &Segment) -> std::io::Result<()> {
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
fn read_index(
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
fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

impl Log {
    /// Open or create the log in `dir`, recovering from a crash: a torn tail of the active
    /// segment is truncated, and so is a sealed segment at its first invalid batch (later
    /// segments are kept). What was repaired is in [`Log::recovery_report`]. Only I/O errors
    /// fail the open.
    pub fn open(dir: &Path, config: LogConfig, syncer: Arc<Syncer>) -> Result<Arc<Log>, LogError> {
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
                None => scan_segment(&file, base, len, max_next, config.index_interval_bytes)
                    .map_err(|e| io_err(&path, e))?,
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
        });
        let sync = Arc::new(SyncTarget {
            active: Mutex::new(active.file.clone()),
            active_path: Mutex::new(active.path.clone()),
            written_end: AtomicU64::new(next_offset),
            durable,
            failed: AtomicBool::new(false),
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
        if payload.len() > MAX_BATCH_BYTES {
            return Err(LogError::TooLarge {
                size: payload.len(),
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
        let need = (HEADER + payload.len()) as u64;
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
        let header = encode_header(base, count, timestamp_ms, payload);
        let interval = self.config.index_interval_bytes as u64;
        let a = inner.segments.last_mut().expect("active segment");
        let pos = a.size;
        let mut buf = Vec::with_capacity(need as usize);
        buf.extend_from_slice(&header);
        buf.extend_from_slice(payload);
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
        drop(inner);
        // fetch_max: a concurrent appender that stores after us must not move the end back, or
        // the syncer could publish less than we wait for and never be woken again
        self.sync.written_end.fetch_max(end, Ordering::AcqRel);
        if self.syncer.policy() == FsyncPolicy::Never {
            self.sync
                .durable
                .send_modify(|d| d.offset = d.offset.max(end));
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
    pub fn wait_durable(
        &self,
        end_offset: u64,
    ) -> impl std::future::Future<Output = Result<(), LogError>> + Send + 'static {
        let mut rx = self.sync.durable.subscribe();
        async move {
            let d = rx
                .wait_for(|d| d.failed || d.offset >= end_offset)
                .await
                .map_err(|_| LogError::Closed)?;
            if d.offset >= end_offset {
                Ok(())
            } else {
                Err(LogError::Failed("fsync failed".into()))
            }
        }
    }

    /// Batches from the one containing `from_offset` on, up to about `max_bytes` of payload
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

    /// Bytes stored.
    pub fn size_bytes(&self) -> u64 {
        self.inner.lock().segments.iter().map(|s| s.size).sum()
    }

    /// The first offset of the active segment: everything below is in sealed segments.
    pub fn sealed_end(&self) -> u64 {
        let inner = self.inner.lock();
        inner.segments.last().map_or(inner.next_offset, |s| s.base)
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
        drop(inner);
        self.sync
            .durable
            .send_modify(|d| d.offset = d.offset.max(end));
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

#[cfg(test)]
mod tests;
