//! Amortised pruning of a map that grows with use (one entry per tenant, key or thread seen):
//! the entries that keep nothing are dropped once the map has twice as many as it had after
//! the last pruning, so that each insertion pays a constant share of the passes over it.

use std::collections::HashMap;
use std::hash::Hash;

/// When a map was last pruned (its size then).
#[derive(Debug, Default, Clone, Copy)]
pub struct Pruning {
    pruned_to: usize,
}

impl Pruning {
    /// Keeps the entries of `map` that `keep` says, if it has grown to twice its size after the
    /// last pruning, and to `2 * min` at least (a small map is never worth a pass).
    pub fn retain<K: Eq + Hash, V>(
        &mut self,
        map: &mut HashMap<K, V>,
        min: usize,
        keep: impl FnMut(&K, &mut V) -> bool,
    ) {
        if map.len() < 2 * self.pruned_to.max(min) {
            return;
        }
        map.retain(keep);
        self.pruned_to = map.len();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_map_is_pruned_when_it_has_doubled() {
        let mut pruning = Pruning::default();
        let mut map: HashMap<u32, bool> = (0..7).map(|i| (i, i < 3)).collect();
        // Under twice the minimum: left alone.
        pruning.retain(&mut map, 4, |_, keep| *keep);
        assert_eq!(map.len(), 7);
        map.insert(7, false);
        pruning.retain(&mut map, 4, |_, keep| *keep);
        assert_eq!(map.len(), 3);
        // Three kept: the next pass waits for eight entries (twice the minimum of four).
        map.extend((10..14).map(|i| (i, false)));
        pruning.retain(&mut map, 4, |_, keep| *keep);
        assert_eq!(map.len(), 7);
        map.insert(20, false);
        pruning.retain(&mut map, 4, |_, keep| *keep);
        assert_eq!(map.len(), 3);
    }
}
