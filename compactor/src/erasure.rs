//! User erasure: rewriting every file that holds rows of some users without those rows (an
//! Iceberg `overwrite` snapshot), then expiring every older snapshot and deleting what only
//! they reached, and checking that no object under the tenant's prefix still holds the users.
//!
//! Which rows are a user's is [`filter`]'s business (the `user_id` column and the payload
//! fields the tenant declared, compared exactly); what can hold user data, and how it is
//! searched, is [`verify`]'s. A file is rewritten only when a read of those columns finds a
//! user in it; without declared fields, a file whose `user_id` bounds exclude every id is not
//! read at all.
//!
//! The schedule gives each tenant with pending requests one pass per tick
//! ([`Compactor::run_erasures`]): a tenant's requests are merged into that pass, and tenants
//! are worked on side by side (`compaction.erasure_tenants_at_once`), so one tenant's backlog
//! never holds up another's.

pub mod filter;
pub mod verify;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use floe_catalog::TenantId;
use floe_catalog::erasure::{Erasure, ErasurePass};
use floe_catalog::maintenance::ExpirePolicy;
use floe_catalog::rewrite::{ReplaceOutcome, RewriteKind};
use floe_catalog::table::EVENTS_TABLE;
use futures::StreamExt;
use iceberg::spec::{DataFileFormat, PrimitiveLiteral};
use object_store::path::Path;

pub use filter::RowFilter;

use crate::{Compactor, Error, InputFile, Result};

/// Unreferenced files younger than this are left alone by an erasure (a commit in flight may
/// own them); one holding an erased user keeps the request pending until it is old enough.
pub const ERASURE_ORPHAN_MIN_AGE: Duration = Duration::from_secs(600);
/// An erasure pass whose files were rewritten by a compaction meanwhile starts over this often.
const MAX_ERASURE_PASSES: usize = 5;

/// What one erasure run did.
#[derive(Debug, Clone, Default)]
pub struct ErasureRun {
    pub files_rewritten: usize,
    pub rows_removed: u64,
    pub snapshots_expired: usize,
    pub files_deleted: usize,
    pub orphans_deleted: usize,
    /// Files read to look for the users (bounds ruled the others out).
    pub files_read: usize,
    /// Per rewritten file, the rows it held per id index (only ids it held).
    pub rewritten: Vec<Vec<(usize, u64)>>,
    /// Per id index, the objects still holding it (all empty: verified).
    pub still_holding: Vec<Vec<String>>,
    /// Objects that could not be checked.
    pub unverifiable: Vec<String>,
}

impl ErasureRun {
    /// Whether none of `ids` (indexes) is held anywhere and nothing was unverifiable.
    pub fn verified(&self, ids: &[usize]) -> bool {
        self.unverifiable.is_empty()
            && ids
                .iter()
                .all(|i| self.still_holding.get(*i).is_none_or(|h| h.is_empty()))
    }

    /// Rows removed and files rewritten that held any of `ids` (indexes).
    pub fn tally(&self, ids: &[usize]) -> (u64, u64) {
        let mut rows = 0;
        let mut files = 0;
        for file in &self.rewritten {
            let held: u64 = file
                .iter()
                .filter(|(i, _)| ids.contains(i))
                .map(|(_, n)| n)
                .sum();
            if held > 0 {
                rows += held;
                files += 1;
            }
        }
        (rows, files)
    }
}

impl Compactor {
    /// Erases the users' rows from every table of `tenant`, expires all older snapshots,
    /// deletes what they reached, and verifies. The caller holds the tables' leases.
    pub async fn erase_users(&self, tenant: &TenantId, filter: &RowFilter) -> Result<ErasureRun> {
        let mut run = ErasureRun::default();
        // `events` first: the projections refreshed after it (see `with_projections`) then
        // have their older snapshots, which may still hold the users, expired in this pass too.
        let mut tables = self.catalog.list_tables(tenant).await?;
        tables.sort_by_key(|t| t != EVENTS_TABLE);
        for table in tables {
            let mut pass = 0;
            loop {
                pass += 1;
                match self
                    .erase_in_table(tenant, &table, filter, &mut run)
                    .await?
                {
                    true => break,
                    false if pass < MAX_ERASURE_PASSES => continue,
                    false => {
                        return Err(Error::KeptChanging {
                            table: format!("{tenant}.{table}"),
                            what: "the files kept changing under the erasure",
                        });
                    }
                }
            }
            // One manifest of live files only: the entries of removed files go with it.
            match self
                .catalog
                .commit_rewrite(
                    tenant,
                    &table,
                    RewriteKind::Replace,
                    Vec::new(),
                    Vec::new(),
                    None,
                )
                .await?
            {
                ReplaceOutcome::Committed { .. } | ReplaceOutcome::InputsGone { .. } => {}
                ReplaceOutcome::KeptLosing { .. } => {
                    return Err(Error::KeptChanging {
                        table: format!("{tenant}.{table}"),
                        what: "other commits kept winning over the erasure",
                    });
                }
            }
            if table == EVENTS_TABLE
                && let Some(projections) = &self.projections
            {
                projections.refresh_tenant_wholly(tenant).await?;
            }
            let expired = self
                .catalog
                .expire_snapshots(tenant, &table, ExpirePolicy::keep_current_only(), false)
                .await?;
            run.snapshots_expired += expired.snapshots_expired;
            run.files_deleted += expired.files_deleted;
            let orphans = self
                .catalog
                .remove_orphans(tenant, &table, ERASURE_ORPHAN_MIN_AGE, false)
                .await?;
            run.orphans_deleted += orphans.orphans_deleted;
        }
        let verified = self.verify(tenant, filter).await?;
        run.still_holding = verified.holding;
        run.unverifiable = verified.unverifiable;
        Ok(run)
    }

    /// What the tenant's prefix still holds of the users (see [`verify`]).
    pub async fn verify(&self, tenant: &TenantId, filter: &RowFilter) -> Result<verify::Verified> {
        let data = self.catalog.data_store();
        let prefix = data
            .key(&format!("{}/{}", self.catalog.warehouse(), tenant))
            .ok_or_else(|| Error::Invalid("the tenant prefix lies outside the warehouse".into()))?;
        verify::objects_holding(data.object_store(), &prefix, filter).await
    }

    /// One pass over a table: `false` if a rewritten file was replaced meanwhile.
    async fn erase_in_table(
        &self,
        tenant: &TenantId,
        table: &str,
        filter: &RowFilter,
        run: &mut ErasureRun,
    ) -> Result<bool> {
        let t = self.catalog.load_table(tenant, table).await?;
        let store = self.catalog.data_store();
        let user_id = t
            .metadata()
            .current_schema()
            .field_by_name(filter::USER_ID)
            .map(|f| f.id);
        let mut holders = Vec::new();
        for e in self.catalog.live_entries(&t).await? {
            if e.file_format() != DataFileFormat::Parquet {
                continue;
            }
            let f = e.data_file();
            // Without declared payload fields, only `user_id` can name a user: its bounds
            // rule files out without reading them.
            if let Some(field) = user_id.filter(|_| !filter.reads_payload()) {
                let bound = |b: &std::collections::HashMap<i32, iceberg::spec::Datum>| {
                    b.get(&field).and_then(|d| match d.literal() {
                        PrimitiveLiteral::String(s) => Some(s.clone()),
                        _ => None,
                    })
                };
                let (lower, upper) = (bound(f.lower_bounds()), bound(f.upper_bounds()));
                if !filter.may_hold(lower.as_deref(), upper.as_deref()) {
                    continue;
                }
            }
            let key = store.key(f.file_path()).ok_or_else(|| {
                Error::Invalid(format!("{} is outside the warehouse", f.file_path()))
            })?;
            run.files_read += 1;
            let counts = verify::rows_per_user(
                store.object_store(),
                Path::from(key),
                Some(f.file_size_in_bytes()),
                filter,
            )
            .await?;
            let held: Vec<(usize, u64)> = counts
                .into_iter()
                .enumerate()
                .filter(|(_, n)| *n > 0)
                .collect();
            if !held.is_empty() {
                let input = InputFile::of(f);
                holders.push((f.partition().clone(), input, held));
            }
        }
        if holders.is_empty() {
            return Ok(true);
        }
        let (mut removed, mut added, mut held_rows) = (Vec::new(), Vec::new(), Vec::new());
        for (partition, file, held) in holders {
            let target = file.bytes.max(self.config.target_file_bytes);
            let out = self
                .rewrite(
                    &t,
                    &partition,
                    std::slice::from_ref(&file),
                    target,
                    Some(filter),
                )
                .await;
            let out = match out {
                Ok(out) => out,
                Err(e) => {
                    self.delete(&paths_of(&added)).await;
                    return Err(e);
                }
            };
            removed.push(file.path);
            added.extend(out);
            held_rows.push(held);
        }
        let paths = paths_of(&added);
        let files = removed.len();
        match self
            .catalog
            .commit_rewrite(tenant, table, RewriteKind::Overwrite, removed, added, None)
            .await
        {
            Ok(ReplaceOutcome::Committed { .. }) => {
                run.files_rewritten += files;
                run.rows_removed += held_rows
                    .iter()
                    .flat_map(|h| h.iter().map(|(_, n)| n))
                    .sum::<u64>();
                run.rewritten.extend(held_rows);
                Ok(true)
            }
            Ok(_) => {
                self.delete(&paths).await;
                Ok(false)
            }
            Err(e) => {
                crate::after_failed_commit(&self.catalog, tenant, table, &paths, &e).await;
                Err(e.into())
            }
        }
    }

    /// Works on pending erasure requests (all tenants, or only `tenants`): one pass per tenant
    /// that has any, merging its requests that compare the same fields (oldest first, up to
    /// `compaction.erasure_max_users_per_pass` ids), `compaction.erasure_tenants_at_once`
    /// tenants side by side. A tenant whose tables are leased elsewhere waits for the next
    /// tick. Returns how many requests completed.
    pub async fn run_erasures(&self, tenants: Option<&[TenantId]>, holder: &str) -> Result<usize> {
        let mut by_tenant: Vec<(TenantId, Vec<Erasure>)> = Vec::new();
        for request in self.catalog.pending_erasures().await? {
            let id = TenantId::parse(&request.tenant)?;
            if tenants.is_some_and(|ts| !ts.contains(&id)) {
                continue;
            }
            match by_tenant.iter_mut().find(|(t, _)| *t == id) {
                Some((_, requests)) => requests.push(request),
                None => by_tenant.push((id, vec![request])),
            }
        }
        let max = self.config.erasure_max_users_per_pass;
        let passes = by_tenant.into_iter().map(|(tenant, requests)| {
            let fields = requests[0].fields.clone();
            let mut batch: Vec<Erasure> = Vec::new();
            let mut ids = 0;
            for r in requests.into_iter().filter(|r| r.fields == fields) {
                if !batch.is_empty() && ids + r.user_ids.len() > max {
                    break;
                }
                ids += r.user_ids.len();
                batch.push(r);
            }
            async move {
                let done = self.erasure_pass(&tenant, &batch, &fields, holder).await;
                if let Err(e) = &done {
                    tracing::warn!(%tenant, error = %e, "erasure pass failed; retrying on the next tick");
                }
                done.unwrap_or(0)
            }
        });
        Ok(futures::stream::iter(passes)
            .buffer_unordered(self.config.erasure_tenants_at_once.max(1))
            .collect::<Vec<usize>>()
            .await
            .into_iter()
            .sum())
    }

    /// One pass over a tenant for `requests` (which all compare `fields`), under the leases
    /// of all its tables. Returns how many requests completed.
    async fn erasure_pass(
        &self,
        tenant: &TenantId,
        requests: &[Erasure],
        fields: &[String],
        holder: &str,
    ) -> Result<usize> {
        let tables = self.catalog.list_tables(tenant).await?;
        let lease = Duration::from_secs(self.config.lease_secs);
        let mut held = Vec::new();
        for t in &tables {
            if !self.catalog.take_lease(tenant, t, holder, lease).await? {
                break;
            }
            held.push(t.clone());
        }
        let outcome = if held.len() == tables.len() {
            Some(self.erase_requests(tenant, requests, fields).await)
        } else {
            None
        };
        for t in held {
            let _ = self
                .catalog
                .release_lease(tenant, &t, holder, "{\"erasure\":true}")
                .await;
        }
        outcome.unwrap_or(Ok(0))
    }

    async fn erase_requests(
        &self,
        tenant: &TenantId,
        requests: &[Erasure],
        fields: &[String],
    ) -> Result<usize> {
        let started = Instant::now();
        let all: Vec<String> = requests
            .iter()
            .flat_map(|r| r.user_ids.iter().cloned())
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let filter = RowFilter::new(&all, fields)?;
        let index = |id: &String| filter.ids().iter().position(|i| i == id);
        let outcome = self.erase_users(tenant, &filter).await;
        let mut completed = 0;
        for request in requests {
            let ids: Vec<usize> = request.user_ids.iter().filter_map(index).collect();
            let pass = match &outcome {
                Ok(run) => {
                    let (rows_removed, files_rewritten) = run.tally(&ids);
                    let holding: Vec<&String> = ids
                        .iter()
                        .flat_map(|i| run.still_holding[*i].iter())
                        .collect();
                    ErasurePass {
                        verified: run.verified(&ids),
                        rows_removed,
                        files_rewritten,
                        detail: serde_json::json!({
                            "fields": fields,
                            "files_read": run.files_read,
                            "snapshots_expired": run.snapshots_expired,
                            "files_deleted": run.files_deleted,
                            "orphans_deleted": run.orphans_deleted,
                            "objects_still_holding": holding.len(),
                            "examples": holding.iter().take(5).collect::<Vec<_>>(),
                            "unverifiable": run.unverifiable.iter().take(5).collect::<Vec<_>>(),
                            "requests_in_pass": requests.len(),
                            "seconds": started.elapsed().as_secs_f64(),
                        })
                        .to_string(),
                    }
                }
                Err(e) => ErasurePass {
                    detail: serde_json::json!({ "error": e.to_string() }).to_string(),
                    ..ErasurePass::default()
                },
            };
            self.catalog.record_erasure(request, &pass).await?;
            if pass.verified {
                completed += 1;
                tracing::info!(%tenant, erasure = %request.id, rows = pass.rows_removed, "erasure completed and verified");
            } else {
                tracing::warn!(%tenant, erasure = %request.id, detail = %pass.detail, "erasure not verified yet; retrying on the next tick");
            }
        }
        outcome.map(|_| completed)
    }
}

fn paths_of(files: &[iceberg::spec::DataFile]) -> Vec<String> {
    files.iter().map(|f| f.file_path().to_string()).collect()
}
