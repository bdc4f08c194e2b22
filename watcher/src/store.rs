//! What the watcher knows: every postgresql object, the pods of managed clusters and the
//! operator configuration. Changes become events with increasing sequence numbers; a
//! subscriber gets a snapshot and the live stream under one lock, so it misses nothing and
//! sees nothing twice.
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::{Node, Pod};
use pgop_common::config::{ConfigError, OperatorConfig, SECRET_KEYS};
use pgop_proto::v1::{
    watch_event, ChildState, ClusterEvent, ClusterEventType, ConfigEvent, NodeState, PodState,
    SnapshotDone, WatchEvent,
};
use serde_json::Value;
use tokio::sync::broadcast;

use crate::children::child_key;

/// Labels that route pods: which cluster a pod belongs to and its role.
#[derive(Debug, Clone)]
pub struct PodLabels {
    pub cluster: String,
    pub role: String,
}

impl Default for PodLabels {
    fn default() -> Self {
        Self {
            cluster: "cluster-name".into(),
            role: "spilo-role".into(),
        }
    }
}

/// Pod annotations workers act on (rolling-update markers).
const FORWARDED_ANNOTATION_PREFIXES: &[&str] = &[
    "pgop.io/",
    "zalando-postgres-operator-rolling-update-required",
];

/// The operator configuration as its source holds it, before it is checked. Credentials
/// ([`SECRET_KEYS`]) are among the values, hence no `Debug`.
#[derive(Clone, PartialEq)]
pub enum RawConfig {
    /// The `data` of the operator ConfigMap.
    ConfigMap(BTreeMap<String, String>),
    /// An `OperatorConfiguration` resource (or only its `configuration`), as JSON.
    OperatorConfiguration(Value),
}

impl RawConfig {
    /// As the ConfigMap data that `ConfigEvent`s carry: an OperatorConfiguration flattened
    /// into the ConfigMap's keys (its unknown keys under their paths). An error when the
    /// resource does not flatten (a value of the wrong type, …); the data of a ConfigMap is
    /// checked by [`Store::apply_config`].
    pub fn into_data(self) -> Result<BTreeMap<String, String>, ConfigError> {
        match self {
            RawConfig::ConfigMap(data) => Ok(data),
            RawConfig::OperatorConfiguration(value) => {
                pgop_common::config::flatten_operator_configuration(&value)
            }
        }
    }

    /// The configuration it holds, with its unknown keys.
    pub fn config(&self) -> Result<OperatorConfig, ConfigError> {
        match self {
            RawConfig::ConfigMap(data) => pgop_common::config::from_config_map_data(data),
            RawConfig::OperatorConfiguration(value) => {
                pgop_common::config::from_operator_configuration(value)
            }
        }
    }
}

/// What changed between two configurations, for logs: `key=value` for known keys, the
/// values of secret keys ([`SECRET_KEYS`]: workers need them to build objects, the logical
/// backup job's environment and the Scalyr sidecar, so `ConfigEvent`s carry them) and of keys
/// the operator does not know (which may be anything) redacted. Never log a `ConfigEvent` or
/// a `WatchEvent` (their `Debug` shows every value); log this instead.
pub fn config_changes(old: Option<&ConfigEvent>, new: &ConfigEvent) -> String {
    if new.deleted {
        return "the configuration object is gone: defaults apply".into();
    }
    let empty = HashMap::new();
    let before = old.filter(|o| !o.deleted).map_or(&empty, |o| &o.data);
    let keys: std::collections::BTreeSet<&String> = before.keys().chain(new.data.keys()).collect();
    let shown = |key: &str, value: &str| {
        if SECRET_KEYS.contains(&key) {
            format!("{key}=<redacted>")
        } else if !pgop_common::config::KNOWN_KEYS.contains(&key) {
            format!("{key}=<unknown key>")
        } else {
            format!("{key}={value:?}")
        }
    };
    let changes: Vec<String> = keys
        .into_iter()
        .filter_map(|k| match (before.get(k), new.data.get(k)) {
            (a, b) if a == b => None,
            (_, Some(v)) => Some(shown(k, v)),
            (Some(_), None) => Some(format!("{k} removed")),
            (None, None) => None,
        })
        .collect();
    if changes.is_empty() {
        "no key changed".into()
    } else {
        changes.join(", ")
    }
}

/// The configuration the watcher starts with, from its source's object (the ConfigMap or
/// the OperatorConfiguration); it decides what to watch, and applies until the watcher
/// restarts. An absent object means defaults. An invalid one is an error, since its
/// `watched_namespace` cannot be trusted, unless `WATCHED_NAMESPACE`
/// (`watched_namespace_env`) decides that anyway: then the defaults serve for the rest, and
/// the error comes back beside them to be logged.
pub fn startup_config(
    raw: Option<&RawConfig>,
    watched_namespace_env: Option<&str>,
) -> Result<(OperatorConfig, Option<ConfigError>), ConfigError> {
    let Some(raw) = raw else {
        return Ok((OperatorConfig::default(), None));
    };
    match raw.config() {
        Ok(config) => Ok((config, None)),
        Err(e) if watched_namespace_env.is_some() => Ok((OperatorConfig::default(), Some(e))),
        Err(e) => Err(e),
    }
}

/// A postgresql object as the watcher keeps it: serialized, not as a JSON tree (a tree
/// takes several times the memory, and the object is only ever sent on).
struct StoredCluster {
    uid: String,
    /// Hash of what workers act on (see [`fingerprint`]).
    print: String,
    /// The SYNC event of the object as the API server sent it last.
    event: ClusterEvent,
}

impl StoredCluster {
    fn of(object: &Value) -> Self {
        Self {
            uid: meta(object, "uid").to_string(),
            print: pgop_common::applied::content_hash(&fingerprint(object).to_string()),
            event: cluster_event(ClusterEventType::Sync, object),
        }
    }

    fn event(&self, kind: ClusterEventType) -> ClusterEvent {
        ClusterEvent {
            r#type: kind as i32,
            ..self.event.clone()
        }
    }
}

struct Inner {
    clusters: BTreeMap<String, StoredCluster>,
    /// namespace/pod → state
    pods: BTreeMap<String, PodState>,
    /// namespace/Kind/name → what workers need of an object pgop writes
    children: BTreeMap<String, ChildState>,
    /// node name → what workers need of it
    nodes: BTreeMap<String, NodeState>,
    config: Option<ConfigEvent>,
    sequence: u64,
}

pub struct Store {
    inner: Mutex<Inner>,
    /// Every event since a subscription, to each subscriber. Shared, not inline: the ring
    /// allocates all its slots up front, and an inline `WatchEvent` (~300 bytes) made 65,536
    /// of them cost ~20 MiB at any fleet size.
    live: broadcast::Sender<Arc<WatchEvent>>,
    pub pod_labels: PodLabels,
}

/// A string field of a postgresql object's `metadata` ("" when absent).
fn meta<'a>(object: &'a Value, field: &str) -> &'a str {
    object["metadata"][field].as_str().unwrap_or_default()
}

/// `namespace/name` of a postgresql object given as JSON.
pub fn cluster_key(object: &Value) -> String {
    format!("{}/{}", meta(object, "namespace"), meta(object, "name"))
}

/// What a worker acts on: spec, labels and annotations, and a pending deletion. Status is
/// left out, so status-only writes (the workers' own) cause no UPDATE.
fn fingerprint(object: &Value) -> Value {
    let metadata = &object["metadata"];
    serde_json::json!({
        "spec": object["spec"],
        "labels": metadata["labels"],
        "annotations": metadata["annotations"],
        // A deletion held up by finalizers shows only here.
        "deletionTimestamp": metadata["deletionTimestamp"],
        "finalizers": metadata["finalizers"],
    })
}

fn cluster_event(kind: ClusterEventType, object: &Value) -> ClusterEvent {
    ClusterEvent {
        r#type: kind as i32,
        namespace: meta(object, "namespace").to_string(),
        name: meta(object, "name").to_string(),
        uid: meta(object, "uid").to_string(),
        resource_version: meta(object, "resourceVersion").to_string(),
        // A DELETE carries the object's last state too: what it named outside its
        // namespace (cross-namespace Secrets) is only known from it.
        manifest_json: serde_json::to_vec(object).unwrap_or_default(),
    }
}

/// Taints the node controller sets while a node does not report: a blip, not a drain.
const TRANSIENT_TAINTS: [&str; 2] = [
    "node.kubernetes.io/not-ready",
    "node.kubernetes.io/unreachable",
];

/// What workers need of a node.
pub fn node_state(node: &Node, deleted: bool) -> NodeState {
    let spec = node.spec.as_ref();
    NodeState {
        name: node.metadata.name.clone().unwrap_or_default(),
        unschedulable: spec.and_then(|s| s.unschedulable).unwrap_or(false),
        labels: node
            .metadata
            .labels
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect(),
        no_execute: spec
            .and_then(|s| s.taints.as_ref())
            .into_iter()
            .flatten()
            .filter(|t| t.effect == "NoExecute" && !TRANSIENT_TAINTS.contains(&t.key.as_str()))
            .map(|t| t.key.clone())
            .collect(),
        deleted,
    }
}

/// The routing summary of a pod, or None when it belongs to no cluster.
pub fn pod_state(pod: &Pod, labels: &PodLabels, deleted: bool) -> Option<PodState> {
    let meta = &pod.metadata;
    let pod_labels = meta.labels.as_ref()?;
    let cluster = pod_labels.get(&labels.cluster)?.clone();
    let status = pod.status.as_ref();
    let ready = status
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    let annotations = meta
        .annotations
        .iter()
        .flatten()
        .filter(|(k, _)| {
            FORWARDED_ANNOTATION_PREFIXES
                .iter()
                .any(|p| k.starts_with(p))
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect::<HashMap<_, _>>();
    Some(PodState {
        terminating: meta.deletion_timestamp.is_some(),
        node_name: pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default(),
        namespace: meta.namespace.clone().unwrap_or_default(),
        cluster,
        name: meta.name.clone().unwrap_or_default(),
        uid: meta.uid.clone().unwrap_or_default(),
        role: pod_labels.get(&labels.role).cloned().unwrap_or_default(),
        phase: status.and_then(|s| s.phase.clone()).unwrap_or_default(),
        ready,
        pod_ip: status.and_then(|s| s.pod_ip.clone()).unwrap_or_default(),
        deleted,
        annotations,
    })
}

impl Store {
    pub fn new(pod_labels: PodLabels) -> Self {
        let (live, _) = broadcast::channel(65536);
        Self {
            inner: Mutex::new(Inner {
                clusters: BTreeMap::new(),
                pods: BTreeMap::new(),
                children: BTreeMap::new(),
                nodes: BTreeMap::new(),
                config: None,
                sequence: 0,
            }),
            live,
            pod_labels,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn publish(&self, inner: &mut Inner, event: watch_event::Event) {
        inner.sequence += 1;
        // No subscriber is fine: the next one starts from a snapshot.
        let _ = self.live.send(Arc::new(WatchEvent {
            sequence: inner.sequence,
            event: Some(event),
        }));
    }

    /// Records an added or changed postgresql object, given as the API server's JSON (which
    /// need not parse into a `Postgresql`: workers judge that); ADD for a new one, UPDATE
    /// only when its spec, labels, annotations or pending deletion changed.
    pub fn apply_cluster(&self, pg: Value) {
        let key = cluster_key(&pg);
        let stored = StoredCluster::of(&pg);
        let mut inner = self.lock();
        let replaced = inner
            .clusters
            .get(&key)
            .filter(|old| old.uid != stored.uid)
            .map(|old| old.event(ClusterEventType::Delete));
        let kind = match inner.clusters.get(&key) {
            None => Some(ClusterEventType::Add),
            // Deleted and recreated while the watch was down.
            Some(_) if replaced.is_some() => Some(ClusterEventType::Add),
            Some(old) if old.print != stored.print => Some(ClusterEventType::Update),
            Some(_) => None,
        };
        if let Some(delete) = replaced {
            self.publish(&mut inner, watch_event::Event::Cluster(delete));
        }
        let event = kind.map(|k| stored.event(k));
        inner.clusters.insert(key, stored);
        if let Some(e) = event {
            self.publish(&mut inner, watch_event::Event::Cluster(e));
        }
    }

    pub fn delete_cluster(&self, key: &str) {
        let mut inner = self.lock();
        if let Some(old) = inner.clusters.remove(key) {
            let e = old.event(ClusterEventType::Delete);
            self.publish(&mut inner, watch_event::Event::Cluster(e));
        }
    }

    pub fn cluster_keys(&self) -> Vec<String> {
        self.lock().clusters.keys().cloned().collect()
    }

    /// SYNC for every cluster (the periodic resync).
    pub fn resync(&self) -> usize {
        let mut inner = self.lock();
        let events: Vec<ClusterEvent> = inner
            .clusters
            .values()
            .map(|c| c.event(ClusterEventType::Sync))
            .collect();
        let n = events.len();
        for e in events {
            self.publish(&mut inner, watch_event::Event::Cluster(e));
        }
        n
    }

    /// Records a child object's state; an event only when it changed for workers. An object
    /// whose cluster label now names another cluster is gone for the first one.
    pub fn apply_child(&self, state: ChildState) {
        let key = child_key(&state.namespace, &state.kind, &state.name);
        let mut inner = self.lock();
        if state.deleted {
            // The state workers know, whatever the deleted object last carried.
            if let Some(known) = inner.children.remove(&key) {
                let gone = ChildState {
                    deleted: true,
                    ..known
                };
                self.publish(&mut inner, watch_event::Event::Child(gone));
            }
            return;
        }
        match inner.children.get(&key) {
            Some(old) if *old == state => return,
            Some(old) if old.cluster != state.cluster => {
                let gone = ChildState {
                    deleted: true,
                    ..old.clone()
                };
                self.publish(&mut inner, watch_event::Event::Child(gone));
            }
            _ => {}
        }
        inner.children.insert(key, state.clone());
        self.publish(&mut inner, watch_event::Event::Child(state));
    }

    /// Keys of the child objects of `kind`, as the watch loop names them.
    pub fn child_keys(&self, kind: &str) -> Vec<String> {
        self.lock()
            .children
            .iter()
            .filter(|(_, c)| c.kind == kind)
            .map(|(k, _)| k.clone())
            .collect()
    }

    pub fn delete_child_by_key(&self, key: &str) {
        let mut inner = self.lock();
        if let Some(mut state) = inner.children.remove(key) {
            state.deleted = true;
            self.publish(&mut inner, watch_event::Event::Child(state));
        }
    }

    pub fn apply_pod(&self, pod: &Pod, deleted: bool) {
        let Some(state) = pod_state(pod, &self.pod_labels, deleted) else {
            return;
        };
        let key = format!("{}/{}", state.namespace, state.name);
        let mut inner = self.lock();
        if deleted {
            if inner.pods.remove(&key).is_some() {
                self.publish(&mut inner, watch_event::Event::Pod(state));
            }
            return;
        }
        if inner.pods.get(&key) == Some(&state) {
            return;
        }
        inner.pods.insert(key, state.clone());
        self.publish(&mut inner, watch_event::Event::Pod(state));
    }

    pub fn pod_keys(&self) -> Vec<String> {
        self.lock().pods.keys().cloned().collect()
    }

    pub fn delete_pod_by_key(&self, key: &str) {
        let mut inner = self.lock();
        if let Some(mut state) = inner.pods.remove(key) {
            state.deleted = true;
            self.publish(&mut inner, watch_event::Event::Pod(state));
        }
    }

    /// Records a node's state; an event only when it changed for workers (scheduling,
    /// labels, NoExecute taints), not for the node's status heartbeats.
    pub fn apply_node(&self, node: &Node, deleted: bool) {
        let state = node_state(node, deleted);
        let mut inner = self.lock();
        if deleted {
            if inner.nodes.remove(&state.name).is_some() {
                self.publish(&mut inner, watch_event::Event::Node(state));
            }
            return;
        }
        if inner.nodes.get(&state.name) == Some(&state) {
            return;
        }
        inner.nodes.insert(state.name.clone(), state.clone());
        self.publish(&mut inner, watch_event::Event::Node(state));
    }

    /// Node keys as the watch loop names them (`/name`: nodes have no namespace).
    pub fn node_keys(&self) -> Vec<String> {
        self.lock().nodes.keys().map(|n| format!("/{n}")).collect()
    }

    pub fn delete_node_by_key(&self, key: &str) {
        let mut inner = self.lock();
        if let Some(mut state) = inner.nodes.remove(key.trim_start_matches('/')) {
            state.deleted = true;
            self.publish(&mut inner, watch_event::Event::Node(state));
        }
    }

    /// Records the operator configuration as its source holds it (None: the object is gone,
    /// defaults apply): an OperatorConfiguration that does not flatten is refused like
    /// ConfigMap data that does not parse, and the last good configuration stays.
    pub fn apply_raw_config(&self, raw: Option<RawConfig>) -> Result<Option<String>, ConfigError> {
        self.apply_config(raw.map(RawConfig::into_data).transpose()?)
    }

    /// Records the operator configuration as ConfigMap data (None: the object is gone,
    /// defaults apply). Data that does not parse is refused and the last good configuration
    /// stays: workers would otherwise each fall back to something of their own. Returns what
    /// changed, for the log (None: nothing did).
    pub fn apply_config(
        &self,
        data: Option<BTreeMap<String, String>>,
    ) -> Result<Option<String>, ConfigError> {
        if let Some(data) = &data {
            pgop_common::config::from_config_map_data(data)?;
        }
        let event = ConfigEvent {
            deleted: data.is_none(),
            data: data.unwrap_or_default().into_iter().collect(),
        };
        let mut inner = self.lock();
        if inner.config.as_ref() == Some(&event) {
            return Ok(None);
        }
        let changes = config_changes(inner.config.as_ref(), &event);
        inner.config = Some(event.clone());
        self.publish(&mut inner, watch_event::Event::Config(event));
        Ok(Some(changes))
    }

    /// The current state as events (configuration, nodes, pods, child objects, clusters as
    /// SYNC, SnapshotDone) and a receiver of every later event. A cluster's pods and objects
    /// come before it, so the scheduler hands them over with the cluster.
    pub fn subscribe(&self) -> (Vec<WatchEvent>, broadcast::Receiver<Arc<WatchEvent>>) {
        let inner = self.lock();
        let receiver = self.live.subscribe();
        let sequence = inner.sequence;
        let mut events =
            Vec::with_capacity(inner.clusters.len() + inner.pods.len() + inner.children.len() + 2);
        let mut push = |event| {
            events.push(WatchEvent {
                sequence,
                event: Some(event),
            })
        };
        if let Some(c) = &inner.config {
            push(watch_event::Event::Config(c.clone()));
        }
        for node in inner.nodes.values() {
            push(watch_event::Event::Node(node.clone()));
        }
        for p in inner.pods.values() {
            push(watch_event::Event::Pod(p.clone()));
        }
        for c in inner.children.values() {
            push(watch_event::Event::Child(c.clone()));
        }
        for c in inner.clusters.values() {
            push(watch_event::Event::Cluster(c.event(ClusterEventType::Sync)));
        }
        // Pods without their postgresql object: the cluster was deleted while nobody
        // listened (a scheduler that was down never saw the DELETE). Reporting the deletion
        // again lets a worker remove what is left; removing nothing twice is harmless.
        let orphaned: BTreeSet<(&str, &str)> = inner
            .pods
            .values()
            .filter(|p| {
                !inner
                    .clusters
                    .contains_key(&format!("{}/{}", p.namespace, p.cluster))
            })
            .map(|p| (p.namespace.as_str(), p.cluster.as_str()))
            .collect();
        for (namespace, name) in orphaned {
            push(watch_event::Event::Cluster(ClusterEvent {
                r#type: ClusterEventType::Delete as i32,
                namespace: namespace.to_string(),
                name: name.to_string(),
                ..Default::default()
            }));
        }
        push(watch_event::Event::SnapshotDone(SnapshotDone {
            clusters: inner.clusters.len() as u32,
            pods: inner.pods.len() as u32,
            children: inner.children.len() as u32,
        }));
        (events, receiver)
    }

    /// (clusters, pods, child objects, sequence)
    pub fn counts(&self) -> (usize, usize, usize, u64) {
        let inner = self.lock();
        (
            inner.clusters.len(),
            inner.pods.len(),
            inner.children.len(),
            inner.sequence,
        )
    }

    pub fn subscribers(&self) -> usize {
        self.live.receiver_count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgop_proto::v1::ChildDrift;
    use serde_json::json;

    fn pg(name: &str, uid: &str, instances: i32, status: Option<&str>) -> Value {
        let mut v = json!({
            "apiVersion": "acid.zalan.do/v1", "kind": "postgresql",
            "metadata": {"name": name, "namespace": "ns", "uid": uid, "labels": {"team": "acid"}},
            "spec": {"teamId": "acid", "numberOfInstances": instances, "volume": {"size": "1Gi"}, "postgresql": {"version": "15"}}
        });
        if let Some(s) = status {
            v["status"] = json!({"PostgresClusterStatus": s});
        }
        v
    }

    fn drain(rx: &mut broadcast::Receiver<Arc<WatchEvent>>) -> Vec<String> {
        let mut out = Vec::new();
        while let Ok(e) = rx.try_recv() {
            out.push(match Arc::unwrap_or_clone(e).event.unwrap() {
                watch_event::Event::Cluster(c) => format!(
                    "{}:{}",
                    ClusterEventType::try_from(c.r#type).unwrap().as_str_name(),
                    c.name
                ),
                watch_event::Event::Pod(p) => format!("POD:{}:{}:{}", p.name, p.role, p.deleted),
                watch_event::Event::Config(_) => "CONFIG".into(),
                watch_event::Event::SnapshotDone(_) => "DONE".into(),
                watch_event::Event::Node(n) => format!("NODE:{}:{}", n.name, n.deleted),
                watch_event::Event::Child(c) => {
                    format!("CHILD:{}:{}:{}:{}", c.cluster, c.kind, c.name, c.deleted)
                }
            });
        }
        out
    }

    #[test]
    fn status_only_writes_produce_no_update() {
        let store = Store::new(PodLabels::default());
        let (_, mut rx) = store.subscribe();
        store.apply_cluster(pg("a", "u1", 2, None));
        store.apply_cluster(pg("a", "u1", 2, Some("Running")));
        store.apply_cluster(pg("a", "u1", 3, Some("Running")));
        let mut relabelled = pg("a", "u1", 3, Some("Running"));
        relabelled["metadata"]["labels"]["x"] = json!("y");
        store.apply_cluster(relabelled);
        store.delete_cluster("ns/a");
        store.delete_cluster("ns/a");
        assert_eq!(
            drain(&mut rx),
            [
                "CLUSTER_EVENT_TYPE_ADD:a",
                "CLUSTER_EVENT_TYPE_UPDATE:a",
                "CLUSTER_EVENT_TYPE_UPDATE:a",
                "CLUSTER_EVENT_TYPE_DELETE:a"
            ]
        );
    }

    /// Schema-valid (embedded Kubernetes types are schemaless in the CRD) but not a valid
    /// `Postgresql`: `tolerationSeconds` must be an integer, a sidecar's name a string.
    fn malformed(status: Option<&str>) -> Value {
        let mut v = pg("bad", "u9", 1, status);
        v["spec"]["tolerations"] = json!([{"key": "a", "tolerationSeconds": "soon"}]);
        v["spec"]["sidecars"] = json!([{"name": 1}]);
        v
    }

    #[test]
    fn a_malformed_object_is_stored_and_streamed_like_any_other() {
        let bad = malformed(None);
        assert!(
            serde_json::from_value::<pgop_common::crd::Postgresql>(bad.clone()).is_err(),
            "the fixture must not parse typed"
        );
        let store = Store::new(PodLabels::default());
        let (_, mut rx) = store.subscribe();
        store.apply_cluster(pg("a", "u1", 2, None));
        store.apply_cluster(bad.clone());
        let added = std::iter::from_fn(|| rx.try_recv().ok())
            .filter_map(|e| match Arc::unwrap_or_clone(e).event {
                Some(watch_event::Event::Cluster(c)) => Some(c),
                _ => None,
            })
            .collect::<Vec<_>>();
        assert_eq!(added.len(), 2);
        let c = &added[1];
        assert_eq!(c.r#type, ClusterEventType::Add as i32);
        assert_eq!(
            (c.namespace.as_str(), c.name.as_str(), c.uid.as_str()),
            ("ns", "bad", "u9")
        );
        let sent: Value = serde_json::from_slice(&c.manifest_json).unwrap();
        assert_eq!(sent, bad, "the object's JSON, unchanged");

        // Status-only writes (a worker marking it Invalid) cause no UPDATE; a spec change does.
        store.apply_cluster(malformed(Some("Invalid")));
        assert_eq!(drain(&mut rx), Vec::<String>::new());
        let mut fixed = malformed(Some("Invalid"));
        fixed["spec"]["tolerations"][0]["tolerationSeconds"] = json!(30);
        store.apply_cluster(fixed);
        assert_eq!(drain(&mut rx), ["CLUSTER_EVENT_TYPE_UPDATE:bad"]);

        // It is in snapshots and resyncs like any other cluster.
        let (snapshot, _) = store.subscribe();
        let synced: Vec<&str> = snapshot
            .iter()
            .filter_map(|e| match &e.event {
                Some(watch_event::Event::Cluster(c)) => Some(c.name.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(synced, ["a", "bad"]);
        assert_eq!(store.resync(), 2);
    }

    #[test]
    fn a_pending_deletion_is_an_update() {
        let store = Store::new(PodLabels::default());
        store.apply_cluster(pg("a", "u1", 2, None));
        let (_, mut rx) = store.subscribe();
        let mut deleting = pg("a", "u1", 2, None);
        deleting["metadata"]["finalizers"] = json!(["pgop.io/finalizer"]);
        store.apply_cluster(deleting.clone());
        deleting["metadata"]["deletionTimestamp"] = json!("2024-01-01T00:00:00Z");
        store.apply_cluster(deleting);
        assert_eq!(
            drain(&mut rx),
            ["CLUSTER_EVENT_TYPE_UPDATE:a", "CLUSTER_EVENT_TYPE_UPDATE:a"]
        );
    }

    #[test]
    fn recreated_object_is_a_delete_then_an_add() {
        let store = Store::new(PodLabels::default());
        store.apply_cluster(pg("a", "u1", 2, None));
        let (_, mut rx) = store.subscribe();
        store.apply_cluster(pg("a", "u2", 2, None));
        assert_eq!(
            drain(&mut rx),
            ["CLUSTER_EVENT_TYPE_DELETE:a", "CLUSTER_EVENT_TYPE_ADD:a"]
        );
    }

    #[test]
    fn snapshot_then_live_events_without_gaps() {
        let store = Store::new(PodLabels::default());
        store
            .apply_config(Some([("workers".to_string(), "4".to_string())].into()))
            .unwrap();
        store.apply_cluster(pg("a", "u1", 2, None));
        store.apply_cluster(pg("b", "u2", 2, None));
        let (snapshot, mut rx) = store.subscribe();
        let kinds: Vec<_> = snapshot
            .iter()
            .map(|e| match e.event.as_ref().unwrap() {
                watch_event::Event::Cluster(c) => format!(
                    "{}:{}",
                    ClusterEventType::try_from(c.r#type).unwrap().as_str_name(),
                    c.name
                ),
                watch_event::Event::Config(_) => "CONFIG".into(),
                watch_event::Event::SnapshotDone(d) => format!("DONE:{}", d.clusters),
                watch_event::Event::Pod(_) => "POD".into(),
                watch_event::Event::Node(_) => "NODE".into(),
                watch_event::Event::Child(_) => "CHILD".into(),
            })
            .collect();
        assert_eq!(
            kinds,
            [
                "CONFIG",
                "CLUSTER_EVENT_TYPE_SYNC:a",
                "CLUSTER_EVENT_TYPE_SYNC:b",
                "DONE:2"
            ]
        );
        store.apply_cluster(pg("c", "u3", 1, None));
        assert_eq!(drain(&mut rx), ["CLUSTER_EVENT_TYPE_ADD:c"]);
        assert_eq!(store.resync(), 3);
        assert_eq!(drain(&mut rx).len(), 3);
    }

    #[test]
    fn a_snapshot_reports_pods_without_their_cluster_as_a_deleted_cluster() {
        let store = Store::new(PodLabels::default());
        store.apply_cluster(pg("a", "u1", 1, None));
        let pod = |name: &str, cluster: &str| -> Pod {
            serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": "ns", "labels": {"cluster-name": cluster}}
            }))
            .unwrap()
        };
        store.apply_pod(&pod("a-0", "a"), false);
        store.apply_pod(&pod("gone-0", "gone"), false);
        store.apply_pod(&pod("gone-1", "gone"), false);
        let (snapshot, _) = store.subscribe();
        let deletes: Vec<String> = snapshot
            .iter()
            .filter_map(|e| match &e.event {
                Some(watch_event::Event::Cluster(c))
                    if c.r#type == ClusterEventType::Delete as i32 =>
                {
                    Some(format!("{}/{}", c.namespace, c.name))
                }
                _ => None,
            })
            .collect();
        assert_eq!(deletes, ["ns/gone"], "one DELETE per orphaned cluster");
    }

    #[test]
    fn pods_route_by_cluster_label_and_repeat_only_on_change() {
        let store = Store::new(PodLabels::default());
        let (_, mut rx) = store.subscribe();
        let pod = |role: &str| -> Pod {
            serde_json::from_value(json!({
                "metadata": {"name": "a-0", "namespace": "ns", "labels": {"cluster-name": "a", "spilo-role": role}},
                "status": {"phase": "Running", "podIP": "127.1.0.1", "conditions": [{"type": "Ready", "status": "True"}]}
            }))
            .unwrap()
        };
        store.apply_pod(&pod("replica"), false);
        store.apply_pod(&pod("replica"), false);
        store.apply_pod(&pod("master"), false);
        let stray: Pod = serde_json::from_value(
            json!({"metadata": {"name": "x", "namespace": "ns", "labels": {"app": "other"}}}),
        )
        .unwrap();
        store.apply_pod(&stray, false);
        store.apply_pod(&pod("master"), true);
        assert_eq!(
            drain(&mut rx),
            [
                "POD:a-0:replica:false",
                "POD:a-0:master:false",
                "POD:a-0:master:true"
            ]
        );
        let state = pod_state(&pod("master"), &PodLabels::default(), false).unwrap();
        assert!(state.ready);
        assert_eq!(
            (state.cluster.as_str(), state.pod_ip.as_str()),
            ("a", "127.1.0.1")
        );
    }

    #[test]
    fn child_objects_repeat_only_on_change_and_come_before_their_cluster() {
        let store = Store::new(PodLabels::default());
        store.apply_cluster(pg("a", "u1", 1, None));
        let (_, mut rx) = store.subscribe();
        let child = |cluster: &str, drift: ChildDrift| ChildState {
            namespace: "ns".into(),
            cluster: cluster.into(),
            kind: "Service".into(),
            name: "a-repl".into(),
            applied_hash: "h".into(),
            drift: drift as i32,
            ..ChildState::default()
        };
        store.apply_child(child("a", ChildDrift::InSync));
        store.apply_child(child("a", ChildDrift::InSync));
        store.apply_child(child("a", ChildDrift::Drifted));
        // Relabelled to another cluster: gone for the first one.
        store.apply_child(child("b", ChildDrift::Drifted));
        assert_eq!(
            drain(&mut rx),
            [
                "CHILD:a:Service:a-repl:false",
                "CHILD:a:Service:a-repl:false",
                "CHILD:a:Service:a-repl:true",
                "CHILD:b:Service:a-repl:false",
            ]
        );
        assert_eq!(store.child_keys("Service"), ["ns/Service/a-repl"]);
        assert!(store.child_keys("Secret").is_empty());
        let (snapshot, _) = store.subscribe();
        let order: Vec<&str> = snapshot
            .iter()
            .map(|e| match e.event.as_ref().unwrap() {
                watch_event::Event::Child(_) => "CHILD",
                watch_event::Event::Cluster(_) => "CLUSTER",
                watch_event::Event::SnapshotDone(d) => {
                    assert_eq!(d.children, 1);
                    "DONE"
                }
                _ => "OTHER",
            })
            .collect();
        assert_eq!(order, ["CHILD", "CLUSTER", "DONE"]);
        store.delete_child_by_key("ns/Service/a-repl");
        store.delete_child_by_key("ns/Service/a-repl");
        assert_eq!(drain(&mut rx), ["CHILD:b:Service:a-repl:true"]);
    }

    fn data(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn every_secret_key_is_redacted_whichever_form_set_it() {
        // pgop_common's tests hold SECRET_KEYS to the configuration's credential fields.
        assert!(!SECRET_KEYS.is_empty());
        let pairs: Vec<(&str, &str)> = SECRET_KEYS.iter().map(|k| (*k, "s3cr3t-value")).collect();
        let store = Store::new(PodLabels::default());
        let changes = store.apply_config(Some(data(&pairs))).unwrap().unwrap();
        assert!(!changes.contains("s3cr3t-value"), "{changes}");
        for key in SECRET_KEYS {
            assert!(changes.contains(&format!("{key}=<redacted>")), "{changes}");
        }

        let store = Store::new(PodLabels::default());
        let resource = operator_configuration(json!({
            "scalyr": {"scalyr_api_key": "s3cr3t-1"},
            "logical_backup": {
                "logical_backup_s3_access_key_id": "s3cr3t-2",
                "logical_backup_s3_secret_access_key": "s3cr3t-3",
                "logical_backup_azure_storage_account_key": "s3cr3t-4",
            },
            "kubernetes": {"my_token": "s3cr3t-5"},
        }));
        let changes = store.apply_raw_config(Some(resource)).unwrap().unwrap();
        assert!(!changes.contains("s3cr3t"), "{changes}");
        assert!(
            changes.contains("configuration.kubernetes.my_token=<unknown key>"),
            "{changes}"
        );
    }

    #[test]
    fn config_changes_never_show_secret_or_unknown_values() {
        let store = Store::new(PodLabels::default());
        let first = store
            .apply_config(Some(data(&[("workers", "4"), ("scalyr_api_key", "key-1")])))
            .unwrap()
            .unwrap();
        assert_eq!(first, r#"scalyr_api_key=<redacted>, workers="4""#);
        let second = store
            .apply_config(Some(data(&[
                ("logical_backup_s3_secret_access_key", "key-2"),
                ("my_password", "key-3"),
            ])))
            .unwrap()
            .unwrap();
        assert_eq!(
            second,
            "logical_backup_s3_secret_access_key=<redacted>, my_password=<unknown key>, \
             scalyr_api_key removed, workers removed"
        );
        assert_eq!(
            store.apply_config(None).unwrap().unwrap(),
            "the configuration object is gone: defaults apply"
        );
    }

    #[test]
    fn an_invalid_config_map_keeps_the_last_good_configuration() {
        let store = Store::new(PodLabels::default());
        let (_, mut rx) = store.subscribe();
        store
            .apply_config(Some(data(&[("watched_namespace", "a,b")])))
            .unwrap();
        assert!(store
            .apply_config(Some(data(&[
                ("watched_namespace", "c"),
                ("workers", "many")
            ])))
            .is_err());
        assert_eq!(
            drain(&mut rx),
            ["CONFIG"],
            "nothing sent for the invalid one"
        );
        let (snapshot, _) = store.subscribe();
        let Some(watch_event::Event::Config(c)) = &snapshot[0].event else {
            panic!("the snapshot starts with the configuration")
        };
        assert_eq!(c.data["watched_namespace"], "a,b");
        // Fixed: sent again.
        assert_eq!(
            store
                .apply_config(Some(data(&[("watched_namespace", "c")])))
                .unwrap()
                .unwrap(),
            r#"watched_namespace="c""#
        );
    }

    /// An OperatorConfiguration as the API server sends it.
    fn operator_configuration(configuration: Value) -> RawConfig {
        RawConfig::OperatorConfiguration(json!({
            "apiVersion": "acid.zalan.do/v1", "kind": "OperatorConfiguration",
            "metadata": {"name": "config", "namespace": "pgop-system", "resourceVersion": "1"},
            "configuration": configuration,
        }))
    }

    #[test]
    fn an_operator_configuration_is_sent_as_config_map_data() {
        let store = Store::new(PodLabels::default());
        let (_, mut rx) = store.subscribe();
        let changes = store
            .apply_raw_config(Some(operator_configuration(json!({
                "workers": 4,
                "kubernetes": {"watched_namespace": "a,b", "cluster_labels": {"application": "spilo"}},
                "timeouts": {"ready_wait_timeout": "30s"},
            }))))
            .unwrap()
            .unwrap();
        assert_eq!(
            changes,
            r#"cluster_labels="application:spilo", ready_wait_timeout="30s", watched_namespace="a,b", workers="4""#
        );
        let Some(watch_event::Event::Config(c)) =
            Arc::unwrap_or_clone(rx.try_recv().unwrap()).event
        else {
            panic!("a configuration event")
        };
        assert!(!c.deleted);
        let sent: BTreeMap<String, String> = c.data.into_iter().collect();
        assert_eq!(
            sent,
            data(&[
                ("cluster_labels", "application:spilo"),
                ("ready_wait_timeout", "30s"),
                ("watched_namespace", "a,b"),
                ("workers", "4")
            ])
        );
        // The same configuration again (a resync of the object) sends nothing.
        let again = operator_configuration(json!({
            "workers": 4,
            "kubernetes": {"watched_namespace": "a,b", "cluster_labels": {"application": "spilo"}},
            "timeouts": {"ready_wait_timeout": "30s"},
        }));
        assert_eq!(store.apply_raw_config(Some(again)).unwrap(), None);
        // Gone: defaults.
        assert_eq!(
            store.apply_raw_config(None).unwrap().unwrap(),
            "the configuration object is gone: defaults apply"
        );
    }

    #[test]
    fn an_operator_configuration_that_does_not_flatten_keeps_the_last_good_configuration() {
        let store = Store::new(PodLabels::default());
        let (_, mut rx) = store.subscribe();
        store
            .apply_raw_config(Some(operator_configuration(
                json!({"kubernetes": {"watched_namespace": "a,b"}}),
            )))
            .unwrap();
        for bad in [
            // a string where the schema has a boolean
            json!({"kubernetes": {"watched_namespace": "c", "enable_sidecars": "true"}}),
            // below the schema's minimum
            json!({"kubernetes": {"watched_namespace": "c"}, "workers": 0}),
            // a group that is not an object
            json!({"kubernetes": "watched_namespace=c"}),
            // flattens, but the flat data does not parse
            json!({"kubernetes": {"watched_namespace": "c"}, "resync_period": "soon"}),
        ] {
            let e = store
                .apply_raw_config(Some(operator_configuration(bad.clone())))
                .unwrap_err();
            assert!(e.to_string().contains("configuration."), "{bad}: {e}");
        }
        let e = store
            .apply_raw_config(Some(RawConfig::OperatorConfiguration(json!({
                "apiVersion": "acid.zalan.do/v1", "kind": "postgresql",
                "configuration": {"kubernetes": {"watched_namespace": "c"}},
            }))))
            .unwrap_err();
        assert!(e.to_string().contains("kind"), "{e}");
        assert_eq!(
            drain(&mut rx),
            ["CONFIG"],
            "nothing sent for the invalid ones"
        );
        let (snapshot, _) = store.subscribe();
        let Some(watch_event::Event::Config(c)) = &snapshot[0].event else {
            panic!("the snapshot starts with the configuration")
        };
        assert_eq!(c.data["watched_namespace"], "a,b");
        // Fixed: sent again.
        assert_eq!(
            store
                .apply_raw_config(Some(operator_configuration(
                    json!({"kubernetes": {"watched_namespace": "c"}})
                )))
                .unwrap()
                .unwrap(),
            r#"watched_namespace="c""#
        );
    }

    #[test]
    fn an_invalid_operator_configuration_at_start_is_refused_unless_watched_namespace_is_set() {
        let good = operator_configuration(json!({
            "workers": 2, "kubernetes": {"watched_namespace": "a,b", "pod_role_label": "role"},
        }));
        let bad = operator_configuration(json!({
            "workers": "2", "kubernetes": {"watched_namespace": "a,b"},
        }));
        let some = |l: &[&str]| {
            pgop_common::config::WatchedNamespaces::Some(l.iter().map(|s| s.to_string()).collect())
        };

        let (config, problem) = startup_config(Some(&good), None).unwrap();
        assert!(problem.is_none());
        assert_eq!(config.watched_namespaces("own", None), some(&["a", "b"]));
        assert_eq!(config.pod_role_label, "role");
        assert_eq!(
            config.watched_namespaces("own", Some("x")),
            some(&["x"]),
            "WATCHED_NAMESPACE wins"
        );

        let e = startup_config(Some(&bad), None).unwrap_err();
        assert!(e.to_string().contains("configuration.workers"), "{e}");
        let (config, problem) = startup_config(Some(&bad), Some("x")).unwrap();
        assert!(problem.is_some());
        assert_eq!(config, OperatorConfig::default());

        // Unknown keys, beside `configuration` too, are reported at start.
        let mut odd = json!({
            "apiVersion": "acid.zalan.do/v1", "kind": "OperatorConfiguration",
            "metadata": {"name": "config"},
            "configuration": {"kubernetes": {"liveness_probe": true}},
        });
        odd["spec"] = json!({});
        let (config, _) =
            startup_config(Some(&RawConfig::OperatorConfiguration(odd)), None).unwrap();
        assert_eq!(
            config.unknown_keys,
            ["configuration.kubernetes.liveness_probe", "spec"]
        );
    }

    #[test]
    fn an_invalid_config_map_at_start_is_refused_unless_watched_namespace_is_set() {
        let cm = |pairs: &[(&str, &str)]| RawConfig::ConfigMap(data(pairs));
        let good = cm(&[("watched_namespace", "a,b"), ("workers", "2")]);
        let bad = cm(&[("watched_namespace", "a,b"), ("workers", "many")]);
        let namespaces = |c: &OperatorConfig, env: Option<&str>| c.watched_namespaces("own", env);
        let some = |l: &[&str]| {
            pgop_common::config::WatchedNamespaces::Some(l.iter().map(|s| s.to_string()).collect())
        };

        let (config, problem) = startup_config(Some(&good), None).unwrap();
        assert!(problem.is_none());
        assert_eq!(namespaces(&config, None), some(&["a", "b"]));

        let (config, problem) = startup_config(None, None).unwrap();
        assert!(problem.is_none());
        assert_eq!(config, OperatorConfig::default());

        let e = startup_config(Some(&bad), None).unwrap_err();
        assert!(e.to_string().contains("workers"), "{e}");

        for env in ["x", ""] {
            let (config, problem) = startup_config(Some(&bad), Some(env)).unwrap();
            assert!(problem.is_some());
            assert_eq!(
                namespaces(&config, Some(env)),
                some(&[if env.is_empty() { "own" } else { env }])
            );
        }
    }

    #[test]
    fn nodes_are_news_only_when_workers_care() {
        let store = Store::new(PodLabels::default());
        let (_, mut rx) = store.subscribe();
        let node = |unschedulable: bool, ready_label: bool, heartbeat: &str| -> Node {
            serde_json::from_value(json!({
                "metadata": {"name": "n1", "labels": if ready_label { json!({"ready": "true"}) } else { json!({}) }},
                "spec": {"unschedulable": unschedulable},
                "status": {"conditions": [{"type": "Ready", "status": "True", "lastHeartbeatTime": heartbeat}]}
            }))
            .unwrap()
        };
        store.apply_node(&node(false, true, "2026-01-01T00:00:00Z"), false);
        // A status heartbeat changes nothing workers act on.
        store.apply_node(&node(false, true, "2026-01-01T00:00:10Z"), false);
        store.apply_node(&node(true, true, "2026-01-01T00:00:20Z"), false);
        store.apply_node(&node(true, false, "2026-01-01T00:00:20Z"), false);
        store.delete_node_by_key("/n1");
        assert_eq!(
            drain(&mut rx),
            [
                "NODE:n1:false",
                "NODE:n1:false",
                "NODE:n1:false",
                "NODE:n1:true"
            ]
        );
        assert!(store.node_keys().is_empty());
        // A later subscriber gets the nodes in its snapshot.
        store.apply_node(&node(false, true, "2026-01-01T00:00:30Z"), false);
        let (snapshot, _) = store.subscribe();
        assert!(snapshot
            .iter()
            .any(|e| matches!(&e.event, Some(watch_event::Event::Node(n)) if n.name == "n1")));
    }
}
