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

/// Tracks the watermarks of a stateful operator's upstream channels; the operator's
/// watermark is their minimum (once every channel has reported) and never goes back.
pub(crate) struct Watermarks {
    latest: std::collections::HashMap<u32, i64>,
    channels: usize,
    current: i64,
}

impl Watermarks {
    /// For `channels` distinct upstream channels.
    pub(crate) fn new(channels: usize) -> Self {
        Watermarks {
            latest: Default::default(),
            channels: channels.max(1),
            current: i64::MIN,
        }
    }

    /// Record a watermark from channel `from`; Some(new watermark) when it advanced.
    pub(crate) fn update(&mut self, from: u32, t: i64) -> Option<i64> {
        let e = self.latest.entry(from).or_insert(i64::MIN);
        *e = (*e).max(t);
        if self.latest.len() < self.channels {
            return None;
        }
        let min = self.latest.values().copied().min().unwrap_or(i64::MIN);
        (min > self.current).then(|| {
            self.current = min;
            min
        })
    }

    pub(crate) fn current(&self) -> i64 {
        self.current
    }
}
