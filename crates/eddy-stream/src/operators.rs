//! The stream types and their stateless operators, `key_by`, and sinks.

use std::cell::RefCell;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::rc::Rc;
use std::sync::Arc;

use parking_lot::Mutex;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::Probe;
use timely::dataflow::{ProbeHandle, StreamVec};

use crate::event::{Ev, Watermarks};
use crate::Data;

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
    pub(crate) probe: ProbeHandle<u64>,
    pub(crate) sinks: Rc<RefCell<usize>>,
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
    pub(crate) fn new(
        stream: StreamVec<'s, u64, Ev<D>>,
        upstream: Upstream,
        probe: ProbeHandle<u64>,
        sinks: Rc<RefCell<usize>>,
    ) -> Self {
        DataStream {
            stream,
            upstream,
            probe,
            sinks,
        }
    }

    pub(crate) fn derive<E: Data>(
        &self,
        stream: StreamVec<'s, u64, Ev<E>>,
        upstream: Upstream,
    ) -> DataStream<'s, E> {
        DataStream::new(stream, upstream, self.probe.clone(), self.sinks.clone())
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
        let scope = self.stream.scope();
        let (index, peers) = (scope.index() as u32, scope.peers() as u32);
        let channels = self.upstream.channels;
        // this worker's watermark (the minimum over its own upstream) goes to every worker
        let addressed =
            self.stream
                .clone()
                .unary::<Cb<(K, D)>, _, _, _>(Pipeline, "KeyBy", move |_, _| {
                    let mut wms = Watermarks::new(channels);
                    move |input, output| {
                        input.for_each(|cap, data| {
                            let mut session = output.session(&cap);
                            for ev in data.drain(..) {
                                match ev {
                                    Ev::Rec(t, d) => session.give(Ev::Rec(t, (key(&d), d))),
                                    Ev::Wm { from, t, .. } => {
                                        if let Some(w) = wms.update(from, t) {
                                            for to in 0..peers {
                                                session.give(Ev::Wm {
                                                    from: index,
                                                    to,
                                                    t: w,
                                                });
                                            }
                                        }
                                    }
                                }
                            }
                        });
                    }
                });
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

    /// Send every record to `sink` (called on the worker that holds the record).
    pub fn sink(self, mut sink: Sink<D>) {
        let probe = self.probe.clone();
        *self.sinks.borrow_mut() += 1;
        self.stream
            .unary::<Cb<()>, _, _, _>(Pipeline, "Sink", move |_, _| {
                move |input, _output| {
                    input.for_each(|_cap, data| {
                        for ev in data.drain(..) {
                            if let Ev::Rec(t, d) = ev {
                                (sink.write)(t, d);
                            }
                        }
                    });
                }
            })
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
        let mut state: std::collections::HashMap<K, u64> = Default::default();
        self.inner.flat_map(move |(k, _)| {
            let n = state.entry(k.clone()).or_insert(0);
            *n += 1;
            Some((k, *n))
        })
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
        let mut state: std::collections::HashMap<K, V> = Default::default();
        self.inner.flat_map(move |(k, v)| {
            let next = match state.remove(&k) {
                Some(acc) => f(acc, v),
                None => v,
            };
            state.insert(k.clone(), next.clone());
            Some((k, next))
        })
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
