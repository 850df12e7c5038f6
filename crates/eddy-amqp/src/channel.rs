//! Per-channel delivery state shared between the connection task and queues (which deliver
//! into it directly, under their own lock).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;

use eddy_broker::{ConsumerSink, Delivery, Queue};
use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::codec;

/// Bytes buffered for a connection before consumers stop receiving.
pub const OUTBOUND_LIMIT: usize = 1 << 20;
/// Bytes buffered for a connection before its reader stops taking frames (replies, returns
/// and get-oks to a client that does not read would otherwise grow without bound).
pub const READ_PAUSE_LIMIT: usize = 4 * OUTBOUND_LIMIT;

/// The write side of a connection: frames are appended here and a writer task flushes them.
pub struct Outbound {
    pub buf: Mutex<Vec<u8>>,
    pub notify: Notify,
    pub buffered: AtomicUsize,
    pub stalled: AtomicBool,
    pub closed: AtomicBool,
    pub wrote_since_tick: AtomicBool,
    /// Bytes the writer has put on the socket (progress, for the stalled-reader timeout).
    pub written: std::sync::atomic::AtomicU64,
}

impl Outbound {
    pub fn new() -> Arc<Self> {
        Arc::new(Outbound {
            buf: Mutex::new(Vec::with_capacity(64 * 1024)),
            notify: Notify::new(),
            buffered: AtomicUsize::new(0),
            stalled: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            wrote_since_tick: AtomicBool::new(false),
            written: Default::default(),
        })
    }

    /// Whether more than `limit` bytes wait for the writer. If so, the writer will wake the
    /// connection (its `wake`) when it takes the buffer: the flag is set before the second
    /// look, and the writer empties the buffer before it reads the flag, so a wake-up cannot be
    /// missed.
    pub fn over_limit(&self, limit: usize) -> bool {
        if self.buffered.load(Ordering::SeqCst) < limit {
            return false;
        }
        self.stalled.store(true, Ordering::SeqCst);
        self.buffered.load(Ordering::SeqCst) >= limit
    }

    /// Append frames and wake the writer. Only the append that makes the buffer non-empty
    /// wakes it: a writer busy with a write picks up everything appended meanwhile.
    pub fn with<R>(&self, f: impl FnOnce(&mut Vec<u8>) -> R) -> R {
        let mut b = self.buf.lock();
        let was_empty = b.is_empty();
        let r = f(&mut b);
        self.buffered.store(b.len(), Ordering::SeqCst);
        let wake = was_empty && !b.is_empty();
        drop(b);
        if wake {
            self.notify.notify_one();
        }
        r
    }
}

/// A delivered, unacknowledged message.
pub struct Unacked {
    pub queue: Arc<Queue>,
    pub message_id: u64,
    pub consumer: Option<Arc<ChannelConsumer>>,
}

pub struct DeliveryState {
    pub next_tag: u64,
    pub unacked: BTreeMap<u64, Unacked>,
}

/// What queues see of a channel.
pub struct ChannelShared {
    pub id: u16,
    pub out: Arc<Outbound>,
    pub frame_max: u32,
    /// basic.qos global=true (0 = unlimited)
    pub prefetch_channel: AtomicU32,
    /// basic.qos global=false (0 = unlimited), read live by every consumer of the channel
    pub prefetch_consumer: AtomicU32,
    pub unacked_count: AtomicU32,
    pub flow_active: AtomicBool,
    pub closed: AtomicBool,
    pub state: Mutex<DeliveryState>,
    /// For the management API only: consumers, confirm and tx mode.
    pub consumer_count: AtomicU32,
    pub confirm_mode: AtomicBool,
    pub tx_mode: AtomicBool,
}

impl std::fmt::Debug for ChannelShared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChannelShared")
            .field("id", &self.id)
            .finish()
    }
}

impl eddy_broker::ChannelView for ChannelShared {
    fn prefetch_count(&self) -> u32 {
        match self.prefetch_consumer.load(Ordering::Relaxed) {
            0 => self.prefetch_channel.load(Ordering::Relaxed),
            n => n,
        }
    }
    fn unacked(&self) -> u64 {
        self.state.lock().unacked.len() as u64
    }
    fn consumers(&self) -> u32 {
        self.consumer_count.load(Ordering::Relaxed)
    }
    fn confirm(&self) -> bool {
        self.confirm_mode.load(Ordering::Relaxed)
    }
    fn transactional(&self) -> bool {
        self.tx_mode.load(Ordering::Relaxed)
    }
}

impl ChannelShared {
    pub fn new(id: u16, out: Arc<Outbound>, frame_max: u32) -> Arc<Self> {
        Arc::new(ChannelShared {
            id,
            out,
            frame_max,
            prefetch_channel: AtomicU32::new(0),
            prefetch_consumer: AtomicU32::new(0),
            unacked_count: AtomicU32::new(0),
            flow_active: AtomicBool::new(true),
            closed: AtomicBool::new(false),
            state: Mutex::new(DeliveryState {
                next_tag: 0,
                unacked: BTreeMap::new(),
            }),
            consumer_count: AtomicU32::new(0),
            confirm_mode: AtomicBool::new(false),
            tx_mode: AtomicBool::new(false),
        })
    }

    /// Assign a delivery tag and write the frames of a delivery or get-ok.
    /// `method` writes the method frame given the tag.
    pub fn send_content(
        &self,
        queue: Option<(Arc<Queue>, u64, Option<Arc<ChannelConsumer>>)>,
        msg: &eddy_broker::Message,
        method: impl FnOnce(&mut Vec<u8>, u64),
    ) {
        let ch = self.id;
        let fm = self.frame_max;
        self.out.with(|buf| {
            let tag = {
                let mut st = self.state.lock();
                st.next_tag += 1;
                let tag = st.next_tag;
                if let Some((queue, message_id, consumer)) = queue {
                    st.unacked.insert(
                        tag,
                        Unacked {
                            queue,
                            message_id,
                            consumer,
                        },
                    );
                    self.unacked_count.fetch_add(1, Ordering::Relaxed);
                }
                tag
            };
            method(buf, tag);
            codec::put_content(buf, ch, &msg.raw_properties, &msg.body, fm);
        });
    }
}

impl ChannelShared {
    /// Write the frames of a message that takes no delivery tag (basic.return).
    pub fn send_untagged(&self, msg: &eddy_broker::Message, method: impl FnOnce(&mut Vec<u8>)) {
        let fm = self.frame_max;
        self.out.with(|buf| {
            method(buf);
            codec::put_content(buf, self.id, &msg.raw_properties, &msg.body, fm);
        });
    }
}

/// A consumer on a channel: the broker's [`ConsumerSink`].
pub struct ChannelConsumer {
    pub tag: Arc<str>,
    pub channel: Arc<ChannelShared>,
    pub no_ack: bool,
    pub unacked: AtomicU32,
    pub queue: Arc<Queue>,
    pub cancelled_by_broker: AtomicBool,
    /// Set once basic.consume-ok is written: no delivery may precede it.
    pub active: AtomicBool,
    /// Stream consumers: woken when credit frees up (acks) or the writer drains.
    pub credit: Notify,
    /// Stream consumers: the consumer is gone (cancel, channel or connection closed).
    pub stopped: AtomicBool,
    pub wake: Arc<Notify>,
    pub me: std::sync::Weak<ChannelConsumer>,
}

impl ConsumerSink for ChannelConsumer {
    fn can_accept(&self) -> bool {
        let ch = &self.channel;
        if !self.active.load(Ordering::Acquire)
            || ch.closed.load(Ordering::Relaxed)
            || !ch.flow_active.load(Ordering::Relaxed)
        {
            return false;
        }
        if ch.out.over_limit(OUTBOUND_LIMIT) {
            return false;
        }
        if self.no_ack {
            return true;
        }
        let pc = ch.prefetch_consumer.load(Ordering::Relaxed);
        if pc != 0 && self.unacked.load(Ordering::Relaxed) >= pc {
            return false;
        }
        let pg = ch.prefetch_channel.load(Ordering::Relaxed);
        pg == 0 || ch.unacked_count.load(Ordering::Relaxed) < pg
    }

    fn deliver(&self, d: Delivery) {
        let entry = if self.no_ack {
            None
        } else {
            self.unacked.fetch_add(1, Ordering::Relaxed);
            Some((d.queue.clone(), d.message_id, self.me.upgrade()))
        };
        let ch = self.channel.id;
        let m = &d.message;
        self.channel.send_content(entry, m, |buf, tag| {
            codec::put_deliver(
                buf,
                ch,
                &self.tag,
                tag,
                d.redelivered,
                &m.exchange,
                &m.routing_key,
            );
        });
    }

    fn cancelled(&self, _consumer_tag: &str) {
        self.cancelled_by_broker.store(true, Ordering::Relaxed);
        self.wake.notify_one();
    }
}
