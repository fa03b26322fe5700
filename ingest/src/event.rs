//! Events as producers send them, validated and normalised into [`StoredEvent`]s.
//!
//! Bodies are a JSON object, a JSON array of objects, or NDJSON (one object per line). Each
//! event is judged on its own: the valid ones of a mixed batch are stored, the others are
//! reported by index with a stable error code.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;

use crate::schema::{TenantSchemas, Violation, validate};

mod read;

use read::{Field, Incoming, Payload, stored_form};

/// An event ready to be logged and stored. Times are microseconds since the Unix epoch, UTC.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredEvent {
    pub event_id: String,
    pub kind: String,
    pub version: i32,
    pub ts: i64,
    pub received_at: i64,
    pub user_id: Option<String>,
    /// The payload object as JSON text.
    pub payload: String,
    /// Whether the producer supplied `event_id` (only those take part in de-duplication).
    pub client_id: bool,
}

impl StoredEvent {
    /// Approximate bytes this event holds in memory and in files.
    pub fn size(&self) -> usize {
        self.event_id.len()
            + self.kind.len()
            + self.user_id.as_ref().map_or(0, |u| u.len())
            + self.payload.len()
            + 32
    }
}

/// Why one event was rejected.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Rejection {
    /// The event's place in the request (requests hold far fewer than 2^32 events).
    pub index: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
    pub code: &'static str,
    pub message: String,
    /// For a `schema_violation`: the JSON pointer of the failing payload value...
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pointer: Option<String>,
    /// ... and the schema keyword it fails.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// Kept in the tenant's dead-letter table (an `unknown_type` of a tenant that dead-letters
    /// them): not to be sent again.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub dead_lettered: bool,
}

impl Rejection {
    /// Event `index` refused for a reason other than its schema.
    pub(crate) fn plain(
        index: u32,
        event_id: Option<String>,
        code: &'static str,
        message: String,
    ) -> Self {
        Rejection {
            index,
            event_id,
            code,
            message,
            pointer: None,
            rule: None,
            dead_lettered: false,
        }
    }
}

/// Body framing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// A JSON object or an array of objects.
    Json,
    /// One JSON object per line.
    Ndjson,
}

/// Why a whole body was refused.
#[derive(Debug, Clone, PartialEq)]
pub enum BodyError {
    /// Not parseable as the declared framing.
    Malformed(String),
    /// More events than allowed.
    TooManyEvents { count: usize, max: usize },
}

/// Limits applied while parsing.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_event_bytes: usize,
    pub max_events: usize,
}

/// Splits a body into raw per-event JSON texts, without parsing the events themselves.
pub fn split_body(body: &[u8], framing: Framing, limits: Limits) -> Result<Vec<&str>, BodyError> {
    let text = std::str::from_utf8(body)
        .map_err(|e| BodyError::Malformed(format!("body is not UTF-8: {e}")))?;
    let items: Vec<&str> = match framing {
        Framing::Json => {
            let trimmed = text.trim_start();
            if trimmed.starts_with('[') {
                let raws: Vec<&RawValue> = serde_json::from_str(text)
                    .map_err(|e| BodyError::Malformed(format!("invalid JSON array: {e}")))?;
                raws.into_iter().map(|r| r.get()).collect()
            } else if trimmed.starts_with('{') {
                let raw: &RawValue = serde_json::from_str(text)
                    .map_err(|e| BodyError::Malformed(format!("invalid JSON object: {e}")))?;
                vec![raw.get()]
            } else {
                return Err(BodyError::Malformed(
                    "expected a JSON object or an array of objects".into(),
                ));
            }
        }
        Framing::Ndjson => text
            .split('\n')
            .map(|l| l.trim_end_matches('\r'))
            .filter(|l| !l.trim().is_empty())
            .collect(),
    };
    if items.len() > limits.max_events {
        return Err(BodyError::TooManyEvents {
            count: items.len(),
            max: limits.max_events,
        });
    }
    Ok(items)
}

/// A payload object: parsed, or its text.
enum Body<'a> {
    /// An object.
    Tree(Value),
    Text(&'a str),
}

const MAX_ID_LEN: usize = 256;

/// A `user_id` found in the payload: a string, or a number as its text.
fn user_in_payload(v: Option<Field>) -> Option<String> {
    match v? {
        Field::Str(s) => Some(s.into_owned()),
        Field::Num(n) => Some(n.to_string()),
        Field::Other => None,
    }
}

/// Validates one raw event for `tenant`, received at `received_at` (µs), its payload against
/// the tenant's `schemas`.
///
/// The payload is stored as sent, without the whitespace between its tokens; one in which an
/// object repeats a key is stored as parsed (keys in order, a repeated key's last value only,
/// the one a schema checked), so no stored payload repeats a key.
pub fn parse_event(
    index: usize,
    raw: &str,
    tenant: &str,
    received_at: i64,
    limits: Limits,
    schemas: &TenantSchemas,
) -> Result<StoredEvent, Rejection> {
    let index = u32::try_from(index).unwrap_or(u32::MAX);
    let reject = |event_id, code, message| Rejection::plain(index, event_id, code, message);
    if raw.len() > limits.max_event_bytes {
        return Err(reject(
            None,
            "event_too_large",
            format!(
                "event is {} bytes; the limit is {}",
                raw.len(),
                limits.max_event_bytes
            ),
        ));
    }
    let ev = Incoming::read(raw).map_err(|(code, message)| reject(None, code, message))?;
    judge(index, ev, tenant, received_at, schemas)
}

/// Judges the fields of event number `index` of a request.
fn judge(
    index: u32,
    ev: Incoming<'_>,
    tenant: &str,
    received_at: i64,
    schemas: &TenantSchemas,
) -> Result<StoredEvent, Rejection> {
    let reject = |event_id, code, message| Rejection::plain(index, event_id, code, message);
    let (event_id, client_id) = match ev.event_id {
        None => (uuid::Uuid::now_v7().to_string(), false),
        Some(Field::Str(s)) if !s.is_empty() && s.len() <= MAX_ID_LEN => (s.into_owned(), true),
        Some(_) => {
            return Err(reject(
                None,
                "invalid_event_id",
                format!("event_id must be a non-empty string of at most {MAX_ID_LEN} bytes"),
            ));
        }
    };
    let id = Some(event_id.clone()).filter(|_| client_id);
    match ev.tenant_id {
        None => {}
        Some(Field::Str(t)) if t == tenant => {}
        Some(Field::Str(t)) => {
            return Err(reject(
                id,
                "tenant_mismatch",
                format!("tenant_id {t:?} does not match the token's tenant"),
            ));
        }
        Some(_) => {
            return Err(reject(
                id,
                "invalid_tenant_id",
                "tenant_id must be a string".into(),
            ));
        }
    }
    let kind = match ev.kind {
        Some(Field::Str(s)) if !s.is_empty() && s.len() <= MAX_ID_LEN => s.into_owned(),
        None => {
            return Err(reject(id, "missing_field", "type is required".into()));
        }
        Some(_) => {
            return Err(reject(
                id,
                "invalid_type",
                format!("type must be a non-empty string of at most {MAX_ID_LEN} bytes"),
            ));
        }
    };
    let version = match ev.version {
        None => 1,
        Some(Field::Num(n)) => match n.as_i64() {
            Some(v) if (1..=i32::MAX as i64).contains(&v) => v as i32,
            _ => {
                return Err(reject(
                    id,
                    "invalid_version",
                    "version must be a positive integer".into(),
                ));
            }
        },
        Some(_) => {
            return Err(reject(
                id,
                "invalid_version",
                "version must be a positive integer".into(),
            ));
        }
    };
    let ts = match ev.timestamp {
        None => {
            return Err(reject(id, "missing_field", "timestamp is required".into()));
        }
        Some(v) => parse_timestamp(&v).map_err(|m| reject(id.clone(), "invalid_timestamp", m))?,
    };
    let (body, payload_user) = match ev.payload {
        Payload::Tree(None | Some(Value::Null)) | Payload::Text { raw: None, .. } => {
            (Body::Tree(Value::Object(serde_json::Map::new())), None)
        }
        Payload::Tree(Some(Value::Object(m))) => {
            let user = user_in_payload(m.get("user_id").and_then(Field::of));
            (Body::Tree(Value::Object(m)), user)
        }
        Payload::Text {
            raw: Some(r),
            user_id,
        } if r.get().starts_with('{') => (Body::Text(r.get()), user_in_payload(user_id)),
        Payload::Tree(Some(_)) | Payload::Text { .. } => {
            return Err(reject(
                id,
                "invalid_payload",
                "payload must be a JSON object".into(),
            ));
        }
    };
    let user_id = match ev.user_id {
        None => payload_user,
        Some(Field::Str(s)) if s.len() <= MAX_ID_LEN => Some(s.into_owned()),
        Some(Field::Num(n)) => Some(n.to_string()),
        Some(_) => {
            return Err(reject(
                id,
                "invalid_user_id",
                format!("user_id must be a string of at most {MAX_ID_LEN} bytes"),
            ));
        }
    };
    let refuse = |v: Violation| Rejection {
        index,
        event_id: id.clone(),
        code: v.code,
        message: v.message,
        pointer: v.pointer,
        rule: v.rule,
        dead_lettered: v.dead_letter,
    };
    let invalid = |e: serde_json::Error| reject(id.clone(), "invalid_payload", e.to_string());
    if let Some(validator) = schemas.validator(&kind, version).map_err(refuse)? {
        let checked = match &body {
            Body::Tree(tree) => validate(validator, &kind, version, tree),
            Body::Text(text) => {
                let tree = serde_json::from_str(text).map_err(invalid)?;
                validate(validator, &kind, version, &tree)
            }
        };
        checked.map_err(refuse)?;
    }
    let payload = match body {
        Body::Text(text) => match stored_form(text) {
            Some(stored) => stored.into_owned(),
            None => serde_json::from_str::<Value>(text)
                .and_then(|tree| serde_json::to_string(&tree))
                .map_err(invalid)?,
        },
        Body::Tree(tree) => serde_json::to_string(&tree).map_err(invalid)?,
    };
    Ok(StoredEvent {
        event_id,
        kind,
        version,
        ts,
        received_at,
        user_id,
        payload,
        client_id,
    })
}

/// Earliest and latest accepted event time: years 1900 to 9999.
const MIN_TS_US: i64 = -2_208_988_800_000_000;
const MAX_TS_US: i64 = 253_402_300_799_999_999;

/// Unix seconds or milliseconds (told apart by magnitude: 10^11 and above is milliseconds),
/// or RFC 3339 text. Returns microseconds.
fn parse_timestamp(v: &Field) -> Result<i64, String> {
    let us = match v {
        Field::Num(n) => {
            let f = n
                .as_f64()
                .ok_or_else(|| "timestamp is not a finite number".to_string())?;
            if !f.is_finite() {
                return Err("timestamp is not a finite number".into());
            }
            if f.abs() >= 1e11 {
                match n.as_i64() {
                    Some(ms) => ms.checked_mul(1000).ok_or("timestamp out of range")?,
                    None => (f * 1e3).round() as i64,
                }
            } else {
                match n.as_i64() {
                    Some(s) => s * 1_000_000,
                    None => (f * 1e6).round() as i64,
                }
            }
        }
        Field::Str(s) => chrono::DateTime::parse_from_rfc3339(s)
            .map_err(|e| format!("timestamp {s:?} is not RFC 3339: {e}"))?
            .timestamp_micros(),
        Field::Other => {
            return Err("timestamp must be a number (Unix s or ms) or an RFC 3339 string".into());
        }
    };
    if !(MIN_TS_US..=MAX_TS_US).contains(&us) {
        return Err("timestamp is outside the years 1900 to 9999".into());
    }
    Ok(us)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn none() -> TenantSchemas {
        TenantSchemas::none()
    }

    fn parse_timestamp(v: Value) -> Result<i64, String> {
        super::parse_timestamp(&Field::of(&v).expect("not null"))
    }

    const L: Limits = Limits {
        max_event_bytes: 1 << 20,
        max_events: 10,
    };

    #[test]
    fn three_timestamp_forms_agree() {
        let s = parse_timestamp(json!(1_764_150_000)).unwrap();
        let ms = parse_timestamp(json!(1_764_150_000_000i64)).unwrap();
        let rfc = parse_timestamp(json!("2025-11-26T09:40:00Z")).unwrap();
        let rfc_offset = parse_timestamp(json!("2025-11-26T10:40:00+01:00")).unwrap();
        assert_eq!(s, 1_764_150_000_000_000);
        assert_eq!(s, ms);
        assert_eq!(s, rfc);
        assert_eq!(s, rfc_offset);
        assert_eq!(parse_timestamp(json!(1.5)).unwrap(), 1_500_000);
        assert!(parse_timestamp(json!("yesterday")).is_err());
        assert!(parse_timestamp(json!(true)).is_err());
        assert!(parse_timestamp(json!(1e300)).is_err());
    }

    #[test]
    fn event_fields_are_validated() {
        let ok = parse_event(
            0,
            r#"{"event_id":"e1","type":"PageViewed","timestamp":1764150000,
                "payload":{"page":"/","user_id":"u-1"}}"#,
            "acme",
            7,
            L,
            &none(),
        )
        .unwrap();
        assert_eq!(ok.event_id, "e1");
        assert_eq!(ok.user_id.as_deref(), Some("u-1"));
        assert_eq!(ok.version, 1);
        assert_eq!(ok.received_at, 7);
        assert!(ok.client_id);

        let cases = [
            (r#"{"timestamp":1}"#, "missing_field"),
            (r#"{"type":"A"}"#, "missing_field"),
            (r#"{"type":5,"timestamp":1}"#, "invalid_type"),
            (r#"{"type":"A","timestamp":"x"}"#, "invalid_timestamp"),
            (
                r#"{"type":"A","timestamp":1,"tenant_id":"other"}"#,
                "tenant_mismatch",
            ),
            (
                r#"{"type":"A","timestamp":1,"version":0}"#,
                "invalid_version",
            ),
            (
                r#"{"type":"A","timestamp":1,"payload":[1]}"#,
                "invalid_payload",
            ),
            (
                r#"{"type":"A","timestamp":1,"event_id":""}"#,
                "invalid_event_id",
            ),
            (r#"[1]"#, "not_an_object"),
            (r#"{"type":"A","timestamp":1"#, "malformed_json"),
        ];
        for (raw, code) in cases {
            let r = parse_event(3, raw, "acme", 0, L, &none()).unwrap_err();
            assert_eq!(r.code, code, "{raw}");
            assert_eq!(r.index, 3);
        }
        let big = format!(
            r#"{{"type":"A","timestamp":1,"payload":{{"x":"{}"}}}}"#,
            "a".repeat(100)
        );
        let small = Limits {
            max_event_bytes: 50,
            max_events: 10,
        };
        assert_eq!(
            parse_event(0, &big, "acme", 0, small, &none())
                .unwrap_err()
                .code,
            "event_too_large"
        );
    }

    /// The stored event when `raw` is read through its tree, as every event was before the
    /// one-pass reading.
    fn through_the_tree(raw: &str, schemas: &TenantSchemas) -> Result<StoredEvent, Rejection> {
        let ev = Incoming::read_tree(raw)
            .map_err(|(code, message)| Rejection::plain(0, None, code, message))?;
        judge(0, ev, "acme", 7, schemas)
    }

    #[test]
    fn one_pass_reads_what_the_tree_reads() {
        let amount = TenantSchemas::one(
            "PurchaseMade",
            &json!({"type": "object", "properties": {"amount": {"type": "number"}}}),
        );
        let events = [
            r#"{"event_id":"e1","type":"PageViewed","timestamp":1764150000,"payload":{"page":"/","user_id":"u-1"}}"#,
            r#" { "event_id" : "e2", "type":"A", "timestamp":"2025-11-26T09:40:00Z", "payload" : { "b" : [1, 2], "a" : "x y \" z\\" } } "#,
            r#"{"event_id":"e3","type":"A","timestamp":1,"user_id":42,"version":3,"tenant_id":"acme"}"#,
            r#"{"event_id":"e4","type":"A","timestamp":1,"payload":{"user_id":7,"n":{"user_id":"inner"}}}"#,
            r#"{"event_id":"e5","type":"A","timestamp":1,"user_id":null,"payload":null,"extra":{"deep":[{}]}}"#,
            r#"{"event_id":"e6","type":"A","timestamp":1,"payload":{"user_id":"a","user_id":"b"}}"#,
            r#"{"event_id":"e7","type":"A","type":"B","timestamp":1}"#,
            r#"{"event_id":"e8","type":"PurchaseMade","timestamp":1,"payload":{"amount":3,"amount":2.5}}"#,
            r#"{"event_id":"e9","type":"PurchaseMade","timestamp":1,"payload":{"amount":"3"}}"#,
            r#"{"event_id":"e10","type":"A","timestamp":1,"payload":[1]}"#,
            r#"{"event_id":"e11","type":"A","timestamp":1,"tenant_id":"other"}"#,
            r#"{"event_id":"e12","type":"A","timestamp":1,"payload":{"s":"\u00e9\n"}}"#,
        ];
        for (i, raw) in events.iter().enumerate() {
            // Only a repeated field (of the event, or the payload's user_id read from it)
            // sends an event through its tree.
            let repeats = [5, 6].contains(&i);
            assert_eq!(Incoming::read_envelope(raw).is_none(), repeats, "{raw}");
            let fast = parse_event(0, raw, "acme", 7, L, &amount);
            let tree = through_the_tree(raw, &amount);
            match (fast, tree) {
                (Ok(mut fast), Ok(mut tree)) => {
                    let payload = |e: &StoredEvent| -> Value {
                        serde_json::from_str(&e.payload).expect("stored payloads are JSON")
                    };
                    assert_eq!(payload(&fast), payload(&tree), "{raw}");
                    assert!(!fast.payload.contains(": ") && !fast.payload.contains(", "));
                    fast.payload.clear();
                    tree.payload.clear();
                    assert_eq!(fast, tree, "{raw}");
                }
                (Err(fast), Err(tree)) => assert_eq!(fast.code, tree.code, "{raw}"),
                (fast, tree) => panic!("{raw}: one pass {fast:?}, tree {tree:?}"),
            }
        }
    }

    #[test]
    fn a_payload_with_a_lone_surrogate_escape_is_refused() {
        // The envelope's reader takes any four hex digits after `\u` in the payload it keeps
        // as text; a surrogate without its pair was stored, and every reader of the payload
        // then refused it (a property test of `tests/props.rs` found `"20\ud80025…"`).
        for payload in [r#""20\ud80025""#, r#""\udc00""#, r#"{"s":["\ud800\n"]}"#] {
            let raw = format!(r#"{{"type":"A","timestamp":1,"payload":{{"s":{payload}}}}}"#);
            let r = parse_event(0, &raw, "acme", 0, L, &none()).unwrap_err();
            assert_eq!(r.code, "invalid_payload", "{raw}: {}", r.message);
            // The parser's own words ("unexpected end of hex escape", "lone leading
            // surrogate in hex escape").
            assert!(r.message.contains("hex escape"), "{raw}: {}", r.message);
        }
        // A pair is a character, stored as written; an escaped backslash before `u` is text.
        let raw = r#"{"type":"A","timestamp":1,"payload":{"s":"\ud83d\ude00 \\ud800"}}"#;
        let e = parse_event(0, raw, "acme", 0, L, &none()).unwrap();
        assert_eq!(e.payload, r#"{"s":"\ud83d\ude00 \\ud800"}"#);
        let stored: Value = serde_json::from_str(&e.payload).unwrap();
        assert_eq!(stored["s"], "\u{1F600} \\ud800");
    }

    #[test]
    fn a_payload_with_a_number_past_a_doubles_range_is_refused() {
        // The envelope's reader takes any exponent in the payload it keeps as text; `1e999`
        // was stored, and every reader of the payload then refused it (a property test of
        // `tests/props.rs` found `[631e99937827744286325073]`).
        let long = "9".repeat(400);
        for number in [
            "1e999",
            "631e99937827744286325073",
            "-1.5E+400",
            long.as_str(),
        ] {
            let raw = format!(r#"{{"type":"A","timestamp":1,"payload":{{"n":[{number}]}}}}"#);
            let r = parse_event(0, &raw, "acme", 0, L, &none()).unwrap_err();
            assert_eq!(r.code, "invalid_payload", "{raw}: {}", r.message);
            assert!(
                r.message.contains("number out of range"),
                "{raw}: {}",
                r.message
            );
        }
        // Within it, a number is stored as written.
        let raw = r#"{"type":"A","timestamp":1,"payload":{"n":[1.5e-3, -1E308, 1e-999]}}"#;
        let e = parse_event(0, raw, "acme", 0, L, &none()).unwrap();
        assert_eq!(e.payload, r#"{"n":[1.5e-3,-1E308,1e-999]}"#);
    }

    #[test]
    fn payloads_are_stored_as_sent_without_the_spaces_between_tokens() {
        let raw = r#"{"type":"A","timestamp":1,"payload": { "b" : [1, 2],
            "a" : "x y \" z\\" }}"#;
        let e = parse_event(0, raw, "acme", 0, L, &none()).unwrap();
        assert_eq!(e.payload, r#"{"b":[1,2],"a":"x y \" z\\"}"#);
        let e = parse_event(0, r#"{"type":"A","timestamp":1}"#, "acme", 0, L, &none()).unwrap();
        assert_eq!(e.payload, "{}");
        // No stored payload repeats a key (SQL's JSON functions read a repeated key's first
        // value, erasure its last): such a payload is stored as parsed, the last value kept.
        let keys: Vec<String> = (0..40).map(|i| format!(r#""k{}":{i}"#, 39 - i)).collect();
        let many = format!(r#"{{{}}}"#, keys.join(","));
        for (payload, stored) in [
            (r#"{"b":1,"a":{"x":1,"x":2}}"#, r#"{"a":{"x":2},"b":1}"#),
            (r#"{"b":1, "b":2}"#, r#"{"b":2}"#),
            (
                r#"{"a":[{"u":1},{"u":2,"v":{"u":3}}]}"#,
                r#"{"a":[{"u":1},{"u":2,"v":{"u":3}}]}"#,
            ),
            (&many, &many),
            (&format!(r#"{{{},"k7":0}}"#, keys.join(",")), ""),
        ] {
            let raw = format!(r#"{{"type":"A","timestamp":1,"payload":{payload}}}"#);
            let e = parse_event(0, &raw, "acme", 0, L, &none()).unwrap();
            if stored.is_empty() {
                let v: Value = serde_json::from_str(&e.payload).unwrap();
                assert_eq!(v["k7"], json!(0), "the last value of a repeated key");
                assert!(e.payload.starts_with(r#"{"k0":39,"#), "stored as parsed");
            } else {
                assert_eq!(e.payload, stored);
            }
        }
        // A repeated key's last value is the one a schema checked, and the one stored.
        let amount = TenantSchemas::one(
            "P",
            &json!({"type": "object", "properties": {"amount": {"type": "number"}}}),
        );
        let raw = r#"{"type":"P","timestamp":1,"payload":{"amount":"x","amount":1}}"#;
        let e = parse_event(0, raw, "acme", 0, L, &amount).unwrap();
        assert_eq!(e.payload, r#"{"amount":1}"#);
        let raw = r#"{"type":"P","timestamp":1,"payload":{"z":null, "amount":1.50}}"#;
        let e = parse_event(0, raw, "acme", 0, L, &amount).unwrap();
        assert_eq!(
            e.payload, r#"{"z":null,"amount":1.50}"#,
            "checked, and stored as sent"
        );
        let raw = r#"{"type":"P","timestamp":1,"payload":{"amount":1,"amount":"x"}}"#;
        let r = parse_event(0, raw, "acme", 0, L, &amount).unwrap_err();
        assert_eq!(r.code, "schema_violation");
    }

    #[test]
    fn a_payload_nested_past_the_parser_depth_is_refused_not_stored() {
        // The envelope's one pass skips the payload without recursing; the walk for repeated
        // keys stops at the parser's depth, and the payload's tree is refused there.
        let deep = format!("{}1{}", r#"{"a":"#.repeat(5000), "}".repeat(5000));
        let raw = format!(r#"{{"type":"A","timestamp":1,"payload":{deep}}}"#);
        let r = parse_event(0, &raw, "acme", 0, L, &none()).unwrap_err();
        assert_eq!(r.code, "invalid_payload", "{}", r.message);
        // A deep field the event does not keep is skipped, also without recursing.
        let raw = format!(r#"{{"type":"A","timestamp":1,"extra":{deep}}}"#);
        assert_eq!(
            parse_event(0, &raw, "acme", 0, L, &none()).unwrap().payload,
            "{}"
        );
    }

    #[test]
    fn missing_event_id_gets_a_server_id() {
        let e = parse_event(0, r#"{"type":"A","timestamp":1}"#, "acme", 0, L, &none()).unwrap();
        assert!(!e.client_id);
        assert_eq!(e.event_id.len(), 36);
    }

    #[test]
    fn bodies_split_by_framing() {
        let one = split_body(br#"{"a":1}"#, Framing::Json, L).unwrap();
        assert_eq!(one, vec![r#"{"a":1}"#]);
        let arr = split_body(br#"[{"a":1}, {"b":2}]"#, Framing::Json, L).unwrap();
        assert_eq!(arr.len(), 2);
        let nd = split_body(b"{\"a\":1}\r\n\n{\"b\":2}\n", Framing::Ndjson, L).unwrap();
        assert_eq!(nd, vec![r#"{"a":1}"#, r#"{"b":2}"#]);
        assert!(matches!(
            split_body(b"[{\"a\":1}", Framing::Json, L),
            Err(BodyError::Malformed(_))
        ));
        assert!(matches!(
            split_body(b"42", Framing::Json, L),
            Err(BodyError::Malformed(_))
        ));
        let many = format!("[{}]", ["{}"; 11].join(","));
        assert_eq!(
            split_body(many.as_bytes(), Framing::Json, L),
            Err(BodyError::TooManyEvents { count: 11, max: 10 })
        );
    }
}
