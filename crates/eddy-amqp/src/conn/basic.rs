//! The basic class but publishing: qos, consume (classic and stream queues), cancel, get,
//! ack, nack, reject, recover.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use amq_protocol::protocol::{basic, AMQPClass};
use eddy_broker::{Access, Queue, VHost};
use tokio::sync::Notify;
use tracing::Instrument;

use super::error::*;
use super::state::{release_credit, requeue, short, Conn, Settle, TxOp};
use crate::channel::{ChannelConsumer, Unacked};
use crate::codec;

impl Conn {
    /// The basic class but publishing (in `publish.rs`).
    pub(super) async fn handle_basic(
        &mut self,
        id: u16,
        vhost: &Arc<VHost>,
        m: basic::AMQPMethod,
    ) -> AResult<()> {
        let conn = self.id;
        use basic::AMQPMethod as B;
        match m {
            B::Qos(q) => {
                let ch = self.channel_mut(id)?;
                if q.global {
                    ch.shared
                        .prefetch_channel
                        .store(q.prefetch_count as u32, Ordering::Relaxed);
                } else {
                    ch.shared
                        .prefetch_consumer
                        .store(q.prefetch_count as u32, Ordering::Relaxed);
                }
                self.send(id, AMQPClass::Basic(B::QosOk(basic::QosOk {})));
                self.kick_channel(id);
            }
            B::Consume(c) => {
                self.allow(Access::Read, "queue", c.queue.as_str())?;
                let q = vhost.queue_for(c.queue.as_str(), conn)?;
                // a stream consumer reads from an offset, needs a prefetch and acks manually
                let stream = match q.stream() {
                    None => None,
                    Some(p) => {
                        let ch = self.channel_mut(id)?;
                        let prefetch = ch.shared.prefetch_consumer.load(Ordering::Relaxed)
                            + ch.shared.prefetch_channel.load(Ordering::Relaxed);
                        if prefetch == 0 {
                            return Err(AmqpError::channel(PRECONDITION_FAILED, format!("PRECONDITION_FAILED - consumer prefetch count is not set for stream queue '{}'", q.name)));
                        }
                        if c.no_ack {
                            return Err(AmqpError::channel(PRECONDITION_FAILED, format!("PRECONDITION_FAILED - stream queue '{}' needs manual acknowledgements (no_ack=false)", q.name)));
                        }
                        let from = eddy_broker::stream::start_offset(
                            p,
                            c.arguments.inner().get("x-stream-offset"),
                        )?;
                        Some((p.clone(), from))
                    }
                };
                let tag = if c.consumer_tag.as_str().is_empty() {
                    format!("amq.ctag-{}", random_tag())
                } else {
                    c.consumer_tag.to_string()
                };
                let wake = self.wake.clone();
                let ch = self.channel_mut(id)?;
                if ch.consumers.contains_key(&tag) {
                    return Err(AmqpError::conn(
                        NOT_ALLOWED,
                        format!("NOT_ALLOWED - attempt to reuse consumer tag '{tag}'"),
                    ));
                }
                let tag_arc: Arc<str> = Arc::from(tag.as_str());
                let consumer = Arc::new_cyclic(|me| ChannelConsumer {
                    tag: tag_arc.clone(),
                    channel: ch.shared.clone(),
                    no_ack: c.no_ack,
                    unacked: Default::default(),
                    queue: q.clone(),
                    cancelled_by_broker: Default::default(),
                    active: Default::default(),
                    credit: Notify::new(),
                    stopped: Default::default(),
                    wake,
                    me: me.clone(),
                });
                // registered inactive: consume-ok goes out only if the queue accepts the
                // consumer, and before any delivery
                q.consume(tag_arc, consumer.clone(), c.no_ack, c.exclusive)?;
                ch.consumers.insert(tag.clone(), consumer.clone());
                ch.shared
                    .consumer_count
                    .store(ch.consumers.len() as u32, Ordering::Relaxed);
                if !c.nowait {
                    self.send(
                        id,
                        AMQPClass::Basic(B::ConsumeOk(basic::ConsumeOk {
                            consumer_tag: short(&tag),
                        })),
                    );
                }
                consumer.active.store(true, Ordering::Release);
                match stream {
                    Some((partition, from)) => {
                        tokio::spawn(
                            crate::stream::deliver(
                                consumer,
                                partition,
                                from,
                                self.broker.appends(),
                            )
                            .in_current_span(),
                        );
                    }
                    None => q.dispatch(),
                }
            }
            B::Cancel(c) => {
                let ch = self.channel_mut(id)?;
                let removed = ch.consumers.remove(c.consumer_tag.as_str());
                ch.shared
                    .consumer_count
                    .store(ch.consumers.len() as u32, Ordering::Relaxed);
                if let Some(consumer) = removed {
                    consumer.stopped.store(true, Ordering::Relaxed);
                    consumer.credit.notify_one();
                    if consumer.queue.cancel(c.consumer_tag.as_str()) {
                        eddy_broker::run_blocking(|| vhost.remove_queue(&consumer.queue));
                    }
                }
                if !c.nowait {
                    self.send(
                        id,
                        AMQPClass::Basic(B::CancelOk(basic::CancelOk {
                            consumer_tag: c.consumer_tag,
                        })),
                    );
                }
            }
            B::Publish(p) => self.basic_publish(id, p)?,
            B::Get(g) => {
                self.allow(Access::Read, "queue", g.queue.as_str())?;
                let q = vhost.queue_for(g.queue.as_str(), conn)?;
                if q.stream().is_some() {
                    return Err(AmqpError::conn(
                        NOT_IMPLEMENTED,
                        format!(
                            "NOT_IMPLEMENTED - basic.get not supported by stream queue '{}'",
                            q.name
                        ),
                    ));
                }
                let ch = self.channel_mut(id)?;
                match q.get(g.no_ack) {
                    None => self.send(id, AMQPClass::Basic(B::GetEmpty(basic::GetEmpty {}))),
                    Some(r) => {
                        let entry = if g.no_ack {
                            None
                        } else {
                            Some((q.clone(), r.message_id, None))
                        };
                        let m = &r.message;
                        ch.shared.send_content(entry, m, |buf, tag| {
                            codec::put_method(
                                buf,
                                id,
                                AMQPClass::Basic(B::GetOk(basic::GetOk {
                                    delivery_tag: tag,
                                    redelivered: r.redelivered,
                                    exchange: short(&m.exchange),
                                    routing_key: short(&m.routing_key),
                                    message_count: r.remaining as u32,
                                })),
                            )
                        });
                    }
                }
            }
            B::Ack(a) => {
                let ch = self.channel_mut(id)?;
                if let Some(tx) = &mut ch.tx {
                    tx.push(TxOp::Ack(a.delivery_tag, a.multiple));
                } else {
                    self.settle(id, a.delivery_tag, a.multiple, Settle::Ack)?;
                }
            }
            B::Nack(n) => {
                let ch = self.channel_mut(id)?;
                if let Some(tx) = &mut ch.tx {
                    tx.push(TxOp::Reject(n.delivery_tag, n.multiple, n.requeue));
                } else {
                    self.settle(id, n.delivery_tag, n.multiple, Settle::Reject(n.requeue))?;
                }
            }
            B::Reject(r) => {
                let ch = self.channel_mut(id)?;
                if let Some(tx) = &mut ch.tx {
                    tx.push(TxOp::Reject(r.delivery_tag, false, r.requeue));
                } else {
                    self.settle(id, r.delivery_tag, false, Settle::Reject(r.requeue))?;
                }
            }
            B::Recover(r) => {
                self.recover(id, r.requeue)?;
                self.send(id, AMQPClass::Basic(B::RecoverOk(basic::RecoverOk {})));
            }
            B::RecoverAsync(r) => self.recover(id, r.requeue)?,
            _ => {
                return Err(AmqpError::conn(
                    COMMAND_INVALID,
                    "COMMAND_INVALID - server-side basic method sent by client",
                ))
            }
        }
        Ok(())
    }

    /// basic.recover: every unacknowledged message of the channel back to its queue.
    fn recover(&mut self, id: u16, requeue_all: bool) -> AResult<()> {
        if !requeue_all {
            return Err(AmqpError::conn(
                NOT_IMPLEMENTED,
                "NOT_IMPLEMENTED - requeue=false",
            ));
        }
        let ch = self.channel_mut(id)?;
        let shared = ch.shared.clone();
        let all: Vec<Unacked> = std::mem::take(&mut shared.state.lock().unacked)
            .into_values()
            .collect();
        for u in &all {
            release_credit(&shared, u);
        }
        requeue(all);
        Ok(())
    }

    /// Ack or reject one delivery tag, or every one up to it (`multiple`).
    pub(super) fn settle(&mut self, id: u16, tag: u64, multiple: bool, how: Settle) -> AResult<()> {
        let ch = self.channel_mut(id)?;
        let shared = ch.shared.clone();
        let taken: Vec<Unacked> = {
            let mut st = shared.state.lock();
            if multiple {
                if tag == 0 {
                    std::mem::take(&mut st.unacked).into_values().collect()
                } else if !st.unacked.contains_key(&tag) {
                    return Err(AmqpError::channel(
                        PRECONDITION_FAILED,
                        format!("PRECONDITION_FAILED - unknown delivery tag {tag}"),
                    ));
                } else {
                    let rest = st.unacked.split_off(&(tag + 1));
                    let taken = std::mem::replace(&mut st.unacked, rest);
                    taken.into_values().collect()
                }
            } else {
                match st.unacked.remove(&tag) {
                    Some(u) => vec![u],
                    None => {
                        return Err(AmqpError::channel(
                            PRECONDITION_FAILED,
                            format!("PRECONDITION_FAILED - unknown delivery tag {tag}"),
                        ));
                    }
                }
            }
        };
        for u in &taken {
            release_credit(&shared, u);
        }
        // group per queue, keeping order
        let mut groups: Vec<(Arc<Queue>, Vec<u64>)> = Vec::new();
        for u in taken {
            match groups.iter_mut().find(|(q, _)| Arc::ptr_eq(q, &u.queue)) {
                Some((_, ids)) => ids.push(u.message_id),
                None => groups.push((u.queue, vec![u.message_id])),
            }
        }
        for (q, ids) in &groups {
            match how {
                Settle::Ack => q.ack(ids),
                Settle::Reject(requeue) => q.reject(ids, requeue),
            }
        }
        // a channel-wide prefetch frees credit for consumers of other queues too
        if shared.prefetch_channel.load(Ordering::Relaxed) != 0 {
            self.kick_channel(id);
        }
        Ok(())
    }
}

/// A unique part for server-generated consumer tags.
fn random_tag() -> String {
    use std::time::{SystemTime, UNIX_EPOCH};
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{:x}{:x}", t as u64, n)
}
