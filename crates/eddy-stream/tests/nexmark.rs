//! Nexmark: the generator's mix, and q2, q5 and q7 against a direct computation over the same
//! events, on 1 and 2 workers.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use eddy_stream::nexmark::{self, Event, GeneratorConfig, Top};
use eddy_stream::{Sink, StreamEnv, Windowed};
use parking_lot::Mutex;

const EVENTS: u64 = 100_000;
/// 10 000 events per second of event time: 10 s of events, several windows of each query.
const CFG: GeneratorConfig = GeneratorConfig { rate: 10_000 };

fn all_bids() -> Vec<nexmark::Bid> {
    (0..EVENTS)
        .filter_map(|n| match nexmark::event(n, &CFG) {
            Event::Bid(b) => Some(b),
            _ => None,
        })
        .collect()
}

#[test]
fn the_generator_keeps_nexmarks_mix_and_sizes() {
    let (mut p, mut a, mut b) = (0, 0, 0);
    let mut bid_bytes = 0;
    for n in 0..50_000 {
        match nexmark::event(n, &GeneratorConfig::default()) {
            Event::Person(_) => p += 1,
            Event::Auction(_) => a += 1,
            Event::Bid(x) => {
                b += 1;
                bid_bytes += x.extra.len() + x.url.len() + x.channel.len() + 32;
            }
        }
    }
    assert_eq!((p, a, b), (1000, 3000, 46_000));
    let avg = bid_bytes / b;
    assert!((80..=120).contains(&avg), "average bid size {avg}");
    assert_eq!(
        nexmark::event(7, &CFG),
        nexmark::event(7, &CFG),
        "deterministic"
    );
}

fn run<T: eddy_stream::Data + Send>(
    workers: usize,
    query: impl Fn(eddy_stream::DataStream<'_, Event>) -> eddy_stream::DataStream<'_, T>
        + Send
        + Sync
        + 'static,
) -> Vec<T> {
    let out = Arc::new(Mutex::new(Vec::new()));
    let o = out.clone();
    StreamEnv::workers(workers)
        .execute("nexmark", move |env| {
            let o = o.clone();
            let events = env.source(nexmark::source(EVENTS, CFG, Arc::new(AtomicU64::new(0))));
            query(events).sink(Sink::new(move |_, r| o.lock().push(r)));
        })
        .unwrap();
    let v = std::mem::take(&mut *out.lock());
    v
}

#[test]
fn q2_selects_the_bids_on_every_123rd_auction() {
    let mut want: Vec<(u64, u64)> = all_bids()
        .into_iter()
        .filter(|b| b.auction % 123 == 0)
        .map(|b| (b.auction, b.price))
        .collect();
    want.sort();
    assert!(!want.is_empty());
    for workers in [1, 2] {
        let mut got = run(workers, nexmark::q2);
        got.sort();
        assert_eq!(got, want, "{workers} workers");
    }
}

#[test]
fn q5_finds_the_hottest_auctions_of_each_sliding_window() {
    let mut counts: BTreeMap<i64, BTreeMap<u64, u64>> = BTreeMap::new();
    for b in all_bids() {
        let mut start = b.date_time.div_euclid(2000) * 2000;
        while start > b.date_time - 10_000 {
            *counts
                .entry(start + 10_000)
                .or_default()
                .entry(b.auction)
                .or_default() += 1;
            start -= 2000;
        }
    }
    let want: BTreeMap<i64, (u64, Vec<u64>)> = counts
        .into_iter()
        .map(|(end, per)| {
            let max = *per.values().max().unwrap();
            (
                end,
                (
                    max,
                    per.into_iter()
                        .filter(|(_, c)| *c == max)
                        .map(|(a, _)| a)
                        .collect(),
                ),
            )
        })
        .collect();
    assert!(want.len() >= 5);
    for workers in [1, 2] {
        let got: BTreeMap<i64, (u64, Vec<u64>)> = run(workers, nexmark::q5)
            .into_iter()
            .map(|w: Windowed<i64, Top>| (w.key, (w.value.value, w.value.keys)))
            .collect();
        assert_eq!(got, want, "{workers} workers");
    }
}

#[test]
fn q7_finds_the_highest_bids_of_each_tumbling_window() {
    let mut per: BTreeMap<i64, Vec<(u64, u64)>> = BTreeMap::new();
    for b in all_bids() {
        per.entry(b.date_time.div_euclid(10_000) * 10_000 + 10_000)
            .or_default()
            .push((b.price, b.auction));
    }
    let want: BTreeMap<i64, (u64, Vec<u64>)> = per
        .into_iter()
        .map(|(end, bids)| {
            let max = bids.iter().map(|b| b.0).max().unwrap();
            let mut auctions: Vec<u64> = bids.iter().filter(|b| b.0 == max).map(|b| b.1).collect();
            auctions.sort();
            (end, (max, auctions))
        })
        .collect();
    assert!(!want.is_empty());
    for workers in [1, 2] {
        let got: BTreeMap<i64, (u64, Vec<u64>)> = run(workers, nexmark::q7)
            .into_iter()
            .map(|w: Windowed<i64, Top>| (w.key, (w.value.value, w.value.keys)))
            .collect();
        assert_eq!(got, want, "{workers} workers");
    }
}
