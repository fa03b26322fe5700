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

/// A payload's valid JSON text as it is stored: without the whitespace between its tokens, or
/// `None` when an object in it repeats a key (such a payload is stored as parsed instead:
/// readers that take a repeated key's first value, SQL's JSON functions, and those that take
/// its last, erasure and schemas, would otherwise see different values in it).
///
/// One pass over the text checks the keys and drops the whitespace. A key written with an
/// escape (`"\u0061"` is `"a"`), an object of more than [`FEW_KEYS`] keys, more than
/// [`OPEN_KEYS`] keys in the objects open at once, and a value nested [`DEEP`] are left to the
/// parser's walk ([`repeats_no_key`]) and [`compact`], two passes.
pub(super) fn stored_form(json: &str) -> Option<Cow<'_, str>> {
    match one_pass(json) {
        OnePass::Stored(text) => Some(text),
        OnePass::Repeats => None,
        OnePass::Unsure => repeats_no_key(json).then(|| compact(json)),
    }
}

/// Containers nested this deep are left to the parser, which refuses a payload past its own
/// depth (128): readers parse what is stored.
const DEEP: usize = 64;
/// Keys of the objects open at once that the one pass holds; more are left to the parser.
const OPEN_KEYS: usize = 32;
/// An open array, where an object has the start of its keys.
const ARRAY: u8 = u8::MAX;
const _: () = assert!(OPEN_KEYS < ARRAY as usize);

enum OnePass<'a> {
    Stored(Cow<'a, str>),
    Repeats,
    /// A key with an escape, an object of many keys, a deep value, or text that is not valid
    /// JSON.
    Unsure,
}

fn one_pass(json: &str) -> OnePass<'_> {
    let bytes = json.as_bytes();
    // The text so far less its whitespace, once some was found.
    let mut out: Option<Vec<u8>> = None;
    // The keys of the objects open, innermost last, and for each open container where its keys
    // start in `keys` (`ARRAY`: an array). On the stack: a payload costs no allocation here.
    let (mut keys, mut n_keys) = ([""; OPEN_KEYS], 0);
    let (mut open, mut depth) = ([0u8; DEEP], 0usize);
    let mut key_next = false;
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'"' => {
                let (mut end, mut escaped, mut code_units) = (i + 1, false, false);
                loop {
                    match bytes.get(end) {
                        None => return OnePass::Unsure,
                        Some(b'"') => break,
                        Some(b'\\') => {
                            escaped = true;
                            code_units |= bytes.get(end + 1) == Some(&b'u');
                            end += 2;
                        }
                        Some(_) => end += 1,
                    }
                }
                if code_units && !surrogates_paired(&bytes[i + 1..end]) {
                    return OnePass::Unsure;
                }
                if key_next {
                    let first = match depth.checked_sub(1).map(|d| open[d]) {
                        Some(first) if first != ARRAY => usize::from(first),
                        _ => return OnePass::Unsure,
                    };
                    if escaped || n_keys - first == FEW_KEYS || n_keys == OPEN_KEYS {
                        return OnePass::Unsure;
                    }
                    let key = &json[i + 1..end];
                    if keys[first..n_keys].contains(&key) {
                        return OnePass::Repeats;
                    }
                    keys[n_keys] = key;
                    n_keys += 1;
                    key_next = false;
                }
                if let Some(out) = out.as_mut() {
                    out.extend_from_slice(&bytes[i..=end]);
                }
                i = end + 1;
                continue;
            }
            b' ' | b'\t' | b'\n' | b'\r' => {
                if out.is_none() {
                    let mut text = Vec::with_capacity(json.len());
                    text.extend_from_slice(&bytes[..i]);
                    out = Some(text);
                }
                i += 1;
                continue;
            }
            b'{' | b'[' if depth == DEEP => return OnePass::Unsure,
            b'{' => {
                // `n_keys` is below OPEN_KEYS, which fits in a byte below ARRAY.
                open[depth] = n_keys as u8;
                depth += 1;
                key_next = true;
            }
            b'[' => {
                open[depth] = ARRAY;
                depth += 1;
            }
            b'}' | b']' if depth > 0 => {
                depth -= 1;
                if open[depth] != ARRAY {
                    n_keys = usize::from(open[depth]);
                }
            }
            b',' => key_next = depth > 0 && open[depth - 1] != ARRAY,
            b'-' | b'0'..=b'9' => {
                let end = bytes[i..]
                    .iter()
                    .position(|b| !matches!(b, b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E'))
                    .map_or(bytes.len(), |n| i + n);
                if !in_range(&bytes[i..end]) {
                    return OnePass::Unsure;
                }
                if let Some(out) = out.as_mut() {
                    out.extend_from_slice(&bytes[i..end]);
                }
                i = end;
                continue;
            }
            _ => {}
        }
        if let Some(out) = out.as_mut() {
            out.push(b);
        }
        i += 1;
    }
    match out {
        None => OnePass::Stored(Cow::Borrowed(json)),
        // Only ASCII bytes were left out, so the text is still UTF-8.
        Some(text) => match String::from_utf8(text) {
            Ok(text) => OnePass::Stored(Cow::Owned(text)),
            Err(_) => OnePass::Unsure,
        },
    }
}

/// Whether a JSON number's text is a finite double. The grammar takes any exponent, and so did
/// the reading of the envelope, which keeps the payload as its text; readers of the stored
/// payload refuse a number past a double's range (`1e999`, or an integer of 309 digits). Only
/// a number with an exponent or of many digits can be past it, and only those are parsed.
fn in_range(number: &[u8]) -> bool {
    if number.len() < 300 && !number.iter().any(|b| matches!(b, b'e' | b'E')) {
        return true;
    }
    std::str::from_utf8(number)
        .ok()
        .and_then(|n| n.parse::<f64>().ok())
        .is_some_and(f64::is_finite)
}

/// Whether the `\u` escapes in a JSON string's text (between its quotes) that stand for
/// UTF-16 surrogates come in pairs, a high one then a low one. JSON's grammar takes any four
/// hex digits, and so did the reading of the envelope, which keeps the payload as its text;
/// a lone surrogate is no character, and readers of the stored payload refuse it.
fn surrogates_paired(text: &[u8]) -> bool {
    let mut high = false;
    let mut i = 0;
    while i < text.len() {
        let unit = match text[i..] {
            [b'\\', b'u', a, b, c, d, ..] => std::str::from_utf8(&[a, b, c, d])
                .ok()
                .and_then(|hex| u16::from_str_radix(hex, 16).ok()),
            _ => None,
        };
        let Some(unit) = unit else {
            if high {
                return false;
            }
            // Any other escape is two bytes: skipping both keeps `\\u` from reading as `\u`.
            i += if text[i] == b'\\' { 2 } else { 1 };
            continue;
        };
        match unit {
            0xD800..=0xDBFF if !high => high = true,
            0xDC00..=0xDFFF if high => high = false,
            0xD800..=0xDFFF => return false,
            _ if high => return false,
            _ => {}
        }
        i += 6;
    }
    !high
}

/// Whether no object in `json` repeats a key.
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// What the one pass must answer: the parser's walk, then the whitespace dropped.
    fn two_passes(json: &str) -> Option<String> {
        repeats_no_key(json).then(|| compact(json).into_owned())
    }

    fn space() -> impl Strategy<Value = &'static str> {
        prop::sample::select(vec!["", "", " ", "\n  ", "\t", "\r\n"])
    }

    /// Keys that repeat often, one the same as another once its escape is read, and some with
    /// escapes or letters beyond ASCII.
    fn key() -> impl Strategy<Value = &'static str> {
        prop::sample::select(vec![
            r#""a""#,
            r#""b""#,
            r#""a b""#,
            r#""\u0061""#,
            r#""q\"""#,
            r#""é""#,
            r#""\\""#,
        ])
    }

    /// JSON text with whitespace between its tokens and objects that may repeat a key.
    fn json_text() -> impl Strategy<Value = String> {
        let leaf = prop::sample::select(vec![
            "1",
            "-2.5e3",
            "true",
            "null",
            r#""a b""#,
            r#""{\"a\": 1, \"a\": 2}""#,
            r#""é\n""#,
            r#""\\""#,
        ])
        .prop_map(str::to_string);
        leaf.prop_recursive(4, 64, 6, |inner| {
            prop_oneof![
                prop::collection::vec((space(), key(), space(), inner.clone()), 0..6).prop_map(
                    |members| {
                        let members: Vec<String> = members
                            .into_iter()
                            .map(|(s, k, t, v)| format!("{s}{k}{t}:{s}{v}{t}"))
                            .collect();
                        format!("{{{}}}", members.join(","))
                    }
                ),
                prop::collection::vec((space(), inner), 0..5).prop_map(|items| {
                    let items: Vec<String> = items
                        .into_iter()
                        .map(|(s, v)| format!("{s}{v}{s}"))
                        .collect();
                    format!("[{}]", items.join(","))
                }),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2048, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn one_pass_answers_as_the_parsers_walk_and_compact(text in json_text()) {
            prop_assume!(serde_json::from_str::<serde_json::Value>(&text).is_ok());
            prop_assert_eq!(stored_form(&text).map(Cow::into_owned), two_passes(&text));
        }
    }

    #[test]
    fn plain_keys_are_judged_in_the_one_pass() {
        let stored = |json| match one_pass(json) {
            OnePass::Stored(text) => Some(text.into_owned()),
            OnePass::Repeats => None,
            OnePass::Unsure => panic!("{json} left to the parser"),
        };
        assert_eq!(
            stored(r#"{"page": "/home", "ref": {"a": [1, {"a": 2}]}}"#).as_deref(),
            Some(r#"{"page":"/home","ref":{"a":[1,{"a":2}]}}"#)
        );
        // Nothing to drop: the text itself, not a copy.
        assert!(matches!(
            one_pass(r#"{"a":1}"#),
            OnePass::Stored(Cow::Borrowed(_))
        ));
        // Sibling objects may use the same keys; one object may not.
        assert!(stored(r#"[{"a":1},{"a":2}]"#).is_some());
        assert_eq!(stored(r#"{"x": {"a":1}, "y": 2, "x": 3}"#), None);
        assert_eq!(
            stored(r#"{"s": "a, \"a\": 1", "a": 2}"#).as_deref(),
            Some(r#"{"s":"a, \"a\": 1","a":2}"#)
        );
    }

    #[test]
    fn lone_surrogates_are_left_to_the_parser() {
        for lone in [
            r#"{"s":"20\ud80025"}"#,
            r#"{"s":"\ud800"}"#,
            r#"{"s":"\udc00\ud800"}"#,
            r#"{"s":"\ud800\u0041"}"#,
            r#"{"s":"\ud800\n"}"#,
            r#"{"s":"\ud83d\ud83d\ude00"}"#,
        ] {
            assert!(matches!(one_pass(lone), OnePass::Unsure), "{lone}");
            assert_eq!(stored_form(lone), None, "{lone}");
        }
        for paired in [
            r#"{"s":"\ud83d\ude00"}"#,
            r#"{"s":"\\ud800 \u00e9\uDBFF\uDFFF"}"#,
        ] {
            assert!(matches!(one_pass(paired), OnePass::Stored(_)), "{paired}");
        }
    }

    #[test]
    fn numbers_past_a_doubles_range_are_left_to_the_parser() {
        let long = format!(r#"{{"n":{}}}"#, "9".repeat(400));
        for past in [
            r#"{"n":1e999}"#,
            r#"{"f":[631e99937827744286325073]}"#,
            r#"{"n":-1.5E+400}"#,
            long.as_str(),
        ] {
            assert!(matches!(one_pass(past), OnePass::Unsure), "{past}");
            assert_eq!(stored_form(past), None, "{past}");
        }
        let long = format!(r#"{{"n":{}}}"#, "9".repeat(300));
        for within in [
            r#"{"n":1.5e-3}"#,
            r#"{"n":-1e308}"#,
            r#"{"n":1e-999}"#,
            r#"{"t":true,"f":false,"z":0,"m":-0.5}"#,
            long.as_str(),
        ] {
            assert!(matches!(one_pass(within), OnePass::Stored(_)), "{within}");
        }
        assert_eq!(
            stored_form(r#"{"a": [1e3, -2.5E-1]}"#).as_deref(),
            Some(r#"{"a":[1e3,-2.5E-1]}"#)
        );
    }

    #[test]
    fn escaped_keys_many_keys_and_deep_values_are_left_to_the_parser() {
        assert!(matches!(one_pass(r#"{"a":1,"\u0061":2}"#), OnePass::Unsure));
        let deep = format!("{}1{}", "[".repeat(DEEP + 1), "]".repeat(DEEP + 1));
        assert!(matches!(one_pass(&deep), OnePass::Unsure));
        assert_eq!(stored_form(r#"{"a":1,"\u0061":2}"#), None);
        let many = |last: &str| {
            let keys: Vec<String> = (0..FEW_KEYS).map(|k| format!("\"k{k}\": {k}")).collect();
            format!("{{{}, \"{last}\": 0}}", keys.join(", "))
        };
        assert!(matches!(one_pass(&many("k0")), OnePass::Unsure));
        // Three objects open at once, of 12 keys each before the next opens: past OPEN_KEYS.
        let level = |inner: &str| {
            let keys: Vec<String> = (0..12).map(|k| format!("\"k{k}\": {k}")).collect();
            format!("{{{}, \"in\": {inner}, \"k0\": 0}}", keys.join(", "))
        };
        let nested = level(&level(&level("1")));
        assert!(matches!(one_pass(&nested), OnePass::Unsure));
        assert_eq!(stored_form(&nested), None);
        assert_eq!(stored_form(&many("k0")), None);
        assert_eq!(
            stored_form(&many("z")),
            two_passes(&many("z")).map(Cow::Owned)
        );
    }
}
