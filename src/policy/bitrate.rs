//! A publisher's bitrate, from the byte counts nginx-rtmp reports.
//!
//! nginx's own `bw_in` is averaged over 10 s: it reads 0 right after a
//! publish starts and lags after it stops. Deltas of `bytes_in` between
//! polls are what relay uses, both for the bitrate it shows and for
//! LOW_BITRATE_KBPS/SECS; one counter serves both.
//!
//! The stream's `bytes_in` is not reset by nginx-rtmp when a new publisher
//! takes over a stream that players kept alive, so the publisher's client
//! id is what separates one publisher's bytes from the previous one's.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Byte-count readings of one publisher, kept over a window.
#[derive(Debug, Default)]
pub struct ByteCounter {
    publisher: Option<u64>,
    readings: VecDeque<(Instant, u64)>,
}

impl ByteCounter {
    pub fn new() -> ByteCounter {
        ByteCounter::default()
    }

    /// The publisher whose bytes are counted.
    pub fn publisher(&self) -> Option<u64> {
        self.publisher
    }

    /// Feeds one reading of publisher `publisher`'s `bytes`, keeping the
    /// readings of the last `keep` (at least the newest two).
    ///
    /// Returns the bitrate in bits/s since the previous reading, `None` on
    /// the first reading of a publisher, when there is no publisher (which
    /// also forgets the readings), or when no time has passed since the
    /// previous reading (which is then ignored). A new publisher, a count
    /// that went backwards or a reading older than the last one starts
    /// afresh.
    pub fn update(
        &mut self,
        publisher: Option<u64>,
        bytes: u64,
        at: Instant,
        keep: Duration,
    ) -> Option<u64> {
        if publisher != self.publisher || publisher.is_none() {
            self.publisher = publisher;
            self.readings.clear();
        }
        publisher?;
        let rate = match self.readings.back() {
            Some(&(t, b)) if bytes < b || at < t => {
                self.readings.clear();
                None
            }
            Some(&(t, _)) if at == t => return None,
            Some(&(t, b)) => Some(bits_per_second(bytes - b, at - t)),
            None => None,
        };
        self.readings.push_back((at, bytes));
        while self.readings.len() > 2 && self.readings[1].0 + keep <= at {
            self.readings.pop_front();
        }
        rate
    }

    /// The average bitrate over at least `window`, once the readings span
    /// it; `None` before.
    pub fn average(&self, window: Duration) -> Option<u64> {
        let (&(t0, b0), &(t1, b1)) = (self.readings.front()?, self.readings.back()?);
        let span = t1 - t0;
        if span < window || span.is_zero() {
            return None;
        }
        Some(bits_per_second(b1 - b0, span))
    }
}

fn bits_per_second(bytes: u64, over: Duration) -> u64 {
    let nanos = over.as_nanos();
    if nanos == 0 {
        return 0;
    }
    let rate = u128::from(bytes) * 8 * 1_000_000_000 / nanos;
    u64::try_from(rate).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEEP: Duration = Duration::from_secs(5);

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    #[test]
    fn the_rate_is_between_two_readings_of_one_publisher() {
        let t0 = Instant::now();
        let mut c = ByteCounter::new();
        assert_eq!(c.update(Some(1), 1_000, t0, KEEP), None);
        assert_eq!(
            c.update(Some(1), 126_000, t0 + secs(1.0), KEEP),
            Some(1_000_000)
        );
        assert_eq!(
            c.update(Some(1), 251_000, t0 + secs(2.0), KEEP),
            Some(1_000_000)
        );
    }

    #[test]
    fn a_new_publisher_a_reset_count_or_nobody_starts_afresh() {
        let t0 = Instant::now();
        let mut c = ByteCounter::new();
        c.update(Some(1), 1_000, t0, KEEP);
        // nginx keeps counting across publishers: the id tells them apart.
        assert_eq!(c.update(Some(2), 500_000, t0 + secs(1.0), KEEP), None);
        assert_eq!(c.update(Some(2), 400, t0 + secs(2.0), KEEP), None);
        assert_eq!(c.update(None, 0, t0 + secs(3.0), KEEP), None);
        assert_eq!(c.publisher(), None);
        assert_eq!(c.update(Some(2), 1_000, t0 + secs(4.0), KEEP), None);
        assert_eq!(
            c.update(Some(2), 2_000, t0 + secs(4.0), KEEP),
            None,
            "same instant"
        );
        assert_eq!(
            c.update(Some(2), 2_000, t0 + secs(3.0), KEEP),
            None,
            "older"
        );
        assert_eq!(c.update(Some(2), 3_000, t0 + secs(4.0), KEEP), Some(8_000));
    }

    #[test]
    fn the_average_needs_the_whole_window() {
        let t0 = Instant::now();
        let mut c = ByteCounter::new();
        for i in 0..=3 {
            c.update(Some(7), i * 100_000, t0 + secs(i as f64), KEEP);
        }
        assert_eq!(c.average(secs(5.0)), None);
        for i in 4..=10 {
            c.update(Some(7), i * 100_000, t0 + secs(i as f64), KEEP);
        }
        assert_eq!(c.average(secs(5.0)), Some(800_000));
        // Old readings are dropped: the average follows the last window.
        c.update(Some(7), 1_000_000 + 10_000, t0 + secs(11.0), KEEP);
        assert!(c.average(secs(5.0)).unwrap() < 800_000);
        assert!(c.readings.len() <= 7);
    }

    #[test]
    fn huge_counts_do_not_overflow() {
        let t0 = Instant::now();
        let mut c = ByteCounter::new();
        c.update(Some(1), 0, t0, KEEP);
        let rate = c.update(Some(1), u64::MAX, t0 + Duration::from_nanos(1), KEEP);
        assert_eq!(rate, Some(u64::MAX));
    }

    #[test]
    fn meter_math_and_resets() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut m = ByteCounter::new();
        assert_eq!(m.update(Some(8), 1_000, t0, KEEP), None);
        // 10_000 bytes in 2 s = 40_000 bit/s
        assert_eq!(m.update(Some(8), 11_000, t0 + s(2), KEEP), Some(40_000));
        // half a second
        assert_eq!(
            m.update(Some(8), 11_500, t0 + Duration::from_millis(2_500), KEEP),
            Some(8_000)
        );
        // same instant again: ignored, state kept
        assert_eq!(
            m.update(Some(8), 12_000, t0 + Duration::from_millis(2_500), KEEP),
            None
        );
        assert_eq!(m.update(Some(8), 12_500, t0 + s(3), KEEP), Some(16_000));
        // stalled publisher: 0, not None
        assert_eq!(m.update(Some(8), 12_500, t0 + s(4), KEEP), Some(0));
        // new publisher id: reset even though bytes_in continues upward
        assert_eq!(m.update(Some(9), 20_000, t0 + s(5), KEEP), None);
        assert_eq!(m.update(Some(9), 21_000, t0 + s(6), KEEP), Some(8_000));
        // counter going backwards: reset
        assert_eq!(m.update(Some(9), 100, t0 + s(7), KEEP), None);
        assert_eq!(m.update(Some(9), 1_100, t0 + s(8), KEEP), Some(8_000));
        // no publisher: reset
        assert_eq!(m.update(None, 1_100, t0 + s(9), KEEP), None);
        assert_eq!(m.update(Some(9), 2_100, t0 + s(10), KEEP), None);
        assert_eq!(m.update(Some(9), 3_100, t0 + s(11), KEEP), Some(8_000));
        // a sample older than the stored one: reset
        assert_eq!(m.update(Some(9), 4_100, t0 + s(1), KEEP), None);
        assert_eq!(m.update(Some(9), 5_100, t0 + s(2), KEEP), Some(8_000));
    }

    #[test]
    fn meter_extremes_do_not_overflow() {
        let t0 = Instant::now();
        let mut m = ByteCounter::new();
        assert_eq!(m.update(Some(u64::MAX), 0, t0, KEEP), None);
        assert_eq!(
            m.update(Some(u64::MAX), u64::MAX, t0 + Duration::from_nanos(1), KEEP),
            Some(u64::MAX)
        );
        assert_eq!(m.update(Some(1), 0, t0, KEEP), None);
        assert_eq!(
            m.update(Some(1), u64::MAX, t0 + Duration::from_secs(8), KEEP),
            Some(u64::MAX)
        );
    }
}
