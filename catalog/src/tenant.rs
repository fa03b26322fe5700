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
        })
    }

    pub async fn list_tenants(&self) -> Result<Vec<Tenant>> {
        self.on_io(|c| async move {
            let rows: Vec<(String, i64)> =
                sqlx::query_as("SELECT id, created_at_ms FROM floe_tenants ORDER BY id")
                    .fetch_all(&c.db)
                    .await
                    .map_err(Error::db("list tenants"))?;
            Ok(rows
                .into_iter()
                .map(|(id, created_at_ms)| Tenant { id, created_at_ms })
                .collect())
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

async fn audit_in(
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
