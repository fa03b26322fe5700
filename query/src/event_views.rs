//! One view per registered event type (`purchase_made` for `PurchaseMade`): the type's events
//! with the top-level payload properties of its latest version as typed columns, every event
//! read through the upcasting steps of the versions after its own ([`TypeView`]). The payload
//! stays as it was sent; the view computes the latest shape at read time.
//!
//! A view's columns are the event's `event_id`, `ts`, `received_at`, `user_id` and `version`
//! (as sent), then the properties; a property named like one of those replaces it. A type whose
//! view name is already a table's (or another type's) has no view.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::datatypes::DataType;
use datafusion::catalog::{MemorySchemaProvider, SchemaProvider, TableProvider, view::ViewTable};
use datafusion::common::ScalarValue;
use datafusion::datasource::provider_as_source;
use datafusion::execution::FunctionRegistry;
use datafusion::functions::math::expr_fn::round;
use datafusion::logical_expr::{Expr, LogicalPlanBuilder, ScalarUDF, col, lit, try_cast, when};
use datafusion::prelude::SessionContext;
use floe_catalog::schema::EventSchema;
use floe_catalog::schema::upcast::{Factor, Read};
use floe_catalog::schema::view::{Column, Kind, TypeView};
use floe_catalog::table::EVENTS_TABLE;
use serde_json::Value;

use crate::Result;

/// The `events` columns a view carries before the payload's.
const EVENT_COLUMNS: [&str; 5] = ["event_id", "ts", "received_at", "user_id", "version"];

/// Registers in `tables` the view of each type in `schemas` (every version of every type of
/// the tenant), over its `events` table. Returns the names registered.
pub fn register(
    ctx: &SessionContext,
    tables: &MemorySchemaProvider,
    events: Arc<dyn TableProvider>,
    schemas: Vec<EventSchema>,
) -> Result<Vec<String>> {
    let mut by_type: BTreeMap<String, Vec<EventSchema>> = BTreeMap::new();
    for s in schemas {
        by_type.entry(s.type_name.clone()).or_default().push(s);
    }
    let base = floe_catalog::table::events_schema()?;
    let extract = Extract {
        scalar: ctx.udf("json_extract_scalar")?,
        json: ctx.udf("json_extract")?,
        promoted: events
            .schema()
            .fields()
            .iter()
            .filter(|f| base.field_by_name(f.name()).is_none())
            .map(|f| (f.name().clone(), f.data_type().clone()))
            .collect(),
    };
    let mut registered = Vec::new();
    for versions in by_type.values() {
        let view = match TypeView::of(versions) {
            Ok(Some(view)) => view,
            Ok(None) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "an event type's view cannot be built");
                continue;
            }
        };
        if tables.table_exist(&view.name) {
            tracing::warn!(
                view = view.name,
                event_type = view.type_name,
                "no view for this event type: its name is taken"
            );
            continue;
        }
        // A view that cannot be built is left out (and said so), not the session.
        match plan(&view, events.clone(), &extract) {
            Ok(provider) => {
                tables.register_table(view.name.clone(), provider)?;
                registered.push(view.name);
            }
            Err(e) => {
                tracing::warn!(view = view.name, error = %e, "an event type's view cannot be built");
            }
        }
    }
    Ok(registered)
}

/// How properties are read: Trino's JSON functions over the payload, or the promoted columns
/// of `events` (by name, with their type).
struct Extract {
    scalar: Arc<ScalarUDF>,
    json: Arc<ScalarUDF>,
    promoted: BTreeMap<String, DataType>,
}

fn plan(
    view: &TypeView,
    events: Arc<dyn TableProvider>,
    extract: &Extract,
) -> Result<Arc<dyn TableProvider>> {
    let shadowed = |name: &str| view.columns.iter().any(|c| c.name == name);
    let mut exprs: Vec<Expr> = EVENT_COLUMNS
        .iter()
        .filter(|c| !shadowed(c))
        .map(|c| col(*c))
        .collect();
    for column in &view.columns {
        exprs.push(column_expr(column, extract).alias(&column.name));
    }
    let plan = LogicalPlanBuilder::scan(EVENTS_TABLE, provider_as_source(events), None)?
        .filter(col("type").eq(lit(view.type_name.clone())))?
        .project(exprs)?
        .build()?;
    let definition = format!(
        "events of type {:?} at version {} (upcast)",
        view.type_name, view.latest
    );
    Ok(Arc::new(ViewTable::new(plan, Some(definition))))
}

/// The column's value for each version: `CASE WHEN version <= v THEN ... ELSE latest END`.
fn column_expr(column: &Column, extract: &Extract) -> Expr {
    let latest = read_expr(&column.latest, column.kind, extract);
    let mut cases = column.older.iter();
    let Some((v, read)) = cases.next() else {
        return latest;
    };
    let mut case = when(
        col("version").lt_eq(lit(*v)),
        read_expr(read, column.kind, extract),
    );
    for (v, read) in cases {
        case = case.when(
            col("version").lt_eq(lit(*v)),
            read_expr(read, column.kind, extract),
        );
    }
    case.otherwise(latest)
        .expect("a CASE with at least one branch")
}

fn sql_type(kind: Kind) -> DataType {
    match kind {
        Kind::Text | Kind::Json => DataType::Utf8,
        Kind::Integer => DataType::Int64,
        Kind::Number => DataType::Float64,
        Kind::Boolean => DataType::Boolean,
    }
}

/// A read as an expression of the column's type. Reads that scale are computed as doubles
/// (rounded for integers).
fn read_expr(read: &Read, kind: Kind, extract: &Extract) -> Expr {
    if kind != Kind::Number && read.scales() {
        let number = read_expr(read, Kind::Number, extract);
        return match kind {
            Kind::Integer => try_cast(round(vec![number]), DataType::Int64),
            _ => try_cast(number, sql_type(kind)),
        };
    }
    match read {
        Read::Absent => lit(ScalarValue::try_from(&sql_type(kind)).unwrap_or(ScalarValue::Null)),
        Read::Field(name) => {
            let path = lit(path_of(name));
            let from_payload = match kind {
                // JSON text, with a JSON null as SQL NULL (so that defaults fill it).
                Kind::Json => datafusion::functions::expr_fn::nullif(
                    extract.json.call(vec![col("payload"), path]),
                    lit("null"),
                ),
                Kind::Text => extract.scalar.call(vec![col("payload"), path]),
                _ => try_cast(
                    extract.scalar.call(vec![col("payload"), path]),
                    sql_type(kind),
                ),
            };
            // A promoted column of the type (null in files written before the promotion and
            // not backfilled: the payload answers there).
            match extract.promoted.get(name) {
                Some(t) if *t == sql_type(kind) && kind != Kind::Json => {
                    datafusion::functions::expr_fn::coalesce(vec![
                        Expr::Column(datafusion::common::Column::from_name(name)),
                        from_payload,
                    ])
                }
                _ => from_payload,
            }
        }
        Read::Scale(r, k) => {
            let number = read_expr(r, Kind::Number, extract);
            match Factor::of(*k) {
                Factor::Times(k) => number * lit(k),
                Factor::DividedBy(d) => number / lit(d),
            }
        }
        Read::Or(r, v) => datafusion::functions::expr_fn::coalesce(vec![
            read_expr(r, kind, extract),
            constant(v, kind),
        ]),
    }
}

/// A default value as a literal of the column's type (null if it is not one).
fn constant(v: &Value, kind: Kind) -> Expr {
    let value = match (kind, v) {
        (_, Value::Null) => None,
        (Kind::Text, Value::String(s)) => Some(ScalarValue::from(s.as_str())),
        (Kind::Text | Kind::Json, other) => Some(ScalarValue::from(other.to_string().as_str())),
        (Kind::Integer, v) => v.as_i64().map(ScalarValue::from),
        (Kind::Number, v) => v.as_f64().map(ScalarValue::from),
        (Kind::Boolean, v) => v.as_bool().map(ScalarValue::from),
    };
    lit(value
        .unwrap_or_else(|| ScalarValue::try_from(&sql_type(kind)).unwrap_or(ScalarValue::Null)))
}

/// The JSON path of a top-level property.
fn path_of(name: &str) -> String {
    if name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        format!("$.{name}")
    } else {
        format!("$[{}]", serde_json::Value::from(name))
    }
}
