//! Bins rewritten and committed: a bin's new files are written apart from the table, then
//! one `replace` snapshot swaps the inputs of a group of bins for them (all or none).

use std::time::Instant;

use floe_catalog::TenantId;
use floe_catalog::rewrite::ReplaceOutcome;
use iceberg::spec::DataFile;

use crate::{Bin, Compactor, Error, Result, partition_text};

/// A bin rewritten, its new files not yet committed.
#[derive(Debug)]
pub struct Rewritten {
    /// `ts_day=…`.
    partition: String,
    /// The paths of the files it replaces.
    removed: Vec<String>,
    bytes_in: u64,
    rows: u64,
    written: Vec<DataFile>,
    seconds: f64,
}

impl Rewritten {
    /// Reading, sorting and writing the bin.
    pub fn seconds(&self) -> f64 {
        self.seconds
    }

    /// Where its new files are.
    pub fn written_paths(&self) -> Vec<String> {
        self.written
            .iter()
            .map(|f| f.file_path().to_string())
            .collect()
    }
}

/// The result of one bin.
#[derive(Debug, Clone)]
pub struct BinDone {
    pub partition: String,
    pub files_in: usize,
    pub bytes_in: u64,
    pub files_out: usize,
    pub bytes_out: u64,
    pub rows: u64,
    /// Reading, sorting and writing the bin (its commit is timed apart: it may take other bins).
    pub seconds: f64,
    /// `false`: the inputs changed under the rewrite, or other commits kept winning, or its new
    /// files did not hold its rows (nothing committed, new files deleted; a later pass tries
    /// again).
    pub committed: bool,
    /// Compare-and-swaps the bin's commit lost to other writers.
    pub conflicts: u32,
}

impl Compactor {
    /// Rewrites `bin` and commits it on its own (`Ok(committed = false)` when its inputs changed
    /// meanwhile): [`Compactor::rewrite_bin`] then
    /// [`Compactor::commit_bins`] of the one bin.
    pub async fn run_bin(&self, tenant: &TenantId, table: &str, bin: &Bin) -> Result<BinDone> {
        let rewritten = self.rewrite_bin(tenant, table, bin).await?;
        let (mut done, _) = self.commit_bins(tenant, table, vec![rewritten]).await?;
        done.pop()
            .ok_or_else(|| Error::Invalid("a commit of one bin reported none".into()))
    }

    /// Rewrites `bin` into new files of its partition, not yet part of the table: commit them
    /// with [`Compactor::commit_bins`] (or delete them with [`Compactor::discard`]).
    pub async fn rewrite_bin(
        &self,
        tenant: &TenantId,
        table: &str,
        bin: &Bin,
    ) -> Result<Rewritten> {
        let started = Instant::now();
        let t = self.catalog.load_table(tenant, table).await?;
        let written = self
            .rewrite(&t, &bin.partition, &bin.files, bin.target, None)
            .await?;
        Ok(Rewritten {
            partition: partition_text(&t, &bin.partition),
            removed: bin.files.iter().map(|f| f.path.clone()).collect(),
            bytes_in: bin.bytes(),
            rows: bin.rows(),
            written,
            seconds: started.elapsed().as_secs_f64(),
        })
    }

    /// Replaces the inputs of `bins` with their new files in one `replace` snapshot: all of
    /// them or none. A commit writes one manifest naming every live file of the table
    /// (`floe_catalog::rewrite`), so bins committed together write it once instead of once
    /// each. Not committed (inputs gone, or other commits kept winning), their new files are
    /// deleted; failed, see [`crate::after_failed_commit`]. A bin whose new files do not hold
    /// as many rows as its inputs (a bug in its rewrite) is left out, its new files deleted and
    /// its inputs left live, and the others go on. Returns each bin's result and the commit's
    /// seconds.
    pub async fn commit_bins(
        &self,
        tenant: &TenantId,
        table: &str,
        bins: Vec<Rewritten>,
    ) -> Result<(Vec<BinDone>, f64)> {
        let started = Instant::now();
        let (mut done, mut removed, mut written) = (Vec::new(), Vec::new(), Vec::new());
        let mut wrong = Vec::new();
        for b in bins {
            let rows_out: u64 = b.written.iter().map(DataFile::record_count).sum();
            let holds_rows = rows_out == b.rows;
            if !holds_rows {
                tracing::error!(%tenant, table, partition = %b.partition, rows_in = b.rows, rows_out,
                    "a rewritten bin does not hold its inputs' rows (a bug); left out of the commit, its inputs kept");
                wrong.extend(b.written.iter().map(|f| f.file_path().to_string()));
            }
            done.push(BinDone {
                files_in: b.removed.len(),
                bytes_in: b.bytes_in,
                files_out: b.written.len(),
                bytes_out: b.written.iter().map(DataFile::file_size_in_bytes).sum(),
                rows: b.rows,
                seconds: b.seconds,
                partition: b.partition,
                committed: holds_rows,
                conflicts: 0,
            });
            if holds_rows {
                removed.extend(b.removed);
                written.extend(b.written);
            }
        }
        self.delete(&wrong).await;
        if written.is_empty() && removed.is_empty() {
            return Ok((done, started.elapsed().as_secs_f64()));
        }
        let paths: Vec<String> = written.iter().map(|f| f.file_path().to_string()).collect();
        let bins = done.iter().filter(|d| d.committed).count();
        let outcome = self
            .catalog
            .commit_replace(tenant, table, removed, written)
            .await;
        let (committed, conflicts) = match outcome {
            Ok(ReplaceOutcome::Committed { conflicts, .. }) => (true, conflicts),
            Ok(ReplaceOutcome::InputsGone { missing }) => {
                tracing::info!(%tenant, table, bins, missing = missing.len(), "inputs changed; bins dropped");
                (false, 0)
            }
            Ok(ReplaceOutcome::KeptLosing { conflicts }) => {
                tracing::warn!(%tenant, table, bins, conflicts, "other commits kept winning; bins dropped");
                (false, conflicts)
            }
            Err(e) => {
                crate::after_failed_commit(&self.catalog, tenant, table, &paths, &e).await;
                return Err(e.into());
            }
        };
        if !committed {
            self.delete(&paths).await;
        }
        for d in &mut done {
            d.committed &= committed;
            d.conflicts = conflicts;
        }
        Ok((done, started.elapsed().as_secs_f64()))
    }

    /// Deletes the new files of bins that will not be committed.
    pub async fn discard(&self, bins: &[Rewritten]) {
        let paths: Vec<String> = bins.iter().flat_map(Rewritten::written_paths).collect();
        self.delete(&paths).await;
    }

    pub(crate) async fn delete(&self, paths: &[String]) {
        crate::delete_uncommitted(&self.catalog, paths).await;
    }
}
