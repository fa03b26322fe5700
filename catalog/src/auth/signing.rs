//! Floe's own signing keys: HS256 secrets, each with an id (`kid`) that the tokens it signs
//! carry in their header. The newest key signs; older ones verify until their retirement time,
//! so `floe keys rotate` replaces the key without cutting off the tokens already issued.
//!
//! The key file (`auth.signing_key_file`, mode 0600) has one key per line:
//! `<kid> <secret> [<verify until, ms since the epoch>]`, the signing key last; `#` starts a
//! comment. A file holding only a secret (written before keys had ids) is one key, whose id is
//! derived from the secret. Every process reading the file notices a change within a second
//! (its modification time is checked at most once a second), so a rotation made by the command
//! line reaches running servers without a restart.
//!
//! A token without a `kid` (issued before keys had ids) is verified by the oldest key.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use sha2::{Digest, Sha256};

use super::{Claims, Role};
use crate::tenant::TenantId;
use crate::{Error, Result};

/// The key file is looked at again at most this often.
const RECHECK: Duration = Duration::from_secs(1);

/// One key as the file holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyLine {
    pub kid: String,
    pub secret: String,
    /// Verifies tokens until then (ms since the epoch); `None`: for as long as it is kept.
    pub until_ms: Option<i64>,
}

fn derived_kid(secret: &str) -> String {
    let digest = Sha256::digest(secret.as_bytes());
    let hex: String = digest.iter().take(4).map(|b| format!("{b:02x}")).collect();
    format!("k-{hex}")
}

/// Parses the key file's text (see the module's documentation).
pub fn parse_keys(text: &str) -> Result<Vec<KeyLine>> {
    let mut keys = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        let bad = |why: &str| Error::Config {
            message: format!("signing key file, line {}: {why}", n + 1),
        };
        let key = match words.as_slice() {
            [secret] => KeyLine {
                kid: derived_kid(secret),
                secret: secret.to_string(),
                until_ms: None,
            },
            [kid, secret] | [kid, secret, _] => KeyLine {
                kid: kid.to_string(),
                secret: secret.to_string(),
                until_ms: match words.get(2) {
                    Some(t) => Some(
                        t.parse()
                            .map_err(|_| bad("the third word must be a time in ms"))?,
                    ),
                    None => None,
                },
            },
            _ => return Err(bad("expected <kid> <secret> [<verify until ms>]")),
        };
        if key.secret.len() < 64 {
            return Err(bad("the secret is shorter than 64 characters"));
        }
        keys.push(key);
    }
    if keys.is_empty() {
        return Err(Error::Config {
            message: "the signing key file holds no key".into(),
        });
    }
    Ok(keys)
}

fn format_keys(keys: &[KeyLine]) -> String {
    let mut out = String::from(
        "# Floe signing keys: <kid> <secret> [<verify until, ms since the epoch>]; the last signs.\n",
    );
    for k in keys {
        match k.until_ms {
            Some(t) => out.push_str(&format!("{} {} {t}\n", k.kid, k.secret)),
            None => out.push_str(&format!("{} {}\n", k.kid, k.secret)),
        }
    }
    out
}

fn new_key() -> KeyLine {
    let secret: [u8; 32] = rand::random();
    let id: [u8; 4] = rand::random();
    KeyLine {
        kid: format!(
            "k-{}",
            id.iter().map(|b| format!("{b:02x}")).collect::<String>()
        ),
        secret: secret.iter().map(|b| format!("{b:02x}")).collect(),
        until_ms: None,
    }
}

/// Writes the key file whole: to a new file (mode 0600), synced, renamed over the old one.
fn write_keys(path: &Path, keys: &[KeyLine]) -> Result<()> {
    let ctx = path.display().to_string();
    let tmp = path.with_extension(format!("tmp-{}", uuid::Uuid::now_v7().simple()));
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut file = opts.open(&tmp).map_err(Error::io(ctx.clone()))?;
    file.write_all(format_keys(keys).as_bytes())
        .map_err(Error::io(ctx.clone()))?;
    file.sync_all().map_err(Error::io(ctx.clone()))?;
    std::fs::rename(&tmp, path).map_err(Error::io(ctx))?;
    if let Some(parent) = path.parent() {
        crate::storage::sync_dir(parent).map_err(Error::io(parent.display().to_string()))?;
    }
    Ok(())
}

/// A file that exists while a rotation runs (removed when dropped).
struct RotationLock(PathBuf);

impl RotationLock {
    fn take(path: &Path) -> Result<RotationLock> {
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
        {
            Ok(_) => Ok(RotationLock(path.to_path_buf())),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Err(Error::Config {
                message: format!(
                    "another rotation is running ({} exists; remove it if none is)",
                    path.display()
                ),
            }),
            Err(e) => Err(Error::io(path.display().to_string())(e)),
        }
    }
}

impl Drop for RotationLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// What a rotation did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rotated {
    /// The new signing key's id.
    pub kid: String,
    /// The keys still verifying, with until when (ms since the epoch).
    pub retiring: Vec<(String, i64)>,
    /// Keys dropped because their time had passed.
    pub dropped: Vec<String>,
}

/// Adds a new signing key to the file at `path`; the keys before it verify for `old_valid_for`
/// more (those already retiring keep their earlier time), and keys past their time are dropped.
pub fn rotate(path: &Path, old_valid_for: Duration) -> Result<Rotated> {
    // One rotation at a time: two at once would each drop the other's new key.
    let lock_path = path.with_extension("rotating");
    let _lock = RotationLock::take(&lock_path)?;
    let text = std::fs::read_to_string(path).map_err(Error::io(path.display().to_string()))?;
    let now = chrono::Utc::now().timestamp_millis();
    let until = now.saturating_add(old_valid_for.as_millis().min(i64::MAX as u128) as i64);
    let (mut kept, mut dropped) = (Vec::new(), Vec::new());
    for mut k in parse_keys(&text)? {
        if k.until_ms.is_some_and(|t| t <= now) {
            dropped.push(k.kid);
            continue;
        }
        k.until_ms = Some(k.until_ms.map_or(until, |t| t.min(until)));
        kept.push(k);
    }
    let retiring = kept
        .iter()
        .map(|k| (k.kid.clone(), k.until_ms.unwrap_or(until)))
        .collect();
    let new = new_key();
    let kid = new.kid.clone();
    kept.push(new);
    write_keys(path, &kept)?;
    Ok(Rotated {
        kid,
        retiring,
        dropped,
    })
}

/// A key ready to sign or verify.
struct Key {
    kid: String,
    encoding: EncodingKey,
    decoding: DecodingKey,
    until_ms: Option<i64>,
}

impl Key {
    fn of(line: &KeyLine) -> Key {
        Key {
            kid: line.kid.clone(),
            encoding: EncodingKey::from_secret(line.secret.as_bytes()),
            decoding: DecodingKey::from_secret(line.secret.as_bytes()),
            until_ms: line.until_ms,
        }
    }
}

struct Ring {
    keys: Vec<Key>,
    checked: Instant,
    modified: Option<Fingerprint>,
}

/// Signs and verifies tokens with the keys of the key file.
#[derive(Clone)]
pub struct TokenAuthority {
    path: Option<PathBuf>,
    ring: Arc<RwLock<Ring>>,
    validation: Validation,
}

impl std::fmt::Debug for TokenAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenAuthority { keys: <redacted> }")
    }
}

/// What tells a changed key file: its modification time, size and (on Unix) inode, as a
/// rotation replaces the file by a rename (a coarse clock can give two versions one time).
type Fingerprint = (Option<SystemTime>, u64, u64);

fn modified(path: &Path) -> Option<Fingerprint> {
    let m = std::fs::metadata(path).ok()?;
    #[cfg(unix)]
    let ino = std::os::unix::fs::MetadataExt::ino(&m);
    #[cfg(not(unix))]
    let ino = 0;
    Some((m.modified().ok(), m.len(), ino))
}

impl TokenAuthority {
    fn with_keys(keys: &[KeyLine], path: Option<PathBuf>) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp", "iat"]);
        let modified = path.as_deref().and_then(modified);
        TokenAuthority {
            path,
            ring: Arc::new(RwLock::new(Ring {
                keys: keys.iter().map(Key::of).collect(),
                checked: Instant::now(),
                modified,
            })),
            validation,
        }
    }

    /// One key, held in memory only (tests, tools).
    pub fn from_secret(secret: &[u8]) -> Self {
        let secret = String::from_utf8_lossy(secret).into_owned();
        Self::with_keys(
            &[KeyLine {
                kid: derived_kid(&secret),
                secret,
                until_ms: None,
            }],
            None,
        )
    }

    /// Loads the key file at `path`, generating it (one key, mode 0600) when it does not
    /// exist. Two processes starting at once agree on one key: the file is created
    /// exclusively.
    pub fn load_or_create(path: &Path) -> Result<Self> {
        let ctx = path.display().to_string();
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(Error::io(parent.display().to_string()))?;
        }
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        match opts.open(path) {
            Ok(mut file) => {
                file.write_all(format_keys(&[new_key()]).as_bytes())
                    .map_err(Error::io(ctx.clone()))?;
                file.sync_all().map_err(Error::io(ctx))?;
                // The new name is durable only once its directory is.
                if let Some(parent) = path.parent() {
                    crate::storage::sync_dir(parent)
                        .map_err(Error::io(parent.display().to_string()))?;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(Error::io(ctx)(e)),
        }
        // A concurrent creator may not have written the key yet: wait briefly for it.
        let mut last = None;
        for _ in 0..50 {
            let text =
                std::fs::read_to_string(path).map_err(Error::io(path.display().to_string()))?;
            match parse_keys(&text) {
                Ok(keys) => return Ok(Self::with_keys(&keys, Some(path.to_path_buf()))),
                Err(e) => last = Some(e),
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(last.unwrap_or_else(|| Error::Config {
            message: format!("signing key file {} is empty", path.display()),
        }))
    }

    /// Reads the key file again if it changed (looked at at most once a second). A file that
    /// cannot be read or parsed leaves the keys as they were.
    fn refresh(&self) {
        let Some(path) = &self.path else { return };
        {
            let ring = self.ring.read().unwrap_or_else(|p| p.into_inner());
            if ring.checked.elapsed() < RECHECK {
                return;
            }
        }
        let mut ring = self.ring.write().unwrap_or_else(|p| p.into_inner());
        if ring.checked.elapsed() < RECHECK {
            return;
        }
        ring.checked = Instant::now();
        let now = modified(path);
        if now == ring.modified {
            return;
        }
        match std::fs::read_to_string(path)
            .map_err(Error::io(path.display().to_string()))
            .and_then(|t| parse_keys(&t))
        {
            Ok(keys) => {
                ring.keys = keys.iter().map(Key::of).collect();
                ring.modified = now;
                tracing::info!(keys = ring.keys.len(), "signing keys read again");
            }
            Err(e) => {
                tracing::warn!(error = %e, "signing key file unreadable; keeping the keys read before")
            }
        }
    }

    /// Issues a token for `tenant` with `role` (a tenant's role: not `operator`), valid for
    /// `ttl`.
    pub fn issue(&self, tenant: &TenantId, role: Role, ttl: Duration) -> Result<String> {
        if role == Role::Operator {
            return Err(Error::invalid(
                "the operator role is bound to no tenant: issue it without one",
            ));
        }
        self.sign(tenant.to_string(), role, ttl)
    }

    /// Issues a platform operator's token (bound to no tenant), valid for `ttl`.
    pub fn issue_operator(&self, ttl: Duration) -> Result<String> {
        self.sign(String::new(), Role::Operator, ttl)
    }

    fn sign(&self, tenant: String, role: Role, ttl: Duration) -> Result<String> {
        self.refresh();
        let now = chrono::Utc::now().timestamp();
        let claims = Claims {
            tenant,
            role,
            scopes: Vec::new(),
            iat: now,
            exp: now.saturating_add(ttl.as_secs() as i64),
            jti: uuid::Uuid::now_v7().to_string(),
        };
        let ring = self.ring.read().unwrap_or_else(|p| p.into_inner());
        let key = ring
            .keys
            .last()
            .ok_or_else(|| Error::internal("no signing key"))?;
        if key
            .until_ms
            .is_some_and(|t| t <= chrono::Utc::now().timestamp_millis())
        {
            return Err(Error::Config {
                message: format!(
                    "the signing key {} is retired: run floe keys rotate to make a new one",
                    key.kid
                ),
            });
        }
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(key.kid.clone());
        jsonwebtoken::encode(&header, &claims, &key.encoding)
            .map_err(|e| Error::internal(format!("signing a token: {e}")))
    }

    /// Decodes `token` with the key its header names (the oldest key for a token naming none),
    /// refusing a retired key's.
    fn decode(&self, token: &str, validation: &Validation) -> Result<Claims> {
        use jsonwebtoken::errors::ErrorKind as K;
        let unauthenticated = |message: &str| Error::Unauthenticated {
            message: message.to_string(),
        };
        let header =
            jsonwebtoken::decode_header(token).map_err(|_| unauthenticated("malformed token"))?;
        self.refresh();
        let ring = self.ring.read().unwrap_or_else(|p| p.into_inner());
        let key = match &header.kid {
            Some(kid) => ring
                .keys
                .iter()
                .find(|k| &k.kid == kid)
                .ok_or_else(|| unauthenticated("token signed by an unknown key (kid)"))?,
            None => ring
                .keys
                .first()
                .ok_or_else(|| unauthenticated("no key verifies tokens"))?,
        };
        if key
            .until_ms
            .is_some_and(|t| t <= chrono::Utc::now().timestamp_millis())
        {
            return Err(unauthenticated("token signed by a retired key"));
        }
        jsonwebtoken::decode::<Claims>(token, &key.decoding, validation)
            .map(|data| data.claims)
            .map_err(|e| {
                unauthenticated(match e.kind() {
                    K::ExpiredSignature => "token expired",
                    K::InvalidSignature => "token signature does not verify",
                    K::InvalidAlgorithm => "token algorithm not accepted",
                    _ => "malformed token",
                })
            })
    }

    /// Verifies signature and expiry. Every failure is `Unauthenticated`, with a message that
    /// says which check failed but nothing about the key.
    pub fn verify(&self, token: &str) -> Result<Claims> {
        self.decode(token, &self.validation)
    }

    /// The claims of a token whose signature verifies, expired or not (to know whom a refused
    /// request was: never to let one through).
    pub fn verify_signature(&self, token: &str) -> Option<Claims> {
        let mut validation = self.validation.clone();
        validation.validate_exp = false;
        validation.set_required_spec_claims::<&str>(&[]);
        self.decode(token, &validation).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant() -> TenantId {
        TenantId::parse("acme").unwrap()
    }

    #[test]
    fn a_rotation_signs_with_the_new_key_and_the_old_verifies_until_its_time() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("signing.key");
        let before = TokenAuthority::load_or_create(&path).unwrap();
        let old = before
            .issue(&tenant(), Role::Admin, Duration::from_secs(600))
            .unwrap();
        let old_kid = jsonwebtoken::decode_header(&old).unwrap().kid.unwrap();

        let r = rotate(&path, Duration::from_secs(3600)).unwrap();
        assert_ne!(r.kid, old_kid);
        assert_eq!(r.retiring.len(), 1);
        let after = TokenAuthority::load_or_create(&path).unwrap();
        let new = after
            .issue(&tenant(), Role::Admin, Duration::from_secs(600))
            .unwrap();
        assert_eq!(jsonwebtoken::decode_header(&new).unwrap().kid, Some(r.kid));
        assert!(after.verify(&old).is_ok(), "the old key still verifies");
        assert!(after.verify(&new).is_ok());

        // Retired: its tokens are refused, and the next rotation drops it.
        let retired = rotate(&path, Duration::ZERO).unwrap();
        assert!(retired.dropped.is_empty());
        let later = TokenAuthority::load_or_create(&path).unwrap();
        std::thread::sleep(Duration::from_millis(5));
        let e = later.verify(&old).unwrap_err();
        assert!(e.to_string().contains("retired"), "{e}");
        assert!(
            later
                .verify(&new)
                .unwrap_err()
                .to_string()
                .contains("retired")
        );
        let dropped = rotate(&path, Duration::from_secs(60)).unwrap();
        assert_eq!(dropped.dropped.len(), 2);
    }

    #[test]
    fn a_running_authority_reads_a_rotation_within_a_second() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("signing.key");
        let running = TokenAuthority::load_or_create(&path).unwrap();
        let r = rotate(&path, Duration::from_secs(3600)).unwrap();
        let elsewhere = TokenAuthority::load_or_create(&path).unwrap();
        let new = elsewhere
            .issue(&tenant(), Role::Viewer, Duration::from_secs(60))
            .unwrap();
        std::thread::sleep(RECHECK + Duration::from_millis(50));
        running.verify(&new).unwrap();
        let signed = running
            .issue(&tenant(), Role::Viewer, Duration::from_secs(60))
            .unwrap();
        assert_eq!(
            jsonwebtoken::decode_header(&signed).unwrap().kid,
            Some(r.kid)
        );
    }

    #[test]
    fn a_key_file_of_one_secret_is_one_key_and_tokens_without_kid_use_the_oldest() {
        let secret = "a".repeat(64);
        let keys = parse_keys(&format!("{secret}\n")).unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].kid, derived_kid(&secret));
        let a = TokenAuthority::with_keys(&keys, None);
        let claims = Claims {
            tenant: "acme".into(),
            role: Role::Analyst,
            scopes: vec![],
            iat: chrono::Utc::now().timestamp(),
            exp: chrono::Utc::now().timestamp() + 60,
            jti: "j".into(),
        };
        let no_kid = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap();
        assert!(a.verify(&no_kid).is_ok());
        let mut unknown = Header::new(Algorithm::HS256);
        unknown.kid = Some("k-nope".into());
        let t = jsonwebtoken::encode(
            &unknown,
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap();
        assert!(
            a.verify(&t)
                .unwrap_err()
                .to_string()
                .contains("unknown key")
        );
        for bad in ["", "short", "kid secret notanumber", "a b c d"] {
            assert!(parse_keys(bad).is_err(), "{bad:?}");
        }
    }
}
