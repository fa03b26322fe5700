//! Property tests of what ingest reads from outside: request bodies and events
//! (`event::split_body`, `event::parse_event`) and write-ahead-log records
//! (`wal::record::{decode, header, end_by_content}`). Arbitrary input gives an answer, `Ok` or
//! `Err`, within a time bound and on a server-sized stack; never a panic or a hang.

use std::sync::mpsc::{RecvTimeoutError, channel};
use std::time::Duration;

use floe_catalog::{TenantId, TenantKey};
use floe_ingest::event::{self, BodyError, Framing, Limits, StoredEvent};
use floe_ingest::schema::TenantSchemas;
use floe_ingest::wal::record::{self, Body};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use serde_json::{Value, json};

/// Request handlers run on tokio's worker threads, whose stack is 2 MiB.
const HANDLER_STACK: usize = 2 << 20;
/// Each case gets this long; none comes near it unless it loops.
const LIMIT: Duration = Duration::from_secs(5);

const LIMITS: Limits = Limits {
    max_event_bytes: 1 << 20,
    max_events: 100,
};

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 512,
        // No regression files in the source tree; a failure prints its (shrunk) input.
        failure_persistence: None,
        // A case that hangs costs LIMIT per shrinking step: stop shrinking after a minute.
        max_shrink_time: 60_000,
        ..ProptestConfig::default()
    }
}

/// Runs `f` on a thread with the handlers' stack and waits at most [`LIMIT`] for it. A panic or
/// an overrun fails the case (an overrun leaves its thread behind; the test fails anyway).
fn bounded<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, TestCaseError> {
    let (tx, rx) = channel();
    let handle = std::thread::Builder::new()
        .stack_size(HANDLER_STACK)
        .spawn(move || {
            let _ = tx.send(f());
        })
        .map_err(|e| TestCaseError::fail(format!("spawning a thread: {e}")))?;
    match rx.recv_timeout(LIMIT) {
        Ok(v) => {
            let _ = handle.join();
            Ok(v)
        }
        Err(RecvTimeoutError::Timeout) => Err(TestCaseError::fail(format!(
            "no answer within {LIMIT:?} (a hang)"
        ))),
        Err(RecvTimeoutError::Disconnected) => {
            let why = match handle.join() {
                Err(p) => p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "a panic".into()),
                Ok(()) => "no answer".into(),
            };
            Err(TestCaseError::fail(format!("panicked: {why}")))
        }
    }
}

// ---- events ----

/// JSON values of the kinds an event's fields might hold, including wrong ones.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        // Around the seconds/milliseconds boundary and the accepted range.
        prop_oneof![
            Just(1e11),
            Just(-2.2089888e12),
            Just(2.534023008e14),
            Just(9.2e18),
            Just(-9.3e18),
        ]
        .prop_map(Value::from),
        any::<String>().prop_map(Value::from),
        Just(json!("2025-11-26T09:40:00Z")),
        Just(json!("+275760-09-13T00:00:00Z")),
        Just(json!("1900-01-01T00:00:00-23:59")),
        "[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]{1,12})?(Z|[+-][0-9]{2}:[0-9]{2})"
            .prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
            prop::collection::btree_map("[a-z_]{0,8}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

const FIELDS: [&str; 8] = [
    "event_id",
    "tenant_id",
    "type",
    "version",
    "timestamp",
    "user_id",
    "payload",
    "extra",
];

/// Values at the edges of what `field` accepts.
fn near_valid(field: &'static str) -> Vec<Value> {
    let long = |n: usize| json!("x".repeat(n));
    match field {
        "event_id" | "type" => vec![json!("e"), json!(""), long(256), long(257), json!(7)],
        "tenant_id" => vec![json!("acme"), json!("other"), json!(""), json!(7)],
        "version" => vec![
            json!(-1),
            json!(0),
            json!(1),
            json!(2),
            json!(i32::MAX),
            json!(i64::from(i32::MAX) + 1),
            json!(1.5),
            json!("1"),
        ],
        "timestamp" => vec![
            json!(0),
            json!(99_999_999_999i64),
            json!(100_000_000_000i64),
            json!(-2_208_988_800i64),
            json!(-2_208_988_801i64),
            json!(253_402_300_799i64),
            json!(253_402_300_800i64),
            json!(253_402_300_799_999i64),
            json!(253_402_300_800_000i64),
            json!(i64::MAX),
            json!(u64::MAX),
            json!(1.0e-7),
            json!("2025-11-26T09:40:00Z"),
            json!("9999-12-31T23:59:59.999999999+00:00"),
            json!("1899-12-31T23:59:59Z"),
            json!("2025-02-30T00:00:00Z"),
        ],
        "user_id" => vec![
            json!("u"),
            json!(""),
            json!(5),
            long(256),
            long(257),
            json!([]),
        ],
        "payload" => vec![
            json!({}),
            json!({"user_id": "u"}),
            json!({"user_id": 5}),
            json!({"user_id": null}),
            json!([]),
            json!("x"),
        ],
        _ => vec![json!(null)],
    }
}

/// Event-shaped objects: the real fields with values at their edges or of any kind, over a
/// valid event or not.
fn event_object() -> impl Strategy<Value = String> {
    let field = prop::sample::select(FIELDS.to_vec()).prop_flat_map(|f| {
        let value = prop_oneof![
            2 => prop::sample::select(near_valid(f)),
            1 => json_value(),
        ];
        (Just(f), value)
    });
    (any::<bool>(), prop::collection::vec(field, 0..4)).prop_map(|(valid_base, fields)| {
        let mut map = serde_json::Map::new();
        if valid_base {
            map.insert("type".into(), json!("A"));
            map.insert("timestamp".into(), json!(1_764_150_000));
        }
        for (k, v) in fields {
            map.insert(k.to_string(), v);
        }
        Value::Object(map).to_string()
    })
}

/// A valid event: (its text, its event_id).
fn valid_event() -> impl Strategy<Value = (String, String)> {
    (
        // 1 to 64 chars of any kind: 1 to 256 bytes.
        prop::collection::vec(any::<char>(), 1..=64).prop_map(String::from_iter),
        "[A-Za-z][A-Za-z0-9_.]{0,30}",
        1i64..4_000_000_000,
        prop::option::of(1i32..=i32::MAX),
        json_value(),
    )
        .prop_map(|(id, kind, ts, version, field)| {
            let mut ev = json!({
                "event_id": id,
                "type": kind,
                "timestamp": ts,
                "payload": {"field": field},
            });
            if let Some(v) = version {
                ev["version"] = json!(v);
            }
            (ev.to_string(), id)
        })
}

/// Fragments that break JSON in interesting ways.
const SHARDS: [&str; 24] = [
    "{",
    "}",
    "[",
    "]",
    "\"",
    ":",
    ",",
    "\\",
    "\\u",
    "\\ud800",
    "\n",
    "\r\n",
    " ",
    "null",
    "1e999",
    "-",
    "-0",
    "0.",
    "9223372036854775808",
    "\u{feff}",
    "\u{0}",
    "é",
    "[[[[[[[[",
    "}}}}",
];

#[derive(Debug, Clone)]
enum Mutation {
    Truncate(usize),
    Delete(usize, usize),
    Insert(usize, &'static str),
    Duplicate(usize, usize),
    /// Wraps the text in this many arrays.
    Nest(usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), 1usize..8).prop_map(|(a, n)| Mutation::Delete(a, n)),
        (any::<usize>(), prop::sample::select(SHARDS.to_vec()))
            .prop_map(|(a, s)| Mutation::Insert(a, s)),
        (any::<usize>(), 1usize..16).prop_map(|(a, n)| Mutation::Duplicate(a, n)),
        (1usize..2000).prop_map(Mutation::Nest),
    ]
}

/// The nearest char boundary at or below `i % (len + 1)`.
fn boundary(s: &str, i: usize) -> usize {
    let mut i = i % (s.len() + 1);
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

fn mutate(mut s: String, mutations: &[Mutation]) -> String {
    for m in mutations {
        match *m {
            Mutation::Truncate(at) => s.truncate(boundary(&s, at)),
            Mutation::Delete(at, n) => {
                let a = boundary(&s, at);
                let b = boundary(&s, a.saturating_add(n).min(s.len()));
                s.replace_range(a..b.max(a), "");
            }
            Mutation::Insert(at, shard) => s.insert_str(boundary(&s, at), shard),
            Mutation::Duplicate(at, n) => {
                let a = boundary(&s, at);
                let b = boundary(&s, a.saturating_add(n).min(s.len())).max(a);
                let piece = s[a..b].to_string();
                s.insert_str(b, &piece);
            }
            Mutation::Nest(n) => s = format!("{}{s}{}", "[".repeat(n), "]".repeat(n)),
        }
    }
    s
}

/// JSON-ish bodies: valid events and event-shaped objects, framed either way, then mutated.
fn jsonish_body() -> impl Strategy<Value = String> {
    let item = prop_oneof![valid_event().prop_map(|(text, _)| text), event_object()];
    (
        prop::collection::vec(item, 0..5),
        any::<bool>(),
        prop::collection::vec(mutation(), 0..4),
    )
        .prop_map(|(items, array, mutations)| {
            let body = if array {
                format!("[{}]", items.join(","))
            } else {
                items.join("\n")
            };
            mutate(body, &mutations)
        })
}

/// Splits `body` both ways and parses every item: the whole path of a request's events.
fn ingest_body(body: Vec<u8>) -> Vec<Result<StoredEvent, String>> {
    let mut out = Vec::new();
    for framing in [Framing::Json, Framing::Ndjson] {
        if let Ok(items) = event::split_body(&body, framing, LIMITS) {
            assert!(items.len() <= LIMITS.max_events, "split past the limit");
            for (i, raw) in items.into_iter().enumerate() {
                out.push(
                    event::parse_event(i, raw, "acme", 7, LIMITS, &TenantSchemas::none()).map_err(
                        |r| {
                            assert_eq!(r.index as usize, i, "rejection names another index");
                            r.code.to_string()
                        },
                    ),
                );
            }
        }
    }
    out
}

/// What an accepted event always satisfies.
fn check_accepted(e: &StoredEvent) -> Result<(), TestCaseError> {
    prop_assert!(!e.event_id.is_empty() && (!e.client_id || e.event_id.len() <= 256));
    prop_assert!(!e.kind.is_empty() && e.kind.len() <= 256);
    prop_assert!(e.version >= 1);
    prop_assert!((-2_208_988_800_000_000..=253_402_300_799_999_999).contains(&e.ts));
    prop_assert_eq!(e.received_at, 7);
    let payload: Value = serde_json::from_str(&e.payload).expect("stored payload is JSON");
    prop_assert!(payload.is_object());
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn arbitrary_bytes_are_answered(body in prop::collection::vec(any::<u8>(), 0..512)) {
        for r in bounded(move || ingest_body(body))?.iter().flatten() {
            check_accepted(r)?;
        }
    }

    #[test]
    fn arbitrary_text_is_answered(body in any::<String>()) {
        for r in bounded(move || ingest_body(body.into_bytes()))?.iter().flatten() {
            check_accepted(r)?;
        }
    }

    #[test]
    fn jsonish_bodies_are_answered(body in jsonish_body()) {
        for r in bounded(move || ingest_body(body.into_bytes()))?.iter().flatten() {
            check_accepted(r)?;
        }
    }

    #[test]
    fn event_shaped_objects_are_answered(raw in event_object()) {
        let r = bounded(move || event::parse_event(0, &raw, "acme", 7, LIMITS, &TenantSchemas::none()))?;
        if let Ok(e) = &r {
            check_accepted(e)?;
        }
    }

    #[test]
    fn valid_events_keep_their_id(
        events in prop::collection::vec(valid_event(), 1..6),
        array in any::<bool>(),
    ) {
        let ids: Vec<String> = events.iter().map(|(_, id)| id.clone()).collect();
        let texts: Vec<String> = events.into_iter().map(|(t, _)| t).collect();
        let (body, framing) = if array {
            (format!("[{}]", texts.join(", ")), Framing::Json)
        } else {
            (texts.join("\r\n"), Framing::Ndjson)
        };
        let parsed = bounded(move || {
            let items = event::split_body(body.as_bytes(), framing, LIMITS)
                .map_err(|e| format!("{e:?}"))?;
            items
                .iter()
                .enumerate()
                .map(|(i, raw)| {
                    event::parse_event(i, raw, "acme", 7, LIMITS, &TenantSchemas::none()).map_err(|r| format!("{r:?}"))
                })
                .collect::<Result<Vec<_>, String>>()
        })?;
        let parsed = parsed.map_err(TestCaseError::fail)?;
        prop_assert_eq!(parsed.len(), ids.len());
        for (e, id) in parsed.iter().zip(&ids) {
            check_accepted(e)?;
            prop_assert_eq!(&e.event_id, id);
            prop_assert!(e.client_id);
        }
    }

    #[test]
    fn too_many_events_are_counted_not_split(n in 101usize..300, array in any::<bool>()) {
        let one = r#"{"type":"A","timestamp":1}"#;
        let (body, framing) = if array {
            (format!("[{}]", vec![one; n].join(",")), Framing::Json)
        } else {
            (vec![one; n].join("\n"), Framing::Ndjson)
        };
        let r = bounded(move || event::split_body(body.as_bytes(), framing, LIMITS).map(|v| v.len()))?;
        prop_assert_eq!(r, Err(BodyError::TooManyEvents { count: n, max: LIMITS.max_events }));
    }
}

// ---- write-ahead-log records ----

fn stored_event() -> impl Strategy<Value = StoredEvent> {
    (
        any::<String>(),
        any::<String>(),
        any::<i32>(),
        any::<i64>(),
        any::<i64>(),
        prop::option::of(any::<String>()),
        any::<String>(),
        any::<bool>(),
    )
        .prop_map(
            |(event_id, kind, version, ts, received_at, user_id, payload, client_id)| StoredEvent {
                event_id,
                kind,
                version,
                ts,
                received_at,
                user_id,
                payload,
                client_id,
            },
        )
}

fn tenant_key() -> impl Strategy<Value = TenantKey> {
    ("[a-z0-9][a-z0-9_-]{0,62}", any::<String>())
        .prop_map(|(id, inc)| TenantKey::new(TenantId::parse(&id).unwrap(), inc))
}

/// An encoded record and what it says: events of a tenant, or an accepted loss.
fn encoded_record() -> impl Strategy<Value = (Vec<u8>, u64, Body)> {
    let events = (
        any::<u64>(),
        tenant_key(),
        prop::collection::vec(stored_event(), 0..4),
    )
        .prop_map(|(lsn, key, events)| {
            let mut buf = Vec::new();
            record::encode_events(&mut buf, lsn, &key, &events);
            let body = Body::Events {
                tenant: key.id().clone(),
                incarnation: Some(key.incarnation().to_string()),
                events,
            };
            (buf, lsn, body)
        });
    let lost = (any::<u64>(), any::<u64>(), any::<String>()).prop_map(|(lsn, through, note)| {
        let mut buf = Vec::new();
        record::encode_lost(&mut buf, lsn, through, &note);
        (buf, lsn, Body::Lost { through, note })
    });
    prop_oneof![3 => events, 1 => lost]
}

/// Frames `body` as a record with a correct checksum, so the body parser sees it.
fn framed(lsn: u64, body: &[u8]) -> Vec<u8> {
    let mut buf = Vec::with_capacity(16 + body.len());
    buf.extend_from_slice(&(body.len() as u32).to_le_bytes());
    buf.extend_from_slice(&[0; 4]);
    buf.extend_from_slice(&lsn.to_le_bytes());
    buf.extend_from_slice(body);
    let crc = crc32fast::hash(&buf[8..]);
    buf[4..8].copy_from_slice(&crc.to_le_bytes());
    buf
}

/// Bodies built from the pieces a record has (tags, length prefixes that may lie, text that may
/// not be UTF-8, counts that may be huge), so the parser gets past its first checks.
fn plausible_body() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        prop_oneof![
            Just(0xF1u8),
            Just(0xF2),
            Just(0),
            Just(1),
            Just(4),
            Just(63),
            Just(64)
        ]
        .prop_map(|b| vec![b]),
        prop_oneof![
            Just(0u32),
            Just(1),
            Just(4),
            Just(63),
            Just(u32::MAX),
            any::<u32>()
        ]
        .prop_map(|n| n.to_le_bytes().to_vec()),
        any::<u64>().prop_map(|n| n.to_le_bytes().to_vec()),
        "[a-z0-9_-]{0,12}".prop_map(|s| {
            let mut v = (s.len() as u32).to_le_bytes().to_vec();
            v.extend_from_slice(s.as_bytes());
            v
        }),
        prop::collection::vec(any::<u8>(), 0..12),
    ];
    prop::collection::vec(piece, 0..16).prop_map(|p| p.concat())
}

/// Runs every reader on `data`, checking what they must agree on.
fn read_all(data: &[u8]) -> Result<Option<record::Decoded>, String> {
    let header = record::header(data);
    if data.len() >= 16 {
        let (len, crc, lsn) = header.ok_or("no header in 16 bytes")?;
        if u32::from_le_bytes(data[..4].try_into().unwrap()) as usize != len
            || u32::from_le_bytes(data[4..8].try_into().unwrap()) != crc
            || u64::from_le_bytes(data[8..16].try_into().unwrap()) != lsn
        {
            return Err("header fields misread".into());
        }
    } else if header.is_some() {
        return Err("a header read from fewer than 16 bytes".into());
    }
    let end = record::end_by_content(data);
    if let Some(end) = end
        && !(16..=data.len()).contains(&end)
    {
        return Err(format!("end_by_content {end} outside the data"));
    }
    match record::decode(data) {
        Ok(d) => {
            if d.len > data.len() || d.len < 16 {
                return Err(format!("decoded length {} outside the data", d.len));
            }
            if end != Some(d.len) {
                return Err(format!(
                    "decode ends at {} but end_by_content says {end:?}",
                    d.len
                ));
            }
            Ok(Some(d))
        }
        Err(_) => Ok(None),
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn records_round_trip((buf, lsn, body) in encoded_record()) {
        let len = buf.len();
        let d = bounded(move || read_all(&buf))?.map_err(TestCaseError::fail)?;
        let d = d.ok_or_else(|| TestCaseError::fail("a record as written does not decode"))?;
        prop_assert_eq!(d.lsn, lsn);
        prop_assert_eq!(d.len, len);
        prop_assert_eq!(d.body, body);
    }

    #[test]
    fn records_with_trailing_bytes_read_their_own_length(
        (mut buf, lsn, body) in encoded_record(),
        tail in prop::collection::vec(any::<u8>(), 0..64),
    ) {
        let len = buf.len();
        buf.extend_from_slice(&tail);
        let d = bounded(move || record::decode(&buf))?.map_err(TestCaseError::fail)?;
        prop_assert_eq!((d.lsn, d.len), (lsn, len));
        prop_assert_eq!(d.body, body);
    }

    #[test]
    fn arbitrary_bytes_are_not_records(data in prop::collection::vec(any::<u8>(), 0..256)) {
        bounded(move || read_all(&data))?.map_err(TestCaseError::fail)?;
    }

    #[test]
    fn arbitrary_bodies_with_good_checksums_are_answered(
        lsn in any::<u64>(),
        body in prop_oneof![plausible_body(), prop::collection::vec(any::<u8>(), 0..128)],
    ) {
        let data = framed(lsn, &body);
        bounded(move || read_all(&data))?.map_err(TestCaseError::fail)?;
    }

    #[test]
    fn a_flipped_byte_is_caught(
        (mut buf, _, _) in encoded_record(),
        at in any::<prop::sample::Index>(),
        mask in 1u8..=255,
    ) {
        let i = at.index(buf.len());
        buf[i] ^= mask;
        let d = bounded(move || read_all(&buf))?.map_err(TestCaseError::fail)?;
        prop_assert!(d.is_none(), "byte {} ^ {:#x} went unnoticed", i, mask);
    }

    #[test]
    fn a_truncated_record_is_caught(
        (buf, _, _) in encoded_record(),
        at in any::<prop::sample::Index>(),
    ) {
        let n = at.index(buf.len());
        let data = buf[..n].to_vec();
        let (d, end) = bounded(move || (read_all(&data), record::end_by_content(&data)))?;
        prop_assert!(d.map_err(TestCaseError::fail)?.is_none(), "{} of {} bytes decoded", n, buf.len());
        prop_assert_eq!(end, None);
    }

    #[test]
    fn damaged_records_are_answered(
        (buf, _, _) in encoded_record(),
        edits in prop::collection::vec(edit(), 1..6),
    ) {
        let data = apply(buf, &edits);
        bounded(move || read_all(&data))?.map_err(TestCaseError::fail)?;
    }

    #[test]
    fn damaged_bodies_with_good_checksums_are_answered(
        (buf, lsn, _) in encoded_record(),
        edits in prop::collection::vec(edit(), 1..4),
    ) {
        let data = framed(lsn, &apply(buf[16..].to_vec(), &edits));
        bounded(move || read_all(&data))?.map_err(TestCaseError::fail)?;
    }
}

/// One edit of a byte string: (where, which byte, 0 = overwrite, 1 = insert, 2 = remove).
fn edit() -> impl Strategy<Value = (prop::sample::Index, u8, u8)> {
    (any::<prop::sample::Index>(), any::<u8>(), 0u8..3)
}

fn apply(mut data: Vec<u8>, edits: &[(prop::sample::Index, u8, u8)]) -> Vec<u8> {
    for &(at, byte, op) in edits {
        match op {
            0 if !data.is_empty() => {
                let i = at.index(data.len());
                data[i] = byte;
            }
            1 => {
                let i = at.index(data.len() + 1);
                data.insert(i, byte);
            }
            2 if !data.is_empty() => {
                data.remove(at.index(data.len()));
            }
            _ => {}
        }
    }
    data
}
