//! What flows between operators: records with their event time, and watermarks.

use serde::{Deserialize, Serialize};

/// One element of a stream.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Ev<D> {
    /// A record with its event time (milliseconds).
    Rec(i64, D),
    /// "No record with an event time at or below `t` will come from worker `from` any more";
    /// `to` addresses one downstream worker across an exchange.
    Wm {
        /// The upstream worker it comes from.
        from: u32,
        /// The downstream worker it is for (across an exchange).
        to: u32,
        /// The watermark, milliseconds.
        t: i64,
    },
}

/// What a stream may carry: cloneable, and serializable so it can cross workers and processes.
pub trait Data: timely::ExchangeData + Clone {}
impl<T: timely::ExchangeData + Clone> Data for T {}

/// The result of a window for one key.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Windowed<K, R> {
    /// The key.
    pub key: K,
    /// Window start (inclusive), ms; for count windows, the index of its first element.
    pub start: i64,
    /// Window end (exclusive), ms; for count windows, one past its last element.
    pub end: i64,
    /// The aggregate.
    pub value: R,
}

/// The wall clock, ms since the Unix epoch: processing time, and ingestion time for records
/// that carry no time of their own.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The watermark value meaning "this channel is idle: do not wait for it" (a source whose
/// splits have all been quiet for longer than its idleness timeout).
pub(crate) const IDLE: i64 = i64::MIN + 1;

/// Tracks the watermarks of an operator's upstream channels; the operator's watermark is
/// their minimum, leaving out idle channels, once every channel has reported; it never goes
/// back. When every channel is idle, so is the operator.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Watermarks {
    latest: std::collections::BTreeMap<u32, i64>,
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
}
