//! Eddy topics as sources and exactly-once sinks, over the Kafka protocol.
//!
//! **Source.** Each worker reads the partitions `p` with `p % workers == index` (a static
//! assignment, as Flink's Kafka source; no consumer group). A background thread per worker
//! fetches and hands batches to the source operator; the operator's position (per partition,
//! the offset after the last record it emitted) is what checkpoints keep. Event time is the
//! record's timestamp unless the job gives its own; watermarks are per partition.
//!
//! **Sink.** Records of epoch `e` are produced (idempotent producer, acks=all) only once
//! checkpoint `e` is complete. Each carries three headers: `eddy.job` (the job's name),
//! `eddy.writer` (`<sink>/<worker>`) and `eddy.epoch`. A sink restored from a checkpoint may find
//! the epochs it held already written in part (the crash came mid-commit): it reads its own
//! partitions from where its last completed commit ended, counts its records of each such
//! epoch per partition, and produces only the rest. Partitioning is deterministic (Kafka's
//! murmur2 of the key; unkeyed records go to partition `worker % partitions`), so what was
//! written is always a prefix of what it is about to write, per partition.

use std::collections::{BTreeMap, VecDeque};
use std::sync::mpsc::{sync_channel, Receiver, TryRecvError};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use timely::scheduling::SyncActivator;

use crate::event::{now_ms, Data, Windowed};
use crate::kafka::{partition_for, Conn, Fetched, KafkaError, Outgoing};
use crate::operators::{Committer, DataStream, SinkTo};
use crate::source::{Item, Poll, Reader, Source, WatermarkStrategy};

/// The default address of Eddy's Kafka listener.
pub const DEFAULT_BOOTSTRAP: &str = "127.0.0.1:9092";

/// Where a topic source starts when there is no checkpoint to resume from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Start {
    Earliest,
    Latest,
}

/// A record of an Eddy topic, as a source yields it with [`EddySource::records`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicRecord {
    /// The partition it was read from.
    pub partition: i32,
    /// Its offset there.
    pub offset: i64,
    /// Its timestamp (ms).
    pub timestamp: i64,
    /// Its key.
    pub key: Option<Vec<u8>>,
    /// Its value (empty for a null value).
    pub value: Vec<u8>,
}

/// An Eddy topic as a source: `EddySource::topic("lines").from_earliest()`.
#[derive(Clone, Debug)]
pub struct EddySource {
    topic: String,
    bootstrap: String,
    start: Start,
    bounded: bool,
    strategy: WatermarkStrategy,
    idleness: Option<Duration>,
}

impl EddySource {
    /// The topic `name` on Eddy at [`DEFAULT_BOOTSTRAP`], from the latest offsets.
    pub fn topic(name: &str) -> EddySource {
        EddySource {
            topic: name.to_owned(),
            bootstrap: DEFAULT_BOOTSTRAP.to_owned(),
            start: Start::Latest,
            bounded: false,
            strategy: WatermarkStrategy::Monotonous,
            idleness: None,
        }
    }

    /// Eddy's Kafka listener address (`host:port`).
    pub fn bootstrap(mut self, addr: &str) -> Self {
        self.bootstrap = addr.to_owned();
        self
    }

    /// Start from the earliest records kept.
    pub fn from_earliest(mut self) -> Self {
        self.start = Start::Earliest;
        self
    }

    /// Start from records produced after the job starts (the default).
    pub fn from_latest(mut self) -> Self {
        self.start = Start::Latest;
        self
    }

    /// Stop at the end offsets the partitions have when the job starts (a bounded stream).
    pub fn bounded(mut self) -> Self {
        self.bounded = true;
        self
    }

    /// How far the records' timestamps may run backwards (default: monotonous).
    pub fn watermarks(mut self, strategy: WatermarkStrategy) -> Self {
        self.strategy = strategy;
        self
    }

    /// A partition with no record for this long stops holding the watermark back.
    pub fn idle_after(mut self, timeout: Duration) -> Self {
        self.idleness = Some(timeout);
        self
    }

    /// The source of whole records (partition, offset, timestamp, key, value).
    pub fn records(self) -> Source<TopicRecord> {
        let (strategy, idleness) = (self.strategy, self.idleness);
        let src = Source::from_reader(move |index, peers| {
            Box::new(TopicReader::new(
                self.clone(),
                index,
                peers,
                |f: Fetched, partition| TopicRecord {
                    partition,
                    offset: f.offset,
                    timestamp: f.timestamp,
                    key: f.key.map(|k| k.to_vec()),
                    value: f.value.map(|v| v.to_vec()).unwrap_or_default(),
                },
            )) as Box<dyn Reader<TopicRecord>>
        })
        .with_watermarks(strategy);
        match idleness {
            Some(d) => src.with_idleness(d),
            None => src,
        }
    }
}

/// The values, as text (invalid UTF-8 replaced).
impl From<EddySource> for Source<String> {
    fn from(s: EddySource) -> Source<String> {
        let (strategy, idleness) = (s.strategy, s.idleness);
        let src = Source::from_reader(move |index, peers| {
            Box::new(TopicReader::new(
                s.clone(),
                index,
                peers,
                |f: Fetched, _| {
                    f.value
                        .map(|v| String::from_utf8_lossy(&v).into_owned())
                        .unwrap_or_default()
                },
            )) as Box<dyn Reader<String>>
        })
        .with_watermarks(strategy);
        match idleness {
            Some(d) => src.with_idleness(d),
            None => src,
        }
    }
}

impl From<EddySource> for Source<TopicRecord> {
    fn from(s: EddySource) -> Source<TopicRecord> {
        s.records()
    }
}

/// What the fetching thread sends.
enum Fetch {
    /// Records of a partition, and whether the fetcher has reached its end for now.
    Records(i32, Vec<Fetched>, bool),
    Done,
    Failed(String),
}

type Convert<D> = fn(Fetched, i32) -> D;

struct TopicReader<D> {
    cfg: EddySource,
    partitions: Vec<i32>,
    /// Per partition, the offset after the last record emitted.
    position: BTreeMap<i32, i64>,
    /// Bounded: where each partition ends.
    ends: BTreeMap<i32, i64>,
    convert: Convert<D>,
    rx: Option<Receiver<Fetch>>,
    buffered: VecDeque<(i32, Fetched)>,
    /// Per partition, whether the fetcher last found nothing more to read.
    caught_up: BTreeMap<i32, bool>,
    done: bool,
}

/// A topic source's checkpointed position.
#[derive(Serialize, Deserialize)]
struct TopicPosition {
    offsets: BTreeMap<i32, i64>,
    /// Bounded: the end offsets fixed at the first start.
    ends: BTreeMap<i32, i64>,
}

fn fail(what: &str, e: impl std::fmt::Display) -> ! {
    panic!("{what}: {e}")
}

impl<D> TopicReader<D> {
    fn new(cfg: EddySource, index: usize, peers: usize, convert: Convert<D>) -> TopicReader<D> {
        let topic = cfg.topic.clone();
        let mut conn = Conn::connect(&cfg.bootstrap).unwrap_or_else(|e| fail("source", e));
        let all = conn
            .partitions(&topic, false)
            .unwrap_or_else(|e| fail(&format!("source topic {topic}"), e));
        let partitions: Vec<i32> = all
            .into_iter()
            .filter(|p| *p as usize % peers == index)
            .collect();
        let ts = match cfg.start {
            Start::Earliest => -2,
            Start::Latest => -1,
        };
        let position = if partitions.is_empty() {
            BTreeMap::new()
        } else {
            conn.offsets(&topic, &partitions, ts)
                .unwrap_or_else(|e| fail("source", e))
        };
        let ends = if cfg.bounded && !partitions.is_empty() {
            conn.offsets(&topic, &partitions, -1)
                .unwrap_or_else(|e| fail("source", e))
        } else {
            BTreeMap::new()
        };
        TopicReader {
            cfg,
            partitions,
            position,
            ends,
            convert,
            rx: None,
            buffered: VecDeque::new(),
            caught_up: BTreeMap::new(),
            done: false,
        }
    }

    fn finished(&self, p: i32) -> bool {
        self.cfg.bounded
            && self.position.get(&p).copied().unwrap_or(0)
                >= self.ends.get(&p).copied().unwrap_or(0)
    }
}

/// The fetching thread: fetch from `at` until the operator goes away (or, bounded, until every
/// partition reached its end), retrying a broker that went away for up to a minute.
fn fetch_loop(
    cfg: EddySource,
    mut at: BTreeMap<i32, i64>,
    ends: BTreeMap<i32, i64>,
    tx: std::sync::mpsc::SyncSender<Fetch>,
    wake: SyncActivator,
) {
    let mut conn: Option<Conn> = None;
    let mut failures = 0u32;
    let mut turn = 0usize;
    let give_up = |e: String| {
        let _ = tx.send(Fetch::Failed(e));
        let _ = wake.activate();
    };
    loop {
        if cfg.bounded {
            at.retain(|p, o| *o < ends.get(p).copied().unwrap_or(0));
            if at.is_empty() {
                let _ = tx.send(Fetch::Done);
                let _ = wake.activate();
                return;
            }
        }
        let c = match &mut conn {
            Some(c) => c,
            None => match Conn::connect(&cfg.bootstrap) {
                Ok(c) => conn.insert(c),
                Err(e) => {
                    failures += 1;
                    if failures > 60 {
                        return give_up(e.to_string());
                    }
                    std::thread::sleep(Duration::from_secs(1));
                    continue;
                }
            },
        };
        // the broker fills its byte budget in request order: start with another partition
        // each time so that a backlog in one does not starve the others
        let mut order: Vec<(i32, i64)> = at.iter().map(|(p, o)| (*p, *o)).collect();
        turn = turn.wrapping_add(1);
        let n = order.len().max(1);
        order.rotate_left(turn % n);
        match c.fetch(&cfg.topic, &order, Duration::from_millis(200), 4 << 20) {
            Ok(parts) => {
                failures = 0;
                let mut errors = 0;
                for fp in parts {
                    if let Some(e) = fp.error {
                        if !e.retriable() {
                            return give_up(format!("topic {}: {e}", cfg.topic));
                        }
                        errors += 1;
                        continue;
                    }
                    let mut records = fp.records;
                    let end = ends.get(&fp.partition).copied();
                    if let Some(end) = end {
                        records.retain(|r| r.offset < end);
                    }
                    // step over offsets without records too (compacted away)
                    let mut next = records.last().map(|r| r.offset + 1);
                    if let Some(n) = fp.next {
                        next = Some(next.map_or(n, |x| x.max(n)));
                    }
                    if let Some(n) = next {
                        let n = end.map_or(n, |e| n.min(e));
                        at.insert(fp.partition, n);
                    }
                    let caught_up =
                        at.get(&fp.partition).copied().unwrap_or(0) >= fp.high_watermark;
                    if tx
                        .send(Fetch::Records(fp.partition, records, caught_up))
                        .is_err()
                    {
                        return;
                    }
                    let _ = wake.activate();
                }
                if errors > 0 {
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
            Err(e) => {
                conn = None;
                failures += 1;
                if !e.retriable() || failures > 60 {
                    return give_up(format!("topic {}: {e}", cfg.topic));
                }
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }
}

impl<D: 'static> Reader<D> for TopicReader<D> {
    fn start(&mut self, wake: SyncActivator, _checkpointed: bool) {
        let (tx, rx) = sync_channel(8);
        self.rx = Some(rx);
        let (cfg, at, ends) = (self.cfg.clone(), self.position.clone(), self.ends.clone());
        if self.partitions.iter().all(|p| self.finished(*p)) && self.cfg.bounded {
            self.done = true;
            return;
        }
        if self.partitions.is_empty() {
            // nothing to read: the source stays idle (it does not hold watermarks back)
            return;
        }
        std::thread::Builder::new()
            .name(format!("eddy-source-{}", self.cfg.topic))
            .spawn(move || fetch_loop(cfg, at, ends, tx, wake))
            .unwrap_or_else(|e| fail("source: cannot start its fetching thread", e));
    }

    fn poll(&mut self, out: &mut Vec<Item<D>>, max: usize) -> Poll {
        let Some(rx) = self.rx.as_ref() else {
            return if self.done { Poll::Done } else { Poll::Pending };
        };
        while self.buffered.len() < max {
            match rx.try_recv() {
                Ok(Fetch::Records(p, recs, caught_up)) => {
                    self.buffered.extend(recs.into_iter().map(|r| (p, r)));
                    self.caught_up.insert(p, caught_up);
                }
                Ok(Fetch::Done) => self.done = true,
                Ok(Fetch::Failed(e)) => fail("source", e),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    self.done = self.done || self.cfg.bounded;
                    break;
                }
            }
        }
        for _ in 0..max {
            let Some((p, r)) = self.buffered.pop_front() else {
                break;
            };
            self.position.insert(p, r.offset + 1);
            let time = Some(r.timestamp);
            out.push(Item {
                split: p as u32,
                time,
                data: (self.convert)(r, p),
            });
        }
        if !self.buffered.is_empty() {
            Poll::Ready
        } else if self.done {
            Poll::Done
        } else {
            Poll::Pending
        }
    }

    fn splits(&self) -> Vec<u32> {
        self.partitions.iter().map(|p| *p as u32).collect()
    }

    fn caught_up(&self, split: u32) -> bool {
        self.buffered.is_empty()
            && self
                .caught_up
                .get(&(split as i32))
                .copied()
                .unwrap_or(false)
    }

    fn position(&self) -> Vec<u8> {
        let pos = TopicPosition {
            offsets: self.position.clone(),
            ends: self.ends.clone(),
        };
        bincode::serialize(&pos).expect("maps of integers encode")
    }

    fn restore(&mut self, position: &[u8]) -> Result<(), String> {
        let saved: TopicPosition = bincode::deserialize(position).map_err(|e| e.to_string())?;
        for (p, o) in saved.offsets {
            if self.position.contains_key(&p) {
                self.position.insert(p, o);
            }
        }
        if self.cfg.bounded {
            // the end stays where it was when the job first started
            for (p, e) in saved.ends {
                if self.ends.contains_key(&p) {
                    self.ends.insert(p, e);
                }
            }
        }
        Ok(())
    }
}

/// How a record becomes a Kafka record (key and value bytes).
pub trait ToRecord {
    /// The key (`None`: no key).
    fn key(&self) -> Option<Vec<u8>>;
    /// The value.
    fn value(&self) -> Vec<u8>;
}

fn text<T: Serialize>(v: &T) -> Vec<u8> {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s.into_bytes(),
        Ok(other) => other.to_string().into_bytes(),
        Err(_) => Vec::new(),
    }
}

impl ToRecord for String {
    fn key(&self) -> Option<Vec<u8>> {
        None
    }
    fn value(&self) -> Vec<u8> {
        self.clone().into_bytes()
    }
}

impl ToRecord for Vec<u8> {
    fn key(&self) -> Option<Vec<u8>> {
        None
    }
    fn value(&self) -> Vec<u8> {
        self.clone()
    }
}

/// `(key, value)`: strings as they are, anything else as JSON.
impl<K: Serialize, V: Serialize> ToRecord for (K, V) {
    fn key(&self) -> Option<Vec<u8>> {
        Some(text(&self.0))
    }
    fn value(&self) -> Vec<u8> {
        text(&self.1)
    }
}

/// A window result: keyed by the window's key; the value is JSON
/// `{"key":…,"start":…,"end":…,"value":…}`.
impl<K: Serialize, R: Serialize> ToRecord for Windowed<K, R> {
    fn key(&self) -> Option<Vec<u8>> {
        Some(text(&self.key))
    }
    fn value(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// An Eddy topic as an exactly-once sink: `.sink(EddySink::topic("word-counts"))`.
#[derive(Clone, Debug)]
pub struct EddySink {
    topic: String,
    bootstrap: String,
}

impl EddySink {
    /// The topic `name` on Eddy at [`DEFAULT_BOOTSTRAP`] (created with the broker's defaults
    /// if missing).
    pub fn topic(name: &str) -> EddySink {
        EddySink {
            topic: name.to_owned(),
            bootstrap: DEFAULT_BOOTSTRAP.to_owned(),
        }
    }

    /// Eddy's Kafka listener address (`host:port`).
    pub fn bootstrap(mut self, addr: &str) -> Self {
        self.bootstrap = addr.to_owned();
        self
    }
}

impl<D: Data + ToRecord> SinkTo<D> for EddySink {
    fn attach(self, stream: DataStream<'_, D>) {
        let worker = stream.stream.scope().index();
        let sink_id = stream.ctx.next_sink_id();
        let committer = TopicCommitter::new(self, stream.ctx.job.clone(), sink_id, worker);
        stream.sink_exactly_once(committer);
    }
}

/// Records per produce request, and bytes.
const BATCH: usize = 2000;
const BATCH_BYTES: usize = 512 << 10;

/// The sink's checkpointed state.
#[derive(Serialize, Deserialize, Default)]
struct CommitterState {
    /// Names this run of the job in the records' headers (kept across restores, new for a
    /// fresh start), so two runs writing the same topic never count each other's records.
    run: u64,
    /// Per partition, where this sink's writes since its last completed commit begin.
    scan_from: BTreeMap<i32, i64>,
}

struct TopicCommitter {
    cfg: EddySink,
    job: String,
    sink: usize,
    worker: usize,
    conn: Option<Conn>,
    partitions: Vec<i32>,
    producer: Option<(i64, i16)>,
    seq: BTreeMap<i32, i32>,
    st: CommitterState,
}

/// Kafka sequence numbers wrap from `i32::MAX` to 0.
fn next_seq(seq: i32, n: usize) -> i32 {
    ((seq as i64 + n as i64) % (i32::MAX as i64 + 1)) as i32
}

impl TopicCommitter {
    fn new(cfg: EddySink, job: String, sink: usize, worker: usize) -> TopicCommitter {
        let run = {
            use std::hash::{BuildHasher, Hasher};
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u128(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos()),
            );
            h.write_u32(std::process::id());
            h.finish()
        };
        let mut c = TopicCommitter {
            cfg,
            job,
            sink,
            worker,
            conn: None,
            partitions: Vec::new(),
            producer: None,
            seq: BTreeMap::new(),
            st: CommitterState {
                run,
                scan_from: BTreeMap::new(),
            },
        };
        // where a scan for this run's writes would begin (a restore replaces it)
        if let Err(e) = c.connect().and_then(|c| c.refresh_scan_from()) {
            fail(&format!("sink topic {}", c.cfg.topic), e);
        }
        c
    }

    fn writer(&self) -> String {
        format!("{:016x}/{}/{}", self.st.run, self.sink, self.worker)
    }

    fn connect(&mut self) -> Result<&mut Self, KafkaError> {
        if self.conn.is_none() {
            let mut conn = Conn::connect(&self.cfg.bootstrap)?;
            self.partitions = conn.partitions(&self.cfg.topic, true)?;
            self.conn = Some(conn);
        }
        Ok(self)
    }

    fn conn(&mut self) -> &mut Conn {
        self.conn.as_mut().expect("connected")
    }

    fn refresh_scan_from(&mut self) -> Result<(), KafkaError> {
        let (topic, parts) = (self.cfg.topic.clone(), self.partitions.clone());
        let ends = self.conn().offsets(&topic, &parts, -1)?;
        self.st.scan_from.extend(ends);
        Ok(())
    }

    fn partition_of(&self, r: &Outgoing) -> i32 {
        let n = self.partitions.len();
        let i = match &r.key {
            Some(k) => partition_for(k, n),
            None => self.worker % n,
        };
        self.partitions[i]
    }

    /// The indices (within `epoch`) of this writer's records already in the topic: every
    /// partition is read from where this sink's last completed commit ended to its end now.
    fn already_written(
        &mut self,
        epoch: u64,
    ) -> Result<std::collections::BTreeSet<u64>, KafkaError> {
        let topic = self.cfg.topic.clone();
        let (job, writer, ep) = (self.job.clone(), self.writer(), epoch.to_string());
        let parts = self.partitions.clone();
        let ends = self.conn().offsets(&topic, &parts, -1)?;
        let mut found = std::collections::BTreeSet::new();
        for p in parts {
            let end = ends.get(&p).copied().unwrap_or(0);
            let mut at = self.st.scan_from.get(&p).copied().unwrap_or(0);
            let mut empty = 0;
            while at < end {
                let fetched =
                    self.conn()
                        .fetch(&topic, &[(p, at)], Duration::from_millis(0), 4 << 20)?;
                let Some(fp) = fetched.into_iter().find(|f| f.partition == p) else {
                    break;
                };
                if let Some(e) = fp.error {
                    return Err(e);
                }
                for r in &fp.records {
                    let h = |name: &str| {
                        r.headers
                            .iter()
                            .find(|(k, _)| k == name)
                            .and_then(|(_, v)| v.clone())
                    };
                    if h("eddy.job").as_deref() == Some(job.as_bytes())
                        && h("eddy.writer").as_deref() == Some(writer.as_bytes())
                        && h("eddy.epoch").as_deref() == Some(ep.as_bytes())
                    {
                        let idx = h("eddy.index")
                            .and_then(|v| std::str::from_utf8(&v).ok()?.parse::<u64>().ok());
                        if let Some(i) = idx {
                            found.insert(i);
                        }
                    }
                }
                match fp.next.or(fp.records.last().map(|r| r.offset + 1)) {
                    Some(n) if n > at => at = n,
                    _ => {
                        // nothing came back below the end: the log start moved past it, or
                        // the broker had no budget left; ask again a few times
                        empty += 1;
                        if empty > 20 {
                            return Err(KafkaError::Protocol(format!(
                                "{topic}/{p}: offsets {at}..{end} cannot be read back"
                            )));
                        }
                        std::thread::sleep(Duration::from_millis(50));
                    }
                }
            }
        }
        Ok(found)
    }

    /// Produce one batch, resending it as it is (same producer id and sequence numbers, so
    /// the broker keeps one copy) if the connection breaks before the answer.
    fn produce(&mut self, p: i32, batch: &[Outgoing]) -> Result<(), KafkaError> {
        let topic = self.cfg.topic.clone();
        let (pid, pepoch) = self.producer.expect("initialised before producing");
        let seq = *self.seq.get(&p).unwrap_or(&0);
        let mut attempts = 0;
        loop {
            let r = self.connect().and_then(|c| {
                c.conn()
                    .produce(&topic, p, batch, pid, pepoch, seq, now_ms())
            });
            match r {
                Ok(_) => {
                    self.seq.insert(p, next_seq(seq, batch.len()));
                    return Ok(());
                }
                Err(KafkaError::Io(e)) if attempts < 60 => {
                    attempts += 1;
                    tracing::warn!(topic = %topic, "sink produce to partition {p} failed, resending: {e}");
                    self.conn = None;
                    std::thread::sleep(Duration::from_millis(500));
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn try_commit(
        &mut self,
        epoch: u64,
        records: &[Outgoing],
        retry: bool,
    ) -> Result<(), KafkaError> {
        self.connect()?;
        if self.producer.is_none() {
            self.producer = Some(self.conn().init_producer()?);
            self.seq.clear();
        }
        let skip = if retry {
            self.already_written(epoch)?
        } else {
            Default::default()
        };
        let mut per: BTreeMap<i32, Vec<&Outgoing>> = BTreeMap::new();
        for (i, r) in records.iter().enumerate() {
            if !skip.contains(&(i as u64)) {
                per.entry(self.partition_of(r)).or_default().push(r);
            }
        }
        for (p, recs) in per {
            let mut batch: Vec<Outgoing> = Vec::new();
            let mut bytes = 0;
            for r in recs {
                bytes += r.value.len() + r.key.as_ref().map_or(0, Vec::len) + 96;
                batch.push(Outgoing {
                    key: r.key.clone(),
                    value: r.value.clone(),
                    headers: r.headers.clone(),
                });
                if batch.len() >= BATCH || bytes >= BATCH_BYTES {
                    self.produce(p, &batch)?;
                    batch.clear();
                    bytes = 0;
                }
            }
            if !batch.is_empty() {
                self.produce(p, &batch)?;
            }
        }
        self.refresh_scan_from()
    }
}

impl<D: ToRecord + 'static> Committer<D> for TopicCommitter {
    fn commit(&mut self, epoch: u64, records: &[D], retry: bool) -> Result<(), String> {
        let writer = self.writer();
        let out: Vec<Outgoing> = records
            .iter()
            .enumerate()
            .map(|(i, r)| Outgoing {
                key: r.key(),
                value: r.value(),
                headers: vec![
                    ("eddy.job".to_owned(), self.job.clone().into_bytes()),
                    ("eddy.writer".to_owned(), writer.clone().into_bytes()),
                    ("eddy.epoch".to_owned(), epoch.to_string().into_bytes()),
                    ("eddy.index".to_owned(), i.to_string().into_bytes()),
                ],
            })
            .collect();
        // a broken connection is retried inside (same producer id and sequence numbers);
        // anything else retriable starts over with a new producer id, looking up first what
        // already landed
        let mut retry = retry;
        let mut attempts = 0;
        loop {
            match self.try_commit(epoch, &out, retry) {
                Ok(()) => return Ok(()),
                Err(e) if e.retriable() && attempts < 30 => {
                    attempts += 1;
                    tracing::warn!(topic = %self.cfg.topic, "sink commit of epoch {epoch} failed, retrying: {e}");
                    self.conn = None;
                    self.producer = None;
                    retry = true;
                    std::thread::sleep(Duration::from_millis(500));
                }
                Err(e) => return Err(format!("topic {}: {e}", self.cfg.topic)),
            }
        }
    }

    fn state(&self) -> Vec<u8> {
        bincode::serialize(&self.st).expect("integers encode")
    }

    fn restore(&mut self, state: &[u8]) {
        match bincode::deserialize(state) {
            Ok(s) => self.st = s,
            Err(e) => fail("sink: its checkpointed state", e),
        }
    }
}
