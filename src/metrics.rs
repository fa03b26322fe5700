//! `/metrics` of a Floe process (`floe serve`, `floe ingest kafka`, `floe compactor`): the
//! Prometheus exporter of the `metrics` facade, served on `metrics.listen`
//! (`--metrics-listen`), an address of its own, never the public port. The names and help
//! are in `floe_catalog::metrics`.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context;
use axum::http::header;
use axum::response::IntoResponse;
use floe_catalog::config::MetricsConfig;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::serve::Stop;

/// Figures a process computes when scraped (the Kafka worker's lag), set as gauges just
/// before the render.
pub type Refresh = Arc<dyn Fn() + Send + Sync>;

/// Bounds of the duration histograms, in seconds: a millisecond to a minute.
const SECONDS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
/// Bounds of the size histograms, in bytes: 1 KiB to 64 MiB by fours.
const BYTES: &[f64] = &[
    1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0, 16777216.0, 67108864.0,
];

/// The process's recorder, installed once.
fn handle() -> anyhow::Result<&'static PrometheusHandle> {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    if let Some(h) = HANDLE.get() {
        return Ok(h);
    }
    // Summaries (the Kafka worker's records per commit) hold the last five minutes' samples.
    let handle = PrometheusBuilder::new()
        .set_bucket_duration(Duration::from_secs(60))?
        .set_bucket_count(std::num::NonZeroU32::new(5).expect("five is not zero"))
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS)?
        .set_buckets_for_metric(Matcher::Suffix("_bytes".into()), BYTES)?
        .install_recorder()
        .context("installing the metrics recorder")?;
    floe_catalog::metrics::describe();
    Ok(HANDLE.get_or_init(|| handle))
}

/// Serves `/metrics` on `config.listen` until `stop` (nothing when it is empty); `refresh`
/// runs before each render.
pub async fn serve(
    config: &MetricsConfig,
    stop: Stop,
    refresh: Option<Refresh>,
) -> anyhow::Result<()> {
    floe_catalog::metrics::set_max_tenant_labels(config.max_tenant_labels);
    if config.listen.is_empty() {
        return Ok(());
    }
    let handle = handle()?;
    let listener = tokio::net::TcpListener::bind(&config.listen)
        .await
        .with_context(|| format!("binding the metrics address {}", config.listen))?;
    tracing::info!(listen = %listener.local_addr()?, "metrics at /metrics");
    // Histograms and summaries age out old samples on upkeep.
    let upkeep_stop = stop.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(5));
        let stopped = upkeep_stop.wait();
        tokio::pin!(stopped);
        loop {
            tokio::select! {
                _ = every.tick() => handle.run_upkeep(),
                _ = &mut stopped => return,
            }
        }
    });
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let refresh = refresh.clone();
            async move {
                if let Some(refresh) = refresh {
                    refresh();
                }
                (
                    [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                    handle.render(),
                )
                    .into_response()
            }
        }),
    );
    tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(stop.wait())
            .await
    });
    Ok(())
}
