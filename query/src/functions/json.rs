//! Trino's `json_extract` and `json_extract_scalar` over JSON text: a path subset (`$`,
//! `.key`, `["key"]`, `[n]`) walked without building the whole document.

use std::borrow::Cow;
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

/// The value at `path` in the JSON text `doc`, found as Trino's extractors find it: an object's
/// members are read in order up to the first whose name matches (a repeated key's first value
/// counts), what lies off the path is skipped without being built, and nothing after the value
/// found is read. `None` when the text up to the value is not JSON or the path leads nowhere.
pub(super) fn json_at(doc: &str, path: &[Step]) -> Option<Value> {
    serde_json::from_str(locate(doc, path)?).ok()
}

/// As [`json_at`], for `json_extract_scalar`: the string, number or boolean at `path`, a string
/// borrowed from `doc` unless it has escapes, a number as written (`12.50` stays `12.50`, as
/// Trino gives a number token's text); `None` for anything else.
pub(super) fn json_scalar_at<'d>(doc: &'d str, path: &[Step]) -> Option<Scalar<'d>> {
    let value = locate(doc, path)?;
    Some(match value.as_bytes()[0] {
        b'"' => {
            let inner = &value[1..value.len() - 1];
            match inner.contains('\\') {
                false => Scalar::Text(Cow::Borrowed(inner)),
                true => Scalar::Text(Cow::Owned(serde_json::from_str(value).ok()?)),
            }
        }
        b't' => Scalar::Bool(true),
        b'f' => Scalar::Bool(false),
        b'-' | b'0'..=b'9' => Scalar::Number(value),
        // An object, an array or null.
        _ => Scalar::Other,
    })
}

/// A scalar found by `json_extract_scalar`.
#[derive(Debug, PartialEq)]
pub(super) enum Scalar<'d> {
    Text(Cow<'d, str>),
    /// A number's text as written.
    Number(&'d str),
    Bool(bool),
    /// An object, an array or null: `json_extract_scalar` gives NULL for them.
    Other,
}

/// The text of the value at `path` in `doc` (see [`json_at`]): a string with its quotes, a
/// number, a literal, or an object or array whose brackets balance outside strings.
fn locate<'d>(doc: &'d str, path: &[Step]) -> Option<&'d str> {
    let mut c = Cursor { text: doc, at: 0 };
    for step in path {
        match step {
            Step::Key(key) => {
                c.expect(b'{')?;
                if c.peek()? == b'}' {
                    return None;
                }
                loop {
                    if name_is(c.member_name()?, key)? {
                        break;
                    }
                    c.skip_value()?;
                    c.expect(b',')?;
                }
            }
            Step::Index(index) => {
                c.expect(b'[')?;
                if c.peek()? == b']' {
                    return None;
                }
                for _ in 0..*index {
                    c.skip_value()?;
                    c.expect(b',')?;
                }
            }
        }
    }
    c.peek()?;
    let start = c.at;
    c.skip_value()?;
    Some(&doc[start..c.at])
}

/// Whether `text` is a JSON number: `-`, an integer part without leading zeros, then
/// optionally a fraction and an exponent.
fn is_number(text: &[u8]) -> bool {
    let mut i = usize::from(text.first() == Some(&b'-'));
    let digits = |i: &mut usize| {
        let start = *i;
        while text.get(*i).is_some_and(u8::is_ascii_digit) {
            *i += 1;
        }
        *i > start
    };
    match text.get(i) {
        Some(b'0') => i += 1,
        Some(b'1'..=b'9') => {
            digits(&mut i);
        }
        _ => return false,
    }
    if text.get(i) == Some(&b'.') {
        i += 1;
        if !digits(&mut i) {
            return false;
        }
    }
    if matches!(text.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(text.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        if !digits(&mut i) {
            return false;
        }
    }
    i == text.len()
}

/// Whether a member's name (its text with quotes) is `key`; escapes are decoded first.
fn name_is(name: &str, key: &str) -> Option<bool> {
    let inner = &name[1..name.len() - 1];
    match inner.contains('\\') {
        false => Some(inner == key),
        true => Some(serde_json::from_str::<Cow<str>>(name).ok()? == key),
    }
}

/// A position in JSON text. Every token it stops at is ASCII, so its positions are char
/// boundaries.
struct Cursor<'d> {
    text: &'d str,
    at: usize,
}

impl<'d> Cursor<'d> {
    /// The next byte that is not whitespace, left unread.
    fn peek(&mut self) -> Option<u8> {
        let bytes = self.text.as_bytes();
        while let Some(b) = bytes.get(self.at) {
            match b {
                b' ' | b'\t' | b'\n' | b'\r' => self.at += 1,
                _ => return Some(*b),
            }
        }
        None
    }

    /// The next byte that is not whitespace, read.
    fn next(&mut self) -> Option<u8> {
        let b = self.peek()?;
        self.at += 1;
        Some(b)
    }

    fn expect(&mut self, byte: u8) -> Option<()> {
        (self.next()? == byte).then_some(())
    }

    /// A string token, quotes included.
    fn string(&mut self) -> Option<&'d str> {
        self.expect(b'"')?;
        let start = self.at - 1;
        let bytes = self.text.as_bytes();
        loop {
            match bytes.get(self.at)? {
                b'"' => break,
                b'\\' => self.at += 2,
                b if *b < 0x20 => return None,
                _ => self.at += 1,
            }
        }
        self.at += 1;
        Some(&self.text[start..self.at])
    }

    /// Skips one value, checking its structure: strings to their closing quote, objects and
    /// arrays member by member (a stack of the brackets open, not recursion), numbers by their
    /// characters, the three literals by their words.
    fn skip_value(&mut self) -> Option<()> {
        let mut open: Vec<u8> = Vec::new();
        loop {
            match self.next()? {
                b'"' => {
                    self.at -= 1;
                    self.string()?;
                }
                b'{' if self.peek()? == b'}' => self.at += 1,
                b'{' => {
                    open.push(b'}');
                    self.member_name()?;
                    continue;
                }
                b'[' if self.peek()? == b']' => self.at += 1,
                b'[' => {
                    open.push(b']');
                    continue;
                }
                b'-' | b'0'..=b'9' => {
                    let start = self.at - 1;
                    let bytes = self.text.as_bytes();
                    while bytes.get(self.at).is_some_and(|b| {
                        matches!(b, b'0'..=b'9' | b'.' | b'e' | b'E' | b'+' | b'-')
                    }) {
                        self.at += 1;
                    }
                    is_number(&bytes[start..self.at]).then_some(())?;
                }
                _ => {
                    let rest = &self.text[self.at - 1..];
                    let word = ["true", "false", "null"]
                        .into_iter()
                        .find(|w| rest.starts_with(w))?;
                    self.at += word.len() - 1;
                }
            }
            // After a value: close what it ends, or go on to the next member or element.
            loop {
                let Some(&close) = open.last() else {
                    return Some(());
                };
                match self.next()? {
                    b',' if close == b'}' => {
                        self.member_name()?;
                        break;
                    }
                    b',' => break,
                    b if b == close => {
                        open.pop();
                    }
                    _ => return None,
                }
            }
        }
    }

    /// A member's name and its colon.
    fn member_name(&mut self) -> Option<&'d str> {
        let name = self.string()?;
        self.expect(b':')?;
        Some(name)
    }
}

/// The texts of a string argument (`json_extract*`'s documents, a pattern or text of
/// `functions::pieces` and `bounded`), whichever string type it has (a column read as
/// `Utf8View` is not copied into `Utf8` first).
pub(super) fn documents(doc: &ArrayRef) -> Result<Box<dyn Iterator<Item = Option<&str>> + '_>> {
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
            Some(Scalar::Number(n)) => out.append_value(n),
            Some(Scalar::Other) | None => out.append_null(),
        }
    }
    Ok(Arc::new(out.finish()))
}
