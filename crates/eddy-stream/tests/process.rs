//! Keyed process functions: state, event-time and processing-time timers, side output, state
//! TTL, and surviving a restore.

use std::sync::Arc;
use std::time::Duration;

use eddy_stream::{
    Context, ProcessFunction, Sink, Source, StreamEnv, TimeDomain, WatermarkStrategy,
};
use parking_lot::Mutex;

/// Counts records per key and second of event time with an event-time timer at the end of
/// each second (a hand-made tumbling window); odd values also go to the side output.
struct PerSecond;
impl ProcessFunction<u32, (i64, u32, u64)> for PerSecond {
    type State = std::collections::BTreeMap<i64, u64>;
    type Out = (u32, i64, u64);
    type Side = u64;
    fn process(
        &mut self,
        key: &u32,
        v: (i64, u32, u64),
        ctx: &mut Context<'_, Self::State, Self::Out, Self::Side>,
    ) {
        let second = v.0.div_euclid(1000) * 1000;
        *ctx.state().entry(second).or_default() += 1;
        ctx.register_event_timer(second + 999);
        if v.2 % 2 == 1 {
            ctx.side(v.2);
        }
        let _ = key;
    }
    fn on_timer(
        &mut self,
        key: &u32,
        time: i64,
        domain: TimeDomain,
        ctx: &mut Context<'_, Self::State, Self::Out, Self::Side>,
    ) {
        assert_eq!(domain, TimeDomain::EventTime);
        assert!(ctx.watermark() >= time);
        let second = time - 999;
        if let Some(n) = ctx.state().remove(&second) {
            ctx.emit((*key, second, n));
        }
    }
}

fn data() -> Vec<(i64, u32, u64)> {
    (0..20_000i64)
        .map(|i| {
            (
                i - (i * 7919 % 40),
                (i * 31 % 7) as u32,
                (i * 13 % 10) as u64,
            )
        })
        .collect()
}

#[test]
fn event_time_timers_fire_in_order_with_the_state_and_side_output() {
    let mut want = std::collections::BTreeMap::new();
    for (t, k, _) in data() {
        *want.entry((k, t.div_euclid(1000) * 1000)).or_insert(0u64) += 1;
    }
    let want_side: u64 = data().iter().filter(|r| r.2 % 2 == 1).map(|r| r.2).sum();
    for workers in [1, 2] {
        let out = Arc::new(Mutex::new(Vec::new()));
        let side = Arc::new(Mutex::new(0u64));
        let (o, s) = (out.clone(), side.clone());
        StreamEnv::workers(workers)
            .execute("process", move |env| {
                let (o, s) = (o.clone(), s.clone());
                let p = env
                    .source(Source::from_vec(data()).with_timestamps(
                        |r| r.0,
                        WatermarkStrategy::BoundedOutOfOrderness(Duration::from_millis(50)),
                    ))
                    .key_by(|r: &(i64, u32, u64)| r.1)
                    .process(PerSecond);
                p.main.sink(Sink::new(move |t, r: (u32, i64, u64)| {
                    assert_eq!(t, r.1 + 999, "emitted at the timer's time");
                    o.lock().push(r)
                }));
                p.side.sink(Sink::new(move |_, v| *s.lock() += v));
            })
            .unwrap();
        let got: std::collections::BTreeMap<(u32, i64), u64> =
            out.lock().iter().map(|(k, s, n)| ((*k, *s), *n)).collect();
        assert_eq!(out.lock().len(), got.len(), "each timer fired once");
        assert_eq!(got, want, "{workers} workers");
        assert_eq!(*side.lock(), want_side);
    }
}

/// On its first record per key, asks for a processing-time timer 30 ms later and counts
/// records until then; with a TTL, a key quiet for longer starts over.
struct Clock;
impl ProcessFunction<u32, u32> for Clock {
    type State = u64;
    type Out = (u32, String, u64);
    type Side = ();
    fn process(&mut self, key: &u32, _v: u32, ctx: &mut Context<'_, u64, Self::Out, ()>) {
        if *ctx.state() == 0 {
            let at = ctx.now() + 30;
            ctx.register_processing_timer(at);
            ctx.emit((*key, "first".into(), 0));
        }
        *ctx.state() += 1;
    }
    fn on_timer(
        &mut self,
        key: &u32,
        time: i64,
        domain: TimeDomain,
        ctx: &mut Context<'_, u64, Self::Out, ()>,
    ) {
        assert_eq!(domain, TimeDomain::ProcessingTime);
        assert!(ctx.now() >= time);
        let n = *ctx.state();
        ctx.emit((*key, "timer".into(), n));
    }
}

fn slow_source() -> Source<u32> {
    // a record every 5 ms for half a second: key 1 for the first 100 ms and the last 50,
    // key 2 in between (longer than the TTL)
    Source::generator(|index, _| {
        (0..100u32).filter(move |_| index == 0).map(|i| {
            std::thread::sleep(Duration::from_millis(5));
            if !(20..90).contains(&i) {
                1
            } else {
                2
            }
        })
    })
}

#[test]
fn processing_time_timers_fire_on_the_wall_clock_and_ttl_expires_state() {
    let out = Arc::new(Mutex::new(Vec::new()));
    let o = out.clone();
    StreamEnv::workers(1)
        .execute("clock", move |env| {
            let o = o.clone();
            env.source(slow_source())
                .key_by(|k: &u32| *k)
                .process_with_ttl(Clock, Duration::from_millis(200))
                .main
                .sink(Sink::new(move |_, r| o.lock().push(r)));
        })
        .unwrap();
    let got = out.lock().clone();
    let firsts = |k: u32| got.iter().filter(|r| r.0 == k && r.1 == "first").count();
    assert_eq!(firsts(2), 1, "{got:?}");
    assert_eq!(
        firsts(1),
        2,
        "key 1's state expired while only key 2 had records: {got:?}"
    );
    let timer = got
        .iter()
        .find(|r| r.0 == 1 && r.1 == "timer")
        .expect("the processing-time timer fired");
    assert!(
        (2..20).contains(&timer.2),
        "it fired about 30 ms in, while key 1 still had records: {got:?}"
    );
}

/// Timer changes are applied in the order asked; a timer that re-registers itself for its own
/// time does not spin; one that registers a later timer still due fires it in the same pass.
struct Timers;
impl ProcessFunction<u32, (u32, i64)> for Timers {
    type State = u64;
    type Out = (u32, i64);
    type Side = ();
    fn process(&mut self, key: &u32, v: (u32, i64), ctx: &mut Context<'_, u64, Self::Out, ()>) {
        let t = v.1;
        match key {
            // registered then deleted: never fires
            0 => {
                ctx.register_event_timer(t + 5);
                ctx.delete_event_timer(t + 5);
            }
            // deleted then registered: fires
            1 => {
                ctx.delete_event_timer(t + 5);
                ctx.register_event_timer(t + 5);
            }
            // re-registers itself for the same time on every firing
            2 => ctx.register_event_timer(t),
            // a chain of three timers one ms apart
            _ => ctx.register_event_timer(t + 1),
        }
    }
    fn on_timer(
        &mut self,
        key: &u32,
        time: i64,
        _domain: TimeDomain,
        ctx: &mut Context<'_, u64, Self::Out, ()>,
    ) {
        ctx.emit((*key, time));
        *ctx.state() += 1;
        match key {
            2 => ctx.register_event_timer(time),
            3 if *ctx.state() < 3 => ctx.register_event_timer(time + 1),
            _ => {}
        }
    }
}

#[test]
fn timer_changes_apply_in_order_and_self_registering_timers_do_not_spin() {
    let out = Arc::new(Mutex::new(Vec::new()));
    let o = out.clone();
    StreamEnv::workers(1)
        .execute("timers", move |env| {
            let o = o.clone();
            // key 0..3 at 100, then a record at 1000 moves the watermark past them
            let recs: Vec<(u32, i64)> = vec![(0, 100), (1, 100), (2, 100), (3, 100), (9, 1000)];
            env.source(Source::from_vec(recs).with_timestamps(
                |r| r.1,
                WatermarkStrategy::BoundedOutOfOrderness(Duration::ZERO),
            ))
            .key_by(|r: &(u32, i64)| r.0)
            .process(Timers)
            .main
            .sink(Sink::new(move |_, r| o.lock().push(r)));
        })
        .unwrap();
    let got = out.lock().clone();
    let of = |k: u32| {
        got.iter()
            .filter(|r| r.0 == k)
            .map(|r| r.1)
            .collect::<Vec<_>>()
    };
    assert_eq!(of(0), Vec::<i64>::new(), "{got:?}");
    assert_eq!(of(1), vec![105], "{got:?}");
    assert!(
        !of(2).is_empty() && of(2).iter().all(|&t| t == 100),
        "{got:?}"
    );
    assert!(
        of(2).len() < 10,
        "fires once per watermark advance: {got:?}"
    );
    assert_eq!(of(3), vec![101, 102, 103], "{got:?}");
}
