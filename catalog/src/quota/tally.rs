//! Events accepted and rejected per tenant and minute, counted by each process that ingests
//! and added up in the catalog database (`floe_ingest_minutes`) with the quota book's usage, so
//! that the `rejections` alert sees every process's traffic. Rows older than [`KEPT_MINUTES`]
//! are dropped once an hour.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, Ordering};

use crate::{Catalog, Error, Result, TenantId};

/// Minutes of counts kept in the catalog: the longest alert window, and a day more.
pub const KEPT_MINUTES: i64 = 8 * 24 * 60;

/// Counts not yet written to the catalog, by tenant and minute (since the epoch).
#[derive(Debug, Default)]
pub struct Tally {
    counts: Mutex<HashMap<(TenantId, i64), (u64, u64)>>,
    /// The hour of the last pruning.
    pruned: AtomicI64,
}

fn minute_now() -> i64 {
    chrono::Utc::now().timestamp() / 60
}

impl Tally {
    /// Counts one request's events: accepted (stored or retries of stored ones) and rejected
    /// (dead-lettered included).
    pub fn add(&self, tenant: &TenantId, accepted: u64, rejected: u64) {
        if accepted + rejected == 0 {
            return;
        }
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let c = counts.entry((tenant.clone(), minute_now())).or_default();
        c.0 += accepted;
        c.1 += rejected;
    }

    /// Writes the counts to the catalog; kept for the next call when that fails.
    pub async fn flush(&self, catalog: &Catalog) {
        let taken = std::mem::take(&mut *self.counts.lock().unwrap_or_else(|p| p.into_inner()));
        if !taken.is_empty()
            && let Err(e) = catalog.add_ingest_minutes(&taken).await
        {
            tracing::warn!(error = %e, "could not record ingest counts; keeping them for the next flush");
            let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
            for (key, (a, r)) in taken {
                let c = counts.entry(key).or_default();
                c.0 += a;
                c.1 += r;
            }
        }
        let hour = minute_now() / 60;
        if self.pruned.swap(hour, Ordering::Relaxed) != hour
            && let Err(e) = catalog
                .prune_ingest_minutes(minute_now() - KEPT_MINUTES)
                .await
        {
            tracing::warn!(error = %e, "could not drop old ingest counts");
        }
    }
}

impl Catalog {
    /// Adds counts of events accepted and rejected, by tenant and minute.
    pub async fn add_ingest_minutes(
        &self,
        counts: &HashMap<(TenantId, i64), (u64, u64)>,
    ) -> Result<()> {
        let rows: Vec<(String, i64, i64, i64)> = counts
            .iter()
            .map(|((t, m), (a, r))| (t.to_string(), *m, *a as i64, *r as i64))
            .collect();
        self.on_io(move |c| async move {
            let mut tx = c.write_tx().await.map_err(Error::db("ingest counts"))?;
            for (tenant, minute, accepted, rejected) in rows {
                sqlx::query(
                    "INSERT INTO floe_ingest_minutes (tenant, minute, accepted, rejected) \
                     VALUES ($1, $2, $3, $4) ON CONFLICT (tenant, minute) DO UPDATE SET \
                     accepted = floe_ingest_minutes.accepted + excluded.accepted, \
                     rejected = floe_ingest_minutes.rejected + excluded.rejected",
                )
                .bind(tenant)
                .bind(minute)
                .bind(accepted)
                .bind(rejected)
                .execute(&mut *tx)
                .await
                .map_err(Error::db("ingest counts"))?;
            }
            tx.commit().await.map_err(Error::db("ingest counts"))?;
            Ok(())
        })
        .await
    }

    /// Events accepted and rejected for `tenant` from minute `since` (since the epoch) on, as
    /// every process recorded them.
    pub async fn ingest_counts(&self, tenant: &TenantId, since: i64) -> Result<(u64, u64)> {
        let tenant = tenant.to_string();
        self.on_io(move |c| async move {
            let (accepted, rejected): (Option<i64>, Option<i64>) = sqlx::query_as(
                "SELECT CAST(SUM(accepted) AS BIGINT), CAST(SUM(rejected) AS BIGINT) \
                 FROM floe_ingest_minutes \
                 WHERE tenant = $1 AND minute >= $2",
            )
            .bind(tenant)
            .bind(since)
            .fetch_one(&c.db)
            .await
            .map_err(Error::db("ingest counts"))?;
            Ok((
                accepted.unwrap_or(0).max(0) as u64,
                rejected.unwrap_or(0).max(0) as u64,
            ))
        })
        .await
    }

    /// Drops counts of minutes before `before`.
    pub async fn prune_ingest_minutes(&self, before: i64) -> Result<()> {
        self.on_io(move |c| async move {
            sqlx::query("DELETE FROM floe_ingest_minutes WHERE minute < $1")
                .bind(before)
                .execute(&c.db)
                .await
                .map_err(Error::db("ingest counts"))?;
            Ok(())
        })
        .await
    }
}
