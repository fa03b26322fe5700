//! The `floe` command line. It parses arguments and calls into the library crates.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use floe_catalog::{Authenticator, Catalog, Config, Role, TenantId, TokenAuthority};
use floe_ingest::Ingest;
use floe_ingest::http::HttpState;
use floe_ingest::loadgen::{Format, GenOptions};
use floe_query::trino::TrinoState;
use floe_query::{Engine, OutputFormat};

#[derive(Parser)]
#[command(
    name = "floe",
    version,
    about = "Floe: a multi-tenant event lakehouse on Apache Iceberg"
)]
struct Cli {
    /// Configuration file (default: ./floe.toml when present). Env: FLOE_CONFIG.
    #[arg(long, global = true, env = "FLOE_CONFIG")]
    config: Option<PathBuf>,
    /// Where embedded state lives (warehouse, catalog, write-ahead log, signing key).
    /// Overrides `data_dir` from the file and FLOE_DATA_DIR.
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    /// Set any configuration key, e.g. `--set ingest.flush_interval_ms=100` (repeatable).
    #[arg(long = "set", global = true, value_name = "KEY=VALUE")]
    set: Vec<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
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
    /// Run a read-only SQL query over one tenant's tables.
    Sql {
        #[arg(long)]
        tenant: String,
        #[arg(long, value_enum, default_value = "table")]
        format: SqlFormat,
        /// The SQL statement.
        sql: String,
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
    /// Run table maintenance as a service: erasures every few seconds, everything else every
    /// `compaction.interval_secs`. Run several: per-table leases share the work.
    Compactor,
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
enum IngestCommand {
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
        /// Serve the worker's metrics (Prometheus text) on this address at /metrics.
        #[arg(long)]
        metrics_listen: Option<String>,
    },
}

#[derive(Subcommand)]
enum WalCommand {
    /// Read every segment and report records, torn tails and damage; changes nothing. Exits
    /// non-zero when the log is damaged (`floe serve` would refuse to start).
    Check,
}

#[derive(Subcommand)]
enum DlqCommand {
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
enum TenantCommand {
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
    },
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
enum TokenCommand {
    /// Issue a token; prints only the token.
    Issue {
        #[arg(long)]
        tenant: String,
        #[arg(long, value_parser = ["ingest", "viewer", "analyst", "admin"])]
        role: String,
        /// Lifetime: 90s, 15m, 1h, 7d.
        #[arg(long, default_value = "1h")]
        ttl: String,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum SqlFormat {
    Table,
    Csv,
    Json,
}

#[derive(Clone, Copy, ValueEnum)]
enum GenFormat {
    Json,
    Ndjson,
    Gzip,
    Mixed,
}

#[derive(Args)]
struct GenArgs {
    /// Base URL of the Floe server.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Comma-separated tenants; created if missing (needs the server's --data-dir, whose
    /// signing key also mints the ingest tokens).
    #[arg(long, default_value = "demo")]
    tenants: String,
    /// Distinct events per tenant.
    #[arg(long, default_value_t = 100_000)]
    events: usize,
    /// Events per request.
    #[arg(long, default_value_t = 500)]
    batch: usize,
    /// Requests in flight.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Fraction of events re-sent with the same event_id.
    #[arg(long, default_value_t = 0.01)]
    duplicates: f64,
    #[arg(long, value_enum, default_value = "mixed")]
    format: GenFormat,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Skip the time-to-visible probe.
    #[arg(long)]
    no_probe: bool,
}

fn main() -> std::process::ExitCode {
    match real_main() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // The message and its causes on one line, each cause only where it adds something
            // (some errors repeat their source in their own message); no backtrace for users.
            let mut line = String::new();
            for cause in e.chain().map(|c| c.to_string()) {
                if !line.contains(&cause) {
                    if !line.is_empty() {
                        line.push_str(": ");
                    }
                    line.push_str(&cause);
                }
            }
            eprintln!("error: {line}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn real_main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                // PostgreSQL notices ("relation … already exists, skipping") and object_store retries are
                // not news: Floe logs dependency state changes itself.
                .unwrap_or_else(|_| {
                    tracing_subscriber::EnvFilter::new(
                        "info,sqlx::postgres::notice=warn,object_store::client::retry=warn",
                    )
                }),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    // SQL parsing and planning walk expression trees recursively; query.max_sql_depth and
    // query.max_sql_operators bound their depth, and this stack fits the deepest they allow
    // (reserved address space; only what is touched becomes memory).
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("floe-io")
        .thread_stack_size(floe_query::trino::SQL_STACK_BYTES)
        .build()?;
    // Parquet encoding and commits run on their own threads, away from request handling.
    // Owned here, outside any async context, so that it can be shut down (and dropped) safely.
    let flush_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("floe-flush")
        .enable_all()
        .build()?;
    // `block_on` runs `floe sql` on this thread: give it the same stack as the workers.
    let flush = flush_runtime.handle().clone();
    let result = std::thread::Builder::new()
        .name("floe-main".into())
        .stack_size(floe_query::trino::SQL_STACK_BYTES)
        .spawn(move || runtime.block_on(run(cli, flush)))?
        .join()
        .map_err(|_| anyhow::anyhow!("the main thread panicked"))?;
    flush_runtime.shutdown_timeout(Duration::from_secs(2));
    result
}

fn load_config(cli: &Cli, listen: Option<&String>) -> anyhow::Result<Config> {
    load_config_with(cli, listen, &[])
}

/// Like [`load_config`], with a command's own flags (`key=value`) applied over `--set`.
fn load_config_with(
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

async fn run(cli: Cli, flush: tokio::runtime::Handle) -> anyhow::Result<()> {
    match &cli.command {
        Command::Serve {
            listen,
            accept_wal_loss,
        } => serve(load_config(&cli, listen.as_ref())?, flush, accept_wal_loss).await,
        Command::Wal {
            command: WalCommand::Check,
        } => wal_check(&load_config(&cli, None)?),
        Command::Tenant { command } => {
            let config = load_config(&cli, None)?;
            let catalog = Catalog::open(&config).await?;
            match command {
                TenantCommand::Create { id } => {
                    let id = TenantId::parse(id)?;
                    let mut properties = Vec::new();
                    if !config.kafka.brokers.is_empty() {
                        let producer = floe_ingest::produce::Producer::new(&config)?;
                        if let Err(e) = producer.create_topic(&id).await {
                            tracing::warn!(tenant = %id, error = %e, "could not create the tenant's topic");
                        }
                        // The new tenant's table reads its topic from where it ends now: what
                        // an earlier tenant with this id left there is not this tenant's.
                        let ends = producer.end_offsets(&id).await.with_context(|| {
                            format!("reading where topic {} ends", producer.topic(&id))
                        })?;
                        properties.push(floe_catalog::table::kafka_start_property(
                            &producer.topic(&id),
                            &ends,
                        ));
                    }
                    catalog.create_tenant_with(&id, "cli", properties).await?;
                    println!("{id}");
                }
                TenantCommand::List => {
                    for t in catalog.list_tenants().await? {
                        let mut line = t.id.clone();
                        if let Some(d) = t.retention_days {
                            line.push_str(&format!("\tretention_days={d}"));
                        }
                        if let Some(b) = t.target_file_bytes {
                            line.push_str(&format!("\ttarget_file_bytes={b}"));
                        }
                        if !t.user_fields.is_empty() {
                            line.push_str(&format!("\tuser_fields={}", t.user_fields.join(",")));
                        }
                        println!("{line}");
                    }
                }
                TenantCommand::Set {
                    id,
                    retention_days,
                    target_file_bytes,
                    user_fields,
                } => {
                    let id = TenantId::parse(id)?;
                    let settings = floe_catalog::TenantSettings {
                        retention_days: optional_number("--retention-days", retention_days)?,
                        target_file_bytes: optional_number(
                            "--target-file-bytes",
                            target_file_bytes,
                        )?,
                        user_fields: user_fields.as_ref().map(|f| match f.trim() {
                            "none" | "" => Vec::new(),
                            list => list.split(',').map(str::to_string).collect(),
                        }),
                    };
                    let t = catalog.set_tenant_settings(&id, settings, "cli").await?;
                    println!("{}", serde_json::to_string(&t)?);
                }
                TenantCommand::Delete { id, purge } => {
                    let id = TenantId::parse(id)?;
                    let done = catalog.delete_tenant(&id, *purge, "cli").await?;
                    if *purge {
                        println!(
                            "{id}: deleted{}; {} objects purged from the warehouse",
                            if done.existed {
                                ""
                            } else {
                                " (was already gone)"
                            },
                            done.objects_deleted
                        );
                    } else {
                        println!(
                            "{id}: deleted from the catalog; its files stay in the warehouse \
                             (run again with --purge to delete them)"
                        );
                    }
                }
            }
            Ok(())
        }
        Command::Token {
            command: TokenCommand::Issue { tenant, role, ttl },
        } => {
            let config = load_config(&cli, None)?;
            let catalog = Catalog::open(&config).await?;
            let tenant = TenantId::parse(tenant)?;
            if !catalog.tenant_exists(&tenant).await? {
                bail!(
                    "tenant {tenant} does not exist (create it with `floe tenant create {tenant}`)"
                );
            }
            let ttl = floe_catalog::auth::parse_ttl(ttl)?;
            if ttl.as_secs() > config.auth.max_token_ttl_secs {
                bail!(
                    "--ttl exceeds auth.max_token_ttl_secs ({} s)",
                    config.auth.max_token_ttl_secs
                );
            }
            let role: Role = role.parse()?;
            let authority = TokenAuthority::load_or_create(&config.signing_key_path())?;
            let token = authority.issue(&tenant, role, ttl)?;
            catalog
                .audit(
                    "cli",
                    Some(tenant.as_str()),
                    "token.issue",
                    &format!(
                        "{{\"role\":\"{}\",\"ttl_secs\":{}}}",
                        role.as_str(),
                        ttl.as_secs()
                    ),
                )
                .await?;
            println!("{token}");
            Ok(())
        }
        Command::Sql {
            tenant,
            format,
            sql,
        } => {
            let config = load_config(&cli, None)?;
            let catalog = Catalog::open(&config).await?;
            let tenant = TenantId::parse(tenant)?;
            if !catalog.tenant_exists(&tenant).await? {
                bail!("tenant {tenant} does not exist");
            }
            let engine = Engine::new(catalog, config.query.clone());
            let (schema, batches) = engine.sql(&tenant, sql).await?;
            let format = match format {
                SqlFormat::Table => OutputFormat::Table,
                SqlFormat::Csv => OutputFormat::Csv,
                SqlFormat::Json => OutputFormat::Json,
            };
            let text = floe_query::render(&schema, &batches, format)?;
            print!("{text}");
            if format == OutputFormat::Table {
                println!();
            }
            Ok(())
        }
        Command::Gen(args) => generate(load_config(&cli, None)?, args).await,
        Command::Compact {
            status: true,
            tenant,
            ..
        } => {
            let catalog = Catalog::open(&load_config(&cli, None)?).await?;
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_millis() as i64;
            for r in catalog.maintenance_records().await? {
                if tenant.as_ref().is_some_and(|t| *t != r.tenant) {
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
        Command::Compact {
            tenant, dry_run, ..
        } => compact(load_config(&cli, None)?, tenant.as_deref(), *dry_run).await,
        Command::Compactor => {
            let config = load_config(&cli, None)?;
            let catalog = Catalog::open(&config).await?;
            let compactor = floe_compactor::Compactor::new(catalog, config.compaction.clone());
            if config.compaction.interval_secs == 0 {
                bail!(
                    "compaction.interval_secs is 0 (schedule off): set it above 0 for `floe compactor`, or run `floe compact` once"
                );
            }
            let holder = holder_name("compactor");
            tracing::info!(%holder, interval_secs = config.compaction.interval_secs, "compactor running");
            floe_compactor::maintain::run_schedule(compactor, holder, shutdown_signal()).await;
            Ok(())
        }
        Command::Ingest {
            command:
                IngestCommand::Kafka {
                    brokers,
                    group,
                    topic_pattern,
                    metrics_listen,
                },
        } => {
            let mut cli_set = Vec::new();
            for (key, v) in [
                ("kafka.brokers", brokers),
                ("kafka.group", group),
                ("kafka.topic_pattern", topic_pattern),
            ] {
                if let Some(v) = v {
                    cli_set.push(format!("{key}={v}"));
                }
            }
            let config = load_config_with(&cli, None, &cli_set)?;
            ingest_kafka(config, metrics_listen.as_deref()).await
        }
        Command::Dlq { command } => {
            let config = load_config(&cli, None)?;
            let catalog = Catalog::open(&config).await?;
            match command {
                DlqCommand::Replay { tenant, file } => {
                    let tenant = TenantId::parse(tenant)?;
                    let text = if file.as_os_str() == "-" {
                        std::io::read_to_string(std::io::stdin())?
                    } else {
                        std::fs::read_to_string(file)
                            .with_context(|| format!("reading {}", file.display()))?
                    };
                    let Some(tenant) = catalog.tenant_key(&tenant).await? else {
                        bail!("tenant {tenant} does not exist");
                    };
                    let producer = floe_ingest::produce::Producer::new(&config)?;
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
            }
        }
    }
}

/// `floe ingest kafka`: one consumer-group member until SIGTERM or Ctrl-C.
async fn ingest_kafka(config: Config, metrics_listen: Option<&str>) -> anyhow::Result<()> {
    // Signals first: a SIGTERM while connecting still means a clean stop.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stop_tx.send(true);
    });
    let catalog = Catalog::open(&config).await?;
    let worker = floe_ingest::kafka::Worker::new(catalog, &config)?;
    if let Some(addr) = metrics_listen {
        let render = std::sync::Arc::new(worker.metrics_source());
        let app = axum::Router::new().route(
            "/metrics",
            axum::routing::get(move || {
                let render = render.clone();
                async move { render() }
            }),
        );
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding {addr}"))?;
        tracing::info!(listen = %listener.local_addr()?, "kafka worker metrics at /metrics");
        tokio::spawn(async move { axum::serve(listener, app).await });
    }
    worker.run(stop_rx, Duration::from_secs(10)).await?;
    Ok(())
}

/// `floe wal check`: what is in the write-ahead log; fails when it is damaged.
fn wal_check(config: &Config) -> anyhow::Result<()> {
    let dir = config.wal_dir();
    if !dir.exists() {
        println!("{}: no write-ahead log", dir.display());
        return Ok(());
    }
    let (scan, in_use) = floe_ingest::wal::Wal::check(&dir)?;
    if in_use {
        println!(
            "{}: in use by a running process (its last record may be mid-write)",
            dir.display()
        );
    }
    for s in &scan.segments {
        println!(
            "{}\tfirst {}\t{} records\t{} bytes",
            s.segment, s.first_lsn, s.records, s.bytes
        );
        if let Some((offset, bytes)) = s.torn_tail {
            println!(
                "  torn tail at offset {offset} ({bytes} bytes, never acknowledged): cut on the next start"
            );
        }
        for d in &s.damage {
            println!("  DAMAGED: {d}");
        }
    }
    println!(
        "{} records readable; next sequence number {}",
        scan.records.len(),
        scan.next_lsn
    );
    let damage: Vec<String> = scan.damage().map(|d| d.token()).collect();
    if !damage.is_empty() {
        bail!(
            "the log is damaged: `floe serve` refuses to start; to start anyway, losing the \
             unreadable records: floe serve --accept-wal-loss {}",
            damage.join(" --accept-wal-loss ")
        );
    }
    Ok(())
}

async fn serve(
    config: Config,
    flush: tokio::runtime::Handle,
    accept_wal_loss: &[String],
) -> anyhow::Result<()> {
    let catalog = Catalog::open(&config).await?;
    let authority = TokenAuthority::load_or_create(&config.signing_key_path())?;
    let ingest =
        Ingest::start_accepting_loss(catalog.clone(), &config, flush, accept_wal_loss).await?;
    let auth = Authenticator::new(authority, catalog.clone());
    let producer = if config.kafka.brokers.is_empty() {
        None
    } else {
        tracing::info!(brokers = %config.kafka.brokers, topics = %config.kafka.topic_template, "Kafka mode: accepted events are produced to tenant topics");
        Some(std::sync::Arc::new(floe_ingest::produce::Producer::new(
            &config,
        )?))
    };
    let state = HttpState {
        ingest: ingest.clone(),
        auth: auth.clone(),
        producer,
    };
    let engine = Engine::new(catalog, config.query.clone());
    // One port: ingest, health, and the Trino protocol for SQL clients.
    let app = floe_ingest::http::router(state)
        .merge(floe_query::trino::router(TrinoState::new(engine, auth)));
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
    // Probes the catalog database and the warehouse, logging once per change of what is down
    // (the same probe answers `/readyz`).
    let probe = ingest.catalog().clone();
    tokio::spawn(async move {
        loop {
            probe.unavailable(Duration::from_secs(3)).await;
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
    });
    if config.compaction.interval_secs > 0 {
        let compactor =
            floe_compactor::Compactor::new(ingest.catalog().clone(), config.compaction.clone());
        let holder = holder_name("serve");
        tokio::spawn(floe_compactor::maintain::run_schedule(
            compactor,
            holder,
            std::future::pending(),
        ));
    }
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await?;
    tracing::info!("shutting down: committing buffered events");
    ingest.shutdown(Duration::from_secs(10)).await;
    Ok(())
}

async fn shutdown_signal() {
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

async fn generate(config: Config, args: &GenArgs) -> anyhow::Result<()> {
    let catalog = Catalog::open(&config).await?;
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
    let report = floe_ingest::loadgen::run(GenOptions {
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
    })
    .await?;
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

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
}

/// `floe compact`: one pass over the tenants' tables, a line per rewritten bin, then totals.
async fn compact(config: Config, tenant: Option<&str>, dry_run: bool) -> anyhow::Result<()> {
    use floe_compactor::maintain::{Options, Progress};
    let catalog = Catalog::open(&config).await?;
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
    let compactor = floe_compactor::Compactor::new(catalog.clone(), config.compaction.clone());
    let holder = holder_name("compact");
    let started = std::time::Instant::now();
    if !dry_run {
        let erased = compactor.run_erasures(tenants.as_deref(), &holder).await?;
        if erased > 0 {
            println!("{erased} erasure requests completed and verified");
        }
    }
    let mut print = |p: Progress<'_>| match p {
        Progress::Leased { tenant, table } => {
            println!("{tenant}.{table}: skipped, another compactor holds it")
        }
        Progress::Retention {
            tenant,
            table,
            days,
            done,
        } => {
            if done.files > 0 {
                println!(
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
                )
            }
        }
        Progress::Plan {
            tenant,
            table,
            plan,
            seconds,
        } => {
            let in_bins: usize = plan.bins.iter().map(|b| b.files.len()).sum();
            let bytes_in_bins: u64 = plan.bins.iter().map(|b| b.bytes()).sum();
            println!(
                "{tenant}.{table}: {} files ({}) in {} partitions; {} bins of {in_bins} files ({}) to rewrite ({seconds:.1} s to plan)",
                plan.files,
                mib(plan.bytes),
                plan.partitions,
                plan.bins.len(),
                mib(bytes_in_bins)
            );
        }
        Progress::WouldRewrite { bin } => println!(
            "  would rewrite {} files ({}, {} rows)",
            bin.files.len(),
            mib(bin.bytes()),
            bin.rows()
        ),
        Progress::Bin { index, of, done: r } => println!(
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
                " (not committed: inputs changed or table too busy)"
            }
        ),
        Progress::Expired {
            tenant,
            table,
            report,
        } => println!(
            "{tenant}.{table}: {} {} snapshots (kept {}); {} {} unreachable files ({} of data); {:.1} s",
            if dry_run { "would expire" } else { "expired" },
            report.snapshots_expired,
            report.snapshots_kept,
            if dry_run { "would delete" } else { "deleted" },
            report.files_deleted,
            mib(report.data_bytes_deleted),
            report.seconds
        ),
        Progress::Orphans {
            tenant,
            table,
            report,
        } => {
            println!(
                "{tenant}.{table}: {} objects listed; {} {} orphans ({}); {} younger than the safety age kept",
                report.listed,
                if dry_run { "would delete" } else { "deleted" },
                report.orphans_deleted,
                mib(report.bytes_deleted),
                report.orphans_too_young
            );
            if dry_run {
                for o in &report.deleted {
                    println!("  orphan: {o}");
                }
            }
        }
    };
    let totals = compactor
        .maintain(tenants.as_deref(), &holder, Options { dry_run }, &mut print)
        .await?;
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

/// A lease holder name unique to this process: `<role>@<host>:<pid>`.
fn holder_name(role: &str) -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into());
    format!("{role}@{host}:{}", std::process::id())
}

/// `N` or `none` for a setting that may be cleared.
fn optional_number(flag: &str, value: &Option<String>) -> anyhow::Result<Option<Option<i64>>> {
    match value.as_deref() {
        None => Ok(None),
        Some("none") => Ok(Some(None)),
        Some(v) => Ok(Some(Some(v.parse().with_context(|| {
            format!("{flag} {v:?}: expected a number or `none`")
        })?))),
    }
}
