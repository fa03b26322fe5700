//! Floe's ingest: the HTTP events API, the write-ahead log, de-duplication, and a
//! micro-batcher per tenant that commits Parquet files to the tenant's Iceberg table.
//!
//! The path of an event: validated ([`event`], its payload against its type's schema: [`schema`]), de-duplicated ([`dedup`]), appended and
//! fsynced to the write-ahead log ([`wal`]), acknowledged; then buffered by its tenant's
//! batcher ([`batcher`]), written as Parquet ([`writer`]) and committed with its log position
//! in the snapshot summary, after which the log behind it may be deleted.

pub mod batcher;
pub mod dedup;
mod error;
pub mod event;
pub mod http;
pub mod kafka;
pub mod produce;
pub mod schema;
mod service;
pub mod wal;
pub mod writer;

pub use error::{Error, Result};
pub use service::{Ingest, Submitted, Visible};
