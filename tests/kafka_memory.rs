//! Kafka clients that pipeline fetches and never read their responses, against the real
//! binary: the broker's memory (RSS) stays within the bounds on response bytes held for
//! clients, and other clients are still answered.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{kafka_request, rss, Server};
use eddy_records::BatchBuilder;
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;

/// Send a request and read the one response (its body after the size).
fn call(t: &mut TcpStream, bytes: &[u8]) -> Vec<u8> {
    t.write_all(bytes).unwrap();
    let mut size = [0u8; 4];
    t.read_exact(&mut size).unwrap();
    let mut body = vec![0u8; i32::from_be_bytes(size) as usize];
    t.read_exact(&mut body).unwrap();
    body
}

fn connect(port: u16) -> TcpStream {
    let t = TcpStream::connect(("127.0.0.1", port)).unwrap();
    t.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    t
}

fn topic() -> TopicName {
    TopicName(StrBytes::from_static_str("big"))
}

#[test]
fn pipelined_fetches_never_read_keep_the_broker_small() {
    let server = Server::start(&[]);
    let pid = server.child.as_ref().unwrap().id();
    let mut admin = connect(server.kafka_port);
    let mut ct = CreatableTopic::default();
    ct.name = topic();
    ct.num_partitions = 1;
    ct.replication_factor = 1;
    let mut c = CreateTopicsRequest::default();
    c.topics = vec![ct];
    c.timeout_ms = 5_000;
    call(&mut admin, &kafka_request(ApiKey::CreateTopics, 5, 1, &c));
    // 8 MiB in the partition, in 1 MiB batches: every fetch below answers all of it
    for i in 0..8 {
        let mut b = BatchBuilder::new();
        b.push(1, 0, None, Some(&vec![i as u8; 1 << 20]), &[]);
        let mut pd = PartitionProduceData::default();
        pd.records = Some(Bytes::from(b.finish()));
        let mut td = TopicProduceData::default();
        td.name = topic();
        td.partition_data = vec![pd];
        let mut p = ProduceRequest::default();
        p.acks = 1;
        p.timeout_ms = 5_000;
        p.topic_data = vec![td];
        call(&mut admin, &kafka_request(ApiKey::Produce, 9, 2 + i, &p));
    }
    std::thread::sleep(Duration::from_millis(500));
    let before = rss(pid);

    // two clients each send 200 fetches, as large as a client may ask, and read nothing
    let mut fp = FetchPartition::default();
    fp.fetch_offset = 0;
    fp.partition_max_bytes = i32::MAX;
    let mut ft = FetchTopic::default();
    ft.topic = topic();
    ft.partitions = vec![fp];
    let mut f = FetchRequest::default();
    f.max_bytes = i32::MAX;
    f.min_bytes = 1;
    f.topics = vec![ft];
    let fetches: Vec<u8> = (0..200)
        .flat_map(|i| kafka_request(ApiKey::Fetch, 12, 100 + i, &f))
        .collect();
    let hogs: Vec<TcpStream> = (0..2)
        .map(|_| {
            let mut t = connect(server.kafka_port);
            t.write_all(&fetches).unwrap();
            t
        })
        .collect();
    // what they make the broker hold, at its largest over a few seconds
    let mut peak = 0;
    let until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < until {
        peak = peak.max(rss(pid));
        std::thread::sleep(Duration::from_millis(100));
    }
    let grown = peak.saturating_sub(before);
    eprintln!(
        "RSS before {} MiB, peak with 2 clients not reading 200 fetches of 8 MiB: {} MiB (+{} MiB)",
        before >> 20,
        peak >> 20,
        grown >> 20
    );
    // each holds at most 64 MiB of responses (and one being built); without the bounds
    // each held 64 queued 8 MiB responses and more: over 1 GiB for the two
    assert!(
        grown < 300 << 20,
        "the broker grew by {} MiB for two clients that read nothing",
        grown >> 20
    );
    // others are still answered, fetches included
    let mut other = connect(server.kafka_port);
    let r = call(
        &mut other,
        &kafka_request(ApiKey::ApiVersions, 3, 1, &ApiVersionsRequest::default()),
    );
    assert_eq!(i32::from_be_bytes(r[..4].try_into().unwrap()), 1);
    let r = call(&mut other, &kafka_request(ApiKey::Fetch, 12, 2, &f));
    assert!(r.len() > 8 << 20);
    drop(hogs);
}
