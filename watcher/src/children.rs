//! The objects pgop writes for clusters, as workers need them: whether each exists, whether
//! it still holds what pgop applied (judged here, from the watch event), and the few values a
//! worker acts on. Workers decide from these which objects need a write and read none.
//!
//! Where the watches live: here, the one process that watches Kubernetes, forwarded over the
//! existing stream to the cluster's owner. Each worker watching its own shard by label would
//! cost every worker the whole fleet's events (a label selector cannot pick a shard), and a
//! worker taking clusters over would have to list them first; the projections are small
//! enough for the watcher, the scheduler and the owner to each hold theirs.
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{
    Endpoints, PersistentVolumeClaim, Secret, Service, ServiceAccount,
};
use k8s_openapi::api::rbac::v1::RoleBinding;
use kube::core::{ApiResource, GroupVersionKind};
use pgop_common::applied::{judge, Drift, APPLIED_HASH};
use pgop_common::config::OperatorConfig;
use pgop_common::discovery::ServedVersions;
use pgop_proto::v1::{ChildDrift, ChildState};
use serde_json::Value;

/// Which objects of a kind are watched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChildSelector {
    /// Those carrying the cluster-name label (any value).
    ClusterLabel,
    /// Those carrying `cluster_labels` too, as the clusters' pods and volume claims do
    /// (another application's claim with a cluster-name label is not pgop's to resize).
    PodLabels,
    /// Those of one name in every watched namespace: what a namespace's clusters share.
    Name(String),
}

#[derive(Debug, Clone)]
pub struct ChildKind {
    pub kind: &'static str,
    pub resource: ApiResource,
    /// Only the metadata is watched: all a worker needs of the kind (and Secrets' values
    /// never reach pgop's control plane this way).
    pub metadata_only: bool,
    pub selector: ChildSelector,
}

fn child_kind<K: kube::Resource<DynamicType = ()>>(
    metadata_only: bool,
    selector: ChildSelector,
) -> ChildKind {
    let resource = ApiResource::erase::<K>(&());
    ChildKind {
        kind: leak_kind(&resource.kind),
        resource,
        metadata_only,
        selector,
    }
}

/// The kinds are a fixed set of k8s-openapi's names.
fn leak_kind(kind: &str) -> &'static str {
    match kind {
        "StatefulSet" => "StatefulSet",
        "Service" => "Service",
        "Endpoints" => "Endpoints",
        "Secret" => "Secret",
        "Deployment" => "Deployment",
        "PersistentVolumeClaim" => "PersistentVolumeClaim",
        "ServiceAccount" => "ServiceAccount",
        "RoleBinding" => "RoleBinding",
        _ => "Unknown",
    }
}

/// A kind served under the version this cluster serves (see [`ServedVersions`]).
fn versioned(group: &str, version: &str, kind: &'static str, plural: &str) -> ChildKind {
    ChildKind {
        kind,
        resource: ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk(group, version, kind),
            plural,
        ),
        metadata_only: false,
        selector: ChildSelector::ClusterLabel,
    }
}

/// Every kind pgop writes for clusters.
pub fn child_kinds(served: &ServedVersions, config: &OperatorConfig) -> Vec<ChildKind> {
    use ChildSelector::{ClusterLabel, Name};
    let shared = Name(config.pod_service_account_name.clone());
    vec![
        child_kind::<StatefulSet>(false, ClusterLabel),
        child_kind::<Service>(false, ClusterLabel),
        child_kind::<Endpoints>(true, ClusterLabel),
        child_kind::<Secret>(true, ClusterLabel),
        child_kind::<Deployment>(false, ClusterLabel),
        child_kind::<PersistentVolumeClaim>(false, ChildSelector::PodLabels),
        versioned(
            "policy",
            &served.pod_disruption_budget,
            "PodDisruptionBudget",
            "poddisruptionbudgets",
        ),
        versioned("batch", &served.cron_job, "CronJob", "cronjobs"),
        child_kind::<ServiceAccount>(true, shared.clone()),
        child_kind::<RoleBinding>(true, shared),
    ]
}

/// The store's key of a child object: `namespace/Kind/name`.
pub fn child_key(namespace: &str, kind: &str, name: &str) -> String {
    format!("{namespace}/{kind}/{name}")
}

fn text(value: &Value) -> String {
    value.as_str().unwrap_or_default().to_string()
}

/// What workers need of a child object given as JSON (whole, or only `metadata`).
pub fn child_state(
    kind: &ChildKind,
    object: &Value,
    cluster_label: &str,
    deleted: bool,
) -> ChildState {
    let metadata = &object["metadata"];
    let cluster = match kind.selector {
        ChildSelector::ClusterLabel | ChildSelector::PodLabels => {
            text(&metadata["labels"][cluster_label])
        }
        ChildSelector::Name(_) => String::new(),
    };
    let drift = match (deleted, judge(object)) {
        (true, _) | (false, Drift::Unknown) => ChildDrift::Unknown,
        (false, Drift::InSync) => ChildDrift::InSync,
        (false, Drift::Drifted) => ChildDrift::Drifted,
    };
    ChildState {
        namespace: text(&metadata["namespace"]),
        cluster,
        kind: kind.kind.to_string(),
        name: text(&metadata["name"]),
        deleted,
        applied_hash: text(&metadata["annotations"][APPLIED_HASH]),
        drift: drift as i32,
        resource_version: match kind.kind {
            "Secret" => text(&metadata["resourceVersion"]),
            _ => String::new(),
        },
        storage: match kind.kind {
            "PersistentVolumeClaim" => text(&object["spec"]["resources"]["requests"]["storage"]),
            _ => String::new(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgop_common::applied::LAST_APPLIED;
    use serde_json::json;

    fn kinds() -> Vec<ChildKind> {
        child_kinds(
            &ServedVersions {
                pod_disruption_budget: "v1beta1".into(),
                cron_job: "v1beta1".into(),
            },
            &OperatorConfig::default(),
        )
    }

    fn kind(name: &str) -> ChildKind {
        kinds().into_iter().find(|k| k.kind == name).unwrap()
    }

    #[test]
    fn every_kind_pgop_writes_is_watched_under_the_served_version() {
        let kinds = kinds();
        let names: Vec<&str> = kinds.iter().map(|k| k.kind).collect();
        assert!(!names.contains(&"Unknown"));
        assert_eq!(names.len(), 10);
        let pdb = kind("PodDisruptionBudget");
        assert_eq!(pdb.resource.api_version, "policy/v1beta1");
        assert_eq!(pdb.resource.plural, "poddisruptionbudgets");
        assert_eq!(kind("CronJob").resource.api_version, "batch/v1beta1");
        assert!(
            kind("Secret").metadata_only,
            "Secrets' values never reach pgop"
        );
        assert_eq!(
            kind("RoleBinding").selector,
            ChildSelector::Name("postgres-pod".into())
        );
        assert_eq!(
            kind("PersistentVolumeClaim").selector,
            ChildSelector::PodLabels,
            "only the clusters' own claims"
        );
    }

    #[test]
    fn projections() {
        let applied = json!({"metadata": {"labels": {"cluster-name": "a", "team": "t"}},
            "spec": {"replicas": 1}});
        let statefulset = json!({
            "metadata": {"namespace": "ns", "name": "a", "resourceVersion": "9",
                "labels": {"cluster-name": "a", "team": "t"},
                "annotations": {APPLIED_HASH: "h1", LAST_APPLIED: applied.to_string()}},
            "spec": {"replicas": 1, "serviceName": "a"}, "status": {"replicas": 0}});
        let state = child_state(&kind("StatefulSet"), &statefulset, "cluster-name", false);
        assert_eq!(
            (
                state.namespace.as_str(),
                state.cluster.as_str(),
                state.name.as_str()
            ),
            ("ns", "a", "a")
        );
        assert_eq!(state.kind, "StatefulSet");
        assert_eq!(state.applied_hash, "h1");
        assert_eq!(state.drift, ChildDrift::InSync as i32);
        assert_eq!(
            state.resource_version, "",
            "changes with every status write"
        );

        let mut scaled = statefulset.clone();
        scaled["spec"]["replicas"] = json!(3);
        let drifted = child_state(&kind("StatefulSet"), &scaled, "cluster-name", false);
        assert_eq!(drifted.drift, ChildDrift::Drifted as i32);

        let gone = child_state(&kind("StatefulSet"), &statefulset, "cluster-name", true);
        assert!(gone.deleted);

        let secret = json!({"metadata": {"namespace": "ns", "name": "s", "resourceVersion": "4",
            "labels": {"cluster-name": "a"}}});
        let state = child_state(&kind("Secret"), &secret, "cluster-name", false);
        assert_eq!(state.resource_version, "4");
        assert_eq!(state.drift, ChildDrift::Unknown as i32);

        let claim = json!({"metadata": {"namespace": "ns", "name": "pgdata-a-0",
            "labels": {"cluster-name": "a"}},
            "spec": {"resources": {"requests": {"storage": "1Gi"}}}});
        let state = child_state(
            &kind("PersistentVolumeClaim"),
            &claim,
            "cluster-name",
            false,
        );
        assert_eq!(state.storage, "1Gi");

        let account = json!({"metadata": {"namespace": "ns", "name": "postgres-pod"}});
        let state = child_state(&kind("ServiceAccount"), &account, "cluster-name", false);
        assert_eq!(state.cluster, "", "shared by the namespace's clusters");
    }
}
