//! Property tests of token handling: `TokenAuthority::verify`, `Authenticator::authenticate`
//! (the `Authorization` header, then the token, then its tenant) and the parsers beside them
//! (`auth::parse_ttl`, `TenantId::parse`, `Claims::issued_at_ms`). Arbitrary text, arbitrary
//! base64 segments joined with dots, and real tokens with any byte changed are refused with
//! `Unauthenticated`, within a time bound; never accepted, never a panic.

use std::sync::LazyLock;
use std::sync::mpsc::{RecvTimeoutError, channel};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use floe_catalog::auth::parse_ttl;
use floe_catalog::{
    Authenticator, Catalog, Claims, Config, ErrorKind, Role, TenantId, TokenAuthority,
};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use serde_json::{Value, json};

/// Each case gets this long; none comes near it unless it loops.
const LIMIT: Duration = Duration::from_secs(5);
/// Request handlers run on tokio's worker threads; the server gives them this stack.
const HANDLER_STACK: usize = 2 << 20;

const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 512,
        // No regression files in the source tree; a failure prints its (shrunk) input.
        failure_persistence: None,
        // A case that hangs costs LIMIT per shrinking step: stop shrinking after a minute.
        max_shrink_time: 60_000,
        ..ProptestConfig::default()
    }
}

/// Runs `f` on a thread of its own and waits at most [`LIMIT`] for it. A panic or an overrun
/// fails the case (an overrun leaves its thread behind; the test fails anyway).
fn bounded<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, TestCaseError> {
    let (tx, rx) = channel();
    let handle = std::thread::Builder::new()
        .stack_size(HANDLER_STACK)
        .spawn(move || {
            let _ = tx.send(f());
        })
        .map_err(|e| TestCaseError::fail(format!("spawning a thread: {e}")))?;
    match rx.recv_timeout(LIMIT) {
        Ok(v) => {
            let _ = handle.join();
            Ok(v)
        }
        Err(RecvTimeoutError::Timeout) => Err(TestCaseError::fail(format!(
            "no answer within {LIMIT:?} (a hang)"
        ))),
        Err(RecvTimeoutError::Disconnected) => {
            let why = match handle.join() {
                Err(p) => p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "a panic".into()),
                Ok(()) => "no answer".into(),
            };
            Err(TestCaseError::fail(format!("panicked: {why}")))
        }
    }
}

/// A catalog with tenant `acme`, an authenticator over it, and a valid analyst token of `acme`.
struct Fixture {
    runtime: tokio::runtime::Runtime,
    auth: Authenticator,
    token: String,
    _dir: tempfile::TempDir,
}

static FIXTURE: LazyLock<Fixture> = LazyLock::new(|| {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_stack_size(HANDLER_STACK)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (auth, token) = runtime.block_on(async {
        let config = Config::load(
            None,
            vec![],
            &[("data_dir", dir.path().display().to_string())],
        )
        .unwrap();
        let catalog = Catalog::open(&config).await.unwrap();
        let acme = TenantId::parse("acme").unwrap();
        catalog.create_tenant(&acme, "test").await.unwrap();
        // A token is good from the millisecond after its tenant's creation.
        tokio::time::sleep(Duration::from_millis(5)).await;
        let authority = TokenAuthority::from_secret(SECRET);
        let token = authority
            .issue(&acme, Role::Analyst, Duration::from_secs(3600))
            .unwrap();
        (Authenticator::new(authority, catalog), token)
    });
    Fixture {
        runtime,
        auth,
        token,
        _dir: dir,
    }
});

/// A token the same key signed for another tenant: grafting one of its segments is a forgery,
/// grafting all of them is that token, genuine and accepted.
static SIGNED_FOR_OTHER: LazyLock<String> = LazyLock::new(|| {
    authority()
        .issue(
            &TenantId::parse("other").unwrap(),
            Role::Admin,
            Duration::from_secs(60),
        )
        .unwrap()
});

fn authority() -> TokenAuthority {
    TokenAuthority::from_secret(SECRET)
}

/// `verify(token)`, as a case: never a panic, within the bound.
fn verify(token: String) -> Result<Result<Claims, ErrorKind>, TestCaseError> {
    bounded(move || authority().verify(&token).map_err(|e| e.kind()))
}

/// `authenticate(header)` on the fixture's authenticator, within the bound.
fn authenticate(header: Option<String>) -> Result<Result<String, ErrorKind>, TestCaseError> {
    let f = &*FIXTURE;
    f.runtime
        .block_on(async {
            tokio::time::timeout(LIMIT, f.auth.authenticate(header.as_deref())).await
        })
        .map_err(|_| TestCaseError::fail(format!("no answer within {LIMIT:?} (a hang)")))
        .map(|r| r.map(|p| p.tenant.id().to_string()).map_err(|e| e.kind()))
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// JSON values of the kinds a claim might hold, including wrong ones.
fn json_value() -> impl Strategy<Value = Value> {
    let now = chrono::Utc::now().timestamp();
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        (now - 100_000..now + 100_000).prop_map(Value::from),
        Just(json!(u64::MAX)),
        Just(json!(i64::MIN)),
        any::<String>().prop_map(Value::from),
        prop::sample::select(vec![
            "acme", "other", "", "ACME", "admin", "analyst", "ingest"
        ])
        .prop_map(Value::from),
        Just(json!(["read", 1, null])),
        Just(json!({"nested": {"deeper": []}})),
    ]
}

const CLAIMS: [&str; 10] = [
    "tenant", "role", "scopes", "iat", "exp", "jti", "nbf", "aud", "iss", "sub",
];

/// Claims objects: over a valid set or not, with any field of any kind.
fn claims_object() -> impl Strategy<Value = Value> {
    // The tenant exists before any `jti` made here, so such tokens can be accepted.
    LazyLock::force(&FIXTURE);
    let now = chrono::Utc::now().timestamp();
    (
        any::<bool>(),
        prop::collection::vec((prop::sample::select(CLAIMS.to_vec()), json_value()), 0..4),
    )
        .prop_map(move |(valid_base, fields)| {
            let mut claims = if valid_base {
                json!({
                    "tenant": "acme",
                    "role": "admin",
                    "scopes": [],
                    "iat": now,
                    "exp": now + 3600,
                    "jti": uuid::Uuid::now_v7().to_string(),
                })
            } else {
                json!({})
            };
            for (k, v) in fields {
                claims[k] = v;
            }
            claims
        })
}

/// A header segment's JSON: the right algorithm or another, or junk.
fn header_object() -> impl Strategy<Value = Value> {
    prop_oneof![
        prop::sample::select(vec![
            "HS256", "HS384", "HS512", "none", "None", "RS256", "ES256", "EdDSA", "", "hs256",
        ])
        .prop_map(|alg| json!({"alg": alg, "typ": "JWT"})),
        json_value().prop_map(|v| json!({"alg": v})),
        json_value(),
    ]
}

/// One dot-separated segment: base64 of JSON, of arbitrary bytes, or text that is not base64.
fn segment() -> impl Strategy<Value = String> {
    prop_oneof![
        header_object().prop_map(|v| b64(v.to_string().as_bytes())),
        claims_object().prop_map(|v| b64(v.to_string().as_bytes())),
        prop::collection::vec(any::<u8>(), 0..48).prop_map(|b| b64(&b)),
        // Standard base64, with padding and + and /.
        prop::collection::vec(any::<u8>(), 0..48)
            .prop_map(|b| base64::engine::general_purpose::STANDARD.encode(b)),
        "[A-Za-z0-9_=+/ -]{0,64}",
        any::<String>(),
    ]
}

fn dotted() -> impl Strategy<Value = String> {
    prop::collection::vec(segment(), 1..6).prop_map(|s| s.join("."))
}

#[derive(Debug, Clone)]
enum Mutation {
    /// Sets the byte at (index) to (an ASCII byte).
    Set(prop::sample::Index, u8),
    Insert(prop::sample::Index, u8),
    Remove(prop::sample::Index),
    Truncate(prop::sample::Index),
    /// Swaps two of the dot-separated segments.
    Swap(prop::sample::Index, prop::sample::Index),
    /// Replaces one segment with that of another token (another key's, or another claim's).
    Graft(prop::sample::Index, String),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let other = prop_oneof![
        Just(
            TokenAuthority::from_secret(b"another-key-another-key-another!!")
                .issue(
                    &TenantId::parse("acme").unwrap(),
                    Role::Admin,
                    Duration::from_secs(60)
                )
                .unwrap()
        ),
        Just(SIGNED_FOR_OTHER.clone()),
    ];
    prop_oneof![
        4 => (any::<prop::sample::Index>(), 0u8..0x80).prop_map(|(i, b)| Mutation::Set(i, b)),
        2 => (any::<prop::sample::Index>(), 0u8..0x80).prop_map(|(i, b)| Mutation::Insert(i, b)),
        2 => any::<prop::sample::Index>().prop_map(Mutation::Remove),
        1 => any::<prop::sample::Index>().prop_map(Mutation::Truncate),
        1 => (any::<prop::sample::Index>(), any::<prop::sample::Index>())
            .prop_map(|(a, b)| Mutation::Swap(a, b)),
        1 => (any::<prop::sample::Index>(), other).prop_map(|(i, t)| Mutation::Graft(i, t)),
    ]
}

/// Applies `mutations` to `token` (ASCII, so byte edits keep it text).
fn mutate(token: &str, mutations: &[Mutation]) -> String {
    let mut b = token.as_bytes().to_vec();
    for m in mutations {
        match m {
            Mutation::Set(i, byte) if !b.is_empty() => {
                let i = i.index(b.len());
                b[i] = *byte;
            }
            Mutation::Insert(i, byte) => {
                let i = i.index(b.len() + 1);
                b.insert(i, *byte);
            }
            Mutation::Remove(i) if !b.is_empty() => {
                b.remove(i.index(b.len()));
            }
            Mutation::Truncate(i) => b.truncate(i.index(b.len() + 1)),
            Mutation::Swap(x, y) => {
                let text = String::from_utf8(b.clone()).unwrap();
                let mut parts: Vec<&str> = text.split('.').collect();
                let (x, y) = (x.index(parts.len()), y.index(parts.len()));
                parts.swap(x, y);
                b = parts.join(".").into_bytes();
            }
            Mutation::Graft(i, other) => {
                let text = String::from_utf8(b.clone()).unwrap();
                let mut parts: Vec<&str> = text.split('.').collect();
                let theirs: Vec<&str> = other.split('.').collect();
                let i = i.index(parts.len());
                if let Some(t) = theirs.get(i) {
                    parts[i] = t;
                }
                b = parts.join(".").into_bytes();
            }
            _ => {}
        }
    }
    String::from_utf8(b).unwrap()
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn arbitrary_text_is_not_a_token(token in any::<String>()) {
        prop_assert_eq!(verify(token)?.err(), Some(ErrorKind::Unauthenticated));
    }

    #[test]
    fn dotted_base64_is_not_a_token(token in dotted()) {
        prop_assert_eq!(verify(token)?.err(), Some(ErrorKind::Unauthenticated));
    }

    #[test]
    fn a_changed_token_is_refused(mutations in prop::collection::vec(mutation(), 1..4)) {
        let token = &FIXTURE.token;
        let changed = mutate(token, &mutations);
        prop_assume!(&changed != token && changed != *SIGNED_FOR_OTHER);
        prop_assert_eq!(verify(changed.clone())?.err(), Some(ErrorKind::Unauthenticated));
        // The header's token is trimmed: white space around it is no change.
        if changed.trim() != token {
            let header = format!("Bearer {changed}");
            prop_assert_eq!(authenticate(Some(header))?.err(), Some(ErrorKind::Unauthenticated));
        }
    }

    #[test]
    fn claims_of_any_shape_signed_with_the_key_are_answered(
        claims in claims_object(),
        header in prop::sample::select(vec![
            Algorithm::HS256, Algorithm::HS384, Algorithm::HS512,
        ]),
    ) {
        let key = EncodingKey::from_secret(SECRET);
        let token = jsonwebtoken::encode(&Header::new(header), &claims, &key).unwrap();
        let verified = verify(token.clone())?;
        if header != Algorithm::HS256 {
            prop_assert!(verified.is_err(), "{:?} accepted", header);
        }
        if let Ok(c) = &verified {
            // What verifies is exactly what was signed, and not expired.
            prop_assert_eq!(&json!(c.tenant), &claims["tenant"]);
            prop_assert_eq!(&json!(c.role), &claims["role"]);
            prop_assert_eq!(&json!(c.iat), &claims["iat"]);
            prop_assert_eq!(&json!(c.exp), &claims["exp"]);
            prop_assert_eq!(&json!(c.jti), &claims["jti"]);
            prop_assert!(c.exp > chrono::Utc::now().timestamp() - 5);
        }
        let header = format!("Bearer {token}");
        let auth = authenticate(Some(header))?;
        if let Ok(tenant) = &auth {
            prop_assert!(verified.is_ok());
            prop_assert_eq!(tenant, "acme");
        }
    }

    #[test]
    fn unsigned_tokens_are_refused(claims in claims_object(), alg in "none|None|NONE|") {
        let header = b64(json!({"alg": alg, "typ": "JWT"}).to_string().as_bytes());
        let token = format!("{header}.{}.", b64(claims.to_string().as_bytes()));
        let header = format!("Bearer {token}");
        prop_assert!(verify(token)?.is_err());
        prop_assert!(authenticate(Some(header))?.is_err());
    }

    #[test]
    fn arbitrary_authorization_headers_are_refused(
        scheme in prop::sample::select(vec!["", "Bearer ", "bearer ", "BEARER ", "Bearer", "Basic "]),
        rest in prop_oneof![any::<String>(), dotted()],
        missing in prop::bool::weighted(0.05),
    ) {
        let header = (!missing).then(|| format!("{scheme}{rest}"));
        prop_assert_eq!(authenticate(header)?.err(), Some(ErrorKind::Unauthenticated));
    }

    #[test]
    fn ttls_parse_or_are_refused(
        text in prop_oneof![
            any::<String>(),
            "[0-9]{0,25}[smhdy]?",
            " ?[0-9]{1,20}[smhd] ?",
        ],
    ) {
        let t = text.clone();
        let parsed = bounded(move || parse_ttl(&t).map_err(|e| e.kind()))?;
        // The value it must have: digits then one unit, the product in range and positive.
        let s = text.trim();
        let digits = s.chars().take_while(char::is_ascii_digit).count();
        let (num, unit) = s.split_at(digits);
        let scale = match unit {
            "" | "s" => Some(1u64),
            "m" => Some(60),
            "h" => Some(3600),
            "d" => Some(86_400),
            _ => None,
        };
        let expected = num
            .parse::<u64>()
            .ok()
            .zip(scale)
            .and_then(|(n, k)| n.checked_mul(k))
            .filter(|&secs| secs > 0);
        match (parsed, expected) {
            (Ok(d), Some(secs)) => prop_assert_eq!(d.as_secs(), secs),
            (Err(kind), None) => prop_assert_eq!(kind, ErrorKind::InvalidInput),
            (got, want) => prop_assert!(false, "{:?}: got {:?}, want {:?} s", text, got, want),
        }
    }

    #[test]
    fn tenant_ids_parse_exactly_the_allowed_names(
        text in prop_oneof![any::<String>(), "[a-z0-9_-]{0,70}", "[a-zA-Z0-9_.-]{1,8}"],
    ) {
        let t = text.clone();
        let parsed = bounded(move || TenantId::parse(&t).map(|id| id.to_string()))?;
        let b = text.as_bytes();
        let allowed = (1..=63).contains(&b.len())
            && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
            && b.iter().all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_' || c == b'-');
        match parsed {
            Ok(id) => {
                prop_assert!(allowed, "{:?} accepted", text);
                prop_assert_eq!(id, text);
            }
            Err(_) => prop_assert!(!allowed, "{:?} refused", text),
        }
    }

    #[test]
    fn any_token_id_gives_an_issue_time(
        jti in prop_oneof![
            any::<String>(),
            any::<u128>().prop_map(|n| uuid::Uuid::from_u128(n).to_string()),
            (any::<u128>(), 0u8..16).prop_map(|(n, v)| {
                // Any version nibble, so v1, v6 and v7 timestamps of any value occur.
                let n = (n & !(0xF << 76)) | ((v as u128) << 76);
                uuid::Uuid::from_u128(n).to_string()
            }),
        ],
        iat in any::<i64>(),
    ) {
        let claims = Claims {
            tenant: "acme".into(),
            role: Role::Viewer,
            scopes: vec![],
            iat,
            exp: iat,
            jti,
        };
        bounded(move || claims.issued_at_ms())?;
    }
}

/// The fixture's own token is good: the properties above refuse changes, not everything.
#[test]
fn the_unchanged_token_is_accepted() {
    let f = &*FIXTURE;
    assert_eq!(verify(f.token.clone()).unwrap().unwrap().tenant, "acme");
    assert_eq!(
        authenticate(Some(format!("Bearer {}", f.token))).unwrap(),
        Ok("acme".to_string())
    );
    assert_eq!(
        authenticate(Some(format!("bearer  {} ", f.token))).unwrap(),
        Ok("acme".to_string())
    );
}
