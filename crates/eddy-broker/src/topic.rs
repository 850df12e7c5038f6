//! Topics: named sets of partitions, each an append-only log of batches that front ends store
//! and return as they are (the Kafka front end stores Kafka record batches byte for byte).
//!
//! The broker assigns offsets (the log's) and knows each batch's record count and timestamp;
//! what is inside a batch is the front end's business. Every append bumps one broker-wide
//! watch counter, so long-polling readers wake when data arrives and look again.

use std::sync::Arc;

use eddy_log::{Batch, Log};
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::error::{BrokerError, Result};

/// Most partitions a topic may have.
pub const MAX_PARTITIONS: usize = 10_000;

/// Topic settings (Kafka's topic configs of the same names).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TopicConfig {
    /// `retention.ms`: segments whose newest record is older are deleted (-1: keep).
    pub retention_ms: i64,
    /// `retention.bytes`: per partition, oldest segments are deleted beyond this (-1: keep).
    pub retention_bytes: i64,
    /// `cleanup.policy`: `delete` or `compact`.
    pub cleanup_policy: String,
    /// `segment.bytes`.
    pub segment_bytes: u64,
}

impl Default for TopicConfig {
    fn default() -> Self {
        TopicConfig {
            retention_ms: 7 * 24 * 3600 * 1000,
            retention_bytes: -1,
            cleanup_policy: "delete".into(),
            segment_bytes: 64 << 20,
        }
    }
}

impl TopicConfig {
    /// Set one config by its Kafka name; a bad name or value is an error naming it.
    pub fn set(&mut self, name: &str, value: Option<&str>) -> Result<()> {
        let d = TopicConfig::default();
        let int = |v: Option<&str>, min: i64| -> Result<Option<i64>> {
            match v {
                None => Ok(None),
                Some(s) => match s.trim().parse::<i64>() {
                    Ok(n) if n >= min => Ok(Some(n)),
                    _ => Err(BrokerError::PreconditionFailed(format!(
                        "invalid value '{s}' for topic config '{name}'"
                    ))),
                },
            }
        };
        match name {
            "retention.ms" => self.retention_ms = int(value, -1)?.unwrap_or(d.retention_ms),
            "retention.bytes" => {
                self.retention_bytes = int(value, -1)?.unwrap_or(d.retention_bytes)
            }
            "segment.bytes" => {
                self.segment_bytes = int(value, 14)?.map_or(d.segment_bytes, |n| n as u64)
            }
            "cleanup.policy" => match value.unwrap_or("delete") {
                v @ ("delete" | "compact") => self.cleanup_policy = v.to_owned(),
                other => {
                    return Err(BrokerError::PreconditionFailed(format!(
                        "invalid value '{other}' for topic config 'cleanup.policy': expected delete or compact"
                    )))
                }
            },
            other => {
                return Err(BrokerError::NotFound(format!(
                    "unknown topic config '{other}'"
                )))
            }
        }
        Ok(())
    }

    /// Every config as (name, value) in Kafka's spelling.
    pub fn entries(&self) -> Vec<(&'static str, String)> {
        vec![
            ("cleanup.policy", self.cleanup_policy.clone()),
            ("retention.bytes", self.retention_bytes.to_string()),
            ("retention.ms", self.retention_ms.to_string()),
            ("segment.bytes", self.segment_bytes.to_string()),
        ]
    }
}

/// One partition of a topic.
pub struct Partition {
    /// The topic's name.
    pub topic: String,
    /// Partition index.
    pub index: i32,
    log: Arc<Log>,
    appended: Arc<watch::Sender<u64>>,
    /// Sealed end at the last compaction (cleanup.policy=compact).
    compacted_through: std::sync::atomic::AtomicU64,
    /// Replicated by a Raft group (cluster mode): the log holds Raft entries, only what is
    /// below `committed` may be read, and appends go through the group.
    replicated: std::sync::atomic::AtomicBool,
    committed: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for Partition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.topic, self.index)
    }
}

impl Partition {
    pub(crate) fn new(
        topic: &str,
        index: i32,
        log: Arc<Log>,
        appended: Arc<watch::Sender<u64>>,
    ) -> Arc<Partition> {
        Arc::new(Partition {
            topic: topic.to_owned(),
            index,
            log,
            appended,
            compacted_through: Default::default(),
            replicated: Default::default(),
            committed: Default::default(),
        })
    }

    /// The partition's log (to wait for durability).
    pub fn log(&self) -> &Arc<Log> {
        &self.log
    }

    /// Mark the partition replicated (its Raft group appends; readers see only what is
    /// committed, and no Raft envelope).
    pub fn replicate(&self) {
        self.replicated
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// Whether a Raft group replicates this partition.
    pub fn is_replicated(&self) -> bool {
        self.replicated.load(std::sync::atomic::Ordering::Acquire)
    }

    /// A replicated partition's committed end moved (its high watermark); wakes readers.
    pub fn set_committed(&self, end: u64) {
        self.committed
            .fetch_max(end, std::sync::atomic::Ordering::AcqRel);
        self.appended.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Append one batch of `record_count` records; returns its base offset. The caller waits
    /// for [`Log::wait_durable`] when it needs durability. A replicated partition refuses:
    /// its group appends.
    pub fn append(&self, record_count: u32, max_timestamp_ms: i64, batch: &[u8]) -> Result<u64> {
        if self.is_replicated() {
            return Err(BrokerError::PreconditionFailed(format!(
                "partition {self:?} is replicated: appends go through its leader"
            )));
        }
        let base = self.log.append(record_count, max_timestamp_ms, batch)?;
        self.appended.send_modify(|n| *n = n.wrapping_add(1));
        Ok(base)
    }

    /// Batches from the one holding `offset`, up to about `max_bytes`.
    pub fn read(&self, offset: u64, max_bytes: usize) -> Result<Vec<Batch>> {
        let mut batches = self.log.read(offset, max_bytes)?;
        if self.is_replicated() {
            // committed data only; a Raft entry that is not a record batch (blank and
            // membership entries: byte 16 is not a Kafka batch's magic) is shown as an empty
            // batch at its offset, so a reader moves past it
            let hw = self.end_offset();
            batches.retain(|b| b.base_offset < hw);
            for b in &mut batches {
                if b.payload.get(16) != Some(&2) {
                    b.payload = eddy_records::empty_batch(b.base_offset, b.timestamp_ms);
                }
            }
        }
        Ok(batches)
    }

    /// An offset from which about the last `bytes` of the partition follow.
    pub fn tail_offset(&self, bytes: u64) -> u64 {
        self.log.tail_offset(bytes).max(self.log.start_offset())
    }

    /// The first offset still stored.
    pub fn start_offset(&self) -> u64 {
        self.log.start_offset()
    }

    /// The offset the next record gets (Kafka's log end offset and high watermark: one
    /// replica).
    pub fn end_offset(&self) -> u64 {
        if self.is_replicated() {
            return self
                .committed
                .load(std::sync::atomic::Ordering::Acquire)
                .min(self.log.next_offset());
        }
        self.log.next_offset()
    }

    /// The first offset whose batch has a timestamp at or after `ts`.
    pub fn offset_for_timestamp(&self, ts: i64) -> Result<Option<u64>> {
        Ok(self.log.offset_for_timestamp(ts)?)
    }

    /// Log compaction (`cleanup.policy=compact`): in sealed segments, keep only the latest record
    /// of each key (records without a key stay). Batches keep their offset span, so offsets
    /// never move; a batch may end up with no records, as in Kafka. Runs when new segments
    /// were sealed since the last pass; returns bytes reclaimed.
    pub(crate) fn compact_if_due(&self) -> Result<u64> {
        use std::sync::atomic::Ordering;
        let sealed = self.log.sealed_end();
        if sealed <= self.compacted_through.load(Ordering::Relaxed) {
            return Ok(0);
        }
        // the latest offset of every key, over the whole partition
        let mut latest: std::collections::HashMap<bytes::Bytes, u64> = Default::default();
        let (mut from, end) = (self.start_offset(), self.end_offset());
        while from < end {
            let batches = self.log.read(from, 4 << 20)?;
            if batches.is_empty() {
                break;
            }
            for b in batches {
                from = b.base_offset + b.record_count.max(1) as u64;
                if eddy_records::is_control(&b.payload) {
                    continue;
                }
                match eddy_records::decode_batch(b.base_offset, &b.payload) {
                    Ok(records) => {
                        for r in records {
                            if let Some(k) = r.key {
                                // a copy: a slice would pin the whole decoded batch
                                latest.insert(bytes::Bytes::copy_from_slice(&k), r.offset);
                            }
                        }
                    }
                    Err(e) => {
                        tracing::warn!(partition = ?self, offset = b.base_offset, "compaction skips an unreadable batch: {e}")
                    }
                }
            }
        }
        let scanned = end;
        let reclaimed = self.log.rewrite_sealed(|b| {
            use eddy_records::{decode_batch, encode_batch_like, is_control};
            // a segment sealed while the keys were scanned holds records the map has not seen
            if is_control(&b.payload) || b.base_offset + b.record_count as u64 > scanned {
                return eddy_log::Rewrite::Keep;
            }
            let Ok(records) = decode_batch(b.base_offset, &b.payload) else {
                return eddy_log::Rewrite::Keep;
            };
            // a record goes only when a later record of its key exists
            let superseded = |r: &eddy_records::Record| {
                r.key
                    .as_ref()
                    .is_some_and(|k| latest.get(k).is_some_and(|l| *l > r.offset))
            };
            if !records.iter().any(superseded) {
                return eddy_log::Rewrite::Keep;
            }
            let keep: Vec<_> = records.into_iter().filter(|r| !superseded(r)).collect();
            eddy_log::Rewrite::Replace(encode_batch_like(&keep, b.base_offset, &b.payload))
        })?;
        self.compacted_through.store(sealed, Ordering::Relaxed);
        if reclaimed > 0 {
            tracing::info!(partition = ?self, reclaimed, "compacted");
        }
        Ok(reclaimed)
    }

    pub(crate) fn apply_retention(&self, config: &TopicConfig) {
        if self.is_replicated() {
            // the log is the Raft log: deleting its head would take entries a lagging
            // replica may still need (not yet supported; README says so)
            return;
        }
        if config.cleanup_policy == "compact" {
            if let Err(e) = self.compact_if_due() {
                tracing::warn!(partition = ?self, "compaction failed: {e}");
            }
            return;
        }
        let age = (config.retention_ms >= 0).then_some(config.retention_ms);
        let bytes = (config.retention_bytes >= 0).then_some(config.retention_bytes as u64);
        if age.is_none() && bytes.is_none() {
            return;
        }
        if let Err(e) = self.log.apply_retention(age, bytes) {
            tracing::warn!(partition = ?self, "retention failed: {e}");
        }
    }
}

/// A topic.
pub struct Topic {
    /// Name.
    pub name: String,
    /// Kafka topic id (a UUID).
    pub id: [u8; 16],
    pub(crate) partitions: RwLock<Vec<Arc<Partition>>>,
    pub(crate) config: RwLock<TopicConfig>,
}

impl std::fmt::Debug for Topic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Topic").field("name", &self.name).finish()
    }
}

impl Topic {
    /// All partitions, by index.
    pub fn partitions(&self) -> Vec<Arc<Partition>> {
        self.partitions.read().clone()
    }

    /// One partition.
    pub fn partition(&self, index: i32) -> Option<Arc<Partition>> {
        usize::try_from(index)
            .ok()
            .and_then(|i| self.partitions.read().get(i).cloned())
    }

    /// Number of partitions.
    pub fn partition_count(&self) -> usize {
        self.partitions.read().len()
    }

    /// Current settings.
    pub fn config(&self) -> TopicConfig {
        self.config.read().clone()
    }
}

/// Topic names as Kafka allows them: 1–249 of `[a-zA-Z0-9._-]`, not `.` or `..`.
pub fn check_topic_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 249
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(BrokerError::PreconditionFailed(format!(
            "invalid topic name '{name}': 1 to 249 characters of [a-zA-Z0-9._-], not '.' or '..'"
        )))
    }
}
