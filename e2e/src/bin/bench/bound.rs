//! The API server's bound: the objects pgop writes for the fleet (StatefulSet, Services,
//! Endpoints, Secrets, disruption budgets, from pgop's own builders) created by a bare client,
//! in an environment of its own; and the full floor: the same, until every pod is Ready and
//! role-labelled (the control plane's own work: the StatefulSet controller, the scheduler,
//! the kubelet, endpoints).
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use anyhow::Result;
use futures::stream::{self, StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Endpoints, Secret, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::RoleBinding;
use kube::api::{ApiResource, DynamicObject, PostParams};
use kube::{Api, Client};
use pgop_common::config::OperatorConfig;
use pgop_common::crd::Postgresql;
use pgop_worker::pure::builders::{pdb, secrets, service_account, services, statefulset};
use serde::Serialize;

use crate::measure;
use crate::setup::{manifest, operator_config_data};
use crate::Args;
use pgop_e2e::environment_with_crd as environment;

#[derive(Debug, Serialize)]
pub struct Bound {
    pub seconds: f64,
    pub objects: usize,
    /// Until every pod of the fleet was Ready and carried its role label.
    pub floor_seconds: f64,
    pub pods: usize,
    /// CPU seconds of the environment's processes meanwhile.
    pub cpu: BTreeMap<String, f64>,
}

/// Creates what pgop writes for `pg`; returns the number of objects.
async fn create_objects(
    client: &Client,
    pg: &Postgresql,
    config: &OperatorConfig,
) -> Result<usize> {
    let ns = pg.metadata.namespace.clone().unwrap_or_default();
    let pp = PostParams::default();
    let mut count = 0;
    for target in secrets::credential_secrets(pg, config) {
        let secret = secrets::desired_secret(pg, config, &target, "bench-password");
        Api::<Secret>::namespaced(client.clone(), &ns)
            .create(&pp, &secret)
            .await?;
        count += 1;
    }
    for service in services::desired_services(pg, config) {
        Api::<Service>::namespaced(client.clone(), &ns)
            .create(&pp, &service)
            .await?;
        count += 1;
    }
    if let Some(endpoints) = services::desired_endpoints(pg, config) {
        Api::<Endpoints>::namespaced(client.clone(), &ns)
            .create(&pp, &endpoints)
            .await?;
        count += 1;
    }
    // Kubernetes 1.20 serves disruption budgets as policy/v1beta1 only (same schema).
    let mut v1beta1 = ApiResource::erase::<PodDisruptionBudget>(&());
    v1beta1.version = "v1beta1".into();
    v1beta1.api_version = "policy/v1beta1".into();
    for budget in pdb::desired_pdbs(pg, config) {
        let mut budget: DynamicObject = serde_json::from_value(serde_json::to_value(&budget)?)?;
        budget.types = Some(kube::api::TypeMeta {
            api_version: v1beta1.api_version.clone(),
            kind: v1beta1.kind.clone(),
        });
        Api::<DynamicObject>::namespaced_with(client.clone(), &ns, &v1beta1)
            .create(&pp, &budget)
            .await?;
        count += 1;
    }
    let sts = statefulset::desired_statefulset(pg, config)?;
    Api::<StatefulSet>::namespaced(client.clone(), &ns)
        .create(&pp, &sts)
        .await?;
    Ok(count + 1)
}

pub async fn measure(args: &Args, names: &[(String, String)], state: &Path) -> Result<Bound> {
    let namespaces: Vec<String> = (0..args.namespaces).map(|i| format!("bench-{i}")).collect();
    let (env, client) = environment(state, &namespaces).await?;
    let processes = measure::environment_processes(&env);
    let config = pgop_common::config::from_config_map_data(&operator_config_data(args))?;
    let before = measure::costs(&processes);
    let begun = Instant::now();
    // What the clusters of a namespace share: the pods' service account and its binding.
    let mut shared = 0;
    let one_per_namespace: BTreeMap<&String, &String> =
        names.iter().map(|(ns, n)| (ns, n)).collect();
    for (ns, name) in one_per_namespace {
        let pg = manifest(name, ns, args.instances)?;
        let account = service_account::desired_service_account(&pg, &config)?;
        Api::<ServiceAccount>::namespaced(client.clone(), ns)
            .create(&PostParams::default(), &account)
            .await?;
        let binding = service_account::desired_role_binding(&pg, &config)?;
        Api::<RoleBinding>::namespaced(client.clone(), ns)
            .create(&PostParams::default(), &binding)
            .await?;
        shared += 2;
    }
    let objects: Vec<usize> =
        stream::iter(
            names.iter().map(|(ns, name)| {
                let (client, config) = (client.clone(), config.clone());
                async move {
                    create_objects(&client, &manifest(name, ns, args.instances)?, &config).await
                }
            }),
        )
        .buffer_unordered(args.concurrency)
        .try_collect()
        .await?;
    let seconds = begun.elapsed().as_secs_f64();
    let cpu = measure::cpu_between(&before, &measure::costs(&processes));
    let objects = objects.iter().sum::<usize>() + shared;
    eprintln!("[bench] bound: {objects} objects in {seconds:.1}s");
    let pods = names.len() * args.instances as usize;
    let floor = wait_for_pods(&client, pods, begun, args.timeout_seconds).await;
    env.stop();
    let floor_seconds = floor?;
    eprintln!("[bench] floor: {pods} pods Ready and role-labelled in {floor_seconds:.1}s");
    Ok(Bound {
        seconds,
        objects,
        floor_seconds,
        pods,
        cpu,
    })
}

/// Seconds since `begun` until `pods` pods are Ready with a role label (kept by a watch:
/// listing thousands of pods in a loop would load the API server being measured).
async fn wait_for_pods(client: &Client, pods: usize, begun: Instant, timeout: u64) -> Result<f64> {
    use k8s_openapi::api::core::v1::Pod;
    use kube::runtime::{watcher, WatchStreamExt};
    let selector = watcher::Config::default().labels("application=spilo");
    let stream = watcher(Api::<Pod>::all(client.clone()), selector)
        .default_backoff()
        .applied_objects();
    let mut stream = std::pin::pin!(stream);
    let mut done = std::collections::HashSet::new();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(timeout);
    while done.len() < pods {
        let pod = tokio::select! {
            _ = tokio::time::sleep_until(deadline) => {
                anyhow::bail!("only {} of {pods} pods Ready within {timeout} s", done.len())
            }
            pod = stream.next() => match pod {
                Some(pod) => pod?,
                None => anyhow::bail!("the pod watch ended"),
            },
        };
        let ready = pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        let labelled = pod
            .metadata
            .labels
            .as_ref()
            .is_some_and(|l| l.contains_key("spilo-role"));
        if ready && labelled {
            done.insert(pod.metadata.uid.unwrap_or_default());
        }
    }
    Ok(begun.elapsed().as_secs_f64())
}
