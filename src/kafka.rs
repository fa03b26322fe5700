//! `floe ingest kafka` (a consumer-group worker) and `floe dlq replay`.

use std::time::Duration;

use anyhow::{Context, bail};
use floe_catalog::{Catalog, Config, TenantId};

use crate::serve::Stop;

/// `floe ingest kafka`: one consumer-group member until SIGTERM or Ctrl-C.
pub async fn ingest(config: Config) -> anyhow::Result<()> {
    // Signals first: a SIGTERM while connecting still means a clean stop.
    let stop = Stop::on_signals();
    let catalog = Catalog::open(&config).await?;
    let ran = consume(&catalog, &config, stop).await;
    // Nothing uses the catalog any more when its pool closes, whatever ended the work.
    catalog.close(crate::serve::CLOSE_GRACE).await;
    ran
}

/// How long the projection refresher may take to end after a stop.
const REFRESH_GRACE: Duration = Duration::from_secs(3);

/// The worker's life once the catalog is open: until `stop`, or a failure.
async fn consume(catalog: &Catalog, config: &Config, stop: Stop) -> anyhow::Result<()> {
    let worker = floe_ingest::kafka::Worker::new(catalog.clone(), config)?;
    // What is down decides whether a batch waits for a catalog read (`http.catalog_wait_ms`).
    let probing = tokio::spawn(catalog.clone().keep_probing());
    let refresher = crate::serve::projections(catalog, config);
    let refreshing = refresher
        .clone()
        .map(|refresher| tokio::spawn(refresher.run(stop.clone().wait())));
    // The lags are computed when scraped: Kafka's from the brokers' latest high watermarks.
    let kafka_lag = worker.lag_gauges();
    let lags: crate::metrics::Refresh = std::sync::Arc::new(move || {
        kafka_lag();
        if let Some(r) = &refresher {
            r.lag_gauges();
        }
    });
    let ran = match crate::metrics::serve(&config.metrics, stop.clone(), Some(lags)).await {
        Ok(()) => (worker.run(stop.receiver(), Duration::from_secs(10)).await)
            .map_err(anyhow::Error::from),
        Err(e) => Err(e),
    };
    // The catalog's pool closes next: a probe would report it down.
    probing.abort();
    if let Some(mut refreshing) = refreshing {
        // After a stop, the refresher ends by itself; after a failure (no stop was asked
        // for) it is cut off at once.
        let ended = ran.is_ok()
            && tokio::time::timeout(REFRESH_GRACE, &mut refreshing)
                .await
                .is_ok();
        if !ended {
            if ran.is_ok() {
                tracing::warn!("projection refresh still running after {REFRESH_GRACE:?}; cut off");
            }
            refreshing.abort();
            let _ = refreshing.await;
        }
    }
    ran
}

/// `floe dlq replay`: fixed events (JSON lines, or dead letters with a corrected `payload`)
/// produced to the tenant's topic; nothing is sent while any line is invalid.
pub async fn dlq_replay(
    config: &Config,
    tenant: &str,
    file: &std::path::Path,
) -> anyhow::Result<()> {
    let catalog = Catalog::open(config).await?;
    let tenant = TenantId::parse(tenant)?;
    let text = if file.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin())?
    } else {
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?
    };
    let Some(tenant) = catalog.tenant_key(&tenant).await? else {
        bail!("tenant {tenant} does not exist");
    };
    let producer = floe_ingest::produce::Producer::new(config)?;
    let done = floe_ingest::produce::replay(&producer, &tenant, &text).await?;
    eprintln!(
        "{} events sent to {}; {} lines still invalid",
        done.sent,
        done.topic,
        done.invalid.len()
    );
    for (line, why) in &done.invalid {
        eprintln!("line {line}: {why}");
    }
    if !done.invalid.is_empty() {
        bail!("{} lines were not sent", done.invalid.len());
    }
    Ok(())
}
