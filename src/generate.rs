//! `floe gen`: synthetic events sent to a running Floe, with events/s and time-to-visible.

mod loadgen;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::bail;
use floe_catalog::{Catalog, Config, Role, TenantId, TokenAuthority};
use loadgen::{Format, GenOptions};

use crate::cli::{GenArgs, GenFormat};
use crate::progress::Progress;

pub async fn run(config: &Config, args: &GenArgs) -> anyhow::Result<()> {
    let catalog = Catalog::open(config).await?;
    let authority = TokenAuthority::load_or_create(&config.signing_key_path())?;
    let mut tenants = Vec::new();
    for t in args
        .tenants
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
    {
        let id = TenantId::parse(t)?;
        if !catalog.tenant_exists(&id).await? {
            catalog.create_tenant(&id, "gen").await?;
        }
        let token = authority.issue(&id, Role::Ingest, Duration::from_secs(24 * 3600))?;
        tenants.push((id.to_string(), token));
    }
    if tenants.is_empty() {
        bail!("--tenants names no tenant");
    }
    let sent = Arc::new(AtomicU64::new(0));
    let total = (args.events * tenants.len()) as u64;
    let options = GenOptions {
        url: args.url.trim_end_matches('/').to_string(),
        tenants,
        events: args.events,
        batch: args.batch,
        concurrency: args.concurrency,
        duplicate_ratio: args.duplicates,
        format: match args.format {
            GenFormat::Json => Format::Json,
            GenFormat::Ndjson => Format::Ndjson,
            GenFormat::Gzip => Format::Gzip,
            GenFormat::Mixed => Format::Mixed,
        },
        seed: args.seed,
        probe: !args.no_probe,
        ts_spread_secs: args.ts_spread_secs,
        rate: args.rate,
        sent: sent.clone(),
    };
    let bar = Progress::new("gen", total);
    let mut run = std::pin::pin!(loadgen::run(options));
    let report = loop {
        tokio::select! {
            report = &mut run => break report?,
            _ = tokio::time::sleep(Duration::from_millis(200)) => {
                bar.set(sent.load(Ordering::Relaxed));
            }
        }
    };
    bar.finish();
    eprintln!(
        "{} events in {:.2} s: {:.0} events/s accepted; time-to-visible p50 {} ms, p99 {} ms ({} samples)",
        report.events_sent,
        report.seconds,
        report.events_per_sec,
        report
            .visible_p50_ms
            .map_or("-".into(), |v| format!("{v:.0}")),
        report
            .visible_p99_ms
            .map_or("-".into(), |v| format!("{v:.0}")),
        report.visible_samples
    );
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}
