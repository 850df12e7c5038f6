//! The Kafka APIs Eddy answers, each mapped onto the broker's topics, one file per family:
//! `produce.rs`, `fetch.rs` (and ListOffsets), `metadata.rs`, `topics.rs`, `configs.rs`,
//! `groups.rs`, `sasl.rs`. This file holds what they share: the supported versions, the
//! per-connection [`Handler`] with its permission checks, the dispatch of a request to its
//! family, and the one place broker errors become Kafka error codes ([`code`]).

mod configs;
mod fetch;
mod groups;
mod metadata;
mod produce;
mod sasl;
mod topics;

use std::sync::Arc;

use eddy_broker::{Broker, BrokerError, Log, Topic, TopicConfig};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;

use crate::budget::{Budget, Global, Held};
use crate::groups::Groups;
use crate::producers::Producers;
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
pub(super) const MAX_FETCH_BYTES: usize = 55 << 20;
/// Largest request while a SASL login is expected or under way (Kafka's
/// `sasl.server.max.receive.size`).
pub(crate) const MAX_SASL_REQUEST_BYTES: usize = 512 << 10;
/// Longest offset-commit metadata (Kafka's `offset.metadata.max.bytes`).
pub(super) const MAX_COMMIT_METADATA: usize = 4096;

/// DescribeConfigs resource types.
pub(super) const RESOURCE_TOPIC: i8 = 2;
pub(super) const RESOURCE_BROKER: i8 = 4;

/// The version range Eddy answers for an API, if any.
pub(crate) fn supported(api: ApiKey) -> Option<(i16, i16)> {
    APIS.iter()
        .find(|(k, _, _)| *k == api)
        .map(|(_, lo, hi)| (*lo, *hi))
}

pub(super) fn api_keys() -> Vec<ApiVersion> {
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
pub(super) fn code(e: &BrokerError) -> i16 {
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

pub(super) fn str_bytes(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_owned())
}

pub(super) fn topic_name(s: &str) -> TopicName {
    TopicName(str_bytes(s))
}

pub(super) fn uuid(t: &Topic) -> uuid::Uuid {
    uuid::Uuid::from_bytes(t.id)
}

/// What a request gets.
pub(crate) enum Answer {
    /// A response.
    Reply(Box<Reply>),
    /// None is due (produce with acks=0).
    Nothing,
    /// No answer, and the connection closes: an acks=0 produce failed (the reason).
    Close(String),
    /// No answer: the connection is closing (its writer is gone).
    Closing,
}

/// A produce to a replicated partition waiting for its commit: the future gives the base
/// offset or an error code and message, for partition `partition` of topic `topic` (indexes in
/// the response).
pub(crate) struct Commit {
    pub(crate) topic: usize,
    pub(crate) partition: usize,
    pub(crate) result: CommitFuture,
}

/// A replicated produce's outcome: its base offset, or a Kafka error code and message.
pub(crate) type CommitFuture =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<u64, (i16, String)>> + Send>>;

/// A response, and the logs it may only be sent after (acks=all, offset commits).
pub(crate) struct Reply {
    pub(crate) response: ResponseKind,
    pub(crate) waits: Vec<(Arc<Log>, u64)>,
    /// Produces to replicated partitions: the response waits for their commits.
    pub(crate) commits: Vec<Commit>,
    /// Close the connection after this response (failed SASL login).
    pub(crate) close: bool,
    /// The response bytes set aside for it before it was built (a fetch).
    pub(crate) held: Option<Held>,
}

impl From<ResponseKind> for Reply {
    fn from(response: ResponseKind) -> Self {
        Reply {
            response,
            waits: Vec::new(),
            commits: Vec::new(),
            close: false,
            held: None,
        }
    }
}

/// A replicated produce's commit is known: its partition's answer says so.
pub(crate) fn apply_commit(
    resp: &mut ResponseKind,
    topic: usize,
    partition: usize,
    result: Result<u64, (i16, String)>,
    version: i16,
) {
    let ResponseKind::Produce(r) = resp else {
        return;
    };
    let Some(p) = r
        .responses
        .get_mut(topic)
        .and_then(|t| t.partition_responses.get_mut(partition))
    else {
        return;
    };
    match result {
        Ok(base) => p.base_offset = base as i64,
        Err((code, msg)) => {
            p.error_code = code;
            p.base_offset = -1;
            if version >= 8 {
                p.error_message = Some(str_bytes(&msg));
            }
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
    /// The connection's span (the SASL user is recorded in it).
    pub(crate) span: tracing::Span,
    /// The bounds on the response bytes it holds.
    pub(crate) budget: Budget,
    /// The cluster this node is part of (None: alone).
    pub(crate) cluster: Option<Arc<eddy_cluster::Cluster>>,
    /// An OffsetCommit's checked offsets, on their way to the metadata group (cluster only).
    #[allow(clippy::type_complexity)]
    pending_offsets:
        parking_lot::Mutex<Option<(String, Vec<(String, i32, eddy_broker::Committed)>)>>,
}

/// What every connection shares.
pub(crate) struct Shared {
    pub(crate) producers: Arc<Producers>,
    pub(crate) groups: Arc<Groups>,
    /// The bound on response bytes held for all connections together.
    pub(crate) buffered: Global,
    /// The bound on bytes of large requests being received, over all connections.
    pub(crate) receiving: Arc<tokio::sync::Semaphore>,
    /// The cluster this node is part of (None: alone).
    pub(crate) cluster: Option<Arc<eddy_cluster::Cluster>>,
}

impl Handler {
    pub(crate) fn new(
        broker: Broker,
        cfg: Arc<KafkaConfig>,
        shared: &Shared,
        peer: std::net::SocketAddr,
    ) -> Self {
        let budget = Budget::new(&shared.buffered, cfg.max_buffered_per_connection);
        Handler {
            broker,
            cfg,
            budget,
            producers: shared.producers.clone(),
            groups: shared.groups.clone(),
            peer: format!("/{}", peer.ip()),
            loopback: peer.ip().is_loopback(),
            sasl_mechanism: Default::default(),
            user: Default::default(),
            info: None,
            anonymous: std::sync::OnceLock::new(),
            granted: Default::default(),
            span: tracing::Span::none(),
            cluster: shared.cluster.clone(),
            pending_offsets: Default::default(),
        }
    }

    /// The group of a replicated partition, when this node is in a cluster and the topic is
    /// replicated: Some(None) when this node holds no replica of it.
    pub(crate) fn replicated(
        &self,
        topic: &str,
        partition: i32,
    ) -> Option<Option<Arc<eddy_cluster::Group>>> {
        let c = self.cluster.as_ref()?;
        c.is_replicated(topic).then(|| c.group(topic, partition))
    }

    /// NOT_LEADER_OR_FOLLOWER when a replicated partition is not led by this node.
    pub(crate) fn leader_error(&self, topic: &str, partition: i32) -> Option<i16> {
        match self.replicated(topic, partition) {
            Some(Some(g)) if g.is_leader() => None,
            Some(_) => Some(ResponseError::NotLeaderOrFollower.code()),
            None => None,
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

    /// Who this connection acts as: its SASL user, else [`Handler::anonymous_user`].
    pub(crate) fn principal(&self) -> Option<String> {
        self.user.lock().clone().or_else(|| self.anonymous_user())
    }

    /// Wait while a memory or disk alarm is raised.
    async fn wait_unblocked(&self) {
        let mut alarms = self.broker.alarms();
        let mut told = false;
        loop {
            let a = *alarms.borrow_and_update();
            if !a.blocked() {
                return;
            }
            if !told {
                told = true;
                let what = if a.memory { "memory" } else { "disk" };
                tracing::warn!("producer held: the {what} alarm is raised");
            }
            if alarms.changed().await.is_err() {
                return;
            }
        }
    }

    /// Whether a SASL login is expected or under way: no user logged in, and either a
    /// SaslHandshake was made or the client may not act without a login. Requests are then
    /// bounded by [`MAX_SASL_REQUEST_BYTES`] (Kafka's `sasl.server.max.receive.size`).
    pub(crate) fn login_pending(&self) -> bool {
        self.user.lock().is_none()
            && (self.sasl_mechanism.lock().is_some() || self.anonymous_user().is_none())
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
        let ok = self.principal().is_some_and(|u| {
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

    /// Answer one request.
    pub(crate) async fn handle(
        &self,
        request: RequestKind,
        version: i16,
        header: &RequestHeader,
    ) -> Answer {
        let client_id = header
            .client_id
            .as_ref()
            .map(|c| c.to_string())
            .unwrap_or_default();
        let reply: Reply = match request {
            RequestKind::Produce(r) => {
                // a resource alarm holds producers as it holds AMQP publishers: the request
                // waits (and the connection's next ones unread) until it clears
                self.wait_unblocked().await;
                let acks = r.acks;
                let (resp, waits, commits) = self.produce(r, version).await;
                if acks == 0 {
                    // nobody waits for these commits, but the producers' state settles
                    for c in commits {
                        tokio::spawn(c.result);
                    }
                    // no answer is due; a failure closes the connection so that the client
                    // notices, as Kafka does
                    let failed = resp.responses.iter().find_map(|t| {
                        t.partition_responses
                            .iter()
                            .find(|p| p.error_code != 0)
                            .map(|p| format!("{}-{}: error {}", t.name.0, p.index, p.error_code))
                    });
                    return match failed {
                        Some(why) => Answer::Close(why),
                        None => Answer::Nothing,
                    };
                }
                Reply {
                    response: ResponseKind::Produce(resp),
                    waits,
                    commits,
                    close: false,
                    held: None,
                }
            }
            RequestKind::OffsetCommit(r) if self.cluster.is_some() => {
                let resp = match self.coordinator_error() {
                    Some(code) => {
                        let (mut resp, _) = self.offset_commit(r);
                        self.pending_offsets.lock().take();
                        for t in &mut resp.topics {
                            for p in &mut t.partitions {
                                p.error_code = code;
                            }
                        }
                        resp
                    }
                    None => self.offset_commit_replicated(r).await,
                };
                Reply::from(ResponseKind::OffsetCommit(resp))
            }
            RequestKind::JoinGroup(_)
            | RequestKind::SyncGroup(_)
            | RequestKind::Heartbeat(_)
            | RequestKind::LeaveGroup(_)
            | RequestKind::OffsetFetch(_)
                if self.coordinator_error().is_some() =>
            {
                let code = self.coordinator_error().unwrap_or_default();
                Reply::from(not_coordinator(&request, code, version))
            }
            RequestKind::OffsetCommit(r) => {
                let (resp, waits) = self.offset_commit(r);
                Reply {
                    response: ResponseKind::OffsetCommit(resp),
                    waits,
                    commits: Vec::new(),
                    close: false,
                    held: None,
                }
            }
            RequestKind::Fetch(r) => match self.fetch(r, version).await {
                Some((resp, held)) => Reply {
                    response: ResponseKind::Fetch(resp),
                    waits: Vec::new(),
                    commits: Vec::new(),
                    close: false,
                    held: Some(held),
                },
                None => return Answer::Closing,
            },
            RequestKind::SaslAuthenticate(r) => {
                let resp = self.sasl_authenticate(r);
                let close = resp.error_code != 0;
                Reply {
                    response: ResponseKind::SaslAuthenticate(resp),
                    waits: Vec::new(),
                    commits: Vec::new(),
                    close,
                    held: None,
                }
            }
            other => match self.answer(other, version, client_id).await {
                Some(r) => r.into(),
                None => return Answer::Nothing,
            },
        };
        Answer::Reply(Box::new(reply))
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
            RequestKind::ListOffsets(r) => ResponseKind::ListOffsets(self.list_offsets(r, version)),
            RequestKind::CreateTopics(r) => {
                ResponseKind::CreateTopics(self.create_topics(r, version).await)
            }
            RequestKind::DeleteTopics(r) => {
                ResponseKind::DeleteTopics(self.delete_topics(r, version).await)
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
        if let Some(c) = &self.cluster {
            // created through the metadata group in the background; the client asks again
            // (Kafka answers a first auto-creating request the same way)
            if eddy_broker::topic::check_topic_name(name).is_err() {
                return Err(ResponseError::InvalidTopicException.code());
            }
            let (c, name, partitions) = (c.clone(), name.to_owned(), self.cfg.default_partitions);
            tokio::spawn(async move {
                if let Err(e) = c
                    .create_topic(&name, partitions, None, &TopicConfig::default())
                    .await
                {
                    tracing::debug!(topic = %name, "auto-creating a replicated topic: {e}");
                }
            });
            return Err(ResponseError::LeaderNotAvailable.code());
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
}

/// A group API's answer from a node that does not coordinate groups: only the error.
fn not_coordinator(request: &RequestKind, code: i16, version: i16) -> ResponseKind {
    match request {
        RequestKind::JoinGroup(_) => {
            let mut r = JoinGroupResponse::default();
            r.error_code = code;
            r.generation_id = -1;
            ResponseKind::JoinGroup(r)
        }
        RequestKind::SyncGroup(_) => {
            let mut r = SyncGroupResponse::default();
            r.error_code = code;
            ResponseKind::SyncGroup(r)
        }
        RequestKind::Heartbeat(_) => {
            let mut r = HeartbeatResponse::default();
            r.error_code = code;
            ResponseKind::Heartbeat(r)
        }
        RequestKind::LeaveGroup(_) => {
            let mut r = LeaveGroupResponse::default();
            r.error_code = code;
            ResponseKind::LeaveGroup(r)
        }
        RequestKind::OffsetFetch(req) => {
            let mut r = OffsetFetchResponse::default();
            if version >= 8 {
                r.groups = req
                    .groups
                    .iter()
                    .map(|g| {
                        let mut x = offset_fetch_response::OffsetFetchResponseGroup::default();
                        x.group_id = g.group_id.clone();
                        x.error_code = code;
                        x
                    })
                    .collect();
            } else {
                r.error_code = code;
            }
            ResponseKind::OffsetFetch(r)
        }
        _ => unreachable!("only group APIs are answered so"),
    }
}
