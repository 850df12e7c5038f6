//! Membership: joining a running cluster, `add-node` / `remove-node` on the metadata group,
//! and dialing nodes added later.

use super::*;

impl Cluster {
    /// Whether a peer already has a metadata group with a leader: a node starting with no
    /// state then joins it (it is added with `eddy cluster add-node`, or, being a member
    /// already, is caught up), rather than forming one.
    pub(super) async fn cluster_exists(&self) -> bool {
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

    pub(super) async fn change_membership(
        &self,
        id: NodeId,
        add: bool,
    ) -> Result<(), ClusterError> {
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
    pub(super) async fn change_membership_here(&self, id: NodeId, add: bool) -> Result<(), String> {
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
    pub(super) fn add_peer(&self, info: &NodeInfo) {
        if info.id == self.cfg.node_id {
            return;
        }
        let mut peers = self.peers.write();
        peers.entry(info.id).or_insert_with(|| {
            let tls = self.cfg.tls.as_ref().map(|t| t.connector.clone());
            Peer::new(info.id, info.cluster.clone(), tls)
        });
    }
}
