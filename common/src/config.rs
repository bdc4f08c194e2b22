//! The operator configuration, read from Zalando's `postgres-operator` ConfigMap.
//!
//! Every key of Zalando's ConfigMap format is a field of [`OperatorConfig`] with
//! the same (snake_case) name, and [`OperatorConfig::default`] holds the
//! defaults of Zalando's `pkg/util/config/config.go`. All values in the
//! ConfigMap are strings; the field's type decides how the string is read:
//!
//! | type                        | format                                                              |
//! |-----------------------------|---------------------------------------------------------------------|
//! | `bool`                      | `true`/`false` (any case), also Go's `t`/`f`/`1`/`0`                |
//! | integers                    | decimal, e.g. `8`, `-1`                                             |
//! | `Duration`                  | Go duration: `30m`, `1h30m`, `1.5s`, `100ms`, `0`; no bare numbers  |
//! | `Vec<String>`               | `a,b,c`; items are trimmed, empty items dropped                     |
//! | `BTreeMap<String, String>`  | `k1:v1,k2:v2`; see below                                            |
//! | `String`, `Option<String>`  | taken as is (ends trimmed)                                          |
//!
//! Maps follow Zalando's decoder: items are separated by commas that are not
//! inside `'…'` or `"…"` quotes (quotes stay part of the value, as in
//! `search_path:'"$user", public'`), and each item is split at its *first*
//! `:`, so values may contain `:` (`exporter:quay.io/org/image:v1`). Keys and
//! values are trimmed. Empty items are skipped; an item without `:` or with an
//! empty key is an error. (Zalando rejects items with more than one `:`; this
//! reader is more lenient there.)
//!
//! An empty value means "nothing": `""` for a `String`, `None` for an
//! `Option`, an empty list or map. Scalars (`bool`, numbers, durations) have no
//! "nothing", so for them an empty value keeps the default.
//!
//! Keys this module does not know never make parsing fail: they are collected
//! in [`OperatorConfig::unknown_keys`] so the caller can warn about them.
//!
//! Zalando's other configuration form, the `OperatorConfiguration` custom
//! resource (grouped keys, real YAML types), is read by
//! [`from_operator_configuration`]; [`flatten_operator_configuration`] turns it
//! into the flat data above (see `operator_configuration.rs` for the mapping).
//!
//! [`effective_config_json`] is the configuration as JSON for display, with
//! every credential ([`SECRET_KEYS`]) shown as `"<redacted>"`.
use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use serde::{Serialize, Serializer};

pub use crate::operator_configuration::{
    flatten_operator_configuration, from_operator_configuration, operator_configuration_path,
    operator_configuration_unknown_keys,
};

/// Why a ConfigMap could not be turned into an [`OperatorConfig`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The value of a known key could not be read.
    #[error("operator configuration key {key:?} has an invalid value {value:?}: {reason}")]
    InvalidValue {
        key: String,
        value: String,
        reason: String,
    },
    /// Each value is fine on its own, but together they make no sense
    /// (the checks Zalando's operator refuses to start with).
    #[error("inconsistent operator configuration: {0}")]
    Inconsistent(String),
}

impl ConfigError {
    pub(crate) fn invalid(key: &str, value: &str, reason: impl Into<String>) -> Self {
        ConfigError::InvalidValue {
            key: key.to_string(),
            value: value.to_string(),
            reason: reason.into(),
        }
    }
}

/// A credential from the configuration. Its `Debug` output is redacted, and
/// the fields holding it are never serialized; use [`SecretValue::expose`]
/// where the value is really needed.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretValue(String);

impl SecretValue {
    pub fn new(value: impl Into<String>) -> Self {
        SecretValue(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretValue(<redacted>)")
    }
}

/// Which namespaces the operator watches; see [`OperatorConfig::watched_namespaces`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchedNamespaces {
    All,
    Some(Vec<String>),
}

/// The operator configuration. Field names are Zalando's ConfigMap keys.
///
/// Fields holding a Kubernetes object name that Zalando reads as
/// `[namespace/]name` (`oauth_token_secret_name`,
/// `infrastructure_roles_secret_name`, `pod_environment_configmap`) are kept as
/// written. Resource quantities (`100m`, `500Mi`) are kept as strings.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OperatorConfig {
    // ---- general -------------------------------------------------------
    /// Namespace(s) to watch: `*` for all, empty/unset for the operator's own,
    /// or a comma-separated list (a pgop extension; Zalando takes one name).
    pub watched_namespace: Option<String>,
    pub workers: u32,
    #[serde(serialize_with = "serialize_duration")]
    pub resync_period: Duration,
    #[serde(serialize_with = "serialize_duration")]
    pub repair_period: Duration,
    /// Spilo image for the Postgres pods.
    pub docker_image: String,
    /// Use ConfigMaps instead of Endpoints for Patroni's Kubernetes DCS.
    pub kubernetes_use_configmaps: bool,
    /// Patroni uses etcd at `host:port` when set, Kubernetes otherwise.
    pub etcd_host: Option<String>,
    pub enable_crd_registration: bool,
    /// Deprecated in Zalando and without effect; accepted for compatibility.
    pub enable_crd_validation: bool,
    pub crd_categories: Vec<String>,
    /// -1 means no limit.
    pub min_instances: i32,
    /// -1 means no limit.
    pub max_instances: i32,
    pub ignore_instance_limits_annotation_key: Option<String>,
    pub ignore_resources_limits_annotation_key: Option<String>,
    pub enable_maintenance_windows: bool,
    /// Raw window strings such as `Sat:22:00-23:59` or `01:00-06:00`.
    pub maintenance_windows: Vec<String>,
    /// Deprecated sidecar map `name:image` (the image may contain `:`).
    pub sidecar_docker_images: BTreeMap<String, String>,
    /// Global sidecar containers, kept raw: Zalando's ConfigMap decoder cannot
    /// read a container list, only its OperatorConfiguration CRD can.
    pub sidecars: Option<String>,
    pub enable_lazy_spilo_upgrade: bool,
    pub enable_pgversion_env_var: bool,
    pub enable_spilo_wal_path_compat: bool,
    pub enable_team_id_clustername_prefix: bool,
    pub enable_patroni_failsafe_mode: bool,
    pub set_memory_request_to_limit: bool,
    pub debug_logging: bool,
    pub enable_database_access: bool,

    // ---- Postgres users ------------------------------------------------
    pub super_username: String,
    pub replication_username: String,
    pub additional_owner_roles: Vec<String>,
    /// Template with `{username}`, `{cluster}`, `{tprkind}`, `{tprgroup}`.
    pub secret_name_template: String,
    pub enable_password_rotation: bool,
    /// Days.
    pub password_rotation_interval: u32,
    /// Days.
    pub password_rotation_user_retention: u32,
    pub infrastructure_roles_secret_name: Option<String>,
    /// Kept raw: `;`-separated role definitions, each a comma-separated list
    /// of `secretname:…,userkey:…,passwordkey:…[,rolekey:…]` pairs.
    pub infrastructure_roles_secrets: Option<String>,

    // ---- major version upgrade -----------------------------------------
    /// `off`, `manual` or `full`.
    pub major_version_upgrade_mode: String,
    pub major_version_upgrade_team_allow_list: Vec<String>,
    /// Kept as a string as in Zalando (e.g. `14`).
    pub minimal_major_version: String,
    /// Kept as a string as in Zalando (e.g. `18`).
    pub target_major_version: String,

    // ---- Kubernetes objects --------------------------------------------
    pub pod_service_account_name: String,
    /// YAML/JSON ServiceAccount used when creating the pod service account.
    pub pod_service_account_definition: Option<String>,
    /// YAML/JSON RoleBinding used when binding the pod service account.
    pub pod_service_account_role_binding_definition: Option<String>,
    #[serde(serialize_with = "serialize_duration")]
    pub pod_terminate_grace_period: Duration,
    /// `ordered_ready` or `parallel`.
    pub pod_management_policy: String,
    pub pod_priority_class_name: Option<String>,
    pub cluster_domain: String,
    pub cluster_labels: BTreeMap<String, String>,
    pub cluster_name_label: String,
    pub pod_role_label: String,
    pub inherited_labels: Vec<String>,
    pub inherited_annotations: Vec<String>,
    pub downscaler_annotations: Vec<String>,
    pub ignored_annotations: Vec<String>,
    pub custom_pod_annotations: BTreeMap<String, String>,
    pub delete_annotation_date_key: Option<String>,
    pub delete_annotation_name_key: Option<String>,
    /// Toleration fields: `key`, `operator`, `value`, `effect`.
    pub toleration: BTreeMap<String, String>,
    pub node_readiness_label: BTreeMap<String, String>,
    /// `OR` or `AND`.
    pub node_readiness_label_merge: String,
    /// `[namespace/]name` of a ConfigMap with extra pod environment.
    pub pod_environment_configmap: Option<String>,
    pub pod_environment_secret: Option<String>,
    pub enable_pod_antiaffinity: bool,
    pub pod_antiaffinity_preferred_during_scheduling: bool,
    pub pod_antiaffinity_topology_key: String,
    pub enable_pod_disruption_budget: bool,
    /// Template with `{cluster}`.
    pub pdb_name_format: String,
    pub pdb_master_label_selector: bool,
    pub enable_readiness_probe: bool,
    pub enable_shm_volume: bool,
    pub enable_init_containers: bool,
    pub enable_sidecars: bool,
    pub share_pgsocket_with_sidecars: bool,
    pub spilo_runasuser: Option<i64>,
    pub spilo_runasgroup: Option<i64>,
    pub spilo_fsgroup: Option<i64>,
    pub spilo_privileged: bool,
    pub spilo_allow_privilege_escalation: bool,
    pub additional_pod_capabilities: Vec<String>,
    pub enable_owner_references: bool,
    pub enable_finalizers: bool,
    pub enable_cross_namespace_secret: bool,
    pub enable_secrets_deletion: bool,
    pub enable_persistent_volume_claim_deletion: bool,
    /// `when_deleted` / `when_scaled` → `retain` or `delete`.
    pub persistent_volume_claim_retention_policy: BTreeMap<String, String>,
    /// `pvc`, `ebs`, `mixed` or `off`.
    pub storage_resize_mode: String,

    // ---- Postgres pod resources ----------------------------------------
    // Zalando's config.go has no built-in defaults here (unset means the
    // operator sets no request/limit); its sample manifests set them.
    pub default_cpu_request: Option<String>,
    pub default_memory_request: Option<String>,
    pub default_cpu_limit: Option<String>,
    pub default_memory_limit: Option<String>,
    pub min_cpu_limit: Option<String>,
    pub min_memory_limit: Option<String>,
    pub max_cpu_request: Option<String>,
    pub max_memory_request: Option<String>,

    // ---- timeouts --------------------------------------------------------
    #[serde(serialize_with = "serialize_duration")]
    pub ready_wait_interval: Duration,
    #[serde(serialize_with = "serialize_duration")]
    pub ready_wait_timeout: Duration,
    #[serde(serialize_with = "serialize_duration")]
    pub resource_check_interval: Duration,
    #[serde(serialize_with = "serialize_duration")]
    pub resource_check_timeout: Duration,
    #[serde(serialize_with = "serialize_duration")]
    pub pod_label_wait_timeout: Duration,
    #[serde(serialize_with = "serialize_duration")]
    pub pod_deletion_wait_timeout: Duration,
    #[serde(serialize_with = "serialize_duration")]
    pub master_pod_move_timeout: Duration,
    #[serde(serialize_with = "serialize_duration")]
    pub patroni_api_check_interval: Duration,
    #[serde(serialize_with = "serialize_duration")]
    pub patroni_api_check_timeout: Duration,

    // ---- load balancers and DNS ------------------------------------------
    pub db_hosted_zone: String,
    pub enable_master_load_balancer: bool,
    pub enable_master_pooler_load_balancer: bool,
    pub enable_replica_load_balancer: bool,
    pub enable_replica_pooler_load_balancer: bool,
    /// Deprecated predecessor of `enable_master_load_balancer`; kept so the
    /// caller can honour or warn about it.
    pub enable_load_balancer: Option<bool>,
    pub custom_service_annotations: BTreeMap<String, String>,
    /// `Cluster` or `Local`.
    pub external_traffic_policy: String,
    /// Template with `{cluster}`, `{namespace}`, `{team}`, `{hostedzone}`.
    pub master_dns_name_format: String,
    pub master_legacy_dns_name_format: String,
    pub replica_dns_name_format: String,
    pub replica_legacy_dns_name_format: String,

    // ---- AWS, GCP, Azure ---------------------------------------------------
    pub aws_region: String,
    pub wal_s3_bucket: Option<String>,
    pub wal_gs_bucket: Option<String>,
    pub wal_az_storage_account: Option<String>,
    pub log_s3_bucket: Option<String>,
    pub kube_iam_role: Option<String>,
    pub irsa_role_arn: Option<String>,
    /// Path of a credentials file inside the pods, not the credentials.
    pub gcp_credentials: Option<String>,
    pub additional_secret_mount: Option<String>,
    pub additional_secret_mount_path: Option<String>,
    pub enable_ebs_gp3_migration: bool,
    /// GiB.
    pub enable_ebs_gp3_migration_max_size: i64,

    // ---- teams API and roles ---------------------------------------------
    pub enable_teams_api: bool,
    pub teams_api_url: String,
    /// `[namespace/]name` of the secret with the OAuth token for the teams API.
    pub oauth_token_secret_name: String,
    pub team_admin_role: String,
    pub enable_team_superuser: bool,
    pub enable_admin_role_for_users: bool,
    pub enable_team_member_deprecation: bool,
    pub role_deletion_suffix: String,
    pub enable_postgres_team_crd: bool,
    pub enable_postgres_team_crd_superusers: bool,
    pub pam_role_name: String,
    pub pam_configuration: String,
    pub protected_role_names: Vec<String>,
    pub postgres_superuser_teams: Vec<String>,
    /// Postgres settings for team member roles; values keep their quotes.
    pub team_api_role_configuration: BTreeMap<String, String>,

    // ---- logging and REST API --------------------------------------------
    pub api_port: u16,
    pub ring_log_lines: usize,
    pub cluster_history_entries: usize,

    // ---- logical backup ----------------------------------------------------
    pub logical_backup_schedule: String,
    pub logical_backup_docker_image: String,
    /// `s3`, `gcs`, `az` or `aws`.
    pub logical_backup_provider: String,
    pub logical_backup_job_prefix: String,
    pub logical_backup_cronjob_environment_secret: Option<String>,
    pub logical_backup_cpu_request: Option<String>,
    pub logical_backup_memory_request: Option<String>,
    pub logical_backup_cpu_limit: Option<String>,
    pub logical_backup_memory_limit: Option<String>,
    pub logical_backup_s3_bucket: Option<String>,
    pub logical_backup_s3_bucket_prefix: String,
    pub logical_backup_s3_region: Option<String>,
    pub logical_backup_s3_endpoint: Option<String>,
    #[serde(skip_serializing)]
    pub logical_backup_s3_access_key_id: Option<SecretValue>,
    #[serde(skip_serializing)]
    pub logical_backup_s3_secret_access_key: Option<SecretValue>,
    pub logical_backup_s3_sse: Option<String>,
    pub logical_backup_s3_retention_time: Option<String>,
    pub logical_backup_google_application_credentials: Option<String>,
    pub logical_backup_azure_storage_account_name: Option<String>,
    pub logical_backup_azure_storage_container: Option<String>,
    #[serde(skip_serializing)]
    pub logical_backup_azure_storage_account_key: Option<SecretValue>,

    // ---- connection pooler -----------------------------------------------
    pub connection_pooler_number_of_instances: i32,
    pub connection_pooler_schema: String,
    pub connection_pooler_user: String,
    pub connection_pooler_image: String,
    /// `session` or `transaction`.
    pub connection_pooler_mode: String,
    pub connection_pooler_max_db_connections: i32,
    pub connection_pooler_default_cpu_request: Option<String>,
    pub connection_pooler_default_memory_request: Option<String>,
    pub connection_pooler_default_cpu_limit: Option<String>,
    pub connection_pooler_default_memory_limit: Option<String>,

    // ---- Scalyr log shipping sidecar (still in config.go) ------------------
    #[serde(skip_serializing)]
    pub scalyr_api_key: Option<SecretValue>,
    pub scalyr_image: Option<String>,
    pub scalyr_server_url: String,
    pub scalyr_cpu_request: String,
    pub scalyr_memory_request: String,
    pub scalyr_cpu_limit: String,
    pub scalyr_memory_limit: String,

    /// Keys of the ConfigMap that no field matches (sorted). Never an error:
    /// the caller should warn about them.
    pub unknown_keys: Vec<String>,
}

impl Default for OperatorConfig {
    /// The defaults of Zalando's `config.go`. Image tags follow the Zalando
    /// release whose manifests are the compatibility corpus.
    fn default() -> Self {
        fn s(value: &str) -> String {
            value.to_string()
        }
        fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
            pairs.iter().map(|(k, v)| (s(k), s(v))).collect()
        }
        OperatorConfig {
            watched_namespace: None,
            workers: 8,
            resync_period: Duration::from_secs(30 * 60),
            repair_period: Duration::from_secs(5 * 60),
            docker_image: s("ghcr.io/zalando/spilo-18:4.1-p2"),
            kubernetes_use_configmaps: false,
            etcd_host: None,
            enable_crd_registration: true,
            enable_crd_validation: true,
            crd_categories: vec![s("all")],
            min_instances: -1,
            max_instances: -1,
            ignore_instance_limits_annotation_key: None,
            ignore_resources_limits_annotation_key: None,
            enable_maintenance_windows: true,
            maintenance_windows: Vec::new(),
            sidecar_docker_images: BTreeMap::new(),
            sidecars: None,
            enable_lazy_spilo_upgrade: false,
            enable_pgversion_env_var: true,
            enable_spilo_wal_path_compat: false,
            enable_team_id_clustername_prefix: false,
            enable_patroni_failsafe_mode: false,
            set_memory_request_to_limit: false,
            debug_logging: true,
            enable_database_access: true,

            super_username: s("postgres"),
            replication_username: s("standby"),
            additional_owner_roles: Vec::new(),
            secret_name_template: s("{username}.{cluster}.credentials.{tprkind}.{tprgroup}"),
            enable_password_rotation: false,
            password_rotation_interval: 90,
            password_rotation_user_retention: 180,
            infrastructure_roles_secret_name: None,
            infrastructure_roles_secrets: None,

            major_version_upgrade_mode: s("manual"),
            major_version_upgrade_team_allow_list: Vec::new(),
            minimal_major_version: s("14"),
            target_major_version: s("18"),

            pod_service_account_name: s("postgres-pod"),
            pod_service_account_definition: None,
            pod_service_account_role_binding_definition: None,
            pod_terminate_grace_period: Duration::from_secs(5 * 60),
            pod_management_policy: s("ordered_ready"),
            pod_priority_class_name: None,
            cluster_domain: s("cluster.local"),
            cluster_labels: map(&[("application", "spilo")]),
            cluster_name_label: s("cluster-name"),
            pod_role_label: s("spilo-role"),
            inherited_labels: Vec::new(),
            inherited_annotations: Vec::new(),
            downscaler_annotations: Vec::new(),
            ignored_annotations: Vec::new(),
            custom_pod_annotations: BTreeMap::new(),
            delete_annotation_date_key: None,
            delete_annotation_name_key: None,
            toleration: BTreeMap::new(),
            node_readiness_label: BTreeMap::new(),
            node_readiness_label_merge: s("OR"),
            pod_environment_configmap: None,
            pod_environment_secret: None,
            enable_pod_antiaffinity: false,
            pod_antiaffinity_preferred_during_scheduling: false,
            pod_antiaffinity_topology_key: s("kubernetes.io/hostname"),
            enable_pod_disruption_budget: true,
            pdb_name_format: s("postgres-{cluster}-pdb"),
            pdb_master_label_selector: true,
            enable_readiness_probe: false,
            enable_shm_volume: true,
            enable_init_containers: true,
            enable_sidecars: true,
            share_pgsocket_with_sidecars: false,
            spilo_runasuser: None,
            spilo_runasgroup: None,
            spilo_fsgroup: None,
            spilo_privileged: false,
            spilo_allow_privilege_escalation: true,
            additional_pod_capabilities: Vec::new(),
            enable_owner_references: false,
            enable_finalizers: false,
            enable_cross_namespace_secret: false,
            enable_secrets_deletion: true,
            enable_persistent_volume_claim_deletion: true,
            persistent_volume_claim_retention_policy: map(&[
                ("when_deleted", "retain"),
                ("when_scaled", "retain"),
            ]),
            storage_resize_mode: s("pvc"),

            default_cpu_request: None,
            default_memory_request: None,
            default_cpu_limit: None,
            default_memory_limit: None,
            min_cpu_limit: None,
            min_memory_limit: None,
            max_cpu_request: None,
            max_memory_request: None,

            ready_wait_interval: Duration::from_secs(4),
            ready_wait_timeout: Duration::from_secs(30),
            resource_check_interval: Duration::from_secs(3),
            resource_check_timeout: Duration::from_secs(10 * 60),
            pod_label_wait_timeout: Duration::from_secs(10 * 60),
            pod_deletion_wait_timeout: Duration::from_secs(10 * 60),
            master_pod_move_timeout: Duration::from_secs(20 * 60),
            patroni_api_check_interval: Duration::from_secs(1),
            patroni_api_check_timeout: Duration::from_secs(5),

            db_hosted_zone: s("db.example.com"),
            enable_master_load_balancer: true,
            enable_master_pooler_load_balancer: false,
            enable_replica_load_balancer: false,
            enable_replica_pooler_load_balancer: false,
            enable_load_balancer: None,
            custom_service_annotations: BTreeMap::new(),
            external_traffic_policy: s("Cluster"),
            master_dns_name_format: s("{cluster}.{namespace}.{hostedzone}"),
            master_legacy_dns_name_format: s("{cluster}.{team}.{hostedzone}"),
            replica_dns_name_format: s("{cluster}-repl.{namespace}.{hostedzone}"),
            replica_legacy_dns_name_format: s("{cluster}-repl.{team}.{hostedzone}"),

            aws_region: s("eu-central-1"),
            wal_s3_bucket: None,
            wal_gs_bucket: None,
            wal_az_storage_account: None,
            log_s3_bucket: None,
            kube_iam_role: None,
            irsa_role_arn: None,
            gcp_credentials: None,
            additional_secret_mount: None,
            additional_secret_mount_path: None,
            enable_ebs_gp3_migration: false,
            enable_ebs_gp3_migration_max_size: 1000,

            enable_teams_api: true,
            teams_api_url: s("https://teams.example.com/api/"),
            oauth_token_secret_name: s("postgresql-operator"),
            team_admin_role: s("admin"),
            enable_team_superuser: false,
            enable_admin_role_for_users: true,
            enable_team_member_deprecation: false,
            role_deletion_suffix: s("_deleted"),
            enable_postgres_team_crd: false,
            enable_postgres_team_crd_superusers: false,
            pam_role_name: s("zalandos"),
            pam_configuration: s(
                "https://info.example.com/oauth2/tokeninfo?access_token= uid realm=/employees",
            ),
            protected_role_names: vec![s("admin"), s("cron_admin")],
            postgres_superuser_teams: Vec::new(),
            team_api_role_configuration: map(&[("log_statement", "all")]),

            api_port: 8080,
            ring_log_lines: 100,
            cluster_history_entries: 1000,

            logical_backup_schedule: s("30 00 * * *"),
            logical_backup_docker_image: s(
                "ghcr.io/zalando/postgres-operator/logical-backup:v2.0.1",
            ),
            logical_backup_provider: s("s3"),
            logical_backup_job_prefix: s("logical-backup-"),
            logical_backup_cronjob_environment_secret: None,
            logical_backup_cpu_request: None,
            logical_backup_memory_request: None,
            logical_backup_cpu_limit: None,
            logical_backup_memory_limit: None,
            logical_backup_s3_bucket: None,
            logical_backup_s3_bucket_prefix: s("spilo"),
            logical_backup_s3_region: None,
            logical_backup_s3_endpoint: None,
            logical_backup_s3_access_key_id: None,
            logical_backup_s3_secret_access_key: None,
            logical_backup_s3_sse: None,
            logical_backup_s3_retention_time: None,
            logical_backup_google_application_credentials: None,
            logical_backup_azure_storage_account_name: None,
            logical_backup_azure_storage_container: None,
            logical_backup_azure_storage_account_key: None,

            connection_pooler_number_of_instances: 2,
            connection_pooler_schema: s("pooler"),
            connection_pooler_user: s("pooler"),
            connection_pooler_image: s("ghcr.io/zalando/postgres-operator/pgbouncer:latest"),
            connection_pooler_mode: s("transaction"),
            connection_pooler_max_db_connections: 60,
            connection_pooler_default_cpu_request: None,
            connection_pooler_default_memory_request: None,
            connection_pooler_default_cpu_limit: None,
            connection_pooler_default_memory_limit: None,

            scalyr_api_key: None,
            scalyr_image: None,
            scalyr_server_url: s("https://upload.eu.scalyr.com"),
            scalyr_cpu_request: s("100m"),
            scalyr_memory_request: s("50Mi"),
            scalyr_cpu_limit: s("1"),
            scalyr_memory_limit: s("500Mi"),

            unknown_keys: Vec::new(),
        }
    }
}

/// Generates [`KNOWN_KEYS`] and `OperatorConfig::set` from one list of field
/// names. Each field is named exactly like its ConfigMap key, and the field's
/// type picks the parser (see [`ConfigValue`]).
macro_rules! config_keys {
    ($($key:ident,)+) => {
        /// Every ConfigMap key [`OperatorConfig`] understands.
        pub const KNOWN_KEYS: &[&str] = &[$(stringify!($key)),+];

        impl OperatorConfig {
            /// Stores `raw` in the field named `key`; `Ok(false)` if there is none.
            fn set(&mut self, key: &str, raw: &str) -> Result<bool, ConfigError> {
                match key {
                    $(stringify!($key) => {
                        let parsed = ConfigValue::parse(raw)
                            .map_err(|reason| ConfigError::invalid(key, raw, reason))?;
                        if let Some(value) = parsed {
                            self.$key = value;
                        }
                    })+
                    _ => return Ok(false),
                }
                Ok(true)
            }
        }
    };
}

config_keys! {
    watched_namespace, workers, resync_period, repair_period, docker_image,
    kubernetes_use_configmaps, etcd_host, enable_crd_registration, enable_crd_validation,
    crd_categories, min_instances, max_instances, ignore_instance_limits_annotation_key,
    ignore_resources_limits_annotation_key, enable_maintenance_windows, maintenance_windows,
    sidecar_docker_images, sidecars, enable_lazy_spilo_upgrade, enable_pgversion_env_var,
    enable_spilo_wal_path_compat, enable_team_id_clustername_prefix,
    enable_patroni_failsafe_mode, set_memory_request_to_limit, debug_logging,
    enable_database_access,

    super_username, replication_username, additional_owner_roles, secret_name_template,
    enable_password_rotation, password_rotation_interval, password_rotation_user_retention,
    infrastructure_roles_secret_name, infrastructure_roles_secrets,

    major_version_upgrade_mode, major_version_upgrade_team_allow_list, minimal_major_version,
    target_major_version,

    pod_service_account_name, pod_service_account_definition,
    pod_service_account_role_binding_definition, pod_terminate_grace_period,
    pod_management_policy, pod_priority_class_name, cluster_domain, cluster_labels,
    cluster_name_label, pod_role_label, inherited_labels, inherited_annotations,
    downscaler_annotations, ignored_annotations, custom_pod_annotations,
    delete_annotation_date_key, delete_annotation_name_key, toleration, node_readiness_label,
    node_readiness_label_merge, pod_environment_configmap, pod_environment_secret,
    enable_pod_antiaffinity, pod_antiaffinity_preferred_during_scheduling,
    pod_antiaffinity_topology_key, enable_pod_disruption_budget, pdb_name_format,
    pdb_master_label_selector, enable_readiness_probe, enable_shm_volume,
    enable_init_containers, enable_sidecars, share_pgsocket_with_sidecars, spilo_runasuser,
    spilo_runasgroup, spilo_fsgroup, spilo_privileged, spilo_allow_privilege_escalation,
    additional_pod_capabilities, enable_owner_references, enable_finalizers,
    enable_cross_namespace_secret, enable_secrets_deletion,
    enable_persistent_volume_claim_deletion, persistent_volume_claim_retention_policy,
    storage_resize_mode,

    default_cpu_request, default_memory_request, default_cpu_limit, default_memory_limit,
    min_cpu_limit, min_memory_limit, max_cpu_request, max_memory_request,

    ready_wait_interval, ready_wait_timeout, resource_check_interval, resource_check_timeout,
    pod_label_wait_timeout, pod_deletion_wait_timeout, master_pod_move_timeout,
    patroni_api_check_interval, patroni_api_check_timeout,

    db_hosted_zone, enable_master_load_balancer, enable_master_pooler_load_balancer,
    enable_replica_load_balancer, enable_replica_pooler_load_balancer, enable_load_balancer,
    custom_service_annotations, external_traffic_policy, master_dns_name_format,
    master_legacy_dns_name_format, replica_dns_name_format, replica_legacy_dns_name_format,

    aws_region, wal_s3_bucket, wal_gs_bucket, wal_az_storage_account, log_s3_bucket,
    kube_iam_role, irsa_role_arn, gcp_credentials, additional_secret_mount,
    additional_secret_mount_path, enable_ebs_gp3_migration, enable_ebs_gp3_migration_max_size,

    enable_teams_api, teams_api_url, oauth_token_secret_name, team_admin_role,
    enable_team_superuser, enable_admin_role_for_users, enable_team_member_deprecation,
    role_deletion_suffix, enable_postgres_team_crd, enable_postgres_team_crd_superusers,
    pam_role_name, pam_configuration, protected_role_names, postgres_superuser_teams,
    team_api_role_configuration,

    api_port, ring_log_lines, cluster_history_entries,

    logical_backup_schedule, logical_backup_docker_image, logical_backup_provider,
    logical_backup_job_prefix, logical_backup_cronjob_environment_secret,
    logical_backup_cpu_request, logical_backup_memory_request, logical_backup_cpu_limit,
    logical_backup_memory_limit, logical_backup_s3_bucket, logical_backup_s3_bucket_prefix,
    logical_backup_s3_region, logical_backup_s3_endpoint, logical_backup_s3_access_key_id,
    logical_backup_s3_secret_access_key, logical_backup_s3_sse,
    logical_backup_s3_retention_time, logical_backup_google_application_credentials,
    logical_backup_azure_storage_account_name, logical_backup_azure_storage_container,
    logical_backup_azure_storage_account_key,

    connection_pooler_number_of_instances, connection_pooler_schema, connection_pooler_user,
    connection_pooler_image, connection_pooler_mode, connection_pooler_max_db_connections,
    connection_pooler_default_cpu_request, connection_pooler_default_memory_request,
    connection_pooler_default_cpu_limit, connection_pooler_default_memory_limit,

    scalyr_api_key, scalyr_image, scalyr_server_url, scalyr_cpu_request,
    scalyr_memory_request, scalyr_cpu_limit, scalyr_memory_limit,
}

/// Reads the `data` of Zalando's `postgres-operator` ConfigMap.
pub fn from_config_map_data(
    data: &BTreeMap<String, String>,
) -> Result<OperatorConfig, ConfigError> {
    let mut config = OperatorConfig::default();
    for (key, value) in data {
        if !config.set(key, value)? {
            config.unknown_keys.push(key.clone());
        }
    }
    config.validate()?;
    Ok(config)
}

/// Reads Zalando's `postgres-operator` ConfigMap (its `binaryData` is ignored).
pub fn from_config_map(cm: &ConfigMap) -> Result<OperatorConfig, ConfigError> {
    match &cm.data {
        Some(data) => from_config_map_data(data),
        None => from_config_map_data(&BTreeMap::new()),
    }
}

/// The keys whose fields are [`SecretValue`]s (credentials). `OperatorConfig`'s
/// `Serialize` leaves them out; [`effective_config_json`] shows them redacted.
pub const SECRET_KEYS: &[&str] = &[
    "logical_backup_s3_access_key_id",
    "logical_backup_s3_secret_access_key",
    "logical_backup_azure_storage_account_key",
    "scalyr_api_key",
];

/// What [`effective_config_json`] shows instead of a credential that is set.
pub const REDACTED: &str = "<redacted>";

/// The configuration as JSON for display (the gateway's `/config/`): every
/// field under its ConfigMap key (durations as `"30m"`), `unknown_keys`, and
/// each credential of [`SECRET_KEYS`] as `"<redacted>"` when set, `null` when
/// not. No credential's value is ever part of the result.
pub fn effective_config_json(config: &OperatorConfig) -> serde_json::Value {
    let mut json = serde_json::to_value(config)
        .expect("OperatorConfig has string keys and infallible fields: it always serializes");
    if let Some(fields) = json.as_object_mut() {
        for (key, secret) in config.secrets() {
            let shown = match secret {
                Some(_) => serde_json::Value::String(REDACTED.to_string()),
                None => serde_json::Value::Null,
            };
            fields.insert(key.to_string(), shown);
        }
    }
    json
}

impl OperatorConfig {
    /// The namespaces to watch. `env_override` (the `WATCHED_NAMESPACE`
    /// environment variable) wins over `watched_namespace` whenever it is set,
    /// even to an empty string. Empty means the operator's own namespace, `*`
    /// means all namespaces, otherwise a comma-separated list of namespaces.
    pub fn watched_namespaces(
        &self,
        own_namespace: &str,
        env_override: Option<&str>,
    ) -> WatchedNamespaces {
        let raw = env_override
            .or(self.watched_namespace.as_deref())
            .unwrap_or("");
        let mut names: Vec<String> = Vec::new();
        for name in raw.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            if name == "*" {
                return WatchedNamespaces::All;
            }
            if !names.iter().any(|n| n == name) {
                names.push(name.to_string());
            }
        }
        if names.is_empty() {
            names.push(own_namespace.to_string());
        }
        WatchedNamespaces::Some(names)
    }

    /// Each credential field under its key, in the order of [`SECRET_KEYS`].
    fn secrets(&self) -> [(&'static str, Option<&SecretValue>); 4] {
        [
            (
                "logical_backup_s3_access_key_id",
                self.logical_backup_s3_access_key_id.as_ref(),
            ),
            (
                "logical_backup_s3_secret_access_key",
                self.logical_backup_s3_secret_access_key.as_ref(),
            ),
            (
                "logical_backup_azure_storage_account_key",
                self.logical_backup_azure_storage_account_key.as_ref(),
            ),
            ("scalyr_api_key", self.scalyr_api_key.as_ref()),
        ]
    }

    /// The cross-key checks Zalando's operator refuses to start without.
    fn validate(&self) -> Result<(), ConfigError> {
        if self.workers == 0 {
            return Err(ConfigError::invalid("workers", "0", "must be at least 1"));
        }
        if self.connection_pooler_number_of_instances < 1 {
            return Err(ConfigError::invalid(
                "connection_pooler_number_of_instances",
                &self.connection_pooler_number_of_instances.to_string(),
                "must be at least 1",
            ));
        }
        if self.min_instances > 0
            && self.max_instances > 0
            && self.min_instances > self.max_instances
        {
            return Err(ConfigError::Inconsistent(format!(
                "min_instances ({}) is higher than max_instances ({})",
                self.min_instances, self.max_instances
            )));
        }
        if self.connection_pooler_user == self.super_username {
            return Err(ConfigError::Inconsistent(format!(
                "connection_pooler_user must differ from super_username (both are {:?})",
                self.super_username
            )));
        }
        Ok(())
    }
}

/// How a ConfigMap string becomes a field value. `Ok(None)` means "empty
/// value, keep the default" (used only by scalars, see the module docs).
trait ConfigValue: Sized {
    fn parse(raw: &str) -> Result<Option<Self>, String>;
}

/// Trims `raw`; `None` if nothing is left.
fn non_empty(raw: &str) -> Option<&str> {
    Some(raw.trim()).filter(|s| !s.is_empty())
}

fn parse_number<T>(raw: &str) -> Result<Option<T>, String>
where
    T: std::str::FromStr,
    T::Err: fmt::Display,
{
    non_empty(raw)
        .map(|s| {
            s.parse::<T>()
                .map_err(|e| format!("expected a whole number ({e})"))
        })
        .transpose()
}

impl ConfigValue for bool {
    fn parse(raw: &str) -> Result<Option<Self>, String> {
        non_empty(raw).map(parse_bool).transpose()
    }
}

impl ConfigValue for i32 {
    fn parse(raw: &str) -> Result<Option<Self>, String> {
        parse_number(raw)
    }
}

impl ConfigValue for i64 {
    fn parse(raw: &str) -> Result<Option<Self>, String> {
        parse_number(raw)
    }
}

impl ConfigValue for u16 {
    fn parse(raw: &str) -> Result<Option<Self>, String> {
        parse_number(raw)
    }
}

impl ConfigValue for u32 {
    fn parse(raw: &str) -> Result<Option<Self>, String> {
        parse_number(raw)
    }
}

impl ConfigValue for usize {
    fn parse(raw: &str) -> Result<Option<Self>, String> {
        parse_number(raw)
    }
}

impl ConfigValue for Duration {
    fn parse(raw: &str) -> Result<Option<Self>, String> {
        non_empty(raw).map(parse_duration).transpose()
    }
}

impl ConfigValue for String {
    fn parse(raw: &str) -> Result<Option<Self>, String> {
        Ok(Some(raw.trim().to_string()))
    }
}

impl ConfigValue for SecretValue {
    fn parse(raw: &str) -> Result<Option<Self>, String> {
        Ok(Some(SecretValue(raw.trim().to_string())))
    }
}

impl ConfigValue for Vec<String> {
    fn parse(raw: &str) -> Result<Option<Self>, String> {
        Ok(Some(parse_list(raw)))
    }
}

impl ConfigValue for BTreeMap<String, String> {
    fn parse(raw: &str) -> Result<Option<Self>, String> {
        parse_map(raw).map(Some)
    }
}

/// Optional values: empty means `None`, anything else is read as `T`.
impl<T: ConfigValue> ConfigValue for Option<T> {
    fn parse(raw: &str) -> Result<Option<Self>, String> {
        match non_empty(raw) {
            None => Ok(Some(None)),
            Some(_) => T::parse(raw).map(Some),
        }
    }
}

/// Go's `strconv.ParseBool` words, case-insensitive.
fn parse_bool(raw: &str) -> Result<bool, String> {
    match raw.trim().to_ascii_lowercase().as_str() {
        "true" | "t" | "1" => Ok(true),
        "false" | "f" | "0" => Ok(false),
        _ => Err("expected a boolean (true or false)".to_string()),
    }
}

/// `a, b,,c` → `[a, b, c]`.
pub(crate) fn parse_list(raw: &str) -> Vec<String> {
    raw.split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(String::from)
        .collect()
}

/// `k1:v1,k2:'v,2'` → `{k1: v1, k2: 'v,2'}`; see the module docs.
pub(crate) fn parse_map(raw: &str) -> Result<BTreeMap<String, String>, String> {
    let mut map = BTreeMap::new();
    for item in split_outside_quotes(raw)? {
        let item = item.trim();
        if item.is_empty() {
            continue;
        }
        let (key, value) = item
            .split_once(':')
            .ok_or_else(|| format!("map item {item:?} is not of the form key:value"))?;
        let key = key.trim();
        if key.is_empty() {
            return Err(format!("map item {item:?} has an empty key"));
        }
        map.insert(key.to_string(), value.trim().to_string());
    }
    Ok(map)
}

/// Splits at commas that are not inside single or double quotes.
fn split_outside_quotes(raw: &str) -> Result<Vec<&str>, String> {
    let mut items = Vec::new();
    let mut start = 0;
    let mut open_quote: Option<(char, usize)> = None;
    for (at, c) in raw.char_indices() {
        match open_quote {
            Some((quote, _)) if c == quote => open_quote = None,
            Some(_) => {}
            None if c == '\'' || c == '"' => open_quote = Some((c, at)),
            None if c == ',' => {
                items.push(&raw[start..at]);
                start = at + 1;
            }
            None => {}
        }
    }
    if let Some((quote, at)) = open_quote {
        return Err(format!("unmatched {quote} quote at position {}", at + 1));
    }
    items.push(&raw[start..]);
    Ok(items)
}

/// Go's `time.ParseDuration` (`1h30m`, `1.5s`, `100ms`, `0`), without
/// negative values. The largest accepted value is Go's (about 292 years).
fn parse_duration(raw: &str) -> Result<Duration, String> {
    let text = raw.trim();
    let text = text.strip_prefix('+').unwrap_or(text);
    if text.starts_with('-') {
        return Err("a duration cannot be negative".to_string());
    }
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    if text.is_empty() {
        return Err("expected a duration such as 30s, 5m or 1h30m".to_string());
    }
    let digits_len = |s: &str| s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let mut total_nanos: u128 = 0;
    let mut rest = text;
    while !rest.is_empty() {
        let (whole, after) = rest.split_at(digits_len(rest));
        let (fraction, after) = match after.strip_prefix('.') {
            Some(after_dot) => after_dot.split_at(digits_len(after_dot)),
            None => ("", after),
        };
        if whole.is_empty() && fraction.is_empty() {
            return Err(format!("expected a number at {rest:?}"));
        }
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        let unit_nanos: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60 * 1_000_000_000,
            "h" => 3_600 * 1_000_000_000,
            "" => return Err("missing unit (use ns, us, ms, s, m or h)".to_string()),
            other => {
                return Err(format!(
                    "unknown unit {other:?} (use ns, us, ms, s, m or h)"
                ))
            }
        };
        let too_large = || "duration is too large".to_string();
        let whole: u128 = if whole.is_empty() {
            0
        } else {
            whole.parse().map_err(|_| too_large())?
        };
        // Digits past the 18th cannot matter at nanosecond precision.
        let fraction = &fraction[..fraction.len().min(18)];
        let fraction_nanos = if fraction.is_empty() {
            0
        } else {
            let value: u128 = fraction.parse().map_err(|_| too_large())?;
            value * unit_nanos / 10u128.pow(fraction.len() as u32)
        };
        total_nanos = whole
            .checked_mul(unit_nanos)
            .and_then(|n| n.checked_add(fraction_nanos))
            .and_then(|n| n.checked_add(total_nanos))
            .filter(|n| *n <= i64::MAX as u128)
            .ok_or_else(too_large)?;
        rest = after;
    }
    Ok(Duration::from_nanos(total_nanos as u64))
}

/// Formats a duration so that [`parse_duration`] (and Go) read it back:
/// `1h30m`, `100ms`, `0s`.
fn format_duration(duration: Duration) -> String {
    if duration.is_zero() {
        return "0s".to_string();
    }
    let secs = duration.as_secs();
    let nanos = u64::from(duration.subsec_nanos());
    let parts = [
        (secs / 3600, "h"),
        (secs / 60 % 60, "m"),
        (secs % 60, "s"),
        (nanos / 1_000_000, "ms"),
        (nanos / 1_000 % 1_000, "us"),
        (nanos % 1_000, "ns"),
    ];
    let mut out = String::new();
    for (amount, unit) in parts {
        if amount > 0 {
            let _ = write!(out, "{amount}{unit}");
        }
    }
    out
}

fn serialize_duration<S: Serializer>(
    duration: &Duration,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&format_duration(*duration))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Zalando's `configmap.yaml`; None when the corpus is missing (see [`crate::corpus`]).
    fn zalando_configmap(test: &str) -> Option<String> {
        let folder = crate::corpus::zalando_corpus(test)?;
        Some(
            std::fs::read_to_string(folder.join("configmap.yaml"))
                .expect("read Zalando's configmap.yaml"),
        )
    }

    fn data(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn parse(pairs: &[(&str, &str)]) -> Result<OperatorConfig, ConfigError> {
        from_config_map_data(&data(pairs))
    }

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    fn minutes(m: u64) -> Duration {
        Duration::from_secs(m * 60)
    }

    #[test]
    fn zalando_configmap_parses_with_the_values_it_states() {
        let Some(text) = zalando_configmap("zalando_configmap_parses_with_the_values_it_states")
        else {
            return;
        };
        let cm: ConfigMap = serde_yaml::from_str(&text).expect("configmap.yaml is a ConfigMap");
        let config = from_config_map(&cm).expect("Zalando's own ConfigMap must parse");

        assert_eq!(
            config.unknown_keys,
            Vec::<String>::new(),
            "every key of the file is known"
        );
        assert_eq!(config.resync_period, minutes(30));
        assert_eq!(config.repair_period, minutes(5));
        assert_eq!(config.master_pod_move_timeout, minutes(20));
        assert_eq!(
            config.ready_wait_interval,
            Duration::from_secs(3),
            "file says 3s, default is 4s"
        );
        assert_eq!(config.workers, 8);
        assert_eq!(config.max_instances, -1);
        assert_eq!(config.min_instances, -1);
        assert_eq!(config.docker_image, "ghcr.io/zalando/spilo-18:4.1-p2");
        assert_eq!(config.cluster_labels, data(&[("application", "spilo")]));
        assert_eq!(
            config.protected_role_names,
            strings(&["admin", "cron_admin"])
        );
        assert_eq!(
            config.team_api_role_configuration,
            data(&[("log_statement", "all")])
        );
        assert_eq!(
            config.persistent_volume_claim_retention_policy,
            data(&[("when_deleted", "retain"), ("when_scaled", "retain")])
        );
        assert_eq!(
            config.postgres_superuser_teams,
            strings(&["postgres_superusers"])
        );
        assert_eq!(config.watched_namespace.as_deref(), Some("*"));
        assert!(
            !config.enable_master_load_balancer,
            "file says false, default is true"
        );
        assert!(!config.enable_teams_api, "file says false, default is true");
        assert!(
            config.enable_spilo_wal_path_compat,
            "file says true, default is false"
        );
        assert_eq!(
            config.teams_api_url,
            "http://fake-teams-api.default.svc.cluster.local"
        );
        assert_eq!(config.default_cpu_limit.as_deref(), Some("1"));
        assert_eq!(config.min_memory_limit.as_deref(), Some("250Mi"));
        assert_eq!(config.logical_backup_schedule, "30 00 * * *");
        assert_eq!(
            config.logical_backup_s3_bucket.as_deref(),
            Some("my-bucket-url")
        );
        assert_eq!(
            config.logical_backup_s3_secret_access_key, None,
            "\"\" means unset"
        );
        assert_eq!(config.etcd_host, None, "\"\" means unset");
        assert_eq!(
            config.connection_pooler_image,
            "ghcr.io/zalando/postgres-operator/pgbouncer:v2.0.1"
        );
        assert_eq!(config.connection_pooler_max_db_connections, 60);
        assert_eq!(
            config.pam_configuration,
            "https://info.example.com/oauth2/tokeninfo?access_token= uid realm=/employees"
        );
        assert_eq!(config.password_rotation_user_retention, 180);
        assert_eq!(config.target_major_version, "18");
        assert_eq!(config.api_port, 8080);
    }

    /// The file's commented-out keys are examples of Zalando's formats:
    /// uncommented, they must parse too, and be known.
    #[test]
    fn zalando_configmap_commented_examples_parse() {
        let Some(text) = zalando_configmap("zalando_configmap_commented_examples_parse") else {
            return;
        };
        let uncommented: String = text
            .lines()
            .map(|line| match line.trim_start().strip_prefix("# ") {
                Some(example) if line.starts_with("  ") && example.contains(": ") => {
                    format!("  {example}")
                }
                _ => line.to_string(),
            })
            .collect::<Vec<_>>()
            .join("\n");
        let doc: serde_yaml::Value = serde_yaml::from_str(&uncommented).expect("still YAML");
        let mut map = BTreeMap::new();
        for (key, value) in doc["data"].as_mapping().expect("data is a mapping") {
            let value = match value {
                serde_yaml::Value::String(s) => s.clone(),
                other => serde_yaml::to_string(other).unwrap().trim().to_string(),
            };
            map.insert(key.as_str().unwrap().to_string(), value);
        }
        assert!(
            map.len() > 160,
            "the examples were uncommented ({} keys)",
            map.len()
        );

        let config = from_config_map_data(&map).expect("the commented examples must parse");
        assert_eq!(config.unknown_keys, Vec::<String>::new());
        assert_eq!(
            config.toleration,
            data(&[
                ("key", "db-only"),
                ("operator", "Exists"),
                ("effect", "NoSchedule")
            ])
        );
        assert_eq!(config.node_readiness_label, data(&[("status", "ready")]));
        assert_eq!(
            config.custom_pod_annotations,
            data(&[("keya", "valuea"), ("keyb", "valueb")])
        );
        assert_eq!(config.spilo_runasuser, Some(101));
        assert_eq!(config.spilo_fsgroup, Some(103));
        assert_eq!(
            config.inherited_labels,
            strings(&["application", "environment"])
        );
        assert_eq!(
            config.downscaler_annotations,
            strings(&["deployment-time", "downscaler/*"])
        );
        assert_eq!(
            config.maintenance_windows,
            strings(&["Sat:22:00-23:59", "Sun:00:00-01:00"])
        );
        assert_eq!(config.additional_pod_capabilities, strings(&["SYS_NICE"]));
        assert_eq!(
            config.pod_environment_configmap.as_deref(),
            Some("default/my-custom-config")
        );
        assert_eq!(config.max_memory_request.as_deref(), Some("4Gi"));
        assert_eq!(
            config.infrastructure_roles_secrets.as_deref(),
            Some("secretname:monitoring-roles,userkey:user,passwordkey:password,rolekey:inrole")
        );
        assert_eq!(config.ignored_annotations, Vec::<String>::new());
    }

    #[test]
    fn empty_config_map_gives_the_defaults() {
        assert_eq!(parse(&[]).unwrap(), OperatorConfig::default());
        assert_eq!(
            from_config_map(&ConfigMap::default()).unwrap(),
            OperatorConfig::default()
        );

        let defaults = OperatorConfig::default();
        assert_eq!(defaults.resync_period, minutes(30));
        assert_eq!(defaults.ready_wait_interval, Duration::from_secs(4));
        assert_eq!(defaults.replication_username, "standby");
        assert_eq!(
            defaults.protected_role_names,
            strings(&["admin", "cron_admin"])
        );
        assert_eq!(defaults.max_instances, -1);
        assert!(defaults.enable_master_load_balancer);
        assert_eq!(defaults.default_cpu_request, None);
    }

    #[test]
    fn every_field_is_a_known_key() {
        let json = serde_json::to_value(OperatorConfig::default()).unwrap();
        let mut fields: Vec<&str> = json
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        fields.retain(|f| *f != "unknown_keys");
        fields.extend(SECRET_KEYS);
        fields.sort_unstable();
        let mut known = KNOWN_KEYS.to_vec();
        known.sort_unstable();
        assert_eq!(fields, known);
    }

    #[test]
    fn unknown_keys_are_collected_not_rejected() {
        let config =
            parse(&[("some_future_key", "x"), ("Workers", "3"), ("workers", "4")]).unwrap();
        assert_eq!(
            config.unknown_keys,
            strings(&["Workers", "some_future_key"])
        );
        assert_eq!(config.workers, 4);
    }

    #[test]
    fn empty_values() {
        let config = parse(&[
            ("workers", ""),
            ("enable_sidecars", " "),
            ("resync_period", ""),
            ("protected_role_names", ""),
            ("cluster_labels", ""),
            ("docker_image", ""),
            ("pod_environment_secret", ""),
            ("spilo_runasuser", ""),
            ("enable_load_balancer", ""),
        ])
        .unwrap();
        assert_eq!(config.workers, 8, "scalars keep their default");
        assert!(config.enable_sidecars);
        assert_eq!(config.resync_period, minutes(30));
        assert_eq!(
            config.protected_role_names,
            Vec::<String>::new(),
            "lists become empty"
        );
        assert_eq!(config.cluster_labels, BTreeMap::new(), "maps become empty");
        assert_eq!(config.docker_image, "", "strings become empty");
        assert_eq!(config.pod_environment_secret, None);
        assert_eq!(config.spilo_runasuser, None);
        assert_eq!(config.enable_load_balancer, None);
    }

    #[test]
    fn bad_values_name_the_key_and_the_value() {
        let cases = [
            ("enable_sidecars", "yes"),
            ("debug_logging", "2"),
            ("workers", "eight"),
            ("workers", "-1"),
            ("max_instances", "99999999999"),
            ("api_port", "70000"),
            ("spilo_runasuser", "root"),
            ("resync_period", "30"),
            ("resync_period", "5x"),
            ("repair_period", "-5m"),
            ("cluster_labels", "application"),
            ("toleration", "key:db-only,operator"),
            ("custom_pod_annotations", ":value"),
            ("team_api_role_configuration", "search_path:'a,b"),
        ];
        for (key, value) in cases {
            let err =
                parse(&[(key, value)]).expect_err(&format!("{key}={value:?} must be rejected"));
            match &err {
                ConfigError::InvalidValue {
                    key: k, value: v, ..
                } => {
                    assert_eq!((k.as_str(), v.as_str()), (key, value));
                }
                other => panic!("{key}={value:?}: unexpected {other:?}"),
            }
            let message = err.to_string();
            assert!(
                message.contains(key) && message.contains(value),
                "{message}"
            );
        }
    }

    #[test]
    fn inconsistent_values_are_rejected() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[("workers", "0")], "workers"),
            (
                &[("connection_pooler_number_of_instances", "0")],
                "connection_pooler_number_of_instances",
            ),
            (
                &[("min_instances", "5"), ("max_instances", "3")],
                "min_instances",
            ),
            (&[("connection_pooler_user", "postgres")], "super_username"),
            (&[("super_username", "pooler")], "connection_pooler_user"),
        ];
        for (pairs, mentioned) in cases {
            let err = parse(pairs).expect_err(&format!("{pairs:?} must be rejected"));
            assert!(err.to_string().contains(mentioned), "{err}");
        }
        assert!(parse(&[("min_instances", "3"), ("max_instances", "-1")]).is_ok());
    }

    #[test]
    fn booleans() {
        let cases = [
            ("true", true),
            ("TRUE", true),
            ("True", true),
            (" t ", true),
            ("1", true),
            ("false", false),
            ("FaLsE", false),
            ("F", false),
            ("0", false),
        ];
        for (raw, want) in cases {
            assert_eq!(parse_bool(raw), Ok(want), "{raw:?}");
        }
        for raw in ["yes", "no", "on", "2", "truth"] {
            assert!(parse_bool(raw).is_err(), "{raw:?}");
        }
    }

    #[test]
    fn durations() {
        let ms = Duration::from_millis;
        let cases = [
            ("30m", minutes(30)),
            ("1h30m", minutes(90)),
            ("5s", ms(5_000)),
            ("1s", ms(1_000)),
            ("100ms", ms(100)),
            ("0", Duration::ZERO),
            ("0s", Duration::ZERO),
            ("+10m", minutes(10)),
            ("1.5h", minutes(90)),
            (".5s", ms(500)),
            (
                "2h45m30.25s",
                Duration::from_secs(2 * 3600 + 45 * 60 + 30) + ms(250),
            ),
            ("1m1s1ms1us1ns", Duration::new(61, 1_001_001)),
            ("3µs", Duration::from_micros(3)),
        ];
        for (raw, want) in cases {
            assert_eq!(parse_duration(raw), Ok(want), "{raw:?}");
            assert_eq!(
                parse_duration(&format_duration(want)),
                Ok(want),
                "{raw:?} round trip"
            );
        }
        for raw in [
            "",
            "30",
            "m",
            "1d",
            "-1s",
            "1.2.3s",
            ".s",
            "1h30",
            "5 m",
            "99999999999h",
        ] {
            assert!(parse_duration(raw).is_err(), "{raw:?} must be rejected");
        }
        assert_eq!(format_duration(minutes(90)), "1h30m");
        assert_eq!(format_duration(ms(100)), "100ms");
        assert_eq!(format_duration(Duration::ZERO), "0s");
    }

    #[test]
    fn lists() {
        let cases: &[(&str, &[&str])] = &[
            ("admin,cron_admin", &["admin", "cron_admin"]),
            (" a, ,b ,,", &["a", "b"]),
            ("single", &["single"]),
            ("", &[]),
        ];
        for (raw, want) in cases {
            assert_eq!(parse_list(raw), strings(want), "{raw:?}");
        }
    }

    #[test]
    fn maps() {
        let cases: &[(&str, &[(&str, &str)])] = &[
            ("application:spilo", &[("application", "spilo")]),
            (" a : 1 ,b:2,", &[("a", "1"), ("b", "2")]),
            (
                "exporter:quay.io/org/image:v1",
                &[("exporter", "quay.io/org/image:v1")],
            ),
            (
                "url:http://x.example:80/p",
                &[("url", "http://x.example:80/p")],
            ),
            (
                r#"log_statement:none, search_path:'"$user", public'"#,
                &[
                    ("log_statement", "none"),
                    ("search_path", r#"'"$user", public'"#),
                ],
            ),
            (
                "k:\"a,b\",work_mem:'4GB'",
                &[("k", "\"a,b\""), ("work_mem", "'4GB'")],
            ),
            ("empty_value:", &[("empty_value", "")]),
            ("a:1,a:2", &[("a", "2")]),
            ("", &[]),
        ];
        for (raw, want) in cases {
            assert_eq!(parse_map(raw), Ok(data(want)), "{raw:?}");
        }
        for raw in ["novalue", "a:1,b", ":v", "k:'open", "k:\"open"] {
            assert!(parse_map(raw).is_err(), "{raw:?} must be rejected");
        }
    }

    #[test]
    fn watched_namespaces() {
        use WatchedNamespaces::{All, Some as Only};
        let own = "operators";
        let cases: &[(Option<&str>, Option<&str>, WatchedNamespaces)] = &[
            (None, None, Only(strings(&["operators"]))),
            (Option::Some(""), None, Only(strings(&["operators"]))),
            (Option::Some("*"), None, All),
            (Option::Some("a, b"), None, Only(strings(&["a", "b"]))),
            (
                Option::Some(" a ,, a ,b,"),
                None,
                Only(strings(&["a", "b"])),
            ),
            (Option::Some("a,*"), None, All),
            (
                Option::Some("*"),
                Option::Some("team-a"),
                Only(strings(&["team-a"])),
            ),
            (
                Option::Some("*"),
                Option::Some(""),
                Only(strings(&["operators"])),
            ),
            (Option::Some("a"), Option::Some("*"), All),
            (None, Option::Some("x , y"), Only(strings(&["x", "y"]))),
        ];
        for (file, env, want) in cases {
            let config = OperatorConfig {
                watched_namespace: file.map(String::from),
                ..OperatorConfig::default()
            };
            assert_eq!(
                &config.watched_namespaces(own, *env),
                want,
                "file {file:?}, env {env:?}"
            );
        }
    }

    #[test]
    fn secret_keys_are_the_secret_fields() {
        let listed: Vec<&str> = OperatorConfig::default()
            .secrets()
            .iter()
            .map(|(key, _)| *key)
            .collect();
        assert_eq!(listed, SECRET_KEYS);
        let json = serde_json::to_value(OperatorConfig::default()).unwrap();
        let not_serialized: Vec<&str> = KNOWN_KEYS
            .iter()
            .copied()
            .filter(|k| !json.as_object().unwrap().contains_key(*k))
            .collect();
        assert_eq!(
            not_serialized, SECRET_KEYS,
            "the fields Serialize skips are exactly the credentials"
        );
    }

    #[test]
    fn secrets_do_not_leak() {
        let config = parse(&[
            ("logical_backup_s3_access_key_id", "AKIA-ID-VALUE"),
            ("logical_backup_s3_secret_access_key", "s3-secret-value"),
            (
                "logical_backup_azure_storage_account_key",
                "azure-secret-value",
            ),
            ("scalyr_api_key", "scalyr-secret-value"),
        ])
        .unwrap();
        assert_eq!(
            config
                .logical_backup_s3_secret_access_key
                .as_ref()
                .map(SecretValue::expose),
            Some("s3-secret-value")
        );
        let json = serde_json::to_string(&config).unwrap();
        let debug = format!("{config:?}");
        for secret in [
            "AKIA-ID-VALUE",
            "s3-secret-value",
            "azure-secret-value",
            "scalyr-secret-value",
        ] {
            assert!(!json.contains(secret), "{secret} in JSON");
            assert!(!debug.contains(secret), "{secret} in Debug");
        }
        for key in SECRET_KEYS {
            assert!(!json.contains(key), "{key} serialized");
        }
        assert!(
            json.contains(r#""resync_period":"30m""#),
            "durations serialize readably: {json}"
        );
    }
}
