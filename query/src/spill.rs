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
//! end). `floe serve` spills into `<data_dir>/spill`, emptied when it starts: files a killed
//! process left, tenants' rows among them, do not stay.

use std::path::Path;
use std::sync::Arc;

use datafusion::execution::disk_manager::{DiskManager, DiskManagerBuilder, DiskManagerMode};
use floe_catalog::{Error, Result};

/// The process' spill manager: `total` bytes at most in `dir` (the system's temporary
/// directory if `None`); 0 turns spilling off (an operator past its memory fails instead).
pub fn manager(dir: Option<&Path>, total: u64) -> Result<Arc<DiskManager>> {
    let mode = match dir {
        _ if total == 0 => DiskManagerMode::Disabled,
        Some(dir) => DiskManagerMode::Directories(vec![dir.to_path_buf()]),
        None => DiskManagerMode::OsTmpDirectory,
    };
    DiskManagerBuilder::default()
        .with_mode(mode)
        .with_max_temp_directory_size(total)
        .build()
        .map(Arc::new)
        .map_err(|e| Error::Config {
            message: format!("query spill directory: {e}"),
        })
}

/// Empties `dir` of what an earlier process spilled (creating it if missing).
pub fn emptied(dir: &Path) -> Result<()> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(Error::Config {
                message: format!("cannot empty the spill directory {}: {e}", dir.display()),
            });
        }
    }
    std::fs::create_dir_all(dir).map_err(|e| Error::Config {
        message: format!("cannot create the spill directory {}: {e}", dir.display()),
    })
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
        let mut file = spill.create_tmp_file("test").unwrap();
        file.inner().as_file().write_all(&[7; 2000]).unwrap();
        let e = file.update_disk_usage().expect_err("past the total");
        assert!(exceeded(&e.find_root().to_string()), "{e}");
        // The files are in the directory given, and go with their manager.
        assert!(std::fs::read_dir(dir.path()).unwrap().next().is_some());
        drop((file, spill));
        assert!(std::fs::read_dir(dir.path()).unwrap().next().is_none());
    }

    #[test]
    fn a_total_of_nothing_spills_nothing() {
        let spill = manager(None, 0).unwrap();
        assert!(!spill.tmp_files_enabled());
    }

    #[test]
    fn leftovers_are_emptied() {
        let dir = tempfile::tempdir().unwrap();
        let spill = dir.path().join("spill");
        std::fs::create_dir_all(spill.join("datafusion-old")).unwrap();
        std::fs::write(spill.join("datafusion-old/x.arrow"), b"rows").unwrap();
        emptied(&spill).unwrap();
        assert!(spill.is_dir());
        assert!(std::fs::read_dir(&spill).unwrap().next().is_none());
        emptied(&dir.path().join("new")).unwrap();
        assert!(dir.path().join("new").is_dir());
    }
}
