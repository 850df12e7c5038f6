//! Every error the Kafka front end answers, each with a request that provokes it, tested in
//! process over an in-memory connection; and what closes a connection instead of answering
//! (a frame it cannot take, a request it cannot parse, a failed SASL login).
//!
//! Codes: 1 OFFSET_OUT_OF_RANGE, 2 CORRUPT_MESSAGE, 3 UNKNOWN_TOPIC_OR_PARTITION, 12
//! OFFSET_METADATA_TOO_LARGE, 17 INVALID_TOPIC_EXCEPTION, 22 ILLEGAL_GENERATION, 23
//! INCONSISTENT_GROUP_PROTOCOL, 24 INVALID_GROUP_ID, 25 UNKNOWN_MEMBER_ID, 26
//! INVALID_SESSION_TIMEOUT, 27 REBALANCE_IN_PROGRESS, 29 TOPIC_AUTHORIZATION_FAILED, 30
//! GROUP_AUTHORIZATION_FAILED, 33 UNSUPPORTED_SASL_MECHANISM, 34 ILLEGAL_SASL_STATE, 35
//! UNSUPPORTED_VERSION, 36 TOPIC_ALREADY_EXISTS, 37 INVALID_PARTITIONS, 38
//! INVALID_REPLICATION_FACTOR, 40 INVALID_CONFIG, 42 INVALID_REQUEST, 45
//! OUT_OF_ORDER_SEQUENCE_NUMBER, 47 INVALID_PRODUCER_EPOCH, 53
//! TRANSACTIONAL_ID_AUTHORIZATION_FAILED, 56 KAFKA_STORAGE_ERROR, 58 SASL_AUTHENTICATION_FAILED,
//! 68 NON_EMPTY_GROUP, 69 GROUP_ID_NOT_FOUND, 79 MEMBER_ID_REQUIRED, 87 INVALID_RECORD, 100
//! UNKNOWN_TOPIC_ID.

mod common;

use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use common::*;
use eddy_kafka::KafkaConfig;
use eddy_records::BatchHeader;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::Decodable;

const OFFSET_OUT_OF_RANGE: i16 = 1;
const CORRUPT_MESSAGE: i16 = 2;
const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
const OFFSET_METADATA_TOO_LARGE: i16 = 12;
const INVALID_TOPIC_EXCEPTION: i16 = 17;
const ILLEGAL_GENERATION: i16 = 22;
const INCONSISTENT_GROUP_PROTOCOL: i16 = 23;
const INVALID_GROUP_ID: i16 = 24;
const UNKNOWN_MEMBER_ID: i16 = 25;
const INVALID_SESSION_TIMEOUT: i16 = 26;
const REBALANCE_IN_PROGRESS: i16 = 27;
const TOPIC_AUTHORIZATION_FAILED: i16 = 29;
const GROUP_AUTHORIZATION_FAILED: i16 = 30;
const UNSUPPORTED_SASL_MECHANISM: i16 = 33;
const ILLEGAL_SASL_STATE: i16 = 34;
const UNSUPPORTED_VERSION: i16 = 35;
const TOPIC_ALREADY_EXISTS: i16 = 36;
const INVALID_PARTITIONS: i16 = 37;
const INVALID_REPLICATION_FACTOR: i16 = 38;
const INVALID_CONFIG: i16 = 40;
const INVALID_REQUEST: i16 = 42;
const OUT_OF_ORDER_SEQUENCE_NUMBER: i16 = 45;
const INVALID_PRODUCER_EPOCH: i16 = 47;
const TRANSACTIONAL_ID_AUTHORIZATION_FAILED: i16 = 53;
const KAFKA_STORAGE_ERROR: i16 = 56;
const SASL_AUTHENTICATION_FAILED: i16 = 58;
const NON_EMPTY_GROUP: i16 = 68;
const GROUP_ID_NOT_FOUND: i16 = 69;
const MEMBER_ID_REQUIRED: i16 = 79;
const INVALID_RECORD: i16 = 87;
const UNKNOWN_TOPIC_ID: i16 = 100;

// ---------------------------------------------------------------- record batches

/// A valid batch, damaged by `f` (which may fix the CRC up again).
fn damaged(f: impl FnOnce(&mut Vec<u8>)) -> Bytes {
    let mut b = batch(1_000, &[b"one", b"two"]).to_vec();
    f(&mut b);
    Bytes::from(b)
}

fn with_header(f: impl FnOnce(&mut BatchHeader<&mut Vec<u8>>)) -> Bytes {
    damaged(|b| {
        let mut h = BatchHeader::new(b).unwrap();
        f(&mut h);
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn batches_that_do_not_verify_are_corrupt_message_or_invalid_record() {
    let f = Fixture::new();
    let mut c = f.connect();
    assert_eq!(c.create_topic("rec", 2).await, 0);
    let good = batch(1, &[b"fine"]);
    let cases: Vec<(&str, Option<Bytes>, i16)> = vec![
        (
            "a record byte flipped (CRC mismatch)",
            Some(damaged(|b| {
                let last = b.len() - 1;
                b[last] ^= 0x01;
            })),
            CORRUPT_MESSAGE,
        ),
        (
            "the CRC field altered",
            Some(with_header(|h| {
                let crc = h.crc();
                h.set_crc(crc ^ 1);
            })),
            CORRUPT_MESSAGE,
        ),
        (
            "magic 1",
            Some(with_header(|h| {
                h.set_magic(1);
                h.update_crc();
            })),
            CORRUPT_MESSAGE,
        ),
        (
            "a batch length past the bytes sent",
            Some(with_header(|h| {
                let l = h.batch_length();
                h.set_batch_length(l + 10);
            })),
            CORRUPT_MESSAGE,
        ),
        (
            "a negative batch length",
            Some(with_header(|h| h.set_batch_length(-5))),
            CORRUPT_MESSAGE,
        ),
        (
            "a batch length shorter than a header",
            Some(with_header(|h| h.set_batch_length(10))),
            CORRUPT_MESSAGE,
        ),
        (
            "fewer bytes than a batch header",
            Some(damaged(|b| b.truncate(30))),
            CORRUPT_MESSAGE,
        ),
        (
            "more records than the offset span",
            Some(with_header(|h| {
                h.set_record_count(5);
                h.update_crc();
            })),
            CORRUPT_MESSAGE,
        ),
        (
            "a negative last offset delta",
            Some(with_header(|h| {
                h.set_last_offset_delta(-1);
                h.update_crc();
            })),
            CORRUPT_MESSAGE,
        ),
        (
            "an unknown compression codec (5)",
            Some(with_header(|h| {
                h.set_attributes(5);
                h.update_crc();
            })),
            CORRUPT_MESSAGE,
        ),
        (
            "a good batch, then a damaged one",
            Some(Bytes::from(
                [
                    good.to_vec(),
                    damaged(|b| {
                        let last = b.len() - 1;
                        b[last] ^= 0x01;
                    })
                    .to_vec(),
                ]
                .concat(),
            )),
            CORRUPT_MESSAGE,
        ),
        (
            "no records at all (empty)",
            Some(Bytes::new()),
            CORRUPT_MESSAGE,
        ),
        ("null records", None, CORRUPT_MESSAGE),
        (
            "a transactional batch (transactions are not supported)",
            Some(with_header(|h| {
                h.set_attributes(0x10);
                h.update_crc();
            })),
            INVALID_RECORD,
        ),
    ];
    for (what, records, code) in cases {
        for version in [3, 9] {
            // the bad partition (0) and a good one (1) in one request: only 0 fails
            let mut req = produce(-1, "rec", 0, Bytes::new());
            req.topic_data[0].partition_data[0].records = records.clone();
            let mut ok = produce_request::PartitionProduceData::default();
            ok.index = 1;
            ok.records = Some(good.clone());
            req.topic_data[0].partition_data.push(ok);
            let r = c.call(version, &req).await;
            let bad = &r.responses[0].partition_responses[0];
            assert_eq!(bad.index, 0);
            assert_eq!(
                (bad.error_code, bad.base_offset),
                (code, -1),
                "{what} (v{version})"
            );
            if version >= 8 {
                assert!(
                    bad.error_message.as_deref().is_some_and(|m| !m.is_empty()),
                    "{what}: a message says why"
                );
            }
            let fine = &r.responses[0].partition_responses[1];
            assert_eq!((fine.index, fine.error_code), (1, 0), "{what}");
        }
        // nothing of it was stored
        assert_eq!(c.list_offset("rec", 0, -1).await, (0, 0, -1), "{what}");
    }
}

// ---------------------------------------------------------------- unknown topics

#[tokio::test(flavor = "multi_thread")]
async fn unknown_topics_and_partitions_are_unknown_topic_or_partition() {
    let f = Fixture::with(KafkaConfig {
        auto_create_topics: false,
        ..Default::default()
    });
    let mut c = f.connect();
    assert_eq!(c.create_topic("one", 1).await, 0);
    // (topic, partition) pairs that do not exist
    for (topic, partition) in [("one", 1), ("one", -1), ("one", 99), ("none", 0)] {
        let case = format!("{topic}/{partition}");
        let p = c.produce(1, topic, partition, batch(1, &[b"x"])).await;
        assert_eq!(
            (p.error_code, p.base_offset),
            (UNKNOWN_TOPIC_OR_PARTITION, -1),
            "produce {case}"
        );

        let started = Instant::now();
        let r = c.call(12, &fetch(topic, partition, 0, 60_000, 1)).await;
        let pd = &r.responses[0].partitions[0];
        assert_eq!(
            (pd.partition_index, pd.error_code, pd.high_watermark),
            (partition, UNKNOWN_TOPIC_OR_PARTITION, -1),
            "fetch {case}"
        );
        assert!(pd.records.as_deref().unwrap_or_default().is_empty());
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "an error does not wait"
        );

        let (code, offset, _) = c.list_offset(topic, partition, -1).await;
        assert_eq!(
            (code, offset),
            (UNKNOWN_TOPIC_OR_PARTITION, -1),
            "list offsets {case}"
        );

        let r = c
            .call(8, &offset_commit("grp", -1, "", topic, partition, 1, ""))
            .await;
        assert_eq!(
            r.topics[0].partitions[0].error_code, UNKNOWN_TOPIC_OR_PARTITION,
            "offset commit {case}"
        );
    }
    let r = c.call(12, &metadata(Some(&["none"]), true)).await;
    assert_eq!(r.topics[0].error_code, UNKNOWN_TOPIC_OR_PARTITION);

    let mut del = DeleteTopicsRequest::default();
    del.topic_names = vec![topic_name("none")];
    let r = c.call(5, &del).await;
    assert_eq!(r.responses[0].error_code, UNKNOWN_TOPIC_OR_PARTITION);

    let r = c.call(3, &create_partitions("none", 2)).await;
    assert_eq!(r.results[0].error_code, UNKNOWN_TOPIC_OR_PARTITION);
    assert!(r.results[0].error_message.is_some());

    let r = c.call(4, &describe_configs(2, "none")).await;
    assert_eq!(r.results[0].error_code, UNKNOWN_TOPIC_OR_PARTITION);
    assert!(r.results[0].configs.is_empty());
    let r = c
        .call(2, &alter_configs(2, "none", "retention.ms", "1"))
        .await;
    assert_eq!(r.responses[0].error_code, UNKNOWN_TOPIC_OR_PARTITION);
    let r = c
        .call(
            1,
            &incremental_alter(2, "none", "retention.ms", 0, Some("1")),
        )
        .await;
    assert_eq!(r.responses[0].error_code, UNKNOWN_TOPIC_OR_PARTITION);
    assert!(f.broker.topic("none").is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_topic_ids_are_unknown_topic_id() {
    let f = Fixture::new();
    let mut c = f.connect();
    let unknown = uuid::Uuid::from_u128(0x1234);
    let mut m = MetadataRequest::default();
    let mut t = metadata_request::MetadataRequestTopic::default();
    t.topic_id = unknown;
    t.name = None;
    m.topics = Some(vec![t]);
    let r = c.call(12, &m).await;
    assert_eq!(r.topics[0].error_code, UNKNOWN_TOPIC_ID);

    let mut st = delete_topics_request::DeleteTopicState::default();
    st.topic_id = unknown;
    st.name = None;
    let mut del = DeleteTopicsRequest::default();
    del.topics = vec![st];
    let r = c.call(6, &del).await;
    assert_eq!(
        (r.responses[0].error_code, r.responses[0].topic_id),
        (UNKNOWN_TOPIC_ID, unknown)
    );
}

// ---------------------------------------------------------------- offsets

#[tokio::test(flavor = "multi_thread")]
async fn fetching_outside_the_log_is_offset_out_of_range() {
    let f = Fixture::new();
    let mut c = f.connect();
    assert_eq!(c.create_topic("oor", 1).await, 0);
    c.produce(1, "oor", 0, batch(1, &[b"a", b"b", b"c"])).await;
    for offset in [4, 1_000, i64::MAX, -1, i64::MIN] {
        for version in [4, 12] {
            let started = Instant::now();
            let r = c.call(version, &fetch("oor", 0, offset, 60_000, 1)).await;
            let pd = &r.responses[0].partitions[0];
            assert_eq!(
                pd.error_code, OFFSET_OUT_OF_RANGE,
                "offset {offset} v{version}"
            );
            assert_eq!(pd.high_watermark, 3, "the watermark is still told");
            assert!(pd.records.as_deref().unwrap_or_default().is_empty());
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "an error does not wait"
            );
        }
    }
    // the end itself is in range (and empty)
    assert_eq!(c.fetch("oor", 0, 3).await.error_code, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn list_offsets_with_an_unknown_special_timestamp_is_unsupported_version() {
    let f = Fixture::new();
    let mut c = f.connect();
    assert_eq!(c.create_topic("ts", 1).await, 0);
    // -3 is MAX_TIMESTAMP (ListOffsets v7, not offered); anything below it means nothing
    for ts in [-3, -4, i64::MIN] {
        let (code, offset, timestamp) = c.list_offset("ts", 0, ts).await;
        assert_eq!(
            (code, offset, timestamp),
            (UNSUPPORTED_VERSION, -1, -1),
            "timestamp {ts}"
        );
    }
}

// ---------------------------------------------------------------- topics

fn create_partitions(name: &str, count: i32) -> CreatePartitionsRequest {
    let mut t = create_partitions_request::CreatePartitionsTopic::default();
    t.name = topic_name(name);
    t.count = count;
    let mut r = CreatePartitionsRequest::default();
    r.topics = vec![t];
    r.timeout_ms = 5_000;
    r
}

fn with_config(
    mut t: create_topics_request::CreatableTopic,
    k: &str,
    v: &str,
) -> create_topics_request::CreatableTopic {
    let mut c = create_topics_request::CreatableTopicConfig::default();
    c.name = s(k);
    c.value = Some(s(v));
    t.configs.push(c);
    t
}

#[tokio::test(flavor = "multi_thread")]
async fn create_topics_refuses_bad_names_counts_factors_configs_and_duplicates() {
    let f = Fixture::new();
    let mut c = f.connect();
    assert_eq!(c.create_topic("taken", 1).await, 0);
    let long = "x".repeat(250);
    let cases: Vec<(&str, create_topics_request::CreatableTopic, i16)> = vec![
        (
            "an empty name",
            creatable("", 1, 1),
            INVALID_TOPIC_EXCEPTION,
        ),
        (
            "a space in the name",
            creatable("bad name", 1, 1),
            INVALID_TOPIC_EXCEPTION,
        ),
        (
            "a slash in the name",
            creatable("a/b", 1, 1),
            INVALID_TOPIC_EXCEPTION,
        ),
        ("'..'", creatable("..", 1, 1), INVALID_TOPIC_EXCEPTION),
        ("'.'", creatable(".", 1, 1), INVALID_TOPIC_EXCEPTION),
        (
            "250 characters",
            creatable(&long, 1, 1),
            INVALID_TOPIC_EXCEPTION,
        ),
        (
            "an existing name",
            creatable("taken", 1, 1),
            TOPIC_ALREADY_EXISTS,
        ),
        ("0 partitions", creatable("p0", 0, 1), INVALID_PARTITIONS),
        ("-2 partitions", creatable("pm2", -2, 1), INVALID_PARTITIONS),
        (
            "10001 partitions",
            creatable("p10001", 10_001, 1),
            INVALID_PARTITIONS,
        ),
        (
            "replication factor 0",
            creatable("r0", 1, 0),
            INVALID_REPLICATION_FACTOR,
        ),
        (
            "replication factor 3",
            creatable("r3", 1, 3),
            INVALID_REPLICATION_FACTOR,
        ),
        (
            "replication factor -2",
            creatable("rm2", 1, -2),
            INVALID_REPLICATION_FACTOR,
        ),
        (
            "retention.ms not a number",
            with_config(creatable("c1", 1, 1), "retention.ms", "soon"),
            INVALID_CONFIG,
        ),
        (
            "retention.ms below -1",
            with_config(creatable("c2", 1, 1), "retention.ms", "-7"),
            INVALID_CONFIG,
        ),
        (
            "an unknown cleanup.policy",
            with_config(creatable("c3", 1, 1), "cleanup.policy", "never"),
            INVALID_CONFIG,
        ),
        (
            "segment.bytes below 14",
            with_config(creatable("c4", 1, 1), "segment.bytes", "13"),
            INVALID_CONFIG,
        ),
        (
            "an unknown config",
            with_config(creatable("c5", 1, 1), "flush.ms", "1"),
            INVALID_CONFIG,
        ),
    ];
    for (i, (what, topic, code)) in cases.into_iter().enumerate() {
        let name = topic.name.0.to_string();
        for (version, validate_only) in [(2, false), (7, false), (7, true)] {
            // a good topic beside it is created all the same
            let good = format!("good-{i}-{version}-{validate_only}");
            let mut req = create_topics(&[topic.clone(), creatable(&good, 1, 1)]);
            req.validate_only = validate_only;
            let r = c.call(version, &req).await;
            let t = &r.topics[0];
            assert_eq!(t.name.0.as_str(), name);
            assert_eq!(
                t.error_code, code,
                "{what} (v{version}, validate_only {validate_only})"
            );
            assert!(
                t.error_message.as_deref().is_some_and(|m| !m.is_empty()),
                "{what}: a message says why"
            );
            assert_eq!(
                r.topics[1].error_code, 0,
                "{what}: the good topic beside it"
            );
        }
        if code != TOPIC_ALREADY_EXISTS {
            assert!(f.broker.topic(&name).is_none(), "{what}: not created");
        }
    }
    // auto-creation of a bad name (Metadata, Produce) says the same
    let r = c.call(12, &metadata(Some(&["bad name"]), true)).await;
    assert_eq!(r.topics[0].error_code, INVALID_TOPIC_EXCEPTION);
    let p = c.produce(1, "bad name", 0, batch(1, &[b"x"])).await;
    assert_eq!(p.error_code, INVALID_TOPIC_EXCEPTION);
}

#[tokio::test(flavor = "multi_thread")]
async fn two_clients_creating_one_topic_at_once_one_wins() {
    let f = Fixture::new();
    let mut a = f.connect();
    let mut b = f.connect();
    for round in 0..20 {
        let name = format!("race-{round}");
        let req = create_topics(&[creatable(&name, 2, 1)]);
        let (ra, rb) = tokio::join!(a.call(7, &req), b.call(7, &req));
        let mut codes = [ra.topics[0].error_code, rb.topics[0].error_code];
        codes.sort();
        assert_eq!(codes, [0, TOPIC_ALREADY_EXISTS], "{name}");
        assert_eq!(f.broker.topic(&name).unwrap().partition_count(), 2);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn create_partitions_only_grows() {
    let f = Fixture::new();
    let mut c = f.connect();
    assert_eq!(c.create_topic("three", 3).await, 0);
    for (count, validate_only) in [(3, false), (2, false), (0, false), (-1, false), (3, true)] {
        let mut req = create_partitions("three", count);
        req.validate_only = validate_only;
        let r = c.call(3, &req).await;
        assert_eq!(r.results[0].error_code, INVALID_PARTITIONS, "count {count}");
        assert!(r.results[0].error_message.is_some());
        assert_eq!(f.broker.topic("three").unwrap().partition_count(), 3);
    }
}

fn describe_configs(resource_type: i8, name: &str) -> DescribeConfigsRequest {
    let mut res = describe_configs_request::DescribeConfigsResource::default();
    res.resource_type = resource_type;
    res.resource_name = s(name);
    res.configuration_keys = None;
    let mut r = DescribeConfigsRequest::default();
    r.resources = vec![res];
    r
}

fn alter_configs(resource_type: i8, name: &str, k: &str, v: &str) -> AlterConfigsRequest {
    let mut a = alter_configs_request::AlterableConfig::default();
    a.name = s(k);
    a.value = Some(s(v));
    let mut res = alter_configs_request::AlterConfigsResource::default();
    res.resource_type = resource_type;
    res.resource_name = s(name);
    res.configs = vec![a];
    let mut r = AlterConfigsRequest::default();
    r.resources = vec![res];
    r
}

fn incremental_alter(
    resource_type: i8,
    name: &str,
    k: &str,
    op: i8,
    v: Option<&str>,
) -> IncrementalAlterConfigsRequest {
    let mut a = incremental_alter_configs_request::AlterableConfig::default();
    a.name = s(k);
    a.config_operation = op;
    a.value = v.map(s);
    let mut res = incremental_alter_configs_request::AlterConfigsResource::default();
    res.resource_type = resource_type;
    res.resource_name = s(name);
    res.configs = vec![a];
    let mut r = IncrementalAlterConfigsRequest::default();
    r.resources = vec![res];
    r
}

#[tokio::test(flavor = "multi_thread")]
async fn config_changes_refuse_bad_values_unknown_keys_and_other_resources() {
    let f = Fixture::new();
    let mut c = f.connect();
    assert_eq!(c.create_topic("conf", 1).await, 0);
    let before = f.broker.topic("conf").unwrap().config();
    // AlterConfigs (resource type, key, value) -> code
    for (rtype, k, v, code) in [
        (2, "retention.ms", "later", INVALID_CONFIG),
        (2, "retention.bytes", "-2", INVALID_CONFIG),
        (2, "cleanup.policy", "sometimes", INVALID_CONFIG),
        (2, "max.message.bytes", "1", INVALID_CONFIG),
        (4, "num.partitions", "3", INVALID_REQUEST),
        (1, "retention.ms", "1", INVALID_REQUEST),
    ] {
        let name = if rtype == 2 { "conf" } else { "0" };
        for version in [0, 2] {
            let r = c.call(version, &alter_configs(rtype, name, k, v)).await;
            let x = &r.responses[0];
            assert_eq!(
                x.error_code, code,
                "AlterConfigs v{version} type {rtype} {k}={v}"
            );
            assert!(x.error_message.is_some());
            assert_eq!((x.resource_type, x.resource_name.as_str()), (rtype, name));
        }
    }
    // IncrementalAlterConfigs (resource type, key, op, value) -> code
    for (rtype, k, op, v, code) in [
        (2, "retention.ms", 0, Some("later"), INVALID_CONFIG),
        (2, "segment.bytes", 0, Some("1"), INVALID_CONFIG),
        (2, "unknown.key", 0, Some("1"), INVALID_CONFIG),
        (2, "unknown.key", 1, None, INVALID_CONFIG),
        (2, "cleanup.policy", 2, Some("compact"), INVALID_REQUEST),
        (2, "cleanup.policy", 3, Some("delete"), INVALID_REQUEST),
        (4, "num.partitions", 0, Some("3"), INVALID_REQUEST),
    ] {
        let name = if rtype == 2 { "conf" } else { "0" };
        for version in [0, 1] {
            let r = c
                .call(version, &incremental_alter(rtype, name, k, op, v))
                .await;
            assert_eq!(
                r.responses[0].error_code, code,
                "IncrementalAlterConfigs v{version} type {rtype} {k} op {op}"
            );
            assert!(r.responses[0].error_message.is_some());
        }
    }
    assert_eq!(
        f.broker.topic("conf").unwrap().config(),
        before,
        "nothing changed"
    );
    // DescribeConfigs of a resource type other than topic (2) or broker (4)
    for rtype in [0, 1, 3, 8] {
        let r = c.call(4, &describe_configs(rtype, "x")).await;
        assert_eq!(r.results[0].error_code, INVALID_REQUEST, "type {rtype}");
        assert!(r.results[0].configs.is_empty());
    }
}

// ---------------------------------------------------------------- idempotent producers

fn init_producer_id(transactional_id: Option<&str>, pid: i64, epoch: i16) -> InitProducerIdRequest {
    let mut r = InitProducerIdRequest::default();
    r.transactional_id = transactional_id.map(|t| TransactionalId(s(t)));
    r.transaction_timeout_ms = 60_000;
    r.producer_id = ProducerId(pid);
    r.producer_epoch = epoch;
    r
}

#[tokio::test(flavor = "multi_thread")]
async fn sequence_gaps_old_epochs_and_transactions_are_refused() {
    let f = Fixture::new();
    let mut c = f.connect();
    assert_eq!(c.create_topic("seq", 1).await, 0);
    for version in [0, 3, 4] {
        let r = c
            .call(version, &init_producer_id(Some("txn-1"), -1, -1))
            .await;
        assert_eq!(
            (r.error_code, r.producer_id.0, r.producer_epoch),
            (TRANSACTIONAL_ID_AUTHORIZATION_FAILED, -1, -1),
            "v{version}"
        );
    }
    // an empty transactional id is an idempotent producer
    let r = c.call(4, &init_producer_id(Some(""), -1, -1)).await;
    assert_eq!(r.error_code, 0);
    let pid = r.producer_id.0;

    assert_eq!(
        c.produce(-1, "seq", 0, idempotent_batch(pid, 0, 0, 2))
            .await
            .error_code,
        0
    );
    // (epoch, base sequence) -> code; nothing is appended
    for (epoch, seq, code) in [
        (0, 3, OUT_OF_ORDER_SEQUENCE_NUMBER),
        (0, 1, OUT_OF_ORDER_SEQUENCE_NUMBER),
        (0, 7, OUT_OF_ORDER_SEQUENCE_NUMBER),
        (1, 2, OUT_OF_ORDER_SEQUENCE_NUMBER),
    ] {
        let p = c
            .produce(-1, "seq", 0, idempotent_batch(pid, epoch, seq, 1))
            .await;
        assert_eq!(
            (p.error_code, p.base_offset),
            (code, -1),
            "epoch {epoch} seq {seq}"
        );
        assert!(p.error_message.as_deref().is_some_and(|m| !m.is_empty()));
        assert_eq!(c.list_offset("seq", 0, -1).await.1, 2);
    }
    // the next epoch starts at 0; the old one is then fenced
    let p = c
        .produce(-1, "seq", 0, idempotent_batch(pid, 1, 0, 1))
        .await;
    assert_eq!((p.error_code, p.base_offset), (0, 2));
    for seq in [2, 0] {
        let p = c
            .produce(-1, "seq", 0, idempotent_batch(pid, 0, seq, 1))
            .await;
        assert_eq!(
            (p.error_code, p.base_offset),
            (INVALID_PRODUCER_EPOCH, -1),
            "seq {seq}"
        );
    }
    assert_eq!(c.list_offset("seq", 0, -1).await.1, 3);
}

// ---------------------------------------------------------------- storage

#[tokio::test(flavor = "multi_thread")]
async fn storage_failures_are_kafka_storage_error() {
    let f = Fixture::new();
    let mut c = f.connect();
    let topics = f.data_dir().join("topics");
    std::fs::create_dir_all(&topics).unwrap();
    // a file where a topic's directory must go: it cannot be created
    std::fs::write(topics.join("blocked"), b"not a directory").unwrap();
    let r = c
        .call(7, &create_topics(&[creatable("blocked", 1, 1)]))
        .await;
    assert_eq!(r.topics[0].error_code, KAFKA_STORAGE_ERROR);
    assert!(r.topics[0].error_message.is_some());
    assert!(f.broker.topic("blocked").is_none());
    let r = c.call(12, &metadata(Some(&["blocked"]), true)).await;
    assert_eq!(
        r.topics[0].error_code, KAFKA_STORAGE_ERROR,
        "auto-created by Metadata"
    );
    let p = c.produce(1, "blocked", 0, batch(1, &[b"x"])).await;
    assert_eq!(p.error_code, KAFKA_STORAGE_ERROR, "auto-created by Produce");

    // the same for a new partition's directory
    assert_eq!(c.create_topic("grow", 1).await, 0);
    std::fs::write(topics.join("grow").join("1"), b"not a directory").unwrap();
    let r = c.call(3, &create_partitions("grow", 2)).await;
    assert_eq!(r.results[0].error_code, KAFKA_STORAGE_ERROR);

    // a partition whose directory is gone cannot roll to a new segment (every append
    // rolls with the smallest segment size)
    let t = with_config(creatable("gone", 1, 1), "segment.bytes", "14");
    assert_eq!(
        c.call(7, &create_topics(&[t])).await.topics[0].error_code,
        0
    );
    let p = c.produce(-1, "gone", 0, batch(1, &[b"first"])).await;
    assert_eq!((p.error_code, p.base_offset), (0, 0));
    let dir = topics.join("gone").join("0");
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::write(&dir, b"not a directory").unwrap();
    for acks in [1, -1] {
        let p = c.produce(acks, "gone", 0, batch(1, &[b"second"])).await;
        assert_eq!(
            (p.error_code, p.base_offset),
            (KAFKA_STORAGE_ERROR, -1),
            "acks={acks}"
        );
        assert!(p.error_message.is_some());
    }

    // logs closed under the connection (as at shutdown)
    assert_eq!(c.create_topic("closing", 1).await, 0);
    c.produce(1, "closing", 0, batch(5_000, &[b"x"])).await;
    assert_eq!(c.commit("committed", -1, "", "closing", 0, 1).await, 0);
    f.broker.shutdown();
    let p = c.produce(1, "closing", 0, batch(1, &[b"y"])).await;
    assert_eq!(p.error_code, KAFKA_STORAGE_ERROR, "produce");
    let pd = c.fetch("closing", 0, 0).await;
    assert_eq!(pd.error_code, KAFKA_STORAGE_ERROR, "fetch");
    assert_eq!(
        c.list_offset("closing", 0, 5_000).await.0,
        KAFKA_STORAGE_ERROR,
        "by timestamp"
    );
    assert_eq!(
        c.commit("committed", -1, "", "closing", 0, 2).await,
        KAFKA_STORAGE_ERROR,
        "commit"
    );
    let mut del = DeleteGroupsRequest::default();
    del.groups_names = vec![group_id("committed")];
    let r = c.call(2, &del).await;
    assert_eq!(r.results[0].error_code, KAFKA_STORAGE_ERROR, "delete group");
}

// ---------------------------------------------------------------- consumer groups

#[tokio::test(flavor = "multi_thread")]
async fn join_group_refuses_bad_requests() {
    let f = Fixture::new();
    let mut c = f.connect();
    let mut empty_type = join_group("g", "");
    empty_type.protocol_type = s("");
    let mut no_protocols = join_group("g", "");
    no_protocols.protocols.clear();
    let mut short = join_group("g", "");
    short.session_timeout_ms = 999;
    let mut long = join_group("g", "");
    long.session_timeout_ms = 3_600_001;
    let cases: Vec<(&str, JoinGroupRequest, i16)> = vec![
        ("an empty group id", join_group("", ""), INVALID_GROUP_ID),
        (
            "a session timeout of 999 ms",
            short,
            INVALID_SESSION_TIMEOUT,
        ),
        (
            "a session timeout over an hour",
            long,
            INVALID_SESSION_TIMEOUT,
        ),
        ("no protocol type", empty_type, INCONSISTENT_GROUP_PROTOCOL),
        ("no protocols", no_protocols, INCONSISTENT_GROUP_PROTOCOL),
        (
            "a member id never handed out",
            join_group("g", "made-up"),
            UNKNOWN_MEMBER_ID,
        ),
    ];
    for (what, mut req, code) in cases {
        for version in [0, 3, 5, 7] {
            // v0 has no rebalance timeout: it must keep its default
            req.rebalance_timeout_ms = if version == 0 { -1 } else { 30_000 };
            let r = c.call(version, &req).await;
            assert_eq!(
                (r.error_code, r.generation_id),
                (code, -1),
                "{what} (v{version})"
            );
        }
    }
    // v4+: a first join without a member id is given one to come back with
    for version in [4, 7] {
        let r = c.call(version, &join_group("g", "")).await;
        assert_eq!(r.error_code, MEMBER_ID_REQUIRED, "v{version}");
        assert!(!r.member_id.is_empty());
    }
    // a member whose protocols the group does not speak
    let j = c.join_new("g").await;
    assert_eq!(j.generation_id, 1);
    let mut other = c.call(5, &join_group("g", "")).await;
    assert_eq!(other.error_code, MEMBER_ID_REQUIRED);
    let mut req = join_group("g", other.member_id.as_str());
    req.protocols[0].name = s("roundrobin");
    other = c.call(5, &req).await;
    assert_eq!(other.error_code, INCONSISTENT_GROUP_PROTOCOL);
    let mut req = join_group("g", "");
    req.protocol_type = s("connect");
    assert_eq!(
        c.call(5, &req).await.error_code,
        INCONSISTENT_GROUP_PROTOCOL
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn group_calls_from_strangers_or_the_wrong_generation_are_refused() {
    let f = Fixture::new();
    let mut c = f.connect();
    assert_eq!(c.create_topic("gt", 1).await, 0);
    // a group nobody joined
    assert_eq!(c.heartbeat("nobody-here", 0, "m").await, UNKNOWN_MEMBER_ID);
    let r = c.call(3, &sync_group("nobody-here", 0, "m", &[])).await;
    assert_eq!(r.error_code, UNKNOWN_MEMBER_ID);
    let mut lv = LeaveGroupRequest::default();
    lv.group_id = group_id("nobody-here");
    lv.member_id = s("m");
    assert_eq!(c.call(2, &lv).await.error_code, UNKNOWN_MEMBER_ID);
    assert_eq!(
        c.commit("nobody-here", 3, "m", "gt", 0, 1).await,
        ILLEGAL_GENERATION
    );

    let j = c.join_new("g").await;
    let m = j.member_id.to_string();
    let r = c.call(3, &sync_group("g", 1, &m, &[(&m, b"a")])).await;
    assert_eq!(r.error_code, 0);
    // (generation, member) -> code, for Heartbeat, SyncGroup and OffsetCommit alike
    for (generation, member, code) in [
        (1, "stranger", UNKNOWN_MEMBER_ID),
        (2, m.as_str(), ILLEGAL_GENERATION),
        (0, m.as_str(), ILLEGAL_GENERATION),
    ] {
        let case = format!("generation {generation}, member {member}");
        assert_eq!(
            c.heartbeat("g", generation, member).await,
            code,
            "heartbeat {case}"
        );
        let r = c.call(3, &sync_group("g", generation, member, &[])).await;
        assert_eq!(r.error_code, code, "sync {case}");
        assert_eq!(
            c.commit("g", generation, member, "gt", 0, 1).await,
            code,
            "commit {case}"
        );
    }
    // a commit from outside any generation while the group has members
    assert_eq!(c.commit("g", -1, "", "gt", 0, 1).await, UNKNOWN_MEMBER_ID);
    // leaving as somebody else (v3+: per member)
    let mut lv = LeaveGroupRequest::default();
    lv.group_id = group_id("g");
    for id in ["stranger", m.as_str()] {
        let mut who = leave_group_request::MemberIdentity::default();
        who.member_id = s(id);
        lv.members.push(who);
    }
    let r = c.call(4, &lv).await;
    let got: Vec<(&str, i16)> = r
        .members
        .iter()
        .map(|x| (x.member_id.as_str(), x.error_code))
        .collect();
    assert_eq!(got, vec![("stranger", UNKNOWN_MEMBER_ID), (m.as_str(), 0)]);
    // gone now
    assert_eq!(c.heartbeat("g", 1, &m).await, UNKNOWN_MEMBER_ID);
}

#[tokio::test(flavor = "multi_thread")]
async fn calls_during_a_rebalance_are_rebalance_in_progress() {
    let f = Fixture::new();
    let mut a = f.connect();
    let mut b = f.connect();
    assert_eq!(a.create_topic("rb", 1).await, 0);
    let ja = a.join_new("rb").await;
    let ma = ja.member_id.to_string();
    assert_eq!(
        a.call(3, &sync_group("rb", 1, &ma, &[(&ma, b"x")]))
            .await
            .error_code,
        0
    );
    // a second member's join starts a rebalance and waits in it
    let first = b.call(5, &join_group("rb", "")).await;
    assert_eq!(first.error_code, MEMBER_ID_REQUIRED);
    let mb = first.member_id.to_string();
    let parked = b.send(5, &join_group("rb", &mb)).await;
    let deadline = Instant::now() + DEADLINE;
    while a.group_state("rb").await != "PreparingRebalance" {
        assert!(Instant::now() < deadline, "the rebalance never started");
    }
    assert_eq!(a.heartbeat("rb", 1, &ma).await, REBALANCE_IN_PROGRESS);
    let r = a.call(3, &sync_group("rb", 1, &ma, &[(&ma, b"x")])).await;
    assert_eq!(r.error_code, REBALANCE_IN_PROGRESS);
    assert_eq!(
        a.commit("rb", 1, &ma, "rb", 0, 1).await,
        REBALANCE_IN_PROGRESS
    );
    // a group with members cannot be deleted
    let mut del = DeleteGroupsRequest::default();
    del.groups_names = vec![group_id("rb")];
    assert_eq!(a.call(2, &del).await.results[0].error_code, NON_EMPTY_GROUP);
    // a rejoins: generation 2 for both, and generation 1 is over
    let ja = a.call(5, &join_group("rb", &ma)).await;
    let jb = b.recv::<JoinGroupRequest>(5, parked).await;
    assert_eq!((ja.error_code, ja.generation_id), (0, 2));
    assert_eq!((jb.error_code, jb.generation_id), (0, 2));
    assert_eq!(a.heartbeat("rb", 1, &ma).await, ILLEGAL_GENERATION);
}

#[tokio::test(flavor = "multi_thread")]
async fn commit_metadata_over_4096_bytes_is_offset_metadata_too_large() {
    let f = Fixture::new();
    let mut c = f.connect();
    assert_eq!(c.create_topic("md", 1).await, 0);
    for (len, code) in [
        (4096, 0),
        (4097, OFFSET_METADATA_TOO_LARGE),
        (100_000, OFFSET_METADATA_TOO_LARGE),
    ] {
        let meta = "m".repeat(len);
        let r = c
            .call(8, &offset_commit("gm", -1, "", "md", 0, len as i64, &meta))
            .await;
        assert_eq!(r.topics[0].partitions[0].error_code, code, "{len} bytes");
    }
    let mut t = offset_fetch_request::OffsetFetchRequestTopic::default();
    t.name = topic_name("md");
    t.partition_indexes = vec![0];
    let mut of = OffsetFetchRequest::default();
    of.group_id = group_id("gm");
    of.topics = Some(vec![t]);
    let r = c.call(7, &of).await;
    assert_eq!(
        r.topics[0].partitions[0].committed_offset, 4096,
        "the refused ones were not stored"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn deleting_unknown_or_busy_groups_is_refused() {
    let f = Fixture::new();
    let mut c = f.connect();
    let j = c.join_new("busy").await;
    assert_eq!(j.error_code, 0);
    let mut del = DeleteGroupsRequest::default();
    del.groups_names = vec![group_id("never-seen"), group_id("busy")];
    for version in 0..=2 {
        let r = c.call(version, &del).await;
        let got: Vec<(&str, i16)> = r
            .results
            .iter()
            .map(|x| (x.group_id.0.as_str(), x.error_code))
            .collect();
        assert_eq!(
            got,
            vec![
                ("never-seen", GROUP_ID_NOT_FOUND),
                ("busy", NON_EMPTY_GROUP)
            ],
            "v{version}"
        );
    }
}

// ---------------------------------------------------------------- authorization

/// Every topic request of a user without the permission it needs is TOPIC_AUTHORIZATION_FAILED
/// (and changes nothing); every group request is GROUP_AUTHORIZATION_FAILED.
async fn assert_refused_everything(f: &Fixture, c: &mut Client, topic: &str, group: &str) {
    let p = c.produce(-1, topic, 0, batch(1, &[b"x"])).await;
    assert_eq!(
        (p.error_code, p.base_offset),
        (TOPIC_AUTHORIZATION_FAILED, -1),
        "produce"
    );
    let p = c.produce(1, "to-create", 0, batch(1, &[b"x"])).await;
    assert_eq!(
        p.error_code, TOPIC_AUTHORIZATION_FAILED,
        "produce creating a topic"
    );
    let r = c.call(12, &fetch(topic, 0, 0, 0, 1)).await;
    assert_eq!(
        r.responses[0].partitions[0].error_code, TOPIC_AUTHORIZATION_FAILED,
        "fetch"
    );
    assert_eq!(
        c.list_offset(topic, 0, -1).await.0,
        TOPIC_AUTHORIZATION_FAILED,
        "list offsets"
    );
    let r = c.call(12, &metadata(Some(&[topic]), true)).await;
    assert_eq!(
        r.topics[0].error_code, TOPIC_AUTHORIZATION_FAILED,
        "metadata"
    );
    assert!(r.topics[0].partitions.is_empty());
    let r = c.call(12, &metadata(Some(&["meta-create"]), true)).await;
    assert_eq!(
        r.topics[0].error_code, TOPIC_AUTHORIZATION_FAILED,
        "metadata creating a topic"
    );
    let r = c.call(12, &metadata(None, true)).await;
    assert!(r.topics.is_empty(), "no topic listed");
    let r = c
        .call(7, &create_topics(&[creatable("new-one", 1, 1)]))
        .await;
    assert_eq!(
        r.topics[0].error_code, TOPIC_AUTHORIZATION_FAILED,
        "create topics"
    );
    let mut del = DeleteTopicsRequest::default();
    del.topic_names = vec![topic_name(topic)];
    let r = c.call(5, &del).await;
    assert_eq!(
        r.responses[0].error_code, TOPIC_AUTHORIZATION_FAILED,
        "delete topics"
    );
    let r = c.call(3, &create_partitions(topic, 4)).await;
    assert_eq!(
        r.results[0].error_code, TOPIC_AUTHORIZATION_FAILED,
        "create partitions"
    );
    let r = c.call(4, &describe_configs(2, topic)).await;
    assert_eq!(
        r.results[0].error_code, TOPIC_AUTHORIZATION_FAILED,
        "describe configs"
    );
    let r = c
        .call(2, &alter_configs(2, topic, "retention.ms", "1"))
        .await;
    assert_eq!(
        r.responses[0].error_code, TOPIC_AUTHORIZATION_FAILED,
        "alter configs"
    );
    let r = c
        .call(
            1,
            &incremental_alter(2, topic, "retention.ms", 0, Some("1")),
        )
        .await;
    assert_eq!(
        r.responses[0].error_code, TOPIC_AUTHORIZATION_FAILED,
        "incremental alter"
    );
    for name in ["to-create", "meta-create", "new-one"] {
        assert!(f.broker.topic(name).is_none(), "{name} not created");
    }
    let t = f.broker.topic(topic).expect("still there");
    assert_eq!(t.partition_count(), 1);
    assert_eq!(t.partition(0).unwrap().end_offset(), 1, "nothing appended");
    assert_eq!(t.config().retention_ms, 604_800_000);

    // groups
    let r = c.call(5, &join_group(group, "")).await;
    assert_eq!(
        (r.error_code, r.generation_id),
        (GROUP_AUTHORIZATION_FAILED, -1),
        "join"
    );
    let r = c.call(3, &sync_group(group, 1, "m", &[])).await;
    assert_eq!(r.error_code, GROUP_AUTHORIZATION_FAILED, "sync");
    assert_eq!(
        c.heartbeat(group, 1, "m").await,
        GROUP_AUTHORIZATION_FAILED,
        "heartbeat"
    );
    let mut lv = LeaveGroupRequest::default();
    lv.group_id = group_id(group);
    lv.member_id = s("m");
    assert_eq!(
        c.call(2, &lv).await.error_code,
        GROUP_AUTHORIZATION_FAILED,
        "leave v2"
    );
    let mut lv = LeaveGroupRequest::default();
    lv.group_id = group_id(group);
    let mut who = leave_group_request::MemberIdentity::default();
    who.member_id = s("m");
    lv.members = vec![who];
    let r = c.call(4, &lv).await;
    assert_eq!(
        r.members[0].error_code, GROUP_AUTHORIZATION_FAILED,
        "leave v4"
    );
    assert_eq!(
        c.commit(group, -1, "", topic, 0, 1).await,
        GROUP_AUTHORIZATION_FAILED,
        "commit"
    );
    let mut of = OffsetFetchRequest::default();
    of.group_id = group_id(group);
    of.topics = None;
    let r = c.call(7, &of).await;
    assert_eq!(r.error_code, GROUP_AUTHORIZATION_FAILED, "offset fetch v7");
    let mut of = OffsetFetchRequest::default();
    let mut g = offset_fetch_request::OffsetFetchRequestGroup::default();
    g.group_id = group_id(group);
    g.topics = None;
    of.groups = vec![g];
    let r = c.call(8, &of).await;
    assert_eq!(
        r.groups[0].error_code, GROUP_AUTHORIZATION_FAILED,
        "offset fetch v8"
    );
    let mut dg = DescribeGroupsRequest::default();
    dg.groups = vec![group_id(group)];
    let r = c.call(5, &dg).await;
    assert_eq!(
        r.groups[0].error_code, GROUP_AUTHORIZATION_FAILED,
        "describe groups"
    );
    let mut del = DeleteGroupsRequest::default();
    del.groups_names = vec![group_id(group)];
    let r = c.call(2, &del).await;
    assert_eq!(
        r.results[0].error_code, GROUP_AUTHORIZATION_FAILED,
        "delete groups"
    );
    let r = c.call(4, &ListGroupsRequest::default()).await;
    assert!(r.groups.is_empty(), "no group listed");
}

/// A topic with one record and a group with a committed offset, made as guest.
async fn setup_topic_and_group(f: &Fixture) {
    let mut admin = f.connect();
    assert_eq!(admin.create_topic("secret", 1).await, 0);
    admin.produce(1, "secret", 0, batch(1, &[b"s"])).await;
    assert_eq!(
        admin.commit("secret-group", -1, "", "secret", 0, 1).await,
        0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_user_without_permissions_is_refused_every_topic_and_group() {
    let f = Fixture::new();
    setup_topic_and_group(&f).await;
    f.add_user("nobody", "secret-pw", None);
    let mut c = f.connect();
    // as the anonymous guest this connection may do anything; once logged in, nothing
    assert_eq!(
        c.produce(1, "secret", 0, batch(1, &[b"guest"]))
            .await
            .error_code,
        0
    );
    assert_eq!(
        c.call(12, &metadata(Some(&["secret"]), false)).await.topics[0].error_code,
        0
    );
    assert_eq!(c.login("nobody", "secret-pw").await, 0);
    // the guest's record is there, so the topic holds 2 now
    let r = c.call(12, &fetch("secret", 0, 0, 0, 1)).await;
    assert_eq!(
        r.responses[0].partitions[0].error_code,
        TOPIC_AUTHORIZATION_FAILED
    );
    let t = f.broker.topic("secret").unwrap();
    assert_eq!(t.partition(0).unwrap().end_offset(), 2);
    // (checked against a fresh connection too, where nothing was granted before)
    let mut fresh = f.connect();
    assert_eq!(fresh.login("nobody", "secret-pw").await, 0);
    let p = fresh.produce(1, "secret", 0, batch(1, &[b"x"])).await;
    assert_eq!(p.error_code, TOPIC_AUTHORIZATION_FAILED);
    drop(t);
    // the full list, on a topic that holds one record
    let mut admin = f.connect();
    assert_eq!(admin.create_topic("secret2", 1).await, 0);
    admin.produce(1, "secret2", 0, batch(1, &[b"s"])).await;
    assert_refused_everything(&f, &mut fresh, "secret2", "secret-group").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn anonymous_clients_may_do_nothing_once_guest_has_another_password() {
    let f = Fixture::new();
    setup_topic_and_group(&f).await;
    f.broker
        .users()
        .put("guest", Some("changed"), None, vec!["administrator".into()])
        .unwrap();
    let mut c = f.connect();
    assert_refused_everything(&f, &mut c, "secret", "secret-group").await;
    // logging in as guest with the new password lets it in again
    assert_eq!(c.login("guest", "changed").await, 0);
    assert_eq!(
        c.produce(1, "secret", 0, batch(1, &[b"ok"]))
            .await
            .error_code,
        0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn permissions_are_checked_per_topic_and_per_group() {
    let f = Fixture::new();
    let mut admin = f.connect();
    for t in ["mine", "theirs"] {
        assert_eq!(admin.create_topic(t, 1).await, 0);
        admin.produce(1, t, 0, batch(1, &[b"v"])).await;
    }
    // read (topics and groups) only of names starting with "mine", write and configure nothing
    f.add_user("reader", "pw", Some(("", "", "^mine")));
    let mut c = f.connect();
    assert_eq!(c.login("reader", "pw").await, 0);
    // one fetch, two topics: one readable, one not
    let mut req = fetch("mine", 0, 0, 0, 1);
    req.topics
        .push(fetch("theirs", 0, 0, 0, 1).topics.remove(0));
    let r = c.call(12, &req).await;
    let codes: Vec<(&str, i16)> = r
        .responses
        .iter()
        .map(|t| (t.topic.0.as_str(), t.partitions[0].error_code))
        .collect();
    assert_eq!(
        codes,
        vec![("mine", 0), ("theirs", TOPIC_AUTHORIZATION_FAILED)]
    );
    assert!(!r.responses[0].partitions[0]
        .records
        .as_deref()
        .unwrap()
        .is_empty());
    // only the readable topic is listed
    let m = c.call(12, &metadata(None, false)).await;
    let names: Vec<&str> = m
        .topics
        .iter()
        .map(|t| t.name.as_ref().unwrap().0.as_str())
        .collect();
    assert_eq!(names, vec!["mine"]);
    // reading is not writing or configuring
    let p = c.produce(1, "mine", 0, batch(1, &[b"x"])).await;
    assert_eq!(p.error_code, TOPIC_AUTHORIZATION_FAILED);
    let r = c
        .call(2, &alter_configs(2, "mine", "retention.ms", "1"))
        .await;
    assert_eq!(r.responses[0].error_code, TOPIC_AUTHORIZATION_FAILED);
    // a group it may read, committing for a topic it may not
    let r = c
        .call(8, &offset_commit("mine-group", -1, "", "theirs", 0, 1, ""))
        .await;
    assert_eq!(
        r.topics[0].partitions[0].error_code,
        TOPIC_AUTHORIZATION_FAILED
    );
    assert_eq!(c.commit("mine-group", -1, "", "mine", 0, 1).await, 0);
    assert_eq!(
        c.commit("their-group", -1, "", "mine", 0, 1).await,
        GROUP_AUTHORIZATION_FAILED
    );
    // deleting a group needs configure
    let mut del = DeleteGroupsRequest::default();
    del.groups_names = vec![group_id("mine-group")];
    assert_eq!(
        c.call(2, &del).await.results[0].error_code,
        GROUP_AUTHORIZATION_FAILED
    );
}

// ---------------------------------------------------------------- SASL

#[tokio::test(flavor = "multi_thread")]
async fn sasl_mechanisms_other_than_plain_are_unsupported() {
    let f = Fixture::new();
    let mut c = f.connect();
    for mechanism in ["SCRAM-SHA-256", "GSSAPI", "plain", ""] {
        let mut h = SaslHandshakeRequest::default();
        h.mechanism = s(mechanism);
        let r = c.call(1, &h).await;
        assert_eq!(r.error_code, UNSUPPORTED_SASL_MECHANISM, "{mechanism:?}");
        let offered: Vec<&str> = r.mechanisms.iter().map(|m| m.as_str()).collect();
        assert_eq!(offered, vec!["PLAIN"]);
    }
    // the connection stays open, and without a handshake authentication is out of order
    let mut a = SaslAuthenticateRequest::default();
    a.auth_bytes = plain("guest", "guest");
    let r = c.call(2, &a).await;
    assert_eq!(r.error_code, ILLEGAL_SASL_STATE);
    assert!(r.error_message.is_some());
    c.expect_closed().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_sasl_login_is_answered_then_the_connection_closes() {
    let f = Fixture::new();
    f.add_user("alice", "right", Some((".*", ".*", ".*")));
    // a user may be given a blank password; logging in with it is refused (RabbitMQ's rule)
    f.add_user("blank", "", Some((".*", ".*", ".*")));
    for (what, auth) in [
        ("a wrong password", plain("alice", "wrong")),
        ("a blank password", plain("blank", "")),
        ("an unknown user", plain("mallory", "right")),
        ("no separators", Bytes::from_static(b"alice right")),
        ("one separator", Bytes::from_static(b"alice\0right")),
        ("empty", Bytes::new()),
    ] {
        for version in [0, 1, 2] {
            let mut c = f.connect();
            let mut h = SaslHandshakeRequest::default();
            h.mechanism = s("PLAIN");
            assert_eq!(c.call(1, &h).await.error_code, 0);
            let mut a = SaslAuthenticateRequest::default();
            a.auth_bytes = auth.clone();
            // a request behind it in the same write is not answered
            let corr = c.next_corr();
            let behind = c.next_corr();
            let both = [
                frame(version, corr, Some("sasl"), &a),
                frame(3, behind, Some("sasl"), &ApiVersionsRequest::default()),
            ]
            .concat();
            c.send_raw(&both).await;
            let r = c.recv::<SaslAuthenticateRequest>(version, corr).await;
            assert_eq!(
                r.error_code, SASL_AUTHENTICATION_FAILED,
                "{what} (v{version})"
            );
            assert!(r.error_message.as_deref().is_some_and(|m| !m.is_empty()));
            c.expect_closed().await;
        }
    }
    // the right password in every version
    for version in [0, 1, 2] {
        let mut c = f.connect();
        let mut h = SaslHandshakeRequest::default();
        h.mechanism = s("PLAIN");
        assert_eq!(c.call(1, &h).await.error_code, 0);
        let mut a = SaslAuthenticateRequest::default();
        a.auth_bytes = plain("alice", "right");
        assert_eq!(c.call(version, &a).await.error_code, 0);
        assert_eq!(
            c.call(3, &ApiVersionsRequest::default()).await.error_code,
            0
        );
    }
}

// ---------------------------------------------------------------- framing

/// The ApiVersions v0 answer to a version it does not speak: UNSUPPORTED_VERSION and the
/// ranges it does.
#[tokio::test(flavor = "multi_thread")]
async fn api_versions_in_an_unknown_version_is_answered_v0_with_unsupported_version() {
    let f = Fixture::new();
    let mut c = f.connect();
    for version in [4, 5, 99, i16::MAX, -1] {
        let corr = c.next_corr();
        // v3+ requests have a flexible header, but the version is refused before it is read
        c.send_raw(&raw_frame(18, version, corr, b"\x00garbage"))
            .await;
        let mut body = c.read_frame().await.expect("answered");
        let h = ResponseHeader::decode(&mut body, 0).unwrap();
        assert_eq!(h.correlation_id, corr);
        let r = ApiVersionsResponse::decode(&mut body, 0).unwrap();
        assert!(body.is_empty());
        assert_eq!(r.error_code, UNSUPPORTED_VERSION, "v{version}");
        let versions = r
            .api_keys
            .iter()
            .find(|a| a.api_key == 18)
            .map(|a| (a.min_version, a.max_version));
        assert_eq!(versions, Some((0, 3)));
        assert_eq!(r.api_keys.len(), 25);
    }
    // and the connection goes on
    assert_eq!(
        c.call(3, &ApiVersionsRequest::default()).await.error_code,
        0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn frames_it_cannot_take_close_the_connection_without_an_answer() {
    let f = Fixture::with(KafkaConfig {
        max_request_bytes: 1024,
        ..Default::default()
    });
    // a request of exactly the limit is taken (bytes past a request's fields are ignored)
    let mut c = f.connect();
    let mut exact = raw_frame(18, 0, 1, &[]);
    exact.resize(4 + 1024, 0);
    exact[..4].copy_from_slice(&1024i32.to_be_bytes());
    c.send_raw(&exact).await;
    let mut body = c.read_frame().await.expect("answered");
    assert_eq!(
        ResponseHeader::decode(&mut body, 0).unwrap().correlation_id,
        1
    );

    let over = {
        let mut b = raw_frame(18, 0, 1, &[]);
        b.resize(4 + 1025, 0);
        b[..4].copy_from_slice(&1025i32.to_be_bytes());
        b
    };
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("size 0", 0i32.to_be_bytes().to_vec()),
        ("size 7", [7i32.to_be_bytes().to_vec(), vec![0; 7]].concat()),
        ("a negative size", (-1i32).to_be_bytes().to_vec()),
        ("size i32::MIN", i32::MIN.to_be_bytes().to_vec()),
        ("one byte over the limit", over),
        ("a size far over the limit", i32::MAX.to_be_bytes().to_vec()),
        ("an unknown API key", raw_frame(9_999, 0, 1, &[])),
        (
            "an API it does not serve (DeleteRecords)",
            raw_frame(21, 0, 1, &[]),
        ),
        (
            "an API it does not serve (EndTxn)",
            raw_frame(26, 0, 1, &[]),
        ),
        ("Produce v2", raw_frame(0, 2, 1, &[])),
        ("Produce v10", raw_frame(0, 10, 1, &[])),
        ("Fetch v3", raw_frame(1, 3, 1, &[])),
        ("Fetch v13", raw_frame(1, 13, 1, &[])),
        ("Metadata v13", raw_frame(3, 13, 1, &[])),
        ("SaslHandshake v0", raw_frame(17, 0, 1, &[])),
        ("OffsetCommit v1", raw_frame(8, 1, 1, &[])),
        ("a body cut short (Produce v9)", raw_frame(0, 9, 1, &[0, 1])),
        (
            "a body cut short (Metadata v1)",
            raw_frame(3, 1, 1, &[0, 0, 0, 5]),
        ),
        ("a header cut short (client id longer than the frame)", {
            let mut b = BytesMut::new();
            b.put_i32(10);
            b.put_i16(18);
            b.put_i16(0);
            b.put_i32(1);
            b.put_i16(100);
            b.to_vec()
        }),
    ];
    for (what, bytes) in cases {
        let mut c = f.connect();
        // requests before it are answered before the connection closes
        let corr = c.send(3, &ApiVersionsRequest::default()).await;
        c.send_raw(&bytes).await;
        assert_eq!(
            c.recv::<ApiVersionsRequest>(3, corr).await.error_code,
            0,
            "{what}"
        );
        c.expect_closed().await;
    }
}
