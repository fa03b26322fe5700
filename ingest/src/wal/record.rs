//! The log's record format: `len u32 | crc32 u32 | lsn u64 | body`, little-endian, the
//! checksum over `lsn` and `body`.
//!
//! Bodies:
//! - events (`0xF1`): tenant id, tenant incarnation, event count, events;
//! - lost (`0xF2`): the records up to `through` were lost to damage and the loss was accepted
//!   by an operator (`floe serve --accept-wal-loss`); keeps the sequence numbers contiguous;
//! - events written before incarnations existed: tenant id, count, events (the body starts
//!   with the tenant id's length, 1 to 63, so it never looks like a tagged body).

use floe_catalog::{TenantId, TenantKey};

use crate::event::StoredEvent;

pub(crate) const HEADER: usize = 16;
/// Longest body accepted when reading.
pub(crate) const MAX_RECORD: usize = 1 << 30;
/// The shortest record there can be (a header and the smallest body), for bounding how many
/// records a damaged span may have held.
pub(crate) const MIN_RECORD: usize = HEADER + 10;

const EVENTS: u8 = 0xF1;
const LOST: u8 = 0xF2;

/// What a record says.
#[derive(Debug, Clone, PartialEq)]
pub enum Body {
    /// Accepted events of one tenant. `incarnation` is `None` in records written before
    /// incarnations were recorded.
    Events {
        tenant: TenantId,
        incarnation: Option<String>,
        events: Vec<StoredEvent>,
    },
    /// The records from this one's `lsn` through `through` were lost (an accepted loss).
    Lost { through: u64, note: String },
}

/// A record read back: its sequence number, body and length in bytes.
#[derive(Debug)]
pub struct Decoded {
    pub lsn: u64,
    pub body: Body,
    pub len: usize,
}

fn put_str(buf: &mut Vec<u8>, s: &str) {
    buf.extend_from_slice(&(s.len() as u32).to_le_bytes());
    buf.extend_from_slice(s.as_bytes());
}

/// Appends the record of `events` accepted for `tenant`.
pub fn encode_events(buf: &mut Vec<u8>, lsn: u64, tenant: &TenantKey, events: &[StoredEvent]) {
    frame(buf, lsn, |buf| {
        buf.push(EVENTS);
        put_str(buf, tenant.id().as_str());
        put_str(buf, tenant.incarnation());
        put_events(buf, events);
    });
}

/// Appends a record saying that the records `lsn..=through` were lost.
pub fn encode_lost(buf: &mut Vec<u8>, lsn: u64, through: u64, note: &str) {
    frame(buf, lsn, |buf| {
        buf.push(LOST);
        buf.extend_from_slice(&through.to_le_bytes());
        put_str(buf, note);
    });
}

/// A record as written before incarnations existed (for reading old logs in tests).
#[cfg(test)]
pub fn encode_untagged(buf: &mut Vec<u8>, lsn: u64, tenant: &TenantId, events: &[StoredEvent]) {
    frame(buf, lsn, |buf| {
        put_str(buf, tenant.as_str());
        put_events(buf, events);
    });
}

fn put_events(buf: &mut Vec<u8>, events: &[StoredEvent]) {
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
}

fn frame(buf: &mut Vec<u8>, lsn: u64, body: impl FnOnce(&mut Vec<u8>)) {
    let start = buf.len();
    buf.extend_from_slice(&[0u8; HEADER]);
    body(buf);
    let body_len = (buf.len() - start - HEADER) as u32;
    buf[start + 8..start + 16].copy_from_slice(&lsn.to_le_bytes());
    let crc = crc32fast::hash(&buf[start + 8..]);
    buf[start..start + 4].copy_from_slice(&body_len.to_le_bytes());
    buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

struct Cursor<'a>(&'a [u8]);

type Parse<T> = std::result::Result<T, &'static str>;

impl Cursor<'_> {
    fn take(&mut self, n: usize) -> Parse<&[u8]> {
        if self.0.len() < n {
            return Err("record ends early");
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u8(&mut self) -> Parse<u8> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Parse<u32> {
        let mut b = [0u8; 4];
        b.copy_from_slice(self.take(4)?);
        Ok(u32::from_le_bytes(b))
    }
    fn u64(&mut self) -> Parse<u64> {
        let mut b = [0u8; 8];
        b.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(b))
    }
    fn i64(&mut self) -> Parse<i64> {
        Ok(self.u64()? as i64)
    }
    fn string(&mut self) -> Parse<String> {
        let n = self.u32()? as usize;
        let bytes = self.take(n)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| "string is not UTF-8")
    }
}

/// The header fields: (body length, checksum, lsn), if `data` is long enough to hold them.
pub fn header(data: &[u8]) -> Option<(usize, u32, u64)> {
    let mut c = Cursor(data.get(..HEADER)?);
    let len = c.u32().ok()? as usize;
    let crc = c.u32().ok()?;
    let lsn = c.u64().ok()?;
    Some((len, crc, lsn))
}

/// Reads the record at the start of `data`.
pub fn decode(data: &[u8]) -> std::result::Result<Decoded, String> {
    let Some((len, crc, lsn)) = header(data) else {
        return Err("partial header".into());
    };
    if len > MAX_RECORD || data.len() < HEADER + len {
        return Err("partial record".into());
    }
    if crc32fast::hash(&data[8..HEADER + len]) != crc {
        return Err("checksum mismatch".into());
    }
    let mut c = Cursor(&data[HEADER..HEADER + len]);
    let body = parse_body(&mut c).map_err(str::to_string)?;
    if !c.0.is_empty() {
        return Err("trailing bytes in record".into());
    }
    Ok(Decoded {
        lsn,
        body,
        len: HEADER + len,
    })
}

/// Where the record at the start of `data` ends judging by its body alone, if its checksum
/// agrees with that end: a complete record whose length field was damaged (which a torn
/// write cannot produce).
pub fn end_by_content(data: &[u8]) -> Option<usize> {
    let (_, crc, _) = header(data)?;
    let mut c = Cursor(data.get(HEADER..)?);
    parse_body(&mut c).ok()?;
    let end = data.len() - c.0.len();
    (crc32fast::hash(&data[8..end]) == crc).then_some(end)
}

fn parse_body(c: &mut Cursor<'_>) -> Parse<Body> {
    match c.0.first().copied() {
        Some(LOST) => {
            c.u8()?;
            let through = c.u64()?;
            let note = c.string()?;
            Ok(Body::Lost { through, note })
        }
        Some(EVENTS) => {
            c.u8()?;
            let tenant = TenantId::parse(&c.string()?).map_err(|_| "bad tenant id")?;
            let incarnation = c.string()?;
            let events = parse_events(c)?;
            Ok(Body::Events {
                tenant,
                incarnation: Some(incarnation),
                events,
            })
        }
        _ => {
            let tenant = TenantId::parse(&c.string()?).map_err(|_| "bad tenant id")?;
            let events = parse_events(c)?;
            Ok(Body::Events {
                tenant,
                incarnation: None,
                events,
            })
        }
    }
}

fn parse_events(c: &mut Cursor<'_>) -> Parse<Vec<StoredEvent>> {
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
    Ok(events)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn ev(i: usize) -> StoredEvent {
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

    pub(crate) fn key() -> TenantKey {
        TenantKey::new(TenantId::parse("acme").unwrap(), "inc-1")
    }

    #[test]
    fn records_round_trip_and_every_flipped_byte_is_caught() {
        let events: Vec<_> = (0..5).map(ev).collect();
        let mut buf = Vec::new();
        encode_events(&mut buf, 42, &key(), &events);
        let d = decode(&buf).unwrap();
        assert_eq!((d.lsn, d.len), (42, buf.len()));
        assert_eq!(
            d.body,
            Body::Events {
                tenant: key().id().clone(),
                incarnation: Some("inc-1".into()),
                events: events.clone()
            }
        );
        for i in 0..buf.len() {
            let mut bad = buf.clone();
            bad[i] ^= 0x40;
            assert!(decode(&bad).is_err(), "flip at {i} undetected");
        }
        // The body alone tells where a record ends, whatever its length field says.
        let mut bad_len = buf.clone();
        bad_len[1] ^= 0x10;
        assert_eq!(end_by_content(&bad_len), Some(buf.len()));
        assert_eq!(end_by_content(&buf[..buf.len() - 1]), None);
    }

    #[test]
    fn untagged_and_lost_records_read_back() {
        let mut buf = Vec::new();
        encode_untagged(&mut buf, 7, key().id(), &[ev(1)]);
        encode_lost(&mut buf, 8, 12, "segment x@3");
        let a = decode(&buf).unwrap();
        assert_eq!(
            a.body,
            Body::Events {
                tenant: key().id().clone(),
                incarnation: None,
                events: vec![ev(1)]
            }
        );
        let b = decode(&buf[a.len..]).unwrap();
        assert_eq!(b.lsn, 8);
        assert_eq!(
            b.body,
            Body::Lost {
                through: 12,
                note: "segment x@3".into()
            }
        );
    }
}
