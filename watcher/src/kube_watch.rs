//! Watches feeding the store: postgresql objects and pods of managed clusters in the watched
//! namespaces, and the operator configuration (the ConfigMap, or an OperatorConfiguration).
//! A relist (after a watch expired) is diffed against the store, so deletions that happened
//! meanwhile are not lost. `postgresql` objects are watched untyped (see the `Tracked` impl
//! for `DynamicObject`): bad input in one must not stop the watch of the others. So is the
//! OperatorConfiguration: whether it reads is for `pgop_common::config` to say.
use std::collections::BTreeSet;
use std::sync::Arc;

use std::sync::atomic::{AtomicUsize, Ordering};

use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::ListParams;
use kube::core::{ApiResource, DynamicObject, GroupVersionKind, PartialObjectMeta};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client, Resource};
use pgop_common::config::WatchedNamespaces;
use pgop_common::crd::Postgresql;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;

use crate::children::{child_key, child_state, ChildKind, ChildSelector};
use crate::store::{RawConfig, Store};
use crate::ConfigSource;

/// Whether the object of `key` (`namespace/…`) is in a watched namespace.
fn watched(namespaces: &WatchedNamespaces, key: &str) -> bool {
    match namespaces {
        WatchedNamespaces::All => true,
        WatchedNamespaces::Some(list) => {
            let namespace = key.split('/').next().unwrap_or_default();
            list.iter().any(|ns| ns == namespace)
        }
    }
}

/// Counts the watches that have not finished their first list; the watcher serves
/// subscriptions only once every watch has, so a snapshot is never partial.
#[derive(Debug)]
pub struct InitialLists(AtomicUsize);

impl InitialLists {
    pub fn new(watches: usize) -> Self {
        Self(AtomicUsize::new(watches))
    }

    fn done(&self, first: &mut bool) {
        if std::mem::take(first) {
            self.0.fetch_sub(1, Ordering::SeqCst);
        }
    }

    pub fn complete(&self) -> bool {
        self.0.load(Ordering::SeqCst) == 0
    }
}

/// The keys one watch stream re-announced during its current relist. Each stream (one per
/// namespace) has its own, and compares only against keys of its own namespace.
struct Relist {
    scope: Option<String>,
    seen: Option<BTreeSet<String>>,
}

impl Relist {
    fn new(scope: Option<String>) -> Self {
        Self { scope, seen: None }
    }

    /// A (re)started list: what an earlier, failed attempt saw no longer counts.
    fn start(&mut self) {
        self.seen = Some(BTreeSet::new());
    }

    fn saw(&mut self, key: String) {
        if let Some(seen) = self.seen.as_mut() {
            seen.insert(key);
        }
    }

    /// Known keys of this stream's scope that the finished list did not mention.
    fn gone(&mut self, known: Vec<String>) -> Vec<String> {
        let seen = self.seen.take().unwrap_or_default();
        let prefix = self.scope.as_ref().map(|ns| format!("{ns}/"));
        known
            .into_iter()
            .filter(|k| prefix.as_ref().is_none_or(|p| k.starts_with(p.as_str())))
            .filter(|k| !seen.contains(k))
            .collect()
    }
}

/// How a watched kind enters the store.
trait Tracked: Send + Sync + 'static {
    type Object: Send;
    fn what(&self) -> &str;
    /// `namespace/…`: a namespace's relist compares only keys with its prefix.
    fn key(&self, object: &Self::Object) -> String;
    fn apply(&self, store: &Store, object: Self::Object);
    fn delete(&self, store: &Store, object: &Self::Object);
    fn known(&self, store: &Store) -> Vec<String>;
    fn forget(&self, store: &Store, key: &str);
}

/// `namespace/name` of a Kubernetes object.
fn object_key(meta: &ObjectMeta) -> String {
    format!(
        "{}/{}",
        meta.namespace.as_deref().unwrap_or_default(),
        meta.name.as_deref().unwrap_or_default()
    )
}

/// The `postgresql` resource (acid.zalan.do/v1, plural postgresqls), as the CRD declares it.
pub fn postgresql_resource() -> ApiResource {
    ApiResource::erase::<Postgresql>(&())
}

/// Zalando's `OperatorConfiguration` resource (acid.zalan.do/v1, plural
/// operatorconfigurations, namespaced), as `manifests/operatorconfiguration.crd.yaml`
/// declares it.
pub fn operator_configuration_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("acid.zalan.do", "v1", "OperatorConfiguration"),
        "operatorconfigurations",
    )
}

/// A watched `postgresql` object as JSON, exactly as the API server sent it (with its
/// `apiVersion` and `kind`, filled in when the API server left them out).
fn manifest(object: DynamicObject) -> Value {
    object_json(object, &postgresql_resource())
}

/// An untyped object as JSON, with the `apiVersion` and `kind` of `resource` when the API
/// server left them out.
fn object_json(object: DynamicObject, resource: &ApiResource) -> Value {
    let DynamicObject {
        types,
        metadata,
        data,
    } = object;
    let mut json = match data {
        Value::Object(map) => map,
        _ => Map::new(),
    };
    let (api_version, kind) = types
        .map_or((resource.api_version.clone(), resource.kind.clone()), |t| {
            (t.api_version, t.kind)
        });
    json.insert("apiVersion".into(), Value::String(api_version));
    json.insert("kind".into(), Value::String(kind));
    json.insert(
        "metadata".into(),
        serde_json::to_value(metadata).unwrap_or_default(),
    );
    Value::Object(json)
}

/// `postgresql` objects are watched untyped: the CRD keeps embedded Kubernetes types
/// schemaless, so the API server accepts objects that do not deserialize into
/// [`Postgresql`], and one such object would make its namespace's typed list fail again and
/// again, stopping every cluster there. Only `metadata` (which the API server validates) is
/// read typed; whether the rest parses is for the cluster's worker to find out and report.
struct Clusters;

impl Tracked for Clusters {
    type Object = DynamicObject;
    fn what(&self) -> &str {
        "postgresql"
    }
    fn key(&self, object: &DynamicObject) -> String {
        object_key(&object.metadata)
    }
    fn apply(&self, store: &Store, object: DynamicObject) {
        store.apply_cluster(manifest(object));
    }
    fn delete(&self, store: &Store, object: &DynamicObject) {
        store.delete_cluster(&self.key(object));
    }
    fn known(&self, store: &Store) -> Vec<String> {
        store.cluster_keys()
    }
    fn forget(&self, store: &Store, key: &str) {
        store.delete_cluster(key);
    }
}

struct Pods;

impl Tracked for Pods {
    type Object = Pod;
    fn what(&self) -> &str {
        "pod"
    }
    fn key(&self, object: &Pod) -> String {
        object_key(&object.metadata)
    }
    fn apply(&self, store: &Store, object: Pod) {
        store.apply_pod(&object, false);
    }
    fn delete(&self, store: &Store, object: &Pod) {
        store.apply_pod(object, true);
    }
    fn known(&self, store: &Store) -> Vec<String> {
        store.pod_keys()
    }
    fn forget(&self, store: &Store, key: &str) {
        store.delete_pod_by_key(key);
    }
}

/// Nodes are cluster-scoped: one watch whatever the watched namespaces. Workers move
/// masters off nodes that are drained or lose their readiness labels.
struct Nodes;

impl Tracked for Nodes {
    type Object = Node;
    fn what(&self) -> &str {
        "node"
    }
    fn key(&self, object: &Node) -> String {
        object_key(&object.metadata)
    }
    fn apply(&self, store: &Store, object: Node) {
        store.apply_node(&object, false);
    }
    fn delete(&self, store: &Store, object: &Node) {
        store.apply_node(object, true);
    }
    fn known(&self, store: &Store) -> Vec<String> {
        store.node_keys()
    }
    fn forget(&self, store: &Store, key: &str) {
        store.delete_node_by_key(key);
    }
}

/// One kind of the objects pgop writes for clusters, as JSON (whole, or only its metadata).
struct Children {
    kind: ChildKind,
    cluster_label: String,
}

impl Tracked for Children {
    type Object = Value;
    fn what(&self) -> &str {
        self.kind.kind
    }
    fn key(&self, object: &Value) -> String {
        child_key(
            object["metadata"]["namespace"].as_str().unwrap_or_default(),
            self.kind.kind,
            object["metadata"]["name"].as_str().unwrap_or_default(),
        )
    }
    fn apply(&self, store: &Store, object: Value) {
        store.apply_child(child_state(&self.kind, &object, &self.cluster_label, false));
    }
    fn delete(&self, store: &Store, object: &Value) {
        store.apply_child(child_state(&self.kind, object, &self.cluster_label, true));
    }
    fn known(&self, store: &Store) -> Vec<String> {
        store.child_keys(self.kind.kind)
    }
    fn forget(&self, store: &Store, key: &str) {
        store.delete_child_by_key(key);
    }
}

type EventStream<T> = BoxStream<'static, watcher::Result<Event<T>>>;

/// One watch per watched namespace (or one for all), each with its own relist tracking.
async fn watch_each_namespace<T: Tracked>(
    tracker: T,
    streams: Vec<(Option<String>, EventStream<T::Object>)>,
    namespaces: &WatchedNamespaces,
    store: Arc<Store>,
    lists: Arc<InitialLists>,
    shutdown: CancellationToken,
) {
    let tracker = &tracker;
    let streams = streams.into_iter().map(|(scope, mut events)| {
        let (store, lists, shutdown) = (store.clone(), lists.clone(), shutdown.clone());
        async move {
            let mut relist = Relist::new(scope);
            let mut first = true;
            loop {
                let event = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    e = events.next() => match e { Some(e) => e, None => return },
                };
                let event = match event {
                    Ok(Event::InitApply(o) | Event::Apply(o) | Event::Delete(o))
                        if !watched(namespaces, &tracker.key(&o)) =>
                    {
                        continue
                    }
                    other => other,
                };
                match event {
                    Ok(Event::Init) => relist.start(),
                    Ok(Event::InitApply(object)) => {
                        relist.saw(tracker.key(&object));
                        tracker.apply(&store, object);
                    }
                    Ok(Event::InitDone) => {
                        for key in relist.gone(tracker.known(&store)) {
                            tracker.forget(&store, &key);
                        }
                        lists.done(&mut first);
                    }
                    Ok(Event::Apply(object)) => tracker.apply(&store, object),
                    Ok(Event::Delete(object)) => tracker.delete(&store, &object),
                    Err(e) => tracing::warn!("{} watch: {e}", tracker.what()),
                }
            }
        }
    });
    futures::future::join_all(streams).await;
}

/// One watch of all namespaces per kind: the watched ones are picked from its events
/// ([`watched`]). Each watch costs the watcher buffers and a connection and the API server a
/// watcher, so one per kind and namespace would grow with the namespaces.
fn full_streams<K>(api: Api<K>, config: &watcher::Config) -> Vec<(Option<String>, EventStream<K>)>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    let events = watcher::watcher(api, config.clone()).default_backoff();
    vec![(None, events.boxed())]
}

pub async fn watch_clusters(
    client: Client,
    namespaces: WatchedNamespaces,
    store: Arc<Store>,
    lists: Arc<InitialLists>,
    shutdown: CancellationToken,
) {
    let resource = postgresql_resource();
    let api = Api::all_with(client, &resource);
    let streams = full_streams(api, &watcher::Config::default());
    watch_each_namespace(Clusters, streams, &namespaces, store, lists, shutdown).await
}

pub async fn watch_pods(
    client: Client,
    namespaces: WatchedNamespaces,
    selector: String,
    store: Arc<Store>,
    lists: Arc<InitialLists>,
    shutdown: CancellationToken,
) {
    let config = watcher::Config::default().labels(&selector);
    let streams = full_streams(Api::<Pod>::all(client), &config);
    watch_each_namespace(Pods, streams, &namespaces, store, lists, shutdown).await
}

pub async fn watch_nodes(
    client: Client,
    store: Arc<Store>,
    lists: Arc<InitialLists>,
    shutdown: CancellationToken,
) {
    let streams = full_streams(Api::<Node>::all(client), &watcher::Config::default());
    let all = WatchedNamespaces::All;
    watch_each_namespace(Nodes, streams, &all, store, lists, shutdown).await
}

/// The labels child objects are selected and routed by.
pub struct ChildLabels {
    /// `cluster_name_label`: its value names the object's cluster.
    pub cluster: String,
    /// `cluster_labels` as a selector (`application=spilo`).
    pub pods: String,
}

/// One kind of child object: watched by the cluster-name label (the pod service account and
/// its role binding, which no cluster owns alone, by name), whole or only its metadata.
pub async fn watch_children(
    client: Client,
    namespaces: WatchedNamespaces,
    kind: ChildKind,
    labels: ChildLabels,
    store: Arc<Store>,
    lists: Arc<InitialLists>,
    shutdown: CancellationToken,
) {
    let ChildLabels {
        cluster: cluster_label,
        pods: pod_selector,
    } = labels;
    let config = match &kind.selector {
        ChildSelector::ClusterLabel => watcher::Config::default().labels(&cluster_label),
        ChildSelector::PodLabels => {
            let selector = [pod_selector.as_str(), cluster_label.as_str()]
                .into_iter()
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
                .join(",");
            watcher::Config::default().labels(&selector)
        }
        ChildSelector::Name(name) => watcher::Config::default().fields(&by_name(name)),
    };
    let resource = &kind.resource;
    let events: EventStream<Value> = match kind.metadata_only {
        true => watcher::watcher(
            Api::<PartialObjectMeta<DynamicObject>>::all_with(client, resource),
            config,
        )
        .default_backoff()
        .map_ok(|e| as_json(e, |o| serde_json::json!({"metadata": o.metadata})))
        .boxed(),
        false => watcher::watcher(Api::<DynamicObject>::all_with(client, resource), config)
            .default_backoff()
            .map_ok(|e| as_json(e, |o| serde_json::to_value(o).unwrap_or_default()))
            .boxed(),
    };
    let streams = vec![(None, events)];
    let tracker = Children {
        kind,
        cluster_label,
    };
    watch_each_namespace(tracker, streams, &namespaces, store, lists, shutdown).await
}

/// An event of typed objects as one of JSON objects.
fn as_json<A>(event: Event<A>, json: impl Fn(A) -> Value) -> Event<Value> {
    match event {
        Event::Init => Event::Init,
        Event::InitDone => Event::InitDone,
        Event::InitApply(o) => Event::InitApply(json(o)),
        Event::Apply(o) => Event::Apply(json(o)),
        Event::Delete(o) => Event::Delete(json(o)),
    }
}

fn config_map_raw(cm: ConfigMap) -> RawConfig {
    RawConfig::ConfigMap(cm.data.unwrap_or_default())
}

fn operator_configuration_raw(object: DynamicObject) -> RawConfig {
    RawConfig::OperatorConfiguration(object_json(object, &operator_configuration_resource()))
}

/// Only the object named `name`: the watcher's RBAC allows no other (a list or watch names
/// its object by this field selector).
fn by_name(name: &str) -> String {
    format!("metadata.name={name}")
}

/// Reads the operator configuration's object once (None: it does not exist), before the
/// watches start. It is listed by name, as the watch does, so that a missing
/// OperatorConfiguration CRD is an error rather than a missing object.
pub async fn read_config(
    client: Client,
    namespace: &str,
    source: &ConfigSource,
) -> kube::Result<Option<RawConfig>> {
    let params = ListParams::default().fields(&by_name(source.name()));
    Ok(match source {
        ConfigSource::ConfigMap(_) => Api::<ConfigMap>::namespaced(client, namespace)
            .list(&params)
            .await?
            .items
            .into_iter()
            .next()
            .map(config_map_raw),
        ConfigSource::OperatorConfiguration(_) => Api::<DynamicObject>::namespaced_with(
            client,
            namespace,
            &operator_configuration_resource(),
        )
        .list(&params)
        .await?
        .items
        .into_iter()
        .next()
        .map(operator_configuration_raw),
    })
}

/// Watches the operator configuration's object in the watcher's namespace and records what
/// it holds; an invalid one is logged and refused (the store keeps the last good one), a
/// missing or deleted one means defaults.
pub async fn watch_config(
    client: Client,
    namespace: String,
    source: ConfigSource,
    store: Arc<Store>,
    lists: Arc<InitialLists>,
    shutdown: CancellationToken,
) {
    let shown = source.shown(&namespace);
    let config = watcher::Config::default().fields(&by_name(source.name()));
    match source {
        ConfigSource::ConfigMap(_) => {
            let api = Api::<ConfigMap>::namespaced(client, &namespace);
            watch_config_object(api, config, config_map_raw, shown, store, lists, shutdown).await
        }
        ConfigSource::OperatorConfiguration(_) => {
            let resource = operator_configuration_resource();
            let api = Api::<DynamicObject>::namespaced_with(client, &namespace, &resource);
            watch_config_object(
                api,
                config,
                operator_configuration_raw,
                shown,
                store,
                lists,
                shutdown,
            )
            .await
        }
    }
}

async fn watch_config_object<K>(
    api: Api<K>,
    config: watcher::Config,
    raw: fn(K) -> RawConfig,
    shown: String,
    store: Arc<Store>,
    lists: Arc<InitialLists>,
    shutdown: CancellationToken,
) where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    let mut events = std::pin::pin!(watcher::watcher(api, config).default_backoff());
    let mut seen_in_relist = false;
    let mut first = true;
    let apply = |object: Option<K>| match store.apply_raw_config(object.map(raw)) {
        Ok(Some(changes)) => {
            tracing::info!(source = %shown, %changes, "operator configuration changed")
        }
        Ok(None) => {}
        Err(e) => tracing::error!(
            source = %shown,
            "the operator configuration is invalid ({e}); keeping the last good one until it is fixed"
        ),
    };
    loop {
        let event = tokio::select! {
            _ = shutdown.cancelled() => return,
            e = events.next() => match e { Some(e) => e, None => return },
        };
        match event {
            Ok(Event::Init) => seen_in_relist = false,
            Ok(Event::InitApply(object)) | Ok(Event::Apply(object)) => {
                seen_in_relist = true;
                apply(Some(object));
            }
            Ok(Event::InitDone) => {
                if !seen_in_relist {
                    apply(None);
                }
                lists.done(&mut first);
            }
            Ok(Event::Delete(_)) => apply(None),
            Err(e) => tracing::warn!(source = %shown, "configuration watch: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::core::ObjectList;
    use pgop_proto::v1::{watch_event, ClusterEventType};
    use serde_json::json;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn object(name: &str, uid: &str) -> Value {
        json!({
            "apiVersion": "acid.zalan.do/v1", "kind": "postgresql",
            "metadata": {"name": name, "namespace": "ns", "uid": uid, "resourceVersion": "1"},
            "spec": {"teamId": "acid", "numberOfInstances": 1, "volume": {"size": "1Gi"}, "postgresql": {"version": "15"}}
        })
    }

    /// Accepted by the API server (the CRD keeps embedded Kubernetes types schemaless), but
    /// not a `Postgresql`.
    fn malformed(name: &str, uid: &str) -> Value {
        let mut v = object(name, uid);
        v["spec"]["tolerations"] = json!([{"key": "a", "tolerationSeconds": "soon"}]);
        v["spec"]["sidecars"] = json!([{"name": 1}]);
        v
    }

    fn list(items: &[Value]) -> Value {
        json!({
            "apiVersion": "acid.zalan.do/v1", "kind": "postgresqlList",
            "metadata": {"resourceVersion": "1"}, "items": items
        })
    }

    #[test]
    fn the_operator_configuration_resource_is_zalandos() {
        let r = operator_configuration_resource();
        assert_eq!(
            (r.group.as_str(), r.version.as_str(), r.api_version.as_str()),
            ("acid.zalan.do", "v1", "acid.zalan.do/v1")
        );
        assert_eq!(
            (r.kind.as_str(), r.plural.as_str()),
            ("OperatorConfiguration", "operatorconfigurations")
        );
    }

    #[test]
    fn the_watched_resource_is_the_crds() {
        let r = postgresql_resource();
        assert_eq!(
            (r.group.as_str(), r.version.as_str(), r.api_version.as_str()),
            ("acid.zalan.do", "v1", "acid.zalan.do/v1")
        );
        assert_eq!(
            (r.kind.as_str(), r.plural.as_str()),
            ("postgresql", "postgresqls")
        );
    }

    #[test]
    fn a_malformed_object_does_not_spoil_its_list_and_is_stored_verbatim() {
        let body = list(&[object("good", "u1"), malformed("bad", "u2")]);
        assert!(
            serde_json::from_value::<ObjectList<Postgresql>>(body.clone()).is_err(),
            "typed, one bad object fails the whole list"
        );
        let listed: ObjectList<DynamicObject> = serde_json::from_value(body).unwrap();
        let store = Store::new(Default::default());
        let (_, mut rx) = store.subscribe();
        for o in listed.items {
            assert_eq!(
                Clusters.key(&o),
                format!("ns/{}", o.metadata.name.as_deref().unwrap())
            );
            Clusters.apply(&store, o);
        }
        let mut sent = Vec::new();
        while let Ok(e) = rx.try_recv() {
            let Some(watch_event::Event::Cluster(c)) = std::sync::Arc::unwrap_or_clone(e).event
            else {
                panic!("only clusters")
            };
            assert_eq!(c.r#type, ClusterEventType::Add as i32);
            sent.push(serde_json::from_slice::<Value>(&c.manifest_json).unwrap());
        }
        assert_eq!(sent, [object("good", "u1"), malformed("bad", "u2")]);
    }

    #[test]
    fn a_manifest_without_api_version_and_kind_gets_them() {
        let mut v = malformed("bad", "u2");
        let map = v.as_object_mut().unwrap();
        map.remove("apiVersion");
        map.remove("kind");
        let o: DynamicObject = serde_json::from_value(v).unwrap();
        assert_eq!(manifest(o), malformed("bad", "u2"));
    }

    const POSTGRESQLS: &str = "/apis/acid.zalan.do/v1/namespaces/ns/postgresqls";
    const OPERATOR_CONFIGURATIONS: &str =
        "/apis/acid.zalan.do/v1/namespaces/ns/operatorconfigurations";

    /// A minimal API server on loopback: lists under `served` (a path) answer `items`;
    /// watches send `events` and then stay open; any other path is 404.
    async fn fake_api_server(
        served: &'static str,
        items: Vec<Value>,
        events: Vec<Value>,
    ) -> Client {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            loop {
                let Ok((mut socket, _)) = listener.accept().await else {
                    return;
                };
                let (items, events) = (items.clone(), events.clone());
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match socket.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let head = String::from_utf8_lossy(&head).to_string();
                    let path = head.split_whitespace().nth(1).unwrap_or_default();
                    if !path.starts_with(served) {
                        let _ = socket
                            .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                            .await;
                        return;
                    }
                    if !path.contains("watch=true") {
                        let body = list(&items).to_string();
                        let response = format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                            body.len()
                        );
                        let _ = socket.write_all(response.as_bytes()).await;
                        return;
                    }
                    let mut response = String::from(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
                    );
                    for e in events {
                        let line = format!("{e}\n");
                        response.push_str(&format!("{:x}\r\n{line}\r\n", line.len()));
                    }
                    if socket.write_all(response.as_bytes()).await.is_ok() {
                        // Open until the client goes away.
                        let _ = socket.read(&mut buf).await;
                    }
                });
            }
        });
        Client::try_from(kube::Config::new(url.parse().unwrap())).unwrap()
    }

    #[tokio::test]
    async fn a_namespace_with_a_malformed_object_keeps_streaming_its_clusters() {
        // One watch of all namespaces; another namespace's objects are not the watcher's.
        let mut elsewhere = object("elsewhere", "u9");
        elsewhere["metadata"]["namespace"] = json!("other");
        let mut invalid = malformed("bad", "u2");
        invalid["status"] = json!({"PostgresClusterStatus": "Invalid"});
        invalid["metadata"]["resourceVersion"] = json!("2");
        let mut scaled = object("good", "u1");
        scaled["spec"]["numberOfInstances"] = json!(2);
        scaled["metadata"]["resourceVersion"] = json!("3");
        let client = fake_api_server(
            "/apis/acid.zalan.do/v1/postgresqls",
            vec![
                object("good", "u1"),
                elsewhere.clone(),
                malformed("bad", "u2"),
            ],
            vec![
                json!({"type": "MODIFIED", "object": elsewhere}),
                json!({"type": "MODIFIED", "object": invalid}),
                json!({"type": "ADDED", "object": malformed("worse", "u3")}),
                json!({"type": "MODIFIED", "object": scaled}),
            ],
        )
        .await;
        let store = Arc::new(Store::new(Default::default()));
        let lists = Arc::new(InitialLists::new(1));
        let shutdown = CancellationToken::new();
        let (_, mut rx) = store.subscribe();
        let watch = tokio::spawn(watch_clusters(
            client,
            WatchedNamespaces::Some(vec!["ns".into()]),
            store.clone(),
            lists.clone(),
            shutdown.clone(),
        ));
        let mut seen = Vec::new();
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
        while seen.len() < 4 {
            let e = tokio::time::timeout_at(deadline, rx.recv())
                .await
                .unwrap_or_else(|_| panic!("only {seen:?} arrived"))
                .unwrap();
            let Some(watch_event::Event::Cluster(c)) = std::sync::Arc::unwrap_or_clone(e).event
            else {
                continue;
            };
            let kind = ClusterEventType::try_from(c.r#type).unwrap();
            assert_ne!(c.namespace, "other", "an unwatched namespace's object");
            seen.push(format!("{}:{}", kind.as_str_name(), c.name));
            if c.name == "bad" {
                let sent: Value = serde_json::from_slice(&c.manifest_json).unwrap();
                assert_eq!(sent, malformed("bad", "u2"));
            }
        }
        assert!(lists.complete());
        // The status-only change of "bad" made no UPDATE.
        assert_eq!(
            seen,
            [
                "CLUSTER_EVENT_TYPE_ADD:good",
                "CLUSTER_EVENT_TYPE_ADD:bad",
                "CLUSTER_EVENT_TYPE_ADD:worse",
                "CLUSTER_EVENT_TYPE_UPDATE:good"
            ]
        );
        assert_eq!(store.cluster_keys(), ["ns/bad", "ns/good", "ns/worse"]);
        shutdown.cancel();
        watch.await.unwrap();
    }

    fn keys(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_namespace_relist_only_forgets_its_own_missing_keys() {
        let mut relist = Relist::new(Some("a".into()));
        relist.start();
        relist.saw("a/kept".into());
        let gone = relist.gone(keys(&["a/kept", "a/deleted", "b/other"]));
        assert_eq!(
            gone,
            keys(&["a/deleted"]),
            "b/other belongs to another stream"
        );
    }

    #[test]
    fn a_retried_list_starts_afresh_and_all_scope_covers_everything() {
        let mut relist = Relist::new(None);
        relist.start();
        relist.saw("a/x".into());
        relist.start();
        relist.saw("b/y".into());
        assert_eq!(relist.gone(keys(&["a/x", "b/y"])), keys(&["a/x"]));
    }

    #[test]
    fn initial_lists_complete_once_each_stream_finished_once() {
        let lists = InitialLists::new(2);
        let (mut first_a, mut first_b) = (true, true);
        lists.done(&mut first_a);
        lists.done(&mut first_a);
        assert!(
            !lists.complete(),
            "a second list of the same stream does not count"
        );
        lists.done(&mut first_b);
        assert!(lists.complete());
    }

    fn operator_configuration(version: &str, configuration: Value) -> Value {
        json!({
            "apiVersion": "acid.zalan.do/v1", "kind": "OperatorConfiguration",
            "metadata": {"name": "config", "namespace": "ns", "uid": "c1", "resourceVersion": version},
            "configuration": configuration,
        })
    }

    /// The configuration events of `rx` as `data` (None: deleted), until `n` arrived.
    async fn configs(
        rx: &mut tokio::sync::broadcast::Receiver<std::sync::Arc<pgop_proto::v1::WatchEvent>>,
        n: usize,
    ) -> Vec<Option<std::collections::BTreeMap<String, String>>> {
        let mut seen = Vec::new();
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
        while seen.len() < n {
            let e = tokio::time::timeout_at(deadline, rx.recv())
                .await
                .unwrap_or_else(|_| panic!("only {} arrived", seen.len()))
                .unwrap();
            if let Some(watch_event::Event::Config(c)) = std::sync::Arc::unwrap_or_clone(e).event {
                seen.push((!c.deleted).then(|| c.data.into_iter().collect()));
            }
        }
        seen
    }

    fn flat(pairs: &[(&str, &str)]) -> Option<std::collections::BTreeMap<String, String>> {
        Some(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[tokio::test]
    async fn an_operator_configuration_is_read_and_watched_like_the_config_map() {
        let first = operator_configuration(
            "1",
            json!({"workers": 4, "kubernetes": {"watched_namespace": "a"}}),
        );
        let client = fake_api_server(
            OPERATOR_CONFIGURATIONS,
            vec![first.clone()],
            vec![
                // refused: the last good configuration stays, nothing is sent
                json!({"type": "MODIFIED", "object": operator_configuration(
                    "2", json!({"workers": "4", "kubernetes": {"watched_namespace": "b"}}))}),
                json!({"type": "MODIFIED", "object": operator_configuration(
                    "3", json!({"workers": 4, "kubernetes": {"watched_namespace": "c"}}))}),
                json!({"type": "DELETED", "object": operator_configuration("4", json!({}))}),
            ],
        )
        .await;
        let source = ConfigSource::OperatorConfiguration("config".into());
        let raw = read_config(client.clone(), "ns", &source)
            .await
            .unwrap()
            .expect("listed");
        assert!(raw == RawConfig::OperatorConfiguration(first));

        let store = Arc::new(Store::new(Default::default()));
        let lists = Arc::new(InitialLists::new(1));
        let shutdown = CancellationToken::new();
        let (_, mut rx) = store.subscribe();
        let watch = tokio::spawn(watch_config(
            client,
            "ns".into(),
            source,
            store.clone(),
            lists.clone(),
            shutdown.clone(),
        ));
        assert_eq!(
            configs(&mut rx, 3).await,
            [
                flat(&[("watched_namespace", "a"), ("workers", "4")]),
                flat(&[("watched_namespace", "c"), ("workers", "4")]),
                None,
            ]
        );
        assert!(lists.complete());
        shutdown.cancel();
        watch.await.unwrap();
    }

    #[tokio::test]
    async fn a_missing_operator_configuration_means_defaults_and_a_missing_crd_an_error() {
        let client = fake_api_server(OPERATOR_CONFIGURATIONS, vec![], vec![]).await;
        let source = ConfigSource::OperatorConfiguration("config".into());
        assert!(read_config(client.clone(), "ns", &source)
            .await
            .unwrap()
            .is_none());
        let store = Arc::new(Store::new(Default::default()));
        let lists = Arc::new(InitialLists::new(1));
        let shutdown = CancellationToken::new();
        let (_, mut rx) = store.subscribe();
        let watch = tokio::spawn(watch_config(
            client,
            "ns".into(),
            source.clone(),
            store.clone(),
            lists.clone(),
            shutdown.clone(),
        ));
        assert_eq!(configs(&mut rx, 1).await, [None], "defaults apply");
        assert!(lists.complete());
        shutdown.cancel();
        watch.await.unwrap();

        // No such resource: the API server answers 404 to the list itself.
        let client = fake_api_server(POSTGRESQLS, vec![], vec![]).await;
        assert!(read_config(client, "ns", &source).await.is_err());
    }
}
