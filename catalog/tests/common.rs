//! What the catalog's tests share: a catalog on the embedded defaults, and data files to
//! commit.

use floe_catalog::{Catalog, Config};
use iceberg::spec::{DataContentType, DataFile, DataFileBuilder, DataFileFormat, Literal, Struct};

/// The catalog of a data folder on the embedded defaults (a second call opens a second
/// catalog on the same folder, as a second process would).
pub async fn open(dir: &std::path::Path) -> Catalog {
    open_with(dir, &[]).await
}

/// [`open`], with these configuration keys set as well.
pub async fn open_with(dir: &std::path::Path, settings: &[(&str, &str)]) -> Catalog {
    let mut overrides = vec![("data_dir", dir.display().to_string())];
    overrides.extend(settings.iter().map(|(k, v)| (*k, v.to_string())));
    Catalog::open(&Config::load(None, vec![], &overrides).unwrap())
        .await
        .unwrap()
}

/// A file of `rows` rows of `day` in the table at `location`: an empty file on disk (a commit
/// only syncs its folder; expiry deletes it).
pub fn file(location: &str, name: &str, day: i32, rows: u64) -> DataFile {
    let path = format!("{location}/data/day={day}/{name}.parquet");
    let local = path.strip_prefix("file://").unwrap();
    std::fs::create_dir_all(std::path::Path::new(local).parent().unwrap()).unwrap();
    std::fs::write(local, b"").unwrap();
    DataFileBuilder::default()
        .content(DataContentType::Data)
        .file_path(path)
        .file_format(DataFileFormat::Parquet)
        .partition(Struct::from_iter([Some(Literal::date(day))]))
        .record_count(rows)
        .file_size_in_bytes(100)
        .build()
        .unwrap()
}

/// A new tenant `name` of `catalog`, its key, and the location of its `events` table.
pub async fn events_of(
    catalog: &Catalog,
    name: &str,
) -> (floe_catalog::TenantId, floe_catalog::TenantKey, String) {
    let tenant = floe_catalog::TenantId::parse(name).unwrap();
    let key = catalog
        .create_tenant(&tenant, "test")
        .await
        .unwrap()
        .key()
        .unwrap();
    let location = catalog
        .load_table(&tenant, floe_catalog::table::EVENTS_TABLE)
        .await
        .unwrap()
        .metadata()
        .location()
        .to_string();
    (tenant, key, location)
}

/// Appends `name`, a file of `rows` rows of `day`, to `events` in a commit of its own.
pub async fn append_file(
    catalog: &Catalog,
    key: &floe_catalog::TenantKey,
    location: &str,
    name: &str,
    day: i32,
    rows: u64,
) {
    let f = file(location, name, day, rows);
    catalog
        .commit_append(key, floe_catalog::table::EVENTS_TABLE, vec![f], None)
        .await
        .unwrap();
}

/// Expires every snapshot of `tenant`'s `events` but the current one.
pub async fn expire_all_but_current(
    catalog: &Catalog,
    tenant: &floe_catalog::TenantId,
) -> floe_catalog::maintenance::ExpireReport {
    catalog
        .expire_snapshots(
            tenant,
            floe_catalog::table::EVENTS_TABLE,
            floe_catalog::maintenance::ExpirePolicy::keep_current_only(),
            false,
        )
        .await
        .unwrap()
}
