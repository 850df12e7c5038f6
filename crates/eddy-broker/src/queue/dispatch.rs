//! Consumers and the messages they take: dispatch under the queue lock, basic.get, ack, reject,
//! purge, and the work left for after the lock (ack records, dead letters).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use super::durable::ACK_BATCH;
use super::ready::Entry;
use super::{ConsumerEntry, ConsumerSink, DeathReason, Delivery, GetResult, Queue, State};
use crate::error::{BrokerError, Result};
use crate::message::Message;

impl Queue {
    /// Forget a message for good: memory accounting and, if logged, an ack record to write.
    pub(super) fn release(&self, st: &mut State, e: &Entry, settled: &mut Vec<u64>) {
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

    pub(super) fn dispatch_locked(
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
    pub(super) fn finish(&self, dead: Vec<(Arc<Message>, DeathReason)>, settled: Vec<u64>) {
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
}
