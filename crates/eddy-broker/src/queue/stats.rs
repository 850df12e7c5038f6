//! A queue's counters and the point-in-time view of it that the management API reads.

/// Counters for a queue (all only grow: rates and means come from two readings).
///
/// The queueing view (a queue as a queueing system): arrivals are `published`; the queue is
/// *busy* while consumers hold unacknowledged messages or have ready ones to take, and its
/// service rate is `acked / busy_secs`; `held_secs` is the integral over time of the messages
/// in the queue (ready + unacknowledged), so over an interval the mean number held is
/// `Δheld_secs / Δt`; every message that leaves (acknowledged, expired, dropped, purged,
/// dead-lettered) adds its time in the queue to `sojourn_secs` and counts in `departed`.
#[derive(Debug, Default, Clone, Copy)]
pub struct QueueStats {
    /// Messages enqueued.
    pub published: u64,
    /// Deliveries to consumers (including get and redeliveries).
    pub delivered: u64,
    /// Messages acknowledged (or auto-acked).
    pub acked: u64,
    /// Redeliveries.
    pub redelivered: u64,
    /// Messages that left the queue, by any way.
    pub departed: u64,
    /// Their total time in the queue, seconds.
    pub sojourn_secs: f64,
    /// ∫ (ready + unacknowledged) dt, message-seconds.
    pub held_secs: f64,
    /// Time the queue had consumers working on it, seconds.
    pub busy_secs: f64,
}

/// A point-in-time view of a queue.
#[derive(Debug, Clone, Copy)]
pub struct QueueCounts {
    /// Ready messages.
    pub ready: u64,
    /// Delivered, not yet acknowledged.
    pub unacked: u64,
    /// Consumers.
    pub consumers: u64,
    /// Ready body bytes.
    pub ready_bytes: u64,
    /// Counters.
    pub stats: QueueStats,
}
