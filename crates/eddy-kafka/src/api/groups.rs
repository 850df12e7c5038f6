//! Consumer groups: FindCoordinator, JoinGroup, SyncGroup, Heartbeat, LeaveGroup,
//! OffsetCommit, OffsetFetch, ListGroups, DescribeGroups, DeleteGroups (the coordinator's
//! state machine is `crate::groups`).

use std::sync::Arc;

use eddy_broker::Log;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::*;

use crate::groups::JoinRequest;

use super::{code, str_bytes, topic_name, Handler, MAX_COMMIT_METADATA};

impl Handler {
    pub(super) fn find_coordinator(
        &self,
        r: FindCoordinatorRequest,
        version: i16,
    ) -> FindCoordinatorResponse {
        let mut resp = FindCoordinatorResponse::default();
        // alone, this broker coordinates every group (and would every transaction); in a
        // cluster, the metadata leader does
        let (node_id, host, port, error) = match self.cluster.as_ref().map(|c| c.coordinator()) {
            None => (
                self.cfg.node_id,
                self.cfg.advertised_host.clone(),
                self.cfg.advertised_port as i32,
                0,
            ),
            Some(Some(n)) => match n.kafka.as_deref().and_then(|a| a.rsplit_once(':')) {
                Some((h, p)) => (n.id as i32, h.to_owned(), p.parse().unwrap_or(-1), 0),
                None => (
                    -1,
                    String::new(),
                    -1,
                    ResponseError::CoordinatorNotAvailable.code(),
                ),
            },
            Some(None) => (
                -1,
                String::new(),
                -1,
                ResponseError::CoordinatorNotAvailable.code(),
            ),
        };
        if version >= 4 {
            resp.coordinators = r
                .coordinator_keys
                .into_iter()
                .map(|key| {
                    let mut c = find_coordinator_response::Coordinator::default();
                    c.key = key;
                    c.node_id = BrokerId(node_id);
                    c.host = str_bytes(&host);
                    c.port = port;
                    c.error_code = error;
                    c
                })
                .collect();
        } else {
            resp.node_id = BrokerId(node_id);
            resp.host = str_bytes(&host);
            resp.port = port;
            resp.error_code = error;
        }
        resp
    }

    pub(super) async fn join_group(
        &self,
        r: JoinGroupRequest,
        version: i16,
        client_id: String,
    ) -> JoinGroupResponse {
        if !self.allowed(eddy_broker::Access::Read, "group", r.group_id.0.as_str()) {
            let mut resp = JoinGroupResponse::default();
            resp.error_code = ResponseError::GroupAuthorizationFailed.code();
            resp.generation_id = -1;
            return resp;
        }
        let j = self
            .groups
            .join(JoinRequest {
                group: r.group_id.0.to_string(),
                member_id: r.member_id.to_string(),
                client_id,
                client_host: self.peer.clone(),
                session_timeout_ms: r.session_timeout_ms,
                rebalance_timeout_ms: if version >= 1 {
                    r.rebalance_timeout_ms
                } else {
                    r.session_timeout_ms
                },
                protocol_type: r.protocol_type.to_string(),
                protocols: r
                    .protocols
                    .into_iter()
                    .map(|p| (p.name.to_string(), p.metadata))
                    .collect(),
                require_member_id: version >= 4,
            })
            .await;
        let mut resp = JoinGroupResponse::default();
        resp.error_code = j.error;
        resp.generation_id = j.generation;
        resp.member_id = str_bytes(&j.member_id);
        resp.leader = str_bytes(&j.leader);
        if version >= 7 {
            resp.protocol_type = (j.error == 0).then(|| str_bytes(&j.protocol_type));
            resp.protocol_name = j.protocol.as_deref().map(str_bytes);
        } else {
            resp.protocol_name = Some(str_bytes(j.protocol.as_deref().unwrap_or("")));
        }
        resp.members = j
            .members
            .into_iter()
            .map(|(id, metadata)| {
                let mut m = join_group_response::JoinGroupResponseMember::default();
                m.member_id = str_bytes(&id);
                m.metadata = metadata;
                m
            })
            .collect();
        resp
    }

    pub(super) async fn sync_group(&self, r: SyncGroupRequest) -> SyncGroupResponse {
        if !self.allowed(eddy_broker::Access::Read, "group", r.group_id.0.as_str()) {
            let mut resp = SyncGroupResponse::default();
            resp.error_code = ResponseError::GroupAuthorizationFailed.code();
            return resp;
        }
        let (error, assignment) = self
            .groups
            .sync(
                r.group_id.0.as_str(),
                r.generation_id,
                r.member_id.as_str(),
                r.assignments
                    .into_iter()
                    .map(|a| (a.member_id.to_string(), a.assignment))
                    .collect(),
            )
            .await;
        let mut resp = SyncGroupResponse::default();
        resp.error_code = error;
        resp.assignment = assignment;
        resp
    }

    pub(super) fn heartbeat(&self, r: HeartbeatRequest) -> HeartbeatResponse {
        let mut resp = HeartbeatResponse::default();
        resp.error_code = if self.allowed(eddy_broker::Access::Read, "group", r.group_id.0.as_str())
        {
            self.groups
                .heartbeat(r.group_id.0.as_str(), r.generation_id, r.member_id.as_str())
        } else {
            ResponseError::GroupAuthorizationFailed.code()
        };
        resp
    }

    pub(super) fn leave_group(&self, r: LeaveGroupRequest, version: i16) -> LeaveGroupResponse {
        let ids: Vec<String> = if version >= 3 {
            r.members.iter().map(|m| m.member_id.to_string()).collect()
        } else {
            vec![r.member_id.to_string()]
        };
        let errors = if self.allowed(eddy_broker::Access::Read, "group", r.group_id.0.as_str()) {
            self.groups.leave(r.group_id.0.as_str(), &ids)
        } else {
            vec![ResponseError::GroupAuthorizationFailed.code(); ids.len().max(1)]
        };
        let mut resp = LeaveGroupResponse::default();
        if version >= 3 {
            resp.members = ids
                .iter()
                .zip(&errors)
                .map(|(id, e)| {
                    let mut m = leave_group_response::MemberResponse::default();
                    m.member_id = str_bytes(id);
                    m.error_code = *e;
                    m
                })
                .collect();
        } else {
            resp.error_code = errors.first().copied().unwrap_or(0);
        }
        resp
    }

    pub(super) fn offset_commit(
        &self,
        r: OffsetCommitRequest,
    ) -> (OffsetCommitResponse, Vec<(Arc<Log>, u64)>) {
        let group = r.group_id.0.to_string();
        let check = if self.allowed(eddy_broker::Access::Read, "group", &group) {
            self.groups.check_commit(
                &group,
                r.generation_id_or_member_epoch,
                r.member_id.as_str(),
            )
        } else {
            ResponseError::GroupAuthorizationFailed.code()
        };
        let mut resp = OffsetCommitResponse::default();
        let mut commits = Vec::new();
        for t in r.topics {
            let topic = self.broker.topic(t.name.0.as_str());
            let readable = self.allowed(eddy_broker::Access::Read, "topic", t.name.0.as_str());
            let mut tr = offset_commit_response::OffsetCommitResponseTopic::default();
            tr.name = t.name.clone();
            for p in t.partitions {
                let mut pr = offset_commit_response::OffsetCommitResponsePartition::default();
                pr.partition_index = p.partition_index;
                let metadata_len = p.committed_metadata.as_ref().map_or(0, |m| m.len());
                pr.error_code = if check != 0 {
                    check
                } else if !readable {
                    ResponseError::TopicAuthorizationFailed.code()
                } else if metadata_len > MAX_COMMIT_METADATA {
                    ResponseError::OffsetMetadataTooLarge.code()
                } else if topic
                    .as_ref()
                    .and_then(|x| x.partition(p.partition_index))
                    .is_none()
                {
                    ResponseError::UnknownTopicOrPartition.code()
                } else {
                    commits.push((
                        t.name.0.to_string(),
                        p.partition_index,
                        eddy_broker::Committed {
                            offset: p.committed_offset,
                            leader_epoch: p.committed_leader_epoch,
                            metadata: p
                                .committed_metadata
                                .map(|m| m.to_string())
                                .unwrap_or_default(),
                        },
                    ));
                    0
                };
                tr.partitions.push(pr);
            }
            resp.topics.push(tr);
        }
        if commits.is_empty() {
            return (resp, Vec::new());
        }
        if self.cluster.is_some() {
            // committed through the metadata group by the caller (`offset_commit_replicated`)
            self.pending_offsets.lock().replace((group, commits));
            return (resp, Vec::new());
        }
        match self.broker.offsets().commit(&group, commits) {
            // durable before the answer
            Ok(wait) => (resp, vec![wait]),
            Err(e) => {
                tracing::error!(group, "committing offsets failed: {e}");
                for t in &mut resp.topics {
                    for p in &mut t.partitions {
                        if p.error_code == 0 {
                            p.error_code = ResponseError::KafkaStorageError.code();
                        }
                    }
                }
                (resp, Vec::new())
            }
        }
    }

    /// OffsetCommit in a cluster: checked as alone, then committed through the metadata group
    /// so that every node keeps the offsets and a coordinator failover loses none.
    pub(super) async fn offset_commit_replicated(
        &self,
        r: OffsetCommitRequest,
    ) -> OffsetCommitResponse {
        let (mut resp, _) = self.offset_commit(r);
        let Some((group, commits)) = self.pending_offsets.lock().take() else {
            return resp;
        };
        let Some(cluster) = &self.cluster else {
            return resp;
        };
        let offsets = commits
            .into_iter()
            .map(|(topic, partition, c)| eddy_cluster::CommittedOffset {
                topic,
                partition,
                offset: c.offset,
                leader_epoch: c.leader_epoch,
                metadata: c.metadata,
            })
            .collect();
        if let Err(e) = cluster.commit_offsets(&group, offsets).await {
            tracing::warn!(group, "committing offsets through the cluster failed: {e}");
            for t in &mut resp.topics {
                for p in &mut t.partitions {
                    if p.error_code == 0 {
                        p.error_code = ResponseError::CoordinatorNotAvailable.code();
                    }
                }
            }
        }
        resp
    }

    /// In a cluster, the group APIs are served by the coordinator only (the metadata leader):
    /// NOT_COORDINATOR elsewhere (COORDINATOR_NOT_AVAILABLE during an election), so the client
    /// asks FindCoordinator again.
    pub(super) fn coordinator_error(&self) -> Option<i16> {
        let c = self.cluster.as_ref()?;
        match c.coordinator() {
            Some(n) if n.id as i32 == self.cfg.node_id => None,
            Some(_) => Some(ResponseError::NotCoordinator.code()),
            None => Some(ResponseError::CoordinatorNotAvailable.code()),
        }
    }

    pub(super) fn offset_fetch(&self, r: OffsetFetchRequest, version: i16) -> OffsetFetchResponse {
        let mut resp = OffsetFetchResponse::default();
        let offsets = self.broker.offsets();
        // what one group asks for: None = every committed partition
        let lookup = |group: &str, wanted: Option<Vec<(String, Vec<i32>)>>| {
            let all = offsets.group(group);
            let wanted = wanted.unwrap_or_else(|| {
                let mut by_topic: Vec<(String, Vec<i32>)> = Vec::new();
                for (t, p, _) in &all {
                    match by_topic.iter_mut().find(|(x, _)| x == t) {
                        Some((_, ps)) => ps.push(*p),
                        None => by_topic.push((t.clone(), vec![*p])),
                    }
                }
                by_topic
            });
            wanted
                .into_iter()
                .map(|(t, ps)| {
                    let found = ps
                        .into_iter()
                        .map(|p| (p, offsets.get(group, &t, p)))
                        .collect::<Vec<_>>();
                    (t, found)
                })
                .collect::<Vec<_>>()
        };
        if version >= 8 {
            for g in r.groups {
                let wanted = g.topics.map(|ts| {
                    ts.into_iter()
                        .map(|t| (t.name.0.to_string(), t.partition_indexes))
                        .collect()
                });
                let mut gr = offset_fetch_response::OffsetFetchResponseGroup::default();
                gr.group_id = g.group_id.clone();
                if !self.allowed(eddy_broker::Access::Read, "group", g.group_id.0.as_str()) {
                    gr.error_code = ResponseError::GroupAuthorizationFailed.code();
                    resp.groups.push(gr);
                    continue;
                }
                for (t, parts) in lookup(g.group_id.0.as_str(), wanted) {
                    let mut tr = offset_fetch_response::OffsetFetchResponseTopics::default();
                    tr.name = topic_name(&t);
                    for (p, c) in parts {
                        let mut pr =
                            offset_fetch_response::OffsetFetchResponsePartitions::default();
                        pr.partition_index = p;
                        pr.committed_offset = c.as_ref().map_or(-1, |c| c.offset);
                        pr.committed_leader_epoch = c.as_ref().map_or(-1, |c| c.leader_epoch);
                        pr.metadata = Some(str_bytes(c.as_ref().map_or("", |c| &c.metadata)));
                        tr.partitions.push(pr);
                    }
                    gr.topics.push(tr);
                }
                resp.groups.push(gr);
            }
            return resp;
        }
        if !self.allowed(eddy_broker::Access::Read, "group", r.group_id.0.as_str()) {
            let refused = ResponseError::GroupAuthorizationFailed.code();
            if version >= 2 {
                resp.error_code = refused;
                return resp;
            }
            // v0/v1 have no top-level error: every partition asked for says it, as Kafka does
            for t in r.topics.into_iter().flatten() {
                let mut tr = offset_fetch_response::OffsetFetchResponseTopic::default();
                tr.name = t.name;
                for p in t.partition_indexes {
                    let mut pr = offset_fetch_response::OffsetFetchResponsePartition::default();
                    pr.partition_index = p;
                    pr.committed_offset = -1;
                    pr.metadata = Some(str_bytes(""));
                    pr.error_code = refused;
                    tr.partitions.push(pr);
                }
                resp.topics.push(tr);
            }
            return resp;
        }
        let wanted = r.topics.map(|ts| {
            ts.into_iter()
                .map(|t| (t.name.0.to_string(), t.partition_indexes))
                .collect()
        });
        for (t, parts) in lookup(r.group_id.0.as_str(), wanted) {
            let mut tr = offset_fetch_response::OffsetFetchResponseTopic::default();
            tr.name = topic_name(&t);
            for (p, c) in parts {
                let mut pr = offset_fetch_response::OffsetFetchResponsePartition::default();
                pr.partition_index = p;
                pr.committed_offset = c.as_ref().map_or(-1, |c| c.offset);
                if version >= 5 {
                    pr.committed_leader_epoch = c.as_ref().map_or(-1, |c| c.leader_epoch);
                }
                pr.metadata = Some(str_bytes(c.as_ref().map_or("", |c| &c.metadata)));
                tr.partitions.push(pr);
            }
            resp.topics.push(tr);
        }
        resp
    }

    /// Every group this broker knows: with members, or only committed offsets.
    pub(super) fn known_groups(&self) -> Vec<String> {
        let mut ids = self.groups.ids();
        ids.extend(self.broker.offsets().group_names());
        ids.sort();
        ids.dedup();
        ids
    }

    pub(super) fn list_groups(&self, r: ListGroupsRequest, version: i16) -> ListGroupsResponse {
        let mut resp = ListGroupsResponse::default();
        for id in self.known_groups() {
            if !self.allowed(eddy_broker::Access::Read, "group", &id) {
                continue;
            }
            let (state, protocol_type) = match self.groups.get(&id) {
                Some(g) => {
                    let st = g.st.lock();
                    (st.phase.name(), st.protocol_type.clone())
                }
                None => ("Empty", "consumer".to_owned()),
            };
            if version >= 4
                && !r.states_filter.is_empty()
                && !r.states_filter.iter().any(|s| s.as_str() == state)
            {
                continue;
            }
            let mut g = list_groups_response::ListedGroup::default();
            g.group_id = GroupId(str_bytes(&id));
            g.protocol_type = str_bytes(&protocol_type);
            if version >= 4 {
                g.group_state = str_bytes(state);
            }
            resp.groups.push(g);
        }
        resp
    }

    pub(super) fn describe_groups(
        &self,
        r: DescribeGroupsRequest,
        version: i16,
    ) -> DescribeGroupsResponse {
        let mut resp = DescribeGroupsResponse::default();
        let known = self.known_groups();
        for id in r.groups {
            let mut d = describe_groups_response::DescribedGroup::default();
            d.group_id = id.clone();
            if !self.allowed(eddy_broker::Access::Read, "group", id.0.as_str()) {
                d.error_code = ResponseError::GroupAuthorizationFailed.code();
                resp.groups.push(d);
                continue;
            }
            match self.groups.get(id.0.as_str()) {
                Some(g) => {
                    let st = g.st.lock();
                    d.group_state = str_bytes(st.phase.name());
                    d.protocol_type = str_bytes(&st.protocol_type);
                    let protocol = st.protocol.clone().unwrap_or_default();
                    d.protocol_data = str_bytes(&protocol);
                    d.members = st
                        .members
                        .iter()
                        .map(|(mid, m)| {
                            let mut dm = describe_groups_response::DescribedGroupMember::default();
                            dm.member_id = str_bytes(mid);
                            dm.client_id = str_bytes(&m.client_id);
                            dm.client_host = str_bytes(&m.client_host);
                            dm.member_metadata = m.metadata(&protocol);
                            dm.member_assignment = m.assignment.clone();
                            dm
                        })
                        .collect();
                }
                None if known.iter().any(|k| k == id.0.as_str()) => {
                    d.group_state = str_bytes("Empty");
                    d.protocol_type = str_bytes("consumer");
                }
                None => d.group_state = str_bytes("Dead"),
            }
            let _ = version;
            resp.groups.push(d);
        }
        resp
    }

    pub(super) fn delete_groups(&self, r: DeleteGroupsRequest) -> DeleteGroupsResponse {
        let mut resp = DeleteGroupsResponse::default();
        let known = self.known_groups();
        for id in r.groups_names {
            let mut res = delete_groups_response::DeletableGroupResult::default();
            res.group_id = id.clone();
            let name = id.0.to_string();
            res.error_code = if !self.allowed(eddy_broker::Access::Configure, "group", &name) {
                ResponseError::GroupAuthorizationFailed.code()
            } else if !known.contains(&name) {
                ResponseError::GroupIdNotFound.code()
            } else {
                match self.groups.delete(&name) {
                    Err(c) => c,
                    Ok(_) => match eddy_broker::run_blocking(|| {
                        self.broker.offsets().delete_group(&name)
                    }) {
                        Ok(()) => 0,
                        Err(e) => code(&e),
                    },
                }
            };
            resp.results.push(res);
        }
        resp
    }
}
