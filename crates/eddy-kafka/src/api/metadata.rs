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
        let mut b = MetadataResponseBroker::default();
        b.node_id = BrokerId(self.cfg.node_id);
        b.host = str_bytes(&self.cfg.advertised_host);
        b.port = self.cfg.advertised_port as i32;
        resp.brokers = vec![b];
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
                            mp
                        })
                        .collect();
                }
            }
            resp.topics.push(mt);
        }
        resp
    }

    pub(super) fn describe_cluster(
        &self,
        _r: DescribeClusterRequest,
        _version: i16,
    ) -> DescribeClusterResponse {
        let mut resp = DescribeClusterResponse::default();
        resp.cluster_id = str_bytes(&self.cfg.cluster_id);
        resp.controller_id = BrokerId(self.cfg.node_id);
        let mut b = describe_cluster_response::DescribeClusterBroker::default();
        b.broker_id = BrokerId(self.cfg.node_id);
        b.host = str_bytes(&self.cfg.advertised_host);
        b.port = self.cfg.advertised_port as i32;
        resp.brokers = vec![b];
        resp
    }
}
