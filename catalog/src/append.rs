//! Appends: a batch's files added to a table in one `append` snapshot, exactly once.
//!
//! The batch's position in its source (a write-ahead-log sequence number, or Kafka offsets per
//! partition) is checked against the table's current snapshot summary on every attempt of the
//! commit loop ([`crate::commit`]) and written into the new snapshot's summary, so a batch
//! lands exactly once however often it is retried or replayed.

use std::collections::{BTreeMap, HashMap};

use iceberg::spec::{DataFile, Operation, SnapshotSummaryCollector, TableMetadata};
use iceberg::table::Table;

use crate::commit::{Attempt, Change, Committed, NewSnapshot, Prepared, new_snapshot_id};
use crate::maintenance::LIST_HOLDS_PARENT;
use crate::merge::{AppendManifest, MergePolicy};
use crate::positions::{
    KafkaBatch, POSITION_PREFIX, SourcePosition, carried_properties, kafka_key, kafka_positions,
    position_in,
};
use crate::tenant::{TenantId, TenantKey, table_incarnation};
use crate::{Catalog, Error, Result};

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

/// How an append ended.
enum Appended {
    Committed {
        snapshot_id: i64,
    },
    /// The table already holds the batch: nothing committed.
    Already {
        snapshot_id: Option<i64>,
    },
    /// The table's Kafka positions are not the batch's expected ones: nothing committed.
    Fenced {
        stored: BTreeMap<i32, i64>,
    },
}

impl Catalog {
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
            let (appended, conflicts) = c
                .append_here(
                    tenant.id(),
                    &table,
                    files,
                    guard,
                    Some(tenant.incarnation()),
                )
                .await?;
            match appended {
                Appended::Committed { snapshot_id } => Ok(CommitOutcome {
                    snapshot_id: Some(snapshot_id),
                    already_committed: false,
                    conflicts,
                }),
                Appended::Already { snapshot_id } => Ok(CommitOutcome {
                    snapshot_id,
                    already_committed: true,
                    conflicts,
                }),
                Appended::Fenced { .. } => Err(Error::internal("a log position cannot be fenced")),
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
        self.on_io(
            move |c| async move { c.append_guarded(&tenant, &table, files, &batch, None).await },
        )
        .await
    }

    /// Appends `files` to the table of the tenant incarnation `tenant` with the positions
    /// guard of [`Catalog::commit_append_kafka`] (the audit log's chains use it for their
    /// sequence numbers): exactly once, fenced against another writer of the same records.
    pub(crate) async fn commit_append_guarded(
        &self,
        tenant: &TenantKey,
        table: &str,
        files: Vec<DataFile>,
        batch: &KafkaBatch,
    ) -> Result<KafkaCommit> {
        self.append_guarded(tenant.id(), table, files, batch, Some(tenant.incarnation()))
            .await
    }

    async fn append_guarded(
        &self,
        tenant: &TenantId,
        table: &str,
        files: Vec<DataFile>,
        batch: &KafkaBatch,
        incarnation: Option<&str>,
    ) -> Result<KafkaCommit> {
        let (appended, conflicts) = self
            .append_here(tenant, table, files, Some(Guard::Kafka(batch)), incarnation)
            .await?;
        Ok(match appended {
            Appended::Committed { snapshot_id } => KafkaCommit::Committed {
                snapshot_id,
                conflicts,
            },
            Appended::Already { .. } => KafkaCommit::AlreadyCommitted,
            Appended::Fenced { stored } => KafkaCommit::Fenced { stored },
        })
    }

    /// Appends `files`, checking `guard` on the metadata of each attempt. With `incarnation`,
    /// the table must belong to it (checked on the metadata each attempt swaps out, so
    /// atomically with the swap). Returns how it ended and the swaps lost on the way.
    async fn append_here(
        &self,
        tenant: &TenantId,
        table: &str,
        files: Vec<DataFile>,
        guard: Option<Guard<'_>>,
        incarnation: Option<&str>,
    ) -> Result<(Appended, u32)> {
        // The data files (and the partition folders made for them) must be durable before
        // any snapshot names them.
        self.sync_dirs(files.iter().map(|f| f.file_path().to_string()).collect())
            .await?;
        let mut change = AppendChange {
            tenant,
            table,
            files,
            guard,
            incarnation,
        };
        let outcome = self.commit_loop(tenant, table, &mut change).await?;
        match outcome {
            Committed::Done { value, conflicts } => Ok((value, conflicts)),
            Committed::KeptLosing { .. } => Err(Error::CommitConflict {
                table: format!("{tenant}.{table}"),
            }),
        }
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
        if let Some(p) = &parent {
            // The list below is the parent's plus this append's manifest.
            props.insert(LIST_HOLDS_PARENT.to_string(), p.snapshot_id().to_string());
        }
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

        // The new manifest holds the added files; the parent's manifests carry over unchanged,
        // unless enough of them are small that this append merges them with its files
        // (`crate::merge`). A batch of no files (every record was dead-lettered) moves the
        // positions only.
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
            let pick = MergePolicy::of(metadata).pick(&manifests, spec.spec_id());
            let (mut kept, mut merged) = (Vec::new(), Vec::new());
            for (i, m) in manifests.into_iter().enumerate() {
                match pick.binary_search(&i) {
                    Ok(_) => merged.push(m),
                    Err(_) => kept.push(m),
                }
            }
            if !merged.is_empty() {
                // The list is no longer the parent's plus one manifest.
                props.remove(LIST_HOLDS_PARENT);
                props.insert("manifests-replaced".into(), merged.len().to_string());
                props.insert("manifests-kept".into(), kept.len().to_string());
                props.insert("manifests-created".into(), "1".into());
            }
            let manifest = AppendManifest {
                snapshot_id,
                sequence_number,
                schema: schema.clone(),
                spec: &spec,
                files,
                merged,
            };
            kept.push(
                self.write_append_manifest(current, &manifest_path, manifest)
                    .await?,
            );
            manifests = kept;
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
                    evolve: None,
                },
                manifests,
            )
            .await?;
        if wrote_manifest {
            prepared.written.insert(0, manifest_path);
        }
        Ok(prepared)
    }
}

/// An append, as the commit loop runs it.
struct AppendChange<'a> {
    tenant: &'a TenantId,
    table: &'a str,
    files: Vec<DataFile>,
    guard: Option<Guard<'a>>,
    incarnation: Option<&'a str>,
}

impl Change for AppendChange<'_> {
    type Value = Appended;

    async fn attempt(
        &mut self,
        catalog: &Catalog,
        current: Table,
        _conflicts: u32,
    ) -> Result<Attempt<Appended>> {
        let (tenant, table) = (self.tenant, self.table);
        let metadata = current.metadata();
        if crate::projection::is_projection(metadata) {
            return Err(Error::invalid(format!(
                "{tenant}.{table} is a projection, derived from the tenant's events: \
                 events cannot be written to it"
            )));
        }
        if let Some(expected) = self.incarnation
            && table_incarnation(metadata) != expected
        {
            return Err(Error::IncarnationGone {
                tenant: tenant.to_string(),
                incarnation: expected.to_string(),
            });
        }
        let already = Attempt::Done(Appended::Already {
            snapshot_id: metadata.current_snapshot_id(),
        });
        match &self.guard {
            Some(Guard::Log(pos)) => match position_in(metadata, &pos.source) {
                Some(done) if done >= pos.last => return Ok(already),
                Some(done) if done >= pos.first => {
                    return Err(Error::internal(format!(
                        "{tenant}.{table}: batch {}..={} of {} overlaps committed \
                         position {done}",
                        pos.first, pos.last, pos.source
                    )));
                }
                _ => {}
            },
            Some(Guard::Kafka(batch)) => match check_kafka(metadata, batch)? {
                Check::Proceed => {}
                Check::Already => return Ok(already),
                Check::Fenced(stored) => {
                    return Ok(Attempt::Done(Appended::Fenced { stored }));
                }
            },
            None => {}
        }
        let old_location = current
            .metadata_location()
            .ok_or_else(|| Error::internal("loaded table without a metadata location"))?
            .to_string();
        let prepared = catalog
            .prepare_append(
                &current,
                &old_location,
                self.files.clone(),
                self.guard.as_ref(),
            )
            .await?;
        let snapshot_id = prepared.snapshot_id;
        Ok(Attempt::Swap {
            prepared: Box::new(prepared),
            value: Appended::Committed { snapshot_id },
        })
    }
}
