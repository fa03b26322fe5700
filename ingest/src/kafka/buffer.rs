//! What a topic's buffer holds until its batch is committed: events, dead letters, and the
//! positions they cover.

use std::collections::{BTreeMap, HashSet};

use floe_catalog::table::KafkaRange;
use tokio::time::Instant;

use crate::event::{Limits, StoredEvent, parse_event};

pub(crate) use crate::writer::DeadLetter;

/// What the worker keeps of a consumed record besides its position.
pub(crate) struct Record {
    /// The record's timestamp (ms since the epoch), when it has one.
    pub(crate) timestamp_ms: Option<i64>,
    pub(crate) key: Option<String>,
    pub(crate) value: Option<Vec<u8>>,
}

/// What a topic's buffer holds, and the positions it covers.
#[derive(Default)]
pub(crate) struct Batch {
    pub(crate) events: Vec<(i32, StoredEvent)>,
    pub(crate) dead: Vec<DeadLetter>,
    pub(crate) ranges: BTreeMap<i32, KafkaRange>,
    pub(crate) bytes: usize,
    pub(crate) first_at: Option<Instant>,
    /// The earliest record timestamp (ms since the epoch) of the batch, when records have one.
    pub(crate) oldest_ms: Option<i64>,
}

/// What a record must be to be taken as an event of `tenant`.
#[derive(Clone, Copy)]
pub(crate) struct Rules<'a> {
    pub tenant: &'a floe_catalog::TenantId,
    pub limits: Limits,
    pub schemas: &'a crate::schema::TenantSchemas,
}

impl Batch {
    pub(crate) fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    pub(crate) fn records(&self) -> usize {
        self.events.len() + self.dead.len()
    }

    /// Drops everything of `partitions` (revoked or fenced).
    pub(crate) fn drop_partitions(&mut self, partitions: &HashSet<i32>) {
        self.events.retain(|(p, _)| !partitions.contains(p));
        self.dead.retain(|d| !partitions.contains(&d.partition));
        self.ranges.retain(|p, _| !partitions.contains(p));
        self.bytes = self.events.iter().map(|(_, e)| e.size()).sum::<usize>()
            + self
                .dead
                .iter()
                .map(|d| d.payload.len() + 64)
                .sum::<usize>();
        if self.ranges.is_empty() {
            self.first_at = None;
            self.oldest_ms = None;
        }
    }
}

impl Batch {
    /// Takes the record at `offset` of `partition`, whose batch starts the partition at
    /// `expected`: as an event, or as a dead letter saying why it is not one. Returns the bytes
    /// added.
    pub(crate) fn take(
        &mut self,
        partition: i32,
        offset: i64,
        expected: Option<i64>,
        record: Record,
        rules: &Rules<'_>,
    ) -> usize {
        let Rules {
            tenant,
            limits,
            schemas,
        } = *rules;
        let Record {
            timestamp_ms,
            key,
            value,
        } = record;
        self.ranges
            .entry(partition)
            .or_insert(KafkaRange {
                expected,
                next: offset + 1,
            })
            .next = offset + 1;
        if self.first_at.is_none() {
            self.first_at = Some(Instant::now());
        }
        if let Some(ts) = timestamp_ms {
            self.oldest_ms = Some(self.oldest_ms.map_or(ts, |o| o.min(ts)));
        }
        let now_us = chrono::Utc::now().timestamp_micros();
        let dead = |reason: &str, detail: String, payload: String| DeadLetter {
            partition,
            offset,
            reason: reason.to_string(),
            detail,
            key: key.clone(),
            payload,
            at_us: now_us,
        };
        let (added, letter) = match value {
            None => (
                64,
                Some(dead("empty", "record has no value".into(), String::new())),
            ),
            Some(bytes) => match String::from_utf8(bytes) {
                Err(e) => {
                    let text = String::from_utf8_lossy(e.as_bytes()).into_owned();
                    let size = text.len() + 64;
                    (
                        size,
                        Some(dead("not_utf8", format!("record value: {e}"), text)),
                    )
                }
                Ok(text) => match parse_event(0, &text, tenant.as_str(), now_us, limits, schemas) {
                    Ok(event) => {
                        let size = event.size();
                        self.events.push((partition, event));
                        (size, None)
                    }
                    Err(r) => {
                        let detail = match (&r.pointer, &r.rule) {
                            (Some(p), Some(rule)) => {
                                format!("{} (pointer {p:?}, rule {rule})", r.message)
                            }
                            _ => r.message,
                        };
                        (text.len() + 64, Some(dead(r.code, detail, text)))
                    }
                },
            },
        };
        self.dead.extend(letter);
        self.bytes += added;
        added
    }
}
