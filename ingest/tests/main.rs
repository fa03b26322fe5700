//! The ingest crate's integration tests, one file each beside this one, built as one test
//! binary (one link instead of one per file).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod ingest;
mod props;
mod visibility;
