//! The metrics of every Floe process: their names and help in one place, and the tenant label.
//!
//! Crates record through the `metrics` facade (a no-op until a recorder is installed); the
//! binary installs the Prometheus exporter and serves `/metrics` on `metrics.listen`
//! (`src/metrics.rs`). Durations are histograms in seconds (`_seconds`), sizes in bytes
//! (`_bytes`), counts are counters (`_total`); the one summary is the Kafka worker's records
//! per commit.
//!
//! Label cardinality is bounded: a process gives its first `metrics.max_tenant_labels`
//! tenants a label of their own and sums the rest under [`OTHER_TENANTS`]; other labels take
//! values from small fixed sets (outcomes, reasons, quota names, stages).

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};

/// The label of the tenants past the cap.
pub const OTHER_TENANTS: &str = "_other";

static MAX_TENANT_LABELS: AtomicUsize = AtomicUsize::new(100);

fn labelled() -> &'static Mutex<HashSet<String>> {
    static LABELLED: OnceLock<Mutex<HashSet<String>>> = OnceLock::new();
    LABELLED.get_or_init(Default::default)
}

/// Sets how many tenants get a label of their own (`metrics.max_tenant_labels`).
pub fn set_max_tenant_labels(n: usize) {
    MAX_TENANT_LABELS.store(n, Ordering::Relaxed);
}

/// The `tenant` label of `tenant`: its id while fewer than the cap have one, else
/// [`OTHER_TENANTS`]. A tenant keeps its label for the life of the process.
pub fn tenant(tenant: &str) -> String {
    let mut labelled = labelled().lock().unwrap_or_else(|p| p.into_inner());
    if labelled.contains(tenant) {
        return tenant.to_string();
    }
    if labelled.len() < MAX_TENANT_LABELS.load(Ordering::Relaxed) {
        labelled.insert(tenant.to_string());
        return tenant.to_string();
    }
    OTHER_TENANTS.to_string()
}

// Ingest.
/// Events of ingest requests, by `tenant` and `outcome` (`accepted`: stored; `duplicate`: a
/// retry of a stored event; `rejected`; `dead_lettered`: kept in `events_dlq`).
pub const INGEST_EVENTS: &str = "floe_ingest_events_total";
/// Rejected events by `tenant` and `reason` (the rejection's code).
pub const INGEST_REJECTIONS: &str = "floe_ingest_rejections_total";
/// Ingest requests by `tenant` and HTTP `status`.
pub const INGEST_REQUESTS: &str = "floe_ingest_requests_total";
/// Sizes of ingest request bodies as received.
pub const INGEST_REQUEST_BYTES: &str = "floe_ingest_request_bytes";
/// Requests refused by a quota, by `tenant` and `quota`.
pub const QUOTA_REJECTIONS: &str = "floe_quota_rejections_total";
/// Bytes in the write-ahead log not yet truncated (events not yet committed, or just).
pub const WAL_DEPTH_BYTES: &str = "floe_wal_depth_bytes";
/// Time of each write and fsync of a group of appends to the write-ahead log.
pub const WAL_FSYNC_SECONDS: &str = "floe_wal_fsync_seconds";
/// Time of an ingest commit (files written and the table's metadata swapped), by `tenant`.
pub const INGEST_COMMIT_SECONDS: &str = "floe_ingest_commit_seconds";
/// Time from an event's arrival (its request parsed) to the commit that made it queryable:
/// the oldest event of each commit this process made.
pub const TIME_TO_VISIBLE_SECONDS: &str = "floe_ingest_time_to_visible_seconds";
/// Events committed to tables by ingest, by `tenant`.
pub const INGEST_COMMITTED_EVENTS: &str = "floe_ingest_committed_events_total";
/// Table commits that lost the swap of the metadata pointer to another writer and were
/// prepared again.
pub const COMMIT_CONFLICTS: &str = "floe_commit_conflicts_total";

// Queries.
/// Queries by `tenant` and `outcome` (`finished`, `failed`, `cancelled`).
pub const QUERIES: &str = "floe_queries_total";
/// Time from a query's submission to its end, by `outcome`.
pub const QUERY_SECONDS: &str = "floe_query_seconds";
/// Rows queries returned, by `tenant`.
pub const QUERY_ROWS: &str = "floe_query_rows_total";
/// Bytes of data files queries planned to read, by `tenant`.
pub const QUERY_SCANNED_BYTES: &str = "floe_query_scanned_bytes_total";

// Maintenance.
/// Data files compaction read (`stage="input"`) and wrote (`stage="output"`).
pub const COMPACTION_FILES: &str = "floe_compaction_files_total";
/// Bytes of the data files compaction read and wrote, by `stage`.
pub const COMPACTION_BYTES: &str = "floe_compaction_bytes_total";
/// Time of each rewrite (read, sort, write) of a bin of files; its commit, which may take
/// several bins at once (`compaction.bins_per_commit`), is not counted.
pub const COMPACTION_REWRITE_SECONDS: &str = "floe_compaction_rewrite_seconds";
/// Snapshots `events` and `events_dlq` keep after their last expiry, by `tenant` and `table`
/// (labelled tenants only).
pub const SNAPSHOTS: &str = "floe_table_snapshots";
/// How long the oldest commit to a tenant's events that its projections do not reflect yet
/// has waited, by `tenant` (labelled tenants only; set when scraped).
pub const PROJECTION_LAG_SECONDS: &str = "floe_projection_lag_seconds";

// Kafka worker.
/// Records behind the brokers' high watermarks, by `tenant` and `partition`.
pub const KAFKA_PARTITION_LAG: &str = "floe_kafka_partition_lag";
/// Records behind the brokers' high watermarks, by `tenant` (assigned partitions).
pub const KAFKA_CONSUMER_LAG: &str = "floe_kafka_consumer_lag";
/// Records committed to tables by the worker (events and dead letters).
pub const KAFKA_RECORDS_COMMITTED: &str = "floe_kafka_records_committed_total";
/// Table commits of the worker.
pub const KAFKA_COMMITS: &str = "floe_kafka_commits_total";
/// Records the worker sent to `events_dlq`.
pub const KAFKA_DLQ_RECORDS: &str = "floe_kafka_dlq_records_total";
/// Batches refused because another worker moved the partitions' positions.
pub const KAFKA_FENCED: &str = "floe_kafka_fenced_total";
/// Times partitions were paused (backpressure, or a tenant over its quota).
pub const KAFKA_PAUSES: &str = "floe_kafka_pauses_total";
/// Times the worker rejoined the group because partitions had no reader.
pub const KAFKA_REJOINS: &str = "floe_kafka_rejoins_total";
/// Records per table commit (a summary).
pub const KAFKA_RECORDS_PER_COMMIT: &str = "floe_kafka_records_per_commit";
/// Time from a batch's first record received to its commit.
pub const KAFKA_COMMIT_SECONDS: &str = "floe_kafka_commit_seconds";
/// Time from the timestamp of a batch's oldest record (its producer's, or the broker's on
/// LogAppendTime topics) to the commit that made it queryable.
pub const KAFKA_VISIBLE_SECONDS: &str = "floe_kafka_visible_seconds";

// Alerts (`floe serve`'s evaluator).
/// Tenants' alert rules firing: 1 or 0 per labelled tenant and rule; for the tenants past the
/// label cap, the number firing under `tenant="_other", alert="_other"`.
pub const ALERT_FIRING: &str = "floe_alert_firing";
/// Alert notifications, by outcome (`delivered`, `failed`: given up after every attempt).
pub const ALERT_NOTIFICATIONS: &str = "floe_alert_notifications_total";
/// Evaluations of alert rules that could not decide (a query failed, a table unreadable).
pub const ALERT_EVALUATION_ERRORS: &str = "floe_alert_evaluation_errors_total";

/// Registers the help text and unit of every metric (called once the recorder is installed).
pub fn describe() {
    describe_counter!(
        INGEST_EVENTS,
        Unit::Count,
        "Events of ingest requests, by outcome."
    );
    describe_counter!(
        INGEST_REJECTIONS,
        Unit::Count,
        "Events rejected by ingest, by reason."
    );
    describe_counter!(INGEST_REQUESTS, Unit::Count, "Ingest requests, by status.");
    describe_histogram!(
        INGEST_REQUEST_BYTES,
        Unit::Bytes,
        "Sizes of ingest request bodies as received."
    );
    describe_counter!(
        QUOTA_REJECTIONS,
        Unit::Count,
        "Requests and queries refused by a tenant quota."
    );
    describe_gauge!(
        WAL_DEPTH_BYTES,
        Unit::Bytes,
        "Bytes of the write-ahead log not yet truncated."
    );
    describe_histogram!(
        WAL_FSYNC_SECONDS,
        Unit::Seconds,
        "Write and fsync of a group of appends to the write-ahead log."
    );
    describe_histogram!(
        INGEST_COMMIT_SECONDS,
        Unit::Seconds,
        "Ingest commits: files written and metadata swapped."
    );
    describe_histogram!(
        TIME_TO_VISIBLE_SECONDS,
        Unit::Seconds,
        "Arrival of the oldest event of a commit (its request) to the commit."
    );
    describe_counter!(
        INGEST_COMMITTED_EVENTS,
        Unit::Count,
        "Events committed to tables by ingest."
    );
    describe_counter!(
        COMMIT_CONFLICTS,
        Unit::Count,
        "Table commits that lost to another writer and were prepared again."
    );
    describe_counter!(QUERIES, Unit::Count, "Queries, by outcome.");
    describe_histogram!(
        QUERY_SECONDS,
        Unit::Seconds,
        "Queries from submission to end, by outcome."
    );
    describe_counter!(QUERY_ROWS, Unit::Count, "Rows returned by queries.");
    describe_counter!(
        QUERY_SCANNED_BYTES,
        Unit::Bytes,
        "Bytes of data files queries planned to read."
    );
    describe_counter!(
        COMPACTION_FILES,
        Unit::Count,
        "Data files compaction read (input) and wrote (output)."
    );
    describe_counter!(
        COMPACTION_BYTES,
        Unit::Bytes,
        "Bytes of data files compaction read (input) and wrote (output)."
    );
    describe_histogram!(
        COMPACTION_REWRITE_SECONDS,
        Unit::Seconds,
        "Rewrites of a bin of files: read, sort, write (not the commit)."
    );
    describe_gauge!(
        SNAPSHOTS,
        Unit::Count,
        "Snapshots a table keeps after its last expiry."
    );
    describe_gauge!(
        PROJECTION_LAG_SECONDS,
        Unit::Seconds,
        "Age of the oldest commit a tenant's projections do not reflect yet."
    );
    describe_gauge!(
        KAFKA_CONSUMER_LAG,
        Unit::Count,
        "Records behind the high watermark, per tenant (assigned partitions)."
    );
    describe_counter!(
        KAFKA_RECORDS_COMMITTED,
        Unit::Count,
        "Records committed to tables (events and dead letters)."
    );
    describe_counter!(KAFKA_COMMITS, Unit::Count, "Table commits.");
    describe_counter!(
        KAFKA_DLQ_RECORDS,
        Unit::Count,
        "Records sent to events_dlq."
    );
    describe_counter!(
        KAFKA_FENCED,
        Unit::Count,
        "Batches refused because another worker moved the partitions' positions."
    );
    describe_counter!(KAFKA_PAUSES, Unit::Count, "Times partitions were paused.");
    describe_counter!(
        KAFKA_REJOINS,
        Unit::Count,
        "Times the worker rejoined the group because partitions had no reader."
    );
    describe_histogram!(
        KAFKA_RECORDS_PER_COMMIT,
        Unit::Count,
        "Records per table commit."
    );
    describe_histogram!(
        KAFKA_COMMIT_SECONDS,
        Unit::Seconds,
        "A batch's first record received to its commit."
    );
    describe_histogram!(
        KAFKA_VISIBLE_SECONDS,
        Unit::Seconds,
        "The timestamp of a batch's oldest record to the commit that made it queryable."
    );
    describe_gauge!(
        KAFKA_PARTITION_LAG,
        Unit::Count,
        "Records behind the high watermark, per tenant and partition."
    );
    describe_gauge!(
        ALERT_FIRING,
        Unit::Count,
        "Tenants' alert rules firing, per tenant and rule."
    );
    describe_counter!(
        ALERT_NOTIFICATIONS,
        Unit::Count,
        "Alert notifications sent to webhooks, by outcome."
    );
    describe_counter!(
        ALERT_EVALUATION_ERRORS,
        Unit::Count,
        "Evaluations of alert rules that could not decide."
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenants_past_the_cap_share_one_label() {
        // The only test of this binary that labels tenants.
        labelled().lock().unwrap_or_else(|p| p.into_inner()).clear();
        set_max_tenant_labels(2);
        assert_eq!(tenant("cap-a"), "cap-a");
        assert_eq!(tenant("cap-b"), "cap-b");
        assert_eq!(tenant("cap-c"), OTHER_TENANTS);
        assert_eq!(
            tenant("cap-a"),
            "cap-a",
            "a labelled tenant keeps its label"
        );
        set_max_tenant_labels(100);
    }
}
