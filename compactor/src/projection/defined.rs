//! User-defined projections: created from a checked definition ([`floe_query::projection`]),
//! refreshed by recomputing each day that changed from that day's events (the definition
//! groups by the day of `ts`, so a day's rows come from its own events only), and replayed
//! from all events day by day.
//!
//! The cost of a refresh follows the days it touches, not only the new events: a definition
//! may hold any aggregate (a distinct count, an average), which a day's new rows alone cannot
//! update.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;

use datafusion::arrow::array::{Array, AsArray, BooleanArray, RecordBatch};
use datafusion::arrow::compute::{cast, filter_record_batch};
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::error::DataFusionError;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryPool, MemoryReservation};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use floe_catalog::delta::{Delta, DeltaFile};
use floe_catalog::projection::{
    DAY_COLUMN, Defined, Redefinition, SourceRef, definition_of, projection_schema, source_of,
};
use floe_catalog::table::EVENTS_TABLE;
use floe_catalog::{Error as CatalogError, TenantId};
use futures::StreamExt;
use iceberg::spec::{PrimitiveType, Type};

use super::day::id_hash;
use super::{Out, Refreshed, Refresher, files};
use crate::{Error, Result};

impl Refresher {
    /// Checks `sql` and creates the projection `name` of the tenant (its table empty until the
    /// next refresh, which replays all events into it; the tenant is marked for one).
    pub async fn create_projection(
        &self,
        tenant: &TenantId,
        name: &str,
        sql: &str,
        actor: &str,
    ) -> Result<Defined> {
        let catalog = &self.inner.catalog;
        floe_catalog::projection::check_name(name)?;
        let columns = self.columns(tenant, name, sql).await?;
        let schema = projection_schema(
            columns
                .iter()
                .map(|(n, t)| (n.as_str(), t.clone(), n == DAY_COLUMN))
                .collect(),
        )?;
        let defined = catalog
            .create_defined_projection(tenant, name, sql, schema, actor)
            .await?;
        self.mark(tenant);
        Ok(defined)
    }

    /// Checks `sql` and replaces the definition of the projection `name` by it; the tenant is
    /// marked, and its next refresh (or a [`Refresher::rebuild`]) recomputes the projection
    /// by the new definition: the rows, and the schema that follows from it, come in one
    /// commit, so readers see the old definition's rows until then. Snapshots of the old
    /// definition stay readable by time travel until they expire.
    pub async fn redefine_projection(
        &self,
        tenant: &TenantId,
        name: &str,
        sql: &str,
        actor: &str,
    ) -> Result<Defined> {
        self.columns(tenant, name, sql).await?;
        let defined = self
            .inner
            .catalog
            .redefine_projection(tenant, name, sql, actor)
            .await?;
        self.mark(tenant);
        Ok(defined)
    }

    /// The output columns of the definition `sql` of projection `name`, as stored; an error
    /// naming the problem if it is not a definition Floe can keep up to date.
    async fn columns(
        &self,
        tenant: &TenantId,
        name: &str,
        sql: &str,
    ) -> Result<Vec<(String, Type)>> {
        let events = self.inner.catalog.load_table(tenant, EVENTS_TABLE).await?;
        let output =
            floe_query::projection::check(sql, files::arrow_schema(&events)?, self.inner.limits)
                .await
                .map_err(|e| CatalogError::invalid(format!("projection {name}: {e}")))?;
        output
            .fields()
            .iter()
            .map(|f| Ok((f.name().clone(), iceberg_type(f.name(), f.data_type())?)))
            .collect()
    }

    /// Refreshes one user-defined projection; with `at`, recomputes it whole from the events at
    /// that snapshot (a rebuild). `None`: fenced by another refresh.
    ///
    /// A definition that is not the one the table's rows follow (a redefinition) recomputes
    /// the table whole, at `at` or the current events, and brings in its schema.
    pub(super) async fn refresh_defined(
        &self,
        tenant: &TenantId,
        d: &Defined,
        at: Option<SourceRef>,
    ) -> Result<Option<Refreshed>> {
        let catalog = &self.inner.catalog;
        let table = catalog.load_table(tenant, &d.name).await?;
        let source = source_of(table.metadata())?.map(|s| s.snapshot_id);
        let redefine = match definition_of(table.metadata()) {
            Some(sql) if sql == d.sql => None,
            // Another definition, or a table made before tables recorded theirs: recomputed
            // whole once, which records it.
            _ => {
                let columns = self.columns(tenant, &d.name, &d.sql).await?;
                let redefinition = Redefinition {
                    sql: d.sql.clone(),
                    columns,
                };
                let schema = redefinition.schema(table.metadata())?;
                Some((redefinition, schema))
            }
        };
        let at = match (at, &redefine) {
            (Some(at), _) => Some(at),
            (None, None) => None,
            (None, Some(_)) => {
                let events = catalog.load_table(tenant, EVENTS_TABLE).await?;
                match events.metadata().current_snapshot() {
                    Some(current) => Some(SourceRef::of(current)),
                    // No events: the new definition comes in with the first ones.
                    None => return Ok(Some(Refreshed::default())),
                }
            }
        };
        // The days to recompute (`None`: all) as of snapshot `to`.
        let (to, days) = match at {
            Some(at) => (at, None),
            None => match catalog.raw_delta(tenant, source).await? {
                Delta::Changes(delta) => {
                    let Some(to) = super::up_to(&delta, source) else {
                        return Ok(Some(Refreshed {
                            source: delta.to,
                            ..Refreshed::default()
                        }));
                    };
                    let touched: BTreeSet<i32> = delta
                        .added
                        .iter()
                        .map(|f| f.day)
                        .chain(delta.reopened.iter().copied())
                        .collect();
                    (to, source.is_some().then_some(touched))
                }
                Delta::Gap { .. } => {
                    let events = catalog.load_table(tenant, EVENTS_TABLE).await?;
                    let Some(current) = events.metadata().current_snapshot() else {
                        return Ok(Some(Refreshed::default()));
                    };
                    (SourceRef::of(current), None)
                }
            },
        };
        let events = catalog.load_table(tenant, EVENTS_TABLE).await?;
        let events_schema = files::arrow_schema(&events)?;
        let found = catalog
            .day_files(tenant, to.snapshot_id, days.clone())
            .await?;
        let mut by_day: BTreeMap<i32, Vec<DeltaFile>> = BTreeMap::new();
        for f in &found {
            by_day.entry(f.day).or_default().push(f.clone());
        }
        let days_read = by_day.len();
        let target = match &redefine {
            Some((_, schema)) => files::arrow_of(schema)?,
            None => files::arrow_schema(&table)?,
        };
        let mut rows = Vec::new();
        // One day at a time, streamed: what a day's run holds (the ids seen, the aggregation's
        // state, the values its expressions make) comes from this pool, and aggregations spill
        // to disk past it.
        let limit = self.inner.config.memory_limit_bytes;
        for (day, day_files) in by_day {
            // A pool per day's run: each is planned anew, and folds no large value into its
            // plan until its physical plan is made.
            let pool = floe_query::projection::run_pool(tenant.as_str(), limit as usize);
            let shared: Arc<dyn MemoryPool> = pool.clone();
            let events = files::read_events(catalog.data_store(), day_files, events_schema.clone());
            let ids = MemoryConsumer::new("projection event ids").register(&shared);
            let events = first_copies(events, events_schema.clone(), ids);
            let spill_total = self.inner.config.spill_total_bytes;
            let spill = floe_query::spill::manager(Some(&self.inner.spill_root), spill_total)?;
            let out = floe_query::projection::run(&d.sql, events, pool, spill, self.inner.limits)
                .await
                .map_err(|e| {
                    // Reading the day's files failed: storage trouble, not the definition.
                    if let floe_query::Error::DataFusion(df) = &e
                        && let DataFusionError::External(inner) = df.find_root()
                        && let Some(Error::Storage {
                            action,
                            object,
                            message,
                        }) = inner.downcast_ref::<Error>()
                    {
                        return Error::Storage {
                            action,
                            object: object.clone(),
                            message: message.clone(),
                        };
                    }
                    if floe_query::spill::exceeded(&e.to_string()) {
                        return Error::Invalid(format!(
                            "projection {} on day {day}: its aggregations would spill more \
                             than projection.spill_total_bytes ({spill_total} bytes) to disk; \
                             it is tried again (raise it, or projection.memory_limit_bytes)",
                            d.name
                        ));
                    }
                    // The pool's refusals name `projection.memory_limit_bytes`.
                    Error::Invalid(format!("projection {} on day {day}: {e}", d.name))
                })?;
            for batch in out {
                rows.push(conform(&batch, &target)?);
            }
        }
        let done = Refreshed {
            source: Some(to.snapshot_id),
            committed: 1,
            files_read: found.len(),
            files_kept: 0,
            days_read,
            full: days.is_none(),
            left_to_others: 0,
        };
        let out = Out {
            name: &d.name,
            table: &table,
            redefine,
        };
        let committed = self.commit(tenant, out, rows, days, source, to).await?;
        Ok(committed.then_some(done))
    }
}

/// Memory an event id seen takes: its hash in a set, with the set's spare room.
const SEEN_ID_BYTES: usize = 24;

/// The rows of one day, as `rows` come, without the copies of an event id seen before (in
/// commit order): a duplicate counts once, as in the built-in projections. The ids seen (their
/// 64-bit hashes, as the built-ins keep them) are held against `reservation`.
fn first_copies(
    rows: impl futures::Stream<Item = Result<RecordBatch>> + Send + 'static,
    schema: SchemaRef,
    reservation: MemoryReservation,
) -> SendableRecordBatchStream {
    let mut seen: HashSet<u64> = HashSet::new();
    let once = rows.map(move |batch| {
        let batch = batch.map_err(|e| DataFusionError::External(Box::new(e)))?;
        let Some(ids) = batch.column_by_name("event_id") else {
            return Ok(batch);
        };
        let Some(ids) = ids.as_string_opt::<i32>() else {
            return Err(DataFusionError::Execution("event_id is not text".into()));
        };
        let before = seen.len();
        let keep: BooleanArray = (0..batch.num_rows())
            .map(|i| Some(ids.is_null(i) || seen.insert(id_hash(ids.value(i)))))
            .collect();
        reservation.try_grow((seen.len() - before) * SEEN_ID_BYTES)?;
        if keep.true_count() == batch.num_rows() {
            Ok(batch)
        } else {
            Ok(filter_record_batch(&batch, &keep)?)
        }
    });
    Box::pin(RecordBatchStreamAdapter::new(schema, once))
}

/// `batch` (a definition's output) as rows of the projection table: its columns, in order,
/// as the table's types.
fn conform(batch: &RecordBatch, target: &SchemaRef) -> Result<RecordBatch> {
    if batch.num_columns() != target.fields().len() {
        return Err(Error::Invalid(format!(
            "a definition gave {} columns for a table of {}",
            batch.num_columns(),
            target.fields().len()
        )));
    }
    let columns = batch
        .columns()
        .iter()
        .zip(target.fields())
        .map(|(c, f)| {
            cast(c, f.data_type()).map_err(|e| Error::Invalid(format!("column {}: {e}", f.name())))
        })
        .collect::<Result<Vec<_>>>()?;
    RecordBatch::try_new(target.clone(), columns)
        .map_err(|e| Error::Invalid(format!("projection rows: {e}")))
}

/// The Iceberg type a definition's output column is stored as.
fn iceberg_type(name: &str, t: &DataType) -> Result<Type> {
    let p = match t {
        DataType::Boolean => PrimitiveType::Boolean,
        DataType::Int8 | DataType::Int16 | DataType::Int32 | DataType::UInt8 | DataType::UInt16 => {
            PrimitiveType::Int
        }
        DataType::Int64 | DataType::UInt32 | DataType::UInt64 => PrimitiveType::Long,
        DataType::Float32 => PrimitiveType::Float,
        DataType::Float64 => PrimitiveType::Double,
        DataType::Decimal128(p, s) if *s >= 0 => PrimitiveType::Decimal {
            precision: u32::from(*p),
            scale: *s as u32,
        },
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => PrimitiveType::String,
        DataType::Date32 => PrimitiveType::Date,
        DataType::Timestamp(_, Some(_)) => PrimitiveType::Timestamptz,
        DataType::Timestamp(_, None) => PrimitiveType::Timestamp,
        other => {
            return Err(CatalogError::invalid(format!(
                "column {name} is of type {other}, which a projection cannot store"
            ))
            .into());
        }
    };
    Ok(Type::Primitive(p))
}
