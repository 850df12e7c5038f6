//! A small blocking Kafka-protocol client for the Eddy connectors: metadata, offsets, fetch,
//! and idempotent produce, over one connection to one broker (Eddy is a single node). It uses
//! the same generated codec as the broker (`kafka-protocol`) but nothing of the broker.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use eddy_records::{BatchHeader, HEADER, LOG_OVERHEAD};
use kafka_protocol::indexmap::IndexMap;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use kafka_protocol::ResponseError;

/// The largest response accepted (a length read off the wire is checked before allocating).
const MAX_RESPONSE: usize = 256 << 20;

/// A Kafka-protocol failure, with what was being done.
#[derive(Debug, thiserror::Error)]
pub enum KafkaError {
    /// The connection failed or broke.
    #[error("{0}")]
    Io(String),
    /// The broker answered with an error code.
    #[error("{what}: {code}")]
    Broker {
        /// What was asked.
        what: String,
        /// The error's name.
        code: String,
        /// Whether trying again may succeed.
        retriable: bool,
    },
    /// The answer did not make sense.
    #[error("{0}")]
    Protocol(String),
}

impl KafkaError {
    pub(crate) fn retriable(&self) -> bool {
        match self {
            KafkaError::Io(_) => true,
            KafkaError::Broker { retriable, .. } => *retriable,
            KafkaError::Protocol(_) => false,
        }
    }
}

fn check(code: i16, what: impl FnOnce() -> String) -> Result<(), KafkaError> {
    if code == 0 {
        return Ok(());
    }
    let (name, retriable) = match ResponseError::try_from_code(code) {
        Some(e) => (format!("{e:?} ({code})"), e.is_retriable()),
        None => (format!("error code {code}"), false),
    };
    Err(KafkaError::Broker {
        what: what(),
        code: name,
        retriable,
    })
}

/// Wraps a codec error with what was being done.
fn protocol<E: std::fmt::Display>(what: String) -> impl FnOnce(E) -> KafkaError {
    move |e| KafkaError::Protocol(format!("{what}: {e}"))
}

/// A record read from a partition.
#[derive(Clone, Debug)]
pub(crate) struct Fetched {
    pub(crate) offset: i64,
    pub(crate) timestamp: i64,
    pub(crate) key: Option<Bytes>,
    pub(crate) value: Option<Bytes>,
    pub(crate) headers: Vec<(String, Option<Bytes>)>,
}

/// What a fetch found in one partition.
pub(crate) struct FetchedPartition {
    pub(crate) partition: i32,
    pub(crate) records: Vec<Fetched>,
    /// The offset after the last whole batch returned (records compacted away included).
    pub(crate) next: Option<i64>,
    pub(crate) high_watermark: i64,
    pub(crate) error: Option<KafkaError>,
}

/// A record to produce.
pub(crate) struct Outgoing {
    pub(crate) key: Option<Vec<u8>>,
    pub(crate) value: Vec<u8>,
    pub(crate) headers: Vec<(String, Vec<u8>)>,
}

/// One connection to the broker.
pub(crate) struct Conn {
    stream: TcpStream,
    corr: i32,
    addr: String,
}

fn topic_name(t: &str) -> TopicName {
    TopicName(StrBytes::from_string(t.to_owned()))
}

impl Conn {
    pub(crate) fn connect(addr: &str) -> Result<Conn, KafkaError> {
        let io = |e: std::io::Error| KafkaError::Io(format!("cannot connect to {addr}: {e}"));
        let sock = addr
            .to_socket_addrs()
            .map_err(io)?
            .next()
            .ok_or_else(|| KafkaError::Io(format!("{addr} does not resolve")))?;
        let stream = TcpStream::connect_timeout(&sock, Duration::from_secs(10)).map_err(io)?;
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .map_err(io)?;
        stream.set_nodelay(true).map_err(io)?;
        Ok(Conn {
            stream,
            corr: 0,
            addr: addr.to_owned(),
        })
    }

    fn call<Q: Encodable, R: Decodable>(
        &mut self,
        key: ApiKey,
        version: i16,
        req: &Q,
    ) -> Result<R, KafkaError> {
        let addr = self.addr.clone();
        let io = |e: std::io::Error| KafkaError::Io(format!("connection to {addr}: {e}"));
        self.corr = self.corr.wrapping_add(1);
        let mut out = BytesMut::new();
        out.put_i32(0);
        let mut h = RequestHeader::default();
        h.request_api_key = key as i16;
        h.request_api_version = version;
        h.correlation_id = self.corr;
        h.client_id = Some(StrBytes::from_static_str("eddy-stream"));
        h.encode(&mut out, key.request_header_version(version))
            .map_err(protocol(format!("cannot encode a {key:?} request header")))?;
        req.encode(&mut out, version)
            .map_err(protocol(format!("cannot encode a {key:?} request")))?;
        let len = (out.len() - 4) as i32;
        out[..4].copy_from_slice(&len.to_be_bytes());
        self.stream.write_all(&out).map_err(io)?;
        let mut size = [0u8; 4];
        self.stream.read_exact(&mut size).map_err(io)?;
        let size = i32::from_be_bytes(size);
        if size < 0 || size as usize > MAX_RESPONSE {
            return Err(KafkaError::Protocol(format!(
                "a {key:?} response of {size} bytes"
            )));
        }
        let mut body = vec![0u8; size as usize];
        self.stream.read_exact(&mut body).map_err(io)?;
        let mut body = Bytes::from(body);
        let rh = ResponseHeader::decode(&mut body, key.response_header_version(version))
            .map_err(protocol(format!("cannot decode a {key:?} response header")))?;
        if rh.correlation_id != self.corr {
            return Err(KafkaError::Protocol(format!(
                "response {} to request {}",
                rh.correlation_id, self.corr
            )));
        }
        R::decode(&mut body, version).map_err(protocol(format!("cannot decode a {key:?} response")))
    }

    /// The topic's partitions (created with the broker's defaults if `create` and missing).
    pub(crate) fn partitions(&mut self, topic: &str, create: bool) -> Result<Vec<i32>, KafkaError> {
        let mut t = MetadataRequestTopic::default();
        t.name = Some(topic_name(topic));
        let mut req = MetadataRequest::default();
        req.topics = Some(vec![t]);
        req.allow_auto_topic_creation = create;
        let r: MetadataResponse = self.call(ApiKey::Metadata, 9, &req)?;
        let t = r
            .topics
            .into_iter()
            .find(|t| t.name.as_ref().is_some_and(|n| n.0.as_str() == topic))
            .ok_or_else(|| KafkaError::Protocol(format!("no metadata for topic {topic}")))?;
        check(t.error_code, || format!("topic {topic}"))?;
        let mut ps: Vec<i32> = t.partitions.iter().map(|p| p.partition_index).collect();
        ps.sort();
        if ps.is_empty() {
            return Err(KafkaError::Protocol(format!(
                "topic {topic} has no partitions"
            )));
        }
        Ok(ps)
    }

    /// Offsets of `partitions` at `timestamp` (-2 earliest, -1 latest).
    pub(crate) fn offsets(
        &mut self,
        topic: &str,
        partitions: &[i32],
        timestamp: i64,
    ) -> Result<BTreeMap<i32, i64>, KafkaError> {
        let mut lt = ListOffsetsTopic::default();
        lt.name = topic_name(topic);
        lt.partitions = partitions
            .iter()
            .map(|&p| {
                let mut lp = ListOffsetsPartition::default();
                lp.partition_index = p;
                lp.timestamp = timestamp;
                lp
            })
            .collect();
        let mut req = ListOffsetsRequest::default();
        req.replica_id = BrokerId(-1);
        req.topics = vec![lt];
        let r: ListOffsetsResponse = self.call(ApiKey::ListOffsets, 5, &req)?;
        let mut out = BTreeMap::new();
        for t in r.topics {
            for p in t.partitions {
                check(p.error_code, || {
                    format!("offsets of {topic}/{}", p.partition_index)
                })?;
                out.insert(p.partition_index, p.offset);
            }
        }
        Ok(out)
    }

    /// Fetch from each partition at its offset (in the order given: the broker fills its
    /// byte budget in that order), waiting up to `max_wait` for data.
    pub(crate) fn fetch(
        &mut self,
        topic: &str,
        at: &[(i32, i64)],
        max_wait: Duration,
        max_bytes: i32,
    ) -> Result<Vec<FetchedPartition>, KafkaError> {
        let mut ft = FetchTopic::default();
        ft.topic = topic_name(topic);
        ft.partitions = at
            .iter()
            .map(|&(p, o)| {
                let mut fp = FetchPartition::default();
                fp.partition = p;
                fp.fetch_offset = o;
                fp.partition_max_bytes = max_bytes;
                fp.current_leader_epoch = -1;
                fp.last_fetched_epoch = -1;
                fp
            })
            .collect();
        let mut req = FetchRequest::default();
        req.replica_id = BrokerId(-1);
        req.max_wait_ms = max_wait.as_millis() as i32;
        req.min_bytes = 1;
        req.max_bytes = max_bytes;
        req.session_epoch = -1;
        req.topics = vec![ft];
        let r: FetchResponse = self.call(ApiKey::Fetch, 11, &req)?;
        check(r.error_code, || format!("fetch from {topic}"))?;
        let mut out = Vec::new();
        for t in r.responses {
            for p in t.partitions {
                let partition = p.partition_index;
                let from = at
                    .iter()
                    .find(|(q, _)| *q == partition)
                    .map_or(0, |(_, o)| *o);
                let mut fp = FetchedPartition {
                    partition,
                    records: Vec::new(),
                    next: None,
                    high_watermark: p.high_watermark,
                    error: None,
                };
                if let Err(e) = check(p.error_code, || format!("fetch from {topic}/{partition}")) {
                    fp.error = Some(e);
                } else if let Some(bytes) = p.records {
                    match decode_batches(bytes, from) {
                        Ok(d) => {
                            fp.records = d.records;
                            fp.next = d.next;
                        }
                        Err(e) => {
                            fp.error =
                                Some(KafkaError::Protocol(format!("{topic}/{partition}: {e}")))
                        }
                    }
                }
                out.push(fp);
            }
        }
        Ok(out)
    }

    /// An idempotent producer id and epoch.
    pub(crate) fn init_producer(&mut self) -> Result<(i64, i16), KafkaError> {
        let mut req = InitProducerIdRequest::default();
        req.transactional_id = None;
        req.transaction_timeout_ms = 60_000;
        let r: InitProducerIdResponse = self.call(ApiKey::InitProducerId, 1, &req)?;
        check(r.error_code, || "init producer id".to_owned())?;
        Ok((r.producer_id.0, r.producer_epoch))
    }

    /// Produce one batch to a partition (acks=all) as producer `pid`/`epoch` from sequence
    /// `seq`; the batch's base offset.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn produce(
        &mut self,
        topic: &str,
        partition: i32,
        records: &[Outgoing],
        pid: i64,
        epoch: i16,
        seq: i32,
        now_ms: i64,
    ) -> Result<i64, KafkaError> {
        let recs: Vec<Record> = records
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let mut headers = IndexMap::new();
                for (k, v) in &r.headers {
                    headers.insert(
                        StrBytes::from_string(k.clone()),
                        Some(Bytes::copy_from_slice(v)),
                    );
                }
                Record {
                    transactional: false,
                    control: false,
                    delete_horizon: false,
                    partition_leader_epoch: -1,
                    producer_id: pid,
                    producer_epoch: epoch,
                    timestamp_type: TimestampType::Creation,
                    offset: i as i64,
                    sequence: seq.wrapping_add(i as i32),
                    timestamp: now_ms,
                    key: r.key.as_ref().map(|k| Bytes::copy_from_slice(k)),
                    value: Some(Bytes::copy_from_slice(&r.value)),
                    headers,
                }
            })
            .collect();
        let mut buf = BytesMut::new();
        RecordBatchEncoder::encode(
            &mut buf,
            &recs,
            &RecordEncodeOptions {
                version: 2,
                compression: Compression::None,
            },
        )
        .map_err(|e| KafkaError::Protocol(format!("cannot encode a batch: {e}")))?;
        let mut pd = PartitionProduceData::default();
        pd.index = partition;
        pd.records = Some(buf.freeze());
        let mut td = TopicProduceData::default();
        td.name = topic_name(topic);
        td.partition_data = vec![pd];
        let mut req = ProduceRequest::default();
        req.acks = -1;
        req.timeout_ms = 30_000;
        req.topic_data = vec![td];
        let r: ProduceResponse = self.call(ApiKey::Produce, 8, &req)?;
        let p = r
            .responses
            .first()
            .and_then(|t| t.partition_responses.first())
            .ok_or_else(|| KafkaError::Protocol("an empty produce response".into()))?;
        check(p.error_code, || format!("produce to {topic}/{partition}"))?;
        Ok(p.base_offset)
    }
}

/// What whole batches in a fetch response hold: the records at or after `from` (control
/// records skipped), and the offset after the last batch (so offsets whose records compaction
/// removed are stepped over too).
#[derive(Debug)]
struct Decoded {
    records: Vec<Fetched>,
    next: Option<i64>,
}

/// Decode the record batches in `bytes` (a fetch may end in a partial batch, left for the
/// next fetch) with the shared record codec (`eddy-records`: v2 batches, every codec Kafka
/// clients compress with, counts and lengths checked before anything is sized by them).
fn decode_batches(mut bytes: Bytes, from: i64) -> Result<Decoded, String> {
    let mut out = Decoded {
        records: Vec::new(),
        next: None,
    };
    while let Some((base, len)) = BatchHeader::peek(&bytes) {
        if len < (HEADER - LOG_OVERHEAD) as i32 || base < 0 {
            return Err(format!("a batch of length {len} at offset {base}"));
        }
        let total = LOG_OVERHEAD + len as usize;
        if bytes.len() < total {
            break;
        }
        let batch = bytes.split_to(total);
        let h = BatchHeader::new(&batch[..]).expect("a whole header (length checked)");
        let last_delta = h.last_offset_delta();
        out.next = Some(base.saturating_add(last_delta as i64).saturating_add(1));
        if h.is_control() {
            continue; // transaction markers
        }
        let records = eddy_records::decode_batch(base as u64, &batch)
            .map_err(|e| format!("at offset {base}: {e}"))?;
        for r in records {
            let offset = r.offset.min(i64::MAX as u64) as i64;
            if offset >= from {
                out.records.push(Fetched {
                    offset,
                    timestamp: r.timestamp,
                    key: r.key,
                    value: r.value,
                    headers: r.headers,
                });
            }
        }
    }
    Ok(out)
}

/// Kafka's default partitioner for keyed records: murmur2 of the key, made positive, modulo
/// the number of partitions (so keys land where Kafka's own producers put them).
pub(crate) fn murmur2(data: &[u8]) -> u32 {
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let seed: u32 = 0x9747_b28c;
    let len = data.len();
    let mut h: u32 = seed ^ (len as u32);
    let chunks = data.chunks_exact(4);
    let tail = chunks.remainder();
    for c in chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    match tail.len() {
        3 => {
            h ^= (tail[2] as u32) << 16;
            h ^= (tail[1] as u32) << 8;
            h ^= tail[0] as u32;
            h = h.wrapping_mul(M);
        }
        2 => {
            h ^= (tail[1] as u32) << 8;
            h ^= tail[0] as u32;
            h = h.wrapping_mul(M);
        }
        1 => {
            h ^= tail[0] as u32;
            h = h.wrapping_mul(M);
        }
        _ => {}
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

/// The partition Kafka's default partitioner picks for `key`.
pub(crate) fn partition_for(key: &[u8], partitions: usize) -> usize {
    ((murmur2(key) & 0x7fff_ffff) as usize) % partitions.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch_of(records: &[Record]) -> Bytes {
        let mut buf = BytesMut::new();
        let opts = RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        };
        RecordBatchEncoder::encode(&mut buf, records, &opts).unwrap();
        buf.freeze()
    }

    fn rec(offset: i64, value: &str) -> Record {
        let mut headers = IndexMap::new();
        headers.insert(
            StrBytes::from_static_str("h"),
            Some(Bytes::from_static(b"v")),
        );
        Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset,
            sequence: -1,
            timestamp: 1000 + offset,
            key: Some(Bytes::from_static(b"k")),
            value: Some(Bytes::copy_from_slice(value.as_bytes())),
            headers,
        }
    }

    #[test]
    fn batches_decode_and_a_partial_one_waits() {
        let mut all = BytesMut::new();
        all.extend_from_slice(&batch_of(&[rec(10, "a"), rec(11, "b")]));
        all.extend_from_slice(&batch_of(&[rec(12, "c")]));
        let whole = all.clone().freeze();
        let d = decode_batches(whole.clone(), 11).unwrap();
        assert_eq!(
            d.records.iter().map(|r| r.offset).collect::<Vec<_>>(),
            [11, 12]
        );
        assert_eq!(d.next, Some(13));
        assert_eq!(d.records[0].timestamp, 1011);
        assert_eq!(
            d.records[0].headers,
            [("h".to_owned(), Some(Bytes::from_static(b"v")))]
        );
        // cut inside the second batch: only the first comes out
        let d = decode_batches(whole.slice(..whole.len() - 3), 0).unwrap();
        assert_eq!(d.records.len(), 2);
        assert_eq!(d.next, Some(12));
    }

    #[test]
    fn lying_counts_and_lengths_are_refused_before_allocating() {
        let b = batch_of(&[rec(0, "a")]);
        let mut huge = b.to_vec();
        BatchHeader::new(&mut huge)
            .unwrap()
            .set_record_count(i32::MAX);
        assert!(decode_batches(Bytes::from(huge), 0)
            .unwrap_err()
            .contains("records in"));
        let mut gz = b.to_vec();
        let mut h = BatchHeader::new(&mut gz).unwrap();
        h.set_attributes(h.attributes() | 1);
        assert!(
            decode_batches(Bytes::from(gz), 0)
                .unwrap_err()
                .contains("gzip"),
            "not gzip data"
        );
        let mut neg = b.to_vec();
        BatchHeader::new(&mut neg).unwrap().set_batch_length(-5);
        assert!(decode_batches(Bytes::from(neg), 0).is_err());
        // a record whose header count is absurd
        let mut bad = b.to_vec();
        let n = bad.len();
        bad[n - 1 - 5] = 0x7e; // somewhere inside the record: never a panic, an error or records
        let _ = decode_batches(Bytes::from(bad), 0);
    }

    #[test]
    fn murmur2_matches_kafkas_partitioner() {
        // values from Kafka's UtilsTest.testMurmur2
        assert_eq!(murmur2(b"21") as i32, -973932308);
        assert_eq!(murmur2(b"foobar") as i32, -790332482);
        assert_eq!(murmur2(b"a-little-bit-long-string") as i32, -985981536);
        assert_eq!(murmur2(b"a-little-bit-longer-string") as i32, -1486304829);
        assert_eq!(
            murmur2(b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8") as i32,
            -58897971
        );
        assert_eq!(murmur2(b"abc") as i32, 479470107);
    }
}
