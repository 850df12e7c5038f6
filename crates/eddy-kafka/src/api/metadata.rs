//! Metadata (brokers, topics and partitions, auto-creation) and DescribeCluster.

use std::sync::Arc;

use eddy_broker::Topic;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::*;

use super::{str_bytes, topic_name, uuid, Handler};

impl Handler {
    pub(super) fn metadata(&self, r: MetadataRequest, version: i16) -> MetadataResponse {
        let mut resp = MetadataResponse::default();
        resp.brokers = self
            .brokers()
            .into_iter()
            .map(|(id, host, port)| {
                let mut b = MetadataResponseBroker::default();
                b.node_id = BrokerId(id);
                b.host = str_bytes(&host);
                b.port = port;
                b
            })
            .collect();
        // a field a version does not have must keep its default, or encoding fails
        if version >= 2 {
            resp.cluster_id = Some(str_bytes(&self.cfg.cluster_id));
        }
        if version >= 1 {
            resp.controller_id = BrokerId(self.cfg.node_id);
        }
        let auto = version < 4 || r.allow_auto_topic_creation;
        let wanted: Option<Vec<(Option<String>, uuid::Uuid)>> = match r.topics {
            None => None,
            Some(t) if version == 0 && t.is_empty() => None,
            Some(t) => Some(
                t.into_iter()
                    .map(|x| (x.name.map(|n| n.0.to_string()), x.topic_id))
                    .collect(),
            ),
        };
        let topics: Vec<(String, Result<Arc<Topic>, i16>)> = match wanted {
            // every topic the client may use in some way
            None => self
                .broker
                .topics()
                .into_iter()
                .filter(|t| self.may_see(&t.name))
                .map(|t| (t.name.clone(), Ok(t)))
                .collect(),
            Some(list) => list
                .into_iter()
                .map(|(name, id)| match name {
                    Some(n) => {
                        let t = self.topic_or_create(&n, auto);
                        (n, t)
                    }
                    None => match self.broker.topics().into_iter().find(|t| uuid(t) == id) {
                        Some(t) => (t.name.clone(), Ok(t)),
                        None => (String::new(), Err(ResponseError::UnknownTopicId.code())),
                    },
                })
                .collect(),
        };
        for (name, t) in topics {
            let mut mt = MetadataResponseTopic::default();
            mt.name = Some(topic_name(&name));
            let t = match t {
                Ok(_) if !self.may_see(&name) => {
                    Err(ResponseError::TopicAuthorizationFailed.code())
                }
                other => other,
            };
            match t {
                Err(c) => mt.error_code = c,
                Ok(t) => {
                    if version >= 10 {
                        mt.topic_id = uuid(&t);
                    }
                    mt.partitions = t
                        .partitions()
                        .iter()
                        .map(|p| {
                            let mut mp = MetadataResponsePartition::default();
                            mp.partition_index = p.index;
                            mp.leader_id = BrokerId(self.cfg.node_id);
                            if version >= 7 {
                                mp.leader_epoch = 0;
                            }
                            mp.replica_nodes = vec![BrokerId(self.cfg.node_id)];
                            mp.isr_nodes = vec![BrokerId(self.cfg.node_id)];
                            if let Some(group) = self.replicated(&name, p.index) {
                                self.replicated_partition(&mut mp, &name, group, version);
                            }
                            mp
                        })
                        .collect();
                }
            }
            resp.topics.push(mt);
        }
        resp
    }

    /// Every broker clients may use: this one alone, or every node of the cluster with a
    /// Kafka listener (id, host, port).
    fn brokers(&self) -> Vec<(i32, String, i32)> {
        let me = (
            self.cfg.node_id,
            self.cfg.advertised_host.clone(),
            self.cfg.advertised_port as i32,
        );
        let Some(c) = &self.cluster else {
            return vec![me];
        };
        let mut out = vec![me];
        for (id, info) in c.meta().nodes {
            if id as i32 == self.cfg.node_id {
                continue;
            }
            let Some((host, port)) = info.kafka.as_deref().and_then(|a| a.rsplit_once(':')) else {
                continue;
            };
            if let Ok(port) = port.parse::<i32>() {
                out.push((id as i32, host.to_owned(), port));
            }
        }
        out.sort();
        out
    }

    /// A replicated partition's leader, epoch, replicas and in-sync replicas as this node
    /// knows them (LEADER_NOT_AVAILABLE while there is none).
    fn replicated_partition(
        &self,
        mp: &mut MetadataResponsePartition,
        topic: &str,
        group: Option<Arc<eddy_cluster::Group>>,
        version: i16,
    ) {
        let placement = self
            .cluster
            .as_ref()
            .and_then(|c| c.meta().topics.get(topic).cloned());
        let replicas: Vec<BrokerId> = placement
            .and_then(|t| t.replicas.get(mp.partition_index as usize).cloned())
            .unwrap_or_default()
            .into_iter()
            .map(|n| BrokerId(n as i32))
            .collect();
        mp.replica_nodes = replicas.clone();
        match group {
            Some(g) => {
                let leader = g.leader();
                mp.leader_id = BrokerId(leader.map_or(-1, |l| l as i32));
                if version >= 7 {
                    mp.leader_epoch = g.term() as i32;
                }
                mp.isr_nodes = g
                    .in_sync()
                    .into_iter()
                    .map(|n| BrokerId(n as i32))
                    .collect();
                if leader.is_none() {
                    mp.error_code = ResponseError::LeaderNotAvailable.code();
                }
            }
            None => {
                // no replica here: the leader as it claims itself to the other nodes
                let remote = self
                    .cluster
                    .as_ref()
                    .and_then(|c| c.remote_leader(topic, mp.partition_index));
                mp.isr_nodes = replicas;
                match remote {
                    Some((leader, term)) => {
                        mp.leader_id = BrokerId(leader as i32);
                        if version >= 7 {
                            mp.leader_epoch = term as i32;
                        }
                    }
                    None => {
                        mp.leader_id = BrokerId(-1);
                        mp.error_code = ResponseError::LeaderNotAvailable.code();
                    }
                }
            }
        }
    }

    pub(super) fn describe_cluster(
        &self,
        _r: DescribeClusterRequest,
        _version: i16,
    ) -> DescribeClusterResponse {
        let mut resp = DescribeClusterResponse::default();
        resp.cluster_id = str_bytes(&self.cfg.cluster_id);
        resp.controller_id = BrokerId(self.cfg.node_id);
        resp.brokers = self
            .brokers()
            .into_iter()
            .map(|(id, host, port)| {
                let mut b = describe_cluster_response::DescribeClusterBroker::default();
                b.broker_id = BrokerId(id);
                b.host = str_bytes(&host);
                b.port = port;
                b
            })
            .collect();
        resp
    }
}
