//! Which query threads go behind on the cores (see the module doc of `cpu.rs`): the slots
//! order the steps, but the operating system runs the threads, so a query's own threads that
//! start a step while a tenant that has had less is busy, or ran a step within the window, are
//! given `query.cpu_behind_nice` (by default the idle scheduling policy) for the rest of their
//! query; and the threads holding steps such a tenant goes ahead of get the nicest value at once.

use std::cell::Cell;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustix::process::Pid;

use super::{State, TenantCpu};

thread_local! {
    /// Whether this thread belongs to one query and ends with it ([`query_thread`]).
    static QUERY_OWNED: Cell<bool> = const { Cell::new(false) };
    /// Whether this thread has been put behind other tenants' (it stays there).
    static BEHIND: Cell<bool> = const { Cell::new(false) };
}

impl State {
    /// Whether another tenant has had less than `tenant` and is busy (holds or waits for a
    /// slot), or has run a step within `window`: compared by its charge now, or, forgotten
    /// since ([`State::forget_idle`]), by its charge at the end of its last step.
    pub(super) fn lighter_near(&self, tenant: &str, window: Duration) -> bool {
        let Some(charged) = self.tenants.get(tenant).map(|t| t.charged) else {
            return false;
        };
        let now = Instant::now();
        self.tenants
            .iter()
            .any(|(name, t)| &**name != tenant && t.charged < charged && t.active())
            || self.ended.iter().any(|(name, (at, then))| {
                &**name != tenant
                    && now.duration_since(*at) < window
                    && self.tenants.get(name).map_or(*then, |t| t.charged) < charged
            })
    }

    /// Notes that `tenant` ended a step now, with its charge; forgets the tenants that have
    /// not for `window`.
    pub(super) fn step_ended(&mut self, tenant: &Arc<str>, window: Duration) {
        let now = Instant::now();
        let charged = self.tenants.get(tenant).map_or(0, |t| t.charged);
        if let Some(mark) = self.ended.get_mut(tenant) {
            *mark = (now, charged);
            return;
        }
        self.ended_pruning
            .retain(&mut self.ended, 16, |_, (at, _)| {
                now.duration_since(*at) < window
            });
        self.ended.insert(tenant.clone(), (now, charged));
    }
}

/// Marks the calling thread as one query's own, ended with it: only such threads are put
/// behind a tenant that has had less, since a thread's nice value cannot be lowered again
/// without privileges (a shared pool's thread would stay behind for whoever it serves next).
pub fn query_thread() {
    QUERY_OWNED.set(true);
}

/// Puts the calling thread behind the others on the cores for the rest of its life: at `nice`,
/// or, at 20, in the idle scheduling policy (`SCHED_IDLE`), whose threads the kernel preempts
/// as soon as any other thread wakes, and weighs at about a fifth of nice 19's.
pub(super) fn go_behind(nice: i32) {
    // The nicest value first: what stays if the policy cannot be set (a sandbox refusing it).
    let _ = rustix::process::setpriority_process(Some(rustix::thread::gettid()), nice.min(19));
    if nice >= 20 {
        use thread_priority::{NormalThreadSchedulePolicy, ThreadPriority, ThreadSchedulePolicy};
        // The crate sets the policy, then a nice value of 0, which is refused (the thread is
        // at 19) and would not count in the idle policy anyway.
        let _ = thread_priority::set_thread_priority_and_policy(
            thread_priority::thread_native_id(),
            ThreadPriority::Min,
            ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle),
        );
    }
}

/// Whether the calling thread is a query's own ([`query_thread`]).
pub(super) fn query_owned() -> bool {
    QUERY_OWNED.get()
}

/// At the start of a step of `cpu`'s on the calling thread: records the thread, and puts it
/// behind if it is a query's own, not behind yet, and a tenant that has had less is busy or
/// ran a step within the window. Its work outside the steps (a repartition hashing a batch, its
/// runtime's own tasks) and its steps that overrun the slice would otherwise take the cores
/// from the lighter tenant's steps, which hold slots but wait for the operating system.
pub(super) fn on_step(cpu: &TenantCpu) {
    let nice = cpu.share.behind_nice;
    let ask = nice > 0 && QUERY_OWNED.get() && !BEHIND.get();
    if cpu.enter_thread(ask) {
        BEHIND.set(true);
        go_behind(nice);
    }
}

/// Puts other threads (holding steps a lighter tenant's step went ahead of) behind at once.
/// Another thread's policy cannot be set without unsafe code: they get the nicest value now
/// (`nice`, 19 at most), and the idle policy at their next step.
pub(super) fn put_behind(threads: &[Pid], nice: i32) {
    for thread in threads {
        let _ = rustix::process::setpriority_process(Some(*thread), nice.min(19));
    }
}
