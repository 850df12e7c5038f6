//! Which handler answers which request: the console's files, `/metrics`, and every `/api`
//! path (RabbitMQ's management paths plus Eddy's topics, groups and jobs). The handlers live
//! in `api/`, one file per family; this file only matches paths and methods.

use std::sync::Arc;

use eddy_broker::User;

use serde_json::Value;

use crate::api::json::body;
use crate::api::{
    self as handlers, definitions, messages, overview, resources, segments, topics, users, Api,
    ApiError, ApiResult, Caller,
};
use crate::metrics;
use crate::server::{Request, Response};

const INDEX: &str = include_str!("../assets/index.html");
const APP_JS: &str = include_str!("../assets/app.js");
const STYLE: &str = include_str!("../assets/style.css");

/// Answer one request: the console's files, `/metrics`, or an `/api` path.
pub(crate) async fn route(api: &Arc<Api>, req: Request) -> Response {
    let path = req.path.as_str();
    match (req.method.as_str(), path) {
        ("GET" | "HEAD", "/" | "/index.html") => {
            Response::new(200, "text/html; charset=utf-8", INDEX)
        }
        ("GET" | "HEAD", "/app.js") => {
            Response::new(200, "application/javascript; charset=utf-8", APP_JS)
        }
        ("GET" | "HEAD", "/style.css") => Response::new(200, "text/css; charset=utf-8", STYLE),
        ("GET" | "HEAD", "/favicon.ico") => Response::empty(204),
        ("GET" | "HEAD", "/metrics") => {
            // the metrics name vhosts, queues, topics and groups: scrapers log in (Basic, any
            // management tag), as to the rest of the API, and see in them what the API shows
            let user = match handlers::authenticate(api, &req) {
                Ok(user) => {
                    tracing::Span::current().record("user", user.name.as_str());
                    user
                }
                Err(e) => return e.response(),
            };
            let api = api.clone();
            match tokio::task::spawn_blocking(move || metrics::render(&api, &user)).await {
                Ok(text) => Response::new(200, "text/plain; version=0.0.4; charset=utf-8", text),
                Err(_) => ApiError {
                    status: 500,
                    error: "internal_error",
                    reason: "rendering the metrics failed".into(),
                }
                .response(),
            }
        }
        _ if path == "/api" || path.starts_with("/api/") => {
            let user = match handlers::authenticate(api, &req) {
                Ok(u) => u,
                Err(e) => {
                    let mut r = e.response();
                    if req.header("x-requested-with").is_some() {
                        // a page's own login form asks: no browser password pop-up
                        r.headers.retain(|(n, _)| *n != "WWW-Authenticate");
                    }
                    return r;
                }
            };
            let span = tracing::Span::current();
            span.record("user", user.name.as_str());
            let api = api.clone();
            let mut req = req;
            if req.method == "HEAD" {
                req.method = "GET".into();
            }
            // the handler's log lines carry the connection's span too
            let r =
                tokio::task::spawn_blocking(move || span.in_scope(|| self::api(&api, &req, &user)))
                    .await;
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
        _ => ApiError {
            status: 404,
            error: "not_found",
            reason: format!("no such page: {path}"),
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
