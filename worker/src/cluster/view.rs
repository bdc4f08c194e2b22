//! What the worker shows about itself: one entry per owned cluster, written by the
//! cluster's task and read by the inspection RPCs and heartbeats. A plain mutex: it is only
//! held to copy small values, never across an await.
use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use pgop_proto::v1::{ClusterState, EventRecord, LogEntry, PodState, QueueEntry};
use tokio::sync::broadcast;

#[derive(Debug, Clone, Default)]
pub struct ClusterView {
    pub team: String,
    pub status: String,
    pub message: String,
    pub uid: String,
    pub instances: u32,
    pub pods: Vec<PodState>,
    pub last_reconcile: String,
    pub reconciles: u32,
    pub databases: Vec<String>,
    /// Inputs waiting for the next reconcile, and the latest one's kind.
    pub pending: u32,
    pub pending_event: String,
    /// Since when the cluster waits for a reconcile slot or is being reconciled.
    pub queued_since: Option<std::time::Instant>,
    pub running: bool,
    /// What the current (or last) pass is for: ADD, UPDATE, SYNC, POD, SYNC-REQUEST.
    pub trigger: String,
    /// What was done to the cluster, oldest first (`cluster_history_entries`).
    pub history: VecDeque<EventRecord>,
    /// Log lines about the cluster, oldest first (`ring_log_lines`).
    pub logs: VecDeque<LogEntry>,
}

/// How many history entries and log lines each cluster keeps (the operator
/// configuration's `cluster_history_entries` and `ring_log_lines`).
struct Limits {
    history: AtomicUsize,
    logs: AtomicUsize,
}

fn push_capped<T>(ring: &mut VecDeque<T>, item: T, cap: usize) {
    ring.push_back(item);
    while ring.len() > cap {
        ring.pop_front();
    }
}

#[derive(Clone)]
pub struct View {
    worker_id: String,
    clusters: Arc<Mutex<BTreeMap<String, ClusterView>>>,
    events: broadcast::Sender<EventRecord>,
    limits: Arc<Limits>,
}

pub fn now_rfc3339() -> String {
    k8s_openapi::jiff::Timestamp::now().to_string()
}

impl View {
    pub fn new(worker_id: String) -> Self {
        Self {
            worker_id,
            clusters: Arc::default(),
            events: broadcast::channel(4096).0,
            limits: Arc::new(Limits {
                history: AtomicUsize::new(1000),
                logs: AtomicUsize::new(100),
            }),
        }
    }

    pub fn worker_id(&self) -> &str {
        &self.worker_id
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, ClusterView>> {
        // A panic while holding the lock cannot leave a half-written view worth refusing.
        self.clusters.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn update(&self, cluster: &str, f: impl FnOnce(&mut ClusterView)) {
        f(self.lock().entry(cluster.to_string()).or_default());
    }

    pub fn remove(&self, cluster: &str) {
        self.lock().remove(cluster);
    }

    pub fn clear(&self) {
        self.lock().clear();
    }

    /// Owned clusters and how many of them wait for a reconcile.
    pub fn counts(&self) -> (u32, u32) {
        let map = self.lock();
        let queued = map.values().filter(|c| c.queued_since.is_some()).count();
        (map.len() as u32, queued as u32)
    }

    /// How many history entries and log lines each cluster keeps from now on.
    pub fn set_limits(&self, history: usize, logs: usize) {
        self.limits.history.store(history, Ordering::Relaxed);
        self.limits.logs.store(logs, Ordering::Relaxed);
    }

    /// Something done to an owned cluster: into its history and onto the event stream.
    pub fn record(&self, cluster: &str, kind: &str, detail: impl Into<String>) {
        let mut record = EventRecord {
            at: now_rfc3339(),
            cluster: cluster.to_string(),
            kind: kind.to_string(),
            detail: detail.into(),
            trigger: String::new(),
        };
        if let Some(view) = self.lock().get_mut(cluster) {
            record.trigger = view.trigger.clone();
            let cap = self.limits.history.load(Ordering::Relaxed);
            push_capped(&mut view.history, record.clone(), cap);
        }
        let _ = self.events.send(record);
    }

    /// A log line about an owned cluster (others are not kept).
    pub fn log(&self, cluster: &str, level: &str, message: String) {
        if let Some(view) = self.lock().get_mut(cluster) {
            let cap = self.limits.logs.load(Ordering::Relaxed);
            let entry = LogEntry {
                time: now_rfc3339(),
                level: level.to_string(),
                message,
            };
            push_capped(&mut view.logs, entry, cap);
        }
    }

    pub fn history(&self, cluster: &str) -> Option<Vec<EventRecord>> {
        self.lock()
            .get(cluster)
            .map(|v| v.history.iter().cloned().collect())
    }

    pub fn logs(&self, cluster: &str) -> Option<Vec<LogEntry>> {
        self.lock()
            .get(cluster)
            .map(|v| v.logs.iter().cloned().collect())
    }

    pub fn subscribe(&self) -> broadcast::Receiver<EventRecord> {
        self.events.subscribe()
    }

    fn state(&self, key: &str, c: &ClusterView) -> ClusterState {
        ClusterState {
            cluster: key.to_string(),
            team: c.team.clone(),
            status: c.status.clone(),
            message: c.message.clone(),
            uid: c.uid.clone(),
            instances: c.instances,
            pods: c.pods.clone(),
            last_reconcile: c.last_reconcile.clone(),
            reconciles: c.reconciles,
            worker: self.worker_id.clone(),
            databases: c.databases.clone(),
        }
    }

    pub fn clusters(&self) -> Vec<ClusterState> {
        self.lock().iter().map(|(k, c)| self.state(k, c)).collect()
    }

    pub fn cluster(&self, key: &str) -> Option<ClusterState> {
        self.lock().get(key).map(|c| self.state(key, c))
    }

    /// Clusters waiting for or in a reconcile, longest waiting first.
    pub fn queue(&self) -> (Vec<QueueEntry>, u32) {
        let map = self.lock();
        let mut waiting: Vec<_> = map
            .iter()
            .filter_map(|(k, c)| c.queued_since.map(|since| (since, k, c)))
            .collect();
        waiting.sort_by_key(|(since, k, _)| (*since, (*k).clone()));
        let running = map.values().filter(|c| c.running).count() as u32;
        let entries = waiting
            .into_iter()
            .map(|(_, k, c)| QueueEntry {
                cluster: k.clone(),
                event: c.pending_event.clone(),
                pending: c.pending,
            })
            .collect();
        (entries, running)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rings_keep_the_newest_entries_of_owned_clusters_only() {
        let view = View::new("w".into());
        view.set_limits(2, 3);
        view.update("ns/a", |v| v.trigger = "UPDATE".into());
        for i in 0..4 {
            view.record("ns/a", "written", format!("step {i}"));
            view.log("ns/a", "INFO", format!("line {i}"));
        }
        view.record("ns/unowned", "written", "x");
        view.log("ns/unowned", "INFO", "x".into());
        let history = view.history("ns/a").unwrap();
        let details: Vec<&str> = history.iter().map(|r| r.detail.as_str()).collect();
        assert_eq!(details, ["step 2", "step 3"]);
        assert!(history.iter().all(|r| r.trigger == "UPDATE"));
        let logs: Vec<String> = view
            .logs("ns/a")
            .unwrap()
            .into_iter()
            .map(|l| l.message)
            .collect();
        assert_eq!(logs, ["line 1", "line 2", "line 3"]);
        assert!(view.history("ns/unowned").is_none() && view.logs("ns/unowned").is_none());
    }
}
