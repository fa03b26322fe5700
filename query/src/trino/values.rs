//! What the protocol sends: column descriptions, query statistics, and values as Trino
//! clients read them in `data`.

use std::str::FromStr;
use std::time::Duration;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Field, Int8Type, Int16Type, Int32Type, Int64Type, TimeUnit};
use arrow::util::display::{ArrayFormatter, FormatOptions};
use serde_json::{Value, json};

use crate::type_names::trino_type;

/// What a query's `stats` report of it so far.
#[derive(Debug, Default, Clone, Copy)]
pub struct Progress {
    pub rows: u64,
    /// Bytes of the data files its plan reads.
    pub bytes: u64,
    /// Since it was submitted.
    pub elapsed: Duration,
    /// The time its steps held a query CPU slot ([`crate::cpu::SlotTimes::held`]).
    pub cpu: Duration,
    /// The time its steps waited for a slot.
    pub waited: Duration,
    /// The most its pool held at once (`query.memory_limit_bytes` bounds it).
    pub peak_memory: u64,
}

/// `stats` of a `QueryResults` in `state`: `cpuTimeMillis` is the time its steps held a core,
/// `wallTimeMillis` that and the time they waited for one, `queuedTimeMillis` 0 (a query over
/// its tenant's limits is refused, not queued).
pub fn stats(state: &str, p: &Progress) -> Value {
    let ms = |d: Duration| d.as_millis() as u64;
    json!({
        "state": state, "queued": false, "scheduled": true, "nodes": 1,
        "totalSplits": 0, "queuedSplits": 0, "runningSplits": 0, "completedSplits": 0,
        "cpuTimeMillis": ms(p.cpu), "wallTimeMillis": ms(p.cpu + p.waited),
        "queuedTimeMillis": 0, "elapsedTimeMillis": ms(p.elapsed),
        "processedRows": p.rows, "processedBytes": p.bytes, "peakMemoryBytes": p.peak_memory,
        "spilledBytes": 0,
    })
}

/// A column description with its Trino type and type signature.
pub fn column(f: &Field) -> Value {
    let (name, sig) = trino_type(f.data_type());
    json!({"name": f.name(), "type": name, "typeSignature": sig})
}

/// The rows of `batch` as the Trino protocol sends them in `data`.
pub fn json_rows(batch: &RecordBatch) -> Vec<Value> {
    (0..batch.num_rows())
        .map(|r| Value::Array(batch.columns().iter().map(|c| value(c, r)).collect()))
        .collect()
}

fn formatted(array: &ArrayRef, row: usize) -> Value {
    let opts = FormatOptions::default();
    match ArrayFormatter::try_new(array.as_ref(), &opts) {
        Ok(f) => Value::String(f.value(row).to_string()),
        Err(_) => Value::Null,
    }
}

fn float(v: f64) -> Value {
    if v.is_nan() {
        json!("NaN")
    } else if v.is_infinite() {
        json!(if v > 0.0 { "Infinity" } else { "-Infinity" })
    } else {
        json!(v)
    }
}

/// One value as Trino clients expect it in `data`.
fn value(array: &ArrayRef, row: usize) -> Value {
    if array.is_null(row) {
        return Value::Null;
    }
    match array.data_type() {
        DataType::Boolean => json!(array.as_boolean().value(row)),
        DataType::Int8 => json!(array.as_primitive::<Int8Type>().value(row)),
        DataType::Int16 => json!(array.as_primitive::<Int16Type>().value(row)),
        DataType::Int32 => json!(array.as_primitive::<Int32Type>().value(row)),
        DataType::Int64 => json!(array.as_primitive::<Int64Type>().value(row)),
        DataType::UInt8 | DataType::UInt16 | DataType::UInt32 | DataType::UInt64 => {
            formatted(array, row)
                .as_str()
                .and_then(|s| s.parse::<u64>().ok())
                .map_or(Value::Null, |v| json!(v))
        }
        DataType::Float32 => float(
            array
                .as_primitive::<arrow::datatypes::Float32Type>()
                .value(row) as f64,
        ),
        DataType::Float64 => float(
            array
                .as_primitive::<arrow::datatypes::Float64Type>()
                .value(row),
        ),
        DataType::Utf8 => json!(array.as_string::<i32>().value(row)),
        DataType::LargeUtf8 => json!(array.as_string::<i64>().value(row)),
        DataType::Utf8View => json!(array.as_string_view().value(row)),
        DataType::Timestamp(unit, tz) => {
            let raw = match unit {
                TimeUnit::Second => {
                    array
                        .as_primitive::<arrow::datatypes::TimestampSecondType>()
                        .value(row)
                        * 1_000_000
                }
                TimeUnit::Millisecond => {
                    array
                        .as_primitive::<arrow::datatypes::TimestampMillisecondType>()
                        .value(row)
                        * 1000
                }
                TimeUnit::Microsecond => array
                    .as_primitive::<arrow::datatypes::TimestampMicrosecondType>()
                    .value(row),
                TimeUnit::Nanosecond => {
                    array
                        .as_primitive::<arrow::datatypes::TimestampNanosecondType>()
                        .value(row)
                        / 1000
                }
            };
            let Some(t) = chrono::DateTime::from_timestamp_micros(raw) else {
                return Value::Null;
            };
            let digits = match unit {
                TimeUnit::Second => "%Y-%m-%d %H:%M:%S",
                TimeUnit::Millisecond => "%Y-%m-%d %H:%M:%S%.3f",
                _ => "%Y-%m-%d %H:%M:%S%.6f",
            };
            match tz {
                // Shown in the value's zone, named as Trino names it.
                Some(tz) => {
                    let name = match tz.as_ref() {
                        "+00:00" | "UTC" | "Z" | "+0000" | "Etc/UTC" => "UTC",
                        other => other,
                    };
                    match arrow::array::timezone::Tz::from_str(name) {
                        Ok(zone) => {
                            json!(format!("{} {name}", t.with_timezone(&zone).format(digits)))
                        }
                        Err(_) => json!(format!("{} UTC", t.format(digits))),
                    }
                }
                None => json!(t.format(digits).to_string()),
            }
        }
        DataType::List(_) => {
            let list = array.as_list::<i32>().value(row);
            Value::Array((0..list.len()).map(|i| value(&list, i)).collect())
        }
        DataType::LargeList(_) => {
            let list = array.as_list::<i64>().value(row);
            Value::Array((0..list.len()).map(|i| value(&list, i)).collect())
        }
        DataType::Struct(_) => {
            let s = array.as_struct();
            Value::Array(s.columns().iter().map(|c| value(c, row)).collect())
        }
        DataType::Map(_, _) => {
            let m = array.as_map();
            let entries = m.value(row);
            let keys = entries.column(0);
            let values = entries.column(1);
            let mut obj = serde_json::Map::new();
            for i in 0..entries.len() {
                let k = match value(keys, i) {
                    Value::String(s) => s,
                    other => other.to_string(),
                };
                obj.insert(k, value(values, i));
            }
            Value::Object(obj)
        }
        _ => formatted(array, row),
    }
}
