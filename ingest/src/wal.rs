//! The write-ahead log: where an event becomes durable before it is acknowledged.
//!
//! One log per process, in segment files named by their first sequence number (`lsn`). A single
//! writer thread drains every waiting append, writes them, calls `fsync` once, hands the records
//! to the batchers in `lsn` order, and only then acknowledges them (group commit). Records are
//! `len | crc32 | lsn | payload`; on open, a torn record at the end of the last segment is cut
//! off (it was never acknowledged), while damage anywhere else is an error. Segments are deleted
//! only when every record in them is behind the committed positions of the tables.

use std::fs::{self, File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use floe_catalog::TenantId;
use tokio::sync::{OwnedSemaphorePermit, mpsc, oneshot};

use crate::event::StoredEvent;
use crate::{Error, Result};

/// A durable record: one request's accepted events for one tenant.
#[derive(Debug)]
pub struct Record {
    pub lsn: u64,
    pub tenant: TenantId,
    pub events: Arc<Vec<StoredEvent>>,
    /// Buffer space held until the record is committed to its table.
    pub permit: Option<OwnedSemaphorePermit>,
}

/// Receives each record after it is durable, in `lsn` order, before it is acknowledged.
pub type Sink = Box<dyn FnMut(Record) + Send>;

enum Command {
    Append {
        tenant: TenantId,
        events: Arc<Vec<StoredEvent>>,
        permit: Option<OwnedSemaphorePermit>,
        reply: oneshot::Sender<Result<u64>>,
    },
    /// Replies once every append queued before it is durable.
    Barrier { reply: oneshot::Sender<Result<u64>> },
    /// Delete segments whose records all have `lsn < low_water`.
    Truncate { low_water: u64 },
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
    pub records: Vec<(u64, TenantId, Vec<StoredEvent>)>,
    /// The `lsn` the next append gets.
    pub next_lsn: u64,
    /// Bytes cut off a torn tail.
    pub truncated_bytes: u64,
}

const HEADER: usize = 16;
const MAX_RECORD: usize = 1 << 30;
const MAX_GROUP: usize = 4096;

impl Wal {
    /// Identifies this log in table snapshot summaries (`floe.position.<id>`).
    pub fn source_id(&self) -> &str {
        &self.id
    }

    /// Reads the log in `dir` (creating it if needed). Call [`Wal::start`] afterwards.
    pub fn open(dir: &Path) -> Result<(String, Recovered)> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let id = load_or_create_id(dir)?;
        // Only the process holding the lock may read or write the log (see `Wal::start`).
        check_unlocked(dir)?;
        let segments = list_segments(dir)?;
        let mut records = Vec::new();
        let mut next_lsn = 1;
        let mut truncated_bytes = 0;
        for (i, (first, path)) in segments.iter().enumerate() {
            let last_segment = i + 1 == segments.len();
            if *first != next_lsn && !records.is_empty() {
                return Err(Error::Wal {
                    message: format!(
                        "{}: expected a segment starting at {next_lsn}, found {first}",
                        path.display()
                    ),
                });
            }
            next_lsn = *first;
            let data = fs::read(path).map_err(io_err(path))?;
            let mut at = 0;
            while at < data.len() {
                match decode_record(&data[at..]) {
                    Ok((lsn, tenant, events, used)) => {
                        if lsn != next_lsn {
                            return Err(Error::Wal {
                                message: format!(
                                    "{}: record {lsn} where {next_lsn} was expected",
                                    path.display()
                                ),
                            });
                        }
                        records.push((lsn, tenant, events));
                        next_lsn += 1;
                        at += used;
                    }
                    Err(why) if last_segment => {
                        tracing::warn!(
                            segment = %path.display(), offset = at, %why,
                            "cutting a torn write-ahead-log tail (never acknowledged)"
                        );
                        truncated_bytes = (data.len() - at) as u64;
                        let f = OpenOptions::new()
                            .write(true)
                            .open(path)
                            .map_err(io_err(path))?;
                        f.set_len(at as u64).map_err(io_err(path))?;
                        f.sync_all().map_err(io_err(path))?;
                        break;
                    }
                    Err(why) => {
                        return Err(Error::Wal {
                            message: format!(
                                "{} is damaged at offset {at} ({why}); it is not the last \
                                 segment, so acknowledged events may be affected",
                                path.display()
                            ),
                        });
                    }
                }
            }
        }
        Ok((
            id,
            Recovered {
                records,
                next_lsn,
                truncated_bytes,
            },
        ))
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
        tenant: TenantId,
        events: Arc<Vec<StoredEvent>>,
        permit: Option<OwnedSemaphorePermit>,
    ) -> Result<u64> {
        self.enqueue(tenant, events, permit)
            .await?
            .await
            .map_err(|_| stopped())?
    }

    /// Queues an append and returns the receiver of its result: the log's order is the order
    /// of `enqueue` calls.
    pub async fn enqueue(
        &self,
        tenant: TenantId,
        events: Arc<Vec<StoredEvent>>,
        permit: Option<OwnedSemaphorePermit>,
    ) -> Result<oneshot::Receiver<Result<u64>>> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Append {
                tenant,
                events,
                permit,
                reply,
            })
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

/// An append waiting in a group: tenant, events, buffer permit, and where to answer.
type PendingAppend = (
    TenantId,
    Arc<Vec<StoredEvent>>,
    Option<OwnedSemaphorePermit>,
    oneshot::Sender<Result<u64>>,
);

struct Writer {
    dir: PathBuf,
    next_lsn: u64,
    segment_bytes: u64,
    /// Closed segments: (first lsn, path). The active one is `active`.
    closed: Vec<(u64, PathBuf)>,
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
        Ok(Writer {
            dir,
            next_lsn,
            segment_bytes,
            closed,
            active,
            sink,
            failed: None,
            buf: Vec::with_capacity(1 << 20),
            _lock: lock,
        })
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
                    Command::Append {
                        tenant,
                        events,
                        permit,
                        reply,
                    } => appends.push((tenant, events, permit, reply)),
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
            for (.., reply) in appends {
                let _ = reply.send(Err(Error::Wal {
                    message: why.clone(),
                }));
            }
            return;
        }
        self.buf.clear();
        let first = self.next_lsn;
        for (i, (tenant, events, ..)) in appends.iter().enumerate() {
            encode_record(&mut self.buf, first + i as u64, tenant, events);
        }
        match self.write_durably(first) {
            Ok(()) => {
                self.next_lsn = first + appends.len() as u64;
                for (i, (tenant, events, permit, reply)) in appends.into_iter().enumerate() {
                    let lsn = first + i as u64;
                    (self.sink)(Record {
                        lsn,
                        tenant,
                        events,
                        permit,
                    });
                    let _ = reply.send(Ok(lsn));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "write-ahead log append failed");
                for (.., reply) in appends {
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
            File::open(&self.dir)?.sync_all()?;
            if let Some((f, p, _, _)) = self.active.take() {
                self.closed.push((f, p));
            }
            self.active = Some((first, path, file, 0));
        }
        let Some((_, _, file, len)) = self.active.as_mut() else {
            return Err(std::io::Error::other("no active segment"));
        };
        let result = file.write_all(&self.buf).and_then(|_| file.sync_data());
        match result {
            Ok(()) => {
                *len += self.buf.len() as u64;
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
                match fs::remove_file(path) {
                    Ok(()) => {
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
    }
}

fn stopped() -> Error {
    Error::Wal {
        message: "the write-ahead log has stopped".into(),
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
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
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io_err(dir))?;
            Ok(id)
        }
    }
}

fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
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

fn put_str(buf: &mut Vec<u8>, s: &str) {
    buf.extend_from_slice(&(s.len() as u32).to_le_bytes());
    buf.extend_from_slice(s.as_bytes());
}

fn encode_record(buf: &mut Vec<u8>, lsn: u64, tenant: &TenantId, events: &[StoredEvent]) {
    let start = buf.len();
    buf.extend_from_slice(&[0u8; HEADER]);
    put_str(buf, tenant.as_str());
    buf.extend_from_slice(&(events.len() as u32).to_le_bytes());
    for e in events {
        put_str(buf, &e.event_id);
        put_str(buf, &e.kind);
        buf.extend_from_slice(&e.version.to_le_bytes());
        buf.extend_from_slice(&e.ts.to_le_bytes());
        buf.extend_from_slice(&e.received_at.to_le_bytes());
        match &e.user_id {
            Some(u) => {
                buf.push(1);
                put_str(buf, u);
            }
            None => buf.push(0),
        }
        put_str(buf, &e.payload);
        buf.push(e.client_id as u8);
    }
    let payload_len = (buf.len() - start - HEADER) as u32;
    buf[start + 8..start + 16].copy_from_slice(&lsn.to_le_bytes());
    let crc = crc32fast::hash(&buf[start + 8..]);
    buf[start..start + 4].copy_from_slice(&payload_len.to_le_bytes());
    buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

struct Cursor<'a>(&'a [u8]);

impl Cursor<'_> {
    fn take(&mut self, n: usize) -> std::result::Result<&[u8], &'static str> {
        if self.0.len() < n {
            return Err("record ends early");
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u8(&mut self) -> std::result::Result<u8, &'static str> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> std::result::Result<u32, &'static str> {
        let mut b = [0u8; 4];
        b.copy_from_slice(self.take(4)?);
        Ok(u32::from_le_bytes(b))
    }
    fn i64(&mut self) -> std::result::Result<i64, &'static str> {
        let mut b = [0u8; 8];
        b.copy_from_slice(self.take(8)?);
        Ok(i64::from_le_bytes(b))
    }
    fn string(&mut self) -> std::result::Result<String, &'static str> {
        let n = self.u32()? as usize;
        let bytes = self.take(n)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| "string is not UTF-8")
    }
}

type Decoded = (u64, TenantId, Vec<StoredEvent>, usize);

fn decode_record(data: &[u8]) -> std::result::Result<Decoded, String> {
    if data.len() < HEADER {
        return Err("partial header".into());
    }
    let mut head = Cursor(&data[..HEADER]);
    let len = head.u32()? as usize;
    let crc = head.u32()?;
    let lsn = head.i64()? as u64;
    if len > MAX_RECORD || data.len() < HEADER + len {
        return Err("partial record".into());
    }
    if crc32fast::hash(&data[8..HEADER + len]) != crc {
        return Err("checksum mismatch".into());
    }
    let mut c = Cursor(&data[HEADER..HEADER + len]);
    let tenant = TenantId::parse(&c.string()?).map_err(|e| e.to_string())?;
    let count = c.u32()? as usize;
    let mut events = Vec::with_capacity(count.min(1 << 16));
    for _ in 0..count {
        let event_id = c.string()?;
        let kind = c.string()?;
        let version = c.u32()? as i32;
        let ts = c.i64()?;
        let received_at = c.i64()?;
        let user_id = match c.u8()? {
            0 => None,
            _ => Some(c.string()?),
        };
        let payload = c.string()?;
        let client_id = c.u8()? != 0;
        events.push(StoredEvent {
            event_id,
            kind,
            version,
            ts,
            received_at,
            user_id,
            payload,
            client_id,
        });
    }
    if !c.0.is_empty() {
        return Err("trailing bytes in record".into());
    }
    Ok((lsn, tenant, events, HEADER + len))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    fn ev(i: usize) -> StoredEvent {
        StoredEvent {
            event_id: format!("e{i}"),
            kind: "PageViewed".into(),
            version: 1,
            ts: i as i64 * 1000,
            received_at: 5,
            user_id: i.is_multiple_of(2).then(|| format!("u{i}")),
            payload: format!("{{\"i\":{i}}}"),
            client_id: true,
        }
    }

    fn tenant() -> TenantId {
        TenantId::parse("acme").unwrap()
    }

    #[test]
    fn records_round_trip() {
        let events: Vec<_> = (0..5).map(ev).collect();
        let mut buf = Vec::new();
        encode_record(&mut buf, 42, &tenant(), &events);
        let (lsn, t, back, used) = decode_record(&buf).unwrap();
        assert_eq!((lsn, t, used), (42, tenant(), buf.len()));
        assert_eq!(back, events);
        // Any single flipped byte is caught.
        for i in 0..buf.len() {
            let mut bad = buf.clone();
            bad[i] ^= 0x40;
            assert!(decode_record(&bad).is_err(), "flip at {i} undetected");
        }
    }

    #[tokio::test]
    async fn appends_survive_reopen_and_torn_tails_are_cut() {
        let dir = tempfile::tempdir().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (id, rec) = Wal::open(dir.path()).unwrap();
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
                .append(tenant(), Arc::new(vec![ev(i)]), None)
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

        let (id2, rec) = Wal::open(dir.path()).unwrap();
        assert_eq!(id2, id);
        assert_eq!(rec.records.len(), 3);
        assert_eq!(rec.next_lsn, 4);
        assert!(rec.truncated_bytes > 0);
        assert_eq!(rec.records[2].2, vec![ev(2)]);

        // Truncation deletes only segments wholly below the low-water mark.
        let wal = Wal::start(dir.path(), id2, rec.next_lsn, 64, Box::new(|_| {})).unwrap();
        assert_eq!(
            wal.append(tenant(), Arc::new(vec![ev(9)]), None)
                .await
                .unwrap(),
            4
        );
        wal.truncate(3);
        assert_eq!(
            wal.append(tenant(), Arc::new(vec![ev(10)]), None)
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
        encode_record(&mut a, 1, &tenant(), &[ev(1)]);
        let mut b = Vec::new();
        encode_record(&mut b, 2, &tenant(), &[ev(2)]);
        a[20] ^= 1;
        fs::write(dir.path().join(format!("{:020}.wal", 1)), &a).unwrap();
        fs::write(dir.path().join(format!("{:020}.wal", 2)), &b).unwrap();
        assert!(Wal::open(dir.path()).is_err());
    }
}
