//! User erasure: rewriting every file that holds rows of some users without those rows (an
//! Iceberg `overwrite` snapshot), then expiring every older snapshot and deleting what only
//! they reached, and checking that no object under the tenant's prefix still holds the users.
//!
//! A row belongs to a user when its `user_id` is one of the ids, or when its payload names one
//! of them as a JSON string (`"u-17"`): an event about the user is the user's data too.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::array::{Array, AsArray, BooleanArray, RecordBatch};
use datafusion::arrow::compute::{cast, filter_record_batch};
use datafusion::arrow::datatypes::DataType;
use floe_catalog::TenantId;
use floe_catalog::maintenance::ExpirePolicy;
use floe_catalog::rewrite::{ReplaceOutcome, RewriteKind};
use futures::{StreamExt, TryStreamExt};
use iceberg::spec::{Manifest, PrimitiveLiteral};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use parquet::arrow::ParquetRecordBatchStreamBuilder;
use parquet::arrow::async_reader::ParquetObjectReader;

use crate::{Compactor, Error, Result};

/// Unreferenced files younger than this are left alone by an erasure (a commit in flight may
/// own them); one holding an erased user keeps the request pending until it is old enough.
pub const ERASURE_ORPHAN_MIN_AGE: Duration = Duration::from_secs(600);
/// An erasure pass whose files were rewritten by a compaction meanwhile starts over this often.
const MAX_ERASURE_PASSES: usize = 5;
/// Objects read at once while verifying.
const VERIFY_CONCURRENCY: usize = 4;

/// Which rows belong to a set of users.
#[derive(Debug, Clone)]
pub struct RowFilter {
    ids: HashSet<String>,
    quoted: Vec<String>,
}

impl RowFilter {
    pub fn new(user_ids: &[String]) -> RowFilter {
        RowFilter {
            ids: user_ids.iter().cloned().collect(),
            quoted: user_ids
                .iter()
                .map(|u| serde_json::Value::String(u.clone()).to_string())
                .collect(),
        }
    }

    /// Whether one string value names a user: equal to an id, or holding one as a JSON string.
    fn names(&self, value: &str) -> bool {
        self.ids.contains(value) || self.quoted.iter().any(|q| value.contains(q.as_str()))
    }

    /// Which rows of `batch` name a user in any string column.
    fn matches(&self, batch: &RecordBatch) -> Result<Vec<bool>> {
        let mut hit = vec![false; batch.num_rows()];
        for column in batch.columns() {
            let strings = match column.data_type() {
                DataType::Utf8 => column.clone(),
                DataType::LargeUtf8 | DataType::Utf8View | DataType::Dictionary(_, _) => {
                    cast(column, &DataType::Utf8)
                        .map_err(|e| Error::Invalid(format!("reading strings: {e}")))?
                }
                _ => continue,
            };
            let strings = strings.as_string::<i32>();
            for (i, h) in hit.iter_mut().enumerate() {
                if !*h && strings.is_valid(i) && self.names(strings.value(i)) {
                    *h = true;
                }
            }
        }
        Ok(hit)
    }

    /// `batch` without the rows that name a user.
    pub fn apply(&self, batch: &RecordBatch) -> Result<RecordBatch> {
        let keep: BooleanArray = self.matches(batch)?.into_iter().map(|h| Some(!h)).collect();
        filter_record_batch(batch, &keep).map_err(|e| Error::Invalid(format!("filtering: {e}")))
    }
}

/// What one erasure run did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ErasureRun {
    pub files_rewritten: usize,
    pub rows_removed: u64,
    pub snapshots_expired: usize,
    pub files_deleted: usize,
    pub orphans_deleted: usize,
    /// Objects under the tenant's prefix still holding a user (empty: verified).
    pub still_holding: Vec<String>,
}

impl Compactor {
    /// Erases the users' rows from every table of `tenant`, expires all older snapshots,
    /// deletes what they reached, and verifies. The caller holds the tables' leases.
    pub async fn erase_users(&self, tenant: &TenantId, user_ids: &[String]) -> Result<ErasureRun> {
        let filter = RowFilter::new(user_ids);
        let mut run = ErasureRun::default();
        for table in self.catalog.list_tables(tenant).await? {
            let mut pass = 0;
            loop {
                pass += 1;
                match self
                    .erase_in_table(tenant, &table, &filter, &mut run)
                    .await?
                {
                    true => break,
                    false if pass < MAX_ERASURE_PASSES => continue,
                    false => {
                        return Err(Error::Invalid(format!(
                            "{tenant}.{table}: the files kept changing under the erasure; \
                             the next run tries again"
                        )));
                    }
                }
            }
            // One manifest of live files only: the entries of removed files go with it.
            match self
                .catalog
                .commit_rewrite(tenant, &table, RewriteKind::Replace, Vec::new(), Vec::new())
                .await?
            {
                ReplaceOutcome::Committed { .. } | ReplaceOutcome::InputsGone { .. } => {}
                ReplaceOutcome::KeptLosing { .. } => {
                    return Err(Error::Invalid(format!(
                        "{tenant}.{table}: other commits kept winning over the erasure; the next \
                         run tries again"
                    )));
                }
            }
            let expired = self
                .catalog
                .expire_snapshots(tenant, &table, ExpirePolicy::keep_current_only(), false)
                .await?;
            run.snapshots_expired += expired.snapshots_expired;
            run.files_deleted += expired.files_deleted;
            let orphans = self
                .catalog
                .remove_orphans(tenant, &table, ERASURE_ORPHAN_MIN_AGE, false)
                .await?;
            run.orphans_deleted += orphans.orphans_deleted;
        }
        run.still_holding = self.objects_holding(tenant, &filter).await?;
        Ok(run)
    }

    /// One pass over a table: `false` if a rewritten file was replaced meanwhile.
    async fn erase_in_table(
        &self,
        tenant: &TenantId,
        table: &str,
        filter: &RowFilter,
        run: &mut ErasureRun,
    ) -> Result<bool> {
        let t = self.catalog.load_table(tenant, table).await?;
        // Every file is read: payloads can name a user whatever the `user_id` bounds say.
        let candidates = crate::parquet_inputs(&t).await?;
        let (mut removed, mut added, mut rows_removed) = (Vec::new(), Vec::new(), 0u64);
        for (partition, file) in candidates {
            let target = file.bytes.max(self.config.target_file_bytes);
            let out = self
                .rewrite(
                    &t,
                    &partition,
                    std::slice::from_ref(&file),
                    target,
                    Some(filter),
                )
                .await?;
            let rows: u64 = out.iter().map(|f| f.record_count()).sum();
            if rows == file.rows {
                // Nobody to erase here.
                let paths: Vec<String> = out.iter().map(|f| f.file_path().to_string()).collect();
                self.delete(&paths).await;
                continue;
            }
            rows_removed += file.rows - rows;
            removed.push(file.path);
            added.extend(out);
        }
        if removed.is_empty() {
            return Ok(true);
        }
        let paths: Vec<String> = added.iter().map(|f| f.file_path().to_string()).collect();
        let files = removed.len();
        match self
            .catalog
            .commit_rewrite(tenant, table, RewriteKind::Overwrite, removed, added)
            .await
        {
            Ok(ReplaceOutcome::Committed { .. }) => {
                run.files_rewritten += files;
                run.rows_removed += rows_removed;
                Ok(true)
            }
            Ok(_) => {
                self.delete(&paths).await;
                Ok(false)
            }
            Err(e) => {
                self.delete(&paths).await;
                Err(e.into())
            }
        }
    }

    /// Every object under the tenant's prefix that still holds one of the users: Parquet files
    /// by their rows, manifests by their column bounds, anything else (metadata JSON, manifest
    /// lists, which hold only partition values) by its bytes.
    pub async fn objects_holding(
        &self,
        tenant: &TenantId,
        filter: &RowFilter,
    ) -> Result<Vec<String>> {
        let data = self.catalog.data_store();
        let store = data.object_store();
        let prefix = data
            .key(&format!("{}/{}", self.catalog.warehouse(), tenant))
            .ok_or_else(|| Error::Invalid("the tenant prefix lies outside the warehouse".into()))?;
        let objects: Vec<object_store::ObjectMeta> = store
            .list(Some(&Path::from(format!(
                "{}/",
                prefix.trim_end_matches('/')
            ))))
            .try_collect()
            .await
            .map_err(|e| Error::Invalid(format!("listing {prefix}: {e}")))?;
        let found: Vec<Option<String>> = futures::stream::iter(objects.into_iter().map(|o| {
            let store = store.clone();
            async move {
                let key = o.location.to_string();
                let holds = holds_users(store, o, filter).await?;
                Ok::<_, Error>(holds.then_some(key))
            }
        }))
        .buffer_unordered(VERIFY_CONCURRENCY)
        .try_collect()
        .await?;
        let mut found: Vec<String> = found.into_iter().flatten().collect();
        found.sort();
        Ok(found)
    }
}

async fn holds_users(
    store: Arc<dyn ObjectStore>,
    object: object_store::ObjectMeta,
    filter: &RowFilter,
) -> Result<bool> {
    let key = object.location.to_string();
    let failed = |e: &dyn std::fmt::Display| Error::Invalid(format!("verifying {key}: {e}"));
    if key.ends_with(".parquet") {
        let reader =
            ParquetObjectReader::new(store, object.location.clone()).with_file_size(object.size);
        let mut stream = ParquetRecordBatchStreamBuilder::new(reader)
            .await
            .map_err(|e| failed(&e))?
            .build()
            .map_err(|e| failed(&e))?;
        while let Some(batch) = stream.next().await {
            let batch = batch.map_err(|e| failed(&e))?;
            if filter.matches(&batch)?.into_iter().any(|h| h) {
                return Ok(true);
            }
        }
        return Ok(false);
    }
    let bytes = store
        .get(&object.location)
        .await
        .map_err(|e| failed(&e))?
        .bytes()
        .await
        .map_err(|e| failed(&e))?;
    let name = key.rsplit('/').next().unwrap_or_default();
    if name.ends_with(".avro") && !name.starts_with("snap-") {
        let manifest = Manifest::parse_avro(&bytes).map_err(|e| failed(&e))?;
        return Ok(manifest.entries().iter().any(|e| {
            let f = e.data_file();
            f.lower_bounds()
                .values()
                .chain(f.upper_bounds().values())
                .any(|d| matches!(d.literal(), PrimitiveLiteral::String(s) if filter.names(s)))
        }));
    }
    let text = String::from_utf8_lossy(&bytes);
    Ok(filter.quoted.iter().any(|q| text.contains(q.as_str())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::StringArray;
    use datafusion::arrow::datatypes::{Field, Schema};

    #[test]
    fn filter_drops_the_users_rows_and_rows_naming_them() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("user_id", DataType::Utf8, true),
            Field::new("payload", DataType::Utf8, false),
        ]));
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(vec![
                    Some("u-1"),
                    Some("u-17"),
                    None,
                    Some("u-2"),
                    Some("u-170"),
                ])),
                Arc::new(StringArray::from(vec![
                    "{}",
                    "{}",
                    r#"{"friend":"u-1"}"#,
                    r#"{"note":"u-1x"}"#,
                    "{}",
                ])),
            ],
        )
        .unwrap();
        let f = RowFilter::new(&["u-1".to_string()]);
        let kept = f.apply(&batch).unwrap();
        let users: Vec<Option<&str>> = kept.column(0).as_string::<i32>().iter().collect();
        // u-1 (by id) and the null-user row naming "u-1" go; "u-1x" and "u-170" are others.
        assert_eq!(users, vec![Some("u-17"), Some("u-2"), Some("u-170")]);
    }
}
