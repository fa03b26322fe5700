//! The `floe` command line: parses the arguments and hands each command to its module, one
//! file a command (`serve.rs` composes the services of `floe serve`).

mod alert;
mod alerting;
mod audit;
mod avro_names;
mod cli;
mod compact;
mod generate;
mod kafka;
mod listener;
mod metrics;
mod openapi;
mod progress;
mod projection;
mod schema;
mod serve;
mod sql;
mod telemetry;
mod tenant;
mod tls;
mod token;
mod ui;
mod wal;

use std::time::Duration;

use clap::Parser;

use cli::{
    Cli, Command, DlqCommand, IngestCommand, KeysCommand, TokenCommand, WalCommand, load_config,
};

/// mimalloc rather than glibc's malloc, whose per-thread arenas kept about twice the memory
/// `floe serve` used under the compaction benchmark (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    transparent_huge_pages_off();
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

/// Transparent huge pages off for the whole process, unless mimalloc's own switch
/// `MIMALLOC_ALLOW_THP` asks to keep them (set, and not 0, false, off or no: as mimalloc reads
/// it). mimalloc asks the kernel for huge pages on its arenas and
/// hands unused memory back after a second, so memory used again was faulted in again a 2 MiB
/// page at a time, each zeroed by the kernel: under the compaction benchmark a third of
/// `floe compact`'s CPU time went to zeroing pages, and under the ingest benchmark most of
/// `floe serve`'s system time (BENCHMARKS.md). The flag covers memory mapped before `main`
/// too: the kernel reads it at each page fault.
fn transparent_huge_pages_off() {
    if let Ok(v) = std::env::var("MIMALLOC_ALLOW_THP")
        && !["0", "false", "off", "no"].contains(&v.trim().to_ascii_lowercase().as_str())
    {
        return;
    }
    #[cfg(target_os = "linux")]
    if let Err(e) = rustix::thread::disable_transparent_huge_pages(true) {
        // Kernels before 3.15 have no such flag: the process runs as before.
        eprintln!("note: transparent huge pages left on ({e})");
    }
}

fn real_main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // Before any manifest is read: Avro's name rules without regular expressions.
    avro_names::install();
    let telemetry = telemetry::init(cli.log_format, cli.otlp_endpoint.as_deref())?;
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
    telemetry.shutdown();
    result
}

async fn run(cli: Cli, flush: tokio::runtime::Handle) -> anyhow::Result<()> {
    let config = || load_config(&cli, None);
    match &cli.command {
        Command::Serve {
            listen,
            accept_wal_loss,
            metrics_listen,
            tls_cert,
            tls_key,
        } => {
            let mut flags = cli::metrics_flag(metrics_listen);
            flags.extend(cli::tls_flags(tls_cert, tls_key));
            let config = cli::load_config_with(&cli, listen.as_ref(), &flags)?;
            serve::serve(config, flush, accept_wal_loss).await
        }
        Command::Wal {
            command: WalCommand::Check,
        } => wal::check(&config()?),
        Command::Tenant { command } => tenant::run(&config()?, command).await,
        Command::Token {
            command: TokenCommand::Issue { tenant, role, ttl },
        } => token::issue(&config()?, tenant.as_deref(), role, ttl).await,
        Command::Token {
            command: TokenCommand::Revoke { tenant, jti },
        } => token::revoke(&config()?, tenant, jti).await,
        Command::Key { command } => token::key(&config()?, command).await,
        Command::Audit { command } => audit::run(&config()?, command).await,
        Command::Keys {
            command: KeysCommand::Rotate { old_valid_for },
        } => token::rotate(&config()?, old_valid_for.as_deref()),
        Command::Sql {
            tenant,
            format,
            sql,
        } => sql::run(&config()?, tenant, *format, sql).await,
        Command::Projection { command } => projection::run(&config()?, command).await,
        Command::Schema { command } => schema::run(&config()?, command).await,
        Command::Alert { command } => alert::run(&config()?, command).await,
        Command::Gen(args) => generate::run(&config()?, args).await,
        Command::Compact {
            status: true,
            tenant,
            ..
        } => compact::status(&config()?, tenant.as_deref()).await,
        Command::Compact {
            tenant, dry_run, ..
        } => compact::once(&config()?, tenant.as_deref(), *dry_run).await,
        Command::Compactor { metrics_listen } => {
            let config = cli::load_config_with(&cli, None, &cli::metrics_flag(metrics_listen))?;
            compact::service(&config).await
        }
        Command::Backfill { tenant, promote } => {
            compact::backfill(&config()?, tenant, promote).await
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
            let mut flags = cli::metrics_flag(metrics_listen);
            for (key, v) in [
                ("kafka.brokers", brokers),
                ("kafka.group", group),
                ("kafka.topic_pattern", topic_pattern),
            ] {
                if let Some(v) = v {
                    flags.push(format!("{key}={v}"));
                }
            }
            let config = cli::load_config_with(&cli, None, &flags)?;
            kafka::ingest(config).await
        }
        Command::Dlq {
            command: DlqCommand::Replay { tenant, file },
        } => kafka::dlq_replay(&config()?, tenant, file).await,
    }
}
