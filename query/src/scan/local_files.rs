//! Reading a local warehouse's files on the query's own threads.
//!
//! `object_store`'s local file system hands every read to a blocking thread and waits for it
//! (one hand-over to read a range, two to open a file and read it), so a query over a hundred
//! small files wakes threads several hundred times. Each wake-up is a wait for a core, and on a
//! busy machine those waits, not the reading, were most of a short query's time (a tenant's
//! 12 ms query spent 20-25 ms waiting to run while another tenant's work held the cores).
//!
//! [`QueryFiles`] reads the ranges a query asks for where it asks, with positioned reads: every
//! query runs on a runtime of its own (`trino::query`), so a read that waits for the disk holds
//! that query's worker, not another query's, and reads of the page cache take microseconds. A
//! read inside a step also holds the step's CPU slot (`cpu.rs`) and is charged to the tenant
//! as CPU time; past the slice the slot counts as free, so other tenants wait at most a slice
//! for it. Everything else (heads, conditional or unranged reads, listing, writing, renaming)
//! goes to the local file system as before. Remote stores (S3) are not affected.

use std::fmt;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use datafusion::object_store::local::LocalFileSystem;
use datafusion::object_store::path::Path;
use datafusion::object_store::{
    CopyOptions, Error, GetOptions, GetResult, GetResultPayload, ListResult, MultipartUpload,
    ObjectMeta, ObjectStore, PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions,
    Result,
};
use futures::stream::BoxStream;

/// The local file system, its reads made on the calling thread.
#[derive(Debug)]
pub struct QueryFiles {
    inner: LocalFileSystem,
}

impl QueryFiles {
    pub fn new() -> Arc<QueryFiles> {
        Arc::new(QueryFiles {
            inner: LocalFileSystem::new(),
        })
    }

    fn open(&self, location: &Path) -> Result<(std::fs::File, std::fs::Metadata)> {
        let path = self.inner.path_to_filesystem(location)?;
        let failed = |e: std::io::Error| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Error::NotFound {
                    path: path.display().to_string(),
                    source: Box::new(e),
                }
            } else {
                generic(format!("opening {}: {e}", path.display()))
            }
        };
        let file = std::fs::File::open(&path).map_err(failed)?;
        let metadata = file.metadata().map_err(failed)?;
        if !metadata.is_file() {
            return Err(Error::NotFound {
                path: path.display().to_string(),
                source: "not a file".into(),
            });
        }
        Ok((file, metadata))
    }
}

impl fmt::Display for QueryFiles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "QueryFiles({})", self.inner)
    }
}

fn generic(message: String) -> Error {
    Error::Generic {
        store: "QueryFiles",
        source: message.into(),
    }
}

/// Reads `range` of `file` whole (positioned reads, so one open file serves every range).
fn read_range(file: &std::fs::File, location: &Path, range: Range<u64>) -> Result<Bytes> {
    let mut buf = vec![0u8; (range.end - range.start) as usize];
    file.read_exact_at(&mut buf, range.start).map_err(|e| {
        generic(format!(
            "reading bytes {}..{} of {location}: {e}",
            range.start, range.end
        ))
    })?;
    Ok(Bytes::from(buf))
}

#[async_trait]
impl ObjectStore for QueryFiles {
    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        // Plain ranged reads only (a Parquet reader knows each file's size): a whole file is
        // left to the local file system, which streams it in chunks, and so is any condition.
        let conditional = options.head
            || options.if_match.is_some()
            || options.if_none_match.is_some()
            || options.if_modified_since.is_some()
            || options.if_unmodified_since.is_some()
            || options.version.is_some();
        let Some(wanted) = options.range.clone().filter(|_| !conditional) else {
            return self.inner.get_opts(location, options).await;
        };
        let (file, metadata) = self.open(location)?;
        let size = metadata.len();
        let range = wanted
            .as_range(size)
            .map_err(|e| generic(format!("reading {location}: {e}")))?;
        let bytes = read_range(&file, location, range.clone())?;
        let meta = ObjectMeta {
            location: location.clone(),
            last_modified: metadata
                .modified()
                .map(chrono::DateTime::from)
                .unwrap_or_default(),
            size,
            e_tag: None,
            version: None,
        };
        Ok(GetResult {
            payload: GetResultPayload::Stream(Box::pin(futures::stream::once(async { Ok(bytes) }))),
            meta,
            range,
            attributes: Default::default(),
        })
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        let (file, metadata) = self.open(location)?;
        ranges
            .iter()
            .map(|r| {
                if r.end > metadata.len() || r.start > r.end {
                    return Err(generic(format!(
                        "bytes {}..{} of {location}: the file has {} bytes",
                        r.start,
                        r.end,
                        metadata.len()
                    )));
                }
                read_range(&file, location, r.clone())
            })
            .collect()
    }

    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list_with_offset(prefix, offset)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.inner.copy_opts(from, to, options).await
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> Result<()> {
        self.inner.rename_opts(from, to, options).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::object_store::{GetRange, ObjectStoreExt};

    fn file_of(bytes: &[u8]) -> (tempfile::TempDir, Path) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.bin");
        std::fs::write(&path, bytes).unwrap();
        (dir, Path::from_absolute_path(&path).unwrap())
    }

    /// Every read a Parquet reader makes answers as the local file system's does.
    #[tokio::test]
    async fn reads_answer_as_the_local_file_system_does() {
        let bytes: Vec<u8> = (0..10_000u32).map(|i| (i * 7) as u8).collect();
        let (_dir, path) = file_of(&bytes);
        let ours = QueryFiles::new();
        let theirs = LocalFileSystem::new();
        for range in [0..1, 17..4_000, 9_990..10_000, 0..10_000] {
            assert_eq!(
                ours.get_range(&path, range.clone()).await.unwrap(),
                theirs.get_range(&path, range.clone()).await.unwrap()
            );
        }
        let ranges = [0..8, 100..200, 9_000..10_000];
        assert_eq!(
            ours.get_ranges(&path, &ranges).await.unwrap(),
            theirs.get_ranges(&path, &ranges).await.unwrap()
        );
        // A footer is read as the file's last bytes.
        for range in [GetRange::Suffix(8), GetRange::Offset(9_000)] {
            let options = GetOptions {
                range: Some(range),
                ..Default::default()
            };
            let a = ours.get_opts(&path, options.clone()).await.unwrap();
            let b = theirs.get_opts(&path, options).await.unwrap();
            assert_eq!(
                (a.range.clone(), a.meta.size),
                (b.range.clone(), b.meta.size)
            );
            assert_eq!(a.bytes().await.unwrap(), b.bytes().await.unwrap());
        }
        assert_eq!(
            ours.get(&path).await.unwrap().bytes().await.unwrap(),
            &bytes[..]
        );
    }

    /// A missing file is `NotFound` (DataFusion and Floe tell it from other failures), and a
    /// range past the end is an error, not a short read.
    #[tokio::test]
    async fn a_missing_file_or_a_range_past_the_end_is_an_error() {
        let (dir, path) = file_of(b"0123456789");
        let ours = QueryFiles::new();
        let gone = Path::from_absolute_path(dir.path().join("gone.parquet")).unwrap();
        assert!(matches!(
            ours.get_range(&gone, 0..4).await,
            Err(Error::NotFound { .. })
        ));
        assert!(matches!(
            ours.get_ranges(&gone, &[0..4, 6..8]).await,
            Err(Error::NotFound { .. })
        ));
        assert!(ours.get_ranges(&path, &[0..2, 5..11]).await.is_err());
        assert!(ours.get_range(&path, 5..11).await.unwrap().len() == 5);
        assert_eq!(
            ours.get_range(&path, 5..11).await.unwrap(),
            LocalFileSystem::new()
                .get_range(&path, 5..11)
                .await
                .unwrap()
        );
    }
}
