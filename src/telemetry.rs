//! Logs and traces of a process: log lines on stderr (text, or JSON objects with
//! `--log-format json`), and with `--otlp-endpoint URL` the spans (an HTTP request, an ingest
//! request's parse and log append, the commit that made its events visible, a query's plan and
//! execution) sent to an OpenTelemetry collector over OTLP/HTTP (protobuf), in batches from a
//! thread of their own. Spans carry the tenant and the request id; a commit is linked to the
//! log appends whose events it committed.

use std::io::IsTerminal;

use anyhow::Context;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::cli::LogFormat;

/// Links a span keeps (the SDK's default is 128; a commit may hold more appends).
const MAX_LINKS: u32 = 4096;

/// What must be flushed before the process exits.
pub struct Telemetry {
    traces: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Sends the spans still buffered (waits for the collector, briefly).
    pub fn shutdown(self) {
        if let Some(provider) = self.traces
            && let Err(e) = provider.shutdown()
        {
            eprintln!("warning: could not send the last traces: {e}");
        }
    }
}

/// The OTLP/HTTP traces URL of a collector's base URL (`http://host:4318`), or of the full one.
fn traces_url(endpoint: &str) -> String {
    let base = endpoint.trim_end_matches('/');
    if base.ends_with("/v1/traces") {
        base.to_string()
    } else {
        format!("{base}/v1/traces")
    }
}

/// Installs the process's subscriber: the `RUST_LOG` filter (default `info`), the log lines,
/// and the span exporter when `otlp_endpoint` is set.
pub fn init(format: LogFormat, otlp_endpoint: Option<&str>) -> anyhow::Result<Telemetry> {
    // PostgreSQL notices ("relation … already exists, skipping") and object_store retries are
    // not news: Floe logs dependency state changes itself.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(
            "info,sqlx::postgres::notice=warn,object_store::client::retry=warn",
        )
    });
    let traces = match otlp_endpoint.filter(|e| !e.is_empty()) {
        None => None,
        Some(endpoint) => {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_endpoint(traces_url(endpoint))
                .with_timeout(std::time::Duration::from_secs(5))
                .build()
                .with_context(|| format!("the OTLP endpoint {endpoint}"))?;
            Some(
                SdkTracerProvider::builder()
                    .with_batch_exporter(exporter)
                    // A commit links to every append it commits (up to this many).
                    .with_max_links_per_span(MAX_LINKS)
                    .with_resource(Resource::builder().with_service_name("floe").build())
                    .build(),
            )
        }
    };
    let spans = traces
        .as_ref()
        .map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer("floe")));
    let registry = tracing_subscriber::registry().with(filter).with(spans);
    match format {
        LogFormat::Text => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_ansi(std::io::stderr().is_terminal()),
            )
            .init(),
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_current_span(true)
                    .with_writer(std::io::stderr),
            )
            .init(),
    }
    if matches!(format, LogFormat::Json) {
        log_panics();
    }
    Ok(Telemetry { traces })
}

/// Makes a panic, in any thread, one JSON log line like every other (the default hook prints
/// plain text that a log pipeline reading JSON objects would choke on): its message, thread and
/// location, and the backtrace when `RUST_BACKTRACE` asks for one. Written straight to stderr,
/// not through the subscriber: a panic inside the subscriber must not re-enter it, and no
/// `RUST_LOG` filter may hide one.
fn log_panics() {
    std::panic::set_hook(Box::new(|info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
            .unwrap_or("(a non-text panic payload)");
        let backtrace = std::backtrace::Backtrace::capture();
        let backtrace = (backtrace.status() == std::backtrace::BacktraceStatus::Captured)
            .then(|| backtrace.to_string());
        let line = panic_line(
            chrono::Utc::now(),
            message,
            std::thread::current().name().unwrap_or("unnamed"),
            &info.location().map(|l| l.to_string()).unwrap_or_default(),
            backtrace.as_deref(),
        );
        // One write of one line: lines of other threads do not interleave with it.
        let _ = std::io::Write::write_all(&mut std::io::stderr().lock(), line.as_bytes());
    }));
}

/// A panic's log line, with the keys of the other JSON lines.
fn panic_line(
    at: chrono::DateTime<chrono::Utc>,
    message: &str,
    thread: &str,
    location: &str,
    backtrace: Option<&str>,
) -> String {
    let mut fields = serde_json::json!({
        "message": format!("panicked: {message}"),
        "thread": thread,
        "location": location,
    });
    if let Some(backtrace) = backtrace {
        fields["backtrace"] = backtrace.into();
    }
    let line = serde_json::json!({
        "timestamp": at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        "level": "ERROR",
        "fields": fields,
        "target": "floe::panic",
    });
    format!("{line}\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A panic in JSON mode is one JSON object on stderr, with the message and the thread: a
    /// log pipeline reading the lines as JSON does not choke on it (the default hook printed
    /// plain text). The panic happens in a child process (this test binary, running only
    /// `panicking_child`), so that no other test runs under the hook.
    #[test]
    fn a_panic_is_a_json_log_line() {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "telemetry::tests::panicking_child",
                "--nocapture",
            ])
            .env("FLOE_TEST_PANICKING_CHILD", "1")
            .env_remove("RUST_BACKTRACE")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<serde_json::Value> = stderr
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        let [line] = &lines[..] else {
            panic!("one JSON line expected in the child's stderr:\n{stderr}");
        };
        assert_eq!(line["level"], "ERROR", "{line}");
        assert_eq!(line["target"], "floe::panic", "{line}");
        assert_eq!(line["fields"]["message"], "panicked: boom 42", "{line}");
        assert_eq!(line["fields"]["thread"], "panicking", "{line}");
        let location = line["fields"]["location"].as_str().unwrap();
        assert!(location.contains("telemetry.rs"), "{line}");
        assert!(!stderr.contains("thread 'panicking'"), "{stderr}");
    }

    #[test]
    fn panicking_child() {
        if std::env::var_os("FLOE_TEST_PANICKING_CHILD").is_none() {
            return;
        }
        log_panics();
        let _ = std::thread::Builder::new()
            .name("panicking".into())
            .spawn(|| panic!("boom {}", 42))
            .unwrap()
            .join();
    }

    #[test]
    fn the_traces_path_is_added_once() {
        assert_eq!(traces_url("http://h:4318"), "http://h:4318/v1/traces");
        assert_eq!(traces_url("http://h:4318/"), "http://h:4318/v1/traces");
        assert_eq!(
            traces_url("http://h:4318/v1/traces"),
            "http://h:4318/v1/traces"
        );
    }
}
