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

/// One replicated partition on this node.
pub struct Group {
    /// `topic/partition`.
    pub name: String,
    /// The partition's replicas (the first is the preferred leader).
    pub replicas: Vec<NodeId>,
    /// The partition (its log is the group's Raft log).
    pub partition: Arc<Partition>,
    raft: Raft<TypeConfig>,
    me: NodeId,
    election_ms: u64,
}

impl Group {
    /// The leader this node knows of (None when it is itself a leader cut off from the
    /// majority: clients must look elsewhere).
    pub fn leader(&self) -> Option<NodeId> {
        let m = self.raft.metrics();
        let m = m.borrow();
        match m.current_leader {
            Some(l) if l == self.me && !self.serving(&m) => None,
            other => other,
        }
    }

    /// Whether this node, leading, may serve: it has heard from a majority within twice the
    /// election timeout (a leader cut off from the others stops at once rather than when a
    /// new one is elected) and has committed an entry of its own term (so the high watermark
    /// it reports is never below its predecessor's).
    fn serving(&self, m: &openraft::RaftMetrics<NodeId, BasicNode>) -> bool {
        m.state == ServerState::Leader
            && m.current_leader == Some(self.me)
            && m.millis_since_quorum_ack
                .is_none_or(|ms| ms <= 2 * self.election_ms)
            && m.last_applied
                .is_some_and(|l| l.leader_id.term == m.current_term)
    }

    /// The current term (Kafka's leader epoch).
    pub fn term(&self) -> u64 {
        self.raft.metrics().borrow().current_term
    }

    /// Whether this node leads the group now.
    pub fn is_leader(&self) -> bool {
        let m = self.raft.metrics();
        let m = m.borrow();
        self.serving(&m)
    }

    /// Replicas that are caught up (within the last second's appends of the leader); on a
    /// follower, every replica (it does not know better).
    pub fn in_sync(&self) -> Vec<NodeId> {
        let m = self.raft.metrics();
        let m = m.borrow();
        match (&m.replication, m.last_log_index) {
            (Some(r), Some(last)) => {
                let mut v: Vec<NodeId> = r
                    .iter()
                    .filter(|(_, l)| l.is_some_and(|l| last.saturating_sub(l.index) < 1000))
                    .map(|(id, _)| *id)
                    .collect();
                if !v.contains(&self.me) {
                    v.push(self.me);
                }
                v.sort();
                v
            }
            _ => self.replicas.clone(),
        }
    }

    /// Propose a Kafka batch. The outer result says whether it was taken for proposal; the
    /// future resolves to its base offset once a majority has it durable, or an error (not
    /// committed within `timeout`, leadership lost).
    pub async fn propose(
        &self,
        batch: Bytes,
        timeout: Duration,
    ) -> Result<impl Future<Output = Result<u64, ProposeError>> + Send + 'static, ProposeError>
    {
        let quiet = {
            let m = self.raft.metrics();
            let m = m.borrow();
            if m.state != ServerState::Leader {
                return Err(ProposeError::NotLeader(self.name.clone()));
            }
            m.millis_since_quorum_ack
        };
        if let Some(ms) = quiet.filter(|ms| *ms > 2 * self.election_ms) {
            return Err(ProposeError::NoQuorum(self.name.clone(), ms));
        }
        let rx = self
            .raft
            .client_write_ff(Command::Batch(batch))
            .await
            .map_err(|e| ProposeError::Failed(e.to_string()))?;
        let name = self.name.clone();
        let mut metrics = self.raft.metrics();
        let (me, limit) = (self.me, 2 * self.election_ms);
        // a leader that loses its majority or its leadership while the batch waits answers
        // at once instead of at the timeout, so the client looks for the new leader
        let deposed = async move {
            loop {
                {
                    let m = metrics.borrow_and_update();
                    if m.state != ServerState::Leader || m.current_leader != Some(me) {
                        return "leadership lost";
                    }
                    if m.millis_since_quorum_ack.is_some_and(|ms| ms > limit) {
                        return "cut off from the majority";
                    }
                }
                let _ = tokio::time::timeout(Duration::from_millis(100), metrics.changed()).await;
            }
        };
        Ok(async move {
            let outcome = tokio::select! {
                r = tokio::time::timeout(timeout, rx) => r,
                why = deposed => {
                    tracing::debug!(group = %name, "a proposal is abandoned: {why}");
                    return Err(ProposeError::NotLeader(name));
                }
            };
            match outcome {
                Err(_) => Err(ProposeError::TimedOut(name, timeout.as_millis() as u64)),
                Ok(Err(_)) => Err(ProposeError::NotLeader(name)),
                Ok(Ok(Err(ClientWriteError::ForwardToLeader(_)))) => {
                    Err(ProposeError::NotLeader(name))
                }
                Ok(Ok(Err(e))) => Err(ProposeError::Failed(e.to_string())),
                Ok(Ok(Ok(r))) => match r.data {
                    Reply::Offset(o) => Ok(o),
                    other => Err(ProposeError::Failed(format!("unexpected reply {other:?}"))),
                },
            }
        })
    }

    fn status(&self) -> serde_json::Value {
        let m = self.raft.metrics().borrow().clone();
        group_status(&self.name, &m, &self.replicas)
    }
}

fn group_status(
    name: &str,
    m: &openraft::RaftMetrics<NodeId, BasicNode>,
    replicas: &[NodeId],
) -> serde_json::Value {
    let last = m.last_log_index.unwrap_or(0);
    let followers: Vec<serde_json::Value> = m
        .replication
        .as_ref()
        .map(|r| {
            r.iter()
                .filter(|(id, _)| **id != m.id)
                .map(|(id, l)| {
                    let matched = l.map(|l| l.index);
                    serde_json::json!({
                        "id": id,
                        "matched": matched,
                        "lag": last.saturating_sub(matched.unwrap_or(0)),
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    serde_json::json!({
        "group": name,
        "state": format!("{:?}", m.state),
        "leader": m.current_leader,
        "term": m.current_term,
        "commit_index": m.last_applied.map(|l| l.index),
        "last_log_index": m.last_log_index,
        "replicas": replicas,
        "followers": followers,
    })
}

struct PartitionWatermark(Arc<Partition>);

impl Watermark for PartitionWatermark {
    fn committed(&self, offset: u64) {
        self.0.set_committed(offset);
    }
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

    /// Whether a peer already has a metadata group with a leader: a node starting with no
    /// state then joins it (it is added with `eddy cluster add-node`, or, being a member
    /// already, is caught up), rather than forming one.
    async fn cluster_exists(&self) -> bool {
        let peers: Vec<Arc<Peer>> = self.peers.read().values().cloned().collect();
        for p in peers {
            if let Ok(Answer::Status(s)) = p
                .call(META_GROUP, &Rpc::Status, Duration::from_millis(500))
                .await
            {
                let led = serde_json::from_str::<serde_json::Value>(&s)
                    .ok()
                    .is_some_and(|v| {
                        v["groups"]
                            .as_array()
                            .and_then(|g| g.iter().find(|g| g["group"] == META_GROUP))
                            .is_some_and(|g| !g["leader"].is_null())
                    });
                if led {
                    return true;
                }
            }
        }
        false
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

    /// Create a replicated topic; answered once the metadata group has committed it and this
    /// node has created it.
    pub async fn create_topic(
        &self,
        name: &str,
        partitions: usize,
        replication_factor: Option<usize>,
        config: &TopicConfig,
    ) -> Result<(), ClusterError> {
        let mut ids = self.member_ids();
        ids.sort();
        let rf = replication_factor.unwrap_or_else(|| self.default_replication_factor());
        if rf == 0 || rf > ids.len() {
            return Err(MetaError::Invalid(format!(
                "replication factor {rf} is not between 1 and the {} nodes of the cluster",
                ids.len()
            ))
            .into());
        }
        // leaders spread: partition p's replicas start at a node that moves with p
        let start = name
            .bytes()
            .fold(0usize, |h, b| h.wrapping_mul(31).wrapping_add(b as usize));
        let replicas: Vec<Vec<NodeId>> = (0..partitions)
            .map(|p| (0..rf).map(|k| ids[(start + p + k) % ids.len()]).collect())
            .collect();
        let mut id = [0u8; 16];
        let seed = format!("{name}-{}-{}", eddy_log::now_ms(), self.cfg.node_id);
        for (i, b) in seed.bytes().enumerate() {
            id[i % 16] = id[i % 16].wrapping_mul(33).wrapping_add(b);
        }
        let cmd = MetaCommand::CreateTopic {
            name: name.to_owned(),
            id,
            replicas,
            configs: config
                .entries()
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect(),
        };
        self.propose_meta(cmd).await
    }

    /// Commit a consumer group's offsets through the metadata group (every node keeps them);
    /// answered once committed.
    pub async fn commit_offsets(
        &self,
        group: &str,
        offsets: Vec<crate::types::CommittedOffset>,
    ) -> Result<(), ClusterError> {
        self.propose_meta(MetaCommand::CommitOffsets {
            group: group.to_owned(),
            offsets,
        })
        .await
    }

    /// The node that coordinates consumer groups: the metadata group's leader (None during an
    /// election), with its addresses.
    pub fn coordinator(&self) -> Option<NodeInfo> {
        let m = self.meta.metrics();
        let leader = {
            let m = m.borrow();
            // a leader cut off from the majority does not coordinate, nor one that has not yet
            // applied everything its predecessors committed (the offsets it would answer with)
            if m.state == ServerState::Leader
                && (m
                    .millis_since_quorum_ack
                    .is_some_and(|ms| ms > 2 * self.raft_config.election_timeout_max)
                    || m.last_applied
                        .is_none_or(|l| l.leader_id.term != m.current_term))
            {
                return None;
            }
            m.current_leader?
        };
        self.meta_state.read().nodes.get(&leader).cloned()
    }

    /// Add a node to the metadata group (`eddy cluster add-node`): it must have started
    /// (with `--cluster-peers` naming this cluster's nodes and itself) and registered. It joins
    /// as a learner, catches up, then becomes a voter (openraft's joint consensus). New topics
    /// may place replicas on it; existing partitions keep theirs.
    pub async fn add_node(&self, id: NodeId) -> Result<(), ClusterError> {
        self.change_membership(id, true).await
    }

    /// Remove a node from the metadata group (`eddy cluster remove-node`); refused while it
    /// holds replicas of partitions (they are not moved yet).
    pub async fn remove_node(&self, id: NodeId) -> Result<(), ClusterError> {
        self.change_membership(id, false).await
    }

    async fn change_membership(&self, id: NodeId, add: bool) -> Result<(), ClusterError> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let leader = self.meta.metrics().borrow().current_leader;
            let r = if leader == Some(self.cfg.node_id) {
                self.change_membership_here(id, add)
                    .await
                    .map_err(|e| e.to_string())
            } else if let Some(peer) = leader.and_then(|l| self.peers.read().get(&l).cloned()) {
                match peer
                    .call(
                        META_GROUP,
                        &Rpc::Membership(id, add),
                        Duration::from_secs(30),
                    )
                    .await
                {
                    Ok(Answer::Changed(r)) => r,
                    Ok(_) => Err("unexpected answer".into()),
                    Err(e) => Err(e.to_string()),
                }
            } else {
                Err("no leader of the metadata group is known".into())
            };
            match r {
                Ok(()) => return Ok(()),
                Err(e) if e.starts_with(REFUSED) => {
                    return Err(MetaError::Invalid(e[REFUSED.len()..].to_owned()).into())
                }
                Err(e) if tokio::time::Instant::now() > deadline => {
                    return Err(ClusterError::NoLeader(META_GROUP.into(), e))
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }

    /// Make a membership change on this node, the metadata leader.
    async fn change_membership_here(&self, id: NodeId, add: bool) -> Result<(), String> {
        use openraft::ChangeMembers;
        let voters: BTreeSet<NodeId> = {
            let m = self.meta.metrics();
            let m = m.borrow();
            m.membership_config.membership().voter_ids().collect()
        };
        if add {
            if voters.contains(&id) {
                return Ok(());
            }
            let info = self.meta_state.read().nodes.get(&id).cloned().ok_or_else(|| {
                format!("{REFUSED}node {id} has not registered: start it first, with --cluster-peers naming this cluster's nodes and itself")
            })?;
            self.add_peer(&info);
            self.meta
                .add_learner(
                    id,
                    BasicNode {
                        addr: info.cluster.clone(),
                    },
                    true,
                )
                .await
                .map_err(|e| e.to_string())?;
            self.meta
                .change_membership(ChangeMembers::AddVoterIds([id].into()), false)
                .await
                .map_err(|e| e.to_string())?;
        } else {
            if !voters.contains(&id) {
                return Ok(());
            }
            if id == self.cfg.node_id && voters.len() > 1 {
                // the leader leaves last: step aside first is not offered by openraft 0.9
                return Err(format!("{REFUSED}node {id} leads the metadata group; remove it from another node's view after a new leader is elected, or stop it first"));
            }
            let holding: Vec<String> = self
                .meta_state
                .read()
                .topics
                .iter()
                .filter(|(_, t)| t.replicas.iter().any(|r| r.contains(&id)))
                .map(|(n, _)| n.clone())
                .collect();
            if !holding.is_empty() {
                return Err(format!(
                    "{REFUSED}node {id} holds replicas of topics {holding:?}: delete or move them first (moving replicas is not supported yet)"
                ));
            }
            self.meta
                .change_membership(ChangeMembers::RemoveVoters([id].into()), false)
                .await
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// Dial a registered node that `--cluster-peers` did not name (one added later).
    fn add_peer(&self, info: &NodeInfo) {
        if info.id == self.cfg.node_id {
            return;
        }
        let mut peers = self.peers.write();
        peers.entry(info.id).or_insert_with(|| {
            let tls = self.cfg.tls.as_ref().map(|t| t.connector.clone());
            Peer::new(info.id, info.cluster.clone(), tls)
        });
    }

    /// Delete a replicated topic everywhere.
    pub async fn delete_topic(&self, name: &str) -> Result<(), ClusterError> {
        self.propose_meta(MetaCommand::DeleteTopic {
            name: name.to_owned(),
        })
        .await
    }

    /// Commit a metadata change through the metadata leader (this node or another), then wait
    /// until this node has applied it.
    async fn propose_meta(&self, cmd: MetaCommand) -> Result<(), ClusterError> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        let mut why = String::from("no leader elected");
        while tokio::time::Instant::now() < deadline {
            let leader = match self.meta.client_write(Command::Meta(cmd.clone())).await {
                Ok(r) => return reply_of(r.data),
                Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => f.leader_id,
                Err(e) => {
                    why = e.to_string();
                    None
                }
            };
            // to the leader this node knows of, else to every peer (a node not yet added
            // knows no leader; a peer that does not lead answers so)
            let targets: Vec<Arc<Peer>> = match leader {
                Some(l) => self.peers.read().get(&l).cloned().into_iter().collect(),
                None => self.peers.read().values().cloned().collect(),
            };
            for peer in targets {
                match peer
                    .call(
                        META_GROUP,
                        &Rpc::Forward(cmd.clone()),
                        Duration::from_secs(10),
                    )
                    .await
                {
                    Ok(Answer::Forwarded(Ok((index, reply)))) => {
                        if self.is_member() {
                            let _ = self
                                .meta
                                .wait(Some(Duration::from_secs(10)))
                                .applied_index_at_least(Some(index), "forwarded change")
                                .await;
                        }
                        return reply_of(reply);
                    }
                    Ok(Answer::Forwarded(Err(e))) => why = e,
                    Ok(_) => why = "unexpected answer".into(),
                    Err(e) => why = e.to_string(),
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(ClusterError::NoLeader(META_GROUP.into(), why))
    }

    /// Whether this node is in the metadata group's membership (a voter or learner).
    fn is_member(&self) -> bool {
        let m = self.meta.metrics();
        let member = m
            .borrow()
            .membership_config
            .membership()
            .nodes()
            .any(|(id, _)| *id == self.cfg.node_id);
        member
    }

    /// Learn who leads the groups this node has no replica of (with RF below the node count a
    /// node holds only some partitions, yet answers Metadata for all): each peer says which
    /// groups it leads, and the claim with the highest term wins.
    async fn learn_leaders(self: Arc<Self>) {
        loop {
            tokio::time::sleep(LEADERS_EVERY).await;
            let peers: Vec<Arc<Peer>> = self.peers.read().values().cloned().collect();
            let mut seen: HashMap<String, (NodeId, u64)> = HashMap::new();
            for p in peers {
                let Ok(Answer::Status(text)) = p
                    .call(META_GROUP, &Rpc::Status, Duration::from_millis(300))
                    .await
                else {
                    continue;
                };
                let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else {
                    continue;
                };
                for g in v["groups"].as_array().into_iter().flatten() {
                    let (Some(name), Some(term)) = (g["group"].as_str(), g["term"].as_u64()) else {
                        continue;
                    };
                    if g["state"] == "Leader" && g["leader"].as_u64() == Some(p.id) {
                        let e = seen.entry(name.to_owned()).or_insert((p.id, term));
                        if term > e.1 {
                            *e = (p.id, term);
                        }
                    }
                }
            }
            *self.remote_leaders.write() = seen;
        }
    }

    /// The leader and term of a partition's group this node has no replica of, as its leader
    /// claimed them within the last second.
    pub fn remote_leader(&self, topic: &str, partition: i32) -> Option<(NodeId, u64)> {
        self.remote_leaders
            .read()
            .get(&partition_group(topic, partition))
            .copied()
    }

    /// Tell the others this node's addresses, until the metadata holds them.
    async fn register(self: Arc<Self>) {
        loop {
            let known = self.meta_state.read().nodes.get(&self.cfg.node_id).cloned();
            if known.as_ref() != Some(&self.cfg.info) {
                if let Err(e) = self
                    .propose_meta(MetaCommand::RegisterNode(self.cfg.info.clone()))
                    .await
                {
                    tracing::debug!("registering this node: {e}");
                }
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    async fn effects(self: Arc<Self>, mut rx: mpsc::UnboundedReceiver<Effect>) {
        while let Some(e) = rx.recv().await {
            match &e.command {
                Some(MetaCommand::RegisterNode(info)) => self.add_peer(info),
                Some(MetaCommand::CommitOffsets { .. }) => {}
                Some(MetaCommand::DeleteTopic { name }) => self.drop_topic(name).await,
                _ => {
                    *self.meta_state.write() = e.state.clone();
                    self.reconcile().await;
                }
            }
            let _ = e.done.send(());
        }
    }

    /// Create the topics and start the groups the metadata places here.
    async fn reconcile(&self) {
        let state = self.meta_state.read().clone();
        for (name, t) in &state.topics {
            if self.broker.topic(name).is_none() {
                let mut config = TopicConfig::default();
                for (k, v) in &t.configs {
                    let _ = config.set(k, Some(v));
                }
                let r = tokio::task::block_in_place(|| {
                    self.broker.create_topic(name, t.replicas.len(), config)
                });
                if let Err(e) = r {
                    tracing::error!(topic = %name, "creating a replicated topic here failed: {e}");
                    continue;
                }
            }
            for (p, replicas) in t.replicas.iter().enumerate() {
                let group = partition_group(name, p as i32);
                if !replicas.contains(&self.cfg.node_id) || self.groups.read().contains_key(&group)
                {
                    continue;
                }
                if let Err(e) = self.start_group(name, p as i32, replicas.clone()).await {
                    tracing::error!(%group, "starting the partition's group failed: {e}");
                }
            }
        }
    }

    async fn drop_topic(&self, name: &str) {
        let prefix = format!("{name}/");
        let gone: Vec<Arc<Group>> = {
            let mut g = self.groups.write();
            let keys: Vec<String> = g
                .keys()
                .filter(|k| k.starts_with(&prefix))
                .cloned()
                .collect();
            keys.iter().filter_map(|k| g.remove(k)).collect()
        };
        for g in gone {
            let _ = g.raft.shutdown().await;
            let _ = std::fs::remove_dir_all(self.group_dir(&g.name));
        }
        if self.broker.topic(name).is_some() {
            if let Err(e) = tokio::task::block_in_place(|| self.broker.delete_topic(name)) {
                tracing::warn!(topic = %name, "deleting a replicated topic here failed: {e}");
            }
        }
    }

    fn group_dir(&self, group: &str) -> PathBuf {
        self.cfg.dir.join("groups").join(group.replace('/', "@"))
    }

    async fn start_group(
        &self,
        topic: &str,
        p: i32,
        replicas: Vec<NodeId>,
    ) -> Result<(), ClusterError> {
        let fail = |e: &dyn std::fmt::Display| ClusterError::Failed(e.to_string());
        let name = partition_group(topic, p);
        let partition = self
            .broker
            .topic(topic)
            .and_then(|t| t.partition(p))
            .ok_or_else(|| ClusterError::Failed(format!("no partition {name} here")))?;
        partition.replicate();
        let dir = self.group_dir(&name);
        let rlog = RaftLog::open(partition.log().clone(), &dir).map_err(|e| fail(&e))?;
        let sm = PartitionSm::open(
            partition.log().clone(),
            rlog.index.clone(),
            dir.join("raft-applied"),
            Arc::new(PartitionWatermark(partition.clone())),
        );
        let network = Network {
            group: name.clone(),
            peers: self.peers.clone(),
        };
        let raft = Raft::new(
            self.cfg.node_id,
            self.raft_config.clone(),
            network,
            rlog,
            sm,
        )
        .await
        .map_err(|e| fail(&e))?;
        if !raft.is_initialized().await.map_err(|e| fail(&e))? {
            // every replica initializes with the same membership: the same first entry
            if let Err(e) = raft.initialize(members(replicas.iter().copied())).await {
                tracing::debug!(group = %name, "already initialized: {e}");
            }
            // the preferred leader stands first, so leaders spread as placed
            if replicas.first() == Some(&self.cfg.node_id) {
                let _ = raft.trigger().elect().await;
            }
        }
        let group = Arc::new(Group {
            name: name.clone(),
            replicas,
            partition,
            raft,
            me: self.cfg.node_id,
            election_ms: self.raft_config.election_timeout_max,
        });
        self.groups.write().insert(name, group);
        Ok(())
    }

    /// Accept peers' connections.
    async fn serve(self: Arc<Self>, listener: TcpListener, quiet: Duration) {
        if !quiet.is_zero() {
            tracing::info!(
                ms = quiet.as_millis() as u64,
                "no cluster state here (new or wiped): waiting before taking part in elections"
            );
            tokio::time::sleep(quiet).await;
        }
        let slots = Arc::new(tokio::sync::Semaphore::new(
            crate::transport::MAX_PEER_CONNECTIONS,
        ));
        let mut warned: Option<tokio::time::Instant> = None;
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!("cluster listener: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                // over the bound: closed at once (a warning at most every 10 s)
                if warned.is_none_or(|w| w.elapsed() > Duration::from_secs(10)) {
                    tracing::warn!(
                        %peer,
                        "cluster listener: {} connections open, refusing more",
                        crate::transport::MAX_PEER_CONNECTIONS
                    );
                    warned = Some(tokio::time::Instant::now());
                }
                continue;
            };
            let _ = stream.set_nodelay(true);
            tracing::debug!(%peer, "peer connected");
            let this = self.clone();
            tokio::spawn(async move {
                this.serve_peer(stream).await;
                drop(slot);
            });
        }
    }

    async fn serve_peer(self: Arc<Self>, stream: tokio::net::TcpStream) {
        use tokio::io::AsyncWriteExt;
        let (mut rd, mut wr): crate::transport::Halves = match &self.cfg.tls {
            None => {
                let (rd, wr) = stream.into_split();
                (Box::new(rd), Box::new(wr))
            }
            Some(tls) => {
                let accepted = tokio::time::timeout(
                    crate::transport::TLS_HANDSHAKE,
                    tls.acceptor.accept(stream),
                )
                .await;
                match accepted {
                    Ok(Ok(s)) => {
                        let (rd, wr) = tokio::io::split(s);
                        (Box::new(rd), Box::new(wr))
                    }
                    Ok(Err(e)) => {
                        tracing::warn!("a peer's TLS handshake failed: {e}");
                        return;
                    }
                    Err(_) => {
                        tracing::warn!("a peer's TLS handshake timed out");
                        return;
                    }
                }
            }
        };
        let (tx, mut rx) = mpsc::channel::<Vec<u8>>(1024);
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut buf = first;
                while buf.len() < crate::transport::COALESCE {
                    match rx.try_recv() {
                        Ok(more) => buf.extend_from_slice(&more),
                        Err(_) => break,
                    }
                }
                if wr.write_all(&buf).await.is_err() {
                    break;
                }
            }
        });
        // at most this many requests of one peer are handled at once
        let slots = Arc::new(tokio::sync::Semaphore::new(1024));
        loop {
            let (id, group, rpc) = match read_frame::<Rpc>(&mut rd).await {
                Ok(f) => f,
                Err(e) => {
                    tracing::debug!("peer connection closed: {e}");
                    return;
                }
            };
            let Ok(permit) = slots.clone().acquire_owned().await else {
                return;
            };
            let this = self.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let answer = this.handle(&group, rpc).await;
                let _ = tx.send(encode_frame(id, &group, &answer)).await;
                drop(permit);
            });
        }
    }

    fn raft_of(&self, group: &str) -> Option<Raft<TypeConfig>> {
        if group == META_GROUP {
            Some(self.meta.clone())
        } else {
            self.groups.read().get(group).map(|g| g.raft.clone())
        }
    }

    async fn handle(&self, group: &str, rpc: Rpc) -> Answer {
        if let Rpc::Status = rpc {
            return Answer::Status(self.local_status().to_string());
        }
        let Some(raft) = self.raft_of(group) else {
            return Answer::Refused(format!(
                "node {} has no group {group} (yet)",
                self.cfg.node_id
            ));
        };
        match rpc {
            Rpc::Append(r) => Answer::Append(raft.append_entries(r).await),
            Rpc::Vote(r) => Answer::Vote(raft.vote(r).await),
            Rpc::Snapshot(r) => Answer::Snapshot(raft.install_snapshot(r).await),
            Rpc::Forward(cmd) => {
                Answer::Forwarded(match raft.client_write(Command::Meta(cmd)).await {
                    Ok(r) => Ok((r.log_id.index, r.data)),
                    Err(e) => Err(e.to_string()),
                })
            }
            Rpc::Status => unreachable!("answered above"),
            Rpc::Membership(id, add) => Answer::Changed(
                self.change_membership_here(id, add)
                    .await
                    .map_err(|e| e.to_string()),
            ),
        }
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
