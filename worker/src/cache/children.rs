//! The objects pgop writes for a cluster, as the watcher reported them (see the watcher's
//! `children`): a pass leaves an object alone without a request when the report shows it
//! exists and holds what pgop applied. Whatever else a pass does still starts by reading the
//! object, so a report that lags (an object created a moment ago) costs a read, never a
//! wrong write.
use std::collections::BTreeMap;
use std::sync::RwLock;

use k8s_openapi::api::core::v1::Secret;
use pgop_proto::v1::{ChildDrift, ChildState};

/// What the watcher last reported of one object.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Seen {
    /// Not among what the watcher reports (another namespace, a name it does not select):
    /// only a read tells.
    Unobserved,
    Absent,
    Present(ChildState),
}

impl Seen {
    /// Whether an object pgop applies needs no request: it exists, still holds what pgop
    /// applied (nobody changed it since), and what pgop applied had `hash`.
    pub(crate) fn as_applied(&self, hash: &str) -> bool {
        matches!(self, Seen::Present(s)
            if s.drift == ChildDrift::InSync as i32 && s.applied_hash == hash)
    }

    pub(crate) fn exists(&self) -> bool {
        matches!(self, Seen::Present(_))
    }

    pub(crate) fn absent(&self) -> bool {
        matches!(self, Seen::Absent)
    }
}

/// One cluster's objects by kind and name. Only a complete report (the one that comes with
/// the cluster's assignment, and what follows it) says an object is absent; before it,
/// nothing is known.
#[derive(Debug, Default)]
pub(crate) struct Children {
    objects: BTreeMap<(String, String), ChildState>,
    complete: bool,
}

impl Children {
    /// The report that came with the assignment has been taken in.
    pub(crate) fn complete(&mut self) {
        self.complete = true;
    }

    /// This worker deleted every object: none is left, whatever reports are on their way.
    pub(crate) fn deleted_all(&mut self) {
        self.objects.clear();
        self.complete = true;
    }

    pub(crate) fn take(&mut self, state: ChildState) {
        let key = (state.kind.clone(), state.name.clone());
        match state.deleted {
            true => self.objects.remove(&key),
            false => self.objects.insert(key, state),
        };
    }

    pub(crate) fn seen(&self, kind: &str, name: &str) -> Seen {
        match self.objects.get(&(kind.to_string(), name.to_string())) {
            Some(state) => Seen::Present(state.clone()),
            None if self.complete => Seen::Absent,
            None => Seen::Unobserved,
        }
    }

    /// The cluster's volume claims: (name, requested storage).
    pub(crate) fn claims(&self) -> Vec<(String, Option<String>)> {
        self.objects
            .values()
            .filter(|s| s.kind == "PersistentVolumeClaim")
            .map(|s| {
                (
                    s.name.clone(),
                    Some(s.storage.clone()).filter(|s| !s.is_empty()),
                )
            })
            .collect()
    }

    /// The version of the Secret `name` as last reported: it changes with every write.
    pub(crate) fn secret_version(&self, name: &str) -> Option<&str> {
        self.objects
            .get(&("Secret".to_string(), name.to_string()))
            .map(|s| s.resource_version.as_str())
            .filter(|v| !v.is_empty())
    }
}

/// The credentials Secrets a cluster's role syncs read, kept while the watcher reports the
/// version that was read: the role sync of a cluster whose Secrets did not change reads
/// none. (Secrets hold passwords: no `Debug`.)
#[derive(Default)]
pub(crate) struct SecretsMemo(BTreeMap<String, Secret>);

/// The Secrets one role sync may take from the memo.
pub(crate) struct KnownSecrets<'a> {
    pub(crate) namespace: &'a str,
    pub(crate) children: &'a Children,
    pub(crate) memo: &'a mut SecretsMemo,
}

impl KnownSecrets<'_> {
    /// The Secret as read before, when it is still the version the watcher reports.
    pub(crate) fn recall(&self, namespace: &str, name: &str) -> Option<Secret> {
        if namespace != self.namespace {
            return None;
        }
        let reported = self.children.secret_version(name)?;
        self.memo
            .0
            .get(name)
            .filter(|s| s.metadata.resource_version.as_deref() == Some(reported))
            .cloned()
    }

    pub(crate) fn remember(&mut self, secret: &Secret) {
        let name = secret.metadata.name.clone().unwrap_or_default();
        if secret.metadata.namespace.as_deref() == Some(self.namespace) {
            self.memo.0.insert(name, secret.clone());
        }
    }

    pub(crate) fn forget(&mut self, name: &str) {
        self.memo.0.remove(name);
    }
}

/// What the clusters of every namespace share (the pod service account and its role
/// binding), as the watcher reported it: one map for all of the worker's clusters.
#[derive(Debug, Default)]
pub(crate) struct SharedChildren(RwLock<BTreeMap<String, ChildState>>);

impl SharedChildren {
    fn key(namespace: &str, kind: &str, name: &str) -> String {
        format!("{namespace}/{kind}/{name}")
    }

    pub(crate) fn take(&self, state: ChildState) {
        let key = Self::key(&state.namespace, &state.kind, &state.name);
        let mut map = self.0.write().unwrap_or_else(|e| e.into_inner());
        match state.deleted {
            true => map.remove(&key),
            false => map.insert(key, state),
        };
    }

    pub(crate) fn clear(&self) {
        self.0.write().unwrap_or_else(|e| e.into_inner()).clear();
    }

    fn seen(&self, namespace: &str, kind: &str, name: &str) -> Seen {
        let map = self.0.read().unwrap_or_else(|e| e.into_inner());
        match map.get(&Self::key(namespace, kind, name)) {
            Some(state) => Seen::Present(state.clone()),
            None => Seen::Absent,
        }
    }
}

/// Kinds the watcher selects by name (the configured pod service account name) rather
/// than by the cluster-name label.
const SHARED_KINDS: [&str; 2] = ["ServiceAccount", "RoleBinding"];

/// What one pass can see of the objects it writes.
pub(crate) struct Observed<'a> {
    pub(crate) namespace: &'a str,
    pub(crate) children: &'a Children,
    pub(crate) shared: &'a SharedChildren,
    /// The name the watcher selects shared objects by.
    pub(crate) shared_name: &'a str,
}

impl Observed<'_> {
    pub(crate) fn seen(&self, namespace: &str, kind: &str, name: &str) -> Seen {
        if namespace != self.namespace {
            return Seen::Unobserved;
        }
        if SHARED_KINDS.contains(&kind) {
            return match name == self.shared_name {
                true => self.shared.seen(namespace, kind, name),
                false => Seen::Unobserved,
            };
        }
        self.children.seen(kind, name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(kind: &str, name: &str, hash: &str, drift: ChildDrift) -> ChildState {
        ChildState {
            namespace: "ns".into(),
            cluster: "a".into(),
            kind: kind.into(),
            name: name.into(),
            applied_hash: hash.into(),
            drift: drift as i32,
            ..ChildState::default()
        }
    }

    #[test]
    fn an_object_is_left_alone_only_as_pgop_applied_it() {
        let cases = [
            (
                "as applied",
                Seen::Present(state("Service", "a", "h1", ChildDrift::InSync)),
                true,
            ),
            (
                "applied with another desired object",
                Seen::Present(state("Service", "a", "h0", ChildDrift::InSync)),
                false,
            ),
            (
                "changed by somebody",
                Seen::Present(state("Service", "a", "h1", ChildDrift::Drifted)),
                false,
            ),
            (
                "not written by pgop",
                Seen::Present(state("Service", "a", "h1", ChildDrift::Unknown)),
                false,
            ),
            ("absent", Seen::Absent, false),
            ("unobserved", Seen::Unobserved, false),
        ];
        for (name, seen, want) in cases {
            assert_eq!(seen.as_applied("h1"), want, "{name}");
        }
        assert!(!Seen::Unobserved.absent() && !Seen::Unobserved.exists());
    }

    #[test]
    fn reports_replace_and_remove_and_other_namespaces_are_unobserved() {
        let mut children = Children::default();
        assert_eq!(
            children.seen("Service", "b"),
            Seen::Unobserved,
            "nothing is absent before the assignment's report"
        );
        children.take(state("Service", "a", "h1", ChildDrift::InSync));
        children.take(state("Service", "a", "h2", ChildDrift::InSync));
        children.complete();
        let mut claim = state(
            "PersistentVolumeClaim",
            "pgdata-a-0",
            "",
            ChildDrift::Unknown,
        );
        claim.storage = "1Gi".into();
        children.take(claim);
        let shared = SharedChildren::default();
        shared.take(state(
            "ServiceAccount",
            "postgres-pod",
            "",
            ChildDrift::Unknown,
        ));
        let observed = Observed {
            namespace: "ns",
            children: &children,
            shared: &shared,
            shared_name: "postgres-pod",
        };
        assert!(observed.seen("ns", "Service", "a").as_applied("h2"));
        assert!(observed.seen("ns", "Service", "b").absent());
        assert_eq!(observed.seen("other", "Secret", "s"), Seen::Unobserved);
        assert!(observed
            .seen("ns", "ServiceAccount", "postgres-pod")
            .exists());
        assert_eq!(
            observed.seen("ns", "RoleBinding", "custom"),
            Seen::Unobserved,
            "the watcher selects shared objects by the configured name only"
        );
        assert!(observed.seen("ns", "RoleBinding", "postgres-pod").absent());
        assert_eq!(
            children.claims(),
            [("pgdata-a-0".to_string(), Some("1Gi".to_string()))]
        );
        let mut gone = state("Service", "a", "h2", ChildDrift::InSync);
        gone.deleted = true;
        children.take(gone);
        assert!(children.seen("Service", "a").absent());
    }

    #[test]
    fn a_secret_is_read_again_once_the_watcher_reports_another_version() {
        let secret = |version: &str| -> Secret {
            serde_json::from_value(serde_json::json!({"metadata": {"name": "s",
                "namespace": "ns", "resourceVersion": version}}))
            .unwrap()
        };
        let mut children = Children::default();
        let mut reported = state("Secret", "s", "", ChildDrift::Unknown);
        reported.resource_version = "1".into();
        children.take(reported.clone());
        let mut memo = SecretsMemo::default();
        let mut known = KnownSecrets {
            namespace: "ns",
            children: &children,
            memo: &mut memo,
        };
        assert!(known.recall("ns", "s").is_none(), "never read");
        known.remember(&secret("1"));
        assert!(known.recall("ns", "s").is_some());
        assert!(known.recall("other", "s").is_none(), "another namespace");
        known.forget("s");
        assert!(known.recall("ns", "s").is_none(), "forgotten when written");
        known.remember(&secret("1"));
        reported.resource_version = "2".into();
        children.take(reported);
        let known = KnownSecrets {
            namespace: "ns",
            children: &children,
            memo: &mut memo,
        };
        assert!(
            known.recall("ns", "s").is_none(),
            "changed since it was read"
        );
    }
}
