//! What flows between operators: records with their event time, and watermarks; what a
//! stream may carry ([`Data`]); the wall clock that processing time reads.

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
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The watermark value meaning "this channel is idle: do not wait for it" (a source whose
/// splits have all been quiet for longer than its idleness timeout).
pub(crate) const IDLE: i64 = i64::MIN + 1;
