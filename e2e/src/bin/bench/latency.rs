//! Change → StatefulSet latency: a pod annotation changed in manifests at a steady rate; a
//! watch records when each StatefulSet first shows each value.
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use pgop_common::crd::Postgresql;
use serde::Serialize;

/// The annotation the latency phases change.
pub const CHANGE: &str = "pgop-bench/change";

#[derive(Debug, Serialize, Default)]
pub struct Latency {
    pub rate: f64,
    pub changes: usize,
    /// Changes the StatefulSet never showed (nor a later one) within 60 s.
    pub missed: usize,
    pub p50_seconds: f64,
    pub p99_seconds: f64,
    pub max_seconds: f64,
}

/// When each value of [`CHANGE`] first showed in a StatefulSet's pod template.
#[derive(Clone, Default)]
pub struct Seen(Arc<Mutex<HashMap<String, Instant>>>);

impl Seen {
    pub fn at(&self, value: &str) -> Option<Instant> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(value)
            .copied()
    }
}

pub async fn watch_changes(client: Client, seen: Seen) {
    use kube::runtime::{watcher, WatchStreamExt};
    let stream = watcher(Api::<StatefulSet>::all(client), watcher::Config::default())
        .default_backoff()
        .applied_objects();
    let mut stream = std::pin::pin!(stream);
    while let Some(Ok(sts)) = stream.next().await {
        let value = sts
            .spec
            .as_ref()
            .and_then(|s| s.template.metadata.as_ref())
            .and_then(|m| m.annotations.as_ref())
            .and_then(|a| a.get(CHANGE))
            .cloned();
        if let Some(value) = value {
            let mut seen = seen.0.lock().unwrap_or_else(|e| e.into_inner());
            seen.entry(value).or_insert_with(Instant::now);
        }
    }
}

/// `count` changes at `rate` a second, each to the next cluster; their latencies.
pub async fn churn(
    client: &Client,
    names: &[(String, String)],
    rate: f64,
    count: usize,
    first: usize,
    seen: &Seen,
) -> Result<Latency> {
    let mut sent = Vec::with_capacity(count);
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate.max(0.01)));
    for i in first..first + count {
        tick.tick().await;
        let (ns, name) = &names[i % names.len()];
        let value = format!("change-{i}");
        let patch = serde_json::json!({"spec": {"podAnnotations": {CHANGE: value}}});
        let api = Api::<Postgresql>::namespaced(client.clone(), ns);
        let at = Instant::now();
        // Sent without waiting in line behind the previous ones.
        let name = name.clone();
        tokio::spawn(async move {
            let _ = api
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await;
        });
        sent.push((i % names.len(), value, at));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline && !sent.iter().all(|(_, v, _)| seen.at(v).is_some()) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let shown: Vec<(usize, Option<Instant>, Instant)> = sent
        .iter()
        .map(|(cluster, value, at)| (*cluster, seen.at(value), *at))
        .collect();
    Ok(summarize(rate, &shown))
}

/// The `q` quantile of `sorted` (nearest rank); NaN when empty.
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    sorted
        .get(((sorted.len() as f64 * q).ceil() as usize).saturating_sub(1))
        .copied()
        .unwrap_or(f64::NAN)
}

/// A change overtaken by a later one to the same cluster is carried out when the
/// StatefulSet shows that later one (the worker coalesces them, as it should).
fn summarize(rate: f64, sent: &[(usize, Option<Instant>, Instant)]) -> Latency {
    let mut latencies: Vec<f64> = sent
        .iter()
        .enumerate()
        .filter_map(|(k, (cluster, _, at))| {
            sent[k..]
                .iter()
                .filter(|(c, _, _)| c == cluster)
                .filter_map(|(_, shown, _)| *shown)
                .min()
                .map(|t| t.saturating_duration_since(*at).as_secs_f64())
        })
        .collect();
    latencies.sort_by(f64::total_cmp);
    Latency {
        rate,
        changes: sent.len(),
        missed: sent.len() - latencies.len(),
        p50_seconds: percentile(&latencies, 0.5),
        p99_seconds: percentile(&latencies, 0.99),
        max_seconds: latencies.last().copied().unwrap_or(f64::NAN),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_overtaken_change_counts_when_the_later_one_shows() {
        let t0 = Instant::now();
        let s = |n: u64| t0 + Duration::from_secs(n);
        // Cluster 0: changed at 0 and 1, only the second shown (at 3). Cluster 1: never.
        let sent = [(0, None, s(0)), (0, Some(s(3)), s(1)), (1, None, s(2))];
        let latency = summarize(10.0, &sent);
        assert_eq!(latency.changes, 3);
        assert_eq!(latency.missed, 1);
        assert_eq!(latency.max_seconds, 3.0);
        assert_eq!(latency.p50_seconds, 2.0);
    }
}
