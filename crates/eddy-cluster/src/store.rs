//! A Raft log that *is* an eddy-log: every entry is one batch of the log, so a partition's
//! Raft log is the partition's data with no second copy.
//!
//! A [`Command::Batch`] entry is stored as the Kafka batch itself, its partition leader epoch
//! field (payload bytes 12..16, big-endian) holding the entry's term, as Kafka stores a
//! leader's epoch in the batches it appends. Every other entry (blank, membership, metadata
//! command) is an envelope that readers of data skip: bytes 0..8 `EDDYRAFT`, 12..16 the term,
//! byte 16 (where a Kafka batch has its magic, 2) [`ENVELOPE`], then the bincode of the entry.
//! An envelope takes one offset of the partition, a gap consumers skip as they skip Kafka's
//! control batches.
//!
//! Raft indexes are consecutive while offsets grow by each batch's record count, so the log
//! keeps an in-memory index (offset and term of every entry, 12 bytes each) rebuilt at open
//! from the batch headers; the first entry's Raft index is kept in a small file beside it.
//! The vote is a file written and fsynced before it is answered; an append's callback fires
//! when the log's syncer has made the entries durable under the node's fsync policy.

use std::fs;
use std::io::Write;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use eddy_log::Log;
use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{
    CommittedLeaderId, Entry, EntryPayload, LogId, LogState, RaftLogReader, StorageError,
    StorageIOError, Vote,
};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::types::{Command, NodeId, TypeConfig};

/// Byte 16 of an envelope (a Kafka batch has its magic, 2, there).
pub const ENVELOPE: u8 = 0xE5;
const MAGIC: &[u8; 8] = b"EDDYRAFT";
/// Bytes before an envelope's body.
const ENVELOPE_HEADER: usize = 17;

/// Whether a stored batch is a Raft envelope rather than data.
pub fn is_envelope(payload: &[u8]) -> bool {
    payload.len() >= ENVELOPE_HEADER && payload[16] == ENVELOPE && &payload[..8] == MAGIC
}

/// The term stored in an entry's batch.
fn term_of(payload: &[u8]) -> u32 {
    payload
        .get(12..16)
        .map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

#[derive(Serialize, Deserialize)]
enum Envelope {
    Blank,
    Membership(openraft::Membership<NodeId, openraft::BasicNode>),
    Command(Command),
}

/// Offsets and terms of the entries in the log.
#[derive(Default)]
pub(crate) struct Index {
    /// Raft index of `entries[0]`.
    pub(crate) first: u64,
    /// (base offset, term) of each entry.
    pub(crate) entries: Vec<(u64, u32)>,
}

impl Index {
    pub(crate) fn last_index(&self) -> Option<u64> {
        (!self.entries.is_empty()).then(|| self.first + self.entries.len() as u64 - 1)
    }

    fn slot(&self, index: u64) -> Option<usize> {
        let k = usize::try_from(index.checked_sub(self.first)?).ok()?;
        (k < self.entries.len()).then_some(k)
    }

    /// Base offset of the entry at `index`.
    pub(crate) fn offset(&self, index: u64) -> Option<u64> {
        self.slot(index).map(|k| self.entries[k].0)
    }

    pub(crate) fn log_id(&self, index: u64) -> Option<LogId<NodeId>> {
        self.slot(index)
            .map(|k| log_id(self.entries[k].1 as u64, index))
    }

    /// The offset right after the entry at `index`.
    pub(crate) fn end_offset(&self, index: u64, log_end: u64) -> Option<u64> {
        let k = self.slot(index)?;
        Some(self.entries.get(k + 1).map_or(log_end, |e| e.0))
    }
}

pub(crate) fn log_id(term: u64, index: u64) -> LogId<NodeId> {
    LogId::new(CommittedLeaderId::new(term, 0), index)
}

fn io_error(e: impl std::fmt::Display) -> StorageError<NodeId> {
    StorageIOError::write_logs(&std::io::Error::other(e.to_string())).into()
}

fn read_error(e: impl std::fmt::Display) -> StorageError<NodeId> {
    StorageIOError::read_logs(&std::io::Error::other(e.to_string())).into()
}

/// Write a small file durably: a temporary file, fsynced, renamed over, the directory fsynced.
pub(crate) fn write_durably(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_data()?;
    }
    fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// The newest entries, kept in memory as appended so that replicating them to followers
/// does not read them back from the log (bounded by [`TAIL_CACHE_BYTES`]).
#[derive(Default)]
pub(crate) struct Tail {
    entries: std::collections::VecDeque<Entry<TypeConfig>>,
    bytes: usize,
}

/// Most payload bytes [`Tail`] keeps.
const TAIL_CACHE_BYTES: usize = 32 << 20;

fn entry_bytes(e: &Entry<TypeConfig>) -> usize {
    match &e.payload {
        EntryPayload::Normal(Command::Batch(b)) => b.len(),
        _ => 64,
    }
}

impl Tail {
    fn push(&mut self, e: Entry<TypeConfig>) {
        self.bytes += entry_bytes(&e);
        self.entries.push_back(e);
        while self.bytes > TAIL_CACHE_BYTES {
            match self.entries.pop_front() {
                Some(old) => self.bytes -= entry_bytes(&old),
                None => break,
            }
        }
    }

    /// Drop entries at `index` and after (a truncated suffix).
    fn cut(&mut self, index: u64) {
        while self.entries.back().is_some_and(|e| e.log_id.index >= index) {
            if let Some(e) = self.entries.pop_back() {
                self.bytes -= entry_bytes(&e);
            }
        }
    }

    /// Entries `from..to` when the cache holds `from`.
    fn get(&self, from: u64, to: u64) -> Option<Vec<Entry<TypeConfig>>> {
        let first = self.entries.front()?.log_id.index;
        let k = usize::try_from(from.checked_sub(first)?).ok()?;
        if k >= self.entries.len() {
            return None;
        }
        Some(
            self.entries
                .iter()
                .skip(k)
                .take_while(|e| e.log_id.index < to)
                .cloned()
                .collect(),
        )
    }
}

/// A group's Raft log over an eddy-log.
pub struct RaftLog {
    log: Arc<Log>,
    dir: PathBuf,
    pub(crate) index: Arc<Mutex<Index>>,
    tail: Arc<Mutex<Tail>>,
    vote: Option<Vote<NodeId>>,
}

impl RaftLog {
    /// Open the Raft state of the log whose vote and first index live in `dir`.
    pub fn open(log: Arc<Log>, dir: &Path) -> std::io::Result<RaftLog> {
        fs::create_dir_all(dir)?;
        let first = match fs::read(dir.join("raft-first")) {
            Ok(b) if b.len() == 8 => u64::from_le_bytes(b.try_into().expect("8 bytes")),
            _ => 0,
        };
        let mut entries = Vec::new();
        log.scan_headers(log.start_offset(), 17, |offset, _count, prefix| {
            entries.push((offset, term_of(prefix)));
        })
        .map_err(std::io::Error::other)?;
        let vote = match fs::read(dir.join("raft-vote")) {
            Ok(b) => Some(bincode::deserialize(&b).map_err(std::io::Error::other)?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        Ok(RaftLog {
            log,
            dir: dir.to_owned(),
            index: Arc::new(Mutex::new(Index { first, entries })),
            tail: Default::default(),
            vote,
        })
    }

    fn reader(&self) -> Reader {
        Reader {
            log: self.log.clone(),
            index: self.index.clone(),
            tail: self.tail.clone(),
        }
    }

    /// Append one entry to the log; its base offset.
    fn append_entry(&self, entry: &Entry<TypeConfig>) -> Result<u64, StorageError<NodeId>> {
        let term = entry.log_id.leader_id.term as u32;
        if let EntryPayload::Normal(Command::Batch(b)) = &entry.payload {
            // checked by the leader's produce (sizes, magic, CRC) before it was proposed; the
            // header gives the count and time, and the term goes into the epoch field as the
            // batch is written, without a copy of the batch first
            let h = eddy_records::BatchHeader::new(&b[..])
                .filter(|h| h.magic() == 2)
                .ok_or_else(|| io_error("a record batch shorter than its header"))?;
            let count = (h.last_offset_delta().max(0) as u32).saturating_add(1);
            let ts = h.max_timestamp();
            return self
                .log
                .append_parts(count, ts, &[&b[..12], &term.to_be_bytes(), &b[16..]])
                .map_err(io_error);
        }
        let (count, ts, bytes) = Self::encode(entry)?;
        self.log.append(count, ts, &bytes).map_err(io_error)
    }

    fn encode(entry: &Entry<TypeConfig>) -> Result<(u32, i64, Vec<u8>), StorageError<NodeId>> {
        let term = entry.log_id.leader_id.term as u32;
        let body = match &entry.payload {
            EntryPayload::Normal(Command::Batch(_)) => {
                return Err(io_error("record batches are appended by append_entry"))
            }
            EntryPayload::Normal(c) => Envelope::Command(c.clone()),
            EntryPayload::Blank => Envelope::Blank,
            EntryPayload::Membership(m) => Envelope::Membership(m.clone()),
        };
        let mut v = Vec::with_capacity(64);
        v.extend_from_slice(MAGIC);
        v.extend_from_slice(&[0; 4]);
        v.extend_from_slice(&term.to_be_bytes());
        v.push(ENVELOPE);
        bincode::serialize_into(&mut v, &body).map_err(io_error)?;
        Ok((1, eddy_log::now_ms(), v))
    }
}

fn decode(index: u64, term: u32, payload: Vec<u8>) -> Result<Entry<TypeConfig>, String> {
    let log_id = log_id(term as u64, index);
    let payload = if is_envelope(&payload) {
        match bincode::deserialize::<Envelope>(&payload[ENVELOPE_HEADER..])
            .map_err(|e| format!("entry {index}: {e}"))?
        {
            Envelope::Blank => EntryPayload::Blank,
            Envelope::Membership(m) => EntryPayload::Membership(m),
            Envelope::Command(c) => EntryPayload::Normal(c),
        }
    } else {
        EntryPayload::Normal(Command::Batch(Bytes::from(payload)))
    };
    Ok(Entry { log_id, payload })
}

/// Reads entries back (replication, applying).
#[derive(Clone)]
pub struct Reader {
    log: Arc<Log>,
    index: Arc<Mutex<Index>>,
    tail: Arc<Mutex<Tail>>,
}

impl Reader {
    fn entries(&self, from: u64, to: u64) -> Result<Vec<Entry<TypeConfig>>, String> {
        if let Some(hit) = self.tail.lock().get(from, to) {
            return Ok(hit);
        }
        let mut out = Vec::new();
        let mut next = from;
        while next < to {
            let (offset, want) = {
                let ix = self.index.lock();
                let Some(offset) = ix.offset(next) else {
                    break;
                };
                (offset, ix.entries[ix.slot(next).expect("present")..].len())
            };
            let batches = self
                .log
                .read(offset, 1 << 20)
                .map_err(|e| format!("reading entry {next}: {e}"))?;
            if batches.is_empty() {
                break;
            }
            let mut progressed = false;
            for b in batches {
                if next >= to || want == 0 {
                    break;
                }
                let ix = self.index.lock();
                match ix.slot(next) {
                    Some(k) if ix.entries[k].0 == b.base_offset => {
                        let term = ix.entries[k].1;
                        drop(ix);
                        out.push(decode(next, term, b.payload)?);
                        next += 1;
                        progressed = true;
                    }
                    // the log moved under us (truncated meanwhile): stop here
                    _ => return Ok(out),
                }
            }
            if !progressed {
                break;
            }
        }
        Ok(out)
    }
}

fn bounds(range: &impl RangeBounds<u64>) -> (u64, u64) {
    let from = match range.start_bound() {
        Bound::Included(i) => *i,
        Bound::Excluded(i) => i + 1,
        Bound::Unbounded => 0,
    };
    let to = match range.end_bound() {
        Bound::Included(i) => i.saturating_add(1),
        Bound::Excluded(i) => *i,
        Bound::Unbounded => u64::MAX,
    };
    (from, to)
}

impl RaftLogReader<TypeConfig> for Reader {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + std::fmt::Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<NodeId>> {
        let (from, to) = bounds(&range);
        self.entries(from, to).map_err(read_error)
    }
}

impl RaftLogReader<TypeConfig> for RaftLog {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + std::fmt::Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<NodeId>> {
        self.reader().try_get_log_entries(range).await
    }
}

impl RaftLogStorage<TypeConfig> for RaftLog {
    type LogReader = Reader;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        let ix = self.index.lock();
        let last = ix.last_index().and_then(|i| ix.log_id(i));
        Ok(LogState {
            last_purged_log_id: None,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.reader()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        let bytes = bincode::serialize(vote).map_err(io_error)?;
        let path = self.dir.join("raft-vote");
        tokio::task::block_in_place(|| write_durably(&path, &bytes))
            .map_err(|e| StorageError::from(StorageIOError::write_vote(&e)))?;
        self.vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        Ok(self.vote)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        for entry in entries {
            let index = entry.log_id.index;
            {
                let ix = self.index.lock();
                let expected = ix.last_index().map_or(index, |l| l + 1);
                if index != expected {
                    return Err(io_error(format!(
                        "entry {index} appended where {expected} comes next"
                    )));
                }
            }
            if self.index.lock().entries.is_empty() {
                let path = self.dir.join("raft-first");
                tokio::task::block_in_place(|| write_durably(&path, &index.to_le_bytes()))
                    .map_err(io_error)?;
                self.index.lock().first = index;
            }
            let offset = self.append_entry(&entry)?;
            self.index
                .lock()
                .entries
                .push((offset, entry.log_id.leader_id.term as u32));
            self.tail.lock().push(entry);
        }
        let end = self.log.next_offset();
        let durable = self.log.wait_durable(end);
        tokio::spawn(async move {
            let r = durable.await.map_err(std::io::Error::other);
            callback.log_io_completed(r);
        });
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        let mut ix = self.index.lock();
        let Some(k) = ix.slot(log_id.index) else {
            return Ok(());
        };
        let offset = ix.entries[k].0;
        tokio::task::block_in_place(|| self.log.truncate(offset)).map_err(io_error)?;
        ix.entries.truncate(k);
        self.tail.lock().cut(log_id.index);
        tracing::info!(dir = %self.dir.display(), from = log_id.index, offset, "truncated a diverged suffix");
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        // groups never build snapshots (snapshot policy Never), so openraft never purges; the
        // log's own retention is what removes data
        Err(io_error(format!(
            "purging the Raft log up to {log_id} is not supported: Eddy's groups take no snapshots"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use eddy_log::{FsyncPolicy, LogConfig, Syncer};
    use openraft::storage::RaftLogStorageExt;

    fn batch(n: i64) -> Bytes {
        let mut b = eddy_records::BatchBuilder::new();
        for i in 0..n {
            b.push(1_000 + i, i, None, Some(format!("v{i}").as_bytes()), &[]);
        }
        Bytes::from(b.finish())
    }

    fn entry(term: u64, index: u64, payload: EntryPayload<TypeConfig>) -> Entry<TypeConfig> {
        Entry {
            log_id: log_id(term, index),
            payload,
        }
    }

    fn open(dir: &Path, syncer: &Arc<Syncer>) -> RaftLog {
        let log = Log::open(&dir.join("log"), LogConfig::default(), syncer.clone()).unwrap();
        RaftLog::open(log, dir).unwrap()
    }

    /// Append and wait until openraft would be told the entries are durable.
    async fn append(store: &mut RaftLog, entries: Vec<Entry<TypeConfig>>) {
        store.blocking_append(entries).await.unwrap();
    }

    /// (term, index, what) of each entry; `stored`: read from the log, where a batch's leader
    /// epoch field holds its term (the in-memory tail has the batch as proposed).
    fn kinds(entries: &[Entry<TypeConfig>], stored: bool) -> Vec<(u64, u64, String)> {
        entries
            .iter()
            .map(|e| {
                let what = match &e.payload {
                    EntryPayload::Blank => "blank".to_string(),
                    EntryPayload::Membership(_) => "membership".to_string(),
                    EntryPayload::Normal(Command::Batch(b)) => {
                        let h = eddy_records::BatchHeader::new(&b[..]).unwrap();
                        if stored {
                            assert_eq!(h.partition_leader_epoch() as u64, e.log_id.leader_id.term);
                        }
                        format!("batch of {}", h.record_count())
                    }
                    EntryPayload::Normal(Command::Meta(_)) => "meta".to_string(),
                };
                (e.log_id.leader_id.term, e.log_id.index, what)
            })
            .collect()
    }

    /// Entries go in as batches and envelopes, come back the same (also after a reopen, from
    /// the log alone), the vote survives, a diverged suffix is truncated and written anew.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_raft_log_is_the_partition_log() {
        let dir = tempfile::tempdir().unwrap();
        let syncer = Syncer::new(FsyncPolicy::Always);
        let mut store = open(dir.path(), &syncer);
        let members = openraft::Membership::new(vec![[1u64, 2, 3].into_iter().collect()], None);
        append(
            &mut store,
            vec![
                entry(0, 0, EntryPayload::Membership(members)),
                entry(1, 1, EntryPayload::Blank),
                entry(1, 2, EntryPayload::Normal(Command::Batch(batch(3)))),
                entry(1, 3, EntryPayload::Normal(Command::Batch(batch(2)))),
                entry(2, 4, EntryPayload::Blank),
                entry(2, 5, EntryPayload::Normal(Command::Batch(batch(4)))),
            ],
        )
        .await;
        let vote = Vote::new(2, 3);
        store.save_vote(&vote).await.unwrap();
        let want = vec![
            (0, 0, "membership".to_string()),
            (1, 1, "blank".to_string()),
            (1, 2, "batch of 3".to_string()),
            (1, 3, "batch of 2".to_string()),
            (2, 4, "blank".to_string()),
            (2, 5, "batch of 4".to_string()),
        ];
        assert_eq!(
            kinds(&store.try_get_log_entries(0..6).await.unwrap(), false),
            want
        );
        // offsets: envelopes take one, a batch its records
        let offsets: Vec<u64> = store.index.lock().entries.iter().map(|e| e.0).collect();
        assert_eq!(offsets, vec![0, 1, 2, 5, 7, 8]);
        drop(store);

        // reopened: everything from the log itself (no memory of the appends)
        let mut store = open(dir.path(), &syncer);
        assert_eq!(
            kinds(&store.try_get_log_entries(0..6).await.unwrap(), true),
            want
        );
        assert_eq!(
            kinds(&store.try_get_log_entries(2..4).await.unwrap(), true),
            want[2..4]
        );
        assert_eq!(store.read_vote().await.unwrap(), Some(vote));
        let state = store.get_log_state().await.unwrap();
        assert_eq!(state.last_log_id, Some(log_id(2, 5)));

        // a new leader of term 3 overwrites from index 4
        store.truncate(log_id(2, 4)).await.unwrap();
        append(
            &mut store,
            vec![entry(3, 4, EntryPayload::Normal(Command::Batch(batch(1))))],
        )
        .await;
        let after = kinds(&store.try_get_log_entries(0..10).await.unwrap(), false);
        assert_eq!(after.len(), 5);
        assert_eq!(after[4], (3, 4, "batch of 1".to_string()));
        drop(store);
        let mut store = open(dir.path(), &syncer);
        assert_eq!(
            kinds(&store.try_get_log_entries(0..10).await.unwrap(), true),
            after
        );
        // an entry out of sequence is refused
        assert!(store
            .blocking_append(vec![entry(3, 9, EntryPayload::Blank)])
            .await
            .is_err());
    }

    #[test]
    fn envelopes_are_not_kafka_batches() {
        let mut v = MAGIC.to_vec();
        v.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 7, ENVELOPE]);
        assert!(is_envelope(&v));
        assert_eq!(term_of(&v), 7);
        v[16] = 2;
        assert!(!is_envelope(&v));
    }
}
