//! The broker: vhosts, topics, users, recovery, housekeeping and resource alarms; what goes in
//! `metadata.json` (written by `metadata.rs`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use eddy_log::{FsyncPolicy, Log, LogConfig, Syncer};
use parking_lot::{Mutex, RwLock};
use tokio::sync::watch;

use crate::error::{BrokerError, Result};
use crate::exchange::Destination;
use crate::metadata::{
    self, BindingMeta, ExchangeMeta, Metadata, MetadataWriter, QueueMeta, TopicMeta, VHostMeta,
};
use crate::offsets::OffsetStore;
use crate::topic::{check_topic_name, Partition, Topic, TopicConfig, MAX_PARTITIONS};
use crate::vhost::{ExchangeDeclare, QueueDeclare, VHost, VHostParent};

/// Broker settings (the binary fills these from flags, environment and TOML).
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// Where metadata and queue logs live.
    pub data_dir: PathBuf,
    /// When appends are fsynced (confirms wait for it).
    pub fsync: FsyncPolicy,
    /// Publishers are blocked while in-memory message bytes exceed this.
    pub memory_high_watermark: u64,
    /// Publishers are blocked while free disk space is below this.
    pub disk_free_limit: u64,
    /// Queue log segment size.
    pub segment_bytes: u64,
    /// Queue log segment age at which it is rolled (None: by size only).
    pub segment_ms: Option<u64>,
    /// Users: name → password.
    pub users: Vec<(String, String)>,
    /// Users that may only connect from loopback (RabbitMQ's `loopback_users`).
    pub loopback_users: Vec<String>,
}

/// The memory high watermark's default share of the machine's memory (RabbitMQ's
/// `vm_memory_high_watermark.relative`, 0.4).
pub const DEFAULT_MEMORY_HIGH_WATERMARK_PERCENT: u8 = 40;

/// The machine's memory in bytes (`/proc/meminfo`; 4 GiB where it cannot be read).
pub fn total_memory() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(4 << 30)
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            data_dir: PathBuf::from("./data"),
            fsync: FsyncPolicy::Always,
            memory_high_watermark: total_memory() / 100
                * DEFAULT_MEMORY_HIGH_WATERMARK_PERCENT as u64,
            // RabbitMQ's default, 50 MB
            disk_free_limit: 50_000_000,
            segment_bytes: 64 << 20,
            segment_ms: Some(3_600_000),
            users: vec![("guest".into(), "guest".into())],
            loopback_users: vec!["guest".into()],
        }
    }
}

/// Resource alarms; publishers are blocked while any is raised.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Alarms {
    /// Memory above the high watermark.
    pub memory: bool,
    /// Free disk below the limit.
    pub disk: bool,
}

impl Alarms {
    /// Any alarm raised.
    pub fn blocked(&self) -> bool {
        self.memory || self.disk
    }
}

pub(crate) struct BrokerInner {
    pub(crate) config: BrokerConfig,
    vhosts: RwLock<HashMap<String, Arc<VHost>>>,
    topics: RwLock<HashMap<String, Arc<Topic>>>,
    /// Bumped by every append to any partition.
    appends: Arc<watch::Sender<u64>>,
    offsets: std::sync::OnceLock<OffsetStore>,
    /// Held while topics are created, deleted or grown (their log directories).
    topic_lifecycle: Mutex<()>,
    pub(crate) syncer: Arc<Syncer>,
    pub(crate) memory: Arc<AtomicI64>,
    alarms: watch::Sender<Alarms>,
    next_conn: AtomicU64,
    metadata: MetadataWriter,
    connections: Arc<crate::connections::Connections>,
    started: Instant,
    users: crate::users::Users,
    /// One broker per data directory, for as long as this one lives.
    _lock: crate::lock::DirLock,
}

/// Handle to the broker (cheap to clone).
#[derive(Clone)]
pub struct Broker(Arc<BrokerInner>);

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("data_dir", &self.0.config.data_dir)
            .finish()
    }
}

/// Longest file name the file systems Eddy runs on take (ext4, xfs, btrfs: 255 bytes).
const MAX_FILE_NAME: usize = 255;

/// Hex-escape anything but `[A-Za-z0-9._-]` so any queue or vhost name is a safe file name. A
/// name whose escaped form is longer than a file name may be (a 255-byte name escapes to up to
/// 765) becomes the start of that form, `~` (which the escaping never leaves) and the
/// SHA-256 of the name: still one name per directory, and names that fit keep the form they
/// always had.
fn encode_name(s: &str) -> String {
    let out = escape_name(s);
    if out.len() <= MAX_FILE_NAME {
        return out;
    }
    let digest = ring::digest::digest(&ring::digest::SHA256, s.as_bytes());
    let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    // cut before an escape, never inside one
    let mut keep = MAX_FILE_NAME - 1 - hex.len();
    while out.as_bytes()[..keep]
        .iter()
        .rev()
        .take(2)
        .any(|b| *b == b'%')
    {
        keep -= 1;
    }
    format!("{}~{hex}", &out[..keep])
}

fn escape_name(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02x}"));
        }
    }
    if out.is_empty() || out.starts_with('.') {
        out.insert(0, '%');
    }
    out
}

impl Broker {
    /// Open the data directory: load metadata, recover durable queues.
    pub fn open(config: BrokerConfig) -> Result<Broker> {
        std::fs::create_dir_all(&config.data_dir).map_err(|e| {
            BrokerError::Internal(format!(
                "cannot create data dir {}: {e}",
                config.data_dir.display()
            ))
        })?;
        // before anything in it is read or written
        let lock = crate::lock::DirLock::take(&config.data_dir)?;
        let users = crate::users::Users::open(
            &config.data_dir,
            &config.users,
            config.loopback_users.clone(),
        )?;
        let syncer = Syncer::new(config.fsync);
        let (alarms, _) = watch::channel(Alarms::default());
        let metadata = MetadataWriter::new(config.data_dir.clone());
        let inner = Arc::new(BrokerInner {
            config,
            vhosts: RwLock::new(HashMap::new()),
            topics: RwLock::new(HashMap::new()),
            appends: Arc::new(watch::channel(0).0),
            offsets: std::sync::OnceLock::new(),
            topic_lifecycle: Mutex::new(()),
            syncer,
            memory: Arc::new(AtomicI64::new(0)),
            alarms,
            next_conn: AtomicU64::new(1),
            metadata,
            connections: Default::default(),
            started: Instant::now(),
            users,
            _lock: lock,
        });
        let broker = Broker(inner);
        let offsets_log = Log::open(
            &broker.0.config.data_dir.join("offsets"),
            LogConfig {
                segment_bytes: 16 << 20,
                ..LogConfig::default()
            },
            broker.0.syncer.clone(),
        )?;
        let _ = broker.0.offsets.set(OffsetStore::open(offsets_log)?);
        broker.load_metadata()?;
        if broker.vhost("/").is_none() {
            broker.add_vhost("/");
        }
        broker.0.metadata.loaded();
        Ok(broker)
    }

    /// The broker's configuration.
    pub fn config(&self) -> &BrokerConfig {
        &self.0.config
    }

    /// Create a vhost if missing.
    pub fn add_vhost(&self, name: &str) -> Arc<VHost> {
        let mut vs = self.0.vhosts.write();
        vs.entry(name.to_owned())
            .or_insert_with(|| VHost::new(name, Arc::<BrokerInner>::downgrade(&self.0)))
            .clone()
    }

    /// Create a vhost if missing, durably (the management API's PUT /api/vhosts/name).
    pub fn declare_vhost(&self, name: &str) -> Result<bool> {
        if name.is_empty() || name.len() > 255 || name.chars().any(char::is_control) {
            return Err(BrokerError::PreconditionFailed(
                "a vhost name is 1 to 255 bytes without control characters".into(),
            ));
        }
        let created = self.vhost(name).is_none();
        self.add_vhost(name);
        if created {
            self.0.save_metadata();
        }
        Ok(created)
    }

    /// Look up a vhost.
    pub fn vhost(&self, name: &str) -> Option<Arc<VHost>> {
        self.0.vhosts.read().get(name).cloned()
    }

    /// Delete a vhost with its queues (and their messages), exchanges and permissions.
    pub fn delete_vhost(&self, name: &str) -> Result<()> {
        let Some(v) = self.0.vhosts.write().remove(name) else {
            return Err(BrokerError::NotFound(format!("no vhost '{name}'")));
        };
        for q in v.queues() {
            v.remove_queue(&q);
        }
        self.0.users.vhost_deleted(name)?;
        self.0.save_metadata();
        Ok(())
    }

    /// All vhosts.
    pub fn vhosts(&self) -> Vec<Arc<VHost>> {
        self.0.vhosts.read().values().cloned().collect()
    }

    /// Check credentials. `guest`-like loopback users are refused from other addresses.
    pub fn authenticate(&self, user: &str, pass: &str, from_loopback: bool) -> Result<()> {
        self.0
            .users
            .authenticate(user, pass, from_loopback)
            .map(|_| ())
    }

    /// Users, tags and permissions.
    pub fn users(&self) -> &crate::users::Users {
        &self.0.users
    }

    /// A fresh connection id (owner of exclusive queues).
    pub fn next_connection_id(&self) -> u64 {
        self.0.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    /// List a new connection (until the handle is dropped).
    pub fn register_connection(
        &self,
        id: u64,
        protocol: &'static str,
        peer: std::net::SocketAddr,
        local: std::net::SocketAddr,
        tls: bool,
    ) -> crate::connections::ConnectionHandle {
        self.0.connections.add(id, protocol, peer, local, tls)
    }

    /// The open connections.
    pub fn connections(&self) -> Vec<Arc<crate::connections::ConnectionInfo>> {
        self.0.connections.list()
    }

    /// Bytes received and sent over all connections ever, and connections ever opened.
    pub fn connection_totals(&self) -> (u64, u64, u64) {
        self.0.connections.totals()
    }

    /// How long the broker has run.
    pub fn uptime(&self) -> Duration {
        self.0.started.elapsed()
    }

    /// Clean up after a connection: its exclusive queues are deleted.
    pub fn connection_closed(&self, conn: u64) {
        for v in self.vhosts() {
            v.connection_closed(conn);
        }
    }

    /// Watch resource alarms.
    pub fn alarms(&self) -> watch::Receiver<Alarms> {
        self.0.alarms.subscribe()
    }

    /// Bytes of messages held in memory.
    pub fn memory_used(&self) -> i64 {
        self.0.memory.load(Ordering::Relaxed)
    }

    /// Count `delta` bytes of messages held outside queues (e.g. an open transaction) toward
    /// the memory watermark; release them with the negative amount.
    pub fn track_memory(&self, delta: i64) {
        self.0.memory.fetch_add(delta, Ordering::Relaxed);
    }

    /// How long the group committer's fsyncs took.
    pub fn fsync_histogram(&self) -> eddy_log::FsyncHistogram {
        self.0.syncer.fsync_histogram()
    }

    /// Free bytes on the data directory's file system.
    pub fn disk_free(&self) -> Option<u64> {
        free_disk_bytes(&self.0.config.data_dir)
    }

    /// Number of fsyncs the group committer has made.
    pub fn fsync_count(&self) -> u64 {
        self.0.syncer.fsync_count()
    }

    /// Run periodic work (TTL expiry, x-expires, log compaction, alarms) until the runtime stops.
    pub fn spawn_housekeeping(&self) -> tokio::task::JoinHandle<()> {
        let inner = Arc::downgrade(&self.0);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(50));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let mut last_disk = Instant::now() - Duration::from_secs(10);
            let mut disk_alarm = false;
            let mut last_retention = Instant::now();
            let mut last_memory = Instant::now() - Duration::from_secs(1);
            let mut real_memory = 0i64;
            loop {
                tick.tick().await;
                let Some(inner) = inner.upgrade() else { break };
                let b = Broker(inner);
                let now = Instant::now();
                // ack records, segment deletion and queue removal touch the disk
                run_blocking(|| {
                    if now.duration_since(last_retention) >= Duration::from_secs(1) {
                        last_retention = now;
                        for t in b.topics() {
                            let config = t.config();
                            for p in t.partitions() {
                                p.apply_retention(&config);
                            }
                        }
                    }
                    for v in b.vhosts() {
                        for q in v.queues() {
                            if q.tick(now) {
                                tracing::info!(queue = %q.name, vhost = %v.name, "deleting queue unused for its x-expires period");
                                v.remove_queue(&q);
                            }
                        }
                    }
                });
                if now.duration_since(last_disk) >= Duration::from_secs(1) {
                    last_disk = now;
                    if let Some(free) = free_disk_bytes(&b.0.config.data_dir) {
                        disk_alarm = free < b.0.config.disk_free_limit;
                    }
                }
                // the process's real memory, read four times a second, or the message estimate,
                // whichever is more (the estimate reacts between readings)
                if now.duration_since(last_memory) >= Duration::from_millis(250) {
                    last_memory = now;
                    real_memory = crate::memory::allocated().unwrap_or(0) as i64;
                }
                let used = b.memory_used().max(real_memory);
                let mem_alarm = used > b.0.config.memory_high_watermark as i64;
                let new = Alarms {
                    memory: mem_alarm,
                    disk: disk_alarm,
                };
                b.0.alarms.send_if_modified(|cur| {
                    if *cur != new {
                        if new.blocked() {
                            tracing::warn!(
                                memory = new.memory,
                                disk = new.disk,
                                messages = b.memory_used(),
                                allocated = real_memory,
                                "resource alarm raised: publishers are blocked until it clears"
                            );
                        } else {
                            tracing::info!("resource alarm cleared: publishers unblocked");
                        }
                        *cur = new;
                        true
                    } else {
                        false
                    }
                });
            }
        })
    }

    /// The group committer every log of this broker shares.
    pub fn syncer(&self) -> Arc<Syncer> {
        self.0.syncer.clone()
    }

    /// Changes whenever a record is appended to any partition (long-polling readers wait on
    /// it, then look at their partitions again).
    pub fn appends(&self) -> watch::Receiver<u64> {
        self.0.appends.subscribe()
    }

    /// Committed consumer offsets.
    pub fn offsets(&self) -> &OffsetStore {
        self.0.offsets.get().expect("opened in Broker::open")
    }

    /// A topic by name.
    pub fn topic(&self, name: &str) -> Option<Arc<Topic>> {
        self.0.topic(name)
    }

    /// All topics.
    pub fn topics(&self) -> Vec<Arc<Topic>> {
        let mut t: Vec<_> = self.0.topics.read().values().cloned().collect();
        t.sort_by(|a, b| a.name.cmp(&b.name));
        t
    }

    /// Create a topic with `partitions` partitions (blocks on disk: call off async workers).
    /// An existing name is [`BrokerError::AlreadyExists`].
    pub fn create_topic(
        &self,
        name: &str,
        partitions: usize,
        config: TopicConfig,
    ) -> Result<Arc<Topic>> {
        self.0.create_topic(name, partitions, config)
    }

    /// Delete a topic and its data (blocks on disk). A stream queue of the same name goes too.
    pub fn delete_topic(&self, name: &str) -> Result<()> {
        if self.topic(name).is_none() {
            return Err(BrokerError::NotFound(format!("no topic '{name}'")));
        }
        if let Some(v) = self.vhost("/") {
            if let Some(q) = v.queue(name).filter(|q| q.stream().is_some()) {
                // removing the queue removes the topic
                v.remove_queue(&q);
                return Ok(());
            }
        }
        self.0.remove_topic(name);
        Ok(())
    }

    /// Grow a topic to `count` partitions (never shrinks: Kafka's rule).
    pub fn create_partitions(&self, name: &str, count: usize) -> Result<()> {
        let lifecycle = self.0.topic_lifecycle.lock();
        let topic = self
            .topic(name)
            .ok_or_else(|| BrokerError::NotFound(format!("no topic '{name}'")))?;
        let have = topic.partition_count();
        let is_stream = self
            .vhost("/")
            .and_then(|v| v.queue(name))
            .is_some_and(|q| q.stream().is_some());
        if is_stream {
            return Err(BrokerError::PreconditionFailed(format!(
                "topic '{name}' is the stream queue of the same name: it stays one partition"
            )));
        }
        if count <= have || count > MAX_PARTITIONS {
            return Err(BrokerError::PreconditionFailed(format!(
                "topic '{name}' has {have} partitions; the new count must be more (at most {MAX_PARTITIONS}), not {count}"
            )));
        }
        let config = topic.config();
        for i in have..count {
            let log = self.0.open_partition_log(name, i, &config)?;
            topic.partitions.write().push(Partition::new(
                name,
                i as i32,
                log,
                self.0.appends.clone(),
            ));
        }
        drop(lifecycle);
        self.0.save_metadata();
        Ok(())
    }

    /// Replace a topic's configuration (segment size applies to new segments after restart).
    pub fn set_topic_config(&self, name: &str, config: TopicConfig) -> Result<()> {
        let topic = self
            .topic(name)
            .ok_or_else(|| BrokerError::NotFound(format!("no topic '{name}'")))?;
        *topic.config.write() = config;
        self.0.save_metadata();
        Ok(())
    }

    /// Flush and fsync everything (clean shutdown).
    pub fn shutdown(&self) {
        if let Err(e) = self.offsets().log().close() {
            tracing::error!("closing the committed-offsets log failed: {e}");
        }
        for t in self.topics() {
            for p in t.partitions() {
                if let Err(e) = p.log().close() {
                    tracing::error!(partition = ?p, "closing partition log failed: {e}");
                }
            }
        }
        for v in self.vhosts() {
            for q in v.queues() {
                q.flush_acks();
                if let Some(log) = q.log() {
                    if let Err(e) = log.close() {
                        tracing::error!(queue = %q.name, "closing queue log failed: {e}");
                    }
                }
            }
        }
        self.0.syncer.shutdown();
    }

    /// Declare what `metadata.json` holds (before [`MetadataWriter::loaded`]: nothing is
    /// written back meanwhile).
    fn load_metadata(&self) -> Result<()> {
        let Some(meta) = metadata::load(&self.0.config.data_dir)? else {
            return Ok(());
        };
        for t in meta.topics {
            let topic = self.0.open_topic(&t.name, t.id, t.partitions, t.config)?;
            tracing::info!(topic = %t.name, partitions = t.partitions, "recovered topic");
            self.0.topics.write().insert(t.name, topic);
        }
        for vm in meta.vhosts {
            let v = self.add_vhost(&vm.name);
            for e in vm.exchanges {
                v.declare_exchange(ExchangeDeclare {
                    name: e.name.clone(),
                    kind: e.kind.as_str().into(),
                    passive: false,
                    durable: e.durable,
                    auto_delete: e.auto_delete,
                    internal: e.internal,
                    arguments: e.arguments,
                })
                .or_else(|err| match err {
                    // amq.* exist already
                    BrokerError::AccessRefused(_) => Ok(()),
                    other => Err(other),
                })?;
            }
            for q in vm.queues {
                v.declare_queue(
                    QueueDeclare {
                        name: q.name.clone(),
                        server_named: false,
                        passive: false,
                        durable: true,
                        exclusive: false,
                        auto_delete: q.auto_delete,
                        arguments: q.arguments,
                    },
                    0,
                )?;
                if let Some(queue) = v.queue(&q.name) {
                    let n = queue.recover()?;
                    tracing::info!(queue = %q.name, vhost = %vm.name, messages = n, "recovered durable queue");
                }
            }
            for b in vm.bindings {
                if let Some(src) = v.exchange(&b.source) {
                    src.bind(b.binding);
                }
            }
        }
        Ok(())
    }
}

impl BrokerInner {
    fn open_topic(
        &self,
        name: &str,
        id: [u8; 16],
        partitions: usize,
        config: TopicConfig,
    ) -> Result<Arc<Topic>> {
        let mut parts = Vec::with_capacity(partitions);
        for i in 0..partitions {
            let log = self.open_partition_log(name, i, &config)?;
            parts.push(Partition::new(name, i as i32, log, self.appends.clone()));
        }
        Ok(Arc::new(Topic {
            name: name.to_owned(),
            id,
            partitions: RwLock::new(parts),
            config: RwLock::new(config),
        }))
    }

    fn open_partition_log(
        &self,
        topic: &str,
        index: usize,
        config: &TopicConfig,
    ) -> Result<Arc<Log>> {
        let dir = topic_dir(&self.config.data_dir, topic).join(index.to_string());
        let cfg = LogConfig {
            segment_bytes: config.segment_bytes,
            segment_ms: self.config.segment_ms,
            ..LogConfig::default()
        };
        let log = Log::open(&dir, cfg, self.syncer.clone())?;
        let report = log.recovery_report();
        if report.lost_sealed_data() {
            for r in &report.repairs {
                tracing::error!(
                    topic,
                    partition = index,
                    "partition log damaged on disk, data lost: {r}"
                );
            }
        }
        Ok(log)
    }

    /// What `metadata.json` should hold now.
    fn metadata_snapshot(&self) -> Metadata {
        let mut meta = Metadata::default();
        let vhosts: Vec<Arc<VHost>> = self.vhosts.read().values().cloned().collect();
        for v in vhosts {
            let mut vm = VHostMeta {
                name: v.name.clone(),
                exchanges: vec![],
                queues: vec![],
                bindings: vec![],
            };
            let exchanges = v.exchanges();
            let durable_ex: Vec<String> = exchanges
                .iter()
                .filter(|e| e.durable)
                .map(|e| e.name.clone())
                .collect();
            for e in &exchanges {
                if e.durable && !e.name.is_empty() && !e.name.starts_with("amq.") {
                    vm.exchanges.push(ExchangeMeta {
                        name: e.name.clone(),
                        kind: e.kind,
                        durable: e.durable,
                        auto_delete: e.auto_delete,
                        internal: e.internal,
                        arguments: e.arguments.clone(),
                    });
                }
            }
            let queues = v.queues();
            let durable_q: Vec<String> = queues
                .iter()
                .filter(|q| q.durable && q.exclusive_owner.is_none())
                .map(|q| q.name.clone())
                .collect();
            for q in &queues {
                if q.durable && q.exclusive_owner.is_none() {
                    vm.queues.push(QueueMeta {
                        name: q.name.clone(),
                        auto_delete: q.auto_delete,
                        arguments: q.arguments.clone(),
                    });
                }
            }
            for e in &exchanges {
                if !e.durable {
                    continue;
                }
                for b in e.bindings() {
                    let keep = match &b.destination {
                        Destination::Queue(n) => durable_q.contains(n),
                        Destination::Exchange(n) => durable_ex.contains(n),
                    };
                    if keep {
                        vm.bindings.push(BindingMeta {
                            source: e.name.clone(),
                            binding: b,
                        });
                    }
                }
            }
            vm.exchanges.sort_by(|a, b| a.name.cmp(&b.name));
            vm.queues.sort_by(|a, b| a.name.cmp(&b.name));
            meta.vhosts.push(vm);
        }
        let mut topics: Vec<Arc<Topic>> = self.topics.read().values().cloned().collect();
        topics.sort_by(|a, b| a.name.cmp(&b.name));
        for t in topics {
            meta.topics.push(TopicMeta {
                name: t.name.clone(),
                id: t.id,
                partitions: t.partition_count(),
                config: t.config(),
            });
        }
        meta
    }
}

/// The broker is every vhost's parent: all a vhost reaches of the broker goes through here.
impl VHostParent for BrokerInner {
    /// Write metadata of every durable exchange, queue and binding, and of every topic (see
    /// [`MetadataWriter::save`]: group-committed, returns once on disk).
    fn save_metadata(&self) {
        self.metadata.save(|| self.metadata_snapshot());
    }

    /// Return once every metadata change made so far is on disk (see
    /// [`MetadataWriter::barrier`]).
    fn metadata_barrier(&self) {
        self.metadata.barrier(|| self.metadata_snapshot());
    }

    /// Open (or create) the log of a durable queue.
    fn open_queue_log(&self, vhost: &str, queue: &str) -> Result<Arc<Log>> {
        let dir = queue_dir(&self.config.data_dir, vhost, queue);
        let cfg = LogConfig {
            segment_bytes: self.config.segment_bytes,
            segment_ms: self.config.segment_ms,
            ..LogConfig::default()
        };
        let log = Log::open(&dir, cfg, self.syncer.clone())?;
        let report = log.recovery_report();
        if report.lost_sealed_data() {
            for r in &report.repairs {
                tracing::error!(vhost, queue, "queue log damaged on disk, data lost: {r}");
            }
        }
        Ok(log)
    }

    fn memory(&self) -> &Arc<AtomicI64> {
        &self.memory
    }

    fn topic(&self, name: &str) -> Option<Arc<Topic>> {
        self.topics.read().get(name).cloned()
    }

    /// Create a topic with `partitions` partitions (blocks on disk: call off async workers).
    /// An existing name is [`BrokerError::AlreadyExists`].
    fn create_topic(
        &self,
        name: &str,
        partitions: usize,
        config: TopicConfig,
    ) -> Result<Arc<Topic>> {
        check_topic_name(name)?;
        if partitions == 0 || partitions > MAX_PARTITIONS {
            return Err(BrokerError::PreconditionFailed(format!(
                "invalid partition count {partitions} for topic '{name}': 1 to {MAX_PARTITIONS}"
            )));
        }
        let lifecycle = self.topic_lifecycle.lock();
        if self.topic(name).is_some() {
            return Err(BrokerError::AlreadyExists(format!(
                "topic '{name}' already exists"
            )));
        }
        let id = *uuid_v4();
        let topic = match self.open_topic(name, id, partitions, config) {
            Ok(t) => t,
            Err(e) => {
                // no topic of this name exists: what the failed attempt left on disk (up to
                // one directory per partition) goes
                let _ = std::fs::remove_dir_all(topic_dir(&self.config.data_dir, name));
                return Err(e);
            }
        };
        self.topics.write().insert(name.to_owned(), topic.clone());
        drop(lifecycle);
        self.save_metadata();
        tracing::info!(topic = name, partitions, "created topic");
        Ok(topic)
    }

    /// Remove a topic and its data (not a stream queue of the same name).
    fn remove_topic(&self, name: &str) {
        let lifecycle = self.topic_lifecycle.lock();
        let Some(topic) = self.topics.write().remove(name) else {
            return;
        };
        for p in topic.partitions() {
            if let Err(e) = p.log().destroy() {
                tracing::warn!(partition = ?p, "failed to remove partition log: {e}");
            }
        }
        let _ = std::fs::remove_dir_all(topic_dir(&self.config.data_dir, name));
        drop(lifecycle);
        if let Some(o) = self.offsets.get() {
            if let Err(e) = o.forget_topic(name) {
                tracing::warn!(topic = name, "forgetting committed offsets failed: {e}");
            }
        }
        self.save_metadata();
        tracing::info!(topic = name, "deleted topic");
    }
}

/// Run `f`, which may block on disk (metadata writes, removing a queue's log), from async code:
/// on a multi-threaded tokio runtime the worker hands its other tasks to another thread first
/// (`block_in_place`); elsewhere `f` just runs.
pub fn run_blocking<R>(f: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

fn topic_dir(data: &Path, topic: &str) -> PathBuf {
    // topic names are [a-zA-Z0-9._-] and never "." or "..": safe as they are
    data.join("topics").join(topic)
}

/// A random (version 4) UUID.
fn uuid_v4() -> Box<[u8; 16]> {
    use rand::Rng;
    let mut b: [u8; 16] = rand::rng().random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    Box::new(b)
}

fn queue_dir(data: &Path, vhost: &str, queue: &str) -> PathBuf {
    data.join("queues")
        .join(encode_name(vhost))
        .join(encode_name(queue))
}

fn free_disk_bytes(path: &Path) -> Option<u64> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let c = CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs is plain old data, for which all zeroes is a valid value.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: c is a valid NUL-terminated path and st a properly sized out-parameter.
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    if rc != 0 {
        return None;
    }
    Some(st.f_bavail as u64 * st.f_frsize as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_file_safe() {
        assert_eq!(encode_name("/"), "%2f");
        assert_eq!(encode_name("hello"), "hello");
        assert_eq!(encode_name(".."), "%..");
        assert_eq!(encode_name("a b"), "a%20b");
    }

    #[test]
    fn names_too_long_for_a_file_name_are_shortened_and_kept_apart() {
        let mut seen = std::collections::HashSet::new();
        for name in [
            "é".repeat(50),
            "!".repeat(100),
            "队列".repeat(20),
            "é".repeat(127),
        ] {
            let e = encode_name(&name);
            assert!(e.len() <= MAX_FILE_NAME, "{} bytes", e.len());
            assert!(e.contains('~'));
            // no escape cut in half before the digest
            let cut = e.find('~').unwrap();
            assert!(!e.as_bytes()[cut - 2..cut].contains(&b'%'), "{e}");
            assert!(seen.insert(e));
        }
        // one byte different, another directory
        assert_ne!(
            encode_name(&"é".repeat(127)),
            encode_name(&format!("{}e", "é".repeat(126)))
        );
        // names that fit keep their form
        let fits = "x".repeat(255);
        assert_eq!(encode_name(&fits), fits);
    }
}
