//! The per-type view of an event type: one row per event of the type, its top-level payload
//! properties at the latest registered version as typed columns. What each column reads from
//! an event of each version is derived here from the versions' upcasting steps ([`Read`]);
//! the query engine turns it into expressions over the `events` table.

use serde_json::Value;

use super::EventSchema;
use super::upcast::{Read, steps};
use crate::Result;

/// The SQL type of a view column, from the latest schema's `type` of the property.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `"string"`.
    Text,
    /// `"integer"`: BIGINT.
    Integer,
    /// `"number"`: DOUBLE.
    Number,
    /// `"boolean"`.
    Boolean,
    /// Anything else (objects, arrays, several types, no `type`): the value's JSON text.
    Json,
}

impl Kind {
    /// The kind of a property from its schema.
    pub fn of(property: &Value) -> Kind {
        let named: Vec<&str> = match property.get("type") {
            Some(Value::String(t)) => vec![t.as_str()],
            Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
            // No `type`: the one its `enum` or `const` values share, if they do.
            _ => {
                let values: Vec<&Value> = match (property.get("enum"), property.get("const")) {
                    (Some(Value::Array(vs)), _) => vs.iter().collect(),
                    (_, Some(v)) => vec![v],
                    _ => Vec::new(),
                };
                let mut kinds: Vec<&str> = values
                    .iter()
                    .map(|v| match v {
                        Value::String(_) => "string",
                        Value::Bool(_) => "boolean",
                        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
                        Value::Number(_) => "number",
                        Value::Null => "null",
                        _ => "json",
                    })
                    .collect();
                kinds.sort_unstable();
                kinds.dedup();
                kinds
            }
        };
        let named: Vec<&str> = named.into_iter().filter(|t| *t != "null").collect();
        match named.as_slice() {
            ["string"] => Kind::Text,
            ["integer"] => Kind::Integer,
            ["number"] | ["integer", "number"] | ["number", "integer"] => Kind::Number,
            ["boolean"] => Kind::Boolean,
            _ => Kind::Json,
        }
    }
}

/// One column of a type's view.
#[derive(Debug, Clone, PartialEq)]
pub struct Column {
    pub name: String,
    pub kind: Kind,
    /// What it reads from events of each version below `TypeView::latest`, ascending: an event
    /// of a version at or below the first listed reads as that one. Versions not listed (and
    /// versions above the latest) read `latest`.
    pub older: Vec<(i32, Read)>,
    /// What it reads from an event of the latest version.
    pub latest: Read,
}

impl Column {
    /// What this column reads from an event of `version`.
    pub fn read(&self, version: i32) -> &Read {
        self.older
            .iter()
            .find(|(v, _)| version <= *v)
            .map_or(&self.latest, |(_, r)| r)
    }
}

/// The view of one event type.
#[derive(Debug, Clone, PartialEq)]
pub struct TypeView {
    /// The event type (`type` in `events`).
    pub type_name: String,
    /// The view's name: the type in snake case (`PurchaseMade` → `purchase_made`).
    pub name: String,
    pub latest: i32,
    pub columns: Vec<Column>,
}

impl TypeView {
    /// The view of a type from its registered versions (ascending, as the registry lists
    /// them); `None` if the type's name gives no view name.
    pub fn of(versions: &[EventSchema]) -> Result<Option<TypeView>> {
        let Some(last) = versions.last() else {
            return Ok(None);
        };
        let Some(name) = view_name(&last.type_name) else {
            return Ok(None);
        };
        let mut steps_of = Vec::with_capacity(versions.len());
        for v in versions {
            steps_of.push((v.version, steps(&v.schema)?));
        }
        let props = last.schema.get("properties").and_then(Value::as_object);
        let mut columns = Vec::new();
        for (prop, schema) in props.into_iter().flatten() {
            let mut latest = Read::Field(prop.clone());
            if let Some(default) = schema.get("default") {
                // The schema's own default fills the property where an event lacks it.
                latest = Read::Or(Box::new(latest), default.clone());
            }
            // Walk down: the read of version v is the read of v+1 before v+1's steps.
            let mut older = Vec::new();
            let mut read = latest.clone();
            for pair in steps_of.windows(2).rev() {
                let ((below, _), (_, steps)) = (&pair[0], &pair[1]);
                read = read.before(steps);
                older.push((*below, read.clone()));
            }
            older.reverse();
            // One entry per run of versions that read alike (the run's top version), and none
            // for the run just below the latest that reads as it does.
            let mut kept: Vec<(i32, Read)> = Vec::new();
            for (v, r) in older {
                match kept.last_mut() {
                    Some(last) if last.1 == r => last.0 = v,
                    _ => kept.push((v, r)),
                }
            }
            if kept.last().is_some_and(|(_, r)| *r == latest) {
                kept.pop();
            }
            columns.push(Column {
                name: prop.clone(),
                kind: Kind::of(schema),
                older: kept,
                latest,
            });
        }
        Ok(Some(TypeView {
            type_name: last.type_name.clone(),
            name,
            latest: last.version,
            columns,
        }))
    }

    /// The row a view gives for an event of `version` with `payload` (the reference the query
    /// engine's views are tested against).
    pub fn row(&self, version: i32, payload: &Value) -> Vec<(String, Value)> {
        self.columns
            .iter()
            .map(|c| {
                let read = c.read(version);
                let mut value = read.eval(payload);
                // An integer column computed through a factor is rounded, as the views do.
                if c.kind == Kind::Integer
                    && read.scales()
                    && let Some(v) = value.as_f64()
                {
                    value = Value::from(v.round() as i64);
                }
                (c.name.clone(), value)
            })
            .collect()
    }
}

/// An event type's name in snake case, as a view name: `PurchaseMade` → `purchase_made`,
/// `page.viewed` → `page_viewed`, `HTTPRequest` → `http_request`; `None` if nothing is left.
pub fn view_name(type_name: &str) -> Option<String> {
    let chars: Vec<char> = type_name.chars().collect();
    let mut out = String::with_capacity(type_name.len() + 4);
    for (i, &c) in chars.iter().enumerate() {
        if c.is_ascii_alphanumeric() {
            if c.is_ascii_uppercase() && i > 0 {
                let prev = chars[i - 1];
                let next_lower = chars.get(i + 1).is_some_and(char::is_ascii_lowercase);
                if prev.is_ascii_lowercase()
                    || prev.is_ascii_digit()
                    || (prev.is_ascii_uppercase() && next_lower)
                {
                    out.push('_');
                }
            }
            out.push(c.to_ascii_lowercase());
        } else if !out.ends_with('_') {
            out.push('_');
        }
    }
    let name = out.trim_matches('_').to_string();
    (!name.is_empty()).then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn version(v: i32, schema: Value) -> EventSchema {
        EventSchema {
            type_name: "PurchaseMade".into(),
            version: v,
            schema,
            created_at_ms: 0,
            created_by: "test".into(),
        }
    }

    #[test]
    fn names_are_snake_case() {
        for (t, v) in [
            ("PurchaseMade", "purchase_made"),
            ("page.viewed", "page_viewed"),
            ("HTTPRequest", "http_request"),
            ("order-v2Shipped", "order_v2_shipped"),
            ("purchase", "purchase"),
        ] {
            assert_eq!(view_name(t).as_deref(), Some(v), "{t}");
        }
        assert_eq!(view_name("..."), None);
    }

    #[test]
    fn a_view_reads_every_version_at_the_latest() {
        let versions = [
            version(
                1,
                json!({"properties": {"cents": {"type": "integer"}, "sku": {"type": "string"}}}),
            ),
            version(
                2,
                json!({
                    "properties": {"amount": {"type": "number"}, "sku": {"type": "string"}},
                    "x-floe-upcast": [
                        {"op": "rename", "from": "cents", "to": "amount"},
                        {"op": "convert", "field": "amount", "factor": 0.01}
                    ]
                }),
            ),
            version(
                3,
                json!({
                    "properties": {
                        "amount": {"type": "number"},
                        "sku": {"type": "string"},
                        "currency": {"type": "string"},
                        "coupon": {"type": ["string", "null"], "default": "none"}
                    },
                    "x-floe-upcast": [{"op": "default", "field": "currency", "value": "EUR"}]
                }),
            ),
        ];
        let view = TypeView::of(&versions).unwrap().unwrap();
        assert_eq!(view.name, "purchase_made");
        let kinds: Vec<(&str, Kind)> = view
            .columns
            .iter()
            .map(|c| (c.name.as_str(), c.kind))
            .collect();
        assert!(kinds.contains(&("amount", Kind::Number)));
        assert!(kinds.contains(&("coupon", Kind::Text)));
        assert_eq!(Kind::of(&json!({"enum": ["EUR", "USD"]})), Kind::Text);
        assert_eq!(Kind::of(&json!({"const": 3})), Kind::Integer);
        assert_eq!(Kind::of(&json!({"enum": ["a", 1]})), Kind::Json);
        let get = |row: Vec<(String, Value)>, name: &str| {
            row.into_iter().find(|(n, _)| n == name).unwrap().1
        };
        let v1 = json!({"cents": 1999, "sku": "a"});
        assert_eq!(get(view.row(1, &v1), "amount"), json!(19.99));
        assert_eq!(get(view.row(1, &v1), "currency"), json!("EUR"));
        assert_eq!(get(view.row(1, &v1), "coupon"), json!("none"));
        let v3 = json!({"amount": 5.0, "sku": "b", "currency": "USD", "coupon": "X"});
        assert_eq!(get(view.row(3, &v3), "amount"), json!(5.0));
        assert_eq!(get(view.row(3, &v3), "currency"), json!("USD"));
        assert_eq!(get(view.row(7, &v3), "coupon"), json!("X"));
        // `sku` never changed: one read for every version.
        let sku = view.columns.iter().find(|c| c.name == "sku").unwrap();
        assert!(sku.older.is_empty(), "{:?}", sku.older);
        // `currency` reads the same from v1 and v2: one entry covers both.
        let currency = view.columns.iter().find(|c| c.name == "currency").unwrap();
        assert_eq!(currency.older.len(), 1, "{:?}", currency.older);
        assert_eq!(currency.older[0].0, 2);
    }
}
