//! What `GET /v1/query/{id}` (and the dashboard page a query's `infoUri` names) shows of a
//! query: its SQL text, state, times and figures, while it runs and after it ended. Ended
//! queries are kept in memory up to `query.history_bytes`, oldest dropped first; a process
//! keeps only its own (a query's pages are always fetched from the process that runs it).

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use floe_catalog::TenantKey;
use floe_catalog::audit::{AuditQueue, Entry};
use serde_json::{Value, json};

use super::values::Progress;

/// Longest SQL text kept for a query (a longer one is cut, and says so).
const SQL_KEPT: usize = 16 << 10;

/// One query's description.
#[derive(Debug, Clone)]
pub(crate) struct Described {
    pub id: String,
    /// The incarnation that ran it: only it may read the description.
    pub tenant: TenantKey,
    pub sql: String,
    pub created_at_ms: i64,
    pub ended_at_ms: Option<i64>,
    /// `QUEUED`, `RUNNING`, `FINISHED`, `FAILED` or `CANCELED` (Trino's names).
    pub state: &'static str,
    pub rows: u64,
    pub scanned_bytes: u64,
    /// The failure's message and Trino error name.
    pub error: Option<(String, String)>,
    /// Its times and figures as its pages' `stats` give them.
    pub progress: Progress,
    /// Who ran it (`token:<jti>`, `key:<id>`) and with which role, for the audit log.
    pub actor: String,
    pub role: &'static str,
}

impl Described {
    /// The description of a query submitted now with `sql`.
    pub fn submitted(id: &str, tenant: TenantKey, sql: &[u8]) -> Described {
        let text = String::from_utf8_lossy(&sql[..sql.len().min(SQL_KEPT)]).into_owned();
        let sql = if sql.len() > SQL_KEPT {
            format!("{text}… ({} bytes in all)", sql.len())
        } else {
            text
        };
        Described {
            id: id.to_string(),
            tenant,
            sql,
            created_at_ms: chrono::Utc::now().timestamp_millis(),
            ended_at_ms: None,
            state: "QUEUED",
            rows: 0,
            scanned_bytes: 0,
            error: None,
            progress: Progress::default(),
            actor: String::new(),
            role: "",
        }
    }

    /// Names who submitted it.
    pub fn by(mut self, actor: String, role: &'static str) -> Described {
        self.actor = actor;
        self.role = role;
        self
    }

    /// The audit record of its end: outcome, rows, bytes scanned, duration, and the error
    /// without the values it quotes (see `redact`).
    fn audit_entry(&self) -> Entry {
        let detail = json!({
            "query_id": self.id,
            "role": self.role,
            "outcome": self.state,
            "rows": self.rows,
            "scanned_bytes": self.scanned_bytes,
            "duration_ms": self.ended_at_ms.map(|e| e - self.created_at_ms),
            "cpu_ms": self.progress.cpu.as_millis() as u64,
            "error": self.error.as_ref().map(|(message, name)| {
                json!({"message": super::redact::redact_quoted(message, 4096), "errorName": name})
            }),
        });
        Entry::new(
            self.actor.clone(),
            Some(self.tenant.id().as_str()),
            "query.end",
            detail.to_string(),
        )
    }

    /// Memory it holds, roughly.
    fn bytes(&self) -> usize {
        256 + self.id.len()
            + self.sql.len()
            + self.error.as_ref().map_or(0, |(m, n)| m.len() + n.len())
    }

    /// The JSON of `GET /v1/query/{id}`.
    pub fn to_json(&self, info_uri: String) -> Value {
        let now = chrono::Utc::now().timestamp_millis();
        json!({
            "queryId": self.id,
            "state": self.state,
            "query": self.sql,
            "self": info_uri,
            "created_at_ms": self.created_at_ms,
            "ended_at_ms": self.ended_at_ms,
            "elapsed_ms": self.ended_at_ms.unwrap_or(now) - self.created_at_ms,
            "rows": self.rows,
            "scanned_bytes": self.scanned_bytes,
            "cpu_ms": self.progress.cpu.as_millis() as u64,
            "cpu_wait_ms": self.progress.waited.as_millis() as u64,
            "error": self.error.as_ref().map(|(message, name)| {
                json!({"message": message, "errorName": name})
            }),
        })
    }
}

/// Bytes scanned by a running query, shared by its work and its description.
pub(crate) type Scanned = std::sync::Arc<AtomicU64>;

pub(crate) fn scanned(of: &Scanned) -> u64 {
    of.load(Ordering::Relaxed)
}

/// Ended queries, newest last, within a memory budget.
#[derive(Debug)]
pub(crate) struct History {
    budget: usize,
    /// Where each ended query's audit record goes.
    audit: Option<AuditQueue>,
    kept: Mutex<(VecDeque<Described>, usize)>,
}

impl History {
    pub fn new(budget: usize) -> History {
        History {
            budget,
            audit: None,
            kept: Mutex::new((VecDeque::new(), 0)),
        }
    }

    /// Also records each ended query in the audit log.
    pub fn auditing(mut self, queue: AuditQueue) -> History {
        self.audit = Some(queue);
        self
    }

    /// Keeps an ended query's description, dropping the oldest past the budget (and records
    /// its end in the audit log).
    pub fn keep(&self, ended: Described) {
        if let Some(queue) = &self.audit {
            queue.record(ended.audit_entry());
        }
        let size = ended.bytes();
        if size > self.budget {
            return;
        }
        let Ok(mut kept) = self.kept.lock() else {
            return;
        };
        let (queue, bytes) = &mut *kept;
        while *bytes + size > self.budget {
            match queue.pop_front() {
                Some(old) => *bytes -= old.bytes(),
                None => break,
            }
        }
        *bytes += size;
        queue.push_back(ended);
    }

    /// The description of ended query `id`, if `tenant` ran it and it is still kept.
    pub fn find(&self, id: &str, tenant: &TenantKey) -> Option<Described> {
        let kept = self.kept.lock().ok()?;
        kept.0
            .iter()
            .rev()
            .find(|d| d.id == id && &d.tenant == tenant)
            .cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(id: &str) -> TenantKey {
        TenantKey::new(floe_catalog::TenantId::parse(id).unwrap(), "1")
    }

    #[test]
    fn the_oldest_go_first_past_the_budget_and_only_the_owner_finds_one() {
        let one = Described::submitted("q1", tenant("acme"), b"SELECT 1");
        let size = one.bytes();
        let history = History::new(size * 2);
        history.keep(one);
        history.keep(Described::submitted("q2", tenant("acme"), b"SELECT 2"));
        assert!(history.find("q1", &tenant("acme")).is_some());
        assert!(history.find("q1", &tenant("other")).is_none());
        history.keep(Described::submitted("q3", tenant("acme"), b"SELECT 3"));
        assert!(history.find("q1", &tenant("acme")).is_none(), "over budget");
        assert_eq!(history.find("q3", &tenant("acme")).unwrap().sql, "SELECT 3");
    }

    #[test]
    fn a_long_text_is_cut_and_says_so() {
        let sql = vec![b'x'; SQL_KEPT + 10];
        let d = Described::submitted("q", tenant("acme"), &sql);
        assert!(
            d.sql
                .ends_with(&format!("({} bytes in all)", SQL_KEPT + 10))
        );
    }
}
