//! Replay: a projection computed from all of `events` at one snapshot, day by day in ascending
//! order, and committed whole in one snapshot (readers see the old rows or the new ones, never
//! part of them). Used when a projection has never been refreshed, when the snapshot it
//! reflects has left the history of `events`, and by [`Refresher::rebuild`].
//!
//! Memory follows one day, not the table: a day's event ids, pages and currencies are dropped
//! once its rows are made, and only the users of the days a window still reaches are kept.

use std::collections::{BTreeMap, BTreeSet};

use floe_catalog::delta::DeltaFile;
use floe_catalog::projection::{Defined, SourceRef, builtins_of};
use floe_catalog::table::EVENTS_TABLE;
use floe_catalog::{Error as CatalogError, TenantId};

use super::day::{self, Day};
use super::rows::Computed;
use super::{Out, Refreshed, Refresher, Target, files};
use crate::{Error, Result};

impl Refresher {
    /// Computes `targets` from all events at `to` and commits each whole, fenced on
    /// `expected`; with the days a later refresh can start from (the last one whole, the 27
    /// before it users only). `None`: fenced.
    pub(super) async fn replay(
        &self,
        tenant: &TenantId,
        expected: Option<i64>,
        to: SourceRef,
        targets: &[Target],
    ) -> Result<Option<(Refreshed, BTreeMap<i32, Day>)>> {
        let catalog = &self.inner.catalog;
        let store = catalog.data_store();
        let files = catalog.day_files(tenant, to.snapshot_id, None).await?;
        let mut by_day: BTreeMap<i32, Vec<DeltaFile>> = BTreeMap::new();
        for f in &files {
            by_day.entry(f.day).or_default().push(f.clone());
        }
        let back = targets
            .iter()
            .map(|t| t.computed.looks_back())
            .max()
            .unwrap_or(0);
        let schemas = targets
            .iter()
            .map(|t| files::arrow_schema(&t.table))
            .collect::<Result<Vec<_>>>()?;
        let mut rows: Vec<Vec<_>> = vec![Vec::new(); targets.len()];
        // The days a window still reaches: their users only, past the day being made.
        let mut window: BTreeMap<i32, Day> = BTreeMap::new();
        let mut files_kept = 0;
        for (d, files) in &by_day {
            window.retain(|k, _| *k >= d - back);
            // The day before is made: only its users are needed from now on.
            if let Some((_, before)) = window.iter_mut().next_back() {
                before.keep_users_only();
            }
            let mut today = BTreeMap::from([(*d, Day::default())]);
            files_kept += day::apply_files(store, catalog.written(), files, &mut today).await?;
            window.extend(today);
            let this: BTreeSet<i32> = [*d].into();
            for (i, t) in targets.iter().enumerate() {
                rows[i].push(t.computed.rows(&window, &this, schemas[i].clone())?);
            }
        }
        let mut done = Refreshed {
            source: Some(to.snapshot_id),
            full: true,
            files_read: files.len(),
            files_kept,
            days_read: by_day.len(),
            ..Refreshed::default()
        };
        for (t, rows) in targets.iter().zip(rows) {
            if !self
                .commit(tenant, Out::of(t.name, &t.table), rows, None, expected, to)
                .await?
            {
                return Ok(None);
            }
            done.committed += 1;
        }
        Ok(Some((done, window)))
    }

    /// Recomputes the projection `name` from all events, at the events snapshot `at` (one
    /// still in their history) or the current one, in one commit; then brings every projection
    /// of the tenant up to date. What it reflected before stays readable by time travel until
    /// its snapshot expires.
    pub async fn rebuild(
        &self,
        tenant: &TenantId,
        name: &str,
        at: Option<i64>,
    ) -> Result<Refreshed> {
        let catalog = &self.inner.catalog;
        let t = catalog.tenant(tenant).await?;
        let defined = catalog
            .defined_projections(tenant)
            .await?
            .into_iter()
            .find(|d| d.name == name);
        let builtin = builtins_of(&t).iter().any(|b| b.name == name);
        if !builtin && defined.is_none() {
            return Err(CatalogError::NotFound {
                what: format!("projection {name} of tenant {tenant}"),
            }
            .into());
        }
        catalog.ensure_builtin_projections(tenant).await?;
        let events = catalog.load_table(tenant, EVENTS_TABLE).await?;
        let metadata = events.metadata();
        let snapshot = match at {
            None => metadata.current_snapshot(),
            Some(id) => Some(metadata.snapshot_by_id(id).ok_or_else(|| {
                let oldest = metadata
                    .snapshots()
                    .min_by_key(|s| s.sequence_number())
                    .map_or("none".to_string(), |s| s.snapshot_id().to_string());
                Error::Invalid(format!(
                    "snapshot {id} is not in the history of {tenant}.events (the oldest kept is {oldest})"
                ))
            })?),
        };
        let Some(snapshot) = snapshot else {
            return Ok(Refreshed::default());
        };
        let to = SourceRef::of(snapshot);
        let held = self.hold(tenant, std::iter::once(name)).await?;
        if held.skipped > 0 {
            return Err(Error::KeptChanging {
                table: format!("{tenant}.{name}"),
                what: "another process is refreshing it (holds its refresh lease)",
            });
        }
        let rebuilt = self.rebuild_held(tenant, name, defined, to).await;
        self.release(tenant, held).await;
        let rebuilt = rebuilt?;
        let caught_up = self.refresh_tenant(tenant).await?;
        Ok(Refreshed {
            source: caught_up.source.or(rebuilt.source),
            ..rebuilt
        })
    }

    async fn rebuild_held(
        &self,
        tenant: &TenantId,
        name: &str,
        defined: Option<Defined>,
        to: SourceRef,
    ) -> Result<Refreshed> {
        let catalog = &self.inner.catalog;
        Ok(if let Some(d) = defined {
            let _one_at_a_time = self.inner.cache.lock().await;
            self.refresh_defined(tenant, &d, Some(to))
                .await?
                .ok_or_else(|| Error::KeptChanging {
                    table: format!("{tenant}.{name}"),
                    what: "another refresh committed during the rebuild",
                })?
        } else {
            // The days kept stay as they are: they follow the other projections' source.
            let _one_at_a_time = self.inner.cache.lock().await;
            let computed = Computed::of(name).ok_or_else(|| {
                Error::Invalid(format!("{name} is not a projection Floe computes"))
            })?;
            let table = catalog.load_table(tenant, name).await?;
            let source =
                floe_catalog::projection::source_of(table.metadata())?.map(|s| s.snapshot_id);
            let target = Target {
                name: floe_catalog::projection::builtin(name)?.name,
                computed,
                table,
            };
            self.replay(tenant, source, to, std::slice::from_ref(&target))
                .await?
                .map(|(done, _)| done)
                .ok_or_else(|| Error::KeptChanging {
                    table: format!("{tenant}.{name}"),
                    what: "another refresh committed during the rebuild",
                })?
        })
    }
}
