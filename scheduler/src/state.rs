//! The scheduler's bookkeeping, free of I/O: every handler takes one input (a worker joins
//! or leaves, a release arrives, the watcher reports an event) and returns the messages to
//! send. Invariant: a cluster is never assigned to two workers at once; a move waits for
//! the old owner's `Released` unless that owner is gone.
use std::collections::{BTreeMap, BTreeSet};

use pgop_proto::v1::{
    scheduler_message, watch_event, Assign, ClusterEvent, ClusterEventType, ConfigEvent, PodState,
    Release, SchedulerMessage, WatchEvent,
};

use crate::sharding;

pub type Outbox = Vec<(String, SchedulerMessage)>;

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
    /// The latest object event (ADD/UPDATE/SYNC), or DELETE not yet handed to a worker.
    pub current: ClusterEvent,
    pub pods: BTreeMap<String, PodState>,
    pub ownership: Ownership,
    pub status: String,
    pub team: String,
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
    pub workers: BTreeMap<String, WorkerEntry>,
    config: Option<ConfigEvent>,
    /// Keys seen since the current watcher snapshot began.
    snapshot_seen: Option<BTreeSet<String>>,
}

pub fn cluster_key(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

fn event(event: watch_event::Event) -> SchedulerMessage {
    SchedulerMessage {
        message: Some(scheduler_message::Message::Event(WatchEvent {
            sequence: 0,
            event: Some(event),
        })),
    }
}

impl SchedulerState {
    pub fn worker_joined(&mut self, id: &str, address: String, capacity: u32) -> Outbox {
        let mut out = Vec::new();
        if self.workers.contains_key(id) {
            // A reconnect under the same id: its previous session is over.
            out.extend(self.worker_left(id));
        }
        self.workers.insert(
            id.to_string(),
            WorkerEntry {
                address,
                capacity,
                ..Default::default()
            },
        );
        if let Some(config) = &self.config {
            out.push((
                id.to_string(),
                event(watch_event::Event::Config(config.clone())),
            ));
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
                self.rebalance()
            }
            _ => Vec::new(),
        }
    }

    pub fn cluster_status(&mut self, cluster: &str, status: String, team: String) {
        if let Some(entry) = self.clusters.get_mut(cluster) {
            entry.status = status;
            if !team.is_empty() {
                entry.team = team;
            }
        }
    }

    /// A new watcher subscription starts with a snapshot.
    pub fn snapshot_started(&mut self) {
        self.snapshot_seen = Some(BTreeSet::new());
    }

    pub fn watch_event(&mut self, ev: WatchEvent) -> Outbox {
        match ev.event {
            Some(watch_event::Event::Cluster(c)) => self.cluster_event(c),
            Some(watch_event::Event::Pod(p)) => self.pod_event(p),
            Some(watch_event::Event::Config(c)) => {
                self.config = Some(c.clone());
                let msg = event(watch_event::Event::Config(c));
                self.workers
                    .keys()
                    .map(|w| (w.clone(), msg.clone()))
                    .collect()
            }
            Some(watch_event::Event::SnapshotDone(_)) => self.snapshot_done(),
            None => Vec::new(),
        }
    }

    fn cluster_event(&mut self, c: ClusterEvent) -> Outbox {
        let key = cluster_key(&c.namespace, &c.name);
        if let Some(seen) = self.snapshot_seen.as_mut() {
            seen.insert(key.clone());
        }
        let is_delete = c.r#type == ClusterEventType::Delete as i32;
        match self.clusters.get_mut(&key) {
            None if is_delete => Vec::new(),
            None => {
                self.clusters.insert(
                    key,
                    ClusterEntry {
                        current: c,
                        pods: BTreeMap::new(),
                        ownership: Ownership::Unassigned,
                        status: String::new(),
                        team: String::new(),
                    },
                );
                self.rebalance()
            }
            Some(entry) => {
                entry.current = c.clone();
                if let Ownership::Assigned(owner) = &entry.ownership {
                    let out = vec![(owner.clone(), event(watch_event::Event::Cluster(c)))];
                    if is_delete {
                        self.clusters.remove(&key);
                    }
                    return out;
                }
                // Unassigned or moving: the next owner receives the current state on assignment.
                Vec::new()
            }
        }
    }

    fn pod_event(&mut self, p: PodState) -> Outbox {
        let key = cluster_key(&p.namespace, &p.cluster);
        let Some(entry) = self.clusters.get_mut(&key) else {
            return Vec::new();
        };
        if p.deleted {
            entry.pods.remove(&p.name);
        } else {
            entry.pods.insert(p.name.clone(), p.clone());
        }
        match &entry.ownership {
            Ownership::Assigned(owner) => vec![(owner.clone(), event(watch_event::Event::Pod(p)))],
            _ => Vec::new(),
        }
    }

    /// Clusters the snapshot did not mention were deleted while nobody was listening.
    fn snapshot_done(&mut self) -> Outbox {
        let Some(seen) = self.snapshot_seen.take() else {
            return Vec::new();
        };
        let gone: Vec<String> = self
            .clusters
            .keys()
            .filter(|k| !seen.contains(*k))
            .cloned()
            .collect();
        let mut out = Vec::new();
        for key in gone {
            let (namespace, name) = key.split_once('/').unwrap_or_default();
            let delete = ClusterEvent {
                r#type: ClusterEventType::Delete as i32,
                namespace: namespace.to_string(),
                name: name.to_string(),
                ..Default::default()
            };
            out.extend(self.cluster_event(delete));
        }
        out
    }

    /// Moves every cluster toward its rendezvous owner among the live workers.
    fn rebalance(&mut self) -> Outbox {
        let mut out = Vec::new();
        let workers: Vec<&str> = self.workers.keys().map(String::as_str).collect();
        let mut handed_deletes = Vec::new();
        for (key, entry) in self.clusters.iter_mut() {
            let Some(desired) = sharding::owner(key, workers.iter().copied()) else {
                continue;
            };
            match &entry.ownership {
                Ownership::Unassigned => {
                    let assign = Assign {
                        cluster: key.clone(),
                        current: Some(entry.current.clone()),
                        pods: entry.pods.values().cloned().collect(),
                    };
                    out.push((
                        desired.to_string(),
                        SchedulerMessage {
                            message: Some(scheduler_message::Message::Assign(assign)),
                        },
                    ));
                    entry.ownership = Ownership::Assigned(desired.to_string());
                    if entry.current.r#type == ClusterEventType::Delete as i32 {
                        handed_deletes.push(key.clone());
                    }
                }
                Ownership::Assigned(owner) if owner != desired => {
                    let release = Release {
                        cluster: key.clone(),
                    };
                    out.push((
                        owner.clone(),
                        SchedulerMessage {
                            message: Some(scheduler_message::Message::Release(release)),
                        },
                    ));
                    entry.ownership = Ownership::Releasing {
                        from: owner.clone(),
                    };
                }
                _ => {}
            }
        }
        for key in handed_deletes {
            self.clusters.remove(&key);
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
                Some(scheduler_message::Message::Event(e)) => match &e.event {
                    Some(watch_event::Event::Cluster(c)) => {
                        (w.clone(), "cluster", cluster_key(&c.namespace, &c.name))
                    }
                    Some(watch_event::Event::Pod(p)) => {
                        (w.clone(), "pod", cluster_key(&p.namespace, &p.cluster))
                    }
                    Some(watch_event::Event::Config(_)) => (w.clone(), "config", String::new()),
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
        assert!(s.clusters.is_empty(), "forgotten once handed over");
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
        assert_eq!(s.clusters.len(), 2);
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
        assert_eq!(s.clusters["ns0/c0"].pods.len(), 1);
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
}
