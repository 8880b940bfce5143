//! The crash backoff every supervised child and the ingest restarts use.

use std::time::Duration;

/// A child that ran this long without trouble resets its crash backoff.
pub const HEALTHY_RUN: Duration = Duration::from_secs(60);
/// The crash backoff doubles up to CRASH_BACKOFF times this.
const BACKOFF_CAP_FACTOR: u32 = 16;

/// A crash backoff: doubles on each failure, resets after a healthy run.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    current: Duration,
}

impl Backoff {
    pub fn new(base: Duration) -> Backoff {
        Backoff {
            base,
            current: base,
        }
    }

    /// CRASH_BACKOFF: the first delay.
    pub fn base(&self) -> Duration {
        self.base
    }

    pub fn reset(&mut self) {
        self.current = self.base;
    }

    /// The delay before the next start, given how long the last run lasted.
    pub fn next(&mut self, ran_for: Duration) -> Duration {
        if ran_for >= HEALTHY_RUN {
            self.current = self.base;
        }
        let delay = self.current;
        self.current = (self.current * 2).min(self.base * BACKOFF_CAP_FACTOR);
        delay
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_a_cap_and_resets_after_a_healthy_run() {
        let mut b = Backoff::new(Duration::from_secs(2));
        let short = Duration::from_secs(1);
        assert_eq!(b.next(short), Duration::from_secs(2));
        assert_eq!(b.next(short), Duration::from_secs(4));
        for _ in 0..10 {
            b.next(short);
        }
        assert_eq!(b.next(short), Duration::from_secs(32));
        assert_eq!(b.next(HEALTHY_RUN), Duration::from_secs(2));
        b.next(short);
        b.next(short);
        b.reset();
        assert_eq!(b.next(short), Duration::from_secs(2));
    }
}
