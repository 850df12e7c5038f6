use super::*;
use crate::segment::{read_index, segment_path, HEADER};
use proptest::prelude::*;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn cfg(segment_bytes: u64) -> LogConfig {
    LogConfig {
        segment_bytes,
        segment_ms: None,
        index_interval_bytes: 256,
    }
}

fn payload(i: u64, len: usize) -> Vec<u8> {
    (0..len).map(|j| (i as usize * 31 + j) as u8).collect()
}

#[test]
fn append_read_across_rolls_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let syncer = Syncer::new(FsyncPolicy::Never);
    let log = Log::open(dir.path(), cfg(4096), syncer.clone()).unwrap();
    let mut offsets = Vec::new();
    for i in 0..200u64 {
        let count = (i % 3 + 1) as u32;
        offsets.push((
            log.append(count, i as i64 * 10, &payload(i, (i % 97) as usize))
                .unwrap(),
            count,
        ));
    }
    assert!(log.segment_count() > 3, "rolled");
    // contiguous offsets
    for w in offsets.windows(2) {
        assert_eq!(w[0].0 + w[0].1 as u64, w[1].0);
    }
    let all = log.read(0, usize::MAX).unwrap();
    assert_eq!(all.len(), 200);
    for (i, b) in all.iter().enumerate() {
        assert_eq!(b.payload, payload(i as u64, i % 97));
        assert_eq!(b.timestamp_ms, i as i64 * 10);
    }
    // from the middle: the batch containing the offset comes first
    let (mid, count) = offsets[123];
    let r = log.read(mid + count as u64 - 1, 1).unwrap();
    assert_eq!(r[0].base_offset, mid);
    assert_eq!(r.len(), 1, "max_bytes stops after the first batch");
    assert_eq!(log.offset_for_timestamp(555).unwrap(), Some(offsets[56].0));
    assert_eq!(log.offset_for_timestamp(1_000_000).unwrap(), None);
    let next = log.next_offset();
    log.close().unwrap();
    drop(log);
    let log = Log::open(dir.path(), cfg(4096), syncer).unwrap();
    assert_eq!(log.next_offset(), next);
    assert_eq!(log.read(0, usize::MAX).unwrap(), all);
    assert_eq!(log.append(1, 0, b"after").unwrap(), next);
}

#[test]
fn delete_before_and_retention() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), cfg(1024), Syncer::new(FsyncPolicy::Never)).unwrap();
    for i in 0..100u64 {
        log.append(1, i as i64, &payload(i, 100)).unwrap();
    }
    let segs = log.segment_count();
    log.delete_before(50).unwrap();
    assert!(log.segment_count() < segs);
    assert!(log.start_offset() <= 50 && log.start_offset() > 0);
    assert_eq!(
        log.read(log.start_offset(), usize::MAX)
            .unwrap()
            .last()
            .unwrap()
            .base_offset,
        99
    );
    log.delete_before(100).unwrap();
    assert_eq!(log.start_offset(), 100);
    assert_eq!(log.next_offset(), 100);
    assert!(log.read(0, usize::MAX).unwrap().is_empty());
    for i in 100..200u64 {
        log.append(1, 0, &payload(i, 100)).unwrap();
    }
    let before = log.size_bytes();
    assert!(log.apply_retention(None, Some(before / 2)).unwrap() > 0);
    assert!(log.size_bytes() <= before / 2 + 1024);
    // everything is far older than 1 ms (timestamps are 0)
    assert!(log.apply_retention(Some(1), None).unwrap() > 0);
    assert_eq!(log.segment_count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn group_commit_shares_fsyncs() {
    let dir = tempfile::tempdir().unwrap();
    let syncer = Syncer::new(FsyncPolicy::Always);
    let log = Log::open(dir.path(), cfg(64 << 20), syncer.clone()).unwrap();
    let mut tasks = Vec::new();
    for t in 0..8u64 {
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..200u64 {
                let off = log.append(1, 0, &payload(t * 1000 + i, 64)).unwrap();
                log.wait_durable(off + 1).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(log.durable_offset(), 1600);
    let n = syncer.fsync_count();
    assert!(
        n > 0 && n < 1600,
        "fsyncs {n} should be shared by the 1600 appends"
    );
    syncer.shutdown();
}

#[test]
fn huge_length_in_tail_is_truncated_not_allocated() {
    let dir = tempfile::tempdir().unwrap();
    let syncer = Syncer::new(FsyncPolicy::Never);
    let log = Log::open(dir.path(), cfg(1 << 20), syncer.clone()).unwrap();
    log.append(1, 0, b"good").unwrap();
    log.close().unwrap();
    drop(log);
    let path = segment_path(dir.path(), 0);
    let mut f = OpenOptions::new().append(true).open(&path).unwrap();
    let mut bogus = [0u8; HEADER];
    bogus[0..8].copy_from_slice(&1u64.to_le_bytes());
    bogus[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
    f.write_all(&bogus).unwrap();
    drop(f);
    let log = Log::open(dir.path(), cfg(1 << 20), syncer).unwrap();
    assert_eq!(log.next_offset(), 1);
    assert_eq!(log.read(0, usize::MAX).unwrap().len(), 1);
    assert_eq!(fs::metadata(&path).unwrap().len(), (HEADER + 4) as u64);
}

#[derive(Debug, Clone)]
enum Damage {
    Cut(usize),
    Flip(usize),
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Appends, then a crash that cuts the active segment at any byte (or flips a byte in it):
    /// every batch wholly before the damage reads back intact and in order, nothing else
    /// appears, and appending continues from there.
    #[test]
    fn crash_at_any_byte(sizes in proptest::collection::vec(0usize..600, 1..60), damage_at in 0.0f64..1.0, flip in any::<bool>()) {
        let dir = tempfile::tempdir().unwrap();
        let syncer = Syncer::new(FsyncPolicy::Never);
        let log = Log::open(dir.path(), cfg(2048), syncer.clone()).unwrap();
        let mut written = Vec::new();
        for (i, len) in sizes.iter().enumerate() {
            let off = log.append(1, i as i64, &payload(i as u64, *len)).unwrap();
            written.push((off, payload(i as u64, *len)));
        }
        log.close().unwrap();
        let active_base = log.inner.lock().segments.last().unwrap().base;
        drop(log);
        let path = segment_path(dir.path(), active_base);
        let len = fs::metadata(&path).unwrap().len() as usize;
        let at = ((len as f64) * damage_at) as usize;
        let damage = if flip && len > 0 { Damage::Flip(at.min(len - 1)) } else { Damage::Cut(at) };
        match damage {
            Damage::Cut(at) => OpenOptions::new().write(true).open(&path).unwrap().set_len(at as u64).unwrap(),
            Damage::Flip(at) => {
                let mut bytes = fs::read(&path).unwrap();
                bytes[at] ^= 0x5a;
                fs::write(&path, bytes).unwrap();
            }
        }
        let damaged_pos = match damage { Damage::Cut(a) | Damage::Flip(a) => a as u64 };
        let log = Log::open(dir.path(), cfg(2048), syncer).unwrap();
        let got = log.read(0, usize::MAX).unwrap();
        // which batches lie wholly before the damage in the active segment
        let mut pos = 0u64;
        let mut expected = Vec::new();
        for (off, p) in &written {
            if *off < active_base {
                expected.push((*off, p.clone()));
                continue;
            }
            let end = pos + (HEADER + p.len()) as u64;
            let intact = match damage { Damage::Cut(_) => end <= damaged_pos, Damage::Flip(_) => end <= damaged_pos };
            if !intact {
                break;
            }
            expected.push((*off, p.clone()));
            pos = end;
        }
        let got_pairs: Vec<(u64, Vec<u8>)> = got.iter().map(|b| (b.base_offset, b.payload.clone())).collect();
        prop_assert_eq!(&got_pairs, &expected);
        let next = expected.last().map(|(o, _)| o + 1).unwrap_or(active_base);
        prop_assert_eq!(log.next_offset(), next);
        prop_assert_eq!(log.append(1, 0, b"again").unwrap(), next);
        prop_assert_eq!(log.read(next, usize::MAX).unwrap()[0].payload.clone(), b"again".to_vec());
    }
}

// ---------------------------------------------------------------------------------------------
// helpers for the crash and corruption tests

/// One append as the test remembers it.
#[derive(Clone, Debug)]
struct Written {
    off: u64,
    count: u32,
    ts: i64,
    payload: Vec<u8>,
    /// The segment the batch went to, and its position just past the batch there.
    seg_base: u64,
    end_pos: u64,
}

impl Written {
    fn end(&self) -> u64 {
        self.off + self.count as u64
    }
}

type Rec = (u64, u32, i64, Vec<u8>);

fn rec_of_written(w: &Written) -> Rec {
    (w.off, w.count, w.ts, w.payload.clone())
}

fn rec_of_batch(b: &Batch) -> Rec {
    (
        b.base_offset,
        b.record_count,
        b.timestamp_ms,
        b.payload.clone(),
    )
}

/// Append and remember where the batch went.
fn append_tracked(log: &Log, i: usize, len: usize, count: u32) -> Written {
    let p = payload(i as u64, len);
    let off = log.append(count, i as i64, &p).unwrap();
    let (seg_base, end_pos) = {
        let inner = log.inner.lock();
        let a = inner.segments.last().unwrap();
        (a.base, a.size)
    };
    Written {
        off,
        count,
        ts: i as i64,
        payload: p,
        seg_base,
        end_pos,
    }
}

/// Segment files of a closed log in offset order: (base, path, length).
fn segment_files(dir: &Path) -> Vec<(u64, PathBuf, u64)> {
    let mut v: Vec<(u64, PathBuf, u64)> = fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let e = e.unwrap();
            let name = e.file_name().into_string().ok()?;
            let base = name.strip_suffix(".log")?.parse::<u64>().ok()?;
            Some((base, e.path(), e.metadata().unwrap().len()))
        })
        .collect();
    v.sort();
    v
}

fn set_len(path: &Path, len: u64) {
    OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .set_len(len)
        .unwrap();
}

fn flip_byte(path: &Path, at: u64) {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, at).unwrap();
    b[0] ^= 0x5a;
    f.write_all_at(&b, at).unwrap();
}

fn remove_if_exists(path: &Path) {
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => panic!("remove {}: {e}", path.display()),
    }
}

fn read_all(log: &Log) -> Vec<Rec> {
    log.read(0, usize::MAX)
        .unwrap()
        .iter()
        .map(rec_of_batch)
        .collect()
}

fn wait_until(what: &str, deadline: Duration, mut cond: impl FnMut() -> bool) {
    let until = Instant::now() + deadline;
    while !cond() {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, ..ProptestConfig::default() })]

    /// The durability contract. Random appends (random sizes and record counts, small segments
    /// so rolls happen) under a real fsync policy; the first `acked` appends are acknowledged
    /// by awaiting `wait_durable` (sometimes one wait covers several appends). Then a crash:
    /// the log is closed and the files are cut at a random byte position at or after the end
    /// of the acknowledged data, in segment order — the segment holding the cut is truncated
    /// there, later segment files are removed; the cut may fall in a later segment, leave a
    /// later segment empty, or fall right after a roll. Optionally a byte between the end of
    /// the acknowledged data and the cut is flipped (a torn write that left garbage). The
    /// log's own `durable_offset` must be a batch boundary at or past the acknowledged end.
    /// After reopening: the
    /// batches read back are exactly those wholly before the damage — a prefix of what was
    /// appended, including every acknowledged one, intact and in order; recovery reports no
    /// sealed-segment damage and no gap; the next append gets the offset after the prefix, and
    /// all of it survives another reopen.
    #[test]
    fn acknowledged_appends_survive_crash_at_any_byte(
        batch in prop_oneof![Just(false), Just(true)],
        appends in proptest::collection::vec((0usize..300, 1u32..4), 1..40),
        acked_mode in 0u8..4,
        acked_frac in 0.0f64..=1.0,
        wait_every in 1usize..4,
        seg_pick in 0.0f64..1.0,
        pos_mode in 0u8..4,
        pos_pick in 0.0f64..=1.0,
        flip in proptest::option::of(0.0f64..1.0),
    ) {
        let policy = if batch { FsyncPolicy::Batch(Duration::from_millis(1)) } else { FsyncPolicy::Always };
        let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let syncer = Syncer::new(policy);
        let log = Log::open(dir.path(), cfg(1024), syncer.clone()).unwrap();
        let acked = match acked_mode {
            0 => 0,
            1 => appends.len(),
            _ => ((appends.len() as f64) * acked_frac).round() as usize,
        };
        let mut written = Vec::new();
        for (i, &(len, count)) in appends.iter().enumerate() {
            let w = append_tracked(&log, i, len, count);
            if i < acked && ((i + 1) % wait_every == 0 || i + 1 == acked) {
                let durable = log.wait_durable(w.end());
                rt.block_on(async { tokio::time::timeout(Duration::from_secs(20), durable).await })
                    .expect("durable in time")
                    .unwrap();
                prop_assert!(log.durable_offset() >= w.end());
            }
            written.push(w);
        }
        // where the acknowledged data ends: (segment, position)
        let (ack_base, ack_pos) = match acked.checked_sub(1) {
            Some(last) => (written[last].seg_base, written[last].end_pos),
            None => (0, 0),
        };
        // what the log itself claims durable: a batch boundary, at least what was acknowledged
        let claimed = log.durable_offset();
        prop_assert!(claimed == 0 || written.iter().any(|w| w.end() == claimed));
        prop_assert!(claimed >= written[..acked].last().map_or(0, |w| w.end()));
        log.close().unwrap();
        drop(log);
        syncer.shutdown();

        // the crash
        let files = segment_files(dir.path());
        let ack_idx = files.iter().position(|f| f.0 == ack_base).unwrap();
        let s = (ack_idx + ((files.len() - ack_idx) as f64 * seg_pick) as usize).min(files.len() - 1);
        let (cut_base, ref cut_path, len) = files[s];
        let lo = if s == ack_idx { ack_pos } else { 0 };
        prop_assert!(lo <= len);
        let cut = match pos_mode {
            0 => lo,
            1 => len,
            _ => (lo + ((len - lo + 1) as f64 * pos_pick) as u64).min(len),
        };
        set_len(cut_path, cut);
        for (_, path, _) in &files[s + 1..] {
            remove_if_exists(path);
            remove_if_exists(&path.with_extension("index"));
        }
        let mut limit = cut;
        if let Some(f) = flip.filter(|_| cut > lo) {
            let at = (lo + ((cut - lo) as f64 * f) as u64).min(cut - 1);
            flip_byte(cut_path, at);
            limit = at;
        }
        let seg_idx = |base: u64| files.iter().position(|f| f.0 == base).unwrap();
        let expected: Vec<Rec> = written
            .iter()
            .take_while(|w| {
                let i = seg_idx(w.seg_base);
                i < s || (i == s && w.end_pos <= limit)
            })
            .map(rec_of_written)
            .collect();
        prop_assert!(expected.len() >= acked, "the model keeps every acknowledged append");
        let next = expected.last().map(|r| r.0 + r.1 as u64).unwrap_or(0);
        if s > 0 {
            prop_assert!(next >= cut_base, "the segments before the cut are whole");
        }

        let syncer = Syncer::new(FsyncPolicy::Never);
        let log = Log::open(dir.path(), cfg(1024), syncer.clone()).unwrap();
        let got = read_all(&log);
        prop_assert_eq!(&got, &expected);
        let report = log.recovery_report().clone();
        prop_assert!(!report.lost_sealed_data(), "{:?}", report);
        prop_assert!(report.gaps.is_empty(), "{:?}", report);
        prop_assert_eq!(log.next_offset(), next);
        prop_assert_eq!(log.append(2, 7, b"again").unwrap(), next);
        log.close().unwrap();
        drop(log);
        let log = Log::open(dir.path(), cfg(1024), syncer).unwrap();
        prop_assert!(log.recovery_report().is_clean(), "{:?}", log.recovery_report());
        let mut all = expected.clone();
        all.push((next, 2, 7, b"again".to_vec()));
        prop_assert_eq!(read_all(&log), all);
        prop_assert_eq!(log.next_offset(), next + 2);
    }
}

#[derive(Debug, Clone)]
enum SealedDamage {
    /// Truncate the segment at this fraction of its length (may fall on a batch boundary).
    Cut(f64),
    /// Flip the byte at this fraction of its length.
    Flip(f64),
    /// Append this many garbage bytes.
    Garbage(usize),
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    /// Disk corruption in a sealed segment (its sidecar gone or stale, so open scans it): open
    /// succeeds, truncates that segment at the first bad batch, keeps every other segment, and
    /// reports the repair (sealed, bytes, offsets lost) and the gap. Reads return everything
    /// else, across the gap; a read from inside the gap starts at the next stored offset; the
    /// time index still works; appends continue at the old next offset; a second open finds
    /// nothing to repair and the same gap.
    #[test]
    fn sealed_segment_corruption_is_cut_and_later_segments_kept(
        appends in proptest::collection::vec((100usize..300, 1u32..4), 12..40),
        seg_pick in 0.0f64..1.0,
        damage in prop_oneof![
            (0.0f64..1.0).prop_map(SealedDamage::Cut),
            (0.0f64..1.0).prop_map(SealedDamage::Flip),
            (1usize..64).prop_map(SealedDamage::Garbage),
        ],
    ) {
        let dir = tempfile::tempdir().unwrap();
        let syncer = Syncer::new(FsyncPolicy::Never);
        let log = Log::open(dir.path(), cfg(1024), syncer.clone()).unwrap();
        let written: Vec<Written> = appends
            .iter()
            .enumerate()
            .map(|(i, &(len, count))| append_tracked(&log, i, len, count))
            .collect();
        let end = log.next_offset();
        log.close().unwrap();
        drop(log);
        let files = segment_files(dir.path());
        prop_assert!(files.len() >= 2);
        let d = ((files.len() - 1) as f64 * seg_pick) as usize;
        let (base, ref path, len) = files[d];
        let following = files[d + 1].0;
        let at = |f: f64| ((len as f64 * f) as u64).min(len - 1);
        let (limit, new_len) = match damage {
            SealedDamage::Cut(f) => {
                set_len(path, at(f));
                (at(f), at(f))
            }
            SealedDamage::Flip(f) => {
                flip_byte(path, at(f));
                (at(f), len)
            }
            SealedDamage::Garbage(n) => {
                let mut f = OpenOptions::new().append(true).open(path).unwrap();
                f.write_all(&vec![0xa7; n]).unwrap();
                (len, len + n as u64)
            }
        };
        if matches!(damage, SealedDamage::Flip(_)) {
            // a valid sidecar means the segment is not scanned; see the test below
            remove_if_exists(&path.with_extension("index"));
        }
        let kept = |w: &&Written| w.seg_base != base || w.end_pos <= limit;
        let expected: Vec<Rec> = written.iter().filter(kept).map(rec_of_written).collect();
        let in_seg: Vec<&Written> = written.iter().filter(|w| w.seg_base == base).filter(kept).collect();
        let valid = in_seg.last().map(|w| w.end_pos).unwrap_or(0);
        let seg_end = in_seg.last().map(|w| w.end()).unwrap_or(base);

        let log = Log::open(dir.path(), cfg(1024), syncer.clone()).unwrap();
        let report = log.recovery_report().clone();
        prop_assert_eq!(report.repairs.len(), 1, "{:?}", report);
        let r = &report.repairs[0];
        prop_assert!(r.sealed && report.lost_sealed_data());
        prop_assert_eq!(r.base_offset, base);
        prop_assert_eq!(r.valid_bytes, valid);
        prop_assert_eq!(r.truncated_bytes, new_len - valid);
        prop_assert_eq!(r.end_offset, seg_end);
        prop_assert_eq!(r.lost_offsets.clone(), Some(seg_end..following));
        let gaps: Vec<Range<u64>> = (seg_end < following)
            .then_some(seg_end..following)
            .into_iter()
            .collect();
        prop_assert_eq!(&report.gaps, &gaps);
        prop_assert_eq!(fs::metadata(path).unwrap().len(), valid);
        prop_assert_eq!(read_all(&log), expected.clone());
        prop_assert_eq!(log.next_offset(), end);
        prop_assert_eq!(log.start_offset(), expected[0].0);
        if seg_end < following {
            // a reader positioned in the gap moves on to the next stored offset
            for from in [seg_end, following - 1] {
                prop_assert_eq!(log.read(from, 1).unwrap()[0].base_offset, following);
            }
        }
        for t in 0..=appends.len() as i64 {
            let want = expected.iter().find(|r| r.2 >= t).map(|r| r.0);
            prop_assert_eq!(log.offset_for_timestamp(t).unwrap(), want, "timestamp {}", t);
        }
        prop_assert_eq!(log.append(1, 0, b"more").unwrap(), end);
        log.close().unwrap();
        drop(log);
        let log = Log::open(dir.path(), cfg(1024), syncer).unwrap();
        prop_assert!(log.recovery_report().is_clean(), "{:?}", log.recovery_report());
        prop_assert_eq!(&log.recovery_report().gaps, &gaps);
        let mut all = expected;
        all.push((end, 1, 0, b"more".to_vec()));
        prop_assert_eq!(read_all(&log), all);
    }
}

/// Three sealed segments and an active one, closed; returns what was written.
fn four_segments(dir: &Path) -> Vec<Written> {
    let log = Log::open(dir, cfg(1024), Syncer::new(FsyncPolicy::Never)).unwrap();
    let mut written = Vec::new();
    let mut i = 0;
    while log.segment_count() < 4 {
        written.push(append_tracked(&log, i, 200, 1));
        i += 1;
    }
    log.close().unwrap();
    written
}

#[test]
fn huge_length_in_sealed_segment_is_cut_not_allocated_and_open_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let written = four_segments(dir.path());
    let files = segment_files(dir.path());
    let (base, ref path, _) = files[1];
    // the second batch of the segment claims a 4 GiB payload
    let second = written
        .iter()
        .filter(|w| w.seg_base == base)
        .nth(1)
        .unwrap();
    let first_end = written.iter().find(|w| w.seg_base == base).unwrap().end_pos;
    let f = OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(&u32::MAX.to_le_bytes(), first_end + 8)
        .unwrap();
    drop(f);
    remove_if_exists(&path.with_extension("index"));
    let log = Log::open(dir.path(), cfg(1024), Syncer::new(FsyncPolicy::Never)).unwrap();
    let report = log.recovery_report();
    assert_eq!(report.repairs.len(), 1);
    let r = &report.repairs[0];
    assert!(r.sealed);
    assert_eq!(r.reason, "batch length beyond the limit");
    assert_eq!(r.valid_bytes, first_end);
    assert_eq!(r.end_offset, second.off);
    assert_eq!(r.lost_offsets, Some(second.off..files[2].0));
    assert_eq!(report.gaps.len(), 1);
    assert_eq!(report.gaps[0], second.off..files[2].0);
    let shown = r.to_string();
    assert!(
        shown.contains("sealed segment") && shown.contains("lost"),
        "{shown}"
    );
    let expected: Vec<Rec> = written
        .iter()
        .filter(|w| w.seg_base != base || w.off < second.off)
        .map(rec_of_written)
        .collect();
    assert_eq!(read_all(&log), expected);
}

/// A sealed segment cut to nothing by recovery neither breaks reads nor blocks age retention.
#[test]
fn sealed_segment_emptied_by_recovery_does_not_block_retention() {
    let dir = tempfile::tempdir().unwrap();
    let written = four_segments(dir.path());
    let files = segment_files(dir.path());
    flip_byte(&files[0].1, 0);
    remove_if_exists(&files[0].1.with_extension("index"));
    let log = Log::open(dir.path(), cfg(1024), Syncer::new(FsyncPolicy::Never)).unwrap();
    let r = &log.recovery_report().repairs[0];
    assert_eq!((r.base_offset, r.valid_bytes, r.end_offset), (0, 0, 0));
    assert_eq!(r.reason, "unexpected base offset");
    assert_eq!(log.start_offset(), files[1].0);
    assert_eq!(log.read(0, 1).unwrap()[0].base_offset, files[1].0);
    let rest: Vec<Rec> = written
        .iter()
        .filter(|w| w.off >= files[1].0)
        .map(rec_of_written)
        .collect();
    assert_eq!(read_all(&log), rest);
    // the timestamps are tiny, so every sealed segment is past a 1 ms age limit
    assert_eq!(log.apply_retention(Some(1), None).unwrap(), 3);
    assert_eq!(log.segment_count(), 1);
}

/// A sealed segment whose sidecar is valid is not scanned at open (that is what the sidecar is
/// for); damage inside it is found by `read`, which returns `Corrupt` rather than bad data.
#[test]
fn corruption_behind_a_valid_sidecar_is_reported_by_read() {
    let dir = tempfile::tempdir().unwrap();
    let written = four_segments(dir.path());
    let files = segment_files(dir.path());
    let (base, ref path, _) = files[1];
    let victim = written.iter().find(|w| w.seg_base == base).unwrap();
    flip_byte(path, victim.end_pos - 1);
    let log = Log::open(dir.path(), cfg(1024), Syncer::new(FsyncPolicy::Never)).unwrap();
    assert!(log.recovery_report().is_clean());
    match log.read(victim.off, usize::MAX) {
        Err(LogError::Corrupt { reason, .. }) => assert_eq!(reason, "crc mismatch"),
        other => panic!("expected Corrupt, got {other:?}"),
    }
    // offsets in other segments still read
    let later = written.iter().find(|w| w.seg_base == files[2].0).unwrap();
    assert_eq!(
        rec_of_batch(&log.read(later.off, 1).unwrap()[0]),
        rec_of_written(later)
    );
}

/// Sidecars that do not fit their segment are ignored and rebuilt, without reading an
/// oversized one into memory; nothing is reported as repaired, and reads are intact.
#[test]
fn bogus_sidecars_are_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let written = four_segments(dir.path());
    let files = segment_files(dir.path());
    // an entry pointing past the end of the segment
    let idx0 = files[0].1.with_extension("index");
    let mut b = fs::read(&idx0).unwrap();
    let n = b.len();
    b[n - 12..n - 8].copy_from_slice(&u32::MAX.to_le_bytes());
    fs::write(&idx0, b).unwrap();
    // claims the next segment's offsets
    let idx1 = files[1].1.with_extension("index");
    let mut b = fs::read(&idx1).unwrap();
    b[16..24].copy_from_slice(&(files[2].0 + 1).to_le_bytes());
    fs::write(&idx1, b).unwrap();
    // far larger than any index of this segment could be
    let idx2 = files[2].1.with_extension("index");
    OpenOptions::new()
        .write(true)
        .open(&idx2)
        .unwrap()
        .set_len(1 << 30)
        .unwrap();
    let log = Log::open(dir.path(), cfg(1024), Syncer::new(FsyncPolicy::Never)).unwrap();
    assert!(log.recovery_report().is_clean());
    assert!(log.recovery_report().gaps.is_empty());
    let all: Vec<Rec> = written.iter().map(rec_of_written).collect();
    assert_eq!(read_all(&log), all);
    for w in &written {
        assert_eq!(
            rec_of_batch(&log.read(w.off, 1).unwrap()[0]),
            rec_of_written(w)
        );
    }
    // and rewritten
    for (base, path, len) in &files[..3] {
        let next = files.iter().find(|f| f.0 > *base).unwrap().0;
        assert!(read_index(&path.with_extension("index"), *base, *len, next).is_some());
    }
}

#[test]
fn non_canonical_segment_names_are_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), cfg(1024), Syncer::new(FsyncPolicy::Never)).unwrap();
    log.append(1, 0, b"x").unwrap();
    log.close().unwrap();
    drop(log);
    fs::write(dir.path().join("0.log"), b"junk").unwrap();
    fs::write(dir.path().join("7.log"), b"junk").unwrap();
    let log = Log::open(dir.path(), cfg(1024), Syncer::new(FsyncPolicy::Never)).unwrap();
    assert_eq!(log.segment_count(), 1);
    assert!(log.recovery_report().is_clean());
    assert_eq!(log.read(0, usize::MAX).unwrap().len(), 1);
    assert!(!dir.path().join(format!("{:020}.log", 7)).exists());
}

/// `segment_ms`: an old but empty active segment does not roll; an old non-empty one rolls on
/// the next append, and the sealed segment gets a valid index sidecar; a young one does not
/// roll. Waits on the segment's age with a deadline instead of fixed sleeps.
#[test]
fn rolls_by_time_and_seals_with_index() {
    let ms = 100;
    let config = LogConfig {
        segment_bytes: 1 << 20,
        segment_ms: Some(ms),
        index_interval_bytes: 64,
    };
    let age = Duration::from_millis(ms);
    let dir = tempfile::tempdir().unwrap();
    let syncer = Syncer::new(FsyncPolicy::Never);
    let log = Log::open(dir.path(), config.clone(), syncer.clone()).unwrap();
    let created = |log: &Log, i: usize| log.inner.lock().segments[i].created;
    let c0 = created(&log, 0);
    wait_until("segment 0 to age", Duration::from_secs(10), || {
        c0.elapsed() >= age
    });
    assert_eq!(log.append(1, 0, &payload(0, 40)).unwrap(), 0);
    assert_eq!(
        log.segment_count(),
        1,
        "an empty segment does not roll by age"
    );
    assert_eq!(log.append(1, 1, &payload(1, 40)).unwrap(), 1);
    assert_eq!(log.segment_count(), 2, "an old segment rolls on append");
    assert_eq!(log.inner.lock().segments[1].base, 1);
    let c1 = created(&log, 1);
    for i in 2..6u64 {
        log.append(1, i as i64, &payload(i, 40)).unwrap();
    }
    if c1.elapsed() < age {
        assert_eq!(log.segment_count(), 2, "a young segment does not roll");
    }
    let c = created(&log, log.segment_count() - 1);
    wait_until("the active segment to age", Duration::from_secs(10), || {
        c.elapsed() >= age
    });
    let last = log.segment_count();
    assert_eq!(log.append(1, 6, &payload(6, 40)).unwrap(), 6);
    assert_eq!(log.segment_count(), last + 1);
    // every sealed segment has a sidecar that matches it
    let files = segment_files(dir.path());
    assert_eq!(files.len(), last + 1);
    for w in files.windows(2) {
        let (base, path, len) = &w[0];
        let (next, max_ts, index) =
            read_index(&path.with_extension("index"), *base, *len, w[1].0).expect("sidecar");
        assert_eq!(next, w[1].0);
        assert_eq!(max_ts, next as i64 - 1);
        // 68-byte batches, an entry every 64 bytes: every batch is indexed
        assert_eq!(index.len() as u64, next - base);
    }
    assert!(!files.last().unwrap().1.with_extension("index").exists());
    let all = log.read(0, usize::MAX).unwrap();
    assert_eq!(all.len(), 7);
    log.close().unwrap();
    drop(log);
    let log = Log::open(dir.path(), config, syncer).unwrap();
    assert!(log.recovery_report().is_clean());
    assert_eq!(log.read(0, usize::MAX).unwrap(), all);
    assert_eq!(log.offset_for_timestamp(4).unwrap(), Some(4));
    assert_eq!(log.next_offset(), 7);
}

/// `delete_before(x)` never deletes the active segment or one holding an offset ≥ x: after
/// each call the batch containing every offset in `x..next` is still read back, the files on
/// disk are exactly the remaining segments, and appends continue.
#[test]
fn delete_before_keeps_active_and_needed_segments() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), cfg(1024), Syncer::new(FsyncPolicy::Never)).unwrap();
    let written: Vec<Written> = (0..60)
        .map(|i| append_tracked(&log, i, 150, (i % 3 + 1) as u32))
        .collect();
    let end = log.next_offset();
    let bases: Vec<u64> = log.inner.lock().segments.iter().map(|s| s.base).collect();
    assert!(bases.len() > 5);
    let active = *bases.last().unwrap();
    let mut xs = vec![
        0,
        1,
        bases[1],
        bases[1] + 1,
        bases[3] - 1,
        active - 1,
        active,
    ];
    xs.extend([active + 1, end - 1]);
    for x in xs {
        log.delete_before(x).unwrap();
        let segs: Vec<(u64, u64)> = log
            .inner
            .lock()
            .segments
            .iter()
            .map(|s| (s.base, s.next))
            .collect();
        assert_eq!(segs.last().unwrap().0, active, "the active segment stays");
        // the first remaining segment reaches past x: it holds x (or x is in the active one)
        assert!(segs[0].1 > x, "x = {x}, segments {segs:?}");
        for w in written.iter().filter(|w| w.end() > x) {
            assert_eq!(
                rec_of_batch(&log.read(w.off, 1).unwrap()[0]),
                rec_of_written(w)
            );
        }
        let on_disk: Vec<u64> = segment_files(dir.path()).iter().map(|f| f.0).collect();
        assert_eq!(on_disk, segs.iter().map(|s| s.0).collect::<Vec<_>>());
    }
    // everything consumed: the active segment is sealed and deleted, an empty one remains
    log.delete_before(end).unwrap();
    assert_eq!(log.segment_count(), 1);
    assert_eq!(log.inner.lock().segments[0].base, end);
    assert_eq!(log.start_offset(), end);
    assert!(log.read(0, usize::MAX).unwrap().is_empty());
    assert_eq!(log.append(1, 0, b"next").unwrap(), end);
    assert_eq!(log.read(0, usize::MAX).unwrap()[0].base_offset, end);
}

/// Readers racing with appends and deletions never fail nor see a damaged batch: each read
/// returns contiguous, intact batches, starting at the batch holding the position asked for or
/// — when that was deleted meanwhile — further on, below the new start offset.
#[test]
fn reads_are_safe_while_segments_are_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), cfg(2048), Syncer::new(FsyncPolicy::Never)).unwrap();
    let total = 1500u64;
    let done = Arc::new(AtomicBool::new(false));
    std::thread::scope(|s| {
        s.spawn(|| {
            for i in 0..total {
                assert_eq!(log.append(1, i as i64, &payload(i, 100)).unwrap(), i);
            }
            done.store(true, Ordering::Release);
        });
        s.spawn(|| {
            while !done.load(Ordering::Acquire) {
                log.delete_before(log.next_offset().saturating_sub(40))
                    .unwrap();
                std::thread::yield_now();
            }
        });
        for _ in 0..2 {
            s.spawn(|| {
                let mut from = 0u64;
                let mut jumps = 0;
                while from < total {
                    let batches = log.read(from, 1500).unwrap();
                    let Some(first) = batches.first() else {
                        continue;
                    };
                    if first.base_offset > from {
                        assert!(log.start_offset() > from, "a jump only past deleted data");
                        jumps += 1;
                    } else {
                        assert_eq!(first.base_offset, from);
                    }
                    for (k, b) in batches.iter().enumerate() {
                        assert_eq!(b.base_offset, first.base_offset + k as u64);
                        assert_eq!(b.payload, payload(b.base_offset, 100));
                    }
                    from = batches.last().unwrap().base_offset + 1;
                }
                jumps
            });
        }
    });
    assert_eq!(log.next_offset(), total);
}

/// Rewriting sealed segments keeps offsets, contiguity and unchanged segments; what it
/// replaced reads back replaced, also after a reopen.
#[test]
fn rewrite_sealed_replaces_payloads_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let syncer = Syncer::new(FsyncPolicy::Never);
    let log = Log::open(dir.path(), cfg(256), syncer.clone()).unwrap();
    for i in 0..40u64 {
        log.append(2, i as i64, &payload(i, 60)).unwrap();
    }
    let sealed_end = log.sealed_end();
    assert!(sealed_end > 0 && sealed_end < 80);
    let reclaimed = log
        .rewrite_sealed(|b| {
            if (b.base_offset / 2) % 2 == 0 {
                Rewrite::Replace(b"x".to_vec())
            } else {
                Rewrite::Keep
            }
        })
        .unwrap();
    assert!(reclaimed > 0);
    let check = |log: &Log| {
        let got = log.read(0, usize::MAX).unwrap();
        assert_eq!(got.len(), 40);
        for (i, b) in got.iter().enumerate() {
            assert_eq!(b.base_offset, 2 * i as u64);
            assert_eq!(b.record_count, 2);
            let replaced = b.base_offset < sealed_end && (i % 2 == 0);
            if replaced {
                assert_eq!(b.payload, b"x");
            } else {
                assert_eq!(b.payload, payload(i as u64, 60));
            }
        }
    };
    check(&log);
    log.close().unwrap();
    drop(log);
    let log = Log::open(dir.path(), cfg(256), syncer).unwrap();
    assert!(log.recovery_report().is_clean());
    check(&log);
    assert_eq!(log.append(1, 0, b"more").unwrap(), 80);
}

// ---------------------------------------------------------------------------------------------
// truncation (a Raft follower dropping a diverged suffix), one-batch reads, header scans

/// Append `n` batches of record counts 1..=3 and payload lengths from `len`, remembering them.
fn append_many(log: &Log, from: usize, n: usize, len: impl Fn(usize) -> usize) -> Vec<Written> {
    (from..from + n)
        .map(|i| append_tracked(log, i, len(i), (i % 3 + 1) as u32))
        .collect()
}

fn recs(written: &[Written]) -> Vec<Rec> {
    written.iter().map(rec_of_written).collect()
}

/// What the log's in-memory segments say: (base, next, size, index entries), and that every
/// index entry points at a batch inside its segment.
fn segment_state(log: &Log) -> Vec<(u64, u64, u64, usize)> {
    let inner = log.inner.lock();
    for s in &inner.segments {
        for e in &s.index {
            assert!((e.pos as u64) < s.size.max(1) && s.base + (e.rel as u64) < s.next.max(1));
        }
    }
    inner
        .segments
        .iter()
        .map(|s| (s.base, s.next, s.size, s.index.len()))
        .collect()
}

#[test]
fn truncate_in_the_active_segment() {
    let dir = tempfile::tempdir().unwrap();
    let syncer = Syncer::new(FsyncPolicy::Never);
    let log = Log::open(dir.path(), cfg(1 << 20), syncer.clone()).unwrap();
    let written = append_many(&log, 0, 30, |i| 20 + i * 7);
    assert_eq!(log.segment_count(), 1);
    let cut = &written[17];
    log.truncate(cut.off).unwrap();
    assert_eq!(log.next_offset(), cut.off);
    assert_eq!(log.durable_offset(), cut.off);
    assert_eq!(read_all(&log), recs(&written[..17]));
    let path = segment_path(dir.path(), 0);
    assert_eq!(fs::metadata(&path).unwrap().len(), written[16].end_pos);
    assert_eq!(log.size_bytes(), written[16].end_pos);
    // the time index forgot the cut batches' timestamps
    assert_eq!(log.offset_for_timestamp(17).unwrap(), None);
    assert_eq!(log.offset_for_timestamp(16).unwrap(), Some(written[16].off));
    // appends continue at the cut
    let again = append_many(&log, 100, 5, |_| 50);
    assert_eq!(again[0].off, cut.off);
    let mut expected = recs(&written[..17]);
    expected.extend(recs(&again));
    assert_eq!(read_all(&log), expected);
    // truncating the whole log
    log.truncate(0).unwrap();
    assert_eq!((log.next_offset(), log.size_bytes()), (0, 0));
    assert!(read_all(&log).is_empty());
    assert_eq!(log.append(1, 5, b"first").unwrap(), 0);
    log.close().unwrap();
    drop(log);
    let log = Log::open(dir.path(), cfg(1 << 20), syncer).unwrap();
    assert!(log.recovery_report().is_clean());
    assert_eq!(read_all(&log), vec![(0, 1, 5, b"first".to_vec())]);
}

#[test]
fn truncate_across_segments_into_a_sealed_one_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let syncer = Syncer::new(FsyncPolicy::Never);
    let log = Log::open(dir.path(), cfg(1024), syncer.clone()).unwrap();
    let written = append_many(&log, 0, 60, |i| 40 + (i * 13) % 150);
    let bases: Vec<u64> = segment_state(&log).iter().map(|s| s.0).collect();
    assert!(bases.len() >= 6, "{bases:?}");
    // a batch in the middle of the third segment (sealed, with a sidecar)
    let seg = bases[2];
    let in_seg: Vec<usize> = (0..written.len())
        .filter(|&i| written[i].seg_base == seg)
        .collect();
    assert!(in_seg.len() >= 3);
    let k = in_seg[in_seg.len() / 2];
    let sidecar = segment_path(dir.path(), seg).with_extension("index");
    assert!(sidecar.exists(), "sealed segment has a sidecar");
    log.truncate(written[k].off).unwrap();
    assert_eq!(log.next_offset(), written[k].off);
    assert_eq!(log.durable_offset(), written[k].off);
    assert_eq!(log.segment_count(), 3);
    assert_eq!(log.sealed_end(), seg);
    assert!(!sidecar.exists(), "the cut segment's sidecar is gone");
    let files: Vec<u64> = segment_files(dir.path()).iter().map(|f| f.0).collect();
    assert_eq!(files, bases[..3].to_vec());
    for b in &bases[3..] {
        assert!(!segment_path(dir.path(), *b)
            .with_extension("index")
            .exists());
    }
    let state = segment_state(&log);
    assert_eq!(
        state[2],
        (seg, written[k].off, written[k - 1].end_pos, state[2].3)
    );
    assert_eq!(read_all(&log), recs(&written[..k]));
    // a read from a removed offset finds nothing; one-batch reads still work
    assert!(log.read(written[k].off, 1).unwrap().is_empty());
    assert_eq!(
        rec_of_batch(&log.read(written[k - 1].off, 1).unwrap()[0]),
        rec_of_written(&written[k - 1])
    );
    // append past several rolls again, then cut exactly at a segment's base
    let again = append_many(&log, 1000, 40, |i| 60 + i % 90);
    assert_eq!(again[0].off, written[k].off);
    let mut expected = recs(&written[..k]);
    expected.extend(recs(&again));
    assert_eq!(read_all(&log), expected);
    let bases2: Vec<u64> = segment_state(&log).iter().map(|s| s.0).collect();
    let at_base = bases2[bases2.len() - 2];
    let j = again.iter().position(|w| w.off == at_base).unwrap();
    log.truncate(at_base).unwrap();
    assert_eq!(log.segment_count(), bases2.len() - 1);
    assert_eq!(log.segment_state_last_size(), 0);
    expected.truncate(k + j);
    assert_eq!(read_all(&log), expected);
    let tail = append_many(&log, 2000, 3, |_| 10);
    assert_eq!(tail[0].off, at_base);
    expected.extend(recs(&tail));
    log.close().unwrap();
    drop(log);
    let log = Log::open(dir.path(), cfg(1024), syncer.clone()).unwrap();
    assert!(
        log.recovery_report().is_clean(),
        "{:?}",
        log.recovery_report()
    );
    assert!(log.recovery_report().gaps.is_empty());
    assert_eq!(read_all(&log), expected);
    assert_eq!(log.next_offset(), tail[2].end());
    // the reopened log also truncates into a segment sealed before the reopen
    let first = &written[3];
    log.truncate(first.off).unwrap();
    assert_eq!(read_all(&log), recs(&written[..3]));
    log.close().unwrap();
    drop(log);
    let log = Log::open(dir.path(), cfg(1024), syncer).unwrap();
    assert!(log.recovery_report().is_clean());
    assert_eq!(read_all(&log), recs(&written[..3]));
}

impl Log {
    fn segment_state_last_size(&self) -> u64 {
        self.inner.lock().segments.last().unwrap().size
    }
}

#[test]
fn truncate_refuses_offsets_that_are_not_batch_starts() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), cfg(1024), Syncer::new(FsyncPolicy::Never)).unwrap();
    let written = append_many(&log, 0, 40, |_| 100);
    let before = (read_all(&log), segment_state(&log), log.next_offset());
    let multi = written.iter().find(|w| w.count == 3).unwrap();
    let next = log.next_offset();
    for bad in [multi.off + 1, multi.off + 2, next + 1, u64::MAX] {
        let e = log.truncate(bad).unwrap_err();
        assert!(
            matches!(e, LogError::BadTruncateOffset { offset, next_offset, .. }
                if offset == bad && next_offset == next),
            "{bad}: {e}"
        );
        assert!(e.to_string().contains("cannot truncate"), "{e}");
    }
    // the next offset: nothing happens
    log.truncate(next).unwrap();
    assert_eq!(
        (read_all(&log), segment_state(&log), log.next_offset()),
        before
    );
    // below the start offset
    log.delete_before(written[20].off).unwrap();
    let start = log.start_offset();
    assert!(start > 0);
    let e = log.truncate(start - 1).unwrap_err();
    assert!(
        e.to_string().contains("below the log's start offset"),
        "{e}"
    );
    let e = log.truncate(0).unwrap_err();
    assert!(matches!(e, LogError::BadTruncateOffset { .. }), "{e}");
    assert_eq!(log.next_offset(), next);
    // the start offset itself is a batch start
    log.truncate(start).unwrap();
    assert_eq!(log.next_offset(), start);
    assert!(read_all(&log).is_empty());
    assert_eq!(log.append(1, 0, b"x").unwrap(), start);
    log.close().unwrap();
    assert!(matches!(log.truncate(start), Err(LogError::Closed)));
}

/// Under real fsync policies: durability after a truncation, waits for removed offsets fail,
/// waits for kept ones resolve, and appends after it become durable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncate_keeps_durability_coherent() {
    let within = |f| tokio::time::timeout(Duration::from_secs(20), f);
    for policy in [
        FsyncPolicy::Always,
        FsyncPolicy::Batch(Duration::from_millis(1)),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let syncer = Syncer::new(policy);
        let log = Log::open(dir.path(), cfg(1024), syncer.clone()).unwrap();
        let written = append_many(&log, 0, 30, |_| 90);
        within(log.wait_durable(written[29].end()))
            .await
            .unwrap()
            .unwrap();
        log.truncate(written[12].off).unwrap();
        assert_eq!(log.durable_offset(), written[12].off);
        let again = append_many(&log, 100, 10, |_| 90);
        assert_eq!(again[0].off, written[12].off);
        within(log.wait_durable(again[9].end()))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(log.durable_offset(), again[9].end());
        assert_eq!(log.durable_offset(), log.next_offset());
        log.close().unwrap();
        drop(log);
        let log = Log::open(dir.path(), cfg(1024), syncer.clone()).unwrap();
        let mut expected = recs(&written[..12]);
        expected.extend(recs(&again));
        assert_eq!(read_all(&log), expected);
        syncer.shutdown();
    }

    // a slow group commit, so that waits are pending when the log is truncated
    let dir = tempfile::tempdir().unwrap();
    let syncer = Syncer::new(FsyncPolicy::Batch(Duration::from_millis(300)));
    let log = Log::open(dir.path(), cfg(1 << 20), syncer.clone()).unwrap();
    let written = append_many(&log, 0, 10, |_| 10);
    let kept = log.wait_durable(written[4].end());
    let removed = log.wait_durable(written[9].end());
    let cut = written[6].off;
    log.truncate(cut).unwrap();
    within(kept).await.unwrap().unwrap();
    match within(removed).await.unwrap() {
        Err(LogError::Truncated { from, end }) => {
            assert_eq!((from, end), (cut, written[9].end()))
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(log.durable_offset(), cut);
    // the syncer's pass for the writes before the truncation publishes nothing beyond it
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(log.durable_offset(), cut);
    let off = log.append(1, 0, b"new").unwrap();
    assert_eq!(off, cut);
    within(log.wait_durable(off + 1)).await.unwrap().unwrap();
    assert_eq!(log.durable_offset(), off + 1);
    syncer.shutdown();
}

#[test]
fn read_of_one_byte_returns_exactly_one_batch() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), cfg(512), Syncer::new(FsyncPolicy::Never)).unwrap();
    // empty payloads too: they count as one byte
    let written = append_many(
        &log,
        0,
        60,
        |i| if i.is_multiple_of(4) { 0 } else { 1 + i * 5 },
    );
    for w in &written {
        for off in w.off..w.end() {
            for max in [0, 1] {
                let got = log.read(off, max).unwrap();
                assert_eq!(got.len(), 1, "offset {off}, max_bytes {max}");
                assert_eq!(rec_of_batch(&got[0]), rec_of_written(w));
            }
        }
    }
    assert!(log.read(log.next_offset(), 1).unwrap().is_empty());
    // two empty batches need two bytes
    assert_eq!(log.read(0, 2).unwrap().len(), 2);
}

#[test]
fn scan_headers_visits_every_batch_with_its_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), cfg(4096), Syncer::new(FsyncPolicy::Never)).unwrap();
    // small batches across many segments, and some larger than the scan's 1 MiB buffer
    let big = |i: usize| match i {
        20 => (1 << 20) + 123,
        21 => 3 << 20,
        _ if i.is_multiple_of(9) => 0,
        _ => (i * 37) % 700,
    };
    let written = append_many(&log, 0, 80, big);
    assert!(log.segment_count() > 5);
    for prefix in [0usize, 1, 16, 500, (1 << 20) - HEADER, 2 << 20, usize::MAX] {
        for from in [
            0,
            1,
            written[20].off + 1,
            written[22].off,
            log.next_offset(),
        ] {
            let mut seen = Vec::new();
            log.scan_headers(from, prefix, |base, count, p| {
                seen.push((base, count, p.to_vec()))
            })
            .unwrap();
            let expected: Vec<(u64, u32, Vec<u8>)> = written
                .iter()
                .filter(|w| w.end() > from)
                .map(|w| {
                    let n = w.payload.len().min(prefix);
                    (w.off, w.count, w.payload[..n].to_vec())
                })
                .collect();
            assert_eq!(seen.len(), expected.len(), "prefix {prefix}, from {from}");
            assert!(seen == expected, "prefix {prefix}, from {from}");
        }
    }
    // after a truncation and a deletion at the front
    log.truncate(written[50].off).unwrap();
    log.delete_before(written[30].off).unwrap();
    let start = log.start_offset();
    let mut seen = Vec::new();
    log.scan_headers(0, 4, |base, count, p| seen.push((base, count, p.to_vec())))
        .unwrap();
    let expected: Vec<(u64, u32, Vec<u8>)> = written[..50]
        .iter()
        .filter(|w| w.off >= start)
        .map(|w| (w.off, w.count, w.payload[..w.payload.len().min(4)].to_vec()))
        .collect();
    assert_eq!(seen, expected);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    /// Random appends, truncations (at batch starts, the next offset, or invalid offsets) and
    /// reopens against a model: reads, header scans and offsets agree with it throughout, and
    /// after a final reopen.
    #[test]
    fn truncate_matches_a_model(
        ops in proptest::collection::vec((0u8..10, 0usize..400, 1u32..4, 0.0f64..1.0), 1..80),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let syncer = Syncer::new(FsyncPolicy::Never);
        let mut log = Log::open(dir.path(), cfg(1024), syncer.clone()).unwrap();
        let mut model: Vec<Rec> = Vec::new();
        let next = |m: &[Rec]| m.last().map_or(0, |r| r.0 + r.1 as u64);
        for (i, &(op, len, count, pick)) in ops.iter().enumerate() {
            match op {
                0..=5 => {
                    let p = payload(i as u64, len);
                    let off = log.append(count, i as i64, &p).unwrap();
                    prop_assert_eq!(off, next(&model));
                    model.push((off, count, i as i64, p));
                }
                6 | 7 => {
                    let k = ((model.len() + 1) as f64 * pick) as usize;
                    let k = k.min(model.len());
                    let at = model.get(k).map_or(next(&model), |r| r.0);
                    log.truncate(at).unwrap();
                    model.truncate(k);
                }
                8 => {
                    // inside a batch, or beyond the end: refused, nothing changes
                    let bad = model
                        .iter()
                        .find(|r| r.1 > 1)
                        .map_or(next(&model) + 1, |r| r.0 + 1);
                    prop_assert!(log.truncate(bad).is_err());
                }
                _ => {
                    log.close().unwrap();
                    drop(log);
                    log = Log::open(dir.path(), cfg(1024), syncer.clone()).unwrap();
                    prop_assert!(log.recovery_report().is_clean(), "{:?}", log.recovery_report());
                }
            }
            prop_assert_eq!(log.next_offset(), next(&model));
            prop_assert_eq!(log.durable_offset(), next(&model));
        }
        prop_assert_eq!(&read_all(&log), &model);
        let mut scanned = Vec::new();
        log.scan_headers(0, 8, |b, c, p| scanned.push((b, c, p.to_vec()))).unwrap();
        let expected: Vec<(u64, u32, Vec<u8>)> =
            model.iter().map(|r| (r.0, r.1, r.3[..r.3.len().min(8)].to_vec())).collect();
        prop_assert_eq!(scanned, expected);
        log.close().unwrap();
        drop(log);
        let log = Log::open(dir.path(), cfg(1024), syncer).unwrap();
        prop_assert!(log.recovery_report().is_clean(), "{:?}", log.recovery_report());
        prop_assert!(log.recovery_report().gaps.is_empty());
        prop_assert_eq!(&read_all(&log), &model);
        prop_assert_eq!(log.next_offset(), next(&model));
    }
}

#[test]
fn cuts_remember_the_lowest_truncation_since_an_epoch() {
    use crate::syncer::Cuts;
    let mut c = Cuts::default();
    assert_eq!(c.lowest_since(0), None);
    c.push(1, 50);
    c.push(2, 70);
    c.push(3, 40);
    assert_eq!(c.lowest_since(0), Some(40));
    assert_eq!(c.lowest_since(2), Some(40));
    c.push(4, 90);
    assert_eq!(c.lowest_since(3), Some(90));
    assert_eq!(c.lowest_since(4), None);
    for e in 5..2000 {
        c.push(e, 1000 + e);
    }
    // forgotten truncations count as having removed everything
    assert_eq!(c.lowest_since(3), Some(0));
    assert_eq!(c.lowest_since(1990), Some(1991 + 1000));
    assert_eq!(c.lowest_since(1999), None);
}
