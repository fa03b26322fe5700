//! The platform operator's tenants over HTTP (operator token only), the same operations as
//! `floe tenant`, audited the same way: `POST /v1/tenants` `{"id"}` → 201, `GET /v1/tenants`,
//! `GET /v1/tenants/{id}` (settings, today's usage, stored bytes), `PATCH /v1/tenants/{id}`
//! (settings), `DELETE /v1/tenants/{id}[?purge=true]`.

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use floe_catalog::api::ApiError;
use floe_catalog::{Claims, Error, TenantId, TenantSettings};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::AdminState;

async fn operator(st: &AdminState, headers: &HeaderMap) -> Result<Claims, ApiError> {
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    Ok(st.auth.authenticate_operator(auth).await?)
}

fn actor(claims: &Claims) -> String {
    format!("operator:{}", claims.jti)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewTenant {
    id: String,
}

/// `POST /v1/tenants` `{"id"}` → 201 with the tenant (its Kafka topic made in Kafka mode).
pub(crate) async fn create(
    State(st): State<AdminState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let claims = operator(&st, &headers).await?;
    let asked: NewTenant = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_input",
            format!("expected {{\"id\": \"...\"}}: {e}"),
        )
    })?;
    let id = TenantId::parse(&asked.id)?;
    let tenant = st.tenants.create(id, actor(&claims)).await?;
    Ok((StatusCode::CREATED, axum::Json(tenant)).into_response())
}

/// `GET /v1/tenants`: every tenant with its settings.
pub(crate) async fn list(
    State(st): State<AdminState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    operator(&st, &headers).await?;
    let tenants = st.catalog.list_tenants().await?;
    Ok(axum::Json(json!({ "tenants": tenants })).into_response())
}

/// `GET /v1/tenants/{id}`: its settings, today's usage and stored bytes.
pub(crate) async fn show(
    State(st): State<AdminState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    operator(&st, &headers).await?;
    let id = TenantId::parse(&id)?;
    let tenant = st.catalog.tenant(&id).await?;
    let usage = st.catalog.usage(&id, &floe_catalog::quota::today()).await?;
    let stored = st.catalog.stored_bytes(&id).await?;
    Ok(axum::Json(json!({
        "tenant": tenant,
        "usage_today": usage,
        "stored_bytes": stored,
    }))
    .into_response())
}

/// The settings a `PATCH` body asks for: `retention_days` and `target_file_bytes` (a number,
/// or null to clear), `user_fields` (a list), `quotas` (`{"name": value or "default"}`),
/// `projections` (`{"name": true|false}`), `unknown_types` (`accept`, `reject`,
/// `dead_letter`). Values are checked by the same parsers as `floe tenant set`.
fn settings(body: Map<String, Value>) -> Result<TenantSettings, Error> {
    let mut s = TenantSettings::default();
    let number = |k: &str, v: &Value| match v {
        Value::Null => Ok(None),
        v => v
            .as_i64()
            .map(Some)
            .ok_or_else(|| Error::invalid(format!("{k}: a whole number or null"))),
    };
    for (k, v) in body {
        match k.as_str() {
            "retention_days" => s.retention_days = Some(number(&k, &v)?),
            "target_file_bytes" => s.target_file_bytes = Some(number(&k, &v)?),
            "user_fields" => {
                let fields: Vec<String> = serde_json::from_value(v)
                    .map_err(|_| Error::invalid("user_fields: a list of payload.<key> names"))?;
                s.user_fields = Some(floe_catalog::tenant::parse_user_fields(&fields)?);
            }
            "quotas" => {
                let Value::Object(q) = v else {
                    return Err(Error::invalid("quotas: {\"name\": value or \"default\"}"));
                };
                let items: Vec<String> = q
                    .into_iter()
                    .map(|(name, value)| match value {
                        Value::String(text) => format!("{name}={text}"),
                        other => format!("{name}={other}"),
                    })
                    .collect();
                s.quotas = floe_catalog::quota::parse_overrides(&items)?;
            }
            "projections" => {
                let Value::Object(p) = v else {
                    return Err(Error::invalid("projections: {\"name\": true or false}"));
                };
                let mut items = Vec::new();
                for (name, on) in p {
                    let on = on.as_bool().ok_or_else(|| {
                        Error::invalid(format!("projections.{name}: true or false"))
                    })?;
                    items.push(format!("{name}={}", if on { "on" } else { "off" }));
                }
                s.projections = floe_catalog::projection::parse_switches(&items)?;
            }
            "unknown_types" => {
                let text = v.as_str().ok_or_else(|| {
                    Error::invalid("unknown_types: accept, reject or dead_letter")
                })?;
                s.unknown_types = Some(floe_catalog::schema::UnknownTypes::parse(text)?);
            }
            other => {
                return Err(Error::invalid(format!(
                    "unknown setting {other:?}: expected retention_days, target_file_bytes, \
                     user_fields, quotas, projections or unknown_types"
                )));
            }
        }
    }
    Ok(s)
}

/// `PATCH /v1/tenants/{id}`: changes settings (see [`settings`]); the tenant as it is now.
pub(crate) async fn update(
    State(st): State<AdminState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let claims = operator(&st, &headers).await?;
    let id = TenantId::parse(&id)?;
    let body: Map<String, Value> = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_input",
            format!("expected a JSON object of settings: {e}"),
        )
    })?;
    let tenant = st
        .catalog
        .set_tenant_settings(&id, settings(body)?, &actor(&claims))
        .await?;
    Ok(axum::Json(tenant).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DeleteQuery {
    #[serde(default)]
    purge: bool,
}

/// `DELETE /v1/tenants/{id}[?purge=true]`: drops the tenant (its credentials get 401 at
/// once); with `purge`, every object under its prefix too.
pub(crate) async fn delete(
    State(st): State<AdminState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<DeleteQuery>,
) -> Result<Response, ApiError> {
    let claims = operator(&st, &headers).await?;
    let id = TenantId::parse(&id)?;
    let done = st
        .catalog
        .delete_tenant(&id, q.purge, &actor(&claims))
        .await?;
    if !done.existed && !q.purge {
        return Err(Error::NotFound {
            what: format!("tenant {id}"),
        }
        .into());
    }
    Ok(axum::Json(done).into_response())
}
