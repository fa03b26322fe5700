//! Compatibility between two versions of an event type's JSON Schema, as schema registries
//! define it: `backward` (a reader with the new schema accepts every event valid under the
//! old: the new one accepts at least as much), `forward` (readers of the old schema accept
//! every event valid under the new: it accepts at most as much), `full` (both), `none`.
//!
//! The check is structural over the keywords that decide what a payload may hold: `type`,
//! `enum`/`const`, numeric and length bounds, `pattern`, `format`, `required`, `properties`,
//! `additionalProperties` and `items`. "A accepts at least what B accepts" is decided keyword by
//! keyword, conservatively: where it cannot be shown (a `pattern` that changed, an `anyOf` that
//! changed), the change is reported, naming the JSON pointer of the schema location and the
//! keyword, so a producer sees what to undo. The rules follow Confluent Schema Registry's
//! strict policy for JSON Schema (an open object's new property must accept any value to keep
//! `backward`; a property removed from a closed one breaks it; a new required property needs a
//! `default`), except that `format` counts as a constraint and any change to a keyword the
//! check does not reason about (`anyOf`, `oneOf`, `allOf`, `not`, `if`, `$ref`, `$defs`,
//! `patternProperties`, `propertyNames`, `unevaluated*`, `dependent*`, `prefixItems`,
//! `contains`, `uniqueItems`, …) is reported.

use serde_json::{Map, Value};

/// A compatibility mode of an event type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Compatibility {
    Backward,
    Forward,
    Full,
    None,
}

impl Compatibility {
    pub fn parse(s: &str) -> crate::Result<Compatibility> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "backward" => Compatibility::Backward,
            "forward" => Compatibility::Forward,
            "full" => Compatibility::Full,
            "none" => Compatibility::None,
            other => {
                return Err(crate::Error::invalid(format!(
                    "compatibility {other:?}: one of backward, forward, full, none"
                )));
            }
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Compatibility::Backward => "backward",
            Compatibility::Forward => "forward",
            Compatibility::Full => "full",
            Compatibility::None => "none",
        }
    }
}

/// Why `new` breaks `mode` against `old`: empty when compatible.
pub fn breaks(mode: Compatibility, old: &Value, new: &Value) -> Vec<String> {
    let mut out = Vec::new();
    if matches!(mode, Compatibility::Backward | Compatibility::Full) {
        let mut found = Vec::new();
        widens(old, new, "", &mut found);
        out.extend(found.into_iter().map(|r| format!("backward: {r}")));
    }
    if matches!(mode, Compatibility::Forward | Compatibility::Full) {
        let mut found = Vec::new();
        widens(new, old, "", &mut found);
        out.extend(found.into_iter().map(|r| format!("forward: {r}")));
    }
    out
}

/// Records in `out` each way `to` may refuse a value `from` accepts (`at`: the JSON pointer
/// of this location in the schemas).
fn widens(from: &Value, to: &Value, at: &str, out: &mut Vec<String>) {
    let anything = Map::new();
    let (from, to) = match (from, to) {
        (_, Value::Bool(true)) | (Value::Bool(false), _) => return,
        (_, Value::Bool(false)) => {
            out.push(format!("{}: nothing is allowed here any more", here(at)));
            return;
        }
        (Value::Bool(true), Value::Object(t)) => (&anything, t),
        (Value::Object(f), Value::Object(t)) => (f, t),
        _ => {
            out.push(format!("{}: not a schema", here(at)));
            return;
        }
    };
    types(from, to, at, out);
    values(from, to, at, out);
    bounds(from, to, at, out);
    object(from, to, at, out);
    if let Some(t) = to.get("items") {
        let f = from.get("items").unwrap_or(&Value::Bool(true));
        widens(f, t, &format!("{at}/items"), out);
    }
    // Keywords this check does not reason about: any change to one is reported.
    for keyword in [
        "anyOf",
        "oneOf",
        "allOf",
        "not",
        "if",
        "then",
        "else",
        "$ref",
        "$defs",
        "definitions",
        "patternProperties",
        "propertyNames",
        "unevaluatedProperties",
        "unevaluatedItems",
        "dependentRequired",
        "dependentSchemas",
        "dependencies",
        "prefixItems",
        "contains",
        "minContains",
        "maxContains",
        "uniqueItems",
    ] {
        if to.get(keyword) != from.get(keyword) {
            out.push(format!("{}: `{keyword}` changed", here(at)));
        }
    }
}

fn here(at: &str) -> String {
    if at.is_empty() {
        "/".to_string()
    } else {
        at.to_string()
    }
}

/// The JSON types a schema's `type` allows (`None`: any).
fn type_set(s: &Map<String, Value>) -> Option<Vec<&str>> {
    match s.get("type")? {
        Value::String(t) => Some(vec![t.as_str()]),
        Value::Array(ts) => Some(ts.iter().filter_map(Value::as_str).collect()),
        _ => None,
    }
}

fn types(from: &Map<String, Value>, to: &Map<String, Value>, at: &str, out: &mut Vec<String>) {
    let Some(allowed) = type_set(to) else {
        return;
    };
    let accepts = |t: &str| allowed.contains(&t) || (t == "integer" && allowed.contains(&"number"));
    match type_set(from) {
        None => out.push(format!(
            "{at}/type: restricted to {} where any type was allowed",
            allowed.join(", ")
        )),
        Some(had) => {
            for t in had.into_iter().filter(|t| !accepts(t)) {
                out.push(format!("{at}/type: {t} is no longer allowed"));
            }
        }
    }
}

/// `enum` and `const`: every value `from` allows must be one `to` allows.
fn values(from: &Map<String, Value>, to: &Map<String, Value>, at: &str, out: &mut Vec<String>) {
    let listed = |s: &Map<String, Value>| -> Option<Vec<Value>> {
        if let Some(c) = s.get("const") {
            return Some(vec![c.clone()]);
        }
        s.get("enum").and_then(Value::as_array).cloned()
    };
    let Some(allowed) = listed(to) else {
        return;
    };
    match listed(from) {
        None => out.push(format!(
            "{at}/enum: values restricted to a list where any was allowed"
        )),
        Some(had) => {
            for v in had.iter().filter(|v| !allowed.contains(v)) {
                out.push(format!("{at}/enum: {v} is no longer allowed"));
            }
        }
    }
}

/// Numeric and length bounds: `to`'s must be no tighter than `from`'s; `pattern` and `format`
/// must not appear or change.
fn bounds(from: &Map<String, Value>, to: &Map<String, Value>, at: &str, out: &mut Vec<String>) {
    let num = |s: &Map<String, Value>, k: &str| s.get(k).and_then(Value::as_f64);
    for (keyword, lower) in [
        ("minimum", true),
        ("exclusiveMinimum", true),
        ("minLength", true),
        ("minItems", true),
        ("minProperties", true),
        ("maximum", false),
        ("exclusiveMaximum", false),
        ("maxLength", false),
        ("maxItems", false),
        ("maxProperties", false),
    ] {
        let Some(t) = num(to, keyword) else {
            continue;
        };
        let tighter = match num(from, keyword) {
            None => true,
            Some(f) if lower => t > f,
            Some(f) => t < f,
        };
        if tighter {
            out.push(format!("{at}/{keyword}: tightened to {t}"));
        }
    }
    for keyword in ["pattern", "format", "multipleOf"] {
        if let Some(t) = to.get(keyword)
            && from.get(keyword) != Some(t)
        {
            out.push(format!("{at}/{keyword}: now {t}"));
        }
    }
}

fn object(from: &Map<String, Value>, to: &Map<String, Value>, at: &str, out: &mut Vec<String>) {
    let names = |s: &Map<String, Value>, k: &str| -> Vec<String> {
        s.get(k)
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    let empty = Map::new();
    let props = |s: &Map<String, Value>| -> Map<String, Value> {
        s.get("properties")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_else(|| empty.clone())
    };
    let (from_props, to_props) = (props(from), props(to));
    // A property that becomes required breaks old events that lack it, unless the new schema
    // gives it a default (what upcasting fills in), as schema registries count it.
    let had_required = names(from, "required");
    for r in names(to, "required") {
        let defaulted = to_props.get(&r).is_some_and(|p| p.get("default").is_some());
        if !had_required.contains(&r) && !defaulted {
            out.push(format!("{at}/required: {r:?} became required"));
        }
    }
    let open = Value::Bool(true);
    let from_extra = from.get("additionalProperties").unwrap_or(&open);
    let to_extra = to.get("additionalProperties").unwrap_or(&open);
    // A property both name: its values must be accepted as before.
    for (name, t) in &to_props {
        let path = format!("{at}/properties/{}", escape(name));
        match from_props.get(name) {
            Some(f) => widens(f, t, &path, out),
            // New here: the old schema let it hold whatever `additionalProperties` allowed.
            None => widens(from_extra, t, &path, out),
        }
    }
    // A property only `from` names: `to` takes it as an additional property now.
    for (name, f) in &from_props {
        if !to_props.contains_key(name) {
            let path = format!("{at}/properties/{}", escape(name));
            widens(f, to_extra, &path, out);
        }
    }
    widens(
        from_extra,
        to_extra,
        &format!("{at}/additionalProperties"),
        out,
    );
}

/// A property name as a JSON pointer token.
fn escape(name: &str) -> String {
    name.replace('~', "~0").replace('/', "~1")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(mode: Compatibility, old: Value, new: Value) -> Vec<String> {
        breaks(mode, &old, &new)
    }

    fn purchase() -> Value {
        json!({
            "type": "object",
            "properties": {
                "amount": {"type": "number", "minimum": 0},
                "currency": {"type": "string", "enum": ["EUR", "USD"]}
            },
            "required": ["amount"]
        })
    }

    #[test]
    fn an_optional_property_with_any_value_is_compatible_both_ways() {
        let mut new = purchase();
        new["properties"]["note"] = json!({});
        assert!(check(Compatibility::Full, purchase(), new).is_empty());
    }

    #[test]
    fn a_new_required_property_breaks_backward_not_forward() {
        let mut new = purchase();
        new["properties"]["country"] = json!({});
        new["required"] = json!(["amount", "country"]);
        let b = check(Compatibility::Backward, purchase(), new.clone());
        assert_eq!(b, ["backward: /required: \"country\" became required"]);
        assert!(check(Compatibility::Forward, purchase(), new).is_empty());
    }

    #[test]
    fn a_new_required_property_with_a_default_keeps_backward() {
        let mut new = purchase();
        new["properties"]["country"] = json!({"type": "string", "default": "FR"});
        new["required"] = json!(["amount", "country"]);
        let b = check(Compatibility::Backward, purchase(), new);
        assert!(b.iter().all(|r| !r.contains("required")), "{b:?}");
    }

    #[test]
    fn narrowing_breaks_backward_and_widening_breaks_forward() {
        let mut narrower = purchase();
        narrower["properties"]["amount"]["type"] = json!("integer");
        narrower["properties"]["currency"]["enum"] = json!(["EUR"]);
        let b = check(Compatibility::Backward, purchase(), narrower.clone());
        assert!(
            b.iter()
                .any(|r| r.contains("/properties/amount/type: number")),
            "{b:?}"
        );
        assert!(
            b.iter()
                .any(|r| r.contains("/properties/currency/enum: \"USD\"")),
            "{b:?}"
        );
        assert!(check(Compatibility::Forward, purchase(), narrower.clone()).is_empty());
        // The same change the other way round is a widening.
        let f = check(Compatibility::Forward, narrower, purchase());
        assert_eq!(f.len(), 2, "{f:?}");
    }

    #[test]
    fn a_typed_property_added_to_an_open_object_breaks_backward() {
        // The old schema let `note` hold anything; the new one only strings.
        let mut new = purchase();
        new["properties"]["note"] = json!({"type": "string"});
        let b = check(Compatibility::Backward, purchase(), new.clone());
        assert!(
            b.iter().any(|r| r.contains("/properties/note/type")),
            "{b:?}"
        );
        // Closed to start with, adding it is backward compatible (nothing held it before).
        let mut closed = purchase();
        closed["additionalProperties"] = json!(false);
        let mut new_closed = new;
        new_closed["additionalProperties"] = json!(false);
        assert!(check(Compatibility::Backward, closed.clone(), new_closed.clone()).is_empty());
        // ... but not forward: old readers refuse the new property.
        let f = check(Compatibility::Forward, closed, new_closed);
        assert!(f.iter().any(|r| r.contains("/properties/note")), "{f:?}");
    }

    #[test]
    fn removing_a_property_from_a_closed_object_breaks_backward() {
        let mut closed = purchase();
        closed["additionalProperties"] = json!(false);
        let mut new = closed.clone();
        new["properties"]
            .as_object_mut()
            .unwrap()
            .remove("currency");
        let b = check(Compatibility::Backward, closed, new);
        assert!(
            b.iter().any(|r| r.contains("/properties/currency")),
            "{b:?}"
        );
    }

    #[test]
    fn a_change_under_a_keyword_the_check_does_not_reason_about_is_reported() {
        let mut new = purchase();
        new["patternProperties"] = json!({"^x-": {"type": "string"}});
        new["$defs"] = json!({"money": {"type": "number"}});
        let b = check(Compatibility::Backward, purchase(), new);
        assert!(
            b.iter().any(|r| r.contains("`patternProperties` changed")),
            "{b:?}"
        );
        assert!(b.iter().any(|r| r.contains("`$defs` changed")), "{b:?}");
    }

    #[test]
    fn none_accepts_anything() {
        assert!(check(Compatibility::None, purchase(), json!(false)).is_empty());
    }

    #[test]
    fn modes_parse_by_name() {
        assert_eq!(Compatibility::parse("FULL").unwrap(), Compatibility::Full);
        assert!(Compatibility::parse("transitive").is_err());
    }
}
