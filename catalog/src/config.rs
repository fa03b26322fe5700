//! Typed configuration, loaded in layers: defaults < `floe.toml` < `FLOE_*` environment < flags.
//!
//! Every key has one dotted name (`listen`, `ingest.flush_interval_ms`). The environment variable
//! for a key is `FLOE_` plus the name upper-cased with `.` turned into `_`
//! (`FLOE_INGEST_FLUSH_INTERVAL_MS`); flags pass the same dotted names to [`Config::load`].

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// A setting that must never be printed: `***` in `Debug` (and so in logs and error
/// messages that show a configuration), its value only through [`Secret::expose`].
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The value, for the one place that needs it (a client's credentials).
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_empty() { "\"\"" } else { "***" })
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Secret {
        Secret(s.to_string())
    }
}

/// Whether a librdkafka setting holds a secret (`sasl.password`, `ssl.key.password`,
/// `sasl.oauthbearer.client.secret`, …): its value is never printed.
pub fn is_secret_property(name: &str) -> bool {
    [
        "password",
        "secret",
        "token",
        "jaas",
        "key.pem",
        "credentials",
    ]
    .iter()
    .any(|w| name.contains(w))
}

/// The whole configuration of a Floe process.
#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where embedded state lives: warehouse, catalog, write-ahead log, signing key.
    pub data_dir: PathBuf,
    /// Table storage, by URL. Empty: `file://<data_dir>/warehouse`.
    pub warehouse: String,
    /// Catalog database, by URL. Empty: `sqlite://<data_dir>/catalog.db`.
    pub catalog: String,
    /// Address the HTTP server listens on.
    pub listen: String,
    /// S3 settings, used when `warehouse` is an `s3://` URL.
    pub s3: S3Config,
    pub ingest: IngestConfig,
    pub auth: AuthConfig,
    pub query: QueryConfig,
    pub compaction: CompactionConfig,
    pub commit: CommitConfig,
    pub kafka: KafkaConfig,
}

/// Commits: every change to a table is a compare-and-swap of its metadata pointer; a change
/// that loses to another writer is prepared again from the new metadata, after a backoff.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct CommitConfig {
    /// Swaps one commit may lose before it gives up (ingest keeps its batch and tries again
    /// later; a compaction bin waits for the next run).
    pub max_attempts: u32,
    /// Longest wait between two attempts (the wait doubles from 5 ms, with jitter).
    pub backoff_max_ms: u64,
}

impl Default for CommitConfig {
    fn default() -> Self {
        CommitConfig {
            max_attempts: 100,
            backoff_max_ms: 500,
        }
    }
}

/// Kafka: `floe ingest kafka` consumes tenant topics into the tables; with `brokers` set,
/// `floe serve` writes accepted events to those topics instead of its local log.
#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap servers (`host:port,…`). Empty: Kafka is off.
    pub brokers: String,
    /// Consumer group of `floe ingest kafka`; positions are kept per group in each table.
    pub group: String,
    /// Topics consumed: a regular expression whose first capture group is the tenant id.
    pub topic_pattern: String,
    /// The topic a tenant's events are produced to; `{tenant}` is replaced by the tenant id.
    pub topic_template: String,
    /// Bytes of records one worker holds between the broker and a commit; past it, the
    /// worker pauses its partitions until commits catch up.
    pub max_in_flight_bytes: usize,
    /// Partitions of a topic created for a new tenant (0: don't create topics).
    pub topic_partitions: i32,
    /// Replication factor of created topics (-1: the broker's default).
    pub replication_factor: i32,
    /// A produce (HTTP in Kafka mode) waits this long for the broker's acknowledgement.
    pub produce_timeout_ms: u64,
    /// A partition of a consumed topic that is behind, read by no member (its group offset
    /// has not moved for this long), makes a worker leave and rejoin the group so that the
    /// coordinator assigns it again (0: never). Guards against a coordinator that drops a
    /// dead member without starting a new generation.
    pub stall_rejoin_ms: u64,
    /// `?wait=visible` in Kafka mode polls the tenant's table this often (one poll per tenant
    /// however many requests wait).
    pub visible_poll_ms: u64,
    /// Extra client settings passed to librdkafka as they are (`security.protocol`,
    /// `sasl.mechanisms`, …), for the consumer and the producer.
    pub properties: std::collections::BTreeMap<String, String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            brokers: String::new(),
            group: "floe-ingest".to_string(),
            topic_pattern: r"^tenant-(.+)\.events$".to_string(),
            topic_template: "tenant-{tenant}.events".to_string(),
            max_in_flight_bytes: 256 << 20,
            topic_partitions: 4,
            replication_factor: -1,
            produce_timeout_ms: 30_000,
            stall_rejoin_ms: 30_000,
            visible_poll_ms: 50,
            properties: Default::default(),
        }
    }
}

/// Table maintenance: compaction, snapshot expiry, garbage and orphan files (`floe compact`,
/// the schedule in `floe serve`, `floe compactor`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct CompactionConfig {
    /// Files below this size are rewritten together into files of about this size.
    pub target_file_bytes: u64,
    /// Parquet ZSTD level of rewritten files.
    pub zstd_level: i32,
    /// Memory one rewrite may hold while sorting; past it, the sort spills to temporary files.
    pub memory_limit_bytes: usize,
    /// Snapshots older than this are expired (time travel reaches this far back)…
    pub snapshot_max_age_secs: u64,
    /// …but each table keeps at least this many of its newest snapshots.
    pub min_snapshots: usize,
    /// Files under a table's folder that no snapshot reaches are deleted once this old (a
    /// commit in flight writes its files before it swaps them in: keep this well above the
    /// longest commit).
    pub orphan_min_age_secs: u64,
    /// `floe serve` and `floe compactor` run maintenance this often; 0 turns the schedule off.
    pub interval_secs: u64,
    /// A compactor holds a table for this long per lease (renewed while it works); another
    /// compactor takes the table over only after the lease runs out.
    pub lease_secs: u64,
    /// Tenants whose pending user erasures are worked on side by side in one tick of the
    /// schedule (each tenant gets one pass per tick, whatever its backlog).
    pub erasure_tenants_at_once: usize,
    /// Most user ids one erasure pass takes on (requests of a tenant are merged into one
    /// pass up to this many ids; the rest wait for the next tick).
    pub erasure_max_users_per_pass: usize,
}

impl Default for CompactionConfig {
    fn default() -> Self {
        CompactionConfig {
            target_file_bytes: 128 << 20,
            zstd_level: 3,
            memory_limit_bytes: 512 << 20,
            snapshot_max_age_secs: 900,
            min_snapshots: 10,
            orphan_min_age_secs: 24 * 3600,
            interval_secs: 300,
            lease_secs: 600,
            erasure_tenants_at_once: 2,
            erasure_max_users_per_pass: 10_000,
        }
    }
}

/// An S3-compatible object store. Credentials left empty come from the standard AWS chain
/// (environment, profile, SSO, web identity, container or instance metadata).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct S3Config {
    /// Endpoint URL (`http://127.0.0.1:9000` for MinIO); empty: AWS for `region`.
    pub endpoint: String,
    /// Region; empty: `AWS_REGION`, else `us-east-1`.
    pub region: String,
    /// Path-style requests (`endpoint/bucket/key`), as MinIO and most S3 servers want.
    pub path_style: bool,
    pub access_key_id: String,
    pub secret_access_key: Secret,
    pub session_token: Secret,
    /// Server-side encryption: `""` (the bucket's default), `AES256` (SSE-S3) or `aws:kms`.
    pub sse: String,
    /// KMS key for `sse = "aws:kms"`; empty: the account's default key.
    pub sse_kms_key_id: String,
    /// Retries of one failed request (with backoff) before the operation fails and the
    /// caller's own retry (the commit loop's) takes over.
    pub request_retries: usize,
    /// Longest time one request, with its retries, may take.
    pub request_timeout_secs: u64,
}

impl Default for S3Config {
    fn default() -> Self {
        S3Config {
            endpoint: String::new(),
            region: String::new(),
            path_style: false,
            access_key_id: String::new(),
            secret_access_key: Secret::default(),
            session_token: Secret::default(),
            sse: String::new(),
            sse_kms_key_id: String::new(),
            request_retries: 3,
            request_timeout_secs: 30,
        }
    }
}

/// Ingest limits and batching.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct IngestConfig {
    /// Largest single event, in bytes (413 above).
    pub max_event_bytes: usize,
    /// Largest request body after decompression, in bytes (413 above).
    pub max_request_bytes: usize,
    /// Most events in one request (413 above).
    pub max_events_per_request: usize,
    /// Ingest requests handled at once; more wait for a slot (bounds memory held by bodies).
    pub max_concurrent_requests: usize,
    /// A tenant's buffered events are committed at most this long after the first arrived.
    pub flush_interval_ms: u64,
    /// ... or once this many rows are buffered ...
    pub flush_max_rows: usize,
    /// ... or once this many bytes (of event JSON) are buffered.
    pub flush_max_bytes: usize,
    /// Acknowledged but not yet committed bytes, over all tenants. Past it, ingest waits up to
    /// `backpressure_timeout_ms` and then answers 503 with `Retry-After`.
    pub max_buffered_bytes: usize,
    /// How long a request waits for buffer space before 503.
    pub backpressure_timeout_ms: u64,
    /// The write-ahead log starts a new segment file past this size.
    pub wal_segment_bytes: u64,
    /// A retried `(tenant, event_id)` is recognised as a duplicate when it arrives within this
    /// many seconds of the first copy...
    pub dedup_window_secs: u64,
    /// ... and while fewer than this many newer ids were accepted by this process.
    pub dedup_max_ids: usize,
    /// `?wait=visible` gives up (504, the events stay durable) after this long.
    pub wait_visible_timeout_ms: u64,
    /// Parquet ZSTD level for ingest files.
    pub zstd_level: i32,
}

/// Tokens.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// HS256 signing key file. Empty: `<data_dir>/signing.key`, generated on first use (mode 0600).
    pub signing_key_file: String,
    /// Longest lifetime `floe token issue` accepts, in seconds.
    pub max_token_ttl_secs: u64,
}

/// Query limits.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct QueryConfig {
    /// DataFusion target partitions; 0 means the number of cores.
    pub target_partitions: usize,
    /// A query running longer than this fails with `EXCEEDED_TIME_LIMIT`.
    pub timeout_secs: u64,
    /// Memory one query may hold (a DataFusion memory pool); past it, `EXCEEDED_MEMORY_LIMIT`.
    pub memory_limit_bytes: usize,
    /// Rows one query may return; past it, `EXCEEDED_ROW_LIMIT`.
    pub max_result_rows: u64,
    /// Longest SQL text accepted.
    pub max_sql_bytes: usize,
    /// Deepest nesting the SQL parser accepts (parentheses, subqueries); deeper is refused.
    pub max_sql_depth: usize,
    /// Most operators (`+`, `=`, `AND`, `::`, `[…]`, `IS`, `LIKE`, …), set operations and joins
    /// one statement may hold; more is refused.
    pub max_sql_operators: usize,
    /// Queries one tenant may run at once; past it, `QUERY_QUEUE_FULL`.
    pub max_concurrent_per_tenant: usize,
    /// Rows per page of the Trino protocol (pages are also cut at about 1 MiB).
    pub page_rows: usize,
    /// A query whose client stops fetching pages is cancelled after this long.
    pub abandoned_after_secs: u64,
    /// Parquet footers and page indexes kept in memory across queries (all tenants share it).
    pub footer_cache_bytes: u64,
    /// Iceberg manifests kept in memory across queries, counted in the data files they list
    /// (about 1 KiB each; shared by all tenants).
    pub manifest_cache_files: usize,
}

impl Default for QueryConfig {
    fn default() -> Self {
        QueryConfig {
            target_partitions: 0,
            timeout_secs: 60,
            memory_limit_bytes: 1 << 30,
            max_result_rows: 1_000_000,
            max_sql_bytes: 1 << 20,
            max_sql_depth: 64,
            max_sql_operators: 1000,
            max_concurrent_per_tenant: 8,
            page_rows: 10_000,
            abandoned_after_secs: 300,
            footer_cache_bytes: 64 << 20,
            manifest_cache_files: 200_000,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("./floe-data"),
            warehouse: String::new(),
            catalog: String::new(),
            listen: "127.0.0.1:8080".to_string(),
            s3: S3Config::default(),
            ingest: IngestConfig::default(),
            auth: AuthConfig::default(),
            query: QueryConfig::default(),
            compaction: CompactionConfig::default(),
            commit: CommitConfig::default(),
            kafka: KafkaConfig::default(),
        }
    }
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("data_dir", &self.data_dir)
            .field("warehouse", &self.warehouse)
            // A database URL may hold its password.
            .field("catalog", &crate::db::redact(&self.catalog))
            .field("listen", &self.listen)
            .field("s3", &self.s3)
            .field("ingest", &self.ingest)
            .field("auth", &self.auth)
            .field("query", &self.query)
            .field("compaction", &self.compaction)
            .field("commit", &self.commit)
            .field("kafka", &self.kafka)
            .finish()
    }
}

impl std::fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let properties: std::collections::BTreeMap<&str, &str> = self
            .properties
            .iter()
            .map(|(k, v)| {
                let shown = if is_secret_property(k) { "***" } else { v };
                (k.as_str(), shown)
            })
            .collect();
        f.debug_struct("KafkaConfig")
            .field("brokers", &self.brokers)
            .field("group", &self.group)
            .field("topic_pattern", &self.topic_pattern)
            .field("topic_template", &self.topic_template)
            .field("max_in_flight_bytes", &self.max_in_flight_bytes)
            .field("topic_partitions", &self.topic_partitions)
            .field("replication_factor", &self.replication_factor)
            .field("produce_timeout_ms", &self.produce_timeout_ms)
            .field("stall_rejoin_ms", &self.stall_rejoin_ms)
            .field("visible_poll_ms", &self.visible_poll_ms)
            .field("properties", &properties)
            .finish()
    }
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            max_event_bytes: 1 << 20,
            max_request_bytes: 10 << 20,
            max_events_per_request: 10_000,
            max_concurrent_requests: 64,
            flush_interval_ms: 250,
            flush_max_rows: 100_000,
            flush_max_bytes: 64 << 20,
            max_buffered_bytes: 512 << 20,
            backpressure_timeout_ms: 5_000,
            wal_segment_bytes: 64 << 20,
            dedup_window_secs: 24 * 3600,
            dedup_max_ids: 20_000_000,
            wait_visible_timeout_ms: 30_000,
            zstd_level: 1,
        }
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            signing_key_file: String::new(),
            max_token_ttl_secs: 30 * 24 * 3600,
        }
    }
}

impl Config {
    /// Loads the layers: defaults, then `file` (or `./floe.toml` when it exists), then `FLOE_*`
    /// variables from `env`, then `overrides` (dotted key, value) from flags.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        overrides: &[(&str, String)],
    ) -> Result<Config> {
        let mut value = toml::Value::try_from(Config::default())
            .map_err(|e| Error::internal(format!("default config does not serialise: {e}")))?;
        let file = match file {
            Some(f) => Some(f.to_path_buf()),
            None => Some(PathBuf::from("floe.toml")).filter(|p| p.exists()),
        };
        if let Some(path) = file {
            let text = std::fs::read_to_string(&path).map_err(|e| Error::Config {
                message: format!("cannot read {}: {e}", path.display()),
            })?;
            let layer: toml::Value = toml::from_str(&text).map_err(|e| Error::Config {
                message: format!("{}: {e}", path.display()),
            })?;
            merge(&mut value, layer);
        }
        let keys = leaf_keys(&value);
        for (name, raw) in env {
            let Some(rest) = name.strip_prefix("FLOE_") else {
                continue;
            };
            // The config file's own variable, and those of the project's scripts and tests.
            if rest == "CONFIG"
                || rest == "BIN"
                || rest == "CACHE_DIR"
                || rest.starts_with("SERVICES_")
                || rest.starts_with("TEST_")
            {
                continue;
            }
            let wanted = rest.to_ascii_lowercase();
            // librdkafka settings hold dots, which variable names cannot: `_` stands for `.`
            // and `__` for `_` (FLOE_KAFKA_PROPERTIES_SASL_PASSWORD is sasl.password), so
            // secrets can come from the environment rather than the file.
            if let Some(property) = wanted.strip_prefix("kafka_properties_") {
                let name = property
                    .split("__")
                    .map(|part| part.replace('_', "."))
                    .collect::<Vec<_>>()
                    .join("_");
                set_key(&mut value, &format!("kafka.properties.{name}"), &raw)?;
                continue;
            }
            match keys.iter().find(|k| k.replace('.', "_") == wanted) {
                Some(key) => set_key(&mut value, key, &raw)?,
                // Other tools may use the prefix too; a typo still gets a warning.
                None => tracing::warn!(variable = %name, "ignoring unknown FLOE_* variable"),
            }
        }
        for (key, raw) in overrides {
            set_key(&mut value, key, raw)?;
        }
        let config: Config = value
            .try_into()
            .map_err(|e: toml::de::Error| Error::Config {
                message: e.to_string(),
            })?;
        config.validate()?;
        Ok(config)
    }

    /// Loads with the process environment.
    pub fn from_env(file: Option<&Path>, overrides: &[(&str, String)]) -> Result<Config> {
        Config::load(file, std::env::vars(), overrides)
    }

    fn validate(&self) -> Result<()> {
        let i = &self.ingest;
        let positive = [
            ("ingest.max_event_bytes", i.max_event_bytes as u64),
            ("ingest.max_request_bytes", i.max_request_bytes as u64),
            (
                "ingest.max_events_per_request",
                i.max_events_per_request as u64,
            ),
            ("ingest.flush_interval_ms", i.flush_interval_ms),
            ("ingest.flush_max_rows", i.flush_max_rows as u64),
            ("ingest.flush_max_bytes", i.flush_max_bytes as u64),
            ("ingest.max_buffered_bytes", i.max_buffered_bytes as u64),
            ("ingest.wal_segment_bytes", i.wal_segment_bytes),
            (
                "compaction.target_file_bytes",
                self.compaction.target_file_bytes,
            ),
            (
                "compaction.memory_limit_bytes",
                self.compaction.memory_limit_bytes as u64,
            ),
            (
                "compaction.min_snapshots",
                self.compaction.min_snapshots as u64,
            ),
            ("compaction.lease_secs", self.compaction.lease_secs),
            ("commit.max_attempts", self.commit.max_attempts as u64),
            ("commit.backoff_max_ms", self.commit.backoff_max_ms),
            (
                "compaction.erasure_tenants_at_once",
                self.compaction.erasure_tenants_at_once as u64,
            ),
            (
                "compaction.erasure_max_users_per_pass",
                self.compaction.erasure_max_users_per_pass as u64,
            ),
            (
                "kafka.max_in_flight_bytes",
                self.kafka.max_in_flight_bytes as u64,
            ),
            ("kafka.produce_timeout_ms", self.kafka.produce_timeout_ms),
            ("kafka.visible_poll_ms", self.kafka.visible_poll_ms),
        ];
        for (key, v) in positive {
            if v == 0 {
                return Err(Error::Config {
                    message: format!("{key} must be greater than 0"),
                });
            }
        }
        if !self.kafka.topic_template.contains("{tenant}") {
            return Err(Error::Config {
                message: "kafka.topic_template must contain {tenant}".into(),
            });
        }
        if i.max_buffered_bytes < i.max_request_bytes {
            return Err(Error::Config {
                message: "ingest.max_buffered_bytes must be at least ingest.max_request_bytes"
                    .into(),
            });
        }
        Ok(())
    }

    /// The warehouse URL, with the embedded default resolved.
    pub fn warehouse_url(&self) -> Result<String> {
        if !self.warehouse.is_empty() {
            return Ok(self.warehouse.trim_end_matches('/').to_string());
        }
        Ok(format!(
            "file://{}",
            absolute(&self.data_dir.join("warehouse"))?.display()
        ))
    }

    /// The catalog URL, with the embedded default resolved.
    pub fn catalog_url(&self) -> Result<String> {
        if !self.catalog.is_empty() {
            return Ok(self.catalog.clone());
        }
        Ok(format!(
            "sqlite://{}",
            absolute(&self.data_dir.join("catalog.db"))?.display()
        ))
    }

    /// The signing key path, with the embedded default resolved.
    pub fn signing_key_path(&self) -> PathBuf {
        if self.auth.signing_key_file.is_empty() {
            self.data_dir.join("signing.key")
        } else {
            PathBuf::from(&self.auth.signing_key_file)
        }
    }

    /// The write-ahead log directory.
    pub fn wal_dir(&self) -> PathBuf {
        self.data_dir.join("wal")
    }
}

/// Makes `path` absolute without requiring it to exist.
fn absolute(path: &Path) -> Result<PathBuf> {
    std::path::absolute(path).map_err(Error::io(path.display().to_string()))
}

fn merge(base: &mut toml::Value, layer: toml::Value) {
    match (base, layer) {
        (toml::Value::Table(b), toml::Value::Table(l)) => {
            for (k, v) in l {
                match b.get_mut(&k) {
                    Some(existing) if existing.is_table() && v.is_table() => merge(existing, v),
                    _ => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (b, l) => *b = l,
    }
}

fn leaf_keys(value: &toml::Value) -> Vec<String> {
    fn walk(prefix: &str, v: &toml::Value, out: &mut Vec<String>) {
        match v {
            toml::Value::Table(t) => {
                for (k, v) in t {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&key, v, out);
                }
            }
            _ => out.push(prefix.to_string()),
        }
    }
    let mut out = Vec::new();
    walk("", value, &mut out);
    out
}

/// Sets a dotted key from its text form, typed like the value it replaces.
fn set_key(root: &mut toml::Value, key: &str, raw: &str) -> Result<()> {
    let unknown = || Error::Config {
        message: format!("unknown configuration key {key}"),
    };
    // `kafka.properties` is a free-form map of librdkafka settings, whose own names hold dots
    // (`security.protocol`): everything after the prefix is one key, the value stays text.
    if let Some(name) = key.strip_prefix("kafka.properties.")
        && !name.is_empty()
    {
        let properties = root
            .get_mut("kafka")
            .and_then(|k| k.get_mut("properties"))
            .and_then(|p| p.as_table_mut())
            .ok_or_else(unknown)?;
        properties.insert(name.to_string(), toml::Value::String(raw.to_string()));
        return Ok(());
    }
    let mut node = root;
    let parts: Vec<&str> = key.split('.').collect();
    for part in &parts[..parts.len() - 1] {
        node = node.get_mut(*part).ok_or_else(unknown)?;
    }
    let last = parts[parts.len() - 1];
    let table = node.as_table_mut().ok_or_else(unknown)?;
    let existing = table.get(last).ok_or_else(unknown)?;
    let bad = |what: &str| Error::Config {
        message: format!("{key} must be {what}, got {raw:?}"),
    };
    let new = match existing {
        toml::Value::Integer(_) => toml::Value::Integer(
            parse_size(raw).ok_or_else(|| bad("an integer (a size may end in KiB/MiB/GiB)"))?,
        ),
        toml::Value::Boolean(_) => {
            toml::Value::Boolean(raw.parse().map_err(|_| bad("true or false"))?)
        }
        toml::Value::Float(_) => toml::Value::Float(raw.parse().map_err(|_| bad("a number"))?),
        toml::Value::Table(_) => return Err(unknown()),
        _ => toml::Value::String(raw.to_string()),
    };
    table.insert(last.to_string(), new);
    Ok(())
}

/// Parses `123`, `64KiB`, `10MiB`, `1GiB`.
fn parse_size(raw: &str) -> Option<i64> {
    let raw = raw.trim();
    let (num, mult) = [("KiB", 1i64 << 10), ("MiB", 1 << 20), ("GiB", 1 << 30)]
        .iter()
        .find_map(|(suffix, m)| raw.strip_suffix(suffix).map(|n| (n.trim(), *m)))
        .unwrap_or((raw, 1));
    num.parse::<i64>().ok()?.checked_mul(mult)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_print() {
        let mut c = Config::load(
            None,
            vec![(
                "FLOE_KAFKA_PROPERTIES_SASL_PASSWORD".to_string(),
                "hunter2-kafka".to_string(),
            )],
            &[
                ("s3.secret_access_key", "hunter2-s3".to_string()),
                ("s3.session_token", "hunter2-token".to_string()),
                (
                    "catalog",
                    "postgres://floe:hunter2-db@h:5432/floe".to_string(),
                ),
            ],
        )
        .unwrap();
        c.kafka
            .properties
            .insert("security.protocol".into(), "SASL_SSL".into());
        let shown = format!("{c:?} {c:#?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("SASL_SSL"), "{shown}");
        assert_eq!(c.s3.secret_access_key.expose(), "hunter2-s3");
        assert_eq!(c.kafka.properties["sasl.password"], "hunter2-kafka");
    }

    #[test]
    fn layers_apply_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("floe.toml");
        std::fs::write(
            &file,
            "listen = \"0.0.0.0:9000\"\n[ingest]\nflush_interval_ms = 100\nmax_event_bytes = 10\n",
        )
        .unwrap();
        let env = vec![
            (
                "FLOE_INGEST_FLUSH_INTERVAL_MS".to_string(),
                "50".to_string(),
            ),
            ("PATH".to_string(), "/bin".to_string()),
        ];
        let c = Config::load(
            Some(&file),
            env,
            &[("ingest.max_event_bytes", "2KiB".into())],
        )
        .unwrap();
        assert_eq!(c.listen, "0.0.0.0:9000");
        assert_eq!(c.ingest.flush_interval_ms, 50);
        assert_eq!(c.ingest.max_event_bytes, 2048);
        assert_eq!(c.ingest.max_request_bytes, 10 << 20);
    }

    #[test]
    fn unknown_keys_and_bad_values_are_errors() {
        let env = vec![("FLOE_NOPE".to_string(), "1".to_string())];
        assert!(
            Config::load(None, env, &[]).is_ok(),
            "unknown variables only warn"
        );
        assert!(Config::load(None, vec![], &[("nope", "1".into())]).is_err());
        let env = vec![("FLOE_INGEST_FLUSH_MAX_ROWS".to_string(), "many".to_string())];
        let err = Config::load(None, env, &[]).unwrap_err().to_string();
        assert!(err.contains("ingest.flush_max_rows"), "{err}");
        assert!(Config::load(None, vec![], &[("ingest.flush_max_rows", "0".into())]).is_err());
    }

    #[test]
    fn kafka_properties_take_any_key() {
        let c = Config::load(
            None,
            vec![],
            &[
                ("kafka.properties.debug", "cgrp".into()),
                // librdkafka's names hold dots: the whole rest is the key.
                ("kafka.properties.security.protocol", "SASL_SSL".into()),
                ("kafka.properties.fetch.wait.max.ms", "500".into()),
            ],
        )
        .unwrap();
        assert_eq!(c.kafka.properties["debug"], "cgrp");
        assert_eq!(c.kafka.properties["security.protocol"], "SASL_SSL");
        assert_eq!(c.kafka.properties["fetch.wait.max.ms"], "500");
        assert_eq!(c.kafka.properties.len(), 3);
        assert!(Config::load(None, vec![], &[("kafka.nope", "1".into())]).is_err());
        assert!(Config::load(None, vec![], &[("kafka.properties.", "1".into())]).is_err());
    }

    #[test]
    fn kafka_properties_from_the_environment() {
        let env = vec![
            (
                "FLOE_KAFKA_PROPERTIES_SASL_PASSWORD".to_string(),
                "s3cret".to_string(),
            ),
            (
                "FLOE_KAFKA_PROPERTIES_SESSION_TIMEOUT_MS".to_string(),
                "30000".to_string(),
            ),
            // `__` keeps an underscore.
            (
                "FLOE_KAFKA_PROPERTIES_PLUGIN__LIBRARY_PATHS".to_string(),
                "x".to_string(),
            ),
        ];
        // Flags still win over the environment.
        let c = Config::load(
            None,
            env,
            &[("kafka.properties.session.timeout.ms", "45000".into())],
        )
        .unwrap();
        assert_eq!(c.kafka.properties["sasl.password"], "s3cret");
        assert_eq!(c.kafka.properties["session.timeout.ms"], "45000");
        assert_eq!(c.kafka.properties["plugin_library.paths"], "x");
        assert_eq!(c.kafka.properties.len(), 3);
        let empty = vec![("FLOE_KAFKA_PROPERTIES_".to_string(), "1".to_string())];
        assert!(Config::load(None, empty, &[]).is_err());
    }

    #[test]
    fn example_configs_in_infra_parse_and_match_the_defaults() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../infra");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                let c = Config::load(Some(&path), vec![], &[]).unwrap();
                if path.ends_with("floe.example.toml") {
                    assert_eq!(c, Config::default());
                }
                seen += 1;
            }
        }
        assert!(seen >= 1);
    }

    #[test]
    fn embedded_defaults_live_under_the_data_dir() {
        let c = Config::load(None, vec![], &[("data_dir", "/tmp/x".into())]).unwrap();
        assert_eq!(c.warehouse_url().unwrap(), "file:///tmp/x/warehouse");
        assert_eq!(c.catalog_url().unwrap(), "sqlite:///tmp/x/catalog.db");
        assert_eq!(c.signing_key_path(), PathBuf::from("/tmp/x/signing.key"));
    }
}
