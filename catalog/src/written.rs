//! Rows this process has just written to data files, kept in memory for a reader in the same
//! process that would otherwise read those files straight back: the projection refresher
//! reads every file appended to `events`, moments after ingest wrote it.
//!
//! A reader says which columns it wants ([`Written::want`]); until one does, nothing is kept.
//! A writer offers the rows of each file it wrote ([`Written::offer`]), and only the wanted
//! columns are kept (the arrays are shared with the batch just written, not copied). A reader
//! takes a file's rows once ([`Written::take`]): the rows of a file are the rows read from it,
//! so taking them only saves opening, decompressing and decoding it. What is kept is bounded
//! by `projection.written_rows_bytes`, shared fairly between tenants: past it, the rows go
//! that the tenant keeping the most bytes was offered first, so that one tenant's burst of
//! writes lets go of its own rows, not of the other tenants' (whose refreshes would then read
//! their files back). Rows nobody took within [`MAX_AGE`] (their commit failed, another
//! process refreshes the tenant, or no projection needed them) go at the next offer or take
//! after it. A file whose rows are not here is read from storage as before.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use arrow_array::RecordBatch;

/// Rows not taken within this long are dropped by the next offer or take (a refresh takes
/// them well within a second).
pub const MAX_AGE: Duration = Duration::from_secs(30);

/// Rows just written, by data file location; see the module comment.
#[derive(Debug)]
pub struct Written {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// The columns kept (empty: no reader, nothing kept).
    columns: Vec<String>,
    budget: u64,
    bytes: u64,
    /// What each tenant keeping rows keeps.
    by_tenant: HashMap<String, TenantKept>,
    kept: HashMap<String, Kept>,
    /// Offers in the order they came, by number and location (some taken or replaced since:
    /// a place counts only while its location keeps the rows of that offer).
    order: VecDeque<(u64, String)>,
    /// The number of the next offer.
    next: u64,
}

#[derive(Debug, Default)]
struct TenantKept {
    bytes: u64,
    /// Its offers in the order they came, as [`State::order`] (the places that no longer count
    /// at its front are let go of whenever one of its rows is).
    order: VecDeque<(u64, String)>,
}

#[derive(Debug)]
struct Kept {
    tenant: String,
    rows: RecordBatch,
    bytes: u64,
    at: Instant,
    /// The number of the offer these rows came with.
    offer: u64,
}

impl Written {
    /// Keeps at most `budget` bytes of rows.
    pub fn new(budget: u64) -> Written {
        Written {
            state: Mutex::new(State {
                budget,
                ..State::default()
            }),
        }
    }

    /// From now on, keeps these columns of the rows offered (a column a batch lacks is left
    /// out of its rows).
    pub fn want(&self, columns: &[&str]) {
        let mut state = self.lock();
        for c in columns {
            if !state.columns.iter().any(|k| k == c) {
                state.columns.push(c.to_string());
            }
        }
    }

    /// The rows of `tenant` written to the data file at `location` (as its manifest entry
    /// names it).
    pub fn offer(&self, tenant: &str, location: &str, rows: &RecordBatch) {
        self.offer_at(tenant, location, rows, Instant::now());
    }

    fn offer_at(&self, tenant: &str, location: &str, rows: &RecordBatch, now: Instant) {
        // Rows let go of are freed after the lock is released (declared before the guard, so
        // dropped after it).
        let mut dropped = Vec::new();
        let mut state = self.lock();
        if state.columns.is_empty() {
            return;
        }
        let indices: Vec<usize> = state
            .columns
            .iter()
            .filter_map(|c| rows.schema().index_of(c).ok())
            .collect();
        if indices.is_empty() {
            return;
        }
        let Ok(rows) = rows.project(&indices) else {
            return;
        };
        let bytes = rows.get_array_memory_size() as u64;
        state.drop_old(now, &mut dropped);
        // A location offered again (not done today: every file name is new) replaces its rows
        // and takes a new place in the order (the old one no longer counts).
        dropped.extend(state.remove(location));
        if bytes > state.budget {
            return;
        }
        while state.bytes + bytes > state.budget {
            // The offering tenant's new rows count towards who keeps the most.
            if !state.drop_from_largest(tenant, bytes, &mut dropped) {
                break;
            }
        }
        let offer = state.next;
        state.next += 1;
        state.kept.insert(
            location.to_string(),
            Kept {
                tenant: tenant.to_string(),
                rows,
                bytes,
                at: now,
                offer,
            },
        );
        state.bytes += bytes;
        let mine = state.by_tenant.entry(tenant.to_string()).or_default();
        mine.bytes += bytes;
        mine.order.push_back((offer, location.to_string()));
        state.order.push_back((offer, location.to_string()));
    }

    /// The rows of the data file at `location`, if kept (once: they are no longer kept after).
    pub fn take(&self, location: &str) -> Option<RecordBatch> {
        self.take_at(location, Instant::now())
    }

    fn take_at(&self, location: &str, now: Instant) -> Option<RecordBatch> {
        let mut dropped = Vec::new();
        let mut state = self.lock();
        state.drop_old(now, &mut dropped);
        state.remove(location).map(|kept| kept.rows)
    }

    /// Bytes of rows kept now.
    pub fn bytes(&self) -> u64 {
        self.lock().bytes
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state stays consistent between statements: a panic elsewhere leaves it usable.
        match self.state.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        }
    }
}

impl State {
    /// Stops keeping the rows of `location`, if kept.
    fn remove(&mut self, location: &str) -> Option<Kept> {
        let kept = self.kept.remove(location)?;
        self.bytes -= kept.bytes;
        if let Some(mine) = self.by_tenant.get_mut(&kept.tenant) {
            mine.bytes -= kept.bytes;
            if mine.bytes == 0 {
                self.by_tenant.remove(&kept.tenant);
            } else {
                // Rows are taken about in the order they came: what no longer counts at the
                // front goes now, so that the tenant's order stays as long as what it keeps.
                while let Some((offer, location)) = mine.order.front() {
                    if self.kept.get(location).is_some_and(|k| k.offer == *offer) {
                        break;
                    }
                    mine.order.pop_front();
                }
            }
        }
        Some(kept)
    }

    /// Lets go of the rows offered first (into `dropped`) of the tenant that keeps the most
    /// bytes, counting `adding` more for `offering`; false when no rows are kept.
    fn drop_from_largest(&mut self, offering: &str, adding: u64, dropped: &mut Vec<Kept>) -> bool {
        let largest = self
            .by_tenant
            .iter()
            .map(|(t, k)| (t, k.bytes + if t == offering { adding } else { 0 }))
            .max_by_key(|(_, b)| *b)
            .map(|(t, _)| t.clone());
        // Its front counts (see `remove`).
        let first = largest
            .and_then(|t| self.by_tenant.get(&t))
            .and_then(|k| k.order.front())
            .map(|(_, location)| location.clone());
        match first.and_then(|location| self.remove(&location)) {
            Some(kept) => {
                dropped.push(kept);
                true
            }
            None => false,
        }
    }

    /// Lets go of rows kept longer than [`MAX_AGE`] (into `dropped`), and of the places in the
    /// order that no longer count at its front.
    fn drop_old(&mut self, now: Instant, dropped: &mut Vec<Kept>) {
        while let Some((offer, location)) = self.order.front() {
            match self.kept.get(location) {
                Some(kept) if kept.offer == *offer && now.duration_since(kept.at) < MAX_AGE => {
                    return;
                }
                Some(kept) if kept.offer == *offer => {
                    let location = location.clone();
                    self.order.pop_front();
                    dropped.extend(self.remove(&location));
                }
                // Taken, let go of, or offered again since (a later place).
                _ => {
                    self.order.pop_front();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow_array::{ArrayRef, Int64Array, StringArray};

    use super::*;

    /// `n` rows of an `event_id` and a `ts` column.
    fn rows(n: usize) -> RecordBatch {
        let ids: ArrayRef = Arc::new(StringArray::from_iter_values(
            (0..n).map(|i| format!("event-{i}")),
        ));
        let ts: ArrayRef = Arc::new(Int64Array::from_iter_values(0..n as i64));
        RecordBatch::try_from_iter([("event_id", ids), ("ts", ts)]).unwrap()
    }

    #[test]
    fn the_wanted_columns_of_a_file_are_kept_until_taken_once() {
        let written = Written::new(1 << 20);
        written.offer("t", "s3://b/a.parquet", &rows(10));
        assert!(
            written.take("s3://b/a.parquet").is_none(),
            "nobody wants rows yet: none kept"
        );
        assert_eq!(written.bytes(), 0);

        written.want(&["event_id", "payload"]);
        written.offer("t", "s3://b/a.parquet", &rows(10));
        assert!(written.bytes() > 0);
        let taken = written.take("s3://b/a.parquet").unwrap();
        assert_eq!(taken.num_rows(), 10);
        let names: Vec<_> = taken
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        assert_eq!(names, ["event_id"], "only the wanted columns the rows have");
        assert!(written.take("s3://b/a.parquet").is_none(), "taken once");
        assert!(written.take("s3://b/other.parquet").is_none());
        assert_eq!(written.bytes(), 0);
    }

    #[test]
    fn past_the_budget_the_rows_offered_first_go_first() {
        let each = rows(1000).project(&[0]).unwrap().get_array_memory_size() as u64;
        let written = Written::new(each * 2 + each / 2);
        written.want(&["event_id"]);
        for f in ["1", "2", "3"] {
            written.offer("t", f, &rows(1000));
            assert!(written.bytes() <= each * 2 + each / 2);
        }
        assert!(written.take("1").is_none(), "the first went to make room");
        assert!(written.take("2").is_some() && written.take("3").is_some());

        written.offer("t", "big", &rows(10_000));
        assert!(
            written.take("big").is_none(),
            "rows past the whole budget are not kept"
        );
        assert_eq!(written.bytes(), 0);
    }

    #[test]
    fn a_location_offered_again_takes_a_new_place_in_the_order() {
        let each = rows(1000).project(&[0]).unwrap().get_array_memory_size() as u64;
        let written = Written::new(each * 2 + each / 2);
        written.want(&["event_id"]);
        written.offer("t", "1", &rows(1000));
        written.offer("t", "2", &rows(1000));
        written.offer("t", "1", &rows(1000));
        assert_eq!(
            written.bytes(),
            each * 2,
            "the first rows of 1 were replaced"
        );
        written.offer("t", "3", &rows(1000));
        assert!(written.take("2").is_none(), "2 was offered first now");
        assert!(written.take("1").is_some() && written.take("3").is_some());
        assert_eq!(written.bytes(), 0);

        // Taken, then offered again: the place of the first offer does not count either.
        written.offer("t", "4", &rows(1000));
        written.offer("t", "5", &rows(1000));
        assert!(written.take("4").is_some());
        written.offer("t", "4", &rows(1000));
        written.offer("t", "6", &rows(1000));
        assert!(written.take("5").is_none(), "5 was offered first now");
        assert!(written.take("4").is_some() && written.take("6").is_some());
    }

    #[test]
    fn rows_nobody_took_go_after_the_longest_wait() {
        let written = Written::new(1 << 20);
        written.want(&["event_id"]);
        let start = Instant::now();
        written.offer_at("t", "old", &rows(10), start);
        written.offer_at("t", "taken", &rows(10), start + Duration::from_secs(1));
        written.offer_at("t", "young", &rows(10), start + MAX_AGE);
        assert!(written.take_at("taken", start + MAX_AGE).is_some());
        assert!(
            written.take_at("old", start + MAX_AGE).is_none(),
            "waited too long"
        );
        assert!(written.take_at("young", start + MAX_AGE).is_some());
        assert_eq!(written.bytes(), 0);
        assert!(written.lock().order.len() <= 1);
    }

    #[test]
    fn past_the_budget_the_tenant_keeping_the_most_lets_go_of_its_own_rows() {
        let each = rows(1000).project(&[0]).unwrap().get_array_memory_size() as u64;
        let written = Written::new(each * 4 + each / 2);
        written.want(&["event_id"]);
        // B's one file was offered first; A's burst fills the rest of the budget and more.
        written.offer("b", "b1", &rows(1000));
        for f in ["a1", "a2", "a3", "a4", "a5"] {
            written.offer("a", f, &rows(1000));
            assert!(written.bytes() <= each * 4 + each / 2);
        }
        // A let go of its own first rows, not of B's older ones.
        assert!(written.take("a1").is_none() && written.take("a2").is_none());
        assert!(written.take("b1").is_some(), "B's rows were kept");
        for f in ["a3", "a4", "a5"] {
            assert!(written.take(f).is_some());
        }
        assert_eq!(written.bytes(), 0);
        assert!(written.lock().by_tenant.is_empty());
    }

    #[test]
    fn the_rows_being_offered_count_towards_who_keeps_the_most() {
        let each = rows(1000).project(&[0]).unwrap().get_array_memory_size() as u64;
        let big = rows(2000).project(&[0]).unwrap().get_array_memory_size() as u64;
        let written = Written::new(3 * each + big - 1);
        written.want(&["event_id"]);
        // B keeps two files, A one; A offers one twice as large: A would then keep the most,
        // so its own file goes, not B's first.
        written.offer("b", "b1", &rows(1000));
        written.offer("b", "b2", &rows(1000));
        written.offer("a", "a1", &rows(1000));
        written.offer("a", "a2", &rows(2000));
        assert!(written.take("a1").is_none());
        for f in ["b1", "b2", "a2"] {
            assert!(written.take(f).is_some());
        }
        assert_eq!(written.bytes(), 0);
    }
}
