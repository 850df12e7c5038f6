//! Checkpoints and exactly-once output: a job fails mid-stream (in an operator, or half-way
//! through a sink's commit), runs again on the same checkpoint directory, resumes from its
//! last complete checkpoint, and the sink ends up holding each window's result exactly once.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use eddy_stream::{Committer, Source, StreamEnv, Tumbling, WatermarkStrategy, Windowed};

type Res = Windowed<u32, u64>;

const PER_WORKER: u64 = 150_000;

/// Worker `index`'s records: (event time, key, value); event times grow by 1 ms per record,
/// out of order by up to 50 ms.
fn records(index: usize) -> impl Iterator<Item = (i64, u32, u64)> {
    (0..PER_WORKER).map(move |i| {
        let h = (i.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ index as u64).rotate_left(17);
        let t = i as i64 - (h % 50) as i64;
        (t, (h % 13) as u32, 1 + h % 7)
    })
}

fn reference(workers: usize) -> Vec<Res> {
    let mut sums: BTreeMap<(u32, i64), u64> = BTreeMap::new();
    for w in 0..workers {
        for (t, k, v) in records(w) {
            *sums.entry((k, t.div_euclid(100) * 100)).or_default() += v;
        }
    }
    sums.into_iter()
        .map(|((key, start), value)| Windowed {
            key,
            start,
            end: start + 100,
            value,
        })
        .collect()
}

/// Appends `epoch|key|start|end|value` lines to a file per worker; on a retry, skips as many
/// records of the epoch as the file already has. May be told to fail half-way through once.
struct FileCommitter {
    path: PathBuf,
    fail_once: Option<Arc<AtomicBool>>,
}

impl Committer<Res> for FileCommitter {
    fn commit(&mut self, epoch: u64, records: &[Res], retry: bool) -> Result<(), String> {
        let skip = if retry {
            let prefix = format!("{epoch}|");
            match std::fs::File::open(&self.path) {
                Ok(f) => std::io::BufReader::new(f)
                    .lines()
                    .map_while(Result::ok)
                    .filter(|l| l.starts_with(&prefix))
                    .count(),
                Err(_) => 0,
            }
        } else {
            0
        };
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(|e| e.to_string())?;
        for (i, r) in records.iter().enumerate().skip(skip) {
            if records.len() > 4 && i == records.len() / 2 {
                if let Some(flag) = &self.fail_once {
                    if !flag.swap(true, Ordering::SeqCst) {
                        f.sync_all().map_err(|e| e.to_string())?;
                        return Err("injected failure half-way through a commit".into());
                    }
                }
            }
            writeln!(f, "{epoch}|{}|{}|{}|{}", r.key, r.start, r.end, r.value)
                .map_err(|e| e.to_string())?;
        }
        f.sync_all().map_err(|e| e.to_string())
    }
}

fn read_results(dir: &Path) -> Vec<Res> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let text = std::fs::read_to_string(e.path()).unwrap();
        for line in text.lines() {
            let f: Vec<&str> = line.split('|').collect();
            out.push(Windowed {
                key: f[1].parse().unwrap(),
                start: f[2].parse().unwrap(),
                end: f[3].parse().unwrap(),
                value: f[4].parse().unwrap(),
            });
        }
    }
    out.sort();
    out
}

/// Run the job; `crash_at`: fail in an operator at that record (once); `fail_commit`: fail
/// half-way through a commit (once). Returns the records the map saw and the job's result.
fn run_job(
    workers: usize,
    checkpoints: &Path,
    out: &Path,
    crash_at: Option<Arc<AtomicBool>>,
    fail_commit: Option<Arc<AtomicBool>>,
) -> (usize, Result<(), eddy_stream::StreamError>) {
    let seen = Arc::new(AtomicUsize::new(0));
    let s = seen.clone();
    let out = out.to_owned();
    let r = StreamEnv::workers(workers)
        .checkpoint_dir(checkpoints)
        .checkpoint_interval(Duration::from_millis(5))
        .execute("crashy", move |env| {
            let (s, crash) = (s.clone(), crash_at.clone());
            let committer = FileCommitter {
                path: out.join(format!("w{}", env.index())),
                fail_once: fail_commit.clone(),
            };
            env.source(
                Source::generator(|index, _| records(index)).with_timestamps(
                    |r| r.0,
                    WatermarkStrategy::BoundedOutOfOrderness(Duration::from_millis(50)),
                ),
            )
            .map(move |r| {
                let n = s.fetch_add(1, Ordering::Relaxed);
                if n == (PER_WORKER as usize * workers) * 3 / 5 {
                    if let Some(flag) = &crash {
                        if !flag.swap(true, Ordering::SeqCst) {
                            panic!("injected crash at record {n}");
                        }
                    }
                }
                (r.1, r.2)
            })
            .key_by(|r: &(u32, u64)| r.0)
            .window(Tumbling::event_time(Duration::from_millis(100)))
            .aggregate(SumOfSecond)
            .sink_exactly_once(committer);
        });
    (seen.load(Ordering::Relaxed), r)
}

struct SumOfSecond;
impl eddy_stream::Aggregator<(u32, u64)> for SumOfSecond {
    type Acc = u64;
    type Out = u64;
    fn create(&self) -> u64 {
        0
    }
    fn add(&self, acc: &mut u64, v: (u32, u64)) {
        *acc += v.1;
    }
    fn merge(&self, acc: &mut u64, other: u64) {
        *acc += other;
    }
    fn result(&self, acc: &u64) -> u64 {
        *acc
    }
}

#[test]
fn a_crash_in_an_operator_resumes_from_the_checkpoint_with_exactly_once_output() {
    for workers in [1, 2] {
        let cp = tempfile::tempdir().unwrap();
        let out = tempfile::tempdir().unwrap();
        let total = PER_WORKER as usize * workers;
        let (seen1, r) = run_job(
            workers,
            cp.path(),
            out.path(),
            Some(Arc::new(AtomicBool::new(false))),
            None,
        );
        let err = r.expect_err("the first run fails");
        assert!(err.to_string().contains("injected crash"), "{err}");
        assert!(
            seen1 < total,
            "{workers} workers: the first run stopped early"
        );
        let partial = read_results(out.path());
        assert!(
            !partial.is_empty(),
            "{workers} workers: checkpoints completed and committed before the crash"
        );
        let (seen2, r) = run_job(workers, cp.path(), out.path(), None, None);
        r.expect("the second run completes");
        assert!(
            seen2 < total,
            "{workers} workers: the second run resumed from a checkpoint ({seen2} of {total} records read again)"
        );
        assert_eq!(
            read_results(out.path()),
            reference(workers),
            "{workers} workers: every window exactly once"
        );
        assert!(
            std::fs::read_dir(cp.path()).unwrap().next().is_none(),
            "checkpoints deleted at the end"
        );
    }
}

#[test]
fn a_commit_that_fails_half_way_is_completed_without_duplicates() {
    let cp = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let (_, r) = run_job(
        2,
        cp.path(),
        out.path(),
        None,
        Some(Arc::new(AtomicBool::new(false))),
    );
    let err = r.expect_err("the first run fails");
    assert!(err.to_string().contains("half-way"), "{err}");
    let (_, r) = run_job(2, cp.path(), out.path(), None, None);
    r.expect("the second run completes");
    assert_eq!(read_results(out.path()), reference(2));
}

#[test]
fn a_checkpoint_taken_with_other_worker_counts_is_refused() {
    let cp = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let (_, r) = run_job(
        2,
        cp.path(),
        out.path(),
        Some(Arc::new(AtomicBool::new(false))),
        None,
    );
    assert!(r.is_err());
    let (_, r) = run_job(1, cp.path(), out.path(), None, None);
    let err = r.expect_err("refused");
    assert!(err.to_string().contains("2 workers"), "{err}");
}
