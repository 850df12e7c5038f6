//! Dead-lettering: the `x-death` copy of a message, dead-letter cycles, and the cascade run as
//! a loop by the outermost call on a thread.

use std::collections::VecDeque;
use std::sync::Arc;

use amq_protocol::types::{AMQPValue, FieldArray, FieldTable, LongString};
use eddy_log::now_ms;

use super::{DeathReason, Queue, QueueParent};
use crate::message::Message;

/// Most dead letters that dead letters may set off in one operation (a reject of many messages
/// dead-letters them all; what they set off downstream is bounded).
const MAX_DEAD_LETTER_CASCADE: usize = 1_000;

impl Queue {
    /// Dead-letter messages per x-dead-letter-exchange (or drop them when none is set).
    ///
    /// Dead-lettering can cascade (a dead-lettered message expires or overflows in the next
    /// queue); the cascade runs as a loop on the outermost call, never as recursion, and a
    /// message that would come back to a queue it already died in without being rejected on
    /// the way is dropped, as RabbitMQ does (so TTL cycles end).
    pub(super) fn dead_letter(&self, msgs: Vec<(Arc<Message>, DeathReason)>) {
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
