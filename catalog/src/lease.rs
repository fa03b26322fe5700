//! Leases: a table held by one process for a while, so that several processes sharing a
//! catalog split the work instead of all doing it. A lease is a row (tenant, table, holder,
//! until): taken when free or run out, renewed by its holder, given back when the work is done;
//! a holder that dies leaves it to run out.
//!
//! A lease only saves work: every commit is still a compare-and-swap (and a projection's is
//! fenced on the source it recorded), so a holder that outlived its lease (a long pause) loses
//! its commit instead of overwriting another's.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::db::now_ms;
use crate::tenant::TenantId;
use crate::{Catalog, Error, Result};

/// What a lease is for; each kind is held apart (a projection table can be compacted by one
/// process while another refreshes it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseKind {
    /// Compaction, expiry and erasure of a table (`floe_maintenance`, with its last run).
    Maintenance,
    /// Refreshing a projection table (`floe_refresh_leases`).
    Refresh,
}

impl LeaseKind {
    fn table(self) -> &'static str {
        match self {
            LeaseKind::Maintenance => "floe_maintenance",
            LeaseKind::Refresh => "floe_refresh_leases",
        }
    }
}

/// A lease holder name unique to this process and call: `<role>@<host>:<pid>` and, from the
/// second call with one role on, `#<n>` (tests run several holders in one process).
pub fn holder_name(role: &str) -> String {
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into());
    match CALLS.fetch_add(1, Ordering::Relaxed) {
        0 => format!("{role}@{host}:{}", std::process::id()),
        n => format!("{role}@{host}:{}#{n}", std::process::id()),
    }
}

impl Catalog {
    /// Takes (or renews) the maintenance lease of a table for `holder` until now + `lease`.
    /// `false`: another holder's lease has not run out.
    pub async fn take_lease(
        &self,
        tenant: &TenantId,
        table: &str,
        holder: &str,
        lease: Duration,
    ) -> Result<bool> {
        self.take(LeaseKind::Maintenance, tenant, table, holder, lease)
            .await
    }

    /// Gives a maintenance lease back and records how the run ended (`result`: a JSON summary).
    pub async fn release_lease(
        &self,
        tenant: &TenantId,
        table: &str,
        holder: &str,
        result: &str,
    ) -> Result<()> {
        self.give_back(LeaseKind::Maintenance, tenant, table, holder, Some(result))
            .await
    }

    /// Takes (or renews) the refresh lease of a projection table; `false`: another holder's
    /// lease has not run out.
    pub async fn take_refresh_lease(
        &self,
        tenant: &TenantId,
        table: &str,
        holder: &str,
        lease: Duration,
    ) -> Result<bool> {
        self.take(LeaseKind::Refresh, tenant, table, holder, lease)
            .await
    }

    /// Gives a refresh lease back (nothing if `holder` no longer holds it).
    pub async fn release_refresh_lease(
        &self,
        tenant: &TenantId,
        table: &str,
        holder: &str,
    ) -> Result<()> {
        self.give_back(LeaseKind::Refresh, tenant, table, holder, None)
            .await
    }

    async fn take(
        &self,
        kind: LeaseKind,
        tenant: &TenantId,
        table: &str,
        holder: &str,
        lease: Duration,
    ) -> Result<bool> {
        let (tenant, table, holder) = (tenant.to_string(), table.to_string(), holder.to_string());
        self.on_io(move |c| async move {
            let now = now_ms();
            let sql = format!(
                "INSERT INTO {t} (tenant, table_name, holder, lease_until_ms) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT (tenant, table_name) DO UPDATE \
                 SET holder = excluded.holder, lease_until_ms = excluded.lease_until_ms \
                 WHERE {t}.lease_until_ms < $5 OR {t}.holder = $3",
                t = kind.table()
            );
            let taken = sqlx::query(&sql)
                .bind(&tenant)
                .bind(&table)
                .bind(&holder)
                .bind(now + lease.as_millis() as i64)
                .bind(now)
                .execute(&c.db)
                .await
                .map_err(Error::db("taking a lease"))?;
            Ok(taken.rows_affected() == 1)
        })
        .await
    }

    async fn give_back(
        &self,
        kind: LeaseKind,
        tenant: &TenantId,
        table: &str,
        holder: &str,
        result: Option<&str>,
    ) -> Result<()> {
        let (tenant, table, holder) = (tenant.to_string(), table.to_string(), holder.to_string());
        let result = result.map(str::to_string);
        self.on_io(move |c| async move {
            let filter = "tenant = $1 AND table_name = $2 AND holder = $3";
            let done = match &result {
                Some(result) => {
                    sqlx::query(&format!(
                        "UPDATE {} SET holder = NULL, lease_until_ms = 0, last_run_at_ms = $4, \
                     last_result = $5 WHERE {filter}",
                        kind.table()
                    ))
                    .bind(&tenant)
                    .bind(&table)
                    .bind(&holder)
                    .bind(now_ms())
                    .bind(result)
                    .execute(&c.db)
                    .await
                }
                None => {
                    sqlx::query(&format!(
                        "UPDATE {} SET holder = NULL, lease_until_ms = 0 WHERE {filter}",
                        kind.table()
                    ))
                    .bind(&tenant)
                    .bind(&table)
                    .bind(&holder)
                    .execute(&c.db)
                    .await
                }
            };
            done.map_err(Error::db("giving a lease back"))?;
            Ok(())
        })
        .await
    }
}
