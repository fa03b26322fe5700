//! The write-ahead log: where an event becomes durable before it is acknowledged.
//!
//! One log per process, in segment files named by their first sequence number (`lsn`). A single
//! writer thread drains every waiting append, writes them, calls `fsync` once, hands the records
//! to the batchers in `lsn` order, and only then acknowledges them (group commit). The record
//! format is in [`record`]; on open ([`recovery`]), a torn record at the end of the last
//! segment is cut off (it was never acknowledged), while damage anywhere else stops the start
//! unless an operator accepts the loss. Segments are deleted only when every record in them is
//! behind the committed positions of the tables.

use std::fs::{self, File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use floe_catalog::TenantKey;
use opentelemetry::trace::SpanContext;
use tokio::sync::{OwnedSemaphorePermit, mpsc, oneshot};

use crate::event::StoredEvent;
use crate::{Error, Result};

pub mod record;
pub mod recovery;

pub use recovery::{Damage, RecoveredRecord, Scan, SegmentReport};

/// A durable record: one request's accepted events for one tenant incarnation.
#[derive(Debug)]
pub struct Record {
    pub lsn: u64,
    pub tenant: TenantKey,
    pub events: Arc<Vec<StoredEvent>>,
    /// Buffer space held until the record is committed to its table.
    pub permit: Option<OwnedSemaphorePermit>,
    /// The span that appended it (its trace, when traces are on): the commit links to it.
    pub origin: Option<SpanContext>,
}

/// Receives each record after it is durable, in `lsn` order, before it is acknowledged.
pub type Sink = Box<dyn FnMut(Record) + Send>;

enum Command {
    Append(PendingAppend),
    /// Replies once every append queued before it is durable.
    Barrier {
        reply: oneshot::Sender<Result<u64>>,
    },
    /// Delete segments whose records all have `lsn < low_water`.
    Truncate {
        low_water: u64,
    },
}

/// Handle on the log's writer thread.
#[derive(Clone)]
pub struct Wal {
    tx: mpsc::Sender<Command>,
    id: String,
}

/// What [`Wal::open`] found on disk.
pub struct Recovered {
    /// Every record still in the log, in `lsn` order.
    pub records: Vec<RecoveredRecord>,
    /// The `lsn` the next append gets.
    pub next_lsn: u64,
    /// Bytes cut off a torn tail.
    pub truncated_bytes: u64,
    /// Damage an operator accepted (`--accept-wal-loss`), repaired by this open.
    pub accepted_loss: Vec<Damage>,
}

const MAX_GROUP: usize = 4096;

impl Wal {
    /// Identifies this log in table snapshot summaries (`floe.position.<id>`).
    pub fn source_id(&self) -> &str {
        &self.id
    }

    /// Reads the log in `dir` (creating it if needed), cutting a torn tail; damage stops it
    /// unless `accept` names it (`SEGMENT@OFFSET`, see [`Damage::token`]). Call
    /// [`Wal::start`] afterwards.
    pub fn open(dir: &Path, accept: &[String]) -> Result<(String, Recovered)> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let id = load_or_create_id(dir)?;
        // Only the process holding the lock may read or write the log (see `Wal::start`).
        check_unlocked(dir)?;
        let (scan, accepted_loss) = recovery::recover(dir, accept)?;
        let truncated_bytes = scan
            .segments
            .iter()
            .filter_map(|s| s.torn_tail.map(|(_, bytes)| bytes))
            .sum();
        Ok((
            id,
            Recovered {
                records: scan.records,
                next_lsn: scan.next_lsn,
                truncated_bytes,
                accepted_loss,
            },
        ))
    }

    /// Reads the log in `dir` and reports it, changing nothing (`floe wal check`). Also
    /// says whether a running process holds the log (its tail may then be mid-write).
    pub fn check(dir: &Path) -> Result<(Scan, bool)> {
        let in_use = check_unlocked(dir).is_err();
        Ok((recovery::scan(dir)?, in_use))
    }

    /// Starts the writer thread, appending after `next_lsn - 1`.
    pub fn start(
        dir: &Path,
        id: String,
        next_lsn: u64,
        segment_bytes: u64,
        sink: Sink,
    ) -> Result<Wal> {
        let (tx, rx) = mpsc::channel(MAX_GROUP);
        let lock = lock(dir)?;
        let mut writer = Writer::new(dir.to_path_buf(), next_lsn, segment_bytes, sink, lock)?;
        std::thread::Builder::new()
            .name("floe-wal".into())
            .spawn(move || writer.run(rx))
            .map_err(io_err(dir))?;
        Ok(Wal { tx, id })
    }

    /// Appends `events` for `tenant`; returns once they are fsynced and handed to the sink.
    pub async fn append(
        &self,
        tenant: TenantKey,
        events: Arc<Vec<StoredEvent>>,
        permit: Option<OwnedSemaphorePermit>,
    ) -> Result<u64> {
        self.enqueue(tenant, events, permit, None)
            .await?
            .await
            .map_err(|_| stopped())?
    }

    /// Queues an append and returns the receiver of its result: the log's order is the order
    /// of `enqueue` calls. `origin` is the span appending (see [`Record::origin`]).
    pub async fn enqueue(
        &self,
        tenant: TenantKey,
        events: Arc<Vec<StoredEvent>>,
        permit: Option<OwnedSemaphorePermit>,
        origin: Option<SpanContext>,
    ) -> Result<oneshot::Receiver<Result<u64>>> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Append(PendingAppend {
                tenant,
                events,
                permit,
                origin,
                reply,
            }))
            .await
            .map_err(|_| stopped())?;
        Ok(rx)
    }

    /// Queues a barrier: its receiver answers (with the last written `lsn`) once everything
    /// queued before it is durable.
    pub async fn enqueue_barrier(&self) -> Result<oneshot::Receiver<Result<u64>>> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Barrier { reply })
            .await
            .map_err(|_| stopped())?;
        Ok(rx)
    }

    /// Lets the log delete segments wholly below `low_water`.
    pub fn truncate(&self, low_water: u64) {
        // A full queue means the writer is busy; the next call will do it.
        let _ = self.tx.try_send(Command::Truncate { low_water });
    }
}

/// An append waiting in a group, and where to answer it.
struct PendingAppend {
    tenant: TenantKey,
    events: Arc<Vec<StoredEvent>>,
    permit: Option<OwnedSemaphorePermit>,
    origin: Option<SpanContext>,
    reply: oneshot::Sender<Result<u64>>,
}

struct Writer {
    dir: PathBuf,
    next_lsn: u64,
    segment_bytes: u64,
    /// Closed segments: (first lsn, path). The active one is `active`.
    closed: Vec<(u64, PathBuf)>,
    /// Bytes of the closed segments (with the active one's length: the log's depth).
    closed_bytes: u64,
    active: Option<(u64, PathBuf, File, u64)>,
    sink: Sink,
    failed: Option<String>,
    buf: Vec<u8>,
    /// Held for the writer's life: the exclusive lock on the log directory.
    _lock: File,
}

impl Writer {
    fn new(
        dir: PathBuf,
        next_lsn: u64,
        segment_bytes: u64,
        sink: Sink,
        lock: File,
    ) -> Result<Writer> {
        let mut closed = list_segments(&dir)?;
        let sizes: u64 = closed
            .iter()
            .map(|(_, p)| fs::metadata(p).map_or(0, |m| m.len()))
            .sum();
        // Keep appending to the last segment when there is room.
        let active = match closed.pop() {
            Some((first, path)) => {
                let mut f = OpenOptions::new()
                    .append(true)
                    .open(&path)
                    .map_err(io_err(&path))?;
                let len = f.seek(SeekFrom::End(0)).map_err(io_err(&path))?;
                Some((first, path, f, len))
            }
            None => None,
        };
        let active_len = active.as_ref().map_or(0, |a| a.3);
        let writer = Writer {
            dir,
            next_lsn,
            segment_bytes,
            closed,
            closed_bytes: sizes.saturating_sub(active_len),
            active,
            sink,
            failed: None,
            buf: Vec::with_capacity(1 << 20),
            _lock: lock,
        };
        writer.report_depth();
        Ok(writer)
    }

    /// Sets the depth gauge: bytes of the segments on disk.
    fn report_depth(&self) {
        let depth = self.closed_bytes + self.active.as_ref().map_or(0, |a| a.3);
        metrics::gauge!(floe_catalog::metrics::WAL_DEPTH_BYTES).set(depth as f64);
    }

    fn run(&mut self, mut rx: mpsc::Receiver<Command>) {
        let mut group = Vec::new();
        while let Some(cmd) = rx.blocking_recv() {
            group.push(cmd);
            while group.len() < MAX_GROUP {
                match rx.try_recv() {
                    Ok(c) => group.push(c),
                    Err(_) => break,
                }
            }
            let mut appends = Vec::new();
            let mut barriers = Vec::new();
            let mut low_water = None;
            for c in group.drain(..) {
                match c {
                    Command::Barrier { reply } => barriers.push(reply),
                    Command::Append(append) => appends.push(append),
                    Command::Truncate { low_water: l } => low_water = Some(l),
                }
            }
            // Deleting segments below the low-water mark is safe at any time; doing it first
            // means an append queued after a truncation is answered after it.
            if let Some(l) = low_water.take() {
                self.truncate(l);
            }
            if !appends.is_empty() {
                self.append_group(appends);
            }
            for reply in barriers {
                let _ = reply.send(match &self.failed {
                    Some(why) => Err(Error::Wal {
                        message: why.clone(),
                    }),
                    None => Ok(self.next_lsn - 1),
                });
            }
        }
    }

    fn append_group(&mut self, appends: Vec<PendingAppend>) {
        if let Some(why) = &self.failed {
            for PendingAppend { reply, .. } in appends {
                let _ = reply.send(Err(Error::Wal {
                    message: why.clone(),
                }));
            }
            return;
        }
        self.buf.clear();
        let first = self.next_lsn;
        for (i, append) in appends.iter().enumerate() {
            record::encode_events(
                &mut self.buf,
                first + i as u64,
                &append.tenant,
                &append.events,
            );
        }
        match self.write_durably(first) {
            Ok(()) => {
                self.next_lsn = first + appends.len() as u64;
                for (i, append) in appends.into_iter().enumerate() {
                    let PendingAppend {
                        tenant,
                        events,
                        permit,
                        origin,
                        reply,
                    } = append;
                    let lsn = first + i as u64;
                    (self.sink)(Record {
                        lsn,
                        tenant,
                        events,
                        permit,
                        origin,
                    });
                    let _ = reply.send(Ok(lsn));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "write-ahead log append failed");
                for PendingAppend { reply, .. } in appends {
                    let _ = reply.send(Err(Error::Wal {
                        message: format!("write-ahead log append failed: {e}"),
                    }));
                }
            }
        }
    }

    /// Writes `self.buf` (records from `first` on) and syncs it. On failure the segment is cut
    /// back to its previous length, so no half-written record stays behind a later one.
    fn write_durably(&mut self, first: u64) -> std::io::Result<()> {
        let needs_new = match &self.active {
            None => true,
            Some((.., len)) => *len > 0 && *len + self.buf.len() as u64 > self.segment_bytes,
        };
        if needs_new {
            let path = self.dir.join(format!("{first:020}.wal"));
            let file = OpenOptions::new()
                .create_new(true)
                .append(true)
                .open(&path)?;
            floe_catalog::storage::sync_dir(&self.dir)?;
            if let Some((f, p, _, len)) = self.active.take() {
                self.closed.push((f, p));
                self.closed_bytes += len;
            }
            self.active = Some((first, path, file, 0));
        }
        let Some((_, _, file, len)) = self.active.as_mut() else {
            return Err(std::io::Error::other("no active segment"));
        };
        let started = std::time::Instant::now();
        let result = file.write_all(&self.buf).and_then(|_| file.sync_data());
        metrics::histogram!(floe_catalog::metrics::WAL_FSYNC_SECONDS)
            .record(started.elapsed().as_secs_f64());
        match result {
            Ok(()) => {
                *len += self.buf.len() as u64;
                self.report_depth();
                Ok(())
            }
            Err(e) => {
                if let Err(cut) = file.set_len(*len).and_then(|_| file.sync_data()) {
                    self.failed = Some(format!(
                        "the write-ahead log could not be repaired after a failed write ({cut}); \
                         restart the process"
                    ));
                }
                Err(e)
            }
        }
    }

    fn truncate(&mut self, low_water: u64) {
        // Closed segment i holds lsns [first_i, first_{i+1}); the active one is never deleted.
        let active_first = self.active.as_ref().map(|a| a.0).unwrap_or(self.next_lsn);
        let mut keep = Vec::new();
        let closed = std::mem::take(&mut self.closed);
        for (i, (first, path)) in closed.iter().enumerate() {
            let end = closed.get(i + 1).map(|c| c.0).unwrap_or(active_first);
            if end <= low_water {
                let size = fs::metadata(path).map_or(0, |m| m.len());
                match fs::remove_file(path) {
                    Ok(()) => {
                        self.closed_bytes = self.closed_bytes.saturating_sub(size);
                        tracing::debug!(segment = %path.display(), "write-ahead log segment deleted")
                    }
                    Err(e) => {
                        tracing::warn!(segment = %path.display(), error = %e, "could not delete segment");
                        keep.push((*first, path.clone()));
                    }
                }
            } else {
                keep.push((*first, path.clone()));
            }
        }
        self.closed = keep;
        self.report_depth();
    }
}

fn stopped() -> Error {
    Error::Wal {
        message: "the write-ahead log has stopped".into(),
    }
}

pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Takes the exclusive lock on the log directory, held until the writer thread ends.
fn lock(dir: &Path) -> Result<File> {
    let path = dir.join("LOCK");
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io_err(&path))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(fs::TryLockError::WouldBlock) => Err(Error::Wal {
            message: format!(
                "another process is using the write-ahead log in {}; each `floe serve` needs \
                 its own --data-dir",
                dir.display()
            ),
        }),
        Err(fs::TryLockError::Error(e)) => Err(io_err(&path)(e)),
    }
}

/// Fails when another process holds the log's lock (checked before reading it).
fn check_unlocked(dir: &Path) -> Result<()> {
    drop(lock(dir)?);
    Ok(())
}

fn load_or_create_id(dir: &Path) -> Result<String> {
    let path = dir.join("wal.id");
    match fs::read_to_string(&path) {
        Ok(s) if !s.trim().is_empty() => Ok(s.trim().to_string()),
        _ => {
            let id = format!("wal-{}", uuid::Uuid::now_v7().simple());
            let tmp = dir.join("wal.id.tmp");
            let mut f = File::create(&tmp).map_err(io_err(&tmp))?;
            f.write_all(id.as_bytes()).map_err(io_err(&tmp))?;
            f.sync_all().map_err(io_err(&tmp))?;
            fs::rename(&tmp, &path).map_err(io_err(&path))?;
            floe_catalog::storage::sync_dir(dir).map_err(io_err(dir))?;
            Ok(id)
        }
    }
}

pub(crate) fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if let Some(stem) = name.strip_suffix(".wal")
            && let Ok(first) = stem.parse::<u64>()
        {
            out.push((first, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::record::tests::{ev, key};
    use super::*;
    use std::sync::Mutex;

    #[tokio::test]
    async fn appends_survive_reopen_and_torn_tails_are_cut() {
        let dir = tempfile::tempdir().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (id, rec) = Wal::open(dir.path(), &[]).unwrap();
        assert_eq!(rec.next_lsn, 1);
        let s = seen.clone();
        // Tiny segments: every append after the first starts a new segment.
        let wal = Wal::start(
            dir.path(),
            id.clone(),
            rec.next_lsn,
            64,
            Box::new(move |r: Record| s.lock().unwrap().push(r.lsn)),
        )
        .unwrap();
        for i in 0..4 {
            let lsn = wal
                .append(key(), Arc::new(vec![ev(i)]), None)
                .await
                .unwrap();
            assert_eq!(lsn, i as u64 + 1);
        }
        assert_eq!(*seen.lock().unwrap(), vec![1, 2, 3, 4]);
        drop(wal);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;

        // Tear the last record.
        let mut segs = list_segments(dir.path()).unwrap();
        let (_, last) = segs.pop().unwrap();
        let len = fs::metadata(&last).unwrap().len();
        OpenOptions::new()
            .write(true)
            .open(&last)
            .unwrap()
            .set_len(len - 3)
            .unwrap();

        let (id2, rec) = Wal::open(dir.path(), &[]).unwrap();
        assert_eq!(id2, id);
        assert_eq!(rec.records.len(), 3);
        assert_eq!(rec.next_lsn, 4);
        assert!(rec.truncated_bytes > 0);
        assert_eq!(rec.records[2].events, vec![ev(2)]);
        assert_eq!(rec.records[2].incarnation.as_deref(), Some("inc-1"));

        // Truncation deletes only segments wholly below the low-water mark.
        let wal = Wal::start(dir.path(), id2, rec.next_lsn, 64, Box::new(|_| {})).unwrap();
        assert_eq!(
            wal.append(key(), Arc::new(vec![ev(9)]), None)
                .await
                .unwrap(),
            4
        );
        wal.truncate(3);
        assert_eq!(
            wal.append(key(), Arc::new(vec![ev(10)]), None)
                .await
                .unwrap(),
            5
        );
        let firsts: Vec<u64> = list_segments(dir.path())
            .unwrap()
            .iter()
            .map(|s| s.0)
            .collect();
        assert_eq!(firsts, vec![3, 4, 5]);
    }

    #[test]
    fn damage_before_the_last_segment_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = Vec::new();
        record::encode_events(&mut a, 1, &key(), &[ev(1)]);
        let mut b = Vec::new();
        record::encode_events(&mut b, 2, &key(), &[ev(2)]);
        a[20] ^= 1;
        fs::write(dir.path().join(format!("{:020}.wal", 1)), &a).unwrap();
        fs::write(dir.path().join(format!("{:020}.wal", 2)), &b).unwrap();
        assert!(Wal::open(dir.path(), &[]).is_err());
    }

    #[test]
    fn logs_written_before_incarnations_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = Vec::new();
        record::encode_untagged(&mut a, 1, key().id(), &[ev(1)]);
        record::encode_events(&mut a, 2, &key(), &[ev(2)]);
        fs::write(dir.path().join(format!("{:020}.wal", 1)), &a).unwrap();
        let (_, rec) = Wal::open(dir.path(), &[]).unwrap();
        let incarnations: Vec<Option<&str>> = rec
            .records
            .iter()
            .map(|r| r.incarnation.as_deref())
            .collect();
        assert_eq!(incarnations, vec![None, Some("inc-1")]);
        assert_eq!(rec.next_lsn, 3);
    }
}
