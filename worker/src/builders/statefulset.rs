//! The cluster's StatefulSet: one Spilo pod per instance, each with its own data volume,
//! as Zalando's `generateStatefulSet` builds it.
//!
//! Left out for now (Zalando has them): sidecars (manifest, `sidecars`,
//! `sidecar_docker_images`, Scalyr), `additionalVolumes`, `additional_secret_mount`,
//! `share_pgsocket_with_sidecars`, `topologySpreadConstraints`, propagation of
//! `downscaler_annotations`, and the `pod_environment_configmap/secret` variables.
use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    StatefulSet, StatefulSetPersistentVolumeClaimRetentionPolicy, StatefulSetSpec,
    StatefulSetUpdateStrategy,
};
use k8s_openapi::api::core::v1::{
    Affinity, Capabilities, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, HTTPGetAction,
    NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, PersistentVolumeClaim,
    PersistentVolumeClaimSpec, PodAffinityTerm, PodAntiAffinity, PodSecurityContext, PodSpec,
    PodTemplateSpec, Probe, ResourceRequirements, SecretVolumeSource, SecurityContext, Toleration,
    Volume, VolumeMount, VolumeResourceRequirements, WeightedPodAffinityTerm,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use pgop_common::config::OperatorConfig;
use pgop_common::crd::{Postgresql, ResourceDescription, Tls};

use super::labels::{inherited_annotations, object_labels, selector_labels};
use super::spilo_env::{append_missing, spilo_env, POSTGRES_PORT};
use super::{cluster_name, non_empty, object_meta, quantity, BuildError};

/// Name of the Spilo container.
pub const POSTGRES_CONTAINER: &str = "postgres";
/// Name of the data volume claim template; PVCs are `pgdata-<pod>`.
pub const DATA_VOLUME: &str = "pgdata";
/// Where the data volume is mounted (Spilo's PGROOT lives below it).
pub const DATA_MOUNT: &str = "/home/postgres/pgdata";
/// Patroni's REST API port, which the readiness probe asks.
pub const PATRONI_PORT: i32 = 8008;
/// Port of Spilo's own API, exposed as Zalando does.
const SPILO_API_PORT: i32 = 8080;
const SHM_VOLUME: &str = "dshm";
const SHM_MOUNT: &str = "/dev/shm";
const TLS_MOUNT: &str = "/tls";
/// Readable by the fsGroup, so that PostgreSQL (not root) can read the key.
const TLS_FILE_MODE: i32 = 0o640;
const KUBE_IAM_ANNOTATION: &str = "iam.amazonaws.com/role";

/// The number of pods: the manifest's `numberOfInstances` within `min_instances` and
/// `max_instances` (-1: no limit), unless the manifest carries
/// `ignore_instance_limits_annotation_key: "true"`. A one-pod standby cluster is never
/// scaled by the limits.
pub fn desired_instances(pg: &Postgresql, config: &OperatorConfig) -> i32 {
    let wanted = pg.spec.number_of_instances;
    if has_true_annotation(pg, &config.ignore_instance_limits_annotation_key) {
        return wanted.max(0);
    }
    let (min, max) = if pg.spec.standby.is_some() && wanted == 1 {
        (1, 1)
    } else {
        (config.min_instances, config.max_instances)
    };
    let mut instances = wanted;
    if max >= 0 && instances > max {
        instances = max;
    }
    if min >= 0 && instances < min {
        instances = min;
    }
    instances.max(0)
}

/// Whether the pods get a memory-backed `/dev/shm` (PostgreSQL's parallel queries need more
/// than the container runtime's default). The manifest's `enableShmVolume` wins over
/// `enable_shm_volume` either way, as Zalando documents it (Zalando's code ignores a
/// manifest `false`).
pub fn shm_volume_enabled(pg: &Postgresql, config: &OperatorConfig) -> bool {
    pg.spec
        .enable_shm_volume
        .unwrap_or(config.enable_shm_volume)
}

/// The Spilo container's resources: the manifest's, else the `default_*` settings (unset
/// when neither is given), then Zalando's adjustments: limits raised to `min_*_limit` and
/// to the requests, the memory request raised to its limit when
/// `set_memory_request_to_limit`, requests capped at `max_*_request`. The manifest can opt
/// out of the min/max thresholds with `ignore_resources_limits_annotation_key: "true"`.
pub fn postgres_resources(
    pg: &Postgresql,
    config: &OperatorConfig,
) -> Result<ResourceRequirements, BuildError> {
    let spec = pg.spec.resources.as_ref();
    let mut requests = resource_list(
        spec.and_then(|r| r.requests.as_ref()),
        "requests",
        [&config.default_cpu_request, &config.default_memory_request],
    )?;
    let mut limits = resource_list(
        spec.and_then(|r| r.limits.as_ref()),
        "limits",
        [&config.default_cpu_limit, &config.default_memory_limit],
    )?;
    let enforce_thresholds =
        !has_true_annotation(pg, &config.ignore_resources_limits_annotation_key);

    if enforce_thresholds {
        // Too low limits get pods OOM-killed or throttled into failovers.
        let minimums = [
            ("cpu", "min_cpu_limit", &config.min_cpu_limit),
            ("memory", "min_memory_limit", &config.min_memory_limit),
        ];
        for (resource, key, setting) in minimums {
            if let Some((text, min)) = threshold(key, setting)? {
                if amount(limits.get(resource)) < min {
                    limits.insert(resource.into(), Quantity(text));
                }
            }
        }
    }
    // A limit below the request would make the pod unschedulable.
    for resource in ["cpu", "memory"] {
        if let (Some(request), Some(limit)) = (requests.get(resource), limits.get(resource)) {
            if amount(Some(limit)) < amount(Some(request)) {
                limits.insert(resource.into(), request.clone());
            }
        }
    }
    if config.set_memory_request_to_limit {
        if let Some(limit) = limits.get("memory") {
            if amount(requests.get("memory")) < amount(Some(limit)) {
                requests.insert("memory".into(), limit.clone());
            }
        }
    }
    if enforce_thresholds {
        let maximums = [
            ("cpu", "max_cpu_request", &config.max_cpu_request),
            ("memory", "max_memory_request", &config.max_memory_request),
        ];
        for (resource, key, setting) in maximums {
            if let Some((text, max)) = threshold(key, setting)? {
                if requests
                    .get(resource)
                    .is_some_and(|r| amount(Some(r)) > max)
                {
                    requests.insert(resource.into(), Quantity(text));
                }
            }
        }
    }
    Ok(ResourceRequirements {
        requests: non_empty(requests),
        limits: non_empty(limits),
        ..ResourceRequirements::default()
    })
}

/// The manifest's quantities, falling back to the defaults for cpu and memory. As in
/// Zalando, `""`, `"0"` and `"null"` mean "not set".
fn resource_list(
    spec: Option<&ResourceDescription>,
    kind: &str,
    [default_cpu, default_memory]: [&Option<String>; 2],
) -> Result<BTreeMap<String, Quantity>, BuildError> {
    let given = |v: Option<&String>| {
        v.filter(|v| !matches!(v.as_str(), "" | "0" | "null"))
            .cloned()
    };
    let mut list = BTreeMap::new();
    let entries = [
        (
            "cpu",
            spec.and_then(|s| s.cpu.as_ref()),
            default_cpu.as_ref(),
        ),
        (
            "memory",
            spec.and_then(|s| s.memory.as_ref()),
            default_memory.as_ref(),
        ),
        (
            "hugepages-2Mi",
            spec.and_then(|s| s.hugepages_2mi.as_ref()),
            None,
        ),
        (
            "hugepages-1Gi",
            spec.and_then(|s| s.hugepages_1gi.as_ref()),
            None,
        ),
    ];
    for (resource, manifest, default) in entries {
        let value = match (given(manifest), given(default)) {
            (Some(value), _) => {
                quantity::parse(&value).map_err(|e| {
                    BuildError::Invalid(format!(
                        "spec.resources.{kind}.{resource} {value:?} is not a quantity: {e}"
                    ))
                })?;
                value
            }
            (None, Some(value)) => {
                quantity::parse(&value).map_err(|e| {
                    BuildError::Config(format!(
                        "default {resource} {kind} {value:?} is not a quantity: {e}"
                    ))
                })?;
                value
            }
            (None, None) => continue,
        };
        list.insert(resource.to_string(), Quantity(value));
    }
    Ok(list)
}

/// The setting `key` as (text, value), `None` when unset.
fn threshold(key: &str, setting: &Option<String>) -> Result<Option<(String, i128)>, BuildError> {
    let Some(text) = setting.as_ref().filter(|s| !s.is_empty()) else {
        return Ok(None);
    };
    let value = quantity::parse(text)
        .map_err(|e| BuildError::Config(format!("{key} {text:?} is not a quantity: {e}")))?;
    Ok(Some((text.clone(), value)))
}

/// A quantity already checked by `resource_list`; absent counts as zero, as in Go.
fn amount(q: Option<&Quantity>) -> i128 {
    q.and_then(|q| quantity::parse(&q.0).ok()).unwrap_or(0)
}

fn has_true_annotation(pg: &Postgresql, key: &Option<String>) -> bool {
    let Some(key) = key.as_ref().filter(|k| !k.is_empty()) else {
        return false;
    };
    pg.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(key))
        .is_some_and(|v| v == "true")
}

/// The StatefulSet of the cluster. Updates are `OnDelete`: the operator replaces pods
/// itself, replicas first and the primary last, which a rolling update cannot do.
pub fn desired_statefulset(
    pg: &Postgresql,
    config: &OperatorConfig,
) -> Result<StatefulSet, BuildError> {
    let pod_management_policy = match config.pod_management_policy.as_str() {
        "ordered_ready" => "OrderedReady",
        "parallel" => "Parallel",
        other => {
            return Err(BuildError::Config(format!(
                "pod_management_policy {other:?} is neither \"ordered_ready\" nor \"parallel\""
            )))
        }
    };
    let mut metadata = object_meta(pg, cluster_name(pg));
    metadata.labels = Some(object_labels(pg, config));
    metadata.annotations = non_empty(inherited_annotations(pg, config));
    Ok(StatefulSet {
        metadata,
        spec: Some(StatefulSetSpec {
            replicas: Some(desired_instances(pg, config)),
            selector: LabelSelector {
                match_labels: Some(selector_labels(pg, config)),
                match_expressions: None,
            },
            service_name: Some(cluster_name(pg).to_string()),
            template: pod_template(pg, config)?,
            volume_claim_templates: Some(vec![volume_claim_template(pg, config)?]),
            update_strategy: Some(StatefulSetUpdateStrategy {
                type_: Some("OnDelete".into()),
                rolling_update: None,
            }),
            pod_management_policy: Some(pod_management_policy.into()),
            persistent_volume_claim_retention_policy: claim_retention_policy(config),
            ..StatefulSetSpec::default()
        }),
        status: None,
    })
}

/// Fields of a StatefulSet Kubernetes refuses to change (selector, service name, pod
/// management policy, claim templates) taken from the live object, so the rest of the
/// desired state still applies. Changing them (e.g. a volume resize) is a separate step.
pub fn keep_immutable_fields(desired: &mut StatefulSet, live: &StatefulSet) {
    let (Some(desired), Some(live)) = (desired.spec.as_mut(), live.spec.as_ref()) else {
        return;
    };
    desired.selector = live.selector.clone();
    desired.service_name = live.service_name.clone();
    desired.pod_management_policy = live.pod_management_policy.clone();
    desired.volume_claim_templates = live.volume_claim_templates.clone();
}

/// Zalando always writes the policy; pgop writes it only when it differs from the
/// Kubernetes default (retain/retain), so that API servers older than 1.23, which drop
/// the field, do not see a difference on every comparison.
fn claim_retention_policy(
    config: &OperatorConfig,
) -> Option<StatefulSetPersistentVolumeClaimRetentionPolicy> {
    let policy = |key: &str| match config
        .persistent_volume_claim_retention_policy
        .get(key)
        .map(String::as_str)
    {
        Some("delete") => "Delete",
        _ => "Retain",
    };
    let (deleted, scaled) = (policy("when_deleted"), policy("when_scaled"));
    (deleted != "Retain" || scaled != "Retain").then(|| {
        StatefulSetPersistentVolumeClaimRetentionPolicy {
            when_deleted: Some(deleted.into()),
            when_scaled: Some(scaled.into()),
        }
    })
}

fn pod_template(pg: &Postgresql, config: &OperatorConfig) -> Result<PodTemplateSpec, BuildError> {
    let mut volumes = Vec::new();
    let mut extra_mounts = Vec::new();
    if shm_volume_enabled(pg, config) {
        volumes.push(Volume {
            name: SHM_VOLUME.into(),
            empty_dir: Some(EmptyDirVolumeSource {
                medium: Some("Memory".into()),
                size_limit: None,
            }),
            ..Volume::default()
        });
        extra_mounts.push(mount(SHM_VOLUME, SHM_MOUNT));
    }
    let mut env = spilo_env(pg, config);
    if let Some(tls) = pg.spec.tls.as_ref().filter(|t| !t.secret_name.is_empty()) {
        let (tls_env, tls_volumes) = tls_files(tls);
        append_missing(&mut env, tls_env);
        for (volume, path) in tls_volumes {
            extra_mounts.push(mount(&volume.name, path));
            volumes.push(volume);
        }
    }
    let container = postgres_container(pg, config, env, extra_mounts)?;

    let mut annotations = config.custom_pod_annotations.clone();
    annotations.extend(pg.spec.pod_annotations.clone());
    annotations.extend(inherited_annotations(pg, config));
    if let Some(role) = config.kube_iam_role.as_ref().filter(|r| !r.is_empty()) {
        annotations.insert(KUBE_IAM_ANNOTATION.into(), role.clone());
    }

    let non_empty_text = |v: &Option<String>| v.clone().filter(|v| !v.is_empty());
    Ok(PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(object_labels(pg, config)),
            namespace: pg.metadata.namespace.clone(),
            annotations: non_empty(annotations),
            ..ObjectMeta::default()
        }),
        spec: Some(PodSpec {
            service_account_name: Some(config.pod_service_account_name.clone()),
            termination_grace_period_seconds: Some(
                config.pod_terminate_grace_period.as_secs() as i64
            ),
            containers: vec![container],
            init_containers: (!pg.spec.init_containers.is_empty())
                .then(|| pg.spec.init_containers.clone()),
            tolerations: tolerations(pg, config),
            security_context: Some(PodSecurityContext {
                run_as_user: pg.spec.spilo_run_as_user.or(config.spilo_runasuser),
                run_as_group: pg.spec.spilo_run_as_group.or(config.spilo_runasgroup),
                fs_group: pg.spec.spilo_fs_group.or(config.spilo_fsgroup),
                ..PodSecurityContext::default()
            }),
            scheduler_name: non_empty_text(&pg.spec.scheduler_name),
            affinity: affinity(pg, config),
            priority_class_name: non_empty_text(&pg.spec.pod_priority_class_name)
                .or_else(|| non_empty_text(&config.pod_priority_class_name)),
            volumes: (!volumes.is_empty()).then_some(volumes),
            ..PodSpec::default()
        }),
    })
}

fn postgres_container(
    pg: &Postgresql,
    config: &OperatorConfig,
    env: Vec<EnvVar>,
    extra_mounts: Vec<VolumeMount>,
) -> Result<Container, BuildError> {
    let image = pg
        .spec
        .docker_image
        .clone()
        .filter(|i| !i.is_empty())
        .unwrap_or_else(|| config.docker_image.clone());
    let port = |number: i32| ContainerPort {
        container_port: number,
        protocol: Some("TCP".into()),
        ..ContainerPort::default()
    };
    let volume = &pg.spec.volume;
    let sub_path = volume.sub_path.clone().filter(|p| !p.is_empty());
    let mut data_mount = mount(DATA_VOLUME, DATA_MOUNT);
    if volume.is_sub_path_expr == Some(true) {
        data_mount.sub_path_expr = sub_path;
    } else {
        data_mount.sub_path = sub_path;
    }
    let capabilities: Vec<String> = config
        .additional_pod_capabilities
        .iter()
        .map(|c| c.to_uppercase())
        .collect();
    Ok(Container {
        name: POSTGRES_CONTAINER.into(),
        image: Some(image),
        image_pull_policy: Some("IfNotPresent".into()),
        resources: Some(postgres_resources(pg, config)?),
        ports: Some(vec![
            port(PATRONI_PORT),
            port(POSTGRES_PORT),
            port(SPILO_API_PORT),
        ]),
        volume_mounts: Some(std::iter::once(data_mount).chain(extra_mounts).collect()),
        env: Some(env),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(config.spilo_allow_privilege_escalation),
            privileged: Some(config.spilo_privileged),
            read_only_root_filesystem: Some(false),
            capabilities: (!capabilities.is_empty()).then_some(Capabilities {
                add: Some(capabilities),
                drop: None,
            }),
            ..SecurityContext::default()
        }),
        // Patroni answers 200 only when it holds the leader lock or PostgreSQL runs and
        // the DCS is reachable.
        readiness_probe: config.enable_readiness_probe.then(readiness_probe),
        ..Container::default()
    })
}

fn readiness_probe() -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some("/readiness".into()),
            port: IntOrString::Int(PATRONI_PORT),
            scheme: Some("HTTP".into()),
            ..HTTPGetAction::default()
        }),
        initial_delay_seconds: Some(6),
        period_seconds: Some(10),
        timeout_seconds: Some(5),
        success_threshold: Some(1),
        failure_threshold: Some(3),
        ..Probe::default()
    }
}

fn mount(name: &str, path: &str) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        ..VolumeMount::default()
    }
}

/// Spilo's TLS variables and the Secret volumes holding the files (with their mount
/// paths): the certificate Secret at `/tls`, a separate CA Secret at `/tlsca`.
fn tls_files(tls: &Tls) -> (Vec<EnvVar>, Vec<(Volume, &'static str)>) {
    let secret_volume = |secret: &str| Volume {
        name: secret.into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret.into()),
            default_mode: Some(TLS_FILE_MODE),
            ..SecretVolumeSource::default()
        }),
        ..Volume::default()
    };
    let var = |name: &str, value: String| EnvVar {
        name: name.into(),
        value: Some(value),
        value_from: None,
    };
    let text = |v: &Option<String>| v.clone().unwrap_or_default();
    let mut volumes = vec![(secret_volume(&tls.secret_name), TLS_MOUNT)];
    let mut env = vec![
        var(
            "SSL_CERTIFICATE_FILE",
            file_path(&text(&tls.certificate_file), TLS_MOUNT, "tls.crt"),
        ),
        var(
            "SSL_PRIVATE_KEY_FILE",
            file_path(&text(&tls.private_key_file), TLS_MOUNT, "tls.key"),
        ),
    ];
    let ca_file = text(&tls.ca_file);
    if !ca_file.is_empty() {
        let ca_secret = text(&tls.ca_secret_name);
        let ca_mount = if ca_secret.is_empty() {
            TLS_MOUNT
        } else {
            volumes.push((secret_volume(&ca_secret), "/tlsca"));
            "/tlsca"
        };
        env.push(var("SSL_CA_FILE", file_path(&ca_file, ca_mount, "")));
    }
    (env, volumes)
}

/// `file` below `dir` unless it is absolute; `dir/default` when empty.
fn file_path(file: &str, dir: &str, default: &str) -> String {
    match file {
        "" => format!("{dir}/{default}"),
        absolute if absolute.starts_with('/') => absolute.to_string(),
        relative => format!("{dir}/{relative}"),
    }
}

/// The manifest's tolerations, else the one of the `toleration` setting.
fn tolerations(pg: &Postgresql, config: &OperatorConfig) -> Option<Vec<Toleration>> {
    if !pg.spec.tolerations.is_empty() {
        return Some(pg.spec.tolerations.clone());
    }
    let field = |key: &str| {
        config
            .toleration
            .get(key)
            .cloned()
            .filter(|v| !v.is_empty())
    };
    let toleration = Toleration {
        key: field("key"),
        operator: field("operator"),
        value: field("value"),
        effect: field("effect"),
        toleration_seconds: None,
    };
    (toleration != Toleration::default()).then(|| vec![toleration])
}

/// Node affinity from the manifest and `node_readiness_label`, plus anti-affinity between
/// the cluster's pods when `enable_pod_antiaffinity`.
fn affinity(pg: &Postgresql, config: &OperatorConfig) -> Option<Affinity> {
    let node_affinity = node_affinity(pg, config);
    if !config.enable_pod_antiaffinity {
        return node_affinity.map(|node_affinity| Affinity {
            node_affinity: Some(node_affinity),
            ..Affinity::default()
        });
    }
    let term = PodAffinityTerm {
        label_selector: Some(LabelSelector {
            match_labels: Some(object_labels(pg, config)),
            match_expressions: None,
        }),
        topology_key: config.pod_antiaffinity_topology_key.clone(),
        ..PodAffinityTerm::default()
    };
    let anti_affinity = if config.pod_antiaffinity_preferred_during_scheduling {
        PodAntiAffinity {
            preferred_during_scheduling_ignored_during_execution: Some(vec![
                WeightedPodAffinityTerm {
                    weight: 1,
                    pod_affinity_term: term,
                },
            ]),
            ..PodAntiAffinity::default()
        }
    } else {
        PodAntiAffinity {
            required_during_scheduling_ignored_during_execution: Some(vec![term]),
            ..PodAntiAffinity::default()
        }
    };
    Some(Affinity {
        node_affinity,
        pod_anti_affinity: Some(anti_affinity),
        ..Affinity::default()
    })
}

/// The manifest's node affinity with the readiness labels required too: as an extra
/// alternative term (`node_readiness_label_merge: OR`) or added to every term (`AND`).
fn node_affinity(pg: &Postgresql, config: &OperatorConfig) -> Option<NodeAffinity> {
    let readiness = &config.node_readiness_label;
    if readiness.is_empty() && pg.spec.node_affinity.is_none() {
        return None;
    }
    let mut affinity = pg.spec.node_affinity.clone().unwrap_or_default();
    if readiness.is_empty() {
        return Some(affinity);
    }
    let expressions: Vec<NodeSelectorRequirement> = readiness
        .iter()
        .map(|(key, value)| NodeSelectorRequirement {
            key: key.clone(),
            operator: "In".into(),
            values: Some(vec![value.clone()]),
        })
        .collect();
    let readiness_term = NodeSelectorTerm {
        match_expressions: Some(expressions.clone()),
        match_fields: None,
    };
    match affinity
        .required_during_scheduling_ignored_during_execution
        .as_mut()
    {
        None => {
            affinity.required_during_scheduling_ignored_during_execution = Some(NodeSelector {
                node_selector_terms: vec![readiness_term],
            })
        }
        Some(selector) if config.node_readiness_label_merge == "AND" => {
            for term in &mut selector.node_selector_terms {
                term.match_expressions
                    .get_or_insert_with(Vec::new)
                    .extend(expressions.iter().cloned());
            }
        }
        Some(selector) => selector.node_selector_terms.push(readiness_term),
    }
    Some(affinity)
}

/// The `pgdata` claim template: `spec.volume.size` of the manifest's storage class.
fn volume_claim_template(
    pg: &Postgresql,
    config: &OperatorConfig,
) -> Result<PersistentVolumeClaim, BuildError> {
    let volume = &pg.spec.volume;
    quantity::parse(&volume.size).map_err(|e| {
        BuildError::Invalid(format!(
            "spec.volume.size {:?} is not a quantity: {e}",
            volume.size
        ))
    })?;
    Ok(PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some(DATA_VOLUME.into()),
            labels: Some(object_labels(pg, config)),
            annotations: non_empty(inherited_annotations(pg, config)),
            ..ObjectMeta::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".to_string(),
                    Quantity(volume.size.clone()),
                )])),
                limits: None,
            }),
            storage_class_name: volume.storage_class.clone().filter(|c| !c.is_empty()),
            volume_mode: Some("Filesystem".into()),
            selector: volume.selector.clone(),
            ..PersistentVolumeClaimSpec::default()
        }),
        status: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builders::labels::tests::{manifest, minimal};

    fn container(sts: &StatefulSet) -> &Container {
        &sts.spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .as_ref()
            .unwrap()
            .containers[0]
    }

    fn pod_spec(sts: &StatefulSet) -> &PodSpec {
        sts.spec.as_ref().unwrap().template.spec.as_ref().unwrap()
    }

    #[test]
    fn minimal_statefulset_is_zalandos() {
        let pg = minimal();
        let config = OperatorConfig::default();
        let sts = desired_statefulset(&pg, &config).unwrap();
        assert_eq!(sts.metadata.name.as_deref(), Some("acid-minimal-cluster"));
        assert_eq!(sts.metadata.namespace.as_deref(), Some("default"));
        let spec = sts.spec.as_ref().unwrap();
        assert_eq!(spec.replicas, Some(2));
        assert_eq!(spec.service_name.as_deref(), Some("acid-minimal-cluster"));
        assert_eq!(spec.pod_management_policy.as_deref(), Some("OrderedReady"));
        assert_eq!(
            spec.update_strategy.as_ref().unwrap().type_.as_deref(),
            Some("OnDelete")
        );
        assert!(spec.persistent_volume_claim_retention_policy.is_none());
        assert_eq!(
            spec.selector.match_labels,
            Some(selector_labels(&pg, &config))
        );
        let template_labels = spec.template.metadata.as_ref().unwrap().labels.clone();
        assert_eq!(template_labels, Some(object_labels(&pg, &config)));
        assert_eq!(sts.metadata.labels, Some(object_labels(&pg, &config)));

        let pod = pod_spec(&sts);
        assert_eq!(pod.service_account_name.as_deref(), Some("postgres-pod"));
        assert_eq!(pod.termination_grace_period_seconds, Some(300));
        assert_eq!(pod.security_context, Some(PodSecurityContext::default()));
        assert!(pod.tolerations.is_none() && pod.affinity.is_none());
        let volumes = pod.volumes.as_ref().unwrap();
        assert_eq!(volumes.len(), 1);
        assert_eq!(volumes[0].name, "dshm");
        assert_eq!(
            volumes[0].empty_dir.as_ref().unwrap().medium.as_deref(),
            Some("Memory")
        );

        let c = container(&sts);
        assert_eq!(c.name, "postgres");
        assert_eq!(c.image.as_deref(), Some("ghcr.io/zalando/spilo-18:4.1-p2"));
        assert_eq!(c.image_pull_policy.as_deref(), Some("IfNotPresent"));
        let ports: Vec<(i32, &str)> = c
            .ports
            .iter()
            .flatten()
            .map(|p| (p.container_port, p.protocol.as_deref().unwrap()))
            .collect();
        assert_eq!(ports, [(8008, "TCP"), (5432, "TCP"), (8080, "TCP")]);
        let mounts: Vec<(&str, &str)> = c
            .volume_mounts
            .iter()
            .flatten()
            .map(|m| (m.name.as_str(), m.mount_path.as_str()))
            .collect();
        assert_eq!(
            mounts,
            [("pgdata", "/home/postgres/pgdata"), ("dshm", "/dev/shm")]
        );
        assert_eq!(c.resources, Some(ResourceRequirements::default()));
        assert!(c.readiness_probe.is_none());
        assert_eq!(c.env.as_ref().unwrap()[0].name, "SCOPE");
        assert_eq!(
            c.security_context,
            Some(SecurityContext {
                allow_privilege_escalation: Some(true),
                privileged: Some(false),
                read_only_root_filesystem: Some(false),
                ..SecurityContext::default()
            })
        );

        let claims = spec.volume_claim_templates.as_ref().unwrap();
        assert_eq!(claims.len(), 1);
        let claim = &claims[0];
        assert_eq!(claim.metadata.name.as_deref(), Some("pgdata"));
        assert_eq!(claim.metadata.labels, Some(object_labels(&pg, &config)));
        let claim_spec = claim.spec.as_ref().unwrap();
        assert_eq!(
            claim_spec.access_modes,
            Some(vec!["ReadWriteOnce".to_string()])
        );
        assert_eq!(
            claim_spec
                .resources
                .as_ref()
                .unwrap()
                .requests
                .as_ref()
                .unwrap()["storage"],
            Quantity("1Gi".into())
        );
        assert_eq!(claim_spec.storage_class_name, None);
        assert_eq!(claim_spec.volume_mode.as_deref(), Some("Filesystem"));
    }

    #[test]
    fn instance_limits() {
        let annotated = |pg: &mut Postgresql| {
            pg.metadata.annotations =
                Some(BTreeMap::from([("ignore-limits".into(), "true".into())]));
        };
        // (numberOfInstances, min, max, standby, ignore annotation, want)
        let cases = [
            (2, -1, -1, false, false, 2),
            (0, -1, -1, false, false, 0),
            (5, -1, 3, false, false, 3),
            (1, 2, -1, false, false, 2),
            (0, 2, 4, false, false, 2),
            (3, 2, 4, false, false, 3),
            (9, 2, 4, false, false, 4),
            (1, 2, 4, true, false, 1),
            (3, 2, 2, true, false, 2),
            (9, 2, 4, false, true, 9),
            (-3, -1, -1, false, false, 0),
        ];
        for (wanted, min, max, standby, ignore, want) in cases {
            let mut pg = minimal();
            pg.spec.number_of_instances = wanted;
            if standby {
                pg.spec.standby = Some(Default::default());
            }
            if ignore {
                annotated(&mut pg);
            }
            let config = OperatorConfig {
                min_instances: min,
                max_instances: max,
                ignore_instance_limits_annotation_key: Some("ignore-limits".into()),
                ..OperatorConfig::default()
            };
            assert_eq!(
                desired_instances(&pg, &config),
                want,
                "{wanted} in [{min}, {max}], standby {standby}, ignore {ignore}"
            );
        }
    }

    fn with_resources(yaml: &str) -> Postgresql {
        manifest(
            "acid-res",
            &format!("  teamId: acid\n  numberOfInstances: 1\n  volume: {{size: 1Gi}}\n  postgresql: {{version: \"15\"}}\n{yaml}"),
        )
    }

    fn list(pairs: &[(&str, &str)]) -> Option<BTreeMap<String, Quantity>> {
        non_empty(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), Quantity(v.to_string())))
                .collect(),
        )
    }

    #[test]
    fn resource_defaults_and_thresholds() {
        let defaults = OperatorConfig {
            default_cpu_request: Some("100m".into()),
            default_memory_request: Some("100Mi".into()),
            default_cpu_limit: Some("1".into()),
            default_memory_limit: Some("500Mi".into()),
            ..OperatorConfig::default()
        };
        let manifest_resources = "  resources:\n    requests: {cpu: 10m, memory: 100Mi, hugepages-2Mi: 128Mi}\n    limits: {cpu: 500m, memory: \"0\"}\n";
        type Case<'a> = (
            &'a str,
            OperatorConfig,
            &'a str,
            &'a [(&'a str, &'a str)],
            &'a [(&'a str, &'a str)],
        );
        let cases: Vec<Case> = vec![
            ("nothing set", OperatorConfig::default(), "", &[], &[]),
            (
                "defaults only",
                defaults.clone(),
                "",
                &[("cpu", "100m"), ("memory", "100Mi")],
                &[("cpu", "1"), ("memory", "500Mi")],
            ),
            (
                "manifest wins, \"0\" falls back to the default",
                defaults.clone(),
                manifest_resources,
                &[("cpu", "10m"), ("hugepages-2Mi", "128Mi"), ("memory", "100Mi")],
                &[("cpu", "500m"), ("memory", "500Mi")],
            ),
            (
                "limits raised to minimums and requests",
                OperatorConfig {
                    min_cpu_limit: Some("250m".into()),
                    min_memory_limit: Some("250Mi".into()),
                    ..OperatorConfig::default()
                },
                "  resources:\n    requests: {cpu: 300m, memory: 100Mi}\n    limits: {cpu: 100m, memory: 1Gi}\n",
                &[("cpu", "300m"), ("memory", "100Mi")],
                &[("cpu", "300m"), ("memory", "1Gi")],
            ),
            (
                "memory request set to limit, requests capped",
                OperatorConfig {
                    set_memory_request_to_limit: true,
                    max_cpu_request: Some("1".into()),
                    max_memory_request: Some("512Mi".into()),
                    ..OperatorConfig::default()
                },
                "  resources:\n    requests: {cpu: \"2\", memory: 100Mi}\n    limits: {cpu: \"4\", memory: 1Gi}\n",
                &[("cpu", "1"), ("memory", "512Mi")],
                &[("cpu", "4"), ("memory", "1Gi")],
            ),
        ];
        for (what, config, yaml, requests, limits) in cases {
            let resources = postgres_resources(&with_resources(yaml), &config).unwrap();
            assert_eq!(resources.requests, list(requests), "{what}: requests");
            assert_eq!(resources.limits, list(limits), "{what}: limits");
        }
    }

    #[test]
    fn thresholds_can_be_ignored_per_cluster() {
        let config = OperatorConfig {
            min_cpu_limit: Some("2".into()),
            ignore_resources_limits_annotation_key: Some("no-limits".into()),
            ..OperatorConfig::default()
        };
        let mut pg = with_resources("  resources:\n    limits: {cpu: 100m}\n");
        assert_eq!(
            postgres_resources(&pg, &config).unwrap().limits,
            list(&[("cpu", "2")])
        );
        pg.metadata.annotations = Some(BTreeMap::from([("no-limits".into(), "true".into())]));
        assert_eq!(
            postgres_resources(&pg, &config).unwrap().limits,
            list(&[("cpu", "100m")])
        );
    }

    #[test]
    fn bad_quantities_and_settings_are_errors() {
        let pg = with_resources("  resources:\n    requests: {cpu: lots}\n");
        assert!(matches!(
            desired_statefulset(&pg, &OperatorConfig::default()),
            Err(BuildError::Invalid(m)) if m.contains("spec.resources.requests.cpu")
        ));
        let config = OperatorConfig {
            default_memory_limit: Some("1 GB".into()),
            ..OperatorConfig::default()
        };
        assert!(matches!(
            postgres_resources(&minimal(), &config),
            Err(BuildError::Config(m)) if m.contains("memory limits")
        ));
        let config = OperatorConfig {
            pod_management_policy: "random".into(),
            ..OperatorConfig::default()
        };
        assert!(matches!(
            desired_statefulset(&minimal(), &config),
            Err(BuildError::Config(m)) if m.contains("pod_management_policy")
        ));
        let mut pg = minimal();
        pg.spec.volume.size = "big".into();
        assert!(matches!(
            desired_statefulset(&pg, &OperatorConfig::default()),
            Err(BuildError::Invalid(m)) if m.contains("spec.volume.size")
        ));
    }

    #[test]
    fn pod_settings_from_config_and_manifest() {
        let pg = manifest(
            "acid-pod",
            r#"  teamId: acid
  numberOfInstances: 1
  dockerImage: ghcr.io/zalando/spilo-15:3.0-p1
  volume: {size: 5Gi, storageClass: fast, subPath: $(POD_NAME), isSubPathExpr: true, selector: {matchLabels: {disk: ssd}}}
  postgresql: {version: "15"}
  enableShmVolume: false
  spiloRunAsUser: 101
  spiloFSGroup: 103
  podAnnotations: {owner: me}
  podPriorityClassName: spilo-pod-priority
  schedulerName: my-scheduler
  initContainers:
  - {name: date, image: busybox, command: [/bin/date]}
  tls: {secretName: pg-tls, caFile: ca.crt, caSecretName: pg-ca}
"#,
        );
        let config = OperatorConfig {
            pod_management_policy: "parallel".into(),
            pod_service_account_name: "pg-pods".into(),
            enable_readiness_probe: true,
            custom_pod_annotations: BTreeMap::from([
                ("owner".into(), "config".into()),
                ("team".into(), "db".into()),
            ]),
            kube_iam_role: Some("pg-role".into()),
            spilo_runasgroup: Some(102),
            spilo_fsgroup: Some(999),
            spilo_privileged: true,
            additional_pod_capabilities: vec!["sys_nice".into()],
            persistent_volume_claim_retention_policy: BTreeMap::from([
                ("when_deleted".into(), "delete".into()),
                ("when_scaled".into(), "retain".into()),
            ]),
            ..OperatorConfig::default()
        };
        let sts = desired_statefulset(&pg, &config).unwrap();
        let spec = sts.spec.as_ref().unwrap();
        assert_eq!(spec.pod_management_policy.as_deref(), Some("Parallel"));
        assert_eq!(
            spec.persistent_volume_claim_retention_policy,
            Some(StatefulSetPersistentVolumeClaimRetentionPolicy {
                when_deleted: Some("Delete".into()),
                when_scaled: Some("Retain".into()),
            })
        );
        let annotations = spec.template.metadata.as_ref().unwrap().annotations.clone();
        assert_eq!(
            annotations,
            Some(BTreeMap::from([
                ("iam.amazonaws.com/role".into(), "pg-role".into()),
                ("owner".into(), "me".into()),
                ("team".into(), "db".into()),
            ]))
        );

        let pod = pod_spec(&sts);
        assert_eq!(pod.service_account_name.as_deref(), Some("pg-pods"));
        assert_eq!(
            pod.priority_class_name.as_deref(),
            Some("spilo-pod-priority")
        );
        assert_eq!(pod.scheduler_name.as_deref(), Some("my-scheduler"));
        assert_eq!(pod.init_containers.as_ref().unwrap()[0].name, "date");
        let security = pod.security_context.as_ref().unwrap();
        assert_eq!(
            (
                security.run_as_user,
                security.run_as_group,
                security.fs_group
            ),
            (Some(101), Some(102), Some(103))
        );
        let volumes: Vec<(&str, Option<&str>, Option<i32>)> = pod
            .volumes
            .iter()
            .flatten()
            .map(|v| {
                let secret = v.secret.as_ref().unwrap();
                (
                    v.name.as_str(),
                    secret.secret_name.as_deref(),
                    secret.default_mode,
                )
            })
            .collect();
        assert_eq!(
            volumes,
            [
                ("pg-tls", Some("pg-tls"), Some(0o640)),
                ("pg-ca", Some("pg-ca"), Some(0o640))
            ],
            "no dshm: the manifest disables it"
        );

        let c = container(&sts);
        assert_eq!(c.image.as_deref(), Some("ghcr.io/zalando/spilo-15:3.0-p1"));
        let mounts: Vec<(&str, &str, Option<&str>)> = c
            .volume_mounts
            .iter()
            .flatten()
            .map(|m| {
                (
                    m.name.as_str(),
                    m.mount_path.as_str(),
                    m.sub_path_expr.as_deref(),
                )
            })
            .collect();
        assert_eq!(
            mounts,
            [
                ("pgdata", "/home/postgres/pgdata", Some("$(POD_NAME)")),
                ("pg-tls", "/tls", None),
                ("pg-ca", "/tlsca", None)
            ]
        );
        let env = c.env.as_ref().unwrap();
        let tls: Vec<(&str, &str)> = env
            .iter()
            .filter(|e| e.name.starts_with("SSL_"))
            .map(|e| (e.name.as_str(), e.value.as_deref().unwrap()))
            .collect();
        assert_eq!(
            tls,
            [
                ("SSL_CERTIFICATE_FILE", "/tls/tls.crt"),
                ("SSL_PRIVATE_KEY_FILE", "/tls/tls.key"),
                ("SSL_CA_FILE", "/tlsca/ca.crt")
            ]
        );
        let probe = c.readiness_probe.as_ref().unwrap();
        let http = probe.http_get.as_ref().unwrap();
        assert_eq!(
            (http.path.as_deref(), &http.port, http.scheme.as_deref()),
            (Some("/readiness"), &IntOrString::Int(8008), Some("HTTP"))
        );
        assert_eq!(
            (
                probe.initial_delay_seconds,
                probe.period_seconds,
                probe.timeout_seconds
            ),
            (Some(6), Some(10), Some(5))
        );
        let security = c.security_context.as_ref().unwrap();
        assert_eq!(security.privileged, Some(true));
        assert_eq!(
            security.capabilities.as_ref().unwrap().add,
            Some(vec!["SYS_NICE".to_string()])
        );

        let claim = spec.volume_claim_templates.as_ref().unwrap()[0]
            .spec
            .clone()
            .unwrap();
        assert_eq!(claim.storage_class_name.as_deref(), Some("fast"));
        assert_eq!(
            claim.resources.unwrap().requests.unwrap()["storage"],
            Quantity("5Gi".into())
        );
        assert_eq!(
            claim.selector.unwrap().match_labels,
            Some(BTreeMap::from([("disk".into(), "ssd".into())]))
        );
    }

    #[test]
    fn shm_volume_switches() {
        // (config, manifest, want)
        let cases = [
            (true, None, true),
            (false, None, false),
            (false, Some(true), true),
            (true, Some(false), false),
        ];
        for (configured, manifest_value, want) in cases {
            let mut pg = minimal();
            pg.spec.enable_shm_volume = manifest_value;
            let config = OperatorConfig {
                enable_shm_volume: configured,
                ..OperatorConfig::default()
            };
            assert_eq!(shm_volume_enabled(&pg, &config), want);
            let sts = desired_statefulset(&pg, &config).unwrap();
            let has_mount = container(&sts)
                .volume_mounts
                .iter()
                .flatten()
                .any(|m| m.name == "dshm" && m.mount_path == "/dev/shm");
            assert_eq!(has_mount, want, "{configured} {manifest_value:?}");
        }
    }

    #[test]
    fn scheduling_constraints() {
        let pg = manifest(
            "acid-sched",
            r#"  teamId: acid
  numberOfInstances: 2
  volume: {size: 1Gi}
  postgresql: {version: "15"}
  nodeAffinity:
    requiredDuringSchedulingIgnoredDuringExecution:
      nodeSelectorTerms:
      - matchExpressions: [{key: postgres-operator, operator: In, values: [enabled]}]
"#,
        );
        let config = |merge: &str, anti: bool| OperatorConfig {
            node_readiness_label: BTreeMap::from([("status".into(), "ready".into())]),
            node_readiness_label_merge: merge.into(),
            enable_pod_antiaffinity: anti,
            toleration: BTreeMap::from([
                ("key".into(), "db-only".into()),
                ("operator".into(), "Exists".into()),
                ("effect".into(), "NoSchedule".into()),
            ]),
            ..OperatorConfig::default()
        };
        let keys = |affinity: &Affinity| -> Vec<Vec<String>> {
            affinity
                .node_affinity
                .as_ref()
                .unwrap()
                .required_during_scheduling_ignored_during_execution
                .as_ref()
                .unwrap()
                .node_selector_terms
                .iter()
                .map(|t| {
                    t.match_expressions
                        .iter()
                        .flatten()
                        .map(|e| e.key.clone())
                        .collect()
                })
                .collect()
        };
        let or = affinity(&pg, &config("OR", false)).unwrap();
        assert_eq!(keys(&or), [vec!["postgres-operator"], vec!["status"]]);
        assert!(or.pod_anti_affinity.is_none());
        let and = affinity(&pg, &config("AND", true)).unwrap();
        assert_eq!(keys(&and), [vec!["postgres-operator", "status"]]);
        let anti = and.pod_anti_affinity.unwrap();
        let term = &anti
            .required_during_scheduling_ignored_during_execution
            .unwrap()[0];
        assert_eq!(term.topology_key, "kubernetes.io/hostname");
        assert_eq!(
            term.label_selector.as_ref().unwrap().match_labels,
            Some(object_labels(&pg, &OperatorConfig::default()))
        );

        assert_eq!(
            tolerations(&pg, &config("OR", false)),
            Some(vec![Toleration {
                key: Some("db-only".into()),
                operator: Some("Exists".into()),
                effect: Some("NoSchedule".into()),
                ..Toleration::default()
            }])
        );
        assert_eq!(tolerations(&pg, &OperatorConfig::default()), None);
    }

    #[test]
    fn immutable_fields_come_from_the_live_object() {
        let config = OperatorConfig::default();
        let mut pg = minimal_for_immutability();
        let live = desired_statefulset(&pg, &config).expect("builds");
        pg.spec.volume.size = "5Gi".into();
        pg.spec.number_of_instances = 3;
        let mut desired = desired_statefulset(&pg, &config).expect("builds");
        keep_immutable_fields(&mut desired, &live);
        let (d, l) = (desired.spec.unwrap(), live.spec.unwrap());
        assert_eq!(
            d.volume_claim_templates, l.volume_claim_templates,
            "claims kept"
        );
        assert_eq!(d.selector, l.selector);
        assert_eq!(d.replicas, Some(3), "everything else follows the manifest");
    }

    fn minimal_for_immutability() -> Postgresql {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "acid.zalan.do/v1", "kind": "postgresql",
            "metadata": {"name": "acid-a", "namespace": "ns"},
            "spec": {"teamId": "acid", "numberOfInstances": 2, "volume": {"size": "1Gi"},
                     "postgresql": {"version": "15"}}
        }))
        .expect("manifest")
    }
}
