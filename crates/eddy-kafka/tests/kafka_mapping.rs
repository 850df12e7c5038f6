//! The Kafka front end's mapping onto the broker, tested in process: each API's request and
//! response fields against a real broker on a temp dir, over an in-memory connection.
//! (Error codes are `kafka_errors.rs`.)

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use common::*;
use eddy_kafka::KafkaConfig;
use eddy_records::{decode_batch, BatchHeader};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable};

/// What ApiVersions must advertise: (api, min, max).
const ADVERTISED: &[(ApiKey, i16, i16)] = &[
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

fn advertised_sorted() -> Vec<(i16, i16, i16)> {
    let mut v: Vec<(i16, i16, i16)> = ADVERTISED
        .iter()
        .map(|(k, lo, hi)| (*k as i16, *lo, *hi))
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread")]
async fn api_versions_advertises_the_supported_ranges_in_every_version() {
    let f = Fixture::new();
    let mut c = f.connect();
    for version in 0..=3 {
        let mut req = ApiVersionsRequest::default();
        if version >= 3 {
            req.client_software_name = s("eddy-test");
            req.client_software_version = s("1.0");
        }
        let r = c.call(version, &req).await;
        assert_eq!(r.error_code, 0, "v{version}");
        let mut got: Vec<(i16, i16, i16)> = r
            .api_keys
            .iter()
            .map(|a| (a.api_key, a.min_version, a.max_version))
            .collect();
        got.sort();
        assert_eq!(got, advertised_sorted(), "v{version}");
        if version >= 3 {
            assert_eq!(r.finalized_features_epoch, -1);
            assert!(r.supported_features.is_empty());
        }
    }
}

/// A default request of `api` (a produce asks for acks=1 so it is answered).
fn default_request(api: ApiKey) -> RequestKind {
    match api {
        ApiKey::Produce => {
            let mut p = ProduceRequest::default();
            p.acks = 1;
            RequestKind::Produce(p)
        }
        ApiKey::Fetch => RequestKind::Fetch(Default::default()),
        ApiKey::ListOffsets => RequestKind::ListOffsets(Default::default()),
        ApiKey::Metadata => RequestKind::Metadata(Default::default()),
        ApiKey::ApiVersions => RequestKind::ApiVersions(Default::default()),
        ApiKey::CreateTopics => RequestKind::CreateTopics(Default::default()),
        ApiKey::DeleteTopics => RequestKind::DeleteTopics(Default::default()),
        ApiKey::CreatePartitions => RequestKind::CreatePartitions(Default::default()),
        ApiKey::InitProducerId => RequestKind::InitProducerId(Default::default()),
        ApiKey::FindCoordinator => RequestKind::FindCoordinator(Default::default()),
        ApiKey::JoinGroup => RequestKind::JoinGroup(Default::default()),
        ApiKey::SyncGroup => RequestKind::SyncGroup(Default::default()),
        ApiKey::Heartbeat => RequestKind::Heartbeat(Default::default()),
        ApiKey::LeaveGroup => RequestKind::LeaveGroup(Default::default()),
        ApiKey::OffsetCommit => RequestKind::OffsetCommit(Default::default()),
        ApiKey::OffsetFetch => RequestKind::OffsetFetch(Default::default()),
        ApiKey::ListGroups => RequestKind::ListGroups(Default::default()),
        ApiKey::DescribeGroups => RequestKind::DescribeGroups(Default::default()),
        ApiKey::DeleteGroups => RequestKind::DeleteGroups(Default::default()),
        ApiKey::DescribeConfigs => RequestKind::DescribeConfigs(Default::default()),
        ApiKey::AlterConfigs => RequestKind::AlterConfigs(Default::default()),
        ApiKey::IncrementalAlterConfigs => RequestKind::IncrementalAlterConfigs(Default::default()),
        ApiKey::SaslHandshake => RequestKind::SaslHandshake(Default::default()),
        ApiKey::SaslAuthenticate => RequestKind::SaslAuthenticate(Default::default()),
        ApiKey::DescribeCluster => RequestKind::DescribeCluster(Default::default()),
        other => panic!("{other:?} is not advertised"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_advertised_version_of_every_api_is_answered() {
    let f = Fixture::new();
    for (api, min, max) in ADVERTISED {
        for version in [*min, *max] {
            // a connection each: some of these (SaslAuthenticate) close it after answering
            let mut c = f.connect();
            let corr = c.next_corr();
            let mut out = BytesMut::new();
            out.put_i32(0);
            let mut h = RequestHeader::default();
            h.request_api_key = *api as i16;
            h.request_api_version = version;
            h.correlation_id = corr;
            h.client_id = Some(s("every-version"));
            h.encode(&mut out, api.request_header_version(version))
                .unwrap();
            default_request(*api).encode(&mut out, version).unwrap();
            let len = (out.len() - 4) as i32;
            out[..4].copy_from_slice(&len.to_be_bytes());
            c.send_raw(&out).await;
            let mut body = c
                .read_frame()
                .await
                .unwrap_or_else(|| panic!("{api:?} v{version}: closed without an answer"));
            let header =
                ResponseHeader::decode(&mut body, api.response_header_version(version)).unwrap();
            assert_eq!(header.correlation_id, corr, "{api:?} v{version}");
            ResponseKind::decode(*api, &mut body, version)
                .unwrap_or_else(|e| panic!("{api:?} v{version}: {e}"));
            assert!(body.is_empty(), "{api:?} v{version}: bytes left over");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn metadata_lists_the_broker_and_topics_with_their_ids() {
    let f = Fixture::new();
    let mut c = f.connect();
    let created = c.call(7, &create_topics(&[creatable("meta", 3, 1)])).await;
    assert_eq!(created.topics[0].error_code, 0);
    let id = created.topics[0].topic_id;
    assert!(!id.is_nil());
    assert_eq!(
        uuid::Uuid::from_bytes(f.broker.topic("meta").unwrap().id),
        id
    );

    for version in [0, 1, 2, 4, 7, 9, 10, 12] {
        // (v0-v3 have no auto-creation flag: it must keep its default, true)
        let r = c
            .call(version, &metadata(Some(&["meta"]), version < 4))
            .await;
        assert_eq!(r.brokers.len(), 1, "v{version}");
        assert_eq!(r.brokers[0].node_id, BrokerId(0));
        assert_eq!(r.brokers[0].host.as_str(), "127.0.0.1");
        assert_eq!(r.brokers[0].port, 9092);
        if version >= 1 {
            assert_eq!(r.controller_id, BrokerId(0), "v{version}");
        }
        if version >= 2 {
            assert_eq!(r.cluster_id.as_deref(), Some("eddy"), "v{version}");
        }
        assert_eq!(r.topics.len(), 1);
        let t = &r.topics[0];
        assert_eq!(t.error_code, 0, "v{version}");
        assert_eq!(t.name.as_ref().unwrap().0.as_str(), "meta");
        if version >= 10 {
            assert_eq!(t.topic_id, id, "v{version}");
        }
        assert_eq!(t.partitions.len(), 3);
        for (i, p) in t.partitions.iter().enumerate() {
            assert_eq!(p.error_code, 0);
            assert_eq!(p.partition_index, i as i32);
            assert_eq!(p.leader_id, BrokerId(0));
            assert_eq!(p.replica_nodes, vec![BrokerId(0)]);
            assert_eq!(p.isr_nodes, vec![BrokerId(0)]);
            if version >= 7 {
                assert_eq!(p.leader_epoch, 0);
            }
        }
    }

    // by topic id alone (v12): the name comes back
    let mut m = MetadataRequest::default();
    let mut t = metadata_request::MetadataRequestTopic::default();
    t.topic_id = id;
    t.name = None;
    m.topics = Some(vec![t]);
    let r = c.call(12, &m).await;
    assert_eq!(r.topics[0].error_code, 0);
    assert_eq!(r.topics[0].name.as_ref().unwrap().0.as_str(), "meta");
    assert_eq!(r.topics[0].partitions.len(), 3);

    // every topic: null (v1+) or an empty list (v0)
    c.create_topic("another", 1).await;
    let all = c.call(12, &metadata(None, false)).await;
    let names: Vec<&str> = all
        .topics
        .iter()
        .map(|t| t.name.as_ref().unwrap().0.as_str())
        .collect();
    assert_eq!(names, vec!["another", "meta"]);
    let all = c.call(0, &metadata(Some(&[]), true)).await;
    assert_eq!(all.topics.len(), 2);

    // DescribeCluster says the same about the broker
    for version in [0, 1] {
        let d = c.call(version, &DescribeClusterRequest::default()).await;
        assert_eq!(d.error_code, 0);
        assert_eq!(d.cluster_id.as_str(), "eddy");
        assert_eq!(d.controller_id, BrokerId(0));
        assert_eq!(d.brokers.len(), 1);
        assert_eq!(d.brokers[0].broker_id, BrokerId(0));
        assert_eq!(d.brokers[0].host.as_str(), "127.0.0.1");
        assert_eq!(d.brokers[0].port, 9092);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn metadata_creates_unknown_topics_as_the_request_and_the_config_allow() {
    let f = Fixture::with(KafkaConfig {
        default_partitions: 2,
        ..Default::default()
    });
    let mut c = f.connect();
    // v4+: the request decides
    let r = c.call(12, &metadata(Some(&["no-auto"]), false)).await;
    assert_eq!(r.topics[0].error_code, 3, "UNKNOWN_TOPIC_OR_PARTITION");
    assert!(r.topics[0].partitions.is_empty());
    assert!(f.broker.topic("no-auto").is_none(), "not created");
    let r = c.call(12, &metadata(Some(&["auto"]), true)).await;
    assert_eq!(r.topics[0].error_code, 0);
    assert_eq!(r.topics[0].partitions.len(), 2, "default_partitions");
    assert!(!r.topics[0].topic_id.is_nil());
    assert_eq!(f.broker.topic("auto").unwrap().partition_count(), 2);
    // a second look finds the same topic
    let again = c.call(12, &metadata(Some(&["auto"]), true)).await;
    assert_eq!(again.topics[0].topic_id, r.topics[0].topic_id);
    // v1-v3 have no flag (it keeps its default): they create
    let r = c.call(1, &metadata(Some(&["auto-v1"]), true)).await;
    assert_eq!(r.topics[0].error_code, 0);
    assert!(f.broker.topic("auto-v1").is_some());
    // a produce creates too
    let p = c.produce(1, "auto-produce", 0, batch(1, &[b"x"])).await;
    assert_eq!((p.error_code, p.base_offset), (0, 0));

    // with auto-creation off, nothing creates
    let off = Fixture::with(KafkaConfig {
        auto_create_topics: false,
        ..Default::default()
    });
    let mut c = off.connect();
    let r = c.call(12, &metadata(Some(&["nope"]), true)).await;
    assert_eq!(r.topics[0].error_code, 3);
    let r = c.call(1, &metadata(Some(&["nope"]), true)).await;
    assert_eq!(r.topics[0].error_code, 3);
    let p = c.produce(-1, "nope", 0, batch(1, &[b"x"])).await;
    assert_eq!((p.error_code, p.base_offset), (3, -1));
    assert!(off.broker.topic("nope").is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn produce_assigns_consecutive_base_offsets() {
    // (produce version, acks)
    for (version, acks) in [(3, 1), (3, -1), (5, 1), (9, 1), (9, -1)] {
        let f = Fixture::new();
        let mut c = f.connect();
        assert_eq!(c.create_topic("p", 1).await, 0);
        let mut expected_base = 0;
        for n in [3usize, 2, 1] {
            let values: Vec<Vec<u8>> = (0..n).map(|i| vec![b'a' + i as u8]).collect();
            let refs: Vec<&[u8]> = values.iter().map(|v| v.as_slice()).collect();
            let r = c
                .call(version, &produce(acks, "p", 0, batch(1_000, &refs)))
                .await;
            let pr = &r.responses[0].partition_responses[0];
            let case = format!("v{version} acks={acks} batch of {n}");
            assert_eq!(r.responses[0].name.0.as_str(), "p", "{case}");
            assert_eq!(pr.index, 0, "{case}");
            assert_eq!(pr.error_code, 0, "{case}");
            assert_eq!(pr.base_offset, expected_base, "{case}");
            assert_eq!(pr.log_append_time_ms, -1, "{case}: CreateTime");
            if version >= 5 {
                assert_eq!(pr.log_start_offset, 0, "{case}");
            }
            if version >= 8 {
                assert_eq!(pr.error_message, None, "{case}");
            }
            expected_base += n as i64;
        }
        assert_eq!(c.list_offset("p", 0, -1).await, (0, 6, -1));
        // acks=all was durable before it was answered
        if acks == -1 {
            let log = f
                .broker
                .topic("p")
                .unwrap()
                .partition(0)
                .unwrap()
                .log()
                .clone();
            assert_eq!(log.durable_offset(), 6, "v{version}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn produce_to_several_partitions_in_one_request() {
    let f = Fixture::new();
    let mut c = f.connect();
    assert_eq!(c.create_topic("multi", 3).await, 0);
    let mut req = produce(1, "multi", 0, batch(1, &[b"a", b"b"]));
    for p in [2, 1] {
        let mut pd = produce_request::PartitionProduceData::default();
        pd.index = p;
        pd.records = Some(batch(1, &[b"c"]));
        req.topic_data[0].partition_data.push(pd);
    }
    let r = c.call(9, &req).await;
    let got: Vec<(i32, i16, i64)> = r.responses[0]
        .partition_responses
        .iter()
        .map(|p| (p.index, p.error_code, p.base_offset))
        .collect();
    assert_eq!(got, vec![(0, 0, 0), (2, 0, 0), (1, 0, 0)]);
    assert_eq!(c.list_offset("multi", 0, -1).await.1, 2);
    assert_eq!(c.list_offset("multi", 1, -1).await.1, 1);
    assert_eq!(c.list_offset("multi", 2, -1).await.1, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn acks_zero_is_not_answered_and_the_next_request_is() {
    let f = Fixture::new();
    let mut c = f.connect();
    assert_eq!(c.create_topic("fire", 1).await, 0);
    let mut silent = Vec::new();
    for i in 0..3u8 {
        silent.push(c.send(9, &produce(0, "fire", 0, batch(1, &[&[i]]))).await);
    }
    let corr = c.send(3, &ApiVersionsRequest::default()).await;
    let r = c.recv::<ApiVersionsRequest>(3, corr).await;
    assert_eq!(r.error_code, 0);
    assert!(!silent.contains(&corr));
    // the records were appended all the same, in order
    let pd = c.fetch("fire", 0, 0).await;
    assert_eq!(pd.high_watermark, 3);
    let records = pd.records.unwrap();
    let mut at = 0;
    let mut values = Vec::new();
    while at < records.len() {
        let (base, len) = BatchHeader::peek(&records[at..]).unwrap();
        let end = at + 12 + len as usize;
        for r in decode_batch(base as u64, &records[at..end]).unwrap() {
            values.push((r.offset, r.value.unwrap()));
        }
        at = end;
    }
    assert_eq!(
        values,
        vec![
            (0, Bytes::from_static(&[0])),
            (1, Bytes::from_static(&[1])),
            (2, Bytes::from_static(&[2]))
        ]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn pipelined_requests_are_answered_in_order() {
    let f = Fixture::new();
    let mut c = f.connect();
    assert_eq!(c.create_topic("pipe", 1).await, 0);
    let a = c.send(9, &produce(-1, "pipe", 0, batch(1, &[b"1"]))).await;
    let b = c.send(12, &metadata(Some(&["pipe"]), false)).await;
    let d = c
        .send(9, &produce(1, "pipe", 0, batch(1, &[b"2", b"3"])))
        .await;
    let e = c.send(6, &list_offsets("pipe", 0, -1)).await;
    let g = c.send(3, &ApiVersionsRequest::default()).await;
    let ra = c.recv::<ProduceRequest>(9, a).await;
    assert_eq!(ra.responses[0].partition_responses[0].base_offset, 0);
    let rb = c.recv::<MetadataRequest>(12, b).await;
    assert_eq!(rb.topics[0].partitions.len(), 1);
    let rd = c.recv::<ProduceRequest>(9, d).await;
    assert_eq!(rd.responses[0].partition_responses[0].base_offset, 1);
    let re = c.recv::<ListOffsetsRequest>(6, e).await;
    assert_eq!(re.topics[0].partitions[0].offset, 3);
    let rg = c.recv::<ApiVersionsRequest>(3, g).await;
    assert_eq!(rg.error_code, 0);
}

/// `sent` as a fetch must return it: base offset and leader epoch patched, nothing else.
fn served(sent: &Bytes, base: i64) -> Vec<u8> {
    let mut b = sent.to_vec();
    b[0..8].copy_from_slice(&base.to_be_bytes());
    b[12..16].copy_from_slice(&0i32.to_be_bytes());
    b
}

#[tokio::test(flavor = "multi_thread")]
async fn fetch_returns_the_batches_byte_for_byte_with_the_base_offset_patched() {
    let f = Fixture::new();
    let mut c = f.connect();
    assert_eq!(c.create_topic("f", 1).await, 0);
    // as a producer sends them: base offset 0; a leader epoch the broker must overwrite
    let mut first = batch(1_000, &[b"one", b"two", b"three"]).to_vec();
    BatchHeader::new(&mut first)
        .unwrap()
        .set_partition_leader_epoch(7);
    let first = Bytes::from(first);
    let second = batch(2_000, &[b"four", b"five"]);
    assert_eq!(c.produce(-1, "f", 0, first.clone()).await.base_offset, 0);
    assert_eq!(c.produce(-1, "f", 0, second.clone()).await.base_offset, 3);
    let both: Vec<u8> = [served(&first, 0), served(&second, 3)].concat();

    for version in [4, 5, 7, 11, 12] {
        let r = c.call(version, &fetch("f", 0, 0, 0, 1)).await;
        let pd = &r.responses[0].partitions[0];
        assert_eq!(r.responses[0].topic.0.as_str(), "f");
        assert_eq!(pd.error_code, 0, "v{version}");
        assert_eq!(pd.partition_index, 0);
        assert_eq!(pd.high_watermark, 5, "v{version}");
        assert_eq!(pd.last_stable_offset, 5, "v{version}");
        if version >= 5 {
            assert_eq!(pd.log_start_offset, 0, "v{version}");
        }
        assert_eq!(pd.records.as_deref(), Some(both.as_slice()), "v{version}");
    }
    // the stored CRC still holds, and the records decode at their offsets
    let one = served(&first, 0);
    let h = BatchHeader::new(one.as_slice()).unwrap();
    assert_eq!(h.crc(), h.computed_crc());
    let decoded = decode_batch(0, &one).unwrap();
    let got: Vec<(u64, i64, &[u8])> = decoded
        .iter()
        .map(|r| (r.offset, r.timestamp, r.value.as_deref().unwrap()))
        .collect();
    assert_eq!(
        got,
        vec![
            (0, 1_000, b"one".as_slice()),
            (1, 1_001, b"two".as_slice()),
            (2, 1_002, b"three".as_slice())
        ]
    );

    // from the second batch's first offset, from inside it (the whole batch, as Kafka),
    // and at the end (nothing)
    for (from, want) in [
        (3, served(&second, 3)),
        (4, served(&second, 3)),
        (1, both.clone()),
        (5, Vec::new()),
    ] {
        let pd = c.fetch("f", 0, from).await;
        assert_eq!(pd.error_code, 0, "from {from}");
        assert_eq!(pd.high_watermark, 5, "from {from}");
        assert_eq!(pd.records.as_deref(), Some(want.as_slice()), "from {from}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn fetch_limits_return_whole_batches_and_always_the_first() {
    let f = Fixture::new();
    let mut c = f.connect();
    assert_eq!(c.create_topic("lim", 1).await, 0);
    let first = batch(1, &[b"aaaaaaaa", b"bbbbbbbb"]);
    let second = batch(1, &[b"cccccccc"]);
    c.produce(1, "lim", 0, first.clone()).await;
    c.produce(1, "lim", 0, second.clone()).await;
    let one = served(&first, 0);
    let both = [one.clone(), served(&second, 2)].concat();
    // (partition_max_bytes, max_bytes) -> what comes back
    for (partition_max, max, want) in [
        (1, i32::MAX, &one),
        (one.len() as i32, i32::MAX, &one),
        (both.len() as i32 - 1, i32::MAX, &one),
        (both.len() as i32, i32::MAX, &both),
        (1 << 20, 1, &one),
        (1 << 20, both.len() as i32, &both),
    ] {
        let mut req = fetch("lim", 0, 0, 0, 1);
        req.topics[0].partitions[0].partition_max_bytes = partition_max;
        req.max_bytes = max;
        let r = c.call(12, &req).await;
        let pd = &r.responses[0].partitions[0];
        assert_eq!(pd.error_code, 0);
        assert_eq!(
            pd.records.as_deref(),
            Some(want.as_slice()),
            "partition_max_bytes {partition_max}, max_bytes {max}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_waiting_fetch_is_woken_by_a_produce() {
    let f = Fixture::new();
    let mut consumer = f.connect();
    let mut producer = f.connect();
    assert_eq!(consumer.create_topic("poll", 1).await, 0);
    let info = f
        .broker
        .connections()
        .into_iter()
        .find(|i| i.recv_oct.load(Ordering::Relaxed) > 0)
        .expect("the consumer's connection is listed");
    let before = info.recv_oct.load(Ordering::Relaxed);
    let started = Instant::now();
    // min_bytes 1 at the end: it waits up to 60 s for a record
    let corr = consumer.send(12, &fetch("poll", 0, 0, 60_000, 1)).await;
    // the request is in the handler's hands before anything is produced
    let deadline = Instant::now() + DEADLINE;
    while info.recv_oct.load(Ordering::Relaxed) == before {
        assert!(
            Instant::now() < deadline,
            "the fetch never reached the handler"
        );
        tokio::task::yield_now().await;
    }
    let sent = batch(5, &[b"wake up"]);
    let p = producer.produce(1, "poll", 0, sent.clone()).await;
    assert_eq!((p.error_code, p.base_offset), (0, 0));
    let r = consumer.recv::<FetchRequest>(12, corr).await;
    let pd = &r.responses[0].partitions[0];
    assert_eq!(pd.error_code, 0);
    assert_eq!(pd.high_watermark, 1);
    assert_eq!(pd.records.as_deref(), Some(served(&sent, 0).as_slice()));
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "woken, not timed out"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fetch_at_the_end_waits_max_wait_then_returns_empty() {
    let f = Fixture::new();
    let mut c = f.connect();
    assert_eq!(c.create_topic("idle", 1).await, 0);
    c.produce(1, "idle", 0, batch(1, &[b"x"])).await;
    for max_wait in [0, 300] {
        let started = Instant::now();
        let r = c.call(12, &fetch("idle", 0, 1, max_wait, 1)).await;
        let waited = started.elapsed();
        let pd = &r.responses[0].partitions[0];
        assert_eq!(pd.error_code, 0);
        assert_eq!(pd.high_watermark, 1);
        assert_eq!(pd.records.as_deref(), Some(&[][..]), "max_wait {max_wait}");
        assert!(
            waited >= Duration::from_millis(max_wait as u64),
            "answered after {waited:?}, before max_wait {max_wait} ms"
        );
    }
    // min_bytes 0 does not wait, whatever max_wait says
    let started = Instant::now();
    let r = c.call(12, &fetch("idle", 0, 1, 60_000, 0)).await;
    assert_eq!(r.responses[0].partitions[0].error_code, 0);
    assert!(started.elapsed() < Duration::from_secs(30));
}

#[tokio::test(flavor = "multi_thread")]
async fn list_offsets_earliest_latest_and_by_timestamp() {
    let f = Fixture::new();
    let mut c = f.connect();
    assert_eq!(c.create_topic("lo", 1).await, 0);
    // an empty partition
    assert_eq!(c.list_offset("lo", 0, -2).await, (0, 0, -1));
    assert_eq!(c.list_offset("lo", 0, -1).await, (0, 0, -1));
    assert_eq!(c.list_offset("lo", 0, 0).await, (0, -1, -1));
    // batches at timestamps 1000 (offset 0), 2000-2001 (offsets 1-2), 3000 (offset 3)
    c.produce(1, "lo", 0, batch(1_000, &[b"a"])).await;
    c.produce(1, "lo", 0, batch(2_000, &[b"b", b"c"])).await;
    c.produce(1, "lo", 0, batch(3_000, &[b"d"])).await;
    for version in 1..=6 {
        // (timestamp asked, offset, timestamp answered)
        for (ts, offset, ts_back) in [
            (-2, 0, -1),
            (-1, 4, -1),
            (1_000, 0, 1_000),
            (2_000, 1, 2_000),
            (3_000, 3, 3_000),
            (3_001, -1, -1),
        ] {
            let r = c.call(version, &list_offsets("lo", 0, ts)).await;
            let p = &r.topics[0].partitions[0];
            assert_eq!(r.topics[0].name.0.as_str(), "lo");
            assert_eq!(
                (p.error_code, p.offset, p.timestamp),
                (0, offset, ts_back),
                "v{version} timestamp {ts}"
            );
            if version >= 4 {
                assert_eq!(p.leader_epoch, 0, "v{version}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn committed_offsets_and_metadata_round_trip() {
    let f = Fixture::new();
    let mut c = f.connect();
    assert_eq!(c.create_topic("oc", 2).await, 0);
    // commits from outside any group generation (a consumer that assigns itself), v2..v8
    for version in [2, 5, 6, 8] {
        let group = format!("g{version}");
        let mut req = offset_commit(&group, -1, "", "oc", 0, 5, "five");
        let mut p1 = offset_commit_request::OffsetCommitRequestPartition::default();
        p1.partition_index = 1;
        p1.committed_offset = 7;
        if version >= 6 {
            p1.committed_leader_epoch = 3;
        }
        p1.committed_metadata = Some(s(""));
        req.topics[0].partitions.push(p1);
        let r = c.call(version, &req).await;
        let got: Vec<(i32, i16)> = r.topics[0]
            .partitions
            .iter()
            .map(|p| (p.partition_index, p.error_code))
            .collect();
        assert_eq!(got, vec![(0, 0), (1, 0)], "OffsetCommit v{version}");

        // OffsetFetch v1..v7 (one group) asks for partitions 0, 1 and 9 (never committed)
        for fetch_version in [1, 2, 5, 7] {
            let mut t = offset_fetch_request::OffsetFetchRequestTopic::default();
            t.name = topic_name("oc");
            t.partition_indexes = vec![0, 1, 9];
            let mut req = OffsetFetchRequest::default();
            req.group_id = group_id(&group);
            req.topics = Some(vec![t]);
            let r = c.call(fetch_version, &req).await;
            assert_eq!(r.error_code, 0);
            let got: Vec<(i32, i64, String, i16)> = r.topics[0]
                .partitions
                .iter()
                .map(|p| {
                    (
                        p.partition_index,
                        p.committed_offset,
                        p.metadata.as_deref().unwrap_or("").to_owned(),
                        p.error_code,
                    )
                })
                .collect();
            assert_eq!(
                got,
                vec![
                    (0, 5, "five".into(), 0),
                    (1, 7, "".into(), 0),
                    (9, -1, "".into(), 0)
                ],
                "commit v{version}, fetch v{fetch_version}"
            );
            if fetch_version >= 5 {
                let epochs: Vec<i32> = r.topics[0]
                    .partitions
                    .iter()
                    .map(|p| p.committed_leader_epoch)
                    .collect();
                let e1 = if version >= 6 { 3 } else { -1 };
                assert_eq!(epochs, vec![-1, e1, -1], "commit v{version}");
            }
        }
        // null topics (v2+): every committed partition
        let mut req = OffsetFetchRequest::default();
        req.group_id = group_id(&group);
        req.topics = None;
        let r = c.call(7, &req).await;
        let mut got: Vec<(String, i32, i64)> = r
            .topics
            .iter()
            .flat_map(|t| {
                t.partitions
                    .iter()
                    .map(move |p| (t.name.0.to_string(), p.partition_index, p.committed_offset))
            })
            .collect();
        got.sort();
        assert_eq!(got, vec![("oc".into(), 0, 5), ("oc".into(), 1, 7)]);
    }

    // v8: several groups at once; one never heard of gets -1 offsets (no error)
    let mut req = OffsetFetchRequest::default();
    for (g, topics) in [("g8", true), ("never", true), ("g2", false)] {
        let mut x = offset_fetch_request::OffsetFetchRequestGroup::default();
        x.group_id = group_id(g);
        x.topics = topics.then(|| {
            let mut t = offset_fetch_request::OffsetFetchRequestTopics::default();
            t.name = topic_name("oc");
            t.partition_indexes = vec![0];
            vec![t]
        });
        req.groups.push(x);
    }
    let r = c.call(8, &req).await;
    assert_eq!(r.groups.len(), 3);
    let g8 = &r.groups[0];
    assert_eq!((g8.group_id.0.as_str(), g8.error_code), ("g8", 0));
    let p = &g8.topics[0].partitions[0];
    assert_eq!(
        (p.committed_offset, p.metadata.as_deref(), p.error_code),
        (5, Some("five"), 0)
    );
    let never = &r.groups[1];
    assert_eq!(never.error_code, 0);
    let p = &never.topics[0].partitions[0];
    assert_eq!((p.committed_offset, p.committed_leader_epoch), (-1, -1));
    assert_eq!(p.metadata.as_deref(), Some(""));
    assert_eq!(r.groups[2].topics[0].partitions.len(), 2, "all of g2's");

    // a later commit replaces the offset
    assert_eq!(c.commit("g8", -1, "", "oc", 0, 42).await, 0);
    let r = c.call(8, &req).await;
    assert_eq!(r.groups[0].topics[0].partitions[0].committed_offset, 42);
}

#[tokio::test(flavor = "multi_thread")]
async fn create_delete_and_grow_topics() {
    let f = Fixture::new();
    let mut c = f.connect();
    for version in 2..=7 {
        let name = format!("ct{version}");
        let r = c
            .call(version, &create_topics(&[creatable(&name, 2, 1)]))
            .await;
        let t = &r.topics[0];
        assert_eq!((t.name.0.as_str(), t.error_code), (name.as_str(), 0));
        let topic = f.broker.topic(&name).expect("created");
        assert_eq!(topic.partition_count(), 2);
        if version >= 5 {
            assert_eq!((t.num_partitions, t.replication_factor), (2, 1));
            let configs = t.configs.as_ref().expect("configs (v5+)");
            let mut names: Vec<&str> = configs.iter().map(|c| c.name.as_str()).collect();
            names.sort();
            assert_eq!(
                names,
                vec![
                    "cleanup.policy",
                    "retention.bytes",
                    "retention.ms",
                    "segment.bytes"
                ]
            );
            assert!(configs.iter().all(|c| c.config_source == 5));
        }
        if version >= 7 {
            assert_eq!(t.topic_id, uuid::Uuid::from_bytes(topic.id));
        }
    }
    // -1 partitions and replication factor: the defaults; configs are applied
    let mut ct = creatable("dflt", -1, -1);
    let mut cfg = create_topics_request::CreatableTopicConfig::default();
    cfg.name = s("retention.ms");
    cfg.value = Some(s("60000"));
    ct.configs.push(cfg);
    let r = c.call(7, &create_topics(&[ct])).await;
    assert_eq!(r.topics[0].error_code, 0);
    assert_eq!(r.topics[0].num_partitions, 1);
    assert_eq!(
        f.broker.topic("dflt").unwrap().config().retention_ms,
        60_000
    );
    let retention = r.topics[0]
        .configs
        .as_ref()
        .unwrap()
        .iter()
        .find(|c| c.name.as_str() == "retention.ms")
        .unwrap();
    assert_eq!(retention.value.as_deref(), Some("60000"));
    // validate_only: answered as if created, not created
    let mut req = create_topics(&[creatable("dry", 4, 1)]);
    req.validate_only = true;
    let r = c.call(7, &req).await;
    assert_eq!((r.topics[0].error_code, r.topics[0].num_partitions), (0, 4));
    assert!(r.topics[0].topic_id.is_nil());
    assert!(f.broker.topic("dry").is_none());

    // CreatePartitions: grow; validate_only does not
    for version in 0..=3 {
        let name = format!("ct{}", version + 2);
        let mut t = create_partitions_request::CreatePartitionsTopic::default();
        t.name = topic_name(&name);
        t.count = 5;
        let mut req = CreatePartitionsRequest::default();
        req.topics = vec![t];
        req.timeout_ms = 5_000;
        req.validate_only = true;
        let r = c.call(version, &req).await;
        assert_eq!(r.results[0].error_code, 0);
        assert_eq!(f.broker.topic(&name).unwrap().partition_count(), 2);
        req.validate_only = false;
        let r = c.call(version, &req).await;
        assert_eq!(
            (r.results[0].name.0.as_str(), r.results[0].error_code),
            (name.as_str(), 0)
        );
        assert_eq!(f.broker.topic(&name).unwrap().partition_count(), 5);
    }
    let m = c.call(12, &metadata(Some(&["ct2"]), false)).await;
    assert_eq!(m.topics[0].partitions.len(), 5);
    let p = c.produce(1, "ct2", 4, batch(1, &[b"new partition"])).await;
    assert_eq!((p.error_code, p.base_offset), (0, 0));

    // DeleteTopics by name (v1..v5) and by id (v6)
    for (version, name) in [(1, "ct2"), (4, "ct3"), (5, "ct4")] {
        let mut req = DeleteTopicsRequest::default();
        req.topic_names = vec![topic_name(name)];
        req.timeout_ms = 5_000;
        let r = c.call(version, &req).await;
        let d = &r.responses[0];
        assert_eq!(
            (d.name.as_ref().unwrap().0.as_str(), d.error_code),
            (name, 0)
        );
        assert!(f.broker.topic(name).is_none(), "{name} deleted");
    }
    let id = uuid::Uuid::from_bytes(f.broker.topic("ct5").unwrap().id);
    let mut st = delete_topics_request::DeleteTopicState::default();
    st.topic_id = id;
    let mut req = DeleteTopicsRequest::default();
    req.topics = vec![st];
    let r = c.call(6, &req).await;
    let d = &r.responses[0];
    assert_eq!(d.error_code, 0);
    assert_eq!(d.name.as_ref().unwrap().0.as_str(), "ct5");
    assert_eq!(d.topic_id, id);
    assert!(f.broker.topic("ct5").is_none());
    // gone for clients too
    let m = c.call(12, &metadata(Some(&["ct2"]), false)).await;
    assert_eq!(m.topics[0].error_code, 3);
    // and a topic of the same name starts from offset 0 with a new id
    assert_eq!(c.create_topic("ct5", 1).await, 0);
    assert_ne!(
        uuid::Uuid::from_bytes(f.broker.topic("ct5").unwrap().id),
        id
    );
    assert_eq!(c.list_offset("ct5", 0, -1).await, (0, 0, -1));
}

fn describe_topic(name: &str) -> DescribeConfigsRequest {
    let mut res = describe_configs_request::DescribeConfigsResource::default();
    res.resource_type = 2;
    res.resource_name = s(name);
    res.configuration_keys = None;
    let mut r = DescribeConfigsRequest::default();
    r.resources = vec![res];
    r
}

/// name -> (value, config source)
fn configs_of(r: &DescribeConfigsResponse) -> Vec<(String, String, i8)> {
    r.results[0]
        .configs
        .iter()
        .map(|c| {
            (
                c.name.to_string(),
                c.value.as_deref().unwrap_or("").to_owned(),
                c.config_source,
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn topic_configs_are_described_and_altered() {
    let f = Fixture::new();
    let mut c = f.connect();
    assert_eq!(c.create_topic("cfg", 1).await, 0);
    let defaults = vec![
        ("cleanup.policy".to_owned(), "delete".to_owned(), 5),
        ("retention.bytes".into(), "-1".into(), 5),
        ("retention.ms".into(), "604800000".into(), 5),
        ("segment.bytes".into(), "67108864".into(), 5),
    ];
    for version in 1..=4 {
        let r = c.call(version, &describe_topic("cfg")).await;
        assert_eq!(r.results[0].error_code, 0, "v{version}");
        assert_eq!(r.results[0].resource_name.as_str(), "cfg");
        assert_eq!(configs_of(&r), defaults, "v{version}");
        assert!(r.results[0].configs.iter().all(|c| !c.read_only));
        if version >= 3 {
            let types: Vec<i8> = r.results[0].configs.iter().map(|c| c.config_type).collect();
            assert_eq!(types, vec![2, 5, 5, 5], "string, then longs");
        }
    }
    // AlterConfigs replaces the whole set: what is not named goes back to the default
    let mut alter = AlterConfigsRequest::default();
    let mut res = alter_configs_request::AlterConfigsResource::default();
    res.resource_type = 2;
    res.resource_name = s("cfg");
    for (k, v) in [("retention.ms", "1000"), ("cleanup.policy", "compact")] {
        let mut a = alter_configs_request::AlterableConfig::default();
        a.name = s(k);
        a.value = Some(s(v));
        res.configs.push(a);
    }
    alter.resources = vec![res];
    alter.validate_only = true;
    let r = c.call(2, &alter).await;
    assert_eq!(r.responses[0].error_code, 0);
    assert_eq!(
        f.broker.topic("cfg").unwrap().config().retention_ms,
        604_800_000
    );
    alter.validate_only = false;
    let r = c.call(0, &alter).await;
    assert_eq!(
        (
            r.responses[0].error_code,
            r.responses[0].resource_name.as_str()
        ),
        (0, "cfg")
    );
    let r = c.call(4, &describe_topic("cfg")).await;
    assert_eq!(
        configs_of(&r),
        vec![
            ("cleanup.policy".to_owned(), "compact".to_owned(), 1),
            ("retention.bytes".into(), "-1".into(), 5),
            ("retention.ms".into(), "1000".into(), 1),
            ("segment.bytes".into(), "67108864".into(), 5),
        ]
    );
    // IncrementalAlterConfigs: set one, delete another (back to its default), keep the rest
    let mut inc = IncrementalAlterConfigsRequest::default();
    let mut res = incremental_alter_configs_request::AlterConfigsResource::default();
    res.resource_type = 2;
    res.resource_name = s("cfg");
    for (k, op, v) in [
        ("retention.bytes", 0, Some("2048")),
        ("cleanup.policy", 1, None),
    ] {
        let mut a = incremental_alter_configs_request::AlterableConfig::default();
        a.name = s(k);
        a.config_operation = op;
        a.value = v.map(s);
        res.configs.push(a);
    }
    inc.resources = vec![res];
    let r = c.call(1, &inc).await;
    assert_eq!(r.responses[0].error_code, 0);
    let r = c.call(4, &describe_topic("cfg")).await;
    assert_eq!(
        configs_of(&r),
        vec![
            ("cleanup.policy".to_owned(), "delete".to_owned(), 5),
            ("retention.bytes".into(), "2048".into(), 1),
            ("retention.ms".into(), "1000".into(), 1),
            ("segment.bytes".into(), "67108864".into(), 5),
        ]
    );
    // only the keys asked for
    let mut req = describe_topic("cfg");
    req.resources[0].configuration_keys = Some(vec![s("retention.ms")]);
    let r = c.call(4, &req).await;
    assert_eq!(
        configs_of(&r),
        vec![("retention.ms".to_owned(), "1000".to_owned(), 1)]
    );
    // the broker's own settings, read-only
    let mut req = describe_topic("0");
    req.resources[0].resource_type = 4;
    let r = c.call(4, &req).await;
    assert_eq!(r.results[0].error_code, 0);
    assert_eq!(
        configs_of(&r),
        vec![
            ("auto.create.topics.enable".to_owned(), "true".to_owned(), 4),
            ("num.partitions".into(), "1".into(), 4),
            ("socket.request.max.bytes".into(), "104857600".into(), 4),
        ]
    );
    assert!(r.results[0].configs.iter().all(|c| c.read_only));
}

fn init_producer_id(pid: i64, epoch: i16) -> InitProducerIdRequest {
    let mut r = InitProducerIdRequest::default();
    r.transactional_id = None;
    r.transaction_timeout_ms = 60_000;
    r.producer_id = ProducerId(pid);
    r.producer_epoch = epoch;
    r
}

#[tokio::test(flavor = "multi_thread")]
async fn idempotent_producers_get_ids_and_retries_their_first_offsets() {
    let f = Fixture::new();
    let mut c = f.connect();
    assert_eq!(c.create_topic("idem", 1).await, 0);
    let mut ids = Vec::new();
    for version in 0..=4 {
        let r = c.call(version, &init_producer_id(-1, -1)).await;
        assert_eq!(r.error_code, 0, "v{version}");
        assert_eq!(r.producer_epoch, 0);
        assert!(r.producer_id.0 >= 0);
        ids.push(r.producer_id.0);
    }
    let mut unique = ids.clone();
    unique.dedup();
    assert_eq!(unique.len(), ids.len(), "a fresh id each time");
    let pid = ids[4];

    assert_eq!(
        c.produce(-1, "idem", 0, idempotent_batch(pid, 0, 0, 3))
            .await
            .base_offset,
        0
    );
    assert_eq!(
        c.produce(-1, "idem", 0, idempotent_batch(pid, 0, 3, 2))
            .await
            .base_offset,
        3
    );
    assert_eq!(
        c.produce(-1, "idem", 0, idempotent_batch(pid, 0, 5, 1))
            .await
            .base_offset,
        5
    );
    // retries of the last batch and of earlier ones: their first offsets, nothing appended
    for (seq, n, base) in [(5, 1, 5), (0, 3, 0), (3, 2, 3)] {
        let p = c
            .produce(-1, "idem", 0, idempotent_batch(pid, 0, seq, n))
            .await;
        assert_eq!((p.error_code, p.base_offset), (0, base), "retry of {seq}");
    }
    assert_eq!(c.list_offset("idem", 0, -1).await.1, 6);
    // the sequence goes on after the retries
    let p = c
        .produce(1, "idem", 0, idempotent_batch(pid, 0, 6, 1))
        .await;
    assert_eq!((p.error_code, p.base_offset), (0, 6));
    // another producer has its own sequence
    let other = ids[3];
    let p = c
        .produce(1, "idem", 0, idempotent_batch(other, 0, 0, 1))
        .await;
    assert_eq!((p.error_code, p.base_offset), (0, 7));

    // a producer that asks for a new epoch (v3+) keeps its id; the new epoch starts at 0
    let r = c.call(4, &init_producer_id(pid, 0)).await;
    assert_eq!(
        (r.error_code, r.producer_id.0, r.producer_epoch),
        (0, pid, 1)
    );
    let p = c
        .produce(1, "idem", 0, idempotent_batch(pid, 1, 0, 2))
        .await;
    assert_eq!((p.error_code, p.base_offset), (0, 8));
    let p = c
        .produce(1, "idem", 0, idempotent_batch(pid, 1, 0, 2))
        .await;
    assert_eq!(
        (p.error_code, p.base_offset),
        (0, 8),
        "retry in the new epoch"
    );
    assert_eq!(c.list_offset("idem", 0, -1).await.1, 10);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_consumer_group_joins_syncs_commits_and_leaves() {
    let f = Fixture::new();
    let mut c = f.connect();
    assert_eq!(c.create_topic("gt", 2).await, 0);
    // FindCoordinator: this broker, by key (v0-v3) or for each key (v4)
    for version in 0..=3 {
        let mut req = FindCoordinatorRequest::default();
        req.key = s("grp");
        let r = c.call(version, &req).await;
        assert_eq!(r.error_code, 0);
        assert_eq!(
            (r.node_id, r.host.as_str(), r.port),
            (BrokerId(0), "127.0.0.1", 9092)
        );
    }
    let mut req = FindCoordinatorRequest::default();
    req.coordinator_keys = vec![s("grp"), s("other")];
    let r = c.call(4, &req).await;
    let got: Vec<(&str, i32, &str, i32, i16)> = r
        .coordinators
        .iter()
        .map(|x| {
            (
                x.key.as_str(),
                x.node_id.0,
                x.host.as_str(),
                x.port,
                x.error_code,
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            ("grp", 0, "127.0.0.1", 9092, 0),
            ("other", 0, "127.0.0.1", 9092, 0)
        ]
    );

    // JoinGroup v0-v3 hands out an id at once; the lone member leads generation 1
    let j = c.call(2, &join_group("old", "")).await;
    assert_eq!(j.error_code, 0);
    assert_eq!(j.generation_id, 1);
    assert_eq!(j.leader, j.member_id);
    assert!(
        j.member_id.starts_with("mapping-test-"),
        "client id, then a suffix"
    );
    assert_eq!(j.protocol_name.as_deref(), Some("range"));

    // v5: MEMBER_ID_REQUIRED first
    let j = c.join_new("grp").await;
    let member = j.member_id.to_string();
    assert_eq!(j.generation_id, 1);
    assert_eq!(j.leader.as_str(), member);
    assert_eq!(j.protocol_name.as_deref(), Some("range"));
    let members: Vec<(&str, &[u8])> = j
        .members
        .iter()
        .map(|m| (m.member_id.as_str(), m.metadata.as_ref()))
        .collect();
    assert_eq!(members, vec![(member.as_str(), b"meta".as_slice())]);
    assert_eq!(c.group_state("grp").await, "CompletingRebalance");

    // the leader's assignment comes back to it
    let r = c
        .call(3, &sync_group("grp", 1, &member, &[(&member, b"gt:0,1")]))
        .await;
    assert_eq!(
        (r.error_code, r.assignment.as_ref()),
        (0, b"gt:0,1".as_slice())
    );
    assert_eq!(c.group_state("grp").await, "Stable");
    assert_eq!(c.heartbeat("grp", 1, &member).await, 0);

    // a member's commit, then the committed offset
    assert_eq!(c.commit("grp", 1, &member, "gt", 1, 17).await, 0);
    let mut t = offset_fetch_request::OffsetFetchRequestTopic::default();
    t.name = topic_name("gt");
    t.partition_indexes = vec![1];
    let mut of = OffsetFetchRequest::default();
    of.group_id = group_id("grp");
    of.topics = Some(vec![t]);
    let r = c.call(6, &of).await;
    assert_eq!(r.topics[0].partitions[0].committed_offset, 17);

    // DescribeGroups and ListGroups see it
    let mut dg = DescribeGroupsRequest::default();
    dg.groups = vec![group_id("grp")];
    let d = c.call(5, &dg).await;
    let g = &d.groups[0];
    assert_eq!(
        (
            g.error_code,
            g.group_state.as_str(),
            g.protocol_type.as_str(),
            g.protocol_data.as_str()
        ),
        (0, "Stable", "consumer", "range")
    );
    assert_eq!(g.members.len(), 1);
    let m = &g.members[0];
    assert_eq!(m.member_id.as_str(), member);
    assert_eq!(m.client_id.as_str(), "mapping-test");
    assert_eq!(m.client_host.as_str(), "/127.0.0.1");
    assert_eq!(m.member_metadata.as_ref(), b"meta");
    assert_eq!(m.member_assignment.as_ref(), b"gt:0,1");
    let l = c.call(4, &ListGroupsRequest::default()).await;
    let mut listed: Vec<(&str, &str, &str)> = l
        .groups
        .iter()
        .map(|g| {
            (
                g.group_id.0.as_str(),
                g.protocol_type.as_str(),
                g.group_state.as_str(),
            )
        })
        .collect();
    listed.sort();
    assert_eq!(
        listed,
        vec![
            ("grp", "consumer", "Stable"),
            ("old", "consumer", "CompletingRebalance")
        ]
    );
    let mut filtered = ListGroupsRequest::default();
    filtered.states_filter = vec![s("Stable")];
    let l = c.call(4, &filtered).await;
    assert_eq!(l.groups.len(), 1);
    assert_eq!(l.groups[0].group_id.0.as_str(), "grp");

    // LeaveGroup (v3+: by member) empties it; the offsets stay
    let mut lv = LeaveGroupRequest::default();
    lv.group_id = group_id("grp");
    let mut who = leave_group_request::MemberIdentity::default();
    who.member_id = s(&member);
    lv.members = vec![who];
    let r = c.call(4, &lv).await;
    assert_eq!(r.error_code, 0);
    assert_eq!(r.members.len(), 1);
    assert_eq!(
        (r.members[0].member_id.as_str(), r.members[0].error_code),
        (member.as_str(), 0)
    );
    assert_eq!(c.group_state("grp").await, "Empty");
    let r = c.call(6, &of).await;
    assert_eq!(r.topics[0].partitions[0].committed_offset, 17);

    // DeleteGroups forgets it, offsets and all
    let mut del = DeleteGroupsRequest::default();
    del.groups_names = vec![group_id("grp")];
    let r = c.call(2, &del).await;
    assert_eq!(
        (r.results[0].group_id.0.as_str(), r.results[0].error_code),
        ("grp", 0)
    );
    assert_eq!(c.group_state("grp").await, "Dead");
    let r = c.call(6, &of).await;
    assert_eq!(r.topics[0].partitions[0].committed_offset, -1);
}

#[tokio::test(flavor = "multi_thread")]
async fn two_members_rebalance_and_share_the_leaders_assignment() {
    let f = Fixture::new();
    let mut a = f.connect();
    let mut b = f.connect();
    let ja = a.join_new("pair").await;
    let ma = ja.member_id.to_string();
    let r = a
        .call(3, &sync_group("pair", 1, &ma, &[(&ma, b"all")]))
        .await;
    assert_eq!(r.error_code, 0);

    // b's join parks until a rejoins; a learns of the rebalance from its heartbeat
    let first = b.call(5, &join_group("pair", "")).await;
    assert_eq!(first.error_code, 79);
    let mb = first.member_id.to_string();
    let b_join = b.send(5, &join_group("pair", &mb)).await;
    let deadline = Instant::now() + DEADLINE;
    loop {
        match a.heartbeat("pair", 1, &ma).await {
            0 => assert!(Instant::now() < deadline, "the rebalance never started"),
            27 => break,
            other => panic!("heartbeat answered {other}"),
        }
    }
    assert_eq!(a.group_state("pair").await, "PreparingRebalance");
    let ja2 = a.call(5, &join_group("pair", &ma)).await;
    let jb = b.recv::<JoinGroupRequest>(5, b_join).await;
    assert_eq!((ja2.error_code, jb.error_code), (0, 0));
    assert_eq!((ja2.generation_id, jb.generation_id), (2, 2));
    // the leader stays the leader and alone sees the members
    assert_eq!(ja2.leader.as_str(), ma);
    assert_eq!(jb.leader.as_str(), ma);
    let mut seen: Vec<&str> = ja2.members.iter().map(|m| m.member_id.as_str()).collect();
    seen.sort();
    let mut want = vec![ma.as_str(), mb.as_str()];
    want.sort();
    assert_eq!(seen, want);
    assert!(jb.members.is_empty());

    // the follower's SyncGroup waits for the leader's
    let b_sync = b.send(3, &sync_group("pair", 2, &mb, &[])).await;
    let ra = a
        .call(
            3,
            &sync_group("pair", 2, &ma, &[(&ma, b"p0"), (&mb, b"p1")]),
        )
        .await;
    let rb = b.recv::<SyncGroupRequest>(3, b_sync).await;
    assert_eq!(
        (ra.error_code, ra.assignment.as_ref()),
        (0, b"p0".as_slice())
    );
    assert_eq!(
        (rb.error_code, rb.assignment.as_ref()),
        (0, b"p1".as_slice())
    );
    assert_eq!(a.heartbeat("pair", 2, &ma).await, 0);
    assert_eq!(b.heartbeat("pair", 2, &mb).await, 0);
}
