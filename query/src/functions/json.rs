//! Trino's `json_extract` and `json_extract_scalar` over JSON text: a path subset (`$`,
//! `.key`, `["key"]`, `[n]`) walked without building the whole document.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, StringArray};
use datafusion::common::{DataFusionError, Result};
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
    use serde::de::DeserializeSeed;
    let mut de = serde_json::Deserializer::from_str(doc);
    PathSeed { path }.deserialize(&mut de).ok().flatten()
}

struct PathSeed<'p> {
    path: &'p [Step],
}

impl<'de> serde::de::DeserializeSeed<'de> for PathSeed<'_> {
    type Value = Option<Value>;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        use serde::Deserialize;
        match self.path.split_first() {
            None => Value::deserialize(d).map(Some),
            Some((step, rest)) => d.deserialize_any(PathVisitor { step, rest }),
        }
    }
}

struct PathVisitor<'p> {
    step: &'p Step,
    rest: &'p [Step],
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

impl<'de> serde::de::Visitor<'de> for PathVisitor<'_> {
    type Value = Option<Value>;

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
                found = map.next_value_seed(PathSeed { path: self.rest })?;
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
                match seq.next_element_seed(PathSeed { path: self.rest })? {
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

/// `json_extract_scalar` (`scalar`) and `json_extract`: text that is not JSON gives NULL.
pub(super) fn json(arrays: &[ArrayRef], scalar: bool) -> Result<ArrayRef> {
    let docs = arrays[0].as_string::<i32>();
    let paths = arrays[1].as_string::<i32>();
    let mut cached: Option<(String, Vec<Step>)> = None;
    let mut out = Vec::with_capacity(docs.len());
    for row in 0..docs.len() {
        if docs.is_null(row) || paths.is_null(row) {
            out.push(None);
            continue;
        }
        let p = paths.value(row);
        if cached.as_ref().is_none_or(|(text, _)| text != p) {
            cached = Some((p.to_string(), json_path(p)?));
        }
        let steps = cached.as_ref().map(|(_, s)| s.as_slice()).unwrap_or(&[]);
        out.push(match json_at(docs.value(row), steps) {
            None => None,
            Some(v) if scalar => match v {
                Value::String(s) => Some(s),
                Value::Number(n) => Some(n.to_string()),
                Value::Bool(b) => Some(b.to_string()),
                _ => None,
            },
            Some(v) => Some(v.to_string()),
        });
    }
    Ok(Arc::new(StringArray::from(out)))
}
