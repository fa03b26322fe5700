//! Tokens: HS256 JWTs carrying tenant, role, scopes and a short expiry, signed with Floe's own
//! keys (`signing.rs`: generated on first use, rotated by `floe keys rotate`).

use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

mod authenticator;
pub mod jwks;
pub mod signing;

pub use authenticator::Authenticator;
pub use signing::TokenAuthority;

/// What a token lets its holder do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Produce events only.
    Ingest,
    /// Dashboards and projections.
    Viewer,
    /// Ad-hoc SQL.
    Analyst,
    /// Tenant settings, keys, erasure; may also ingest and query.
    Admin,
    /// The platform's operator: bound to no tenant (its token's `tenant` is empty), it reaches
    /// only the operator routes, never a tenant's data.
    Operator,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Ingest => "ingest",
            Role::Viewer => "viewer",
            Role::Analyst => "analyst",
            Role::Admin => "admin",
            Role::Operator => "operator",
        }
    }
}

impl FromStr for Role {
    type Err = Error;
    fn from_str(s: &str) -> Result<Role> {
        match s {
            "ingest" => Ok(Role::Ingest),
            "viewer" => Ok(Role::Viewer),
            "analyst" => Ok(Role::Analyst),
            "admin" => Ok(Role::Admin),
            "operator" => Ok(Role::Operator),
            other => Err(Error::invalid(format!(
                "unknown role {other:?}: expected ingest, viewer, analyst, admin or operator"
            ))),
        }
    }
}

/// The verified contents of a token.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Claims {
    pub tenant: String,
    pub role: Role,
    #[serde(default)]
    pub scopes: Vec<String>,
    pub iat: i64,
    pub exp: i64,
    /// Unique id of this token, for audit.
    pub jti: String,
}

impl Claims {
    /// Who the credential is, in the audit log: `key:<id>` for an API key, `token:<jti>` for
    /// a token.
    pub fn actor(&self) -> String {
        if self.jti.starts_with("key:") {
            self.jti.clone()
        } else {
            format!("token:{}", self.jti)
        }
    }

    /// When the token was issued, to the millisecond (from its UUIDv7 `jti`; from `iat`,
    /// to the second, for any other id).
    pub fn issued_at_ms(&self) -> i64 {
        uuid::Uuid::parse_str(&self.jti)
            .ok()
            .and_then(|u| u.get_timestamp())
            .map(|t| {
                let (secs, nanos) = t.to_unix();
                secs as i64 * 1000 + (nanos / 1_000_000) as i64
            })
            .unwrap_or(self.iat.saturating_mul(1000))
    }

    /// Fails with `Forbidden` unless the token's role is one of `roles`.
    pub fn require_role(&self, roles: &[Role]) -> Result<()> {
        if roles.contains(&self.role) {
            Ok(())
        } else {
            Err(Error::Forbidden {
                message: format!(
                    "role {} may not do this (needs one of: {})",
                    self.role.as_str(),
                    roles
                        .iter()
                        .map(|r| r.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            })
        }
    }
}

/// Parses `90s`, `15m`, `1h`, `7d` (or a bare number of seconds).
pub fn parse_ttl(s: &str) -> Result<Duration> {
    let s = s.trim();
    let (num, unit) = match s.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let n: u64 = num.parse().map_err(|_| {
        Error::invalid(format!(
            "bad duration {s:?}: expected e.g. 90s, 15m, 1h, 7d"
        ))
    })?;
    let scale: u64 = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => {
            return Err(Error::invalid(format!(
                "bad duration unit in {s:?}: use s, m, h or d"
            )));
        }
    };
    // Checked: an unchecked product wrapped around in release builds (a huge --ttl became a
    // short one that passed the maximum) and panicked in debug builds.
    let secs = n
        .checked_mul(scale)
        .ok_or_else(|| Error::invalid(format!("duration {s:?} is too long")))?;
    if secs == 0 {
        return Err(Error::invalid("a duration must be positive"));
    }
    Ok(Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use jsonwebtoken::{Algorithm, EncodingKey, Header};

    use super::*;
    use crate::ErrorKind;
    use crate::TenantId;

    fn tenant(s: &str) -> TenantId {
        TenantId::parse(s).unwrap()
    }

    #[test]
    fn issue_and_verify_round_trip() {
        let a = TokenAuthority::from_secret(b"0123456789abcdef0123456789abcdef");
        let t = a
            .issue(&tenant("acme"), Role::Analyst, Duration::from_secs(60))
            .unwrap();
        let c = a.verify(&t).unwrap();
        assert_eq!(c.tenant, "acme");
        assert_eq!(c.role, Role::Analyst);
        assert!(c.require_role(&[Role::Ingest, Role::Admin]).is_err());
        assert!(c.require_role(&[Role::Analyst]).is_ok());
    }

    #[test]
    fn forged_expired_and_garbage_tokens_are_unauthenticated() {
        let a = TokenAuthority::from_secret(b"0123456789abcdef0123456789abcdef");
        let b = TokenAuthority::from_secret(b"another-key-another-key-another!!");
        let forged = b
            .issue(&tenant("acme"), Role::Admin, Duration::from_secs(60))
            .unwrap();
        let e = a.verify(&forged).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Unauthenticated);
        assert!(e.to_string().contains("unknown key"), "{e}");

        let now = chrono::Utc::now().timestamp();
        // Naming no key, it is checked against the oldest key: the signature does not verify.
        let claims = Claims {
            tenant: "acme".into(),
            role: Role::Admin,
            scopes: vec![],
            iat: now,
            exp: now + 60,
            jti: "x".into(),
        };
        let other = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(b"another-key-another-key-another!!"),
        )
        .unwrap();
        assert!(
            a.verify(&other)
                .unwrap_err()
                .to_string()
                .contains("signature")
        );
        let claims = Claims {
            tenant: "acme".into(),
            role: Role::Admin,
            scopes: vec![],
            iat: now - 100,
            exp: now - 10,
            jti: "x".into(),
        };
        let expired = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(b"0123456789abcdef0123456789abcdef"),
        )
        .unwrap();
        assert_eq!(a.verify(&expired).unwrap_err().to_string(), "token expired");
        assert_eq!(
            a.verify("nope").unwrap_err().kind(),
            ErrorKind::Unauthenticated
        );
    }

    #[test]
    fn key_file_is_created_once_with_owner_only_permissions() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k/signing.key");
        let a = TokenAuthority::load_or_create(&path).unwrap();
        let b = TokenAuthority::load_or_create(&path).unwrap();
        let t = a
            .issue(&tenant("acme"), Role::Ingest, Duration::from_secs(60))
            .unwrap();
        assert!(b.verify(&t).is_ok());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn an_operator_token_names_no_tenant_and_a_tenant_token_is_never_an_operators() {
        let a = TokenAuthority::from_secret(b"0123456789abcdef0123456789abcdef");
        let op = a
            .verify(&a.issue_operator(Duration::from_secs(60)).unwrap())
            .unwrap();
        assert_eq!((op.tenant.as_str(), op.role), ("", Role::Operator));
        assert!(
            a.issue(&tenant("acme"), Role::Operator, Duration::from_secs(60))
                .is_err()
        );
    }

    /// A catalog in `dir` with the tenant `acme`.
    async fn catalog_with_acme(dir: &Path) -> crate::Catalog {
        let config =
            crate::Config::load(None, vec![], &[("data_dir", dir.display().to_string())]).unwrap();
        let catalog = crate::Catalog::open(&config).await.unwrap();
        catalog
            .create_tenant(&tenant("acme"), "test")
            .await
            .unwrap();
        catalog
    }

    #[tokio::test]
    async fn operator_routes_take_only_operator_tokens_and_tenant_routes_never_do() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = catalog_with_acme(dir.path()).await;
        let a = TokenAuthority::from_secret(b"0123456789abcdef0123456789abcdef");
        let auth = Authenticator::new(a.clone(), catalog);
        let op = format!(
            "Bearer {}",
            a.issue_operator(Duration::from_secs(60)).unwrap()
        );
        let admin = format!(
            "Bearer {}",
            a.issue(&tenant("acme"), Role::Admin, Duration::from_secs(60))
                .unwrap()
        );
        assert!(auth.authenticate_operator(Some(&op)).await.is_ok());
        assert_eq!(
            auth.authenticate_operator(Some(&admin))
                .await
                .unwrap_err()
                .kind(),
            ErrorKind::PermissionDenied
        );
        assert_eq!(
            auth.authenticate(Some(&op)).await.unwrap_err().kind(),
            ErrorKind::PermissionDenied
        );
        assert!(auth.authenticate(Some(&admin)).await.is_ok());
    }

    #[tokio::test]
    async fn revoked_tokens_and_keys_are_refused_once_read_again() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = catalog_with_acme(dir.path()).await;
        let acme = tenant("acme");
        let a = TokenAuthority::from_secret(b"0123456789abcdef0123456789abcdef");
        let auth = Authenticator::new(a.clone(), catalog.clone())
            .with_revocation_refresh(Duration::from_millis(50));
        let token = a
            .issue(&acme, Role::Ingest, Duration::from_secs(60))
            .unwrap();
        let jti = a.verify(&token).unwrap().jti;
        let bearer = format!("Bearer {token}");
        assert!(auth.authenticate(Some(&bearer)).await.is_ok());
        catalog
            .revoke_token(&acme, &jti, i64::MAX, "test")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(60)).await;
        let e = auth.authenticate(Some(&bearer)).await.unwrap_err();
        assert_eq!(e.to_string(), "token revoked");

        let made = catalog
            .create_api_key(&acme, Role::Ingest, vec!["PageViewed".into()], None, "test")
            .await
            .unwrap();
        let key = format!("Bearer {}", made.token);
        let p = auth.authenticate(Some(&key)).await.unwrap();
        assert_eq!(
            (p.claims.role, p.claims.scopes.clone()),
            (Role::Ingest, vec!["PageViewed".to_string()])
        );
        let forged = format!("Bearer {}_{}", made.key.prefix(), "0".repeat(64));
        assert_eq!(
            auth.authenticate(Some(&forged))
                .await
                .unwrap_err()
                .to_string(),
            "API key does not verify"
        );
        catalog
            .revoke_api_key(&acme, &made.key.id, "test")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert_eq!(
            auth.authenticate(Some(&key)).await.unwrap_err().to_string(),
            "API key revoked"
        );
    }

    #[tokio::test]
    async fn a_tenant_created_again_is_not_reached_by_older_tokens_on_what_is_known() {
        // The catalog is never waited for (`http.catalog_wait_ms = 0`): a tenant seen before
        // is taken from what this process knows, and read again in the background.
        let dir = tempfile::tempdir().unwrap();
        let config = crate::Config::load(
            None,
            vec![],
            &[
                ("data_dir", dir.path().display().to_string()),
                ("http.catalog_wait_ms", "0".to_string()),
            ],
        )
        .unwrap();
        let catalog = crate::Catalog::open(&config).await.unwrap();
        let acme = tenant("acme");
        catalog.create_tenant(&acme, "test").await.unwrap();
        let a = TokenAuthority::from_secret(b"0123456789abcdef0123456789abcdef");
        let auth = Authenticator::new(a.clone(), catalog.clone());
        let bearer = |role| {
            format!(
                "Bearer {}",
                a.issue(&acme, role, Duration::from_secs(60)).unwrap()
            )
        };
        let old = bearer(Role::Ingest);
        assert!(auth.authenticate(Some(&old)).await.is_ok());

        tokio::time::sleep(Duration::from_millis(5)).await;
        catalog.delete_tenant(&acme, false, "test").await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
        let again = catalog.create_tenant(&acme, "test").await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
        let new = bearer(Role::Ingest);
        // The first request after it goes on with what was known (the old tenant) and starts
        // the read; once the read is in, the token from before is refused on what is known.
        let _ = auth.authenticate(Some(&old)).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(
            auth.authenticate(Some(&old)).await.unwrap_err().to_string(),
            "the token was issued before its tenant was created"
        );
        let p = auth.authenticate(Some(&new)).await.unwrap();
        assert_eq!(p.tenant, again.key().unwrap());
    }

    #[test]
    fn ttl_parsing() {
        assert_eq!(parse_ttl("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_ttl("90").unwrap(), Duration::from_secs(90));
        assert!(parse_ttl("1y").is_err());
        assert!(parse_ttl("0s").is_err());
        assert!(parse_ttl("214000000000000d").is_err());
    }
}

/// Who is asking: a verified token and the tenant incarnation it reaches.
#[derive(Debug, Clone)]
pub struct Principal {
    pub claims: Claims,
    /// The token's tenant, as it exists now.
    pub tenant: crate::tenant::TenantKey,
}

impl Principal {
    /// Fails with `Forbidden` unless the token's role is one of `roles`.
    pub fn require_role(&self, roles: &[Role]) -> Result<()> {
        self.claims.require_role(roles)
    }
}
