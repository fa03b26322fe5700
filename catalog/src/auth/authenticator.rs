//! Verifying a request's credential: a JWT (signature, expiry, not revoked) or an API key
//! (known, its secret matching, not revoked or expired), then that its tenant still exists.
//!
//! Revocations reach every process within `auth.revocation_refresh_ms`: the revoked tokens are
//! read again once older than that (by one request at a time; the others use the set they
//! have), and a key is looked up again once its copy is older than that. While the catalog
//! database does not answer, the sets and keys already read keep working (a key never seen
//! gets 503), as tenants already seen do: a request that has them waits for the catalog at
//! most `http.catalog_wait_ms`, and not at all once the catalog is known to be down
//! ([`crate::Catalog::read_or_go_on`]).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::jwks::Jwks;
use super::{Claims, Principal, Role, TokenAuthority};
use crate::credentials::{ApiKey, parse_key, secret_matches};
use crate::tenant::TenantId;
use crate::{Error, Result};

/// How often revocations are read again unless configured (`auth.revocation_refresh_ms`).
pub const DEFAULT_REVOCATION_REFRESH: Duration = Duration::from_millis(500);

#[derive(Debug, Default)]
struct Revoked {
    /// (tenant, jti) of revoked tokens not yet expired.
    tokens: HashSet<(String, String)>,
    read_at: Option<Instant>,
}

/// Verifies requests: the bearer credential, then that its tenant still exists (asked of the
/// catalog again on every request, by one request at a time, the others meanwhile going on
/// with the last answer: a deleted tenant's credentials stop working within a read or two;
/// while the catalog database does not answer within `http.catalog_wait_ms`, tenants already
/// seen are taken as existing).
#[derive(Clone, Debug)]
pub struct Authenticator {
    authority: TokenAuthority,
    catalog: crate::Catalog,
    /// Tenants seen to exist, with their incarnation: they keep working while the catalog
    /// database is down.
    known: Arc<Mutex<HashMap<String, Seen>>>,
    /// Tenants (`tenant:<id>`) and API keys (`key:<id>`) being read again: one read of each
    /// at a time, the requests meanwhile going on with what is known.
    in_flight: Arc<Mutex<HashSet<String>>>,
    revoked: Arc<Mutex<Revoked>>,
    /// One reading of the revoked tokens at a time.
    reading: Arc<tokio::sync::Mutex<()>>,
    /// Keys by id, with when they were read.
    keys: Arc<Mutex<HashMap<String, (ApiKey, Instant)>>>,
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
        Authenticator {
            authority,
            catalog,
            known: Default::default(),
            in_flight: Default::default(),
            revoked: Default::default(),
            reading: Default::default(),
            keys: Default::default(),
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
            let cached = self
                .keys
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(id)
                .map(|(k, _)| k.clone());
            let key = match cached {
                Some(k) => Some(k),
                None => self.catalog.api_key(id).await.ok().flatten(),
            };
            let owner = match key {
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
        let found = self.catalog.find_tenant(&id).await.ok().flatten()?;
        (made_at_ms >= found.created_at_ms).then(|| tenant.to_string())
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

    /// Refuses a token whose `jti` its tenant revoked.
    async fn refuse_revoked(&self, claims: &Claims) -> Result<()> {
        let stale = {
            let r = self.revoked.lock().unwrap_or_else(|p| p.into_inner());
            r.read_at.is_none_or(|t| t.elapsed() >= self.refresh)
        };
        if stale && let Ok(one) = self.reading.clone().try_lock_owned() {
            let (catalog, revoked) = (self.catalog.clone(), self.revoked.clone());
            let read = async move {
                let _one = one;
                let list = catalog.revoked_tokens().await?;
                let mut r = revoked.lock().unwrap_or_else(|p| p.into_inner());
                r.tokens = list.into_iter().collect();
                r.read_at = Some(Instant::now());
                Ok::<_, Error>(())
            };
            if self.never_read() {
                // Never read: a revoked token must not pass for want of the list.
                read.await?;
            } else if let Some(Err(e)) = self.catalog.read_or_go_on(read).await {
                tracing::warn!(error = %e, "could not read revoked tokens; using the last list");
            }
        } else if stale && self.never_read() {
            // Another request is reading the first list: wait for it; if it failed, so does
            // this request (a revoked token must not pass for want of the list).
            let _one = self.reading.lock().await;
            if self.never_read() {
                return Err(Error::Unavailable {
                    what: "the list of revoked tokens".into(),
                    why: "its first reading from the catalog database did not complete".into(),
                });
            }
        }
        let r = self.revoked.lock().unwrap_or_else(|p| p.into_inner());
        if r.tokens
            .contains(&(claims.tenant.clone(), claims.jti.clone()))
        {
            return Err(Error::Unauthenticated {
                message: "token revoked".into(),
            });
        }
        Ok(())
    }

    fn never_read(&self) -> bool {
        self.revoked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .read_at
            .is_none()
    }

    /// The claims an API key stands for, once it is known to verify.
    async fn key_claims(&self, id: &str, secret: &str) -> Result<Claims> {
        let cached = self
            .keys
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned();
        let key = match cached {
            Some((key, at)) if at.elapsed() < self.refresh => key,
            // A copy to go on with: the catalog is asked (by one request at a time), but not
            // waited for long.
            Some((key, _)) => match OneRead::start(&self.in_flight, format!("key:{id}")) {
                None => key,
                Some(one) => {
                    let (catalog, keys, id) =
                        (self.catalog.clone(), self.keys.clone(), id.to_string());
                    let read = async move {
                        let _one = one;
                        let found = catalog.api_key(&id).await;
                        let mut keys = keys.lock().unwrap_or_else(|p| p.into_inner());
                        match &found {
                            Ok(Some(key)) => {
                                keys.insert(id, (key.clone(), Instant::now()));
                            }
                            Ok(None) => {
                                keys.remove(&id);
                            }
                            Err(_) => {}
                        }
                        found
                    };
                    match self.catalog.read_or_go_on(read).await {
                        Some(Ok(Some(key))) => key,
                        Some(Ok(None)) => {
                            return Err(Error::Unauthenticated {
                                message: "unknown API key".into(),
                            });
                        }
                        Some(Err(e)) if !e.retryable() => return Err(e),
                        Some(Err(_)) | None => key,
                    }
                }
            },
            None => match self.catalog.api_key(id).await? {
                Some(key) => {
                    self.keys
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(id.to_string(), (key.clone(), Instant::now()));
                    key
                }
                None => {
                    return Err(Error::Unauthenticated {
                        message: "unknown API key".into(),
                    });
                }
            },
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

    /// The principal of verified claims: their tenant as it exists now.
    async fn principal(&self, claims: Claims) -> Result<Principal> {
        let tenant = TenantId::parse(&claims.tenant).map_err(|_| Error::Unauthenticated {
            message: "token names an invalid tenant".into(),
        })?;
        let seen = self
            .known
            .lock()
            .ok()
            .and_then(|k| k.get(tenant.as_str()).cloned());
        let found = match seen.clone() {
            None => {
                let found = self.catalog.find_tenant(&tenant).await;
                if let Ok(found) = &found {
                    remember(&self.known, &tenant, found.as_ref());
                }
                found
            }
            // A tenant this process has seen keeps working while the catalog database is down
            // or slow (ingest goes on into the log): it is read again by one request at a
            // time, not waited for long, and the answer updates what is known when it comes.
            Some(seen) => {
                let Some(one) = OneRead::start(&self.in_flight, format!("tenant:{tenant}")) else {
                    return seen.principal(claims);
                };
                let (catalog, known, id) =
                    (self.catalog.clone(), self.known.clone(), tenant.clone());
                let read = async move {
                    let _one = one;
                    let found = catalog.find_tenant(&id).await;
                    if let Ok(found) = &found {
                        remember(&known, &id, found.as_ref());
                    }
                    found
                };
                match self.catalog.read_or_go_on(read).await {
                    Some(found) => found,
                    None => return seen.principal(claims),
                }
            }
        };
        let found = match found {
            Ok(found) => found,
            // One it has never seen gets 503.
            Err(e) if e.retryable() => match seen {
                Some(seen) => return seen.principal(claims),
                None => return Err(e),
            },
            Err(e) => return Err(e),
        };
        let Some(found) = found else {
            return Err(Error::Unauthenticated {
                message: "the token's tenant does not exist".into(),
            });
        };
        Seen {
            key: found.key()?,
            created_at_ms: found.created_at_ms,
        }
        .principal(claims)
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

/// One background read of a thing at a time (see `Authenticator::in_flight`): held by the
/// read, it lets the next one start when dropped.
struct OneRead {
    in_flight: Arc<Mutex<HashSet<String>>>,
    what: String,
}

impl OneRead {
    /// `None` while a read of `what` is under way.
    fn start(in_flight: &Arc<Mutex<HashSet<String>>>, what: String) -> Option<OneRead> {
        let fresh = in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(what.clone());
        fresh.then(|| OneRead {
            in_flight: in_flight.clone(),
            what,
        })
    }
}

impl Drop for OneRead {
    fn drop(&mut self) {
        self.in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.what);
    }
}

/// Keeps what the catalog said of `tenant` (its incarnation and creation, or that it does not
/// exist) for requests made while the catalog database does not answer.
fn remember(
    known: &Mutex<HashMap<String, Seen>>,
    tenant: &TenantId,
    found: Option<&crate::tenant::Tenant>,
) {
    let mut known = known.lock().unwrap_or_else(|p| p.into_inner());
    match found {
        Some(t) => {
            if let Ok(key) = t.key() {
                known.insert(
                    tenant.to_string(),
                    Seen {
                        key,
                        created_at_ms: t.created_at_ms,
                    },
                );
            }
        }
        None => {
            known.remove(tenant.as_str());
        }
    }
}
