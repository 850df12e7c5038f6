//! Publishing and getting messages over the API.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use eddy_broker::types::ShortString;
use eddy_broker::{Access, BasicProperties, Message};
use serde_json::{json, Map, Value};

use crate::api::json::{from_table, string, to_table};
use crate::api::{vhost_of, ApiError, ApiResult, Caller};
use crate::server::Response;

pub(crate) fn publish(c: &Caller<'_>, vh: &str, exchange: &str, b: &Value) -> ApiResult {
    let exchange = if exchange == "amq.default" {
        ""
    } else {
        exchange
    };
    c.check(vh, Access::Write, "exchange", exchange)?;
    let v = vhost_of(c.api, vh)?;
    // a resource alarm holds every publisher: this one is told instead of kept waiting
    let alarms = *c.api.broker.alarms().borrow();
    if alarms.blocked() {
        let what = if alarms.memory { "memory" } else { "disk" };
        return Err(ApiError::new(
            503,
            "resource_alarm",
            format!("publishing is blocked while the {what} alarm is raised"),
        ));
    }
    let routing_key = string(b, "routing_key")?.unwrap_or("").to_owned();
    let payload = string(b, "payload")?.unwrap_or("");
    let body = match string(b, "payload_encoding")?.unwrap_or("string") {
        "string" => payload.as_bytes().to_vec(),
        "base64" => base64::engine::general_purpose::STANDARD
            .decode(payload)
            .map_err(|e| ApiError::bad(format!("payload is not base64: {e}")))?,
        other => return Err(ApiError::bad(format!("unknown payload_encoding {other:?}"))),
    };
    let mut props = BasicProperties::default();
    if let Some(Value::Object(p)) = b.get("properties") {
        for (k, x) in p {
            let s = || -> Result<ShortString, ApiError> {
                x.as_str()
                    .map(|s| ShortString::from(s.to_owned()))
                    .ok_or_else(|| ApiError::bad(format!("property {k} must be a string")))
            };
            props = match k.as_str() {
                "delivery_mode" => props.with_delivery_mode(
                    x.as_u64()
                        .filter(|m| *m == 1 || *m == 2)
                        .ok_or_else(|| ApiError::bad("delivery_mode is 1 or 2"))?
                        as u8,
                ),
                "content_type" => props.with_content_type(s()?),
                "content_encoding" => props.with_content_encoding(s()?),
                "correlation_id" => props.with_correlation_id(s()?),
                "reply_to" => props.with_reply_to(s()?),
                "expiration" => props.with_expiration(s()?),
                "message_id" => props.with_message_id(s()?),
                "type" => props.with_type(s()?),
                "user_id" => {
                    let u = s()?;
                    if u.as_str() != c.user.name {
                        return Err(ApiError::bad(format!(
                            "user_id property set to '{}' but authenticated user was '{}'",
                            u.as_str(),
                            c.user.name
                        )));
                    }
                    props.with_user_id(u)
                }
                "app_id" => props.with_app_id(s()?),
                "priority" => props.with_priority(
                    x.as_u64()
                        .filter(|p| *p <= 255)
                        .ok_or_else(|| ApiError::bad("priority is 0 to 255"))?
                        as u8,
                ),
                "timestamp" => props.with_timestamp(
                    x.as_u64()
                        .ok_or_else(|| ApiError::bad("timestamp is seconds since the epoch"))?,
                ),
                "headers" => props.with_headers(to_table(x)?),
                other => return Err(ApiError::bad(format!("unknown property {other:?}"))),
            };
        }
    }
    let msg = Arc::new(Message::new(
        exchange,
        routing_key,
        props,
        Bytes::from(body),
    ));
    let out = v.publish(exchange, msg)?;
    // as a confirm would: answer once the message is durable
    let rt = tokio::runtime::Handle::current();
    for (log, offset) in &out.durable {
        let durable = rt.block_on(tokio::time::timeout(
            Duration::from_secs(30),
            log.wait_durable(*offset),
        ));
        if !matches!(durable, Ok(Ok(()))) {
            return Err(ApiError::new(
                500,
                "internal_error",
                "the message was routed but could not be made durable",
            ));
        }
    }
    Ok(Response::json(200, &json!({"routed": out.routed})))
}

pub(crate) fn get_messages(c: &Caller<'_>, vh: &str, name: &str, b: &Value) -> ApiResult {
    c.check(vh, Access::Read, "queue", name)?;
    let v = vhost_of(c.api, vh)?;
    let q = v.queue_for(name, 0)?;
    let count = b
        .get("count")
        .map(|x| {
            x.as_u64()
                .or_else(|| x.as_str().and_then(|s| s.parse().ok()))
        })
        .unwrap_or(Some(1))
        .filter(|n| (1..=10_000).contains(n))
        .ok_or_else(|| ApiError::bad("count is 1 to 10000"))?;
    let requeue = match string(b, "ackmode")?.unwrap_or("ack_requeue_true") {
        "ack_requeue_true" | "reject_requeue_true" => true,
        "ack_requeue_false" | "reject_requeue_false" => false,
        other => return Err(ApiError::bad(format!("unknown ackmode {other:?}"))),
    };
    let encoding = string(b, "encoding")?.unwrap_or("auto");
    let truncate = b.get("truncate").and_then(Value::as_u64);
    let mut taken = Vec::new();
    let mut out = Vec::new();
    for _ in 0..count {
        let Some(g) = q.get(false) else { break };
        let m = &g.message;
        let mut body = m.body.to_vec();
        if let Some(t) = truncate {
            body.truncate(t as usize);
        }
        let (payload, enc) = match (encoding, std::str::from_utf8(&body)) {
            ("auto", Ok(s)) => (s.to_owned(), "string"),
            _ => (
                base64::engine::general_purpose::STANDARD.encode(&body),
                "base64",
            ),
        };
        out.push(json!({
            "payload": payload,
            "payload_encoding": enc,
            "payload_bytes": m.body.len(),
            "redelivered": g.redelivered,
            "exchange": m.exchange,
            "routing_key": m.routing_key,
            "message_count": g.remaining,
            "properties": properties_json(&m.properties),
        }));
        taken.push(g.message_id);
    }
    if requeue {
        q.reject(&taken, true);
    } else {
        q.ack(&taken);
    }
    Ok(Response::json(200, &Value::Array(out)))
}

pub(crate) fn properties_json(p: &BasicProperties) -> Value {
    let mut m = Map::new();
    let strings = [
        ("content_type", p.content_type()),
        ("content_encoding", p.content_encoding()),
        ("correlation_id", p.correlation_id()),
        ("reply_to", p.reply_to()),
        ("expiration", p.expiration()),
        ("message_id", p.message_id()),
        ("type", p.kind()),
        ("user_id", p.user_id()),
        ("app_id", p.app_id()),
    ];
    for (k, v) in strings {
        if let Some(v) = v {
            m.insert(k.to_owned(), json!(v.as_str()));
        }
    }
    if let Some(x) = p.headers() {
        m.insert("headers".into(), from_table(x));
    }
    if let Some(x) = p.delivery_mode() {
        m.insert("delivery_mode".into(), json!(x));
    }
    if let Some(x) = p.priority() {
        m.insert("priority".into(), json!(x));
    }
    if let Some(x) = p.timestamp() {
        m.insert("timestamp".into(), json!(x));
    }
    Value::Object(m)
}
