use super::*;
use proptest::prelude::*;

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
