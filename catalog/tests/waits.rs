//! A request that has a last-known answer (a token list, a key, a tenant, schemas) does not
//! wait long for the catalog: `Catalog::read_or_go_on` gives up after `http.catalog_wait_ms`
//! and lets the read finish in the background, where it keeps its answer for later requests.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use floe_catalog::{Catalog, Config};

#[tokio::test]
async fn a_read_slower_than_the_wait_finishes_in_the_background() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config::load(
        None,
        vec![],
        &[
            ("data_dir", dir.path().display().to_string()),
            ("http.catalog_wait_ms", "200".to_string()),
        ],
    )
    .unwrap();
    let catalog = Catalog::open(&config).await.unwrap();

    // A read that answers within the wait is waited for.
    let tenants = catalog.clone();
    let answer = catalog
        .read_or_go_on(async move { tenants.list_tenants().await.map(|t| t.len()) })
        .await;
    assert!(matches!(answer, Some(Ok(0))), "{answer:?}");

    // One that takes longer is not: the caller goes on after the wait, and the read still
    // finishes (what it keeps is there afterwards).
    let kept = Arc::new(AtomicBool::new(false));
    let keeps = kept.clone();
    let began = Instant::now();
    let answer = catalog
        .read_or_go_on(async move {
            tokio::time::sleep(Duration::from_secs(2)).await;
            keeps.store(true, Ordering::SeqCst);
        })
        .await;
    assert!(answer.is_none());
    assert!(
        began.elapsed() < Duration::from_millis(1500),
        "waited {:?} for a read of 2 s with a wait of 200 ms",
        began.elapsed()
    );
    assert!(!kept.load(Ordering::SeqCst));
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(
        kept.load(Ordering::SeqCst),
        "the read finished in the background"
    );

    // Nothing is down while the catalog answers its probe.
    assert!(catalog.unavailable(Duration::from_secs(3)).await.is_empty());
    assert!(!catalog.is_down("catalog"));
}
