//! CreateTopics, DeleteTopics and CreatePartitions.

use std::sync::Arc;

use eddy_broker::{Topic, TopicConfig};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::create_topics_response::{
    CreatableTopicConfigs, CreatableTopicResult,
};
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::*;

use super::{code, str_bytes, topic_name, uuid, Handler};

impl Handler {
    pub(super) async fn create_topics(
        &self,
        r: CreateTopicsRequest,
        version: i16,
    ) -> CreateTopicsResponse {
        let mut resp = CreateTopicsResponse::default();
        for t in r.topics {
            let name = t.name.0.to_string();
            let mut res = CreatableTopicResult::default();
            res.name = t.name.clone();
            if version < 5 {
                res.configs = None;
            }
            let outcome = if self.allowed(eddy_broker::Access::Configure, "topic", &name) {
                self.create_one(&name, &t, r.validate_only).await
            } else {
                Err((
                    ResponseError::TopicAuthorizationFailed.code(),
                    format!("configure access to topic '{name}' refused"),
                ))
            };
            match outcome {
                Ok(_) if version < 5 => {}
                Ok((topic, partitions, config)) => {
                    res.num_partitions = partitions as i32;
                    res.replication_factor = self
                        .cluster
                        .as_ref()
                        .and_then(|c| {
                            c.meta()
                                .topics
                                .get(&name)
                                .map(|t| t.replicas.first().map_or(1, |r| r.len()))
                        })
                        .unwrap_or(1) as i16;
                    if let (Some(topic), true) = (topic, version >= 7) {
                        res.topic_id = uuid(&topic);
                    }
                    res.configs = Some(
                        config
                            .entries()
                            .into_iter()
                            .map(|(k, v)| {
                                let mut c = CreatableTopicConfigs::default();
                                c.name = str_bytes(k);
                                c.value = Some(str_bytes(&v));
                                c.config_source = 5; // default config
                                c
                            })
                            .collect(),
                    );
                }
                Err((c, msg)) => {
                    res.error_code = c;
                    res.error_message = Some(str_bytes(&msg));
                }
            }
            resp.topics.push(res);
        }
        resp
    }

    #[allow(clippy::type_complexity)]
    pub(super) async fn create_one(
        &self,
        name: &str,
        t: &create_topics_request::CreatableTopic,
        validate_only: bool,
    ) -> Result<(Option<Arc<Topic>>, usize, TopicConfig), (i16, String)> {
        if let Err(e) = eddy_broker::topic::check_topic_name(name) {
            return Err((ResponseError::InvalidTopicException.code(), e.to_string()));
        }
        let nodes = self.cluster.as_ref().map_or(1, |c| c.member_ids().len());
        if !(t.replication_factor == -1
            || (1..=nodes as i64).contains(&(t.replication_factor as i64)))
        {
            return Err((
                ResponseError::InvalidReplicationFactor.code(),
                format!(
                    "replication factor {} is not between 1 and the {nodes} broker(s) available",
                    t.replication_factor
                ),
            ));
        }
        let partitions = if !t.assignments.is_empty() {
            t.assignments.len() as i64
        } else if t.num_partitions == -1 {
            self.cfg.default_partitions as i64
        } else {
            t.num_partitions as i64
        };
        if partitions < 1 || partitions > eddy_broker::topic::MAX_PARTITIONS as i64 {
            return Err((
                ResponseError::InvalidPartitions.code(),
                format!("invalid number of partitions {partitions}"),
            ));
        }
        let mut config = TopicConfig::default();
        for c in &t.configs {
            if let Err(e) = config.set(c.name.as_str(), c.value.as_ref().map(|v| v.as_str())) {
                return Err((ResponseError::InvalidConfig.code(), e.to_string()));
            }
        }
        if self.broker.topic(name).is_some() {
            return Err((
                ResponseError::TopicAlreadyExists.code(),
                format!("topic '{name}' already exists"),
            ));
        }
        if validate_only {
            return Ok((None, partitions as usize, config));
        }
        if let Some(c) = &self.cluster {
            if !t.assignments.is_empty() {
                return Err((
                    ResponseError::InvalidReplicaAssignment.code(),
                    "manual replica assignments are not supported: Eddy places replicas".into(),
                ));
            }
            let rf = (t.replication_factor > 0).then_some(t.replication_factor as usize);
            return match c.create_topic(name, partitions as usize, rf, &config).await {
                Ok(()) => Ok((self.broker.topic(name), partitions as usize, config)),
                Err(e) => Err((cluster_code(&e), e.to_string())),
            };
        }
        let made = eddy_broker::run_blocking(|| {
            self.broker
                .create_topic(name, partitions as usize, config.clone())
        });
        match made {
            Ok(topic) => Ok((Some(topic), partitions as usize, config)),
            Err(e) => Err((code(&e), e.to_string())),
        }
    }

    pub(super) async fn delete_topics(
        &self,
        r: DeleteTopicsRequest,
        version: i16,
    ) -> DeleteTopicsResponse {
        let mut resp = DeleteTopicsResponse::default();
        let targets: Vec<(Option<String>, uuid::Uuid)> = if version >= 6 {
            r.topics
                .into_iter()
                .map(|t| (t.name.map(|n| n.0.to_string()), t.topic_id))
                .collect()
        } else {
            r.topic_names
                .into_iter()
                .map(|n| (Some(n.0.to_string()), uuid::Uuid::nil()))
                .collect()
        };
        for (name, id) in targets {
            let topic = match &name {
                Some(n) => self.broker.topic(n),
                None => self.broker.topics().into_iter().find(|t| uuid(t) == id),
            };
            let mut res = DeletableTopicResult::default();
            res.name = name.as_deref().map(topic_name);
            if version >= 6 {
                res.topic_id = id;
            }
            match topic {
                None => {
                    res.error_code = if name.is_some() {
                        ResponseError::UnknownTopicOrPartition.code()
                    } else {
                        ResponseError::UnknownTopicId.code()
                    }
                }
                Some(t) if !self.allowed(eddy_broker::Access::Configure, "topic", &t.name) => {
                    res.name = Some(topic_name(&t.name));
                    res.error_code = ResponseError::TopicAuthorizationFailed.code();
                }
                Some(t) => {
                    res.name = Some(topic_name(&t.name));
                    if version >= 6 {
                        res.topic_id = uuid(&t);
                    }
                    self.producers.forget_topic(&t.name);
                    if let Some(c) = self.cluster.as_ref().filter(|c| c.is_replicated(&t.name)) {
                        if let Err(e) = c.delete_topic(&t.name).await {
                            res.error_code = cluster_code(&e);
                            if version >= 5 {
                                res.error_message = Some(str_bytes(&e.to_string()));
                            }
                        }
                    } else if let Err(e) =
                        eddy_broker::run_blocking(|| self.broker.delete_topic(&t.name))
                    {
                        res.error_code = code(&e);
                        if version >= 5 {
                            res.error_message = Some(str_bytes(&e.to_string()));
                        }
                    }
                }
            }
            resp.responses.push(res);
        }
        resp
    }

    pub(super) fn create_partitions(&self, r: CreatePartitionsRequest) -> CreatePartitionsResponse {
        let mut resp = CreatePartitionsResponse::default();
        for t in r.topics {
            let name = t.name.0.to_string();
            let mut res = CreatePartitionsTopicResult::default();
            res.name = t.name;
            let outcome = match self.broker.topic(&name) {
                _ if !self.allowed(eddy_broker::Access::Configure, "topic", &name) => Err((
                    ResponseError::TopicAuthorizationFailed.code(),
                    format!("configure access to topic '{name}' refused"),
                )),
                None => Err((
                    ResponseError::UnknownTopicOrPartition.code(),
                    format!("no topic '{name}'"),
                )),
                Some(topic) if t.count as usize <= topic.partition_count() || t.count < 1 => Err((
                    ResponseError::InvalidPartitions.code(),
                    format!(
                        "topic '{name}' has {} partitions; the new count must be more, not {}",
                        topic.partition_count(),
                        t.count
                    ),
                )),
                Some(_) if t.count as i64 > eddy_broker::topic::MAX_PARTITIONS as i64 => Err((
                    ResponseError::InvalidPartitions.code(),
                    format!(
                        "invalid number of partitions {} (at most {})",
                        t.count,
                        eddy_broker::topic::MAX_PARTITIONS
                    ),
                )),
                Some(_) if r.validate_only => Ok(()),
                Some(_) => eddy_broker::run_blocking(|| {
                    self.broker.create_partitions(&name, t.count as usize)
                })
                .map_err(|e| (code(&e), e.to_string())),
            };
            if let Err((c, msg)) = outcome {
                res.error_code = c;
                res.error_message = Some(str_bytes(&msg));
            }
            resp.results.push(res);
        }
        resp
    }
}

/// A cluster operation's failure as Kafka's error code.
pub(super) fn cluster_code(e: &eddy_cluster::ClusterError) -> i16 {
    use eddy_cluster::ClusterError as C;
    match e {
        C::NoLeader(..) => ResponseError::RequestTimedOut.code(),
        C::Meta(eddy_cluster::MetaError::AlreadyExists(_)) => {
            ResponseError::TopicAlreadyExists.code()
        }
        C::Meta(eddy_cluster::MetaError::NotFound(_)) => {
            ResponseError::UnknownTopicOrPartition.code()
        }
        C::Meta(eddy_cluster::MetaError::Invalid(_)) => ResponseError::InvalidRequest.code(),
        C::Failed(_) => ResponseError::UnknownServerError.code(),
    }
}
