//! Committed consumer offsets (Kafka consumer groups; later stream consumers), kept in memory and
//! persisted in their own log under `data/offsets/`.
//!
//! Each record is one JSON object: `{"commit": {"group": G, "offsets": [[topic, partition,
//! offset, leader_epoch, metadata], ...]}}`, `{"delete": G}`, `{"forgettopic": T}`, or
//! `{"snapshot": {G: [...]}}`.
//! Start-up replays the log; once it holds more than [`SNAPSHOT_AFTER`] bytes a snapshot of
//! everything is appended and the segments before it are deleted.

use std::collections::HashMap;
use std::sync::Arc;

use eddy_log::Log;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::error::{BrokerError, Result};

/// Log bytes after which a snapshot replaces the history.
const SNAPSHOT_AFTER: u64 = 32 << 20;

/// A committed position.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Committed {
    /// The next offset to read.
    pub offset: i64,
    /// The leader epoch the client saw (-1: none).
    pub leader_epoch: i32,
    /// Client metadata.
    pub metadata: String,
}

type Key = (String, i32);
type Entry = (String, i32, i64, i32, String);

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Record {
    Commit { group: String, offsets: Vec<Entry> },
    Delete(String),
    ForgetTopic(String),
    Snapshot(HashMap<String, Vec<Entry>>),
}

/// Every group's committed offsets.
pub struct OffsetStore {
    log: Arc<Log>,
    groups: Mutex<HashMap<String, HashMap<Key, Committed>>>,
    /// Log size right after the last snapshot: the next one waits for the log to double.
    snapshot_bytes: std::sync::atomic::AtomicU64,
}

fn entry((topic, partition): &Key, c: &Committed) -> Entry {
    (
        topic.clone(),
        *partition,
        c.offset,
        c.leader_epoch,
        c.metadata.clone(),
    )
}

impl OffsetStore {
    /// Replay the log.
    pub(crate) fn open(log: Arc<Log>) -> Result<OffsetStore> {
        let mut groups: HashMap<String, HashMap<Key, Committed>> = HashMap::new();
        let mut from = log.start_offset();
        loop {
            let batches = log.read(from, 4 << 20)?;
            if batches.is_empty() {
                break;
            }
            for b in batches {
                from = b.base_offset + b.record_count.max(1) as u64;
                let rec: Record = match serde_json::from_slice(&b.payload) {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::error!(
                            offset = b.base_offset,
                            "skipping an unreadable committed-offsets record: {e}"
                        );
                        continue;
                    }
                };
                match rec {
                    Record::Commit { group, offsets } => {
                        let g = groups.entry(group).or_default();
                        for (t, p, offset, leader_epoch, metadata) in offsets {
                            g.insert(
                                (t, p),
                                Committed {
                                    offset,
                                    leader_epoch,
                                    metadata,
                                },
                            );
                        }
                    }
                    Record::Delete(group) => {
                        groups.remove(&group);
                    }
                    Record::ForgetTopic(topic) => {
                        for g in groups.values_mut() {
                            g.retain(|(t, _), _| *t != topic);
                        }
                    }
                    Record::Snapshot(all) => {
                        groups = all
                            .into_iter()
                            .map(|(g, es)| {
                                let m = es
                                    .into_iter()
                                    .map(|(t, p, offset, leader_epoch, metadata)| {
                                        (
                                            (t, p),
                                            Committed {
                                                offset,
                                                leader_epoch,
                                                metadata,
                                            },
                                        )
                                    })
                                    .collect();
                                (g, m)
                            })
                            .collect();
                    }
                }
            }
        }
        Ok(OffsetStore {
            snapshot_bytes: std::sync::atomic::AtomicU64::new(log.size_bytes()),
            log,
            groups: Mutex::new(groups),
        })
    }

    fn append(&self, rec: &Record) -> Result<(Arc<Log>, u64)> {
        let bytes = serde_json::to_vec(rec)
            .map_err(|e| BrokerError::Internal(format!("encoding committed offsets: {e}")))?;
        let off = self.log.append(1, 0, &bytes)?;
        Ok((self.log.clone(), off + 1))
    }

    /// Commit offsets for a group; returns what to wait on for durability.
    pub fn commit(
        &self,
        group: &str,
        offsets: Vec<(String, i32, Committed)>,
    ) -> Result<(Arc<Log>, u64)> {
        let mut groups = self.groups.lock();
        let rec = Record::Commit {
            group: group.to_owned(),
            offsets: offsets
                .iter()
                .map(|(t, p, c)| entry(&(t.clone(), *p), c))
                .collect(),
        };
        let done = self.append(&rec)?;
        let g = groups.entry(group.to_owned()).or_default();
        for (t, p, c) in offsets {
            g.insert((t, p), c);
        }
        let size = self.log.size_bytes();
        let last = self
            .snapshot_bytes
            .load(std::sync::atomic::Ordering::Relaxed);
        if size > SNAPSHOT_AFTER.max(last.saturating_mul(2)) {
            self.snapshot(&groups);
            self.snapshot_bytes
                .store(self.log.size_bytes(), std::sync::atomic::Ordering::Relaxed);
        }
        Ok(done)
    }

    fn snapshot(&self, groups: &HashMap<String, HashMap<Key, Committed>>) {
        let all = groups
            .iter()
            .map(|(g, m)| (g.clone(), m.iter().map(|(k, c)| entry(k, c)).collect()))
            .collect();
        match self.append(&Record::Snapshot(all)) {
            Ok((_, end)) => {
                // the history goes only once the snapshot that replaces it is on disk
                if let Err(e) = self.log.sync_now() {
                    tracing::warn!("syncing the committed-offsets snapshot failed: {e}");
                    return;
                }
                if let Err(e) = self.log.delete_before(end - 1) {
                    tracing::warn!("compacting committed offsets failed: {e}");
                }
            }
            Err(e) => tracing::warn!("snapshotting committed offsets failed: {e}"),
        }
    }

    /// A group's committed offset for one partition.
    pub fn get(&self, group: &str, topic: &str, partition: i32) -> Option<Committed> {
        self.groups
            .lock()
            .get(group)
            .and_then(|g| g.get(&(topic.to_owned(), partition)).cloned())
    }

    /// All of a group's committed offsets.
    pub fn group(&self, group: &str) -> Vec<(String, i32, Committed)> {
        let mut out: Vec<_> = self
            .groups
            .lock()
            .get(group)
            .map(|g| {
                g.iter()
                    .map(|((t, p), c)| (t.clone(), *p, c.clone()))
                    .collect()
            })
            .unwrap_or_default();
        out.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
        out
    }

    /// Groups that have committed offsets.
    pub fn group_names(&self) -> Vec<String> {
        let mut g: Vec<String> = self.groups.lock().keys().cloned().collect();
        g.sort();
        g
    }

    /// Forget a group's offsets.
    pub fn delete_group(&self, group: &str) -> Result<()> {
        let mut groups = self.groups.lock();
        if groups.remove(group).is_some() {
            self.append(&Record::Delete(group.to_owned()))?;
        }
        Ok(())
    }

    /// Forget a deleted topic's offsets in every group (a recreated topic starts afresh).
    pub fn forget_topic(&self, topic: &str) -> Result<()> {
        let mut groups = self.groups.lock();
        let mut had = false;
        for g in groups.values_mut() {
            let before = g.len();
            g.retain(|(t, _), _| t != topic);
            had |= g.len() != before;
        }
        if had {
            self.append(&Record::ForgetTopic(topic.to_owned()))?;
        }
        Ok(())
    }

    pub(crate) fn log(&self) -> &Arc<Log> {
        &self.log
    }
}
