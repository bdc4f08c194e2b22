//! The end-to-end harness: a fresh local environment (control plane + local kubelets) in its
//! own state directory and ports, driven the way a user drives a cluster, with every
//! component's log collected in `<state>/logs`.
pub mod env;
pub mod metrics;
pub mod pgop;
pub mod teams_api;
pub mod wait;

pub use env::{Environment, EnvironmentOptions};

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
