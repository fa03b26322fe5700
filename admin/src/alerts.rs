//! Tenants' alert rules over HTTP: `GET /v1/alerts` (any role that reads: each rule with its
//! state), `POST /v1/alerts` and `DELETE /v1/alerts/{name}` (tenant admin). The same rules as
//! `floe alert create|list|delete`; `floe serve` evaluates them (see the binary's `alerting`).

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use floe_catalog::alert::NewAlert;
use floe_catalog::api::ApiError;

use crate::{AdminState, admin, reader};

/// `GET /v1/alerts`: the tenant's rules and their state (never their secrets).
pub(crate) async fn list(
    State(st): State<AdminState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let principal = reader(&st, &headers).await?;
    let alerts = st.catalog.alerts(Some(principal.tenant.id())).await?;
    let alerts: Vec<serde_json::Value> = alerts
        .iter()
        .map(|a| {
            let mut v = serde_json::to_value(a).unwrap_or_default();
            v["status"] = a.status().into();
            v
        })
        .collect();
    Ok(axum::Json(serde_json::json!({ "alerts": alerts })).into_response())
}

/// `POST /v1/alerts` (admin): `{"name", "kind", "threshold"?, "window"?, "webhook", "secret",
/// "sql"?}` → 201 with the rule.
pub(crate) async fn create(
    State(st): State<AdminState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let principal = admin(&st, &headers).await?;
    let asked: NewAlert = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_input",
            format!(
                "expected {{\"name\", \"kind\", \"threshold\"?, \"window\"?, \"webhook\", \
                 \"secret\", \"sql\"?}}: {e}"
            ),
        )
    })?;
    let alert = asked.check(principal.tenant.id(), &principal.claims.actor())?;
    let created = st.catalog.create_alert(alert, st.max_alert_rules).await?;
    Ok((StatusCode::CREATED, axum::Json(created)).into_response())
}

/// `DELETE /v1/alerts/{name}` (admin) → 204.
pub(crate) async fn delete(
    State(st): State<AdminState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let principal = admin(&st, &headers).await?;
    st.catalog
        .delete_alert(principal.tenant.id(), &name, &principal.claims.actor())
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
