//! Stream queues (`x-queue-type: stream`): an AMQP queue that is a one-partition topic of the
//! same name. Publishing appends a record; consuming reads from an offset without removing
//! anything; Kafka clients produce to and fetch from the same log.
//!
//! AMQP message ↔ record mapping (both directions):
//!
//! | AMQP | record |
//! |---|---|
//! | body | value |
//! | `timestamp` property (seconds) | timestamp (ms); else the publish time |
//! | each header (string, number, boolean, bytes; nested tables and arrays are left out) | a header of the same name, its value as UTF-8 text or raw bytes |
//! | `content_type`, `content_encoding`, `delivery_mode`, `priority`, `correlation_id`, `reply_to`, `expiration`, `message_id`, `type`, `user_id`, `app_id`, `timestamp` | headers `amqp.content-type`, `amqp.content-encoding`, …, `amqp.app-id`, `amqp.timestamp` |
//! | exchange, routing key | headers `amqp.exchange`, `amqp.routing-key` |
//!
//! Records read by AMQP consumers get their properties back from the `amqp.*` headers; other
//! headers become AMQP headers (long strings; a null value becomes void), a record key becomes
//! the header `x-kafka-key`, and every delivery carries `x-stream-offset` (its offset).

use std::sync::Arc;

use amq_protocol::protocol::BasicProperties;
use amq_protocol::types::{AMQPValue, FieldTable, LongString, ShortString};
use bytes::Bytes;
use eddy_log::now_ms;
use eddy_records::{decode_batch, encode_batch, is_control, Record};

use crate::error::{BrokerError, Result};
use crate::message::Message;
use crate::topic::Partition;

fn text(v: &AMQPValue) -> Option<Vec<u8>> {
    use AMQPValue::*;
    Some(match v {
        Boolean(b) => b.to_string().into_bytes(),
        ShortShortInt(x) => x.to_string().into_bytes(),
        ShortShortUInt(x) => x.to_string().into_bytes(),
        ShortInt(x) => x.to_string().into_bytes(),
        ShortUInt(x) => x.to_string().into_bytes(),
        LongInt(x) => x.to_string().into_bytes(),
        LongUInt(x) => x.to_string().into_bytes(),
        LongLongInt(x) => x.to_string().into_bytes(),
        Float(x) => x.to_string().into_bytes(),
        Double(x) => x.to_string().into_bytes(),
        Timestamp(x) => x.to_string().into_bytes(),
        ShortString(s) => s.as_str().as_bytes().to_vec(),
        LongString(s) => s.as_bytes().to_vec(),
        ByteArray(b) => b.as_slice().to_vec(),
        Void => return Some(Vec::new()),
        _ => return None,
    })
}

/// A short string (at most 255 bytes, cut at a character boundary).
fn short_string(s: &str) -> ShortString {
    let mut end = s.len().min(255);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    ShortString::from(&s[..end])
}

/// RabbitMQ's interval syntax (`30s`, `10m`, `1h`, `7D`, `2W`, `1M`, `1Y`) in milliseconds;
/// None when malformed or out of range.
pub fn interval_ms(s: &str) -> Option<i64> {
    let unit = s.chars().last()?;
    let n: i64 = s.strip_suffix(unit)?.parse().ok().filter(|n| *n >= 0)?;
    let secs: i64 = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'D' => 86_400,
        'W' => 7 * 86_400,
        'M' => 30 * 86_400,
        'Y' => 365 * 86_400,
        _ => return None,
    };
    n.checked_mul(secs)?.checked_mul(1000)
}

/// An AMQP message as a record.
pub fn message_to_record(msg: &Message) -> Record {
    let p = &msg.properties;
    let mut headers: Vec<(String, Option<Bytes>)> = Vec::new();
    if let Some(h) = p.headers() {
        for (k, v) in h.inner() {
            if let Some(b) = text(v) {
                headers.push((k.as_str().to_owned(), Some(Bytes::from(b))));
            }
        }
    }
    let mut prop = |name: &str, v: Option<String>| {
        if let Some(v) = v {
            headers.push((format!("amqp.{name}"), Some(Bytes::from(v.into_bytes()))));
        }
    };
    prop(
        "content-type",
        p.content_type().as_ref().map(|s| s.to_string()),
    );
    prop(
        "content-encoding",
        p.content_encoding().as_ref().map(|s| s.to_string()),
    );
    prop("delivery-mode", p.delivery_mode().map(|d| d.to_string()));
    prop("priority", p.priority().map(|d| d.to_string()));
    prop(
        "correlation-id",
        p.correlation_id().as_ref().map(|s| s.to_string()),
    );
    prop("reply-to", p.reply_to().as_ref().map(|s| s.to_string()));
    prop("expiration", p.expiration().as_ref().map(|s| s.to_string()));
    prop("message-id", p.message_id().as_ref().map(|s| s.to_string()));
    prop("timestamp", p.timestamp().map(|t| t.to_string()));
    prop("type", p.kind().as_ref().map(|s| s.to_string()));
    prop("user-id", p.user_id().as_ref().map(|s| s.to_string()));
    prop("app-id", p.app_id().as_ref().map(|s| s.to_string()));
    prop("exchange", Some(msg.exchange.clone()));
    prop("routing-key", Some(msg.routing_key.clone()));
    Record {
        offset: 0,
        timestamp: p
            .timestamp()
            .map(|s| (s as i64).saturating_mul(1000))
            .unwrap_or_else(now_ms),
        key: None,
        value: Some(msg.body.clone()),
        headers,
    }
}

/// A record as an AMQP message for a consumer of stream `stream`.
pub fn record_to_message(rec: &Record, stream: &str) -> Message {
    let mut props = BasicProperties::default();
    let mut table = FieldTable::default();
    let mut exchange = String::new();
    let mut routing_key = stream.to_owned();
    for (k, v) in &rec.headers {
        let s = v
            .as_ref()
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .unwrap_or_default();
        let short = || short_string(&s);
        match k.strip_prefix("amqp.") {
            Some("content-type") => props = props.with_content_type(short()),
            Some("content-encoding") => props = props.with_content_encoding(short()),
            Some("delivery-mode") => {
                if let Ok(d) = s.parse() {
                    props = props.with_delivery_mode(d)
                }
            }
            Some("priority") => {
                if let Ok(d) = s.parse() {
                    props = props.with_priority(d)
                }
            }
            Some("correlation-id") => props = props.with_correlation_id(short()),
            Some("reply-to") => props = props.with_reply_to(short()),
            Some("expiration") => props = props.with_expiration(short()),
            Some("message-id") => props = props.with_message_id(short()),
            Some("timestamp") => {
                if let Ok(t) = s.parse() {
                    props = props.with_timestamp(t)
                }
            }
            Some("type") => props = props.with_type(short()),
            Some("user-id") => props = props.with_user_id(short()),
            Some("app-id") => props = props.with_app_id(short()),
            Some("exchange") => exchange = s,
            Some("routing-key") => routing_key = s,
            _ => {
                let value = match v {
                    Some(b) => AMQPValue::LongString(LongString::from(b.to_vec())),
                    None => AMQPValue::Void,
                };
                table.insert(short_string(k), value);
            }
        }
    }
    if props.timestamp().is_none() && rec.timestamp >= 0 {
        props = props.with_timestamp((rec.timestamp / 1000) as u64);
    }
    if let Some(k) = &rec.key {
        table.insert(
            "x-kafka-key".into(),
            AMQPValue::LongString(LongString::from(k.to_vec())),
        );
    }
    table.insert(
        "x-stream-offset".into(),
        AMQPValue::LongLongInt(rec.offset as i64),
    );
    props = props.with_headers(table);
    Message::new(
        exchange,
        routing_key,
        props,
        rec.value.clone().unwrap_or_default(),
    )
}

/// Append an AMQP message to a stream; returns the offset after it (to wait for).
pub fn append(partition: &Partition, msg: &Message) -> Result<u64> {
    let rec = message_to_record(msg);
    let batch = encode_batch(std::slice::from_ref(&rec));
    let base = partition.append(1, rec.timestamp, &batch)?;
    Ok(base + 1)
}

/// Records from `offset` on (up to about `max_bytes` of stored batches), skipping transaction
/// markers and records before `offset`. A batch that cannot be decoded is logged and skipped.
pub fn read(partition: &Arc<Partition>, offset: u64, max_bytes: usize) -> Result<Vec<Record>> {
    let mut out = Vec::new();
    for b in partition.read(offset, max_bytes)? {
        if is_control(&b.payload) {
            continue;
        }
        match decode_batch(b.base_offset, &b.payload) {
            Ok(records) => out.extend(records.into_iter().filter(|r| r.offset >= offset)),
            Err(e) => {
                tracing::error!(partition = ?partition, offset = b.base_offset, "skipping an unreadable batch: {e}");
            }
        }
    }
    Ok(out)
}

/// Where a new stream consumer starts, from `x-stream-offset` (RabbitMQ's values: `first`,
/// `last`, `next`, an offset, a timestamp, or an interval like `10m`, `1h`, `7D`).
pub fn start_offset(partition: &Partition, spec: Option<&AMQPValue>) -> Result<u64> {
    let (start, end) = (partition.start_offset(), partition.end_offset());
    let by_time = |ms: i64| -> Result<u64> {
        Ok(partition
            .offset_for_timestamp(ms)?
            .unwrap_or(end)
            .max(start))
    };
    let bad =
        |what: String| BrokerError::PreconditionFailed(format!("invalid x-stream-offset {what}"));
    match spec {
        None => Ok(end),
        Some(AMQPValue::Timestamp(secs)) => by_time((*secs as i64).saturating_mul(1000)),
        Some(v) => {
            if let Some(n) = crate::args::value_as_i64(v) {
                return Ok((n.max(0) as u64).clamp(start, end));
            }
            let s = crate::args::value_as_string(v).ok_or_else(|| bad(format!("{v:?}")))?;
            match s.as_str() {
                "first" => Ok(start),
                "last" => Ok(end.saturating_sub(1).max(start)),
                "next" => Ok(end),
                other => {
                    let ms = interval_ms(other).ok_or_else(|| bad(format!("'{other}'")))?;
                    by_time(now_ms().saturating_sub(ms))
                }
            }
        }
    }
}
