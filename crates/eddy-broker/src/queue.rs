//! Classic queues: ready messages, unacknowledged deliveries, consumers, TTL, max-length,
//! dead-lettering, priorities, and (for durable queues) a log of persistent messages.
//!
//! A durable queue's log holds two record kinds (first byte): `1` publish (a message in
//! [`Message::encode`] form; its log offset identifies it) and `2` acks (`u32 count` then
//! `count` big-endian `u64` offsets of publish records now settled). Recovery replays the log:
//! publishes minus acks, in offset order, are the ready messages. Whole segments below the
//! oldest live message are deleted.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use amq_protocol::types::{AMQPValue, FieldArray, FieldTable, LongString};
use eddy_log::{now_ms, Log};
use parking_lot::Mutex;

use crate::args::{Overflow, QueueArgs};
use crate::error::{BrokerError, Result};
use crate::message::Message;
use crate::topic::Partition;

const REC_PUBLISH: u8 = 1;
const REC_ACK: u8 = 2;
/// Ack records are written once this many settled offsets are pending (or on the next tick).
const ACK_BATCH: usize = 1024;
/// Most dead letters that dead letters may set off in one operation (a reject of many messages
/// dead-letters them all; what they set off downstream is bounded).
const MAX_DEAD_LETTER_CASCADE: usize = 1_000;

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

struct Entry {
    id: u64,
    msg: Arc<Message>,
    log_offset: Option<u64>,
    redelivered: bool,
    expires_at: Option<Instant>,
    /// When it entered the queue (for the mean time in queue).
    enqueued: Instant,
}

struct ConsumerEntry {
    tag: Arc<str>,
    sink: Arc<dyn ConsumerSink>,
    no_ack: bool,
    exclusive: bool,
}

/// Ready messages by priority level (one level without x-max-priority).
struct Ready {
    levels: Vec<VecDeque<Entry>>,
    len: usize,
    bytes: u64,
}

impl Ready {
    fn new(max_priority: Option<u8>) -> Self {
        let n = max_priority.map(|p| p as usize + 1).unwrap_or(1);
        Ready {
            levels: (0..n).map(|_| VecDeque::new()).collect(),
            len: 0,
            bytes: 0,
        }
    }
    fn level(&self, e: &Entry) -> usize {
        (e.msg.priority() as usize).min(self.levels.len() - 1)
    }
    fn push_back(&mut self, e: Entry) {
        let l = self.level(&e);
        self.len += 1;
        self.bytes += e.msg.body_size() as u64;
        self.levels[l].push_back(e);
    }
    fn push_front(&mut self, e: Entry) {
        let l = self.level(&e);
        self.len += 1;
        self.bytes += e.msg.body_size() as u64;
        // keep requeued messages in their original order among themselves
        let q = &mut self.levels[l];
        let pos = q.iter().position(|x| x.id > e.id).unwrap_or(q.len());
        if pos == 0 {
            q.push_front(e)
        } else {
            q.insert(pos, e)
        }
    }
    fn front(&self) -> Option<&Entry> {
        self.levels.iter().rev().find_map(|q| q.front())
    }
    fn pop_front(&mut self) -> Option<Entry> {
        let e = self.levels.iter_mut().rev().find_map(|q| q.pop_front())?;
        self.len -= 1;
        self.bytes -= e.msg.body_size() as u64;
        Some(e)
    }
    fn drain(&mut self) -> Vec<Entry> {
        let mut out = Vec::with_capacity(self.len);
        for q in self.levels.iter_mut().rev() {
            out.extend(q.drain(..));
        }
        self.len = 0;
        self.bytes = 0;
        out
    }
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

    /// Rebuild ready messages from the log (called once, before the queue is used).
    pub(crate) fn recover(self: &Arc<Self>) -> Result<u64> {
        let Some(log) = &self.log else { return Ok(0) };
        let mut live: std::collections::BTreeMap<u64, (Message, i64)> = Default::default();
        let mut from = log.start_offset();
        loop {
            let batches = log.read(from, 4 << 20)?;
            if batches.is_empty() {
                break;
            }
            for b in &batches {
                from = b.base_offset + b.record_count as u64;
                match b.payload.first() {
                    Some(&REC_PUBLISH) => match Message::decode(&b.payload[1..]) {
                        Ok(m) => {
                            live.insert(b.base_offset, (m, b.timestamp_ms));
                        }
                        Err(e) => {
                            tracing::error!(queue = %self.name, offset = b.base_offset, "skipping undecodable stored message: {e}")
                        }
                    },
                    Some(&REC_ACK) => {
                        for off in decode_acks(&b.payload[1..]) {
                            live.remove(&off);
                        }
                    }
                    _ => {
                        tracing::error!(queue = %self.name, offset = b.base_offset, "skipping unknown record in queue log")
                    }
                }
            }
        }
        let n = live.len() as u64;
        let now = Instant::now();
        let wall = now_ms();
        let mut st = self.lock();
        for (off, (m, ts)) in live {
            let msg = Arc::new(m);
            let ttl = self.effective_ttl(&msg);
            let expires_at = ttl.map(|t| {
                let remaining = (ts + t as i64 - wall).max(0) as u64;
                now + Duration::from_millis(remaining)
            });
            self.memory
                .fetch_add(msg.memory_size() as i64, Ordering::Relaxed);
            let id = st.next_id;
            st.next_id += 1;
            st.live_log.insert(off);
            // it may have been delivered before the restart: say so, as RabbitMQ does
            st.ready.push_back(Entry {
                id,
                msg,
                log_offset: Some(off),
                redelivered: true,
                expires_at,
                enqueued: now,
            });
        }
        Ok(n)
    }

    fn effective_ttl(&self, msg: &Message) -> Option<u64> {
        let per_msg = msg.expiration_ms().ok().flatten();
        match (self.args.message_ttl, per_msg) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Enqueue a routed message. Persistent messages in durable queues are appended to the log;
    /// the returned offset must be durable before a publisher confirm.
    ///
    /// The append runs outside the queue lock (it may roll a segment, which fsyncs), announced
    /// in `appending` first so compaction never deletes the segment it lands in before the
    /// offset joins `live_log`.
    pub fn publish(self: &Arc<Self>, msg: Arc<Message>) -> Result<Enqueued> {
        if let Some(p) = &self.stream {
            // a stream keeps every message, persistent or not, until retention removes it
            // (its counts are the partition's: no time integrals to bring up to date)
            if self.state.lock().deleted {
                return Ok(Enqueued::default());
            }
            let end = crate::stream::append(p, &msg)?;
            self.state.lock().stats.published += 1;
            return Ok(Enqueued {
                rejected: false,
                durable: Some((p.log().clone(), end)),
            });
        }
        let ttl = self.effective_ttl(&msg);
        let record = match (&self.log, msg.persistent()) {
            (Some(_), true) => {
                let mut buf = Vec::with_capacity(msg.body.len() + msg.raw_properties.len() + 64);
                buf.push(REC_PUBLISH);
                msg.encode(&mut buf);
                Some(buf)
            }
            _ => None,
        };
        let mut floor = None;
        {
            // announces the append only: the counts do not change, no clock read needed
            let mut st = self.state.lock();
            if st.deleted {
                return Ok(Enqueued::default());
            }
            if self.args.overflow != Overflow::DropHead && self.is_full(&st, msg.body_size() as u64)
            {
                drop(st);
                if self.args.overflow == Overflow::RejectPublishDlx {
                    self.dead_letter(vec![(msg, DeathReason::MaxLen)]);
                }
                return Ok(Enqueued {
                    rejected: true,
                    durable: None,
                });
            }
            if ttl == Some(0) && st.consumers.is_empty() {
                // RabbitMQ: a message with TTL 0 is delivered only if a consumer can take it now
                drop(st);
                self.dead_letter(vec![(msg, DeathReason::Expired)]);
                return Ok(Enqueued::default());
            }
            if let (Some(log), Some(_)) = (&self.log, &record) {
                let f = log.next_offset();
                st.appending.push(f);
                floor = Some(f);
            }
        }
        let appended = match (&self.log, &record) {
            (Some(log), Some(record)) => Some(log.append(1, now_ms(), record)),
            _ => None,
        };
        let mut dead = Vec::new();
        let mut settled = Vec::new();
        let mut durable = None;
        {
            let mut st = self.lock();
            if let Some(f) = floor {
                if let Some(i) = st.appending.iter().position(|x| *x == f) {
                    st.appending.swap_remove(i);
                }
            }
            if st.deleted {
                // deleted meanwhile: the message simply was not routed there
                return Ok(Enqueued::default());
            }
            let log_offset = match appended {
                None => None,
                Some(Ok(off)) => Some(off),
                Some(Err(e)) => return Err(e.into()),
            };
            if self.args.overflow != Overflow::DropHead && self.is_full(&st, msg.body_size() as u64)
            {
                // filled up by a concurrent publisher since the first look
                drop(st);
                self.finish(Vec::new(), log_offset.into_iter().collect());
                if self.args.overflow == Overflow::RejectPublishDlx {
                    self.dead_letter(vec![(msg, DeathReason::MaxLen)]);
                }
                return Ok(Enqueued {
                    rejected: true,
                    durable: None,
                });
            }
            if let Some(off) = log_offset {
                st.live_log.insert(off);
                durable = self.log.as_ref().map(|log| (log.clone(), off + 1));
            }
            let expires_at = ttl.map(|t| Instant::now() + Duration::from_millis(t));
            self.memory
                .fetch_add(msg.memory_size() as i64, Ordering::Relaxed);
            let id = st.next_id;
            st.next_id += 1;
            st.stats.published += 1;
            let enqueued = st.ticked;
            st.ready.push_back(Entry {
                id,
                msg,
                log_offset,
                redelivered: false,
                expires_at,
                enqueued,
            });
            if self.args.overflow == Overflow::DropHead {
                while self.over_limit(&st) {
                    match st.ready.pop_front() {
                        Some(e) => {
                            self.release(&mut st, &e, &mut settled);
                            dead.push((e.msg, DeathReason::MaxLen));
                        }
                        None => break,
                    }
                }
            }
            self.dispatch_locked(&mut st, &mut dead, &mut settled);
        }
        self.finish(dead, settled);
        Ok(Enqueued {
            rejected: false,
            durable,
        })
    }

    fn is_full(&self, st: &State, incoming_bytes: u64) -> bool {
        self.args
            .max_length
            .is_some_and(|m| st.ready.len as u64 >= m)
            || self
                .args
                .max_length_bytes
                .is_some_and(|m| st.ready.bytes + incoming_bytes > m)
    }

    fn over_limit(&self, st: &State) -> bool {
        self.args
            .max_length
            .is_some_and(|m| st.ready.len as u64 > m)
            || self
                .args
                .max_length_bytes
                .is_some_and(|m| st.ready.bytes > m)
    }

    /// Forget a message for good: memory accounting and, if logged, an ack record to write.
    fn release(&self, st: &mut State, e: &Entry, settled: &mut Vec<u64>) {
        // `ticked` is when this operation took the lock: no second clock read
        st.stats.departed += 1;
        st.stats.sojourn_secs += st
            .ticked
            .saturating_duration_since(e.enqueued)
            .as_secs_f64();
        self.memory
            .fetch_sub(e.msg.memory_size() as i64, Ordering::Relaxed);
        if let Some(off) = e.log_offset {
            st.live_log.remove(&off);
            settled.push(off);
        }
    }

    /// Pop the next live ready message, expiring dead heads on the way.
    fn pop_live(
        &self,
        st: &mut State,
        now: Instant,
        dead: &mut Vec<(Arc<Message>, DeathReason)>,
        settled: &mut Vec<u64>,
    ) -> Option<Entry> {
        loop {
            let e = st.ready.pop_front()?;
            if e.expires_at.is_some_and(|t| t <= now) {
                self.release(st, &e, settled);
                dead.push((e.msg, DeathReason::Expired));
                continue;
            }
            return Some(e);
        }
    }

    fn dispatch_locked(
        self: &Arc<Self>,
        st: &mut State,
        dead: &mut Vec<(Arc<Message>, DeathReason)>,
        settled: &mut Vec<u64>,
    ) {
        if st.consumers.is_empty() || st.ready.len == 0 {
            return;
        }
        let now = Instant::now();
        loop {
            let n = st.consumers.len();
            let start = st.rr % n;
            let Some(idx) = (0..n)
                .map(|i| (start + i) % n)
                .find(|&i| st.consumers[i].sink.can_accept())
            else {
                break;
            };
            let Some(mut e) = self.pop_live(st, now, dead, settled) else {
                break;
            };
            st.rr = (idx + 1) % n;
            st.stats.delivered += 1;
            if e.redelivered {
                st.stats.redelivered += 1;
            }
            let c = &st.consumers[idx];
            let d = Delivery {
                queue: self.clone(),
                consumer_tag: c.tag.clone(),
                message_id: e.id,
                message: e.msg.clone(),
                redelivered: e.redelivered,
            };
            let sink = c.sink.clone();
            if c.no_ack {
                st.stats.acked += 1;
                self.release(st, &e, settled);
            } else {
                e.redelivered = true;
                st.unacked.insert(e.id, e);
            }
            sink.deliver(d);
        }
    }

    /// Queue ack records (written in batches) and dead-letter, outside the queue lock.
    fn finish(&self, dead: Vec<(Arc<Message>, DeathReason)>, settled: Vec<u64>) {
        if !settled.is_empty() && self.log.is_some() {
            let full = {
                let mut p = self.pending_acks.lock();
                p.extend_from_slice(&settled);
                p.len() >= ACK_BATCH
            };
            if full {
                self.flush_acks();
            }
        }
        if !dead.is_empty() {
            self.dead_letter(dead);
        }
    }

    /// Write the pending ack records to the log.
    pub fn flush_acks(&self) {
        let Some(log) = &self.log else { return };
        let settled = std::mem::take(&mut *self.pending_acks.lock());
        if settled.is_empty() {
            return;
        }
        let mut buf = Vec::with_capacity(5 + settled.len() * 8);
        buf.push(REC_ACK);
        buf.extend_from_slice(&(settled.len() as u32).to_be_bytes());
        for off in &settled {
            buf.extend_from_slice(&off.to_be_bytes());
        }
        if let Err(e) = log.append(1, now_ms(), &buf) {
            tracing::error!(queue = %self.name, "failed to record acks: {e}");
        }
    }

    /// Deliver as many ready messages as consumers can take.
    pub fn dispatch(self: &Arc<Self>) {
        let mut dead = Vec::new();
        let mut settled = Vec::new();
        {
            let mut st = self.lock();
            self.dispatch_locked(&mut st, &mut dead, &mut settled);
        }
        self.finish(dead, settled);
    }

    /// Add a consumer. Fails with 403 when an exclusive consumer holds the queue or an
    /// exclusive consume meets existing consumers.
    pub fn consume(
        self: &Arc<Self>,
        tag: Arc<str>,
        sink: Arc<dyn ConsumerSink>,
        no_ack: bool,
        exclusive: bool,
    ) -> Result<()> {
        {
            let mut st = self.lock();
            if st.deleted {
                return Err(BrokerError::NotFound(format!(
                    "no queue '{}' in vhost '{}'",
                    self.name, self.vhost_name
                )));
            }
            if st.consumers.iter().any(|c| c.exclusive) || (exclusive && !st.consumers.is_empty()) {
                return Err(BrokerError::AccessRefused(format!(
                    "queue '{}' in vhost '{}' in exclusive use",
                    self.name, self.vhost_name
                )));
            }
            st.consumers.push(ConsumerEntry {
                tag,
                sink,
                no_ack,
                exclusive,
            });
            st.had_consumers = true;
            st.last_used = Instant::now();
        }
        self.dispatch();
        Ok(())
    }

    /// Remove a consumer. Returns true when the queue should now be auto-deleted.
    pub fn cancel(&self, tag: &str) -> bool {
        let mut st = self.lock();
        st.consumers.retain(|c| &*c.tag != tag);
        st.last_used = Instant::now();
        self.auto_delete && st.had_consumers && st.consumers.is_empty() && !st.deleted
    }

    /// basic.get: take one message.
    pub fn get(self: &Arc<Self>, no_ack: bool) -> Option<GetResult> {
        let mut dead = Vec::new();
        let mut settled = Vec::new();
        let res = {
            let mut st = self.lock();
            st.last_used = Instant::now();
            let now = Instant::now();
            match self.pop_live(&mut st, now, &mut dead, &mut settled) {
                None => None,
                Some(mut e) => {
                    st.stats.delivered += 1;
                    let r = GetResult {
                        message_id: e.id,
                        message: e.msg.clone(),
                        redelivered: e.redelivered,
                        remaining: st.ready.len as u64,
                    };
                    if no_ack {
                        st.stats.acked += 1;
                        self.release(&mut st, &e, &mut settled);
                    } else {
                        e.redelivered = true;
                        st.unacked.insert(e.id, e);
                    }
                    Some(r)
                }
            }
        };
        self.finish(dead, settled);
        res
    }

    /// Acknowledge delivered messages by id.
    pub fn ack(self: &Arc<Self>, ids: &[u64]) {
        let mut settled = Vec::new();
        let mut dead = Vec::new();
        {
            let mut st = self.lock();
            for id in ids {
                if let Some(e) = st.unacked.remove(id) {
                    st.stats.acked += 1;
                    self.release(&mut st, &e, &mut settled);
                }
            }
            self.dispatch_locked(&mut st, &mut dead, &mut settled);
        }
        self.finish(dead, settled);
    }

    /// Reject delivered messages: requeue them (marked redelivered) or dead-letter/drop them.
    pub fn reject(self: &Arc<Self>, ids: &[u64], requeue: bool) {
        let mut settled = Vec::new();
        let mut dead = Vec::new();
        {
            let mut st = self.lock();
            let mut entries: Vec<Entry> =
                ids.iter().filter_map(|id| st.unacked.remove(id)).collect();
            if requeue {
                entries.sort_by_key(|e| std::cmp::Reverse(e.id));
                for e in entries {
                    st.ready.push_front(e);
                }
            } else {
                for e in entries {
                    self.release(&mut st, &e, &mut settled);
                    dead.push((e.msg, DeathReason::Rejected));
                }
            }
            self.dispatch_locked(&mut st, &mut dead, &mut settled);
        }
        self.finish(dead, settled);
    }

    /// Drop all ready messages; returns how many.
    pub fn purge(self: &Arc<Self>) -> u64 {
        let mut settled = Vec::new();
        let n = {
            let mut st = self.lock();
            let entries = st.ready.drain();
            for e in &entries {
                self.release(&mut st, e, &mut settled);
            }
            entries.len() as u64
        };
        self.finish(Vec::new(), settled);
        n
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

    /// Periodic work: expire messages at the head, compact the log. Returns true when the
    /// queue has been unused for longer than x-expires and should be deleted.
    pub(crate) fn tick(self: &Arc<Self>, now: Instant) -> bool {
        let mut dead = Vec::new();
        let mut settled = Vec::new();
        let expired_queue;
        let min_live;
        let upto;
        {
            let mut st = self.lock();
            if st.deleted {
                return false;
            }
            while st
                .ready
                .front()
                .is_some_and(|e| e.expires_at.is_some_and(|t| t <= now))
            {
                if let Some(e) = st.ready.pop_front() {
                    self.release(&mut st, &e, &mut settled);
                    dead.push((e.msg, DeathReason::Expired));
                }
            }
            self.dispatch_locked(&mut st, &mut dead, &mut settled);
            expired_queue = self.args.expires.is_some_and(|ms| {
                st.consumers.is_empty()
                    && now.duration_since(st.last_used) >= Duration::from_millis(ms)
            });
            // under the lock: every offset below `upto` is settled, in `live_log`, or at or
            // above an announced append's floor
            upto = self.log.as_ref().map(|log| {
                let next = log.next_offset();
                let live = st.live_log.first().copied().unwrap_or(next);
                let appending = st.appending.iter().copied().min().unwrap_or(next);
                live.min(appending).min(next)
            });
            min_live = st.live_log.first().copied();
        }
        self.finish(dead, settled);
        self.flush_acks();
        if let (Some(log), Some(upto)) = (&self.log, upto) {
            if upto > log.start_offset()
                && (log.segment_count() > 1 || (min_live.is_none() && log.size_bytes() > (8 << 20)))
            {
                if let Err(e) = log.delete_before(upto) {
                    tracing::warn!(queue = %self.name, "log compaction failed: {e}");
                }
            }
        }
        expired_queue
    }

    /// Dead-letter messages per x-dead-letter-exchange (or drop them when none is set).
    ///
    /// Dead-lettering can cascade (a dead-lettered message expires or overflows in the next
    /// queue); the cascade runs as a loop on the outermost call, never as recursion, and a
    /// message that would come back to a queue it already died in without being rejected on
    /// the way is dropped, as RabbitMQ does (so TTL cycles end).
    fn dead_letter(&self, msgs: Vec<(Arc<Message>, DeathReason)>) {
        let Some(dlx) = self.args.dead_letter_exchange.clone() else {
            return;
        };
        let Some(vhost) = self.vhost.upgrade() else {
            return;
        };
        let nested = DEAD_LETTERS.with(|d| {
            let mut d = d.borrow_mut();
            let Some(c) = d.as_mut() else { return Some(false) };
            // dead letters set off by dead letters: bounded per operation
            c.cascaded += msgs.len();
            if c.cascaded <= MAX_DEAD_LETTER_CASCADE {
                return Some(true);
            }
            if !c.warned {
                c.warned = true;
                tracing::warn!(queue = %self.name, "dead-letter cascade over {MAX_DEAD_LETTER_CASCADE} messages (dead-letter exchanges that fan out into each other?): further dead letters of this operation are dropped");
            }
            None
        });
        let Some(nested) = nested else { return };
        let jobs = msgs.into_iter().map(|(msg, reason)| {
            let rk = self
                .args
                .dead_letter_routing_key
                .clone()
                .unwrap_or_else(|| msg.routing_key.clone());
            let dl = self.dead_lettered_copy(&msg, reason, &rk);
            let cycle = if reason == DeathReason::Rejected {
                Vec::new()
            } else {
                queues_died_in_without_rejection(&dl)
            };
            DeadLetter {
                vhost: vhost.clone(),
                exchange: dlx.clone(),
                msg: Arc::new(dl),
                cycle,
                from: self.name.clone(),
            }
        });
        DEAD_LETTERS.with(|d| {
            d.borrow_mut()
                .get_or_insert_with(Cascade::default)
                .jobs
                .extend(jobs)
        });
        if nested {
            return; // the outermost call on this thread delivers it
        }
        /// Ends the cascade even if a publish panics.
        struct Done;
        impl Drop for Done {
            fn drop(&mut self) {
                DEAD_LETTERS.with(|d| *d.borrow_mut() = None);
            }
        }
        let _done = Done;
        loop {
            let job =
                DEAD_LETTERS.with(|d| d.borrow_mut().as_mut().and_then(|c| c.jobs.pop_front()));
            let Some(j) = job else { break };
            if let Err(e) = j.vhost.publish_dead_lettered(&j.exchange, j.msg, &j.cycle) {
                tracing::debug!(queue = %j.from, "dead-lettering to '{}' failed: {e}", j.exchange);
            }
        }
    }

    fn dead_lettered_copy(&self, msg: &Message, reason: DeathReason, rk: &str) -> Message {
        let mut headers = msg.headers().cloned().unwrap_or_default();
        let mut deaths: Vec<AMQPValue> = match headers.inner().get("x-death") {
            Some(AMQPValue::FieldArray(a)) => a.as_slice().to_vec(),
            _ => Vec::new(),
        };
        let str_v = |s: &str| AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()));
        let field = |t: &FieldTable, k: &str| t.inner().get(k).cloned();
        let pos = deaths.iter().position(|d| match d {
            AMQPValue::FieldTable(t) => {
                field(t, "queue") == Some(str_v(&self.name))
                    && field(t, "reason") == Some(str_v(reason.as_str()))
            }
            _ => false,
        });
        let mut entry = match pos {
            Some(i) => match deaths.remove(i) {
                AMQPValue::FieldTable(t) => t,
                _ => FieldTable::default(),
            },
            None => FieldTable::default(),
        };
        let count = entry
            .inner()
            .get("count")
            .and_then(crate::args::value_as_i64)
            .unwrap_or(0)
            + 1;
        entry.insert("count".into(), AMQPValue::LongLongInt(count));
        entry.insert("reason".into(), str_v(reason.as_str()));
        entry.insert("queue".into(), str_v(&self.name));
        entry.insert(
            "time".into(),
            AMQPValue::Timestamp((now_ms() / 1000) as u64),
        );
        entry.insert("exchange".into(), str_v(&msg.exchange));
        entry.insert(
            "routing-keys".into(),
            AMQPValue::FieldArray(FieldArray::from(vec![str_v(&msg.routing_key)])),
        );
        if let Some(exp) = msg.properties.expiration() {
            entry.insert("original-expiration".into(), str_v(exp.as_str()));
        }
        deaths.insert(0, AMQPValue::FieldTable(entry));
        headers.insert(
            "x-death".into(),
            AMQPValue::FieldArray(FieldArray::from(deaths)),
        );
        if !headers.contains_key("x-first-death-reason") {
            headers.insert("x-first-death-reason".into(), str_v(reason.as_str()));
            headers.insert("x-first-death-queue".into(), str_v(&self.name));
            headers.insert("x-first-death-exchange".into(), str_v(&msg.exchange));
        }
        headers.insert("x-last-death-reason".into(), str_v(reason.as_str()));
        headers.insert("x-last-death-queue".into(), str_v(&self.name));
        headers.insert("x-last-death-exchange".into(), str_v(&msg.exchange));
        let mut props = msg.properties.clone().with_headers(headers);
        if props.expiration().is_some() {
            // the original expiration is recorded in x-death and removed, as RabbitMQ does
            props = strip_expiration(props);
        }
        let mut m = msg.with_properties(props);
        m.routing_key = rk.to_owned();
        m
    }
}

/// A dead-lettered message on its way to its dead-letter exchange.
struct DeadLetter {
    vhost: Arc<dyn QueueParent>,
    exchange: String,
    msg: Arc<Message>,
    /// Queues it must not reach again (a dead-letter cycle).
    cycle: Vec<String>,
    from: String,
}

/// The dead letters of one operation on this thread, delivered in order by its outermost call.
#[derive(Default)]
struct Cascade {
    jobs: VecDeque<DeadLetter>,
    /// Dead letters set off while delivering dead letters.
    cascaded: usize,
    warned: bool,
}

thread_local! {
    /// None: this thread is not dead-lettering.
    static DEAD_LETTERS: std::cell::RefCell<Option<Cascade>> =
        const { std::cell::RefCell::new(None) };
}

/// The queues named in `x-death` (newest first) up to the first rejection: routing the
/// message to one of them again would be a cycle with no consumer involved.
fn queues_died_in_without_rejection(msg: &Message) -> Vec<String> {
    let mut out = Vec::new();
    let Some(AMQPValue::FieldArray(deaths)) = msg.headers().and_then(|h| h.inner().get("x-death"))
    else {
        return out;
    };
    for d in deaths.as_slice() {
        let AMQPValue::FieldTable(t) = d else {
            continue;
        };
        let get = |k: &str| t.inner().get(k).and_then(crate::args::value_as_string);
        if get("reason").as_deref() == Some("rejected") {
            break;
        }
        if let Some(q) = get("queue") {
            out.push(q);
        }
    }
    out
}

fn strip_expiration(
    p: amq_protocol::protocol::BasicProperties,
) -> amq_protocol::protocol::BasicProperties {
    let mut out = amq_protocol::protocol::BasicProperties::default();
    macro_rules! copy {
        ($get:ident, $with:ident) => {
            if let Some(v) = p.$get().clone() {
                out = out.$with(v);
            }
        };
    }
    copy!(content_type, with_content_type);
    copy!(content_encoding, with_content_encoding);
    copy!(headers, with_headers);
    copy!(delivery_mode, with_delivery_mode);
    copy!(priority, with_priority);
    copy!(correlation_id, with_correlation_id);
    copy!(reply_to, with_reply_to);
    copy!(message_id, with_message_id);
    copy!(timestamp, with_timestamp);
    copy!(kind, with_type);
    copy!(user_id, with_user_id);
    copy!(app_id, with_app_id);
    copy!(cluster_id, with_cluster_id);
    out
}

fn decode_acks(buf: &[u8]) -> Vec<u64> {
    if buf.len() < 4 {
        return Vec::new();
    }
    let n = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    buf[4..]
        .chunks_exact(8)
        .take(n)
        .map(|c| u64::from_be_bytes(c.try_into().unwrap_or([0; 8])))
        .collect()
}
