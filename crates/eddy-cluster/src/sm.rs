//! The groups' state machines: a partition's (its log is its state: applying an entry moves
//! the high watermark) and the metadata group's ([`MetaState`], whose changes create and
//! delete topics and start and stop partition groups on this node).

use std::io::Cursor;
use std::path::PathBuf;
use std::sync::Arc;

use eddy_log::Log;
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    BasicNode, Entry, EntryPayload, LogId, RaftSnapshotBuilder, SnapshotMeta, StorageError,
    StorageIOError, StoredMembership,
};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::store::{write_durably, Index};
use crate::types::{Command, MetaCommand, MetaError, MetaState, NodeId, Reply, TypeConfig};

type Membership = StoredMembership<NodeId, BasicNode>;

fn sm_error(e: impl std::fmt::Display) -> StorageError<NodeId> {
    StorageIOError::write_state_machine(&std::io::Error::other(e.to_string())).into()
}

/// What a partition group's applying publishes: everything below `high_watermark` is
/// committed.
pub trait Watermark: Send + Sync + 'static {
    /// The committed end moved to `offset`.
    fn committed(&self, offset: u64);
}

#[derive(Serialize, Deserialize, Default)]
struct Applied {
    last: Option<LogId<NodeId>>,
    membership: Membership,
}

/// A partition group's state machine.
pub struct PartitionSm {
    log: Arc<Log>,
    index: Arc<Mutex<Index>>,
    applied: Applied,
    path: PathBuf,
    watermark: Arc<dyn Watermark>,
}

impl PartitionSm {
    /// The state machine over a group's log and index; `path` keeps what was applied (so a
    /// restart need not read the log back to find the membership).
    pub(crate) fn open(
        log: Arc<Log>,
        index: Arc<Mutex<Index>>,
        path: PathBuf,
        watermark: Arc<dyn Watermark>,
    ) -> PartitionSm {
        let mut applied: Applied = std::fs::read(&path)
            .ok()
            .and_then(|b| bincode::deserialize(&b).ok())
            .unwrap_or_default();
        // the log may hold less than was applied (a crash lost an unsynced tail under
        // `--fsync never`): start over from the log
        let last_index = index.lock().last_index();
        if applied
            .last
            .is_some_and(|l| last_index.is_none_or(|li| l.index > li))
        {
            applied = Applied::default();
        }
        PartitionSm {
            log,
            index,
            applied,
            path,
            watermark,
        }
    }

    fn save(&self, durable: bool) -> Result<(), StorageError<NodeId>> {
        let bytes = bincode::serialize(&self.applied).map_err(sm_error)?;
        if durable {
            tokio::task::block_in_place(|| write_durably(&self.path, &bytes)).map_err(sm_error)
        } else {
            std::fs::write(&self.path, bytes).map_err(sm_error)
        }
    }
}

fn no_snapshots() -> StorageError<NodeId> {
    sm_error("partition groups replicate through their log and take no snapshots")
}

/// Partition groups build no snapshots (their log is their state).
pub struct NoSnapshots;

impl RaftSnapshotBuilder<TypeConfig> for NoSnapshots {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        Err(no_snapshots())
    }
}

impl RaftStateMachine<TypeConfig> for PartitionSm {
    type SnapshotBuilder = NoSnapshots;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, Membership), StorageError<NodeId>> {
        Ok((self.applied.last, self.applied.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Reply>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let mut out = Vec::new();
        let mut end = None;
        let mut membership_changed = false;
        for e in entries {
            let index = e.log_id.index;
            let (base, stop) = {
                let ix = self.index.lock();
                let base = ix.offset(index);
                (base, ix.end_offset(index, self.log.next_offset()))
            };
            let (Some(base), Some(stop)) = (base, stop) else {
                return Err(sm_error(format!(
                    "applying entry {index} that is not in the log"
                )));
            };
            end = Some(stop);
            out.push(match e.payload {
                EntryPayload::Normal(Command::Batch(_)) => Reply::Offset(base),
                EntryPayload::Normal(Command::Meta(_)) => {
                    Reply::Meta(Err(MetaError::Invalid("not the metadata group".into())))
                }
                EntryPayload::Blank => Reply::None,
                EntryPayload::Membership(m) => {
                    self.applied.membership = StoredMembership::new(Some(e.log_id), m);
                    membership_changed = true;
                    Reply::None
                }
            });
            self.applied.last = Some(e.log_id);
        }
        if let Some(end) = end {
            self.watermark.committed(end);
            self.save(membership_changed)?;
        }
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        NoSnapshots
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<NodeId>> {
        Err(no_snapshots())
    }

    async fn install_snapshot(
        &mut self,
        _meta: &SnapshotMeta<NodeId, BasicNode>,
        _snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<NodeId>> {
        Err(no_snapshots())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        Ok(None)
    }
}

/// A metadata change applied, for the node to act on (create or delete local topics, start
/// or stop partition groups). Sent with a reply channel: applying waits until the node has
/// acted, so an answer given after commit finds the topic in place.
pub(crate) struct Effect {
    pub(crate) state: MetaState,
    pub(crate) command: Option<MetaCommand>,
    pub(crate) done: tokio::sync::oneshot::Sender<()>,
}

#[derive(Serialize, Deserialize, Default, Clone)]
struct MetaSnapshot {
    last: Option<LogId<NodeId>>,
    membership: Membership,
    state: MetaState,
}

/// The metadata group's state machine.
pub struct MetaSm {
    inner: MetaSnapshot,
    path: PathBuf,
    shared: Arc<parking_lot::RwLock<MetaState>>,
    effects: mpsc::UnboundedSender<Effect>,
    offsets: OffsetSink,
}

/// Where committed consumer-group offsets go as they are applied.
pub(crate) type OffsetSink = Box<dyn Fn(&str, Vec<crate::types::CommittedOffset>) + Send + Sync>;

impl MetaSm {
    pub(crate) fn open(
        path: PathBuf,
        shared: Arc<parking_lot::RwLock<MetaState>>,
        effects: mpsc::UnboundedSender<Effect>,
        offsets: OffsetSink,
        last_log_index: Option<u64>,
    ) -> MetaSm {
        let mut inner: MetaSnapshot = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        if inner
            .last
            .is_some_and(|l| last_log_index.is_none_or(|li| l.index > li))
        {
            inner = MetaSnapshot::default();
        }
        *shared.write() = inner.state.clone();
        MetaSm {
            inner,
            path,
            shared,
            effects,
            offsets,
        }
    }

    fn save(&self) -> Result<(), StorageError<NodeId>> {
        let bytes = serde_json::to_vec(&self.inner).map_err(sm_error)?;
        tokio::task::block_in_place(|| write_durably(&self.path, &bytes)).map_err(sm_error)
    }

    fn change(state: &mut MetaState, c: &MetaCommand) -> Result<(), MetaError> {
        match c {
            MetaCommand::RegisterNode(info) => {
                state.nodes.insert(info.id, info.clone());
            }
            MetaCommand::CreateTopic {
                name,
                id,
                replicas,
                configs,
            } => {
                if state.topics.contains_key(name) {
                    return Err(MetaError::AlreadyExists(format!(
                        "topic '{name}' already exists"
                    )));
                }
                state.topics.insert(
                    name.clone(),
                    crate::types::TopicPlacement {
                        id: *id,
                        replicas: replicas.clone(),
                        configs: configs.clone(),
                    },
                );
            }
            MetaCommand::DeleteTopic { name } => {
                if state.topics.remove(name).is_none() {
                    return Err(MetaError::NotFound(format!("no topic '{name}'")));
                }
            }
            // kept by the broker's offset store, not in the state (see `apply`)
            MetaCommand::CommitOffsets { .. } => {}
        }
        Ok(())
    }

    async fn effect(&self, command: Option<MetaCommand>) {
        let (done, rx) = tokio::sync::oneshot::channel();
        let e = Effect {
            state: self.inner.state.clone(),
            command,
            done,
        };
        if self.effects.send(e).is_ok() {
            let _ = rx.await;
        }
    }
}

/// The metadata group's snapshots: its whole state.
pub struct MetaSnapshotBuilder(MetaSnapshot);

impl RaftSnapshotBuilder<TypeConfig> for MetaSnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        let bytes = serde_json::to_vec(&self.0).map_err(sm_error)?;
        let last = self.0.last;
        Ok(Snapshot {
            meta: SnapshotMeta {
                last_log_id: last,
                last_membership: self.0.membership.clone(),
                snapshot_id: format!("meta-{}", last.map_or(0, |l| l.index)),
            },
            snapshot: Box::new(Cursor::new(bytes)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for MetaSm {
    type SnapshotBuilder = MetaSnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, Membership), StorageError<NodeId>> {
        Ok((self.inner.last, self.inner.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Reply>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let mut out = Vec::new();
        for e in entries {
            self.inner.last = Some(e.log_id);
            match e.payload {
                EntryPayload::Normal(Command::Meta(MetaCommand::CommitOffsets {
                    group,
                    offsets,
                })) => {
                    // every node keeps every group's offsets in its own offset store; a
                    // restart applies the commits again from the last saved point, in order,
                    // so the state is not saved for each
                    (self.offsets)(&group, offsets);
                    out.push(Reply::Meta(Ok(())));
                }
                EntryPayload::Normal(Command::Meta(c)) => {
                    let r = Self::change(&mut self.inner.state, &c);
                    *self.shared.write() = self.inner.state.clone();
                    self.save()?;
                    if r.is_ok() {
                        self.effect(Some(c)).await;
                    }
                    out.push(Reply::Meta(r));
                }
                EntryPayload::Normal(Command::Batch(_)) => out.push(Reply::Meta(Err(
                    MetaError::Invalid("a record batch in the metadata group".into()),
                ))),
                EntryPayload::Blank => out.push(Reply::None),
                EntryPayload::Membership(m) => {
                    self.inner.membership = StoredMembership::new(Some(e.log_id), m);
                    self.save()?;
                    out.push(Reply::None);
                }
            }
        }
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        MetaSnapshotBuilder(self.inner.clone())
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<NodeId>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        _meta: &SnapshotMeta<NodeId, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<NodeId>> {
        let s: MetaSnapshot = serde_json::from_slice(snapshot.get_ref()).map_err(sm_error)?;
        self.inner = s;
        *self.shared.write() = self.inner.state.clone();
        self.save()?;
        self.effect(None).await;
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        Ok(Some(
            self.get_snapshot_builder().await.build_snapshot().await?,
        ))
    }
}
