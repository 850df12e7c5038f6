//! `/metrics` in Prometheus' text exposition format (version 0.0.4).
//!
//! A scraper sees what the API shows the same user: queues of the vhosts it may see, topics
//! and groups if it may see `/`, the connections and channels it may list; the node's own
//! figures (bytes, fsyncs, memory, disk, alarms, uptime) only with the monitoring or
//! administrator tag, as `/api/nodes`.

use std::fmt::Write;
use std::time::Instant;

use eddy_broker::{QueueCounts, User, FSYNC_BUCKETS};

use crate::api::{Api, Caller};
use crate::stats::{Queueing, Reading, QUEUEING_WINDOW};

/// Escape a label value.
fn esc(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// A float as Prometheus writes it.
fn num(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        format!("{v}")
    }
}

struct Out {
    text: String,
}

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.text, "# HELP {name} {help}");
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
    }
    fn sample(&mut self, name: &str, labels: &[(&str, &str)], v: f64) {
        self.text.push_str(name);
        if !labels.is_empty() {
            self.text.push('{');
            for (i, (k, val)) in labels.iter().enumerate() {
                if i > 0 {
                    self.text.push(',');
                }
                let _ = write!(self.text, "{k}=\"{}\"", esc(val));
            }
            self.text.push('}');
        }
        let _ = writeln!(self.text, " {}", num(v));
    }
    /// One family with one sample per item.
    fn each<T>(
        &mut self,
        name: &str,
        kind: &str,
        help: &str,
        items: &[T],
        labels: impl Fn(&T) -> Vec<(&'static str, String)>,
        value: impl Fn(&T) -> Option<f64>,
    ) {
        self.family(name, kind, help);
        for it in items {
            if let Some(v) = value(it) {
                let l = labels(it);
                let l: Vec<(&str, &str)> = l.iter().map(|(k, v)| (*k, v.as_str())).collect();
                self.sample(name, &l, v);
            }
        }
    }
}

struct Q {
    vhost: String,
    name: String,
    counts: QueueCounts,
    queueing: Option<Queueing>,
}

/// The exposition `user` may see.
pub fn render(api: &Api, user: &User) -> String {
    let c = &Caller { user, api };
    let b = &api.broker;
    let mut o = Out {
        text: String::with_capacity(16 * 1024),
    };
    let mut qs = Vec::new();
    for v in b.vhosts().into_iter().filter(|v| c.sees(&v.name)) {
        for q in v.queues() {
            let counts = q.counts();
            let now = Reading {
                at: Instant::now(),
                stats: counts.stats,
            };
            let queueing = api
                .history
                .queue_base(&v.name, &q.name, QUEUEING_WINDOW)
                .map(|base| Queueing::between(&base, &now, &counts));
            qs.push(Q {
                vhost: v.name.clone(),
                name: q.name.clone(),
                counts,
                queueing,
            });
        }
    }
    qs.sort_by(|a, b| (&a.vhost, &a.name).cmp(&(&b.vhost, &b.name)));
    let ql = |q: &Q| vec![("vhost", q.vhost.clone()), ("queue", q.name.clone())];
    let qc = |name: &str, kind: &str, help: &str, o: &mut Out, f: &dyn Fn(&Q) -> Option<f64>| {
        o.each(name, kind, help, &qs, ql, f);
    };
    qc(
        "eddy_queue_messages_ready",
        "gauge",
        "Messages ready for delivery.",
        &mut o,
        &|q| Some(q.counts.ready as f64),
    );
    qc(
        "eddy_queue_messages_unacked",
        "gauge",
        "Messages delivered and not yet acknowledged.",
        &mut o,
        &|q| Some(q.counts.unacked as f64),
    );
    qc(
        "eddy_queue_messages_ready_bytes",
        "gauge",
        "Body bytes of the ready messages.",
        &mut o,
        &|q| Some(q.counts.ready_bytes as f64),
    );
    qc(
        "eddy_queue_consumers",
        "gauge",
        "Consumers.",
        &mut o,
        &|q| Some(q.counts.consumers as f64),
    );
    qc(
        "eddy_queue_messages_published_total",
        "counter",
        "Messages enqueued.",
        &mut o,
        &|q| Some(q.counts.stats.published as f64),
    );
    qc(
        "eddy_queue_messages_delivered_total",
        "counter",
        "Deliveries, including basic.get and redeliveries.",
        &mut o,
        &|q| Some(q.counts.stats.delivered as f64),
    );
    qc(
        "eddy_queue_messages_acked_total",
        "counter",
        "Messages acknowledged (or delivered without acknowledgement).",
        &mut o,
        &|q| Some(q.counts.stats.acked as f64),
    );
    qc(
        "eddy_queue_messages_redelivered_total",
        "counter",
        "Redeliveries.",
        &mut o,
        &|q| Some(q.counts.stats.redelivered as f64),
    );
    qc(
        "eddy_queue_busy_seconds_total",
        "counter",
        "Time consumers had work from the queue.",
        &mut o,
        &|q| Some(q.counts.stats.busy_secs),
    );
    qc(
        "eddy_queue_arrival_rate",
        "gauge",
        "Queueing view, lambda: messages arriving per second (last 30 s).",
        &mut o,
        &|q| q.queueing.map(|x| x.arrival_rate),
    );
    qc(
        "eddy_queue_service_rate",
        "gauge",
        "Queueing view, mu: messages served per second of busy time (last 30 s).",
        &mut o,
        &|q| q.queueing.and_then(|x| x.service_rate),
    );
    qc(
        "eddy_queue_utilisation",
        "gauge",
        "Queueing view, rho = lambda / mu.",
        &mut o,
        &|q| q.queueing.and_then(|x| x.utilisation),
    );
    qc(
        "eddy_queue_mean_time_in_queue_seconds",
        "gauge",
        "Queueing view, W: mean time in the queue of the messages that left (last 30 s).",
        &mut o,
        &|q| q.queueing.and_then(|x| x.mean_time_in_queue),
    );
    qc(
        "eddy_queue_mean_messages",
        "gauge",
        "Queueing view, L: time-average of the messages held (last 30 s).",
        &mut o,
        &|q| q.queueing.map(|x| x.mean_messages),
    );
    qc(
        "eddy_queue_littles_law_messages",
        "gauge",
        "Queueing view, lambda * W, which Little's law predicts equals L.",
        &mut o,
        &|q| q.queueing.and_then(|x| x.littles_law_messages),
    );
    qc(
        "eddy_queue_drain_seconds",
        "gauge",
        "Queueing view: predicted time to drain the backlog (+Inf: it grows).",
        &mut o,
        &|q| q.queueing.map(|x| x.drain_secs.unwrap_or(f64::INFINITY)),
    );

    // topics and groups (Kafka's live in vhost `/`)
    let kafka = c.sees("/");
    let mut parts = Vec::new();
    for t in b.topics().into_iter().filter(|_| kafka) {
        for (i, p) in t.partitions().iter().enumerate() {
            parts.push((
                t.name.clone(),
                i.to_string(),
                p.start_offset(),
                p.end_offset(),
            ));
        }
    }
    let pl =
        |p: &(String, String, u64, u64)| vec![("topic", p.0.clone()), ("partition", p.1.clone())];
    o.each(
        "eddy_topic_partition_start_offset",
        "gauge",
        "First offset still stored.",
        &parts,
        pl,
        |p| Some(p.2 as f64),
    );
    o.each(
        "eddy_topic_partition_end_offset",
        "gauge",
        "The offset the next record gets (log end).",
        &parts,
        pl,
        |p| Some(p.3 as f64),
    );
    let mut groups = Vec::new();
    for g in b.offsets().group_names().into_iter().filter(|_| kafka) {
        for (t, p, c) in b.offsets().group(&g) {
            let end = b
                .topic(&t)
                .and_then(|x| x.partition(p))
                .map(|x| x.end_offset());
            groups.push((g.clone(), t, p.to_string(), c.offset, end));
        }
    }
    let gl = |g: &(String, String, String, i64, Option<u64>)| {
        vec![
            ("group", g.0.clone()),
            ("topic", g.1.clone()),
            ("partition", g.2.clone()),
        ]
    };
    o.each(
        "eddy_group_committed_offset",
        "gauge",
        "A consumer group's committed offset.",
        &groups,
        gl,
        |g| Some(g.3 as f64),
    );
    o.each(
        "eddy_group_lag",
        "gauge",
        "Records between a group's committed offset and the log end.",
        &groups,
        gl,
        |g| g.4.map(|end| end.saturating_sub(g.3.max(0) as u64) as f64),
    );

    // connections (a management user's own, as the API lists them)
    let conns: Vec<_> = b
        .connections()
        .into_iter()
        .filter(|x| c.sees_all() || x.user() == c.user.name)
        .collect();
    o.family("eddy_connections", "gauge", "Open connections by protocol.");
    for proto in ["AMQP 0-9-1", "Kafka"] {
        let n = conns.iter().filter(|c| c.protocol == proto).count();
        o.sample("eddy_connections", &[("protocol", proto)], n as f64);
    }
    o.family("eddy_channels", "gauge", "Open AMQP channels.");
    o.sample(
        "eddy_channels",
        &[],
        conns.iter().map(|c| c.channels().len()).sum::<usize>() as f64,
    );
    if !c.sees_all() {
        return o.text;
    }
    let (recv, sent, opened) = b.connection_totals();
    o.family(
        "eddy_connections_opened_total",
        "counter",
        "Connections accepted.",
    );
    o.sample("eddy_connections_opened_total", &[], opened as f64);
    o.family(
        "eddy_received_bytes_total",
        "counter",
        "Bytes read from clients.",
    );
    o.sample("eddy_received_bytes_total", &[], recv as f64);
    o.family(
        "eddy_sent_bytes_total",
        "counter",
        "Bytes written to clients.",
    );
    o.sample("eddy_sent_bytes_total", &[], sent as f64);

    // fsync latency
    let h = b.fsync_histogram();
    o.family(
        "eddy_fsync_duration_seconds",
        "histogram",
        "How long the group committer's fsyncs took.",
    );
    let mut cum = 0u64;
    for (i, bound) in FSYNC_BUCKETS.iter().enumerate() {
        cum += h.counts[i];
        o.sample(
            "eddy_fsync_duration_seconds_bucket",
            &[("le", &num(*bound))],
            cum as f64,
        );
    }
    cum += h.counts[FSYNC_BUCKETS.len()];
    o.sample(
        "eddy_fsync_duration_seconds_bucket",
        &[("le", "+Inf")],
        cum as f64,
    );
    o.sample("eddy_fsync_duration_seconds_sum", &[], h.sum_secs);
    o.sample("eddy_fsync_duration_seconds_count", &[], cum as f64);

    // resources
    let cfg = b.config();
    let alarms = *b.alarms().borrow();
    let g = |o: &mut Out, name: &str, help: &str, v: f64| {
        o.family(name, "gauge", help);
        o.sample(name, &[], v);
    };
    g(
        &mut o,
        "eddy_memory_used_bytes",
        "Bytes of messages held in memory.",
        b.memory_used().max(0) as f64,
    );
    g(
        &mut o,
        "eddy_memory_high_watermark_bytes",
        "Publishers are blocked above this.",
        cfg.memory_high_watermark as f64,
    );
    g(
        &mut o,
        "eddy_memory_alarm",
        "1 while the memory alarm is raised.",
        alarms.memory as u8 as f64,
    );
    if let Some(free) = b.disk_free() {
        g(
            &mut o,
            "eddy_disk_free_bytes",
            "Free bytes on the data directory's file system.",
            free as f64,
        );
    }
    g(
        &mut o,
        "eddy_disk_free_limit_bytes",
        "Publishers are blocked below this much free disk.",
        cfg.disk_free_limit as f64,
    );
    g(
        &mut o,
        "eddy_disk_alarm",
        "1 while the disk alarm is raised.",
        alarms.disk as u8 as f64,
    );
    g(
        &mut o,
        "eddy_publishers_blocked",
        "1 while publishers are blocked by an alarm.",
        alarms.blocked() as u8 as f64,
    );
    g(
        &mut o,
        "eddy_uptime_seconds",
        "Seconds since the broker started.",
        b.uptime().as_secs_f64(),
    );
    o.text
}
