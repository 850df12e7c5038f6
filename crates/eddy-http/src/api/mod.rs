//! The management API: RabbitMQ's paths and JSON shapes where they exist (so existing scripts,
//! `rabbitmqadmin`-style tools and monitoring keep working), plus Eddy's topics and groups.
//!
//! Every `/api` call needs HTTP Basic credentials of a user with a management tag
//! (`administrator`, `monitoring`, `management` or `policymaker`). Administrators may do
//! everything; `monitoring` users see every vhost; `management` users see the vhosts they have
//! permissions in. Declaring, deleting, publishing, getting and purging go through the same
//! configure/write/read permission checks as AMQP. Users, vhosts, permissions and definitions
//! imports are for administrators. A request body is a JSON object sent as
//! `Content-Type: application/json`; a request that changes something and names a foreign
//! `Origin` is refused (the router's `admit`, before the body is read).

pub mod definitions;
pub mod json;
pub(crate) mod messages;
pub(crate) mod overview;
pub(crate) mod resources;
pub(crate) mod topics;
pub(crate) mod users;

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use eddy_broker::{Access, Broker, BrokerError, User};
use serde_json::{json, Value};

use crate::server::{percent_decode, Request, Response};
use crate::stats::{History, QUEUEING_WINDOW};

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
    /// The cluster this node is part of (None: alone).
    pub cluster: Option<Arc<eddy_cluster::Cluster>>,
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
    pub(crate) fn new(status: u16, error: &'static str, reason: impl Into<String>) -> ApiError {
        ApiError {
            status,
            error,
            reason: reason.into(),
        }
    }
    pub(crate) fn bad(reason: impl Into<String>) -> ApiError {
        ApiError::new(400, "bad_request", reason)
    }
    pub(crate) fn not_found(reason: impl Into<String>) -> ApiError {
        ApiError::new(404, "not_found", reason)
    }
    pub(crate) fn forbidden(reason: impl Into<String>) -> ApiError {
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

pub(crate) type ApiResult = Result<Response, ApiError>;

pub(crate) const MANAGEMENT_TAGS: [&str; 4] =
    ["administrator", "monitoring", "management", "policymaker"];

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
            tracing::warn!(user = name, "HTTP API login refused: not a management user");
            Err(unauthorized("Login failed: not a management user"))
        }
        Err(e) => {
            tracing::warn!(user = name, "HTTP API login failed: {e}");
            Err(unauthorized(&format!("Login failed: {e}")))
        }
    }
}

/// Whether a `Content-Type` is JSON's (`application/json`, parameters such as `charset`
/// allowed).
pub(crate) fn is_json(content_type: &str) -> bool {
    content_type
        .split(';')
        .next()
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
}

/// Whether an `Origin` is the server the request was sent to: its host and port are the
/// request's `Host` (or `X-Forwarded-Host`, which a proxy in front sets and a foreign page
/// cannot), default ports left out. The scheme is not compared, so a proxy that ends TLS in
/// front of the plain listener keeps working. `null` (a sandboxed or local page) is foreign.
pub(crate) fn same_origin(origin: &str, req: &Request) -> bool {
    let Some((scheme, authority)) = origin.trim().split_once("://") else {
        return false;
    };
    let default_port = match scheme.to_ascii_lowercase().as_str() {
        "http" => ":80",
        "https" => ":443",
        _ => return false,
    };
    let norm = |a: &str| {
        let a = a.trim().to_ascii_lowercase();
        match a.strip_suffix(default_port) {
            Some(host) => host.to_owned(),
            None => a,
        }
    };
    let origin = norm(authority);
    if origin.is_empty() || origin.contains('/') {
        return false;
    }
    [req.header("host"), req.header("x-forwarded-host")]
        .into_iter()
        .flatten()
        .any(|h| norm(h.split(',').next().unwrap_or_default()) == origin)
}

/// Who is asking, and what they may see.
pub(crate) struct Caller<'a> {
    pub(crate) user: &'a User,
    pub(crate) api: &'a Api,
}

impl Caller<'_> {
    pub(crate) fn admin(&self) -> bool {
        self.user.has_tag("administrator")
    }
    pub(crate) fn sees_all(&self) -> bool {
        self.admin() || self.user.has_tag("monitoring")
    }
    pub(crate) fn sees(&self, vhost: &str) -> bool {
        self.sees_all()
            || self
                .api
                .broker
                .users()
                .can_access_vhost(&self.user.name, vhost)
    }
    pub(crate) fn need_admin(&self) -> Result<(), ApiError> {
        if self.admin() {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!(
                "user '{}' is not an administrator",
                self.user.name
            )))
        }
    }
    pub(crate) fn check(
        &self,
        vhost: &str,
        access: Access,
        kind: &str,
        name: &str,
    ) -> Result<(), ApiError> {
        self.api
            .broker
            .users()
            .check(&self.user.name, vhost, access, kind, name)
            .map_err(ApiError::from)
    }
}

/// Longest queue or exchange name, in bytes (AMQP's short string).
pub(crate) const MAX_NAME: usize = 255;

/// A queue or exchange name AMQP can carry: at most [`MAX_NAME`] bytes.
pub(crate) fn check_name(kind: &str, name: &str) -> Result<(), ApiError> {
    if name.len() > MAX_NAME {
        return Err(ApiError::bad(format!(
            "{kind} name is {} bytes; at most {MAX_NAME} are allowed",
            name.len()
        )));
    }
    Ok(())
}

/// Path segments, percent-decoded.
pub(crate) fn segments(path: &str) -> Result<Vec<String>, ApiError> {
    path.trim_start_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .map(|s| percent_decode(s, false).map_err(ApiError::bad))
        .collect()
}

pub(crate) fn window(req: &Request) -> Result<Duration, ApiError> {
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

pub(crate) fn vhost_of(api: &Api, name: &str) -> Result<Arc<eddy_broker::VHost>, ApiError> {
    api.broker
        .vhost(name)
        .ok_or_else(|| ApiError::not_found(format!("no vhost '{name}'")))
}

/// The element of a JSON list that `pred` picks, as a response; 404 with `missing` if none.
pub(crate) fn one(
    list: Value,
    pred: impl Fn(&Value) -> bool,
    missing: impl FnOnce() -> String,
) -> ApiResult {
    list.as_array()
        .and_then(|a| a.iter().find(|x| pred(x)).cloned())
        .map(|x| Response::json(200, &x))
        .ok_or_else(|| ApiError::not_found(missing()))
}

/// The elements of a JSON list that `pred` picks.
pub(crate) fn some(list: Value, pred: impl Fn(&Value) -> bool) -> Value {
    Value::Array(
        list.as_array()
            .into_iter()
            .flatten()
            .filter(|x| pred(x))
            .cloned()
            .collect(),
    )
}
