//! The environment of the Spilo container: the contract through which Spilo configures
//! Patroni and PostgreSQL, in the order of Zalando's `generateSpiloPodEnvVars`.
//!
//! The variables of `pod_environment_configmap` and `pod_environment_secret` need API
//! reads, which builders do not do: the caller reads the objects named by
//! [`pod_environment_sources`] and passes their content as a [`PodEnvironment`]. The TLS
//! variables (`SSL_*`) come with their volumes from [`super::statefulset`].
//!
//! One deliberate difference: Zalando's newest `SPILO_CONFIGURATION` no longer carries
//! `bootstrap.users` (Spilo creates the PAM role itself); pgop keeps it, as older Zalando
//! releases did, because the local test kubelet creates the bootstrap users from it.
use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{EnvVar, EnvVarSource, ObjectFieldSelector, SecretKeySelector};
use pgop_common::config::OperatorConfig;
use pgop_common::crd::{CloneDescription, Patroni, Postgresql, StandbyDescription};
use serde::Serialize;

use super::cluster_name;
use super::secrets::secret_name;

/// Where Spilo keeps its data: below the data volume's mount point.
pub const PGROOT: &str = "/home/postgres/pgdata/pgroot";
/// The port the Services and clone connections use.
pub const POSTGRES_PORT: i32 = 5432;

/// Patroni keeps its state in Kubernetes unless the operator points it at etcd.
pub fn patroni_uses_kubernetes(config: &OperatorConfig) -> bool {
    config.etcd_host.as_deref().unwrap_or_default().is_empty()
}

/// Patroni keeps leader and config in ConfigMaps (not Endpoints): then the master Service
/// selects the master pod instead of sharing Patroni's Endpoints.
pub fn patroni_uses_configmaps(config: &OperatorConfig) -> bool {
    patroni_uses_kubernetes(config) && config.kubernetes_use_configmaps
}

/// The Postgres major version the pods run: the manifest's, except that in `full` upgrade
/// mode versions below `minimal_major_version` are raised to `target_major_version`.
pub fn desired_major_version(pg: &Postgresql, config: &OperatorConfig) -> String {
    let version = &pg.spec.postgresql.version;
    let number = |v: &str| v.parse::<u32>().unwrap_or(0);
    if config.major_version_upgrade_mode == "full"
        && number(&config.minimal_major_version) > number(version)
    {
        return config.target_major_version.clone();
    }
    version.clone()
}

/// What the pods' environment ConfigMap and Secret hold, read by the caller (builders do
/// no I/O). The default is "nothing configured".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodEnvironment {
    /// The `data` of the `pod_environment_configmap` ConfigMap: variables with values.
    pub config_map: BTreeMap<String, String>,
    /// The keys of the `pod_environment_secret` Secret: each becomes a variable of the same
    /// name read from the Secret (`secretKeyRef`), so no secret value enters the pod spec.
    pub secret_keys: Vec<String>,
    /// The Secret's name, for the references; `None`: the name in `pod_environment_secret`.
    pub secret_name: Option<String>,
}

/// An object named `[namespace/]name` in the configuration: (namespace if given, name).
pub type ObjectName = (Option<String>, String);

/// Which ConfigMap and Secret hold the pods' extra environment: `pod_environment_configmap`
/// and `pod_environment_secret`, each `[namespace/]name` (`None` when unset).
///
/// Where the caller reads them, as Zalando does: the ConfigMap from the given namespace,
/// else the operator's own, falling back to the cluster's namespace when it is not found
/// there; the Secret from the cluster's namespace (a pod can only reference Secrets of its
/// own namespace, so a namespace given for it must be the cluster's).
pub fn pod_environment_sources(
    config: &OperatorConfig,
) -> (Option<ObjectName>, Option<ObjectName>) {
    let parse = |setting: &Option<String>| -> Option<ObjectName> {
        let text = setting
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())?;
        match text.split_once('/') {
            Some((namespace, name)) if !name.is_empty() => Some((
                Some(namespace.to_string()).filter(|n| !n.is_empty()),
                name.to_string(),
            )),
            Some(_) => None,
            None => Some((None, text.to_string())),
        }
    };
    (
        parse(&config.pod_environment_configmap),
        parse(&config.pod_environment_secret),
    )
}

/// The Spilo container's environment without a pod environment ConfigMap or Secret; see
/// [`spilo_env_with`].
pub fn spilo_env(pg: &Postgresql, config: &OperatorConfig) -> Vec<EnvVar> {
    spilo_env_with(pg, config, &PodEnvironment::default())
}

/// The Spilo container's environment, in Zalando's order and with its precedence (a name
/// already defined wins, compared case-insensitively, except that clone and standby
/// variables are always added):
///
/// 1. the operator's core variables, which nothing overrides;
/// 2. the manifest's `env`;
/// 3. clone and standby settings;
/// 4. the keys of the pod environment Secret (sorted), as references to the Secret;
/// 5. the pod environment ConfigMap's variables (sorted);
/// 6. WAL/log bucket settings from the operator configuration.
///
/// So the manifest overrides the Secret, the Secret the ConfigMap, and all three the
/// bucket settings (e.g. a ConfigMap `wal_s3_bucket` replaces `WAL_S3_BUCKET`).
pub fn spilo_env_with(
    pg: &Postgresql,
    config: &OperatorConfig,
    pod_env: &PodEnvironment,
) -> Vec<EnvVar> {
    let cluster = cluster_name(pg);
    let mut env = vec![
        value("SCOPE", cluster),
        value("PGROOT", PGROOT),
        field_ref("POD_IP", "status.podIP"),
        field_ref("POD_NAMESPACE", "metadata.namespace"),
        value("PGUSER_SUPERUSER", &config.super_username),
        value("KUBERNETES_SCOPE_LABEL", &config.cluster_name_label),
        value("KUBERNETES_ROLE_LABEL", &config.pod_role_label),
        secret_ref(
            "PGPASSWORD_SUPERUSER",
            secret_name(config, &config.super_username, cluster),
        ),
        value("PGUSER_STANDBY", &config.replication_username),
        secret_ref(
            "PGPASSWORD_STANDBY",
            secret_name(config, &config.replication_username, cluster),
        ),
        value("PAM_OAUTH2", &config.pam_configuration),
        value("HUMAN_ROLE", &config.pam_role_name),
    ];
    if config.enable_spilo_wal_path_compat {
        env.push(value("ENABLE_WAL_PATH_COMPAT", "true"));
    }
    if config.enable_pgversion_env_var {
        env.push(value("PGVERSION", &desired_major_version(pg, config)));
    }
    // Spilo reads the labels Patroni puts on its objects as JSON.
    let labels = serde_json::to_string(&config.cluster_labels).unwrap_or_default();
    env.push(value("KUBERNETES_LABELS", &labels));
    env.push(value(
        "SPILO_CONFIGURATION",
        &spilo_configuration(pg, config),
    ));
    if patroni_uses_kubernetes(config) {
        env.push(value("DCS_ENABLE_KUBERNETES_API", "true"));
        if config.enable_pod_disruption_budget {
            // Patroni labels pods with it during bootstrap, for Zalando's critical-operation PDB.
            env.push(value(
                "KUBERNETES_BOOTSTRAP_LABELS",
                r#"{"critical-operation":"true"}"#,
            ));
        }
    } else {
        env.push(value(
            "ETCD_HOST",
            config.etcd_host.as_deref().unwrap_or_default(),
        ));
    }
    if patroni_uses_configmaps(config) {
        env.push(value("KUBERNETES_USE_CONFIGMAPS", "true"));
    }

    append_missing(&mut env, pg.spec.env.iter().cloned());
    if let Some(clone) = pg.spec.clone.as_ref().filter(|c| !c.cluster.is_empty()) {
        env.extend(clone_env(clone, config));
    }
    if let Some(standby) = &pg.spec.standby {
        env.extend(standby_env(standby));
    }
    let secret_name = pod_env
        .secret_name
        .clone()
        .or_else(|| pod_environment_sources(config).1.map(|(_, name)| name));
    if let Some(secret) = secret_name {
        let mut keys: Vec<&String> = pod_env.secret_keys.iter().collect();
        keys.sort();
        keys.dedup();
        append_missing(
            &mut env,
            keys.into_iter()
                .map(|key| secret_key_ref(key, secret.clone(), key)),
        );
    }
    append_missing(
        &mut env,
        pod_env.config_map.iter().map(|(name, v)| value(name, v)),
    );
    append_missing(&mut env, bucket_env(pg, config));
    env
}

/// The variables Zalando gives every sidecar, before the sidecar's own: the pod's name and
/// namespace and the superuser's credentials.
pub fn sidecar_env(pg: &Postgresql, config: &OperatorConfig) -> Vec<EnvVar> {
    vec![
        field_ref("POD_NAME", "metadata.name"),
        field_ref("POD_NAMESPACE", "metadata.namespace"),
        value("POSTGRES_USER", &config.super_username),
        secret_ref(
            "POSTGRES_PASSWORD",
            secret_name(config, &config.super_username, cluster_name(pg)),
        ),
    ]
}

/// Appends the variables whose name is not defined yet (case-insensitively): earlier
/// definitions win, as in Zalando's `appendEnvVars`.
pub fn append_missing(env: &mut Vec<EnvVar>, extra: impl IntoIterator<Item = EnvVar>) {
    for var in extra {
        if !env.iter().any(|e| e.name.eq_ignore_ascii_case(&var.name)) {
            env.push(var);
        }
    }
}

/// Variables of a clone: from the running source with pg_basebackup when no timestamp is
/// given, otherwise point-in-time from the source's WAL archive.
fn clone_env(clone: &CloneDescription, config: &OperatorConfig) -> Vec<EnvVar> {
    let mut env = vec![value("CLONE_SCOPE", &clone.cluster)];
    let Some(timestamp) = set(&clone.timestamp) else {
        env.extend([
            value("CLONE_METHOD", "CLONE_WITH_BASEBACKUP"),
            value("CLONE_HOST", &clone.cluster),
            value("CLONE_PORT", &POSTGRES_PORT.to_string()),
            // Like Zalando: the source is assumed to use the same replication user.
            value("CLONE_USER", &config.replication_username),
            secret_ref(
                "CLONE_PASSWORD",
                secret_name(config, &config.replication_username, &clone.cluster),
            ),
        ]);
        return env;
    };
    match set(&clone.s3_wal_path) {
        Some(path) => env.push(value("CLONE_WALE_S3_PREFIX", path)),
        None => {
            if let Some(bucket) = set(&config.wal_s3_bucket) {
                env.push(value("CLONE_WAL_S3_BUCKET", bucket));
            } else if let Some(bucket) = set(&config.wal_gs_bucket) {
                env.push(value("CLONE_WAL_GS_BUCKET", bucket));
                if let Some(credentials) = set(&config.gcp_credentials) {
                    env.push(value("CLONE_GOOGLE_APPLICATION_CREDENTIALS", credentials));
                }
            } else if let Some(account) = set(&config.wal_az_storage_account) {
                env.push(value("CLONE_AZURE_STORAGE_ACCOUNT", account));
            }
            env.push(value(
                "CLONE_WAL_BUCKET_SCOPE_SUFFIX",
                &bucket_scope_suffix(clone.uid.as_deref()),
            ));
        }
    }
    env.extend([
        value("CLONE_METHOD", "CLONE_WITH_WALE"),
        value("CLONE_TARGET_TIME", timestamp),
        value("CLONE_WAL_BUCKET_SCOPE_PREFIX", ""),
    ]);
    if let Some(endpoint) = set(&clone.s3_endpoint) {
        env.push(value("CLONE_AWS_ENDPOINT", endpoint));
        env.push(value("CLONE_WALE_S3_ENDPOINT", endpoint));
    }
    if let Some(key) = set(&clone.s3_access_key_id) {
        env.push(value("CLONE_AWS_ACCESS_KEY_ID", key));
    }
    if let Some(key) = set(&clone.s3_secret_access_key) {
        env.push(value("CLONE_AWS_SECRET_ACCESS_KEY", key));
    }
    if let Some(path_style) = clone.s3_force_path_style {
        env.push(value(
            "CLONE_AWS_S3_FORCE_PATH_STYLE",
            if path_style { "1" } else { "0" },
        ));
    }
    env
}

/// Variables of a standby cluster: streaming from a remote primary and/or replaying a WAL
/// archive.
fn standby_env(standby: &StandbyDescription) -> Vec<EnvVar> {
    let mut env = Vec::new();
    if let Some(host) = set(&standby.standby_host) {
        env.push(value("STANDBY_HOST", host));
        if let Some(port) = set(&standby.standby_port) {
            env.push(value("STANDBY_PORT", port));
        }
        if let Some(slot) = set(&standby.standby_primary_slot_name) {
            env.push(value("STANDBY_PRIMARY_SLOT_NAME", slot));
        }
    }
    let archive = match (set(&standby.s3_wal_path), set(&standby.gs_wal_path)) {
        (Some(s3), _) => Some(("STANDBY_WALE_S3_PREFIX", s3)),
        (None, Some(gs)) => Some(("STANDBY_WALE_GS_PREFIX", gs)),
        (None, None) => None,
    };
    if let Some((name, path)) = archive {
        env.extend([
            value(name, path),
            value("STANDBY_METHOD", "STANDBY_WITH_WALE"),
            value("STANDBY_WAL_BUCKET_SCOPE_PREFIX", ""),
        ]);
    }
    env
}

/// WAL and log archive locations from the operator configuration; each archive is scoped
/// by the manifest's UID so that a recreated cluster does not mix its WAL with the old one.
fn bucket_env(pg: &Postgresql, config: &OperatorConfig) -> Vec<EnvVar> {
    let suffix = bucket_scope_suffix(pg.metadata.uid.as_deref());
    let scoped = |name: &str, bucket: &str, prefix: &str| {
        [
            value(name, bucket),
            value(&format!("{prefix}_BUCKET_SCOPE_SUFFIX"), &suffix),
            value(&format!("{prefix}_BUCKET_SCOPE_PREFIX"), ""),
        ]
    };
    let mut env = Vec::new();
    if let Some(bucket) = set(&config.wal_s3_bucket) {
        env.extend(scoped("WAL_S3_BUCKET", bucket, "WAL"));
    }
    if let Some(bucket) = set(&config.wal_gs_bucket) {
        env.extend(scoped("WAL_GS_BUCKET", bucket, "WAL"));
    }
    if let Some(account) = set(&config.wal_az_storage_account) {
        env.extend(scoped("AZURE_STORAGE_ACCOUNT", account, "WAL"));
    }
    if let Some(credentials) = set(&config.gcp_credentials) {
        env.push(value("GOOGLE_APPLICATION_CREDENTIALS", credentials));
    }
    if let Some(bucket) = set(&config.log_s3_bucket) {
        env.extend(scoped("LOG_S3_BUCKET", bucket, "LOG"));
    }
    env
}

fn bucket_scope_suffix(uid: Option<&str>) -> String {
    match uid {
        Some(uid) if !uid.is_empty() => format!("/{uid}"),
        _ => String::new(),
    }
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

fn field_ref(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: None,
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                api_version: Some("v1".into()),
                field_path: path.into(),
            }),
            ..EnvVarSource::default()
        }),
    }
}

/// A variable read from the `password` key of a credentials Secret.
fn secret_ref(name: &str, secret: String) -> EnvVar {
    secret_key_ref(name, secret, "password")
}

/// A variable read from `key` of the Secret `secret`.
fn secret_key_ref(name: &str, secret: String, key: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: None,
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret,
                key: key.into(),
                optional: None,
            }),
            ..EnvVarSource::default()
        }),
    }
}

/// PostgreSQL parameters Patroni must set locally on each member; every other parameter
/// goes to the DCS bootstrap configuration (Zalando's `isBootstrapOnlyParameter`).
const LOCAL_PARAMETERS: &[&str] = &[
    "archive_command",
    "shared_buffers",
    "logging_collector",
    "log_destination",
    "log_directory",
    "log_filename",
    "log_file_mode",
    "log_rotation_age",
    "log_truncate_on_rotation",
    "ssl",
    "ssl_ca_file",
    "ssl_crl_file",
    "ssl_cert_file",
    "ssl_key_file",
    "shared_preload_libraries",
    "bg_mon.listen_address",
    "bg_mon.history_buckets",
    "pg_stat_statements.track_utility",
    "extwlist.extensions",
    "extwlist.custom_path",
];

/// initdb options that take no argument: `name: "true"` becomes the bare flag.
const INITDB_FLAGS: &[&str] = &[
    "data-checksums",
    "debug",
    "no-locale",
    "noclean",
    "nosync",
    "sync-only",
];

/// `SPILO_CONFIGURATION`: the part of Patroni's configuration the manifest decides. Field
/// order and the sorted maps give the JSON Zalando's operator writes, so that an unchanged
/// manifest yields an unchanged pod template.
#[derive(Serialize)]
struct SpiloConfiguration {
    postgresql: LocalConfiguration,
    bootstrap: Bootstrap,
}

#[derive(Serialize)]
struct LocalConfiguration {
    #[serde(skip_serializing_if = "Option::is_none")]
    bin_dir: Option<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    parameters: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pg_hba: Vec<String>,
}

#[derive(Serialize)]
struct Bootstrap {
    initdb: Vec<InitdbOption>,
    users: BTreeMap<String, BootstrapUser>,
    dcs: Dcs,
}

#[derive(Serialize, Debug, PartialEq)]
#[serde(untagged)]
enum InitdbOption {
    Flag(String),
    WithValue(BTreeMap<String, String>),
}

#[derive(Serialize)]
struct BootstrapUser {
    password: String,
    options: Vec<String>,
}

#[derive(Serialize, Default)]
struct Dcs {
    #[serde(skip_serializing_if = "Option::is_none")]
    ttl: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    loop_wait: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_timeout: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    maximum_lag_on_failover: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    synchronous_mode: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    synchronous_mode_strict: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    synchronous_node_count: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    postgresql: Option<DcsPostgresql>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    slots: BTreeMap<String, BTreeMap<String, String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    failsafe_mode: Option<bool>,
}

#[derive(Serialize)]
struct DcsPostgresql {
    parameters: BTreeMap<String, String>,
}

/// The `SPILO_CONFIGURATION` JSON of Zalando's `generateSpiloJSONConfiguration`.
pub fn spilo_configuration(pg: &Postgresql, config: &OperatorConfig) -> String {
    let patroni = pg.spec.patroni.clone().unwrap_or_default();
    let local: BTreeMap<String, String> = pg
        .spec
        .postgresql
        .parameters
        .iter()
        .filter(|(name, _)| LOCAL_PARAMETERS.contains(&name.as_str()))
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect();
    let document = SpiloConfiguration {
        postgresql: LocalConfiguration {
            // Spilo picks the binaries from PGVERSION when that is set; bin_dir would win.
            bin_dir: (!config.enable_pgversion_env_var)
                .then(|| format!("/usr/lib/postgresql/{}/bin", pg.spec.postgresql.version)),
            parameters: local,
            // Local rather than bootstrap, so that Patroni applies later manifest changes.
            pg_hba: patroni.pg_hba.clone(),
        },
        bootstrap: Bootstrap {
            initdb: initdb_options(&patroni),
            users: BTreeMap::from([(
                config.pam_role_name.clone(),
                BootstrapUser {
                    password: String::new(),
                    options: vec!["CREATEDB".into(), "NOLOGIN".into()],
                },
            )]),
            dcs: dcs(pg, config),
        },
    };
    serde_json::to_string(&document).unwrap_or_default()
}

/// Patroni's dynamic configuration the manifest asks for (`bootstrap.dcs`): the DCS
/// parameters and the `patroni` section's timings, synchronous mode, slots and failsafe mode.
fn dcs(pg: &Postgresql, config: &OperatorConfig) -> Dcs {
    let patroni = pg.spec.patroni.clone().unwrap_or_default();
    let bootstrap: BTreeMap<String, String> = pg
        .spec
        .postgresql
        .parameters
        .iter()
        .filter(|(name, _)| !LOCAL_PARAMETERS.contains(&name.as_str()))
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect();
    let positive = |v: Option<u32>| v.filter(|v| *v > 0);
    Dcs {
        ttl: positive(patroni.ttl),
        loop_wait: positive(patroni.loop_wait),
        retry_timeout: positive(patroni.retry_timeout),
        maximum_lag_on_failover: patroni.maximum_lag_on_failover.filter(|v| *v > 0),
        synchronous_mode: patroni.synchronous_mode.filter(|on| *on),
        synchronous_mode_strict: patroni.synchronous_mode_strict.filter(|on| *on),
        synchronous_node_count: positive(patroni.synchronous_node_count),
        postgresql: (!bootstrap.is_empty()).then_some(DcsPostgresql {
            parameters: bootstrap,
        }),
        slots: patroni.slots.clone(),
        failsafe_mode: Some(
            patroni
                .failsafe_mode
                .unwrap_or(config.enable_patroni_failsafe_mode),
        ),
    }
}

/// [`dcs`] as JSON, as Patroni's `GET /config` shows it.
pub fn dynamic_configuration(pg: &Postgresql, config: &OperatorConfig) -> serde_json::Value {
    serde_json::to_value(dcs(pg, config)).unwrap_or_default()
}

/// Spilo's default initdb options with the manifest's merged in (sorted by name): a
/// manifest value replaces a default of the same name, flag-like options become bare flags.
fn initdb_options(patroni: &Patroni) -> Vec<InitdbOption> {
    let mut options = vec![
        InitdbOption::WithValue(BTreeMap::from([("auth-host".into(), "md5".into())])),
        InitdbOption::WithValue(BTreeMap::from([("auth-local".into(), "trust".into())])),
    ];
    for (name, setting) in &patroni.initdb {
        let mut handled = false;
        for option in options.iter_mut() {
            match option {
                InitdbOption::WithValue(map) if map.contains_key(name) => {
                    map.insert(name.clone(), setting.clone());
                    handled = true;
                }
                // Zalando compares a bare flag with the option's value, not its name.
                InitdbOption::Flag(flag) if flag == setting => handled = true,
                _ => {}
            }
            if handled {
                break;
            }
        }
        if handled {
            continue;
        }
        if setting == "true" && INITDB_FLAGS.contains(&name.as_str()) {
            options.push(InitdbOption::Flag(name.clone()));
        } else {
            options.push(InitdbOption::WithValue(BTreeMap::from([(
                name.clone(),
                setting.clone(),
            )])));
        }
    }
    options
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pure::builders::labels::tests::{manifest, minimal};

    /// (name, value, fieldRef path, secretKeyRef name) of each variable.
    fn describe(env: &[EnvVar]) -> Vec<(String, String, String, String)> {
        env.iter()
            .map(|e| {
                let from = e.value_from.as_ref();
                (
                    e.name.clone(),
                    e.value.clone().unwrap_or_default(),
                    from.and_then(|f| f.field_ref.as_ref())
                        .map(|f| {
                            assert_eq!(f.api_version.as_deref(), Some("v1"));
                            f.field_path.clone()
                        })
                        .unwrap_or_default(),
                    from.and_then(|f| f.secret_key_ref.as_ref())
                        .map(|s| {
                            assert_eq!(s.key, "password");
                            s.name.clone()
                        })
                        .unwrap_or_default(),
                )
            })
            .collect()
    }

    fn get<'a>(env: &'a [EnvVar], name: &str) -> Option<&'a str> {
        env.iter()
            .find(|e| e.name == name)
            .and_then(|e| e.value.as_deref())
    }

    #[test]
    fn default_env_in_zalandos_order() {
        let env = spilo_env(&minimal(), &OperatorConfig::default());
        let want: &[(&str, &str, &str, &str)] = &[
            ("SCOPE", "acid-minimal-cluster", "", ""),
            ("PGROOT", "/home/postgres/pgdata/pgroot", "", ""),
            ("POD_IP", "", "status.podIP", ""),
            ("POD_NAMESPACE", "", "metadata.namespace", ""),
            ("PGUSER_SUPERUSER", "postgres", "", ""),
            ("KUBERNETES_SCOPE_LABEL", "cluster-name", "", ""),
            ("KUBERNETES_ROLE_LABEL", "spilo-role", "", ""),
            (
                "PGPASSWORD_SUPERUSER",
                "",
                "",
                "postgres.acid-minimal-cluster.credentials.postgresql.acid.zalan.do",
            ),
            ("PGUSER_STANDBY", "standby", "", ""),
            (
                "PGPASSWORD_STANDBY",
                "",
                "",
                "standby.acid-minimal-cluster.credentials.postgresql.acid.zalan.do",
            ),
            (
                "PAM_OAUTH2",
                "https://info.example.com/oauth2/tokeninfo?access_token= uid realm=/employees",
                "",
                "",
            ),
            ("HUMAN_ROLE", "zalandos", "", ""),
            ("PGVERSION", "15", "", ""),
            ("KUBERNETES_LABELS", r#"{"application":"spilo"}"#, "", ""),
            ("SPILO_CONFIGURATION", "*", "", ""),
            ("DCS_ENABLE_KUBERNETES_API", "true", "", ""),
            (
                "KUBERNETES_BOOTSTRAP_LABELS",
                r#"{"critical-operation":"true"}"#,
                "",
                "",
            ),
        ];
        let got = describe(&env);
        assert_eq!(got.len(), want.len(), "{got:#?}");
        for (got, want) in got.iter().zip(want) {
            assert_eq!(got.0, want.0);
            if want.1 != "*" {
                assert_eq!(got.1, want.1, "{}", want.0);
            }
            assert_eq!(
                (got.2.as_str(), got.3.as_str()),
                (want.2, want.3),
                "{}",
                want.0
            );
        }
    }

    #[test]
    fn dcs_and_optional_variables() {
        let pg = minimal();
        /// Variables and their expected values (`None`: absent).
        type Expected<'a> = &'a [(&'a str, Option<&'a str>)];
        let cases: &[(OperatorConfig, Expected)] = &[
            (
                OperatorConfig {
                    kubernetes_use_configmaps: true,
                    ..OperatorConfig::default()
                },
                &[
                    ("KUBERNETES_USE_CONFIGMAPS", Some("true")),
                    ("DCS_ENABLE_KUBERNETES_API", Some("true")),
                    ("ETCD_HOST", None),
                ],
            ),
            (
                OperatorConfig {
                    etcd_host: Some("etcd:2379".into()),
                    kubernetes_use_configmaps: true,
                    ..OperatorConfig::default()
                },
                &[
                    ("ETCD_HOST", Some("etcd:2379")),
                    ("DCS_ENABLE_KUBERNETES_API", None),
                    ("KUBERNETES_USE_CONFIGMAPS", None),
                    ("KUBERNETES_BOOTSTRAP_LABELS", None),
                ],
            ),
            (
                OperatorConfig {
                    enable_pgversion_env_var: false,
                    enable_spilo_wal_path_compat: true,
                    enable_pod_disruption_budget: false,
                    ..OperatorConfig::default()
                },
                &[
                    ("PGVERSION", None),
                    ("ENABLE_WAL_PATH_COMPAT", Some("true")),
                    ("KUBERNETES_BOOTSTRAP_LABELS", None),
                ],
            ),
            (
                OperatorConfig {
                    major_version_upgrade_mode: "full".into(),
                    minimal_major_version: "16".into(),
                    target_major_version: "18".into(),
                    ..OperatorConfig::default()
                },
                &[("PGVERSION", Some("18"))],
            ),
            (
                OperatorConfig {
                    major_version_upgrade_mode: "manual".into(),
                    minimal_major_version: "16".into(),
                    ..OperatorConfig::default()
                },
                &[("PGVERSION", Some("15"))],
            ),
            (
                OperatorConfig {
                    cluster_labels: [("application", "db"), ("env", "prod")]
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                    ..OperatorConfig::default()
                },
                &[(
                    "KUBERNETES_LABELS",
                    Some(r#"{"application":"db","env":"prod"}"#),
                )],
            ),
        ];
        for (config, expectations) in cases {
            let env = spilo_env(&pg, config);
            for (name, want) in *expectations {
                assert_eq!(get(&env, name), *want, "{name}");
            }
        }
    }

    #[test]
    fn manifest_env_cannot_override_core_variables() {
        let pg = manifest(
            "acid-env",
            "  teamId: acid\n  numberOfInstances: 1\n  volume: {size: 1Gi}\n  postgresql: {version: \"15\"}\n  env:\n  - {name: scope, value: hijacked}\n  - {name: wal_s3_bucket, value: my-custom-bucket}\n  - {name: WAL_S3_BUCKET, value: ignored-duplicate}\n",
        );
        let config = OperatorConfig {
            wal_s3_bucket: Some("operator-bucket".into()),
            ..OperatorConfig::default()
        };
        let env = spilo_env(&pg, &config);
        let names: Vec<&str> = env.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(get(&env, "SCOPE"), Some("acid-env"));
        assert!(!names.contains(&"scope"));
        assert_eq!(get(&env, "wal_s3_bucket"), Some("my-custom-bucket"));
        assert!(!names.contains(&"WAL_S3_BUCKET"), "{names:?}");
        // The other bucket variables still come from the configuration.
        assert_eq!(get(&env, "WAL_BUCKET_SCOPE_PREFIX"), Some(""));
    }

    #[test]
    fn bucket_variables_are_scoped_by_uid() {
        let mut pg = minimal();
        pg.metadata.uid = Some("1234-abcd".into());
        let config = OperatorConfig {
            wal_gs_bucket: Some("gs-wal".into()),
            gcp_credentials: Some("/creds/key.json".into()),
            log_s3_bucket: Some("logs".into()),
            ..OperatorConfig::default()
        };
        let env = spilo_env(&pg, &config);
        let tail: Vec<(&str, &str)> = env
            .iter()
            .skip_while(|e| e.name != "WAL_GS_BUCKET")
            .map(|e| (e.name.as_str(), e.value.as_deref().unwrap_or_default()))
            .collect();
        assert_eq!(
            tail,
            [
                ("WAL_GS_BUCKET", "gs-wal"),
                ("WAL_BUCKET_SCOPE_SUFFIX", "/1234-abcd"),
                ("WAL_BUCKET_SCOPE_PREFIX", ""),
                ("GOOGLE_APPLICATION_CREDENTIALS", "/creds/key.json"),
                ("LOG_S3_BUCKET", "logs"),
                ("LOG_BUCKET_SCOPE_SUFFIX", "/1234-abcd"),
                ("LOG_BUCKET_SCOPE_PREFIX", ""),
            ]
        );
    }

    #[test]
    fn clone_and_standby_variables() {
        let config = OperatorConfig::default();
        let basebackup = manifest(
            "acid-clone",
            "  teamId: acid\n  numberOfInstances: 1\n  volume: {size: 1Gi}\n  postgresql: {version: \"15\"}\n  clone: {cluster: acid-source}\n",
        );
        let env = spilo_env(&basebackup, &config);
        let clone: Vec<_> = describe(&env)
            .into_iter()
            .filter(|v| v.0.starts_with("CLONE_"))
            .collect();
        let s = String::from;
        assert_eq!(
            clone,
            [
                (s("CLONE_SCOPE"), s("acid-source"), s(""), s("")),
                (s("CLONE_METHOD"), s("CLONE_WITH_BASEBACKUP"), s(""), s("")),
                (s("CLONE_HOST"), s("acid-source"), s(""), s("")),
                (s("CLONE_PORT"), s("5432"), s(""), s("")),
                (s("CLONE_USER"), s("standby"), s(""), s("")),
                (
                    s("CLONE_PASSWORD"),
                    s(""),
                    s(""),
                    s("standby.acid-source.credentials.postgresql.acid.zalan.do")
                ),
            ]
        );

        let point_in_time = manifest(
            "acid-clone",
            "  teamId: acid\n  numberOfInstances: 1\n  volume: {size: 1Gi}\n  postgresql: {version: \"15\"}\n  clone: {cluster: acid-source, uid: u-1, timestamp: \"2017-12-19T12:40:33+01:00\", s3_wal_path: \"s3://b/p\", s3_force_path_style: true}\n",
        );
        let env = spilo_env(&point_in_time, &config);
        for (name, want) in [
            ("CLONE_WALE_S3_PREFIX", Some("s3://b/p")),
            ("CLONE_METHOD", Some("CLONE_WITH_WALE")),
            ("CLONE_TARGET_TIME", Some("2017-12-19T12:40:33+01:00")),
            ("CLONE_AWS_S3_FORCE_PATH_STYLE", Some("1")),
            ("CLONE_HOST", None),
            ("CLONE_WAL_BUCKET_SCOPE_SUFFIX", None),
        ] {
            assert_eq!(get(&env, name), want, "{name}");
        }

        let standby = manifest(
            "acid-standby",
            "  teamId: acid\n  numberOfInstances: 1\n  volume: {size: 1Gi}\n  postgresql: {version: \"15\"}\n  standby: {standby_host: acid-minimal-cluster.default, standby_port: \"5433\", gs_wal_path: \"gs://b/wal\"}\n",
        );
        let env = spilo_env(&standby, &config);
        for (name, want) in [
            ("STANDBY_HOST", Some("acid-minimal-cluster.default")),
            ("STANDBY_PORT", Some("5433")),
            ("STANDBY_WALE_GS_PREFIX", Some("gs://b/wal")),
            ("STANDBY_METHOD", Some("STANDBY_WITH_WALE")),
            ("STANDBY_WALE_S3_PREFIX", None),
        ] {
            assert_eq!(get(&env, name), want, "{name}");
        }
    }

    #[test]
    fn spilo_configuration_json() {
        let pg = manifest(
            "acid-test-cluster",
            r#"  teamId: acid
  numberOfInstances: 2
  volume: {size: 1Gi}
  postgresql:
    version: "15"
    parameters:
      shared_buffers: "32MB"
      max_connections: "10"
      log_statement: "all"
      ssl: "on"
  patroni:
    failsafe_mode: false
    initdb:
      encoding: "UTF8"
      locale: "en_US.UTF-8"
      data-checksums: "true"
      auth-host: scram-sha-256
    pg_hba:
    - hostssl all all 0.0.0.0/0 md5
    - host    all all 0.0.0.0/0 md5
    slots:
      permanent_logical_1: {type: logical, database: foo, plugin: pgoutput}
    ttl: 30
    loop_wait: 10
    retry_timeout: 10
    synchronous_mode: true
    synchronous_mode_strict: false
    synchronous_node_count: 1
    maximum_lag_on_failover: 33554432
"#,
        );
        let want = concat!(
            r#"{"postgresql":{"parameters":{"shared_buffers":"32MB","ssl":"on"},"#,
            r#""pg_hba":["hostssl all all 0.0.0.0/0 md5","host    all all 0.0.0.0/0 md5"]},"#,
            r#""bootstrap":{"initdb":[{"auth-host":"scram-sha-256"},{"auth-local":"trust"},"data-checksums",{"encoding":"UTF8"},{"locale":"en_US.UTF-8"}],"#,
            r#""users":{"zalandos":{"password":"","options":["CREATEDB","NOLOGIN"]}},"#,
            r#""dcs":{"ttl":30,"loop_wait":10,"retry_timeout":10,"maximum_lag_on_failover":33554432,"#,
            r#""synchronous_mode":true,"synchronous_node_count":1,"#,
            r#""postgresql":{"parameters":{"log_statement":"all","max_connections":"10"}},"#,
            r#""slots":{"permanent_logical_1":{"database":"foo","plugin":"pgoutput","type":"logical"}},"#,
            r#""failsafe_mode":false}}}"#,
        );
        assert_eq!(spilo_configuration(&pg, &OperatorConfig::default()), want);
    }

    #[test]
    fn minimal_spilo_configuration() {
        let cases = [
            (
                OperatorConfig::default(),
                r#"{"postgresql":{},"bootstrap":{"initdb":[{"auth-host":"md5"},{"auth-local":"trust"}],"users":{"zalandos":{"password":"","options":["CREATEDB","NOLOGIN"]}},"dcs":{"failsafe_mode":false}}}"#,
            ),
            (
                OperatorConfig {
                    enable_pgversion_env_var: false,
                    enable_patroni_failsafe_mode: true,
                    pam_role_name: "humans".into(),
                    ..OperatorConfig::default()
                },
                r#"{"postgresql":{"bin_dir":"/usr/lib/postgresql/15/bin"},"bootstrap":{"initdb":[{"auth-host":"md5"},{"auth-local":"trust"}],"users":{"humans":{"password":"","options":["CREATEDB","NOLOGIN"]}},"dcs":{"failsafe_mode":true}}}"#,
            ),
        ];
        for (config, want) in cases {
            assert_eq!(spilo_configuration(&minimal(), &config), want);
        }
    }

    /// Zalando's mock pod environment: the ConfigMap `pod_env_cm` and Secret `pod_env_sc`.
    fn zalandos_pod_environment() -> PodEnvironment {
        PodEnvironment {
            config_map: [
                ("clone_aws_endpoint", "s3.eu-west-1.amazonaws.com"),
                ("custom_variable", "configmap-test"),
                ("kubernetes_scope_label", "pgaas"),
                ("wal_s3_bucket", "global-s3-bucket-configmap"),
            ]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
            secret_keys: vec![
                "standby_google_application_credentials".into(),
                "custom_variable".into(),
                "clone_aws_access_key_id".into(),
            ],
            secret_name: Some("pod_env_sc".into()),
        }
    }

    /// How a variable is defined: its value, or `secret:<name>/<key>`.
    fn definition(env: &[EnvVar], name: &str) -> Option<String> {
        let var = env.iter().find(|e| e.name == name)?;
        Some(
            match var
                .value_from
                .as_ref()
                .and_then(|f| f.secret_key_ref.as_ref())
            {
                Some(secret) => format!("secret:{}/{}", secret.name, secret.key),
                None => var.value.clone().unwrap_or_default(),
            },
        )
    }

    #[test]
    fn pod_environment_precedence() {
        // Zalando's TestGenerateSpiloPodEnvVars cases: (what, manifest extra, config, pod
        // environment, expected definitions; None: absent).
        type Case<'a> = (
            &'a str,
            &'a str,
            OperatorConfig,
            PodEnvironment,
            &'a [(&'a str, Option<&'a str>)],
        );
        let with_bucket = || OperatorConfig {
            wal_s3_bucket: Some("global-s3-bucket".into()),
            ..OperatorConfig::default()
        };
        let only_config_map = || PodEnvironment {
            secret_keys: Vec::new(),
            secret_name: None,
            ..zalandos_pod_environment()
        };
        let only_secret = || PodEnvironment {
            config_map: BTreeMap::new(),
            ..zalandos_pod_environment()
        };
        let cases: Vec<Case> = vec![
            (
                "core variables are never overridden",
                "  env:\n  - {name: KUBERNETES_SCOPE_LABEL, value: my-scope-label}\n",
                OperatorConfig::default(),
                only_config_map(),
                &[
                    ("KUBERNETES_SCOPE_LABEL", Some("cluster-name")),
                    ("kubernetes_scope_label", None),
                ],
            ),
            (
                "the ConfigMap overrides the global WAL bucket",
                "",
                with_bucket(),
                only_config_map(),
                &[
                    ("wal_s3_bucket", Some("global-s3-bucket-configmap")),
                    ("WAL_S3_BUCKET", None),
                    ("WAL_BUCKET_SCOPE_PREFIX", Some("")),
                ],
            ),
            (
                "the manifest overrides the global WAL bucket",
                "  env:\n  - {name: WAL_S3_BUCKET, value: custom-s3-bucket}\n",
                with_bucket(),
                PodEnvironment::default(),
                &[("WAL_S3_BUCKET", Some("custom-s3-bucket"))],
            ),
            (
                "the Secret wins over the ConfigMap",
                "",
                OperatorConfig::default(),
                zalandos_pod_environment(),
                &[("custom_variable", Some("secret:pod_env_sc/custom_variable"))],
            ),
            (
                "the ConfigMap alone",
                "",
                OperatorConfig::default(),
                only_config_map(),
                &[("custom_variable", Some("configmap-test"))],
            ),
            (
                "the manifest wins over Secret and ConfigMap",
                "  env:\n  - {name: CUSTOM_VARIABLE, value: spec-env-test}\n",
                OperatorConfig::default(),
                zalandos_pod_environment(),
                &[
                    ("CUSTOM_VARIABLE", Some("spec-env-test")),
                    ("custom_variable", None),
                ],
            ),
            (
                "clone settings of the manifest win over the ConfigMap",
                "  clone: {cluster: test-cluster, timestamp: somewhen, uid: u-1, s3_wal_path: \"s3://another-bucket\", s3_endpoint: s3.eu-central-1.amazonaws.com}\n",
                with_bucket(),
                only_config_map(),
                &[
                    ("CLONE_WALE_S3_PREFIX", Some("s3://another-bucket")),
                    ("CLONE_AWS_ENDPOINT", Some("s3.eu-central-1.amazonaws.com")),
                    ("clone_aws_endpoint", None),
                ],
            ),
            (
                "clone endpoint from the ConfigMap",
                "  clone: {cluster: test-cluster, timestamp: somewhen, uid: u-1}\n",
                with_bucket(),
                only_config_map(),
                &[
                    ("CLONE_WAL_S3_BUCKET", Some("global-s3-bucket")),
                    ("CLONE_WAL_BUCKET_SCOPE_SUFFIX", Some("/u-1")),
                    ("clone_aws_endpoint", Some("s3.eu-west-1.amazonaws.com")),
                ],
            ),
            (
                "clone key from the Secret",
                "  clone: {cluster: test-cluster, timestamp: somewhen, uid: u-1}\n",
                with_bucket(),
                only_secret(),
                &[(
                    "clone_aws_access_key_id",
                    Some("secret:pod_env_sc/clone_aws_access_key_id"),
                )],
            ),
            (
                "standby credentials from the Secret",
                "  standby: {gs_wal_path: \"gs://some/path/\"}\n",
                with_bucket(),
                only_secret(),
                &[
                    ("STANDBY_WALE_GS_PREFIX", Some("gs://some/path/")),
                    (
                        "standby_google_application_credentials",
                        Some("secret:pod_env_sc/standby_google_application_credentials"),
                    ),
                ],
            ),
        ];
        for (what, extra, config, pod_env, expected) in cases {
            let pg = manifest(
                "acid-env",
                &format!("  teamId: acid\n  numberOfInstances: 1\n  volume: {{size: 1Gi}}\n  postgresql: {{version: \"15\"}}\n{extra}"),
            );
            let env = spilo_env_with(&pg, &config, &pod_env);
            for (name, want) in expected {
                assert_eq!(definition(&env, name).as_deref(), *want, "{what}: {name}");
            }
        }
    }

    #[test]
    fn pod_environment_order() {
        let config = OperatorConfig {
            wal_s3_bucket: Some("global-s3-bucket".into()),
            pod_environment_secret: Some("pod_env_sc".into()),
            ..OperatorConfig::default()
        };
        let pod_env = PodEnvironment {
            secret_name: None,
            ..zalandos_pod_environment()
        };
        let env = spilo_env_with(&minimal(), &config, &pod_env);
        let tail: Vec<(&str, String)> = env
            .iter()
            .skip_while(|e| e.name != "KUBERNETES_BOOTSTRAP_LABELS")
            .skip(1)
            .map(|e| (e.name.as_str(), definition(&env, &e.name).unwrap()))
            .collect();
        let s = String::from;
        assert_eq!(
            tail,
            [
                (
                    "clone_aws_access_key_id",
                    s("secret:pod_env_sc/clone_aws_access_key_id")
                ),
                ("custom_variable", s("secret:pod_env_sc/custom_variable")),
                (
                    "standby_google_application_credentials",
                    s("secret:pod_env_sc/standby_google_application_credentials")
                ),
                ("clone_aws_endpoint", s("s3.eu-west-1.amazonaws.com")),
                ("wal_s3_bucket", s("global-s3-bucket-configmap")),
                ("WAL_BUCKET_SCOPE_SUFFIX", s("")),
                ("WAL_BUCKET_SCOPE_PREFIX", s("")),
            ],
            "Secret keys, then ConfigMap values (each sorted), then bucket settings; \
             the Secret name comes from pod_environment_secret"
        );
        assert_eq!(
            spilo_env(&minimal(), &config),
            spilo_env_with(&minimal(), &config, &PodEnvironment::default())
        );
    }

    #[test]
    fn pod_environment_source_names() {
        type Name = Option<(Option<&'static str>, &'static str)>;
        let cases: &[(Option<&str>, Name)] = &[
            (None, None),
            (Some(""), None),
            (Some("my-custom-config"), Some((None, "my-custom-config"))),
            (
                Some("default/my-custom-config"),
                Some((Some("default"), "my-custom-config")),
            ),
            (Some(" ops/env "), Some((Some("ops"), "env"))),
            (Some("/env"), Some((None, "env"))),
            (Some("ops/"), None),
        ];
        for (setting, want) in cases {
            let config = OperatorConfig {
                pod_environment_configmap: setting.map(String::from),
                pod_environment_secret: setting.map(String::from),
                ..OperatorConfig::default()
            };
            let want: Option<ObjectName> =
                want.map(|(ns, name)| (ns.map(String::from), name.to_string()));
            assert_eq!(
                pod_environment_sources(&config),
                (want.clone(), want),
                "{setting:?}"
            );
        }
    }

    #[test]
    fn sidecar_variables() {
        let env = sidecar_env(&minimal(), &OperatorConfig::default());
        let s = String::from;
        assert_eq!(
            describe(&env),
            [
                (s("POD_NAME"), s(""), s("metadata.name"), s("")),
                (s("POD_NAMESPACE"), s(""), s("metadata.namespace"), s("")),
                (s("POSTGRES_USER"), s("postgres"), s(""), s("")),
                (
                    s("POSTGRES_PASSWORD"),
                    s(""),
                    s(""),
                    s("postgres.acid-minimal-cluster.credentials.postgresql.acid.zalan.do")
                ),
            ]
        );
    }
}
