//! Reading the log back on start, and telling a torn tail from damage.
//!
//! A record is acknowledged only after the group that holds it is written and fsynced, so a
//! crash can leave one thing behind: the last group of the last segment, incomplete (the file
//! ends inside a record, or the record's bytes were never written and read as zeros). That is
//! a torn tail: nobody was told those events were stored, and it is cut off.
//!
//! Anything else that does not read back is damage: a checksum that fails in a complete
//! record, a record followed by readable ones, a bad record in an earlier segment. Damage may
//! hold acknowledged events, so the start stops with an error that names the segment, the
//! offset and the readable records that follow. `floe wal check` reports the same without
//! starting, and `floe serve --accept-wal-loss SEGMENT@OFFSET` starts anyway: the unreadable
//! span is replaced by a `lost` record (keeping sequence numbers contiguous and never reused),
//! the records after it are kept, and the loss is written to the audit log.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use floe_catalog::TenantId;

use super::record::{self, Body, HEADER, MIN_RECORD};
use super::{io_err, list_segments};
use crate::event::StoredEvent;
use crate::{Error, Result};

/// A run of zero bytes this long reaching the end of the file is space that was allocated
/// but never written (no record ends in more than a few zero bytes).
const ZERO_TAIL: usize = 16;

/// A record read back from the log.
#[derive(Debug, Clone, PartialEq)]
pub struct RecoveredRecord {
    pub lsn: u64,
    pub tenant: TenantId,
    /// `None` for records written before incarnations were recorded.
    pub incarnation: Option<String>,
    pub events: Vec<StoredEvent>,
}

/// Unreadable bytes in the log that are not a torn tail.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Damage {
    /// The segment's file name.
    pub segment: String,
    pub offset: u64,
    /// What did not read back (checksum mismatch, partial record, …).
    pub why: String,
    /// Where readable records resume in the segment (its length if none do).
    pub resumes_at: u64,
    /// Readable records after the damage, in this segment and the later ones.
    pub following: usize,
    /// The sequence numbers that cannot be read: `lost_from..=lost_through` (empty when
    /// `lost_through < lost_from`: bytes between two records, no record lost).
    pub lost_from: u64,
    pub lost_through: u64,
    /// `false`: nothing readable follows in the last segment, so `lost_through` is an upper
    /// bound (the span could hold at most that many records).
    pub exact: bool,
}

impl Damage {
    /// How `--accept-wal-loss` names this damage.
    pub fn token(&self) -> String {
        format!("{}@{}", self.segment, self.offset)
    }

    /// How many records are lost (at most, when not exact).
    pub fn lost(&self) -> u64 {
        (self.lost_through + 1).saturating_sub(self.lost_from)
    }
}

impl std::fmt::Display for Damage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "segment {} is damaged at offset {} ({}): {} readable records follow it; {}{} \
             records ({}..={}) cannot be read",
            self.segment,
            self.offset,
            self.why,
            self.following,
            if self.exact { "" } else { "up to " },
            self.lost(),
            self.lost_from,
            self.lost_through
        )
    }
}

/// What one segment holds.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SegmentReport {
    pub segment: String,
    pub first_lsn: u64,
    pub records: usize,
    pub bytes: u64,
    /// Where a torn tail starts (last segment only), and its length.
    pub torn_tail: Option<(u64, u64)>,
    pub damage: Vec<Damage>,
}

/// The whole log as read.
#[derive(Debug, Clone)]
pub struct Scan {
    pub segments: Vec<SegmentReport>,
    pub records: Vec<RecoveredRecord>,
    /// The sequence number the next append gets.
    pub next_lsn: u64,
}

impl Scan {
    pub fn damage(&self) -> impl Iterator<Item = &Damage> {
        self.segments.iter().flat_map(|s| s.damage.iter())
    }
}

/// Reads every segment of the log in `dir`, changing nothing.
pub fn scan(dir: &Path) -> Result<Scan> {
    let segments = list_segments(dir)?;
    let mut out = Scan {
        segments: Vec::new(),
        records: Vec::new(),
        next_lsn: 1,
    };
    // (index in `out.segments`, index in that segment's damage, records read before it)
    let mut damage_at: Vec<(usize, usize, usize)> = Vec::new();
    for (i, (first, path)) in segments.iter().enumerate() {
        let last = i + 1 == segments.len();
        if i > 0 && *first != out.next_lsn {
            return Err(Error::Wal {
                message: format!(
                    "{}: expected a segment starting at {}, found {first}",
                    path.display(),
                    out.next_lsn
                ),
            });
        }
        let data = fs::read(path).map_err(io_err(path))?;
        let mut report = SegmentReport {
            segment: file_name(path),
            first_lsn: *first,
            records: 0,
            bytes: data.len() as u64,
            torn_tail: None,
            damage: Vec::new(),
        };
        let mut next = *first;
        let mut at = 0;
        while at < data.len() {
            let decoded = record::decode(&data[at..]);
            // A readable record numbered past the expected one: the records in between are
            // missing, and reading resumes right here.
            let search_from = match &decoded {
                Ok(d) if d.lsn > next => at,
                _ => at + 1,
            };
            let why = match decoded {
                Ok(d) if d.lsn == next => {
                    at += d.len;
                    report.records += 1;
                    next = match d.body {
                        Body::Events {
                            tenant,
                            incarnation,
                            events,
                        } => {
                            out.records.push(RecoveredRecord {
                                lsn: d.lsn,
                                tenant,
                                incarnation,
                                events,
                            });
                            d.lsn + 1
                        }
                        Body::Lost { through, .. } => through.max(d.lsn) + 1,
                    };
                    continue;
                }
                Ok(d) => format!("record {} where {next} was expected", d.lsn),
                Err(why) => why,
            };
            let damage = match resume_point(&data, search_from, next) {
                Some((resumes_at, lsn)) => {
                    let d = Damage {
                        segment: report.segment.clone(),
                        offset: at as u64,
                        why,
                        resumes_at: resumes_at as u64,
                        following: 0,
                        lost_from: next,
                        lost_through: lsn - 1,
                        exact: true,
                    };
                    (next, at) = (lsn, resumes_at);
                    d
                }
                None if last && torn(&data[at..]) => {
                    report.torn_tail = Some((at as u64, (data.len() - at) as u64));
                    break;
                }
                None => {
                    let (through, exact) = match segments.get(i + 1) {
                        Some((following_first, _)) => (following_first - 1, true),
                        None => (next + ((data.len() - at) / MIN_RECORD) as u64, false),
                    };
                    let d = Damage {
                        segment: report.segment.clone(),
                        offset: at as u64,
                        why,
                        resumes_at: data.len() as u64,
                        following: 0,
                        lost_from: next,
                        lost_through: through,
                        exact,
                    };
                    (next, at) = (through.max(next - 1) + 1, data.len());
                    d
                }
            };
            damage_at.push((out.segments.len(), report.damage.len(), out.records.len()));
            report.damage.push(damage);
        }
        out.next_lsn = next;
        out.segments.push(report);
    }
    let total = out.records.len();
    for (s, d, before) in damage_at {
        out.segments[s].damage[d].following = total - before;
    }
    Ok(out)
}

/// The first offset at or after `from` where a readable record with a sequence number of at
/// least `min_lsn` starts, and that number.
fn resume_point(data: &[u8], from: usize, min_lsn: u64) -> Option<(usize, u64)> {
    // No file holds more records than bytes: a bound that rules out most false starts
    // before any checksum is computed.
    let max_lsn = min_lsn.saturating_add(data.len() as u64);
    (from..data.len().saturating_sub(HEADER - 1)).find_map(|r| {
        let (len, _, lsn) = record::header(&data[r..])?;
        if lsn < min_lsn || lsn > max_lsn || HEADER + len > data.len() - r {
            return None;
        }
        let d = record::decode(&data[r..]).ok()?;
        Some((r, d.lsn))
    })
}

/// Whether the unreadable record at the start of `rest` (nothing readable after it, last
/// segment) is a torn write: the file ends inside it, or its end was never written.
fn torn(rest: &[u8]) -> bool {
    let Some((len, _, _)) = record::header(rest) else {
        return true;
    };
    if HEADER + len > rest.len() {
        // The file ends inside the record, unless its body shows it complete and only the
        // length field damaged.
        return record::end_by_content(rest).is_none();
    }
    let written = rest.iter().rposition(|b| *b != 0).map_or(0, |p| p + 1);
    rest.len() - written >= ZERO_TAIL && written < HEADER + len
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The start refused: the log is damaged and the damage was not accepted.
#[derive(Debug)]
pub struct Refusal {
    pub dir: PathBuf,
    pub damage: Vec<Damage>,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "the write-ahead log in {} is damaged; acknowledged events may be in the \
             unreadable part, so nothing was started:",
            self.dir.display()
        )?;
        for d in &self.damage {
            writeln!(f, "  {d}")?;
        }
        let tokens: Vec<String> = self
            .damage
            .iter()
            .map(|d| format!("--accept-wal-loss {}", d.token()))
            .collect();
        write!(
            f,
            "Keep a copy of the folder. `floe wal check` reports the log; to start anyway, \
             losing the unreadable records and keeping the readable ones after them (recorded \
             in the audit log): floe serve {}",
            tokens.join(" ")
        )
    }
}

/// Cuts torn tails and repairs accepted damage (every damage must be accepted by its
/// token), then reads the log again. Returns the final scan and the damage repaired.
pub fn recover(dir: &Path, accept: &[String]) -> Result<(Scan, Vec<Damage>)> {
    let mut repaired = Vec::new();
    // Each round repairs every damage found; one more round reads the result.
    for _ in 0..3 {
        let scan = scan(dir)?;
        let damage: Vec<Damage> = scan.damage().cloned().collect();
        if damage.is_empty() {
            for s in &scan.segments {
                if let Some((offset, bytes)) = s.torn_tail {
                    tracing::warn!(
                        segment = %s.segment, offset, bytes,
                        "cutting a torn write-ahead-log tail (never acknowledged)"
                    );
                    cut(&dir.join(&s.segment), offset)?;
                }
            }
            return Ok((scan, repaired));
        }
        let refused: Vec<Damage> = damage
            .iter()
            .filter(|d| !accept.contains(&d.token()))
            .cloned()
            .collect();
        if !refused.is_empty() {
            return Err(Error::WalDamaged(Box::new(Refusal {
                dir: dir.to_path_buf(),
                damage: refused,
            })));
        }
        for s in scan.segments.iter().filter(|s| !s.damage.is_empty()) {
            repair(dir, &s.segment, &s.damage)?;
        }
        repaired.extend(damage);
    }
    Err(Error::Wal {
        message: format!(
            "the write-ahead log in {} still reads as damaged after repair",
            dir.display()
        ),
    })
}

/// Rewrites a segment with each damaged span replaced by a `lost` record.
fn repair(dir: &Path, segment: &str, damage: &[Damage]) -> Result<()> {
    let path = dir.join(segment);
    let data = fs::read(&path).map_err(io_err(&path))?;
    let mut out = Vec::with_capacity(data.len());
    let mut kept_from = 0usize;
    for d in damage {
        out.extend_from_slice(&data[kept_from..d.offset as usize]);
        if d.lost_through >= d.lost_from {
            let note = format!("lost: {} ({})", d.token(), d.why);
            record::encode_lost(&mut out, d.lost_from, d.lost_through, &note);
        }
        kept_from = d.resumes_at as usize;
        tracing::error!(damage = %d, "accepted write-ahead-log loss (--accept-wal-loss)");
    }
    out.extend_from_slice(&data[kept_from..]);
    let tmp = dir.join(format!("{segment}.repair"));
    let mut f = File::create(&tmp).map_err(io_err(&tmp))?;
    f.write_all(&out).map_err(io_err(&tmp))?;
    f.sync_all().map_err(io_err(&tmp))?;
    fs::rename(&tmp, &path).map_err(io_err(&path))?;
    floe_catalog::storage::sync_dir(dir).map_err(io_err(dir))
}

fn cut(path: &Path, len: u64) -> Result<()> {
    let f = fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io_err(path))?;
    f.set_len(len).map_err(io_err(path))?;
    f.sync_all().map_err(io_err(path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::record::tests::{ev, key};

    /// Writes segments of `records` records each (three events per record).
    fn write_log(dir: &Path, segments: &[usize]) -> Vec<Vec<u8>> {
        let mut lsn = 1;
        let mut out = Vec::new();
        for &n in segments {
            let first = lsn;
            let mut buf = Vec::new();
            for _ in 0..n {
                let events: Vec<_> = (0..3).map(|i| ev(lsn as usize * 10 + i)).collect();
                record::encode_events(&mut buf, lsn, &key(), &events);
                lsn += 1;
            }
            fs::write(dir.join(format!("{first:020}.wal")), &buf).unwrap();
            out.push(buf);
        }
        out
    }

    fn segment(dir: &Path, i: usize) -> PathBuf {
        list_segments(dir).unwrap()[i].1.clone()
    }

    fn flip(path: &Path, at: usize) {
        let mut data = fs::read(path).unwrap();
        data[at] ^= 0x5a;
        fs::write(path, data).unwrap();
    }

    #[test]
    fn a_partial_last_record_is_a_torn_tail_and_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        write_log(dir.path(), &[5]);
        let path = segment(dir.path(), 0);
        let len = fs::metadata(&path).unwrap().len();
        fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(len - 7)
            .unwrap();
        let (scan, repaired) = recover(dir.path(), &[]).unwrap();
        assert!(repaired.is_empty());
        assert_eq!(scan.records.len(), 4);
        assert_eq!(scan.next_lsn, 5);
        assert!(fs::metadata(&path).unwrap().len() < len - 7);
        // Allocated but never written: zeros to the end of the file are a torn tail too.
        let mut data = fs::read(&path).unwrap();
        let mut rec = Vec::new();
        record::encode_events(&mut rec, 5, &key(), &[ev(1)]);
        data.extend(std::iter::repeat_n(0u8, rec.len() + 100));
        let at = data.len() - rec.len() - 100;
        data[at..at + HEADER].copy_from_slice(&rec[..HEADER]);
        fs::write(&path, data).unwrap();
        let (scan, _) = recover(dir.path(), &[]).unwrap();
        assert_eq!(scan.records.len(), 4);
    }

    #[test]
    fn a_flipped_byte_with_records_after_it_is_damage_that_stops_the_start() {
        let dir = tempfile::tempdir().unwrap();
        let segs = write_log(dir.path(), &[10]);
        let path = segment(dir.path(), 0);
        let third = segs[0].len() / 2;
        flip(&path, third);
        let err = recover(dir.path(), &[]).unwrap_err();
        let Error::WalDamaged(refusal) = &err else {
            panic!("{err}")
        };
        let d = &refusal.damage[0];
        assert!(d.exact && d.lost() == 1, "{d}");
        assert!(d.following >= 4, "{d}");
        let text = err.to_string();
        assert!(text.contains(&d.segment) && text.contains(&format!("offset {}", d.offset)));
        assert!(
            text.contains(&format!("--accept-wal-loss {}", d.token())),
            "{text}"
        );
        // Nothing was changed by the refusal.
        assert!(fs::read(&path).unwrap() != segs[0]);
        assert_eq!(fs::read(&path).unwrap().len(), segs[0].len());

        // Accepted: the one unreadable record is lost, the rest kept, numbers never reused.
        let (scan, repaired) = recover(dir.path(), &[d.token()]).unwrap();
        assert_eq!(repaired.len(), 1);
        assert_eq!(scan.records.len(), 9);
        assert_eq!(scan.next_lsn, 11);
        assert!(scan.records.iter().all(|r| r.lsn != d.lost_from));
        // The repaired log reads cleanly from now on, without the flag.
        let (again, repaired) = recover(dir.path(), &[]).unwrap();
        assert!(repaired.is_empty());
        assert_eq!(again.records, scan.records);
    }

    #[test]
    fn a_damaged_last_record_is_damage_not_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let segs = write_log(dir.path(), &[3]);
        let path = segment(dir.path(), 0);
        // A byte in the body of the complete last record.
        flip(&path, segs[0].len() - 5);
        let Error::WalDamaged(r) = recover(dir.path(), &[]).unwrap_err() else {
            panic!()
        };
        assert_eq!(r.damage[0].following, 0);
        // Its length field: the file seems to end inside it, but the body says otherwise.
        let dir = tempfile::tempdir().unwrap();
        let segs = write_log(dir.path(), &[3]);
        let path = segment(dir.path(), 0);
        let last = segs[0].len() - {
            let mut one = Vec::new();
            record::encode_events(
                &mut one,
                3,
                &key(),
                &(0..3).map(|i| ev(30 + i)).collect::<Vec<_>>(),
            );
            one.len()
        };
        flip(&path, last + 1);
        assert!(matches!(
            recover(dir.path(), &[]).unwrap_err(),
            Error::WalDamaged(_)
        ));
    }

    #[test]
    fn damage_in_an_earlier_segment_names_the_records_after_it() {
        let dir = tempfile::tempdir().unwrap();
        write_log(dir.path(), &[4, 4, 4]);
        let path = segment(dir.path(), 1);
        // The first record's header of the middle segment: nothing in it reads.
        flip(&path, 2);
        let scan = scan(dir.path()).unwrap();
        let d: Vec<&Damage> = scan.damage().collect();
        assert_eq!(d.len(), 1);
        assert_eq!((d[0].lost_from, d[0].lost_through), (5, 5));
        assert_eq!(d[0].following, 7);
        // Accepting a token that names other damage changes nothing.
        assert!(recover(dir.path(), &["00000000000000000005.wal@99".into()]).is_err());
        let (scan, _) = recover(dir.path(), &[d[0].token()]).unwrap();
        assert_eq!(scan.records.len(), 11);
        assert_eq!(scan.next_lsn, 13);
    }

    #[test]
    fn unreadable_end_of_the_last_segment_reserves_the_numbers_it_may_have_used() {
        let dir = tempfile::tempdir().unwrap();
        let segs = write_log(dir.path(), &[6]);
        let path = segment(dir.path(), 0);
        // A byte in each of the last two records (complete, so not a torn write).
        let size = segs[0].len() / 6;
        flip(&path, size * 4 + HEADER + 3);
        flip(&path, size * 5 + HEADER + 3);
        let scan = scan(dir.path()).unwrap();
        let d = scan.damage().next().unwrap().clone();
        assert!(!d.exact && d.lost_from == 5 && d.lost_through >= 6, "{d}");
        let (scan, _) = recover(dir.path(), &[d.token()]).unwrap();
        assert_eq!(scan.records.len(), 4);
        // Numbers the unreadable records may have had are never handed out again (a table
        // may hold them as committed positions).
        assert!(scan.next_lsn > d.lost_through, "{}", scan.next_lsn);
    }

    #[test]
    fn arbitrary_bytes_read_as_an_error_or_records_never_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let segs = write_log(dir.path(), &[4]);
        let path = segment(dir.path(), 0);
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for round in 0..200 {
            let mut data = segs[0].clone();
            for _ in 0..(round % 5 + 1) {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let at = (seed % data.len() as u64) as usize;
                data[at] = (seed >> 32) as u8;
            }
            if round % 3 == 0 {
                data.truncate((seed % data.len() as u64) as usize);
            }
            fs::write(&path, &data).unwrap();
            if let Ok(scan) = scan(dir.path()) {
                assert!(scan.records.len() <= 4);
            }
        }
    }
}
