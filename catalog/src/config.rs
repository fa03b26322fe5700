//! Typed configuration, loaded in layers: defaults < `floe.toml` < `FLOE_*` environment < flags.
//!
//! Every key has one dotted name (`listen`, `ingest.flush_interval_ms`). The environment variable
//! for a key is `FLOE_` plus the name upper-cased with `.` turned into `_`
//! (`FLOE_INGEST_FLUSH_INTERVAL_MS`); flags pass the same dotted names to [`Config::load`].

mod secret;
mod sections;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use secret::{Secret, is_secret_property};
pub use sections::*;

use crate::{Error, Result};

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
    /// The catalog database's connections and reads.
    pub catalog_db: CatalogDbConfig,
    /// Address the HTTP server listens on.
    pub listen: String,
    /// S3 settings, used when `warehouse` is an `s3://` URL.
    pub s3: S3Config,
    pub ingest: IngestConfig,
    pub auth: AuthConfig,
    pub query: QueryConfig,
    pub compaction: CompactionConfig,
    pub projection: ProjectionConfig,
    pub commit: CommitConfig,
    pub kafka: KafkaConfig,
    pub http: HttpConfig,
    pub quota: QuotaConfig,
    pub metrics: MetricsConfig,
    pub alerting: AlertingConfig,
    pub audit: AuditConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("./floe-data"),
            warehouse: String::new(),
            catalog: String::new(),
            catalog_db: CatalogDbConfig::default(),
            listen: "127.0.0.1:8080".to_string(),
            s3: S3Config::default(),
            ingest: IngestConfig::default(),
            auth: AuthConfig::default(),
            query: QueryConfig::default(),
            compaction: CompactionConfig::default(),
            projection: ProjectionConfig::default(),
            commit: CommitConfig::default(),
            kafka: KafkaConfig::default(),
            http: HttpConfig::default(),
            quota: QuotaConfig::default(),
            metrics: MetricsConfig::default(),
            alerting: AlertingConfig::default(),
            audit: AuditConfig::default(),
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
            .field("catalog_db", &self.catalog_db)
            .field("listen", &self.listen)
            .field("s3", &self.s3)
            .field("ingest", &self.ingest)
            .field("auth", &self.auth)
            .field("query", &self.query)
            .field("compaction", &self.compaction)
            .field("projection", &self.projection)
            .field("commit", &self.commit)
            .field("kafka", &self.kafka)
            .field("http", &self.http)
            .field("quota", &self.quota)
            .field("metrics", &self.metrics)
            .field("alerting", &self.alerting)
            .field("audit", &self.audit)
            .finish()
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
            // The config file's own variable, the command line's (flags and the dashboard's
            // folder), and those of the project's scripts and tests.
            if matches!(
                rest,
                "CONFIG" | "LOG_FORMAT" | "OTLP_ENDPOINT" | "UI_DIR" | "ALERT_SECRET"
            ) || rest == "BIN"
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
            (
                "catalog_db.max_connections",
                u64::from(self.catalog_db.max_connections),
            ),
            (
                "catalog_db.acquire_timeout_ms",
                self.catalog_db.acquire_timeout_ms,
            ),
            (
                "catalog_db.background_read_limit_ms",
                self.catalog_db.background_read_limit_ms,
            ),
            (
                "catalog_db.retry_failed_ms",
                self.catalog_db.retry_failed_ms,
            ),
            (
                "catalog_db.probe_interval_ms",
                self.catalog_db.probe_interval_ms,
            ),
            (
                "catalog_db.probe_timeout_ms",
                self.catalog_db.probe_timeout_ms,
            ),
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
                "compaction.bins_per_commit",
                self.compaction.bins_per_commit as u64,
            ),
            (
                "compaction.min_snapshots",
                self.compaction.min_snapshots as u64,
            ),
            ("compaction.lease_secs", self.compaction.lease_secs),
            (
                "projection.state_cache_bytes",
                self.projection.state_cache_bytes,
            ),
            ("projection.keep_snapshots", self.projection.keep_snapshots),
            ("projection.lease_secs", self.projection.lease_secs),
            (
                "projection.poll_interval_ms",
                self.projection.poll_interval_ms,
            ),
            ("projection.retry_after_ms", self.projection.retry_after_ms),
            (
                "projection.memory_limit_bytes",
                self.projection.memory_limit_bytes,
            ),
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
            (
                "ingest.max_concurrent_requests",
                i.max_concurrent_requests as u64,
            ),
            (
                "ingest.max_concurrent_requests_per_tenant",
                i.max_concurrent_requests_per_tenant as u64,
            ),
            (
                "query.memory_limit_bytes",
                self.query.memory_limit_bytes as u64,
            ),
            (
                "query.memory_total_bytes",
                self.query.memory_total_bytes as u64,
            ),
            ("query.cpu_slice_ms", self.query.cpu_slice_ms),
            ("http.max_connections", self.http.max_connections as u64),
            (
                "http.header_read_timeout_ms",
                self.http.header_read_timeout_ms,
            ),
            ("http.keep_alive_idle_secs", self.http.keep_alive_idle_secs),
            ("quota.burst_secs", self.quota.burst_secs),
            ("quota.concurrent_queries", self.quota.concurrent_queries),
            ("quota.refresh_secs", self.quota.refresh_secs),
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
        if self.query.memory_total_bytes < self.query.memory_limit_bytes {
            return Err(Error::Config {
                message: "query.memory_total_bytes must be at least query.memory_limit_bytes"
                    .into(),
            });
        }
        if !(0..=20).contains(&self.query.cpu_behind_nice) {
            return Err(Error::Config {
                message: format!(
                    "query.cpu_behind_nice must be between 0 and 20 (got {})",
                    self.query.cpu_behind_nice
                ),
            });
        }
        if !(1..=22).contains(&i.zstd_level) {
            return Err(Error::Config {
                message: format!(
                    "ingest.zstd_level must be between 1 and 22 (got {})",
                    i.zstd_level
                ),
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

    /// Where the processes of this data directory spill, each into its own directory
    /// (`query.spill_total_bytes`, `compaction.spill_total_bytes`,
    /// `projection.spill_total_bytes`).
    pub fn spill_dir(&self) -> PathBuf {
        self.data_dir.join("spill")
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
pub(crate) fn parse_size(raw: &str) -> Option<i64> {
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
        // The folder as cargo names it at run time: a test binary built from another checkout
        // of the same sources may be reused, with that checkout's path compiled in.
        let dir = Path::new(&std::env::var("CARGO_MANIFEST_DIR").unwrap()).join("../infra");
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
