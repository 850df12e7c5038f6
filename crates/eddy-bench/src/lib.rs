//! `eddy-bench`: load generators that run the same workload against Eddy or a peer (RabbitMQ)
//! with the same client, so results compare side by side.
//!
//! The AMQP generator uses lapin: N producers and M consumers, each on its own connection, one
//! fresh queue; bodies carry their send time so consumers measure end-to-end latency; with
//! `--confirm` producers keep a bounded window of unconfirmed publishes in flight (pipelined);
//! `--rate` offers a fixed load so latency compares at equal throughput.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use futures_lite::stream::StreamExt;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use parking_lot::Mutex;

mod kafka;
mod nexmark;
mod raw;

pub use kafka::{run_kafka, KafkaBenchArgs};
pub use nexmark::{run_nexmark, NexmarkBenchArgs, NexmarkResult};

/// Arguments of `eddy bench amqp`.
#[derive(clap::Args, Debug, Clone)]
pub struct AmqpBenchArgs {
    /// Broker URI
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    pub uri: String,
    /// Run the same benchmark against this broker too and print the ratio (first / second)
    #[arg(long)]
    pub compare_uri: Option<String>,
    /// Producer connections
    #[arg(long, default_value_t = 1)]
    pub producers: usize,
    /// Consumer connections
    #[arg(long, default_value_t = 1)]
    pub consumers: usize,
    /// Message body size in bytes (at least 8: the send timestamp)
    #[arg(long, default_value_t = 100)]
    pub size: usize,
    /// Seconds to publish
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Publisher confirms, with a window of unconfirmed messages in flight
    #[arg(long)]
    pub confirm: bool,
    /// Unconfirmed publishes in flight per producer (with --confirm)
    #[arg(long, default_value_t = 256)]
    pub confirm_window: usize,
    /// Persistent messages (delivery_mode 2) on a durable queue
    #[arg(long)]
    pub persistent: bool,
    /// Producers pause while more than this many messages are published but not yet
    /// consumed, so latency measures a sustainable rate rather than a growing backlog
    /// (0 = unlimited)
    #[arg(long, default_value_t = 2000)]
    pub max_backlog: u64,
    /// Offered load in messages/s over all producers (0 = as fast as the broker takes them).
    /// Latency is only comparable between brokers at the same offered load
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Publishes a lapin producer keeps in flight at once, so lapin can put many frames in
    /// one write (with `--client lapin`)
    #[arg(long, default_value_t = 64)]
    pub pipeline: usize,
    /// Consumer prefetch (basic.qos)
    #[arg(long, default_value_t = 1000)]
    pub prefetch: u16,
    /// Queue name (default: a fresh one, deleted afterwards)
    #[arg(long)]
    pub queue: Option<String>,
    /// Print the report as JSON
    #[arg(long)]
    pub json: bool,
    /// Load client: `raw` (lean, prebuilt frames batched per write, so the broker is what is
    /// measured) or `lapin` (the lapin library, as applications use it)
    #[arg(long, value_enum, default_value_t = Client::Raw)]
    pub client: Client,
}

/// Which AMQP client generates the load.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Client {
    /// Eddy's lean built-in client.
    Raw,
    /// lapin.
    Lapin,
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, Default)]
pub struct Percentiles {
    /// median
    pub p50: f64,
    /// 99th
    pub p99: f64,
    /// 99.9th
    pub p999: f64,
}

impl Percentiles {
    fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Percentiles::default();
        }
        let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        Percentiles {
            p50: ms(0.5),
            p99: ms(0.99),
            p999: ms(0.999),
        }
    }
}

/// Results of one run.
#[derive(Debug, Clone)]
pub struct AmqpReport {
    /// The broker measured.
    pub uri: String,
    /// Messages published.
    pub published: u64,
    /// Messages confirmed (with --confirm).
    pub confirmed: u64,
    /// Messages consumed.
    pub consumed: u64,
    /// Publish rate, messages/s.
    pub publish_rate: f64,
    /// Consume rate, messages/s.
    pub consume_rate: f64,
    /// Body size.
    pub size: usize,
    /// Publish → confirm latency.
    pub confirm_latency: Percentiles,
    /// Publish → delivery latency.
    pub e2e_latency: Percentiles,
}

impl AmqpReport {
    /// Human-readable summary.
    pub fn print_human(&self) {
        let mb = |r: f64| r * self.size as f64 / 1e6;
        println!("broker        {}", redact(&self.uri));
        println!(
            "published     {} ({:.0} msg/s, {:.1} MB/s)",
            self.published,
            self.publish_rate,
            mb(self.publish_rate)
        );
        if self.confirmed > 0 {
            println!("confirmed     {}", self.confirmed);
            let c = self.confirm_latency;
            println!(
                "confirm lat.  p50 {:.2} ms  p99 {:.2} ms  p999 {:.2} ms",
                c.p50, c.p99, c.p999
            );
        }
        println!(
            "consumed      {} ({:.0} msg/s, {:.1} MB/s)",
            self.consumed,
            self.consume_rate,
            mb(self.consume_rate)
        );
        let e = self.e2e_latency;
        println!(
            "end-to-end    p50 {:.2} ms  p99 {:.2} ms  p999 {:.2} ms",
            e.p50, e.p99, e.p999
        );
    }

    /// JSON object.
    pub fn to_json(&self) -> String {
        format!(
            "{{\"uri\":\"{}\",\"published\":{},\"confirmed\":{},\"consumed\":{},\"publish_rate\":{:.1},\"consume_rate\":{:.1},\"size\":{},\"confirm_p50_ms\":{:.3},\"confirm_p99_ms\":{:.3},\"confirm_p999_ms\":{:.3},\"e2e_p50_ms\":{:.3},\"e2e_p99_ms\":{:.3},\"e2e_p999_ms\":{:.3}}}",
            redact(&self.uri).replace('"', ""),
            self.published,
            self.confirmed,
            self.consumed,
            self.publish_rate,
            self.consume_rate,
            self.size,
            self.confirm_latency.p50,
            self.confirm_latency.p99,
            self.confirm_latency.p999,
            self.e2e_latency.p50,
            self.e2e_latency.p99,
            self.e2e_latency.p999
        )
    }
}

pub(crate) fn redact(uri: &str) -> String {
    match (uri.find("://"), uri.find('@')) {
        (Some(s), Some(a)) if a > s => format!("{}://***@{}", &uri[..s], &uri[a + 1..]),
        _ => uri.to_owned(),
    }
}

async fn connect(uri: &str) -> Result<Connection> {
    tokio::time::timeout(
        Duration::from_secs(10),
        Connection::connect(uri, ConnectionProperties::default()),
    )
    .await
    .with_context(|| format!("timed out connecting to {}", redact(uri)))?
    .with_context(|| format!("connecting to {}", redact(uri)))
}

pub(crate) struct Shared {
    consumers: usize,
    /// Messages/s per producer (0 = unpaced).
    rate_per_producer: f64,
    max_backlog: u64,
    epoch: Instant,
    published: AtomicU64,
    confirmed: AtomicU64,
    consumed: AtomicU64,
    stop: AtomicBool,
    e2e: Mutex<Histogram<u64>>,
    confirm_lat: Mutex<Histogram<u64>>,
}

impl Shared {
    /// Wait while the backlog (published - consumed) is above the limit.
    pub(crate) async fn throttle(&self) {
        if self.consumers == 0 || self.max_backlog == 0 {
            return;
        }
        while self
            .published
            .load(Ordering::Relaxed)
            .saturating_sub(self.consumed.load(Ordering::Relaxed))
            > self.max_backlog
        {
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
    }

    /// How many messages a producer that started at `start` and has sent `sent` may send now,
    /// at most `max`; with `--rate` it sleeps until at least one is due.
    pub(crate) async fn pace(&self, start: Instant, sent: u64, max: usize) -> usize {
        if self.rate_per_producer <= 0.0 {
            return max;
        }
        loop {
            let due = (start.elapsed().as_secs_f64() * self.rate_per_producer) as u64;
            if due > sent {
                return ((due - sent) as usize).min(max);
            }
            let wait = (sent + 1) as f64 / self.rate_per_producer - start.elapsed().as_secs_f64();
            tokio::time::sleep(Duration::from_secs_f64(wait.max(0.0))).await;
        }
    }
}

/// Await every future, polling them together (lapin then writes their frames in one go).
async fn join_all<F: std::future::Future>(futs: Vec<F>) -> Vec<F::Output> {
    let mut futs: Vec<std::pin::Pin<Box<F>>> = futs.into_iter().map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = futs.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, o) in futs.iter_mut().zip(out.iter_mut()) {
            if o.is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *o = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter()
        .map(|o| o.expect("every future finished"))
        .collect()
}

pub(crate) fn hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

/// Run the AMQP benchmark (and the comparison run, if asked), printing the results.
pub async fn run_amqp(args: AmqpBenchArgs) -> Result<Vec<AmqpReport>> {
    let mut reports = vec![run_once(&args, &args.uri).await?];
    if let Some(other) = &args.compare_uri {
        reports.push(run_once(&args, other).await?);
    }
    if args.json {
        let items: Vec<String> = reports.iter().map(|r| r.to_json()).collect();
        println!("[{}]", items.join(","));
    } else {
        for r in &reports {
            r.print_human();
            println!();
        }
        if let [a, b] = &reports[..] {
            let ratio = |x: f64, y: f64| if y > 0.0 { x / y } else { f64::NAN };
            println!("ratio (first / second)");
            println!(
                "publish rate  {:.2}x",
                ratio(a.publish_rate, b.publish_rate)
            );
            println!(
                "consume rate  {:.2}x",
                ratio(a.consume_rate, b.consume_rate)
            );
            println!(
                "e2e p99       {:.2}x (lower is better)",
                ratio(a.e2e_latency.p99, b.e2e_latency.p99)
            );
            if args.confirm {
                println!(
                    "confirm p99   {:.2}x (lower is better)",
                    ratio(a.confirm_latency.p99, b.confirm_latency.p99)
                );
            }
        }
    }
    Ok(reports)
}

async fn run_once(args: &AmqpBenchArgs, uri: &str) -> Result<AmqpReport> {
    anyhow::ensure!(
        args.size >= 8,
        "--size must be at least 8 bytes (the body carries its send time)"
    );
    anyhow::ensure!(
        args.producers > 0 || args.consumers > 0,
        "need producers or consumers"
    );
    let queue = args
        .queue
        .clone()
        .unwrap_or_else(|| format!("eddy-bench-{}-{}", std::process::id(), rand_suffix()));
    anyhow::ensure!(
        args.rate >= 0.0 && args.rate.is_finite(),
        "--rate must be a non-negative number of messages/s"
    );
    let shared = Arc::new(Shared {
        consumers: args.consumers,
        rate_per_producer: args.rate / args.producers.max(1) as f64,
        max_backlog: args.max_backlog,
        epoch: Instant::now(),
        published: AtomicU64::new(0),
        confirmed: AtomicU64::new(0),
        consumed: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        e2e: Mutex::new(hist()),
        confirm_lat: Mutex::new(hist()),
    });
    let mut consumers = Vec::new();
    let mut producers = Vec::new();
    let setup;
    let start;
    let deadline;
    match args.client {
        Client::Lapin => {
            let conn = connect(uri).await?;
            let sch = conn.create_channel().await?;
            sch.queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions {
                    durable: args.persistent,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .context("declaring the benchmark queue")?;
            setup = Setup::Lapin(Box::new((conn, sch)));
            for i in 0..args.consumers {
                let conn = connect(uri).await?;
                let ch = conn.create_channel().await?;
                ch.basic_qos(args.prefetch, BasicQosOptions::default())
                    .await?;
                let c = ch
                    .basic_consume(
                        queue.as_str().into(),
                        format!("bench-{i}").as_str().into(),
                        BasicConsumeOptions::default(),
                        FieldTable::default(),
                    )
                    .await?;
                consumers.push(tokio::spawn(consume(
                    conn,
                    ch,
                    c,
                    shared.clone(),
                    (args.prefetch as u64 / 4).max(1),
                )));
            }
            start = Instant::now();
            deadline = start + Duration::from_secs(args.seconds);
            for _ in 0..args.producers {
                let conn = connect(uri).await?;
                producers.push(tokio::spawn(produce(
                    conn,
                    queue.clone(),
                    args.clone(),
                    shared.clone(),
                    deadline,
                )));
            }
        }
        Client::Raw => {
            setup = Setup::Raw(
                raw::declare(uri, &queue, args.persistent)
                    .await
                    .context("declaring the benchmark queue")?,
            );
            for i in 0..args.consumers {
                let (tx, rx) = tokio::sync::oneshot::channel();
                consumers.push(tokio::spawn(raw::consume(
                    uri.to_owned(),
                    queue.clone(),
                    args.clone(),
                    shared.clone(),
                    format!("bench-{i}"),
                    tx,
                )));
                rx.await
                    .map_err(|_| anyhow::anyhow!("consumer failed to start"))?;
            }
            start = Instant::now();
            deadline = start + Duration::from_secs(args.seconds);
            for _ in 0..args.producers {
                producers.push(tokio::spawn(raw::produce(
                    uri.to_owned(),
                    queue.clone(),
                    args.clone(),
                    shared.clone(),
                    deadline,
                )));
            }
        }
    }
    let pb = ProgressBar::new(args.seconds);
    pb.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len}s {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut last = (0u64, 0u64, Instant::now());
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let (p, c) = (
            shared.published.load(Ordering::Relaxed),
            shared.consumed.load(Ordering::Relaxed),
        );
        let dt = last.2.elapsed().as_secs_f64();
        pb.set_position(start.elapsed().as_secs().min(args.seconds));
        pb.set_message(format!(
            "publish {:.0}/s consume {:.0}/s",
            (p - last.0) as f64 / dt,
            (c - last.1) as f64 / dt
        ));
        last = (p, c, Instant::now());
    }
    let mut publish_elapsed = start.elapsed();
    for p in producers {
        p.await.context("producer task")??;
        publish_elapsed = start.elapsed();
    }
    pb.finish_and_clear();
    let published = shared.published.load(Ordering::Relaxed);
    // let consumers drain (bounded: stop when no progress for 5 s)
    if args.consumers > 0 {
        let mut seen = shared.consumed.load(Ordering::Relaxed);
        let mut progress_at = Instant::now();
        while seen < published && progress_at.elapsed() < Duration::from_secs(5) {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let now = shared.consumed.load(Ordering::Relaxed);
            if now != seen {
                seen = now;
                progress_at = Instant::now();
            }
        }
    }
    let consume_elapsed = start.elapsed();
    shared.stop.store(true, Ordering::Relaxed);
    for c in consumers {
        c.await.context("consumer task")??;
    }
    match setup {
        Setup::Lapin(b) => {
            let (conn, sch) = *b;
            if args.queue.is_none() {
                let _ = sch
                    .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                    .await;
            }
            let _ = conn.close(200, "bench done".into()).await;
        }
        Setup::Raw(c) => {
            if args.queue.is_none() {
                raw::delete(c, &queue).await?;
            } else {
                c.close().await;
            }
        }
    }
    let consumed = shared.consumed.load(Ordering::Relaxed);
    let e2e = Percentiles::of(&shared.e2e.lock());
    let confirm_latency = Percentiles::of(&shared.confirm_lat.lock());
    Ok(AmqpReport {
        uri: uri.to_owned(),
        published,
        confirmed: shared.confirmed.load(Ordering::Relaxed),
        consumed,
        publish_rate: published as f64 / publish_elapsed.as_secs_f64(),
        consume_rate: consumed as f64 / consume_elapsed.as_secs_f64(),
        size: args.size,
        confirm_latency,
        e2e_latency: e2e,
    })
}

enum Setup {
    Lapin(Box<(Connection, lapin::Channel)>),
    Raw(raw::RawConn),
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as u64)
        .unwrap_or(0)
}

async fn produce(
    conn: Connection,
    queue: String,
    args: AmqpBenchArgs,
    shared: Arc<Shared>,
    deadline: Instant,
) -> Result<()> {
    let ch = conn.create_channel().await?;
    if args.confirm {
        ch.confirm_select(ConfirmSelectOptions::default()).await?;
    }
    let props = if args.persistent {
        BasicProperties::default().with_delivery_mode(2)
    } else {
        BasicProperties::default()
    };
    let mut body = vec![0u8; args.size];
    // confirms are awaited, in publish order, by a collector task, so their latency is taken
    // when they arrive; the window bounds how many are unconfirmed
    let window = Arc::new(tokio::sync::Semaphore::new(args.confirm_window.max(1)));
    let (confirms, mut to_collect) =
        tokio::sync::mpsc::unbounded_channel::<(u64, lapin::PublisherConfirm)>();
    let collector = {
        let (shared, window) = (shared.clone(), window.clone());
        tokio::spawn(async move {
            let mut local = hist();
            while let Some((t0, pc)) = to_collect.recv().await {
                if pc.await?.is_ack() {
                    shared.confirmed.fetch_add(1, Ordering::Relaxed);
                }
                let now = shared.epoch.elapsed().as_nanos() as u64;
                let _ = local.record((now.saturating_sub(t0) / 1000).max(1));
                window.add_permits(1);
            }
            Ok::<_, lapin::Error>(local)
        })
    };
    let start = Instant::now();
    let mut sent = 0u64;
    let pipeline = args.pipeline.max(1).min(args.confirm_window.max(1));
    while Instant::now() < deadline {
        shared.throttle().await;
        let n = shared.pace(start, sent, pipeline).await;
        if args.confirm {
            window.acquire_many(n as u32).await?.forget();
        }
        // one send time for the batch; its publishes are in flight together
        let t = shared.epoch.elapsed().as_nanos() as u64;
        body[..8].copy_from_slice(&t.to_le_bytes());
        let publishes = (0..n)
            .map(|_| {
                ch.basic_publish(
                    "".into(),
                    queue.as_str().into(),
                    BasicPublishOptions::default(),
                    &body,
                    props.clone(),
                )
            })
            .collect();
        for pc in join_all(publishes).await {
            let pc = pc?;
            if args.confirm {
                let _ = confirms.send((t, pc));
            }
        }
        sent += n as u64;
        shared.published.fetch_add(n as u64, Ordering::Relaxed);
    }
    drop(confirms);
    let local = collector.await.context("confirm collector")??;
    shared.confirm_lat.lock().add(&local).ok();
    let _ = conn.close(200, "bench done".into()).await;
    Ok(())
}

async fn consume(
    conn: Connection,
    ch: lapin::Channel,
    mut consumer: lapin::Consumer,
    shared: Arc<Shared>,
    ack_every: u64,
) -> Result<()> {
    let mut local = hist();
    let mut since_ack = 0u64;
    let mut last_tag = None;
    loop {
        let next = tokio::time::timeout(Duration::from_millis(100), consumer.next()).await;
        match next {
            Ok(Some(d)) => {
                let d = d?;
                if d.data.len() >= 8 {
                    let t0 = u64::from_le_bytes(d.data[..8].try_into().expect("8 bytes"));
                    let now = shared.epoch.elapsed().as_nanos() as u64;
                    let _ = local.record((now.saturating_sub(t0) / 1000).max(1));
                }
                shared.consumed.fetch_add(1, Ordering::Relaxed);
                since_ack += 1;
                last_tag = Some(d.delivery_tag);
                if since_ack >= ack_every {
                    ch.basic_ack(d.delivery_tag, BasicAckOptions { multiple: true })
                        .await?;
                    since_ack = 0;
                    last_tag = None;
                }
            }
            Ok(None) => break,
            Err(_) => {
                if let Some(tag) = last_tag.take() {
                    ch.basic_ack(tag, BasicAckOptions { multiple: true })
                        .await?;
                    since_ack = 0;
                }
                if shared.stop.load(Ordering::Relaxed) {
                    break;
                }
            }
        }
    }
    if let Some(tag) = last_tag {
        let _ = ch.basic_ack(tag, BasicAckOptions { multiple: true }).await;
    }
    shared.e2e.lock().add(&local).ok();
    let _ = conn.close(200, "bench done".into()).await;
    Ok(())
}
