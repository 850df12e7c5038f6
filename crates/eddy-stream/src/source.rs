//! Sources: where records come from, with their event time and watermarks.
//!
//! Each worker runs one instance of a source and reads its share (a partition of a collection,
//! every n-th line of a file). After each chunk it emits a watermark: the largest event time
//! seen minus the bounded out-of-orderness, minus one; when its share is exhausted it emits the
//! final watermark (`i64::MAX`), so an empty share never holds the others back.

use std::io::BufRead;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use timely::container::CapacityContainerBuilder;
use timely::dataflow::operators::generic::operator::source;
use timely::dataflow::{Scope, StreamVec};

use crate::event::Ev;
use crate::Data;

type Make<D> = Arc<dyn Fn(usize, usize) -> Box<dyn Iterator<Item = D>> + Send + Sync>;
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
    make: Make<D>,
    stamp: Option<Stamp<D>>,
    strategy: WatermarkStrategy,
}

/// Records read per activation of a source.
const CHUNK: usize = 1024;

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl<D: Data> Source<D> {
    /// A collection, all read by worker 0 (so its order, and so its watermarks, do not
    /// depend on the number of workers).
    pub fn from_vec(items: Vec<D>) -> Source<D>
    where
        D: Sync,
    {
        let items = Arc::new(items);
        Source {
            make: Arc::new(move |index, _| {
                let items = items.clone();
                let n = if index == 0 { items.len() } else { 0 };
                Box::new((0..n).map(move |i| items[i].clone()))
            }),
            stamp: None,
            strategy: WatermarkStrategy::Monotonous,
        }
    }

    /// Records from a generator: worker `index` of `peers` reads what `make(index, peers)`
    /// yields.
    pub fn generator<I, F>(make: F) -> Source<D>
    where
        I: Iterator<Item = D> + 'static,
        F: Fn(usize, usize) -> I + Send + Sync + 'static,
    {
        Source {
            make: Arc::new(move |i, p| Box::new(make(i, p))),
            stamp: None,
            strategy: WatermarkStrategy::Monotonous,
        }
    }

    /// Event time taken from each record, with a watermark strategy. Without this the event
    /// time is the time a record is read (ingestion time).
    pub fn with_timestamps<F>(mut self, stamp: F, strategy: WatermarkStrategy) -> Source<D>
    where
        F: Fn(&D) -> i64 + Send + Sync + 'static,
    {
        self.stamp = Some(Arc::new(stamp));
        self.strategy = strategy;
        self
    }

    pub(crate) fn build<'s>(self, scope: Scope<'s, u64>) -> StreamVec<'s, u64, Ev<D>> {
        let index = scope.index();
        let peers = scope.peers();
        let Source {
            make,
            stamp,
            strategy,
        } = self;
        let bound = strategy.bound_ms();
        source::<u64, CapacityContainerBuilder<Vec<Ev<D>>>, _, _>(
            scope,
            "Source",
            move |cap, info| {
                let activator = scope.activator_for(info.address);
                let mut cap = Some(cap);
                let mut items = make(index, peers);
                let mut max_ts = i64::MIN;
                move |output| {
                    let Some(c) = cap.as_ref() else { return };
                    let mut session = output.session(c);
                    let mut done = true;
                    for _ in 0..CHUNK {
                        let Some(d) = items.next() else { break };
                        let t = stamp.as_ref().map_or_else(now_ms, |s| s(&d));
                        max_ts = max_ts.max(t);
                        session.give(Ev::Rec(t, d));
                        done = false;
                    }
                    let from = index as u32;
                    if done {
                        session.give(Ev::Wm {
                            from,
                            to: from,
                            t: i64::MAX,
                        });
                        drop(session);
                        cap = None;
                    } else {
                        if max_ts != i64::MIN {
                            let t = max_ts.saturating_sub(bound).saturating_sub(1);
                            session.give(Ev::Wm { from, to: from, t });
                        }
                        drop(session);
                        activator.activate();
                    }
                }
            },
        )
    }
}

impl Source<String> {
    /// The lines of a text file; worker `index` of `peers` reads lines `index`, `index +
    /// peers`, … (so every line is read once whatever the number of workers).
    pub fn lines_of_file(path: impl Into<PathBuf>) -> Source<String> {
        let path: PathBuf = path.into();
        Source::generator(move |index, peers| {
            let lines: Box<dyn Iterator<Item = String>> = match std::fs::File::open(&path) {
                Ok(f) => Box::new(
                    std::io::BufReader::new(f)
                        .lines()
                        .map_while(Result::ok)
                        .enumerate()
                        .filter(move |(i, _)| i % peers == index)
                        .map(|(_, l)| l),
                ),
                Err(e) => {
                    tracing::error!(path = %path.display(), "cannot read the input file: {e}");
                    Box::new(std::iter::empty())
                }
            };
            lines
        })
    }
}
