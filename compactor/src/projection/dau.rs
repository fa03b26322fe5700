//! `daily_active_users`: for each day with events, its distinct users and those of the
//! trailing 7 and 28 days (the day and the 6 or 27 before it). One row per day, the whole table
//! in one file (a few hundred rows a year).

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use datafusion::arrow::array::{Array, AsArray, Date32Array, Int64Array, RecordBatch};
use datafusion::arrow::datatypes::{Date32Type, Int64Type};
use floe_catalog::storage::DataStore;
use futures::StreamExt;
use iceberg::arrow::schema_to_arrow_schema;
use iceberg::spec::{DataFile, DataFileFormat};
use iceberg::table::Table;
use iceberg::writer::base_writer::data_file_writer::DataFileWriterBuilder;
use iceberg::writer::file_writer::ParquetWriterBuilder;
use iceberg::writer::file_writer::location_generator::{
    DefaultFileNameGenerator, DefaultLocationGenerator,
};
use iceberg::writer::file_writer::rolling_writer::RollingFileWriterBuilder;
use iceberg::writer::{IcebergWriter, IcebergWriterBuilder};
use object_store::path::Path;
use parquet::arrow::ParquetRecordBatchStreamBuilder;
use parquet::arrow::async_reader::ParquetObjectReader;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

use super::users::Day;
use crate::{Error, Result, ice};

/// The trailing windows, in days (the day itself included).
pub const WINDOWS: [i32; 2] = [7, 28];
/// How far back a row looks, and so how far forward a changed day reaches.
pub const REACH: i32 = WINDOWS[1] - 1;

/// One row: users that day, over 7 days, over 28 days.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Row {
    pub users: i64,
    pub users_7d: i64,
    pub users_28d: i64,
}

/// The row of `day`, from the days `day - 27 ..= day` (missing days have no users).
pub fn row(days: &BTreeMap<i32, Day>, day: i32) -> Row {
    let mut seen: HashSet<u128> = HashSet::new();
    let mut out = Row {
        users: 0,
        users_7d: 0,
        users_28d: 0,
    };
    // From the day backwards: each window is what has been seen when its first day is passed.
    for back in 0..WINDOWS[1] {
        if let Some(d) = days.get(&(day - back)) {
            seen.extend(d.users.iter().copied());
        }
        match back + 1 {
            1 => out.users = seen.len() as i64,
            n if n == WINDOWS[0] => out.users_7d = seen.len() as i64,
            n if n == WINDOWS[1] => out.users_28d = seen.len() as i64,
            _ => {}
        }
    }
    out
}

/// The rows of the table's live files.
pub async fn read_rows(table: &Table, store: &DataStore) -> Result<BTreeMap<i32, Row>> {
    let mut rows = BTreeMap::new();
    for entry in floe_catalog::rewrite::live_entries(table).await? {
        let location = entry.file_path();
        let failed = |e: &dyn std::fmt::Display| Error::Storage {
            action: "reading",
            object: location.to_string(),
            message: e.to_string(),
        };
        let key = store.key(location).ok_or_else(|| {
            Error::Invalid(format!(
                "{location} is outside the warehouse ({})",
                store.url
            ))
        })?;
        let reader = ParquetObjectReader::new(store.object_store(), Path::from(key))
            .with_file_size(entry.data_file().file_size_in_bytes());
        let mut stream = ParquetRecordBatchStreamBuilder::new(reader)
            .await
            .map_err(|e| failed(&e))?
            .build()
            .map_err(|e| failed(&e))?;
        while let Some(batch) = stream.next().await {
            let batch = batch.map_err(|e| failed(&e))?;
            let column = |name: &str| {
                batch
                    .column_by_name(name)
                    .ok_or_else(|| failed(&format!("no column {name}")))
            };
            let day = column("day")?
                .as_primitive_opt::<Date32Type>()
                .ok_or_else(|| failed(&"day is not a date"))?
                .clone();
            let long = |name: &str| -> Result<Int64Array> {
                Ok(column(name)?
                    .as_primitive_opt::<Int64Type>()
                    .ok_or_else(|| failed(&format!("{name} is not a bigint")))?
                    .clone())
            };
            let (users, d7, d28) = (long("users")?, long("users_7d")?, long("users_28d")?);
            for i in 0..batch.num_rows() {
                if day.is_null(i) {
                    continue;
                }
                rows.insert(
                    day.value(i),
                    Row {
                        users: users.value(i),
                        users_7d: d7.value(i),
                        users_28d: d28.value(i),
                    },
                );
            }
        }
    }
    Ok(rows)
}

/// Writes `rows` as one file of the table (none when there are no rows).
pub async fn write_rows(table: &Table, rows: &BTreeMap<i32, Row>) -> Result<Vec<DataFile>> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let metadata = table.metadata();
    let schema = metadata.current_schema().clone();
    let arrow_schema = Arc::new(schema_to_arrow_schema(&schema).map_err(ice("arrow schema"))?);
    let long = |f: fn(&Row) -> i64| Arc::new(Int64Array::from_iter_values(rows.values().map(f)));
    let batch = RecordBatch::try_new(
        arrow_schema,
        vec![
            Arc::new(Date32Array::from_iter_values(rows.keys().copied())),
            long(|r| r.users),
            long(|r| r.users_7d),
            long(|r| r.users_28d),
        ],
    )
    .map_err(|e| Error::Invalid(format!("daily_active_users rows: {e}")))?;
    let level = ZstdLevel::try_new(3).map_err(|e| Error::Invalid(format!("zstd: {e}")))?;
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(level))
        .build();
    let location = DefaultLocationGenerator::new(metadata).map_err(ice("location"))?;
    let names = DefaultFileNameGenerator::new(
        format!("{}", uuid::Uuid::now_v7()),
        Some("refresh".to_string()),
        DataFileFormat::Parquet,
    );
    let rolling = RollingFileWriterBuilder::new(
        ParquetWriterBuilder::new(props, schema),
        usize::MAX,
        table.file_io().clone(),
        location,
        names,
    );
    let mut writer = DataFileWriterBuilder::new(rolling)
        .build(None)
        .await
        .map_err(ice("data writer"))?;
    writer.write(batch).await.map_err(ice("writing parquet"))?;
    writer.close().await.map_err(ice("closing parquet"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::projection::users::user_hash;

    fn days(spec: &[(i32, &[&str])]) -> BTreeMap<i32, Day> {
        spec.iter()
            .map(|(d, users)| {
                let mut day = Day::default();
                day.events = users.len() as u64;
                day.users = users.iter().map(|u| user_hash(u)).collect();
                (*d, day)
            })
            .collect()
    }

    #[test]
    fn windows_count_each_user_once_over_the_day_and_the_days_before_it() {
        let d = days(&[
            (100, &["a", "b"]),
            (94, &["b", "c"]), // 7 days back from 100: inside the 7-day window
            (93, &["d"]),      // 8 days back: only in the 28-day window
            (73, &["e"]),      // 28 days back: inside
            (72, &["f"]),      // 29 days back: outside
            (101, &["z"]),     // after: never counted for 100
        ]);
        assert_eq!(
            row(&d, 100),
            Row {
                users: 2,
                users_7d: 3,
                users_28d: 5
            }
        );
        // A day without events of its own still has its windows.
        assert_eq!(
            row(&d, 95),
            Row {
                users: 0,
                users_7d: 3,
                users_28d: 5
            }
        );
    }
}
