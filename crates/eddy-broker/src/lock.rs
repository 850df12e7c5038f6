//! One broker per data directory: an exclusive `flock` on `<data_dir>/eddy.lock`, held for
//! the broker's life (the kernel drops it when the process dies, kill -9 included), with the
//! holder's pid written in the file so that a second broker can say who has it.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::path::Path;

use crate::error::{BrokerError, Result};

/// The lock file's name in the data directory.
pub const LOCK_FILE: &str = "eddy.lock";

/// The held lock; dropping it releases the directory.
#[derive(Debug)]
pub(crate) struct DirLock {
    _file: File,
}

impl DirLock {
    /// Take the lock of `dir`, or fail naming the process that holds it.
    pub(crate) fn take(dir: &Path) -> Result<DirLock> {
        let path = dir.join(LOCK_FILE);
        let io = |what: &str, e: std::io::Error| {
            BrokerError::Internal(format!("{what} {}: {e}", path.display()))
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| io("cannot open the lock file", e))?;
        // SAFETY: flock on a descriptor this File owns and keeps open.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(io("cannot lock", e));
            }
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = match holder.trim() {
                "" => "another process".to_owned(),
                pid => format!("another eddy (pid {pid})"),
            };
            return Err(BrokerError::ResourceLocked(format!(
                "data directory {} is in use by {holder}: one broker per data directory (stop it, or give this one another --data-dir)",
                dir.display()
            )));
        }
        file.set_len(0).map_err(|e| io("cannot write", e))?;
        file.rewind().map_err(|e| io("cannot write", e))?;
        writeln!(file, "{}", std::process::id()).map_err(|e| io("cannot write", e))?;
        Ok(DirLock { _file: file })
    }
}
