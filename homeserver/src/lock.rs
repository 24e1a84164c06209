//! One process per data directory. The embedded database's in-memory caches
//! (stream positions, tokens, memberships) assume this process is its only
//! writer, so a second process on the same directory would corrupt what the
//! first serves. An exclusive lock on `<data_dir>/lock`, held for the life of
//! the process, refuses it; the kernel drops the lock when the process exits,
//! however it exits.

use std::{
    fs::{File, OpenOptions, TryLockError},
    io::{Read, Seek, SeekFrom, Write},
    path::{Path, PathBuf},
    time::Duration,
};

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "data directory {dir} is in use by another Hearth process (pid {pid}); \
         stop it first (only one process may use an embedded database)"
    )]
    Held { dir: PathBuf, pid: String },
    #[error("locking data directory {dir}: {source}")]
    Io {
        dir: PathBuf,
        source: std::io::Error,
    },
}

/// Held while the process runs; dropping it (or exiting) frees the directory.
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
}

/// Takes the data directory's lock and writes this process's pid into it.
pub fn acquire(dir: &Path) -> Result<DataDirLock, LockError> {
    let io = |source| LockError::Io {
        dir: dir.to_owned(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(io)?;
    // Not truncated on open: the file may belong to a running process whose
    // pid the refusal reports.
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(dir.join("lock"))
        .map_err(io)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            return Err(LockError::Held {
                dir: dir.to_owned(),
                pid: holder_pid(&mut file),
            });
        }
        Err(TryLockError::Error(e)) => return Err(io(e)),
    }
    file.set_len(0).map_err(io)?;
    file.seek(SeekFrom::Start(0)).map_err(io)?;
    writeln!(file, "{}", std::process::id()).map_err(io)?;
    file.sync_all().map_err(io)?;
    Ok(DataDirLock { _file: file })
}

/// The pid the holder wrote. It writes just after locking, so an empty file
/// is read again for a moment before giving up.
fn holder_pid(file: &mut File) -> String {
    for _ in 0..20 {
        let mut text = String::new();
        if file.seek(SeekFrom::Start(0)).is_ok() && file.read_to_string(&mut text).is_ok() {
            let pid = text.trim();
            if !pid.is_empty() {
                return pid.to_owned();
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    "unknown".to_owned()
}
