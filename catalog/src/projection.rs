//! Projection tables: Iceberg tables derived from a tenant's `events` (read models), and the
//! commit that refreshes them.
//!
//! A projection table is partitioned by its `day` column (identity), and its table property
//! `floe.table.kind` is `projection` (what the query service lets viewers read). Every
//! snapshot names the `events` snapshot it reflects in three summary properties
//! ([`SOURCE_SNAPSHOT`], [`SOURCE_SEQUENCE`], [`SOURCE_COMMITTED_MS`]), carried over by any
//! other commit on the table (a compaction changes no row), so a projection's freshness is
//! exact and a refresh knows where to start.
//!
//! A refresh replaces the rows of the days it recomputed: one `overwrite` snapshot removes
//! every live file of those days and adds the new ones. It is fenced on the source it started
//! from: if the table's recorded source is no longer the one the refresh read, another
//! process refreshed it meanwhile, and nothing is committed.

mod defined;
mod status;

pub use defined::{DEFINITION, Defined, Redefinition, check_name, definition_of};
pub use status::ProjectionStatus;

use std::collections::{BTreeSet, HashMap};

use iceberg::spec::{
    DataFile, Literal, ManifestEntryRef, NestedField, Operation, PrimitiveLiteral, PrimitiveType,
    Schema, Snapshot, TableMetadata, Transform, Type, UnboundPartitionSpec,
};
use iceberg::table::Table;
use std::sync::Arc;

use crate::commit::{Attempt, Change, Committed, Evolve};
use crate::rewrite::{Rows, Shape};
use crate::tenant::{Tenant, TenantId, TenantKey};
use crate::{Catalog, Error, Result};

/// The `floe.table.kind` of projection tables.
pub const PROJECTION_KIND: &str = "projection";

/// Summary property: the id of the `events` snapshot a projection snapshot reflects.
pub const SOURCE_SNAPSHOT: &str = "floe.projection.source-snapshot";
/// Summary property: that snapshot's sequence number.
pub const SOURCE_SEQUENCE: &str = "floe.projection.source-sequence";
/// Summary property: when that snapshot was committed (ms since the epoch).
pub const SOURCE_COMMITTED_MS: &str = "floe.projection.source-committed-at-ms";

/// The name of a projection table's day column (its partition).
pub const DAY_COLUMN: &str = "day";

/// The `events` snapshot a projection reflects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourceRef {
    pub snapshot_id: i64,
    pub sequence_number: i64,
    pub committed_at_ms: i64,
}

impl SourceRef {
    /// The source reference of an `events` snapshot.
    pub fn of(snapshot: &Snapshot) -> SourceRef {
        SourceRef {
            snapshot_id: snapshot.snapshot_id(),
            sequence_number: snapshot.sequence_number(),
            committed_at_ms: snapshot.timestamp_ms(),
        }
    }

    fn props(&self) -> HashMap<String, String> {
        [
            (SOURCE_SNAPSHOT, self.snapshot_id),
            (SOURCE_SEQUENCE, self.sequence_number),
            (SOURCE_COMMITTED_MS, self.committed_at_ms),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }
}

/// The source a projection table's current snapshot reflects (`None`: never refreshed).
pub fn source_of(metadata: &TableMetadata) -> Result<Option<SourceRef>> {
    let Some(snapshot) = metadata.current_snapshot() else {
        return Ok(None);
    };
    let props = &snapshot.summary().additional_properties;
    let Some(id) = props.get(SOURCE_SNAPSHOT) else {
        return Ok(None);
    };
    let number = |key: &str, raw: Option<&String>| -> Result<i64> {
        raw.ok_or_else(|| Error::internal(format!("projection snapshot without {key}")))?
            .parse()
            .map_err(|e| Error::internal(format!("projection snapshot: {key}: {e}")))
    };
    Ok(Some(SourceRef {
        snapshot_id: number(SOURCE_SNAPSHOT, Some(id))?,
        sequence_number: number(SOURCE_SEQUENCE, props.get(SOURCE_SEQUENCE))?,
        committed_at_ms: number(SOURCE_COMMITTED_MS, props.get(SOURCE_COMMITTED_MS))?,
    }))
}

/// Whether a table's metadata says it is a projection.
pub fn is_projection(metadata: &TableMetadata) -> bool {
    metadata
        .properties()
        .get("floe.table.kind")
        .is_some_and(|k| k == PROJECTION_KIND)
}

/// One refresh of a projection table.
#[derive(Debug, Clone)]
pub struct ProjectionCommit {
    /// The source the refresh started from, as the table recorded it (`None`: never
    /// refreshed). Another source found there means another refresh won: nothing is done.
    pub expected_source: Option<i64>,
    /// The source the new rows reflect.
    pub source: SourceRef,
    /// The days whose rows `added` replaces (days since 1970-01-01); `None`: all rows.
    pub days: Option<BTreeSet<i32>>,
    /// The new files: all rows of those days.
    pub added: Vec<DataFile>,
    /// A new definition the rows follow (with `days` `None`): its schema (which `added` was
    /// written with, from the table as it was read) and its [`DEFINITION`] come in with them.
    pub redefine: Option<(Redefinition, Schema)>,
}

/// How a projection commit ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProjectionOutcome {
    /// The new snapshot; `conflicts`: compare-and-swaps lost to other writers first.
    Committed { snapshot_id: i64, conflicts: u32 },
    /// The table reflects another source than expected (another refresh committed):
    /// nothing was committed, and the caller starts again from `found`.
    Fenced { found: Option<i64> },
    /// Other writers won every compare-and-swap: nothing was committed (try again later).
    KeptLosing { conflicts: u32 },
}

/// The built-in projection that counts distinct users per day and over trailing windows.
pub const DAILY_ACTIVE_USERS: &str = "daily_active_users";
/// The built-in projection that sums `PurchaseMade` amounts per day and currency.
pub const REVENUE_BY_DAY: &str = "revenue_by_day";
/// The built-in projection that counts `PageViewed` views and visitors per day and page.
pub const TOP_PAGES: &str = "top_pages";

/// A projection every tenant has unless its settings switch it off.
#[derive(Debug, Clone, Copy)]
pub struct Builtin {
    pub name: &'static str,
    /// Partitioned by `day` (one file per day), or one file for the whole table (a few
    /// hundred rows a year: read in one request).
    pub partitioned: bool,
    columns: fn() -> Vec<(&'static str, Type, bool)>,
}

impl Builtin {
    pub fn schema(&self) -> Result<Schema> {
        projection_schema((self.columns)())
    }
}

fn long() -> Type {
    Type::Primitive(PrimitiveType::Long)
}

fn date() -> Type {
    Type::Primitive(PrimitiveType::Date)
}

fn string() -> Type {
    Type::Primitive(PrimitiveType::String)
}

/// The built-in projections, by name.
pub const BUILTINS: &[Builtin] = &[
    Builtin {
        name: DAILY_ACTIVE_USERS,
        partitioned: false,
        columns: || {
            vec![
                (DAY_COLUMN, date(), true),
                ("users", long(), true),
                ("users_7d", long(), true),
                ("users_28d", long(), true),
            ]
        },
    },
    Builtin {
        name: REVENUE_BY_DAY,
        partitioned: false,
        columns: || {
            let money = Type::Primitive(PrimitiveType::Decimal {
                precision: 38,
                scale: 2,
            });
            vec![
                (DAY_COLUMN, date(), true),
                ("currency", string(), false),
                ("revenue", money, false),
                ("orders", long(), true),
            ]
        },
    },
    Builtin {
        name: TOP_PAGES,
        partitioned: true,
        columns: || {
            vec![
                (DAY_COLUMN, date(), true),
                ("page", string(), false),
                ("views", long(), true),
                ("visitors", long(), true),
            ]
        },
    },
];

/// The built-in projection named `name`, or an error listing them.
pub fn builtin(name: &str) -> Result<&'static Builtin> {
    BUILTINS.iter().find(|b| b.name == name).ok_or_else(|| {
        let names: Vec<&str> = BUILTINS.iter().map(|b| b.name).collect();
        Error::invalid(format!(
            "no built-in projection {name:?} (there are: {})",
            names.join(", ")
        ))
    })
}

/// Parses `NAME=on|off` switches of built-in projections (as `floe tenant set --projection`).
pub fn parse_switches(switches: &[String]) -> Result<std::collections::BTreeMap<String, bool>> {
    let mut out = std::collections::BTreeMap::new();
    for s in switches {
        let (name, value) = s.split_once('=').ok_or_else(|| {
            Error::invalid(format!(
                "projection switch {s:?}: write NAME=on or NAME=off"
            ))
        })?;
        let on = match value.trim() {
            "on" | "true" => true,
            "off" | "false" => false,
            other => {
                return Err(Error::invalid(format!(
                    "projection switch {s:?}: {other:?} is neither on nor off"
                )));
            }
        };
        out.insert(builtin(name.trim())?.name.to_string(), on);
    }
    Ok(out)
}

/// The built-in projections a tenant has (those its settings do not switch off).
pub fn builtins_of(tenant: &Tenant) -> Vec<&'static Builtin> {
    BUILTINS
        .iter()
        .filter(|b| !tenant.projections_off.iter().any(|off| off == b.name))
        .collect()
}

/// The partition spec of a projection table: identity on its `day` column, or none.
fn projection_spec(name: &str, schema: &Schema, partitioned: bool) -> Result<UnboundPartitionSpec> {
    let day = schema
        .field_by_name(DAY_COLUMN)
        .filter(|f| *f.field_type == Type::Primitive(PrimitiveType::Date))
        .ok_or_else(|| {
            Error::invalid(format!(
                "projection {name}: needs a `{DAY_COLUMN}` column of type date"
            ))
        })?
        .id;
    let mut spec = UnboundPartitionSpec::builder();
    if partitioned {
        spec = spec
            .add_partition_field(day, DAY_COLUMN, Transform::Identity)
            .map_err(Error::ice("partition spec"))?;
    }
    Ok(spec.build())
}

impl Catalog {
    /// Creates a projection table `name` in the tenant's namespace, partitioned by its `day`
    /// column (a `date`) or not, unless a table of that name exists. `false`: it existed.
    pub async fn create_projection_table(
        &self,
        tenant: &TenantId,
        name: &str,
        schema: Schema,
        partitioned: bool,
    ) -> Result<bool> {
        let spec = projection_spec(name, &schema, partitioned)?;
        let (tenant, name) = (tenant.clone(), name.to_string());
        self.on_io(move |c| async move {
            let Some(key) = c.tenant_key(&tenant).await? else {
                return Err(Error::NotFound {
                    what: format!("tenant {tenant}"),
                });
            };
            let location = c
                .create_table_metadata(&key, &name, schema, spec, PROJECTION_KIND, &[])
                .await?;
            c.register_table(&tenant, &name, &location).await
        })
        .await
    }

    /// Writes the first metadata file of a built-in projection table of the tenant incarnation
    /// `key`, to be registered by the caller; its location.
    pub(crate) async fn create_builtin_metadata(
        &self,
        key: &TenantKey,
        builtin: &Builtin,
    ) -> Result<String> {
        let schema = builtin.schema()?;
        let spec = projection_spec(builtin.name, &schema, builtin.partitioned)?;
        self.create_table_metadata(key, builtin.name, schema, spec, PROJECTION_KIND, &[])
            .await
    }

    /// Creates the tables of the tenant's built-in projections that are missing (tenants made
    /// before a built-in existed, or switched on again); the built-ins the tenant has.
    pub async fn ensure_builtin_projections(
        &self,
        tenant: &TenantId,
    ) -> Result<Vec<&'static Builtin>> {
        let tenant = tenant.clone();
        self.on_io(move |c| async move {
            let t = c.tenant(&tenant).await?;
            let key = t.key()?;
            let tables = c.list_tables(&tenant).await?;
            let wanted = builtins_of(&t);
            for b in &wanted {
                if !tables.iter().any(|name| name == b.name) {
                    let location = c.create_builtin_metadata(&key, b).await?;
                    c.register_table(&tenant, b.name, &location).await?;
                }
            }
            Ok(wanted)
        })
        .await
    }

    /// Replaces the rows of `commit.days` in the projection table with `commit.added`, in one
    /// `overwrite` snapshot recording `commit.source`; see the module comment.
    pub async fn commit_projection(
        &self,
        tenant: &TenantId,
        table: &str,
        commit: ProjectionCommit,
    ) -> Result<ProjectionOutcome> {
        let (tenant, table) = (tenant.clone(), table.to_string());
        self.on_io(move |c| async move {
            c.sync_dirs(
                commit
                    .added
                    .iter()
                    .map(|f| f.file_path().to_string())
                    .collect(),
            )
            .await?;
            let mut change = RefreshChange { commit };
            Ok(match c.commit_loop(&tenant, &table, &mut change).await? {
                Committed::Done {
                    value: Refreshed::Committed(snapshot_id),
                    conflicts,
                } => ProjectionOutcome::Committed {
                    snapshot_id,
                    conflicts,
                },
                Committed::Done {
                    value: Refreshed::Fenced(found),
                    ..
                } => ProjectionOutcome::Fenced { found },
                Committed::KeptLosing { conflicts } => ProjectionOutcome::KeptLosing { conflicts },
            })
        })
        .await
    }
}

/// The day (days since the epoch) of a projection file's partition.
fn day_of(entry: &ManifestEntryRef) -> Result<i32> {
    match entry.data_file().partition().fields().first() {
        Some(Some(Literal::Primitive(PrimitiveLiteral::Int(day)))) => Ok(*day),
        _ => Err(Error::internal(format!(
            "projection file {} has no day partition",
            entry.file_path()
        ))),
    }
}

enum Refreshed {
    Committed(i64),
    Fenced(Option<i64>),
}

/// A refresh, as the commit loop runs it.
struct RefreshChange {
    commit: ProjectionCommit,
}

impl Change for RefreshChange {
    type Value = Refreshed;

    async fn attempt(
        &mut self,
        catalog: &Catalog,
        current: Table,
        _conflicts: u32,
    ) -> Result<Attempt<Refreshed>> {
        let metadata = current.metadata();
        if !is_projection(metadata) {
            return Err(Error::invalid(format!(
                "{} is not a projection table",
                current.identifier()
            )));
        }
        let found = source_of(metadata)?.map(|s| s.snapshot_id);
        if found != self.commit.expected_source {
            return Ok(Attempt::Done(Refreshed::Fenced(found)));
        }
        let live = catalog.live_entries(&current).await?;
        let mut removed = Vec::new();
        for entry in &live {
            let replaced = match &self.commit.days {
                None => true,
                Some(days) => days.contains(&day_of(entry)?),
            };
            if replaced {
                removed.push(entry.file_path().to_string());
            }
        }
        let old_location = current
            .metadata_location()
            .ok_or_else(|| Error::internal("loaded table without a metadata location"))?
            .to_string();
        let evolve = match &self.commit.redefine {
            None => None,
            Some((redefinition, schema)) => {
                // Field ids are given against the table's metadata: if it moved on (another
                // redefinition), the files written with them do not fit.
                let now = redefinition.schema(metadata)?;
                if self.commit.days.is_some()
                    || now.schema_id() != schema.schema_id()
                    || !defined::same_columns(&now, schema)
                {
                    return Ok(Attempt::Done(Refreshed::Fenced(found)));
                }
                Some(Evolve {
                    schema: now,
                    properties: HashMap::from([(DEFINITION.to_string(), redefinition.sql.clone())]),
                })
            }
        };
        let shape = Shape {
            operation: Operation::Overwrite,
            rows: Rows::Any,
            removed_keep_bounds: true,
            evolve,
        };
        let prepared = catalog
            .prepare_rewrite(
                &current,
                &old_location,
                &shape,
                &live,
                &removed,
                self.commit.added.clone(),
                self.commit.source.props(),
            )
            .await?;
        let snapshot_id = prepared.snapshot_id;
        Ok(Attempt::Swap {
            prepared: Box::new(prepared),
            value: Refreshed::Committed(snapshot_id),
        })
    }
}

/// The schema of a projection table from its columns (`day` first, a required `date`); field
/// ids are given in order from 1.
pub fn projection_schema(columns: Vec<(&str, Type, bool)>) -> Result<Schema> {
    let fields = columns
        .into_iter()
        .enumerate()
        .map(|(i, (name, ty, required))| {
            let id = i as i32 + 1;
            Arc::new(if required {
                NestedField::required(id, name, ty)
            } else {
                NestedField::optional(id, name, ty)
            })
        })
        .collect::<Vec<_>>();
    Schema::builder()
        .with_schema_id(0)
        .with_fields(fields)
        .build()
        .map_err(Error::ice("building a projection schema"))
}
