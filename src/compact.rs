//! `floe compact` (one maintenance pass, with progress), `floe compact --status`, and
//! `floe compactor` (the same on a schedule, as a service).

use anyhow::bail;
use floe_catalog::lease::holder_name;
use floe_catalog::{Catalog, Config, TenantId};

use crate::progress::Progress as Bar;
use crate::serve::Stop;

/// `floe compact --status`: each table's lease holder and its last maintenance run.
pub async fn status(config: &Config, tenant: Option<&str>) -> anyhow::Result<()> {
    let catalog = Catalog::open(config).await?;
    let now = chrono::Utc::now().timestamp_millis();
    for r in catalog.maintenance_records().await? {
        if tenant.is_some_and(|t| t != r.tenant) {
            continue;
        }
        let held = match &r.holder {
            Some(h) if r.lease_until_ms > now => format!("held by {h}"),
            _ => "free".to_string(),
        };
        let last = r.last_run_at_ms.map_or("never".to_string(), |at| {
            format!("{:.0} s ago", (now - at) as f64 / 1000.0)
        });
        println!(
            "{}.{}\t{held}\tlast run {last}\t{}",
            r.tenant,
            r.table,
            r.last_result.unwrap_or_default()
        );
    }
    Ok(())
}

/// `floe compactor`: maintenance on a schedule until SIGTERM or Ctrl-C.
pub async fn service(config: &Config) -> anyhow::Result<()> {
    if config.compaction.interval_secs == 0 {
        bail!(
            "compaction.interval_secs is 0 (schedule off): set it above 0 for `floe compactor`, \
             or run `floe compact` once"
        );
    }
    let stop = Stop::on_signals();
    let catalog = Catalog::open(config).await?;
    let mut compactor = floe_compactor::Compactor::new(catalog.clone(), config.compaction.clone())
        .spilling_into(config.spill_dir())?;
    let mut refreshing = tokio::task::JoinSet::new();
    let refresher = refresher(&catalog, config);
    let lag = refresher
        .clone()
        .map(|r| std::sync::Arc::new(move || r.lag_gauges()) as crate::metrics::Refresh);
    if let Err(e) = crate::metrics::serve(&config.metrics, stop.clone(), lag).await {
        catalog.close(crate::serve::CLOSE_GRACE).await;
        return Err(e);
    }
    if let Some(refresher) = refresher {
        // Projections of every tenant, whoever commits to its events (a shared catalog): the
        // poll finds the commits, refresh leases keep this process and the committing ones
        // from refreshing one projection at once.
        refreshing.spawn(refresher.clone().run(stop.clone().wait()));
        refreshing.spawn(refresher.clone().poll(stop.clone().wait()));
        compactor = compactor.with_projections(refresher);
    }
    let holder = holder_name("compactor");
    tracing::info!(%holder, interval_secs = config.compaction.interval_secs, "compactor running");
    floe_compactor::maintain::run_schedule(compactor, holder, stop.wait()).await;
    refreshing.join_all().await;
    catalog.close(crate::serve::CLOSE_GRACE).await;
    Ok(())
}

/// The projection refresher, unless `projection.enabled` is off.
fn refresher(catalog: &Catalog, config: &Config) -> Option<floe_compactor::projection::Refresher> {
    config
        .projection
        .enabled
        .then(|| floe_compactor::projection::Refresher::new(catalog.clone(), config))
}

/// The compactor, refreshing projections during erasures unless `projection.enabled` is off.
fn with_projections(
    compactor: floe_compactor::Compactor,
    catalog: &Catalog,
    config: &Config,
) -> floe_compactor::Compactor {
    match refresher(catalog, config) {
        Some(r) => compactor.with_projections(r),
        None => compactor,
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
}

/// `floe compact`: one pass over the tenants' tables, a line per rewritten bin, then totals.
/// `floe backfill --tenant T --promote COLUMN`.
pub async fn backfill(config: &Config, tenant: &str, column: &str) -> anyhow::Result<()> {
    let catalog = Catalog::open(config).await?;
    let tenant = TenantId::parse(tenant)?;
    if !catalog.tenant_exists(&tenant).await? {
        bail!("tenant {tenant} does not exist");
    }
    let compactor = floe_compactor::Compactor::new(catalog, config.compaction.clone())
        .spilling_into(config.spill_dir())?;
    // A bin whose files changed meanwhile (a compaction, an erasure) is left; a next pass
    // finds its files again.
    let mut done = compactor.backfill_promoted(&tenant, column).await?;
    for _ in 0..2 {
        if done.bins_left == 0 {
            break;
        }
        let next = compactor.backfill_promoted(&tenant, column).await?;
        done.files_in += next.files_in;
        done.files_out += next.files_out;
        done.rows += next.rows;
        done.bins_left = next.bins_left;
    }
    println!(
        "{tenant}.events: {column} filled in {} files ({} rows), written as {} files{}",
        done.files_in,
        done.rows,
        done.files_out,
        match done.bins_left {
            0 => String::new(),
            n => format!("; {n} bins kept changing: run it again to finish them"),
        }
    );
    if done.bins_left > 0 {
        std::process::exit(3);
    }
    Ok(())
}

pub async fn once(config: &Config, tenant: Option<&str>, dry_run: bool) -> anyhow::Result<()> {
    use floe_compactor::maintain::{Options, Progress};
    let catalog = Catalog::open(config).await?;
    let tenants = match tenant {
        Some(t) => {
            let t = TenantId::parse(t)?;
            if !catalog.tenant_exists(&t).await? {
                bail!("tenant {t} does not exist");
            }
            Some(vec![t])
        }
        None => None,
    };
    let compactor = with_projections(
        floe_compactor::Compactor::new(catalog.clone(), config.compaction.clone())
            .spilling_into(config.spill_dir())?,
        &catalog,
        config,
    );
    let holder = holder_name("compact");
    let started = std::time::Instant::now();
    if !dry_run {
        let erased = compactor.run_erasures(tenants.as_deref(), &holder).await?;
        if erased > 0 {
            println!("{erased} erasure requests completed and verified");
        }
    }
    let bar = Bar::new("compact", 0);
    let mut print = |p: Progress<'_>| match p {
        Progress::Leased { tenant, table } => bar.line(format!(
            "{tenant}.{table}: skipped, another compactor holds it"
        )),
        Progress::Retention {
            tenant,
            table,
            days,
            done,
        } => {
            if done.files > 0 {
                bar.line(format!(
                    "{tenant}.{table}: retention {days} days: {} {} files ({}, {} rows){}",
                    if dry_run { "would drop" } else { "dropped" },
                    done.files,
                    mib(done.bytes),
                    done.rows,
                    if dry_run || done.committed {
                        ""
                    } else {
                        " (not committed: files changed; next run)"
                    }
                ))
            }
        }
        Progress::Plan {
            tenant,
            table,
            plan,
            seconds,
        } => {
            bar.grow(plan.bins.len() as u64);
            bar.status(format!("{tenant}.{table}"));
            let in_bins: usize = plan.bins.iter().map(|b| b.files.len()).sum();
            let bytes_in_bins: u64 = plan.bins.iter().map(|b| b.bytes()).sum();
            bar.line(format!(
                "{tenant}.{table}: {} files ({}) in {} partitions; {} bins of {in_bins} files ({}) to rewrite ({seconds:.1} s to plan)",
                plan.files,
                mib(plan.bytes),
                plan.partitions,
                plan.bins.len(),
                mib(bytes_in_bins)
            ));
        }
        Progress::WouldRewrite { bin } => bar.line(format!(
            "  would rewrite {} files ({}, {} rows)",
            bin.files.len(),
            mib(bin.bytes()),
            bin.rows()
        )),
        Progress::Bin { index, of, done: r } => {
            bar.advance(1);
            bar.line(format!(
            "  [{index}/{of}] {}: {} files ({}) -> {} files ({}), {} rows, {:.1} s, {:.1} MB/s{}",
            r.partition,
            r.files_in,
            mib(r.bytes_in),
            r.files_out,
            mib(r.bytes_out),
            r.rows,
            r.seconds,
            r.bytes_in as f64 / 1e6 / r.seconds.max(1e-9),
            if r.committed {
                ""
            } else {
                " (not committed: inputs changed, table too busy, or its files lacked rows)"
            }
        ));
        }
        Progress::Committed {
            bins,
            committed,
            seconds,
        } => {
            let bins = format!("{bins} {}", if bins == 1 { "bin" } else { "bins" });
            bar.line(if committed {
                format!("  committed {bins} in one snapshot ({seconds:.1} s)")
            } else {
                format!("  dropped {bins}, nothing committed ({seconds:.1} s)")
            })
        }
        Progress::Expired {
            tenant,
            table,
            report,
        } => bar.line(format!(
            "{tenant}.{table}: {} {} snapshots (kept {}); {} {} unreachable files ({} of data); \
             read {} manifest lists and {} manifests; {:.1} s",
            if dry_run { "would expire" } else { "expired" },
            report.snapshots_expired,
            report.snapshots_kept,
            if dry_run { "would delete" } else { "deleted" },
            report.files_deleted,
            mib(report.data_bytes_deleted),
            report.manifest_lists_read,
            report.manifests_read,
            report.seconds
        )),
        Progress::Orphans {
            tenant,
            table,
            report,
        } => {
            bar.line(format!(
                "{tenant}.{table}: {} objects listed; {} {} orphans ({}); {} younger than the safety age kept",
                report.listed,
                if dry_run { "would delete" } else { "deleted" },
                report.orphans_deleted,
                mib(report.bytes_deleted),
                report.orphans_too_young
            ));
            if dry_run {
                for o in &report.deleted {
                    bar.line(format!("  orphan: {o}"));
                }
            }
        }
    };
    let totals = compactor
        .maintain(tenants.as_deref(), &holder, Options { dry_run }, &mut print)
        .await?;
    bar.finish();
    let sum = |f: fn(&floe_compactor::maintain::TableRun) -> u64| -> u64 {
        totals.runs.iter().map(|(_, r)| f(r)).sum()
    };
    let (files_before, bytes_before) = (sum(|r| r.files_before as u64), sum(|r| r.bytes_before));
    if dry_run {
        println!(
            "dry run: {files_before} files ({}); nothing changed",
            mib(bytes_before)
        );
    } else {
        println!(
            "compacted: {files_before} files ({}) -> {} files ({}); {} bins committed, {} dropped; {} rewritten; {} snapshots expired, {} files deleted, {} orphans deleted; {} tables held elsewhere; {:.1} s",
            mib(bytes_before),
            sum(|r| r.files_after as u64),
            mib(sum(|r| r.bytes_after)),
            sum(|r| r.bins_committed as u64),
            sum(|r| r.bins_dropped as u64),
            mib(sum(|r| r.bytes_rewritten)),
            sum(|r| r.expire.snapshots_expired as u64),
            sum(|r| r.expire.files_deleted as u64),
            sum(|r| r.orphans.orphans_deleted as u64),
            totals.leased_elsewhere,
            started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}
