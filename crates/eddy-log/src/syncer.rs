//! The group committer: one thread, shared by every log, fsyncs the logs written since its last
//! pass and publishes each one's durable offset, so many writers share one fsync.
//!
//! An append marks its log dirty (`Syncer::mark`); the thread takes every dirty log at once,
//! fsyncs each one's active file and publishes the offset written before the fsync began
//! ([`Log::wait_durable`](crate::Log::wait_durable) watches it). Rolling a segment fsyncs the
//! sealed file itself, so the thread only ever syncs active files. A failed fsync stops the log
//! for good ([`LogError::Failed`](crate::LogError::Failed)).
//!
//! [`Log::truncate`](crate::Log::truncate) is the only thing that moves the durable offset
//! down. Each truncation starts a new *epoch* (`Durable::epoch`); an fsync pass, or an
//! append's publication made outside the log's lock, that began in an earlier epoch publishes
//! nothing, so an offset written before a truncation is never published as durable after it.
//! The offset every recent truncation cut the log at is kept (`Cuts`), so that a durability
//! wait spanning a truncation can tell whether the offsets it waits for were removed.

use std::collections::HashMap;
use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::{Condvar, Mutex};
use tokio::sync::watch;

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

#[derive(Clone, Copy, Debug)]
pub(crate) struct Durable {
    pub(crate) offset: u64,
    pub(crate) failed: bool,
    /// Truncations so far: bumped (with `offset` set down) by each
    /// [`Log::truncate`](crate::Log::truncate).
    pub(crate) epoch: u64,
}

/// How many truncations [`Cuts`] remembers; a wait that began more truncations ago than this
/// fails as if its offsets had been removed.
const CUTS_KEPT: usize = 1024;

/// The start offsets of the most recent truncations: `from[i]` is the offset truncation number
/// `first_epoch + i` cut the log at (truncation `e` moved the epoch from `e - 1` to `e`).
#[derive(Default)]
pub(crate) struct Cuts {
    first_epoch: u64,
    from: std::collections::VecDeque<u64>,
}

impl Cuts {
    /// Remember that truncation number `epoch` cut the log at `from`.
    pub(crate) fn push(&mut self, epoch: u64, from: u64) {
        if self.from.is_empty() {
            self.first_epoch = epoch;
        }
        self.from.push_back(from);
        if self.from.len() > CUTS_KEPT {
            self.from.pop_front();
            self.first_epoch += 1;
        }
    }

    /// The lowest offset cut by the truncations after epoch `since` (`None`: none happened);
    /// `Some(0)` when some of them are no longer remembered.
    pub(crate) fn lowest_since(&self, since: u64) -> Option<u64> {
        let newest = self.first_epoch + self.from.len() as u64;
        if self.from.is_empty() || newest <= since {
            return None;
        }
        if since + 1 < self.first_epoch {
            return Some(0);
        }
        let skip = (since + 1 - self.first_epoch) as usize;
        self.from.iter().skip(skip).copied().min()
    }
}

/// What the syncer needs of a log.
pub(crate) struct SyncTarget {
    pub(crate) active: Mutex<Arc<File>>,
    pub(crate) active_path: Mutex<PathBuf>,
    pub(crate) written_end: AtomicU64,
    pub(crate) durable: watch::Sender<Durable>,
    pub(crate) failed: AtomicBool,
    /// `durable`'s epoch, readable without the watch's lock; set (before `durable`) under the
    /// log's lock by a truncation.
    pub(crate) epoch: AtomicU64,
    /// Where recent truncations cut the log (pushed under the log's lock before `durable`'s
    /// epoch moves).
    pub(crate) cuts: Mutex<Cuts>,
}

impl SyncTarget {
    /// The truncation epoch now.
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Raise the durable offset to `end`, unless a truncation happened since `epoch` was read
    /// (the offset written before it may since have been removed).
    pub(crate) fn publish(&self, epoch: u64, end: u64) {
        self.durable.send_if_modified(|d| {
            if d.epoch == epoch && end > d.offset {
                d.offset = end;
                true
            } else {
                false
            }
        });
    }
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

    pub(crate) fn mark(&self, t: &Arc<SyncTarget>) {
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
        // read the epoch first: a truncation after it makes this pass publish nothing
        let epoch = t.epoch();
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
            Ok(()) => t.publish(epoch, end),
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
