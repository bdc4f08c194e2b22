//! How a cluster's passes have been ending, kept between passes: fine, invalid until the
//! manifest or the configuration changes, or failing and retried with the worker's one
//! [`RetryPolicy`]. Pure, so every transition is table-tested.
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use pgop_common::config::OperatorConfig;
use pgop_common::retry::{Backoff, RetryPolicy};

/// What an `Invalid` verdict was reached on: the manifest's spec (its generation), its
/// annotations (they pause a cluster, or allow its deletion) and the operator configuration
/// (validation depends on it). A pass over the same three cannot reach another verdict.
#[derive(Debug, Clone)]
pub struct Judged {
    pub generation: i64,
    annotations: BTreeMap<String, String>,
    config: Arc<OperatorConfig>,
}

impl PartialEq for Judged {
    fn eq(&self, other: &Self) -> bool {
        self.generation == other.generation
            && self.annotations == other.annotations
            && Arc::ptr_eq(&self.config, &other.config)
    }
}

impl Judged {
    pub fn of(metadata: &ObjectMeta, config: Arc<OperatorConfig>) -> Self {
        Self {
            generation: metadata.generation.unwrap_or_default(),
            annotations: metadata.annotations.clone().unwrap_or_default(),
            config,
        }
    }
}

/// When a failed pass is tried again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Soon, then less and less often (the worker's [`RetryPolicy::CLUSTER`]).
    BackingOff,
    /// Only a change can fix it; meanwhile it is looked at again after this long.
    After(Duration),
}

#[derive(Debug, Default)]
pub enum Standing {
    /// The last pass ended well (or there was none yet).
    #[default]
    Fine,
    /// The manifest cannot be acted on; nothing is tried again until what it was judged on
    /// changes.
    Invalid(Judged),
    /// A step failed; it is tried again at `next_try`.
    Failing {
        backoff: Backoff,
        next_try: DateTime<Utc>,
    },
}

impl Standing {
    /// A pass ended well.
    pub fn succeeded(&mut self) {
        *self = Standing::Fine;
    }

    /// A pass found the manifest invalid.
    pub fn invalid(&mut self, judged: Judged) {
        *self = Standing::Invalid(judged);
    }

    /// A pass failed at `now`: how long until the next try.
    pub fn failed(&mut self, now: DateTime<Utc>, retry: Retry) -> Duration {
        let mut backoff = match std::mem::take(self) {
            Standing::Failing { backoff, .. } => backoff,
            _ => RetryPolicy::CLUSTER.backoff(),
        };
        let backed_off = backoff.next_delay();
        let delay = match retry {
            Retry::BackingOff => backed_off,
            Retry::After(delay) => delay,
        };
        let next_try = now + chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::MAX);
        *self = Standing::Failing { backoff, next_try };
        delay
    }

    /// Whether a pass over `judged` would only repeat the last verdict, Invalid.
    pub fn still_invalid(&self, judged: &Judged) -> bool {
        matches!(self, Standing::Invalid(last) if last == judged)
    }

    pub fn next_try(&self) -> Option<DateTime<Utc>> {
        match self {
            Standing::Failing { next_try, .. } => Some(*next_try),
            _ => None,
        }
    }

    /// Failures in a row.
    pub fn failures(&self) -> u32 {
        match self {
            Standing::Failing { backoff, .. } => backoff.failures(),
            _ => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(generation: i64, paused: bool) -> ObjectMeta {
        let annotations = if paused {
            serde_json::json!({"pgop.io/paused": "true"})
        } else {
            serde_json::json!({})
        };
        let json = serde_json::to_vec(&serde_json::json!({
            "metadata": {"name": "acid-a", "generation": generation, "annotations": annotations},
            // pgop's types refuse this spec; the metadata is still read.
            "spec": {"numberOfInstances": "many"}
        }))
        .unwrap();
        crate::manifest::metadata(&json).unwrap()
    }

    #[test]
    fn an_invalid_manifest_is_judged_again_only_when_something_it_depends_on_changes() {
        let config = Arc::new(OperatorConfig::default());
        let judged = Judged::of(&manifest(3, false), config.clone());
        assert_eq!(judged.generation, 3);
        let mut standing = Standing::default();
        assert!(!standing.still_invalid(&judged));
        standing.invalid(judged.clone());
        // The status write, a resync, a pod event: the same manifest and configuration.
        assert!(standing.still_invalid(&Judged::of(&manifest(3, false), config.clone())));
        assert_eq!(standing.next_try(), None);
        for (other, what) in [
            (
                Judged::of(&manifest(4, false), config.clone()),
                "a new spec",
            ),
            (
                Judged::of(&manifest(3, true), config.clone()),
                "an annotation",
            ),
            (
                Judged::of(&manifest(3, false), Arc::new(OperatorConfig::default())),
                "a new configuration",
            ),
        ] {
            assert!(!standing.still_invalid(&other), "{what}");
        }
        standing.succeeded();
        assert!(!standing.still_invalid(&judged));
    }

    #[test]
    fn failures_back_off_and_say_when_the_next_try_is() {
        let now = DateTime::parse_from_rfc3339("2026-12-07T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let mut standing = Standing::default();
        let mut previous = Duration::ZERO;
        for failures in 1..=4u32 {
            let delay = standing.failed(now, Retry::BackingOff);
            let base = RetryPolicy::CLUSTER.first * 2u32.pow(failures - 1);
            assert!(delay >= base && delay < base * 2, "{failures}: {delay:?}");
            assert!(delay > previous);
            previous = delay;
            assert_eq!(standing.failures(), failures);
            assert_eq!(
                standing.next_try(),
                Some(now + chrono::Duration::from_std(delay).unwrap())
            );
        }
        // Only a change can help: the repair period, still counted as a failure in a row.
        let repair = Duration::from_secs(300);
        assert_eq!(standing.failed(now, Retry::After(repair)), repair);
        assert_eq!(standing.failures(), 5);
        // A success starts over; so does an invalid manifest.
        standing.succeeded();
        assert_eq!((standing.failures(), standing.next_try()), (0, None));
        let delay = standing.failed(now, Retry::BackingOff);
        assert!(delay < RetryPolicy::CLUSTER.first * 2, "{delay:?}");
        standing.invalid(Judged::of(
            &ObjectMeta::default(),
            Arc::new(OperatorConfig::default()),
        ));
        assert_eq!((standing.failures(), standing.next_try()), (0, None));
    }
}
