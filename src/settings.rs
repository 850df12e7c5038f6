//! `eddy serve`'s settings: one nested structure, read from the TOML file (`--config`), then
//! `EDDY_*` environment variables, then flags (each wins over the one before). Every default
//! is written once, in the `Default` of its section (taken from the library that owns the
//! setting where there is one), and every key but `[[users]]` has a flag.
//!
//! `eddy serve --print-config` prints the effective settings as a TOML file that `--config`
//! takes back; a key the file has that Eddy does not know is an error naming the key and
//! the file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

/// Every setting of `eddy serve`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// AMQP 0-9-1.
    pub amqp: Amqp,
    /// The Kafka protocol.
    pub kafka: Kafka,
    /// The management API, console and `/metrics`.
    pub http: Http,
    /// TLS for every listener.
    pub tls: Tls,
    /// Where and how data is written.
    pub storage: Storage,
    /// What clients may make the broker hold.
    pub limits: Limits,
    /// Running as a node of a cluster.
    pub cluster: Cluster,
    /// Users created at first start (administrators with full permissions on `/`); without
    /// the key, guest/guest (loopback only); `users = []`: none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub users: Option<Vec<User>>,
}

/// `[amqp]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Amqp {
    /// AMQP 0-9-1 listener.
    pub listen: SocketAddr,
    /// AMQPS listener (with `[tls]`).
    pub tls_listen: SocketAddr,
    /// Heartbeat proposed to clients, seconds (0 = off).
    pub heartbeat: u16,
    /// Largest frame accepted (at least 4096).
    pub frame_max: u32,
}

impl Default for Amqp {
    fn default() -> Self {
        let d = eddy_amqp::AmqpConfig::default();
        Amqp {
            listen: ([127, 0, 0, 1], 5672).into(),
            tls_listen: ([127, 0, 0, 1], 5671).into(),
            heartbeat: d.heartbeat,
            frame_max: d.frame_max,
        }
    }
}

/// `[kafka]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Kafka {
    /// Kafka listener.
    pub listen: SocketAddr,
    /// Kafka TLS listener (`security.protocol=SSL` or `SASL_SSL`, with `[tls]`); its clients
    /// are told to come back to it.
    pub tls_listen: SocketAddr,
    /// `HOST:PORT` clients of the plain listener are told to connect to (Metadata); without
    /// it, the listener's own address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub advertised: Option<String>,
    /// Partitions of a topic created when a client names an unknown one; 0: no automatic
    /// creation.
    pub auto_create_partitions: usize,
    /// Close a connection that sends no request and takes no response byte for this long,
    /// milliseconds (Kafka's `connections.max.idle.ms`); 0: never.
    pub idle_timeout_ms: u64,
}

impl Default for Kafka {
    fn default() -> Self {
        let d = eddy_kafka::KafkaConfig::default();
        Kafka {
            listen: ([127, 0, 0, 1], 9092).into(),
            tls_listen: ([127, 0, 0, 1], 9093).into(),
            advertised: None,
            auto_create_partitions: if d.auto_create_topics {
                d.default_partitions
            } else {
                0
            },
            idle_timeout_ms: d.idle_timeout.as_millis() as u64,
        }
    }
}

/// `[http]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Http {
    /// Management API, web console and `/metrics`.
    pub listen: SocketAddr,
    /// HTTPS listener (with `[tls]`).
    pub tls_listen: SocketAddr,
}

impl Default for Http {
    fn default() -> Self {
        Http {
            listen: ([127, 0, 0, 1], 15672).into(),
            tls_listen: ([127, 0, 0, 1], 15671).into(),
        }
    }
}

/// `[cluster]`: without `node_id`, `listen` and `peers` Eddy runs alone.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Cluster {
    /// This node's id (a number, unique in the cluster).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_id: Option<u64>,
    /// Inter-node listener, host:port.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    /// Every member, this node too: `id@host:port,…`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peers: Option<String>,
    /// Replicas of a new topic's partitions when not asked for (default min(3, nodes)).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_replication_factor: Option<usize>,
}

impl Settings {
    /// The cluster this node is to join, if the settings name one; a partial set is an error
    /// naming what is missing.
    pub fn cluster_config(
        &self,
        info: eddy_cluster::NodeInfo,
    ) -> Result<Option<eddy_cluster::ClusterConfig>> {
        let c = &self.cluster;
        if c.node_id.is_none() && c.listen.is_none() && c.peers.is_none() {
            if c.default_replication_factor.is_some() {
                bail!("--default-replication-factor needs a cluster (--node-id, --cluster-listen, --cluster-peers)");
            }
            return Ok(None);
        }
        let (Some(id), Some(listen), Some(peers)) = (c.node_id, &c.listen, &c.peers) else {
            bail!("a cluster node needs all of --node-id, --cluster-listen and --cluster-peers");
        };
        let peers = eddy_cluster::parse_peers(peers).map_err(anyhow::Error::msg)?;
        if !peers.contains_key(&id) {
            bail!("--cluster-peers must list this node ({id}) too");
        }
        if let Some(rf) = c.default_replication_factor {
            if rf == 0 || rf > peers.len() {
                bail!(
                    "--default-replication-factor {rf} is not between 1 and the {} nodes of --cluster-peers",
                    peers.len()
                );
            }
        }
        // with a certificate, nodes speak mutual TLS: each verifies the others against the CA
        let tls = match (&self.tls.cert, &self.tls.key) {
            (Some(cert), Some(key)) => {
                let Some(ca) = &self.tls.client_ca else {
                    bail!("a cluster node with --tls-cert needs --tls-client-ca: the CA the nodes' certificates are verified against (nodes speak mutual TLS)");
                };
                Some(eddy_cluster::PeerTls {
                    acceptor: eddy_net::tls_acceptor(cert, key, Some(ca))?,
                    connector: eddy_net::tls_peer_connector(cert, key, ca)?,
                })
            }
            _ => None,
        };
        Ok(Some(eddy_cluster::ClusterConfig {
            tls,
            node_id: id,
            listen: listen.clone(),
            peers,
            dir: self.storage.data_dir.join("cluster"),
            default_replication_factor: c.default_replication_factor,
            info: eddy_cluster::NodeInfo {
                id,
                cluster: listen.clone(),
                ..info
            },
        }))
    }
}

/// `[tls]`: with a certificate and key, the TLS listeners start.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Tls {
    /// Certificate chain (PEM).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    /// Private key (PEM).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
    /// CA (PEM) that clients' certificates must chain to; without it none is asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_ca: Option<PathBuf>,
}

/// When writes are fsynced.
#[derive(Copy, Clone, Debug, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Fsync {
    /// fsync before every confirm (group commit: concurrent writers share one fsync)
    Always,
    /// fsync at most every fsync_interval_ms; confirms wait for it
    Batch,
    /// never fsync on the publish path (confirms after the write to the OS)
    Never,
}

/// `[storage]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Storage {
    /// Metadata and message logs.
    pub data_dir: PathBuf,
    /// When writes are fsynced; a publisher confirm is sent only after it.
    pub fsync: Fsync,
    /// With `fsync = "batch"`: the longest a write waits for its fsync.
    pub fsync_interval_ms: u64,
    /// Queue log segment size.
    pub segment_bytes: u64,
    /// Queue log segments also roll at this age, so acknowledged data is reclaimed on quiet
    /// queues too.
    pub segment_ms: u64,
}

impl Default for Storage {
    fn default() -> Self {
        let d = eddy_broker::BrokerConfig::default();
        let (fsync, interval) = match d.fsync {
            eddy_broker::FsyncPolicy::Always => (Fsync::Always, DEFAULT_FSYNC_INTERVAL),
            eddy_broker::FsyncPolicy::Batch(i) => (Fsync::Batch, i),
            eddy_broker::FsyncPolicy::Never => (Fsync::Never, DEFAULT_FSYNC_INTERVAL),
        };
        Storage {
            data_dir: d.data_dir,
            fsync,
            fsync_interval_ms: interval.as_millis() as u64,
            segment_bytes: d.segment_bytes,
            segment_ms: d.segment_ms.unwrap_or(0),
        }
    }
}

/// The longest a write waits for its fsync with `fsync = "batch"`.
const DEFAULT_FSYNC_INTERVAL: Duration = Duration::from_millis(5);

/// The memory high watermark: bytes, or a share of the machine's memory (`"40%"`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Watermark {
    /// This many bytes.
    Bytes(u64),
    /// This percentage of the machine's memory.
    Percent(u8),
}

impl Watermark {
    /// In bytes, on this machine.
    pub fn bytes(self) -> u64 {
        match self {
            Watermark::Bytes(b) => b,
            Watermark::Percent(p) => eddy_broker::total_memory() / 100 * p as u64,
        }
    }
}

impl std::str::FromStr for Watermark {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let bad = || format!("'{s}' is neither bytes (1073741824) nor a share of memory (40%)");
        match s.strip_suffix('%') {
            Some(p) => match p.trim().parse::<u8>() {
                Ok(p) if (1..=100).contains(&p) => Ok(Watermark::Percent(p)),
                _ => Err(bad()),
            },
            None => s.trim().parse().map(Watermark::Bytes).map_err(|_| bad()),
        }
    }
}

impl Serialize for Watermark {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            Watermark::Bytes(b) => s.serialize_u64(*b),
            Watermark::Percent(p) => s.serialize_str(&format!("{p}%")),
        }
    }
}

impl<'de> Deserialize<'de> for Watermark {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Bytes(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Bytes(b) => Ok(Watermark::Bytes(b)),
            Raw::Text(t) => t.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// `[limits]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Publishers are blocked while queued message bytes exceed this.
    pub memory_high_watermark: Watermark,
    /// Publishers are blocked while free disk space is below this many bytes.
    pub disk_free_limit: u64,
    /// Most connections open at once on each listener; one more is closed at once.
    pub max_connections: usize,
    /// Most connections open at once on each listener from one client address.
    pub max_connections_per_address: usize,
    /// File descriptors kept from client connections (AMQP, Kafka) for the logs, metadata and
    /// the management listener: the connections of those listeners together take at most the
    /// process's limit (raised to its hard limit at start) less this.
    pub descriptor_reserve: usize,
}

impl Default for Limits {
    fn default() -> Self {
        let net = eddy_net::Limits::default();
        Limits {
            memory_high_watermark: Watermark::Percent(
                eddy_broker::DEFAULT_MEMORY_HIGH_WATERMARK_PERCENT,
            ),
            disk_free_limit: eddy_broker::BrokerConfig::default().disk_free_limit,
            max_connections: net.max_connections,
            max_connections_per_address: net.max_connections_per_address,
            descriptor_reserve: 256,
        }
    }
}

/// `[[users]]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct User {
    /// Login.
    pub name: String,
    /// Password.
    pub password: String,
    /// May only log in from loopback (always so for `guest`, as RabbitMQ's
    /// `loopback_users`).
    #[serde(default)]
    pub loopback_only: bool,
}

/// Each flag of `eddy serve` (its clap id) and the key it sets. Its environment variable is
/// `EDDY_` and the flag's name in capitals.
pub const FLAGS: &[(&str, &str)] = &[
    ("data_dir", "storage.data_dir"),
    ("fsync", "storage.fsync"),
    ("fsync_interval_ms", "storage.fsync_interval_ms"),
    ("segment_bytes", "storage.segment_bytes"),
    ("segment_ms", "storage.segment_ms"),
    ("amqp", "amqp.listen"),
    ("amqps", "amqp.tls_listen"),
    ("heartbeat", "amqp.heartbeat"),
    ("frame_max", "amqp.frame_max"),
    ("kafka", "kafka.listen"),
    ("kafka_tls", "kafka.tls_listen"),
    ("kafka_advertised", "kafka.advertised"),
    (
        "kafka_auto_create_partitions",
        "kafka.auto_create_partitions",
    ),
    ("kafka_idle_timeout_ms", "kafka.idle_timeout_ms"),
    ("http", "http.listen"),
    ("https", "http.tls_listen"),
    ("tls_cert", "tls.cert"),
    ("tls_key", "tls.key"),
    ("tls_client_ca", "tls.client_ca"),
    ("memory_high_watermark", "limits.memory_high_watermark"),
    ("disk_free_limit", "limits.disk_free_limit"),
    ("max_connections", "limits.max_connections"),
    (
        "max_connections_per_address",
        "limits.max_connections_per_address",
    ),
    ("descriptor_reserve", "limits.descriptor_reserve"),
    ("node_id", "cluster.node_id"),
    ("cluster_listen", "cluster.listen"),
    ("cluster_peers", "cluster.peers"),
    (
        "default_replication_factor",
        "cluster.default_replication_factor",
    ),
];

/// Where a key of the flat file format (before sections) went, if `key = value` is one: `amqp`,
/// `kafka` and `http` were addresses, now sections.
fn moved_key(key: &str, value: &toml::Value) -> Option<String> {
    let flat = !value.is_table();
    let to = match key {
        "amqp" | "kafka" | "http" if flat => return Some(format!("[{key}] listen")),
        "amqp" | "kafka" | "http" => return None,
        "amqps" => "amqp.tls_listen",
        "kafka_tls" => "kafka.tls_listen",
        "https" => "http.tls_listen",
        _ => FLAGS.iter().find(|(id, _)| *id == key)?.1,
    };
    let (section, name) = to.split_once('.')?;
    Some(format!("[{section}] {name}"))
}

/// The value at a dotted key of a TOML table.
fn lookup<'a>(t: &'a toml::Table, key: &str) -> Option<&'a toml::Value> {
    let (section, name) = key.split_once('.')?;
    t.get(section)?.as_table()?.get(name)
}

/// Every key's default, as `--help` shows it.
pub fn default_of(key: &str) -> Option<String> {
    let t = toml::Table::try_from(Settings::default()).ok()?;
    lookup(&t, key).map(|v| match v {
        toml::Value::String(s) => s.clone(),
        other => other.to_string(),
    })
}

impl Settings {
    /// The settings: `file` (if any) over the defaults, then `overrides` (flag id → the value
    /// given as a flag or environment variable) over the file.
    pub fn load(file: Option<&Path>, overrides: &[(&str, String)]) -> Result<Settings> {
        let mut table = match file {
            None => toml::Table::new(),
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .with_context(|| format!("reading config file {}", p.display()))?;
                // keys of the flat files before sections, named with where they went
                if let Ok(t) = text.parse::<toml::Table>() {
                    for (old, value) in &t {
                        if let Some(new) = moved_key(old, value) {
                            bail!(
                                "config file {}: `{old}` is now `{new}` (the settings are in sections: [amqp] [kafka] [http] [tls] [storage] [limits] [cluster]; `eddy serve --print-config` prints them all)",
                                p.display()
                            );
                        }
                    }
                }
                // unknown keys and bad values are named with the file and line before
                // anything else is looked at
                toml::from_str::<Settings>(&text)
                    .with_context(|| format!("in config file {}", p.display()))?;
                text.parse::<toml::Table>()
                    .with_context(|| format!("config file {} is not TOML", p.display()))?
            }
        };
        let defaults = toml::Table::try_from(Settings::default())?;
        for (id, raw) in overrides {
            let Some(&(_, key)) = FLAGS.iter().find(|(f, _)| f == id) else {
                bail!("no setting for flag {id}");
            };
            let (section, name) = key.split_once('.').expect("keys are section.name");
            // a number where the default is one, a string otherwise
            let value = match lookup(&defaults, key) {
                Some(toml::Value::Integer(_)) => {
                    toml::Value::Integer(raw.parse().with_context(|| {
                        format!("--{}: '{raw}' is not a whole number", id.replace('_', "-"))
                    })?)
                }
                // numbers without a default
                None if matches!(
                    key,
                    "cluster.node_id" | "cluster.default_replication_factor"
                ) =>
                {
                    toml::Value::Integer(raw.parse().with_context(|| {
                        format!("--{}: '{raw}' is not a whole number", id.replace('_', "-"))
                    })?)
                }
                _ => toml::Value::String(raw.clone()),
            };
            table
                .entry(section)
                .or_insert_with(|| toml::Value::Table(Default::default()))
                .as_table_mut()
                .with_context(|| format!("[{section}] in the config file is not a table"))?
                .insert(name.to_owned(), value);
        }
        let s = Settings::deserialize(toml::Value::Table(table))
            .context("the settings from flags and the environment")?;
        s.check()?;
        Ok(s)
    }

    /// Values each type allows but Eddy does not.
    fn check(&self) -> Result<()> {
        if self.amqp.frame_max < 4096 {
            bail!(
                "amqp.frame_max {} is below AMQP's minimum of 4096",
                self.amqp.frame_max
            );
        }
        if self.tls.cert.is_some() != self.tls.key.is_some() {
            bail!("tls.cert (--tls-cert) and tls.key (--tls-key) go together");
        }
        if self.tls.client_ca.is_some() && self.tls.cert.is_none() {
            bail!("tls.client_ca (--tls-client-ca) needs tls.cert and tls.key");
        }
        if self.limits.max_connections == 0 || self.limits.max_connections_per_address == 0 {
            bail!(
                "limits.max_connections and limits.max_connections_per_address must be at least 1"
            );
        }
        if let Some(a) = &self.kafka.advertised {
            let (_, port) = a
                .rsplit_once(':')
                .with_context(|| format!("kafka.advertised '{a}': expected HOST:PORT"))?;
            port.parse::<u16>()
                .with_context(|| format!("kafka.advertised '{a}': bad port"))?;
        }
        Ok(())
    }

    /// As TOML that `--config` takes back.
    pub fn to_toml(&self) -> Result<String> {
        Ok(toml::to_string(self)?)
    }

    /// The broker's configuration.
    pub fn broker(&self) -> eddy_broker::BrokerConfig {
        let fsync = match self.storage.fsync {
            Fsync::Always => eddy_broker::FsyncPolicy::Always,
            Fsync::Batch => eddy_broker::FsyncPolicy::Batch(Duration::from_millis(
                self.storage.fsync_interval_ms,
            )),
            Fsync::Never => eddy_broker::FsyncPolicy::Never,
        };
        let mut config = eddy_broker::BrokerConfig {
            data_dir: self.storage.data_dir.clone(),
            fsync,
            memory_high_watermark: self.limits.memory_high_watermark.bytes(),
            disk_free_limit: self.limits.disk_free_limit,
            segment_bytes: self.storage.segment_bytes,
            segment_ms: (self.storage.segment_ms > 0).then_some(self.storage.segment_ms),
            ..eddy_broker::BrokerConfig::default()
        };
        if let Some(users) = &self.users {
            config.users = users
                .iter()
                .map(|u| (u.name.clone(), u.password.clone()))
                .collect();
            config.loopback_users = users
                .iter()
                .filter(|u| u.loopback_only || u.name == "guest")
                .map(|u| u.name.clone())
                .collect();
        }
        config
    }

    /// The AMQP front end's configuration.
    pub fn amqp(&self) -> eddy_amqp::AmqpConfig {
        eddy_amqp::AmqpConfig {
            heartbeat: self.amqp.heartbeat,
            frame_max: self.amqp.frame_max,
            ..eddy_amqp::AmqpConfig::default()
        }
    }

    /// The Kafka front end's configuration; `bound` is where the plain listener listens.
    pub fn kafka(&self, bound: SocketAddr) -> eddy_kafka::KafkaConfig {
        let (host, port) = match &self.kafka.advertised {
            Some(a) => {
                let (h, p) = a.rsplit_once(':').expect("checked at load");
                (h.to_owned(), p.parse().expect("checked at load"))
            }
            None => (bound.ip().to_string(), bound.port()),
        };
        eddy_kafka::KafkaConfig {
            advertised_host: host,
            advertised_port: port,
            auto_create_topics: self.kafka.auto_create_partitions > 0,
            default_partitions: self.kafka.auto_create_partitions.max(1),
            idle_timeout: Duration::from_millis(self.kafka.idle_timeout_ms),
            ..eddy_kafka::KafkaConfig::default()
        }
    }

    /// What every listener applies (the descriptor budget is the caller's to add).
    pub fn listener_limits(&self) -> eddy_net::Limits {
        eddy_net::Limits {
            max_connections: self.limits.max_connections,
            max_connections_per_address: self.limits.max_connections_per_address,
            ..eddy_net::Limits::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printed_settings_load_back_the_same() {
        let mut s = Settings::default();
        s.storage.fsync = Fsync::Batch;
        s.kafka.advertised = Some("broker.example:9092".into());
        s.tls.cert = Some("c.pem".into());
        s.tls.key = Some("k.pem".into());
        s.limits.memory_high_watermark = Watermark::Bytes(1 << 30);
        s.users = Some(vec![User {
            name: "ops".into(),
            password: "secret".into(),
            loopback_only: true,
        }]);
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("eddy.toml");
        std::fs::write(&p, s.to_toml().unwrap()).unwrap();
        assert_eq!(Settings::load(Some(&p), &[]).unwrap(), s);
        // and the defaults print and load back too
        std::fs::write(&p, Settings::default().to_toml().unwrap()).unwrap();
        assert_eq!(Settings::load(Some(&p), &[]).unwrap(), Settings::default());
    }

    #[test]
    fn every_key_has_a_flag_and_every_flag_a_key() {
        let t = toml::Table::try_from(Settings::default()).unwrap();
        let mut keys: Vec<String> = Vec::new();
        for (section, v) in &t {
            for name in v.as_table().unwrap().keys() {
                keys.push(format!("{section}.{name}"));
            }
        }
        // the keys that have no default are flags too
        keys.extend(
            [
                "kafka.advertised",
                "tls.cert",
                "tls.key",
                "tls.client_ca",
                "cluster.node_id",
                "cluster.listen",
                "cluster.peers",
                "cluster.default_replication_factor",
            ]
            .map(String::from),
        );
        for k in &keys {
            assert!(FLAGS.iter().any(|(_, key)| key == k), "no flag sets {k}");
        }
        assert_eq!(
            keys.len(),
            FLAGS.len(),
            "a flag sets a key that does not exist"
        );
    }

    #[test]
    fn flags_win_over_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("eddy.toml");
        std::fs::write(&p, "[amqp]\nheartbeat = 10\nframe_max = 8192\n").unwrap();
        let s = Settings::load(Some(&p), &[("heartbeat", "20".into())]).unwrap();
        assert_eq!(s.amqp.heartbeat, 20);
        assert_eq!(s.amqp.frame_max, 8192);
        let s = Settings::load(None, &[("memory_high_watermark", "25%".into())]).unwrap();
        assert_eq!(s.limits.memory_high_watermark, Watermark::Percent(25));
        let s = Settings::load(None, &[("memory_high_watermark", "1000".into())]).unwrap();
        assert_eq!(s.limits.memory_high_watermark, Watermark::Bytes(1000));
        // the Kafka idle timeout reaches the front end's configuration
        let s = Settings::load(None, &[("kafka_idle_timeout_ms", "1500".into())]).unwrap();
        let k = s.kafka(([127, 0, 0, 1], 9092).into());
        assert_eq!(k.idle_timeout, Duration::from_millis(1500));
        let d = Settings::default().kafka(([127, 0, 0, 1], 9092).into());
        assert_eq!(d.idle_timeout, Duration::from_secs(600));
    }

    #[test]
    fn unknown_keys_are_named_with_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("eddy.toml");
        for (text, key) in [
            ("[amqp]\nhearbeat = 10\n", "hearbeat"),
            // a key of the flat format is named with where it went
            ("fsync = \"always\"\n", "`fsync` is now `[storage] fsync`"),
            (
                "amqp = \"127.0.0.1:5672\"\n",
                "`amqp` is now `[amqp] listen`",
            ),
            ("[amqq]\nlisten = \"127.0.0.1:1\"\n", "amqq"),
        ] {
            std::fs::write(&p, text).unwrap();
            let e = format!("{:#}", Settings::load(Some(&p), &[]).unwrap_err());
            assert!(e.contains(key), "{e}");
            assert!(e.contains(&p.display().to_string()), "{e}");
        }
    }

    #[test]
    fn users_absent_is_guest_and_an_empty_list_is_nobody() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("eddy.toml");
        std::fs::write(&p, "users = []\n").unwrap();
        let s = Settings::load(Some(&p), &[]).unwrap();
        assert!(s.broker().users.is_empty());
        // and it prints as such, so the printed file means the same
        std::fs::write(&p, s.to_toml().unwrap()).unwrap();
        assert_eq!(Settings::load(Some(&p), &[]).unwrap().users, Some(vec![]));
        let s = Settings::load(None, &[]).unwrap();
        assert_eq!(
            s.broker().users,
            vec![("guest".to_owned(), "guest".to_owned())]
        );
    }

    #[test]
    fn values_eddy_does_not_take_are_refused() {
        for (id, v) in [
            ("frame_max", "1024"),
            ("max_connections", "0"),
            ("memory_high_watermark", "140%"),
            ("kafka_advertised", "nohostport"),
            ("heartbeat", "soon"),
        ] {
            assert!(
                Settings::load(None, &[(id, v.into())]).is_err(),
                "{id} = {v}"
            );
        }
        assert!(Settings::load(None, &[("tls_cert", "c.pem".into())]).is_err());
    }
}
