//! De-duplication of `(tenant incarnation, event_id)` within a window.
//!
//! A producer-supplied `event_id` is remembered (as a 96-bit fingerprint of the tenant id, its
//! incarnation and the id: a tenant created again under an old id starts with an empty window)
//! for at least `window` after it was accepted, up to `max_ids` ids per process (oldest
//! forgotten first). A retry inside that window is acknowledged but not stored again. On start
//! the set is rebuilt from the write-ahead log at once and from the tables (ids received within
//! the window) in the background, so the guarantee holds across restarts: requests admitted
//! while the tables are read are checked against them before their commit ([`Dedup::absorb`]).
//!
//! The set costs at most 28 bytes per id (see [`Window`]): 20 million ids, the default cap,
//! fit in 560 MB.

use std::collections::{HashSet, VecDeque};
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

/// Ids found twice by [`Dedup::absorb`].
#[derive(Debug, Default)]
pub struct Conflicts(HashSet<Print>);

impl Conflicts {
    pub fn contains(&self, k: Key) -> bool {
        self.0.contains(&print(k))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
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
    inner: Mutex<Window>,
}

impl Dedup {
    pub fn new(window_secs: u64, max_ids: usize) -> Dedup {
        Dedup {
            inner: Mutex::new(Window::new(
                (window_secs as i64).saturating_mul(1_000_000),
                max_ids.max(1),
            )),
        }
    }

    /// For each key, in order: `true` if it is new (and now remembered), `false` if it was
    /// seen within the window (including earlier in the same slice).
    pub fn admit(&self, keys: &[Key], now_us: i64) -> Vec<bool> {
        let mut w = self.lock();
        w.evict(now_us);
        w.warm(keys);
        let verdicts = keys.iter().map(|&k| w.insert(k, now_us)).collect();
        w.evict(now_us);
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
        let mut w = self.lock();
        let horizon = now_us - w.window_us;
        let mut keys: Vec<(Key, i64)> = keys
            .into_iter()
            .filter(|&(_, at)| at >= horizon)
            .map(|(k, at)| (k, at.min(now_us)))
            .collect();
        // In time order, so that each id lands in the generation of its time.
        keys.sort_unstable_by_key(|&(_, at)| at);
        for (k, at) in keys {
            w.insert(k, at);
        }
        w.evict(now_us);
    }

    /// Forgets keys admitted by a request that then failed, so that its retry is stored.
    pub fn forget(&self, keys: &[Key]) {
        let mut w = self.lock();
        for &k in keys {
            w.remove(k);
        }
    }

    /// Makes `loaded` (the ids read from the tables on start) the window, moving into it
    /// every id this one holds (ids replayed from the log, and those admitted while `loaded`
    /// was read), oldest generation first. Returns the moved ids `loaded` already held:
    /// requests admitted meanwhile that retried events stored before the restart.
    pub fn absorb(&self, loaded: Dedup, now_us: i64) -> Conflicts {
        let mut base = loaded.inner.into_inner().unwrap_or_else(|p| p.into_inner());
        let mut w = self.lock();
        let mut ids: Vec<(usize, Print)> = w
            .slots
            .iter()
            .filter_map(|&Slot { hi, lo, stamp }| Some((w.age(stamp)?, Print { hi, lo })))
            .collect();
        ids.sort_unstable_by_key(|&(age, _)| std::cmp::Reverse(age));
        let newest = w.generations.len().saturating_sub(1);
        let mut conflicts = HashSet::new();
        for (age, p) in ids {
            let at = w.generations[newest - age].newest_us;
            if !base.insert_print(p, at) {
                conflicts.insert(p);
            }
        }
        base.evict(now_us);
        *w = base;
        Conflicts(conflicts)
    }

    pub fn len(&self) -> usize {
        self.lock().live
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes the set holds.
    pub fn bytes(&self) -> usize {
        self.lock().bytes()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Window> {
        // The set holds plain data; a panic elsewhere cannot leave it inconsistent.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Generations an id's stamp can name: stamps count modulo this, and `DEAD` is never one.
const STAMPS: u32 = u16::MAX as u32;
/// The stamp of a forgotten id's slot.
const DEAD: u16 = u16::MAX;
/// Generations a window is cut into (by time), and a cap into (by count).
const GENERATIONS: i64 = 256;
/// Generations opened before a rebuild clears old stamps (well under `STAMPS`, so that a stamp
/// of a generation long gone never reads as a live one).
const REBUILD_EVERY: u32 = 60_000;
const MIN_SLOTS: usize = 1024;

/// The ids of a window: an open-addressing table of 96-bit fingerprints (linear probing), each
/// slot stamped with the generation it was admitted in.
///
/// Ids are not timed one by one: they are admitted into generations, each one 1/256 of the
/// window long and holding at most 1/256 of `max_ids`, and a generation is forgotten whole,
/// once its newest id is older than the window (so an id is kept for at least the window, up
/// to 1/256 of it longer) or the ids after it reach `max_ids`. A slot whose stamp names no live
/// generation is free for reuse; a rebuild (when 80 % of the slots are taken, or fewer than
/// 1/8 hold live ids) keeps the live ones at half the slots. A slot is 14 bytes (64 + 32 bits
/// of fingerprint, 16 of stamp), so an id costs 28 bytes after a rebuild and less as the table
/// fills. With 96 bits, two distinct ids of a full 20-million window share a fingerprint with
/// odds of about 1 in 10^14.
struct Window {
    window_us: i64,
    max_ids: usize,
    /// A generation is closed once it spans this long...
    generation_us: i64,
    /// ...or holds this many ids.
    generation_ids: usize,
    slots: Vec<Slot>,
    /// Slots not empty (live ids, and ids forgotten or of forgotten generations).
    taken: usize,
    /// Live ids.
    live: usize,
    /// Live generations, oldest first.
    generations: VecDeque<Generation>,
    /// The stamp of the next generation opened.
    next_stamp: u16,
    opened_since_rebuild: u32,
}

struct Generation {
    stamp: u16,
    first_us: i64,
    newest_us: i64,
    ids: usize,
}

/// One slot of the table: a fingerprint and its generation's stamp, side by side so that a
/// probe reads one place in memory (packed: 14 bytes, not 16).
#[derive(Clone, Copy)]
#[repr(C, packed)]
struct Slot {
    hi: u64,
    lo: u32,
    stamp: u16,
}

const _: () = assert!(std::mem::size_of::<Slot>() == 14);

/// An empty slot.
const EMPTY: Slot = Slot {
    hi: 0,
    lo: 0,
    stamp: DEAD,
};

/// A slot's content: the fingerprint, never (0, 0) (the empty slot).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Print {
    hi: u64,
    lo: u32,
}

fn print(k: Key) -> Print {
    let (hi, lo) = ((k >> 64) as u64, k as u32);
    if hi == 0 && lo == 0 {
        Print { hi: 0, lo: 1 }
    } else {
        Print { hi, lo }
    }
}

/// Where a lookup ended.
enum Found {
    /// The live slot holding the print.
    Live(usize),
    /// Not there: the slot to put it in (a reusable one on its probe path, else the empty one
    /// that ended it), and whether that slot is empty.
    Absent { slot: usize, empty: bool },
}

impl Window {
    fn new(window_us: i64, max_ids: usize) -> Window {
        Window {
            window_us,
            max_ids,
            generation_us: (window_us / GENERATIONS).max(1),
            generation_ids: (max_ids / GENERATIONS as usize).max(1),
            slots: vec![EMPTY; MIN_SLOTS],
            taken: 0,
            live: 0,
            generations: VecDeque::new(),
            next_stamp: 0,
            opened_since_rebuild: 0,
        }
    }

    fn bytes(&self) -> usize {
        self.slots.len() * std::mem::size_of::<Slot>()
            + self.generations.len() * std::mem::size_of::<Generation>()
    }

    /// Generations from the stamp's to the newest one (`None`: no live generation has it).
    fn age(&self, stamp: u16) -> Option<usize> {
        let newest = self.generations.back()?.stamp;
        if stamp == DEAD {
            return None;
        }
        let age = (u32::from(newest) + STAMPS - u32::from(stamp)) % STAMPS;
        ((age as usize) < self.generations.len()).then_some(age as usize)
    }

    /// The slot a print's probe starts at: its top bits (it is a hash: uniform), scaled to the
    /// table.
    fn first_slot(&self, p: Print) -> usize {
        ((u128::from(p.hi) * self.slots.len() as u128) >> 64) as usize
    }

    /// Reads the first slot of each key's probe, one load not waiting for the one before, so
    /// that the inserts which follow find them in the cache. A table of millions of ids is
    /// larger than the cache, and each probe would otherwise wait for memory in turn.
    fn warm(&self, keys: &[Key]) {
        let mut any = 0u64;
        for &k in keys {
            any ^= self.slots[self.first_slot(print(k))].hi;
        }
        std::hint::black_box(any);
    }

    fn find(&self, p: Print) -> Found {
        let n = self.slots.len();
        let mut i = self.first_slot(p);
        let mut reuse = None;
        loop {
            let Slot { hi, lo, stamp } = self.slots[i];
            if hi == 0 && lo == 0 {
                return match reuse {
                    Some(slot) => Found::Absent { slot, empty: false },
                    None => Found::Absent {
                        slot: i,
                        empty: true,
                    },
                };
            }
            if self.age(stamp).is_some() {
                if hi == p.hi && lo == p.lo {
                    return Found::Live(i);
                }
            } else if reuse.is_none() {
                reuse = Some(i);
            }
            i += 1;
            if i == n {
                i = 0;
            }
        }
    }

    /// Admits `k` at `at_us`: `true` if it was not live (and now is).
    fn insert(&mut self, k: Key, at_us: i64) -> bool {
        self.insert_print(print(k), at_us)
    }

    fn insert_print(&mut self, p: Print, at_us: i64) -> bool {
        let (slot, empty) = match self.find(p) {
            Found::Live(_) => return false,
            Found::Absent { slot, empty } => (slot, empty),
        };
        let stamp = self.current(at_us);
        self.slots[slot] = Slot {
            hi: p.hi,
            lo: p.lo,
            stamp,
        };
        self.live += 1;
        if empty {
            self.taken += 1;
        }
        if let Some(g) = self.generations.back_mut() {
            g.ids += 1;
            g.newest_us = g.newest_us.max(at_us);
        }
        if self.taken * 5 > self.slots.len() * 4 || self.opened_since_rebuild >= REBUILD_EVERY {
            self.rebuild();
        }
        true
    }

    fn remove(&mut self, k: Key) {
        if let Found::Live(i) = self.find(print(k)) {
            let age = self.age(self.slots[i].stamp).unwrap_or_default();
            let index = self.generations.len() - 1 - age;
            self.generations[index].ids -= 1;
            self.live -= 1;
            self.slots[i].stamp = DEAD;
        }
    }

    /// The stamp of the generation an id admitted at `at_us` goes to, opening one if the
    /// newest is full or past its span (no slot moves). (An id older than the newest generation's first, as
    /// ids found on start can be, goes to the newest: it is kept longer, never shorter.)
    fn current(&mut self, at_us: i64) -> u16 {
        match self.generations.back() {
            Some(g) if g.ids < self.generation_ids && at_us < g.first_us + self.generation_us => {
                return g.stamp;
            }
            _ => {}
        }
        let first_us = self
            .generations
            .back()
            .map_or(at_us, |g| g.first_us.max(at_us));
        let stamp = self.next_stamp;
        self.next_stamp = ((u32::from(stamp) + 1) % STAMPS) as u16;
        self.generations.push_back(Generation {
            stamp,
            first_us,
            newest_us: at_us,
            ids: 0,
        });
        // The caller rebuilds once `REBUILD_EVERY` are opened (after the id it admits).
        self.opened_since_rebuild += 1;
        stamp
    }

    /// Forgets the generations whose ids are all older than the window, then the oldest ones
    /// while more than `max_ids` are live.
    fn evict(&mut self, now_us: i64) {
        let horizon = now_us - self.window_us;
        while let Some(g) = self.generations.front() {
            if g.newest_us >= horizon && self.live <= self.max_ids {
                break;
            }
            self.live -= g.ids;
            self.generations.pop_front();
        }
        if self.slots.len() > MIN_SLOTS && self.live * 8 < self.slots.len() {
            self.rebuild();
        }
    }

    /// Moves the live ids to a table twice their number (at least `MIN_SLOTS`).
    fn rebuild(&mut self) {
        let n = (self.live * 2).max(MIN_SLOTS);
        let old = std::mem::replace(&mut self.slots, vec![EMPTY; n]);
        self.taken = 0;
        self.opened_since_rebuild = 0;
        for s in old {
            if self.age(s.stamp).is_none() {
                continue;
            }
            if let Found::Absent { slot, .. } = self.find(Print { hi: s.hi, lo: s.lo }) {
                self.slots[slot] = s;
                self.taken += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests;
