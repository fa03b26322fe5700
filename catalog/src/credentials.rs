//! Long-lived API keys and revoked tokens, kept in the catalog database.
//!
//! An API key is `floe_<id>_<secret>`: the id (12 hex digits) is its visible prefix, stored as
//! is; of the secret (64 hex digits, 256 random bits) only its SHA-256 is stored, so the key is
//! shown once, when made. A key carries a tenant, a role, optional event types it may send and
//! an optional expiry, and is refused once revoked. A token (JWT) is revoked by its `jti`, for
//! its tenant, until it would have expired anyway. Every process reads revocations again within
//! `auth.revocation_refresh_ms` (see [`crate::Authenticator`]).

use sha2::{Digest, Sha256};

use crate::audit::audit_in;
use crate::auth::Role;
use crate::db::now_ms;
use crate::tenant::TenantId;
use crate::{Catalog, Error, Result};

/// What every key starts with.
pub const KEY_PREFIX: &str = "floe_";

/// An API key as stored (never its secret).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ApiKey {
    /// The visible prefix (`floe_<id>`) without `floe_`.
    pub id: String,
    pub tenant: String,
    pub role: Role,
    /// Event types the key may send (empty: any).
    pub event_types: Vec<String>,
    pub created_at_ms: i64,
    pub created_by: String,
    pub expires_at_ms: Option<i64>,
    pub revoked_at_ms: Option<i64>,
    #[serde(skip)]
    pub secret_sha256: String,
}

impl ApiKey {
    /// The key's visible prefix, as people recognise it.
    pub fn prefix(&self) -> String {
        format!("{KEY_PREFIX}{}", self.id)
    }
}

/// A new key and the only copy of its secret.
#[derive(Debug, Clone)]
pub struct MadeKey {
    pub key: ApiKey,
    /// `floe_<id>_<secret>`: what the client sends as `Authorization: Bearer …`.
    pub token: String,
}

fn sha256_hex(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn random_hex(bytes: usize) -> String {
    (0..bytes)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect()
}

/// The id and secret of a presented key, if it has a key's shape.
pub fn parse_key(presented: &str) -> Option<(&str, &str)> {
    let rest = presented.strip_prefix(KEY_PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    (hex(id, 12) && hex(secret, 64)).then_some((id, secret))
}

/// Whether `secret` is the one whose SHA-256 is `stored` (compared in constant time).
pub fn secret_matches(secret: &str, stored: &str) -> bool {
    let got = sha256_hex(secret);
    got.len() == stored.len()
        && got
            .bytes()
            .zip(stored.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

#[derive(sqlx::FromRow)]
struct Row {
    id: String,
    tenant: String,
    role: String,
    event_types: String,
    created_at_ms: i64,
    created_by: String,
    expires_at_ms: Option<i64>,
    revoked_at_ms: Option<i64>,
    secret_sha256: String,
}

fn from_row(r: Row) -> Result<ApiKey> {
    Ok(ApiKey {
        id: r.id,
        tenant: r.tenant,
        role: r.role.parse()?,
        event_types: r
            .event_types
            .split(',')
            .filter(|t| !t.is_empty())
            .map(str::to_string)
            .collect(),
        created_at_ms: r.created_at_ms,
        created_by: r.created_by,
        expires_at_ms: r.expires_at_ms,
        revoked_at_ms: r.revoked_at_ms,
        secret_sha256: r.secret_sha256,
    })
}

const KEY_COLUMNS: &str = "id, tenant, role, event_types, created_at_ms, created_by, \
                           expires_at_ms, revoked_at_ms, secret_sha256";

impl Catalog {
    /// Makes a key for `tenant` (audited). The returned token is the only copy of its secret.
    pub async fn create_api_key(
        &self,
        tenant: &TenantId,
        role: Role,
        event_types: Vec<String>,
        expires_at_ms: Option<i64>,
        actor: &str,
    ) -> Result<MadeKey> {
        if role == Role::Operator {
            return Err(Error::invalid(
                "a key belongs to a tenant: the operator role is not given to keys",
            ));
        }
        for t in &event_types {
            if t.is_empty() || t.contains(',') || t.len() > 128 {
                return Err(Error::invalid(format!("event type {t:?} in a key's scope")));
            }
        }
        let (id, secret) = (random_hex(6), random_hex(32));
        let key = ApiKey {
            id: id.clone(),
            tenant: tenant.to_string(),
            role,
            event_types,
            created_at_ms: now_ms(),
            created_by: actor.to_string(),
            expires_at_ms,
            revoked_at_ms: None,
            secret_sha256: sha256_hex(&secret),
        };
        let token = format!("{KEY_PREFIX}{id}_{secret}");
        let stored = key.clone();
        self.on_io(move |c| async move {
            let mut tx = c.write_tx().await.map_err(Error::db("create key"))?;
            sqlx::query(
                "INSERT INTO floe_api_keys (id, tenant, role, event_types, created_at_ms, \
                 created_by, expires_at_ms, secret_sha256) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            )
            .bind(&stored.id)
            .bind(&stored.tenant)
            .bind(stored.role.as_str())
            .bind(stored.event_types.join(","))
            .bind(stored.created_at_ms)
            .bind(&stored.created_by)
            .bind(stored.expires_at_ms)
            .bind(&stored.secret_sha256)
            .execute(&mut *tx)
            .await
            .map_err(Error::db("create key"))?;
            let detail = serde_json::json!({
                "key": stored.prefix(), "role": stored.role.as_str(),
                "event_types": stored.event_types, "expires_at_ms": stored.expires_at_ms,
            });
            audit_in(
                &mut tx,
                &stored.created_by,
                Some(&stored.tenant),
                "key.create",
                &detail.to_string(),
            )
            .await?;
            tx.commit().await.map_err(Error::db("create key"))?;
            Ok(())
        })
        .await?;
        Ok(MadeKey { key, token })
    }

    /// The tenant's keys, newest first (revoked ones included).
    pub async fn api_keys(&self, tenant: &TenantId) -> Result<Vec<ApiKey>> {
        let tenant = tenant.to_string();
        self.on_io(move |c| async move {
            let rows: Vec<Row> = sqlx::query_as(&format!(
                "SELECT {KEY_COLUMNS} FROM floe_api_keys WHERE tenant = $1 \
                 ORDER BY created_at_ms DESC"
            ))
            .bind(tenant)
            .fetch_all(&c.db)
            .await
            .map_err(Error::db("list keys"))?;
            rows.into_iter().map(from_row).collect()
        })
        .await
    }

    /// The key of id `id`, whatever its state (`None`: no such key).
    pub async fn api_key(&self, id: &str) -> Result<Option<ApiKey>> {
        let id = id.to_string();
        self.on_io(move |c| async move {
            let row: Option<Row> = sqlx::query_as(&format!(
                "SELECT {KEY_COLUMNS} FROM floe_api_keys WHERE id = $1"
            ))
            .bind(id)
            .fetch_optional(&c.db)
            .await
            .map_err(Error::db("read a key"))?;
            row.map(from_row).transpose()
        })
        .await
    }

    /// Revokes a key of `tenant` (audited); `NotFound` for another tenant's or no key.
    /// Revoking a revoked key changes nothing.
    pub async fn revoke_api_key(&self, tenant: &TenantId, id: &str, actor: &str) -> Result<()> {
        let (tenant, id, actor) = (tenant.to_string(), id.to_string(), actor.to_string());
        self.on_io(move |c| async move {
            let mut tx = c.write_tx().await.map_err(Error::db("revoke key"))?;
            // The write first: a SQLite transaction that reads, then writes, fails when
            // another process wrote in between; one that writes first waits its turn.
            let revoked = sqlx::query(
                "UPDATE floe_api_keys SET revoked_at_ms = $1 \
                 WHERE id = $2 AND tenant = $3 AND revoked_at_ms IS NULL",
            )
            .bind(now_ms())
            .bind(&id)
            .bind(&tenant)
            .execute(&mut *tx)
            .await
            .map_err(Error::db("revoke key"))?;
            if revoked.rows_affected() == 0 {
                let found: Option<(String,)> =
                    sqlx::query_as("SELECT id FROM floe_api_keys WHERE id = $1 AND tenant = $2")
                        .bind(&id)
                        .bind(&tenant)
                        .fetch_optional(&mut *tx)
                        .await
                        .map_err(Error::db("revoke key"))?;
                // Already revoked: nothing changes.
                if found.is_some() {
                    return Ok(());
                }
                // Another tenant's key, or none: refused, and the attempt is on the record.
                let detail = serde_json::json!({
                    "key": format!("{KEY_PREFIX}{id}"),
                    "reason": "no such key in this tenant",
                })
                .to_string();
                audit_in(
                    &mut tx,
                    &actor,
                    Some(&tenant),
                    "key.revoke.refused",
                    &detail,
                )
                .await?;
                tx.commit().await.map_err(Error::db("revoke key"))?;
                return Err(Error::NotFound {
                    what: format!("key {id}"),
                });
            }
            let detail = serde_json::json!({ "key": format!("{KEY_PREFIX}{id}") }).to_string();
            audit_in(&mut tx, &actor, Some(&tenant), "key.revoke", &detail).await?;
            tx.commit().await.map_err(Error::db("revoke key"))?;
            Ok(())
        })
        .await
    }

    /// Revokes `tenant`'s token `jti` until `expires_at_ms` (when it would have expired anyway;
    /// audited). Revoking it again changes nothing.
    pub async fn revoke_token(
        &self,
        tenant: &TenantId,
        jti: &str,
        expires_at_ms: i64,
        actor: &str,
    ) -> Result<()> {
        if jti.is_empty() || jti.len() > 128 {
            return Err(Error::invalid(format!("token id {jti:?}")));
        }
        let (tenant, jti, actor) = (tenant.to_string(), jti.to_string(), actor.to_string());
        self.on_io(move |c| async move {
            let mut tx = c.write_tx().await.map_err(Error::db("revoke token"))?;
            sqlx::query("DELETE FROM floe_revoked_tokens WHERE expires_at_ms < $1")
                .bind(now_ms())
                .execute(&mut *tx)
                .await
                .map_err(Error::db("revoke token"))?;
            let done = sqlx::query(
                "INSERT INTO floe_revoked_tokens (tenant, jti, revoked_at_ms, expires_at_ms, \
                 revoked_by) VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
            )
            .bind(&tenant)
            .bind(&jti)
            .bind(now_ms())
            .bind(expires_at_ms)
            .bind(&actor)
            .execute(&mut *tx)
            .await
            .map_err(Error::db("revoke token"))?;
            if done.rows_affected() == 1 {
                let detail = serde_json::json!({ "jti": jti }).to_string();
                audit_in(&mut tx, &actor, Some(&tenant), "token.revoke", &detail).await?;
            }
            tx.commit().await.map_err(Error::db("revoke token"))?;
            Ok(())
        })
        .await
    }

    /// Every revoked token not yet expired, as (tenant, jti). Only reads: every process asks
    /// this every `auth.revocation_refresh_ms` (expired rows are dropped by the next
    /// revocation).
    pub async fn revoked_tokens(&self) -> Result<Vec<(String, String)>> {
        self.on_io(move |c| async move {
            sqlx::query_as("SELECT tenant, jti FROM floe_revoked_tokens WHERE expires_at_ms >= $1")
                .bind(now_ms())
                .fetch_all(&c.db)
                .await
                .map_err(Error::db("revoked tokens"))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_have_one_shape_and_only_their_secret_matches() {
        let secret = "ab".repeat(32);
        let key = format!("floe_0123456789ab_{secret}");
        assert_eq!(parse_key(&key), Some(("0123456789ab", secret.as_str())));
        for bad in [
            "floe_0123456789ab",
            "floe_0123456789a_ab",
            "nope_0123456789ab_00",
            "eyJhbGciOiJIUzI1NiJ9.e30.x",
        ] {
            assert_eq!(parse_key(bad), None, "{bad}");
        }
        let stored = sha256_hex(&secret);
        assert!(secret_matches(&secret, &stored));
        assert!(!secret_matches(&"cd".repeat(32), &stored));
    }
}
