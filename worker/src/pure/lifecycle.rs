//! What a cluster's task knows of its postgresql object between passes, as one explicit
//! state: waiting for it, managing it, leaving it alone while paused, removing what a
//! deleted one left, or removing that first when a newer object took the name meanwhile.
//! Events move it ([`Lifecycle::arrive`]); a pass asks it what to do ([`Lifecycle::step`])
//! and reports how that ended (the other methods). No I/O here.
use chrono::NaiveDate;
use pgop_proto::v1::{ClusterEvent, ClusterEventType};

#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) enum Lifecycle {
    /// Assigned; the object has not arrived yet.
    #[default]
    Awaiting,
    /// pgop reconciles the object. `changed`: an UPDATE arrived that no pass has carried
    /// out yet (the status reads Updating meanwhile).
    Managed { object: ClusterEvent, changed: bool },
    /// The manifest asks pgop to leave the cluster alone; announced once.
    Paused { object: ClusterEvent, changed: bool },
    /// The object was deleted: its objects go, then each DELETE received is confirmed
    /// (the scheduler waits for one "Deleted" per DELETE it sent). `since`: the day the
    /// first one arrived, which delete protection compares with.
    Deleted {
        object: ClusterEvent,
        confirmations: u32,
        since: NaiveDate,
    },
    /// A newer object arrived before a deletion was carried out: the deletion runs first,
    /// so the newer object starts from nothing instead of adopting the old one's children.
    Replaced {
        deleted: ClusterEvent,
        confirmations: u32,
        since: NaiveDate,
        next: Box<Lifecycle>,
    },
}

/// What the next pass does.
#[derive(Debug, PartialEq)]
pub(crate) enum Step<'a> {
    /// Nothing to work on yet.
    Wait,
    /// Remove a deleted object's objects, confirm `confirmations` DELETEs, then go on with
    /// the newer object (`then_continue`) or end the task.
    Delete {
        object: &'a ClusterEvent,
        confirmations: u32,
        since: NaiveDate,
        then_continue: bool,
    },
    /// Reconcile the live object.
    Reconcile(&'a ClusterEvent),
}

/// What an arriving event meant.
#[derive(Debug, PartialEq)]
pub(crate) struct Arrival {
    /// Another object under the same name: what was known of the old one is void.
    pub recreated: bool,
}

fn is(event: &ClusterEvent, kind: ClusterEventType) -> bool {
    event.r#type == kind as i32
}

impl Lifecycle {
    /// The newest object received, deleted or not.
    pub fn object(&self) -> Option<&ClusterEvent> {
        match self {
            Lifecycle::Awaiting => None,
            Lifecycle::Managed { object, .. }
            | Lifecycle::Paused { object, .. }
            | Lifecycle::Deleted { object, .. } => Some(object),
            Lifecycle::Replaced { next, .. } => next.object(),
        }
    }

    /// An event of the object (ADD, UPDATE, DELETE, or one made up by the scheduler).
    pub fn arrive(&mut self, mut event: ClusterEvent, today: NaiveDate) -> Arrival {
        let recreated = self
            .object()
            .is_some_and(|o| !o.uid.is_empty() && o.uid != event.uid);
        *self = match std::mem::take(self) {
            Lifecycle::Replaced {
                deleted,
                confirmations,
                since,
                mut next,
            } => {
                next.arrive(event, today);
                match *next {
                    // The newer object was deleted too and a third arrived: one deletion by
                    // name, of the newest manifest, covers every DELETE received so far.
                    Lifecycle::Replaced {
                        deleted: newer,
                        confirmations: more,
                        since: newer_since,
                        next,
                    } => Lifecycle::Replaced {
                        deleted: newer,
                        confirmations: confirmations + more,
                        since: newer_since,
                        next,
                    },
                    next => Lifecycle::Replaced {
                        deleted,
                        confirmations,
                        since,
                        next: Box::new(next),
                    },
                }
            }
            Lifecycle::Deleted {
                object: previous,
                confirmations,
                since,
            } => {
                if is(&event, ClusterEventType::Delete) {
                    keep_manifest(&mut event, &previous);
                    Lifecycle::Deleted {
                        object: event,
                        confirmations: confirmations + 1,
                        since,
                    }
                } else {
                    Lifecycle::Replaced {
                        deleted: previous,
                        confirmations,
                        since,
                        next: Box::new(current(event, false, today)),
                    }
                }
            }
            Lifecycle::Managed {
                object: previous,
                changed,
            } => {
                keep_manifest(&mut event, &previous);
                current(event, changed, today)
            }
            Lifecycle::Paused {
                object: previous,
                changed,
            } => {
                if is(&event, ClusterEventType::Delete) {
                    keep_manifest(&mut event, &previous);
                    current(event, false, today)
                } else {
                    Lifecycle::Paused {
                        changed: changed || is(&event, ClusterEventType::Update),
                        object: event,
                    }
                }
            }
            Lifecycle::Awaiting => current(event, false, today),
        };
        Arrival { recreated }
    }

    pub fn step(&self) -> Step<'_> {
        match self {
            Lifecycle::Awaiting => Step::Wait,
            Lifecycle::Managed { object, .. } | Lifecycle::Paused { object, .. } => {
                Step::Reconcile(object)
            }
            Lifecycle::Deleted {
                object,
                confirmations,
                since,
            } => Step::Delete {
                object,
                confirmations: *confirmations,
                since: *since,
                then_continue: false,
            },
            Lifecycle::Replaced {
                deleted,
                confirmations,
                since,
                ..
            } => Step::Delete {
                object: deleted,
                confirmations: *confirmations,
                since: *since,
                then_continue: true,
            },
        }
    }

    /// A deletion carried out and confirmed: the newer object's turn, or nothing left.
    pub fn deletion_done(&mut self) {
        *self = match std::mem::take(self) {
            Lifecycle::Replaced { next, .. } => *next,
            Lifecycle::Deleted { object, since, .. } => Lifecycle::Deleted {
                object,
                confirmations: 0,
                since,
            },
            other => other,
        };
    }

    /// Whether an UPDATE awaits its pass; a pass that carries it out clears it.
    pub fn take_change(&mut self) -> bool {
        match self {
            Lifecycle::Managed { changed, .. } => std::mem::take(changed),
            _ => false,
        }
    }

    /// The manifest pauses the cluster; true when that is news (to announce).
    pub fn pause(&mut self) -> bool {
        match std::mem::take(self) {
            Lifecycle::Managed { object, changed } => {
                *self = Lifecycle::Paused { object, changed };
                true
            }
            other => {
                *self = other;
                false
            }
        }
    }

    /// The manifest no longer pauses the cluster; true when it was paused (to announce).
    pub fn resume(&mut self) -> bool {
        match std::mem::take(self) {
            Lifecycle::Paused { object, changed } => {
                *self = Lifecycle::Managed { object, changed };
                true
            }
            other => {
                *self = other;
                false
            }
        }
    }
}

/// The state of a live or deleted object after `event`; `changed`: an UPDATE no pass has
/// carried out yet.
fn current(event: ClusterEvent, changed: bool, today: NaiveDate) -> Lifecycle {
    if is(&event, ClusterEventType::Delete) {
        Lifecycle::Deleted {
            object: event,
            confirmations: 1,
            since: today,
        }
    } else {
        Lifecycle::Managed {
            changed: changed || is(&event, ClusterEventType::Update),
            object: event,
        }
    }
}

/// A DELETE made up by the scheduler has no manifest: the last one seen of the same object
/// names what the cluster put in other namespaces.
fn keep_manifest(event: &mut ClusterEvent, previous: &ClusterEvent) {
    if is(event, ClusterEventType::Delete)
        && event.manifest_json.is_empty()
        && previous.uid == event.uid
    {
        event.manifest_json = previous.manifest_json.clone();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(2026, 12, d).unwrap()
    }

    fn event(kind: ClusterEventType, uid: &str, manifest: &str) -> ClusterEvent {
        ClusterEvent {
            r#type: kind as i32,
            uid: uid.into(),
            manifest_json: manifest.as_bytes().to_vec(),
            ..ClusterEvent::default()
        }
    }
    fn add(uid: &str) -> ClusterEvent {
        event(ClusterEventType::Add, uid, uid)
    }
    fn update(uid: &str) -> ClusterEvent {
        event(ClusterEventType::Update, uid, &format!("{uid}'"))
    }
    fn delete(uid: &str) -> ClusterEvent {
        event(ClusterEventType::Delete, uid, "")
    }

    fn managed(object: ClusterEvent, changed: bool) -> Lifecycle {
        Lifecycle::Managed { object, changed }
    }
    fn deleted(uid: &str, manifest: &str, confirmations: u32, since: u32) -> Lifecycle {
        Lifecycle::Deleted {
            object: event(ClusterEventType::Delete, uid, manifest),
            confirmations,
            since: day(since),
        }
    }

    fn after(events: Vec<(ClusterEvent, u32)>) -> (Lifecycle, Vec<bool>) {
        let mut state = Lifecycle::default();
        let recreated = events
            .into_iter()
            .map(|(e, d)| state.arrive(e, day(d)).recreated)
            .collect();
        (state, recreated)
    }

    /// A case: its name, the events with their days, the state after them and which of
    /// them meant a recreated object.
    type Case = (&'static str, Vec<(ClusterEvent, u32)>, Lifecycle, Vec<bool>);

    #[test]
    fn events_move_the_state() {
        let cases: Vec<Case> = vec![
            ("nothing yet", vec![], Lifecycle::Awaiting, vec![]),
            (
                "an ADD is managed, unchanged",
                vec![(add("a"), 1)],
                managed(add("a"), false),
                vec![false],
            ),
            (
                "an UPDATE marks the change until a pass takes it",
                vec![(add("a"), 1), (update("a"), 1)],
                managed(update("a"), true),
                vec![false, false],
            ),
            (
                "an UPDATE first (the assignment of a cluster that changed) is a change",
                vec![(update("a"), 1)],
                managed(update("a"), true),
                vec![false],
            ),
            (
                "a DELETE without a manifest keeps the last one of the same object",
                vec![(add("a"), 1), (update("a"), 1), (delete("a"), 2)],
                deleted("a", "a'", 1, 2),
                vec![false, false, false],
            ),
            (
                "every DELETE is confirmed; the day is the first one's",
                vec![(add("a"), 1), (delete("a"), 2), (delete("a"), 3)],
                deleted("a", "a", 2, 2),
                vec![false, false, false],
            ),
            (
                "a DELETE of an object never seen keeps its empty manifest",
                vec![(delete("a"), 4)],
                deleted("a", "", 1, 4),
                vec![false],
            ),
            (
                "a newer object after a DELETE waits for the deletion",
                vec![(add("a"), 1), (delete("a"), 1), (add("b"), 2)],
                Lifecycle::Replaced {
                    deleted: event(ClusterEventType::Delete, "a", "a"),
                    confirmations: 1,
                    since: day(1),
                    next: Box::new(managed(add("b"), false)),
                },
                vec![false, false, true],
            ),
            (
                "the newer one deleted and a third: one deletion of the newest covers all",
                vec![
                    (add("a"), 1),
                    (delete("a"), 1),
                    (add("b"), 2),
                    (delete("b"), 3),
                    (add("c"), 4),
                ],
                Lifecycle::Replaced {
                    deleted: event(ClusterEventType::Delete, "b", "b"),
                    confirmations: 2,
                    since: day(3),
                    next: Box::new(managed(add("c"), false)),
                },
                vec![false, false, true, false, true],
            ),
            (
                "the newer one deleted: the old deletion first, then the newer's",
                vec![
                    (add("a"), 1),
                    (delete("a"), 1),
                    (add("b"), 2),
                    (delete("b"), 3),
                ],
                Lifecycle::Replaced {
                    deleted: event(ClusterEventType::Delete, "a", "a"),
                    confirmations: 1,
                    since: day(1),
                    next: Box::new(deleted("b", "b", 1, 3)),
                },
                vec![false, false, true, false],
            ),
        ];
        for (name, events, want, recreated) in cases {
            let (state, seen) = after(events);
            assert_eq!(state, want, "{name}");
            assert_eq!(seen, recreated, "{name}");
        }
    }

    #[test]
    fn each_state_asks_for_its_step() {
        let (replaced, _) = after(vec![(add("a"), 1), (delete("a"), 1), (add("b"), 2)]);
        let cases = [
            (Lifecycle::Awaiting, Step::Wait),
            (managed(add("a"), true), Step::Reconcile(&add("a"))),
            (
                Lifecycle::Paused {
                    object: add("a"),
                    changed: false,
                },
                Step::Reconcile(&add("a")),
            ),
            (
                deleted("a", "a", 2, 5),
                Step::Delete {
                    object: &event(ClusterEventType::Delete, "a", "a"),
                    confirmations: 2,
                    since: day(5),
                    then_continue: false,
                },
            ),
            (
                replaced.clone(),
                Step::Delete {
                    object: &event(ClusterEventType::Delete, "a", "a"),
                    confirmations: 1,
                    since: day(1),
                    then_continue: true,
                },
            ),
        ];
        for (state, want) in &cases {
            assert_eq!(&state.step(), want, "{state:?}");
        }
    }

    #[test]
    fn a_carried_out_deletion_hands_over_to_the_newer_object() {
        let (mut state, _) = after(vec![(add("a"), 1), (delete("a"), 1), (update("b"), 2)]);
        state.deletion_done();
        assert_eq!(state, managed(update("b"), true));
        assert!(state.take_change());
        assert!(!state.take_change(), "taken once");

        let (mut state, _) = after(vec![(add("a"), 1), (delete("a"), 1), (delete("a"), 1)]);
        state.deletion_done();
        assert_eq!(state, deleted("a", "a", 0, 1), "nothing left to confirm");
    }

    #[test]
    fn pausing_and_resuming_are_announced_once_and_keep_the_change() {
        let (mut state, _) = after(vec![(add("a"), 1)]);
        assert!(!state.resume(), "not paused");
        assert!(state.pause());
        assert!(!state.pause(), "already paused");
        state.arrive(update("a"), day(1));
        assert_eq!(
            state,
            Lifecycle::Paused {
                object: update("a"),
                changed: true
            }
        );
        assert!(!state.take_change(), "a paused cluster carries out nothing");
        assert!(state.resume());
        assert_eq!(state, managed(update("a"), true));
        state.arrive(delete("a"), day(2));
        assert!(!state.pause(), "a deleted cluster is not paused");

        let (mut state, _) = after(vec![(add("a"), 1)]);
        state.pause();
        state.arrive(delete("a"), day(3));
        assert_eq!(
            state,
            deleted("a", "a", 1, 3),
            "a paused cluster can be deleted"
        );
    }
}
