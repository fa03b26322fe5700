//! A tenant admin's own credentials over HTTP: tokens (`POST /v1/tokens`, `DELETE
//! /v1/tokens/{jti}`) and API keys (`POST /v1/keys`, `GET /v1/keys`, `DELETE /v1/keys/{id}`).
//! A key is shown once, in the reply that makes it; a revocation takes effect on every process
//! within `auth.revocation_refresh_ms`.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use floe_catalog::Role;
use floe_catalog::api::ApiError;
use serde::Deserialize;
use serde_json::json;

use crate::{AdminState, admin};

fn bad_body(expected: &str, e: serde_json::Error) -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "invalid_input",
        format!("expected {expected}: {e}"),
    )
}

/// A tenant's role, as asked for: any but `operator`.
fn tenant_role(role: &str) -> Result<Role, ApiError> {
    let role: Role = role.parse()?;
    if role == Role::Operator {
        return Err(floe_catalog::Error::invalid(
            "the operator role is the platform's: a tenant's credential cannot have it",
        )
        .into());
    }
    Ok(role)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenRequest {
    role: String,
    /// `90s`, `15m`, `1h`, `7d` (default 1h).
    #[serde(default)]
    ttl: Option<String>,
}

/// `POST /v1/tokens` (admin): `{"role", "ttl"?}` → 201 `{"token", "jti", "role",
/// "expires_at_ms"}`, a token of the caller's tenant.
pub(crate) async fn issue_token(
    State(st): State<AdminState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let principal = admin(&st, &headers).await?;
    let asked: TokenRequest =
        serde_json::from_slice(&body).map_err(|e| bad_body("{\"role\", \"ttl\"?}", e))?;
    let role = tenant_role(&asked.role)?;
    let ttl = floe_catalog::auth::parse_ttl(asked.ttl.as_deref().unwrap_or("1h"))?;
    if ttl.as_secs() > st.max_token_ttl_secs {
        return Err(floe_catalog::Error::invalid(format!(
            "ttl exceeds auth.max_token_ttl_secs ({} s)",
            st.max_token_ttl_secs
        ))
        .into());
    }
    let token = st
        .auth
        .authority()
        .issue(principal.tenant.id(), role, ttl)?;
    let claims = st.auth.authority().verify(&token)?;
    let detail = json!({"role": role.as_str(), "ttl_secs": ttl.as_secs(), "jti": claims.jti});
    st.catalog
        .audit(
            &principal.claims.actor(),
            Some(principal.tenant.id().as_str()),
            "token.issue",
            &detail.to_string(),
        )
        .await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({
            "token": token,
            "jti": claims.jti,
            "role": role.as_str(),
            "expires_at_ms": claims.exp.saturating_mul(1000),
        })),
    )
        .into_response())
}

/// `DELETE /v1/tokens/{jti}` (admin) → 204: the tenant's token of that id is refused from now
/// on (until it would have expired anyway).
pub(crate) async fn revoke_token(
    State(st): State<AdminState>,
    headers: HeaderMap,
    Path(jti): Path<String>,
) -> Result<Response, ApiError> {
    let principal = admin(&st, &headers).await?;
    let until =
        chrono::Utc::now().timestamp_millis() + (st.max_token_ttl_secs as i64).saturating_mul(1000);
    st.catalog
        .revoke_token(
            principal.tenant.id(),
            &jti,
            until,
            &principal.claims.actor(),
        )
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyRequest {
    role: String,
    /// `30d`, `12h`, … (default: no expiry).
    #[serde(default)]
    expires_in: Option<String>,
    /// Event types the key may send (default: any).
    #[serde(default)]
    event_types: Vec<String>,
}

/// `POST /v1/keys` (admin): `{"role", "expires_in"?, "event_types"?}` → 201 with the key, the
/// only time it is shown.
pub(crate) async fn create_key(
    State(st): State<AdminState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let principal = admin(&st, &headers).await?;
    let asked: KeyRequest = serde_json::from_slice(&body)
        .map_err(|e| bad_body("{\"role\", \"expires_in\"?, \"event_types\"?}", e))?;
    let role = tenant_role(&asked.role)?;
    let expires_at_ms = match asked.expires_in.as_deref() {
        None => None,
        Some(ttl) => Some(
            chrono::Utc::now().timestamp_millis()
                + floe_catalog::auth::parse_ttl(ttl)?.as_millis() as i64,
        ),
    };
    let made = st
        .catalog
        .create_api_key(
            principal.tenant.id(),
            role,
            asked.event_types,
            expires_at_ms,
            &principal.claims.actor(),
        )
        .await?;
    let mut body = serde_json::to_value(&made.key).unwrap_or_default();
    body["key"] = made.token.into();
    body["prefix"] = made.key.prefix().into();
    Ok((StatusCode::CREATED, axum::Json(body)).into_response())
}

/// `GET /v1/keys` (admin): the tenant's keys (never their secrets).
pub(crate) async fn list_keys(
    State(st): State<AdminState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let principal = admin(&st, &headers).await?;
    let keys = st.catalog.api_keys(principal.tenant.id()).await?;
    let keys: Vec<serde_json::Value> = keys
        .iter()
        .map(|k| {
            let mut v = serde_json::to_value(k).unwrap_or_default();
            v["prefix"] = k.prefix().into();
            v
        })
        .collect();
    Ok(axum::Json(json!({ "keys": keys })).into_response())
}

/// `DELETE /v1/keys/{id}` (admin) → 204; another tenant's key is not found.
pub(crate) async fn revoke_key(
    State(st): State<AdminState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let principal = admin(&st, &headers).await?;
    let id = id
        .strip_prefix(floe_catalog::credentials::KEY_PREFIX)
        .unwrap_or(&id);
    st.catalog
        .revoke_api_key(principal.tenant.id(), id, &principal.claims.actor())
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
