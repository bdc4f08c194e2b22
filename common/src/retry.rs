//! The one retry policy of pgop's processes: exponential delays with a cap and jitter, from
//! backon (the crate kube-runtime uses for its own watch backoff). Callers keep one
//! [`Backoff`] per thing that fails (a cluster, a connection) and reset it on success.
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};

/// Delays double from `first` up to `cap`; jitter adds up to as much again (a delay lies in
/// `[base, 2·base)`), so retries of many clusters that failed together spread out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub first: Duration,
    pub cap: Duration,
}

impl RetryPolicy {
    /// A cluster's failed pass (a worker): 1 s, 2 s, 4 s, … up to a minute, plus jitter.
    pub const CLUSTER: RetryPolicy = RetryPolicy {
        first: Duration::from_secs(1),
        cap: Duration::from_secs(60),
    };
    /// A lost gRPC connection between pgop's processes: back within seconds (at most 5 s
    /// with jitter).
    pub const RECONNECT: RetryPolicy = RetryPolicy {
        first: Duration::from_millis(200),
        cap: Duration::from_millis(2500),
    };

    pub fn backoff(self) -> Backoff {
        Backoff {
            policy: self,
            delays: self.delays(),
            failures: 0,
        }
    }

    fn delays(self) -> ExponentialBackoff {
        ExponentialBuilder::new()
            .with_min_delay(self.first)
            .with_max_delay(self.cap)
            .with_factor(2.0)
            .with_jitter()
            .without_max_times()
            .build()
    }
}

/// The delays of one failing thing, longer with each failure in a row.
#[derive(Debug)]
pub struct Backoff {
    policy: RetryPolicy,
    delays: ExponentialBackoff,
    failures: u32,
}

impl Backoff {
    /// Counts a failure and says how long to wait before the next try.
    pub fn next_delay(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        // Without a maximum number of tries backon never ends the sequence.
        self.delays.next().unwrap_or(self.policy.cap)
    }

    /// A success: the next failure starts from the first delay again.
    pub fn reset(&mut self) {
        if self.failures > 0 {
            self.failures = 0;
            self.delays = self.policy.delays();
        }
    }

    /// Failures in a row so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: RetryPolicy = RetryPolicy {
        first: Duration::from_secs(1),
        cap: Duration::from_secs(8),
    };

    #[test]
    fn delays_double_up_to_the_cap_with_jitter_of_at_most_as_much_again() {
        // The base of each failure in a row: 1, 2, 4, 8, then the cap for ever.
        let bases = [1, 2, 4, 8, 8, 8, 8];
        for _ in 0..50 {
            let mut backoff = POLICY.backoff();
            for (i, base) in bases.iter().enumerate() {
                let delay = backoff.next_delay();
                let base = Duration::from_secs(*base);
                assert!(
                    delay >= base && delay < base * 2,
                    "failure {}: {delay:?} outside [{base:?}, {:?})",
                    i + 1,
                    base * 2
                );
                assert_eq!(backoff.failures(), i as u32 + 1);
            }
        }
    }

    #[test]
    fn jitter_spreads_retries_that_failed_together() {
        let delays: std::collections::BTreeSet<Duration> =
            (0..20).map(|_| POLICY.backoff().next_delay()).collect();
        assert!(delays.len() > 10, "{delays:?}");
    }

    #[test]
    fn a_success_starts_over_from_the_first_delay() {
        let mut backoff = POLICY.backoff();
        for _ in 0..5 {
            backoff.next_delay();
        }
        backoff.reset();
        assert_eq!(backoff.failures(), 0);
        let delay = backoff.next_delay();
        assert!(delay < Duration::from_secs(2), "{delay:?}");
        assert_eq!(backoff.failures(), 1);
    }
}
