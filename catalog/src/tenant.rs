//! Tenants: validated ids, and their lifecycle in the catalog (one Iceberg namespace each).

use std::fmt;

use crate::db::now_ms;
use crate::{Catalog, Error, Result};

/// A validated tenant id: `[a-z0-9][a-z0-9_-]{0,62}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TenantId(String);

impl TenantId {
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

/// A tenant as listed by the catalog.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Tenant {
    pub id: String,
    pub created_at_ms: i64,
    /// Days of events kept (by event time); `None`: forever.
    pub retention_days: Option<i64>,
    /// The compaction target for this tenant's files; `None`: `compaction.target_file_bytes`.
    pub target_file_bytes: Option<i64>,
}

/// A change of tenant settings: `None` leaves a setting alone, `Some(None)` clears it.
#[derive(Debug, Clone, Default)]
pub struct TenantSettings {
    pub retention_days: Option<Option<i64>>,
    pub target_file_bytes: Option<Option<i64>>,
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
        let (id, actor) = (id.clone(), actor.to_string());
        self.on_io(move |c| async move { c.create_tenant_here(&id, &actor).await })
            .await
    }

    async fn create_tenant_here(&self, id: &TenantId, actor: &str) -> Result<Tenant> {
        if self.tenant_exists(id).await? {
            return Err(Error::AlreadyExists {
                what: format!("tenant {id}"),
            });
        }
        // Write the table's first metadata file before any row points at it: a crash in
        // between leaves an unreferenced file, never a row naming a missing file.
        let events_location = self.create_events_metadata(id).await?;
        let created_at_ms = now_ms();
        let mut tx = self.db.begin().await.map_err(Error::db("create tenant"))?;
        let inserted = sqlx::query(
            "INSERT INTO floe_tenants (id, created_at_ms) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        )
        .bind(id.as_str())
        .bind(created_at_ms)
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
        sqlx::query(
            "INSERT INTO iceberg_tables (catalog_name, table_namespace, table_name, \
             metadata_location, previous_metadata_location, iceberg_type) \
             VALUES ($1, $2, $3, $4, NULL, 'TABLE')",
        )
        .bind(&self.name)
        .bind(id.as_str())
        .bind(crate::table::EVENTS_TABLE)
        .bind(&events_location)
        .execute(&mut *tx)
        .await
        .map_err(Error::db("insert events table"))?;
        audit_in(&mut tx, actor, Some(id.as_str()), "tenant.create", "{}").await?;
        tx.commit()
            .await
            .map_err(Error::db("create tenant commit"))?;
        Ok(Tenant {
            id: id.to_string(),
            created_at_ms,
            retention_days: None,
            target_file_bytes: None,
        })
    }

    pub async fn list_tenants(&self) -> Result<Vec<Tenant>> {
        self.on_io(|c| async move {
            let rows: Vec<(String, i64, Option<i64>, Option<i64>)> = sqlx::query_as(
                "SELECT id, created_at_ms, retention_days, target_file_bytes FROM floe_tenants \
                 ORDER BY id",
            )
            .fetch_all(&c.db)
            .await
            .map_err(Error::db("list tenants"))?;
            Ok(rows
                .into_iter()
                .map(
                    |(id, created_at_ms, retention_days, target_file_bytes)| Tenant {
                        id,
                        created_at_ms,
                        retention_days,
                        target_file_bytes,
                    },
                )
                .collect())
        })
        .await
    }

    /// One tenant, with its settings.
    pub async fn tenant(&self, id: &TenantId) -> Result<Tenant> {
        let id = id.clone();
        self.on_io(move |c| async move {
            let row: Option<(String, i64, Option<i64>, Option<i64>)> = sqlx::query_as(
                "SELECT id, created_at_ms, retention_days, target_file_bytes FROM floe_tenants \
                 WHERE id = $1",
            )
            .bind(id.as_str())
            .fetch_optional(&c.db)
            .await
            .map_err(Error::db("look up tenant"))?;
            let (id, created_at_ms, retention_days, target_file_bytes) =
                row.ok_or_else(|| Error::NotFound {
                    what: format!("tenant {id}"),
                })?;
            Ok(Tenant {
                id,
                created_at_ms,
                retention_days,
                target_file_bytes,
            })
        })
        .await
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
        let (id2, actor) = (id.clone(), actor.to_string());
        self.on_io(move |c| async move {
            let mut tx = c.db.begin().await.map_err(Error::db("tenant settings"))?;
            let mut detail = serde_json::Map::new();
            for (column, value) in [
                ("retention_days", settings.retention_days),
                ("target_file_bytes", settings.target_file_bytes),
            ] {
                let Some(value) = value else { continue };
                let done = sqlx::query(&format!(
                    "UPDATE floe_tenants SET {column} = $1 WHERE id = $2"
                ))
                .bind(value)
                .bind(id2.as_str())
                .execute(&mut *tx)
                .await
                .map_err(Error::db("tenant settings"))?;
                if done.rows_affected() == 0 {
                    return Err(Error::NotFound {
                        what: format!("tenant {id2}"),
                    });
                }
                detail.insert(column.to_string(), serde_json::json!(value));
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
            Ok(())
        })
        .await?;
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
            let mut tx = c.db.begin().await.map_err(Error::db("delete tenant"))?;
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
            if let Ok(mut cache) = c.tables.lock() {
                cache.retain(|(t, _), _| t != id.as_str());
            }
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

    /// When the tenant was created (ms), or `None` if it does not exist.
    pub async fn tenant_created_at(&self, id: &TenantId) -> Result<Option<i64>> {
        let id = id.to_string();
        self.on_io(move |c| async move {
            let row: Option<(i64,)> =
                sqlx::query_as("SELECT created_at_ms FROM floe_tenants WHERE id = $1")
                    .bind(&id)
                    .fetch_optional(&c.db)
                    .await
                    .map_err(Error::db("look up tenant"))?;
            Ok(row.map(|(at,)| at))
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

    /// Appends to the audit log.
    pub async fn audit(
        &self,
        actor: &str,
        tenant: Option<&str>,
        action: &str,
        detail: &str,
    ) -> Result<()> {
        let (actor, tenant, action, detail) = (
            actor.to_string(),
            tenant.map(str::to_string),
            action.to_string(),
            detail.to_string(),
        );
        self.on_io(move |c| async move {
            let mut conn = c.db.acquire().await.map_err(Error::db("audit"))?;
            audit_in(&mut conn, &actor, tenant.as_deref(), &action, &detail).await
        })
        .await
    }
}

pub(crate) async fn audit_in(
    conn: &mut sqlx::AnyConnection,
    actor: &str,
    tenant: Option<&str>,
    action: &str,
    detail: &str,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO floe_audit (at_ms, actor, tenant, action, detail) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(now_ms())
    .bind(actor)
    .bind(tenant)
    .bind(action)
    .bind(detail)
    .execute(conn)
    .await
    .map_err(Error::db("audit"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
