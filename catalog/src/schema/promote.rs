//! Promoted properties: a top-level payload property that a schema marks `"x-floe-promote":
//! true` becomes a typed column of the tenant's `events` table, named as the property. The
//! column is added by Iceberg schema evolution (an optional field with a new id: files written
//! before read it as null) when the schema is registered, and filled from the payload by
//! every writer from then on ([`fill`]): ingest, compaction, and `floe backfill --promote`
//! (which rewrites the files written before).
//!
//! A promoted column holds the property of every event that has it with the column's JSON
//! type (a number for an integer column must be a whole one), whatever the event's type; any
//! other value, or none, is null. Promotion only adds columns: a property cannot be promoted
//! as a column `events` already has with another type, nor as one of its own columns.

use std::sync::Arc;

use arrow_array::builder::{BooleanBuilder, Float64Builder, Int64Builder, StringBuilder};
use arrow_array::{Array, ArrayRef, RecordBatch, StringArray};
use arrow_schema::DataType;
use iceberg::spec::{NestedField, PrimitiveType, Schema, TableMetadataBuilder, Type};
use iceberg::table::Table;
use serde_json::{Map, Value};

use super::view::Kind;
use crate::commit::{Attempt, Change, Committed};
use crate::table::{DAY_PARTITION, EVENTS_TABLE, events_schema};
use crate::tenant::TenantId;
use crate::{Catalog, Error, Result};

/// The schema keyword that promotes a property.
pub const KEYWORD: &str = "x-floe-promote";

/// A property promoted to a column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Promoted {
    pub name: String,
    pub ty: PrimitiveType,
}

/// The properties `schema` promotes, checked: scalar types only, and no name of a column the
/// `events` table is made of.
pub fn promoted(schema: &Value) -> Result<Vec<Promoted>> {
    let Some(props) = schema.get("properties").and_then(Value::as_object) else {
        return Ok(Vec::new());
    };
    let base = events_schema()?;
    let mut out = Vec::new();
    for (name, prop) in props {
        match prop.get(KEYWORD) {
            None | Some(Value::Bool(false)) => continue,
            Some(Value::Bool(true)) => {}
            Some(_) => {
                return Err(Error::invalid(format!(
                    "/properties/{name}/{KEYWORD}: true or false"
                )));
            }
        }
        let ty = match Kind::of(prop) {
            Kind::Text => PrimitiveType::String,
            Kind::Integer => PrimitiveType::Long,
            Kind::Number => PrimitiveType::Double,
            Kind::Boolean => PrimitiveType::Boolean,
            Kind::Json => {
                return Err(Error::invalid(format!(
                    "/properties/{name}: only a property of one type (string, integer, number \
                     or boolean) can be promoted to a column"
                )));
            }
        };
        // Engines that match names without case (Trino, Spark) must not see two columns
        // under one name, nor one named as the partition.
        let taken = base
            .as_struct()
            .fields()
            .iter()
            .map(|f| f.name.as_str())
            .chain([DAY_PARTITION])
            .any(|b| b.eq_ignore_ascii_case(name));
        if taken {
            return Err(Error::invalid(format!(
                "/properties/{name}: {name:?} is a column (or the partition) of every event \
                 already, in some case; it cannot be promoted"
            )));
        }
        out.push(Promoted {
            name: name.clone(),
            ty,
        });
    }
    Ok(out)
}

/// `schema` (a table's) with the columns of `promoted` it lacks added after its last column;
/// `None` if it has them all. Refused if one is a column of another type.
pub fn evolved(
    schema: &Schema,
    last_column_id: i32,
    promoted: &[Promoted],
) -> Result<Option<Schema>> {
    let mut fields: Vec<_> = schema.as_struct().fields().to_vec();
    let mut next_id = last_column_id;
    for p in promoted {
        let same_but_case = fields
            .iter()
            .find(|f| f.name != p.name && f.name.eq_ignore_ascii_case(&p.name));
        if let Some(f) = same_but_case {
            return Err(Error::invalid(format!(
                "{:?} cannot be promoted: `events` has a column {:?}, the same name in another \
                 case",
                p.name, f.name
            )));
        }
        match schema.field_by_name(&p.name) {
            Some(f) if *f.field_type == Type::Primitive(p.ty.clone()) => continue,
            Some(f) => {
                return Err(Error::invalid(format!(
                    "{:?} cannot be promoted as {}: `events` has it as a column of type {}",
                    p.name, p.ty, f.field_type
                )));
            }
            None => {
                next_id += 1;
                fields.push(Arc::new(NestedField::optional(
                    next_id,
                    p.name.clone(),
                    Type::Primitive(p.ty.clone()),
                )));
            }
        }
    }
    if next_id == last_column_id {
        return Ok(None);
    }
    Schema::builder()
        .with_schema_id(schema.schema_id() + 1)
        .with_fields(fields)
        .build()
        .map(Some)
        .map_err(Error::ice("building the evolved events schema"))
}

/// The columns of an events batch that are promoted properties (every one `events` is not
/// made of), by index.
pub fn promoted_columns(batch: &RecordBatch) -> Result<Vec<usize>> {
    let base = events_schema()?;
    Ok(batch
        .schema()
        .fields()
        .iter()
        .enumerate()
        .filter(|(_, f)| base.field_by_name(f.name()).is_none())
        .map(|(i, _)| i)
        .collect())
}

/// `batch` (rows of `events`) with the nulls of its promoted columns filled from each row's
/// payload. A batch without promoted columns is returned as it is; rows whose promoted values
/// are all set are not parsed.
pub fn fill(batch: RecordBatch) -> Result<RecordBatch> {
    let promoted = promoted_columns(&batch)?;
    if promoted.is_empty() || batch.num_rows() == 0 {
        return Ok(batch);
    }
    let payload = batch
        .column_by_name("payload")
        .and_then(|c| c.as_any().downcast_ref::<StringArray>())
        .ok_or_else(|| Error::internal("an events batch without a text payload column"))?;
    let schema = batch.schema();
    let mut builders: Vec<(&str, &ArrayRef, Builder)> = promoted
        .iter()
        .map(|i| {
            let field = schema.field(*i);
            let builder = Builder::of(field.data_type(), batch.num_rows())?;
            Ok((field.name().as_str(), batch.column(*i), builder))
        })
        .collect::<Result<_>>()?;
    for row in 0..batch.num_rows() {
        let set = builders.iter().all(|(_, c, _)| c.is_valid(row));
        let parsed: Option<Map<String, Value>> = match set || payload.is_null(row) {
            true => None,
            false => serde_json::from_str(payload.value(row)).ok(),
        };
        for (name, column, builder) in &mut builders {
            builder.push(column, row, parsed.as_ref().and_then(|p| p.get(*name)));
        }
    }
    let mut arrays = batch.columns().to_vec();
    for (i, (_, _, builder)) in promoted.iter().zip(builders) {
        arrays[*i] = builder.finish();
    }
    RecordBatch::try_new(schema, arrays)
        .map_err(|e| Error::internal(format!("filling promoted columns: {e}")))
}

/// The values of one promoted column as they are rebuilt.
enum Builder {
    Text(StringBuilder),
    Long(Int64Builder),
    Double(Float64Builder),
    Boolean(BooleanBuilder),
}

impl Builder {
    fn of(ty: &DataType, rows: usize) -> Result<Builder> {
        Ok(match ty {
            DataType::Utf8 => Builder::Text(StringBuilder::with_capacity(rows, rows * 8)),
            DataType::Int64 => Builder::Long(Int64Builder::with_capacity(rows)),
            DataType::Float64 => Builder::Double(Float64Builder::with_capacity(rows)),
            DataType::Boolean => Builder::Boolean(BooleanBuilder::with_capacity(rows)),
            other => {
                return Err(Error::internal(format!(
                    "a promoted column of type {other}: only text, integers, doubles and booleans"
                )));
            }
        })
    }

    /// Appends row `row` of `column`, or (where it is null) `value` if it has the column's type.
    fn push(&mut self, column: &ArrayRef, row: usize, value: Option<&Value>) {
        use arrow_array::cast::AsArray;
        use arrow_array::types::{Float64Type, Int64Type};
        let set = column.is_valid(row);
        match self {
            Builder::Text(b) => b.append_option(if set {
                Some(column.as_string::<i32>().value(row))
            } else {
                value.and_then(Value::as_str)
            }),
            Builder::Long(b) => b.append_option(if set {
                Some(column.as_primitive::<Int64Type>().value(row))
            } else {
                value.and_then(Value::as_i64)
            }),
            Builder::Double(b) => b.append_option(if set {
                Some(column.as_primitive::<Float64Type>().value(row))
            } else {
                value.and_then(Value::as_f64)
            }),
            Builder::Boolean(b) => b.append_option(if set {
                Some(column.as_boolean().value(row))
            } else {
                value.and_then(Value::as_bool)
            }),
        }
    }

    fn finish(self) -> ArrayRef {
        match self {
            Builder::Text(mut b) => Arc::new(b.finish()),
            Builder::Long(mut b) => Arc::new(b.finish()),
            Builder::Double(mut b) => Arc::new(b.finish()),
            Builder::Boolean(mut b) => Arc::new(b.finish()),
        }
    }
}

/// Adds the promoted columns to a tenant's `events` table.
struct Promote {
    columns: Vec<Promoted>,
}

impl Change for Promote {
    /// Whether the schema changed.
    type Value = bool;

    async fn attempt(
        &mut self,
        catalog: &Catalog,
        current: Table,
        _conflicts: u32,
    ) -> Result<Attempt<bool>> {
        let metadata = current.metadata();
        let Some(schema) = evolved(
            metadata.current_schema(),
            metadata.last_column_id(),
            &self.columns,
        )?
        else {
            return Ok(Attempt::Done(false));
        };
        let old_location = current
            .metadata_location()
            .ok_or_else(|| Error::internal("loaded table without a metadata location"))?
            .to_string();
        let built =
            TableMetadataBuilder::new_from_metadata(metadata.clone(), Some(old_location.clone()))
                .add_current_schema(schema)
                .map_err(Error::ice("adding the schema"))?
                .build()
                .map_err(Error::ice("evolving the events schema"))?;
        let prepared = catalog.prepare_metadata(&old_location, built).await?;
        Ok(Attempt::Swap {
            prepared: Box::new(prepared),
            value: true,
        })
    }
}

impl Catalog {
    /// Checks that `columns` can be promoted in the tenant's `events` table as it is now.
    pub async fn check_promotion(&self, tenant: &TenantId, columns: &[Promoted]) -> Result<()> {
        if columns.is_empty() {
            return Ok(());
        }
        let table = self.load_table(tenant, EVENTS_TABLE).await?;
        let metadata = table.metadata();
        evolved(
            metadata.current_schema(),
            metadata.last_column_id(),
            columns,
        )?;
        Ok(())
    }

    /// Adds the columns of `columns` the tenant's `events` table lacks, in one metadata commit
    /// (no snapshot: the data is as it was). `true` if the schema changed.
    pub async fn promote_columns(&self, tenant: &TenantId, columns: Vec<Promoted>) -> Result<bool> {
        if columns.is_empty() {
            return Ok(false);
        }
        let mut change = Promote { columns };
        match self.commit_loop(tenant, EVENTS_TABLE, &mut change).await? {
            Committed::Done { value, .. } => Ok(value),
            Committed::KeptLosing { .. } => Err(Error::CommitConflict {
                table: format!("{tenant}.{EVENTS_TABLE}"),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn scalar_properties_are_promoted_and_others_refused() {
        let schema = json!({"properties": {
            "amount": {"type": "number", KEYWORD: true},
            "page": {"type": ["string", "null"], KEYWORD: true},
            "note": {"type": "string"}
        }});
        let got = promoted(&schema).unwrap();
        assert_eq!(
            got,
            [
                Promoted {
                    name: "amount".into(),
                    ty: PrimitiveType::Double
                },
                Promoted {
                    name: "page".into(),
                    ty: PrimitiveType::String
                },
            ]
        );
        for bad in [
            json!({"properties": {"items": {"type": "array", KEYWORD: true}}}),
            json!({"properties": {"ts": {"type": "string", KEYWORD: true}}}),
            json!({"properties": {"TS": {"type": "string", KEYWORD: true}}}),
            json!({"properties": {"ts_day": {"type": "string", KEYWORD: true}}}),
            json!({"properties": {"a": {"type": "string", KEYWORD: "yes"}}}),
        ] {
            assert!(promoted(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn evolution_adds_missing_columns_with_new_ids_and_refuses_other_types() {
        let base = events_schema().unwrap();
        let amount = Promoted {
            name: "amount".into(),
            ty: PrimitiveType::Double,
        };
        let next = evolved(&base, 8, std::slice::from_ref(&amount))
            .unwrap()
            .unwrap();
        assert_eq!(next.field_by_name("amount").unwrap().id, 9);
        assert!(!next.field_by_name("amount").unwrap().required);
        assert_eq!(
            evolved(&next, 9, std::slice::from_ref(&amount)).unwrap(),
            None
        );
        let text = Promoted {
            name: "amount".into(),
            ty: PrimitiveType::String,
        };
        assert!(evolved(&next, 9, &[text]).is_err());
    }

    #[test]
    fn fill_takes_values_of_the_columns_type_from_the_payload() {
        use arrow_array::cast::AsArray;
        use arrow_array::types::Float64Type;
        let schema = Arc::new(arrow_schema::Schema::new(vec![
            arrow_schema::Field::new("payload", DataType::Utf8, false),
            arrow_schema::Field::new("amount", DataType::Float64, true),
            arrow_schema::Field::new("page", DataType::Utf8, true),
        ]));
        let payload: ArrayRef = Arc::new(StringArray::from(vec![
            r#"{"amount": 12.5, "page": "/a"}"#,
            r#"{"amount": "12", "page": 3}"#,
            r#"{"amount": 7}"#,
            "not json",
        ]));
        let nulls = |t: &DataType| arrow_array::new_null_array(t, 4);
        let batch = RecordBatch::try_new(
            schema,
            vec![payload, nulls(&DataType::Float64), nulls(&DataType::Utf8)],
        )
        .unwrap();
        let filled = fill(batch).unwrap();
        let amount = filled.column(1).as_primitive::<Float64Type>();
        let amounts: Vec<Option<f64>> = amount.iter().collect();
        assert_eq!(amounts, [Some(12.5), None, Some(7.0), None]);
        let pages: Vec<Option<&str>> = filled.column(2).as_string::<i32>().iter().collect();
        assert_eq!(pages, [Some("/a"), None, None, None]);
    }
}
