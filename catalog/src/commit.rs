//! The one commit loop. Every change Floe makes to a table (an append, a rewrite, an expiry)
//! is prepared from the table's current metadata (manifests, manifest list and the next
//! metadata file written, nothing yet pointing at them) and then swapped in with a
//! compare-and-swap of `iceberg_tables.metadata_location`:
//! `UPDATE … SET metadata_location = new WHERE metadata_location = <the one we read>`. A swap
//! lost to another writer deletes what the attempt wrote (nothing can reference it), waits a
//! backoff with jitter, reloads the table and prepares again; whatever the change must check
//! (source positions, live inputs) is checked again on the new metadata. After
//! `commit.max_attempts` lost swaps the loop gives up and the caller decides (ingest keeps its
//! batch and retries, a compaction bin waits for the next run).
//!
//! iceberg-rust 0.10 cannot run a check inside its commit and re-applies appends on conflict
//! without re-checking anything, hence this.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use iceberg::MetadataLocation;
use iceberg::spec::{
    MAIN_BRANCH, ManifestFile, ManifestListWriter, Operation, Schema, Snapshot, SnapshotReference,
    SnapshotRetention, Summary, TableMetadata, TableMetadataBuildResult, TableMetadataBuilder,
};
use iceberg::table::Table;

use crate::audit::Entry;
use crate::retry::Backoff;
use crate::tenant::TenantId;
use crate::{Catalog, Error, Result};

/// What one attempt of a commit came to.
pub(crate) enum Attempt<T> {
    /// Swap `prepared` in; once it is, the commit is `value`.
    Swap { prepared: Box<Prepared>, value: T },
    /// Nothing to swap (already done, inputs gone, nothing to do): the commit is `value`.
    Done(T),
}

/// How a commit ended.
pub(crate) enum Committed<T> {
    /// The value of the attempt that swapped in or found nothing to do, and the swaps lost
    /// to other writers before it.
    Done { value: T, conflicts: u32 },
    /// Other writers won every attempt: nothing was committed.
    KeptLosing { conflicts: u32 },
}

/// A change to a table, prepared anew on every attempt of the commit loop from the table as it
/// is then (an append, a rewrite, an expiry).
pub(crate) trait Change: Send {
    /// What the commit comes to.
    type Value: Send;

    /// Prepares the change on `current` (`conflicts`: swaps lost so far), or says there is
    /// nothing to swap.
    fn attempt<'a>(
        &'a mut self,
        catalog: &'a Catalog,
        current: Table,
        conflicts: u32,
    ) -> impl Future<Output = Result<Attempt<Self::Value>>> + Send + 'a;
}

impl Catalog {
    /// Runs `change` on the table's current metadata until what it prepares is swapped in, it
    /// has nothing to swap, or `commit.max_attempts` swaps are lost.
    pub(crate) async fn commit_loop<C: Change>(
        &self,
        tenant: &TenantId,
        table: &str,
        change: &mut C,
    ) -> Result<Committed<C::Value>> {
        let mut conflicts = 0;
        let mut backoff = Backoff::new(
            Duration::from_millis(5),
            Duration::from_millis(self.commit.backoff_max_ms),
        );
        loop {
            let current = self.load_table(tenant, table).await?;
            let old_location = current
                .metadata_location()
                .ok_or_else(|| Error::internal("loaded table without a metadata location"))?
                .to_string();
            let (prepared, value) = match change.attempt(self, current, conflicts).await? {
                Attempt::Done(value) => return Ok(Committed::Done { value, conflicts }),
                Attempt::Swap { prepared, value } => (prepared, value),
            };
            let Prepared {
                metadata,
                location,
                expired,
                written,
                audit,
                ..
            } = *prepared;
            if self
                .swap_metadata(
                    tenant,
                    table,
                    &old_location,
                    &location,
                    metadata,
                    expired,
                    audit,
                )
                .await?
            {
                return Ok(Committed::Done { value, conflicts });
            }
            conflicts += 1;
            metrics::counter!(crate::metrics::COMMIT_CONFLICTS).increment(1);
            tracing::debug!(%tenant, table, conflicts, "commit lost a race; reloading");
            self.delete_unreferenced(written).await;
            if conflicts >= self.commit.max_attempts {
                return Ok(Committed::KeptLosing { conflicts });
            }
            backoff.wait().await;
        }
    }

    /// Deletes what a lost attempt wrote: nothing can reference it.
    async fn delete_unreferenced(&self, written: Vec<String>) {
        for f in written {
            if let Err(e) = self.file_io.delete(&f).await {
                tracing::debug!(file = %f, error = %e, "could not delete a lost attempt's file");
            }
        }
    }

    /// Points the catalog at `new_location` if it still points at `old_location` (the
    /// compare-and-swap), with `audit`'s record in the same transaction when there is one (a
    /// record that cannot be written fails the swap). On success caches the new metadata and,
    /// if the table asks for it, deletes the metadata files that fell out of its log. `false`:
    /// another commit won.
    #[allow(clippy::too_many_arguments)]
    async fn swap_metadata(
        &self,
        tenant: &TenantId,
        table: &str,
        old_location: &str,
        new_location: &str,
        new_metadata: TableMetadata,
        expired: Vec<String>,
        audit: Option<Entry>,
    ) -> Result<bool> {
        let swap = sqlx::query(
            "UPDATE iceberg_tables SET metadata_location = $1, previous_metadata_location = $2 \
             WHERE catalog_name = $3 AND table_namespace = $4 AND table_name = $5 \
             AND (iceberg_type = 'TABLE' OR iceberg_type IS NULL) AND metadata_location = $6",
        )
        .bind(new_location)
        .bind(old_location)
        .bind(&self.name)
        .bind(tenant.as_str())
        .bind(table)
        .bind(old_location);
        // A statement that commits on its own (no audit record), or a transaction's commit, may
        // fail after the database applied it: its outcome is unknown. A statement inside a
        // transaction not yet committed is rolled back when it fails.
        let swapped = match audit {
            None => swap
                .execute(&self.db)
                .await
                .map_err(Error::swap(table))?
                .rows_affected(),
            Some(entry) => {
                let mut tx = self.write_tx().await.map_err(Error::db("metadata swap"))?;
                let swapped = swap
                    .execute(&mut *tx)
                    .await
                    .map_err(Error::db("metadata swap"))?
                    .rows_affected();
                if swapped == 1 {
                    crate::audit::append_in(&mut tx, &entry).await?;
                    tx.commit().await.map_err(Error::swap(table))?;
                }
                swapped
            }
        };
        if swapped != 1 {
            return Ok(false);
        }
        let delete_old = new_metadata
            .properties()
            .get("write.metadata.delete-after-commit.enabled")
            .is_some_and(|v| v == "true");
        let key = (tenant.to_string(), table.to_string());
        self.cache_metadata(&key, new_location, &Arc::new(new_metadata));
        self.hooks.tell(tenant, table);
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
            evolve,
        } = new;
        let schema_id = evolve
            .as_ref()
            .map_or(metadata.current_schema_id(), |e| e.schema.schema_id());
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
            .with_schema_id(schema_id)
            .build();
        let mut builder = TableMetadataBuilder::new_from_metadata(
            metadata.clone(),
            Some(old_location.to_string()),
        );
        if let Some(Evolve { schema, properties }) = evolve {
            builder = builder
                .add_current_schema(schema)
                .map_err(Error::ice("adding the schema"))?
                .set_properties(properties)
                .map_err(Error::ice("setting table properties"))?;
        }
        let built = builder
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
            audit: None,
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
    /// A schema the snapshot brings in (`None`: the table's current one).
    pub evolve: Option<Evolve>,
}

/// A new current schema (its id chosen as Iceberg's metadata builder does: an identical
/// schema's, or one past the highest), with table properties set in the same commit.
#[derive(Debug, Clone)]
pub(crate) struct Evolve {
    pub schema: Schema,
    pub properties: HashMap<String, String>,
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
    /// The audit record of the change, written in the swap's transaction.
    pub audit: Option<Entry>,
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
