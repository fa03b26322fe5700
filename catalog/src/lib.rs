//! Floe's catalog: configuration, tenants, tokens, the audit log, and the Iceberg catalog with
//! Floe's own commit path (metadata written, then a compare-and-swap of the table's metadata
//! pointer, with source positions in the snapshot summary of the same commit).

pub mod activity;
pub mod alert;
pub mod api;
mod append;
pub mod audit;
pub mod auth;
mod commit;
pub mod config;
pub mod credentials;
mod db;
pub mod delta;
pub mod erasure;
mod error;
pub mod fair_lru;
pub mod last_known;
pub mod lease;
pub mod maintenance;
pub mod manifests;
mod merge;
pub mod metrics;
mod notify;
pub mod positions;
pub mod projection;
pub mod pruning;
pub mod quota;
pub mod retry;
pub mod rewrite;
pub mod schema;
pub mod storage;
pub mod table;
pub mod tenant;
pub mod written;

use iceberg::io::FileIO;

pub use auth::{Authenticator, Claims, Principal, Role, TokenAuthority};
pub use config::Config;
use db::Db;
pub use db::{Backend, redact as redact_url};
pub use error::{Error, ErrorKind, Result};
pub use notify::CommitHook;
pub use storage::Warehouse;
pub use table::{CommitOutcome, SourcePosition};
pub use tenant::{Tenant, TenantDeleted, TenantId, TenantKey, TenantSettings};

/// The Iceberg catalog name Floe registers its tables under (what other engines call it).
pub const CATALOG_NAME: &str = "floe";

/// Handle on the catalog database and the warehouse. Cheap to clone.
#[derive(Clone)]
pub struct Catalog {
    db: Db,
    /// SQLite's connection for [`Catalog::unflushed_tx`] (`None` on PostgreSQL).
    unflushed: Option<Db>,
    backend: Backend,
    name: String,
    warehouse: String,
    file_io: FileIO,
    data_store: storage::DataStore,
    tables: table::TableCache,
    /// The runtime the catalog was opened on. Database and storage I/O runs there: connections
    /// made on a short-lived runtime (a query's) would die with it while still in the pool.
    io: tokio::runtime::Handle,
    /// Limits of the commit loop (`commit.*`).
    commit: config::CommitConfig,
    /// What [`Catalog::unavailable`] found down last time.
    down: std::sync::Arc<std::sync::Mutex<Vec<&'static str>>>,
    /// How long [`Catalog::read_or_go_on`] waits (`http.catalog_wait_ms`).
    request_wait: std::time::Duration,
    /// How long a read [`Catalog::read_or_go_on`] left to the background may take
    /// (`catalog_db.background_read_limit_ms`).
    background_limit: std::time::Duration,
    /// How long a first read the database did not answer stands (`catalog_db.retry_failed_ms`).
    retry_failed: std::time::Duration,
    /// How often [`Catalog::keep_probing`] probes, and how long a probe waits
    /// (`catalog_db.probe_interval_ms`, `catalog_db.probe_timeout_ms`).
    probe_every: std::time::Duration,
    probe_timeout: std::time::Duration,
    /// Told after every commit (see [`Catalog::on_commit`]).
    hooks: notify::Hooks,
    /// Manifests read by this process (`query.manifest_cache_bytes`): queries and maintenance.
    manifests: std::sync::Arc<manifests::ManifestCache>,
    /// Rows just written to `events`, for this process's projection refreshes
    /// (`projection.written_rows_bytes`).
    written: std::sync::Arc<written::Written>,
}

impl std::fmt::Debug for Catalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Catalog")
            .field("name", &self.name)
            .field("warehouse", &self.warehouse)
            .finish()
    }
}

impl Catalog {
    /// Opens the catalog named by `config` (creating the embedded database if needed).
    pub async fn open(config: &Config) -> Result<Catalog> {
        let warehouse = config.warehouse_url()?;
        let io = tokio::runtime::Handle::current();
        let (file_io, data_store) =
            storage::file_io(&Warehouse::parse(&warehouse)?, &config.s3, &io)?;
        let db::Opened {
            db,
            unflushed,
            backend,
        } = db::open(&config.catalog_url()?, &config.catalog_db).await?;
        Ok(Catalog {
            db,
            unflushed,
            backend,
            name: CATALOG_NAME.to_string(),
            warehouse,
            file_io,
            data_store,
            tables: Default::default(),
            commit: config.commit.clone(),
            io,
            down: Default::default(),
            request_wait: std::time::Duration::from_millis(config.http.catalog_wait_ms),
            background_limit: std::time::Duration::from_millis(
                config.catalog_db.background_read_limit_ms,
            ),
            retry_failed: std::time::Duration::from_millis(config.catalog_db.retry_failed_ms),
            probe_every: std::time::Duration::from_millis(config.catalog_db.probe_interval_ms),
            probe_timeout: std::time::Duration::from_millis(config.catalog_db.probe_timeout_ms),
            hooks: Default::default(),
            manifests: std::sync::Arc::new(manifests::ManifestCache::new(
                config.query.manifest_cache_bytes,
            )),
            written: std::sync::Arc::new(written::Written::new(
                config.projection.written_rows_bytes,
            )),
        })
    }

    /// The warehouse URL (`file:///…` or `s3://bucket/prefix`), without a trailing slash.
    pub fn warehouse(&self) -> &str {
        &self.warehouse
    }

    /// The manifests this process has read, shared by queries and maintenance.
    pub fn manifests(&self) -> &std::sync::Arc<manifests::ManifestCache> {
        &self.manifests
    }

    /// The rows this process just wrote to data files, for its own readers of those files.
    pub fn written(&self) -> &written::Written {
        &self.written
    }

    /// Which database holds the catalog.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// A transaction that will write. On SQLite it takes the write lock at its start
    /// (`BEGIN IMMEDIATE`, waiting up to the busy timeout), so one that reads before it writes
    /// never fails because another writer committed in between (`SQLITE_BUSY_SNAPSHOT`);
    /// PostgreSQL's row locks need no such thing.
    pub(crate) async fn write_tx(
        &self,
    ) -> std::result::Result<sqlx::Transaction<'static, sqlx::Any>, sqlx::Error> {
        match self.backend {
            Backend::Sqlite => self.db.begin_with("BEGIN IMMEDIATE").await,
            Backend::Postgres => self.db.begin().await,
        }
    }

    /// A transaction that will write, and whose commit does not wait for the disk: it is
    /// visible and safe from a crash of this process when `commit` returns, and reaches the
    /// disk within moments (with the next commit that does wait, or SQLite's next checkpoint;
    /// PostgreSQL's WAL writer). A power loss, or a crash of the database server, can take the
    /// last few such commits, in order, never one without those before it. For records that
    /// every request of a kind makes (the audit log's queries and refusals), so that each
    /// request does not wait for a disk flush of its own.
    pub(crate) async fn unflushed_tx(
        &self,
    ) -> std::result::Result<sqlx::Transaction<'static, sqlx::Any>, sqlx::Error> {
        match &self.unflushed {
            // SQLite: the pool whose connection commits at `synchronous = NORMAL` (`db::open`).
            Some(db) => db.begin_with("BEGIN IMMEDIATE").await,
            // PostgreSQL: this transaction's commit alone does not wait for the WAL's flush.
            None => {
                let mut tx = self.db.begin().await?;
                sqlx::query("SET LOCAL synchronous_commit = off")
                    .execute(&mut *tx)
                    .await?;
                Ok(tx)
            }
        }
    }

    pub fn file_io(&self) -> &FileIO {
        &self.file_io
    }

    /// The warehouse as an `object_store` (for DataFusion's readers).
    pub fn data_store(&self) -> &storage::DataStore {
        &self.data_store
    }
}

impl Catalog {
    /// Runs `work` (database I/O) on the catalog's own runtime, whichever runtime calls.
    pub(crate) async fn on_io<T, F, Fut>(&self, work: F) -> Result<T>
    where
        F: FnOnce(Catalog) -> Fut,
        Fut: std::future::Future<Output = Result<T>> + Send + 'static,
        T: Send + 'static,
    {
        self.io
            .spawn(work(self.clone()))
            .await
            .map_err(|e| Error::internal(format!("catalog task failed: {e}")))?
    }

    /// Closes the catalog database's pool: waits (up to `within`) for the connections in use to
    /// come back, and closes them all. At the end of a long-running process, before its runtime
    /// ends: the pool's own tasks are not cut off half-way.
    pub async fn close(&self, within: std::time::Duration) {
        let both = async {
            if let Some(unflushed) = &self.unflushed {
                unflushed.close().await;
            }
            self.db.close().await;
        };
        if tokio::time::timeout(within, both).await.is_err() {
            tracing::warn!(
                "catalog connections still in use after {within:?}; left to close on exit"
            );
        }
    }

    /// Checks that the catalog database answers.
    pub async fn ping(&self) -> Result<()> {
        self.on_io(|c| async move {
            sqlx::query("SELECT 1")
                .execute(&c.db)
                .await
                .map_err(error::Error::db("ping"))?;
            Ok(())
        })
        .await
    }

    /// Checks that the warehouse answers (a metadata request for a key that need not exist).
    pub async fn ping_storage(&self) -> Result<()> {
        self.file_io
            .exists(format!("{}/.floe-probe", self.warehouse))
            .await
            .map_err(Error::ice("probing the warehouse"))?;
        Ok(())
    }

    /// Runs `read` for a caller that has a last-known answer to go on with (`read` keeps its
    /// own answer for later callers, see [`last_known`]): waits for it at most
    /// `http.catalog_wait_ms`, and not at all while the last probe ([`Catalog::unavailable`])
    /// found the catalog database down; past that the read finishes in the background and
    /// this returns `None` (as it does if the read panics). An outage must not hold every
    /// request for the pool's timeout. Callers start one read of a thing at a time and hold
    /// that turn in `read`, which runs to its end even if the caller is dropped while waiting
    /// (the rest is spawned then), so what runs in the background is bounded by the things
    /// read, not by requests. The background part is waited for at most
    /// `catalog_db.background_read_limit_ms`, so that a read stuck on a silent connection
    /// does not keep its thing from being read again. Within the wait the read runs on the
    /// caller's task, with no task of its own.
    pub async fn read_or_go_on<T, F>(&self, read: F) -> Option<T>
    where
        F: std::future::Future<Output = T> + Send + 'static,
        T: Send + 'static,
    {
        use futures::FutureExt;
        let mut rest = Rest {
            read: Some(Box::pin(std::panic::AssertUnwindSafe(read).catch_unwind())),
            limit: self.background_limit,
        };
        if !self.is_down("catalog")
            && !self.request_wait.is_zero()
            && let Some(read) = rest.read.as_mut()
            && let Ok(answer) = tokio::time::timeout(self.request_wait, read).await
        {
            rest.read = None;
            return answer.ok();
        }
        None
    }

    /// How long a read left to the background is waited for
    /// (`catalog_db.background_read_limit_ms`).
    pub fn background_read_limit(&self) -> std::time::Duration {
        self.background_limit
    }

    /// How long a first read the database did not answer is answered with its error without
    /// asking again (`catalog_db.retry_failed_ms`; see [`last_known::LastKnown`]).
    pub fn retry_failed(&self) -> std::time::Duration {
        self.retry_failed
    }

    /// Whether the last probe ([`Catalog::unavailable`]) found `dependency` down.
    pub fn is_down(&self, dependency: &str) -> bool {
        self.down
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&dependency)
    }

    /// Probes the catalog database and the warehouse every `catalog_db.probe_interval_ms`, for
    /// ever ([`Catalog::unavailable`]): what [`Catalog::is_down`] and
    /// [`Catalog::read_or_go_on`] go by, and a log line on each change of what is down.
    /// `floe serve` and `floe ingest kafka` run it.
    pub async fn keep_probing(self) {
        loop {
            self.unavailable().await;
            tokio::time::sleep(self.probe_every).await;
        }
    }

    /// Which dependencies do not answer within `catalog_db.probe_timeout_ms`: `"catalog"`,
    /// `"storage"`. Logs once per change of that set, not on every probe.
    pub async fn unavailable(&self) -> Vec<&'static str> {
        let timeout = self.probe_timeout;
        let (db, storage) = tokio::join!(
            tokio::time::timeout(timeout, self.ping()),
            tokio::time::timeout(timeout, self.ping_storage())
        );
        let mut down = Vec::new();
        let mut reasons = Vec::new();
        for (name, r) in [("catalog", db), ("storage", storage)] {
            match r {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    down.push(name);
                    reasons.push(format!("{name}: {e}: {}", error_chain(&e)));
                }
                Err(_) => {
                    down.push(name);
                    reasons.push(format!("{name}: no answer within {timeout:?}"));
                }
            }
        }
        let mut last = self.down.lock().unwrap_or_else(|p| p.into_inner());
        if *last != down {
            if down.is_empty() {
                tracing::info!(was_down = ?*last, "dependencies are back");
            } else {
                tracing::warn!(down = ?down, reasons = ?reasons, "dependencies unavailable");
            }
            *last = down.clone();
        }
        down
    }
}

/// The part of a read [`Catalog::read_or_go_on`] did not wait for: spawned when dropped (its
/// caller went on, or was itself dropped), to run for at most `limit`.
struct Rest<F: std::future::Future + Send + 'static>
where
    F::Output: Send + 'static,
{
    read: Option<std::pin::Pin<Box<F>>>,
    limit: std::time::Duration,
}

impl<F: std::future::Future + Send + 'static> Drop for Rest<F>
where
    F::Output: Send + 'static,
{
    fn drop(&mut self) {
        let Some(read) = self.read.take() else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!("a catalog read was dropped unfinished: no runtime to finish it on");
            return;
        };
        let limit = self.limit;
        runtime.spawn(async move {
            if tokio::time::timeout(limit, read).await.is_err() {
                tracing::warn!(after = ?limit, "gave up waiting for a catalog read left to the background");
            }
        });
    }
}

/// The sources of an error, joined: what a log line needs to say why.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut parts = Vec::new();
    let mut source = e.source();
    while let Some(s) = source {
        parts.push(s.to_string());
        source = s.source();
    }
    parts.join(": ")
}
