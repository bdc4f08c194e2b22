//! What the worker shows about itself: one entry per owned cluster, written by the
//! cluster's task and read by the inspection RPCs and heartbeats. A plain mutex: it is only
//! held to copy small values, never across an await.
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use pgop_proto::v1::{ClusterState, EventRecord, PodState, QueueEntry};
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
}

#[derive(Clone)]
pub struct View {
    worker_id: String,
    clusters: Arc<Mutex<BTreeMap<String, ClusterView>>>,
    events: broadcast::Sender<EventRecord>,
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

    pub fn record(&self, cluster: &str, kind: &str, detail: impl Into<String>) {
        let _ = self.events.send(EventRecord {
            at: now_rfc3339(),
            cluster: cluster.to_string(),
            kind: kind.to_string(),
            detail: detail.into(),
        });
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
