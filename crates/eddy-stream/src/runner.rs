//! The operator runner: what every operator that reads watermarks has in common, done once.
//!
//! An [`Operator`] says what it does with one record (`on_record`, the only method it must
//! write), with its watermark when it advances (`on_watermark`), on the wall clock
//! (`on_tick`), and what its checkpoint holds (`snapshot`/`restore`). The runner does the rest:
//!
//! - it merges the in-band watermarks of the operator's upstream channels ([`Watermarks`]: the
//!   minimum over the channels once each has reported, idle ones left out) and passes the
//!   merged watermark downstream after `on_watermark` has run, so whatever the operator emits
//!   for a watermark goes out before it; an idle merged watermark is passed on without calling
//!   `on_watermark`;
//! - [`stateful`] puts the operator on the epoch protocol (`checkpoint.rs`): it restores
//!   the operator (and, for operators that keep it, the merged watermark) when the job is
//!   built, holds a capability for the epoch it is on, applies that epoch's records only
//!   (later ones wait), saves a snapshot when its input frontier passes the epoch, and calls
//!   `on_tick` before and after each activation's input, waking the operator when it asks;
//! - [`stateless`] runs an operator with no state outside the epoch protocol (`key_by`, whose
//!   records go straight on to the exchange).
//!
//! Operators are generic parameters of the runner, so the per-record path is a direct call:
//! no boxing, and no allocation beyond the output buffer every activation reuses.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize, Serializer};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::generic::Operator as _;
use timely::dataflow::operators::Capability;
use timely::dataflow::StreamVec;

use crate::checkpoint::{Slot, FINAL};
use crate::event::{now_ms, Data, Ev, IDLE};

/// Tracks the watermarks of an operator's upstream channels; the operator's watermark is
/// their minimum, leaving out idle channels, once every channel has reported; it never goes
/// back. When every channel is idle, so is the operator.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Watermarks {
    latest: BTreeMap<u32, i64>,
    channels: usize,
    current: i64,
    idle: bool,
}

impl Watermarks {
    /// For `channels` distinct upstream channels.
    pub(crate) fn new(channels: usize) -> Self {
        Watermarks {
            latest: Default::default(),
            channels: channels.max(1),
            current: i64::MIN,
            idle: false,
        }
    }

    /// Record a watermark (or [`IDLE`]) from channel `from`; returns what to tell downstream:
    /// the new watermark when it advanced, `IDLE` when every channel went idle, and the
    /// current watermark again when a channel comes back from idleness.
    pub(crate) fn update(&mut self, from: u32, t: i64) -> Option<i64> {
        self.latest.insert(from, t);
        if self.latest.len() < self.channels {
            return None;
        }
        match self.latest.values().copied().filter(|&w| w != IDLE).min() {
            None => (!self.idle).then(|| {
                self.idle = true;
                IDLE
            }),
            Some(min) => {
                let was_idle = std::mem::replace(&mut self.idle, false);
                if min > self.current {
                    self.current = min;
                    Some(min)
                } else {
                    was_idle.then_some(self.current)
                }
            }
        }
    }

    pub(crate) fn current(&self) -> i64 {
        self.current
    }
}

/// An operator the runner drives (see the module docs).
pub(crate) trait Operator: 'static {
    /// What it reads.
    type In: Data;
    /// What it emits.
    type Out: Data;
    /// What its checkpoint holds.
    type State: Serialize + DeserializeOwned;
    /// Whether the merged watermark is kept in the checkpoint too (before the state), for
    /// operators whose state it has shaped (windows, timers). An operator that does not keep
    /// it waits, after a restore, for every channel to report again (sources announce their
    /// restored watermark once more).
    const CHECKPOINT_WATERMARK: bool = false;
    /// One record with its event time.
    fn on_record(&mut self, t: i64, rec: Self::In, ctx: &mut OpCtx<'_, Self::Out>);
    /// The merged watermark advanced to `wm` (never [`IDLE`]); the runner passes it on after
    /// this returns.
    fn on_watermark(&mut self, _wm: i64, _ctx: &mut OpCtx<'_, Self::Out>) {}
    /// Called before and after each activation's input while the operator is on an epoch:
    /// returns how soon it wants to run again (processing-time timers and windows).
    fn on_tick(&mut self, _ctx: &mut OpCtx<'_, Self::Out>) -> Option<Duration> {
        None
    }
    /// The state to save.
    fn snapshot(&self) -> &Self::State;
    /// Resume with a saved state (when the job is built, before any record).
    fn restore(&mut self, state: Self::State);
}

/// What an operator sees while it handles a batch: where its output goes, its merged
/// watermark, and the wall clock.
pub(crate) struct OpCtx<'a, O> {
    out: &'a mut Vec<Ev<O>>,
    watermark: i64,
    now: Option<i64>,
}

impl<O> OpCtx<'_, O> {
    /// Emit a record at event time `t`.
    #[inline]
    pub(crate) fn emit(&mut self, t: i64, rec: O) {
        self.out.push(Ev::Rec(t, rec));
    }

    /// Emit records with their event times.
    #[inline]
    pub(crate) fn emit_all(&mut self, recs: impl IntoIterator<Item = (i64, O)>) {
        self.out
            .extend(recs.into_iter().map(|(t, r)| Ev::Rec(t, r)));
    }

    /// The operator's merged watermark (`i64::MIN` until every channel has reported).
    pub(crate) fn watermark(&self) -> i64 {
        self.watermark
    }

    /// The wall clock (ms), read once per batch (or tick) on first use.
    pub(crate) fn now(&mut self) -> i64 {
        *self.now.get_or_insert_with(now_ms)
    }
}

/// Which downstream workers an operator's watermark is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Forward {
    /// Its own worker (the operator's output stays on the worker).
    Own,
    /// Every worker (an exchange follows).
    Everyone,
}

/// An operator with its merged watermark.
struct Runner<Op> {
    op: Op,
    wms: Watermarks,
    /// This worker's index: the channel its watermarks come from downstream.
    index: u32,
    /// The workers its watermarks are addressed to.
    to: std::ops::Range<u32>,
}

impl<Op: Operator> Runner<Op> {
    fn new(op: Op, channels: usize, forward: Forward, index: usize, peers: usize) -> Self {
        let index = index as u32;
        let to = match forward {
            Forward::Own => index..index + 1,
            Forward::Everyone => 0..peers as u32,
        };
        Runner {
            op,
            wms: Watermarks::new(channels),
            index,
            to,
        }
    }

    /// Resume from `slot`'s checkpoint, if there is one (a checkpoint that does not fit fails
    /// the job: this runs while it is built, where a panic becomes its error).
    fn restore(&mut self, slot: &Slot) {
        let restored = if Op::CHECKPOINT_WATERMARK {
            slot.restore::<(Watermarks, Op::State)>()
                .map(|s| s.map(|(w, s)| (Some(w), s)))
        } else {
            slot.restore::<Op::State>().map(|s| s.map(|s| (None, s)))
        };
        match restored {
            Ok(Some((wms, state))) => {
                if let Some(wms) = wms {
                    self.wms = wms;
                }
                self.op.restore(state);
            }
            Ok(None) => {}
            Err(e) => panic!("{e}"),
        }
    }

    /// Hand a batch to the operator, merging the watermarks in it.
    #[inline]
    fn batch(&mut self, data: &mut Vec<Ev<Op::In>>, out: &mut Vec<Ev<Op::Out>>) {
        let mut ctx = OpCtx {
            out,
            watermark: self.wms.current(),
            now: None,
        };
        for ev in data.drain(..) {
            match ev {
                Ev::Rec(t, d) => self.op.on_record(t, d, &mut ctx),
                Ev::Wm { from, t, .. } => {
                    let Some(wm) = self.wms.update(from, t) else {
                        continue;
                    };
                    ctx.watermark = self.wms.current();
                    if wm != IDLE {
                        self.op.on_watermark(wm, &mut ctx);
                    }
                    for to in self.to.clone() {
                        ctx.out.push(Ev::Wm {
                            from: self.index,
                            to,
                            t: wm,
                        });
                    }
                }
            }
        }
    }

    fn tick(&mut self, out: &mut Vec<Ev<Op::Out>>) -> Option<Duration> {
        let mut ctx = OpCtx {
            out,
            watermark: self.wms.current(),
            now: None,
        };
        self.op.on_tick(&mut ctx)
    }
}

/// What a checkpoint holds: the operator's snapshot, after the merged watermark if the
/// operator keeps it.
impl<Op: Operator> Serialize for Runner<Op> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if Op::CHECKPOINT_WATERMARK {
            (&self.wms, self.op.snapshot()).serialize(s)
        } else {
            self.op.snapshot().serialize(s)
        }
    }
}

/// Run `op` on the epoch protocol, its watermark merged over `channels` upstream channels and
/// passed to its own worker; its state saved in `slot` (and restored from it now).
pub(crate) fn stateful<'s, Op: Operator>(
    stream: StreamVec<'s, u64, Ev<Op::In>>,
    name: &str,
    slot: Slot,
    channels: usize,
    op: Op,
) -> StreamVec<'s, u64, Ev<Op::Out>> {
    let scope = stream.scope();
    let mut runner = Runner::new(op, channels, Forward::Own, scope.index(), scope.peers());
    runner.restore(&slot);
    epochs(
        stream,
        name,
        slot,
        runner,
        |r: &mut Runner<Op>, _epoch, data, out| r.batch(data, out),
        |r: &mut Runner<Op>, _epoch, out| r.tick(out),
    )
}

/// Run `op`, which keeps no state, on every record as it comes (no epochs, no ticks), its
/// watermark merged over `channels` upstream channels and addressed as `forward` says.
pub(crate) fn stateless<'s, Op: Operator>(
    stream: StreamVec<'s, u64, Ev<Op::In>>,
    name: &str,
    channels: usize,
    forward: Forward,
    op: Op,
) -> StreamVec<'s, u64, Ev<Op::Out>> {
    let scope = stream.scope();
    let mut runner = Runner::new(op, channels, forward, scope.index(), scope.peers());
    stream.unary::<CapacityContainerBuilder<Vec<Ev<Op::Out>>>, _, _, _>(
        Pipeline,
        name,
        move |_, _| {
            let mut out = Vec::new();
            move |input, output| {
                input.for_each(|cap, data| {
                    runner.batch(data, &mut out);
                    if !out.is_empty() {
                        output.session(&cap).give_iterator(out.drain(..));
                    }
                });
            }
        },
    )
}

/// The epoch protocol under [`stateful`] (and under the exactly-once sink, which works on
/// whole batches of an epoch): `logic(state, epoch, records, output)` sees the records of one
/// epoch at a time, in epoch order, and the state is saved when each epoch ends;
/// `tick(state, epoch, output)` runs before and after each activation's input while the
/// operator is on an epoch and returns how soon it wants to run again. A failure to save
/// fails the job (a panic the engine reports).
pub(crate) fn epochs<'s, D, O, S, F, T>(
    stream: StreamVec<'s, u64, Ev<D>>,
    name: &str,
    slot: Slot,
    state: S,
    mut logic: F,
    mut tick: T,
) -> StreamVec<'s, u64, Ev<O>>
where
    D: Data,
    O: Data,
    S: Serialize + 'static,
    F: FnMut(&mut S, u64, &mut Vec<Ev<D>>, &mut Vec<Ev<O>>) + 'static,
    T: FnMut(&mut S, u64, &mut Vec<Ev<O>>) -> Option<Duration> + 'static,
{
    let op_name = name.to_owned();
    let scope = stream.scope();
    stream.unary_frontier::<CapacityContainerBuilder<Vec<Ev<O>>>, _, _, _>(
        Pipeline,
        name,
        move |cap, info| {
            let activator = scope.activator_for(info.address.clone());
            let mut state = state;
            let start = slot.start_epoch();
            let mut held: Option<Capability<u64>> = start.map(|e| cap.delayed(&e));
            let mut cur = start.unwrap_or(FINAL);
            let mut stash: BTreeMap<u64, Vec<Vec<Ev<D>>>> = BTreeMap::new();
            let mut out: Vec<Ev<O>> = Vec::new();
            let mut armed: Option<Instant> = None;
            move |(input, frontier), output| {
                // timers due by now fire before the records that arrived after them
                if let Some(h) = held.as_ref() {
                    let after = tick(&mut state, cur, &mut out);
                    arm(&activator, &mut armed, after);
                    if !out.is_empty() {
                        output.session(h).give_iterator(out.drain(..));
                    }
                }
                input.for_each(|c, data| {
                    let Some(&t) = c.least() else { return };
                    if t == cur {
                        logic(&mut state, t, data, &mut out);
                        if !out.is_empty() {
                            output.session(&c).give_iterator(out.drain(..));
                        }
                    } else {
                        stash.entry(t).or_default().push(std::mem::take(data));
                    }
                });
                while held.is_some() && !frontier.less_equal(&cur) {
                    if let Err(e) = slot.save(cur, &state) {
                        panic!("{op_name}: {e}");
                    }
                    let next = match (
                        frontier.frontier().first().copied(),
                        stash.keys().next().copied(),
                    ) {
                        (Some(f), Some(s)) => Some(f.min(s)),
                        (f, s) => f.or(s),
                    };
                    match next {
                        None => held = None,
                        Some(n) => {
                            cur = n;
                            let h = held.as_mut().expect("checked above");
                            h.downgrade(&n);
                            for mut batch in stash.remove(&n).unwrap_or_default() {
                                logic(&mut state, n, &mut batch, &mut out);
                            }
                            if !out.is_empty() {
                                output.session(&*h).give_iterator(out.drain(..));
                            }
                        }
                    }
                }
                // and again after the records (and stashed ones), for what they registered
                if let Some(h) = held.as_ref() {
                    let after = tick(&mut state, cur, &mut out);
                    arm(&activator, &mut armed, after);
                    if !out.is_empty() {
                        output.session(h).give_iterator(out.drain(..));
                    }
                }
            }
        },
    )
}

/// Ask to be activated `after` from now unless an activation at or before then is pending
/// (timely keeps every request, so re-asking on each activation would pile them up).
fn arm(
    activator: &timely::scheduling::Activator,
    armed: &mut Option<Instant>,
    after: Option<Duration>,
) {
    let Some(after) = after else { return };
    let now = Instant::now();
    let at = now + after;
    if armed.is_none_or(|pending| pending <= now || at < pending) {
        *armed = Some(at);
        activator.activate_after(after);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_minimum_of_active_channels_once_all_reported() {
        let mut w = Watermarks::new(2);
        assert_eq!(w.update(0, 10), None, "channel 1 has not reported");
        assert_eq!(w.update(1, 5), Some(5));
        assert_eq!(w.update(1, 20), Some(10));
        assert_eq!(w.update(0, 8), None, "never goes back");
        assert_eq!(
            w.update(0, IDLE),
            Some(20),
            "an idle channel stops holding back"
        );
        assert_eq!(w.update(1, IDLE), Some(IDLE), "all idle");
        assert_eq!(w.update(1, IDLE), None);
        assert_eq!(
            w.update(0, 15),
            Some(20),
            "back from idleness: the current watermark again"
        );
        assert_eq!(w.current(), 20);
    }

    /// Counts its records; keeps its watermark in its checkpoint when `KEEP`.
    struct Counter<const KEEP: bool>(Totals);

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Totals {
        records: u64,
        name: String,
    }

    impl<const KEEP: bool> Operator for Counter<KEEP> {
        type In = u32;
        type Out = u64;
        type State = Totals;
        const CHECKPOINT_WATERMARK: bool = KEEP;
        fn on_record(&mut self, t: i64, _: u32, ctx: &mut OpCtx<'_, u64>) {
            self.0.records += 1;
            ctx.emit(t, self.0.records);
        }
        fn on_watermark(&mut self, wm: i64, ctx: &mut OpCtx<'_, u64>) {
            ctx.emit(wm, u64::MAX);
        }
        fn snapshot(&self) -> &Totals {
            &self.0
        }
        fn restore(&mut self, state: Totals) {
            self.0 = state;
        }
    }

    fn counter<const KEEP: bool>(forward: Forward) -> Runner<Counter<KEEP>> {
        let totals = Totals {
            records: 0,
            name: "c".into(),
        };
        Runner::new(Counter(totals), 2, forward, 1, 3)
    }

    /// A watermark from upstream channel `from`.
    fn up<D>(from: u32, t: i64) -> Ev<D> {
        Ev::Wm { from, to: 1, t }
    }

    #[test]
    fn records_pass_watermarks_are_merged_and_forwarded_after_the_operator() {
        let mut r = counter::<false>(Forward::Own);
        let mut out = Vec::new();
        let mut batch = vec![
            Ev::Rec(5, 0),
            up(0, 4),
            Ev::Rec(6, 0),
            up(1, 3),
            up(0, IDLE),
            up(1, IDLE),
        ];
        r.batch(&mut batch, &mut out);
        assert!(batch.is_empty());
        let wm = |t| Ev::Wm { from: 1, to: 1, t };
        assert_eq!(
            out,
            vec![
                Ev::Rec(5, 1),
                Ev::Rec(6, 2),
                Ev::Rec(3, u64::MAX),
                wm(3),
                wm(IDLE),
            ],
            "an advance reaches the operator before it goes on; an idle watermark only goes on"
        );
        let mut r = counter::<false>(Forward::Everyone);
        let mut out = Vec::new();
        r.batch(&mut vec![up(0, 7), up(1, 8)], &mut out);
        let to = |to| Ev::Wm { from: 1, to, t: 7 };
        assert_eq!(out, vec![Ev::Rec(7, u64::MAX), to(0), to(1), to(2)]);
    }

    /// A checkpoint is the operator's state, after the merged watermark when the operator
    /// keeps it: byte for byte what a state struct with the watermarks as first field was.
    #[test]
    fn the_checkpoint_layout_is_watermarks_then_state() {
        #[derive(Serialize)]
        struct WithWatermarks<'a> {
            wms: &'a Watermarks,
            records: u64,
            name: &'a str,
        }
        let mut kept = counter::<true>(Forward::Own);
        kept.batch(&mut vec![Ev::Rec(1, 0), up(0, 9)], &mut Vec::new());
        let bytes = bincode::serialize(&kept).unwrap();
        let expected = WithWatermarks {
            wms: &kept.wms,
            records: 1,
            name: "c",
        };
        assert_eq!(bytes, bincode::serialize(&expected).unwrap());
        let (wms, totals): (Watermarks, Totals) = bincode::deserialize(&bytes).unwrap();
        assert_eq!(wms.latest, kept.wms.latest);
        assert_eq!(totals, kept.op.0);

        let mut plain = counter::<false>(Forward::Own);
        plain.batch(&mut vec![Ev::Rec(1, 0)], &mut Vec::new());
        assert_eq!(
            bincode::serialize(&plain).unwrap(),
            bincode::serialize(&plain.op.0).unwrap()
        );
    }

    /// Save a runner's checkpoint for epoch 0 under `root/job`, complete it, and resume a new
    /// runner from it.
    fn save_and_resume<const KEEP: bool>(
        root: &std::path::Path,
        job: &str,
    ) -> Runner<Counter<KEEP>> {
        use crate::checkpoint::Checkpoints;
        use std::rc::Rc;
        let open = || Rc::new(Checkpoints::open(root, job, 0, 1, Duration::from_secs(1)).unwrap());
        let cp = open();
        let mut r = counter::<KEEP>(Forward::Own);
        r.batch(
            &mut vec![Ev::Rec(1, 0), up(0, 5), up(1, 6)],
            &mut Vec::new(),
        );
        cp.slot("Counter").save(0, &r).unwrap();
        cp.mark_complete(0).unwrap();
        let mut back = counter::<KEEP>(Forward::Own);
        back.restore(&open().slot("Counter"));
        back
    }

    #[test]
    fn a_restore_brings_back_the_state_and_the_watermark_if_kept() {
        let root = tempfile::tempdir().unwrap();
        let kept = save_and_resume::<true>(root.path(), "kept");
        assert_eq!(kept.op.0.records, 1);
        assert_eq!(kept.wms.current(), 5);
        let plain = save_and_resume::<false>(root.path(), "plain");
        assert_eq!(plain.op.0.records, 1);
        assert_eq!(
            plain.wms.current(),
            i64::MIN,
            "waits for its channels to report again"
        );
    }
}
