//! The sections of the configuration, one struct each, with their defaults.

use serde::{Deserialize, Serialize};

use super::secret::{Secret, is_secret_property};

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
    /// Disk one rewrite may have spilled at once (into the process' directory under
    /// `<data_dir>/spill`); past it the rewrite fails, and is tried again next run. 0: nothing
    /// spills, and a rewrite past its memory fails.
    pub spill_total_bytes: u64,
    /// Streams that read and sort one rewrite's files side by side, merged in order into its
    /// output (0: one per core; at most one per 64 MiB of `memory_limit_bytes`, which they
    /// share evenly).
    pub read_parallelism: usize,
    /// Bins of a table rewritten before their files are swapped in, all in one `replace`
    /// snapshot. Each such commit writes a manifest naming every live file of the table, so
    /// fewer commits write less (Iceberg's own rewrite commits once by default); a commit that
    /// loses (another writer replaced an input) loses this many bins' work, redone next run.
    pub bins_per_commit: usize,
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
            spill_total_bytes: 16 << 30,
            read_parallelism: 0,
            bins_per_commit: 16,
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

/// Projections (read models derived from `events`): kept up to date by the process that
/// commits a tenant's events, right after each commit.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ProjectionConfig {
    /// Refresh projections after commits (`false`: they stay as they are until switched back).
    pub enabled: bool,
    /// Shortest time between two refreshes of one tenant: commits arriving meanwhile are
    /// reflected together by the next one.
    pub min_interval_ms: u64,
    /// Memory for what refreshes keep between commits (each day's distinct users), over all
    /// tenants; past it, the least recently used days are dropped and read again when needed.
    pub state_cache_bytes: u64,
    /// Memory for the rows of the files this process just wrote to `events`, kept until the
    /// next refresh takes them so that it need not read those files back (past it the oldest
    /// of the tenant keeping the most go, and rows not taken within 30 s go at the next write;
    /// their files are read instead).
    pub written_rows_bytes: u64,
    /// A projection's snapshots older than this are expired by its refreshes (each refresh is
    /// a snapshot; the newest `keep_snapshots` always stay).
    pub snapshot_max_age_secs: u64,
    /// Snapshots of a projection its own expiry always keeps.
    pub keep_snapshots: u64,
    /// A process refreshing a projection holds its refresh lease for up to this long; another
    /// process refreshes it meanwhile only once the lease runs out (the holder died).
    pub lease_secs: u64,
    /// How often `floe compactor` looks for tenants whose `events` changed (commits of other
    /// processes) and refreshes their projections.
    pub poll_interval_ms: u64,
    /// How long a tenant whose refresh failed waits before the next attempt.
    pub retry_after_ms: u64,
    /// Memory a user-defined projection's refresh of one day takes at most (the event ids seen,
    /// the aggregation's state; aggregations spill to disk past it, a refresh that cannot
    /// fails naming this key). One refresh runs at a time per process.
    pub memory_limit_bytes: u64,
    /// Disk one refresh of a day may have spilled at once (into the process' directory under
    /// `<data_dir>/spill`); past it the refresh fails, and is tried again. 0: nothing spills.
    pub spill_total_bytes: u64,
}

impl Default for ProjectionConfig {
    fn default() -> Self {
        ProjectionConfig {
            enabled: true,
            min_interval_ms: 500,
            state_cache_bytes: 512 << 20,
            written_rows_bytes: 128 << 20,
            snapshot_max_age_secs: 60,
            keep_snapshots: 10,
            lease_secs: 60,
            poll_interval_ms: 1000,
            retry_after_ms: 5000,
            memory_limit_bytes: 512 << 20,
            spill_total_bytes: 16 << 30,
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
    /// A PEM file of certificate authorities the endpoint's certificate may be signed by,
    /// trusted besides the system's (an S3 server with a private CA); empty: the system's only.
    pub ca_file: String,
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
            ca_file: String::new(),
        }
    }
}

/// Ingest limits and batching.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct IngestConfig {
    /// Largest single event, in bytes (413 above).
    pub max_event_bytes: usize,
    /// Each process reads a tenant's event type schemas from the catalog again at most this
    /// often: a version registered is enforced everywhere within it.
    pub schema_refresh_ms: u64,
    /// Largest request body after decompression, in bytes (413 above).
    pub max_request_bytes: usize,
    /// Most events in one request (413 above).
    pub max_events_per_request: usize,
    /// Ingest requests handled at once; more wait for a slot (bounds memory held by bodies).
    pub max_concurrent_requests: usize,
    /// Of those slots, most one tenant may hold at once: a tenant with slow bodies cannot
    /// take every slot; its further requests wait for one of its own.
    pub max_concurrent_requests_per_tenant: usize,
    /// A request waits this long for a slot before 503 with `Retry-After`.
    pub slot_wait_ms: u64,
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
    /// Parquet codec of ingest files: `snappy` (the default), `lz4` (LZ4_RAW), `zstd` (at
    /// `zstd_level`) or `none`. Ingest files are small and compaction rewrites them in ZSTD
    /// (`compaction.zstd_level`); Parquet readers make a ZSTD codec, with its contexts, for
    /// every column chunk they read, which costs more than small chunks take to decompress.
    pub compression: IngestCompression,
    /// Parquet ZSTD level for ingest files (with `compression = "zstd"`).
    pub zstd_level: i32,
}

/// The Parquet codec of ingest files (`ingest.compression`).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum IngestCompression {
    #[default]
    Snappy,
    /// LZ4_RAW.
    Lz4,
    /// At `ingest.zstd_level`.
    Zstd,
    None,
}

impl IngestConfig {
    /// The Parquet codec of ingest files (`ingest.zstd_level` is checked when the configuration
    /// loads).
    pub fn parquet_compression(&self) -> parquet::basic::Compression {
        use parquet::basic::{Compression, ZstdLevel};
        match self.compression {
            IngestCompression::Snappy => Compression::SNAPPY,
            IngestCompression::Lz4 => Compression::LZ4_RAW,
            IngestCompression::Zstd => {
                Compression::ZSTD(ZstdLevel::try_new(self.zstd_level).unwrap_or_default())
            }
            IngestCompression::None => Compression::UNCOMPRESSED,
        }
    }
}

/// Tokens.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// HS256 signing key file. Empty: `<data_dir>/signing.key`, generated on first use (mode 0600).
    pub signing_key_file: String,
    /// Longest lifetime `floe token issue` accepts, in seconds.
    pub max_token_ttl_secs: u64,
    /// Revoked tokens and keys are read again this often by each process: a revocation takes
    /// effect everywhere within it.
    pub revocation_refresh_ms: u64,
    /// An external identity provider's JSON Web Key Set: a file, or an `https://` (or
    /// `http://`) URL, its certificate verified against the system's roots (or
    /// `SSL_CERT_FILE`). Empty: only Floe's own tokens and keys.
    pub jwks: String,
    /// The key set is read again this often (and when a token names a key it lacks).
    pub jwks_refresh_secs: u64,
    /// The `iss` the provider's tokens must carry (empty: not checked).
    pub jwks_issuer: String,
    /// An `aud` the provider's tokens must carry (empty: not checked).
    pub jwks_audience: String,
    /// The claim of the provider's tokens that names the tenant.
    pub jwks_tenant_claim: String,
    /// The claim of the provider's tokens that names the role.
    pub jwks_role_claim: String,
}

/// Query limits.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct QueryConfig {
    /// DataFusion target partitions; 0 means the number of cores.
    pub target_partitions: usize,
    /// A query running longer than this fails with `EXCEEDED_TIME_LIMIT`.
    pub timeout_secs: u64,
    /// Memory one query may hold: its operators, the values its functions make (`range`,
    /// `repeat`, …) and the pages its client has not fetched yet. Past it,
    /// `EXCEEDED_MEMORY_LIMIT`.
    pub memory_limit_bytes: usize,
    /// Memory all running queries share. Each tenant with queries running may hold an equal
    /// share of it; a query that finds the budget held by tenants over their share waits up
    /// to `memory_wait_ms` for them to give it back, then fails with `EXCEEDED_MEMORY_LIMIT`.
    pub memory_total_bytes: usize,
    /// How long a query waits for its tenant's share of `memory_total_bytes`.
    pub memory_wait_ms: u64,
    /// Bytes all running queries may have spilled to disk at once (sorts, aggregations and
    /// joins past their memory limit); the query whose write would pass it fails with
    /// `EXCEEDED_SPILL_LIMIT`. 0: nothing spills, and an operator past its memory limit fails.
    pub spill_total_bytes: u64,
    /// Query work running at once, in steps of a few milliseconds (0: one per core). A free
    /// slot goes to the tenant that has had the least CPU, so a tenant's share of the cores
    /// does not grow with the number of queries it runs.
    pub cpu_slots: usize,
    /// CPU time a tenant returning from idle may take ahead of the busy tenants.
    pub cpu_credit_ms: u64,
    /// How long a query step may keep a slot while another tenant's step waits for one; then
    /// it yields at its next input (a sort or aggregate would otherwise hold it for its whole
    /// input).
    pub cpu_slice_ms: u64,
    /// The nice value given, for the rest of their query, to a query's own threads whose steps
    /// a tenant that has had less CPU goes ahead of, or that start a step while such a tenant
    /// is busy or ran a step within `cpu_behind_window_ms`, so that the operating system runs
    /// its steps first (0: left alone; 1–19; 20: the idle scheduling policy, preempted by any
    /// other thread that wakes).
    pub cpu_behind_nice: i32,
    /// How recently a tenant that has had less CPU must have run a query step for another
    /// tenant's query threads to go behind it (0: only while it is busy); and how long no
    /// tenant must have been busy for the CPU charges to be forgotten (0: a moment).
    pub cpu_behind_window_ms: u64,
    /// Rows one query may return; past it, `EXCEEDED_ROW_LIMIT`.
    pub max_result_rows: u64,
    /// Longest SQL text accepted.
    pub max_sql_bytes: usize,
    /// Deepest nesting the SQL parser accepts (parentheses, subqueries); deeper is refused.
    pub max_sql_depth: usize,
    /// Most operators (`+`, `=`, `AND`, `::`, `[…]`, `IS`, `LIKE`, …), set operations and joins
    /// one statement may hold; more is refused.
    pub max_sql_operators: usize,
    /// Rows per page of the Trino protocol (pages are also cut at about 1 MiB).
    pub page_rows: usize,
    /// A query whose client stops fetching pages is cancelled after this long.
    pub abandoned_after_secs: u64,
    /// Memory for the descriptions of ended queries (SQL text, outcome, figures), shown at
    /// `GET /v1/query/{id}` and the page a query's `infoUri` names; the oldest go first.
    pub history_bytes: usize,
    /// Parquet footers and page indexes kept in memory across queries (all tenants share it;
    /// when full, the tenants holding more than an equal share give way first).
    pub footer_cache_bytes: u64,
    /// Memory for Iceberg manifests kept by the process (shared by all tenants' queries and by
    /// table maintenance; when full, the tenants holding more than an equal share give way
    /// first), as estimated from what each holds: per data file, its path and per-column
    /// statistics and bounds.
    pub manifest_cache_bytes: usize,
}

impl Default for QueryConfig {
    fn default() -> Self {
        QueryConfig {
            target_partitions: 0,
            timeout_secs: 60,
            memory_limit_bytes: 1 << 30,
            memory_total_bytes: 2 << 30,
            memory_wait_ms: 2_000,
            spill_total_bytes: 8 << 30,
            cpu_slots: 0,
            cpu_credit_ms: 1_000,
            cpu_slice_ms: 5,
            cpu_behind_nice: 20,
            cpu_behind_window_ms: 1_000,
            max_result_rows: 1_000_000,
            max_sql_bytes: 1 << 20,
            max_sql_depth: 64,
            max_sql_operators: 1000,
            page_rows: 10_000,
            abandoned_after_secs: 300,
            history_bytes: 4 << 20,
            footer_cache_bytes: 64 << 20,
            manifest_cache_bytes: 128 << 20,
        }
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
            schema_refresh_ms: 2000,
            max_request_bytes: 10 << 20,
            max_events_per_request: 10_000,
            max_concurrent_requests: 64,
            max_concurrent_requests_per_tenant: 16,
            slot_wait_ms: 5_000,
            flush_interval_ms: 250,
            flush_max_rows: 100_000,
            flush_max_bytes: 64 << 20,
            max_buffered_bytes: 512 << 20,
            backpressure_timeout_ms: 5_000,
            wal_segment_bytes: 64 << 20,
            dedup_window_secs: 24 * 3600,
            dedup_max_ids: 20_000_000,
            wait_visible_timeout_ms: 30_000,
            compression: IngestCompression::Snappy,
            zstd_level: 1,
        }
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            signing_key_file: String::new(),
            max_token_ttl_secs: 30 * 24 * 3600,
            revocation_refresh_ms: 500,
            jwks: String::new(),
            jwks_refresh_secs: 300,
            jwks_issuer: String::new(),
            jwks_audience: String::new(),
            jwks_tenant_claim: "tenant".into(),
            jwks_role_claim: "role".into(),
        }
    }
}

/// Connections to the HTTP port (ingest, the Trino protocol, the admin API): what a client
/// that opens connections and never finishes them can hold.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Connections open at once; past it, new ones wait in the kernel's backlog until one
    /// closes.
    pub max_connections: usize,
    /// A request's headers must arrive within this long of its first byte (and a new
    /// connection must send them within it), else the connection is closed.
    pub header_read_timeout_ms: u64,
    /// A kept-alive connection with no request for this long is closed.
    pub keep_alive_idle_secs: u64,
    /// A request body must arrive at this rate at least (after `body_grace_ms`); a slower
    /// one gets 408 and its connection is closed.
    pub body_min_bytes_per_sec: u64,
    /// Time a body may take whatever its rate (a small body on a slow link).
    pub body_grace_ms: u64,
    /// TLS on the port: the certificate chain (PEM). With `tls_key`; empty: plain HTTP.
    pub tls_cert: String,
    /// TLS on the port: the certificate's private key (PEM).
    pub tls_key: String,
    /// How long a request (or a Kafka batch) waits for a catalog read it has a last-known
    /// answer to go on with: revoked tokens, an API key, its tenant, the tenant's event
    /// schemas. Past it the request goes on with that answer and the read finishes in the
    /// background; while the catalog database is known to be down (and with 0), the request
    /// does not wait at all.
    pub catalog_wait_ms: u64,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            max_connections: 4096,
            header_read_timeout_ms: 10_000,
            keep_alive_idle_secs: 60,
            body_min_bytes_per_sec: 64 << 10,
            body_grace_ms: 5_000,
            tls_cert: String::new(),
            tls_key: String::new(),
            catalog_wait_ms: 500,
        }
    }
}

/// The pool of connections to the catalog database, and how long a read of it may take.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct CatalogDbConfig {
    /// Connections one process keeps to the catalog database at most.
    pub max_connections: u32,
    /// How long a query waits for a free connection (or a new one) before it fails as
    /// unavailable: what a caller with nothing to go on with waits during an outage.
    pub acquire_timeout_ms: u64,
    /// A read left to finish in the background (see `http.catalog_wait_ms`) is given up after
    /// this long, so that one stuck on a silent connection does not keep its thing from being
    /// read again.
    pub background_read_limit_ms: u64,
    /// A first read of a thing (a tenant, key, revocation list, schema set) that the database
    /// did not answer is answered with that error, without asking again, for this long
    /// (shorter for a thing read again sooner).
    pub retry_failed_ms: u64,
    /// How often the catalog database and the warehouse are probed (what is down decides
    /// whether a request waits for a catalog read, and is logged on each change).
    pub probe_interval_ms: u64,
    /// A probe (and `/readyz`) not answered within this long finds its dependency down.
    pub probe_timeout_ms: u64,
}

impl Default for CatalogDbConfig {
    fn default() -> Self {
        CatalogDbConfig {
            max_connections: 8,
            acquire_timeout_ms: 10_000,
            background_read_limit_ms: 30_000,
            retry_failed_ms: 500,
            probe_interval_ms: 5_000,
            probe_timeout_ms: 3_000,
        }
    }
}

/// Each tenant's quotas, unless `floe tenant set T --quota NAME=VALUE` overrides one. Rates
/// and amounts of 0 are unlimited. Running servers see overrides within `refresh_secs`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct QuotaConfig {
    /// Events one tenant may ingest per second (a token bucket holding `burst_secs` of it).
    pub ingest_events_per_sec: u64,
    /// Bytes of event JSON one tenant may ingest per second (a token bucket likewise).
    pub ingest_bytes_per_sec: u64,
    /// Seconds of the rate a tenant may send at once after being quiet.
    pub burst_secs: u64,
    /// Queries one tenant may run at once; past it, `QUERY_QUEUE_FULL`.
    pub concurrent_queries: u64,
    /// Queries one tenant may start per minute.
    pub queries_per_minute: u64,
    /// Bytes of data files one tenant's queries may scan per UTC day.
    pub scanned_bytes_per_day: u64,
    /// Bytes of data files one tenant may store (its tables' current snapshots); past it,
    /// ingest answers 429 until compaction, retention or erasure frees space.
    pub stored_bytes: u64,
    /// How often a server reads tenants' quota overrides again.
    pub refresh_secs: u64,
}

impl Default for QuotaConfig {
    fn default() -> Self {
        QuotaConfig {
            ingest_events_per_sec: 1_000_000,
            ingest_bytes_per_sec: 0,
            burst_secs: 2,
            concurrent_queries: 8,
            queries_per_minute: 0,
            scanned_bytes_per_day: 0,
            stored_bytes: 0,
            refresh_secs: 2,
        }
    }
}

/// Prometheus metrics of every Floe process, on an address of their own (never the public
/// port).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Address `/metrics` is served on (`host:port`); empty: no metrics endpoint.
    /// `--metrics-listen` overrides it.
    pub listen: String,
    /// Tenants that get a label of their own in a process's metrics; the figures of tenants
    /// seen after these are summed under `tenant="_other"`, so that the series a scrape holds
    /// stay bounded however many tenants there are.
    pub max_tenant_labels: usize,
}

/// Tenants' alert rules (`floe alert`, `/v1/alerts`): how often `floe serve` evaluates them
/// and how it delivers their notifications.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AlertingConfig {
    /// Seconds between evaluations of every rule; 0: rules are not evaluated by this process.
    pub interval_secs: u64,
    /// Rules one tenant may have (0: no bound).
    pub max_rules_per_tenant: u64,
    /// Attempts at delivering one notification before it is given up (recorded on the rule).
    pub webhook_attempts: u32,
    /// Wait before the second attempt; doubled before each further one (at most a minute).
    pub webhook_backoff_ms: u64,
    /// Time one attempt may take.
    pub webhook_timeout_ms: u64,
    /// Whether webhooks may point at loopback, private, link-local or unspecified addresses
    /// (a tenant's rule would otherwise reach the platform's own network). Off in production;
    /// on for a laptop or a test with a local receiver.
    pub allow_private_webhooks: bool,
}

impl Default for AlertingConfig {
    fn default() -> Self {
        AlertingConfig {
            interval_secs: 30,
            max_rules_per_tenant: 50,
            webhook_attempts: 5,
            webhook_backoff_ms: 1_000,
            webhook_timeout_ms: 5_000,
            allow_private_webhooks: false,
        }
    }
}

/// The audit log (`[audit]`): how its records reach each tenant's `audit` table.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AuditConfig {
    /// Milliseconds between publications of new audit records to the `audit` tables; 0: this
    /// process does not publish (another one does).
    pub publish_interval_ms: u64,
    /// Records waiting to be written to the audit log in batches (refused requests, ended
    /// queries); past it, they are counted and written as one `audit.unitemised` record with
    /// the count.
    pub queue: usize,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            publish_interval_ms: 1_000,
            queue: 10_000,
        }
    }
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            listen: String::new(),
            max_tenant_labels: 100,
        }
    }
}
