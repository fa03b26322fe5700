//! The catalog's integration tests, one file each beside this one, built as one test binary
//! (one link instead of one per file).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

mod audit;
mod commit;
mod expiry;
mod merge;
mod projection;
mod props;
mod purge;
mod quota;
mod schema;
mod waits;
