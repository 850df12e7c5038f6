//! What goes through the metadata group: topics, committed offsets, node registration, the
//! group coordinator, and applying changes on this node (topics created, groups started).

use super::*;

impl Cluster {
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

    /// Delete a replicated topic everywhere.
    pub async fn delete_topic(&self, name: &str) -> Result<(), ClusterError> {
        self.propose_meta(MetaCommand::DeleteTopic {
            name: name.to_owned(),
        })
        .await
    }

    /// Commit a metadata change through the metadata leader (this node or another), then wait
    /// until this node has applied it.
    pub(super) async fn propose_meta(&self, cmd: MetaCommand) -> Result<(), ClusterError> {
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
    pub(super) fn is_member(&self) -> bool {
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
    pub(super) async fn learn_leaders(self: Arc<Self>) {
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
    pub(super) async fn register(self: Arc<Self>) {
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

    pub(super) async fn effects(self: Arc<Self>, mut rx: mpsc::UnboundedReceiver<Effect>) {
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
    pub(super) async fn reconcile(&self) {
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

    pub(super) async fn drop_topic(&self, name: &str) {
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
}
