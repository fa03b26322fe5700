//! Sharing a tenant's projections between processes on one catalog: refresh leases, so that
//! one process refreshes a projection at a time, and the poll `floe compactor` runs to find
//! commits other processes made.

use std::collections::BTreeMap;
use std::time::Duration;

use floe_catalog::TenantId;
use floe_catalog::table::EVENTS_TABLE;

use super::Refresher;
use crate::Result;

/// The refresh leases taken for one refresh of a tenant.
#[derive(Default)]
pub(super) struct Held {
    pub(super) names: Vec<String>,
    /// Projections left to the process holding their lease.
    pub(super) skipped: usize,
}

impl Held {
    pub(super) fn has(&self, name: &str) -> bool {
        self.names.iter().any(|n| n == name)
    }
}

impl Refresher {
    /// Marks, every `projection.poll_interval_ms` until `stop`, the tenants whose `events`
    /// moved since the last look: commits of other processes (`floe compactor` runs this
    /// beside [`Refresher::run`]). One catalog query per look, whatever the number of tenants.
    pub async fn poll(self, stop: impl std::future::Future<Output = ()>) {
        tokio::pin!(stop);
        let every = Duration::from_millis(self.inner.config.poll_interval_ms.max(1));
        let mut seen: BTreeMap<String, String> = BTreeMap::new();
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = &mut stop => return,
                _ = tick.tick() => {}
            }
            match self.inner.catalog.metadata_locations(EVENTS_TABLE).await {
                Ok(now) => {
                    for (tenant, location) in &now {
                        if seen.get(tenant) != Some(location) {
                            self.inner.mark(tenant);
                        }
                    }
                    seen = now.into_iter().collect();
                }
                Err(e) => tracing::warn!(error = %e, "could not look for new commits to refresh"),
            }
        }
    }

    /// Takes the refresh leases of `names` that no other process holds.
    pub(super) async fn hold<'a>(
        &self,
        tenant: &TenantId,
        names: impl Iterator<Item = &'a str>,
    ) -> Result<Held> {
        let lease = Duration::from_secs(self.inner.config.lease_secs);
        let mut held = Held::default();
        for name in names {
            let taken = self
                .inner
                .catalog
                .take_refresh_lease(tenant, name, &self.inner.holder, lease)
                .await;
            match taken {
                Ok(true) => held.names.push(name.to_string()),
                Ok(false) => held.skipped += 1,
                Err(e) => {
                    self.release(tenant, held).await;
                    return Err(e.into());
                }
            }
        }
        Ok(held)
    }

    /// Gives back the leases `held` (one not given back runs out by itself).
    pub(super) async fn release(&self, tenant: &TenantId, held: Held) {
        for name in held.names {
            let given = self
                .inner
                .catalog
                .release_refresh_lease(tenant, &name, &self.inner.holder)
                .await;
            if let Err(e) = given {
                tracing::warn!(%tenant, table = %name, error = %e, "could not give a refresh lease back");
            }
        }
    }
}
