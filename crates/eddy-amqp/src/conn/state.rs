//! The connection's state: its phase, channels, user and vhost, and what changes them
//! outside any one method — closing a channel or the connection, cleaning up, waking
//! consumers, alarms, shutdown — plus the channel class (open, close, flow). The types the
//! method families share (pending publishes, transactions, confirms) live here too, so that
//! the family files depend on this one and never on each other.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use amq_protocol::protocol::{basic, channel, connection, AMQPClass};
use amq_protocol::types::{AMQPValue, FieldTable, LongString, ShortString};
use bytes::{Bytes, BytesMut};
use eddy_broker::{Access, Alarms, Broker, Message, Queue, VHost};
use tokio::sync::{mpsc, watch, Notify};

use super::error::*;
use crate::channel::{ChannelConsumer, ChannelShared, Outbound, Unacked};
use crate::{codec, AmqpConfig};

/// A channel's state in the connection task.
pub(super) struct Channel {
    pub(super) shared: Arc<ChannelShared>,
    pub(super) closing: bool,
    pub(super) pending: Option<PendingPublish>,
    pub(super) confirm: Option<(u64, mpsc::UnboundedSender<ConfirmItem>)>,
    pub(super) tx: Option<TxBuffer>,
    pub(super) consumers: HashMap<String, Arc<ChannelConsumer>>,
}

#[derive(PartialEq, Eq, Clone, Copy)]
/// Where the connection is in its life.
pub(super) enum Phase {
    Header,
    StartOk,
    TuneOk,
    Open,
    Running,
    Closing,
}

/// One connection's state, owned by its reader task; the files of this folder each add the
/// methods of one family to it.
pub(super) struct Conn {
    pub(super) id: u64,
    pub(super) broker: Broker,
    pub(super) cfg: Arc<AmqpConfig>,
    pub(super) peer: SocketAddr,
    pub(super) out: Arc<Outbound>,
    pub(super) phase: Phase,
    pub(super) frame_max: u32,
    pub(super) channel_max: u16,
    pub(super) heartbeat: u16,
    pub(super) vhost: Option<Arc<VHost>>,
    pub(super) user: String,
    pub(super) channels: HashMap<u16, Channel>,
    pub(super) client_caps: FieldTable,
    pub(super) wake: Arc<Notify>,
    pub(super) blocked_sent: bool,
    /// Turns true when the broker shuts down.
    pub(super) shutdown: watch::Receiver<bool>,
    /// The client closed the connection: after close-ok, leave closing the socket to it (as
    /// RabbitMQ does; clients such as lapin report an early EOF as an error).
    pub(super) linger: bool,
    pub(super) alarms: watch::Receiver<Alarms>,
    /// The connection's entry in the broker's list (user, vhost, channels, bytes).
    pub(super) info: eddy_broker::ConnectionHandle,
    /// The user may publish to every exchange (write `.*`, decided at connection.open): no
    /// check per publish. Otherwise the exchanges it was already allowed to publish to (a
    /// short list, cleared when it grows past 16).
    pub(super) publish_anywhere: bool,
    pub(super) may_publish: Vec<String>,
    /// The connection's span: `user` and `vhost` are recorded in it once known.
    pub(super) span: tracing::Span,
}

impl Conn {
    pub(super) fn close_connection(&mut self, e: AmqpError) {
        if self.phase == Phase::Closing {
            return;
        }
        tracing::info!(code = e.code, "closing connection: {}", e.text);
        self.send(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Close(connection::Close {
                reply_code: e.code,
                reply_text: ShortString::from(truncate(&e.text)),
                class_id: e.class_id,
                method_id: e.method_id,
            })),
        );
        self.phase = Phase::Closing;
        self.cleanup();
        // close the socket after the client's close-ok or a short grace period (waking the
        // reader, which may be waiting for a close-ok that never comes)
        let out = self.out.clone();
        let wake = self.wake.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(2)).await;
            out.closed.store(true, Ordering::Relaxed);
            out.notify.notify_one();
            wake.notify_one();
        });
    }

    pub(super) fn close_channel(&mut self, id: u16, e: AmqpError) {
        tracing::debug!(channel = id, code = e.code, "closing channel: {}", e.text);
        if let Some(ch) = self.channels.get_mut(&id) {
            if ch.closing {
                return;
            }
            ch.closing = true;
        }
        self.cleanup_channel(id, false);
        self.send(
            id,
            AMQPClass::Channel(channel::AMQPMethod::Close(channel::Close {
                reply_code: e.code,
                reply_text: ShortString::from(truncate(&e.text)),
                class_id: e.class_id,
                method_id: e.method_id,
            })),
        );
    }

    /// Requeue unacked messages and cancel consumers of a channel.
    pub(super) fn cleanup_channel(&mut self, id: u16, remove: bool) {
        let Some(ch) = self.channels.get_mut(&id) else {
            return;
        };
        let consumers: Vec<_> = ch.consumers.drain().collect();
        ch.pending = None;
        ch.confirm = None;
        ch.tx = None;
        let shared = ch.shared.clone();
        for (tag, c) in consumers {
            c.stopped.store(true, Ordering::Relaxed);
            c.credit.notify_one();
            if c.queue.cancel(&tag) {
                if let Some(v) = &self.vhost {
                    eddy_broker::run_blocking(|| v.remove_queue(&c.queue));
                }
            }
        }
        shared.closed.store(true, Ordering::Relaxed);
        let unacked: Vec<Unacked> = {
            let mut st = shared.state.lock();
            std::mem::take(&mut st.unacked).into_values().collect()
        };
        requeue(unacked);
        if remove {
            self.channels.remove(&id);
            self.info.channel_closed(id);
        }
    }

    pub(super) fn cleanup(&mut self) {
        let ids: Vec<u16> = self.channels.keys().copied().collect();
        for id in ids {
            self.cleanup_channel(id, true);
        }
        eddy_broker::run_blocking(|| self.broker.connection_closed(self.id));
    }

    /// The writer drained or a consumer was cancelled by the broker: resume deliveries and
    /// send cancel notifications.
    pub(super) fn on_wake(&mut self) {
        let mut cancelled = Vec::new();
        for (id, ch) in &self.channels {
            for (tag, c) in &ch.consumers {
                if c.cancelled_by_broker.load(Ordering::Relaxed) {
                    c.stopped.store(true, Ordering::Relaxed);
                    c.credit.notify_one();
                    cancelled.push((*id, tag.clone()));
                } else if c.queue.stream().is_some() {
                    c.credit.notify_one();
                } else {
                    c.queue.dispatch();
                }
            }
        }
        let notify = table_bool(&self.client_caps, "consumer_cancel_notify");
        for (id, tag) in cancelled {
            if let Some(ch) = self.channels.get_mut(&id) {
                ch.consumers.remove(&tag);
                ch.shared
                    .consumer_count
                    .store(ch.consumers.len() as u32, Ordering::Relaxed);
            }
            if notify {
                self.send(
                    id,
                    AMQPClass::Basic(basic::AMQPMethod::Cancel(basic::Cancel {
                        consumer_tag: short(&tag),
                        nowait: true,
                    })),
                );
            }
        }
    }

    pub(super) fn on_alarm(&mut self) {
        let a = *self.alarms.borrow_and_update();
        if !a.blocked() && self.blocked_sent {
            self.blocked_sent = false;
            if table_bool(&self.client_caps, "connection.blocked") {
                self.send(
                    0,
                    AMQPClass::Connection(connection::AMQPMethod::Unblocked(
                        connection::Unblocked {},
                    )),
                );
            }
        }
    }

    /// The broker shuts down: 320 CONNECTION_FORCED, as RabbitMQ says it.
    pub(super) fn on_shutdown(&mut self) {
        self.close_connection(AmqpError::conn(
            CONNECTION_FORCED,
            "CONNECTION_FORCED - broker forced connection closure with reason 'shutdown'",
        ));
    }

    /// Whether the user may do `access` to the named resource in this connection's vhost
    /// (RabbitMQ's configure/write/read permissions; 403 ACCESS_REFUSED on the channel if not).
    pub(super) fn allow(&self, access: Access, kind: &str, name: &str) -> AResult<()> {
        let vhost = self.vhost.as_ref().map_or("", |v| v.name.as_str());
        self.broker
            .users()
            .check(&self.user, vhost, access, kind, name)
            .map_err(AmqpError::from)
    }

    /// The checks for arguments that route elsewhere (dead-letter, alternate exchanges).
    pub(super) fn allow_arguments(
        &self,
        kind: &str,
        name: &str,
        arguments: &FieldTable,
    ) -> AResult<()> {
        let vhost = self.vhost.as_ref().map_or("", |v| v.name.as_str());
        self.broker
            .users()
            .check_declare_arguments(&self.user, vhost, kind, name, arguments)
            .map_err(AmqpError::from)
    }

    pub(super) fn vhost(&self) -> Arc<VHost> {
        self.vhost
            .clone()
            .expect("running connections have a vhost")
    }

    pub(super) fn channel_mut(&mut self, id: u16) -> AResult<&mut Channel> {
        self.channels.get_mut(&id).ok_or_else(|| {
            AmqpError::conn(
                CHANNEL_ERROR,
                format!("CHANNEL_ERROR - expected 'channel.open' on channel {id}"),
            )
        })
    }

    /// The channel class: open, close, close-ok, flow.
    pub(super) fn handle_channel(&mut self, id: u16, m: channel::AMQPMethod) -> AResult<()> {
        use channel::AMQPMethod as C;
        match m {
            C::Open(_) => {
                if self.channels.contains_key(&id) {
                    return Err(AmqpError::conn(
                        CHANNEL_ERROR,
                        format!("CHANNEL_ERROR - second 'channel.open' seen on channel {id}"),
                    ));
                }
                if id > self.channel_max {
                    return Err(AmqpError::conn(
                        NOT_ALLOWED,
                        format!(
                            "NOT_ALLOWED - channel {id} above channel_max {}",
                            self.channel_max
                        ),
                    ));
                }
                let shared = ChannelShared::new(id, self.out.clone(), self.frame_max);
                self.info.channel_opened(id, shared.clone());
                self.channels.insert(
                    id,
                    Channel {
                        shared,
                        closing: false,
                        pending: None,
                        confirm: None,
                        tx: None,
                        consumers: HashMap::new(),
                    },
                );
                self.send(id, AMQPClass::Channel(C::OpenOk(channel::OpenOk {})));
            }
            C::Close(_) => {
                self.channel_mut(id)?;
                self.cleanup_channel(id, true);
                self.send(id, AMQPClass::Channel(C::CloseOk(channel::CloseOk {})));
            }
            C::CloseOk(_) => {
                if self.channels.get(&id).is_some_and(|c| c.closing) {
                    self.channels.remove(&id);
                    self.info.channel_closed(id);
                }
            }
            C::Flow(f) => {
                if !self.takes_methods(id)? {
                    return Ok(());
                }
                let ch = self.channel_mut(id)?;
                ch.shared.flow_active.store(f.active, Ordering::Relaxed);
                self.send(
                    id,
                    AMQPClass::Channel(C::FlowOk(channel::FlowOk { active: f.active })),
                );
                if f.active {
                    self.kick_channel(id);
                }
            }
            _ => {
                if self.takes_methods(id)? {
                    return Err(AmqpError::conn(
                        COMMAND_INVALID,
                        "COMMAND_INVALID - unexpected channel method",
                    ));
                }
            }
        }
        Ok(())
    }

    /// Whether an open channel takes a method now: false while it is closing (everything
    /// but close/close-ok is dropped then); an error on a channel that is not open, or one
    /// waiting for a publish's content.
    pub(super) fn takes_methods(&mut self, id: u16) -> AResult<bool> {
        let ch = self.channel_mut(id)?;
        if ch.closing {
            return Ok(false);
        }
        if ch.pending.is_some() {
            return Err(AmqpError::conn(
                UNEXPECTED_FRAME,
                format!("UNEXPECTED_FRAME - expected content header for class 60, got a method on channel {id}"),
            ));
        }
        Ok(true)
    }

    /// Resume deliveries of a channel's consumers (prefetch or flow changed, credit freed).
    pub(super) fn kick_channel(&self, id: u16) {
        if let Some(ch) = self.channels.get(&id) {
            for c in ch.consumers.values() {
                c.queue.dispatch();
            }
        }
    }

    /// Send a method frame.
    pub(super) fn send(&self, ch: u16, m: AMQPClass) {
        self.out.with(|b| codec::put_method(b, ch, m));
    }
}

/// A publish waiting for its content.
pub(super) struct PendingPublish {
    pub(super) exchange: String,
    pub(super) routing_key: String,
    pub(super) mandatory: bool,
    pub(super) header: Option<(eddy_broker::BasicProperties, Bytes, u64)>,
    pub(super) body: BytesMut,
}

/// A publish whose content is complete.
pub(super) struct CompletePublish {
    pub(super) exchange: String,
    pub(super) routing_key: String,
    pub(super) mandatory: bool,
    pub(super) message: Arc<Message>,
}

/// A confirm to send once its writes are durable.
pub(super) struct ConfirmItem {
    pub(super) tag: u64,
    pub(super) nack: bool,
    pub(super) waits: Vec<(Arc<eddy_broker::Log>, u64)>,
}

/// The uncommitted work of a transactional channel. Its messages count toward the memory
/// watermark until it is committed (then the queues count them) or dropped.
pub(super) struct TxBuffer {
    pub(super) ops: Vec<TxOp>,
    pub(super) bytes: i64,
    pub(super) broker: Broker,
}

impl TxBuffer {
    pub(super) fn new(broker: &Broker) -> Self {
        TxBuffer {
            ops: Vec::new(),
            bytes: 0,
            broker: broker.clone(),
        }
    }
    pub(super) fn push(&mut self, op: TxOp) {
        if let TxOp::Publish(p) = &op {
            let n = p.message.memory_size() as i64;
            self.bytes += n;
            self.broker.track_memory(n);
        }
        self.ops.push(op);
    }
}

impl Drop for TxBuffer {
    fn drop(&mut self) {
        self.broker.track_memory(-self.bytes);
    }
}

/// A publish, ack or reject held until commit.
pub(super) enum TxOp {
    Publish(CompletePublish),
    Ack(u64, bool),
    Reject(u64, bool, bool),
}

/// What an ack, nack or reject does.
#[derive(Clone, Copy)]
pub(super) enum Settle {
    Ack,
    Reject(bool),
}

/// A settled delivery frees prefetch credit.
pub(super) fn release_credit(shared: &ChannelShared, u: &Unacked) {
    shared.unacked_count.fetch_sub(1, Ordering::Relaxed);
    if let Some(c) = &u.consumer {
        c.unacked.fetch_sub(1, Ordering::Relaxed);
        if u.queue.stream().is_some() {
            c.credit.notify_one();
        }
    }
}

/// Every one of these messages back to its queue (a closed channel, basic.recover).
pub(super) fn requeue(unacked: Vec<Unacked>) {
    let mut groups: Vec<(Arc<Queue>, Vec<u64>)> = Vec::new();
    for u in unacked {
        match groups.iter_mut().find(|(q, _)| Arc::ptr_eq(q, &u.queue)) {
            Some((_, ids)) => ids.push(u.message_id),
            None => groups.push((u.queue, vec![u.message_id])),
        }
    }
    for (q, ids) in groups {
        q.reject(&ids, true);
    }
}

pub(super) fn short(s: &str) -> ShortString {
    ShortString::from(s)
}

pub(super) fn long(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()))
}

pub(super) fn table_bool(t: &FieldTable, k: &str) -> bool {
    matches!(t.inner().get(k), Some(AMQPValue::Boolean(true)))
}
