//! A cache bounded by bytes and shared by tenants: past its bytes, the least recently used
//! entries of the owners (tenants) holding more than an equal share go first, then, if that is
//! not enough, the least recently used of any. One tenant reading a great deal thus pushes out
//! its own entries, not those of a tenant holding less than its share. The manifests of every
//! tenant's tables (`manifests.rs`) and the queries' Parquet footers (`floe_query`) are kept
//! this way.

use std::collections::HashMap;
use std::sync::Arc;

/// Entries by key, each with its owner and its estimated bytes.
#[derive(Debug)]
pub struct FairLru<V> {
    entries: HashMap<String, Entry<V>>,
    /// Bytes held by each owner that holds any.
    owners: HashMap<Arc<str>, usize>,
    bytes: usize,
    max_bytes: usize,
    tick: u64,
}

#[derive(Debug)]
struct Entry<V> {
    value: V,
    bytes: usize,
    used: u64,
    owner: Arc<str>,
}

impl<V: Clone> FairLru<V> {
    pub fn new(max_bytes: usize) -> FairLru<V> {
        FairLru {
            entries: HashMap::new(),
            owners: HashMap::new(),
            bytes: 0,
            max_bytes,
            tick: 0,
        }
    }

    /// The entry at `key`, now the most recently used.
    pub fn get(&mut self, key: &str) -> Option<V> {
        self.tick += 1;
        let tick = self.tick;
        let entry = self.entries.get_mut(key)?;
        entry.used = tick;
        Some(entry.value.clone())
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.entries.contains_key(key)
    }

    /// Keeps `value` (of `bytes`) at `key` for `owner`, making room first; returns the entry
    /// it replaces. An entry larger than the whole cache is not kept (and drops nothing).
    pub fn insert(&mut self, key: &str, owner: &str, value: V, bytes: usize) -> Option<V> {
        if bytes > self.max_bytes {
            return None;
        }
        let old = self.remove(key);
        let owner: Arc<str> = self
            .owners
            .get_key_value(owner)
            .map_or_else(|| Arc::from(owner), |(k, _)| k.clone());
        if self.bytes.saturating_add(bytes) > self.max_bytes {
            let goal = (self.max_bytes - self.max_bytes / 8).saturating_sub(bytes);
            self.shrink_to(goal, Some((&owner, bytes)));
        }
        self.tick += 1;
        self.bytes += bytes;
        *self.owners.entry(owner.clone()).or_default() += bytes;
        let entry = Entry {
            value,
            bytes,
            used: self.tick,
            owner,
        };
        self.entries.insert(key.to_string(), entry);
        old
    }

    pub fn remove(&mut self, key: &str) -> Option<V> {
        let entry = self.entries.remove(key)?;
        self.bytes -= entry.bytes;
        if let Some(held) = self.owners.get_mut(&entry.owner) {
            *held -= entry.bytes;
            if *held == 0 {
                self.owners.remove(&entry.owner);
            }
        }
        Some(entry.value)
    }

    /// Drops entries until at most `goal` bytes are held: the least recently used first, of
    /// the owners holding more than an equal share of what is kept (`goal`, and the bytes
    /// `incoming`, an owner, is about to add: counted with its own); then, should rounding
    /// leave more, the least recently used of any.
    fn shrink_to(&mut self, goal: usize, incoming: Option<(&Arc<str>, usize)>) {
        let mut by_age: Vec<(u64, String)> = self
            .entries
            .iter()
            .map(|(k, e)| (e.used, k.clone()))
            .collect();
        by_age.sort_unstable();
        let newcomer = incoming.is_some_and(|(o, _)| !self.owners.contains_key(o));
        let adding = incoming.map_or(0, |(_, bytes)| bytes);
        let share = (goal + adding) / (self.owners.len() + usize::from(newcomer)).max(1);
        for fair in [true, false] {
            for (_, key) in &by_age {
                if self.bytes <= goal {
                    return;
                }
                let Some(entry) = self.entries.get(key) else {
                    continue;
                };
                let adding = match incoming {
                    Some((owner, bytes)) if *owner == entry.owner => bytes,
                    _ => 0,
                };
                let held = self.owners.get(&entry.owner).copied().unwrap_or(0) + adding;
                if fair && held <= share {
                    continue;
                }
                self.remove(key);
            }
        }
    }

    /// Bytes held now.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn max_bytes(&self) -> usize {
        self.max_bytes
    }

    /// Bounds the cache anew, dropping what no longer fits.
    pub fn set_max_bytes(&mut self, max_bytes: usize) {
        self.max_bytes = max_bytes;
        if self.bytes > max_bytes {
            self.shrink_to(max_bytes, None);
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn clear(&mut self) {
        self.entries.clear();
        self.owners.clear();
        self.bytes = 0;
    }

    /// Every entry, with its key and bytes.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &V, usize)> {
        self.entries
            .iter()
            .map(|(k, e)| (k.as_str(), &e.value, e.bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_recently_used_are_kept_within_the_bytes() {
        let mut cache = FairLru::new(250);
        cache.insert("a", "t", 'a', 100);
        cache.insert("b", "t", 'b', 100);
        assert!(cache.get("a").is_some()); // b is now the least recently used
        cache.insert("c", "t", 'c', 100);
        assert!(cache.bytes() <= 250, "{} bytes held", cache.bytes());
        assert!(cache.get("a").is_some() && cache.get("b").is_none());
        assert!(cache.get("c").is_some());
        // An entry larger than the whole cache is not kept (and drops nothing).
        cache.insert("huge", "t", 'h', 1000);
        assert!(cache.get("huge").is_none());
        assert_eq!(cache.bytes(), 200);
        // A smaller bound drops the least recently used.
        cache.set_max_bytes(150);
        assert!(cache.get("a").is_none() && cache.get("c").is_some());
    }

    /// One tenant reading many entries pushes out its own least recently used, not those of a
    /// tenant holding less than an equal share; a tenant above its share loses its oldest first.
    #[test]
    fn a_tenant_reading_much_leaves_the_others_theirs() {
        let mut cache = FairLru::new(450);
        cache.insert("b0", "tenant-b", (), 100);
        for i in 0..12 {
            cache.insert(&format!("a{i}"), "tenant-a", (), 100);
            assert!(cache.bytes() <= 450, "{} bytes held", cache.bytes());
        }
        assert!(
            cache.get("b0").is_some(),
            "b's one entry, under its share, stays"
        );
        assert!(cache.get("a11").is_some() && cache.get("a0").is_none());

        // b now reads three more: a, above its share, gives way first, until b holds its share.
        for i in 1..4 {
            cache.insert(&format!("b{i}"), "tenant-b", (), 100);
            assert!(cache.bytes() <= 450, "{} bytes held", cache.bytes());
        }
        let mut held = |prefix: &str| {
            (0..12)
                .filter(|i| cache.get(&format!("{prefix}{i}")).is_some())
                .count()
        };
        let (b, a) = (held("b"), held("a"));
        assert!(b >= 2 && a <= 1, "b {b} a {a}");
    }

    /// Two tenants near their shares: the one adding gives way as much as the other, and the
    /// other is not taken below an equal share of what is kept.
    #[test]
    fn a_tenant_under_its_share_keeps_it_when_another_adds() {
        let mut cache = FairLru::new(1000);
        for i in 0..12 {
            cache.insert(&format!("a{i}"), "tenant-a", (), 40);
        }
        for i in 0..13 {
            cache.insert(&format!("b{i}"), "tenant-b", (), 40);
        }
        assert_eq!(cache.bytes(), 1000);
        cache.insert("b-new", "tenant-b", (), 100);
        let held = |owner: &str| {
            cache
                .iter()
                .filter(|(k, _, _)| k.starts_with(owner))
                .map(|(_, _, bytes)| bytes)
                .sum::<usize>()
        };
        let (a, b) = (held("a"), held("b"));
        assert!(a + b <= 1000 - 1000 / 8, "a {a} b {b}");
        assert!(
            a >= (1000 - 1000 / 8) / 2 - 40,
            "a {a} b {b}: a kept its share"
        );
    }

    /// An entry put again replaces the old one, its bytes counted once.
    #[test]
    fn an_entry_put_again_is_counted_once() {
        let mut cache = FairLru::new(1000);
        cache.insert("k", "t", 1, 100);
        assert_eq!(cache.insert("k", "u", 2, 300), Some(1));
        assert_eq!((cache.bytes(), cache.len()), (300, 1));
        assert_eq!(cache.remove("k"), Some(2));
        assert_eq!(cache.bytes(), 0);
        assert!(cache.owners.is_empty());
    }
}
