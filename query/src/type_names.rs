//! Trino's names and signatures of Arrow types: what `information_schema`, `DESCRIBE` and
//! the protocol's column descriptions say.

use arrow::datatypes::{DataType, TimeUnit};
use serde_json::{Value, json};

fn long(v: i64) -> Value {
    json!({"kind": "LONG", "value": v})
}

fn ty(sig: Value) -> Value {
    json!({"kind": "TYPE", "value": sig})
}

/// The Trino type name and signature of an Arrow type.
pub fn trino_type(dt: &DataType) -> (String, Value) {
    let simple = |raw: &str| (raw.to_string(), json!({"rawType": raw, "arguments": []}));
    match dt {
        DataType::Boolean => simple("boolean"),
        DataType::Int8 => simple("tinyint"),
        DataType::Int16 | DataType::UInt8 => simple("smallint"),
        DataType::Int32 | DataType::UInt16 => simple("integer"),
        DataType::Int64 | DataType::UInt32 | DataType::UInt64 => simple("bigint"),
        DataType::Float16 | DataType::Float32 => simple("real"),
        DataType::Float64 => simple("double"),
        DataType::Date32 | DataType::Date64 => simple("date"),
        DataType::Decimal128(p, s) | DataType::Decimal256(p, s) => (
            format!("decimal({p},{s})"),
            json!({"rawType": "decimal", "arguments": [long(*p as i64), long(*s as i64)]}),
        ),
        DataType::Timestamp(unit, tz) => {
            let p = match unit {
                TimeUnit::Second => 0,
                TimeUnit::Millisecond => 3,
                TimeUnit::Microsecond => 6,
                TimeUnit::Nanosecond => 9,
            };
            let raw = if tz.is_some() {
                "timestamp with time zone"
            } else {
                "timestamp"
            };
            let name = if tz.is_some() {
                format!("timestamp({p}) with time zone")
            } else {
                format!("timestamp({p})")
            };
            (name, json!({"rawType": raw, "arguments": [long(p)]}))
        }
        DataType::List(f) | DataType::LargeList(f) | DataType::FixedSizeList(f, _) => {
            let (n, s) = trino_type(f.data_type());
            (
                format!("array({n})"),
                json!({"rawType": "array", "arguments": [ty(s)]}),
            )
        }
        DataType::Map(entries, _) => {
            let (k, v) = match entries.data_type() {
                DataType::Struct(fs) if fs.len() == 2 => {
                    (trino_type(fs[0].data_type()), trino_type(fs[1].data_type()))
                }
                _ => (simple("varchar"), simple("varchar")),
            };
            (
                format!("map({}, {})", k.0, v.0),
                json!({"rawType": "map", "arguments": [ty(k.1), ty(v.1)]}),
            )
        }
        DataType::Struct(fields) => {
            let parts: Vec<(String, String, Value)> = fields
                .iter()
                .map(|f| {
                    let (n, s) = trino_type(f.data_type());
                    (f.name().clone(), n, s)
                })
                .collect();
            let name = format!(
                "row({})",
                parts
                    .iter()
                    .map(|(f, n, _)| format!("{f} {n}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            let args: Vec<Value> = parts
                .into_iter()
                .map(|(f, _, s)| {
                    json!({"kind": "NAMED_TYPE", "value": {"fieldName": {"name": f}, "typeSignature": s}})
                })
                .collect();
            (name, json!({"rawType": "row", "arguments": args}))
        }
        _ => (
            "varchar".to_string(),
            json!({"rawType": "varchar", "arguments": [long(i32::MAX as i64)]}),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::datatypes::Field;
    use std::sync::Arc;

    #[test]
    fn type_signatures() {
        let (n, s) = trino_type(&DataType::Timestamp(
            TimeUnit::Microsecond,
            Some("+00:00".into()),
        ));
        assert_eq!(n, "timestamp(6) with time zone");
        assert_eq!(s["rawType"], "timestamp with time zone");
        let (n, _) = trino_type(&DataType::Decimal128(10, 2));
        assert_eq!(n, "decimal(10,2)");
        let (n, s) = trino_type(&DataType::List(Arc::new(Field::new(
            "item",
            DataType::Int64,
            true,
        ))));
        assert_eq!(n, "array(bigint)");
        assert_eq!(s["arguments"][0]["value"]["rawType"], "bigint");
    }
}
