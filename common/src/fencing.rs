//! The timing that keeps two workers from acting on one cluster across a scheduler takeover.
//!
//! A worker notices a silent scheduler (frozen, partitioned, killed without a FIN) by HTTP/2
//! pings, and fences itself (stops every cluster task) as its session breaks. A leader that
//! cannot renew its lease stops sending a fifth of the lease's duration before a standby may
//! take the lease. A new leader therefore takes no worker session until every worker of the
//! previous leader must have fenced itself: the pings' bound, less that fifth.
use std::time::Duration;

/// How often a worker pings its scheduler when nothing else arrives.
pub const WORKER_PING_INTERVAL: Duration = Duration::from_secs(2);
/// How long a worker waits for a ping's answer before its session breaks.
pub const WORKER_PING_TIMEOUT: Duration = Duration::from_secs(3);
/// Room for a busy machine's timers and for stopping the tasks.
const MARGIN: Duration = Duration::from_secs(1);

/// How long a new leader refuses worker sessions after taking a lease of `lease_duration`.
pub fn takeover_grace(lease_duration: Duration) -> Duration {
    (WORKER_PING_INTERVAL + WORKER_PING_TIMEOUT + MARGIN).saturating_sub(lease_duration / 5)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_grace_covers_the_workers_ping_bound_less_the_leaders_early_stop() {
        let cases = [(6, 4800), (15, 3000), (30, 0), (60, 0)];
        for (lease, grace_ms) in cases {
            assert_eq!(
                takeover_grace(Duration::from_secs(lease)),
                Duration::from_millis(grace_ms),
                "lease {lease}s"
            );
        }
    }
}
