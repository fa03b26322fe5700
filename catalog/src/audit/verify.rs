//! `floe audit verify`: walks a chain from its first record, in the audit table and then in
//! the records not yet published, and names the first link that does not hold: a record whose
//! fields no longer give its hash (changed), one that does not name the hash of the one before
//! it (removed, reordered, or forged with a recomputed hash), a missing or repeated `seq`.

use arrow_array::cast::AsArray;
use arrow_array::types::{Int64Type, TimestampMicrosecondType};
use arrow_array::{Array, RecordBatch};
use futures::TryStreamExt;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use super::{AUDIT_TABLE, GENESIS, PLATFORM_CHAIN, Record};
use crate::tenant::TenantId;
use crate::{Catalog, Error, Result};

/// What a walk of a chain found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// Records walked (published and not yet).
    pub records: u64,
    /// Of those, in the audit table.
    pub published: u64,
    /// The first link that does not hold, if any.
    pub broken: Option<Broken>,
}

/// A link that does not hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Broken {
    /// The record's position in the chain.
    pub seq: i64,
    /// Where it was read: `audit table` or `catalog database`.
    pub place: &'static str,
    pub reason: String,
}

/// A record's link as read: its seq, its recorded previous hash, its recorded hash, and the
/// hash its fields give.
struct Link {
    seq: i64,
    prev_hash: String,
    hash: String,
    computed: String,
}

impl Link {
    fn of(r: &Record) -> Link {
        Link {
            seq: r.seq,
            prev_hash: r.prev_hash.clone(),
            hash: r.hash.clone(),
            computed: r.computed_hash(),
        }
    }
}

/// Walks links in order from `expected_seq` after `prev_hash`; the first break, if any.
fn walk(
    links: &[Link],
    place: &'static str,
    expected_seq: &mut i64,
    prev_hash: &mut String,
) -> Option<Broken> {
    for l in links {
        let broken = |reason: String| {
            Some(Broken {
                seq: l.seq,
                place,
                reason,
            })
        };
        if l.seq < *expected_seq {
            return broken(format!("record {} appears more than once", l.seq));
        }
        if l.seq > *expected_seq {
            return broken(format!(
                "record {} is missing (the next one is {})",
                expected_seq, l.seq
            ));
        }
        if l.computed != l.hash {
            return broken(format!(
                "record {} was changed: its fields do not give its hash",
                l.seq
            ));
        }
        if l.prev_hash != *prev_hash {
            return broken(format!(
                "record {} does not follow record {}: it names another previous hash",
                l.seq,
                l.seq - 1
            ));
        }
        *expected_seq += 1;
        *prev_hash = l.hash.clone();
    }
    None
}

impl Catalog {
    /// Walks the chain of `tenant` (the platform's with `None`).
    pub async fn verify_audit(&self, tenant: Option<&TenantId>) -> Result<Verified> {
        let namespace = tenant.cloned().unwrap_or_else(TenantId::platform);
        let chain = tenant.map_or(PLATFORM_CHAIN, TenantId::as_str).to_string();
        self.on_io(move |c| async move {
            let mut links = Vec::new();
            let mut next_unpublished = 1;
            let (head_seq, head_hash, published_mark) = c.audit_head(&chain).await?;
            match c.load_table(&namespace, AUDIT_TABLE).await {
                Ok(table) => {
                    next_unpublished = Catalog::published_next(&table)?;
                    links = read_table(&table).await?;
                }
                Err(e) if e.kind() == crate::ErrorKind::NotFound => {
                    if published_mark > 0 {
                        return Ok(Verified {
                            records: 0,
                            published: 0,
                            broken: Some(Broken {
                                seq: 1,
                                place: "audit table",
                                reason: "the audit table is gone, yet records were published to it"
                                    .into(),
                            }),
                        });
                    }
                }
                Err(e) => return Err(e),
            }
            links.sort_by_key(|l| l.seq);
            let published = links.len() as u64;
            let (mut seq, mut prev) = (1, GENESIS.to_string());
            if let Some(broken) = walk(&links, "audit table", &mut seq, &mut prev) {
                return Ok(Verified {
                    records: published,
                    published,
                    broken: Some(broken),
                });
            }
            if seq != next_unpublished {
                return Ok(Verified {
                    records: published,
                    published,
                    broken: Some(Broken {
                        seq,
                        place: "audit table",
                        reason: format!(
                            "the table's snapshot says it holds records up to {} but it has \
                             records up to {}",
                            next_unpublished - 1,
                            seq - 1
                        ),
                    }),
                });
            }
            // Then the records not yet published, a page at a time.
            let mut records = published;
            loop {
                let page = c.audit_records(&chain, seq, 10_000).await?;
                if page.is_empty() {
                    break;
                }
                records += page.len() as u64;
                let page: Vec<Link> = page.iter().map(Link::of).collect();
                if let Some(broken) = walk(&page, "catalog database", &mut seq, &mut prev) {
                    return Ok(Verified {
                        records,
                        published,
                        broken: Some(broken),
                    });
                }
            }
            // The chain's head names its last record: a tail cut off is a break too.
            let broken = if seq - 1 != head_seq {
                Some(Broken {
                    seq,
                    place: "catalog database",
                    reason: format!(
                        "the chain ends at record {} but its head says {head_seq}: records are \
                         missing from the end",
                        seq - 1
                    ),
                })
            } else if head_seq > 0 && prev != head_hash {
                Some(Broken {
                    seq: head_seq,
                    place: "catalog database",
                    reason: format!("record {head_seq} is not the one its chain's head names"),
                })
            } else {
                None
            };
            Ok(Verified {
                records,
                published,
                broken,
            })
        })
        .await
    }
}

/// Every record's link in the audit table, as its current snapshot holds them. Each data file
/// is read whole as it is in storage (not trusting the size its manifest records: a file
/// rewritten by hand is read, and its records judged, rather than failing the walk).
async fn read_table(table: &iceberg::table::Table) -> Result<Vec<Link>> {
    let scan = table
        .scan()
        .select_all()
        .build()
        .map_err(Error::ice("scanning the audit table"))?;
    let tasks: Vec<_> = scan
        .plan_files()
        .await
        .map_err(Error::ice("planning the audit table's scan"))?
        .try_collect()
        .await
        .map_err(Error::ice("planning the audit table's scan"))?;
    let mut links = Vec::new();
    for task in tasks {
        let path = task.data_file_path.clone();
        let bytes = table
            .file_io()
            .new_input(&path)
            .map_err(Error::ice("opening an audit file"))?
            .read()
            .await
            .map_err(Error::ice(format!("reading {path}")))?;
        let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
            .and_then(|b| b.build())
            .map_err(|e| Error::internal(format!("{path} is not a readable Parquet file: {e}")))?;
        for batch in reader {
            let batch =
                batch.map_err(|e| Error::internal(format!("{path} could not be read: {e}")))?;
            read_batch(&batch, &path, &mut links)?;
        }
    }
    Ok(links)
}

fn read_batch(batch: &RecordBatch, path: &str, links: &mut Vec<Link>) -> Result<()> {
    let column = |name: &str| {
        batch
            .column_by_name(name)
            .ok_or_else(|| Error::internal(format!("{path} has no column {name}")))
    };
    let seq = column("seq")?
        .as_primitive_opt::<Int64Type>()
        .ok_or_else(|| Error::internal(format!("{path}: seq is not a long")))?;
    let at = column("at")?
        .as_primitive_opt::<TimestampMicrosecondType>()
        .ok_or_else(|| Error::internal(format!("{path}: at is not a timestamp")))?;
    let strings = |name: &str| -> Result<_> {
        column(name)?
            .as_string_opt::<i32>()
            .ok_or_else(|| Error::internal(format!("{path}: {name} is not a string")))
    };
    let (actor, tenant, action, detail, prev, hash) = (
        strings("actor")?,
        strings("tenant")?,
        strings("action")?,
        strings("detail")?,
        strings("prev_hash")?,
        strings("hash")?,
    );
    for i in 0..batch.num_rows() {
        let record = Record {
            seq: seq.value(i),
            at_ms: at.value(i).div_euclid(1000),
            actor: actor.value(i).to_string(),
            tenant: (!tenant.is_null(i)).then(|| tenant.value(i).to_string()),
            action: action.value(i).to_string(),
            detail: detail.value(i).to_string(),
            prev_hash: prev.value(i).to_string(),
            hash: hash.value(i).to_string(),
        };
        links.push(Link::of(&record));
    }
    Ok(())
}
