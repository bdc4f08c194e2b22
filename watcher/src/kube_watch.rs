//! Watches feeding the store: postgresql objects and pods of managed clusters in the watched
//! namespaces, and the operator ConfigMap. A relist (after a watch expired) is diffed
//! against the store, so deletions that happened meanwhile are not lost.
use std::collections::BTreeSet;
use std::sync::Arc;

use std::sync::atomic::{AtomicUsize, Ordering};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client, Resource};
use pgop_common::config::WatchedNamespaces;
use pgop_common::crd::Postgresql;
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;

use crate::store::Store;

/// One API per watched namespace (or one for all), with the namespace it covers.
fn apis<K>(client: &Client, namespaces: &WatchedNamespaces) -> Vec<(Option<String>, Api<K>)>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match namespaces {
        WatchedNamespaces::All => vec![(None, Api::all(client.clone()))],
        WatchedNamespaces::Some(list) => list
            .iter()
            .map(|ns| (Some(ns.clone()), Api::namespaced(client.clone(), ns)))
            .collect(),
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
trait Tracked:
    Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
    + Clone
    + DeserializeOwned
    + std::fmt::Debug
    + Send
    + 'static
{
    const WHAT: &'static str;
    fn key(&self) -> String;
    fn apply(store: &Store, object: Self);
    fn delete(store: &Store, object: &Self);
    fn known(store: &Store) -> Vec<String>;
    fn forget(store: &Store, key: &str);
}

impl Tracked for Postgresql {
    const WHAT: &'static str = "postgresql";
    fn key(&self) -> String {
        Postgresql::key(self)
    }
    fn apply(store: &Store, object: Self) {
        store.apply_cluster(object);
    }
    fn delete(store: &Store, object: &Self) {
        store.delete_cluster(&object.key());
    }
    fn known(store: &Store) -> Vec<String> {
        store.cluster_keys()
    }
    fn forget(store: &Store, key: &str) {
        store.delete_cluster(key);
    }
}

impl Tracked for Pod {
    const WHAT: &'static str = "pod";
    fn key(&self) -> String {
        format!(
            "{}/{}",
            self.metadata.namespace.as_deref().unwrap_or_default(),
            self.metadata.name.as_deref().unwrap_or_default()
        )
    }
    fn apply(store: &Store, object: Self) {
        store.apply_pod(&object, false);
    }
    fn delete(store: &Store, object: &Self) {
        store.apply_pod(object, true);
    }
    fn known(store: &Store) -> Vec<String> {
        store.pod_keys()
    }
    fn forget(store: &Store, key: &str) {
        store.delete_pod_by_key(key);
    }
}

/// One watch per watched namespace (or one for all), each with its own relist tracking.
async fn watch_each_namespace<K: Tracked>(
    client: Client,
    namespaces: WatchedNamespaces,
    config: watcher::Config,
    store: Arc<Store>,
    lists: Arc<InitialLists>,
    shutdown: CancellationToken,
) {
    let streams = apis::<K>(&client, &namespaces)
        .into_iter()
        .map(|(scope, api)| {
            let (store, lists, shutdown, config) = (
                store.clone(),
                lists.clone(),
                shutdown.clone(),
                config.clone(),
            );
            async move {
                let mut events = std::pin::pin!(watcher::watcher(api, config).default_backoff());
                let mut relist = Relist::new(scope);
                let mut first = true;
                loop {
                    let event = tokio::select! {
                        _ = shutdown.cancelled() => return,
                        e = events.next() => match e { Some(e) => e, None => return },
                    };
                    match event {
                        Ok(Event::Init) => relist.start(),
                        Ok(Event::InitApply(object)) => {
                            relist.saw(object.key());
                            K::apply(&store, object);
                        }
                        Ok(Event::InitDone) => {
                            for key in relist.gone(K::known(&store)) {
                                K::forget(&store, &key);
                            }
                            lists.done(&mut first);
                        }
                        Ok(Event::Apply(object)) => K::apply(&store, object),
                        Ok(Event::Delete(object)) => K::delete(&store, &object),
                        Err(e) => tracing::warn!("{} watch: {e}", K::WHAT),
                    }
                }
            }
        });
    futures::future::join_all(streams).await;
}

pub async fn watch_clusters(
    client: Client,
    namespaces: WatchedNamespaces,
    store: Arc<Store>,
    lists: Arc<InitialLists>,
    shutdown: CancellationToken,
) {
    watch_each_namespace::<Postgresql>(
        client,
        namespaces,
        watcher::Config::default(),
        store,
        lists,
        shutdown,
    )
    .await
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
    watch_each_namespace::<Pod>(client, namespaces, config, store, lists, shutdown).await
}

pub async fn watch_config(
    client: Client,
    namespace: String,
    name: String,
    store: Arc<Store>,
    lists: Arc<InitialLists>,
    shutdown: CancellationToken,
) {
    let api: Api<ConfigMap> = Api::namespaced(client, &namespace);
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut events = std::pin::pin!(watcher::watcher(api, config).default_backoff());
    let mut seen_in_relist = false;
    let mut first = true;
    let shown = format!("{namespace}/{name}");
    let apply = |data| match store.apply_config(data) {
        Ok(Some(changes)) => {
            tracing::info!(configmap = %shown, %changes, "operator configuration changed")
        }
        Ok(None) => {}
        Err(e) => tracing::error!(
            configmap = %shown,
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
            Ok(Event::InitApply(cm)) | Ok(Event::Apply(cm)) => {
                seen_in_relist = true;
                apply(Some(cm.data.unwrap_or_default()));
            }
            Ok(Event::InitDone) => {
                if !seen_in_relist {
                    apply(None);
                }
                lists.done(&mut first);
            }
            Ok(Event::Delete(_)) => apply(None),
            Err(e) => tracing::warn!("configmap watch: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
