//! The rules of hand-out, slices, overruns and priorities of `cpu.rs`.

use super::*;

fn charged(share: &CpuShare, tenant: &str) -> Duration {
    let state = share.inner.lock();
    Duration::from_nanos(state.tenants.get(tenant).map_or(0, |t| t.charged))
}

fn later(taken: Taken) -> Arc<Waiter> {
    match taken {
        Taken::Now => panic!("expected to wait for a slot"),
        Taken::Later(waiter) => waiter,
    }
}

#[test]
fn a_tenant_that_has_had_less_runs_at_once_on_every_slot() {
    let share = CpuShare::new(2, Duration::from_secs(1), Duration::from_millis(5));
    let (a, b) = (share.tenant("a"), share.tenant("b"));
    // Alone, A may take every slot; its third step waits.
    assert!(matches!(a.take(), Taken::Now));
    assert!(matches!(a.take(), Taken::Now));
    a.give_back(Duration::from_millis(5));
    assert!(matches!(a.take(), Taken::Now));
    let a_third = later(a.take());
    // B has had less than A, which holds both slots: B's steps run at once, up to the
    // number of slots, without waiting for A's steps to end.
    assert!(matches!(b.take(), Taken::Now));
    assert!(matches!(b.take(), Taken::Now));
    let b_third = later(b.take());
    // A's steps end: the slots are still over-held, so nothing is handed out.
    a.give_back(Duration::from_millis(5));
    a.give_back(Duration::from_millis(5));
    assert!(!a_third.granted.load(Ordering::Acquire));
    // A step of B ends: the free slot goes to B, which has still had less.
    b.give_back(Duration::from_millis(1));
    assert!(b_third.granted.load(Ordering::Acquire));
    assert!(!a_third.granted.load(Ordering::Acquire));
    b.give_back(Duration::from_millis(1));
    assert!(a_third.granted.load(Ordering::Acquire));
    b.give_back(Duration::ZERO);
    a.give_back(Duration::ZERO);
    assert_eq!(share.free(), 2);
}

#[test]
fn the_threads_a_tenant_that_has_had_less_goes_ahead_of_are_put_behind_it() {
    let share = CpuShare::with_behind(
        2,
        Duration::from_secs(1),
        Duration::from_millis(5),
        7,
        Duration::ZERO,
    );
    let a = share.tenant("a");
    let (entered, tid) = std::sync::mpsc::channel();
    let (go_on, proceed) = std::sync::mpsc::channel::<()>();
    let holder = std::thread::spawn(move || {
        crate::cpu::query_thread();
        // A holds both slots, has been charged 5 ms, and runs a step on this thread.
        assert!(matches!(a.take(), Taken::Now));
        assert!(matches!(a.take(), Taken::Now));
        a.give_back(Duration::from_millis(5));
        assert!(matches!(a.take(), Taken::Now));
        let held = Held::enter(&a);
        entered.send(rustix::thread::gettid()).unwrap();
        proceed.recv().unwrap();
        let nice = rustix::process::getpriority_process(None).unwrap();
        drop(held);
        a.give_back(Duration::ZERO);
        nice
    });
    let holder_tid = tid.recv().unwrap();
    assert_eq!(
        rustix::process::getpriority_process(Some(holder_tid)).unwrap(),
        0
    );
    // B, back from idle, has had less: it takes a slot over the count, and A's thread
    // goes behind it on the cores.
    let b = share.tenant("b");
    assert!(matches!(b.take(), Taken::Now));
    go_on.send(()).unwrap();
    assert_eq!(holder.join().unwrap(), 7);
    // This thread, running B's step, was left alone.
    assert_eq!(rustix::process::getpriority_process(None).unwrap(), 0);
    b.give_back(Duration::ZERO);
    assert_eq!(share.free(), 2);
}

#[test]
fn a_free_slot_goes_to_the_tenant_that_has_had_the_least() {
    let share = CpuShare::new(1, Duration::from_secs(1), Duration::from_millis(5));
    let (a, b) = (share.tenant("a"), share.tenant("b"));
    assert!(matches!(a.take(), Taken::Now));
    // B has had no less than A: it waits for the slot, and so does A's next step.
    let b_next = later(b.take());
    let a_next = later(a.take());
    // A waited too, but A has had more.
    a.give_back(Duration::from_millis(5));
    assert!(b_next.granted.load(Ordering::Acquire));
    assert!(!a_next.granted.load(Ordering::Acquire));
    // Now B has had more than A: A goes next, and B, asking again at once, waits.
    b.give_back(Duration::from_millis(10));
    assert!(a_next.granted.load(Ordering::Acquire));
    let b_again = later(b.take());
    a.give_back(Duration::from_millis(1));
    assert!(b_again.granted.load(Ordering::Acquire));
    b.give_back(Duration::ZERO);
    assert_eq!(share.free(), 1);
}

#[test]
fn idle_time_is_not_banked_beyond_the_credit() {
    let share = CpuShare::new(2, Duration::from_secs(1), Duration::from_millis(5));
    let (a, b) = (share.tenant("a"), share.tenant("b"));
    assert!(matches!(a.take(), Taken::Now));
    a.give_back(Duration::from_secs(10));
    // A is idle and nobody is busy: with no window, its history goes by its next step.
    assert!(matches!(a.take(), Taken::Now));
    assert_eq!(charged(&share, "a"), Duration::ZERO);
    assert!(matches!(a.take(), Taken::Now));
    a.give_back(Duration::from_secs(10));
    // B arrives while A is busy: it starts one credit behind A, not ten seconds behind.
    assert!(matches!(b.take(), Taken::Now));
    assert_eq!(charged(&share, "b"), Duration::from_secs(9));
    b.give_back(Duration::ZERO);
    // B went idle one credit behind A: when it is back, it starts one credit behind A
    // again, not where it stopped.
    assert!(matches!(a.take(), Taken::Now));
    a.give_back(Duration::from_secs(10));
    assert!(matches!(b.take(), Taken::Now));
    assert_eq!(charged(&share, "b"), Duration::from_secs(19));
    a.give_back(Duration::ZERO);
    b.give_back(Duration::ZERO);
    assert_eq!(share.free(), 2);
}

#[test]
fn a_withdrawn_step_gives_back_a_slot_granted_to_it() {
    let share = CpuShare::new(1, Duration::from_secs(1), Duration::from_millis(5));
    let a = share.tenant("a");
    assert!(matches!(a.take(), Taken::Now));
    let waiting = later(a.take());
    a.give_back(Duration::ZERO);
    assert!(waiting.granted.load(Ordering::Acquire));
    assert_eq!(share.free(), 0);
    a.withdraw(&waiting);
    assert_eq!(share.free(), 1);
    assert!(share.inner.lock().tenants.values().all(|t| !t.active()));
}

/// A stream of `steps` items, each made by spinning `spin` on the CPU.
fn spinning(steps: usize, spin: Duration) -> impl Stream<Item = usize> + Unpin {
    futures::stream::iter(0..steps).map(move |i| {
        let until = Instant::now() + spin;
        while Instant::now() < until {
            std::hint::spin_loop();
        }
        i
    })
}

#[test]
fn a_step_waits_no_more_than_a_slice_behind_a_step_that_overruns_it() {
    let share = CpuShare::new(1, Duration::from_secs(1), Duration::from_millis(5));
    let a = share.tenant("a");
    let (entered, has_entered) = std::sync::mpsc::channel();
    let (release, released) = std::sync::mpsc::channel::<()>();
    let holder_cpu = a.clone();
    // A step of A's that does not come back (a long call, or a query its time limit
    // stopped that has not reached its next yield) holds the only slot.
    let holder = std::thread::spawn(move || {
        assert!(matches!(holder_cpu.take(), Taken::Now));
        let held = Held::enter(&holder_cpu);
        entered.send(()).unwrap();
        released.recv().unwrap();
        drop(held);
    });
    has_entered.recv().unwrap();
    // Another query of A's (`SELECT 1`) still runs: after a slice the holder counts as
    // overrunning, and its slot as free.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut steps = Steps {
        inner: spinning(3, Duration::ZERO),
        gate: Gate::new(a.clone()),
    };
    let got = runtime.block_on(async {
        tokio::time::timeout(Duration::from_secs(10), async {
            let mut n = 0;
            while steps.next().await.is_some() {
                n += 1;
            }
            n
        })
        .await
    });
    assert_eq!(got, Ok(3), "the step waited behind the overrunning one");
    release.send(()).unwrap();
    holder.join().unwrap();
    assert_eq!(share.free(), 1);
}

#[test]
fn a_tenant_with_one_stream_keeps_half_the_cpu_against_four() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap();
    let share = CpuShare::new(1, Duration::from_secs(1), Duration::from_millis(5));
    let order = Arc::new(Mutex::new(Vec::new()));
    let run = |tenant: &'static str| {
        let order = order.clone();
        let mut steps = Steps {
            inner: spinning(20, Duration::from_millis(2)),
            gate: Gate::new(share.tenant(tenant)),
        };
        runtime.spawn(async move {
            while steps.next().await.is_some() {
                order.lock().unwrap().push(tenant);
            }
        })
    };
    let mut tasks: Vec<_> = (0..4).map(|_| run("a")).collect();
    tasks.push(run("b"));
    runtime.block_on(async {
        for task in tasks {
            task.await.unwrap();
        }
    });
    let order = order.lock().unwrap();
    assert_eq!(order.len(), 100);
    // Left to the threads, B would finish last; with the slot shared fairly, its 20 steps
    // alternate with A's.
    let b_done = order.iter().rposition(|t| *t == "b").unwrap();
    assert!(
        b_done < 50,
        "B's last step came at {b_done} of 100: {order:?}"
    );
    assert_eq!(share.free(), 1);
}

#[test]
fn nested_steps_and_the_query_future_take_one_slot_and_a_blocking_wait_gives_it_back() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let share = CpuShare::new(1, Duration::from_secs(1), Duration::from_millis(5));
    let cpu = share.tenant("a");
    let free = share.clone();
    let inner = Steps {
        inner: spinning(3, Duration::ZERO).map(move |i| {
            // Inside the step: the slot is held; stepping aside frees it until dropped.
            assert_eq!(free.free(), 0);
            let aside = StepAside::new();
            assert_eq!(free.free(), 1);
            drop(aside);
            assert_eq!(free.free(), 0);
            i
        }),
        gate: Gate::new(cpu.clone()),
    };
    let mut outer = Steps {
        inner,
        gate: Gate::new(cpu.clone()),
    };
    // The query's own future (planning, handing batches on) holds the slot its streams'
    // steps run in.
    let got: Vec<usize> = runtime.block_on(cpu.run(async {
        let mut got = Vec::new();
        while let Some(i) = outer.next().await {
            got.push(i);
        }
        got
    }));
    assert_eq!(got, vec![0, 1, 2]);
    assert_eq!(share.free(), 1);
}

#[test]
fn each_query_adds_up_the_time_its_steps_held_and_waited_for_slots() {
    let share = CpuShare::new(1, Duration::from_secs(1), Duration::from_secs(1));
    // Two queries of one tenant, each with a handle of its own.
    let (first, second) = (share.tenant("a"), share.tenant("a"));
    let (entered, has_entered) = std::sync::mpsc::channel();
    let holder_cpu = first.clone();
    // The first holds the only slot for 40 ms.
    let holder = std::thread::spawn(move || {
        assert!(matches!(holder_cpu.take(), Taken::Now));
        let held = Held::enter(&holder_cpu);
        entered.send(()).unwrap();
        std::thread::sleep(Duration::from_millis(40));
        drop(held);
    });
    has_entered.recv().unwrap();
    // The second's two steps of 5 ms wait for it, then run.
    let mut steps = Steps {
        inner: spinning(2, Duration::from_millis(5)),
        gate: Gate::new(second.clone()),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async { while steps.next().await.is_some() {} });
    holder.join().unwrap();
    let (a, b) = (first.times(), second.times());
    assert!(a.held() >= Duration::from_millis(40), "{a:?}");
    assert_eq!(a.waited(), Duration::ZERO);
    assert!(b.waited() >= Duration::from_millis(20), "{b:?}");
    assert!(b.held() >= Duration::from_millis(10), "{b:?}");
    assert!(b.held() < a.held(), "{a:?} {b:?}");
}

#[test]
fn a_query_thread_that_starts_a_step_while_a_lighter_tenant_is_busy_goes_behind_it() {
    let share = CpuShare::with_behind(
        2,
        Duration::from_secs(1),
        Duration::from_millis(5),
        7,
        Duration::ZERO,
    );
    let (a, b) = (share.tenant("a"), share.tenant("b"));
    // A holds a slot and has been charged 5 ms; B, busy, has had less.
    assert!(matches!(a.take(), Taken::Now));
    assert!(matches!(a.take(), Taken::Now));
    a.give_back(Duration::from_millis(5));
    assert!(matches!(b.take(), Taken::Now));
    let step = |own: bool| {
        let a = a.clone();
        std::thread::spawn(move || {
            if own {
                crate::cpu::query_thread();
            }
            let held = Held::enter(&a);
            let nice = rustix::process::getpriority_process(None).unwrap();
            drop(held);
            nice
        })
        .join()
        .unwrap()
    };
    // (Each step runs on the slot A took last, and gives it back.) A query's own thread goes
    // behind B's for the rest of its query; a thread of a shared pool (which would stay
    // behind for its next work) is left alone.
    assert_eq!(step(true), 7);
    assert!(matches!(a.take(), Taken::Now));
    assert_eq!(step(false), 0);
    b.give_back(Duration::ZERO);
    // B idle: A's next query's threads run as before.
    assert!(matches!(a.take(), Taken::Now));
    assert_eq!(step(true), 0);
    assert_eq!(share.free(), 2);
}

/// Runs one step of `cpu`'s on a new thread (a query's own with `own`), on a slot taken
/// before, and tells the thread's scheduling policy at its end.
fn policy_after_step(cpu: &TenantCpu, own: bool) -> thread_priority::ThreadSchedulePolicy {
    let cpu = cpu.clone();
    std::thread::spawn(move || {
        if own {
            crate::cpu::query_thread();
        }
        drop(Held::enter(&cpu));
        thread_priority::thread_schedule_policy().unwrap()
    })
    .join()
    .unwrap()
}

const IDLE: thread_priority::ThreadSchedulePolicy = thread_priority::ThreadSchedulePolicy::Normal(
    thread_priority::NormalThreadSchedulePolicy::Idle,
);

#[test]
fn a_query_thread_goes_behind_a_lighter_tenant_that_ran_a_step_within_the_window() {
    let window = Duration::from_millis(300);
    let share = CpuShare::with_behind(
        2,
        Duration::from_secs(1),
        Duration::from_millis(5),
        20,
        window,
    );
    let (a, b) = (share.tenant("a"), share.tenant("b"));
    // A holds a slot and has been charged 5 ms; B ran a 1 ms step and is idle again.
    assert!(matches!(a.take(), Taken::Now));
    assert!(matches!(a.take(), Taken::Now));
    a.give_back(Duration::from_millis(5));
    assert!(matches!(b.take(), Taken::Now));
    b.give_back(Duration::from_millis(1));
    // (Each step runs on a slot A took before, and gives it back.) A query's own thread
    // starting a step goes behind B although B holds no slot now: in the idle policy, for the
    // rest of its query. A shared pool's thread is left alone.
    assert!(matches!(a.take(), Taken::Now));
    assert_eq!(policy_after_step(&a, true), IDLE);
    assert!(matches!(a.take(), Taken::Now));
    assert_ne!(policy_after_step(&a, false), IDLE);
    // Past the window, A's threads run as before.
    std::thread::sleep(window + Duration::from_millis(50));
    assert!(matches!(a.take(), Taken::Now));
    assert_ne!(policy_after_step(&a, true), IDLE);
    // A tenant that ran a step within the window but has had more is not gone behind.
    assert!(matches!(b.take(), Taken::Now));
    b.give_back(Duration::from_secs(5));
    assert!(matches!(a.take(), Taken::Now));
    assert_ne!(policy_after_step(&a, true), IDLE);
    a.give_back(Duration::ZERO);
    assert_eq!(share.free(), 2);
}

#[test]
fn a_moment_with_no_tenant_busy_keeps_the_charges_and_a_quiet_window_forgets_them() {
    // (A window far longer than any moment between the steps below, however loaded the
    // machine.)
    let credit = Duration::from_millis(10);
    let share = CpuShare::with_behind(
        2,
        credit,
        Duration::from_millis(5),
        20,
        Duration::from_secs(30),
    );
    let (a, b) = (share.tenant("a"), share.tenant("b"));
    // A ran 50 ms of steps, then B 1 ms, each with the other idle, a moment apart. B starts
    // one credit behind where A left the floor, not from nothing.
    assert!(matches!(a.take(), Taken::Now));
    a.give_back(Duration::from_millis(50));
    assert!(matches!(b.take(), Taken::Now));
    assert_eq!(charged(&share, "b"), Duration::from_millis(40));
    b.give_back(Duration::from_millis(1));
    // So B's next query is not put behind A, which has had more; A's next thread goes behind
    // B, which has had less and ran a step within the window. (Each step on a thread gives
    // back the slot taken before it, charged its real time.)
    assert!(matches!(b.take(), Taken::Now));
    assert_ne!(policy_after_step(&b, true), IDLE);
    assert!(matches!(a.take(), Taken::Now));
    assert_eq!(policy_after_step(&a, true), IDLE);
    // B alone runs 500 ms of steps; A, back a moment later, starts one credit behind B, not
    // from nothing: once it has run more than the credit, B's threads do not go behind it.
    for _ in 0..5 {
        assert!(matches!(b.take(), Taken::Now));
        b.give_back(Duration::from_millis(100));
    }
    assert!(matches!(a.take(), Taken::Now));
    assert_eq!(charged(&share, "a"), charged(&share, "b") - credit);
    a.give_back(Duration::from_millis(20));
    assert!(matches!(b.take(), Taken::Now));
    assert_ne!(policy_after_step(&b, true), IDLE);
    assert_eq!(share.free(), 2);
}

#[test]
fn a_quiet_window_forgets_every_charge() {
    let window = Duration::from_millis(100);
    let share = CpuShare::with_behind(
        2,
        Duration::from_millis(10),
        Duration::from_millis(5),
        20,
        window,
    );
    let (a, b) = (share.tenant("a"), share.tenant("b"));
    assert!(matches!(a.take(), Taken::Now));
    a.give_back(Duration::from_millis(50));
    // After a window with no tenant busy, B runs 1 ms; A starts from nothing, and its next
    // thread (A had had more before) does not go behind B.
    std::thread::sleep(window + Duration::from_millis(50));
    assert!(matches!(b.take(), Taken::Now));
    b.give_back(Duration::from_millis(1));
    assert!(matches!(a.take(), Taken::Now));
    assert_eq!(charged(&share, "a"), Duration::ZERO);
    assert_ne!(policy_after_step(&a, true), IDLE);
    assert_eq!(share.free(), 2);
}
