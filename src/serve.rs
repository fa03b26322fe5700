//! `floe serve`: every service of one process, composed here, started together and stopped
//! together on SIGTERM or Ctrl-C.
//!
//! The services: the HTTP port (ingest, the Trino protocol, the admin API, the dashboard,
//! health), the commit pipeline behind ingest, the dependency probe, the maintenance schedule
//! and the evaluator of alert rules. On the signal
//! the port stops taking connections and gives requests in flight [`HTTP_GRACE`]; the
//! batchers commit what they buffer (up to [`COMMIT_GRACE`]; what does not commit stays in the
//! write-ahead log for the next start); the probe and the schedule stop at once (a maintenance
//! step cut short leaves its table as it was: every change is one compare-and-swap).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use floe_admin::AdminState;
use floe_catalog::quota::QuotaBook;
use floe_catalog::{Authenticator, Catalog, Config, TokenAuthority};
use floe_ingest::Ingest;
use floe_ingest::http::HttpState;
use floe_query::Engine;
use floe_query::trino::TrinoState;
use tokio::sync::watch;
use tokio::task::JoinSet;

/// How long requests in flight may take to finish once a stop is asked for.
pub const HTTP_GRACE: Duration = Duration::from_secs(3);
/// How long the batchers may take to commit what they buffer on a stop.
pub const COMMIT_GRACE: Duration = Duration::from_secs(10);
/// How long the audit writer may take to write what requests queued, once the port is closed.
const AUDIT_GRACE: Duration = Duration::from_secs(3);
/// How long the catalog database's connections may take to close as a process ends.
pub const CLOSE_GRACE: Duration = Duration::from_secs(3);

/// A stop asked for, shared by the services of one process.
#[derive(Clone)]
pub struct Stop {
    tx: Arc<watch::Sender<bool>>,
    rx: watch::Receiver<bool>,
}

impl Stop {
    /// Fires on SIGTERM or Ctrl-C. Listens from now on: a signal while connecting to
    /// dependencies still means a clean stop.
    pub fn on_signals() -> Stop {
        let (tx, rx) = watch::channel(false);
        let tx = Arc::new(tx);
        let on_signal = tx.clone();
        tokio::spawn(async move {
            signal().await;
            let _ = on_signal.send(true);
        });
        Stop { tx, rx }
    }

    /// Asks for the stop without a signal (a service failed).
    pub fn ask(&self) {
        let _ = self.tx.send(true);
    }

    /// Resolves once the stop is asked for.
    pub async fn wait(self) {
        let mut rx = self.rx;
        let _ = rx.wait_for(|stopped| *stopped).await;
    }

    /// The stop as a watch receiver (`true` once asked for).
    pub fn receiver(&self) -> watch::Receiver<bool> {
        self.rx.clone()
    }
}

async fn signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

/// Publishes new audit records to the `audit` tables every `every_ms`.
async fn publish_audit(catalog: Catalog, every_ms: u64) {
    let every = Duration::from_millis(every_ms);
    loop {
        if let Err(e) = catalog.publish_audit(10_000).await {
            tracing::warn!(error = %e, "could not publish the audit log; retried");
        }
        tokio::time::sleep(every).await;
    }
}

pub async fn serve(
    config: Config,
    flush: tokio::runtime::Handle,
    accept_wal_loss: &[String],
) -> anyhow::Result<()> {
    let stop = Stop::on_signals();
    // The certificate first: a bad one stops the start before anything else has begun.
    let tls = match (config.http.tls_cert.as_str(), config.http.tls_key.as_str()) {
        ("", "") => None,
        ("", _) | (_, "") => {
            anyhow::bail!("TLS needs both http.tls_cert and http.tls_key (--tls-cert, --tls-key)")
        }
        (cert, key) => {
            let tls = crate::tls::Tls::load(cert.as_ref(), key.as_ref())?;
            tls.reload_on_sighup()?;
            tracing::info!(cert, "serving HTTPS");
            Some(tls)
        }
    };
    let catalog = Catalog::open(&config).await?;
    // However serving ends, a failure to start included, the catalog's connections close
    // before the runtime does (a pool's tasks cut off by the runtime's end panic).
    let served = serve_with(&catalog, config, flush, accept_wal_loss, stop, tls).await;
    catalog.close(CLOSE_GRACE).await;
    served
}

/// `floe serve` once the catalog is open: starts every service, and stops them on `stop` (or
/// when the port fails, then returning its error).
async fn serve_with(
    catalog: &Catalog,
    config: Config,
    flush: tokio::runtime::Handle,
    accept_wal_loss: &[String],
    stop: Stop,
    tls: Option<crate::tls::Tls>,
) -> anyhow::Result<()> {
    let catalog = catalog.clone();
    let authority = TokenAuthority::load_or_create(&config.signing_key_path())?;
    let ingest =
        Ingest::start_accepting_loss(catalog.clone(), &config, flush, accept_wal_loss).await?;
    let auth = Authenticator::new(authority, catalog.clone())
        .with_revocation_refresh(Duration::from_millis(config.auth.revocation_refresh_ms))
        .with_jwks(&config.auth);
    let producer = if config.kafka.brokers.is_empty() {
        None
    } else {
        tracing::info!(brokers = %config.kafka.brokers, topics = %config.kafka.topic_template, "Kafka mode: accepted events are produced to tenant topics");
        Some(Arc::new(floe_ingest::produce::Producer::new(&config)?))
    };
    let engine =
        Engine::new(catalog.clone(), config.query.clone()).spilling_into(&config.spill_dir())?;
    let quotas = QuotaBook::new(catalog.clone(), config.quota.clone());
    let producer_for_tenants = producer.clone();
    let topic_lag = producer.clone().map(|p| {
        Arc::new(TopicLag(p, catalog.clone())) as Arc<dyn floe_query::dashboard::KafkaLag>
    });
    let dashboard = floe_query::dashboard::router(floe_query::dashboard::DashboardState {
        engine: engine.clone(),
        auth: auth.clone(),
        quotas: quotas.clone(),
        kafka: topic_lag.clone(),
    });
    let alerting = crate::alerting::Alerting::new(
        catalog.clone(),
        engine.clone(),
        topic_lag,
        &config.alerting,
    )?;
    // One port: ingest, health, the Trino protocol for SQL clients, the admin API, and the
    // dashboard with its figures.
    let refresher = projections(&catalog, &config);
    let lag = refresher
        .clone()
        .map(|r| Arc::new(move || r.lag_gauges()) as crate::metrics::Refresh);
    crate::metrics::serve(&config.metrics, stop.clone(), lag).await?;
    let (audit_queue, write_audit_queue) =
        floe_catalog::audit::AuditQueue::new(catalog.clone(), config.audit.queue);
    let refusals = floe_catalog::api::refusal::RefusalLog {
        queue: audit_queue.clone(),
        auth: auth.clone(),
    };
    let app = floe_ingest::http::router(HttpState::new(
        ingest.clone(),
        auth.clone(),
        producer,
        quotas.clone(),
    ))
    .merge(floe_query::trino::router(
        TrinoState::new(engine, auth.clone(), quotas.clone()).auditing(audit_queue.clone()),
    ))
    .merge(floe_admin::router(AdminState {
        catalog: catalog.clone(),
        auth,
        projections: refresher
            .clone()
            .map(|r| Arc::new(ProjectionAdmin(r)) as Arc<dyn floe_admin::Projections>),
        max_alert_rules: config.alerting.max_rules_per_tenant,
        max_token_ttl_secs: config.auth.max_token_ttl_secs,
        tenants: Arc::new(TenantMaker(catalog.clone(), producer_for_tenants)),
    }))
    .merge(dashboard)
    .merge(crate::ui::router())
    .merge(crate::openapi::router())
    // Every refusal (401, 403) is audited.
    .layer(axum::middleware::from_fn_with_state(
        refusals,
        floe_catalog::api::refusal::layer,
    ))
    // Every reply carries its request's id, and so do the log lines of its handling.
    .layer(axum::middleware::from_fn(
        floe_catalog::api::request_id::layer,
    ));
    let addr: SocketAddr = config
        .listen
        .parse()
        .with_context(|| format!("listen address {:?}", config.listen))?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    tracing::info!(
        listen = %listener.local_addr()?,
        warehouse = %config.warehouse_url()?,
        catalog = %floe_catalog::redact_url(&config.catalog_url()?),
        "floe serving"
    );

    let mut services = JoinSet::new();
    // Probes the catalog database and the warehouse, logging once per change of what is down
    // (the same probe answers `/readyz`).
    services.spawn(until(stop.clone(), catalog.clone().keep_probing()));
    if let Some(refresher) = refresher.clone() {
        services.spawn(refresher.run(stop.clone().wait()));
    }
    // Not stopped with the others: it writes what requests in flight queue until the port
    // has closed, then ends once the queue is empty.
    let mut audit_writer = tokio::spawn(write_audit_queue);
    if config.audit.publish_interval_ms > 0 {
        services.spawn(until(
            stop.clone(),
            publish_audit(catalog.clone(), config.audit.publish_interval_ms),
        ));
    }
    if let Some(alerting) = alerting {
        services.spawn(until(stop.clone(), alerting.run()));
    }
    if config.compaction.interval_secs > 0 {
        let mut compactor =
            floe_compactor::Compactor::new(catalog.clone(), config.compaction.clone())
                .spilling_into(config.spill_dir())?;
        if let Some(refresher) = refresher {
            compactor = compactor.with_projections(refresher);
        }
        services.spawn(floe_compactor::maintain::run_schedule(
            compactor,
            floe_catalog::lease::holder_name("serve"),
            stop.clone().wait(),
        ));
    }
    let mut server = tokio::spawn(crate::listener::serve(
        listener,
        app,
        config.http.clone(),
        tls,
        stop.receiver(),
    ));
    // Either the port ends (a stop asked for, or a failure) or the stop comes first. A
    // failure stops the rest as a stop would, and is returned at the end.
    let (server_ended, failed) = tokio::select! {
        done = &mut server => (true, done.context("the HTTP server stopped").and_then(|r| r.map_err(anyhow::Error::from)).err()),
        _ = stop.clone().wait() => (false, None),
    };
    if let Some(e) = &failed {
        tracing::error!(error = format!("{e:#}"), "the HTTP server failed; stopping");
        stop.ask();
    }
    tracing::info!("stopping: finishing requests in flight, committing buffered events");
    if !server_ended && tokio::time::timeout(HTTP_GRACE, &mut server).await.is_err() {
        tracing::warn!(
            "requests still in flight after {HTTP_GRACE:?}; closing them (their events are durable)"
        );
        server.abort();
    }
    ingest.shutdown(COMMIT_GRACE).await;
    // What this process counted reaches the catalog's daily usage.
    quotas.flush().await;
    // The port is closed: the audit records it queued are written, then the writer ends.
    drop(audit_queue);
    if tokio::time::timeout(AUDIT_GRACE, &mut audit_writer)
        .await
        .is_err()
    {
        tracing::warn!("audit records still queued after {AUDIT_GRACE:?}; left unwritten");
        audit_writer.abort();
        let _ = audit_writer.await;
    }
    services.shutdown().await;
    failed.map_or(Ok(()), Err)
}

/// Runs `work` until the stop is asked for.
/// The projection refresher, listening to the commits of `catalog` (to be run), unless
/// `projection.enabled` is off.
pub(crate) fn projections(
    catalog: &Catalog,
    config: &Config,
) -> Option<floe_compactor::projection::Refresher> {
    if !config.projection.enabled {
        tracing::info!("projection.enabled is off: projections are not refreshed");
        return None;
    }
    let refresher = floe_compactor::projection::Refresher::new(catalog.clone(), config);
    refresher.listen();
    Some(refresher)
}

/// Creates tenants for the admin API as `floe tenant create` does.
struct TenantMaker(Catalog, Option<Arc<floe_ingest::produce::Producer>>);

impl floe_admin::TenantMaker for TenantMaker {
    fn create(
        &self,
        id: floe_catalog::TenantId,
        actor: String,
    ) -> std::pin::Pin<
        Box<dyn Future<Output = floe_catalog::Result<floe_catalog::tenant::Tenant>> + Send>,
    > {
        let (catalog, producer) = (self.0.clone(), self.1.clone());
        Box::pin(
            async move { crate::tenant::create(&catalog, producer.as_deref(), &id, &actor).await },
        )
    }
}

/// The events in a tenant's topic not yet in its table, for the dashboard (Kafka mode).
struct TopicLag(Arc<floe_ingest::produce::Producer>, Catalog);

impl floe_query::dashboard::KafkaLag for TopicLag {
    fn lag(
        &self,
        tenant: floe_catalog::TenantId,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<u64, String>> + Send>> {
        let (producer, catalog) = (self.0.clone(), self.1.clone());
        Box::pin(async move {
            producer
                .lag(&catalog, &tenant)
                .await
                .map_err(|e| e.to_string())
        })
    }
}

/// The admin API's hold on this process's projection refresher.
struct ProjectionAdmin(floe_compactor::projection::Refresher);

impl floe_admin::Projections for ProjectionAdmin {
    fn create(
        &self,
        tenant: floe_catalog::TenantId,
        name: String,
        sql: String,
        actor: String,
    ) -> std::pin::Pin<
        Box<dyn Future<Output = floe_catalog::Result<floe_catalog::projection::Defined>> + Send>,
    > {
        let refresher = self.0.clone();
        Box::pin(async move {
            refresher
                .create_projection(&tenant, &name, &sql, &actor)
                .await
                .map_err(floe_compactor::Error::into_catalog)
        })
    }

    fn redefine(
        &self,
        tenant: floe_catalog::TenantId,
        name: String,
        sql: String,
        actor: String,
    ) -> std::pin::Pin<
        Box<dyn Future<Output = floe_catalog::Result<floe_catalog::projection::Defined>> + Send>,
    > {
        let refresher = self.0.clone();
        Box::pin(async move {
            refresher
                .redefine_projection(&tenant, &name, &sql, &actor)
                .await
                .map_err(floe_compactor::Error::into_catalog)
        })
    }

    /// The rebuild runs on its own task, logged.
    fn rebuild(&self, tenant: floe_catalog::TenantId, name: String, at: Option<i64>) {
        let refresher = self.0.clone();
        tokio::spawn(async move {
            match refresher.rebuild(&tenant, &name, at).await {
                Ok(done) => {
                    tracing::info!(%tenant, projection = %name, ?done, "projection rebuilt")
                }
                Err(e) => {
                    tracing::warn!(%tenant, projection = %name, error = %e, "projection rebuild failed")
                }
            }
        });
    }
}

async fn until(stop: Stop, work: impl Future<Output = ()>) {
    tokio::select! {
        _ = stop.wait() => {}
        _ = work => {}
    }
}
