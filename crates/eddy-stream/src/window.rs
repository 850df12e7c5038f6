//! Windows on keyed streams: tumbling, sliding and session windows in event time, count
//! windows, and a global window with a count trigger; allowed lateness; late records to a side
//! output instead of silently dropped.
//!
//! A time window fires when the operator's watermark reaches its end; records that arrive
//! later but within the allowed lateness update it and fire it again; records later than that
//! go to the late output. Results carry the event time `end - 1`.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::marker::PhantomData;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::event::{now_ms, Data, Windowed};
use crate::operators::{DataStream, KeyedStream, Upstream};
use crate::runner::{self, OpCtx, Operator};

/// Which windows a keyed stream is cut into.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum WindowSpec {
    /// Fixed, non-overlapping windows of `size` ms, aligned to the epoch.
    Tumbling {
        /// Length, ms.
        size: i64,
    },
    /// Windows of `size` ms starting every `slide` ms.
    Sliding {
        /// Length, ms.
        size: i64,
        /// Distance between starts, ms.
        slide: i64,
    },
    /// Per key, records closer than `gap` ms apart share a window.
    Session {
        /// Longest quiet time inside a session, ms.
        gap: i64,
    },
    /// Tumbling windows of `size` ms of processing time (the wall clock when a record
    /// arrives), fired when the clock passes their end.
    TumblingProcessing {
        /// Length, ms.
        size: i64,
    },
    /// Sliding windows of processing time.
    SlidingProcessing {
        /// Length, ms.
        size: i64,
        /// Distance between starts, ms.
        slide: i64,
    },
    /// Per key, every `n` records form a window.
    Count {
        /// Records per window.
        n: u64,
    },
    /// One window per key for all time, fired every `every` records (accumulating).
    Global {
        /// Records between firings.
        every: u64,
    },
}

fn ms(d: Duration) -> i64 {
    d.as_millis().max(1) as i64
}

/// Tumbling windows.
pub struct Tumbling;
impl Tumbling {
    /// Event-time tumbling windows of `size`.
    pub fn event_time(size: Duration) -> WindowSpec {
        WindowSpec::Tumbling { size: ms(size) }
    }
    /// Processing-time tumbling windows of `size`.
    pub fn processing_time(size: Duration) -> WindowSpec {
        WindowSpec::TumblingProcessing { size: ms(size) }
    }
}

/// Sliding windows.
pub struct Sliding;
impl Sliding {
    /// Event-time windows of `size`, one starting every `slide`.
    pub fn event_time(size: Duration, slide: Duration) -> WindowSpec {
        WindowSpec::Sliding {
            size: ms(size),
            slide: ms(slide),
        }
    }
    /// Processing-time windows of `size`, one starting every `slide`.
    pub fn processing_time(size: Duration, slide: Duration) -> WindowSpec {
        WindowSpec::SlidingProcessing {
            size: ms(size),
            slide: ms(slide),
        }
    }
}

/// Session windows.
pub struct Session;
impl Session {
    /// Event-time sessions closed by `gap` of inactivity per key.
    pub fn with_gap(gap: Duration) -> WindowSpec {
        WindowSpec::Session { gap: ms(gap) }
    }
}

/// Count windows.
pub struct CountWindow;
impl CountWindow {
    /// Every `n` records of a key form a window.
    pub fn of(n: u64) -> WindowSpec {
        WindowSpec::Count { n: n.max(1) }
    }
}

/// The global window.
pub struct GlobalWindow;
impl GlobalWindow {
    /// One window per key, its running aggregate emitted every `n` records.
    pub fn with_count_trigger(n: u64) -> WindowSpec {
        WindowSpec::Global { every: n.max(1) }
    }
}

/// A user-defined aggregation (Flink's `AggregateFunction`).
pub trait Aggregator<V>: 'static {
    /// The accumulator (checkpointed, so serializable).
    type Acc: Clone + Serialize + DeserializeOwned + 'static;
    /// The result.
    type Out: Data;
    /// A fresh accumulator.
    fn create(&self) -> Self::Acc;
    /// Add one value.
    fn add(&self, acc: &mut Self::Acc, value: V);
    /// Merge two accumulators (session windows merge).
    fn merge(&self, acc: &mut Self::Acc, other: Self::Acc);
    /// The result of an accumulator.
    fn result(&self, acc: &Self::Acc) -> Self::Out;
}

struct Count;
impl<V> Aggregator<V> for Count {
    type Acc = u64;
    type Out = u64;
    fn create(&self) -> u64 {
        0
    }
    fn add(&self, acc: &mut u64, _: V) {
        *acc += 1;
    }
    fn merge(&self, acc: &mut u64, other: u64) {
        *acc += other;
    }
    fn result(&self, acc: &u64) -> u64 {
        *acc
    }
}

struct Reduce<F>(F);
impl<V: Data, F: Fn(V, V) -> V + 'static> Aggregator<V> for Reduce<F> {
    type Acc = Option<V>;
    type Out = V;
    fn create(&self) -> Option<V> {
        None
    }
    fn add(&self, acc: &mut Option<V>, v: V) {
        *acc = Some(match acc.take() {
            Some(a) => (self.0)(a, v),
            None => v,
        });
    }
    fn merge(&self, acc: &mut Option<V>, other: Option<V>) {
        if let Some(o) = other {
            self.add(acc, o);
        }
    }
    fn result(&self, acc: &Option<V>) -> V {
        acc.clone()
            .expect("a fired window holds at least one record")
    }
}

/// What the window operator emits before it is split: results and late records.
#[derive(Clone, Debug, Serialize, Deserialize)]
enum Out<R, L> {
    Res(R),
    Late(L),
}

/// Window results with the late side output.
pub struct WithLate<'s, K: Data, R: Data, V: Data> {
    /// Each window's result (again for every re-firing within the allowed lateness).
    pub results: DataStream<'s, Windowed<K, R>>,
    /// The records too late for any window, as (key, value).
    pub late: DataStream<'s, (K, V)>,
}

/// What the window operator emits.
type WinOut<K, R, V> = Out<Windowed<K, R>, (K, V)>;

/// Open time windows: by (end, start), each key's accumulator.
type TimeWindows<K, A> = BTreeMap<(i64, i64), HashMap<K, TimeWin<A>>>;

/// A keyed stream cut into windows, waiting for its aggregation.
pub struct WindowedStream<'s, K: Data, V: Data> {
    keyed: KeyedStream<'s, K, V>,
    spec: WindowSpec,
    lateness: i64,
}

impl<'s, K: Data + Hash + Eq, V: Data> KeyedStream<'s, K, V> {
    /// Cut the stream into windows.
    pub fn window(self, spec: WindowSpec) -> WindowedStream<'s, K, V> {
        WindowedStream {
            keyed: self,
            spec,
            lateness: 0,
        }
    }
}

#[derive(Serialize, Deserialize)]
struct TimeWin<A> {
    acc: A,
    fired: bool,
}

/// The window operator's state (checkpointed, after its watermark).
#[derive(Serialize, Deserialize)]
#[serde(bound(
    serialize = "K: Serialize, A: Serialize",
    deserialize = "K: DeserializeOwned + Hash + Eq, A: DeserializeOwned"
))]
struct WinState<K, A> {
    windows: TimeWindows<K, A>,
    sessions: HashMap<K, Vec<Sess<A>>>,
    /// Count and global windows: per key, (records in the current window, windows done, acc).
    counts: HashMap<K, (u64, i64, A)>,
}

#[derive(Serialize, Deserialize)]
struct Sess<A> {
    start: i64,
    end: i64,
    acc: A,
    fired: bool,
}

impl<'s, K: Data + Hash + Eq, V: Data> WindowedStream<'s, K, V> {
    /// Keep windows open this long after they fire: later records update and re-fire them.
    pub fn allowed_lateness(mut self, d: Duration) -> Self {
        self.lateness = d.as_millis() as i64;
        self
    }

    /// Records per window.
    pub fn count(self) -> DataStream<'s, Windowed<K, u64>> {
        self.aggregate(Count)
    }

    /// Reduce the values of each window with `f`.
    pub fn reduce<F: Fn(V, V) -> V + 'static>(self, f: F) -> DataStream<'s, Windowed<K, V>> {
        self.aggregate(Reduce(f))
    }

    /// The sum of each window's values.
    pub fn sum(self) -> DataStream<'s, Windowed<K, V>>
    where
        V: std::ops::Add<Output = V>,
    {
        self.reduce(|a, b| a + b)
    }

    /// The smallest value of each window.
    pub fn min(self) -> DataStream<'s, Windowed<K, V>>
    where
        V: Ord,
    {
        self.reduce(|a, b| a.min(b))
    }

    /// The largest value of each window.
    pub fn max(self) -> DataStream<'s, Windowed<K, V>>
    where
        V: Ord,
    {
        self.reduce(|a, b| a.max(b))
    }

    /// Aggregate each window with a user accumulator; late records are dropped (see
    /// [`WindowedStream::aggregate_with_late`]).
    pub fn aggregate<A: Aggregator<V>>(self, agg: A) -> DataStream<'s, Windowed<K, A::Out>> {
        self.aggregate_with_late(agg).results
    }

    /// Aggregate each window, and also return the records that came too late for any window
    /// (the late side output).
    pub fn aggregate_with_late<A: Aggregator<V>>(self, agg: A) -> WithLate<'s, K, A::Out, V> {
        let inner = self.keyed.inner;
        let peers = inner.stream.scope().peers() as u32;
        let spec = self.spec;
        let processing = matches!(
            spec,
            WindowSpec::TumblingProcessing { .. } | WindowSpec::SlidingProcessing { .. }
        );
        let slot = inner.ctx.checkpoints.slot("Window");
        let out = runner::stateful(
            inner.stream.clone(),
            "Window",
            slot,
            inner.upstream.channels,
            WindowOp {
                agg,
                spec,
                lateness: self.lateness,
                processing,
                state: WinState {
                    windows: BTreeMap::new(),
                    sessions: HashMap::new(),
                    counts: HashMap::new(),
                },
                _types: PhantomData,
            },
        );
        let windowed = inner.derive(out, Upstream::own(peers));
        let results = windowed.clone_stream().flat_map(|o| match o {
            Out::Res(r) => Some(r),
            Out::Late(_) => None,
        });
        let late = windowed.flat_map(|o| match o {
            Out::Late(l) => Some(l),
            Out::Res(_) => None,
        });
        WithLate { results, late }
    }
}

/// The window operator: `agg` over the windows of `spec`.
struct WindowOp<K, V, A: Aggregator<V>> {
    agg: A,
    spec: WindowSpec,
    lateness: i64,
    /// Processing-time windows: the clock cuts and fires them.
    processing: bool,
    state: WinState<K, A::Acc>,
    _types: PhantomData<fn(V)>,
}

/// Emit the result of `key`'s window [`start`, `end`), at event time `end - 1`.
fn emit_result<K: Clone, V, A: Aggregator<V>>(
    agg: &A,
    ctx: &mut OpCtx<'_, WinOut<K, A::Out, V>>,
    key: &K,
    start: i64,
    end: i64,
    acc: &A::Acc,
) {
    let w = Windowed {
        key: key.clone(),
        start,
        end,
        value: agg.result(acc),
    };
    ctx.emit(end.saturating_sub(1), Out::Res(w));
}

impl<K, V, A> Operator for WindowOp<K, V, A>
where
    K: Data + Hash + Eq,
    V: Data,
    A: Aggregator<V>,
{
    type In = (K, V);
    type Out = WinOut<K, A::Out, V>;
    type State = WinState<K, A::Acc>;
    const CHECKPOINT_WATERMARK: bool = true;

    fn on_record(&mut self, t: i64, (k, v): (K, V), ctx: &mut OpCtx<'_, Self::Out>) {
        let WindowOp {
            agg,
            spec,
            lateness,
            processing,
            state,
            ..
        } = self;
        let (lateness, processing) = (*lateness, *processing);
        let WinState {
            windows,
            sessions,
            counts,
        } = state;
        // results and late records, in the order they are made
        let wm = ctx.watermark();
        let too_late = |end: i64| wm != i64::MIN && end.saturating_add(lateness) <= wm;
        match *spec {
            WindowSpec::Tumbling { size }
            | WindowSpec::Sliding { size, .. }
            | WindowSpec::TumblingProcessing { size }
            | WindowSpec::SlidingProcessing { size, .. } => {
                let slide = match *spec {
                    WindowSpec::Sliding { slide, .. }
                    | WindowSpec::SlidingProcessing { slide, .. } => slide,
                    _ => size,
                };
                // processing time: the window is the clock's, nothing is late, and the clock
                // fires it (see on_tick)
                let t = if processing { now_ms() } else { t };
                let too_late = |end: i64| !processing && too_late(end);
                let last_start = t.div_euclid(slide).saturating_mul(slide);
                let mut accepted = false;
                let mut start = last_start;
                while start > t.saturating_sub(size) {
                    let end = start.saturating_add(size);
                    if !too_late(end) {
                        accepted = true;
                        let w = windows
                            .entry((end, start))
                            .or_default()
                            .entry(k.clone())
                            .or_insert_with(|| TimeWin {
                                acc: agg.create(),
                                fired: false,
                            });
                        agg.add(&mut w.acc, v.clone());
                        // within the allowed lateness after the watermark passed its end:
                        // (re-)fire at once
                        if !processing && (w.fired || (wm != i64::MIN && end <= wm)) {
                            w.fired = true;
                            emit_result(agg, ctx, &k, start, end, &w.acc);
                        }
                    }
                    if start == i64::MIN {
                        break;
                    }
                    start = start.saturating_sub(slide);
                }
                if !accepted {
                    ctx.emit(t, Out::Late((k, v)));
                }
            }
            WindowSpec::Session { gap } => {
                // merge with every live session of the key it overlaps or touches (as Flink;
                // a late record may still extend one)
                let list = sessions.entry(k.clone()).or_default();
                let mut s = Sess {
                    start: t,
                    end: t.saturating_add(gap),
                    acc: agg.create(),
                    fired: false,
                };
                let mut merged = false;
                let mut i = 0;
                while i < list.len() {
                    if list[i].start <= s.end && s.start <= list[i].end {
                        let o = list.swap_remove(i);
                        s.start = s.start.min(o.start);
                        s.end = s.end.max(o.end);
                        agg.merge(&mut s.acc, o.acc);
                        merged = true;
                    } else {
                        i += 1;
                    }
                }
                if !merged && too_late(s.end) {
                    ctx.emit(t, Out::Late((k, v)));
                    return;
                }
                agg.add(&mut s.acc, v);
                // a merged session fires when the watermark passes its (new) end, at once if
                // it already has
                if wm != i64::MIN && s.end <= wm {
                    s.fired = true;
                    emit_result(agg, ctx, &k, s.start, s.end, &s.acc);
                }
                list.push(s);
            }
            WindowSpec::Count { n } => {
                let c = counts
                    .entry(k.clone())
                    .or_insert_with(|| (0, 0, agg.create()));
                c.0 += 1;
                agg.add(&mut c.2, v);
                if c.0 == n {
                    let start = c.1 * n as i64;
                    emit_result(agg, ctx, &k, start, start + n as i64, &c.2);
                    c.0 = 0;
                    c.1 += 1;
                    c.2 = agg.create();
                }
            }
            WindowSpec::Global { every } => {
                let c = counts
                    .entry(k.clone())
                    .or_insert_with(|| (0, 0, agg.create()));
                c.0 += 1;
                agg.add(&mut c.2, v);
                if c.0 % every == 0 {
                    emit_result(agg, ctx, &k, 0, c.0 as i64, &c.2);
                }
            }
        }
    }

    fn on_watermark(&mut self, wm: i64, ctx: &mut OpCtx<'_, Self::Out>) {
        let WindowOp {
            agg,
            lateness,
            processing,
            state,
            ..
        } = self;
        let lateness = *lateness;
        let WinState {
            windows, sessions, ..
        } = state;
        // fire what the watermark closed, in end order (processing-time windows: only at the
        // end of the input)
        let windows_on_wm = !*processing || wm == i64::MAX;
        for ((end, start), keys) in windows.range_mut(..(wm.saturating_add(1), i64::MIN)) {
            for (k, w) in keys.iter_mut() {
                if windows_on_wm && !w.fired && *end <= wm {
                    w.fired = true;
                    emit_result(agg, ctx, k, *start, *end, &w.acc);
                }
            }
        }
        for (k, list) in sessions.iter_mut() {
            list.sort_by_key(|s| s.start);
            for s in list.iter_mut() {
                if !s.fired && s.end <= wm {
                    s.fired = true;
                    emit_result(agg, ctx, k, s.start, s.end, &s.acc);
                }
            }
        }
        // forget what can no longer change
        if windows_on_wm {
            windows.retain(|(end, _), _| end.saturating_add(lateness) > wm);
        }
        sessions.retain(|_, list| {
            list.retain(|s| s.end.saturating_add(lateness) > wm);
            !list.is_empty()
        });
    }

    /// Processing-time windows fire when the clock passes their end.
    fn on_tick(&mut self, ctx: &mut OpCtx<'_, Self::Out>) -> Option<Duration> {
        if !self.processing {
            return None;
        }
        let now = ctx.now();
        let windows = &mut self.state.windows;
        for ((end, start), keys) in windows.range(..(now.saturating_add(1), i64::MIN)) {
            for (k, w) in keys {
                emit_result(&self.agg, ctx, k, *start, *end, &w.acc);
            }
        }
        windows.retain(|(end, _), _| *end > now);
        windows
            .keys()
            .next()
            .map(|(end, _)| Duration::from_millis(end.saturating_sub(now).max(1) as u64))
    }

    fn snapshot(&self) -> &WinState<K, A::Acc> {
        &self.state
    }

    fn restore(&mut self, state: WinState<K, A::Acc>) {
        self.state = state;
    }
}
