//! `?wait=visible` in Kafka mode: waiters of one tenant share one poll of its table.

use std::collections::BTreeMap;
use std::time::Duration;

use floe_catalog::table::{EVENTS_TABLE, KafkaBatch, KafkaCommit, KafkaRange};
use floe_catalog::{Catalog, Config, TenantId};
use floe_ingest::Error;
use floe_ingest::produce::Visibility;

const TOPIC: &str = "tenant-acme.events";

async fn open(dir: &std::path::Path) -> Catalog {
    let config = Config::load(None, vec![], &[("data_dir", dir.display().to_string())]).unwrap();
    Catalog::open(&config).await.unwrap()
}

async fn commit(catalog: &Catalog, tenant: &TenantId, parts: &[(i32, Option<i64>, i64)]) -> i64 {
    let batch = KafkaBatch {
        group: "g".into(),
        topic: TOPIC.into(),
        partitions: parts
            .iter()
            .map(|&(p, expected, next)| (p, KafkaRange { expected, next }))
            .collect(),
    };
    match catalog
        .commit_append_kafka(tenant, EVENTS_TABLE, vec![], &batch)
        .await
        .unwrap()
    {
        KafkaCommit::Committed { snapshot_id, .. } => snapshot_id,
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_share_one_poll_and_see_the_commit_that_covers_them() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = open(dir.path()).await;
    let tenant = TenantId::parse("acme").unwrap();
    catalog.create_tenant(&tenant, "test").await.unwrap();
    let visibility = std::sync::Arc::new(Visibility::new("g", Duration::from_millis(20)));

    // Fifty requests wait on records up to offset 9 of partition 0 and 4 of partition 1.
    let waits: Vec<_> = (0..50)
        .map(|_| {
            let (v, c, t) = (visibility.clone(), catalog.clone(), tenant.clone());
            tokio::spawn(async move {
                let want = BTreeMap::from([(0, 9), (1, 4)]);
                v.wait(&c, &t, TOPIC, &want, Duration::from_secs(20)).await
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(visibility.polls(), 1, "one poll for the topic");
    assert!(
        waits.iter().all(|w| !w.is_finished()),
        "nothing committed yet"
    );

    // A commit that covers partition 0 only: still waiting.
    commit(&catalog, &tenant, &[(0, None, 10)]).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        waits.iter().all(|w| !w.is_finished()),
        "partition 1 not yet in"
    );

    let snapshot = commit(&catalog, &tenant, &[(1, None, 5)]).await;
    for w in waits {
        assert_eq!(w.await.unwrap().unwrap(), Some(snapshot));
    }
    // The poll ends with its last waiter.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while visibility.polls() > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the poll outlived its waiters"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // A later wait starts a new poll, and one for records not committed times out.
    let want = BTreeMap::from([(0, 10)]);
    let late = visibility
        .wait(&catalog, &tenant, TOPIC, &want, Duration::from_millis(300))
        .await;
    assert!(matches!(late, Err(Error::Timeout { .. })), "{late:?}");
}

#[tokio::test]
async fn a_table_that_cannot_be_read_times_out_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = open(dir.path()).await;
    let tenant = TenantId::parse("ghost").unwrap();
    let visibility = Visibility::new("g", Duration::from_millis(20));
    let want = BTreeMap::from([(0, 0)]);
    let err = visibility
        .wait(&catalog, &tenant, TOPIC, &want, Duration::from_millis(300))
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, Error::Timeout { .. }), "{err:?}");
    assert!(text.contains("last read of the table failed"), "{text}");
}
