//! Vhosts, users and permissions.

use eddy_broker::{Permission, User};
use serde_json::{json, Value};

use crate::api::json::{body, string};
use crate::api::{one, vhost_of, ApiError, ApiResult, Caller};
use crate::server::{Request, Response};
use crate::Api;

pub(crate) fn vhosts(c: &Caller<'_>) -> Value {
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

pub(crate) fn user_json(u: &User) -> Value {
    json!({
        "name": u.name,
        "password_hash": u.password_hash,
        "hashing_algorithm": u.hashing_algorithm,
        "tags": u.tags,
    })
}

pub(crate) fn users(api: &Api) -> Value {
    Value::Array(api.broker.users().list().iter().map(user_json).collect())
}

/// Tags as RabbitMQ takes them: a list, or one comma-separated string.
pub(crate) fn tags(v: Option<&Value>) -> Result<Vec<String>, ApiError> {
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

pub(crate) fn put_user(api: &Api, name: &str, b: &Value) -> ApiResult {
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

pub(crate) fn permissions(api: &Api) -> Value {
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

/// `GET /api/vhosts/{name}`.
pub(crate) fn vhost(c: &Caller<'_>, name: &str) -> ApiResult {
    one(
        vhosts(c),
        |v| v["name"] == name,
        || format!("no vhost '{name}'"),
    )
}

/// `PUT /api/vhosts/{name}`: 201 when created, 204 when it was there.
pub(crate) fn put_vhost(c: &Caller<'_>, name: &str) -> ApiResult {
    c.need_admin()?;
    let created = c.api.broker.declare_vhost(name)?;
    Ok(Response::empty(if created { 201 } else { 204 }))
}

/// `DELETE /api/vhosts/{name}`.
pub(crate) fn delete_vhost(c: &Caller<'_>, name: &str) -> ApiResult {
    c.need_admin()?;
    c.api.broker.delete_vhost(name)?;
    Ok(Response::empty(204))
}

/// `GET /api/users`.
pub(crate) fn list_users(c: &Caller<'_>) -> ApiResult {
    c.need_admin()?;
    Ok(Response::json(200, &users(c.api)))
}

/// `GET /api/users/{name}`.
pub(crate) fn user(c: &Caller<'_>, name: &str) -> ApiResult {
    c.need_admin()?;
    let u = c
        .api
        .broker
        .users()
        .get(name)
        .ok_or_else(|| ApiError::not_found(format!("no user '{name}'")))?;
    Ok(Response::json(200, &user_json(&u)))
}

/// `PUT /api/users/{name}`.
pub(crate) fn set_user(c: &Caller<'_>, name: &str, req: &Request) -> ApiResult {
    c.need_admin()?;
    put_user(c.api, name, &body(req)?)
}

/// `DELETE /api/users/{name}`.
pub(crate) fn delete_user(c: &Caller<'_>, name: &str) -> ApiResult {
    c.need_admin()?;
    c.api.broker.users().delete(name)?;
    Ok(Response::empty(204))
}

/// `GET /api/permissions`.
pub(crate) fn list_permissions(c: &Caller<'_>) -> ApiResult {
    c.need_admin()?;
    Ok(Response::json(200, &permissions(c.api)))
}

/// `GET /api/permissions/{vhost}/{user}`.
pub(crate) fn permission(c: &Caller<'_>, vh: &str, name: &str) -> ApiResult {
    c.need_admin()?;
    one(
        permissions(c.api),
        |p| p["vhost"] == vh && p["user"] == name,
        || format!("no permissions for user '{name}' in vhost '{vh}'"),
    )
}

/// `PUT /api/permissions/{vhost}/{user}`: configure, write and read are all required.
pub(crate) fn set_permission(c: &Caller<'_>, vh: &str, name: &str, req: &Request) -> ApiResult {
    c.need_admin()?;
    vhost_of(c.api, vh)?;
    let b = &body(req)?;
    let field = |f: &str| -> Result<String, ApiError> {
        string(b, f)?
            .map(str::to_owned)
            .ok_or_else(|| ApiError::bad(format!("{f} is required")))
    };
    c.api.broker.users().set_permission(Permission {
        user: name.to_string(),
        vhost: vh.to_string(),
        configure: field("configure")?,
        write: field("write")?,
        read: field("read")?,
    })?;
    Ok(Response::empty(201))
}

/// `DELETE /api/permissions/{vhost}/{user}`.
pub(crate) fn clear_permission(c: &Caller<'_>, vh: &str, name: &str) -> ApiResult {
    c.need_admin()?;
    c.api.broker.users().clear_permission(name, vh)?;
    Ok(Response::empty(204))
}
