//! Joins of two streams by key: the window join (pairs sharing a key and a window) and the
//! interval join (pairs whose times are within bounds of each other), as Flink's.

use std::hash::Hash;

use serde::{Deserialize, Serialize};

use crate::event::{Data, Windowed};
use crate::operators::{DataStream, KeyedStream};
use crate::process::{Context, ProcessFunction, TimeDomain};
use crate::window::{Aggregator, WindowSpec};

/// One of two things.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Either<A, B> {
    /// From the first stream.
    Left(A),
    /// From the second stream.
    Right(B),
}

/// Two streams about to be joined on a key: `a.join(b, |x| x.id, |y| y.id)`.
pub struct Join<'s, A: Data, B: Data, K> {
    left: DataStream<'s, A>,
    right: DataStream<'s, B>,
    key_a: Box<dyn Fn(&A) -> K>,
    key_b: Box<dyn Fn(&B) -> K>,
}

/// A join cut into windows, waiting for the function that makes one result of a pair.
pub struct WindowJoin<'s, A: Data, B: Data, K> {
    join: Join<'s, A, B, K>,
    spec: WindowSpec,
}

impl<'s, A: Data> DataStream<'s, A> {
    /// Join with `other` where `key_a` of a record here equals `key_b` of one there.
    pub fn join<B: Data, K, FA, FB>(
        self,
        other: DataStream<'s, B>,
        key_a: FA,
        key_b: FB,
    ) -> Join<'s, A, B, K>
    where
        FA: Fn(&A) -> K + 'static,
        FB: Fn(&B) -> K + 'static,
    {
        Join {
            left: self,
            right: other,
            key_a: Box::new(key_a),
            key_b: Box::new(key_b),
        }
    }
}

impl<'s, A: Data, B: Data, K: Data + Hash + Eq> Join<'s, A, B, K> {
    /// Pair the records that share a key and a window.
    pub fn window(self, spec: WindowSpec) -> WindowJoin<'s, A, B, K> {
        WindowJoin { join: self, spec }
    }
}

/// Collects both sides of a window.
struct BothSides;
impl<A: Data, B: Data> Aggregator<Either<A, B>> for BothSides {
    type Acc = (Vec<A>, Vec<B>);
    type Out = (Vec<A>, Vec<B>);
    fn create(&self) -> Self::Acc {
        (Vec::new(), Vec::new())
    }
    fn add(&self, acc: &mut Self::Acc, v: Either<A, B>) {
        match v {
            Either::Left(a) => acc.0.push(a),
            Either::Right(b) => acc.1.push(b),
        }
    }
    fn merge(&self, acc: &mut Self::Acc, other: Self::Acc) {
        acc.0.extend(other.0);
        acc.1.extend(other.1);
    }
    fn result(&self, acc: &Self::Acc) -> Self::Out {
        acc.clone()
    }
}

impl<'s, A: Data, B: Data, K: Data + Hash + Eq> WindowJoin<'s, A, B, K> {
    /// One result per pair (a, b) with the same key in the same window, at the window's end
    /// (event time `end - 1`). A window fires once, so a window with records on one side only
    /// yields nothing.
    pub fn apply<O: Data, F: Fn(&A, &B) -> O + 'static>(self, f: F) -> DataStream<'s, O> {
        let Join {
            left,
            right,
            key_a,
            key_b,
        } = self.join;
        let l = left.map(|a| Either::<A, B>::Left(a));
        let r = right.map(|b| Either::<A, B>::Right(b));
        l.union(r)
            .key_by(move |e: &Either<A, B>| match e {
                Either::Left(a) => key_a(a),
                Either::Right(b) => key_b(b),
            })
            .window(self.spec)
            .aggregate(BothSides)
            .flat_map(move |w: Windowed<K, (Vec<A>, Vec<B>)>| {
                let (xs, ys) = w.value;
                let mut out = Vec::with_capacity(xs.len() * ys.len());
                for a in &xs {
                    for b in &ys {
                        out.push(f(a, b));
                    }
                }
                out
            })
    }
}

/// Two keyed streams about to be joined by time: `a.interval_join(b).between(-2000, 1000)`.
pub struct IntervalJoin<'s, K: Data, A: Data, B: Data> {
    left: KeyedStream<'s, K, A>,
    right: KeyedStream<'s, K, B>,
    lower: i64,
    upper: i64,
}

impl<'s, K: Data + Hash + Eq + Ord, A: Data> KeyedStream<'s, K, A> {
    /// Join with `other` (keyed the same way) on time: see [`IntervalJoin::between`].
    pub fn interval_join<B: Data>(self, other: KeyedStream<'s, K, B>) -> IntervalJoin<'s, K, A, B> {
        IntervalJoin {
            left: self,
            right: other,
            lower: 0,
            upper: 0,
        }
    }
}

/// The interval join's per-key state: each side's records still able to match.
#[derive(Serialize, Deserialize)]
#[serde(bound(
    serialize = "A: Serialize, B: Serialize",
    deserialize = "A: serde::de::DeserializeOwned, B: serde::de::DeserializeOwned"
))]
struct Buffered<A, B> {
    left: Vec<(i64, A)>,
    right: Vec<(i64, B)>,
}

impl<A, B> Default for Buffered<A, B> {
    fn default() -> Self {
        Buffered {
            left: Vec::new(),
            right: Vec::new(),
        }
    }
}

struct IntervalFn<A, B, F> {
    lower: i64,
    upper: i64,
    f: F,
    _types: std::marker::PhantomData<(A, B)>,
}

impl<K, A, B, O, F> ProcessFunction<K, Either<A, B>> for IntervalFn<A, B, F>
where
    K: 'static,
    A: Data,
    B: Data,
    O: Data,
    F: Fn(&A, &B) -> O + 'static,
{
    type State = Buffered<A, B>;
    type Out = O;
    type Side = Either<A, B>;

    fn process(
        &mut self,
        _key: &K,
        v: Either<A, B>,
        ctx: &mut Context<'_, Self::State, O, Either<A, B>>,
    ) {
        let t = ctx.timestamp();
        if t <= ctx.watermark() {
            // every record it could pair with may be gone already: late
            ctx.side(v);
            return;
        }
        let (lower, upper) = (self.lower, self.upper);
        let mut out = Vec::new();
        match v {
            Either::Left(a) => {
                for (tb, b) in &ctx.state().right {
                    if t.saturating_add(lower) <= *tb && *tb <= t.saturating_add(upper) {
                        out.push(((*tb).max(t), (self.f)(&a, b)));
                    }
                }
                ctx.state().left.push((t, a));
                // once the watermark passes t + upper, no right record can pair with it
                ctx.register_event_timer(t.saturating_add(upper));
            }
            Either::Right(b) => {
                for (ta, a) in &ctx.state().left {
                    if ta.saturating_add(lower) <= t && t <= ta.saturating_add(upper) {
                        out.push(((*ta).max(t), (self.f)(a, &b)));
                    }
                }
                ctx.state().right.push((t, b));
                ctx.register_event_timer(t.saturating_sub(lower));
            }
        }
        for (at, o) in out {
            ctx.emit_at(at, o);
        }
    }

    fn on_timer(
        &mut self,
        _key: &K,
        time: i64,
        _domain: TimeDomain,
        ctx: &mut Context<'_, Self::State, O, Either<A, B>>,
    ) {
        let (lower, upper) = (self.lower, self.upper);
        let st = ctx.state();
        st.left.retain(|(ta, _)| ta.saturating_add(upper) > time);
        st.right.retain(|(tb, _)| tb.saturating_sub(lower) > time);
        if st.left.is_empty() && st.right.is_empty() {
            ctx.clear_state();
        }
    }
}

/// An interval join's outputs.
pub struct Joined<'s, O: Data, A: Data, B: Data> {
    /// One result per matching pair, at the later of the two times.
    pub results: DataStream<'s, O>,
    /// Records that came after the watermark had passed them (they may have missed pairs).
    pub late: DataStream<'s, Either<A, B>>,
}

impl<'s, K: Data + Hash + Eq + Ord, A: Data, B: Data> IntervalJoin<'s, K, A, B> {
    /// Pair `a` and `b` when `a.time + lower <= b.time <= a.time + upper` (milliseconds;
    /// `lower` may be negative).
    pub fn between(mut self, lower: i64, upper: i64) -> Self {
        self.lower = lower.min(upper);
        self.upper = upper.max(lower);
        self
    }

    /// One result per pair.
    pub fn apply<O: Data, F: Fn(&A, &B) -> O + 'static>(self, f: F) -> Joined<'s, O, A, B> {
        let l = self
            .left
            .into_stream()
            .map(|(k, a)| (k, Either::<A, B>::Left(a)));
        let r = self
            .right
            .into_stream()
            .map(|(k, b)| (k, Either::<A, B>::Right(b)));
        // both sides are partitioned by the same key hash: their union is keyed too
        let keyed = KeyedStream { inner: l.union(r) };
        let p = keyed.process(IntervalFn {
            lower: self.lower,
            upper: self.upper,
            f,
            _types: std::marker::PhantomData,
        });
        Joined {
            results: p.main,
            late: p.side,
        }
    }
}
