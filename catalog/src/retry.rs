//! Exponential backoff with jitter: the one place that decides how long to wait before trying
//! again (commits that lost a compare-and-swap, commits that failed on a dependency, in the
//! batchers and the Kafka worker alike).

use std::time::Duration;

/// Waits that double from `base` up to `max`, each with up to as much again of random jitter
/// (so that writers that collided do not collide again in step).
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(base: Duration, max: Duration) -> Backoff {
        Backoff {
            base,
            max: max.max(base),
            attempt: 0,
        }
    }

    /// For retrying work that failed on a dependency (storage, database, broker): 100 ms
    /// doubling up to 10 s.
    pub fn for_failures() -> Backoff {
        Backoff::new(Duration::from_millis(100), Duration::from_secs(10))
    }

    /// The next wait.
    pub fn next_delay(&mut self) -> Duration {
        let exp = self
            .base
            .saturating_mul(1u32 << self.attempt.min(16))
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        let jitter = exp.mul_f64(rand::random::<f64>());
        (exp + jitter).min(self.max)
    }

    /// Sleeps the next wait.
    pub async fn wait(&mut self) {
        tokio::time::sleep(self.next_delay()).await;
    }

    /// Attempts waited for so far.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_with_jitter_up_to_the_cap() {
        let mut b = Backoff::new(Duration::from_millis(10), Duration::from_millis(100));
        let waits: Vec<Duration> = (0..8).map(|_| b.next_delay()).collect();
        assert!(waits[0] >= Duration::from_millis(10) && waits[0] <= Duration::from_millis(20));
        assert!(waits[1] >= Duration::from_millis(20) && waits[1] <= Duration::from_millis(40));
        assert!(waits.iter().all(|w| *w <= Duration::from_millis(100)));
        assert_eq!(waits[7], Duration::from_millis(100));
        assert_eq!(b.attempts(), 8);
    }
}
