//! Watches feeding the store: postgresql objects and pods of managed clusters in the watched
//! namespaces, and the operator ConfigMap. A relist (after a watch expired) is diffed
//! against the store, so deletions that happened meanwhile are not lost.
use std::collections::BTreeSet;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client, Resource};
use pgop_common::config::WatchedNamespaces;
use pgop_common::crd::Postgresql;
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;

use crate::store::Store;

fn apis<K>(client: &Client, namespaces: &WatchedNamespaces) -> Vec<Api<K>>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match namespaces {
        WatchedNamespaces::All => vec![Api::all(client.clone())],
        WatchedNamespaces::Some(list) => list
            .iter()
            .map(|ns| Api::namespaced(client.clone(), ns))
            .collect(),
    }
}

fn merged<K>(
    apis: Vec<Api<K>>,
    config: watcher::Config,
) -> impl Stream<Item = Result<Event<K>, watcher::Error>>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
    K::DynamicType: Default,
{
    futures::stream::select_all(apis.into_iter().map(move |api| {
        watcher::watcher(api, config.clone())
            .default_backoff()
            .boxed()
    }))
}

/// Tracks which keys a relist re-announced, to drop the rest once it is done. With several
/// namespaces the relists interleave, so a key counts as seen from any of them.
#[derive(Default)]
struct Relist {
    seen: Option<BTreeSet<String>>,
    pending: usize,
}

impl Relist {
    fn start(&mut self) {
        self.seen.get_or_insert_with(BTreeSet::new);
        self.pending += 1;
    }

    fn saw(&mut self, key: String) {
        if let Some(seen) = self.seen.as_mut() {
            seen.insert(key);
        }
    }

    /// The keys to forget once every started relist is done.
    fn done(&mut self, known: Vec<String>, scoped_to_one_namespace: bool) -> Vec<String> {
        self.pending = self.pending.saturating_sub(1);
        if self.pending > 0 && !scoped_to_one_namespace {
            return Vec::new();
        }
        let seen = self.seen.take().unwrap_or_default();
        known.into_iter().filter(|k| !seen.contains(k)).collect()
    }
}

pub async fn watch_clusters(
    client: Client,
    namespaces: WatchedNamespaces,
    store: Arc<Store>,
    shutdown: CancellationToken,
) {
    let mut events = std::pin::pin!(merged::<Postgresql>(
        apis(&client, &namespaces),
        watcher::Config::default()
    ));
    let mut relist = Relist::default();
    let single = matches!(&namespaces, WatchedNamespaces::All)
        || matches!(&namespaces, WatchedNamespaces::Some(l) if l.len() == 1);
    loop {
        let event = tokio::select! {
            _ = shutdown.cancelled() => return,
            e = events.next() => match e { Some(e) => e, None => return },
        };
        match event {
            Ok(Event::Init) => relist.start(),
            Ok(Event::InitApply(pg)) => {
                relist.saw(pg.key());
                store.apply_cluster(pg);
            }
            Ok(Event::InitDone) => {
                for key in relist.done(store.cluster_keys(), single) {
                    store.delete_cluster(&key);
                }
            }
            Ok(Event::Apply(pg)) => store.apply_cluster(pg),
            Ok(Event::Delete(pg)) => store.delete_cluster(&pg.key()),
            Err(e) => tracing::warn!("postgresql watch: {e}"),
        }
    }
}

pub async fn watch_pods(
    client: Client,
    namespaces: WatchedNamespaces,
    selector: String,
    store: Arc<Store>,
    shutdown: CancellationToken,
) {
    let config = watcher::Config::default().labels(&selector);
    let mut events = std::pin::pin!(merged::<Pod>(apis(&client, &namespaces), config));
    let mut relist = Relist::default();
    let single = matches!(&namespaces, WatchedNamespaces::All)
        || matches!(&namespaces, WatchedNamespaces::Some(l) if l.len() == 1);
    let key = |p: &Pod| {
        format!(
            "{}/{}",
            p.metadata.namespace.as_deref().unwrap_or_default(),
            p.metadata.name.as_deref().unwrap_or_default()
        )
    };
    loop {
        let event = tokio::select! {
            _ = shutdown.cancelled() => return,
            e = events.next() => match e { Some(e) => e, None => return },
        };
        match event {
            Ok(Event::Init) => relist.start(),
            Ok(Event::InitApply(pod)) => {
                relist.saw(key(&pod));
                store.apply_pod(&pod, false);
            }
            Ok(Event::InitDone) => {
                for k in relist.done(store.pod_keys(), single) {
                    store.delete_pod_by_key(&k);
                }
            }
            Ok(Event::Apply(pod)) => store.apply_pod(&pod, false),
            Ok(Event::Delete(pod)) => store.apply_pod(&pod, true),
            Err(e) => tracing::warn!("pod watch: {e}"),
        }
    }
}

pub async fn watch_config(
    client: Client,
    namespace: String,
    name: String,
    store: Arc<Store>,
    shutdown: CancellationToken,
) {
    let api: Api<ConfigMap> = Api::namespaced(client, &namespace);
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut events = std::pin::pin!(watcher::watcher(api, config).default_backoff());
    let mut seen_in_relist = false;
    loop {
        let event = tokio::select! {
            _ = shutdown.cancelled() => return,
            e = events.next() => match e { Some(e) => e, None => return },
        };
        match event {
            Ok(Event::Init) => seen_in_relist = false,
            Ok(Event::InitApply(cm)) | Ok(Event::Apply(cm)) => {
                seen_in_relist = true;
                store.apply_config(Some(cm.data.unwrap_or_default()));
            }
            Ok(Event::InitDone) if !seen_in_relist => store.apply_config(None),
            Ok(Event::InitDone) => {}
            Ok(Event::Delete(_)) => store.apply_config(None),
            Err(e) => tracing::warn!("configmap watch: {e}"),
        }
    }
}
