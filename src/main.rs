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
    /// Compact tables once: rewrite small files into files of `compaction.target_file_bytes`,
    /// sorted by (type, ts), as Iceberg `replace` snapshots. Safe while ingest runs.
    Compact {
        /// Only this tenant (default: every tenant).
        #[arg(long)]
        tenant: Option<String>,
        /// Print what would be rewritten, change nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Subcommand)]
enum TenantCommand {
    /// Create a tenant (its namespace and events table).
    Create { id: String },
    /// List tenants.
    List,
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
    let mut overrides: Vec<(&str, String)> = Vec::new();
    if let Some(d) = &cli.data_dir {
        overrides.push(("data_dir", d.display().to_string()));
    }
    if let Some(l) = listen {
        overrides.push(("listen", l.clone()));
    }
    for kv in &cli.set {
        let (k, v) = kv
            .split_once('=')
            .with_context(|| format!("--set {kv:?}: expected KEY=VALUE"))?;
        overrides.push((k, v.to_string()));
    }
    Ok(Config::from_env(cli.config.as_deref(), &overrides)?)
}

async fn run(cli: Cli, flush: tokio::runtime::Handle) -> anyhow::Result<()> {
    match &cli.command {
        Command::Serve { listen } => serve(load_config(&cli, listen.as_ref())?, flush).await,
        Command::Tenant { command } => {
            let config = load_config(&cli, None)?;
            let catalog = Catalog::open(&config).await?;
            match command {
                TenantCommand::Create { id } => {
                    let id = TenantId::parse(id)?;
                    catalog.create_tenant(&id, "cli").await?;
                    println!("{id}");
                }
                TenantCommand::List => {
                    for t in catalog.list_tenants().await? {
                        println!("{}", t.id);
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
        Command::Compact { tenant, dry_run } => {
            compact(load_config(&cli, None)?, tenant.as_deref(), *dry_run).await
        }
    }
}

async fn serve(config: Config, flush: tokio::runtime::Handle) -> anyhow::Result<()> {
    let catalog = Catalog::open(&config).await?;
    let authority = TokenAuthority::load_or_create(&config.signing_key_path())?;
    let ingest = Ingest::start(catalog.clone(), &config, flush).await?;
    let auth = Authenticator::new(authority, catalog.clone());
    let state = HttpState {
        ingest: ingest.clone(),
        auth: auth.clone(),
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
    let catalog = Catalog::open(&config).await?;
    let tenants = match tenant {
        Some(t) => {
            let t = TenantId::parse(t)?;
            if !catalog.tenant_exists(&t).await? {
                bail!("tenant {t} does not exist");
            }
            vec![t]
        }
        None => catalog
            .list_tenants()
            .await?
            .into_iter()
            .map(|t| TenantId::parse(&t.id))
            .collect::<Result<_, _>>()?,
    };
    let compactor = floe_compactor::Compactor::new(catalog.clone(), config.compaction.clone());
    let started = std::time::Instant::now();
    let (mut files_before, mut bytes_before, mut files_after, mut bytes_after) = (0, 0, 0, 0);
    let (mut done, mut dropped, mut rewritten) = (0, 0, 0u64);
    for tenant in &tenants {
        for table in catalog.list_tables(tenant).await? {
            let plan = compactor.plan_table(tenant, &table).await?;
            files_before += plan.files;
            bytes_before += plan.bytes;
            let in_bins: usize = plan.bins.iter().map(|b| b.files.len()).sum();
            let bytes_in_bins: u64 = plan.bins.iter().map(|b| b.bytes()).sum();
            println!(
                "{tenant}.{table}: {} files ({}) in {} partitions; {} bins of {in_bins} files ({}) to rewrite",
                plan.files,
                mib(plan.bytes),
                plan.partitions,
                plan.bins.len(),
                mib(bytes_in_bins)
            );
            let (mut files, mut bytes) = (plan.files, plan.bytes);
            for (i, bin) in plan.bins.iter().enumerate() {
                if dry_run {
                    println!(
                        "  would rewrite {} files ({}, {} rows)",
                        bin.files.len(),
                        mib(bin.bytes()),
                        bin.rows()
                    );
                    continue;
                }
                let r = compactor.run_bin(tenant, &table, bin).await?;
                if r.committed {
                    done += 1;
                    rewritten += r.bytes_in;
                    files = files + r.files_out - r.files_in;
                    bytes = bytes + r.bytes_out - r.bytes_in;
                } else {
                    dropped += 1;
                }
                println!(
                    "  [{}/{}] {}: {} files ({}) -> {} files ({}), {} rows, {:.1} s, {:.1} MB/s{}",
                    i + 1,
                    plan.bins.len(),
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
                );
            }
            files_after += files;
            bytes_after += bytes;
        }
    }
    if dry_run {
        println!(
            "dry run: {files_before} files ({}); nothing changed",
            mib(bytes_before)
        );
    } else {
        println!(
            "compacted: {files_before} files ({}) -> {files_after} files ({}); {done} bins committed, {dropped} dropped; {} rewritten in {:.1} s",
            mib(bytes_before),
            mib(bytes_after),
            mib(rewritten),
            started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}
