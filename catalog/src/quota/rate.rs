//! The ingest rate's pieces: a token bucket, and what a tenant's request bodies held per byte
//! (so that a request can be refused before its body is parsed).

use std::time::{Duration, Instant};

use super::RateLimit;

/// An ingest request's body as it arrived, before it is parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawBody {
    /// Its length in bytes, as sent (compressed, when `gzip`).
    pub len: u64,
    pub gzip: bool,
}

/// What a tenant's recently parsed request bodies held per byte of body, so that a request
/// can be refused unparsed when the tenant's allowance is short of what a body of its size
/// holds. Kept per encoding (plain and gzip), whose bytes per event differ several times.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(super) struct Shape {
    /// Per body (the latest [`Shape::BODIES`], oldest overwritten first): events per body
    /// byte, and bytes of events (as `ingest_bytes_per_sec` counts them) per body byte.
    seen: [(f32, f32); Shape::BODIES],
    /// Bodies seen, up to [`Shape::BODIES`]; `next`: the one to overwrite.
    len: u8,
    next: u8,
}

impl Shape {
    const BODIES: usize = 16;
    /// A request is refused unparsed only when its allowance is short of this share of what
    /// its size predicts.
    pub(super) const MARGIN: f64 = 0.9;

    pub(super) fn learn(&mut self, body: u64, events: u64, bytes: u64) {
        if body == 0 || events == 0 {
            return;
        }
        let per_byte = |n: u64| (n as f64 / body as f64) as f32;
        self.seen[usize::from(self.next)] = (per_byte(events), per_byte(bytes));
        self.next = ((usize::from(self.next) + 1) % Self::BODIES) as u8;
        self.len = (usize::from(self.len) + 1).min(Self::BODIES) as u8;
    }

    /// The events and the bytes of events a body of `len` bytes holds if it is as sparse as
    /// the sparsest of the recent bodies (so that a client of large events among clients of
    /// small ones is not taken for a large request); `None` before any body was parsed.
    pub(super) fn expect(&self, len: u64) -> Option<(f64, f64)> {
        let seen = &self.seen[..usize::from(self.len)];
        let least = |f: fn(&(f32, f32)) -> f32| seen.iter().map(f).fold(f32::INFINITY, f32::min);
        (!seen.is_empty()).then(|| {
            let n = len as f64;
            (n * f64::from(least(|s| s.0)), n * f64::from(least(|s| s.1)))
        })
    }
}

/// A token bucket: refills at a rate, holds `burst_secs` of it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    pub(super) fn full(rate: u64, burst_secs: u64, now: Instant) -> Bucket {
        Bucket {
            tokens: (rate * burst_secs) as f64,
            at: now,
        }
    }

    pub(super) fn refill(&mut self, rate: u64, burst_secs: u64, now: Instant) {
        let capacity = (rate * burst_secs) as f64;
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate as f64).min(capacity);
        self.at = now;
    }

    /// Takes `n` tokens if the bucket holds them, or if it is full (a request larger than the
    /// burst then passes and leaves the bucket in debt, so that it still gets through at the
    /// rate); otherwise how long until it would.
    pub(super) fn take(
        &mut self,
        n: u64,
        rate: u64,
        burst_secs: u64,
        now: Instant,
    ) -> Result<(), Duration> {
        self.refill(rate, burst_secs, now);
        let capacity = (rate * burst_secs) as f64;
        let n = n as f64;
        if self.tokens >= n || self.tokens >= capacity {
            self.tokens -= n;
            return Ok(());
        }
        let short = n.min(capacity) - self.tokens;
        Err(Duration::from_secs_f64(short / rate as f64))
    }

    /// Takes `n` tokens whatever the bucket holds; when that leaves it in debt, how long the
    /// rate takes to pay it back.
    pub(super) fn charge(
        &mut self,
        n: u64,
        rate: u64,
        burst_secs: u64,
        now: Instant,
    ) -> Option<Duration> {
        self.refill(rate, burst_secs, now);
        self.tokens -= n as f64;
        (self.tokens < 0.0).then(|| Duration::from_secs_f64(-self.tokens / rate as f64))
    }

    /// When the bucket holds less than one token: how long until it is full again (a retry
    /// sooner would most likely be refused too, after sending its body again).
    pub(super) fn empty(&mut self, rate: u64, burst_secs: u64, now: Instant) -> Option<Duration> {
        self.refill(rate, burst_secs, now);
        let capacity = (rate * burst_secs) as f64;
        (self.tokens < 1.0).then(|| Duration::from_secs_f64((capacity - self.tokens) / rate as f64))
    }

    /// When the bucket holds less than `share` of the `n` tokens that [`Bucket::take`] would
    /// need: how long until it holds them all.
    pub(super) fn short_of(
        &mut self,
        n: f64,
        share: f64,
        rate: u64,
        burst_secs: u64,
        now: Instant,
    ) -> Option<Duration> {
        self.refill(rate, burst_secs, now);
        let need = n.min((rate * burst_secs) as f64);
        (self.tokens < need * share)
            .then(|| Duration::from_secs_f64((need - self.tokens) / rate as f64))
    }

    /// The whole tokens it holds now (none when in debt).
    pub(super) fn left(&self) -> u64 {
        self.tokens.max(0.0) as u64
    }

    pub(super) fn give_back(&mut self, n: u64) {
        self.tokens += n as f64;
    }

    pub(super) fn state(&self, rate: u64, burst_secs: u64) -> RateLimit {
        let capacity = (rate * burst_secs) as f64;
        RateLimit {
            limit: rate,
            remaining: self.tokens.max(0.0) as u64,
            reset_secs: ((capacity - self.tokens).max(0.0) / rate as f64).ceil() as u64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_takes_its_burst_then_refills_at_its_rate() {
        let t0 = Instant::now();
        let mut b = Bucket::full(100, 2, t0);
        assert!(b.take(150, 100, 2, t0).is_ok());
        let wait = b.take(100, 100, 2, t0).unwrap_err();
        assert!((wait.as_secs_f64() - 0.5).abs() < 0.01, "{wait:?}");
        assert!(b.take(100, 100, 2, t0 + Duration::from_millis(500)).is_ok());
        assert_eq!(b.state(100, 2).remaining, 0);
        assert_eq!(b.state(100, 2).reset_secs, 2);
    }

    #[test]
    fn a_bucket_is_empty_until_it_holds_one_token_and_says_when_it_is_full() {
        let t0 = Instant::now();
        let mut b = Bucket::full(10, 1, t0);
        assert_eq!(b.empty(10, 1, t0), None);
        b.take(10, 10, 1, t0).unwrap();
        let wait = b.empty(10, 1, t0).expect("all taken: empty");
        assert_eq!(wait, Duration::from_secs(1), "until full again");
        assert_eq!(b.empty(10, 1, t0 + Duration::from_millis(100)), None);
    }

    #[test]
    fn a_bucket_is_short_of_a_batch_until_it_holds_it_or_is_full() {
        let t0 = Instant::now();
        let mut b = Bucket::full(100, 1, t0);
        b.take(80, 100, 1, t0).unwrap();
        // 20 left: not empty, but short of a batch of 50 (and of half of it), as `take` would
        // say; the wait is until the whole batch is there.
        assert_eq!(b.empty(100, 1, t0), None);
        let wait = b.short_of(50.0, 0.5, 100, 1, t0).expect("20 < 0.5 × 50");
        assert!((wait.as_secs_f64() - 0.3).abs() < 0.01, "{wait:?}");
        let mut copy = b;
        assert!(copy.take(50, 100, 1, t0).is_err());
        assert_eq!(
            b.short_of(50.0, 0.5, 100, 1, t0 + Duration::from_millis(60)),
            None
        );
        // Past the burst: short until full, as `take` lets it through then.
        let mut b = Bucket::full(100, 1, t0);
        b.take(1, 100, 1, t0).unwrap();
        assert!(b.short_of(500.0, 1.0, 100, 1, t0).is_some());
        assert_eq!(
            b.short_of(500.0, 1.0, 100, 1, t0 + Duration::from_millis(10)),
            None
        );
    }

    #[test]
    fn a_shape_expects_what_the_sparsest_recent_body_of_its_encoding_held_per_byte() {
        let mut s = Shape::default();
        assert_eq!(s.expect(1000), None, "nothing parsed yet: no guess");
        s.learn(1000, 0, 0);
        assert_eq!(
            s.expect(1000),
            None,
            "a body without events teaches nothing"
        );
        s.learn(10_000, 100, 8_000);
        let (events, bytes) = s.expect(20_000).expect("learned");
        assert!((events - 200.0).abs() < 1e-3, "{events}");
        assert!((bytes - 16_000.0).abs() < 1e-1, "{bytes}");
        // A client of large events among clients of small ones: its bodies are not taken
        // for larger requests than they are while it is among the recent ones.
        s.learn(10_000, 10, 9_000);
        for _ in 0..Shape::BODIES - 1 {
            s.learn(10_000, 100, 8_000);
        }
        let (events, _) = s.expect(10_000).expect("learned");
        assert!((events - 10.0).abs() < 1e-3, "{events}");
        s.learn(10_000, 100, 8_000);
        let (events, _) = s.expect(10_000).expect("learned");
        assert!((events - 100.0).abs() < 1e-3, "overwritten: {events}");
    }

    #[test]
    fn a_request_larger_than_the_burst_passes_only_on_a_full_bucket() {
        let t0 = Instant::now();
        let mut b = Bucket::full(10, 1, t0);
        assert!(
            b.take(25, 10, 1, t0).is_ok(),
            "full bucket: passes, in debt"
        );
        let wait = b.take(25, 10, 1, t0).unwrap_err();
        assert!(wait >= Duration::from_secs(2), "{wait:?}");
        assert!(b.take(25, 10, 1, t0 + Duration::from_secs(3)).is_ok());
    }
}
