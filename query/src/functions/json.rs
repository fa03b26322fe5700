//! Trino's `json_extract` and `json_extract_scalar` over JSON text: a path subset (`$`,
//! `.key`, `["key"]`, `[n]`) walked without building the whole document.

use std::borrow::Cow;
use std::marker::PhantomData;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, StringBuilder};
use arrow::datatypes::DataType;
use datafusion::common::{DataFusionError, Result, exec_err};
use datafusion::logical_expr::ColumnarValue;
use serde_json::Value;

/// One step of a JSON path.
#[derive(Debug, PartialEq)]
pub(super) enum Step {
    Key(String),
    Index(usize),
}

/// Parses the JSON path subset Trino's `json_extract*` take: `$`, `.key`, `["key"]`, `[n]`.
pub(super) fn json_path(path: &str) -> Result<Vec<Step>> {
    let bad = || DataFusionError::Execution(format!("Invalid JSON path: '{path}'"));
    let rest = path.trim().strip_prefix('$').ok_or_else(bad)?;
    let chars: Vec<char> = rest.chars().collect();
    let mut steps = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        match chars[i] {
            '.' => {
                let start = i + 1;
                let mut j = start;
                while j < chars.len() && chars[j] != '.' && chars[j] != '[' {
                    j += 1;
                }
                if j == start {
                    return Err(bad());
                }
                steps.push(Step::Key(chars[start..j].iter().collect()));
                i = j;
            }
            '[' => {
                let close = chars[i..].iter().position(|&c| c == ']').ok_or_else(bad)? + i;
                let inner: String = chars[i + 1..close].iter().collect();
                let inner = inner.trim();
                if let Some(q) = inner.chars().next().filter(|c| *c == '"' || *c == '\'') {
                    let key = inner
                        .strip_prefix(q)
                        .and_then(|s| s.strip_suffix(q))
                        .ok_or_else(bad)?;
                    steps.push(Step::Key(key.to_string()));
                } else {
                    steps.push(Step::Index(inner.parse().map_err(|_| bad())?));
                }
                i = close + 1;
            }
            _ => return Err(bad()),
        }
    }
    Ok(steps)
}

/// Finds the value at `path` in the JSON text `doc` while parsing it: members and elements off
/// the path are skipped without being built, and only the value found is materialised.
/// `None` when the text is not JSON or the path leads nowhere.
pub(super) fn json_at(doc: &str, path: &[Step]) -> Option<Value> {
    find::<Value>(doc, path)
}

/// As [`json_at`], for `json_extract_scalar`: the string, number or boolean at `path`, a string
/// borrowed from `doc` unless it has escapes; `None` for anything else.
pub(super) fn json_scalar_at<'d>(doc: &'d str, path: &[Step]) -> Option<Scalar<'d>> {
    find::<Scalar<'d>>(doc, path)
}

fn find<'d, L: Leaf<'d>>(doc: &'d str, path: &[Step]) -> Option<L> {
    use serde::de::DeserializeSeed;
    let mut de = serde_json::Deserializer::from_str(doc);
    PathSeed::<L> {
        path,
        leaf: PhantomData,
    }
    .deserialize(&mut de)
    .ok()
    .flatten()
}

/// A scalar found by `json_extract_scalar`.
#[derive(Debug, PartialEq)]
pub(super) enum Scalar<'d> {
    Text(Cow<'d, str>),
    Number(serde_json::Number),
    Bool(bool),
    /// An object, an array or null: `json_extract_scalar` gives NULL for them.
    Other,
}

/// What is read where the path ends.
trait Leaf<'de>: Sized {
    fn read<D: serde::Deserializer<'de>>(d: D) -> Result<Option<Self>, D::Error>;
}

impl<'de> Leaf<'de> for Value {
    fn read<D: serde::Deserializer<'de>>(d: D) -> Result<Option<Self>, D::Error> {
        use serde::Deserialize;
        Value::deserialize(d).map(Some)
    }
}

impl<'de> Leaf<'de> for Scalar<'de> {
    fn read<D: serde::Deserializer<'de>>(d: D) -> Result<Option<Self>, D::Error> {
        d.deserialize_any(ScalarVisitor).map(Some)
    }
}

struct ScalarVisitor;

impl<'de> serde::de::Visitor<'de> for ScalarVisitor {
    type Value = Scalar<'de>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("JSON")
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Scalar::Text(Cow::Borrowed(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Scalar::Text(Cow::Owned(v.to_string())))
    }
    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(Scalar::Text(Cow::Owned(v)))
    }
    fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
        Ok(Scalar::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Scalar::Number(v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
        Ok(Scalar::Number(v.into()))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Scalar::Other, Scalar::Number))
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Scalar::Other)
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map
            .next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?
            .is_some()
        {}
        Ok(Scalar::Other)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
        Ok(Scalar::Other)
    }
}

struct PathSeed<'p, L> {
    path: &'p [Step],
    leaf: PhantomData<L>,
}

impl<'de, L: Leaf<'de>> serde::de::DeserializeSeed<'de> for PathSeed<'_, L> {
    type Value = Option<L>;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        match self.path.split_first() {
            None => L::read(d),
            Some((step, rest)) => d.deserialize_any(PathVisitor::<L> {
                step,
                rest,
                leaf: PhantomData,
            }),
        }
    }
}

struct PathVisitor<'p, L> {
    step: &'p Step,
    rest: &'p [Step],
    leaf: PhantomData<L>,
}

/// Whether a member name equals the wanted one, without allocating it.
struct KeyIs<'p>(&'p str);

impl<'de> serde::de::DeserializeSeed<'de> for KeyIs<'_> {
    type Value = bool;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_str(self)
    }
}

impl serde::de::Visitor<'_> for KeyIs<'_> {
    type Value = bool;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a member name")
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<bool, E> {
        Ok(v == self.0)
    }
}

impl<'de, L: Leaf<'de>> serde::de::Visitor<'de> for PathVisitor<'_, L> {
    type Value = Option<L>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("JSON")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let key = match self.step {
            Step::Key(k) => Some(k.as_str()),
            Step::Index(_) => None,
        };
        let mut found = None;
        while let Some(hit) = map.next_key_seed(KeyIs(key.unwrap_or("")))? {
            if hit && key.is_some() && found.is_none() {
                found = map.next_value_seed(PathSeed::<L> {
                    path: self.rest,
                    leaf: PhantomData,
                })?;
            } else {
                map.next_value::<serde::de::IgnoredAny>()?;
            }
        }
        Ok(found)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let wanted = match self.step {
            Step::Index(i) => Some(*i),
            Step::Key(_) => None,
        };
        let mut found = None;
        let mut i = 0;
        loop {
            if wanted == Some(i) {
                match seq.next_element_seed(PathSeed::<L> {
                    path: self.rest,
                    leaf: PhantomData,
                })? {
                    Some(v) => found = v,
                    None => break,
                }
            } else if seq.next_element::<serde::de::IgnoredAny>()?.is_none() {
                break;
            }
            i += 1;
        }
        Ok(found)
    }

    // A scalar where the path wants to go deeper: nothing there.
    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
}

/// The documents of `json_extract*`'s first argument, whichever string type it has (a column
/// read as `Utf8View` is not copied into `Utf8` first).
fn documents(doc: &ArrayRef) -> Result<Box<dyn Iterator<Item = Option<&str>> + '_>> {
    Ok(match doc.data_type() {
        DataType::Utf8 => Box::new(doc.as_string::<i32>().iter()),
        DataType::LargeUtf8 => Box::new(doc.as_string::<i64>().iter()),
        DataType::Utf8View => Box::new(doc.as_string_view().iter()),
        DataType::Null => Box::new(std::iter::repeat_n(None, doc.len())),
        other => return exec_err!("json_extract takes a string, got {other}"),
    })
}

/// `json_extract_scalar` (`scalar`) and `json_extract`: text that is not JSON gives NULL. The
/// path is parsed once when it is a constant (as it nearly always is).
pub(super) fn json(args: &[ColumnarValue], rows: usize, scalar: bool) -> Result<ArrayRef> {
    let doc = args[0].to_array(rows)?;
    let docs = documents(&doc)?;
    let constant = match &args[1] {
        ColumnarValue::Scalar(path) if path.is_null() => Some(None),
        ColumnarValue::Scalar(path) => Some(match path.try_as_str() {
            Some(Some(p)) => Some(json_path(p)?),
            Some(None) => None,
            None => return exec_err!("json_extract takes a string path, got {}", path.data_type()),
        }),
        ColumnarValue::Array(_) => None,
    };
    let paths = match constant {
        Some(_) => None,
        None => Some(args[1].to_array(rows)?),
    };
    let mut path_rows = match &paths {
        Some(p) => Some(documents(p)?),
        None => None,
    };
    let mut cached: Option<(String, Vec<Step>)> = None;
    let mut out = StringBuilder::with_capacity(rows, rows * 8);
    let mut number = String::new();
    for doc in docs {
        let steps = match (&constant, path_rows.as_mut()) {
            (Some(steps), _) => steps.as_deref(),
            (None, Some(rows)) => match rows.next().flatten() {
                None => None,
                Some(p) => {
                    if cached.as_ref().is_none_or(|(text, _)| text != p) {
                        cached = Some((p.to_string(), json_path(p)?));
                    }
                    cached.as_ref().map(|(_, s)| s.as_slice())
                }
            },
            (None, None) => None,
        };
        let (Some(doc), Some(steps)) = (doc, steps) else {
            out.append_null();
            continue;
        };
        if !scalar {
            match json_at(doc, steps) {
                Some(v) => out.append_value(v.to_string()),
                None => out.append_null(),
            }
            continue;
        }
        match json_scalar_at(doc, steps) {
            Some(Scalar::Text(s)) => out.append_value(s),
            Some(Scalar::Bool(b)) => out.append_value(if b { "true" } else { "false" }),
            Some(Scalar::Number(n)) => {
                use std::fmt::Write;
                number.clear();
                let _ = write!(number, "{n}");
                out.append_value(&number);
            }
            Some(Scalar::Other) | None => out.append_null(),
        }
    }
    Ok(Arc::new(out.finish()))
}
