//! Purging a tenant deletes every object under its prefix, also those a writer still at work
//! (a refresh or a rewrite that has not heard of the deletion) adds while the purge runs.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::common::{events_of, file, open};

#[tokio::test]
async fn a_purge_removes_what_a_writer_adds_while_it_runs() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = open(dir.path()).await;
    let (tenant, _, location) = events_of(&catalog, "busy").await;
    for i in 0..200 {
        file(&location, &format!("old-{i}"), 20_000, 1);
    }

    // A writer adds 400 files to the tenant's folder, one every hundred microseconds or so; the
    // purge starts once it is under way.
    let started = Arc::new(AtomicBool::new(false));
    let writer = {
        let started = started.clone();
        let folder = format!(
            "{}/data/day=20000",
            location.strip_prefix("file://").unwrap()
        );
        std::thread::spawn(move || {
            for n in 0..400 {
                // The purge may take the folder away between the two calls: the file is then
                // not written, as a real writer's would fail.
                let _ = std::fs::create_dir_all(&folder);
                let _ = std::fs::write(format!("{folder}/new-{n}.parquet"), b"");
                started.store(true, Ordering::Relaxed);
                std::thread::sleep(std::time::Duration::from_micros(100));
            }
        })
    };
    while !started.load(Ordering::Relaxed) {
        tokio::task::yield_now().await;
    }
    let purged = catalog.delete_tenant(&tenant, true, "test").await;
    writer.join().unwrap();
    let purged = purged.unwrap();
    assert!(purged.objects_deleted > 200, "{purged:?}");

    // What the writer added after the purge (a real one deletes its own files when its commit
    // finds the table gone) goes with the purge run again.
    catalog.delete_tenant(&tenant, true, "test").await.unwrap();
    let folder = location.strip_prefix("file://").unwrap();
    let tenant_folder = std::path::Path::new(folder).parent().unwrap();
    assert!(!tenant_folder.exists(), "{tenant_folder:?}");
}
