//! Tokens from an external identity provider, verified against its JSON Web Key Set
//! (`auth.jwks`: a file, or an `https://` or `http://` URL), read again every `auth.jwks_refresh_secs` and
//! when a token names a key id not in the set (at most once a second).
//!
//! A key's algorithm comes from the key, never from the token: RSA keys verify RS256, P-256
//! keys ES256, Ed25519 keys EdDSA; symmetric and other keys of the set are ignored. A token
//! must name its key (`kid`), carry `exp` and `iat`, and match `auth.jwks_issuer` and
//! `auth.jwks_audience` when they are set. Its tenant and role are read from the claims named
//! by `auth.jwks_tenant_claim` and `auth.jwks_role_claim`; its id from `jti` (else `sub` and
//! `iat`), so that it can be revoked like Floe's own tokens.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;

use super::{Claims, Role};
use crate::config::AuthConfig;
use crate::{Error, Result};

/// Reads of the set prompted by unknown key ids are at least this far apart.
const UNKNOWN_KID_READS: Duration = Duration::from_secs(1);

#[derive(Default)]
struct Keys {
    by_kid: HashMap<String, (DecodingKey, Algorithm)>,
    read_at: Option<Instant>,
}

/// The identity provider's keys and how its tokens map to Floe's claims.
pub struct Jwks {
    source: String,
    every: Duration,
    issuer: String,
    audience: String,
    tenant_claim: String,
    role_claim: String,
    keys: Mutex<Keys>,
    reading: tokio::sync::Mutex<()>,
    client: reqwest::Client,
}

impl std::fmt::Debug for Jwks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jwks")
            .field("source", &self.source)
            .finish()
    }
}

/// The keys of a set that Floe verifies with, by key id.
fn usable(set: &JwkSet) -> HashMap<String, (DecodingKey, Algorithm)> {
    let mut out = HashMap::new();
    for jwk in &set.keys {
        let Some(kid) = &jwk.common.key_id else {
            continue;
        };
        let algorithm = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => Algorithm::RS256,
            AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => {
                Algorithm::ES256
            }
            AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
                Algorithm::EdDSA
            }
            // Symmetric keys (a shared secret is not a provider's public key) and others.
            _ => continue,
        };
        if let Ok(key) = DecodingKey::from_jwk(jwk) {
            out.insert(kid.clone(), (key, algorithm));
        }
    }
    out
}

impl Jwks {
    /// The provider of `auth.jwks`; `None` when it is empty.
    pub fn new(config: &AuthConfig) -> Option<Jwks> {
        if config.jwks.is_empty() {
            return None;
        }
        Some(Jwks {
            source: config.jwks.clone(),
            every: Duration::from_secs(config.jwks_refresh_secs.max(1)),
            issuer: config.jwks_issuer.clone(),
            audience: config.jwks_audience.clone(),
            tenant_claim: config.jwks_tenant_claim.clone(),
            role_claim: config.jwks_role_claim.clone(),
            keys: Mutex::default(),
            reading: tokio::sync::Mutex::new(()),
            client: reqwest::Client::new(),
        })
    }

    async fn fetch(&self) -> Result<JwkSet> {
        let unavailable = |why: String| Error::Unavailable {
            what: format!("the identity provider's keys ({})", self.source),
            why,
        };
        let text = if self.source.starts_with("http://") || self.source.starts_with("https://") {
            self.client
                .get(&self.source)
                .timeout(Duration::from_secs(10))
                .send()
                .await
                .and_then(|r| r.error_for_status())
                .map_err(|e| unavailable(e.to_string()))?
                .text()
                .await
                .map_err(|e| unavailable(e.to_string()))?
        } else {
            let path = self.source.strip_prefix("file://").unwrap_or(&self.source);
            tokio::fs::read_to_string(path)
                .await
                .map_err(|e| unavailable(e.to_string()))?
        };
        serde_json::from_str(&text).map_err(|e| unavailable(format!("not a JSON Web Key Set: {e}")))
    }

    /// The keys by id and when they were read.
    fn snapshot(&self, kid: &str) -> (Option<(DecodingKey, Algorithm)>, Option<Instant>) {
        let keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        (keys.by_kid.get(kid).cloned(), keys.read_at)
    }

    /// The key `kid` names, reading the set again when it is old, or when it lacks `kid`: at
    /// most once a second for unknown ids (a request that finds the last read too recent
    /// waits for the next one rather than fail: a key the provider just added verifies).
    async fn key(&self, kid: &str) -> Result<Option<(DecodingKey, Algorithm)>> {
        let (found, read_at) = self.snapshot(kid);
        let old = read_at.is_none_or(|t| t.elapsed() >= self.every);
        if found.is_some() && !old {
            return Ok(found);
        }
        if found.is_none()
            && let Some(since) = read_at.map(|t| t.elapsed())
            && since < UNKNOWN_KID_READS
        {
            tokio::time::sleep(UNKNOWN_KID_READS - since).await;
        }
        let _one = self.reading.lock().await;
        // Another request read the set while this one waited: its reading answers.
        let (now_found, now_read_at) = self.snapshot(kid);
        if now_read_at != read_at
            && (now_found.is_some() || now_read_at.is_some_and(|t| t.elapsed() < UNKNOWN_KID_READS))
        {
            return Ok(now_found);
        }
        match self.fetch().await {
            Ok(set) => {
                let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
                keys.by_kid = usable(&set);
                keys.read_at = Some(Instant::now());
                Ok(keys.by_kid.get(kid).cloned())
            }
            // Keys already read keep working while the provider does not answer.
            Err(e) if found.is_some() => {
                tracing::warn!(error = %e, "could not read the identity provider's keys; using those read before");
                Ok(found)
            }
            Err(e) => Err(e),
        }
    }

    /// Verifies a provider's token that names key `kid`, and maps its claims.
    pub async fn verify(&self, token: &str, kid: &str) -> Result<Claims> {
        let refused = |m: &str| Error::Unauthenticated {
            message: m.to_string(),
        };
        let (key, algorithm) = self
            .key(kid)
            .await?
            .ok_or_else(|| refused("token signed by an unknown key"))?;
        let mut validation = Validation::new(algorithm);
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp", "iat"]);
        if self.issuer.is_empty() {
            validation.iss = None;
        } else {
            validation.set_issuer(&[&self.issuer]);
        }
        if self.audience.is_empty() {
            validation.validate_aud = false;
        } else {
            validation.set_audience(&[&self.audience]);
        }
        use jsonwebtoken::errors::ErrorKind as K;
        let data = jsonwebtoken::decode::<Value>(token, &key, &validation).map_err(|e| {
            refused(match e.kind() {
                K::ExpiredSignature => "token expired",
                K::InvalidSignature => "token signature does not verify",
                K::InvalidAlgorithm => "token algorithm not accepted",
                K::InvalidIssuer => "token issuer not accepted",
                K::InvalidAudience => "token audience not accepted",
                K::MissingRequiredClaim(_) => "token lacks a required claim (exp, iat)",
                _ => "malformed token",
            })
        })?;
        self.claims(&data.claims)
    }

    /// Floe's claims of a provider's verified claims.
    fn claims(&self, c: &Value) -> Result<Claims> {
        let text = |name: &str| c.get(name).and_then(Value::as_str).map(str::to_string);
        let number = |name: &str| c.get(name).and_then(Value::as_i64);
        let role: Role = text(&self.role_claim)
            .ok_or_else(|| Error::Unauthenticated {
                message: format!("token lacks the role claim {:?}", self.role_claim),
            })?
            .parse()
            .map_err(|_| Error::Unauthenticated {
                message: format!("token's {:?} claim is not a role", self.role_claim),
            })?;
        let tenant = text(&self.tenant_claim).unwrap_or_default();
        if (role == Role::Operator) != tenant.is_empty() {
            return Err(Error::Unauthenticated {
                message: format!(
                    "token's {:?} claim must name a tenant for a tenant's role, and none for \
                     the operator",
                    self.tenant_claim
                ),
            });
        }
        let (iat, exp) = (number("iat").unwrap_or(0), number("exp").unwrap_or(0));
        let jti = match (text("jti"), text("sub")) {
            (Some(jti), _) => jti,
            (None, Some(sub)) => format!("{sub}@{iat}"),
            (None, None) => {
                return Err(Error::Unauthenticated {
                    message: "token has neither jti nor sub".into(),
                });
            }
        };
        Ok(Claims {
            tenant,
            role,
            scopes: Vec::new(),
            iat,
            exp,
            jti,
        })
    }
}
