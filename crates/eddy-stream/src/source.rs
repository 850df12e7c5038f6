//! Sources: where records come from, with their event time and watermarks.
//!
//! Each worker runs one instance of a source, which reads its share through a [`Reader`]
//! (a partition of a collection, every n-th line of a file, some partitions of a topic).
//! Watermarks are kept per split (a topic partition; other readers have one split): a split's
//! watermark is the largest event time seen in it minus the bounded out-of-orderness, minus
//! one; the instance's watermark is the minimum over its splits, leaving out splits idle for
//! longer than the idleness timeout (so a quiet partition does not hold results back). It is
//! emitted after every chunk read; when the share is exhausted the final watermark
//! (`i64::MAX`) goes out, so an empty share never holds the others back.
//!
//! With checkpoints on, the instance ends its epoch when the checkpoint interval has passed:
//! it saves the reader's position and its watermark state for the epoch, then reads on in the
//! next one.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::operators::generic::operator::source;
use timely::dataflow::{Scope, StreamVec};
use timely::scheduling::SyncActivator;

use crate::checkpoint::{CommitHook, Slot};
use crate::event::{now_ms, Data, Ev, IDLE};
use crate::report::JobStats;

/// One record read by a [`Reader`].
pub(crate) struct Item<D> {
    /// The split it comes from.
    pub(crate) split: u32,
    /// Its own event time, if the medium carries one (a Kafka record's timestamp).
    pub(crate) time: Option<i64>,
    pub(crate) data: D,
}

/// What a poll found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Poll {
    /// More may be there right away.
    Ready,
    /// Nothing now; the reader wakes the operator when there is.
    Pending,
    /// The share is exhausted.
    Done,
}

/// How a source instance reads its share.
pub(crate) trait Reader<D>: 'static {
    /// Called once before the first poll, after any restore, with a handle that wakes the
    /// operator from another thread.
    fn start(&mut self, _wake: SyncActivator, _checkpointed: bool) {}
    /// Append up to `max` records to `out`.
    fn poll(&mut self, out: &mut Vec<Item<D>>, max: usize) -> Poll;
    /// The splits this instance reads (watermarks are per split).
    fn splits(&self) -> Vec<u32>;
    /// Whether a split has nothing more to read for now (only such a split may be idle:
    /// one that is merely slow to fetch is not).
    fn caught_up(&self, _split: u32) -> bool {
        true
    }
    /// The position after the records returned so far.
    fn position(&self) -> Vec<u8>;
    /// Continue from a saved position (before `start`).
    fn restore(&mut self, position: &[u8]) -> Result<(), String>;
    /// The positions the other workers' instances saved in the restored checkpoint (before
    /// `start`; for sources whose workers share their input, like a queue's consumers).
    fn restore_peers(&mut self, _positions: &[Vec<u8>]) -> Result<(), String> {
        Ok(())
    }
    /// The source ended epoch `epoch` (its position was just saved for it).
    fn epoch_ended(&mut self, _epoch: u64) {}
    /// Checkpoint `epoch` is complete: what was read up to its end will never be read again
    /// (a queue acknowledges those messages now).
    fn epoch_complete(&mut self, _epoch: u64) {}
}

type MakeReader<D> = Arc<dyn Fn(usize, usize) -> Box<dyn Reader<D>> + Send + Sync>;
type Stamp<D> = Arc<dyn Fn(&D) -> i64 + Send + Sync>;

/// How far event time may run backwards within a source.
#[derive(Clone, Copy, Debug)]
pub enum WatermarkStrategy {
    /// Event times only grow (a watermark right behind the newest record).
    Monotonous,
    /// Records may arrive up to this much later than newer ones.
    BoundedOutOfOrderness(Duration),
}

impl WatermarkStrategy {
    fn bound_ms(self) -> i64 {
        match self {
            WatermarkStrategy::Monotonous => 0,
            WatermarkStrategy::BoundedOutOfOrderness(d) => d.as_millis() as i64,
        }
    }
}

/// A source of records of type `D`.
pub struct Source<D> {
    make: MakeReader<D>,
    stamp: Option<Stamp<D>>,
    strategy: WatermarkStrategy,
    idleness: Option<Duration>,
}

/// Records read per activation of a source.
const CHUNK: usize = 1024;

/// A reader over an iterator made afresh on every run; its position is the number of records
/// taken, and a restore skips that many.
struct IterReader<D> {
    make: Arc<dyn Fn(usize, usize) -> Box<dyn Iterator<Item = D>> + Send + Sync>,
    index: usize,
    peers: usize,
    it: Option<Box<dyn Iterator<Item = D>>>,
    taken: u64,
}

impl<D: 'static> Reader<D> for IterReader<D> {
    fn poll(&mut self, out: &mut Vec<Item<D>>, max: usize) -> Poll {
        let it = match &mut self.it {
            Some(it) => it,
            None => {
                let mut it = (self.make)(self.index, self.peers);
                if self.taken > 0 {
                    // skip what the restored checkpoint already covered
                    let _ = it.nth(self.taken as usize - 1);
                }
                self.it.insert(it)
            }
        };
        // a slow iterator hands over what it has every few milliseconds
        let began = Instant::now();
        for i in 0..max {
            if (i < 16 || i % 16 == 15) && i > 0 && began.elapsed() >= Duration::from_millis(10) {
                return Poll::Ready;
            }
            match it.next() {
                Some(data) => {
                    self.taken += 1;
                    out.push(Item {
                        split: 0,
                        time: None,
                        data,
                    });
                }
                None => return Poll::Done,
            }
        }
        Poll::Ready
    }
    fn splits(&self) -> Vec<u32> {
        vec![0]
    }
    fn position(&self) -> Vec<u8> {
        self.taken.to_be_bytes().to_vec()
    }
    fn restore(&mut self, position: &[u8]) -> Result<(), String> {
        let b: [u8; 8] = position
            .try_into()
            .map_err(|_| "a position of 8 bytes".to_owned())?;
        self.taken = u64::from_be_bytes(b);
        self.it = None;
        Ok(())
    }
}

/// A source instance's state in a checkpoint.
#[derive(Serialize, Deserialize, Default)]
struct SourceState {
    position: Vec<u8>,
    /// Per split, the largest event time seen.
    max_ts: BTreeMap<u32, i64>,
    /// The last watermark emitted.
    emitted: Option<i64>,
}

impl<D: Data> Source<D> {
    /// A source reading through `make(index, peers)` on each worker.
    pub(crate) fn from_reader<F>(make: F) -> Source<D>
    where
        F: Fn(usize, usize) -> Box<dyn Reader<D>> + Send + Sync + 'static,
    {
        Source {
            make: Arc::new(make),
            stamp: None,
            strategy: WatermarkStrategy::Monotonous,
            idleness: None,
        }
    }

    /// A collection, all read by worker 0 (so its order, and so its watermarks, do not
    /// depend on the number of workers).
    pub fn from_vec(items: Vec<D>) -> Source<D>
    where
        D: Sync,
    {
        let items = Arc::new(items);
        Source::generator(move |index, _| {
            let items = items.clone();
            let n = if index == 0 { items.len() } else { 0 };
            (0..n).map(move |i| items[i].clone())
        })
    }

    /// Records from a generator: worker `index` of `peers` reads what `make(index, peers)`
    /// yields. It must yield the same records on every run (a restore skips as many as the
    /// checkpoint had read).
    pub fn generator<I, F>(make: F) -> Source<D>
    where
        I: Iterator<Item = D> + 'static,
        F: Fn(usize, usize) -> I + Send + Sync + 'static,
    {
        let make: Arc<dyn Fn(usize, usize) -> Box<dyn Iterator<Item = D>> + Send + Sync> =
            Arc::new(move |i, p| Box::new(make(i, p)));
        Source::from_reader(move |index, peers| {
            Box::new(IterReader {
                make: make.clone(),
                index,
                peers,
                it: None,
                taken: 0,
            })
        })
    }

    /// Event time taken from each record, with a watermark strategy. Without this the event
    /// time is the record's own timestamp where the medium has one (Kafka), else the time it
    /// is read (ingestion time).
    pub fn with_timestamps<F>(mut self, stamp: F, strategy: WatermarkStrategy) -> Source<D>
    where
        F: Fn(&D) -> i64 + Send + Sync + 'static,
    {
        self.stamp = Some(Arc::new(stamp));
        self.strategy = strategy;
        self
    }

    /// The watermark strategy for the records' own timestamps.
    pub fn with_watermarks(mut self, strategy: WatermarkStrategy) -> Source<D> {
        self.strategy = strategy;
        self
    }

    /// A split (partition) with no record for this long stops holding the watermark back
    /// until it has records again.
    pub fn with_idleness(mut self, timeout: Duration) -> Source<D> {
        self.idleness = Some(timeout);
        self
    }

    pub(crate) fn build<'s>(
        self,
        scope: Scope<'s, u64>,
        slot: Slot,
        hooks: &RefCell<Vec<CommitHook>>,
        stats: Arc<JobStats>,
    ) -> StreamVec<'s, u64, Ev<D>> {
        let index = scope.index();
        let peers = scope.peers();
        let Source {
            make,
            stamp,
            strategy,
            idleness,
        } = self;
        let bound = strategy.bound_ms();
        let from = index as u32;
        let reader: Rc<RefCell<Box<dyn Reader<D>>>> = Rc::new(RefCell::new(make(index, peers)));
        let on_complete = reader.clone();
        hooks.borrow_mut().push(Box::new(move |epoch| {
            on_complete.borrow_mut().epoch_complete(epoch)
        }));
        source::<u64, CapacityContainerBuilder<Vec<Ev<D>>>, _, _>(
            scope,
            "Source",
            move |cap, info| {
                let activator = scope.activator_for(info.address.clone());
                let sync = scope.worker().sync_activator_for(info.address.to_vec());
                let restored = match slot.restore::<SourceState>() {
                    Ok(s) => s,
                    Err(e) => panic!("{e}"),
                };
                let mut st = restored.unwrap_or_default();
                if !st.position.is_empty() {
                    if let Err(e) = reader.borrow_mut().restore(&st.position) {
                        panic!("source: cannot resume from its checkpointed position: {e}");
                    }
                }
                let others: Vec<Vec<u8>> = match slot.restore_peers::<SourceState>(peers) {
                    Ok(v) => v.into_iter().map(|s| s.position).collect(),
                    Err(e) => panic!("{e}"),
                };
                if let Err(e) = reader.borrow_mut().restore_peers(&others) {
                    panic!("source: cannot resume from the other workers' positions: {e}");
                }
                let mut cap = slot.start_epoch().map(|e| cap.delayed(&e));
                let mut started = false;
                let mut epoch_began = Instant::now();
                let mut last_seen: BTreeMap<u32, Instant> = BTreeMap::new();
                let mut buf: Vec<Item<D>> = Vec::with_capacity(CHUNK);
                let mut idle_sent = false;
                // after a restore, the restored watermark is announced again (operators that
                // do not checkpoint theirs would otherwise wait for the next advance)
                let mut reannounce = st.emitted;
                move |output| {
                    let Some(c) = cap.as_mut() else { return };
                    let mut reader = reader.borrow_mut();
                    if !started {
                        started = true;
                        reader.start(sync.clone(), slot.enabled());
                        let now = Instant::now();
                        for s in reader.splits() {
                            last_seen.insert(s, now);
                        }
                    }
                    let poll = reader.poll(&mut buf, CHUNK);
                    let now = Instant::now();
                    let mut session = output.session(&*c);
                    stats
                        .records_in
                        .fetch_add(buf.len() as u64, std::sync::atomic::Ordering::Relaxed);
                    for item in buf.drain(..) {
                        let t = match (&stamp, item.time) {
                            (Some(s), _) => s(&item.data),
                            (None, Some(t)) => t,
                            (None, None) => now_ms(),
                        };
                        let m = st.max_ts.entry(item.split).or_insert(i64::MIN);
                        *m = (*m).max(t);
                        last_seen.insert(item.split, now);
                        session.give(Ev::Rec(t, item.data));
                    }
                    if let Some(w) = reannounce.take() {
                        session.give(Ev::Wm {
                            from,
                            to: from,
                            t: w,
                        });
                    }
                    if poll == Poll::Done {
                        session.give(Ev::Wm {
                            from,
                            to: from,
                            t: i64::MAX,
                        });
                        drop(session);
                        st.position = reader.position();
                        if let Err(e) = slot.save(*c.time(), &st) {
                            panic!("source: {e}");
                        }
                        reader.epoch_ended(*c.time());
                        cap = None;
                        return;
                    }
                    // the watermark: the minimum over the splits not idle
                    let splits = reader.splits();
                    let mut wm: Option<i64> = None;
                    let mut active = 0;
                    for s in &splits {
                        let idle = idleness.is_some_and(|d| {
                            last_seen
                                .get(s)
                                .is_none_or(|at| now.duration_since(*at) > d)
                        }) && reader.caught_up(*s);
                        if idle {
                            continue;
                        }
                        active += 1;
                        let w = st
                            .max_ts
                            .get(s)
                            .map_or(i64::MIN, |m| m.saturating_sub(bound).saturating_sub(1));
                        wm = Some(wm.map_or(w, |x: i64| x.min(w)));
                    }
                    if active == 0 && (idleness.is_some() || splits.is_empty()) {
                        if !idle_sent {
                            session.give(Ev::Wm {
                                from,
                                to: from,
                                t: IDLE,
                            });
                            idle_sent = true;
                        }
                    } else if let Some(w) = wm {
                        if w != i64::MIN && (idle_sent || st.emitted.is_none_or(|e| w > e)) {
                            let w = st.emitted.map_or(w, |e| w.max(e));
                            session.give(Ev::Wm {
                                from,
                                to: from,
                                t: w,
                            });
                            st.emitted = Some(w);
                            idle_sent = false;
                        }
                    }
                    drop(session);
                    // the end of an epoch
                    if slot.enabled() && epoch_began.elapsed() >= slot.interval() {
                        st.position = reader.position();
                        let e = *c.time();
                        if let Err(err) = slot.save(e, &st) {
                            panic!("source: {err}");
                        }
                        reader.epoch_ended(e);
                        c.downgrade(&(e + 1));
                        epoch_began = Instant::now();
                    }
                    match poll {
                        Poll::Ready => activator.activate(),
                        _ => {
                            // come back for the epoch's end and for idleness even without data
                            let mut wait = Duration::from_millis(100);
                            if slot.enabled() {
                                wait =
                                    wait.min(slot.interval().saturating_sub(epoch_began.elapsed()));
                            }
                            activator.activate_after(wait.max(Duration::from_millis(1)));
                        }
                    }
                }
            },
        )
    }
}

impl<D: Data + serde::de::DeserializeOwned> Source<D> {
    /// One JSON value per line of a file (empty lines skipped), shared among the workers as
    /// [`Source::lines_of_file`] does; a line that is not a `D` fails the job with its line
    /// number.
    pub fn json_lines_of_file(path: impl Into<PathBuf>) -> Source<D> {
        let path: PathBuf = path.into();
        Source::generator(move |index, peers| {
            let shown = path.display().to_string();
            let file = std::fs::File::open(&path)
                .unwrap_or_else(|e| panic!("cannot read the input file {shown}: {e}"));
            std::io::BufReader::new(file)
                .lines()
                .enumerate()
                .filter(move |(i, _)| i % peers == index)
                .filter_map(move |(i, line)| {
                    let line = line.unwrap_or_else(|e| panic!("{shown}: line {}: {e}", i + 1));
                    if line.trim().is_empty() {
                        return None;
                    }
                    Some(serde_json::from_str::<D>(&line).unwrap_or_else(|e| {
                        panic!("{shown}: line {}: not the expected JSON: {e}", i + 1)
                    }))
                })
        })
    }
}

impl Source<String> {
    /// The lines of a text file; worker `index` of `peers` reads lines `index`, `index +
    /// peers`, … (so every line is read once whatever the number of workers).
    pub fn lines_of_file(path: impl Into<PathBuf>) -> Source<String> {
        let path: PathBuf = path.into();
        Source::generator(move |index, peers| {
            let shown = path.display().to_string();
            let file = std::fs::File::open(&path)
                .unwrap_or_else(|e| panic!("cannot read the input file {shown}: {e}"));
            std::io::BufReader::new(file)
                .lines()
                .enumerate()
                .filter(move |(i, _)| i % peers == index)
                .map(move |(i, l)| l.unwrap_or_else(|e| panic!("{shown}: line {}: {e}", i + 1)))
        })
    }
}
