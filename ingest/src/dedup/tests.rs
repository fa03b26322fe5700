use super::*;

fn t(id: &str) -> TenantKey {
    TenantKey::new(floe_catalog::TenantId::parse(id).unwrap(), "i1")
}

#[test]
fn admits_once_within_the_window() {
    let d = Dedup::new(10, 100);
    let a = key(&t("t"), "a");
    let b = key(&t("t"), "b");
    assert_eq!(d.admit(&[a, b, a], 0), vec![true, true, false]);
    assert_eq!(d.admit(&[a], 9_000_000), vec![false]);
    // After the window, the id is forgotten.
    assert_eq!(d.admit(&[a], 11_000_001), vec![true]);
    // Tenants are separate, and so are two incarnations of one tenant id.
    assert_ne!(key(&t("t1"), "a"), key(&t("t2"), "a"));
    assert_ne!(key(&t("ab"), "c"), key(&t("a"), "bc"));
    let again = TenantKey::new(floe_catalog::TenantId::parse("t").unwrap(), "i2");
    assert_ne!(key(&t("t"), "a"), key(&again, "a"));
}

#[test]
fn bounded_by_max_ids_and_forget_undoes_admit() {
    let d = Dedup::new(1000, 3);
    let keys: Vec<_> = (0..5).map(|i| key(&t("t"), &i.to_string())).collect();
    assert_eq!(d.admit(&keys, 0), vec![true; 5]);
    assert_eq!(d.len(), 3);
    // The oldest two were forgotten.
    assert_eq!(d.admit(&[keys[0]], 1), vec![true]);
    assert_eq!(d.admit(&[keys[4]], 2), vec![false]);
    d.forget(&[keys[4]]);
    assert_eq!(d.admit(&[keys[4]], 3), vec![true]);
}

#[test]
fn admit_events_leaves_out_retries_of_client_ids_only() {
    let d = Dedup::new(10, 100);
    let ev = |id: &str, client_id: bool| StoredEvent {
        event_id: id.into(),
        kind: "k".into(),
        version: 1,
        ts: 0,
        received_at: 0,
        user_id: None,
        payload: "{}".into(),
        client_id,
    };
    let first = d.admit_events(
        &t("t"),
        vec![ev("a", true), ev("g", false), ev("a", true)],
        0,
    );
    let ids: Vec<_> = first.fresh.iter().map(|e| e.event_id.as_str()).collect();
    assert_eq!(ids, ["a", "g"]);
    assert_eq!((first.admitted.len(), first.duplicates), (1, 1));
    // A generated id is never a duplicate; a client id retried is.
    let again = d.admit_events(
        &t("t"),
        vec![ev("g", false), ev("a", true), ev("b", true)],
        1,
    );
    let ids: Vec<_> = again.fresh.iter().map(|e| e.event_id.as_str()).collect();
    assert_eq!(ids, ["g", "b"]);
    assert_eq!(again.duplicates, 1);
    d.forget(&again.admitted);
    assert_eq!(
        d.admit_events(&t("u"), vec![ev("b", true)], 2).duplicates,
        0
    );
    assert_eq!(
        d.admit_events(&t("t"), vec![ev("b", true)], 2).duplicates,
        0
    );
}

fn keys(n: usize, salt: &str) -> Vec<Key> {
    (0..n)
        .map(|i| key(&t("t"), &format!("{salt}-{i}")))
        .collect()
}

#[test]
fn the_cap_forgets_the_oldest_first_and_holds() {
    let d = Dedup::new(3600, 1000);
    let ks = keys(2000, "cap");
    for (i, chunk) in ks.chunks(100).enumerate() {
        d.admit(chunk, i as i64);
    }
    assert!(d.len() <= 1000, "{}", d.len());
    // The newest ids are remembered, the oldest are not (forgotten a generation at a time).
    let newest = d.admit(&ks[1010..], 100);
    assert!(newest.iter().all(|new| !new), "a recent id was forgotten");
    assert_eq!(d.admit(&ks[..100], 101), vec![true; 100]);
}

#[test]
fn an_id_costs_at_most_32_bytes_however_the_window_turns_over() {
    // 300,000 ids a window, arriving steadily for three windows.
    let window_secs = 300;
    let d = Dedup::new(window_secs, 20_000_000);
    let per_sec = 1000;
    let mut worst: f64 = 0.0;
    for sec in 0..(3 * window_secs as i64) {
        let ks = keys(per_sec, &format!("s{sec}"));
        let now = sec * 1_000_000;
        assert!(d.admit(&ks, now).iter().all(|new| *new));
        if sec > 10 {
            worst = worst.max(d.bytes() as f64 / d.len() as f64);
        }
    }
    assert!(worst <= 32.0, "{worst:.1} bytes per id");
    // What the window holds: the last 300 s (and at most 1/256 of it more).
    let live = d.len();
    assert!((300_000..=302_000).contains(&live), "{live}");
}

#[test]
fn a_stamp_of_a_generation_long_gone_never_reads_as_live() {
    let mut w = Window::new(1_000_000, 1_000_000);
    let a = key(&t("t"), "a");
    assert!(w.insert(a, 0));
    // More generations than stamps: one id per generation, time moving on.
    let step = w.generation_us;
    for i in 1..=(STAMPS as i64 + 10) {
        let at = i * step;
        w.insert(key(&t("t"), &i.to_string()), at);
        w.evict(at);
    }
    let end = (STAMPS as i64 + 11) * step;
    assert!(
        w.insert(a, end),
        "an id from {} generations ago was taken as seen",
        STAMPS + 10
    );
}

mod model {
    use std::collections::HashMap;

    use proptest::prelude::*;

    use super::super::*;
    use super::t;

    #[derive(Debug, Clone)]
    enum Op {
        Admit(u8),
        Forget(u8),
        Wait(u32),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (0u8..40).prop_map(Op::Admit),
            1 => (0u8..40).prop_map(Op::Forget),
            3 => (0u32..4_000_000).prop_map(Op::Wait),
        ]
    }

    proptest! {
        /// Against an exact model: a retry within the window is always caught; an id older
        /// than the window and one generation is always new again; forget undoes admit.
        #[test]
        fn retries_within_the_window_are_caught(ops in proptest::collection::vec(op(), 1..400)) {
            let window_us = 10_000_000i64;
            let generation_us = window_us / GENERATIONS;
            let d = Dedup::new(10, 1_000_000);
            let mut seen: HashMap<u8, i64> = HashMap::new();
            let mut now = 0i64;
            for op in ops {
                match op {
                    Op::Wait(us) => now += i64::from(us),
                    Op::Forget(id) => {
                        d.forget(&[key(&t("t"), &id.to_string())]);
                        seen.remove(&id);
                    }
                    Op::Admit(id) => {
                        let new = d.admit(&[key(&t("t"), &id.to_string())], now)[0];
                        match seen.get(&id) {
                            Some(&at) if now - at <= window_us => prop_assert!(!new, "{id} admitted twice"),
                            Some(&at) if now - at > window_us + generation_us => prop_assert!(new, "{id} kept too long"),
                            None => prop_assert!(new, "{id} never admitted, or forgotten"),
                            _ => {}
                        }
                        if new {
                            seen.insert(id, now);
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn absorb_keeps_both_windows_ids_and_names_those_found_in_both() {
    let k = |id: &str| key(&t("t"), id);
    // Admitted after a start (one of them a retry of an id stored before it)...
    let live = Dedup::new(10, 100);
    assert_eq!(
        live.admit(&[k("new"), k("stored-2")], 5_000_000),
        vec![true; 2]
    );
    // ...and the ids read from the tables meanwhile.
    let loaded = Dedup::new(10, 100);
    loaded.remember(
        [(k("stored-1"), 1_000_000), (k("stored-2"), 2_000_000)],
        5_000_000,
    );

    let conflicts = live.absorb(loaded, 6_000_000);
    assert_eq!(conflicts.len(), 1);
    assert!(conflicts.contains(k("stored-2")));
    assert!(!conflicts.contains(k("new")) && !conflicts.contains(k("stored-1")));
    assert_eq!(live.len(), 3);
    assert_eq!(
        live.admit(
            &[k("new"), k("stored-1"), k("stored-2"), k("other")],
            7_000_000
        ),
        vec![false, false, false, true]
    );
    // Ids moved in keep their time: gone once the window has passed since they were admitted.
    assert_eq!(live.admit(&[k("new")], 16_000_001), vec![true]);
}
