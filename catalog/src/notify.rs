//! Commit hooks: code told after every commit this process makes to a table (the projection
//! refresher, which brings read models up to date after `events` moves). A hook runs on the
//! committing task, right after the compare-and-swap, so it must only take note and return
//! (mark work, wake a task); it never fails a commit.

use std::sync::{Arc, RwLock};

use crate::Catalog;
use crate::tenant::TenantId;

/// Told of a commit: the tenant and the table.
pub type CommitHook = Arc<dyn Fn(&TenantId, &str) + Send + Sync>;

/// The hooks of a catalog handle and its clones.
#[derive(Clone, Default)]
pub(crate) struct Hooks(Arc<RwLock<Vec<CommitHook>>>);

impl Hooks {
    pub(crate) fn tell(&self, tenant: &TenantId, table: &str) {
        // A poisoned lock means a hook panicked once: the others still hear of commits.
        let hooks = match self.0.read() {
            Ok(h) => h,
            Err(poisoned) => poisoned.into_inner(),
        };
        for hook in hooks.iter() {
            hook(tenant, table);
        }
    }
}

impl Catalog {
    /// Calls `hook` after every commit made through this catalog (any clone of it).
    pub fn on_commit(&self, hook: CommitHook) {
        let mut hooks = match self.hooks.0.write() {
            Ok(h) => h,
            Err(poisoned) => poisoned.into_inner(),
        };
        hooks.push(hook);
    }
}
