//! Classic queues: ready messages, unacknowledged deliveries, consumers, TTL, max-length,
//! dead-lettering, priorities, and (for durable queues) a log of persistent messages.
//!
//! One type, [`Queue`], over several files (`impl` blocks split by concern):
//!
//! - `queue.rs`: the types, the state behind the queue's one lock, creation, counts, removal;
//! - `queue/publish.rs`: enqueueing (max-length, TTL 0, the durable append outside the lock);
//! - `queue/dispatch.rs`: consumers, dispatch, get, ack, reject, purge;
//! - `queue/dead_letter.rs`: dead-lettering (`x-death`, cycles, the bounded cascade);
//! - `queue/durable.rs`: the log's record format, recovery, batched ack records;
//! - `queue/housekeeping.rs`: the periodic tick (expiry at the head, x-expires, compaction);
//! - `queue/ready.rs`: ready messages by priority level; `queue/stats.rs`: the counters.
//!
//! A queue's one pointer up is to its vhost, as a `QueueParent`: the vhost routes its dead
//! letters. No file here imports `vhost.rs`.

mod dead_letter;
mod dispatch;
mod durable;
mod housekeeping;
mod publish;
mod ready;
mod stats;

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::AtomicI64;
use std::sync::{Arc, Weak};
use std::time::Instant;

use amq_protocol::types::FieldTable;
use eddy_log::Log;
use parking_lot::Mutex;

use crate::args::QueueArgs;
use crate::error::Result;
use crate::message::Message;
use crate::topic::Partition;
use ready::{Entry, Ready};
pub use stats::{QueueCounts, QueueStats};

/// What a queue asks of the vhost that holds it. [`Queue`]'s one pointer up (`vhost`, weak)
/// has this type, so this file imports nothing of the vhost's; the vhost implements it.
pub(crate) trait QueueParent: Send + Sync {
    /// Route a dead-lettered message from `exchange` (no internal-exchange check), skipping
    /// the queues in `cycle`.
    fn publish_dead_lettered(
        &self,
        exchange: &str,
        msg: Arc<Message>,
        cycle: &[String],
    ) -> Result<()>;
}

/// Where a consumer's deliveries go: implemented by a front end's channel.
/// Called with the queue's lock held, so implementations must not call back into the queue.
pub trait ConsumerSink: Send + Sync {
    /// Whether the consumer can take one more delivery now (prefetch, buffer space).
    fn can_accept(&self) -> bool;
    /// Hand over a delivery.
    fn deliver(&self, delivery: Delivery);
    /// The broker cancelled the consumer (its queue was deleted).
    fn cancelled(&self, consumer_tag: &str);
}

/// One delivery to a consumer.
pub struct Delivery {
    /// The queue it came from.
    pub queue: Arc<Queue>,
    /// The consumer's tag.
    pub consumer_tag: Arc<str>,
    /// Queue-local message id: pass it back to [`Queue::ack`] / [`Queue::reject`].
    pub message_id: u64,
    /// The message.
    pub message: Arc<Message>,
    /// Delivered before.
    pub redelivered: bool,
}

/// What happened to a message handed to [`Queue::publish`].
#[derive(Default)]
pub struct Enqueued {
    /// The queue refused it (x-overflow reject-publish).
    pub rejected: bool,
    /// Log and end offset to wait for before the message is durable.
    pub durable: Option<(Arc<Log>, u64)>,
}

/// A message taken with basic.get.
pub struct GetResult {
    /// Queue-local id (for ack/reject).
    pub message_id: u64,
    /// The message.
    pub message: Arc<Message>,
    /// Delivered before.
    pub redelivered: bool,
    /// Ready messages left.
    pub remaining: u64,
}

/// Why a message was dead-lettered (the `reason` in `x-death`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeathReason {
    /// Rejected or nacked without requeue.
    Rejected,
    /// Its TTL passed.
    Expired,
    /// Dropped by max-length.
    MaxLen,
}

impl DeathReason {
    fn as_str(self) -> &'static str {
        match self {
            DeathReason::Rejected => "rejected",
            DeathReason::Expired => "expired",
            DeathReason::MaxLen => "maxlen",
        }
    }
}

struct ConsumerEntry {
    tag: Arc<str>,
    sink: Arc<dyn ConsumerSink>,
    no_ack: bool,
    exclusive: bool,
}

struct State {
    ready: Ready,
    unacked: HashMap<u64, Entry>,
    consumers: Vec<ConsumerEntry>,
    rr: usize,
    next_id: u64,
    live_log: BTreeSet<u64>,
    /// Appends in progress outside the lock, each as the log's next offset when it began: the
    /// record lands at or above it, so compaction stays below the smallest.
    appending: Vec<u64>,
    had_consumers: bool,
    last_used: Instant,
    deleted: bool,
    stats: QueueStats,
    /// When `stats`' time integrals were last brought up to date.
    ticked: Instant,
}

impl State {
    /// Bring the time integrals up to now (before anything changes the counts).
    fn tick(&mut self) {
        let now = Instant::now();
        let dt = now.saturating_duration_since(self.ticked).as_secs_f64();
        self.ticked = now;
        let held = self.ready.len + self.unacked.len();
        if held > 0 {
            self.stats.held_secs += held as f64 * dt;
        }
        if !self.unacked.is_empty() || (self.ready.len > 0 && !self.consumers.is_empty()) {
            self.stats.busy_secs += dt;
        }
    }
}

/// A classic queue.
pub struct Queue {
    /// Name.
    pub name: String,
    /// Owning vhost's name.
    pub vhost_name: String,
    /// Survives restart (with its persistent messages).
    pub durable: bool,
    /// The connection that owns an exclusive queue.
    pub exclusive_owner: Option<u64>,
    /// Deleted when its last consumer goes.
    pub auto_delete: bool,
    /// Declare arguments as given.
    pub arguments: FieldTable,
    /// Parsed arguments.
    pub args: QueueArgs,
    state: Mutex<State>,
    log: Option<Arc<Log>>,
    /// For a stream queue (`x-queue-type: stream`): the partition that holds it.
    stream: Option<Arc<Partition>>,
    /// settled log offsets whose ack record is not written yet (batched: a lost ack only
    /// means a redelivery after a crash)
    pending_acks: Mutex<Vec<u64>>,
    /// The parent pointer: the vhost that holds this queue (it routes dead letters).
    vhost: Weak<dyn QueueParent>,
    memory: Arc<AtomicI64>,
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queue")
            .field("name", &self.name)
            .field("vhost", &self.vhost_name)
            .finish()
    }
}

/// Parameters to create a queue.
pub(crate) struct QueueSpec {
    pub name: String,
    pub durable: bool,
    pub exclusive_owner: Option<u64>,
    pub auto_delete: bool,
    pub arguments: FieldTable,
    pub args: QueueArgs,
}

impl Queue {
    pub(crate) fn new(
        spec: QueueSpec,
        vhost_name: &str,
        vhost: Weak<dyn QueueParent>,
        log: Option<Arc<Log>>,
        stream: Option<Arc<Partition>>,
        memory: Arc<AtomicI64>,
    ) -> Arc<Queue> {
        let ready = Ready::new(spec.args.max_priority);
        Arc::new(Queue {
            name: spec.name,
            vhost_name: vhost_name.to_owned(),
            durable: spec.durable,
            exclusive_owner: spec.exclusive_owner,
            auto_delete: spec.auto_delete,
            arguments: spec.arguments,
            args: spec.args,
            state: Mutex::new(State {
                ready,
                unacked: HashMap::new(),
                consumers: Vec::new(),
                rr: 0,
                next_id: 1,
                live_log: BTreeSet::new(),
                appending: Vec::new(),
                had_consumers: false,
                last_used: Instant::now(),
                deleted: false,
                stats: QueueStats::default(),
                ticked: Instant::now(),
            }),
            log,
            stream,
            pending_acks: Mutex::new(Vec::new()),
            vhost,
            memory,
        })
    }

    /// The queue's log, for durable queues.
    pub fn log(&self) -> Option<&Arc<Log>> {
        self.log.as_ref()
    }

    /// The partition of a stream queue.
    pub fn stream(&self) -> Option<&Arc<Partition>> {
        self.stream.as_ref()
    }

    fn effective_ttl(&self, msg: &Message) -> Option<u64> {
        let per_msg = msg.expiration_ms().ok().flatten();
        match (self.args.message_ttl, per_msg) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
    /// The state, with its time integrals brought up to now.
    fn lock(&self) -> parking_lot::MutexGuard<'_, State> {
        let mut st = self.state.lock();
        st.tick();
        st
    }

    /// Current counts.
    pub fn counts(&self) -> QueueCounts {
        let st = self.lock();
        let ready = match &self.stream {
            Some(p) => p.end_offset() - p.start_offset(),
            None => st.ready.len as u64,
        };
        QueueCounts {
            ready,
            unacked: st.unacked.len() as u64,
            consumers: st.consumers.len() as u64,
            ready_bytes: st.ready.bytes,
            stats: st.stats,
        }
    }

    /// Mark used (declare, get) for x-expires.
    pub fn touch(&self) {
        self.lock().last_used = Instant::now();
    }

    /// Mark deleted, cancel consumers, release messages and remove the log. Returns the number
    /// of ready messages dropped.
    pub(crate) fn destroy(&self) -> u64 {
        let (consumers, n) = {
            let mut st = self.lock();
            st.deleted = true;
            let mut settled = Vec::new();
            let ready = st.ready.drain();
            let n = ready.len() as u64;
            for e in ready.iter() {
                self.release(&mut st, e, &mut settled);
            }
            let unacked: Vec<Entry> = st.unacked.drain().map(|(_, e)| e).collect();
            for e in unacked.iter() {
                self.release(&mut st, e, &mut settled);
            }
            (std::mem::take(&mut st.consumers), n)
        };
        for c in consumers {
            c.sink.cancelled(&c.tag);
        }
        if let Some(log) = &self.log {
            if let Err(e) = log.destroy() {
                tracing::warn!(queue = %self.name, "failed to remove queue log: {e}");
            }
        }
        n
    }
}
