//! Queues, exchanges and bindings: listing (with rates and the queueing view), declaring,
//! binding.

use std::sync::Arc;

use eddy_broker::exchange::Destination;
use eddy_broker::types::AMQPValue;
use eddy_broker::{Access, ExchangeDeclare, QueueDeclare};
use serde_json::{json, Value};

use crate::api::json::{flag, from_table, string, to_table};
use crate::api::{check_name, one, some, vhost_of, window, ApiError, ApiResult, Caller};
use crate::server::{Request, Response};
use crate::stats::{message_stats, Queueing, Reading, RATE_WINDOW};

/// The vhost asked for (or all), keeping those the caller may see.
pub(crate) fn visible_vhosts(
    c: &Caller<'_>,
    vhost: Option<&str>,
) -> Result<Vec<Arc<eddy_broker::VHost>>, ApiError> {
    let all = match vhost {
        Some(v) => vec![vhost_of(c.api, v)?],
        None => c.api.broker.vhosts(),
    };
    Ok(all.into_iter().filter(|v| c.sees(&v.name)).collect())
}

pub(crate) fn queues(
    c: &Caller<'_>,
    vhost: Option<&str>,
    req: &Request,
) -> Result<Value, ApiError> {
    let window = window(req)?;
    let mut out = Vec::new();
    for v in visible_vhosts(c, vhost)? {
        let mut qs = v.queues();
        qs.sort_by(|a, b| a.name.cmp(&b.name));
        for q in qs {
            let counts = q.counts();
            let now = Reading {
                at: std::time::Instant::now(),
                stats: counts.stats,
            };
            let rates = c.api.history.queue_base(&v.name, &q.name, RATE_WINDOW);
            let qbase = c.api.history.queue_base(&v.name, &q.name, window);
            let queueing = qbase.map(|b| Queueing::between(&b, &now, &counts));
            out.push(json!({
                "name": q.name,
                "vhost": v.name,
                "type": if q.stream().is_some() { "stream" } else { "classic" },
                "durable": q.durable,
                "auto_delete": q.auto_delete,
                "exclusive": q.exclusive_owner.is_some(),
                "arguments": from_table(&q.arguments),
                "messages": counts.ready + counts.unacked,
                "messages_ready": counts.ready,
                "messages_unacknowledged": counts.unacked,
                "message_bytes_ready": counts.ready_bytes,
                "consumers": counts.consumers,
                "state": "running",
                "message_stats": message_stats(rates.as_ref(), &now),
                "queueing": queueing.map(|q| q.to_json()),
            }));
        }
    }
    Ok(Value::Array(out))
}

pub(crate) fn declare_queue(c: &Caller<'_>, vh: &str, name: &str, b: &Value) -> ApiResult {
    c.check(vh, Access::Configure, "queue", name)?;
    check_name("a queue", name)?;
    let v = vhost_of(c.api, vh)?;
    let existed = v.queue(name).is_some();
    let mut arguments = to_table(b.get("arguments").unwrap_or(&Value::Null))?;
    c.api
        .broker
        .users()
        .check_declare_arguments(&c.user.name, vh, "queue", name, &arguments)?;
    if let Some(t) = string(b, "type")? {
        if t != "classic" {
            arguments.insert("x-queue-type".into(), AMQPValue::LongString(t.into()));
        }
    }
    v.declare_queue(
        QueueDeclare {
            name: name.to_owned(),
            server_named: false,
            passive: false,
            durable: flag(b, "durable", true)?,
            exclusive: false,
            auto_delete: flag(b, "auto_delete", false)?,
            arguments,
        },
        0,
    )?;
    Ok(Response::empty(if existed { 204 } else { 201 }))
}

pub(crate) fn exchanges(c: &Caller<'_>, vhost: Option<&str>) -> Result<Value, ApiError> {
    let mut out = Vec::new();
    for v in visible_vhosts(c, vhost)? {
        let mut es = v.exchanges();
        es.sort_by(|a, b| a.name.cmp(&b.name));
        for e in es {
            out.push(json!({
                "name": e.name,
                "vhost": v.name,
                "type": e.kind.as_str(),
                "durable": e.durable,
                "auto_delete": e.auto_delete,
                "internal": e.internal,
                "arguments": from_table(&e.arguments),
            }));
        }
    }
    Ok(Value::Array(out))
}

pub(crate) fn declare_exchange(c: &Caller<'_>, vh: &str, name: &str, b: &Value) -> ApiResult {
    c.check(vh, Access::Configure, "exchange", name)?;
    check_name("an exchange", name)?;
    let v = vhost_of(c.api, vh)?;
    let existed = v.exchange(name).is_some();
    let arguments = to_table(b.get("arguments").unwrap_or(&Value::Null))?;
    c.api
        .broker
        .users()
        .check_declare_arguments(&c.user.name, vh, "exchange", name, &arguments)?;
    v.declare_exchange(ExchangeDeclare {
        name: name.to_owned(),
        kind: string(b, "type")?
            .ok_or_else(|| ApiError::bad("type is required (direct, fanout, topic, headers)"))?
            .to_owned(),
        passive: false,
        durable: flag(b, "durable", true)?,
        auto_delete: flag(b, "auto_delete", false)?,
        internal: flag(b, "internal", false)?,
        arguments,
    })?;
    Ok(Response::empty(if existed { 204 } else { 201 }))
}

pub(crate) fn bindings(c: &Caller<'_>, vhost: Option<&str>) -> Result<Value, ApiError> {
    let mut out = Vec::new();
    for v in visible_vhosts(c, vhost)? {
        for e in v.exchanges() {
            for b in e.bindings() {
                let (dest, kind) = match &b.destination {
                    Destination::Queue(q) => (q.clone(), "queue"),
                    Destination::Exchange(x) => (x.clone(), "exchange"),
                };
                out.push(json!({
                    "source": e.name,
                    "vhost": v.name,
                    "destination": dest,
                    "destination_type": kind,
                    "routing_key": b.routing_key,
                    "arguments": from_table(&b.arguments),
                    "properties_key": if b.routing_key.is_empty() { "~".to_owned() } else { b.routing_key.clone() },
                }));
            }
        }
    }
    Ok(Value::Array(out))
}

pub(crate) fn bind(
    c: &Caller<'_>,
    vh: &str,
    source: &str,
    kind: &str,
    dest: &str,
    b: &Value,
) -> ApiResult {
    let v = vhost_of(c.api, vh)?;
    let key = string(b, "routing_key")?.unwrap_or("");
    let args = to_table(b.get("arguments").unwrap_or(&Value::Null))?;
    c.check(vh, Access::Read, "exchange", source)?;
    if kind == "q" {
        c.check(vh, Access::Write, "queue", dest)?;
        v.bind_queue(dest, source, key, args, 0)?;
    } else {
        c.check(vh, Access::Write, "exchange", dest)?;
        v.bind_exchange(dest, source, key, args)?;
    }
    Ok(Response::empty(201))
}

/// `GET /api/queues/{vhost}/{name}`.
pub(crate) fn queue(c: &Caller<'_>, vh: &str, name: &str, req: &Request) -> ApiResult {
    one(
        queues(c, Some(vh), req)?,
        |q| q["name"] == name,
        || format!("no queue '{name}' in vhost '{vh}'"),
    )
}

/// `DELETE /api/queues/{vhost}/{name}` (`?if-unused=true`, `?if-empty=true`).
pub(crate) fn delete_queue(c: &Caller<'_>, vh: &str, name: &str, req: &Request) -> ApiResult {
    c.check(vh, Access::Configure, "queue", name)?;
    let v = vhost_of(c.api, vh)?;
    if v.queue(name).is_none() {
        return Err(ApiError::not_found(format!(
            "no queue '{name}' in vhost '{vh}'"
        )));
    }
    v.delete_queue(
        name,
        req.param("if-unused") == Some("true"),
        req.param("if-empty") == Some("true"),
        0,
    )?;
    Ok(Response::empty(204))
}

/// `DELETE /api/queues/{vhost}/{name}/contents`.
pub(crate) fn purge_queue(c: &Caller<'_>, vh: &str, name: &str) -> ApiResult {
    c.check(vh, Access::Read, "queue", name)?;
    vhost_of(c.api, vh)?.purge_queue(name, 0)?;
    Ok(Response::empty(204))
}

/// `GET /api/exchanges/{vhost}/{name}` (`amq.default` is the default exchange).
pub(crate) fn exchange(c: &Caller<'_>, vh: &str, name: &str) -> ApiResult {
    let want = if name == "amq.default" { "" } else { name };
    one(
        exchanges(c, Some(vh))?,
        |e| e["name"] == want,
        || format!("no exchange '{name}' in vhost '{vh}'"),
    )
}

/// `DELETE /api/exchanges/{vhost}/{name}` (`?if-unused=true`).
pub(crate) fn delete_exchange(c: &Caller<'_>, vh: &str, name: &str, req: &Request) -> ApiResult {
    c.check(vh, Access::Configure, "exchange", name)?;
    vhost_of(c.api, vh)?.delete_exchange(name, req.param("if-unused") == Some("true"))?;
    Ok(Response::empty(204))
}

/// `DELETE /api/bindings/{vhost}/e/{source}/{q|e}/{dest}/{props}`: `props` is RabbitMQ's
/// properties key, the routing key or `~` for an empty one.
pub(crate) fn unbind(
    c: &Caller<'_>,
    vh: &str,
    source: &str,
    kind: &str,
    dest: &str,
    props: &str,
) -> ApiResult {
    let key = if props == "~" { "" } else { props };
    let v = vhost_of(c.api, vh)?;
    c.check(vh, Access::Read, "exchange", source)?;
    let binding = v
        .exchange(source)
        .and_then(|e| {
            e.bindings().into_iter().find(|b| {
                b.routing_key == key
                    && match (&b.destination, kind) {
                        (Destination::Queue(q), "q") => q == dest,
                        (Destination::Exchange(x), "e") => x == dest,
                        _ => false,
                    }
            })
        })
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "no binding from '{source}' to '{dest}' with key '{key}' in vhost '{vh}'"
            ))
        })?;
    if kind == "q" {
        c.check(vh, Access::Write, "queue", dest)?;
        v.unbind_queue(dest, source, key, binding.arguments, 0)?;
    } else {
        c.check(vh, Access::Write, "exchange", dest)?;
        v.unbind_exchange(dest, source, key, binding.arguments)?;
    }
    Ok(Response::empty(204))
}

/// `GET /api/queues/{vhost}/{name}/bindings`.
pub(crate) fn queue_bindings(c: &Caller<'_>, vh: &str, name: &str) -> ApiResult {
    let mine = some(bindings(c, Some(vh))?, |b| {
        b["destination"] == name && b["destination_type"] == "queue"
    });
    Ok(Response::json(200, &mine))
}

/// `GET /api/exchanges/{vhost}/{name}/bindings/{source|destination}`.
pub(crate) fn exchange_bindings(c: &Caller<'_>, vh: &str, name: &str, side: &str) -> ApiResult {
    let name = if name == "amq.default" { "" } else { name };
    let mine = some(bindings(c, Some(vh))?, |b| {
        if side == "source" {
            b["source"] == name
        } else {
            b["destination"] == name && b["destination_type"] == "exchange"
        }
    });
    Ok(Response::json(200, &mine))
}
