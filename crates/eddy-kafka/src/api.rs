//! The Kafka APIs Eddy answers, each mapped onto the broker's topics. Broker errors become
//! Kafka error codes in one place ([`code`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use eddy_broker::{Broker, BrokerError, Log, Topic, TopicConfig};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::create_topics_response::{
    CreatableTopicConfigs, CreatableTopicResult,
};
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;

use crate::groups::{Groups, JoinRequest};
use crate::producers::{Outcome, Producers};
use crate::records::{patch_for_fetch, split_batches};
use crate::KafkaConfig;

/// The versions Eddy answers, per API (what ApiVersions advertises). Produce stops at 9 and
/// Fetch at 12: later versions address topics by id only.
const APIS: &[(ApiKey, i16, i16)] = &[
    (ApiKey::Produce, 3, 9),
    (ApiKey::Fetch, 4, 12),
    (ApiKey::ListOffsets, 1, 6),
    (ApiKey::Metadata, 0, 12),
    (ApiKey::ApiVersions, 0, 3),
    (ApiKey::CreateTopics, 2, 7),
    (ApiKey::DeleteTopics, 1, 6),
    (ApiKey::CreatePartitions, 0, 3),
    (ApiKey::InitProducerId, 0, 4),
    (ApiKey::FindCoordinator, 0, 4),
    (ApiKey::JoinGroup, 0, 7),
    (ApiKey::SyncGroup, 0, 5),
    (ApiKey::Heartbeat, 0, 4),
    (ApiKey::LeaveGroup, 0, 4),
    (ApiKey::OffsetCommit, 2, 8),
    (ApiKey::OffsetFetch, 1, 8),
    (ApiKey::ListGroups, 0, 4),
    (ApiKey::DescribeGroups, 0, 5),
    (ApiKey::DeleteGroups, 0, 2),
    (ApiKey::DescribeConfigs, 1, 4),
    (ApiKey::AlterConfigs, 0, 2),
    (ApiKey::IncrementalAlterConfigs, 0, 1),
    (ApiKey::SaslHandshake, 1, 1),
    (ApiKey::SaslAuthenticate, 0, 2),
    (ApiKey::DescribeCluster, 0, 1),
];

/// Most record bytes in one fetch response (Kafka's default `fetch.max.bytes`).
const MAX_FETCH_BYTES: usize = 55 << 20;
/// Longest offset-commit metadata (Kafka's `offset.metadata.max.bytes`).
const MAX_COMMIT_METADATA: usize = 4096;

/// DescribeConfigs resource types.
const RESOURCE_TOPIC: i8 = 2;
const RESOURCE_BROKER: i8 = 4;

/// The version range Eddy answers for an API, if any.
pub(crate) fn supported(api: ApiKey) -> Option<(i16, i16)> {
    APIS.iter()
        .find(|(k, _, _)| *k == api)
        .map(|(_, lo, hi)| (*lo, *hi))
}

fn api_keys() -> Vec<ApiVersion> {
    APIS.iter()
        .map(|(k, lo, hi)| {
            let mut v = ApiVersion::default();
            v.api_key = *k as i16;
            v.min_version = *lo;
            v.max_version = *hi;
            v
        })
        .collect()
}

/// ApiVersions v0 answer to a version we do not speak.
pub(crate) fn api_versions_unsupported() -> ApiVersionsResponse {
    let mut r = ApiVersionsResponse::default();
    r.error_code = ResponseError::UnsupportedVersion.code();
    r.api_keys = api_keys();
    r
}

/// Broker errors as Kafka error codes (the one place).
fn code(e: &BrokerError) -> i16 {
    let err = match e {
        BrokerError::NotFound(_) => ResponseError::UnknownTopicOrPartition,
        BrokerError::AlreadyExists(_) => ResponseError::TopicAlreadyExists,
        BrokerError::PreconditionFailed(_) => ResponseError::InvalidRequest,
        BrokerError::AccessRefused(_) => ResponseError::TopicAuthorizationFailed,
        BrokerError::Storage(_) => ResponseError::KafkaStorageError,
        BrokerError::ResourceError(_) => ResponseError::PolicyViolation,
        _ => ResponseError::UnknownServerError,
    };
    err.code()
}

fn str_bytes(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_owned())
}

fn topic_name(s: &str) -> TopicName {
    TopicName(str_bytes(s))
}

fn uuid(t: &Topic) -> uuid::Uuid {
    uuid::Uuid::from_bytes(t.id)
}

/// A response, and the logs it may only be sent after (acks=all, offset commits).
pub(crate) struct Reply {
    pub(crate) response: ResponseKind,
    pub(crate) waits: Vec<(Arc<Log>, u64)>,
    /// Close the connection after this response (failed SASL login).
    pub(crate) close: bool,
}

impl From<ResponseKind> for Reply {
    fn from(response: ResponseKind) -> Self {
        Reply {
            response,
            waits: Vec::new(),
            close: false,
        }
    }
}

/// A write that was to be durable failed: every partition of the response says so.
pub(crate) fn fail_durability(resp: &mut ResponseKind, msg: &str) {
    let err = ResponseError::KafkaStorageError.code();
    match resp {
        ResponseKind::Produce(r) => {
            for t in &mut r.responses {
                for p in &mut t.partition_responses {
                    if p.error_code == 0 {
                        p.error_code = err;
                        p.base_offset = -1;
                    }
                }
            }
        }
        ResponseKind::OffsetCommit(r) => {
            for t in &mut r.topics {
                for p in &mut t.partitions {
                    if p.error_code == 0 {
                        p.error_code = err;
                    }
                }
            }
        }
        _ => tracing::error!("durability failure on a response that cannot report it: {msg}"),
    }
}

/// Answers requests for one connection.
pub(crate) struct Handler {
    broker: Broker,
    cfg: Arc<KafkaConfig>,
    producers: Arc<Producers>,
    groups: Arc<Groups>,
    peer: String,
    loopback: bool,
    /// The SASL mechanism agreed by SaslHandshake.
    sasl_mechanism: parking_lot::Mutex<Option<String>>,
    /// Who logged in with SASL on this connection.
    user: parking_lot::Mutex<Option<String>>,
    /// The connection's entry in the broker's list.
    pub(crate) info: Option<Arc<eddy_broker::ConnectionInfo>>,
    /// Who a client that does not log in acts as (decided once per connection).
    anonymous: std::sync::OnceLock<Option<String>>,
    /// Checks that passed on this connection (kept off the per-request path; a short list,
    /// cleared when it grows past 64 or the SASL user changes).
    granted: parking_lot::Mutex<Vec<(eddy_broker::Access, &'static str, String)>>,
}

/// What every connection shares.
pub(crate) struct Shared {
    pub(crate) producers: Arc<Producers>,
    pub(crate) groups: Arc<Groups>,
}

impl Handler {
    pub(crate) fn new(
        broker: Broker,
        cfg: Arc<KafkaConfig>,
        shared: &Shared,
        peer: std::net::SocketAddr,
    ) -> Self {
        Handler {
            broker,
            cfg,
            producers: shared.producers.clone(),
            groups: shared.groups.clone(),
            peer: format!("/{}", peer.ip()),
            loopback: peer.ip().is_loopback(),
            sasl_mechanism: Default::default(),
            user: Default::default(),
            info: None,
            anonymous: std::sync::OnceLock::new(),
            granted: Default::default(),
        }
    }

    /// A client that does not log in with SASL acts as `guest` while guest still has its
    /// default password and the client is on loopback (where guest/guest would be let in);
    /// once guest's password is changed or guest is deleted, such a client may do nothing.
    pub(crate) fn anonymous_user(&self) -> Option<String> {
        self.anonymous
            .get_or_init(|| {
                (self.loopback && self.broker.authenticate("guest", "guest", true).is_ok())
                    .then(|| "guest".to_owned())
            })
            .clone()
    }

    /// Whether the topic may be listed to this connection (it may read, write or configure it).
    fn may_see(&self, topic: &str) -> bool {
        use eddy_broker::Access::{Configure, Read, Write};
        [Read, Write, Configure]
            .into_iter()
            .any(|a| self.allowed(a, "topic", topic))
    }

    /// Whether this connection may do `access` to the topic or group `name` (RabbitMQ-style
    /// permissions of the default vhost), as its SASL user or [`Handler::anonymous_user`].
    fn allowed(&self, access: eddy_broker::Access, kind: &'static str, name: &str) -> bool {
        if self
            .granted
            .lock()
            .iter()
            .any(|(a, k, n)| *a == access && *k == kind && n == name)
        {
            return true;
        }
        let user = self.user.lock().clone().or_else(|| self.anonymous_user());
        let ok = user.is_some_and(|u| {
            self.broker
                .users()
                .check(&u, "/", access, kind, name)
                .is_ok()
        });
        if ok {
            let mut g = self.granted.lock();
            if g.len() >= 64 {
                g.clear();
            }
            g.push((access, kind, name.to_owned()));
        }
        ok
    }

    /// Answer one request; None: no response is due (produce with acks=0).
    pub(crate) async fn handle(
        &self,
        request: RequestKind,
        version: i16,
        header: &RequestHeader,
    ) -> Option<Reply> {
        let client_id = header
            .client_id
            .as_ref()
            .map(|c| c.to_string())
            .unwrap_or_default();
        let reply: Reply = match request {
            RequestKind::Produce(r) => {
                let (resp, waits) = self.produce(r, version)?;
                Reply {
                    response: ResponseKind::Produce(resp),
                    waits,
                    close: false,
                }
            }
            RequestKind::OffsetCommit(r) => {
                let (resp, waits) = self.offset_commit(r);
                Reply {
                    response: ResponseKind::OffsetCommit(resp),
                    waits,
                    close: false,
                }
            }
            RequestKind::SaslAuthenticate(r) => {
                let resp = self.sasl_authenticate(r);
                let close = resp.error_code != 0;
                Reply {
                    response: ResponseKind::SaslAuthenticate(resp),
                    waits: Vec::new(),
                    close,
                }
            }
            other => self.answer(other, version, client_id).await?.into(),
        };
        Some(reply)
    }

    async fn answer(
        &self,
        request: RequestKind,
        version: i16,
        client_id: String,
    ) -> Option<ResponseKind> {
        Some(match request {
            RequestKind::ApiVersions(_) => ResponseKind::ApiVersions(self.api_versions()),
            RequestKind::Metadata(r) => ResponseKind::Metadata(self.metadata(r, version)),
            RequestKind::Fetch(r) => ResponseKind::Fetch(self.fetch(r, version).await),
            RequestKind::ListOffsets(r) => ResponseKind::ListOffsets(self.list_offsets(r, version)),
            RequestKind::CreateTopics(r) => {
                ResponseKind::CreateTopics(self.create_topics(r, version))
            }
            RequestKind::DeleteTopics(r) => {
                ResponseKind::DeleteTopics(self.delete_topics(r, version))
            }
            RequestKind::CreatePartitions(r) => {
                ResponseKind::CreatePartitions(self.create_partitions(r))
            }
            RequestKind::InitProducerId(r) => {
                ResponseKind::InitProducerId(self.init_producer_id(r, version))
            }
            RequestKind::FindCoordinator(r) => {
                ResponseKind::FindCoordinator(self.find_coordinator(r, version))
            }
            RequestKind::JoinGroup(r) => {
                ResponseKind::JoinGroup(self.join_group(r, version, client_id).await)
            }
            RequestKind::SyncGroup(r) => ResponseKind::SyncGroup(self.sync_group(r).await),
            RequestKind::Heartbeat(r) => ResponseKind::Heartbeat(self.heartbeat(r)),
            RequestKind::LeaveGroup(r) => ResponseKind::LeaveGroup(self.leave_group(r, version)),
            RequestKind::OffsetFetch(r) => ResponseKind::OffsetFetch(self.offset_fetch(r, version)),
            RequestKind::ListGroups(r) => ResponseKind::ListGroups(self.list_groups(r, version)),
            RequestKind::DescribeGroups(r) => {
                ResponseKind::DescribeGroups(self.describe_groups(r, version))
            }
            RequestKind::DeleteGroups(r) => ResponseKind::DeleteGroups(self.delete_groups(r)),
            RequestKind::DescribeConfigs(r) => {
                ResponseKind::DescribeConfigs(self.describe_configs(r, version))
            }
            RequestKind::AlterConfigs(r) => ResponseKind::AlterConfigs(self.alter_configs(r)),
            RequestKind::IncrementalAlterConfigs(r) => {
                ResponseKind::IncrementalAlterConfigs(self.incremental_alter_configs(r))
            }
            RequestKind::SaslHandshake(r) => ResponseKind::SaslHandshake(self.sasl_handshake(r)),
            RequestKind::DescribeCluster(r) => {
                ResponseKind::DescribeCluster(self.describe_cluster(r, version))
            }
            other => {
                // `supported` let it through, so this is a bug, not the client's doing
                tracing::error!("no handler for {other:?}");
                return None;
            }
        })
    }

    fn api_versions(&self) -> ApiVersionsResponse {
        let mut r = ApiVersionsResponse::default();
        r.api_keys = api_keys();
        r.finalized_features_epoch = -1;
        r
    }

    /// The topic, created with the default settings when auto-creation is on and `create`.
    fn topic_or_create(&self, name: &str, create: bool) -> Result<Arc<Topic>, i16> {
        if let Some(t) = self.broker.topic(name) {
            return Ok(t);
        }
        if !(create && self.cfg.auto_create_topics) {
            return Err(ResponseError::UnknownTopicOrPartition.code());
        }
        if !self.allowed(eddy_broker::Access::Configure, "topic", name) {
            return Err(ResponseError::TopicAuthorizationFailed.code());
        }
        let made = eddy_broker::run_blocking(|| {
            self.broker
                .create_topic(name, self.cfg.default_partitions, TopicConfig::default())
        });
        match made {
            Ok(t) => Ok(t),
            // created meanwhile by another client
            Err(BrokerError::AlreadyExists(_)) => self
                .broker
                .topic(name)
                .ok_or(ResponseError::UnknownTopicOrPartition.code()),
            Err(BrokerError::PreconditionFailed(_)) => {
                Err(ResponseError::InvalidTopicException.code())
            }
            Err(e) => Err(code(&e)),
        }
    }

    fn metadata(&self, r: MetadataRequest, version: i16) -> MetadataResponse {
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

    /// Append what a produce carries; the response may only go out once `waits` are durable
    /// (acks=all). None: acks=0, no response.
    #[allow(clippy::type_complexity)]
    fn produce(
        &self,
        r: ProduceRequest,
        version: i16,
    ) -> Option<(ProduceResponse, Vec<(Arc<Log>, u64)>)> {
        let message = |m: &str| (version >= 8).then(|| str_bytes(m));
        let mut resp = ProduceResponse::default();
        let mut waits: Vec<(Arc<Log>, u64)> = Vec::new();
        for t in r.topic_data {
            let name = t.name.0.to_string();
            let topic = if self.allowed(eddy_broker::Access::Write, "topic", &name) {
                self.topic_or_create(&name, true)
            } else {
                Err(ResponseError::TopicAuthorizationFailed.code())
            };
            let mut tr = TopicProduceResponse::default();
            tr.name = t.name;
            for p in t.partition_data {
                let mut pr = PartitionProduceResponse::default();
                pr.index = p.index;
                pr.base_offset = -1;
                let partition = match &topic {
                    Err(c) => {
                        pr.error_code = *c;
                        tr.partition_responses.push(pr);
                        continue;
                    }
                    Ok(t) => t.partition(p.index),
                };
                let Some(partition) = partition else {
                    pr.error_code = ResponseError::UnknownTopicOrPartition.code();
                    tr.partition_responses.push(pr);
                    continue;
                };
                let records = p.records.unwrap_or_default();
                let batches = match split_batches(&records) {
                    Ok(b) => b,
                    Err(e) => {
                        pr.error_code = ResponseError::CorruptMessage.code();
                        pr.error_message = message(&e.to_string());
                        tr.partition_responses.push(pr);
                        continue;
                    }
                };
                if batches.iter().any(|(_, info)| info.transactional) {
                    pr.error_code = ResponseError::InvalidRecord.code();
                    pr.error_message = message("transactions are not supported yet");
                    tr.partition_responses.push(pr);
                    continue;
                }
                match self.producers.append(&partition, &batches) {
                    Err((c, msg)) => {
                        if c == ResponseError::KafkaStorageError.code() {
                            tracing::error!(partition = ?partition, "append failed: {msg}");
                        }
                        pr.error_code = c;
                        pr.error_message = message(&msg);
                    }
                    Ok(outcomes) => {
                        let base = match outcomes[0] {
                            Outcome::Appended(b) | Outcome::Duplicate(b) => b,
                        };
                        pr.base_offset = base as i64;
                        if version >= 5 {
                            pr.log_start_offset = partition.start_offset() as i64;
                        }
                        if r.acks == -1 {
                            // a duplicate waits too: its first append may not be durable yet
                            let end = outcomes
                                .iter()
                                .zip(&batches)
                                .map(|(o, (_, info))| match o {
                                    Outcome::Appended(b) | Outcome::Duplicate(b) => {
                                        b + info.record_count as u64
                                    }
                                })
                                .max()
                                .unwrap_or(base);
                            waits.push((partition.log().clone(), end));
                        }
                    }
                }
                tr.partition_responses.push(pr);
            }
            resp.responses.push(tr);
        }
        if r.acks == 0 {
            return None;
        }
        // acks=all: the answer waits until these are durable under the fsync policy
        Some((resp, waits))
    }

    async fn fetch(&self, r: FetchRequest, version: i16) -> FetchResponse {
        let wait = Duration::from_millis(r.max_wait_ms.clamp(0, 60_000) as u64);
        let deadline = Instant::now() + wait;
        let mut appends = self.broker.appends();
        loop {
            appends.borrow_and_update();
            let (resp, bytes, errors) = self.fetch_once(&r, version);
            let done = errors || bytes >= r.min_bytes.max(0) as usize || Instant::now() >= deadline;
            if done {
                return resp;
            }
            tokio::select! {
                _ = appends.changed() => {}
                _ = tokio::time::sleep_until(deadline.into()) => {}
            }
        }
    }

    /// One pass over the requested partitions: (response, record bytes, any error).
    fn fetch_once(&self, r: &FetchRequest, version: i16) -> (FetchResponse, usize, bool) {
        let mut resp = FetchResponse::default();
        // Kafka's fetch.max.bytes bounds what one response may hold, whatever the client asks
        let mut budget = if r.max_bytes > 0 {
            (r.max_bytes as usize).min(MAX_FETCH_BYTES)
        } else {
            MAX_FETCH_BYTES
        };
        let mut total = 0usize;
        let mut errors = false;
        for t in &r.topics {
            let mut tr = FetchableTopicResponse::default();
            tr.topic = t.topic.clone();
            tr.topic_id = t.topic_id;
            let topic = self.broker.topic(t.topic.0.as_str());
            let readable = self.allowed(eddy_broker::Access::Read, "topic", t.topic.0.as_str());
            for p in &t.partitions {
                let mut pd = PartitionData::default();
                pd.partition_index = p.partition;
                pd.high_watermark = -1;
                if !readable {
                    pd.error_code = ResponseError::TopicAuthorizationFailed.code();
                    errors = true;
                    tr.partitions.push(pd);
                    continue;
                }
                let Some(part) = topic.as_ref().and_then(|t| t.partition(p.partition)) else {
                    pd.error_code = ResponseError::UnknownTopicOrPartition.code();
                    errors = true;
                    tr.partitions.push(pd);
                    continue;
                };
                let (start, end) = (part.start_offset(), part.end_offset());
                pd.high_watermark = end as i64;
                pd.last_stable_offset = end as i64;
                if version >= 5 {
                    pd.log_start_offset = start as i64;
                }
                let from = p.fetch_offset;
                if from < start as i64 || from > end as i64 {
                    pd.error_code = ResponseError::OffsetOutOfRange.code();
                    errors = true;
                    tr.partitions.push(pd);
                    continue;
                }
                let mut records = Vec::new();
                if (from as u64) < end && (budget > 0 || total == 0) {
                    let limit = (p.partition_max_bytes.max(0) as usize).min(budget).max(1);
                    match part.read(from as u64, limit) {
                        Ok(batches) => {
                            // nothing above the high watermark this response reports
                            for mut b in batches.into_iter().filter(|b| b.base_offset < end) {
                                // whole batches only, but the first one even if it is larger
                                // than the limits, so a consumer always makes progress
                                if !records.is_empty() && records.len() + b.payload.len() > limit {
                                    break;
                                }
                                patch_for_fetch(&mut b.payload, b.base_offset);
                                records.extend_from_slice(&b.payload);
                            }
                        }
                        Err(e) => {
                            pd.error_code = code(&e);
                            errors = true;
                        }
                    }
                }
                total += records.len();
                budget = budget.saturating_sub(records.len());
                pd.records = Some(Bytes::from(records));
                tr.partitions.push(pd);
            }
            resp.responses.push(tr);
        }
        (resp, total, errors)
    }

    fn list_offsets(&self, r: ListOffsetsRequest, version: i16) -> ListOffsetsResponse {
        let mut resp = ListOffsetsResponse::default();
        for t in r.topics {
            let topic = self.broker.topic(t.name.0.as_str());
            let readable = self.allowed(eddy_broker::Access::Read, "topic", t.name.0.as_str());
            let mut tr = ListOffsetsTopicResponse::default();
            tr.name = t.name;
            for p in t.partitions {
                let mut pr = ListOffsetsPartitionResponse::default();
                pr.partition_index = p.partition_index;
                pr.timestamp = -1;
                pr.offset = -1;
                if version >= 4 {
                    pr.leader_epoch = 0;
                }
                match topic.as_ref().and_then(|t| t.partition(p.partition_index)) {
                    _ if !readable => {
                        pr.error_code = ResponseError::TopicAuthorizationFailed.code()
                    }
                    None => pr.error_code = ResponseError::UnknownTopicOrPartition.code(),
                    Some(part) => match p.timestamp {
                        -1 => pr.offset = part.end_offset() as i64,
                        -2 => pr.offset = part.start_offset() as i64,
                        ts if ts >= 0 => match part.offset_for_timestamp(ts) {
                            Ok(Some(o)) => {
                                pr.offset = o as i64;
                                pr.timestamp = ts;
                            }
                            Ok(None) => {}
                            Err(e) => pr.error_code = code(&e),
                        },
                        _ => pr.error_code = ResponseError::UnsupportedVersion.code(),
                    },
                }
                tr.partitions.push(pr);
            }
            resp.topics.push(tr);
        }
        resp
    }

    fn create_topics(&self, r: CreateTopicsRequest, version: i16) -> CreateTopicsResponse {
        let mut resp = CreateTopicsResponse::default();
        for t in r.topics {
            let name = t.name.0.to_string();
            let mut res = CreatableTopicResult::default();
            res.name = t.name.clone();
            if version < 5 {
                res.configs = None;
            }
            let outcome = if self.allowed(eddy_broker::Access::Configure, "topic", &name) {
                self.create_one(&name, &t, r.validate_only)
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
                    res.replication_factor = 1;
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
    fn create_one(
        &self,
        name: &str,
        t: &create_topics_request::CreatableTopic,
        validate_only: bool,
    ) -> Result<(Option<Arc<Topic>>, usize, TopicConfig), (i16, String)> {
        if let Err(e) = eddy_broker::topic::check_topic_name(name) {
            return Err((ResponseError::InvalidTopicException.code(), e.to_string()));
        }
        if !(t.replication_factor == -1 || t.replication_factor == 1) {
            return Err((
                ResponseError::InvalidReplicationFactor.code(),
                format!(
                    "replication factor {} is larger than the 1 broker available",
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
        let made = eddy_broker::run_blocking(|| {
            self.broker
                .create_topic(name, partitions as usize, config.clone())
        });
        match made {
            Ok(topic) => Ok((Some(topic), partitions as usize, config)),
            Err(e) => Err((code(&e), e.to_string())),
        }
    }

    fn delete_topics(&self, r: DeleteTopicsRequest, version: i16) -> DeleteTopicsResponse {
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
                    if let Err(e) = eddy_broker::run_blocking(|| self.broker.delete_topic(&t.name))
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

    fn init_producer_id(&self, r: InitProducerIdRequest, _version: i16) -> InitProducerIdResponse {
        let mut resp = InitProducerIdResponse::default();
        if r.transactional_id.as_ref().is_some_and(|t| !t.0.is_empty()) {
            // transactions are not implemented: a fatal error for the client, not a retry loop
            resp.error_code = ResponseError::TransactionalIdAuthorizationFailed.code();
            resp.producer_id = ProducerId(-1);
            resp.producer_epoch = -1;
            return resp;
        }
        // a producer that asks to bump its epoch (v3+) keeps its id unless the epoch is spent
        if r.producer_id.0 >= 0 && r.producer_epoch >= 0 && r.producer_epoch < i16::MAX - 1 {
            resp.producer_id = r.producer_id;
            resp.producer_epoch = r.producer_epoch + 1;
        } else {
            resp.producer_id = ProducerId(self.producers.allocate());
            resp.producer_epoch = 0;
        }
        resp
    }

    fn find_coordinator(&self, r: FindCoordinatorRequest, version: i16) -> FindCoordinatorResponse {
        let mut resp = FindCoordinatorResponse::default();
        // this broker coordinates every group (and would every transaction)
        if version >= 4 {
            resp.coordinators = r
                .coordinator_keys
                .into_iter()
                .map(|key| {
                    let mut c = find_coordinator_response::Coordinator::default();
                    c.key = key;
                    c.node_id = BrokerId(self.cfg.node_id);
                    c.host = str_bytes(&self.cfg.advertised_host);
                    c.port = self.cfg.advertised_port as i32;
                    c
                })
                .collect();
        } else {
            resp.node_id = BrokerId(self.cfg.node_id);
            resp.host = str_bytes(&self.cfg.advertised_host);
            resp.port = self.cfg.advertised_port as i32;
        }
        resp
    }

    async fn join_group(
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

    async fn sync_group(&self, r: SyncGroupRequest) -> SyncGroupResponse {
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

    fn heartbeat(&self, r: HeartbeatRequest) -> HeartbeatResponse {
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

    fn leave_group(&self, r: LeaveGroupRequest, version: i16) -> LeaveGroupResponse {
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

    fn offset_commit(
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

    fn offset_fetch(&self, r: OffsetFetchRequest, version: i16) -> OffsetFetchResponse {
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
            resp.error_code = ResponseError::GroupAuthorizationFailed.code();
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
    fn known_groups(&self) -> Vec<String> {
        let mut ids = self.groups.ids();
        ids.extend(self.broker.offsets().group_names());
        ids.sort();
        ids.dedup();
        ids
    }

    fn list_groups(&self, r: ListGroupsRequest, version: i16) -> ListGroupsResponse {
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

    fn describe_groups(&self, r: DescribeGroupsRequest, version: i16) -> DescribeGroupsResponse {
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

    fn delete_groups(&self, r: DeleteGroupsRequest) -> DeleteGroupsResponse {
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

    fn describe_configs(&self, r: DescribeConfigsRequest, version: i16) -> DescribeConfigsResponse {
        use describe_configs_response::{DescribeConfigsResourceResult, DescribeConfigsResult};
        let mut resp = DescribeConfigsResponse::default();
        let defaults = TopicConfig::default();
        for res in r.resources {
            let mut out = DescribeConfigsResult::default();
            out.resource_type = res.resource_type;
            out.resource_name = res.resource_name.clone();
            let entries: Vec<(&str, String, bool)> = match res.resource_type {
                RESOURCE_TOPIC if !self.may_see(res.resource_name.as_str()) => {
                    out.error_code = ResponseError::TopicAuthorizationFailed.code();
                    Vec::new()
                }
                RESOURCE_TOPIC => match self.broker.topic(res.resource_name.as_str()) {
                    Some(t) => {
                        let d = defaults.entries();
                        t.config()
                            .entries()
                            .into_iter()
                            .map(|(k, v)| {
                                let is_default = d.iter().any(|(dk, dv)| *dk == k && *dv == v);
                                (k, v, is_default)
                            })
                            .collect()
                    }
                    None => {
                        out.error_code = ResponseError::UnknownTopicOrPartition.code();
                        out.error_message = Some(str_bytes(&format!(
                            "no topic '{}'",
                            res.resource_name.as_str()
                        )));
                        Vec::new()
                    }
                },
                // this broker's settings that clients look at, read-only
                RESOURCE_BROKER => vec![
                    (
                        "auto.create.topics.enable",
                        self.cfg.auto_create_topics.to_string(),
                        true,
                    ),
                    (
                        "num.partitions",
                        self.cfg.default_partitions.to_string(),
                        true,
                    ),
                    (
                        "socket.request.max.bytes",
                        self.cfg.max_request_bytes.to_string(),
                        true,
                    ),
                ],
                other => {
                    out.error_code = ResponseError::InvalidRequest.code();
                    out.error_message = Some(str_bytes(&format!(
                        "resource type {other} is not supported"
                    )));
                    Vec::new()
                }
            };
            let wanted = res.configuration_keys.as_ref();
            out.configs = entries
                .into_iter()
                .filter(|(k, _, _)| wanted.is_none_or(|w| w.iter().any(|x| x.as_str() == *k)))
                .map(|(k, v, is_default)| {
                    let mut c = DescribeConfigsResourceResult::default();
                    c.name = str_bytes(k);
                    c.value = Some(str_bytes(&v));
                    c.read_only = res.resource_type == RESOURCE_BROKER;
                    // 1: topic config, 4: static broker config, 5: default
                    c.config_source = match (res.resource_type, is_default) {
                        (RESOURCE_BROKER, _) => 4,
                        (_, true) => 5,
                        _ => 1,
                    };
                    if version >= 3 {
                        // 2: string, 5: long, 1: boolean, 3: int
                        c.config_type = match k {
                            "cleanup.policy" => 2,
                            "auto.create.topics.enable" => 1,
                            "num.partitions" | "socket.request.max.bytes" => 3,
                            _ => 5,
                        };
                    }
                    c
                })
                .collect();
            resp.results.push(out);
        }
        resp
    }

    /// Apply config changes to a topic: `ops` are (name, op, value) with Kafka's operations
    /// (0 set, 1 delete = back to the default). `replace` starts from the defaults
    /// (AlterConfigs) instead of the current settings (IncrementalAlterConfigs).
    fn change_topic_config(
        &self,
        resource_type: i8,
        name: &str,
        ops: &[(String, i8, Option<String>)],
        replace: bool,
        validate_only: bool,
    ) -> (i16, Option<String>) {
        if resource_type != RESOURCE_TOPIC {
            return (
                ResponseError::InvalidRequest.code(),
                Some(format!(
                    "only topic configs can be changed (resource type {resource_type})"
                )),
            );
        }
        if !self.allowed(eddy_broker::Access::Configure, "topic", name) {
            return (
                ResponseError::TopicAuthorizationFailed.code(),
                Some(format!("configure access to topic '{name}' refused")),
            );
        }
        let Some(topic) = self.broker.topic(name) else {
            return (
                ResponseError::UnknownTopicOrPartition.code(),
                Some(format!("no topic '{name}'")),
            );
        };
        let mut config = if replace {
            TopicConfig::default()
        } else {
            topic.config()
        };
        for (k, op, v) in ops {
            let r = match op {
                0 => config.set(k, v.as_deref()),
                1 => config.set(k, None),
                _ => {
                    return (
                        ResponseError::InvalidRequest.code(),
                        Some(format!(
                            "operation {op} on '{k}' is not supported (only set and delete)"
                        )),
                    )
                }
            };
            if let Err(e) = r {
                return (ResponseError::InvalidConfig.code(), Some(e.to_string()));
            }
        }
        if validate_only {
            return (0, None);
        }
        match eddy_broker::run_blocking(|| self.broker.set_topic_config(name, config)) {
            Ok(()) => (0, None),
            Err(e) => (code(&e), Some(e.to_string())),
        }
    }

    fn alter_configs(&self, r: AlterConfigsRequest) -> AlterConfigsResponse {
        let mut resp = AlterConfigsResponse::default();
        for res in r.resources {
            let ops: Vec<(String, i8, Option<String>)> = res
                .configs
                .iter()
                .map(|c| {
                    (
                        c.name.to_string(),
                        0,
                        c.value.as_ref().map(|v| v.to_string()),
                    )
                })
                .collect();
            let (err, msg) = self.change_topic_config(
                res.resource_type,
                res.resource_name.as_str(),
                &ops,
                true,
                r.validate_only,
            );
            let mut out = alter_configs_response::AlterConfigsResourceResponse::default();
            out.error_code = err;
            out.error_message = msg.as_deref().map(str_bytes);
            out.resource_type = res.resource_type;
            out.resource_name = res.resource_name;
            resp.responses.push(out);
        }
        resp
    }

    fn incremental_alter_configs(
        &self,
        r: IncrementalAlterConfigsRequest,
    ) -> IncrementalAlterConfigsResponse {
        let mut resp = IncrementalAlterConfigsResponse::default();
        for res in r.resources {
            let ops: Vec<(String, i8, Option<String>)> = res
                .configs
                .iter()
                .map(|c| {
                    (
                        c.name.to_string(),
                        c.config_operation,
                        c.value.as_ref().map(|v| v.to_string()),
                    )
                })
                .collect();
            let (err, msg) = self.change_topic_config(
                res.resource_type,
                res.resource_name.as_str(),
                &ops,
                false,
                r.validate_only,
            );
            let mut out =
                incremental_alter_configs_response::AlterConfigsResourceResponse::default();
            out.error_code = err;
            out.error_message = msg.as_deref().map(str_bytes);
            out.resource_type = res.resource_type;
            out.resource_name = res.resource_name;
            resp.responses.push(out);
        }
        resp
    }

    fn sasl_handshake(&self, r: SaslHandshakeRequest) -> SaslHandshakeResponse {
        let mut resp = SaslHandshakeResponse::default();
        resp.mechanisms = vec![str_bytes("PLAIN")];
        if r.mechanism.as_str() == "PLAIN" {
            *self.sasl_mechanism.lock() = Some("PLAIN".into());
        } else {
            resp.error_code = ResponseError::UnsupportedSaslMechanism.code();
        }
        resp
    }

    fn sasl_authenticate(&self, r: SaslAuthenticateRequest) -> SaslAuthenticateResponse {
        let mut resp = SaslAuthenticateResponse::default();
        // Kafka closes the connection after a failed authentication (the caller does)
        let fail = |resp: &mut SaslAuthenticateResponse, msg: String| {
            resp.error_code = ResponseError::SaslAuthenticationFailed.code();
            resp.error_message = Some(str_bytes(&msg));
        };
        if self.sasl_mechanism.lock().is_none() {
            resp.error_code = ResponseError::IllegalSaslState.code();
            resp.error_message = Some(str_bytes("SaslAuthenticate before SaslHandshake"));
            return resp;
        }
        // PLAIN: authzid NUL authcid NUL password
        let parts: Vec<&[u8]> = r.auth_bytes.split(|b| *b == 0).collect();
        if parts.len() != 3 {
            fail(&mut resp, "malformed SASL/PLAIN response".into());
            return resp;
        }
        let user = String::from_utf8_lossy(parts[1]).into_owned();
        let pass = String::from_utf8_lossy(parts[2]).into_owned();
        match self.broker.authenticate(&user, &pass, self.loopback) {
            Ok(()) => {
                if let Some(info) = &self.info {
                    info.set_user(&user);
                }
                self.granted.lock().clear();
                *self.user.lock() = Some(user)
            }
            Err(e) => {
                tracing::warn!(peer = %self.peer, user, "kafka authentication failed: {e}");
                fail(&mut resp, format!("Authentication failed: {e}"));
            }
        }
        resp
    }

    fn describe_cluster(
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

    fn create_partitions(&self, r: CreatePartitionsRequest) -> CreatePartitionsResponse {
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
