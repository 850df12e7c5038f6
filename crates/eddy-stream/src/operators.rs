//! The stream types and their stateless operators, `key_by`, and sinks.

use std::cell::RefCell;
use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, BTreeSet};
use std::hash::{Hash, Hasher};
use std::marker::PhantomData;
use std::rc::Rc;
use std::sync::Arc;

use parking_lot::Mutex;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::generic::Operator as _;
use timely::dataflow::operators::Probe;
use timely::dataflow::{ProbeHandle, StreamVec};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::checkpoint::{Checkpoints, CommitHook};
use crate::event::{Data, Ev};
use crate::report::JobStats;
use crate::runner::{self, Forward, OpCtx, Operator};

/// Where a stream's watermarks come from: how many distinct upstream channels report them,
/// and the range their `from` numbers use (so a union can keep the two sides apart).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Upstream {
    pub(crate) channels: usize,
    pub(crate) from_space: u32,
}

impl Upstream {
    /// This worker's own upstream: one channel.
    pub(crate) fn own(peers: u32) -> Upstream {
        Upstream {
            channels: 1,
            from_space: peers,
        }
    }
    /// Every worker (after an exchange).
    pub(crate) fn all(peers: u32) -> Upstream {
        Upstream {
            channels: peers as usize,
            from_space: peers,
        }
    }
}

/// A stream of `D` records on this worker.
pub struct DataStream<'s, D: Data> {
    pub(crate) stream: StreamVec<'s, u64, Ev<D>>,
    pub(crate) upstream: Upstream,
    pub(crate) ctx: Rc<Ctx>,
}

/// What every stream of a job on one worker shares.
pub(crate) struct Ctx {
    /// The job's name.
    pub(crate) job: String,
    /// Follows every sink: once it passes an epoch, the epoch is complete.
    pub(crate) probe: ProbeHandle<u64>,
    pub(crate) checkpoints: Rc<Checkpoints>,
    /// Run when an epoch is complete (exactly-once sinks commit it).
    pub(crate) commits: RefCell<Vec<CommitHook>>,
    /// Connector sinks built so far (numbering them the same on every run).
    pub(crate) sinks: std::cell::Cell<usize>,
    /// Records in and out, checkpoints: what the job reports.
    pub(crate) stats: Arc<JobStats>,
}

impl Ctx {
    pub(crate) fn next_sink_id(&self) -> usize {
        let id = self.sinks.get();
        self.sinks.set(id + 1);
        id
    }
}

/// A stream partitioned by key: every record of a key is on the same worker.
pub struct KeyedStream<'s, K: Data, V: Data> {
    pub(crate) inner: DataStream<'s, (K, V)>,
}

pub(crate) type Cb<D> = CapacityContainerBuilder<Vec<Ev<D>>>;

pub(crate) fn hash_of<K: Hash>(k: &K) -> u64 {
    let mut h = DefaultHasher::new();
    k.hash(&mut h);
    h.finish()
}

impl<'s, D: Data> DataStream<'s, D> {
    pub(crate) fn new(stream: StreamVec<'s, u64, Ev<D>>, upstream: Upstream, ctx: Rc<Ctx>) -> Self {
        DataStream {
            stream,
            upstream,
            ctx,
        }
    }

    pub(crate) fn derive<E: Data>(
        &self,
        stream: StreamVec<'s, u64, Ev<E>>,
        upstream: Upstream,
    ) -> DataStream<'s, E> {
        DataStream::new(stream, upstream, self.ctx.clone())
    }

    /// A second handle on the same stream (each consumer gets every record).
    pub(crate) fn clone_stream(&self) -> DataStream<'s, D> {
        self.derive(self.stream.clone(), self.upstream)
    }

    /// Each record to any number of records (watermarks pass through).
    pub fn flat_map<E, I, F>(self, mut f: F) -> DataStream<'s, E>
    where
        E: Data,
        I: IntoIterator<Item = E>,
        F: FnMut(D) -> I + 'static,
    {
        let out = self
            .stream
            .clone()
            .unary::<Cb<E>, _, _, _>(Pipeline, "FlatMap", move |_, _| {
                move |input, output| {
                    input.for_each(|cap, data| {
                        let mut session = output.session(&cap);
                        for ev in data.drain(..) {
                            match ev {
                                Ev::Rec(t, d) => {
                                    for e in f(d) {
                                        session.give(Ev::Rec(t, e));
                                    }
                                }
                                Ev::Wm { from, to, t } => session.give(Ev::Wm { from, to, t }),
                            }
                        }
                    });
                }
            });
        self.derive(out, self.upstream)
    }

    /// Each record to one record.
    pub fn map<E, F>(self, f: F) -> DataStream<'s, E>
    where
        E: Data,
        F: Fn(D) -> E + 'static,
    {
        self.flat_map(move |d| Some(f(d)))
    }

    /// Only the records `f` accepts.
    pub fn filter<F>(self, f: F) -> DataStream<'s, D>
    where
        F: Fn(&D) -> bool + 'static,
    {
        self.flat_map(move |d| if f(&d) { Some(d) } else { None })
    }

    /// Both streams as one (its watermark: the minimum of the two sides').
    pub fn union(self, other: DataStream<'s, D>) -> DataStream<'s, D> {
        use timely::dataflow::operators::Concat;
        // the other side's channels are renumbered past this side's, so a downstream
        // operator waits for the watermarks of both
        let offset = self.upstream.from_space;
        let upstream = Upstream {
            channels: self.upstream.channels + other.upstream.channels,
            from_space: offset + other.upstream.from_space,
        };
        let b = other.rechannel(offset);
        let merged = self.stream.clone().concat(b);
        self.derive(merged, upstream)
    }

    fn rechannel(&self, offset: u32) -> StreamVec<'s, u64, Ev<D>> {
        self.stream
            .clone()
            .unary::<Cb<D>, _, _, _>(Pipeline, "Channels", move |_, _| {
                move |input, output| {
                    input.for_each(|cap, data| {
                        let mut session = output.session(&cap);
                        for ev in data.drain(..) {
                            match ev {
                                Ev::Wm { from, to, t } => session.give(Ev::Wm {
                                    from: from + offset,
                                    to,
                                    t,
                                }),
                                rec => session.give(rec),
                            }
                        }
                    });
                }
            })
    }

    /// Partition by key: every record whose key is `k` goes to the same worker, where keyed
    /// state and windows live.
    pub fn key_by<K, F>(self, key: F) -> KeyedStream<'s, K, D>
    where
        K: Data + Hash + Eq,
        F: Fn(&D) -> K + 'static,
    {
        let peers = self.stream.scope().peers() as u32;
        // this worker's watermark (the minimum over its own upstream) goes to every worker
        let addressed = runner::stateless(
            self.stream.clone(),
            "KeyBy",
            self.upstream.channels,
            Forward::Everyone,
            KeyBy {
                key,
                _types: PhantomData,
            },
        );
        let exchanged = addressed.unary::<Cb<(K, D)>, _, _, _>(
            Exchange::new(|ev: &Ev<(K, D)>| match ev {
                Ev::Rec(_, (k, _)) => hash_of(k),
                Ev::Wm { to, .. } => *to as u64,
            }),
            "Exchange",
            |_, _| {
                move |input, output| {
                    input.for_each(|cap, data| {
                        output.session(&cap).give_iterator(data.drain(..));
                    });
                }
            },
        );
        KeyedStream {
            inner: self.derive(exchanged, Upstream::all(peers)),
        }
    }

    /// Send every record to a sink: a [`Sink`] function, or a connector such as
    /// `EddySink::topic(…)`.
    pub fn sink<S: SinkTo<D>>(self, sink: S) {
        sink.attach(self)
    }

    /// Call `sink` with every record (on the worker that holds the record).
    fn sink_fn(self, mut sink: Sink<D>) {
        let probe = self.ctx.probe.clone();
        let stats = self.ctx.stats.clone();
        self.stream
            .unary::<Cb<()>, _, _, _>(Pipeline, "Sink", move |_, _| {
                move |input, _output| {
                    input.for_each(|_cap, data| {
                        let mut n = 0u64;
                        for ev in data.drain(..) {
                            if let Ev::Rec(t, d) = ev {
                                (sink.write)(t, d);
                                n += 1;
                            }
                        }
                        stats
                            .records_out
                            .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
                    });
                }
            })
            .probe_with(&probe);
    }

    /// Send every record to `committer` exactly once: records are held per epoch (and kept in
    /// checkpoints) and committed once their epoch's checkpoint is complete. After a restore,
    /// epochs the checkpoint still held are committed again with `retry` set, and the
    /// committer writes only what it finds missing. Without checkpoints, records are
    /// committed as they arrive (no epochs, no guarantee beyond the committer's own).
    pub fn sink_exactly_once<C: Committer<D>>(self, committer: C) {
        let slot = self.ctx.checkpoints.slot("Sink");
        let checkpointed = slot.enabled();
        let saved: Option<SinkState<D>> = match slot.restore() {
            Ok(s) => s,
            Err(e) => panic!("{e}"),
        };
        let mut committer = committer;
        let (pending, retry) = match saved {
            Some(st) => {
                committer.restore(&st.committer);
                let retry = st.pending.keys().copied().collect();
                (st.pending, retry)
            }
            None => (BTreeMap::new(), BTreeSet::new()),
        };
        let shared = Rc::new(RefCell::new(SinkShared {
            pending,
            retry,
            committer,
        }));
        let on_complete = shared.clone();
        self.ctx.commits.borrow_mut().push(Box::new(move |epoch| {
            on_complete.borrow_mut().commit_through(epoch);
        }));
        let probe = self.ctx.probe.clone();
        let stats = self.ctx.stats.clone();
        runner::epochs(
            self.stream,
            "Sink",
            slot,
            SinkHandle(shared),
            move |state: &mut SinkHandle<D, C>, epoch, data, _out: &mut Vec<Ev<()>>| {
                let n = data.iter().filter(|e| matches!(e, Ev::Rec(..))).count();
                stats
                    .records_out
                    .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
                let mut st = state.0.borrow_mut();
                let records = data.drain(..).filter_map(|ev| match ev {
                    Ev::Rec(_, d) => Some(d),
                    Ev::Wm { .. } => None,
                });
                if checkpointed {
                    st.pending.entry(epoch).or_default().extend(records);
                } else {
                    let batch: Vec<D> = records.collect();
                    if !batch.is_empty() {
                        if let Err(e) = st.committer.commit(epoch, &batch, false) {
                            panic!("sink: {e}");
                        }
                    }
                }
            },
            |_: &mut SinkHandle<D, C>, _epoch, _out: &mut Vec<Ev<()>>| None,
        )
        .probe_with(&probe);
    }

    /// Print every record on standard output.
    pub fn print(self)
    where
        D: std::fmt::Debug,
    {
        self.sink(Sink::new(|_, d: D| println!("{d:?}")))
    }

    /// Collect every record into `into` (all workers of this process share it).
    pub fn collect(self, into: Arc<Mutex<Vec<D>>>)
    where
        D: Send,
    {
        self.sink(Sink::new(move |_, d| into.lock().push(d)))
    }
}

impl<'s, K: Data + Hash + Eq, V: Data> KeyedStream<'s, K, V> {
    /// The keyed records as (key, value) pairs.
    pub fn into_stream(self) -> DataStream<'s, (K, V)> {
        self.inner
    }

    /// A running count per key: every record emits its key's count so far (the classic
    /// streaming word count).
    pub fn count(self) -> DataStream<'s, (K, u64)> {
        self.running("Count", |n: Option<u64>, _| n.unwrap_or(0) + 1)
    }

    /// A running sum per key: every record emits its key's sum so far.
    pub fn sum(self) -> DataStream<'s, (K, V)>
    where
        V: std::ops::Add<Output = V>,
    {
        self.reduce(|a, b| a + b)
    }

    /// A running reduction per key: every record emits the key's new reduced value.
    pub fn reduce<F>(self, f: F) -> DataStream<'s, (K, V)>
    where
        F: Fn(V, V) -> V + 'static,
    {
        self.running("Reduce", move |acc: Option<V>, v| match acc {
            Some(a) => f(a, v),
            None => v,
        })
    }

    /// Keyed state `S` per key, folded over the key's records; each record emits the new
    /// state. The state is checkpointed.
    fn running<S, F>(self, name: &str, f: F) -> DataStream<'s, (K, S)>
    where
        S: Data,
        F: Fn(Option<S>, V) -> S + 'static,
    {
        let slot = self.inner.ctx.checkpoints.slot(name);
        let out = runner::stateful(
            self.inner.stream.clone(),
            name,
            slot,
            self.inner.upstream.channels,
            Running {
                f,
                state: KeyedMap::default(),
                _types: PhantomData,
            },
        );
        let peers = self.inner.stream.scope().peers() as u32;
        self.inner.derive(out, Upstream::own(peers))
    }
}

/// `key_by`'s first half: each record paired with its key.
struct KeyBy<D, K, F> {
    key: F,
    _types: PhantomData<fn(D) -> K>,
}

impl<D, K, F> Operator for KeyBy<D, K, F>
where
    D: Data,
    K: Data,
    F: Fn(&D) -> K + 'static,
{
    type In = D;
    type Out = (K, D);
    type State = ();

    #[inline]
    fn on_record(&mut self, t: i64, d: D, ctx: &mut OpCtx<'_, (K, D)>) {
        ctx.emit(t, ((self.key)(&d), d));
    }

    fn snapshot(&self) -> &() {
        &()
    }

    fn restore(&mut self, _: ()) {}
}

/// A running aggregation: per key, `f` folds the key's records into its state, and each
/// record emits the new state.
struct Running<K, V, S, F> {
    f: F,
    state: KeyedMap<K, S>,
    _types: PhantomData<fn(V)>,
}

impl<K, V, S, F> Operator for Running<K, V, S, F>
where
    K: Data + Hash + Eq,
    V: Data,
    S: Data,
    F: Fn(Option<S>, V) -> S + 'static,
{
    type In = (K, V);
    type Out = (K, S);
    type State = KeyedMap<K, S>;

    #[inline]
    fn on_record(&mut self, t: i64, (k, v): (K, V), ctx: &mut OpCtx<'_, (K, S)>) {
        let next = (self.f)(self.state.0.remove(&k), v);
        self.state.0.insert(k.clone(), next.clone());
        ctx.emit(t, (k, next));
    }

    fn snapshot(&self) -> &KeyedMap<K, S> {
        &self.state
    }

    fn restore(&mut self, state: KeyedMap<K, S>) {
        self.state = state;
    }
}

/// Per-key state (a newtype so it can carry its serde bounds).
#[derive(Serialize, Deserialize)]
#[serde(bound(
    serialize = "K: Serialize, S: Serialize",
    deserialize = "K: DeserializeOwned + Hash + Eq, S: DeserializeOwned"
))]
pub(crate) struct KeyedMap<K, S>(pub(crate) std::collections::HashMap<K, S>);

impl<K, S> Default for KeyedMap<K, S> {
    fn default() -> Self {
        KeyedMap(Default::default())
    }
}

/// Writes a sink's records somewhere, exactly once (see [`DataStream::sink_exactly_once`]).
pub trait Committer<D>: 'static {
    /// Write `records`, all of epoch `epoch`, in order. With `retry`, some or all of them may
    /// have been written before a crash: write only the missing ones. An error fails the job
    /// (it resumes from its last checkpoint when run again).
    fn commit(&mut self, epoch: u64, records: &[D], retry: bool) -> Result<(), String>;
    /// What the committer needs after a restore (e.g. where its earlier writes start); kept
    /// in every checkpoint.
    fn state(&self) -> Vec<u8> {
        Vec::new()
    }
    /// Resume with what [`Committer::state`] returned.
    fn restore(&mut self, _state: &[u8]) {}
}

/// A sink's checkpointed state: the records of epochs not yet committed, and its committer's.
#[derive(Serialize, Deserialize)]
#[serde(bound(serialize = "D: Serialize", deserialize = "D: DeserializeOwned"))]
struct SinkState<D> {
    pending: BTreeMap<u64, Vec<D>>,
    committer: Vec<u8>,
}

struct SinkShared<D, C> {
    pending: BTreeMap<u64, Vec<D>>,
    /// Epochs restored from a checkpoint: they may have been committed in part already.
    retry: BTreeSet<u64>,
    committer: C,
}

impl<D, C: Committer<D>> SinkShared<D, C> {
    fn commit_through(&mut self, epoch: u64) {
        while let Some((&e, _)) = self.pending.first_key_value() {
            if e > epoch {
                break;
            }
            let retry = self.retry.contains(&e);
            // the epoch leaves `pending` only once committed: a failure keeps it for the
            // checkpoints taken until the job stops
            if let Err(err) = self.committer.commit(e, &self.pending[&e], retry) {
                panic!("sink: committing epoch {e}: {err}");
            }
            self.pending.remove(&e);
            self.retry.remove(&e);
        }
    }
}

/// The operator's handle on the state it shares with the commit hook.
struct SinkHandle<D, C>(Rc<RefCell<SinkShared<D, C>>>);

impl<D: Serialize, C: Committer<D>> Serialize for SinkHandle<D, C> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let st = self.0.borrow();
        SinkStateRef {
            pending: &st.pending,
            committer: st.committer.state(),
        }
        .serialize(s)
    }
}

/// [`SinkState`] by reference, for saving.
#[derive(Serialize)]
#[serde(bound(serialize = "D: Serialize"))]
struct SinkStateRef<'a, D> {
    pending: &'a BTreeMap<u64, Vec<D>>,
    committer: Vec<u8>,
}

/// Where a stream can end: [`DataStream::sink`] attaches it.
pub trait SinkTo<D: Data> {
    /// Attach the sink to `stream`.
    fn attach(self, stream: DataStream<'_, D>);
}

impl<D: Data> SinkTo<D> for Sink<D> {
    fn attach(self, stream: DataStream<'_, D>) {
        stream.sink_fn(self)
    }
}

/// Where a stream's records end: a function of (event time, record).
pub struct Sink<D> {
    pub(crate) write: Box<dyn FnMut(i64, D)>,
}

impl<D> Sink<D> {
    /// A sink calling `f` with each record and its event time.
    pub fn new<F: FnMut(i64, D) + 'static>(f: F) -> Sink<D> {
        Sink { write: Box::new(f) }
    }
}
