//! Where queries spill, and how much they may.
//!
//! A sort, an aggregation or a join that reaches its query's memory limit writes what it holds
//! to temporary files and goes on. DataFusion gives each query its own manager of those files,
//! in the system's temporary directory, up to 100 GB: one viewer's `SELECT DISTINCT` over a
//! cross join wrote 22.5 GB there in the 60 s its time limit allowed, and a few such queries
//! fill the disk the write-ahead log is on, for every tenant.
//!
//! Here all queries of a process share one manager: everything they have spilled at once is
//! at most `query.spill_total_bytes`, and the query whose write would pass it fails with
//! `EXCEEDED_SPILL_LIMIT` (its files, and every other query's, are deleted as their operators
//! end). Compaction's rewrites and projections' refreshes spill too (their sorts and
//! aggregations), each run at most `compaction.spill_total_bytes` or
//! `projection.spill_total_bytes`.
//!
//! Every process of a data directory (`floe serve`, `floe compactor`, `floe compact`,
//! `floe projection`) spills into its own directory under `<data_dir>/spill`, locked for as
//! long as the process lives ([`process_dir`]). Each removes, as it starts (`floe serve`,
//! `floe compactor`, `floe compact`) or at its first refresh, the directories whose process is
//! gone: a killed process' files (tenants' rows, some of them perhaps erased since) do not
//! stay, and a running process' files are not taken from it.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use datafusion::execution::disk_manager::{DiskManager, DiskManagerBuilder, DiskManagerMode};
use floe_catalog::{Error, Result};

/// A spill manager: at most `total` bytes, in this process' directory under `root`
/// ([`process_dir`]), or in the system's temporary directory if `None`; 0 turns spilling off
/// (an operator past its memory fails instead), and makes no directory.
pub fn manager(root: Option<&Path>, total: u64) -> Result<Arc<DiskManager>> {
    let mode = match root {
        _ if total == 0 => DiskManagerMode::Disabled,
        Some(root) => DiskManagerMode::Directories(vec![process_dir(root)?]),
        None => DiskManagerMode::OsTmpDirectory,
    };
    DiskManagerBuilder::default()
        .with_mode(mode)
        .with_max_temp_directory_size(total)
        .build()
        .map(Arc::new)
        .map_err(|e| Error::Config {
            message: format!("spill directory: {e}"),
        })
}

/// This process' spill directory under `root`: made, and the directories of processes gone
/// removed, the first time it is asked for; the same directory after that.
pub fn process_dir(root: &Path) -> Result<PathBuf> {
    static OWN: Mutex<Vec<(PathBuf, ProcessDir)>> = Mutex::new(Vec::new());
    let root = std::path::absolute(root).unwrap_or_else(|_| root.to_path_buf());
    let mut own = OWN.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some((_, dir)) = own.iter().find(|(r, _)| *r == root) {
        return Ok(dir.path.clone());
    }
    let dir = ProcessDir::new(&root)?;
    let path = dir.path.clone();
    own.push((root, dir));
    Ok(path)
}

/// Held by a process while it makes its directory or removes others': a lock file is never
/// seen between its creation and its locking.
const MAKING: &str = ".making";

/// How long a process waits for another to finish making its directory or removing others'.
const MAKING_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// A directory `<root>/<name>` beside its lock file `<root>/<name>.lock`, held locked while
/// the directory is in use (the lock goes with the process, however it ends).
struct ProcessDir {
    path: PathBuf,
    _lock: File,
}

impl ProcessDir {
    fn new(root: &Path) -> Result<ProcessDir> {
        let io = |what: &str, path: &Path| {
            let what = format!("{what} {}", path.display());
            move |e: std::io::Error| Error::Config {
                message: format!("spill directory: cannot {what}: {e}"),
            }
        };
        std::fs::create_dir_all(root).map_err(io("create", root))?;
        let making_path = root.join(MAKING);
        let making = File::create(&making_path).map_err(io("create", &making_path))?;
        // Another process removing what stopped processes left holds it for as long as that
        // takes; one that hangs holding it is waited for no longer than this.
        let deadline = std::time::Instant::now() + MAKING_WAIT;
        let serialized = loop {
            match making.try_lock() {
                Ok(()) => break true,
                Err(std::fs::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(std::fs::TryLockError::WouldBlock) => {
                    return Err(io("lock", &making_path)(std::io::Error::other(format!(
                        "another process has held it for {} s; try again",
                        MAKING_WAIT.as_secs()
                    ))));
                }
                // A file system without locks: each process keeps its own directory and
                // leaves the others'.
                Err(std::fs::TryLockError::Error(e)) => {
                    tracing::warn!(path = %making_path.display(), error = %e, "spill directory: locks unavailable; directories of stopped processes are not removed");
                    break false;
                }
            }
        };
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let name = format!("{}-{nanos}", std::process::id());
        // The lock first, then the directory: a directory without its lock file is a
        // leftover.
        let lock_path = root.join(format!("{name}.lock"));
        let lock = File::create(&lock_path).map_err(io("create", &lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(io("lock", &lock_path)(std::io::Error::other(
                    "another process holds it; try again",
                )));
            }
            Err(std::fs::TryLockError::Error(e)) => {
                tracing::warn!(path = %lock_path.display(), error = %e, "spill directory: cannot lock this process' directory");
            }
        }
        // Only while no other process can be between making its lock file and locking it.
        if serialized {
            remove_leftovers(root, &name)?;
        }
        let path = root.join(&name);
        std::fs::create_dir(&path).map_err(io("create", &path))?;
        Ok(ProcessDir { path, _lock: lock })
    }
}

/// Removes from `root` what no living process holds: a directory whose lock file is not
/// locked, with that file; a directory without one; any other file (what `floe serve` spilled
/// straight into `root` before each process had its own directory).
fn remove_leftovers(root: &Path, own: &str) -> Result<()> {
    let gone = |path: &Path, e: std::io::Error| match e.kind() {
        // Removed by another process cleaning up at the same time.
        std::io::ErrorKind::NotFound => Ok(()),
        _ => Err(Error::Config {
            message: format!("spill directory: cannot remove {}: {e}", path.display()),
        }),
    };
    let remove = |path: &Path| {
        let removed = if path.is_dir() {
            std::fs::remove_dir_all(path)
        } else {
            std::fs::remove_file(path)
        };
        removed.or_else(|e| gone(path, e))
    };
    let entries = std::fs::read_dir(root).map_err(|e| Error::Config {
        message: format!("spill directory: cannot list {}: {e}", root.display()),
    })?;
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        match name.strip_suffix(".lock") {
            Some(stem) if stem == own => {}
            Some(stem) => {
                let Ok(lock) = File::options().write(true).open(&path) else {
                    continue;
                };
                // Held: its process lives. Taken: the process is gone, and this one removes
                // what it left while holding its lock.
                if lock.try_lock().is_ok() {
                    remove(&root.join(stem))?;
                    remove(&path)?;
                }
            }
            None if name == own || name == MAKING || root.join(format!("{name}.lock")).exists() => {
            }
            None => remove(&path)?,
        }
    }
    Ok(())
}

/// Whether DataFusion's refusal `message` is its spill manager's, past its size.
pub fn exceeded(message: &str) -> bool {
    message.contains("disk space during the spilling process has exceeded")
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    #[test]
    fn a_write_past_the_total_is_refused_as_a_spill_limit() {
        let dir = tempfile::tempdir().unwrap();
        let spill = manager(Some(dir.path()), 1000).unwrap();
        let own = process_dir(dir.path()).unwrap();
        let mut file = spill.create_tmp_file("test").unwrap();
        file.inner().as_file().write_all(&[7; 2000]).unwrap();
        let e = file.update_disk_usage().expect_err("past the total");
        assert!(exceeded(&e.find_root().to_string()), "{e}");
        // The files are in this process' directory under the one given, and go with their
        // manager.
        assert!(std::fs::read_dir(&own).unwrap().next().is_some());
        drop((file, spill));
        assert!(std::fs::read_dir(&own).unwrap().next().is_none());
        // Nothing spills: no directory is made.
        let elsewhere = dir.path().join("none");
        assert!(!manager(Some(&elsewhere), 0).unwrap().tmp_files_enabled());
        assert!(!elsewhere.exists());
    }

    #[test]
    fn a_total_of_nothing_spills_nothing() {
        let spill = manager(None, 0).unwrap();
        assert!(!spill.tmp_files_enabled());
    }

    /// A killed process' spilled rows do not stay, and a running process' are not taken
    /// from it: each process spills into its own directory, locked while it lives.
    #[test]
    fn the_files_of_processes_gone_are_removed_and_the_living_keep_theirs() {
        let root = tempfile::tempdir().unwrap();
        let root = root.path().join("spill");
        let with_rows = |dir: &Path| {
            std::fs::create_dir_all(dir.join("datafusion-x")).unwrap();
            std::fs::write(dir.join("datafusion-x/sort.arrow"), b"rows").unwrap();
        };
        // What `floe serve` spilled straight into the root before, a process gone (its lock
        // file left unlocked), one that died between its lock file and its directory, and
        // one alive.
        with_rows(&root);
        with_rows(&root.join("11-1"));
        std::fs::write(root.join("11-1.lock"), b"").unwrap();
        std::fs::write(root.join("12-2.lock"), b"").unwrap();
        with_rows(&root.join("13-3"));
        let alive = File::create(root.join("13-3.lock")).unwrap();
        alive.try_lock().unwrap();
        with_rows(&root.join("14-4"));

        let first = ProcessDir::new(&root).unwrap();
        let mut left: Vec<_> = std::fs::read_dir(&root)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        let own = first
            .path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let mut expected = vec![
            "13-3".to_string(),
            "13-3.lock".into(),
            MAKING.into(),
            own.clone(),
        ];
        expected.push(format!("{own}.lock"));
        expected.sort();
        assert_eq!(left, expected);
        assert!(first.path.is_dir());
        assert!(root.join("13-3/datafusion-x/sort.arrow").exists());

        // The living process ends: the next one takes its files away, not the first's.
        drop(alive);
        let second = ProcessDir::new(&root).unwrap();
        assert!(!root.join("13-3").exists() && !root.join("13-3.lock").exists());
        assert!(first.path.is_dir());
        drop(first);
        let third = ProcessDir::new(&root).unwrap();
        assert!(second.path.is_dir() && third.path.is_dir());
        assert!(!root.join(&own).exists());

        // One directory per process and root, the same every time it is asked for.
        let dir = process_dir(&root).unwrap();
        assert_eq!(process_dir(&root).unwrap(), dir);
        assert_eq!(process_dir(&root.join(".")).unwrap(), dir);
        assert!(dir.starts_with(&root) && dir.is_dir());
    }
}
