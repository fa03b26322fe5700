//! Checking that no object under a tenant's prefix still holds erased users, by reading what
//! can hold user data, in the fields the erasure compares:
//! - Parquet data files: their `user_id` and `payload` columns (dead letters: the record);
//! - manifests: the column bounds of those columns (a bound is a value of some row);
//! - Puffin statistics files: only blob kinds known to hold no values (theta sketches,
//!   deletion vectors) pass; any other kind counts as holding;
//! - manifest lists and metadata files hold partition values (days), counts and positions,
//!   never a field value, and are not searched: an id such as `"1"` found in a snapshot
//!   summary is not user data;
//! - any other object is reported as unverifiable (the erasure stays pending, naming it).

use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use iceberg::spec::{Manifest, PrimitiveLiteral};
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt};
use parquet::arrow::async_reader::ParquetObjectReader;
use parquet::arrow::{ParquetRecordBatchStreamBuilder, ProjectionMask};

use super::filter::{DEAD_LETTER_MARK, PAYLOAD, RowFilter, USER_ID};
use crate::{Error, Result};

/// Objects read at once while verifying.
const VERIFY_CONCURRENCY: usize = 4;

/// Blob kinds of Puffin files that hold no column values.
const VALUE_FREE_BLOBS: &[&str] = &["apache-datasketches-theta-v1", "deletion-vector-v1"];

/// What one object holds of the users.
#[derive(Debug, Clone, PartialEq)]
pub enum Holds {
    /// Rows (or bounds) per id index.
    Users(Vec<u64>),
    /// Could not be checked: why.
    Unverifiable(String),
}

/// What the prefix holds: per id index, the objects holding it; and the objects that could
/// not be checked.
#[derive(Debug, Clone, Default)]
pub struct Verified {
    pub holding: Vec<Vec<String>>,
    pub unverifiable: Vec<String>,
}

/// Reads every object under `prefix` (a key in `store`).
pub async fn objects_holding(
    store: Arc<dyn ObjectStore>,
    prefix: &str,
    filter: &RowFilter,
) -> Result<Verified> {
    let objects: Vec<ObjectMeta> = store
        .list(Some(&Path::from(format!(
            "{}/",
            prefix.trim_end_matches('/')
        ))))
        .try_collect()
        .await
        .map_err(|e| Error::Storage {
            action: "listing",
            object: prefix.to_string(),
            message: e.to_string(),
        })?;
    let found: Vec<(String, Holds)> = futures::stream::iter(objects.into_iter().map(|o| {
        let store = store.clone();
        async move {
            let key = o.location.to_string();
            let holds = holds_users(store, o, filter).await?;
            Ok::<_, Error>((key, holds))
        }
    }))
    .buffer_unordered(VERIFY_CONCURRENCY)
    .try_collect()
    .await?;
    let mut out = Verified {
        holding: vec![Vec::new(); filter.ids().len()],
        unverifiable: Vec::new(),
    };
    for (key, holds) in found {
        match holds {
            Holds::Users(counts) => {
                for (i, n) in counts.into_iter().enumerate() {
                    if n > 0 {
                        out.holding[i].push(key.clone());
                    }
                }
            }
            Holds::Unverifiable(why) => out.unverifiable.push(format!("{key}: {why}")),
        }
    }
    out.holding.iter_mut().for_each(|h| h.sort());
    out.unverifiable.sort();
    Ok(out)
}

async fn holds_users(
    store: Arc<dyn ObjectStore>,
    object: ObjectMeta,
    filter: &RowFilter,
) -> Result<Holds> {
    let key = object.location.to_string();
    let name = key.rsplit('/').next().unwrap_or_default().to_string();
    if name.ends_with(".parquet") {
        return Ok(Holds::Users(
            rows_per_user(store, object.location, Some(object.size), filter).await?,
        ));
    }
    if name.ends_with(".metadata.json") || (name.starts_with("snap-") && name.ends_with(".avro")) {
        return Ok(Holds::Users(Vec::new()));
    }
    let failed = |e: &dyn std::fmt::Display| Error::Storage {
        action: "verifying",
        object: key.clone(),
        message: e.to_string(),
    };
    let bytes = store
        .get(&object.location)
        .await
        .map_err(|e| failed(&e))?
        .bytes()
        .await
        .map_err(|e| failed(&e))?;
    if name.ends_with(".avro") {
        let manifest = Manifest::parse_avro(&bytes).map_err(|e| failed(&e))?;
        return Ok(Holds::Users(bounds_per_user(&manifest, filter)));
    }
    if name.ends_with(".stats") || name.ends_with(".puffin") {
        return Ok(puffin_blob_kinds(&bytes).map_or_else(
            |why| Holds::Unverifiable(why.to_string()),
            |kinds| match kinds
                .iter()
                .find(|k| !VALUE_FREE_BLOBS.contains(&k.as_str()))
            {
                Some(k) => Holds::Unverifiable(format!("statistics blob of kind {k}")),
                None => Holds::Users(Vec::new()),
            },
        ));
    }
    Ok(Holds::Unverifiable(
        "not a kind of object Floe knows how to read".into(),
    ))
}

/// Rows per id index in one Parquet file, reading only the columns that can name a user.
pub async fn rows_per_user(
    store: Arc<dyn ObjectStore>,
    location: Path,
    size: Option<u64>,
    filter: &RowFilter,
) -> Result<Vec<u64>> {
    let failed = |e: &dyn std::fmt::Display| Error::Storage {
        action: "reading",
        object: location.to_string(),
        message: e.to_string(),
    };
    let mut reader = ParquetObjectReader::new(store, location.clone());
    if let Some(size) = size {
        reader = reader.with_file_size(size);
    }
    let builder = ParquetRecordBatchStreamBuilder::new(reader)
        .await
        .map_err(|e| failed(&e))?;
    let mask = ProjectionMask::columns(
        builder.metadata().file_metadata().schema_descr(),
        [USER_ID, PAYLOAD, DEAD_LETTER_MARK],
    );
    let mut stream = builder
        .with_projection(mask)
        .build()
        .map_err(|e| failed(&e))?;
    let mut counts = vec![0u64; filter.ids().len()];
    while let Some(batch) = stream.next().await {
        let batch = batch.map_err(|e| failed(&e))?;
        for i in filter.matches(&batch)?.into_iter().flatten() {
            counts[i] += 1;
        }
    }
    Ok(counts)
}

/// Bounds per id index in a manifest: bounds of `user_id` equal to an id, and bounds of
/// `payload` that read as a payload (or a dead letter's event) naming one.
fn bounds_per_user(manifest: &Manifest, filter: &RowFilter) -> Vec<u64> {
    let schema = manifest.metadata().schema();
    let field = |name: &str| schema.field_by_name(name).map(|f| f.id);
    let (user_id, payload) = (field(USER_ID), field(PAYLOAD));
    let dead_letters = field(DEAD_LETTER_MARK).is_some();
    let mut counts = vec![0u64; filter.ids().len()];
    for entry in manifest.entries() {
        let f = entry.data_file();
        for (id, datum) in f.lower_bounds().iter().chain(f.upper_bounds().iter()) {
            let PrimitiveLiteral::String(s) = datum.literal() else {
                continue;
            };
            let hit = if Some(*id) == user_id {
                filter.event_row(Some(s), None)
            } else if Some(*id) == payload && dead_letters {
                filter.dead_letter_row(s)
            } else if Some(*id) == payload {
                filter.event_row(None, Some(s))
            } else {
                None
            };
            if let Some(i) = hit {
                counts[i] += 1;
            }
        }
    }
    counts
}

/// The blob kinds of a Puffin file (its footer: `PFA1`, JSON, length, flags, `PFA1`).
fn puffin_blob_kinds(bytes: &[u8]) -> std::result::Result<Vec<String>, &'static str> {
    const MAGIC: &[u8] = b"PFA1";
    let n = bytes.len();
    if n < 16 || &bytes[n - 4..] != MAGIC {
        return Err("not a Puffin file");
    }
    let flags = &bytes[n - 8..n - 4];
    if flags[0] & 1 != 0 {
        return Err("compressed Puffin footer");
    }
    let mut len = [0u8; 4];
    len.copy_from_slice(&bytes[n - 12..n - 8]);
    let len = u32::from_le_bytes(len) as usize;
    let start = n
        .checked_sub(12 + len)
        .filter(|s| *s >= 4 && &bytes[s - 4..*s] == MAGIC)
        .ok_or("bad Puffin footer")?;
    let footer: serde_json::Value =
        serde_json::from_slice(&bytes[start..start + len]).map_err(|_| "bad Puffin footer")?;
    Ok(footer
        .get("blobs")
        .and_then(|b| b.as_array())
        .map(|blobs| {
            blobs
                .iter()
                .map(|b| b.get("type").and_then(|t| t.as_str()).unwrap_or("?").into())
                .collect()
        })
        .unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn puffin(footer: &str) -> Vec<u8> {
        let mut out = b"PFA1".to_vec();
        out.extend_from_slice(b"PFA1");
        out.extend_from_slice(footer.as_bytes());
        out.extend_from_slice(&(footer.len() as u32).to_le_bytes());
        out.extend_from_slice(&[0, 0, 0, 0]);
        out.extend_from_slice(b"PFA1");
        out
    }

    #[test]
    fn puffin_footers_name_their_blob_kinds() {
        let f = puffin(r#"{"blobs":[{"type":"apache-datasketches-theta-v1"}]}"#);
        assert_eq!(
            puffin_blob_kinds(&f).unwrap(),
            vec!["apache-datasketches-theta-v1"]
        );
        assert!(puffin_blob_kinds(b"PFA1 not a footer PFA1").is_err());
    }
}
