//! The cluster's StatefulSet: one Spilo pod per instance, each with its own data volume,
//! as Zalando's `generateStatefulSet` builds it: the Spilo container, init containers,
//! sidecars (the manifest's, the configuration's `sidecars`, the deprecated
//! `sidecar_docker_images` and Scalyr's), the shared PostgreSQL socket, the
//! `additional_secret_mount`, `additionalVolumes`, TLS volumes, topology spread constraints
//! and the variables of the pod environment ConfigMap and Secret ([`PodEnvironment`]).
//!
//! Deliberate differences: problems Zalando only logs (sidecars or init containers while
//! disabled, additional volumes it silently drops or mounts twice) make the manifest
//! invalid ([`pod_problems`]); manifest sidecars keep every container field (Zalando keeps
//! name, image, ports, env, command and resources).
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
    TopologySpreadConstraint, Volume, VolumeMount, VolumeResourceRequirements,
    WeightedPodAffinityTerm,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use pgop_common::config::OperatorConfig;
use pgop_common::crd::{AdditionalVolume, Postgresql, ResourceDescription, Tls};

use super::labels::{
    inherited_annotations, object_labels, owner_references, propagated_annotations, selector_labels,
};
use super::restart::TemplateHashes;
use super::spilo_env::{
    append_missing, pod_environment_sources, sidecar_env, spilo_env_with, PodEnvironment,
    POSTGRES_PORT,
};
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
/// The volume holding PostgreSQL's socket when it is shared with the sidecars.
const RUN_VOLUME: &str = "postgresql-run";
const RUN_MOUNT: &str = "/var/run/postgresql";
const TLS_MOUNT: &str = "/tls";
const TLS_CA_MOUNT: &str = "/tlsca";
/// `targetContainers` item mounting an additional volume in every container.
const ALL_CONTAINERS: &str = "all";
const SCALYR_SIDECAR: &str = "scalyr-sidecar";
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
    super::fit_limits_and_requests(
        &mut requests,
        &mut limits,
        config.set_memory_request_to_limit,
    );
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

/// The StatefulSet of the cluster without a pod environment ConfigMap or Secret; see
/// [`desired_statefulset_with`].
pub fn desired_statefulset(
    pg: &Postgresql,
    config: &OperatorConfig,
) -> Result<StatefulSet, BuildError> {
    desired_statefulset_with(pg, config, &PodEnvironment::default())
}

/// The StatefulSet of the cluster, with the variables of the pod environment ConfigMap and
/// Secret the caller read (see [`pod_environment_sources`]). Updates are `OnDelete`: the
/// operator replaces pods itself, replicas first and the primary last, which a rolling
/// update cannot do.
pub fn desired_statefulset_with(
    pg: &Postgresql,
    config: &OperatorConfig,
    pod_env: &PodEnvironment,
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
    let problems = pod_problems(pg, config);
    if !problems.is_empty() {
        return Err(BuildError::Invalid(problems.join("; ")));
    }
    if !pod_env.secret_keys.is_empty()
        && pod_env.secret_name.is_none()
        && pod_environment_sources(config).1.is_none()
    {
        return Err(BuildError::Config(
            "pod environment Secret keys were given, but neither their Secret's name nor pod_environment_secret".into(),
        ));
    }
    let mut metadata = object_meta(pg, cluster_name(pg));
    metadata.labels = Some(object_labels(pg, config));
    metadata.annotations = non_empty(propagated_annotations(pg, config)?);
    metadata.owner_references = owner_references(pg, config);
    let mut template = pod_template(pg, config, pod_env)?;
    let hashes = TemplateHashes::of(&template, config.enable_lazy_spilo_upgrade);
    template
        .metadata
        .get_or_insert_with(ObjectMeta::default)
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .extend(hashes.annotations());
    Ok(StatefulSet {
        metadata,
        spec: Some(StatefulSetSpec {
            replicas: Some(desired_instances(pg, config)),
            selector: LabelSelector {
                match_labels: Some(selector_labels(pg, config)),
                match_expressions: None,
            },
            service_name: Some(cluster_name(pg).to_string()),
            template,
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

/// What in the manifest the pods cannot be built from, given the configuration: sidecars
/// or init containers while the configuration disables them, a sidecar named like the
/// Spilo container, resources that are not quantities, and additional volumes that clash
/// or cannot be read. Zalando only logs most of these and builds a pod that is refused or
/// lacks a volume.
pub fn pod_problems(pg: &Postgresql, config: &OperatorConfig) -> Vec<String> {
    let mut problems = Vec::new();
    if !config.enable_sidecars && !pg.spec.sidecars.is_empty() {
        problems.push(
            "sidecar containers are disabled by the operator configuration (enable_sidecars)"
                .to_string(),
        );
    }
    if !config.enable_init_containers && !pg.spec.init_containers.is_empty() {
        problems.push(
            "init containers are disabled by the operator configuration (enable_init_containers)"
                .to_string(),
        );
    }
    for (i, sidecar) in pg.spec.sidecars.iter().enumerate() {
        if sidecar.name == POSTGRES_CONTAINER {
            problems.push(format!(
                "sidecars[{i}] is named {POSTGRES_CONTAINER:?}, the name of the Spilo container"
            ));
        }
        let what = format!("sidecars[{i}].resources");
        if let Err(BuildError::Invalid(problem)) = sidecar_resources(
            sidecar.resources.as_ref(),
            config,
            &what,
            BuildError::Invalid,
        ) {
            problems.push(problem);
        }
    }
    problems.extend(extra_volumes(pg, config).1);
    problems
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

fn pod_template(
    pg: &Postgresql,
    config: &OperatorConfig,
    pod_env: &PodEnvironment,
) -> Result<PodTemplateSpec, BuildError> {
    let mut env = spilo_env_with(pg, config, pod_env);
    if let Some(tls) = tls_of(pg) {
        append_missing(&mut env, tls_env(tls));
    }
    let data_mount = data_mount(pg);
    let mut containers = vec![postgres_container(pg, config, env, data_mount.clone())?];
    containers.extend(sidecar_containers(pg, config, &data_mount)?);

    // Volumes and their mounts in Zalando's order: shared memory (Spilo only), the shared
    // socket and the additional Secret (every container), then the additional volumes
    // and the TLS ones (their target containers).
    let mut volumes = Vec::new();
    if shm_volume_enabled(pg, config) {
        volumes.push(memory_volume(SHM_VOLUME));
        push_mount(&mut containers[0], mount(SHM_VOLUME, SHM_MOUNT));
    }
    if config.share_pgsocket_with_sidecars {
        volumes.push(memory_volume(RUN_VOLUME));
        for container in &mut containers {
            push_mount(container, mount(RUN_VOLUME, RUN_MOUNT));
        }
    }
    if let Some((secret, path)) = additional_secret_mount(config)? {
        volumes.push(Volume {
            name: secret.clone(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(secret.clone()),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        });
        for container in &mut containers {
            push_mount(container, mount(&secret, &path));
        }
    }
    let (extra, problems) = extra_volumes(pg, config);
    if !problems.is_empty() {
        return Err(BuildError::Invalid(problems.join("; ")));
    }
    for extra in &extra {
        volumes.push(extra.volume.clone());
    }
    for container in &mut containers {
        for extra in &extra {
            if extra.targets(&container.name) {
                push_mount(container, extra.mount());
            }
        }
    }

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
            containers,
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
            topology_spread_constraints: topology_spread_constraints(pg, config),
            priority_class_name: non_empty_text(&pg.spec.pod_priority_class_name)
                .or_else(|| non_empty_text(&config.pod_priority_class_name)),
            volumes: (!volumes.is_empty()).then_some(volumes),
            ..PodSpec::default()
        }),
    })
}

/// The data volume's mount, with the manifest's `subPath` (or `subPathExpr`).
fn data_mount(pg: &Postgresql) -> VolumeMount {
    let volume = &pg.spec.volume;
    let sub_path = volume.sub_path.clone().filter(|p| !p.is_empty());
    let mut data_mount = mount(DATA_VOLUME, DATA_MOUNT);
    if volume.is_sub_path_expr == Some(true) {
        data_mount.sub_path_expr = sub_path;
    } else {
        data_mount.sub_path = sub_path;
    }
    data_mount
}

fn postgres_container(
    pg: &Postgresql,
    config: &OperatorConfig,
    env: Vec<EnvVar>,
    data_mount: VolumeMount,
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
        volume_mounts: Some(vec![data_mount]),
        env: Some(env),
        env_from: (!pg.spec.env_from.is_empty()).then(|| pg.spec.env_from.clone()),
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
        liveness_probe: pg.spec.liveness_probe.clone(),
        ..Container::default()
    })
}

fn push_mount(container: &mut Container, mount: VolumeMount) {
    container
        .volume_mounts
        .get_or_insert_with(Vec::new)
        .push(mount);
}

fn memory_volume(name: &str) -> Volume {
    Volume {
        name: name.into(),
        empty_dir: Some(EmptyDirVolumeSource {
            medium: Some("Memory".into()),
            size_limit: None,
        }),
        ..Volume::default()
    }
}

/// `additional_secret_mount` and its path, mounted in every container.
fn additional_secret_mount(
    config: &OperatorConfig,
) -> Result<Option<(String, String)>, BuildError> {
    let Some(secret) = config
        .additional_secret_mount
        .as_ref()
        .filter(|s| !s.is_empty())
    else {
        return Ok(None);
    };
    match config
        .additional_secret_mount_path
        .as_ref()
        .filter(|p| !p.is_empty())
    {
        Some(path) => Ok(Some((secret.clone(), path.clone()))),
        None => Err(BuildError::Config(format!(
            "additional_secret_mount {secret:?} is set but additional_secret_mount_path is empty"
        ))),
    }
}

/// The manifest's topology spread constraints, each selecting the cluster's pods (their
/// labels, as Zalando's `generateTopologySpreadConstraints` fills them in).
fn topology_spread_constraints(
    pg: &Postgresql,
    config: &OperatorConfig,
) -> Option<Vec<TopologySpreadConstraint>> {
    if pg.spec.topology_spread_constraints.is_empty() {
        return None;
    }
    let selector = LabelSelector {
        match_labels: Some(object_labels(pg, config)),
        match_expressions: None,
    };
    Some(
        pg.spec
            .topology_spread_constraints
            .iter()
            .map(|constraint| TopologySpreadConstraint {
                label_selector: Some(selector.clone()),
                ..constraint.clone()
            })
            .collect(),
    )
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

/// The manifest's TLS settings, when they name a Secret.
fn tls_of(pg: &Postgresql) -> Option<&Tls> {
    pg.spec.tls.as_ref().filter(|t| !t.secret_name.is_empty())
}

/// Spilo's TLS variables: the certificate Secret is mounted at `/tls`, a separate CA
/// Secret at `/tlsca`.
fn tls_env(tls: &Tls) -> Vec<EnvVar> {
    let var = |name: &str, value: String| EnvVar {
        name: name.into(),
        value: Some(value),
        value_from: None,
    };
    let text = |v: &Option<String>| v.clone().unwrap_or_default();
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
        let ca_mount = if text(&tls.ca_secret_name).is_empty() {
            TLS_MOUNT
        } else {
            TLS_CA_MOUNT
        };
        env.push(var("SSL_CA_FILE", file_path(&ca_file, ca_mount, "")));
    }
    env
}

/// The TLS Secret volumes (readable by the fsGroup, so that PostgreSQL can read the key),
/// mounted in the Spilo container after the additional volumes, as in Zalando.
fn tls_volumes(tls: &Tls) -> Vec<ExtraVolume> {
    let secret_volume = |secret: &str, path: &str| ExtraVolume {
        what: format!("the TLS volume {secret:?}"),
        volume: Volume {
            name: secret.into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(secret.into()),
                default_mode: Some(TLS_FILE_MODE),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        },
        mount_path: path.into(),
        sub_path: None,
        sub_path_expr: false,
        targets: Vec::new(),
    };
    let mut volumes = vec![secret_volume(&tls.secret_name, TLS_MOUNT)];
    let ca_secret = tls.ca_secret_name.as_deref().unwrap_or_default();
    if !tls.ca_file.as_deref().unwrap_or_default().is_empty() && !ca_secret.is_empty() {
        volumes.push(secret_volume(ca_secret, TLS_CA_MOUNT));
    }
    volumes
}

/// An additional volume of the manifest (or a TLS volume) with where to mount it.
#[derive(Debug, Clone, PartialEq)]
struct ExtraVolume {
    /// How problems name it.
    what: String,
    volume: Volume,
    mount_path: String,
    sub_path: Option<String>,
    sub_path_expr: bool,
    /// Container names, or `all`; empty: the Spilo container.
    targets: Vec<String>,
}

impl ExtraVolume {
    fn targets(&self, container: &str) -> bool {
        if self.targets.is_empty() {
            return container == POSTGRES_CONTAINER;
        }
        self.targets
            .iter()
            .any(|t| t == ALL_CONTAINERS || t == container)
    }

    fn mount(&self) -> VolumeMount {
        let mut mount = mount(&self.volume.name, &self.mount_path);
        if self.sub_path_expr {
            mount.sub_path_expr = self.sub_path.clone();
        } else {
            mount.sub_path = self.sub_path.clone();
        }
        mount
    }
}

/// The manifest's `additionalVolumes` followed by the TLS volumes, and what is wrong with
/// them: a missing name or mount path, an unreadable `volumeSource`, `all` mixed with
/// container names, a name or mount path the operator uses itself, two volumes of one
/// name or at one path. As in Zalando, a later volume of the same name at the same path is
/// dropped (a manifest may list its TLS Secret volume itself).
fn extra_volumes(pg: &Postgresql, config: &OperatorConfig) -> (Vec<ExtraVolume>, Vec<String>) {
    let mut problems = Vec::new();
    let mut candidates = Vec::new();
    for (i, additional) in pg.spec.additional_volumes.iter().enumerate() {
        let what = format!("additionalVolumes[{i}] ({:?})", additional.name);
        match additional_volume(additional) {
            Ok(volume) => candidates.push(ExtraVolume {
                what,
                volume,
                mount_path: additional.mount_path.clone(),
                sub_path: additional.sub_path.clone().filter(|p| !p.is_empty()),
                sub_path_expr: additional.is_sub_path_expr == Some(true),
                targets: additional.target_containers.clone(),
            }),
            Err(problem) => problems.push(format!("{what} {problem}")),
        }
    }
    if let Some(tls) = tls_of(pg) {
        candidates.extend(tls_volumes(tls));
    }

    let mut reserved_names = vec![
        (DATA_VOLUME.to_string(), "the data volume"),
        (SHM_VOLUME.to_string(), "the shared memory volume"),
        (RUN_VOLUME.to_string(), "the PostgreSQL socket volume"),
    ];
    let mut reserved_paths = vec![(DATA_MOUNT.to_string(), "the data directory")];
    if shm_volume_enabled(pg, config) {
        reserved_paths.push((SHM_MOUNT.into(), "the shared memory volume"));
    }
    if config.share_pgsocket_with_sidecars {
        reserved_paths.push((RUN_MOUNT.into(), "the PostgreSQL socket volume"));
    }
    if let Ok(Some((secret, path))) = additional_secret_mount(config) {
        reserved_names.push((secret, "additional_secret_mount"));
        reserved_paths.push((path, "additional_secret_mount"));
    }

    let mut volumes: Vec<ExtraVolume> = Vec::new();
    for candidate in candidates {
        let (name, path) = (&candidate.volume.name, &candidate.mount_path);
        let what = &candidate.what;
        if name.is_empty() {
            problems.push(format!("{what} has no name"));
            continue;
        }
        if path.is_empty() {
            problems.push(format!("{what} has no mountPath"));
            continue;
        }
        if let Some((_, owner)) = reserved_names.iter().find(|(n, _)| n == name) {
            problems.push(format!(
                "{what}: the volume name {name:?} is taken by {owner}"
            ));
            continue;
        }
        if let Some((_, owner)) = reserved_paths.iter().find(|(p, _)| p == path) {
            problems.push(format!(
                "{what} cannot be mounted at {path}, the mount path of {owner}"
            ));
            continue;
        }
        if candidate.targets.iter().any(|t| t == ALL_CONTAINERS) && candidate.targets.len() > 1 {
            problems.push(format!(
                "{what}: targetContainers is either [\"all\"] or a list of containers, not both"
            ));
            continue;
        }
        if let Some(earlier) = volumes.iter().find(|v| &v.mount_path == path) {
            if &earlier.volume.name != name {
                problems.push(format!("{what} is mounted at {path} like {}", earlier.what));
            }
            continue;
        }
        if let Some(earlier) = volumes.iter().find(|v| &v.volume.name == name) {
            problems.push(format!("{what} has the volume name of {}", earlier.what));
            continue;
        }
        volumes.push(candidate);
    }
    (volumes, problems)
}

/// Kubernetes volume sources, as the keys of `volumeSource` name them.
const VOLUME_SOURCES: &[&str] = &[
    "awsElasticBlockStore",
    "azureDisk",
    "azureFile",
    "cephfs",
    "cinder",
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "fc",
    "flexVolume",
    "flocker",
    "gcePersistentDisk",
    "gitRepo",
    "glusterfs",
    "hostPath",
    "image",
    "iscsi",
    "nfs",
    "persistentVolumeClaim",
    "photonPersistentDisk",
    "portworxVolume",
    "projected",
    "quobyte",
    "rbd",
    "scaleIO",
    "secret",
    "storageos",
    "vsphereVolume",
];

/// Keys of free-form maps inside volume sources, whose own keys are data.
const FREE_FORM_MAPS: &[&str] = &[
    "annotations",
    "labels",
    "limits",
    "matchLabels",
    "options",
    "requests",
    "volumeAttributes",
];

/// The Kubernetes volume of an additional volume. Zalando decodes `volumeSource` with
/// Go's case-insensitive JSON field matching, so manifests written for it may capitalise
/// keys (`PersistentVolumeClaim: {ClaimName: ...}`); they are read the same here.
fn additional_volume(additional: &AdditionalVolume) -> Result<Volume, String> {
    let mut sources = Vec::new();
    for (key, value) in &additional.volume_source {
        let Some(source) = VOLUME_SOURCES.iter().find(|s| s.eq_ignore_ascii_case(key)) else {
            return Err(format!(
                "has an unknown volumeSource {key:?} (known: {})",
                VOLUME_SOURCES.join(", ")
            ));
        };
        if value.is_null() {
            return Err(format!("has an empty volumeSource.{key}"));
        }
        sources.push((*source, lower_case_keys(value.clone())));
    }
    let (source, value) = match sources.as_slice() {
        [] => return Err("has no volumeSource".into()),
        [one] => one.clone(),
        more => {
            let names: Vec<&str> = more.iter().map(|(s, _)| *s).collect();
            return Err(format!(
                "has more than one volumeSource ({})",
                names.join(", ")
            ));
        }
    };
    let mut volume = serde_json::Map::new();
    volume.insert("name".into(), additional.name.clone().into());
    volume.insert(source.into(), value);
    serde_json::from_value(serde_json::Value::Object(volume))
        .map_err(|e| format!("has an invalid volumeSource.{source}: {e}"))
}

/// Keys starting with a capital letter get a small one (`ClaimName` → `claimName`), except
/// in free-form maps.
fn lower_case_keys(value: serde_json::Value) -> serde_json::Value {
    match value {
        serde_json::Value::Object(map) => serde_json::Value::Object(
            map.into_iter()
                .map(|(key, value)| {
                    let value = if FREE_FORM_MAPS.contains(&key.as_str()) {
                        value
                    } else {
                        lower_case_keys(value)
                    };
                    let mut chars = key.chars();
                    let key = match chars.next() {
                        Some(first) if first.is_ascii_uppercase() => {
                            format!("{}{}", first.to_ascii_lowercase(), chars.as_str())
                        }
                        _ => key,
                    };
                    (key, value)
                })
                .collect(),
        ),
        serde_json::Value::Array(items) => {
            serde_json::Value::Array(items.into_iter().map(lower_case_keys).collect())
        }
        other => other,
    }
}

/// The sidecars, in Zalando's precedence (the first of a name wins): the manifest's, the
/// configuration's `sidecars`, the deprecated `sidecar_docker_images` (by name) and
/// Scalyr's. Each gets the pod's name and namespace and the superuser's credentials ahead
/// of its own variables, and the data volume.
fn sidecar_containers(
    pg: &Postgresql,
    config: &OperatorConfig,
    data_mount: &VolumeMount,
) -> Result<Vec<Container>, BuildError> {
    let mut candidates = Vec::new();
    for (i, sidecar) in pg.spec.sidecars.iter().enumerate() {
        let mut container = sidecar.clone();
        if container.image_pull_policy.is_none() {
            container.image_pull_policy = Some("IfNotPresent".into());
        }
        container.resources = Some(sidecar_resources(
            container.resources.as_ref(),
            config,
            &format!("sidecars[{i}].resources"),
            BuildError::Invalid,
        )?);
        candidates.push(container);
    }
    candidates.extend(configured_sidecars(config)?);
    for (name, image) in &config.sidecar_docker_images {
        if name == POSTGRES_CONTAINER {
            return Err(BuildError::Config(format!(
                "sidecar_docker_images names a sidecar {POSTGRES_CONTAINER:?}, the name of the Spilo container"
            )));
        }
        candidates.push(Container {
            name: name.clone(),
            image: Some(image.clone()),
            image_pull_policy: Some("IfNotPresent".into()),
            resources: Some(sidecar_resources(
                None,
                config,
                &format!("sidecar_docker_images {name:?}"),
                BuildError::Config,
            )?),
            ..Container::default()
        });
    }
    candidates.extend(scalyr_sidecar(pg, config)?);

    let mut sidecars: Vec<Container> = Vec::new();
    for mut container in candidates {
        if sidecars.iter().any(|s| s.name == container.name) {
            continue;
        }
        let mut env = sidecar_env(pg, config);
        append_missing(&mut env, container.env.take().unwrap_or_default());
        container.env = Some(env);
        push_mount(&mut container, data_mount.clone());
        sidecars.push(container);
    }
    Ok(sidecars)
}

/// The configuration's `sidecars`: a JSON list of containers, used as written.
pub fn configured_sidecars(config: &OperatorConfig) -> Result<Vec<Container>, BuildError> {
    let Some(text) = config.sidecars.as_deref().filter(|s| !s.trim().is_empty()) else {
        return Ok(Vec::new());
    };
    let containers: Vec<Container> = serde_json::from_str(text).map_err(|e| {
        BuildError::Config(format!("sidecars is not a JSON list of containers: {e}"))
    })?;
    for (i, container) in containers.iter().enumerate() {
        if container.name.is_empty() {
            return Err(BuildError::Config(format!("sidecars[{i}] has no name")));
        }
        if container.image.as_deref().unwrap_or_default().is_empty() {
            return Err(BuildError::Config(format!(
                "sidecars[{i}] ({:?}) has no image",
                container.name
            )));
        }
        if container.name == POSTGRES_CONTAINER {
            return Err(BuildError::Config(format!(
                "sidecars[{i}] is named {POSTGRES_CONTAINER:?}, the name of the Spilo container"
            )));
        }
    }
    Ok(containers)
}

/// Scalyr's log shipper, when both `scalyr_api_key` and `scalyr_image` are set. As in
/// Zalando, the API key is a plain variable of the pod spec.
fn scalyr_sidecar(
    pg: &Postgresql,
    config: &OperatorConfig,
) -> Result<Option<Container>, BuildError> {
    let key = config
        .scalyr_api_key
        .as_ref()
        .map(|k| k.expose())
        .filter(|k| !k.is_empty());
    let image = config.scalyr_image.as_deref().filter(|i| !i.is_empty());
    let (Some(key), Some(image)) = (key, image) else {
        return Ok(None);
    };
    let var = |name: &str, value: &str| EnvVar {
        name: name.into(),
        value: Some(value.into()),
        value_from: None,
    };
    let mut env = vec![
        var("SCALYR_API_KEY", key),
        var("SCALYR_SERVER_HOST", cluster_name(pg)),
    ];
    if !config.scalyr_server_url.is_empty() {
        env.push(var("SCALYR_SERVER_URL", &config.scalyr_server_url));
    }
    let list = |cpu: &str, memory: &str| {
        Some(
            [("cpu", cpu), ("memory", memory)]
                .into_iter()
                .filter(|(_, v)| !v.is_empty())
                .map(|(k, v)| (k.to_string(), Quantity(v.to_string())))
                .collect(),
        )
    };
    let given = ResourceRequirements {
        requests: list(&config.scalyr_cpu_request, &config.scalyr_memory_request),
        limits: list(&config.scalyr_cpu_limit, &config.scalyr_memory_limit),
        ..ResourceRequirements::default()
    };
    Ok(Some(Container {
        name: SCALYR_SIDECAR.into(),
        image: Some(image.into()),
        image_pull_policy: Some("IfNotPresent".into()),
        env: Some(env),
        resources: Some(sidecar_resources(
            Some(&given),
            config,
            "scalyr resources",
            BuildError::Config,
        )?),
        ..Container::default()
    }))
}

/// A sidecar's resources as Zalando fills them: cpu and memory not given (or `""`, `"0"`,
/// `"null"`) come from the `default_*` settings, limits below the requests are raised,
/// the memory request follows `set_memory_request_to_limit`; the min/max thresholds are
/// for the Spilo container only. Other resources are kept as given.
fn sidecar_resources(
    given: Option<&ResourceRequirements>,
    config: &OperatorConfig,
    what: &str,
    error: fn(String) -> BuildError,
) -> Result<ResourceRequirements, BuildError> {
    let unset = |q: &Quantity| matches!(q.0.as_str(), "" | "0" | "null");
    let mut lists = Vec::new();
    for (kind, list, defaults) in [
        (
            "requests",
            given.and_then(|r| r.requests.clone()),
            [&config.default_cpu_request, &config.default_memory_request],
        ),
        (
            "limits",
            given.and_then(|r| r.limits.clone()),
            [&config.default_cpu_limit, &config.default_memory_limit],
        ),
    ] {
        let mut list: BTreeMap<String, Quantity> = list.unwrap_or_default();
        for (resource, default) in ["cpu", "memory"].into_iter().zip(defaults) {
            match list.get(resource).filter(|q| !unset(q)) {
                Some(value) => {
                    quantity::parse(&value.0).map_err(|e| {
                        error(format!(
                            "{what}.{kind}.{resource} {:?} is not a quantity: {e}",
                            value.0
                        ))
                    })?;
                }
                None => match default
                    .as_ref()
                    .filter(|d| !matches!(d.as_str(), "" | "0" | "null"))
                {
                    Some(default) => {
                        quantity::parse(default).map_err(|e| {
                            BuildError::Config(format!(
                                "default {resource} {kind} {default:?} is not a quantity: {e}"
                            ))
                        })?;
                        list.insert(resource.into(), Quantity(default.clone()));
                    }
                    None => {
                        list.remove(resource);
                    }
                },
            }
        }
        lists.push(list);
    }
    let (mut requests, mut limits) = (lists.remove(0), lists.remove(0));
    super::fit_limits_and_requests(
        &mut requests,
        &mut limits,
        config.set_memory_request_to_limit,
    );
    Ok(ResourceRequirements {
        requests: non_empty(requests),
        limits: non_empty(limits),
        ..given.cloned().unwrap_or_default()
    })
}

/// `file` below `dir` unless it is absolute; `dir/default` when empty.
pub(super) fn file_path(file: &str, dir: &str, default: &str) -> String {
    match file {
        "" => format!("{dir}/{default}"),
        absolute if absolute.starts_with('/') => absolute.to_string(),
        relative => format!("{dir}/{relative}"),
    }
}

/// The manifest's tolerations, else the one of the `toleration` setting.
pub fn tolerations(pg: &Postgresql, config: &OperatorConfig) -> Option<Vec<Toleration>> {
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
    let anti_affinity = pod_anti_affinity(object_labels(pg, config), config);
    Some(Affinity {
        node_affinity,
        pod_anti_affinity: Some(anti_affinity),
        ..Affinity::default()
    })
}

/// Anti-affinity between the pods `labels` select, preferred or required as configured
/// (`pod_antiaffinity_preferred_during_scheduling`, `pod_antiaffinity_topology_key`).
pub(super) fn pod_anti_affinity(
    labels: BTreeMap<String, String>,
    config: &OperatorConfig,
) -> PodAntiAffinity {
    let term = PodAffinityTerm {
        label_selector: Some(LabelSelector {
            match_labels: Some(labels),
            match_expressions: None,
        }),
        topology_key: config.pod_antiaffinity_topology_key.clone(),
        ..PodAffinityTerm::default()
    };
    if config.pod_antiaffinity_preferred_during_scheduling {
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
    }
}

/// The manifest's node affinity with the readiness labels required too: as an extra
/// alternative term (`node_readiness_label_merge: OR`) or added to every term (`AND`).
pub(super) fn node_affinity(pg: &Postgresql, config: &OperatorConfig) -> Option<NodeAffinity> {
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
    use crate::pure::builders::labels::tests::{manifest, minimal};

    use crate::pure::builders::restart::{IMAGES_HASH_ANNOTATION, RESTART_HASH_ANNOTATION};

    /// The template's annotations other than pgop's hashes.
    fn user_annotations(template: &PodTemplateSpec) -> Option<BTreeMap<String, String>> {
        let mut annotations = template.metadata.as_ref()?.annotations.clone()?;
        annotations.remove(RESTART_HASH_ANNOTATION);
        annotations.remove(IMAGES_HASH_ANNOTATION);
        non_empty(annotations)
    }

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
        assert_eq!(
            user_annotations(&spec.template),
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

    fn spec_with(extra: &str) -> Postgresql {
        manifest(
            "acid-test-cluster",
            &format!("  teamId: acid\n  numberOfInstances: 1\n  volume: {{size: 1Gi}}\n  postgresql: {{version: \"15\"}}\n{extra}"),
        )
    }

    fn containers(sts: &StatefulSet) -> &[Container] {
        &pod_spec(sts).containers
    }

    fn named<'a>(sts: &'a StatefulSet, name: &str) -> &'a Container {
        containers(sts)
            .iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("no container {name}"))
    }

    fn mount_names(container: &Container) -> Vec<&str> {
        container
            .volume_mounts
            .iter()
            .flatten()
            .map(|m| m.name.as_str())
            .collect()
    }

    fn invalid(result: Result<StatefulSet, BuildError>) -> String {
        match result {
            Err(BuildError::Invalid(message)) => message,
            other => panic!("expected an invalid manifest, got {other:?}"),
        }
    }

    #[test]
    fn sidecars_from_every_source() {
        // Zalando's TestSidecars: manifest sidecars first, then the configuration's, the
        // deprecated images and Scalyr; the first of a name wins.
        let pg = spec_with(
            r#"  resources:
    requests: {cpu: "1", memory: "10"}
    limits: {cpu: "1", memory: "10"}
  sidecars:
  - {name: cluster-specific-sidecar, image: sidecar:1}
  - name: cluster-specific-sidecar-with-resources
    image: sidecar:2
    resources:
      requests: {cpu: 210m, memory: 0.8Gi}
      limits: {cpu: 510m, memory: 1.4Gi}
  - {name: replace-sidecar, image: override-image, env: [{name: POD_NAME, value: mine}, {name: OWN, value: x}]}
"#,
        );
        let config = OperatorConfig {
            default_cpu_request: Some("200m".into()),
            max_cpu_request: Some("300m".into()),
            default_cpu_limit: Some("500m".into()),
            default_memory_request: Some("0.7Gi".into()),
            max_memory_request: Some("1.0Gi".into()),
            default_memory_limit: Some("1.3Gi".into()),
            sidecar_docker_images: BTreeMap::from([(
                "deprecated-global-sidecar".into(),
                "image:123".into(),
            )]),
            sidecars: Some(
                r#"[{"name": "global-sidecar", "image": "global:1"},
                    {"name": "replace-sidecar", "image": "replaced-image"}]"#
                    .into(),
            ),
            scalyr_api_key: Some(pgop_common::config::SecretValue::new("abc")),
            scalyr_image: Some("scalyr-image".into()),
            scalyr_cpu_request: "220m".into(),
            scalyr_cpu_limit: "520m".into(),
            scalyr_memory_request: "0.9Gi".into(),
            scalyr_memory_limit: String::new(),
            scalyr_server_url: String::new(),
            ..OperatorConfig::default()
        };
        let sts = desired_statefulset(&pg, &config).unwrap();
        let names: Vec<&str> = containers(&sts).iter().map(|c| c.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "postgres",
                "cluster-specific-sidecar",
                "cluster-specific-sidecar-with-resources",
                "replace-sidecar",
                "global-sidecar",
                "deprecated-global-sidecar",
                "scalyr-sidecar"
            ]
        );

        let operator_env = crate::pure::builders::spilo_env::sidecar_env(&pg, &config);
        let resources = |cpu: (&str, &str), memory: (&str, &str)| {
            Some(ResourceRequirements {
                requests: list(&[("cpu", cpu.0), ("memory", memory.0)]),
                limits: list(&[("cpu", cpu.1), ("memory", memory.1)]),
                ..ResourceRequirements::default()
            })
        };
        let defaults = resources(("200m", "500m"), ("0.7Gi", "1.3Gi"));
        let data = vec![mount(DATA_VOLUME, DATA_MOUNT)];
        let sidecar = named(&sts, "cluster-specific-sidecar");
        assert_eq!(
            sidecar,
            &Container {
                name: "cluster-specific-sidecar".into(),
                image: Some("sidecar:1".into()),
                image_pull_policy: Some("IfNotPresent".into()),
                resources: defaults.clone(),
                env: Some(operator_env.clone()),
                volume_mounts: Some(data.clone()),
                ..Container::default()
            },
            "default resources, no min/max thresholds for sidecars"
        );
        assert_eq!(
            named(&sts, "cluster-specific-sidecar-with-resources").resources,
            resources(("210m", "510m"), ("0.8Gi", "1.4Gi"))
        );
        let replaced = named(&sts, "replace-sidecar");
        assert_eq!(replaced.image.as_deref(), Some("override-image"));
        let env_names: Vec<(&str, Option<&str>)> = replaced
            .env
            .iter()
            .flatten()
            .map(|e| (e.name.as_str(), e.value.as_deref()))
            .collect();
        assert_eq!(
            env_names,
            [
                ("POD_NAME", None),
                ("POD_NAMESPACE", None),
                ("POSTGRES_USER", Some("postgres")),
                ("POSTGRES_PASSWORD", None),
                ("OWN", Some("x"))
            ],
            "the operator's variables come first and win"
        );
        assert_eq!(
            named(&sts, "global-sidecar"),
            &Container {
                name: "global-sidecar".into(),
                image: Some("global:1".into()),
                env: Some(operator_env.clone()),
                volume_mounts: Some(data.clone()),
                ..Container::default()
            },
            "configured sidecars are used as written"
        );
        assert_eq!(
            named(&sts, "deprecated-global-sidecar"),
            &Container {
                name: "deprecated-global-sidecar".into(),
                image: Some("image:123".into()),
                image_pull_policy: Some("IfNotPresent".into()),
                resources: defaults,
                env: Some(operator_env.clone()),
                volume_mounts: Some(data.clone()),
                ..Container::default()
            }
        );
        let scalyr = named(&sts, "scalyr-sidecar");
        let mut scalyr_env = operator_env;
        scalyr_env.extend([
            EnvVar {
                name: "SCALYR_API_KEY".into(),
                value: Some("abc".into()),
                value_from: None,
            },
            EnvVar {
                name: "SCALYR_SERVER_HOST".into(),
                value: Some("acid-test-cluster".into()),
                value_from: None,
            },
        ]);
        assert_eq!(scalyr.env, Some(scalyr_env));
        assert_eq!(
            scalyr.resources,
            resources(("220m", "520m"), ("0.9Gi", "1.3Gi"))
        );
        assert_eq!(scalyr.image.as_deref(), Some("scalyr-image"));
    }

    #[test]
    fn sidecar_resources_follow_the_memory_setting() {
        // Zalando's TestGenerateResourceRequirements, sidecar cases.
        let config = OperatorConfig {
            default_cpu_request: Some("100m".into()),
            default_cpu_limit: Some("1".into()),
            default_memory_request: Some("100Mi".into()),
            default_memory_limit: Some("500Mi".into()),
            min_cpu_limit: Some("250m".into()),
            min_memory_limit: Some("250Mi".into()),
            set_memory_request_to_limit: true,
            ..OperatorConfig::default()
        };
        let pg = spec_with(
            "  sidecars:\n  - name: postgres-exporter\n    image: exporter\n    resources:\n      requests: {cpu: 10m, memory: 10Mi}\n      limits: {cpu: 100m, memory: 100Mi}\n",
        );
        let sts = desired_statefulset(&pg, &config).unwrap();
        let resources = named(&sts, "postgres-exporter").resources.clone().unwrap();
        assert_eq!(
            resources.requests,
            list(&[("cpu", "10m"), ("memory", "100Mi")])
        );
        assert_eq!(
            resources.limits,
            list(&[("cpu", "100m"), ("memory", "100Mi")]),
            "min limits are for the Spilo container only"
        );
        let pg = spec_with(
            "  sidecars:\n  - name: bad\n    image: exporter\n    resources:\n      limits: {cpu: lots}\n",
        );
        assert!(
            invalid(desired_statefulset(&pg, &config)).contains("sidecars[0].resources.limits.cpu")
        );
        assert!(matches!(
            crate::pure::builders::validate::validate(&pg, &config),
            Err(BuildError::Invalid(m)) if m.contains("sidecars[0].resources.limits.cpu \"lots\" is not a quantity")
        ));
    }

    #[test]
    fn disabled_sidecars_and_init_containers() {
        let pg = spec_with(
            "  sidecars:\n  - {name: exporter, image: exporter:1}\n  initContainers:\n  - {name: date, image: busybox}\n",
        );
        let config = OperatorConfig {
            enable_sidecars: false,
            enable_init_containers: false,
            ..OperatorConfig::default()
        };
        let message = invalid(desired_statefulset(&pg, &config));
        assert!(message.contains(
            "sidecar containers are disabled by the operator configuration (enable_sidecars)"
        ));
        assert!(message.contains(
            "init containers are disabled by the operator configuration (enable_init_containers)"
        ));

        // Configured sidecars are not the manifest's: they stay.
        let config = OperatorConfig {
            enable_sidecars: false,
            sidecar_docker_images: BTreeMap::from([("logger".into(), "logger:1".into())]),
            ..OperatorConfig::default()
        };
        let sts = desired_statefulset(&minimal(), &config).unwrap();
        assert_eq!(containers(&sts).len(), 2);

        // Passed through when enabled.
        let sts = desired_statefulset(&pg, &OperatorConfig::default()).unwrap();
        assert_eq!(
            pod_spec(&sts).init_containers,
            Some(pg.spec.init_containers.clone())
        );
        assert_eq!(containers(&sts)[1].name, "exporter");

        let named_postgres = spec_with("  sidecars:\n  - {name: postgres, image: x}\n");
        assert!(invalid(desired_statefulset(
            &named_postgres,
            &OperatorConfig::default()
        ))
        .contains("the name of the Spilo container"));
    }

    #[test]
    fn configured_sidecars_must_be_containers() {
        let cases = [
            ("name: x", "not a JSON list of containers"),
            (
                r#"{"name": "x", "image": "y"}"#,
                "not a JSON list of containers",
            ),
            (r#"[{"name": "x"}]"#, "sidecars[0] (\"x\") has no image"),
            (r#"[{"name": "", "image": "y"}]"#, "sidecars[0] has no name"),
            (
                r#"[{"name": "postgres", "image": "y"}]"#,
                "the Spilo container",
            ),
            (
                "postgres:spilo",
                "sidecar_docker_images names a sidecar \"postgres\"",
            ),
        ];
        for (raw, fragment) in cases {
            let config = match raw.split_once(':') {
                Some(("postgres", image)) => OperatorConfig {
                    sidecar_docker_images: BTreeMap::from([("postgres".into(), image.into())]),
                    ..OperatorConfig::default()
                },
                _ => OperatorConfig {
                    sidecars: Some(raw.into()),
                    ..OperatorConfig::default()
                },
            };
            match desired_statefulset(&minimal(), &config) {
                Err(BuildError::Config(message)) => {
                    assert!(message.contains(fragment), "{raw}: {message}")
                }
                other => panic!("{raw}: {other:?}"),
            }
        }
        let config = OperatorConfig {
            sidecars: Some("  ".into()),
            ..OperatorConfig::default()
        };
        assert_eq!(configured_sidecars(&config), Ok(Vec::new()));
    }

    #[test]
    fn shared_socket_and_additional_secret() {
        let pg = spec_with("  sidecars:\n  - {name: exporter, image: exporter:1}\n");
        let config = OperatorConfig {
            share_pgsocket_with_sidecars: true,
            additional_secret_mount: Some("aws-iam-s3-role".into()),
            additional_secret_mount_path: Some("/meta/credentials".into()),
            ..OperatorConfig::default()
        };
        let sts = desired_statefulset(&pg, &config).unwrap();
        let volumes = pod_spec(&sts).volumes.clone().unwrap();
        let names: Vec<&str> = volumes.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(names, ["dshm", "postgresql-run", "aws-iam-s3-role"]);
        assert_eq!(
            volumes[1].empty_dir.as_ref().unwrap().medium.as_deref(),
            Some("Memory")
        );
        assert_eq!(
            volumes[2].secret.as_ref().unwrap().secret_name.as_deref(),
            Some("aws-iam-s3-role")
        );
        assert_eq!(
            mount_names(named(&sts, "postgres")),
            ["pgdata", "dshm", "postgresql-run", "aws-iam-s3-role"]
        );
        let exporter = named(&sts, "exporter");
        assert_eq!(
            mount_names(exporter),
            ["pgdata", "postgresql-run", "aws-iam-s3-role"]
        );
        let paths: Vec<&str> = exporter
            .volume_mounts
            .iter()
            .flatten()
            .map(|m| m.mount_path.as_str())
            .collect();
        assert_eq!(
            paths,
            [
                "/home/postgres/pgdata",
                "/var/run/postgresql",
                "/meta/credentials"
            ]
        );

        let no_path = OperatorConfig {
            additional_secret_mount: Some("aws-iam-s3-role".into()),
            ..OperatorConfig::default()
        };
        assert!(matches!(
            desired_statefulset(&minimal(), &no_path),
            Err(BuildError::Config(m)) if m.contains("additional_secret_mount_path")
        ));
    }

    #[test]
    fn additional_volumes_and_their_targets() {
        // Zalando's TestAdditionalVolume, plus a TLS Secret the manifest also lists itself
        // (Zalando's TestTLS: mounted once).
        let pg = spec_with(
            r#"  sidecars:
  - {name: sidecar, image: sidecar:1}
  tls: {secretName: my-secret, caFile: ca.crt}
  additionalVolumes:
  - {name: test1, mountPath: /test1, targetContainers: [all], volumeSource: {emptyDir: {}}}
  - {name: test2, mountPath: /test2, targetContainers: [sidecar], volumeSource: {emptyDir: {}}}
  - {name: test3, mountPath: /test3, targetContainers: [], volumeSource: {emptyDir: {}}}
  - name: test4
    mountPath: /test4
    subPath: $(POD_NAME)
    isSubPathExpr: true
    volumeSource:
      PersistentVolumeClaim: {ClaimName: pvc-postgresql-data-partitions, readyOnly: false}
  - name: my-secret
    mountPath: /tls
    volumeSource: {secret: {secretName: my-secret, defaultMode: 416}}
"#,
        );
        let sts = desired_statefulset(&pg, &OperatorConfig::default()).unwrap();
        assert_eq!(
            mount_names(named(&sts, "postgres")),
            ["pgdata", "dshm", "test1", "test3", "test4", "my-secret"]
        );
        assert_eq!(
            mount_names(named(&sts, "sidecar")),
            ["pgdata", "test1", "test2"]
        );
        let volumes = pod_spec(&sts).volumes.clone().unwrap();
        let names: Vec<&str> = volumes.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(
            names,
            ["dshm", "test1", "test2", "test3", "test4", "my-secret"]
        );
        assert_eq!(
            volumes[4]
                .persistent_volume_claim
                .as_ref()
                .map(|c| c.claim_name.as_str()),
            Some("pvc-postgresql-data-partitions"),
            "capitalised keys are read as Zalando does"
        );
        let test4 = named(&sts, "postgres")
            .volume_mounts
            .iter()
            .flatten()
            .find(|m| m.name == "test4")
            .unwrap();
        assert_eq!(
            (test4.sub_path_expr.as_deref(), test4.sub_path.as_deref()),
            (Some("$(POD_NAME)"), None)
        );
        let ssl_ca = named(&sts, "postgres")
            .env
            .iter()
            .flatten()
            .find(|e| e.name == "SSL_CA_FILE")
            .and_then(|e| e.value.clone());
        assert_eq!(ssl_ca.as_deref(), Some("/tls/ca.crt"));
    }

    #[test]
    fn additional_volume_problems() {
        let volume = |name: &str, path: &str| {
            format!("  - {{name: {name}, mountPath: {path}, volumeSource: {{emptyDir: {{}}}}}}\n")
        };
        let config = OperatorConfig {
            share_pgsocket_with_sidecars: true,
            additional_secret_mount: Some("creds".into()),
            additional_secret_mount_path: Some("/meta/credentials".into()),
            ..OperatorConfig::default()
        };
        let cases: Vec<(String, &str)> = vec![
            (
                volume("a", "/x") + &volume("b", "/x"),
                "additionalVolumes[1] (\"b\") is mounted at /x like additionalVolumes[0] (\"a\")",
            ),
            (
                volume("a", "/x") + &volume("a", "/y"),
                "additionalVolumes[1] (\"a\") has the volume name of additionalVolumes[0]",
            ),
            (volume("a", "/home/postgres/pgdata"), "the mount path of the data directory"),
            (volume("a", "/dev/shm"), "the mount path of the shared memory volume"),
            (volume("a", "/var/run/postgresql"), "the PostgreSQL socket volume"),
            (volume("a", "/meta/credentials"), "the mount path of additional_secret_mount"),
            (volume("pgdata", "/x"), "the volume name \"pgdata\" is taken by the data volume"),
            (volume("dshm", "/x"), "is taken by the shared memory volume"),
            (volume("creds", "/x"), "is taken by additional_secret_mount"),
            (volume("\"\"", "/x"), "has no name"),
            (volume("a", "\"\""), "has no mountPath"),
            (
                "  - {name: a, mountPath: /x, targetContainers: [all, postgres], volumeSource: {emptyDir: {}}}\n".into(),
                "either [\"all\"] or a list of containers",
            ),
            (
                "  - {name: a, mountPath: /x, volumeSource: {bogus: {}}}\n".into(),
                "unknown volumeSource \"bogus\"",
            ),
            (
                "  - {name: a, mountPath: /x, volumeSource: {}}\n".into(),
                "has no volumeSource",
            ),
            (
                "  - {name: a, mountPath: /x, volumeSource: {emptyDir: {}, secret: {secretName: s}}}\n".into(),
                "more than one volumeSource (emptyDir, secret)",
            ),
            (
                "  - {name: a, mountPath: /x, volumeSource: {emptyDir: }}\n".into(),
                "empty volumeSource.emptyDir",
            ),
            (
                "  - {name: a, mountPath: /x, volumeSource: {persistentVolumeClaim: {claimName: [1]}}}\n".into(),
                "invalid volumeSource.persistentVolumeClaim",
            ),
        ];
        for (volumes, fragment) in cases {
            let pg = spec_with(&format!("  additionalVolumes:\n{volumes}"));
            let message = invalid(desired_statefulset(&pg, &config));
            assert!(message.contains(fragment), "{volumes}: {message}");
            assert!(
                matches!(crate::pure::builders::validate::validate(&pg, &config), Err(BuildError::Invalid(m)) if m.contains(fragment)),
                "validate reports it too: {volumes}"
            );
        }
        // A TLS Secret named like an additional volume mounted elsewhere clashes.
        let pg = spec_with(&format!(
            "  tls: {{secretName: a}}\n  additionalVolumes:\n{}",
            volume("a", "/x")
        ));
        assert!(
            invalid(desired_statefulset(&pg, &OperatorConfig::default()))
                .contains("the TLS volume \"a\" has the volume name of additionalVolumes[0]")
        );
    }

    #[test]
    fn topology_spread_constraints_select_the_cluster() {
        let pg = spec_with(
            r#"  topologySpreadConstraints:
  - maxSkew: 1
    topologyKey: topology.kubernetes.io/zone
    whenUnsatisfiable: DoNotSchedule
    labelSelector: {matchLabels: {cluster-name: other}}
  - {maxSkew: 2, topologyKey: kubernetes.io/hostname, whenUnsatisfiable: ScheduleAnyway}
"#,
        );
        let config = OperatorConfig::default();
        let sts = desired_statefulset(&pg, &config).unwrap();
        let constraints = pod_spec(&sts).topology_spread_constraints.clone().unwrap();
        let selector = Some(LabelSelector {
            match_labels: Some(object_labels(&pg, &config)),
            match_expressions: None,
        });
        assert_eq!(
            constraints,
            vec![
                TopologySpreadConstraint {
                    max_skew: 1,
                    topology_key: "topology.kubernetes.io/zone".into(),
                    when_unsatisfiable: "DoNotSchedule".into(),
                    label_selector: selector.clone(),
                    ..TopologySpreadConstraint::default()
                },
                TopologySpreadConstraint {
                    max_skew: 2,
                    topology_key: "kubernetes.io/hostname".into(),
                    when_unsatisfiable: "ScheduleAnyway".into(),
                    label_selector: selector,
                    ..TopologySpreadConstraint::default()
                },
            ]
        );
        let sts = desired_statefulset(&minimal(), &config).unwrap();
        assert!(pod_spec(&sts).topology_spread_constraints.is_none());
    }

    #[test]
    fn pod_environment_reaches_the_spilo_container() {
        let config = OperatorConfig {
            pod_environment_secret: Some("pod-env".into()),
            ..OperatorConfig::default()
        };
        let pod_env = PodEnvironment {
            config_map: BTreeMap::from([("custom".into(), "from-configmap".into())]),
            secret_keys: vec!["token".into()],
            secret_name: None,
        };
        let sts = desired_statefulset_with(&minimal(), &config, &pod_env).unwrap();
        let env = container(&sts).env.clone().unwrap();
        let custom = env.iter().find(|e| e.name == "custom").unwrap();
        assert_eq!(custom.value.as_deref(), Some("from-configmap"));
        let token = env.iter().find(|e| e.name == "token").unwrap();
        let reference = token
            .value_from
            .as_ref()
            .and_then(|f| f.secret_key_ref.as_ref())
            .unwrap();
        assert_eq!(
            (reference.name.as_str(), reference.key.as_str()),
            ("pod-env", "token")
        );

        assert!(matches!(
            desired_statefulset_with(&minimal(), &OperatorConfig::default(), &pod_env),
            Err(BuildError::Config(m)) if m.contains("pod_environment_secret")
        ));
        assert_eq!(
            desired_statefulset_with(&minimal(), &config, &PodEnvironment::default()),
            desired_statefulset(&minimal(), &config)
        );
    }

    #[test]
    fn statefulset_metadata() {
        let mut pg = minimal();
        pg.metadata.uid = Some("uid-7".into());
        pg.metadata.annotations = Some(BTreeMap::from([
            ("downscaler/downtime_replicas".into(), "0".into()),
            ("owner".into(), "db".into()),
            ("other".into(), "x".into()),
        ]));
        let config = OperatorConfig {
            enable_owner_references: true,
            downscaler_annotations: vec!["downscaler/*".into()],
            inherited_annotations: vec!["owner".into()],
            ..OperatorConfig::default()
        };
        let sts = desired_statefulset(&pg, &config).unwrap();
        assert_eq!(
            sts.metadata.annotations,
            Some(BTreeMap::from([
                ("downscaler/downtime_replicas".into(), "0".into()),
                ("owner".into(), "db".into()),
            ]))
        );
        let owners = sts.metadata.owner_references.clone().unwrap();
        assert_eq!(
            (
                owners[0].kind.as_str(),
                owners[0].uid.as_str(),
                owners[0].controller
            ),
            ("postgresql", "uid-7", Some(true))
        );
        assert_eq!(
            user_annotations(&sts.spec.unwrap().template),
            Some(BTreeMap::from([("owner".into(), "db".into())])),
            "downscaler annotations stay on the StatefulSet"
        );
        let sts = desired_statefulset(&pg, &OperatorConfig::default()).unwrap();
        assert!(sts.metadata.owner_references.is_none());
        assert!(sts.metadata.annotations.is_none());
    }

    #[test]
    fn pod_setting_precedence() {
        // podPriorityClassName: (manifest, configuration, want)
        let cases = [
            (None, None, None),
            (None, Some("config-class"), Some("config-class")),
            (
                Some("manifest-class"),
                Some("config-class"),
                Some("manifest-class"),
            ),
            (Some(""), Some("config-class"), Some("config-class")),
            (Some(""), Some(""), None),
        ];
        for (manifest_class, configured, want) in cases {
            let mut pg = minimal();
            pg.spec.pod_priority_class_name = manifest_class.map(String::from);
            let config = OperatorConfig {
                pod_priority_class_name: configured.map(String::from),
                ..OperatorConfig::default()
            };
            let sts = desired_statefulset(&pg, &config).unwrap();
            assert_eq!(
                pod_spec(&sts).priority_class_name.as_deref(),
                want,
                "{manifest_class:?} {configured:?}"
            );
        }

        // Pod annotations: custom_pod_annotations < podAnnotations < inherited < IAM role.
        let mut pg = spec_with("  podAnnotations: {a: pod, b: pod}\n");
        pg.metadata.annotations = Some(BTreeMap::from([("b".into(), "inherited".into())]));
        let config = OperatorConfig {
            custom_pod_annotations: BTreeMap::from([
                ("a".into(), "custom".into()),
                ("c".into(), "custom".into()),
                ("iam.amazonaws.com/role".into(), "custom".into()),
            ]),
            inherited_annotations: vec!["b".into()],
            kube_iam_role: Some("role".into()),
            pod_terminate_grace_period: std::time::Duration::from_secs(42),
            spilo_privileged: true,
            spilo_allow_privilege_escalation: false,
            additional_pod_capabilities: vec!["sys_nice".into(), "NET_ADMIN".into()],
            ..OperatorConfig::default()
        };
        let sts = desired_statefulset(&pg, &config).unwrap();
        let template = sts.spec.as_ref().unwrap().template.clone();
        assert_eq!(
            user_annotations(&template),
            Some(BTreeMap::from([
                ("a".into(), "pod".into()),
                ("b".into(), "inherited".into()),
                ("c".into(), "custom".into()),
                ("iam.amazonaws.com/role".into(), "role".into()),
            ]))
        );
        let pod = pod_spec(&sts);
        assert_eq!(pod.termination_grace_period_seconds, Some(42));
        assert_eq!(pod.scheduler_name, None, "Kubernetes' default scheduler");
        let security = container(&sts).security_context.clone().unwrap();
        assert_eq!(
            (
                security.privileged,
                security.allow_privilege_escalation,
                security.capabilities.and_then(|c| c.add)
            ),
            (
                Some(true),
                Some(false),
                Some(vec!["SYS_NICE".to_string(), "NET_ADMIN".to_string()])
            )
        );
        assert!(container(&sts).readiness_probe.is_none());
        assert!(container(&sts).liveness_probe.is_none());
        assert!(container(&sts).env_from.is_none());
    }

    #[test]
    fn liveness_probe_and_env_from() {
        let pg = spec_with(
            "  livenessProbe:\n    httpGet: {path: /liveness, port: 8008}\n    initialDelaySeconds: 60\n  envFrom:\n  - configMapRef: {name: extra-postgres-env, optional: true}\n",
        );
        let sts = desired_statefulset(&pg, &OperatorConfig::default()).unwrap();
        let c = container(&sts);
        let probe = c.liveness_probe.as_ref().unwrap();
        assert_eq!(
            probe.http_get.as_ref().unwrap().path.as_deref(),
            Some("/liveness")
        );
        assert_eq!(probe.initial_delay_seconds, Some(60));
        assert_eq!(c.env_from, Some(pg.spec.env_from.clone()));
    }
}
