//! What the de-duplication window costs: bytes per id and time per id, Floe's `Dedup` beside
//! the design it replaced (a `HashMap` of id to time plus a queue of arrivals) and a bare
//! `HashSet<u128>` (the least any exact set of 128-bit ids can hold in a std hash table), on
//! the same ids in the same run.
//!
//!     cargo run --release -p floe-ingest --example dedup_memory -- [--ids 20000000]
//!
//! Ids arrive in batches of 500 over one simulated day (the default window), so the window
//! fills to `--ids` without turning over. Each set is built in a process of its own, and its
//! bytes are what the process's resident memory grew by while it was built (allocator and
//! page overheads included).

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Instant;

use floe_catalog::{TenantId, TenantKey};
use floe_ingest::dedup::{self, Dedup, Key};

const BATCH: usize = 500;
const DAY_US: i64 = 86_400_000_000;

/// The design before: every id with its time, and the arrival order for eviction.
#[derive(Default)]
struct Before {
    seen: HashMap<Key, i64>,
    order: VecDeque<(Key, i64)>,
}

impl Before {
    fn admit(&mut self, keys: &[Key], now: i64) -> usize {
        let mut new = 0;
        for &k in keys {
            if let std::collections::hash_map::Entry::Vacant(e) = self.seen.entry(k) {
                e.insert(now);
                self.order.push_back((k, now));
                new += 1;
            }
        }
        new
    }
}

/// The process's resident memory (`/proc/self/statm`, pages of 4 KiB).
fn resident_bytes() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm");
    let pages: usize = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("resident pages");
    pages * 4096
}

fn run(name: &str, ids: &[Key], mut admit: impl FnMut(&[Key], i64) -> usize) {
    let before = resident_bytes();
    let started = Instant::now();
    let batches = ids.len().div_ceil(BATCH) as i64;
    let mut new = 0;
    for (i, batch) in ids.chunks(BATCH).enumerate() {
        new += admit(batch, i as i64 * DAY_US / batches);
    }
    let seconds = started.elapsed().as_secs_f64();
    assert_eq!(new, ids.len(), "{name}: every id is new once");
    // Every id again: all retries.
    let again = Instant::now();
    let mut dup = 0;
    for batch in ids.chunks(BATCH) {
        dup += batch.len() - admit(batch, DAY_US - 1);
    }
    assert_eq!(dup, ids.len(), "{name}: every retry is caught");
    let lookup = again.elapsed().as_secs_f64();
    let bytes = resident_bytes().saturating_sub(before);
    let per_id = bytes as f64 / ids.len() as f64;
    println!(
        "| {name} | {per_id:.1} | {:.0} | {:.0} | {:.2} |",
        seconds * 1e9 / ids.len() as f64,
        lookup * 1e9 / ids.len() as f64,
        bytes as f64 / 1e9,
    );
}

fn main() {
    let mut n: usize = 20_000_000;
    let mut design = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--ids" => n = args.next().and_then(|v| v.parse().ok()).expect("--ids N"),
            "--design" => design = args.next(),
            other => panic!("unknown argument {other}"),
        }
    }
    let Some(design) = design else {
        println!(
            "{n} ids, batches of {BATCH}, one day of arrivals; each set in a process of its own\n"
        );
        println!(
            "| set | bytes per id | ns per new id | ns per retry | GB |\n|---|---:|---:|---:|---:|"
        );
        let me = std::env::current_exe().expect("the example's path");
        let mut per_id = HashMap::new();
        let mut notes = String::new();
        for design in ["floe", "before", "hashset"] {
            let out = std::process::Command::new(&me)
                .args(["--ids", &n.to_string(), "--design", design])
                .output()
                .expect("running a design");
            assert!(
                out.status.success(),
                "{design}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let text = String::from_utf8_lossy(&out.stdout).to_string();
            let (row, note) = text.split_once('\n').unwrap_or((&text, ""));
            println!("{row}");
            notes.push_str(note);
            let bytes: f64 = row
                .split('|')
                .nth(2)
                .and_then(|b| b.trim().parse().ok())
                .unwrap_or_else(|| panic!("{design}: no bytes per id in {row:?}"));
            per_id.insert(design, bytes);
        }
        println!(
            "\nFloe against the design before: {:.2}x the bytes; against a bare HashSet<u128>: {:.2}x",
            per_id["floe"] / per_id["before"],
            per_id["floe"] / per_id["hashset"]
        );
        print!("{notes}");
        return;
    };
    let tenant = TenantKey::new(TenantId::parse("bench").expect("a tenant id"), "i1");
    let ids: Vec<Key> = (0..n)
        .map(|i| dedup::key(&tenant, &format!("evt-{i}")))
        .collect();
    match design.as_str() {
        "floe" => {
            let d = Dedup::new(86_400, n);
            run(
                "Floe `Dedup` (96-bit prints, generations)",
                &ids,
                |b, now| d.admit(b, now).iter().filter(|x| **x).count(),
            );
            println!(
                "Floe's table itself holds {:.1} bytes per id (`Dedup::bytes`); the rest of its \
                 resident growth is memory the allocator kept from the tables it outgrew.",
                d.bytes() as f64 / d.len() as f64
            );
        }
        "before" => {
            let mut d = Before::default();
            run(
                "before: HashMap of id to time + arrival queue",
                &ids,
                |b, now| d.admit(b, now),
            );
        }
        "hashset" => {
            let mut s: HashSet<Key> = HashSet::new();
            run("bare HashSet<u128>", &ids, |b, _| {
                b.iter().filter(|k| s.insert(**k)).count()
            });
        }
        other => panic!("unknown design {other}"),
    }
}
