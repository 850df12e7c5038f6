//! Enqueueing a routed message: max-length, TTL 0, and for a persistent message in a durable
//! queue the append to the log, outside the queue lock.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use eddy_log::now_ms;

use super::durable::REC_PUBLISH;
use super::ready::Entry;
use super::{DeathReason, Enqueued, Queue, State};
use crate::args::Overflow;
use crate::error::Result;
use crate::message::Message;

impl Queue {
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
}
