//! Floe's admin API: what tenant admins (and, to come, platform operators) manage over HTTP.
//! Today: user erasure requests (GDPR), `POST /v1/erasures` and `GET /v1/erasures/{id}`,
//! recorded in the catalog and carried out by the compactor.

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use floe_catalog::api::ApiError;
use floe_catalog::{Authenticator, Catalog, Principal, Role};
use serde::Deserialize;

/// What the admin handlers share.
#[derive(Clone)]
pub struct AdminState {
    pub catalog: Catalog,
    pub auth: Authenticator,
}

/// The admin routes.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/v1/erasures", post(post_erasure))
        .route("/v1/erasures/{id}", get(get_erasure))
        .with_state(state)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ErasureRequest {
    user_ids: Vec<String>,
}

/// `POST /v1/erasures` (tenant admin): records the request; 202 with its id.
async fn post_erasure(
    State(st): State<AdminState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let principal = admin(&st, &headers).await?;
    let request: ErasureRequest = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_input",
            format!("expected {{\"user_ids\": [\"...\"]}}: {e}"),
        )
    })?;
    let erasure = st
        .catalog
        .request_erasure(
            principal.tenant.id(),
            request.user_ids,
            &format!("token:{}", principal.claims.jti),
        )
        .await?;
    let location = format!("/v1/erasures/{}", erasure.id);
    let mut resp = (StatusCode::ACCEPTED, axum::Json(erasure)).into_response();
    if let Ok(v) = HeaderValue::from_str(&location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    Ok(resp)
}

/// `GET /v1/erasures/{id}` (tenant admin): `pending` or `completed` (with `verified_at`).
async fn get_erasure(
    State(st): State<AdminState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let principal = admin(&st, &headers).await?;
    // Another tenant's request is "not found", never "forbidden": ids are not confirmed.
    let erasure = st.catalog.erasure(Some(principal.tenant.id()), &id).await?;
    Ok(axum::Json(erasure).into_response())
}

async fn admin(st: &AdminState, headers: &HeaderMap) -> Result<Principal, ApiError> {
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let principal = st.auth.authenticate(auth).await?;
    principal.require_role(&[Role::Admin])?;
    Ok(principal)
}
