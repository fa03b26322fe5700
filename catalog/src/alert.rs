//! Tenants' alert rules and their state, kept in the catalog database (`floe_alerts`): what
//! `floe alert create|list|delete` and `/v1/alerts` manage, and what the evaluator of `floe
//! serve` reads and updates. A rule fires when its condition holds at an evaluation and
//! resolves when it no longer does; each change of state is one compare-and-swap on the row,
//! so of several evaluating processes exactly one records it and notifies the webhook.
//!
//! Kinds, over a window `W` and a threshold `X`:
//! - `rate_drop`: events appended in the last `W` below `X` (a fraction, default 0.5) of those
//!   appended in the `W` before (which held some);
//! - `no_events`: no event appended in the last `W`;
//! - `lag`: a projection, or the table behind its Kafka topic, more than `X` seconds behind;
//! - `rejections`: more than `X` % of the events sent in the last `W` rejected;
//! - `sql`: the first value of the first row of the rule's query above `X`.

use std::str::FromStr;

use serde::Serialize;

use crate::audit::audit_in;
use crate::db::now_ms;
use crate::tenant::TenantId;
use crate::{Catalog, Error, Result};

/// What a rule watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    RateDrop,
    NoEvents,
    Lag,
    Rejections,
    Sql,
}

impl AlertKind {
    pub const ALL: [AlertKind; 5] = [
        AlertKind::RateDrop,
        AlertKind::NoEvents,
        AlertKind::Lag,
        AlertKind::Rejections,
        AlertKind::Sql,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AlertKind::RateDrop => "rate_drop",
            AlertKind::NoEvents => "no_events",
            AlertKind::Lag => "lag",
            AlertKind::Rejections => "rejections",
            AlertKind::Sql => "sql",
        }
    }

    /// The threshold when none is given (`None`: one must be).
    pub fn default_threshold(self) -> Option<f64> {
        match self {
            AlertKind::RateDrop => Some(0.5),
            AlertKind::NoEvents => Some(0.0),
            AlertKind::Lag => Some(60.0),
            AlertKind::Rejections => Some(5.0),
            AlertKind::Sql => None,
        }
    }
}

impl FromStr for AlertKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<AlertKind> {
        AlertKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| {
                Error::invalid(format!(
                    "unknown alert kind {s:?}: expected rate_drop, no_events, lag, rejections or sql"
                ))
            })
    }
}

/// A rule as asked for (by the command line or `POST /v1/alerts`).
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewAlert {
    pub name: String,
    pub kind: String,
    #[serde(default)]
    pub threshold: Option<f64>,
    /// `90s`, `5m`, `1h`, `1d` (default 5m).
    #[serde(default)]
    pub window: Option<String>,
    pub webhook: String,
    pub secret: String,
    /// The query of a `sql` rule.
    #[serde(default)]
    pub sql: Option<String>,
}

/// Shortest window a rule may have.
pub const MIN_WINDOW_SECS: u64 = 60;
/// Longest window a rule may have.
pub const MAX_WINDOW_SECS: u64 = 7 * 86_400;

/// A rule, its state included. The webhook secret is never shown (`Serialize` leaves it out).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Alert {
    pub tenant: String,
    pub name: String,
    pub kind: AlertKind,
    pub threshold: f64,
    pub window_secs: u64,
    pub webhook: String,
    #[serde(skip)]
    pub secret: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sql: Option<String>,
    pub created_at_ms: i64,
    pub created_by: String,
    pub firing: bool,
    /// When the current state began (`None`: never evaluated into one).
    pub since_ms: Option<i64>,
    /// The value the last evaluation saw.
    pub value: Option<f64>,
    pub evaluated_at_ms: Option<i64>,
    /// Why the last evaluation could not decide (the state is kept as it was).
    pub error: Option<String>,
    /// The last state the webhook acknowledged (`firing` or `resolved`).
    pub delivered: Option<String>,
    /// Why the last notification was not delivered, after every attempt.
    pub delivery_error: Option<String>,
}

impl Alert {
    /// `firing` or `resolved` (a rule never evaluated yet: `pending`).
    pub fn status(&self) -> &'static str {
        match (self.firing, self.since_ms) {
            (true, _) => "firing",
            (false, Some(_)) => "resolved",
            (false, None) => "pending",
        }
    }
}

/// A rule name: 1–64 of `a-z`, `0-9`, `_`, `-`, starting with a letter or digit.
fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
        && !name.starts_with(['_', '-']);
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "alert name {name:?}: use 1-64 of a-z, 0-9, _ and -, starting with a letter or digit"
        )))
    }
}

/// Checks a webhook address: `http` or `https`, with a host, no credentials in it.
fn check_webhook(url: &str) -> Result<()> {
    let bad = |why: &str| Error::invalid(format!("webhook {url:?}: {why}"));
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or_else(|| bad("must start with http:// or https://"))?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if authority.is_empty() {
        return Err(bad("has no host"));
    }
    if authority.contains('@') {
        return Err(bad(
            "must not carry credentials (sign with the secret instead)",
        ));
    }
    if url.len() > 2048 || url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad("is not a plain URL"));
    }
    Ok(())
}

impl NewAlert {
    /// The rule for `tenant`, checked (names, kinds, thresholds, windows, webhooks).
    pub fn check(self, tenant: &TenantId, actor: &str) -> Result<Alert> {
        check_name(&self.name)?;
        let kind: AlertKind = self.kind.parse()?;
        let threshold = match (self.threshold, kind.default_threshold()) {
            (Some(x), _) => x,
            (None, Some(x)) => x,
            (None, None) => {
                return Err(Error::invalid(format!(
                    "a {} alert needs --threshold",
                    kind.as_str()
                )));
            }
        };
        if !threshold.is_finite() || threshold < 0.0 {
            return Err(Error::invalid(format!(
                "threshold {threshold}: must be a finite number, 0 or more"
            )));
        }
        match kind {
            AlertKind::RateDrop if threshold > 1.0 => {
                return Err(Error::invalid(
                    "a rate_drop threshold is a fraction of the previous window's rate (0-1)",
                ));
            }
            AlertKind::Rejections if threshold > 100.0 => {
                return Err(Error::invalid(
                    "a rejections threshold is a percentage (0-100)",
                ));
            }
            _ => {}
        }
        let window = self.window.as_deref().unwrap_or("5m");
        let window_secs = crate::auth::parse_ttl(window)?.as_secs();
        if !(MIN_WINDOW_SECS..=MAX_WINDOW_SECS).contains(&window_secs) {
            return Err(Error::invalid(format!(
                "window {window}: between {MIN_WINDOW_SECS} s and {} days",
                MAX_WINDOW_SECS / 86_400
            )));
        }
        check_webhook(&self.webhook)?;
        if self.secret.len() < 16 {
            return Err(Error::invalid(
                "the webhook secret must be at least 16 characters",
            ));
        }
        let sql = match (kind, self.sql) {
            (AlertKind::Sql, Some(sql)) if !sql.trim().is_empty() => Some(sql),
            (AlertKind::Sql, _) => return Err(Error::invalid("a sql alert needs its query")),
            (_, Some(_)) => {
                return Err(Error::invalid("only a sql alert takes a query"));
            }
            (_, None) => None,
        };
        Ok(Alert {
            tenant: tenant.to_string(),
            name: self.name,
            kind,
            threshold,
            window_secs,
            webhook: self.webhook,
            secret: self.secret,
            sql,
            created_at_ms: now_ms(),
            created_by: actor.to_string(),
            firing: false,
            since_ms: None,
            value: None,
            evaluated_at_ms: None,
            error: None,
            delivered: None,
            delivery_error: None,
        })
    }
}

/// What one evaluation found.
#[derive(Debug, Clone, PartialEq)]
pub enum Evaluated {
    /// The value seen and whether the condition holds.
    Value { value: f64, holds: bool },
    /// The evaluation could not decide (the state stays as it was).
    Failed(String),
}

const COLUMNS: &str = "tenant, name, kind, threshold, window_secs, webhook, secret, sql_text, \
                       created_at_ms, created_by, firing, since_ms, value, evaluated_at_ms, \
                       error, delivered, delivery_error";

/// A row of `floe_alerts`.
#[derive(sqlx::FromRow)]
struct Row {
    tenant: String,
    name: String,
    kind: String,
    threshold: f64,
    window_secs: i64,
    webhook: String,
    secret: String,
    sql_text: Option<String>,
    created_at_ms: i64,
    created_by: String,
    firing: i64,
    since_ms: Option<i64>,
    value: Option<f64>,
    evaluated_at_ms: Option<i64>,
    error: Option<String>,
    delivered: Option<String>,
    delivery_error: Option<String>,
}

fn from_row(r: Row) -> Result<Alert> {
    Ok(Alert {
        tenant: r.tenant,
        name: r.name,
        kind: r.kind.parse()?,
        threshold: r.threshold,
        window_secs: r.window_secs.max(0) as u64,
        webhook: r.webhook,
        secret: r.secret,
        sql: r.sql_text,
        created_at_ms: r.created_at_ms,
        created_by: r.created_by,
        firing: r.firing != 0,
        since_ms: r.since_ms,
        value: r.value,
        evaluated_at_ms: r.evaluated_at_ms,
        error: r.error,
        delivered: r.delivered,
        delivery_error: r.delivery_error,
    })
}

impl Catalog {
    /// Creates a rule (audited); `max_rules` bounds the tenant's rules (0: no bound).
    pub async fn create_alert(&self, alert: Alert, max_rules: u64) -> Result<Alert> {
        self.on_io(move |c| async move {
            let mut tx = c.write_tx().await.map_err(Error::db("create alert"))?;
            // The write first (see `revoke_api_key`), then the count it is checked against.
            let inserted = sqlx::query(
                "INSERT INTO floe_alerts (tenant, name, kind, threshold, window_secs, webhook, \
                 secret, sql_text, created_at_ms, created_by) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT DO NOTHING",
            )
            .bind(&alert.tenant)
            .bind(&alert.name)
            .bind(alert.kind.as_str())
            .bind(alert.threshold)
            .bind(alert.window_secs as i64)
            .bind(&alert.webhook)
            .bind(&alert.secret)
            .bind(alert.sql.as_deref())
            .bind(alert.created_at_ms)
            .bind(&alert.created_by)
            .execute(&mut *tx)
            .await
            .map_err(Error::db("create alert"))?;
            if inserted.rows_affected() == 0 {
                return Err(Error::AlreadyExists {
                    what: format!("alert {}", alert.name),
                });
            }
            let (count,): (i64,) =
                sqlx::query_as("SELECT COUNT(*) FROM floe_alerts WHERE tenant = $1")
                    .bind(&alert.tenant)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(Error::db("create alert"))?;
            if max_rules > 0 && count as u64 > max_rules {
                return Err(Error::invalid(format!(
                    "tenant {} has {} alert rules, the most alerting.max_rules_per_tenant \
                     allows; delete one first",
                    alert.tenant,
                    count - 1
                )));
            }
            let detail = serde_json::json!({
                "name": alert.name, "kind": alert.kind.as_str(), "threshold": alert.threshold,
                "window_secs": alert.window_secs, "webhook": alert.webhook,
            });
            audit_in(
                &mut tx,
                &alert.created_by,
                Some(&alert.tenant),
                "alert.create",
                &detail.to_string(),
            )
            .await?;
            tx.commit().await.map_err(Error::db("create alert"))?;
            Ok(alert)
        })
        .await
    }

    /// The tenant's rules (every tenant's with `None`), by tenant and name.
    pub async fn alerts(&self, tenant: Option<&TenantId>) -> Result<Vec<Alert>> {
        let tenant = tenant.map(|t| t.to_string());
        self.on_io(move |c| async move {
            let rows: Vec<Row> = match &tenant {
                Some(t) => {
                    sqlx::query_as(&format!(
                        "SELECT {COLUMNS} FROM floe_alerts WHERE tenant = $1 ORDER BY name"
                    ))
                    .bind(t)
                    .fetch_all(&c.db)
                    .await
                }
                None => {
                    sqlx::query_as(&format!(
                        "SELECT {COLUMNS} FROM floe_alerts ORDER BY tenant, name"
                    ))
                    .fetch_all(&c.db)
                    .await
                }
            }
            .map_err(Error::db("list alerts"))?;
            rows.into_iter().map(from_row).collect()
        })
        .await
    }

    /// Deletes a rule (audited); `NotFound` when the tenant has none of that name.
    pub async fn delete_alert(&self, tenant: &TenantId, name: &str, actor: &str) -> Result<()> {
        let (tenant, name, actor) = (tenant.to_string(), name.to_string(), actor.to_string());
        self.on_io(move |c| async move {
            let mut tx = c.write_tx().await.map_err(Error::db("delete alert"))?;
            let gone = sqlx::query("DELETE FROM floe_alerts WHERE tenant = $1 AND name = $2")
                .bind(&tenant)
                .bind(&name)
                .execute(&mut *tx)
                .await
                .map_err(Error::db("delete alert"))?;
            if gone.rows_affected() == 0 {
                return Err(Error::NotFound {
                    what: format!("alert {name}"),
                });
            }
            let detail = serde_json::json!({ "name": name }).to_string();
            audit_in(&mut tx, &actor, Some(&tenant), "alert.delete", &detail).await?;
            tx.commit().await.map_err(Error::db("delete alert"))?;
            Ok(())
        })
        .await
    }

    /// Records an evaluation of `alert` (as read before it). A change of state is a
    /// compare-and-swap on the state read: `true` when this call made the change (and so is
    /// the one to notify), `false` when the state stays, or another process changed it first.
    pub async fn record_evaluation(&self, alert: &Alert, found: &Evaluated) -> Result<bool> {
        let now = now_ms();
        let (tenant, name, was) = (alert.tenant.clone(), alert.name.clone(), alert.firing);
        let found = found.clone();
        self.on_io(move |c| async move {
            let done = match found {
                Evaluated::Failed(why) => sqlx::query(
                    "UPDATE floe_alerts SET evaluated_at_ms = $1, error = $2 \
                     WHERE tenant = $3 AND name = $4",
                )
                .bind(now)
                .bind(why)
                .bind(&tenant)
                .bind(&name)
                .execute(&c.db)
                .await
                .map(|_| false),
                Evaluated::Value { value, holds } if holds != was => sqlx::query(
                    "UPDATE floe_alerts SET firing = $1, since_ms = $2, value = $3, \
                     evaluated_at_ms = $2, error = NULL \
                     WHERE tenant = $4 AND name = $5 AND firing = $6",
                )
                .bind(i64::from(holds))
                .bind(now)
                .bind(value)
                .bind(&tenant)
                .bind(&name)
                .bind(i64::from(was))
                .execute(&c.db)
                .await
                .map(|r| r.rows_affected() == 1),
                Evaluated::Value { value, .. } => sqlx::query(
                    "UPDATE floe_alerts SET value = $1, evaluated_at_ms = $2, error = NULL \
                     WHERE tenant = $3 AND name = $4",
                )
                .bind(value)
                .bind(now)
                .bind(&tenant)
                .bind(&name)
                .execute(&c.db)
                .await
                .map(|_| false),
            };
            done.map_err(Error::db("record an alert evaluation"))
        })
        .await
    }

    /// Records how a notification of `status` ended: delivered (`error` `None`) or given up.
    pub async fn record_delivery(
        &self,
        tenant: &str,
        name: &str,
        status: &str,
        error: Option<String>,
    ) -> Result<()> {
        let (tenant, name, status) = (tenant.to_string(), name.to_string(), status.to_string());
        self.on_io(move |c| async move {
            let q = match &error {
                None => sqlx::query(
                    "UPDATE floe_alerts SET delivered = $1, delivery_error = NULL \
                     WHERE tenant = $2 AND name = $3",
                )
                .bind(status),
                Some(why) => sqlx::query(
                    "UPDATE floe_alerts SET delivery_error = $1 WHERE tenant = $2 AND name = $3",
                )
                .bind(format!("{status}: {why}")),
            };
            q.bind(&tenant)
                .bind(&name)
                .execute(&c.db)
                .await
                .map_err(Error::db("record an alert delivery"))?;
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(kind: &str) -> NewAlert {
        NewAlert {
            name: "drop".into(),
            kind: kind.into(),
            threshold: None,
            window: None,
            webhook: "http://127.0.0.1:9/hook".into(),
            secret: "0123456789abcdef".into(),
            sql: None,
        }
    }

    #[test]
    fn rules_are_checked_with_their_kinds_defaults() {
        let t = TenantId::parse("acme").unwrap();
        let a = rule("rate_drop").check(&t, "cli").unwrap();
        assert_eq!((a.threshold, a.window_secs), (0.5, 300));
        assert!(
            rule("sql").check(&t, "cli").is_err(),
            "a sql rule needs a query"
        );
        let mut sql = rule("sql");
        sql.sql = Some("SELECT count(*) FROM events".into());
        sql.threshold = Some(10.0);
        assert!(sql.check(&t, "cli").is_ok());
        let mut bad = rule("rejections");
        bad.threshold = Some(150.0);
        assert!(bad.check(&t, "cli").is_err());
        let mut bad = rule("lag");
        bad.window = Some("10s".into());
        assert!(bad.check(&t, "cli").is_err());
        for url in ["ftp://x/", "http://", "http://user:pw@host/", "http://a b/"] {
            let mut bad = rule("lag");
            bad.webhook = url.into();
            assert!(bad.check(&t, "cli").is_err(), "{url}");
        }
        let mut bad = rule("lag");
        bad.name = "-x".into();
        assert!(bad.check(&t, "cli").is_err());
        assert!(rule("nope").check(&t, "cli").is_err());
    }
}
