//! The figures the dashboard (`/ui/`) shows beside the projections it reads over the Trino
//! protocol: a tenant's events per time bucket and type, and how fresh its data is. Both are
//! aggregates a viewer may see (never an event's fields), computed for the token's tenant only.
//!
//! - `GET /v1/dashboard/activity?from=MS&to=MS`: visible events by arrival time, per bucket of
//!   `step_seconds` (60 s, or a multiple so that the range holds at most [`MAX_BUCKETS`]) and
//!   type. Run by the query engine as one aggregate ([`Engine::sql_apart`]), with a slot of
//!   the tenant's `concurrent_queries` and its CPU share.
//! - `GET /v1/dashboard/freshness`: when the newest visible events were committed (from the
//!   snapshot log), each projection's lag, and in Kafka mode the events still in the tenant's
//!   topic.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use floe_catalog::api::ApiError;
use floe_catalog::quota::QuotaBook;
use floe_catalog::{Authenticator, Principal, Role, TenantId};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::Engine;
use crate::trino::json_rows;

/// Most buckets one activity answer holds per type.
pub const MAX_BUCKETS: i64 = 360;
/// Longest range of one activity request.
pub const MAX_RANGE_MS: i64 = 31 * 86_400_000;
/// The range when none is given: the last hour.
const DEFAULT_RANGE_MS: i64 = 3_600_000;

/// Events produced to a tenant's topic that its table has not taken in yet (Kafka mode).
pub trait KafkaLag: Send + Sync {
    fn lag(&self, tenant: TenantId) -> Pin<Box<dyn Future<Output = Result<u64, String>> + Send>>;
}

/// What the dashboard endpoints share.
#[derive(Clone)]
pub struct DashboardState {
    pub engine: Engine,
    pub auth: Authenticator,
    pub quotas: QuotaBook,
    /// `None`: not in Kafka mode.
    pub kafka: Option<Arc<dyn KafkaLag>>,
}

/// The dashboard's routes.
pub fn router(state: DashboardState) -> Router {
    Router::new()
        .route("/v1/dashboard/activity", get(activity))
        .route("/v1/dashboard/freshness", get(freshness))
        .with_state(state)
}

async fn reader(st: &DashboardState, headers: &HeaderMap) -> Result<Principal, ApiError> {
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let principal = st.auth.authenticate(auth).await?;
    floe_catalog::api::request_id::record_tenant(principal.tenant.id().as_str());
    principal.require_role(&[Role::Viewer, Role::Analyst, Role::Admin])?;
    Ok(principal)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Range {
    /// Start, inclusive (ms since the epoch).
    from: Option<i64>,
    /// End, exclusive (ms since the epoch).
    to: Option<i64>,
}

/// The bucket width for a range: whole minutes, at most [`MAX_BUCKETS`] of them.
pub fn step_seconds(range_ms: i64) -> i64 {
    let minutes = (range_ms + 60_000 * MAX_BUCKETS - 1) / (60_000 * MAX_BUCKETS);
    60 * minutes.max(1)
}

/// The aggregate the activity answer runs (on the tenant's `events`, whose `received_at` is
/// when Floe accepted each event).
pub fn activity_sql(from_ms: i64, to_ms: i64, step: i64) -> String {
    format!(
        "SELECT type, CAST(floor(to_unixtime(received_at) / {step}) AS BIGINT) AS bucket, \
         count(*) AS events FROM events \
         WHERE received_at >= from_unixtime({from}) AND received_at < from_unixtime({to}) \
         GROUP BY 1, 2 ORDER BY 1, 2",
        from = from_ms as f64 / 1000.0,
        to = to_ms as f64 / 1000.0,
    )
}

/// `GET /v1/dashboard/activity` (viewer, analyst, admin).
async fn activity(
    State(st): State<DashboardState>,
    headers: HeaderMap,
    Query(range): Query<Range>,
) -> Result<Response, ApiError> {
    let principal = reader(&st, &headers).await?;
    let to = range
        .to
        .unwrap_or_else(|| chrono::Utc::now().timestamp_millis());
    let from = range.from.unwrap_or(to - DEFAULT_RANGE_MS);
    if from >= to || to - from > MAX_RANGE_MS {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_input",
            format!(
                "from ({from}) must be before to ({to}), at most {} days apart",
                MAX_RANGE_MS / 86_400_000
            ),
        ));
    }
    let step = step_seconds(to - from);
    let tenant = principal.tenant.id().clone();
    let slot = st.quotas.start_query(&tenant).await.map_err(|e| {
        e.count(&tenant);
        ApiError::from(e)
    })?;
    let (_, batches) = st
        .engine
        .sql_apart(&tenant, &activity_sql(from, to, step))
        .await
        .map_err(crate::Error::into_catalog)?;
    drop(slot);
    let mut series: Vec<(String, Vec<Value>)> = Vec::new();
    for batch in &batches {
        for row in json_rows(batch) {
            let (Some(kind), Some(bucket), Some(events)) =
                (row[0].as_str(), row[1].as_i64(), row[2].as_i64())
            else {
                continue;
            };
            let point = json!([bucket * step * 1000, events]);
            match series.last_mut() {
                Some((k, points)) if k == kind => points.push(point),
                _ => series.push((kind.to_string(), vec![point])),
            }
        }
    }
    let series: Vec<Value> = series
        .into_iter()
        .map(|(kind, points)| json!({"type": kind, "points": points}))
        .collect();
    Ok(axum::Json(json!({
        "from_ms": from,
        "to_ms": to,
        "step_seconds": step,
        "series": series,
    }))
    .into_response())
}

/// `GET /v1/dashboard/freshness` (viewer, analyst, admin).
async fn freshness(
    State(st): State<DashboardState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let principal = reader(&st, &headers).await?;
    let tenant = principal.tenant.id();
    let catalog = st.engine.catalog();
    let appends = catalog.appends_since(tenant, i64::MAX).await?;
    let projections = catalog.projection_status(tenant).await?;
    let now = chrono::Utc::now().timestamp_millis();
    let mut body = json!({
        "last_event_at_ms": appends.last_append_ms,
        "seconds_since_last_event": appends
            .last_append_ms
            .map(|ms| (now - ms).max(0) as f64 / 1000.0),
        "kafka_lag_events": Value::Null,
        "projections": projections,
    });
    if let Some(kafka) = &st.kafka {
        match kafka.lag(tenant.clone()).await {
            Ok(lag) => body["kafka_lag_events"] = json!(lag),
            // The rest of the answer stands; the page says why the lag is missing.
            Err(e) => body["kafka_lag_error"] = json!(e),
        }
    }
    Ok(axum::Json(body).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_whole_minutes_and_at_most_the_cap() {
        assert_eq!(step_seconds(60_000), 60);
        assert_eq!(step_seconds(3_600_000), 60);
        assert_eq!(step_seconds(6 * 3_600_000), 60);
        assert_eq!(step_seconds(6 * 3_600_000 + 1), 120);
        assert_eq!(step_seconds(24 * 3_600_000), 240);
        for range in [1, 59_999, 3_600_001, 86_400_000, MAX_RANGE_MS] {
            let step = step_seconds(range);
            assert_eq!(step % 60, 0);
            assert!((range + step * 1000 - 1) / (step * 1000) <= MAX_BUCKETS);
        }
    }
}
