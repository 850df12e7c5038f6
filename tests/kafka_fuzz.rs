//! Mutated Kafka traffic against a live server: a valid session (ApiVersions, Metadata,
//! CreateTopics, Produce with a real record batch, Fetch, ListOffsets, InitProducerId,
//! FindCoordinator, JoinGroup, OffsetCommit, OffsetFetch, DescribeConfigs) is mutated at random —
//! bytes flipped, size and length fields set wild, requests cut, repeated or spliced — and sent
//! on many connections. The server must stay up, never panic, and keep answering.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{kafka_request, Server};
use eddy_records::BatchBuilder;
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;

fn batch() -> Bytes {
    let mut b = BatchBuilder::new();
    b.push(0, 0, None, Some(b"fuzzed value"), &[]);
    Bytes::from(b.finish())
}

fn topic() -> TopicName {
    TopicName(StrBytes::from_static_str("fz"))
}

fn session() -> Vec<Vec<u8>> {
    let mut out = vec![kafka_request(
        ApiKey::ApiVersions,
        3,
        1,
        &ApiVersionsRequest::default(),
    )];
    out.push(kafka_request(
        ApiKey::Metadata,
        12,
        2,
        &MetadataRequest::default(),
    ));
    let mut ct = CreatableTopic::default();
    ct.name = topic();
    ct.num_partitions = 2;
    ct.replication_factor = 1;
    let mut c = CreateTopicsRequest::default();
    c.topics = vec![ct];
    out.push(kafka_request(ApiKey::CreateTopics, 5, 3, &c));
    let mut pd = PartitionProduceData::default();
    pd.records = Some(batch());
    let mut td = TopicProduceData::default();
    td.name = topic();
    td.partition_data = vec![pd];
    let mut p = ProduceRequest::default();
    p.acks = -1;
    p.timeout_ms = 1000;
    p.topic_data = vec![td];
    out.push(kafka_request(ApiKey::Produce, 7, 4, &p));
    out.push(kafka_request(ApiKey::Produce, 9, 5, &p));
    let mut fp = FetchPartition::default();
    fp.partition_max_bytes = 1 << 20;
    let mut ft = FetchTopic::default();
    ft.topic = topic();
    ft.partitions = vec![fp];
    let mut f = FetchRequest::default();
    f.replica_id = BrokerId(-1);
    f.max_wait_ms = 10;
    f.max_bytes = 1 << 20;
    f.topics = vec![ft];
    out.push(kafka_request(ApiKey::Fetch, 11, 6, &f));
    let mut lp = ListOffsetsPartition::default();
    lp.timestamp = -2;
    let mut lt = ListOffsetsTopic::default();
    lt.name = topic();
    lt.partitions = vec![lp];
    let mut l = ListOffsetsRequest::default();
    l.replica_id = BrokerId(-1);
    l.topics = vec![lt];
    out.push(kafka_request(ApiKey::ListOffsets, 5, 7, &l));
    out.push(kafka_request(
        ApiKey::InitProducerId,
        4,
        8,
        &InitProducerIdRequest::default(),
    ));
    let mut fc = FindCoordinatorRequest::default();
    fc.key = StrBytes::from_static_str("g");
    out.push(kafka_request(ApiKey::FindCoordinator, 3, 9, &fc));
    let mut jp = JoinGroupRequestProtocol::default();
    jp.name = StrBytes::from_static_str("range");
    jp.metadata = Bytes::from_static(&[0, 1, 0, 0, 0, 1, 0, 2, b'f', b'z', 0, 0, 0, 0]);
    let mut j = JoinGroupRequest::default();
    j.group_id = GroupId(StrBytes::from_static_str("g"));
    j.session_timeout_ms = 6000;
    j.rebalance_timeout_ms = 100;
    j.member_id = StrBytes::from_static_str("");
    j.protocol_type = StrBytes::from_static_str("consumer");
    j.protocols = vec![jp];
    out.push(kafka_request(ApiKey::JoinGroup, 5, 10, &j));
    out.push(kafka_request(
        ApiKey::OffsetFetch,
        6,
        11,
        &OffsetFetchRequest::default(),
    ));
    out.push(kafka_request(
        ApiKey::DescribeConfigs,
        1,
        12,
        &DescribeConfigsRequest::default(),
    ));
    out
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn mutate(reqs: &[Vec<u8>], rng: &mut Rng) -> Vec<u8> {
    let mut reqs = reqs.to_vec();
    for _ in 0..1 + rng.below(3) {
        let i = 1 + rng.below(reqs.len() - 1);
        let r = &mut reqs[i];
        match rng.below(6) {
            0 if !r.is_empty() => {
                for _ in 0..1 + rng.below(4) {
                    let at = rng.below(r.len());
                    r[at] ^= 1 << rng.below(8);
                }
            }
            1 if r.len() > 8 => {
                // a length somewhere in the body (or the size prefix) set wild
                let at = rng.below(r.len() - 4);
                let v: i32 = match rng.below(4) {
                    0 => i32::MAX,
                    1 => -1,
                    2 => 0,
                    _ => rng.next() as i32,
                };
                r[at..at + 4].copy_from_slice(&v.to_be_bytes());
            }
            2 => {
                // cut the body but keep the size prefix consistent
                if r.len() > 5 {
                    let cut = 4 + rng.below(r.len() - 4);
                    r.truncate(cut);
                    let len = (r.len() - 4) as i32;
                    r[..4].copy_from_slice(&len.to_be_bytes());
                }
            }
            3 => {
                let dup = r.clone();
                reqs.insert(i, dup);
            }
            4 if r.len() >= 8 => {
                // a random API key and version
                let k = rng.below(80) as i16;
                let v = rng.below(20) as i16 - 2;
                r[4..6].copy_from_slice(&k.to_be_bytes());
                r[6..8].copy_from_slice(&v.to_be_bytes());
            }
            _ => {
                let n = 1 + rng.below(48);
                let junk: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                reqs.insert(i, junk);
            }
        }
    }
    reqs.concat()
}

fn send(port: u16, bytes: &[u8], wait: Duration) -> Vec<u8> {
    let mut got = Vec::new();
    let Ok(mut t) = TcpStream::connect(("127.0.0.1", port)) else {
        return got;
    };
    t.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
    t.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
    let _ = t.write_all(bytes);
    let until = Instant::now() + wait;
    let mut buf = [0u8; 65536];
    while Instant::now() < until {
        match t.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => break,
        }
    }
    got
}

/// Correlation ids of the responses in `bytes`.
fn correlations(mut bytes: &[u8]) -> Vec<i32> {
    let mut out = Vec::new();
    while bytes.len() >= 8 {
        let n = i32::from_be_bytes(bytes[..4].try_into().unwrap()) as usize;
        if bytes.len() < 4 + n {
            break;
        }
        out.push(i32::from_be_bytes(bytes[4..8].try_into().unwrap()));
        bytes = &bytes[4 + n..];
    }
    out
}

#[test]
fn mutated_kafka_sessions_never_take_the_server_down() {
    let mut s = Server::start(&[]);
    let reqs = session();
    let answer = send(s.kafka_port, &reqs.concat(), Duration::from_secs(2));
    // the valid session is answered in order, every request
    assert_eq!(correlations(&answer), (1..=12).collect::<Vec<_>>());
    let cases: u64 = std::env::var("EDDY_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(400);
    let threads = 4u64;
    std::thread::scope(|scope| {
        for w in 0..threads {
            let reqs = &reqs;
            let port = s.kafka_port;
            scope.spawn(move || {
                for c in (w..cases).step_by(threads as usize) {
                    let mut rng = Rng(0xA076_1D64_78BD_642F ^ (c + 1).wrapping_mul(0x9E37_79B9));
                    send(port, &mutate(reqs, &mut rng), Duration::from_millis(40));
                }
            });
        }
    });
    let alive = s.child.as_mut().unwrap().try_wait().unwrap().is_none();
    let log = s.log_text();
    assert!(alive, "the server died; log:\n{log}");
    assert!(!log.contains("panicked"), "a task panicked; log:\n{log}");
    let answer = send(s.kafka_port, &reqs.concat(), Duration::from_secs(2));
    assert_eq!(correlations(&answer), (1..=12).collect::<Vec<_>>());
}
