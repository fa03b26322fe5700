//! The ingest rate quotas as one process keeps them: a request refused by one of the two
//! rates takes nothing from the other, and when both refuse, the reply names the one a retry
//! has to wait for.

use floe_catalog::TenantId;
use floe_catalog::config::QuotaConfig;
use floe_catalog::quota::{Quota, QuotaBook, RawBody};

use crate::common::open;

/// A tenant allowed `events_per_sec` events and 2,000 bytes per second, with one second of
/// burst, that has just sent 10 events of 2,000 bytes each: the request passed on full
/// buckets and left the bytes' bucket 18,000 in debt (10 s until it is full again).
async fn a_tenant_in_debt_of_bytes(
    dir: &std::path::Path,
    events_per_sec: u64,
) -> (QuotaBook, TenantId) {
    let catalog = open(dir).await;
    let tenant = TenantId::parse("metered").unwrap();
    catalog.create_tenant(&tenant, "test").await.unwrap();
    let defaults = QuotaConfig {
        ingest_events_per_sec: events_per_sec,
        ingest_bytes_per_sec: 2_000,
        burst_secs: 1,
        ..QuotaConfig::default()
    };
    let book = QuotaBook::new(catalog, defaults);
    book.admit_ingest(&tenant, 10, 20_000, body(20_000))
        .await
        .unwrap();
    (book, tenant)
}

fn body(len: u64) -> RawBody {
    RawBody { len, gzip: false }
}

#[tokio::test]
async fn a_request_the_bytes_rate_refuses_takes_no_events() {
    let dir = tempfile::tempdir().unwrap();
    let (book, tenant) = a_tenant_in_debt_of_bytes(dir.path(), 100).await;
    let refused = book
        .admit_ingest(&tenant, 10, 1_000, body(1_000))
        .await
        .unwrap_err();
    assert_eq!(
        refused.quota,
        Quota::IngestBytesPerSec,
        "{}",
        refused.message
    );
    let rate = refused
        .rate
        .expect("the events quota's state, for the headers");
    assert_eq!(
        rate.remaining, 90,
        "the refused request's 10 events went back"
    );
}

#[tokio::test]
async fn a_request_both_rates_refuse_waits_for_the_slower() {
    let dir = tempfile::tempdir().unwrap();
    // 10 events/s: the first request also left the events' bucket in debt, for 2 s.
    let (book, tenant) = a_tenant_in_debt_of_bytes(dir.path(), 10).await;

    // Before parsing: both buckets are empty. A retry after the events' 2 s would be refused
    // by the bytes' quota, so the reply names that one and its 10 s.
    let early = book
        .refuse_ingest_early(&tenant, body(1_000))
        .await
        .unwrap_err();
    assert_eq!(early.quota, Quota::IngestBytesPerSec, "{}", early.message);
    assert!(
        (8..=10).contains(&early.retry_after_secs),
        "{}",
        early.retry_after_secs
    );

    // After parsing, likewise.
    let counted = book
        .admit_ingest(&tenant, 1, 1_000, body(1_000))
        .await
        .unwrap_err();
    assert_eq!(
        counted.quota,
        Quota::IngestBytesPerSec,
        "{}",
        counted.message
    );
    assert!(
        (8..=10).contains(&counted.retry_after_secs),
        "{}",
        counted.retry_after_secs
    );
}
