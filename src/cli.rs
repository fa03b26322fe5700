//! The command line's shape (clap), and the configuration it selects.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use floe_catalog::Config;

#[derive(Parser)]
#[command(
    name = "floe",
    version,
    about = "Floe: a multi-tenant event lakehouse on Apache Iceberg"
)]
pub struct Cli {
    /// Configuration file (default: ./floe.toml when present). Env: FLOE_CONFIG.
    #[arg(long, global = true, env = "FLOE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Where embedded state lives (warehouse, catalog, write-ahead log, signing key).
    /// Overrides `data_dir` from the file and FLOE_DATA_DIR.
    #[arg(long, global = true)]
    pub data_dir: Option<PathBuf>,
    /// Set any configuration key, e.g. `--set ingest.flush_interval_ms=100` (repeatable).
    #[arg(long = "set", global = true, value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Log lines on stderr: `text` (for people) or `json` (one object per line, with the
    /// request's id and span fields). Env: FLOE_LOG_FORMAT.
    #[arg(long, global = true, env = "FLOE_LOG_FORMAT", default_value = "text")]
    pub log_format: LogFormat,
    /// Send traces to this OpenTelemetry collector over OTLP/HTTP (e.g.
    /// `http://127.0.0.1:4318`; `/v1/traces` is added). Off when not given. Env:
    /// FLOE_OTLP_ENDPOINT.
    #[arg(long, global = true, env = "FLOE_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

/// The shape of log lines.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run everything in one process: HTTP ingest, the commit pipeline, and SQL over the
    /// Trino client protocol.
    Serve {
        /// Address to listen on (config `listen`, default 127.0.0.1:8080).
        #[arg(long)]
        listen: Option<String>,
        /// Start although the write-ahead log is damaged at SEGMENT@OFFSET (as the refusal to
        /// start names it), losing the unreadable records there and keeping the readable
        /// ones after them; recorded in the audit log. Repeatable. See `floe wal check`.
        #[arg(long = "accept-wal-loss", value_name = "SEGMENT@OFFSET")]
        accept_wal_loss: Vec<String>,
        /// Serve Prometheus metrics on this address at /metrics (config `metrics.listen`).
        #[arg(long)]
        metrics_listen: Option<String>,
        /// Serve HTTPS with this certificate chain (PEM; config `http.tls_cert`); read again
        /// on SIGHUP.
        #[arg(long, requires = "tls_key")]
        tls_cert: Option<String>,
        /// The certificate's private key (PEM; config `http.tls_key`).
        #[arg(long, requires = "tls_cert")]
        tls_key: Option<String>,
    },
    /// Inspect the write-ahead log of --data-dir.
    Wal {
        #[command(subcommand)]
        command: WalCommand,
    },
    /// Manage tenants.
    Tenant {
        #[command(subcommand)]
        command: TenantCommand,
    },
    /// Manage tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Manage API keys: long-lived credentials for producers, stored only as a hash.
    Key {
        #[command(subcommand)]
        command: KeyCommand,
    },
    /// Floe's own signing keys (the keys of its tokens; API keys are `floe key`).
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// The audit log: hash-chained records, published to each tenant's `audit` table.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Run a read-only SQL query over one tenant's tables.
    Sql {
        #[arg(long)]
        tenant: String,
        #[arg(long, value_enum, default_value = "table")]
        format: SqlFormat,
        /// The SQL statement.
        sql: String,
    },
    /// Projections (read models derived from the events): their freshness.
    Projection {
        #[command(subcommand)]
        command: ProjectionCommand,
    },
    /// Tenants' alert rules, evaluated by `floe serve` every `alerting.interval_secs`; their
    /// notifications are POSTed to a webhook, signed with the rule's secret.
    Alert {
        #[command(subcommand)]
        command: AlertCommand,
    },
    /// Event type schemas (JSON Schema, draft 2020-12) of a tenant: versions, compatibility.
    Schema {
        #[command(subcommand)]
        command: SchemaCommand,
    },
    /// Send synthetic events to a running Floe and report throughput and time-to-visible.
    Gen(GenArgs),
    /// Maintain tables once: pending erasures, retention, compaction (small files rewritten
    /// into files of `compaction.target_file_bytes`, sorted by (type, ts), as Iceberg `replace`
    /// snapshots), snapshot expiry with garbage collection, orphan files. Safe while ingest
    /// runs; tables another compactor holds are skipped.
    Compact {
        /// Only this tenant (default: every tenant).
        #[arg(long)]
        tenant: Option<String>,
        /// Print what would be rewritten, expired and deleted; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Print each table's last maintenance run and current lease holder; change nothing.
        #[arg(long, conflicts_with = "dry_run")]
        status: bool,
    },
    /// Fill a promoted property's column (`"x-floe-promote": true` in a registered schema) in
    /// the files of `events` written before it was promoted, by rewriting them (Iceberg
    /// `replace` snapshots, safe while ingest runs; run it again if it reports bins left).
    Backfill {
        #[arg(long)]
        tenant: String,
        /// The promoted column to fill.
        #[arg(long)]
        promote: String,
    },
    /// Run table maintenance as a service: erasures every few seconds, everything else every
    /// `compaction.interval_secs`. Run several: per-table leases share the work.
    Compactor {
        /// Serve Prometheus metrics on this address at /metrics (config `metrics.listen`).
        #[arg(long)]
        metrics_listen: Option<String>,
    },
    /// Ingest from a source other than HTTP.
    Ingest {
        #[command(subcommand)]
        command: IngestCommand,
    },
    /// Records that could not become events. They are in the tenant's `events_dlq` table:
    /// `floe sql --tenant T --format json 'SELECT * FROM events_dlq'` lists them.
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
}

#[derive(Subcommand)]
pub enum IngestCommand {
    /// Consume tenant topics (`kafka.topic_pattern`) as a member of consumer group
    /// `kafka.group` and commit them to the tenants' tables exactly once. Run several: the
    /// group shares the partitions.
    Kafka {
        /// Bootstrap servers (config `kafka.brokers`).
        #[arg(long)]
        brokers: Option<String>,
        /// Consumer group (config `kafka.group`, default floe-ingest).
        #[arg(long)]
        group: Option<String>,
        /// Topics to consume; the first capture group is the tenant id (config
        /// `kafka.topic_pattern`, default `^tenant-(.+)\.events$`).
        #[arg(long)]
        topic_pattern: Option<String>,
        /// Serve Prometheus metrics on this address at /metrics (config `metrics.listen`).
        #[arg(long)]
        metrics_listen: Option<String>,
    },
}

#[derive(Subcommand)]
pub enum WalCommand {
    /// Read every segment and report records, torn tails and damage; changes nothing. Exits
    /// non-zero when the log is damaged (`floe serve` would refuse to start).
    Check,
}

#[derive(Subcommand)]
pub enum DlqCommand {
    /// Re-submit fixed events to the tenant's topic: JSON lines from --file (e.g. `floe dlq
    /// list` output with each `payload` corrected), each line's `payload` (or the line itself
    /// when it has none) being one event. Lines that still fail validation are reported and
    /// not sent.
    Replay {
        #[arg(long)]
        tenant: String,
        /// JSON lines to send; `-` reads standard input.
        #[arg(long)]
        file: PathBuf,
    },
}

#[derive(Subcommand)]
pub enum TenantCommand {
    /// Create a tenant (its namespace and events table).
    Create { id: String },
    /// List tenants with their settings.
    List,
    /// Change a tenant's settings.
    Set {
        id: String,
        /// Keep this many days of events (by event time, UTC); `none`: forever.
        #[arg(long)]
        retention_days: Option<String>,
        /// Compaction target size for this tenant's files, in bytes; `none`: the default.
        #[arg(long)]
        target_file_bytes: Option<String>,
        /// Payload fields that name a user, besides `user_id` (comma-separated, e.g.
        /// `payload.customer_id,payload.buyer.id`): user erasure also removes the rows where
        /// one of them equals an erased id. `none` clears them.
        #[arg(long, alias = "user-field", value_name = "FIELDS")]
        user_fields: Option<String>,
        /// Override a quota: `NAME=VALUE` (0: unlimited; `default`: back to `[quota]`'s
        /// value). Names: ingest_events_per_sec, ingest_bytes_per_sec, concurrent_queries,
        /// queries_per_minute, scanned_bytes_per_day, stored_bytes. Repeat for several.
        /// Running servers apply it within `quota.refresh_secs`.
        #[arg(long = "quota", value_name = "NAME=VALUE")]
        quotas: Vec<String>,
        /// Switch a built-in projection on or off: `NAME=on|off` (e.g.
        /// `daily_active_users=off`). Off drops its table; on creates it again, filled by a
        /// replay of the events. Repeat for several.
        #[arg(long = "projection", value_name = "NAME=on|off")]
        projections: Vec<String>,
        /// What ingest does with events of a type (or a version of a type) that has no
        /// registered schema: `accept` (stored unchecked; the default), `reject`
        /// (`unknown_type` in the reply, dead-lettered from Kafka) or `dead_letter` (kept in
        /// the tenant's `events_dlq`, over HTTP too).
        #[arg(long, value_name = "accept|reject|dead_letter")]
        unknown_types: Option<String>,
    },
    /// Show a tenant: its settings, its quotas (default or its own) and today's usage.
    Show { id: String },
    /// Delete a tenant: its namespace and tables leave the catalog and its tokens stop
    /// working at once.
    Delete {
        id: String,
        /// Also delete every object under the tenant's prefix in the warehouse (erasure).
        #[arg(long)]
        purge: bool,
    },
}

#[derive(Subcommand)]
pub enum SchemaCommand {
    /// Register a version of an event type's schema: checked to be a JSON Schema (draft
    /// 2020-12) and to keep the type's compatibility mode with the version before; refused
    /// with the reasons otherwise. Versions are consecutive; registering the same schema again
    /// changes nothing.
    Register {
        #[arg(long)]
        tenant: String,
        #[arg(long = "type")]
        type_name: String,
        #[arg(long)]
        version: i32,
        /// The schema, a JSON file (`-`: standard input).
        #[arg(long)]
        file: String,
        /// Set the type's compatibility mode first: backward (the default), forward, full
        /// or none.
        #[arg(long)]
        compatibility: Option<String>,
    },
    /// Check a schema as the next version of a type without registering it; exits non-zero
    /// with the reasons if it would be refused (for producers' CI).
    Check {
        #[arg(long)]
        tenant: String,
        #[arg(long = "type")]
        type_name: String,
        #[arg(long)]
        file: String,
        /// Check against this mode instead of the type's.
        #[arg(long)]
        compatibility: Option<String>,
    },
    /// Each type's versions and compatibility mode.
    List {
        #[arg(long)]
        tenant: String,
    },
    /// One version of a type's schema (the latest if no version is given), as JSON.
    Show {
        #[arg(long)]
        tenant: String,
        #[arg(long = "type")]
        type_name: String,
        #[arg(long)]
        version: Option<i32>,
    },
}

#[derive(Subcommand)]
pub enum ProjectionCommand {
    /// Each projection of the tenant: the events snapshot it reflects, its lag behind the
    /// events (in events and in seconds), when it last refreshed and its rows.
    List {
        #[arg(long)]
        tenant: String,
    },
    /// One projection, the same figures one per line.
    Show {
        #[arg(long)]
        tenant: String,
        name: String,
    },
    /// Create a user-defined projection: read-only SQL over `events` whose output has a `day`
    /// column that is a GROUP BY key derived from ts (e.g. `SELECT CAST(ts AS DATE) AS day,
    /// …, count(*) AS n FROM events WHERE … GROUP BY 1, …`); refused naming the problem
    /// otherwise. Filled from all events at once, then refreshed like the built-ins.
    Create {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        name: String,
        #[arg(long)]
        sql: String,
        /// Replace the definition of an existing projection: it is rebuilt by the new one
        /// (rows and columns) in one commit; the old one's snapshots stay readable by time
        /// travel until they expire.
        #[arg(long)]
        replace: bool,
    },
    /// Drop a user-defined projection: its definition, its table and its files.
    Drop {
        #[arg(long)]
        tenant: String,
        name: String,
    },
    /// Recompute a projection from all events (at an events snapshot still in their history,
    /// or the current one) in one commit, then catch up with what came after. Readers see the
    /// old rows until the new ones are committed. Safe while `serve` runs.
    Rebuild {
        #[arg(long)]
        tenant: String,
        name: String,
        #[arg(long)]
        at_snapshot: Option<i64>,
    },
}

#[derive(Subcommand)]
pub enum AlertCommand {
    /// Create a rule. Kinds: rate_drop (events in the window below THRESHOLD times the window
    /// before; default 0.5), no_events (none in the window), lag (a projection or the Kafka
    /// topic more than THRESHOLD seconds behind; default 60), rejections (more than THRESHOLD %
    /// of the window's events rejected; default 5), sql (the first value of --sql's first row
    /// above THRESHOLD).
    Create {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        name: String,
        #[arg(long, value_parser = ["rate_drop", "no_events", "lag", "rejections", "sql"])]
        kind: String,
        #[arg(long)]
        threshold: Option<f64>,
        /// 90s, 5m, 1h, 1d (at least a minute, at most 7 days).
        #[arg(long, default_value = "5m")]
        window: String,
        /// Where notifications are POSTed (http or https).
        #[arg(long)]
        webhook: String,
        /// Signs each notification: `X-Floe-Signature: sha256=<hex HMAC-SHA256 of the body>`
        /// (at least 16 characters).
        #[arg(long, env = "FLOE_ALERT_SECRET", hide_env_values = true)]
        secret: String,
        /// The query of a `sql` rule (read-only, over the tenant's tables).
        #[arg(long)]
        sql: Option<String>,
    },
    /// List a tenant's rules with their state (JSON lines).
    List {
        #[arg(long)]
        tenant: String,
    },
    /// Delete a rule.
    Delete {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        name: String,
    },
}

#[derive(Subcommand)]
pub enum TokenCommand {
    /// Issue a token; prints only the token. Every role but `operator` (the platform's, for
    /// the operator routes and page) needs a tenant; `operator` takes none.
    Issue {
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long, value_parser = ["ingest", "viewer", "analyst", "admin", "operator"])]
        role: String,
        /// Lifetime: 90s, 15m, 1h, 7d.
        #[arg(long, default_value = "1h")]
        ttl: String,
    },
    /// Revoke a tenant's token by its id (`jti`): refused by every process within
    /// `auth.revocation_refresh_ms`.
    Revoke {
        #[arg(long)]
        tenant: String,
        jti: String,
    },
}

#[derive(Subcommand)]
pub enum KeysCommand {
    /// Add a new signing key, which signs from now on (running servers read it within a
    /// second); the keys before it still verify the tokens they signed for --old-valid-for
    /// (default: auth.max_token_ttl_secs, the longest a token can live), then are refused, and
    /// dropped at the next rotation.
    Rotate {
        #[arg(long)]
        old_valid_for: Option<String>,
    },
}

#[derive(Subcommand)]
pub enum AuditCommand {
    /// Walk a chain from its first record (the audit table, then the records not yet
    /// published) and name the first link that does not hold; exits 1 if one does not.
    Verify {
        /// The tenant's chain.
        #[arg(
            long,
            conflicts_with = "platform",
            required_unless_present = "platform"
        )]
        tenant: Option<String>,
        /// The platform's chain (what belongs to no tenant).
        #[arg(long)]
        platform: bool,
    },
    /// Publish the records not yet in the audit tables now (`floe serve` does it every
    /// `audit.publish_interval_ms`).
    Publish,
}

#[derive(Subcommand)]
pub enum KeyCommand {
    /// Make an API key for a tenant; prints the key (the only time it is shown), then its id.
    Create {
        #[arg(long)]
        tenant: String,
        #[arg(long, value_parser = ["ingest", "viewer", "analyst", "admin"])]
        role: String,
        /// Expires after this long (30d, 12h, …); default: never.
        #[arg(long)]
        expires_in: Option<String>,
        /// Event types the key may send (comma-separated); default: any.
        #[arg(long, value_delimiter = ',')]
        event_types: Vec<String>,
    },
    /// List a tenant's keys (JSON lines; never their secrets).
    List {
        #[arg(long)]
        tenant: String,
    },
    /// Revoke a key (by its id or prefix): refused by every process within
    /// `auth.revocation_refresh_ms`.
    Revoke {
        #[arg(long)]
        tenant: String,
        id: String,
    },
}

#[derive(Clone, Copy, ValueEnum)]
pub enum SqlFormat {
    Table,
    Csv,
    Json,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum GenFormat {
    Json,
    Ndjson,
    Gzip,
    Mixed,
}

#[derive(Args)]
pub struct GenArgs {
    /// Base URL of the Floe server.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// Comma-separated tenants; created if missing (needs the server's --data-dir, whose
    /// signing key also mints the ingest tokens).
    #[arg(long, default_value = "demo")]
    pub tenants: String,
    /// Distinct events per tenant.
    #[arg(long, default_value_t = 100_000)]
    pub events: usize,
    /// Events per request.
    #[arg(long, default_value_t = 500)]
    pub batch: usize,
    /// Requests in flight.
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    /// Fraction of events re-sent with the same event_id.
    #[arg(long, default_value_t = 0.01)]
    pub duplicates: f64,
    #[arg(long, value_enum, default_value = "mixed")]
    pub format: GenFormat,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Skip the time-to-visible probe.
    #[arg(long)]
    pub no_probe: bool,
    /// Event times fall within this many seconds before now (default three days: late and
    /// out of order).
    #[arg(long, default_value_t = 3 * 86_400)]
    pub ts_spread_secs: i64,
    /// Send at most this many events per second (default: as fast as the server takes them).
    #[arg(long)]
    pub rate: Option<f64>,
}

pub fn load_config(cli: &Cli, listen: Option<&String>) -> anyhow::Result<Config> {
    load_config_with(cli, listen, &[])
}

/// The `metrics.listen` flag of a service's `--metrics-listen`.
pub fn metrics_flag(listen: &Option<String>) -> Vec<String> {
    listen
        .iter()
        .map(|l| format!("metrics.listen={l}"))
        .collect()
}

/// `floe serve`'s TLS flags as config settings.
pub fn tls_flags(cert: &Option<String>, key: &Option<String>) -> Vec<String> {
    cert.iter()
        .map(|c| format!("http.tls_cert={c}"))
        .chain(key.iter().map(|k| format!("http.tls_key={k}")))
        .collect()
}

/// Like [`load_config`], with a command's own flags (`key=value`) applied over `--set`.
pub fn load_config_with(
    cli: &Cli,
    listen: Option<&String>,
    extra: &[String],
) -> anyhow::Result<Config> {
    let mut overrides: Vec<(&str, String)> = Vec::new();
    if let Some(d) = &cli.data_dir {
        overrides.push(("data_dir", d.display().to_string()));
    }
    if let Some(l) = listen {
        overrides.push(("listen", l.clone()));
    }
    for kv in cli.set.iter().chain(extra) {
        let (k, v) = kv
            .split_once('=')
            .with_context(|| format!("--set {kv:?}: expected KEY=VALUE"))?;
        overrides.push((k, v.to_string()));
    }
    Ok(Config::from_env(cli.config.as_deref(), &overrides)?)
}
