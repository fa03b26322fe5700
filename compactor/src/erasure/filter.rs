//! Which rows belong to a set of users.
//!
//! A row of `events` belongs to a user when its `user_id` equals one of the ids, or when a
//! payload field the tenant declared as a user reference (`payload.customer_id`) does: the
//! field's value as a JSON string, or a JSON number written the same way. Nothing else is
//! compared: an id that happens to equal an event type, a page or an order id touches no row.
//! A dead letter (`events_dlq`) holds the record's text; when that text is an event object,
//! the same rules apply to it (`user_id`, else `payload.user_id` as ingest reads it, and the
//! declared fields).
//!
//! An object that repeats a key is matched on every one of that key's values: SQL's JSON
//! functions read the first, serde_json (and so ingest and schemas) the last. Floe stores no
//! payload that repeats a key, but a dead letter keeps its record as sent, and files written by
//! another engine may hold anything.

use std::collections::HashMap;

use aho_corasick::AhoCorasick;
use datafusion::arrow::array::{Array, ArrayRef, AsArray, BooleanArray, RecordBatch};
use datafusion::arrow::compute::{cast, filter_record_batch};
use datafusion::arrow::datatypes::DataType;
use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use crate::{Error, Result};

/// The column of `events` that names the user.
pub const USER_ID: &str = "user_id";
/// The payload column (`events`: the payload object; `events_dlq`: the record text).
pub const PAYLOAD: &str = "payload";
/// A column only dead letters have.
pub const DEAD_LETTER_MARK: &str = "reason";

/// Which rows belong to a set of users (see the module comment).
#[derive(Debug, Clone)]
pub struct RowFilter {
    ids: Vec<String>,
    index: HashMap<String, usize>,
    /// Declared payload fields, as paths inside the payload object.
    paths: Vec<Vec<String>>,
    /// Finds any id in a text: payloads that cannot hold one are not parsed.
    finder: AhoCorasick,
}

/// How a batch's rows can hold users, told by its columns.
enum Layout {
    Events {
        user_id: Option<ArrayRef>,
        payload: Option<ArrayRef>,
    },
    DeadLetters {
        payload: ArrayRef,
    },
    /// No column that can name a user.
    Nothing,
}

impl RowFilter {
    /// `fields`: the declared user fields (`payload.customer_id`); `user_id` is always
    /// compared and may be listed or not.
    pub fn new(user_ids: &[String], fields: &[String]) -> Result<RowFilter> {
        let mut ids: Vec<String> = Vec::new();
        let mut index = HashMap::new();
        for id in user_ids {
            if !index.contains_key(id) {
                index.insert(id.clone(), ids.len());
                ids.push(id.clone());
            }
        }
        let mut paths = Vec::new();
        for f in fields {
            if f == USER_ID {
                continue;
            }
            let Some(path) = f.strip_prefix("payload.") else {
                return Err(Error::Invalid(format!(
                    "user field {f:?} is neither user_id nor a payload field"
                )));
            };
            paths.push(path.split('.').map(str::to_string).collect());
        }
        let finder = AhoCorasick::new(&ids)
            .map_err(|e| Error::Invalid(format!("building the id matcher: {e}")))?;
        Ok(RowFilter {
            ids,
            index,
            paths,
            finder,
        })
    }

    /// The ids, in the order results are indexed by.
    pub fn ids(&self) -> &[String] {
        &self.ids
    }

    /// Whether declared payload fields take part (then a file's `user_id` bounds do not tell
    /// whether it holds a user).
    pub fn reads_payload(&self) -> bool {
        !self.paths.is_empty()
    }

    fn id(&self, value: &str) -> Option<usize> {
        self.index.get(value).copied()
    }

    /// The id a JSON value names: a string equal to one, or a number written as one.
    fn id_of(&self, value: &Json) -> Option<usize> {
        match value {
            Json::Name(s) => self.id(s),
            _ => None,
        }
    }

    /// Whether `text` may hold an id at all. A backslash may escape any character of an id,
    /// so such texts are always parsed.
    fn may_name(&self, text: &str) -> bool {
        text.contains('\\') || self.finder.is_match(text)
    }

    /// The id a payload object names in a declared field.
    fn in_payload(&self, payload: &Json) -> Option<usize> {
        self.paths
            .iter()
            .find_map(|path| payload.find(path, &mut |v| self.id_of(v)))
    }

    /// The id an `events` row names.
    pub fn event_row(&self, user_id: Option<&str>, payload: Option<&str>) -> Option<usize> {
        if let Some(hit) = user_id.and_then(|u| self.id(u)) {
            return Some(hit);
        }
        let text = payload.filter(|p| self.reads_payload() && self.may_name(p))?;
        self.in_payload(&serde_json::from_str(text).ok()?)
    }

    /// The id a dead letter names, when its text is an event object.
    pub fn dead_letter_row(&self, text: &str) -> Option<usize> {
        if !self.may_name(text) {
            return None;
        }
        let event: Json = serde_json::from_str(text).ok()?;
        if let Some(hit) = event.members(USER_ID).find_map(|u| self.id_of(u)) {
            return Some(hit);
        }
        // Ingest reads `payload.user_id` when the event's own is null or missing.
        let unnamed = event.members(USER_ID).next().is_none()
            || event.members(USER_ID).any(|u| matches!(u, Json::Null));
        event.members("payload").find_map(|payload| {
            unnamed
                .then(|| payload.members(USER_ID).find_map(|u| self.id_of(u)))
                .flatten()
                .or_else(|| self.in_payload(payload))
        })
    }

    fn layout(batch: &RecordBatch) -> Result<Layout> {
        let column = |name: &str| -> Result<Option<ArrayRef>> {
            let Some(c) = batch.column_by_name(name) else {
                return Ok(None);
            };
            Ok(Some(match c.data_type() {
                DataType::Utf8 => c.clone(),
                _ => cast(c, &DataType::Utf8)
                    .map_err(|e| Error::Invalid(format!("reading {name}: {e}")))?,
            }))
        };
        let (user_id, payload) = (column(USER_ID)?, column(PAYLOAD)?);
        Ok(match (user_id, payload) {
            (None, Some(payload)) if batch.column_by_name(DEAD_LETTER_MARK).is_some() => {
                Layout::DeadLetters { payload }
            }
            (None, None) => Layout::Nothing,
            (user_id, payload) => Layout::Events { user_id, payload },
        })
    }

    /// For each row of `batch`, the index of an id it names.
    pub fn matches(&self, batch: &RecordBatch) -> Result<Vec<Option<usize>>> {
        let text = |a: &ArrayRef, i: usize| -> Option<String> {
            let s = a.as_string::<i32>();
            s.is_valid(i).then(|| s.value(i).to_string())
        };
        let n = batch.num_rows();
        Ok(match Self::layout(batch)? {
            Layout::Nothing => vec![None; n],
            Layout::DeadLetters { payload } => (0..n)
                .map(|i| text(&payload, i).and_then(|t| self.dead_letter_row(&t)))
                .collect(),
            Layout::Events { user_id, payload } => {
                let payload = payload.filter(|_| self.reads_payload());
                (0..n)
                    .map(|i| {
                        let u = user_id.as_ref().and_then(|a| text(a, i));
                        let p = payload.as_ref().and_then(|a| text(a, i));
                        self.event_row(u.as_deref(), p.as_deref())
                    })
                    .collect()
            }
        })
    }

    /// `batch` without the rows that belong to a user.
    pub fn apply(&self, batch: &RecordBatch) -> Result<RecordBatch> {
        let keep: BooleanArray = self
            .matches(batch)?
            .into_iter()
            .map(|h| Some(h.is_none()))
            .collect();
        filter_record_batch(batch, &keep).map_err(|e| Error::Invalid(format!("filtering: {e}")))
    }

    /// Whether a file whose `user_id` column lies within `[lower, upper]` (its manifest
    /// bounds; missing ones are open) may hold one of the ids. Truncated bounds stay valid:
    /// a lower bound never exceeds the column's minimum, an upper one never falls below its
    /// maximum.
    pub fn may_hold(&self, lower: Option<&str>, upper: Option<&str>) -> bool {
        self.ids.iter().any(|id| {
            lower.is_none_or(|l| l <= id.as_str()) && upper.is_none_or(|u| id.as_str() <= u)
        })
    }
}

/// A JSON value as erasure reads it: every member of an object kept, a repeated key's values
/// included, and only what can name a user kept of the rest.
#[derive(Debug, PartialEq)]
enum Json {
    /// A string, or a number as serde_json writes it.
    Name(String),
    Null,
    Object(Vec<(String, Json)>),
    /// A boolean or an array: names nobody (paths do not go through arrays).
    Other,
}

impl Json {
    /// The values of an object's members named `key` (none for anything but an object).
    fn members<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a Json> + 'a {
        let members = match self {
            Json::Object(members) => members.as_slice(),
            _ => &[],
        };
        members
            .iter()
            .filter(move |(k, _)| k == key)
            .map(|(_, v)| v)
    }

    /// The first `Some` that `f` gives for a value at `path`, following every value of a
    /// repeated key.
    fn find<T>(&self, path: &[String], f: &mut impl FnMut(&Json) -> Option<T>) -> Option<T> {
        match path.split_first() {
            None => f(self),
            Some((key, rest)) => self.members(key).find_map(|v| v.find(rest, f)),
        }
    }
}

impl<'de> Deserialize<'de> for Json {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Json, D::Error> {
        deserializer.deserialize_any(JsonVisitor)
    }
}

struct JsonVisitor;

impl<'de> Visitor<'de> for JsonVisitor {
    type Value = Json;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> std::result::Result<Json, E> {
        Ok(Json::Other)
    }

    fn visit_i64<E>(self, n: i64) -> std::result::Result<Json, E> {
        Ok(Json::Name(n.to_string()))
    }

    fn visit_u64<E>(self, n: u64) -> std::result::Result<Json, E> {
        Ok(Json::Name(n.to_string()))
    }

    fn visit_f64<E>(self, n: f64) -> std::result::Result<Json, E> {
        Ok(serde_json::Number::from_f64(n).map_or(Json::Other, |n| Json::Name(n.to_string())))
    }

    fn visit_str<E>(self, s: &str) -> std::result::Result<Json, E> {
        Ok(Json::Name(s.to_string()))
    }

    fn visit_string<E>(self, s: String) -> std::result::Result<Json, E> {
        Ok(Json::Name(s))
    }

    fn visit_unit<E>(self) -> std::result::Result<Json, E> {
        Ok(Json::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<Json, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Json::Other)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<Json, A::Error> {
        let mut members = Vec::new();
        while let Some(member) = map.next_entry::<String, Json>()? {
            members.push(member);
        }
        Ok(Json::Object(members))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::StringArray;
    use datafusion::arrow::datatypes::{Field, Schema};
    use std::sync::Arc;

    fn events(rows: &[(Option<&str>, &str, &str)]) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("type", DataType::Utf8, false),
            Field::new(USER_ID, DataType::Utf8, true),
            Field::new(PAYLOAD, DataType::Utf8, false),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(
                    rows.iter().map(|r| r.1).collect::<Vec<_>>(),
                )),
                Arc::new(StringArray::from(
                    rows.iter().map(|r| r.0).collect::<Vec<_>>(),
                )),
                Arc::new(StringArray::from(
                    rows.iter().map(|r| r.2).collect::<Vec<_>>(),
                )),
            ],
        )
        .unwrap()
    }

    fn ids<'a>(f: &'a RowFilter, batch: &RecordBatch) -> Vec<Option<&'a str>> {
        f.matches(batch)
            .unwrap()
            .into_iter()
            .map(|h| h.map(|i| f.ids()[i].as_str()))
            .collect()
    }

    #[test]
    fn only_user_id_is_compared_unless_fields_are_declared() {
        let batch = events(&[
            (Some("u-1"), "PageViewed", "{}"),
            (
                Some("u-2"),
                "PageViewed",
                r#"{"page":"u-1","customer_id":"u-1"}"#,
            ),
            (Some("u-17"), "PageViewed", "{}"),
            (None, "PageViewed", r#"{"customer_id":"u-1"}"#),
        ]);
        // An id equal to another column's value (the type) names nobody.
        let f = RowFilter::new(&["PageViewed".into()], &[]).unwrap();
        assert_eq!(ids(&f, &batch), vec![None; 4]);
        let f = RowFilter::new(&["u-1".into()], &["user_id".into()]).unwrap();
        assert_eq!(ids(&f, &batch), vec![Some("u-1"), None, None, None]);
        // Declared: payload.customer_id, exactly (not `page`, not prefixes).
        let f = RowFilter::new(&["u-1".into()], &["payload.customer_id".into()]).unwrap();
        assert_eq!(
            ids(&f, &batch),
            vec![Some("u-1"), Some("u-1"), None, Some("u-1")]
        );
        let kept = f.apply(&batch).unwrap();
        assert_eq!(kept.num_rows(), 1);
    }

    #[test]
    fn short_ids_nested_fields_numbers_and_escapes() {
        let batch = events(&[
            (Some("1"), "A", "{}"),
            (Some("11"), "A", r#"{"n":1}"#),
            (Some("x"), "A", r#"{"buyer":{"id":1}}"#),
            (Some("y"), "A", r#"{"buyer":{"id":"\u0031"}}"#),
            (Some("z"), "A", r#"{"buyer":{"id":"12"}}"#),
        ]);
        let f = RowFilter::new(&["1".into()], &["payload.buyer.id".into()]).unwrap();
        assert_eq!(
            ids(&f, &batch),
            vec![Some("1"), None, Some("1"), Some("1"), None]
        );
    }

    #[test]
    fn dead_letters_are_matched_as_the_events_they_hold() {
        let schema = Arc::new(Schema::new(vec![
            Field::new(DEAD_LETTER_MARK, DataType::Utf8, false),
            Field::new(PAYLOAD, DataType::Utf8, false),
        ]));
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(vec!["invalid"; 4])),
                Arc::new(StringArray::from(vec![
                    r#"{"type":"A","user_id":"u-1"}"#,
                    r#"{"type":"A","payload":{"user_id":"u-1"}}"#,
                    r#"{"type":"u-1"}"#,
                    "not json u-1",
                ])),
            ],
        )
        .unwrap();
        let f = RowFilter::new(&["u-1".into()], &[]).unwrap();
        assert_eq!(ids(&f, &batch), vec![Some("u-1"), Some("u-1"), None, None]);
    }

    #[test]
    fn every_value_of_a_repeated_key_is_compared() {
        // SQL's JSON functions read a repeated key's first value, serde_json its last: a row
        // naming a user under either reading is that user's.
        let batch = events(&[
            (
                Some("x"),
                "A",
                r#"{"customer_id":"u-1","customer_id":"u-2"}"#,
            ),
            (
                Some("y"),
                "A",
                r#"{"buyer":{"id":"u-1"},"buyer":{"id":"u-3"}}"#,
            ),
            (
                Some("z"),
                "A",
                r#"{"buyer":{"id":"u-3","id":"u-1"},"n":[{"id":"u-1"}]}"#,
            ),
        ]);
        let f = RowFilter::new(
            &["u-1".into()],
            &["payload.customer_id".into(), "payload.buyer.id".into()],
        )
        .unwrap();
        assert_eq!(ids(&f, &batch), vec![Some("u-1"); 3]);
        let f = RowFilter::new(
            &["u-2".into(), "u-3".into()],
            &["payload.customer_id".into()],
        )
        .unwrap();
        assert_eq!(ids(&f, &batch), vec![Some("u-2"), None, None]);

        // A dead letter's text as sent: its own user_id repeated, or null once.
        let f = RowFilter::new(&["u-1".into()], &[]).unwrap();
        for (text, hit) in [
            (r#"{"user_id":"u-1","user_id":"u-2"}"#, true),
            (r#"{"user_id":"u-2","user_id":"u-1"}"#, true),
            (
                r#"{"user_id":null,"user_id":"u-2","payload":{"user_id":"u-1"}}"#,
                true,
            ),
            (r#"{"user_id":"u-2","payload":{"user_id":"u-1"}}"#, false),
            (
                r#"{"payload":{"user_id":"u-2"},"payload":{"user_id":"u-1"}}"#,
                true,
            ),
            (r#"{"user_id":["u-1"]}"#, false),
        ] {
            assert_eq!(f.dead_letter_row(text).is_some(), hit, "{text}");
        }
    }

    #[test]
    fn bounds_rule_files_out() {
        let f = RowFilter::new(&["u-5".into()], &[]).unwrap();
        assert!(f.may_hold(Some("u-1"), Some("u-9")));
        assert!(!f.may_hold(Some("u-6"), Some("u-9")));
        assert!(!f.may_hold(Some("a"), Some("u-4")));
        assert!(f.may_hold(None, Some("u-9")));
        // A truncated upper bound ("u-" then something larger) still covers.
        assert!(f.may_hold(Some("u-"), Some("u.")));
        assert!(RowFilter::new(&["u".into()], &["customer_id".into()]).is_err());
    }
}
