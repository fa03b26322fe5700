//! The evaluator of tenants' alert rules in `floe serve`: every `alerting.interval_secs` it
//! evaluates each rule (see `floe_catalog::alert` for the kinds), records what it saw, and for
//! each change of state that it recorded (a compare-and-swap: with several processes, exactly
//! one wins it) POSTs a `firing` or `resolved` notification to the rule's webhook on a task of
//! its own. A rule's notifications go out one at a time and in order; ingest and queries never
//! wait for them. `floe_alert_firing` says which rules fire.

mod webhook;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use floe_catalog::alert::{Alert, AlertKind, Evaluated};
use floe_catalog::config::AlertingConfig;
use floe_catalog::metrics as m;
use floe_catalog::{Catalog, TenantId};
use floe_query::Engine;
use floe_query::dashboard::KafkaLag;
use serde_json::{Value, json};

/// Per rule (tenant, name): held while one of its notifications is being delivered.
type Sending = Mutex<HashMap<(String, String), Arc<tokio::sync::Mutex<()>>>>;

/// Evaluates every tenant's rules, and notifies their webhooks.
#[derive(Clone)]
pub struct Alerting {
    catalog: Catalog,
    engine: Engine,
    kafka: Option<Arc<dyn KafkaLag>>,
    every: Duration,
    delivery: webhook::Delivery,
    /// One notification at a time per rule, so that a `resolved` never overtakes its `firing`.
    sending: Arc<Sending>,
    /// The `floe_alert_firing` series set at the last round.
    series: Arc<Mutex<HashSet<(String, String)>>>,
}

impl Alerting {
    /// `None` when `alerting.interval_secs` is 0.
    pub fn new(
        catalog: Catalog,
        engine: Engine,
        kafka: Option<Arc<dyn KafkaLag>>,
        config: &AlertingConfig,
    ) -> anyhow::Result<Option<Alerting>> {
        if config.interval_secs == 0 {
            tracing::info!("alerting.interval_secs is 0: alert rules are not evaluated here");
            return Ok(None);
        }
        let client = reqwest::Client::builder()
            .user_agent(concat!("floe-alerts/", env!("CARGO_PKG_VERSION")))
            // A redirect could lead a notification to an address the check refused.
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Some(Alerting {
            catalog,
            engine,
            kafka,
            every: Duration::from_secs(config.interval_secs),
            delivery: webhook::Delivery {
                client,
                attempts: config.webhook_attempts,
                backoff: Duration::from_millis(config.webhook_backoff_ms),
                timeout: Duration::from_millis(config.webhook_timeout_ms),
                allow_private: config.allow_private_webhooks,
            },
            sending: Default::default(),
            series: Default::default(),
        }))
    }

    /// Evaluates the rules every interval, until the process stops.
    pub async fn run(self) {
        loop {
            tokio::time::sleep(self.every).await;
            self.round().await;
        }
    }

    /// One evaluation of every rule.
    pub async fn round(&self) {
        let rules = match self.catalog.alerts(None).await {
            Ok(rules) => rules,
            Err(e) => {
                tracing::warn!(error = %e, "could not read the alert rules; trying again next round");
                return;
            }
        };
        let mut firing: HashMap<(String, String), f64> = HashMap::new();
        for rule in rules {
            let found = self.evaluate(&rule).await;
            if let Evaluated::Failed(why) = &found {
                tracing::info!(tenant = %rule.tenant, alert = %rule.name, error = %why, "alert rule could not be evaluated");
                metrics::counter!(m::ALERT_EVALUATION_ERRORS, "tenant" => m::tenant(&rule.tenant))
                    .increment(1);
            }
            let changed = match self.catalog.record_evaluation(&rule, &found).await {
                Ok(changed) => changed,
                Err(e) => {
                    tracing::warn!(tenant = %rule.tenant, alert = %rule.name, error = %e, "could not record an alert evaluation");
                    false
                }
            };
            let now_firing = match (&found, changed) {
                (Evaluated::Value { holds, .. }, true) => *holds,
                _ => rule.firing,
            };
            let tenant = m::tenant(&rule.tenant);
            let alert = if tenant == m::OTHER_TENANTS {
                m::OTHER_TENANTS.to_string()
            } else {
                rule.name.clone()
            };
            *firing.entry((tenant, alert)).or_default() += f64::from(u8::from(now_firing));
            if changed && let Evaluated::Value { value, holds } = found {
                self.notify(rule, value, holds);
            }
        }
        let mut series = self.series.lock().unwrap_or_else(|p| p.into_inner());
        for gone in series.iter().filter(|k| !firing.contains_key(*k)) {
            metrics::gauge!(m::ALERT_FIRING, "tenant" => gone.0.clone(), "alert" => gone.1.clone())
                .set(0.0);
        }
        *series = firing.keys().cloned().collect();
        for ((tenant, alert), n) in firing {
            metrics::gauge!(m::ALERT_FIRING, "tenant" => tenant, "alert" => alert).set(n);
        }
    }

    /// What `rule` sees now.
    async fn evaluate(&self, rule: &Alert) -> Evaluated {
        match self.value(rule).await {
            Ok((value, holds)) => Evaluated::Value { value, holds },
            Err(why) => Evaluated::Failed(why),
        }
    }

    /// The rule's value and whether its condition holds.
    async fn value(&self, rule: &Alert) -> Result<(f64, bool), String> {
        let tenant = TenantId::parse(&rule.tenant).map_err(|e| e.to_string())?;
        let now = chrono::Utc::now().timestamp_millis();
        let window = rule.window_secs as i64 * 1000;
        let x = rule.threshold;
        let err = |e: floe_catalog::Error| e.to_string();
        Ok(match rule.kind {
            AlertKind::NoEvents => {
                let n = self
                    .catalog
                    .appends_since(&tenant, now - window)
                    .await
                    .map_err(err)?
                    .events;
                (n as f64, n == 0)
            }
            AlertKind::RateDrop => {
                let both = self
                    .catalog
                    .appends_since(&tenant, now - 2 * window)
                    .await
                    .map_err(err)?;
                let last = self
                    .catalog
                    .appends_since(&tenant, now - window)
                    .await
                    .map_err(err)?;
                let before = both.events.saturating_sub(last.events);
                // Nothing before: no rate to drop from.
                if before == 0 {
                    (1.0, false)
                } else {
                    let ratio = last.events as f64 / before as f64;
                    (ratio, ratio < x)
                }
            }
            AlertKind::Lag => {
                let projections = self.catalog.projection_status(&tenant).await.map_err(err)?;
                let mut lag = projections
                    .iter()
                    .map(|p| p.lag_seconds)
                    .fold(0.0, f64::max);
                if let Some(kafka) = &self.kafka {
                    let waiting = kafka.lag(tenant.clone()).await?;
                    if waiting > 0 {
                        // Events wait in the topic: the table is behind since its last append
                        // (or for the whole window, when it never had one).
                        let last = self
                            .catalog
                            .appends_since(&tenant, i64::MAX)
                            .await
                            .map_err(err)?
                            .last_append_ms
                            .unwrap_or(now - window);
                        lag = lag.max((now - last).max(0) as f64 / 1000.0);
                    }
                }
                (lag, lag > x)
            }
            AlertKind::Rejections => {
                let (accepted, rejected) = self
                    .catalog
                    .ingest_counts(&tenant, (now - window) / 60_000)
                    .await
                    .map_err(err)?;
                let total = accepted + rejected;
                let pct = if total == 0 {
                    0.0
                } else {
                    rejected as f64 * 100.0 / total as f64
                };
                (pct, pct > x)
            }
            AlertKind::Sql => {
                let sql = rule.sql.as_deref().ok_or("the rule has no query")?;
                let (_, batches) = self
                    .engine
                    .sql_apart(&tenant, sql)
                    .await
                    .map_err(|e| format!("the rule's query failed: {e}"))?;
                let first = batches
                    .iter()
                    .find(|b| b.num_rows() > 0)
                    .and_then(|b| floe_query::trino::json_rows(&b.slice(0, 1)).pop())
                    .ok_or("the rule's query returned no row")?;
                let value = number(&first[0]).ok_or_else(|| {
                    format!(
                        "the rule's query gave {} where a number was expected",
                        first[0]
                    )
                })?;
                (value, value > x)
            }
        })
    }

    /// Sends the notification of `rule`'s new state on a task of its own.
    fn notify(&self, rule: Alert, value: f64, firing: bool) {
        let status = if firing { "firing" } else { "resolved" };
        let at = chrono::Utc::now().timestamp_millis();
        let body = json!({
            "tenant": rule.tenant,
            "alert": rule.name,
            "kind": rule.kind.as_str(),
            "status": status,
            "value": value,
            "threshold": rule.threshold,
            "window_secs": rule.window_secs,
            "at_ms": at,
            "message": message(&rule, value, firing),
        });
        let id = format!("{}/{}/{status}/{at}", rule.tenant, rule.name);
        let lock = self
            .sending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry((rule.tenant.clone(), rule.name.clone()))
            .or_default()
            .clone();
        let (delivery, catalog) = (self.delivery.clone(), self.catalog.clone());
        tokio::spawn(async move {
            let _one_at_a_time = lock.lock().await;
            let body = serde_json::to_vec(&body).unwrap_or_default();
            let sent = delivery.send(&rule.webhook, &rule.secret, &id, body).await;
            let outcome = if sent.is_ok() { "delivered" } else { "failed" };
            metrics::counter!(m::ALERT_NOTIFICATIONS, "outcome" => outcome).increment(1);
            if let Err(why) = &sent {
                tracing::warn!(tenant = %rule.tenant, alert = %rule.name, status, error = %why, "alert notification given up");
            }
            if let Err(e) = catalog
                .record_delivery(&rule.tenant, &rule.name, status, sent.err())
                .await
            {
                tracing::warn!(tenant = %rule.tenant, alert = %rule.name, error = %e, "could not record an alert delivery");
            }
        });
    }
}

/// A query's value as a number: a JSON number, or a decimal rendered as a string.
fn number(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

/// A sentence for people reading the notification.
fn message(rule: &Alert, value: f64, firing: bool) -> String {
    let window = format!("{} s", rule.window_secs);
    let x = rule.threshold;
    let what = match rule.kind {
        AlertKind::NoEvents => format!("{value} events in the last {window}"),
        AlertKind::RateDrop => format!(
            "the last {window} had {:.0} % of the events of the {window} before (threshold {:.0} %)",
            value * 100.0,
            x * 100.0
        ),
        AlertKind::Lag => format!("{value:.1} s behind (threshold {x} s)"),
        AlertKind::Rejections => {
            format!("{value:.1} % of the events of the last {window} rejected (threshold {x} %)")
        }
        AlertKind::Sql => format!("the query gave {value} (threshold {x})"),
    };
    let state = if firing { "firing" } else { "resolved" };
    format!("{} {}: {what}", rule.name, state)
}
