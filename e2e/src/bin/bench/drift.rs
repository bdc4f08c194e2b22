//! Drift: objects pgop wrote, deleted or edited by another client, until pgop put them back.
//! One change at a time, alternating a deleted replica Service and a StatefulSet scaled by
//! hand, each on another cluster of the converged fleet.
use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Service;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::{Api, Client};
use serde::Serialize;

use crate::latency::percentile;

#[derive(Debug, Serialize, Default)]
pub struct Drift {
    pub changes: usize,
    pub p50_seconds: f64,
    pub p99_seconds: f64,
    pub max_seconds: f64,
}

/// How often the repaired object is looked at (the figures' resolution).
const POLL: Duration = Duration::from_millis(25);
const GIVE_UP: Duration = Duration::from_secs(60);

async fn until(what: &str, mut done: impl AsyncFnMut() -> Result<bool>) -> Result<()> {
    let begun = Instant::now();
    while !done().await? {
        ensure!(
            begun.elapsed() < GIVE_UP,
            "{what} not repaired within {GIVE_UP:?}"
        );
        tokio::time::sleep(POLL).await;
    }
    Ok(())
}

pub async fn measure(
    client: &Client,
    names: &[(String, String)],
    instances: u32,
    changes: usize,
) -> Result<Drift> {
    let step = (names.len() / changes.max(1)).max(1);
    let mut took = Vec::new();
    for (i, (ns, name)) in names.iter().step_by(step).take(changes).enumerate() {
        let begun = Instant::now();
        if i % 2 == 0 {
            let services = Api::<Service>::namespaced(client.clone(), ns);
            let replica = format!("{name}-repl");
            let old = services.get(&replica).await?.metadata.uid;
            services.delete(&replica, &DeleteParams::default()).await?;
            until(&format!("Service {ns}/{replica}"), async || {
                Ok(services
                    .get_opt(&replica)
                    .await?
                    .is_some_and(|s| s.metadata.uid != old))
            })
            .await?;
        } else {
            let statefulsets = Api::<StatefulSet>::namespaced(client.clone(), ns);
            let scale = serde_json::json!({"spec": {"replicas": instances + 2}});
            statefulsets
                .patch(name, &PatchParams::default(), &Patch::Merge(&scale))
                .await?;
            until(&format!("StatefulSet {ns}/{name}"), async || {
                let replicas = statefulsets.get(name).await?.spec.and_then(|s| s.replicas);
                Ok(replicas == Some(instances as i32))
            })
            .await?;
        }
        took.push(begun.elapsed().as_secs_f64());
    }
    took.sort_by(f64::total_cmp);
    Ok(Drift {
        changes: took.len(),
        p50_seconds: percentile(&took, 0.5),
        p99_seconds: percentile(&took, 0.99),
        max_seconds: took.last().copied().unwrap_or(f64::NAN),
    })
}
