//! Connection poolers: a pgbouncer Deployment and its Service per role, `<cluster>-pooler`
//! in front of the master Service and `<cluster>-pooler-repl` in front of the replica
//! Service, as Zalando's `connection_pooler.go` builds them.
//!
//! The master pooler runs when `enableConnectionPooler` is true, or when it is unset and the
//! manifest has a `connectionPooler` section (even an empty one); the replica pooler only
//! when `enableReplicaConnectionPooler` is true. There is no operator-wide switch.
//!
//! The pooler logs in as its own role (`connectionPooler.user`, else
//! `connection_pooler_user`) whose credentials Secret the caller creates with
//! [`super::secrets::desired_secret`]; pgbouncer looks up every other user's password with
//! `<schema>.user_lookup`, a function the caller installs in each database.
//!
//! Not covered (Zalando has it): the replacement of pooler pods after a password rotation.
use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    Affinity, Container, ContainerPort, EnvVar, EnvVarSource, PodSecurityContext, PodSpec,
    PodTemplateSpec, Probe, ResourceRequirements, SecretKeySelector, SecretVolumeSource,
    SecurityContext, Service, ServicePort, ServiceSpec, TCPSocketAction, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use pgop_common::config::OperatorConfig;
use pgop_common::crd::{Postgresql, ResourceDescription, Tls};

use super::labels::{
    inherited_annotations, object_labels, owner_references, propagated_annotations,
    selector_labels, MASTER_ROLE, REPLICA_ROLE,
};
use super::secrets::secret_name;
use super::services::{node_port, service_name};
use super::spilo_env::POSTGRES_PORT;
use super::statefulset::{file_path, node_affinity, pod_anti_affinity, tolerations};
use super::{cluster_name, non_empty, object_meta, quantity, BuildError};
use crate::pure::pooler::{effective_user, section};
pub use crate::pure::pooler::{pooler_enabled, pooler_schema, pooler_user, PoolerRole};

/// Name of the pooler container.
pub const POOLER_CONTAINER: &str = "connection-pooler";
/// Label carrying the pooler's name, which its Service selects on.
pub const POOLER_NAME_LABEL: &str = "connection-pooler";
/// Zalando replaces the `application` label of pooler objects (whatever `cluster_labels`
/// holds), so that operations on the cluster's pods never touch pooler pods.
pub const APPLICATION_LABEL: &str = "application";
/// Value of [`APPLICATION_LABEL`] on pooler objects.
pub const POOLER_APPLICATION: &str = "db-connection-pooler";
/// pgbouncer's `max_client_conn`, not configurable in Zalando.
pub const MAX_CLIENT_CONNECTIONS: i32 = 10_000;
/// The user and group of Zalando's pgbouncer image.
const POOLER_RUN_AS_USER: i64 = 100;
const POOLER_RUN_AS_GROUP: i64 = 101;
/// Pooler names are Service names and label values: DNS-1035 labels.
const NAME_MAX_LENGTH: usize = 63;
const TLS_MOUNT: &str = "/tls";
const TLS_CA_MOUNT: &str = "/tlsca";
/// Readable by the fsGroup.
const TLS_FILE_MODE: i32 = 0o640;
/// Annotation external-dns reads the load balancer's DNS name from.
const DNS_NAME_ANNOTATION: &str = "external-dns.alpha.kubernetes.io/hostname";
const ELB_TIMEOUT_ANNOTATION: &str =
    "service.beta.kubernetes.io/aws-load-balancer-connection-idle-timeout";
const ELB_TIMEOUT: &str = "3600";
/// A load balancer without `allowedSourceRanges` is only reachable from itself.
const LOCAL_SOURCE_RANGE: &str = "127.0.0.1/32";

/// `<cluster>-pooler` or `<cluster>-pooler-repl`: the name of both the Deployment and the
/// Service.
pub fn pooler_name(pg: &Postgresql, role: PoolerRole) -> String {
    match role {
        PoolerRole::Master => format!("{}-pooler", cluster_name(pg)),
        PoolerRole::Replica => format!("{}-pooler-repl", cluster_name(pg)),
    }
}

/// Every pooler the cluster may have, enabled or not, with its object name: what to delete
/// for the roles [`pooler_enabled`] rejects. The cluster's label selector does not find
/// pooler objects (their `application` label differs), so they are removed by name.
pub fn pooler_objects_names(pg: &Postgresql) -> Vec<(PoolerRole, String)> {
    PoolerRole::ALL
        .into_iter()
        .map(|role| (role, pooler_name(pg, role)))
        .collect()
}

/// The pool sizes handed to pgbouncer, per pooler instance (Zalando's
/// `getConnectionPoolerEnvVars`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolSizes {
    /// `maxDBConnections` (else `connection_pooler_max_db_connections`) divided among the
    /// instances, rounded down.
    pub max_db_connections: i32,
    /// Half of `max_db_connections`, rounded down.
    pub default_size: i32,
    /// Half of `default_size`, rounded down.
    pub min_size: i32,
    /// Equal to `min_size`.
    pub reserve_size: i32,
}

/// The pool sizes of the cluster's poolers (the same for both roles). Zalando has no lower
/// bound: with more instances than connections every size is 0.
pub fn pool_sizes(pg: &Postgresql, config: &OperatorConfig) -> Result<PoolSizes, BuildError> {
    let max = match section(pg).and_then(|s| s.max_db_connections) {
        Some(max) if max < 0 => {
            return Err(BuildError::Invalid(format!(
                "connectionPooler.maxDBConnections is {max}, it cannot be negative"
            )))
        }
        Some(max) => max,
        None if config.connection_pooler_max_db_connections < 0 => {
            return Err(BuildError::Config(format!(
                "connection_pooler_max_db_connections is {}, it cannot be negative",
                config.connection_pooler_max_db_connections
            )))
        }
        None => config.connection_pooler_max_db_connections,
    };
    let max_db_connections = max / pooler_instances(pg, config);
    let default_size = max_db_connections / 2;
    let min_size = default_size / 2;
    Ok(PoolSizes {
        max_db_connections,
        default_size,
        min_size,
        reserve_size: min_size,
    })
}

/// `connectionPooler.numberOfInstances`, else `connection_pooler_number_of_instances`; at
/// least 1 (Zalando raises the Deployment's replicas to 1 too).
pub fn pooler_instances(pg: &Postgresql, config: &OperatorConfig) -> i32 {
    section(pg)
        .and_then(|s| s.number_of_instances)
        .unwrap_or(config.connection_pooler_number_of_instances)
        .max(1)
}

/// Labels that select a pooler's pods: the cluster's selector labels with
/// `application: db-connection-pooler` and `connection-pooler: <pooler name>`. The
/// Deployment's selector and the Service's labels.
pub fn pooler_selector(
    pg: &Postgresql,
    config: &OperatorConfig,
    role: PoolerRole,
) -> BTreeMap<String, String> {
    with_pooler_labels(selector_labels(pg, config), pg, role)
}

/// Labels of a pooler's Deployment and pods: the cluster's object labels (team, inherited
/// labels) with the pooler labels of [`pooler_selector`] and the pod role label.
pub fn pooler_labels(
    pg: &Postgresql,
    config: &OperatorConfig,
    role: PoolerRole,
) -> BTreeMap<String, String> {
    let mut labels = with_pooler_labels(object_labels(pg, config), pg, role);
    labels.insert(config.pod_role_label.clone(), role.as_str().to_string());
    labels
}

fn with_pooler_labels(
    mut labels: BTreeMap<String, String>,
    pg: &Postgresql,
    role: PoolerRole,
) -> BTreeMap<String, String> {
    labels.insert(APPLICATION_LABEL.into(), POOLER_APPLICATION.into());
    labels.insert(POOLER_NAME_LABEL.into(), pooler_name(pg, role));
    labels
}

/// The pooler Deployment of `role`. Fails for a cluster name too long for the pooler's
/// name, for resource quantities that are not quantities and negative connection limits.
pub fn desired_pooler_deployment(
    pg: &Postgresql,
    config: &OperatorConfig,
    role: PoolerRole,
) -> Result<Deployment, BuildError> {
    let name = pooler_name(pg, role);
    if name.len() > NAME_MAX_LENGTH {
        return Err(BuildError::Invalid(format!(
            "the connection pooler name {name:?} is {} characters long, at most {NAME_MAX_LENGTH} are allowed: use a shorter cluster name",
            name.len()
        )));
    }
    let mut metadata = object_meta(pg, name);
    metadata.labels = Some(pooler_labels(pg, config, role));
    metadata.annotations = non_empty(propagated_annotations(pg, config)?);
    metadata.owner_references = owner_references(pg, config);
    Ok(Deployment {
        metadata,
        spec: Some(DeploymentSpec {
            replicas: Some(pooler_instances(pg, config)),
            selector: LabelSelector {
                match_labels: Some(pooler_selector(pg, config, role)),
                match_expressions: None,
            },
            template: pod_template(pg, config, role)?,
            ..DeploymentSpec::default()
        }),
        status: None,
    })
}

fn pod_template(
    pg: &Postgresql,
    config: &OperatorConfig,
    role: PoolerRole,
) -> Result<PodTemplateSpec, BuildError> {
    let mut env = pooler_env(pg, config, role)?;
    let mut volumes = Vec::new();
    let mut mounts = Vec::new();
    if let Some(tls) = pg.spec.tls.as_ref().filter(|t| !t.secret_name.is_empty()) {
        let (tls_env, tls_volumes) = tls_files(tls);
        env.extend(tls_env);
        for (volume, path) in tls_volumes {
            mounts.push(VolumeMount {
                name: volume.name.clone(),
                mount_path: path.into(),
                ..VolumeMount::default()
            });
            volumes.push(volume);
        }
    }
    let image = section(pg)
        .and_then(|s| s.docker_image.clone())
        .filter(|i| !i.is_empty())
        .unwrap_or_else(|| config.connection_pooler_image.clone());
    let container = Container {
        name: POOLER_CONTAINER.into(),
        image: Some(image),
        image_pull_policy: Some("IfNotPresent".into()),
        resources: Some(pooler_resources(pg, config)?),
        ports: Some(vec![ContainerPort {
            container_port: POSTGRES_PORT,
            protocol: Some("TCP".into()),
            ..ContainerPort::default()
        }]),
        env: Some(env),
        readiness_probe: Some(Probe {
            tcp_socket: Some(TCPSocketAction {
                port: IntOrString::Int(POSTGRES_PORT),
                host: None,
            }),
            ..Probe::default()
        }),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            ..SecurityContext::default()
        }),
        volume_mounts: (!mounts.is_empty()).then_some(mounts),
        ..Container::default()
    };

    let mut annotations = config.custom_pod_annotations.clone();
    annotations.extend(pg.spec.pod_annotations.clone());
    annotations.extend(inherited_annotations(pg, config));
    Ok(PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(pooler_labels(pg, config, role)),
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
            tolerations: tolerations(pg, config),
            volumes: (!volumes.is_empty()).then_some(volumes),
            security_context: Some(PodSecurityContext {
                run_as_user: Some(POOLER_RUN_AS_USER),
                run_as_group: Some(POOLER_RUN_AS_GROUP),
                fs_group: pg.spec.spilo_fs_group.or(config.spilo_fsgroup),
                ..PodSecurityContext::default()
            }),
            affinity: affinity(pg, config, role),
            ..PodSpec::default()
        }),
    })
}

/// The variables pgbouncer is configured from, in Zalando's order.
fn pooler_env(
    pg: &Postgresql,
    config: &OperatorConfig,
    role: PoolerRole,
) -> Result<Vec<EnvVar>, BuildError> {
    let text = |manifest: Option<&String>, default: &String| {
        manifest
            .filter(|v| !v.is_empty())
            .unwrap_or(default)
            .clone()
    };
    let spec = section(pg);
    let schema = pooler_schema(pg, config);
    let mode = text(
        spec.and_then(|s| s.mode.as_ref()),
        &config.connection_pooler_mode,
    );
    let secret = secret_name(config, &effective_user(pg, config), cluster_name(pg));
    let sizes = pool_sizes(pg, config)?;
    let port = POSTGRES_PORT.to_string();
    Ok(vec![
        value("PGHOST", service_name(pg, role.as_str())),
        value("PGPORT", port.clone()),
        secret_ref("PGUSER", &secret, "username"),
        value("PGSCHEMA", schema),
        secret_ref("PGPASSWORD", &secret, "password"),
        value("CONNECTION_POOLER_PORT", port),
        value("CONNECTION_POOLER_MODE", mode),
        value(
            "CONNECTION_POOLER_DEFAULT_SIZE",
            sizes.default_size.to_string(),
        ),
        value("CONNECTION_POOLER_MIN_SIZE", sizes.min_size.to_string()),
        value(
            "CONNECTION_POOLER_RESERVE_SIZE",
            sizes.reserve_size.to_string(),
        ),
        value(
            "CONNECTION_POOLER_MAX_CLIENT_CONN",
            MAX_CLIENT_CONNECTIONS.to_string(),
        ),
        value(
            "CONNECTION_POOLER_MAX_DB_CONN",
            sizes.max_db_connections.to_string(),
        ),
    ])
}

fn value(name: &str, value: String) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value),
        value_from: None,
    }
}

fn secret_ref(name: &str, secret: &str, key: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: None,
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.into(),
                key: key.into(),
                optional: None,
            }),
            ..EnvVarSource::default()
        }),
    }
}

/// pgbouncer's client TLS variables and the Secret volumes holding the files (with their
/// mount paths): the certificate Secret at `/tls`, a separate CA Secret at `/tlsca`.
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
    let text = |v: &Option<String>| v.clone().unwrap_or_default();
    let mut volumes = vec![(secret_volume(&tls.secret_name), TLS_MOUNT)];
    let mut env = vec![
        value(
            "CONNECTION_POOLER_CLIENT_TLS_CRT",
            file_path(&text(&tls.certificate_file), TLS_MOUNT, "tls.crt"),
        ),
        value(
            "CONNECTION_POOLER_CLIENT_TLS_KEY",
            file_path(&text(&tls.private_key_file), TLS_MOUNT, "tls.key"),
        ),
    ];
    let ca_file = text(&tls.ca_file);
    if !ca_file.is_empty() {
        let ca_secret = text(&tls.ca_secret_name);
        let ca_mount = if ca_secret.is_empty() {
            TLS_MOUNT
        } else {
            volumes.push((secret_volume(&ca_secret), TLS_CA_MOUNT));
            TLS_CA_MOUNT
        };
        env.push(value(
            "CONNECTION_POOLER_CLIENT_CA_FILE",
            file_path(&ca_file, ca_mount, ""),
        ));
    }
    (env, volumes)
}

/// The section's resources, else the `connection_pooler_default_*` settings (unset when
/// neither is given); limits raised to the requests, and the memory request raised to its
/// limit when `set_memory_request_to_limit`. The `min_*`/`max_*` thresholds apply to
/// Postgres containers only.
fn pooler_resources(
    pg: &Postgresql,
    config: &OperatorConfig,
) -> Result<ResourceRequirements, BuildError> {
    let spec = section(pg).and_then(|s| s.resources.as_ref());
    let mut requests = resource_list(
        spec.and_then(|r| r.requests.as_ref()),
        "requests",
        [
            ("cpu_request", &config.connection_pooler_default_cpu_request),
            (
                "memory_request",
                &config.connection_pooler_default_memory_request,
            ),
        ],
    )?;
    let mut limits = resource_list(
        spec.and_then(|r| r.limits.as_ref()),
        "limits",
        [
            ("cpu_limit", &config.connection_pooler_default_cpu_limit),
            (
                "memory_limit",
                &config.connection_pooler_default_memory_limit,
            ),
        ],
    )?;
    super::fit_limits_and_requests(
        &mut requests,
        &mut limits,
        config.set_memory_request_to_limit,
    );
    Ok(ResourceRequirements {
        requests: non_empty(requests),
        limits: non_empty(limits),
        ..ResourceRequirements::default()
    })
}

/// The section's quantities, falling back to the defaults for cpu and memory. As in
/// Zalando, `""`, `"0"` and `"null"` mean "not set".
fn resource_list(
    spec: Option<&ResourceDescription>,
    kind: &str,
    [(cpu_key, default_cpu), (memory_key, default_memory)]: [(&str, &Option<String>); 2],
) -> Result<BTreeMap<String, Quantity>, BuildError> {
    let given = |v: Option<&String>| {
        v.filter(|v| !matches!(v.as_str(), "" | "0" | "null"))
            .cloned()
    };
    let entries = [
        (
            "cpu",
            spec.and_then(|s| s.cpu.as_ref()),
            Some((cpu_key, default_cpu)),
        ),
        (
            "memory",
            spec.and_then(|s| s.memory.as_ref()),
            Some((memory_key, default_memory)),
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
    let mut list = BTreeMap::new();
    for (resource, manifest, default) in entries {
        let value = if let Some(value) = given(manifest) {
            quantity::parse(&value).map_err(|e| {
                BuildError::Invalid(format!(
                    "connectionPooler.resources.{kind}.{resource} {value:?} is not a quantity: {e}"
                ))
            })?;
            value
        } else if let Some((key, value)) =
            default.and_then(|(key, value)| Some((key, given(value.as_ref())?)))
        {
            quantity::parse(&value).map_err(|e| {
                BuildError::Config(format!(
                    "connection_pooler_default_{key} {value:?} is not a quantity: {e}"
                ))
            })?;
            value
        } else {
            continue;
        };
        list.insert(resource.to_string(), Quantity(value));
    }
    Ok(list)
}

/// The cluster's node affinity, plus anti-affinity between the pods of one pooler when
/// `enable_pod_antiaffinity`.
fn affinity(pg: &Postgresql, config: &OperatorConfig, role: PoolerRole) -> Option<Affinity> {
    let node_affinity = node_affinity(pg, config);
    if !config.enable_pod_antiaffinity {
        return node_affinity.map(|node_affinity| Affinity {
            node_affinity: Some(node_affinity),
            ..Affinity::default()
        });
    }
    let anti_affinity = pod_anti_affinity(pooler_selector(pg, config, role), config);
    Some(Affinity {
        node_affinity,
        pod_anti_affinity: Some(anti_affinity),
        ..Affinity::default()
    })
}

/// How a pooler Service is exposed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolerExposure {
    ClusterIp,
    LoadBalancer,
    /// With the node port the manifest pins (`None`: Kubernetes picks one).
    NodePort(Option<i32>),
}

/// `enable{Master,Replica}PoolerNodePort` wins over everything (Zalando's CRD: "overrides
/// loadbalancer configuration"); else `enable{Master,Replica}PoolerLoadBalancer`, else
/// `enable_{master,replica}_pooler_load_balancer`. A node port of 0 lets Kubernetes pick.
/// pgop's configuration has no `enable_{master,replica}_pooler_node_port` keys yet.
pub fn pooler_exposure(
    pg: &Postgresql,
    config: &OperatorConfig,
    role: PoolerRole,
) -> PoolerExposure {
    let spec = &pg.spec;
    let (node_port, port, load_balancer) = match role {
        PoolerRole::Master => (
            spec.enable_master_pooler_node_port,
            spec.master_pooler_node_port,
            spec.enable_master_pooler_load_balancer
                .unwrap_or(config.enable_master_pooler_load_balancer),
        ),
        PoolerRole::Replica => (
            spec.enable_replica_pooler_node_port,
            spec.replica_pooler_node_port,
            spec.enable_replica_pooler_load_balancer
                .unwrap_or(config.enable_replica_pooler_load_balancer),
        ),
    };
    if node_port == Some(true) {
        PoolerExposure::NodePort(port.filter(|p| *p != 0))
    } else if load_balancer {
        PoolerExposure::LoadBalancer
    } else {
        PoolerExposure::ClusterIp
    }
}

/// Pooler node ports Kubernetes would refuse: out of range, or a port another Service of
/// the cluster (pooler or not) asks for too. For the manifest checks.
pub fn pooler_node_port_problems(pg: &Postgresql, config: &OperatorConfig) -> Vec<String> {
    let mut ports: Vec<i32> = [MASTER_ROLE, REPLICA_ROLE]
        .into_iter()
        .filter_map(|role| node_port(pg, role).flatten())
        .collect();
    let mut problems = Vec::new();
    for (role, field) in [
        (PoolerRole::Master, "masterPoolerNodePort"),
        (PoolerRole::Replica, "replicaPoolerNodePort"),
    ] {
        if let PoolerExposure::NodePort(Some(port)) = pooler_exposure(pg, config, role) {
            if !(1..=65535).contains(&port) {
                problems.push(format!(
                    "{field} {port} is not a port (1-65535, or 0 to let Kubernetes choose)"
                ));
            } else if ports.contains(&port) {
                problems.push(format!(
                    "{field} {port} is already the node port of another Service of the cluster"
                ));
            }
            ports.push(port);
        }
    }
    problems
}

/// The pooler Service of `role`: port 5432 to the pods' 5432, selecting the pods by their
/// `connection-pooler` label, exposed as [`pooler_exposure`] says. A load balancer gets the
/// manifest's source ranges (else only `127.0.0.1/32`), the ELB idle timeout and the DNS
/// name of `master_dns_name_format`/`replica_dns_name_format` for `<cluster>-pooler`.
pub fn desired_pooler_service(
    pg: &Postgresql,
    config: &OperatorConfig,
    role: PoolerRole,
) -> Service {
    let name = pooler_name(pg, role);
    let exposure = pooler_exposure(pg, config, role);
    let mut spec = ServiceSpec {
        type_: Some("ClusterIP".into()),
        ports: Some(vec![ServicePort {
            name: Some(name.clone()),
            port: POSTGRES_PORT,
            target_port: Some(IntOrString::Int(POSTGRES_PORT)),
            protocol: Some("TCP".into()),
            ..ServicePort::default()
        }]),
        selector: Some(BTreeMap::from([(
            POOLER_NAME_LABEL.to_string(),
            name.clone(),
        )])),
        ..ServiceSpec::default()
    };
    match exposure {
        PoolerExposure::ClusterIp => {}
        PoolerExposure::LoadBalancer => {
            spec.type_ = Some("LoadBalancer".into());
            spec.load_balancer_source_ranges = Some(if pg.spec.allowed_source_ranges.is_empty() {
                vec![LOCAL_SOURCE_RANGE.into()]
            } else {
                pg.spec.allowed_source_ranges.clone()
            });
            spec.external_traffic_policy = Some(config.external_traffic_policy.clone());
        }
        PoolerExposure::NodePort(port) => {
            spec.type_ = Some("NodePort".into());
            spec.external_traffic_policy = Some(config.external_traffic_policy.clone());
            if let Some(ports) = spec.ports.as_mut() {
                ports[0].node_port = port;
            }
        }
    }

    let mut annotations = config.custom_service_annotations.clone();
    annotations.extend(pg.spec.service_annotations.clone());
    annotations.extend(match role {
        PoolerRole::Master => pg.spec.master_service_annotations.clone(),
        PoolerRole::Replica => pg.spec.replica_service_annotations.clone(),
    });
    if exposure == PoolerExposure::LoadBalancer {
        annotations
            .entry(ELB_TIMEOUT_ANNOTATION.into())
            .or_insert_with(|| ELB_TIMEOUT.into());
        annotations.insert(DNS_NAME_ANNOTATION.into(), dns_name(pg, config, role));
    }
    annotations.extend(inherited_annotations(pg, config));

    let mut metadata = object_meta(pg, name);
    metadata.labels = Some(pooler_selector(pg, config, role));
    metadata.annotations = non_empty(annotations);
    metadata.owner_references = owner_references(pg, config);
    Service {
        metadata,
        spec: Some(spec),
        status: None,
    }
}

/// The load balancer's DNS name, lowercased: the role's DNS format with `<cluster>-pooler`
/// as the cluster (the replica format adds `-repl`). Poolers have no legacy name.
fn dns_name(pg: &Postgresql, config: &OperatorConfig, role: PoolerRole) -> String {
    let format = match role {
        PoolerRole::Master => &config.master_dns_name_format,
        PoolerRole::Replica => &config.replica_dns_name_format,
    };
    let cluster = pooler_name(pg, PoolerRole::Master);
    let values = [
        ("{cluster}", cluster.as_str()),
        (
            "{namespace}",
            pg.metadata.namespace.as_deref().unwrap_or_default(),
        ),
        ("{team}", pg.spec.team_id.as_str()),
        ("{hostedzone}", config.db_hosted_zone.as_str()),
    ];
    values
        .iter()
        .fold(format.clone(), |text, (key, value)| {
            text.replace(key, value)
        })
        .to_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pure::builders::labels::tests::{manifest, minimal};

    fn with(spec_lines: &str) -> Postgresql {
        manifest(
            "acid-minimal-cluster",
            &format!(
                "  teamId: ACID\n  numberOfInstances: 2\n  volume: {{size: 1Gi}}\n  postgresql: {{version: \"15\"}}\n{spec_lines}"
            ),
        )
    }

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn env_of(deployment: &Deployment) -> Vec<EnvVar> {
        container(deployment).env.clone().unwrap()
    }

    fn container(deployment: &Deployment) -> &Container {
        &pod_spec(deployment).containers[0]
    }

    fn pod_spec(deployment: &Deployment) -> &PodSpec {
        deployment
            .spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .as_ref()
            .unwrap()
    }

    /// Plain values by name; secret references as `secret:<name>/<key>`.
    fn env_map(env: &[EnvVar]) -> BTreeMap<String, String> {
        env.iter()
            .map(|e| {
                let value = match (&e.value, &e.value_from) {
                    (Some(v), _) => v.clone(),
                    (None, Some(from)) => {
                        let r = from.secret_key_ref.as_ref().unwrap();
                        format!("secret:{}/{}", r.name, r.key)
                    }
                    (None, None) => panic!("{} has no value", e.name),
                };
                (e.name.clone(), value)
            })
            .collect()
    }

    #[test]
    fn enabled_rules() {
        // (manifest lines, master, replica)
        let cases: &[(&str, bool, bool)] = &[
            ("", false, false),
            ("  enableConnectionPooler: true\n", true, false),
            ("  enableConnectionPooler: false\n", false, false),
            ("  enableReplicaConnectionPooler: true\n", false, true),
            ("  enableReplicaConnectionPooler: false\n", false, false),
            // A section alone enables the master pooler, even an empty one...
            ("  connectionPooler: {}\n", true, false),
            ("  connectionPooler: {numberOfInstances: 3}\n", true, false),
            // ...unless the flag says otherwise; it never enables the replica pooler.
            (
                "  enableConnectionPooler: false\n  connectionPooler: {mode: session}\n",
                false,
                false,
            ),
            (
                "  enableConnectionPooler: false\n  enableReplicaConnectionPooler: true\n  connectionPooler: {}\n",
                false,
                true,
            ),
            (
                "  enableConnectionPooler: true\n  enableReplicaConnectionPooler: true\n",
                true,
                true,
            ),
            ("  connectionPooler: null\n", false, false),
        ];
        let config = OperatorConfig::default();
        for (lines, master, replica) in cases {
            let pg = with(lines);
            assert_eq!(
                pooler_enabled(&pg, &config, PoolerRole::Master),
                *master,
                "master: {lines}"
            );
            assert_eq!(
                pooler_enabled(&pg, &config, PoolerRole::Replica),
                *replica,
                "replica: {lines}"
            );
            assert_eq!(
                pooler_user(&pg, &config).is_some(),
                *master || *replica,
                "user: {lines}"
            );
        }
    }

    #[test]
    fn names() {
        let pg = minimal();
        assert_eq!(
            pooler_name(&pg, PoolerRole::Master),
            "acid-minimal-cluster-pooler"
        );
        assert_eq!(
            pooler_name(&pg, PoolerRole::Replica),
            "acid-minimal-cluster-pooler-repl"
        );
        assert_eq!(
            pooler_objects_names(&pg),
            [
                (
                    PoolerRole::Master,
                    "acid-minimal-cluster-pooler".to_string()
                ),
                (
                    PoolerRole::Replica,
                    "acid-minimal-cluster-pooler-repl".to_string()
                ),
            ]
        );
        assert_eq!(PoolerRole::Master.as_str(), "master");
        assert_eq!(PoolerRole::Replica.as_str(), "replica");
    }

    #[test]
    fn too_long_names_are_invalid() {
        let config = OperatorConfig::default();
        // 51 + "-pooler-repl" = 63: fits; one more does not (for the replica pooler only).
        let name = format!("acid-{}", "a".repeat(46));
        let mut pg = with("  enableConnectionPooler: true\n");
        pg.metadata.name = Some(name.clone());
        assert!(desired_pooler_deployment(&pg, &config, PoolerRole::Replica).is_ok());
        pg.metadata.name = Some(format!("{name}a"));
        assert!(desired_pooler_deployment(&pg, &config, PoolerRole::Master).is_ok());
        let err = desired_pooler_deployment(&pg, &config, PoolerRole::Replica).unwrap_err();
        assert!(
            matches!(&err, BuildError::Invalid(m) if m.contains("64 characters")),
            "{err}"
        );
    }

    #[test]
    fn pooler_users() {
        let default = OperatorConfig::default();
        let custom = OperatorConfig {
            connection_pooler_user: "bouncer".into(),
            ..OperatorConfig::default()
        };
        // (manifest lines, config, user)
        let cases: &[(&str, &OperatorConfig, Option<&str>)] = &[
            ("", &default, None),
            (
                "  connectionPooler: {user: app_pooler}\n",
                &default,
                Some("app_pooler"),
            ),
            ("  enableConnectionPooler: true\n", &default, Some("pooler")),
            ("  enableConnectionPooler: true\n", &custom, Some("bouncer")),
            (
                "  enableReplicaConnectionPooler: true\n",
                &custom,
                Some("bouncer"),
            ),
            (
                "  connectionPooler: {user: \"\"}\n",
                &custom,
                Some("bouncer"),
            ),
            // System and protected roles are refused.
            (
                "  connectionPooler: {user: postgres}\n",
                &custom,
                Some("bouncer"),
            ),
            (
                "  connectionPooler: {user: standby}\n",
                &custom,
                Some("bouncer"),
            ),
            (
                "  connectionPooler: {user: admin}\n",
                &custom,
                Some("bouncer"),
            ),
            (
                "  enableConnectionPooler: false\n  connectionPooler: {user: app_pooler}\n",
                &default,
                None,
            ),
        ];
        for (lines, config, want) in cases {
            assert_eq!(
                pooler_user(&with(lines), config).as_deref(),
                *want,
                "{lines}"
            );
        }
    }

    #[test]
    fn connection_math() {
        // (numberOfInstances, maxDBConnections in the manifest, config max, want)
        // want: (MAX_DB_CONN, DEFAULT_SIZE, MIN_SIZE, RESERVE_SIZE)
        type Case = (Option<i32>, Option<i32>, i32, (i32, i32, i32, i32));
        let cases: &[Case] = &[
            (None, None, 60, (30, 15, 7, 7)), // config: 2 instances, 60 connections
            (Some(1), None, 60, (60, 30, 15, 15)),
            (Some(2), None, 60, (30, 15, 7, 7)),
            (Some(3), None, 60, (20, 10, 5, 5)),
            (Some(4), None, 60, (15, 7, 3, 3)),
            (Some(7), None, 60, (8, 4, 2, 2)),
            (Some(2), Some(100), 60, (50, 25, 12, 12)),
            (Some(3), Some(10), 60, (3, 1, 0, 0)),
            (None, None, 200, (100, 50, 25, 25)),
            (Some(5), Some(7), 60, (1, 0, 0, 0)),
            // Zalando has no lower bound: more instances than connections gives 0.
            (Some(61), None, 60, (0, 0, 0, 0)),
            (Some(2), Some(0), 60, (0, 0, 0, 0)),
        ];
        for (instances, max, config_max, want) in cases {
            let mut fields = Vec::new();
            if let Some(n) = instances {
                fields.push(format!("numberOfInstances: {n}"));
            }
            if let Some(m) = max {
                fields.push(format!("maxDBConnections: {m}"));
            }
            let pg = with(&format!("  connectionPooler: {{{}}}\n", fields.join(", ")));
            let config = OperatorConfig {
                connection_pooler_max_db_connections: *config_max,
                ..OperatorConfig::default()
            };
            let what = format!("{instances:?} {max:?} {config_max}");
            let sizes = pool_sizes(&pg, &config).unwrap();
            assert_eq!(
                (
                    sizes.max_db_connections,
                    sizes.default_size,
                    sizes.min_size,
                    sizes.reserve_size
                ),
                *want,
                "{what}"
            );
            let deployment = desired_pooler_deployment(&pg, &config, PoolerRole::Master).unwrap();
            let env = env_map(&env_of(&deployment));
            let got = |k: &str| env[k].parse::<i32>().unwrap();
            assert_eq!(
                (
                    got("CONNECTION_POOLER_MAX_DB_CONN"),
                    got("CONNECTION_POOLER_DEFAULT_SIZE"),
                    got("CONNECTION_POOLER_MIN_SIZE"),
                    got("CONNECTION_POOLER_RESERVE_SIZE")
                ),
                *want,
                "{what}"
            );
            assert_eq!(env["CONNECTION_POOLER_MAX_CLIENT_CONN"], "10000");
            assert_eq!(
                deployment.spec.unwrap().replicas,
                Some(instances.unwrap_or(2)),
                "{what}"
            );
        }
        // The configured number of instances divides too.
        let config = OperatorConfig {
            connection_pooler_number_of_instances: 3,
            ..OperatorConfig::default()
        };
        let pg = with("  enableConnectionPooler: true\n");
        assert_eq!(pool_sizes(&pg, &config).unwrap().max_db_connections, 20);
        assert_eq!(pooler_instances(&pg, &config), 3);
        // Fewer than one instance (the CRD forbids it) counts as one.
        let pg = with("  connectionPooler: {numberOfInstances: 0}\n");
        assert_eq!(pooler_instances(&pg, &config), 1);
        assert_eq!(pool_sizes(&pg, &config).unwrap().max_db_connections, 60);
        // Negative connection limits are refused.
        let pg = with("  connectionPooler: {maxDBConnections: -1}\n");
        assert!(matches!(
            pool_sizes(&pg, &config),
            Err(BuildError::Invalid(_))
        ));
        let negative = OperatorConfig {
            connection_pooler_max_db_connections: -5,
            ..OperatorConfig::default()
        };
        let pg = with("  enableConnectionPooler: true\n");
        assert!(matches!(
            desired_pooler_deployment(&pg, &negative, PoolerRole::Master),
            Err(BuildError::Config(_))
        ));
    }

    #[test]
    fn environment_for_both_roles() {
        let config = OperatorConfig::default();
        let pg = with("  enableConnectionPooler: true\n  enableReplicaConnectionPooler: true\n");
        let secret = "secret:pooler.acid-minimal-cluster.credentials.postgresql.acid.zalan.do";
        for (role, host) in [
            (PoolerRole::Master, "acid-minimal-cluster"),
            (PoolerRole::Replica, "acid-minimal-cluster-repl"),
        ] {
            let deployment = desired_pooler_deployment(&pg, &config, role).unwrap();
            let env = env_of(&deployment);
            let names: Vec<&str> = env.iter().map(|e| e.name.as_str()).collect();
            assert_eq!(
                names,
                [
                    "PGHOST",
                    "PGPORT",
                    "PGUSER",
                    "PGSCHEMA",
                    "PGPASSWORD",
                    "CONNECTION_POOLER_PORT",
                    "CONNECTION_POOLER_MODE",
                    "CONNECTION_POOLER_DEFAULT_SIZE",
                    "CONNECTION_POOLER_MIN_SIZE",
                    "CONNECTION_POOLER_RESERVE_SIZE",
                    "CONNECTION_POOLER_MAX_CLIENT_CONN",
                    "CONNECTION_POOLER_MAX_DB_CONN",
                ],
                "Zalando's order"
            );
            assert_eq!(
                env_map(&env),
                map(&[
                    ("PGHOST", host),
                    ("PGPORT", "5432"),
                    ("PGUSER", &format!("{secret}/username")),
                    ("PGSCHEMA", "pooler"),
                    ("PGPASSWORD", &format!("{secret}/password")),
                    ("CONNECTION_POOLER_PORT", "5432"),
                    ("CONNECTION_POOLER_MODE", "transaction"),
                    ("CONNECTION_POOLER_DEFAULT_SIZE", "15"),
                    ("CONNECTION_POOLER_MIN_SIZE", "7"),
                    ("CONNECTION_POOLER_RESERVE_SIZE", "7"),
                    ("CONNECTION_POOLER_MAX_CLIENT_CONN", "10000"),
                    ("CONNECTION_POOLER_MAX_DB_CONN", "30"),
                ]),
                "{role:?}"
            );
            // PGHOST is the name of the Service the cluster's builder makes for the role.
            assert_eq!(host, service_name(&pg, role.as_str()));
        }
    }

    #[test]
    fn section_overrides_settings() {
        let config = OperatorConfig {
            connection_pooler_schema: "config_schema".into(),
            connection_pooler_mode: "session".into(),
            connection_pooler_image: "example.com/pgbouncer:1".into(),
            secret_name_template: "{cluster}-{username}".into(),
            ..OperatorConfig::default()
        };
        let from_config = with("  enableConnectionPooler: true\n");
        let deployment =
            desired_pooler_deployment(&from_config, &config, PoolerRole::Master).unwrap();
        let env = env_map(&env_of(&deployment));
        assert_eq!(env["PGSCHEMA"], "config_schema");
        assert_eq!(env["CONNECTION_POOLER_MODE"], "session");
        assert_eq!(env["PGUSER"], "secret:acid-minimal-cluster-pooler/username");
        assert_eq!(
            container(&deployment).image.as_deref(),
            Some("example.com/pgbouncer:1")
        );

        let from_section = with(
            "  connectionPooler:\n    schema: app_schema\n    mode: transaction\n    user: app_pooler\n    dockerImage: example.com/pgbouncer:2\n",
        );
        let deployment =
            desired_pooler_deployment(&from_section, &config, PoolerRole::Master).unwrap();
        let env = env_map(&env_of(&deployment));
        assert_eq!(env["PGSCHEMA"], "app_schema");
        assert_eq!(env["CONNECTION_POOLER_MODE"], "transaction");
        assert_eq!(
            env["PGPASSWORD"],
            "secret:acid-minimal-cluster-app-pooler/password"
        );
        assert_eq!(
            container(&deployment).image.as_deref(),
            Some("example.com/pgbouncer:2")
        );

        // Empty strings in the section fall back to the settings.
        let empty = with("  connectionPooler: {schema: \"\", mode: \"\", dockerImage: \"\"}\n");
        let deployment = desired_pooler_deployment(&empty, &config, PoolerRole::Master).unwrap();
        let env = env_map(&env_of(&deployment));
        assert_eq!(env["PGSCHEMA"], "config_schema");
        assert_eq!(env["CONNECTION_POOLER_MODE"], "session");
        assert_eq!(
            container(&deployment).image.as_deref(),
            Some("example.com/pgbouncer:1")
        );

        // The user refused for being a system role is also the one the pods log in as.
        let superuser = with("  connectionPooler: {user: postgres}\n");
        let deployment =
            desired_pooler_deployment(&superuser, &config, PoolerRole::Master).unwrap();
        assert_eq!(
            env_map(&env_of(&deployment))["PGUSER"],
            "secret:acid-minimal-cluster-pooler/username"
        );
    }

    #[test]
    fn default_image_runs_as_pgbouncer_in_the_local_kubelet() {
        // The local kubelet runs an image as pgbouncer when the last segment of its name
        // starts with "pgbouncer"; Zalando's image and pgop's default both do.
        let default = OperatorConfig::default().connection_pooler_image;
        for image in [
            default.as_str(),
            "ghcr.io/zalando/postgres-operator/pgbouncer:v2.0.1",
            "registry.opensource.zalan.do/acid/pgbouncer",
        ] {
            let name = image.rsplit('/').next().unwrap();
            assert!(name.starts_with("pgbouncer"), "{image}");
        }
    }

    #[test]
    fn deployment_shape() {
        let config = OperatorConfig::default();
        let pg = with("  enableConnectionPooler: true\n");
        let deployment = desired_pooler_deployment(&pg, &config, PoolerRole::Master).unwrap();
        assert_eq!(
            deployment.metadata.name.as_deref(),
            Some("acid-minimal-cluster-pooler")
        );
        assert_eq!(deployment.metadata.namespace.as_deref(), Some("default"));
        assert!(deployment.metadata.annotations.is_none());
        let spec = deployment.spec.as_ref().unwrap();
        assert_eq!(spec.replicas, Some(2));
        assert!(spec.strategy.is_none(), "Kubernetes' rolling update");

        let c = container(&deployment);
        assert_eq!(c.name, "connection-pooler");
        assert_eq!(
            c.image.as_deref(),
            Some(config.connection_pooler_image.as_str())
        );
        assert_eq!(c.image_pull_policy.as_deref(), Some("IfNotPresent"));
        assert_eq!(
            c.ports,
            Some(vec![ContainerPort {
                container_port: 5432,
                protocol: Some("TCP".into()),
                ..ContainerPort::default()
            }])
        );
        assert_eq!(
            c.readiness_probe,
            Some(Probe {
                tcp_socket: Some(TCPSocketAction {
                    port: IntOrString::Int(5432),
                    host: None,
                }),
                ..Probe::default()
            })
        );
        assert_eq!(
            c.security_context,
            Some(SecurityContext {
                allow_privilege_escalation: Some(false),
                ..SecurityContext::default()
            })
        );
        assert_eq!(c.resources, Some(ResourceRequirements::default()));
        assert!(c.volume_mounts.is_none());

        let pod = pod_spec(&deployment);
        assert_eq!(pod.service_account_name.as_deref(), Some("postgres-pod"));
        assert_eq!(pod.termination_grace_period_seconds, Some(300));
        assert_eq!(
            pod.security_context,
            Some(PodSecurityContext {
                run_as_user: Some(100),
                run_as_group: Some(101),
                ..PodSecurityContext::default()
            })
        );
        assert!(pod.tolerations.is_none());
        assert!(pod.affinity.is_none());
        assert!(pod.volumes.is_none());
        assert!(pod.priority_class_name.is_none());
    }

    #[test]
    fn labels_and_selectors() {
        let mut pg =
            with("  enableConnectionPooler: true\n  enableReplicaConnectionPooler: true\n");
        pg.metadata.labels = Some(map(&[("environment", "demo"), ("private", "x")]));
        let config = OperatorConfig {
            inherited_labels: vec!["environment".into()],
            cluster_labels: map(&[("application", "spilo"), ("tier", "db")]),
            ..OperatorConfig::default()
        };
        for (role, name, role_value) in [
            (PoolerRole::Master, "acid-minimal-cluster-pooler", "master"),
            (
                PoolerRole::Replica,
                "acid-minimal-cluster-pooler-repl",
                "replica",
            ),
        ] {
            let selector = map(&[
                ("application", "db-connection-pooler"),
                ("tier", "db"),
                ("cluster-name", "acid-minimal-cluster"),
                ("connection-pooler", name),
            ]);
            let labels = map(&[
                ("application", "db-connection-pooler"),
                ("tier", "db"),
                ("cluster-name", "acid-minimal-cluster"),
                ("connection-pooler", name),
                ("team", "ACID"),
                ("environment", "demo"),
                ("spilo-role", role_value),
            ]);
            assert_eq!(pooler_selector(&pg, &config, role), selector);
            assert_eq!(pooler_labels(&pg, &config, role), labels);

            let deployment = desired_pooler_deployment(&pg, &config, role).unwrap();
            let spec = deployment.spec.as_ref().unwrap();
            assert_eq!(deployment.metadata.labels.as_ref(), Some(&labels));
            assert_eq!(spec.selector.match_labels.as_ref(), Some(&selector));
            let template_labels = spec.template.metadata.as_ref().unwrap().labels.clone();
            assert_eq!(template_labels.as_ref(), Some(&labels));
            // The selector matches the pods.
            assert!(selector.iter().all(|(k, v)| labels.get(k) == Some(v)));

            let service = desired_pooler_service(&pg, &config, role);
            assert_eq!(service.metadata.name.as_deref(), Some(name));
            assert_eq!(service.metadata.labels.as_ref(), Some(&selector));
            let service_selector = service.spec.unwrap().selector.unwrap();
            assert_eq!(service_selector, map(&[("connection-pooler", name)]));
            assert!(service_selector
                .iter()
                .all(|(k, v)| labels.get(k) == Some(v)));
        }

        // A custom cluster label key keeps its value next to Zalando's `application`; custom
        // name and role label keys are used.
        let config = OperatorConfig {
            cluster_labels: map(&[("app", "spilo")]),
            cluster_name_label: "cluster".into(),
            pod_role_label: "role".into(),
            ..OperatorConfig::default()
        };
        assert_eq!(
            pooler_labels(&pg, &config, PoolerRole::Master),
            map(&[
                ("app", "spilo"),
                ("application", "db-connection-pooler"),
                ("cluster", "acid-minimal-cluster"),
                ("connection-pooler", "acid-minimal-cluster-pooler"),
                ("team", "ACID"),
                ("role", "master"),
            ])
        );
    }

    #[test]
    fn annotations() {
        let mut pg = with(
            "  enableConnectionPooler: true\n  podAnnotations: {pod: p}\n  serviceAnnotations: {svc: s}\n  masterServiceAnnotations: {master: m}\n  replicaServiceAnnotations: {replica: r}\n",
        );
        pg.metadata.annotations = Some(map(&[("owner", "db-team"), ("other", "y")]));
        let config = OperatorConfig {
            inherited_annotations: vec!["owner".into()],
            custom_pod_annotations: map(&[("custom-pod", "c")]),
            custom_service_annotations: map(&[("custom-svc", "c")]),
            enable_master_pooler_load_balancer: false,
            ..OperatorConfig::default()
        };
        let deployment = desired_pooler_deployment(&pg, &config, PoolerRole::Master).unwrap();
        assert_eq!(
            deployment.metadata.annotations,
            Some(map(&[("owner", "db-team")]))
        );
        assert_eq!(
            deployment
                .spec
                .unwrap()
                .template
                .metadata
                .unwrap()
                .annotations,
            Some(map(&[
                ("custom-pod", "c"),
                ("pod", "p"),
                ("owner", "db-team")
            ]))
        );
        let master = desired_pooler_service(&pg, &config, PoolerRole::Master);
        assert_eq!(
            master.metadata.annotations,
            Some(map(&[
                ("custom-svc", "c"),
                ("svc", "s"),
                ("master", "m"),
                ("owner", "db-team")
            ]))
        );
        let replica = desired_pooler_service(&pg, &config, PoolerRole::Replica);
        assert_eq!(
            replica.metadata.annotations,
            Some(map(&[
                ("custom-svc", "c"),
                ("svc", "s"),
                ("replica", "r"),
                ("owner", "db-team")
            ]))
        );
    }

    #[test]
    fn owner_references_and_downscaler_annotations() {
        let mut pg = with("  enableConnectionPooler: true\n");
        pg.metadata.uid = Some("0b1c-uid".into());
        pg.metadata.annotations = Some(map(&[("downscaler/downtime_replicas", "0")]));
        let config = OperatorConfig {
            enable_owner_references: true,
            downscaler_annotations: vec!["downscaler/.*".into()],
            ..OperatorConfig::default()
        };
        let deployment = desired_pooler_deployment(&pg, &config, PoolerRole::Master).unwrap();
        let service = desired_pooler_service(&pg, &config, PoolerRole::Master);
        for owners in [
            &deployment.metadata.owner_references,
            &service.metadata.owner_references,
        ] {
            let owner = &owners.as_ref().unwrap()[0];
            assert_eq!(
                (owner.kind.as_str(), owner.name.as_str(), owner.uid.as_str()),
                ("postgresql", "acid-minimal-cluster", "0b1c-uid")
            );
        }
        // The downscaler's annotations go to the Deployment only.
        assert_eq!(
            deployment.metadata.annotations,
            Some(map(&[("downscaler/downtime_replicas", "0")]))
        );
        let template = deployment.spec.unwrap().template.metadata.unwrap();
        assert!(template.annotations.is_none());
        assert!(service.metadata.annotations.is_none());

        let without = OperatorConfig::default();
        let deployment = desired_pooler_deployment(&pg, &without, PoolerRole::Master).unwrap();
        assert!(deployment.metadata.owner_references.is_none());
        assert!(deployment.metadata.annotations.is_none());
    }

    #[test]
    fn node_port_problems() {
        let config = OperatorConfig::default();
        let cases: &[(&str, usize)] = &[
            ("", 0),
            ("  enableMasterPoolerNodePort: true\n  masterPoolerNodePort: 30432\n", 0),
            ("  enableMasterPoolerNodePort: true\n  masterPoolerNodePort: 70000\n", 1),
            ("  enableMasterPoolerNodePort: true\n  masterPoolerNodePort: -1\n", 1),
            // Without the switch the port is not used.
            ("  masterPoolerNodePort: 70000\n", 0),
            (
                "  enableMasterPoolerNodePort: true\n  masterPoolerNodePort: 30432\n  enableReplicaPoolerNodePort: true\n  replicaPoolerNodePort: 30432\n",
                1,
            ),
            (
                "  enableMasterNodePort: true\n  masterNodePort: 30432\n  enableReplicaPoolerNodePort: true\n  replicaPoolerNodePort: 30432\n",
                1,
            ),
            (
                "  enableMasterPoolerNodePort: true\n  enableReplicaPoolerNodePort: true\n  masterPoolerNodePort: 0\n",
                0,
            ),
        ];
        for (lines, want) in cases {
            let problems = pooler_node_port_problems(&with(lines), &config);
            assert_eq!(problems.len(), *want, "{lines}: {problems:?}");
        }
    }

    #[test]
    fn service_types() {
        let master_lb = OperatorConfig {
            enable_master_pooler_load_balancer: true,
            ..OperatorConfig::default()
        };
        let replica_lb = OperatorConfig {
            enable_replica_pooler_load_balancer: true,
            ..OperatorConfig::default()
        };
        let default = OperatorConfig::default();
        use PoolerExposure::*;
        // (manifest lines, config, master, replica)
        let cases: &[(&str, &OperatorConfig, PoolerExposure, PoolerExposure)] = &[
            ("", &default, ClusterIp, ClusterIp),
            // The cluster's own load balancer switches do not apply to poolers.
            (
                "  enableMasterLoadBalancer: true\n  enableReplicaLoadBalancer: true\n",
                &default,
                ClusterIp,
                ClusterIp,
            ),
            ("", &master_lb, LoadBalancer, ClusterIp),
            ("", &replica_lb, ClusterIp, LoadBalancer),
            (
                "  enableMasterPoolerLoadBalancer: false\n",
                &master_lb,
                ClusterIp,
                ClusterIp,
            ),
            (
                "  enableMasterPoolerLoadBalancer: true\n  enableReplicaPoolerLoadBalancer: true\n",
                &default,
                LoadBalancer,
                LoadBalancer,
            ),
            (
                "  enableReplicaPoolerLoadBalancer: false\n",
                &replica_lb,
                ClusterIp,
                ClusterIp,
            ),
            (
                "  enableMasterPoolerNodePort: true\n",
                &default,
                NodePort(None),
                ClusterIp,
            ),
            (
                "  enableReplicaPoolerNodePort: true\n  replicaPoolerNodePort: 30433\n",
                &default,
                ClusterIp,
                NodePort(Some(30433)),
            ),
            // A node port overrides the load balancer; port 0 lets Kubernetes pick.
            (
                "  enableMasterPoolerNodePort: true\n  masterPoolerNodePort: 0\n  enableMasterPoolerLoadBalancer: true\n",
                &default,
                NodePort(None),
                ClusterIp,
            ),
            (
                "  enableMasterPoolerNodePort: true\n  masterPoolerNodePort: 30432\n",
                &master_lb,
                NodePort(Some(30432)),
                ClusterIp,
            ),
            // A port without the switch does nothing.
            (
                "  masterPoolerNodePort: 30432\n  enableMasterPoolerNodePort: false\n",
                &master_lb,
                LoadBalancer,
                ClusterIp,
            ),
        ];
        for (lines, config, master, replica) in cases {
            let pg = with(lines);
            for (role, want) in [(PoolerRole::Master, master), (PoolerRole::Replica, replica)] {
                assert_eq!(
                    pooler_exposure(&pg, config, role),
                    *want,
                    "{role:?}: {lines}"
                );
                let spec = desired_pooler_service(&pg, config, role).spec.unwrap();
                let (type_, node_port) = match want {
                    ClusterIp => ("ClusterIP", None),
                    LoadBalancer => ("LoadBalancer", None),
                    NodePort(port) => ("NodePort", *port),
                };
                assert_eq!(spec.type_.as_deref(), Some(type_), "{role:?}: {lines}");
                let port = &spec.ports.as_ref().unwrap()[0];
                assert_eq!(port.node_port, node_port, "{role:?}: {lines}");
                assert_eq!(
                    spec.load_balancer_source_ranges.is_some(),
                    *want == LoadBalancer,
                    "{role:?}: {lines}"
                );
            }
        }
    }

    #[test]
    fn cluster_ip_service_shape() {
        let pg = with("  enableConnectionPooler: true\n");
        let service = desired_pooler_service(&pg, &OperatorConfig::default(), PoolerRole::Master);
        assert_eq!(service.metadata.namespace.as_deref(), Some("default"));
        assert!(service.metadata.annotations.is_none());
        let spec = service.spec.unwrap();
        assert_eq!(
            spec.ports,
            Some(vec![ServicePort {
                name: Some("acid-minimal-cluster-pooler".into()),
                port: 5432,
                target_port: Some(IntOrString::Int(5432)),
                protocol: Some("TCP".into()),
                ..ServicePort::default()
            }])
        );
        assert!(spec.external_traffic_policy.is_none());
        assert!(spec.load_balancer_source_ranges.is_none());
    }

    #[test]
    fn load_balancer_services() {
        let pg = with(
            "  enableConnectionPooler: true\n  enableReplicaPoolerLoadBalancer: true\n  allowedSourceRanges: [10.0.0.0/8]\n  replicaServiceAnnotations: {service.beta.kubernetes.io/aws-load-balancer-connection-idle-timeout: \"60\"}\n",
        );
        let config = OperatorConfig {
            enable_master_pooler_load_balancer: true,
            external_traffic_policy: "Local".into(),
            ..OperatorConfig::default()
        };
        let master = desired_pooler_service(&pg, &config, PoolerRole::Master);
        let spec = master.spec.unwrap();
        assert_eq!(spec.type_.as_deref(), Some("LoadBalancer"));
        assert_eq!(
            spec.load_balancer_source_ranges,
            Some(vec!["10.0.0.0/8".to_string()])
        );
        assert_eq!(spec.external_traffic_policy.as_deref(), Some("Local"));
        let annotations = master.metadata.annotations.unwrap();
        assert_eq!(
            annotations[DNS_NAME_ANNOTATION], "acid-minimal-cluster-pooler.default.db.example.com",
            "no legacy name for poolers"
        );
        assert_eq!(annotations[ELB_TIMEOUT_ANNOTATION], "3600");

        let replica = desired_pooler_service(&pg, &config, PoolerRole::Replica);
        let annotations = replica.metadata.annotations.unwrap();
        assert_eq!(
            annotations[DNS_NAME_ANNOTATION],
            "acid-minimal-cluster-pooler-repl.default.db.example.com"
        );
        assert_eq!(
            annotations[ELB_TIMEOUT_ANNOTATION], "60",
            "manifest value kept"
        );

        // Without source ranges the load balancer is only reachable from itself.
        let pg = with("  enableMasterPoolerLoadBalancer: true\n");
        let spec = desired_pooler_service(&pg, &OperatorConfig::default(), PoolerRole::Master)
            .spec
            .unwrap();
        assert_eq!(
            spec.load_balancer_source_ranges,
            Some(vec!["127.0.0.1/32".to_string()])
        );

        // A node port Service gets the traffic policy but no load balancer annotations.
        let pg =
            with("  enableMasterPoolerNodePort: true\n  enableMasterPoolerLoadBalancer: true\n");
        let service = desired_pooler_service(&pg, &config, PoolerRole::Master);
        assert!(service.metadata.annotations.is_none());
        let spec = service.spec.unwrap();
        assert_eq!(spec.external_traffic_policy.as_deref(), Some("Local"));
        assert!(spec.load_balancer_source_ranges.is_none());
    }

    #[test]
    fn resources() {
        let config = OperatorConfig {
            connection_pooler_default_cpu_request: Some("500m".into()),
            connection_pooler_default_memory_request: Some("100Mi".into()),
            connection_pooler_default_cpu_limit: Some("1".into()),
            connection_pooler_default_memory_limit: Some("100Mi".into()),
            ..OperatorConfig::default()
        };
        let quantities = |pairs: &[(&str, &str)]| {
            Some(
                pairs
                    .iter()
                    .map(|(k, v)| (k.to_string(), Quantity(v.to_string())))
                    .collect::<BTreeMap<_, _>>(),
            )
        };
        let resources_of = |pg: &Postgresql, config: &OperatorConfig| {
            desired_pooler_deployment(pg, config, PoolerRole::Master)
                .map(|d| container(&d).resources.clone().unwrap())
        };

        let defaults = resources_of(&with("  enableConnectionPooler: true\n"), &config).unwrap();
        assert_eq!(
            defaults.requests,
            quantities(&[("cpu", "500m"), ("memory", "100Mi")])
        );
        assert_eq!(
            defaults.limits,
            quantities(&[("cpu", "1"), ("memory", "100Mi")])
        );

        // The section wins per value; "0" means unset; limits are raised to the requests.
        let pg = with(
            "  connectionPooler:\n    resources:\n      requests: {cpu: 300m, memory: 200Mi}\n      limits: {cpu: \"0\", hugepages-2Mi: 2Mi}\n",
        );
        let custom = resources_of(&pg, &config).unwrap();
        assert_eq!(
            custom.requests,
            quantities(&[("cpu", "300m"), ("memory", "200Mi")])
        );
        assert_eq!(
            custom.limits,
            quantities(&[("cpu", "1"), ("memory", "200Mi"), ("hugepages-2Mi", "2Mi")])
        );

        // The memory request follows its limit when asked; min/max thresholds do not apply.
        let to_limit = OperatorConfig {
            set_memory_request_to_limit: true,
            connection_pooler_default_memory_limit: Some("1Gi".into()),
            min_cpu_limit: Some("2".into()),
            max_memory_request: Some("10Mi".into()),
            ..config.clone()
        };
        let raised = resources_of(&with("  enableConnectionPooler: true\n"), &to_limit).unwrap();
        assert_eq!(
            raised.requests,
            quantities(&[("cpu", "500m"), ("memory", "1Gi")])
        );
        assert_eq!(
            raised.limits,
            quantities(&[("cpu", "1"), ("memory", "1Gi")])
        );

        // Not quantities: the manifest is invalid, or the configuration.
        let bad = with("  connectionPooler:\n    resources:\n      requests: {cpu: lots}\n");
        assert!(matches!(
            resources_of(&bad, &config),
            Err(BuildError::Invalid(m)) if m.contains("connectionPooler.resources.requests.cpu")
        ));
        let bad_config = OperatorConfig {
            connection_pooler_default_memory_limit: Some("much".into()),
            ..config.clone()
        };
        assert!(matches!(
            resources_of(&with("  enableConnectionPooler: true\n"), &bad_config),
            Err(BuildError::Config(m)) if m.contains("connection_pooler_default_memory_limit")
        ));
    }

    #[test]
    fn scheduling_and_security() {
        let pg = with(
            "  enableConnectionPooler: true\n  spiloFSGroup: 103\n  tolerations:\n  - {key: postgres, operator: Exists, effect: NoSchedule}\n  nodeAffinity:\n    requiredDuringSchedulingIgnoredDuringExecution:\n      nodeSelectorTerms:\n      - matchExpressions:\n        - {key: zone, operator: In, values: [a]}\n",
        );
        let config = OperatorConfig {
            enable_pod_antiaffinity: true,
            spilo_fsgroup: Some(1000),
            spilo_runasuser: Some(101),
            node_readiness_label: map(&[("ready", "true")]),
            ..OperatorConfig::default()
        };
        let deployment = desired_pooler_deployment(&pg, &config, PoolerRole::Replica).unwrap();
        let pod = pod_spec(&deployment);
        let security = pod.security_context.as_ref().unwrap();
        assert_eq!(
            (
                security.run_as_user,
                security.run_as_group,
                security.fs_group
            ),
            (Some(100), Some(101), Some(103)),
            "pgbouncer's user; the manifest's fsGroup"
        );
        let tolerations = pod.tolerations.as_ref().unwrap();
        assert_eq!(tolerations.len(), 1);
        assert_eq!(tolerations[0].key.as_deref(), Some("postgres"));

        let affinity = pod.affinity.as_ref().unwrap();
        let terms = &affinity
            .node_affinity
            .as_ref()
            .unwrap()
            .required_during_scheduling_ignored_during_execution
            .as_ref()
            .unwrap()
            .node_selector_terms;
        assert_eq!(terms.len(), 2, "readiness labels as an OR term");
        let anti = affinity.pod_anti_affinity.as_ref().unwrap();
        let term = &anti
            .required_during_scheduling_ignored_during_execution
            .as_ref()
            .unwrap()[0];
        assert_eq!(term.topology_key, "kubernetes.io/hostname");
        assert_eq!(
            term.label_selector.as_ref().unwrap().match_labels.as_ref(),
            Some(&pooler_selector(&pg, &config, PoolerRole::Replica))
        );

        // Preferred anti-affinity; the setting's toleration and fsGroup without manifest ones.
        let pg = with("  enableConnectionPooler: true\n");
        let config = OperatorConfig {
            enable_pod_antiaffinity: true,
            pod_antiaffinity_preferred_during_scheduling: true,
            spilo_fsgroup: Some(1000),
            toleration: map(&[("key", "dedicated"), ("operator", "Exists")]),
            ..OperatorConfig::default()
        };
        let deployment = desired_pooler_deployment(&pg, &config, PoolerRole::Master).unwrap();
        let pod = pod_spec(&deployment);
        assert_eq!(pod.security_context.as_ref().unwrap().fs_group, Some(1000));
        assert_eq!(
            pod.tolerations.as_ref().unwrap()[0].key.as_deref(),
            Some("dedicated")
        );
        let affinity = pod.affinity.as_ref().unwrap();
        assert!(affinity.node_affinity.is_none());
        let preferred = affinity
            .pod_anti_affinity
            .as_ref()
            .unwrap()
            .preferred_during_scheduling_ignored_during_execution
            .as_ref()
            .unwrap();
        assert_eq!(preferred[0].weight, 1);
    }

    #[test]
    fn tls() {
        let pg = with(
            "  enableConnectionPooler: true\n  tls:\n    secretName: pg-tls\n    caFile: ca.crt\n    caSecretName: pg-ca\n    privateKeyFile: /keys/k.pem\n",
        );
        let deployment =
            desired_pooler_deployment(&pg, &OperatorConfig::default(), PoolerRole::Master).unwrap();
        let env = env_map(&env_of(&deployment));
        assert_eq!(env["CONNECTION_POOLER_CLIENT_TLS_CRT"], "/tls/tls.crt");
        assert_eq!(env["CONNECTION_POOLER_CLIENT_TLS_KEY"], "/keys/k.pem");
        assert_eq!(env["CONNECTION_POOLER_CLIENT_CA_FILE"], "/tlsca/ca.crt");
        let mounts: Vec<(String, String)> = container(&deployment)
            .volume_mounts
            .iter()
            .flatten()
            .map(|m| (m.name.clone(), m.mount_path.clone()))
            .collect();
        assert_eq!(
            mounts,
            [
                ("pg-tls".to_string(), "/tls".to_string()),
                ("pg-ca".to_string(), "/tlsca".to_string())
            ]
        );
        let volumes = pod_spec(&deployment).volumes.as_ref().unwrap();
        let secret = volumes[0].secret.as_ref().unwrap();
        assert_eq!(secret.secret_name.as_deref(), Some("pg-tls"));
        assert_eq!(secret.default_mode, Some(0o640));

        // The CA in the certificate Secret; no CA file, no CA variable.
        let pg =
            with("  enableConnectionPooler: true\n  tls: {secretName: pg-tls, caFile: ca.crt}\n");
        let deployment =
            desired_pooler_deployment(&pg, &OperatorConfig::default(), PoolerRole::Master).unwrap();
        assert_eq!(
            env_map(&env_of(&deployment))["CONNECTION_POOLER_CLIENT_CA_FILE"],
            "/tls/ca.crt"
        );
        assert_eq!(pod_spec(&deployment).volumes.as_ref().unwrap().len(), 1);
        let pg = with("  enableConnectionPooler: true\n  tls: {secretName: pg-tls}\n");
        let deployment =
            desired_pooler_deployment(&pg, &OperatorConfig::default(), PoolerRole::Master).unwrap();
        assert!(!env_map(&env_of(&deployment)).contains_key("CONNECTION_POOLER_CLIENT_CA_FILE"));
    }

    #[test]
    fn corpus_manifests_build_with_poolers() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let config = OperatorConfig::default();
        for file in [
            root.join("../manifests/complete-postgres-manifest.yaml"),
            root.join("../manifests/minimal-postgres-manifest.yaml"),
        ] {
            let text = std::fs::read_to_string(&file).unwrap();
            let mut pg: Postgresql = serde_yaml::from_str(&text).unwrap();
            pg.metadata.namespace = Some("default".into());
            pg.spec.enable_connection_pooler = Some(true);
            pg.spec.enable_replica_connection_pooler = Some(true);
            for role in PoolerRole::ALL {
                let what = format!("{}: {role:?}", file.display());
                let deployment = desired_pooler_deployment(&pg, &config, role)
                    .unwrap_or_else(|e| panic!("{what}: {e}"));
                let service = desired_pooler_service(&pg, &config, role);
                assert_eq!(deployment.metadata.name, service.metadata.name, "{what}");
            }
        }
    }
}
