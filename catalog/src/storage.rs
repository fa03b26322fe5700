//! Warehouse storage by URL: `file://` (iceberg-rust's local file system storage) and `s3://`
//! (any S3 API: AWS, MinIO, s3s, …) through `object_store`, with credentials from the
//! configuration or from the standard AWS chain (`aws-config`: environment, profile, SSO, web
//! identity, container and instance metadata).
//!
//! iceberg-rust 0.10 ships only local and in-memory storage and lets applications plug in
//! others (its `Storage` and `StorageFactory` traits); this module is Floe's S3 one. Every
//! Iceberg file (data, manifests, manifest lists, table metadata) goes through it.
//!
//! An object appears only once its upload completes: a small file is one `PUT`, a large one a
//! multipart upload that is aborted if the writer is dropped before `close`. So an upload that
//! fails halfway leaves nothing behind that a snapshot could reference.

use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use iceberg::io::{
    FileIO, FileIOBuilder, FileMetadata, FileRead, FileWrite, InputFile, LocalFsStorageFactory,
    OutputFile, Storage, StorageConfig, StorageFactory,
};
use object_store::aws::{AmazonS3Builder, AwsCredential};
use object_store::client::SpawnedReqwestConnector;
use object_store::path::Path;
use object_store::{
    BackoffConfig, Certificate, ClientOptions, CredentialProvider, ObjectStore, ObjectStoreExt,
    PutPayload, RetryConfig, WriteMultipart,
};
use serde::{Deserialize, Serialize};

use crate::config::S3Config;
use crate::{Error, Result};

/// Objects up to this size are one `PUT`; larger ones are multipart uploads of parts this big.
const PART_BYTES: usize = 8 << 20;

/// Where a warehouse lives, parsed from its URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Warehouse {
    /// A local folder (`file:///abs/path`).
    Local { path: String },
    /// A bucket and a key prefix (`s3://bucket/prefix`; `s3a://` is accepted too).
    S3 { bucket: String, prefix: String },
}

impl Warehouse {
    pub fn parse(url: &str) -> Result<Warehouse> {
        if let Some(path) = url.strip_prefix("file://") {
            if !path.starts_with('/') {
                return Err(Error::Config {
                    message: format!("warehouse {url:?}: a file:// URL needs an absolute path"),
                });
            }
            return Ok(Warehouse::Local {
                path: path.to_string(),
            });
        }
        if let Some(rest) = url
            .strip_prefix("s3://")
            .or_else(|| url.strip_prefix("s3a://"))
        {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(Error::Config {
                    message: format!("warehouse {url:?}: no bucket"),
                });
            }
            return Ok(Warehouse::S3 {
                bucket: bucket.to_string(),
                prefix: prefix.trim_matches('/').to_string(),
            });
        }
        Err(Error::Config {
            message: format!(
                "unsupported warehouse URL {url:?}: use file:///PATH or s3://BUCKET[/PREFIX]"
            ),
        })
    }
}

/// The warehouse's data files as an `object_store`, for readers that speak it (DataFusion).
#[derive(Debug, Clone)]
pub struct DataStore {
    /// The URL prefix of every location in the store: `file:///` or `s3://bucket`.
    pub url: String,
    /// `None`: the local file system, which DataFusion registers itself.
    pub store: Option<Arc<dyn ObjectStore>>,
}

impl DataStore {
    /// The store itself (the local file system for a `file://` warehouse).
    pub fn object_store(&self) -> Arc<dyn ObjectStore> {
        match &self.store {
            Some(s) => s.clone(),
            None => Arc::new(object_store::local::LocalFileSystem::new()),
        }
    }

    /// The object key of an Iceberg location in this store (`s3a://` read as `s3://`), or
    /// `None` if the location lies outside it.
    pub fn key(&self, location: &str) -> Option<String> {
        let base = self.url.trim_end_matches('/');
        let location = as_s3(location);
        let rest = location.strip_prefix(base)?;
        rest.starts_with('/')
            .then(|| rest.trim_start_matches('/').to_string())
    }
}

/// `location` with the `s3a://` scheme read as `s3://`: the same objects to Floe's storage.
pub fn as_s3(location: &str) -> std::borrow::Cow<'_, str> {
    match location.strip_prefix("s3a://") {
        Some(rest) => std::borrow::Cow::Owned(format!("s3://{rest}")),
        None => std::borrow::Cow::Borrowed(location),
    }
}

/// Makes the entries of `dir` durable (`fsync` on the directory): a file created or renamed
/// in it survives a power loss only once its directory is synced too.
pub fn sync_dir(dir: &std::path::Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Syncs the directories that hold `locations` (`file://` paths; others are skipped) and
/// their ancestors up to `root`, so that files and the folders made for them survive a
/// power loss. Each directory is synced once.
pub fn sync_dirs_of<'a>(root: &str, locations: impl IntoIterator<Item = &'a str>) -> Result<()> {
    let Some(root) = root.strip_prefix("file://") else {
        return Ok(());
    };
    let root = std::path::Path::new(root);
    let mut dirs = std::collections::BTreeSet::new();
    for location in locations {
        let Some(path) = location.strip_prefix("file://") else {
            continue;
        };
        let mut dir = std::path::Path::new(path).parent();
        while let Some(d) = dir {
            if !d.starts_with(root) || !dirs.insert(d.to_path_buf()) {
                break;
            }
            dir = d.parent();
        }
    }
    for d in dirs {
        sync_dir(&d).map_err(Error::io(d.display().to_string()))?;
    }
    Ok(())
}

/// The `FileIO` every table of the warehouse uses, and the same storage as a [`DataStore`].
/// S3 requests run on `io` whichever runtime makes them: pooled connections then outlive the
/// short-lived runtimes of queries.
pub fn file_io(
    warehouse: &Warehouse,
    s3: &S3Config,
    io: &tokio::runtime::Handle,
) -> Result<(FileIO, DataStore)> {
    match warehouse {
        Warehouse::Local { path } => {
            std::fs::create_dir_all(path).map_err(Error::io(path.clone()))?;
            let data = DataStore {
                url: "file:///".to_string(),
                store: None,
            };
            Ok((
                FileIOBuilder::new(Arc::new(LocalFsStorageFactory)).build(),
                data,
            ))
        }
        Warehouse::S3 { bucket, .. } => {
            let storage = S3Storage::new(bucket, s3, io)?;
            let data = DataStore {
                url: format!("s3://{bucket}"),
                store: Some(storage.object_store()),
            };
            let file_io = FileIOBuilder::new(Arc::new(S3StorageFactory { storage })).build();
            Ok((file_io, data))
        }
    }
}

/// Iceberg storage over one S3 bucket. Cheap to clone: the client is shared.
#[derive(Debug, Clone)]
pub struct S3Storage {
    bucket: String,
    store: Arc<dyn ObjectStore>,
}

/// The HTTP client's options: timeouts, and the certificate authorities of `s3.ca_file`
/// trusted besides the system's.
fn client_options(s3: &S3Config) -> Result<ClientOptions> {
    let mut options = ClientOptions::new()
        .with_timeout(Duration::from_secs(s3.request_timeout_secs))
        .with_connect_timeout(Duration::from_secs(5));
    if !s3.ca_file.is_empty() {
        let pem = std::fs::read(&s3.ca_file).map_err(|e| Error::Config {
            message: format!("s3.ca_file: cannot read {}: {e}", s3.ca_file),
        })?;
        let authorities = Certificate::from_pem_bundle(&pem).map_err(|e| Error::Config {
            message: format!(
                "s3.ca_file: {} holds no valid PEM certificate: {e}",
                s3.ca_file
            ),
        })?;
        if authorities.is_empty() {
            return Err(Error::Config {
                message: format!("s3.ca_file: {} holds no certificate", s3.ca_file),
            });
        }
        for authority in authorities {
            options = options.with_root_certificate(authority);
        }
    }
    Ok(options)
}

impl S3Storage {
    pub fn new(bucket: &str, s3: &S3Config, io: &tokio::runtime::Handle) -> Result<S3Storage> {
        let region = if !s3.region.is_empty() {
            s3.region.clone()
        } else {
            std::env::var("AWS_REGION")
                .or_else(|_| std::env::var("AWS_DEFAULT_REGION"))
                .unwrap_or_else(|_| "us-east-1".to_string())
        };
        let mut builder = AmazonS3Builder::new()
            .with_bucket_name(bucket)
            .with_region(region)
            .with_virtual_hosted_style_request(!s3.path_style)
            .with_retry(RetryConfig {
                backoff: BackoffConfig::default(),
                max_retries: s3.request_retries,
                retry_timeout: Duration::from_secs(s3.request_timeout_secs),
            })
            .with_http_connector(SpawnedReqwestConnector::new(io.clone()))
            .with_client_options(client_options(s3)?);
        if !s3.endpoint.is_empty() {
            builder = builder
                .with_endpoint(s3.endpoint.trim_end_matches('/'))
                .with_allow_http(s3.endpoint.starts_with("http://"));
        }
        match (s3.access_key_id.is_empty(), s3.secret_access_key.is_empty()) {
            (false, false) => {
                builder = builder
                    .with_access_key_id(&s3.access_key_id)
                    .with_secret_access_key(s3.secret_access_key.expose());
                if !s3.session_token.is_empty() {
                    builder = builder.with_token(s3.session_token.expose());
                }
            }
            (true, true) => {
                builder = builder.with_credentials(Arc::new(AwsChain {
                    io: io.clone(),
                    provider: Default::default(),
                    cached: Default::default(),
                }));
            }
            _ => {
                return Err(Error::Config {
                    message: "s3.access_key_id and s3.secret_access_key must be set together \
                              (or neither, to use the AWS credential chain)"
                        .into(),
                });
            }
        }
        match s3.sse.as_str() {
            "" => {}
            "AES256" => {
                let key = "aws_server_side_encryption"
                    .parse::<object_store::aws::AmazonS3ConfigKey>()
                    .map_err(|e| Error::Config {
                        message: format!("s3.sse: {e}"),
                    })?;
                builder = builder.with_config(key, "AES256");
            }
            "aws:kms" => {
                builder = builder.with_sse_kms_encryption(&s3.sse_kms_key_id);
            }
            other => {
                return Err(Error::Config {
                    message: format!(
                        "s3.sse must be \"\", \"AES256\" (SSE-S3) or \"aws:kms\" (SSE-KMS), \
                         got {other:?}"
                    ),
                });
            }
        }
        if !s3.sse_kms_key_id.is_empty() && s3.sse != "aws:kms" {
            return Err(Error::Config {
                message: "s3.sse_kms_key_id needs s3.sse = \"aws:kms\"".into(),
            });
        }
        let store = builder.build().map_err(|e| Error::Config {
            message: format!("S3 warehouse: {e}"),
        })?;
        Ok(S3Storage {
            bucket: bucket.to_string(),
            store: Arc::new(store),
        })
    }

    /// The object key of an `s3://bucket/key` location in this storage's bucket.
    fn key(&self, location: &str) -> iceberg::Result<Path> {
        let rest = location
            .strip_prefix("s3://")
            .or_else(|| location.strip_prefix("s3a://"))
            .ok_or_else(|| invalid(format!("not an s3:// location: {location}")))?;
        let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket != self.bucket {
            return Err(invalid(format!(
                "{location} is outside the warehouse bucket {}",
                self.bucket
            )));
        }
        Path::parse(key).map_err(|e| invalid(format!("{location}: {e}")))
    }

    /// The underlying object store (for readers that speak `object_store` directly).
    pub fn object_store(&self) -> Arc<dyn ObjectStore> {
        self.store.clone()
    }
}

fn invalid(message: String) -> iceberg::Error {
    iceberg::Error::new(iceberg::ErrorKind::DataInvalid, message)
}

fn io_error(context: &str, path: &str, e: object_store::Error) -> iceberg::Error {
    iceberg::Error::new(
        iceberg::ErrorKind::Unexpected,
        format!("{context} {path}: {e}"),
    )
    .with_source(e)
}

// `Storage` must be serialisable (iceberg-rust can ship it across processes). Floe never does:
// it serialises the bucket name only, and refuses to deserialise, rather than ship credentials.
impl Serialize for S3Storage {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.bucket)
    }
}

impl<'de> Deserialize<'de> for S3Storage {
    fn deserialize<D: serde::Deserializer<'de>>(_: D) -> std::result::Result<Self, D::Error> {
        Err(serde::de::Error::custom(
            "Floe's S3 storage is built from configuration, not deserialised",
        ))
    }
}

#[async_trait]
#[typetag::serde(name = "floe-s3")]
impl Storage for S3Storage {
    async fn exists(&self, path: &str) -> iceberg::Result<bool> {
        match self.store.head(&self.key(path)?).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(io_error("checking", path, e)),
        }
    }

    async fn metadata(&self, path: &str) -> iceberg::Result<FileMetadata> {
        let meta = self
            .store
            .head(&self.key(path)?)
            .await
            .map_err(|e| io_error("reading metadata of", path, e))?;
        Ok(FileMetadata { size: meta.size })
    }

    async fn read(&self, path: &str) -> iceberg::Result<Bytes> {
        let got = self
            .store
            .get(&self.key(path)?)
            .await
            .map_err(|e| io_error("reading", path, e))?;
        got.bytes().await.map_err(|e| io_error("reading", path, e))
    }

    async fn reader(&self, path: &str) -> iceberg::Result<Box<dyn FileRead>> {
        Ok(Box::new(S3Read {
            store: self.store.clone(),
            key: self.key(path)?,
            location: path.to_string(),
        }))
    }

    async fn write(&self, path: &str, bs: Bytes) -> iceberg::Result<()> {
        self.store
            .put(&self.key(path)?, bs.into())
            .await
            .map_err(|e| io_error("writing", path, e))?;
        Ok(())
    }

    async fn writer(&self, path: &str) -> iceberg::Result<Box<dyn FileWrite>> {
        Ok(Box::new(S3Write::new(
            self.store.clone(),
            self.key(path)?,
            path.to_string(),
        )))
    }

    async fn delete(&self, path: &str) -> iceberg::Result<()> {
        match self.store.delete(&self.key(path)?).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(io_error("deleting", path, e)),
        }
    }

    async fn delete_prefix(&self, path: &str) -> iceberg::Result<()> {
        // `object_store` matches prefixes by whole path segments: deleting `…/t1` never
        // touches `…/t10`.
        let prefix = self.key(path)?;
        let locations = self
            .store
            .list(Some(&prefix))
            .map(|m| m.map(|m| m.location));
        let mut deleted = self.store.delete_stream(locations.boxed());
        while let Some(r) = deleted.next().await {
            match r {
                Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(io_error("deleting under", path, e)),
            }
        }
        Ok(())
    }

    async fn delete_stream(&self, paths: BoxStream<'static, String>) -> iceberg::Result<()> {
        let mut paths = paths;
        while let Some(p) = paths.next().await {
            self.delete(&p).await?;
        }
        Ok(())
    }

    fn new_input(&self, path: &str) -> iceberg::Result<InputFile> {
        self.key(path)?;
        Ok(InputFile::new(Arc::new(self.clone()), path.to_string()))
    }

    fn new_output(&self, path: &str) -> iceberg::Result<OutputFile> {
        self.key(path)?;
        Ok(OutputFile::new(Arc::new(self.clone()), path.to_string()))
    }
}

/// Builds nothing: it hands out the storage built from configuration when the catalog opened.
#[derive(Debug, Serialize, Deserialize)]
struct S3StorageFactory {
    storage: S3Storage,
}

#[typetag::serde(name = "floe-s3-factory")]
impl StorageFactory for S3StorageFactory {
    fn build(&self, _: &StorageConfig) -> iceberg::Result<Arc<dyn Storage>> {
        Ok(Arc::new(self.storage.clone()))
    }
}

struct S3Read {
    store: Arc<dyn ObjectStore>,
    key: Path,
    location: String,
}

#[async_trait]
impl FileRead for S3Read {
    async fn read(&self, range: Range<u64>) -> iceberg::Result<Bytes> {
        self.store
            .get_range(&self.key, range)
            .await
            .map_err(|e| io_error("reading", &self.location, e))
    }
}

struct S3Write {
    store: Arc<dyn ObjectStore>,
    key: Path,
    location: String,
    state: WriteState,
}

enum WriteState {
    /// Below one part: kept in memory, sent as one `PUT` on close.
    Buffer(Vec<Bytes>, usize),
    /// A multipart upload, parts in flight.
    Multipart(WriteMultipart),
    /// Closed, failed or aborted.
    Done,
}

impl S3Write {
    fn new(store: Arc<dyn ObjectStore>, key: Path, location: String) -> S3Write {
        S3Write {
            store,
            key,
            location,
            state: WriteState::Buffer(Vec::new(), 0),
        }
    }

    fn closed(&self) -> iceberg::Error {
        invalid(format!("{} is already closed or failed", self.location))
    }

    /// Aborts a multipart upload in the background: parts of an upload never completed are
    /// invisible, but kept (and billed) until aborted.
    fn abort(&mut self) {
        if let WriteState::Multipart(upload) = std::mem::replace(&mut self.state, WriteState::Done)
            && let Ok(handle) = tokio::runtime::Handle::try_current()
        {
            handle.spawn(async move {
                let _ = upload.abort().await;
            });
        }
    }
}

#[async_trait]
impl FileWrite for S3Write {
    async fn write(&mut self, bs: Bytes) -> iceberg::Result<()> {
        match &mut self.state {
            WriteState::Buffer(chunks, size) => {
                *size += bs.len();
                chunks.push(bs);
                if *size >= PART_BYTES {
                    let chunks = std::mem::take(chunks);
                    self.state = WriteState::Done;
                    let upload = self
                        .store
                        .put_multipart(&self.key)
                        .await
                        .map_err(|e| io_error("starting the upload of", &self.location, e))?;
                    let mut upload = WriteMultipart::new_with_chunk_size(upload, PART_BYTES);
                    for c in chunks {
                        upload.put(c);
                    }
                    self.state = WriteState::Multipart(upload);
                }
            }
            WriteState::Multipart(upload) => upload.put(bs),
            WriteState::Done => return Err(self.closed()),
        }
        // Bounded memory: at most a few parts in flight per file.
        if let WriteState::Multipart(upload) = &mut self.state
            && let Err(e) = upload.wait_for_capacity(4).await
        {
            self.abort();
            return Err(io_error("uploading", &self.location, e));
        }
        Ok(())
    }

    async fn close(&mut self) -> iceberg::Result<()> {
        match std::mem::replace(&mut self.state, WriteState::Done) {
            WriteState::Buffer(chunks, _) => {
                let payload: PutPayload = chunks.into_iter().collect();
                self.store
                    .put(&self.key, payload)
                    .await
                    .map_err(|e| io_error("writing", &self.location, e))?;
                Ok(())
            }
            WriteState::Multipart(mut upload) => {
                if let Err(e) = upload.wait_for_capacity(0).await {
                    let _ = upload.abort().await;
                    return Err(io_error("uploading", &self.location, e));
                }
                // Completing aborts the upload itself when it fails.
                upload
                    .finish()
                    .await
                    .map_err(|e| io_error("completing the upload of", &self.location, e))?;
                Ok(())
            }
            WriteState::Done => Err(self.closed()),
        }
    }
}

impl Drop for S3Write {
    fn drop(&mut self) {
        self.abort();
    }
}

/// Credentials from the standard AWS chain, cached until five minutes before they expire.
#[derive(Debug)]
struct AwsChain {
    /// Where the chain's own HTTP requests (metadata services, STS, SSO) run.
    io: tokio::runtime::Handle,
    provider:
        tokio::sync::OnceCell<Option<aws_credential_types::provider::SharedCredentialsProvider>>,
    cached: Mutex<Option<(Arc<AwsCredential>, Option<SystemTime>)>>,
}

#[async_trait]
impl CredentialProvider for AwsChain {
    type Credential = AwsCredential;

    async fn get_credential(&self) -> object_store::Result<Arc<AwsCredential>> {
        let fresh_until = SystemTime::now() + Duration::from_secs(300);
        if let Some((c, expiry)) = &*self.cached.lock().unwrap_or_else(|p| p.into_inner())
            && expiry.is_none_or(|e| e > fresh_until)
        {
            return Ok(c.clone());
        }
        let generic = |message: String| object_store::Error::Generic {
            store: "S3",
            source: message.into(),
        };
        let provider = self
            .provider
            .get_or_init(|| async {
                let loading = self.io.spawn(async {
                    aws_config::defaults(aws_config::BehaviorVersion::latest())
                        .load()
                        .await
                        .credentials_provider()
                });
                loading.await.ok().flatten()
            })
            .await
            .clone()
            .ok_or_else(|| {
                generic(
                    "no S3 credentials: set s3.access_key_id and s3.secret_access_key, or \
                     configure the AWS credential chain"
                        .into(),
                )
            })?;
        use aws_credential_types::provider::ProvideCredentials;
        let creds = self
            .io
            .spawn(async move { provider.provide_credentials().await })
            .await
            .map_err(|e| generic(format!("AWS credential chain: {e}")))?
            .map_err(|e| generic(format!("AWS credential chain: {e}")))?;
        let credential = Arc::new(AwsCredential {
            key_id: creds.access_key_id().to_string(),
            secret_key: creds.secret_access_key().to_string(),
            token: creds.session_token().map(str::to_string),
        });
        *self.cached.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((credential.clone(), creds.expiry()));
        Ok(credential)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_store_keys_stay_inside_the_store() {
        let local = DataStore {
            url: "file:///".into(),
            store: None,
        };
        assert_eq!(
            local.key("file:///tmp/w/t/data/x.parquet").as_deref(),
            Some("tmp/w/t/data/x.parquet")
        );
        let s3 = DataStore {
            url: "s3://b".into(),
            store: None,
        };
        assert_eq!(
            s3.key("s3a://b/w/x.parquet").as_deref(),
            Some("w/x.parquet")
        );
        assert_eq!(s3.key("s3://bb/w/x.parquet"), None);
        assert_eq!(s3.key("s3://other/w/x.parquet"), None);
        // (Both schemes name the same objects, wherever a location is compared.)
        assert_eq!(as_s3("s3a://b/w"), "s3://b/w");
        assert_eq!(as_s3("s3://b/w"), "s3://b/w");
        assert_eq!(as_s3("file:///s3a://"), "file:///s3a://");
    }

    #[test]
    fn warehouse_urls() {
        assert_eq!(
            Warehouse::parse("s3://b/p/q/").unwrap(),
            Warehouse::S3 {
                bucket: "b".into(),
                prefix: "p/q".into()
            }
        );
        assert_eq!(
            Warehouse::parse("s3a://b").unwrap(),
            Warehouse::S3 {
                bucket: "b".into(),
                prefix: "".into()
            }
        );
        assert!(Warehouse::parse("file://relative").is_err());
        assert!(Warehouse::parse("gs://b").is_err());
        assert!(Warehouse::parse("s3:///x").is_err());
    }

    #[test]
    fn keys_stay_in_the_bucket() {
        let s3 = S3Config {
            endpoint: "http://127.0.0.1:1".into(),
            access_key_id: "a".into(),
            secret_access_key: "b".into(),
            ..S3Config::default()
        };
        let rt = tokio::runtime::Runtime::new().unwrap();
        let s = S3Storage::new("bucket", &s3, rt.handle()).unwrap();
        assert_eq!(
            s.key("s3://bucket/t/events/x").unwrap().as_ref(),
            "t/events/x"
        );
        assert!(s.key("s3://other/t").is_err());
        assert!(s.key("file:///t").is_err());
    }

    #[test]
    fn half_configured_credentials_and_bad_sse_are_refused() {
        let s3 = S3Config {
            access_key_id: "a".into(),
            ..S3Config::default()
        };
        let rt = tokio::runtime::Runtime::new().unwrap();
        assert!(S3Storage::new("b", &s3, rt.handle()).is_err());
        let s3 = S3Config {
            sse: "rot13".into(),
            ..S3Config::default()
        };
        assert!(S3Storage::new("b", &s3, rt.handle()).is_err());
    }

    #[test]
    fn a_ca_file_that_cannot_be_read_or_holds_no_certificate_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let refused = |path: &std::path::Path| {
            let s3 = S3Config {
                ca_file: path.display().to_string(),
                ..S3Config::default()
            };
            let rt = tokio::runtime::Runtime::new().unwrap();
            match S3Storage::new("b", &s3, rt.handle()) {
                Err(e @ Error::Config { .. }) => e.to_string(),
                other => panic!("expected a configuration error, got {other:?}"),
            }
        };
        let missing = dir.path().join("missing.pem");
        assert!(refused(&missing).contains("cannot read"));
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        assert!(refused(&empty).contains("s3.ca_file"));
    }
}
