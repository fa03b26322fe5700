//! The audit log: every admin action, credential change, refused request, query, erasure and
//! maintenance deletion, as hash-chained records.
//!
//! A record is written to the catalog database in the same transaction as the action it
//! records (so an audit write that fails fails the action), onto a chain: the tenant's own
//! (`chain` = the tenant id), or the platform's ([`PLATFORM_CHAIN`]) for tenants' lifecycle
//! and what no tenant can be held to (credentials that do not verify). Each record carries its
//! position in the chain (`seq`, from 1), the hash of the record before it (`prev_hash`, the
//! [`GENESIS`] hash for the first) and its own hash over both and its fields ([`link_hash`]).
//! The chain's head (last `seq` and `hash`) is one row of `floe_audit_chains`, updated in the
//! transaction, so concurrent writers of one chain queue on that row and never fork it.
//!
//! The records are then published, in order and exactly once, to an Iceberg table `audit` in
//! the tenant's namespace (`publish.rs`), where the tenant's admins read them with SQL and
//! `floe audit verify` walks the chain (`verify.rs`).

mod publish;
mod queue;
mod verify;

pub use publish::{AUDIT_TABLE, audit_schema};
pub use queue::AuditQueue;
pub use verify::{Broken, Verified};

use sha2::{Digest, Sha256};

use crate::db::now_ms;
use crate::tenant::TenantId;
use crate::{Catalog, Error, Result};

/// The chain of what belongs to no tenant, and its namespace (a tenant id never starts with
/// `_`).
pub const PLATFORM_CHAIN: &str = "_platform";

/// The platform's namespace as maintenance sees it: a tenant that never ages its tables out.
pub fn platform_namespace() -> (crate::Tenant, TenantId) {
    let id = TenantId::platform();
    let tenant = crate::Tenant {
        id: id.to_string(),
        created_at_ms: 0,
        incarnation: publish::PLATFORM_INCARNATION.to_string(),
        retention_days: None,
        target_file_bytes: None,
        user_fields: Vec::new(),
        quotas: Default::default(),
        projections_off: Vec::new(),
        unknown_types: Default::default(),
    };
    (tenant, id)
}

/// The `prev_hash` of a chain's first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The actor of what maintenance and erasures do on their own (retention, snapshot expiry,
/// orphan removal, erasure rewrites).
pub const MAINTENANCE_ACTOR: &str = "compactor";

/// One thing to record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Who: `token:<jti>`, `key:<id>`, `cli`, `operator`, `anonymous`, …
    pub actor: String,
    /// The tenant it concerns, if any.
    pub tenant: Option<String>,
    /// What: `key.create`, `request.refused`, `query`, …
    pub action: String,
    /// The particulars, a JSON object.
    pub detail: String,
}

impl Entry {
    pub fn new(
        actor: impl Into<String>,
        tenant: Option<&str>,
        action: impl Into<String>,
        detail: impl Into<String>,
    ) -> Entry {
        Entry {
            actor: actor.into(),
            tenant: tenant.map(str::to_string),
            action: action.into(),
            detail: detail.into(),
        }
    }

    /// The chain the entry goes to: its tenant's, but a tenant's creation, settings and
    /// deletion (the operator's acts, which outlive the tenant) and entries of no tenant go to
    /// the platform's.
    pub fn chain(&self) -> &str {
        match &self.tenant {
            Some(t) if !self.action.starts_with("tenant.") => t,
            _ => PLATFORM_CHAIN,
        }
    }
}

/// A record as stored: an entry at its place in its chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub seq: i64,
    pub at_ms: i64,
    pub actor: String,
    pub tenant: Option<String>,
    pub action: String,
    pub detail: String,
    pub prev_hash: String,
    pub hash: String,
}

impl Record {
    /// The hash the record's fields give (equal to `hash` unless it was changed).
    pub fn computed_hash(&self) -> String {
        link_hash(
            &self.prev_hash,
            self.seq,
            self.at_ms,
            &self.actor,
            self.tenant.as_deref(),
            &self.action,
            &self.detail,
        )
    }
}

/// SHA-256 (hex) of a record's link and fields, serialised as one JSON array so that no two
/// different records give the same input.
pub fn link_hash(
    prev_hash: &str,
    seq: i64,
    at_ms: i64,
    actor: &str,
    tenant: Option<&str>,
    action: &str,
    detail: &str,
) -> String {
    let input = serde_json::json!([prev_hash, seq, at_ms, actor, tenant, action, detail]);
    Sha256::digest(input.to_string().as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Takes the next place in `chain`: its `seq` and the hash before it. The first statement
/// writes (PostgreSQL locks the head row until the commit; SQLite's transaction holds the write
/// lock), so no other writer reads the same head. A tenant's chain is started only while the
/// tenant exists: `None` when it does not (then the record is the platform's).
async fn next_place(conn: &mut sqlx::AnyConnection, chain: &str) -> Result<Option<(i64, String)>> {
    let step = "UPDATE floe_audit_chains SET seq = seq + 1 WHERE chain = $1 RETURNING seq, hash";
    let place: Option<(i64, String)> = sqlx::query_as(step)
        .bind(chain)
        .fetch_optional(&mut *conn)
        .await
        .map_err(Error::db("audit chain"))?;
    if place.is_some() {
        return Ok(place);
    }
    sqlx::query(
        "INSERT INTO floe_audit_chains (chain, seq, hash, published) SELECT $1, 0, $2, 0 \
         WHERE $1 = $3 OR EXISTS (SELECT 1 FROM floe_tenants WHERE id = $1) \
         ON CONFLICT (chain) DO NOTHING",
    )
    .bind(chain)
    .bind(GENESIS)
    .bind(PLATFORM_CHAIN)
    .execute(&mut *conn)
    .await
    .map_err(Error::db("audit chain"))?;
    sqlx::query_as(step)
        .bind(chain)
        .fetch_optional(&mut *conn)
        .await
        .map_err(Error::db("audit chain"))
}

/// Appends `entry` to its chain on `conn` (inside the caller's transaction when it has one).
/// An entry of a tenant that does not exist (deleted while its record waited) goes to the
/// platform's chain, never to a chain a tenant created again under the id would inherit.
pub(crate) async fn append_in(conn: &mut sqlx::AnyConnection, entry: &Entry) -> Result<()> {
    let mut chain = entry.chain();
    let (seq, prev_hash) = match next_place(conn, chain).await? {
        Some(place) => place,
        None => {
            chain = PLATFORM_CHAIN;
            next_place(conn, chain)
                .await?
                .ok_or_else(|| Error::internal("the platform's audit chain cannot be started"))?
        }
    };
    let at_ms = now_ms();
    let hash = link_hash(
        &prev_hash,
        seq,
        at_ms,
        &entry.actor,
        entry.tenant.as_deref(),
        &entry.action,
        &entry.detail,
    );
    sqlx::query(
        "INSERT INTO floe_audit (at_ms, actor, tenant, action, detail, chain, seq, prev_hash, \
         hash) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(at_ms)
    .bind(&entry.actor)
    .bind(entry.tenant.as_deref())
    .bind(&entry.action)
    .bind(&entry.detail)
    .bind(chain)
    .bind(seq)
    .bind(&prev_hash)
    .bind(&hash)
    .execute(&mut *conn)
    .await
    .map_err(Error::db("audit"))?;
    sqlx::query("UPDATE floe_audit_chains SET hash = $2 WHERE chain = $1")
        .bind(chain)
        .bind(&hash)
        .execute(&mut *conn)
        .await
        .map_err(Error::db("audit chain"))?;
    Ok(())
}

/// Appends to the audit log inside the caller's transaction (see [`append_in`]).
pub(crate) async fn audit_in(
    conn: &mut sqlx::AnyConnection,
    actor: &str,
    tenant: Option<&str>,
    action: &str,
    detail: &str,
) -> Result<()> {
    append_in(conn, &Entry::new(actor, tenant, action, detail)).await
}

/// Whether an audit write waits for the disk.
#[derive(Debug, Clone, Copy)]
enum Flush {
    Wait,
    Later,
}

impl Catalog {
    /// Appends to the audit log, in a transaction of its own.
    pub async fn audit(
        &self,
        actor: &str,
        tenant: Option<&str>,
        action: &str,
        detail: &str,
    ) -> Result<()> {
        self.audit_all(vec![Entry::new(actor, tenant, action, detail)])
            .await
    }

    /// Appends `entries` to the audit log in one transaction (all or none), durable when this
    /// returns. Taken chain by chain in one order (each chain's entries in their order), so
    /// that two transactions holding several chains' heads never wait for each other in a
    /// cycle.
    pub async fn audit_all(&self, entries: Vec<Entry>) -> Result<()> {
        self.append_all(entries, Flush::Wait).await
    }

    /// Appends one entry as [`Catalog::audit_all_unflushed`] does.
    pub async fn audit_unflushed(
        &self,
        actor: &str,
        tenant: Option<&str>,
        action: &str,
        detail: &str,
    ) -> Result<()> {
        self.audit_all_unflushed(vec![Entry::new(actor, tenant, action, detail)])
            .await
    }

    /// Appends as [`Catalog::audit_all`] does, committed without waiting for the disk
    /// ([`Catalog::unflushed_tx`]): for the records every request of a kind makes (a query's
    /// start and end, a refusal), which would otherwise each wait for a flush of their own,
    /// behind every other writer's. Committed, chained and safe from a crash of the process
    /// when this returns; a power loss can take the last few, never one without those
    /// before it.
    pub async fn audit_all_unflushed(&self, entries: Vec<Entry>) -> Result<()> {
        self.append_all(entries, Flush::Later).await
    }

    async fn append_all(&self, mut entries: Vec<Entry>, flush: Flush) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        entries.sort_by(|a, b| a.chain().cmp(b.chain()));
        self.on_io(move |c| async move {
            let mut tx = match flush {
                Flush::Wait => c.write_tx().await,
                Flush::Later => c.unflushed_tx().await,
            }
            .map_err(Error::db("audit"))?;
            for entry in &entries {
                append_in(&mut tx, entry).await?;
            }
            tx.commit().await.map_err(Error::db("audit"))
        })
        .await
    }

    /// The records of `chain` from `from_seq` on, in order, at most `limit`.
    pub(crate) async fn audit_records(
        &self,
        chain: &str,
        from_seq: i64,
        limit: i64,
    ) -> Result<Vec<Record>> {
        type Row = (
            i64,
            i64,
            String,
            Option<String>,
            String,
            String,
            String,
            String,
        );
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT seq, at_ms, actor, tenant, action, detail, prev_hash, hash FROM floe_audit \
             WHERE chain = $1 AND seq >= $2 ORDER BY seq LIMIT $3",
        )
        .bind(chain)
        .bind(from_seq)
        .bind(limit)
        .fetch_all(&self.db)
        .await
        .map_err(Error::db("read the audit log"))?;
        Ok(rows
            .into_iter()
            .map(
                |(seq, at_ms, actor, tenant, action, detail, prev_hash, hash)| Record {
                    seq,
                    at_ms,
                    actor,
                    tenant,
                    action,
                    detail,
                    prev_hash,
                    hash,
                },
            )
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenants_lifecycle_is_the_platforms_and_the_rest_its_own() {
        assert_eq!(
            Entry::new("cli", Some("t"), "tenant.create", "{}").chain(),
            PLATFORM_CHAIN
        );
        assert_eq!(
            Entry::new("cli", Some("t"), "key.create", "{}").chain(),
            "t"
        );
        assert_eq!(
            Entry::new("anonymous", None, "request.refused", "{}").chain(),
            PLATFORM_CHAIN
        );
    }

    #[test]
    fn every_field_is_in_the_hash() {
        let base = link_hash(GENESIS, 1, 10, "a", Some("t"), "x", "{}");
        for other in [
            link_hash("1", 1, 10, "a", Some("t"), "x", "{}"),
            link_hash(GENESIS, 2, 10, "a", Some("t"), "x", "{}"),
            link_hash(GENESIS, 1, 11, "a", Some("t"), "x", "{}"),
            link_hash(GENESIS, 1, 10, "b", Some("t"), "x", "{}"),
            link_hash(GENESIS, 1, 10, "a", None, "x", "{}"),
            link_hash(GENESIS, 1, 10, "a", Some("t"), "y", "{}"),
            link_hash(GENESIS, 1, 10, "a", Some("t"), "x", "{ }"),
            // Field boundaries are kept: moving a character across them changes the hash.
            link_hash(GENESIS, 1, 10, "at", Some(""), "x", "{}"),
        ] {
            assert_ne!(base, other);
        }
        assert_eq!(base, link_hash(GENESIS, 1, 10, "a", Some("t"), "x", "{}"));
    }
}
