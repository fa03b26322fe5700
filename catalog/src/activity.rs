//! What a tenant's `events` table says of its recent ingest, from the snapshot log alone (no
//! data file is read): the events appended since a moment, and when the last append was
//! committed (the newest visible event's arrival, to within a commit). The dashboard's
//! freshness and the operator's ingest rates come from here, so they agree across processes.

use iceberg::spec::{Operation, TableMetadata};

use crate::table::EVENTS_TABLE;
use crate::{Catalog, Result, TenantId};

/// Recent appends to a tenant's `events`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Appends {
    /// Events appended by commits at or after the moment asked about.
    pub events: u64,
    /// When the newest append was committed (ms since the epoch); `None`: never.
    pub last_append_ms: Option<i64>,
}

/// The appends of `metadata`'s current history since `since_ms`. Compactions, erasures and
/// expiries rewrite or drop files but append no event: they are passed over. The walk follows
/// the parents of the current snapshot and stops at the first snapshot older than `since_ms`
/// once an append has been seen.
pub fn appends_since(metadata: &TableMetadata, since_ms: i64) -> Appends {
    let mut out = Appends::default();
    let mut at = metadata.current_snapshot();
    while let Some(snapshot) = at {
        let recent = snapshot.timestamp_ms() >= since_ms;
        if !recent && out.last_append_ms.is_some() {
            break;
        }
        let summary = snapshot.summary();
        if summary.operation == Operation::Append {
            out.last_append_ms.get_or_insert(snapshot.timestamp_ms());
            if recent {
                out.events += summary
                    .additional_properties
                    .get("added-records")
                    .and_then(|n| n.parse::<u64>().ok())
                    .unwrap_or(0);
            }
        }
        at = snapshot
            .parent_snapshot_id()
            .and_then(|p| metadata.snapshot_by_id(p));
    }
    out
}

impl Catalog {
    /// The appends to `tenant`'s `events` since `since_ms` (see [`appends_since`]).
    pub async fn appends_since(&self, tenant: &TenantId, since_ms: i64) -> Result<Appends> {
        let table = self.load_table(tenant, EVENTS_TABLE).await?;
        Ok(appends_since(table.metadata(), since_ms))
    }
}
