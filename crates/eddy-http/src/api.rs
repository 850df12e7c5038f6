//! The management API: RabbitMQ's paths and JSON shapes where they exist (so existing scripts,
//! `rabbitmqadmin`-style tools and monitoring keep working), plus Eddy's topics and groups.
//!
//! Every `/api` call needs HTTP Basic credentials of a user with a management tag
//! (`administrator`, `monitoring`, `management` or `policymaker`). Administrators may do
//! everything; `monitoring` users see every vhost; `management` users see the vhosts they have
//! permissions in. Declaring, deleting, publishing, getting and purging go through the same
//! configure/write/read permission checks as AMQP. Users, vhosts, permissions and definitions
//! imports are for administrators.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use eddy_broker::exchange::Destination;
use eddy_broker::types::{AMQPValue, FieldArray, FieldTable, LongString, ShortString};
use eddy_broker::{
    Access, BasicProperties, Broker, BrokerError, ExchangeDeclare, Message, Permission,
    QueueDeclare, TopicConfig, User,
};
use serde_json::{json, Map, Value};

use crate::server::{percent_decode, Request, Response};
use crate::stats::{message_stats, History, Queueing, Reading, QUEUEING_WINDOW, RATE_WINDOW};

/// What the API serves from.
pub struct Api {
    /// The broker.
    pub broker: Broker,
    /// Readings for rates.
    pub history: Arc<History>,
    /// Listeners to report: (protocol, address).
    pub listeners: Vec<(String, std::net::SocketAddr)>,
    /// Stream jobs' latest reports, by name.
    pub jobs: parking_lot::Mutex<std::collections::BTreeMap<String, (std::time::Instant, Value)>>,
}

/// An API error: an HTTP status, RabbitMQ's `error` word and a reason.
#[derive(Debug)]
pub struct ApiError {
    /// Status.
    pub status: u16,
    /// `bad_request`, `not_found`, …
    pub error: &'static str,
    /// What was wrong.
    pub reason: String,
}

impl ApiError {
    fn new(status: u16, error: &'static str, reason: impl Into<String>) -> ApiError {
        ApiError {
            status,
            error,
            reason: reason.into(),
        }
    }
    fn bad(reason: impl Into<String>) -> ApiError {
        ApiError::new(400, "bad_request", reason)
    }
    fn not_found(reason: impl Into<String>) -> ApiError {
        ApiError::new(404, "not_found", reason)
    }
    fn forbidden(reason: impl Into<String>) -> ApiError {
        ApiError::new(403, "access_refused", reason)
    }
    /// As a response.
    pub fn response(&self) -> Response {
        let mut r = Response::json(
            self.status,
            &json!({"error": self.error, "reason": self.reason}),
        );
        if self.status == 401 {
            r.headers
                .push(("WWW-Authenticate", "Basic realm=\"Eddy Management\"".into()));
        }
        r
    }
}

impl From<BrokerError> for ApiError {
    fn from(e: BrokerError) -> ApiError {
        let status = match &e {
            BrokerError::NotFound(_) => 404,
            BrokerError::AccessRefused(_) | BrokerError::NotAllowed(_) => 403,
            BrokerError::ResourceLocked(_) | BrokerError::AlreadyExists(_) => 409,
            BrokerError::PreconditionFailed(_) | BrokerError::CommandInvalid(_) => 400,
            BrokerError::NotImplemented(_) => 501,
            BrokerError::ResourceError(_) => 503,
            BrokerError::Storage(_) | BrokerError::Internal(_) => 500,
        };
        let word = match status {
            404 => "not_found",
            403 => "access_refused",
            409 => "conflict",
            400 => "bad_request",
            _ => "internal_error",
        };
        ApiError::new(status, word, e.to_string())
    }
}

type ApiResult = Result<Response, ApiError>;

const MANAGEMENT_TAGS: [&str; 4] = ["administrator", "monitoring", "management", "policymaker"];

/// Check the request's Basic credentials.
pub fn authenticate(api: &Api, req: &Request) -> Result<User, ApiError> {
    let unauthorized = |why: &str| ApiError::new(401, "not_authorised", why);
    let Some(h) = req.header("authorization") else {
        return Err(unauthorized("Login failed: credentials required"));
    };
    let creds = h
        .strip_prefix("Basic ")
        .and_then(|b| {
            base64::engine::general_purpose::STANDARD
                .decode(b.trim())
                .ok()
        })
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(|| unauthorized("Login failed: malformed Basic credentials"))?;
    let (name, pass) = creds.split_once(':').unwrap_or((&creds, ""));
    let loopback = req.peer.ip().is_loopback();
    match api.broker.users().authenticate(name, pass, loopback) {
        Ok(u) if u.tags.iter().any(|t| MANAGEMENT_TAGS.contains(&t.as_str())) => Ok(u),
        Ok(_) => {
            tracing::warn!(peer = %req.peer, user = name, "HTTP API login refused: not a management user");
            Err(unauthorized("Login failed: not a management user"))
        }
        Err(e) => {
            tracing::warn!(peer = %req.peer, user = name, "HTTP API login failed: {e}");
            Err(unauthorized(&format!("Login failed: {e}")))
        }
    }
}

/// Who is asking, and what they may see.
struct Caller<'a> {
    user: &'a User,
    api: &'a Api,
}

impl Caller<'_> {
    fn admin(&self) -> bool {
        self.user.has_tag("administrator")
    }
    fn sees_all(&self) -> bool {
        self.admin() || self.user.has_tag("monitoring")
    }
    fn sees(&self, vhost: &str) -> bool {
        self.sees_all()
            || self
                .api
                .broker
                .users()
                .can_access_vhost(&self.user.name, vhost)
    }
    fn need_admin(&self) -> Result<(), ApiError> {
        if self.admin() {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!(
                "user '{}' is not an administrator",
                self.user.name
            )))
        }
    }
    fn check(&self, vhost: &str, access: Access, kind: &str, name: &str) -> Result<(), ApiError> {
        self.api
            .broker
            .users()
            .check(&self.user.name, vhost, access, kind, name)
            .map_err(ApiError::from)
    }
}

/// Path segments, percent-decoded.
fn segments(path: &str) -> Result<Vec<String>, ApiError> {
    path.trim_start_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .map(|s| percent_decode(s, false).map_err(ApiError::bad))
        .collect()
}

fn body(req: &Request) -> Result<Value, ApiError> {
    if req.body.iter().all(u8::is_ascii_whitespace) {
        return Ok(json!({}));
    }
    serde_json::from_slice(&req.body)
        .map_err(|e| ApiError::bad(format!("the request body is not JSON: {e}")))
}

/// JSON → an AMQP field value (integers as long-long, other numbers as double).
pub fn to_amqp(v: &Value) -> Result<AMQPValue, ApiError> {
    Ok(match v {
        Value::Null => AMQPValue::Void,
        Value::Bool(b) => AMQPValue::Boolean(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => AMQPValue::LongLongInt(i),
            None => {
                let f = n.as_f64().unwrap_or(f64::NAN);
                if !f.is_finite() {
                    return Err(ApiError::bad("numbers must be finite"));
                }
                AMQPValue::Double(f)
            }
        },
        Value::String(s) => AMQPValue::LongString(LongString::from(s.as_bytes().to_vec())),
        Value::Array(a) => {
            let mut arr = FieldArray::default();
            for x in a {
                arr.push(to_amqp(x)?);
            }
            AMQPValue::FieldArray(arr)
        }
        Value::Object(_) => AMQPValue::FieldTable(to_table(v)?),
    })
}

/// A JSON object → a field table.
pub fn to_table(v: &Value) -> Result<FieldTable, ApiError> {
    let mut t = FieldTable::default();
    match v {
        Value::Null => {}
        Value::Object(m) => {
            for (k, x) in m {
                if k.len() > 255 {
                    return Err(ApiError::bad("argument names are at most 255 bytes"));
                }
                t.insert(ShortString::from(k.clone()), to_amqp(x)?);
            }
        }
        _ => return Err(ApiError::bad("arguments must be a JSON object")),
    }
    Ok(t)
}

/// An AMQP field value → JSON.
pub fn from_amqp(v: &AMQPValue) -> Value {
    match v {
        AMQPValue::Boolean(b) => json!(b),
        AMQPValue::ShortShortInt(i) => json!(i),
        AMQPValue::ShortShortUInt(i) => json!(i),
        AMQPValue::ShortInt(i) => json!(i),
        AMQPValue::ShortUInt(i) => json!(i),
        AMQPValue::LongInt(i) => json!(i),
        AMQPValue::LongUInt(i) => json!(i),
        AMQPValue::LongLongInt(i) => json!(i),
        AMQPValue::Float(f) => json!(f),
        AMQPValue::Double(f) => json!(f),
        AMQPValue::DecimalValue(d) => json!(d.value as f64 / 10f64.powi(d.scale as i32)),
        AMQPValue::ShortString(s) => json!(s.as_str()),
        AMQPValue::LongString(s) => json!(String::from_utf8_lossy(s.as_bytes())),
        AMQPValue::FieldArray(a) => Value::Array(a.as_slice().iter().map(from_amqp).collect()),
        AMQPValue::Timestamp(t) => json!(t),
        AMQPValue::FieldTable(t) => from_table(t),
        AMQPValue::ByteArray(b) => {
            json!(base64::engine::general_purpose::STANDARD.encode(b.as_slice()))
        }
        AMQPValue::Void => Value::Null,
    }
}

/// A field table → a JSON object.
pub fn from_table(t: &FieldTable) -> Value {
    Value::Object(
        t.inner()
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), from_amqp(v)))
            .collect::<Map<_, _>>(),
    )
}

fn flag(v: &Value, name: &str, default: bool) -> Result<bool, ApiError> {
    match v.get(name) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(Value::String(s)) if s == "true" || s == "false" => Ok(s == "true"),
        Some(_) => Err(ApiError::bad(format!("{name} must be true or false"))),
    }
}

fn string<'a>(v: &'a Value, name: &str) -> Result<Option<&'a str>, ApiError> {
    match v.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(ApiError::bad(format!("{name} must be a string"))),
    }
}

fn window(req: &Request) -> Result<Duration, ApiError> {
    match req.param("window") {
        None => Ok(QUEUEING_WINDOW),
        Some(s) => s
            .parse::<u64>()
            .ok()
            .filter(|w| (1..=600).contains(w))
            .map(Duration::from_secs)
            .ok_or_else(|| ApiError::bad("window is seconds, 1 to 600")),
    }
}

fn vhost_of(api: &Api, name: &str) -> Result<Arc<eddy_broker::VHost>, ApiError> {
    api.broker
        .vhost(name)
        .ok_or_else(|| ApiError::not_found(format!("no vhost '{name}'")))
}

/// Serve one API request (blocking: call off the async workers).
pub fn handle(api: &Api, req: &Request, user: &User) -> ApiResult {
    let seg = segments(&req.path)?;
    let s: Vec<&str> = seg.iter().map(String::as_str).collect();
    let c = Caller { user, api };
    let m = req.method.as_str();
    match (m, &s[1..]) {
        ("GET", ["overview"]) => Ok(Response::json(200, &overview(&c))),
        ("GET", ["whoami"]) => Ok(Response::json(
            200,
            &json!({"name": user.name, "tags": user.tags}),
        )),
        ("GET", ["nodes"]) => {
            if !c.sees_all() {
                return Err(ApiError::forbidden(format!(
                    "user '{}' needs the monitoring or administrator tag",
                    user.name
                )));
            }
            Ok(Response::json(200, &json!([node(api)])))
        }
        ("GET", ["connections"]) => Ok(Response::json(200, &connections(&c))),
        ("GET", ["channels"]) => Ok(Response::json(200, &channels(&c))),
        ("GET", ["connections", name]) => connections(&c)
            .as_array()
            .and_then(|a| a.iter().find(|x| x["name"] == *name).cloned())
            .map(|x| Response::json(200, &x))
            .ok_or_else(|| ApiError::not_found(format!("no connection '{name}'"))),
        ("DELETE", ["connections", name]) => {
            // an administrator closes any connection, a user its own
            let conn = api
                .broker
                .connections()
                .into_iter()
                .find(|x| x.name() == *name && (c.admin() || x.user() == user.name))
                .ok_or_else(|| ApiError::not_found(format!("no connection '{name}'")))?;
            let reason = req
                .header("x-reason")
                .unwrap_or("Closed via management API")
                .to_owned();
            conn.request_close(&reason);
            Ok(Response::empty(204))
        }
        ("GET", ["queues"]) => Ok(Response::json(200, &queues(&c, None, req)?)),
        ("GET", ["queues", vh]) => Ok(Response::json(200, &queues(&c, Some(vh), req)?)),
        ("GET", ["queues", vh, name]) => {
            let all = queues(&c, Some(vh), req)?;
            all.as_array()
                .and_then(|a| a.iter().find(|q| q["name"] == *name).cloned())
                .map(|q| Response::json(200, &q))
                .ok_or_else(|| ApiError::not_found(format!("no queue '{name}' in vhost '{vh}'")))
        }
        ("PUT", ["queues", vh, name]) => declare_queue(&c, vh, name, &body(req)?),
        ("DELETE", ["queues", vh, name]) => {
            c.check(vh, Access::Configure, "queue", name)?;
            let v = vhost_of(api, vh)?;
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
        ("DELETE", ["queues", vh, name, "contents"]) => {
            c.check(vh, Access::Read, "queue", name)?;
            vhost_of(api, vh)?.purge_queue(name, 0)?;
            Ok(Response::empty(204))
        }
        ("POST", ["queues", vh, name, "get"]) => get_messages(&c, vh, name, &body(req)?),
        ("GET", ["exchanges"]) => Ok(Response::json(200, &exchanges(&c, None)?)),
        ("GET", ["exchanges", vh]) => Ok(Response::json(200, &exchanges(&c, Some(vh))?)),
        ("GET", ["exchanges", vh, name]) => {
            let want = if *name == "amq.default" { "" } else { name };
            exchanges(&c, Some(vh))?
                .as_array()
                .and_then(|a| a.iter().find(|e| e["name"] == want).cloned())
                .map(|e| Response::json(200, &e))
                .ok_or_else(|| ApiError::not_found(format!("no exchange '{name}' in vhost '{vh}'")))
        }
        ("PUT", ["exchanges", vh, name]) => declare_exchange(&c, vh, name, &body(req)?),
        ("DELETE", ["exchanges", vh, name]) => {
            c.check(vh, Access::Configure, "exchange", name)?;
            vhost_of(api, vh)?.delete_exchange(name, req.param("if-unused") == Some("true"))?;
            Ok(Response::empty(204))
        }
        ("POST", ["exchanges", vh, name, "publish"]) => publish(&c, vh, name, &body(req)?),
        ("GET", ["bindings"]) => Ok(Response::json(200, &bindings(&c, None)?)),
        ("GET", ["bindings", vh]) => Ok(Response::json(200, &bindings(&c, Some(vh))?)),
        ("POST", ["bindings", vh, "e", source, kind @ ("q" | "e"), dest]) => {
            let b = body(req)?;
            bind(&c, vh, source, kind, dest, &b)
        }
        ("DELETE", ["bindings", vh, "e", source, kind @ ("q" | "e"), dest, props]) => {
            // RabbitMQ's properties key: the routing key, "~" for an empty one
            let key = if *props == "~" { "" } else { props };
            let v = vhost_of(api, vh)?;
            c.check(vh, Access::Read, "exchange", source)?;
            let binding = v
                .exchange(source)
                .and_then(|e| {
                    e.bindings().into_iter().find(|b| {
                        b.routing_key == key
                            && match (&b.destination, *kind) {
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
            if *kind == "q" {
                c.check(vh, Access::Write, "queue", dest)?;
                v.unbind_queue(dest, source, key, binding.arguments, 0)?;
            } else {
                c.check(vh, Access::Write, "exchange", dest)?;
                v.unbind_exchange(dest, source, key, binding.arguments)?;
            }
            Ok(Response::empty(204))
        }
        ("GET", ["queues", vh, name, "bindings"]) => {
            let all = bindings(&c, Some(vh))?;
            let mine: Vec<Value> = all
                .as_array()
                .into_iter()
                .flatten()
                .filter(|b| b["destination"] == *name && b["destination_type"] == "queue")
                .cloned()
                .collect();
            Ok(Response::json(200, &Value::Array(mine)))
        }
        ("GET", ["exchanges", vh, name, "bindings", side @ ("source" | "destination")]) => {
            let name = if *name == "amq.default" { "" } else { name };
            let all = bindings(&c, Some(vh))?;
            let mine: Vec<Value> = all
                .as_array()
                .into_iter()
                .flatten()
                .filter(|b| {
                    if *side == "source" {
                        b["source"] == name
                    } else {
                        b["destination"] == name && b["destination_type"] == "exchange"
                    }
                })
                .cloned()
                .collect();
            Ok(Response::json(200, &Value::Array(mine)))
        }
        ("GET", ["vhosts"]) => Ok(Response::json(200, &vhosts(&c))),
        ("GET", ["vhosts", name]) => vhosts(&c)
            .as_array()
            .and_then(|a| a.iter().find(|v| v["name"] == *name).cloned())
            .map(|v| Response::json(200, &v))
            .ok_or_else(|| ApiError::not_found(format!("no vhost '{name}'"))),
        ("PUT", ["vhosts", name]) => {
            c.need_admin()?;
            let created = api.broker.declare_vhost(name)?;
            Ok(Response::empty(if created { 201 } else { 204 }))
        }
        ("DELETE", ["vhosts", name]) => {
            c.need_admin()?;
            api.broker.delete_vhost(name)?;
            Ok(Response::empty(204))
        }
        ("GET", ["users"]) => {
            c.need_admin()?;
            Ok(Response::json(200, &users(api)))
        }
        ("GET", ["users", name]) => {
            c.need_admin()?;
            let u = api
                .broker
                .users()
                .get(name)
                .ok_or_else(|| ApiError::not_found(format!("no user '{name}'")))?;
            Ok(Response::json(200, &user_json(&u)))
        }
        ("PUT", ["users", name]) => {
            c.need_admin()?;
            put_user(api, name, &body(req)?)
        }
        ("DELETE", ["users", name]) => {
            c.need_admin()?;
            api.broker.users().delete(name)?;
            Ok(Response::empty(204))
        }
        ("GET", ["permissions"]) => {
            c.need_admin()?;
            Ok(Response::json(200, &permissions(api)))
        }
        ("GET", ["permissions", vh, name]) => {
            c.need_admin()?;
            permissions(api)
                .as_array()
                .and_then(|a| {
                    a.iter()
                        .find(|p| p["vhost"] == *vh && p["user"] == *name)
                        .cloned()
                })
                .map(|p| Response::json(200, &p))
                .ok_or_else(|| {
                    ApiError::not_found(format!("no permissions for user '{name}' in vhost '{vh}'"))
                })
        }
        ("PUT", ["permissions", vh, name]) => {
            c.need_admin()?;
            vhost_of(api, vh)?;
            let b = body(req)?;
            let field = |f: &str| -> Result<String, ApiError> {
                string(&b, f)?
                    .map(str::to_owned)
                    .ok_or_else(|| ApiError::bad(format!("{f} is required")))
            };
            api.broker.users().set_permission(Permission {
                user: name.to_string(),
                vhost: vh.to_string(),
                configure: field("configure")?,
                write: field("write")?,
                read: field("read")?,
            })?;
            Ok(Response::empty(201))
        }
        ("DELETE", ["permissions", vh, name]) => {
            c.need_admin()?;
            api.broker.users().clear_permission(name, vh)?;
            Ok(Response::empty(204))
        }
        ("GET", ["definitions"]) => {
            c.need_admin()?;
            Ok(Response::json(200, &definitions(api)))
        }
        ("POST", ["definitions"]) => {
            c.need_admin()?;
            import_definitions(api, &body(req)?)?;
            Ok(Response::empty(204))
        }
        ("GET", ["topics"]) => Ok(Response::json(200, &topics(&c)?)),
        ("GET", ["topics", name]) => topics(&c)?
            .as_array()
            .and_then(|a| a.iter().find(|t| t["name"] == *name).cloned())
            .map(|t| Response::json(200, &t))
            .ok_or_else(|| ApiError::not_found(format!("no topic '{name}'"))),
        ("PUT", ["topics", name]) => {
            c.check("/", Access::Configure, "topic", name)?;
            let b = body(req)?;
            let partitions = match b.get("partitions") {
                None | Some(Value::Null) => 1,
                Some(v) => v
                    .as_u64()
                    .filter(|n| *n >= 1)
                    .ok_or_else(|| ApiError::bad("partitions must be a positive integer"))?
                    as usize,
            };
            api.broker
                .create_topic(name, partitions, topic_config(b.get("config"))?)?;
            Ok(Response::empty(201))
        }
        ("DELETE", ["topics", name]) => {
            c.check("/", Access::Configure, "topic", name)?;
            api.broker.delete_topic(name)?;
            Ok(Response::empty(204))
        }
        ("GET", ["groups"]) => Ok(Response::json(200, &groups(&c))),
        ("GET", ["jobs"]) => Ok(Response::json(200, &jobs(api))),
        ("PUT", ["jobs", name]) => {
            // a running stream job reports itself (eddy run does, every few seconds)
            c.check("/", Access::Write, "job", name)?;
            let b = body(req)?;
            if !b.is_object() {
                return Err(ApiError::bad("a job report is a JSON object"));
            }
            api.jobs
                .lock()
                .insert(name.to_string(), (std::time::Instant::now(), b));
            Ok(Response::empty(204))
        }
        (_, []) | ("GET", _) => Err(ApiError::not_found(format!(
            "no such resource: {}",
            req.path
        ))),
        _ => Err(ApiError::new(
            405,
            "method_not_allowed",
            format!("{m} is not allowed on {}", req.path),
        )),
    }
}

/// The overview; a `management` user's totals cover the vhosts it may use.
fn overview(c: &Caller) -> Value {
    let api = c.api;
    let b = &api.broker;
    let (mut queues, mut consumers, mut exchanges) = (0u64, 0u64, 0u64);
    let (mut ready, mut unacked) = (0u64, 0u64);
    for v in b.vhosts().into_iter().filter(|v| c.sees(&v.name)) {
        exchanges += v.exchanges().len() as u64;
        for q in v.queues() {
            let c = q.counts();
            queues += 1;
            consumers += c.consumers;
            ready += c.ready;
            unacked += c.unacked;
        }
    }
    let conns: Vec<_> = b
        .connections()
        .into_iter()
        .filter(|x| c.sees_all() || x.user() == c.user.name)
        .collect();
    let channels: usize = conns.iter().map(|x| x.channels().len()).sum();
    let stats = match api.history.totals() {
        Some((a, z)) => message_stats(Some(&a), &z),
        None => json!({}),
    };
    json!({
        "management_version": env!("CARGO_PKG_VERSION"),
        "product_name": "Eddy",
        "product_version": env!("CARGO_PKG_VERSION"),
        "rabbitmq_version": "3.13.0",
        "node": node_name(),
        "cluster_name": node_name(),
        "object_totals": {
            "connections": conns.len(),
            "channels": channels,
            "exchanges": exchanges,
            "queues": queues,
            "consumers": consumers,
            "topics": b.topics().len(),
        },
        "queue_totals": {
            "messages": ready + unacked,
            "messages_ready": ready,
            "messages_unacknowledged": unacked,
        },
        "message_stats": stats,
        "listeners": api.listeners.iter().map(|(p, a)| json!({
            "protocol": p, "ip_address": a.ip().to_string(), "port": a.port(), "node": node_name(),
        })).collect::<Vec<_>>(),
    })
}

fn node_name() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "localhost".into());
    format!("eddy@{host}")
}

fn node(api: &Api) -> Value {
    let b = &api.broker;
    let alarms = *b.alarms().borrow();
    let cfg = b.config();
    json!({
        "name": node_name(),
        "type": "disc",
        "running": true,
        "uptime": b.uptime().as_millis() as u64,
        "mem_used": b.memory_used().max(0),
        "mem_limit": cfg.memory_high_watermark,
        "mem_alarm": alarms.memory,
        "disk_free": b.disk_free(),
        "disk_free_limit": cfg.disk_free_limit,
        "disk_free_alarm": alarms.disk,
        "fsyncs": b.fsync_count(),
    })
}

fn connections(c: &Caller) -> Value {
    Value::Array(
        c.api
            .broker
            .connections()
            .iter()
            .filter(|x| c.sees_all() || x.user() == c.user.name)
            .map(|x| {
                json!({
                    "name": x.name(),
                    "protocol": x.protocol,
                    "user": x.user(),
                    "vhost": x.vhost(),
                    "peer_host": x.peer.ip().to_string(),
                    "peer_port": x.peer.port(),
                    "host": x.local.ip().to_string(),
                    "port": x.local.port(),
                    "ssl": x.tls,
                    "channels": x.channels().len(),
                    "recv_oct": x.recv_oct.load(std::sync::atomic::Ordering::Relaxed),
                    "send_oct": x.send_oct.load(std::sync::atomic::Ordering::Relaxed),
                    "connected_at": x.connected_at_ms,
                    "state": "running",
                })
            })
            .collect(),
    )
}

fn channels(c: &Caller) -> Value {
    let mut out = Vec::new();
    for x in c.api.broker.connections() {
        if !(c.sees_all() || x.user() == c.user.name) {
            continue;
        }
        for (n, view) in x.channel_views() {
            out.push(json!({
                "name": format!("{} ({n})", x.name()),
                "number": n,
                "user": x.user(),
                "vhost": x.vhost(),
                "prefetch_count": view.prefetch_count(),
                "messages_unacknowledged": view.unacked(),
                "consumer_count": view.consumers(),
                "confirm": view.confirm(),
                "transactional": view.transactional(),
                "state": "running",
                "connection_details": {"name": x.name(), "peer_host": x.peer.ip().to_string(), "peer_port": x.peer.port()},
            }));
        }
    }
    Value::Array(out)
}

/// The vhost asked for (or all), keeping those the caller may see.
fn visible_vhosts(
    c: &Caller,
    vhost: Option<&str>,
) -> Result<Vec<Arc<eddy_broker::VHost>>, ApiError> {
    let all = match vhost {
        Some(v) => vec![vhost_of(c.api, v)?],
        None => c.api.broker.vhosts(),
    };
    Ok(all.into_iter().filter(|v| c.sees(&v.name)).collect())
}

fn queues(c: &Caller, vhost: Option<&str>, req: &Request) -> Result<Value, ApiError> {
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

fn declare_queue(c: &Caller, vh: &str, name: &str, b: &Value) -> ApiResult {
    c.check(vh, Access::Configure, "queue", name)?;
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

fn exchanges(c: &Caller, vhost: Option<&str>) -> Result<Value, ApiError> {
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

fn declare_exchange(c: &Caller, vh: &str, name: &str, b: &Value) -> ApiResult {
    c.check(vh, Access::Configure, "exchange", name)?;
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

fn bindings(c: &Caller, vhost: Option<&str>) -> Result<Value, ApiError> {
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

fn bind(c: &Caller, vh: &str, source: &str, kind: &str, dest: &str, b: &Value) -> ApiResult {
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

fn publish(c: &Caller, vh: &str, exchange: &str, b: &Value) -> ApiResult {
    let exchange = if exchange == "amq.default" {
        ""
    } else {
        exchange
    };
    c.check(vh, Access::Write, "exchange", exchange)?;
    let v = vhost_of(c.api, vh)?;
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

fn get_messages(c: &Caller, vh: &str, name: &str, b: &Value) -> ApiResult {
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

fn properties_json(p: &BasicProperties) -> Value {
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

fn vhosts(c: &Caller) -> Value {
    let mut vs = c.api.broker.vhosts();
    vs.sort_by(|a, b| a.name.cmp(&b.name));
    Value::Array(
        vs.iter()
            .filter(|v| c.sees(&v.name))
            .map(|v| {
                let (mut ready, mut unacked) = (0u64, 0u64);
                for q in v.queues() {
                    let n = q.counts();
                    ready += n.ready;
                    unacked += n.unacked;
                }
                json!({
                    "name": v.name,
                    "messages": ready + unacked,
                    "messages_ready": ready,
                    "messages_unacknowledged": unacked,
                    "tracing": false,
                })
            })
            .collect(),
    )
}

fn user_json(u: &User) -> Value {
    json!({
        "name": u.name,
        "password_hash": u.password_hash,
        "hashing_algorithm": u.hashing_algorithm,
        "tags": u.tags,
    })
}

fn users(api: &Api) -> Value {
    Value::Array(api.broker.users().list().iter().map(user_json).collect())
}

/// Tags as RabbitMQ takes them: a list, or one comma-separated string.
fn tags(v: Option<&Value>) -> Result<Vec<String>, ApiError> {
    Ok(match v {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => s
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(str::to_owned)
            .collect(),
        Some(Value::Array(a)) => a
            .iter()
            .map(|t| {
                t.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| ApiError::bad("tags are strings"))
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(ApiError::bad("tags are a list or a comma-separated string")),
    })
}

fn put_user(api: &Api, name: &str, b: &Value) -> ApiResult {
    let password = string(b, "password")?;
    let hash = string(b, "password_hash")?;
    if let Some(alg) = string(b, "hashing_algorithm")? {
        if alg != eddy_broker::users::HASHING_ALGORITHM {
            return Err(ApiError::bad(format!(
                "hashing_algorithm {alg:?} is not supported (only {})",
                eddy_broker::users::HASHING_ALGORITHM
            )));
        }
    }
    let created = api
        .broker
        .users()
        .put(name, password, hash, tags(b.get("tags"))?)?;
    Ok(Response::empty(if created { 201 } else { 204 }))
}

fn permissions(api: &Api) -> Value {
    Value::Array(
        api.broker
            .users()
            .permissions()
            .iter()
            .map(|p| {
                json!({"user": p.user, "vhost": p.vhost, "configure": p.configure, "write": p.write, "read": p.read})
            })
            .collect(),
    )
}

fn topics(c: &Caller) -> Result<Value, ApiError> {
    if !c.sees("/") {
        return Ok(json!([]));
    }
    Ok(Value::Array(
        c.api
            .broker
            .topics()
            .iter()
            .map(|t| {
                let parts: Vec<Value> = t
                    .partitions()
                    .iter()
                    .enumerate()
                    .map(|(i, p)| {
                        json!({"partition": i, "start_offset": p.start_offset(), "end_offset": p.end_offset()})
                    })
                    .collect();
                let messages: u64 = t
                    .partitions()
                    .iter()
                    .map(|p| p.end_offset() - p.start_offset())
                    .sum();
                let config: Map<String, Value> = t
                    .config()
                    .entries()
                    .into_iter()
                    .map(|(k, v)| (k.to_owned(), json!(v)))
                    .collect();
                json!({"name": t.name, "partitions": parts, "messages": messages, "config": config})
            })
            .collect(),
    ))
}

fn groups(c: &Caller) -> Value {
    if !c.sees("/") {
        return json!([]);
    }
    let b = &c.api.broker;
    let offsets = b.offsets();
    Value::Array(
        offsets
            .group_names()
            .iter()
            .map(|g| {
                let mut total = 0u64;
                let parts: Vec<Value> = offsets
                    .group(g)
                    .iter()
                    .map(|(t, p, committed)| {
                        let end = b
                            .topic(t)
                            .and_then(|t| t.partition(*p))
                            .map(|p| p.end_offset());
                        let lag = end.map(|e| e.saturating_sub(committed.offset.max(0) as u64));
                        total += lag.unwrap_or(0);
                        json!({"topic": t, "partition": p, "committed": committed.offset, "end_offset": end, "lag": lag})
                    })
                    .collect();
                json!({"group": g, "lag": total, "offsets": parts})
            })
            .collect(),
    )
}

/// Topic settings from a JSON object of Kafka config names (values as strings or numbers).
fn topic_config(v: Option<&Value>) -> Result<TopicConfig, ApiError> {
    let mut config = TopicConfig::default();
    if let Some(Value::Object(cfg)) = v {
        for (k, v) in cfg {
            let v = match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            config.set(k, Some(&v))?;
        }
    }
    Ok(config)
}

/// Reports older than this are dropped (the job stopped).
const JOB_STALE: Duration = Duration::from_secs(60);

fn jobs(api: &Api) -> Value {
    let mut jobs = api.jobs.lock();
    jobs.retain(|_, (at, _)| at.elapsed() < JOB_STALE);
    Value::Array(
        jobs.iter()
            .map(|(name, (at, report))| {
                let mut r = report.clone();
                if let Some(o) = r.as_object_mut() {
                    o.insert("name".into(), json!(name));
                    o.insert(
                        "seconds_since_report".into(),
                        json!(at.elapsed().as_secs_f64()),
                    );
                }
                r
            })
            .collect(),
    )
}

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

fn list<'a>(d: &'a Value, key: &str) -> Result<&'a [Value], ApiError> {
    match d.get(key) {
        None | Some(Value::Null) => Ok(&[]),
        Some(Value::Array(a)) => Ok(a),
        Some(_) => Err(ApiError::bad(format!("{key} must be a list"))),
    }
}

fn req_str<'a>(v: &'a Value, key: &str, what: &str) -> Result<&'a str, ApiError> {
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
        v.declare_exchange(ExchangeDeclare {
            name: req_str(e, "name", "an exchange")?.to_owned(),
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
        v.declare_queue(
            QueueDeclare {
                name: req_str(q, "name", "a queue")?.to_owned(),
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
