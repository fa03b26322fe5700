//! Trino functions that DataFusion lacks or shapes differently, as scalar UDFs.
//!
//! Registered on every session (replacing DataFusion's `to_unixtime`, `from_unixtime` and
//! `element_at`, whose Trino forms differ). Timestamps are computed in the value's own zone, as
//! Trino does for `timestamp with time zone`; a timestamp without a zone is read as UTC.

use std::any::Any;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, Date32Array, Float64Array, Int64Array, TimestampMicrosecondArray,
    UInt32Array, make_comparator,
};
use arrow::compute::{SortOptions, take};
use arrow::datatypes::{DataType, Date32Type, TimeUnit};
use chrono::Utc;
use datafusion::common::{DataFusionError, Result, exec_err, plan_err};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use datafusion::prelude::SessionContext;

pub mod bounded;
pub mod concat;
mod json;
pub mod pieces;
mod time;
mod trunc;
mod wrapped;

use json::json;
use time::{date_add, date_diff, field, format_datetime, is_utc, local, micros};

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
    ctx.register_udf(ScalarUDF::new_from_impl(concat::Concat::default()));
    ctx.register_udf(ScalarUDF::new_from_impl(trunc::date_trunc()));
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

/// The zone of a timestamp type (`None`: a date, or a timestamp without one, read as UTC).
fn zone_of(t: &DataType) -> Option<&str> {
    match t {
        DataType::Timestamp(_, Some(tz)) => Some(tz),
        _ => None,
    }
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
                // A string of any kind is read as it is (a column read as `Utf8View` is not
                // copied into `Utf8` first).
                let text = |t: &DataType| {
                    if is_text(t) {
                        t.clone()
                    } else {
                        DataType::Utf8
                    }
                };
                Ok(vec![text(&args[0]), text(&args[1])])
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
        // The JSON functions take their path as it comes (a constant is parsed once).
        let arrays = match self.kind {
            Kind::JsonExtractScalar | Kind::JsonExtract => Vec::new(),
            _ => ColumnarValue::values_to_arrays(&args.args)?,
        };
        let out: ArrayRef = match self.kind {
            Kind::JsonExtractScalar => json(&args.args, args.number_rows, true)?,
            Kind::JsonExtract => json(&args.args, args.number_rows, false)?,
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
                if zone_of(arrays[0].data_type()).is_none_or(is_utc) {
                    const MICROS_PER_DAY: i64 = 86_400_000_000;
                    // The days a date can be; NULL past them, as the calendar's way gives.
                    let epoch = chrono::NaiveDate::default();
                    let first = chrono::NaiveDate::MIN
                        .signed_duration_since(epoch)
                        .num_days();
                    let last = chrono::NaiveDate::MAX
                        .signed_duration_since(epoch)
                        .num_days();
                    let days: Date32Array = ts.unary_opt(|m| {
                        let day = m.div_euclid(MICROS_PER_DAY);
                        (first..=last).contains(&day).then_some(day as i32)
                    });
                    return Ok(ColumnarValue::Array(Arc::new(days)));
                }
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
    use super::json::{Scalar, Step, json_at, json_path, json_scalar_at};
    use super::time::joda_to_strftime;
    use super::*;
    use serde_json::Value;
    use std::borrow::Cow;

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
    fn json_scalars_borrow_what_they_can() {
        let doc = r#"{"s": "plain", "e": "t\u00e9", "n": 12.50, "i": -3, "b": false, "o": {}, "z": null}"#;
        let at = |p: &str| json_scalar_at(doc, &json_path(p).unwrap());
        assert!(matches!(
            at("$.s"),
            Some(Scalar::Text(Cow::Borrowed("plain")))
        ));
        assert_eq!(at("$.e"), Some(Scalar::Text(Cow::Owned("té".into()))));
        // A number as written, as Trino gives a number token's text.
        assert_eq!(at("$.n"), Some(Scalar::Number("12.50")));
        assert_eq!(at("$.i"), Some(Scalar::Number("-3")));
        assert_eq!(at("$.b"), Some(Scalar::Bool(false)));
        assert_eq!(at("$.o"), Some(Scalar::Other));
        assert_eq!(at("$.z"), Some(Scalar::Other));
        assert_eq!(at("$.missing"), None);
        // As Trino's, the lookup ends with the value: text after it is not read.
        let one = Some(Scalar::Number("1"));
        assert_eq!(
            json_scalar_at(r#"{"s": 1} x"#, &json_path("$.s").unwrap()),
            one
        );
    }

    #[test]
    fn json_lookup_reads_up_to_the_value_as_trino_does() {
        let scalar = |doc: &str, p: &str| match json_scalar_at(doc, &json_path(p).unwrap()) {
            Some(Scalar::Text(s)) => Some(s.into_owned()),
            Some(Scalar::Number(n)) => Some(n.to_string()),
            Some(Scalar::Bool(b)) => Some(b.to_string()),
            Some(Scalar::Other) => Some("other".into()),
            None => None,
        };
        // Nothing after the value is read; a repeated key's first value counts.
        assert_eq!(
            scalar(r#"{"page":"/a", broken"#, "$.page"),
            Some("/a".into())
        );
        assert_eq!(scalar(r#"{"p":1,"p":2}"#, "$.p"), Some("1".into()));
        // What comes before it must be JSON.
        for doc in [
            r#"{"x": tru, "page": "p"}"#,
            r#"{"x": [1 2], "page": "p"}"#,
            r#"{"x": {"a" 1}, "page": "p"}"#,
            r#"{"x": {"a": 1]], "page": "p"}"#,
            r#"{"x": "open, "page": "p"}"#,
            "{\"x\": \"a\u{1}b\", \"page\": \"p\"}",
            r#"{"x": 1 "page": "p"}"#,
            r#"["page", "p"]"#,
            r#"{"page" "p"}"#,
            "",
            "   ",
        ] {
            assert_eq!(scalar(doc, "$.page"), None, "{doc}");
        }
        // Brackets, quotes and escapes inside skipped strings; whitespace anywhere; names with
        // escapes; empty containers; paths through arrays.
        let doc = " {\n\t\"a\" : [ \"]}\\\"\" , {\"b\":[]} , {} ] ,\r\"p\\u0061ge\": \"/x\" } ";
        assert_eq!(scalar(doc, "$.page"), Some("/x".into()));
        assert_eq!(scalar(doc, "$.a[0]"), Some("]}\"".into()));
        assert_eq!(scalar(doc, "$.a[1].b"), Some("other".into()));
        assert_eq!(scalar(doc, "$.a[3]"), None);
        assert_eq!(scalar(doc, "$.a[1].b[0]"), None);
        assert_eq!(
            scalar(r#"{"n": -1.5e3, "t": true}"#, "$.t"),
            Some("true".into())
        );
        assert_eq!(scalar(r#"{"n": -1.5e3}"#, "$.n"), Some("-1.5e3".into()));
        assert_eq!(scalar(r#"{"n": 1e999}"#, "$.n"), Some("1e999".into()));
        for bad in ["01", "1.", ".5", "-", "1e", "1e+", "--1", "1.2.3", "+1"] {
            let doc = format!(r#"{{"n": {bad}, "m": 0}}"#);
            assert_eq!(scalar(&doc, "$.n"), None, "{doc}");
            assert_eq!(scalar(&doc, "$.m"), None, "{doc}");
        }
        assert_eq!(scalar(r#"{}"#, "$.n"), None);
    }

    /// Every path of a document (its keys and indexes, all the way down).
    fn paths_of(v: &Value, prefix: String, out: &mut Vec<String>) {
        out.push(if prefix.is_empty() {
            "$".into()
        } else {
            format!("${prefix}")
        });
        match v {
            Value::Object(m) => {
                for (k, child) in m {
                    paths_of(child, format!("{prefix}[\"{k}\"]"), out);
                }
            }
            Value::Array(a) => {
                for (i, child) in a.iter().enumerate() {
                    paths_of(child, format!("{prefix}[{i}]"), out);
                }
            }
            _ => {}
        }
    }

    #[test]
    fn json_lookup_finds_what_the_parsed_tree_holds() {
        let docs = [
            r#"{"page": "/pricing", "referrer": "https://e.com/?q=\"x\"", "n": [1, 2.5, -3e2]}"#,
            r#"{"order": {"items": [{"sku": "a", "qty": 2}, {"sku": "b", "qty": null}], "total": 12.34}, "ok": true}"#,
            r#"[{"a": {"b": {"c": [[], [{}], [[1]]]}}}, "s\u00e9", false]"#,
            r#"{"k y": {"": "empty name"}, "esc\"aped": "v", "uni": "\ud83d\ude00"}"#,
        ];
        for doc in docs {
            let tree: Value = serde_json::from_str(doc).unwrap();
            let mut paths = Vec::new();
            paths_of(&tree, String::new(), &mut paths);
            for p in paths {
                let steps = json_path(&p).unwrap();
                let mut want = &tree;
                for step in &steps {
                    want = match step {
                        Step::Key(k) => &want[k.as_str()],
                        Step::Index(i) => &want[*i],
                    };
                }
                assert_eq!(json_at(doc, &steps).as_ref(), Some(want), "{doc} {p}");
            }
        }
    }

    proptest::proptest! {
        /// Any text, any path: an answer or none, never a panic.
        #[test]
        fn json_lookup_of_any_text_ends(doc in "[\\[\\]{}\",:a-c0-9é \\\\.eE+-]{0,40}", path in "(\\.[abc]|\\[[0-2]\\]){0,3}") {
            let steps = json_path(&format!("${path}")).unwrap();
            let _ = json_at(&doc, &steps);
            let _ = json_scalar_at(&doc, &steps);
        }
    }

    #[test]
    fn json_extract_reads_every_string_kind_and_paths_by_row() {
        use arrow::array::{LargeStringArray, StringArray, StringViewArray};
        use datafusion::common::ScalarValue;
        let docs = [
            Some(r#"{"a": "x", "n": 2}"#),
            None,
            Some("nope"),
            Some(r#"{"a": [1]}"#),
        ];
        let path = ColumnarValue::Scalar(ScalarValue::Utf8(Some("$.a".into())));
        let want_scalar = StringArray::from(vec![Some("x"), None, None, None]);
        let want_json = StringArray::from(vec![Some("\"x\""), None, None, Some("[1]")]);
        let kinds: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(docs.to_vec())),
            Arc::new(LargeStringArray::from(docs.to_vec())),
            Arc::new(StringViewArray::from(docs.to_vec())),
        ];
        for doc in kinds {
            let args = [ColumnarValue::Array(doc.clone()), path.clone()];
            let got = json(&args, 4, true).unwrap();
            assert_eq!(got.as_string::<i32>(), &want_scalar, "{}", doc.data_type());
            let got = json(&args, 4, false).unwrap();
            assert_eq!(got.as_string::<i32>(), &want_json, "{}", doc.data_type());
        }
        // A path per row (parsed again only when it changes), a NULL path, a constant NULL path.
        let doc: ArrayRef = Arc::new(StringArray::from(vec![Some(r#"{"a": "x", "n": 2}"#); 3]));
        let paths: ArrayRef = Arc::new(StringArray::from(vec![Some("$.n"), None, Some("$.a")]));
        let args = [
            ColumnarValue::Array(doc.clone()),
            ColumnarValue::Array(paths),
        ];
        let got = json(&args, 3, true).unwrap();
        assert_eq!(
            got.as_string::<i32>(),
            &StringArray::from(vec![Some("2"), None, Some("x")])
        );
        for null in [ScalarValue::Utf8(None), ScalarValue::Null] {
            let args = [
                ColumnarValue::Array(doc.clone()),
                ColumnarValue::Scalar(null),
            ];
            assert_eq!(json(&args, 3, true).unwrap().null_count(), 3);
        }
    }

    #[test]
    fn every_function_is_in_the_readme_table() {
        let readme = std::fs::read_to_string(format!(
            "{}/../README.md",
            std::env::var("CARGO_MANIFEST_DIR").unwrap()
        ))
        .unwrap();
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
