//! Publishing: basic.publish, the assembly of its content (header and body frames, bounded
//! by the size the header declares and the configured maximum), routing, basic.return of
//! unroutable mandatory messages, and publisher confirms (confirm.select; a per-channel task
//! sends acks/nacks in publish order once each message is durable).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use amq_protocol::frame::parsing::parse_content_header;
use amq_protocol::protocol::{basic, confirm, connection, AMQPClass};
use bytes::{Bytes, BytesMut};
use eddy_broker::{Access, Message, PublishOutcome};
use tokio::sync::mpsc;
use tracing::Instrument;

use super::error::*;
use super::state::{short, table_bool, CompletePublish, ConfirmItem, Conn, PendingPublish, TxOp};
use crate::channel::{ChannelShared, Outbound};
use crate::codec::{self, FRAME_HEADER};

impl Conn {
    /// basic.publish: checks the user may write to the exchange, then waits for the content.
    pub(super) fn basic_publish(&mut self, id: u16, p: basic::Publish) -> AResult<()> {
        if p.immediate {
            return Err(AmqpError::conn(
                NOT_IMPLEMENTED,
                "NOT_IMPLEMENTED - immediate=true",
            ));
        }
        if !self.publish_anywhere && !self.may_publish.iter().any(|x| x == p.exchange.as_str()) {
            self.allow(Access::Write, "exchange", p.exchange.as_str())?;
            if self.may_publish.len() >= 16 {
                self.may_publish.clear();
            }
            self.may_publish.push(p.exchange.to_string());
        }
        let ch = self.channel_mut(id)?;
        ch.pending = Some(PendingPublish {
            exchange: p.exchange.to_string(),
            routing_key: p.routing_key.to_string(),
            mandatory: p.mandatory,
            header: None,
            body: BytesMut::new(),
        });
        Ok(())
    }

    /// The confirm class: confirm.select starts a channel's confirm task.
    pub(super) fn handle_confirm(&mut self, id: u16, m: confirm::AMQPMethod) -> AResult<()> {
        let confirm::AMQPMethod::Select(s) = m else {
            return Err(AmqpError::conn(
                COMMAND_INVALID,
                "COMMAND_INVALID - server-side confirm method sent by client",
            ));
        };
        let out = self.out.clone();
        let ch = self.channel_mut(id)?;
        if ch.tx.is_some() {
            return Err(AmqpError::channel(
                PRECONDITION_FAILED,
                "PRECONDITION_FAILED - cannot switch from tx to confirm mode",
            ));
        }
        if ch.confirm.is_none() {
            let (txs, rx) = mpsc::unbounded_channel();
            tokio::spawn(confirm_task(rx, out, ch.shared.clone()).in_current_span());
            ch.confirm = Some((0, txs));
            ch.shared.confirm_mode.store(true, Ordering::Relaxed);
        }
        if !s.nowait {
            self.send(
                id,
                AMQPClass::Confirm(confirm::AMQPMethod::SelectOk(confirm::SelectOk {})),
            );
        }
        Ok(())
    }

    /// Block while a resource alarm is raised (RabbitMQ stops reading from publishers).
    /// Returns false when the broker is shutting down meanwhile (the publish is dropped
    /// unconfirmed; the connection is being closed).
    async fn wait_unblocked(&mut self) -> bool {
        loop {
            let a = *self.alarms.borrow_and_update();
            if !a.blocked() {
                // this wait consumed the change the select loop would have seen
                self.on_alarm();
                return true;
            }
            if !self.blocked_sent {
                self.blocked_sent = true;
                let reason = if a.memory {
                    "low on memory"
                } else {
                    "low on disk"
                };
                tracing::warn!(peer = %self.peer, "publisher blocked: {reason}");
                if table_bool(&self.client_caps, "connection.blocked") {
                    self.send(
                        0,
                        AMQPClass::Connection(connection::AMQPMethod::Blocked(
                            connection::Blocked {
                                reason: short(reason),
                            },
                        )),
                    );
                }
            }
            tokio::select! {
                r = self.alarms.changed() => if r.is_err() { return true },
                _ = self.shutdown.changed() => {}
            }
            if *self.shutdown.borrow() {
                return false;
            }
        }
    }

    /// A content header or body frame: assembled into the pending publish, which is
    /// published (or held by a transaction) once complete.
    pub(super) async fn handle_content(
        &mut self,
        kind: u8,
        id: u16,
        payload: Bytes,
    ) -> AResult<()> {
        let max_size = self.cfg.max_message_size;
        let frame_max = self.frame_max as usize;
        let ch = self.channel_mut(id)?;
        if ch.closing {
            return Ok(());
        }
        let Some(p) = ch.pending.as_mut() else {
            return Err(AmqpError::conn(UNEXPECTED_FRAME, format!("UNEXPECTED_FRAME - content frame on channel {id} without a preceding basic.publish")));
        };
        if kind == FRAME_HEADER {
            if p.header.is_some() {
                return Err(AmqpError::conn(
                    UNEXPECTED_FRAME,
                    format!("UNEXPECTED_FRAME - second content header on channel {id}"),
                ));
            }
            if let Err(e) = codec::check_header_nesting(&payload) {
                return Err(AmqpError::conn(
                    SYNTAX_ERROR,
                    format!("SYNTAX_ERROR - content header: {e}"),
                ));
            }
            let h = match parse_content_header(&payload[..]) {
                Ok(([], h)) => h,
                _ => {
                    return Err(AmqpError::conn(
                        FRAME_ERROR,
                        "FRAME_ERROR - malformed content header",
                    ))
                }
            };
            if h.class_id != 60 {
                return Err(AmqpError::conn(
                    FRAME_ERROR,
                    format!(
                        "FRAME_ERROR - content header for unknown class {}",
                        h.class_id
                    ),
                ));
            }
            if h.body_size > max_size {
                ch.pending = None;
                return Err(AmqpError::channel(PRECONDITION_FAILED, format!("PRECONDITION_FAILED - message size {} is larger than configured max size {max_size}", h.body_size)).on_publish());
            }
            let raw = payload.slice(12..);
            // grow with the data that arrives, not with what the header claims
            p.body.reserve((h.body_size as usize).min(frame_max));
            p.header = Some((h.properties, raw, h.body_size));
        } else {
            let Some((_, _, size)) = &p.header else {
                return Err(AmqpError::conn(
                    UNEXPECTED_FRAME,
                    format!(
                        "UNEXPECTED_FRAME - body frame on channel {id} before the content header"
                    ),
                ));
            };
            if (p.body.len() + payload.len()) as u64 > *size {
                return Err(AmqpError::conn(
                    FRAME_ERROR,
                    format!("FRAME_ERROR - body exceeds declared size {size}"),
                ));
            }
            p.body.extend_from_slice(&payload);
        }
        let complete = matches!(&p.header, Some((_, _, size)) if p.body.len() as u64 == *size);
        if !complete {
            return Ok(());
        }
        let p = ch.pending.take().expect("checked above");
        let (props, raw, _) = p.header.expect("checked above");
        let message = Arc::new(Message {
            exchange: p.exchange.clone(),
            routing_key: p.routing_key.clone(),
            properties: props,
            raw_properties: raw,
            body: p.body.freeze(),
        });
        let cp = CompletePublish {
            exchange: p.exchange,
            routing_key: p.routing_key,
            mandatory: p.mandatory,
            message,
        };
        // an alarm holds transactional publishes too (they count toward memory)
        if self.alarms.borrow().blocked() && !self.wait_unblocked().await {
            return Ok(());
        }
        if let Some(tx) = &mut self.channel_mut(id)?.tx {
            tx.push(TxOp::Publish(cp));
            return Ok(());
        }
        let confirm_tag = match &mut self.channel_mut(id)?.confirm {
            Some((n, _)) => {
                *n += 1;
                Some(*n)
            }
            None => None,
        };
        let result = self.do_publish(id, cp).await;
        if let (Some(tag), Some(ch)) = (confirm_tag, self.channels.get(&id)) {
            if let Some((_, txs)) = &ch.confirm {
                let item = match &result {
                    Ok(o) => ConfirmItem {
                        tag,
                        // RabbitMQ: rejected by any queue (x-overflow reject-publish) → nack
                        nack: o.rejected,
                        waits: o.durable.clone(),
                    },
                    Err(_) => ConfirmItem {
                        tag,
                        nack: true,
                        waits: vec![],
                    },
                };
                let _ = txs.send(item);
            }
        }
        result.map(|_| ())
    }

    /// Route a complete message; a mandatory one that reaches no queue comes back as
    /// basic.return. Errors name basic.publish.
    pub(super) async fn do_publish(
        &mut self,
        id: u16,
        p: CompletePublish,
    ) -> AResult<PublishOutcome> {
        self.route(id, p).map_err(AmqpError::on_publish)
    }

    /// Route a complete message (mandatory ones that reach no queue come back); errors name
    /// no method.
    pub(super) fn route(&mut self, id: u16, p: CompletePublish) -> AResult<PublishOutcome> {
        let vhost = self.vhost();
        if let Err(e) = p.message.expiration_ms() {
            return Err(e.into());
        }
        // as RabbitMQ: a message may not claim to be from another user
        if let Some(claimed) = p.message.properties.user_id() {
            if claimed.as_str() != self.user {
                return Err(AmqpError::channel(
                    PRECONDITION_FAILED,
                    format!(
                        "PRECONDITION_FAILED - user_id property set to '{}' but authenticated user was '{}'",
                        claimed.as_str(),
                        self.user
                    ),
                ));
            }
        }
        let outcome = vhost.publish(&p.exchange, p.message.clone())?;
        if p.mandatory && !outcome.routed && !outcome.rejected {
            if let Some(ch) = self.channels.get(&id) {
                let m = &p.message;
                // a return takes no delivery tag
                ch.shared.send_untagged(m, |buf| {
                    codec::put_method(
                        buf,
                        id,
                        AMQPClass::Basic(basic::AMQPMethod::Return(basic::Return {
                            reply_code: NO_ROUTE,
                            reply_text: short("NO_ROUTE"),
                            exchange: short(&p.exchange),
                            routing_key: short(&p.routing_key),
                        })),
                    )
                });
            }
        }
        Ok(outcome)
    }
}

/// Sends publisher confirms in order once each publish is durable, coalescing runs of acks
/// into one `multiple` ack.
/// Stops when the channel closes: a reopened channel with the same number must not receive
/// the old channel's confirms.
async fn confirm_task(
    mut rx: mpsc::UnboundedReceiver<ConfirmItem>,
    out: Arc<Outbound>,
    channel: Arc<ChannelShared>,
) {
    let ch = channel.id;
    let mut batch: Vec<ConfirmItem> = Vec::new();
    while let Some(first) = rx.recv().await {
        batch.push(first);
        while batch.len() < 4096 {
            match rx.try_recv() {
                Ok(i) => batch.push(i),
                Err(_) => break,
            }
        }
        let mut results: Vec<(u64, bool)> = Vec::with_capacity(batch.len());
        for item in batch.drain(..) {
            let mut nack = item.nack;
            for (log, off) in &item.waits {
                if let Err(e) = log.wait_durable(*off).await {
                    tracing::error!("publish not durable, sending basic.nack: {e}");
                    nack = true;
                }
            }
            results.push((item.tag, nack));
        }
        if out.closed.load(Ordering::Relaxed) {
            break;
        }
        let written = out.with(|buf| {
            // checked under the buffer lock: channel.close-ok is appended after `closed` is set
            if channel.closed.load(Ordering::Relaxed) {
                return false;
            }
            let mut i = 0;
            while i < results.len() {
                if results[i].1 {
                    codec::put_method(
                        buf,
                        ch,
                        AMQPClass::Basic(basic::AMQPMethod::Nack(basic::Nack {
                            delivery_tag: results[i].0,
                            multiple: false,
                            requeue: false,
                        })),
                    );
                    i += 1;
                    continue;
                }
                let mut j = i;
                while j + 1 < results.len() && !results[j + 1].1 {
                    j += 1;
                }
                let multiple = j > i;
                codec::put_method(
                    buf,
                    ch,
                    AMQPClass::Basic(basic::AMQPMethod::Ack(basic::Ack {
                        delivery_tag: results[j].0,
                        multiple,
                    })),
                );
                i = j + 1;
            }
            true
        });
        if !written {
            break;
        }
    }
}
