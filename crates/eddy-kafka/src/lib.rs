//! `eddy-kafka`: the Kafka wire-protocol front end. Requests and responses are decoded and
//! encoded by `kafka-protocol`; topics and partitions are the broker's, on `eddy-log`.
//!
//! Shaping decision: record batches are stored exactly as producers send them (compressed or
//! not) and served back byte for byte, with only the broker-owned base offset patched in (the
//! batch CRC does not cover it). A connection handles its requests one at a time, in order, as
//! a Kafka broker does; long-polling fetches wait on the broker's append signal. What a
//! connection may make the broker hold is bounded: its requests (their size, and the time they
//! take to arrive), the responses it has not read (`budget`), and how long it may stay idle.

mod api;
mod budget;
mod conn;
mod groups;
mod producers;
pub mod records;

use std::sync::Arc;
use std::time::Duration;

use eddy_broker::Broker;

/// Settings of the Kafka listener.
#[derive(Debug, Clone)]
pub struct KafkaConfig {
    /// Host clients are told to connect to (Metadata).
    pub advertised_host: String,
    /// Port clients are told to connect to.
    pub advertised_port: u16,
    /// This broker's node id.
    pub node_id: i32,
    /// Largest request accepted (Kafka's `socket.request.max.bytes`).
    pub max_request_bytes: usize,
    /// Create a topic when a client asks for an unknown one (Kafka's
    /// `auto.create.topics.enable`).
    pub auto_create_topics: bool,
    /// Partitions of an auto-created topic (Kafka's `num.partitions`).
    pub default_partitions: usize,
    /// Cluster id reported in Metadata.
    pub cluster_id: String,
    /// A connection that sends no request and takes no response byte for this long is
    /// closed (Kafka's `connections.max.idle.ms`); zero: never.
    pub idle_timeout: Duration,
    /// How long a request may take to arrive in full once its size is read.
    pub request_timeout: Duration,
    /// Most response bytes prepared for one connection and not yet written: past it the
    /// connection's requests wait unread (a fetch is built only when there is room).
    pub max_buffered_per_connection: usize,
    /// Most fetch-response bytes prepared and not yet written for all Kafka connections
    /// together (other answers count against their connection's bound only).
    pub max_buffered: usize,
    /// Most bytes of requests being received at once over all Kafka connections, counted
    /// for requests over 1 MiB: past it a large request waits before its body is read.
    pub max_receiving: usize,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            advertised_host: "127.0.0.1".into(),
            advertised_port: 9092,
            node_id: 0,
            max_request_bytes: 100 << 20,
            auto_create_topics: true,
            default_partitions: 1,
            cluster_id: "eddy".into(),
            idle_timeout: Duration::from_secs(600),
            request_timeout: Duration::from_secs(30),
            max_buffered_per_connection: 64 << 20,
            max_buffered: 512 << 20,
            max_receiving: 256 << 20,
        }
    }
}

/// The Kafka front end: the [`eddy_net::Handler`] a Kafka listener runs. Every listener
/// has its own (it tells clients to come back to its own address) and they share producers'
/// state and consumer groups.
pub struct Kafka {
    broker: Broker,
    config: Arc<KafkaConfig>,
    shared: Arc<api::Shared>,
}

impl Kafka {
    /// A front end over `broker`; starts the sweep that ends consumer-group members whose
    /// session timed out (it stops once every front end sharing the groups is dropped).
    pub fn new(broker: Broker, config: KafkaConfig) -> Arc<Kafka> {
        Self::in_cluster(broker, config, None)
    }

    /// A front end of a node of `cluster` (None: alone): replicated partitions are produced
    /// to through their Raft groups, served only by their leaders, and Metadata lists every
    /// node.
    pub fn in_cluster(
        broker: Broker,
        config: KafkaConfig,
        cluster: Option<Arc<eddy_cluster::Cluster>>,
    ) -> Arc<Kafka> {
        let node = cluster.as_ref().map_or(0, |c| c.node_id());
        let shared = Arc::new(api::Shared {
            cluster,
            producers: Arc::new(producers::Producers::new(node)),
            groups: Arc::new(groups::Groups::default()),
            buffered: budget::Global::new(config.max_buffered),
            receiving: Arc::new(tokio::sync::Semaphore::new(config.max_receiving)),
        });
        let groups = Arc::downgrade(&shared.groups);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(200));
            loop {
                tick.tick().await;
                let Some(g) = groups.upgrade() else { break };
                g.expire();
            }
        });
        Arc::new(Kafka {
            broker,
            config: Arc::new(config),
            shared,
        })
    }

    /// The front end of another listener, sharing producers and groups with this one, whose
    /// clients are told (Metadata, FindCoordinator) to connect to `host:port`.
    pub fn advertising(&self, host: String, port: u16) -> Arc<Kafka> {
        Arc::new(Kafka {
            broker: self.broker.clone(),
            config: Arc::new(KafkaConfig {
                advertised_host: host,
                advertised_port: port,
                ..(*self.config).clone()
            }),
            shared: self.shared.clone(),
        })
    }
}

impl eddy_net::Handler for Kafka {
    fn protocol(&self) -> &'static str {
        "kafka"
    }

    /// Serve one connection until it closes; requests are answered in order.
    async fn handle(self: Arc<Self>, conn: eddy_net::Conn) {
        conn::handle(
            conn,
            self.broker.clone(),
            self.config.clone(),
            self.shared.clone(),
        )
        .await
    }
}
