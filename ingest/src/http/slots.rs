//! The ingest request slots (`ingest.max_concurrent_requests`), shared fairly: one tenant holds
//! at most `ingest.max_concurrent_requests_per_tenant` of them, so a tenant whose requests are
//! slow (big bodies on a slow link, or a client that means harm) leaves the others room. A slot
//! is taken once the request is authenticated, before its body is read.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use floe_catalog::TenantKey;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The slots of one process.
#[derive(Debug)]
pub struct Slots {
    all: Arc<Semaphore>,
    total: usize,
    per_tenant: usize,
    tenants: Mutex<HashMap<TenantKey, Arc<Semaphore>>>,
    wait: Duration,
}

/// A request's slot: its tenant's and one of all; both come back when dropped.
#[derive(Debug)]
pub struct Slot {
    _tenant: OwnedSemaphorePermit,
    _all: OwnedSemaphorePermit,
}

/// Why no slot was had.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoSlot {
    /// The tenant holds all of its own slots.
    Tenant { limit: usize },
    /// Every slot of the process is taken.
    All { limit: usize },
}

impl Slots {
    pub fn new(all: usize, per_tenant: usize, wait: Duration) -> Slots {
        Slots {
            all: Arc::new(Semaphore::new(all.max(1))),
            total: all.max(1),
            per_tenant: per_tenant.clamp(1, all.max(1)),
            tenants: Mutex::new(HashMap::new()),
            wait,
        }
    }

    /// Waits (up to `ingest.slot_wait_ms`) for one of `tenant`'s slots, then for one of all.
    pub async fn take(&self, tenant: &TenantKey) -> Result<Slot, NoSlot> {
        let own = {
            let mut tenants = self.tenants.lock().unwrap_or_else(|p| p.into_inner());
            // Tenants with no request in flight are forgotten.
            if tenants.len() > 1024 {
                let per = self.per_tenant;
                tenants.retain(|_, s| s.available_permits() < per);
            }
            tenants
                .entry(tenant.clone())
                .or_insert_with(|| Arc::new(Semaphore::new(self.per_tenant)))
                .clone()
        };
        let deadline = tokio::time::Instant::now() + self.wait;
        let tenant_slot = tokio::time::timeout_at(deadline, own.acquire_owned())
            .await
            .ok()
            .and_then(Result::ok)
            .ok_or(NoSlot::Tenant {
                limit: self.per_tenant,
            })?;
        let all_slot = tokio::time::timeout_at(deadline, self.all.clone().acquire_owned())
            .await
            .ok()
            .and_then(Result::ok)
            .ok_or(NoSlot::All { limit: self.total })?;
        Ok(Slot {
            _tenant: tenant_slot,
            _all: all_slot,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use floe_catalog::TenantId;

    fn key(t: &str) -> TenantKey {
        TenantKey::new(TenantId::parse(t).unwrap(), "1")
    }

    #[tokio::test]
    async fn one_tenant_cannot_hold_every_slot() {
        let slots = Slots::new(4, 2, Duration::from_millis(50));
        let a1 = slots.take(&key("a")).await.unwrap();
        let _a2 = slots.take(&key("a")).await.unwrap();
        assert_eq!(
            slots.take(&key("a")).await.unwrap_err(),
            NoSlot::Tenant { limit: 2 }
        );
        let _b1 = slots.take(&key("b")).await.unwrap();
        let _b2 = slots.take(&key("b")).await.unwrap();
        assert_eq!(
            slots.take(&key("c")).await.unwrap_err(),
            NoSlot::All { limit: 4 }
        );
        drop(a1);
        slots
            .take(&key("c"))
            .await
            .expect("a slot given back is taken");
    }
}
