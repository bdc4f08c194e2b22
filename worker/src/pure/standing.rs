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

/// What a verdict that only a change can alter was reached on: the object (its uid), its
/// spec (the generation), its annotations (they pause a cluster, or allow its deletion) and
/// the operator configuration (validation depends on it). A pass over the same cannot reach
/// another verdict.
#[derive(Debug, Clone)]
pub struct Judged {
    uid: String,
    generation: i64,
    annotations: BTreeMap<String, String>,
    config: Arc<OperatorConfig>,
}

impl PartialEq for Judged {
    fn eq(&self, other: &Self) -> bool {
        self.uid == other.uid
            && self.generation == other.generation
            && self.annotations == other.annotations
            && Arc::ptr_eq(&self.config, &other.config)
    }
}

impl Judged {
    pub fn of(uid: &str, metadata: &ObjectMeta, config: Arc<OperatorConfig>) -> Self {
        Self {
            uid: uid.to_string(),
            generation: metadata.generation.unwrap_or_default(),
            annotations: metadata.annotations.clone().unwrap_or_default(),
            config,
        }
    }
}

/// When a failed pass is tried again.
#[derive(Debug, Clone)]
pub enum Retry {
    /// Soon, then less and less often (the worker's [`RetryPolicy::CLUSTER`]).
    BackingOff,
    /// Only a change of what the pass was judged on can fix it; meanwhile it is looked at
    /// again after this long.
    NeedsAChange(Judged, Duration),
}

/// When a cluster whose pass was skipped looks again by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// Only when what the verdict was reached on changes.
    OnChange,
    /// At the next try of a failure only a change can fix (`repair_period`).
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
    /// A step failed; it is tried again at `next_try`. With `needs_a_change`, a retry cannot
    /// help (see [`Retry::NeedsAChange`]) and passes over the same are skipped until then.
    Failing {
        backoff: Backoff,
        next_try: DateTime<Utc>,
        needs_a_change: Option<Judged>,
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

    /// A pass failed at `now`: how long until the next try. A pass woken before the next
    /// try (a pod, a resync) that fails the same way leaves the next try where it was: only
    /// the retries themselves lengthen the delay.
    pub fn failed(&mut self, now: DateTime<Utc>, retry: Retry) -> Duration {
        if let Standing::Failing {
            next_try,
            needs_a_change,
            ..
        } = self
        {
            let same = match &retry {
                Retry::BackingOff => needs_a_change.is_none(),
                Retry::NeedsAChange(judged, _) => needs_a_change.as_ref() == Some(judged),
            };
            if same && now < *next_try {
                return (*next_try - now).to_std().unwrap_or_default();
            }
        }
        let mut backoff = match std::mem::take(self) {
            Standing::Failing { backoff, .. } => backoff,
            _ => RetryPolicy::CLUSTER.backoff(),
        };
        let backed_off = backoff.next_delay();
        let (delay, needs_a_change) = match retry {
            Retry::BackingOff => (backed_off, None),
            Retry::NeedsAChange(judged, delay) => (delay, Some(judged)),
        };
        let next_try = now + chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::MAX);
        *self = Standing::Failing {
            backoff,
            next_try,
            needs_a_change,
        };
        delay
    }

    /// Whether a pass over `judged` at `now` would only repeat the last verdict (Invalid, or
    /// a failure only a change can fix before its next try); then when to look again.
    pub fn unchanged(&self, judged: &Judged, now: DateTime<Utc>) -> Option<Wake> {
        match self {
            Standing::Invalid(last) if last == judged => Some(Wake::OnChange),
            Standing::Failing {
                next_try,
                needs_a_change: Some(last),
                ..
            } if last == judged && now < *next_try => {
                Some(Wake::After((*next_try - now).to_std().unwrap_or_default()))
            }
            _ => None,
        }
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

    fn metadata(generation: i64, paused: bool) -> ObjectMeta {
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
        crate::pure::manifest::metadata(&json).unwrap()
    }

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + seconds, 0).unwrap()
    }

    #[test]
    fn an_invalid_manifest_is_judged_again_only_when_something_it_depends_on_changes() {
        let config = Arc::new(OperatorConfig::default());
        let judged = Judged::of("uid-1", &metadata(3, false), config.clone());
        let mut standing = Standing::default();
        assert_eq!(standing.unchanged(&judged, at(0)), None);
        standing.invalid(judged.clone());
        // The status write, a resync, a pod: the same object, manifest and configuration.
        let same = Judged::of("uid-1", &metadata(3, false), config.clone());
        assert_eq!(standing.unchanged(&same, at(9_999)), Some(Wake::OnChange));
        assert_eq!(standing.next_try(), None);
        for (other, what) in [
            (
                Judged::of("uid-1", &metadata(4, false), config.clone()),
                "a new spec",
            ),
            (
                Judged::of("uid-1", &metadata(3, true), config.clone()),
                "an annotation",
            ),
            (
                Judged::of(
                    "uid-1",
                    &metadata(3, false),
                    Arc::new(OperatorConfig::default()),
                ),
                "a new configuration",
            ),
            (
                Judged::of("uid-2", &metadata(3, false), config.clone()),
                "another object of the name",
            ),
        ] {
            assert_eq!(standing.unchanged(&other, at(0)), None, "{what}");
        }
        standing.succeeded();
        assert_eq!(standing.unchanged(&judged, at(0)), None);
    }

    #[test]
    fn failures_back_off_and_say_when_the_next_try_is() {
        let judged = Judged::of(
            "u",
            &ObjectMeta::default(),
            Arc::new(OperatorConfig::default()),
        );
        let mut standing = Standing::default();
        let mut now = at(0);
        let mut previous = Duration::ZERO;
        for failures in 1..=4u32 {
            let delay = standing.failed(now, Retry::BackingOff);
            let base = RetryPolicy::CLUSTER.first * 2u32.pow(failures - 1);
            assert!(delay >= base && delay < base * 2, "{failures}: {delay:?}");
            assert!(delay > previous);
            previous = delay;
            assert_eq!(standing.failures(), failures);
            let next_try = now + chrono::Duration::from_std(delay).unwrap();
            assert_eq!(standing.next_try(), Some(next_try));
            // A retryable failure is never skipped: a pod may have fixed it.
            assert_eq!(standing.unchanged(&judged, now), None);
            // Woken early by a pod, failing again: the next try stays, the delay too.
            let early = now + chrono::Duration::milliseconds(300);
            let left = standing.failed(early, Retry::BackingOff);
            assert_eq!(standing.next_try(), Some(next_try));
            assert_eq!(standing.failures(), failures);
            assert_eq!(left, (next_try - early).to_std().unwrap());
            now = next_try;
        }
        // Only a change can help: the repair period, still counted as a failure in a row,
        // and passes over the same manifest wait for it.
        let repair = Duration::from_secs(300);
        let retry = Retry::NeedsAChange(judged.clone(), repair);
        assert_eq!(standing.failed(now, retry), repair);
        assert_eq!(standing.failures(), 5);
        let soon = now + chrono::Duration::seconds(100);
        assert_eq!(
            standing.unchanged(&judged, soon),
            Some(Wake::After(Duration::from_secs(200)))
        );
        let changed = Judged::of(
            "u",
            &metadata(2, false),
            Arc::new(OperatorConfig::default()),
        );
        assert_eq!(standing.unchanged(&changed, soon), None);
        assert_eq!(
            standing.unchanged(&judged, now + chrono::Duration::seconds(300)),
            None
        );
        // The manifest changed and fails the same way: its own repair period from now.
        let retry = Retry::NeedsAChange(changed.clone(), repair);
        assert_eq!(standing.failed(soon, retry), repair);
        assert_eq!(
            standing.unchanged(&changed, soon + chrono::Duration::seconds(299)),
            Some(Wake::After(Duration::from_secs(1)))
        );
        assert_eq!(standing.unchanged(&judged, soon), None);
        // A success starts over; so does an invalid manifest.
        standing.succeeded();
        assert_eq!((standing.failures(), standing.next_try()), (0, None));
        let delay = standing.failed(now, Retry::BackingOff);
        assert!(delay < RetryPolicy::CLUSTER.first * 2, "{delay:?}");
        standing.invalid(judged.clone());
        assert_eq!((standing.failures(), standing.next_try()), (0, None));
    }
}
