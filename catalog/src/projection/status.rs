//! How fresh a tenant's projections are, from metadata only: each projection's current snapshot
//! names the `events` snapshot it reflects; what `events` committed after that one is the lag.

use iceberg::spec::{Operation, TableMetadata};

use super::{builtins_of, source_of};
use crate::table::EVENTS_TABLE;
use crate::tenant::TenantId;
use crate::{Catalog, Result};

/// One projection's freshness.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ProjectionStatus {
    pub name: String,
    /// `builtin`, or `sql` (user-defined).
    pub kind: &'static str,
    /// The `events` snapshot the projection reflects (`None`: never refreshed).
    pub source_snapshot: Option<i64>,
    /// The current `events` snapshot.
    pub events_snapshot: Option<i64>,
    /// Events appended to `events` since the snapshot reflected.
    pub lag_events: u64,
    /// How long ago the oldest change not yet reflected was committed (0: caught up).
    pub lag_seconds: f64,
    /// When the projection last committed (ms since the epoch).
    pub refreshed_at_ms: Option<i64>,
    /// Rows of the projection.
    pub rows: u64,
}

/// What `events` changed after `source`: rows appended, and when the oldest change that
/// alters rows (anything but a compaction) was committed. A source no longer in the history
/// (expired: the projection is to be recomputed) counts every snapshot still there, and is
/// behind since the oldest of them whatever it did.
fn lag(events: &TableMetadata, source: Option<i64>) -> (u64, Option<i64>) {
    let (mut appended, mut oldest, mut oldest_any) = (0, None, None);
    let mut at = events.current_snapshot();
    while let Some(snapshot) = at {
        if Some(snapshot.snapshot_id()) == source {
            return (appended, oldest);
        }
        oldest_any = Some(snapshot.timestamp_ms());
        let summary = snapshot.summary();
        if summary.operation == Operation::Append {
            appended += summary
                .additional_properties
                .get("added-records")
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or(0);
        }
        if summary.operation != Operation::Replace {
            oldest = Some(snapshot.timestamp_ms());
        }
        at = snapshot
            .parent_snapshot_id()
            .and_then(|p| events.snapshot_by_id(p));
    }
    (appended, oldest.or(oldest_any))
}

impl Catalog {
    /// The freshness of each of the tenant's projections.
    pub async fn projection_status(&self, tenant: &TenantId) -> Result<Vec<ProjectionStatus>> {
        let tenant = tenant.clone();
        self.on_io(move |c| async move {
            let t = c.tenant(&tenant).await?;
            let events = c.load_table(&tenant, EVENTS_TABLE).await?;
            let events = events.metadata();
            let tables = c.list_tables(&tenant).await?;
            let now = chrono::Utc::now().timestamp_millis();
            let mut out = Vec::new();
            let builtins = builtins_of(&t)
                .into_iter()
                .map(|b| (b.name.to_string(), "builtin"));
            let defined = c.defined_projections(&tenant).await?;
            let defined = defined.into_iter().map(|d| (d.name, "sql"));
            for (name, kind) in builtins.chain(defined) {
                if !tables.contains(&name) {
                    continue;
                }
                let table = c.load_table(&tenant, &name).await?;
                let metadata = table.metadata();
                let source = source_of(metadata)?.map(|s| s.snapshot_id);
                let (lag_events, oldest) = lag(events, source);
                let current = metadata.current_snapshot();
                out.push(ProjectionStatus {
                    name,
                    kind,
                    source_snapshot: source,
                    events_snapshot: events.current_snapshot_id(),
                    lag_events,
                    lag_seconds: oldest.map_or(0.0, |ms| (now - ms).max(0) as f64 / 1000.0),
                    refreshed_at_ms: current.map(|s| s.timestamp_ms()),
                    rows: current
                        .and_then(|s| s.summary().additional_properties.get("total-records"))
                        .and_then(|n| n.parse().ok())
                        .unwrap_or(0),
                });
            }
            Ok(out)
        })
        .await
    }
}
