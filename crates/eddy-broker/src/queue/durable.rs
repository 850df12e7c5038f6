//! The durable part of a queue: its log's record format, recovery, and batched ack records.
//!
//! A durable queue's log (under `data/queues/`) holds one record per `eddy-log` batch, with
//! record count 1 and as timestamp the wall clock at append (recovery takes what is left of a
//! message's TTL from it). The first byte is the record's kind:
//!
//! | kind | bytes after the kind |
//! |---|---|
//! | `1` publish | the message in [`Message::encode`] form; its log offset identifies it |
//! | `2` acks | `count` u32 big-endian, then `count` u64 big-endian offsets of publish records now settled |
//!
//! Publish records are appended by `publish.rs`, outside the queue lock. Ack records are
//! written in batches (`ACK_BATCH` settled offsets, or the next tick): a lost ack means a
//! redelivery, never a lost message. Recovery replays the log: publishes minus acks, in offset
//! order, are the ready messages (marked redelivered). Whole segments below the oldest live
//! message are deleted by the tick (`housekeeping.rs`).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use eddy_log::now_ms;

use super::ready::Entry;
use super::Queue;
use crate::error::Result;
use crate::message::Message;

pub(super) const REC_PUBLISH: u8 = 1;
const REC_ACK: u8 = 2;
/// Ack records are written once this many settled offsets are pending (or on the next tick).
pub(super) const ACK_BATCH: usize = 1024;

impl Queue {
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
