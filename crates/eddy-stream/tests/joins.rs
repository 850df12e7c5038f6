//! Window join and interval join against a direct computation, on 1 and 2 workers; and
//! processing-time windows.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use eddy_stream::{Sink, Source, StreamEnv, Tumbling, WatermarkStrategy};
use parking_lot::Mutex;

/// (time, key, id): times grow 3 ms per record, out of order by up to 40 ms.
fn side(n: i64, salt: i64) -> Vec<(i64, u32, i64)> {
    (0..n)
        .map(|i| {
            let h = (i * 7919 + salt * 104_729) % 1000;
            (i * 3 - h % 40, (h % 11) as u32, i)
        })
        .collect()
}

fn source(v: Vec<(i64, u32, i64)>) -> Source<(i64, u32, i64)> {
    Source::from_vec(v).with_timestamps(
        |r| r.0,
        WatermarkStrategy::BoundedOutOfOrderness(Duration::from_millis(50)),
    )
}

#[test]
fn window_join_pairs_records_sharing_key_and_window() {
    let (a, b) = (side(3000, 1), side(2000, 2));
    let mut want = BTreeSet::new();
    for x in &a {
        for y in &b {
            if x.1 == y.1 && x.0.div_euclid(500) == y.0.div_euclid(500) {
                want.insert((x.2, y.2));
            }
        }
    }
    assert!(want.len() > 1000);
    for workers in [1, 2] {
        let out = Arc::new(Mutex::new(Vec::new()));
        let o = out.clone();
        let (a2, b2) = (a.clone(), b.clone());
        StreamEnv::workers(workers)
            .execute("wjoin", move |env| {
                let o = o.clone();
                let left = env.source(source(a2.clone()));
                let right = env.source(source(b2.clone()));
                left.join(right, |x: &(i64, u32, i64)| x.1, |y: &(i64, u32, i64)| y.1)
                    .window(Tumbling::event_time(Duration::from_millis(500)))
                    .apply(|x, y| (x.2, y.2))
                    .sink(Sink::new(move |_, p| o.lock().push(p)));
            })
            .unwrap();
        let got: Vec<(i64, i64)> = out.lock().clone();
        let set: BTreeSet<(i64, i64)> = got.iter().copied().collect();
        assert_eq!(got.len(), set.len(), "no pair twice");
        assert_eq!(set, want, "{workers} workers");
    }
}

#[test]
fn interval_join_pairs_records_within_the_bounds() {
    let (a, b) = (side(3000, 3), side(3000, 4));
    let (lower, upper) = (-20i64, 30i64);
    let mut want = BTreeSet::new();
    for x in &a {
        for y in &b {
            if x.1 == y.1 && x.0 + lower <= y.0 && y.0 <= x.0 + upper {
                want.insert((x.2, y.2, x.0.max(y.0)));
            }
        }
    }
    assert!(want.len() > 500);
    for workers in [1, 2] {
        let out = Arc::new(Mutex::new(Vec::new()));
        let late = Arc::new(Mutex::new(0usize));
        let (o, l) = (out.clone(), late.clone());
        let (a2, b2) = (a.clone(), b.clone());
        StreamEnv::workers(workers)
            .execute("ijoin", move |env| {
                let (o, l) = (o.clone(), l.clone());
                let left = env
                    .source(source(a2.clone()))
                    .key_by(|x: &(i64, u32, i64)| x.1);
                let right = env
                    .source(source(b2.clone()))
                    .key_by(|y: &(i64, u32, i64)| y.1);
                let j = left
                    .interval_join(right)
                    .between(lower, upper)
                    .apply(|x, y| (x.2, y.2));
                j.results
                    .sink(Sink::new(move |t, (i, k)| o.lock().push((i, k, t))));
                j.late.sink(Sink::new(move |_, _| *l.lock() += 1));
            })
            .unwrap();
        let got: Vec<(i64, i64, i64)> = out.lock().clone();
        let set: BTreeSet<(i64, i64, i64)> = got.iter().copied().collect();
        assert_eq!(
            *late.lock(),
            0,
            "nothing late in data within the watermark bound"
        );
        assert_eq!(got.len(), set.len(), "no pair twice");
        assert_eq!(set, want, "{workers} workers");
    }
}

#[test]
fn processing_time_windows_follow_the_clock() {
    let out = Arc::new(Mutex::new(Vec::new()));
    let o = out.clone();
    StreamEnv::workers(1)
        .execute("ptime", move |env| {
            let o = o.clone();
            env.source(Source::generator(|_, _| {
                (0..60u32).map(|i| {
                    std::thread::sleep(Duration::from_millis(5));
                    i % 3
                })
            }))
            .key_by(|k: &u32| *k)
            .window(Tumbling::processing_time(Duration::from_millis(60)))
            .count()
            .sink(Sink::new(move |_, w| o.lock().push(w)));
        })
        .unwrap();
    let got = out.lock().clone();
    assert_eq!(
        got.iter().map(|w| w.value).sum::<u64>(),
        60,
        "every record in exactly one window"
    );
    let windows: BTreeSet<i64> = got.iter().map(|w| w.start).collect();
    assert!(
        windows.len() >= 3,
        "300 ms of records in 60 ms windows: {windows:?}"
    );
    for w in &got {
        assert_eq!(w.end - w.start, 60);
        assert_eq!(w.start % 60, 0);
    }
}
