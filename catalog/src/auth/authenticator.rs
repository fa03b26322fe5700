//! Verifying a request's credential: a JWT (signature, expiry, not revoked) or an API key
//! (known, its secret matching, not revoked or expired), then that its tenant still exists.
//!
//! Revocations reach every process within `auth.revocation_refresh_ms`: the revoked tokens are
//! read again once older than that, and a key is looked up again once its copy is older than
//! that. While the catalog database does not answer, the sets and keys already read keep
//! working (a key never seen gets 503), as tenants already seen do: a request that has them
//! waits for the catalog at most `http.catalog_wait_ms`, and not at all once the catalog is
//! known to be down (all three are [`LastKnown`] values).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use super::jwks::Jwks;
use super::{Claims, Principal, Role, TokenAuthority};
use crate::credentials::{ApiKey, parse_key, secret_matches};
use crate::last_known::LastKnown;
use crate::tenant::TenantId;
use crate::{Error, Result};

/// What the authenticator's [`LastKnown`] values are called in errors.
const REVOKED: &str = "the list of revoked tokens";
const KEY: &str = "API key";

/// How often revocations are read again unless configured (`auth.revocation_refresh_ms`).
pub const DEFAULT_REVOCATION_REFRESH: Duration = Duration::from_millis(500);

/// Verifies requests: the bearer credential, then that its tenant still exists (asked of the
/// catalog again on every request, by one request at a time, the others meanwhile going on
/// with the last answer: a deleted tenant's credentials stop working within a read or two;
/// while the catalog database does not answer within `http.catalog_wait_ms`, tenants already
/// seen are taken as existing).
#[derive(Clone, Debug)]
pub struct Authenticator {
    authority: TokenAuthority,
    catalog: crate::Catalog,
    /// Tenants seen to exist, with their incarnation, read again on every request: they keep
    /// working while the catalog database is down.
    known: LastKnown<Seen>,
    /// (tenant, jti) of revoked tokens not yet expired (one value, under the key "").
    revoked: LastKnown<Arc<HashSet<(String, String)>>>,
    /// API keys by id.
    keys: LastKnown<ApiKey>,
    refresh: Duration,
    /// An external identity provider's keys (`auth.jwks`).
    jwks: Option<Arc<Jwks>>,
}

fn bearer(authorization: Option<&str>) -> Result<&str> {
    let header = authorization.ok_or_else(|| Error::Unauthenticated {
        message: "missing Authorization header (expected: Bearer <token>)".into(),
    })?;
    Ok(header
        .strip_prefix("Bearer ")
        .or_else(|| header.strip_prefix("bearer "))
        .ok_or_else(|| Error::Unauthenticated {
            message: "Authorization must be a Bearer token".into(),
        })?
        .trim())
}

impl Authenticator {
    pub fn new(authority: TokenAuthority, catalog: crate::Catalog) -> Self {
        let retry_failed = catalog.retry_failed();
        Authenticator {
            authority,
            catalog,
            known: LastKnown::new("tenant", retry_failed),
            revoked: LastKnown::refreshed_every(REVOKED, DEFAULT_REVOCATION_REFRESH, retry_failed),
            keys: LastKnown::refreshed_every(KEY, DEFAULT_REVOCATION_REFRESH, retry_failed),
            refresh: DEFAULT_REVOCATION_REFRESH,
            jwks: None,
        }
    }

    /// Also takes tokens of the identity provider of `auth.jwks` (if set).
    pub fn with_jwks(mut self, config: &crate::config::AuthConfig) -> Self {
        self.jwks = Jwks::new(config).map(Arc::new);
        self
    }

    /// Verifies a JWT: Floe's own (HS256), or the identity provider's (asymmetric, naming its
    /// key). Revocation is checked by the callers.
    async fn verify_jwt(&self, presented: &str) -> Result<Claims> {
        if let Some(jwks) = &self.jwks
            && let Ok(header) = jsonwebtoken::decode_header(presented)
            && header.alg != jsonwebtoken::Algorithm::HS256
        {
            let kid = header.kid.ok_or_else(|| Error::Unauthenticated {
                message: "token names no key (kid)".into(),
            })?;
            return jwks.verify(presented, &kid).await;
        }
        self.authority.verify(presented)
    }

    /// Reads revocations again at most this long after the last reading.
    pub fn with_revocation_refresh(mut self, every: Duration) -> Self {
        self.refresh = every;
        // A first read the catalog did not answer is not tried again later than a value.
        let retry_failed = self.catalog.retry_failed();
        self.revoked = LastKnown::refreshed_every(REVOKED, every, retry_failed);
        self.keys = LastKnown::refreshed_every(KEY, every, retry_failed);
        self
    }

    pub fn authority(&self) -> &TokenAuthority {
        &self.authority
    }

    /// Whom a refused request's `Authorization` header stands for, as far as it can be trusted:
    /// the tenant of an API key whose secret matches, or of a token whose signature verifies
    /// (expired or revoked: the attempt is that tenant's business), provided that tenant
    /// exists and the credential was made after it; `None` (the platform's) for anything else.
    /// The actor: `key:<id>`, `token:<jti>`, `anonymous`.
    pub async fn attribute(&self, authorization: Option<&str>) -> (Option<String>, String) {
        let Ok(presented) = bearer(authorization) else {
            return (None, "anonymous".into());
        };
        if let Some((id, secret)) = parse_key(presented) {
            let owner = match self.key(id).await.ok().flatten() {
                Some(k) if secret_matches(secret, &k.secret_sha256) => {
                    self.owner(&k.tenant, k.created_at_ms).await
                }
                _ => None,
            };
            return (owner, format!("key:{id}"));
        }
        let claims = match self.authority.verify_signature(presented) {
            Some(claims) => Some(claims),
            // The identity provider's keys only for what Floe's own keys do not sign.
            None => match (&self.jwks, jsonwebtoken::decode_header(presented)) {
                (Some(jwks), Ok(h)) if h.alg != jsonwebtoken::Algorithm::HS256 => match h.kid {
                    Some(kid) => jwks.verify(presented, &kid).await.ok(),
                    None => None,
                },
                _ => None,
            },
        };
        match claims {
            Some(c) => {
                let actor = c.actor();
                (self.owner(&c.tenant, c.issued_at_ms()).await, actor)
            }
            None => (None, "anonymous".into()),
        }
    }

    /// `tenant` if it exists and was created before `made_at_ms` (a credential of an earlier
    /// tenant under the id is not this one's).
    async fn owner(&self, tenant: &str, made_at_ms: i64) -> Option<String> {
        let id = TenantId::parse(tenant).ok()?;
        let found = self.tenant(&id).await.ok().flatten()?;
        (made_at_ms >= found.created_at_ms).then(|| tenant.to_string())
    }

    /// The tenant as last read, asked of the catalog again (see [`LastKnown::get`]).
    async fn tenant(&self, tenant: &TenantId) -> Result<Option<Seen>> {
        let (catalog, id) = (self.catalog.clone(), tenant.clone());
        let read = || async move {
            let Some(found) = catalog.find_tenant(&id).await? else {
                return Ok(None);
            };
            Ok(Some(Seen {
                key: found.key()?,
                created_at_ms: found.created_at_ms,
            }))
        };
        self.known
            .get(&self.catalog, tenant.as_str(), Duration::ZERO, read)
            .await
    }

    /// The API key `id` as read at most `auth.revocation_refresh_ms` ago.
    async fn key(&self, id: &str) -> Result<Option<ApiKey>> {
        let (catalog, owned) = (self.catalog.clone(), id.to_string());
        let read = || async move { catalog.api_key(&owned).await };
        self.keys.get(&self.catalog, id, self.refresh, read).await
    }

    /// Checks an operator's `Authorization` header value: a valid, unrevoked token of role
    /// `operator` (a tenant's token or key of any role is `Forbidden` here).
    pub async fn authenticate_operator(&self, authorization: Option<&str>) -> Result<Claims> {
        let presented = bearer(authorization)?;
        if parse_key(presented).is_some() {
            return Err(Error::Forbidden {
                message: "only the platform operator may do this (an API key is a tenant's)".into(),
            });
        }
        let claims = self.verify_jwt(presented).await?;
        if claims.role != Role::Operator || !claims.tenant.is_empty() {
            return Err(Error::Forbidden {
                message: format!(
                    "only the platform operator may do this (the token is a tenant's, role {})",
                    claims.role.as_str()
                ),
            });
        }
        self.refuse_revoked(&claims).await?;
        Ok(claims)
    }

    /// Checks a tenant's `Authorization` header value (`Bearer <jwt or key>`): a valid
    /// credential, not revoked, whose tenant exists (an operator's token reaches no tenant:
    /// `Forbidden`).
    pub async fn authenticate(&self, authorization: Option<&str>) -> Result<Principal> {
        let presented = bearer(authorization)?;
        let claims = match parse_key(presented) {
            Some((id, secret)) => self.key_claims(id, secret).await?,
            None => {
                let claims = self.verify_jwt(presented).await?;
                if claims.role == Role::Operator {
                    return Err(Error::Forbidden {
                        message: "an operator token reaches no tenant's data: use a tenant's \
                                  token"
                            .into(),
                    });
                }
                self.refuse_revoked(&claims).await?;
                claims
            }
        };
        self.principal(claims).await
    }

    /// Refuses a token whose `jti` its tenant revoked. A list never read is waited for: a
    /// revoked token must not pass for want of it.
    async fn refuse_revoked(&self, claims: &Claims) -> Result<()> {
        let catalog = self.catalog.clone();
        let read = || async move {
            let list = catalog.revoked_tokens().await?;
            Ok(Some(Arc::new(list.into_iter().collect())))
        };
        let revoked = self
            .revoked
            .get(&self.catalog, "", self.refresh, read)
            .await?;
        if revoked.is_some_and(|r| r.contains(&(claims.tenant.clone(), claims.jti.clone()))) {
            return Err(Error::Unauthenticated {
                message: "token revoked".into(),
            });
        }
        Ok(())
    }

    /// The claims an API key stands for, once it is known to verify.
    async fn key_claims(&self, id: &str, secret: &str) -> Result<Claims> {
        let Some(key) = self.key(id).await? else {
            return Err(Error::Unauthenticated {
                message: "unknown API key".into(),
            });
        };
        if !secret_matches(secret, &key.secret_sha256) {
            return Err(Error::Unauthenticated {
                message: "API key does not verify".into(),
            });
        }
        if key.revoked_at_ms.is_some() {
            return Err(Error::Unauthenticated {
                message: "API key revoked".into(),
            });
        }
        let now = chrono::Utc::now().timestamp_millis();
        if key.expires_at_ms.is_some_and(|t| t <= now) {
            return Err(Error::Unauthenticated {
                message: "API key expired".into(),
            });
        }
        Ok(Claims {
            tenant: key.tenant,
            role: key.role,
            scopes: key.event_types,
            // Rounded up: a key made in the second its tenant was created reaches it.
            iat: (key.created_at_ms + 999).div_euclid(1000),
            exp: key
                .expires_at_ms
                .map_or(i64::MAX / 1000, |t| t.div_euclid(1000)),
            jti: format!("key:{}", key.id),
        })
    }

    /// The principal of verified claims: their tenant as it exists now (as last read while
    /// the catalog database is slow or down).
    async fn principal(&self, claims: Claims) -> Result<Principal> {
        let tenant = TenantId::parse(&claims.tenant).map_err(|_| Error::Unauthenticated {
            message: "token names an invalid tenant".into(),
        })?;
        let Some(seen) = self.tenant(&tenant).await? else {
            return Err(Error::Unauthenticated {
                message: "the token's tenant does not exist".into(),
            });
        };
        seen.principal(claims)
    }
}

/// A tenant as this process last read it.
#[derive(Clone, Debug)]
struct Seen {
    key: crate::tenant::TenantKey,
    created_at_ms: i64,
}

impl Seen {
    /// The principal of claims of this tenant. A tenant deleted and created again under the
    /// same id is another tenant: credentials issued before it existed do not reach it.
    fn principal(self, claims: Claims) -> Result<Principal> {
        if claims.issued_at_ms() < self.created_at_ms {
            return Err(Error::Unauthenticated {
                message: "the token was issued before its tenant was created".into(),
            });
        }
        Ok(Principal {
            claims,
            tenant: self.key,
        })
    }
}
