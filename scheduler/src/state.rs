//! The scheduler's bookkeeping, free of I/O: every handler takes one input (a worker joins
//! or leaves, a release or status arrives, the watcher reports an event) and returns the
//! messages to send. Invariants: a cluster is never assigned to two workers at once (a move
//! waits for the old owner's `Released` unless that owner is gone), and a deleted cluster is
//! forgotten only once its owner confirmed the deletion (status "Deleted"): until then each
//! new owner receives the DELETE again.
use std::collections::{BTreeMap, BTreeSet};

use pgop_proto::v1::{
    scheduler_message, watch_event, Assign, ChildState, ClusterEvent, ClusterEventType,
    ConfigEvent, NodeState, PodState, Release, SchedulerMessage, WatchEvent,
};

use crate::sharding;

pub type Outbox = Vec<(String, SchedulerMessage)>;

/// The status a worker reports once it removed everything of a deleted cluster.
pub const DELETED_STATUS: &str = "Deleted";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ownership {
    Unassigned,
    Assigned(String),
    /// Waiting for `from` to release the cluster.
    Releasing {
        from: String,
    },
}

#[derive(Debug, Clone)]
pub struct ClusterEntry {
    /// The latest object event (ADD/UPDATE/SYNC), or the DELETE of the object until the
    /// owner confirmed it.
    pub current: ClusterEvent,
    /// The latest DELETE no owner has confirmed yet: `current` itself while the cluster is
    /// being deleted, or the DELETE of an earlier object under this key (deleted, or replaced
    /// by one with another uid) that the newer object in `current` followed. An owner
    /// receives it first, in its `Assign`, and `current` right after.
    pub pending_delete: Option<ClusterEvent>,
    /// DELETEs sent to the owner (or the releasing owner) that it has not confirmed yet.
    pub unconfirmed_deletes: u32,
    pub members: Members,
    pub ownership: Ownership,
    pub status: String,
    pub team: String,
}

impl ClusterEntry {
    pub fn deleting(&self) -> bool {
        is_delete(&self.current)
    }
}

/// What the watcher reported of a cluster besides its object: its pods and the objects pgop
/// writes for it. Its owner receives them with the cluster.
#[derive(Debug, Clone, Default)]
pub struct Members {
    /// pod name → state
    pub pods: BTreeMap<String, PodState>,
    /// `Kind/name` → state
    pub children: BTreeMap<String, ChildState>,
}

impl Members {
    fn is_empty(&self) -> bool {
        self.pods.is_empty() && self.children.is_empty()
    }

    fn pod(&mut self, p: &PodState) {
        match p.deleted {
            true => self.pods.remove(&p.name),
            false => self.pods.insert(p.name.clone(), p.clone()),
        };
    }

    fn child(&mut self, c: &ChildState) {
        let key = format!("{}/{}", c.kind, c.name);
        match c.deleted {
            true => self.children.remove(&key),
            false => self.children.insert(key, c.clone()),
        };
    }

    /// Drops what a snapshot did not mention (`seen` holds member keys of [`member_key`]);
    /// returns the deletions to tell the owner.
    fn keep_seen(&mut self, cluster: &str, seen: &BTreeSet<String>) -> Vec<watch_event::Event> {
        let mut gone = Vec::new();
        self.pods.retain(|name, p| {
            let keep = seen.contains(&member_key(cluster, "Pod", name));
            if !keep {
                gone.push(watch_event::Event::Pod(PodState {
                    deleted: true,
                    ..p.clone()
                }));
            }
            keep
        });
        self.children.retain(|key, c| {
            let keep = seen.contains(&format!("{cluster}|{key}"));
            if !keep {
                gone.push(watch_event::Event::Child(ChildState {
                    deleted: true,
                    ..c.clone()
                }));
            }
            keep
        });
        gone
    }
}

/// The kind under which shared child objects are seen in a snapshot (their names hold the
/// namespace and kind).
const SHARED: &str = "Shared";

/// A pod's or child object's key in a snapshot: `cluster|Kind/name`.
fn member_key(cluster: &str, kind: &str, name: &str) -> String {
    format!("{cluster}|{kind}/{name}")
}

#[derive(Debug, Clone, Default)]
pub struct WorkerEntry {
    pub address: String,
    pub capacity: u32,
    pub clusters: u32,
    pub queued: u32,
}

#[derive(Debug, Default)]
pub struct SchedulerState {
    pub clusters: BTreeMap<String, ClusterEntry>,
    /// Pods and objects of keys with no cluster: left by a deletion that kept its objects
    /// (delete protection) or seen before their manifest. A cluster created under the key
    /// starts with them, so its owner knows the pods and objects it adopts.
    pub unowned: BTreeMap<String, Members>,
    /// What the clusters of a namespace share (the pod service account and its role
    /// binding): every worker knows them.
    shared: BTreeMap<String, ChildState>,
    pub workers: BTreeMap<String, WorkerEntry>,
    config: Option<ConfigEvent>,
    /// Every node as the watcher reported it, for workers that join later.
    nodes: BTreeMap<String, NodeState>,
    /// Keys seen since the current watcher snapshot began.
    snapshot_seen: Option<BTreeSet<String>>,
    /// Pods and child objects seen since then ([`member_key`]).
    snapshot_members: BTreeSet<String>,
}

pub fn cluster_key(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

fn is_delete(c: &ClusterEvent) -> bool {
    c.r#type == ClusterEventType::Delete as i32
}

/// The DELETE of the object `c` describes.
fn delete_of(c: &ClusterEvent) -> ClusterEvent {
    ClusterEvent {
        r#type: ClusterEventType::Delete as i32,
        namespace: c.namespace.clone(),
        name: c.name.clone(),
        uid: c.uid.clone(),
        resource_version: c.resource_version.clone(),
        // What the object named elsewhere (Secrets in other namespaces) and its delete
        // annotations are only known from it.
        manifest_json: c.manifest_json.clone(),
    }
}

fn event(event: watch_event::Event) -> SchedulerMessage {
    SchedulerMessage {
        message: Some(scheduler_message::Message::Event(WatchEvent {
            sequence: 0,
            event: Some(event),
        })),
    }
}

/// Hands `entry` to `worker`: the unconfirmed DELETE first (in the `Assign`), then the
/// current object when it is a newer one.
fn assign(key: &str, entry: &mut ClusterEntry, worker: &str, out: &mut Outbox) {
    let first = entry
        .pending_delete
        .clone()
        .unwrap_or_else(|| entry.current.clone());
    out.push((
        worker.to_string(),
        SchedulerMessage {
            message: Some(scheduler_message::Message::Assign(Assign {
                cluster: key.to_string(),
                current: Some(first),
                pods: entry.members.pods.values().cloned().collect(),
                children: entry.members.children.values().cloned().collect(),
            })),
        },
    ));
    if entry.pending_delete.is_some() && !entry.deleting() {
        out.push((
            worker.to_string(),
            event(watch_event::Event::Cluster(entry.current.clone())),
        ));
    }
    entry.unconfirmed_deletes = u32::from(entry.pending_delete.is_some());
    entry.ownership = Ownership::Assigned(worker.to_string());
}

/// Moves one cluster toward its rendezvous owner among `workers`.
fn place(workers: &[&str], key: &str, entry: &mut ClusterEntry, out: &mut Outbox) {
    let Some(desired) = sharding::owner(key, workers.iter().copied()) else {
        return;
    };
    match &entry.ownership {
        Ownership::Unassigned => assign(key, entry, desired, out),
        Ownership::Assigned(owner) if owner != desired => {
            out.push((
                owner.clone(),
                SchedulerMessage {
                    message: Some(scheduler_message::Message::Release(Release {
                        cluster: key.to_string(),
                    })),
                },
            ));
            entry.ownership = Ownership::Releasing {
                from: owner.clone(),
            };
        }
        _ => {}
    }
}

impl SchedulerState {
    /// A worker's new session. Under an id already known it is a reconnect: the worker keeps
    /// its clusters, but its new session holds nothing (a worker fences itself when it loses
    /// its stream), so each is assigned to it again with its current state; what it was
    /// releasing is free for the next owner.
    pub fn worker_joined(&mut self, id: &str, address: String, capacity: u32) -> Outbox {
        let mut out = Vec::new();
        let reconnect = self
            .workers
            .insert(
                id.to_string(),
                WorkerEntry {
                    address,
                    capacity,
                    ..Default::default()
                },
            )
            .is_some();
        if let Some(config) = &self.config {
            out.push((
                id.to_string(),
                event(watch_event::Event::Config(config.clone())),
            ));
        }
        // Every worker knows every node: a cluster it gets may have a master on any of them.
        for node in self.nodes.values() {
            out.push((
                id.to_string(),
                event(watch_event::Event::Node(node.clone())),
            ));
        }
        for child in self.shared.values() {
            out.push((
                id.to_string(),
                event(watch_event::Event::Child(child.clone())),
            ));
        }
        if reconnect {
            for (key, entry) in self.clusters.iter_mut() {
                match &entry.ownership {
                    Ownership::Assigned(w) if w == id => assign(key, entry, id, &mut out),
                    Ownership::Releasing { from } if from == id => {
                        entry.ownership = Ownership::Unassigned
                    }
                    _ => {}
                }
            }
        }
        out.extend(self.rebalance());
        out
    }

    pub fn worker_left(&mut self, id: &str) -> Outbox {
        if self.workers.remove(id).is_none() {
            return Vec::new();
        }
        for entry in self.clusters.values_mut() {
            match &entry.ownership {
                Ownership::Assigned(w) | Ownership::Releasing { from: w } if w == id => {
                    entry.ownership = Ownership::Unassigned
                }
                _ => {}
            }
        }
        self.rebalance()
    }

    pub fn heartbeat(&mut self, id: &str, clusters: u32, queued: u32) {
        if let Some(w) = self.workers.get_mut(id) {
            w.clusters = clusters;
            w.queued = queued;
        }
    }

    pub fn released(&mut self, worker: &str, cluster: &str) -> Outbox {
        match self.clusters.get_mut(cluster) {
            Some(entry)
                if entry.ownership
                    == (Ownership::Releasing {
                        from: worker.to_string(),
                    }) =>
            {
                entry.ownership = Ownership::Unassigned;
                // Only this cluster changed: every other one is where the last full
                // rebalance put it.
                self.place_one(cluster)
            }
            _ => Vec::new(),
        }
    }

    /// A worker's status report. Only the owner's counts (a releasing owner's late report
    /// must not overwrite its successor's); "Deleted" confirms a DELETE the worker received
    /// (also from a releasing owner, which did receive it), and the cluster is forgotten
    /// once every DELETE sent is confirmed and no newer object took its place. Returns
    /// whether the cluster was forgotten.
    /// The configuration the watcher last reported, if any.
    pub fn config(&self) -> Option<&ConfigEvent> {
        self.config.as_ref()
    }

    pub fn cluster_status(
        &mut self,
        worker: &str,
        cluster: &str,
        status: String,
        team: String,
    ) -> bool {
        let Some(entry) = self.clusters.get_mut(cluster) else {
            return false;
        };
        let owner = matches!(&entry.ownership, Ownership::Assigned(w) if w == worker);
        if status == DELETED_STATUS {
            let holder = owner
                || matches!(&entry.ownership, Ownership::Releasing { from } if from == worker);
            if !holder || entry.unconfirmed_deletes == 0 {
                return false;
            }
            entry.unconfirmed_deletes -= 1;
            if entry.unconfirmed_deletes > 0 {
                return false;
            }
            entry.pending_delete = None;
            if entry.deleting() {
                if let Some(entry) = self.clusters.remove(cluster) {
                    if !entry.members.is_empty() {
                        self.unowned.insert(cluster.to_string(), entry.members);
                    }
                }
                return true;
            }
            return false;
        }
        if owner {
            entry.status = status;
            if !team.is_empty() {
                entry.team = team;
            }
        }
        false
    }

    /// A new watcher subscription starts with a snapshot.
    pub fn snapshot_started(&mut self) {
        self.snapshot_seen = Some(BTreeSet::new());
        self.snapshot_members.clear();
    }

    pub fn watch_event(&mut self, ev: WatchEvent) -> Outbox {
        match ev.event {
            Some(watch_event::Event::Cluster(c)) => self.cluster_event(c),
            Some(watch_event::Event::Pod(p)) => self.pod_event(p),
            Some(watch_event::Event::Child(c)) => self.child_event(c),
            Some(watch_event::Event::Config(c)) => {
                self.config = Some(c.clone());
                let msg = event(watch_event::Event::Config(c));
                self.workers
                    .keys()
                    .map(|w| (w.clone(), msg.clone()))
                    .collect()
            }
            Some(watch_event::Event::Node(n)) => {
                if n.deleted {
                    self.nodes.remove(&n.name);
                } else {
                    self.nodes.insert(n.name.clone(), n.clone());
                }
                let msg = event(watch_event::Event::Node(n));
                self.workers
                    .keys()
                    .map(|w| (w.clone(), msg.clone()))
                    .collect()
            }
            Some(watch_event::Event::SnapshotDone(_)) => self.snapshot_done(),
            None => Vec::new(),
        }
    }

    fn cluster_event(&mut self, mut c: ClusterEvent) -> Outbox {
        let key = cluster_key(&c.namespace, &c.name);
        if let Some(seen) = self.snapshot_seen.as_mut() {
            seen.insert(key.clone());
        }
        let Some(entry) = self.clusters.get_mut(&key) else {
            // A DELETE of a cluster this scheduler never knew: it was deleted while nobody
            // listened (the watcher reports such leftovers in its snapshot). A worker still
            // has to remove its objects, so it is placed like any other cluster.
            let pending_delete = is_delete(&c).then(|| c.clone());
            let members = self.unowned.remove(&key).unwrap_or_default();
            self.clusters.insert(
                key.clone(),
                ClusterEntry {
                    current: c,
                    pending_delete,
                    unconfirmed_deletes: 0,
                    members,
                    ownership: Ownership::Unassigned,
                    status: String::new(),
                    team: String::new(),
                },
            );
            // A new cluster moves no other: place it alone (a snapshot of thousands of
            // clusters would otherwise rebalance all of them for each one).
            return self.place_one(&key);
        };
        // What the owner receives, in order.
        let mut deliver = Vec::with_capacity(2);
        if is_delete(&c) {
            entry.pending_delete = Some(c.clone());
        } else {
            // Another uid under the same key: the object was deleted and recreated (while
            // the watcher's stream was down, or the watcher said so without a DELETE). The
            // owner must delete the old object's children before it sees the new object.
            let replaced = !entry.deleting()
                && !entry.current.uid.is_empty()
                && !c.uid.is_empty()
                && entry.current.uid != c.uid;
            if replaced {
                let delete = delete_of(&entry.current);
                entry.pending_delete = Some(delete.clone());
                deliver.push(delete);
            }
            if replaced || entry.deleting() {
                c.r#type = ClusterEventType::Add as i32;
            }
        }
        entry.current = c.clone();
        deliver.push(c);
        match &entry.ownership {
            Ownership::Assigned(owner) => {
                entry.unconfirmed_deletes += deliver.iter().filter(|e| is_delete(e)).count() as u32;
                deliver
                    .into_iter()
                    .map(|e| (owner.clone(), event(watch_event::Event::Cluster(e))))
                    .collect()
            }
            // Unassigned or moving: the next owner receives the unconfirmed DELETE and the
            // current state on assignment.
            _ => Vec::new(),
        }
    }

    fn pod_event(&mut self, p: PodState) -> Outbox {
        let key = cluster_key(&p.namespace, &p.cluster);
        self.member_seen(&key, "Pod", &p.name, p.deleted);
        self.member_event(key, |m| m.pod(&p), watch_event::Event::Pod(p.clone()))
    }

    fn child_event(&mut self, c: ChildState) -> Outbox {
        if c.cluster.is_empty() {
            // Shared by the namespace's clusters: every worker keeps them.
            let key = format!("{}/{}/{}", c.namespace, c.kind, c.name);
            self.member_seen("", SHARED, &key, c.deleted);
            match c.deleted {
                true => self.shared.remove(&key),
                false => self.shared.insert(key, c.clone()),
            };
            let msg = event(watch_event::Event::Child(c));
            return self
                .workers
                .keys()
                .map(|w| (w.clone(), msg.clone()))
                .collect();
        }
        let key = cluster_key(&c.namespace, &c.cluster);
        self.member_seen(&key, &c.kind, &c.name, c.deleted);
        self.member_event(key, |m| m.child(&c), watch_event::Event::Child(c.clone()))
    }

    fn member_seen(&mut self, cluster: &str, kind: &str, name: &str, deleted: bool) {
        if self.snapshot_seen.is_some() && !deleted {
            self.snapshot_members
                .insert(member_key(cluster, kind, name));
        }
    }

    /// A pod or child object of the cluster `key` changed: kept, and sent to the owner.
    fn member_event(
        &mut self,
        key: String,
        apply: impl FnOnce(&mut Members),
        news: watch_event::Event,
    ) -> Outbox {
        let Some(entry) = self.clusters.get_mut(&key) else {
            let members = self.unowned.entry(key.clone()).or_default();
            apply(members);
            if members.is_empty() {
                self.unowned.remove(&key);
            }
            return Vec::new();
        };
        apply(&mut entry.members);
        match &entry.ownership {
            Ownership::Assigned(owner) => vec![(owner.clone(), event(news))],
            _ => Vec::new(),
        }
    }

    /// Clusters the snapshot did not mention were deleted while nobody was listening (those
    /// already being deleted need no second DELETE).
    fn snapshot_done(&mut self) -> Outbox {
        let Some(seen) = self.snapshot_seen.take() else {
            return Vec::new();
        };
        let mut out = self.forget_unseen_members();
        let gone: Vec<ClusterEvent> = self
            .clusters
            .iter()
            .filter(|(k, e)| !seen.contains(*k) && !e.deleting())
            .map(|(_, e)| delete_of(&e.current))
            .collect();
        for delete in gone {
            out.extend(self.cluster_event(delete));
        }
        out
    }

    /// Pods and objects the snapshot did not mention went while nobody was listening: their
    /// owners hear of it as of a deletion.
    fn forget_unseen_members(&mut self) -> Outbox {
        let seen = std::mem::take(&mut self.snapshot_members);
        let mut out = Vec::new();
        for (key, entry) in self.clusters.iter_mut() {
            let gone = entry.members.keep_seen(key, &seen);
            if let Ownership::Assigned(owner) = &entry.ownership {
                out.extend(gone.into_iter().map(|e| (owner.clone(), event(e))));
            }
        }
        for (key, members) in self.unowned.iter_mut() {
            members.keep_seen(key, &seen);
        }
        self.unowned.retain(|_, m| !m.is_empty());
        let shared_gone: Vec<ChildState> = self
            .shared
            .iter()
            .filter(|(key, _)| !seen.contains(&member_key("", SHARED, key)))
            .map(|(_, c)| ChildState {
                deleted: true,
                ..c.clone()
            })
            .collect();
        for gone in shared_gone {
            out.extend(self.child_event(gone));
        }
        out
    }

    /// Places one cluster (see [`place`]).
    fn place_one(&mut self, key: &str) -> Outbox {
        let mut out = Vec::new();
        let workers: Vec<&str> = self.workers.keys().map(String::as_str).collect();
        if let Some(entry) = self.clusters.get_mut(key) {
            place(&workers, key, entry, &mut out);
        }
        out
    }

    /// Moves every cluster toward its rendezvous owner among the live workers.
    fn rebalance(&mut self) -> Outbox {
        let mut out = Vec::new();
        let workers: Vec<&str> = self.workers.keys().map(String::as_str).collect();
        if workers.is_empty() {
            return out;
        }
        for (key, entry) in self.clusters.iter_mut() {
            place(&workers, key, entry, &mut out);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(kind: ClusterEventType, ns: &str, name: &str) -> WatchEvent {
        WatchEvent {
            sequence: 0,
            event: Some(watch_event::Event::Cluster(ClusterEvent {
                r#type: kind as i32,
                namespace: ns.into(),
                name: name.into(),
                ..Default::default()
            })),
        }
    }

    fn kinds(out: &Outbox) -> Vec<(String, &'static str, String)> {
        out.iter()
            .map(|(w, m)| match &m.message {
                Some(scheduler_message::Message::Assign(a)) => {
                    (w.clone(), "assign", a.cluster.clone())
                }
                Some(scheduler_message::Message::Release(r)) => {
                    (w.clone(), "release", r.cluster.clone())
                }
                Some(scheduler_message::Message::RollingTurn(t)) => {
                    (w.clone(), "turn", t.cluster.clone())
                }
                Some(scheduler_message::Message::Event(e)) => match &e.event {
                    Some(watch_event::Event::Cluster(c)) => {
                        (w.clone(), "cluster", cluster_key(&c.namespace, &c.name))
                    }
                    Some(watch_event::Event::Pod(p)) => {
                        (w.clone(), "pod", cluster_key(&p.namespace, &p.cluster))
                    }
                    Some(watch_event::Event::Config(_)) => (w.clone(), "config", String::new()),
                    Some(watch_event::Event::Child(c)) => (
                        w.clone(),
                        if c.deleted { "child-gone" } else { "child" },
                        format!("{}/{}/{}", c.namespace, c.kind, c.name),
                    ),
                    _ => (w.clone(), "other", String::new()),
                },
                None => (w.clone(), "none", String::new()),
            })
            .collect()
    }

    fn owners(state: &SchedulerState) -> BTreeMap<String, Ownership> {
        state
            .clusters
            .iter()
            .map(|(k, e)| (k.clone(), e.ownership.clone()))
            .collect()
    }

    fn with_clusters(n: usize) -> SchedulerState {
        let mut s = SchedulerState::default();
        for i in 0..n {
            assert!(
                s.watch_event(cluster(
                    ClusterEventType::Add,
                    &format!("ns{}", i % 3),
                    &format!("c{i}")
                ))
                .is_empty(),
                "no worker yet"
            );
        }
        s
    }

    #[test]
    fn clusters_wait_for_a_worker_then_are_assigned_once() {
        let mut s = with_clusters(12);
        let out = s.worker_joined("w1", "addr".into(), 4);
        assert_eq!(kinds(&out).iter().filter(|k| k.1 == "assign").count(), 12);
        assert!(owners(&s)
            .values()
            .all(|o| *o == Ownership::Assigned("w1".into())));
    }

    #[test]
    fn a_joining_worker_gets_clusters_only_after_the_old_owner_released_them() {
        let mut s = with_clusters(12);
        s.worker_joined("w1", "a".into(), 4);
        let out = s.worker_joined("w2", "b".into(), 4);
        let releases: Vec<_> = kinds(&out)
            .into_iter()
            .filter(|k| k.1 == "release")
            .collect();
        assert!(!releases.is_empty(), "w2 should win some clusters");
        assert!(
            kinds(&out).iter().all(|k| k.1 != "assign"),
            "nothing assigned before release"
        );
        // An update during the move is held back from both workers.
        let moving = releases[0].2.clone();
        let (ns, name) = moving.split_once('/').unwrap();
        assert!(s
            .watch_event(cluster(ClusterEventType::Update, ns, name))
            .is_empty());
        let out = s.released("w1", &moving);
        let k = kinds(&out);
        assert_eq!(k, vec![("w2".to_string(), "assign", moving.clone())]);
        // The assignment carries the update made during the move.
        let Some(scheduler_message::Message::Assign(a)) = &out[0].1.message else {
            panic!()
        };
        assert_eq!(
            a.current.as_ref().unwrap().r#type,
            ClusterEventType::Update as i32
        );
        // A stale release from a worker that does not hold the move changes nothing.
        assert!(s.released("w1", &moving).is_empty());
    }

    #[test]
    fn a_dead_workers_clusters_move_at_once_and_events_follow_them() {
        let mut s = with_clusters(12);
        s.worker_joined("w1", "a".into(), 4);
        s.worker_joined("w2", "b".into(), 4);
        let pending: Vec<String> = s
            .clusters
            .iter()
            .filter(|(_, e)| matches!(e.ownership, Ownership::Releasing { .. }))
            .map(|(k, _)| k.clone())
            .collect();
        for k in &pending {
            s.released("w1", k);
        }
        let w2_clusters: Vec<String> = owners(&s)
            .into_iter()
            .filter(|(_, o)| *o == Ownership::Assigned("w2".into()))
            .map(|(k, _)| k)
            .collect();
        assert!(!w2_clusters.is_empty());
        let out = s.worker_left("w2");
        let assigned: Vec<String> = kinds(&out)
            .into_iter()
            .filter(|k| k.0 == "w1" && k.1 == "assign")
            .map(|k| k.2)
            .collect();
        assert_eq!(assigned.len(), w2_clusters.len());
        assert!(owners(&s)
            .values()
            .all(|o| *o == Ownership::Assigned("w1".into())));
        let (ns, name) = w2_clusters[0].split_once('/').unwrap();
        let out = s.watch_event(cluster(ClusterEventType::Update, ns, name));
        assert_eq!(
            kinds(&out),
            vec![("w1".to_string(), "cluster", w2_clusters[0].clone())]
        );
    }

    #[test]
    fn deletes_reach_a_worker_even_without_one_at_the_time() {
        let mut s = with_clusters(1);
        assert!(s
            .watch_event(cluster(ClusterEventType::Delete, "ns0", "c0"))
            .is_empty());
        let out = s.worker_joined("w1", "a".into(), 1);
        let Some(scheduler_message::Message::Assign(a)) = &out[0].1.message else {
            panic!("{out:?}")
        };
        assert_eq!(
            a.current.as_ref().unwrap().r#type,
            ClusterEventType::Delete as i32
        );
        assert_eq!(s.clusters.len(), 1, "kept until the owner confirms");
        assert!(s.cluster_status("w1", "ns0/c0", DELETED_STATUS.into(), String::new()));
        assert!(s.clusters.is_empty(), "forgotten once confirmed");
    }

    #[test]
    fn pods_that_outlive_their_cluster_go_to_the_next_one_of_the_name() {
        // Delete protection keeps the pods of a deleted manifest; the manifest comes back.
        let mut s = with_clusters(1);
        s.worker_joined("w1", "a".into(), 1);
        let pod = |name: &str| WatchEvent {
            sequence: 0,
            event: Some(watch_event::Event::Pod(PodState {
                namespace: "ns0".into(),
                cluster: "c0".into(),
                name: name.into(),
                ..Default::default()
            })),
        };
        s.watch_event(pod("c0-0"));
        s.watch_event(cluster(ClusterEventType::Delete, "ns0", "c0"));
        assert!(s.cluster_status("w1", "ns0/c0", DELETED_STATUS.into(), String::new()));
        assert!(s.clusters.is_empty());
        // A pod event while no cluster has the name is kept too.
        s.watch_event(pod("c0-1"));
        let out = s.watch_event(cluster(ClusterEventType::Add, "ns0", "c0"));
        let Some(scheduler_message::Message::Assign(a)) = &out[0].1.message else {
            panic!("{out:?}")
        };
        let names: Vec<&str> = a.pods.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["c0-0", "c0-1"]);
        assert!(s.unowned.is_empty());
    }

    #[test]
    fn a_delete_of_a_cluster_never_seen_is_still_carried_out() {
        // Deleted while the scheduler was down: the watcher's snapshot reports the leftover.
        let mut s = SchedulerState::default();
        s.worker_joined("w1", "a".into(), 1);
        let out = s.watch_event(cluster(ClusterEventType::Delete, "ns0", "gone"));
        let Some(scheduler_message::Message::Assign(a)) = &out[0].1.message else {
            panic!("{out:?}")
        };
        assert_eq!(
            a.current.as_ref().unwrap().r#type,
            ClusterEventType::Delete as i32
        );
        assert!(s.clusters["ns0/gone"].deleting());
        assert!(s.cluster_status("w1", "ns0/gone", DELETED_STATUS.into(), String::new()));
        assert!(s.clusters.is_empty());
    }

    #[test]
    fn a_snapshot_without_a_cluster_deletes_it() {
        let mut s = with_clusters(3);
        s.worker_joined("w1", "a".into(), 1);
        s.snapshot_started();
        s.watch_event(cluster(ClusterEventType::Sync, "ns0", "c0"));
        s.watch_event(cluster(ClusterEventType::Sync, "ns2", "c2"));
        let out = s.watch_event(WatchEvent {
            sequence: 0,
            event: Some(watch_event::Event::SnapshotDone(Default::default())),
        });
        assert_eq!(
            kinds(&out),
            vec![("w1".to_string(), "cluster", "ns1/c1".to_string())]
        );
        assert!(s.clusters["ns1/c1"].deleting());
        // A second snapshot without it does not delete it again.
        s.snapshot_started();
        s.watch_event(cluster(ClusterEventType::Sync, "ns0", "c0"));
        s.watch_event(cluster(ClusterEventType::Sync, "ns2", "c2"));
        assert!(s
            .watch_event(WatchEvent {
                sequence: 0,
                event: Some(watch_event::Event::SnapshotDone(Default::default())),
            })
            .is_empty());
        s.cluster_status("w1", "ns1/c1", DELETED_STATUS.into(), String::new());
        assert_eq!(s.clusters.len(), 2);
    }

    fn with_uid(kind: ClusterEventType, ns: &str, name: &str, uid: &str) -> WatchEvent {
        let mut ev = cluster(kind, ns, name);
        if let Some(watch_event::Event::Cluster(c)) = ev.event.as_mut() {
            c.uid = uid.into();
        }
        ev
    }

    /// The cluster events of `out` as (worker, type, uid), assignments as "ASSIGN:<type>".
    fn cluster_events(out: &Outbox) -> Vec<(String, String, String)> {
        let name = |c: &ClusterEvent| {
            ClusterEventType::try_from(c.r#type)
                .unwrap()
                .as_str_name()
                .trim_start_matches("CLUSTER_EVENT_TYPE_")
                .to_string()
        };
        out.iter()
            .filter_map(|(w, m)| match &m.message {
                Some(scheduler_message::Message::Assign(a)) => {
                    let c = a.current.as_ref().unwrap();
                    Some((w.clone(), format!("ASSIGN:{}", name(c)), c.uid.clone()))
                }
                Some(scheduler_message::Message::Event(WatchEvent {
                    event: Some(watch_event::Event::Cluster(c)),
                    ..
                })) => Some((w.clone(), name(c), c.uid.clone())),
                _ => None,
            })
            .collect()
    }

    fn triple(w: &str, kind: &str, uid: &str) -> (String, String, String) {
        (w.into(), kind.into(), uid.into())
    }

    /// Two workers and one cluster `ns/a` (uid u1) owned by `owner`; returns the other.
    fn owned_by_one_of_two() -> (SchedulerState, String, String) {
        let mut s = SchedulerState::default();
        s.worker_joined("w1", "a".into(), 1);
        s.worker_joined("w2", "b".into(), 1);
        let out = s.watch_event(with_uid(ClusterEventType::Add, "ns", "a", "u1"));
        let owner = out[0].0.clone();
        let other = if owner == "w1" { "w2" } else { "w1" }.to_string();
        (s, owner, other)
    }

    #[test]
    fn a_reconnecting_worker_keeps_its_clusters_and_gets_them_again() {
        let mut s = with_clusters(12);
        s.worker_joined("w1", "a".into(), 4);
        s.worker_joined("w2", "b".into(), 4);
        let releasing: Vec<String> = s
            .clusters
            .iter()
            .filter(|(_, e)| e.ownership == Ownership::Releasing { from: "w1".into() })
            .map(|(k, _)| k.clone())
            .collect();
        assert!(releasing.len() > 1);
        // One release arrives before the reconnect; the others never will.
        s.released("w1", &releasing[0]);
        let w1_owned: Vec<String> = owners(&s)
            .into_iter()
            .filter(|(_, o)| *o == Ownership::Assigned("w1".into()))
            .map(|(k, _)| k)
            .collect();
        let w2_before: Vec<String> = owners(&s)
            .into_iter()
            .filter(|(_, o)| *o == Ownership::Assigned("w2".into()))
            .map(|(k, _)| k)
            .collect();
        // The deletion w1 did not confirm is sent again to its new session.
        let (ns, name) = w1_owned[0].split_once('/').unwrap();
        s.watch_event(cluster(ClusterEventType::Delete, ns, name));

        let out = s.worker_joined("w1", "a2".into(), 4);
        let k = kinds(&out);
        let mut to_w1: Vec<String> = k
            .iter()
            .filter(|k| k.0 == "w1" && k.1 == "assign")
            .map(|k| k.2.clone())
            .collect();
        to_w1.sort();
        assert_eq!(
            to_w1, w1_owned,
            "every cluster w1 owned is assigned to it again"
        );
        let mut to_w2: Vec<String> = k
            .iter()
            .filter(|k| k.0 == "w2" && k.1 == "assign")
            .map(|k| k.2.clone())
            .collect();
        to_w2.sort();
        assert_eq!(
            to_w2,
            releasing[1..].to_vec(),
            "what w1 was releasing goes to its next owner at once"
        );
        assert!(k.iter().all(|k| k.1 != "release"), "{k:?}");
        assert_eq!(k.len(), w1_owned.len() + releasing.len() - 1);
        for key in &w2_before {
            assert_eq!(s.clusters[key].ownership, Ownership::Assigned("w2".into()));
        }
        assert_eq!(s.workers["w1"].address, "a2");
        assert!(owners(&s)
            .values()
            .all(|o| matches!(o, Ownership::Assigned(_))));
        // The DELETE travels in the new assignment and still needs one confirmation.
        let redelivered = &s.clusters[&w1_owned[0]];
        assert!(redelivered.deleting());
        assert_eq!(redelivered.unconfirmed_deletes, 1);
    }

    #[test]
    fn a_delete_is_forgotten_only_once_its_owner_confirms_it() {
        let (mut s, owner, other) = owned_by_one_of_two();
        let out = s.watch_event(with_uid(ClusterEventType::Delete, "ns", "a", "u1"));
        assert_eq!(cluster_events(&out), [triple(&owner, "DELETE", "u1")]);
        assert!(s.clusters["ns/a"].deleting(), "kept while unconfirmed");
        // Only the owner's confirmation counts.
        assert!(!s.cluster_status(&other, "ns/a", DELETED_STATUS.into(), String::new()));
        assert!(s.clusters.contains_key("ns/a"));
        // The owner dies before confirming: the next one is handed the DELETE.
        let out = s.worker_left(&owner);
        assert_eq!(
            cluster_events(&out),
            [triple(&other, "ASSIGN:DELETE", "u1")]
        );
        assert!(!s.cluster_status(&owner, "ns/a", DELETED_STATUS.into(), String::new()));
        assert!(s.cluster_status(&other, "ns/a", DELETED_STATUS.into(), String::new()));
        assert!(s.clusters.is_empty());
    }

    #[test]
    fn an_add_during_an_unconfirmed_delete_survives_its_confirmation() {
        let (mut s, owner, other) = owned_by_one_of_two();
        s.watch_event(with_uid(ClusterEventType::Delete, "ns", "a", "u1"));
        let out = s.watch_event(with_uid(ClusterEventType::Add, "ns", "a", "u2"));
        assert_eq!(cluster_events(&out), [triple(&owner, "ADD", "u2")]);
        assert!(!s.clusters["ns/a"].deleting());
        // The owner dies before confirming: the next one deletes the old object first.
        let out = s.worker_left(&owner);
        assert_eq!(
            cluster_events(&out),
            [
                triple(&other, "ASSIGN:DELETE", "u1"),
                triple(&other, "ADD", "u2")
            ]
        );
        assert!(!s.cluster_status(&other, "ns/a", DELETED_STATUS.into(), String::new()));
        let entry = &s.clusters["ns/a"];
        assert_eq!(entry.current.uid, "u2", "the new object stays");
        assert_eq!(entry.status, "", "a confirmation is not a status");
        assert!(entry.pending_delete.is_none());
        // Confirmed: a later owner is not asked to delete again.
        assert!(s.worker_left(&other).is_empty());
        let out = s.worker_joined(&owner, "a".into(), 1);
        assert_eq!(cluster_events(&out), [triple(&owner, "ASSIGN:ADD", "u2")]);
    }

    #[test]
    fn deletes_of_successive_objects_each_need_a_confirmation() {
        let (mut s, owner, _) = owned_by_one_of_two();
        s.watch_event(with_uid(ClusterEventType::Delete, "ns", "a", "u1"));
        s.watch_event(with_uid(ClusterEventType::Add, "ns", "a", "u2"));
        s.watch_event(with_uid(ClusterEventType::Delete, "ns", "a", "u2"));
        // The confirmation of u1's deletion does not forget u2's.
        assert!(!s.cluster_status(&owner, "ns/a", DELETED_STATUS.into(), String::new()));
        assert!(s.cluster_status(&owner, "ns/a", DELETED_STATUS.into(), String::new()));
    }

    #[test]
    fn only_the_owner_reports_status() {
        let mut s = with_clusters(12);
        s.worker_joined("w1", "a".into(), 4);
        s.worker_joined("w2", "b".into(), 4);
        let moving = s
            .clusters
            .iter()
            .find(|(_, e)| matches!(e.ownership, Ownership::Releasing { .. }))
            .map(|(k, _)| k.clone())
            .unwrap();
        s.released("w1", &moving);
        s.cluster_status("w2", &moving, "Running".into(), "acid".into());
        // The old owner's late report changes nothing.
        s.cluster_status("w1", &moving, "SyncFailed".into(), "other".into());
        assert_eq!(
            (
                s.clusters[&moving].status.as_str(),
                s.clusters[&moving].team.as_str()
            ),
            ("Running", "acid")
        );
        s.cluster_status("nobody", &moving, "Failed".into(), String::new());
        assert_eq!(s.clusters[&moving].status, "Running");
    }

    #[test]
    fn a_new_uid_under_a_known_key_is_a_delete_then_an_add() {
        let (mut s, owner, other) = owned_by_one_of_two();
        // The watcher restarted; the snapshot shows the object recreated meanwhile.
        s.snapshot_started();
        let out = s.watch_event(with_uid(ClusterEventType::Sync, "ns", "a", "u2"));
        assert_eq!(
            cluster_events(&out),
            [triple(&owner, "DELETE", "u1"), triple(&owner, "ADD", "u2")]
        );
        // Same uid again: an ordinary event.
        let out = s.watch_event(with_uid(ClusterEventType::Sync, "ns", "a", "u2"));
        assert_eq!(cluster_events(&out), [triple(&owner, "SYNC", "u2")]);
        // A live UPDATE with another uid as well; the owner dies before confirming.
        let out = s.watch_event(with_uid(ClusterEventType::Update, "ns", "a", "u3"));
        assert_eq!(
            cluster_events(&out),
            [triple(&owner, "DELETE", "u2"), triple(&owner, "ADD", "u3")]
        );
        let out = s.worker_left(&owner);
        assert_eq!(
            cluster_events(&out),
            [
                triple(&other, "ASSIGN:DELETE", "u2"),
                triple(&other, "ADD", "u3")
            ]
        );
    }

    #[test]
    fn an_add_places_only_its_own_cluster() {
        let mut s = with_clusters(3);
        s.worker_joined("w1", "a".into(), 1);
        // Left alone on purpose: an ADD must not walk the other clusters.
        s.clusters.get_mut("ns0/c0").unwrap().ownership = Ownership::Unassigned;
        let out = s.watch_event(cluster(ClusterEventType::Add, "ns1", "new"));
        assert_eq!(
            kinds(&out),
            vec![("w1".to_string(), "assign", "ns1/new".to_string())]
        );
        assert_eq!(s.clusters["ns0/c0"].ownership, Ownership::Unassigned);
    }

    #[test]
    fn pods_and_config_are_routed() {
        let mut s = with_clusters(1);
        let config = WatchEvent {
            sequence: 0,
            event: Some(watch_event::Event::Config(ConfigEvent::default())),
        };
        assert!(s.watch_event(config).is_empty());
        let out = s.worker_joined("w1", "a".into(), 1);
        assert_eq!(
            kinds(&out)[0].1,
            "config",
            "a joining worker learns the configuration first"
        );
        let pod = PodState {
            namespace: "ns0".into(),
            cluster: "c0".into(),
            name: "c0-0".into(),
            ..Default::default()
        };
        let out = s.watch_event(WatchEvent {
            sequence: 0,
            event: Some(watch_event::Event::Pod(pod)),
        });
        assert_eq!(
            kinds(&out),
            vec![("w1".to_string(), "pod", "ns0/c0".to_string())]
        );
        assert_eq!(s.clusters["ns0/c0"].members.pods.len(), 1);
        let stray = PodState {
            namespace: "ns9".into(),
            cluster: "nope".into(),
            name: "x".into(),
            ..Default::default()
        };
        assert!(s
            .watch_event(WatchEvent {
                sequence: 0,
                event: Some(watch_event::Event::Pod(stray))
            })
            .is_empty());
    }

    fn child(cluster: &str, kind: &str, name: &str, deleted: bool) -> WatchEvent {
        WatchEvent {
            sequence: 0,
            event: Some(watch_event::Event::Child(ChildState {
                namespace: "ns0".into(),
                cluster: cluster.into(),
                kind: kind.into(),
                name: name.into(),
                deleted,
                ..Default::default()
            })),
        }
    }

    #[test]
    fn child_objects_travel_with_their_cluster_and_shared_ones_reach_every_worker() {
        let mut s = SchedulerState::default();
        // A snapshot sends a cluster's objects before the cluster.
        s.snapshot_started();
        s.watch_event(child("c0", "Service", "c0-repl", false));
        s.watch_event(child("", "ServiceAccount", "postgres-pod", false));
        s.watch_event(cluster(ClusterEventType::Sync, "ns0", "c0"));
        s.watch_event(WatchEvent {
            sequence: 0,
            event: Some(watch_event::Event::SnapshotDone(Default::default())),
        });
        let out = s.worker_joined("w1", "a".into(), 1);
        assert_eq!(
            kinds(&out),
            [
                (
                    "w1".into(),
                    "child",
                    "ns0/ServiceAccount/postgres-pod".into()
                ),
                ("w1".into(), "assign", "ns0/c0".into()),
            ]
        );
        let Some(scheduler_message::Message::Assign(a)) = &out[1].1.message else {
            panic!("{out:?}")
        };
        let names: Vec<&str> = a.children.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["c0-repl"]);
        // Live: to the owner; shared ones to every worker.
        let out = s.watch_event(child("c0", "Service", "c0-repl", true));
        assert_eq!(
            kinds(&out),
            [("w1".into(), "child-gone", "ns0/Service/c0-repl".into())]
        );
        assert!(s.clusters["ns0/c0"].members.children.is_empty());
        s.worker_joined("w2", "b".into(), 1);
        if let Ownership::Releasing { from } = s.clusters["ns0/c0"].ownership.clone() {
            s.released(&from, "ns0/c0");
        }
        let out = s.watch_event(child("", "RoleBinding", "postgres-pod", false));
        assert_eq!(out.len(), 2, "{:?}", kinds(&out));

        // A new snapshot that no longer mentions an object: it went while nobody listened.
        s.watch_event(child("c0", "StatefulSet", "c0", false));
        let owner = match &s.clusters["ns0/c0"].ownership {
            Ownership::Assigned(w) => w.clone(),
            other => panic!("{other:?}"),
        };
        s.snapshot_started();
        s.watch_event(cluster(ClusterEventType::Sync, "ns0", "c0"));
        s.watch_event(child("", "RoleBinding", "postgres-pod", false));
        let out = s.watch_event(WatchEvent {
            sequence: 0,
            event: Some(watch_event::Event::SnapshotDone(Default::default())),
        });
        let mut gone = kinds(&out);
        gone.sort();
        let mut want = vec![
            (owner, "child-gone", "ns0/StatefulSet/c0".to_string()),
            (
                "w1".into(),
                "child-gone",
                "ns0/ServiceAccount/postgres-pod".into(),
            ),
            (
                "w2".into(),
                "child-gone",
                "ns0/ServiceAccount/postgres-pod".into(),
            ),
        ];
        want.sort();
        assert_eq!(gone, want);
        assert!(s.clusters["ns0/c0"].members.children.is_empty());
    }
}
