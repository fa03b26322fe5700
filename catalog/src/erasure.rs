//! User erasure requests (GDPR): recorded here, carried out by the compactor.
//!
//! A request is `pending` until the compactor has rewritten every file holding the users'
//! rows, expired the snapshots that still reached the old files, deleted them, and checked that
//! no object under the tenant's prefix holds the users in any form; then it is `completed` with
//! `verified_at_ms`. The user ids live in the catalog database only while the request is open:
//! once verified they are replaced by their count.

use crate::db::now_ms;
use crate::tenant::TenantId;
use crate::{Catalog, Error, Result};

/// Most user ids one request may name.
pub const MAX_USER_IDS: usize = 10_000;

/// An erasure request as reported by `GET /v1/erasures/{id}`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Erasure {
    pub id: String,
    pub tenant: String,
    /// The ids while pending; empty once completed (see `users`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub user_ids: Vec<String>,
    /// How many users the request names.
    pub users: usize,
    /// `pending` or `completed`.
    pub status: String,
    pub requested_by: String,
    pub requested_at_ms: i64,
    pub completed_at_ms: Option<i64>,
    pub verified_at_ms: Option<i64>,
    /// What the last attempt found (rows removed, objects still holding the users, errors).
    pub detail: Option<String>,
}

type Row = (
    String,
    String,
    String,
    String,
    String,
    i64,
    Option<i64>,
    Option<i64>,
    Option<String>,
);

const COLUMNS: &str = "id, tenant, user_ids, status, requested_by, requested_at_ms, \
                       completed_at_ms, verified_at_ms, detail";

fn from_row(r: Row) -> Erasure {
    let (id, tenant, user_ids, status, requested_by, requested_at_ms, completed, verified, detail) =
        r;
    let parsed: serde_json::Value = serde_json::from_str(&user_ids).unwrap_or_default();
    let (user_ids, users) = match parsed {
        serde_json::Value::Array(ids) => {
            let ids: Vec<String> = ids
                .into_iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect();
            let n = ids.len();
            (ids, n)
        }
        serde_json::Value::Number(n) => (Vec::new(), n.as_u64().unwrap_or(0) as usize),
        _ => (Vec::new(), 0),
    };
    Erasure {
        id,
        tenant,
        user_ids,
        users,
        status,
        requested_by,
        requested_at_ms,
        completed_at_ms: completed,
        verified_at_ms: verified,
        detail,
    }
}

impl Catalog {
    /// Records an erasure request (audited); returns it, `pending`.
    pub async fn request_erasure(
        &self,
        tenant: &TenantId,
        user_ids: Vec<String>,
        actor: &str,
    ) -> Result<Erasure> {
        let mut ids: Vec<String> = user_ids
            .into_iter()
            .map(|u| u.trim().to_string())
            .filter(|u| !u.is_empty())
            .collect();
        ids.sort();
        ids.dedup();
        if ids.is_empty() {
            return Err(Error::Invalid {
                message: "user_ids must name at least one non-empty user id".into(),
            });
        }
        if ids.len() > MAX_USER_IDS {
            return Err(Error::Invalid {
                message: format!(
                    "at most {MAX_USER_IDS} user ids per request (got {})",
                    ids.len()
                ),
            });
        }
        let id = uuid::Uuid::now_v7().to_string();
        let (tenant, actor, id2) = (tenant.clone(), actor.to_string(), id.clone());
        let users =
            serde_json::to_string(&ids).map_err(|e| Error::internal(format!("user ids: {e}")))?;
        let count = ids.len();
        self.on_io(move |c| async move {
            let mut tx = c.db.begin().await.map_err(Error::db("erasure request"))?;
            sqlx::query(
                "INSERT INTO floe_erasures (id, tenant, user_ids, status, requested_by, \
                 requested_at_ms) VALUES ($1, $2, $3, 'pending', $4, $5)",
            )
            .bind(&id2)
            .bind(tenant.as_str())
            .bind(&users)
            .bind(&actor)
            .bind(now_ms())
            .execute(&mut *tx)
            .await
            .map_err(Error::db("erasure request"))?;
            // The audit log names the request, never the users.
            let detail = serde_json::json!({ "erasure": id2, "users": count }).to_string();
            crate::tenant::audit_in(
                &mut tx,
                &actor,
                Some(tenant.as_str()),
                "erasure.request",
                &detail,
            )
            .await?;
            tx.commit().await.map_err(Error::db("erasure request"))?;
            Ok(())
        })
        .await?;
        self.erasure(None, &id).await
    }

    /// One erasure request; with `tenant`, only if it belongs to that tenant.
    pub async fn erasure(&self, tenant: Option<&TenantId>, id: &str) -> Result<Erasure> {
        let (tenant, id) = (tenant.cloned(), id.to_string());
        self.on_io(move |c| async move {
            let row: Option<Row> = sqlx::query_as(&format!(
                "SELECT {COLUMNS} FROM floe_erasures WHERE id = $1"
            ))
            .bind(&id)
            .fetch_optional(&c.db)
            .await
            .map_err(Error::db("erasure"))?;
            row.map(from_row)
                .filter(|e| tenant.as_ref().is_none_or(|t| t.as_str() == e.tenant))
                .ok_or_else(|| Error::NotFound {
                    what: format!("erasure {id}"),
                })
        })
        .await
    }

    /// Pending requests, oldest first.
    pub async fn pending_erasures(&self) -> Result<Vec<Erasure>> {
        self.on_io(|c| async move {
            let rows: Vec<Row> = sqlx::query_as(&format!(
                "SELECT {COLUMNS} FROM floe_erasures WHERE status = 'pending' \
                 ORDER BY requested_at_ms"
            ))
            .fetch_all(&c.db)
            .await
            .map_err(Error::db("pending erasures"))?;
            Ok(rows.into_iter().map(from_row).collect())
        })
        .await
    }

    /// Records an attempt: `verified` completes the request (and forgets the ids, keeping
    /// their count); otherwise it stays pending with `detail`.
    pub async fn record_erasure(&self, e: &Erasure, verified: bool, detail: &str) -> Result<()> {
        let (id, tenant, users, detail) =
            (e.id.clone(), e.tenant.clone(), e.users, detail.to_string());
        self.on_io(move |c| async move {
            let mut tx = c.db.begin().await.map_err(Error::db("erasure"))?;
            if verified {
                let now = now_ms();
                sqlx::query(
                    "UPDATE floe_erasures SET status = 'completed', user_ids = $1, \
                     completed_at_ms = $2, verified_at_ms = $2, detail = $3 WHERE id = $4",
                )
                .bind(users.to_string())
                .bind(now)
                .bind(&detail)
                .bind(&id)
                .execute(&mut *tx)
                .await
                .map_err(Error::db("erasure"))?;
                let audit = serde_json::json!({ "erasure": id, "users": users }).to_string();
                crate::tenant::audit_in(
                    &mut tx,
                    "compactor",
                    Some(&tenant),
                    "erasure.completed",
                    &audit,
                )
                .await?;
            } else {
                sqlx::query("UPDATE floe_erasures SET detail = $1 WHERE id = $2")
                    .bind(&detail)
                    .bind(&id)
                    .execute(&mut *tx)
                    .await
                    .map_err(Error::db("erasure"))?;
            }
            tx.commit().await.map_err(Error::db("erasure"))?;
            Ok(())
        })
        .await
    }
}
