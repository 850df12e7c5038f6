//! Nexmark: the standard streaming benchmark's online-auction events (people, auctions, bids
//! in the 1:3:46 ratio) and queries q0, q1, q2, q5 and q7 on this engine.
//!
//! The generator follows Nexmark's: event `n` is a person when `n % 50 == 0`, an auction when
//! `n % 50` is 1 to 3, else a bid; its event time is `BASE_TIME + n / rate`. Bids go to a
//! "hot" auction (the newest one rounded down to a multiple of 2) half the time, else to one
//! of the 100 newest auctions; bidders likewise (hot every 4th time, ratio 4). Prices follow
//! Nexmark's `10^(6u) * 100` cents. Each record carries an `extra` padding so the average
//! sizes are Nexmark's (bid 100 bytes, auction 500, person 200). Worker `i` of `w` generates
//! the events `n ≡ i (mod w)`, so the streams do not depend on the number of workers.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::env::Env;
use crate::event::Windowed;
use crate::operators::{DataStream, Sink};
use crate::source::{Source, WatermarkStrategy};
use crate::window::{Aggregator, Sliding, Tumbling};

/// Event time of event 0 (ms): 2015-07-15, as Nexmark.
pub const BASE_TIME: i64 = 1_436_918_400_000;
const FIRST_PERSON_ID: u64 = 1000;
const FIRST_AUCTION_ID: u64 = 1000;
const HOT_AUCTION_RATIO: u64 = 2;
const HOT_BIDDER_RATIO: u64 = 4;
const IN_FLIGHT_AUCTIONS: u64 = 100;
const ACTIVE_PEOPLE: u64 = 1000;

/// A new person.
// the fields are Nexmark's, named and meant as in its schema
#[allow(missing_docs)]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Person {
    pub id: u64,
    pub name: String,
    pub email: String,
    pub credit_card: String,
    pub city: String,
    pub state: String,
    pub date_time: i64,
    pub extra: String,
}

/// A new auction.
// the fields are Nexmark's, named and meant as in its schema
#[allow(missing_docs)]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Auction {
    pub id: u64,
    pub item_name: String,
    pub description: String,
    pub initial_bid: u64,
    pub reserve: u64,
    pub date_time: i64,
    pub expires: i64,
    pub seller: u64,
    pub category: u64,
    pub extra: String,
}

/// A bid.
// the fields are Nexmark's, named and meant as in its schema
#[allow(missing_docs)]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Bid {
    pub auction: u64,
    pub bidder: u64,
    pub price: u64,
    pub channel: String,
    pub url: String,
    pub date_time: i64,
    pub extra: String,
}

/// One Nexmark event.
#[allow(missing_docs)]
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Event {
    Person(Person),
    Auction(Auction),
    Bid(Bid),
}

impl Event {
    /// Its event time (ms).
    pub fn time(&self) -> i64 {
        match self {
            Event::Person(p) => p.date_time,
            Event::Auction(a) => a.date_time,
            Event::Bid(b) => b.date_time,
        }
    }
}

/// A deterministic per-event random stream (splitmix64 seeded by the event number).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

const CHANNELS: [&str; 4] = ["Google", "Facebook", "Baidu", "Apple"];
const CITIES: [&str; 10] = [
    "Phoenix",
    "Los Angeles",
    "San Francisco",
    "Boise",
    "Portland",
    "Bend",
    "Redmond",
    "Seattle",
    "Kent",
    "Cheyenne",
];
const STATES: [&str; 6] = ["AZ", "CA", "ID", "OR", "WA", "WY"];
const FIRST_NAMES: [&str; 11] = [
    "Peter", "Paul", "Luke", "John", "Saul", "Vicky", "Kate", "Julie", "Sarah", "Deiter", "Walter",
];
const LAST_NAMES: [&str; 9] = [
    "Shultz", "Abrams", "Spencer", "White", "Bartels", "Walton", "Smith", "Jones", "Noris",
];
const PAD: &str = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";

/// Padding so that records of `have` bytes average `want`.
fn extra(rng: &mut Rng, have: usize, want: usize) -> String {
    let room = want.saturating_sub(have);
    let n = room / 2 + rng.below(room as u64 + 1) as usize;
    PAD[..n.min(PAD.len())].to_owned()
}

/// The generator's settings.
#[derive(Clone, Copy, Debug)]
pub struct GeneratorConfig {
    /// Events per second of event time.
    pub rate: u64,
}

impl Default for GeneratorConfig {
    fn default() -> Self {
        GeneratorConfig { rate: 10_000_000 }
    }
}

fn last_auction(epoch: u64, offset: u64) -> u64 {
    // the auctions created up to this event
    let n = epoch * 3 + offset.clamp(1, 3);
    FIRST_AUCTION_ID + n.saturating_sub(1)
}

fn last_person(epoch: u64) -> u64 {
    FIRST_PERSON_ID + epoch
}

/// Event number `n`.
pub fn event(n: u64, cfg: &GeneratorConfig) -> Event {
    let mut rng = Rng(n.wrapping_mul(0x2545_f491_4f6c_dd1d) ^ 0x5851_f42d_4c95_7f2d);
    let date_time = BASE_TIME + (n as u128 * 1000 / cfg.rate.max(1) as u128) as i64;
    let (epoch, offset) = (n / 50, n % 50);
    match offset {
        0 => {
            let id = FIRST_PERSON_ID + epoch;
            let name = format!(
                "{} {}",
                FIRST_NAMES[rng.below(FIRST_NAMES.len() as u64) as usize],
                LAST_NAMES[rng.below(LAST_NAMES.len() as u64) as usize]
            );
            let email = format!("{}@{}.com", &PAD[..7], &PAD[10..15]);
            let credit_card = format!(
                "{:04} {:04} {:04} {:04}",
                rng.below(10_000),
                rng.below(10_000),
                rng.below(10_000),
                rng.below(10_000)
            );
            let city = CITIES[rng.below(CITIES.len() as u64) as usize].to_owned();
            let state = STATES[rng.below(STATES.len() as u64) as usize].to_owned();
            let have = name.len() + email.len() + credit_card.len() + city.len() + state.len() + 16;
            Event::Person(Person {
                extra: extra(&mut rng, have, 200),
                id,
                name,
                email,
                credit_card,
                city,
                state,
                date_time,
            })
        }
        1..=3 => {
            let id = FIRST_AUCTION_ID + epoch * 3 + offset - 1;
            let seller = if rng.below(HOT_BIDDER_RATIO) > 0 {
                (last_person(epoch) / HOT_BIDDER_RATIO) * HOT_BIDDER_RATIO
            } else {
                last_person(epoch)
                    .saturating_sub(rng.below(ACTIVE_PEOPLE))
                    .max(FIRST_PERSON_ID)
            };
            let initial_bid = (10f64.powf(rng.unit() * 6.0) * 100.0).round() as u64;
            let item_name = format!("item-{}", rng.below(1_000_000));
            let description = format!("description of {item_name}");
            let have = item_name.len() + description.len() + 48;
            Event::Auction(Auction {
                extra: extra(&mut rng, have, 500),
                id,
                item_name,
                description,
                initial_bid,
                reserve: initial_bid + (10f64.powf(rng.unit() * 6.0) * 100.0).round() as u64,
                date_time,
                expires: date_time + 10_000 + rng.below(20_000) as i64,
                seller,
                category: 10 + rng.below(5),
            })
        }
        _ => {
            let newest = last_auction(epoch, offset);
            let auction = if rng.below(HOT_AUCTION_RATIO) > 0 {
                (newest / HOT_AUCTION_RATIO) * HOT_AUCTION_RATIO
            } else {
                newest
                    .saturating_sub(rng.below(IN_FLIGHT_AUCTIONS))
                    .max(FIRST_AUCTION_ID)
            };
            let bidder = if rng.below(HOT_BIDDER_RATIO) > 0 {
                (last_person(epoch) / HOT_BIDDER_RATIO) * HOT_BIDDER_RATIO + 1
            } else {
                last_person(epoch)
                    .saturating_sub(rng.below(ACTIVE_PEOPLE))
                    .max(FIRST_PERSON_ID)
            };
            let price = (10f64.powf(rng.unit() * 6.0) * 100.0).round() as u64;
            let c = rng.below(CHANNELS.len() as u64) as usize;
            let channel = CHANNELS[c].to_owned();
            let url = format!(
                "https://www.nexmark.com/{}/item.htm?query=1",
                &PAD[c * 5..c * 5 + 5]
            );
            let have = channel.len() + url.len() + 32;
            Event::Bid(Bid {
                extra: extra(&mut rng, have, 100),
                auction,
                bidder,
                price,
                channel,
                url,
                date_time,
            })
        }
    }
}

/// `events` Nexmark events, each worker generating its share (event time from the event
/// number, so in order per worker: monotonous watermarks). `progress` counts the events
/// generated (in steps of 4096).
pub fn source(events: u64, cfg: GeneratorConfig, progress: Arc<AtomicU64>) -> Source<Event> {
    Source::generator(move |index, peers| {
        let progress = progress.clone();
        (index as u64..events).step_by(peers).map(move |n| {
            if n % 4096 == index as u64 % 4096 {
                progress.fetch_add(4096, Ordering::Relaxed);
            }
            event(n, &cfg)
        })
    })
    .with_timestamps(Event::time, WatermarkStrategy::Monotonous)
}

/// The bids.
pub fn bids<'s>(events: DataStream<'s, Event>) -> DataStream<'s, Bid> {
    events.flat_map(|e| match e {
        Event::Bid(b) => Some(b),
        _ => None,
    })
}

/// q0, pass-through: every bid as it is.
pub fn q0<'s>(events: DataStream<'s, Event>) -> DataStream<'s, Bid> {
    bids(events).map(|b| b)
}

/// q1, currency conversion: bids with the price in euros (×0.908).
pub fn q1<'s>(events: DataStream<'s, Event>) -> DataStream<'s, Bid> {
    bids(events).map(|mut b| {
        b.price = (b.price as f64 * 0.908) as u64;
        b
    })
}

/// q2, selection: (auction, price) of the bids on auctions whose id is a multiple of 123.
pub fn q2<'s>(events: DataStream<'s, Event>) -> DataStream<'s, (u64, u64)> {
    bids(events)
        .filter(|b| b.auction % 123 == 0)
        .map(|b| (b.auction, b.price))
}

/// The largest value and every key that has it.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Top {
    /// The largest value.
    pub value: u64,
    /// The keys that have it.
    pub keys: Vec<u64>,
}

struct TopOf;
impl Aggregator<(u64, u64)> for TopOf {
    type Acc = Top;
    type Out = Top;
    fn create(&self) -> Top {
        Top::default()
    }
    fn add(&self, acc: &mut Top, (key, value): (u64, u64)) {
        if value > acc.value || acc.keys.is_empty() {
            acc.value = value;
            acc.keys.clear();
            acc.keys.push(key);
        } else if value == acc.value {
            acc.keys.push(key);
        }
    }
    fn merge(&self, acc: &mut Top, other: Top) {
        for k in other.keys {
            self.add(acc, (k, other.value));
        }
    }
    fn result(&self, acc: &Top) -> Top {
        let mut t = acc.clone();
        t.keys.sort_unstable();
        t
    }
}

/// q5, hot items: per sliding window of 10 s every 2 s, the auctions with the most bids
/// (count per auction and window, then the maximum per window).
pub fn q5<'s>(events: DataStream<'s, Event>) -> DataStream<'s, Windowed<i64, Top>> {
    bids(events)
        .key_by(|b| b.auction)
        .window(Sliding::event_time(
            Duration::from_secs(10),
            Duration::from_secs(2),
        ))
        .count()
        // a result's event time is its window's end - 1: a 2 s tumbling window keyed by the
        // end gathers exactly the counts of one sliding window
        .map(|w: Windowed<u64, u64>| (w.end, (w.key, w.value)))
        .key_by(|r: &(i64, (u64, u64))| r.0)
        .window(Tumbling::event_time(Duration::from_secs(2)))
        .aggregate(Second(TopOf))
}

/// q7, highest bid: per tumbling window of 10 s, the highest price and the auctions with a
/// bid at it (the maximum per auction first, then per window).
pub fn q7<'s>(events: DataStream<'s, Event>) -> DataStream<'s, Windowed<i64, Top>> {
    bids(events)
        .map(|b| (b.auction, b.price))
        .key_by(|r: &(u64, u64)| r.0)
        .window(Tumbling::event_time(Duration::from_secs(10)))
        .aggregate(TopOf)
        .map(|w: Windowed<u64, Top>| (w.end, w.value))
        .key_by(|r: &(i64, Top)| r.0)
        .window(Tumbling::event_time(Duration::from_secs(10)))
        .aggregate(Second(MergeTops))
}

/// Aggregates the second element of `(key, value)` records with `A`.
struct Second<A>(A);
impl<K: 'static, V: 'static, A: Aggregator<V>> Aggregator<(K, V)> for Second<A> {
    type Acc = A::Acc;
    type Out = A::Out;
    fn create(&self) -> A::Acc {
        self.0.create()
    }
    fn add(&self, acc: &mut A::Acc, v: (K, V)) {
        self.0.add(acc, v.1)
    }
    fn merge(&self, acc: &mut A::Acc, other: A::Acc) {
        self.0.merge(acc, other)
    }
    fn result(&self, acc: &A::Acc) -> A::Out {
        self.0.result(acc)
    }
}

struct MergeTops;
impl Aggregator<Top> for MergeTops {
    type Acc = Top;
    type Out = Top;
    fn create(&self) -> Top {
        Top::default()
    }
    fn add(&self, acc: &mut Top, v: Top) {
        TopOf.merge(acc, v)
    }
    fn merge(&self, acc: &mut Top, other: Top) {
        TopOf.merge(acc, other)
    }
    fn result(&self, acc: &Top) -> Top {
        TopOf.result(acc)
    }
}

/// The queries by name.
pub const QUERIES: &[&str] = &["q0", "q1", "q2", "q5", "q7"];

/// Build query `name` over `events` Nexmark events on this worker, ending in `sink` (called
/// with each result's event time; results are counted, not kept). Unknown names: `None`.
pub fn build(
    env: &mut Env<'_>,
    name: &str,
    events: u64,
    cfg: GeneratorConfig,
    progress: Arc<AtomicU64>,
    sink: impl FnMut(i64) + 'static,
) -> Option<()> {
    if !QUERIES.contains(&name) {
        return None;
    }
    let src = env.source(source(events, cfg, progress));
    let mut sink = sink;
    match name {
        "q0" => q0(src).sink(Sink::new(move |t, _| sink(t))),
        "q1" => q1(src).sink(Sink::new(move |t, _| sink(t))),
        "q2" => q2(src).sink(Sink::new(move |t, _| sink(t))),
        "q5" => q5(src).sink(Sink::new(move |t, _| sink(t))),
        "q7" => q7(src).sink(Sink::new(move |t, _| sink(t))),
        _ => return None,
    }
    Some(())
}
