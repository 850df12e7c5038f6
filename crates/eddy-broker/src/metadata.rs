//! Metadata persistence: the format of `metadata.json`, reading it at start, group-committed
//! writes, and the atomic file write (temp file, fsync, rename, fsync of the directory) that
//! `users.json` uses too.
//!
//! `metadata.json` holds every durable exchange (but the default and `amq.*` ones), every
//! durable non-exclusive queue, the bindings between them, and every topic (id, partition
//! count, configs). This file knows how it is stored, not what is in a broker: the broker
//! hands a [`Metadata`] snapshot to [`MetadataWriter::save`] and applies what [`load`] read.
//!
//! Group commit: callers that change metadata while a write is in progress share the next
//! write; each returns once a write that began after its call has completed.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use amq_protocol::types::FieldTable;
use parking_lot::{Condvar, Mutex};
use serde::{Deserialize, Serialize};

use crate::error::{BrokerError, Result};
use crate::exchange::{Binding, ExchangeKind};
use crate::topic::TopicConfig;

/// The file's name in the data directory.
const FILE: &str = "metadata.json";

#[derive(Serialize, Deserialize, Default)]
pub(crate) struct Metadata {
    pub(crate) vhosts: Vec<VHostMeta>,
    #[serde(default)]
    pub(crate) topics: Vec<TopicMeta>,
}

#[derive(Serialize, Deserialize)]
pub(crate) struct TopicMeta {
    pub(crate) name: String,
    pub(crate) id: [u8; 16],
    pub(crate) partitions: usize,
    pub(crate) config: TopicConfig,
}

#[derive(Serialize, Deserialize)]
pub(crate) struct VHostMeta {
    pub(crate) name: String,
    pub(crate) exchanges: Vec<ExchangeMeta>,
    pub(crate) queues: Vec<QueueMeta>,
    pub(crate) bindings: Vec<BindingMeta>,
}

#[derive(Serialize, Deserialize)]
pub(crate) struct ExchangeMeta {
    pub(crate) name: String,
    pub(crate) kind: ExchangeKind,
    pub(crate) durable: bool,
    pub(crate) auto_delete: bool,
    pub(crate) internal: bool,
    pub(crate) arguments: FieldTable,
}

#[derive(Serialize, Deserialize)]
pub(crate) struct QueueMeta {
    pub(crate) name: String,
    pub(crate) auto_delete: bool,
    pub(crate) arguments: FieldTable,
}

#[derive(Serialize, Deserialize)]
pub(crate) struct BindingMeta {
    pub(crate) source: String,
    #[serde(flatten)]
    pub(crate) binding: Binding,
}

/// Read `metadata.json` from `dir` (None: there is none yet).
pub(crate) fn load(dir: &Path) -> Result<Option<Metadata>> {
    let path = dir.join(FILE);
    let text = match std::fs::read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(BrokerError::Internal(format!(
                "cannot read {}: {e}",
                path.display()
            )))
        }
    };
    let meta: Metadata = serde_json::from_slice(&text)
        .map_err(|e| BrokerError::Internal(format!("corrupt {}: {e}", path.display())))?;
    Ok(Some(meta))
}

/// Group commit for metadata: callers that change metadata while a write is in progress share
/// the next write.
#[derive(Default)]
struct MetaSync {
    /// Changes requested so far.
    wanted: u64,
    /// Changes covered by a completed write.
    written: u64,
    writing: bool,
}

/// Writes `metadata.json` (group-committed). Off while the broker loads it.
pub(crate) struct MetadataWriter {
    dir: PathBuf,
    meta: Mutex<MetaSync>,
    meta_written: Condvar,
    loading: AtomicBool,
}

impl MetadataWriter {
    /// A writer for `dir`, off until [`MetadataWriter::loaded`].
    pub(crate) fn new(dir: PathBuf) -> MetadataWriter {
        MetadataWriter {
            dir,
            meta: Mutex::new(MetaSync::default()),
            meta_written: Condvar::new(),
            loading: AtomicBool::new(true),
        }
    }

    /// The broker has applied what was on disk: changes are written from now on.
    pub(crate) fn loaded(&self) {
        self.loading.store(false, Ordering::SeqCst);
    }

    /// Write the metadata `snapshot` returns (atomically: temp file, fsync, rename, fsync of
    /// the directory).
    ///
    /// Returns once a write that started after this call has completed; concurrent callers
    /// share writes. Blocks the calling thread (front ends call it off the async workers).
    pub(crate) fn save(&self, snapshot: impl Fn() -> Metadata) {
        if self.loading.load(Ordering::SeqCst) {
            return;
        }
        let mine = {
            let mut m = self.meta.lock();
            m.wanted += 1;
            m.wanted
        };
        let mut m = self.meta.lock();
        loop {
            if m.written >= mine {
                return;
            }
            if m.writing {
                self.meta_written.wait(&mut m);
                continue;
            }
            m.writing = true;
            let target = m.wanted;
            drop(m);
            /// Clears `writing` even if the write panics, so later callers are not stuck.
            struct Writing<'a>(&'a MetadataWriter);
            impl Drop for Writing<'_> {
                fn drop(&mut self) {
                    self.0.meta.lock().writing = false;
                    self.0.meta_written.notify_all();
                }
            }
            let guard = Writing(self);
            self.write(&snapshot());
            drop(guard);
            m = self.meta.lock();
            m.written = m.written.max(target);
        }
    }

    /// Return once every metadata change made so far is on disk (a declare that finds its
    /// queue already there must not answer before the declare that created it is durable).
    pub(crate) fn barrier(&self, snapshot: impl Fn() -> Metadata) {
        if self.loading.load(Ordering::SeqCst) {
            return;
        }
        let pending = {
            let m = self.meta.lock();
            m.written < m.wanted
        };
        if pending {
            self.save(snapshot);
        }
    }

    fn write(&self, meta: &Metadata) {
        if let Err(e) = write_atomically(
            &self.dir,
            FILE,
            &serde_json::to_vec_pretty(meta).unwrap_or_default(),
        ) {
            tracing::error!("failed to persist metadata: {e}");
        }
    }
}

/// Replace `dir/name` with `data` so that a crash leaves the old or the new content, never a
/// mix: write a temp file, fsync it, rename it over, fsync the directory.
pub(crate) fn write_atomically(dir: &Path, name: &str, data: &[u8]) -> std::io::Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, dir.join(name))?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}
