//! Floe's admin API: what tenant admins and the platform operator manage and see over HTTP.
//! Today: user erasure requests (GDPR), `POST /v1/erasures` and `GET /v1/erasures/{id}`,
//! recorded in the catalog and carried out by the compactor; and the freshness of the tenant's
//! projections, `GET /v1/projections` and `GET /v1/projections/{name}` (any role that reads).

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use floe_catalog::api::ApiError;
use floe_catalog::table::EVENTS_TABLE;
use floe_catalog::{Authenticator, Catalog, Principal, Role, TenantId};
use serde::Deserialize;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use floe_catalog::projection::Defined;

mod alerts;
mod credentials;
mod operator;
mod tenants;

/// What the admin API asks of the process that refreshes projections.
pub trait Projections: Send + Sync {
    /// Checks a definition and creates the projection (filled by the next refresh).
    fn create(
        &self,
        tenant: TenantId,
        name: String,
        sql: String,
        actor: String,
    ) -> Pin<Box<dyn Future<Output = floe_catalog::Result<Defined>> + Send>>;
    /// Checks a definition and makes it the projection's (rebuilt by the next refresh).
    fn redefine(
        &self,
        tenant: TenantId,
        name: String,
        sql: String,
        actor: String,
    ) -> Pin<Box<dyn Future<Output = floe_catalog::Result<Defined>> + Send>>;
    /// Starts a rebuild (at an events snapshot, or the current one) on its own task.
    fn rebuild(&self, tenant: TenantId, name: String, at: Option<i64>);
}

/// What the admin API asks of the process to create a tenant (in Kafka mode its topic too,
/// with the table reading it from where it ends now).
pub trait TenantMaker: Send + Sync {
    fn create(
        &self,
        id: TenantId,
        actor: String,
    ) -> Pin<Box<dyn Future<Output = floe_catalog::Result<floe_catalog::tenant::Tenant>> + Send>>;
}

/// What the admin handlers share.
#[derive(Clone)]
pub struct AdminState {
    pub catalog: Catalog,
    pub auth: Authenticator,
    /// `None`: this process does not refresh projections (`projection.enabled` off).
    pub projections: Option<Arc<dyn Projections>>,
    /// Alert rules one tenant may have (`alerting.max_rules_per_tenant`; 0: no bound).
    pub max_alert_rules: u64,
    /// Longest lifetime of a token made over HTTP (`auth.max_token_ttl_secs`).
    pub max_token_ttl_secs: u64,
    pub tenants: Arc<dyn TenantMaker>,
}

/// The admin routes.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/v1/erasures", post(post_erasure))
        .route("/v1/erasures/{id}", get(get_erasure))
        .route(
            "/v1/projections",
            get(list_projections).post(post_projection),
        )
        .route(
            "/v1/projections/{name}",
            get(get_projection)
                .put(put_projection)
                .delete(delete_projection),
        )
        .route("/v1/projections/{name}/rebuild", post(post_rebuild))
        .route("/v1/schemas", get(list_schemas))
        .route("/v1/alerts", get(alerts::list).post(alerts::create))
        .route("/v1/alerts/{name}", axum::routing::delete(alerts::delete))
        .route("/v1/whoami", get(operator::whoami))
        .route("/v1/tokens", post(credentials::issue_token))
        .route(
            "/v1/tokens/{jti}",
            axum::routing::delete(credentials::revoke_token),
        )
        .route(
            "/v1/keys",
            get(credentials::list_keys).post(credentials::create_key),
        )
        .route(
            "/v1/keys/{id}",
            axum::routing::delete(credentials::revoke_key),
        )
        .route("/v1/tenants", get(tenants::list).post(tenants::create))
        .route(
            "/v1/tenants/{id}",
            get(tenants::show)
                .patch(tenants::update)
                .delete(tenants::delete),
        )
        .route("/v1/operator/tenants", get(operator::tenants))
        .route(
            "/v1/schemas/{type_name}/{version}",
            get(get_schema).put(put_schema),
        )
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
            &principal.claims.actor(),
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

/// `GET /v1/projections` (viewer, analyst, admin): each projection with its lag behind the
/// events, in events and in seconds.
async fn list_projections(
    State(st): State<AdminState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let principal = reader(&st, &headers).await?;
    let projections = st.catalog.projection_status(principal.tenant.id()).await?;
    Ok(axum::Json(serde_json::json!({ "projections": projections })).into_response())
}

/// `GET /v1/projections/{name}` (viewer, analyst, admin): one projection's freshness.
async fn get_projection(
    State(st): State<AdminState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let principal = reader(&st, &headers).await?;
    let found = st
        .catalog
        .projection_status(principal.tenant.id())
        .await?
        .into_iter()
        .find(|p| p.name == name)
        .ok_or_else(|| floe_catalog::Error::NotFound {
            what: format!("projection {name}"),
        })?;
    Ok(axum::Json(found).into_response())
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RebuildQuery {
    at_snapshot: Option<i64>,
}

/// `POST /v1/projections/{name}/rebuild[?at_snapshot=S]` (tenant admin): recomputes the
/// projection from all events (at snapshot S of the events, or the current one) in one commit,
/// then catches up; 202 at once, progress in `GET /v1/projections/{name}`.
async fn post_rebuild(
    State(st): State<AdminState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    axum::extract::Query(query): axum::extract::Query<RebuildQuery>,
) -> Result<Response, ApiError> {
    let principal = admin(&st, &headers).await?;
    let tenant = principal.tenant.id().clone();
    let refresher = refresher(&st)?;
    if !st
        .catalog
        .projection_status(&tenant)
        .await?
        .iter()
        .any(|p| p.name == name)
    {
        return Err(floe_catalog::Error::NotFound {
            what: format!("projection {name}"),
        }
        .into());
    }
    if let Some(id) = query.at_snapshot {
        let events = st.catalog.load_table(&tenant, EVENTS_TABLE).await?;
        if events.metadata().snapshot_by_id(id).is_none() {
            return Err(floe_catalog::Error::invalid(format!(
                "snapshot {id} is not in the history of the events"
            ))
            .into());
        }
    }
    refresher.rebuild(tenant, name.clone(), query.at_snapshot);
    let body = serde_json::json!({ "name": name, "status": "rebuilding" });
    Ok((StatusCode::ACCEPTED, axum::Json(body)).into_response())
}

/// The projection refresher of this process, or 503.
fn refresher(st: &AdminState) -> Result<&Arc<dyn Projections>, ApiError> {
    st.projections.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "this server does not refresh projections (projection.enabled is off)".to_string(),
        )
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProjectionRequest {
    name: String,
    sql: String,
}

/// `POST /v1/projections` (tenant admin) `{"name": …, "sql": …}`: a user-defined projection;
/// 201 with its definition, or 400 naming what is wrong with it.
async fn post_projection(
    State(st): State<AdminState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let principal = admin(&st, &headers).await?;
    let request: ProjectionRequest = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_input",
            format!("expected {{\"name\": \"...\", \"sql\": \"SELECT ...\"}}: {e}"),
        )
    })?;
    let defined = refresher(&st)?
        .create(
            principal.tenant.id().clone(),
            request.name,
            request.sql,
            principal.claims.actor(),
        )
        .await?;
    let location = format!("/v1/projections/{}", defined.name);
    let mut resp = (StatusCode::CREATED, axum::Json(defined)).into_response();
    if let Ok(v) = HeaderValue::from_str(&location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    Ok(resp)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RedefineRequest {
    sql: String,
}

/// `PUT /v1/projections/{name}` (tenant admin) `{"sql": …}`: a new definition for a
/// user-defined projection, checked at once (400 naming what is wrong with it, 404 if there is
/// no such projection); 202 with the definition, and the projection is recomputed by it in one
/// commit by the next refresh (readers see the old rows until then).
async fn put_projection(
    State(st): State<AdminState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let principal = admin(&st, &headers).await?;
    let request: RedefineRequest = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_input",
            format!("expected {{\"sql\": \"SELECT ...\"}}: {e}"),
        )
    })?;
    let defined = refresher(&st)?
        .redefine(
            principal.tenant.id().clone(),
            name,
            request.sql,
            principal.claims.actor(),
        )
        .await?;
    Ok((StatusCode::ACCEPTED, axum::Json(defined)).into_response())
}

/// `DELETE /v1/projections/{name}` (tenant admin): drops a user-defined projection and its
/// table; 204.
async fn delete_projection(
    State(st): State<AdminState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let principal = admin(&st, &headers).await?;
    st.catalog
        .drop_defined_projection(principal.tenant.id(), &name, &principal.claims.actor())
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SchemaQuery {
    compatibility: Option<String>,
}

/// `PUT /v1/schemas/{type}/{version}[?compatibility=MODE]` (tenant admin), the body a JSON
/// Schema (draft 2020-12): registers that version of the event type (as `floe schema
/// register`). 201 when registered, 200 when the same schema already was; 400 naming why it is
/// not a schema or breaks the type's compatibility mode; 409 if the version holds another.
async fn put_schema(
    State(st): State<AdminState>,
    headers: HeaderMap,
    Path((type_name, version)): Path<(String, i32)>,
    axum::extract::Query(query): axum::extract::Query<SchemaQuery>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let principal = admin(&st, &headers).await?;
    let schema: serde_json::Value = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_input",
            format!("the body must be a JSON Schema: {e}"),
        )
    })?;
    let mode = query
        .compatibility
        .as_deref()
        .map(floe_catalog::schema::Compatibility::parse)
        .transpose()?;
    let done = st
        .catalog
        .register_schema(
            principal.tenant.id(),
            &type_name,
            version,
            schema,
            mode,
            &principal.claims.actor(),
        )
        .await?;
    let status = if done.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, axum::Json(done)).into_response())
}

/// `GET /v1/schemas/{type}/{version}` (any role that reads): one version of a type's schema.
async fn get_schema(
    State(st): State<AdminState>,
    headers: HeaderMap,
    Path((type_name, version)): Path<(String, i32)>,
) -> Result<Response, ApiError> {
    let principal = reader(&st, &headers).await?;
    let schema = st
        .catalog
        .schema(principal.tenant.id(), &type_name, version)
        .await?;
    Ok(axum::Json(schema).into_response())
}

/// `GET /v1/schemas` (any role that reads): every version of every event type of the tenant.
async fn list_schemas(
    State(st): State<AdminState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let principal = reader(&st, &headers).await?;
    let schemas = st.catalog.schemas(principal.tenant.id(), None).await?;
    Ok(axum::Json(serde_json::json!({ "schemas": schemas })).into_response())
}

/// The principal of a request from a role that reads tables.
async fn reader(st: &AdminState, headers: &HeaderMap) -> Result<Principal, ApiError> {
    principal(st, headers, &[Role::Viewer, Role::Analyst, Role::Admin]).await
}

async fn admin(st: &AdminState, headers: &HeaderMap) -> Result<Principal, ApiError> {
    principal(st, headers, &[Role::Admin]).await
}

async fn principal(
    st: &AdminState,
    headers: &HeaderMap,
    roles: &[Role],
) -> Result<Principal, ApiError> {
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let principal = st.auth.authenticate(auth).await?;
    floe_catalog::api::request_id::record_tenant(principal.tenant.id().as_str());
    principal.require_role(roles)?;
    Ok(principal)
}
