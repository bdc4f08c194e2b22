//! The logical backup CronJob of a cluster with `enableLogicalBackup: true`, as Zalando's
//! `generateLogicalBackupJob` builds it: on `logicalBackupSchedule` (else
//! `logical_backup_schedule`), one pod at a time (`concurrencyPolicy: Forbid`) runs
//! `logical_backup_docker_image`, whose script finds a replica (else the master) through
//! the Kubernetes API, `pg_dumpall`s it and uploads the dump to S3, GCS or Azure.
//!
//! Differences from Zalando, on purpose:
//! - `logical_backup_cronjob_environment_secret` is passed as `envFrom` (Zalando reads the
//!   Secret and lists each of its keys as a `secretKeyRef`): a builder does no I/O, and the
//!   job then sees keys added to the Secret later. One consequence: Kubernetes lets `env`
//!   win over `envFrom`, so a variable the operator sets itself (e.g. `AWS_ACCESS_KEY_ID`
//!   from the configuration) is no longer overridden by the Secret's.
//! - `PGHOST` is set to the master Service. Zalando's backup script replaces it with the
//!   address of the pod it picks, so this only matters for images that do not.
//! - `PGDATABASE` is `postgres`, which always exists; Zalando sets the superuser's name
//!   (the same with the default `super_username`).
//! - Schedules are checked against the pattern of Zalando's CRDs (pgop's CRD does not
//!   carry it): a bad `logicalBackupSchedule` makes the manifest invalid, a bad
//!   `logical_backup_schedule` is a configuration error.
//!
//! Credentials: like Zalando, `logical_backup_s3_access_key_id`,
//! `logical_backup_s3_secret_access_key` and `logical_backup_azure_storage_account_key`
//! become plain `value`s of the CronJob's environment when they are set, readable by
//! anyone who may read CronJobs in the cluster's namespace. Prefer leaving them unset and
//! providing the variables through `logical_backup_cronjob_environment_secret` (or
//! workload identity: `kube_iam_role`, a service account with an IAM role).
//!
//! Not covered: Zalando's newest settings `logical_backup_successful_jobs_history_limit`,
//! `logical_backup_failed_jobs_history_limit` (their defaults, 3 and 3, are fixed here) and
//! `logical_backup_ttl_seconds_after_finished` (default 86400 s; left out: Kubernetes 1.20
//! drops `ttlSecondsAfterFinished` unless its alpha feature gate is on, so the CronJob would
//! differ from the live one at every comparison); owner references.
//!
//! The PostgreSQL password is never inlined: `PGPASSWORD` references the superuser's
//! credentials Secret.
use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::{CronJob, CronJobSpec, JobSpec, JobTemplateSpec};
use k8s_openapi::api::core::v1::{
    Affinity, Container, ContainerPort, EnvFromSource, EnvVar, EnvVarSource, NodeAffinity,
    NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, ObjectFieldSelector, PodAffinity,
    PodAffinityTerm, PodSecurityContext, PodSpec, PodTemplateSpec, ResourceRequirements,
    SecretEnvSource, SecretKeySelector, SecretVolumeSource, SecurityContext, Volume, VolumeMount,
    WeightedPodAffinityTerm,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use pgop_common::config::{OperatorConfig, SecretValue};
use pgop_common::crd::Postgresql;

use super::labels::{inherited_annotations, object_labels, MASTER_ROLE};
use super::secrets::secret_name;
use super::services::service_name;
use super::spilo_env::POSTGRES_PORT;
use super::statefulset::tolerations;
use super::statefulset::PATRONI_PORT;
use super::{cluster_name, non_empty, object_meta, quantity, BuildError};

/// Name of the backup container.
pub const LOGICAL_BACKUP_CONTAINER: &str = "logical-backup";
/// The `application` label of the backup pods, which replaces `cluster_labels`' own.
pub const LOGICAL_BACKUP_APPLICATION: &str = "spilo-logical-backup";
const APPLICATION_LABEL: &str = "application";
/// CronJob names are limited to 52 characters: the Jobs get an 11-character suffix.
pub const JOB_NAME_MAX_LENGTH: usize = 52;
/// Port of Spilo's own API, which Zalando's container template also exposes.
const SPILO_API_PORT: i32 = 8080;
const HOSTNAME_TOPOLOGY_KEY: &str = "kubernetes.io/hostname";
const KUBE_IAM_ANNOTATION: &str = "iam.amazonaws.com/role";
/// Finished Jobs kept: the defaults of Zalando's `logical_backup_successful_jobs_history_limit`
/// and `logical_backup_failed_jobs_history_limit` (Kubernetes keeps only one failed Job).
const SUCCESSFUL_JOBS_HISTORY_LIMIT: i32 = 3;
const FAILED_JOBS_HISTORY_LIMIT: i32 = 3;

/// `{logical_backup_job_prefix}{cluster}`, cut to 52 characters and then stripped of
/// trailing dashes, as Zalando's `getLogicalBackupJobName` does.
pub fn logical_backup_job_name(config: &OperatorConfig, cluster: &str) -> String {
    let name = format!("{}{cluster}", config.logical_backup_job_prefix);
    if name.len() <= JOB_NAME_MAX_LENGTH {
        return name;
    }
    let mut end = JOB_NAME_MAX_LENGTH;
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    name[..end].trim_end_matches('-').to_string()
}

/// Whether the manifest asks for logical backups (`enableLogicalBackup: true`).
pub fn logical_backup_enabled(pg: &Postgresql) -> bool {
    pg.spec.enable_logical_backup == Some(true)
}

/// A schedule Zalando's CRDs accept: five fields (minute, hour, day of month, month, day of
/// week), each a number or `*` with an optional `/step`, separated by whitespace.
pub fn valid_schedule(schedule: &str) -> bool {
    let field = |f: &str| {
        let (base, step) = match f.split_once('/') {
            Some((base, step)) => (base, Some(step)),
            None => (f, None),
        };
        let number = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        (base == "*" || number(base)) && step.is_none_or(number)
    };
    let fields: Vec<&str> = schedule.split_whitespace().collect();
    schedule.trim() == schedule && fields.len() == 5 && fields.into_iter().all(field)
}

/// The manifest's `logicalBackupSchedule`, else `logical_backup_schedule`.
pub fn logical_backup_schedule(
    pg: &Postgresql,
    config: &OperatorConfig,
) -> Result<String, BuildError> {
    let format = "five fields (minute hour day month weekday), each a number or * with an \
                  optional /step";
    match pg
        .spec
        .logical_backup_schedule
        .as_deref()
        .filter(|s| !s.is_empty())
    {
        Some(schedule) if valid_schedule(schedule) => Ok(schedule.to_string()),
        Some(schedule) => Err(BuildError::Invalid(format!(
            "spec.logicalBackupSchedule {schedule:?} is not a schedule of {format}"
        ))),
        None if valid_schedule(&config.logical_backup_schedule) => {
            Ok(config.logical_backup_schedule.clone())
        }
        None => Err(BuildError::Config(format!(
            "logical_backup_schedule {:?} is not a schedule of {format}",
            config.logical_backup_schedule
        ))),
    }
}

/// The backup CronJob, `None` unless the manifest has `enableLogicalBackup: true`.
pub fn desired_logical_backup(
    pg: &Postgresql,
    config: &OperatorConfig,
) -> Result<Option<CronJob>, BuildError> {
    if !logical_backup_enabled(pg) {
        return Ok(None);
    }
    let schedule = logical_backup_schedule(pg, config)?;
    let template = pod_template(pg, config)?;

    let mut metadata = object_meta(pg, logical_backup_job_name(config, cluster_name(pg)));
    metadata.labels = Some(object_labels(pg, config));
    metadata.annotations = non_empty(inherited_annotations(pg, config));
    metadata.owner_references = super::labels::owner_references(pg, config);
    Ok(Some(CronJob {
        metadata,
        spec: Some(CronJobSpec {
            schedule,
            concurrency_policy: Some("Forbid".into()),
            successful_jobs_history_limit: Some(SUCCESSFUL_JOBS_HISTORY_LIMIT),
            failed_jobs_history_limit: Some(FAILED_JOBS_HISTORY_LIMIT),
            job_template: JobTemplateSpec {
                metadata: None,
                spec: Some(JobSpec {
                    template,
                    ..JobSpec::default()
                }),
            },
            ..CronJobSpec::default()
        }),
        status: None,
    }))
}

/// The labels of the backup pods: the cluster's object labels with `application:
/// spilo-logical-backup`.
pub fn logical_backup_pod_labels(
    pg: &Postgresql,
    config: &OperatorConfig,
) -> BTreeMap<String, String> {
    let mut labels = object_labels(pg, config);
    labels.insert(APPLICATION_LABEL.into(), LOGICAL_BACKUP_APPLICATION.into());
    labels
}

fn pod_template(pg: &Postgresql, config: &OperatorConfig) -> Result<PodTemplateSpec, BuildError> {
    let labels = logical_backup_pod_labels(pg, config);

    let mut annotations = config.custom_pod_annotations.clone();
    annotations.extend(pg.spec.pod_annotations.clone());
    annotations.extend(inherited_annotations(pg, config));
    if let Some(role) = set(&config.kube_iam_role) {
        annotations.insert(KUBE_IAM_ANNOTATION.into(), role.into());
    }

    let mut container = container(pg, config)?;
    let mut volumes = None;
    if let Some(secret) = set(&config.additional_secret_mount) {
        let path = set(&config.additional_secret_mount_path).ok_or_else(|| {
            BuildError::Config(
                "additional_secret_mount is set without additional_secret_mount_path".into(),
            )
        })?;
        volumes = Some(vec![Volume {
            name: secret.into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(secret.into()),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        }]);
        container.volume_mounts = Some(vec![VolumeMount {
            name: secret.into(),
            mount_path: path.into(),
            ..VolumeMount::default()
        }]);
    }

    // Zalando prefers the node of another backup pod of the cluster, and requires the
    // `node_readiness_label` (the manifest's nodeAffinity is not used here).
    let affinity = Affinity {
        pod_affinity: Some(PodAffinity {
            preferred_during_scheduling_ignored_during_execution: Some(vec![
                WeightedPodAffinityTerm {
                    weight: 1,
                    pod_affinity_term: PodAffinityTerm {
                        label_selector: Some(LabelSelector {
                            match_labels: Some(labels.clone()),
                            match_expressions: None,
                        }),
                        topology_key: HOSTNAME_TOPOLOGY_KEY.into(),
                        ..PodAffinityTerm::default()
                    },
                },
            ]),
            required_during_scheduling_ignored_during_execution: None,
        }),
        node_affinity: node_readiness_affinity(config),
        pod_anti_affinity: None,
    };

    Ok(PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(labels),
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
            security_context: Some(PodSecurityContext::default()),
            affinity: Some(affinity),
            restart_policy: Some("Never".into()),
            volumes,
            ..PodSpec::default()
        }),
    })
}

fn container(pg: &Postgresql, config: &OperatorConfig) -> Result<Container, BuildError> {
    let port = |number: i32| ContainerPort {
        container_port: number,
        protocol: Some("TCP".into()),
        ..ContainerPort::default()
    };
    let env_from = set(&config.logical_backup_cronjob_environment_secret).map(|secret| {
        vec![EnvFromSource {
            secret_ref: Some(SecretEnvSource {
                name: secret.into(),
                optional: None,
            }),
            ..EnvFromSource::default()
        }]
    });
    Ok(Container {
        name: LOGICAL_BACKUP_CONTAINER.into(),
        image: Some(config.logical_backup_docker_image.clone()),
        image_pull_policy: Some("IfNotPresent".into()),
        resources: Some(logical_backup_resources(config)?),
        // Zalando's container template exposes Spilo's ports on every container it makes.
        ports: Some(vec![
            port(PATRONI_PORT),
            port(POSTGRES_PORT),
            port(SPILO_API_PORT),
        ]),
        env: Some(logical_backup_env(pg, config)),
        env_from,
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(config.spilo_allow_privilege_escalation),
            privileged: Some(config.spilo_privileged),
            read_only_root_filesystem: Some(false),
            ..SecurityContext::default()
        }),
        ..Container::default()
    })
}

/// The backup container's environment, in the order of Zalando's
/// `generateLogicalBackupPodEnvVars`, then the provider's variables: `s3` (the default)
/// gets region, endpoint, SSE, retention (`logicalBackupRetention`, else
/// `logical_backup_s3_retention_time`) and the AWS keys when set; `gcs` the credentials
/// file path when set; `az` the storage account, container and key when set. Unset values
/// are empty, as in Zalando.
pub fn logical_backup_env(pg: &Postgresql, config: &OperatorConfig) -> Vec<EnvVar> {
    let cluster = cluster_name(pg);
    let provider = config.logical_backup_provider.as_str();
    let text = |v: &Option<String>| v.clone().unwrap_or_default();
    let scope_suffix = match pg.metadata.uid.as_deref() {
        Some(uid) if !uid.is_empty() => format!("/{uid}"),
        _ => String::new(),
    };
    let mut env = vec![
        value("SCOPE", cluster),
        value("CLUSTER_NAME_LABEL", &config.cluster_name_label),
        EnvVar {
            name: "POD_NAMESPACE".into(),
            value: None,
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    api_version: Some("v1".into()),
                    field_path: "metadata.namespace".into(),
                }),
                ..EnvVarSource::default()
            }),
        },
        value("PG_VERSION", &pg.spec.postgresql.version),
        value("PGHOST", &service_name(pg, MASTER_ROLE)),
        value("PGPORT", &POSTGRES_PORT.to_string()),
        value("PGUSER", &config.super_username),
        value("PGDATABASE", "postgres"),
        value("PGSSLMODE", "require"),
        EnvVar {
            name: "PGPASSWORD".into(),
            value: None,
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: secret_name(config, &config.super_username, cluster),
                    key: "password".into(),
                    optional: None,
                }),
                ..EnvVarSource::default()
            }),
        },
        value("LOGICAL_BACKUP_PROVIDER", provider),
        value(
            "LOGICAL_BACKUP_S3_BUCKET",
            &text(&config.logical_backup_s3_bucket),
        ),
        value(
            "LOGICAL_BACKUP_S3_BUCKET_PREFIX",
            &config.logical_backup_s3_bucket_prefix,
        ),
        value("LOGICAL_BACKUP_S3_BUCKET_SCOPE_SUFFIX", &scope_suffix),
    ];
    match provider {
        "s3" => {
            let retention = pg
                .spec
                .logical_backup_retention
                .clone()
                .filter(|r| !r.is_empty())
                .unwrap_or_else(|| text(&config.logical_backup_s3_retention_time));
            env.extend([
                value(
                    "LOGICAL_BACKUP_S3_REGION",
                    &text(&config.logical_backup_s3_region),
                ),
                value(
                    "LOGICAL_BACKUP_S3_ENDPOINT",
                    &text(&config.logical_backup_s3_endpoint),
                ),
                value(
                    "LOGICAL_BACKUP_S3_SSE",
                    &text(&config.logical_backup_s3_sse),
                ),
                value("LOGICAL_BACKUP_S3_RETENTION_TIME", &retention),
            ]);
            if let Some(key_id) = secret(&config.logical_backup_s3_access_key_id) {
                env.push(value("AWS_ACCESS_KEY_ID", key_id));
            }
            if let Some(key) = secret(&config.logical_backup_s3_secret_access_key) {
                env.push(value("AWS_SECRET_ACCESS_KEY", key));
            }
        }
        "gcs" => {
            if let Some(path) = set(&config.logical_backup_google_application_credentials) {
                env.push(value("LOGICAL_BACKUP_GOOGLE_APPLICATION_CREDENTIALS", path));
            }
        }
        "az" => {
            env.extend([
                value(
                    "LOGICAL_BACKUP_AZURE_STORAGE_ACCOUNT_NAME",
                    &text(&config.logical_backup_azure_storage_account_name),
                ),
                value(
                    "LOGICAL_BACKUP_AZURE_STORAGE_CONTAINER",
                    &text(&config.logical_backup_azure_storage_container),
                ),
            ]);
            if let Some(key) = secret(&config.logical_backup_azure_storage_account_key) {
                env.push(value("LOGICAL_BACKUP_AZURE_STORAGE_ACCOUNT_KEY", key));
            }
        }
        // Zalando adds nothing for other providers.
        _ => {}
    }
    env
}

/// `logical_backup_{cpu,memory}_{request,limit}`, each falling back to the Postgres pods'
/// `default_*` setting (unset when neither is given; `""`, `"0"` and `"null"` count as
/// unset, as in Zalando). A limit below its request is raised to it, and with
/// `set_memory_request_to_limit` the memory request is raised to its limit. The
/// `min_*_limit`/`max_*_request` thresholds apply to the Postgres container only.
pub fn logical_backup_resources(
    config: &OperatorConfig,
) -> Result<ResourceRequirements, BuildError> {
    let pick = |entries: [(&str, &Option<String>, &str, &Option<String>); 2]| {
        let mut list = BTreeMap::new();
        for (resource, (key, own, default_key, default)) in
            ["cpu", "memory"].into_iter().zip(entries)
        {
            let given = |v: &Option<String>| {
                v.clone()
                    .filter(|v| !matches!(v.as_str(), "" | "0" | "null"))
            };
            let (key, text) = match (given(own), given(default)) {
                (Some(text), _) => (key, text),
                (None, Some(text)) => (default_key, text),
                (None, None) => continue,
            };
            quantity::parse(&text).map_err(|e| {
                BuildError::Config(format!("{key} {text:?} is not a quantity: {e}"))
            })?;
            list.insert(resource.to_string(), Quantity(text));
        }
        Ok::<_, BuildError>(list)
    };
    let mut requests = pick([
        (
            "logical_backup_cpu_request",
            &config.logical_backup_cpu_request,
            "default_cpu_request",
            &config.default_cpu_request,
        ),
        (
            "logical_backup_memory_request",
            &config.logical_backup_memory_request,
            "default_memory_request",
            &config.default_memory_request,
        ),
    ])?;
    let mut limits = pick([
        (
            "logical_backup_cpu_limit",
            &config.logical_backup_cpu_limit,
            "default_cpu_limit",
            &config.default_cpu_limit,
        ),
        (
            "logical_backup_memory_limit",
            &config.logical_backup_memory_limit,
            "default_memory_limit",
            &config.default_memory_limit,
        ),
    ])?;
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

/// `node_readiness_label` as a required node affinity term.
fn node_readiness_affinity(config: &OperatorConfig) -> Option<NodeAffinity> {
    if config.node_readiness_label.is_empty() {
        return None;
    }
    let expressions = config
        .node_readiness_label
        .iter()
        .map(|(key, value)| NodeSelectorRequirement {
            key: key.clone(),
            operator: "In".into(),
            values: Some(vec![value.clone()]),
        })
        .collect();
    Some(NodeAffinity {
        required_during_scheduling_ignored_during_execution: Some(NodeSelector {
            node_selector_terms: vec![NodeSelectorTerm {
                match_expressions: Some(expressions),
                match_fields: None,
            }],
        }),
        preferred_during_scheduling_ignored_during_execution: None,
    })
}

/// A configured credential, `None` when unset or empty.
fn secret(option: &Option<SecretValue>) -> Option<&str> {
    option
        .as_ref()
        .map(SecretValue::expose)
        .filter(|v| !v.is_empty())
}

fn set(option: &Option<String>) -> Option<&str> {
    option.as_deref().filter(|v| !v.is_empty())
}

fn value(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        value_from: None,
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::Toleration;

    use super::*;
    use crate::pure::builders::labels::tests::{manifest, minimal};

    type Pairs<'a> = &'a [(&'a str, &'a str)];

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// The minimal manifest with `extra` spec lines and logical backups enabled.
    fn with_backup(extra: &str) -> Postgresql {
        manifest(
            "acid-minimal-cluster",
            &format!(
                "  teamId: ACID\n  numberOfInstances: 2\n  volume: {{size: 1Gi}}\n  postgresql: {{version: \"15\"}}\n  enableLogicalBackup: true\n{extra}"
            ),
        )
    }

    fn cron_job(pg: &Postgresql, config: &OperatorConfig) -> CronJob {
        desired_logical_backup(pg, config).unwrap().unwrap()
    }

    fn pod_spec(job: &CronJob) -> &PodSpec {
        let job_spec = job
            .spec
            .as_ref()
            .unwrap()
            .job_template
            .spec
            .as_ref()
            .unwrap();
        job_spec.template.spec.as_ref().unwrap()
    }

    /// The container's variables with a plain value, in order.
    fn values(env: &[EnvVar]) -> Vec<(String, String)> {
        env.iter()
            .filter(|e| e.value_from.is_none())
            .map(|e| (e.name.clone(), e.value.clone().unwrap_or_default()))
            .collect()
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn only_when_enabled() {
        let config = OperatorConfig::default();
        let off = [
            minimal(),
            manifest(
                "acid-off",
                "  teamId: acid\n  numberOfInstances: 1\n  volume: {size: 1Gi}\n  postgresql: {version: \"15\"}\n  enableLogicalBackup: false\n  logicalBackupSchedule: \"0 1 * * *\"\n",
            ),
        ];
        for pg in off {
            assert_eq!(desired_logical_backup(&pg, &config), Ok(None));
        }
        assert!(desired_logical_backup(&with_backup(""), &config)
            .unwrap()
            .is_some());
    }

    #[test]
    fn job_names_as_zalando() {
        let cluster = "acid-test-cluster";
        let cases = [
            (
                "logical-backup-",
                cluster,
                "logical-backup-acid-test-cluster",
            ),
            ("lb-", cluster, "lb-acid-test-cluster"),
            ("", cluster, "acid-test-cluster"),
            (
                "test-long-prefix-so-name-must-be-trimmed-",
                cluster,
                "test-long-prefix-so-name-must-be-trimmed-acid-test-c",
            ),
            // Cut right after a dash: the dash goes too.
            (
                "logical-backup-",
                "a-cluster-name-of-thirty-seven-chars---and-more",
                "logical-backup-a-cluster-name-of-thirty-seven-chars",
            ),
            (
                "",
                "exactly-fifty-two-characters-long-cluster-name-xxxxx",
                "exactly-fifty-two-characters-long-cluster-name-xxxxx",
            ),
        ];
        for (prefix, cluster, want) in cases {
            let config = OperatorConfig {
                logical_backup_job_prefix: prefix.into(),
                ..OperatorConfig::default()
            };
            let name = logical_backup_job_name(&config, cluster);
            assert_eq!(name, want, "{prefix}{cluster}");
            assert!(name.len() <= JOB_NAME_MAX_LENGTH);
        }
        let pg = with_backup("");
        assert_eq!(
            cron_job(&pg, &OperatorConfig::default())
                .metadata
                .name
                .as_deref(),
            Some("logical-backup-acid-minimal-cluster")
        );
    }

    #[test]
    fn schedule_precedence() {
        let config = OperatorConfig {
            logical_backup_schedule: "30 00 * * 7".into(),
            ..OperatorConfig::default()
        };
        let cases = [
            ("  logicalBackupSchedule: \"30 00 * * *\"\n", "30 00 * * *"),
            (
                "  logicalBackupSchedule: \"*/15 1 * * *\"\n",
                "*/15 1 * * *",
            ),
            ("", "30 00 * * 7"),
            ("  logicalBackupSchedule: \"\"\n", "30 00 * * 7"),
        ];
        for (extra, want) in cases {
            let job = cron_job(&with_backup(extra), &config);
            assert_eq!(job.spec.unwrap().schedule, want, "{extra:?}");
        }
        assert_eq!(
            cron_job(&with_backup(""), &OperatorConfig::default())
                .spec
                .unwrap()
                .schedule,
            "30 00 * * *",
            "Zalando's default"
        );
    }

    #[test]
    fn schedules_zalando_rejects() {
        for schedule in [
            "@daily",
            "0 1-5 * * *",
            "0 1 * *",
            "0 1 * * * *",
            "0 1 * * MON",
            " 0 1 * * *",
        ] {
            assert!(!valid_schedule(schedule), "{schedule:?}");
            let pg = with_backup(&format!("  logicalBackupSchedule: {schedule:?}\n"));
            assert!(
                matches!(
                    desired_logical_backup(&pg, &OperatorConfig::default()),
                    Err(BuildError::Invalid(_))
                ),
                "{schedule:?}"
            );
        }
        for schedule in ["30 00 * * *", "*/5 * * * *", "0 3\t* * 1/2", "0 0 1 1 0"] {
            assert!(valid_schedule(schedule), "{schedule:?}");
        }
        let config = OperatorConfig {
            logical_backup_schedule: "nightly".into(),
            ..OperatorConfig::default()
        };
        assert!(matches!(
            desired_logical_backup(&with_backup(""), &config),
            Err(BuildError::Config(_))
        ));
    }

    #[test]
    fn cron_job_and_pod_template() {
        let mut pg = with_backup("  podAnnotations: {pod: annotation}\n");
        pg.metadata.uid = Some("0e3c-uid".into());
        pg.metadata.labels = Some(map(&[("environment", "demo")]));
        pg.metadata.annotations = Some(map(&[("owner", "db-team")]));
        let config = OperatorConfig {
            inherited_labels: vec!["environment".into()],
            inherited_annotations: vec!["owner".into()],
            custom_pod_annotations: map(&[("custom", "yes")]),
            ..OperatorConfig::default()
        };
        let job = cron_job(&pg, &config);
        let object_labels = map(&[
            ("application", "spilo"),
            ("cluster-name", "acid-minimal-cluster"),
            ("team", "ACID"),
            ("environment", "demo"),
        ]);
        assert_eq!(job.metadata.namespace.as_deref(), Some("default"));
        assert_eq!(job.metadata.labels.as_ref(), Some(&object_labels));
        assert_eq!(job.metadata.annotations, Some(map(&[("owner", "db-team")])));
        let spec = job.spec.as_ref().unwrap();
        assert_eq!(spec.concurrency_policy.as_deref(), Some("Forbid"));
        assert_eq!(spec.successful_jobs_history_limit, Some(3));
        assert_eq!(spec.failed_jobs_history_limit, Some(3));
        assert!(spec.suspend.is_none() && spec.time_zone.is_none());
        let job_spec = spec.job_template.spec.as_ref().unwrap();
        assert!(job_spec.ttl_seconds_after_finished.is_none() && job_spec.backoff_limit.is_none());

        let template = &spec.job_template.spec.as_ref().unwrap().template;
        let meta = template.metadata.as_ref().unwrap();
        let pod_labels = map(&[
            ("application", "spilo-logical-backup"),
            ("cluster-name", "acid-minimal-cluster"),
            ("team", "ACID"),
            ("environment", "demo"),
        ]);
        assert_eq!(meta.labels.as_ref(), Some(&pod_labels));
        assert_eq!(meta.namespace.as_deref(), Some("default"));
        assert_eq!(
            meta.annotations,
            Some(map(&[
                ("custom", "yes"),
                ("pod", "annotation"),
                ("owner", "db-team")
            ]))
        );

        let pod = pod_spec(&job);
        assert_eq!(pod.restart_policy.as_deref(), Some("Never"));
        assert_eq!(pod.service_account_name.as_deref(), Some("postgres-pod"));
        assert_eq!(pod.termination_grace_period_seconds, Some(300));
        assert_eq!(pod.security_context, Some(PodSecurityContext::default()));
        assert!(pod.tolerations.is_none() && pod.volumes.is_none());
        assert!(pod.init_containers.is_none() && pod.priority_class_name.is_none());
        let affinity = pod.affinity.as_ref().unwrap();
        assert!(affinity.node_affinity.is_none() && affinity.pod_anti_affinity.is_none());
        let preferred = affinity
            .pod_affinity
            .as_ref()
            .unwrap()
            .preferred_during_scheduling_ignored_during_execution
            .as_ref()
            .unwrap();
        assert_eq!(preferred.len(), 1);
        assert_eq!(preferred[0].weight, 1);
        let term = &preferred[0].pod_affinity_term;
        assert_eq!(term.topology_key, "kubernetes.io/hostname");
        assert_eq!(
            term.label_selector.as_ref().unwrap().match_labels.as_ref(),
            Some(&pod_labels)
        );

        assert_eq!(pod.containers.len(), 1);
        let container = &pod.containers[0];
        assert_eq!(container.name, "logical-backup");
        assert_eq!(
            container.image.as_deref(),
            Some("ghcr.io/zalando/postgres-operator/logical-backup:v2.0.1")
        );
        assert_eq!(container.image_pull_policy.as_deref(), Some("IfNotPresent"));
        let ports: Vec<i32> = container
            .ports
            .iter()
            .flatten()
            .map(|p| p.container_port)
            .collect();
        assert_eq!(ports, [8008, 5432, 8080]);
        assert!(container.env_from.is_none() && container.volume_mounts.is_none());
        let security = container.security_context.as_ref().unwrap();
        assert_eq!(security.privileged, Some(false));
        assert_eq!(security.allow_privilege_escalation, Some(true));
        assert_eq!(security.read_only_root_filesystem, Some(false));
        assert_eq!(
            container.resources,
            Some(ResourceRequirements::default()),
            "nothing configured"
        );

        let env = container.env.as_ref().unwrap();
        assert_eq!(
            values(env),
            pairs(&[
                ("SCOPE", "acid-minimal-cluster"),
                ("CLUSTER_NAME_LABEL", "cluster-name"),
                ("PG_VERSION", "15"),
                ("PGHOST", "acid-minimal-cluster"),
                ("PGPORT", "5432"),
                ("PGUSER", "postgres"),
                ("PGDATABASE", "postgres"),
                ("PGSSLMODE", "require"),
                ("LOGICAL_BACKUP_PROVIDER", "s3"),
                ("LOGICAL_BACKUP_S3_BUCKET", ""),
                ("LOGICAL_BACKUP_S3_BUCKET_PREFIX", "spilo"),
                ("LOGICAL_BACKUP_S3_BUCKET_SCOPE_SUFFIX", "/0e3c-uid"),
                ("LOGICAL_BACKUP_S3_REGION", ""),
                ("LOGICAL_BACKUP_S3_ENDPOINT", ""),
                ("LOGICAL_BACKUP_S3_SSE", ""),
                ("LOGICAL_BACKUP_S3_RETENTION_TIME", ""),
            ])
        );
        let namespace = env.iter().find(|e| e.name == "POD_NAMESPACE").unwrap();
        let field = namespace
            .value_from
            .as_ref()
            .unwrap()
            .field_ref
            .as_ref()
            .unwrap();
        assert_eq!(field.field_path, "metadata.namespace");
        assert_eq!(field.api_version.as_deref(), Some("v1"));
        let password = env.iter().find(|e| e.name == "PGPASSWORD").unwrap();
        assert!(password.value.is_none());
        let secret = password
            .value_from
            .as_ref()
            .unwrap()
            .secret_key_ref
            .as_ref()
            .unwrap();
        assert_eq!(
            secret.name,
            "postgres.acid-minimal-cluster.credentials.postgresql.acid.zalan.do"
        );
        assert_eq!(secret.key, "password");
    }

    #[test]
    fn env_per_provider() {
        let base = OperatorConfig {
            logical_backup_s3_bucket: Some("backups".into()),
            logical_backup_s3_bucket_prefix: "pg".into(),
            logical_backup_s3_region: Some("eu-central-1".into()),
            logical_backup_s3_endpoint: Some("https://s3.example.com".into()),
            logical_backup_s3_sse: Some("AES256".into()),
            logical_backup_s3_retention_time: Some("1 week".into()),
            logical_backup_s3_access_key_id: Some(SecretValue::new("AKIA-ID")),
            logical_backup_s3_secret_access_key: Some(SecretValue::new("s3-secret")),
            logical_backup_google_application_credentials: Some("/creds/gcs.json".into()),
            logical_backup_azure_storage_account_name: Some("account".into()),
            logical_backup_azure_storage_container: Some("container".into()),
            logical_backup_azure_storage_account_key: Some(SecretValue::new("az-key")),
            ..OperatorConfig::default()
        };
        let common = |provider: &str| {
            pairs(&[
                ("LOGICAL_BACKUP_PROVIDER", provider),
                ("LOGICAL_BACKUP_S3_BUCKET", "backups"),
                ("LOGICAL_BACKUP_S3_BUCKET_PREFIX", "pg"),
                ("LOGICAL_BACKUP_S3_BUCKET_SCOPE_SUFFIX", ""),
            ])
        };
        let cases: &[(&str, &str, Pairs)] = &[
            (
                "s3",
                "",
                &[
                    ("LOGICAL_BACKUP_S3_REGION", "eu-central-1"),
                    ("LOGICAL_BACKUP_S3_ENDPOINT", "https://s3.example.com"),
                    ("LOGICAL_BACKUP_S3_SSE", "AES256"),
                    ("LOGICAL_BACKUP_S3_RETENTION_TIME", "1 week"),
                    ("AWS_ACCESS_KEY_ID", "AKIA-ID"),
                    ("AWS_SECRET_ACCESS_KEY", "s3-secret"),
                ],
            ),
            (
                "s3",
                "  logicalBackupRetention: \"3 months\"\n",
                &[
                    ("LOGICAL_BACKUP_S3_REGION", "eu-central-1"),
                    ("LOGICAL_BACKUP_S3_ENDPOINT", "https://s3.example.com"),
                    ("LOGICAL_BACKUP_S3_SSE", "AES256"),
                    ("LOGICAL_BACKUP_S3_RETENTION_TIME", "3 months"),
                    ("AWS_ACCESS_KEY_ID", "AKIA-ID"),
                    ("AWS_SECRET_ACCESS_KEY", "s3-secret"),
                ],
            ),
            (
                "gcs",
                "  logicalBackupRetention: \"3 months\"\n",
                &[(
                    "LOGICAL_BACKUP_GOOGLE_APPLICATION_CREDENTIALS",
                    "/creds/gcs.json",
                )],
            ),
            (
                "az",
                "",
                &[
                    ("LOGICAL_BACKUP_AZURE_STORAGE_ACCOUNT_NAME", "account"),
                    ("LOGICAL_BACKUP_AZURE_STORAGE_CONTAINER", "container"),
                    ("LOGICAL_BACKUP_AZURE_STORAGE_ACCOUNT_KEY", "az-key"),
                ],
            ),
            ("aws", "", &[]),
        ];
        for (provider, extra, specific) in cases {
            let config = OperatorConfig {
                logical_backup_provider: provider.to_string(),
                ..base.clone()
            };
            let env = logical_backup_env(&with_backup(extra), &config);
            let all = values(&env);
            let start = all
                .iter()
                .position(|(name, _)| name == "LOGICAL_BACKUP_PROVIDER")
                .unwrap();
            let mut want = common(provider);
            want.extend(pairs(specific));
            assert_eq!(all[start..], want[..], "{provider} {extra:?}");
        }
    }

    #[test]
    fn credentials_only_when_set() {
        let config = OperatorConfig {
            logical_backup_s3_access_key_id: Some(SecretValue::new("")),
            logical_backup_azure_storage_account_key: None,
            ..OperatorConfig::default()
        };
        let names = |config: &OperatorConfig| -> Vec<String> {
            logical_backup_env(&with_backup(""), config)
                .into_iter()
                .map(|e| e.name)
                .collect()
        };
        let s3 = names(&config);
        assert!(!s3.iter().any(|n| n.starts_with("AWS_")), "{s3:?}");
        let az = names(&OperatorConfig {
            logical_backup_provider: "az".into(),
            ..config.clone()
        });
        assert!(
            !az.contains(&"LOGICAL_BACKUP_AZURE_STORAGE_ACCOUNT_KEY".to_string()),
            "{az:?}"
        );
        let gcs = names(&OperatorConfig {
            logical_backup_provider: "gcs".into(),
            ..config
        });
        assert_eq!(gcs.last().unwrap(), "LOGICAL_BACKUP_S3_BUCKET_SCOPE_SUFFIX");
    }

    #[test]
    fn custom_users_labels_and_secret_names() {
        let config = OperatorConfig {
            super_username: "root".into(),
            cluster_name_label: "cluster".into(),
            secret_name_template: "{cluster}-{username}-secret".into(),
            logical_backup_cronjob_environment_secret: Some("backup-env".into()),
            ..OperatorConfig::default()
        };
        let job = cron_job(&with_backup(""), &config);
        let container = &pod_spec(&job).containers[0];
        let env = container.env.as_ref().unwrap();
        let get = |name: &str| env.iter().find(|e| e.name == name).unwrap();
        assert_eq!(get("PGUSER").value.as_deref(), Some("root"));
        assert_eq!(get("CLUSTER_NAME_LABEL").value.as_deref(), Some("cluster"));
        assert_eq!(
            get("PGPASSWORD")
                .value_from
                .as_ref()
                .unwrap()
                .secret_key_ref
                .as_ref()
                .unwrap()
                .name,
            "acid-minimal-cluster-root-secret"
        );
        assert_eq!(
            container.env_from,
            Some(vec![EnvFromSource {
                secret_ref: Some(SecretEnvSource {
                    name: "backup-env".into(),
                    optional: None,
                }),
                ..EnvFromSource::default()
            }])
        );
    }

    #[test]
    fn resources() {
        let q = |s: &str| Quantity(s.into());
        let list = |pairs: &[(&str, &str)]| -> Option<BTreeMap<String, Quantity>> {
            (!pairs.is_empty()).then(|| pairs.iter().map(|(k, v)| (k.to_string(), q(v))).collect())
        };
        let cases: &[(&str, OperatorConfig, Pairs, Pairs)] = &[
            ("nothing configured", OperatorConfig::default(), &[], &[]),
            (
                "logical backup settings",
                OperatorConfig {
                    logical_backup_cpu_request: Some("10m".into()),
                    logical_backup_memory_request: Some("50Mi".into()),
                    logical_backup_cpu_limit: Some("300m".into()),
                    logical_backup_memory_limit: Some("300Mi".into()),
                    default_cpu_request: Some("100m".into()),
                    default_memory_limit: Some("500Mi".into()),
                    ..OperatorConfig::default()
                },
                &[("cpu", "10m"), ("memory", "50Mi")],
                &[("cpu", "300m"), ("memory", "300Mi")],
            ),
            (
                "partly configured: the Postgres defaults fill in",
                OperatorConfig {
                    logical_backup_cpu_request: Some("50m".into()),
                    logical_backup_memory_limit: Some("0".into()),
                    default_cpu_request: Some("100m".into()),
                    default_memory_request: Some("100Mi".into()),
                    default_cpu_limit: Some("1".into()),
                    default_memory_limit: Some("500Mi".into()),
                    ..OperatorConfig::default()
                },
                &[("cpu", "50m"), ("memory", "100Mi")],
                &[("cpu", "1"), ("memory", "500Mi")],
            ),
            (
                "limits below the requests are raised",
                OperatorConfig {
                    logical_backup_cpu_request: Some("2".into()),
                    logical_backup_cpu_limit: Some("1".into()),
                    logical_backup_memory_request: Some("1Gi".into()),
                    logical_backup_memory_limit: Some("500Mi".into()),
                    ..OperatorConfig::default()
                },
                &[("cpu", "2"), ("memory", "1Gi")],
                &[("cpu", "2"), ("memory", "1Gi")],
            ),
            (
                "set_memory_request_to_limit",
                OperatorConfig {
                    logical_backup_memory_request: Some("100Mi".into()),
                    logical_backup_memory_limit: Some("1Gi".into()),
                    set_memory_request_to_limit: true,
                    ..OperatorConfig::default()
                },
                &[("memory", "1Gi")],
                &[("memory", "1Gi")],
            ),
            (
                "no Postgres thresholds",
                OperatorConfig {
                    logical_backup_cpu_limit: Some("100m".into()),
                    min_cpu_limit: Some("250m".into()),
                    max_memory_request: Some("1Mi".into()),
                    logical_backup_memory_request: Some("1Gi".into()),
                    ..OperatorConfig::default()
                },
                &[("memory", "1Gi")],
                &[("cpu", "100m")],
            ),
        ];
        for (what, config, requests, limits) in cases {
            let got = logical_backup_resources(config).unwrap();
            assert_eq!(got.requests, list(requests), "{what}");
            assert_eq!(got.limits, list(limits), "{what}");
        }
        for config in [
            OperatorConfig {
                logical_backup_cpu_request: Some("lots".into()),
                ..OperatorConfig::default()
            },
            OperatorConfig {
                default_memory_limit: Some("1GB".into()),
                ..OperatorConfig::default()
            },
        ] {
            assert!(matches!(
                desired_logical_backup(&with_backup(""), &config),
                Err(BuildError::Config(_))
            ));
        }
    }

    #[test]
    fn scheduling_and_mounts() {
        let config = OperatorConfig {
            node_readiness_label: map(&[("status", "ready")]),
            toleration: map(&[
                ("key", "postgres"),
                ("operator", "Exists"),
                ("effect", "NoSchedule"),
            ]),
            kube_iam_role: Some("backup-role".into()),
            additional_secret_mount: Some("aws-creds".into()),
            additional_secret_mount_path: Some("/meta/credentials".into()),
            pod_service_account_name: "custom-sa".into(),
            spilo_privileged: true,
            ..OperatorConfig::default()
        };
        let pg = with_backup(
            "  nodeAffinity:\n    requiredDuringSchedulingIgnoredDuringExecution:\n      nodeSelectorTerms:\n      - matchExpressions:\n        - {key: disk, operator: In, values: [ssd]}\n",
        );
        let job = cron_job(&pg, &config);
        let pod = pod_spec(&job);
        assert_eq!(pod.service_account_name.as_deref(), Some("custom-sa"));
        assert_eq!(
            pod.tolerations,
            Some(vec![Toleration {
                key: Some("postgres".into()),
                operator: Some("Exists".into()),
                effect: Some("NoSchedule".into()),
                ..Toleration::default()
            }])
        );
        let node_affinity = pod
            .affinity
            .as_ref()
            .unwrap()
            .node_affinity
            .as_ref()
            .unwrap();
        let terms = &node_affinity
            .required_during_scheduling_ignored_during_execution
            .as_ref()
            .unwrap()
            .node_selector_terms;
        assert_eq!(terms.len(), 1, "the manifest's node affinity is not used");
        assert_eq!(
            terms[0].match_expressions,
            Some(vec![NodeSelectorRequirement {
                key: "status".into(),
                operator: "In".into(),
                values: Some(vec!["ready".into()]),
            }])
        );
        let template_meta = job
            .spec
            .as_ref()
            .unwrap()
            .job_template
            .spec
            .as_ref()
            .unwrap()
            .template
            .metadata
            .as_ref()
            .unwrap();
        assert_eq!(
            template_meta.annotations,
            Some(map(&[("iam.amazonaws.com/role", "backup-role")]))
        );
        let volumes = pod.volumes.as_ref().unwrap();
        assert_eq!(volumes.len(), 1);
        assert_eq!(volumes[0].name, "aws-creds");
        assert_eq!(
            volumes[0].secret.as_ref().unwrap().secret_name.as_deref(),
            Some("aws-creds")
        );
        let container = &pod.containers[0];
        assert_eq!(
            container.volume_mounts,
            Some(vec![VolumeMount {
                name: "aws-creds".into(),
                mount_path: "/meta/credentials".into(),
                ..VolumeMount::default()
            }])
        );
        assert_eq!(
            container.security_context.as_ref().unwrap().privileged,
            Some(true)
        );

        // The manifest's tolerations win over the configured one.
        let pg = with_backup("  tolerations:\n  - {key: dedicated, operator: Equal, value: db, effect: NoSchedule}\n");
        let job = cron_job(&pg, &config);
        let tolerations = pod_spec(&job).tolerations.clone().unwrap();
        assert_eq!(tolerations.len(), 1);
        assert_eq!(tolerations[0].key.as_deref(), Some("dedicated"));

        let missing_path = OperatorConfig {
            additional_secret_mount_path: None,
            ..config
        };
        assert!(matches!(
            desired_logical_backup(&pg, &missing_path),
            Err(BuildError::Config(_))
        ));
    }

    #[test]
    fn complete_example_manifest() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../manifests/complete-postgres-manifest.yaml"
        );
        let text = std::fs::read_to_string(path).unwrap();
        let mut pg: Postgresql = serde_yaml::from_str(&text).unwrap();
        pg.metadata.namespace = Some("default".into());
        let config = OperatorConfig::default();
        let job = cron_job(&pg, &config);
        assert_eq!(
            job.metadata.name.as_deref(),
            Some("logical-backup-acid-test-cluster")
        );
        assert_eq!(job.spec.as_ref().unwrap().schedule, "30 00 * * *");
        let env = pod_spec(&job).containers[0].env.clone().unwrap();
        let retention = env
            .iter()
            .find(|e| e.name == "LOGICAL_BACKUP_S3_RETENTION_TIME")
            .unwrap();
        assert_eq!(retention.value.as_deref(), Some("3 months"));
    }
}
