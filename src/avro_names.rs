//! Avro's name rules checked by hand rather than by regular expressions.
//!
//! Every Iceberg manifest and manifest list is an Avro file that carries its writer schema,
//! and `apache_avro` parses that schema for each file it opens, checking every record, field
//! and namespace name against the spec's rule with a regular expression. Reading the 5,000
//! manifests of a table spent about 4 % of `floe compact`'s CPU in those expressions
//! (BENCHMARKS.md, "Compaction of a table built from 5,000 commits"). The rule is small:
//! a name is `[A-Za-z_][A-Za-z0-9_]*`, a namespace such names joined by dots (or empty), and a
//! full name an optional namespace, a dot, and a name. [`install`] registers these checks once,
//! before any schema is parsed; they accept and refuse exactly what the spec's expressions do
//! (`same_answers_as_the_spec_expressions`).

use apache_avro::AvroResult;
use apache_avro::error::Details;
use apache_avro::schema::Namespace;
use apache_avro::validator::{
    EnumSymbolNameValidator, RecordFieldNameValidator, SchemaNameValidator,
    SchemaNamespaceValidator,
};

/// The checks of this module.
struct Spec;

/// `[A-Za-z_][A-Za-z0-9_]*`
fn is_name(s: &str) -> bool {
    let mut bytes = s.bytes();
    matches!(bytes.next(), Some(b'A'..=b'Z' | b'a'..=b'z' | b'_'))
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Names joined by dots, or nothing.
fn is_namespace(s: &str) -> bool {
    s.is_empty() || s.split('.').all(is_name)
}

impl SchemaNameValidator for Spec {
    fn validate(&self, full: &str) -> AvroResult<(String, Namespace)> {
        let (namespace, name) = match full.rsplit_once('.') {
            Some((namespace, name)) => (Some(namespace), name),
            None => (None, full),
        };
        if is_name(name) && namespace.is_none_or(is_namespace) {
            return Ok((name.to_string(), namespace.map(str::to_string)));
        }
        let rule = SchemaNameValidator::regex(self).as_str();
        Err(Details::InvalidSchemaName(full.to_string(), rule).into())
    }
}

impl SchemaNamespaceValidator for Spec {
    fn validate(&self, namespace: &str) -> AvroResult<()> {
        if is_namespace(namespace) {
            return Ok(());
        }
        let rule = SchemaNamespaceValidator::regex(self).as_str();
        Err(Details::InvalidNamespace(namespace.to_string(), rule).into())
    }
}

/// `Ok` for a name, else the error `refused` makes of it.
fn name(s: &str, refused: fn(String) -> Details) -> AvroResult<()> {
    if is_name(s) {
        return Ok(());
    }
    Err(refused(s.to_string()).into())
}

impl EnumSymbolNameValidator for Spec {
    fn validate(&self, symbol: &str) -> AvroResult<()> {
        name(symbol, Details::EnumSymbolName)
    }
}

impl RecordFieldNameValidator for Spec {
    fn validate(&self, field: &str) -> AvroResult<()> {
        name(field, Details::FieldName)
    }
}

/// Registers the checks, once per process and before any Avro schema is parsed (a check
/// already registered, by an earlier call, stays).
pub fn install() {
    let _ = apache_avro::validator::set_schema_name_validator(Box::new(Spec));
    let _ = apache_avro::validator::set_schema_namespace_validator(Box::new(Spec));
    let _ = apache_avro::validator::set_enum_symbol_name_validator(Box::new(Spec));
    let _ = apache_avro::validator::set_record_field_name_validator(Box::new(Spec));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_answers_as_the_spec_expressions() {
        let names = [
            "",
            ".",
            "..",
            "a",
            "_",
            "A9_",
            "9a",
            "a-b",
            "a.b",
            ".a",
            "a.",
            "a..b",
            "a.b.c",
            "_._",
            "a.9b",
            "9a.b",
            "é",
            "a.é",
            "manifest_entry",
            "r2",
            "r102",
            "k117_v118",
            "org.apache.iceberg.manifest_file",
            "a b",
            "a\n",
            "\na",
            "a.b.",
            "ab.c_d.E9",
        ];
        // Every string of up to three characters over a small alphabet, and the fixed ones.
        let alphabet = ['a', 'Z', '_', '0', '.', '-'];
        let mut all: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        for a in alphabet {
            all.push(format!("{a}"));
            for b in alphabet {
                all.push(format!("{a}{b}"));
                for c in alphabet {
                    all.push(format!("{a}{b}{c}"));
                }
            }
        }
        let name_rule = SchemaNameValidator::regex(&Spec);
        let namespace_rule = SchemaNamespaceValidator::regex(&Spec);
        let symbol_rule = EnumSymbolNameValidator::regex(&Spec);
        let field_rule = RecordFieldNameValidator::regex(&Spec);
        for s in &all {
            let ours = SchemaNameValidator::validate(&Spec, s).ok();
            let spec = name_rule.captures(s).map(|c| {
                (
                    c["name"].to_string(),
                    c.name("namespace").map(|m| m.as_str().to_string()),
                )
            });
            assert_eq!(ours, spec, "full name {s:?}");
            assert_eq!(
                SchemaNamespaceValidator::validate(&Spec, s).is_ok(),
                namespace_rule.is_match(s),
                "namespace {s:?}"
            );
            assert_eq!(
                EnumSymbolNameValidator::validate(&Spec, s).is_ok(),
                symbol_rule.is_match(s),
                "symbol {s:?}"
            );
            assert_eq!(
                RecordFieldNameValidator::validate(&Spec, s).is_ok(),
                field_rule.is_match(s),
                "field {s:?}"
            );
        }
    }
}
