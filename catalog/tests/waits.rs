//! A request that has a last-known answer (a token list, a key, a tenant, schemas) does not
//! wait long for the catalog: `Catalog::read_or_go_on` gives up after `http.catalog_wait_ms`
//! and lets the read finish in the background, where it keeps its answer for later requests
//! (`LastKnown`, which the authenticator and the event schemas read through).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use floe_catalog::last_known::LastKnown;
use floe_catalog::{Error, ErrorKind};

use crate::common::open_with as open;

#[tokio::test]
async fn a_read_slower_than_the_wait_finishes_in_the_background() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = open(dir.path(), &[("http.catalog_wait_ms", "200")]).await;

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
    assert!(catalog.unavailable().await.is_empty());
    assert!(!catalog.is_down("catalog"));
}

#[tokio::test]
async fn a_read_left_to_the_background_is_given_up_after_its_limit() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = open(
        dir.path(),
        &[
            ("http.catalog_wait_ms", "100"),
            ("catalog_db.background_read_limit_ms", "300"),
        ],
    )
    .await;
    let kept = Arc::new(AtomicBool::new(false));
    let keeps = kept.clone();
    let answer = catalog
        .read_or_go_on(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            keeps.store(true, Ordering::SeqCst);
        })
        .await;
    assert!(answer.is_none());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        !kept.load(Ordering::SeqCst),
        "a read of 1 s ran past a limit of 300 ms"
    );
}

/// A read's future, as the tests' readers make them.
type Read =
    std::pin::Pin<Box<dyn std::future::Future<Output = floe_catalog::Result<Option<u32>>> + Send>>;

/// A read for a [`LastKnown`] that counts itself, takes `delay` and answers `answer`.
fn reader(
    reads: &Arc<AtomicU32>,
    delay: Duration,
    answer: floe_catalog::Result<Option<u32>>,
) -> impl FnOnce() -> Read + use<> {
    let reads = reads.clone();
    move || {
        Box::pin(async move {
            reads.fetch_add(1, Ordering::SeqCst);
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            answer
        })
    }
}

fn down() -> Error {
    Error::Unavailable {
        what: "the catalog database".into(),
        why: "no connection".into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_last_known_value_is_read_by_one_caller_at_a_time_and_gone_on_with_meanwhile() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = open(dir.path(), &[("http.catalog_wait_ms", "200")]).await;
    let known = LastKnown::<u32>::new("counter", Duration::from_secs(60));
    let reads = Arc::new(AtomicU32::new(0));
    let (hour, now) = (Duration::from_secs(3600), Duration::ZERO);
    let quick = Duration::from_millis(10);

    // Never read: ten callers at once wait for one read, and all get its value.
    let callers: Vec<_> = (0..10)
        .map(|_| {
            let (known, catalog) = (known.clone(), catalog.clone());
            let read = reader(&reads, Duration::from_millis(300), Ok(Some(1)));
            tokio::spawn(async move { known.get(&catalog, "k", hour, read).await })
        })
        .collect();
    for caller in callers {
        assert_eq!(caller.await.unwrap().unwrap(), Some(1));
    }
    assert_eq!(reads.load(Ordering::SeqCst), 1, "one read for ten callers");

    // Read less than `max_age` ago: not read again.
    let got = known.get(&catalog, "k", hour, reader(&reads, quick, Ok(Some(9))));
    assert_eq!(got.await.unwrap(), Some(1));
    assert_eq!(reads.load(Ordering::SeqCst), 1);

    // Older: a read slower than the wait. Its caller goes on with the last value after the
    // wait, callers meanwhile go on at once without reading, and the read keeps its value.
    let began = Instant::now();
    let slow = Duration::from_secs(3);
    let got = known.get(&catalog, "k", now, reader(&reads, slow, Ok(Some(2))));
    assert_eq!(got.await.unwrap(), Some(1));
    assert!(
        began.elapsed() < Duration::from_secs(2),
        "{:?}",
        began.elapsed()
    );
    let got = known.get(&catalog, "k", now, reader(&reads, quick, Ok(Some(7))));
    assert_eq!(got.await.unwrap(), Some(1));
    assert_eq!(reads.load(Ordering::SeqCst), 2, "one read at a time");
    eventually(|| known.last("k") == Some(2), "the read kept its value").await;

    // A read the catalog does not answer, or answers with another error: the last value is
    // gone on with.
    let got = known.get(&catalog, "k", now, reader(&reads, quick, Err(down())));
    assert_eq!(got.await.unwrap(), Some(2));
    let broken = Err(Error::internal("corrupt row"));
    let got = known.get(&catalog, "k", now, reader(&reads, quick, broken));
    assert_eq!(got.await.unwrap(), Some(2));

    // The catalog says it does not exist: nothing is kept.
    let got = known.get(&catalog, "k", now, reader(&reads, quick, Ok(None)));
    assert_eq!(got.await.unwrap(), None);
    assert_eq!(known.last("k"), None);
}

#[tokio::test]
async fn a_first_read_that_failed_is_not_asked_again_for_a_while() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = open(dir.path(), &[]).await;
    let known = LastKnown::<u32>::new("counter", Duration::from_millis(300));
    let reads = Arc::new(AtomicU32::new(0));
    let quick = Duration::from_millis(10);
    let hour = Duration::from_secs(3600);

    let got = known.get(&catalog, "k", hour, reader(&reads, quick, Err(down())));
    assert_eq!(got.await.unwrap_err().kind(), ErrorKind::Unavailable);
    // Within `retry_failed`: the same failure, the catalog not asked.
    let e = known
        .get(&catalog, "k", hour, reader(&reads, quick, Ok(Some(1))))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unavailable);
    assert!(e.to_string().contains("counter k"), "{e}");
    assert_eq!(reads.load(Ordering::SeqCst), 1);
    // After it: asked again.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let got = known.get(&catalog, "k", hour, reader(&reads, quick, Ok(Some(1))));
    assert_eq!(got.await.unwrap(), Some(1));
    assert_eq!(reads.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_waiting_for_a_first_read_take_its_answer_that_nothing_exists() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = open(dir.path(), &[]).await;
    let known = LastKnown::<u32>::new("counter", Duration::from_secs(60));
    let reads = Arc::new(AtomicU32::new(0));
    let callers: Vec<_> = (0..10)
        .map(|_| {
            let (known, catalog) = (known.clone(), catalog.clone());
            // Long enough for the ten to start asking on a loaded machine.
            let read = reader(&reads, Duration::from_secs(2), Ok(None));
            let hour = Duration::from_secs(3600);
            tokio::spawn(async move { known.get(&catalog, "k", hour, read).await })
        })
        .collect();
    for caller in callers {
        assert_eq!(caller.await.unwrap().unwrap(), None);
    }
    assert_eq!(reads.load(Ordering::SeqCst), 1, "one read for ten callers");
    // A caller after that answer asks again.
    let got = known.get(
        &catalog,
        "k",
        Duration::ZERO,
        reader(&reads, Duration::ZERO, Ok(Some(3))),
    );
    assert_eq!(got.await.unwrap(), Some(3));
    assert_eq!(reads.load(Ordering::SeqCst), 2);

    // Those waiting for a first read take its error, whatever its kind.
    let broken = || Err(Error::internal("corrupt row"));
    let callers: Vec<_> = (0..3)
        .map(|_| {
            let (known, catalog) = (known.clone(), catalog.clone());
            let read = reader(&reads, Duration::from_secs(2), broken());
            tokio::spawn(async move { known.get(&catalog, "i", Duration::ZERO, read).await })
        })
        .collect();
    for caller in callers {
        assert_eq!(
            caller.await.unwrap().unwrap_err().kind(),
            ErrorKind::Internal
        );
    }
    assert_eq!(
        reads.load(Ordering::SeqCst),
        3,
        "one read for three callers"
    );
    // An error a retry will not cure is not remembered for later callers: the next one asks.
    let broken = Err(Error::internal("corrupt row"));
    let got = known.get(
        &catalog,
        "j",
        Duration::ZERO,
        reader(&reads, Duration::ZERO, broken),
    );
    assert_eq!(got.await.unwrap_err().kind(), ErrorKind::Internal);
    let got = known.get(
        &catalog,
        "j",
        Duration::ZERO,
        reader(&reads, Duration::ZERO, Ok(Some(4))),
    );
    assert_eq!(got.await.unwrap(), Some(4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_whose_caller_went_away_still_finishes_and_no_other_starts_meanwhile() {
    let dir = tempfile::tempdir().unwrap();
    // The read is waited for on the caller's task (a wait longer than the read)...
    let catalog = open(dir.path(), &[("http.catalog_wait_ms", "5000")]).await;
    let known = LastKnown::<u32>::new("counter", Duration::from_secs(60));
    let reads = Arc::new(AtomicU32::new(0));
    let (now, quick) = (Duration::ZERO, Duration::from_millis(10));
    let got = known.get(&catalog, "k", now, reader(&reads, quick, Ok(Some(1))));
    assert_eq!(got.await.unwrap(), Some(1));

    // ... and that caller is dropped during it (a client that hung up).
    let (go, finish) = (Arc::new(tokio::sync::Notify::new()), reads.clone());
    let until_told = {
        let go = go.clone();
        move || {
            Box::pin(async move {
                finish.fetch_add(1, Ordering::SeqCst);
                go.notified().await;
                Ok(Some(2u32))
            }) as Read
        }
    };
    let gone = tokio::time::timeout(
        Duration::from_millis(100),
        known.get(&catalog, "k", now, until_told),
    );
    assert!(gone.await.is_err());
    let got = known.get(&catalog, "k", now, reader(&reads, quick, Ok(Some(7))));
    assert_eq!(
        got.await.unwrap(),
        Some(1),
        "the last value while the read is under way"
    );
    assert_eq!(
        reads.load(Ordering::SeqCst),
        2,
        "no second read while the first runs"
    );
    go.notify_one();
    eventually(
        || known.last("k") == Some(2),
        "the read went on without its caller",
    )
    .await;
}

/// Waits up to 10 s for `done`.
async fn eventually(done: impl Fn() -> bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within 10 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn made_up_keys_do_not_pile_up() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = open(dir.path(), &[]).await;
    let known = LastKnown::<u32>::new("API key", Duration::from_millis(100));
    let reads = Arc::new(AtomicU32::new(0));
    let hour = Duration::from_secs(3600);
    for i in 0..1_000 {
        let key = format!("made-up-{i}");
        // Keys that do not exist, and callers that go away before their read is done.
        let got = known.get(
            &catalog,
            &key,
            hour,
            reader(&reads, Duration::ZERO, Ok(None)),
        );
        assert_eq!(got.await.unwrap(), None);
        let slow = reader(&reads, Duration::from_secs(3600), Ok(None));
        let gone = tokio::time::timeout(Duration::ZERO, known.get(&catalog, &key, hour, slow));
        assert!(gone.await.is_err());
    }
    assert!(
        known.slots() <= 256,
        "{} slots for keys that do not exist",
        known.slots()
    );
}
