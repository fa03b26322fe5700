//! Upcasting: declarative steps, registered with a version of an event type, that lead an
//! event of the version before it to this one. The log keeps every payload as it was sent;
//! readers of the per-type views see each event at the latest version ([`super::view`]).
//!
//! The steps are the schema keyword `x-floe-upcast`, an array applied in order:
//!
//! ```json
//! "x-floe-upcast": [
//!   {"op": "rename", "from": "amount_cents", "to": "amount"},
//!   {"op": "convert", "field": "amount", "factor": 0.01},
//!   {"op": "default", "field": "currency", "value": "EUR"},
//!   {"op": "drop", "field": "legacy_id"}
//! ]
//! ```
//!
//! Steps name top-level payload properties. `default` fills a property the event lacks (or
//! holds null), `convert` multiplies a number by a constant (a unit change), `drop` removes
//! one, `rename` moves one. A reader derives each property of the latest version from an older
//! event by walking the steps backwards ([`Read`]); the compatibility check compares a new
//! version with the previous one as upcast by the new one's steps ([`upcast_schema`]).

use serde_json::{Map, Value, json};

use crate::{Error, Result};

/// The schema keyword that holds a version's upcasting steps.
pub const KEYWORD: &str = "x-floe-upcast";

/// One upcasting step, from the version before to the one that carries it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Step {
    /// The property `from` is called `to` from this version on.
    Rename { from: String, to: String },
    /// An event without `field` (or with null) gets `value`.
    Default { field: String, value: Value },
    /// `field` is gone from this version on.
    Drop { field: String },
    /// `field` (a number) is multiplied by `factor`: a change of unit.
    Convert { field: String, factor: f64 },
}

impl Step {
    /// The properties of the later version the step writes.
    fn writes(&self) -> &str {
        match self {
            Step::Rename { to, .. } => to,
            Step::Default { field, .. } | Step::Drop { field } | Step::Convert { field, .. } => {
                field
            }
        }
    }
}

/// The upcasting steps `schema` carries (none without the keyword), checked: known operations,
/// non-empty property names, finite non-zero factors, and (if the schema names its properties)
/// only properties it names as targets of `rename`, `default` and `convert`.
pub fn steps(schema: &Value) -> Result<Vec<Step>> {
    let Some(raw) = schema.get(KEYWORD) else {
        return Ok(Vec::new());
    };
    let Value::Array(items) = raw else {
        return Err(Error::invalid(format!(
            "/{KEYWORD}: a list of steps ({{\"op\": \"rename\"|\"default\"|\"drop\"|\"convert\", ...}})"
        )));
    };
    let names = schema.get("properties").and_then(Value::as_object);
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let at = format!("/{KEYWORD}/{i}");
        let step: Step = serde_json::from_value(item.clone()).map_err(|e| {
            Error::invalid(format!(
                "{at}: {e} (a step is {{\"op\": \"rename\", \"from\", \"to\"}}, {{\"op\": \
                 \"default\", \"field\", \"value\"}}, {{\"op\": \"drop\", \"field\"}} or \
                 {{\"op\": \"convert\", \"field\", \"factor\"}})"
            ))
        })?;
        let named = [
            match &step {
                Step::Rename { from, .. } => from.as_str(),
                _ => step.writes(),
            },
            step.writes(),
        ];
        if named.iter().any(|n| n.is_empty()) {
            return Err(Error::invalid(format!("{at}: a property name is empty")));
        }
        match &step {
            Step::Rename { from, to } if from == to => {
                return Err(Error::invalid(format!("{at}: renames {from:?} to itself")));
            }
            Step::Convert { factor, .. } if !factor.is_finite() || *factor == 0.0 => {
                return Err(Error::invalid(format!(
                    "{at}: the factor is a finite number other than 0"
                )));
            }
            _ => {}
        }
        let target = !matches!(step, Step::Drop { .. });
        if let Some(names) = names.filter(|_| target)
            && !names.contains_key(step.writes())
        {
            return Err(Error::invalid(format!(
                "{at}: {:?} is not one of the schema's properties",
                step.writes()
            )));
        }
        out.push(step);
    }
    Ok(out)
}

/// `old` (the previous version's schema) as it describes events after the steps of `new` (the
/// next version's schema): what `new` is compared with for compatibility. Renamed, dropped,
/// defaulted and converted properties are moved, removed, made required (a constant where the
/// old schema had none), and scaled (bounds too; a number read as an integer property of `new`
/// is rounded by readers, so it is an integer).
pub fn upcast_schema(old: &Value, new: &Value) -> Result<Value> {
    let steps = steps(new)?;
    let is_integer = |name: &str| {
        new.get("properties")
            .and_then(|p| p.get(name))
            .and_then(|p| p.get("type"))
            == Some(&json!("integer"))
    };
    if steps.is_empty() {
        return Ok(old.clone());
    }
    let mut out = match old {
        Value::Object(o) => o.clone(),
        _ => Map::new(),
    };
    let mut props = out
        .remove("properties")
        .and_then(|p| match p {
            Value::Object(p) => Some(p),
            _ => None,
        })
        .unwrap_or_default();
    let mut required: Vec<String> = out
        .remove("required")
        .and_then(|r| serde_json::from_value(r).ok())
        .unwrap_or_default();
    for step in &steps {
        match step {
            Step::Rename { from, to } => {
                if let Some(p) = props.remove(from) {
                    props.insert(to.clone(), p);
                }
                required.retain(|r| r != to);
                for r in &mut required {
                    if r == from {
                        *r = to.clone();
                    }
                }
            }
            Step::Default { field, value } => {
                props
                    .entry(field.clone())
                    .or_insert_with(|| json!({ "type": json_type(value), "const": value }));
                if !required.contains(field) {
                    required.push(field.clone());
                }
            }
            Step::Drop { field } => {
                props.remove(field);
                required.retain(|r| r != field);
            }
            Step::Convert { field, factor } => {
                if let Some(Value::Object(p)) = props.get_mut(field) {
                    scale_bounds(p, *factor);
                    if is_integer(field) && p.get("type") == Some(&json!("number")) {
                        p.insert("type".into(), json!("integer"));
                    }
                }
            }
        }
    }
    out.insert("properties".into(), Value::Object(props));
    if !required.is_empty() {
        out.insert("required".into(), json!(required));
    }
    Ok(Value::Object(out))
}

/// The JSON Schema `type` of a value.
fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// A number schema's bounds after its values are multiplied by `factor`; an integer becomes a
/// number unless the factor is a whole number.
fn scale_bounds(p: &mut Map<String, Value>, factor: f64) {
    if factor.fract() != 0.0 && p.get("type") == Some(&json!("integer")) {
        p.insert("type".into(), json!("number"));
    }
    p.remove("multipleOf");
    let bounds = ["minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"];
    let scaled: Vec<(&str, Option<f64>)> = bounds
        .iter()
        .map(|b| {
            let v = p.get(*b).and_then(Value::as_f64);
            (*b, v.map(|v| Factor::of(factor).apply(v)))
        })
        .collect();
    for (b, _) in &scaled {
        p.remove(*b);
    }
    if factor < 0.0 {
        // Bounds swap sides; dropping them is the simple, still-correct widening.
        return;
    }
    for (b, v) in scaled {
        if let Some(v) = v.and_then(serde_json::Number::from_f64) {
            p.insert(b.into(), Value::Number(v));
        }
    }
}

/// How a property of a later version is read from an event of an earlier one.
#[derive(Debug, Clone, PartialEq)]
pub enum Read {
    /// The earlier event cannot hold it: null.
    Absent,
    /// The earlier event's top-level property of this name.
    Field(String),
    /// A number read times a constant.
    Scale(Box<Read>, f64),
    /// A read, or this value where it gives null.
    Or(Box<Read>, Value),
}

impl Read {
    /// This read, one version earlier: `steps` are those that led the earlier version to the
    /// later one, undone last first.
    pub fn before(self, steps: &[Step]) -> Read {
        steps.iter().rev().fold(self, |read, step| read.undo(step))
    }

    fn undo(self, step: &Step) -> Read {
        match self {
            Read::Absent => Read::Absent,
            Read::Scale(r, k) => match r.undo(step) {
                Read::Absent => Read::Absent,
                r => Read::Scale(Box::new(r), k),
            },
            Read::Or(r, v) => Read::Or(Box::new(r.undo(step)), v),
            Read::Field(name) => match step {
                Step::Rename { from, to } if name == *to => Read::Field(from.clone()),
                // Renamed away: a property of this name later on is a new one.
                Step::Rename { from, .. } if name == *from => Read::Absent,
                Step::Drop { field } if name == *field => Read::Absent,
                Step::Default { field, value } if name == *field => {
                    Read::Or(Box::new(Read::Field(name)), value.clone())
                }
                Step::Convert { field, factor } if name == *field => {
                    Read::Scale(Box::new(Read::Field(name)), *factor)
                }
                _ => Read::Field(name),
            },
        }
    }

    /// Whether a multiplication is part of this read.
    pub fn scales(&self) -> bool {
        match self {
            Read::Scale(..) => true,
            Read::Or(r, _) => r.scales(),
            Read::Absent | Read::Field(_) => false,
        }
    }

    /// The value this read gives for `payload` (the reference the views are tested against).
    pub fn eval(&self, payload: &Value) -> Value {
        match self {
            Read::Absent => Value::Null,
            Read::Field(name) => payload.get(name).cloned().unwrap_or(Value::Null),
            Read::Scale(r, k) => match r.eval(payload).as_f64() {
                Some(v) => serde_json::Number::from_f64(Factor::of(*k).apply(v))
                    .map_or(Value::Null, Value::Number),
                None => Value::Null,
            },
            Read::Or(r, v) => match r.eval(payload) {
                Value::Null => v.clone(),
                got => got,
            },
        }
    }
}

/// How a conversion multiplies: by the factor, or (a factor that is the inverse of a whole
/// number, as 0.01) by dividing by that number, which rounds as a hand computation does
/// (`1999 / 100` is 19.99; `1999 * 0.01` is 19.990000000000002).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Factor {
    Times(f64),
    DividedBy(f64),
}

impl Factor {
    pub fn of(factor: f64) -> Factor {
        let inverse = 1.0 / factor;
        if inverse.abs() > 1.0 && inverse.fract() == 0.0 && inverse.is_finite() {
            Factor::DividedBy(inverse)
        } else {
            Factor::Times(factor)
        }
    }

    pub fn apply(self, v: f64) -> f64 {
        match self {
            Factor::Times(k) => v * k,
            Factor::DividedBy(d) => v / d,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn steps_of(list: Value) -> Vec<Step> {
        steps(&json!({ KEYWORD: list })).unwrap()
    }

    #[test]
    fn steps_parse_and_refuse_what_they_cannot_mean() {
        let s = steps_of(json!([
            {"op": "rename", "from": "cents", "to": "amount"},
            {"op": "convert", "field": "amount", "factor": 0.01},
            {"op": "default", "field": "currency", "value": "EUR"},
            {"op": "drop", "field": "legacy"}
        ]));
        assert_eq!(s.len(), 4);
        for bad in [
            json!({ KEYWORD: {"op": "drop"} }),
            json!({ KEYWORD: [{"op": "explode", "field": "a"}] }),
            json!({ KEYWORD: [{"op": "rename", "from": "a", "to": "a"}] }),
            json!({ KEYWORD: [{"op": "convert", "field": "a", "factor": 0}] }),
            json!({ KEYWORD: [{"op": "drop", "field": ""}] }),
            // A target the schema does not name.
            json!({ "properties": {"b": {}}, KEYWORD: [{"op": "rename", "from": "a", "to": "c"}] }),
        ] {
            assert!(steps(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn reads_walk_the_steps_backwards() {
        // v1 {cents} -> v2 rename cents->amount, convert amount x0.01 -> v3 default currency.
        let v2 = steps_of(json!([
            {"op": "rename", "from": "cents", "to": "amount"},
            {"op": "convert", "field": "amount", "factor": 0.01}
        ]));
        let v3 = steps_of(json!([{"op": "default", "field": "currency", "value": "EUR"}]));
        let amount_at_v1 = Read::Field("amount".into()).before(&v3).before(&v2);
        assert_eq!(amount_at_v1.eval(&json!({"cents": 1250})), json!(12.5));
        let currency_at_v1 = Read::Field("currency".into()).before(&v3).before(&v2);
        assert_eq!(currency_at_v1.eval(&json!({"cents": 1})), json!("EUR"));
        assert_eq!(
            currency_at_v1.eval(&json!({"currency": "USD"})),
            json!("USD")
        );
        // A property renamed away reads as absent before the rename.
        let cents_at_v1 = Read::Field("cents".into()).before(&v2);
        assert_eq!(cents_at_v1, Read::Absent);
        let dropped = Read::Field("legacy".into()).before(&steps_of(json!([
            {"op": "drop", "field": "legacy"}
        ])));
        assert_eq!(dropped, Read::Absent);
    }

    #[test]
    fn the_old_schema_is_upcast_for_the_compatibility_check() {
        let old = json!({
            "type": "object",
            "properties": {"cents": {"type": "integer", "minimum": 0}, "legacy": {}},
            "required": ["cents", "legacy"]
        });
        let new = json!({ KEYWORD: [
            {"op": "rename", "from": "cents", "to": "amount"},
            {"op": "convert", "field": "amount", "factor": 0.01},
            {"op": "default", "field": "currency", "value": "EUR"},
            {"op": "drop", "field": "legacy"}
        ]});
        let up = upcast_schema(&old, &new).unwrap();
        assert_eq!(
            up,
            json!({
                "type": "object",
                "properties": {
                    "amount": {"type": "number", "minimum": 0.0},
                    "currency": {"type": "string", "const": "EUR"}
                },
                "required": ["amount", "currency"]
            })
        );
    }
}
