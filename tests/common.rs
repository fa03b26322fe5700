//! Helpers for end-to-end tests: run the real `floe` binary on a private data dir and port.
//!
//! `FLOE_TEST_STACK` picks the stack: `local` (default; a folder and SQLite under the data dir)
//! or `s3pg` (the S3 server and PostgreSQL of `infra/services.sh up`, named by the `FLOE_*`
//! variables it exports; each data dir gets its own database and warehouse prefix).

#![allow(clippy::unwrap_used, clippy::expect_used)]
#![allow(dead_code)]

use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_floe");

/// `floe --data-dir DATA_DIR`, with the test stack's environment.
pub fn command(data_dir: &Path) -> Command {
    let mut c = Command::new(BIN);
    c.arg("--data-dir").arg(data_dir).env_remove("FLOE_CONFIG");
    for (k, v) in stack_env(data_dir) {
        c.env(k, v);
    }
    c
}

/// The `FLOE_*` overrides of the processes on `data_dir`: none on the local stack; on `s3pg`,
/// a database and a warehouse prefix of its own (created on first use).
pub fn stack_env(data_dir: &Path) -> Vec<(String, String)> {
    use std::collections::HashMap;
    use std::sync::Mutex;
    type Envs = HashMap<PathBuf, Vec<(String, String)>>;
    static ENVS: Mutex<Option<Envs>> = Mutex::new(None);
    let stack = std::env::var("FLOE_TEST_STACK").unwrap_or_else(|_| "local".into());
    match stack.as_str() {
        "local" => return Vec::new(),
        "s3pg" => {}
        other => panic!("FLOE_TEST_STACK must be local or s3pg, not {other:?}"),
    }
    let mut envs = ENVS.lock().unwrap();
    let envs = envs.get_or_insert_with(HashMap::new);
    if let Some(env) = envs.get(data_dir) {
        return env.clone();
    }
    let var = |name: &str| {
        std::env::var(name).unwrap_or_else(|_| {
            panic!("{name} is not set: run eval \"$(infra/services.sh up)\" first")
        })
    };
    let catalog = var("FLOE_CATALOG");
    let warehouse = var("FLOE_WAREHOUSE");
    let name = format!(
        "e2e_{}_{}",
        std::process::id(),
        data_dir
            .file_name()
            .unwrap()
            .to_string_lossy()
            .to_ascii_lowercase()
            .replace(|c: char| !c.is_ascii_alphanumeric(), "_")
    );
    let (base, _) = catalog
        .rsplit_once('/')
        .expect("catalog URL with a database");
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            use sqlx::Connection;
            let mut c = sqlx::PgConnection::connect(&catalog).await.unwrap();
            sqlx::raw_sql(&format!("CREATE DATABASE \"{name}\""))
                .execute(&mut c)
                .await
                .unwrap();
        });
    let env = vec![
        ("FLOE_CATALOG".to_string(), format!("{base}/{name}")),
        (
            "FLOE_WAREHOUSE".to_string(),
            format!("{}/{name}", warehouse.trim_end_matches('/')),
        ),
    ];
    envs.insert(data_dir.to_path_buf(), env.clone());
    env
}

pub fn floe(data_dir: &Path, args: &[&str]) -> String {
    let out = command(data_dir).args(args).output().expect("run floe");
    assert!(
        out.status.success(),
        "floe {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A running `floe serve`. Killed (SIGKILL) on drop.
pub struct Server {
    pub child: Child,
    pub url: String,
    pub data_dir: PathBuf,
    pub port: u16,
}

impl Server {
    pub fn start(data_dir: &Path, extra: &[&str]) -> Server {
        Self::start_on(data_dir, free_port(), extra)
    }

    pub fn start_on(data_dir: &Path, port: u16, extra: &[&str]) -> Server {
        Self::start_serving(data_dir, port, extra, &[])
    }

    /// `floe [extra] serve --listen … [serve_args]`.
    pub fn start_serving(
        data_dir: &Path,
        port: u16,
        extra: &[&str],
        serve_args: &[&str],
    ) -> Server {
        let mut cmd = command(data_dir);
        cmd.args(extra)
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .args(serve_args);
        Self::spawn(cmd, data_dir, port)
    }

    /// `cmd` (a [`command`] running `serve --listen 127.0.0.1:PORT`), its log in
    /// `DATA_DIR/serve.log`, once it answers `/healthz`.
    pub fn spawn(mut cmd: Command, data_dir: &Path, port: u16) -> Server {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(data_dir.join("serve.log"))
            .expect("log file");
        let child = cmd
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn floe serve");
        let url = format!("http://127.0.0.1:{port}");
        let server = Server {
            child,
            url,
            data_dir: data_dir.to_path_buf(),
            port,
        };
        server.wait_healthy();
        server
    }

    fn wait_healthy(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(200) = http::blocking_get(&format!("{}/healthz", self.url)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let log = std::fs::read_to_string(self.data_dir.join("serve.log")).unwrap_or_default();
        panic!("floe serve did not become healthy; log:\n{log}");
    }

    /// SIGKILL: no shutdown hooks, no flush.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Minimal blocking HTTP over std, so tests do not need a second async runtime.
pub mod http {
    use std::io::{Read, Write};
    use std::net::TcpStream;

    pub struct Response {
        pub status: u16,
        pub headers: String,
        pub body: String,
    }

    impl Response {
        pub fn json(&self) -> serde_json::Value {
            serde_json::from_str(&self.body)
                .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
        }
    }

    pub fn blocking_get(url: &str) -> std::io::Result<u16> {
        request("GET", url, &[], &[]).map(|r| r.status)
    }

    pub fn request(
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> std::io::Result<Response> {
        let rest = url.strip_prefix("http://").expect("http url");
        let (host, path) = rest
            .split_once('/')
            .map_or((rest, "/".to_string()), |(h, p)| (h, format!("/{p}")));
        let mut s = TcpStream::connect(host)?;
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Length: {}\r\n",
            body.len()
        );
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        s.write_all(req.as_bytes())?;
        // Write the body from another thread while reading: a server may answer (413) before
        // it has read a large body, and stop reading it.
        let mut w = s.try_clone()?;
        let body = body.to_vec();
        let writer = std::thread::spawn(move || {
            let _ = w.write_all(&body);
        });
        let mut raw = Vec::new();
        let read = s.read_to_end(&mut raw);
        let _ = writer.join();
        if raw.is_empty() {
            read?;
        }
        let text = String::from_utf8_lossy(&raw).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let body = if head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            dechunk(body)
        } else {
            body.to_string()
        };
        Ok(Response {
            status,
            headers: head.to_string(),
            body,
        })
    }

    fn dechunk(mut s: &str) -> String {
        let mut out = String::new();
        while let Some((size, rest)) = s.split_once("\r\n") {
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            if n == 0 || rest.len() < n {
                break;
            }
            out.push_str(&rest[..n]);
            s = &rest[n..];
            s = s.strip_prefix("\r\n").unwrap_or(s);
        }
        out
    }
}

pub fn post_events(
    url: &str,
    token: &str,
    content_type: &str,
    body: &[u8],
    gzip: bool,
    wait_visible: bool,
) -> http::Response {
    let auth = format!("Bearer {token}");
    let mut headers = vec![
        ("Authorization", auth.as_str()),
        ("Content-Type", content_type),
    ];
    if gzip {
        headers.push(("Content-Encoding", "gzip"));
    }
    let path = if wait_visible {
        format!("{url}/v1/events?wait=visible")
    } else {
        format!("{url}/v1/events")
    };
    http::request("POST", &path, &headers, body).expect("POST /v1/events")
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).expect("gzip");
    e.finish().expect("gzip")
}

/// `SELECT`s through `floe sql --format csv`; returns the data rows (header dropped).
pub fn sql_rows(data_dir: &Path, tenant: &str, sql: &str) -> Vec<Vec<String>> {
    let out = floe(
        data_dir,
        &["sql", "--tenant", tenant, "--format", "csv", sql],
    );
    out.lines()
        .skip(1)
        .map(|l| l.split(',').map(str::to_string).collect())
        .collect()
}

pub fn setup_tenant(data_dir: &Path, tenant: &str, role: &str) -> String {
    floe(data_dir, &["tenant", "create", tenant]);
    floe(
        data_dir,
        &[
            "token", "issue", "--tenant", tenant, "--role", role, "--ttl", "1h",
        ],
    )
    .trim()
    .to_string()
}

/// Rows of `sql` on the catalog database of `data_dir` (SQLite or PostgreSQL), each row's
/// columns joined with `|` (every column must be text).
pub fn catalog_rows(data_dir: &Path, sql: &str) -> Vec<String> {
    let url = stack_env(data_dir)
        .into_iter()
        .find(|(k, _)| k == "FLOE_CATALOG")
        .map(|(_, v)| v)
        .unwrap_or_else(|| format!("sqlite://{}/catalog.db", data_dir.display()));
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            use sqlx::{Connection, Row};
            sqlx::any::install_default_drivers();
            let mut c = sqlx::AnyConnection::connect(&url).await.unwrap();
            sqlx::query(sql)
                .fetch_all(&mut c)
                .await
                .unwrap()
                .iter()
                .map(|r| {
                    (0..r.len())
                        .map(|i| r.get::<String, _>(i))
                        .collect::<Vec<_>>()
                        .join("|")
                })
                .collect()
        })
}
