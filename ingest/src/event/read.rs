//! Reading an event's fields from its JSON text, before they are judged.
//!
//! An event is read in one pass over its text: each field of the envelope is taken as the
//! little that judging it needs (a string, borrowed from the text where it has no escapes, a
//! number, or the mere fact that it is something else), and the payload is kept as its text.
//! No tree of the event or of its payload is built; the payload is parsed only if a schema
//! checks it. An event that repeats a field, or is not valid JSON, is read through its tree
//! instead, as every event once was: a repeated field's last value counts, and malformed text
//! gets the parser's message.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;
use std::marker::PhantomData;

use serde::Deserialize;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::{Number, Value};

/// One field of the envelope, as judging it needs it. A JSON `null` is no field (`None`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) enum Field<'a> {
    Str(Cow<'a, str>),
    Num(Number),
    /// A boolean, an array or an object: judged by its kind only.
    Other,
}

impl Field<'_> {
    /// `v` as a field (`None` for JSON `null`).
    pub(super) fn of(v: &Value) -> Option<Field<'_>> {
        match v {
            Value::Null => None,
            Value::String(s) => Some(Field::Str(Cow::Borrowed(s))),
            Value::Number(n) => Some(Field::Num(n.clone())),
            Value::Bool(_) | Value::Array(_) | Value::Object(_) => Some(Field::Other),
        }
    }

    /// `v` as a field that owns its text.
    fn owned(v: Value) -> Option<Field<'static>> {
        match v {
            Value::Null => None,
            Value::String(s) => Some(Field::Str(Cow::Owned(s))),
            Value::Number(n) => Some(Field::Num(n)),
            Value::Bool(_) | Value::Array(_) | Value::Object(_) => Some(Field::Other),
        }
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Field<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Field<'a>, D::Error> {
        struct Of<'a>(PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for Of<'a> {
            type Value = Field<'a>;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Field<'a>, E> {
                Ok(Field::Str(Cow::Borrowed(s)))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Field<'a>, E> {
                Ok(Field::Str(Cow::Owned(s.to_owned())))
            }
            fn visit_string<E: de::Error>(self, s: String) -> Result<Field<'a>, E> {
                Ok(Field::Str(Cow::Owned(s)))
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<Field<'a>, E> {
                Ok(Field::Num(n.into()))
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<Field<'a>, E> {
                Ok(Field::Num(n.into()))
            }
            fn visit_f64<E: de::Error>(self, n: f64) -> Result<Field<'a>, E> {
                Number::from_f64(n)
                    .map(Field::Num)
                    .ok_or_else(|| E::custom("a number JSON cannot hold"))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Field<'a>, E> {
                Ok(Field::Other)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Field<'a>, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Field::Other)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Field<'a>, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Field::Other)
            }
        }
        d.deserialize_any(Of(PhantomData))
    }
}

/// An event's fields as sent.
pub(super) struct Incoming<'a> {
    pub event_id: Option<Field<'a>>,
    pub tenant_id: Option<Field<'a>>,
    pub kind: Option<Field<'a>>,
    pub version: Option<Field<'a>>,
    pub timestamp: Option<Field<'a>>,
    pub user_id: Option<Field<'a>>,
    pub payload: Payload<'a>,
}

/// The payload as read: a tree, or its text and its `user_id` (read only when the envelope
/// has none).
pub(super) enum Payload<'a> {
    Tree(Option<Value>),
    Text {
        raw: Option<&'a RawValue>,
        user_id: Option<Field<'a>>,
    },
}

/// The envelope, read in one pass.
#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    event_id: Option<Field<'a>>,
    #[serde(borrow)]
    tenant_id: Option<Field<'a>>,
    #[serde(borrow, rename = "type")]
    kind: Option<Field<'a>>,
    #[serde(borrow)]
    version: Option<Field<'a>>,
    #[serde(borrow)]
    timestamp: Option<Field<'a>>,
    #[serde(borrow)]
    user_id: Option<Field<'a>>,
    #[serde(borrow)]
    payload: Option<&'a RawValue>,
}

/// A payload's `user_id`, the rest of the payload skipped.
#[derive(Deserialize)]
struct PayloadUser<'a> {
    #[serde(borrow)]
    user_id: Option<Field<'a>>,
}

/// The envelope's fields from the event's tree.
#[derive(Deserialize)]
struct Tree {
    event_id: Option<Value>,
    tenant_id: Option<Value>,
    #[serde(rename = "type")]
    kind: Option<Value>,
    version: Option<Value>,
    timestamp: Option<Value>,
    user_id: Option<Value>,
    payload: Option<Value>,
}

impl<'a> Incoming<'a> {
    /// Reads `raw`'s fields; the error is a rejection's code and message.
    pub(super) fn read(raw: &'a str) -> Result<Incoming<'a>, (&'static str, String)> {
        if raw.trim_start().starts_with('{')
            && let Some(ev) = Incoming::read_envelope(raw)
        {
            return Ok(ev);
        }
        Incoming::read_tree(raw)
    }

    /// Reads `raw` in one pass; `None` when it is not valid JSON or repeats a field (of the
    /// event, or `user_id` in the payload when it is read from there).
    pub(super) fn read_envelope(raw: &'a str) -> Option<Incoming<'a>> {
        let e: Envelope = serde_json::from_str(raw).ok()?;
        let user_id = match (&e.user_id, e.payload) {
            (None, Some(p)) if p.get().starts_with('{') => {
                serde_json::from_str::<PayloadUser>(p.get()).ok()?.user_id
            }
            _ => None,
        };
        Some(Incoming {
            event_id: e.event_id,
            tenant_id: e.tenant_id,
            kind: e.kind,
            version: e.version,
            timestamp: e.timestamp,
            user_id: e.user_id,
            payload: Payload::Text {
                raw: e.payload,
                user_id,
            },
        })
    }

    /// Reads `raw` through its tree.
    pub(super) fn read_tree(raw: &'a str) -> Result<Incoming<'a>, (&'static str, String)> {
        let value: Value = serde_json::from_str(raw)
            .map_err(|e| ("malformed_json", format!("invalid JSON: {e}")))?;
        if !value.is_object() {
            return Err(("not_an_object", "an event must be a JSON object".into()));
        }
        let t: Tree = serde_json::from_value(value)
            .map_err(|e| ("malformed_json", format!("invalid event: {e}")))?;
        Ok(Incoming {
            event_id: t.event_id.and_then(Field::owned),
            tenant_id: t.tenant_id.and_then(Field::owned),
            kind: t.kind.and_then(Field::owned),
            version: t.version.and_then(Field::owned),
            timestamp: t.timestamp.and_then(Field::owned),
            user_id: t.user_id.and_then(Field::owned),
            payload: Payload::Tree(t.payload),
        })
    }
}

/// Whether no object in `json` repeats a key. Such a payload is stored as sent: readers that
/// take a repeated key's first value (SQL's JSON functions) and those that take its last
/// (erasure, schemas) would otherwise see different values in it.
pub(super) fn repeats_no_key(json: &str) -> bool {
    serde_json::from_str::<NoRepeats>(json).is_ok()
}

/// Objects with more keys than this are checked with a hash set rather than by comparing each
/// key with those before it.
const FEW_KEYS: usize = 16;

/// A JSON value walked without being kept; refused if an object in it repeats a key.
struct NoRepeats;

impl<'de> Deserialize<'de> for NoRepeats {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<NoRepeats, D::Error> {
        struct Walk;
        impl<'de> Visitor<'de> for Walk {
            type Value = NoRepeats;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<NoRepeats, E> {
                Ok(NoRepeats)
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<NoRepeats, E> {
                Ok(NoRepeats)
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<NoRepeats, E> {
                Ok(NoRepeats)
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<NoRepeats, E> {
                Ok(NoRepeats)
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<NoRepeats, E> {
                Ok(NoRepeats)
            }
            fn visit_unit<E: de::Error>(self) -> Result<NoRepeats, E> {
                Ok(NoRepeats)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<NoRepeats, A::Error> {
                while seq.next_element::<NoRepeats>()?.is_some() {}
                Ok(NoRepeats)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<NoRepeats, A::Error> {
                let mut few: Vec<Field<'de>> = Vec::new();
                let mut many: HashSet<Field<'de>> = HashSet::new();
                while let Some(key) = map.next_key::<Field<'de>>()? {
                    let repeated = if many.is_empty() && few.len() < FEW_KEYS {
                        let seen = few.contains(&key);
                        few.push(key);
                        seen
                    } else {
                        many.extend(few.drain(..));
                        !many.insert(key)
                    };
                    if repeated {
                        return Err(de::Error::custom("a repeated key"));
                    }
                    map.next_value::<NoRepeats>()?;
                }
                Ok(NoRepeats)
            }
        }
        d.deserialize_any(Walk)
    }
}

/// `json` (valid JSON text) without the whitespace between its tokens.
pub(super) fn compact(json: &str) -> Cow<'_, str> {
    let space = |b: u8| matches!(b, b' ' | b'\t' | b'\n' | b'\r');
    if !json.bytes().any(space) {
        return Cow::Borrowed(json);
    }
    let mut out = Vec::with_capacity(json.len());
    let (mut in_string, mut escaped) = (false, false);
    for b in json.bytes() {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
        } else if b == b'"' {
            in_string = true;
        } else if space(b) {
            continue;
        }
        out.push(b);
    }
    // Only ASCII bytes were left out, so the text is still UTF-8.
    match String::from_utf8(out) {
        Ok(text) => Cow::Owned(text),
        Err(e) => Cow::Owned(String::from_utf8_lossy(e.as_bytes()).into_owned()),
    }
}
