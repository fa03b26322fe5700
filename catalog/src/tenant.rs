//! Tenants: validated ids, and their lifecycle in the catalog (one Iceberg namespace each).

use std::fmt;
use std::sync::Arc;

use crate::audit::audit_in;
use crate::db::now_ms;
use crate::{Catalog, Error, Result};

/// A validated tenant id: `[a-z0-9][a-z0-9_-]{0,62}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TenantId(String);

impl TenantId {
    /// The platform's own namespace (the audit log of what belongs to no tenant): not a
    /// tenant id, which never starts with `_`.
    pub fn platform() -> TenantId {
        TenantId(crate::audit::PLATFORM_CHAIN.to_string())
    }

    pub fn parse(s: &str) -> Result<TenantId> {
        let bytes = s.as_bytes();
        let ok = !bytes.is_empty()
            && bytes.len() <= 63
            && (bytes[0].is_ascii_lowercase() || bytes[0].is_ascii_digit())
            && bytes
                .iter()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'_' || *b == b'-');
        if ok {
            Ok(TenantId(s.to_string()))
        } else {
            Err(Error::invalid(format!(
                "invalid tenant id {s:?}: use 1-63 characters of a-z, 0-9, '_' and '-', \
                 starting with a letter or digit"
            )))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The incarnation of tenants created before incarnations were recorded, and of tables that
/// carry no [`INCARNATION_PROPERTY`].
pub const LEGACY_INCARNATION: &str = "legacy";

/// The table property naming the tenant incarnation a table was created for.
pub const INCARNATION_PROPERTY: &str = "floe.tenant.incarnation";

/// One incarnation of a tenant. A tenant deleted and created again under the same id is
/// another tenant: every piece of per-tenant state (de-duplication, batchers, log records not
/// yet committed, query slots) is keyed by this, never by the id alone.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TenantKey {
    id: TenantId,
    incarnation: Arc<str>,
}

impl TenantKey {
    pub fn new(id: TenantId, incarnation: impl Into<Arc<str>>) -> TenantKey {
        TenantKey {
            id,
            incarnation: incarnation.into(),
        }
    }

    pub fn id(&self) -> &TenantId {
        &self.id
    }

    pub fn incarnation(&self) -> &str {
        &self.incarnation
    }
}

impl fmt::Display for TenantKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.id.as_str())
    }
}

/// The incarnation a table belongs to (its [`INCARNATION_PROPERTY`]).
pub fn table_incarnation(metadata: &iceberg::spec::TableMetadata) -> &str {
    metadata
        .properties()
        .get(INCARNATION_PROPERTY)
        .map(String::as_str)
        .unwrap_or(LEGACY_INCARNATION)
}

/// A tenant as listed by the catalog.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Tenant {
    pub id: String,
    pub created_at_ms: i64,
    /// Which creation of this id this is (see [`TenantKey`]).
    pub incarnation: String,
    /// Days of events kept (by event time); `None`: forever.
    pub retention_days: Option<i64>,
    /// The compaction target for this tenant's files; `None`: `compaction.target_file_bytes`.
    pub target_file_bytes: Option<i64>,
    /// Payload fields that name a user besides `user_id` (`payload.customer_id`): user
    /// erasure removes the rows where one of them is an erased id.
    pub user_fields: Vec<String>,
    /// Quotas set for this tenant, by name (the others are `[quota]`'s defaults).
    pub quotas: std::collections::BTreeMap<String, u64>,
    /// Built-in projections switched off for this tenant (the others are kept).
    pub projections_off: Vec<String>,
    /// What ingest does with an event whose type (or version) has no schema.
    pub unknown_types: crate::schema::UnknownTypes,
}

impl Tenant {
    /// The key of this incarnation.
    pub fn key(&self) -> Result<TenantKey> {
        Ok(TenantKey::new(
            TenantId::parse(&self.id)?,
            self.incarnation.as_str(),
        ))
    }
}

/// A change of tenant settings: `None` leaves a setting alone, `Some(None)` clears it.
#[derive(Debug, Clone, Default)]
pub struct TenantSettings {
    pub retention_days: Option<Option<i64>>,
    pub target_file_bytes: Option<Option<i64>>,
    /// `Some(vec![])` clears the declared user fields.
    pub user_fields: Option<Vec<String>>,
    /// Quota overrides to set (`Some(n)`) or clear back to the default (`None`), by name.
    pub quotas: std::collections::BTreeMap<String, Option<u64>>,
    /// Built-in projections to switch on (`true`) or off (`false`), by name. Switching one off
    /// drops its table; switching it on creates it empty, to be filled by a replay.
    pub projections: std::collections::BTreeMap<String, bool>,
    /// What ingest does with events of a type (or version) without a schema.
    pub unknown_types: Option<crate::schema::UnknownTypes>,
}

/// Most payload fields a tenant may declare as user references.
pub const MAX_USER_FIELDS: usize = 32;

/// Checks and normalises declared user fields: each `payload.<key>[.<key>…]`, keys non-empty.
pub fn parse_user_fields(fields: &[String]) -> Result<Vec<String>> {
    let mut out: Vec<String> = Vec::new();
    for f in fields {
        let f = f.trim();
        if f.is_empty() {
            continue;
        }
        let ok = f
            .strip_prefix("payload.")
            .is_some_and(|path| path.split('.').all(|k| !k.is_empty()));
        if !ok {
            return Err(Error::invalid(format!(
                "user field {f:?} must name a payload field, as payload.<key> or \
                 payload.<key>.<key> (user_id is always matched)"
            )));
        }
        if !out.iter().any(|o| o == f) {
            out.push(f.to_string());
        }
    }
    if out.len() > MAX_USER_FIELDS {
        return Err(Error::invalid(format!(
            "at most {MAX_USER_FIELDS} user fields (got {})",
            out.len()
        )));
    }
    Ok(out)
}

/// The row of `floe_tenants` as read.
type TenantRow = (
    String,
    i64,
    Option<i64>,
    Option<i64>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
);

const TENANT_COLUMNS: &str = "id, created_at_ms, retention_days, target_file_bytes, incarnation, user_fields, quotas, \
     projections, unknown_types";

fn tenant_from_row(row: TenantRow) -> Tenant {
    let (
        id,
        created_at_ms,
        retention_days,
        target_file_bytes,
        incarnation,
        user_fields,
        quotas,
        projections,
        unknown_types,
    ) = row;
    Tenant {
        id,
        created_at_ms,
        incarnation: incarnation.unwrap_or_else(|| LEGACY_INCARNATION.to_string()),
        retention_days,
        target_file_bytes,
        user_fields: user_fields
            .and_then(|f| serde_json::from_str(&f).ok())
            .unwrap_or_default(),
        quotas: quotas
            .and_then(|q| serde_json::from_str(&q).ok())
            .unwrap_or_default(),
        projections_off: projections
            .and_then(|p| serde_json::from_str(&p).ok())
            .unwrap_or_default(),
        unknown_types: unknown_types
            .and_then(|u| crate::schema::UnknownTypes::parse(&u).ok())
            .unwrap_or_default(),
    }
}

/// What deleting a tenant removed.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct TenantDeleted {
    /// The tenant was in the catalog (a purge of one already deleted still sweeps storage).
    pub existed: bool,
    /// Objects deleted under the tenant's prefix (0 without `purge`).
    pub objects_deleted: usize,
}

impl Catalog {
    /// Creates the tenant: its row, its Iceberg namespace, and its `events` table.
    pub async fn create_tenant(&self, id: &TenantId, actor: &str) -> Result<Tenant> {
        self.create_tenant_with(id, actor, Vec::new()).await
    }

    /// [`Catalog::create_tenant`], with extra properties on the `events` table (where its
    /// Kafka consumption begins, see [`crate::table::KAFKA_START_PREFIX`]).
    pub async fn create_tenant_with(
        &self,
        id: &TenantId,
        actor: &str,
        events_properties: Vec<(String, String)>,
    ) -> Result<Tenant> {
        let (id, actor) = (id.clone(), actor.to_string());
        self.on_io(
            move |c| async move { c.create_tenant_here(&id, &actor, &events_properties).await },
        )
        .await
    }

    async fn create_tenant_here(
        &self,
        id: &TenantId,
        actor: &str,
        events_properties: &[(String, String)],
    ) -> Result<Tenant> {
        if self.tenant_exists(id).await? {
            return Err(Error::AlreadyExists {
                what: format!("tenant {id}"),
            });
        }
        // A new incarnation: nothing of an earlier tenant with this id reaches this one.
        let incarnation = uuid::Uuid::now_v7().simple().to_string();
        let key = TenantKey::new(id.clone(), incarnation.as_str());
        // Write the table's first metadata file before any row points at it: a crash in
        // between leaves an unreferenced file, never a row naming a missing file.
        let events_location = self.create_events_metadata(&key, events_properties).await?;
        let mut tables = vec![(crate::table::EVENTS_TABLE, events_location)];
        for builtin in crate::projection::BUILTINS {
            let location = self.create_builtin_metadata(&key, builtin).await?;
            tables.push((builtin.name, location));
        }
        let created_at_ms = now_ms();
        let mut tx = self.write_tx().await.map_err(Error::db("create tenant"))?;
        let inserted = sqlx::query(
            "INSERT INTO floe_tenants (id, created_at_ms, incarnation) VALUES ($1, $2, $3) \
             ON CONFLICT DO NOTHING",
        )
        .bind(id.as_str())
        .bind(created_at_ms)
        .bind(&incarnation)
        .execute(&mut *tx)
        .await
        .map_err(Error::db("insert tenant"))?;
        if inserted.rows_affected() == 0 {
            return Err(Error::AlreadyExists {
                what: format!("tenant {id}"),
            });
        }
        for (key, value) in [
            ("exists", "true".to_string()),
            ("location", format!("{}/{}", self.warehouse, id)),
        ] {
            sqlx::query(
                "INSERT INTO iceberg_namespace_properties \
                 (catalog_name, namespace, property_key, property_value) VALUES ($1, $2, $3, $4)",
            )
            .bind(&self.name)
            .bind(id.as_str())
            .bind(key)
            .bind(value)
            .execute(&mut *tx)
            .await
            .map_err(Error::db("insert namespace"))?;
        }
        for (table, location) in &tables {
            sqlx::query(
                "INSERT INTO iceberg_tables (catalog_name, table_namespace, table_name, \
                 metadata_location, previous_metadata_location, iceberg_type) \
                 VALUES ($1, $2, $3, $4, NULL, 'TABLE')",
            )
            .bind(&self.name)
            .bind(id.as_str())
            .bind(table)
            .bind(location)
            .execute(&mut *tx)
            .await
            .map_err(Error::db(format!("insert table {table}")))?;
        }
        audit_in(&mut tx, actor, Some(id.as_str()), "tenant.create", "{}").await?;
        tx.commit()
            .await
            .map_err(Error::db("create tenant commit"))?;
        Ok(Tenant {
            id: id.to_string(),
            created_at_ms,
            incarnation,
            retention_days: None,
            target_file_bytes: None,
            user_fields: Vec::new(),
            quotas: Default::default(),
            projections_off: Vec::new(),
            unknown_types: Default::default(),
        })
    }

    pub async fn list_tenants(&self) -> Result<Vec<Tenant>> {
        self.on_io(|c| async move {
            let rows: Vec<TenantRow> = sqlx::query_as(&format!(
                "SELECT {TENANT_COLUMNS} FROM floe_tenants ORDER BY id"
            ))
            .fetch_all(&c.db)
            .await
            .map_err(Error::db("list tenants"))?;
            Ok(rows.into_iter().map(tenant_from_row).collect())
        })
        .await
    }

    /// One tenant, with its settings; `None` if it does not exist.
    pub async fn find_tenant(&self, id: &TenantId) -> Result<Option<Tenant>> {
        let id = id.clone();
        self.on_io(move |c| async move {
            let row: Option<TenantRow> = sqlx::query_as(&format!(
                "SELECT {TENANT_COLUMNS} FROM floe_tenants WHERE id = $1"
            ))
            .bind(id.as_str())
            .fetch_optional(&c.db)
            .await
            .map_err(Error::db("look up tenant"))?;
            Ok(row.map(tenant_from_row))
        })
        .await
    }

    /// One tenant, with its settings.
    pub async fn tenant(&self, id: &TenantId) -> Result<Tenant> {
        self.find_tenant(id).await?.ok_or_else(|| Error::NotFound {
            what: format!("tenant {id}"),
        })
    }

    /// The current incarnation of a tenant; `None` if it does not exist.
    pub async fn tenant_key(&self, id: &TenantId) -> Result<Option<TenantKey>> {
        Ok(match self.find_tenant(id).await? {
            Some(t) => Some(t.key()?),
            None => None,
        })
    }

    /// Changes a tenant's settings (audited).
    pub async fn set_tenant_settings(
        &self,
        id: &TenantId,
        settings: TenantSettings,
        actor: &str,
    ) -> Result<Tenant> {
        if let Some(Some(days)) = settings.retention_days
            && days < 1
        {
            return Err(Error::Invalid {
                message: format!("retention_days must be at least 1 (got {days})"),
            });
        }
        if let Some(Some(bytes)) = settings.target_file_bytes
            && bytes < 1 << 20
        {
            return Err(Error::Invalid {
                message: format!("target_file_bytes must be at least 1 MiB (got {bytes})"),
            });
        }
        let user_fields = match &settings.user_fields {
            Some(f) => Some(parse_user_fields(f)?),
            None => None,
        };
        for name in settings.quotas.keys() {
            crate::quota::check_name(name)?;
        }
        let quotas = if settings.quotas.is_empty() {
            None
        } else {
            let mut merged = self.tenant(id).await?.quotas;
            for (name, value) in &settings.quotas {
                match value {
                    Some(v) => merged.insert(name.clone(), *v),
                    None => merged.remove(name),
                };
            }
            Some(merged)
        };
        for name in settings.projections.keys() {
            crate::projection::builtin(name)?;
        }
        // The switches as they will be, and the built-ins switched off by this change.
        let (projections, dropped) = if settings.projections.is_empty() {
            (None, Vec::new())
        } else {
            let before = self.tenant(id).await?.projections_off;
            let mut off = before.clone();
            for (name, on) in &settings.projections {
                off.retain(|o| o != name);
                if !on {
                    off.push(name.clone());
                }
            }
            off.sort();
            let dropped: Vec<String> = off
                .iter()
                .filter(|o| !before.contains(o))
                .cloned()
                .collect();
            (Some(off), dropped)
        };
        let (id2, actor) = (id.clone(), actor.to_string());
        let dropped2 = dropped.clone();
        let switched = !settings.projections.is_empty();
        self.on_io(move |c| async move {
            let dropped = dropped2;
            let mut tx = c.write_tx().await.map_err(Error::db("tenant settings"))?;
            let mut detail = serde_json::Map::new();
            let mut updates: Vec<(&str, Option<i64>, Option<String>)> = Vec::new();
            for (column, value) in [
                ("retention_days", settings.retention_days),
                ("target_file_bytes", settings.target_file_bytes),
            ] {
                if let Some(value) = value {
                    detail.insert(column.to_string(), serde_json::json!(value));
                    updates.push((column, value, None));
                }
            }
            if let Some(fields) = &user_fields {
                detail.insert("user_fields".to_string(), serde_json::json!(fields));
                let text = serde_json::to_string(fields)
                    .map_err(|e| Error::internal(format!("user fields: {e}")))?;
                updates.push(("user_fields", None, Some(text)));
            }
            if let Some(quotas) = &quotas {
                detail.insert("quotas".to_string(), serde_json::json!(settings.quotas));
                let text = serde_json::to_string(quotas)
                    .map_err(|e| Error::internal(format!("quotas: {e}")))?;
                updates.push(("quotas", None, Some(text)));
            }
            if let Some(unknown) = settings.unknown_types {
                detail.insert(
                    "unknown_types".to_string(),
                    serde_json::json!(unknown.as_str()),
                );
                updates.push(("unknown_types", None, Some(unknown.as_str().to_string())));
            }
            if let Some(off) = &projections {
                detail.insert(
                    "projections".to_string(),
                    serde_json::json!(settings.projections),
                );
                let text = serde_json::to_string(off)
                    .map_err(|e| Error::internal(format!("projections: {e}")))?;
                updates.push(("projections", None, Some(text)));
            }
            for name in &dropped {
                sqlx::query(
                    "DELETE FROM iceberg_tables WHERE catalog_name = $1 \
                     AND table_namespace = $2 AND table_name = $3",
                )
                .bind(&c.name)
                .bind(id2.as_str())
                .bind(name)
                .execute(&mut *tx)
                .await
                .map_err(Error::db("dropping a projection table"))?;
            }
            for (column, number, text) in updates {
                let update = format!("UPDATE floe_tenants SET {column} = $1 WHERE id = $2");
                let query = match text {
                    Some(t) => sqlx::query(&update).bind(t),
                    None => sqlx::query(&update).bind(number),
                };
                let done = query
                    .bind(id2.as_str())
                    .execute(&mut *tx)
                    .await
                    .map_err(Error::db("tenant settings"))?;
                if done.rows_affected() == 0 {
                    return Err(Error::NotFound {
                        what: format!("tenant {id2}"),
                    });
                }
            }
            let detail = serde_json::Value::Object(detail).to_string();
            audit_in(
                &mut tx,
                &actor,
                Some(id2.as_str()),
                "tenant.settings",
                &detail,
            )
            .await?;
            tx.commit().await.map_err(Error::db("tenant settings"))?;
            for name in &dropped {
                c.forget_table(&id2, name);
                let folder = format!("{}/{}/{}", c.warehouse, id2, name);
                c.delete_objects_under(&folder).await?;
            }
            Ok(())
        })
        .await?;
        if switched {
            self.ensure_builtin_projections(id).await?;
        }
        self.tenant(id).await
    }

    /// Deletes a tenant from the catalog: its namespace, tables, settings and pending erasure
    /// requests. Its tokens stop working with the next request. With `purge`, also deletes every
    /// object under the tenant's prefix in the warehouse (also when the tenant is already gone
    /// from the catalog: an interrupted purge is finished by running it again).
    pub async fn delete_tenant(
        &self,
        id: &TenantId,
        purge: bool,
        actor: &str,
    ) -> Result<TenantDeleted> {
        let (id, actor) = (id.clone(), actor.to_string());
        self.on_io(move |c| async move {
            let mut tx = c.write_tx().await.map_err(Error::db("delete tenant"))?;
            let gone = sqlx::query("DELETE FROM floe_tenants WHERE id = $1")
                .bind(id.as_str())
                .execute(&mut *tx)
                .await
                .map_err(Error::db("delete tenant"))?;
            let existed = gone.rows_affected() > 0;
            if !existed && !purge {
                return Err(Error::NotFound {
                    what: format!("tenant {id}"),
                });
            }
            for sql in [
                "DELETE FROM iceberg_tables WHERE catalog_name = $1 AND table_namespace = $2",
                "DELETE FROM iceberg_namespace_properties WHERE catalog_name = $1 \
                 AND namespace = $2",
            ] {
                sqlx::query(sql)
                    .bind(&c.name)
                    .bind(id.as_str())
                    .execute(&mut *tx)
                    .await
                    .map_err(Error::db("delete tenant"))?;
            }
            for sql in [
                "DELETE FROM floe_maintenance WHERE tenant = $1",
                "DELETE FROM floe_erasures WHERE tenant = $1",
                "DELETE FROM floe_usage WHERE tenant = $1",
                "DELETE FROM floe_projections WHERE tenant = $1",
                "DELETE FROM floe_refresh_leases WHERE tenant = $1",
                "DELETE FROM floe_schemas WHERE tenant = $1",
                "DELETE FROM floe_event_types WHERE tenant = $1",
                "DELETE FROM floe_alerts WHERE tenant = $1",
                "DELETE FROM floe_ingest_minutes WHERE tenant = $1",
                "DELETE FROM floe_api_keys WHERE tenant = $1",
                "DELETE FROM floe_revoked_tokens WHERE tenant = $1",
                // Its own audit chain goes with its tables (its creation and deletion are
                // the platform's records).
                "DELETE FROM floe_audit WHERE chain = $1",
                "DELETE FROM floe_audit_chains WHERE chain = $1",
            ] {
                sqlx::query(sql)
                    .bind(id.as_str())
                    .execute(&mut *tx)
                    .await
                    .map_err(Error::db("delete tenant"))?;
            }
            let detail = serde_json::json!({ "purge": purge, "existed": existed }).to_string();
            audit_in(&mut tx, &actor, Some(id.as_str()), "tenant.delete", &detail).await?;
            tx.commit().await.map_err(Error::db("delete tenant"))?;
            c.forget_tenant_tables(&id);
            let objects_deleted = if purge {
                c.delete_tenant_objects(&id).await?
            } else {
                0
            };
            if purge {
                c.audit(
                    &actor,
                    Some(id.as_str()),
                    "tenant.purged",
                    &serde_json::json!({ "objects_deleted": objects_deleted }).to_string(),
                )
                .await?;
            }
            Ok(TenantDeleted {
                existed,
                objects_deleted,
            })
        })
        .await
    }

    pub async fn tenant_exists(&self, id: &TenantId) -> Result<bool> {
        let id = id.to_string();
        self.on_io(move |c| async move {
            let row: Option<(String,)> =
                sqlx::query_as("SELECT id FROM floe_tenants WHERE id = $1")
                    .bind(&id)
                    .fetch_optional(&c.db)
                    .await
                    .map_err(Error::db("look up tenant"))?;
            Ok(row.is_some())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_fields_name_payload_paths() {
        let ok = parse_user_fields(&[
            "payload.customer_id".into(),
            " payload.buyer.id ".into(),
            "payload.customer_id".into(),
            "".into(),
        ])
        .unwrap();
        assert_eq!(ok, vec!["payload.customer_id", "payload.buyer.id"]);
        for bad in [
            "user_id",
            "customer_id",
            "payload.",
            "payload..x",
            "payload",
        ] {
            assert!(parse_user_fields(&[bad.to_string()]).is_err(), "{bad}");
        }
    }

    #[test]
    fn tenant_id_rules() {
        for ok in ["a", "tenant-42", "t_1", "0abc", &"a".repeat(63)] {
            assert!(TenantId::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "-a",
            "_a",
            "A",
            "a.b",
            "a/b",
            "a b",
            &"a".repeat(64),
            "ä",
        ] {
            assert!(TenantId::parse(bad).is_err(), "{bad}");
        }
    }
}
