//! Retry delays for everything that retries a peer which fails (other
//! servers, application services, push gateways): one shape, doubling from
//! a start up to a cap, built on `backon` so the arithmetic lives in one
//! well-tested place.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use rand::Rng;

/// How long to wait before each retry of a failing peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    start: Duration,
    max: Duration,
    jitter: bool,
}

impl Backoff {
    /// Waits of `start`, then twice as long each time, up to `max`.
    pub const fn doubling(start: Duration, max: Duration) -> Self {
        Self {
            start,
            max,
            jitter: false,
        }
    }

    /// The same waits, each spread by ±50% so that many senders failing
    /// together (a destination back after an outage) do not retry in step.
    pub const fn jittered(self) -> Self {
        Self {
            jitter: true,
            ..self
        }
    }

    /// The waits of a new run of failures (start again after a success).
    pub fn delays(&self) -> Delays {
        Delays {
            doubling: ExponentialBuilder::new()
                .with_factor(2.0)
                // backon starts at its minimum even above the cap; ours
                // does not.
                .with_min_delay(self.start.min(self.max))
                .with_max_delay(self.max)
                // Endless: a durable queue is retried until its peer takes it.
                .without_max_times()
                .build(),
            max: self.max,
            jitter: self.jitter,
        }
    }
}

/// One run of failures: the wait before retry 1, 2, ….
pub struct Delays {
    doubling: <ExponentialBuilder as BackoffBuilder>::Backoff,
    max: Duration,
    jitter: bool,
}

impl Delays {
    /// The wait before the next retry.
    pub fn next_wait(&mut self) -> Duration {
        let d = self.unjittered();
        if self.jitter { spread(d) } else { d }
    }

    fn unjittered(&mut self) -> Duration {
        // Never short (no max_times), so the cap is only a formality.
        self.doubling.next().unwrap_or(self.max)
    }
}

/// `d` scaled by a random factor in [0.5, 1.5).
fn spread(d: Duration) -> Duration {
    d.mul_f64(rand::thread_rng().gen_range(0.5..1.5))
}

#[cfg(test)]
mod tests {
    use super::*;

    const START: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(300);

    /// Equal up to backon's f32 arithmetic (well under a millisecond).
    fn close(a: Duration, b: Duration) -> bool {
        a.abs_diff(b) < Duration::from_millis(1)
    }

    #[test]
    fn doubles_up_to_its_cap() {
        let mut run = Backoff::doubling(START, MAX).delays();
        let delays: Vec<Duration> = (0..40).map(|_| run.next_wait()).collect();
        for (i, d) in delays.iter().enumerate() {
            let base = START.saturating_mul(1u32 << i.min(16)).min(MAX);
            assert!(close(*d, base), "{i}: {d:?} (expected {base:?})");
        }
        assert_eq!(delays[39], MAX);
    }

    #[test]
    fn jitter_spreads_each_wait_by_half_either_way() {
        let backoff = Backoff::doubling(START, MAX).jittered();
        let (mut jittered, mut plain) = (backoff.delays(), backoff.delays());
        for n in 0..40 {
            let (d, base) = (jittered.next_wait(), plain.unjittered());
            assert!(
                d >= base.mul_f64(0.5) && d <= base.mul_f64(1.5),
                "{n}: {d:?}"
            );
        }
        assert!(jittered.next_wait() <= MAX.mul_f64(1.5));
    }

    #[test]
    fn a_start_above_the_cap_waits_the_cap() {
        let mut run = Backoff::doubling(MAX * 2, MAX).delays();
        assert_eq!(run.next_wait(), MAX);
        assert_eq!(run.next_wait(), MAX);
    }
}
