//! Exponential backoff, one for every retry: the Docker daemon, discovery and re-attach, the
//! store's writer, alert deliveries and the MLflow export.

use std::time::Duration;

/// A first delay doubling up to a cap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Schedule {
    pub first: Duration,
    pub max: Duration,
}

impl Schedule {
    pub const fn new(first: Duration, max: Duration) -> Self {
        Schedule { first, max }
    }

    /// The delay before retry `attempt + 1` (0 after the first failure).
    pub fn delay(self, attempt: u32) -> Duration {
        self.first
            .saturating_mul(1u32 << attempt.min(30))
            .min(self.max)
    }
}

/// The daemon and the followers: 200 ms doubling to 30 s.
pub const DAEMON: Schedule = Schedule::new(Duration::from_millis(200), Duration::from_secs(30));

/// Discovery's event stream: 200 ms doubling to 5 s.
pub const DISCOVERY: Schedule = Schedule::new(Duration::from_millis(200), Duration::from_secs(5));

/// The writer's commits while the database cannot be written: 250 ms doubling to 30 s.
pub const WRITER: Schedule = Schedule::new(Duration::from_millis(250), Duration::from_secs(30));

/// Deliveries to a receiver and the MLflow export: 1 s doubling to 5 min.
pub const DELIVERY: Schedule = Schedule::new(Duration::from_secs(1), Duration::from_secs(300));

/// A running backoff on a [`Schedule`], reset on success.
#[derive(Debug)]
pub struct Backoff {
    schedule: Schedule,
    attempt: u32,
}

impl Backoff {
    pub fn new(schedule: Schedule) -> Self {
        Backoff {
            schedule,
            attempt: 0,
        }
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// The delay to wait now; doubles the next one.
    pub fn step(&mut self) -> Duration {
        let d = self.schedule.delay(self.attempt);
        self.attempt = self.attempt.saturating_add(1);
        d
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new(DAEMON)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_to_a_cap_and_resets() {
        let mut b = Backoff::new(DAEMON);
        let steps: Vec<u128> = (0..10).map(|_| b.step().as_millis()).collect();
        assert_eq!(
            steps,
            [200, 400, 800, 1600, 3200, 6400, 12800, 25600, 30000, 30000]
        );
        b.reset();
        assert_eq!(b.step(), Duration::from_millis(200));
        let delivery: Vec<u64> = (0..11).map(|a| DELIVERY.delay(a).as_secs()).collect();
        assert_eq!(delivery, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300]);
        assert_eq!(DELIVERY.delay(u32::MAX), Duration::from_secs(300));
    }
}
