//! Who a token is (`GET /v1/whoami`, any valid token), and the platform operator's view of
//! every tenant (`GET /v1/operator/tenants`, operator token only): ingest rate, stored bytes,
//! projection lag and last maintenance, for the dashboard's operator page.

use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use floe_catalog::api::ApiError;
use serde_json::{Value, json};

use crate::AdminState;

/// The window the operator's ingest rates are measured over.
pub const RATE_WINDOW_MS: i64 = 5 * 60_000;

fn authorization(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
}

/// `GET /v1/whoami`: the token's tenant (`null` for the operator), role and expiry. A tenant's
/// token must reach a tenant that exists, as everywhere.
pub(crate) async fn whoami(
    State(st): State<AdminState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    // The operator's, or else (refused as not the operator's) a tenant's.
    let (claims, tenant) = match st.auth.authenticate_operator(authorization(&headers)).await {
        Ok(claims) => (claims, Value::Null),
        Err(e) if e.kind() == floe_catalog::ErrorKind::PermissionDenied => {
            let principal = st.auth.authenticate(authorization(&headers)).await?;
            floe_catalog::api::request_id::record_tenant(principal.tenant.id().as_str());
            let tenant = json!(principal.tenant.id().as_str());
            (principal.claims, tenant)
        }
        Err(e) => return Err(e.into()),
    };
    Ok(axum::Json(json!({
        "tenant": tenant,
        "role": claims.role.as_str(),
        "expires_at_ms": claims.exp.saturating_mul(1000),
    }))
    .into_response())
}

/// `GET /v1/operator/tenants` (operator): one row per tenant. A tenant whose figures cannot be
/// read just now (its table being dropped, storage failing) gets an `error` in its row; the
/// other rows stand.
pub(crate) async fn tenants(
    State(st): State<AdminState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    st.auth
        .authenticate_operator(authorization(&headers))
        .await?;
    let catalog = &st.catalog;
    let maintenance = catalog.maintenance_records().await?;
    let now = chrono::Utc::now().timestamp_millis();
    let mut rows = Vec::new();
    for tenant in catalog.list_tenants().await? {
        let id = floe_catalog::TenantId::parse(&tenant.id)?;
        let last_maintenance = maintenance
            .iter()
            .filter(|r| r.tenant == tenant.id)
            .filter_map(|r| r.last_run_at_ms)
            .max();
        let figures = async {
            let appends = catalog.appends_since(&id, now - RATE_WINDOW_MS).await?;
            let stored = catalog.stored_bytes(&id).await?;
            let lag = catalog
                .projection_status(&id)
                .await?
                .iter()
                .map(|p| p.lag_seconds)
                .fold(0.0, f64::max);
            Ok::<_, floe_catalog::Error>((appends, stored, lag))
        };
        let mut row = json!({
            "id": id.as_str(),
            "last_maintenance_at_ms": last_maintenance,
        });
        match figures.await {
            Ok((appends, stored, lag)) => {
                row["events_last_5m"] = json!(appends.events);
                row["ingest_events_per_sec"] =
                    json!(appends.events as f64 * 1000.0 / RATE_WINDOW_MS as f64);
                row["last_event_at_ms"] = json!(appends.last_append_ms);
                row["stored_bytes"] = json!(stored);
                row["projection_lag_seconds"] = json!(lag);
            }
            Err(e) => row["error"] = json!(e.to_string()),
        }
        rows.push(row);
    }
    Ok(axum::Json(json!({ "tenants": rows })).into_response())
}
