//! `eddy bench kafka`: a lean Kafka producer and consumer (requests encoded with
//! `kafka-protocol`, record batches built from a template with only the send time patched in),
//! so the broker, not the client, is what gets measured. It speaks plain Kafka and runs
//! against any Kafka broker.
//!
//! Producers keep `--inflight` produce requests outstanding per connection; consumers fetch
//! from the start of each partition. Every record's value starts with its send time (µs), so
//! consumers measure end-to-end latency.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use bytes::{BufMut, Bytes, BytesMut};
use eddy_records::{get_varint, BatchBuilder, BatchHeader, HEADER, LOG_OVERHEAD};
use eddy_stream::now_ms as wall_ms;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    ApiKey, CreateTopicsRequest, CreateTopicsResponse, FetchRequest, FetchResponse, ProduceRequest,
    ProduceResponse, RequestHeader, ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

use crate::hist;

/// Arguments of `eddy bench kafka`.
#[derive(clap::Args, Debug, Clone)]
pub struct KafkaBenchArgs {
    /// Bootstrap broker HOST:PORT: the topic is created there, and each partition is then
    /// produced to and fetched from its leader as Metadata names it (a cluster too)
    #[arg(long, default_value = "127.0.0.1:9092")]
    pub bootstrap: String,
    /// Replicas of each partition of the fresh benchmark topic
    #[arg(long, default_value_t = 1)]
    pub replication_factor: i16,
    /// Producer connections
    #[arg(long, default_value_t = 1)]
    pub producers: usize,
    /// Consumer connections (each reads every partition)
    #[arg(long, default_value_t = 1)]
    pub consumers: usize,
    /// Partitions of the fresh benchmark topic
    #[arg(long, default_value_t = 1)]
    pub partitions: usize,
    /// Record value size in bytes (at least 8: the send time)
    #[arg(long, default_value_t = 1024)]
    pub size: usize,
    /// Records per batch (one batch per partition per produce request)
    #[arg(long, default_value_t = 500)]
    pub batch: usize,
    /// Produce requests in flight per producer
    #[arg(long, default_value_t = 5)]
    pub inflight: usize,
    /// acks: 0, 1 or -1 (all)
    #[arg(long, default_value_t = -1, allow_hyphen_values = true)]
    pub acks: i16,
    /// Seconds to produce
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Print the report as JSON
    #[arg(long)]
    pub json: bool,
}

struct Shared {
    epoch: Instant,
    produced: AtomicU64,
    acked: AtomicU64,
    consumed: AtomicU64,
    stop: AtomicBool,
    produce_lat: Mutex<Histogram<u64>>,
    e2e: Mutex<Histogram<u64>>,
}

impl Shared {
    fn now_us(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }
}

/// A connection that sends requests and reads responses in order.
struct Conn {
    rd: OwnedReadHalf,
    wr: OwnedWriteHalf,
    next_corr: i32,
}

impl Conn {
    async fn connect(addr: &str) -> Result<Conn> {
        let s = tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(addr))
            .await
            .with_context(|| format!("timed out connecting to {addr}"))?
            .with_context(|| format!("connecting to {addr}"))?;
        s.set_nodelay(true)?;
        let (rd, wr) = s.into_split();
        let mut conn = Conn {
            rd,
            wr,
            next_corr: 1,
        };
        // as every client does first (a broker may bound a connection's first request to
        // keep unauthenticated clients small, as Eddy does)
        let _: kafka_protocol::messages::ApiVersionsResponse = conn
            .call(
                ApiKey::ApiVersions,
                0,
                &kafka_protocol::messages::ApiVersionsRequest::default(),
            )
            .await
            .with_context(|| format!("ApiVersions to {addr}"))?;
        Ok(conn)
    }

    fn encode<R: Encodable>(
        &mut self,
        out: &mut BytesMut,
        key: ApiKey,
        version: i16,
        req: &R,
    ) -> Result<i32> {
        let corr = self.next_corr;
        self.next_corr += 1;
        let start = out.len();
        out.put_i32(0);
        let mut h = RequestHeader::default();
        h.request_api_key = key as i16;
        h.request_api_version = version;
        h.correlation_id = corr;
        h.client_id = Some(StrBytes::from_static_str("eddy-bench"));
        h.encode(out, key.request_header_version(version))?;
        req.encode(out, version)?;
        let len = (out.len() - start - 4) as i32;
        out[start..start + 4].copy_from_slice(&len.to_be_bytes());
        Ok(corr)
    }

    async fn send(&mut self, buf: &[u8]) -> Result<()> {
        self.wr.write_all(buf).await?;
        Ok(())
    }

    /// Read one response: its correlation id and body (after the header).
    async fn recv(&mut self, key: ApiKey, version: i16) -> Result<(i32, Bytes)> {
        let n = self
            .rd
            .read_i32()
            .await
            .context("reading a response size")?;
        if !(4..=(256 << 20)).contains(&n) {
            bail!("bad response size {n}");
        }
        let mut body = BytesMut::zeroed(n as usize);
        self.rd.read_exact(&mut body).await?;
        let mut body = body.freeze();
        let h = ResponseHeader::decode(&mut body, key.response_header_version(version))?;
        Ok((h.correlation_id, body))
    }

    async fn call<R: Encodable, T: Decodable>(
        &mut self,
        key: ApiKey,
        version: i16,
        req: &R,
    ) -> Result<T> {
        let mut out = BytesMut::new();
        self.encode(&mut out, key, version, req)?;
        self.send(&out).await?;
        let (_, mut body) = self.recv(key, version).await?;
        T::decode(&mut body, version)
    }
}

/// A batch of `n` records of `size`-byte values; `stamps` are the byte positions of each
/// value's first 8 bytes, where the send time goes.
struct Template {
    bytes: Vec<u8>,
    stamps: Vec<usize>,
}

impl Template {
    fn new(n: usize, size: usize) -> Template {
        let value = vec![0x61u8; size];
        let mut b = BatchBuilder::new();
        let stamps = (0..n)
            .map(|i| b.push(0, i as i64, None, Some(&value), &[]))
            .collect();
        Template {
            bytes: b.finish(),
            stamps,
        }
    }

    /// A copy stamped with `now_us` (and the wall clock for the batch timestamps).
    fn stamp(&self, now_us: u64, wall_ms: i64) -> Bytes {
        let mut b = self.bytes.clone();
        for at in &self.stamps {
            b[*at..*at + 8].copy_from_slice(&now_us.to_le_bytes());
        }
        let mut h = BatchHeader::new(&mut b).expect("a template holds a header");
        h.set_base_timestamp(wall_ms);
        h.set_max_timestamp(wall_ms);
        h.update_crc();
        Bytes::from(b)
    }
}

const PRODUCE_V: i16 = 7;
const FETCH_V: i16 = 11;

async fn produce(
    args: KafkaBenchArgs,
    topic: String,
    shared: Arc<Shared>,
    deadline: Instant,
    (addr, partitions): (String, Vec<i32>),
) -> Result<()> {
    let mut conn = Conn::connect(&addr).await?;
    let template = Template::new(args.batch, args.size);
    let per_request = (args.batch * partitions.len()) as u64;
    let mut in_flight: std::collections::VecDeque<(i32, u64)> = Default::default();
    let mut out = BytesMut::new();
    let mut local = hist();
    loop {
        let sending = Instant::now() < deadline;
        if sending && in_flight.len() < args.inflight.max(1) {
            let t = shared.now_us();
            let batch = template.stamp(t, wall_ms());
            let mut td = TopicProduceData::default();
            td.name = TopicName(StrBytes::from_string(topic.clone()));
            td.partition_data = partitions
                .iter()
                .map(|&p| {
                    let mut pd = PartitionProduceData::default();
                    pd.index = p;
                    pd.records = Some(batch.clone());
                    pd
                })
                .collect();
            let mut req = ProduceRequest::default();
            req.acks = args.acks;
            req.timeout_ms = 30_000;
            req.topic_data = vec![td];
            out.clear();
            let corr = conn.encode(&mut out, ApiKey::Produce, PRODUCE_V, &req)?;
            conn.send(&out).await?;
            shared.produced.fetch_add(per_request, Ordering::Relaxed);
            if args.acks == 0 {
                continue;
            }
            in_flight.push_back((corr, t));
            continue;
        }
        let Some((corr, t0)) = in_flight.pop_front() else {
            break;
        };
        let (got, mut body) = conn.recv(ApiKey::Produce, PRODUCE_V).await?;
        if got != corr {
            bail!("response {got} out of order (expected {corr})");
        }
        let resp = ProduceResponse::decode(&mut body, PRODUCE_V)?;
        for t in &resp.responses {
            for p in &t.partition_responses {
                if p.error_code != 0 {
                    bail!(
                        "produce to partition {} failed with error {}",
                        p.index,
                        p.error_code
                    );
                }
            }
        }
        let _ = local.record(shared.now_us().saturating_sub(t0).max(1));
        shared.acked.fetch_add(per_request, Ordering::Relaxed);
    }
    shared.produce_lat.lock().add(&local).ok();
    Ok(())
}

/// Count the records of the batches in `records` and take each batch's first record's send
/// time for the latency histogram. Returns (records, next offset).
fn scan(records: &[u8], local: &mut Histogram<u64>, now_us: u64) -> (u64, Option<i64>) {
    let mut at = 0;
    let mut count = 0u64;
    let mut next = None;
    while let Some(h) = BatchHeader::new(&records[at..]) {
        let base = h.base_offset();
        let len = h.batch_length() as usize;
        if records.len() - at < len + LOG_OVERHEAD {
            break; // a partial batch at the end of a fetch
        }
        let last_delta = h.last_offset_delta();
        // the records the batch holds (a batch emptied by compaction, or a replicated
        // partition's Raft entry, holds none but still takes its offsets)
        count += h.record_count().max(0) as u64;
        next = Some(base + last_delta as i64 + 1);
        if let Some(t0) = first_value_stamp(&records[at + HEADER..at + LOG_OVERHEAD + len]) {
            let _ = local.record(now_us.saturating_sub(t0).max(1));
        }
        at += LOG_OVERHEAD + len;
    }
    (count, next)
}

fn first_value_stamp(mut recs: &[u8]) -> Option<u64> {
    get_varint(&mut recs).ok()?; // record length
    recs = recs.get(1..)?; // attributes
    get_varint(&mut recs).ok()?; // timestamp delta
    get_varint(&mut recs).ok()?; // offset delta
    let klen = get_varint(&mut recs).ok()?;
    if klen > 0 {
        recs = recs.get(klen as usize..)?;
    }
    let vlen = get_varint(&mut recs).ok()?;
    if vlen < 8 {
        return None;
    }
    Some(u64::from_le_bytes(recs.get(..8)?.try_into().ok()?))
}

async fn consume(
    topic: String,
    shared: Arc<Shared>,
    (addr, partitions): (String, Vec<i32>),
) -> Result<()> {
    let mut conn = Conn::connect(&addr).await?;
    let mut offsets: std::collections::BTreeMap<i32, i64> =
        partitions.iter().map(|&p| (p, 0)).collect();
    let mut local = hist();
    let mut idle_since = None::<Instant>;
    loop {
        let mut ft = FetchTopic::default();
        ft.topic = TopicName(StrBytes::from_string(topic.clone()));
        ft.partitions = offsets
            .iter()
            .map(|(&i, o)| {
                let mut fp = FetchPartition::default();
                fp.partition = i;
                fp.fetch_offset = *o;
                fp.partition_max_bytes = 8 << 20;
                fp
            })
            .collect();
        let mut req = FetchRequest::default();
        req.replica_id = kafka_protocol::messages::BrokerId(-1);
        req.max_wait_ms = 100;
        req.min_bytes = 1;
        req.max_bytes = 32 << 20;
        req.topics = vec![ft];
        let resp: FetchResponse = conn.call(ApiKey::Fetch, FETCH_V, &req).await?;
        let now = shared.now_us();
        let mut got = 0;
        for t in &resp.responses {
            for p in &t.partitions {
                if p.error_code != 0 {
                    bail!(
                        "fetch from partition {} failed with error {}",
                        p.partition_index,
                        p.error_code
                    );
                }
                if let Some(recs) = &p.records {
                    let (n, next) = scan(recs, &mut local, now);
                    got += n;
                    if let Some(next) = next {
                        offsets.insert(p.partition_index, next);
                    }
                }
            }
        }
        shared.consumed.fetch_add(got, Ordering::Relaxed);
        if got == 0 && shared.stop.load(Ordering::Relaxed) {
            let since = *idle_since.get_or_insert_with(Instant::now);
            if since.elapsed() > Duration::from_millis(500) {
                break;
            }
        } else {
            idle_since = None;
        }
    }
    shared.e2e.lock().add(&local).ok();
    Ok(())
}

/// Each leader's address and the partitions it leads, once Metadata names a leader for
/// every partition (a new topic's replicas elect theirs first).
async fn leaders(
    admin: &mut Conn,
    topic: &str,
    partitions: usize,
) -> Result<Vec<(String, Vec<i32>)>> {
    use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
    use kafka_protocol::messages::{MetadataRequest, MetadataResponse};
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut req = MetadataRequest::default();
        let mut t = MetadataRequestTopic::default();
        t.name = Some(TopicName(StrBytes::from_string(topic.to_owned())));
        req.topics = Some(vec![t]);
        let resp: MetadataResponse = admin.call(ApiKey::Metadata, 1, &req).await?;
        let brokers: std::collections::HashMap<i32, String> = resp
            .brokers
            .iter()
            .map(|b| (b.node_id.0, format!("{}:{}", b.host, b.port)))
            .collect();
        let mut routes: std::collections::BTreeMap<String, Vec<i32>> = Default::default();
        let mut led = 0;
        for t in &resp.topics {
            for p in &t.partitions {
                if let Some(addr) = brokers.get(&p.leader_id.0).filter(|_| p.error_code == 0) {
                    routes
                        .entry(addr.clone())
                        .or_default()
                        .push(p.partition_index);
                    led += 1;
                }
            }
        }
        if led == partitions {
            return Ok(routes.into_iter().collect());
        }
        if Instant::now() > deadline {
            bail!("{led} of the {partitions} partitions of {topic} have a leader after 30 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Run the benchmark and print its report.
pub async fn run_kafka(args: KafkaBenchArgs) -> Result<()> {
    anyhow::ensure!(
        args.size >= 8,
        "--size must be at least 8 bytes (the send time)"
    );
    anyhow::ensure!(
        (-1..=1).contains(&args.acks),
        "--acks must be -1 (all), 0 or 1"
    );
    anyhow::ensure!(
        args.batch >= 1 && args.partitions >= 1,
        "--batch and --partitions must be at least 1"
    );
    let topic = format!("eddy-bench-{}-{}", std::process::id(), wall_ms());
    let mut admin = Conn::connect(&args.bootstrap).await?;
    let mut ct = CreatableTopic::default();
    ct.name = TopicName(StrBytes::from_string(topic.clone()));
    ct.num_partitions = args.partitions as i32;
    ct.replication_factor = args.replication_factor;
    let mut req = CreateTopicsRequest::default();
    req.topics = vec![ct];
    req.timeout_ms = 30_000;
    let created: CreateTopicsResponse = admin.call(ApiKey::CreateTopics, 4, &req).await?;
    if let Some(t) = created.topics.first() {
        if t.error_code != 0 {
            return Err(anyhow!("creating topic {topic}: error {}", t.error_code));
        }
    }
    let routes = leaders(&mut admin, &topic, args.partitions).await?;
    let shared = Arc::new(Shared {
        epoch: Instant::now(),
        produced: AtomicU64::new(0),
        acked: AtomicU64::new(0),
        consumed: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        produce_lat: Mutex::new(hist()),
        e2e: Mutex::new(hist()),
    });
    let consumers: Vec<_> = (0..args.consumers)
        .flat_map(|_| routes.iter().cloned())
        .map(|route| tokio::spawn(consume(topic.clone(), shared.clone(), route)))
        .collect();
    let start = Instant::now();
    let deadline = start + Duration::from_secs(args.seconds);
    let producers: Vec<_> = (0..args.producers)
        .flat_map(|_| routes.iter().cloned())
        .map(|route| {
            tokio::spawn(produce(
                args.clone(),
                topic.clone(),
                shared.clone(),
                deadline,
                route,
            ))
        })
        .collect();
    let pb = ProgressBar::new(args.seconds);
    pb.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len}s {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let mb = |n: u64| n as f64 * args.size as f64 / 1e6 / start.elapsed().as_secs_f64();
        pb.set_position(start.elapsed().as_secs().min(args.seconds));
        pb.set_message(format!(
            "produce {:.0} MB/s consume {:.0} MB/s",
            mb(shared.acked.load(Ordering::Relaxed)),
            mb(shared.consumed.load(Ordering::Relaxed))
        ));
    }
    for p in producers {
        p.await.context("producer task")??;
    }
    let produce_secs = start.elapsed().as_secs_f64();
    // consumers catch up, then stop
    let produced = shared.produced.load(Ordering::Relaxed);
    let catch_up = Instant::now() + Duration::from_secs(30);
    while args.consumers > 0
        && shared.consumed.load(Ordering::Relaxed) < produced * args.consumers as u64
        && Instant::now() < catch_up
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let consume_secs = start.elapsed().as_secs_f64();
    shared.stop.store(true, Ordering::Relaxed);
    for c in consumers {
        c.await.context("consumer task")??;
    }
    pb.finish_and_clear();
    let acked = shared.acked.load(Ordering::Relaxed);
    let consumed = shared.consumed.load(Ordering::Relaxed);
    let pct = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let pl = shared.produce_lat.lock();
    let e2e = shared.e2e.lock();
    let rate = |n: u64, s: f64| n as f64 / s;
    let mbs = |n: u64, s: f64| n as f64 * args.size as f64 / 1e6 / s;
    let counted = if args.acks == 0 { produced } else { acked };
    if args.json {
        println!(
            "{{\"records\":{},\"produce_records_per_s\":{:.0},\"produce_mb_per_s\":{:.1},\"produce_p50_ms\":{:.3},\"produce_p99_ms\":{:.3},\"consumed\":{},\"consume_records_per_s\":{:.0},\"consume_mb_per_s\":{:.1},\"e2e_p50_ms\":{:.3},\"e2e_p99_ms\":{:.3},\"e2e_p999_ms\":{:.3}}}",
            counted,
            rate(counted, produce_secs),
            mbs(counted, produce_secs),
            pct(&pl, 0.5),
            pct(&pl, 0.99),
            consumed,
            rate(consumed, consume_secs),
            mbs(consumed, consume_secs),
            pct(&e2e, 0.5),
            pct(&e2e, 0.99),
            pct(&e2e, 0.999)
        );
        return Ok(());
    }
    println!(
        "broker        {} (topic {topic}, {} partitions)",
        args.bootstrap, args.partitions
    );
    println!(
        "produced      {counted} records of {} B, acks={} ({:.0} records/s, {:.1} MB/s)",
        args.size,
        args.acks,
        rate(counted, produce_secs),
        mbs(counted, produce_secs)
    );
    if args.acks != 0 {
        println!(
            "produce lat.  p50 {:.2} ms  p99 {:.2} ms  p999 {:.2} ms",
            pct(&pl, 0.5),
            pct(&pl, 0.99),
            pct(&pl, 0.999)
        );
    }
    if args.consumers > 0 {
        println!(
            "consumed      {consumed} records ({:.0} records/s, {:.1} MB/s, {} consumer(s))",
            rate(consumed, consume_secs),
            mbs(consumed, consume_secs),
            args.consumers
        );
        println!(
            "end-to-end    p50 {:.2} ms  p99 {:.2} ms  p999 {:.2} ms",
            pct(&e2e, 0.5),
            pct(&e2e, 0.99),
            pct(&e2e, 0.999)
        );
    }
    Ok(())
}
