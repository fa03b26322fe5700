//! `floe backfill --promote FIELD`: fills a promoted property's column in the files of `events`
//! written before it was promoted. Those files (the ones whose manifest entry counts no value of
//! the column) are rewritten per partition, in bins of about the compaction target size, with
//! the column filled from each row's payload ([`floe_catalog::schema::promote::fill`]); each
//! bin is committed as a `replace` snapshot like a compaction bin, so ingest goes on meanwhile
//! and a bin whose files changed under it is dropped (running the backfill again finishes it).

use std::collections::BTreeMap;

use floe_catalog::TenantId;
use floe_catalog::table::{EVENTS_TABLE, events_schema, reads_by_name};
use iceberg::spec::{DataFileFormat, Struct};

use crate::{Bin, Compactor, Error, InputFile, Result, pack};

/// What a backfill did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Backfilled {
    pub column: String,
    /// Files that lacked the column, rewritten.
    pub files_in: usize,
    pub files_out: usize,
    pub rows: u64,
    /// Bins not committed (their files changed meanwhile, or other commits kept winning): a
    /// second run rewrites them.
    pub bins_left: usize,
}

impl Compactor {
    /// Rewrites the files of the tenant's `events` that lack the promoted column `column`.
    pub async fn backfill_promoted(&self, tenant: &TenantId, column: &str) -> Result<Backfilled> {
        let table = self.catalog.load_table(tenant, EVENTS_TABLE).await?;
        let metadata = table.metadata();
        let base = events_schema()?;
        let promoted: Vec<String> = metadata
            .current_schema()
            .as_struct()
            .fields()
            .iter()
            .filter(|f| base.field_by_name(&f.name).is_none())
            .map(|f| f.name.clone())
            .collect();
        let Some(field) = metadata
            .current_schema()
            .field_by_name(column)
            .filter(|_| promoted.iter().any(|p| p == column))
        else {
            return Err(Error::Invalid(format!(
                "{column:?} is not a promoted column of {tenant}.events (promoted: {}); mark the \
                 property \"x-floe-promote\": true in a registered schema first",
                if promoted.is_empty() {
                    "none".to_string()
                } else {
                    promoted.join(", ")
                }
            )));
        };
        if !reads_by_name(metadata) {
            return Err(Error::Invalid(format!(
                "{tenant}.events has a column name that changed its field id; it cannot be \
                 rewritten by name"
            )));
        }
        let mut by_partition: BTreeMap<String, (Struct, Vec<InputFile>)> = BTreeMap::new();
        for entry in self.catalog.live_entries(&table).await? {
            let file = entry.data_file();
            if file.file_format() != DataFileFormat::Parquet
                || file.value_counts().contains_key(&field.id)
            {
                continue;
            }
            by_partition
                .entry(format!("{:?}", file.partition()))
                .or_insert_with(|| (file.partition().clone(), Vec::new()))
                .1
                .push(InputFile::of(file));
        }
        let mut done = Backfilled {
            column: column.to_string(),
            ..Backfilled::default()
        };
        let target = self.config.target_file_bytes;
        for (partition, files) in by_partition.into_values() {
            for files in pack(files, target) {
                let bin = Bin {
                    partition: partition.clone(),
                    files,
                    target,
                };
                let out = self.run_bin(tenant, EVENTS_TABLE, &bin).await?;
                if out.committed {
                    done.files_in += out.files_in;
                    done.files_out += out.files_out;
                    done.rows += out.rows;
                } else {
                    done.bins_left += 1;
                }
            }
        }
        Ok(done)
    }
}
