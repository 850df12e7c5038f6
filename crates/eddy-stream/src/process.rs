//! Keyed process functions (Flink's `KeyedProcessFunction`): per-key state of any serde type,
//! event-time and processing-time timers, a main and a side output.
//!
//! An event-time timer fires when the operator's watermark reaches its time; a processing-time
//! timer when the wall clock does (the operator wakes itself for the earliest one). Timers are
//! per key and time (registering the same one twice fires it once); they and the state are in
//! every checkpoint. With a state TTL, a key's state that has not been touched (read or
//! written) for that long is dropped: the function sees a fresh `Default` state again.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::Hash;
use std::marker::PhantomData;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::event::Data;
use crate::operators::{DataStream, KeyedStream, Upstream};
use crate::runner::{self, OpCtx, Operator};

/// What a process function emitted, with its event time: `Ok` main, `Err` side output.
type Emitted<O, X> = Vec<(i64, Result<O, X>)>;

/// Which clock a timer follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeDomain {
    /// The watermark.
    EventTime,
    /// The wall clock.
    ProcessingTime,
}

/// A keyed process function.
pub trait ProcessFunction<K, V>: 'static {
    /// Per-key state (created with `Default` when a key is first seen).
    type State: Serialize + DeserializeOwned + Default + 'static;
    /// The main output.
    type Out: Data;
    /// The side output (`()` when unused).
    type Side: Data;
    /// One record of key `key`.
    fn process(
        &mut self,
        key: &K,
        value: V,
        ctx: &mut Context<'_, Self::State, Self::Out, Self::Side>,
    );
    /// A timer of key `key` registered for `time` fired.
    fn on_timer(
        &mut self,
        _key: &K,
        _time: i64,
        _domain: TimeDomain,
        _ctx: &mut Context<'_, Self::State, Self::Out, Self::Side>,
    ) {
    }
}

/// A timer change asked for by a function call; applied in the order asked.
enum TimerOp {
    Add(TimeDomain, i64),
    Delete(TimeDomain, i64),
}

/// What a process function sees and does for one key.
pub struct Context<'a, S, O, X> {
    state: &'a mut Option<S>,
    /// The state was asked for mutably (with a TTL, that refreshes it, as Flink's
    /// OnCreateAndWrite: reads through [`Context::state_ref`] do not).
    written: bool,
    timestamp: i64,
    watermark: i64,
    now: i64,
    out: &'a mut Emitted<O, X>,
    timers: &'a mut Vec<TimerOp>,
}

impl<S: Default, O, X> Context<'_, S, O, X> {
    /// The key's state, to change (with a TTL, this counts as a write and restarts its
    /// clock).
    pub fn state(&mut self) -> &mut S {
        self.written = true;
        self.state.get_or_insert_with(S::default)
    }
    /// The key's state, to read (a read does not restart a TTL's clock); None if it has none.
    pub fn state_ref(&self) -> Option<&S> {
        self.state.as_ref()
    }
    /// Drop the key's state.
    pub fn clear_state(&mut self) {
        *self.state = None;
    }
    /// The event time of the record (or of the timer) being handled.
    pub fn timestamp(&self) -> i64 {
        self.timestamp
    }
    /// The operator's current watermark.
    pub fn watermark(&self) -> i64 {
        self.watermark
    }
    /// The wall clock, ms since the epoch.
    pub fn now(&self) -> i64 {
        self.now
    }
    /// Emit a record at the current timestamp.
    pub fn emit(&mut self, value: O) {
        self.out.push((self.timestamp, Ok(value)));
    }
    /// Emit a record at event time `t`.
    pub fn emit_at(&mut self, t: i64, value: O) {
        self.out.push((t, Ok(value)));
    }
    /// Emit to the side output.
    pub fn side(&mut self, value: X) {
        self.out.push((self.timestamp, Err(value)));
    }
    /// Call `on_timer` once the watermark reaches `t`.
    pub fn register_event_timer(&mut self, t: i64) {
        self.timers.push(TimerOp::Add(TimeDomain::EventTime, t));
    }
    /// Forget an event-time timer.
    pub fn delete_event_timer(&mut self, t: i64) {
        self.timers.push(TimerOp::Delete(TimeDomain::EventTime, t));
    }
    /// Call `on_timer` once the wall clock reaches `t` (ms since the epoch).
    pub fn register_processing_timer(&mut self, t: i64) {
        self.timers
            .push(TimerOp::Add(TimeDomain::ProcessingTime, t));
    }
    /// Forget a processing-time timer.
    pub fn delete_processing_timer(&mut self, t: i64) {
        self.timers
            .push(TimerOp::Delete(TimeDomain::ProcessingTime, t));
    }
}

/// The operator's checkpointed state (after its watermark).
#[derive(Serialize, Deserialize)]
#[serde(bound(
    serialize = "K: Serialize, S: Serialize",
    deserialize = "K: DeserializeOwned + Hash + Eq, S: DeserializeOwned"
))]
struct ProcState<K, S> {
    /// Per key: its state and when it was last touched (ms).
    keys: HashMap<K, (S, i64)>,
    event_timers: BTreeMap<i64, HashSet<K>>,
    proc_timers: BTreeMap<i64, HashSet<K>>,
}

/// A process function's outputs.
pub struct Processed<'s, O: Data, X: Data> {
    /// What `emit` sent.
    pub main: DataStream<'s, O>,
    /// What `side` sent.
    pub side: DataStream<'s, X>,
}

/// Run `f` for `key` with its state, at operator watermark `watermark`; apply its timer
/// changes.
#[allow(clippy::too_many_arguments)]
fn call<K, S, O, X>(
    st: &mut ProcState<K, S>,
    key: &K,
    timestamp: i64,
    watermark: i64,
    now: i64,
    ttl: Option<i64>,
    out: &mut Emitted<O, X>,
    f: impl FnOnce(&mut Context<'_, S, O, X>),
) where
    K: Clone + Hash + Eq,
    S: Default,
{
    let (mut slot, touched) = match st.keys.remove(key) {
        Some((s, touched)) if ttl.is_none_or(|ttl| now.saturating_sub(touched) < ttl) => {
            (Some(s), touched)
        }
        _ => (None, now),
    };
    let mut timers = Vec::new();
    let mut ctx = Context {
        state: &mut slot,
        written: false,
        timestamp,
        watermark,
        now,
        out,
        timers: &mut timers,
    };
    f(&mut ctx);
    let written = ctx.written;
    if let Some(s) = slot {
        st.keys
            .insert(key.clone(), (s, if written { now } else { touched }));
    }
    for op in timers {
        let (TimerOp::Add(domain, t) | TimerOp::Delete(domain, t)) = op;
        let map = match domain {
            TimeDomain::EventTime => &mut st.event_timers,
            TimeDomain::ProcessingTime => &mut st.proc_timers,
        };
        match op {
            TimerOp::Add(..) => {
                map.entry(t).or_default().insert(key.clone());
            }
            TimerOp::Delete(..) => {
                if let Some(set) = map.get_mut(&t) {
                    set.remove(key);
                    if set.is_empty() {
                        map.remove(&t);
                    }
                }
            }
        }
    }
}

/// Fire the timers of `domain` due at or before `upto`, in time order. A timer registered
/// while firing for a later time (up to `upto`) fires in this pass too; one registered for the
/// time being fired or earlier waits for the next pass, so a timer that re-registers itself
/// cannot spin forever.
#[allow(clippy::too_many_arguments)]
fn fire<K, V, P>(
    st: &mut ProcState<K, P::State>,
    f: &mut P,
    domain: TimeDomain,
    upto: i64,
    watermark: i64,
    now: i64,
    ttl: Option<i64>,
    out: &mut Emitted<P::Out, P::Side>,
) where
    K: Clone + Hash + Eq + Ord,
    P: ProcessFunction<K, V>,
{
    use std::ops::Bound::{Excluded, Included, Unbounded};
    let mut floor = Unbounded;
    loop {
        let timers = match domain {
            TimeDomain::EventTime => &mut st.event_timers,
            TimeDomain::ProcessingTime => &mut st.proc_timers,
        };
        let Some((&t, _)) = timers.range((floor, Included(upto))).next() else {
            break;
        };
        floor = Excluded(t);
        let keys = timers.remove(&t).unwrap_or_default();
        let mut keys: Vec<K> = keys.into_iter().collect();
        keys.sort();
        for k in keys {
            call(st, &k, t, watermark, now, ttl, out, |ctx| {
                f.on_timer(&k, t, domain, ctx)
            });
        }
    }
}

impl<'s, K: Data + Hash + Eq + Ord, V: Data> KeyedStream<'s, K, V> {
    /// Run a keyed process function.
    pub fn process<P: ProcessFunction<K, V>>(self, f: P) -> Processed<'s, P::Out, P::Side> {
        self.process_inner(f, None)
    }

    /// Run a keyed process function whose per-key state expires after `ttl` untouched.
    pub fn process_with_ttl<P: ProcessFunction<K, V>>(
        self,
        f: P,
        ttl: Duration,
    ) -> Processed<'s, P::Out, P::Side> {
        self.process_inner(f, Some(ttl.as_millis() as i64))
    }

    fn process_inner<P: ProcessFunction<K, V>>(
        self,
        f: P,
        ttl: Option<i64>,
    ) -> Processed<'s, P::Out, P::Side> {
        let inner = self.inner;
        let peers = inner.stream.scope().peers() as u32;
        let slot = inner.ctx.checkpoints.slot("Process");
        let out = runner::stateful(
            inner.stream.clone(),
            "Process",
            slot,
            inner.upstream.channels,
            ProcessOp {
                f,
                ttl,
                state: ProcState {
                    keys: HashMap::new(),
                    event_timers: BTreeMap::new(),
                    proc_timers: BTreeMap::new(),
                },
                buf: Vec::new(),
                last_sweep: 0,
                _types: PhantomData,
            },
        );
        let both = inner.derive(out, Upstream::own(peers));
        let main = both
            .clone_stream()
            .flat_map(|r: Result<P::Out, P::Side>| r.ok());
        let side = both.flat_map(|r: Result<P::Out, P::Side>| r.err());
        Processed { main, side }
    }
}

/// The operator running a process function.
struct ProcessOp<K, V, P: ProcessFunction<K, V>> {
    f: P,
    ttl: Option<i64>,
    state: ProcState<K, P::State>,
    /// What the function emitted, until it goes out.
    buf: Emitted<P::Out, P::Side>,
    /// When expired state was last swept out (ms).
    last_sweep: i64,
    _types: PhantomData<fn(V)>,
}

impl<K, V, P> Operator for ProcessOp<K, V, P>
where
    K: Data + Hash + Eq + Ord,
    V: Data,
    P: ProcessFunction<K, V>,
{
    type In = (K, V);
    type Out = Result<P::Out, P::Side>;
    type State = ProcState<K, P::State>;
    const CHECKPOINT_WATERMARK: bool = true;

    fn on_record(&mut self, t: i64, (k, v): (K, V), ctx: &mut OpCtx<'_, Self::Out>) {
        let (watermark, now) = (ctx.watermark(), ctx.now());
        let f = &mut self.f;
        call(
            &mut self.state,
            &k,
            t,
            watermark,
            now,
            self.ttl,
            &mut self.buf,
            |c| f.process(&k, v, c),
        );
        ctx.emit_all(self.buf.drain(..));
    }

    /// Event-time timers fire when the watermark reaches them.
    fn on_watermark(&mut self, wm: i64, ctx: &mut OpCtx<'_, Self::Out>) {
        let now = ctx.now();
        fire::<K, V, P>(
            &mut self.state,
            &mut self.f,
            TimeDomain::EventTime,
            wm,
            wm,
            now,
            self.ttl,
            &mut self.buf,
        );
        ctx.emit_all(self.buf.drain(..));
    }

    /// Processing-time timers fire when the clock reaches them; expired state is swept out
    /// now and then (it is ignored when read in between).
    fn on_tick(&mut self, ctx: &mut OpCtx<'_, Self::Out>) -> Option<Duration> {
        let now = ctx.now();
        fire::<K, V, P>(
            &mut self.state,
            &mut self.f,
            TimeDomain::ProcessingTime,
            now,
            ctx.watermark(),
            now,
            self.ttl,
            &mut self.buf,
        );
        ctx.emit_all(self.buf.drain(..));
        if let Some(ttl) = self.ttl {
            if now - self.last_sweep >= ttl.clamp(1, 1000) {
                self.last_sweep = now;
                self.state
                    .keys
                    .retain(|_, (_, touched)| now.saturating_sub(*touched) < ttl);
            }
        }
        self.state
            .proc_timers
            .first_key_value()
            .map(|(&t, _)| Duration::from_millis(t.saturating_sub(now).max(1) as u64))
    }

    fn snapshot(&self) -> &ProcState<K, P::State> {
        &self.state
    }

    fn restore(&mut self, state: ProcState<K, P::State>) {
        self.state = state;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// With a TTL, writes (`state()`) restart the clock and reads (`state_ref()`) do not.
    #[test]
    fn reads_do_not_refresh_ttl_writes_do() {
        let mut st: ProcState<u32, u64> = ProcState {
            keys: HashMap::new(),
            event_timers: BTreeMap::new(),
            proc_timers: BTreeMap::new(),
        };
        let mut out: Emitted<(), ()> = Vec::new();
        let ttl = Some(150);
        let write = |ctx: &mut Context<'_, u64, (), ()>| *ctx.state() += 1;
        let read = |ctx: &mut Context<'_, u64, (), ()>| assert!(ctx.state_ref().is_some());
        call(&mut st, &1, 0, i64::MIN, 0, ttl, &mut out, write);
        call(&mut st, &1, 0, i64::MIN, 100, ttl, &mut out, read);
        // 200 ms after the write, 100 after the read: expired
        let mut seen = None;
        call(&mut st, &1, 0, i64::MIN, 200, ttl, &mut out, |ctx| {
            seen = Some(ctx.state_ref().copied())
        });
        assert_eq!(seen, Some(None));
        // a write at 100 keeps it until 250
        call(&mut st, &2, 0, i64::MIN, 0, ttl, &mut out, write);
        call(&mut st, &2, 0, i64::MIN, 100, ttl, &mut out, write);
        let mut seen = None;
        call(&mut st, &2, 0, i64::MIN, 200, ttl, &mut out, |ctx| {
            seen = Some(ctx.state_ref().copied())
        });
        assert_eq!(seen, Some(Some(2)));
    }
}
