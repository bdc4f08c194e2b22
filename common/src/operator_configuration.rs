//! Zalando's second configuration form: the `OperatorConfiguration` custom
//! resource (`acid.zalan.do/v1`), read into the same [`OperatorConfig`] as the
//! ConfigMap.
//!
//! The resource groups its keys (`configuration.kubernetes.pod_role_label`,
//! `configuration.timeouts.ready_wait_timeout`, …) and gives them YAML types.
//! Every leaf key has the name of its ConfigMap key (Zalando renames only the
//! Go fields, not the JSON keys), so the form is read by flattening it into
//! ConfigMap data and handing that to [`from_config_map_data`]: the same
//! fields, defaults, parsers and cross-key checks apply to both forms.
//!
//! How values become ConfigMap strings:
//!
//! | CRD value                                   | ConfigMap string                              |
//! |---------------------------------------------|-----------------------------------------------|
//! | boolean                                     | `true` / `false`                              |
//! | integer                                     | decimal                                       |
//! | duration (a string)                         | as is (`30m`, `1h30m`)                        |
//! | string, enum                                | as is                                         |
//! | list of strings                             | `a,b,c` (an item with a comma is an error)    |
//! | map of strings                              | `k1:v1,k2:v2` (must read back to the same map)|
//! | `kubernetes.infrastructure_roles_secrets`   | `secretname:s,userkey:u,…;secretname:…`       |
//! | `sidecars` (list of containers)             | the list as JSON text                         |
//!
//! Each key must have the type Zalando's CRD schema gives it: `"true"` for a
//! boolean or `14` for a string is an error, as the API server would refuse
//! it. The schema's enums (`pod_management_policy`, `storage_resize_mode`, …)
//! and minimums (`workers`, `min_instances`, …) are checked too.
//!
//! `null`, `""`, `[]` and `{}` mean "not set", so the default applies (in
//! Zalando's Go types these are indistinguishable from absent fields, and its
//! import falls back to the defaults for them). A group may be `null`.
//!
//! Keys pgop does not know are never an error. They are named by their path
//! (`configuration.kubernetes.liveness_probe`, `configuration.foo`, a misplaced
//! `configuration.kubernetes.workers`) and kept in the flat data with their
//! value (JSON text unless a string), so [`OperatorConfig::unknown_keys`] lists
//! them whichever form the data came from. Fields beside `configuration` in
//! the resource (other than `apiVersion`, `kind`, `metadata`, `status`) are
//! reported by name in `unknown_keys` too, but are not part of the flat data.
use std::collections::BTreeMap;

use serde_json::{Map, Value};

use crate::config::{
    from_config_map_data, parse_map, ConfigError, OperatorConfig, KNOWN_KEYS, SECRET_KEYS,
};

/// What a CRD value must look like, and how it becomes a ConfigMap string.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Bool,
    /// An integer, with the CRD schema's minimum if it has one.
    Int(Option<i64>),
    /// A Go duration string.
    Duration,
    Str,
    /// A string out of the CRD schema's enum.
    Enum(&'static [&'static str]),
    List,
    Map,
    /// `kubernetes.infrastructure_roles_secrets`: a list of role definitions.
    InfrastructureRoles,
    /// `sidecars`: a list of Kubernetes containers, kept as JSON.
    Containers,
}

use Kind::{Bool, Containers, Duration, Enum, InfrastructureRoles, Int, List, Map as StrMap, Str};

/// The top level of `configuration` (keys that are in no group).
const TOP: &str = "";

/// Every key of the `OperatorConfiguration` form pgop knows: its group under
/// `configuration` (`TOP` for none), its name (the ConfigMap key) and kind.
/// Groups and kinds follow Zalando's `operator_configuration_type.go` and
/// CRD schema (`manifests/operatorconfiguration.crd.yaml`).
const KEYS: &[(&str, &str, Kind)] = &[
    (TOP, "enable_crd_registration", Bool),
    // Deprecated; older Zalando releases had it at the top level.
    (TOP, "enable_crd_validation", Bool),
    (TOP, "crd_categories", List),
    (TOP, "enable_lazy_spilo_upgrade", Bool),
    (TOP, "enable_pgversion_env_var", Bool),
    (TOP, "enable_spilo_wal_path_compat", Bool),
    (TOP, "enable_team_id_clustername_prefix", Bool),
    (TOP, "etcd_host", Str),
    (TOP, "kubernetes_use_configmaps", Bool),
    (TOP, "docker_image", Str),
    (TOP, "workers", Int(Some(1))),
    (TOP, "resync_period", Duration),
    (TOP, "repair_period", Duration),
    (TOP, "enable_maintenance_windows", Bool),
    (TOP, "maintenance_windows", List),
    (TOP, "set_memory_request_to_limit", Bool),
    (TOP, "enable_shm_volume", Bool),
    (TOP, "sidecar_docker_images", StrMap),
    (TOP, "sidecars", Containers),
    (TOP, "min_instances", Int(Some(-1))),
    (TOP, "max_instances", Int(Some(-1))),
    (TOP, "ignore_instance_limits_annotation_key", Str),
    (TOP, "ignore_resources_limits_annotation_key", Str),
    ("users", "super_username", Str),
    ("users", "replication_username", Str),
    ("users", "additional_owner_roles", List),
    ("users", "enable_password_rotation", Bool),
    ("users", "password_rotation_interval", Int(None)),
    ("users", "password_rotation_user_retention", Int(None)),
    (
        "major_version_upgrade",
        "major_version_upgrade_mode",
        Enum(&["off", "manual", "full"]),
    ),
    (
        "major_version_upgrade",
        "major_version_upgrade_team_allow_list",
        List,
    ),
    ("major_version_upgrade", "minimal_major_version", Str),
    ("major_version_upgrade", "target_major_version", Str),
    ("kubernetes", "enable_owner_references", Bool),
    ("kubernetes", "pod_service_account_name", Str),
    ("kubernetes", "pod_service_account_definition", Str),
    (
        "kubernetes",
        "pod_service_account_role_binding_definition",
        Str,
    ),
    ("kubernetes", "pod_terminate_grace_period", Duration),
    ("kubernetes", "spilo_privileged", Bool),
    ("kubernetes", "spilo_allow_privilege_escalation", Bool),
    ("kubernetes", "spilo_runasuser", Int(None)),
    ("kubernetes", "spilo_runasgroup", Int(None)),
    ("kubernetes", "spilo_fsgroup", Int(None)),
    ("kubernetes", "additional_pod_capabilities", List),
    ("kubernetes", "watched_namespace", Str),
    ("kubernetes", "pdb_name_format", Str),
    ("kubernetes", "pdb_master_label_selector", Bool),
    ("kubernetes", "enable_pod_disruption_budget", Bool),
    (
        "kubernetes",
        "storage_resize_mode",
        Enum(&["ebs", "mixed", "pvc", "off"]),
    ),
    ("kubernetes", "enable_init_containers", Bool),
    ("kubernetes", "enable_sidecars", Bool),
    ("kubernetes", "share_pgsocket_with_sidecars", Bool),
    ("kubernetes", "secret_name_template", Str),
    ("kubernetes", "cluster_domain", Str),
    ("kubernetes", "oauth_token_secret_name", Str),
    ("kubernetes", "infrastructure_roles_secret_name", Str),
    (
        "kubernetes",
        "infrastructure_roles_secrets",
        InfrastructureRoles,
    ),
    ("kubernetes", "pod_role_label", Str),
    ("kubernetes", "cluster_labels", StrMap),
    ("kubernetes", "inherited_labels", List),
    ("kubernetes", "inherited_annotations", List),
    ("kubernetes", "downscaler_annotations", List),
    ("kubernetes", "ignored_annotations", List),
    ("kubernetes", "cluster_name_label", Str),
    ("kubernetes", "delete_annotation_date_key", Str),
    ("kubernetes", "delete_annotation_name_key", Str),
    ("kubernetes", "node_readiness_label", StrMap),
    (
        "kubernetes",
        "node_readiness_label_merge",
        Enum(&["AND", "OR"]),
    ),
    ("kubernetes", "custom_pod_annotations", StrMap),
    ("kubernetes", "toleration", StrMap),
    ("kubernetes", "pod_environment_configmap", Str),
    ("kubernetes", "pod_environment_secret", Str),
    ("kubernetes", "pod_priority_class_name", Str),
    ("kubernetes", "master_pod_move_timeout", Duration),
    ("kubernetes", "enable_pod_antiaffinity", Bool),
    (
        "kubernetes",
        "pod_antiaffinity_preferred_during_scheduling",
        Bool,
    ),
    ("kubernetes", "pod_antiaffinity_topology_key", Str),
    (
        "kubernetes",
        "pod_management_policy",
        Enum(&["ordered_ready", "parallel"]),
    ),
    (
        "kubernetes",
        "persistent_volume_claim_retention_policy",
        StrMap,
    ),
    ("kubernetes", "enable_secrets_deletion", Bool),
    (
        "kubernetes",
        "enable_persistent_volume_claim_deletion",
        Bool,
    ),
    ("kubernetes", "enable_readiness_probe", Bool),
    ("kubernetes", "enable_cross_namespace_secret", Bool),
    ("kubernetes", "enable_finalizers", Bool),
    ("postgres_pod_resources", "default_cpu_request", Str),
    ("postgres_pod_resources", "default_memory_request", Str),
    ("postgres_pod_resources", "default_cpu_limit", Str),
    ("postgres_pod_resources", "default_memory_limit", Str),
    ("postgres_pod_resources", "min_cpu_limit", Str),
    ("postgres_pod_resources", "min_memory_limit", Str),
    ("postgres_pod_resources", "max_cpu_request", Str),
    ("postgres_pod_resources", "max_memory_request", Str),
    ("timeouts", "resource_check_interval", Duration),
    ("timeouts", "resource_check_timeout", Duration),
    ("timeouts", "pod_label_wait_timeout", Duration),
    ("timeouts", "pod_deletion_wait_timeout", Duration),
    ("timeouts", "ready_wait_interval", Duration),
    ("timeouts", "ready_wait_timeout", Duration),
    ("timeouts", "patroni_api_check_interval", Duration),
    ("timeouts", "patroni_api_check_timeout", Duration),
    ("load_balancer", "db_hosted_zone", Str),
    ("load_balancer", "enable_master_load_balancer", Bool),
    ("load_balancer", "enable_master_pooler_load_balancer", Bool),
    ("load_balancer", "enable_replica_load_balancer", Bool),
    ("load_balancer", "enable_replica_pooler_load_balancer", Bool),
    ("load_balancer", "custom_service_annotations", StrMap),
    ("load_balancer", "master_dns_name_format", Str),
    ("load_balancer", "master_legacy_dns_name_format", Str),
    ("load_balancer", "replica_dns_name_format", Str),
    ("load_balancer", "replica_legacy_dns_name_format", Str),
    (
        "load_balancer",
        "external_traffic_policy",
        Enum(&["Cluster", "Local"]),
    ),
    ("aws_or_gcp", "wal_s3_bucket", Str),
    ("aws_or_gcp", "aws_region", Str),
    ("aws_or_gcp", "wal_gs_bucket", Str),
    ("aws_or_gcp", "gcp_credentials", Str),
    ("aws_or_gcp", "wal_az_storage_account", Str),
    ("aws_or_gcp", "log_s3_bucket", Str),
    ("aws_or_gcp", "kube_iam_role", Str),
    ("aws_or_gcp", "irsa_role_arn", Str),
    ("aws_or_gcp", "additional_secret_mount", Str),
    ("aws_or_gcp", "additional_secret_mount_path", Str),
    ("aws_or_gcp", "enable_ebs_gp3_migration", Bool),
    ("aws_or_gcp", "enable_ebs_gp3_migration_max_size", Int(None)),
    ("debug", "debug_logging", Bool),
    ("debug", "enable_database_access", Bool),
    ("teams_api", "enable_teams_api", Bool),
    ("teams_api", "teams_api_url", Str),
    ("teams_api", "team_api_role_configuration", StrMap),
    ("teams_api", "enable_team_superuser", Bool),
    ("teams_api", "enable_admin_role_for_users", Bool),
    ("teams_api", "team_admin_role", Str),
    ("teams_api", "pam_role_name", Str),
    ("teams_api", "pam_configuration", Str),
    ("teams_api", "protected_role_names", List),
    ("teams_api", "postgres_superuser_teams", List),
    ("teams_api", "enable_postgres_team_crd", Bool),
    ("teams_api", "enable_postgres_team_crd_superusers", Bool),
    ("teams_api", "enable_team_member_deprecation", Bool),
    ("teams_api", "role_deletion_suffix", Str),
    ("logging_rest_api", "api_port", Int(None)),
    ("logging_rest_api", "ring_log_lines", Int(None)),
    ("logging_rest_api", "cluster_history_entries", Int(None)),
    ("scalyr", "scalyr_api_key", Str),
    ("scalyr", "scalyr_image", Str),
    ("scalyr", "scalyr_server_url", Str),
    ("scalyr", "scalyr_cpu_request", Str),
    ("scalyr", "scalyr_memory_request", Str),
    ("scalyr", "scalyr_cpu_limit", Str),
    ("scalyr", "scalyr_memory_limit", Str),
    ("logical_backup", "logical_backup_schedule", Str),
    ("logical_backup", "logical_backup_docker_image", Str),
    (
        "logical_backup",
        "logical_backup_provider",
        Enum(&["az", "gcs", "s3"]),
    ),
    (
        "logical_backup",
        "logical_backup_azure_storage_account_name",
        Str,
    ),
    (
        "logical_backup",
        "logical_backup_azure_storage_container",
        Str,
    ),
    (
        "logical_backup",
        "logical_backup_azure_storage_account_key",
        Str,
    ),
    ("logical_backup", "logical_backup_s3_bucket", Str),
    ("logical_backup", "logical_backup_s3_bucket_prefix", Str),
    ("logical_backup", "logical_backup_s3_region", Str),
    ("logical_backup", "logical_backup_s3_endpoint", Str),
    ("logical_backup", "logical_backup_s3_access_key_id", Str),
    ("logical_backup", "logical_backup_s3_secret_access_key", Str),
    ("logical_backup", "logical_backup_s3_sse", Str),
    ("logical_backup", "logical_backup_s3_retention_time", Str),
    (
        "logical_backup",
        "logical_backup_google_application_credentials",
        Str,
    ),
    ("logical_backup", "logical_backup_job_prefix", Str),
    (
        "logical_backup",
        "logical_backup_cronjob_environment_secret",
        Str,
    ),
    ("logical_backup", "logical_backup_cpu_request", Str),
    ("logical_backup", "logical_backup_memory_request", Str),
    ("logical_backup", "logical_backup_cpu_limit", Str),
    ("logical_backup", "logical_backup_memory_limit", Str),
    (
        "connection_pooler",
        "connection_pooler_number_of_instances",
        Int(Some(1)),
    ),
    ("connection_pooler", "connection_pooler_schema", Str),
    ("connection_pooler", "connection_pooler_user", Str),
    ("connection_pooler", "connection_pooler_image", Str),
    (
        "connection_pooler",
        "connection_pooler_mode",
        Enum(&["session", "transaction"]),
    ),
    (
        "connection_pooler",
        "connection_pooler_max_db_connections",
        Int(None),
    ),
    (
        "connection_pooler",
        "connection_pooler_default_cpu_request",
        Str,
    ),
    (
        "connection_pooler",
        "connection_pooler_default_memory_request",
        Str,
    ),
    (
        "connection_pooler",
        "connection_pooler_default_cpu_limit",
        Str,
    ),
    (
        "connection_pooler",
        "connection_pooler_default_memory_limit",
        Str,
    ),
    ("patroni", "enable_patroni_failsafe_mode", Bool),
];

/// The fields of one `kubernetes.infrastructure_roles_secrets` item, in the
/// order they are written; `template` is a boolean, the others strings.
const INFRASTRUCTURE_ROLE_FIELDS: &[&str] = &[
    "secretname",
    "userkey",
    "passwordkey",
    "rolekey",
    "defaultuservalue",
    "defaultrolevalue",
    "details",
    "template",
];

/// Fields of the resource that are not configuration and are ignored.
const OBJECT_FIELDS: &[&str] = &["apiVersion", "kind", "metadata", "status"];

/// Reads an `OperatorConfiguration`: the whole resource (with `apiVersion`,
/// `kind`, `metadata`, `configuration`) or only its `configuration`. Defaults,
/// parsing and checks are those of [`from_config_map_data`]; errors name the
/// key by its path (`configuration.kubernetes.enable_sidecars`). Unknown keys
/// are listed in [`OperatorConfig::unknown_keys`].
pub fn from_operator_configuration(value: &Value) -> Result<OperatorConfig, ConfigError> {
    let flat = flatten(value, Strictness::Strict)?;
    let mut config = parse_flat(&flat)?;
    config.unknown_keys.extend(flat.outside);
    config.unknown_keys.sort_unstable();
    config.unknown_keys.dedup();
    Ok(config)
}

/// The `OperatorConfiguration` as the ConfigMap data that
/// [`from_config_map_data`] reads into the same [`OperatorConfig`] (unknown
/// keys included under their paths, so the receiver sees them too). The
/// whole configuration is checked first: data this returns always parses.
pub fn flatten_operator_configuration(
    value: &Value,
) -> Result<BTreeMap<String, String>, ConfigError> {
    let flat = flatten(value, Strictness::Strict)?;
    parse_flat(&flat)?;
    Ok(flat.data)
}

/// The keys of an `OperatorConfiguration` pgop does not know, sorted, as
/// [`OperatorConfig::unknown_keys`] would list them. Values are not checked,
/// so this also answers for a configuration that does not load.
pub fn operator_configuration_unknown_keys(value: &Value) -> Vec<String> {
    let Ok(flat) = flatten(value, Strictness::Lenient) else {
        return Vec::new();
    };
    let mut keys: Vec<String> = flat
        .data
        .into_keys()
        .filter(|key| !KNOWN_KEYS.contains(&key.as_str()))
        .chain(flat.outside)
        .collect();
    keys.sort_unstable();
    keys.dedup();
    keys
}

/// Where the ConfigMap key `key` lives in the `OperatorConfiguration`, e.g.
/// `configuration.kubernetes.pod_role_label`; `None` for a key the resource
/// has no place for (`enable_load_balancer`) or that is not a key at all.
pub fn operator_configuration_path(key: &str) -> Option<String> {
    KEYS.iter()
        .find(|(_, name, _)| *name == key)
        .map(|(group, name, _)| path_of(group, name))
}

fn path_of(group: &str, name: &str) -> String {
    if group.is_empty() {
        format!("configuration.{name}")
    } else {
        format!("configuration.{group}.{name}")
    }
}

fn lookup(group: &str, name: &str) -> Option<Kind> {
    KEYS.iter()
        .find(|(g, n, _)| *g == group && *n == name)
        .map(|(_, _, kind)| *kind)
}

fn is_group(name: &str) -> bool {
    !name.is_empty() && KEYS.iter().any(|(group, _, _)| *group == name)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Strictness {
    /// A bad value is an error.
    Strict,
    /// A bad value is skipped (to list unknown keys of any configuration).
    Lenient,
}

/// A flattened `OperatorConfiguration`.
#[derive(Default)]
struct Flat {
    /// ConfigMap data: known keys under their ConfigMap names, unknown keys
    /// under their paths.
    data: BTreeMap<String, String>,
    /// ConfigMap key → its path in the resource, to name it in errors.
    paths: BTreeMap<String, String>,
    /// Unknown fields of the resource beside `configuration`.
    outside: Vec<String>,
}

fn flatten(value: &Value, strictness: Strictness) -> Result<Flat, ConfigError> {
    let mut flat = Flat::default();
    let Some(configuration) = configuration_of(value, &mut flat.outside)? else {
        return Ok(flat);
    };
    for (name, value) in configuration {
        let path = format!("configuration.{name}");
        if is_group(name) {
            let members = match value {
                Value::Null => continue,
                Value::Object(members) => members,
                other => match strictness {
                    Strictness::Strict => {
                        return Err(type_error(
                            &path,
                            other,
                            "an object (a group of keys)",
                            false,
                        ))
                    }
                    Strictness::Lenient => continue,
                },
            };
            for (key, value) in members {
                let path = format!("{path}.{key}");
                match lookup(name, key) {
                    Some(kind) => flat.known(key, &path, kind, value, strictness)?,
                    None => flat.unknown(path, value),
                }
            }
        } else {
            match lookup(TOP, name) {
                Some(kind) => flat.known(name, &path, kind, value, strictness)?,
                None => flat.unknown(path, value),
            }
        }
    }
    Ok(flat)
}

/// The `configuration` of a whole resource, or `value` itself when it is
/// only the configuration. Unknown fields beside `configuration` go to
/// `outside`.
fn configuration_of<'a>(
    value: &'a Value,
    outside: &mut Vec<String>,
) -> Result<Option<&'a Map<String, Value>>, ConfigError> {
    let Value::Object(root) = value else {
        return Err(type_error(
            "configuration",
            value,
            "an OperatorConfiguration or its configuration (an object)",
            false,
        ));
    };
    let whole = ["apiVersion", "kind", "metadata", "configuration"]
        .iter()
        .any(|field| root.contains_key(*field));
    if !whole {
        return Ok(Some(root));
    }
    if let Some(kind) = root.get("kind") {
        if kind.as_str() != Some("OperatorConfiguration") {
            return Err(ConfigError::invalid(
                "kind",
                &shown(kind),
                "expected an OperatorConfiguration",
            ));
        }
    }
    if let Some(api_version) = root.get("apiVersion") {
        if !api_version
            .as_str()
            .is_some_and(|v| v.starts_with("acid.zalan.do/"))
        {
            return Err(ConfigError::invalid(
                "apiVersion",
                &shown(api_version),
                "expected acid.zalan.do/v1",
            ));
        }
    }
    outside.extend(
        root.keys()
            .filter(|field| !OBJECT_FIELDS.contains(&field.as_str()) && *field != "configuration")
            .cloned(),
    );
    match root.get("configuration") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(configuration)) => Ok(Some(configuration)),
        Some(other) => Err(type_error("configuration", other, "an object", false)),
    }
}

impl Flat {
    fn unknown(&mut self, path: String, value: &Value) {
        self.data.insert(path, shown_in_full(value));
    }

    /// Adds the known key `key` (at `path`) unless `value` means "not set".
    fn known(
        &mut self,
        key: &str,
        path: &str,
        kind: Kind,
        value: &Value,
        strictness: Strictness,
    ) -> Result<(), ConfigError> {
        let converted = match to_config_map_string(key, path, kind, value, self) {
            Ok(converted) => converted,
            Err(_) if strictness == Strictness::Lenient => return Ok(()),
            Err(e) => return Err(e),
        };
        if let Some(text) = converted {
            self.data.insert(key.to_string(), text);
            self.paths.insert(key.to_string(), path.to_string());
        }
        Ok(())
    }
}

/// `value` as the ConfigMap string of `key`; `None` when it means "not set".
/// `flat` receives unknown fields of infrastructure role items.
fn to_config_map_string(
    key: &str,
    path: &str,
    kind: Kind,
    value: &Value,
    flat: &mut Flat,
) -> Result<Option<String>, ConfigError> {
    let secret = SECRET_KEYS.contains(&key);
    if value.is_null() {
        return Ok(None);
    }
    let text = match (kind, value) {
        (Bool, Value::Bool(b)) => b.to_string(),
        (Bool, other) => return Err(type_error(path, other, "a boolean (true or false)", secret)),
        (Int(minimum), Value::Number(n)) if n.is_i64() || n.is_u64() => {
            if let (Some(minimum), Some(n)) = (minimum, n.as_i64()) {
                if n < minimum {
                    return Err(ConfigError::invalid(
                        path,
                        &n.to_string(),
                        format!("must be at least {minimum}"),
                    ));
                }
            }
            n.to_string()
        }
        (Int(_), other) => return Err(type_error(path, other, "a whole number", secret)),
        (Duration, Value::String(s)) | (Str, Value::String(s)) => s.clone(),
        (Duration, other) => {
            return Err(type_error(
                path,
                other,
                "a duration string such as \"30s\", \"5m\" or \"1h30m\"",
                secret,
            ))
        }
        (Str, other) => return Err(type_error(path, other, "a string", secret)),
        (Enum(allowed), Value::String(s)) => {
            if !s.trim().is_empty() && !allowed.contains(&s.trim()) {
                return Err(ConfigError::invalid(
                    path,
                    s,
                    format!("expected one of {}", quoted_list(allowed)),
                ));
            }
            s.clone()
        }
        (Enum(allowed), other) => {
            let expected = format!("one of {}", quoted_list(allowed));
            return Err(type_error(path, other, &expected, secret));
        }
        (List, Value::Array(items)) => list_string(path, items)?,
        (List, other) => return Err(type_error(path, other, "a list of strings", secret)),
        (StrMap, Value::Object(entries)) => map_string(path, entries)?,
        (StrMap, other) => {
            return Err(type_error(
                path,
                other,
                "a map of strings (key: value)",
                secret,
            ))
        }
        (InfrastructureRoles, Value::Array(items)) => {
            infrastructure_roles_string(path, items, flat)?
        }
        (InfrastructureRoles, other) => {
            return Err(type_error(
                path,
                other,
                "a list of role definitions (secretname, userkey, passwordkey, …)",
                secret,
            ))
        }
        (Containers, Value::Array(items)) => {
            if let Some((i, item)) = items.iter().enumerate().find(|(_, i)| !i.is_object()) {
                let item_path = format!("{path}[{i}]");
                return Err(type_error(
                    &item_path,
                    item,
                    "a container (an object)",
                    false,
                ));
            }
            if items.is_empty() {
                String::new()
            } else {
                Value::Array(items.clone()).to_string()
            }
        }
        (Containers, other) => return Err(type_error(path, other, "a list of containers", secret)),
    };
    Ok(Some(text).filter(|t| !t.trim().is_empty()))
}

/// `["a", "b"]` → `a,b`. Items are trimmed and empty ones dropped, as the
/// ConfigMap reader does; an item with a comma cannot be written.
fn list_string(path: &str, items: &[Value]) -> Result<String, ConfigError> {
    let mut out: Vec<&str> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let item_path = format!("{path}[{i}]");
        let Value::String(s) = item else {
            return Err(type_error(&item_path, item, "a string", false));
        };
        if s.contains(',') {
            return Err(ConfigError::invalid(
                &item_path,
                s,
                "a list item cannot contain a comma (the ConfigMap form separates items with commas)",
            ));
        }
        if !s.trim().is_empty() {
            out.push(s.trim());
        }
    }
    Ok(out.join(","))
}

/// `{k1: v1, k2: v2}` → `k1:v1,k2:v2` (sorted by key), which must read back as the same map
/// (keys and values trimmed): a key with `:`, `,` or a quote, or a value with
/// a comma outside quotes or an unmatched quote, cannot be written.
fn map_string(path: &str, entries: &Map<String, Value>) -> Result<String, ConfigError> {
    let mut wanted = BTreeMap::new();
    for (key, value) in entries {
        let entry_path = format!("{path}.{key}");
        let Value::String(value) = value else {
            return Err(type_error(&entry_path, value, "a string", false));
        };
        let (key, value) = (key.trim(), value.trim());
        if key.is_empty() {
            return Err(ConfigError::invalid(path, "", "a map key cannot be empty"));
        }
        let item = format!("{key}:{value}");
        let alone = parse_map(&item).ok();
        if key.contains([':', ',', '\'', '"'])
            || alone.as_ref().and_then(|m| m.get(key)).map(String::as_str) != Some(value)
        {
            return Err(ConfigError::invalid(
                &entry_path,
                value,
                "cannot be written in the ConfigMap form key:value,… (a key with ':', ',' or a \
                 quote, or a value with a ',' outside quotes or an unmatched quote)",
            ));
        }
        wanted.insert(key.to_string(), value.to_string());
    }
    let text = wanted
        .iter()
        .map(|(key, value)| format!("{key}:{value}"))
        .collect::<Vec<_>>()
        .join(",");
    if parse_map(&text).ok().as_ref() != Some(&wanted) {
        return Err(ConfigError::invalid(
            path,
            &text,
            "cannot be written in the ConfigMap form key:value,…",
        ));
    }
    Ok(text)
}

/// `[{secretname: s, userkey: u, passwordkey: p}, …]` →
/// `secretname:s,userkey:u,passwordkey:p;…`, the raw form of
/// [`OperatorConfig::infrastructure_roles_secrets`]. Empty fields are left
/// out; unknown fields of an item are unknown keys.
fn infrastructure_roles_string(
    path: &str,
    items: &[Value],
    flat: &mut Flat,
) -> Result<String, ConfigError> {
    let mut roles = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let item_path = format!("{path}[{i}]");
        let Value::Object(fields) = item else {
            return Err(type_error(
                &item_path,
                item,
                "a role definition (an object)",
                false,
            ));
        };
        let mut pairs = Vec::new();
        for field in INFRASTRUCTURE_ROLE_FIELDS {
            let field_path = format!("{item_path}.{field}");
            let text = match (fields.get(*field), *field) {
                (None | Some(Value::Null), _) => continue,
                (Some(Value::Bool(b)), "template") => b.to_string(),
                (Some(other), "template") => {
                    return Err(type_error(&field_path, other, "a boolean", false))
                }
                (Some(Value::String(s)), _) => s.trim().to_string(),
                (Some(other), _) => return Err(type_error(&field_path, other, "a string", false)),
            };
            if text.contains([',', ';', ':']) {
                return Err(ConfigError::invalid(
                    &field_path,
                    &text,
                    "cannot contain ',', ';' or ':' (they separate the ConfigMap form)",
                ));
            }
            if !text.is_empty() {
                pairs.push(format!("{field}:{text}"));
            }
        }
        for (field, value) in fields {
            if !INFRASTRUCTURE_ROLE_FIELDS.contains(&field.as_str()) {
                flat.unknown(format!("{item_path}.{field}"), value);
            }
        }
        if !pairs.is_empty() {
            roles.push(pairs.join(","));
        }
    }
    Ok(roles.join(";"))
}

/// Reads the flat data, naming keys in errors by their path in the resource.
fn parse_flat(flat: &Flat) -> Result<OperatorConfig, ConfigError> {
    from_config_map_data(&flat.data).map_err(|e| match e {
        ConfigError::InvalidValue { key, value, reason } => ConfigError::InvalidValue {
            key: flat.paths.get(&key).cloned().unwrap_or(key),
            value,
            reason,
        },
        other => other,
    })
}

/// A wrong-type error; the value is not shown for credentials.
fn type_error(path: &str, value: &Value, expected: &str, secret: bool) -> ConfigError {
    let value_shown = if secret {
        crate::config::REDACTED.to_string()
    } else {
        shown(value)
    };
    ConfigError::invalid(
        path,
        &value_shown,
        format!("expected {expected}, got {}", type_name(value)),
    )
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_f64() => "a number with a fraction",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// A value for an error message: strings as they are, others as JSON, cut
/// short.
fn shown(value: &Value) -> String {
    const LIMIT: usize = 100;
    let text = shown_in_full(value);
    match text.char_indices().nth(LIMIT) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text,
    }
}

fn shown_in_full(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn quoted_list(items: &[&str]) -> String {
    items
        .iter()
        .map(|item| format!("{item:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_known_config_map_keys_once_each() {
        let mut seen = std::collections::BTreeSet::new();
        for (group, name, _) in KEYS {
            assert!(
                KNOWN_KEYS.contains(name),
                "{group}.{name} is no ConfigMap key"
            );
            assert!(seen.insert(*name), "{name} is listed twice");
            assert!(!is_group(name), "{name} is also a group name");
        }
        let missing: Vec<&str> = KNOWN_KEYS
            .iter()
            .copied()
            .filter(|k| !seen.contains(k))
            .collect();
        assert_eq!(
            missing,
            ["enable_load_balancer"],
            "only the deprecated ConfigMap-only key has no place in the resource"
        );
    }

    #[test]
    fn shown_values_are_cut_short() {
        let long = Value::String("x".repeat(300));
        assert_eq!(shown(&long).chars().count(), 101);
        assert_eq!(shown(&serde_json::json!([1, 2])), "[1,2]");
    }
}
