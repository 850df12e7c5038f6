//! Behaviour fixed while the front end was reshaped, each as Kafka does it: OffsetFetch v0/v1
//! (no top-level error code) tells a refused group on each partition; CreatePartitions past the
//! limit is INVALID_PARTITIONS; a failed acks=0 produce closes the connection; a batch larger
//! than a log takes is MESSAGE_TOO_LARGE.

mod common;

use common::*;
use eddy_kafka::KafkaConfig;
use kafka_protocol::messages::*;

#[tokio::test(flavor = "multi_thread")]
async fn offset_fetch_v1_tells_a_refused_group_on_each_partition() {
    let f = Fixture::new();
    let mut admin = f.connect();
    assert_eq!(admin.create_topic("t", 2).await, 0);
    f.add_user("nobody", "pw", None);
    let mut c = f.connect();
    assert_eq!(c.login("nobody", "pw").await, 0);
    let mut t = offset_fetch_request::OffsetFetchRequestTopic::default();
    t.name = topic_name("t");
    t.partition_indexes = vec![0, 1];
    let mut of = OffsetFetchRequest::default();
    of.group_id = group_id("g");
    of.topics = Some(vec![t]);
    let r = c.call(1, &of).await;
    assert_eq!(r.topics.len(), 1);
    let codes: Vec<(i32, i16, i64)> = r.topics[0]
        .partitions
        .iter()
        .map(|p| (p.partition_index, p.error_code, p.committed_offset))
        .collect();
    assert_eq!(codes, vec![(0, 30, -1), (1, 30, -1)]);
    // from v2 on the top-level code says it
    let r = c.call(2, &of).await;
    assert_eq!(r.error_code, 30);
}

#[tokio::test(flavor = "multi_thread")]
async fn create_partitions_beyond_the_limit_is_invalid_partitions() {
    let f = Fixture::new();
    let mut c = f.connect();
    assert_eq!(c.create_topic("t", 1).await, 0);
    let mut t = create_partitions_request::CreatePartitionsTopic::default();
    t.name = topic_name("t");
    t.count = 10_001;
    let mut r = CreatePartitionsRequest::default();
    r.topics = vec![t];
    assert_eq!(c.call(3, &r).await.results[0].error_code, 37);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_acks_zero_produce_closes_the_connection() {
    let f = Fixture::new();
    let mut c = f.connect();
    assert_eq!(c.create_topic("t", 1).await, 0);
    // a good acks=0 produce gets no answer and the connection stays
    c.send(9, &produce(0, "t", 0, batch(1, &[b"x"]))).await;
    assert_eq!(c.list_offset("t", 0, -1).await.1, 1);
    // a failed one (no partition 5) closes it
    c.send(9, &produce(0, "t", 5, batch(1, &[b"x"]))).await;
    c.expect_closed().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_batch_over_the_log_limit_is_message_too_large() {
    let f = Fixture::with(KafkaConfig {
        max_request_bytes: 300 << 20,
        ..Default::default()
    });
    let mut c = f.connect();
    assert_eq!(c.create_topic("big", 1).await, 0);
    let value = vec![7u8; (256 << 20) + 1];
    let p = tokio::time::timeout(
        std::time::Duration::from_secs(120),
        c.produce(1, "big", 0, batch(1, &[&value])),
    )
    .await
    .unwrap();
    assert_eq!(p.error_code, 10);
}
