//! Definitions export and import (RabbitMQ's format plus topics).

use eddy_broker::exchange::Destination;
use eddy_broker::{ExchangeDeclare, Permission, QueueDeclare};
use serde_json::{json, Map, Value};

use crate::api::json::{body, flag, from_table, string, to_table};
use crate::api::topics::topic_config;
use crate::api::users::{permissions, put_user, users};
use crate::api::{check_name, vhost_of, ApiError, ApiResult, Caller};
use crate::server::{Request, Response};
use crate::Api;

/// RabbitMQ's definitions document (plus Eddy's topics).
pub fn definitions(api: &Api) -> Value {
    let b = &api.broker;
    let mut queues = Vec::new();
    let mut exchanges = Vec::new();
    let mut bindings = Vec::new();
    let mut vhosts: Vec<String> = b.vhosts().iter().map(|v| v.name.clone()).collect();
    vhosts.sort();
    for v in b.vhosts() {
        for q in v.queues() {
            if !q.durable || q.exclusive_owner.is_some() {
                continue;
            }
            queues.push(json!({
                "name": q.name, "vhost": v.name, "durable": true, "auto_delete": q.auto_delete,
                "arguments": from_table(&q.arguments),
            }));
        }
        for e in v.exchanges() {
            if e.name.is_empty() || e.name.starts_with("amq.") || !e.durable {
                continue;
            }
            exchanges.push(json!({
                "name": e.name, "vhost": v.name, "type": e.kind.as_str(), "durable": true,
                "auto_delete": e.auto_delete, "internal": e.internal, "arguments": from_table(&e.arguments),
            }));
        }
        // only bindings between things the document holds (a binding to a transient queue
        // would make the import fail)
        let kept_queues: std::collections::HashSet<String> = v
            .queues()
            .iter()
            .filter(|q| q.durable && q.exclusive_owner.is_none())
            .map(|q| q.name.clone())
            .collect();
        let kept_exchanges: std::collections::HashSet<String> = v
            .exchanges()
            .iter()
            .filter(|e| e.durable)
            .map(|e| e.name.clone())
            .collect();
        for e in v.exchanges() {
            if !e.durable || e.name.is_empty() {
                continue;
            }
            for bd in e.bindings() {
                let (dest, kind) = match &bd.destination {
                    Destination::Queue(q) => (q.clone(), "queue"),
                    Destination::Exchange(x) => (x.clone(), "exchange"),
                };
                let kept = match kind {
                    "queue" => kept_queues.contains(&dest),
                    _ => kept_exchanges.contains(&dest),
                };
                if !kept {
                    continue;
                }
                bindings.push(json!({
                    "source": e.name, "vhost": v.name, "destination": dest, "destination_type": kind,
                    "routing_key": bd.routing_key, "arguments": from_table(&bd.arguments),
                }));
            }
        }
    }
    let topics: Vec<Value> = b
        .topics()
        .iter()
        .map(|t| {
            let config: Map<String, Value> = t
                .config()
                .entries()
                .into_iter()
                .map(|(k, v)| (k.to_owned(), json!(v)))
                .collect();
            json!({"name": t.name, "partitions": t.partition_count(), "config": config})
        })
        .collect();
    json!({
        "rabbit_version": "3.13.0",
        "rabbitmq_version": "3.13.0",
        "product_name": "Eddy",
        "product_version": env!("CARGO_PKG_VERSION"),
        "users": users(api),
        "vhosts": vhosts.iter().map(|v| json!({"name": v})).collect::<Vec<_>>(),
        "permissions": permissions(api),
        "queues": queues,
        "exchanges": exchanges,
        "bindings": bindings,
        "topics": topics,
        "parameters": [],
        "policies": [],
        "global_parameters": [],
    })
}

pub(crate) fn list<'a>(d: &'a Value, key: &str) -> Result<&'a [Value], ApiError> {
    match d.get(key) {
        None | Some(Value::Null) => Ok(&[]),
        Some(Value::Array(a)) => Ok(a),
        Some(_) => Err(ApiError::bad(format!("{key} must be a list"))),
    }
}

pub(crate) fn req_str<'a>(v: &'a Value, key: &str, what: &str) -> Result<&'a str, ApiError> {
    string(v, key)?.ok_or_else(|| ApiError::bad(format!("{what} without {key}")))
}

/// Import a definitions document (RabbitMQ's, or one exported here): users, vhosts,
/// permissions, exchanges, queues, bindings, topics. What exists is left as it is (a queue
/// declared with other arguments is an error, as a redeclare would be).
pub fn import_definitions(api: &Api, d: &Value) -> Result<(), ApiError> {
    if !d.is_object() {
        return Err(ApiError::bad("definitions are a JSON object"));
    }
    let b = &api.broker;
    for v in list(d, "vhosts")? {
        b.declare_vhost(req_str(v, "name", "a vhost")?)?;
    }
    for u in list(d, "users")? {
        let name = req_str(u, "name", "a user")?;
        put_user(api, name, u)?;
    }
    for p in list(d, "permissions")? {
        let vh = req_str(p, "vhost", "a permission")?;
        b.declare_vhost(vh)?;
        b.users().set_permission(Permission {
            user: req_str(p, "user", "a permission")?.to_owned(),
            vhost: vh.to_owned(),
            configure: req_str(p, "configure", "a permission")?.to_owned(),
            write: req_str(p, "write", "a permission")?.to_owned(),
            read: req_str(p, "read", "a permission")?.to_owned(),
        })?;
    }
    for e in list(d, "exchanges")? {
        let vh = req_str(e, "vhost", "an exchange")?;
        let v = vhost_of(api, vh)?;
        let name = req_str(e, "name", "an exchange")?;
        check_name("an exchange", name)?;
        v.declare_exchange(ExchangeDeclare {
            name: name.to_owned(),
            kind: req_str(e, "type", "an exchange")?.to_owned(),
            passive: false,
            durable: flag(e, "durable", true)?,
            auto_delete: flag(e, "auto_delete", false)?,
            internal: flag(e, "internal", false)?,
            arguments: to_table(e.get("arguments").unwrap_or(&Value::Null))?,
        })?;
    }
    for q in list(d, "queues")? {
        let vh = req_str(q, "vhost", "a queue")?;
        let v = vhost_of(api, vh)?;
        let name = req_str(q, "name", "a queue")?;
        check_name("a queue", name)?;
        v.declare_queue(
            QueueDeclare {
                name: name.to_owned(),
                server_named: false,
                passive: false,
                durable: flag(q, "durable", true)?,
                exclusive: false,
                auto_delete: flag(q, "auto_delete", false)?,
                arguments: to_table(q.get("arguments").unwrap_or(&Value::Null))?,
            },
            0,
        )?;
    }
    for bd in list(d, "bindings")? {
        let vh = req_str(bd, "vhost", "a binding")?;
        let v = vhost_of(api, vh)?;
        let source = req_str(bd, "source", "a binding")?;
        let dest = req_str(bd, "destination", "a binding")?;
        let key = string(bd, "routing_key")?.unwrap_or("");
        let args = to_table(bd.get("arguments").unwrap_or(&Value::Null))?;
        match req_str(bd, "destination_type", "a binding")? {
            "queue" => v.bind_queue(dest, source, key, args, 0)?,
            "exchange" => v.bind_exchange(dest, source, key, args)?,
            other => return Err(ApiError::bad(format!("unknown destination_type {other:?}"))),
        }
    }
    for t in list(d, "topics")? {
        let name = req_str(t, "name", "a topic")?;
        if b.topic(name).is_some() {
            continue;
        }
        let partitions = t.get("partitions").and_then(Value::as_u64).unwrap_or(1) as usize;
        b.create_topic(name, partitions, topic_config(t.get("config"))?)?;
    }
    Ok(())
}

/// `GET /api/definitions`.
pub(crate) fn export(c: &Caller<'_>) -> ApiResult {
    c.need_admin()?;
    Ok(Response::json(200, &definitions(c.api)))
}

/// `POST /api/definitions`.
pub(crate) fn import(c: &Caller<'_>, req: &Request) -> ApiResult {
    c.need_admin()?;
    import_definitions(c.api, &body(req)?)?;
    Ok(Response::empty(204))
}
