//! Overview, nodes, connections and channels.

use serde_json::{json, Value};

use crate::api::{one, ApiError, ApiResult, Caller};
use crate::server::{Request, Response};
use crate::stats::message_stats;
use crate::Api;

/// The overview; a `management` user's totals cover the vhosts it may use.
pub(crate) fn overview(c: &Caller<'_>) -> Value {
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

pub(crate) fn node_name() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "localhost".into());
    format!("eddy@{host}")
}

pub(crate) fn node(api: &Api) -> Value {
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

pub(crate) fn connections(c: &Caller<'_>) -> Value {
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

pub(crate) fn channels(c: &Caller<'_>) -> Value {
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

/// `GET /api/whoami`.
pub(crate) fn whoami(c: &Caller<'_>) -> ApiResult {
    Ok(Response::json(
        200,
        &json!({"name": c.user.name, "tags": c.user.tags}),
    ))
}

/// `GET /api/nodes`: for monitoring and administrator users.
pub(crate) fn nodes(c: &Caller<'_>) -> ApiResult {
    if !c.sees_all() {
        return Err(ApiError::forbidden(format!(
            "user '{}' needs the monitoring or administrator tag",
            c.user.name
        )));
    }
    let Some(cluster) = &c.api.cluster else {
        return Ok(Response::json(200, &json!([node(c.api)])));
    };
    // a cluster: one entry per node in RabbitMQ's shape (name, running) with its addresses;
    // this node's also carries its own entry's usual fields and its Raft groups
    let status = cluster_status(cluster);
    let me = cluster.node_id();
    let nodes: Vec<Value> = status["nodes"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .map(|n| {
            let id = n["id"].as_u64().unwrap_or(0);
            let mut v = if id == me { node(c.api) } else { json!({}) };
            v["name"] = json!(format!("eddy@{id}"));
            v["running"] = n["up"].clone();
            for k in ["id", "up", "cluster", "kafka", "amqp", "http"] {
                v[k] = n[k].clone();
            }
            if id == me {
                v["groups"] = status["groups"].clone();
            }
            v
        })
        .collect();
    Ok(Response::json(200, &Value::Array(nodes)))
}

fn cluster_status(cluster: &eddy_cluster::Cluster) -> Value {
    // API handlers run on a blocking thread: the peers are asked from here
    tokio::runtime::Handle::current().block_on(cluster.status())
}

/// `GET /api/cluster`: this node's view of the cluster — every node (up, addresses) and each
/// Raft group on this node (leader, term, commit index, followers' lag). 404 when alone.
pub(crate) fn cluster(c: &Caller<'_>) -> ApiResult {
    if !c.sees_all() {
        return Err(ApiError::forbidden(format!(
            "user '{}' needs the monitoring or administrator tag",
            c.user.name
        )));
    }
    match &c.api.cluster {
        Some(cluster) => Ok(Response::json(200, &cluster_status(cluster))),
        None => Err(ApiError::not_found(
            "this node runs alone (no --node-id, --cluster-listen, --cluster-peers)".to_string(),
        )),
    }
}

/// `GET /api/connections/{name}`.
pub(crate) fn connection(c: &Caller<'_>, name: &str) -> ApiResult {
    one(
        connections(c),
        |x| x["name"] == name,
        || format!("no connection '{name}'"),
    )
}

/// `DELETE /api/connections/{name}`: an administrator closes any connection, a user its own;
/// the reason (header `X-Reason`) goes to the client.
pub(crate) fn close_connection(c: &Caller<'_>, name: &str, req: &Request) -> ApiResult {
    let conn = c
        .api
        .broker
        .connections()
        .into_iter()
        .find(|x| x.name() == name && (c.admin() || x.user() == c.user.name))
        .ok_or_else(|| ApiError::not_found(format!("no connection '{name}'")))?;
    let reason = req
        .header("x-reason")
        .unwrap_or("Closed via management API")
        .to_owned();
    conn.request_close(&reason);
    Ok(Response::empty(204))
}

/// `PUT /api/cluster/nodes/{id}` adds a started, registered node to the cluster's metadata
/// group; `DELETE` removes one (refused while it holds partition replicas). Administrators only.
pub(crate) fn cluster_member(c: &Caller<'_>, id: &str, add: bool) -> ApiResult {
    c.need_admin()?;
    let Some(cluster) = &c.api.cluster else {
        return Err(ApiError::not_found(
            "this node runs alone (no --node-id, --cluster-listen, --cluster-peers)".to_string(),
        ));
    };
    let id: u64 = id
        .parse()
        .map_err(|_| ApiError::bad(format!("'{id}' is not a node id (a number)")))?;
    let r = tokio::runtime::Handle::current().block_on(async {
        if add {
            cluster.add_node(id).await
        } else {
            cluster.remove_node(id).await
        }
    });
    match r {
        Ok(()) => Ok(Response::empty(204)),
        Err(eddy_cluster::ClusterError::Meta(e)) => Err(ApiError::bad(e.to_string())),
        Err(e) => Err(ApiError::new(503, "unavailable", e.to_string())),
    }
}
