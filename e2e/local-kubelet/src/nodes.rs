//! The nodes this kubelet plays: registered Ready, kept fresh by leases and status updates.
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{
    DaemonEndpoint, Node, NodeAddress, NodeCondition, NodeDaemonEndpoints, NodeSpec, NodeStatus,
    NodeSystemInfo, Taint,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Patch, PatchParams, PostParams};
use kube::Api;

use crate::pods::status::now;
use crate::Shared;

const LEASE_RENEW: Duration = Duration::from_secs(10);
const STATUS_EVERY: u32 = 6;
pub const FIELD_MANAGER: &str = "pgop-local-kubelet";

/// Zones the nodes are spread over, round-robin.
const ZONES: &[&str] = &["local-a", "local-b", "local-c"];

/// Node label telling how the node's pods run: `processes` or `simulate`.
pub const MODE_LABEL: &str = "pgop.local/kubelet-mode";

/// A taint from `KEY=VALUE:EFFECT` (or `KEY:EFFECT`).
pub fn parse_taint(spec: &str) -> Option<Taint> {
    let (key_value, effect) = spec.rsplit_once(':')?;
    if !matches!(effect, "NoSchedule" | "PreferNoSchedule" | "NoExecute") {
        return None;
    }
    let (key, value) = match key_value.split_once('=') {
        Some((k, v)) => (k, Some(v.to_string())),
        None => (key_value, None),
    };
    (!key.is_empty()).then(|| Taint {
        key: key.to_string(),
        value,
        effect: effect.to_string(),
        time_added: None,
    })
}

/// `kubelet_port` is where the kubelet API serves (see `kubelet_api`): the API server sends
/// `kubectl logs` there.
pub fn desired_node(
    name: &str,
    index: usize,
    max_pods: u32,
    simulate: bool,
    taints: &[Taint],
    kubelet_port: u16,
) -> Node {
    let zone = ZONES[index % ZONES.len()];
    let mode = if simulate { "simulate" } else { "processes" };
    let labels: BTreeMap<String, String> = [
        ("kubernetes.io/hostname", name),
        ("kubernetes.io/os", "linux"),
        ("kubernetes.io/arch", "amd64"),
        ("topology.kubernetes.io/region", "local"),
        ("topology.kubernetes.io/zone", zone),
        ("failure-domain.beta.kubernetes.io/region", "local"),
        ("failure-domain.beta.kubernetes.io/zone", zone),
        ("node.kubernetes.io/instance-type", "pgop-local"),
        (MODE_LABEL, mode),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let capacity: BTreeMap<String, Quantity> = [
        ("cpu", "64".to_string()),
        ("memory", "256Gi".into()),
        ("pods", max_pods.to_string()),
        ("ephemeral-storage", "1Ti".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), Quantity(v)))
    .collect();
    Node {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            labels: Some(labels),
            ..Default::default()
        },
        spec: (!taints.is_empty()).then(|| NodeSpec {
            taints: Some(taints.to_vec()),
            ..Default::default()
        }),
        status: Some(node_status(name, capacity, kubelet_port)),
    }
}

fn node_status(name: &str, capacity: BTreeMap<String, Quantity>, kubelet_port: u16) -> NodeStatus {
    let t = now();
    let condition = |type_: &str, status: &str, reason: &str| NodeCondition {
        type_: type_.to_string(),
        status: status.to_string(),
        reason: Some(reason.to_string()),
        message: Some(format!("{reason} (pgop local kubelet)")),
        last_heartbeat_time: Some(t.clone()),
        last_transition_time: Some(t.clone()),
    };
    NodeStatus {
        allocatable: Some(capacity.clone()),
        capacity: Some(capacity),
        conditions: Some(vec![
            condition("MemoryPressure", "False", "KubeletHasSufficientMemory"),
            condition("DiskPressure", "False", "KubeletHasNoDiskPressure"),
            condition("PIDPressure", "False", "KubeletHasSufficientPID"),
            condition("Ready", "True", "KubeletReady"),
        ]),
        addresses: Some(vec![
            NodeAddress {
                type_: "InternalIP".into(),
                address: "127.0.0.1".into(),
            },
            NodeAddress {
                type_: "Hostname".into(),
                address: name.to_string(),
            },
        ]),
        daemon_endpoints: Some(NodeDaemonEndpoints {
            kubelet_endpoint: Some(DaemonEndpoint {
                port: i32::from(kubelet_port),
            }),
        }),
        node_info: Some(NodeSystemInfo {
            architecture: "amd64".into(),
            boot_id: String::new(),
            container_runtime_version: "pgop-local://1".into(),
            kernel_version: String::new(),
            kube_proxy_version: "v1.20.2".into(),
            kubelet_version: "v1.20.2".into(),
            machine_id: String::new(),
            operating_system: "linux".into(),
            os_image: "pgop local processes".into(),
            system_uuid: name.to_string(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Registers every node, then renews leases every 10 s and node status every minute.
pub async fn run(shared: Arc<Shared>) -> Result<(), kube::Error> {
    let nodes: Api<Node> = Api::all(shared.client.clone());
    let leases: Api<Lease> = Api::namespaced(shared.client.clone(), "kube-node-lease");
    let names = shared.config.node_names();
    let kubelet_port = shared.config.kubelet_port;
    let taints = shared
        .config
        .taints
        .iter()
        .map(|t| parse_taint(t).ok_or(t))
        .collect::<Result<Vec<_>, _>>();
    let taints = match taints {
        Ok(t) => t,
        Err(bad) => {
            tracing::error!(
                "invalid taint {bad:?}: expected KEY[=VALUE]:NoSchedule|PreferNoSchedule|NoExecute"
            );
            return Ok(());
        }
    };
    for (i, name) in names.iter().enumerate() {
        let node = desired_node(
            name,
            i,
            shared.config.max_pods,
            shared.config.simulate,
            &taints,
            kubelet_port,
        );
        match nodes.create(&PostParams::default(), &node).await {
            Ok(_) => tracing::info!(node = %name, "registered node"),
            Err(kube::Error::Api(s)) if s.code == 409 => {
                let patch = serde_json::json!({"metadata": {"labels": node.metadata.labels}, "spec": {"taints": taints}});
                nodes
                    .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await?;
                nodes
                    .patch_status(
                        name,
                        &PatchParams::default(),
                        &Patch::Merge(&serde_json::json!({"status": node.status})),
                    )
                    .await?;
            }
            Err(e) => return Err(e),
        }
    }
    let mut round = 0u32;
    loop {
        for (i, name) in names.iter().enumerate() {
            if let Err(e) = renew_lease(&leases, name).await {
                tracing::warn!(node = %name, "lease renewal failed: {e}");
            }
            if round.is_multiple_of(STATUS_EVERY) && round > 0 {
                let status = desired_node(
                    name,
                    i,
                    shared.config.max_pods,
                    shared.config.simulate,
                    &taints,
                    kubelet_port,
                )
                .status;
                if let Err(e) = nodes
                    .patch_status(
                        name,
                        &PatchParams::default(),
                        &Patch::Merge(&serde_json::json!({"status": status})),
                    )
                    .await
                {
                    tracing::warn!(node = %name, "node status update failed: {e}");
                }
            }
        }
        round = round.wrapping_add(1);
        tokio::select! {
            _ = shared.shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(LEASE_RENEW) => {}
        }
    }
}

async fn renew_lease(leases: &Api<Lease>, node: &str) -> Result<(), kube::Error> {
    let renew = MicroTime(k8s_openapi::jiff::Timestamp::now());
    let lease = Lease {
        metadata: ObjectMeta {
            name: Some(node.to_string()),
            ..Default::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(node.to_string()),
            lease_duration_seconds: Some(40),
            renew_time: Some(renew),
            ..Default::default()
        }),
    };
    leases
        .patch(
            node,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&lease),
        )
        .await
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn taint_table() {
        let cases = [
            ("a=b:NoSchedule", Some(("a", Some("b"), "NoSchedule"))),
            ("a:NoExecute", Some(("a", None, "NoExecute"))),
            ("a=b:Sometimes", None),
            ("=b:NoSchedule", None),
            ("nothing", None),
        ];
        for (spec, want) in cases {
            let got = parse_taint(spec);
            let got = got
                .as_ref()
                .map(|t| (t.key.as_str(), t.value.as_deref(), t.effect.as_str()));
            assert_eq!(got, want, "{spec}");
        }
    }

    #[test]
    fn nodes_spread_over_zones_and_report_ready() {
        let zones: Vec<String> = (0..3)
            .map(|i| {
                desired_node(&format!("n-{i}"), i, 100, false, &[], 10250)
                    .metadata
                    .labels
                    .unwrap()["topology.kubernetes.io/zone"]
                    .clone()
            })
            .collect();
        assert_eq!(zones, ["local-a", "local-b", "local-c"]);
        let taint = parse_taint("pgop.local/simulated=true:NoSchedule").unwrap();
        let node = desired_node("n-1", 0, 250, true, std::slice::from_ref(&taint), 12345);
        assert_eq!(node.spec.unwrap().taints.unwrap(), vec![taint]);
        assert_eq!(
            node.metadata.labels.as_ref().unwrap()[MODE_LABEL],
            "simulate"
        );
        let status = node.status.unwrap();
        assert_eq!(status.capacity.unwrap()["pods"], Quantity("250".into()));
        let endpoint = status.daemon_endpoints.unwrap().kubelet_endpoint.unwrap();
        assert_eq!(endpoint.port, 12345);
        let ready = status
            .conditions
            .unwrap()
            .into_iter()
            .find(|c| c.type_ == "Ready")
            .unwrap();
        assert_eq!(ready.status, "True");
    }
}
