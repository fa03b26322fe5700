//! Trino functions that DataFusion lacks or shapes differently, as scalar UDFs.
//!
//! Registered on every session (replacing DataFusion's `to_unixtime`, `from_unixtime` and
//! `element_at`, whose Trino forms differ). Timestamps are computed in the value's own zone, as
//! Trino does for `timestamp with time zone`; a timestamp without a zone is read as UTC.

use std::any::Any;
use std::fmt::Write as _;
use std::str::FromStr;
use std::sync::Arc;

use arrow::array::timezone::Tz;
use arrow::array::{
    Array, ArrayRef, AsArray, Date32Array, Float64Array, Int64Array, StringArray,
    TimestampMicrosecondArray, UInt32Array, make_comparator,
};
use arrow::compute::{SortOptions, cast, take};
use arrow::datatypes::{DataType, Date32Type, TimeUnit};
use chrono::{DateTime, Datelike, Months, TimeZone, Timelike, Utc};
use datafusion::common::{DataFusionError, Result, exec_err, plan_err};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use datafusion::prelude::SessionContext;
use serde_json::Value;

/// Every function this module adds, by name (some names share a function).
const FUNCTIONS: &[(&str, Kind)] = &[
    ("json_extract_scalar", Kind::JsonExtractScalar),
    ("json_extract", Kind::JsonExtract),
    ("date_diff", Kind::DateDiff),
    ("date_add", Kind::DateAdd),
    ("to_unixtime", Kind::ToUnixtime),
    ("from_unixtime", Kind::FromUnixtime),
    ("from_iso8601_timestamp", Kind::FromIso8601),
    ("format_datetime", Kind::FormatDatetime),
    ("element_at", Kind::ElementAt),
    ("date", Kind::Date),
    ("year", Kind::Field(Part::Year)),
    ("quarter", Kind::Field(Part::Quarter)),
    ("month", Kind::Field(Part::Month)),
    ("week", Kind::Field(Part::Week)),
    ("week_of_year", Kind::Field(Part::Week)),
    ("day", Kind::Field(Part::Day)),
    ("day_of_month", Kind::Field(Part::Day)),
    ("day_of_week", Kind::Field(Part::DayOfWeek)),
    ("dow", Kind::Field(Part::DayOfWeek)),
    ("day_of_year", Kind::Field(Part::DayOfYear)),
    ("doy", Kind::Field(Part::DayOfYear)),
    ("hour", Kind::Field(Part::Hour)),
    ("minute", Kind::Field(Part::Minute)),
    ("second", Kind::Field(Part::Second)),
];

/// Registers every Trino function on `ctx`.
pub fn register(ctx: &SessionContext) {
    for &(name, kind) in FUNCTIONS {
        ctx.register_udf(ScalarUDF::new_from_impl(TrinoFn {
            name,
            kind,
            signature: Signature::user_defined(Volatility::Immutable),
        }));
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Part {
    Year,
    Quarter,
    Month,
    Week,
    Day,
    DayOfWeek,
    DayOfYear,
    Hour,
    Minute,
    Second,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    JsonExtractScalar,
    JsonExtract,
    DateDiff,
    DateAdd,
    ToUnixtime,
    FromUnixtime,
    FromIso8601,
    FormatDatetime,
    ElementAt,
    Date,
    Field(Part),
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct TrinoFn {
    name: &'static str,
    kind: Kind,
    signature: Signature,
}

fn utc_micros() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

fn is_temporal(t: &DataType) -> bool {
    matches!(
        t,
        DataType::Timestamp(..) | DataType::Date32 | DataType::Date64
    )
}

fn is_text(t: &DataType) -> bool {
    matches!(
        t,
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View | DataType::Null
    )
}

/// A temporal argument as microseconds with its zone: timestamps keep their zone (none is UTC),
/// dates and strings are read as UTC.
fn temporal(t: &DataType) -> DataType {
    match t {
        DataType::Timestamp(_, Some(tz)) => {
            DataType::Timestamp(TimeUnit::Microsecond, Some(tz.clone()))
        }
        _ => utc_micros(),
    }
}

impl ScalarUDFImpl for TrinoFn {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn name(&self) -> &str {
        self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, args: &[DataType]) -> Result<Vec<DataType>> {
        let n = self.name;
        let want = |count: usize| -> Result<()> {
            if args.len() == count {
                Ok(())
            } else {
                plan_err!("{n} takes {count} arguments, got {}", args.len())
            }
        };
        match self.kind {
            Kind::JsonExtractScalar | Kind::JsonExtract => {
                want(2)?;
                Ok(vec![DataType::Utf8, DataType::Utf8])
            }
            Kind::DateDiff => {
                want(3)?;
                Ok(vec![DataType::Utf8, temporal(&args[1]), temporal(&args[2])])
            }
            Kind::DateAdd => {
                want(3)?;
                let target = if args[2] == DataType::Date32 {
                    DataType::Date32
                } else {
                    temporal(&args[2])
                };
                Ok(vec![DataType::Utf8, DataType::Int64, target])
            }
            Kind::ToUnixtime | Kind::Date | Kind::Field(_) => {
                want(1)?;
                if !(is_temporal(&args[0]) || is_text(&args[0])) {
                    return plan_err!("{n} takes a timestamp or date, got {}", args[0]);
                }
                Ok(vec![temporal(&args[0])])
            }
            Kind::FromUnixtime => {
                want(1)?;
                Ok(vec![DataType::Float64])
            }
            Kind::FromIso8601 => {
                want(1)?;
                Ok(vec![DataType::Utf8])
            }
            Kind::FormatDatetime => {
                want(2)?;
                Ok(vec![temporal(&args[0]), DataType::Utf8])
            }
            Kind::ElementAt => {
                want(2)?;
                match &args[0] {
                    DataType::List(_) | DataType::LargeList(_) => {
                        Ok(vec![args[0].clone(), DataType::Int64])
                    }
                    DataType::Map(entries, _) => match entries.data_type() {
                        DataType::Struct(fs) if fs.len() == 2 => {
                            Ok(vec![args[0].clone(), fs[0].data_type().clone()])
                        }
                        _ => plan_err!("element_at: malformed map type"),
                    },
                    other => plan_err!("element_at takes an array or a map, got {other}"),
                }
            }
        }
    }

    fn return_type(&self, args: &[DataType]) -> Result<DataType> {
        Ok(match self.kind {
            Kind::JsonExtractScalar | Kind::JsonExtract | Kind::FormatDatetime => DataType::Utf8,
            Kind::DateDiff | Kind::Field(_) => DataType::Int64,
            Kind::DateAdd => args.get(2).cloned().unwrap_or_else(utc_micros),
            Kind::ToUnixtime => DataType::Float64,
            Kind::FromUnixtime | Kind::FromIso8601 => utc_micros(),
            Kind::Date => DataType::Date32,
            Kind::ElementAt => match args.first() {
                Some(DataType::List(f) | DataType::LargeList(f)) => f.data_type().clone(),
                Some(DataType::Map(entries, _)) => match entries.data_type() {
                    DataType::Struct(fs) if fs.len() == 2 => fs[1].data_type().clone(),
                    _ => return plan_err!("element_at: malformed map type"),
                },
                _ => return plan_err!("element_at takes an array or a map"),
            },
        })
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let out: ArrayRef = match self.kind {
            Kind::JsonExtractScalar => json(&arrays, true)?,
            Kind::JsonExtract => json(&arrays, false)?,
            Kind::DateDiff => date_diff(&arrays)?,
            Kind::DateAdd => date_add(&arrays)?,
            Kind::ToUnixtime => {
                let (ts, _) = micros(&arrays[0])?;
                Arc::new(
                    ts.iter()
                        .map(|v| v.map(|m| m as f64 / 1e6))
                        .collect::<Float64Array>(),
                )
            }
            Kind::FromUnixtime => {
                let secs = arrays[0].as_primitive::<arrow::datatypes::Float64Type>();
                Arc::new(
                    secs.iter()
                        .map(|v| v.map(|s| (s * 1e6).round() as i64))
                        .collect::<TimestampMicrosecondArray>()
                        .with_timezone("UTC"),
                )
            }
            Kind::FromIso8601 => {
                let text = arrays[0].as_string::<i32>();
                let mut out = Vec::with_capacity(text.len());
                for v in text.iter() {
                    out.push(match v {
                        None => None,
                        Some(s) => Some(
                            arrow::compute::kernels::cast_utils::string_to_datetime(&Utc, s)
                                .map_err(|e| {
                                    DataFusionError::Execution(format!(
                                        "from_iso8601_timestamp: invalid timestamp '{s}': {e}"
                                    ))
                                })?
                                .timestamp_micros(),
                        ),
                    });
                }
                Arc::new(TimestampMicrosecondArray::from(out).with_timezone("UTC"))
            }
            Kind::FormatDatetime => format_datetime(&arrays)?,
            Kind::ElementAt => element_at(&arrays)?,
            Kind::Date => {
                let (ts, tz) = micros(&arrays[0])?;
                Arc::new(
                    ts.iter()
                        .map(|v| {
                            v.and_then(|m| local(m, &tz))
                                .map(|t| Date32Type::from_naive_date(t.date_naive()))
                        })
                        .collect::<Date32Array>(),
                )
            }
            Kind::Field(part) => {
                let (ts, tz) = micros(&arrays[0])?;
                Arc::new(
                    ts.iter()
                        .map(|v| v.and_then(|m| local(m, &tz)).map(|t| field(&t, part)))
                        .collect::<Int64Array>(),
                )
            }
        };
        Ok(ColumnarValue::Array(out))
    }
}

fn field(t: &DateTime<Tz>, part: Part) -> i64 {
    (match part {
        Part::Year => t.year() as u32,
        Part::Quarter => (t.month() - 1) / 3 + 1,
        Part::Month => t.month(),
        Part::Week => t.iso_week().week(),
        Part::Day => t.day(),
        Part::DayOfWeek => t.weekday().number_from_monday(),
        Part::DayOfYear => t.ordinal(),
        Part::Hour => t.hour(),
        Part::Minute => t.minute(),
        Part::Second => t.second(),
    }) as i64
}

/// Microseconds and the zone of a coerced temporal argument.
fn micros(a: &ArrayRef) -> Result<(TimestampMicrosecondArray, Tz)> {
    let tz_name = match a.data_type() {
        DataType::Timestamp(_, Some(tz)) => tz.to_string(),
        _ => "UTC".to_string(),
    };
    let tz = Tz::from_str(&tz_name)?;
    let as_micros = cast(a, &DataType::Timestamp(TimeUnit::Microsecond, None))?;
    Ok((as_micros.as_primitive().clone(), tz))
}

fn local(micros: i64, tz: &Tz) -> Option<DateTime<Tz>> {
    DateTime::<Utc>::from_timestamp_micros(micros).map(|t| t.with_timezone(tz))
}

fn unit_arg(units: &StringArray, row: usize) -> Result<String> {
    if units.is_null(row) {
        return exec_err!("the unit may not be null");
    }
    Ok(units.value(row).to_ascii_lowercase())
}

const MICROS: [(&str, i64); 7] = [
    ("microsecond", 1),
    ("millisecond", 1_000),
    ("second", 1_000_000),
    ("minute", 60_000_000),
    ("hour", 3_600_000_000),
    ("day", 86_400_000_000),
    ("week", 604_800_000_000),
];

fn months_of(unit: &str) -> Option<i64> {
    match unit {
        "month" => Some(1),
        "quarter" => Some(3),
        "year" => Some(12),
        _ => None,
    }
}

fn bad_unit(unit: &str) -> DataFusionError {
    DataFusionError::Execution(format!(
        "'{unit}' is not a valid unit; use millisecond, second, minute, hour, day, week, month, \
         quarter or year"
    ))
}

/// `date_diff(unit, a, b)`: whole units from `a` to `b` (negative when `b` is earlier).
fn date_diff(arrays: &[ArrayRef]) -> Result<ArrayRef> {
    let units = arrays[0].as_string::<i32>();
    let (a, tz) = micros(&arrays[1])?;
    let (b, _) = micros(&arrays[2])?;
    let mut out = Vec::with_capacity(a.len());
    for row in 0..a.len() {
        if a.is_null(row) || b.is_null(row) {
            out.push(None);
            continue;
        }
        let unit = unit_arg(units, row)?;
        let (x, y) = (a.value(row), b.value(row));
        let v = if let Some(step) = months_of(&unit) {
            let (Some(lx), Some(ly)) = (local(x, &tz), local(y, &tz)) else {
                out.push(None);
                continue;
            };
            let (lx, ly) = (lx.naive_local(), ly.naive_local());
            let mut months =
                (ly.year() as i64 - lx.year() as i64) * 12 + ly.month() as i64 - lx.month() as i64;
            // Only whole months count: step back if the last one is not complete.
            let shifted = |m: i64| {
                if m >= 0 {
                    lx.checked_add_months(Months::new(m as u32))
                } else {
                    lx.checked_sub_months(Months::new((-m) as u32))
                }
            };
            if months > 0 && shifted(months).is_some_and(|s| s > ly) {
                months -= 1;
            } else if months < 0 && shifted(months).is_some_and(|s| s < ly) {
                months += 1;
            }
            months / step
        } else if let Some((_, m)) = MICROS.iter().find(|(u, _)| *u == unit) {
            (y - x) / m
        } else {
            return Err(bad_unit(&unit));
        };
        out.push(Some(v));
    }
    Ok(Arc::new(Int64Array::from(out)))
}

/// `date_add(unit, n, t)`: `t` moved by `n` units, in `t`'s own type.
fn date_add(arrays: &[ArrayRef]) -> Result<ArrayRef> {
    let units = arrays[0].as_string::<i32>();
    let n = arrays[1].as_primitive::<arrow::datatypes::Int64Type>();
    let is_date = arrays[2].data_type() == &DataType::Date32;
    let (t, tz) = micros(&arrays[2])?;
    let mut out = Vec::with_capacity(t.len());
    for row in 0..t.len() {
        if t.is_null(row) || n.is_null(row) {
            out.push(None);
            continue;
        }
        let unit = unit_arg(units, row)?;
        let (v, k) = (t.value(row), n.value(row));
        let moved = if let Some(step) = months_of(&unit) {
            let months = k * step;
            local(v, &tz)
                .and_then(|l| {
                    let naive = l.naive_local();
                    let shifted = if months >= 0 {
                        naive.checked_add_months(Months::new(months as u32))
                    } else {
                        naive.checked_sub_months(Months::new((-months) as u32))
                    }?;
                    tz.from_local_datetime(&shifted).earliest()
                })
                .map(|d| d.timestamp_micros())
        } else if let Some((_, m)) = MICROS.iter().find(|(u, _)| *u == unit) {
            if is_date && *m < 86_400_000_000 {
                return exec_err!("date_add: '{unit}' is not a unit of a date");
            }
            k.checked_mul(*m).and_then(|d| v.checked_add(d))
        } else {
            return Err(bad_unit(&unit));
        };
        out.push(moved);
    }
    let ts = TimestampMicrosecondArray::from(out);
    if is_date {
        Ok(cast(&ts, &DataType::Date32)?)
    } else {
        let target = arrays[2].data_type().clone();
        let tz_name = match &target {
            DataType::Timestamp(_, Some(z)) => z.to_string(),
            _ => "UTC".into(),
        };
        Ok(Arc::new(ts.with_timezone(tz_name)))
    }
}

/// One step of a JSON path.
#[derive(Debug, PartialEq)]
enum Step {
    Key(String),
    Index(usize),
}

/// Parses the JSON path subset Trino's `json_extract*` take: `$`, `.key`, `["key"]`, `[n]`.
fn json_path(path: &str) -> Result<Vec<Step>> {
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
fn json_at(doc: &str, path: &[Step]) -> Option<Value> {
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
fn json(arrays: &[ArrayRef], scalar: bool) -> Result<ArrayRef> {
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

/// Translates a Joda-Time pattern (Trino's `format_datetime`) to chrono's strftime.
fn joda_to_strftime(pattern: &str) -> Result<String> {
    let chars: Vec<char> = pattern.chars().collect();
    let mut out = String::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '\'' {
            // Quoted literal; '' is a quote.
            let mut j = i + 1;
            if j < chars.len() && chars[j] == '\'' {
                out.push('\'');
                i += 2;
                continue;
            }
            while j < chars.len() && chars[j] != '\'' {
                if chars[j] == '%' {
                    out.push_str("%%");
                } else {
                    out.push(chars[j]);
                }
                j += 1;
            }
            i = j + 1;
            continue;
        }
        let mut run = 1;
        while i + run < chars.len() && chars[i + run] == c {
            run += 1;
        }
        let spec = match (c, run) {
            ('y' | 'Y' | 'u', 2) => "%y",
            ('y' | 'Y' | 'u', _) => "%Y",
            ('M', 1) => "%-m",
            ('M', 2) => "%m",
            ('M', 3) => "%b",
            ('M', _) => "%B",
            ('d', 1) => "%-d",
            ('d', _) => "%d",
            ('D', _) => "%j",
            ('H', 1) => "%-H",
            ('H', _) => "%H",
            ('h', 1) => "%-I",
            ('h', _) => "%I",
            ('m', 1) => "%-M",
            ('m', _) => "%M",
            ('s', 1) => "%-S",
            ('s', _) => "%S",
            ('S', 1..=3) => "%3f",
            ('S', 4..=6) => "%6f",
            ('S', _) => "%9f",
            ('a', _) => "%p",
            ('E', 1..=3) => "%a",
            ('E', _) => "%A",
            ('e', _) => "%u",
            ('Z', 1) => "%z",
            ('Z', _) => "%:z",
            ('z', _) => "%Z",
            ('w', _) => "%V",
            ('x', _) => "%G",
            (c, _) if c.is_ascii_alphabetic() => {
                return exec_err!("format_datetime: pattern letter '{c}' is not supported");
            }
            ('%', _) => {
                for _ in 0..run {
                    out.push_str("%%");
                }
                i += run;
                continue;
            }
            (c, _) => {
                for _ in 0..run {
                    out.push(c);
                }
                i += run;
                continue;
            }
        };
        out.push_str(spec);
        i += run;
    }
    Ok(out)
}

fn format_datetime(arrays: &[ArrayRef]) -> Result<ArrayRef> {
    let (ts, tz) = micros(&arrays[0])?;
    let patterns = arrays[1].as_string::<i32>();
    let mut cached: Option<(String, String)> = None;
    let mut out = Vec::with_capacity(ts.len());
    for row in 0..ts.len() {
        if ts.is_null(row) || patterns.is_null(row) {
            out.push(None);
            continue;
        }
        let p = patterns.value(row);
        if cached.as_ref().is_none_or(|(joda, _)| joda != p) {
            cached = Some((p.to_string(), joda_to_strftime(p)?));
        }
        let fmt = cached.as_ref().map(|(_, f)| f.as_str()).unwrap_or("");
        let Some(t) = local(ts.value(row), &tz) else {
            out.push(None);
            continue;
        };
        let mut s = String::new();
        write!(s, "{}", t.format(fmt)).map_err(|_| {
            DataFusionError::Execution(format!("format_datetime: bad pattern '{p}'"))
        })?;
        out.push(Some(s));
    }
    Ok(Arc::new(StringArray::from(out)))
}

/// `element_at(array, i)` (1-based, negative from the end; NULL past either end) and
/// `element_at(map, key)` (NULL when the key is absent).
fn element_at(arrays: &[ArrayRef]) -> Result<ArrayRef> {
    let container = &arrays[0];
    let mut idx: Vec<Option<u32>> = Vec::with_capacity(container.len());
    let values: ArrayRef = match container.data_type() {
        DataType::List(_) | DataType::LargeList(_) => {
            let positions = arrays[1].as_primitive::<arrow::datatypes::Int64Type>();
            let offsets: Vec<(usize, usize)> = match container.data_type() {
                DataType::List(_) => {
                    let l = container.as_list::<i32>();
                    l.offsets()
                        .windows(2)
                        .map(|w| (w[0] as usize, w[1] as usize))
                        .collect()
                }
                _ => {
                    let l = container.as_list::<i64>();
                    l.offsets()
                        .windows(2)
                        .map(|w| (w[0] as usize, w[1] as usize))
                        .collect()
                }
            };
            for (row, (start, end)) in offsets.into_iter().enumerate() {
                if container.is_null(row) || positions.is_null(row) {
                    idx.push(None);
                    continue;
                }
                let len = (end - start) as i64;
                let p = positions.value(row);
                if p == 0 {
                    return exec_err!("SQL array indices start at 1");
                }
                let i = if p > 0 { p - 1 } else { len + p };
                idx.push((0..len).contains(&i).then(|| (start as i64 + i) as u32));
            }
            match container.data_type() {
                DataType::List(_) => container.as_list::<i32>().values().clone(),
                _ => container.as_list::<i64>().values().clone(),
            }
        }
        DataType::Map(_, _) => {
            let map = container.as_map();
            let keys = map.keys();
            let wanted = &arrays[1];
            let cmp = make_comparator(keys.as_ref(), wanted.as_ref(), SortOptions::default())?;
            for row in 0..map.len() {
                if map.is_null(row) || wanted.is_null(row) {
                    idx.push(None);
                    continue;
                }
                let offsets = map.value_offsets();
                let (start, end) = (offsets[row] as usize, offsets[row + 1] as usize);
                idx.push(
                    (start..end)
                        .find(|&k| cmp(k, row).is_eq())
                        .map(|k| k as u32),
                );
            }
            map.values().clone()
        }
        other => return exec_err!("element_at takes an array or a map, got {other}"),
    };
    Ok(take(values.as_ref(), &UInt32Array::from(idx), None)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_paths() {
        assert_eq!(
            json_path("$.a[\"b c\"][2].d").unwrap(),
            vec![
                Step::Key("a".into()),
                Step::Key("b c".into()),
                Step::Index(2),
                Step::Key("d".into())
            ]
        );
        assert!(json_path("a.b").is_err());
        assert!(json_path("$..").is_err());
    }

    #[test]
    fn json_lookup_skips_what_is_off_the_path() {
        let doc = r#"{"a": {"x": [1, {"deep": true}], "b": [10, {"c": "hit"}]}, "z": null}"#;
        let at = |p: &str| json_at(doc, &json_path(p).unwrap());
        assert_eq!(at("$.a.b[1].c"), Some(Value::String("hit".into())));
        assert_eq!(at("$.a.b[0]"), Some(serde_json::json!(10)));
        assert_eq!(at("$.a.x[1]"), Some(serde_json::json!({"deep": true})));
        assert_eq!(at("$.z"), Some(Value::Null));
        assert_eq!(at("$.a.b[2]"), None);
        assert_eq!(at("$.a.b.c"), None);
        assert_eq!(at("$.a.x[0].y"), None);
        assert_eq!(at("$.missing"), None);
        assert_eq!(json_at("not json", &json_path("$").unwrap()), None);
        assert_eq!(
            json_at(r#"{"k\u0041": 1}"#, &json_path("$.kA").unwrap()),
            Some(serde_json::json!(1))
        );
    }

    #[test]
    fn every_function_is_in_the_readme_table() {
        let readme =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
        for (name, _) in FUNCTIONS {
            assert!(
                readme.contains(&format!("`{name}(")) || readme.contains(&format!("`{name}`")),
                "{name} is registered but missing from the README's function table"
            );
        }
    }

    #[test]
    fn joda_patterns() {
        assert_eq!(
            joda_to_strftime("yyyy-MM-dd HH:mm:ss").unwrap(),
            "%Y-%m-%d %H:%M:%S"
        );
        assert_eq!(
            joda_to_strftime("EEE, d MMM yyyy 'at' h a").unwrap(),
            "%a, %-d %b %Y at %-I %p"
        );
        assert_eq!(joda_to_strftime("'100%' SSS").unwrap(), "100%% %3f");
        assert!(joda_to_strftime("yyyy G").is_err());
    }
}
