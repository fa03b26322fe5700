//! The event type registry of a tenant, against the SQLite catalog: versions follow one
//! another, each keeps the type's compatibility mode with the one before (or is refused with
//! the reasons), a version never changes, and tenants do not see each other's types.

use floe_catalog::schema::Compatibility;
use floe_catalog::{ErrorKind, TenantId};
use serde_json::json;

use crate::common::open;

#[tokio::test]
async fn a_type_gets_versions_that_keep_its_compatibility_mode() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = open(dir.path()).await;
    let acme = TenantId::parse("acme").unwrap();
    let other = TenantId::parse("other").unwrap();
    catalog.create_tenant(&acme, "test").await.unwrap();
    catalog.create_tenant(&other, "test").await.unwrap();
    let v1 = json!({
        "type": "object",
        "properties": {"amount": {"type": "number"}, "currency": {"type": "string"}},
        "required": ["amount"]
    });
    let first = catalog
        .register_schema(&acme, "PurchaseMade", 1, v1.clone(), None, "test")
        .await
        .unwrap();
    assert!(first.created);
    assert_eq!(first.compatibility, Compatibility::Backward);

    // The same again changes nothing; another schema as version 1 is refused.
    let again = catalog
        .register_schema(&acme, "PurchaseMade", 1, v1.clone(), None, "test")
        .await
        .unwrap();
    assert!(!again.created);
    let mut other_v1 = v1.clone();
    other_v1["required"] = json!(["amount", "currency"]);
    let e = catalog
        .register_schema(&acme, "PurchaseMade", 1, other_v1, None, "test")
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::AlreadyExists, "{e}");

    // Versions are consecutive.
    let e = catalog
        .register_schema(&acme, "PurchaseMade", 3, v1.clone(), None, "test")
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("the next version of PurchaseMade is 2"),
        "{e}"
    );

    // A new required field breaks backward: refused with where and why.
    let mut v2 = v1.clone();
    v2["properties"]["country"] = json!({"type": "string"});
    v2["required"] = json!(["amount", "country"]);
    let e = catalog
        .register_schema(&acme, "PurchaseMade", 2, v2.clone(), None, "test")
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    let message = e.to_string();
    assert!(
        message.contains("not backward compatible with version 1"),
        "{message}"
    );
    assert!(
        message.contains("/required: \"country\" became required"),
        "{message}"
    );
    assert!(message.contains("/properties/country/type"), "{message}");
    let (mode, reasons) = catalog
        .check_next_schema(&acme, "PurchaseMade", &v2, None)
        .await
        .unwrap();
    assert_eq!(mode, Compatibility::Backward);
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    // ... and accepted under forward, which becomes the type's mode.
    let forward = catalog
        .register_schema(
            &acme,
            "PurchaseMade",
            2,
            v2.clone(),
            Some(Compatibility::Forward),
            "test",
        )
        .await
        .unwrap();
    assert!(forward.created);
    assert_eq!(
        catalog.compatibility(&acme, "PurchaseMade").await.unwrap(),
        Compatibility::Forward
    );

    // What is not a JSON Schema is refused before anything else.
    let e = catalog
        .register_schema(&acme, "PageViewed", 1, json!({"type": 12}), None, "test")
        .await
        .unwrap_err();
    assert!(e.to_string().contains("not a valid JSON Schema"), "{e}");

    // Listing, reading back, and tenants apart.
    let all = catalog.schemas(&acme, None).await.unwrap();
    let versions: Vec<(String, i32)> = all
        .iter()
        .map(|s| (s.type_name.clone(), s.version))
        .collect();
    assert_eq!(
        versions,
        [
            ("PurchaseMade".to_string(), 1),
            ("PurchaseMade".to_string(), 2)
        ]
    );
    assert_eq!(
        catalog
            .schema(&acme, "PurchaseMade", 2)
            .await
            .unwrap()
            .schema,
        v2
    );
    assert!(catalog.schemas(&other, None).await.unwrap().is_empty());
    let e = catalog.schema(&other, "PurchaseMade", 1).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn registrations_of_one_version_racing_each_other_all_get_an_answer() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = open(dir.path()).await;
    let acme = TenantId::parse("acme").unwrap();
    catalog.create_tenant(&acme, "test").await.unwrap();
    let v1 = json!({"type": "object", "properties": {"amount": {"type": "number"}}});
    let racers: Vec<_> = (0..8)
        .map(|_| {
            let (catalog, acme, v1) = (catalog.clone(), acme.clone(), v1.clone());
            tokio::spawn(async move {
                catalog
                    .register_schema(&acme, "PurchaseMade", 1, v1, None, "test")
                    .await
            })
        })
        .collect();
    let mut created = 0;
    for r in racers {
        let registered = r.await.unwrap().unwrap();
        created += usize::from(registered.created);
    }
    assert_eq!(created, 1);
}
