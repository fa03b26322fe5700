//! `floe wal check`.

use anyhow::bail;
use floe_catalog::Config;

pub fn check(config: &Config) -> anyhow::Result<()> {
    let dir = config.wal_dir();
    if !dir.exists() {
        println!("{}: no write-ahead log", dir.display());
        return Ok(());
    }
    let (scan, in_use) = floe_ingest::wal::Wal::check(&dir)?;
    if in_use {
        println!(
            "{}: in use by a running process (its last record may be mid-write)",
            dir.display()
        );
    }
    for s in &scan.segments {
        println!(
            "{}\tfirst {}\t{} records\t{} bytes",
            s.segment, s.first_lsn, s.records, s.bytes
        );
        if let Some((offset, bytes)) = s.torn_tail {
            println!(
                "  torn tail at offset {offset} ({bytes} bytes, never acknowledged): cut on the next start"
            );
        }
        for d in &s.damage {
            println!("  DAMAGED: {d}");
        }
    }
    println!(
        "{} records readable; next sequence number {}",
        scan.records.len(),
        scan.next_lsn
    );
    let damage: Vec<String> = scan.damage().map(|d| d.token()).collect();
    if !damage.is_empty() {
        bail!(
            "the log is damaged: `floe serve` refuses to start; to start anyway, losing the \
             unreadable records: floe serve --accept-wal-loss {}",
            damage.join(" --accept-wal-loss ")
        );
    }
    Ok(())
}
