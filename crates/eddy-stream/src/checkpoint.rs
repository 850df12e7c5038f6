//! Epoch-based checkpoints: the protocol, and the files it keeps (the runner, `runner.rs`,
//! drives operators through it).
//!
//! Timely's timestamp is the checkpoint epoch. Sources read in epoch `e` until the checkpoint
//! interval passes, save their position for `e` and move on to `e + 1`. Every stateful
//! operator holds a capability for the epoch it is working on; it applies records of that
//! epoch only (later ones wait), and when its input frontier passes the epoch it saves its
//! state for it, then moves on. So once the sinks' frontier (the probe) has passed `e` on a
//! worker, every operator on every worker has saved its state for `e`: the worker then writes
//! its marker `complete.w<i>` = `e`, and only then do its exactly-once sinks commit what they
//! hold for epochs up to `e`. `execute` restores from the largest marker of any worker; an
//! operator restores the latest state it saved at or before that epoch (an operator that saw
//! no records of an epoch saved nothing for it, and its earlier state is its state then).
//!
//! Files, under `<checkpoint dir>/<job>/`: `meta` (the number of workers), `complete.w<i>`,
//! `done.w<i>` (written when the job has finished and worker `i` committed everything), and
//! `w<i>/op<n>/<epoch>` (one operator's state, bincode). Every file is written to a temporary
//! name, fsynced, renamed and its directory fsynced. When every worker is done, the job's
//! checkpoints are deleted, so running a finished job again starts from the beginning.

use std::cell::Cell;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::StreamError;

/// The epoch a finished job's last state is saved under.
pub(crate) const FINAL: u64 = u64::MAX;

/// Called with each epoch that completes (exactly-once sinks commit it, queue sources
/// acknowledge what it read).
pub(crate) type CommitHook = Box<dyn FnMut(u64)>;

/// One worker's view of the job's checkpoints.
pub(crate) struct Checkpoints {
    dir: Option<PathBuf>,
    worker: usize,
    pub(crate) interval: Duration,
    /// The epoch restored from (None: a fresh start).
    pub(crate) restored: Option<u64>,
    next_op: Cell<usize>,
    /// The latest epoch this worker marked complete.
    complete: Cell<Option<u64>>,
}

fn io_err(what: &str, path: &Path, e: std::io::Error) -> StreamError {
    StreamError::Checkpoint(format!("{what} {}: {e}", path.display()))
}

/// Write `bytes` to `path` durably (temporary file, fsync, rename, fsync of the directory).
fn write_durably(path: &Path, bytes: &[u8]) -> Result<(), StreamError> {
    let dir = path.parent().expect("checkpoint files live in a directory");
    fs::create_dir_all(dir).map_err(|e| io_err("cannot create", dir, e))?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut f = fs::File::create(&tmp).map_err(|e| io_err("cannot create", &tmp, e))?;
    f.write_all(bytes)
        .map_err(|e| io_err("cannot write", &tmp, e))?;
    f.sync_all().map_err(|e| io_err("cannot fsync", &tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| io_err("cannot rename to", path, e))?;
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_err("cannot fsync", dir, e))
}

fn read_u64(path: &Path) -> Option<u64> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Job names become directory names: keep them to a safe alphabet.
pub(crate) fn dir_name(job: &str) -> String {
    job.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

impl Checkpoints {
    /// Checkpoints switched off.
    pub(crate) fn off(worker: usize) -> Checkpoints {
        Checkpoints {
            dir: None,
            worker,
            interval: Duration::MAX,
            restored: None,
            next_op: Cell::new(0),
            complete: Cell::new(None),
        }
    }

    /// Open `root/<job>` for worker `worker` of `peers`: find the epoch to restore from.
    pub(crate) fn open(
        root: &Path,
        job: &str,
        worker: usize,
        peers: usize,
        interval: Duration,
    ) -> Result<Checkpoints, StreamError> {
        let dir = root.join(dir_name(job));
        let meta = dir.join("meta");
        let mut restored = None;
        if let Ok(entries) = fs::read_dir(&dir) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with("complete.w") && !name.ends_with(".tmp") {
                    if let Some(epoch) = read_u64(&e.path()) {
                        restored = restored.max(Some(epoch));
                    }
                }
            }
        }
        match read_u64(&meta) {
            Some(n) if restored.is_some() && n as usize != peers => {
                return Err(StreamError::Checkpoint(format!(
                    "the checkpoint in {} was taken with {n} workers; restart the job with {n} \
                     workers in all (or delete the directory to start over)",
                    dir.display()
                )))
            }
            _ => {}
        }
        if worker == 0 {
            write_durably(&meta, peers.to_string().as_bytes())?;
        }
        // what an earlier run left beyond the restored epoch (a run killed before its first
        // marker, saves after a failure) must not be restored later: this worker's own files
        let own = dir.join(format!("w{worker}"));
        if let Ok(ops) = fs::read_dir(&own) {
            for op in ops.flatten() {
                for f in fs::read_dir(op.path()).into_iter().flatten().flatten() {
                    let name = f.file_name().to_string_lossy().into_owned();
                    let stale = match name.parse::<u64>() {
                        Ok(e) => restored.is_none_or(|r| e > r),
                        Err(_) => true, // temporary files
                    };
                    if stale {
                        fs::remove_file(f.path())
                            .map_err(|e| io_err("cannot remove", &f.path(), e))?;
                    }
                }
            }
        }
        let done = dir.join(format!("done.w{worker}"));
        if done.exists() {
            fs::remove_file(&done).map_err(|e| io_err("cannot remove", &done, e))?;
        }
        if let Some(e) = restored {
            tracing::info!(job, worker, epoch = e, "resuming from checkpoint");
        }
        Ok(Checkpoints {
            dir: Some(dir),
            worker,
            interval,
            restored,
            next_op: Cell::new(0),
            complete: Cell::new(restored),
        })
    }

    pub(crate) fn enabled(&self) -> bool {
        self.dir.is_some()
    }

    /// The epoch work starts in: 0, or the one after the restored checkpoint; None when the
    /// restored checkpoint is a finished job's final one.
    pub(crate) fn start_epoch(&self) -> Option<u64> {
        match self.restored {
            None => Some(0),
            Some(FINAL) => None,
            Some(e) => Some(e + 1),
        }
    }

    /// A slot for the next stateful operator (numbered in the order the job builds them, the
    /// same on every run of the same job).
    pub(crate) fn slot(self: &Rc<Self>, name: &str) -> Slot {
        let id = self.next_op.get();
        self.next_op.set(id + 1);
        Slot {
            cp: self.clone(),
            id,
            name: name.to_owned(),
        }
    }

    /// Mark `epoch` complete for this worker (durably).
    pub(crate) fn mark_complete(&self, epoch: u64) -> Result<(), StreamError> {
        let Some(dir) = &self.dir else { return Ok(()) };
        write_durably(
            &dir.join(format!("complete.w{}", self.worker)),
            epoch.to_string().as_bytes(),
        )?;
        self.complete.set(Some(epoch));
        Ok(())
    }

    /// After the job finished and this worker committed everything: note it, and when every
    /// worker has, delete the job's checkpoints.
    pub(crate) fn finish(&self, peers: usize) -> Result<(), StreamError> {
        let Some(dir) = &self.dir else { return Ok(()) };
        if let Err(e) = write_durably(&dir.join(format!("done.w{}", self.worker)), b"done") {
            // gone: the last worker to finish already deleted it, so every worker was done
            if dir.exists() {
                return Err(e);
            }
            return Ok(());
        }
        let all = (0..peers).all(|w| dir.join(format!("done.w{w}")).exists());
        if all {
            // another worker may see the same: whoever renames the directory away deletes it
            // (a half-deleted directory is never mistaken for a checkpoint)
            let mut gone = dir.as_os_str().to_owned();
            gone.push(format!(".deleting-{}-{}", std::process::id(), self.worker));
            let gone = PathBuf::from(gone);
            if fs::rename(dir, &gone).is_ok() {
                let _ = fs::remove_dir_all(&gone);
            }
        }
        Ok(())
    }

    fn op_dir(&self, id: usize) -> Option<PathBuf> {
        self.op_dir_of(self.worker, id)
    }

    fn op_dir_of(&self, worker: usize, id: usize) -> Option<PathBuf> {
        self.dir
            .as_ref()
            .map(|d| d.join(format!("w{worker}")).join(format!("op{id}")))
    }
}

/// Where one stateful operator saves its state.
pub(crate) struct Slot {
    cp: Rc<Checkpoints>,
    id: usize,
    name: String,
}

impl Slot {
    pub(crate) fn start_epoch(&self) -> Option<u64> {
        self.cp.start_epoch()
    }

    pub(crate) fn interval(&self) -> Duration {
        self.cp.interval
    }

    pub(crate) fn enabled(&self) -> bool {
        self.cp.enabled()
    }

    /// Saved epochs of this operator, ascending.
    fn saved(&self) -> Vec<(u64, PathBuf)> {
        self.saved_by(self.cp.worker)
    }

    /// Saved epochs of this operator on worker `worker`, ascending.
    fn saved_by(&self, worker: usize) -> Vec<(u64, PathBuf)> {
        let Some(dir) = self.cp.op_dir_of(worker, self.id) else {
            return Vec::new();
        };
        let mut v: Vec<(u64, PathBuf)> = fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let n = e.file_name().to_string_lossy().parse::<u64>().ok()?;
                Some((n, e.path()))
            })
            .collect();
        v.sort();
        v
    }

    /// The state to resume with: the latest saved at or before the restored epoch.
    pub(crate) fn restore<S: DeserializeOwned>(&self) -> Result<Option<S>, StreamError> {
        self.restore_of(self.cp.worker)
    }

    /// What the same operator on every other worker of `peers` resumes with (for state that
    /// the workers share, like the ids of messages a queue may redeliver to any of them).
    /// Workers whose files this process cannot see (another machine without a shared
    /// checkpoint directory) are missing from it.
    pub(crate) fn restore_peers<S: DeserializeOwned>(
        &self,
        peers: usize,
    ) -> Result<Vec<S>, StreamError> {
        let mut all = Vec::new();
        for w in (0..peers).filter(|w| *w != self.cp.worker) {
            all.extend(self.restore_of(w)?);
        }
        Ok(all)
    }

    fn restore_of<S: DeserializeOwned>(&self, worker: usize) -> Result<Option<S>, StreamError> {
        let Some(r) = self.cp.restored else {
            return Ok(None);
        };
        let Some((_, path)) = self
            .saved_by(worker)
            .into_iter()
            .rev()
            .find(|(e, _)| *e <= r)
        else {
            return Ok(None);
        };
        let bytes = fs::read(&path).map_err(|e| io_err("cannot read", &path, e))?;
        bincode::deserialize(&bytes).map(Some).map_err(|e| {
            StreamError::Checkpoint(format!(
                "the state of operator {} ({}) in {} does not fit this job (was the job changed \
                 since the checkpoint?): {e}",
                self.id,
                self.name,
                path.display()
            ))
        })
    }

    /// Save the state as of the end of `epoch`, and delete what no restore can need any more.
    pub(crate) fn save<S: Serialize>(&self, epoch: u64, state: &S) -> Result<(), StreamError> {
        let Some(dir) = self.cp.op_dir(self.id) else {
            return Ok(());
        };
        let bytes = bincode::serialize(state).map_err(|e| {
            StreamError::Checkpoint(format!("cannot encode the state of {}: {e}", self.name))
        })?;
        write_durably(&dir.join(format!("{epoch:020}")), &bytes)?;
        // a restore uses an epoch at or after this worker's latest complete one, so it needs
        // the latest state at or before that, and nothing older
        if let Some(c) = self.cp.complete.get() {
            let saved = self.saved();
            if let Some(keep) = saved.iter().rev().find(|(e, _)| *e <= c).map(|(e, _)| *e) {
                for (e, path) in saved {
                    if e < keep {
                        let _ = fs::remove_file(path);
                    }
                }
            }
        }
        Ok(())
    }
}
