//! [`Cluster`]: this node's part of the cluster — the metadata group, the partition groups
//! it replicates, the inter-node listener, and what front ends ask of it (who leads a
//! partition, propose a batch, create a topic, the status of every group).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use eddy_broker::{Broker, Partition, TopicConfig};
use eddy_log::{Log, LogConfig, Syncer};
use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, Raft, ServerState, SnapshotPolicy};
use parking_lot::RwLock;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::sm::{Effect, MetaSm, PartitionSm, Watermark};
use crate::store::RaftLog;
use crate::transport::{encode_frame, read_frame, Answer, Network, Peer, Rpc};
use crate::types::{
    partition_group, Command, MetaCommand, MetaError, MetaState, NodeId, NodeInfo, Reply,
    TypeConfig, META_GROUP,
};

mod group;
mod membership;
mod meta;
mod serve;

use group::group_status;
pub use group::Group;

/// How a node takes part in a cluster (`--node-id`, `--cluster-listen`, `--cluster-peers`).
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    /// This node's id.
    pub node_id: NodeId,
    /// Address the inter-node listener binds.
    pub listen: String,
    /// Every member (this node too) and the address this node dials it at.
    pub peers: BTreeMap<NodeId, String>,
    /// Where the cluster's own state lives (`<data-dir>/cluster`).
    pub dir: PathBuf,
    /// Replicas of a new topic's partitions when the request does not say (default
    /// min(3, members)).
    pub default_replication_factor: Option<usize>,
    /// Addresses this node serves clients on, told to the others.
    pub info: NodeInfo,
    /// Mutual TLS between nodes (from `--tls-cert`, `--tls-key`, `--tls-client-ca`).
    pub tls: Option<PeerTls>,
}

/// TLS between nodes: each presents the certificate and verifies the other's against the CA.
#[derive(Clone)]
pub struct PeerTls {
    /// The cluster listener's side (client certificates required).
    pub acceptor: eddy_net::TlsAcceptor,
    /// The dialing side.
    pub connector: eddy_net::TlsConnector,
}

impl std::fmt::Debug for PeerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PeerTls")
    }
}

/// Why a cluster operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// No leader is known or reachable in time (an election, or no majority).
    #[error("no leader for {0} is reachable: {1}")]
    NoLeader(String, String),
    /// The change was refused.
    #[error(transparent)]
    Meta(#[from] MetaError),
    /// Storage or startup failed.
    #[error("{0}")]
    Failed(String),
}

/// Why a produce to a replicated partition was not committed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProposeError {
    /// This node does not lead the partition (Kafka NOT_LEADER_OR_FOLLOWER).
    #[error("this node is not the leader of {0}")]
    NotLeader(String),
    /// The leader has not heard from a majority lately (Kafka NOT_ENOUGH_REPLICAS).
    #[error("{0}: the leader has not heard from a majority of replicas for {1} ms")]
    NoQuorum(String, u64),
    /// Not committed in time (Kafka REQUEST_TIMED_OUT).
    #[error("{0}: not committed by a majority within {1} ms")]
    TimedOut(String, u64),
    /// Storage failed.
    #[error("{0}")]
    Failed(String),
}

/// Marks a refusal (as opposed to a failure worth retrying) in a membership answer.
const REFUSED: &str = "refused: ";

/// This node's part of the cluster.
pub struct Cluster {
    cfg: ClusterConfig,
    broker: Broker,
    syncer: Arc<Syncer>,
    peers: crate::transport::Peers,
    raft_config: Arc<openraft::Config>,
    meta: Raft<TypeConfig>,
    meta_state: Arc<RwLock<MetaState>>,
    groups: RwLock<HashMap<String, Arc<Group>>>,
    /// Leaders of groups this node has no replica of, as their leaders claim them (group →
    /// (leader, term)), refreshed from the peers' status every [`LEADERS_EVERY`].
    remote_leaders: RwLock<HashMap<String, (NodeId, u64)>>,
}

/// How often a node asks its peers which groups they lead.
const LEADERS_EVERY: Duration = Duration::from_millis(500);

fn members(ids: impl IntoIterator<Item = NodeId>) -> BTreeSet<NodeId> {
    ids.into_iter().collect()
}

impl Cluster {
    /// Start this node's part: open the metadata group (forming the cluster with
    /// `--cluster-peers` on a first start), listen for peers, and start the partition groups
    /// the metadata places here.
    pub async fn start(
        cfg: ClusterConfig,
        broker: Broker,
        syncer: Arc<Syncer>,
    ) -> Result<Arc<Cluster>, ClusterError> {
        let fail = |e: &dyn std::fmt::Display| ClusterError::Failed(e.to_string());
        if !cfg.peers.contains_key(&cfg.node_id) {
            return Err(ClusterError::Failed(format!(
                "--cluster-peers must list this node ({}) too",
                cfg.node_id
            )));
        }
        let peers: HashMap<NodeId, Arc<Peer>> = cfg
            .peers
            .iter()
            .filter(|(id, _)| **id != cfg.node_id)
            .map(|(id, addr)| {
                let tls = cfg.tls.as_ref().map(|t| t.connector.clone());
                (*id, Peer::new(*id, addr.clone(), tls))
            })
            .collect();
        let peers = Arc::new(RwLock::new(peers));
        let raft_config = Arc::new(
            openraft::Config {
                cluster_name: "eddy".into(),
                // a dead leader is replaced within about a second; shorter timeouts made
                // elections happen under load on this 2-core machine
                heartbeat_interval: 75,
                election_timeout_min: 400,
                election_timeout_max: 800,
                max_payload_entries: 64,
                snapshot_policy: SnapshotPolicy::Never,
                ..Default::default()
            }
            .validate()
            .map_err(|e| fail(&e))?,
        );
        // a node without cluster state is new, or was wiped and rejoins: it lost the record of
        // its votes, so it keeps out of elections until any election it may have voted in
        // before has ended (a vote is only ever given once per term)
        let fresh = !cfg.dir.join("meta").exists();
        let meta_dir = cfg.dir.join("meta");
        std::fs::create_dir_all(&meta_dir).map_err(|e| fail(&e))?;
        let log = Log::open(&meta_dir.join("log"), LogConfig::default(), syncer.clone())
            .map_err(|e| fail(&e))?;
        let rlog = RaftLog::open(log, &meta_dir).map_err(|e| fail(&e))?;
        let last = rlog.index.lock().last_index();
        let meta_state = Arc::new(RwLock::new(MetaState::default()));
        let (effects_tx, effects_rx) = mpsc::unbounded_channel();
        let store = broker.clone();
        let offsets: crate::sm::OffsetSink = Box::new(move |group, offsets| {
            let commits = offsets
                .into_iter()
                .map(|o| {
                    let c = eddy_broker::Committed {
                        offset: o.offset,
                        leader_epoch: o.leader_epoch,
                        metadata: o.metadata,
                    };
                    (o.topic, o.partition, c)
                })
                .collect();
            // the metadata log is the durable record: no wait for the store's own fsync
            if let Err(e) = store.offsets().commit(group, commits) {
                tracing::error!(group, "keeping committed offsets failed: {e}");
            }
        });
        let sm = MetaSm::open(
            meta_dir.join("state.json"),
            meta_state.clone(),
            effects_tx,
            offsets,
            last,
        );
        let network = Network {
            group: META_GROUP.into(),
            peers: peers.clone(),
        };
        let meta = Raft::new(cfg.node_id, raft_config.clone(), network, rlog, sm)
            .await
            .map_err(|e| fail(&e))?;
        let cluster = Arc::new(Cluster {
            cfg,
            broker,
            syncer,
            peers,
            raft_config,
            meta,
            meta_state,
            groups: RwLock::new(HashMap::new()),
            remote_leaders: RwLock::new(HashMap::new()),
        });
        let listener = TcpListener::bind(&cluster.cfg.listen)
            .await
            .map_err(|e| ClusterError::Failed(format!("{}: {e}", cluster.cfg.listen)))?;
        let quiet = if fresh {
            Duration::from_millis(3 * cluster.raft_config.election_timeout_max)
        } else {
            Duration::ZERO
        };
        tokio::spawn(cluster.clone().serve(listener, quiet));
        // the groups already placed here, then every change as it is applied
        cluster.reconcile().await;
        tokio::spawn(cluster.clone().effects(effects_rx));
        let known: Vec<NodeInfo> = cluster.meta_state.read().nodes.values().cloned().collect();
        for info in &known {
            cluster.add_peer(info);
        }
        if !cluster.meta.is_initialized().await.map_err(|e| fail(&e))?
            && !cluster.cluster_exists().await
        {
            let all = members(cluster.cfg.peers.keys().copied());
            if let Err(e) = cluster.meta.initialize(all).await {
                tracing::debug!("metadata group already initialized: {e}");
            }
        } else if !cluster.meta.is_initialized().await.map_err(|e| fail(&e))? {
            tracing::info!(
                "a cluster already runs: this node waits to be added (eddy cluster add-node)"
            );
        }
        tokio::spawn(cluster.clone().register());
        tokio::spawn(cluster.clone().learn_leaders());
        Ok(cluster)
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.cfg.node_id
    }

    /// The metadata as applied on this node.
    pub fn meta(&self) -> MetaState {
        self.meta_state.read().clone()
    }

    /// Members of the cluster (from `--cluster-peers` and the metadata).
    pub fn member_ids(&self) -> Vec<NodeId> {
        let m = self.meta.metrics();
        let m = m.borrow();
        let ids: Vec<NodeId> = m.membership_config.membership().voter_ids().collect();
        if ids.is_empty() {
            self.cfg.peers.keys().copied().collect()
        } else {
            ids
        }
    }

    /// The group of a replicated partition on this node.
    pub fn group(&self, topic: &str, partition: i32) -> Option<Arc<Group>> {
        self.groups
            .read()
            .get(&partition_group(topic, partition))
            .cloned()
    }

    /// Whether a topic is replicated (created through the cluster).
    pub fn is_replicated(&self, topic: &str) -> bool {
        self.meta_state.read().topics.contains_key(topic)
    }

    /// The default replication factor: `--default-replication-factor`, else min(3, members).
    pub fn default_replication_factor(&self) -> usize {
        self.cfg
            .default_replication_factor
            .unwrap_or_else(|| self.member_ids().len().min(3))
    }

    /// This node's groups, as `/api/nodes` shows them.
    fn local_status(&self) -> serde_json::Value {
        let meta = self.meta.metrics().borrow().clone();
        let mut groups = vec![group_status(META_GROUP, &meta, &self.member_ids())];
        let mut local: Vec<Arc<Group>> = self.groups.read().values().cloned().collect();
        local.sort_by(|a, b| a.name.cmp(&b.name));
        groups.extend(local.iter().map(|g| g.status()));
        serde_json::json!({ "node_id": self.cfg.node_id, "groups": groups })
    }

    /// Every node (up or not, its addresses) and this node's groups: `GET /api/nodes` and
    /// `eddy cluster status`.
    pub async fn status(&self) -> serde_json::Value {
        let state = self.meta();
        let mut nodes = Vec::new();
        for id in self
            .cfg
            .peers
            .keys()
            .copied()
            .chain(state.nodes.keys().copied())
            .collect::<BTreeSet<_>>()
        {
            let peer = self.peers.read().get(&id).cloned();
            let up = if id == self.cfg.node_id {
                true
            } else if let Some(p) = peer {
                matches!(
                    p.call(META_GROUP, &Rpc::Status, Duration::from_millis(500))
                        .await,
                    Ok(Answer::Status(_))
                )
            } else {
                false
            };
            let info = state.nodes.get(&id);
            nodes.push(serde_json::json!({
                "id": id,
                "up": up,
                "cluster": info.map(|i| i.cluster.clone()).or_else(|| self.cfg.peers.get(&id).cloned()),
                "kafka": info.and_then(|i| i.kafka.clone()),
                "amqp": info.and_then(|i| i.amqp.clone()),
                "http": info.and_then(|i| i.http.clone()),
            }));
        }
        let mut s = self.local_status();
        s["nodes"] = serde_json::Value::Array(nodes);
        s
    }

    /// The syncer the cluster's logs share.
    pub fn syncer(&self) -> &Arc<Syncer> {
        &self.syncer
    }

    /// Stop every group (clean shutdown).
    pub async fn shutdown(&self) {
        let groups: Vec<Arc<Group>> = self.groups.read().values().cloned().collect();
        for g in groups {
            let _ = g.raft.shutdown().await;
        }
        let _ = self.meta.shutdown().await;
    }
}

fn reply_of(r: Reply) -> Result<(), ClusterError> {
    match r {
        Reply::Meta(Ok(())) | Reply::None | Reply::Offset(_) => Ok(()),
        Reply::Meta(Err(e)) => Err(e.into()),
    }
}
