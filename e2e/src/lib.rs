//! The end-to-end harness: a fresh local environment (control plane + local kubelets) in its
//! own state directory and ports, driven the way a user drives a cluster, with every
//! component's log collected in `<state>/logs`.
pub mod env;
pub mod metrics;
pub mod mutants;
pub mod pgop;
pub mod teams_api;
pub mod wait;

pub use env::{Environment, EnvironmentOptions};

use anyhow::Result;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};

pub async fn create_namespace(client: &Client, name: &str) -> Result<()> {
    let ns = Namespace {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        ..Default::default()
    };
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await?;
    Ok(())
}

/// A fresh environment in `state` with the CRD, the pod RBAC and `namespaces`.
pub async fn environment_with_crd(
    state: &std::path::Path,
    namespaces: &[impl AsRef<str>],
) -> Result<(Environment, Client)> {
    let env = Environment::start(state, EnvironmentOptions::default())?;
    let client = env.client().await?;
    let root = env::workspace_root();
    for file in [
        "manifests/postgresql.crd.yaml",
        "manifests/postgres-pod-rbac.yaml",
    ] {
        env.kubectl(&["apply", "-f", &root.join(file).display().to_string()])?;
    }
    for ns in namespaces {
        create_namespace(&client, ns.as_ref()).await?;
    }
    Ok((env, client))
}

/// A `postgresql` manifest whose pods go to the simulated nodes (no processes run).
pub fn simulated_cluster(name: &str, instances: u32) -> String {
    format!(
        r#"apiVersion: acid.zalan.do/v1
kind: postgresql
metadata: {{name: {name}}}
spec:
  teamId: acid
  numberOfInstances: {instances}
  volume: {{size: 1Gi}}
  postgresql: {{version: "15"}}
  tolerations: [{{key: pgop.local/simulated, operator: Exists, effect: NoSchedule}}]
  nodeAffinity:
    requiredDuringSchedulingIgnoredDuringExecution:
      nodeSelectorTerms:
      - matchExpressions: [{{key: pgop.local/kubelet-mode, operator: In, values: [simulate]}}]
"#
    )
}
