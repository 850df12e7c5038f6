//! [`Group`]: one replicated partition as front ends see it (leadership, proposals), and
//! starting a partition's group on this node.

use super::*;

/// One replicated partition on this node.
pub struct Group {
    /// `topic/partition`.
    pub name: String,
    /// The partition's replicas (the first is the preferred leader).
    pub replicas: Vec<NodeId>,
    /// The partition (its log is the group's Raft log).
    pub partition: Arc<Partition>,
    pub(super) raft: Raft<TypeConfig>,
    pub(super) me: NodeId,
    pub(super) election_ms: u64,
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

    /// Replicas that are caught up (within 1,000 entries of the leader's log); on a follower,
    /// every replica (it does not know better).
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

    pub(super) fn status(&self) -> serde_json::Value {
        let m = self.raft.metrics().borrow().clone();
        group_status(&self.name, &m, &self.replicas)
    }
}

pub(super) fn group_status(
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

impl Cluster {
    pub(super) fn group_dir(&self, group: &str) -> PathBuf {
        self.cfg.dir.join("groups").join(group.replace('/', "@"))
    }

    pub(super) async fn start_group(
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
}
