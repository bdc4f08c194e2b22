//! Pods bound to our nodes: one task per pod, fed the pod's latest object by a watch.
pub mod actor;
pub mod env;
pub mod launch;
pub mod probes;
pub mod status;
pub mod volumes;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::Api;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::Shared;

pub async fn run(shared: Arc<Shared>) {
    let nodes: HashSet<String> = shared.config.node_names().into_iter().collect();
    let api: Api<Pod> = Api::all(shared.client.clone());
    let config = watcher::Config::default().fields("spec.nodeName!=");
    let mut events = std::pin::pin!(watcher::watcher(api, config).default_backoff());
    let mut actors: HashMap<String, watch::Sender<Option<Pod>>> = HashMap::new();
    let mut tasks = JoinSet::new();
    let mut relisted: Option<HashSet<String>> = None;

    let ours = |pod: &Pod| {
        pod.spec
            .as_ref()
            .and_then(|s| s.node_name.as_ref())
            .is_some_and(|n| nodes.contains(n))
    };
    loop {
        let event = tokio::select! {
            _ = shared.shutdown.cancelled() => break,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
            event = events.next() => event,
        };
        let Some(event) = event else { break };
        match event {
            Ok(Event::Init) => relisted = Some(HashSet::new()),
            Ok(Event::InitApply(pod)) | Ok(Event::Apply(pod)) => {
                if !ours(&pod) {
                    continue;
                }
                let Some(uid) = pod.metadata.uid.clone() else {
                    continue;
                };
                if let Some(seen) = relisted.as_mut() {
                    seen.insert(uid.clone());
                }
                let delivered = actors
                    .get(&uid)
                    .is_some_and(|tx| tx.send(Some(pod.clone())).is_ok());
                if !delivered {
                    let (tx, rx) = watch::channel(Some(pod));
                    actors.insert(uid, tx);
                    tasks.spawn(actor::run(shared.clone(), rx));
                }
            }
            Ok(Event::InitDone) => {
                if let Some(seen) = relisted.take() {
                    actors.retain(|uid, tx| {
                        let keep = seen.contains(uid);
                        if !keep {
                            let _ = tx.send(None);
                        }
                        keep
                    });
                }
            }
            Ok(Event::Delete(pod)) => {
                if let Some(tx) = pod.metadata.uid.as_ref().and_then(|uid| actors.remove(uid)) {
                    let _ = tx.send(None);
                }
            }
            Err(e) => tracing::warn!("pod watch: {e}"),
        }
        actors.retain(|_, tx| !tx.is_closed());
    }
    // Every actor stops its processes on the shared shutdown signal.
    while tasks.join_next().await.is_some() {}
}
