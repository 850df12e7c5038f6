//! Idempotent producers over the wire: a retried batch is answered with its first offset and
//! not stored twice; a gap in sequence numbers is refused with OUT_OF_ORDER_SEQUENCE_NUMBER;
//! the state survives a kill -9 (rebuilt from the partition's tail).

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use common::Server;
use eddy_records::{BatchBuilder, BatchHeader};
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

struct Client {
    s: TcpStream,
    corr: i32,
}

impl Client {
    fn connect(port: u16) -> Client {
        let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Client { s, corr: 0 }
    }

    fn call<R: Encodable, T: Decodable>(&mut self, key: ApiKey, version: i16, req: &R) -> T {
        self.corr += 1;
        let mut out = BytesMut::new();
        out.put_i32(0);
        let mut h = RequestHeader::default();
        h.request_api_key = key as i16;
        h.request_api_version = version;
        h.correlation_id = self.corr;
        h.encode(&mut out, key.request_header_version(version))
            .unwrap();
        req.encode(&mut out, version).unwrap();
        let len = (out.len() - 4) as i32;
        out[..4].copy_from_slice(&len.to_be_bytes());
        self.s.write_all(&out).unwrap();
        let mut size = [0u8; 4];
        self.s.read_exact(&mut size).unwrap();
        let mut body = vec![0u8; i32::from_be_bytes(size) as usize];
        self.s.read_exact(&mut body).unwrap();
        let mut body = Bytes::from(body);
        let h = ResponseHeader::decode(&mut body, key.response_header_version(version)).unwrap();
        assert_eq!(h.correlation_id, self.corr);
        let r = T::decode(&mut body, version).unwrap();
        assert!(!body.has_remaining());
        r
    }
}

/// A batch of `n` records from producer `pid`/`epoch` starting at sequence `seq`.
fn batch(pid: i64, epoch: i16, seq: i32, n: i32) -> Bytes {
    let mut b = BatchBuilder::new();
    for i in 0..n {
        b.push(0, i as i64, None, Some(&[b'v' + i as u8]), &[]);
    }
    let mut b = b.finish();
    let mut h = BatchHeader::new(&mut b).unwrap();
    h.set_producer_id(pid);
    h.set_producer_epoch(epoch);
    h.set_base_sequence(seq);
    h.update_crc();
    Bytes::from(b)
}

fn produce(c: &mut Client, topic: &str, records: Bytes) -> (i16, i64) {
    let mut pd = PartitionProduceData::default();
    pd.records = Some(records);
    let mut td = TopicProduceData::default();
    td.name = TopicName(StrBytes::from_string(topic.into()));
    td.partition_data = vec![pd];
    let mut p = ProduceRequest::default();
    p.acks = -1;
    p.timeout_ms = 5000;
    p.topic_data = vec![td];
    let r: ProduceResponse = c.call(ApiKey::Produce, 9, &p);
    let pr = &r.responses[0].partition_responses[0];
    (pr.error_code, pr.base_offset)
}

fn end_offset(c: &mut Client, topic: &str) -> i64 {
    let mut lp = ListOffsetsPartition::default();
    lp.timestamp = -1;
    let mut lt = ListOffsetsTopic::default();
    lt.name = TopicName(StrBytes::from_string(topic.into()));
    lt.partitions = vec![lp];
    let mut l = ListOffsetsRequest::default();
    l.replica_id = BrokerId(-1);
    l.topics = vec![lt];
    let r: ListOffsetsResponse = c.call(ApiKey::ListOffsets, 5, &l);
    r.topics[0].partitions[0].offset
}

#[test]
fn retries_are_deduplicated_and_gaps_refused_across_a_crash() {
    let mut s = Server::start(&[]);
    let mut c = Client::connect(s.kafka_port);
    let mut ct = CreatableTopic::default();
    ct.name = TopicName(StrBytes::from_static_str("idem"));
    ct.num_partitions = 1;
    ct.replication_factor = 1;
    let mut req = CreateTopicsRequest::default();
    req.topics = vec![ct];
    let r: CreateTopicsResponse = c.call(ApiKey::CreateTopics, 5, &req);
    assert_eq!(r.topics[0].error_code, 0);
    let mut ipr = InitProducerIdRequest::default();
    ipr.transactional_id = None; // idempotent, not transactional
    ipr.producer_id = ProducerId(-1);
    ipr.producer_epoch = -1;
    let init: InitProducerIdResponse = c.call(ApiKey::InitProducerId, 4, &ipr);
    assert_eq!(init.error_code, 0);
    let (pid, epoch) = (init.producer_id.0, init.producer_epoch);
    assert!(pid >= 0);

    assert_eq!(produce(&mut c, "idem", batch(pid, epoch, 0, 3)), (0, 0));
    // the same batch again (a retry): answered with its offset, not appended
    assert_eq!(produce(&mut c, "idem", batch(pid, epoch, 0, 3)), (0, 0));
    assert_eq!(end_offset(&mut c, "idem"), 3);
    assert_eq!(produce(&mut c, "idem", batch(pid, epoch, 3, 2)), (0, 3));
    // a gap: sequence 9 where 5 is next
    assert_eq!(produce(&mut c, "idem", batch(pid, epoch, 9, 1)).0, 45);
    assert_eq!(end_offset(&mut c, "idem"), 5);

    // across a crash, the retry of the last batch is still recognised
    s.kill9();
    s.restart();
    let mut c = Client::connect(s.kafka_port);
    assert_eq!(produce(&mut c, "idem", batch(pid, epoch, 3, 2)), (0, 3));
    assert_eq!(end_offset(&mut c, "idem"), 5);
    assert_eq!(produce(&mut c, "idem", batch(pid, epoch, 5, 1)), (0, 5));
    // an older epoch is fenced
    if epoch > 0 {
        assert_eq!(produce(&mut c, "idem", batch(pid, epoch - 1, 6, 1)).0, 47);
    }
    // a new epoch starts at sequence 0
    assert_eq!(produce(&mut c, "idem", batch(pid, epoch + 1, 4, 1)).0, 45);
    assert_eq!(produce(&mut c, "idem", batch(pid, epoch + 1, 0, 1)), (0, 6));
    assert_eq!(produce(&mut c, "idem", batch(pid, epoch, 6, 1)).0, 47);
}
