//! Topics, consumer groups (committed offsets and lag) and stream jobs.

use std::time::Duration;

use eddy_broker::{Access, TopicConfig};
use serde_json::{json, Map, Value};

use crate::api::json::body;
use crate::api::{one, ApiError, ApiResult, Caller};
use crate::server::{Request, Response};
use crate::Api;

pub(crate) fn topics(c: &Caller<'_>) -> Result<Value, ApiError> {
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

pub(crate) fn groups(c: &Caller<'_>) -> Value {
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
pub(crate) fn topic_config(v: Option<&Value>) -> Result<TopicConfig, ApiError> {
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
pub(crate) const JOB_STALE: Duration = Duration::from_secs(60);
/// Largest job report kept (a report is a few hundred bytes of figures).
pub(crate) const MAX_JOB_REPORT: usize = 64 << 10;
/// Most jobs whose latest reports are kept at once.
pub(crate) const MAX_JOBS: usize = 1024;

pub(crate) fn jobs(api: &Api) -> Value {
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

/// `GET /api/topics/{name}`.
pub(crate) fn topic(c: &Caller<'_>, name: &str) -> ApiResult {
    one(
        topics(c)?,
        |t| t["name"] == name,
        || format!("no topic '{name}'"),
    )
}

/// `PUT /api/topics/{name}`: `{"partitions": N, "config": {...}}`.
pub(crate) fn put_topic(c: &Caller<'_>, name: &str, req: &Request) -> ApiResult {
    c.check("/", Access::Configure, "topic", name)?;
    let b = &body(req)?;
    let partitions = match b.get("partitions") {
        None | Some(Value::Null) => 1,
        Some(v) => v
            .as_u64()
            .filter(|n| *n >= 1)
            .ok_or_else(|| ApiError::bad("partitions must be a positive integer"))?
            as usize,
    };
    let config = topic_config(b.get("config"))?;
    if let Some(cluster) = &c.api.cluster {
        // replicated: through the metadata group, as Kafka's CreateTopics (`"replication_factor"`
        // in the body, else the default)
        eddy_broker::topic::check_topic_name(name)?;
        let rf = match b.get("replication_factor") {
            None | Some(Value::Null) => None,
            Some(v) => Some(
                v.as_u64()
                    .filter(|n| *n >= 1)
                    .ok_or_else(|| ApiError::bad("replication_factor must be a positive integer"))?
                    as usize,
            ),
        };
        let r = tokio::runtime::Handle::current()
            .block_on(cluster.create_topic(name, partitions, rf, &config));
        return match r {
            Ok(()) => Ok(Response::empty(201)),
            Err(e) => Err(cluster_error(e)),
        };
    }
    if b.get("replication_factor")
        .is_some_and(|v| v.as_u64() != Some(1))
    {
        return Err(ApiError::bad(
            "replication_factor above 1 needs a cluster: this node runs alone",
        ));
    }
    c.api.broker.create_topic(name, partitions, config)?;
    Ok(Response::empty(201))
}

/// A cluster operation's failure as an API error.
fn cluster_error(e: eddy_cluster::ClusterError) -> ApiError {
    match e {
        eddy_cluster::ClusterError::Meta(eddy_cluster::MetaError::NotFound(m)) => {
            ApiError::not_found(m)
        }
        eddy_cluster::ClusterError::Meta(m) => ApiError::bad(m.to_string()),
        other => ApiError::new(503, "unavailable", other.to_string()),
    }
}

/// `DELETE /api/topics/{name}`.
pub(crate) fn delete_topic(c: &Caller<'_>, name: &str) -> ApiResult {
    c.check("/", Access::Configure, "topic", name)?;
    if let Some(cluster) = c.api.cluster.as_ref().filter(|cl| cl.is_replicated(name)) {
        tokio::runtime::Handle::current()
            .block_on(cluster.delete_topic(name))
            .map_err(cluster_error)?;
        return Ok(Response::empty(204));
    }
    c.api.broker.delete_topic(name)?;
    Ok(Response::empty(204))
}

/// `PUT /api/jobs/{name}`: a running stream job reports itself (eddy run does, every few
/// seconds).
pub(crate) fn put_job(c: &Caller<'_>, name: &str, req: &Request) -> ApiResult {
    c.check("/", Access::Write, "job", name)?;
    // reports are held in memory: bounded in size and number, and dropped once stale
    if req.body.len() > MAX_JOB_REPORT {
        return Err(ApiError::new(
            413,
            "payload_too_large",
            format!(
                "a job report is at most {MAX_JOB_REPORT} bytes, not {}",
                req.body.len()
            ),
        ));
    }
    let b = body(req)?;
    let mut jobs = c.api.jobs.lock();
    jobs.retain(|_, (at, _)| at.elapsed() < JOB_STALE);
    if jobs.len() >= MAX_JOBS && !jobs.contains_key(name) {
        return Err(ApiError::new(
            503,
            "too_many_jobs",
            format!(
                "{MAX_JOBS} jobs report already; a job's report goes once it is {JOB_STALE:?} old"
            ),
        ));
    }
    jobs.insert(name.to_string(), (std::time::Instant::now(), b));
    Ok(Response::empty(204))
}
