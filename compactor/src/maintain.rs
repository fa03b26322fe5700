//! Maintenance of whole tables, in this order: retention (drop days older than the tenant's
//! `retention_days` with a `delete` snapshot), compaction, snapshot expiry with garbage
//! collection, orphan files. One run per table holds that table's lease in the catalog
//! database, so several compactors (`floe serve` schedules, `floe compactor` services,
//! `floe compact` one-shots) share the work without doing it twice.
//!
//! Pending user erasures run on a tick of their own (`erasure.rs`), each pass under the leases
//! of the tenant's tables.

use std::time::{Duration, Instant};

use floe_catalog::audit::{Entry, MAINTENANCE_ACTOR};
use floe_catalog::maintenance::{ExpirePolicy, ExpireReport, OrphanReport};
use floe_catalog::metrics as m;
use floe_catalog::rewrite::{ReplaceOutcome, RewriteKind};
use floe_catalog::table::{DLQ_TABLE, EVENTS_TABLE};
use floe_catalog::{Tenant, TenantId};
use iceberg::spec::{Literal, PrimitiveLiteral, Transform};

use crate::{Bin, BinDone, Compactor, Result, Rewritten, TablePlan};

/// What to do in one run.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Report what would happen; change nothing.
    pub dry_run: bool,
}

/// Progress of a run, for a command line or a log.
pub enum Progress<'a> {
    /// Another compactor holds the table.
    Leased {
        tenant: &'a TenantId,
        table: &'a str,
    },
    Retention {
        tenant: &'a TenantId,
        table: &'a str,
        days: i64,
        done: &'a RetentionDone,
    },
    Plan {
        tenant: &'a TenantId,
        table: &'a str,
        plan: &'a TablePlan,
        seconds: f64,
    },
    WouldRewrite {
        bin: &'a Bin,
    },
    /// A bin rewritten, told once its commit is done (`done.committed`).
    Bin {
        index: usize,
        of: usize,
        done: &'a BinDone,
    },
    /// `bins` bins committed in one snapshot (or dropped together), in `seconds`.
    Committed {
        bins: usize,
        committed: bool,
        seconds: f64,
    },
    Expired {
        tenant: &'a TenantId,
        table: &'a str,
        report: &'a ExpireReport,
    },
    Orphans {
        tenant: &'a TenantId,
        table: &'a str,
        report: &'a OrphanReport,
    },
}

/// Files dropped by retention.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RetentionDone {
    pub files: usize,
    pub rows: u64,
    pub bytes: u64,
    /// `false`: the files changed under the commit (the next run tries again).
    pub committed: bool,
}

/// One table's run.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct TableRun {
    /// Live files and bytes per partition before the run.
    pub partitions_before: Vec<crate::PartitionStat>,
    pub files_before: usize,
    pub bytes_before: u64,
    pub files_after: usize,
    pub bytes_after: u64,
    pub retention: RetentionDone,
    pub bins_committed: usize,
    pub bins_dropped: usize,
    /// Compare-and-swaps the bins' commits lost to other writers (ingest, other compactors).
    pub commit_conflicts: u32,
    pub bytes_rewritten: u64,
    pub rewrite_seconds: f64,
    pub expire: ExpireReport,
    pub orphans: OrphanReport,
    pub seconds: f64,
}

/// Totals over a run.
#[derive(Debug, Clone, Default)]
pub struct Totals {
    pub tables: usize,
    pub leased_elsewhere: usize,
    pub runs: Vec<(String, TableRun)>,
}

impl Compactor {
    /// Runs maintenance over `tenants` (all of them when `None`), table by table, each under
    /// its lease held as `holder`.
    pub async fn maintain(
        &self,
        tenants: Option<&[TenantId]>,
        holder: &str,
        options: Options,
        progress: &mut (dyn FnMut(Progress<'_>) + Send),
    ) -> Result<Totals> {
        let mut all = Vec::new();
        for tenant in self.catalog.list_tenants().await? {
            let id = TenantId::parse(&tenant.id)?;
            if tenants.is_none_or(|ts| ts.contains(&id)) {
                all.push((tenant, id));
            }
        }
        // The platform's own audit table is kept like a tenant's (in a run over everything).
        if tenants.is_none() {
            all.push(floe_catalog::audit::platform_namespace());
        }
        let mut totals = Totals::default();
        for (tenant, id) in all {
            for table in self.catalog.list_tables(&id).await? {
                totals.tables += 1;
                let lease = Duration::from_secs(self.config.lease_secs);
                if !options.dry_run && !self.catalog.take_lease(&id, &table, holder, lease).await? {
                    totals.leased_elsewhere += 1;
                    progress(Progress::Leased {
                        tenant: &id,
                        table: &table,
                    });
                    continue;
                }
                let run = self
                    .maintain_table(&tenant, &id, &table, holder, options, progress)
                    .await;
                if !options.dry_run {
                    let result = match &run {
                        Ok(r) => serde_json::json!({ "ok": r }).to_string(),
                        Err(e) => serde_json::json!({ "error": e.to_string() }).to_string(),
                    };
                    if let Err(e) = self
                        .catalog
                        .release_lease(&id, &table, holder, &result)
                        .await
                    {
                        tracing::warn!(tenant = %id, table, error = %e, "could not release a maintenance lease");
                    }
                }
                totals.runs.push((format!("{id}.{table}"), run?));
            }
        }
        Ok(totals)
    }

    async fn maintain_table(
        &self,
        tenant: &Tenant,
        id: &TenantId,
        table: &str,
        holder: &str,
        options: Options,
        progress: &mut (dyn FnMut(Progress<'_>) + Send),
    ) -> Result<TableRun> {
        let lease = Duration::from_secs(self.config.lease_secs);
        let started = Instant::now();
        let mut run = TableRun::default();
        // The audit log is not the tenant's data to age out: its chain must stay whole from its
        // first record.
        if let Some(days) = tenant.retention_days
            && table != floe_catalog::audit::AUDIT_TABLE
        {
            run.retention = self
                .apply_retention(id, table, days, options.dry_run)
                .await?;
            progress(Progress::Retention {
                tenant: id,
                table,
                days,
                done: &run.retention,
            });
        }

        let target = tenant
            .target_file_bytes
            .map(|b| b as u64)
            .unwrap_or(self.config.target_file_bytes);
        let planning = Instant::now();
        let plan = self.plan_table_for(id, table, target).await?;
        progress(Progress::Plan {
            tenant: id,
            table,
            plan: &plan,
            seconds: planning.elapsed().as_secs_f64(),
        });
        (run.files_before, run.bytes_before) = (plan.files, plan.bytes);
        run.partitions_before = plan.partition_stats.clone();
        (run.files_after, run.bytes_after) = (plan.files, plan.bytes);
        let rewrite_started = Instant::now();
        if options.dry_run {
            for bin in &plan.bins {
                progress(Progress::WouldRewrite { bin });
            }
        }
        let bins = if options.dry_run {
            &[][..]
        } else {
            &plan.bins[..]
        };
        let (per_commit, of) = (self.config.bins_per_commit.max(1), bins.len());
        let mut pending = Vec::new();
        for (i, bin) in bins.iter().enumerate() {
            // Renew the lease per bin; if another compactor took the table over (this one
            // stalled past its lease), stop here, its rewrites not committed.
            if !self
                .renew_or_discard(id, table, holder, &mut pending)
                .await?
            {
                return Ok(run);
            }
            let rewritten = match self.rewrite_bin(id, table, bin).await {
                Ok(r) => r,
                Err(e) => {
                    // What is rewritten already is committed before the error is told.
                    if !pending.is_empty() {
                        tracing::warn!(tenant = %id, table, error = %e, "a bin's rewrite failed; committing the bins before it");
                        self.commit_group(id, table, holder, &mut pending, of, &mut run, progress)
                            .await?;
                    }
                    return Err(e);
                }
            };
            metrics::histogram!(m::COMPACTION_REWRITE_SECONDS).record(rewritten.seconds());
            pending.push(rewritten);
            let commit_now = pending.len() == per_commit || i + 1 == of;
            if commit_now
                && !self
                    .commit_group(id, table, holder, &mut pending, of, &mut run, progress)
                    .await?
            {
                return Ok(run);
            }
        }
        run.rewrite_seconds = rewrite_started.elapsed().as_secs_f64();

        if !options.dry_run && !self.catalog.take_lease(id, table, holder, lease).await? {
            tracing::warn!(tenant = %id, table, "lost the maintenance lease; stopping this table");
            return Ok(run);
        }
        let policy = ExpirePolicy {
            max_age: Duration::from_secs(self.config.snapshot_max_age_secs),
            min_snapshots: self.config.min_snapshots,
            keep_from_sequence: None,
        };
        run.expire = self
            .catalog
            .expire_snapshots(id, table, policy, options.dry_run)
            .await?;
        // The tenant's event tables only (a fixed set of names), and only for a tenant with a
        // label of its own: a gauge cannot be summed over the tenants under `_other`.
        let label = m::tenant(id.as_str());
        if !options.dry_run
            && label != m::OTHER_TENANTS
            && [EVENTS_TABLE, DLQ_TABLE].contains(&table)
        {
            metrics::gauge!(m::SNAPSHOTS, "tenant" => label, "table" => table.to_string())
                .set(run.expire.snapshots_kept as f64);
        }
        progress(Progress::Expired {
            tenant: id,
            table,
            report: &run.expire,
        });
        run.orphans = self
            .catalog
            .remove_orphans(
                id,
                table,
                Duration::from_secs(self.config.orphan_min_age_secs),
                options.dry_run,
            )
            .await?;
        progress(Progress::Orphans {
            tenant: id,
            table,
            report: &run.orphans,
        });
        run.seconds = started.elapsed().as_secs_f64();
        Ok(run)
    }

    /// Renews the table's lease; if another compactor took the table over (this one stalled past
    /// its lease) or the lease cannot be read, deletes the `pending` rewrites (never committed)
    /// and says `false` or fails.
    async fn renew_or_discard(
        &self,
        id: &TenantId,
        table: &str,
        holder: &str,
        pending: &mut Vec<Rewritten>,
    ) -> Result<bool> {
        let lease = Duration::from_secs(self.config.lease_secs);
        let held = self.catalog.take_lease(id, table, holder, lease).await;
        if !matches!(held, Ok(true)) {
            if matches!(held, Ok(false)) {
                tracing::warn!(tenant = %id, table, "lost the maintenance lease; stopping this table");
            }
            self.discard(&std::mem::take(pending)).await;
        }
        Ok(held?)
    }

    /// Commits the `pending` bins (rewritten, the next of `of`: `run` has counted those before
    /// them) in one snapshot, under the table's lease renewed first (another compactor's orphan
    /// cleanup may not take them meanwhile), and counts them in `run`. `false`: the lease was
    /// lost, nothing committed.
    #[allow(clippy::too_many_arguments)]
    async fn commit_group(
        &self,
        id: &TenantId,
        table: &str,
        holder: &str,
        pending: &mut Vec<Rewritten>,
        of: usize,
        run: &mut TableRun,
        progress: &mut (dyn FnMut(Progress<'_>) + Send),
    ) -> Result<bool> {
        if !self.renew_or_discard(id, table, holder, pending).await? {
            return Ok(false);
        }
        let first = run.bins_committed + run.bins_dropped + 1;
        let group = std::mem::take(pending);
        let (done, seconds) = self.commit_bins(id, table, group).await?;
        if let Some(d) = done.first() {
            run.commit_conflicts += d.conflicts;
        }
        for (k, done) in done.iter().enumerate() {
            if done.committed {
                for (stage, files, bytes) in [
                    ("input", done.files_in, done.bytes_in),
                    ("output", done.files_out, done.bytes_out),
                ] {
                    metrics::counter!(m::COMPACTION_FILES, "stage" => stage)
                        .increment(files as u64);
                    metrics::counter!(m::COMPACTION_BYTES, "stage" => stage).increment(bytes);
                }
                run.bins_committed += 1;
                run.bytes_rewritten += done.bytes_in;
                run.files_after = run.files_after + done.files_out - done.files_in;
                run.bytes_after = run.bytes_after + done.bytes_out - done.bytes_in;
            } else {
                run.bins_dropped += 1;
            }
            progress(Progress::Bin {
                index: first + k,
                of,
                done,
            });
        }
        // Bins left out of the commit (see `commit_bins`) are told as dropped above.
        let landed = done.iter().filter(|d| d.committed).count();
        progress(Progress::Committed {
            bins: if landed > 0 { landed } else { done.len() },
            committed: landed > 0,
            seconds,
        });
        Ok(true)
    }

    /// Drops the files of days more than `days` before today (UTC) with a `delete` snapshot.
    /// Only tables partitioned by a day transform are touched, whole files at a time.
    pub async fn apply_retention(
        &self,
        tenant: &TenantId,
        table: &str,
        days: i64,
        dry_run: bool,
    ) -> Result<RetentionDone> {
        let t = self.catalog.load_table(tenant, table).await?;
        let spec = t.metadata().default_partition_spec();
        let Some(day_field) = spec
            .fields()
            .iter()
            .position(|f| f.transform == Transform::Day)
        else {
            return Ok(RetentionDone::default());
        };
        let today = chrono::Utc::now().timestamp().div_euclid(86_400);
        let cutoff = today - days;
        let mut done = RetentionDone::default();
        let mut removed = Vec::new();
        for e in self.catalog.live_entries(&t).await? {
            let day = match e.data_file().partition().fields().get(day_field) {
                Some(Some(Literal::Primitive(PrimitiveLiteral::Int(d)))) => *d as i64,
                _ => continue,
            };
            if day < cutoff {
                done.files += 1;
                done.rows += e.record_count();
                done.bytes += e.file_size_in_bytes();
                removed.push(e.file_path().to_string());
            }
        }
        if removed.is_empty() || dry_run {
            return Ok(done);
        }
        // The record goes in with the `delete` snapshot: without it, no day is dropped.
        let detail = serde_json::json!({
            "table": table,
            "days": days,
            "files": done.files,
            "rows": done.rows,
            "bytes": done.bytes,
        });
        let audit = Entry::new(
            MAINTENANCE_ACTOR,
            Some(tenant.as_str()),
            "retention.delete",
            detail.to_string(),
        );
        done.committed = matches!(
            self.catalog
                .commit_rewrite(
                    tenant,
                    table,
                    RewriteKind::Delete,
                    removed,
                    Vec::new(),
                    Some(audit),
                )
                .await?,
            ReplaceOutcome::Committed { .. }
        );
        Ok(done)
    }
}

/// Runs erasures often and full maintenance every `compaction.interval_secs`, until `stop`
/// resolves (the schedule of `floe serve` and the loop of `floe compactor`). A step in
/// progress when `stop` resolves is dropped where it stands: every change it makes is one
/// compare-and-swap, so a table is left as it was or as the step's last commit made it (files
/// written for a commit that never happened are orphans for a later cleanup), and its leases
/// run out.
pub async fn run_schedule(
    compactor: Compactor,
    holder: String,
    stop: impl std::future::Future<Output = ()>,
) {
    let interval = Duration::from_secs(compactor.config.interval_secs);
    let erasure_tick = Duration::from_secs(5)
        .min(interval)
        .max(Duration::from_millis(200));
    // The first full run waits one interval: restarts do not bunch maintenance together.
    let mut last_full = Instant::now();
    tokio::pin!(stop);
    loop {
        let tick = async {
            if let Err(e) = compactor.run_erasures(None, &holder).await {
                tracing::warn!(error = %e, "erasure run failed; retrying on the next tick");
            }
            if interval > Duration::ZERO && last_full.elapsed() >= interval {
                last_full = Instant::now();
                let mut log = |p: Progress<'_>| log_progress(&p);
                match compactor
                    .maintain(None, &holder, Options { dry_run: false }, &mut log)
                    .await
                {
                    Ok(t) => tracing::info!(
                        tables = t.tables,
                        leased_elsewhere = t.leased_elsewhere,
                        "maintenance run done"
                    ),
                    Err(e) => {
                        tracing::warn!(error = %e, "maintenance run failed; retrying on the next interval")
                    }
                }
            }
        };
        tokio::select! {
            _ = &mut stop => return,
            _ = tick => {}
        }
        tokio::select! {
            _ = &mut stop => return,
            _ = tokio::time::sleep(erasure_tick) => {}
        }
    }
}

fn log_progress(p: &Progress<'_>) {
    match p {
        Progress::Bin { done, .. } => tracing::info!(
            partition = %done.partition, files_in = done.files_in, files_out = done.files_out,
            bytes_in = done.bytes_in, committed = done.committed, "compacted a bin"
        ),
        Progress::Retention {
            tenant,
            table,
            days,
            done,
        } if done.files > 0 => tracing::info!(
            %tenant, table, days, files = done.files, rows = done.rows, "retention dropped old days"
        ),
        Progress::Expired {
            tenant,
            table,
            report,
        } if report.snapshots_expired > 0 => {
            tracing::info!(%tenant, table, expired = report.snapshots_expired,
                files_deleted = report.files_deleted, "expired snapshots")
        }
        Progress::Orphans {
            tenant,
            table,
            report,
        } if report.orphans_deleted > 0 => {
            tracing::info!(%tenant, table, deleted = report.orphans_deleted, "removed orphan files")
        }
        _ => {}
    }
}
