//! Iceberg tables: the `events` table layout, loading tables, and Floe's own commit path.
//!
//! iceberg-rust 0.10 cannot run a check inside its commit, and re-applies appends on conflict
//! without re-checking anything. So this module commits by itself: it writes the manifest, the
//! manifest list and the new metadata file, then swaps `iceberg_tables.metadata_location` with a
//! compare-and-swap `UPDATE ... WHERE metadata_location = <the one we read>`. The source
//! position of the batch (for example the write-ahead-log sequence number) is checked against
//! the table's current snapshot summary before every attempt and written into the new snapshot
//! summary, so a batch lands exactly once however often the commit is retried.

use std::collections::{BTreeMap, HashMap};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use iceberg::spec::{
    DataFile, FormatVersion, MAIN_BRANCH, ManifestFile, ManifestListWriter, ManifestWriterBuilder,
    NestedField, Operation, PrimitiveType, Schema, Snapshot, SnapshotReference, SnapshotRetention,
    SnapshotSummaryCollector, Summary, TableMetadata, TableMetadataBuildResult,
    TableMetadataBuilder, Transform, Type, UnboundPartitionSpec,
};
use iceberg::table::Table;
use iceberg::{MetadataLocation, NamespaceIdent, TableCreation, TableIdent};

use crate::tenant::{INCARNATION_PROPERTY, TenantId, TenantKey, table_incarnation};
use crate::{Catalog, Error, Result, storage};

/// The append-only event log of a tenant.
pub const EVENTS_TABLE: &str = "events";

/// Where a tenant's poison messages (Kafka records that are not valid events) are kept.
pub const DLQ_TABLE: &str = "events_dlq";

/// Snapshot-summary keys holding source positions start with this.
pub const POSITION_PREFIX: &str = "floe.position.";

/// Snapshot-summary keys holding Kafka positions start with this: `floe.kafka.<group>.<topic>`
/// = `{"<partition>": <next offset>, …}` (JSON).
pub const KAFKA_PREFIX: &str = "floe.kafka.";

/// The summary properties every new snapshot carries over from its parent: source positions.
pub(crate) fn carried_properties(parent: &Snapshot) -> HashMap<String, String> {
    parent
        .summary()
        .additional_properties
        .iter()
        .filter(|(k, _)| k.starts_with(POSITION_PREFIX) || k.starts_with(KAFKA_PREFIX))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// The summary key of a consumer group's positions in a topic.
pub fn kafka_key(group: &str, topic: &str) -> String {
    format!("{KAFKA_PREFIX}{group}.{topic}")
}

/// The table property holding where the table's Kafka consumption of a topic begins:
/// `floe.kafka.start.<topic>` = `{"<partition>": <offset>, …}` (JSON). Set when a tenant is
/// created in Kafka mode (the topic's end at that moment), so that records left in a topic by
/// an earlier tenant with the same id never reach the new tenant's table.
pub const KAFKA_START_PREFIX: &str = "floe.kafka.start.";

/// The Kafka positions (partition → next offset to read) of `group` in `topic`: those recorded
/// in the table's current snapshot, and for partitions without one, where the table's
/// consumption of the topic begins ([`KAFKA_START_PREFIX`]); empty when there are none.
pub fn kafka_positions(
    metadata: &TableMetadata,
    group: &str,
    topic: &str,
) -> Result<BTreeMap<i32, i64>> {
    let mut positions = match metadata.current_snapshot().and_then(|s| {
        s.summary()
            .additional_properties
            .get(&kafka_key(group, topic))
    }) {
        Some(raw) => parse_offsets(raw, &kafka_key(group, topic))?,
        None => BTreeMap::new(),
    };
    let start_key = format!("{KAFKA_START_PREFIX}{topic}");
    if let Some(raw) = metadata.properties().get(&start_key) {
        for (p, o) in parse_offsets(raw, &start_key)? {
            positions.entry(p).or_insert(o);
        }
    }
    Ok(positions)
}

/// Parses `{"<partition>": <offset>, …}`.
fn parse_offsets(raw: &str, what: &str) -> Result<BTreeMap<i32, i64>> {
    let parsed: BTreeMap<String, i64> = serde_json::from_str(raw)
        .map_err(|e| Error::internal(format!("{what}: not a map of partition to offset: {e}")))?;
    parsed
        .into_iter()
        .map(|(p, o)| {
            p.parse::<i32>()
                .map(|p| (p, o))
                .map_err(|_| Error::internal(format!("{what}: bad partition {p:?}")))
        })
        .collect()
}

/// The property value of [`KAFKA_START_PREFIX`] for `offsets`.
pub fn kafka_start_property(topic: &str, offsets: &BTreeMap<i32, i64>) -> (String, String) {
    let json: BTreeMap<String, i64> = offsets.iter().map(|(p, o)| (p.to_string(), *o)).collect();
    (
        format!("{KAFKA_START_PREFIX}{topic}"),
        serde_json::to_string(&json).unwrap_or_else(|_| "{}".into()),
    )
}

/// Records of one topic in one commit: per partition, the position the writer believes the
/// table holds (`expected`, `None` when it holds none) and the position after this batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaBatch {
    pub group: String,
    pub topic: String,
    pub partitions: BTreeMap<i32, KafkaRange>,
}

/// See [`KafkaBatch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KafkaRange {
    pub expected: Option<i64>,
    pub next: i64,
}

/// How a Kafka-guarded commit ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KafkaCommit {
    /// The batch is in the new snapshot.
    Committed { snapshot_id: i64, conflicts: u32 },
    /// The table already holds every partition of the batch up to its `next`: nothing committed.
    AlreadyCommitted,
    /// The table's positions are not what the writer expected (another worker owns or owned
    /// the partitions): nothing committed. `stored` is what the table holds for the topic.
    Fenced { stored: BTreeMap<i32, i64> },
}

/// What a commit must check against the table's current snapshot, inside the swap loop.
enum Guard<'a> {
    Log(&'a SourcePosition),
    Kafka(&'a KafkaBatch),
}

enum Check {
    Proceed,
    Already,
    Fenced(BTreeMap<i32, i64>),
}

fn check_kafka(metadata: &TableMetadata, batch: &KafkaBatch) -> Result<Check> {
    let stored = kafka_positions(metadata, &batch.group, &batch.topic)?;
    let mut done = 0;
    for (p, range) in &batch.partitions {
        let s = stored.get(p).copied();
        if s == range.expected {
            continue;
        }
        if s.is_some_and(|s| s >= range.next) {
            done += 1;
            continue;
        }
        return Ok(Check::Fenced(stored));
    }
    Ok(match done {
        0 => Check::Proceed,
        n if n == batch.partitions.len() => Check::Already,
        _ => Check::Fenced(stored),
    })
}

/// The schema of `<tenant>.events`. Field ids are fixed: readers and writers rely on them.
pub fn events_schema() -> Result<Schema> {
    let string = || Type::Primitive(PrimitiveType::String);
    let tstz = || Type::Primitive(PrimitiveType::Timestamptz);
    Schema::builder()
        .with_schema_id(0)
        .with_fields(vec![
            NestedField::required(1, "event_id", string()).into(),
            NestedField::required(2, "tenant_id", string()).into(),
            NestedField::required(3, "type", string()).into(),
            NestedField::required(4, "version", Type::Primitive(PrimitiveType::Int)).into(),
            NestedField::required(5, "ts", tstz()).into(),
            NestedField::required(6, "received_at", tstz()).into(),
            NestedField::optional(7, "user_id", string()).into(),
            NestedField::required(8, "payload", string()).into(),
        ])
        .build()
        .map_err(Error::ice("building the events schema"))
}

/// The schema of `<tenant>.events_dlq`: records that could not become events, with why and
/// where they came from. `payload` holds the record's value as text (invalid UTF-8 replaced).
pub fn dlq_schema() -> Result<Schema> {
    let string = || Type::Primitive(PrimitiveType::String);
    let tstz = || Type::Primitive(PrimitiveType::Timestamptz);
    Schema::builder()
        .with_schema_id(0)
        .with_fields(vec![
            NestedField::required(1, "topic", string()).into(),
            NestedField::required(2, "partition", Type::Primitive(PrimitiveType::Int)).into(),
            NestedField::required(3, "offset", Type::Primitive(PrimitiveType::Long)).into(),
            NestedField::required(4, "reason", string()).into(),
            NestedField::required(5, "detail", string()).into(),
            NestedField::required(6, "dead_lettered_at", tstz()).into(),
            NestedField::optional(7, "key", string()).into(),
            NestedField::required(8, "payload", string()).into(),
        ])
        .build()
        .map_err(Error::ice("building the dead-letter schema"))
}

/// A batch's position in its source, checked and recorded by [`Catalog::commit_append`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourcePosition {
    /// Names the source, e.g. `wal-<uuid>`; the summary key is `floe.position.<source>`.
    pub source: String,
    /// First position in this batch (inclusive).
    pub first: u64,
    /// Last position in this batch (inclusive); recorded in the snapshot summary.
    pub last: u64,
}

/// What a commit did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitOutcome {
    /// The table's current snapshot after the call.
    pub snapshot_id: Option<i64>,
    /// The batch's position was already in the table: nothing was committed.
    pub already_committed: bool,
    /// How many compare-and-swap attempts lost to another writer.
    pub conflicts: u32,
}

/// Cache of the last metadata seen per table, keyed by its location, so a commit does not
/// re-read a metadata file it wrote itself.
pub(crate) type TableCache = Arc<Mutex<HashMap<(String, String), (String, Arc<TableMetadata>)>>>;

const MAX_COMMIT_ATTEMPTS: u32 = 25;

impl Catalog {
    /// Writes the first metadata file of a tenant's events table; returns its location.
    pub(crate) async fn create_events_metadata(
        &self,
        tenant: &TenantKey,
        properties: &[(String, String)],
    ) -> Result<String> {
        self.create_table_metadata(
            tenant,
            EVENTS_TABLE,
            events_schema()?,
            5,
            "event-log",
            properties,
        )
        .await
    }

    /// Writes the first metadata file of a table partitioned by `day(<field day_of>)`, owned
    /// by the tenant incarnation `tenant` (a table property).
    async fn create_table_metadata(
        &self,
        tenant: &TenantKey,
        name: &str,
        schema: Schema,
        day_of: i32,
        kind: &str,
        properties: &[(String, String)],
    ) -> Result<String> {
        let location = format!("{}/{}/{}", self.warehouse, tenant.id(), name);
        let spec = UnboundPartitionSpec::builder()
            .add_partition_field(day_of, "ts_day", Transform::Day)
            .map_err(Error::ice("partition spec"))?
            .build();
        let creation = TableCreation::builder()
            .name(name.to_string())
            .location(location.clone())
            .schema(schema)
            .partition_spec(spec)
            .properties(
                [
                    ("write.format.default".to_string(), "parquet".to_string()),
                    (
                        "write.parquet.compression-codec".to_string(),
                        "zstd".to_string(),
                    ),
                    ("floe.table.kind".to_string(), kind.to_string()),
                    (
                        INCARNATION_PROPERTY.to_string(),
                        tenant.incarnation().to_string(),
                    ),
                    // Keep the last 100 metadata files and delete older ones after each commit,
                    // so a table's metadata does not grow without bound (Iceberg's own knobs).
                    (
                        "write.metadata.delete-after-commit.enabled".to_string(),
                        "true".to_string(),
                    ),
                    (
                        "write.metadata.previous-versions-max".to_string(),
                        "100".to_string(),
                    ),
                ]
                .into_iter()
                .chain(properties.iter().cloned()),
            )
            .format_version(FormatVersion::V2)
            .build();
        let metadata = TableMetadataBuilder::from_table_creation(creation)
            .map_err(Error::ice("table metadata"))?
            .build()
            .map_err(Error::ice("table metadata"))?
            .metadata;
        let metadata_location = MetadataLocation::new_with_metadata(&location, &metadata);
        let metadata_location = metadata_location.to_string();
        self.write_metadata(&metadata, &metadata_location).await?;
        Ok(metadata_location)
    }

    /// Creates the tenant's dead-letter table unless it exists (tenants created before it
    /// existed get it on their first poison message).
    pub async fn ensure_dlq_table(&self, tenant: &TenantId) -> Result<()> {
        let tenant = tenant.clone();
        self.on_io(move |c| async move {
            if c.metadata_location(&tenant, DLQ_TABLE).await.is_ok() {
                return Ok(());
            }
            let Some(key) = c.tenant_key(&tenant).await? else {
                return Err(Error::NotFound {
                    what: format!("tenant {tenant}"),
                });
            };
            let location = c
                .create_table_metadata(&key, DLQ_TABLE, dlq_schema()?, 6, "dead-letter", &[])
                .await?;
            let inserted = sqlx::query(
                "INSERT INTO iceberg_tables (catalog_name, table_namespace, table_name, \
                 metadata_location, previous_metadata_location, iceberg_type) \
                 VALUES ($1, $2, $3, $4, NULL, 'TABLE') ON CONFLICT DO NOTHING",
            )
            .bind(&c.name)
            .bind(tenant.as_str())
            .bind(DLQ_TABLE)
            .bind(&location)
            .execute(&c.db)
            .await
            .map_err(Error::db("create the dead-letter table"))?;
            if inserted.rows_affected() == 0 {
                // Another worker created it first.
                let _ = c.file_io.delete(&location).await;
            }
            Ok(())
        })
        .await
    }

    /// Writes a metadata file and syncs it to storage before returning.
    async fn write_metadata(&self, metadata: &TableMetadata, location: &str) -> Result<()> {
        let json = serde_json::to_vec(metadata)
            .map_err(|e| Error::internal(format!("serialising table metadata: {e}")))?;
        let out = self
            .file_io
            .new_output(location)
            .map_err(Error::ice("metadata output"))?;
        let mut writer = out.writer().await.map_err(Error::ice("metadata writer"))?;
        writer
            .write(Bytes::from(json))
            .await
            .map_err(Error::ice("writing metadata"))?;
        writer
            .close()
            .await
            .map_err(Error::ice("closing metadata"))?;
        // On a local warehouse, the metadata file (and the manifests and list written before
        // it, in the same folder) are durable only once their folders are.
        self.sync_dirs(vec![location.to_string()]).await
    }

    /// Syncs the folders holding `locations` on a local warehouse (nothing on S3).
    pub(crate) async fn sync_dirs(&self, locations: Vec<String>) -> Result<()> {
        if !self.warehouse.starts_with("file://") {
            return Ok(());
        }
        let root = self.warehouse.clone();
        tokio::task::spawn_blocking(move || {
            storage::sync_dirs_of(&root, locations.iter().map(String::as_str))
        })
        .await
        .map_err(|e| Error::internal(format!("syncing folders: {e}")))?
    }

    /// Names of the tables in a tenant's namespace.
    pub async fn list_tables(&self, tenant: &TenantId) -> Result<Vec<String>> {
        let tenant = tenant.to_string();
        self.on_io(move |c| async move {
            let rows: Vec<(String,)> = sqlx::query_as(
                "SELECT table_name FROM iceberg_tables WHERE catalog_name = $1 \
                 AND table_namespace = $2 ORDER BY table_name",
            )
            .bind(&c.name)
            .bind(&tenant)
            .fetch_all(&c.db)
            .await
            .map_err(Error::db("list tables"))?;
            Ok(rows.into_iter().map(|(n,)| n).collect())
        })
        .await
    }

    async fn metadata_location(&self, tenant: &TenantId, table: &str) -> Result<String> {
        let (tenant, table) = (tenant.to_string(), table.to_string());
        self.on_io(move |c| async move {
            let row: Option<(Option<String>,)> = sqlx::query_as(
                "SELECT metadata_location FROM iceberg_tables WHERE catalog_name = $1 \
                 AND table_namespace = $2 AND table_name = $3",
            )
            .bind(&c.name)
            .bind(&tenant)
            .bind(&table)
            .fetch_optional(&c.db)
            .await
            .map_err(Error::db("load table"))?;
            row.and_then(|(l,)| l).ok_or_else(|| Error::NotFound {
                what: format!("table {tenant}.{table}"),
            })
        })
        .await
    }

    /// Loads the current state of a table.
    pub async fn load_table(&self, tenant: &TenantId, table: &str) -> Result<Table> {
        let location = self.metadata_location(tenant, table).await?;
        let key = (tenant.to_string(), table.to_string());
        let cached = {
            let cache = self
                .tables
                .lock()
                .map_err(|_| Error::internal("table cache poisoned"))?;
            cache
                .get(&key)
                .filter(|(l, _)| *l == location)
                .map(|(_, m)| m.clone())
        };
        let metadata = match cached {
            Some(m) => m,
            None => {
                let m = Arc::new(
                    TableMetadata::read_from(&self.file_io, &location)
                        .await
                        .map_err(Error::ice(format!("reading metadata of {tenant}.{table}")))?,
                );
                self.cache_metadata(&key, &location, &m);
                m
            }
        };
        self.table_from(tenant, table, &location, metadata)
    }

    fn cache_metadata(&self, key: &(String, String), location: &str, m: &Arc<TableMetadata>) {
        if let Ok(mut cache) = self.tables.lock() {
            cache.insert(key.clone(), (location.to_string(), m.clone()));
        }
    }

    fn table_from(
        &self,
        tenant: &TenantId,
        table: &str,
        location: &str,
        metadata: Arc<TableMetadata>,
    ) -> Result<Table> {
        // Reads of this table run on the runtime of whoever loaded it.
        let runtime = iceberg::Runtime::try_current().map_err(Error::ice("no tokio runtime"))?;
        Table::builder()
            .runtime(runtime)
            .file_io(self.file_io.clone())
            .metadata_location(location)
            .metadata(metadata)
            .identifier(TableIdent::new(
                NamespaceIdent::new(tenant.to_string()),
                table.to_string(),
            ))
            .build()
            .map_err(Error::ice("building table handle"))
    }

    /// The last position of `source` committed to the table, read from its current snapshot.
    pub async fn committed_position(
        &self,
        tenant: &TenantId,
        table: &str,
        source: &str,
    ) -> Result<Option<u64>> {
        let t = self.load_table(tenant, table).await?;
        Ok(position_in(t.metadata(), source))
    }

    /// Appends `files` to the table of the tenant incarnation `tenant` in one snapshot,
    /// exactly once with respect to `position`: if the table already holds the batch's last
    /// position, nothing is committed. Retries lost compare-and-swaps (reloading and
    /// re-checking the position each time). If the table now belongs to another incarnation
    /// (the tenant was deleted and created again), nothing is committed:
    /// [`Error::IncarnationGone`].
    pub async fn commit_append(
        &self,
        tenant: &TenantKey,
        table: &str,
        files: Vec<DataFile>,
        position: Option<&SourcePosition>,
    ) -> Result<CommitOutcome> {
        let (tenant, table, position) = (tenant.clone(), table.to_string(), position.cloned());
        self.on_io(move |c| async move {
            let guard = position.as_ref().map(Guard::Log);
            match c
                .commit_append_here(
                    tenant.id(),
                    &table,
                    files,
                    guard,
                    Some(tenant.incarnation()),
                )
                .await?
            {
                Ok(outcome) => Ok(outcome),
                Err(_) => Err(Error::internal("a log position cannot be fenced")),
            }
        })
        .await
    }

    /// Appends `files` holding the records `batch` describes, exactly once: inside every
    /// compare-and-swap attempt the table's positions for the topic must be the batch's
    /// `expected` ones (then they become its `next` ones), or already past the batch.
    pub async fn commit_append_kafka(
        &self,
        tenant: &TenantId,
        table: &str,
        files: Vec<DataFile>,
        batch: &KafkaBatch,
    ) -> Result<KafkaCommit> {
        let (tenant, table, batch) = (tenant.clone(), table.to_string(), batch.clone());
        self.on_io(move |c| async move {
            Ok(
                match c
                    .commit_append_here(&tenant, &table, files, Some(Guard::Kafka(&batch)), None)
                    .await?
                {
                    Ok(o) if o.already_committed => KafkaCommit::AlreadyCommitted,
                    Ok(o) => KafkaCommit::Committed {
                        snapshot_id: o.snapshot_id.unwrap_or_default(),
                        conflicts: o.conflicts,
                    },
                    Err(stored) => KafkaCommit::Fenced { stored },
                },
            )
        })
        .await
    }

    /// `Ok(Err(stored))`: a Kafka guard found other positions than expected. With
    /// `incarnation`, the table must belong to it (checked on the metadata each attempt swaps
    /// out, so atomically with the swap).
    async fn commit_append_here(
        &self,
        tenant: &TenantId,
        table: &str,
        files: Vec<DataFile>,
        guard: Option<Guard<'_>>,
        incarnation: Option<&str>,
    ) -> Result<std::result::Result<CommitOutcome, BTreeMap<i32, i64>>> {
        // The data files (and the partition folders made for them) must be durable before
        // any snapshot names them.
        self.sync_dirs(files.iter().map(|f| f.file_path().to_string()).collect())
            .await?;
        let mut conflicts = 0;
        loop {
            let current = self.load_table(tenant, table).await?;
            let metadata = current.metadata();
            if let Some(expected) = incarnation
                && table_incarnation(metadata) != expected
            {
                return Err(Error::IncarnationGone {
                    tenant: tenant.to_string(),
                    incarnation: expected.to_string(),
                });
            }
            let already = Ok(Ok(CommitOutcome {
                snapshot_id: metadata.current_snapshot_id(),
                already_committed: true,
                conflicts,
            }));
            match &guard {
                Some(Guard::Log(pos)) => match position_in(metadata, &pos.source) {
                    Some(done) if done >= pos.last => return already,
                    Some(done) if done >= pos.first => {
                        return Err(Error::internal(format!(
                            "{tenant}.{table}: batch {}..={} of {} overlaps committed position {done}",
                            pos.first, pos.last, pos.source
                        )));
                    }
                    _ => {}
                },
                Some(Guard::Kafka(batch)) => match check_kafka(metadata, batch)? {
                    Check::Proceed => {}
                    Check::Already => return already,
                    Check::Fenced(stored) => return Ok(Err(stored)),
                },
                None => {}
            }
            let old_location = current
                .metadata_location()
                .ok_or_else(|| Error::internal("loaded table without a metadata location"))?
                .to_string();
            let prepared = self
                .prepare_append(&current, &old_location, files.clone(), guard.as_ref())
                .await?;
            let (new_metadata, new_location, snapshot_id, expired) = (
                prepared.metadata,
                prepared.location,
                prepared.snapshot_id,
                prepared.expired,
            );
            if self
                .swap_metadata(
                    tenant,
                    table,
                    &old_location,
                    &new_location,
                    new_metadata,
                    expired,
                )
                .await?
            {
                return Ok(Ok(CommitOutcome {
                    snapshot_id: Some(snapshot_id),
                    already_committed: false,
                    conflicts,
                }));
            }
            conflicts += 1;
            if conflicts >= MAX_COMMIT_ATTEMPTS {
                self.after_lost_swap(prepared.written, None).await;
                return Err(Error::CommitConflict {
                    table: format!("{tenant}.{table}"),
                });
            }
            tracing::debug!(%tenant, table, conflicts, "commit lost a race; reloading");
            self.after_lost_swap(prepared.written, Some(conflicts))
                .await;
        }
    }

    /// After a lost compare-and-swap: deletes what the attempt wrote (nothing can reference it)
    /// and, before attempt `conflicts + 1`, waits an exponential backoff with jitter.
    pub(crate) async fn after_lost_swap(&self, written: Vec<String>, conflicts: Option<u32>) {
        for f in written {
            if let Err(e) = self.file_io.delete(&f).await {
                tracing::debug!(file = %f, error = %e, "could not delete a lost attempt's file");
            }
        }
        if let Some(conflicts) = conflicts {
            let backoff = 5u64 * (1 << conflicts.min(6));
            let jitter = rand::random::<u64>() % backoff.max(1);
            tokio::time::sleep(Duration::from_millis(backoff + jitter)).await;
        }
    }

    /// Points the catalog at `new_location` if it still points at `old_location` (the
    /// compare-and-swap). On success caches the new metadata and, if the table asks for it,
    /// deletes the metadata files that fell out of its log. `false`: another commit won.
    pub(crate) async fn swap_metadata(
        &self,
        tenant: &TenantId,
        table: &str,
        old_location: &str,
        new_location: &str,
        new_metadata: TableMetadata,
        expired: Vec<String>,
    ) -> Result<bool> {
        let swapped = sqlx::query(
            "UPDATE iceberg_tables SET metadata_location = $1, previous_metadata_location = $2 \
             WHERE catalog_name = $3 AND table_namespace = $4 AND table_name = $5 \
             AND (iceberg_type = 'TABLE' OR iceberg_type IS NULL) AND metadata_location = $6",
        )
        .bind(new_location)
        .bind(old_location)
        .bind(&self.name)
        .bind(tenant.as_str())
        .bind(table)
        .bind(old_location)
        .execute(&self.db)
        .await
        .map_err(Error::db("metadata swap"))?;
        if swapped.rows_affected() != 1 {
            return Ok(false);
        }
        let delete_old = new_metadata
            .properties()
            .get("write.metadata.delete-after-commit.enabled")
            .is_some_and(|v| v == "true");
        let key = (tenant.to_string(), table.to_string());
        self.cache_metadata(&key, new_location, &Arc::new(new_metadata));
        if delete_old {
            for old in expired {
                // Best effort: a file left behind is found by orphan-file cleanup.
                if let Err(e) = self.file_io.delete(&old).await {
                    tracing::warn!(file = %old, error = %e, "could not delete old metadata");
                }
            }
        }
        Ok(true)
    }

    /// Writes the manifest, manifest list and metadata file of an append on top of `current`.
    async fn prepare_append(
        &self,
        current: &Table,
        old_location: &str,
        files: Vec<DataFile>,
        guard: Option<&Guard<'_>>,
    ) -> Result<Prepared> {
        let metadata = current.metadata();
        let table_location = metadata.location();
        let schema = metadata.current_schema().clone();
        let spec = metadata.default_partition_spec().clone();
        let commit_id = uuid::Uuid::now_v7();
        let snapshot_id = new_snapshot_id(metadata);
        let sequence_number = metadata.next_sequence_number();
        let parent = metadata.current_snapshot().cloned();

        // The summary: added-* from the new files, total-* carried from the parent, source
        // positions carried from the parent and this batch's written over them.
        let mut collector = SnapshotSummaryCollector::default();
        for f in &files {
            collector.add_file(f, schema.clone(), spec.clone());
        }
        let mut props: HashMap<String, String> = parent
            .as_deref()
            .map(carried_properties)
            .unwrap_or_default();
        let added = collector.build();
        for (total, added_key) in [
            ("total-records", "added-records"),
            ("total-data-files", "added-data-files"),
            ("total-files-size", "added-files-size"),
        ] {
            let before = parent
                .as_ref()
                .and_then(|p| p.summary().additional_properties.get(total))
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
            let plus = added
                .get(added_key)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
            props.insert(total.to_string(), (before + plus).to_string());
        }
        for k in [
            "total-delete-files",
            "total-position-deletes",
            "total-equality-deletes",
        ] {
            props.insert(k.to_string(), "0".to_string());
        }
        props.extend(added);
        match guard {
            Some(Guard::Log(pos)) => {
                props.insert(
                    format!("{POSITION_PREFIX}{}", pos.source),
                    pos.last.to_string(),
                );
            }
            Some(Guard::Kafka(batch)) => {
                let mut positions = kafka_positions(metadata, &batch.group, &batch.topic)?;
                for (p, r) in &batch.partitions {
                    positions.insert(*p, r.next);
                }
                let json: BTreeMap<String, i64> = positions
                    .into_iter()
                    .map(|(p, o)| (p.to_string(), o))
                    .collect();
                props.insert(
                    kafka_key(&batch.group, &batch.topic),
                    serde_json::to_string(&json)
                        .map_err(|e| Error::internal(format!("kafka positions: {e}")))?,
                );
            }
            None => {}
        }

        // The new manifest holds the added files; the parent's manifests carry over unchanged.
        // A batch of no files (every record was dead-lettered) moves the positions only.
        let manifest_path = format!("{table_location}/metadata/{commit_id}-m0.avro");
        let mut manifests = Vec::new();
        if let Some(p) = &parent {
            let list = current
                .manifest_list_reader(p)
                .load()
                .await
                .map_err(Error::ice("reading the parent manifest list"))?;
            manifests.extend(list.entries().iter().cloned());
        }
        let wrote_manifest = !files.is_empty();
        if wrote_manifest {
            let out = self
                .file_io
                .new_output(&manifest_path)
                .map_err(Error::ice("manifest output"))?;
            let mut writer =
                ManifestWriterBuilder::new(out, Some(snapshot_id), schema.clone(), (*spec).clone())
                    .build_v2_data();
            for f in files {
                writer
                    .add_file(f, sequence_number)
                    .map_err(Error::ice("adding a file to the manifest"))?;
            }
            manifests.push(
                writer
                    .write_manifest_file()
                    .await
                    .map_err(Error::ice("writing the manifest"))?,
            );
        }

        let mut prepared = self
            .prepare_snapshot(
                current,
                old_location,
                NewSnapshot {
                    snapshot_id,
                    sequence_number,
                    commit_id,
                    operation: Operation::Append,
                    props,
                },
                manifests,
            )
            .await?;
        if wrote_manifest {
            prepared.written.insert(0, manifest_path);
        }
        Ok(prepared)
    }

    /// Writes the manifest list of `manifests` and the metadata file of a snapshot on top of
    /// `current` (whose metadata file is `old_location`), making it the head of `main`.
    pub(crate) async fn prepare_snapshot(
        &self,
        current: &Table,
        old_location: &str,
        new: NewSnapshot,
        manifests: Vec<ManifestFile>,
    ) -> Result<Prepared> {
        let metadata = current.metadata();
        let table_location = metadata.location();
        let parent = metadata.current_snapshot().cloned();
        let NewSnapshot {
            snapshot_id,
            sequence_number,
            commit_id,
            operation,
            props,
        } = new;
        let list_path = format!("{table_location}/metadata/snap-{snapshot_id}-0-{commit_id}.avro");
        let list_path_written = list_path.clone();
        let list_out = self
            .file_io
            .new_output(&list_path)
            .map_err(Error::ice("manifest list output"))?
            .writer()
            .await
            .map_err(Error::ice("manifest list writer"))?;
        let mut list_writer = ManifestListWriter::v2(
            list_out,
            snapshot_id,
            parent.as_ref().map(|p| p.snapshot_id()),
            sequence_number,
        );
        list_writer
            .add_manifests(manifests.into_iter())
            .map_err(Error::ice("manifest list"))?;
        list_writer
            .close()
            .await
            .map_err(Error::ice("writing the manifest list"))?;

        let snapshot = Snapshot::builder()
            .with_snapshot_id(snapshot_id)
            .with_parent_snapshot_id(parent.as_ref().map(|p| p.snapshot_id()))
            .with_sequence_number(sequence_number)
            .with_timestamp_ms(chrono::Utc::now().timestamp_millis())
            .with_manifest_list(list_path)
            .with_summary(Summary {
                operation,
                additional_properties: props,
            })
            .with_schema_id(metadata.current_schema_id())
            .build();
        let built = TableMetadataBuilder::new_from_metadata(
            metadata.clone(),
            Some(old_location.to_string()),
        )
        .add_snapshot(snapshot)
        .map_err(Error::ice("adding the snapshot"))?
        .set_ref(
            MAIN_BRANCH,
            SnapshotReference::new(snapshot_id, SnapshotRetention::branch(None, None, None)),
        )
        .map_err(Error::ice("moving main"))?
        .build()
        .map_err(Error::ice("building metadata"))?;
        let mut prepared = self.prepare_metadata(old_location, built).await?;
        prepared.snapshot_id = snapshot_id;
        prepared.written.insert(0, list_path_written);
        Ok(prepared)
    }

    /// Writes the next metadata file after `old_location` (not yet swapped in).
    pub(crate) async fn prepare_metadata(
        &self,
        old_location: &str,
        built: TableMetadataBuildResult,
    ) -> Result<Prepared> {
        let new_metadata = built.metadata;
        let expired = built
            .expired_metadata_logs
            .into_iter()
            .map(|l| l.metadata_file)
            .collect();
        let new_location = MetadataLocation::from_str(old_location)
            .map_err(Error::ice("parsing the metadata location"))?
            .with_next_version()
            .with_new_metadata(&new_metadata)
            .to_string();
        self.write_metadata(&new_metadata, &new_location).await?;
        let snapshot_id = new_metadata.current_snapshot_id().unwrap_or_default();
        Ok(Prepared {
            written: vec![new_location.clone()],
            metadata: new_metadata,
            location: new_location,
            snapshot_id,
            expired,
        })
    }
}

/// What a new snapshot is, apart from its manifests.
pub(crate) struct NewSnapshot {
    pub snapshot_id: i64,
    pub sequence_number: i64,
    /// Names this commit's files.
    pub commit_id: uuid::Uuid,
    pub operation: Operation,
    /// The summary's properties.
    pub props: HashMap<String, String>,
}

/// A prepared (written, not yet swapped-in) commit.
pub(crate) struct Prepared {
    pub metadata: TableMetadata,
    pub location: String,
    pub snapshot_id: i64,
    /// Metadata files that fell out of the metadata log with this commit.
    pub expired: Vec<String>,
    /// Files this attempt wrote: deleted if the swap is lost.
    pub written: Vec<String>,
}

/// The position of `source` recorded in the table's current snapshot.
pub fn position_in(metadata: &TableMetadata, source: &str) -> Option<u64> {
    metadata
        .current_snapshot()?
        .summary()
        .additional_properties
        .get(&format!("{POSITION_PREFIX}{source}"))?
        .parse()
        .ok()
}

pub(crate) fn new_snapshot_id(metadata: &TableMetadata) -> i64 {
    loop {
        let (a, b) = uuid::Uuid::new_v4().as_u64_pair();
        let id = ((a ^ b) & (i64::MAX as u64)) as i64;
        if id != 0 && metadata.snapshot_by_id(id).is_none() {
            return id;
        }
    }
}
