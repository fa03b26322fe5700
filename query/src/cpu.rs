//! Query CPU: the cores are handed out in time slices, fairly between tenants.
//!
//! Every query runs on worker threads of its own (`trino::query`), so left to the operating
//! system a tenant with eight queries running gets eight times the CPU of a tenant with one.
//! Instead, query work runs only while it holds one of `query.cpu_slots` slots (one per core by
//! default). A slot is taken for one step of a plan node's stream (the work that makes its next
//! batch, usually a few milliseconds) and given back as soon as the step ends or waits for
//! input, and the time it was held is charged to its tenant. The query's own future (planning
//! it, handing its batches on) takes slots the same way, one per poll.
//!
//! The rule of hand-out is the least-charged tenant first (fair queueing on CPU time):
//! - a free slot goes to the waiting step whose tenant was charged the least (and, within a
//!   tenant, to the step that waited longest);
//! - a tenant that has had less than every tenant holding slots takes one at once even when
//!   all are held, up to `query.cpu_slots` of its own: the holders' steps end within
//!   milliseconds, and their next steps wait. A light tenant's short query thus runs on the
//!   cores as if alone, and a tenant running eight queries is charged for all eight.
//! - a tenant returning from idle starts `query.cpu_credit_ms` behind the least-charged busy
//!   tenant, not with all the time it did not use: it goes ahead of the busy ones for that much
//!   CPU at most, and cannot bank credit for later. With none busy, it starts that far behind
//!   where the last busy tenant left the floor: a moment between two steps forgets nothing.
//!   Only a window (`query.cpu_behind_window_ms`) with no tenant busy forgets every charge, so
//!   that a quiet server starts everyone even.
//! - the slots order the steps, but the operating system runs the threads: a step holding a
//!   slot still waits for a core if other threads want it. So a query's own threads go behind
//!   (`query.cpu_behind_nice`: a nice value, or by default the idle scheduling policy, which
//!   the kernel preempts as soon as another thread wakes) when they start a step while a
//!   tenant that has had less is busy or ran a step within `query.cpu_behind_window_ms` (a
//!   light tenant's short queries come and go between the heavy tenants' steps, and would
//!   otherwise find their threads still ahead). Threads that hold a step such a tenant goes
//!   ahead of get the nice value at once (19 at most: another thread's policy cannot be set
//!   without unsafe code) and the policy at their next step. They stay behind until their
//!   query ends (neither can be undone without privileges), and only a query's own threads
//!   are moved ([`query_thread`]), never a shared pool's. Threads a thread in the idle policy
//!   starts inherit it: a query's runtime starts its blocking threads that way, and they end
//!   with the query; no query thread starts a shared pool's.
//!
//! Steps nest (a node's step polls its input's stream), and only the outermost step of a thread
//! takes a slot: a thread holds one slot at most and never waits for a second while holding
//! one, so slots cannot deadlock. Work a plan does outside of any stream's step (a repartition
//! hashing the batch it just received) is not counted; it is bounded by the counted steps that
//! feed it. An operator whose one step would otherwise run for as long as its input is large
//! (a nested loop join joins its whole build side with each probe batch in one poll) gets its
//! input in slices that keep its steps near one slice long ([`probe`]).

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::Result;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::execution::{RecordBatchStream, SendableRecordBatchStream, TaskContext};
use datafusion::physical_plan::ExecutionPlan;
use futures::task::AtomicWaker;
use futures::{Stream, StreamExt};
use rustix::process::Pid;

use floe_catalog::pruning::Pruning;

use crate::pass_through::{PassThrough, Wrap};

pub use behind::query_thread;

/// The query CPU of a process, shared by all tenants.
#[derive(Debug, Clone)]
pub struct CpuShare {
    inner: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    /// Nanoseconds a tenant returning from idle may be behind the least-charged busy tenant.
    credit: u64,
    /// How long a step may run on while another tenant's step is kept from a slot.
    slice: Duration,
    /// The nice value of a query's threads whose steps a tenant that has had less went ahead
    /// of, or that started a step while such a tenant was busy or within `behind_window` of
    /// its last step (0: left alone; 20: the idle scheduling policy, see [`behind::go_behind`]).
    behind_nice: i32,
    /// How recently another tenant must have run a step for a query's thread starting one to
    /// go behind it (zero: only while that tenant is busy); and how long no tenant must have
    /// been busy for every charge to be forgotten (zero: a moment).
    behind_window: Duration,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    slots: usize,
    /// A step holding a slot longer than this is overrunning (see [`State::free_slots`]).
    slice: Duration,
    /// Slots held (may exceed `slots` for a moment: see [`State::may_take`]).
    running: usize,
    tenants: HashMap<Arc<str>, Tenant>,
    /// When each tenant last ended a step, and its charge then (pruned of those older than
    /// the window when it has doubled since the last pruning).
    ended: HashMap<Arc<str>, (Instant, u64)>,
    ended_pruning: Pruning,
    /// Of the idle tenants whose charges say nothing ([`State::forget_idle`]).
    tenants_pruning: Pruning,
    /// The least charge among busy tenants when one last was, or, none being busy, the
    /// highest of that and the charge of the tenant that was busy last: where a tenant
    /// activating while none is busy starts (the fair-queuing virtual time, kept across a
    /// moment between steps).
    last_floor: u64,
    /// Since when no tenant has been busy, if none is.
    idle_since: Option<Instant>,
}

#[derive(Debug, Default)]
struct Tenant {
    /// Nanoseconds of slot time charged (relative: see [`State::activate`]).
    charged: u64,
    /// Slots held.
    running: usize,
    /// Steps waiting for a slot, oldest first.
    waiting: VecDeque<Arc<Waiter>>,
    /// The threads running its steps now, since when, and whether each is a query's own
    /// ([`query_thread`]).
    threads: Vec<(Pid, Instant, bool)>,
}

impl Tenant {
    fn active(&self) -> bool {
        self.running > 0 || !self.waiting.is_empty()
    }
}

/// A step waiting for a slot.
#[derive(Debug, Default)]
struct Waiter {
    granted: AtomicBool,
    waker: AtomicWaker,
}

impl State {
    /// The least charge among busy tenants (other than `except`).
    fn floor(&self, except: Option<&str>) -> Option<u64> {
        self.tenants
            .iter()
            .filter(|(name, t)| Some(&***name) != except && t.active())
            .map(|(_, t)| t.charged)
            .min()
    }

    /// `tenant`'s entry, about to be busy: brought up to `credit` behind the busy tenants (or,
    /// none being busy, behind the last floor) if it was idle. After no tenant was busy for
    /// `window` (or at once, with a zero window), every charge is forgotten first: a quiet
    /// server starts everyone even, while a moment between two steps forgets nothing.
    fn activate(&mut self, tenant: &Arc<str>, credit: u64, window: Duration) -> &mut Tenant {
        if let Some(since) = self.idle_since.take()
            && since.elapsed() >= window
        {
            self.forget_all();
        }
        let floor = self.floor(Some(tenant)).unwrap_or(self.last_floor);
        let t = self.tenants.entry(tenant.clone()).or_default();
        if !t.active() {
            t.charged = t.charged.max(floor.saturating_sub(credit));
        }
        t
    }

    /// Whether a tenant charged less than `charged` (other than `tenant`) has a step waiting.
    fn less_charged_waits(&self, tenant: &str, charged: u64) -> bool {
        self.tenants
            .iter()
            .any(|(name, t)| &**name != tenant && !t.waiting.is_empty() && t.charged < charged)
    }

    /// Whether every other tenant holding slots has been charged more than `charged`.
    fn ahead_of_every_holder(&self, tenant: &str, charged: u64) -> bool {
        self.tenants
            .iter()
            .all(|(name, t)| &**name == tenant || t.running == 0 || t.charged > charged)
    }

    /// Whether `tenant` (already active) may take a slot now: a free one nobody charged less
    /// waits for, or, when it has had less than every tenant holding slots, one over the count
    /// (their steps end within milliseconds, and then they wait).
    fn may_take(&self, tenant: &str) -> bool {
        let Some(t) = self.tenants.get(tenant) else {
            return false;
        };
        (self.free_slots() > 0 && !self.less_charged_waits(tenant, t.charged))
            || (t.running < self.slots && self.ahead_of_every_holder(tenant, t.charged))
    }

    fn grant(&mut self, tenant: &str) {
        let t = self
            .tenants
            .get_mut(tenant)
            .expect("a tenant with a waiting step");
        let waiter = t.waiting.pop_front().expect("a tenant with a waiting step");
        t.running += 1;
        self.running += 1;
        waiter.granted.store(true, Ordering::Release);
        waiter.waker.wake();
    }

    /// Slots neither held nor held by an overrunning step. A step that has held its slot
    /// past the slice is in a long call that does not poll its input (a nested-loop join
    /// making one batch), which no yield can cut short: it is left to the operating system,
    /// and its slot counts as free, so that a step never waits behind it more than a slice
    /// (the query it belongs to may have been stopped by its time limit meanwhile).
    fn free_slots(&self) -> usize {
        let now = Instant::now();
        let overrunning = self
            .tenants
            .values()
            .flat_map(|t| t.threads.iter())
            .filter(|(_, since, _)| now.duration_since(*since) >= self.slice)
            .count();
        (self.slots + overrunning).saturating_sub(self.running)
    }

    /// Gives the free slots to the waiting steps of the least-charged tenants.
    fn dispatch(&mut self) {
        let mut free = self.free_slots();
        while free > 0 {
            free -= 1;
            let Some(name) = self
                .tenants
                .iter()
                .filter(|(_, t)| !t.waiting.is_empty())
                .min_by_key(|(_, t)| t.charged)
                .map(|(name, _)| name.clone())
            else {
                return;
            };
            self.grant(&name);
        }
    }

    /// After a step of `tenant` ended: moves the last floor, notes the moment no tenant is
    /// busy any more, and forgets the idle tenants whose charges say nothing the next
    /// activation would not set anyway (they have had less than the floor by the credit or
    /// more): `tenant` now, the others when the entries have doubled since the last pruning.
    fn forget_idle(&mut self, tenant: &str, credit: u64) {
        match self.floor(None) {
            Some(floor) => self.last_floor = floor,
            None => {
                // The last busy tenant's charge is where the next one starts (less the credit).
                if let Some(t) = self.tenants.get(tenant) {
                    self.last_floor = self.last_floor.max(t.charged);
                }
                self.idle_since = Some(Instant::now());
            }
        }
        let floor = self.last_floor;
        let redundant = |t: &Tenant| !t.active() && t.charged.saturating_add(credit) <= floor;
        if self.tenants.get(tenant).is_some_and(redundant) {
            self.tenants.remove(tenant);
        }
        self.tenants_pruning
            .retain(&mut self.tenants, 16, |_, t| !redundant(t));
    }

    /// Forgets every charge, and which tenants ran steps (none is busy).
    fn forget_all(&mut self) {
        self.tenants.clear();
        self.ended.clear();
        self.tenants_pruning = Pruning::default();
        self.ended_pruning = Pruning::default();
        self.last_floor = 0;
    }
}

impl CpuShare {
    /// `slots` steps may run at once (0: one per core); `credit` is how far behind the busy
    /// tenants one returning from idle starts; a step that has run `slice` yields its slot at
    /// its next input while others are kept from one.
    pub fn new(slots: usize, credit: Duration, slice: Duration) -> CpuShare {
        CpuShare::with_behind(slots, credit, slice, 0, Duration::ZERO)
    }

    /// As [`CpuShare::new`]; the threads of steps a tenant that has had less goes ahead of
    /// are given `behind_nice` (0: left alone; 20: the idle scheduling policy), so that the
    /// operating system, too, runs that tenant's steps first until theirs end; and a query's
    /// thread starting a step goes behind when such a tenant is busy or ran a step within
    /// `window` (zero: only while it is busy): a tenant whose short queries come every few
    /// hundred milliseconds then finds the heavier tenants' threads already behind when its
    /// next one arrives. A window with no tenant busy (a moment, with a zero window) forgets
    /// every charge.
    pub fn with_behind(
        slots: usize,
        credit: Duration,
        slice: Duration,
        behind_nice: i32,
        window: Duration,
    ) -> CpuShare {
        let slots = match slots {
            0 => std::thread::available_parallelism().map_or(2, usize::from),
            n => n,
        };
        CpuShare {
            inner: Arc::new(Shared {
                credit: credit.as_nanos().try_into().unwrap_or(u64::MAX),
                slice,
                behind_nice,
                behind_window: window,
                state: Mutex::new(State {
                    slots,
                    slice,
                    running: 0,
                    tenants: HashMap::new(),
                    ended: HashMap::new(),
                    ended_pruning: Pruning::default(),
                    tenants_pruning: Pruning::default(),
                    last_floor: 0,
                    idle_since: None,
                }),
            }),
        }
    }

    /// The handle through which `tenant`'s query steps take slots; one per query, whose
    /// [`TenantCpu::times`] add up that query's steps.
    pub fn tenant(&self, tenant: &str) -> TenantCpu {
        TenantCpu {
            share: self.inner.clone(),
            tenant: tenant.into(),
            times: Arc::default(),
        }
    }

    /// Slots nobody holds.
    pub fn free(&self) -> usize {
        let state = self.inner.lock();
        state.slots.saturating_sub(state.running)
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere does not make the counts wrong: each change is one statement.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `tenant`'s step keeps a tenant that has had less from a slot: one that waits,
    /// or one that took a slot over the count because it had had less.
    fn owes(&self, tenant: &str) -> bool {
        let state = self.lock();
        let Some(charged) = state.tenants.get(tenant).map(|t| t.charged) else {
            return false;
        };
        let over = state.running > state.slots;
        state.tenants.iter().any(|(name, t)| {
            &**name != tenant
                && t.charged < charged
                && (!t.waiting.is_empty() || (over && t.running > 0))
        })
    }
}

/// One tenant's access to the slots.
#[derive(Debug, Clone)]
pub struct TenantCpu {
    share: Arc<Shared>,
    tenant: Arc<str>,
    times: Arc<SlotTimes>,
}

/// How long the steps taken through one [`TenantCpu`] (one query's) held slots, and waited
/// for them: where a query's time went between its own work and its turn at the cores.
#[derive(Debug, Default)]
pub struct SlotTimes {
    held: AtomicU64,
    waited: AtomicU64,
}

impl SlotTimes {
    /// The time its steps held a slot: its CPU time, unless the system gave the core to work
    /// outside the slots meanwhile.
    pub fn held(&self) -> Duration {
        Duration::from_nanos(self.held.load(Ordering::Relaxed))
    }

    /// The time its steps waited for a slot held by other steps.
    pub fn waited(&self) -> Duration {
        Duration::from_nanos(self.waited.load(Ordering::Relaxed))
    }

    fn add(counter: &AtomicU64, time: Duration) {
        counter.fetch_add(time.as_nanos() as u64, Ordering::Relaxed);
    }
}

/// Whether a slot was had at once or must be waited for.
enum Taken {
    Now,
    Later(Arc<Waiter>),
}

impl TenantCpu {
    /// The times of the steps taken through this handle (and its clones).
    pub fn times(&self) -> Arc<SlotTimes> {
        self.times.clone()
    }

    fn take(&self) -> Taken {
        let mut state = self.share.lock();
        let credit = self.share.credit;
        state.activate(&self.tenant, credit, self.share.behind_window);
        if state.may_take(&self.tenant) {
            let over = state.running >= state.slots;
            state.running += 1;
            let mut charged = 0;
            if let Some(t) = state.tenants.get_mut(&self.tenant) {
                t.running += 1;
                charged = t.charged;
            }
            if over && self.share.behind_nice > 0 {
                // Over the count: the holders' threads (all charged more) go behind this one
                // on the cores until their steps end; they are a query's own, and end with it.
                let behind: Vec<Pid> = state
                    .tenants
                    .iter()
                    .filter(|(name, t)| **name != self.tenant && t.charged > charged)
                    .flat_map(|(_, t)| t.threads.iter())
                    .filter(|(_, _, own)| *own)
                    .map(|(thread, _, _)| *thread)
                    .collect();
                drop(state);
                behind::put_behind(&behind, self.share.behind_nice);
            }
            return Taken::Now;
        }
        let waiter = Arc::new(Waiter::default());
        if let Some(t) = state.tenants.get_mut(&self.tenant) {
            t.waiting.push_back(waiter.clone());
        }
        Taken::Later(waiter)
    }

    /// Gives a slot back, charging `held` to the tenant.
    fn give_back(&self, held: Duration) {
        SlotTimes::add(&self.times.held, held);
        let mut state = self.share.lock();
        if let Some(t) = state.tenants.get_mut(&self.tenant) {
            t.charged = t.charged.saturating_add(held.as_nanos() as u64);
            t.running = t.running.saturating_sub(1);
        }
        state.running = state.running.saturating_sub(1);
        if !self.share.behind_window.is_zero() {
            state.step_ended(&self.tenant, self.share.behind_window);
        }
        state.dispatch();
        state.forget_idle(&self.tenant, self.share.credit);
    }

    /// Records that this thread runs one of the tenant's steps; with `ask`, tells (under the
    /// same lock) whether a tenant that has had less is busy or ran a step within the window.
    fn enter_thread(&self, ask: bool) -> bool {
        let thread = rustix::thread::gettid();
        let mut state = self.share.lock();
        if let Some(t) = state.tenants.get_mut(&self.tenant) {
            t.threads
                .push((thread, Instant::now(), behind::query_owned()));
        }
        ask && state.lighter_near(&self.tenant, self.share.behind_window)
    }

    /// Records that this thread's step ended.
    fn leave_thread(&self) {
        let thread = rustix::thread::gettid();
        if let Some(t) = self.share.lock().tenants.get_mut(&self.tenant)
            && let Some(i) = t.threads.iter().position(|(p, _, _)| *p == thread)
        {
            t.threads.swap_remove(i);
        }
    }

    /// Withdraws a step that stopped waiting (its stream was dropped).
    fn withdraw(&self, waiter: &Arc<Waiter>) {
        let mut state = self.share.lock();
        if waiter.granted.load(Ordering::Acquire) {
            drop(state);
            self.give_back(Duration::ZERO);
            return;
        }
        if let Some(t) = state.tenants.get_mut(&self.tenant) {
            t.waiting.retain(|w| !Arc::ptr_eq(w, waiter));
        }
        state.dispatch();
        state.forget_idle(&self.tenant, self.share.credit);
    }
}

thread_local! {
    /// The slot this thread holds for the step it is in, if any.
    static CURRENT: RefCell<Option<Current>> = const { RefCell::new(None) };
}

struct Current {
    cpu: TenantCpu,
    since: Instant,
}

/// When the step this thread holds a slot for began, if it holds one.
fn step_began() -> Option<Instant> {
    CURRENT.with_borrow(|current| current.as_ref().map(|c| c.since))
}

fn holding() -> bool {
    CURRENT.with_borrow(Option::is_some)
}

/// Whether the step this thread is in has run its slice and keeps a tenant that has had less
/// from a slot.
fn slice_over() -> bool {
    CURRENT.with_borrow(|current| {
        current.as_ref().is_some_and(|c| {
            c.since.elapsed() >= c.cpu.share.slice && c.cpu.share.owes(&c.cpu.tenant)
        })
    })
}

/// A slot held by this thread for one step; given back (and the step's time charged) on drop,
/// also when the step panics.
struct Held;

impl Held {
    fn enter(cpu: &TenantCpu) -> Held {
        behind::on_step(cpu);
        CURRENT.set(Some(Current {
            cpu: cpu.clone(),
            since: Instant::now(),
        }));
        Held
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some(current) = CURRENT.take() {
            current.cpu.leave_thread();
            current.cpu.give_back(current.since.elapsed());
        }
    }
}

/// The slot of the step this thread is in, given back while the thread blocks (a query waiting
/// for memory must not keep the cores from the queries that would give memory back) and taken
/// again, waiting for it on this thread, on drop.
pub struct StepAside {
    cpu: Option<TenantCpu>,
}

impl StepAside {
    pub fn new() -> StepAside {
        let cpu = CURRENT.take().map(|current| {
            current.cpu.leave_thread();
            current.cpu.give_back(current.since.elapsed());
            current.cpu
        });
        StepAside { cpu }
    }
}

impl Default for StepAside {
    fn default() -> Self {
        StepAside::new()
    }
}

impl Drop for StepAside {
    fn drop(&mut self) {
        let Some(cpu) = self.cpu.take() else {
            return;
        };
        if let Taken::Later(waiter) = cpu.take() {
            let since = Instant::now();
            waiter
                .waker
                .register(&Waker::from(Arc::new(Unpark(std::thread::current()))));
            while !waiter.granted.load(Ordering::Acquire) {
                std::thread::park();
            }
            SlotTimes::add(&cpu.times.waited, since.elapsed());
        }
        cpu.enter_thread(false);
        CURRENT.set(Some(Current {
            cpu,
            since: Instant::now(),
        }));
    }
}

struct Unpark(std::thread::Thread);

impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}

/// One line of work's turn at the slots: a step either holds a slot or waits for one.
struct Gate {
    cpu: TenantCpu,
    /// The step's place in the queue for a slot, and since when it waits there.
    waiting: Option<(Arc<Waiter>, Instant)>,
    /// While waiting: when to look again whether the holders are overrunning.
    recheck: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Gate {
    fn new(cpu: TenantCpu) -> Gate {
        Gate {
            cpu,
            waiting: None,
            recheck: None,
        }
    }

    /// A slot for this step: `Ready(Some)` holds one until dropped, `Ready(None)` means the
    /// thread already holds one (an outer step's), `Pending` waits for one (or yields the outer
    /// step's).
    fn enter(&mut self, cx: &mut Context<'_>) -> Poll<Option<Held>> {
        if holding() {
            // An outer step's slot. An operator that loops over its input inside one poll
            // (an aggregate, a sort) would hold it for the whole input: past the slice, when
            // a tenant that has had less is kept from a slot, its input answers "not yet" (and
            // wakes it at once), so that the poll unwinds and the outermost step gives the
            // slot back.
            if slice_over() {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            return Poll::Ready(None);
        }
        let (waiter, since) = match self.waiting.take() {
            Some(waiting) => waiting,
            None => match self.cpu.take() {
                Taken::Now => return Poll::Ready(Some(Held::enter(&self.cpu))),
                Taken::Later(waiter) => (waiter, Instant::now()),
            },
        };
        waiter.waker.register(cx.waker());
        // Checked after the registration: a grant in between would have been a lost wake.
        if !waiter.granted.load(Ordering::Acquire) {
            // Slots are handed out when a step ends; a holder that overruns its slice ends
            // no step, so the waiting step looks again itself, every slice.
            let slice = self.cpu.share.slice.max(Duration::from_millis(1));
            let recheck = self
                .recheck
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(slice)));
            while recheck.as_mut().poll(cx).is_ready() {
                self.cpu.share.lock().dispatch();
                if waiter.granted.load(Ordering::Acquire) {
                    break;
                }
                recheck.as_mut().reset(tokio::time::Instant::now() + slice);
            }
            if !waiter.granted.load(Ordering::Acquire) {
                self.waiting = Some((waiter, since));
                return Poll::Pending;
            }
        }
        self.recheck = None;
        SlotTimes::add(&self.cpu.times.waited, since.elapsed());
        Poll::Ready(Some(Held::enter(&self.cpu)))
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        if let Some((waiter, since)) = self.waiting.take() {
            SlotTimes::add(&self.cpu.times.waited, since.elapsed());
            self.cpu.withdraw(&waiter);
        }
    }
}

/// A stream whose every step runs holding a slot.
struct Steps<S> {
    inner: S,
    gate: Gate,
}

/// `plan` with every node's steps run under `cpu`'s slots (and nested loop joins probing in
/// slices: [`probe`]).
pub fn share(plan: Arc<dyn ExecutionPlan>, cpu: &TenantCpu) -> Result<Arc<dyn ExecutionPlan>> {
    probe::slice_probes(plan, cpu.share.slice)?
        .transform_up(|node| {
            Ok(Transformed::yes(
                Arc::new(PassThrough::new(node, TakesSlots(cpu.clone()))) as _,
            ))
        })
        .map(|t| t.data)
}

impl<S: Stream + Unpin> Stream for Steps<S> {
    type Item = S::Item;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        let _held = std::task::ready!(self.gate.enter(cx));
        self.inner.poll_next_unpin(cx)
    }
}

/// A future whose every poll runs holding a slot: the work of a query outside its plan's
/// streams (planning it, handing its batches on) is taken from the tenant's share too.
pub struct SlicedFuture<F> {
    inner: Pin<Box<F>>,
    gate: Gate,
}

impl TenantCpu {
    /// `work` with every poll run holding one of this tenant's slots.
    pub fn run<F: Future>(&self, work: F) -> SlicedFuture<F> {
        SlicedFuture {
            inner: Box::pin(work),
            gate: Gate::new(self.clone()),
        }
    }
}

impl<F: Future> Future for SlicedFuture<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let _held = std::task::ready!(self.gate.enter(cx));
        self.inner.as_mut().poll(cx)
    }
}

/// What makes a plan node's streams take a slot for each step.
#[derive(Debug, Clone)]
struct TakesSlots(TenantCpu);

impl Wrap for TakesSlots {
    const NAME: &'static str = "CpuShare";

    fn wrap(
        &self,
        input: SendableRecordBatchStream,
        _context: &Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        Ok(Box::pin(SlicedStream {
            schema: input.schema(),
            steps: Steps {
                inner: input,
                gate: Gate::new(self.0.clone()),
            },
        }))
    }
}

struct SlicedStream {
    schema: SchemaRef,
    steps: Steps<SendableRecordBatchStream>,
}

impl Stream for SlicedStream {
    type Item = Result<RecordBatch>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.steps.poll_next_unpin(cx)
    }
}

impl RecordBatchStream for SlicedStream {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }
}

mod behind;
mod probe;

#[cfg(test)]
mod tests;
