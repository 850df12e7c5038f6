//! Idempotent producers: producer ids, and per partition the last batches of each producer so
//! a retried batch is answered with its original offset instead of being appended twice, and a
//! gap in sequence numbers is refused (OUT_OF_ORDER_SEQUENCE_NUMBER).
//!
//! The state is rebuilt from the batch headers in the tail of a partition's log the first time
//! the partition is produced to after a start, so a producer retrying across a broker restart
//! (or `kill -9`) still gets no duplicates.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use eddy_broker::Partition;
use kafka_protocol::error::ResponseError;
use parking_lot::Mutex;

use crate::records::{validate, BatchInfo};

/// Batches remembered per producer and partition (Kafka's max.in.flight for idempotence).
const REMEMBERED: usize = 5;
/// How much of a partition's tail is scanned to rebuild producer state.
const TAIL_SCAN_BYTES: u64 = 16 << 20;

#[derive(Clone, Copy)]
struct Appended {
    first_seq: i32,
    last_seq: i32,
    base_offset: u64,
}

struct ProducerEntry {
    epoch: i16,
    recent: VecDeque<Appended>,
}

#[derive(Default)]
struct PartitionProducers {
    loaded: bool,
    /// The Raft term the state was built in (replicated partitions; 0 otherwise): a new
    /// leadership rebuilds it from the log.
    term: u64,
    by_pid: HashMap<i64, ProducerEntry>,
}

/// A batch's base offset not known yet: proposed to a replicated partition, not committed.
const IN_FLIGHT: u64 = u64::MAX;

/// What [`Producers::reserve`] decided for one batch.
pub(crate) enum Reserved {
    /// New: propose it.
    New,
    /// Appended before: its base offset.
    Duplicate(u64),
    /// Sent before and not committed yet: the client should retry.
    InFlight,
}

/// What happened to one batch.
pub(crate) enum Outcome {
    /// Appended at this base offset.
    Appended(u64),
    /// Already appended before (a retry): its original base offset.
    Duplicate(u64),
}

/// Producer ids and the per-partition sequence state of every idempotent producer.
pub(crate) struct Producers {
    next_id: AtomicI64,
    node: i64,
    partitions: Mutex<HashMap<(String, i32), SharedState>>,
}

type SharedState = Arc<Mutex<PartitionProducers>>;

fn next_seq(seq: i32) -> i32 {
    if seq == i32::MAX {
        0
    } else {
        seq + 1
    }
}

fn last_seq(info: &BatchInfo) -> i32 {
    // sequences wrap at i32::MAX like Kafka's
    ((info.base_sequence as i64 + info.record_count as i64 - 1) % (i32::MAX as i64 + 1)) as i32
}

impl Producers {
    /// The producers of node `node` (0 alone): the low 10 bits of the ids it hands out are
    /// the node's, so nodes of a cluster never hand out the same id.
    pub(crate) fn new(node: u64) -> Self {
        // ids only grow, across restarts too (time-based start), so an old producer's batches
        // are never mistaken for a new one's
        Producers {
            next_id: AtomicI64::new(eddy_broker::now_ms().max(1).saturating_mul(1000)),
            node: (node % 1024) as i64,
            partitions: Mutex::new(HashMap::new()),
        }
    }

    /// A fresh producer id (epoch 0).
    pub(crate) fn allocate(&self) -> i64 {
        self.next_id.fetch_add(1, Ordering::Relaxed) * 1024 + self.node
    }

    fn state(&self, p: &Partition) -> SharedState {
        self.partitions
            .lock()
            .entry((p.topic.clone(), p.index))
            .or_default()
            .clone()
    }

    /// Forget a deleted topic's state.
    pub(crate) fn forget_topic(&self, topic: &str) {
        self.partitions.lock().retain(|(t, _), _| t != topic);
    }

    /// Append the batches of one produce to a partition, checking and recording sequences.
    /// Err: a Kafka error code for the first batch refused (nothing after it is appended).
    pub(crate) fn append(
        &self,
        partition: &Partition,
        batches: &[(&[u8], BatchInfo)],
    ) -> Result<Vec<Outcome>, (i16, String)> {
        let state = self.state(partition);
        let mut st = state.lock();
        if !st.loaded {
            rebuild(&mut st, partition);
            st.loaded = true;
        }
        let mut out = Vec::with_capacity(batches.len());
        for (bytes, info) in batches {
            if info.producer_id >= 0 {
                if let Some(base) = check(&st, info)? {
                    out.push(Outcome::Duplicate(base));
                    continue;
                }
            }
            let base = partition
                .append(info.record_count, info.max_timestamp, bytes)
                .map_err(append_error)?;
            if info.producer_id >= 0 {
                record(&mut st, info, base);
            }
            out.push(Outcome::Appended(base));
        }
        Ok(out)
    }

    /// For a replicated partition led in `term`: check the sequences of a produce's batches
    /// and record the new ones as in flight (their offsets come with the commit,
    /// [`Producers::settle`]). Err: the first batch refused (later ones are not recorded).
    pub(crate) fn reserve(
        &self,
        partition: &Partition,
        term: u64,
        batches: &[(&[u8], BatchInfo)],
    ) -> Result<Vec<Reserved>, (i16, String)> {
        let state = self.state(partition);
        let mut st = state.lock();
        if !st.loaded || st.term != term {
            st.by_pid.clear();
            rebuild(&mut st, partition);
            st.loaded = true;
            st.term = term;
        }
        let mut out = Vec::with_capacity(batches.len());
        for (_, info) in batches {
            if info.producer_id < 0 {
                out.push(Reserved::New);
                continue;
            }
            match check(&st, info)? {
                Some(IN_FLIGHT) => out.push(Reserved::InFlight),
                Some(base) => out.push(Reserved::Duplicate(base)),
                None => {
                    record(&mut st, info, IN_FLIGHT);
                    out.push(Reserved::New);
                }
            }
        }
        Ok(out)
    }

    /// A reserved batch was committed at `base`.
    pub(crate) fn settle(&self, partition: &Partition, info: &BatchInfo, base: u64) {
        let state = self.state(partition);
        let mut st = state.lock();
        if let Some(e) = st.by_pid.get_mut(&info.producer_id) {
            if let Some(a) = e
                .recent
                .iter_mut()
                .find(|a| a.first_seq == info.base_sequence && a.base_offset == IN_FLIGHT)
            {
                a.base_offset = base;
            }
        }
    }

    /// A reserved batch may not have been committed (leadership lost, timed out): forget the
    /// partition's state, which the next produce rebuilds from the log.
    pub(crate) fn forget(&self, partition: &Partition) {
        let state = self.state(partition);
        state.lock().loaded = false;
    }
}

/// Check one idempotent batch against a producer's recent ones: Some(base) when it is a
/// duplicate (base [`IN_FLIGHT`] when its first send is not committed yet), None when it is
/// the next in sequence, Err when it is out of sequence or from a fenced epoch.
fn check(st: &PartitionProducers, info: &BatchInfo) -> Result<Option<u64>, (i16, String)> {
    let Some(e) = st.by_pid.get(&info.producer_id) else {
        return Ok(None);
    };
    if info.producer_epoch < e.epoch {
        return Err((
            ResponseError::InvalidProducerEpoch.code(),
            format!(
                "producer {} epoch {} is older than {}",
                info.producer_id, info.producer_epoch, e.epoch
            ),
        ));
    }
    if info.producer_epoch == e.epoch {
        let last = last_seq(info);
        if let Some(dup) = e
            .recent
            .iter()
            .find(|a| a.first_seq == info.base_sequence && a.last_seq == last)
        {
            return Ok(Some(dup.base_offset));
        }
        let expected = e.recent.back().map_or(0, |a| next_seq(a.last_seq));
        if info.base_sequence != expected {
            return Err((
                ResponseError::OutOfOrderSequenceNumber.code(),
                format!(
                    "producer {} sent sequence {} where {} was expected",
                    info.producer_id, info.base_sequence, expected
                ),
            ));
        }
    } else if info.base_sequence != 0 {
        return Err((
            ResponseError::OutOfOrderSequenceNumber.code(),
            format!(
                "producer {} began epoch {} at sequence {} instead of 0",
                info.producer_id, info.producer_epoch, info.base_sequence
            ),
        ));
    }
    Ok(None)
}

fn record(st: &mut PartitionProducers, info: &BatchInfo, base: u64) {
    let e = st
        .by_pid
        .entry(info.producer_id)
        .or_insert_with(|| ProducerEntry {
            epoch: info.producer_epoch,
            recent: VecDeque::new(),
        });
    if info.producer_epoch != e.epoch {
        e.epoch = info.producer_epoch;
        e.recent.clear();
    }
    e.recent.push_back(Appended {
        first_seq: info.base_sequence,
        last_seq: last_seq(info),
        base_offset: base,
    });
    while e.recent.len() > REMEMBERED {
        e.recent.pop_front();
    }
}

/// Rebuild producer state from the batch headers in the partition's tail.
fn rebuild(st: &mut PartitionProducers, p: &Partition) {
    let mut from = p.tail_offset(TAIL_SCAN_BYTES);
    let end = p.log().next_offset();
    while from < end {
        // the raw log: a replicated partition's uncommitted tail counts too (a new leader
        // commits it), and Raft envelopes fail validation below
        let batches = match p.log().read(from, 1 << 20) {
            Ok(b) if !b.is_empty() => b,
            Ok(_) => break,
            Err(e) => {
                tracing::warn!(partition = ?p, "reading the log to rebuild producer state failed: {e}");
                break;
            }
        };
        for b in batches {
            from = b.base_offset + b.record_count.max(1) as u64;
            if let Ok(info) = validate(&b.payload) {
                if info.producer_id >= 0 {
                    record(st, &info, b.base_offset);
                }
            }
        }
    }
}

/// An append that failed: a batch larger than a log takes is the client's (MESSAGE_TOO_LARGE,
/// as Kafka's `message.max.bytes`); anything else is the storage's.
fn append_error(e: eddy_broker::BrokerError) -> (i16, String) {
    let code = match &e {
        eddy_broker::BrokerError::Storage(eddy_broker::LogError::TooLarge { .. }) => {
            ResponseError::MessageTooLarge.code()
        }
        _ => ResponseError::KafkaStorageError.code(),
    };
    (code, e.to_string())
}
