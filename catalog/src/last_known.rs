//! Things a process reads from the catalog database and may go on with while the database is
//! slow or down: a tenant, an API key, the revoked tokens, a tenant's event schemas.
//!
//! Each is kept with when it was read. Once older than its caller's `max_age` it is read again
//! by one caller at a time, who waits for it at most `http.catalog_wait_ms`
//! ([`crate::Catalog::read_or_go_on`]); the others, and that caller past the wait, go on with
//! the last value, which stays in force whatever error the read meets. A thing never read is
//! read by one caller at a time too, the others waiting for that read and taking its answer
//! (its error too); when the database does not answer it, callers within `retry_failed` after
//! get that error without asking again, so an outage costs one attempt per thing per period,
//! not one per request.
//! What the catalog says does not exist is not kept, and slots that keep nothing are pruned:
//! made-up keys (random API key ids) do not pile up.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::{Catalog, Error, ErrorKind, Result};

/// Last-known values by key (see the module's documentation). Cheap to clone: clones share
/// the values.
pub struct LastKnown<T> {
    /// What a key names, for errors: "the event schemas of tenant" + " acme".
    what: &'static str,
    slots: Arc<Mutex<Slots<T>>>,
    retry_failed: Duration,
}

impl<T> Clone for LastKnown<T> {
    fn clone(&self) -> Self {
        LastKnown {
            what: self.what,
            slots: self.slots.clone(),
            retry_failed: self.retry_failed,
        }
    }
}

impl<T> std::fmt::Debug for LastKnown<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LastKnown")
            .field("what", &self.what)
            .finish_non_exhaustive()
    }
}

struct Slots<T> {
    by_key: HashMap<String, Slot<T>>,
    pruning: crate::pruning::Pruning,
}

struct Slot<T> {
    /// The value and when it was read (or last tried again and not answered).
    value: Option<(T, Instant)>,
    /// A read of a value to go on with is under way.
    refreshing: bool,
    /// What a first read that kept no value last answered (that the thing does not exist, or
    /// an error's kind and message), and when: the answer for the callers waiting for it, and,
    /// an outage's error, for later callers within `retry_failed`.
    answered: Option<(Instant, Option<(ErrorKind, String)>)>,
    /// One first read at a time.
    first: Arc<tokio::sync::Mutex<()>>,
}

impl<T> Slot<T> {
    /// Why a first read the database did not answer failed, if that was less than `within`
    /// ago.
    fn failed_within(&self, within: Duration) -> Option<&str> {
        match &self.answered {
            Some((at, Some((kind, why)))) if kind.retryable() && at.elapsed() < within => Some(why),
            _ => None,
        }
    }
}

impl<T> Default for Slot<T> {
    fn default() -> Self {
        Slot {
            value: None,
            refreshing: false,
            answered: None,
            first: Default::default(),
        }
    }
}

impl<T: Clone + Send + 'static> LastKnown<T> {
    /// `what` names a key's thing in errors ("tenant", "the event schemas of tenant").
    pub fn new(what: &'static str, retry_failed: Duration) -> Self {
        LastKnown {
            what,
            slots: Arc::new(Mutex::new(Slots {
                by_key: HashMap::new(),
                pruning: Default::default(),
            })),
            retry_failed,
        }
    }

    /// For values read again every `refresh`: a first read the database did not answer is
    /// tried again after `retry_failed` (`catalog_db.retry_failed_ms`), or `refresh` if that
    /// is shorter.
    pub fn refreshed_every(what: &'static str, refresh: Duration, retry_failed: Duration) -> Self {
        LastKnown::new(what, refresh.min(retry_failed))
    }

    fn lock(&self) -> MutexGuard<'_, Slots<T>> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How many keys have a slot: those with a value, a recent failure, or a read under way or
    /// waited for, and, until the next pruning (when the slots have doubled), others.
    pub fn slots(&self) -> usize {
        self.lock().by_key.len()
    }

    /// The last value of `key`, however old, without asking the catalog.
    pub fn last(&self, key: &str) -> Option<T> {
        let slots = self.lock();
        slots
            .by_key
            .get(key)?
            .value
            .as_ref()
            .map(|(v, _)| v.clone())
    }

    /// `key`'s value as of at most `max_age` ago, read with `read` when it is older (`None`:
    /// the catalog says it does not exist). With a value to go on with, the read is waited
    /// for at most `http.catalog_wait_ms`, and the value is the answer if the read is not
    /// done or fails. Without one, the read (or another caller's) is waited for and its
    /// error returned.
    pub async fn get<R, F>(
        &self,
        catalog: &Catalog,
        key: &str,
        max_age: Duration,
        read: R,
    ) -> Result<Option<T>>
    where
        R: FnOnce() -> F,
        F: Future<Output = Result<Option<T>>> + Send + 'static,
    {
        let last = {
            let mut slots = self.lock();
            match slots.by_key.get_mut(key) {
                Some(Slot {
                    value: Some((v, at)),
                    refreshing,
                    ..
                }) => {
                    if at.elapsed() < max_age || *refreshing {
                        return Ok(Some(v.clone()));
                    }
                    *refreshing = true;
                    Some(v.clone())
                }
                _ => None,
            }
        };
        match last {
            Some(last) => self.refresh(catalog, key, read, last).await,
            None => self.first(key, read).await,
        }
    }

    /// Reads a value to replace `last` (the caller has marked the slot as refreshing).
    async fn refresh<R, F>(
        &self,
        catalog: &Catalog,
        key: &str,
        read: R,
        last: T,
    ) -> Result<Option<T>>
    where
        R: FnOnce() -> F,
        F: Future<Output = Result<Option<T>>> + Send + 'static,
    {
        let done = Refreshing {
            known: self.clone(),
            key: key.to_string(),
            kept: false,
        };
        let pending = read();
        let reading = async move {
            let mut done = done;
            let found = pending.await;
            done.known.keep(&done.key, &found);
            done.kept = true;
            found
        };
        match catalog.read_or_go_on(reading).await {
            Some(Ok(found)) => Ok(found),
            // Logged by `keep`.
            Some(Err(_)) | None => Ok(Some(last)),
        }
    }

    /// Reads a value nobody has (or waits for the caller who is reading it, and takes its
    /// answer).
    async fn first<R, F>(&self, key: &str, read: R) -> Result<Option<T>>
    where
        R: FnOnce() -> F,
        F: Future<Output = Result<Option<T>>> + Send + 'static,
    {
        let asked_at = Instant::now();
        let gate = {
            let mut slots = self.lock();
            let gate = slots
                .by_key
                .entry(key.to_string())
                .or_default()
                .first
                .clone();
            // Slots of callers gone before their read are dropped here.
            self.prune(&mut slots);
            gate
        };
        let _one = gate.lock().await;
        // Another caller may have read it, or failed to, while this one waited.
        if let Some(slot) = self.lock().by_key.get(key) {
            if let Some((v, _)) = &slot.value {
                return Ok(Some(v.clone()));
            }
            match &slot.answered {
                Some((at, None)) if *at >= asked_at => return Ok(None),
                Some((at, Some((kind, message)))) if *at >= asked_at => {
                    return Err(Error::Again {
                        kind: *kind,
                        message: message.clone(),
                    });
                }
                _ => {}
            }
            if let Some(why) = slot.failed_within(self.retry_failed) {
                return Err(Error::Unavailable {
                    what: format!("{} {key}", self.what).trim_end().to_string(),
                    why: why.to_string(),
                });
            }
        }
        let found = read().await;
        self.keep(key, &found);
        found
    }

    /// Keeps what a read found: the value; that it does not exist (nothing kept, but the
    /// answer for callers waiting for a first read); or an error, after which the value kept
    /// stays, counted as read now so that it is tried again after its `max_age`, and a key
    /// with none keeps the error for the callers waiting, and remembers it for later ones if
    /// a retry may cure it (others are not remembered: the next caller asks again).
    fn keep(&self, key: &str, found: &Result<Option<T>>) {
        let mut slots = self.lock();
        let now = Instant::now();
        match found {
            Ok(Some(v)) => {
                let slot = slots.by_key.entry(key.to_string()).or_default();
                slot.value = Some((v.clone(), now));
                slot.answered = None;
            }
            Ok(None) => {
                if let Some(slot) = slots.by_key.get_mut(key) {
                    *slot = Slot {
                        answered: Some((now, None)),
                        first: slot.first.clone(),
                        ..Slot::default()
                    };
                }
                self.prune(&mut slots);
            }
            Err(e) => {
                tracing::warn!(what = self.what, key, error = %e, "could not read from the catalog");
                let slot = slots.by_key.entry(key.to_string()).or_default();
                match &mut slot.value {
                    Some((_, at)) => *at = now,
                    None => slot.answered = Some((now, Some((e.kind(), e.to_string())))),
                }
                self.prune(&mut slots);
            }
        }
    }

    /// Drops slots that keep nothing (no value, no recent failure) and that nobody waits on,
    /// once there are twice as many as after the last time: amortised, a constant cost per
    /// slot made.
    fn prune(&self, slots: &mut Slots<T>) {
        let retry_failed = self.retry_failed;
        slots.pruning.retain(&mut slots.by_key, 64, |_, s| {
            s.value.is_some()
                || s.failed_within(retry_failed).is_some()
                || Arc::strong_count(&s.first) > 1
        });
    }
}

/// Held by a read of a value to go on with; lets the next one start when dropped (done, given
/// up, or panicked). A read that ended without an answer counts as one that failed: its value
/// is tried again after its `max_age`, not by the very next caller.
struct Refreshing<T> {
    known: LastKnown<T>,
    key: String,
    /// The read's answer was kept.
    kept: bool,
}

impl<T> Drop for Refreshing<T> {
    fn drop(&mut self) {
        let mut slots = self.known.slots.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(slot) = slots.by_key.get_mut(&self.key) {
            slot.refreshing = false;
            if !self.kept
                && let Some((_, at)) = &mut slot.value
            {
                *at = Instant::now();
            }
        }
    }
}
