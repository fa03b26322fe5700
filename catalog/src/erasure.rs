//! User erasure requests (GDPR): recorded here, carried out by the compactor.
//!
//! A request names users; a row is theirs when its `user_id` is one of the ids, or when a
//! payload field the tenant declared as a user reference (`floe tenant set T --user-fields
//! payload.customer_id`) holds one, compared exactly. The fields are fixed when the request is
//! made and reported with it.
//!
//! A request is `pending` until the compactor has rewritten every file holding the users'
//! rows, expired the snapshots that still reached the old files, deleted them, and checked that
//! no object under the tenant's prefix holds the users in those fields; then it is `completed`
//! with `verified_at`. The user ids live in the catalog database only while the request is
//! open: once verified they are replaced by their count.

use crate::db::now_ms;
use crate::tenant::TenantId;
use crate::{Catalog, Error, Result};

/// The field every erasure matches.
pub const USER_ID_FIELD: &str = "user_id";

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
    /// The fields compared with the ids: `user_id` and the tenant's declared user fields
    /// (`payload.customer_id`) when the request was made.
    pub fields: Vec<String>,
    /// `pending` or `completed`.
    pub status: String,
    pub requested_by: String,
    pub requested_at_ms: i64,
    pub completed_at_ms: Option<i64>,
    pub verified_at_ms: Option<i64>,
    /// `verified_at_ms` as RFC 3339.
    pub verified_at: Option<String>,
    /// Rows of the users removed so far, and the files that held them (rewritten).
    pub rows_removed: u64,
    pub files_rewritten: u64,
    /// Passes run for the request.
    pub attempts: u64,
    /// What the last attempt found (objects still holding the users, errors).
    pub detail: Option<String>,
}

/// What one pass did for one request (see [`Catalog::record_erasure`]).
#[derive(Debug, Clone, Default)]
pub struct ErasurePass {
    /// Nothing under the tenant's prefix holds the request's users any more.
    pub verified: bool,
    pub rows_removed: u64,
    pub files_rewritten: u64,
    pub detail: String,
}

const COLUMNS: &str = "id, tenant, user_ids, status, requested_by, requested_at_ms, \
                       completed_at_ms, verified_at_ms, detail, \
                       fields, rows_removed, files_rewritten, attempts";

/// A row of `floe_erasures` as read (see `COLUMNS`).
type FlatRow = (
    String,
    String,
    String,
    String,
    String,
    i64,
    Option<i64>,
    Option<i64>,
    Option<String>,
    Option<String>,
    i64,
    i64,
    i64,
);

fn from_row(r: FlatRow) -> Erasure {
    let (
        id,
        tenant,
        user_ids,
        status,
        requested_by,
        requested_at_ms,
        completed,
        verified,
        detail,
        fields,
        rows_removed,
        files_rewritten,
        attempts,
    ) = r;
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
    let fields = fields
        .and_then(|f| serde_json::from_str(&f).ok())
        .unwrap_or_else(|| vec![USER_ID_FIELD.to_string()]);
    Erasure {
        id,
        tenant,
        user_ids,
        users,
        fields,
        status,
        requested_by,
        requested_at_ms,
        completed_at_ms: completed,
        verified_at_ms: verified,
        verified_at: verified
            .and_then(chrono::DateTime::from_timestamp_millis)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
        rows_removed: rows_removed.max(0) as u64,
        files_rewritten: files_rewritten.max(0) as u64,
        attempts: attempts.max(0) as u64,
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
            let mut tx = c.write_tx().await.map_err(Error::db("erasure request"))?;
            // The fields compared are fixed now, with the request, and reported with it.
            let declared: Option<(Option<String>,)> =
                sqlx::query_as("SELECT user_fields FROM floe_tenants WHERE id = $1")
                    .bind(tenant.as_str())
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(Error::db("erasure request"))?;
            let Some((declared,)) = declared else {
                return Err(Error::NotFound {
                    what: format!("tenant {tenant}"),
                });
            };
            let mut fields = vec![USER_ID_FIELD.to_string()];
            fields.extend(
                declared
                    .and_then(|f| serde_json::from_str::<Vec<String>>(&f).ok())
                    .unwrap_or_default(),
            );
            let fields = serde_json::to_string(&fields)
                .map_err(|e| Error::internal(format!("erasure fields: {e}")))?;
            sqlx::query(
                "INSERT INTO floe_erasures (id, tenant, user_ids, status, requested_by, \
                 requested_at_ms, fields) VALUES ($1, $2, $3, 'pending', $4, $5, $6)",
            )
            .bind(&id2)
            .bind(tenant.as_str())
            .bind(&users)
            .bind(&actor)
            .bind(now_ms())
            .bind(&fields)
            .execute(&mut *tx)
            .await
            .map_err(Error::db("erasure request"))?;
            // The audit log names the request, never the users.
            let detail = serde_json::json!({ "erasure": id2, "users": count }).to_string();
            crate::audit::audit_in(
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
            let row: Option<FlatRow> = sqlx::query_as(&format!(
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
            let rows: Vec<FlatRow> = sqlx::query_as(&format!(
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

    /// Records a pass: its rows and files add to the request's; `verified` completes the
    /// request (and forgets the ids, keeping their count); otherwise it stays pending with
    /// `detail`.
    pub async fn record_erasure(&self, e: &Erasure, pass: &ErasurePass) -> Result<()> {
        let (id, tenant, users, pass) = (e.id.clone(), e.tenant.clone(), e.users, pass.clone());
        self.on_io(move |c| async move {
            let mut tx = c.write_tx().await.map_err(Error::db("erasure"))?;
            sqlx::query(
                "UPDATE floe_erasures SET detail = $1, rows_removed = rows_removed + $2, \
                 files_rewritten = files_rewritten + $3, attempts = attempts + 1 WHERE id = $4",
            )
            .bind(&pass.detail)
            .bind(pass.rows_removed as i64)
            .bind(pass.files_rewritten as i64)
            .bind(&id)
            .execute(&mut *tx)
            .await
            .map_err(Error::db("erasure"))?;
            if pass.verified {
                let now = now_ms();
                sqlx::query(
                    "UPDATE floe_erasures SET status = 'completed', user_ids = $1, \
                     completed_at_ms = $2, verified_at_ms = $2 WHERE id = $3",
                )
                .bind(users.to_string())
                .bind(now)
                .bind(&id)
                .execute(&mut *tx)
                .await
                .map_err(Error::db("erasure"))?;
                let audit = serde_json::json!({ "erasure": id, "users": users }).to_string();
                crate::audit::audit_in(
                    &mut tx,
                    crate::audit::MAINTENANCE_ACTOR,
                    Some(&tenant),
                    "erasure.completed",
                    &audit,
                )
                .await?;
            }
            tx.commit().await.map_err(Error::db("erasure"))?;
            Ok(())
        })
        .await
    }
}
