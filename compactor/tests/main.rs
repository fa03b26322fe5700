//! The compactor's integration tests, one file each beside this one (and the world they share,
//! `world/`), built as one test binary (one link instead of one per file).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod world;

mod projection_sharing;
mod projections;
mod promote;
mod rewrite;
