//! The event type registry of each tenant: versions of each event type's JSON Schema (draft
//! 2020-12), and the compatibility mode a new version must keep with the one before it
//! ([`compat`]). Rows of `floe_schemas` and `floe_event_types` (migration 8).
//!
//! Versions of a type are consecutive from the first one registered (the upcasting steps of a
//! version, [`upcast`], lead from the one before it; the first registered has none). Registering a version again with the same schema does
//! nothing; with another schema it is refused: a version, once events may carry it, never
//! changes meaning.

pub mod compat;
pub mod promote;
pub mod upcast;
pub mod view;

use serde_json::Value;

pub use compat::Compatibility;

use crate::audit::audit_in;
use crate::db::now_ms;
use crate::tenant::TenantId;
use crate::{Catalog, Error, Result};

/// What ingest does with an event whose type has no schema, or whose version of a type has
/// none (a tenant setting).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UnknownTypes {
    /// Stored unchecked.
    #[default]
    Accept,
    /// Refused (`unknown_type` in the reply; dead-lettered in Kafka mode).
    Reject,
    /// Kept aside in the tenant's `events_dlq` table (`reason` `unknown_type`), over HTTP as
    /// from Kafka: not stored as events, not to be sent again.
    DeadLetter,
}

impl UnknownTypes {
    pub fn parse(s: &str) -> Result<UnknownTypes> {
        match s {
            "accept" => Ok(UnknownTypes::Accept),
            "reject" => Ok(UnknownTypes::Reject),
            "dead_letter" | "dead-letter" => Ok(UnknownTypes::DeadLetter),
            other => Err(Error::invalid(format!(
                "unknown types {other:?}: accept, reject or dead_letter"
            ))),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            UnknownTypes::Accept => "accept",
            UnknownTypes::Reject => "reject",
            UnknownTypes::DeadLetter => "dead_letter",
        }
    }
}

/// The compatibility mode of a type nobody set one for (as in schema registries).
pub const DEFAULT_COMPATIBILITY: Compatibility = Compatibility::Backward;

/// Longest event type name (as ingest accepts them).
const MAX_TYPE_LEN: usize = 256;

/// One version of an event type's schema.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct EventSchema {
    #[serde(rename = "type")]
    pub type_name: String,
    pub version: i32,
    pub schema: Value,
    pub created_at_ms: i64,
    pub created_by: String,
}

/// What registering a version did.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Registered {
    pub schema: EventSchema,
    pub compatibility: Compatibility,
    /// `false`: the same schema was registered as this version before; nothing changed.
    pub created: bool,
}

/// Checks that `schema` is a JSON Schema (draft 2020-12) Floe can validate events with: an
/// object schema or `true`, valid against the draft's meta-schema, with no reference out of
/// the document, and upcasting steps (if any) that [`upcast::steps`] accepts.
pub fn check_schema(schema: &Value) -> Result<()> {
    if !matches!(schema, Value::Object(_) | Value::Bool(true)) {
        return Err(Error::invalid(
            "a schema is a JSON object (or true, allowing any payload)",
        ));
    }
    if let Err(e) = jsonschema::draft202012::meta::validate(schema) {
        return Err(Error::invalid(format!(
            "not a valid JSON Schema (draft 2020-12): {e} at {}",
            pointer(e.instance_path().as_str())
        )));
    }
    jsonschema::draft202012::options()
        .build(schema)
        .map_err(|e| Error::invalid(format!("the schema cannot be compiled: {e}")))?;
    upcast::steps(schema)?;
    Ok(())
}

/// Why `new` breaks `mode` against `old` as `new`'s upcasting steps lead it there (events of
/// the old version are read through them): empty when compatible. `Err` if the steps are not
/// valid.
fn breaks(mode: Compatibility, old: &Value, new: &Value) -> Result<Vec<String>> {
    Ok(compat::breaks(mode, &upcast::upcast_schema(old, new)?, new))
}

fn pointer(p: &str) -> &str {
    if p.is_empty() { "/" } else { p }
}

fn check_type(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > MAX_TYPE_LEN {
        return Err(Error::invalid(format!(
            "an event type is a non-empty name of at most {MAX_TYPE_LEN} bytes"
        )));
    }
    Ok(())
}

type Row = (String, i64, String, i64, String);

fn event_schema(
    (type_name, version, schema, created_at_ms, created_by): Row,
) -> Result<EventSchema> {
    Ok(EventSchema {
        schema: serde_json::from_str(&schema).map_err(|e| {
            Error::internal(format!("stored schema of {type_name} v{version}: {e}"))
        })?,
        version: version as i32,
        type_name,
        created_at_ms,
        created_by,
    })
}

impl Catalog {
    /// Registers `schema` as version `version` of the tenant's event type `type_name`, after
    /// checking it is a schema and keeps the type's compatibility mode with the version before
    /// (`compatibility`, if given, becomes the type's mode first). Refused, with the reasons,
    /// if it breaks it; `AlreadyExists` if the version holds another schema. The properties it
    /// promotes ([`promote`]) are added to the tenant's `events` table once it is registered.
    pub async fn register_schema(
        &self,
        tenant: &TenantId,
        type_name: &str,
        version: i32,
        schema: Value,
        compatibility: Option<Compatibility>,
        actor: &str,
    ) -> Result<Registered> {
        check_type(type_name)?;
        check_schema(&schema)?;
        if version < 1 {
            return Err(Error::invalid("versions start at 1"));
        }
        let promoted = promote::promoted(&schema)?;
        self.check_promotion(tenant, &promoted).await?;
        // A registration of the same type racing this one can win the row between this one's
        // read and its insert (or, on SQLite, the write lock both transactions want): done
        // again, it sees that row.
        let mut backoff = crate::retry::Backoff::new(
            std::time::Duration::from_millis(2),
            std::time::Duration::from_millis(100),
        );
        let registered = loop {
            match self
                .register_row(tenant, type_name, version, &schema, compatibility, actor)
                .await
            {
                Err(e) if e.kind().retryable() && backoff.attempts() < 10 => {
                    backoff.wait().await;
                }
                other => break other?,
            }
        };
        // After the row (registering the same schema again finishes an evolution that failed).
        self.promote_columns(tenant, promoted).await?;
        Ok(registered)
    }

    /// The transaction of [`Catalog::register_schema`]: checks and inserts the version's row.
    async fn register_row(
        &self,
        tenant: &TenantId,
        type_name: &str,
        version: i32,
        schema: &Value,
        compatibility: Option<Compatibility>,
        actor: &str,
    ) -> Result<Registered> {
        let (tenant, type_name, actor) = (tenant.clone(), type_name.to_string(), actor.to_string());
        let schema = schema.clone();
        self.on_io(move |c| async move {
            c.tenant(&tenant).await?;
            let mut tx = c.write_tx().await.map_err(Error::db("register schema"))?;
            let mode: Option<(String,)> = sqlx::query_as(
                "SELECT compatibility FROM floe_event_types WHERE tenant = $1 AND type_name = $2",
            )
            .bind(tenant.as_str())
            .bind(&type_name)
            .fetch_optional(&mut *tx)
            .await
            .map_err(Error::db("register schema"))?;
            let mode = match (compatibility, mode) {
                (Some(m), _) => m,
                (None, Some((m,))) => Compatibility::parse(&m)?,
                (None, None) => DEFAULT_COMPATIBILITY,
            };
            let rows: Vec<Row> = sqlx::query_as(
                "SELECT type_name, version, schema, created_at_ms, created_by FROM floe_schemas \
                 WHERE tenant = $1 AND type_name = $2 ORDER BY version DESC LIMIT 1",
            )
            .bind(tenant.as_str())
            .bind(&type_name)
            .fetch_all(&mut *tx)
            .await
            .map_err(Error::db("register schema"))?;
            let latest = rows.into_iter().next().map(event_schema).transpose()?;
            if let Some(latest) = &latest {
                if version <= latest.version {
                    let row: Option<Row> = sqlx::query_as(
                        "SELECT type_name, version, schema, created_at_ms, created_by \
                         FROM floe_schemas WHERE tenant = $1 AND type_name = $2 AND version = $3",
                    )
                    .bind(tenant.as_str())
                    .bind(&type_name)
                    .bind(i64::from(version))
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(Error::db("register schema"))?;
                    return match row.map(event_schema).transpose()? {
                        Some(existing) if existing.schema == schema => Ok(Registered {
                            schema: existing,
                            compatibility: mode,
                            created: false,
                        }),
                        _ => Err(Error::AlreadyExists {
                            what: format!(
                                "version {version} of {type_name} (with another schema; a \
                                 version never changes: register {} instead)",
                                latest.version + 1
                            ),
                        }),
                    };
                }
                if version != latest.version + 1 {
                    return Err(Error::invalid(format!(
                        "the next version of {type_name} is {}, not {version}",
                        latest.version + 1
                    )));
                }
                let reasons = breaks(mode, &latest.schema, &schema)?;
                if !reasons.is_empty() {
                    return Err(Error::invalid(format!(
                        "version {version} of {type_name} is not {} compatible with version {}: {}",
                        mode.as_str(),
                        latest.version,
                        reasons.join("; ")
                    )));
                }
            }
            if latest.is_none() && !upcast::steps(&schema)?.is_empty() {
                return Err(Error::invalid(format!(
                    "version {version} is the first of {type_name}: it has no version before it \
                     to upcast from (`{}` belongs to later versions)",
                    upcast::KEYWORD
                )));
            }
            let created = EventSchema {
                type_name: type_name.clone(),
                version,
                schema: schema.clone(),
                created_at_ms: now_ms(),
                created_by: actor.clone(),
            };
            sqlx::query(
                "INSERT INTO floe_event_types (tenant, type_name, compatibility) \
                 VALUES ($1, $2, $3) ON CONFLICT (tenant, type_name) \
                 DO UPDATE SET compatibility = excluded.compatibility",
            )
            .bind(tenant.as_str())
            .bind(&type_name)
            .bind(mode.as_str())
            .execute(&mut *tx)
            .await
            .map_err(Error::db("register schema"))?;
            sqlx::query(
                "INSERT INTO floe_schemas (tenant, type_name, version, schema, created_at_ms, \
                 created_by) VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(tenant.as_str())
            .bind(&type_name)
            .bind(i64::from(version))
            .bind(schema.to_string())
            .bind(created.created_at_ms)
            .bind(&actor)
            .execute(&mut *tx)
            .await
            .map_err(Error::db("register schema"))?;
            let detail = serde_json::json!({
                "type": type_name, "version": version, "compatibility": mode.as_str()
            })
            .to_string();
            audit_in(
                &mut tx,
                &actor,
                Some(tenant.as_str()),
                "schema.register",
                &detail,
            )
            .await?;
            tx.commit().await.map_err(Error::db("register schema"))?;
            Ok(Registered {
                schema: created,
                compatibility: mode,
                created: true,
            })
        })
        .await
    }

    /// Why `schema` would be refused as the next version of `type_name` (its mode, or
    /// `compatibility` if given): empty if it would be accepted. Registers nothing.
    pub async fn check_next_schema(
        &self,
        tenant: &TenantId,
        type_name: &str,
        schema: &Value,
        compatibility: Option<Compatibility>,
    ) -> Result<(Compatibility, Vec<String>)> {
        check_type(type_name)?;
        let promotion = match promote::promoted(schema) {
            Ok(p) => self.check_promotion(tenant, &p).await,
            Err(e) => Err(e),
        };
        if let Err(e) = check_schema(schema).and(promotion) {
            return Ok((DEFAULT_COMPATIBILITY, vec![e.to_string()]));
        }
        let mode = match compatibility {
            Some(m) => m,
            None => self.compatibility(tenant, type_name).await?,
        };
        let latest = self.schemas(tenant, Some(type_name)).await?.pop();
        let reasons = match latest {
            None if !upcast::steps(schema)?.is_empty() => vec![format!(
                "it would be the first version of {type_name}: it has no version before it to \
                 upcast from"
            )],
            None => Vec::new(),
            Some(l) => breaks(mode, &l.schema, schema)?,
        };
        Ok((mode, reasons))
    }

    /// The compatibility mode of a type (the default if it has none yet).
    pub async fn compatibility(&self, tenant: &TenantId, type_name: &str) -> Result<Compatibility> {
        let (tenant, type_name) = (tenant.clone(), type_name.to_string());
        self.on_io(move |c| async move {
            let mode: Option<(String,)> = sqlx::query_as(
                "SELECT compatibility FROM floe_event_types WHERE tenant = $1 AND type_name = $2",
            )
            .bind(tenant.as_str())
            .bind(&type_name)
            .fetch_optional(&c.db)
            .await
            .map_err(Error::db("event types"))?;
            mode.map_or(Ok(DEFAULT_COMPATIBILITY), |(m,)| Compatibility::parse(&m))
        })
        .await
    }

    /// The tenant's schemas (of one type, or all), by type then version.
    pub async fn schemas(
        &self,
        tenant: &TenantId,
        type_name: Option<&str>,
    ) -> Result<Vec<EventSchema>> {
        let (tenant, type_name) = (tenant.clone(), type_name.map(str::to_string));
        self.on_io(move |c| async move {
            let rows: Vec<Row> = sqlx::query_as(
                "SELECT type_name, version, schema, created_at_ms, created_by FROM floe_schemas \
                 WHERE tenant = $1 AND ($2 IS NULL OR type_name = $2) ORDER BY type_name, version",
            )
            .bind(tenant.as_str())
            .bind(type_name)
            .fetch_all(&c.db)
            .await
            .map_err(Error::db("schemas"))?;
            rows.into_iter().map(event_schema).collect()
        })
        .await
    }

    /// One version of a type's schema; `NotFound` if it is not registered.
    pub async fn schema(
        &self,
        tenant: &TenantId,
        type_name: &str,
        version: i32,
    ) -> Result<EventSchema> {
        let (tenant, type_name) = (tenant.clone(), type_name.to_string());
        self.on_io(move |c| async move {
            let row: Option<Row> = sqlx::query_as(
                "SELECT type_name, version, schema, created_at_ms, created_by FROM floe_schemas \
                 WHERE tenant = $1 AND type_name = $2 AND version = $3",
            )
            .bind(tenant.as_str())
            .bind(&type_name)
            .bind(i64::from(version))
            .fetch_optional(&c.db)
            .await
            .map_err(Error::db("schemas"))?;
            row.map(event_schema)
                .transpose()?
                .ok_or_else(|| Error::NotFound {
                    what: format!("version {version} of event type {type_name}"),
                })
        })
        .await
    }
}
