//! Payloads checked against their event type's registered schema at ingest (HTTP and Kafka).
//!
//! Each process keeps every tenant's schemas compiled ([`Schemas`]), read from the catalog
//! again at most every `ingest.schema_refresh_ms`: a version registered is enforced by every
//! process within that time. A version never changes once registered, so a compiled validator
//! is kept for as long as the process runs. If the catalog cannot be read, the schemas last
//! read stay in force.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use floe_catalog::last_known::LastKnown;
use floe_catalog::schema::UnknownTypes;
use floe_catalog::{Catalog, TenantId};

/// What [`Schemas`] keeps, as its errors name it.
const WHAT: &str = "the event schemas of tenant";
use serde_json::Value;

/// Why a payload was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// `schema_violation`, or `unknown_type` for a type or version without a schema.
    pub code: &'static str,
    pub message: String,
    /// The JSON pointer of the failing value in the payload.
    pub pointer: Option<String>,
    /// The schema keyword it fails (`required`, `type`, `minimum`, ...).
    pub rule: Option<String>,
    /// The tenant keeps such events aside in its dead-letter table rather than refuse them.
    pub dead_letter: bool,
}

/// One tenant's schemas, compiled, and what to do with types that have none.
#[derive(Default)]
pub struct TenantSchemas {
    types: HashMap<String, BTreeMap<i32, Arc<jsonschema::Validator>>>,
    unknown: UnknownTypes,
    /// The schemas could not be read (and never were): every event is refused, saying why.
    unreadable: Option<String>,
}

impl TenantSchemas {
    /// A tenant with no schemas that accepts every type (tests, tools).
    pub fn none() -> TenantSchemas {
        TenantSchemas::default()
    }

    /// A tenant with one schema, version 1 of `kind`, that accepts other types (tests).
    #[cfg(test)]
    pub(crate) fn one(kind: &str, schema: &Value) -> TenantSchemas {
        let Ok(validator) = jsonschema::draft202012::new(schema) else {
            panic!("a test schema that compiles");
        };
        TenantSchemas {
            types: HashMap::from([(kind.to_string(), BTreeMap::from([(1, Arc::new(validator))]))]),
            ..TenantSchemas::default()
        }
    }

    /// Checks the payload of an event of `kind`, version `version`.
    #[cfg(test)]
    pub fn check(&self, kind: &str, version: i32, payload: &Value) -> Result<(), Violation> {
        match self.validator(kind, version)? {
            Some(validator) => validate(validator, kind, version, payload),
            None => Ok(()),
        }
    }

    /// What an event of `kind`, version `version`, is checked against: `None` when the tenant
    /// takes that type without a schema (its payload need not be read), or the refusal when the
    /// tenant's schemas are unreadable or the type or version has none and is not accepted.
    pub fn validator(
        &self,
        kind: &str,
        version: i32,
    ) -> Result<Option<&jsonschema::Validator>, Violation> {
        if let Some(why) = &self.unreadable {
            return Err(Violation {
                code: "schemas_unavailable",
                message: format!("the tenant's event schemas could not be read: {why}"),
                pointer: None,
                rule: None,
                dead_letter: false,
            });
        }
        let validator = self.types.get(kind).and_then(|v| v.get(&version));
        let Some(validator) = validator else {
            if self.unknown == UnknownTypes::Accept {
                return Ok(None);
            }
            let message = match self.types.get(kind) {
                Some(versions) => format!(
                    "{kind} has no schema for version {version} (registered: {})",
                    versions
                        .keys()
                        .map(i32::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                None => format!("{kind} has no registered schema"),
            };
            let dead_letter = self.unknown == UnknownTypes::DeadLetter;
            let fate = if dead_letter {
                "this tenant dead-letters such events"
            } else {
                "this tenant rejects such events"
            };
            return Err(Violation {
                code: "unknown_type",
                message: format!("{message}; {fate}"),
                pointer: None,
                rule: None,
                dead_letter,
            });
        };
        Ok(Some(validator))
    }
}

/// Checks `payload` against `validator`, the schema of `kind` version `version`.
pub fn validate(
    validator: &jsonschema::Validator,
    kind: &str,
    version: i32,
    payload: &Value,
) -> Result<(), Violation> {
    let Err(e) = validator.validate(payload) else {
        return Ok(());
    };
    let at = e.instance_path().as_str();
    let rule = e.kind().keyword().to_string();
    let place = if at.is_empty() {
        String::new()
    } else {
        format!(" at {at}")
    };
    Err(Violation {
        code: "schema_violation",
        message: format!("payload{place} fails `{rule}` of {kind} version {version}: {e}"),
        pointer: Some(at.to_string()),
        rule: Some(rule),
        dead_letter: false,
    })
}

/// Every tenant's compiled schemas in this process, refreshed from the catalog.
pub struct Schemas {
    catalog: Catalog,
    refresh: Duration,
    /// The last read of each tenant: read again once `refresh` has passed, by one request at a
    /// time (a first read the catalog database did not answer: after `refresh` or
    /// `catalog_db.retry_failed_ms`, whichever is shorter), so a catalog outage costs an
    /// attempt per tenant per period, not one per request.
    /// `None`: the tenant does not exist (deleted since), kept like schemas, so that records
    /// of a deleted tenant's topic do not each ask the catalog.
    known: LastKnown<Option<Arc<TenantSchemas>>>,
    /// Validators by (tenant, type, version, registration time): a version never changes, but
    /// a tenant deleted and created again may register the same version anew.
    compiled: Arc<Mutex<HashMap<Registration, Arc<jsonschema::Validator>>>>,
}

/// A registered version: tenant, type, version and registration time.
type Registration = (String, String, i32, i64);

impl Schemas {
    pub fn new(catalog: Catalog, refresh: Duration) -> Schemas {
        Schemas {
            known: LastKnown::refreshed_every(WHAT, refresh, catalog.retry_failed()),
            catalog,
            refresh,
            compiled: Default::default(),
        }
    }

    /// The tenant's schemas as of at most `refresh` ago (or, while the catalog is slow or
    /// down, the last read: a read again waits at most `http.catalog_wait_ms`). If the catalog
    /// cannot be read, the schemas last read stay in force; if they never were, the error
    /// (an outage's, without asking again, for a short while). A tenant that does not exist
    /// (deleted since) is `NotFound`, an answer kept like schemas (read again after `refresh`).
    pub async fn of(&self, tenant: &TenantId) -> floe_catalog::Result<Arc<TenantSchemas>> {
        let (catalog, compiled, id) = (self.catalog.clone(), self.compiled.clone(), tenant.clone());
        // A tenant deleted: its schemas are gone with it.
        let read = || async move {
            match load(&catalog, &compiled, &id).await {
                Ok(schemas) => Ok(Some(Some(Arc::new(schemas)))),
                Err(e) if e.kind() == floe_catalog::ErrorKind::NotFound => Ok(Some(None)),
                Err(e) => Err(e),
            }
        };
        let read = self
            .known
            .get(&self.catalog, tenant.as_str(), self.refresh, read)
            .await?;
        read.flatten().ok_or_else(|| floe_catalog::Error::NotFound {
            what: format!("tenant {tenant}"),
        })
    }

    /// [`Schemas::of`], or, if the schemas were never read and cannot be now, schemas that
    /// refuse every event saying so (Kafka dead-letters them: nothing goes unchecked or is
    /// lost).
    pub async fn of_or_refuse(&self, tenant: &TenantId) -> Arc<TenantSchemas> {
        match self.of(tenant).await {
            Ok(s) => s,
            Err(e) => Arc::new(TenantSchemas {
                unreadable: Some(e.to_string()),
                ..TenantSchemas::default()
            }),
        }
    }
}

/// Reads and compiles a tenant's schemas (a version compiled before is taken from `compiled`).
async fn load(
    catalog: &Catalog,
    compiled: &Mutex<HashMap<Registration, Arc<jsonschema::Validator>>>,
    tenant: &TenantId,
) -> floe_catalog::Result<TenantSchemas> {
    let unknown = catalog.tenant(tenant).await?.unknown_types;
    let mut types: HashMap<String, BTreeMap<i32, Arc<jsonschema::Validator>>> = HashMap::new();
    for s in catalog.schemas(tenant, None).await? {
        let key = (
            tenant.to_string(),
            s.type_name.clone(),
            s.version,
            s.created_at_ms,
        );
        let known = lock(compiled).get(&key).cloned();
        let validator = match known {
            Some(v) => v,
            None => {
                let v = jsonschema::draft202012::new(&s.schema).map_err(|e| {
                    floe_catalog::Error::internal(format!(
                        "registered schema {} v{} does not compile: {e}",
                        s.type_name, s.version
                    ))
                })?;
                let v = Arc::new(v);
                lock(compiled).insert(key, v.clone());
                v
            }
        };
        types
            .entry(s.type_name)
            .or_default()
            .insert(s.version, validator);
    }
    Ok(TenantSchemas {
        types,
        unknown,
        unreadable: None,
    })
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn purchase() -> TenantSchemas {
        TenantSchemas::one(
            "PurchaseMade",
            &json!({
                "type": "object",
                "properties": {
                    "amount": {"type": "number", "minimum": 0},
                    "items": {"type": "array", "items": {"type": "object", "required": ["sku"]}}
                },
                "required": ["amount"]
            }),
        )
    }

    #[test]
    fn a_payload_that_fails_its_schema_is_refused_with_the_pointer_and_the_rule() {
        let s = purchase();
        assert!(s.check("PurchaseMade", 1, &json!({"amount": 3})).is_ok());
        let v = s
            .check("PurchaseMade", 1, &json!({"amount": -1}))
            .unwrap_err();
        assert_eq!(v.code, "schema_violation");
        assert_eq!(v.pointer.as_deref(), Some("/amount"));
        assert_eq!(v.rule.as_deref(), Some("minimum"));
        let v = s
            .check(
                "PurchaseMade",
                1,
                &json!({"amount": 1, "items": [{"sku": "a"}, {}]}),
            )
            .unwrap_err();
        assert_eq!(v.pointer.as_deref(), Some("/items/1"));
        assert_eq!(v.rule.as_deref(), Some("required"));
        let v = s.check("PurchaseMade", 1, &json!({})).unwrap_err();
        assert_eq!(
            (v.pointer.as_deref(), v.rule.as_deref()),
            (Some(""), Some("required"))
        );
    }

    #[test]
    fn types_and_versions_without_a_schema_follow_the_tenant_setting() {
        let mut s = purchase();
        assert!(s.check("PageViewed", 1, &json!({})).is_ok());
        assert!(s.check("PurchaseMade", 2, &json!({})).is_ok());
        s.unknown = UnknownTypes::Reject;
        let v = s.check("PageViewed", 1, &json!({})).unwrap_err();
        assert_eq!(v.code, "unknown_type");
        let v = s.check("PurchaseMade", 2, &json!({})).unwrap_err();
        assert!(
            v.message
                .contains("no schema for version 2 (registered: 1)"),
            "{}",
            v.message
        );
        assert!(!v.dead_letter);
        s.unknown = UnknownTypes::DeadLetter;
        let v = s.check("PageViewed", 1, &json!({})).unwrap_err();
        assert!(v.code == "unknown_type" && v.dead_letter, "{v:?}");
        // A payload that fails its schema is refused, whatever the setting for unknown types.
        let v = s.check("PurchaseMade", 1, &json!({})).unwrap_err();
        assert!(v.code == "schema_violation" && !v.dead_letter, "{v:?}");
    }

    async fn catalog() -> (Catalog, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let config = floe_catalog::Config::load(
            None,
            Vec::<(String, String)>::new(),
            &[("data_dir", dir.path().display().to_string())],
        )
        .unwrap();
        (Catalog::open(&config).await.unwrap(), dir)
    }

    #[tokio::test]
    async fn schemas_are_read_again_after_the_refresh_not_on_every_request() {
        let (catalog, _dir) = catalog().await;
        let acme = TenantId::parse("acme").unwrap();
        let refresh = Duration::from_secs(3);
        let schemas = Schemas::new(catalog.clone(), refresh);
        // The tenant does not exist yet: `NotFound`, an answer kept for the refresh.
        let e = schemas.of(&acme).await.err().unwrap();
        assert_eq!(e.kind(), floe_catalog::ErrorKind::NotFound, "{e}");
        catalog.create_tenant(&acme, "test").await.unwrap();
        let e = schemas.of(&acme).await.err().unwrap();
        assert_eq!(e.kind(), floe_catalog::ErrorKind::NotFound, "{e}");
        tokio::time::sleep(refresh).await;
        assert!(schemas.of(&acme).await.unwrap().types.is_empty());
        catalog
            .register_schema(&acme, "PurchaseMade", 1, json!({}), None, "test")
            .await
            .unwrap();
        // Read less than the refresh ago: the same schemas; after it, the new ones.
        assert!(schemas.of(&acme).await.unwrap().types.is_empty());
        tokio::time::sleep(refresh).await;
        assert!(
            schemas
                .of(&acme)
                .await
                .unwrap()
                .types
                .contains_key("PurchaseMade")
        );
    }

    #[tokio::test]
    async fn a_tenant_created_again_gets_its_new_schemas_not_the_old_ones_compiled() {
        let (catalog, _dir) = catalog().await;
        let acme = TenantId::parse("acme").unwrap();
        let schemas = Schemas::new(catalog.clone(), Duration::ZERO);
        let register = |schema: Value| {
            let (catalog, acme) = (catalog.clone(), acme.clone());
            async move {
                catalog
                    .register_schema(&acme, "PurchaseMade", 1, schema, None, "test")
                    .await
                    .unwrap();
            }
        };
        catalog.create_tenant(&acme, "test").await.unwrap();
        register(json!({"required": ["amount"]})).await;
        let first = schemas.of(&acme).await.unwrap();
        assert!(first.check("PurchaseMade", 1, &json!({})).is_err());
        catalog.delete_tenant(&acme, false, "test").await.unwrap();
        catalog.create_tenant(&acme, "test").await.unwrap();
        // Registered a millisecond later at least: the registration time tells them apart.
        tokio::time::sleep(Duration::from_millis(5)).await;
        register(json!({"required": ["sku"]})).await;
        let again = schemas.of(&acme).await.unwrap();
        assert!(again.check("PurchaseMade", 1, &json!({"sku": "a"})).is_ok());
        assert!(
            again
                .check("PurchaseMade", 1, &json!({"amount": 1}))
                .is_err()
        );
    }

    #[test]
    fn schemas_that_could_not_be_read_refuse_every_event() {
        let s = TenantSchemas {
            unreadable: Some("database down".into()),
            ..TenantSchemas::default()
        };
        let v = s.check("PageViewed", 1, &json!({})).unwrap_err();
        assert_eq!(v.code, "schemas_unavailable");
    }
}
