//! De-duplication of `(tenant incarnation, event_id)` within a window.
//!
//! A producer-supplied `event_id` is remembered (as a 128-bit hash of the tenant id, its
//! incarnation and the id: a tenant created again under an old id starts with an empty window)
//! for `window` after it was
//! accepted, up to `max_ids` ids per process (oldest forgotten first). A retry inside that
//! window is acknowledged but not stored again. On start the set is rebuilt from the tables
//! (ids received within the window) and the write-ahead log, so the guarantee holds across
//! restarts.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use floe_catalog::TenantKey;
use xxhash_rust::xxh3::Xxh3;

use crate::event::StoredEvent;

/// Events split by [`Dedup::admit_events`].
pub struct Admission {
    /// The events to store, in their order.
    pub fresh: Vec<StoredEvent>,
    /// Keys remembered for them: [`Dedup::forget`] them if storing fails.
    pub admitted: Vec<Key>,
    /// Retries left out.
    pub duplicates: usize,
}

/// Hash of a `(tenant incarnation, event_id)` pair.
pub type Key = u128;

pub fn key(tenant: &TenantKey, event_id: &str) -> Key {
    let mut h = Xxh3::new();
    // 0xff never occurs in UTF-8: the parts cannot run into each other.
    h.update(tenant.id().as_str().as_bytes());
    h.update(&[0xff]);
    h.update(tenant.incarnation().as_bytes());
    h.update(&[0xff]);
    h.update(event_id.as_bytes());
    h.digest128()
}

pub struct Dedup {
    window_us: i64,
    max_ids: usize,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Key to the time (µs) it was accepted.
    seen: HashMap<Key, i64>,
    /// Insertion order, for eviction.
    order: VecDeque<(Key, i64)>,
}

impl Dedup {
    pub fn new(window_secs: u64, max_ids: usize) -> Dedup {
        Dedup {
            window_us: (window_secs as i64).saturating_mul(1_000_000),
            max_ids: max_ids.max(1),
            inner: Mutex::new(Inner::default()),
        }
    }

    /// For each key, in order: `true` if it is new (and now remembered), `false` if it was
    /// seen within the window (including earlier in the same slice).
    pub fn admit(&self, keys: &[Key], now_us: i64) -> Vec<bool> {
        let mut inner = self.lock();
        self.evict(&mut inner, now_us);
        let verdicts = keys
            .iter()
            .map(|k| {
                if inner.seen.contains_key(k) {
                    false
                } else {
                    inner.seen.insert(*k, now_us);
                    inner.order.push_back((*k, now_us));
                    true
                }
            })
            .collect();
        self.evict(&mut inner, now_us);
        verdicts
    }

    /// Leaves out the events of `tenant` whose producer-supplied `event_id` was seen within
    /// the window (generated ids are always fresh) and remembers the others.
    pub fn admit_events(
        &self,
        tenant: &TenantKey,
        events: Vec<StoredEvent>,
        now_us: i64,
    ) -> Admission {
        let keys: Vec<Key> = events
            .iter()
            .filter(|e| e.client_id)
            .map(|e| key(tenant, &e.event_id))
            .collect();
        let mut verdicts = self.admit(&keys, now_us).into_iter().zip(keys);
        let mut out = Admission {
            fresh: Vec::with_capacity(events.len()),
            admitted: Vec::new(),
            duplicates: 0,
        };
        for e in events {
            if e.client_id {
                // One verdict per key, in the events' order.
                match verdicts.next() {
                    Some((true, k)) => out.admitted.push(k),
                    _ => {
                        out.duplicates += 1;
                        continue;
                    }
                }
            }
            out.fresh.push(e);
        }
        out
    }

    /// Remembers keys accepted earlier (at `at_us`), as found on start.
    pub fn remember(&self, keys: impl IntoIterator<Item = (Key, i64)>, now_us: i64) {
        let mut inner = self.lock();
        for (k, at) in keys {
            if at + self.window_us < now_us {
                continue;
            }
            if inner.seen.insert(k, at).is_none() {
                inner.order.push_back((k, at));
            }
        }
        self.evict(&mut inner, now_us);
    }

    /// Forgets keys admitted by a request that then failed, so that its retry is stored.
    pub fn forget(&self, keys: &[Key]) {
        let mut inner = self.lock();
        for k in keys {
            inner.seen.remove(k);
        }
    }

    pub fn len(&self) -> usize {
        self.lock().seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // The set holds plain data; a panic elsewhere cannot leave it inconsistent.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn evict(&self, inner: &mut Inner, now_us: i64) {
        let horizon = now_us - self.window_us;
        while let Some(&(k, at)) = inner.order.front() {
            if at >= horizon && inner.order.len() <= self.max_ids {
                break;
            }
            inner.order.pop_front();
            // Only drop the entry this order slot stands for (it may have been re-admitted).
            if inner.seen.get(&k) == Some(&at) {
                inner.seen.remove(&k);
            }
        }
    }
}

#[cfg(test)]
mod tests {
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
}
