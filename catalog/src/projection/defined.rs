//! User-defined projections: a tenant's own read models, each a SQL definition over `events`
//! (checked by the query service before it gets here) and a projection table partitioned by
//! `day`. The definition row and the table are created, and dropped, in one transaction.

use std::sync::Arc;

use iceberg::spec::{NestedField, Schema, TableMetadata, Type};

use super::{BUILTINS, DAY_COLUMN, PROJECTION_KIND, projection_spec};
use crate::audit::audit_in;
use crate::db::now_ms;
use crate::table::{DLQ_TABLE, EVENTS_TABLE};
use crate::tenant::TenantId;
use crate::{Catalog, Error, Result};

/// A user-defined projection.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Defined {
    pub name: String,
    pub sql: String,
    pub created_at_ms: i64,
    pub created_by: String,
}

/// Table property of a user-defined projection: the definition its rows are computed by. The
/// definition row (`floe_projections`) holds the one wanted; when they differ (a redefinition
/// not yet rebuilt), the next refresh recomputes every row by the wanted one and brings in its
/// schema, property and rows in one commit.
pub const DEFINITION: &str = "floe.projection.sql";

/// The definition a projection table's rows are computed by (`None`: a built-in, or a table
/// made before the property was recorded, whose definition is the row's).
pub fn definition_of(metadata: &TableMetadata) -> Option<&str> {
    metadata.properties().get(DEFINITION).map(String::as_str)
}

/// A user-defined projection's new definition, brought in by the commit that recomputes all
/// its rows by it.
#[derive(Debug, Clone)]
pub struct Redefinition {
    pub sql: String,
    /// The definition's output columns (`day` first), as stored.
    pub columns: Vec<(String, Type)>,
}

impl Redefinition {
    /// The table's schema under this definition, given its metadata now: a column of the same
    /// name and type keeps its field id (`day`, the partition source, always does); any other
    /// gets a new one past the table's last. The schema id is an identical schema's, or one
    /// past the highest (as Iceberg's metadata builder picks it).
    pub fn schema(&self, metadata: &TableMetadata) -> Result<Schema> {
        let current = metadata.current_schema();
        let mut next = metadata.last_column_id();
        let mut fields = Vec::with_capacity(self.columns.len());
        for (name, ty) in &self.columns {
            let day = name == DAY_COLUMN;
            let kept = current
                .field_by_name(name)
                .filter(|f| *f.field_type == *ty && f.required == day);
            let id = match kept {
                Some(f) => f.id,
                None if day => {
                    return Err(Error::invalid(format!(
                        "a projection's day column is a date; this definition makes it {ty}"
                    )));
                }
                None => {
                    next += 1;
                    next
                }
            };
            fields.push(Arc::new(if day {
                NestedField::required(id, name, ty.clone())
            } else {
                NestedField::optional(id, name, ty.clone())
            }));
        }
        let draft = Schema::builder()
            .with_fields(fields.clone())
            .build()
            .map_err(Error::ice("building a projection schema"))?;
        let id = metadata
            .schemas_iter()
            .find(|s| same_columns(&draft, s))
            .map(|s| s.schema_id())
            .unwrap_or_else(|| {
                metadata
                    .schemas_iter()
                    .map(|s| s.schema_id())
                    .max()
                    .unwrap_or(0)
                    + 1
            });
        Schema::builder()
            .with_schema_id(id)
            .with_fields(fields)
            .build()
            .map_err(Error::ice("building a projection schema"))
    }
}

/// Whether two schemas have the same columns (ids, names, types), whatever their ids: Iceberg's
/// test for reusing a schema (neither has identifier fields here).
pub(crate) fn same_columns(a: &Schema, b: &Schema) -> bool {
    a.as_struct() == b.as_struct() && a.identifier_field_ids().eq(b.identifier_field_ids())
}

/// Checks a projection name: `[a-z][a-z0-9_]{0,62}`, not a table Floe makes.
pub fn check_name(name: &str) -> Result<()> {
    let mut chars = name.chars();
    let well_formed = name.len() <= 63
        && chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if !well_formed {
        return Err(Error::invalid(format!(
            "projection name {name:?}: a lowercase letter, then up to 62 lowercase letters, \
             digits or underscores"
        )));
    }
    if [EVENTS_TABLE, DLQ_TABLE, crate::audit::AUDIT_TABLE].contains(&name)
        || BUILTINS.iter().any(|b| b.name == name)
        || name.starts_with("_floe")
    {
        return Err(Error::invalid(format!(
            "projection name {name:?} is taken by a table Floe makes"
        )));
    }
    Ok(())
}

impl Catalog {
    /// Creates a user-defined projection: its definition and its (empty) table with `schema`,
    /// partitioned by `day`. `AlreadyExists` if the tenant has a table of that name.
    pub async fn create_defined_projection(
        &self,
        tenant: &TenantId,
        name: &str,
        sql: &str,
        schema: Schema,
        actor: &str,
    ) -> Result<Defined> {
        check_name(name)?;
        let spec = projection_spec(name, &schema, true)?;
        let defined = Defined {
            name: name.to_string(),
            sql: sql.to_string(),
            created_at_ms: now_ms(),
            created_by: actor.to_string(),
        };
        let (tenant, d) = (tenant.clone(), defined.clone());
        self.on_io(move |c| async move {
            let key = c.tenant(&tenant).await?.key()?;
            if c.list_tables(&tenant).await?.contains(&d.name) {
                return Err(Error::AlreadyExists {
                    what: format!("table {tenant}.{}", d.name),
                });
            }
            let location = c
                .create_table_metadata(
                    &key,
                    &d.name,
                    schema,
                    spec,
                    PROJECTION_KIND,
                    &[(DEFINITION.to_string(), d.sql.clone())],
                )
                .await?;
            let mut tx = c.write_tx().await.map_err(Error::db("create projection"))?;
            let inserted = sqlx::query(
                "INSERT INTO iceberg_tables (catalog_name, table_namespace, table_name, \
                 metadata_location, previous_metadata_location, iceberg_type) \
                 VALUES ($1, $2, $3, $4, NULL, 'TABLE') ON CONFLICT DO NOTHING",
            )
            .bind(&c.name)
            .bind(tenant.as_str())
            .bind(&d.name)
            .bind(&location)
            .execute(&mut *tx)
            .await
            .map_err(Error::db("create projection table"))?;
            if inserted.rows_affected() == 0 {
                let _ = c.file_io.delete(&location).await;
                return Err(Error::AlreadyExists {
                    what: format!("table {tenant}.{}", d.name),
                });
            }
            sqlx::query(
                "INSERT INTO floe_projections (tenant, name, sql, created_at_ms, created_by) \
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(tenant.as_str())
            .bind(&d.name)
            .bind(&d.sql)
            .bind(d.created_at_ms)
            .bind(&d.created_by)
            .execute(&mut *tx)
            .await
            .map_err(Error::db("record projection"))?;
            let detail = serde_json::json!({ "name": d.name, "sql": d.sql }).to_string();
            audit_in(
                &mut tx,
                &d.created_by,
                Some(tenant.as_str()),
                "projection.create",
                &detail,
            )
            .await?;
            tx.commit().await.map_err(Error::db("create projection"))?;
            Ok(d)
        })
        .await
    }

    /// Replaces the definition of a user-defined projection (checked by the caller): the rows
    /// follow at the next refresh, which recomputes them all (see [`DEFINITION`]); until then
    /// readers see the rows of the definition before. `NotFound` if there is none.
    pub async fn redefine_projection(
        &self,
        tenant: &TenantId,
        name: &str,
        sql: &str,
        actor: &str,
    ) -> Result<Defined> {
        let (tenant, name, sql, actor) = (
            tenant.clone(),
            name.to_string(),
            sql.to_string(),
            actor.to_string(),
        );
        self.on_io(move |c| async move {
            let mut tx = c
                .write_tx()
                .await
                .map_err(Error::db("redefine projection"))?;
            let row: Option<(i64,)> = sqlx::query_as(
                "UPDATE floe_projections SET sql = $1 WHERE tenant = $2 AND name = $3 \
                 RETURNING created_at_ms",
            )
            .bind(&sql)
            .bind(tenant.as_str())
            .bind(&name)
            .fetch_optional(&mut *tx)
            .await
            .map_err(Error::db("redefine projection"))?;
            let Some((created_at_ms,)) = row else {
                return Err(Error::NotFound {
                    what: format!("projection {name} of tenant {tenant}"),
                });
            };
            let detail = serde_json::json!({ "name": name, "sql": sql }).to_string();
            audit_in(
                &mut tx,
                &actor,
                Some(tenant.as_str()),
                "projection.redefine",
                &detail,
            )
            .await?;
            tx.commit()
                .await
                .map_err(Error::db("redefine projection"))?;
            Ok(Defined {
                name,
                sql,
                created_at_ms,
                created_by: actor,
            })
        })
        .await
    }

    /// The tenant's user-defined projections, by name.
    pub async fn defined_projections(&self, tenant: &TenantId) -> Result<Vec<Defined>> {
        let tenant = tenant.clone();
        self.on_io(move |c| async move {
            let rows: Vec<(String, String, i64, String)> = sqlx::query_as(
                "SELECT name, sql, created_at_ms, created_by FROM floe_projections \
                 WHERE tenant = $1 ORDER BY name",
            )
            .bind(tenant.as_str())
            .fetch_all(&c.db)
            .await
            .map_err(Error::db("list projections"))?;
            Ok(rows
                .into_iter()
                .map(|(name, sql, created_at_ms, created_by)| Defined {
                    name,
                    sql,
                    created_at_ms,
                    created_by,
                })
                .collect())
        })
        .await
    }

    /// Drops a user-defined projection: its definition, its table and the table's files.
    pub async fn drop_defined_projection(
        &self,
        tenant: &TenantId,
        name: &str,
        actor: &str,
    ) -> Result<()> {
        let (tenant, name, actor) = (tenant.clone(), name.to_string(), actor.to_string());
        self.on_io(move |c| async move {
            let mut tx = c.write_tx().await.map_err(Error::db("drop projection"))?;
            let gone = sqlx::query("DELETE FROM floe_projections WHERE tenant = $1 AND name = $2")
                .bind(tenant.as_str())
                .bind(&name)
                .execute(&mut *tx)
                .await
                .map_err(Error::db("drop projection"))?;
            if gone.rows_affected() == 0 {
                return Err(Error::NotFound {
                    what: format!("projection {name}"),
                });
            }
            sqlx::query(
                "DELETE FROM iceberg_tables WHERE catalog_name = $1 AND table_namespace = $2 \
                 AND table_name = $3",
            )
            .bind(&c.name)
            .bind(tenant.as_str())
            .bind(&name)
            .execute(&mut *tx)
            .await
            .map_err(Error::db("drop projection table"))?;
            let detail = serde_json::json!({ "name": name }).to_string();
            audit_in(
                &mut tx,
                &actor,
                Some(tenant.as_str()),
                "projection.drop",
                &detail,
            )
            .await?;
            tx.commit().await.map_err(Error::db("drop projection"))?;
            c.forget_table(&tenant, &name);
            c.delete_objects_under(&format!("{}/{}/{}", c.warehouse, tenant, name))
                .await?;
            Ok(())
        })
        .await
    }
}
