//! The rows of the built-in projections, computed from the days kept ([`super::day`]):
//! - `daily_active_users`: per day with events, its distinct users and those of the 7 and 28
//!   days ending on it;
//! - `revenue_by_day`: per day and `PurchaseMade` currency, the sum of the amounts and the
//!   orders;
//! - `top_pages`: per day and `PageViewed` page, the views and distinct visitors.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, Date32Array, Decimal128Array, Int64Array, RecordBatch, StringArray,
};
use datafusion::arrow::datatypes::SchemaRef;
use floe_catalog::projection::{DAILY_ACTIVE_USERS, REVENUE_BY_DAY, TOP_PAGES};

use super::day::{Day, Hashes};
use crate::{Error, Result};

/// The trailing windows of `daily_active_users`, in days (the day itself included).
pub const WINDOWS: [i32; 2] = [7, 28];

/// A built-in projection, as computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Computed {
    DailyActiveUsers,
    RevenueByDay,
    TopPages,
}

impl Computed {
    pub fn of(name: &str) -> Option<Computed> {
        match name {
            DAILY_ACTIVE_USERS => Some(Computed::DailyActiveUsers),
            REVENUE_BY_DAY => Some(Computed::RevenueByDay),
            TOP_PAGES => Some(Computed::TopPages),
            _ => None,
        }
    }

    /// How many days after a changed day its rows can change (a window reaches forward).
    pub fn reach(self) -> i32 {
        match self {
            Computed::DailyActiveUsers => WINDOWS[1] - 1,
            _ => 0,
        }
    }

    /// How many days before a row's day it is computed from.
    pub fn looks_back(self) -> i32 {
        self.reach()
    }

    /// The rows of the days `changed`, day by day, with `schema`.
    pub fn rows(
        self,
        days: &BTreeMap<i32, Day>,
        changed: &BTreeSet<i32>,
        schema: SchemaRef,
    ) -> Result<RecordBatch> {
        let columns = match self {
            Computed::DailyActiveUsers => dau(days, changed),
            Computed::RevenueByDay => revenue(days, changed)?,
            Computed::TopPages => pages(days, changed),
        };
        RecordBatch::try_new(schema, columns)
            .map_err(|e| Error::Invalid(format!("rows of a projection: {e}")))
    }
}

fn longs(values: Vec<i64>) -> ArrayRef {
    Arc::new(Int64Array::from(values))
}

fn dau(days: &BTreeMap<i32, Day>, changed: &BTreeSet<i32>) -> Vec<ArrayRef> {
    let (mut day, mut users, mut d7, mut d28) = (vec![], vec![], vec![], vec![]);
    for d in changed {
        if days.get(d).is_none_or(|x| x.events == 0) {
            continue;
        }
        let [one, seven, twenty_eight] = windows(days, *d);
        day.push(*d);
        users.push(one);
        d7.push(seven);
        d28.push(twenty_eight);
    }
    vec![
        Arc::new(Date32Array::from(day)),
        longs(users),
        longs(d7),
        longs(d28),
    ]
}

/// Distinct users of the day, of the 7 days and of the 28 days ending on it.
pub fn windows(days: &BTreeMap<i32, Day>, day: i32) -> [i64; 3] {
    let mut seen: Hashes<u128> = Hashes::default();
    let mut out = [0; 3];
    // From the day backwards: each window is what has been seen when its first day is passed.
    for back in 0..WINDOWS[1] {
        if let Some(d) = days.get(&(day - back)) {
            seen.extend(d.users.iter().copied());
        }
        let width = back + 1;
        let slot = match width {
            1 => Some(0),
            w if w == WINDOWS[0] => Some(1),
            w if w == WINDOWS[1] => Some(2),
            _ => None,
        };
        if let Some(slot) = slot {
            out[slot] = seen.len() as i64;
        }
    }
    out
}

fn revenue(days: &BTreeMap<i32, Day>, changed: &BTreeSet<i32>) -> Result<Vec<ArrayRef>> {
    let (mut day, mut currency, mut revenue, mut orders) = (vec![], vec![], vec![], vec![]);
    for d in changed {
        let Some(x) = days.get(d) else { continue };
        let mut by: Vec<_> = x.revenue.iter().collect();
        by.sort_by(|a, b| a.0.cmp(b.0));
        for (c, m) in by {
            day.push(*d);
            currency.push(c.clone());
            revenue.push((m.priced > 0).then_some(m.cents));
            orders.push(m.orders as i64);
        }
    }
    let revenue = Decimal128Array::from(revenue)
        .with_precision_and_scale(38, 2)
        .map_err(|e| Error::Invalid(format!("revenue: {e}")))?;
    Ok(vec![
        Arc::new(Date32Array::from(day)),
        Arc::new(StringArray::from(currency)),
        Arc::new(revenue),
        longs(orders),
    ])
}

fn pages(days: &BTreeMap<i32, Day>, changed: &BTreeSet<i32>) -> Vec<ArrayRef> {
    let (mut day, mut page, mut views, mut visitors) = (vec![], vec![], vec![], vec![]);
    for d in changed {
        let Some(x) = days.get(d) else { continue };
        // Most viewed first, then by page.
        let mut by: Vec<_> = x.pages.iter().collect();
        by.sort_by(|a, b| b.1.views.cmp(&a.1.views).then_with(|| a.0.cmp(b.0)));
        for (p, v) in by {
            day.push(*d);
            page.push(p.clone());
            views.push(v.views as i64);
            visitors.push(v.visitors.len() as i64);
        }
    }
    vec![
        Arc::new(Date32Array::from(day)),
        Arc::new(StringArray::from(page)),
        longs(views),
        longs(visitors),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::projection::day::user_hash;

    fn days(spec: &[(i32, &[&str])]) -> BTreeMap<i32, Day> {
        spec.iter()
            .map(|(d, users)| {
                let mut day = Day::default();
                day.events = users.len() as u64;
                day.users = users.iter().map(|u| user_hash(u)).collect();
                (*d, day)
            })
            .collect()
    }

    #[test]
    fn windows_count_each_user_once_over_the_day_and_the_days_before_it() {
        let d = days(&[
            (100, &["a", "b"]),
            (94, &["b", "c"]), // 7 days back from 100: inside the 7-day window
            (93, &["d"]),      // 8 days back: only in the 28-day window
            (73, &["e"]),      // 28 days back: inside
            (72, &["f"]),      // 29 days back: outside
            (101, &["z"]),     // after: never counted for 100
        ]);
        assert_eq!(windows(&d, 100), [2, 3, 5]);
        // A day without events of its own still has its windows, but no row.
        assert_eq!(windows(&d, 95), [0, 3, 5]);
        let changed: BTreeSet<i32> = [95, 100].into();
        let rows = dau(&d, &changed);
        assert_eq!(rows[0].len(), 1);
    }
}
