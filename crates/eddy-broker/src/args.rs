//! Queue arguments (`x-*`) parsed and validated once at declare time.

use amq_protocol::types::{AMQPValue, FieldTable};

use crate::error::{BrokerError, Result};

/// What happens when a queue reaches `x-max-length` / `x-max-length-bytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overflow {
    /// Drop (or dead-letter) the oldest ready message.
    DropHead,
    /// Refuse the new message (publisher confirm is a nack).
    RejectPublish,
    /// Refuse the new message and dead-letter it.
    RejectPublishDlx,
}

/// Parsed queue arguments.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueArgs {
    /// `x-message-ttl` in ms.
    pub message_ttl: Option<u64>,
    /// `x-expires` in ms: delete the queue after this long unused.
    pub expires: Option<u64>,
    /// `x-max-length` in ready messages.
    pub max_length: Option<u64>,
    /// `x-max-length-bytes` in ready message body bytes.
    pub max_length_bytes: Option<u64>,
    /// `x-overflow`.
    pub overflow: Overflow,
    /// `x-dead-letter-exchange`.
    pub dead_letter_exchange: Option<String>,
    /// `x-dead-letter-routing-key`.
    pub dead_letter_routing_key: Option<String>,
    /// `x-max-priority` (capped at 255).
    pub max_priority: Option<u8>,
    /// `x-queue-type`: classic, quorum or stream.
    pub queue_type: String,
}

impl Default for QueueArgs {
    fn default() -> Self {
        QueueArgs {
            message_ttl: None,
            expires: None,
            max_length: None,
            max_length_bytes: None,
            overflow: Overflow::DropHead,
            dead_letter_exchange: None,
            dead_letter_routing_key: None,
            max_priority: None,
            queue_type: "classic".into(),
        }
    }
}

/// An integer from any AMQP integer type.
pub fn value_as_i64(v: &AMQPValue) -> Option<i64> {
    use AMQPValue::*;
    Some(match v {
        ShortShortInt(x) => *x as i64,
        ShortShortUInt(x) => *x as i64,
        ShortInt(x) => *x as i64,
        ShortUInt(x) => *x as i64,
        LongInt(x) => *x as i64,
        LongUInt(x) => *x as i64,
        LongLongInt(x) => *x,
        Timestamp(x) => *x as i64,
        _ => return None,
    })
}

/// A string from a short or long string value.
pub fn value_as_string(v: &AMQPValue) -> Option<String> {
    match v {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

impl QueueArgs {
    /// Parse and validate declare arguments, naming the argument and queue on error (406).
    pub fn parse(args: &FieldTable, queue: &str, vhost: &str) -> Result<QueueArgs> {
        let mut out = QueueArgs::default();
        let invalid = |arg: &str, why: &str| {
            BrokerError::PreconditionFailed(format!(
                "invalid arg '{arg}' for queue '{queue}' in vhost '{vhost}': {why}"
            ))
        };
        let uint = |arg: &str, v: &AMQPValue, allow_zero: bool| -> Result<u64> {
            match value_as_i64(v) {
                Some(n) if n > 0 || (allow_zero && n == 0) => Ok(n as u64),
                Some(n) => Err(invalid(arg, &format!("{{value_negative,{n}}}"))),
                None => Err(invalid(
                    arg,
                    &format!("{{unacceptable_type,{:?}}}", v.get_type()),
                )),
            }
        };
        let string = |arg: &str, v: &AMQPValue| -> Result<String> {
            value_as_string(v)
                .ok_or_else(|| invalid(arg, &format!("{{unacceptable_type,{:?}}}", v.get_type())))
        };
        for (k, v) in args.inner() {
            let k = k.as_str();
            match k {
                "x-message-ttl" => out.message_ttl = Some(uint(k, v, true)?),
                "x-expires" => out.expires = Some(uint(k, v, false)?),
                "x-max-length" => out.max_length = Some(uint(k, v, true)?),
                "x-max-length-bytes" => out.max_length_bytes = Some(uint(k, v, true)?),
                "x-overflow" => {
                    out.overflow = match string(k, v)?.as_str() {
                        "drop-head" => Overflow::DropHead,
                        "reject-publish" => Overflow::RejectPublish,
                        "reject-publish-dlx" => Overflow::RejectPublishDlx,
                        other => {
                            return Err(invalid(k, &format!("{{unknown_overflow,'{other}'}}")))
                        }
                    }
                }
                "x-dead-letter-exchange" => out.dead_letter_exchange = Some(string(k, v)?),
                "x-dead-letter-routing-key" => out.dead_letter_routing_key = Some(string(k, v)?),
                "x-max-priority" => {
                    let p = uint(k, v, true)?;
                    out.max_priority = Some(p.min(255) as u8);
                }
                "x-queue-type" => {
                    let t = string(k, v)?;
                    match t.as_str() {
                        "classic" | "quorum" | "stream" => out.queue_type = t,
                        other => {
                            return Err(invalid(
                                k,
                                &format!("{{unsupported_queue_type,'{other}'}}"),
                            ))
                        }
                    }
                }
                _ => {} // other arguments (x-single-active-consumer, x-dead-letter-strategy, ...) are accepted and kept
            }
        }
        if out.dead_letter_routing_key.is_some() && out.dead_letter_exchange.is_none() {
            return Err(invalid(
                "x-dead-letter-routing-key",
                "x-dead-letter-exchange must be set too",
            ));
        }
        Ok(out)
    }
}

/// Refuse argument values that cannot be stored: non-finite floats (metadata is JSON, where
/// NaN and infinities do not exist, and a stored null would stop the next start).
pub fn check_storable(args: &FieldTable, what: &str) -> Result<()> {
    fn ok(v: &AMQPValue) -> bool {
        match v {
            AMQPValue::Float(f) => f.is_finite(),
            AMQPValue::Double(d) => d.is_finite(),
            AMQPValue::FieldArray(a) => a.as_slice().iter().all(ok),
            AMQPValue::FieldTable(t) => t.inner().values().all(ok),
            _ => true,
        }
    }
    match args.inner().iter().find(|(_, v)| !ok(v)) {
        None => Ok(()),
        Some((k, _)) => Err(BrokerError::PreconditionFailed(format!(
            "invalid arg '{}' for {what}: NaN or infinite numbers are not accepted",
            k.as_str()
        ))),
    }
}
