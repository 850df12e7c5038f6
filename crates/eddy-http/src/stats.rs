//! Rates and the queueing view, from readings of the broker's counters kept for a while.
//!
//! Every second the sampler reads every queue's counters ([`QueueStats`]: they only grow) and
//! the broker-wide ones, and keeps [`HISTORY`] seconds of them. A rate or mean over a window
//! is the difference between a reading taken now and the oldest one inside the window.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use eddy_broker::queue::QueueStats;
use eddy_broker::{Broker, QueueCounts};
use parking_lot::Mutex;
use serde_json::{json, Value};

/// How far back readings go.
pub const HISTORY: Duration = Duration::from_secs(600);
/// The window of RabbitMQ-style `*_details.rate` figures.
pub const RATE_WINDOW: Duration = Duration::from_secs(5);
/// The default window of the queueing view.
pub const QUEUEING_WINDOW: Duration = Duration::from_secs(30);

type QueueKey = (String, String);

/// One reading of a queue.
#[derive(Clone, Copy, Debug)]
pub struct Reading {
    /// When.
    pub at: Instant,
    /// Its counters.
    pub stats: QueueStats,
}

/// Readings of every queue, and of the totals.
#[derive(Default)]
pub struct History {
    /// Per queue: which queue object the readings are of (a queue deleted and declared
    /// again starts over), and the readings.
    queues: Mutex<HashMap<QueueKey, (usize, VecDeque<Reading>)>>,
    totals: Mutex<VecDeque<Reading>>,
}

/// Sum of two queues' counters.
fn add(a: &mut QueueStats, b: &QueueStats) {
    a.published += b.published;
    a.delivered += b.delivered;
    a.acked += b.acked;
    a.redelivered += b.redelivered;
    a.departed += b.departed;
    a.sojourn_secs += b.sojourn_secs;
    a.held_secs += b.held_secs;
    a.busy_secs += b.busy_secs;
}

fn push(ring: &mut VecDeque<Reading>, r: Reading) {
    ring.push_back(r);
    while ring
        .front()
        .is_some_and(|f| r.at.duration_since(f.at) > HISTORY)
    {
        ring.pop_front();
    }
}

/// The oldest reading not older than `window` before `now` (or the oldest there is).
fn base(ring: &VecDeque<Reading>, now: Instant, window: Duration) -> Option<Reading> {
    ring.iter()
        .find(|r| now.duration_since(r.at) <= window)
        .or(ring.back())
        .copied()
}

impl History {
    /// Read every queue now.
    pub fn sample(&self, broker: &Broker) {
        let now = Instant::now();
        let mut total = QueueStats::default();
        let mut seen = Vec::new();
        {
            let mut qs = self.queues.lock();
            for v in broker.vhosts() {
                for q in v.queues() {
                    let c = q.counts();
                    add(&mut total, &c.stats);
                    let key = (v.name.clone(), q.name.clone());
                    let instance = Arc::as_ptr(&q) as usize;
                    let entry = qs.entry(key.clone()).or_insert((instance, VecDeque::new()));
                    if entry.0 != instance {
                        *entry = (instance, VecDeque::new());
                    }
                    push(
                        &mut entry.1,
                        Reading {
                            at: now,
                            stats: c.stats,
                        },
                    );
                    seen.push(key);
                }
            }
            let seen: std::collections::HashSet<QueueKey> = seen.into_iter().collect();
            qs.retain(|k, _| seen.contains(k));
        }
        // deleted queues take their counts with them: keep the totals from going backwards
        let mut t = self.totals.lock();
        if let Some(last) = t.back() {
            let l = last.stats;
            total.published = total.published.max(l.published);
            total.delivered = total.delivered.max(l.delivered);
            total.acked = total.acked.max(l.acked);
        }
        push(
            &mut t,
            Reading {
                at: now,
                stats: total,
            },
        );
    }

    /// Take readings every second until the broker's runtime stops.
    pub fn spawn(self: &Arc<Self>, broker: Broker) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tick.tick().await;
                let (m, b) = (me.clone(), broker.clone());
                let _ = tokio::task::spawn_blocking(move || m.sample(&b)).await;
            }
        })
    }

    /// The oldest reading of a queue within `window`.
    pub fn queue_base(&self, vhost: &str, name: &str, window: Duration) -> Option<Reading> {
        let qs = self.queues.lock();
        let (_, ring) = qs.get(&(vhost.to_owned(), name.to_owned()))?;
        base(ring, Instant::now(), window)
    }

    /// Overall publish/deliver/ack rates over [`RATE_WINDOW`] and the counters now.
    pub fn totals(&self) -> Option<(Reading, Reading)> {
        let t = self.totals.lock();
        let last = *t.back()?;
        let first = base(&t, last.at, RATE_WINDOW)?;
        Some((first, last))
    }
}

fn rate(a: u64, b: u64, secs: f64) -> f64 {
    if secs <= 0.0 {
        0.0
    } else {
        b.saturating_sub(a) as f64 / secs
    }
}

/// RabbitMQ's `message_stats` object from two readings.
pub fn message_stats(then: Option<&Reading>, now: &Reading) -> Value {
    let secs = then.map_or(0.0, |t| now.at.duration_since(t.at).as_secs_f64());
    let t = then.map_or(now.stats, |t| t.stats);
    let n = now.stats;
    json!({
        "publish": n.published,
        "publish_details": {"rate": rate(t.published, n.published, secs)},
        "deliver_get": n.delivered,
        "deliver_get_details": {"rate": rate(t.delivered, n.delivered, secs)},
        "ack": n.acked,
        "ack_details": {"rate": rate(t.acked, n.acked, secs)},
        "redeliver": n.redelivered,
        "redeliver_details": {"rate": rate(t.redelivered, n.redelivered, secs)},
    })
}

/// The queueing view of a queue over the interval between two readings.
#[derive(Debug, Clone, Copy, Default)]
pub struct Queueing {
    /// Seconds the figures cover.
    pub window_secs: f64,
    /// λ: arrivals per second.
    pub arrival_rate: f64,
    /// μ: messages served per second of busy time (None: never busy).
    pub service_rate: Option<f64>,
    /// ρ = λ/μ.
    pub utilisation: Option<f64>,
    /// W: mean time in the queue of the messages that left, seconds.
    pub mean_time_in_queue: Option<f64>,
    /// L: time-average of the messages held (ready + unacknowledged).
    pub mean_messages: f64,
    /// λ·W, which Little's law says is L.
    pub littles_law_messages: Option<f64>,
    /// Time to drain the backlog at the current rates (None: it does not drain).
    pub drain_secs: Option<f64>,
}

impl Queueing {
    /// From a reading at the window's start and the queue now.
    pub fn between(then: &Reading, now: &Reading, counts: &QueueCounts) -> Queueing {
        let dt = now.at.duration_since(then.at).as_secs_f64();
        let (a, b) = (then.stats, now.stats);
        // counters only grow; if they did not, these are not readings of one queue
        if dt <= 0.0 || b.published < a.published || b.held_secs < a.held_secs {
            return Queueing::default();
        }
        let arrival_rate = b.published.saturating_sub(a.published) as f64 / dt;
        let busy = b.busy_secs - a.busy_secs;
        let served = b.acked.saturating_sub(a.acked) as f64;
        let service_rate = (busy > 1e-3 && served > 0.0).then(|| served / busy);
        let departed = b.departed.saturating_sub(a.departed);
        let mean_time_in_queue =
            (departed > 0).then(|| (b.sojourn_secs - a.sojourn_secs) / departed as f64);
        let backlog = (counts.ready + counts.unacked) as f64;
        let drain_secs = if backlog == 0.0 {
            Some(0.0)
        } else {
            service_rate
                .filter(|mu| *mu > arrival_rate)
                .map(|mu| backlog / (mu - arrival_rate))
        };
        Queueing {
            window_secs: dt,
            arrival_rate,
            service_rate,
            utilisation: service_rate.map(|mu| arrival_rate / mu),
            mean_time_in_queue,
            mean_messages: (b.held_secs - a.held_secs) / dt,
            littles_law_messages: mean_time_in_queue.map(|w| arrival_rate * w),
            drain_secs,
        }
    }

    /// As JSON (nulls for unknowns).
    pub fn to_json(&self) -> Value {
        json!({
            "window_seconds": self.window_secs,
            "arrival_rate": self.arrival_rate,
            "service_rate": self.service_rate,
            "utilisation": self.utilisation,
            "mean_time_in_queue_seconds": self.mean_time_in_queue,
            "mean_messages_in_queue": self.mean_messages,
            "littles_law_messages": self.littles_law_messages,
            "drain_seconds": self.drain_secs,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queueing_from_two_readings() {
        let t0 = Instant::now();
        let then = Reading {
            at: t0,
            stats: QueueStats::default(),
        };
        // 10 s: 100 arrivals, 100 acked while busy 5 s, each 0.2 s in the queue, 2 held on
        // average
        let now = Reading {
            at: t0 + Duration::from_secs(10),
            stats: QueueStats {
                published: 100,
                delivered: 100,
                acked: 100,
                redelivered: 0,
                departed: 100,
                sojourn_secs: 20.0,
                held_secs: 20.0,
                busy_secs: 5.0,
            },
        };
        let counts = QueueCounts {
            ready: 10,
            unacked: 0,
            consumers: 1,
            ready_bytes: 0,
            stats: now.stats,
        };
        let q = Queueing::between(&then, &now, &counts);
        assert_eq!(q.arrival_rate, 10.0);
        assert_eq!(q.service_rate, Some(20.0));
        assert_eq!(q.utilisation, Some(0.5));
        assert_eq!(q.mean_time_in_queue, Some(0.2));
        assert_eq!(q.mean_messages, 2.0);
        assert_eq!(q.littles_law_messages, Some(2.0));
        assert_eq!(q.drain_secs, Some(1.0));
    }
}
