//! Which Warning Events a cluster's task still has to emit. One Event per distinct problem
//! (reason and message) per generation of the manifest, not one per retry or resync:
//! a repeat says nothing new, and Kubernetes' own aggregation (one Event whose `count` grows)
//! would cost a write per repeat, so a failing fleet at rest would keep the API server busy.
//! The status carries the problem, and when it is tried next, for as long as it holds.
//!
//! The Event's name is derived from the object, the generation and the problem, so a worker
//! that takes the cluster over (or restarts) and finds the problem again gets "already
//! exists" from the API server instead of adding a duplicate.
use std::collections::BTreeSet;

use sha2::{Digest, Sha256};

type Problem = (String, String);

/// The problems a task has shown, for the manifest's current generation.
#[derive(Debug, Default)]
pub struct Warnings {
    generation: i64,
    /// Shown and still holding at the end of the last concluded pass.
    holding: BTreeSet<Problem>,
    /// Seen since then.
    seen: BTreeSet<Problem>,
}

impl Warnings {
    /// Whether a Warning for this problem is news: not shown for this generation while it
    /// has held since.
    pub fn is_news(&mut self, generation: i64, reason: &str, note: &str) -> bool {
        if generation != self.generation {
            *self = Warnings {
                generation,
                ..Warnings::default()
            };
        }
        let problem = (reason.to_string(), note.to_string());
        let news = !self.holding.contains(&problem) && !self.seen.contains(&problem);
        self.seen.insert(problem);
        news
    }

    /// A pass has concluded: the problems it did not see again are over, and news if they
    /// come back (while the first Event of that problem still exists, it stands for both).
    pub fn settle(&mut self) {
        self.holding = std::mem::take(&mut self.seen);
    }
}

/// The name of the Warning Event for one problem of one generation of an object: the same
/// for every worker, a valid object name whatever the cluster's name.
pub fn event_name(object: &str, uid: &str, generation: i64, reason: &str, note: &str) -> String {
    let mut hash = Sha256::new();
    for part in [uid, &generation.to_string(), reason, note] {
        hash.update(part.as_bytes());
        hash.update([0]);
    }
    let digest = hash.finalize();
    let suffix: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    // Names are at most 253 characters; the object's own name is a valid prefix.
    let prefix: String = object.chars().take(253 - 1 - suffix.len()).collect();
    format!("{prefix}.{suffix}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_warning_per_problem_while_it_holds() {
        // (generation, reason, note, settle after?, news?)
        let table: &[(i64, &str, &str, bool, bool)] = &[
            (1, "Invalid", "spec.a: bad", true, true),
            // Every retry or resync of the same generation: not news.
            (1, "Invalid", "spec.a: bad", true, false),
            (1, "Invalid", "spec.a: bad", false, false),
            // Another problem in the same pass is.
            (1, "Refused", "no shrink", false, true),
            // Seen twice within one pass: once.
            (1, "Refused", "no shrink", true, false),
            // A pass without the refusal: it is over …
            (1, "Invalid", "spec.a: bad", true, false),
            // … and news when it comes back.
            (1, "Invalid", "spec.a: bad", false, false),
            (1, "Refused", "no shrink", true, true),
            // A new generation shows what still holds once more.
            (2, "Refused", "no shrink", true, true),
            (2, "Refused", "no shrink", true, false),
        ];
        let mut warnings = Warnings::default();
        for (i, (generation, reason, note, settle, news)) in table.iter().enumerate() {
            assert_eq!(
                warnings.is_news(*generation, reason, note),
                *news,
                "row {i}: {generation} {reason} {note}"
            );
            if *settle {
                warnings.settle();
            }
        }
    }

    #[test]
    fn event_names_are_stable_per_problem_and_valid_for_any_cluster_name() {
        let name = event_name("acid-a", "uid-1", 3, "Invalid", "spec.a: bad");
        assert_eq!(
            name,
            event_name("acid-a", "uid-1", 3, "Invalid", "spec.a: bad")
        );
        assert!(name.starts_with("acid-a.") && name.len() == "acid-a.".len() + 16);
        for other in [
            event_name("acid-a", "uid-2", 3, "Invalid", "spec.a: bad"),
            event_name("acid-a", "uid-1", 4, "Invalid", "spec.a: bad"),
            event_name("acid-a", "uid-1", 3, "SyncFailed", "spec.a: bad"),
            event_name("acid-a", "uid-1", 3, "Invalid", "spec.b: bad"),
        ] {
            assert_ne!(name, other);
        }
        let long = event_name(&"a".repeat(253), "u", 1, "Invalid", "x");
        assert_eq!(long.len(), 253);
    }
}
