//! The in-process fixture for the Kafka front end's tests: a real broker on a temp dir, the
//! Kafka handler serving connections made with `eddy_net::Conn::in_memory` (no socket, no
//! child process), and a small client that frames requests with `kafka-protocol` and reads
//! each response by its correlation id under a deadline.

#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use eddy_broker::{Broker, BrokerConfig};
use eddy_kafka::{Kafka, KafkaConfig};
use eddy_net::Handler as _;
use eddy_records::{BatchBuilder, BatchHeader};
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::fetch_response::PartitionData;
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::produce_response::PartitionProduceResponse;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, Request, StrBytes};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How long any one response (or the end of a connection) may take before a test fails.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// A broker on a temp dir with the Kafka front end over it.
pub struct Fixture {
    pub broker: Broker,
    pub kafka: Arc<Kafka>,
    dir: tempfile::TempDir,
    /// Held so the connections' shutdown signal stays quiet until the fixture goes.
    shutdown: watch::Sender<bool>,
}

impl Fixture {
    /// The default Kafka settings (auto-creation on, one partition per new topic).
    pub fn new() -> Fixture {
        Fixture::with(KafkaConfig::default())
    }

    /// Must be called inside a tokio runtime (the front end starts its group sweep).
    pub fn with(config: KafkaConfig) -> Fixture {
        Fixture::with_broker(config, |_| {})
    }

    /// As [`Fixture::with`], with the broker's configuration changed by `tune`.
    pub fn with_broker(config: KafkaConfig, tune: impl FnOnce(&mut BrokerConfig)) -> Fixture {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut broker_config = BrokerConfig {
            data_dir: dir.path().to_owned(),
            ..Default::default()
        };
        tune(&mut broker_config);
        let broker = Broker::open(broker_config).expect("broker opens");
        let kafka = Kafka::new(broker.clone(), config);
        let (shutdown, _) = watch::channel(false);
        Fixture {
            broker,
            kafka,
            dir,
            shutdown,
        }
    }

    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    /// A new connection (from 127.0.0.1, so it acts as `guest` until it logs in).
    pub fn connect(&self) -> Client {
        let (conn, io) = eddy_net::Conn::in_memory(self.shutdown.subscribe());
        let task = tokio::spawn(self.kafka.clone().handle(conn));
        Client {
            io,
            corr: 0,
            client_id: Some("mapping-test".into()),
            task,
        }
    }

    /// A user with a password and the given permissions (configure, write, read patterns)
    /// on the default vhost; `None`: no permissions at all.
    pub fn add_user(&self, name: &str, password: &str, perms: Option<(&str, &str, &str)>) {
        self.broker
            .users()
            .put(name, Some(password), None, Vec::new())
            .expect("user created");
        if let Some((configure, write, read)) = perms {
            self.broker
                .users()
                .set_permission(eddy_broker::Permission {
                    user: name.into(),
                    vhost: "/".into(),
                    configure: configure.into(),
                    write: write.into(),
                    read: read.into(),
                })
                .expect("permission set");
        }
    }
}

/// One client connection, its server end served by the Kafka handler in a task.
pub struct Client {
    io: DuplexStream,
    corr: i32,
    /// The client id sent in request headers.
    pub client_id: Option<String>,
    task: JoinHandle<()>,
}

/// A request frame: size, header (api key, version, correlation id, client id), body.
pub fn frame<R: Request>(version: i16, corr: i32, client_id: Option<&str>, req: &R) -> Vec<u8> {
    let mut out = BytesMut::new();
    out.put_i32(0);
    let mut h = RequestHeader::default();
    h.request_api_key = R::KEY;
    h.request_api_version = version;
    h.correlation_id = corr;
    h.client_id = client_id.map(|c| StrBytes::from_string(c.to_owned()));
    h.encode(&mut out, R::header_version(version))
        .expect("request header encodes");
    req.encode(&mut out, version).expect("request encodes");
    let len = (out.len() - 4) as i32;
    out[..4].copy_from_slice(&len.to_be_bytes());
    out.to_vec()
}

/// A frame whose header (v1: api key, version, correlation id, client id) and body are given
/// as they are, for requests `kafka-protocol` would refuse to encode.
pub fn raw_frame(api_key: i16, version: i16, corr: i32, body: &[u8]) -> Vec<u8> {
    let mut out = BytesMut::new();
    out.put_i32(0);
    out.put_i16(api_key);
    out.put_i16(version);
    out.put_i32(corr);
    out.put_i16(4);
    out.put_slice(b"test");
    out.put_slice(body);
    let len = (out.len() - 4) as i32;
    out[..4].copy_from_slice(&len.to_be_bytes());
    out.to_vec()
}

impl Client {
    /// Send a request; returns its correlation id.
    pub async fn send<R: Request>(&mut self, version: i16, req: &R) -> i32 {
        self.corr += 1;
        let bytes = frame(version, self.corr, self.client_id.as_deref(), req);
        self.send_raw(&bytes).await;
        self.corr
    }

    /// A correlation id for a hand-made frame (the next one `send` would use).
    pub fn next_corr(&mut self) -> i32 {
        self.corr += 1;
        self.corr
    }

    /// Write bytes; false once the server has closed the connection.
    pub async fn try_send_raw(&mut self, bytes: &[u8]) -> bool {
        tokio::time::timeout(DEADLINE, self.io.write_all(bytes))
            .await
            .expect("the server takes the request within the deadline")
            .is_ok()
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        tokio::time::timeout(DEADLINE, self.io.write_all(bytes))
            .await
            .expect("the server takes the request within the deadline")
            .expect("writing to the in-memory connection");
    }

    /// The next response frame (without its size), or None once the server closed the
    /// connection. Panics if neither comes within the deadline.
    pub async fn read_frame(&mut self) -> Option<Bytes> {
        let read = async {
            let mut size = [0u8; 4];
            if self.io.read_exact(&mut size).await.is_err() {
                return None;
            }
            let size = i32::from_be_bytes(size);
            assert!(size >= 4, "response size {size}");
            let mut body = vec![0u8; size as usize];
            self.io
                .read_exact(&mut body)
                .await
                .expect("a response cut short");
            Some(Bytes::from(body))
        };
        tokio::time::timeout(DEADLINE, read)
            .await
            .expect("no response (nor close) within the deadline")
    }

    /// The response to the request `corr` (which must be the next one to arrive), decoded
    /// as `R::Response` of `version`; every byte of it must be read.
    pub async fn recv<R: Request>(&mut self, version: i16, corr: i32) -> R::Response {
        let mut body = self
            .read_frame()
            .await
            .unwrap_or_else(|| panic!("connection closed instead of answering request {corr}"));
        let header = ResponseHeader::decode(&mut body, R::Response::header_version(version))
            .expect("response header decodes");
        assert_eq!(
            header.correlation_id, corr,
            "responses come in request order"
        );
        let resp = R::Response::decode(&mut body, version).expect("response decodes");
        assert!(
            !body.has_remaining(),
            "{} bytes after the response",
            body.remaining()
        );
        resp
    }

    /// Send a request and read its response.
    pub async fn call<R: Request>(&mut self, version: i16, req: &R) -> R::Response {
        let corr = self.send(version, req).await;
        self.recv::<R>(version, corr).await
    }

    /// The server closes the connection (with nothing more to say) and its handler ends.
    pub async fn expect_closed(mut self) {
        if let Some(b) = self.read_frame().await {
            panic!(
                "expected the connection to close, got a {}-byte response",
                b.len()
            );
        }
        tokio::time::timeout(DEADLINE, &mut self.task)
            .await
            .expect("the connection's handler ends")
            .expect("the connection's handler did not panic");
    }

    // ---- the requests most tests make ----

    pub async fn create_topic(&mut self, name: &str, partitions: i32) -> i16 {
        let r = self
            .call(7, &create_topics(&[creatable(name, partitions, 1)]))
            .await;
        r.topics[0].error_code
    }

    /// Produce one partition's records (v9); None for acks=0.
    pub async fn produce(
        &mut self,
        acks: i16,
        topic: &str,
        partition: i32,
        records: Bytes,
    ) -> PartitionProduceResponse {
        let req = produce(acks, topic, partition, records);
        let r = self.call(9, &req).await;
        assert_eq!(r.responses.len(), 1);
        assert_eq!(r.responses[0].name.0.as_str(), topic);
        assert_eq!(r.responses[0].partition_responses.len(), 1);
        r.responses[0].partition_responses[0].clone()
    }

    /// Fetch one partition (v12) without waiting.
    pub async fn fetch(&mut self, topic: &str, partition: i32, offset: i64) -> PartitionData {
        let r = self.call(12, &fetch(topic, partition, offset, 0, 1)).await;
        assert_eq!(r.error_code, 0);
        assert_eq!(r.responses.len(), 1);
        assert_eq!(r.responses[0].partitions.len(), 1);
        r.responses[0].partitions[0].clone()
    }

    /// ListOffsets (v6) for one partition: (error, offset, timestamp).
    pub async fn list_offset(&mut self, topic: &str, partition: i32, ts: i64) -> (i16, i64, i64) {
        let r = self.call(6, &list_offsets(topic, partition, ts)).await;
        let p = &r.topics[0].partitions[0];
        (p.error_code, p.offset, p.timestamp)
    }
}

// ---- request builders ----

pub fn topic_name(s: &str) -> TopicName {
    TopicName(StrBytes::from_string(s.to_owned()))
}

pub fn group_id(s: &str) -> GroupId {
    GroupId(StrBytes::from_string(s.to_owned()))
}

pub fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_owned())
}

/// One uncompressed batch (no producer id) holding `values`, the i-th record at timestamp
/// `ts + i`.
pub fn batch(ts: i64, values: &[&[u8]]) -> Bytes {
    let mut b = BatchBuilder::new();
    for (i, v) in values.iter().enumerate() {
        b.push(ts + i as i64, i as i64, Some(b"k"), Some(v), &[]);
    }
    Bytes::from(b.finish())
}

/// A batch of `n` records from idempotent producer `pid`/`epoch` starting at sequence `seq`.
pub fn idempotent_batch(pid: i64, epoch: i16, seq: i32, n: i32) -> Bytes {
    let mut b = BatchBuilder::new();
    for i in 0..n {
        b.push(1_000, i as i64, None, Some(&[b'a' + i as u8]), &[]);
    }
    let mut b = b.finish();
    let mut h = BatchHeader::new(&mut b).expect("a header");
    h.set_producer_id(pid);
    h.set_producer_epoch(epoch);
    h.set_base_sequence(seq);
    h.update_crc();
    Bytes::from(b)
}

pub fn produce(acks: i16, topic: &str, partition: i32, records: Bytes) -> ProduceRequest {
    let mut pd = PartitionProduceData::default();
    pd.index = partition;
    pd.records = Some(records);
    let mut td = TopicProduceData::default();
    td.name = topic_name(topic);
    td.partition_data = vec![pd];
    let mut p = ProduceRequest::default();
    p.acks = acks;
    p.timeout_ms = 5_000;
    p.topic_data = vec![td];
    p
}

pub fn fetch(
    topic: &str,
    partition: i32,
    offset: i64,
    max_wait_ms: i32,
    min_bytes: i32,
) -> FetchRequest {
    let mut fp = FetchPartition::default();
    fp.partition = partition;
    fp.fetch_offset = offset;
    fp.partition_max_bytes = 1 << 20;
    let mut ft = FetchTopic::default();
    ft.topic = topic_name(topic);
    ft.partitions = vec![fp];
    let mut f = FetchRequest::default();
    f.max_wait_ms = max_wait_ms;
    f.min_bytes = min_bytes;
    f.topics = vec![ft];
    f
}

pub fn list_offsets(topic: &str, partition: i32, ts: i64) -> ListOffsetsRequest {
    let mut lp = ListOffsetsPartition::default();
    lp.partition_index = partition;
    lp.timestamp = ts;
    let mut lt = ListOffsetsTopic::default();
    lt.name = topic_name(topic);
    lt.partitions = vec![lp];
    let mut l = ListOffsetsRequest::default();
    l.replica_id = BrokerId(-1);
    l.topics = vec![lt];
    l
}

pub fn creatable(name: &str, partitions: i32, replication: i16) -> CreatableTopic {
    let mut ct = CreatableTopic::default();
    ct.name = topic_name(name);
    ct.num_partitions = partitions;
    ct.replication_factor = replication;
    ct
}

pub fn create_topics(topics: &[CreatableTopic]) -> CreateTopicsRequest {
    let mut r = CreateTopicsRequest::default();
    r.topics = topics.to_vec();
    r.timeout_ms = 5_000;
    r
}

/// Metadata for these topics (None: all), auto-creation as asked (v4+).
pub fn metadata(topics: Option<&[&str]>, auto_create: bool) -> MetadataRequest {
    let mut m = MetadataRequest::default();
    m.topics = topics.map(|ts| {
        ts.iter()
            .map(|t| {
                let mut x = metadata_request::MetadataRequestTopic::default();
                x.name = Some(topic_name(t));
                x
            })
            .collect()
    });
    m.allow_auto_topic_creation = auto_create;
    m
}

/// The SASL/PLAIN login bytes.
pub fn plain(user: &str, password: &str) -> Bytes {
    Bytes::from(format!("\0{user}\0{password}"))
}

// ---- consumer groups ----

/// A JoinGroup (session and rebalance timeouts of 30 s, protocol type `consumer`, one
/// protocol `range` with metadata `meta`).
pub fn join_group(group: &str, member: &str) -> JoinGroupRequest {
    let mut p = join_group_request::JoinGroupRequestProtocol::default();
    p.name = s("range");
    p.metadata = Bytes::from_static(b"meta");
    let mut j = JoinGroupRequest::default();
    j.group_id = group_id(group);
    j.session_timeout_ms = 30_000;
    j.rebalance_timeout_ms = 30_000;
    j.member_id = s(member);
    j.protocol_type = s("consumer");
    j.protocols = vec![p];
    j
}

pub fn sync_group(
    group: &str,
    generation: i32,
    member: &str,
    assign: &[(&str, &[u8])],
) -> SyncGroupRequest {
    let mut r = SyncGroupRequest::default();
    r.group_id = group_id(group);
    r.generation_id = generation;
    r.member_id = s(member);
    r.assignments = assign
        .iter()
        .map(|(m, a)| {
            let mut x = sync_group_request::SyncGroupRequestAssignment::default();
            x.member_id = s(m);
            x.assignment = Bytes::copy_from_slice(a);
            x
        })
        .collect();
    r
}

pub fn heartbeat(group: &str, generation: i32, member: &str) -> HeartbeatRequest {
    let mut r = HeartbeatRequest::default();
    r.group_id = group_id(group);
    r.generation_id = generation;
    r.member_id = s(member);
    r
}

/// An OffsetCommit of one partition.
pub fn offset_commit(
    group: &str,
    generation: i32,
    member: &str,
    topic: &str,
    partition: i32,
    offset: i64,
    metadata: &str,
) -> OffsetCommitRequest {
    let mut p = offset_commit_request::OffsetCommitRequestPartition::default();
    p.partition_index = partition;
    p.committed_offset = offset;
    p.committed_metadata = Some(s(metadata));
    let mut t = offset_commit_request::OffsetCommitRequestTopic::default();
    t.name = topic_name(topic);
    t.partitions = vec![p];
    let mut r = OffsetCommitRequest::default();
    r.group_id = group_id(group);
    r.generation_id_or_member_epoch = generation;
    r.member_id = s(member);
    r.topics = vec![t];
    r
}

impl Client {
    /// A new member's way in (JoinGroup v5): MEMBER_ID_REQUIRED with an id, then the join
    /// with it, which completes at once when no other member has to rejoin.
    pub async fn join_new(&mut self, group: &str) -> JoinGroupResponse {
        let first = self.call(5, &join_group(group, "")).await;
        assert_eq!(first.error_code, 79, "MEMBER_ID_REQUIRED");
        assert!(!first.member_id.is_empty());
        let j = self
            .call(5, &join_group(group, first.member_id.as_str()))
            .await;
        assert_eq!(j.error_code, 0);
        assert_eq!(j.member_id, first.member_id);
        j
    }

    pub async fn heartbeat(&mut self, group: &str, generation: i32, member: &str) -> i16 {
        self.call(4, &heartbeat(group, generation, member))
            .await
            .error_code
    }

    /// OffsetCommit v8 of one partition; its error code.
    pub async fn commit(
        &mut self,
        group: &str,
        generation: i32,
        member: &str,
        topic: &str,
        partition: i32,
        offset: i64,
    ) -> i16 {
        let r = self
            .call(
                8,
                &offset_commit(group, generation, member, topic, partition, offset, ""),
            )
            .await;
        r.topics[0].partitions[0].error_code
    }

    /// DescribeGroups v5 of one group: its state.
    pub async fn group_state(&mut self, group: &str) -> String {
        let mut r = DescribeGroupsRequest::default();
        r.groups = vec![group_id(group)];
        let d = self.call(5, &r).await;
        assert_eq!(d.groups[0].error_code, 0);
        d.groups[0].group_state.to_string()
    }
}

impl Client {
    /// SaslHandshake (PLAIN) then SaslAuthenticate (v2); the authentication's error code.
    pub async fn login(&mut self, user: &str, password: &str) -> i16 {
        let mut h = SaslHandshakeRequest::default();
        h.mechanism = s("PLAIN");
        let r = self.call(1, &h).await;
        assert_eq!(r.error_code, 0, "PLAIN is offered");
        let mut a = SaslAuthenticateRequest::default();
        a.auth_bytes = plain(user, password);
        self.call(2, &a).await.error_code
    }
}
