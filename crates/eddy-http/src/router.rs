//! Which handler answers which request: the console's files, `/metrics`, and every `/api`
//! path (RabbitMQ's management paths plus Eddy's topics, groups and jobs). The handlers live
//! in `api/`, one file per family; this file only matches paths and methods, and admits a
//! request before its body is read ([`admit`]: login, where a body may come and in what
//! type, from which origin).

use std::sync::Arc;

use eddy_broker::User;

use serde_json::Value;

use crate::api::json::body;
use crate::api::{
    self as handlers, definitions, messages, overview, resources, segments, topics, users, Api,
    ApiError, ApiResult, Caller,
};
use crate::metrics;
use crate::server::{Framing, Request, Response};

const INDEX: &str = include_str!("../assets/index.html");
const APP_JS: &str = include_str!("../assets/app.js");
const STYLE: &str = include_str!("../assets/style.css");

/// The console's files (served without a login).
fn console_file(path: &str) -> Option<(&'static str, &'static str)> {
    Some(match path {
        "/" | "/index.html" => ("text/html; charset=utf-8", INDEX),
        "/app.js" => ("application/javascript; charset=utf-8", APP_JS),
        "/style.css" => ("text/css; charset=utf-8", STYLE),
        // no icon: an empty body is answered 204
        "/favicon.ico" => ("", ""),
        _ => return None,
    })
}

fn is_api(path: &str) -> bool {
    path == "/api" || path.starts_with("/api/")
}

/// `/metrics` and every `/api` path need a login; the console's files and a 404 do not.
fn needs_login(path: &str) -> bool {
    is_api(path) || path == "/metrics"
}

/// Only `/api`'s PUT and POST take a body.
fn takes_body(method: &str, path: &str) -> bool {
    is_api(path) && matches!(method, "PUT" | "POST")
}

/// What is checked once a request's head has arrived, before its body is read: the login
/// (`/metrics`, `/api`), that a body comes only where one is expected (so no path reads one
/// before a login), that it is JSON (`Content-Type: application/json`, 415 otherwise), and
/// that a request that changes something comes from no other origin than this server's (a
/// browser sends cached Basic credentials with a foreign page's request too). The logged-in
/// user, if the path needs one; a refusal to send otherwise.
pub(crate) fn admit(api: &Api, req: &Request) -> Result<Option<User>, Response> {
    let user = if needs_login(&req.path) {
        match handlers::authenticate(api, req) {
            Ok(u) => {
                tracing::Span::current().record("user", u.name.as_str());
                Some(u)
            }
            Err(e) => {
                let mut r = e.response();
                if req.header("x-requested-with").is_some() {
                    // a page's own login form asks: no browser password pop-up
                    r.headers.retain(|(n, _)| *n != "WWW-Authenticate");
                }
                return Err(r);
            }
        }
    } else {
        None
    };
    let (method, path) = (req.method.as_str(), req.path.as_str());
    let has_body = req.body_framing != Framing::Length(0);
    if has_body && !takes_body(method, path) {
        return Err(ApiError::bad(format!("{method} {path} takes no request body")).response());
    }
    if takes_body(method, path) && (has_body || req.header("content-type").is_some()) {
        let ct = req.header("content-type");
        if !ct.is_some_and(handlers::is_json) {
            return Err(ApiError::new(
                415,
                "unsupported_media_type",
                format!(
                    "a request body must be JSON sent as Content-Type: application/json, not {}",
                    ct.map_or("no Content-Type".to_owned(), |c| format!("{c:?}"))
                ),
            )
            .response());
        }
    }
    if !matches!(method, "GET" | "HEAD" | "OPTIONS") {
        if let Some(origin) = req.header("origin") {
            if !handlers::same_origin(origin, req) {
                return Err(ApiError::forbidden(format!(
                    "cross-origin request refused: Origin {origin:?} is not this server ({:?})",
                    req.header("host").unwrap_or_default()
                ))
                .response());
            }
        }
    }
    Ok(user)
}

/// Sent with every response: no page may frame the console or an answer, and no browser
/// guesses a type other than the one given. The console's page may load only its own script,
/// style and API.
fn harden(mut r: Response, page: bool) -> Response {
    let csp = if page {
        "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; \
         form-action 'self'; frame-ancestors 'none'"
    } else {
        "default-src 'none'; frame-ancestors 'none'"
    };
    r.headers.push(("Content-Security-Policy", csp.into()));
    r.headers.push(("X-Frame-Options", "DENY".into()));
    r.headers.push(("X-Content-Type-Options", "nosniff".into()));
    r
}

/// Answer one request that [`admit`] let through (`user`: whom it logged in): the console's
/// files, `/metrics`, or an `/api` path.
pub(crate) async fn route(api: &Arc<Api>, req: Request, user: Option<User>) -> Response {
    let page = matches!(req.path.as_str(), "/" | "/index.html");
    harden(dispatch(api, req, user).await, page)
}

async fn dispatch(api: &Arc<Api>, req: Request, user: Option<User>) -> Response {
    let path = req.path.as_str();
    let get = matches!(req.method.as_str(), "GET" | "HEAD");
    if let (true, Some((content_type, body))) = (get, console_file(path)) {
        return if body.is_empty() {
            Response::empty(204)
        } else {
            Response::new(200, content_type, body)
        };
    }
    if !(is_api(path) || (get && path == "/metrics")) {
        return ApiError::not_found(format!("no such page: {path}")).response();
    }
    let Some(user) = user else {
        // admit logs in on these paths
        return ApiError::new(401, "not_authorised", "Login failed: credentials required")
            .response();
    };
    let api = api.clone();
    let span = tracing::Span::current();
    if path == "/metrics" {
        // the metrics name vhosts, queues, topics and groups: each user sees in them what the
        // API shows it
        return match tokio::task::spawn_blocking(move || metrics::render(&api, &user)).await {
            Ok(text) => Response::new(200, "text/plain; version=0.0.4; charset=utf-8", text),
            Err(_) => ApiError {
                status: 500,
                error: "internal_error",
                reason: "rendering the metrics failed".into(),
            }
            .response(),
        };
    }
    let mut req = req;
    if req.method == "HEAD" {
        req.method = "GET".into();
    }
    // the handler's log lines carry the connection's span too
    let r =
        tokio::task::spawn_blocking(move || span.in_scope(|| self::api(&api, &req, &user))).await;
    match r {
        Ok(Ok(resp)) => resp,
        Ok(Err(e)) => e.response(),
        Err(_) => ApiError {
            status: 500,
            error: "internal_error",
            reason: "the request failed inside the server (see its log)".into(),
        }
        .response(),
    }
}

/// Serve one `/api` request (blocking: call off the async workers).
pub(crate) fn api(api: &Api, req: &Request, user: &User) -> ApiResult {
    let seg = segments(&req.path)?;
    let s: Vec<&str> = seg.iter().map(String::as_str).collect();
    let c = &Caller { user, api };
    let json = |v: Value| Ok(Response::json(200, &v));
    let m = req.method.as_str();
    match (m, &s[1..]) {
        ("GET", ["overview"]) => json(overview::overview(c)),
        ("GET", ["whoami"]) => overview::whoami(c),
        ("GET", ["nodes"]) => overview::nodes(c),
        ("GET", ["cluster"]) => overview::cluster(c),
        ("PUT", ["cluster", "nodes", id]) => overview::cluster_member(c, id, true),
        ("DELETE", ["cluster", "nodes", id]) => overview::cluster_member(c, id, false),
        ("GET", ["connections"]) => json(overview::connections(c)),
        ("GET", ["connections", name]) => overview::connection(c, name),
        ("DELETE", ["connections", name]) => overview::close_connection(c, name, req),
        ("GET", ["channels"]) => json(overview::channels(c)),
        ("GET", ["queues"]) => json(resources::queues(c, None, req)?),
        ("GET", ["queues", vh]) => json(resources::queues(c, Some(vh), req)?),
        ("GET", ["queues", vh, name]) => resources::queue(c, vh, name, req),
        ("PUT", ["queues", vh, name]) => resources::declare_queue(c, vh, name, &body(req)?),
        ("DELETE", ["queues", vh, name]) => resources::delete_queue(c, vh, name, req),
        ("DELETE", ["queues", vh, name, "contents"]) => resources::purge_queue(c, vh, name),
        ("GET", ["queues", vh, name, "bindings"]) => resources::queue_bindings(c, vh, name),
        ("POST", ["queues", vh, name, "get"]) => messages::get_messages(c, vh, name, &body(req)?),
        ("GET", ["exchanges"]) => json(resources::exchanges(c, None)?),
        ("GET", ["exchanges", vh]) => json(resources::exchanges(c, Some(vh))?),
        ("GET", ["exchanges", vh, name]) => resources::exchange(c, vh, name),
        ("PUT", ["exchanges", vh, name]) => resources::declare_exchange(c, vh, name, &body(req)?),
        ("DELETE", ["exchanges", vh, name]) => resources::delete_exchange(c, vh, name, req),
        ("GET", ["exchanges", vh, name, "bindings", side @ ("source" | "destination")]) => {
            resources::exchange_bindings(c, vh, name, side)
        }
        ("POST", ["exchanges", vh, name, "publish"]) => messages::publish(c, vh, name, &body(req)?),
        ("GET", ["bindings"]) => json(resources::bindings(c, None)?),
        ("GET", ["bindings", vh]) => json(resources::bindings(c, Some(vh))?),
        ("POST", ["bindings", vh, "e", source, kind @ ("q" | "e"), dest]) => {
            resources::bind(c, vh, source, kind, dest, &body(req)?)
        }
        ("DELETE", ["bindings", vh, "e", source, kind @ ("q" | "e"), dest, props]) => {
            resources::unbind(c, vh, source, kind, dest, props)
        }
        ("GET", ["vhosts"]) => json(users::vhosts(c)),
        ("GET", ["vhosts", name]) => users::vhost(c, name),
        ("PUT", ["vhosts", name]) => users::put_vhost(c, name),
        ("DELETE", ["vhosts", name]) => users::delete_vhost(c, name),
        ("GET", ["users"]) => users::list_users(c),
        ("GET", ["users", name]) => users::user(c, name),
        ("PUT", ["users", name]) => users::set_user(c, name, req),
        ("DELETE", ["users", name]) => users::delete_user(c, name),
        ("GET", ["permissions"]) => users::list_permissions(c),
        ("GET", ["permissions", vh, name]) => users::permission(c, vh, name),
        ("PUT", ["permissions", vh, name]) => users::set_permission(c, vh, name, req),
        ("DELETE", ["permissions", vh, name]) => users::clear_permission(c, vh, name),
        ("GET", ["definitions"]) => definitions::export(c),
        ("POST", ["definitions"]) => definitions::import(c, req),
        ("GET", ["topics"]) => json(topics::topics(c)?),
        ("GET", ["topics", name]) => topics::topic(c, name),
        ("PUT", ["topics", name]) => topics::put_topic(c, name, req),
        ("DELETE", ["topics", name]) => topics::delete_topic(c, name),
        ("GET", ["groups"]) => json(topics::groups(c)),
        ("GET", ["jobs"]) => json(topics::jobs(api)),
        ("PUT", ["jobs", name]) => topics::put_job(c, name, req),
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
